//! Virtual memory areas: their locks, and (soon) the VMAs themselves.

pub mod lock;
