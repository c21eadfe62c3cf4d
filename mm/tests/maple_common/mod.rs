//! Shared by the maple tree's integration tests: the `BTreeMap` reference
//! model, a comparison of tree and model, and a seeded PRNG.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use mm::maple::{MapleEntry, MapleRange, MapleWriter, NodeAlloc};

/// The reference: non-overlapping ranges keyed by their first key.
#[derive(Default, Clone, Debug)]
pub struct Model {
    map: BTreeMap<u64, (u64, u64)>,
}

pub type R = (u64, u64, u64);

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ranges in order.
    pub fn ranges(&self) -> Vec<R> {
        self.map.iter().map(|(&f, &(l, v))| (f, l, v)).collect()
    }

    /// Stores `val` over `[first, last]` (`None` erases), truncating and
    /// splitting what it overlaps.
    pub fn store(&mut self, first: u64, last: u64, val: Option<u64>) {
        assert!(first <= last);
        let hit: Vec<R> = self
            .map
            .range(..=last)
            .rev()
            .take_while(|(_, &(l, _))| l >= first)
            .map(|(&f, &(l, v))| (f, l, v))
            .collect();
        for (f, l, v) in hit {
            self.map.remove(&f);
            if f < first {
                self.map.insert(f, (first - 1, v));
            }
            if l > last {
                self.map.insert(last + 1, (l, v));
            }
        }
        if let Some(v) = val {
            self.map.insert(first, (last, v));
        }
    }

    pub fn load(&self, i: u64) -> Option<R> {
        self.map
            .range(..=i)
            .next_back()
            .filter(|(_, &(l, _))| l >= i)
            .map(|(&f, &(l, v))| (f, l, v))
    }

    pub fn find(&self, index: u64, max: u64) -> Option<R> {
        if index > max {
            return None;
        }
        self.load(index).or_else(|| {
            self.map
                .range(index..=max)
                .next()
                .map(|(&f, &(l, v))| (f, l, v))
        })
    }

    pub fn find_rev(&self, index: u64, min: u64) -> Option<R> {
        if index < min {
            return None;
        }
        self.map
            .range(..=index)
            .next_back()
            .filter(|(_, &(l, _))| l >= min)
            .map(|(&f, &(l, v))| (f, l, v))
    }

    pub fn next(&self, index: u64) -> Option<R> {
        if index == u64::MAX {
            return None;
        }
        self.map
            .range(index + 1..)
            .next()
            .map(|(&f, &(l, v))| (f, l, v))
    }

    pub fn prev(&self, index: u64) -> Option<R> {
        self.map
            .range(..index)
            .rev()
            .find(|(_, &(l, _))| l < index)
            .map(|(&f, &(l, v))| (f, l, v))
    }

    /// Maximal empty ranges, in order.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next: Option<u64> = Some(0);
        for (&f, &(l, _)) in &self.map {
            if let Some(n) = next {
                if f > n {
                    out.push((n, f - 1));
                }
            }
            next = l.checked_add(1);
        }
        if let Some(n) = next {
            out.push((n, u64::MAX));
        }
        out
    }

    pub fn gap_lowest(&self, size: u64, align: u64, min: u64, max: u64) -> Option<u64> {
        self.gaps().into_iter().find_map(|(lo, hi)| {
            let (lo, hi) = (lo.max(min), hi.min(max));
            if lo > hi {
                return None;
            }
            let a = lo.checked_next_multiple_of(align)?;
            (a <= hi && hi - a >= size - 1).then_some(a)
        })
    }

    pub fn gap_highest(&self, size: u64, align: u64, min: u64, max: u64) -> Option<u64> {
        self.gaps().into_iter().rev().find_map(|(lo, hi)| {
            let (lo, hi) = (lo.max(min), hi.min(max));
            if lo > hi || hi - lo < size - 1 {
                return None;
            }
            let a = (hi - (size - 1)) & !(align - 1);
            (a >= lo).then_some(a)
        })
    }
}

pub fn nz(x: u64) -> NonZeroU64 {
    NonZeroU64::new(x).expect("test values are non-zero")
}

pub fn tup(r: Option<MapleRange<NonZeroU64>>) -> Option<R> {
    r.map(|r| (r.first, r.last, r.entry.get()))
}

/// Asserts the tree holds exactly the model's ranges and is valid.
pub fn check_equal<E: MapleEntry + Into<u64>, A: NodeAlloc>(w: &MapleWriter<'_, E, A>, m: &Model) {
    let stats = w
        .validate()
        .unwrap_or_else(|e| panic!("invalid tree: {e:?}"));
    let got: Vec<R> = w
        .iter(0, u64::MAX)
        .map(|r| (r.first, r.last, r.entry.into()))
        .collect();
    assert_eq!(got, m.ranges(), "tree and model differ");
    assert_eq!(stats.entries, m.len());
}

/// SplitMix64: small, seedable, reproducible.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let span = hi.wrapping_sub(lo).wrapping_add(1);
        if span == 0 {
            return self.next_u64();
        }
        lo + self.next_u64() % span
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

pub mod trace;
