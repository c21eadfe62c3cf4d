//! Lockless reads: walks, neighbour searches and iteration.
//!
//! Every function here is `unsafe` with one contract: the caller keeps every
//! node reachable from the root during the call allocated, by holding a read
//! guard of the tree's allocator or the writer lock. A walk re-starts from
//! the root whenever a node it read from turns out dead, after reading what
//! it needed from it and before acting on it.

use core::marker::PhantomData;
use core::num::NonZeroUsize;

use super::node::{Enode, Kind};
use super::{MapleEntry, MapleRange};
use crate::sync::{AtomicPtr, Ordering};

/// Where a walk ended: a leaf, the slot holding the key, the leaf's range.
#[derive(Clone, Copy)]
struct LeafPos {
    leaf: Enode,
    off: usize,
    min: u64,
    max: u64,
}

/// Walks to the leaf slot holding `index`; `None` if the tree is empty.
///
/// # Safety
/// See the module documentation.
#[inline]
unsafe fn walk(root: &AtomicPtr<u8>, index: u64) -> Option<LeafPos> {
    'rewalk: loop {
        // Acquire pairs with the Release store in `WriteCtx::publish_root`:
        // the root node's contents are visible.
        let mut e = Enode::from_word(root.load(Ordering::Acquire))?;
        let (mut min, mut max) = (0u64, u64::MAX);
        loop {
            // SAFETY: `e` was read from the root or from a live node under the caller's guard (module contract).
            let n = unsafe { e.node() };
            let kind = e.kind();
            let off = n.find_slot(kind, index);
            if kind == Kind::Leaf {
                // The caller reads the slot and then checks the leaf.
                return Some(LeafPos {
                    leaf: e,
                    off,
                    min,
                    max,
                });
            }
            // Acquire pairs with the Release store in
            // `WriteCtx::publish_slot` (a child replaced in place).
            let child = n.slot(Kind::Internal, off, Ordering::Acquire);
            let (cmin, cmax) = (n.slot_first(off, min), n.slot_last(kind, off, max));
            // Catches a node replaced since we loaded the pointer to it:
            // what we read may be stale, so start again from the root.
            if n.is_dead() {
                continue 'rewalk;
            }
            // A live internal node has no null child in use; reading one
            // means the node was published before it was filled (the bug the
            // loom model injects). Report "no entry" rather than crash.
            e = Enode::from_word(child)?;
            min = cmin;
            max = cmax;
        }
    }
}

/// Reads slot `off` of the leaf at `pos`: `(first, last, word)`, or `None`
/// if the leaf has been replaced and the caller must re-walk.
///
/// # Safety
/// See the module documentation; `pos` comes from `walk` under the same
/// guard.
#[inline]
unsafe fn read_slot(pos: &LeafPos, off: usize) -> Option<(u64, u64, *mut u8)> {
    // SAFETY: `pos.leaf` was reached under the caller's guard.
    let n = unsafe { pos.leaf.node() };
    let first = n.slot_first(off, pos.min);
    let last = n.slot_last(Kind::Leaf, off, pos.max);
    // Relaxed: a leaf's entries are written before the leaf is published
    // and never change afterwards; `walk` acquired the pointer to it.
    let w = n.slot(Kind::Leaf, off, Ordering::Relaxed);
    // Catches a leaf replaced since we found it: its entry may be stale.
    if n.is_dead() {
        return None;
    }
    Some((first, last, w))
}

#[inline]
fn to_range<E: MapleEntry>(first: u64, last: u64, w: *mut u8) -> Option<MapleRange<E>> {
    NonZeroUsize::new(w.addr()).map(|raw| MapleRange {
        first,
        last,
        // SAFETY: every non-null leaf word of a `MapleTree<E, _>` was stored by `MapleWriter::store_range` from `E::into_raw`.
        entry: unsafe { E::from_raw(raw) },
    })
}

/// # Safety
/// See the module documentation.
pub(crate) unsafe fn load_range<E: MapleEntry>(
    root: &AtomicPtr<u8>,
    index: u64,
) -> Option<MapleRange<E>> {
    loop {
        // SAFETY: forwarded contract.
        let pos = unsafe { walk(root, index) }?;
        // SAFETY: forwarded contract.
        if let Some((first, last, w)) = unsafe { read_slot(&pos, pos.off) } {
            return to_range(first, last, w);
        }
    }
}

/// # Safety
/// See the module documentation.
pub(crate) unsafe fn find<E: MapleEntry>(
    root: &AtomicPtr<u8>,
    index: u64,
    max: u64,
) -> Option<MapleRange<E>> {
    if index > max {
        return None;
    }
    let mut key = index;
    'rewalk: loop {
        // SAFETY: forwarded contract.
        let pos = unsafe { walk(root, key) }?;
        let mut off = pos.off;
        loop {
            // SAFETY: forwarded contract.
            let Some((first, last, w)) = (unsafe { read_slot(&pos, off) }) else {
                continue 'rewalk;
            };
            if first > max {
                return None;
            }
            if let Some(r) = to_range(first, last, w) {
                return Some(r);
            }
            if last >= max {
                return None;
            }
            key = last + 1;
            if last >= pos.max {
                // End of this leaf: the next slot is in the next leaf.
                continue 'rewalk;
            }
            off += 1;
        }
    }
}

/// # Safety
/// See the module documentation.
pub(crate) unsafe fn find_rev<E: MapleEntry>(
    root: &AtomicPtr<u8>,
    index: u64,
    min: u64,
) -> Option<MapleRange<E>> {
    if index < min {
        return None;
    }
    let mut key = index;
    'rewalk: loop {
        // SAFETY: forwarded contract.
        let pos = unsafe { walk(root, key) }?;
        let mut off = pos.off;
        loop {
            // SAFETY: forwarded contract.
            let Some((first, last, w)) = (unsafe { read_slot(&pos, off) }) else {
                continue 'rewalk;
            };
            if last < min {
                return None;
            }
            if let Some(r) = to_range(first, last, w) {
                return Some(r);
            }
            if first <= min {
                return None;
            }
            key = first - 1;
            if off == 0 {
                continue 'rewalk;
            }
            off -= 1;
        }
    }
}

/// The first entry starting after `index`.
///
/// # Safety
/// See the module documentation.
pub(crate) unsafe fn next<E: MapleEntry>(
    root: &AtomicPtr<u8>,
    index: u64,
) -> Option<MapleRange<E>> {
    let mut from = index.checked_add(1)?;
    loop {
        // SAFETY: forwarded contract.
        let r = unsafe { find::<E>(root, from, u64::MAX) }?;
        if r.first > index {
            return Some(r);
        }
        // `r` also holds `index` (now, or after a racing store): look past
        // it. `from` only grows, so this ends.
        from = r.last.checked_add(1)?;
    }
}

/// The last entry ending before `index`.
///
/// # Safety
/// See the module documentation.
pub(crate) unsafe fn prev<E: MapleEntry>(
    root: &AtomicPtr<u8>,
    index: u64,
) -> Option<MapleRange<E>> {
    let mut from = index.checked_sub(1)?;
    loop {
        // SAFETY: forwarded contract.
        let r = unsafe { find_rev::<E>(root, from, 0) }?;
        if r.last < index {
            return Some(r);
        }
        from = r.first.checked_sub(1)?;
    }
}

/// Iterator over the entries intersecting a key range, in key order. It
/// keeps its place in a leaf and re-walks from the root only to move to the
/// next leaf or when its leaf has been replaced, so each step is O(1)
/// within a leaf. Items never overlap: when a racing writer has stored a
/// range that starts below the iterator's position, only the part from the
/// position on is reported.
pub struct Iter<'a, E> {
    root: &'a AtomicPtr<u8>,
    /// The next key to visit.
    key: u64,
    last: u64,
    done: bool,
    /// The leaf holding `key` and `key`'s slot in it, if known.
    pos: Option<(LeafPos, usize)>,
    /// Whether an entry was returned already.
    started: bool,
    _entries: PhantomData<E>,
}

impl<'a, E> Iter<'a, E> {
    /// # Safety
    /// Every node reachable from `root` during `'a` stays allocated.
    pub(crate) unsafe fn new(root: &'a AtomicPtr<u8>, first: u64, last: u64) -> Self {
        Iter {
            root,
            key: first,
            last,
            done: first > last,
            pos: None,
            started: false,
            _entries: PhantomData,
        }
    }
}

impl<E: MapleEntry> Iterator for Iter<'_, E> {
    type Item = MapleRange<E>;

    fn next(&mut self) -> Option<MapleRange<E>> {
        while !self.done {
            let (pos, off) = match self.pos {
                Some(p) => p,
                // SAFETY: `new`'s contract covers the iterator's lifetime.
                None => match unsafe { walk(self.root, self.key) } {
                    Some(p) => (p, p.off),
                    None => {
                        self.done = true;
                        return None;
                    }
                },
            };
            // SAFETY: as above.
            let Some((first, last, w)) = (unsafe { read_slot(&pos, off) }) else {
                self.pos = None;
                continue;
            };
            // After a re-walk, the slot holding `key` may now start below
            // it (a racing store covered keys already returned): report
            // only the part not yet visited, so entries come in key order
            // and never overlap. (Within one leaf, the next slot starts at
            // `key` exactly.)
            let first = if self.started {
                first.max(self.key)
            } else {
                first
            };
            if first > self.last {
                self.done = true;
                return None;
            }
            if last >= self.last {
                self.done = true;
            } else {
                self.key = last + 1;
                self.pos = (last < pos.max).then_some((pos, off + 1));
            }
            if let Some(r) = to_range(first, last, w) {
                self.started = true;
                return Some(r);
            }
        }
        None
    }
}
