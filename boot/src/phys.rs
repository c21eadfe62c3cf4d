//! Reading physical memory the boot loader left behind.
//!
//! Boot protocols that hand over pointers (the Malta argv/env tables, the
//! Octeon boot descriptor and bootmem free list) are parsed through
//! [`BootMemory`], so the same parser runs on the board (reading through an
//! unmapped kernel segment) and in host tests (reading a fake memory image
//! built byte by byte). Every multi-byte value in these protocols is
//! big-endian: both boards run the CPU big-endian and the structures are
//! written by big-endian boot loaders.

/// Physical memory as the boot loader left it.
pub trait BootMemory {
    /// Fills `buf` from physical address `phys`, or returns `false` if any
    /// byte of `[phys, phys + buf.len())` is not readable RAM.
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool;
}

/// Reads a big-endian `u16` at `phys`, or `None` if it is unreadable.
pub fn read_be16(mem: &(impl BootMemory + ?Sized), phys: u64) -> Option<u16> {
    let mut b = [0u8; 2];
    mem.read(phys, &mut b).then(|| u16::from_be_bytes(b))
}

/// Reads a big-endian `u32` at `phys`, or `None` if it is unreadable.
pub fn read_be32(mem: &(impl BootMemory + ?Sized), phys: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    mem.read(phys, &mut b).then(|| u32::from_be_bytes(b))
}

/// Reads a big-endian `u64` at `phys`, or `None` if it is unreadable.
pub fn read_be64(mem: &(impl BootMemory + ?Sized), phys: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read(phys, &mut b).then(|| u64::from_be_bytes(b))
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Rounds `x` up to a multiple of `align` (a power of two), saturating at
/// the highest multiple below 2^64.
pub const fn align_up(x: u64, align: u64) -> u64 {
    match x.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => align_down(u64::MAX, align),
    }
}
