//! Slab caches of fixed-size objects, optionally type-safe by RCU.
//!
//! A [`Slab<T>`] carves slab pages (`2^order` frames from the
//! [`FrameAllocator`]) into slots for `T`, runs `T`'s constructor once per
//! slot when a page is created, and serves allocations from per-CPU object
//! caches so that a hot alloc/free pair on one CPU takes no shared lock.
//!
//! # Structure
//!
//! * A slab page starts with a header (the page's free list, in-use count,
//!   list links, and the [`RcuHead`] used when the page is released),
//!   followed by `objects_per_page` slots. Every frame of the page has
//!   `PageFlags::SLAB` and points at the header in its metadata, so any
//!   object address leads to its page in O(1).
//! * The cache descriptor (`node`: the partial and empty page lists under one
//!   lock; geometry; counters) and the per-CPU caches live in frames of
//!   their own, so page headers and RCU callbacks can point at them however
//!   the [`Slab`] handle moves.
//! * Each CPU has a LIFO stack of up to [`CPU_CACHE_CAPACITY`] free slots
//!   behind its own lock. The API names CPUs by number rather than by a
//!   proof of running on them, so the lock is what makes a mistaken CPU
//!   number harmless; uncontended, it is one atomic on a line only this CPU
//!   writes. An empty cache takes [`CPU_CACHE_BATCH`] slots from the pages
//!   under `node` (creating a page if none is free); a full one returns a
//!   batch. Full pages are on no list.
//! * A CPU-cache hit (alloc or free) writes this CPU's cache (two 128-byte
//!   lines: lock word and stack, and the stack's tail and counters) and the
//!   object's slot (the payload; on free, nothing but the drop of the
//!   payload): no line another CPU writes.
//!
//! # The Octeon bug, and why it cannot happen here
//!
//! Linux made its VMA cache `SLAB_TYPESAFE_BY_RCU`: a freed VMA may be
//! reused at once, and only the slab page waits for a grace period, so a
//! lockless reader holding a stale pointer always finds *a* VMA, which it
//! then revalidates. That moved some VMA fields (the lock, the detached
//! flag, the `anon_vma_chain` list head) into the slab constructor: they
//! are initialised once per slot and must survive reuse. The
//! `!CONFIG_PER_VMA_LOCK` duplicate path still copied the whole VMA with
//! `memcpy`, overwriting the new VMA's list head with the source's; the
//! next `unlink_anon_vmas` walked a list that was not its own and oopsed on
//! a Cavium Octeon III board.
//!
//! Here that is a type error. [`SlabObject`] splits an object into its
//! constructor-owned [`Stable`](SlabObject::Stable) part and its
//! per-allocation [`Payload`](SlabObject::Payload); a slot is laid out as
//! `{ stable, payload }`:
//!
//! * The stable part is created only by [`SlabObject::construct`], once per
//!   slot, and after that is reachable only as `&T::Stable` — never
//!   `&mut`, not even through an exclusively owned [`Owned`]. So it cannot
//!   be assigned, swapped, replaced or copied over; it changes only through
//!   its own interior-mutable API, in place.
//! * Allocation ([`Slab::alloc`]) takes a payload, duplication
//!   ([`Slab::dup`]) clones a payload: neither has a way to touch the stable
//!   part. Objects are not `Clone`, and neither handle dereferences to a
//!   whole object that could be copied.
//! * Stable-part building blocks that hold list heads ([`StableList`]) have
//!   no `Default`, no `Clone`, no whole-value replacement and no `&mut` to
//!   the raw list, and can only be made with the [`Ctor`] token that only
//!   the constructor receives. (The one rule left to the owner: keep such a
//!   building block directly in the stable part, not behind a lock or cell
//!   that hands out `&mut` to it — two `&mut`s could be swapped.)
//!
//! `mm/tests/compile_fail/` holds the attempts (assignment, `mem::swap`,
//! `mem::replace`, fresh stable parts outside the constructor, whole-object
//! copies) that must not compile; `mm/tests/slab_api.rs` runs them.
//!
//! # Owned, published, stale
//!
//! An object is in one of three relations to the code holding it:
//!
//! * **Owned** ([`Owned`]): just allocated, not yet reachable by anyone
//!   else. `&Stable`, `&Payload` and `&mut Payload` are all safe. This is
//!   where the payload is filled in.
//! * **Published** ([`SlabPtr`], from [`Owned::publish`]): stored where
//!   others can find it. The slab no longer knows who may access the
//!   payload, so [`SlabPtr::payload`] and [`SlabPtr::payload_mut`] are
//!   `unsafe` and their contracts require the object's own protocol (a
//!   reference count or lock kept in the stable part) to have *pinned* the
//!   object. [`Slab::reclaim`] turns a pointer back into an `Owned` once
//!   the caller has unpublished it and drained its users.
//! * **Stale**: an RCU reader found the pointer, but the object may have
//!   been freed and reused since. Only the stable part may be touched
//!   ([`SlabPtr::stable_rcu`]); the payload may be being rewritten by
//!   `alloc` with plain stores, so reading it before pinning is a data race.
//!   A reader therefore pins through the stable part first (e.g. VMAs: take
//!   a read reference in the stable `refcnt`, failing if the VMA is
//!   detached), *then* revalidates identity fields (owning mm, range) in the
//!   payload. Fields a reader must read before it can pin belong in the
//!   stable part, as atomics that the owner resets through their own API.
//!
//! # Type-safe by RCU
//!
//! With [`Slab::new_typesafe_by_rcu`] a freed object goes straight back to
//! the CPU cache and may be handed out again at once; only when a whole
//! slab page is empty and leaves the cache is it passed to [`Rcu::call`],
//! one callback per *page* (never per object), and the callback drops the
//! slots' stable parts and frees the frames after a grace period. Without
//! the policy, an empty page beyond the reserve is freed at once.
//!
//! # Memory ordering
//!
//! * *Construction vs. allocation.* A page's stable parts are written
//!   before the page is added to the cache's lists under `node` and reach
//!   CPU caches only through `node` (lock release/acquire), so any CPU that
//!   allocates a slot sees its constructed stable part. Readers see it via
//!   the owner's publication (a Release store of the pointer paired with
//!   the reader's Acquire load — the owner's business, e.g. the maple tree).
//! * *Free vs. reuse.* A freed slot reaches the next allocator through a
//!   CPU-cache lock and possibly `node` (release/acquire pairs), so all of
//!   the previous owner's accesses happen before the new owner's payload
//!   writes. Stale RCU readers are *not* ordered against reuse: they
//!   revalidate under the object's own lock.
//! * *Stale readers vs. page free.* An object is unpublished before it is
//!   freed; its free, the flush that makes its page empty and the
//!   [`Rcu::call`] for the page are ordered by the CPU-cache lock and
//!   `node` (release/acquire), so the unpublication happens before the call.
//!   RCU's pair (A) (removal vs. the snapshot RMW in `Rcu::call`) then
//!   makes the grace period cover every reader that could have found any
//!   object of the page, and pair (C) (the readers' Release reports vs. the
//!   GP end vs. the Acquire before callbacks run) orders all their
//!   accesses to the page before `rcu_free_page` drops the stable parts
//!   and frees the frames. A page leaves all lists before the call, so no
//!   object on it is allocated (and republished) after the call.
//! * *Page free vs. the frame's next user*: ordered by the frame
//!   allocator's locks.
//!
//! # Lock order
//!
//! CPU-cache lock → `node` → frame allocator (pcp → zone); [`Rcu::call`]'s
//! queue lock is taken with no slab lock held. The constructor runs with
//! only the allocating CPU's cache lock held.

mod object;
mod stable;

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};

use object::Slot;
pub use object::{Ctor, Owned, SlabObject, SlabPtr};
pub use stable::StableList;

use crate::addr::{Frame, PAGE_SIZE};
use crate::cpu::{CachePadded, CpuId};
use crate::frame::{AllocError, FrameAllocator, PageFlags};
use crate::rcu::{Rcu, RcuHead};
use crate::sync::{injected, AtomicU64, Fault, Ordering, SpinLock, UnsafeCell};

/// Objects a CPU cache holds at most.
pub const CPU_CACHE_CAPACITY: usize = 28;
/// Objects moved between a CPU cache and the slab pages at a time.
pub const CPU_CACHE_BATCH: usize = CPU_CACHE_CAPACITY / 2;
/// Largest slab page: 2^5 frames (128 KiB).
pub const MAX_SLAB_ORDER: u32 = 5;
/// A slab page should hold at least this many objects, if an order up to
/// [`MAX_SLAB_ORDER`] allows it.
const MIN_OBJECTS: usize = 8;

/// Cache parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlabConfig {
    /// For diagnostics.
    pub name: &'static str,
    /// Cap on objects per slab page (`0`: as many as fit). Tests and loom
    /// models use small pages to reach page-level events quickly.
    pub max_objects_per_page: u32,
    /// Empty slab pages kept instead of being returned to the frame
    /// allocator.
    pub reserve_empty_pages: u32,
}

impl SlabConfig {
    /// No cap, one empty page in reserve.
    pub const fn new(name: &'static str) -> Self {
        SlabConfig {
            name,
            max_objects_per_page: 0,
            reserve_empty_pages: 1,
        }
    }
}

/// Why a cache could not be created or an object allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlabError {
    /// The frame allocator is out of memory.
    OutOfMemory,
    /// The CPU id is not below the frame allocator's `nr_cpus`.
    BadCpu(CpuId),
    /// A slot does not fit a slab page of [`MAX_SLAB_ORDER`].
    ObjectTooLarge { size: usize, align: usize },
}

impl core::fmt::Display for SlabError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            SlabError::OutOfMemory => f.write_str("slab: out of memory"),
            SlabError::BadCpu(c) => write!(f, "slab: bad CPU id {c}"),
            SlabError::ObjectTooLarge { size, align } => {
                write!(f, "slab: object of {size} bytes (align {align}) too large")
            }
        }
    }
}

impl From<AllocError> for SlabError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::BadCpu(c) => SlabError::BadCpu(c),
            AllocError::OutOfMemory { .. } | AllocError::BadOrder(_) => SlabError::OutOfMemory,
        }
    }
}

/// A snapshot of a cache's accounting. Exact when nothing runs
/// concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlabStats {
    /// Bytes per slot (stable part + payload, aligned).
    pub slot_size: usize,
    pub objects_per_page: u32,
    pub page_order: u32,
    /// Slab pages the cache holds (in use, partial, empty reserve); not
    /// counting pages waiting for a grace period.
    pub pages: u64,
    /// Of which empty, kept in reserve.
    pub empty_pages: u64,
    /// Pages queued with [`Rcu::call`] whose callback has not run.
    pub pages_pending_rcu: u64,
    /// Pages ever created (each ran the constructor on every slot).
    pub pages_created: u64,
    /// Pages ever returned to the frame allocator.
    pub pages_freed: u64,
    /// Constructor calls: `pages_created * objects_per_page`.
    pub constructor_calls: u64,
    /// RCU callbacks ever queued: one per page released by a type-safe-by-
    /// RCU cache, none per object.
    pub rcu_calls: u64,
    /// Objects allocated and not freed.
    pub objects_in_use: u64,
    /// Free objects sitting in CPU caches.
    pub objects_cached: u64,
    /// Allocations and frees ever.
    pub allocs: u64,
    pub frees: u64,
}

/// Where a slab page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnList {
    Partial,
    Empty,
    /// Every slot allocated (or in a CPU cache); on no list.
    Full,
    /// Left the cache; being freed.
    Released,
}

/// Per-page state, protected by the cache's `node` lock.
struct PageState {
    /// First free slot; free slots link through `Body::next_free`.
    free: *mut u8,
    /// Slots not on `free` (allocated or in a CPU cache).
    inuse: u32,
    next: *mut PageHeader,
    prev: *mut PageHeader,
    on: OnList,
}

/// The head of every slab page, followed by its slots.
#[repr(C)]
struct PageHeader {
    /// First field: `rcu_free_page` recovers the header from it.
    rcu: RcuHead,
    cache: *const CacheInner,
    frame: Frame,
    /// The CPU whose caches take the frames back when the page is freed.
    /// Written before `Rcu::call`, read by the callback (ordered by RCU).
    release_cpu: UnsafeCell<CpuId>,
    state: UnsafeCell<PageState>,
}

/// Doubly linked list of pages, under `node`.
struct PageList {
    head: *mut PageHeader,
    len: u64,
}

struct Node {
    partial: PageList,
    empty: PageList,
    /// Pages on no list (every slot handed out).
    full: u64,
}

/// A CPU's object cache.
struct CpuCache {
    objs: SpinLock<CpuObjs>,
    /// Counters written only under `objs`' lock (plain load + store), read
    /// lock-free by `stats`.
    allocs: AtomicU64,
    frees: AtomicU64,
}

/// LIFO stack of free slots; the top is the most recently freed (cache-hot).
struct CpuObjs {
    count: usize,
    objs: [*mut u8; CPU_CACHE_CAPACITY],
}

/// The cache descriptor, in frames of its own so that page headers and RCU
/// callbacks can point at it however the `Slab` handle moves.
struct CacheInner {
    node: SpinLock<Node>,
    frames: *const FrameAllocator,
    name: &'static str,
    slot_size: usize,
    first_slot: usize,
    objs_per_page: u32,
    page_order: u32,
    reserve_empty: u64,
    typesafe_by_rcu: bool,
    rcu: *const Rcu,
    nr_cpus: usize,
    cpus: NonNull<CachePadded<CpuCache>>,
    /// The frames holding this descriptor and the CPU caches.
    block: (Frame, u32),
    pages_pending_rcu: AtomicU64,
    pages_created: AtomicU64,
    pages_freed: AtomicU64,
    rcu_calls: AtomicU64,
}

/// A cache of `T` objects. See the module documentation.
pub struct Slab<'a, T: SlabObject> {
    inner: NonNull<CacheInner>,
    frames: &'a FrameAllocator,
    _t: PhantomData<fn() -> T>,
}

// SAFETY: the descriptor is shared through locks and atomics; objects
// (and so payloads) may be allocated on one CPU and freed on another,
// hence `Payload: Send`; stable parts are `Send + Sync` by the trait.
unsafe impl<T: SlabObject> Send for Slab<'_, T> where T::Payload: Send {}
// SAFETY: as above.
unsafe impl<T: SlabObject> Sync for Slab<'_, T> where T::Payload: Send {}

struct Geometry {
    slot_size: usize,
    first_slot: usize,
    objs_per_page: u32,
    page_order: u32,
}

fn geometry<T: SlabObject>(cap: u32) -> Result<Geometry, SlabError> {
    let size = size_of::<Slot<T>>();
    let align = align_of::<Slot<T>>();
    let too_large = SlabError::ObjectTooLarge { size, align };
    if align > PAGE_SIZE {
        return Err(too_large);
    }
    let first_slot = size_of::<PageHeader>().next_multiple_of(align);
    let fit = |order: u32| ((PAGE_SIZE << order).saturating_sub(first_slot)) / size;
    // The smallest order holding MIN_OBJECTS with at most 1/8 waste, else
    // the smallest that holds at least one.
    let order = (0..=MAX_SLAB_ORDER)
        .find(|&o| {
            let n = fit(o);
            n >= MIN_OBJECTS && (PAGE_SIZE << o) - first_slot - n * size <= (PAGE_SIZE << o) / 8
        })
        .or_else(|| (0..=MAX_SLAB_ORDER).find(|&o| fit(o) >= 1))
        .ok_or(too_large)?;
    let mut n = fit(order).min(u32::MAX as usize) as u32;
    if cap != 0 {
        n = n.min(cap);
    }
    Ok(Geometry {
        slot_size: size,
        first_slot,
        objs_per_page: n,
        page_order: order,
    })
}

impl<'a, T: SlabObject> Slab<'a, T> {
    /// A cache whose empty pages (beyond the reserve) go back to `frames`
    /// at once. Objects must not be reachable by anyone once freed.
    pub fn new(frames: &'a FrameAllocator, cfg: SlabConfig) -> Result<Self, SlabError> {
        Self::create(frames, None, cfg)
    }

    /// A `SLAB_TYPESAFE_BY_RCU` cache: freed objects are reused at once,
    /// slab pages are freed only after an RCU grace period (one
    /// [`Rcu::call`] per page).
    ///
    /// # Safety
    ///
    /// The callbacks this cache queues on `rcu` use the cache: every one of
    /// them must have run before the cache is dropped, and no RCU reader
    /// may hold a pointer to one of its objects then. Use
    /// [`Slab::destroy`], which shrinks the cache and runs
    /// [`RcuCpu::barrier`](crate::rcu::RcuCpu::barrier); dropping the cache
    /// with pages still waiting panics rather than let a callback use it
    /// afterwards. (In the kernel, caches live forever.)
    pub unsafe fn new_typesafe_by_rcu(
        frames: &'a FrameAllocator,
        rcu: &'a Rcu,
        cfg: SlabConfig,
    ) -> Result<Self, SlabError> {
        Self::create(frames, Some(rcu), cfg)
    }

    fn create(
        frames: &'a FrameAllocator,
        rcu: Option<&'a Rcu>,
        cfg: SlabConfig,
    ) -> Result<Self, SlabError> {
        let g = geometry::<T>(cfg.max_objects_per_page)?;
        let nr_cpus = frames.nr_cpus();
        let cpus_off =
            size_of::<CacheInner>().next_multiple_of(align_of::<CachePadded<CpuCache>>());
        let bytes = cpus_off + nr_cpus * size_of::<CachePadded<CpuCache>>();
        let order = (0..=crate::frame::MAX_ORDER)
            .find(|&o| PAGE_SIZE << o >= bytes)
            .ok_or(SlabError::OutOfMemory)?;
        let block = frames.alloc(0, order)?;
        let base = frames.frame_ptr(block).expect("frame from our allocator");
        let inner = base.cast::<CacheInner>();
        // SAFETY: `cpus_off` lies inside the block and is 128-byte aligned (the block is page-aligned).
        let cpus = unsafe { base.add(cpus_off) }.cast::<CachePadded<CpuCache>>();
        for c in 0..nr_cpus {
            let cc = CpuCache {
                objs: SpinLock::new(CpuObjs {
                    count: 0,
                    objs: [ptr::null_mut(); CPU_CACHE_CAPACITY],
                }),
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
            };
            // SAFETY: entry `c` lies inside the freshly allocated block, which is ours, and is aligned.
            unsafe { ptr::write(cpus.as_ptr().add(c), CachePadded(cc)) };
        }
        let desc = CacheInner {
            node: SpinLock::new(Node {
                partial: PageList {
                    head: ptr::null_mut(),
                    len: 0,
                },
                empty: PageList {
                    head: ptr::null_mut(),
                    len: 0,
                },
                full: 0,
            }),
            frames,
            name: cfg.name,
            slot_size: g.slot_size,
            first_slot: g.first_slot,
            objs_per_page: g.objs_per_page,
            page_order: g.page_order,
            reserve_empty: u64::from(cfg.reserve_empty_pages),
            typesafe_by_rcu: rcu.is_some(),
            rcu: rcu.map_or(ptr::null(), |r| r as *const Rcu),
            nr_cpus,
            cpus,
            block: (block, order),
            pages_pending_rcu: AtomicU64::new(0),
            pages_created: AtomicU64::new(0),
            pages_freed: AtomicU64::new(0),
            rcu_calls: AtomicU64::new(0),
        };
        // SAFETY: the block starts with room for the descriptor, is ours and page-aligned.
        unsafe { ptr::write(inner.as_ptr(), desc) };
        Ok(Slab {
            inner,
            frames,
            _t: PhantomData,
        })
    }

    #[inline(always)]
    fn inner(&self) -> &CacheInner {
        // SAFETY: the descriptor lives until `drop`.
        unsafe { self.inner.as_ref() }
    }

    #[inline(always)]
    fn cpu_cache(&self, cpu: CpuId) -> &CpuCache {
        let inner = self.inner();
        debug_assert!(cpu < inner.nr_cpus);
        // SAFETY: `cpu < nr_cpus`; entries were initialised in `create`.
        unsafe { &*inner.cpus.as_ptr().add(cpu) }
    }

    /// Allocates an object on `cpu` and moves `payload` into it. The
    /// stable part is whatever the slot's constructor (and the object's
    /// previous lives, through the stable part's own API) left there.
    ///
    /// A CPU-cache hit writes only this CPU's cache lines and the slot's
    /// payload (see the module documentation).
    #[inline]
    pub fn alloc(&self, cpu: CpuId, payload: T::Payload) -> Result<Owned<'_, T>, SlabError> {
        self.try_alloc(cpu, payload).map_err(|(e, _)| e)
    }

    /// [`Self::alloc`], handing the payload back on failure: for payloads
    /// that must not simply be dropped (one that owns a page table needs
    /// it torn down through a TLB gather).
    #[inline]
    pub fn try_alloc(
        &self,
        cpu: CpuId,
        payload: T::Payload,
    ) -> Result<Owned<'_, T>, (SlabError, T::Payload)> {
        if cpu >= self.inner().nr_cpus {
            return Err((SlabError::BadCpu(cpu), payload));
        }
        let cc = self.cpu_cache(cpu);
        let slot = {
            let mut objs = cc.objs.lock();
            if objs.count == 0 {
                if let Err(e) = self.refill(cpu, &mut objs) {
                    return Err((e, payload));
                }
            }
            objs.count -= 1;
            let p = objs.objs[objs.count];
            cc.allocs
                .store(cc.allocs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            p
        };
        // SAFETY: free slots are non-null.
        let slot = unsafe { NonNull::new_unchecked(slot) }.cast::<Slot<T>>();
        // SAFETY: the slot was free and is now ours; its payload area holds a stale free-list link or a dropped payload, so overwrite it without dropping.
        unsafe { ptr::write(Slot::payload_ptr(slot), payload) };
        Ok(Owned {
            slot,
            slab: self,
            cpu,
        })
    }

    /// Allocates an object whose payload is a clone of `src` — the only
    /// kind of object copy there is. The new object keeps its own stable
    /// part (list heads, locks): nothing copies a stable part.
    pub fn dup(&self, cpu: CpuId, src: &T::Payload) -> Result<Owned<'_, T>, SlabError>
    where
        T::Payload: Clone,
    {
        self.alloc(cpu, src.clone())
    }

    /// Frees an object to `cpu`'s cache (dropping its payload). Same as
    /// dropping it, except for the choice of CPU.
    pub fn free(&self, cpu: CpuId, obj: Owned<'_, T>) {
        assert!(
            ptr::eq(obj.slab.inner.as_ptr(), self.inner.as_ptr()),
            "slab '{}': freeing an object of another cache",
            self.inner().name
        );
        let slot = obj.slot;
        core::mem::forget(obj);
        // SAFETY: `obj` owned the slot; we consumed it.
        unsafe { self.free_slot(cpu, slot) }
    }

    /// Takes exclusive ownership of a published object back.
    ///
    /// # Safety
    ///
    /// `ptr` is an allocated object of this cache, unpublished, and no one
    /// else holds a reference to its payload or will take one; with a
    /// type-safe-by-RCU cache, RCU readers may still look at its stable
    /// part (that stays safe), otherwise no one may.
    pub unsafe fn reclaim(&self, cpu: CpuId, ptr: SlabPtr<T>) -> Owned<'_, T> {
        self.debug_check_ours(ptr.slot());
        Owned {
            slot: ptr.slot(),
            slab: self,
            cpu,
        }
    }

    /// Frees a published object: [`Self::reclaim`] then [`Self::free`].
    ///
    /// # Safety
    ///
    /// As for [`Self::reclaim`].
    pub unsafe fn free_ptr(&self, cpu: CpuId, ptr: SlabPtr<T>) {
        // SAFETY: forwarded.
        let obj = unsafe { self.reclaim(cpu, ptr) };
        self.free(cpu, obj);
    }

    /// Whether this cache is type-safe by RCU.
    pub fn is_typesafe_by_rcu(&self) -> bool {
        self.inner().typesafe_by_rcu
    }

    /// The frame allocator the cache takes pages from.
    pub fn frames(&self) -> &'a FrameAllocator {
        self.frames
    }

    /// Returns `cpu`'s cached objects to their pages (CPU offline, tests).
    pub fn drain_cpu(&self, cpu: CpuId) {
        if cpu >= self.inner().nr_cpus {
            return;
        }
        let mut objs = self.cpu_cache(cpu).objs.lock();
        let n = objs.count;
        let released = self.flush(&mut objs, n);
        drop(objs);
        self.release_pages(cpu, released);
    }

    /// Drains every CPU cache and releases every empty page, the reserve
    /// included (for a type-safe-by-RCU cache, through [`Rcu::call`]). CPU
    /// `cpu` pays for it.
    pub fn shrink(&self, cpu: CpuId) {
        for c in 0..self.inner().nr_cpus {
            self.drain_cpu(c);
        }
        let mut list = ptr::null_mut();
        {
            let mut node = self.inner().node.lock();
            while !node.empty.head.is_null() {
                let page = node.empty.head;
                // SAFETY: pages on the lists are live; we hold `node`.
                unsafe {
                    list_del(&mut node.empty, page);
                    push_released(&mut list, page);
                }
            }
        }
        self.release_pages(cpu, list);
    }

    /// Tears down a type-safe-by-RCU cache properly: shrinks it, waits for
    /// every RCU callback (so that none can run after the cache is gone),
    /// then drops it.
    pub fn destroy(self, rcu_cpu: &mut crate::rcu::RcuCpu<'_>) {
        self.shrink(rcu_cpu.id());
        rcu_cpu.barrier();
        drop(self);
    }

    /// Slab pages queued with [`Rcu::call`] whose callback has not run
    /// yet (one atomic load; [`Self::stats`] takes every lock).
    pub fn pages_pending_rcu(&self) -> u64 {
        // Acquire: pairs with the Release decrement in `rcu_free_page`, so
        // a caller that sees the page gone also sees it freed.
        self.inner().pages_pending_rcu.load(Ordering::Acquire)
    }

    /// Accounting snapshot.
    pub fn stats(&self) -> SlabStats {
        let inner = self.inner();
        let (mut allocs, mut frees, mut cached) = (0, 0, 0);
        for c in 0..inner.nr_cpus {
            let cc = self.cpu_cache(c);
            cached += cc.objs.lock().count as u64;
            allocs += cc.allocs.load(Ordering::Relaxed);
            frees += cc.frees.load(Ordering::Relaxed);
        }
        let (pages, empty_pages) = {
            let node = inner.node.lock();
            (
                node.partial.len + node.empty.len + node.full,
                node.empty.len,
            )
        };
        let pages_created = inner.pages_created.load(Ordering::Relaxed);
        SlabStats {
            slot_size: inner.slot_size,
            objects_per_page: inner.objs_per_page,
            page_order: inner.page_order,
            pages,
            empty_pages,
            pages_pending_rcu: inner.pages_pending_rcu.load(Ordering::Acquire),
            pages_created,
            pages_freed: inner.pages_freed.load(Ordering::Acquire),
            constructor_calls: pages_created * u64::from(inner.objs_per_page),
            rcu_calls: inner.rcu_calls.load(Ordering::Relaxed),
            objects_in_use: allocs - frees,
            objects_cached: cached,
            allocs,
            frees,
        }
    }

    // ---- internals ----------------------------------------------------

    /// Frees a slot into `cpu`'s cache.
    ///
    /// # Safety
    /// The caller owns the allocated slot and does not use it afterwards.
    unsafe fn free_slot(&self, cpu: CpuId, slot: NonNull<Slot<T>>) {
        self.debug_check_ours(slot);
        // SAFETY: the payload was initialised by `alloc` and is ours.
        unsafe { ptr::drop_in_place(Slot::payload_ptr(slot)) };
        // SAFETY: forwarded; the payload is dropped.
        unsafe { self.recycle_slot(cpu, slot) };
    }

    /// Frees a slot whose payload was dropped or moved out.
    ///
    /// # Safety
    /// As for `free_slot`, and the payload is no longer live.
    pub(in crate::slab) unsafe fn recycle_slot(&self, cpu: CpuId, slot: NonNull<Slot<T>>) {
        self.debug_check_ours(slot);
        let inner = self.inner();
        // A bad CPU id on free is a caller bug; any CPU's cache is correct
        // (they are all locked), so use CPU 0's rather than fail.
        debug_assert!(
            cpu < inner.nr_cpus,
            "slab '{}': free on bad CPU {cpu}",
            inner.name
        );
        let cpu = if cpu < inner.nr_cpus { cpu } else { 0 };
        let cc = self.cpu_cache(cpu);
        let mut objs = cc.objs.lock();
        let raw = slot.as_ptr().cast::<u8>();
        debug_assert!(
            !objs.objs[..objs.count].contains(&raw),
            "slab '{}': double free of {raw:p}",
            inner.name
        );
        let released = if objs.count == CPU_CACHE_CAPACITY {
            self.flush(&mut objs, CPU_CACHE_BATCH)
        } else {
            ptr::null_mut()
        };
        let n = objs.count;
        objs.objs[n] = raw;
        objs.count = n + 1;
        cc.frees
            .store(cc.frees.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        drop(objs);
        self.release_pages(cpu, released);
    }

    /// Checks (debug builds) that `slot` is a slot of this cache.
    fn debug_check_ours(&self, slot: NonNull<Slot<T>>) {
        if cfg!(debug_assertions) {
            let inner = self.inner();
            let ok = self
                .frames
                .direct_map()
                .to_phys(slot.as_ptr().cast())
                .and_then(|pa| self.frames.meta(Frame::containing(pa)))
                .filter(|m| m.flags().contains(PageFlags::SLAB))
                .map(|m| m.private.load(Ordering::Relaxed).cast::<PageHeader>())
                // SAFETY: SLAB frames' `private` points at a live header.
                .is_some_and(|h| ptr::eq(unsafe { (*h).cache }, self.inner.as_ptr()));
            assert!(
                ok,
                "slab '{}': {:p} is not an object of this cache",
                inner.name, slot
            );
        }
    }

    /// The header of the page holding `obj`, via the frame metadata.
    fn page_of(&self, obj: *mut u8) -> *mut PageHeader {
        let pa = self.frames.direct_map().to_phys_unchecked(obj);
        let m = self.frames.meta(Frame::containing(pa));
        // Objects handed to the slab are in its pages (checked on free in
        // debug builds), whose frames carry the header address in `private`.
        debug_assert!(m.is_some_and(|m| m.flags().contains(PageFlags::SLAB)));
        m.map_or(ptr::null_mut(), |m| {
            m.private.load(Ordering::Relaxed) as *mut PageHeader
        })
    }

    /// Fills an empty CPU cache with up to a batch of free slots, creating
    /// a slab page if there are none.
    fn refill(&self, cpu: CpuId, objs: &mut CpuObjs) -> Result<(), SlabError> {
        let inner = self.inner();
        loop {
            {
                let mut node = inner.node.lock();
                while objs.count < CPU_CACHE_BATCH {
                    let page = if !node.partial.head.is_null() {
                        node.partial.head
                    } else if !node.empty.head.is_null() {
                        node.empty.head
                    } else {
                        break;
                    };
                    // SAFETY: pages on the lists are live; we hold `node`.
                    unsafe { self.take_from_page(&mut node, page, objs) };
                }
            }
            if objs.count > 0 {
                return Ok(());
            }
            let page = self.new_page(cpu)?;
            let mut node = inner.node.lock();
            // SAFETY: the new page is ours until it is on a list; `node` held.
            unsafe {
                (*page).state.with_mut(|s| (*s).on = OnList::Empty);
                list_add(&mut node.empty, page);
            }
        }
    }

    /// Moves free slots of `page` into `objs` until either runs out.
    ///
    /// # Safety
    /// `page` is live and on the partial or empty list; `node` is held.
    unsafe fn take_from_page(&self, node: &mut Node, page: *mut PageHeader, objs: &mut CpuObjs) {
        // SAFETY: `node` is held, which protects the page state.
        let st = unsafe { &mut *(*page).state.with_mut(|s| s) };
        let was = st.on;
        while objs.count < CPU_CACHE_BATCH && !st.free.is_null() {
            let slot = st.free;
            // SAFETY: free slots hold their free-list link in the body.
            st.free = unsafe { *Slot::<T>::next_free_ptr(NonNull::new_unchecked(slot).cast()) };
            st.inuse += 1;
            objs.objs[objs.count] = slot;
            objs.count += 1;
        }
        let now = if st.free.is_null() {
            OnList::Full
        } else {
            OnList::Partial
        };
        if now != was {
            // SAFETY: the page is on `was`'s list; `node` is held.
            unsafe {
                match was {
                    OnList::Partial => list_del(&mut node.partial, page),
                    OnList::Empty => list_del(&mut node.empty, page),
                    _ => unreachable!("refill from a page on no list"),
                }
                match now {
                    OnList::Partial => list_add(&mut node.partial, page),
                    _ => node.full += 1,
                }
            }
            st.on = now;
        }
    }

    /// Returns the `n` oldest objects of a (locked) CPU cache to their
    /// pages. Returns the pages that became empty beyond the reserve, as a
    /// list through `state.next`, for the caller to release once it has
    /// dropped its locks.
    fn flush(&self, objs: &mut CpuObjs, n: usize) -> *mut PageHeader {
        let n = n.min(objs.count);
        if n == 0 {
            return ptr::null_mut();
        }
        let inner = self.inner();
        let mut released = ptr::null_mut();
        {
            let mut node = inner.node.lock();
            for &obj in &objs.objs[..n] {
                let page = self.page_of(obj);
                // SAFETY: `obj` is an allocated-to-the-cache slot of the live `page`; `node` is held.
                unsafe { self.put_on_page(&mut node, page, obj, &mut released) };
            }
        }
        objs.objs.copy_within(n..objs.count, 0);
        objs.count -= n;
        released
    }

    /// # Safety
    /// `obj` is a slot of `page` that is neither free on the page nor
    /// allocated to a user; `node` is held.
    unsafe fn put_on_page(
        &self,
        node: &mut Node,
        page: *mut PageHeader,
        obj: *mut u8,
        released: &mut *mut PageHeader,
    ) {
        let inner = self.inner();
        // SAFETY: `node` is held.
        let st = unsafe { &mut *(*page).state.with_mut(|s| s) };
        if cfg!(debug_assertions) {
            let mut p = st.free;
            while !p.is_null() {
                assert!(p != obj, "slab '{}': double free of {obj:p}", inner.name);
                // SAFETY: free slots hold their free-list link.
                p = unsafe { *Slot::<T>::next_free_ptr(NonNull::new_unchecked(p).cast()) };
            }
        }
        // SAFETY: the slot is ours to link; its payload was dropped on free.
        unsafe { *Slot::<T>::next_free_ptr(NonNull::new_unchecked(obj).cast()) = st.free };
        st.free = obj;
        st.inuse -= 1;
        let now = if st.inuse == 0 {
            OnList::Empty
        } else {
            OnList::Partial
        };
        if now == st.on {
            return;
        }
        // SAFETY: `page` is on the list `st.on` says; `node` is held.
        unsafe {
            match st.on {
                OnList::Full => node.full -= 1,
                OnList::Partial => list_del(&mut node.partial, page),
                _ => unreachable!("object freed to a page that is empty or released"),
            }
        }
        if now == OnList::Empty && node.empty.len >= inner.reserve_empty {
            st.on = OnList::Released;
            // SAFETY: the page is on no list now.
            unsafe { push_released(released, page) };
        } else {
            st.on = now;
            // SAFETY: the page is on no list; `node` is held.
            unsafe {
                match now {
                    OnList::Empty => list_add(&mut node.empty, page),
                    _ => list_add(&mut node.partial, page),
                }
            }
        }
    }

    /// Creates a slab page: frames, header, constructed slots, frame
    /// metadata. Returns it on no list.
    fn new_page(&self, cpu: CpuId) -> Result<*mut PageHeader, SlabError> {
        let inner = self.inner();
        let frame = self.frames.alloc(cpu, inner.page_order)?;
        let base = self
            .frames
            .frame_ptr(frame)
            .expect("frame from our allocator");
        let header = base.as_ptr().cast::<PageHeader>();
        let ctor = Ctor::new();
        let mut free = ptr::null_mut();
        // Construct back to front so that the free list runs front to back.
        for i in (0..inner.objs_per_page as usize).rev() {
            let off = inner.first_slot + i * inner.slot_size;
            // SAFETY: slot `i` lies inside the page (geometry), aligned.
            let slot = unsafe { base.add(off) }.cast::<Slot<T>>();
            // SAFETY: the page is ours and unpublished.
            unsafe {
                ptr::write(Slot::stable_ptr(slot), T::construct(&ctor));
                *Slot::next_free_ptr(slot) = free;
            }
            free = slot.as_ptr().cast();
        }
        let hdr = PageHeader {
            rcu: RcuHead::new(),
            cache: self.inner.as_ptr(),
            frame,
            release_cpu: UnsafeCell::new(cpu),
            state: UnsafeCell::new(PageState {
                free,
                inuse: 0,
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                on: OnList::Released,
            }),
        };
        // SAFETY: the header area at the page start is ours.
        unsafe { ptr::write(header, hdr) };
        for i in 0..1u64 << inner.page_order {
            let m = self
                .frames
                .meta(frame.add(i))
                .expect("slab frame has metadata");
            m.private.store(header.cast(), Ordering::Relaxed);
            m.set_flag(PageFlags::SLAB);
        }
        inner.pages_created.fetch_add(1, Ordering::Relaxed);
        Ok(header)
    }

    /// Releases pages that left the cache (a list through `state.next`):
    /// after a grace period if the cache is type-safe by RCU, else now.
    fn release_pages(&self, cpu: CpuId, mut list: *mut PageHeader) {
        let inner = self.inner();
        while !list.is_null() {
            let page = list;
            // SAFETY: released pages are ours alone until freed.
            list = unsafe { (*page).state.with(|s| (*s).next) };
            if inner.typesafe_by_rcu && !injected(Fault::SlabFreeWithoutGracePeriod) {
                // SAFETY: as above; the write is ordered before the callback's read by `Rcu::call`.
                unsafe { (*page).release_cpu.with_mut(|c| *c = cpu) };
                inner.rcu_calls.fetch_add(1, Ordering::Relaxed);
                inner.pages_pending_rcu.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the head is not queued (a page is released once) and the page and the cache stay valid until the callback runs (the page is on no list; `new_typesafe_by_rcu`'s contract keeps the cache).
                unsafe {
                    (*inner.rcu).call(
                        cpu,
                        NonNull::new_unchecked(ptr::addr_of_mut!((*page).rcu)),
                        rcu_free_page::<T>,
                    )
                };
            } else {
                // SAFETY: the page is on no list and (no RCU policy, or the deliberately broken test variant) may go now.
                unsafe { free_page::<T>(page, cpu) };
            }
        }
    }
}

/// Frees a slab page: drops every slot's stable part, clears the frame
/// metadata, frees the frames.
///
/// # Safety
/// `page` left its cache, and nobody will access it again.
unsafe fn free_page<T: SlabObject>(page: *mut PageHeader, cpu: CpuId) {
    // SAFETY: the page and its cache are live (the cache outlives its pages' frees: see `new_typesafe_by_rcu`).
    let inner = unsafe { &*(*page).cache };
    // SAFETY: as above.
    let frame = unsafe { (*page).frame };
    // SAFETY: as above.
    let frames = unsafe { &*inner.frames };
    let base = page.cast::<u8>();
    for i in 0..inner.objs_per_page as usize {
        // SAFETY: every slot's stable part was constructed with the page and is dropped once, here.
        unsafe {
            let slot = NonNull::new_unchecked(base.add(inner.first_slot + i * inner.slot_size));
            ptr::drop_in_place(Slot::<T>::stable_ptr(slot.cast()));
        }
    }
    // SAFETY: the header was written by `new_page`; nothing uses it now (an RCU callback does not touch its head after calling us).
    unsafe { ptr::drop_in_place(page) };
    for i in 0..1u64 << inner.page_order {
        let m = frames.meta(frame.add(i)).expect("slab frame has metadata");
        m.clear_flag(PageFlags::SLAB);
        m.private.store(ptr::null_mut(), Ordering::Relaxed);
    }
    // SAFETY: the frames were allocated by `new_page` with this order and nothing references them any more.
    unsafe { frames.free(cpu, frame, inner.page_order) };
    inner.pages_freed.fetch_add(1, Ordering::Release);
}

/// The RCU callback of a type-safe-by-RCU cache: a grace period has passed
/// since the page left the cache, so no reader can still hold a pointer
/// into it (pair (C) of `rcu.rs`: readers' Release reports → GP end →
/// the Acquire before callbacks run).
///
/// # Safety
/// Called by RCU with the `rcu` head of a page queued by `release_pages`.
unsafe fn rcu_free_page<T: SlabObject>(head: NonNull<RcuHead>) {
    // `rcu` is the first field of the `repr(C)` header.
    let page = head.as_ptr().cast::<PageHeader>();
    // SAFETY: the page is live until `free_page` below; `release_cpu` was written before `Rcu::call`.
    let (cpu, inner) = unsafe { ((*page).release_cpu.with(|c| *c), (*page).cache) };
    // SAFETY: the grace period has elapsed; the page is ours.
    unsafe { free_page::<T>(page, cpu) };
    // Release: pairs with the Acquire load in `stats`/`Drop`, so whoever
    // sees the count drop sees the page freed.
    // SAFETY: the cache outlives its callbacks (`new_typesafe_by_rcu`).
    unsafe { (*inner).pages_pending_rcu.fetch_sub(1, Ordering::Release) };
}

/// # Safety
/// `page` is live and on no list; the caller holds `node`.
unsafe fn list_add(list: &mut PageList, page: *mut PageHeader) {
    let old = list.head;
    // SAFETY: `node` held; `page` and `old` are live.
    unsafe {
        (*page).state.with_mut(|s| {
            (*s).next = old;
            (*s).prev = ptr::null_mut();
        });
        if !old.is_null() {
            (*old).state.with_mut(|s| (*s).prev = page);
        }
    }
    list.head = page;
    list.len += 1;
}

/// # Safety
/// `page` is on `list`; the caller holds `node`.
unsafe fn list_del(list: &mut PageList, page: *mut PageHeader) {
    // SAFETY: `node` held; neighbours are live pages on the same list.
    unsafe {
        let (next, prev) = (*page).state.with(|s| ((*s).next, (*s).prev));
        if prev.is_null() {
            list.head = next;
        } else {
            (*prev).state.with_mut(|s| (*s).next = next);
        }
        if !next.is_null() {
            (*next).state.with_mut(|s| (*s).prev = prev);
        }
    }
    list.len -= 1;
}

/// # Safety
/// `page` is on no list and owned by the caller.
unsafe fn push_released(list: &mut *mut PageHeader, page: *mut PageHeader) {
    let old = *list;
    // SAFETY: the page is ours.
    unsafe {
        (*page).state.with_mut(|s| {
            (*s).next = old;
            (*s).on = OnList::Released;
        })
    };
    *list = page;
}

impl<T: SlabObject> Drop for Slab<'_, T> {
    fn drop(&mut self) {
        let inner = self.inner();
        // Pages still waiting for a grace period have callbacks that will
        // use this descriptor: we must not free it under them.
        assert!(
            inner.pages_pending_rcu.load(Ordering::Acquire) == 0,
            "slab '{}' dropped with {} pages waiting for an RCU grace period; \
             use Slab::destroy or run RcuCpu::barrier first",
            inner.name,
            inner.pages_pending_rcu.load(Ordering::Relaxed)
        );
        let nr_cpus = inner.nr_cpus;
        // Return cached objects to their pages, then free every empty page
        // at once: by the constructor's contract no reader remains. Pages
        // with live objects are leaked, as the objects still use them.
        let mut list = ptr::null_mut();
        {
            let mut node = inner.node.lock();
            for c in 0..nr_cpus {
                let mut objs = self.cpu_cache(c).objs.lock();
                let n = objs.count;
                for &obj in &objs.objs[..n] {
                    let page = self.page_of(obj);
                    let mut released = ptr::null_mut();
                    // SAFETY: cached objects are slots of live pages.
                    unsafe { self.put_on_page(&mut node, page, obj, &mut released) };
                    while !released.is_null() {
                        let p = released;
                        // SAFETY: released pages are ours.
                        released = unsafe { (*p).state.with(|s| (*s).next) };
                        // SAFETY: as above.
                        unsafe { push_released(&mut list, p) };
                    }
                }
                objs.count = 0;
            }
            while !node.empty.head.is_null() {
                let page = node.empty.head;
                // SAFETY: pages on the lists are live; `node` held.
                unsafe {
                    list_del(&mut node.empty, page);
                    push_released(&mut list, page);
                }
            }
        }
        while !list.is_null() {
            let page = list;
            // SAFETY: released pages are ours.
            list = unsafe { (*page).state.with(|s| (*s).next) };
            // SAFETY: the page left the cache; no reader remains.
            unsafe { free_page::<T>(page, 0) };
        }
        let (block, order) = inner.block;
        for c in 0..nr_cpus {
            // SAFETY: initialised in `create`, not used after this.
            unsafe { ptr::drop_in_place(inner.cpus.as_ptr().add(c)) };
        }
        // SAFETY: as above, for the descriptor; `inner` is not used after.
        unsafe { ptr::drop_in_place(self.inner.as_ptr()) };
        // SAFETY: the block was allocated in `create` with this order.
        unsafe { self.frames.free(0, block, order) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
