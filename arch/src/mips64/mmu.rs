//! Address spaces on the MIPS TLB: the glue between the hardware and
//! `mm::mmu_context` (ASIDs with generation rollover, the no-IPI shootdown
//! protocol) and `mm::pgtable::PageTable<Mips64Pte>` (walked by the refill
//! handler in [`super::trap`]).
//!
//! Per CPU the hardware state of the running address space is two
//! registers: KScratch2 holds its root table (the refill handler's "pgd")
//! and EntryHi.ASID its ASID on this CPU. [`switch_mm`] changes both
//! together. With no address space loaded (kernel threads, idle) they hold
//! [`empty_root`] and the reserved ASID 0, so a stray kernel access to a
//! user address refills an invalid entry and faults instead of reaching a
//! stale mapping.
//!
//! [`HwTlb`] is this CPU's TLB as the protocol sees it ([`super::tlb`]'s
//! flushes). The protocol's answering points are all here or one call away:
//! the timer interrupt and the return to user mode ([`super::trap`]), idle
//! ([`super::cpu::idle_wait`]), [`switch_mm`], and every spin-wait loop of
//! `mm` through the spin hook [`init`] installs.

use core::sync::atomic::{AtomicU64, Ordering};

use mm::cpu::CpuId;
use mm::mmu_context::{DomainError, LocalTlb, MmFlusher, MmTlb, TlbDomain};
use spin::Once;

use super::{cp0, tlb};

/// This CPU's TLB, for `mm::mmu_context`.
pub struct HwTlb;

impl LocalTlb for HwTlb {
    fn flush_all(&self) {
        tlb::flush_all();
    }

    fn flush_asid(&self, asid: u64, start: u64, end: u64) {
        tlb::flush_asid(asid, start, end);
    }
}

static HW: HwTlb = HwTlb;

static DOMAIN: Once<TlbDomain> = Once::new();

/// An empty root table: what KScratch2 points at while no address space is
/// loaded. Zero, so every walk through it ends in `no_table`.
#[repr(C, align(4096))]
struct EmptyRoot([u64; 512]);

static EMPTY_ROOT: EmptyRoot = EmptyRoot([0; 512]);

/// Address spaces switched to, per CPU (statistics).
static SWITCHES: AtomicU64 = AtomicU64::new(0);

/// The root the refill handler walks while no address space is loaded.
pub fn empty_root() -> u64 {
    (&raw const EMPTY_ROOT) as u64
}

/// This CPU's number.
#[inline]
pub fn this_cpu() -> CpuId {
    cp0::cpu_num() as CpuId
}

/// Creates the system's ASID/shootdown domain for `nr_cpus` CPUs with the
/// ASID width the boot CPU's TLB reported, and installs the spin hook that
/// makes `mm`'s spin-wait loops answer shootdown requests. Called once on
/// the boot CPU after [`super::init_cpu`], before other CPUs start.
pub fn init(nr_cpus: usize) -> Result<&'static TlbDomain, DomainError> {
    let bits = tlb::asid_mask().count_ones();
    let d = TlbDomain::new(bits, nr_cpus)?;
    let d = DOMAIN.call_once(|| d);
    mm::sync::set_spin_hook(spin_hook);
    Ok(d)
}

/// The domain, once [`init`] ran.
pub fn domain() -> Option<&'static TlbDomain> {
    DOMAIN.get()
}

/// The spin hook: answers this CPU's mailbox (cheap when empty: two loads).
fn spin_hook() {
    answer();
}

/// Answers this CPU's shootdown mailbox, if the domain exists and a request
/// is pending. Returns whether it flushed.
#[inline]
pub fn answer() -> bool {
    match DOMAIN.get() {
        Some(d) => d.has_request(this_cpu()) && d.answer(this_cpu(), &HW),
        None => false,
    }
}

/// Switches this CPU from address space `prev` (if any) to `next` (its
/// [`MmTlb`] and its page table's root entry, `PageTable::root_entry`), or
/// to none. Answers the mailbox on the way (a context switch is an
/// answering point).
///
/// Order: unload the old address space from the hardware (ASID 0, empty
/// root), then deactivate it (S2 in `mm::mmu_context`: after its last use);
/// then activate the next one, which may allocate an ASID and roll the
/// generation over, and load its root and ASID.
///
/// # Safety
/// Call on the CPU with interrupts off, outside any access to user memory;
/// `prev` must be the address space this CPU runs (or `None` if it runs
/// none), and `next`'s root must stay valid until it is switched away from.
pub unsafe fn switch_mm(prev: Option<&MmTlb>, next: Option<(&MmTlb, u64)>) {
    let d = DOMAIN.get().expect("mmu::init before switch_mm");
    let cpu = this_cpu();
    // SAFETY: ASID 0 with the empty root: nothing user is reachable, which
    // is what the caller's "no access to user memory" allows.
    unsafe {
        tlb::set_asid(0);
        cp0::set_kscratch_pgd(empty_root());
    }
    if let Some(p) = prev {
        d.deactivate(cpu, p);
    }
    d.answer(cpu, &HW);
    if let Some((n, root)) = next {
        let asid = d.activate(cpu, n, &HW);
        // SAFETY: root first, then the ASID: every refill tagged with
        // `asid` walks `root` (caller: valid while loaded).
        unsafe {
            cp0::set_kscratch_pgd(root);
            tlb::set_asid(asid);
        }
        SWITCHES.fetch_add(1, Ordering::Relaxed);
    }
}

/// A [`mm::pgtable::TlbFlush`] for `mm` from this CPU, for a
/// `mm::pgtable::TlbGather`.
pub fn flusher(mm: &MmTlb) -> MmFlusher<'_> {
    let d = DOMAIN.get().expect("mmu::init before flushing");
    MmFlusher::new(d, mm, this_cpu(), &HW)
}

/// After the fault path installed or upgraded the PTE of user address `va`
/// in the running address space: writes the pair's PTEs (`even`, `odd`:
/// the entries of `va & !0x1fff` and `va | 0x1000`, verbatim) into the TLB,
/// replacing a stale copy if there is one (see [`tlb::update`]).
pub fn update_tlb(va: u64, even: u64, odd: u64) {
    tlb::update(va, even, odd);
}

/// Address-space switches performed so far (all CPUs).
pub fn switches() -> u64 {
    SWITCHES.load(Ordering::Relaxed)
}
