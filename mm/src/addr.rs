//! Physical addresses and frame numbers.
//!
//! Physical and virtual addresses never mix in `mm`: a physical address is
//! a [`PhysAddr`], a physical page is a [`Frame`] (its page frame number),
//! and the only way from either to something dereferenceable is the direct
//! map ([`crate::phys::DirectMap`]).

use core::fmt;

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size, on every architecture Samara supports.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// A physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct PhysAddr(u64);

impl PhysAddr {
    pub const fn new(addr: u64) -> Self {
        PhysAddr(addr)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE as u64 - 1) == 0
    }

    /// Offset of this address inside its page.
    pub const fn page_offset(self) -> usize {
        (self.0 & (PAGE_SIZE as u64 - 1)) as usize
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

/// A physical page, named by its page frame number (`phys >> PAGE_SHIFT`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Frame(u64);

impl Frame {
    pub const fn from_pfn(pfn: u64) -> Self {
        Frame(pfn)
    }

    /// The frame holding `addr`.
    pub const fn containing(addr: PhysAddr) -> Self {
        Frame(addr.0 >> PAGE_SHIFT)
    }

    pub const fn pfn(self) -> u64 {
        self.0
    }

    /// Physical address of the first byte of the frame.
    pub const fn start(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }

    /// The frame `n` frames after this one.
    pub const fn add(self, n: u64) -> Self {
        Frame(self.0 + n)
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame(pfn {:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_phys_round_trip() {
        let pa = PhysAddr::new(0x1234_5678);
        assert!(!pa.is_page_aligned());
        assert_eq!(pa.page_offset(), 0x678);
        let f = Frame::containing(pa);
        assert_eq!(f.pfn(), 0x12345);
        assert_eq!(f.start(), PhysAddr::new(0x1234_5000));
        assert!(f.start().is_page_aligned());
        assert_eq!(f.add(3).pfn(), 0x12348);
    }
}
