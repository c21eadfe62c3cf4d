//! The arch-neutral page table: a 4-level radix tree of 512-entry tables
//! mapping the user half of an address space, generic over the PTE
//! encoding.
//!
//! One implementation serves the host tests ([`SoftPte`]), x86_64, whose
//! MMU walks the tree in hardware ([`X86_64Pte`], the root goes into CR3),
//! and MIPS64 Octeon, whose TLB refill handler walks it in software
//! ([`Mips64Pte`], where that handler is documented).
//!
//! # Structure
//!
//! Every table is one 4 KiB frame from the [`FrameAllocator`], reached
//! through its direct map, holding 512 [`AtomicU64`] entries. Levels are
//! numbered like x86's: the root is level 4 (entries cover 512 GiB), level
//! 1 holds the leaves (entries cover one page). Entry `i` of a level-`L`
//! table is selected by VA bits `12 + 9(L-1) .. 12 + 9L`. An entry is `0`
//! (empty), a table entry (levels 4..=2) or a leaf (level 1); there are no
//! huge pages. Tables are never freed while reachable: only
//! [`PageTable::free_tables`] and [`PageTable::destroy`] unlink them, and
//! they free them through a [`TlbGather`], after the TLB shootdown.
//!
//! # Concurrency
//!
//! * **Fault path (lock-free).** [`PageTable::install_leaf`],
//!   [`PageTable::compare_exchange_leaf`] and [`PageTable::lookup`] may run
//!   on any number of CPUs at once, and alongside the writer-side operations
//!   on other ranges, with no lock: a fault takes no lock shared by the
//!   address space and writes no shared line but the leaf entry itself
//!   (and, once per new table, the parent entry and the table counters'
//!   own line). Missing tables are allocated, zeroed and published with a
//!   compare-and-swap; the loser of a race frees its (never published)
//!   table and continues through the winner's. Leaves are installed only
//!   into empty slots, so of several faults on one page exactly one
//!   installs and the others see [`InstallError::AlreadyPresent`].
//! * **Writer side.** [`PageTable::unmap_range`], [`PageTable::protect_range`],
//!   [`PageTable::copy_range_for_fork`] and [`PageTable::free_tables`] run
//!   with the mmap lock held for writing and the VMAs covering the range
//!   write-locked, so no fault runs in their range; faults elsewhere go on.
//!   Leaf updates are still atomic read-modify-writes (so a concurrent x86
//!   A/D update or a contract violation loses nothing and frees nothing
//!   twice). `free_tables` is `unsafe`: a walk inside a table it frees would
//!   be a use after free.
//!
//! # Memory ordering
//!
//! * (P1) *Table publication.* A new table is zeroed with plain stores, then
//!   linked with a compare-and-swap whose success ordering is Release. Every
//!   walker (install, lookup, the writer side) reads table entries with
//!   Acquire, which pairs with that Release: a walker that finds the table
//!   sees it zeroed, never the frame's previous contents. The loser of the
//!   race reads the winner's entry with the CAS's Acquire failure ordering,
//!   for the same reason. Hardware walkers: x86 stores are seen in order
//!   (TSO), and the MIPS refill handler's loads are address-dependent on the
//!   entry they read, which MIPS orders (see [`mips64`]).
//! * (P2) *Leaf publication.* The fault path fills a frame (zeroes it, or
//!   copies the old page on COW) and then installs the leaf with a Release
//!   CAS; `lookup` and the losers' failure loads are Acquire, so whoever
//!   finds the PTE finds the frame's contents. Unmapping and replacing read
//!   the old leaf with Acquire, so the installer's writes to the frame are
//!   ordered before the frame goes back to its owner (user writes through
//!   the TLB are ordered by the flush, P3).
//! * (P3) *Unlink before free.* Entries are cleared before what they pointed
//!   to is gathered, and the gather frees only after the TLB flush, whose
//!   cross-CPU handshake orders every other CPU's last use before the free.
//!
//! # Use
//!
//! ```
//! use mm::addr::Frame;
//! use mm::frame::HostFrames;
//! use mm::pgtable::{InstallError, PageTable, Prot, Pte, RecordingFlush, SoftPte, TlbGather};
//! use mm::vma::lock::MmId;
//!
//! let frames = HostFrames::new(1 << 20, 1);
//! let pt = PageTable::<SoftPte>::new(&frames, 0).unwrap();
//!
//! // A fault (under the VMA read lock): fill a frame, then install it.
//! let page = frames.alloc_zeroed(0, 0).unwrap();
//! let pte = Pte::leaf(page, Prot::READ | Prot::WRITE | Prot::USER);
//! match pt.install_leaf(0x40_0000, pte, 0) {
//!     Ok(()) => {}
//!     // Another CPU faulted the page in first: use its page, drop ours.
//!     // SAFETY: `page` was never mapped.
//!     Err(InstallError::AlreadyPresent(_)) => unsafe { frames.free(0, page, 0) },
//!     Err(e) => panic!("{e:?}"),
//! }
//! assert_eq!(pt.lookup(0x40_0123), pte);
//!
//! // munmap of the VMA [0x40_0000, 0x40_1000), alone in the address space
//! // (mmap write lock held, VMA write-locked and detached).
//! let flush = RecordingFlush::new(); // the arch layer's TLB shootdown
//! let mut release = |f: Frame| {
//!     // SAFETY: the mapping's reference; the gather calls this only after
//!     // the flush.
//!     unsafe { frames.put(0, f, 0) };
//! };
//! let mut tlb = TlbGather::new(MmId::from_raw(1), 0, &flush, &frames, &mut release);
//! pt.unmap_range(0x40_0000, 0x40_1000, &mut tlb).unwrap();
//! // SAFETY: no VMA is left in [0, 2^47), so nothing walks the tables there.
//! unsafe { pt.free_tables(0x40_0000, 0x40_1000, 0, 1 << 47, &mut tlb) }.unwrap();
//! tlb.finish(); // flush, then free the page and the three tables
//! assert_eq!(pt.nr_tables(), 1);
//!
//! // exit
//! let mut tlb = TlbGather::new(MmId::from_raw(1), 0, &flush, &frames, &mut release);
//! pt.destroy(&mut tlb);
//! tlb.finish();
//! assert_eq!(frames.stats().allocated_pages, 0);
//! ```

mod gather;
pub mod mips64;
mod pte;
mod soft;
pub mod x86_64;

#[cfg(test)]
mod tests;

use core::fmt;
use core::marker::PhantomData;

#[cfg(any(test, feature = "std"))]
pub use gather::{FlushEvent, RecordingFlush};
pub use gather::{FlushRange, GatherStats, TlbFlush, TlbGather, PAGE_BATCH, TABLE_BATCH};
pub use mips64::Mips64Pte;
pub use pte::{Prot, Pte, PteFormat};
pub use soft::SoftPte;
pub use x86_64::X86_64Pte;

use crate::addr::{Frame, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::{CachePadded, CpuId};
use crate::frame::{AllocError, FrameAllocator};
use crate::sync::{injected, AtomicU64, AtomicUsize, Fault, Ordering};

/// Entries per table.
pub const ENTRIES: usize = 512;
/// Levels of tables (root = level `LEVELS`, leaves at level 1).
pub const LEVELS: u32 = 4;
/// Index bits per level.
const INDEX_BITS: u32 = 9;
/// Span of the whole tree: 2^48 bytes.
pub const TREE_SPAN: u64 = 1 << (PAGE_SHIFT + INDEX_BITS * LEVELS);

const PAGE: u64 = PAGE_SIZE as u64;

/// Bytes mapped by one entry of a level-`level` table.
#[inline(always)]
pub const fn entry_span(level: u32) -> u64 {
    1 << (PAGE_SHIFT + INDEX_BITS * (level - 1))
}

/// Index of `va`'s entry in a level-`level` table.
#[inline(always)]
const fn index(va: u64, level: u32) -> usize {
    ((va >> (PAGE_SHIFT + INDEX_BITS * (level - 1))) as usize) & (ENTRIES - 1)
}

/// One page-table page. `AtomicU64` has the size and alignment of `u64`
/// (also loom's, which is one index into its object store), so this is
/// exactly the 4 KiB the MMU reads.
#[repr(C, align(4096))]
struct Table {
    e: [AtomicU64; ENTRIES],
}

const _: () = assert!(core::mem::size_of::<Table>() == PAGE_SIZE);

/// Why a range operation failed. Nothing is changed by an operation that
/// returns `BadAddress` or `BadRange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTableError {
    /// The address is not page-aligned or not below the user limit.
    BadAddress(u64),
    /// The range is reversed, not page-aligned, beyond the user limit, or
    /// (for `free_tables`) not inside `[floor, ceiling)`.
    BadRange { start: u64, end: u64 },
    /// A table could not be allocated (what was done so far stays done).
    OutOfMemory,
    /// `copy_range_for_fork`: the destination already maps this address.
    Occupied(u64),
    /// `new`: the allocator hands out frames the PTE format cannot address.
    FramesOutOfRange { phys_end: u64 },
}

impl fmt::Display for PgTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PgTableError::BadAddress(va) => {
                write!(
                    f,
                    "bad user address {va:#x} (unaligned or beyond the limit)"
                )
            }
            PgTableError::BadRange { start, end } => write!(f, "bad range {start:#x}..{end:#x}"),
            PgTableError::OutOfMemory => f.write_str("out of memory for page tables"),
            PgTableError::Occupied(va) => write!(f, "destination already maps {va:#x}"),
            PgTableError::FramesOutOfRange { phys_end } => write!(
                f,
                "physical memory up to {phys_end:#x} is beyond the PTE format's reach"
            ),
        }
    }
}

impl From<AllocError> for PgTableError {
    fn from(_: AllocError) -> Self {
        PgTableError::OutOfMemory
    }
}

/// Why [`PageTable::install_leaf`] did not install.
pub enum InstallError<F: PteFormat> {
    /// The slot was not empty; this is what it held (another fault won).
    AlreadyPresent(Pte<F>),
    /// A missing table could not be allocated.
    OutOfMemory,
    /// The address is not page-aligned or not below the user limit.
    BadAddress(u64),
}

/// Why [`PageTable::compare_exchange_leaf`] did not exchange.
pub enum CmpxchgError<F: PteFormat> {
    /// The entry no longer held `old`; this is what it held
    /// ([`Pte::NONE`] if its tables do not even exist).
    Changed(Pte<F>),
    /// The address is not page-aligned or not below the user limit.
    BadAddress(u64),
}

impl<F: PteFormat> fmt::Debug for InstallError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::AlreadyPresent(p) => write!(f, "AlreadyPresent({p:?})"),
            InstallError::OutOfMemory => f.write_str("OutOfMemory"),
            InstallError::BadAddress(va) => write!(f, "BadAddress({va:#x})"),
        }
    }
}

impl<F: PteFormat> Clone for InstallError<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: PteFormat> Copy for InstallError<F> {}

impl<F: PteFormat> PartialEq for InstallError<F> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (InstallError::AlreadyPresent(a), InstallError::AlreadyPresent(b)) => a == b,
            (InstallError::OutOfMemory, InstallError::OutOfMemory) => true,
            (InstallError::BadAddress(a), InstallError::BadAddress(b)) => a == b,
            _ => false,
        }
    }
}

impl<F: PteFormat> Eq for InstallError<F> {}

impl<F: PteFormat> fmt::Debug for CmpxchgError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmpxchgError::Changed(p) => write!(f, "Changed({p:?})"),
            CmpxchgError::BadAddress(va) => write!(f, "BadAddress({va:#x})"),
        }
    }
}

impl<F: PteFormat> Clone for CmpxchgError<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: PteFormat> Copy for CmpxchgError<F> {}

impl<F: PteFormat> PartialEq for CmpxchgError<F> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CmpxchgError::Changed(a), CmpxchgError::Changed(b)) => a == b,
            (CmpxchgError::BadAddress(a), CmpxchgError::BadAddress(b)) => a == b,
            _ => false,
        }
    }
}

impl<F: PteFormat> Eq for CmpxchgError<F> {}

struct TableCounts {
    /// Tables in the tree, the root included.
    tables: AtomicUsize,
    /// Tables allocated by a fault that then lost the race to link them.
    races_lost: AtomicUsize,
}

/// A 4-level page table of format `F` over frames of one allocator. See the
/// module documentation.
pub struct PageTable<'a, F: PteFormat> {
    frames: &'a FrameAllocator,
    root: Frame,
    va_end: u64,
    /// Counters written only when a table is added or removed, on their
    /// own line: the fields above are read by every fault.
    counts: CachePadded<TableCounts>,
    destroyed: bool,
    _f: PhantomData<fn() -> F>,
}

impl<'a, F: PteFormat> PageTable<'a, F> {
    /// An empty page table covering `[0, F::USER_VA_END)`, its root
    /// allocated on `cpu`.
    ///
    /// The root's entries that cover addresses at or above the limit
    /// (`va_end`, rounded up to a root entry) are the arch layer's: this
    /// module zeroes them once here and never touches them again, so the
    /// arch may fill them (x86_64 copies the kernel's upper-half PML4
    /// entries into them: `arch::mmu::init_user_root`).
    pub fn new(frames: &'a FrameAllocator, cpu: CpuId) -> Result<Self, PgTableError> {
        Self::with_limit(frames, cpu, F::USER_VA_END)
    }

    /// An empty page table covering `[0, va_end)`, for an address space
    /// smaller than the format allows (a CPU with fewer virtual address
    /// bits). `va_end` must be page-aligned, non-zero and at most
    /// `F::USER_VA_END`.
    pub fn with_limit(
        frames: &'a FrameAllocator,
        cpu: CpuId,
        va_end: u64,
    ) -> Result<Self, PgTableError> {
        if va_end == 0 || !va_end.is_multiple_of(PAGE) || va_end > F::USER_VA_END.min(TREE_SPAN) {
            return Err(PgTableError::BadRange {
                start: 0,
                end: va_end,
            });
        }
        let phys_end = frames.direct_map().phys_end().as_u64();
        if phys_end > (F::MAX_PFN + 1) << PAGE_SHIFT {
            return Err(PgTableError::FramesOutOfRange { phys_end });
        }
        let pt = PageTable {
            frames,
            root: frames.alloc(cpu, 0)?,
            va_end,
            counts: CachePadded(TableCounts {
                tables: AtomicUsize::new(1),
                races_lost: AtomicUsize::new(0),
            }),
            destroyed: false,
            _f: PhantomData,
        };
        pt.prepare_table(pt.root);
        pt.zero_table(pt.root);
        Ok(pt)
    }

    /// Physical address of the root table (x86: CR3's address bits).
    pub fn root_phys(&self) -> PhysAddr {
        self.root.start()
    }

    /// The root as a table entry of this format: on MIPS the root's XKPHYS
    /// address, which the refill handler loads as the current "pgd".
    pub fn root_entry(&self) -> u64 {
        F::encode_table(self.root.start())
    }

    /// One past the highest mappable address.
    pub fn va_end(&self) -> u64 {
        self.va_end
    }

    /// Tables in the tree, the root included (a snapshot).
    pub fn nr_tables(&self) -> usize {
        self.counts.tables.load(Ordering::Relaxed)
    }

    /// How often a fault allocated a table and then found that another had
    /// linked one first (a snapshot; for tests and statistics).
    pub fn table_races_lost(&self) -> usize {
        self.counts.races_lost.load(Ordering::Relaxed)
    }

    /// The frame allocator tables come from.
    pub fn frames(&self) -> &'a FrameAllocator {
        self.frames
    }

    // ---- the fault path ------------------------------------------------

    /// Installs `pte` at `va` if nothing is mapped there, allocating missing
    /// tables on `cpu`. Lock-free; see the module documentation.
    ///
    /// `pte` must be a leaf ([`Pte::is_mapped`]); the frame's contents must
    /// be ready: the install publishes them (P2). On `AlreadyPresent` the
    /// caller still owns its frame. A table allocated for the install stays
    /// even if the install then fails.
    pub fn install_leaf(&self, va: u64, pte: Pte<F>, cpu: CpuId) -> Result<(), InstallError<F>> {
        assert!(pte.is_mapped(), "install_leaf of a non-leaf {pte:?}");
        if !self.page_ok(va) {
            return Err(InstallError::BadAddress(va));
        }
        let slot = self
            .walk_alloc(va, cpu)
            .map_err(|_| InstallError::OutOfMemory)?;
        // Release: publishes the frame's contents with the entry (P2); pairs
        // with the Acquire loads of `lookup`, of the failure path here, and
        // of the writer side (`unmap_range`'s swap, `protect_range`,
        // `copy_range_for_fork`). Acquire on failure: the caller may use the
        // winner's page, whose contents the winner's Release published.
        match slot.compare_exchange(0, pte.raw(), Ordering::Release, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(cur) => Err(InstallError::AlreadyPresent(Pte::from_raw(cur))),
        }
    }

    /// The entry mapping the page containing `va` ([`Pte::NONE`] if none, or
    /// if `va` is beyond the limit). Lock-free; the Acquire loads pair with
    /// the Release publications of tables (P1) and leaves (P2).
    pub fn lookup(&self, va: u64) -> Pte<F> {
        if va >= self.va_end {
            return Pte::NONE;
        }
        match self.walk(va) {
            // Acquire: pairs with the Release install in `install_leaf` /
            // `compare_exchange_leaf` (P2).
            Some(slot) => Pte::from_raw(slot.load(Ordering::Acquire)),
            None => Pte::NONE,
        }
    }

    /// Replaces the mapped leaf `old` at `va` by `new` if the entry still
    /// holds `old` (copy-on-write, permission upgrades). Lock-free.
    ///
    /// On success, if the old entry may be cached and `new` maps another
    /// frame or allows less ([`Pte::needs_flush_for`]), the page's range is
    /// added to `gather`; if the frame changed, the old frame is gathered
    /// too and reaches the gather's release callback after the flush. The
    /// exchange is AcqRel: Release publishes the new frame's contents (P2),
    /// Acquire orders the old frame's last accesses before its release.
    pub fn compare_exchange_leaf(
        &self,
        va: u64,
        old: Pte<F>,
        new: Pte<F>,
        gather: &mut TlbGather<'_>,
    ) -> Result<(), CmpxchgError<F>> {
        assert!(
            old.is_mapped() && new.is_mapped(),
            "compare_exchange_leaf {old:?} -> {new:?}: both must be leaves (install_leaf \
             fills empty slots)"
        );
        if !self.page_ok(va) {
            return Err(CmpxchgError::BadAddress(va));
        }
        let Some(slot) = self.walk(va) else {
            return Err(CmpxchgError::Changed(Pte::NONE));
        };
        slot.compare_exchange(old.raw(), new.raw(), Ordering::AcqRel, Ordering::Acquire)
            .map_err(|cur| CmpxchgError::Changed(Pte::from_raw(cur)))?;
        if old.needs_flush_for(new) {
            gather.add_range(va, va + PAGE);
        }
        if old.frame() != new.frame() {
            gather.add_page(F::leaf_frame(old.raw()));
        }
        Ok(())
    }

    // ---- the writer side -----------------------------------------------

    /// Unmaps every page in `[start, end)`. Each mapped frame reaches the
    /// gather's release callback once the gather has flushed the pages that
    /// were accessible. Returns the number of pages unmapped.
    ///
    /// The caller holds the mmap write lock and has write-locked the VMAs
    /// covering the range (see the module documentation). Tables stay; free
    /// them with [`Self::free_tables`].
    pub fn unmap_range(
        &self,
        start: u64,
        end: u64,
        gather: &mut TlbGather<'_>,
    ) -> Result<u64, PgTableError> {
        self.check_range(start, end)?;
        let mut n = 0;
        self.for_each_leaf_slot(start, end, &mut |va, slot| {
            // A Relaxed load first: most slots of a sparse range are empty
            // and should not be written. (No fault fills the range meanwhile:
            // its VMAs are write-locked.)
            if slot.load(Ordering::Relaxed) == 0 {
                return Ok(());
            }
            // Acquire: pairs with the Release install in `install_leaf` /
            // `compare_exchange_leaf` (P2), so the installer's writes to the
            // frame are ordered before its release.
            let old = Pte::<F>::from_raw(slot.swap(0, Ordering::Acquire));
            if let Some(frame) = old.frame() {
                if old.is_accessible() {
                    gather.add_range(va, va + PAGE);
                }
                gather.add_page(frame);
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Sets the protection of every mapped page in `[start, end)` to `prot`
    /// (literally: for a private writable mapping whose pages may be shared
    /// copy-on-write, pass `prot` without `WRITE` and let write faults
    /// upgrade exclusive pages). Pages whose rights shrink are added to the
    /// gather's flush range. Returns the number of entries changed.
    ///
    /// Same locking contract as [`Self::unmap_range`].
    pub fn protect_range(
        &self,
        start: u64,
        end: u64,
        prot: Prot,
        gather: &mut TlbGather<'_>,
    ) -> Result<u64, PgTableError> {
        self.check_range(start, end)?;
        let mut n = 0;
        self.for_each_leaf_slot(start, end, &mut |va, slot| {
            let mut cur = slot.load(Ordering::Acquire);
            loop {
                let old = Pte::<F>::from_raw(cur);
                if !old.is_mapped() {
                    return Ok(());
                }
                let new = old.with_prot(prot);
                if new == old {
                    return Ok(());
                }
                // AcqRel: as for compare_exchange_leaf. A failure is an x86
                // A/D update (or a contract violation): retry on the new value.
                match slot.compare_exchange(cur, new.raw(), Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        if old.needs_flush_for(new) {
                            gather.add_range(va, va + PAGE);
                        }
                        n += 1;
                        return Ok(());
                    }
                    Err(now) => cur = now,
                }
            }
        })?;
        Ok(n)
    }

    /// Copies the mappings of `[start, end)` into `dst` (the child of a
    /// fork), allocating `dst`'s tables on the gather's CPU. With `cow`
    /// (private mappings) writable pages are write-protected in both tables
    /// and the parent's pages are added to `gather`'s flush range: the
    /// parent's other threads may hold writable TLB entries. `on_copy(va,
    /// frame)` runs once per page mapped into `dst`, after it is mapped:
    /// the caller takes its reference there. Returns the number of pages
    /// copied.
    ///
    /// The caller holds the parent's mmap write lock with the range's VMAs
    /// write-locked; nothing else uses `dst` yet. On `OutOfMemory` the pages
    /// copied so far stay copied (and reported through `on_copy`), and
    /// write-protected parent pages stay write-protected (they take a
    /// spurious COW fault later).
    pub fn copy_range_for_fork(
        &self,
        dst: &PageTable<'_, F>,
        start: u64,
        end: u64,
        cow: bool,
        gather: &mut TlbGather<'_>,
        on_copy: &mut dyn FnMut(u64, Frame),
    ) -> Result<u64, PgTableError> {
        assert!(
            !core::ptr::eq(self, dst),
            "copy_range_for_fork into the same page table"
        );
        self.check_range(start, end)?;
        dst.check_range(start, end)?;
        let cpu = gather.cpu();
        let mut n = 0;
        self.for_each_leaf_slot(start, end, &mut |va, slot| {
            let mut cur = Pte::<F>::from_raw(slot.load(Ordering::Acquire));
            if !cur.is_mapped() {
                return Ok(());
            }
            if cow && cur.prot().contains(Prot::WRITE) {
                loop {
                    let new = cur.wrprotect();
                    match slot.compare_exchange(
                        cur.raw(),
                        new.raw(),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            if cur.needs_flush_for(new) {
                                gather.add_range(va, va + PAGE);
                            }
                            cur = new;
                            break;
                        }
                        Err(now) => cur = Pte::from_raw(now),
                    }
                    if !cur.prot().contains(Prot::WRITE) {
                        break;
                    }
                }
            }
            match dst.install_leaf(va, cur, cpu) {
                Ok(()) => {}
                Err(InstallError::OutOfMemory) => return Err(PgTableError::OutOfMemory),
                Err(InstallError::AlreadyPresent(_)) => return Err(PgTableError::Occupied(va)),
                Err(InstallError::BadAddress(a)) => return Err(PgTableError::BadAddress(a)),
            }
            on_copy(va, F::leaf_frame(cur.raw()));
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Frees the page-table pages that cover only addresses inside
    /// `[floor, ceiling)` and map some of `[start, end)` (Linux's
    /// `free_pgtables`): after munmap of a VMA, `floor` is the end of the
    /// previous VMA (or 0) and `ceiling` the start of the next (or the user
    /// limit), so tables shared with a neighbour stay. The pages go to the
    /// gather, which frees them after flushing the range they covered.
    /// Returns the number of tables unlinked. The root is never freed.
    ///
    /// The leaves in `[floor, ceiling)` must have been unmapped already
    /// (checked in debug builds; a leaf left behind would leak its frame).
    ///
    /// # Safety
    ///
    /// No other operation on this page table may run concurrently on an
    /// address in `[floor, ceiling)`, nor [`Self::for_each_table`]: the
    /// tables freed here are reachable only through such addresses, and a
    /// walk inside one would touch freed memory once the gather frees it.
    /// The address-space layer guarantees it by holding the mmap write lock
    /// with no VMA left in `[floor, ceiling)` (faults there find no VMA and
    /// never walk the table).
    pub unsafe fn free_tables(
        &self,
        start: u64,
        end: u64,
        floor: u64,
        ceiling: u64,
        gather: &mut TlbGather<'_>,
    ) -> Result<u64, PgTableError> {
        self.check_range(start, end)?;
        if floor > start
            || ceiling < end
            || !floor.is_multiple_of(PAGE)
            || !ceiling.is_multiple_of(PAGE)
        {
            return Err(PgTableError::BadRange {
                start: floor,
                end: ceiling,
            });
        }
        assert!(
            core::ptr::eq(gather.frames(), self.frames),
            "the gather frees tables to another frame allocator"
        );
        let root = self.table(self.root.start());
        let mut n = 0;
        self.free_level(root, LEVELS, start, end, floor, ceiling, gather, &mut n);
        self.counts.tables.fetch_sub(n as usize, Ordering::Relaxed);
        Ok(n)
    }

    /// Tears the whole tree down: every mapped frame goes to the gather's
    /// release callback and every table, the root last, is freed, after a
    /// full flush of the address space.
    pub fn destroy(mut self, gather: &mut TlbGather<'_>) {
        assert!(
            core::ptr::eq(gather.frames(), self.frames),
            "the gather frees tables to another frame allocator"
        );
        gather.flush_all_on_finish();
        self.teardown(self.root, LEVELS, 0, gather);
        self.counts.tables.store(0, Ordering::Relaxed);
        self.destroyed = true;
    }

    /// Calls `f(level, base)` for every table in the tree (the root is
    /// `(LEVELS, 0)`), where `base` is the first address the table covers.
    /// For checks and debugging; `&mut self` keeps it away from
    /// `free_tables`.
    pub fn for_each_table(&mut self, f: &mut dyn FnMut(u32, u64)) {
        f(LEVELS, 0);
        self.visit_tables(self.table(self.root.start()), LEVELS, 0, f);
    }

    // ---- internals -----------------------------------------------------

    /// `va` is page-aligned and below the limit.
    #[inline]
    fn page_ok(&self, va: u64) -> bool {
        va.is_multiple_of(PAGE) && va < self.va_end
    }

    fn check_range(&self, start: u64, end: u64) -> Result<(), PgTableError> {
        if start > end
            || !start.is_multiple_of(PAGE)
            || !end.is_multiple_of(PAGE)
            || end > self.va_end
        {
            return Err(PgTableError::BadRange { start, end });
        }
        Ok(())
    }

    /// The table at `pa`.
    #[inline(always)]
    fn table(&self, pa: PhysAddr) -> &Table {
        let p = self.frames.direct_map().to_virt_unchecked(pa);
        // SAFETY: every `pa` passed here is the root or was read from an entry of this tree, so it is a frame this page table allocated from `frames` (inside its direct map, page-aligned, 4 KiB) and initialised as a table (`prepare_table`); it stays allocated while reachable from the root, and `free_tables`'s contract keeps walks out of tables it unlinks. All accesses go through the atomics.
        unsafe { &*p.as_ptr().cast::<Table>() }
    }

    /// Makes a fresh frame usable as a `Table` before it is zeroed. A no-op
    /// outside loom (the memory is the entries). Under loom the entries are
    /// objects of the model: create them here, with stale non-zero values,
    /// standing for what the frame held before; `zero_table` is then the
    /// unsynchronised write loom checks against the walkers (P1).
    #[inline(always)]
    fn prepare_table(&self, frame: Frame) {
        #[cfg(loom)]
        {
            let p = self.frames.direct_map().to_virt_unchecked(frame.start());
            // A leaf in every format, so never followed as a table.
            let stale_pte = F::encode_leaf(Frame::from_pfn(0xdead), Prot::USER);
            let stale = Table {
                e: core::array::from_fn(|_| AtomicU64::new(stale_pte)),
            };
            // SAFETY: the frame was just allocated to us and nobody else can reach it; it is 4 KiB, page-aligned, in the direct map.
            unsafe { core::ptr::write(p.as_ptr().cast::<Table>(), stale) };
        }
        #[cfg(not(loom))]
        let _ = frame;
    }

    /// Zeroes a table that is not reachable by anyone else yet.
    #[inline]
    fn zero_table(&self, frame: Frame) {
        let p = self.frames.direct_map().to_virt_unchecked(frame.start());
        #[cfg(not(loom))]
        // SAFETY: the frame is ours alone (freshly allocated, not yet published): 4 KiB of direct-mapped RAM.
        unsafe {
            core::ptr::write_bytes(p.as_ptr(), 0, PAGE_SIZE)
        };
        #[cfg(loom)]
        {
            // SAFETY: as above; `prepare_table` made it a `Table`.
            let t = unsafe { &mut *p.as_ptr().cast::<Table>() };
            for e in t.e.iter_mut() {
                e.with_mut(|v| *v = 0);
            }
        }
    }

    /// Reads a table entry on a walk. Acquire: pairs with the Release
    /// compare-and-swap in `link_new_table` that published the table the
    /// entry points to, so the walk never sees that table's old contents
    /// (P1).
    #[inline(always)]
    fn load_entry(slot: &AtomicU64) -> u64 {
        let order = if injected(Fault::PgtableWalkRelaxed) {
            Ordering::Relaxed
        } else {
            Ordering::Acquire
        };
        slot.load(order)
    }

    /// The table the non-empty level-`level` entry `e` (on the way to `va`)
    /// points at. Anything but a table entry there is a corrupted tree: stop
    /// before following it (one compare per level).
    #[inline(always)]
    fn next_table(&self, e: u64, level: u32, va: u64) -> &Table {
        if !F::is_table(e) {
            corrupt_entry(level, va, e);
        }
        self.table(F::table_addr(e))
    }

    /// The leaf slot for `va`, or `None` if a table on the way is missing.
    #[inline]
    fn walk(&self, va: u64) -> Option<&AtomicU64> {
        let mut table = self.table(self.root.start());
        for level in (2..=LEVELS).rev() {
            let e = Self::load_entry(&table.e[index(va, level)]);
            if e == 0 {
                return None;
            }
            table = self.next_table(e, level, va);
        }
        Some(&table.e[index(va, 1)])
    }

    /// The leaf slot for `va`, allocating missing tables on `cpu`.
    #[inline]
    fn walk_alloc(&self, va: u64, cpu: CpuId) -> Result<&AtomicU64, AllocError> {
        let mut table = self.table(self.root.start());
        for level in (2..=LEVELS).rev() {
            let slot = &table.e[index(va, level)];
            let mut e = Self::load_entry(slot);
            if e == 0 {
                e = self.link_new_table(slot, cpu)?;
            }
            table = self.next_table(e, level, va);
        }
        Ok(&table.e[index(va, 1)])
    }

    /// Allocates a zeroed table and links it into the empty `slot`, or frees
    /// it if another CPU linked one first. Returns the entry now in `slot`.
    #[cold]
    fn link_new_table(&self, slot: &AtomicU64, cpu: CpuId) -> Result<u64, AllocError> {
        let frame = self.frames.alloc(cpu, 0)?;
        self.prepare_table(frame);
        let entry = F::encode_table(frame.start());
        let zero_late = injected(Fault::PgtablePublishBeforeZero);
        if !zero_late {
            self.zero_table(frame);
        }
        // (P1) Release: the zeroing above happens before any walker that
        // reads this entry with Acquire (`load_entry`, or the failure load
        // below on another CPU) looks inside the table. Pairs with both.
        let publish = if injected(Fault::PgtablePublishRelaxed) {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        // Acquire on failure: we walk into the winner's table next, and its
        // zeroing must be visible (pairs with the winner's Release).
        match slot.compare_exchange(0, entry, publish, Ordering::Acquire) {
            Ok(_) => {
                self.counts.tables.fetch_add(1, Ordering::Relaxed);
                // (Mutation only.) After the counter update, so that loom,
                // whose clocks advance at atomic operations, sees the
                // zeroing as a step after the publication.
                if zero_late {
                    self.zero_table(frame);
                }
                Ok(entry)
            }
            Err(winner) => {
                // SAFETY: the frame came from `frames` just now and was never published: nobody else can have seen it, so it needs no TLB flush either.
                unsafe { self.frames.free(cpu, frame, 0) };
                self.counts.races_lost.fetch_add(1, Ordering::Relaxed);
                Ok(winner)
            }
        }
    }

    /// Calls `f(va, slot)` for the leaf slot of every page in `[start, end)`
    /// whose tables exist, skipping missing subtrees. Stops at the first
    /// error.
    fn for_each_leaf_slot(
        &self,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, &AtomicU64) -> Result<(), PgTableError>,
    ) -> Result<(), PgTableError> {
        if start < end {
            self.leaf_slots_in(self.table(self.root.start()), LEVELS, start, end, f)?;
        }
        Ok(())
    }

    fn leaf_slots_in(
        &self,
        table: &Table,
        level: u32,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, &AtomicU64) -> Result<(), PgTableError>,
    ) -> Result<(), PgTableError> {
        let span = entry_span(level);
        let mut va = start;
        while va < end {
            let next = (va & !(span - 1)) + span;
            let slot = &table.e[index(va, level)];
            if level == 1 {
                f(va, slot)?;
            } else {
                let e = Self::load_entry(slot);
                if e != 0 {
                    let child = self.next_table(e, level, va);
                    self.leaf_slots_in(child, level - 1, va, end.min(next), f)?;
                }
            }
            va = next;
        }
        Ok(())
    }

    /// `free_tables` below a level-`level` table (level >= 2).
    #[allow(clippy::too_many_arguments)]
    fn free_level(
        &self,
        table: &Table,
        level: u32,
        start: u64,
        end: u64,
        floor: u64,
        ceiling: u64,
        gather: &mut TlbGather<'_>,
        n: &mut u64,
    ) {
        let span = entry_span(level);
        let mut va = start;
        while va < end {
            let base = va & !(span - 1);
            let next = base + span;
            let slot = &table.e[index(va, level)];
            let e = Self::load_entry(slot);
            if e != 0 {
                if !F::is_table(e) {
                    corrupt_entry(level, va, e);
                }
                let child = Frame::containing(F::table_addr(e));
                if floor <= base && next <= ceiling {
                    // Only addresses in [floor, ceiling) reach this subtree:
                    // unlink it, then gather its tables (P3). Relaxed: by
                    // the safety contract nobody walks here, and the flush
                    // orders hardware walkers.
                    slot.store(0, Ordering::Relaxed);
                    *n += self.gather_subtree(child, level - 1, base, gather);
                } else if level > 2 {
                    let t = self.table(child.start());
                    self.free_level(t, level - 1, va, end.min(next), floor, ceiling, gather, n);
                }
            }
            va = next;
        }
    }

    /// Gathers the unlinked level-`level` table `frame` covering from `base`
    /// and every table below it. Returns how many.
    fn gather_subtree(
        &self,
        frame: Frame,
        level: u32,
        base: u64,
        gather: &mut TlbGather<'_>,
    ) -> u64 {
        let t = self.table(frame.start());
        let mut n = 1;
        if level > 1 {
            for (i, slot) in t.e.iter().enumerate() {
                let e = slot.load(Ordering::Relaxed);
                if e != 0 {
                    if !F::is_table(e) {
                        corrupt_entry(level, base + i as u64 * entry_span(level), e);
                    }
                    let child = Frame::containing(F::table_addr(e));
                    n += self.gather_subtree(
                        child,
                        level - 1,
                        base + i as u64 * entry_span(level),
                        gather,
                    );
                }
            }
        } else if cfg!(debug_assertions) {
            if let Some(i) = t.e.iter().position(|s| s.load(Ordering::Relaxed) != 0) {
                panic!(
                    "free_tables: page {:#x} is still mapped ({:#x})",
                    base + i as u64 * PAGE,
                    t.e[i].load(Ordering::Relaxed)
                );
            }
        }
        gather.add_table(frame, base, base + entry_span(level + 1));
        n
    }

    /// Entries of a level-`level` table starting at `base` that can map
    /// user addresses: all 512, except in the root, whose entries at and
    /// above `va_end` belong to the arch layer (x86_64 shares the kernel's
    /// upper-half tables there, see [`PageTable::new`]) and are never read,
    /// written, followed or freed here.
    #[inline]
    fn user_entries(&self, level: u32, base: u64) -> usize {
        if level == LEVELS {
            (self.va_end.saturating_sub(base))
                .div_ceil(entry_span(level))
                .min(ENTRIES as u64) as usize
        } else {
            ENTRIES
        }
    }

    /// `destroy` below (and including) the level-`level` table `frame`.
    fn teardown(&self, frame: Frame, level: u32, base: u64, gather: &mut TlbGather<'_>) {
        let t = self.table(frame.start());
        let n = self.user_entries(level, base);
        for (i, slot) in t.e.iter().enumerate().take(n) {
            // `self` is consumed: nobody else walks the tree. Acquire still
            // pairs with the installs (P2) before the frames are released.
            let e = slot.load(Ordering::Acquire);
            if e == 0 {
                continue;
            }
            let va = base + i as u64 * entry_span(level);
            if level == 1 {
                let pte = Pte::<F>::from_raw(e);
                if let Some(f) = pte.frame() {
                    if pte.is_accessible() {
                        gather.add_range(va, va + PAGE);
                    }
                    gather.add_page(f);
                }
            } else {
                if !F::is_table(e) {
                    corrupt_entry(level, va, e);
                }
                self.teardown(Frame::containing(F::table_addr(e)), level - 1, va, gather);
            }
        }
        let end = (base + entry_span(level + 1)).min(TREE_SPAN);
        gather.add_table(frame, base, end);
    }

    fn visit_tables(&self, table: &Table, level: u32, base: u64, f: &mut dyn FnMut(u32, u64)) {
        if level == 1 {
            return;
        }
        let n = self.user_entries(level, base);
        for (i, slot) in table.e.iter().enumerate().take(n) {
            let e = Self::load_entry(slot);
            if e != 0 {
                let b = base + i as u64 * entry_span(level);
                f(level - 1, b);
                self.visit_tables(self.next_table(e, level, b), level - 1, b, f);
            }
        }
    }
}

/// A table entry above the leaves is neither empty nor a table: memory
/// corruption or a bug in this module. Following it could map arbitrary
/// memory into user space.
#[cold]
#[inline(never)]
fn corrupt_entry(level: u32, va: u64, e: u64) -> ! {
    panic!("corrupt page table: level {level} entry {e:#x} on the walk to {va:#x} is not a table")
}

impl<F: PteFormat> Drop for PageTable<'_, F> {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        #[cfg(any(test, loom, feature = "std"))]
        if std::thread::panicking() {
            return;
        }
        // Nothing can be freed here without a TLB flush: leak the tables
        // (and the frames still mapped) rather than free them unflushed.
        debug_assert!(
            false,
            "PageTable dropped without destroy(): {} tables leak",
            self.nr_tables()
        );
    }
}

impl<F: PteFormat> fmt::Debug for PageTable<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable")
            .field("format", &F::NAME)
            .field("root", &self.root_phys())
            .field("va_end", &format_args!("{:#x}", self.va_end))
            .field("nr_tables", &self.nr_tables())
            .finish()
    }
}
