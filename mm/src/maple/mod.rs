//! The maple tree: a B-tree of non-overlapping ranges `[first, last]` of
//! `u64` keys, readable without locks under RCU while one writer at a time
//! changes it by copy-on-write. It indexes an address space's VMAs, and its
//! per-subtree gap records find free address ranges for `mmap`.
//!
//! Modelled on Linux's maple tree (`lib/maple_tree.c`), written afresh.
//!
//! # Shape
//!
//! Every key `0..=u64::MAX` belongs to exactly one *slot* of exactly one
//! leaf; a slot holds an entry or is empty (null). Adjacent empty slots are
//! always merged, also across leaves, so every maximal free range is one
//! slot and the recorded gaps are exact. Nodes are 256 bytes
//! ([`Node`] has the layout): leaves have 16 slots, internal
//! nodes 10 children plus the largest gap under each. All leaves are at the
//! same depth; non-root leaves hold at least [`LEAF_MIN`] slots and non-root
//! internal nodes at least [`INTERNAL_MIN`] children, so the height is at
//! most [`MAX_HEIGHT`] whatever the keys. An empty tree has no node.
//!
//! # Concurrency protocol
//!
//! Writers are serialised by the tree's writer lock ([`MapleTree::write`]);
//! the VMA layer takes it inside its mmap write lock, where it is never
//! contended and costs one atomic exchange and one store. Readers take no
//! lock: they hold a read guard of the allocator's reclamation scheme (for
//! RCU, an [`RcuReadGuard`](crate::rcu::RcuReadGuard)).
//!
//! - **Copy-on-write.** A published node's pivots and entries never change.
//!   A write builds replacement nodes for every node whose contents change,
//!   bottom-up, each fully written with Relaxed stores before it becomes
//!   reachable, then publishes the new subtree with *one* Release store:
//!   into the root, or into the slot of the lowest unchanged ancestor (which
//!   covers the same range, so its pivots stay valid). Readers load the
//!   root and every child pointer with Acquire, pairing with that store, so
//!   they see fully written nodes. A reader therefore sees, for each key,
//!   the entry from before or after the write, never a mix within a node.
//! - **In-place updates of live nodes** are limited to (a) that one child
//!   pointer, (b) gap records on the path above it (Relaxed; used only by
//!   gap searches under the writer lock) and (c) parent words of children
//!   that a new parent adopts (Relaxed; see [`Node`]).
//! - **Dead nodes.** After publishing, the writer marks every replaced node
//!   dead (parent word = own address, Release store) and passes them in
//!   batches to [`NodeAlloc::retire`], which frees them after a grace
//!   period: one batch per [`MapleWriter`] (flushed when it is dropped), or
//!   per [`RETIRE_BATCH`] nodes.
//!   A reader checks the node it just read from (Acquire load of the parent
//!   word) before it acts on what it read; if the node is dead it re-walks
//!   from the root, and by the Release/Acquire pair the re-walk sees the
//!   replacement. The result: a lookup returns an entry that was current at
//!   some point during the call, and iteration never continues from a stale
//!   leaf.
//! - **Preallocation.** A write first computes exactly how many nodes it
//!   will need (1 when one leaf is replaced by one leaf, the common case;
//!   otherwise a dry run of the rebuild counts them, at most
//!   `3 * height + 1`), takes them from the allocator into a per-tree
//!   reserve, and fails with [`MapleError::NoMemory`] before changing
//!   anything if it cannot. Up to 4 spares stay in the reserve for the next
//!   write.

mod alloc;
mod gap;
mod node;
mod read;
mod validate;
mod write;

use core::marker::PhantomData;
use core::num::{NonZeroU64, NonZeroUsize};
use core::ptr::{self, NonNull};

use crate::cpu::CpuId;
use crate::sync::{AtomicPtr, Ordering, SpinLock, SpinLockGuard};

#[cfg(any(test, feature = "std", loom))]
pub use self::alloc::{
    AllocCounters, AllocStats, DeferredFree, FailingAlloc, NodePool, RcuNodeAlloc,
};
pub use self::alloc::{NoReclaim, NodeAlloc};
pub use self::node::{
    Node, INTERNAL_MIN, INTERNAL_SLOTS, LEAF_MIN, LEAF_SLOTS, MAX_HEIGHT, NODE_SIZE,
};
pub use self::read::Iter;
pub use self::validate::{TreeStats, ValidateError, ValidateErrorKind};
pub use self::write::RETIRE_BATCH;

use self::write::{WriteCtx, WriterState};

/// A value the tree can store: a non-zero, pointer-sized word. Zero means
/// "empty" inside the tree. The VMA layer stores VMA pointers; tests store
/// integers.
///
/// Entries are copied: storing over the middle of a range leaves the same
/// entry in the two remaining pieces.
pub trait MapleEntry: Copy {
    fn into_raw(self) -> NonZeroUsize;

    /// # Safety
    /// `raw` was returned by [`into_raw`](MapleEntry::into_raw) on a value
    /// of this type.
    unsafe fn from_raw(raw: NonZeroUsize) -> Self;
}

impl MapleEntry for NonZeroUsize {
    fn into_raw(self) -> NonZeroUsize {
        self
    }

    unsafe fn from_raw(raw: NonZeroUsize) -> Self {
        raw
    }
}

impl MapleEntry for NonZeroU64 {
    fn into_raw(self) -> NonZeroUsize {
        // SAFETY: non-zero, and the cast is lossless (`node.rs` asserts 64-bit words).
        unsafe { NonZeroUsize::new_unchecked(self.get() as usize) }
    }

    unsafe fn from_raw(raw: NonZeroUsize) -> Self {
        // SAFETY: non-zero, and the cast is lossless.
        unsafe { NonZeroU64::new_unchecked(raw.get() as u64) }
    }
}

impl<T> MapleEntry for NonNull<T> {
    fn into_raw(self) -> NonZeroUsize {
        // Exposed so that `from_raw` may give the address its provenance
        // back.
        let _ = self.as_ptr().expose_provenance();
        self.addr()
    }

    unsafe fn from_raw(raw: NonZeroUsize) -> Self {
        let p = ptr::with_exposed_provenance_mut::<T>(raw.get());
        // SAFETY: `raw` is non-zero, so `p` is non-null.
        unsafe { NonNull::new_unchecked(p) }
    }
}

/// Why a tree operation failed. Nothing changed when an error is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapleError {
    /// `first > last`.
    InvalidRange,
    /// A node could not be allocated.
    NoMemory,
    /// [`MapleWriter::insert_range`]: part of the range is occupied.
    Exists,
    /// Gap search: zero size, alignment not a power of two, or `min > max`.
    InvalidArgument,
    /// Gap search: no gap fits.
    NoSpace,
}

/// An entry and the range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapleRange<E> {
    pub first: u64,
    pub last: u64,
    pub entry: E,
}

/// The tree. Shared by reference between the writer and lockless readers.
///
/// ```
/// # use core::num::NonZeroU64;
/// # use mm::maple::{MapleTree, RcuNodeAlloc};
/// # use mm::rcu::Rcu;
/// let v = |x| NonZeroU64::new(x).unwrap();
/// let rcu = Rcu::new();
/// let mut cpu = rcu.register_cpu(0).unwrap();
/// // SAFETY: every read guard used on this tree comes from `rcu`.
/// let tree = MapleTree::new(unsafe { RcuNodeAlloc::new(&rcu) });
/// {
///     // Writers: serialised (in the kernel, under the mmap write lock).
///     let mut w = tree.write(cpu.id());
///     w.store_range(0x7000_0000, 0x7000_ffff, v(1))?;
///     w.store_range(0x7000_4000, 0x7000_4fff, v(2))?; // splits range 1
///     // Top-down placement of 64 KiB below 0x8000_0000.
///     let a = w.find_gap_highest(0x1_0000, 0x1000, 0, 0x7fff_ffff)?;
///     assert_eq!(a, 0x7fff_0000);
/// }
/// {
///     // Readers: lockless, under an RCU read guard.
///     let g = cpu.read_lock();
///     assert_eq!(tree.load(&g, 0x7000_4800), Some(v(2)));
///     let r = tree.next(&g, 0x7000_4800).unwrap();
///     assert_eq!((r.first, r.last, r.entry), (0x7000_5000, 0x7000_ffff, v(1)));
/// }
/// cpu.quiescent_state(); // replaced nodes are freed after grace periods
/// # Ok::<(), mm::maple::MapleError>(())
/// ```
pub struct MapleTree<E: MapleEntry, A: NodeAlloc> {
    /// Encoded root node ([`node::Enode`]) or null when empty. Stored with
    /// Release by the writer (publication); loaded with Acquire by readers.
    root: AtomicPtr<u8>,
    writer: SpinLock<WriterState>,
    alloc: A,
    _entries: PhantomData<E>,
}

impl<E: MapleEntry, A: NodeAlloc> MapleTree<E, A> {
    pub fn new(alloc: A) -> Self {
        MapleTree {
            root: AtomicPtr::new(ptr::null_mut()),
            writer: SpinLock::new(WriterState::new()),
            alloc,
            _entries: PhantomData,
        }
    }

    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Takes the writer lock. `cpu` is the calling CPU; replaced nodes are
    /// queued for freeing on it.
    ///
    /// Callers serialise writers with their own lock (the mmap write lock),
    /// so this never spins there; the tree's own lock makes a second,
    /// unserialised writer wait instead of corrupting the tree.
    pub fn write(&self, cpu: CpuId) -> MapleWriter<'_, E, A> {
        MapleWriter {
            tree: self,
            st: self.writer.lock(),
            cpu,
        }
    }

    /// [`write`](Self::write) if the writer lock is free.
    pub fn try_write(&self, cpu: CpuId) -> Option<MapleWriter<'_, E, A>> {
        self.writer.try_lock().map(|st| MapleWriter {
            tree: self,
            st,
            cpu,
        })
    }

    /// The entry containing `index`.
    pub fn load(&self, _guard: &A::Guard<'_>, index: u64) -> Option<E> {
        self.load_range(_guard, index).map(|r| r.entry)
    }

    /// The entry containing `index`, with its range.
    pub fn load_range(&self, _guard: &A::Guard<'_>, index: u64) -> Option<MapleRange<E>> {
        // SAFETY: the guard keeps every node reachable during the call allocated (`NodeAlloc` contract).
        unsafe { read::load_range(&self.root, index) }
    }

    /// The first entry intersecting `[index, max]`: the one containing
    /// `index`, else the next one if it starts at or before `max`
    /// (Linux `mt_find`; the VMA layer's `find_vma`).
    pub fn find(&self, _guard: &A::Guard<'_>, index: u64, max: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::find(&self.root, index, max) }
    }

    /// The last entry intersecting `[min, index]`.
    pub fn find_rev(&self, _guard: &A::Guard<'_>, index: u64, min: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::find_rev(&self.root, index, min) }
    }

    /// The first entry that starts after `index`.
    pub fn next(&self, _guard: &A::Guard<'_>, index: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::next(&self.root, index) }
    }

    /// The last entry that ends before `index`.
    pub fn prev(&self, _guard: &A::Guard<'_>, index: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::prev(&self.root, index) }
    }

    /// The entries intersecting `[first, last]`, in order.
    pub fn iter<'a>(&'a self, _guard: &'a A::Guard<'_>, first: u64, last: u64) -> Iter<'a, E> {
        // SAFETY: the iterator borrows the guard, which keeps every node it reaches allocated.
        unsafe { Iter::new(&self.root, first, last) }
    }
}

impl<E: MapleEntry, A: NodeAlloc> Drop for MapleTree<E, A> {
    fn drop(&mut self) {
        let root = self.root.load(Ordering::Relaxed);
        let st = self.writer.get_mut();
        // SAFETY: `&mut self`: no reader or writer exists, so every node is ours to free at once. (Any CPU's cache is a correct place to free to; the allocator's per-CPU caches are locked.)
        unsafe { st.destroy(&self.alloc, 0, root) };
    }
}

/// The writer: exclusive access to modify the tree (see
/// [`MapleTree::write`]). It also reads without an RCU guard: while it is
/// held, no node reachable from the root can be retired.
pub struct MapleWriter<'t, E: MapleEntry, A: NodeAlloc> {
    tree: &'t MapleTree<E, A>,
    st: SpinLockGuard<'t, WriterState>,
    cpu: CpuId,
}

impl<E: MapleEntry, A: NodeAlloc> MapleWriter<'_, E, A> {
    fn ctx(&mut self) -> WriteCtx<'_, A> {
        WriteCtx {
            root: &self.tree.root,
            st: &mut self.st,
            alloc: &self.tree.alloc,
            cpu: self.cpu,
            dry: false,
            planned: 0,
        }
    }

    /// Stores `entry` over `[first, last]`, truncating or splitting the
    /// ranges it overlaps and replacing those it covers.
    pub fn store_range(&mut self, first: u64, last: u64, entry: E) -> Result<(), MapleError> {
        let raw = ptr::without_provenance_mut(entry.into_raw().get());
        self.ctx().store(first, last, raw)
    }

    /// Stores `entry` over `[first, last]` if no entry intersects it.
    pub fn insert_range(&mut self, first: u64, last: u64, entry: E) -> Result<(), MapleError> {
        if first > last {
            return Err(MapleError::InvalidRange);
        }
        if self.find(first, last).is_some() {
            return Err(MapleError::Exists);
        }
        self.store_range(first, last, entry)
    }

    /// Empties `[first, last]`, truncating or splitting what it overlaps.
    pub fn erase_range(&mut self, first: u64, last: u64) -> Result<(), MapleError> {
        self.ctx().store(first, last, ptr::null_mut())
    }

    /// Removes the entry containing `index`, returning it.
    pub fn erase(&mut self, index: u64) -> Result<Option<MapleRange<E>>, MapleError> {
        let Some(r) = self.load_range(index) else {
            return Ok(None);
        };
        self.erase_range(r.first, r.last)?;
        Ok(Some(r))
    }

    pub fn load(&self, index: u64) -> Option<E> {
        self.load_range(index).map(|r| r.entry)
    }

    pub fn load_range(&self, index: u64) -> Option<MapleRange<E>> {
        // SAFETY: the writer lock is held: nothing reachable can be retired.
        unsafe { read::load_range(&self.tree.root, index) }
    }

    pub fn find(&self, index: u64, max: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::find(&self.tree.root, index, max) }
    }

    pub fn find_rev(&self, index: u64, min: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::find_rev(&self.tree.root, index, min) }
    }

    pub fn next(&self, index: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::next(&self.tree.root, index) }
    }

    pub fn prev(&self, index: u64) -> Option<MapleRange<E>> {
        // SAFETY: as in `load_range`.
        unsafe { read::prev(&self.tree.root, index) }
    }

    pub fn iter(&self, first: u64, last: u64) -> Iter<'_, E> {
        // SAFETY: the iterator borrows the writer, so no write (and no retirement) happens while it lives.
        unsafe { Iter::new(&self.tree.root, first, last) }
    }

    /// The lowest `a` with `a % align == 0` such that `[a, a + size - 1]`
    /// lies in `[min, max]` and is entirely empty (bottom-up `mmap`).
    ///
    /// Descends only into subtrees whose recorded gap is at least `size`:
    /// O(height) unless alignment or the bounds reject gaps that are large
    /// enough, which costs one more descent per rejected subtree.
    pub fn find_gap_lowest(
        &self,
        size: u64,
        align: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, MapleError> {
        gap::check_args(size, align, min, max)?;
        // SAFETY: the writer lock is held; gaps are exact under it.
        unsafe { gap::lowest(&self.tree.root, size, align, min, max) }.ok_or(MapleError::NoSpace)
    }

    /// The highest such `a` (top-down `mmap`).
    pub fn find_gap_highest(
        &self,
        size: u64,
        align: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, MapleError> {
        gap::check_args(size, align, min, max)?;
        // SAFETY: as in `find_gap_lowest`.
        unsafe { gap::highest(&self.tree.root, size, align, min, max) }.ok_or(MapleError::NoSpace)
    }

    /// Checks every structural invariant; returns the tree's statistics.
    pub fn validate(&self) -> Result<TreeStats, ValidateError> {
        // SAFETY: the writer lock is held.
        unsafe { validate::validate(&self.tree.root, self.st.height) }
    }

    /// Calls `f(min, max)` with the key range of every node at `depth`
    /// (0 = root), in order: for tests that aim at node boundaries.
    pub fn for_each_node_range(&self, depth: usize, mut f: impl FnMut(u64, u64)) {
        // SAFETY: the writer lock is held.
        unsafe { validate::node_ranges(&self.tree.root, depth, &mut f) };
    }

    /// Current height (0 when empty).
    pub fn height(&self) -> usize {
        self.st.height
    }

    /// Spare nodes held for the next write.
    pub fn reserved_nodes(&self) -> usize {
        self.st.reserved()
    }

    /// Gives the spare nodes back to the allocator.
    pub fn shrink_reserve(&mut self) {
        let tree = self.tree;
        self.st.shrink_reserve(&tree.alloc, self.cpu, 0);
    }

    /// Loom only: fill new nodes *after* publishing them, the bug the loom
    /// model must catch.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn inject_publish_before_fill(&mut self, on: bool) {
        self.st.publish_before_fill = on;
    }
}

impl<E: MapleEntry, A: NodeAlloc> Drop for MapleWriter<'_, E, A> {
    /// Queues the nodes retired by this writer's operations for freeing
    /// (one [`NodeAlloc::retire`] call), then releases the writer lock.
    fn drop(&mut self) {
        self.ctx().flush_retired();
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
