//! The kernel's view of physical memory and of its own image.
//!
//! MIPS64 needs no page tables for the kernel: the image runs from CKSEG0 and
//! all physical memory is reachable through XKPHYS, both unmapped. Only
//! xuseg (user) and XKSEG (kernel vmalloc-like space) go through the TLB,
//! and both are empty until the TLB refill handler of issue 6 exists.

/// CKSEG0: physical 0..512 MiB, cached, unmapped; where the kernel is linked.
pub const CKSEG0: u64 = 0xffff_ffff_8000_0000;
/// CKSEG1: physical 0..512 MiB, uncached, unmapped (device registers).
pub const CKSEG1: u64 = 0xffff_ffff_a000_0000;
/// XKPHYS with cache coherency attribute 3 (cacheable, write-back): every
/// physical address, cached, unmapped. Octeon ignores the CCA field here
/// (all its memory accesses are coherent), so one constant serves both.
pub const XKPHYS_CACHED: u64 = 0x9800_0000_0000_0000;
/// XKSEG: the kernel's TLB-mapped 64-bit segment.
pub const XKSEG: u64 = 0xc000_0000_0000_0000;

/// A kernel address guaranteed unmapped: XKSEG holds no TLB entry until a
/// kernel mapping is made there (and [`super::tlb`] keeps its placeholder
/// entries at the very top of XKSEG, far from this). Reading it takes an
/// XTLB refill exception, decoded as a not-present read. Used by
/// `test=pagefault`.
pub const UNMAPPED_KERNEL_ADDR: u64 = XKSEG + 0xdead_b000;

/// The kernel virtual address of physical address `pa` (XKPHYS, cached).
/// Valid for every physical address of RAM, including RAM above 256 MiB
/// that Malta only shows at physical 0x9000_0000 and up.
pub fn phys_to_virt(pa: u64) -> *mut u8 {
    (XKPHYS_CACHED | pa) as *mut u8
}

unsafe extern "C" {
    // Defined by linker/mips64-malta.ld; only their addresses are used.
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical extent `[start, end)` of the loaded kernel image, including
/// BSS and the boot stack.
pub fn kernel_phys_extent() -> (u64, u64) {
    let start = (&raw const __kernel_start) as u64;
    let end = (&raw const __kernel_end) as u64;
    (start - CKSEG0, end - CKSEG0)
}
