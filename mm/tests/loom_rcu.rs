//! Model checks of the RCU protocol (run with `--cfg loom`, see `cargo xtask test`).
//!
//! The model: an updater replaces a published object and frees the old one
//! from an RCU callback, while a reader that may have found the old object
//! is still reading it. Loom tracks every access to the object's data cell;
//! if the free is not ordered after the reader's access, it reports a
//! causality violation. Each mutation test removes one barrier or check the
//! protocol depends on and asserts that loom then finds the bug.
#![cfg(loom)]

use core::ptr::NonNull;
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicPtr, Ordering::*};
use loom::sync::Arc;
use mm::rcu::{Rcu, RcuHead};
use mm::sync::{with_fault, Fault};

#[repr(C)]
struct Obj {
    head: RcuHead,
    data: UnsafeCell<u64>,
    freed: Arc<AtomicBool>,
}

fn new_obj(v: u64, freed: &Arc<AtomicBool>) -> *mut Obj {
    Box::into_raw(Box::new(Obj {
        head: RcuHead::new(),
        data: UnsafeCell::new(v),
        freed: freed.clone(),
    }))
}

/// The callback: writes the data (the "free" loom must see ordered after
/// every reader) and releases the box.
unsafe fn free_obj(h: NonNull<RcuHead>) {
    // SAFETY: `head` is the first field of a leaked, `repr(C)` `Obj`, and each object is queued once.
    let obj = unsafe { Box::from_raw(h.as_ptr().cast::<Obj>()) };
    // SAFETY: the object is ours now; loom checks that no reader overlaps.
    obj.data.with_mut(|d| unsafe { *d = u64::MAX });
    obj.freed.store(true, Release);
}

unsafe fn nop(_: NonNull<RcuHead>) {}

fn model() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let rcu = Arc::new(Rcu::new());
        let freed = Arc::new(AtomicBool::new(false));
        let updater_done = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(AtomicPtr::new(new_obj(1, &freed)));

        // The updater (CPU 0) first gets a grace period going, so that the
        // reader can report for it before it starts reading: the callback
        // below must not be satisfied by that grace period.
        let mut upd = rcu.register_cpu(0).unwrap();
        let dummy = Box::leak(Box::new(RcuHead::new()));
        // SAFETY: the leaked head lives forever and is queued once.
        unsafe { rcu.call(0, NonNull::from(&*dummy), nop) };
        upd.quiescent_state();

        let reader = {
            let (rcu, slot, done) = (rcu.clone(), slot.clone(), updater_done.clone());
            loom::thread::spawn(move || {
                let mut me = rcu.register_cpu(1).unwrap();
                me.quiescent_state();
                {
                    let _g = me.read_lock();
                    let p = slot.load(Acquire);
                    // SAFETY: found under the read guard, so RCU keeps it alive (this is what the model checks).
                    let v = unsafe { (*p).data.with(|d| *d) };
                    assert_ne!(v, u64::MAX, "reader saw a freed object");
                }
                while !done.load(Acquire) {
                    me.quiescent_state();
                    loom::thread::yield_now();
                }
            })
        };

        let old = slot.swap(new_obj(2, &freed), AcqRel);
        // SAFETY: `old` is unpublished; its head is its first field.
        unsafe { rcu.call(0, NonNull::new_unchecked(old.cast()), free_obj) };
        while !freed.load(Acquire) {
            upd.quiescent_state();
            loom::thread::yield_now();
        }
        updater_done.store(true, Release);
        reader.join().unwrap();
        drop(upd);
        // SAFETY: the last object is still published and nobody reads it.
        drop(unsafe { Box::from_raw(slot.load(Acquire)) });
    });
}

#[test]
fn callback_never_runs_under_an_older_reader() {
    model();
}

fn assert_loom_catches(f: Fault) {
    let r = std::panic::catch_unwind(|| with_fault(f, model));
    assert!(
        r.is_err(),
        "loom found no bug with {f:?} injected: the model does not test it"
    );
}

#[test]
fn mutation_relaxed_report_is_caught() {
    assert_loom_catches(Fault::RcuReportRelaxed);
}

#[test]
fn mutation_snapshot_counting_current_gp_is_caught() {
    assert_loom_catches(Fault::RcuSnapCountsCurrentGp);
}

/// A reader CPU that is idle while the updater's grace period runs, then
/// wakes up and reads: the idle CPU must not hold the grace period up, and
/// its read after waking must not find the object the grace period frees.
fn idle_model() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let rcu = Arc::new(Rcu::new());
        let freed = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(AtomicPtr::new(new_obj(1, &freed)));
        let mut upd = rcu.register_cpu(0).unwrap();
        let reader = {
            let (rcu, slot) = (rcu.clone(), slot.clone());
            loom::thread::spawn(move || {
                let mut me = rcu.register_cpu(1).unwrap();
                me.enter_idle();
                me.exit_idle();
                {
                    let _g = me.read_lock();
                    let p = slot.load(Acquire);
                    // SAFETY: found under the read guard.
                    let v = unsafe { (*p).data.with(|d| *d) };
                    assert_ne!(v, u64::MAX, "reader saw a freed object");
                }
                me.enter_idle();
            })
        };
        let old = slot.swap(new_obj(2, &freed), AcqRel);
        // SAFETY: `old` is unpublished; its head is its first field.
        unsafe { rcu.call(0, NonNull::new_unchecked(old.cast()), free_obj) };
        while !freed.load(Acquire) {
            upd.quiescent_state();
            loom::thread::yield_now();
        }
        reader.join().unwrap();
        drop(upd);
        // SAFETY: the last object is still published and nobody reads it.
        drop(unsafe { Box::from_raw(slot.load(Acquire)) });
    });
}

#[test]
fn idle_cpu_neither_blocks_nor_breaks_grace_periods() {
    idle_model();
}

#[test]
fn mutation_idle_sampled_by_load_is_caught() {
    let r = std::panic::catch_unwind(|| with_fault(Fault::RcuIdleSampleLoad, idle_model));
    assert!(
        r.is_err(),
        "loom found no bug with the idle CPU sampled by a plain load"
    );
}
