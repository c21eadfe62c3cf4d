//! Where tree nodes come from and how replaced nodes are freed.

use core::ptr::NonNull;

use super::node::Node;
use crate::cpu::CpuId;

/// A source of [`Node`]s and the deferred-free policy for replaced ones.
///
/// The tree allocates all the nodes a write may need before it changes
/// anything (see [`super::MapleWriter::store_range`]), frees never-published
/// spares with [`free_node`](NodeAlloc::free_node), and hands the nodes a
/// write replaced to [`retire`](NodeAlloc::retire) in batches (at most one
/// call per [`RETIRE_BATCH`](super::RETIRE_BATCH) nodes, normally one per
/// write operation).
///
/// # Safety
/// Implementations guarantee that
/// - `alloc_node` returns a 256-byte, 256-aligned block holding an
///   initialised [`Node`] (fresh from [`Node::new`] or one previously given
///   back), owned exclusively by the caller;
/// - a node passed to `retire` stays allocated (is neither freed nor reused)
///   until every [`Guard`](NodeAlloc::Guard) that exists when `retire` is
///   called has been dropped. The tree's lockless readers rely on this: a
///   reader holding a guard may still be reading a retired node.
pub unsafe trait NodeAlloc {
    /// What a lockless reader holds while it may dereference tree nodes:
    /// for RCU-based allocators, an RCU read guard.
    type Guard<'g>;

    /// A node, or `None` when memory is exhausted.
    fn alloc_node(&self, cpu: CpuId) -> Option<NonNull<Node>>;

    /// Frees a node at once.
    ///
    /// # Safety
    /// `node` came from `alloc_node` on this allocator, was never reachable
    /// by a reader, and is not used by the caller afterwards.
    unsafe fn free_node(&self, cpu: CpuId, node: NonNull<Node>);

    /// Frees `nodes` once no reader can still hold them (after an RCU grace
    /// period). One call should cost one deferred callback, whatever
    /// `nodes.len()`. `cpu` is the calling CPU.
    ///
    /// # Safety
    /// Each node came from `alloc_node` on this allocator, is unreachable
    /// from every tree, appears once, and the caller does not touch it
    /// again.
    unsafe fn retire(&self, cpu: CpuId, nodes: &[NonNull<Node>]);
}

/// Lets trees share one allocator, or a test keep it after the tree is gone.
// SAFETY: forwards to `T`, whose guarantees carry over unchanged.
unsafe impl<T: NodeAlloc> NodeAlloc for &T {
    type Guard<'g> = T::Guard<'g>;

    fn alloc_node(&self, cpu: CpuId) -> Option<NonNull<Node>> {
        (**self).alloc_node(cpu)
    }

    unsafe fn free_node(&self, cpu: CpuId, node: NonNull<Node>) {
        // SAFETY: forwarded contract.
        unsafe { (**self).free_node(cpu, node) }
    }

    unsafe fn retire(&self, cpu: CpuId, nodes: &[NonNull<Node>]) {
        // SAFETY: forwarded contract.
        unsafe { (**self).retire(cpu, nodes) }
    }
}

/// Proof that a reader may dereference nodes of a tree whose allocator
/// never frees retired nodes before it is dropped (the host `DeferredFree`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReclaim;

#[cfg(any(test, feature = "std", loom))]
pub use host::*;

#[cfg(any(test, feature = "std", loom))]
mod host {
    extern crate std;
    use std::boxed::Box;
    use std::sync::Arc;
    use std::vec::Vec;

    use super::*;
    use crate::maple::RETIRE_BATCH;
    use crate::rcu::{Rcu, RcuHead, RcuReadGuard};
    use crate::sync::{AtomicUsize, Ordering, SpinLock};

    /// Allocation counters of the host allocators.
    #[derive(Debug, Default)]
    pub struct AllocCounters {
        allocated: AtomicUsize,
        freed: AtomicUsize,
        retired: AtomicUsize,
        batches: AtomicUsize,
    }

    /// A snapshot of [`AllocCounters`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct AllocStats {
        /// Nodes handed out by `alloc_node`.
        pub allocated: usize,
        /// Nodes given back to the system allocator (directly or after a
        /// grace period).
        pub freed: usize,
        /// Nodes passed to `retire`.
        pub retired: usize,
        /// Calls to `retire` (each one deferred callback).
        pub batches: usize,
    }

    impl AllocStats {
        /// Nodes allocated and not yet freed.
        pub fn live(&self) -> usize {
            self.allocated - self.freed
        }
    }

    impl AllocCounters {
        /// Counters are statistics only: Relaxed.
        fn add(c: &AtomicUsize, n: usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }

        pub fn snapshot(&self) -> AllocStats {
            AllocStats {
                allocated: self.allocated.load(Ordering::Relaxed),
                freed: self.freed.load(Ordering::Relaxed),
                retired: self.retired.load(Ordering::Relaxed),
                batches: self.batches.load(Ordering::Relaxed),
            }
        }
    }

    fn box_node() -> NonNull<Node> {
        // `Box` honours `Node`'s 256-byte alignment.
        NonNull::from(Box::leak(Box::new(Node::new())))
    }

    /// # Safety
    /// `n` came from `box_node` and is not used afterwards.
    unsafe fn unbox_node(n: NonNull<Node>) {
        // SAFETY: forwarded contract.
        drop(unsafe { Box::from_raw(n.as_ptr()) });
    }

    /// What an [`RcuNodeAlloc`] shares with its pending RCU callbacks: the
    /// counters and a cache of free nodes (a slab-like free list, so that
    /// steady-state writes do not go to the system allocator).
    pub struct NodePool {
        counters: AllocCounters,
        cache: SpinLock<Vec<NonNull<Node>>>,
    }

    // SAFETY: the cached pointers are free nodes owned by the pool, touched
    // only under its lock or in `drop`.
    unsafe impl Send for NodePool {}
    // SAFETY: as for `Send`.
    unsafe impl Sync for NodePool {}

    impl Default for NodePool {
        fn default() -> Self {
            NodePool {
                counters: AllocCounters::default(),
                cache: SpinLock::new(Vec::new()),
            }
        }
    }

    impl NodePool {
        pub fn snapshot(&self) -> AllocStats {
            self.counters.snapshot()
        }

        /// Takes back nodes no one uses any more.
        ///
        /// # Safety
        /// Each node came from this pool and is unreachable and unused.
        unsafe fn give_back(&self, nodes: impl Iterator<Item = NonNull<Node>>) {
            let mut c = self.cache.lock();
            let before = c.len();
            c.extend(nodes);
            AllocCounters::add(&self.counters.freed, c.len() - before);
        }
    }

    impl Drop for NodePool {
        fn drop(&mut self) {
            for n in self.cache.get_mut().drain(..) {
                // SAFETY: cached nodes are free and ours.
                unsafe { unbox_node(n) }
            }
        }
    }

    /// Host nodes (from a [`NodePool`] over the system allocator); retired
    /// nodes go back to the pool through [`Rcu`], one callback per `retire`
    /// call.
    pub struct RcuNodeAlloc<'r> {
        rcu: &'r Rcu,
        pool: Arc<NodePool>,
    }

    impl<'r> RcuNodeAlloc<'r> {
        /// # Safety
        /// Every [`RcuReadGuard`] used to read a tree that uses this
        /// allocator comes from `rcu` (`RcuReadGuard` does not record its
        /// domain, so this cannot be checked; Samara has one domain).
        pub unsafe fn new(rcu: &'r Rcu) -> Self {
            RcuNodeAlloc {
                rcu,
                pool: Arc::default(),
            }
        }

        /// The pool and its counters, shared with the pending callbacks
        /// (they count the nodes they free even after the allocator is gone).
        pub fn counters(&self) -> Arc<NodePool> {
            self.pool.clone()
        }

        pub fn stats(&self) -> AllocStats {
            self.pool.snapshot()
        }
    }

    /// Retired nodes in flight to an RCU callback: one allocation per batch.
    #[repr(C)]
    struct Batch {
        head: RcuHead,
        pool: Arc<NodePool>,
        len: usize,
        nodes: [NonNull<Node>; RETIRE_BATCH],
    }

    /// The RCU callback of a [`Batch`].
    ///
    /// # Safety
    /// `h` is the head of a leaked `Box<Batch>` queued by `retire`, invoked
    /// once, after a grace period.
    unsafe fn free_batch(h: NonNull<RcuHead>) {
        // SAFETY: `head` is the first field of the `#[repr(C)]` batch.
        let b = unsafe { Box::from_raw(h.cast::<Batch>().as_ptr()) };
        // SAFETY: a grace period has passed since `retire`: no reader holds these nodes, and the tree gave them up.
        unsafe { b.pool.give_back(b.nodes[..b.len].iter().copied()) };
    }

    // SAFETY: nodes are `Box::new(Node::new())` allocations or cached ones;
    // a retired node returns to the cache only in an `Rcu` callback, which
    // runs after a grace period that starts after the `retire` call, i.e.
    // after every read section (every `RcuReadGuard` of this domain, by
    // `new`'s contract) open at the call has ended.
    unsafe impl NodeAlloc for RcuNodeAlloc<'_> {
        type Guard<'g> = RcuReadGuard<'g>;

        fn alloc_node(&self, _cpu: CpuId) -> Option<NonNull<Node>> {
            AllocCounters::add(&self.pool.counters.allocated, 1);
            Some(self.pool.cache.lock().pop().unwrap_or_else(box_node))
        }

        unsafe fn free_node(&self, _cpu: CpuId, node: NonNull<Node>) {
            // SAFETY: the caller gives us a node of ours it no longer uses.
            unsafe { self.pool.give_back(core::iter::once(node)) };
        }

        unsafe fn retire(&self, cpu: CpuId, nodes: &[NonNull<Node>]) {
            AllocCounters::add(&self.pool.counters.retired, nodes.len());
            for chunk in nodes.chunks(RETIRE_BATCH) {
                AllocCounters::add(&self.pool.counters.batches, 1);
                let mut b = Box::new(Batch {
                    head: RcuHead::new(),
                    pool: self.pool.clone(),
                    len: chunk.len(),
                    nodes: [NonNull::dangling(); RETIRE_BATCH],
                });
                b.nodes[..chunk.len()].copy_from_slice(chunk);
                let head = NonNull::from(Box::leak(b)).cast::<RcuHead>();
                // SAFETY: the head is the first field of the leaked batch, not queued elsewhere; `free_batch` reclaims the box once.
                unsafe { self.rcu.call(cpu, head, free_batch) };
            }
        }
    }

    /// Host nodes from the system allocator; retired nodes are kept until
    /// the allocator is dropped. Readers need no RCU ([`NoReclaim`]): for
    /// single-threaded tests, loom models and benchmarks that must not
    /// measure reclamation.
    pub struct DeferredFree {
        retired: SpinLock<Vec<NonNull<Node>>>,
        counters: AllocCounters,
    }

    // SAFETY: the raw pointers in `retired` are nodes owned by the
    // allocator, touched only under the lock or in `drop`.
    unsafe impl Send for DeferredFree {}
    // SAFETY: as for `Send`; all shared state is behind the lock or atomic.
    unsafe impl Sync for DeferredFree {}

    impl Default for DeferredFree {
        fn default() -> Self {
            Self::new()
        }
    }

    impl DeferredFree {
        pub fn new() -> Self {
            DeferredFree {
                retired: SpinLock::new(Vec::new()),
                counters: AllocCounters::default(),
            }
        }

        pub fn stats(&self) -> AllocStats {
            self.counters.snapshot()
        }
    }

    // SAFETY: nodes come from `Box::new(Node::new())`; retired nodes are
    // freed only in `drop`, when no reader can exist: readers reach nodes
    // through a tree that owns or borrows this allocator.
    unsafe impl NodeAlloc for DeferredFree {
        type Guard<'g> = NoReclaim;

        fn alloc_node(&self, _cpu: CpuId) -> Option<NonNull<Node>> {
            AllocCounters::add(&self.counters.allocated, 1);
            Some(box_node())
        }

        unsafe fn free_node(&self, _cpu: CpuId, node: NonNull<Node>) {
            AllocCounters::add(&self.counters.freed, 1);
            // SAFETY: the caller gives us a node of ours it no longer uses.
            unsafe { unbox_node(node) }
        }

        unsafe fn retire(&self, _cpu: CpuId, nodes: &[NonNull<Node>]) {
            AllocCounters::add(&self.counters.retired, nodes.len());
            AllocCounters::add(&self.counters.batches, 1);
            self.retired.lock().extend_from_slice(nodes);
        }
    }

    impl Drop for DeferredFree {
        fn drop(&mut self) {
            for n in self.retired.get_mut().drain(..) {
                // SAFETY: `&mut self`: no tree and no reader uses the allocator any more, and every retired node is ours.
                unsafe { unbox_node(n) }
            }
        }
    }

    /// An allocator that fails after a budget of allocations, for testing
    /// that a store reports out-of-memory before changing anything.
    pub struct FailingAlloc<A> {
        inner: A,
        budget: AtomicUsize,
    }

    impl<A: NodeAlloc> FailingAlloc<A> {
        pub fn new(inner: A, budget: usize) -> Self {
            FailingAlloc {
                inner,
                budget: AtomicUsize::new(budget),
            }
        }

        /// Allows `n` more allocations.
        pub fn set_budget(&self, n: usize) {
            self.budget.store(n, Ordering::Relaxed);
        }

        pub fn inner(&self) -> &A {
            &self.inner
        }
    }

    // SAFETY: forwards to `A`; refusing an allocation breaks nothing.
    unsafe impl<A: NodeAlloc> NodeAlloc for FailingAlloc<A> {
        type Guard<'g> = A::Guard<'g>;

        fn alloc_node(&self, cpu: CpuId) -> Option<NonNull<Node>> {
            // Relaxed: a test knob read by the single writer.
            let b = self.budget.load(Ordering::Relaxed);
            if b == 0 {
                return None;
            }
            self.budget.store(b - 1, Ordering::Relaxed);
            self.inner.alloc_node(cpu)
        }

        unsafe fn free_node(&self, cpu: CpuId, node: NonNull<Node>) {
            // SAFETY: forwarded contract.
            unsafe { self.inner.free_node(cpu, node) }
        }

        unsafe fn retire(&self, cpu: CpuId, nodes: &[NonNull<Node>]) {
            // SAFETY: forwarded contract.
            unsafe { self.inner.retire(cpu, nodes) }
        }
    }
}
