//! User address spaces on the MMU: CR3, PCIDs, local TLB invalidation and
//! the shootdown IPI.
//!
//! # PCIDs
//!
//! When CPUID reports PCID, CR4.PCIDE is on and every CPU tags its user
//! address spaces with one of [`NR_SLOTS`] PCIDs (1..=NR_SLOTS; PCID 0 is
//! the kernel-only context). A CPU's slot table records which address
//! space (`mm`, an `MmId`'s raw value) owns each PCID there. Loading CR3
//! with bit 63 set keeps the PCID's cached translations; Samara sets it
//! only when the slot already belongs to the same address space and is not
//! marked stale:
//!
//! * [`activate`] of an address space with a slot on this CPU: take the
//!   slot's stale flag (a swap to false); load CR3 with the no-flush bit
//!   unless it was set.
//! * [`activate`] of one without a slot: evict a slot round robin, record
//!   the new owner, and load CR3 without the no-flush bit, which drops
//!   whatever the previous owner left under that PCID.
//! * [`invalidate_cached`]`(mm)`: on every CPU, mark each slot owned by `mm`
//!   stale (a swap to true). The kernel's shootdown (`mm::shootdown`) calls
//!   it before it samples which CPUs have `mm` loaded, and the scheduler
//!   records `loaded` before calling [`activate`]; pairs (S1) and (S4)
//!   there show that a CPU switching to `mm` either gets the IPI or sees
//!   the mark (and the cleared entries). Both the mark and its consumption
//!   are read-modify-writes, as (S4) demands. A mark that lands on a slot
//!   just reassigned to another address space only costs that one a flush.
//!
//! `invlpg` and a CR3 reload without the no-flush bit act on the current
//! PCID only, so a target that has `mm` loaded flushes it directly, and
//! every other CPU relies on the stale marks. INVPCID is not needed.
//!
//! Without PCID every CR3 load flushes all non-global translations; the
//! slot table is unused.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::smp::MAX_CPUS;
use super::{apic, paging, smp, trap};

/// One past the highest user address: the top page of the lower half stays
/// unmapped, so no `syscall` instruction can sit at its end and make
/// `sysret` return to the non-canonical `2^47` (which faults in ring 0 on
/// Intel CPUs, on the user's stack).
pub const USER_VA_END: u64 = (1 << 47) - 4096;

/// PCIDs per CPU for user address spaces.
pub const NR_SLOTS: usize = 8;

const CR3_NOFLUSH: u64 = 1 << 63;
const CR4_PCIDE: u64 = 1 << 17;
/// Pages above which a range flush reloads CR3 instead (Linux's default
/// `tlb_single_page_flush_ceiling`).
const FLUSH_CEILING_PAGES: u64 = 33;

struct Slot {
    /// The owning address space (`MmId` raw value), 0 for none.
    mm: AtomicU64,
    /// The owner's translations under this PCID may be stale.
    stale: AtomicBool,
}

struct CpuSlots {
    slots: [Slot; NR_SLOTS],
    /// Next slot to evict (only its own CPU touches it).
    victim: AtomicU64,
}

static SLOTS: [CpuSlots; MAX_CPUS] = [const {
    CpuSlots {
        slots: [const {
            Slot {
                mm: AtomicU64::new(0),
                stale: AtomicBool::new(false),
            }
        }; NR_SLOTS],
        victim: AtomicU64::new(0),
    }
}; MAX_CPUS];

static PCID: AtomicBool = AtomicBool::new(false);

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nostack, nomem, preserves_flags)) };
    v
}

/// # Safety
/// `v` must name a valid root whose kernel half maps the running kernel.
unsafe fn write_cr3(v: u64) {
    // SAFETY: the caller's contract; CR3 writes serialise and are treated as a compiler barrier (no `nomem`).
    unsafe { asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Enables PCIDs on this CPU if the CPU has them. Every CPU, once, while
/// CR3 holds the kernel root (PCID 0, as CR4.PCIDE requires).
pub fn init_cpu() {
    let has = core::arch::x86_64::__cpuid(1).ecx & (1 << 17) != 0;
    if smp::this_cpu() == 0 {
        PCID.store(has, Ordering::Relaxed);
    }
    if PCID.load(Ordering::Relaxed) {
        debug_assert_eq!(read_cr3() & 0xfff, 0);
        // SAFETY: the CPU has PCIDs and CR3's PCID field is 0, the precondition for setting CR4.PCIDE (otherwise #GP).
        unsafe {
            let mut cr4: u64;
            asm!("mov {}, cr4", out(reg) cr4, options(nostack, nomem));
            cr4 |= CR4_PCIDE;
            asm!("mov cr4, {}", in(reg) cr4, options(nostack));
        }
    }
}

/// Whether PCIDs are in use.
pub fn pcid() -> bool {
    PCID.load(Ordering::Relaxed)
}

/// Copies the kernel half of the kernel's PML4 (entries 256..512) into the
/// fresh user root at `root_phys`. The kernel's top-level entries never
/// change after boot, so copies stay valid.
///
/// # Safety
/// `root_phys` is a zeroed, page-aligned root table nobody uses yet.
pub unsafe fn init_user_root(root_phys: u64) {
    let src = paging::phys_to_virt(paging::kernel_root()) as *const u64;
    let dst = paging::phys_to_virt(root_phys) as *mut u64;
    for i in 256..512 {
        // SAFETY: both are 4 KiB tables in the physmap; the caller owns `dst`; the kernel root's upper half is never written after boot.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
}

/// Loads the user address space `mm` rooted at `root_phys` (see the module
/// docs for the PCID protocol).
///
/// # Safety
/// `root_phys` is a root prepared with [`init_user_root`] that stays valid
/// while it is loaded; the kernel stored this CPU's `loaded_mm = mm`
/// (SeqCst) before the call; interrupts are off.
pub unsafe fn activate(root_phys: u64, _root_entry: u64, mm: u64) {
    if !pcid() {
        // SAFETY: the caller's contract.
        unsafe { write_cr3(root_phys) };
        return;
    }
    let cpu = &SLOTS[smp::this_cpu()];
    let found = cpu
        .slots
        .iter()
        .position(|s| s.mm.load(Ordering::Relaxed) == mm);
    let cr3 = match found {
        Some(i) => {
            // (S4 in mm::shootdown) An RMW: pairs with `invalidate_cached`'s
            // marking swap; consuming the mark acquires the cleared entries.
            let stale = cpu.slots[i].stale.swap(false, Ordering::SeqCst);
            root_phys | (i as u64 + 1) | if stale { 0 } else { CR3_NOFLUSH }
        }
        None => {
            let i = (cpu.victim.load(Ordering::Relaxed) as usize) % NR_SLOTS;
            cpu.victim.store(i as u64 + 1, Ordering::Relaxed);
            cpu.slots[i].mm.store(mm, Ordering::SeqCst);
            cpu.slots[i].stale.store(false, Ordering::SeqCst);
            // A flushing load: drop the previous owner's translations.
            root_phys | (i as u64 + 1)
        }
    };
    // SAFETY: the caller's contract.
    unsafe { write_cr3(cr3) };
}

/// Loads the kernel-only context (PCID 0 keeps its translations: only
/// kernel mappings are ever cached under it).
pub fn activate_kernel() {
    let v = paging::kernel_root() | if pcid() { CR3_NOFLUSH } else { 0 };
    // SAFETY: the kernel root maps the kernel and nothing in the user half.
    unsafe { write_cr3(v) };
}

/// Invalidates this CPU's translations of `[start, end)` in the loaded
/// address space.
pub fn flush_local(start: u64, end: u64) {
    let pages = end.saturating_sub(start) / 4096;
    if pages > FLUSH_CEILING_PAGES {
        flush_local_all();
        return;
    }
    let mut va = start;
    while va < end {
        // SAFETY: invlpg only drops cached translations (of the current PCID, and the paging-structure caches for the address).
        unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
        va += 4096;
    }
}

/// Invalidates all of this CPU's translations of the loaded address space.
pub fn flush_local_all() {
    // Reloading CR3 without the no-flush bit flushes the current PCID's
    // non-global translations (all of them without PCIDs).
    let cr3 = read_cr3() & !CR3_NOFLUSH;
    // SAFETY: CR3 keeps its current (valid) root and PCID.
    unsafe { write_cr3(cr3) };
}

/// Marks every CPU's PCID slots owned by `mm` stale (see the module docs).
pub fn invalidate_cached(mm: u64) {
    if !pcid() {
        return;
    }
    for cpu in SLOTS.iter().take(smp::cpu_count()) {
        for s in &cpu.slots {
            if s.mm.load(Ordering::Relaxed) == mm {
                // (S4 in mm::shootdown) An RMW that releases the cleared
                // entries; pairs with the swap in `activate`.
                s.stale.swap(true, Ordering::SeqCst);
            }
        }
    }
}

/// Sends the kernel IPI to every CPU in `cpus` (bit n = CPU n).
pub fn kick(cpus: u64) {
    let mut m = cpus;
    while m != 0 {
        let cpu = m.trailing_zeros() as usize;
        m &= m - 1;
        apic::send_ipi(smp::apic_id(cpu), trap::IPI_VECTOR);
    }
}

/// The MMU features in use, for the banner.
pub struct Description;

pub fn describe() -> Description {
    Description
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "4-level paging, NX, {}, {}, user VA limit {:#x}",
            if pcid() {
                "PCID (8 per CPU)"
            } else {
                "no PCID"
            },
            if apic::x2apic() { "x2APIC" } else { "xAPIC" },
            USER_VA_END
        )
    }
}

/// Pages without `EXEC` cannot be executed: NX is always on.
pub fn exec_protection() -> bool {
    true
}
