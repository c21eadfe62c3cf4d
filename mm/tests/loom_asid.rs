//! Model check of the MIPS configuration of the TLB shootdown: the kernel's
//! protocol (`mm::shootdown`) with the real ASID tables (`mm::asid`) and a
//! TLB whose entries are tagged with hardware ASIDs, as the refill handler
//! writes them. Run with `--cfg loom` (see `cargo xtask test`).
//!
//! CPU 0 unmaps a page of address space `M`, flushes it, then reuses the
//! frame (writes it). CPU 1 loads `M` (publishes it, then takes an ASID),
//! touches the page, switches away (ASID 0: the kernel), comes back (the
//! ASID it gets depends on whether CPU 0's stale mark reached it), touches
//! the page again, and keeps answering requests from its "tick". A touch
//! uses the TLB entry tagged with the current ASID if there is one, else
//! refills with a plain load of the page-table entry. Loom tracks the
//! frame's contents as a cell, so a touch through a translation that
//! survived the shootdown is a data race with the reuse (or reads the
//! reused value): either fails the model. The mutation tests drop the stale
//! mark, or let activation overwrite it with a plain store (the first
//! version of `mm::asid` did), and assert that loom then finds CPU 1
//! reading through its old ASID's entry.
#![cfg(loom)]

use std::cell::{Cell, RefCell};

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, Ordering::*};
use loom::sync::Arc;
use mm::asid::{AsidTable, LocalTlb};
use mm::cpu::CpuId;
use mm::shootdown::{Shootdown, ShootdownOps};
use mm::sync::{with_fault, Fault};

const M: u64 = 0x4000;
const PAGE: u64 = 4096;
const REUSED: u64 = 666;

struct World {
    sd: Shootdown,
    asids: Box<AsidTable>,
    /// The page-table entry of the one page (mapped or not).
    pte: AtomicBool,
    frame: UnsafeCell<u64>,
    done: AtomicBool,
}

/// One CPU's TLB (the single page's entries, by ASID) and EntryHi.ASID.
struct Cpu<'w> {
    w: &'w World,
    id: CpuId,
    entries: RefCell<Vec<u64>>,
    asid: Cell<u64>,
}

impl LocalTlb for Cpu<'_> {
    fn flush_all(&self) {
        self.entries.borrow_mut().clear();
    }
}

impl ShootdownOps for Cpu<'_> {
    fn invalidate_cached(&self, mm: u64) {
        self.w.asids.invalidate_cached(mm);
    }
    fn kick(&self, _cpus: u64) {}
    fn flush_local(&self, cpu: CpuId, mm: u64, range: Option<(u64, u64)>) {
        assert_eq!((cpu, mm), (self.id, M));
        match range {
            // The probe-and-invalidate of the current ASID's pair.
            Some(_) => {
                let a = self.asid.get();
                self.entries.borrow_mut().retain(|&e| e != a);
            }
            None => {
                let a = self.w.asids.drop_current(cpu, self).expect("M is loaded");
                self.asid.set(a);
            }
        }
    }
}

impl<'w> Cpu<'w> {
    fn new(w: &'w World, id: CpuId) -> Self {
        Cpu {
            w,
            id,
            entries: RefCell::new(Vec::new()),
            asid: Cell::new(0),
        }
    }

    fn load(&self) {
        self.w.sd.set_loaded(self.id, M);
        self.asid.set(self.w.asids.activate(self.id, M, self));
    }

    fn unload(&self) {
        self.asid.set(0);
        self.w.asids.deactivate(self.id);
        self.w.sd.set_loaded(self.id, 0);
    }

    /// A user load of the page.
    fn touch(&self) {
        let a = self.asid.get();
        if !self.entries.borrow().contains(&a) {
            // The refill handler: plain loads.
            if !self.w.pte.load(Relaxed) {
                return; // TLB invalid: the fault path, not modelled
            }
            self.entries.borrow_mut().push(a);
        }
        // SAFETY: a read of the frame through the translation; loom checks it against the reuse.
        let v = self.w.frame.with(|p| unsafe { *p });
        assert_ne!(v, REUSED, "read the frame after it was reused");
    }
}

fn model() {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(|| {
        let asids = AsidTable::boxed(8, 2).unwrap();
        let w = Arc::new(World {
            sd: Shootdown::new(2),
            asids,
            pte: AtomicBool::new(true),
            frame: UnsafeCell::new(1),
            done: AtomicBool::new(false),
        });
        let w1 = w.clone();
        let t = loom::thread::spawn(move || {
            let c = Cpu::new(&w1, 1);
            c.load();
            c.touch();
            c.unload(); // to a kernel thread
            c.load();
            c.touch();
            while !w1.done.load(Acquire) {
                w1.sd.service(1, &c);
                loom::thread::yield_now();
            }
            c.unload();
        });
        let c0 = Cpu::new(&w, 0);
        w.pte.store(false, Release);
        w.sd.flush(0, M, Some((0, PAGE)), &c0);
        // SAFETY: the reuse; loom checks it against CPU 1's reads.
        w.frame.with_mut(|p| unsafe { *p = REUSED });
        w.done.store(true, Release);
        t.join().unwrap();
    });
}

#[test]
fn a_cpu_that_switched_away_comes_back_with_a_fresh_asid() {
    model();
}

#[test]
fn mutation_skipping_the_stale_mark_is_caught() {
    let r = std::panic::catch_unwind(|| with_fault(Fault::AsidSkipMark, model));
    assert!(r.is_err(), "loom did not catch a missing stale mark");
}

#[test]
fn mutation_overwriting_a_stale_mark_is_caught() {
    let r = std::panic::catch_unwind(|| with_fault(Fault::AsidStoreOverMark, model));
    assert!(
        r.is_err(),
        "loom did not catch a mark overwritten by activation"
    );
}
