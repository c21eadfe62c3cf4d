//! The debug validator: checks every structural invariant of the tree.

use super::node::{parent_word, root_parent_word, Enode, Kind, NODE_SIZE};
use crate::sync::{AtomicPtr, Ordering};

/// Shape and size of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Levels (0 when empty).
    pub height: usize,
    pub leaves: usize,
    pub internal: usize,
    /// Non-empty slots: stored ranges.
    pub entries: usize,
    /// All leaf slots, empty ones included.
    pub slots: usize,
}

impl TreeStats {
    pub fn nodes(&self) -> usize {
        self.leaves + self.internal
    }

    /// Node memory.
    pub fn bytes(&self) -> usize {
        self.nodes() * NODE_SIZE
    }
}

/// Which invariant failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateErrorKind {
    /// The root's parent word is not the root marker.
    RootParent,
    /// A node's parent word does not name its parent and slot.
    Parent,
    /// A reachable node is marked dead.
    Dead,
    /// Pivots not strictly increasing, or outside the node's range.
    Pivots,
    /// A used child slot of an internal node is null.
    NullChild,
    /// Fewer slots than the minimum for a non-root node (or < 2 children
    /// for an internal root).
    Underfull,
    /// A recorded gap differs from the subtree's largest empty range.
    Gap { recorded: u64, actual: u64 },
    /// Leaves at different depths, or a depth other than the recorded height.
    Depth,
    /// Two adjacent empty slots (within or across leaves).
    AdjacentEmpty,
    /// The root is a leaf holding one empty slot (should be an empty tree).
    EmptyRoot,
}

/// A failed invariant and where: the node's depth and key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidateError {
    pub kind: ValidateErrorKind,
    pub depth: usize,
    pub min: u64,
    pub max: u64,
}

struct Walker {
    height: usize,
    stats: TreeStats,
    /// Whether the last slot visited (in key order) was empty.
    prev_empty: bool,
}

/// # Safety
/// The caller holds the writer lock (or otherwise excludes writers).
pub(crate) unsafe fn validate(
    root: &AtomicPtr<u8>,
    height: usize,
) -> Result<TreeStats, ValidateError> {
    let err = |kind| ValidateError {
        kind,
        depth: 0,
        min: 0,
        max: u64::MAX,
    };
    // Relaxed: writers are excluded; the lock orders their stores.
    let Some(r) = Enode::from_word(root.load(Ordering::Relaxed)) else {
        return if height == 0 {
            Ok(TreeStats::default())
        } else {
            Err(err(ValidateErrorKind::Depth))
        };
    };
    // SAFETY: the root is live (caller's contract).
    let rn = unsafe { r.node() };
    if rn.parent() != root_parent_word() {
        return Err(err(ValidateErrorKind::RootParent));
    }
    let mut w = Walker {
        height,
        stats: TreeStats {
            height,
            ..TreeStats::default()
        },
        prev_empty: false,
    };
    // SAFETY: as above.
    unsafe { w.node(r, 0, 0, u64::MAX) }?;
    Ok(w.stats)
}

impl Walker {
    /// Checks the subtree at `e` (depth `depth`, covering `[min, max]`);
    /// returns its largest empty range.
    ///
    /// # Safety
    /// `e` is live and writers are excluded.
    unsafe fn node(
        &mut self,
        e: Enode,
        depth: usize,
        min: u64,
        max: u64,
    ) -> Result<u64, ValidateError> {
        let err = |kind| ValidateError {
            kind,
            depth,
            min,
            max,
        };
        // SAFETY: caller's contract.
        let n = unsafe { e.node() };
        let kind = e.kind();
        if n.is_dead() {
            return Err(err(ValidateErrorKind::Dead));
        }
        let end = n.end(kind, max);
        let mut prev = min;
        for i in 0..end.min(kind.pivots()) {
            let p = n.pivot(i);
            if p < prev || p >= max {
                return Err(err(ValidateErrorKind::Pivots));
            }
            prev = p.wrapping_add(1);
        }
        if end < kind.pivots() && n.pivot(end) != max {
            return Err(err(ValidateErrorKind::Pivots));
        }
        let count = end + 1;
        let is_root = depth == 0;
        let min_count = match (is_root, kind) {
            (true, Kind::Leaf) => 1,
            (true, Kind::Internal) => 2,
            (false, k) => k.min_slots(),
        };
        if count < min_count {
            return Err(err(ValidateErrorKind::Underfull));
        }
        match kind {
            Kind::Leaf => {
                if depth + 1 != self.height {
                    return Err(err(ValidateErrorKind::Depth));
                }
                if is_root && count == 1 && n.slot(kind, 0, Ordering::Relaxed).is_null() {
                    return Err(err(ValidateErrorKind::EmptyRoot));
                }
                self.stats.leaves += 1;
                let mut gap = 0;
                for i in 0..count {
                    let empty = n.slot(kind, i, Ordering::Relaxed).is_null();
                    if empty && self.prev_empty {
                        return Err(err(ValidateErrorKind::AdjacentEmpty));
                    }
                    self.prev_empty = empty;
                    self.stats.slots += 1;
                    if empty {
                        let size =
                            (n.slot_last(kind, i, max) - n.slot_first(i, min)).saturating_add(1);
                        gap = gap.max(size);
                    } else {
                        self.stats.entries += 1;
                    }
                }
                Ok(gap)
            }
            Kind::Internal => {
                if depth + 1 >= self.height {
                    return Err(err(ValidateErrorKind::Depth));
                }
                self.stats.internal += 1;
                let mut gap = 0;
                for i in 0..count {
                    let Some(c) = Enode::from_word(n.slot(kind, i, Ordering::Relaxed)) else {
                        return Err(err(ValidateErrorKind::NullChild));
                    };
                    let (cmin, cmax) = (n.slot_first(i, min), n.slot_last(kind, i, max));
                    // SAFETY: a child of a live node is live.
                    let cn = unsafe { c.node() };
                    if cn.parent() != parent_word(e, i) {
                        return Err(ValidateError {
                            kind: ValidateErrorKind::Parent,
                            depth: depth + 1,
                            min: cmin,
                            max: cmax,
                        });
                    }
                    // SAFETY: as above.
                    let actual = unsafe { self.node(c, depth + 1, cmin, cmax) }?;
                    if n.gap(i) != actual {
                        return Err(ValidateError {
                            kind: ValidateErrorKind::Gap {
                                recorded: n.gap(i),
                                actual,
                            },
                            depth: depth + 1,
                            min: cmin,
                            max: cmax,
                        });
                    }
                    gap = gap.max(actual);
                }
                Ok(gap)
            }
        }
    }
}

/// Calls `f(min, max)` for every node at `depth`, in key order.
///
/// # Safety
/// The caller holds the writer lock.
pub(crate) unsafe fn node_ranges(root: &AtomicPtr<u8>, depth: usize, f: &mut dyn FnMut(u64, u64)) {
    /// # Safety
    /// `e` is live and writers are excluded.
    unsafe fn visit(
        e: Enode,
        d: usize,
        depth: usize,
        min: u64,
        max: u64,
        f: &mut dyn FnMut(u64, u64),
    ) {
        if d == depth {
            f(min, max);
            return;
        }
        if e.kind() == Kind::Leaf {
            return;
        }
        // SAFETY: caller's contract.
        let n = unsafe { e.node() };
        for i in 0..=n.end(Kind::Internal, max) {
            if let Some(c) = Enode::from_word(n.slot(Kind::Internal, i, Ordering::Relaxed)) {
                let (cmin, cmax) = (n.slot_first(i, min), n.slot_last(Kind::Internal, i, max));
                // SAFETY: a child of a live node is live.
                unsafe { visit(c, d + 1, depth, cmin, cmax, f) };
            }
        }
    }
    // Relaxed: writers are excluded.
    if let Some(r) = Enode::from_word(root.load(Ordering::Relaxed)) {
        // SAFETY: caller's contract.
        unsafe { visit(r, 0, depth, 0, u64::MAX, f) };
    }
}
