//! The direct map: every RAM frame at a fixed virtual address.
//!
//! The kernel maps all of physical memory at one offset (x86_64: the
//! physmap; MIPS64: an XKPHYS cached window), so the allocators reach any
//! frame — a page to zero, a slab page, the frame metadata array itself —
//! without building mappings. [`DirectMap`] is that translation and nothing
//! more: it knows the physical range it covers and refuses anything outside.
//!
//! On the host, `HostMemory` (feature `std`) stands in for RAM: one zeroed, 4 MiB-aligned
//! allocation given a fake physical base that is neither zero nor the host
//! address, so a test that mixes up physical and virtual addresses reads or
//! writes the wrong place (or faults) instead of passing by accident.

use core::ptr::NonNull;

use crate::addr::{Frame, PhysAddr, PAGE_SIZE};

/// Physical → virtual translation for the RAM the allocators manage.
///
/// `virt = virt_base + (phys - phys_base)` for `phys` in
/// `[phys_base, phys_end)`. The translation keeps the pointer provenance of
/// `virt_base`, so under Miri every derived pointer is checked against the
/// backing allocation.
#[derive(Clone, Copy)]
pub struct DirectMap {
    virt_base: *mut u8,
    phys_base: u64,
    phys_end: u64,
}

// SAFETY: a `DirectMap` is an address translation. It hands out raw
// pointers only; every dereference is justified by the caller's own
// ownership of the frame, so sharing the translation between CPUs is sound.
unsafe impl Send for DirectMap {}
// SAFETY: as above; `DirectMap` has no interior mutability.
unsafe impl Sync for DirectMap {}

impl DirectMap {
    /// A direct map of `[phys_base, phys_end)` at `virt_base`.
    ///
    /// # Safety
    ///
    /// For every physical address `pa` in `[phys_base, phys_end)`,
    /// `virt_base + (pa - phys_base)` must be a readable and writable
    /// mapping of `pa` for as long as this map (or any copy) is used, and no
    /// other part of the program may assume exclusive access to that memory
    /// except through the allocators given this map. `phys_base` and
    /// `virt_base` must be page-aligned.
    pub const unsafe fn new(virt_base: *mut u8, phys_base: PhysAddr, phys_end: PhysAddr) -> Self {
        DirectMap {
            virt_base,
            phys_base: phys_base.as_u64(),
            phys_end: phys_end.as_u64(),
        }
    }

    /// First physical address covered.
    pub const fn phys_base(&self) -> PhysAddr {
        PhysAddr::new(self.phys_base)
    }

    /// One past the last physical address covered.
    pub const fn phys_end(&self) -> PhysAddr {
        PhysAddr::new(self.phys_end)
    }

    /// Whether `[pa, pa + len)` lies inside the map.
    pub fn covers(&self, pa: PhysAddr, len: u64) -> bool {
        let pa = pa.as_u64();
        pa >= self.phys_base && pa.checked_add(len).is_some_and(|end| end <= self.phys_end)
    }

    /// The virtual address of `pa`, or `None` if the map does not cover it.
    pub fn to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        if !self.covers(pa, 1) {
            return None;
        }
        Some(self.to_virt_unchecked(pa))
    }

    /// The physical address behind `va`, or `None` if `va` is not inside
    /// the map.
    pub fn to_phys(&self, va: *const u8) -> Option<PhysAddr> {
        let off = (va as usize).checked_sub(self.virt_base as usize)? as u64;
        let pa = self.phys_base.checked_add(off)?;
        (pa < self.phys_end).then_some(PhysAddr::new(pa))
    }

    /// The virtual address of the first byte of `frame`, or `None` if the
    /// map does not cover the whole frame.
    pub fn frame_ptr(&self, frame: Frame) -> Option<NonNull<u8>> {
        if !self.covers(frame.start(), PAGE_SIZE as u64) {
            return None;
        }
        Some(self.to_virt_unchecked(frame.start()))
    }

    /// Translation without the range check, for callers that validated the
    /// frame already (it belongs to an allocator built over this map).
    #[inline(always)]
    pub(crate) fn to_virt_unchecked(self, pa: PhysAddr) -> NonNull<u8> {
        debug_assert!(self.covers(pa, 1), "{pa:?} is outside the direct map");
        let off = (pa.as_u64() - self.phys_base) as usize;
        // `wrapping_add` keeps `virt_base`'s provenance; the result is
        // inside the mapping by the range check above (debug) and by the
        // caller's validation (release).
        let p = self.virt_base.wrapping_add(off);
        // SAFETY: `virt_base` is non-null and page-aligned, `off` is less than the size of the mapping, so `p` does not wrap to null.
        unsafe { NonNull::new_unchecked(p) }
    }

    /// Inverse of [`Self::to_virt_unchecked`].
    #[inline(always)]
    pub(crate) fn to_phys_unchecked(self, va: *const u8) -> PhysAddr {
        debug_assert!(
            self.to_phys(va).is_some(),
            "{va:p} is outside the direct map"
        );
        PhysAddr::new(self.phys_base + (va as usize - self.virt_base as usize) as u64)
    }
}

impl core::fmt::Debug for DirectMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "DirectMap {{ phys {:#x}..{:#x} at {:p} }}",
            self.phys_base, self.phys_end, self.virt_base
        )
    }
}

#[cfg(any(test, feature = "std"))]
pub use host::HostMemory;

#[cfg(any(test, feature = "std"))]
mod host {
    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// Alignment of the host buffer: the largest buddy block (order 10),
    /// so that buddy alignment in fake physical space is also alignment in
    /// host virtual space.
    const HOST_ALIGN: usize = PAGE_SIZE << 10;

    /// Host memory standing in for physical RAM in tests and benches.
    pub struct HostMemory {
        ptr: NonNull<u8>,
        layout: Layout,
        phys_base: u64,
    }

    // SAFETY: `HostMemory` owns a plain byte buffer; access to its contents
    // is arbitrated by the allocators built over its direct map.
    unsafe impl Send for HostMemory {}
    // SAFETY: as above; `&HostMemory` only exposes the translation.
    unsafe impl Sync for HostMemory {}

    impl HostMemory {
        /// A fake physical base that is neither zero nor identity-mapped
        /// and is aligned to the largest buddy block.
        pub const DEFAULT_PHYS_BASE: u64 = 0x1_2340_0000;

        /// `bytes` (rounded up to whole pages) of zeroed memory at
        /// [`Self::DEFAULT_PHYS_BASE`].
        pub fn new(bytes: usize) -> Self {
            Self::with_phys_base(bytes, Self::DEFAULT_PHYS_BASE)
        }

        /// `bytes` of zeroed memory pretending to live at physical address
        /// `phys_base` (page-aligned, non-zero).
        ///
        /// Panics if the host cannot allocate the buffer or the arguments
        /// are nonsense: this is a test fixture, not kernel input.
        pub fn with_phys_base(bytes: usize, phys_base: u64) -> Self {
            assert!(
                phys_base != 0 && phys_base.is_multiple_of(PAGE_SIZE as u64),
                "bad fake phys base"
            );
            let size = bytes.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
            let layout = Layout::from_size_align(size, HOST_ALIGN).expect("host memory layout");
            // SAFETY: `layout` has a non-zero size.
            let raw = unsafe { alloc_zeroed(layout) };
            let ptr = NonNull::new(raw).expect("host memory allocation failed");
            HostMemory {
                ptr,
                layout,
                phys_base,
            }
        }

        /// The direct map of this memory.
        pub fn direct_map(&self) -> DirectMap {
            // SAFETY: the buffer is `layout.size()` bytes, readable and writable, page-aligned, and lives as long as `self`; users of the map (allocators) must not outlive `self`, which is the contract of the allocator constructors.
            unsafe {
                DirectMap::new(
                    self.ptr.as_ptr(),
                    PhysAddr::new(self.phys_base),
                    PhysAddr::new(self.phys_base + self.layout.size() as u64),
                )
            }
        }

        /// The fake physical range `[start, end)` of this memory.
        pub fn phys_range(&self) -> (u64, u64) {
            (self.phys_base, self.phys_base + self.layout.size() as u64)
        }

        /// Size in bytes.
        pub fn len(&self) -> usize {
            self.layout.size()
        }

        pub fn is_empty(&self) -> bool {
            false
        }
    }

    impl Drop for HostMemory {
        fn drop(&mut self) {
            // SAFETY: `ptr` came from `alloc_zeroed(layout)` and is freed once, here.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_round_trips_and_rejects_outside() {
        let mem = HostMemory::new(8 * PAGE_SIZE);
        let dm = mem.direct_map();
        let (start, end) = mem.phys_range();
        assert_ne!(start, 0);
        let f = Frame::containing(PhysAddr::new(start + 3 * PAGE_SIZE as u64));
        let va = dm.frame_ptr(f).unwrap();
        assert_ne!(
            va.as_ptr() as u64,
            f.start().as_u64(),
            "direct map must not be identity"
        );
        assert_eq!(dm.to_phys(va.as_ptr()), Some(f.start()));
        assert_eq!(dm.to_virt(PhysAddr::new(start - 1)), None);
        assert_eq!(dm.to_virt(PhysAddr::new(end)), None);
        assert!(dm
            .frame_ptr(Frame::containing(PhysAddr::new(end)))
            .is_none());
        assert!(dm.to_phys(core::ptr::null()).is_none());
        // The bytes are really there and start zeroed.
        // SAFETY: `va` maps a page of `mem`, which nothing else uses.
        unsafe {
            assert_eq!(*va.as_ptr().add(17), 0);
            *va.as_ptr().add(17) = 5;
            assert_eq!(*va.as_ptr().add(17), 5);
        }
    }
}
