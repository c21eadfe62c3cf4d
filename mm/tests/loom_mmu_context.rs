//! Model checks of the no-IPI TLB shootdown protocol (`mm::mmu_context`),
//! run with `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p mm --release --test loom_mmu_context -- --test-threads=1
//! ```
//!
//! CPU 0 unmaps a page (clears its entry), flushes the address space, then
//! frees the frame: a plain write to a loom cell standing for the frame's
//! contents. CPU 1 runs the address space and reads the frame through its
//! model TLB, refilling from the entry with a Relaxed load as the MIPS
//! refill handler does (plain `ld`s). Loom reports any read of the frame
//! that is not ordered before the free: a use of a translation after the
//! flush that dropped it returned. One model takes the posted path (CPU 1
//! running the address space when CPU 0 flushes, or activating it
//! concurrently: S1, S3), the other the lazy path (CPU 1 switching away
//! and back: S1, S2). Each mutation test removes one ordering the protocol
//! depends on and asserts that loom then finds the bug.
#![cfg(loom)]

use std::cell::RefCell;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::Arc;
use mm::mmu_context::{LocalTlb, MmTlb, TlbDomain};
use mm::sync::{with_fault, Fault};

const PAGE: u64 = 4096;
/// The page-table entry: frame 1 mapped; 0 once unmapped.
const MAPPED: u64 = 1;

static EXECUTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn explore(name: &str, model: fn()) {
    EXECUTIONS.store(0, std::sync::atomic::Ordering::Relaxed);
    model();
    eprintln!(
        "{name}: {} executions",
        EXECUTIONS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // Three preemptions: ~150 and ~300 executions, well under a second;
    // LOOM_MAX_PREEMPTIONS=4 explores ~500 and ~1000, also clean.
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b
}

/// One CPU's TLB: at most the one page of the model, tagged with its ASID.
#[derive(Default)]
struct Tlb {
    entry: RefCell<Option<u64>>,
}

impl LocalTlb for Tlb {
    fn flush_all(&self) {
        *self.entry.borrow_mut() = None;
    }
    fn flush_asid(&self, asid: u64, start: u64, end: u64) {
        let mut e = self.entry.borrow_mut();
        if *e == Some(asid) && start == 0 && end >= PAGE {
            *e = None;
        }
    }
}

struct World {
    d: TlbDomain,
    mm: MmTlb,
    pte: AtomicU64,
    /// The frame's contents.
    frame: UnsafeCell<u64>,
    done: AtomicBool,
}

fn world() -> Arc<World> {
    Arc::new(World {
        d: TlbDomain::new(8, 2).unwrap(),
        mm: MmTlb::new(),
        pte: AtomicU64::new(MAPPED),
        frame: UnsafeCell::new(7),
        done: AtomicBool::new(false),
    })
}

/// A user load of the page on CPU 1 with hardware ASID `asid`.
fn access(w: &World, tlb: &Tlb, asid: u64) {
    let hit = *tlb.entry.borrow() == Some(asid);
    if !hit {
        // The refill handler: a plain load of the entry.
        if w.pte.load(Ordering::Relaxed) != MAPPED {
            return; // TLB invalid: the fault path, not modelled
        }
        *tlb.entry.borrow_mut() = Some(asid);
    }
    // SAFETY: a read of the frame; loom checks it against the free.
    let v = w.frame.with(|p| unsafe { *p });
    assert_eq!(v, 7, "read the frame after it was freed");
}

/// CPU 1 answers until CPU 0 is done (it may be waiting for us).
fn answer_until_done(w: &World, tlb: &Tlb) {
    while !w.done.load(Ordering::Acquire) {
        w.d.answer(1, tlb);
        loom::thread::yield_now();
    }
}

/// CPU 0: unmap, flush, free.
fn unmap_and_free(w: &World) {
    let tlb = Tlb::default();
    w.pte.swap(0, Ordering::AcqRel);
    w.d.flush(0, &w.mm, 0, PAGE, &tlb);
    // SAFETY: the free; loom checks it against CPU 1's reads.
    w.frame.with_mut(|p| unsafe { *p = 0xdead });
    w.done.store(true, Ordering::Release);
}

/// CPU 1 activates the address space (possibly while CPU 0 flushes), reads
/// the page, answers, reads again.
fn posted_model() {
    builder().check(|| {
        EXECUTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let w = world();
        let w1 = w.clone();
        let t = loom::thread::spawn(move || {
            let tlb = Tlb::default();
            let asid = w1.d.activate(1, &w1.mm, &tlb);
            access(&w1, &tlb, asid);
            w1.d.answer(1, &tlb);
            access(&w1, &tlb, asid);
            answer_until_done(&w1, &tlb);
            w1.d.deactivate(1, &w1.mm);
        });
        unmap_and_free(&w);
        t.join().unwrap();
    });
}

/// CPU 1 runs the address space, switches away, and comes back, while CPU 0
/// flushes: the flush may find it running, or switched away (lazy).
fn lazy_model() {
    builder().check(|| {
        EXECUTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let w = world();
        let w1 = w.clone();
        let t = loom::thread::spawn(move || {
            let tlb = Tlb::default();
            let asid = w1.d.activate(1, &w1.mm, &tlb);
            access(&w1, &tlb, asid);
            w1.d.deactivate(1, &w1.mm);
            let asid = w1.d.activate(1, &w1.mm, &tlb);
            access(&w1, &tlb, asid);
            answer_until_done(&w1, &tlb);
            w1.d.deactivate(1, &w1.mm);
        });
        unmap_and_free(&w);
        t.join().unwrap();
    });
}

#[test]
fn posted_flush_orders_every_use_before_the_free() {
    explore("posted", posted_model);
}

#[test]
fn lazy_invalidation_orders_every_use_before_the_free() {
    explore("lazy", lazy_model);
}

fn assert_loom_catches(f: Fault, model: fn()) {
    let r = std::panic::catch_unwind(|| with_fault(f, model));
    assert!(r.is_err(), "loom did not catch {f:?}");
}

#[test]
fn mutation_flush_reading_the_context_with_a_load_is_caught() {
    assert_loom_catches(Fault::TlbFlushPlainLoad, posted_model);
}

#[test]
fn mutation_relaxed_deactivation_is_caught() {
    assert_loom_catches(Fault::TlbDeactivateRelaxed, lazy_model);
}
