//! MIPS64 (Cavium Octeon, big-endian n64) on the Malta board.
//!
//! Boot flow: QEMU's Malta pseudo-bootloader jumps to [`entry`]'s `_start`
//! in CKSEG0 on every CPU at once, with the argv/env pointers in a1/a2. The
//! boot CPU (EBase.CPUNum 0) sets Status (64-bit addressing, interrupts off),
//! takes the boot stack, clears BSS, installs the exception vectors
//! ([`trap`]) and clears Status.BEV, then runs [`boot::mips64_start`]:
//! console, TLB reset, counting the parked CPUs, parsing the Malta boot data
//! into a [`boot::BootInfo`](::boot::BootInfo), and `samara_main`. Every
//! other CPU parks itself in [`smp`] without touching the stack or memory
//! the boot CPU is clearing.
//!
//! Address-space use (the CPU has 64-bit segments; Status.KX/UX are set):
//!
//! ```text
//!   0x0000_0000_0000_0000 ..  xuseg (user, TLB mapped; empty until issue 6)
//!   0x9800_0000_0000_0000 ..  XKPHYS cached: physical memory (phys_to_virt)
//!   0xc000_0000_0000_0000 ..  XKSEG (kernel, TLB mapped; empty)
//!   0xffff_ffff_8000_0000 ..  CKSEG0: the kernel image, unmapped, cached
//!   0xffff_ffff_a000_0000 ..  CKSEG1: uncached physical 0..512 MiB (UART)
//! ```

pub mod boot;
pub mod console;
pub mod cp0;
pub mod cpu;
mod entry;
pub mod exit;
pub mod paging;
pub mod smp;
pub mod tlb;
pub mod trap;
pub mod uhi;

/// The architecture's name as the banner prints it.
pub const NAME: &str = "mips64";
