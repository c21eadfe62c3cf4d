//! Model checks of per-VMA locking against VMA reuse (run with `--cfg loom`).
//!
//! The three reuse races of the reference patch ("mm: make vma cache
//! SLAB_TYPESAFE_BY_RCU"), a writer racing readers, and the mmap write
//! unlock releasing every VMA write lock at once. VMAs here are never freed
//! (type-safe-by-RCU memory stays a VMA), only detached and reused, which is
//! exactly what a lockless reader can run into. Each VMA carries a plain
//! `payload` cell that writers change only while the VMA is write-locked or
//! detached and readers read only while holding the VMA read lock: loom
//! reports any overlap. Each mutation test removes one check or barrier and
//! asserts that loom then finds a failure.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*};
use loom::sync::Arc;
use mm::sync::{with_fault, Fault};
use mm::vma::lock::{
    lock_vma_under_rcu, LockableVma, MmId, MmapLock, MmapWriteGuard, VmaLock, VmaLockStats,
};

const MM_A: MmId = MmId::from_raw(0xa000);
const MM_B: MmId = MmId::from_raw(0xb000);
const PAGE: u64 = 0x1000;

struct TVma {
    lock: VmaLock,
    owner: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
    /// Stands for everything else a fault reads: range copy for checking.
    payload: UnsafeCell<(u64, u64, u64)>,
}

impl LockableVma for &TVma {
    fn vma_lock(&self) -> &VmaLock {
        &self.lock
    }
    fn owner(&self) -> MmId {
        MmId::from_raw(self.owner.load(Relaxed))
    }
    fn covers(&self, addr: u64) -> bool {
        self.start.load(Relaxed) <= addr && addr < self.end.load(Relaxed)
    }
}

impl TVma {
    fn new() -> Self {
        TVma {
            lock: VmaLock::new_detached(),
            owner: AtomicU64::new(0),
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            payload: UnsafeCell::new((0, 0, 0)),
        }
    }

    /// Sets up a detached (fresh or reused) VMA and attaches it in `tree`.
    fn attach(&self, g: &MmapWriteGuard<'_>, tree: &AtomicPtr<TVma>, mm: MmId, start: u64) {
        let w = self.lock.write_lock_unreachable(g);
        self.owner.store(mm.raw(), Relaxed);
        self.start.store(start, Relaxed);
        self.end.store(start + PAGE, Relaxed);
        self.payload.with_mut(|p| {
            // SAFETY: detached: no reader holds the lock (loom checks it).
            unsafe { *p = (mm.raw(), start, start + PAGE) }
        });
        tree.store(self as *const TVma as *mut TVma, Release);
        self.lock.mark_attached(w);
    }

    /// Takes the VMA out of `tree` and detaches it, as munmap does.
    fn detach(&self, g: &MmapWriteGuard<'_>, tree: &AtomicPtr<TVma>) {
        let w = self.lock.write_lock(g);
        tree.store(core::ptr::null_mut(), Release);
        self.lock.mark_detached(w);
    }
}

/// The reader side of a fault at `addr` in `mm`: lock the VMA under "RCU"
/// (the model's VMAs are never freed), then check what it locked.
fn fault(mm: MmId, mmap: &MmapLock, tree: &AtomicPtr<TVma>, addr: u64, stats: &VmaLockStats) {
    let lookup = |_addr: u64| {
        let p = tree.load(Acquire);
        // SAFETY: the model's VMAs live for the whole execution.
        (!p.is_null()).then(|| unsafe { &*p })
    };
    if let Some(g) = lock_vma_under_rcu(mm, mmap, addr, 0, stats, lookup) {
        // SAFETY: read-locked: writers must wait for us (loom checks it).
        let (owner, start, end) = g.vma().payload.with(|p| unsafe { *p });
        assert_eq!(owner, mm.raw(), "locked a VMA of another address space");
        assert!(
            start <= addr && addr < end,
            "locked a VMA that does not cover {addr:#x}"
        );
    }
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

/// Race 1: the VMA is freed and reused (same mm, other address) after the
/// reader found it but before it locked it. Race 3: reused and attached at
/// the new address while the reader is locking it.
fn race_reuse_same_mm() {
    builder().check(|| {
        let mmap_a = Arc::new(MmapLock::new());
        let vma = Arc::new(TVma::new());
        let tree = Arc::new(AtomicPtr::new(core::ptr::null_mut()));
        {
            let g = mmap_a.write();
            vma.attach(&g, &tree, MM_A, 0x1000);
        }
        let stats = Arc::new(VmaLockStats::new());
        let reader = {
            let (mmap_a, tree, stats) = (mmap_a.clone(), tree.clone(), stats.clone());
            loom::thread::spawn(move || fault(MM_A, &mmap_a, &tree, 0x1800, &stats))
        };
        // munmap, then mmap elsewhere reusing the same object; the reader's
        // stale lookup result is the object at its new address.
        let tree2 = AtomicPtr::new(core::ptr::null_mut());
        {
            let g = mmap_a.write();
            vma.detach(&g, &tree);
            // The index keeps pointing at the object, as a stale RCU
            // lookup result does.
            tree.store(Arc::as_ptr(&vma) as *mut TVma, Release);
            vma.attach(&g, &tree2, MM_A, 0x5000);
        }
        reader.join().unwrap();
    });
}

/// Race 2: reused and reinitialised for another mm while the reader locks
/// it (same address, so only the owner check can tell).
fn race_reuse_other_mm() {
    builder().check(|| {
        let mmap_a = Arc::new(MmapLock::new());
        let mmap_b = MmapLock::new();
        let vma = Arc::new(TVma::new());
        let tree = Arc::new(AtomicPtr::new(core::ptr::null_mut()));
        {
            let g = mmap_a.write();
            vma.attach(&g, &tree, MM_A, 0x1000);
        }
        let stats = Arc::new(VmaLockStats::new());
        let reader = {
            let (mmap_a, tree, stats) = (mmap_a.clone(), tree.clone(), stats.clone());
            loom::thread::spawn(move || fault(MM_A, &mmap_a, &tree, 0x1800, &stats))
        };
        {
            let g = mmap_a.write();
            vma.detach(&g, &tree);
            tree.store(Arc::as_ptr(&vma) as *mut TVma, Release);
        }
        let tree_b = AtomicPtr::new(core::ptr::null_mut());
        {
            let g = mmap_b.write();
            vma.attach(&g, &tree_b, MM_B, 0x1000);
        }
        reader.join().unwrap();
    });
}

/// A writer changes an attached VMA under its write lock (an mprotect or
/// a split) while a reader faults in it.
fn writer_vs_reader() {
    builder().check(|| {
        let mmap = Arc::new(MmapLock::new());
        let vma = Arc::new(TVma::new());
        let tree = Arc::new(AtomicPtr::new(core::ptr::null_mut()));
        {
            let g = mmap.write();
            vma.attach(&g, &tree, MM_A, 0x1000);
        }
        let stats = Arc::new(VmaLockStats::new());
        let reader = {
            let (mmap, tree, stats) = (mmap.clone(), tree.clone(), stats.clone());
            loom::thread::spawn(move || fault(MM_A, &mmap, &tree, 0x1800, &stats))
        };
        {
            let g = mmap.write();
            let _w = vma.lock.write_lock(&g);
            // SAFETY: write-locked: readers are drained and kept out.
            vma.payload.with_mut(|p| unsafe { (*p).2 = 0x2000 });
        }
        reader.join().unwrap();
    });
}

/// Dropping the mmap write lock unlocks every VMA write-locked under it: a
/// reader that then locks either VMA sees the writer's changes, and does
/// get the lock eventually.
fn mmap_unlock_releases_all() {
    builder().check(|| {
        let mmap = Arc::new(MmapLock::new());
        let (v1, v2) = (Arc::new(TVma::new()), Arc::new(TVma::new()));
        let (t1, t2) = (
            Arc::new(AtomicPtr::new(core::ptr::null_mut())),
            Arc::new(AtomicPtr::new(core::ptr::null_mut())),
        );
        {
            let g = mmap.write();
            v1.attach(&g, &t1, MM_A, 0x1000);
            v2.attach(&g, &t2, MM_A, 0x2000);
        }
        let stats = Arc::new(VmaLockStats::new());
        let writer = {
            let (mmap, v1, v2) = (mmap.clone(), v1.clone(), v2.clone());
            loom::thread::spawn(move || {
                let g = mmap.write();
                for v in [&v1, &v2] {
                    let _w = v.lock.write_lock(&g);
                    v.payload.with_mut(|p| {
                        // SAFETY: write-locked.
                        unsafe { (*p).2 = (*p).1 + 2 * PAGE }
                    });
                }
            })
        };
        for (t, addr) in [(&t1, 0x1800u64), (&t2, 0x2800)] {
            let lookup = |_a: u64| {
                let p = t.load(Acquire);
                // SAFETY: the model's VMAs live for the whole execution.
                (!p.is_null()).then(|| unsafe { &*p })
            };
            loop {
                if let Some(g) = lock_vma_under_rcu(MM_A, &mmap, addr, 0, &stats, lookup) {
                    // SAFETY: read-locked.
                    let (_, s, e) = g.vma().payload.with(|p| unsafe { *p });
                    assert!(e == s + PAGE || e == s + 2 * PAGE);
                    break;
                }
                loom::thread::yield_now();
            }
        }
        writer.join().unwrap();
        let s = stats.snapshot();
        assert_eq!(s.miss, 0);
    });
}

#[test]
fn reuse_in_same_mm_is_caught_by_the_range_check() {
    race_reuse_same_mm();
}

#[test]
fn reuse_by_other_mm_is_caught_by_the_owner_check() {
    race_reuse_other_mm();
}

#[test]
fn writer_excludes_readers() {
    writer_vs_reader();
}

#[test]
fn mmap_write_unlock_releases_every_vma_write_lock() {
    mmap_unlock_releases_all();
}

fn assert_loom_catches(f: Fault, model: fn()) {
    let r = std::panic::catch_unwind(|| with_fault(f, model));
    assert!(
        r.is_err(),
        "loom found no bug with {f:?} injected: the model does not test it"
    );
}

#[test]
fn mutation_without_range_check_is_caught() {
    assert_loom_catches(Fault::VmaSkipRangeCheck, race_reuse_same_mm);
}

#[test]
fn mutation_without_owner_check_is_caught() {
    assert_loom_catches(Fault::VmaSkipMmCheck, race_reuse_other_mm);
}

#[test]
fn mutation_without_detached_check_is_caught() {
    assert_loom_catches(Fault::VmaSkipDetachedCheck, race_reuse_other_mm);
}

#[test]
fn mutation_with_relaxed_attach_is_caught() {
    assert_loom_catches(Fault::VmaAttachRelaxed, race_reuse_other_mm);
}
