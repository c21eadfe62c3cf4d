//! Lockless readers against a writer, with RCU reclaiming the replaced
//! nodes while they run. Large natively, small under Miri (which checks
//! every access for data races and use after free).

mod maple_common;

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::thread;

use maple_common::{check_equal, nz, Model, Rng};
use mm::maple::{MapleTree, RcuNodeAlloc};
use mm::rcu::Rcu;

/// Keys the writer touches: `[LO, HI]`. Outside it, fixed sentinels.
const LO: u64 = 1 << 20;
const HI: u64 = 1 << 40;
const SENTINELS: [(u64, u64); 3] = [
    (0, 0xfff),
    (HI + 1, HI + 0x1000),
    (u64::MAX - 0xfff, u64::MAX),
];

/// What each stored value stood for when stored: its original range. A
/// reader that finds value `v` over `[f, l]` checks `[f, l]` lies inside
/// `ranges[v]`, which catches pivots and entries taken from different
/// versions of a node.
struct Registry {
    first: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
}

impl Registry {
    fn new(n: usize) -> Self {
        Registry {
            first: (0..n).map(|_| AtomicU64::new(0)).collect(),
            last: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Relaxed: published to readers by the tree's Release store of the
    /// node holding `v`, which they acquire before reading `v`.
    fn set(&self, v: u64, f: u64, l: u64) {
        self.first[v as usize].store(f, Relaxed);
        self.last[v as usize].store(l, Relaxed);
    }

    fn check(&self, v: u64, f: u64, l: u64, what: &str) {
        let (of, ol) = (
            self.first[v as usize].load(Relaxed),
            self.last[v as usize].load(Relaxed),
        );
        assert!(
            of <= f && l <= ol,
            "{what}: value {v} over [{f:#x}, {l:#x}] but stored over [{of:#x}, {ol:#x}]"
        );
    }
}

fn stress(readers: usize, writes: usize) {
    let rcu = Rcu::new();
    // SAFETY: every read guard below comes from `rcu`.
    let alloc = unsafe { RcuNodeAlloc::new(&rcu) };
    let counters = alloc.counters();
    let tree: MapleTree<NonZeroU64, RcuNodeAlloc> = MapleTree::new(alloc);
    let reg = Registry::new(writes + 16);
    let stop = AtomicBool::new(false);
    let lookups = Arc::new(AtomicU64::new(0));
    let mut m = Model::new();
    {
        let mut w = tree.write(0);
        for (i, &(f, l)) in SENTINELS.iter().enumerate() {
            w.store_range(f, l, nz(i as u64 + 1)).unwrap();
            m.store(f, l, Some(i as u64 + 1));
        }
    }
    thread::scope(|s| {
        for cpu in 1..=readers {
            let (rcu, tree, reg, stop, lookups) = (&rcu, &tree, &reg, &stop, lookups.clone());
            s.spawn(move || {
                let mut me = rcu.register_cpu(cpu).unwrap();
                let mut rng = Rng::new(cpu as u64);
                let mut n = 0u64;
                // Always one more round after `stop`, so Miri runs at least
                // one read section concurrently.
                loop {
                    let done = stop.load(Acquire);
                    {
                        let g = me.read_lock();
                        for (i, &(f, l)) in SENTINELS.iter().enumerate() {
                            let k = rng.range(f, l);
                            let r = tree.load_range(&g, k).expect("sentinel present");
                            assert_eq!((r.first, r.last, r.entry.get()), (f, l, i as u64 + 1));
                        }
                        for _ in 0..8 {
                            let k = rng.range(LO, HI);
                            if let Some(r) = tree.load_range(&g, k) {
                                assert!(r.first <= k && k <= r.last);
                                reg.check(r.entry.get(), r.first, r.last, "load");
                            }
                            n += 1;
                        }
                        // A window in order, no overlaps, each piece within
                        // what was stored.
                        let k = rng.range(LO, HI);
                        let mut prev_last = None;
                        for r in tree.iter(&g, k, k.saturating_add(1 << 24)).take(64) {
                            if let Some(p) = prev_last {
                                assert!(r.first > p, "iteration out of order");
                            }
                            prev_last = Some(r.last);
                            if r.first >= LO && r.last <= HI {
                                reg.check(r.entry.get(), r.first, r.last, "iter");
                            }
                        }
                        if let Some(r) = tree.next(&g, k) {
                            assert!(r.first > k);
                        }
                        if let Some(r) = tree.prev(&g, k) {
                            assert!(r.last < k);
                        }
                    }
                    me.quiescent_state();
                    if done {
                        break;
                    }
                }
                lookups.fetch_add(n, Relaxed);
            });
        }

        let mut me = rcu.register_cpu(0).unwrap();
        let mut rng = Rng::new(99);
        for k in 0..writes {
            let v = k as u64 + 8;
            let span = match rng.range(0, 9) {
                0 => rng.range(0, 1 << 30),
                1..=2 => rng.range(0, 1 << 20),
                _ => rng.range(0, 1 << 14),
            };
            let f = rng.range(LO, HI - span);
            let l = f + span;
            {
                let mut w = tree.write(0);
                if rng.chance(30) {
                    w.erase_range(f, l).unwrap();
                    m.store(f, l, None);
                } else {
                    reg.set(v, f, l);
                    w.store_range(f, l, nz(v)).unwrap();
                    m.store(f, l, Some(v));
                }
                if k.is_multiple_of(64) {
                    check_equal(&w, &m);
                }
            }
            me.quiescent_state();
        }
        stop.store(true, Release);
        check_equal(&tree.write(0), &m);
        drop(me);
    });
    // Every reader has gone offline; run the outstanding callbacks.
    let mut me = rcu.register_cpu(0).unwrap();
    me.barrier();
    let st = counters.snapshot();
    let rs = rcu.stats();
    assert!(st.retired > 0 && st.batches > 0);
    let w = tree.write(0);
    let held = w.validate().unwrap().nodes() + w.reserved_nodes();
    drop(w);
    // Everything retired has been freed; only the tree and spares remain.
    assert_eq!(st.freed, st.allocated - held);
    assert_eq!(st.live(), held);
    assert!(
        rs.callbacks_invoked as usize >= st.batches,
        "one RCU callback per retire batch"
    );
    drop(tree);
    assert_eq!(counters.snapshot().live(), 0, "every node freed");
    assert!(lookups.load(Relaxed) > 0);
}

#[test]
fn maple_readers_race_a_writer_with_rcu_reclamation() {
    if cfg!(miri) {
        stress(2, 150);
    } else {
        stress(3, 100_000);
    }
}
