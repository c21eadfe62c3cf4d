//! The writer: copy-on-write stores with rebalancing, preallocation and
//! batched retirement.
//!
//! # How a store is rebuilt
//!
//! `store(first, last, val)` (`val` null for erase) walks two paths from the
//! root: to the leaf holding `first` and to the leaf holding `last` (one
//! walk when they are the same leaf). An erase first widens itself over the
//! empty slots on either side, so that empty slots never end up adjacent. At the
//! leaf depth the new contents of the run of leaves between them are: the
//! left leaf's slots before `first` (the one straddling `first` truncated),
//! the new slot, and the right leaf's slots after `last` (the straddling one
//! truncated). Every leaf strictly between is overwritten entirely.
//!
//! Then, one depth at a time, bottom-up:
//! 1. If the items are fewer than a node's minimum and the run does not
//!    span the whole depth, pull in a neighbouring node: a sibling under
//!    the same parent when there is one, otherwise the adjacent node under
//!    the next parent (found by a walk to the key just outside the run).
//! 2. Distribute the items over `ceil(n / capacity)` new nodes (at most 3:
//!    two truncated nodes plus one slot give <= 33 leaf items; at most
//!    9 + 3 + 9 = 21 children), each between the minimum and the capacity;
//!    a split next to where the run changed leaves the room on that side
//!    ([`split_sizes`]).
//! 3. If the run was a single node and became a single node, the new node
//!    covers exactly the old one's range: publish it in the parent's slot
//!    and stop. If the run spans its whole depth and became one node, that
//!    node is the new root (the levels above collapse). At the root,
//!    publish the new root, adding a level if it split. Otherwise the
//!    parents' items are: the left parent's children before the run, the
//!    new nodes, the right parent's children after it; repeat one depth up.
//!
//! The same procedure, run dry first (no allocation, no stores: new nodes
//! are placeholders), counts the nodes the write takes, so that it can fail
//! for lack of memory before it changes anything.
//!
//! After publication, [`WriteCtx::retire_subtree`] walks the replaced
//! subtree and retires every node in it that no new node adopted (an adopted
//! node's parent word points at its new parent, not at the old one).

use core::ptr::{self, NonNull};

use super::alloc::NodeAlloc;
use super::node::{
    parent_word, root_parent_word, Enode, Kind, Node, LEAF_MIN, LEAF_SLOTS, MAX_HEIGHT, NODE_MASK,
};
use super::MapleError;
use crate::cpu::CpuId;
use crate::sync::{AtomicPtr, Ordering};

/// Nodes per [`NodeAlloc::retire`] call. The writes made under one
/// `MapleWriter` normally retire a few nodes and make one call when it is
/// dropped; a store spanning thousands of ranges makes one call per this
/// many nodes.
pub const RETIRE_BATCH: usize = 64;
/// Worst-case nodes one write needs: 3 per depth and a new root.
const RESERVE_MAX: usize = 3 * MAX_HEIGHT + 1;
/// Spare nodes kept between writes (the rest go back to the allocator).
const RESERVE_KEEP: usize = 4;
/// Items at one depth: <= 16 + 1 + 16 leaf slots (two truncated leaves
/// and the new slot; a neighbour is added only below 6); <= 9 + 3 + 9
/// children.
const ITEMS_MAX: usize = 33;

/// One slot of a node under construction: its last key, its word (entry or
/// encoded child) and, for children, the child's largest gap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    last: u64,
    val: *mut u8,
    gap: u64,
}

impl Item {
    const EMPTY: Item = Item {
        last: 0,
        val: ptr::null_mut(),
        gap: 0,
    };
}

#[derive(Clone)]
struct Items {
    buf: [Item; ITEMS_MAX],
    len: usize,
}

impl Items {
    fn new() -> Self {
        Items {
            buf: [Item::EMPTY; ITEMS_MAX],
            len: 0,
        }
    }

    fn push(&mut self, it: Item) {
        self.buf[self.len] = it;
        self.len += 1;
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_slice(&self) -> &[Item] {
        &self.buf[..self.len]
    }
}

/// A node on a walk: the node, the slot followed (or holding the key), and
/// the node's range.
#[derive(Clone, Copy)]
struct Level {
    node: Enode,
    off: usize,
    min: u64,
    max: u64,
}

#[derive(Clone)]
struct Path {
    lv: [Level; MAX_HEIGHT],
}

impl Path {
    fn new() -> Self {
        Path {
            lv: [Level {
                node: Enode::dangling(),
                off: 0,
                min: 0,
                max: 0,
            }; MAX_HEIGHT],
        }
    }
}

/// A node built at some depth, as its parent will see it.
#[derive(Clone, Copy)]
struct NewNode {
    e: Enode,
    last: u64,
    gap: u64,
}

/// The writer's private state, behind the tree's writer lock.
pub(crate) struct WriterState {
    /// Levels of the tree; 0 when empty. Only the writer needs it.
    pub(crate) height: usize,
    reserve: [NonNull<Node>; RESERVE_MAX],
    nreserve: usize,
    retired: [NonNull<Node>; RETIRE_BATCH],
    nretired: usize,
    #[cfg(loom)]
    pub(crate) publish_before_fill: bool,
    #[cfg(loom)]
    deferred: std::vec::Vec<(Enode, std::vec::Vec<Item>)>,
}

// SAFETY: the raw node pointers are owned by the tree; the state moves with
// the writer lock, whose holder alone touches it.
unsafe impl Send for WriterState {}

impl WriterState {
    pub(crate) fn new() -> Self {
        WriterState {
            height: 0,
            reserve: [NonNull::dangling(); RESERVE_MAX],
            nreserve: 0,
            retired: [NonNull::dangling(); RETIRE_BATCH],
            nretired: 0,
            #[cfg(loom)]
            publish_before_fill: false,
            #[cfg(loom)]
            deferred: std::vec::Vec::new(),
        }
    }

    pub(crate) fn reserved(&self) -> usize {
        self.nreserve
    }

    /// Frees spare nodes beyond `keep`.
    pub(crate) fn shrink_reserve<A: NodeAlloc>(&mut self, alloc: &A, cpu: CpuId, keep: usize) {
        while self.nreserve > keep {
            self.nreserve -= 1;
            // SAFETY: reserve nodes came from this allocator and were never published.
            unsafe { alloc.free_node(cpu, self.reserve[self.nreserve]) };
        }
    }

    /// Frees the whole tree and the reserve at once.
    ///
    /// # Safety
    /// No reader or writer can reach the tree any more; `root` is its root.
    pub(crate) unsafe fn destroy<A: NodeAlloc>(&mut self, alloc: &A, cpu: CpuId, root: *mut u8) {
        /// # Safety
        /// `e` is a live node of a tree no one else can reach.
        unsafe fn free_subtree<A: NodeAlloc>(alloc: &A, cpu: CpuId, e: Enode, min: u64, max: u64) {
            // SAFETY: caller's contract.
            let n = unsafe { e.node() };
            if e.kind() == Kind::Internal {
                let end = n.end(Kind::Internal, max);
                for i in 0..=end {
                    if let Some(c) = Enode::from_word(n.slot(Kind::Internal, i, Ordering::Relaxed))
                    {
                        let (cmin, cmax) =
                            (n.slot_first(i, min), n.slot_last(Kind::Internal, i, max));
                        // SAFETY: a child of a live node is live.
                        unsafe { free_subtree(alloc, cpu, c, cmin, cmax) };
                    }
                }
            }
            // SAFETY: no one can reach the node; its children are freed.
            unsafe { alloc.free_node(cpu, NonNull::new_unchecked(e.ptr())) };
        }
        if let Some(r) = Enode::from_word(root) {
            // SAFETY: caller's contract.
            unsafe { free_subtree(alloc, cpu, r, 0, u64::MAX) };
        }
        self.shrink_reserve(alloc, cpu, 0);
        debug_assert_eq!(
            self.nretired, 0,
            "retired nodes are flushed after every write"
        );
    }
}

/// The writer at work: borrowed pieces of the tree for one operation.
///
/// Invariant: every [`Enode`] this code dereferences is reachable from the
/// root, was taken from the reserve during this operation, or was retired
/// during it. All three stay allocated for the whole operation: the writer
/// lock keeps other writers from retiring anything, and a node retired here
/// is freed only after a grace period that the writer's own CPU ends by
/// reporting a quiescent state, which it does not do inside an operation.
pub(crate) struct WriteCtx<'a, A: NodeAlloc> {
    pub(crate) root: &'a AtomicPtr<u8>,
    pub(crate) st: &'a mut WriterState,
    pub(crate) alloc: &'a A,
    pub(crate) cpu: CpuId,
    /// Planning pass: count the nodes a rebuild takes, change nothing.
    pub(crate) dry: bool,
    pub(crate) planned: usize,
}

impl<'a, A: NodeAlloc> WriteCtx<'a, A> {
    /// `'a` is one operation: `MapleWriter` makes a fresh context per call.
    #[inline(always)]
    fn node(&self, e: Enode) -> &'a Node {
        // SAFETY: see the invariant on `WriteCtx`.
        unsafe { e.node() }
    }

    /// Child `off` of a live internal node. Its slots up to `end` are never
    /// null; a null one means the tree is corrupt.
    fn child(&self, e: Enode, off: usize) -> Enode {
        // Relaxed: the writer lock orders this after every earlier write.
        match Enode::from_word(self.node(e).slot(Kind::Internal, off, Ordering::Relaxed)) {
            Some(c) => c,
            None => unreachable!("maple: null child in a live internal node"),
        }
    }

    fn child_level(&self, p: Level, off: usize) -> Level {
        let n = self.node(p.node);
        Level {
            node: self.child(p.node, off),
            off: 0,
            min: n.slot_first(off, p.min),
            max: n.slot_last(Kind::Internal, off, p.max),
        }
    }

    /// Fills `p.lv[0..=to_depth]` with the walk from the root towards
    /// `index`.
    fn walk(&self, p: &mut Path, root: Enode, to_depth: usize, index: u64) {
        let mut lv = Level {
            node: root,
            off: 0,
            min: 0,
            max: u64::MAX,
        };
        for d in 0..=to_depth {
            lv.off = self.node(lv.node).find_slot(lv.node.kind(), index);
            p.lv[d] = lv;
            if d < to_depth {
                lv = self.child_level(lv, lv.off);
            }
        }
    }

    /// The slot holding `index`: `(first, last, word)`.
    fn range_at(&self, root: Enode, index: u64) -> (u64, u64, *mut u8) {
        let mut lv = Level {
            node: root,
            off: 0,
            min: 0,
            max: u64::MAX,
        };
        loop {
            lv.off = self.node(lv.node).find_slot(lv.node.kind(), index);
            if lv.node.kind() == Kind::Leaf {
                break;
            }
            lv = self.child_level(lv, lv.off);
        }
        let n = self.node(lv.node);
        (
            n.slot_first(lv.off, lv.min),
            n.slot_last(Kind::Leaf, lv.off, lv.max),
            n.slot(Kind::Leaf, lv.off, Ordering::Relaxed),
        )
    }

    /// Appends slots `from..to` of `lv.node` to `items`.
    fn read_items(&self, items: &mut Items, lv: Level, from: usize, to: usize) {
        let n = self.node(lv.node);
        let kind = lv.node.kind();
        for i in from..to {
            items.push(Item {
                last: n.slot_last(kind, i, lv.max),
                val: n.slot(kind, i, Ordering::Relaxed),
                gap: if kind == Kind::Internal { n.gap(i) } else { 0 },
            });
        }
    }

    fn read_all(&self, items: &mut Items, lv: Level) {
        let end = self.node(lv.node).end(lv.node.kind(), lv.max);
        self.read_items(items, lv, 0, end + 1);
    }

    fn prepend_all(&self, items: &mut Items, lv: Level) {
        let old = items.len;
        self.read_all(items, lv);
        // Rotate the appended slots to the front.
        items.buf[..items.len].rotate_right(items.len - old);
    }

    fn reserve(&mut self, need: usize) -> Result<(), MapleError> {
        debug_assert!(need <= RESERVE_MAX);
        while self.st.nreserve < need {
            let n = self
                .alloc
                .alloc_node(self.cpu)
                .ok_or(MapleError::NoMemory)?;
            self.st.reserve[self.st.nreserve] = n;
            self.st.nreserve += 1;
        }
        Ok(())
    }

    fn take(&mut self, kind: Kind) -> Enode {
        if self.dry {
            self.planned += 1;
            return Enode::placeholder(kind);
        }
        // The reservation bound makes this unreachable; running out would
        // mean the bound is wrong, and the tree is half-modified.
        assert!(
            self.st.nreserve > 0,
            "maple: node reservation underestimated"
        );
        self.st.nreserve -= 1;
        Enode::new(self.st.reserve[self.st.nreserve], kind)
    }

    fn push_retired(&mut self, e: Enode) {
        // SAFETY: an `Enode`'s address is a node's, never null.
        self.st.retired[self.st.nretired] = unsafe { NonNull::new_unchecked(e.ptr()) };
        self.st.nretired += 1;
        if self.st.nretired == RETIRE_BATCH {
            self.flush_retired();
        }
    }

    /// Hands the retired nodes collected so far to the allocator: one
    /// deferred free for all of them. Called when the batch is full and
    /// when the writer lock is released, so all the writes made under one
    /// `MapleWriter` (an `munmap` that splits and erases, say) share one
    /// RCU callback.
    pub(crate) fn flush_retired(&mut self) {
        if self.st.nretired == 0 {
            return;
        }
        // SAFETY: the nodes are unpublished, marked dead, distinct (each retired once by `retire_subtree`) and no longer used here.
        unsafe {
            self.alloc
                .retire(self.cpu, &self.st.retired[..self.st.nretired])
        };
        self.st.nretired = 0;
    }

    /// Writes `items` into the unpublished node `e`. Relaxed stores: the
    /// Release store that publishes the new subtree orders them.
    fn fill(&mut self, e: Enode, items: &[Item]) {
        if self.dry {
            return;
        }
        #[cfg(loom)]
        if self.st.publish_before_fill {
            self.st.deferred.push((e, items.to_vec()));
            return;
        }
        let n = self.node(e);
        let kind = e.kind();
        for (j, it) in items.iter().enumerate() {
            if j < kind.pivots() {
                n.set_pivot(j, it.last);
            }
            n.set_slot(kind, j, it.val, Ordering::Relaxed);
            if kind == Kind::Internal {
                n.set_gap(j, it.gap);
            }
        }
    }

    /// Points the children of the new internal node `e` at it.
    fn adopt(&self, e: Enode, items: &[Item]) {
        if self.dry {
            return;
        }
        for (j, it) in items.iter().enumerate() {
            if let Some(c) = Enode::from_word(it.val) {
                self.node(c).set_parent(parent_word(e, j));
            }
        }
    }

    /// Loom's injected bug: the fills skipped before publication happen now.
    #[cfg(loom)]
    fn flush_deferred(&mut self) {
        let deferred = core::mem::take(&mut self.st.deferred);
        let on = core::mem::replace(&mut self.st.publish_before_fill, false);
        for (e, items) in deferred {
            self.fill(e, &items);
        }
        self.st.publish_before_fill = on;
    }

    /// Publishes `top` as the root.
    fn publish_root(&mut self, top: Option<Enode>) {
        let w = top.map_or(ptr::null_mut(), Enode::word);
        // Release: publishes the new nodes' contents (written Relaxed in
        // `fill`) and parent words; pairs with the Acquire root load in
        // `read::walk`.
        self.root.store(w, Ordering::Release);
        #[cfg(loom)]
        self.flush_deferred();
    }

    /// Publishes `child` in slot `off` of the live node `parent`, replacing
    /// a child that covers the same range.
    fn publish_slot(&mut self, parent: Enode, off: usize, child: Enode) {
        // Release: as in `publish_root`; pairs with the Acquire child load
        // in `read::walk`.
        self.node(parent)
            .set_slot(Kind::Internal, off, child.word(), Ordering::Release);
        #[cfg(loom)]
        self.flush_deferred();
    }

    /// Stores `val` (null: erase) over `[first, last]`.
    pub(crate) fn store(&mut self, first: u64, last: u64, val: *mut u8) -> Result<(), MapleError> {
        if first > last {
            return Err(MapleError::InvalidRange);
        }
        let res = self.store_inner(first, last, val);
        let alloc = self.alloc;
        self.st.shrink_reserve(alloc, self.cpu, RESERVE_KEEP);
        res
    }

    fn store_inner(&mut self, first: u64, last: u64, val: *mut u8) -> Result<(), MapleError> {
        // Relaxed: the writer lock orders this after earlier writes.
        let Some(root) = Enode::from_word(self.root.load(Ordering::Relaxed)) else {
            return self.store_empty(first, last, val);
        };
        let mut lp = Path::new();
        let mut rp = Path::new();
        let mut items = Items::new();
        let Some((front, single)) =
            self.leaf_run(root, first, last, val, &mut lp, &mut rp, &mut items)
        else {
            // Erasing what is already empty changes nothing.
            return Ok(());
        };
        // The common case replaces one leaf by one leaf. Anything else is
        // planned by a dry run of the rebuild, which counts the nodes it
        // would take (at most 3 per depth plus a new root). The dry run
        // consumes the paths and items; they are cheap to compute again,
        // cheaper in stack than copies.
        let need = if single && (LEAF_MIN..=LEAF_SLOTS).contains(&items.len) {
            1
        } else {
            self.dry = true;
            self.planned = 0;
            self.rebuild(root, &mut lp, &mut rp, &mut items, front, single);
            self.dry = false;
            items.clear();
            let again = self.leaf_run(root, first, last, val, &mut lp, &mut rp, &mut items);
            debug_assert_eq!(again, Some((front, single)));
            self.planned
        };
        self.reserve(need)?;
        // Nothing has changed so far; from here on nothing can fail.
        let spare = self.st.nreserve;
        self.rebuild(root, &mut lp, &mut rp, &mut items, front, single);
        debug_assert_eq!(
            spare - self.st.nreserve,
            need,
            "maple: the plan was not exact"
        );
        Ok(())
    }

    /// Walks to the leaves holding `first` and `last` (widened over empty
    /// neighbours for an erase) and collects the leaf depth's new contents
    /// into `items`: returns where the new slot is in them and whether both
    /// ends are in one leaf, or `None` if an erase would change nothing.
    #[allow(clippy::too_many_arguments)]
    fn leaf_run(
        &self,
        root: Enode,
        mut first: u64,
        mut last: u64,
        val: *mut u8,
        lp: &mut Path,
        rp: &mut Path,
        items: &mut Items,
    ) -> Option<(usize, bool)> {
        let h = self.st.height;
        let leaf = h - 1;
        self.walk(lp, root, leaf, first);
        if val.is_null() {
            // Empty ranges never touch: absorb the empty neighbours.
            first = self.extend_empty_left(lp, root, first);
        }
        if last <= lp.lv[leaf].max {
            // Same leaf, same path.
            rp.lv[..h].copy_from_slice(&lp.lv[..h]);
            let b = &mut rp.lv[leaf];
            b.off = self.node(b.node).find_slot(Kind::Leaf, last);
        } else {
            self.walk(rp, root, leaf, last);
        }
        if val.is_null() {
            last = self.extend_empty_right(rp, root, last);
        }
        let (a, b) = (lp.lv[leaf], rp.lv[leaf]);
        let single = a.node == b.node;
        let an = self.node(a.node);
        if val.is_null()
            && single
            && a.off == b.off
            && an.slot(Kind::Leaf, a.off, Ordering::Relaxed).is_null()
        {
            return None;
        }
        self.read_items(items, a, 0, a.off);
        if an.slot_first(a.off, a.min) < first {
            items.push(Item {
                last: first - 1,
                val: an.slot(Kind::Leaf, a.off, Ordering::Relaxed),
                gap: 0,
            });
        }
        let front = items.len;
        items.push(Item { last, val, gap: 0 });
        let bn = self.node(b.node);
        let b_last = bn.slot_last(Kind::Leaf, b.off, b.max);
        if b_last > last {
            items.push(Item {
                last: b_last,
                val: bn.slot(Kind::Leaf, b.off, Ordering::Relaxed),
                gap: 0,
            });
        }
        let b_end = bn.end(Kind::Leaf, b.max);
        self.read_items(items, b, b.off + 1, b_end + 1);
        Some((front, single))
    }

    /// For an erase starting at `first` (path `lp`): if the slot before
    /// `first` is empty, the erase starts where that slot does. Returns the
    /// new start; `lp` follows it.
    fn extend_empty_left(&self, lp: &mut Path, root: Enode, first: u64) -> u64 {
        let leaf = self.st.height - 1;
        let a = lp.lv[leaf];
        let n = self.node(a.node);
        let start = n.slot_first(a.off, a.min);
        let empty = |i| n.slot(Kind::Leaf, i, Ordering::Relaxed).is_null();
        if start < first {
            // `first - 1` is in the same slot.
            return if empty(a.off) { start } else { first };
        }
        if a.off > 0 {
            if empty(a.off - 1) {
                lp.lv[leaf].off -= 1;
                return n.slot_first(a.off - 1, a.min);
            }
            return first;
        }
        if first == 0 {
            return first;
        }
        // The previous slot is the last of the previous leaf.
        let (f, _, v) = self.range_at(root, first - 1);
        if !v.is_null() {
            return first;
        }
        self.walk(lp, root, leaf, f);
        f
    }

    /// The mirror image of [`Self::extend_empty_left`] for the erase's end.
    fn extend_empty_right(&self, rp: &mut Path, root: Enode, last: u64) -> u64 {
        let leaf = self.st.height - 1;
        let b = rp.lv[leaf];
        let n = self.node(b.node);
        let end = n.slot_last(Kind::Leaf, b.off, b.max);
        let empty = |i| n.slot(Kind::Leaf, i, Ordering::Relaxed).is_null();
        if end > last {
            return if empty(b.off) { end } else { last };
        }
        if b.off < n.end(Kind::Leaf, b.max) {
            if empty(b.off + 1) {
                rp.lv[leaf].off += 1;
                return n.slot_last(Kind::Leaf, b.off + 1, b.max);
            }
            return last;
        }
        if last == u64::MAX {
            return last;
        }
        let (_, l, v) = self.range_at(root, last + 1);
        if !v.is_null() {
            return last;
        }
        self.walk(rp, root, leaf, l);
        l
    }

    fn store_empty(&mut self, first: u64, last: u64, val: *mut u8) -> Result<(), MapleError> {
        if val.is_null() {
            return Ok(());
        }
        self.reserve(1)?;
        let mut items = Items::new();
        if first > 0 {
            items.push(Item {
                last: first - 1,
                val: ptr::null_mut(),
                gap: 0,
            });
        }
        items.push(Item { last, val, gap: 0 });
        if last < u64::MAX {
            items.push(Item {
                last: u64::MAX,
                val: ptr::null_mut(),
                gap: 0,
            });
        }
        let e = self.take(Kind::Leaf);
        self.fill(e, items.as_slice());
        self.node(e).set_parent(root_parent_word());
        self.publish_root(Some(e));
        self.st.height = 1;
        Ok(())
    }

    /// The level-by-level rebuild described in the module documentation.
    /// `items` holds the new leaf-depth contents of the run
    /// `lp.lv[leaf]..=rp.lv[leaf]`.
    fn rebuild(
        &mut self,
        root: Enode,
        lp: &mut Path,
        rp: &mut Path,
        items: &mut Items,
        mut front: usize,
        mut single: bool,
    ) {
        let h = self.st.height;
        // `items[front..front + fresh]` are the new ones at this depth.
        let mut fresh = 1;
        let mut d = h - 1;
        let mut span_min = lp.lv[d].min;
        let mut span_max = rp.lv[d].max;
        loop {
            let kind = if d == h - 1 {
                Kind::Leaf
            } else {
                Kind::Internal
            };
            let whole = span_min == 0 && span_max == u64::MAX;
            if whole && items.len == 1 {
                let only = items.buf[0];
                if kind == Kind::Internal {
                    // The depth below is a single new node: it becomes the
                    // root (the old levels above collapse).
                    // A child word is never null.
                    let top = Enode::from_word(only.val).unwrap_or_else(|| unreachable!());
                    self.install_root(root, Some(top), h - d - 1);
                    return;
                }
                if only.val.is_null() {
                    // Nothing left: the tree becomes empty.
                    self.install_root(root, None, 0);
                    return;
                }
            }
            if items.len < kind.min_slots() && !whole {
                single = false;
                front += self.pull_neighbour(root, lp, rp, d, items, &mut span_min, &mut span_max);
            }

            let mut new = [NewNode {
                e: Enode::dangling(),
                last: 0,
                gap: 0,
            }; 3];
            let bias = if items.len - front - fresh <= 1 {
                // Appending at the end of the run (ascending inserts):
                // fill the left nodes, leave room on the right.
                Bias::PackLeft
            } else if front <= 1 {
                // Prepending (top-down mmap): the mirror image.
                Bias::PackRight
            } else {
                Bias::Balanced
            };
            let k = self.build_level(kind, items, span_min, bias, &mut new);

            if d == 0 {
                if k == 1 {
                    self.install_root(root, Some(new[0].e), h);
                } else {
                    items.clear();
                    for nn in &new[..k] {
                        items.push(Item {
                            last: nn.last,
                            val: nn.e.word(),
                            gap: nn.gap,
                        });
                    }
                    let r = self.take(Kind::Internal);
                    self.fill(r, items.as_slice());
                    self.adopt(r, items.as_slice());
                    self.install_root(root, Some(r), h + 1);
                }
                return;
            }

            if single && k == 1 {
                if self.dry {
                    return;
                }
                let p = lp.lv[d - 1];
                let nn = new[0];
                self.node(nn.e).set_parent(parent_word(p.node, p.off));
                self.publish_slot(p.node, p.off, nn.e);
                self.update_gaps(lp, d - 1, nn.gap);
                let old = lp.lv[d];
                self.retire_subtree(old.node, old.min, old.max);
                return;
            }

            let (pa, pb) = (lp.lv[d - 1], rp.lv[d - 1]);
            items.clear();
            self.read_items(items, pa, 0, pa.off);
            for nn in &new[..k] {
                items.push(Item {
                    last: nn.last,
                    val: nn.e.word(),
                    gap: nn.gap,
                });
            }
            let pb_end = self.node(pb.node).end(Kind::Internal, pb.max);
            self.read_items(items, pb, pb.off + 1, pb_end + 1);
            single = pa.node == pb.node;
            front = pa.off;
            fresh = k;
            span_min = pa.min;
            span_max = pb.max;
            d -= 1;
        }
    }

    /// Makes an underfull run viable by adding a whole neighbouring node to
    /// it (see the module documentation). Returns how many items it put in
    /// front of the run's (0 if it appended).
    #[allow(clippy::too_many_arguments)]
    fn pull_neighbour(
        &self,
        root: Enode,
        lp: &mut Path,
        rp: &mut Path,
        d: usize,
        items: &mut Items,
        span_min: &mut u64,
        span_max: &mut u64,
    ) -> usize {
        let before = items.len;
        let pl = lp.lv[d - 1];
        if pl.off > 0 {
            let sib = self.child_level(pl, pl.off - 1);
            lp.lv[d - 1].off -= 1;
            lp.lv[d] = sib;
            self.prepend_all(items, sib);
            *span_min = sib.min;
            return items.len - before;
        }
        let pr = rp.lv[d - 1];
        if pr.off < self.node(pr.node).end(Kind::Internal, pr.max) {
            let sib = self.child_level(pr, pr.off + 1);
            rp.lv[d - 1].off += 1;
            rp.lv[d] = sib;
            self.read_all(items, sib);
            *span_max = sib.max;
            return 0;
        }
        // The run covers its parents' children entirely: the neighbour is
        // under the next parent. Re-walk that side of the run to it; the
        // parent depth then starts (or ends) at the neighbour's parent.
        if *span_min > 0 {
            self.walk(lp, root, d, *span_min - 1);
            let sib = lp.lv[d];
            self.prepend_all(items, sib);
            *span_min = sib.min;
            items.len - before
        } else {
            // Not the whole depth, so `span_max < u64::MAX`.
            self.walk(rp, root, d, *span_max + 1);
            let sib = rp.lv[d];
            self.read_all(items, sib);
            *span_max = sib.max;
            0
        }
    }

    /// Builds the new nodes of one depth from `items`; returns how many.
    fn build_level(
        &mut self,
        kind: Kind,
        items: &Items,
        span_min: u64,
        bias: Bias,
        out: &mut [NewNode; 3],
    ) -> usize {
        let n = items.len;
        let k = n.div_ceil(kind.slots());
        assert!((1..=3).contains(&k), "maple: {n} items at one depth");
        let sizes = split_sizes(n, k, kind, bias);
        let mut pos = 0;
        let mut min = span_min;
        for (j, slot) in out.iter_mut().enumerate().take(k) {
            let cnt = sizes[j];
            let chunk = &items.buf[pos..pos + cnt];
            let e = self.take(kind);
            self.fill(e, chunk);
            let gap = match kind {
                Kind::Leaf => leaf_gap(chunk, min),
                Kind::Internal => {
                    self.adopt(e, chunk);
                    chunk.iter().map(|it| it.gap).max().unwrap_or(0)
                }
            };
            let last = chunk[cnt - 1].last;
            *slot = NewNode { e, last, gap };
            min = last.wrapping_add(1);
            pos += cnt;
        }
        k
    }

    /// Publishes a new root (or none), then retires the old tree's
    /// replaced nodes.
    fn install_root(&mut self, old_root: Enode, top: Option<Enode>, height: usize) {
        if self.dry {
            return;
        }
        if let Some(t) = top {
            self.node(t).set_parent(root_parent_word());
        }
        self.publish_root(top);
        self.st.height = height;
        self.retire_subtree(old_root, 0, u64::MAX);
    }

    /// After an in-place publication below `lp.lv[d]`, brings the gap
    /// records on the path up to date (in place, Relaxed: read only under
    /// the writer lock), stopping where they no longer change.
    fn update_gaps(&self, lp: &Path, d: usize, mut gap: u64) {
        let mut d = d;
        loop {
            let lv = lp.lv[d];
            let n = self.node(lv.node);
            if n.gap(lv.off) == gap {
                return;
            }
            n.set_gap(lv.off, gap);
            if d == 0 {
                return;
            }
            let end = n.end(Kind::Internal, lv.max);
            gap = (0..=end).map(|i| n.gap(i)).max().unwrap_or(0);
            d -= 1;
        }
    }

    /// Marks dead and retires `e` (covering `[min, max]`, now unreachable)
    /// and every node below it that no new node adopted.
    fn retire_subtree(&mut self, e: Enode, min: u64, max: u64) {
        if e.kind() == Kind::Internal {
            let n = self.node(e);
            let end = n.end(Kind::Internal, max);
            let mut cmin = min;
            for i in 0..=end {
                let cmax = n.slot_last(Kind::Internal, i, max);
                let c = self.child(e, i);
                // An adopted child's parent word names its new parent.
                if self.node(c).parent().addr() & NODE_MASK == e.addr() {
                    self.retire_subtree(c, cmin, cmax);
                }
                cmin = cmax.wrapping_add(1);
            }
        }
        // After the publication (program order): see `Node::mark_dead`.
        self.node(e).mark_dead();
        self.push_retired(e);
    }
}

/// How to share items between the nodes of a split.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bias {
    Balanced,
    /// As full as possible on the left, the minimum on the right.
    PackLeft,
    PackRight,
}

/// Node sizes for `n` items in `k = ceil(n / capacity)` nodes. Every size
/// is within `[min_slots, slots]`: with `k >= 2`, `n > (k - 1) * slots`.
///
/// Balanced splits leave sequentially filled trees half full; biasing the
/// split towards the side that will not grow keeps them about 70% full.
fn split_sizes(n: usize, k: usize, kind: Kind, bias: Bias) -> [usize; 3] {
    let mut s = [0; 3];
    let spread = |s: &mut [usize], total: usize| {
        let m = s.len();
        for (j, x) in s.iter_mut().enumerate() {
            *x = total / m + usize::from(j < total % m);
        }
    };
    if k == 1 || bias == Bias::Balanced {
        spread(&mut s[..k], n);
        return s;
    }
    let small = (n - (k - 1) * kind.slots()).max(kind.min_slots());
    match bias {
        Bias::PackLeft => {
            spread(&mut s[..k - 1], n - small);
            s[k - 1] = small;
        }
        _ => {
            s[0] = small;
            spread(&mut s[1..k], n - small);
        }
    }
    s
}

/// The largest empty range among leaf items starting at `min`.
fn leaf_gap(items: &[Item], min: u64) -> u64 {
    let mut first = min;
    let mut gap = 0;
    for it in items {
        if it.val.is_null() {
            gap = gap.max((it.last - first).saturating_add(1));
        }
        first = it.last.wrapping_add(1);
    }
    gap
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_stay_within_node_bounds() {
        for kind in [Kind::Leaf, Kind::Internal] {
            for n in 1..=3 * kind.slots() {
                let k = n.div_ceil(kind.slots());
                for bias in [Bias::Balanced, Bias::PackLeft, Bias::PackRight] {
                    let s = split_sizes(n, k, kind, bias);
                    assert_eq!(s.iter().sum::<usize>(), n, "{kind:?} {n} {bias:?} {s:?}");
                    for &x in &s[..k] {
                        assert!(x <= kind.slots(), "{kind:?} {n} {bias:?} {s:?}");
                        if k > 1 {
                            assert!(x >= kind.min_slots(), "{kind:?} {n} {bias:?} {s:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(split_sizes(17, 2, Kind::Leaf, Bias::PackLeft)[..2], [11, 6]);
        assert_eq!(
            split_sizes(17, 2, Kind::Leaf, Bias::PackRight)[..2],
            [6, 11]
        );
        assert_eq!(split_sizes(17, 2, Kind::Leaf, Bias::Balanced)[..2], [9, 8]);
    }
}
