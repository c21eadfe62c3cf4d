//! Maple tree benchmarks (criterion).
//!
//! - `lookup/{maple,btree,rbtree}/N`: the range holding a random mapped
//!   address, with N = 10 .. 100 000 VMA-like ranges; maple vs `BTreeMap`
//!   range lookup vs an intrusive red-black tree.
//! - `contended/{maple,rwlock_btree}/N`: two reader threads doing lookups
//!   while a third thread stores and erases; reported per lookup.
//! - `store_erase/{maple,btree}/N`: unmap a range and map it again.
//! - `gap/{maple,btree_scan}/N`: top-down free-range search.
//!
//! Node count, height and bytes per range are printed for each size.
//!
//! Run briefly: `cargo bench -p mm --bench maple -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::RwLock;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use intrusive_collections::{intrusive_adapter, Bound as IBound, KeyAdapter, RBTree, RBTreeLink};
use mm::maple::{MapleTree, RcuNodeAlloc};
use mm::rcu::Rcu;

const SIZES: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];
const PAGE: u64 = 4096;

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` VMA-like ranges going down from near the top of user space, as
/// top-down `mmap` lays them out: sizes 1 page .. 8 MiB (mostly small),
/// 60% adjacent to the previous one, the rest after a gap.
fn layout(n: usize, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = Rng(seed);
    let mut top = 0x7fff_f000_0000u64;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let pages = match rng.below(10) {
            0..=6 => 1 + rng.below(16),
            7..=8 => 16 + rng.below(512),
            _ => 512 + rng.below(2048),
        };
        if rng.below(10) >= 6 {
            top -= (1 + rng.below(64)) * PAGE;
        }
        let first = top - pages * PAGE;
        v.push((first, top - 1));
        top = first;
    }
    v.reverse();
    v
}

/// Random addresses inside the ranges (the fault path's lookups).
fn probes(ranges: &[(u64, u64)], seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    (0..4096)
        .map(|_| {
            let (f, l) = ranges[rng.below(ranges.len() as u64) as usize];
            f + rng.below(l - f + 1)
        })
        .collect()
}

fn nz(x: u64) -> NonZeroU64 {
    NonZeroU64::new(x).unwrap()
}

type Maple<'r> = MapleTree<NonZeroU64, RcuNodeAlloc<'r>>;

fn build_maple<'r>(rcu: &'r Rcu, ranges: &[(u64, u64)]) -> Maple<'r> {
    // SAFETY: every read guard used on this tree comes from `rcu`.
    let t = MapleTree::new(unsafe { RcuNodeAlloc::new(rcu) });
    {
        let mut w = t.write(0);
        for (i, &(f, l)) in ranges.iter().enumerate() {
            w.store_range(f, l, nz(i as u64 + 1)).unwrap();
        }
    }
    t
}

fn build_btree(ranges: &[(u64, u64)]) -> BTreeMap<u64, (u64, u64)> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, &(f, l))| (f, (l, i as u64 + 1)))
        .collect()
}

fn btree_lookup(m: &BTreeMap<u64, (u64, u64)>, a: u64) -> Option<u64> {
    match m.range(..=a).next_back() {
        Some((_, &(l, v))) if l >= a => Some(v),
        _ => None,
    }
}

struct RbVma {
    link: RBTreeLink,
    first: u64,
    last: u64,
    val: u64,
}
intrusive_adapter!(RbAdapter<'a> = &'a RbVma: RbVma { link => RBTreeLink });
impl<'a> KeyAdapter<'a> for RbAdapter<'_> {
    type Key = u64;
    fn get_key(&self, v: &'a RbVma) -> u64 {
        v.first
    }
}

fn rb_lookup(t: &RBTree<RbAdapter<'_>>, a: u64) -> Option<u64> {
    let c = t.upper_bound(IBound::Included(&a));
    c.get().filter(|v| v.last >= a).map(|v| v.val)
}

fn report_shape(c: &mut Criterion) {
    let _ = c;
    let rcu = Rcu::new();
    println!("maple tree shape (VMA-like layouts):");
    println!(
        "{:>8} {:>7} {:>7} {:>7} {:>8} {:>14}",
        "ranges", "height", "nodes", "leaves", "slots", "bytes/range"
    );
    for n in SIZES {
        let t = build_maple(&rcu, &layout(n, n as u64));
        let w = t.write(0);
        let s = w.validate().unwrap();
        println!(
            "{:>8} {:>7} {:>7} {:>7} {:>8} {:>14.1}",
            n,
            s.height,
            s.nodes(),
            s.leaves,
            s.slots,
            s.bytes() as f64 / n as f64
        );
    }
}

fn lookup(c: &mut Criterion) {
    let rcu = Rcu::new();
    let me = rcu.register_cpu(0).unwrap();
    let mut g = c.benchmark_group("lookup");
    for n in SIZES {
        let ranges = layout(n, n as u64);
        let ps = probes(&ranges, 1);
        let maple = build_maple(&rcu, &ranges);
        let bt = build_btree(&ranges);
        let arena: Vec<RbVma> = ranges
            .iter()
            .enumerate()
            .map(|(i, &(f, l))| RbVma {
                link: RBTreeLink::new(),
                first: f,
                last: l,
                val: i as u64 + 1,
            })
            .collect();
        let mut rb = RBTree::new(RbAdapter::new());
        for v in &arena {
            rb.insert(v);
        }
        // All three agree.
        for &a in &ps[..64] {
            let guard = me.read_lock();
            let m = maple.load(&guard, a).map(|v| v.get());
            assert_eq!(m, btree_lookup(&bt, a));
            assert_eq!(m, rb_lookup(&rb, a));
        }
        g.bench_with_input(BenchmarkId::new("maple", n), &ps, |b, ps| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 4095;
                let guard = me.read_lock();
                black_box(maple.load(&guard, ps[i]))
            })
        });
        g.bench_with_input(BenchmarkId::new("btree", n), &ps, |b, ps| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(btree_lookup(&bt, ps[i]))
            })
        });
        g.bench_with_input(BenchmarkId::new("rbtree", n), &ps, |b, ps| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(rb_lookup(&rb, ps[i]))
            })
        });
        rb.fast_clear();
    }
    g.finish();
}

/// The writer's churn: unmap a random range and map it again (two writes).
fn churn_target(ranges: &[(u64, u64)], rng: &mut Rng) -> (u64, u64) {
    ranges[rng.below(ranges.len() as u64) as usize]
}

/// Two readers look up random mapped addresses while a writer keeps
/// unmapping and remapping ranges. One iteration is one lookup; the time
/// reported is wall time over all lookups of both readers divided by their
/// number, i.e. the inverse of the aggregate lookup throughput.
///
/// The writer runs either flat out (`busy`: an erase + store pair after
/// another, taking a whole CPU of this 2-CPU machine) or `paced`, sleeping
/// ~10 us between pairs (tens of thousands of writes per second, a heavy
/// `mmap`/`munmap` load).
fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("contended");
    for (n, paced) in [
        (1_000usize, false),
        (100_000, false),
        (1_000, true),
        (100_000, true),
    ] {
        let pace = || {
            if paced {
                thread::sleep(Duration::from_micros(10));
            }
        };
        let id = |what: &str| {
            BenchmarkId::new(
                format!("{what}/{}", if paced { "paced" } else { "busy" }),
                n,
            )
        };
        let ranges = layout(n, n as u64);
        let ps = probes(&ranges, 2);

        // Maple: readers under RCU, writer with its own (uncontended) lock.
        let rcu = Rcu::new();
        let tree = build_maple(&rcu, &ranges);
        g.bench_function(id("maple"), |b| {
            b.iter_custom(|iters| {
                let stop = AtomicBool::new(false);
                thread::scope(|s| {
                    s.spawn(|| {
                        let mut me = rcu.register_cpu(0).unwrap();
                        let mut rng = Rng(7);
                        let mut k = 0u64;
                        while !stop.load(Relaxed) {
                            let (f, l) = churn_target(&ranges, &mut rng);
                            {
                                let mut w = tree.write(0);
                                w.erase_range(f, l).unwrap();
                                w.store_range(f, l, nz(k + 1)).unwrap();
                            }
                            k += 1;
                            me.quiescent_state();
                            pace();
                        }
                    });
                    let start = Instant::now();
                    let readers: Vec<_> = (1..=2)
                        .map(|cpu| {
                            let (rcu, tree, ps) = (&rcu, &tree, &ps);
                            s.spawn(move || {
                                let mut me = rcu.register_cpu(cpu).unwrap();
                                let mut i = cpu * 1000;
                                for k in 0..iters.div_ceil(2) {
                                    i = (i + 1) & 4095;
                                    {
                                        let guard = me.read_lock();
                                        black_box(tree.load(&guard, ps[i]));
                                    }
                                    if k.is_multiple_of(64) {
                                        me.quiescent_state();
                                    }
                                }
                            })
                        })
                        .collect();
                    for r in readers {
                        r.join().unwrap();
                    }
                    let t = start.elapsed();
                    stop.store(true, Relaxed);
                    t
                })
            })
        });
        // Let the writer's replaced nodes go before the next benchmark.
        rcu.register_cpu(0).unwrap().barrier();

        let map = RwLock::new(build_btree(&ranges));
        g.bench_function(id("rwlock_btree"), |b| {
            b.iter_custom(|iters| {
                let stop = AtomicBool::new(false);
                thread::scope(|s| {
                    s.spawn(|| {
                        let mut rng = Rng(7);
                        let mut k = 0u64;
                        while !stop.load(Relaxed) {
                            let (f, l) = churn_target(&ranges, &mut rng);
                            {
                                let mut m = map.write().unwrap();
                                m.remove(&f);
                                m.insert(f, (l, k + 1));
                            }
                            k += 1;
                            pace();
                        }
                    });
                    let start = Instant::now();
                    let readers: Vec<_> = (1..=2usize)
                        .map(|r| {
                            let (map, ps) = (&map, &ps);
                            s.spawn(move || {
                                let mut i = r * 1000;
                                for _ in 0..iters.div_ceil(2) {
                                    i = (i + 1) & 4095;
                                    let m = map.read().unwrap();
                                    black_box(btree_lookup(&m, ps[i]));
                                }
                            })
                        })
                        .collect();
                    for r in readers {
                        r.join().unwrap();
                    }
                    let t = start.elapsed();
                    stop.store(true, Relaxed);
                    t
                })
            })
        });
    }
    g.finish();
}

fn store_erase(c: &mut Criterion) {
    let rcu = Rcu::new();
    let mut me = rcu.register_cpu(0).unwrap();
    let mut g = c.benchmark_group("store_erase");
    for n in SIZES {
        let ranges = layout(n, n as u64);
        let tree = build_maple(&rcu, &ranges);
        let mut bt = build_btree(&ranges);
        g.bench_function(BenchmarkId::new("maple", n), |b| {
            let mut rng = Rng(3);
            let mut k = 0u64;
            b.iter(|| {
                let (f, l) = churn_target(&ranges, &mut rng);
                let mut w = tree.write(0);
                w.erase_range(f, l).unwrap();
                w.store_range(f, l, nz(k + 1)).unwrap();
                drop(w);
                k += 1;
                // Let RCU free the replaced nodes as it would in the
                // kernel (every tick); counted in the cost.
                if k.is_multiple_of(64) {
                    me.quiescent_state();
                }
            })
        });
        g.bench_function(BenchmarkId::new("btree", n), |b| {
            let mut rng = Rng(3);
            let mut k = 0u64;
            b.iter(|| {
                let (f, l) = churn_target(&ranges, &mut rng);
                bt.remove(&f);
                bt.insert(f, (l, k + 1));
                k += 1;
            })
        });
        me.barrier();
    }
    g.finish();
}

fn gap(c: &mut Criterion) {
    let rcu = Rcu::new();
    let mut g = c.benchmark_group("gap");
    for n in SIZES {
        let ranges = layout(n, n as u64);
        let tree = build_maple(&rcu, &ranges);
        let bt = build_btree(&ranges);
        let lo = ranges[0].0;
        let hi = 0x7fff_f000_0000u64 - 1;
        // Sizes that fit in a few gaps low down: the search has to look
        // past most of the (small) gaps near the top.
        let sizes = [PAGE, 16 * PAGE, 64 * PAGE, 1 << 20];
        let w = tree.write(0);
        for s in sizes {
            let naive = btree_gap_highest(&bt, s, lo, hi);
            assert_eq!(w.find_gap_highest(s, PAGE, lo, hi).ok(), naive);
        }
        g.bench_function(BenchmarkId::new("maple", n), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % sizes.len();
                black_box(w.find_gap_highest(sizes[i], PAGE, lo, hi).ok())
            })
        });
        g.bench_function(BenchmarkId::new("btree_scan", n), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % sizes.len();
                black_box(btree_gap_highest(&bt, sizes[i], lo, hi))
            })
        });
    }
    g.finish();
}

/// Highest page-aligned fit by scanning the ranges from the top (what a
/// tree without gap records must do).
fn btree_gap_highest(m: &BTreeMap<u64, (u64, u64)>, size: u64, lo: u64, hi: u64) -> Option<u64> {
    let mut end = hi; // last free candidate key
    for (&f, &(l, _)) in m.range(..=hi).rev() {
        if l < end {
            let top = end;
            let bottom = l + 1;
            if top - bottom + 1 >= size {
                let a = (top - size + 1) & !(PAGE - 1);
                if a >= bottom.max(lo) {
                    return Some(a);
                }
            }
        }
        if f <= lo {
            return None;
        }
        end = f - 1;
    }
    if end - lo + 1 < size {
        return None;
    }
    let a = (end - size + 1) & !(PAGE - 1);
    (a >= lo).then_some(a)
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = report_shape, lookup, contended, store_erase, gap
}
criterion_main!(benches);
