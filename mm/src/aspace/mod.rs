//! Address spaces: the VMA tree, the mmap lock, the page table, and the
//! operations a kernel offers user programs on them (mmap, munmap,
//! mprotect, brk, fork, exit) plus the page-fault handler.
//!
//! # Objects
//!
//! - [`MmContext`]: one per system. The frame allocator, the RCU domain,
//!   the slab caches (VMAs type-safe by RCU; anon_vmas, anon_vma chains,
//!   shared-memory objects, maple-tree nodes), the TLB-flush hook the arch
//!   layer implements, the fault counters, and the per-VMA-lock switch.
//! - [`AddressSpace`]: one per process (threads share it). Its mmap lock
//!   ([`MmapLock`]: a reader/writer lock plus the write sequence that
//!   per-VMA locks compare against), its maple tree of VMAs (readable under
//!   RCU), its page table, and the anon lock.
//!
//! # Locking
//!
//! Lock order: mmap lock → VMA write locks (taken under the mmap write
//! lock; they wait only for readers, who wait for nothing) → the maple
//! tree's writer lock (always uncontended: taken under the mmap write lock)
//! → the anon lock → an anon_vma root lock. A fault holds either a VMA
//! read lock (taken without the mmap lock, see [`lock_vma_under_rcu`]) or
//! the mmap read lock; page-table entries are installed lock-free.
//!
//! Every operation that changes a VMA write-locks it first and holds the
//! mmap write lock; dropping the mmap write lock unlocks all of them at once
//! (see [`crate::vma::lock`]).
//!
//! [`lock_vma_under_rcu`]: crate::vma::lock::lock_vma_under_rcu

mod fault;
mod fork;
mod map;
mod nodes;
mod shm;
mod user;

use core::fmt;

pub use self::fault::{Access, FaultError, SegvKind};
pub use self::map::{MapFlags, MAX_MAP_COUNT, PROT_EXEC, PROT_READ, PROT_WRITE};
pub use self::nodes::{MapleNodeObj, RetireBatchObj, SlabNodeAlloc};
use self::shm::ShmObj;
use crate::addr::{Frame, PAGE_SIZE};
use crate::cpu::CpuId;
use crate::frame::FrameAllocator;
use crate::maple::MapleTree;
use crate::pgtable::{PageTable, PgTableError, PteFormat, TlbFlush, TlbGather};
use crate::rcu::{Rcu, RcuCpu};
use crate::slab::{Slab, SlabConfig, SlabError, SlabStats};
use crate::sync::{AtomicBool, AtomicU64, Ordering, SpinLock};
use crate::vma::anon::{AnonSlabs, AnonVmaObj, AvcObj};
use crate::vma::lock::{MmId, MmapLock, VmaLockCounts, VmaLockStats};
use crate::vma::{VmaObj, VmaRef};

const PAGE: u64 = PAGE_SIZE as u64;

/// Error numbers of the memory syscalls (Linux's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Errno {
    /// Out of memory, or the range is outside the user address space or
    /// not (fully) mapped.
    NoMem = 12,
    /// A bad user pointer.
    Fault = 14,
    /// `MAP_FIXED_NOREPLACE` over an existing mapping.
    Exist = 17,
    /// A malformed argument: unaligned address, zero length, bad flags.
    Inval = 22,
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Errno::NoMem => "ENOMEM",
            Errno::Fault => "EFAULT",
            Errno::Exist => "EEXIST",
            Errno::Inval => "EINVAL",
        })
    }
}

impl From<SlabError> for Errno {
    fn from(_: SlabError) -> Self {
        Errno::NoMem
    }
}

impl From<PgTableError> for Errno {
    fn from(e: PgTableError) -> Self {
        match e {
            PgTableError::OutOfMemory => Errno::NoMem,
            _ => Errno::Inval,
        }
    }
}

/// Where things go in a user address space.
#[derive(Debug, Clone, Copy)]
pub struct UserLayout {
    /// Lowest address `mmap` hands out (Linux's `mmap_min_addr`).
    pub min_addr: u64,
    /// End of the user address space (exclusive). The page below the
    /// hardware limit stays unmapped (x86's SYSRET hazard).
    pub va_end: u64,
    /// Top of the area top-down `mmap` allocates from (below the stack).
    pub mmap_base: u64,
    /// How far a stack may grow.
    pub stack_max: u64,
    /// Unmapped gap kept below a stack when it grows.
    pub stack_guard: u64,
}

impl UserLayout {
    /// The default layout for page-table format `F`: the top 1/16 of the
    /// user space (at most 1 GiB) is left to the stack.
    pub fn for_format<F: PteFormat>() -> Self {
        let va_end = F::USER_VA_END - PAGE;
        let stack_area = (va_end / 16).min(1 << 30);
        UserLayout {
            min_addr: 0x10000,
            va_end,
            mmap_base: va_end - stack_area,
            stack_max: 8 << 20,
            stack_guard: 256 * PAGE,
        }
    }
}

/// Everything address spaces share: one per system.
pub struct MmContext<'a, F: PteFormat> {
    pub(crate) frames: &'a FrameAllocator,
    pub(crate) rcu: &'a Rcu,
    pub(crate) tlb: &'a (dyn TlbFlush + Sync),
    pub(crate) vmas: Slab<'a, VmaObj>,
    pub(crate) anon: AnonSlabs<'a>,
    pub(crate) shms: Slab<'a, ShmObj<'a>>,
    pub(crate) nodes: SlabNodeAlloc<'a>,
    pub(crate) stats: VmaLockStats,
    pub(crate) layout: UserLayout,
    per_vma_lock: AtomicBool,
    next_id: AtomicU64,
    live_mms: AtomicU64,
    _format: core::marker::PhantomData<F>,
}

impl<'a, F: PteFormat> MmContext<'a, F> {
    /// Sets up the caches.
    ///
    /// # Safety
    /// Every RCU callback queued on `rcu` must have run before the context
    /// is dropped: call [`MmContext::destroy`] (or never drop it, as a
    /// kernel does).
    pub unsafe fn new(
        frames: &'a FrameAllocator,
        rcu: &'a Rcu,
        tlb: &'a (dyn TlbFlush + Sync),
        layout: UserLayout,
    ) -> Result<Self, SlabError> {
        // SAFETY: the caller's contract covers the type-safe-by-RCU slabs.
        let vmas = unsafe { Slab::new_typesafe_by_rcu(frames, rcu, SlabConfig::new("vma")) }?;
        Ok(MmContext {
            frames,
            rcu,
            tlb,
            vmas,
            anon: AnonSlabs {
                anon_vmas: Slab::<AnonVmaObj>::new(frames, SlabConfig::new("anon_vma"))?,
                avcs: Slab::<AvcObj>::new(frames, SlabConfig::new("anon_vma_chain"))?,
            },
            shms: Slab::new(frames, SlabConfig::new("shm"))?,
            nodes: SlabNodeAlloc::new(frames, rcu)?,
            stats: VmaLockStats::new(),
            layout,
            per_vma_lock: AtomicBool::new(cfg!(feature = "per-vma-lock")),
            next_id: AtomicU64::new(1),
            live_mms: AtomicU64::new(0),
            _format: core::marker::PhantomData,
        })
    }

    /// Turns per-VMA locking on the fault path on or off at run time (the
    /// boot option). Without the `per-vma-lock` feature it stays off and
    /// this returns `false`.
    pub fn set_per_vma_lock(&self, on: bool) -> bool {
        let on = on && cfg!(feature = "per-vma-lock");
        self.per_vma_lock.store(on, Ordering::Relaxed);
        on
    }

    #[inline]
    pub fn per_vma_lock(&self) -> bool {
        cfg!(feature = "per-vma-lock") && self.per_vma_lock.load(Ordering::Relaxed)
    }

    pub fn frames(&self) -> &'a FrameAllocator {
        self.frames
    }

    pub fn rcu(&self) -> &'a Rcu {
        self.rcu
    }

    pub fn layout(&self) -> &UserLayout {
        &self.layout
    }

    /// The fault counters, summed over CPUs.
    pub fn fault_counts(&self) -> VmaLockCounts {
        self.stats.snapshot()
    }

    /// The fault counters of one CPU.
    pub fn fault_counts_cpu(&self, cpu: CpuId) -> VmaLockCounts {
        self.stats.snapshot_cpu(cpu)
    }

    /// VMAs allocated and not freed, over all address spaces.
    pub fn vmas_live(&self) -> u64 {
        self.vmas.stats().objects_in_use
    }

    /// The VMA cache's accounting: allocations, frees, and the RCU
    /// callbacks it issued (one per slab page released, none per VMA).
    pub fn vma_cache_stats(&self) -> SlabStats {
        self.vmas.stats()
    }

    /// Address spaces created and not yet exited.
    pub fn mms_live(&self) -> u64 {
        self.live_mms.load(Ordering::Relaxed)
    }

    /// Anon_vmas, anon_vma chains and shared-memory objects allocated and
    /// not freed (for leak checks).
    pub fn anon_objects_live(&self) -> (u64, u64, u64) {
        (
            self.anon.anon_vmas.stats().objects_in_use,
            self.anon.avcs.stats().objects_in_use,
            self.shms.stats().objects_in_use,
        )
    }

    /// Returns the caches' empty pages to the frame allocator (through RCU
    /// where the cache demands it), e.g. before comparing free-frame
    /// counts. `cpu` is the calling CPU.
    pub fn shrink(&self, cpu: CpuId) {
        self.vmas.shrink(cpu);
        self.anon.anon_vmas.shrink(cpu);
        self.anon.avcs.shrink(cpu);
        self.shms.shrink(cpu);
        self.nodes.shrink(cpu);
    }

    /// Tears the caches down, waiting for their RCU callbacks. Every
    /// address space must have exited.
    pub fn destroy(self, rcu_cpu: &mut RcuCpu<'_>) {
        assert_eq!(
            self.mms_live(),
            0,
            "MmContext destroyed with live address spaces"
        );
        rcu_cpu.barrier();
        self.nodes.destroy(rcu_cpu);
        self.vmas.destroy(rcu_cpu);
        self.anon.avcs.destroy(rcu_cpu);
        self.anon.anon_vmas.destroy(rcu_cpu);
        self.shms.destroy(rcu_cpu);
    }

    /// Drops one mapping's hold on `frame`: its map count and reference
    /// (freeing it with the last reference). The release callback of every
    /// gather an address space makes.
    pub(crate) fn release_frame(&self, cpu: CpuId, frame: Frame) {
        if let Some(m) = self.frames.meta(frame) {
            m.dec_map_count();
        }
        // SAFETY: each mapping of `frame` held one reference, taken when it was installed; this drops that one.
        unsafe { self.frames.put(cpu, frame, 0) };
    }
}

/// One process's address space.
pub struct AddressSpace<'a, F: PteFormat> {
    pub(crate) ctx: &'a MmContext<'a, F>,
    id: MmId,
    pub(crate) mmap: MmapLock,
    pub(crate) tree: MapleTree<VmaRef, &'a SlabNodeAlloc<'a>>,
    pub(crate) pt: PageTable<'a, F>,
    /// Protects the VMAs' anon_vma chain lists and `anon_vma` pointers
    /// (Linux uses the mmap lock plus `page_table_lock` for the same).
    pub(crate) anon_lock: SpinLock<()>,
    /// `brk` state, changed under the mmap write lock.
    start_brk: AtomicU64,
    brk: AtomicU64,
    nr_vmas: AtomicU64,
}

impl<'a, F: PteFormat> AddressSpace<'a, F> {
    /// An empty address space.
    pub fn new(ctx: &'a MmContext<'a, F>, cpu: CpuId) -> Result<Self, Errno> {
        let pt = PageTable::with_limit(ctx.frames, cpu, ctx.layout.va_end + PAGE)?;
        ctx.live_mms.fetch_add(1, Ordering::Relaxed);
        Ok(AddressSpace {
            ctx,
            id: MmId::from_raw(ctx.next_id.fetch_add(1, Ordering::Relaxed)),
            mmap: MmapLock::new(),
            tree: MapleTree::new(&ctx.nodes),
            pt,
            anon_lock: SpinLock::new(()),
            start_brk: AtomicU64::new(0),
            brk: AtomicU64::new(0),
            nr_vmas: AtomicU64::new(0),
        })
    }

    /// This address space's identity (unique for the system's lifetime).
    pub fn id(&self) -> MmId {
        self.id
    }

    pub fn context(&self) -> &'a MmContext<'a, F> {
        self.ctx
    }

    /// The page table, for the arch layer (CR3, the MIPS refill handler's
    /// root pointer).
    pub fn page_table(&self) -> &PageTable<'a, F> {
        &self.pt
    }

    /// Number of VMAs.
    pub fn nr_vmas(&self) -> u64 {
        self.nr_vmas.load(Ordering::Relaxed)
    }

    /// The VMAs as `(start, end, flags)`, in address order, under the mmap
    /// read lock (for tests, `/proc/PID/maps`-style dumps, checks).
    pub fn for_each_vma(&self, cpu: CpuId, mut f: impl FnMut(u64, u64, crate::vma::VmFlags)) {
        let _g = self.mmap.read();
        let guard = self.ctx.rcu.read_lock(cpu);
        for r in self.tree.iter(&guard, 0, u64::MAX) {
            // SAFETY: in the tree while we hold the mmap read lock: pinned.
            let p = unsafe { r.entry.payload() };
            f(p.start(), p.end(), p.flags());
        }
    }

    /// Sets the start of the heap (the kernel's loader calls this with the
    /// page-aligned end of the program's data).
    pub fn set_brk_base(&self, base: u64) -> Result<(), Errno> {
        if !base.is_multiple_of(PAGE)
            || base < self.ctx.layout.min_addr
            || base >= self.ctx.layout.mmap_base
        {
            return Err(Errno::Inval);
        }
        let _g = self.mmap.write();
        self.start_brk.store(base, Ordering::Relaxed);
        self.brk.store(base, Ordering::Relaxed);
        Ok(())
    }

    /// A gather for this address space on `cpu`, releasing frames with
    /// [`MmContext::release_frame`].
    pub(crate) fn with_gather<R>(&self, cpu: CpuId, f: impl FnOnce(&mut TlbGather<'_>) -> R) -> R {
        let ctx = self.ctx;
        let mut release = |frame: Frame| ctx.release_frame(cpu, frame);
        let mut gather = TlbGather::new(self.id, cpu, ctx.tlb, ctx.frames, &mut release);
        let r = f(&mut gather);
        gather.finish();
        r
    }

    /// Checks the tree and every VMA: valid maple tree, VMA ranges equal
    /// to their tree ranges, ordered, attached, owned by this address
    /// space, with consistent anon_vma chains. For tests.
    pub fn validate(&self, cpu: CpuId) -> Result<(), &'static str> {
        let _g = self.mmap.write();
        let w = self.tree.write(cpu);
        w.validate().map_err(|_| "maple tree invariant broken")?;
        let mut prev_end = 0;
        let mut n = 0;
        for r in w.iter(0, u64::MAX) {
            // SAFETY: in the tree under the mmap write lock: pinned.
            let p = unsafe { r.entry.payload() };
            if p.start() != r.first || p.end() != r.last + 1 {
                return Err("VMA range differs from its tree range");
            }
            if p.start() < prev_end {
                return Err("VMAs overlap");
            }
            prev_end = p.end();
            if p.owner() != self.id {
                return Err("VMA owned by another address space");
            }
            // SAFETY: pinned, as above.
            let stable = unsafe { r.entry.stable() };
            if !stable.lock.is_attached() {
                return Err("VMA in the tree is detached");
            }
            let _a = self.anon_lock.lock();
            // SAFETY: pinned, anon lock held.
            unsafe { crate::vma::anon::check_vma_chains(r.entry) }?;
            n += 1;
        }
        if n != self.nr_vmas() {
            return Err("VMA count is off");
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
