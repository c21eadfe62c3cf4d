//! The thin per-architecture layer: entry, traps, console, exit, paging glue.
//!
//! Both architectures export the same names from [`imp`] (re-exported at the
//! crate root); the kernel calls only those. Anything that can be written
//! without `asm!` or privileged registers belongs in `mm` or `boot` instead,
//! where it is tested on the host.
//!
//! # Contract every architecture module provides
//!
//! The kernel relies on exactly these items of `imp` (`arch/src/x86_64/` is
//! the reference; the `const` block at the end of this file checks the
//! signatures at compile time, so a port that drifts fails to build):
//!
//! | item | meaning |
//! | --- | --- |
//! | `NAME: &str` | the architecture as the banner prints it (`"x86_64"`, `"mips64"`) |
//! | `console::init()` | make the boot console usable (the entry code calls it first) |
//! | `console::write_bytes(&[u8])` | write raw bytes, polled, no newline translation (the kernel turns `\n` into `\r\n`) |
//! | `exit::exit_qemu(ExitStatus) -> !` | print the exit marker ([`print_exit_marker`]), then end the QEMU run: host status 33 for success, 35 for failure (a board without a host halts) |
//! | `cpu::description() -> impl Display` | the boot CPU (CPUID vendor/family/model; PRId on MIPS) |
//! | `cpu::halt_forever() -> !` | stop this CPU with interrupts off |
//! | `paging::phys_to_virt(u64) -> *mut u8` | kernel virtual address of a physical address (physmap / XKPHYS) |
//! | `paging::UNMAPPED_KERNEL_ADDR: u64` | a kernel address whose read faults as not-present (`test=pagefault`) |
//!
//! and the entry symbol its boot protocol jumps to, which on the boot CPU
//! sets up a stack, clears BSS, calls `console::init()`, installs trap
//! handling, fills a [`boot::BootInfo`] (parsed by `boot`, never by hand),
//! and calls [`enter_kernel`]. A kernel-mode memory fault is decoded into a
//! [`FaultReport`] and handed to [`report_fault`] (the kernel prints it and
//! decides); any other unexpected exception prints the registers and panics.
#![no_std]
#![cfg_attr(target_arch = "mips64", feature(asm_experimental_arch))]

use core::fmt;

#[cfg_attr(target_arch = "x86_64", path = "x86_64/mod.rs")]
#[cfg_attr(target_arch = "mips64", path = "mips64/mod.rs")]
pub mod imp;

pub use imp::{console, cpu, exit, paging, NAME};

/// How the kernel ends a QEMU run. Both architectures make QEMU exit with
/// 33 for `Success` and 35 for `Failure`; xtask maps any other status to a
/// QEMU or harness error (see `xtask/src/qemu.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    Failure,
}

impl ExitStatus {
    /// The status the exit marker reports: 0 for success, 1 for failure,
    /// the usual process exit statuses (`cargo xtask flash` exits with it).
    pub const fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
        }
    }
}

/// The start of the marker line every exit path prints last:
/// `samara: exit N`, N from [`ExitStatus::code`]. A console watcher with no
/// other channel to the kernel (a serial line to a board) ends on it.
pub const EXIT_MARKER: &str = "samara: exit ";

/// Prints the exit marker on the boot console, without taking the kernel's
/// console lock (exit paths include panics and nested exceptions). Called by
/// every architecture's `exit::exit_qemu` first.
pub fn print_exit_marker(status: ExitStatus) {
    write_display(
        imp::console::write_bytes,
        &format_args!("{EXIT_MARKER}{}\n", status.code()),
    );
}

/// What the access that faulted was trying to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Execute,
}

/// An arch-neutral description of a memory-access exception in kernel or
/// user mode.
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

// Defined by the kernel binary (kernel/src/main.rs) with #[no_mangle].
unsafe extern "Rust" {
    fn samara_main(info: &'static boot::BootInfo) -> !;
    fn samara_kernel_fault(report: &FaultReport) -> !;
}

/// Hands the boot CPU to the kernel. Called once by the entry code.
pub fn enter_kernel(info: &'static boot::BootInfo) -> ! {
    // SAFETY: the kernel binary defines `samara_main` with exactly this
    // signature (a mismatch is a link error, not UB: the symbol is mangled-
    // free but the kernel declares it with the same Rust types from `boot`).
    unsafe { samara_main(info) }
}

/// Hands a decoded memory fault to the kernel, which never returns (yet).
pub fn report_fault(report: &FaultReport) -> ! {
    // SAFETY: as for `samara_main`: defined by the kernel binary with this
    // exact signature.
    unsafe { samara_kernel_fault(report) }
}

/// A `fmt::Write` over a raw byte sink, for the few messages arch code prints
/// itself before the kernel's console exists (or while it may be locked).
/// Translates `\n` to `\r\n` like the kernel's console.
pub struct RawWriter(pub fn(&[u8]));

impl fmt::Write for RawWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, line) in s.split('\n').enumerate() {
            if i > 0 {
                (self.0)(b"\r\n");
            }
            (self.0)(line.as_bytes());
        }
        Ok(())
    }
}

/// Writes `value` with [`RawWriter`].
pub fn write_display(sink: fn(&[u8]), value: &dyn fmt::Display) {
    let _ = fmt::write(&mut RawWriter(sink), format_args!("{value}"));
}

// Compile-time check of the contract above: a port whose items are missing
// or have other types fails here with a clear error.
const _: () = {
    let _: &str = imp::NAME;
    let _: fn() = imp::console::init;
    let _: fn(&[u8]) = imp::console::write_bytes;
    let _: fn(ExitStatus) -> ! = imp::exit::exit_qemu;
    let _: fn() -> ! = imp::cpu::halt_forever;
    let _: fn(u64) -> *mut u8 = imp::paging::phys_to_virt;
    let _: u64 = imp::paging::UNMAPPED_KERNEL_ADDR;
};

#[allow(dead_code)]
fn contract_cpu_description_is_display() {
    fn display<T: fmt::Display>(_: &T) {}
    display(&imp::cpu::description());
}
