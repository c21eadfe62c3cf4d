//! Node layout and the encodings of node pointers and parent words.

use core::ptr::{self, NonNull};

use crate::sync::{AtomicPtr, Ordering};

/// Bytes per node (and its alignment).
pub const NODE_SIZE: usize = 256;
/// Slots (ranges) per leaf.
pub const LEAF_SLOTS: usize = 16;
/// Slots (children) per internal node.
pub const INTERNAL_SLOTS: usize = 10;
/// Fewest slots a non-root leaf holds (Linux: `mt_min_slots[maple_leaf_64]`).
pub const LEAF_MIN: usize = 6;
/// Fewest children a non-root internal node holds (Linux:
/// `mt_min_slots[maple_arange_64]`).
pub const INTERNAL_MIN: usize = 4;
/// Bound on the tree height, from the key width. Each of the at most 2^64
/// keys belongs to one slot, non-root leaves hold >= 6 slots, non-root
/// internal nodes >= 4 children and an internal root >= 2, so a tree of
/// height `h` has at least `2 * 4^(h-2)` leaves and at most `2^64 / 6`:
/// `h <= 32`. One more level exists transiently while the root splits.
pub const MAX_HEIGHT: usize = 33;

const LEAF_PIVOTS: usize = LEAF_SLOTS - 1;
const INTERNAL_PIVOTS: usize = INTERNAL_SLOTS - 1;
const WORDS: usize = NODE_SIZE / 8 - 1;
const GAP_BASE: usize = INTERNAL_PIVOTS + INTERNAL_SLOTS;

const _: () = assert!(
    usize::BITS == 64,
    "the maple tree stores u64 keys in pointer-sized words"
);
const _: () = assert!(LEAF_PIVOTS + LEAF_SLOTS == WORDS);
const _: () = assert!(GAP_BASE + INTERNAL_SLOTS <= WORDS);
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Node>() == NODE_SIZE);
const _: () = assert!(core::mem::align_of::<Node>() == NODE_SIZE);

/// Low bits of a node address that encode other things (nodes are
/// `NODE_SIZE`-aligned).
pub(crate) const NODE_MASK: usize = !(NODE_SIZE - 1);
const TAG_LEAF: usize = 1;
const TAG_INTERNAL: usize = 2;
/// Low bits of a parent word: the slot in the parent (< 16).
const PARENT_SLOT_MASK: usize = 0x0f;
/// The parent word of the root node: no address, this flag.
pub(crate) const ROOT_PARENT: usize = 0x10;

/// One tree node: 256 bytes, cache-aligned. Opaque outside the tree; it is
/// public so that node allocators ([`super::NodeAlloc`]) can hold it.
///
/// Every node is one 256-byte, 256-aligned block of 32 machine words, all of
/// them atomics so that a lockless reader racing with the writer performs
/// only defined (atomic) accesses:
///
/// ```text
///          word 0    words 1..=15      words 16..=31
/// leaf     parent    pivot[0..15]      slot[0..16]   (entries)
///
///          word 0    words 1..=9       words 10..=19     words 20..=29   30..=31
/// internal parent    pivot[0..9]       slot[0..10]       gap[0..10]      unused
///                                      (child pointers)
/// ```
///
/// A node covers the key range `[min, max]` given by its parent (the root
/// covers `[0, u64::MAX]`); neither bound is stored. Slot `i` covers
/// `[pivot[i-1] + 1, pivot[i]]`, slot 0 starting at `min`. The last used
/// slot, `end`, ends at `max`: if the node is not full, `pivot[end] == max`
/// is stored and terminates it (pivots beyond are stale and never read); a
/// full node has no pivot for its last slot. So `end` is the first `i` with
/// `pivot[i] == max`, and a lookup of `index` is "first `i` with
/// `pivot[i] >= index`", which never runs past `end`. This is Linux's
/// `maple_range_64` / `maple_arange_64` convention for 64-bit keys.
///
/// `gap[i]` (internal nodes only) is the size of the largest empty range in
/// the subtree under `slot[i]`.
///
/// Node pointers stored in `slot[]` of internal nodes and in the tree root
/// carry the child's kind in their low bits. The parent word of
/// a node holds the parent's address and, in its low bits, the slot of the
/// parent that points here; the root has a marker with no address; a *dead* node
/// (replaced, unreachable from the root, waiting for a grace period) has its
/// own address, as Linux marks dead nodes.
#[repr(C, align(256))]
pub struct Node {
    parent: AtomicPtr<u8>,
    w: [AtomicPtr<u8>; WORDS],
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    /// A node with every word zero. Allocators may hand out such a node or
    /// one previously freed: the tree writes every word it later reads.
    pub fn new() -> Self {
        Node {
            parent: AtomicPtr::new(ptr::null_mut()),
            w: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }
}

/// The two kinds of node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Leaf,
    Internal,
}

impl Kind {
    #[inline(always)]
    pub(crate) const fn pivots(self) -> usize {
        match self {
            Kind::Leaf => LEAF_PIVOTS,
            Kind::Internal => INTERNAL_PIVOTS,
        }
    }

    #[inline(always)]
    pub(crate) const fn slots(self) -> usize {
        match self {
            Kind::Leaf => LEAF_SLOTS,
            Kind::Internal => INTERNAL_SLOTS,
        }
    }

    #[inline(always)]
    pub(crate) const fn min_slots(self) -> usize {
        match self {
            Kind::Leaf => LEAF_MIN,
            Kind::Internal => INTERNAL_MIN,
        }
    }

    #[inline(always)]
    const fn slot_base(self) -> usize {
        self.pivots()
    }
}

/// An encoded node pointer: the node's address with its [`Kind`] in the low
/// bits. Keeps the pointer's provenance (no integer round trip).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Enode(*mut u8);

impl Enode {
    #[inline(always)]
    pub(crate) fn new(n: NonNull<Node>, kind: Kind) -> Self {
        let tag = match kind {
            Kind::Leaf => TAG_LEAF,
            Kind::Internal => TAG_INTERNAL,
        };
        Enode(n.as_ptr().cast::<u8>().map_addr(|a| a | tag))
    }

    /// A placeholder that is never dereferenced.
    #[inline(always)]
    pub(crate) const fn dangling() -> Self {
        Enode(ptr::null_mut())
    }

    /// A non-null stand-in for a node a planning pass would create; never
    /// dereferenced.
    #[inline(always)]
    pub(crate) fn placeholder(kind: Kind) -> Self {
        let tag = match kind {
            Kind::Leaf => TAG_LEAF,
            Kind::Internal => TAG_INTERNAL,
        };
        Enode(ptr::without_provenance_mut(NODE_SIZE | tag))
    }

    /// Decodes a root or internal-slot word; `None` for null.
    #[inline(always)]
    pub(crate) fn from_word(w: *mut u8) -> Option<Self> {
        (!w.is_null()).then_some(Enode(w))
    }

    #[inline(always)]
    pub(crate) fn word(self) -> *mut u8 {
        self.0
    }

    #[inline(always)]
    pub(crate) fn kind(self) -> Kind {
        if self.0.addr() & TAG_LEAF != 0 {
            Kind::Leaf
        } else {
            Kind::Internal
        }
    }

    #[inline(always)]
    pub(crate) fn ptr(self) -> *mut Node {
        self.0.map_addr(|a| a & NODE_MASK).cast()
    }

    /// The node's address (no tag).
    #[inline(always)]
    pub(crate) fn addr(self) -> usize {
        self.0.addr() & NODE_MASK
    }

    /// # Safety
    /// The node must stay allocated for `'a`: it is reachable from the root
    /// under a read guard or the writer lock, or it is one the writer took
    /// from its reserve or retired during the current operation.
    #[inline(always)]
    pub(crate) unsafe fn node<'a>(self) -> &'a Node {
        // SAFETY: forwarded contract; nodes are always initialised `Node`s.
        unsafe { &*self.ptr() }
    }
}

/// The parent word of a node in slot `slot` of `parent`.
#[inline(always)]
pub(crate) fn parent_word(parent: Enode, slot: usize) -> *mut u8 {
    debug_assert!(slot <= PARENT_SLOT_MASK);
    parent.ptr().cast::<u8>().map_addr(|a| a | slot)
}

#[inline(always)]
pub(crate) fn root_parent_word() -> *mut u8 {
    ptr::without_provenance_mut(ROOT_PARENT)
}

#[inline(always)]
fn int_word(v: u64) -> *mut u8 {
    ptr::without_provenance_mut(v as usize)
}

impl Node {
    /// Pivot `i`. Relaxed: pivots are written only before the node is
    /// published (Release) and the reader reached the node through an
    /// Acquire load of the pointer to it, so it sees the published values.
    #[inline(always)]
    pub(crate) fn pivot(&self, i: usize) -> u64 {
        self.w[i].load(Ordering::Relaxed).addr() as u64
    }

    /// Writer only, on a node not yet published.
    #[inline(always)]
    pub(crate) fn set_pivot(&self, i: usize, v: u64) {
        self.w[i].store(int_word(v), Ordering::Relaxed);
    }

    #[inline(always)]
    pub(crate) fn slot(&self, kind: Kind, i: usize, order: Ordering) -> *mut u8 {
        self.w[kind.slot_base() + i].load(order)
    }

    #[inline(always)]
    pub(crate) fn set_slot(&self, kind: Kind, i: usize, v: *mut u8, order: Ordering) {
        self.w[kind.slot_base() + i].store(v, order);
    }

    /// Largest gap under child `i` of an internal node. Gaps are updated in
    /// place by the writer (Relaxed) and are exact only under the writer
    /// lock; lockless readers never rely on them.
    #[inline(always)]
    pub(crate) fn gap(&self, i: usize) -> u64 {
        self.w[GAP_BASE + i].load(Ordering::Relaxed).addr() as u64
    }

    #[inline(always)]
    pub(crate) fn set_gap(&self, i: usize, g: u64) {
        self.w[GAP_BASE + i].store(int_word(g), Ordering::Relaxed);
    }

    #[inline(always)]
    pub(crate) fn parent(&self) -> *mut u8 {
        self.parent.load(Ordering::Relaxed)
    }

    /// Writer only. Relaxed: the parent word of a published node changes
    /// only from one live parent to another (adoption by a replacement
    /// parent), which readers cannot tell apart from the old value: both
    /// mean "not dead". New nodes get theirs before being published.
    #[inline(always)]
    pub(crate) fn set_parent(&self, p: *mut u8) {
        self.parent.store(p, Ordering::Relaxed);
    }

    /// Whether the writer has replaced this node: the reader's data may be
    /// stale and it must re-walk from the root.
    ///
    /// Acquire pairs with the Release store in [`Node::mark_dead`], which
    /// the writer issues after publishing the replacement: a reader that
    /// sees "dead" therefore also sees the replacement when it re-walks, so
    /// the re-walk makes progress. The contents the reader read before this
    /// check need no ordering against it (Linux's `ma_dead_node` issues an
    /// `smp_rmb` because Linux rewrites dead nodes' memory for its
    /// `rcu_head` and modifies some live nodes in place): here a node's
    /// pivots and entries never change after publication, and a dead node is
    /// never written again before it is freed after a grace period.
    #[inline(always)]
    pub(crate) fn is_dead(&self) -> bool {
        let p = self.parent.load(Ordering::Acquire);
        p.addr() & NODE_MASK == ptr::from_ref(self).addr()
    }

    /// Marks a replaced node dead (parent word = own address). Called only
    /// after the replacement is published. Release pairs with the Acquire
    /// load in [`Node::is_dead`].
    #[inline(always)]
    pub(crate) fn mark_dead(&self) {
        let me = ptr::from_ref(self).cast::<u8>().cast_mut();
        self.parent.store(me, Ordering::Release);
    }

    /// The slot that holds `index`, for a node covering it.
    #[inline(always)]
    pub(crate) fn find_slot(&self, kind: Kind, index: u64) -> usize {
        let pivots = kind.pivots();
        let mut i = 0;
        while i < pivots && self.pivot(i) < index {
            i += 1;
        }
        i
    }

    /// The last used slot of a node whose range ends at `max`.
    #[inline(always)]
    pub(crate) fn end(&self, kind: Kind, max: u64) -> usize {
        let pivots = kind.pivots();
        let mut i = 0;
        while i < pivots && self.pivot(i) < max {
            i += 1;
        }
        i
    }

    /// First key of slot `i` of a node starting at `min`. Wrapping only
    /// matters for a torn read, which the caller's dead check or the
    /// writer's invariants rule out.
    #[inline(always)]
    pub(crate) fn slot_first(&self, i: usize, min: u64) -> u64 {
        if i == 0 {
            min
        } else {
            self.pivot(i - 1).wrapping_add(1)
        }
    }

    /// Last key of slot `i <= end` of a node ending at `max`.
    #[inline(always)]
    pub(crate) fn slot_last(&self, kind: Kind, i: usize, max: u64) -> u64 {
        if i < kind.pivots() {
            self.pivot(i)
        } else {
            max
        }
    }
}
