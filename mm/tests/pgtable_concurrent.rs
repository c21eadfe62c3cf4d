//! Multi-threaded stress of the lock-free fault path of `mm::pgtable`:
//! threads standing in for CPUs install leaves into the same page table at
//! once, in disjoint pages that share fresh tables and in the very same
//! pages, while a reader looks pages up and a writer maps, unmaps and frees
//! the tables of a range of its own. Checked: every install into a free page
//! succeeds; of several installs into one page exactly one wins and the
//! page holds the winner's entry; a lookup never sees anything but nothing
//! or a final entry, and never loses an entry once seen; every table exists
//! once (the tree's tables equal `nr_tables()` and equal what the addresses
//! used require); frames are accounted exactly, so no table leaked, and the
//! allocator's debug checks would have caught a table freed twice.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use mm::addr::Frame;
use mm::frame::{FrameConfig, HostFrames};
use mm::pgtable::{
    InstallError, PageTable, Prot, Pte, RecordingFlush, TlbGather, X86_64Pte, LEVELS,
};
use mm::vma::lock::MmId;

const PAGE: u64 = 4096;
const MM: MmId = MmId::from_raw(0xc0c0_0000);
const THREADS: usize = 4;
const GIB: u64 = 1 << 30;

fn rounds() -> u64 {
    if cfg!(miri) {
        2
    } else {
        30
    }
}

fn pages_per_thread() -> u64 {
    if cfg!(miri) {
        4
    } else {
        48
    }
}

/// A spinning start line: threads leave it within nanoseconds of each other
/// (a sleeping barrier wakes them tens of microseconds apart, longer than a
/// table allocation takes, and the races this test is after never happen).
struct Barrier {
    waiting: AtomicUsize,
    n: usize,
}

impl Barrier {
    fn new(n: usize) -> Self {
        Barrier {
            waiting: AtomicUsize::new(0),
            n,
        }
    }

    fn wait(&self) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        while self.waiting.load(Ordering::Acquire) < self.n {
            std::hint::spin_loop();
        }
    }
}

fn rw() -> Prot {
    Prot::READ | Prot::WRITE | Prot::USER
}

/// The distinct tables (level, base) the addresses `vas` need.
fn tables_for(vas: impl IntoIterator<Item = u64>) -> usize {
    let mut t = BTreeSet::new();
    t.insert((LEVELS, 0));
    for va in vas {
        for level in 1..LEVELS {
            let span = 1u64 << (12 + 9 * level);
            t.insert((level, va & !(span - 1)));
        }
    }
    t.len()
}

/// Destroys `pt`, returning its frames to `hf`; `hf` must then be empty.
fn destroy(hf: &HostFrames, pt: PageTable<'_, X86_64Pte>) {
    let fl = RecordingFlush::new();
    let mut rel = |f: Frame| {
        // SAFETY: every leaf frame was mapped once; the gather flushed it.
        unsafe { hf.free(0, f, 0) }
    };
    let mut g = TlbGather::new(MM, 0, &fl, hf, &mut rel);
    pt.destroy(&mut g);
    g.finish();
    hf.drain_all();
    assert_eq!(hf.stats().allocated_pages, 0, "frames leaked");
}

#[test]
fn disjoint_pages_racing_for_shared_tables() {
    let hf = HostFrames::with_config(16 << 20, &[], FrameConfig::new(THREADS));
    let mut pt = PageTable::<X86_64Pte>::new(&hf, 0).unwrap();
    let n = pages_per_thread();
    // Each round builds every table below the root in the second root slot
    // with all threads racing, checks it, and tears it down again. The i-th
    // install of thread t goes to page t of the i-th leaf table, so all
    // threads need each new leaf table at about the same time. Rounds go
    // on until a few races were lost (or a cap), so the losing path runs.
    const BASE: u64 = 1 << 39;
    let va = |t: u64, i: u64| BASE + i * (2 << 20) + t * PAGE;
    let baseline = hf.stats().allocated_pages;
    let max_rounds = if cfg!(miri) { 2 } else { 400 };
    let mut r = 0;
    while r < rounds() || (pt.table_races_lost() < 5 && r < max_rounds) {
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (pt, hf, barrier) = (&pt, &hf, &barrier);
                s.spawn(move || {
                    let leaves: Vec<_> = (0..n)
                        .map(|_| Pte::leaf(hf.alloc_zeroed(t, 0).unwrap(), rw()))
                        .collect();
                    barrier.wait();
                    for (i, &p) in leaves.iter().enumerate() {
                        assert_eq!(pt.install_leaf(va(t as u64, i as u64), p, t), Ok(()));
                    }
                });
            }
        });
        let all: Vec<u64> = (0..THREADS as u64)
            .flat_map(|t| (0..n).map(move |i| va(t, i)))
            .collect();
        for &v in &all {
            assert!(pt.lookup(v).is_mapped(), "{v:#x} lost");
        }
        assert_eq!(
            pt.nr_tables(),
            tables_for(all.iter().copied()),
            "round {r}: a table was built twice"
        );
        let mut seen = 0;
        pt.for_each_table(&mut |_, _| seen += 1);
        assert_eq!(seen, pt.nr_tables());
        hf.drain_all();
        assert_eq!(
            hf.stats().allocated_pages,
            baseline + all.len() as u64 + pt.nr_tables() as u64 - 1,
            "round {r}: a losing table was leaked"
        );
        // munmap + free_pgtables of the whole slot.
        let fl = RecordingFlush::new();
        let mut rel = |f: Frame| {
            // SAFETY: mapped once, flushed.
            unsafe { hf.free(0, f, 0) }
        };
        let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
        assert_eq!(pt.unmap_range(BASE, 2 * BASE, &mut g), Ok(all.len() as u64));
        // SAFETY: the threads are gone; nothing else uses the table.
        unsafe { pt.free_tables(BASE, 2 * BASE, BASE, 2 * BASE, &mut g) }.unwrap();
        g.finish();
        assert_eq!(pt.nr_tables(), 1);
        hf.drain_all();
        assert_eq!(hf.stats().allocated_pages, baseline, "round {r}");
        r += 1;
    }
    eprintln!(
        "disjoint pages: {r} rounds, {} table races lost",
        pt.table_races_lost()
    );
    destroy(&hf, pt);
}

#[test]
fn same_pages_have_exactly_one_winner() {
    let hf = HostFrames::with_config(64 << 20, &[], FrameConfig::new(THREADS + 1));
    let pt = PageTable::<X86_64Pte>::new(&hf, 0).unwrap();
    let n = pages_per_thread();
    let mut vas = Vec::new();
    for r in 0..rounds() {
        let base = (r + 1) * 3 * GIB + (r % 7) * (2 << 20);
        let va = |i: u64| base + i * 8 * PAGE;
        let barrier = Barrier::new(THREADS + 1);
        let done = AtomicBool::new(false);
        let wins = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let installers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (pt, hf, barrier, wins) = (&pt, &hf, &barrier, &wins);
                    s.spawn(move || {
                        let leaves: Vec<_> = (0..n)
                            .map(|_| Pte::leaf(hf.alloc_zeroed(t, 0).unwrap(), rw()))
                            .collect();
                        barrier.wait();
                        let mut mine = Vec::new();
                        for (i, &p) in leaves.iter().enumerate() {
                            let v = va(i as u64);
                            match pt.install_leaf(v, p, t) {
                                Ok(()) => mine.push((v, p)),
                                Err(InstallError::AlreadyPresent(w)) => {
                                    assert!(w.is_mapped() && w != p);
                                    // The winner's entry is what a lookup finds.
                                    assert_eq!(pt.lookup(v), w);
                                    // SAFETY: ours, never mapped.
                                    unsafe { hf.free(t, p.frame().unwrap(), 0) };
                                }
                                Err(e) => panic!("{e:?}"),
                            }
                        }
                        wins.lock().unwrap().extend(mine);
                    })
                })
                .collect();
            // A reader: an entry, once seen, never changes or disappears.
            let (ptr, barrier, done) = (&pt, &barrier, &done);
            let reader = s.spawn(move || {
                barrier.wait();
                let mut seen = vec![Pte::NONE; n as usize];
                let mut sweeps = 0u64;
                while !done.load(Ordering::Acquire) || sweeps == 0 {
                    for (i, s) in seen.iter_mut().enumerate() {
                        let p = ptr.lookup(va(i as u64));
                        if s.is_none() {
                            assert!(p.is_none() || p.is_mapped(), "garbage {p:?}");
                            *s = p;
                        } else {
                            assert_eq!(p, *s, "entry changed under a reader");
                        }
                    }
                    sweeps += 1;
                }
                sweeps
            });
            for h in installers {
                h.join().unwrap();
            }
            done.store(true, Ordering::Release);
            assert!(reader.join().unwrap() > 0);
        });
        let wins = wins.into_inner().unwrap();
        assert_eq!(wins.len() as u64, n, "round {r}: not one winner per page");
        let pages: HashSet<u64> = wins.iter().map(|&(v, _)| v).collect();
        assert_eq!(pages.len() as u64, n, "round {r}: a page won twice");
        for (v, p) in wins {
            assert_eq!(pt.lookup(v), p);
            vas.push(v);
        }
        assert_eq!(pt.nr_tables(), tables_for(vas.iter().copied()));
    }
    eprintln!(
        "same pages: {} tables built, {} table races lost",
        pt.nr_tables(),
        pt.table_races_lost()
    );
    hf.drain_all();
    assert_eq!(
        hf.stats().allocated_pages,
        vas.len() as u64 + pt.nr_tables() as u64
    );
    destroy(&hf, pt);
}

#[test]
fn faults_proceed_while_a_writer_unmaps_and_frees_tables_elsewhere() {
    let hf = HostFrames::with_config(64 << 20, &[], FrameConfig::new(THREADS));
    let pt = PageTable::<X86_64Pte>::new(&hf, 0).unwrap();
    let n = pages_per_thread();
    // The writer owns [1 << 39, 2 << 39): a level-3 slot no faulter walks,
    // so free_tables there is within its contract.
    const WBASE: u64 = 1 << 39;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (pt, hf, stop) = (&pt, &hf, &stop);
        let writer = s.spawn(move || {
            let mut cycles = 0u64;
            let fl = RecordingFlush::new();
            while !stop.load(Ordering::Acquire) || cycles < 3 {
                for i in 0..16 {
                    let p = Pte::leaf(hf.alloc(0, 0).unwrap(), rw());
                    pt.install_leaf(WBASE + i * (1 << 21), p, 0).unwrap();
                }
                let mut released = 0;
                let mut rel = |f: Frame| {
                    // SAFETY: mapped once, flushed.
                    unsafe { hf.free(0, f, 0) };
                    released += 1;
                };
                let mut g = TlbGather::new(MM, 0, &fl, hf, &mut rel);
                assert_eq!(pt.unmap_range(WBASE, WBASE + (1 << 39), &mut g), Ok(16));
                // SAFETY: only this thread touches [WBASE, 2 * WBASE).
                let freed = unsafe { pt.free_tables(WBASE, 2 * WBASE, WBASE, 2 * WBASE, &mut g) };
                // The level-3 table hanging off the root goes with its
                // level-2 table and 16 leaf tables.
                assert_eq!(freed, Ok(18));
                g.finish();
                assert_eq!(released, 16);
                cycles += 1;
            }
            cycles
        });
        let faulters: Vec<_> = (1..THREADS)
            .map(|t| {
                s.spawn(move || {
                    for r in 0..rounds() {
                        for i in 0..n {
                            let va = (t as u64) * GIB + r * (n * PAGE) + i * PAGE;
                            let p = Pte::leaf(hf.alloc(t, 0).unwrap(), rw());
                            assert_eq!(pt.install_leaf(va, p, t), Ok(()));
                            assert_eq!(pt.lookup(va), p);
                        }
                    }
                })
            })
            .collect();
        for f in faulters {
            f.join().unwrap();
        }
        stop.store(true, Ordering::Release);
        assert!(writer.join().unwrap() >= 3);
    });
    let mapped = (THREADS as u64 - 1) * rounds() * n;
    hf.drain_all();
    assert_eq!(
        hf.stats().allocated_pages,
        mapped + pt.nr_tables() as u64,
        "frames leaked or tables double-counted"
    );
    destroy(&hf, pt);
}
