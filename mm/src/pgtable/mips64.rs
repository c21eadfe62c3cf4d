//! A software PTE format for MIPS64 Cavium Octeon, designed so the TLB
//! refill handler copies PTEs into EntryLo0/EntryLo1 without touching them.
//!
//! MIPS has no hardware page walker: a TLB miss in xuseg raises an XTLB
//! refill exception and a handler of a few instructions fills a TLB entry.
//! Linux keeps software bits in the low bits of its MIPS PTEs and shifts or
//! rotates them out on every refill. Samara puts the leaf in EntryLo's own
//! layout and its software bits in EntryLo's *fill* field, which `dmtc0`
//! ignores, so the refill is two loads and two `dmtc0`s.
//!
//! # Leaf layout (= EntryLo0/EntryLo1)
//!
//! | bit    | name | meaning                                                 |
//! |--------|------|---------------------------------------------------------|
//! | 0      | G    | 0: user pages are per-ASID                              |
//! | 1      | V    | valid: any of read/write/exec is allowed                |
//! | 2      | D    | "dirty" = writable (writes to D = 0 raise TLB Modified) |
//! | 3-5    | C    | cache attribute: 0, see below                           |
//! | 6-42   | PFN  | `pa >> 12` (PABITS = 49: 37 bits)                      |
//! | 43-48  | fill | ignored by `dmtc0`, unused                              |
//! | 49     | fill | software: "mapped" (set on every leaf)                  |
//! | 50-61  | fill | ignored by `dmtc0`, unused                              |
//! | 62     | XI   | execute-inhibit (with PageGrain.XIE)                    |
//! | 63     | RI   | read-inhibit (with PageGrain.RIE)                       |
//!
//! Sources: QEMU's Octeon68XX model has PABITS = 49, SEGBITS = 42, and
//! PageGrain.ELPA set at reset (`target/mips/cpu-defs.c.inc`); its
//! `helper_dmtc0_entrylo0/1` store `value & (PAMask >> 6)` plus RI/XI only
//! if PageGrain.RIE/XIE are set, with `PAMask = 2^PABITS - 1` while ELPA is
//! set (`restore_pamask`). So bits 0..=42 are kept and bits 43..=61 are
//! dropped, as the MIPS64 architecture specifies for EntryLo's fill field.
//!
//! * **C = 0.** Linux on Octeon never sets `_page_cachable_default`
//!   (`octeon_cache_init` in `arch/mips/mm/c-octeon.c` does not call
//!   `coherency_setup`), so its user PTEs carry C = 0, and its XKPHYS
//!   cached base is `CAC_BASE = 0x8000_0000_0000_0000`, also CCA 0
//!   (`asm/mach-cavium-octeon/spaces.h`: "they are all the same"): Octeon
//!   keeps memory coherent in hardware whatever the CCA. QEMU models no
//!   caches. (On a generic MIPS64 core CCA 0 would be write-through; this
//!   format is for Octeon.)
//! * **RI/XI.** Set for pages without read / exec permission. They take
//!   effect only if the kernel sets PageGrain.RIE and XIE, which Octeon II
//!   and later support (Linux: `cpu_has_rixi` is true for every Octeon but
//!   the first generation). QEMU's Octeon68XX model does not implement them
//!   (no Config3.RXI): there, exec-only or write-only pages are readable,
//!   and non-executable pages executable. The PTE in memory still records
//!   the exact protection, so `mprotect` and the fault path see it.
//! * **PROT_NONE** is V = 0 with the frame and "mapped" kept.
//! * **USER** is implied: every xuseg mapping is reachable from user mode;
//!   [`Mips64Pte::representable`] adds it.
//!
//! # Table entries
//!
//! A table entry is the next table's XKPHYS cached address, `CAC_BASE |
//! pa`: the refill handler uses it as a pointer without conversion. Bits
//! 49..=58 of an XKPHYS address are zero (PABITS = 49), which is why the
//! leaf's "mapped" bit lives there: a leaf and a table entry never look
//! alike.
//!
//! # The XTLB refill handler
//!
//! The table is 4 levels of 512 8-byte entries (9 index bits each above
//! the 12-bit page offset); xuseg is 2^42 bytes, so only VA bits 39..=41
//! index the root. The handler uses only k0/k1. The arch layer keeps the
//! current address space's [`super::PageTable::root_entry`] (the root's
//! XKPHYS address) in a KScratch register (Octeon68XX implements KScratch
//! 2..5: Config4.KScrExist = 0x3c), written on every switch of address
//! space together with EntryHi.ASID. PageMask is 0 (4 KiB pages) from boot
//! on, and PageGrain keeps ELPA (and sets RIE/XIE where supported).
//!
//! ```text
//!     dmfc0  k0, BadVAddr
//!     dsrl32 k1, k0, 30           # VA[63:62]: only xuseg is mapped through
//!     bnez   k1, not_user         #   user page tables
//!      dmfc0 k1, KScratch2        # (delay slot) root table, XKPHYS address
//!     dsrl32 k0, k0, 4            # level 4: VA >> 36 = VA[47:39] * 8
//!     andi   k0, k0, 0xff8
//!     daddu  k1, k1, k0
//!     ld     k1, 0(k1)            # level-3 table or 0
//!     beqz   k1, no_table
//!      dmfc0 k0, BadVAddr         # (delay slot)
//!     dsrl   k0, k0, 27           # level 3: VA[38:30] * 8
//!     andi   k0, k0, 0xff8
//!     daddu  k1, k1, k0
//!     ld     k1, 0(k1)            # level-2 table or 0
//!     beqz   k1, no_table
//!      dmfc0 k0, BadVAddr
//!     dsrl   k0, k0, 18           # level 2: VA[29:21] * 8
//!     andi   k0, k0, 0xff8
//!     daddu  k1, k1, k0
//!     ld     k1, 0(k1)            # leaf table or 0
//!     beqz   k1, no_table
//!      dmfc0 k0, BadVAddr
//!     dsrl   k0, k0, 9            # level 1: the even/odd pair of VA[20:13]:
//!     andi   k0, k0, 0xff0        #   16-byte aligned, even PTE first
//!     daddu  k1, k1, k0
//!     ld     k0, 0(k1)            # even page's PTE -> EntryLo0, verbatim
//!     ld     k1, 8(k1)            # odd page's PTE  -> EntryLo1, verbatim
//!     dmtc0  k0, EntryLo0
//!     dmtc0  k1, EntryLo1
//!     ehb
//!     tlbwr                       # EntryHi (VPN2, ASID) was set by the miss
//!     eret
//! no_table:                       # no leaf table: load an invalid pair; the
//!     dmtc0  zero, EntryLo0       #   retried access raises TLBL/TLBS, whose
//!     dmtc0  zero, EntryLo1       #   handler calls mm's fault path
//!     ehb
//!     tlbwr
//!     eret
//! ```
//!
//! About 30 instructions, no branch on the hit path but the three
//! table-present checks, and no PTE bit manipulation at all. An empty PTE
//! is 0, so a missing page also refills as V = 0 and faults on the retry. Loads are plain `ld`s: MIPS orders a load after the load that
//! produced its address, and [`super::PageTable`] publishes every table with
//! a Release store after zeroing it, so the handler never sees a stale
//! entry in a fresh table.
//!
//! What the arch layer must do around it, because one TLB entry maps a
//! *pair* of pages:
//!
//! * After the fault path installs or upgrades a PTE, the old pair may still
//!   be in the TLB (with V = 0 or D = 0 for this page): rewrite it (`tlbp`;
//!   reload both EntryLo from the table; `tlbwi` if found), as Linux's
//!   `__update_tlb` does, or the access faults again.
//! * Flushing a page flushes its pair's entry (`tlbp` matches VPN2).
//! * The handler runs with EXL set, so it cannot be interrupted: a CPU that
//!   answers a TLB shootdown is not in the middle of a walk, which is what
//!   lets [`super::TlbGather`] free tables after the shootdown.

use super::pte::{Prot, PteFormat};
use crate::addr::{Frame, PhysAddr, PAGE_SHIFT};

/// Physical address bits of Octeon II/III (and QEMU's Octeon68XX).
pub const PABITS: u32 = 49;
/// Virtual address bits of xuseg on QEMU's Octeon68XX. The arch layer must
/// check at boot that the CPU implements at least this many (write all ones
/// to EntryHi's VPN2 and read back, as Linux's `cpu_probe_vmbits` does).
pub const SEGBITS: u32 = 42;

/// Global.
pub const G: u64 = 1 << 0;
/// Valid.
pub const V: u64 = 1 << 1;
/// Dirty, i.e. writable.
pub const D: u64 = 1 << 2;
/// Shift of the cache attribute field.
pub const C_SHIFT: u32 = 3;
/// Cache attribute for user pages on Octeon (see the module documentation).
pub const CCA: u64 = 0;
/// Shift of the PFN field.
pub const PFN_SHIFT: u32 = 6;
/// The PFN field, bits 6..=42.
pub const PFN_MASK: u64 = ((1 << (PABITS - PAGE_SHIFT)) - 1) << PFN_SHIFT;
/// What `dmtc0 EntryLo` keeps of a value, apart from RI/XI: bits 0..=42.
pub const ENTRYLO_MASK: u64 = (1 << (PABITS - PAGE_SHIFT + PFN_SHIFT)) - 1;
/// Software: the entry is a leaf mapping. In EntryLo's fill field, and in
/// the bits every XKPHYS table pointer has clear.
pub const SW_MAPPED: u64 = 1 << 49;
/// Execute-inhibit.
pub const XI: u64 = 1 << 62;
/// Read-inhibit.
pub const RI: u64 = 1 << 63;
/// XKPHYS, cached (CCA 0): Linux's `CAC_BASE` on Octeon.
pub const XKPHYS_CACHED: u64 = 0x8000_0000_0000_0000;
/// The bits an XKPHYS table pointer may have set besides `XKPHYS_CACHED`.
const PA_MASK: u64 = (1 << PABITS) - 1;

/// Octeon MIPS64 entries. See the module documentation.
#[derive(Debug)]
pub enum Mips64Pte {}

impl PteFormat for Mips64Pte {
    const NAME: &'static str = "mips64";
    const USER_VA_END: u64 = 1 << SEGBITS;
    const MAX_PFN: u64 = PA_MASK >> PAGE_SHIFT;

    #[inline]
    fn encode_leaf(frame: Frame, prot: Prot) -> u64 {
        let prot = Self::representable(prot);
        let mut raw = SW_MAPPED | (CCA << C_SHIFT) | ((frame.pfn() << PFN_SHIFT) & PFN_MASK);
        if prot.is_accessible() {
            raw |= V;
        }
        if prot.contains(Prot::WRITE) {
            raw |= D;
        }
        if !prot.contains(Prot::READ) {
            raw |= RI;
        }
        if !prot.contains(Prot::EXEC) {
            raw |= XI;
        }
        raw
    }

    #[inline]
    fn encode_table(table: PhysAddr) -> u64 {
        XKPHYS_CACHED | (table.as_u64() & PA_MASK)
    }

    #[inline]
    fn is_leaf(raw: u64) -> bool {
        raw & SW_MAPPED != 0
    }

    #[inline]
    fn is_table(raw: u64) -> bool {
        raw & !PA_MASK == XKPHYS_CACHED
    }

    #[inline]
    fn is_accessible(raw: u64) -> bool {
        raw & (SW_MAPPED | V) == SW_MAPPED | V
    }

    #[inline]
    fn leaf_frame(raw: u64) -> Frame {
        Frame::from_pfn((raw & PFN_MASK) >> PFN_SHIFT)
    }

    #[inline]
    fn leaf_prot(raw: u64) -> Prot {
        let mut p = Prot::USER;
        if raw & V != 0 {
            if raw & RI == 0 {
                p |= Prot::READ;
            }
            if raw & D != 0 {
                p |= Prot::WRITE;
            }
            if raw & XI == 0 {
                p |= Prot::EXEC;
            }
        }
        p
    }

    #[inline]
    fn table_addr(raw: u64) -> PhysAddr {
        PhysAddr::new(raw & PA_MASK)
    }

    #[inline]
    fn representable(prot: Prot) -> Prot {
        prot | Prot::USER
    }
}

/// What QEMU's `dmtc0 EntryLo0/1` stores for `value` on an Octeon68XX with
/// PageGrain = `pagegrain` (a model of `helper_dmtc0_entrylo0`, for tests
/// of the "loaded verbatim" claim and for the arch layer's own checks).
pub const fn dmtc0_entrylo(value: u64, pagegrain: u32) -> u64 {
    /// PageGrain.XIE is bit 30, RIE bit 31; EntryLo.XI is bit 62, RI 63.
    const PG_XIE_SHIFT: u32 = 30;
    let rxi = value & (((pagegrain as u64) & (3 << PG_XIE_SHIFT)) << 32);
    (value & ENTRYLO_MASK) | rxi
}
