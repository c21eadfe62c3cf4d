//! The kernel heap: a `GlobalAlloc` over the frame allocator.
//!
//! Requests up to [`MAX_SMALL`] bytes (after rounding the size up to the
//! alignment) come from power-of-two size classes of 16..=1024 bytes, each
//! a list of 4 KiB pages carved into equal slots: the page starts with a
//! [`PageHdr`] (its free list and in-use count), slots follow at multiples
//! of the class size. A page whose last slot is freed goes straight back to
//! the frame allocator, so the heap holds no memory nobody uses, and the
//! free-frame count returns to its boot value once every object is gone
//! (which the workloads check). Larger requests are whole blocks of
//! `2^order` frames, naturally aligned, freed directly.
//!
//! One lock serialises the size classes: the kernel allocates when it
//! creates and destroys tasks, never on the page-fault path. It is an
//! `mm::sync::SpinLock`, whose spin loop services TLB-shootdown requests.
//! Lock order: heap → frame allocator.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, Ordering};

use mm::addr::{Frame, PhysAddr, PAGE_SIZE};
use mm::sync::SpinLock;

use super::mem;

const MIN_SHIFT: u32 = 4;
const MAX_SHIFT: u32 = 10;
const NR_CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Largest request served from a size class.
pub const MAX_SMALL: usize = 1 << MAX_SHIFT;

/// The header at the start of every size-class page.
#[repr(C)]
struct PageHdr {
    next: *mut PageHdr,
    prev: *mut PageHdr,
    /// Free slots of this page, linked through their first word.
    free: *mut FreeSlot,
    in_use: u32,
    class: u32,
}

struct FreeSlot {
    next: *mut FreeSlot,
}

/// Per size class: the pages that have a free slot.
struct Classes {
    partial: [*mut PageHdr; NR_CLASSES],
}

// SAFETY: the raw pointers name heap pages, which are reached only under
// the heap lock.
unsafe impl Send for Classes {}

pub struct Heap {
    classes: SpinLock<Classes>,
    /// Frames the heap holds (size-class pages and large blocks).
    frames: AtomicU64,
}

#[global_allocator]
pub static HEAP: Heap = Heap {
    classes: SpinLock::new(Classes {
        partial: [ptr::null_mut(); NR_CLASSES],
    }),
    frames: AtomicU64::new(0),
};

/// The size class of a request, or `None` for a large one.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    if size > MAX_SMALL {
        return None;
    }
    let shift = size.next_power_of_two().trailing_zeros();
    Some((shift - MIN_SHIFT) as usize)
}

/// Offset of the first slot in a page of `class`: the header rounded up to
/// the slot size (slots are aligned to their size).
fn first_slot(class: usize) -> usize {
    let size = 1usize << (class as u32 + MIN_SHIFT);
    core::mem::size_of::<PageHdr>().next_multiple_of(size)
}

fn large_order(layout: Layout) -> u32 {
    let bytes = layout.size().max(layout.align());
    bytes
        .div_ceil(PAGE_SIZE)
        .next_power_of_two()
        .trailing_zeros()
}

impl Heap {
    /// Frames the heap currently holds.
    pub fn frames_held(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    fn alloc_frames(&self, order: u32) -> Option<NonNull<u8>> {
        let fa = mem::frames()?;
        let f = fa.alloc(super::cpu_id(), order).ok()?;
        self.frames.fetch_add(1 << order, Ordering::Relaxed);
        fa.frame_ptr(f)
    }

    /// # Safety
    /// `p` came from `alloc_frames(order)` and is not used any more.
    unsafe fn free_frames(&self, p: *mut u8, order: u32) {
        let Some(fa) = mem::frames() else { return };
        let pa: PhysAddr = fa
            .direct_map()
            .to_phys(p)
            .expect("heap pointer outside the direct map");
        self.frames.fetch_sub(1 << order, Ordering::Relaxed);
        // SAFETY: the block came from this allocator with this order and the caller no longer uses it; it is not mapped anywhere else.
        unsafe { fa.free(super::cpu_id(), Frame::containing(pa), order) };
    }

    /// # Safety
    /// `h` is a page of `c` that is on no list; the heap lock is held.
    unsafe fn push(c: &mut Classes, class: usize, h: *mut PageHdr) {
        // SAFETY: `h` and the list's pages are live heap pages (lock held).
        unsafe {
            (*h).prev = ptr::null_mut();
            (*h).next = c.partial[class];
            if let Some(n) = (*h).next.as_mut() {
                n.prev = h;
            }
        }
        c.partial[class] = h;
    }

    /// # Safety
    /// `h` is on `c.partial[class]`; the heap lock is held.
    unsafe fn unlink(c: &mut Classes, class: usize, h: *mut PageHdr) {
        // SAFETY: as for `push`.
        unsafe {
            if let Some(p) = (*h).prev.as_mut() {
                p.next = (*h).next;
            } else {
                c.partial[class] = (*h).next;
            }
            if let Some(n) = (*h).next.as_mut() {
                n.prev = (*h).prev;
            }
        }
    }
}

// SAFETY: `alloc` returns blocks of at least `layout.size()` bytes aligned
// to `layout.align()` (slots are aligned to their power-of-two size, which
// is at least the alignment; large blocks are page-aligned buddy blocks of
// at least the alignment), never hands out a block twice before it is
// freed (free lists and the frame allocator guarantee it), and `dealloc`
// finds the block's class or order from the same layout.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return self
                .alloc_frames(large_order(layout))
                .map_or(ptr::null_mut(), NonNull::as_ptr);
        };
        let mut c = self.classes.lock();
        let mut h = c.partial[class];
        if h.is_null() {
            let Some(page) = self.alloc_frames(0) else {
                return ptr::null_mut();
            };
            h = page.as_ptr().cast::<PageHdr>();
            let size = 1usize << (class as u32 + MIN_SHIFT);
            let mut free: *mut FreeSlot = ptr::null_mut();
            let mut off = PAGE_SIZE;
            while off - size >= first_slot(class) {
                off -= size;
                // SAFETY: the page is ours (fresh from the frame allocator); each slot lies inside it and is aligned for a pointer.
                let slot = unsafe { page.as_ptr().add(off) }.cast::<FreeSlot>();
                // SAFETY: as above.
                unsafe { slot.write(FreeSlot { next: free }) };
                free = slot;
            }
            // SAFETY: the page is ours and page-aligned; the header fits.
            unsafe {
                h.write(PageHdr {
                    next: ptr::null_mut(),
                    prev: ptr::null_mut(),
                    free,
                    in_use: 0,
                    class: class as u32,
                });
                Self::push(&mut c, class, h);
            }
        }
        // SAFETY: `h` is a live page on the partial list (lock held), so it has at least one free slot.
        unsafe {
            let slot = (*h).free;
            (*h).free = (*slot).next;
            (*h).in_use += 1;
            if (*h).free.is_null() {
                Self::unlink(&mut c, class, h);
            }
            slot.cast()
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: a large block of this layout's order (the caller's GlobalAlloc contract: same layout as at allocation).
            unsafe { self.free_frames(p, large_order(layout)) };
            return;
        };
        let h = (p as usize & !(PAGE_SIZE - 1)) as *mut PageHdr;
        let mut c = self.classes.lock();
        // SAFETY: `p` is a slot of the live page `h` of this class (the caller's contract); the lock is held.
        let empty = unsafe {
            debug_assert_eq!(
                (*h).class as usize,
                class,
                "heap: freed with another layout"
            );
            let was_full = (*h).free.is_null();
            let slot = p.cast::<FreeSlot>();
            slot.write(FreeSlot { next: (*h).free });
            (*h).free = slot;
            (*h).in_use -= 1;
            if was_full {
                Self::push(&mut c, class, h);
            }
            if (*h).in_use == 0 {
                Self::unlink(&mut c, class, h);
                true
            } else {
                false
            }
        };
        drop(c);
        if empty {
            // SAFETY: the page has no allocated slot and is on no list.
            unsafe { self.free_frames(h.cast(), 0) };
        }
    }
}
