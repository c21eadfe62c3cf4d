//! Loom models of the maple tree's publication protocol: one writer
//! replacing nodes (a store that splits the root leaf; an erase that merges
//! two leaves and collapses the root) against a reader walking to a fixed
//! key. The reader must always find the key's entry, from the old tree or
//! the new one. Each model is also run with the writer publishing new
//! nodes *before* filling them, and loom must then find a failing
//! interleaving.
//!
//! The models use the real tree code with a tiny tree. Replaced nodes go to
//! [`DeferredFree`] (freed when the model ends) instead of the RCU
//! reclaimer: reclamation is RCU's own model's business, and leaving it out
//! keeps each model well under a minute.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p mm --release --test loom_maple`
//! (optionally with `LOOM_MAX_PREEMPTIONS=n`; default 3).
#![cfg(loom)]

use std::num::NonZeroU64;
use std::panic::{catch_unwind, AssertUnwindSafe};

use loom::sync::Arc;
use loom::thread;
use mm::maple::{DeferredFree, MapleTree, NoReclaim};

type Tree = MapleTree<NonZeroU64, DeferredFree>;

fn nz(x: u64) -> NonZeroU64 {
    NonZeroU64::new(x).unwrap()
}

/// Executions explored by the last `model` call on this thread.
static EXECUTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `f` under loom; returns how many executions it explored.
fn model(f: impl Fn() + Sync + Send + 'static) -> usize {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    // Building the starting tree takes ~1000 atomic operations per
    // execution, more than loom's default bound on one execution.
    b.max_branches = 50_000;
    EXECUTIONS.store(0, std::sync::atomic::Ordering::Relaxed);
    b.check(move || {
        EXECUTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let n = EXECUTIONS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("explored {n} executions");
    n
}

/// A tree of `n` ranges `[10 i, 10 i + 9]` holding `i + 1`.
fn tree_with(n: u64) -> Arc<Tree> {
    let t = Arc::new(MapleTree::new(DeferredFree::new()));
    {
        let mut w = t.write(0);
        for i in 0..n {
            w.store_range(10 * i, 10 * i + 9, nz(i + 1)).unwrap();
        }
    }
    t
}

/// The reader: key 35 is in range 3 (`[30, 39]`, entry 4) before, during
/// and after the write; key `k` shows `before` or `after`.
fn reader(
    t: Arc<Tree>,
    k: u64,
    before: Option<(u64, u64, u64)>,
    after: Option<(u64, u64, u64)>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let r = t.load_range(&NoReclaim, 35);
        assert_eq!(
            r.map(|r| (r.first, r.last, r.entry.get())),
            Some((30, 39, 4)),
            "reader saw a torn or unfilled node"
        );
        let r = t
            .load_range(&NoReclaim, k)
            .map(|r| (r.first, r.last, r.entry.get()));
        assert!(
            r == before || r == after,
            "reader saw a torn or unfilled node: {r:?}"
        );
    })
}

/// 15 ranges and the empty tail fill the root leaf (16 slots); storing a
/// range past the tail splits it: two new leaves and a new root.
fn split(broken: bool) {
    let t = tree_with(15);
    assert_eq!(t.write(0).height(), 1);
    let r = reader(t.clone(), 205, None, Some((200, 209, 100)));
    {
        let mut w = t.write(0);
        w.inject_publish_before_fill(broken);
        w.store_range(200, 209, nz(100)).unwrap();
        assert_eq!(w.height(), 2);
    }
    r.join().unwrap();
}

/// 17 ranges make two leaves (11 and 7 slots); erasing ranges 11..=13
/// leaves the right one with 5 (< 6): it takes in its sibling, the 16
/// slots fit one new leaf, and the root collapses onto it, so the reader's
/// leaf dies under it.
fn merge(broken: bool) {
    let t = tree_with(17);
    assert_eq!(t.write(0).height(), 2);
    let r = reader(t.clone(), 115, Some((110, 119, 12)), None);
    {
        let mut w = t.write(0);
        w.inject_publish_before_fill(broken);
        w.erase_range(110, 139).unwrap();
        assert_eq!(w.height(), 1);
    }
    r.join().unwrap();
}

#[test]
fn loom_maple_split_publishes_filled_nodes() {
    assert!(
        model(|| split(false)) > 1,
        "the model explored interleavings"
    );
}

#[test]
fn loom_maple_merge_publishes_filled_nodes() {
    assert!(
        model(|| merge(false)) > 1,
        "the model explored interleavings"
    );
}

/// Runs a model that must fail, and checks it fails on the reader's
/// assertion (not on some other limit of the model).
fn must_fail(f: impl Fn() + Sync + Send + 'static) {
    let res = catch_unwind(AssertUnwindSafe(|| {
        model(f);
    }));
    let payload = res.expect_err("loom must catch a node published before it is filled");
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(
        msg.contains("reader saw a torn or unfilled node"),
        "failed for another reason: {msg}"
    );
}

#[test]
fn loom_maple_split_fails_when_published_before_filled() {
    must_fail(|| split(true));
}

#[test]
fn loom_maple_merge_fails_when_published_before_filled() {
    must_fail(|| merge(true));
}
