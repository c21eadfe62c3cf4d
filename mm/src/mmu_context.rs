//! Address-space identifiers with generation rollover, and TLB shootdown
//! without inter-processor interrupts.
//!
//! A software-refilled TLB (MIPS) tags every entry with the ASID that was
//! current when the refill handler wrote it, so switching address spaces
//! needs no flush: each address space gets its own ASID on each CPU. This
//! module hands those ASIDs out and keeps every CPU's TLB consistent with
//! the page tables when mappings are removed or downgraded — on a machine
//! whose CPUs cannot interrupt each other (QEMU's Malta has no IPIs). It
//! is generic over the CPU's own TLB operations ([`LocalTlb`]), so the same
//! code runs in the kernel and in host and loom tests with a model TLB.
//!
//! # ASIDs (Linux's `asid_cache` scheme)
//!
//! Each CPU owns a 64-bit counter, `asid_cache`: the low `asid_bits` bits
//! are the last hardware ASID it handed out, the bits above are its
//! *version* (generation). An address space ([`MmTlb`]) keeps one context
//! word per CPU: `version | asid` of the ASID it was given there, 0 for
//! none, with [`ACTIVE`] set while that CPU runs it. A context is valid on
//! its CPU while its version equals the CPU's current version. Allocation
//! increments the counter; when the ASID bits wrap to 0 the CPU flushes its
//! whole TLB ([`LocalTlb::flush_all`]) and the version has moved on, which
//! invalidates every context word holding an older version at once. ASID 0
//! is never handed out: the kernel runs with it while no address space is
//! loaded (its refills find only an empty root table).
//!
//! Within one version a CPU never hands the same ASID out twice, so an
//! entry left in a TLB under an ASID that its address space no longer uses
//! on that CPU is unreachable until the next rollover flushes it. That is
//! what makes *lazy invalidation* sound: to drop an address space's
//! translations on a CPU that is not running it, it is enough to zero its
//! context word there; the CPU picks a fresh ASID the next time it switches
//! to it.
//!
//! # Shootdown (the no-IPI protocol)
//!
//! Each CPU owns a [`Mailbox`]: a tiny spin lock, the pending request
//! (`ctx`, `start`, `end`: flush these addresses of the address space
//! whose context word on this CPU was `ctx`), and two counters, `posted`
//! (requests received) and `answered` (requests completed). A CPU answers
//! its mailbox ([`TlbDomain::answer`]) from its timer interrupt, from idle,
//! at every context switch and return to user mode, and in every kernel
//! spin-wait loop (the kernel installs [`crate::sync::set_spin_hook`]); the
//! kernel runs with interrupts off, so these are the only places.
//!
//! [`TlbDomain::flush`], run by the CPU that changed the page table
//! (*initiator*) after clearing or downgrading the entries, visits every
//! CPU `c`'s context word of the address space with a read-modify-write:
//!
//! * `ACTIVE` set (c runs it): post a request to c's mailbox — unless c is
//!   the initiator itself, which flushes its own TLB at once;
//! * valid but not `ACTIVE`: compare-and-swap it to 0 (lazy invalidation);
//! * 0: leave it (the RMW is still needed, see S1).
//!
//! It then waits until every posted request's `answered` count has reached
//! its ticket, answering its own mailbox meanwhile (two initiators may wait
//! for each other). Requests to one CPU merge: same context, the union of
//! the ranges; different contexts, a full local flush.
//!
//! Who writes what:
//!
//! | word                 | written by                                      |
//! |----------------------|-------------------------------------------------|
//! | `MmTlb::ctx[c]`      | CPU c (activate: set `ACTIVE`, maybe a new ASID; deactivate: clear `ACTIVE`), initiators (CAS to 0 when not `ACTIVE`) |
//! | `asid_cache[c]`      | CPU c only                                      |
//! | `mailbox[c].pending`, `.posted` | initiators, under `mailbox[c].lock`; CPU c takes `pending` under the lock |
//! | `mailbox[c].answered`| CPU c only                                      |
//!
//! # Memory ordering (each pair is named at both ends in the code)
//!
//! * (S1) *Activation vs. flush.* A CPU activates an address space with an
//!   AcqRel CAS on its context word; the initiator's visit of that word is
//!   an AcqRel RMW made after it cleared the page-table entries. RMWs of one
//!   word are totally ordered: if the initiator's comes first, the CPU's
//!   activation synchronises with it (directly or through the release
//!   sequence of later RMWs), so its refills after activating read the
//!   cleared entries — and if the initiator zeroed the word, it also gets a
//!   fresh ASID, leaving older entries unreachable; if the activation comes
//!   first, the initiator sees `ACTIVE` and posts a request. A plain load on
//!   the initiator's side would break this: the word could read 0 while the
//!   CPU, activating concurrently, refills from the stale entry.
//! * (S2) *Deactivation vs. lazy invalidation.* A CPU clears `ACTIVE` with a
//!   Release RMW after its last access through the address space's
//!   translations; the initiator's CAS (Acquire) that reads the inactive
//!   word therefore orders those accesses before whatever the initiator
//!   frees after the flush.
//! * (S3) *Request and answer.* The initiator posts under the mailbox lock
//!   (its Release unlock publishes the request and, by program order after
//!   S1's RMW, the cleared entries); the answering CPU takes the request
//!   under the same lock (Acquire), flushes, and stores `answered` with
//!   Release. The initiator's Acquire load of `answered` orders every access
//!   the CPU made through the dropped translations before the initiator
//!   goes on to free the frames and tables.
//!
//! Why an answer is enough: the answering CPU is at a point where it is not
//! inside a TLB refill (refills run with exceptions masked and complete
//! before anything else), so once it has flushed, no walk of the old tables
//! is in flight on it, which [`crate::pgtable::TlbFlush`] requires before
//! tables are freed.
//!
//! # Liveness
//!
//! Every CPU answers within one timer tick while it runs user code or
//! idles, and at once when it spins in the kernel. A CPU running kernel
//! code without spinning (zeroing a page, copying for fork) answers when
//! that finishes. No lock is held while waiting for an answer except by
//! the caller of [`TlbDomain::flush`] (the mmap write lock); a CPU spinning
//! for that lock answers from the spin hook.

use core::fmt;

use crate::cpu::{CpuId, PerCpu, MAX_CPUS};
use crate::pgtable::{FlushRange, TlbFlush};
use crate::sync::{injected, spin_loop, AtomicBool, AtomicU64, Fault, Ordering, UnsafeCell};
use crate::vma::lock::MmId;

/// Set in an [`MmTlb`] context word while its CPU runs the address space.
pub const ACTIVE: u64 = 1 << 63;

/// Widest hardware ASID supported (MIPS: 8 or 10 bits; x86 PCID: 12).
pub const MAX_ASID_BITS: u32 = 16;

/// The end address that means "the whole address space".
pub const WHOLE: u64 = u64::MAX;

/// The CPU's own TLB, as the protocol needs it. Called only on the CPU the
/// TLB belongs to, with interrupts off.
pub trait LocalTlb {
    /// Drops every entry that is not global (generation rollover).
    fn flush_all(&self);
    /// Drops the entries of hardware ASID `asid` that map an address in
    /// `[start, end)` (`end` = [`WHOLE`]: every entry of `asid`).
    fn flush_asid(&self, asid: u64, start: u64, end: u64);
}

/// Why a [`TlbDomain`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainError {
    /// The hardware ASID width is 0 or above [`MAX_ASID_BITS`].
    BadAsidBits(u32),
    /// The CPU count is 0 or above [`MAX_CPUS`].
    BadCpuCount(usize),
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DomainError::BadAsidBits(b) => {
                write!(f, "{b}-bit ASIDs (supported: 1..={MAX_ASID_BITS})")
            }
            DomainError::BadCpuCount(n) => write!(f, "{n} CPUs (supported: 1..={MAX_CPUS})"),
        }
    }
}

/// One address space's per-CPU ASID contexts (Linux's `cpu_context(cpu,
/// mm)`, plus the `ACTIVE` bit that stands in for `mm_cpumask`). The words
/// are deliberately not cache-padded (64 x 128 bytes per address space):
/// they are written only at context switches and flushes.
pub struct MmTlb {
    ctx: [AtomicU64; MAX_CPUS],
}

impl Default for MmTlb {
    fn default() -> Self {
        Self::new()
    }
}

impl MmTlb {
    /// An address space that no CPU has run yet.
    pub fn new() -> Self {
        MmTlb {
            ctx: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// CPUs running the address space now (a snapshot, for statistics and
    /// checks: the protocol itself never trusts it).
    pub fn active_mask(&self) -> u64 {
        let mut m = 0;
        for (c, w) in self.ctx.iter().enumerate() {
            if w.load(Ordering::Relaxed) & ACTIVE != 0 {
                m |= 1 << c;
            }
        }
        m
    }

    /// The raw context word of `cpu` (a snapshot, for tests).
    pub fn context(&self, cpu: CpuId) -> u64 {
        self.ctx[cpu].load(Ordering::Relaxed)
    }
}

impl fmt::Debug for MmTlb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MmTlb {{ active: {:#x} }}", self.active_mask())
    }
}

/// A flush request, as it waits in a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// Drop `[start, end)` of the address space whose context word on the
    /// target CPU was `ctx` (without `ACTIVE`).
    Range {
        ctx: u64,
        start: u64,
        end: u64,
    },
    /// Requests for different address spaces met: flush everything.
    All,
}

impl Pending {
    fn merge(self, ctx: u64, start: u64, end: u64) -> Pending {
        match self {
            Pending::None => Pending::Range { ctx, start, end },
            Pending::Range {
                ctx: c,
                start: s,
                end: e,
            } if c == ctx => Pending::Range {
                ctx,
                start: s.min(start),
                end: e.max(end),
            },
            Pending::Range { .. } | Pending::All => Pending::All,
        }
    }
}

/// One CPU's shootdown mailbox. See the module documentation.
struct Mailbox {
    lock: AtomicBool,
    /// Protected by `lock`.
    pending: UnsafeCell<Pending>,
    /// Requests posted so far; written under `lock`.
    posted: AtomicU64,
    /// Requests completed so far; written by the owning CPU only.
    answered: AtomicU64,
}

// SAFETY: `pending` is only accessed in `Mailbox::locked`, under `lock`; the
// other fields are atomics. `Pending` is plain data.
unsafe impl Sync for Mailbox {}
// SAFETY: as above; moving the mailbox moves plain data.
unsafe impl Send for Mailbox {}

impl Mailbox {
    fn new() -> Self {
        Mailbox {
            lock: AtomicBool::new(false),
            pending: UnsafeCell::new(Pending::None),
            posted: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the pending request and the `posted` count under the
    /// lock. The lock is held for a few instructions by whoever holds it and
    /// never while waiting for anything, so the spin is short; it still uses
    /// [`spin_loop`] (the kernel's hook answers this CPU's own mailbox while
    /// spinning on another's; [`TlbDomain::answer`] refuses to re-enter).
    fn locked<R>(&self, f: impl FnOnce(&mut Pending, &AtomicU64) -> R) -> R {
        // (S3) Acquire pairs with the Release unlock below, on every CPU:
        // the previous holder's request (and what it ordered before it) is
        // visible to the next.
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.lock.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
        // SAFETY: the lock is held: nobody else touches `pending`.
        let r = self
            .pending
            .with_mut(|p| f(unsafe { &mut *p }, &self.posted));
        // (S3) Release: pairs with the Acquire lock above.
        self.lock.store(false, Ordering::Release);
        r
    }
}

/// Per-CPU state: ASID allocation and the mailbox.
struct CpuTlb {
    /// `version | asid` last handed out; written by the owner only.
    asid_cache: AtomicU64,
    /// Set while the owner is inside [`TlbDomain::answer`] (owner only).
    answering: AtomicBool,
    mailbox: Mailbox,
    stats: CpuStats,
}

#[derive(Default)]
struct CpuStats {
    rollovers: AtomicU64,
    asids: AtomicU64,
    flushes: AtomicU64,
    local_flushes: AtomicU64,
    posted: AtomicU64,
    lazy: AtomicU64,
    answers: AtomicU64,
}

/// Counters summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// ASID generation rollovers (each a full local flush).
    pub rollovers: u64,
    /// ASIDs handed out.
    pub asids: u64,
    /// Calls to [`TlbDomain::flush`].
    pub flushes: u64,
    /// Flushes of the initiator's own TLB.
    pub local_flushes: u64,
    /// Requests posted to other CPUs.
    pub posted: u64,
    /// Contexts invalidated lazily (CPU not running the address space).
    pub lazy: u64,
    /// Mailbox answers (each may complete several merged requests).
    pub answers: u64,
}

/// The ASID allocators and mailboxes of all CPUs. One per system.
pub struct TlbDomain {
    asid_mask: u64,
    nr_cpus: usize,
    cpus: PerCpu<CpuTlb>,
}

impl TlbDomain {
    /// A domain for `nr_cpus` CPUs whose TLBs take `asid_bits`-bit ASIDs.
    pub fn new(asid_bits: u32, nr_cpus: usize) -> Result<Self, DomainError> {
        if asid_bits == 0 || asid_bits > MAX_ASID_BITS {
            return Err(DomainError::BadAsidBits(asid_bits));
        }
        if nr_cpus == 0 || nr_cpus > MAX_CPUS {
            return Err(DomainError::BadCpuCount(nr_cpus));
        }
        let asid_mask = (1u64 << asid_bits) - 1;
        Ok(TlbDomain {
            asid_mask,
            nr_cpus,
            cpus: PerCpu::new(|_| CpuTlb {
                // Version 1, ASID 0: the first allocation returns version 1,
                // ASID 1, so no valid context word is ever 0.
                asid_cache: AtomicU64::new(asid_mask + 1),
                answering: AtomicBool::new(false),
                mailbox: Mailbox::new(),
                stats: CpuStats::default(),
            }),
        })
    }

    /// The hardware ASID mask (`2^asid_bits - 1`).
    pub fn asid_mask(&self) -> u64 {
        self.asid_mask
    }

    /// CPUs this domain serves.
    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    #[inline]
    fn same_version(&self, a: u64, b: u64) -> bool {
        (a ^ b) & !(self.asid_mask | ACTIVE) == 0
    }

    /// Hands out the next ASID on `cpu`, rolling the version over (and
    /// flushing the local TLB) when the ASID bits wrap.
    fn new_asid(&self, cpu: CpuId, tlb: &dyn LocalTlb) -> u64 {
        let st = self.cpus.get(cpu);
        // Owner-only word: Relaxed.
        let mut next = st.asid_cache.load(Ordering::Relaxed) + 1;
        if next & self.asid_mask == 0 {
            // Every ASID of this version is taken: start the next version.
            // Entries of the old one may still sit in the TLB under ASIDs
            // the new version will hand out again, so they must go first.
            tlb.flush_all();
            next += 1; // ASID 0 stays reserved
            st.stats.rollovers.fetch_add(1, Ordering::Relaxed);
        }
        st.asid_cache.store(next, Ordering::Relaxed);
        st.stats.asids.fetch_add(1, Ordering::Relaxed);
        next
    }

    /// Makes `mm` the address space `cpu` runs and returns the hardware
    /// ASID to load (EntryHi.ASID). Allocates one if `mm` has none valid on
    /// this CPU. Call on `cpu`, with interrupts off, before any access
    /// through `mm`'s translations (including the refill handler's), after
    /// [`Self::deactivate`] of the previous one.
    pub fn activate(&self, cpu: CpuId, mm: &MmTlb, tlb: &dyn LocalTlb) -> u64 {
        let slot = &mm.ctx[cpu];
        let cache = self.cpus.get(cpu).asid_cache.load(Ordering::Relaxed);
        let mut cur = slot.load(Ordering::Relaxed);
        let mut fresh = None;
        loop {
            debug_assert!(
                cur & ACTIVE == 0,
                "address space activated twice on CPU {cpu}"
            );
            let ctx = if cur != 0 && self.same_version(cur, cache) {
                cur
            } else {
                *fresh.get_or_insert_with(|| self.new_asid(cpu, tlb))
            };
            // (S1) AcqRel: Acquire pairs with an initiator's RMW of this
            // word in `flush` (or its release sequence), so the refills that
            // follow read the entries it cleared; Release lets an initiator
            // that sees ACTIVE also see this CPU's earlier state.
            match slot.compare_exchange(cur, ctx | ACTIVE, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return ctx & self.asid_mask,
                // An initiator zeroed the word (lazy invalidation): retry.
                Err(now) => cur = now,
            }
        }
    }

    /// `cpu` stops running `mm` (after its last access through `mm`'s
    /// translations and after loading another ASID).
    pub fn deactivate(&self, cpu: CpuId, mm: &MmTlb) {
        // (S2) Release: orders this CPU's accesses through `mm` before an
        // initiator's Acquire CAS in `flush` that finds the word inactive.
        let order = if injected(Fault::TlbDeactivateRelaxed) {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        let old = mm.ctx[cpu].fetch_and(!ACTIVE, order);
        debug_assert!(old & ACTIVE != 0, "address space not active on CPU {cpu}");
    }

    /// Drops the translations of `[start, end)` (`end` = [`WHOLE`] for all)
    /// of `mm` from every CPU's TLB, and returns once no CPU can use them.
    /// Called on `cpu` with interrupts off after the page-table entries were
    /// cleared or downgraded. See the module documentation.
    pub fn flush(&self, cpu: CpuId, mm: &MmTlb, start: u64, end: u64, tlb: &dyn LocalTlb) {
        let me = self.cpus.get(cpu);
        me.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let mut tickets = [0u64; MAX_CPUS];
        let mut waiting = 0u64;
        for (c, (slot, ticket)) in mm
            .ctx
            .iter()
            .zip(tickets.iter_mut())
            .take(self.nr_cpus)
            .enumerate()
        {
            let mut cur = slot.load(Ordering::Relaxed);
            let seen = loop {
                if cur != 0 && cur & ACTIVE == 0 {
                    // Not running there: invalidate lazily. (S1)/(S2) AcqRel:
                    // Release publishes the cleared entries to the CPU's next
                    // activation; Acquire orders its last accesses (made
                    // before its Release deactivation) before our frees.
                    match slot.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed) {
                        Ok(_) => {
                            me.stats.lazy.fetch_add(1, Ordering::Relaxed);
                            break 0;
                        }
                        Err(now) => {
                            cur = now;
                            continue;
                        }
                    }
                }
                // 0 or ACTIVE. (S1) An RMW, not a load: it puts us in the
                // word's modification order against a concurrent activation.
                let now = if injected(Fault::TlbFlushPlainLoad) {
                    slot.load(Ordering::Acquire)
                } else {
                    slot.fetch_or(0, Ordering::AcqRel)
                };
                if now != 0 && now & ACTIVE == 0 {
                    // Deactivated in between: invalidate it lazily instead.
                    cur = now;
                    continue;
                }
                break now;
            };
            if seen & ACTIVE == 0 {
                continue;
            }
            let ctx = seen & !ACTIVE;
            if c == cpu {
                tlb.flush_asid(ctx & self.asid_mask, start, end);
                me.stats.local_flushes.fetch_add(1, Ordering::Relaxed);
            } else {
                let mb = &self.cpus.get(c).mailbox;
                *ticket = mb.locked(|p, posted| {
                    *p = p.merge(ctx, start, end);
                    let t = posted.load(Ordering::Relaxed) + 1;
                    posted.store(t, Ordering::Relaxed);
                    t
                });
                waiting |= 1 << c;
                me.stats.posted.fetch_add(1, Ordering::Relaxed);
            }
        }
        while waiting != 0 {
            let mut rest = waiting;
            while rest != 0 {
                let c = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                // (S3) Acquire: pairs with the Release store of `answered`
                // in `answer` on CPU c.
                if self.cpus.get(c).mailbox.answered.load(Ordering::Acquire) >= tickets[c] {
                    waiting &= !(1 << c);
                }
            }
            if waiting != 0 {
                // Another initiator may be waiting for us.
                self.answer(cpu, tlb);
                spin_loop();
            }
        }
    }

    /// Whether `cpu`'s mailbox holds an unanswered request (a cheap,
    /// possibly stale check: one load of each counter).
    #[inline]
    pub fn has_request(&self, cpu: CpuId) -> bool {
        let mb = &self.cpus.get(cpu).mailbox;
        mb.posted.load(Ordering::Relaxed) != mb.answered.load(Ordering::Relaxed)
    }

    /// Answers `cpu`'s mailbox: performs the pending flush, if any. Call on
    /// `cpu` with interrupts off, outside any sequence of TLB operations.
    /// Returns whether it flushed. Re-entry (from a spin inside the
    /// mailbox's own lock) returns `false` at once.
    pub fn answer(&self, cpu: CpuId, tlb: &dyn LocalTlb) -> bool {
        let st = self.cpus.get(cpu);
        // Owner-only flag: Relaxed.
        if !self.has_request(cpu) || st.answering.load(Ordering::Relaxed) {
            return false;
        }
        st.answering.store(true, Ordering::Relaxed);
        let mb = &st.mailbox;
        // (S3) The lock's Acquire pairs with the initiator's Release unlock.
        let (req, upto) = mb.locked(|p, posted| {
            (
                core::mem::replace(p, Pending::None),
                posted.load(Ordering::Relaxed),
            )
        });
        match req {
            Pending::None => {}
            Pending::Range { ctx, start, end } => {
                // A context of an older version has no entries left: the
                // rollover since flushed them all.
                if self.same_version(ctx, st.asid_cache.load(Ordering::Relaxed)) {
                    tlb.flush_asid(ctx & self.asid_mask, start, end);
                }
            }
            Pending::All => tlb.flush_all(),
        }
        // (S3) Release: pairs with the initiator's Acquire load in `flush`;
        // orders the flush, and every access before it, before the
        // initiator's frees.
        mb.answered.store(upto, Ordering::Release);
        st.stats.answers.fetch_add(1, Ordering::Relaxed);
        st.answering.store(false, Ordering::Relaxed);
        true
    }

    /// Counters summed over all CPUs (a snapshot).
    pub fn stats(&self) -> TlbStats {
        let mut s = TlbStats::default();
        for (_, c) in self.cpus.iter() {
            let st = &c.stats;
            s.rollovers += st.rollovers.load(Ordering::Relaxed);
            s.asids += st.asids.load(Ordering::Relaxed);
            s.flushes += st.flushes.load(Ordering::Relaxed);
            s.local_flushes += st.local_flushes.load(Ordering::Relaxed);
            s.posted += st.posted.load(Ordering::Relaxed);
            s.lazy += st.lazy.load(Ordering::Relaxed);
            s.answers += st.answers.load(Ordering::Relaxed);
        }
        s
    }
}

impl fmt::Debug for TlbDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlbDomain")
            .field("asid_mask", &format_args!("{:#x}", self.asid_mask))
            .field("nr_cpus", &self.nr_cpus)
            .field("stats", &self.stats())
            .finish()
    }
}

/// [`TlbFlush`] for one address space on one CPU: what a [`TlbGather`]
/// calls. `MmId` arguments are not consulted: the flusher is built for its
/// address space.
///
/// [`TlbGather`]: crate::pgtable::TlbGather
pub struct MmFlusher<'a> {
    domain: &'a TlbDomain,
    mm: &'a MmTlb,
    cpu: CpuId,
    tlb: &'a dyn LocalTlb,
}

impl<'a> MmFlusher<'a> {
    /// Flushes `mm` from `cpu` (the CPU this runs on) with `tlb` (its TLB).
    pub fn new(domain: &'a TlbDomain, mm: &'a MmTlb, cpu: CpuId, tlb: &'a dyn LocalTlb) -> Self {
        MmFlusher {
            domain,
            mm,
            cpu,
            tlb,
        }
    }
}

impl TlbFlush for MmFlusher<'_> {
    fn flush_range(&self, _mm: MmId, range: FlushRange) {
        self.domain
            .flush(self.cpu, self.mm, range.start, range.end, self.tlb);
    }

    fn flush_all(&self, _mm: MmId) {
        self.domain.flush(self.cpu, self.mm, 0, WHOLE, self.tlb);
    }

    /// Ranges are never widened to a full flush here: the local TLB picks
    /// per-page probes or a scan of its entries, whichever is cheaper.
    fn full_flush_ceiling(&self) -> u64 {
        u64::MAX
    }
}

#[cfg(test)]
mod tests;
