//! Model checks of the TLB-shootdown protocol (run with `--cfg loom`, see
//! `cargo xtask test`).
//!
//! The model: CPU 0 unmaps a page of address space `M` and, once
//! `Shootdown::flush` returns, reuses the frame (writes it). CPU 1 runs `M`
//! with a one-entry TLB and one tagged context (a PCID): it activates `M`,
//! touches the page, switches away (keeping its tag), comes back, touches
//! it again, and keeps answering requests. A touch uses the cached
//! translation if there is one, else walks the page table. The model runs
//! with a tagged TLB (the tag and its entries survive the switch; the stale
//! marks matter) and without (every activation flushes; only the sampling
//! matters). Loom tracks the
//! frame's contents as a cell: a touch through a translation that survived
//! the shootdown is either a data race with the reuse or reads the reused
//! value, and both fail the model. Each mutation test removes one ordering
//! the protocol relies on and asserts that loom then finds the bug.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, Ordering, Ordering::*};
use loom::sync::Arc;
use mm::cpu::CpuId;
use mm::shootdown::{Shootdown, ShootdownOps};
use mm::sync::{with_fault, Fault};

const M: u64 = 0x77;
const REUSED: u64 = 666;

struct Machine {
    sd: Shootdown,
    /// The page-table entry (valid or not).
    pte: AtomicBool,
    /// The frame's contents.
    frame: UnsafeCell<u64>,
    /// CPU 1's TLB holds the translation (written only by CPU 1).
    cached: AtomicBool,
    /// CPU 1's tag of `M` is stale (set by initiators, taken by CPU 1).
    stale: AtomicBool,
    /// The ordering of `invalidate_cached`'s marking RMW (AcqRel, as the
    /// trait demands; Relaxed in the mutation test).
    mark: Ordering,
    /// Whether CPU 1 keeps `M`'s translations under a tag across switches
    /// (x86 PCID, MIPS ASID); without tags every activation flushes.
    tagged: bool,
    done: AtomicBool,
}

impl ShootdownOps for Machine {
    fn invalidate_cached(&self, mm: u64) {
        assert_eq!(mm, M);
        if self.tagged {
            self.stale.swap(true, self.mark);
        }
    }
    fn kick(&self, _cpus: u64) {}
    fn flush_local(&self, cpu: CpuId, mm: u64, _range: Option<(u64, u64)>) {
        assert_eq!((cpu, mm), (1, M), "only CPU 1 ever has M loaded");
        self.cached.store(false, Relaxed);
    }
}

impl Machine {
    /// CPU 1 loads `M` (the kernel's switch: `set_loaded`, then the arch's
    /// activation, which flushes the tag if it is stale).
    fn activate(&self) {
        self.sd.set_loaded(1, M);
        if !self.tagged || self.stale.swap(false, AcqRel) {
            self.cached.store(false, Relaxed);
        }
    }

    /// CPU 1 touches the page.
    fn touch(&self) {
        if !self.cached.load(Relaxed) {
            if !self.pte.load(Acquire) {
                return; // a page fault: no access
            }
            self.cached.store(true, Relaxed);
        }
        // SAFETY: the cell is valid; whether this read is ordered against the reuse is what loom checks.
        let v = self.frame.with(|d| unsafe { *d });
        assert_ne!(
            v, REUSED,
            "CPU 1 used a translation that survived the shootdown"
        );
    }
}

fn model() {
    model_with(AcqRel, true);
    model_with(AcqRel, false);
}

fn model_with(mark: Ordering, tagged: bool) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let m = Arc::new(Machine {
            sd: Shootdown::new(2),
            pte: AtomicBool::new(true),
            frame: UnsafeCell::new(1),
            cached: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            mark,
            tagged,
            done: AtomicBool::new(false),
        });
        let cpu1 = {
            let m = m.clone();
            loom::thread::spawn(move || {
                m.activate();
                m.touch();
                m.sd.service(1, &*m);
                // Switch to a kernel thread (lazy) and back: the tag and
                // the TLB entry survive the switch.
                m.sd.set_loaded(1, 0);
                m.activate();
                m.touch();
                while !m.done.load(Acquire) {
                    m.sd.service(1, &*m);
                    m.touch();
                    loom::thread::yield_now();
                }
            })
        };
        // CPU 0: unmap, shoot down, reuse.
        m.pte.store(false, Release);
        m.sd.flush(0, M, Some((0x1000, 0x2000)), &*m);
        // SAFETY: as in `touch`: loom checks this write against CPU 1's reads.
        m.frame.with_mut(|d| unsafe { *d = REUSED });
        m.done.store(true, Release);
        cpu1.join().unwrap();
    });
}

#[test]
fn no_translation_survives_a_shootdown() {
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
fn mutation_sampling_with_a_plain_load_is_caught() {
    assert_loom_catches(Fault::ShootdownSampleLoad);
}

#[test]
fn mutation_relaxed_request_post_is_caught() {
    assert_loom_catches(Fault::ShootdownPendingRelaxed);
}

/// The trait's demand that a stale mark release what came before: an activation
/// that consumes the mark must also see the cleared entry, or it refills
/// its TLB from the old one after having "flushed".
#[test]
fn relaxed_stale_mark_is_caught() {
    let r = std::panic::catch_unwind(|| model_with(Relaxed, true));
    assert!(
        r.is_err(),
        "loom found no bug with a Relaxed stale mark: the model does not test it"
    );
}
