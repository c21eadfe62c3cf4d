//! QEMU's Malta board (`-M malta -cpu Octeon68XX`).
//!
//! The pseudo-bootloader starts every CPU at `_start` at once; the boot CPU
//! is the one with EBase.CPUNum 0. Console: PIIX4 COM1 ([`uart`]). Boot
//! data: YAMON-style argv/environment tables ([`boot`], parsed by
//! `boot::malta`). Exit: UHI semihosting under `-semihosting`.

mod boot;
pub mod uart;

/// The platform's name.
pub const NAME: &str = "malta";

/// `_start`'s boot-CPU test, with $t0 = EBase.CPUNum: every CPU but 0 parks.
macro_rules! park_unless_boot_cpu {
    () => {
        "bnez    $t0, samara_mips_park\n    nop\n"
    };
}
pub(crate) use park_unless_boot_cpu;

/// What `exit_qemu` says when no UHI host can end the run.
pub const NO_EXIT: &str = "cannot exit QEMU: no UHI host (start QEMU with -semihosting); halting";

/// Whether a CPU spinning in the kernel should yield with `wait`
/// (`irq::relax`): yes. No Malta board carries an Octeon, so this platform
/// is always QEMU, whose MIPS target runs every vCPU on one host thread in
/// turn (it is not converted to multi-threaded TCG): a spinning vCPU burns
/// its whole turn while the vCPU it waits for cannot run, and turns change
/// only when some vCPU is kicked — on Malta only by timer interrupts, there
/// are no IPIs. `wait` ends the turn at once.
pub const YIELD_WHEN_SPINNING: bool = true;
