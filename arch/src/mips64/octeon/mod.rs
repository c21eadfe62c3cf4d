//! Cavium Octeon boards booted by U-Boot's `bootoctlinux` (cargo feature
//! `board-octeon`).
//!
//! U-Boot starts every core of the core mask at the ELF entry point, with
//! a2 = 1 on the boot core and 0 on the others, and a3 = the XKPHYS address
//! of the core's boot descriptor (see `boot::octeon`). So the boot CPU is
//! the one with a2 != 0, not CPU 0; the others park exactly as on Malta
//! ([`crate::imp::smp`]). Console: MIO UART0 ([`uart`]). Memory: the bootmem
//! free list ([`boot`]). Exit: there is no host to return to; the CPU halts
//! after the exit marker.
//!
//! The kernel is linked in CKSEG0 at 0xffff_ffff_8110_0000 (physical
//! 17 MiB, where Linux is linked on Octeon), `linker/mips64-octeon.ld`.

mod boot;
pub mod uart;

/// The platform's name.
pub const NAME: &str = "octeon";

/// `_start`'s boot-CPU test: only the core U-Boot started with a2 != 0 is
/// the boot CPU ($t0 holds EBase.CPUNum for the parking code).
macro_rules! park_unless_boot_cpu {
    () => {
        "beqz    $a2, samara_mips_park\n    nop\n"
    };
}
pub(crate) use park_unless_boot_cpu;

/// What `exit_qemu` says after the exit marker: a board has nothing to exit
/// to.
pub const NO_EXIT: &str =
    "halting (reset the board to return to U-Boot; `cargo xtask flash` reads the exit marker)";

/// Whether a CPU spinning in the kernel should yield with `wait`
/// (`irq::relax`): no, the cores run in parallel and a `wait` would add up
/// to a tick of latency to every spin.
pub const YIELD_WHEN_SPINNING: bool = false;
