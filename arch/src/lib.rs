//! The thin per-architecture layer: entry, traps, console, exit, paging glue.
//!
//! Both architectures export the same names from [`imp`]; the kernel calls
//! only those. Anything that can be written without `asm!` belongs in `mm` or
//! `boot` instead, where it is tested on the host.
//!
//! Contract every architecture module provides (the kernel relies on these):
//! - the entry symbol the boot protocol jumps to; it sets up a stack, clears
//!   BSS, installs trap handling, fills a [`boot::BootInfo`] and calls
//!   `extern "Rust" fn samara_main(info: &'static boot::BootInfo) -> !`
//!   (defined by the kernel) on the boot CPU;
//! - `console::write_bytes(&[u8])` and `console::init()`;
//! - `exit::exit_qemu(ExitStatus) -> !` ([`ExitStatus`] is shared below);
//! - `cpu::description() -> impl Display` (vendor/family or PRId) and
//!   `cpu::halt_forever() -> !`;
//! - `trap::init()` and a fault report hook: a kernel-mode fault prints the
//!   faulting address, access kind and PC and then calls the kernel's
//!   `extern "Rust" fn samara_kernel_fault(info: &FaultReport) -> !`.
#![no_std]
#![cfg_attr(target_arch = "mips64", feature(asm_experimental_arch))]

#[cfg_attr(target_arch = "x86_64", path = "x86_64/mod.rs")]
#[cfg_attr(target_arch = "mips64", path = "mips64/mod.rs")]
pub mod imp;

/// How the kernel ends a QEMU run. xtask maps the host-visible exit status
/// back to these (see `xtask/src/qemu.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    Failure,
}

/// What the access that faulted was trying to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Execute,
}

/// An arch-neutral description of a CPU exception in kernel or user mode.
#[derive(Debug, Clone, Copy)]
pub struct FaultReport {
    /// The virtual address that faulted (CR2, BadVAddr).
    pub address: u64,
    pub access: AccessKind,
    /// The program counter of the faulting instruction.
    pub pc: u64,
    /// Whether the CPU was in user mode.
    pub user: bool,
    /// Whether a translation existed (protection fault) or not (not present).
    pub present: bool,
    /// The raw arch cause (error code, Cause.ExcCode) for the log.
    pub raw: u64,
}
