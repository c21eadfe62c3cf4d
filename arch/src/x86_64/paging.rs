//! The kernel address space: the physmap and the boot page tables.
//!
//! ```text
//!   0x0000_0000_0000_0000 .. 0x0000_7fff_ffff_f000  user (per-task page tables, see mmu.rs)
//!   0xffff_8000_0000_0000 .. +512 GiB               physmap: PA 0.. at PHYSMAP_BASE
//!   0xffff_c000_0000_0000 .. (PML4[384])            unmapped (UNMAPPED_KERNEL_ADDR)
//!   0xffff_ffff_8000_0000 .. 0                      kernel image (-2 GiB, code model kernel)
//! ```
//!
//! The boot stub (see `boot.rs`) maps PA 0..4 GiB into the physmap with 2 MiB
//! pages; [`extend_physmap`] adds the rest of RAM once the memory map is
//! known, with 1 GiB pages where the CPU has them.

use boot::{MemoryMap, RegionKind};
use core::fmt;
use x86_64::registers::control::Cr3;

/// Where the physmap (Linux's `page_offset_base`) starts: PML4 slot 256.
pub const PHYSMAP_BASE: u64 = 0xffff_8000_0000_0000;
/// Largest physical address the physmap can cover: one PDPT of 1 GiB entries.
pub const PHYSMAP_MAX: u64 = 512 << 30;
/// The part of the physmap the boot stub maps: PA 0..4 GiB.
pub const BOOT_PHYSMAP_END: u64 = 4 << 30;
/// Where the kernel image is linked (PA 0 maps here; see linker/x86_64.ld).
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;
/// A kernel address guaranteed unmapped (PML4[384] stays empty): reading it
/// raises a not-present page fault. Used by the `test=pagefault` scenario.
pub const UNMAPPED_KERNEL_ADDR: u64 = 0xffff_c000_dead_b000;

const PAGE_SIZE: u64 = 4096;
const ENTRIES: usize = 512;
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;
const PTE_HUGE: u64 = 1 << 7;
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PHYSMAP_PML4_SLOT: usize = 256;

/// The kernel virtual address of physical address `pa` in the physmap.
/// Valid for every PA of RAM in the boot memory map (and any PA < 4 GiB).
pub fn phys_to_virt(pa: u64) -> *mut u8 {
    (PHYSMAP_BASE + pa) as *mut u8
}

/// The page-table page at physical address `pa`, through the physmap.
///
/// # Safety
/// `pa` must be the page-aligned physical address of a page-table page that
/// is mapped by the physmap, and the caller must be the only one changing it
/// (boot CPU, before any other CPU runs).
unsafe fn table(pa: u64) -> &'static mut [u64; ENTRIES] {
    // SAFETY: per the function's contract the page is mapped, aligned, and not aliased by any other live reference.
    unsafe { &mut *(phys_to_virt(pa) as *mut [u64; ENTRIES]) }
}

/// The active PML4.
fn pml4() -> &'static mut [u64; ENTRIES] {
    let (frame, _) = Cr3::read();
    // SAFETY: CR3 holds the boot PML4 (in .boot.bss, below 4 GiB, so in the boot physmap); only the boot CPU runs while this module edits it.
    unsafe { table(frame.start_address().as_u64()) }
}

/// Physical address of the kernel's PML4 (the boot page tables), recorded
/// by [`drop_identity_map`]: the root of every kernel-only context and the
/// source of the kernel half of every user root.
static KERNEL_ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The kernel's PML4 (physical address).
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(core::sync::atomic::Ordering::Relaxed)
}

/// Marks the 2 MiB physmap page holding physical address `pa` (below
/// [`BOOT_PHYSMAP_END`]) uncacheable, for MMIO such as the xAPIC page.
/// Boot CPU, before secondaries start.
pub fn make_uncacheable(pa: u64) {
    assert!(
        pa < BOOT_PHYSMAP_END,
        "MMIO at {pa:#x} is above the boot physmap"
    );
    let pdpt_pa = pml4()[PHYSMAP_PML4_SLOT] & PTE_ADDR_MASK;
    // SAFETY: PML4[256] points at boot_pdpt_low (.boot.bss, boot physmap), whose first four entries point at the boot page directories.
    let pdpt = unsafe { table(pdpt_pa) };
    let pd_pa = pdpt[(pa >> 30) as usize] & PTE_ADDR_MASK;
    // SAFETY: as above: a boot page directory, in the boot physmap.
    let pd = unsafe { table(pd_pa) };
    pd[((pa >> 21) & 511) as usize] |= PTE_PCD | PTE_PWT;
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(phys_to_virt(pa) as u64));
}

/// Removes the boot identity map (PML4[0]) so the low half is free for user
/// address spaces. Called once the kernel runs from the higher half.
pub fn drop_identity_map() {
    pml4()[0] = 0;
    let (frame, flags) = Cr3::read();
    KERNEL_ROOT.store(
        frame.start_address().as_u64(),
        core::sync::atomic::Ordering::Relaxed,
    );
    // SAFETY: rewriting CR3 with its own value only flushes the non-global TLB entries; nothing still executing or referenced lives in the low half (the stub is done; start_info is read through the physmap).
    unsafe { Cr3::write(frame, flags) };
}

/// Why the physmap could not cover RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhysmapError {
    /// No free page below 4 GiB for a page directory.
    NoMemoryForTables,
}

impl fmt::Display for PhysmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhysmapError::NoMemoryForTables => {
                f.write_str("no free page below 4 GiB for the physmap's page directories")
            }
        }
    }
}

/// Maps RAM above the boot physmap (4 GiB) into the physmap. RAM beyond
/// [`PHYSMAP_MAX`] is reserved in `memory` (the kernel could not reach it).
/// Page directories come out of `memory` (marked [`RegionKind::Kernel`]).
pub fn extend_physmap(memory: &mut MemoryMap) -> Result<(), PhysmapError> {
    let ram_end = memory
        .regions()
        .iter()
        .filter(|r| r.kind != RegionKind::Reserved)
        .map(|r| r.end)
        .max()
        .unwrap_or(0);
    if ram_end > PHYSMAP_MAX {
        // `add` only fails for an empty range or a full map; this range is
        // non-empty and reserving past the end adds at most one region.
        let _ = memory.add(PHYSMAP_MAX, u64::MAX, RegionKind::Reserved);
    }
    let ram_end = ram_end.min(PHYSMAP_MAX);
    if ram_end <= BOOT_PHYSMAP_END {
        return Ok(());
    }
    let pdpt_pa = pml4()[PHYSMAP_PML4_SLOT] & PTE_ADDR_MASK;
    // SAFETY: PML4[256] points at boot_pdpt_low (.boot.bss, boot physmap).
    let pdpt = unsafe { table(pdpt_pa) };
    let first_gib = (BOOT_PHYSMAP_END >> 30) as usize;
    let end_gib = ram_end.div_ceil(1 << 30) as usize;
    let huge = super::cpu::has_1g_pages();
    for (gib, entry) in pdpt.iter_mut().enumerate().take(end_gib).skip(first_gib) {
        let base = (gib as u64) << 30;
        if huge {
            *entry = base | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;
            continue;
        }
        let pd_pa = memory
            .allocate(PAGE_SIZE, PAGE_SIZE, BOOT_PHYSMAP_END)
            .ok_or(PhysmapError::NoMemoryForTables)?;
        // SAFETY: the page was just taken out of usable RAM below 4 GiB (so it is in the boot physmap) and nothing else refers to it.
        let pd = unsafe { table(pd_pa) };
        for (i, e) in pd.iter_mut().enumerate() {
            *e = (base + ((i as u64) << 21)) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;
        }
        *entry = pd_pa | PTE_PRESENT | PTE_WRITABLE;
    }
    // New entries replace not-present ones, which the TLB never caches: no
    // flush needed.
    Ok(())
}
