//! User address spaces on the MIPS TLB: loading them (KScratch2 and
//! EntryHi.ASID), ASIDs with generation rollover (`mm::asid`), local TLB
//! invalidation, and this port's side of the kernel's cross-CPU shootdown
//! (`mm::shootdown`).
//!
//! # Loading an address space
//!
//! Per CPU, the hardware state of the loaded address space is two
//! registers: KScratch2 holds its root table (`PageTable::root_entry`, an
//! XKPHYS pointer: the refill handler's "pgd", see [`super::trap`]) and
//! EntryHi.ASID its ASID on this CPU. [`activate`] changes both, root first,
//! so every entry the refill handler tags with the new ASID comes from the
//! new root. With no address space loaded ([`activate_kernel`]: kernel
//! threads, idle) they hold [`empty_root`] and the reserved ASID 0, so a
//! stray kernel access to a user address refills an invalid entry and
//! faults instead of reaching a stale mapping.
//!
//! # ASIDs
//!
//! [`ASIDS`] is an `mm::asid::AsidTable`: per CPU, a table from address
//! space (the kernel's `MmId` raw value) to its ASID there, Linux's
//! `asid_cache` generations (8-bit ASIDs on Octeon II/QEMU: 255 address
//! spaces per generation, then a full local flush), and stale marks.
//!
//! # Shootdown without IPIs
//!
//! The kernel's protocol (`mm::shootdown`) asks the arch for three things:
//!
//! * [`invalidate_cached`]`(mm)`: on every CPU, mark `mm`'s ASID stale, so
//!   a CPU that has translations of `mm` cached under an ASID it is not
//!   running gets a fresh ASID when it next loads `mm`; the old entries are
//!   never reachable again (an ASID is not handed out twice in one
//!   generation, and a rollover flushes the TLB);
//! * [`flush_local`] / [`flush_local_all`] on a CPU that has `mm` loaded:
//!   probe-and-invalidate the range ([`super::tlb::flush_asid`]), or give
//!   the address space a fresh ASID;
//! * [`kick`]: nothing. Malta's i8259 reaches CPU 0 only, so there are no
//!   IPIs; every CPU services its requests by polling, from its timer tick
//!   (while it runs user code or idles: the only times the kernel takes
//!   interrupts), from idle, and from every spin-wait loop (the kernel's
//!   relax hook). A request therefore waits at most one tick
//!   ([`super::timer::TICK`]) for a CPU running user code.

use core::fmt;

use mm::asid::{AsidError, AsidTable, LocalTlb};
use mm::cpu::CpuId;

use super::{cp0, tlb};

/// One past the highest user address the kernel maps: the top page of
/// xuseg (42 bits on QEMU's Octeon68XX and the page tables' limit, which
/// `init_cpu` checks every CPU implements) stays unmapped, as on x86_64,
/// so the layout is the same on both ports.
pub const USER_VA_END: u64 = <mm::pgtable::Mips64Pte as mm::pgtable::PteFormat>::USER_VA_END - 4096;

/// This CPU's TLB, for `mm::asid`.
pub struct HwTlb;

impl LocalTlb for HwTlb {
    fn flush_all(&self) {
        tlb::flush_all();
    }
}

static HW: HwTlb = HwTlb;

/// The ASID tables of all CPUs (configured by [`init`]).
pub static ASIDS: AsidTable = AsidTable::new();

/// An empty root table: what KScratch2 points at while no address space is
/// loaded. Zero, so every walk through it ends in `no_table`.
#[repr(C, align(4096))]
struct EmptyRoot([u64; 512]);

static EMPTY_ROOT: EmptyRoot = EmptyRoot([0; 512]);

/// The root the refill handler walks while no address space is loaded.
pub fn empty_root() -> u64 {
    (&raw const EMPTY_ROOT) as u64
}

/// This CPU's logical number ([`super::smp::this_cpu`]), which indexes
/// the ASID tables and the kernel's shootdown slots.
#[inline]
pub fn this_cpu() -> CpuId {
    super::smp::this_cpu()
}

/// Creates the ASID tables for `nr_cpus` CPUs with the ASID width the boot
/// CPU's TLB reported. Once, on the boot CPU, before other CPUs start.
pub fn init(nr_cpus: usize) -> Result<(), AsidError> {
    ASIDS.configure(tlb::asid_mask().count_ones(), nr_cpus)
}

fn asids() -> &'static AsidTable {
    debug_assert!(ready(), "mmu::init before loading address spaces");
    &ASIDS
}

/// Whether [`init`] ran.
fn ready() -> bool {
    ASIDS.asid_mask() != 0
}

/// Prepares a new root table: nothing to do on MIPS (the kernel is not
/// mapped through the user tables).
///
/// # Safety
/// None needed; `unsafe` for the arch-neutral signature.
pub unsafe fn init_user_root(_root_phys: u64) {}

/// Loads the user address space `mm` whose root table entry is
/// `root_entry` (`PageTable::root_entry()`: its XKPHYS address).
///
/// # Safety
/// The root must stay valid while loaded; the kernel published that this
/// CPU loads `mm` (`Shootdown::set_loaded`) before the call (pair S1 of
/// `mm::shootdown`); interrupts are off; nothing uses user memory across
/// the switch.
pub unsafe fn activate(_root_phys: u64, root_entry: u64, mm: u64) {
    let asid = asids().activate(this_cpu(), mm, &HW);
    // SAFETY: root first, then the ASID: every refill tagged with `asid` walks `root_entry` (valid while loaded: caller's contract).
    unsafe {
        cp0::set_kscratch_pgd(root_entry);
        tlb::set_asid(asid);
    }
}

/// Unloads the user address space: ASID 0 over the empty root.
pub fn activate_kernel() {
    if ready() {
        ASIDS.deactivate(this_cpu());
    }
    // SAFETY: ASID 0 with the empty root: nothing user is reachable.
    unsafe {
        tlb::set_asid(0);
        cp0::set_kscratch_pgd(empty_root());
    }
}

/// Invalidates this CPU's translations of `[start, end)` in the loaded
/// address space.
pub fn flush_local(start: u64, end: u64) {
    let asid = tlb::current_asid();
    if asid != 0 {
        tlb::flush_asid(asid, start, end);
    }
}

/// Invalidates all of this CPU's translations of the loaded address space,
/// by giving it a fresh ASID (the old one's entries become unreachable).
pub fn flush_local_all() {
    if !ready() {
        return;
    }
    if let Some(asid) = ASIDS.drop_current(this_cpu(), &HW) {
        // SAFETY: the same address space, root unchanged, new tag.
        unsafe { tlb::set_asid(asid) };
    }
}

/// Marks `mm`'s ASIDs stale on every CPU (see the module documentation).
pub fn invalidate_cached(mm: u64) {
    if ready() {
        ASIDS.invalidate_cached(mm);
    }
}

/// No IPIs on this platform: CPUs poll (see the module documentation).
pub fn kick(_cpus: u64) {}

/// After the fault path installed or upgraded the PTE of user address `va`
/// in the loaded address space: writes the pair's PTEs (`even`, `odd`: the
/// entries of `va & !0x1fff` and `va | 0x1000`, verbatim) into the TLB,
/// replacing a stale copy if there is one (see [`tlb::update`]).
pub fn update_tlb(va: u64, even: u64, odd: u64) {
    tlb::update(va, even, odd);
}

/// Refreshes the TLB entry of user address `va` from the loaded address
/// space's page table, after a fault on it was resolved (Linux's
/// `update_mmu_cache`): the retried access must not hit the stale copy (an
/// invalid pair the refill handler loaded, or a read-only one after a
/// write upgrade), which the kernel's fault path — arch-neutral — leaves in
/// place. Walks the table exactly as the refill handler does, from
/// KScratch2; a table missing on the way refreshes the pair as invalid.
///
/// The walk cannot race with the tables being freed: tables are freed only
/// after a TLB shootdown every CPU that has the address space loaded must
/// answer, and this CPU does not answer in the middle of this function.
pub fn refresh(va: u64) {
    if va >> 62 != 0 || va >= USER_VA_END {
        return;
    }
    let mut table = cp0::kscratch_pgd();
    for shift in [39u32, 30, 21] {
        let slot = table + ((va >> shift) & 0x1ff) * 8;
        // SAFETY: `table` is the loaded root (XKPHYS or the CKSEG0 empty root) or a table entry read from it: an XKPHYS address of a live 4 KiB table (see above). The read is in bounds (index < 512).
        let e = unsafe { core::ptr::read_volatile(slot as *const u64) };
        if e == 0 {
            tlb::update(va, 0, 0);
            return;
        }
        table = e;
    }
    let pair = table + ((va >> 13) & 0xff) * 16;
    // SAFETY: as above, the leaf table; `pair` and `pair + 8` are the even and odd entries of `va`'s pair, in bounds.
    let (even, odd) = unsafe {
        (
            core::ptr::read_volatile(pair as *const u64),
            core::ptr::read_volatile((pair + 8) as *const u64),
        )
    };
    tlb::update(va, even, odd);
}

/// Whether pages without `EXEC` cannot be executed: only with RI/XI
/// (Config3.RXI, enabled by `tlb::init`). QEMU's Octeon68XX does not
/// implement them, so there every readable page is executable (and every
/// executable page readable); the PTEs still record the exact protection.
pub fn exec_protection() -> bool {
    cp0::config3() & cp0::config3::RXI != 0
}

/// The MMU features in use, for the banner.
pub struct Description;

/// See [`Description`].
pub fn describe() -> Description {
    Description
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "software-refilled TLB, {} entries, {}-bit ASIDs, {}-bit xuseg, RI/XI {}, no IPIs \
             (shootdown polled from the tick)",
            tlb::entries(),
            tlb::asid_mask().count_ones(),
            tlb::segbits(),
            if cp0::config3() & cp0::config3::RXI != 0 {
                "on"
            } else {
                "not implemented"
            }
        )
    }
}
