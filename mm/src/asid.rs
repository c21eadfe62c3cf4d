//! Per-CPU ASID tables keyed by address-space identity, with generation
//! rollover: the TLB tags of a software-refilled MMU (MIPS) for a kernel
//! that names address spaces by number (an [`MmId`]'s raw value) rather
//! than handing the arch layer per-address-space storage.
//!
//! [`MmId`]: crate::vma::lock::MmId
//!
//! # Allocation (Linux's `asid_cache` scheme)
//!
//! Each CPU owns a counter, `asid_cache`: its low `asid_bits` bits are the
//! last hardware ASID it handed out, the bits above are the *version*. An
//! ASID context is `version | asid`; it is valid on its CPU while its
//! version is the CPU's current one. Allocating increments the counter; when
//! the ASID bits wrap to 0 the CPU flushes its whole TLB
//! ([`LocalTlb::flush_all`]) and every context of the old version is
//! invalid at once. ASID 0 is never handed out: the kernel runs with it
//! while no address space is loaded.
//!
//! Within one version a CPU never hands an ASID out twice, so entries left
//! in its TLB under an ASID that no address space uses any more there are
//! unreachable until the next rollover flushes them. Dropping an address
//! space's translations on a CPU therefore never needs that CPU: forget its
//! context there, and its next activation allocates a fresh ASID.
//!
//! # The table
//!
//! Each CPU keeps [`SLOTS`] slots, direct-mapped by a hash of the address
//! space's number: `mm` (the owner, 0 for none) and `ctx` (its context on
//! this CPU, 0 for none, possibly with the [`STALE`] mark). A collision evicts the previous owner, which
//! simply gets a fresh ASID the next time it runs there (its old entries
//! are unreachable, as above).
//!
//! | word | written by |
//! |------|------------|
//! | `asid_cache`, `current` | the owning CPU only |
//! | `slot.mm` | the owning CPU (at activation) |
//! | `slot.ctx` | the owning CPU (CAS in [`AsidTable::activate`], swap in [`AsidTable::drop_current`]); any CPU ([`AsidTable::invalidate_cached`]: `fetch_or(STALE)`, whoever owns the slot) |
//!
//! # Ordering: the stale mark
//!
//! [`AsidTable::invalidate_cached`] is the mark of `mm::shootdown`'s pair
//! (S4): an initiator that cleared page-table entries sets [`STALE`] in the
//! context of the address space's slot on every CPU (an AcqRel `fetch_or`,
//! whoever owns the slot), before it samples which CPUs have it loaded.
//! Every write of a context word is an RMW: the owner updates it only with a
//! compare-and-swap from the value it read ([`AsidTable::activate`]) or a
//! swap to a fresh context ([`AsidTable::drop_current`]). So a mark is never
//! overwritten: it either precedes the owner's RMW, which then sees it,
//! acquires what the initiator cleared, and allocates a fresh ASID; or it
//! follows, and stays for the next activation — while the CPU, which
//! published that it loads the address space before its RMW (pair (S1)),
//! is found by the initiator's sample and flushes on request. A mark on a
//! slot owned by another address space only costs that one a fresh ASID.
//! Checking the owner before marking would not be safe: that load may miss
//! the owner's assignment of the slot (nothing orders it before the
//! initiator's check), and the loom model `mm/tests/loom_asid.rs` finds a
//! CPU coming back to its old ASID's entries through exactly that gap, and
//! through a mark overwritten by a plain store.

use crate::cpu::{CachePadded, CpuId, MAX_CPUS};
use crate::sync::{injected, AtomicU64, AtomicUsize, Fault, Ordering};

/// Slots per CPU (direct-mapped by address-space hash).
#[cfg(not(loom))]
pub const SLOTS: usize = 64;
/// Loom models run with a few slots (each is two model objects).
#[cfg(loom)]
pub const SLOTS: usize = 4;

/// Widest hardware ASID supported (MIPS: 8 or 10 bits).
pub const MAX_ASID_BITS: u32 = 16;

const NO_SLOT: usize = usize::MAX;

/// Set in a slot's context by [`AsidTable::invalidate_cached`]: the context
/// must not be reused. Above every version a run can reach (versions count
/// up from bit `asid_bits`; 2^46 rollovers of 16-bit ASIDs before this bit).
pub const STALE: u64 = 1 << 62;

/// The CPU's own TLB, as ASID management needs it.
pub trait LocalTlb {
    /// Drops every non-global entry of this CPU's TLB (generation rollover).
    fn flush_all(&self);
}

/// Why an [`AsidTable`] could not be configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsidError {
    /// The hardware ASID width is 0 or above [`MAX_ASID_BITS`].
    BadAsidBits(u32),
    /// The CPU count is 0 or above [`MAX_CPUS`].
    BadCpuCount(usize),
    /// [`AsidTable::configure`] was called twice.
    AlreadyConfigured,
}

impl core::fmt::Display for AsidError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            AsidError::BadAsidBits(b) => {
                write!(f, "{b}-bit ASIDs (supported: 1..={MAX_ASID_BITS})")
            }
            AsidError::BadCpuCount(n) => write!(f, "{n} CPUs (supported: 1..={MAX_CPUS})"),
            AsidError::AlreadyConfigured => f.write_str("ASID table configured twice"),
        }
    }
}

struct Slot {
    mm: AtomicU64,
    ctx: AtomicU64,
}

struct CpuAsids {
    /// `version | asid` last handed out. Owner only.
    asid_cache: AtomicU64,
    /// The slot of the loaded address space, or `NO_SLOT`. Owner only.
    current: AtomicUsize,
    slots: [Slot; SLOTS],
    rollovers: AtomicU64,
    allocated: AtomicU64,
    reused: AtomicU64,
}

/// Counters summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsidStats {
    /// Generation rollovers (each a full local flush).
    pub rollovers: u64,
    /// ASIDs handed out.
    pub allocated: u64,
    /// Activations that kept the address space's previous ASID.
    pub reused: u64,
}

/// The slot address space `mm` uses in every CPU's table (address spaces
/// with the same slot evict each other).
#[inline]
pub fn slot_of(mm: u64) -> usize {
    // Fibonacci hashing: address-space numbers are addresses, whose low
    // bits are alignment zeros.
    (mm.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// The ASID tables of all CPUs. One per system, in a `static` (about
/// 72 KiB: [`AsidTable::new`] is `const`), configured once at boot with
/// [`AsidTable::configure`] before any use.
pub struct AsidTable {
    /// `2^asid_bits - 1`; 0 until configured.
    mask: AtomicU64,
    nr_cpus: AtomicUsize,
    cpus: [CachePadded<CpuAsids>; MAX_CPUS],
}

impl Default for AsidTable {
    fn default() -> Self {
        Self::new()
    }
}

impl AsidTable {
    /// An unconfigured table (not `const` under loom, whose atomics are not).
    #[cfg(loom)]
    pub fn new() -> Self {
        AsidTable {
            mask: AtomicU64::new(0),
            nr_cpus: AtomicUsize::new(0),
            cpus: core::array::from_fn(|_| {
                CachePadded(CpuAsids {
                    asid_cache: AtomicU64::new(0),
                    current: AtomicUsize::new(NO_SLOT),
                    slots: core::array::from_fn(|_| Slot {
                        mm: AtomicU64::new(0),
                        ctx: AtomicU64::new(0),
                    }),
                    rollovers: AtomicU64::new(0),
                    allocated: AtomicU64::new(0),
                    reused: AtomicU64::new(0),
                })
            }),
        }
    }

    /// An unconfigured table.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        AsidTable {
            mask: AtomicU64::new(0),
            nr_cpus: AtomicUsize::new(0),
            cpus: [const {
                CachePadded(CpuAsids {
                    asid_cache: AtomicU64::new(0),
                    current: AtomicUsize::new(NO_SLOT),
                    slots: [const {
                        Slot {
                            mm: AtomicU64::new(0),
                            ctx: AtomicU64::new(0),
                        }
                    }; SLOTS],
                    rollovers: AtomicU64::new(0),
                    allocated: AtomicU64::new(0),
                    reused: AtomicU64::new(0),
                })
            }; MAX_CPUS],
        }
    }

    /// Sets the hardware ASID width and the CPU count, once, before the
    /// table is used (the boot CPU, before it starts the others: their
    /// release orders these Relaxed stores before their first use).
    pub fn configure(&self, asid_bits: u32, nr_cpus: usize) -> Result<(), AsidError> {
        if asid_bits == 0 || asid_bits > MAX_ASID_BITS {
            return Err(AsidError::BadAsidBits(asid_bits));
        }
        if nr_cpus == 0 || nr_cpus > MAX_CPUS {
            return Err(AsidError::BadCpuCount(nr_cpus));
        }
        if self.mask.load(Ordering::Relaxed) != 0 {
            return Err(AsidError::AlreadyConfigured);
        }
        let mask = (1u64 << asid_bits) - 1;
        for c in &self.cpus {
            // Version 1, ASID 0: the first allocation is version 1, ASID
            // 1, so no valid context is ever 0.
            c.asid_cache.store(mask + 1, Ordering::Relaxed);
        }
        self.nr_cpus.store(nr_cpus, Ordering::Relaxed);
        self.mask.store(mask, Ordering::Relaxed);
        Ok(())
    }

    fn mask(&self) -> u64 {
        let m = self.mask.load(Ordering::Relaxed);
        debug_assert_ne!(m, 0, "AsidTable used before configure()");
        m
    }

    /// A configured table on the heap (host tests and loom models).
    #[cfg(any(test, loom, feature = "std"))]
    pub fn boxed(asid_bits: u32, nr_cpus: usize) -> Result<std::boxed::Box<Self>, AsidError> {
        let t = std::boxed::Box::new(Self::new());
        t.configure(asid_bits, nr_cpus)?;
        Ok(t)
    }

    /// The hardware ASID mask (0 until configured).
    pub fn asid_mask(&self) -> u64 {
        self.mask.load(Ordering::Relaxed)
    }

    fn new_asid(&self, st: &CpuAsids, tlb: &dyn LocalTlb) -> u64 {
        // Owner-only words: Relaxed.
        let mut next = st.asid_cache.load(Ordering::Relaxed) + 1;
        if next & self.mask() == 0 {
            // Every ASID of this version is taken: old entries may sit in
            // the TLB under ASIDs the new version hands out again.
            tlb.flush_all();
            next += 1; // ASID 0 stays reserved
            st.rollovers.fetch_add(1, Ordering::Relaxed);
        }
        st.asid_cache.store(next, Ordering::Relaxed);
        st.allocated.fetch_add(1, Ordering::Relaxed);
        next
    }

    /// The hardware ASID for address space `mm` (non-zero) on `cpu`, the
    /// calling CPU, which is about to load it: its previous one if it still
    /// holds a valid, unmarked context here, else a fresh one. Interrupts
    /// off. The kernel has published that `cpu` loads `mm` before this call
    /// (see the module documentation).
    pub fn activate(&self, cpu: CpuId, mm: u64, tlb: &dyn LocalTlb) -> u64 {
        debug_assert_ne!(mm, 0, "address space 0 is \"none\"");
        let st = &self.cpus[cpu];
        let mask = self.mask();
        let i = slot_of(mm);
        let s = &st.slots[i];
        let owned = s.mm.load(Ordering::Relaxed) == mm;
        if !owned {
            // Owner-only field.
            s.mm.store(mm, Ordering::Relaxed);
        }
        let mut fresh = None;
        let mut cur = s.ctx.load(Ordering::Relaxed);
        loop {
            let cache = st.asid_cache.load(Ordering::Relaxed);
            let keep = owned && cur & STALE == 0 && cur != 0 && (cur ^ cache) & !mask == 0;
            let ctx = if keep {
                cur
            } else {
                *fresh.get_or_insert_with(|| self.new_asid(st, tlb))
            };
            if injected(Fault::AsidStoreOverMark) {
                // (Mutation only: a plain store can overwrite a mark.)
                s.ctx.store(ctx, Ordering::Relaxed);
                st.current.store(i, Ordering::Relaxed);
                return ctx & mask;
            }
            // (S4) AcqRel: the update is an RMW that fails if a stale mark
            // (`invalidate_cached`'s `fetch_or`) landed since the load, so no
            // mark is ever overwritten; one that preceded it is taken here,
            // with what its initiator cleared (Acquire), and answered with a
            // fresh ASID.
            match s
                .ctx
                .compare_exchange(cur, ctx, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    if keep {
                        st.reused.fetch_add(1, Ordering::Relaxed);
                    }
                    st.current.store(i, Ordering::Relaxed);
                    return ctx & mask;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// `cpu` (the caller) unloads its address space (runs with ASID 0).
    pub fn deactivate(&self, cpu: CpuId) {
        self.cpus[cpu].current.store(NO_SLOT, Ordering::Relaxed);
    }

    /// Gives the address space `cpu` (the caller) has loaded a fresh ASID
    /// and returns it, for a full flush of it on this CPU: the old ASID's
    /// entries become unreachable. Returns `None` if nothing is loaded.
    pub fn drop_current(&self, cpu: CpuId, tlb: &dyn LocalTlb) -> Option<u64> {
        let st = &self.cpus[cpu];
        let i = st.current.load(Ordering::Relaxed);
        if i == NO_SLOT {
            return None;
        }
        let ctx = self.new_asid(st, tlb);
        // A swap, not a store: an RMW never loses a mark's release half, and
        // the fresh ASID answers any mark it replaces (nothing was ever
        // cached under it).
        st.slots[i].ctx.swap(ctx, Ordering::AcqRel);
        Some(ctx & self.mask())
    }

    /// Marks `mm`'s context stale on every CPU (the next activation there
    /// allocates a fresh ASID): one AcqRel `fetch_or` of [`STALE`] into the
    /// context of `mm`'s slot on each CPU, whoever owns that slot now.
    ///
    /// Unconditional on purpose: checking the slot's owner first would be a
    /// load that may miss the owning CPU's assignment of the slot to `mm`
    /// (nothing orders that store before the check: the initiator
    /// synchronises with that CPU only at the later sample, pair (S1)), and
    /// a CPU that assigned the slot, used `mm` and switched away before the
    /// sample would come back to its old ASID and its stale entries. (The
    /// loom model `mm/tests/loom_asid.rs` finds exactly that.) The price: an
    /// address space sharing the slot also gets a fresh ASID next time.
    pub fn invalidate_cached(&self, mm: u64) {
        let i = slot_of(mm);
        if injected(Fault::AsidSkipMark) {
            return;
        }
        for st in self.cpus.iter().take(self.nr_cpus.load(Ordering::Relaxed)) {
            // (S4) AcqRel: releases the cleared entries to the activation
            // that takes the mark. Every write of this word is an RMW.
            st.slots[i].ctx.fetch_or(STALE, Ordering::AcqRel);
        }
    }

    /// Counters summed over all CPUs (a snapshot).
    pub fn stats(&self) -> AsidStats {
        let mut s = AsidStats::default();
        for c in self.cpus.iter().take(self.nr_cpus.load(Ordering::Relaxed)) {
            s.rollovers += c.rollovers.load(Ordering::Relaxed);
            s.allocated += c.allocated.load(Ordering::Relaxed);
            s.reused += c.reused.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::vec::Vec;

    #[derive(Default)]
    struct Tlb {
        flushes: Cell<u64>,
    }

    impl LocalTlb for Tlb {
        fn flush_all(&self) {
            self.flushes.set(self.flushes.get() + 1);
        }
    }

    /// Address-space numbers that land in distinct slots.
    fn distinct_mms(n: usize) -> Vec<u64> {
        let mut seen = [false; SLOTS];
        let mut v = Vec::new();
        let mut a = 0x1000u64;
        while v.len() < n {
            if !seen[slot_of(a)] {
                seen[slot_of(a)] = true;
                v.push(a);
            }
            a += 0x1000;
        }
        v
    }

    #[test]
    fn rejects_bad_configurations() {
        assert_eq!(
            AsidTable::boxed(0, 1).err(),
            Some(AsidError::BadAsidBits(0))
        );
        assert_eq!(
            AsidTable::boxed(8, 65).err(),
            Some(AsidError::BadCpuCount(65))
        );
        assert_eq!(
            AsidError::BadAsidBits(17).to_string(),
            "17-bit ASIDs (supported: 1..=16)"
        );
    }

    #[test]
    fn reuse_within_a_version_and_rollover_with_a_flush() {
        // 3-bit ASIDs: 1..=7 per version.
        let t = AsidTable::boxed(3, 1).unwrap();
        let tlb = Tlb::default();
        let mms = distinct_mms(9);
        let got: Vec<u64> = mms[..7].iter().map(|&m| t.activate(0, m, &tlb)).collect();
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(t.activate(0, mms[3], &tlb), 4, "kept within the version");
        assert_eq!(tlb.flushes.get(), 0);
        assert_eq!(t.activate(0, mms[7], &tlb), 1, "wrapped");
        assert_eq!(tlb.flushes.get(), 1);
        // mms[0]'s ASID 1 belongs to version 1: stale now.
        assert_eq!(t.activate(0, mms[0], &tlb), 2);
        let s = t.stats();
        assert_eq!((s.rollovers, s.allocated, s.reused), (1, 9, 1));
    }

    #[test]
    fn a_stale_mark_forces_a_fresh_asid_on_every_cpu() {
        let t = AsidTable::boxed(8, 2).unwrap();
        let (t0, t1) = (Tlb::default(), Tlb::default());
        let mm = 0x4000_1000;
        let a0 = t.activate(0, mm, &t0);
        let a1 = t.activate(1, mm, &t1);
        t.deactivate(0);
        t.deactivate(1);
        assert_eq!(t.activate(0, mm, &t0), a0);
        t.deactivate(0);
        t.invalidate_cached(mm);
        assert_ne!(t.activate(0, mm, &t0), a0);
        assert_ne!(t.activate(1, mm, &t1), a1);
        // Another address space is not affected.
        let other = distinct_mms(2)
            .into_iter()
            .find(|&m| slot_of(m) != slot_of(mm))
            .unwrap();
        let b = t.activate(0, other, &t0);
        t.invalidate_cached(mm);
        assert_eq!(t.activate(0, other, &t0), b);
    }

    #[test]
    fn a_colliding_address_space_evicts_and_never_shares_an_asid() {
        let t = AsidTable::boxed(8, 1).unwrap();
        let tlb = Tlb::default();
        let a = 0x1000u64;
        let b = (2..)
            .map(|k| k * 0x1000)
            .find(|&m| slot_of(m) == slot_of(a))
            .unwrap();
        let x = t.activate(0, a, &tlb);
        let y = t.activate(0, b, &tlb);
        assert_ne!(x, y);
        let x2 = t.activate(0, a, &tlb);
        assert_ne!(x2, x, "an evicted address space gets a fresh ASID");
        assert_ne!(x2, y);
    }

    #[test]
    fn drop_current_hands_out_a_fresh_asid() {
        let t = AsidTable::boxed(8, 1).unwrap();
        let tlb = Tlb::default();
        assert_eq!(t.drop_current(0, &tlb), None);
        let a = t.activate(0, 0x1000, &tlb);
        let b = t.drop_current(0, &tlb).unwrap();
        assert_ne!(a, b);
        t.deactivate(0);
        assert_eq!(t.activate(0, 0x1000, &tlb), b, "the fresh ASID is kept");
    }
}
