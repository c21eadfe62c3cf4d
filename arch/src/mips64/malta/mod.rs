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
