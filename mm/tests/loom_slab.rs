//! Model checks of the type-safe-by-RCU slab (run with `--cfg loom`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p mm --release --test loom_slab
//! ```
//!
//! The model: CPU 0 publishes an object, then unpublishes it, waits for
//! pinned readers to leave (detach), frees it — optionally reusing the slot
//! at once for an object with another identity, attached but published
//! nowhere — and shrinks the cache, which releases the now empty slab page.
//! CPU 1 meanwhile looks the object up under RCU, reads its stable part,
//! pins it (reference count in the stable part, refused when detached),
//! revalidates its identity and only then reads the payload.
//!
//! The stable part holds a loom-tracked cell that the constructor writes
//! and that the page release (dropping the stable parts) overwrites; a
//! reader's read of it that is not ordered before the release is a
//! causality violation, i.e. "the reader observed a freed slab page".
//!
//! Mutation tests: with the page freed without waiting for a grace period
//! (`Fault::SlabFreeWithoutGracePeriod`), loom must find the violation;
//! with the reader's revalidation dropped, the reader must be caught using
//! a reused object of another identity.
#![cfg(loom)]

use core::ptr::NonNull;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};
use loom::sync::Arc;
use mm::addr::PAGE_SIZE;
use mm::frame::{FrameConfig, HostFrames};
use mm::rcu::Rcu;
use mm::slab::{Ctor, Slab, SlabConfig, SlabObject, SlabPtr};
use mm::sync::{with_fault, Fault};

const LIVE: u64 = 0x11fe;
const DEAD: u64 = 0xdead;

struct Obj;

struct ObjStable {
    /// 0: detached (free or not yet attached); 1: attached; +1 per reader.
    refcnt: AtomicU32,
    /// Identity, set by the owner before attaching.
    key: AtomicU64,
    /// Stands for the memory of the slab page: written by the constructor
    /// and by the page release.
    page: UnsafeCell<u64>,
}

// SAFETY: `page` is written only by the constructor (before the object is
// published) and by the page release (after a grace period); everything
// else reads it. Whether those are really ordered is what loom checks.
unsafe impl Sync for ObjStable {}

impl Drop for ObjStable {
    fn drop(&mut self) {
        // SAFETY: dropped by the page release, when nobody may look.
        self.page.with_mut(|p| unsafe { *p = DEAD });
    }
}

impl SlabObject for Obj {
    type Stable = ObjStable;
    type Payload = u64;
    fn construct(_: &Ctor<'_>) -> ObjStable {
        ObjStable {
            refcnt: AtomicU32::new(0),
            key: AtomicU64::new(0),
            page: UnsafeCell::new(LIVE),
        }
    }
}

/// Pins unless detached. Acquire pairs with the Release attach, so a pinned
/// reader sees the payload and key written before the attach.
fn try_pin(st: &ObjStable) -> bool {
    let mut r = st.refcnt.load(Relaxed);
    loop {
        if r == 0 {
            return false;
        }
        match st.refcnt.compare_exchange(r, r + 1, Acquire, Relaxed) {
            Ok(_) => return true,
            Err(now) => r = now,
        }
    }
}

/// Allocates, fills in and attaches an object with identity `key`.
fn make(slab: &Slab<'_, Obj>, key: u64) -> SlabPtr<Obj> {
    let o = slab.alloc(0, key).unwrap();
    o.stable().key.store(key, Relaxed);
    // Attach. Release: pairs with `try_pin`'s Acquire.
    o.stable().refcnt.store(1, Release);
    o.publish()
}

/// Detaches (waiting for pinned readers; Acquire pairs with their Release
/// unpin) and frees.
fn retire(slab: &Slab<'_, Obj>, p: SlabPtr<Obj>) {
    // SAFETY: `p` is allocated and unpublished; we are its owner.
    let st = unsafe { p.stable() };
    while st.refcnt.compare_exchange(1, 0, Acquire, Relaxed).is_err() {
        loom::thread::yield_now();
    }
    // SAFETY: unpublished and detached: nobody can pin it any more; RCU readers may still look at the stable part, which the cache keeps.
    unsafe { slab.free_ptr(0, p) };
}

fn model(revalidate: bool, reuse: bool) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = executions.clone();
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = FrameConfig {
            nr_cpus: 2,
            pcp_batch: 1,
            pcp_high: 1,
        };
        let frames = Box::new(HostFrames::with_config(16 * PAGE_SIZE, &[], cfg));
        let rcu = Box::new(Rcu::new());
        let (pf, pr): (*const HostFrames, *const Rcu) = (&*frames, &*rcu);
        // SAFETY: the boxes are dropped last, after the reader is joined and the cache destroyed; until then these references are valid.
        let (fr, rc): (&'static HostFrames, &'static Rcu) = unsafe { (&*pf, &*pr) };
        let slab_cfg = SlabConfig {
            name: "loom",
            max_objects_per_page: 1,
            reserve_empty_pages: 0,
        };
        // SAFETY: destroyed below with `destroy` after the reader is gone.
        let slab = Box::new(unsafe { Slab::<Obj>::new_typesafe_by_rcu(fr, rc, slab_cfg) }.unwrap());
        // SAFETY: as for `frames`.
        let sl: &'static Slab<'static, Obj> = unsafe { &*(&*slab as *const Slab<'static, Obj>) };

        let mut h0 = rc.register_cpu(0).unwrap();
        let table = Arc::new(AtomicPtr::new(core::ptr::null_mut::<u8>()));
        // Release: a reader's Acquire load sees the constructed stable part,
        // the key, the payload and the attach.
        table.store(make(sl, 1).as_raw().as_ptr(), Release);
        let done = Arc::new(AtomicBool::new(false));

        let reader = {
            let (table, done) = (table.clone(), done.clone());
            loom::thread::spawn(move || {
                let mut h1 = rc.register_cpu(1).unwrap();
                {
                    let g = h1.read_lock();
                    if let Some(raw) = NonNull::new(table.load(Acquire)) {
                        // SAFETY: the table holds `Obj`s.
                        let p = unsafe { SlabPtr::<Obj>::from_raw(raw) };
                        // SAFETY: read from the table inside `g`; the cache is type-safe by RCU.
                        let st = unsafe { p.stable_rcu(&g) };
                        // SAFETY: a read; loom checks it against the release.
                        let v = st.page.with(|v| unsafe { *v });
                        assert_eq!(v, LIVE, "reader saw a freed slab page");
                        if try_pin(st) {
                            // Revalidate: the slot may have been reused for
                            // another object since we found it.
                            if !revalidate || st.key.load(Relaxed) == 1 {
                                // SAFETY: pinned.
                                let id = unsafe { *p.payload() };
                                assert_eq!(id, 1, "reader accepted a reused object");
                            }
                            // Release: pairs with `retire`'s Acquire.
                            st.refcnt.fetch_sub(1, Release);
                        }
                        // SAFETY: as above.
                        let v = st.page.with(|v| unsafe { *v });
                        assert_eq!(v, LIVE, "reader saw a freed slab page");
                    }
                }
                while !done.load(Acquire) {
                    h1.quiescent_state();
                    loom::thread::yield_now();
                }
            })
        };

        // CPU 0: unpublish, detach, free.
        let old = NonNull::new(table.swap(core::ptr::null_mut(), AcqRel)).unwrap();
        // SAFETY: the table holds `Obj`s.
        retire(sl, unsafe { SlabPtr::<Obj>::from_raw(old) });
        if reuse {
            // The slot is reused at once (LIFO CPU cache) by an object of
            // another identity, attached but not in the table.
            let again = make(sl, 2);
            assert_eq!(again.as_raw(), old, "the freed slot is reused at once");
            retire(sl, again);
        }
        // The page is empty; release it (through RCU).
        sl.shrink(0);
        while sl.pages_pending_rcu() > 0 {
            h0.quiescent_state();
            loom::thread::yield_now();
        }
        done.store(true, Release);
        reader.join().unwrap();

        (*slab).destroy(&mut h0);
        drop(h0);
        drop(rcu);
        drop(frames);
    });
    let n = executions.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("loom_slab: {n} executions (revalidate {revalidate}, reuse {reuse})");
    // The interleavings that matter (the reader between lookup, pin and its
    // reads; CPU 0 anywhere in free/shrink/release) are many: a handful of
    // executions would mean the model is not exploring them.
    assert!(n > 100, "only {n} executions explored");
}

#[test]
fn reader_never_observes_a_freed_slab_page() {
    model(true, false);
}

#[test]
fn reader_revalidates_a_reused_object() {
    model(true, true);
}

fn assert_loom_catches(what: &str, f: impl FnOnce() + std::panic::UnwindSafe) {
    let r = std::panic::catch_unwind(f);
    assert!(
        r.is_err(),
        "loom found no bug with {what}: the model does not test it"
    );
}

#[test]
fn mutation_page_freed_without_grace_period_is_caught() {
    assert_loom_catches("the slab page freed without a grace period", || {
        with_fault(Fault::SlabFreeWithoutGracePeriod, || model(true, false))
    });
}

#[test]
fn mutation_reader_without_revalidation_is_caught() {
    assert_loom_catches("the reader's revalidation removed", || model(false, true));
}
