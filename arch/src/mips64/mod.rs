//! MIPS64 (Cavium Octeon cores, big-endian n64) on two platforms, chosen
//! at build time by the cargo feature `board-octeon` (xtask's `--board`):
//!
//! | platform | `board` module | console | memory | boot CPU | linked at |
//! |----------|----------------|---------|--------|----------|-----------|
//! | QEMU Malta (default) | [`malta`](board) | PIIX4 16550 | YAMON env | CPUNum 0 | 0xffff_ffff_8010_0000 |
//! | Octeon boards | [`octeon`](board) | MIO UART0 | bootmem free list | a2 = 1 | 0xffff_ffff_8110_0000 |
//!
//! Everything else (exceptions, TLB, parking, paging, exit marker) is
//! shared. A feature rather than a `--cfg` keeps the choice visible to cargo
//! (separate build artifacts per platform, `cargo clippy --features`).
//!
//! Boot flow: the boot loader jumps to [`entry`]'s `_start` in CKSEG0 on
//! every CPU at once. `_start` sets Status (64-bit addressing, interrupts
//! off) and asks the board which CPU boots; the boot CPU takes the boot
//! stack, clears BSS, installs the exception vectors ([`trap`]) and clears
//! Status.BEV, then runs the board's `samara_mips_boot`: console, TLB reset,
//! the parked CPUs, the boot data parsed by `boot::malta`/`boot::octeon`
//! into a [`BootInfo`](::boot::BootInfo), and `samara_main`. Every other CPU
//! parks itself in [`smp`] without touching the stack or memory the boot
//! CPU is clearing.
//!
//! The task contract (`arch/src/lib.rs`) on MIPS: [`trap`] (the XTLB
//! refill handler, exception dispatch to the kernel's hooks), [`context`]
//! and [`task`] (kernel context switch, user frames, the n64 syscall
//! convention), [`mmu`] (KScratch2/EntryHi switching, ASIDs, the port's side
//! of the IPI-less shootdown), [`tlb`] (local TLB maintenance), [`timer`]
//! (Count/Compare, the 1 kHz service poll), [`smp`] (logical CPU numbers,
//! releasing the parked CPUs), [`irq`]/[`cpu`] (idle `wait`, the emulator
//! yield in spin loops).
//!
//! Address-space use (the CPU has 64-bit segments; Status.KX/UX are set):
//!
//! ```text
//!   0x0000_0000_0000_0000 ..  xuseg (user, TLB mapped: the refill handler
//!                             walks the running address space's page table)
//!   0x9800_0000_0000_0000 ..  XKPHYS cached: physical memory (phys_to_virt)
//!   0xc000_0000_0000_0000 ..  XKSEG (kernel, TLB mapped; empty)
//!   0xffff_ffff_8000_0000 ..  CKSEG0: the kernel image, unmapped, cached
//!   0xffff_ffff_a000_0000 ..  CKSEG1: uncached physical 0..512 MiB (Malta UART)
//! ```

#[cfg_attr(feature = "board-octeon", path = "octeon/mod.rs")]
#[cfg_attr(not(feature = "board-octeon"), path = "malta/mod.rs")]
pub mod board;
pub mod console;
pub mod context;
pub mod cp0;
pub mod cpu;
mod entry;
pub mod exit;
pub mod irq;
pub mod mmu;
pub mod paging;
pub mod smp;
pub mod task;
pub mod timer;
pub mod tlb;
pub mod trap;
pub mod uhi;

/// The architecture's name as the banner prints it.
pub const NAME: &str = "mips64";

/// Per-CPU MMU and exception setup, on every CPU before it can fault: the
/// kernel's exception vectors, this CPU's logical number in KScratch3
/// ([`smp::this_cpu`]), the TLB reset and configuration ([`tlb::init`]),
/// KScratch2 pointing at the empty root ([`mmu::empty_root`]) with
/// ASID 0, and HWREna letting user mode read Count and its resolution
/// (`rdhwr $2`, `$3`: the user programs' cycle counter, the unit of the
/// kernel's own per-fault cycle counts). The boot CPU's entry code calls it;
/// a secondary released by [`smp::start_secondary`] calls it first thing.
/// Interrupts stay off; [`timer::start`] starts the tick.
pub fn init_cpu() -> Result<tlb::TlbInfo, tlb::TlbError> {
    trap::init();
    // The boot CPU runs this before the CPUs are numbered and is logical 0
    // whatever its CPUNum (`smp::number_cpus` sets it again).
    cp0::set_kscratch_cpu(smp::logical_of(cp0::cpu_num()).unwrap_or(0) as u64);
    let info = tlb::init()?;
    // SAFETY: the empty root is a valid, all-zero root table for the whole run, and EntryHi holds ASID 0 after `tlb::init`.
    unsafe { cp0::set_kscratch_pgd(mmu::empty_root()) };
    cp0::set_hwrena(cp0::hwrena::CC | cp0::hwrena::CCRES);
    Ok(info)
}
