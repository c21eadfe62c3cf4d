//! Maple-tree nodes from the slab, retired through RCU in batches.
//!
//! Nodes are plain slab objects (not type-safe by RCU: a reader may hold a
//! retired node, so a node must not be reused before a grace period; the
//! tree retires whole batches instead). One [`RetireBatch`] object carries
//! up to [`RETIRE_BATCH`] retired nodes through one RCU callback, so a
//! write costs one callback however many nodes it replaced.

use core::mem::offset_of;
use core::ptr::NonNull;

use crate::cpu::CpuId;
use crate::frame::FrameAllocator;
use crate::maple::{Node, NodeAlloc, RETIRE_BATCH};
use crate::rcu::{Rcu, RcuCpu, RcuHead, RcuReadGuard};
use crate::slab::{Ctor, Slab, SlabConfig, SlabError, SlabObject, SlabPtr};
use crate::sync::{AtomicU64, Ordering, SpinLock};

/// The slab object type of maple nodes.
pub enum MapleNodeObj {}

impl SlabObject for MapleNodeObj {
    type Stable = ();
    type Payload = Node;

    fn construct(_: &Ctor<'_>) {}
}

/// Retired nodes waiting for a grace period.
#[repr(C)]
pub struct RetireBatch {
    head: RcuHead,
    nodes: [Option<NonNull<Node>>; RETIRE_BATCH],
    /// The allocator to free to, and the CPU whose caches to use.
    owner: *const SlabNodeAlloc<'static>,
    cpu: CpuId,
}

// SAFETY: the batch is handed from the retiring CPU to whichever CPU runs
// the callback; nothing else touches it meanwhile.
unsafe impl Send for RetireBatch {}
// SAFETY: shared references to a batch give no access to its fields
// outside the single callback.
unsafe impl Sync for RetireBatch {}

/// The slab object type of retire batches.
pub enum RetireBatchObj {}

impl SlabObject for RetireBatchObj {
    type Stable = ();
    type Payload = RetireBatch;

    fn construct(_: &Ctor<'_>) {}
}

/// A [`NodeAlloc`] over two slab caches and the RCU domain.
pub struct SlabNodeAlloc<'a> {
    nodes: Slab<'a, MapleNodeObj>,
    batches: Slab<'a, RetireBatchObj>,
    /// A batch kept for `retire` to use when allocation fails.
    spare: SpinLock<Option<SlabPtr<RetireBatchObj>>>,
    /// Nodes never freed because not even the spare batch was there.
    leaked: AtomicU64,
    rcu: &'a Rcu,
}

impl<'a> SlabNodeAlloc<'a> {
    pub fn new(frames: &'a FrameAllocator, rcu: &'a Rcu) -> Result<Self, SlabError> {
        Ok(SlabNodeAlloc {
            nodes: Slab::new(frames, SlabConfig::new("maple_node"))?,
            batches: Slab::new(frames, SlabConfig::new("maple_retire"))?,
            spare: SpinLock::new(None),
            leaked: AtomicU64::new(0),
            rcu,
        })
    }

    /// Nodes allocated and not freed (tree nodes, reserves, and retired
    /// nodes waiting for a grace period).
    pub fn nodes_live(&self) -> u64 {
        self.nodes.stats().objects_in_use
    }

    pub(crate) fn shrink(&self, cpu: CpuId) {
        self.nodes.shrink(cpu);
        self.batches.shrink(cpu);
    }

    /// Waits for pending batches, then drops the caches.
    pub(crate) fn destroy(self, rcu_cpu: &mut RcuCpu<'_>) {
        rcu_cpu.barrier();
        if let Some(p) = self.spare.lock().take() {
            // SAFETY: the spare was never queued.
            unsafe { self.batches.free_ptr(rcu_cpu.id(), p) };
        }
        drop(self);
    }

    /// Nodes leaked because no batch could be allocated to retire them.
    pub fn leaked_nodes(&self) -> u64 {
        self.leaked.load(Ordering::Relaxed)
    }

    fn free_batch(&self, batch: &RetireBatch) {
        for n in batch.nodes.iter().flatten() {
            // SAFETY: retired nodes came from `alloc_node`, and the grace period that began after they became unreachable is over.
            unsafe { self.nodes.free_ptr(batch.cpu, SlabPtr::from_payload(*n)) };
        }
    }
}

/// The RCU head of a batch, as a pointer `retire_cb` may step back from to
/// the whole batch (and to its slot): derived from the slot's pointer, not
/// from a reference to the head field, whose provenance would cover the
/// head alone (Miri's Stacked Borrows rejects the step back otherwise).
fn head_of(p: SlabPtr<RetireBatchObj>) -> NonNull<RcuHead> {
    let batch = p.payload_raw().as_ptr();
    // SAFETY: `batch` points to an allocated batch; taking a field's address creates no reference, and the field address is non-null.
    unsafe { NonNull::new_unchecked(core::ptr::addr_of_mut!((*batch).head)) }
}

/// The RCU callback of a retire batch.
unsafe fn retire_cb(head: NonNull<RcuHead>) {
    // SAFETY: `head` is the first field of a `repr(C)` `RetireBatch` that `retire` queued; it is ours until we free it.
    let batch = unsafe {
        head.byte_sub(offset_of!(RetireBatch, head))
            .cast::<RetireBatch>()
    };
    // SAFETY: as above; the allocator outlives its callbacks (it waits for them in `destroy`).
    let (b, owner) = unsafe { (batch.as_ref(), &*batch.as_ref().owner) };
    owner.free_batch(b);
    let cpu = b.cpu;
    // SAFETY: the batch came from `owner.batches` and is done with.
    unsafe { owner.batches.free_ptr(cpu, SlabPtr::from_payload(batch)) };
}

// SAFETY: `alloc_node` hands out initialised, exclusively owned, 256-byte
// aligned nodes from the slab; `retire` frees nodes only from an RCU
// callback, after a grace period that starts after the call, so no read
// guard that existed at the call is still open then.
unsafe impl NodeAlloc for SlabNodeAlloc<'_> {
    type Guard<'g> = RcuReadGuard<'g>;

    fn alloc_node(&self, cpu: CpuId) -> Option<NonNull<Node>> {
        // Keep a retire batch in reserve, so that `retire` (which must not
        // fail: the write it follows is done) has one even when memory
        // runs out in between. Failing here fails the write cleanly.
        {
            let mut spare = self.spare.lock();
            if spare.is_none() {
                let b = RetireBatch {
                    head: RcuHead::new(),
                    nodes: [None; RETIRE_BATCH],
                    owner: core::ptr::null(),
                    cpu,
                };
                *spare = Some(self.batches.alloc(cpu, b).ok()?.publish());
            }
        }
        let owned = self.nodes.alloc(cpu, Node::new()).ok()?;
        // The tree owns it from here. A raw pointer with the slot's
        // provenance: `free_node` and `free_batch` turn it back into the
        // slot (`SlabPtr::from_payload`).
        Some(owned.publish().payload_raw())
    }

    unsafe fn free_node(&self, cpu: CpuId, node: NonNull<Node>) {
        // SAFETY: the caller's contract: from `alloc_node`, never published.
        unsafe { self.nodes.free_ptr(cpu, SlabPtr::from_payload(node)) };
    }

    unsafe fn retire(&self, cpu: CpuId, nodes: &[NonNull<Node>]) {
        for chunk in nodes.chunks(RETIRE_BATCH) {
            let mut arr = [None; RETIRE_BATCH];
            for (slot, n) in arr.iter_mut().zip(chunk) {
                *slot = Some(*n);
            }
            let batch = || RetireBatch {
                head: RcuHead::new(),
                nodes: arr,
                owner: (self as *const SlabNodeAlloc<'_>).cast(),
                cpu,
            };
            match self.batches.alloc(cpu, batch()) {
                Ok(owned) => {
                    // SAFETY: the head is not queued; the batch and the allocator live until the callback runs.
                    unsafe { self.rcu.call(cpu, head_of(owned.publish()), retire_cb) };
                }
                Err(_) => match self.spare.lock().take() {
                    Some(p) => {
                        // SAFETY: the spare is ours alone (taken under the lock); fill it in place and queue it.
                        *unsafe { p.payload_mut() } = batch();
                        // SAFETY: as in the `Ok` arm.
                        unsafe { self.rcu.call(cpu, head_of(p), retire_cb) };
                    }
                    None => {
                        // Out of memory twice over: keep the nodes forever
                        // rather than free them under a reader.
                        self.leaked.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        debug_assert!(false, "maple: retired nodes leaked (no memory for a batch)");
                    }
                },
            }
        }
    }
}
