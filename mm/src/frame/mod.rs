//! The physical frame allocator: a binary buddy allocator with per-CPU
//! caches of order-0 frames.
//!
//! # Structure
//!
//! * **mem_map.** One [`PageMeta`] per frame of the managed span
//!   `[base_pfn, base_pfn + nr_frames)`, holes included (marked
//!   `RESERVED`), followed by the per-CPU caches. Both are carved at init
//!   from the first usable region large enough and reached through the
//!   direct map; the kernel has no heap.
//! * **Buddy free lists.** One doubly linked list per order `0..=MAX_ORDER`,
//!   threaded through `PageMeta::{next, prev}` by metadata index, so a
//!   buddy can be unlinked in O(1) when it merges. A free block's head has
//!   `BUDDY` and its order; every other frame of the block has no flags.
//!   Blocks are aligned to their size in *physical* frame numbers, and the
//!   buddy of the block at `pfn` of order `k` is `pfn ^ (1 << k)`. One lock,
//!   the zone lock, protects all lists and counters.
//! * **Per-CPU caches (pcp).** Each CPU keeps a LIFO list of free order-0
//!   frames (linked through `PageMeta::next`, flagged `PCP`). An order-0
//!   allocation or free touches only its CPU's cache; when the cache runs
//!   empty it refills `batch` frames from the buddy under the zone lock, and
//!   when it grows past `high` it returns `batch` frames.
//!
//! # Lock order
//!
//! `pcp[cpu].lock` → `zone`. The zone lock is never held while taking a
//! pcp lock. Draining another CPU's cache (`drain_cpu`, the out-of-memory
//! retry) takes that CPU's pcp lock, so a cache is never touched unlocked.
//!
//! # Cache lines written per operation
//!
//! (For the per-fault shared-line accounting of issue 8.) `PageMeta` is 32
//! bytes, so the metadata of four neighbouring frames shares a 128-byte
//! line; the "frame's metadata" below is that line.
//!
//! * order-0 `alloc`, pcp hit: this CPU's `Pcp` (lock word, list head and
//!   count: one padded line, written only by this CPU except when another
//!   CPU drains it) and the allocated frame's metadata (`flags`,
//!   `refcount`). The frame came off this CPU's list, so in steady state
//!   this CPU was the last to write that metadata too.
//! * order-0 `free`, pcp hit: this CPU's `Pcp` and the freed frame's
//!   metadata (`flags`, `refcount`, `next`).
//! * pcp refill/drain and every order > 0 operation: the zone lock line,
//!   the free-list heads and counters (one line), and the metadata of every
//!   frame linked, unlinked, split or merged — shared lines.
//! * `alloc_zeroed` additionally writes the frame itself.
//!
//! # Errors and checks
//!
//! Running out of memory is [`AllocError::OutOfMemory`], after draining
//! every CPU's cache into the buddy and retrying once. Freeing a frame this
//! allocator does not manage fails an `assert!` (indexing outside the
//! metadata array would corrupt memory). Double frees, wrong orders, and
//! freeing frames that are still referenced, mapped or owned by a slab fail
//! `debug_assert!`s naming the frame and what was wrong.

mod meta;

use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};

use meta::NIL;
pub use meta::{PageFlags, PageMeta};

use crate::addr::{Frame, PhysAddr, PAGE_SIZE};
use crate::cpu::{CachePadded, CpuId, MAX_CPUS};
use crate::phys::DirectMap;
use crate::sync::SpinLock;
use crate::sync::{AtomicU32, Ordering};

/// Largest block order: 2^10 frames = 4 MiB.
pub const MAX_ORDER: u32 = 10;
/// Number of buddy free lists.
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;

/// Per-CPU cache sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameConfig {
    /// CPUs that will call the allocator, `1..=MAX_CPUS`; CPU ids are
    /// `0..nr_cpus`.
    pub nr_cpus: usize,
    /// Frames moved between a CPU cache and the buddy at a time.
    pub pcp_batch: u32,
    /// A CPU cache holding more than this many frames returns `pcp_batch`
    /// of them. `0` disables the per-CPU caches (every operation takes the
    /// zone lock), for tests and for measuring what the caches buy.
    pub pcp_high: u32,
}

impl FrameConfig {
    /// Defaults: batches of 16, at most 64 frames (256 KiB) per CPU.
    pub const fn new(nr_cpus: usize) -> Self {
        FrameConfig {
            nr_cpus,
            pcp_batch: 16,
            pcp_high: 64,
        }
    }
}

/// Why the allocator could not be built over a memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// `nr_cpus` is zero or above [`MAX_CPUS`].
    BadCpuCount(usize),
    /// `pcp_high` is non-zero but `pcp_batch` is zero or above `pcp_high`.
    BadPcpLimits { batch: u32, high: u32 },
    /// Region `index` has `start >= end`.
    EmptyRegion { index: usize },
    /// Region `index` starts before the end of the previous one.
    UnsortedRegions { index: usize },
    /// Region `index` is not (entirely) inside the direct map.
    NotDirectMapped { index: usize },
    /// No region holds a whole page.
    NoUsableMemory,
    /// The span from the lowest to the highest frame has more frames than
    /// the metadata index can name.
    TooManyFrames { frames: u64 },
    /// No single region can hold the metadata array and CPU caches.
    NoRoomForMetadata { bytes: u64 },
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            InitError::BadCpuCount(n) => write!(f, "bad CPU count {n} (1..={MAX_CPUS})"),
            InitError::BadPcpLimits { batch, high } => {
                write!(f, "bad per-CPU cache limits: batch {batch}, high {high}")
            }
            InitError::EmptyRegion { index } => write!(f, "memory region {index} is empty"),
            InitError::UnsortedRegions { index } => {
                write!(
                    f,
                    "memory region {index} overlaps or precedes the previous one"
                )
            }
            InitError::NotDirectMapped { index } => {
                write!(f, "memory region {index} is outside the direct map")
            }
            InitError::NoUsableMemory => f.write_str("no usable page in the memory map"),
            InitError::TooManyFrames { frames } => write!(f, "frame span too large: {frames}"),
            InitError::NoRoomForMetadata { bytes } => {
                write!(f, "no region can hold {bytes} bytes of frame metadata")
            }
        }
    }
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No free block of this order, even after draining the CPU caches.
    OutOfMemory { order: u32 },
    /// The order is above [`MAX_ORDER`].
    BadOrder(u32),
    /// The CPU id is not below the configured `nr_cpus`.
    BadCpu(CpuId),
}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            AllocError::OutOfMemory { order } => write!(f, "out of memory (order {order})"),
            AllocError::BadOrder(o) => write!(f, "bad order {o} (max {MAX_ORDER})"),
            AllocError::BadCpu(c) => write!(f, "bad CPU id {c}"),
        }
    }
}

/// A snapshot of the allocator's accounting. Exact when no allocation or
/// free runs concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames handed to the buddy at init (excludes holes and metadata).
    pub managed_pages: u64,
    /// Frames holding the metadata array and CPU caches.
    pub metadata_pages: u64,
    /// Free blocks on each buddy list.
    pub free_blocks: [u64; NR_ORDERS],
    /// Free frames in the buddy: `sum(free_blocks[k] << k)`.
    pub buddy_free_pages: u64,
    /// Free frames sitting in per-CPU caches.
    pub pcp_pages: u64,
    /// `buddy_free_pages + pcp_pages`.
    pub free_pages: u64,
    /// `managed_pages - free_pages`.
    pub allocated_pages: u64,
}

/// Buddy free lists; protected by the zone lock.
struct FreeArea {
    heads: [u32; NR_ORDERS],
    nr_free: [u64; NR_ORDERS],
}

/// One CPU's cache of free order-0 frames.
struct Pcp {
    /// LIFO list through `PageMeta::next`: (head index, length).
    list: SpinLock<PcpList>,
    /// Mirror of `list.count` for lock-free statistics; written only under
    /// `list`'s lock.
    count: AtomicU32,
}

struct PcpList {
    head: u32,
    count: u32,
}

/// The physical frame allocator. See the module documentation.
pub struct FrameAllocator {
    dmap: DirectMap,
    mem_map: NonNull<PageMeta>,
    base_pfn: u64,
    nr_frames: u32,
    zone: SpinLock<FreeArea>,
    pcp: NonNull<CachePadded<Pcp>>,
    nr_cpus: usize,
    pcp_batch: u32,
    pcp_high: u32,
    managed_pages: u64,
    metadata: (Frame, u64),
}

// SAFETY: all shared state is reached through atomics and spin locks (the
// metadata array, the CPU caches, the zone); the raw pointers point into
// managed memory that the allocator owns for its lifetime.
unsafe impl Send for FrameAllocator {}
// SAFETY: as above.
unsafe impl Sync for FrameAllocator {}

impl FrameAllocator {
    /// Builds the allocator over the usable RAM `regions` (sorted,
    /// non-overlapping `[start, end)` physical byte ranges; partial pages
    /// at either end are ignored).
    ///
    /// # Safety
    ///
    /// Every byte of every region is unused RAM, reachable through `dmap`,
    /// and from now on owned by the allocator: nothing else reads or writes
    /// it except through frames the allocator hands out. The memory behind
    /// `dmap` outlives the allocator.
    pub unsafe fn new(
        dmap: DirectMap,
        regions: &[(u64, u64)],
        cfg: FrameConfig,
    ) -> Result<Self, InitError> {
        if cfg.nr_cpus == 0 || cfg.nr_cpus > MAX_CPUS {
            return Err(InitError::BadCpuCount(cfg.nr_cpus));
        }
        if cfg.pcp_high != 0 && (cfg.pcp_batch == 0 || cfg.pcp_batch > cfg.pcp_high) {
            return Err(InitError::BadPcpLimits {
                batch: cfg.pcp_batch,
                high: cfg.pcp_high,
            });
        }
        let mut prev_end = 0u64;
        for (index, &(start, end)) in regions.iter().enumerate() {
            if start >= end {
                return Err(InitError::EmptyRegion { index });
            }
            if index > 0 && start < prev_end {
                return Err(InitError::UnsortedRegions { index });
            }
            if !dmap.covers(PhysAddr::new(start), end - start) {
                return Err(InitError::NotDirectMapped { index });
            }
            prev_end = end;
        }
        let page = PAGE_SIZE as u64;
        // Whole frames of each region, as [first pfn, end pfn).
        let frames_of = |(s, e): (u64, u64)| (s.div_ceil(page), e / page);
        let mut usable = regions
            .iter()
            .map(|&r| frames_of(r))
            .filter(|&(s, e)| s < e);
        let (base_pfn, first_end) = usable.next().ok_or(InitError::NoUsableMemory)?;
        let end_pfn = usable.next_back().map_or(first_end, |(_, e)| e);
        let span = end_pfn - base_pfn;
        if span >= u64::from(NIL) {
            return Err(InitError::TooManyFrames { frames: span });
        }

        // Layout of the carve-out: mem_map, then the CPU caches.
        let pcp_off = (span * size_of::<PageMeta>() as u64)
            .next_multiple_of(align_of::<CachePadded<Pcp>>() as u64);
        let meta_bytes = pcp_off + (cfg.nr_cpus * size_of::<CachePadded<Pcp>>()) as u64;
        let meta_frames = meta_bytes.div_ceil(page);
        let carve_pfn = regions
            .iter()
            .map(|&r| frames_of(r))
            .find(|&(s, e)| s < e && e - s >= meta_frames)
            .map(|(s, _)| s)
            .ok_or(InitError::NoRoomForMetadata { bytes: meta_bytes })?;

        let base = dmap.to_virt_unchecked(Frame::from_pfn(carve_pfn).start());
        let mem_map = base.cast::<PageMeta>();
        for i in 0..span as usize {
            // SAFETY: the carve-out is `meta_frames` whole frames of usable, direct-mapped RAM that we own (caller's contract); entry `i` lies inside it and is suitably aligned (page-aligned base, 32-byte entries).
            unsafe { ptr::write(mem_map.as_ptr().add(i), PageMeta::new_reserved()) };
        }
        // SAFETY: `pcp_off` is inside the carve-out and 128-byte aligned.
        let pcp = unsafe { base.add(pcp_off as usize) }.cast::<CachePadded<Pcp>>();
        for c in 0..cfg.nr_cpus {
            let p = Pcp {
                list: SpinLock::new(PcpList {
                    head: NIL,
                    count: 0,
                }),
                count: AtomicU32::new(0),
            };
            // SAFETY: entry `c` lies inside the carve-out (sized for `nr_cpus` entries) and is aligned.
            unsafe { ptr::write(pcp.as_ptr().add(c), CachePadded(p)) };
        }

        let mut fa = FrameAllocator {
            dmap,
            mem_map,
            base_pfn,
            nr_frames: span as u32,
            zone: SpinLock::new(FreeArea {
                heads: [NIL; NR_ORDERS],
                nr_free: [0; NR_ORDERS],
            }),
            pcp,
            nr_cpus: cfg.nr_cpus,
            pcp_batch: cfg.pcp_batch,
            pcp_high: cfg.pcp_high,
            managed_pages: 0,
            metadata: (Frame::from_pfn(carve_pfn), meta_frames),
        };
        let mut managed = 0;
        {
            let mut zone = fa.zone.lock();
            for &r in regions {
                let (mut s, e) = frames_of(r);
                if s == carve_pfn {
                    s += meta_frames;
                }
                // Unreserve first so that merging sees every frame of the
                // region as manageable, then free in maximal aligned blocks.
                for pfn in s..e {
                    fa.meta_at(fa.index(pfn)).set_state(PageFlags::empty(), 0);
                }
                let mut pfn = s;
                while pfn < e {
                    let mut order = pfn.trailing_zeros().min(MAX_ORDER);
                    while pfn + (1 << order) > e {
                        order -= 1;
                    }
                    fa.free_block_locked(&mut zone, fa.index(pfn), order);
                    managed += 1 << order;
                    pfn += 1 << order;
                }
            }
        }
        fa.managed_pages = managed;
        Ok(fa)
    }

    /// Allocates `2^order` contiguous, naturally aligned frames. The head
    /// frame's reference count is 1.
    ///
    /// Order 0 is served from `cpu`'s cache when it can be (see the module
    /// documentation for what that writes). On failure every CPU's cache is
    /// drained into the buddy and the allocation retried once.
    pub fn alloc(&self, cpu: CpuId, order: u32) -> Result<Frame, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::BadOrder(order));
        }
        if cpu >= self.nr_cpus {
            return Err(AllocError::BadCpu(cpu));
        }
        let idx = if order == 0 && self.pcp_high != 0 {
            self.pcp_alloc(cpu)
        } else {
            self.zone_alloc(order)
        };
        let idx = match idx {
            Some(i) => i,
            None => {
                // Cached order-0 frames may be all that is left, or may be
                // what keeps buddies from merging into a large block.
                self.drain_all();
                self.zone_alloc(order)
                    .ok_or(AllocError::OutOfMemory { order })?
            }
        };
        let m = self.meta_at(idx);
        m.set_state(PageFlags::ALLOCATED, order);
        m.set_refcount(1);
        Ok(self.frame_at(idx))
    }

    /// [`Self::alloc`], with the block zeroed through the direct map.
    pub fn alloc_zeroed(&self, cpu: CpuId, order: u32) -> Result<Frame, AllocError> {
        let f = self.alloc(cpu, order)?;
        let p = self.dmap.to_virt_unchecked(f.start());
        // SAFETY: the block was just allocated to us: `PAGE_SIZE << order` bytes of direct-mapped RAM nobody else uses.
        unsafe { ptr::write_bytes(p.as_ptr(), 0, PAGE_SIZE << order) };
        Ok(f)
    }

    /// Frees a block allocated with [`Self::alloc`] and the same `order`.
    /// Order-0 frames go to `cpu`'s cache.
    ///
    /// # Safety
    ///
    /// The caller owns the block: it came from this allocator with this
    /// order, nobody else holds a reference (the refcount is 0 or 1), it is
    /// not mapped, and nothing accesses it after this call.
    pub unsafe fn free(&self, cpu: CpuId, frame: Frame, order: u32) {
        let idx = self.check_free(frame, order);
        let m = self.meta_at(idx);
        m.set_refcount(0);
        if order == 0 && self.pcp_high != 0 && cpu < self.nr_cpus {
            self.pcp_free(cpu, idx);
        } else {
            debug_assert!(cpu < self.nr_cpus, "free on bad CPU id {cpu}");
            let mut zone = self.zone.lock();
            self.free_block_locked(&mut zone, idx, order);
        }
    }

    /// Drops one reference to the block headed by `frame`; frees it (to
    /// `cpu`'s cache for order 0) if that was the last. Returns whether it
    /// was freed.
    ///
    /// # Safety
    ///
    /// The caller owns one reference to a block of this order from this
    /// allocator and does not use the block after dropping it; if it is the
    /// last reference, the block is unmapped.
    pub unsafe fn put(&self, cpu: CpuId, frame: Frame, order: u32) -> bool {
        let m = self
            .meta(frame)
            .expect("put of a frame this allocator does not manage");
        if m.put_ref() {
            // SAFETY: the reference count reached zero: we are the last owner (put_ref's Acquire fence orders every other owner's accesses before this), and the caller vouches for the rest.
            unsafe { self.free(cpu, frame, order) };
            true
        } else {
            false
        }
    }

    /// Returns every frame in `cpu`'s cache to the buddy (CPU offline,
    /// tests, out-of-memory retry).
    pub fn drain_cpu(&self, cpu: CpuId) {
        if cpu >= self.nr_cpus {
            return;
        }
        let pcp = self.pcp(cpu);
        let mut list = pcp.list.lock();
        let n = list.count;
        self.pcp_to_buddy(&mut list, n);
        pcp.count.store(list.count, Ordering::Relaxed);
    }

    /// [`Self::drain_cpu`] for every CPU.
    pub fn drain_all(&self) {
        for cpu in 0..self.nr_cpus {
            self.drain_cpu(cpu);
        }
    }

    /// Accounting snapshot.
    pub fn stats(&self) -> FrameStats {
        let (free_blocks, buddy_free_pages) = {
            let zone = self.zone.lock();
            let pages = (0..NR_ORDERS).map(|k| zone.nr_free[k] << k).sum();
            (zone.nr_free, pages)
        };
        let pcp_pages = (0..self.nr_cpus)
            .map(|c| u64::from(self.pcp(c).count.load(Ordering::Relaxed)))
            .sum();
        let free_pages = buddy_free_pages + pcp_pages;
        FrameStats {
            managed_pages: self.managed_pages,
            metadata_pages: self.metadata.1,
            free_blocks,
            buddy_free_pages,
            pcp_pages,
            free_pages,
            allocated_pages: self.managed_pages - free_pages,
        }
    }

    /// The metadata of `frame`, or `None` if it is outside the managed span.
    #[inline]
    pub fn meta(&self, frame: Frame) -> Option<&PageMeta> {
        let i = frame.pfn().checked_sub(self.base_pfn)?;
        (i < u64::from(self.nr_frames)).then(|| self.meta_at(i as u32))
    }

    /// The frame whose metadata is `meta` (inverse of [`Self::meta`]).
    pub fn frame_of(&self, meta: &PageMeta) -> Frame {
        let off = (meta as *const PageMeta as usize) - self.mem_map.as_ptr() as usize;
        debug_assert!(off / size_of::<PageMeta>() < self.nr_frames as usize);
        self.frame_at((off / size_of::<PageMeta>()) as u32)
    }

    /// Whether `frame` is RAM this allocator hands out (not a hole, not the
    /// metadata, not outside the span).
    pub fn manages(&self, frame: Frame) -> bool {
        self.meta(frame)
            .is_some_and(|m| !m.flags().contains(PageFlags::RESERVED))
    }

    /// The direct map the allocator was built over.
    pub fn direct_map(&self) -> &DirectMap {
        &self.dmap
    }

    /// Virtual address of a managed frame, through the direct map.
    pub fn frame_ptr(&self, frame: Frame) -> Option<NonNull<u8>> {
        self.manages(frame)
            .then(|| self.dmap.to_virt_unchecked(frame.start()))
    }

    /// CPUs the allocator was configured for.
    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    // ---- internals ----------------------------------------------------

    #[inline(always)]
    fn index(&self, pfn: u64) -> u32 {
        debug_assert!(pfn >= self.base_pfn && pfn - self.base_pfn < u64::from(self.nr_frames));
        (pfn - self.base_pfn) as u32
    }

    #[inline(always)]
    fn frame_at(&self, idx: u32) -> Frame {
        Frame::from_pfn(self.base_pfn + u64::from(idx))
    }

    #[inline(always)]
    fn meta_at(&self, idx: u32) -> &PageMeta {
        debug_assert!(idx < self.nr_frames);
        // SAFETY: `idx < nr_frames` (checked by every caller: indices come from `index`, from free lists built from valid indices, or from `check_free`), and entries `0..nr_frames` were initialised in `new` and live as long as `self`.
        unsafe { &*self.mem_map.as_ptr().add(idx as usize) }
    }

    #[inline(always)]
    fn pcp(&self, cpu: CpuId) -> &Pcp {
        debug_assert!(cpu < self.nr_cpus);
        // SAFETY: `cpu < nr_cpus` (callers check), entries `0..nr_cpus` were initialised in `new` and live as long as `self`.
        unsafe { &*self.pcp.as_ptr().add(cpu) }
    }

    /// Validates a free and returns the frame's metadata index.
    fn check_free(&self, frame: Frame, order: u32) -> u32 {
        let i = frame.pfn().wrapping_sub(self.base_pfn);
        assert!(
            i < u64::from(self.nr_frames) && order <= MAX_ORDER,
            "freeing foreign {frame:?} (order {order}): not managed by this frame allocator"
        );
        let idx = i as u32;
        let m = self.meta_at(idx);
        let raw = m.raw();
        debug_assert!(
            !PageMeta::raw_is(raw, PageFlags::RESERVED),
            "freeing foreign {frame:?}: it is reserved (hole or allocator metadata)"
        );
        debug_assert!(
            !PageMeta::raw_is(raw, PageFlags::BUDDY | PageFlags::PCP),
            "double free of {frame:?} (order {order}): it is already free ({:?})",
            m.flags()
        );
        debug_assert!(
            PageMeta::raw_is(raw, PageFlags::ALLOCATED),
            "double free of {frame:?} (order {order}): it is not the head of an allocated \
             block (freed already and merged, or a tail frame)"
        );
        debug_assert!(
            PageMeta::raw_order(raw) == order,
            "freeing {frame:?} with order {order}, but it was allocated with order {}",
            PageMeta::raw_order(raw)
        );
        debug_assert!(
            !PageMeta::raw_is(raw, PageFlags::SLAB),
            "freeing {frame:?} while it still belongs to a slab"
        );
        debug_assert!(
            m.ref_count() <= 1,
            "freeing {frame:?} with {} references outstanding",
            m.ref_count()
        );
        debug_assert!(
            m.map_count() == 0,
            "freeing {frame:?} while mapped {} times",
            m.map_count()
        );
        idx
    }

    fn pcp_alloc(&self, cpu: CpuId) -> Option<u32> {
        let pcp = self.pcp(cpu);
        let mut list = pcp.list.lock();
        if list.count == 0 {
            let mut zone = self.zone.lock();
            for _ in 0..self.pcp_batch {
                let Some(idx) = self.alloc_block_locked(&mut zone, 0) else {
                    break;
                };
                let m = self.meta_at(idx);
                m.set_state(PageFlags::PCP, 0);
                m.next.store(list.head, Ordering::Relaxed);
                list.head = idx;
                list.count += 1;
            }
        }
        if list.count == 0 {
            pcp.count.store(0, Ordering::Relaxed);
            return None;
        }
        let idx = list.head;
        list.head = self.meta_at(idx).next.load(Ordering::Relaxed);
        list.count -= 1;
        pcp.count.store(list.count, Ordering::Relaxed);
        Some(idx)
    }

    fn pcp_free(&self, cpu: CpuId, idx: u32) {
        let pcp = self.pcp(cpu);
        let mut list = pcp.list.lock();
        let m = self.meta_at(idx);
        m.set_state(PageFlags::PCP, 0);
        m.next.store(list.head, Ordering::Relaxed);
        list.head = idx;
        list.count += 1;
        if list.count > self.pcp_high {
            self.pcp_to_buddy(&mut list, self.pcp_batch);
        }
        pcp.count.store(list.count, Ordering::Relaxed);
    }

    /// Moves up to `n` frames from a (locked) CPU cache to the buddy.
    fn pcp_to_buddy(&self, list: &mut PcpList, n: u32) {
        if n == 0 || list.count == 0 {
            return;
        }
        let mut zone = self.zone.lock();
        for _ in 0..n.min(list.count) {
            let idx = list.head;
            list.head = self.meta_at(idx).next.load(Ordering::Relaxed);
            list.count -= 1;
            self.free_block_locked(&mut zone, idx, 0);
        }
    }

    fn zone_alloc(&self, order: u32) -> Option<u32> {
        let mut zone = self.zone.lock();
        self.alloc_block_locked(&mut zone, order)
    }

    /// Takes a block of `order` off the free lists, splitting a larger one
    /// if needed. The head's state is left for the caller to set.
    fn alloc_block_locked(&self, zone: &mut FreeArea, order: u32) -> Option<u32> {
        let mut k = (order..=MAX_ORDER).find(|&k| zone.heads[k as usize] != NIL)?;
        let idx = zone.heads[k as usize];
        self.list_del(zone, idx, k);
        // Split: hand the upper half back at each order down to `order`.
        while k > order {
            k -= 1;
            let upper = idx + (1 << k);
            self.meta_at(upper).set_state(PageFlags::BUDDY, k);
            self.list_add(zone, upper, k);
        }
        self.meta_at(idx).set_state(PageFlags::empty(), order);
        Some(idx)
    }

    /// Puts the block at `idx` of `order` on the free lists, merging it
    /// with free buddies as far as possible.
    fn free_block_locked(&self, zone: &mut FreeArea, idx: u32, order: u32) {
        let end = self.base_pfn + u64::from(self.nr_frames);
        let mut pfn = self.base_pfn + u64::from(idx);
        let mut k = order;
        self.meta_at(idx).set_state(PageFlags::empty(), 0);
        while k < MAX_ORDER {
            let buddy = pfn ^ (1 << k);
            if buddy < self.base_pfn || buddy >= end {
                break;
            }
            let bidx = (buddy - self.base_pfn) as u32;
            let raw = self.meta_at(bidx).raw();
            // Only the head of a free block of exactly this order merges:
            // a smaller free block inside the buddy, an allocated or
            // cached frame, or a reserved one stops the merge.
            if !PageMeta::raw_is(raw, PageFlags::BUDDY) || PageMeta::raw_order(raw) != k {
                break;
            }
            self.list_del(zone, bidx, k);
            self.meta_at(bidx).set_state(PageFlags::empty(), 0);
            pfn = pfn.min(buddy);
            k += 1;
        }
        let head = (pfn - self.base_pfn) as u32;
        self.meta_at(head).set_state(PageFlags::BUDDY, k);
        self.list_add(zone, head, k);
    }

    fn list_add(&self, zone: &mut FreeArea, idx: u32, order: u32) {
        let o = order as usize;
        let m = self.meta_at(idx);
        let head = zone.heads[o];
        m.next.store(head, Ordering::Relaxed);
        m.prev.store(NIL, Ordering::Relaxed);
        if head != NIL {
            self.meta_at(head).prev.store(idx, Ordering::Relaxed);
        }
        zone.heads[o] = idx;
        zone.nr_free[o] += 1;
    }

    fn list_del(&self, zone: &mut FreeArea, idx: u32, order: u32) {
        let o = order as usize;
        let m = self.meta_at(idx);
        let next = m.next.load(Ordering::Relaxed);
        let prev = m.prev.load(Ordering::Relaxed);
        if prev == NIL {
            debug_assert_eq!(zone.heads[o], idx, "free list corrupted at order {order}");
            zone.heads[o] = next;
        } else {
            self.meta_at(prev).next.store(next, Ordering::Relaxed);
        }
        if next != NIL {
            self.meta_at(next).prev.store(prev, Ordering::Relaxed);
        }
        zone.nr_free[o] -= 1;
    }
}

impl Drop for FrameAllocator {
    fn drop(&mut self) {
        // The metadata lives in managed memory, which the allocator does
        // not own; drop the values in place (a no-op unless the atomics
        // need it, as loom's do).
        if core::mem::needs_drop::<PageMeta>() {
            for i in 0..self.nr_frames as usize {
                // SAFETY: entry `i` was initialised in `new` and is not used after this.
                unsafe { ptr::drop_in_place(self.mem_map.as_ptr().add(i)) };
            }
        }
        if core::mem::needs_drop::<CachePadded<Pcp>>() {
            for c in 0..self.nr_cpus {
                // SAFETY: as above, for the CPU caches.
                unsafe { ptr::drop_in_place(self.pcp.as_ptr().add(c)) };
            }
        }
    }
}

#[cfg(any(test, feature = "std"))]
pub use host::HostFrames;

#[cfg(any(test, feature = "std"))]
mod host {
    use super::*;
    use crate::phys::HostMemory;

    /// A frame allocator over its own [`HostMemory`], for tests and
    /// benches. Dereferences to the allocator.
    pub struct HostFrames {
        // Field order is drop order: the allocator goes before its memory.
        frames: FrameAllocator,
        mem: HostMemory,
    }

    impl HostFrames {
        /// `bytes` of host memory, all usable, with the default CPU cache
        /// sizing for `nr_cpus`.
        pub fn new(bytes: usize, nr_cpus: usize) -> Self {
            Self::with_config(bytes, &[], FrameConfig::new(nr_cpus))
        }

        /// `bytes` of host memory, of which only the byte ranges `usable`
        /// (relative to the start of the memory, sorted) are given to the
        /// allocator; an empty list means all of it. Panics on bad input:
        /// this is a test fixture.
        pub fn with_config(bytes: usize, usable: &[(u64, u64)], cfg: FrameConfig) -> Self {
            let mem = HostMemory::new(bytes);
            let (base, end) = mem.phys_range();
            let mut regions = [(0u64, 0u64); 64];
            let n = if usable.is_empty() {
                regions[0] = (base, end);
                1
            } else {
                for (r, &(s, e)) in regions.iter_mut().zip(usable) {
                    *r = (base + s, base + e);
                }
                usable.len()
            };
            // SAFETY: the regions lie inside `mem`, which nothing else uses and which `HostFrames` drops after the allocator.
            let frames = unsafe { FrameAllocator::new(mem.direct_map(), &regions[..n], cfg) }
                .expect("host frame allocator");
            HostFrames { frames, mem }
        }

        /// The backing memory.
        pub fn memory(&self) -> &HostMemory {
            &self.mem
        }
    }

    impl core::ops::Deref for HostFrames {
        type Target = FrameAllocator;
        fn deref(&self) -> &FrameAllocator {
            &self.frames
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
