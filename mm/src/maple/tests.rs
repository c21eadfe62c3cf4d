//! Unit tests of the tree on the host, single-threaded.

use core::num::NonZeroU64;

use super::*;

type Tree<'a> = MapleTree<NonZeroU64, &'a DeferredFree>;

fn v(x: u64) -> NonZeroU64 {
    NonZeroU64::new(x).unwrap()
}

#[test]
fn empty_tree() {
    let a = DeferredFree::new();
    let t: Tree = MapleTree::new(&a);
    assert_eq!(t.load(&NoReclaim, 0), None);
    assert_eq!(t.find(&NoReclaim, 0, u64::MAX), None);
    let w = t.write(0);
    assert_eq!(w.validate().unwrap(), TreeStats::default());
    assert_eq!(w.find_gap_lowest(10, 1, 0, u64::MAX), Ok(0));
}

#[test]
fn store_and_load_one_range() {
    let a = DeferredFree::new();
    let t: Tree = MapleTree::new(&a);
    let mut w = t.write(0);
    w.store_range(10, 19, v(1)).unwrap();
    w.validate().unwrap();
    drop(w);
    assert_eq!(t.load(&NoReclaim, 9), None);
    assert_eq!(t.load(&NoReclaim, 10), Some(v(1)));
    assert_eq!(t.load(&NoReclaim, 19), Some(v(1)));
    assert_eq!(t.load(&NoReclaim, 20), None);
    assert_eq!(
        t.load_range(&NoReclaim, 15),
        Some(MapleRange {
            first: 10,
            last: 19,
            entry: v(1)
        })
    );
}
