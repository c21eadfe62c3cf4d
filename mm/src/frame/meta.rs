//! Per-frame metadata: Samara's `struct page`.
//!
//! One [`PageMeta`] per frame of the managed span, in one array (the
//! "mem_map") carved from managed memory at boot, indexed by
//! `pfn - base_pfn`: O(1) from a frame to its metadata and back.
//!
//! Which fields are valid, and who may write them, depends on the frame's
//! state (all fields are atomics so that readers outside the owner's lock
//! never race, but most are owned by exactly one party at a time):
//!
//! | state (flags)            | owner                   | `order` | `next`/`prev`          |
//! |--------------------------|-------------------------|---------|------------------------|
//! | `BUDDY` (free block head)| buddy, under zone lock  | valid   | buddy free list links  |
//! | `PCP` (per-CPU cached)   | that CPU's pcp lock     | 0       | `next`: pcp list link  |
//! | `ALLOCATED` (block head) | whoever allocated it    | valid   | unused                 |
//! | none (inside a block)    | the block's owner       | —       | unused                 |
//! | `RESERVED`               | nobody (hole, mem_map)  | —       | unused                 |
//!
//! `refcount` and `mapcount` belong to the user of an allocated frame
//! (issue 5: copy-on-write sharing of anonymous pages); the allocator sets
//! the refcount to 1 on allocation and checks both on free. `SLAB` and
//! `private` are owned by the slab that holds the frame.

use core::ptr;

use crate::sync::{fence, AtomicPtr, AtomicU32, Ordering};

/// "No frame" in the index-linked free lists.
pub(crate) const NIL: u32 = u32::MAX;

bitflags::bitflags! {
    /// State bits of a frame. The block order lives in the same word (bits
    /// `ORDER_SHIFT..`), read with [`PageMeta::order`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PageFlags: u32 {
        /// Not managed: a hole in the memory map or the metadata itself.
        /// Never allocated, never freed, never merged across.
        const RESERVED = 1 << 0;
        /// Head of a free block on a buddy free list.
        const BUDDY = 1 << 1;
        /// A free order-0 frame in a per-CPU cache.
        const PCP = 1 << 2;
        /// Head of an allocated block.
        const ALLOCATED = 1 << 3;
        /// Part of a slab page; `private` points at the slab page header.
        const SLAB = 1 << 4;
    }
}

const ORDER_SHIFT: u32 = 24;
const ORDER_MASK: u32 = 0xf << ORDER_SHIFT;
const FLAG_MASK: u32 = (1 << ORDER_SHIFT) - 1;

/// Metadata of one physical frame. 32 bytes: four fit in a 128-byte line.
#[repr(C)]
pub struct PageMeta {
    /// [`PageFlags`] | order << ORDER_SHIFT.
    flags: AtomicU32,
    refcount: AtomicU32,
    mapcount: AtomicU32,
    /// Free-list links (indices into the metadata array, [`NIL`] ends).
    pub(crate) next: AtomicU32,
    pub(crate) prev: AtomicU32,
    /// Owner-defined pointer; the slab stores its page header here.
    pub(crate) private: AtomicPtr<u8>,
}

impl PageMeta {
    pub(crate) fn new_reserved() -> Self {
        PageMeta {
            flags: AtomicU32::new(PageFlags::RESERVED.bits()),
            refcount: AtomicU32::new(0),
            mapcount: AtomicU32::new(0),
            next: AtomicU32::new(NIL),
            prev: AtomicU32::new(NIL),
            private: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The frame's state bits.
    #[inline]
    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_retain(self.flags.load(Ordering::Relaxed) & FLAG_MASK)
    }

    /// The block order, for the head of a free (`BUDDY`) or `ALLOCATED`
    /// block; `None` in any other state.
    #[inline]
    pub fn order(&self) -> Option<u32> {
        let raw = self.flags.load(Ordering::Relaxed);
        let f = PageFlags::from_bits_retain(raw & FLAG_MASK);
        f.intersects(PageFlags::BUDDY | PageFlags::ALLOCATED | PageFlags::PCP)
            .then_some((raw & ORDER_MASK) >> ORDER_SHIFT)
    }

    /// Raw flags word (flags and order) for the allocator's own checks.
    #[inline(always)]
    pub(crate) fn raw(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Sets the state and order. Relaxed: the state of a free frame is
    /// protected by the lock of the list it is on; the state of an
    /// allocated frame is written by its single owner.
    #[inline(always)]
    pub(crate) fn set_state(&self, flags: PageFlags, order: u32) {
        self.flags
            .store(flags.bits() | (order << ORDER_SHIFT), Ordering::Relaxed);
    }

    #[inline(always)]
    pub(crate) fn set_flag(&self, f: PageFlags) {
        self.flags.fetch_or(f.bits(), Ordering::Relaxed);
    }

    #[inline(always)]
    pub(crate) fn clear_flag(&self, f: PageFlags) {
        self.flags.fetch_and(!f.bits(), Ordering::Relaxed);
    }

    #[inline(always)]
    pub(crate) fn raw_is(raw: u32, f: PageFlags) -> bool {
        raw & f.bits() != 0
    }

    #[inline(always)]
    pub(crate) fn raw_order(raw: u32) -> u32 {
        (raw & ORDER_MASK) >> ORDER_SHIFT
    }

    #[inline(always)]
    pub(crate) fn set_refcount(&self, v: u32) {
        self.refcount.store(v, Ordering::Relaxed);
    }

    /// Current reference count (a snapshot).
    #[inline]
    pub fn ref_count(&self) -> u32 {
        self.refcount.load(Ordering::Relaxed)
    }

    /// Takes another reference. The caller must already hold one (so the
    /// frame cannot be freed under it), which is why Relaxed suffices, as
    /// for any reference-count increment.
    #[inline]
    pub fn get_ref(&self) {
        let old = self.refcount.fetch_add(1, Ordering::Relaxed);
        debug_assert!(
            old != 0,
            "get_ref on a frame with no references (use after free?)"
        );
        debug_assert!(old != u32::MAX, "frame reference count overflow");
    }

    /// Takes a reference unless the count is zero (the frame is free or
    /// being freed): for callers that found the frame without holding a
    /// reference, e.g. through a page-table entry another CPU may replace
    /// (Linux's `get_page_unless_zero`). Acquire: what earlier holders
    /// wrote to the frame before their Release decrements is visible to the
    /// new holder.
    #[inline]
    pub fn try_get_ref(&self) -> bool {
        let mut cur = self.refcount.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return false;
            }
            match self.refcount.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Drops a reference; `true` if it was the last one and the caller
    /// must now free the frame.
    ///
    /// Release on the decrement orders this CPU's accesses to the frame
    /// before the count reaches zero; the Acquire fence taken by the CPU
    /// that sees zero pairs with every earlier decrement's Release, so the
    /// freeing CPU (and whoever reuses the frame next) runs after all of
    /// them.
    #[inline]
    pub fn put_ref(&self) -> bool {
        let old = self.refcount.fetch_sub(1, Ordering::Release);
        debug_assert!(
            old != 0,
            "put_ref on a frame with no references (double put)"
        );
        if old == 1 {
            fence(Ordering::Acquire);
            true
        } else {
            false
        }
    }

    /// Number of page-table entries mapping this frame (a snapshot).
    #[inline]
    pub fn map_count(&self) -> u32 {
        self.mapcount.load(Ordering::Relaxed)
    }

    /// One more page-table entry maps the frame. Relaxed: the mapping
    /// itself is published by the page-table lock of the mapper.
    #[inline]
    pub fn inc_map_count(&self) {
        self.mapcount.fetch_add(1, Ordering::Relaxed);
    }

    /// One fewer mapping; `true` if it was the last one.
    #[inline]
    pub fn dec_map_count(&self) -> bool {
        let old = self.mapcount.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(old != 0, "map count underflow");
        old == 1
    }
}

impl core::fmt::Debug for PageMeta {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageMeta")
            .field("flags", &self.flags())
            .field("order", &self.order())
            .field("refcount", &self.ref_count())
            .field("mapcount", &self.map_count())
            .finish()
    }
}
