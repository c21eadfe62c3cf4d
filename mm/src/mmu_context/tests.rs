use super::*;

use std::cell::{Cell, RefCell};
use std::sync::atomic::AtomicBool as StdAtomicBool;
use std::sync::Arc;
use std::vec::Vec;

/// A model of one CPU's TLB: a list of `(asid, page, value)` entries, and a
/// log of the calls the protocol made.
#[derive(Default)]
struct ModelTlb {
    entries: RefCell<Vec<(u64, u64, u64)>>,
    full_flushes: Cell<u64>,
    asid_flushes: RefCell<Vec<(u64, u64, u64)>>,
}

impl ModelTlb {
    fn lookup(&self, asid: u64, page: u64) -> Option<u64> {
        self.entries
            .borrow()
            .iter()
            .find(|e| e.0 == asid && e.1 == page)
            .map(|e| e.2)
    }

    fn insert(&self, asid: u64, page: u64, value: u64) {
        let mut e = self.entries.borrow_mut();
        e.retain(|x| !(x.0 == asid && x.1 == page));
        e.push((asid, page, value));
    }
}

impl LocalTlb for ModelTlb {
    fn flush_all(&self) {
        self.entries.borrow_mut().clear();
        self.full_flushes.set(self.full_flushes.get() + 1);
    }

    fn flush_asid(&self, asid: u64, start: u64, end: u64) {
        self.entries
            .borrow_mut()
            .retain(|e| !(e.0 == asid && start <= e.1 && e.1 < end));
        self.asid_flushes.borrow_mut().push((asid, start, end));
    }
}

#[test]
fn rejects_bad_configurations() {
    assert_eq!(
        TlbDomain::new(0, 1).unwrap_err(),
        DomainError::BadAsidBits(0)
    );
    assert_eq!(
        TlbDomain::new(17, 1).unwrap_err(),
        DomainError::BadAsidBits(17)
    );
    assert_eq!(
        TlbDomain::new(8, 0).unwrap_err(),
        DomainError::BadCpuCount(0)
    );
    assert_eq!(
        TlbDomain::new(8, MAX_CPUS + 1).unwrap_err(),
        DomainError::BadCpuCount(MAX_CPUS + 1)
    );
    assert_eq!(
        TlbDomain::new(8, 65).unwrap_err().to_string(),
        "65 CPUs (supported: 1..=64)"
    );
}

#[test]
fn asids_are_unique_per_version_and_roll_over_with_a_flush() {
    // 3-bit ASIDs: 1..=7 per version, 0 reserved.
    let d = TlbDomain::new(3, 1).unwrap();
    let tlb = ModelTlb::default();
    let mms: Vec<MmTlb> = (0..9).map(|_| MmTlb::new()).collect();
    let mut got = Vec::new();
    for mm in &mms[..7] {
        got.push(d.activate(0, mm, &tlb));
        d.deactivate(0, mm);
    }
    assert_eq!(got, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(tlb.full_flushes.get(), 0);
    // Re-activating within the version keeps the ASID.
    assert_eq!(d.activate(0, &mms[2], &tlb), 3);
    d.deactivate(0, &mms[2]);
    // The eighth address space wraps the version: full flush, ASID 1 again.
    assert_eq!(d.activate(0, &mms[7], &tlb), 1);
    d.deactivate(0, &mms[7]);
    assert_eq!(tlb.full_flushes.get(), 1);
    // mms[0] held version 1's ASID 1: stale now, so it gets a new one and
    // never shares ASID 1 with mms[7].
    assert_eq!(d.activate(0, &mms[0], &tlb), 2);
    d.deactivate(0, &mms[0]);
    let s = d.stats();
    assert_eq!(s.rollovers, 1);
    assert_eq!(s.asids, 9);
}

#[test]
fn active_bit_tracks_the_running_cpu() {
    let d = TlbDomain::new(8, 4).unwrap();
    let tlbs: Vec<ModelTlb> = (0..4).map(|_| ModelTlb::default()).collect();
    let mm = MmTlb::new();
    d.activate(1, &mm, &tlbs[1]);
    d.activate(3, &mm, &tlbs[3]);
    assert_eq!(mm.active_mask(), 0b1010);
    d.deactivate(1, &mm);
    assert_eq!(mm.active_mask(), 0b1000);
    assert_ne!(mm.context(1), 0, "deactivation keeps the ASID");
    d.deactivate(3, &mm);
    assert_eq!(mm.active_mask(), 0);
}

#[test]
fn flushing_an_inactive_address_space_invalidates_lazily() {
    let d = TlbDomain::new(8, 2).unwrap();
    let t0 = ModelTlb::default();
    let t1 = ModelTlb::default();
    let mm = MmTlb::new();
    let a = d.activate(1, &mm, &t1);
    t1.insert(a, 0x4000, 7);
    d.deactivate(1, &mm);
    // CPU 0 flushes; CPU 1 is not running the address space: nothing is
    // posted, its context word is zeroed instead.
    d.flush(0, &mm, 0x4000, 0x5000, &t0);
    assert_eq!(mm.context(1), 0);
    assert!(!d.has_request(1));
    let s = d.stats();
    assert_eq!((s.posted, s.lazy, s.local_flushes), (0, 1, 0));
    // CPU 1 comes back: a fresh ASID, so the stale entry is unreachable.
    let b = d.activate(1, &mm, &t1);
    assert_ne!(a, b);
    assert_eq!(t1.lookup(b, 0x4000), None);
    d.deactivate(1, &mm);
}

#[test]
fn flushing_on_the_running_cpu_flushes_locally() {
    let d = TlbDomain::new(8, 2).unwrap();
    let t0 = ModelTlb::default();
    let mm = MmTlb::new();
    let a = d.activate(0, &mm, &t0);
    t0.insert(a, 0x4000, 1);
    t0.insert(a, 0x9000, 2);
    d.flush(0, &mm, 0x4000, 0x5000, &t0);
    assert_eq!(t0.lookup(a, 0x4000), None);
    assert_eq!(t0.lookup(a, 0x9000), Some(2));
    assert_eq!(*t0.asid_flushes.borrow(), [(a, 0x4000, 0x5000)]);
    // The whole address space.
    d.flush(0, &mm, 0, WHOLE, &t0);
    assert_eq!(t0.lookup(a, 0x9000), None);
    assert_eq!(d.stats().local_flushes, 2);
    d.deactivate(0, &mm);
}

#[test]
fn requests_to_one_cpu_merge() {
    let p = Pending::None.merge(5, 0x1000, 0x2000);
    assert_eq!(
        p,
        Pending::Range {
            ctx: 5,
            start: 0x1000,
            end: 0x2000
        }
    );
    let p = p.merge(5, 0x8000, 0x9000);
    assert_eq!(
        p,
        Pending::Range {
            ctx: 5,
            start: 0x1000,
            end: 0x9000
        }
    );
    assert_eq!(p.merge(6, 0, 0x1000), Pending::All);
    assert_eq!(Pending::All.merge(5, 0, 0x1000), Pending::All);
}

#[test]
fn answer_skips_requests_from_an_older_version() {
    // 1-bit ASIDs: every second allocation rolls over.
    let d = TlbDomain::new(1, 2).unwrap();
    let t1 = ModelTlb::default();
    let mm = MmTlb::new();
    let other = MmTlb::new();
    let a = d.activate(1, &mm, &t1);
    let ctx = mm.context(1) & !ACTIVE;
    // Post by hand as CPU 0 would, then roll CPU 1 over before it answers.
    d.cpus.get(1).mailbox.locked(|p, posted| {
        *p = p.merge(ctx, 0, 0x1000);
        posted.store(posted.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    });
    d.deactivate(1, &mm);
    d.activate(1, &other, &t1); // version 2: full flush
    assert_eq!(t1.full_flushes.get(), 1);
    assert!(d.answer(1, &t1));
    assert!(
        t1.asid_flushes.borrow().is_empty(),
        "a stale-version request flushed ASID {a} of the new owner"
    );
    assert!(!d.has_request(1));
    d.deactivate(1, &other);
}

#[test]
fn answer_does_not_reenter() {
    let d = TlbDomain::new(8, 2).unwrap();
    let t1 = ModelTlb::default();
    d.cpus.get(1).mailbox.locked(|p, posted| {
        *p = Pending::All;
        posted.store(1, Ordering::Relaxed);
    });
    d.cpus.get(1).answering.store(true, Ordering::Relaxed);
    assert!(!d.answer(1, &t1), "answered from inside an answer");
    d.cpus.get(1).answering.store(false, Ordering::Relaxed);
    assert!(d.answer(1, &t1));
    assert_eq!(t1.full_flushes.get(), 1);
}

/// Page-table entries of the stress test: `frame << 32 | epoch`, 0 = none.
fn pte(frame: u64, epoch: u64) -> u64 {
    (frame << 32) | epoch
}

/// CPUs 1..N run user code in two address spaces (switching between them,
/// so both the posted and the lazy path are taken, with 2-bit ASIDs that
/// roll over constantly) and check every access made through their TLB
/// against the frame's current epoch; CPU 0 unmaps pages, flushes, and
/// "frees" the frame by bumping its epoch before mapping it again. A use
/// of a translation after the flush that dropped it returned shows up as
/// an epoch mismatch: between a TLB hit and its check a CPU does not
/// answer its mailbox, so no flush can complete in between.
#[test]
fn shootdown_stress_no_access_through_a_dropped_translation() {
    const CPUS: usize = 3;
    const PAGES: u64 = 8;
    const ROUNDS: u64 = if cfg!(miri) { 20 } else { 400 };
    struct Shared {
        d: TlbDomain,
        mms: [MmTlb; 2],
        ptes: [Vec<AtomicU64>; 2],
        epochs: Vec<AtomicU64>,
        stop: StdAtomicBool,
        started: AtomicU64,
        violations: AtomicU64,
    }
    let frames = 2 * PAGES;
    let s = Arc::new(Shared {
        d: TlbDomain::new(2, CPUS).unwrap(),
        mms: [MmTlb::new(), MmTlb::new()],
        ptes: core::array::from_fn(|m| {
            (0..PAGES)
                .map(|p| AtomicU64::new(pte(m as u64 * PAGES + p, 1)))
                .collect()
        }),
        epochs: (0..frames).map(|_| AtomicU64::new(1)).collect(),
        stop: StdAtomicBool::new(false),
        started: AtomicU64::new(0),
        violations: AtomicU64::new(0),
    });
    let workers: Vec<_> = (1..CPUS)
        .map(|cpu| {
            let s = s.clone();
            std::thread::spawn(move || {
                let tlb = ModelTlb::default();
                let mut accesses = 0u64;
                s.started.fetch_add(1, Ordering::Relaxed);
                let mut n = cpu as u64;
                while !s.stop.load(Ordering::Relaxed) {
                    let m = (n / 7 % 2) as usize;
                    let asid = s.d.activate(cpu, &s.mms[m], &tlb);
                    for _ in 0..16 {
                        n = n
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let page = (n >> 33) % PAGES;
                        let e = match tlb.lookup(asid, page) {
                            Some(e) => e,
                            None => {
                                // The refill handler: a plain load.
                                let e = s.ptes[m][page as usize].load(Ordering::Relaxed);
                                if e == 0 {
                                    continue; // would fault
                                }
                                tlb.insert(asid, page, e);
                                e
                            }
                        };
                        let (frame, epoch) = (e >> 32, e & 0xffff_ffff);
                        let now = s.epochs[frame as usize].load(Ordering::Relaxed);
                        if now != epoch {
                            // Not a panic: CPU 0 may be waiting for our
                            // answer and would never return.
                            eprintln!(
                                "CPU {cpu} used frame {frame} epoch {epoch} after it was \
                                 freed (now epoch {now})"
                            );
                            s.violations.fetch_add(1, Ordering::Relaxed);
                        }
                        accesses += 1;
                        if n & 1 == 0 {
                            s.d.answer(cpu, &tlb);
                        }
                    }
                    s.d.deactivate(cpu, &s.mms[m]);
                    s.d.answer(cpu, &tlb); // the context switch answers
                }
                accesses
            })
        })
        .collect();
    let t0 = ModelTlb::default();
    while s.started.load(Ordering::Relaxed) < CPUS as u64 - 1 {
        std::thread::yield_now();
    }
    for r in 0..ROUNDS {
        let m = (r % 2) as usize;
        let page = (r / 2) % PAGES;
        let slot = &s.ptes[m][page as usize];
        let old = slot.swap(0, Ordering::AcqRel);
        let frame = old >> 32;
        s.d.flush(0, &s.mms[m], page, page + 1, &t0);
        // Free and reuse the frame: a new epoch, mapped again.
        let epoch = s.epochs[frame as usize].fetch_add(1, Ordering::Relaxed) + 1;
        slot.store(pte(frame, epoch), Ordering::Release);
    }
    s.stop.store(true, Ordering::Relaxed);
    let accesses: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let st = s.d.stats();
    assert_eq!(s.violations.load(Ordering::Relaxed), 0);
    assert!(accesses > 0);
    assert_eq!(st.flushes, ROUNDS);
    assert!(st.posted > 0, "no request was ever posted: {st:?}");
    assert!(st.answers > 0);
    if !cfg!(miri) {
        assert!(st.lazy > 0, "the lazy path was never taken: {st:?}");
        assert!(st.rollovers > 0, "no ASID rollover: {st:?}");
    }
}
