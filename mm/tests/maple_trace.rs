//! Replays seeded, realistic address-space traces (see
//! `maple_common/trace.rs`) against the tree and the model.

mod maple_common;

use std::num::NonZeroU64;

use maple_common::trace::{TOp, Trace};
use maple_common::{check_equal, nz, tup, Model, Rng};
use mm::maple::{DeferredFree, MapleTree, NoReclaim};

/// Replays `ops` steps of the trace with `seed`; returns the largest number
/// of mappings and height seen.
fn replay(seed: u64, steps: usize, target: usize) -> (usize, usize) {
    let a = DeferredFree::new();
    let t: MapleTree<NonZeroU64, &DeferredFree> = MapleTree::new(&a);
    let mut gen = Trace::new(seed, target);
    let mut m = Model::new();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut ops = Vec::new();
    let (mut most, mut tallest) = (0, 0);
    for step in 0..steps {
        ops.clear();
        gen.step(&mut ops);
        let mut w = t.write(0);
        for &op in &ops {
            match op {
                TOp::Store(f, l, v) => {
                    w.store_range(f, l, nz(v)).unwrap();
                    m.store(f, l, Some(v));
                }
                TOp::Erase(f, l) => {
                    w.erase_range(f, l).unwrap();
                    m.store(f, l, None);
                }
                TOp::GapHigh {
                    size,
                    align,
                    min,
                    max,
                } => {
                    assert_eq!(
                        w.find_gap_highest(size, align, min, max).ok(),
                        m.gap_highest(size, align, min, max),
                        "seed {seed} step {step}: top-down gap of {size:#x}"
                    );
                }
                TOp::GapLow {
                    size,
                    align,
                    min,
                    max,
                } => {
                    assert_eq!(
                        w.find_gap_lowest(size, align, min, max).ok(),
                        m.gap_lowest(size, align, min, max),
                        "seed {seed} step {step}: bottom-up gap of {size:#x}"
                    );
                }
            }
            if let Err(e) = w.validate() {
                panic!("seed {seed} step {step} after {op:?}: {e:?}");
            }
        }
        tallest = tallest.max(w.height());
        most = most.max(m.len());
        if step.is_multiple_of(64) {
            check_equal(&w, &m);
        }
        drop(w);
        // Lookups the way the fault path does them: mapped addresses,
        // their neighbours, and arbitrary ones.
        for _ in 0..8 {
            let probe = rng.range(0, 0x7fff_ffff_ffff);
            let addr = match m.find(probe, u64::MAX).or_else(|| m.find_rev(probe, 0)) {
                Some((f, l, _)) if rng.chance(75) => rng.range(f, l),
                _ => probe,
            };
            assert_eq!(
                tup(t.load_range(&NoReclaim, addr)),
                m.load(addr),
                "seed {seed} step {step}"
            );
            assert_eq!(
                tup(t.find(&NoReclaim, addr, u64::MAX)),
                m.find(addr, u64::MAX)
            );
            assert_eq!(tup(t.prev(&NoReclaim, addr)), m.prev(addr));
            assert_eq!(tup(t.next(&NoReclaim, addr)), m.next(addr));
        }
    }
    check_equal(&t.write(0), &m);
    (most, tallest)
}

#[test]
fn process_traces_replay_exactly() {
    let steps = if cfg!(miri) { 200 } else { 50_000 };
    for seed in 1..=4 {
        let (most, tallest) = replay(seed, steps, 1500);
        if !cfg!(miri) {
            assert!(most > 1000, "seed {seed}: only {most} mappings");
            assert!(tallest >= 3, "seed {seed}: height {tallest}");
        }
    }
}

#[test]
fn small_processes_replay_exactly() {
    let steps = if cfg!(miri) { 200 } else { 50_000 };
    for seed in 10..=13 {
        replay(seed, steps, 60);
    }
}

#[test]
fn traces_are_reproducible() {
    let run = |seed| {
        let mut g = Trace::new(seed, 500);
        let mut ops = Vec::new();
        for _ in 0..2000 {
            g.step(&mut ops);
        }
        ops
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}
