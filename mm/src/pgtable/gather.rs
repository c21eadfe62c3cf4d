//! Deferred freeing behind TLB shootdown: Samara's `mmu_gather`.
//!
//! Clearing a page-table entry does not stop other CPUs from using the
//! translation: they may have it cached in their TLBs (and, on x86, the
//! tables above it in paging-structure caches, or be in the middle of a
//! hardware walk through a table being freed). A frame or table page may be
//! reused only after every CPU that may cache the address space's
//! translations has dropped them. [`TlbGather`] enforces that order:
//!
//! 1. Page-table operations clear entries and hand the gather what they
//!    removed: VA ranges whose translations may be cached, frames that
//!    were mapped, table pages that were unlinked.
//! 2. The gather asks the arch layer's [`TlbFlush`] to invalidate the
//!    ranges on every CPU concerned, and that call returns only when they
//!    all have (an IPI shootdown on x86, a mailbox answered from the timer
//!    interrupt and idle on MIPS).
//! 3. Only then are the frames handed to the owner's release callback (which
//!    drops the mapping's reference) and the table pages freed.
//!
//! Step 3 needs a [`Flushed`] proof that only step 2 makes, so the order
//! cannot be reversed inside this module; outside it, the gather is
//! `#[must_use]`, [`TlbGather::finish`] consumes it, and dropping it
//! unfinished panics in debug builds (release builds leak what it holds
//! rather than free it unflushed). When its batches fill up in the middle of
//! a large operation the gather flushes and frees early, exactly as at
//! `finish`, so it needs no heap.

use crate::addr::{Frame, PAGE_SIZE};
use crate::cpu::CpuId;
use crate::frame::FrameAllocator;
use crate::vma::lock::MmId;

/// A range of user virtual addresses whose translations must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushRange {
    /// Page-aligned start.
    pub start: u64,
    /// Page-aligned end (exclusive).
    pub end: u64,
    /// Page-table pages covering part of the range were unlinked: caches of
    /// intermediate entries (x86 paging-structure caches) must go too, and
    /// CPUs that only walk the tables speculatively (x86 lazy-TLB) must be
    /// included.
    pub freed_tables: bool,
}

/// TLB invalidation for one architecture, implemented by the arch layer
/// (and by [`RecordingFlush`] on the host).
///
/// Both methods return only when no CPU can still use a dropped
/// translation for `mm`, and no CPU is in the middle of a page walk (x86
/// hardware walk, MIPS refill handler) that started before the call.
pub trait TlbFlush {
    /// Invalidates the translations of `range` in address space `mm`.
    fn flush_range(&self, mm: MmId, range: FlushRange);
    /// Invalidates every translation of `mm`.
    fn flush_all(&self, mm: MmId);
    /// Ranges of more pages than this are flushed with
    /// [`Self::flush_all`]. Default 33, Linux x86's
    /// `tlb_single_page_flush_ceiling`.
    fn full_flush_ceiling(&self) -> u64 {
        33
    }
}

/// Frames a gather holds before it flushes early.
pub const PAGE_BATCH: usize = 64;
/// Table pages a gather holds before it flushes early.
pub const TABLE_BATCH: usize = 16;

/// Counters of one gather's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatherStats {
    /// Calls to `flush_range`.
    pub range_flushes: u64,
    /// Calls to `flush_all`.
    pub full_flushes: u64,
    /// Frames handed to the release callback.
    pub pages_released: u64,
    /// Table pages freed.
    pub tables_freed: u64,
}

/// Proof that the pending flush has been performed. Private: only
/// [`TlbGather::flush`] makes one.
struct Flushed(());

/// Collects what page-table operations remove, flushes, then frees. See
/// the module documentation.
#[must_use = "a TlbGather must be finished: what it holds is freed only after its TLB flush"]
pub struct TlbGather<'a> {
    mm: MmId,
    cpu: CpuId,
    flusher: &'a dyn TlbFlush,
    frames: &'a FrameAllocator,
    release: &'a mut dyn FnMut(Frame),
    /// Pending flush range; empty when `start >= end`.
    start: u64,
    end: u64,
    freed_tables: bool,
    flush_everything: bool,
    pages: [Frame; PAGE_BATCH],
    nr_pages: usize,
    tables: [Frame; TABLE_BATCH],
    nr_tables: usize,
    stats: GatherStats,
    finished: bool,
}

impl<'a> TlbGather<'a> {
    /// A gather for address space `mm`, working on `cpu`. Table pages go
    /// back to `frames` (which must be the page table's allocator); mapped
    /// frames go to `release` once no CPU can reach them any more.
    pub fn new(
        mm: MmId,
        cpu: CpuId,
        flusher: &'a dyn TlbFlush,
        frames: &'a FrameAllocator,
        release: &'a mut dyn FnMut(Frame),
    ) -> Self {
        TlbGather {
            mm,
            cpu,
            flusher,
            frames,
            release,
            start: u64::MAX,
            end: 0,
            freed_tables: false,
            flush_everything: false,
            pages: [Frame::from_pfn(0); PAGE_BATCH],
            nr_pages: 0,
            tables: [Frame::from_pfn(0); TABLE_BATCH],
            nr_tables: 0,
            stats: GatherStats::default(),
            finished: false,
        }
    }

    /// The CPU this gather works on.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }

    /// The address space it flushes.
    pub fn mm(&self) -> MmId {
        self.mm
    }

    /// Whether nothing is pending (no flush, nothing to free).
    pub fn is_empty(&self) -> bool {
        !self.flush_pending() && self.nr_pages == 0 && self.nr_tables == 0
    }

    /// Counters so far.
    pub fn stats(&self) -> GatherStats {
        self.stats
    }

    /// Requests a flush of everything (exit, or a caller that knows better).
    pub fn flush_all_on_finish(&mut self) {
        self.flush_everything = true;
    }

    /// Flushes what is pending, frees what is held, and returns the counters.
    pub fn finish(mut self) -> GatherStats {
        self.flush_and_free();
        self.finished = true;
        self.stats
    }

    /// The frames allocator tables are freed to.
    pub(crate) fn frames(&self) -> &'a FrameAllocator {
        self.frames
    }

    /// `[start, end)` may be cached in TLBs and must be flushed before
    /// anything gathered afterwards (or before) is freed.
    pub(crate) fn add_range(&mut self, start: u64, end: u64) {
        debug_assert!(start < end);
        self.start = self.start.min(start);
        self.end = self.end.max(end);
    }

    /// A frame whose mapping was removed (after its range was added, if it
    /// was accessible).
    pub(crate) fn add_page(&mut self, frame: Frame) {
        if self.nr_pages == PAGE_BATCH {
            self.flush_and_free();
        }
        self.pages[self.nr_pages] = frame;
        self.nr_pages += 1;
    }

    /// A table page covering `[start, end)`, already unlinked from its
    /// parent.
    pub(crate) fn add_table(&mut self, table: Frame, start: u64, end: u64) {
        if self.nr_tables == TABLE_BATCH {
            self.flush_and_free();
        }
        self.add_range(start, end);
        self.freed_tables = true;
        self.tables[self.nr_tables] = table;
        self.nr_tables += 1;
    }

    fn flush_pending(&self) -> bool {
        self.flush_everything || self.start < self.end
    }

    /// Performs the pending flush, if any, and returns the proof.
    fn flush(&mut self) -> Flushed {
        if self.flush_everything
            || (self.start < self.end
                && (self.end - self.start) / PAGE_SIZE as u64 > self.flusher.full_flush_ceiling())
        {
            self.flusher.flush_all(self.mm);
            self.stats.full_flushes += 1;
        } else if self.start < self.end {
            self.flusher.flush_range(
                self.mm,
                FlushRange {
                    start: self.start,
                    end: self.end,
                    freed_tables: self.freed_tables,
                },
            );
            self.stats.range_flushes += 1;
        }
        self.start = u64::MAX;
        self.end = 0;
        self.freed_tables = false;
        self.flush_everything = false;
        Flushed(())
    }

    /// Frees the batches. Needs the proof that what they hold is no longer
    /// reachable through any TLB.
    fn free_batches(&mut self, _proof: Flushed) {
        for i in 0..self.nr_pages {
            (self.release)(self.pages[i]);
        }
        self.stats.pages_released += self.nr_pages as u64;
        self.nr_pages = 0;
        for i in 0..self.nr_tables {
            // SAFETY: table pages come from `PageTable::{free_tables, destroy}`, which allocated them from `self.frames` (they assert it), unlinked them, and gathered each once; the proof says no CPU can still walk them; nothing else refers to them.
            unsafe { self.frames.free(self.cpu, self.tables[i], 0) };
        }
        self.stats.tables_freed += self.nr_tables as u64;
        self.nr_tables = 0;
    }

    fn flush_and_free(&mut self) {
        let proof = self.flush();
        self.free_batches(proof);
    }
}

impl Drop for TlbGather<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        #[cfg(any(test, loom, feature = "std"))]
        if std::thread::panicking() {
            return;
        }
        // Release builds leak what the gather holds: freeing it unflushed
        // could hand a page to a new owner while another CPU still writes
        // to it through a stale TLB entry.
        debug_assert!(
            false,
            "TlbGather dropped without finish(): {} pages and {} tables never freed, flush \
             {}pending",
            self.nr_pages,
            self.nr_tables,
            if self.flush_pending() { "" } else { "not " }
        );
    }
}

#[cfg(any(test, feature = "std"))]
pub use host::{FlushEvent, RecordingFlush};

#[cfg(any(test, feature = "std"))]
mod host {
    use super::*;
    use std::sync::Mutex;
    use std::vec::Vec;

    /// One call to a [`RecordingFlush`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FlushEvent {
        Range(MmId, FlushRange),
        All(MmId),
    }

    impl FlushEvent {
        /// Whether this flush drops the translation of `va` in `mm`.
        pub fn covers(&self, mm: MmId, va: u64) -> bool {
            match *self {
                FlushEvent::Range(m, r) => m == mm && r.start <= va && va < r.end,
                FlushEvent::All(m) => m == mm,
            }
        }
    }

    /// A host [`TlbFlush`] that records its calls, for tests.
    #[derive(Debug, Default)]
    pub struct RecordingFlush {
        log: Mutex<Vec<FlushEvent>>,
        ceiling: u64,
    }

    impl RecordingFlush {
        /// Records calls; ranges above 33 pages become full flushes.
        pub fn new() -> Self {
            Self::with_ceiling(33)
        }

        /// Records calls; ranges above `ceiling` pages become full flushes.
        pub fn with_ceiling(ceiling: u64) -> Self {
            RecordingFlush {
                log: Mutex::new(Vec::new()),
                ceiling,
            }
        }

        /// The calls so far.
        pub fn events(&self) -> Vec<FlushEvent> {
            self.log.lock().unwrap().clone()
        }

        /// The calls so far, clearing the log.
        pub fn take(&self) -> Vec<FlushEvent> {
            core::mem::take(&mut *self.log.lock().unwrap())
        }

        /// Number of calls so far.
        pub fn len(&self) -> usize {
            self.log.lock().unwrap().len()
        }

        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Whether some recorded flush drops `va` of `mm`.
        pub fn covered(&self, mm: MmId, va: u64) -> bool {
            self.log.lock().unwrap().iter().any(|e| e.covers(mm, va))
        }
    }

    impl TlbFlush for RecordingFlush {
        fn flush_range(&self, mm: MmId, range: FlushRange) {
            assert!(
                range.start < range.end && range.start.is_multiple_of(PAGE_SIZE as u64),
                "bad flush range {range:?}"
            );
            self.log.lock().unwrap().push(FlushEvent::Range(mm, range));
        }

        fn flush_all(&self, mm: MmId) {
            self.log.lock().unwrap().push(FlushEvent::All(mm));
        }

        fn full_flush_ceiling(&self) -> u64 {
            self.ceiling
        }
    }
}
