//! Cross-CPU TLB shootdown: the arch-neutral protocol behind the kernel's
//! [`TlbFlush`](crate::pgtable::TlbFlush).
//!
//! When a page-table entry is removed or its rights shrink, every CPU that
//! may hold the old translation must drop it before the frame (or table)
//! is reused. Which CPUs those are: the ones that have the address space
//! *loaded* — running one of its tasks, or lazily keeping its page tables
//! while running a kernel thread or idle — plus the ones that keep its
//! translations under a TLB tag that is not loaded (x86 PCIDs, MIPS ASIDs).
//!
//! # Protocol
//!
//! Each CPU has a slot: `loaded` (the address space it has loaded, an
//! [`MmId`](crate::vma::lock::MmId)'s raw value, 0 for none), `pending`
//! (a bit per initiator whose request it has not answered), and, as an
//! initiator, one request (`mm`, range) with a `waiting` mask of the CPUs
//! yet to acknowledge it. An initiator on CPU `c`, after clearing the
//! entries:
//!
//! 1. [`ShootdownOps::invalidate_cached`]`(mm)`: every CPU's *unloaded* tags
//!    of `mm` are marked stale, so the next activation there flushes.
//! 2. Samples every other CPU's `loaded` with an RMW (`fetch_add(0)`,
//!    AcqRel); the CPUs that have `mm` loaded are the targets.
//! 3. Flushes locally if it has `mm` loaded itself.
//! 4. Writes its request, sets `waiting` = targets (Release), sets its bit
//!    in each target's `pending` (Release RMW), kicks them (an IPI on x86;
//!    nothing on MIPS, whose CPUs poll), and spins until `waiting` is 0,
//!    servicing its own `pending` meanwhile (two CPUs may shoot at each
//!    other).
//!
//! A target services from the IPI handler, the timer tick, idle, and every
//! spin-wait loop (`mm::sync::set_relax_hook`): it takes its `pending` mask
//! (Acquire swap), and for each request, if it still has that `mm` loaded,
//! calls [`ShootdownOps::flush_local`], then clears its bit in the
//! initiator's `waiting` (Release).
//!
//! # Why no stale translation survives
//!
//! A CPU activates an address space by [`Shootdown::set_loaded`] (a swap,
//! AcqRel), *then* the arch's activation, which consults the stale marks.
//! The initiator's sample in step 2 and that swap are RMWs of the same
//! word, so they are ordered: if the sample comes later it sees `mm` and
//! the CPU is a target; if it comes first, the swap reads what the sample
//! wrote, acquiring the initiator's step-1 marks (released by the sample),
//! so the activation flushes. (Plain SeqCst loads and stores would express
//! the same Dekker pattern on hardware; RMWs make it hold in the C++ model
//! loom checks.) A CPU that switches *away* from `mm` between the sample
//! and its service skips the flush, and its tag of `mm` was marked in step
//! 1. Without tags (no PCID) every activation flushes anyway.
//!
//! # Ordering pairs
//!
//! - (S1) `set_loaded`'s AcqRel swap ↔ the initiator's AcqRel sample (above).
//! - (S2) The initiator's Release RMW of a target's `pending` ↔ the target's
//!   Acquire swap of it: the target sees the request's fields.
//! - (S3) The target's Release `fetch_and` of `waiting` ↔ the initiator's
//!   Acquire load: the target's flush happens before the initiator frees
//!   anything, and before it overwrites the request for its next flush.
//! - (S4) A stale mark's AcqRel RMW ([`ShootdownOps::invalidate_cached`])
//!   ↔ the activation's AcqRel RMW that takes it (the arch's activation):
//!   an activation that consumes the mark, possibly before the initiator's
//!   sample, also sees the entries the initiator cleared before marking,
//!   so it cannot refill its TLB from them after flushing. (The loom model
//!   `mm/tests/loom_shootdown.rs` fails with a Relaxed mark.) Marks are
//!   RMWs rather than Release stores because every access to a mark word
//!   is then totally ordered, which is what makes (S1)'s argument hold in
//!   loom's model (a plain store there lets loom read an older mark).
//!
//! # Deadlock freedom
//!
//! The kernel runs with interrupts off, so an IPI reaches a CPU only in user
//! mode or idle. A CPU in the kernel either returns to one of those, or
//! spins — and every spin loop services. The initiator holds no lock the
//! service path needs (the service path takes none).

use crate::cpu::{CpuId, PerCpu, MAX_CPUS};
use crate::sync::{injected, spin_loop, AtomicU64, Fault, Ordering};

/// What the shootdown needs from the arch layer and the scheduler.
pub trait ShootdownOps {
    /// Marks, on every CPU, the translations of `mm` kept under a tag that
    /// is not loaded as stale, so that the next activation of `mm` there
    /// flushes them (x86: PCID slots; MIPS: ASIDs). Each mark must be an
    /// AcqRel read-modify-write (a swap), and the activation must take it
    /// with an AcqRel read-modify-write (pair (S4) below).
    fn invalidate_cached(&self, mm: u64);
    /// Makes the CPUs in `cpus` (bit n = CPU n) call [`Shootdown::service`]
    /// soon: an IPI, or nothing where CPUs poll.
    fn kick(&self, cpus: u64);
    /// On `cpu`, the calling CPU, which has `mm` loaded: drop its
    /// translations of `range` (`None`: all of `mm`'s). A CPU that holds
    /// `mm` only lazily may instead leave it (load the kernel context and
    /// [`Shootdown::set_loaded`]`(cpu, 0)`).
    fn flush_local(&self, cpu: CpuId, mm: u64, range: Option<(u64, u64)>);
}

/// Counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShootdownStats {
    /// Calls to [`Shootdown::flush`].
    pub flushes: u64,
    /// Flushes that had to wait for other CPUs.
    pub remote_flushes: u64,
    /// Requests sent to other CPUs (one per target per flush).
    pub requests: u64,
    /// Requests answered.
    pub serviced: u64,
}

struct Slot {
    /// The address space this CPU has loaded (0: none). Changed only by its
    /// own CPU, with an RMW (S1).
    loaded: AtomicU64,
    /// Bit i: CPU i's request awaits this CPU (S2).
    pending: AtomicU64,
    /// This CPU's request, as an initiator: written only by it, while
    /// `waiting` is 0; read by targets after they see their pending bit.
    req_mm: AtomicU64,
    req_start: AtomicU64,
    req_end: AtomicU64,
    /// CPUs that have not acknowledged this CPU's request (S3).
    waiting: AtomicU64,
    flushes: AtomicU64,
    remote_flushes: AtomicU64,
    requests: AtomicU64,
    serviced: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Slot {
            loaded: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            req_mm: AtomicU64::new(0),
            req_start: AtomicU64::new(0),
            req_end: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            remote_flushes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            serviced: AtomicU64::new(0),
        }
    }
}

/// A full flush is encoded as this range.
const ALL: (u64, u64) = (0, u64::MAX);

/// The shootdown state of a system. See the module documentation.
pub struct Shootdown {
    nr_cpus: usize,
    cpus: PerCpu<Slot>,
}

/// Increments a counter only its own CPU writes.
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl Shootdown {
    /// For CPUs `0..nr_cpus` (at most [`MAX_CPUS`]).
    pub fn new(nr_cpus: usize) -> Self {
        assert!((1..=MAX_CPUS).contains(&nr_cpus), "bad CPU count {nr_cpus}");
        Shootdown {
            nr_cpus,
            cpus: PerCpu::new(|_| Slot::new()),
        }
    }

    /// Records that `cpu` (the caller) now has `mm` loaded (0: none). Call
    /// it *before* activating `mm` in the MMU, so that an initiator either
    /// targets this CPU or this activation sees its stale marks (S1).
    pub fn set_loaded(&self, cpu: CpuId, mm: u64) {
        let prev = self.cpus.get(cpu).loaded.swap(mm, Ordering::AcqRel);
        let _ = prev;
    }

    /// What `cpu` has loaded (a snapshot; exact on `cpu` itself).
    pub fn loaded(&self, cpu: CpuId) -> u64 {
        self.cpus.get(cpu).loaded.load(Ordering::Relaxed)
    }

    /// Drops every CPU's translations of `range` (`None`: all) in `mm`, and
    /// returns when none can be used any more. `cpu` is the caller.
    pub fn flush(&self, cpu: CpuId, mm: u64, range: Option<(u64, u64)>, ops: &impl ShootdownOps) {
        let me = self.cpus.get(cpu);
        bump(&me.flushes);
        // 1. Unloaded tags, before the sample (released by its RMW, S1).
        ops.invalidate_cached(mm);
        // 2. Sample who has `mm` loaded.
        let mut targets = 0u64;
        for t in (0..self.nr_cpus).filter(|&t| t != cpu) {
            let slot = self.cpus.get(t);
            // (S1) An RMW, ordered against the target's `set_loaded` swap.
            let loaded = if injected(Fault::ShootdownSampleLoad) {
                slot.loaded.load(Ordering::Acquire)
            } else {
                slot.loaded.fetch_add(0, Ordering::AcqRel)
            };
            if loaded == mm {
                targets |= 1 << t;
            }
        }
        // 3. Ourselves.
        if me.loaded.load(Ordering::Relaxed) == mm {
            ops.flush_local(cpu, mm, range);
        }
        if targets == 0 {
            return;
        }
        // 4. The request. Nobody reads it now: our previous request was
        // acknowledged by all its targets (S3) before we returned.
        let (start, end) = range.unwrap_or(ALL);
        me.req_mm.store(mm, Ordering::Relaxed);
        me.req_start.store(start, Ordering::Relaxed);
        me.req_end.store(end, Ordering::Relaxed);
        me.waiting.store(targets, Ordering::Relaxed);
        bump(&me.remote_flushes);
        let mut m = targets;
        while m != 0 {
            let t = m.trailing_zeros() as usize;
            m &= m - 1;
            // (S2) Release: the request's fields (and `waiting`) before the
            // bit; pairs with the Acquire swap in `service`.
            let order = if injected(Fault::ShootdownPendingRelaxed) {
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            self.cpus.get(t).pending.fetch_or(1 << cpu, order);
            bump(&me.requests);
        }
        ops.kick(targets);
        // (S3) Acquire pairs with the targets' Release `fetch_and`.
        while me.waiting.load(Ordering::Acquire) != 0 {
            self.service(cpu, ops);
            spin_loop();
        }
    }

    /// Answers the requests pending for `cpu` (the caller). Cheap when there
    /// are none (one load).
    pub fn service(&self, cpu: CpuId, ops: &impl ShootdownOps) {
        let me = self.cpus.get(cpu);
        if me.pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        // (S2) Acquire pairs with the initiators' Release `fetch_or`.
        let mut p = me.pending.swap(0, Ordering::Acquire);
        while p != 0 {
            let i = p.trailing_zeros() as usize;
            p &= p - 1;
            let init = self.cpus.get(i);
            let mm = init.req_mm.load(Ordering::Relaxed);
            let range = (
                init.req_start.load(Ordering::Relaxed),
                init.req_end.load(Ordering::Relaxed),
            );
            if me.loaded.load(Ordering::Relaxed) == mm {
                ops.flush_local(cpu, mm, (range != ALL).then_some(range));
            }
            // (S3) Release: our flush happens before the initiator goes on;
            // pairs with its Acquire load of `waiting`.
            init.waiting.fetch_and(!(1 << cpu), Ordering::Release);
            bump(&me.serviced);
        }
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> ShootdownStats {
        let mut s = ShootdownStats::default();
        for (_, c) in self.cpus.iter().take(self.nr_cpus) {
            s.flushes += c.flushes.load(Ordering::Relaxed);
            s.remote_flushes += c.remote_flushes.load(Ordering::Relaxed);
            s.requests += c.requests.load(Ordering::Relaxed);
            s.serviced += c.serviced.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::vec::Vec;

    /// One `flush_local` call: CPU, address space, range.
    type Flushed = (CpuId, u64, Option<(u64, u64)>);

    /// Records what each CPU was asked to do.
    struct Log {
        flushed: Mutex<Vec<Flushed>>,
        kicked: AtomicU64,
        invalidated: Mutex<Vec<u64>>,
    }

    impl ShootdownOps for Log {
        fn invalidate_cached(&self, mm: u64) {
            self.invalidated.lock().unwrap().push(mm);
        }
        fn kick(&self, cpus: u64) {
            self.kicked.fetch_or(cpus, Ordering::Relaxed);
        }
        fn flush_local(&self, cpu: CpuId, mm: u64, range: Option<(u64, u64)>) {
            self.flushed.lock().unwrap().push((cpu, mm, range));
        }
    }

    fn log() -> Log {
        Log {
            flushed: Mutex::new(Vec::new()),
            kicked: AtomicU64::new(0),
            invalidated: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn local_only_when_nobody_else_has_it() {
        let s = Shootdown::new(4);
        let l = log();
        s.set_loaded(0, 7);
        s.set_loaded(1, 8);
        s.flush(0, 7, Some((0x1000, 0x3000)), &l);
        assert_eq!(
            *l.flushed.lock().unwrap(),
            vec![(0, 7, Some((0x1000, 0x3000)))]
        );
        assert_eq!(l.kicked.load(Ordering::Relaxed), 0);
        assert_eq!(*l.invalidated.lock().unwrap(), vec![7]);
        // Not loaded here either: only the stale marks.
        s.flush(2, 9, None, &l);
        assert_eq!(l.flushed.lock().unwrap().len(), 1);
        let st = s.stats();
        assert_eq!((st.flushes, st.remote_flushes, st.requests), (2, 0, 0));
    }

    #[test]
    fn remote_targets_are_exactly_the_cpus_with_the_mm_loaded() {
        let s = Shootdown::new(4);
        let l = log();
        for (cpu, mm) in [(0, 5), (1, 5), (2, 6), (3, 5)] {
            s.set_loaded(cpu, mm);
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|sc| {
            // CPUs 1..4 poll, as MIPS CPUs do from their tick.
            for cpu in 1..4 {
                let (s, l, done) = (&s, &l, &done);
                sc.spawn(move || {
                    while !done.load(Ordering::Acquire) {
                        s.service(cpu, l);
                        std::thread::yield_now();
                    }
                });
            }
            s.flush(0, 5, None, &l);
            done.store(true, Ordering::Release);
        });
        let mut f = l.flushed.lock().unwrap().clone();
        f.sort();
        assert_eq!(f, vec![(0, 5, None), (1, 5, None), (3, 5, None)]);
        assert_eq!(l.kicked.load(Ordering::Relaxed), 0b1010);
        let st = s.stats();
        assert_eq!((st.remote_flushes, st.requests, st.serviced), (1, 2, 2));
    }

    #[test]
    fn a_cpu_that_switched_away_skips_the_flush_but_answers() {
        let s = Shootdown::new(2);
        let l = log();
        s.set_loaded(1, 5);
        std::thread::scope(|sc| {
            let (s2, l2) = (&s, &l);
            let h = sc.spawn(move || s2.flush(0, 5, Some((0, 0x1000)), l2));
            // CPU 1 switches to another address space before it services.
            while s.cpus.get(1).pending.load(Ordering::Acquire) == 0 {
                std::thread::yield_now();
            }
            s.set_loaded(1, 6);
            s.service(1, &l);
            h.join().unwrap();
        });
        assert!(l.flushed.lock().unwrap().is_empty());
        assert_eq!(s.stats().serviced, 1);
    }

    #[test]
    fn two_initiators_shooting_at_each_other_both_finish() {
        let s = Shootdown::new(2);
        let l = log();
        s.set_loaded(0, 5);
        s.set_loaded(1, 5);
        let finished = AtomicU64::new(0);
        std::thread::scope(|sc| {
            for cpu in 0..2 {
                let (s, l, finished) = (&s, &l, &finished);
                sc.spawn(move || {
                    for _ in 0..200 {
                        s.flush(cpu, 5, Some((0x1000, 0x2000)), l);
                    }
                    // A CPU keeps answering after its own work, as a kernel
                    // CPU does from its tick and idle loop.
                    finished.fetch_add(1, Ordering::AcqRel);
                    while finished.load(Ordering::Acquire) < 2 {
                        s.service(cpu, l);
                        std::thread::yield_now();
                    }
                });
            }
        });
        // Each flush flushed locally and on the other CPU.
        assert_eq!(l.flushed.lock().unwrap().len(), 800);
        let st = s.stats();
        assert_eq!((st.flushes, st.requests, st.serviced), (400, 400, 400));
    }
}
