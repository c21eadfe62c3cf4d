//! Coprocessor 0 access: the few system registers Samara uses.
//!
//! Reads are side-effect free and safe. Writes that change how the CPU
//! translates addresses or takes exceptions are `unsafe`; each is followed by
//! `ehb` so the new value governs the very next instruction (MIPS r2 clears
//! execution hazards only on `ehb`, `eret` or a `jr.hb`).

use core::arch::asm;

/// Status bits (CP0 register 12).
pub mod status {
    /// Interrupt enable.
    pub const IE: u64 = 1 << 0;
    /// Exception level: set by every exception, cleared by `eret`.
    pub const EXL: u64 = 1 << 1;
    /// Error level: set at reset and by cache-error/NMI exceptions.
    pub const ERL: u64 = 1 << 2;
    /// Mode before the exception: 0b00 kernel, 0b01 supervisor, 0b10 user.
    pub const KSU_MASK: u64 = 0b11 << 3;
    /// KSU = user.
    pub const KSU_USER: u64 = 0b10 << 3;
    /// 64-bit user segment (xuseg) and XTLB refill for user misses.
    pub const UX: u64 = 1 << 5;
    /// 64-bit kernel segments (XKPHYS, XKSEG) and XTLB refill for them.
    pub const KX: u64 = 1 << 7;
    /// Interrupt mask bits IM7..IM0; IM7 is the Count/Compare timer.
    pub const IM_MASK: u64 = 0xff << 8;
    pub const IM7: u64 = 1 << 15;
    /// Bootstrap exception vectors (in the boot ROM at 0xbfc00200).
    pub const BEV: u64 = 1 << 22;
}

/// Config3 bits (CP0 register 16, select 3).
pub mod config3 {
    /// RI/XI are implemented (PageGrain.RIE/XIE and EntryLo.RI/XI).
    pub const RXI: u64 = 1 << 12;
}

/// Config4 fields (CP0 register 16, select 4).
pub mod config4 {
    /// KScrExist (23:16): bit n set means KScratch register n (CP0 31, n)
    /// exists.
    pub const KSCR_EXIST_SHIFT: u32 = 16;
    /// AE: EntryHi.ASID is 10 bits wide (ASIDX).
    pub const AE: u64 = 1 << 24;
}

/// HWREna bits (CP0 register 7, select 0): which hardware registers user
/// mode may read with `rdhwr` (the rest raise Reserved Instruction).
pub mod hwrena {
    /// Hardware register 2, CC: the Count register.
    pub const CC: u64 = 1 << 2;
    /// Hardware register 3, CCRes: how many CPU cycles one Count tick is.
    pub const CCRES: u64 = 1 << 3;
}

/// PageGrain bits (CP0 register 5, select 1).
pub mod pagegrain {
    /// Read-inhibit enable.
    pub const RIE: u64 = 1 << 31;
    /// Execute-inhibit enable.
    pub const XIE: u64 = 1 << 30;
    /// Large physical addresses: PFNs above 36 bits are used.
    pub const ELPA: u64 = 1 << 29;
}

/// Index bits (CP0 register 0).
pub mod index {
    /// Set by `tlbp` when no entry matched.
    pub const P: u64 = 1 << 31;
}

/// The KScratch register holding the current address space's root page
/// table (its XKPHYS address), read by the XTLB refill handler. Octeon II
/// and later implement KScratch 2..5 (Config4.KScrExist = 0x3c).
pub const KSCRATCH_PGD: u32 = 2;

/// The KScratch register holding this CPU's logical number
/// ([`super::smp::this_cpu`]).
pub const KSCRATCH_CPU: u32 = 3;

/// Cause bits (CP0 register 13).
pub mod cause {
    /// The exception was taken in a branch delay slot: EPC names the branch.
    pub const BD: u64 = 1 << 31;
    /// Timer interrupt pending (r2).
    pub const TI: u64 = 1 << 30;
    /// Pending interrupt bits IP7..IP0.
    pub const IP_SHIFT: u32 = 8;

    /// The 5-bit exception code.
    pub const fn exc_code(cause: u64) -> u64 {
        (cause >> 2) & 0x1f
    }
}

macro_rules! read32 {
    ($(#[$m:meta])* $name:ident, $reg:literal) => {
        $(#[$m])*
        #[inline(always)]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading this CP0 register has no side effects; the 32-bit value arrives sign-extended, as `mfc0` defines.
            unsafe { asm!(".set push", ".set noat", concat!("mfc0 {0}, ", $reg), ".set pop", out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! read64 {
    ($(#[$m:meta])* $name:ident, $reg:literal) => {
        $(#[$m])*
        #[inline(always)]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading this CP0 register has no side effects.
            unsafe { asm!(".set push", ".set noat", concat!("dmfc0 {0}, ", $reg), ".set pop", out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

read32!(
    /// Status (12, 0).
    status, "$12");
read32!(
    /// Cause (13, 0).
    cause, "$13");
read32!(
    /// Processor identification (15, 0).
    prid, "$15, 0");
read32!(
    /// EBase (15, 1): exception base and CPUNum.
    ebase, "$15, 1");
read32!(
    /// Count (9, 0): the free-running cycle counter.
    count, "$9");
read32!(
    /// Config (16, 0).
    config0, "$16, 0");
read32!(
    /// Config1 (16, 1): TLB size, caches.
    config1, "$16, 1");
read32!(
    /// Config2 (16, 2).
    config2, "$16, 2");
read32!(
    /// Config3 (16, 3).
    config3, "$16, 3");
read32!(
    /// Config4 (16, 4): MMU size extension on Octeon II and later.
    config4, "$16, 4");
read64!(
    /// EPC (14, 0).
    epc, "$14");
read64!(
    /// BadVAddr (8, 0).
    badvaddr, "$8");
read64!(
    /// EntryHi (10, 0).
    entryhi, "$10");
read64!(
    /// KScratch2 (31, 2): the current root page table ([`KSCRATCH_PGD`]).
    kscratch_pgd, "$31, 2");
read64!(
    /// KScratch3 (31, 3): this CPU's logical number ([`KSCRATCH_CPU`]).
    kscratch_cpu, "$31, 3");
read32!(
    /// PageGrain (5, 1).
    pagegrain, "$5, 1");
read32!(
    /// PageMask (5, 0).
    pagemask, "$5, 0");
read32!(
    /// Compare (11, 0).
    compare, "$11");
read32!(
    /// HWREna (7, 0).
    hwrena, "$7, 0");

/// EBase.CPUNum: this CPU's number, 0 on the boot CPU.
#[inline(always)]
pub fn cpu_num() -> u32 {
    (ebase() & 0x3ff) as u32
}

/// Writes Status.
///
/// # Safety
/// The caller owns the consequences: setting IE with no handler for an
/// enabled interrupt, clearing KX while running from 64-bit segments, or
/// setting BEV/EXL at the wrong moment changes how the next exception or
/// address is handled.
#[inline(always)]
pub unsafe fn set_status(v: u64) {
    // SAFETY: per the function's contract.
    unsafe {
        asm!(".set push", ".set noat", "mtc0 {0}, $12", "ehb", ".set pop", in(reg) v, options(nostack, preserves_flags))
    };
}

/// Writes Compare, which also acknowledges a pending timer interrupt.
#[inline(always)]
pub fn set_compare(v: u64) {
    // SAFETY: Compare only decides when IP7 is next raised; the timer interrupt is masked unless someone enabled IM7 and IE deliberately.
    unsafe {
        asm!(".set push", ".set noat", "mtc0 {0}, $11", "ehb", ".set pop", in(reg) v, options(nomem, nostack, preserves_flags))
    };
}

/// Writes KScratch2, the root page table the XTLB refill handler walks
/// ([`KSCRATCH_PGD`]).
///
/// # Safety
/// `root` must be the address (XKPHYS or CKSEG0) of a 4 KiB page-table root
/// whose tables stay valid while it is installed, and EntryHi.ASID must be
/// changed consistently: the refill handler tags what it loads from this
/// table with the current ASID.
#[inline(always)]
pub unsafe fn set_kscratch_pgd(root: u64) {
    // SAFETY: per the function's contract.
    unsafe {
        asm!(".set push", ".set noat", "dmtc0 {0}, $31, 2", "ehb", ".set pop", in(reg) root, options(nostack, preserves_flags))
    };
}

/// Writes KScratch3, this CPU's logical number ([`KSCRATCH_CPU`]).
#[inline(always)]
pub fn set_kscratch_cpu(n: u64) {
    // SAFETY: KScratch3 is software state only Samara reads.
    unsafe {
        asm!(".set push", ".set noat", "dmtc0 {0}, $31, 3", "ehb", ".set pop", in(reg) n, options(nomem, nostack, preserves_flags))
    };
}

/// Writes HWREna: which hardware registers user mode may read with `rdhwr`.
#[inline(always)]
pub fn set_hwrena(v: u64) {
    // SAFETY: HWREna only decides whether a user `rdhwr` of each register reads it or raises Reserved Instruction; the registers it can expose (CPU number, SYNCI step, Count and its resolution, UserLocal) are read-only to user mode and carry no kernel secrets.
    unsafe {
        asm!(".set push", ".set noat", "mtc0 {0}, $7, 0", "ehb", ".set pop", in(reg) v, options(nomem, nostack, preserves_flags))
    };
}

/// Writes PageGrain.
///
/// # Safety
/// Changes how EntryLo is interpreted (ELPA, RI/XI) by later TLB writes and
/// what accesses fault; the caller keeps it consistent with the PTE format.
#[inline(always)]
pub unsafe fn set_pagegrain(v: u64) {
    // SAFETY: per the function's contract.
    unsafe {
        asm!(".set push", ".set noat", "mtc0 {0}, $5, 1", "ehb", ".set pop", in(reg) v, options(nostack, preserves_flags))
    };
}

/// Writes PageMask (the page size of later `tlbwi`/`tlbwr`).
///
/// # Safety
/// Later TLB writes use this size; the refill handler relies on 4 KiB.
#[inline(always)]
pub unsafe fn set_pagemask(v: u64) {
    // SAFETY: per the function's contract.
    unsafe {
        asm!(".set push", ".set noat", "mtc0 {0}, $5, 0", "ehb", ".set pop", in(reg) v, options(nostack, preserves_flags))
    };
}

/// Writes EBase (the exception base; CPUNum is read-only).
///
/// # Safety
/// `base` must be the 4 KiB-aligned CKSEG0 address of a complete set of
/// exception vectors that stays in place for as long as it is installed.
#[inline(always)]
pub unsafe fn set_ebase(base: u64) {
    // SAFETY: per the function's contract.
    unsafe {
        asm!(".set push", ".set noat", "mtc0 {0}, $15, 1", "ehb", ".set pop", in(reg) base, options(nostack, preserves_flags))
    };
}

/// The TLB registers, for [`crate::imp::tlb`].
pub mod tlb {
    use core::arch::asm;

    /// Loads Index, EntryHi, EntryLo0/1 and PageMask and writes them into
    /// TLB entry `index` (`tlbwi`).
    ///
    /// # Safety
    /// The entry must not duplicate the virtual page of another valid entry
    /// (a machine check on real hardware) and must not unmap anything the
    /// kernel is using; the caller runs with interrupts off.
    #[inline(always)]
    pub unsafe fn write_indexed(index: u64, hi: u64, lo0: u64, lo1: u64, page_mask: u64) {
        // SAFETY: per the function's contract. `ehb` after the CP0 writes makes tlbwi see them; the one after tlbwi makes later accesses see the new entry.
        unsafe {
            asm!(
                ".set push",
                ".set noat",
                "mtc0  {idx}, $0",
                "dmtc0 {hi}, $10",
                "dmtc0 {lo0}, $2",
                "dmtc0 {lo1}, $3",
                "mtc0  {pm}, $5",
                "ehb",
                "tlbwi",
                "ehb",
                ".set pop",
                idx = in(reg) index,
                hi = in(reg) hi,
                lo0 = in(reg) lo0,
                lo1 = in(reg) lo1,
                pm = in(reg) page_mask,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Reads TLB entry `index` (`tlbr`) and returns its EntryHi.
    ///
    /// # Safety
    /// `tlbr` overwrites EntryHi (and so the current ASID): the caller must
    /// restore EntryHi and must run with interrupts off.
    #[inline(always)]
    pub unsafe fn read_entryhi(index: u64) -> u64 {
        let hi: u64;
        // SAFETY: per the function's contract.
        unsafe {
            asm!(
                ".set push",
                ".set noat",
                "mtc0  {idx}, $0",
                "ehb",
                "tlbr",
                "ehb",
                "dmfc0 {hi}, $10",
                ".set pop",
                idx = in(reg) index,
                hi = out(reg) hi,
                options(nostack, preserves_flags),
            )
        };
        hi
    }

    /// Writes EntryHi (the ASID and the VPN2 used by `tlbp`/`tlbwi`).
    ///
    /// # Safety
    /// Changing the ASID changes which user mappings are live.
    #[inline(always)]
    pub unsafe fn set_entryhi(v: u64) {
        // SAFETY: per the function's contract.
        unsafe {
            asm!(".set push", ".set noat", "dmtc0 {0}, $10", "ehb", ".set pop", in(reg) v, options(nostack, preserves_flags))
        };
    }

    /// Probes the TLB for EntryHi = `hi` (`tlbp`) and returns Index: the
    /// matching entry, or [`super::index::P`] set when none matched. Leaves
    /// EntryHi = `hi`.
    ///
    /// # Safety
    /// Changes EntryHi (the current ASID): the caller restores it; runs
    /// with interrupts off.
    #[inline(always)]
    pub unsafe fn probe(hi: u64) -> u64 {
        let idx: u64;
        // SAFETY: per the function's contract; `ehb` between the EntryHi write and `tlbp`, and between `tlbp` and the Index read.
        unsafe {
            asm!(
                ".set push",
                ".set noat",
                "dmtc0 {hi}, $10",
                "ehb",
                "tlbp",
                "ehb",
                "mfc0  {idx}, $0",
                ".set pop",
                hi = in(reg) hi,
                idx = out(reg) idx,
                options(nostack, preserves_flags),
            )
        };
        idx
    }

    /// Reads TLB entry `index` (`tlbr`): returns (EntryHi, EntryLo0,
    /// EntryLo1).
    ///
    /// # Safety
    /// As [`read_entryhi`]: EntryHi (the current ASID) is overwritten.
    #[inline(always)]
    pub unsafe fn read(index: u64) -> (u64, u64, u64) {
        let (hi, lo0, lo1): (u64, u64, u64);
        // SAFETY: per the function's contract.
        unsafe {
            asm!(
                ".set push",
                ".set noat",
                "mtc0  {idx}, $0",
                "ehb",
                "tlbr",
                "ehb",
                "dmfc0 {hi}, $10",
                "dmfc0 {lo0}, $2",
                "dmfc0 {lo1}, $3",
                ".set pop",
                idx = in(reg) index,
                hi = out(reg) hi,
                lo0 = out(reg) lo0,
                lo1 = out(reg) lo1,
                options(nostack, preserves_flags),
            )
        };
        (hi, lo0, lo1)
    }

    /// Writes EntryHi, EntryLo0/1 into a random replaceable entry (`tlbwr`),
    /// with the current PageMask.
    ///
    /// # Safety
    /// No entry may already match `hi` (a duplicate is a machine check on
    /// real hardware); interrupts are off.
    #[inline(always)]
    pub unsafe fn write_random(hi: u64, lo0: u64, lo1: u64) {
        // SAFETY: per the function's contract.
        unsafe {
            asm!(
                ".set push",
                ".set noat",
                "dmtc0 {hi}, $10",
                "dmtc0 {lo0}, $2",
                "dmtc0 {lo1}, $3",
                "ehb",
                "tlbwr",
                "ehb",
                ".set pop",
                hi = in(reg) hi,
                lo0 = in(reg) lo0,
                lo1 = in(reg) lo1,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Writes EntryHi, EntryLo0/1 into entry `index` (`tlbwi`), keeping the
    /// current PageMask.
    ///
    /// # Safety
    /// As [`write_indexed`].
    #[inline(always)]
    pub unsafe fn write_at(index: u64, hi: u64, lo0: u64, lo1: u64) {
        // SAFETY: per the function's contract.
        unsafe {
            asm!(
                ".set push",
                ".set noat",
                "mtc0  {idx}, $0",
                "dmtc0 {hi}, $10",
                "dmtc0 {lo0}, $2",
                "dmtc0 {lo1}, $3",
                "ehb",
                "tlbwi",
                "ehb",
                ".set pop",
                idx = in(reg) index,
                hi = in(reg) hi,
                lo0 = in(reg) lo0,
                lo1 = in(reg) lo1,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Writes Wired (entries below it are never replaced by `tlbwr`).
    pub fn set_wired(v: u64) {
        // SAFETY: Wired only restricts which entries `tlbwr` may replace.
        unsafe {
            asm!(".set push", ".set noat", "mtc0 {0}, $6", "ehb", ".set pop", in(reg) v, options(nomem, nostack, preserves_flags))
        };
    }
}
