//! Shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`).
//!
//! Linux backs such a mapping with a shmem file; Samara with a small
//! object: a reference count (one per VMA that maps it) and a sparse
//! array of frames indexed by page offset. The array is an
//! [`mm::pgtable`](crate::pgtable) radix tree in the host-neutral
//! [`SoftPte`] format, keyed by `pgoff * PAGE_SIZE`, so pages are added
//! lock-free exactly as faults install entries, and two faults on one
//! offset agree on one frame.
//!
//! Every frame in the object holds one reference for the object; each
//! page-table entry mapping it holds one more.

use core::marker::PhantomData;
use core::ptr::NonNull;

use super::PAGE;
use crate::addr::Frame;
use crate::cpu::CpuId;
use crate::frame::FrameAllocator;
use crate::pgtable::{
    FlushRange, InstallError, PageTable, Prot, Pte, PteFormat, SoftPte, TlbFlush, TlbGather,
};
use crate::slab::{Ctor, Slab, SlabObject, SlabPtr};
use crate::sync::{AtomicU32, Ordering};
use crate::vma::lock::MmId;

/// A shared anonymous memory object.
pub struct Shm<'a> {
    refs: AtomicU32,
    pages: PageTable<'a, SoftPte>,
    /// Pages in the object (`len / PAGE_SIZE` when created).
    nr_pages: u64,
}

/// The slab object type of shared-memory objects.
pub struct ShmObj<'a>(PhantomData<&'a ()>);

impl<'a> SlabObject for ShmObj<'a> {
    type Stable = ();
    type Payload = Shm<'a>;

    fn construct(_: &Ctor<'_>) {}
}

/// The object's radix tree is never walked by an MMU: nothing to flush.
struct NoMmu;

impl TlbFlush for NoMmu {
    fn flush_range(&self, _: MmId, _: FlushRange) {}
    fn flush_all(&self, _: MmId) {}
}

impl<'a> Shm<'a> {
    /// A new object of `nr_pages` pages with one reference; returns its
    /// opaque pointer for [`crate::vma::VmaPayload::set_shm`].
    pub(super) fn create(
        slab: &Slab<'a, ShmObj<'a>>,
        frames: &'a FrameAllocator,
        cpu: CpuId,
        nr_pages: u64,
    ) -> Result<*mut u8, super::Errno> {
        let limit = nr_pages
            .checked_mul(PAGE)
            .filter(|&l| l <= SoftPte::USER_VA_END)
            .ok_or(super::Errno::NoMem)?;
        let pages = PageTable::with_limit(frames, cpu, limit)?;
        let shm = Shm {
            refs: AtomicU32::new(1),
            pages,
            nr_pages,
        };
        match slab.try_alloc(cpu, shm) {
            Ok(owned) => Ok(owned.publish().as_raw().as_ptr()),
            Err((e, shm)) => {
                // The page table must be torn down, not dropped (dropping
                // one leaks its root, and panics in debug builds).
                shm.destroy(frames, cpu);
                Err(e.into())
            }
        }
    }

    /// Frees the object's pages (one reference each) and its radix tree.
    fn destroy(self, frames: &FrameAllocator, cpu: CpuId) {
        let mut put_frame = |f: Frame| {
            // SAFETY: each frame in the object holds the object's one reference, dropped here.
            unsafe { frames.put(cpu, f, 0) };
        };
        let flusher = NoMmu;
        let mut g = TlbGather::new(MmId::NONE, cpu, &flusher, frames, &mut put_frame);
        self.pages.destroy(&mut g);
        g.finish();
    }

    /// # Safety
    /// `p` came from [`Shm::create`] and the object is referenced for `'b`.
    pub(super) unsafe fn from_ptr<'b>(p: *mut u8) -> &'b Shm<'a> {
        // SAFETY: forwarded contract.
        unsafe { SlabPtr::<ShmObj<'a>>::from_raw(NonNull::new_unchecked(p)).payload() }
    }

    /// Another VMA maps the object. Relaxed: the caller already holds a
    /// reference (that VMA's).
    pub(super) fn get(&self) {
        self.refs.fetch_add(1, Ordering::Relaxed);
    }

    /// A VMA stops mapping the object; the last one frees it and its pages.
    ///
    /// # Safety
    /// `p` is the object this is called on (from [`Shm::create`]); the
    /// caller's VMA held one reference and drops it.
    pub(super) unsafe fn put(
        p: *mut u8,
        slab: &Slab<'a, ShmObj<'a>>,
        frames: &FrameAllocator,
        cpu: CpuId,
    ) {
        // SAFETY: referenced (the caller's).
        let me = unsafe { Shm::from_ptr(p) };
        // AcqRel: the last put sees every other holder's use first.
        if me.refs.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // SAFETY: the count reached zero: ours alone. Take the page table out of the object before freeing it.
        let sp = unsafe { SlabPtr::<ShmObj<'a>>::from_raw(NonNull::new_unchecked(p)) };
        // SAFETY: as above.
        let owned = unsafe { slab.reclaim(cpu, sp) };
        owned.into_payload().destroy(frames, cpu);
    }

    /// The frame at `pgoff`, allocating a zeroed one if there is none yet.
    pub(super) fn get_or_alloc(
        &self,
        frames: &FrameAllocator,
        cpu: CpuId,
        pgoff: u64,
    ) -> Result<Frame, ()> {
        if pgoff >= self.nr_pages {
            return Err(());
        }
        let key = pgoff * PAGE;
        if let Some(f) = self.pages.lookup(key).frame() {
            return Ok(f);
        }
        let frame = frames.alloc_zeroed(cpu, 0).map_err(|_| ())?;
        match self
            .pages
            .install_leaf(key, Pte::leaf(frame, Prot::READ | Prot::WRITE), cpu)
        {
            Ok(()) => Ok(frame),
            Err(InstallError::AlreadyPresent(winner)) => {
                // SAFETY: ours, never published.
                unsafe { frames.free(cpu, frame, 0) };
                winner.frame().ok_or(())
            }
            Err(_) => {
                // SAFETY: as above.
                unsafe { frames.free(cpu, frame, 0) };
                Err(())
            }
        }
    }
}
