//! The TLB: reset and size discovery, the MMU configuration the refill
//! handler relies on, and the local operations of TLB maintenance.
//!
//! # Reset
//!
//! After reset the TLB's contents are undefined on real hardware, and two
//! entries that match the same virtual page raise a machine check. QEMU
//! zeroes it, which leaves every entry matching virtual page 0 of ASID 0.
//! [`init`] gives every entry a distinct, never-used virtual page with both
//! halves invalid, as Linux's `local_flush_tlb_all` does; every later
//! invalidation writes entry `i` back to the same placeholder.
//!
//! The placeholder pages are `CKSEG0 + i * 8 KiB`. CKSEG0 itself is never
//! translated, but EntryHi keeps only R (bits 63:62) and the implemented
//! VPN2 bits, so the entries really match the top of XKSEG; nothing may be
//! mapped in the last 2 GiB below XKSEG's end, and since V = 0 even an
//! accidental hit is a TLB-invalid exception, never a stray translation.
//!
//! # Size
//!
//! Config1.MMUSize gives up to 64 entries; Octeon II+ extend it with
//! Config4.MMUSizeExt (Config4.MMUExtDef = 1), which exists only when the
//! Config1..3 M bits chain to it. QEMU's Octeon68XX fills Config4 with an
//! extension of 3 (256 entries) but leaves Config3.M clear, so the
//! architected size there is Config1's 64, which is also all it models. As a
//! guard against such disagreements [`init`] verifies the size by reading
//! entries back (on a TLB smaller than advertised the indices wrap).
//!
//! # Configuration for `mm::pgtable::Mips64Pte`
//!
//! PageMask = 0 (4 KiB pages, so one entry maps an even/odd pair of 8 KiB),
//! PageGrain.ELPA kept set (PFNs above 36 bits; QEMU's Octeon68XX sets it at
//! reset and does not let it be cleared), and PageGrain.RIE/XIE set where
//! Config3.RXI says the CPU implements read/execute inhibit (QEMU's model
//! does not; Octeon II+ silicon does). The widths of EntryHi.ASID and of the
//! user segment are probed by writing ones to EntryHi and reading back, as
//! Linux's `cpu_probe_vmbits` does for the latter: 8-bit ASIDs and 42 bits
//! of xuseg on QEMU's Octeon68XX.
//!
//! # Local maintenance
//!
//! Every operation here runs with interrupts off and restores EntryHi (whose
//! ASID field is the current address space's) before it returns. QEMU keeps
//! "shadow" copies of entries replaced by `tlbwr` (modelling micro-TLBs);
//! they are dropped by a `tlbp` that misses the main TLB but hits a shadow,
//! by a `tlbwi` that does more than upgrade an entry, and by `tlbr`, so the
//! probe-and-invalidate and read-and-invalidate loops below leave no stale
//! shadow behind either.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::cp0::{self, config3, config4, index, pagegrain};
use super::paging::CKSEG0;

/// The TLB size found by [`init`] (0 before it ran).
static ENTRIES: AtomicUsize = AtomicUsize::new(0);
/// EntryHi.ASID mask found by [`init`].
static ASID_MASK: AtomicU64 = AtomicU64::new(0);
/// Bits of xuseg found by [`init`].
static SEGBITS: AtomicU32 = AtomicU32::new(0);

/// Bytes mapped by one TLB entry (an even/odd pair of 4 KiB pages).
pub const PAIR: u64 = 0x2000;
/// EntryHi's VPN2 field, as far as any implementation keeps it (with R).
const VPN2_MASK: u64 = !(PAIR - 1);
/// EntryLo.G: set in both halves, the entry ignores the ASID.
const ENTRYLO_G: u64 = 1;

/// The number of TLB entries the Config registers advertise.
pub fn advertised_entries() -> usize {
    let c1 = cp0::config1();
    let mut entries = (((c1 >> 25) & 0x3f) + 1) as usize;
    // Config1.M → Config2 exists, Config2.M → Config3, Config3.M → Config4.
    let has_config4 =
        c1 & (1 << 31) != 0 && cp0::config2() & (1 << 31) != 0 && cp0::config3() & (1 << 31) != 0;
    if has_config4 {
        let c4 = cp0::config4();
        // MMUExtDef (15:14) = 1: Config4[7:0] extends MMUSize-1 by 6 bits.
        if (c4 >> 14) & 0b11 == 1 {
            entries += ((c4 & 0xff) as usize) << 6;
        }
    }
    entries
}

/// The VPN2 placeholder of entry `i` (see the module comment).
const fn placeholder(i: usize) -> u64 {
    CKSEG0 + (i as u64) * PAIR
}

/// What [`init`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbInfo {
    /// Working TLB entries.
    pub entries: usize,
    /// Width of EntryHi.ASID in bits.
    pub asid_bits: u32,
    /// Bits of virtual address in xuseg.
    pub segbits: u32,
    /// Whether RI/XI are enforced (Config3.RXI).
    pub rixi: bool,
}

/// Why this CPU's MMU cannot run Samara's page tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbError {
    /// Config4.KScrExist lacks KScratch2, where the refill handler finds
    /// the root page table.
    NoKScratch { kscr_exist: u64 },
    /// PageGrain.ELPA is clear and cannot be set: PFNs above 36 bits would
    /// be dropped from EntryLo.
    NoElpa,
    /// EntryHi.ASID reads back as a non-contiguous or empty mask.
    BadAsidMask(u64),
    /// xuseg is smaller than the page tables assume
    /// (`mm::pgtable::mips64::SEGBITS`).
    SegbitsTooSmall(u32),
    /// A secondary CPU's MMU differs from the boot CPU's.
    Mismatch { boot: TlbInfo, this: TlbInfo },
}

impl core::fmt::Display for TlbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TlbError::NoKScratch { kscr_exist } => write!(
                f,
                "KScratch2 is not implemented (Config4.KScrExist = {kscr_exist:#x}); the TLB \
                 refill handler needs it"
            ),
            TlbError::NoElpa => f.write_str("PageGrain.ELPA cannot be set"),
            TlbError::BadAsidMask(m) => write!(f, "EntryHi.ASID reads back as {m:#x}"),
            TlbError::SegbitsTooSmall(b) => write!(
                f,
                "xuseg has {b} bits, fewer than the {} the page tables use",
                mm::pgtable::mips64::SEGBITS
            ),
            TlbError::Mismatch { boot, this } => {
                write!(f, "MMU {this:?} differs from the boot CPU's {boot:?}")
            }
        }
    }
}

/// Resets every TLB entry to an invalid placeholder, configures PageMask
/// and PageGrain, probes the ASID and segment widths, and returns what it
/// found. Called on each CPU before it uses mapped addresses, interrupts
/// off. The boot CPU's results are recorded; a secondary must match them.
/// EntryHi is left with ASID 0 (no address space).
pub fn init() -> Result<TlbInfo, TlbError> {
    let kscr_exist = (cp0::config4() >> config4::KSCR_EXIST_SHIFT) & 0xff;
    if kscr_exist & (1 << cp0::KSCRATCH_PGD) == 0 {
        return Err(TlbError::NoKScratch { kscr_exist });
    }
    let rixi = cp0::config3() & config3::RXI != 0;
    let mut pg = cp0::pagegrain() | pagegrain::ELPA;
    if rixi {
        pg |= pagegrain::RIE | pagegrain::XIE;
    }
    // SAFETY: ELPA (and RIE/XIE where implemented) is the EntryLo format of `Mips64Pte`; no user mapping exists yet on this CPU.
    unsafe { cp0::set_pagegrain(pg) };
    if cp0::pagegrain() & pagegrain::ELPA == 0 {
        return Err(TlbError::NoElpa);
    }
    // SAFETY: 4 KiB pages for every later TLB write.
    unsafe { cp0::set_pagemask(0) };

    // SAFETY: a probe of the implemented ASID bits. EntryHi is rewritten with ASID 0 below; no user mapping is in use, interrupts are off.
    unsafe { cp0::tlb::set_entryhi(0x3ff) };
    let asid_mask = cp0::entryhi() & 0x3ff;
    if asid_mask == 0 || (asid_mask + 1) & asid_mask != 0 {
        // SAFETY: as above.
        unsafe { cp0::tlb::set_entryhi(0) };
        return Err(TlbError::BadAsidMask(asid_mask));
    }
    // SAFETY: a probe of the implemented VPN2 bits, as above.
    unsafe { cp0::tlb::set_entryhi(0x3fff_ffff_ffff_e000) };
    let segbits = 64 - (cp0::entryhi() & 0x3fff_ffff_ffff_e000).leading_zeros();
    // SAFETY: as above.
    unsafe { cp0::tlb::set_entryhi(0) };
    if segbits < mm::pgtable::mips64::SEGBITS {
        return Err(TlbError::SegbitsTooSmall(segbits));
    }

    let entries = reset_entries();
    let info = TlbInfo {
        entries,
        asid_bits: asid_mask.count_ones(),
        segbits,
        rixi,
    };
    if ENTRIES.load(Ordering::Relaxed) == 0 {
        // The boot CPU (secondaries start after it returned; their release
        // is a Release/Acquire handshake).
        ENTRIES.store(entries, Ordering::Relaxed);
        ASID_MASK.store(asid_mask, Ordering::Relaxed);
        SEGBITS.store(segbits, Ordering::Relaxed);
    } else {
        let boot = TlbInfo {
            entries: ENTRIES.load(Ordering::Relaxed),
            asid_bits: ASID_MASK.load(Ordering::Relaxed).count_ones(),
            segbits: SEGBITS.load(Ordering::Relaxed),
            rixi,
        };
        if boot != info {
            return Err(TlbError::Mismatch { boot, this: info });
        }
    }
    Ok(info)
}

/// Writes every entry's placeholder and returns the real TLB size.
fn reset_entries() -> usize {
    let advertised = advertised_entries();
    cp0::tlb::set_wired(0);
    // Highest index first: on a TLB smaller than advertised the indices wrap,
    // and writing downwards leaves every real slot holding its own index's
    // placeholder, which the read-back below relies on.
    for i in (0..advertised).rev() {
        // SAFETY: each placeholder is a distinct VPN2 with V = 0 in both halves (EntryLo0/1 = 0), in the part of XKSEG nothing maps, with a 4 KiB page mask; the kernel runs unmapped, so no live translation is removed. Interrupts are off (caller's contract).
        unsafe { cp0::tlb::write_indexed(i as u64, placeholder(i), 0, 0, 0) };
    }
    // The first index whose read-back is not its own placeholder is where
    // the hardware wrapped around.
    let mut real = advertised;
    for i in 0..advertised {
        // SAFETY: EntryHi is restored by the caller; interrupts are off.
        let hi = unsafe { cp0::tlb::read_entryhi(i as u64) };
        // Compare only the low VPN2 bits that every implementation keeps.
        if (hi ^ placeholder(i)) & VPN2_MASK & 0xff_ffff_ffff != 0 {
            real = i;
            break;
        }
    }
    // SAFETY: no address space is loaded yet.
    unsafe { cp0::tlb::set_entryhi(0) };
    real
}

/// The TLB size found at boot (0 if [`init`] has not run).
pub fn entries() -> usize {
    ENTRIES.load(Ordering::Relaxed)
}

/// The EntryHi.ASID mask found at boot.
pub fn asid_mask() -> u64 {
    ASID_MASK.load(Ordering::Relaxed)
}

/// Bits of xuseg found at boot.
pub fn segbits() -> u32 {
    SEGBITS.load(Ordering::Relaxed)
}

/// The ASID EntryHi holds now (the running address space's; 0 for none).
#[inline]
pub fn current_asid() -> u64 {
    cp0::entryhi() & asid_mask()
}

/// Loads `asid` into EntryHi: from the next instruction on, user accesses
/// (and refills) use that address space's entries.
///
/// # Safety
/// KScratch2 must already hold that address space's root (refills tag what
/// they load with this ASID), and the caller owns the consequences for the
/// code running on the old ASID's mappings (none may be in use).
#[inline]
pub unsafe fn set_asid(asid: u64) {
    // SAFETY: per the function's contract.
    unsafe { cp0::tlb::set_entryhi(asid & asid_mask()) };
}

/// Invalidates entry `i` (writes its placeholder back).
///
/// # Safety
/// Interrupts off; EntryHi is clobbered (the caller restores it).
#[inline]
unsafe fn invalidate(i: u64) {
    // SAFETY: placeholder `i` is unique to index `i` (module comment), so it duplicates no other entry; V = 0.
    unsafe { cp0::tlb::write_at(i, placeholder(i as usize), 0, 0) };
}

/// Drops every entry (global or not): a full local flush, as at an ASID
/// generation rollover.
pub fn flush_all() {
    let saved = cp0::entryhi();
    for i in 0..entries() as u64 {
        // SAFETY: interrupts are off (kernel rule); EntryHi restored below.
        unsafe { invalidate(i) };
    }
    // SAFETY: restores the current ASID.
    unsafe { cp0::tlb::set_entryhi(saved) };
}

/// Drops the entries of `asid` that map user addresses in `[start, end)`
/// (`end` = `u64::MAX`: all of them). Probes pair by pair when the range
/// has at most half as many pairs as the TLB has entries, else reads every
/// entry back (Linux's `local_flush_tlb_range` makes the same choice, but
/// drops the whole ASID instead of scanning).
pub fn flush_asid(asid: u64, start: u64, end: u64) {
    let saved = cp0::entryhi();
    let asid = asid & asid_mask();
    let first = start & VPN2_MASK;
    let n = entries() as u64;
    let pairs = end.saturating_sub(first).div_ceil(PAIR);
    if pairs <= n / 2 {
        let mut va = first;
        while va < end {
            // SAFETY: interrupts off; EntryHi restored below.
            let idx = unsafe { cp0::tlb::probe(va | asid) };
            if idx & index::P == 0 {
                // SAFETY: as above.
                unsafe { invalidate(idx) };
            }
            va += PAIR;
        }
    } else {
        for i in 0..n {
            // SAFETY: interrupts off; EntryHi restored below.
            let (hi, lo0, lo1) = unsafe { cp0::tlb::read(i) };
            let va = hi & VPN2_MASK;
            let user = hi >> 62 == 0;
            let global = lo0 & lo1 & ENTRYLO_G != 0;
            if user && !global && hi & asid_mask() == asid && va >= first && va < end {
                // SAFETY: as above.
                unsafe { invalidate(i) };
            }
        }
    }
    // SAFETY: restores the current ASID.
    unsafe { cp0::tlb::set_entryhi(saved) };
}

/// Writes the translation of the pair containing user address `va` for the
/// current ASID: into the entry that holds it if there is one (a stale
/// invalid or read-only copy), else into a random one. The fault path calls
/// this after installing or upgrading a PTE, like Linux's `__update_tlb`:
/// the retried access must not hit the old copy. `lo0`/`lo1` are the even
/// and odd page's PTEs, verbatim.
pub fn update(va: u64, lo0: u64, lo1: u64) {
    let hi = (va & VPN2_MASK & !(3 << 62)) | current_asid();
    // SAFETY: interrupts off. `hi` keeps the current ASID, so EntryHi is unchanged in what matters. The probe decides between `tlbwi` on the matching entry and `tlbwr`, so no duplicate can be created.
    unsafe {
        let idx = cp0::tlb::probe(hi);
        if idx & index::P == 0 {
            cp0::tlb::write_at(idx, hi, lo0, lo1);
        } else {
            cp0::tlb::write_random(hi, lo0, lo1);
        }
    }
}

/// Whether the TLB holds a valid translation of user address `va` for
/// `asid` (for tests: the even or odd half's V bit).
pub fn probe_valid(asid: u64, va: u64) -> bool {
    let saved = cp0::entryhi();
    // SAFETY: interrupts off; EntryHi restored below.
    let valid = unsafe {
        let idx = cp0::tlb::probe((va & VPN2_MASK) | (asid & asid_mask()));
        if idx & index::P != 0 {
            false
        } else {
            let (_, lo0, lo1) = cp0::tlb::read(idx);
            let lo = if va & 0x1000 == 0 { lo0 } else { lo1 };
            lo & 2 != 0
        }
    };
    // SAFETY: restores the current ASID.
    unsafe { cp0::tlb::set_entryhi(saved) };
    valid
}
