//! Differential tests of the maple tree against the `BTreeMap` model, with
//! the validator run after every write.

mod maple_common;

use std::num::NonZeroU64;

use maple_common::{check_equal, nz, tup, Model, Rng};
use mm::maple::{DeferredFree, FailingAlloc, MapleError, MapleTree, NoReclaim, RETIRE_BATCH};
use proptest::prelude::*;

type Tree<'a> = MapleTree<NonZeroU64, &'a DeferredFree>;

#[derive(Debug, Clone)]
enum Op {
    Store(u64, u64, u64),
    Erase(u64, u64),
    EraseAt(u64),
    Insert(u64, u64, u64),
    Load(u64),
    Find(u64, u64),
    FindRev(u64, u64),
    Next(u64),
    Prev(u64),
    GapLow(u64, u64, u64, u64),
    GapHigh(u64, u64, u64, u64),
    Iter(u64, u64),
    /// A write aimed at a node boundary of the current tree: level (0 =
    /// leaves) and node picked modulo what exists, `shape` picks the range, `val` 0 erases.
    Boundary(usize, usize, u8, u64),
}

/// Keys that hit the interesting places: both ends of the key space, a
/// dense low region, and anywhere.
fn key() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        4 => 0..4096u64,
        2 => (u64::MAX - 4096)..=u64::MAX,
        2 => any::<u64>(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
    ]
}

/// Ranges: short, huge spans, to the end of the key space, arbitrary.
fn range_wide() -> impl Strategy<Value = (u64, u64)> + Clone {
    prop_oneof![
        4 => (key(), 0..64u64).prop_map(|(k, l)| (k, k.saturating_add(l))),
        2 => (key(), any::<u64>()).prop_map(|(k, l)| (k, k.saturating_add(l >> 4))),
        1 => key().prop_map(|k| (k, u64::MAX)),
        1 => key().prop_map(|k| (0, k)),
        2 => (key(), key()).prop_map(|(a, b)| (a.min(b), a.max(b))),
    ]
}

/// Many short ranges in a small key space, so trees grow several levels
/// and erases merge nodes.
fn range_dense() -> impl Strategy<Value = (u64, u64)> + Clone {
    prop_oneof![
        8 => (0..6000u64, 0..24u64).prop_map(|(k, l)| (k, k + l)),
        1 => (0..6000u64, 0..600u64).prop_map(|(k, l)| (k, k + l)),
        1 => (0..6000u64, 0..6000u64).prop_map(|(a, b)| (a.min(b), a.max(b))),
    ]
}

fn ops(range: impl Strategy<Value = (u64, u64)> + Clone + 'static) -> impl Strategy<Value = Op> {
    let val = 1..1_000_000u64;
    let size = prop_oneof![1..64u64, 1..100_000u64, any::<u64>().prop_map(|s| s.max(1))];
    let align = (0..16u32).prop_map(|s| 1u64 << s);
    prop_oneof![
        10 => (range.clone(), val.clone()).prop_map(|((f, l), v)| Op::Store(f, l, v)),
        4 => range.clone().prop_map(|(f, l)| Op::Erase(f, l)),
        2 => key().prop_map(Op::EraseAt),
        2 => (range.clone(), val).prop_map(|((f, l), v)| Op::Insert(f, l, v)),
        2 => key().prop_map(Op::Load),
        1 => (key(), key()).prop_map(|(a, b)| Op::Find(a, b)),
        1 => (key(), key()).prop_map(|(a, b)| Op::FindRev(a, b)),
        1 => key().prop_map(Op::Next),
        1 => key().prop_map(Op::Prev),
        1 => (size.clone(), align.clone(), range.clone()).prop_map(|(s, a, (lo, hi))| Op::GapLow(s, a, lo, hi)),
        1 => (size, align, range.clone()).prop_map(|(s, a, (lo, hi))| Op::GapHigh(s, a, lo, hi)),
        1 => range.prop_map(|(f, l)| Op::Iter(f, l)),
        3 => (0..8usize, any::<usize>(), 0..6u8, 0..1000u64).prop_map(|(d, n, s, v)| Op::Boundary(d, n, s, v)),
    ]
}

/// Runs `ops` on a tree and the model side by side.
fn run(ops: &[Op]) -> usize {
    let mut most = 0;
    let a = DeferredFree::new();
    let t: Tree = MapleTree::new(&a);
    let mut m = Model::new();
    for op in ops {
        let mut w = t.write(0);
        match *op {
            Op::Store(f, l, v) => {
                w.store_range(f, l, nz(v)).unwrap();
                m.store(f, l, Some(v));
                check_equal(&w, &m);
                most = most.max(m.len());
            }
            Op::Erase(f, l) => {
                w.erase_range(f, l).unwrap();
                m.store(f, l, None);
                check_equal(&w, &m);
            }
            Op::EraseAt(i) => {
                let got = w.erase(i).unwrap();
                let want = m.load(i);
                assert_eq!(tup(got), want);
                if let Some((f, l, _)) = want {
                    m.store(f, l, None);
                }
                check_equal(&w, &m);
            }
            Op::Insert(f, l, v) => {
                let got = w.insert_range(f, l, nz(v));
                if m.find(f, l).is_some() {
                    assert_eq!(got, Err(MapleError::Exists));
                } else {
                    assert_eq!(got, Ok(()));
                    m.store(f, l, Some(v));
                }
                check_equal(&w, &m);
            }
            Op::Load(i) => {
                drop(w);
                assert_eq!(tup(t.load_range(&NoReclaim, i)), m.load(i));
                assert_eq!(
                    t.load(&NoReclaim, i).map(|e| e.get()),
                    m.load(i).map(|r| r.2)
                );
            }
            Op::Find(i, max) => {
                assert_eq!(tup(w.find(i, max)), m.find(i, max));
                assert_eq!(tup(t.find(&NoReclaim, i, max)), m.find(i, max));
            }
            Op::FindRev(i, min) => {
                assert_eq!(tup(w.find_rev(i, min)), m.find_rev(i, min));
                assert_eq!(tup(t.find_rev(&NoReclaim, i, min)), m.find_rev(i, min));
            }
            Op::Next(i) => {
                assert_eq!(tup(w.next(i)), m.next(i));
                assert_eq!(tup(t.next(&NoReclaim, i)), m.next(i));
            }
            Op::Prev(i) => {
                assert_eq!(tup(w.prev(i)), m.prev(i));
                assert_eq!(tup(t.prev(&NoReclaim, i)), m.prev(i));
            }
            Op::GapLow(s, al, lo, hi) => {
                assert_eq!(
                    w.find_gap_lowest(s, al, lo, hi).ok(),
                    m.gap_lowest(s, al, lo, hi),
                    "lowest gap size {s:#x} align {al:#x} in [{lo:#x}, {hi:#x}]"
                );
            }
            Op::GapHigh(s, al, lo, hi) => {
                assert_eq!(
                    w.find_gap_highest(s, al, lo, hi).ok(),
                    m.gap_highest(s, al, lo, hi),
                    "highest gap size {s:#x} align {al:#x} in [{lo:#x}, {hi:#x}]"
                );
            }
            Op::Boundary(d, n, shape, v) => {
                let h = w.height();
                if h == 0 {
                    continue;
                }
                let mut nodes = Vec::new();
                // Depth counted up from the leaves.
                w.for_each_node_range(h - 1 - d % h, |a, b| nodes.push((a, b)));
                let (lo, hi) = nodes[n % nodes.len()];
                let (f, l) = match shape {
                    // The last key of this node and the first of the next.
                    0 => (hi, hi.saturating_add(1)),
                    1 => (hi.saturating_sub(1), hi.saturating_add(2)),
                    2 => (lo, hi),
                    3 => (lo.saturating_add(1), hi),
                    4 => (lo, hi.saturating_sub(1).max(lo)),
                    _ => (lo.saturating_sub(1), lo),
                };
                if v == 0 {
                    w.erase_range(f, l).unwrap();
                    m.store(f, l, None);
                } else {
                    w.store_range(f, l, nz(v)).unwrap();
                    m.store(f, l, Some(v));
                }
                check_equal(&w, &m);
            }
            Op::Iter(f, l) => {
                drop(w);
                let got: Vec<_> = t
                    .iter(&NoReclaim, f, l)
                    .map(|r| tup(Some(r)).unwrap())
                    .collect();
                let want: Vec<_> = m
                    .ranges()
                    .into_iter()
                    .filter(|&(rf, rl, _)| rl >= f && rf <= l)
                    .collect();
                assert_eq!(got, want);
            }
        }
    }
    most
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn differential_wide_keys(ops in prop::collection::vec(ops(range_wide()), 1..200)) {
        run(&ops);
    }

    #[test]
    fn differential_dense_keys(ops in prop::collection::vec(ops(range_dense()), 1..600)) {
        run(&ops);
    }
}

/// Fills a tree with `n` adjacent ranges `[10 i, 10 i + 9]` (optionally
/// with holes), checking as it goes.
fn fill(t: &Tree, m: &mut Model, n: u64, holes: bool) {
    let mut w = t.write(0);
    for i in 0..n {
        let (f, l) = if holes {
            (10 * i, 10 * i + 5)
        } else {
            (10 * i, 10 * i + 9)
        };
        w.store_range(f, l, nz(i + 1)).unwrap();
        m.store(f, l, Some(i + 1));
        if i.is_multiple_of(97) {
            check_equal(&w, m);
        }
    }
    check_equal(&w, m);
}

#[test]
fn grow_then_erase_everything_in_random_order() {
    for holes in [false, true] {
        let a = DeferredFree::new();
        let t: Tree = MapleTree::new(&a);
        let mut m = Model::new();
        let n = 5000;
        fill(&t, &mut m, n, holes);
        let mut w = t.write(0);
        assert!(w.height() >= 4, "height {}", w.height());
        let mut order: Vec<u64> = (0..n).collect();
        let mut rng = Rng::new(7);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.range(0, i as u64) as usize);
        }
        for (k, i) in order.into_iter().enumerate() {
            let r = w.erase(10 * i + 3).unwrap().expect("present");
            assert_eq!(r.entry.get(), i + 1);
            m.store(r.first, r.last, None);
            w.validate()
                .unwrap_or_else(|e| panic!("after {k} erases: {e:?}"));
            if k.is_multiple_of(251) {
                check_equal(&w, &m);
            }
        }
        check_equal(&w, &m);
        assert_eq!(w.height(), 0, "an emptied tree has no nodes");
    }
}

#[test]
fn spanning_stores_replace_many_nodes() {
    let a = DeferredFree::new();
    let t: Tree = MapleTree::new(&a);
    let mut m = Model::new();
    fill(&t, &mut m, 20_000, true);
    let mut w = t.write(0);
    let mut rng = Rng::new(11);
    for k in 0..300u64 {
        let f = rng.range(0, 200_000);
        let l = f + rng.range(0, 30_000);
        if k.is_multiple_of(3) {
            w.erase_range(f, l).unwrap();
            m.store(f, l, None);
        } else {
            w.store_range(f, l, nz(1_000_000 + k)).unwrap();
            m.store(f, l, Some(1_000_000 + k));
        }
        check_equal(&w, &m);
        // Put fine-grained ranges back so later spans have much to cover.
        for _ in 0..50 {
            let f = rng.range(0, 200_000);
            let l = f + rng.range(0, 9);
            w.store_range(f, l, nz(2_000_000 + k)).unwrap();
            m.store(f, l, Some(2_000_000 + k));
        }
    }
    check_equal(&w, &m);
    // One store over everything, then one erase of everything.
    w.store_range(0, u64::MAX, nz(5)).unwrap();
    m.store(0, u64::MAX, Some(5));
    check_equal(&w, &m);
    assert_eq!(w.height(), 1);
    w.erase_range(0, u64::MAX).unwrap();
    m.store(0, u64::MAX, None);
    check_equal(&w, &m);
    assert_eq!(w.height(), 0);
}

#[test]
fn boundaries_of_the_key_space() {
    let a = DeferredFree::new();
    let t: Tree = MapleTree::new(&a);
    let mut m = Model::new();
    let mut w = t.write(0);
    let cases = [
        (0, 0, Some(1)),
        (u64::MAX, u64::MAX, Some(2)),
        (1, u64::MAX - 1, Some(3)),
        (0, u64::MAX, Some(4)),
        (5, 5, None),
        (0, 0, None),
        (u64::MAX, u64::MAX, None),
        (0, u64::MAX, None),
        (u64::MAX - 1, u64::MAX, Some(6)),
        (0, 1, Some(7)),
        (2, u64::MAX - 2, Some(8)),
        (2, u64::MAX - 2, Some(8)),
        (2, u64::MAX - 2, None),
    ];
    for (f, l, v) in cases {
        match v {
            Some(v) => w.store_range(f, l, nz(v)).unwrap(),
            None => w.erase_range(f, l).unwrap(),
        }
        m.store(f, l, v);
        check_equal(&w, &m);
        assert_eq!(
            w.find_gap_lowest(1, 1, 0, u64::MAX).ok(),
            m.gap_lowest(1, 1, 0, u64::MAX)
        );
        assert_eq!(
            w.find_gap_highest(1, 1, 0, u64::MAX).ok(),
            m.gap_highest(1, 1, 0, u64::MAX)
        );
    }
    assert_eq!(w.store_range(5, 4, nz(1)), Err(MapleError::InvalidRange));
    assert_eq!(w.erase_range(5, 4), Err(MapleError::InvalidRange));
    assert_eq!(
        w.find_gap_lowest(0, 1, 0, 9),
        Err(MapleError::InvalidArgument)
    );
    assert_eq!(
        w.find_gap_lowest(1, 6, 0, 9),
        Err(MapleError::InvalidArgument)
    );
    assert_eq!(
        w.find_gap_highest(1, 1, 9, 0),
        Err(MapleError::InvalidArgument)
    );
}

#[test]
fn out_of_memory_changes_nothing() {
    let inner = DeferredFree::new();
    let fa = FailingAlloc::new(&inner, usize::MAX);
    let t = MapleTree::<NonZeroU64, _>::new(&fa);
    let mut m = Model::new();
    let mut rng = Rng::new(3);
    let mut w = t.write(0);
    let mut failures = 0;
    for k in 0..4000u64 {
        let f = rng.range(0, 50_000);
        let l = f + rng.range(0, if k.is_multiple_of(10) { 5000 } else { 20 });
        let erase = rng.chance(30);
        // Sometimes leave no spare nodes and refuse every allocation.
        let starve = rng.chance(20);
        if starve {
            w.shrink_reserve();
            fa.set_budget(rng.range(0, 2) as usize);
        }
        let res = if erase {
            w.erase_range(f, l)
        } else {
            w.store_range(f, l, nz(k + 1))
        };
        match res {
            Ok(()) => m.store(f, l, if erase { None } else { Some(k + 1) }),
            Err(e) => {
                assert!(starve);
                assert_eq!(e, MapleError::NoMemory);
                failures += 1;
            }
        }
        check_equal(&w, &m);
        fa.set_budget(usize::MAX);
    }
    assert!(
        failures > 50,
        "only {failures} allocation failures exercised"
    );
}

#[test]
fn one_retire_batch_per_writer_and_no_leaks() {
    let a = DeferredFree::new();
    {
        let t: Tree = MapleTree::new(&a);
        let mut rng = Rng::new(5);
        // One writer per store: at most one batch each, when it is dropped.
        for k in 0..3000u64 {
            let before = a.stats();
            let f = rng.range(0, 100_000);
            t.write(0)
                .store_range(f, f + rng.range(0, 50), nz(k + 1))
                .unwrap();
            let after = a.stats();
            let retired = after.retired - before.retired;
            let batches = after.batches - before.batches;
            assert_eq!(
                batches,
                retired.div_ceil(RETIRE_BATCH),
                "{retired} nodes in {batches} batches"
            );
            assert!(batches <= 1);
        }
        // Many writes under one writer share batches: only full ones go
        // out early, the rest when the writer is dropped.
        let before = a.stats();
        let mut w = t.write(0);
        for k in 0..200u64 {
            let f = rng.range(0, 100_000);
            w.store_range(f, f + rng.range(0, 50), nz(k + 1)).unwrap();
        }
        let during = a.stats();
        let early = during.retired - before.retired;
        assert_eq!(
            early % RETIRE_BATCH,
            0,
            "only full batches before the writer goes"
        );
        assert_eq!(during.batches - before.batches, early / RETIRE_BATCH);
        drop(w);
        let after = a.stats();
        let retired = after.retired - before.retired;
        assert!(retired >= 200, "every store replaced at least a leaf");
        assert_eq!(
            after.batches - before.batches,
            retired.div_ceil(RETIRE_BATCH)
        );

        let mut w = t.write(0);
        let s = w.validate().unwrap();
        let st = a.stats();
        // Live nodes: the tree, the spares, and retired nodes awaiting the
        // (deferred) free.
        assert_eq!(st.live(), s.nodes() + w.reserved_nodes() + st.retired);
        // A huge span retires thousands of nodes in full batches.
        let before = a.stats();
        w.erase_range(0, u64::MAX).unwrap();
        drop(w);
        let after = a.stats();
        assert_eq!(after.retired - before.retired, s.nodes());
        assert_eq!(
            after.batches - before.batches,
            s.nodes().div_ceil(RETIRE_BATCH)
        );
    }
    // Dropping the tree freed its nodes and spares; the allocator frees the
    // retired ones when it goes.
    let st = a.stats();
    assert_eq!(st.live(), st.retired);
}

#[test]
fn identical_and_adjacent_ranges_stay_separate() {
    let a = DeferredFree::new();
    let t: Tree = MapleTree::new(&a);
    let mut w = t.write(0);
    let mut m = Model::new();
    for i in 0..100u64 {
        // Same entry, adjacent ranges: two ranges, not one.
        w.store_range(i * 2, i * 2 + 1, nz(9)).unwrap();
        m.store(i * 2, i * 2 + 1, Some(9));
        // Re-storing the identical range changes nothing visible.
        w.store_range(i * 2, i * 2 + 1, nz(9)).unwrap();
        check_equal(&w, &m);
    }
    assert_eq!(w.validate().unwrap().entries, 100);
}

fn node_ranges(
    w: &mm::maple::MapleWriter<'_, NonZeroU64, &DeferredFree>,
    depth: usize,
) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    w.for_each_node_range(depth, |a, b| v.push((a, b)));
    v
}

/// Stores and erases aimed exactly at node boundaries at every depth: the
/// runs then cover whole parents, which forces rebalancing with neighbours
/// under other parents, and splits of runs spanning two full nodes.
#[test]
fn writes_aimed_at_node_boundaries() {
    for holes in [false, true] {
        let a = DeferredFree::new();
        let base: Tree = MapleTree::new(&a);
        let mut bm = Model::new();
        fill(&base, &mut bm, 3000, holes);
        let w0 = base.write(0);
        let height = w0.height();
        assert!(height >= 3);
        let mut targets = Vec::new();
        for depth in 0..height {
            for (lo, hi) in node_ranges(&w0, depth) {
                targets.push((lo, hi));
            }
        }
        drop(w0);
        let mut rng = Rng::new(13);
        for (k, &(lo, hi)) in targets.iter().enumerate() {
            for variant in 0..6u64 {
                // A fresh copy of the base tree for every write.
                let t: Tree = MapleTree::new(&a);
                let mut w = t.write(0);
                let mut m = Model::new();
                for (f, l, v) in bm.ranges() {
                    w.store_range(f, l, nz(v)).unwrap();
                    m.store(f, l, Some(v));
                }
                let (f, l) = match variant {
                    0 | 1 => (lo, hi),
                    2 => (
                        lo.saturating_add(1),
                        hi.saturating_sub(1).max(lo.saturating_add(1)),
                    ),
                    3 => (lo.saturating_sub(1), hi.saturating_add(1)),
                    4 => (lo, hi.saturating_add(rng.range(0, 200))),
                    _ => (lo.saturating_sub(rng.range(0, 200)), hi),
                };
                if variant % 2 == 1 {
                    w.erase_range(f, l).unwrap();
                    m.store(f, l, None);
                } else {
                    w.store_range(f, l, nz(99_999)).unwrap();
                    m.store(f, l, Some(99_999));
                }
                check_equal(&w, &m);
                if k % 7 != 0 {
                    break;
                }
            }
        }
    }
}

/// Slots of the leaf covering `[lo, hi]`: every range and every maximal gap
/// is one slot, and none straddles a leaf boundary.
fn leaf_slots(m: &Model, lo: u64, hi: u64) -> usize {
    let ranges = m
        .ranges()
        .into_iter()
        .filter(|&(f, _, _)| f >= lo && f <= hi)
        .count();
    let gaps = m
        .gaps()
        .into_iter()
        .filter(|&(f, _)| f >= lo && f <= hi)
        .count();
    ranges + gaps
}

/// Fills two adjacent leaves to capacity, then stores across their
/// boundary, splitting the straddling slots: 15 + 1 + 1 + 1 + 15 = 33 leaf
/// items, which need three new leaves (the largest split there is).
#[test]
fn store_across_two_full_leaves_splits_three_ways() {
    let a = DeferredFree::new();
    let mut done = 0;
    for pair in 0..40usize {
        let t: Tree = MapleTree::new(&a);
        let mut m = Model::new();
        fill(&t, &mut m, 1500, true);
        let mut w = t.write(0);
        let leaves = node_ranges(&w, w.height() - 1);
        let i = pair * (leaves.len() - 1) / 40;
        let ((lo1, hi1), (lo2, hi2)) = (leaves[i], leaves[i + 1]);
        for (lo, hi) in [(lo1, hi1), (lo2, hi2)] {
            // Split gaps inside the leaf until it is full: a key in the
            // middle of a gap adds 2 slots, one at its start adds 1.
            while leaf_slots(&m, lo, hi) < 16 {
                let need = 16 - leaf_slots(&m, lo, hi);
                let gaps: Vec<(u64, u64)> = m
                    .gaps()
                    .into_iter()
                    .filter(|&(f, l)| f > lo && l < hi)
                    .collect();
                let k = match gaps.iter().find(|&&(f, l)| need >= 2 && l - f >= 2) {
                    Some(&(f, _)) => f + 1,
                    None => {
                        gaps.iter()
                            .find(|&&(f, l)| l > f)
                            .expect("a gap of 2 keys")
                            .0
                    }
                };
                w.store_range(k, k, nz(7)).unwrap();
                m.store(k, k, Some(7));
            }
            check_equal(&w, &m);
        }
        // Unchanged shape: the leaves are still the same two.
        let now = node_ranges(&w, w.height() - 1);
        assert!(now.contains(&(lo1, hi1)) && now.contains(&(lo2, hi2)));
        if leaf_slots(&m, lo1, hi1) != 16 || leaf_slots(&m, lo2, hi2) != 16 {
            continue;
        }
        let before = node_ranges(&w, w.height() - 1).len();
        w.store_range(hi1, lo2, nz(8)).unwrap();
        m.store(hi1, lo2, Some(8));
        check_equal(&w, &m);
        assert_eq!(
            node_ranges(&w, w.height() - 1).len(),
            before + 1,
            "two leaves became three"
        );
        done += 1;
    }
    assert!(done >= 30, "only {done} three-way splits");
}

/// A seeded random mix of every operation, small enough for Miri
/// (`cargo +nightly miri test -p mm maple`), larger natively.
#[test]
fn maple_seeded_operations() {
    let steps = if cfg!(miri) { 300 } else { 20_000 };
    let mut rng = Rng::new(21);
    let mut ops = Vec::with_capacity(steps);
    for _ in 0..steps {
        let f = match rng.range(0, 9) {
            0 => u64::MAX - rng.range(0, 100),
            1 => rng.next_u64(),
            _ => rng.range(0, 20_000),
        };
        let l = f.saturating_add(match rng.range(0, 2999) {
            0 => rng.next_u64() >> 8,
            1..=200 => rng.range(0, 500),
            _ => rng.range(0, 12),
        });
        let v = rng.range(1, 1 << 40);
        ops.push(match rng.range(0, 19) {
            0..=8 => Op::Store(f, l, v),
            9..=11 => Op::Erase(f, l),
            12 => Op::EraseAt(f),
            13 => Op::Insert(f, l, v),
            14 => Op::Find(f, l),
            15 => Op::FindRev(l, f),
            16 => Op::GapLow(rng.range(1, 64), 1 << rng.range(0, 6), f, l),
            17 => Op::GapHigh(rng.range(1, 64), 1 << rng.range(0, 6), f, l),
            _ => Op::Boundary(0, rng.next_u64() as usize, rng.range(0, 5) as u8, v % 3),
        });
    }
    let most = run(&ops);
    if !cfg!(miri) {
        assert!(most > 500, "only {most} ranges");
    }
}
