//! MIPS64 (Cavium Octeon) support.
