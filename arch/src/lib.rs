//! The thin per-architecture layer: entry, traps, console, exit, paging glue,
//! and the machinery tasks run on (per-CPU data, timer, context switch, user
//! mode, MMU contexts, inter-processor interrupts).
//!
//! Both architectures export the same names from [`imp`] (re-exported at the
//! crate root); the kernel calls only those. Anything that can be written
//! without `asm!` or privileged registers belongs in `mm`, `boot` or the
//! kernel's arch-neutral code instead (the scheduler, syscalls, the ELF
//! loader and the TLB-shootdown protocol are all there).
//!
//! # Contract every architecture module provides
//!
//! The kernel relies on exactly these items of `imp` (`arch/src/x86_64/` is
//! the reference; the `const` blocks at the end of this file check the
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
//!
//! # Contract for tasks (issue 6)
//!
//! Ports that run user programs also provide the modules below. Until a port
//! has them, the kernel leaves its task machinery out for that architecture:
//! `kernel/build.rs` sets `cfg(samara_tasks)` per architecture, and the
//! second `const` block below checks the items under the same condition
//! (`samara_tasks` is set for this crate by `arch/build.rs`). To bring a port
//! up, implement the items and add the architecture in both build scripts.
//!
//! **The interrupt rule.** The kernel runs with interrupts disabled, always,
//! except in user mode and in [`irq::wait_for_interrupt`] (the idle loop).
//! A port's [`irq::relax`] may also enable them around a halt inside a
//! kernel spin loop, provided its handlers then only acknowledge the
//! interrupt and run no kernel entry point (x86_64 under a hypervisor and
//! MIPS on Malta do; x86_64 keeps the tick's deadline pending across the
//! halt, Malta drops a tick that falls inside one). Consequently `mm`'s spin locks never need to be interrupt-safe, kernel
//! code is never preempted, and preemption happens only on a timer tick that
//! interrupted user mode (or idle). Every entry from user mode (syscall,
//! exception, interrupt) must leave interrupts disabled for the kernel, and
//! the return to user mode re-enables them.
//!
//! | item | meaning |
//! | --- | --- |
//! | `smp::this_cpu() -> usize` | this CPU's logical number: 0 for the boot CPU, dense `0..cpu_count()`; valid from the first line of `samara_main`/`samara_secondary_main` |
//! | `smp::cpu_count() -> usize` | CPUs the platform has and the port can start (at most 64), the boot CPU included |
//! | `smp::start_secondaries() -> usize` | start every other CPU; each runs its arch setup (traps, per-CPU data, MMU, timer calibration values from the boot CPU, but **not** its tick) and calls `samara_secondary_main(cpu)`; returns how many started. Called once by the boot CPU, after the kernel's global allocator works (the port may `Box` per-CPU data) |
//! | `irq::wait_for_interrupt()` | enable interrupts, halt until one arrives, disable them again; enabling and halting must be atomic with respect to delivery (x86 `sti; hlt`), so a wake-up sent after the caller's last check is never lost |
//! | `irq::relax()` | what a CPU spinning in the kernel does between two polls of its requests (the kernel's relax hook calls it): on x86_64 under a hypervisor (CPUID), once a wait has lasted 20 us, halt for at most 50 us (LAPIC one-shot, or the waited-for CPU's IPI) so that a descheduled lock holder's vCPU gets the host core — nothing on bare metal; on QEMU's Malta, whose MIPS vCPUs run round-robin on one host thread, give the host to the other vCPUs until the next tick (the CPU spun on cannot move meanwhile anyway) |
//! | `timer::start_tick(hz: u32)` | start this CPU's periodic tick at `hz`; each tick calls `samara_tick` |
//! | `timer::now_ns() -> u64` | nanoseconds since boot, monotonic, comparable across CPUs |
//! | `timer::cycles() -> u64` | the raw cycle counter (TSC, CP0 Count), for measurements |
//! | `timer::cycles_per_second() -> u64` | its frequency |
//! | `task::Context` | `Default`: a suspended task's kernel context (callee-saved registers and stack pointer) |
//! | `task::UserFrame` | `Clone`: the user registers saved on entry from user mode; `new_user(pc, stack_top, [a0, a1])` (user mode entered at `pc` as a function called with `a0, a1`, on the stack whose 16-byte-aligned top is `stack_top`; the port sets the stack pointer as its ABI expects at a function's entry), `pc()`, `sp()`, `syscall_number()`, `syscall_args() -> [u64; 6]`, `set_syscall_return(u64)` |
//! | `unsafe task::init_kernel(&mut Context, stack_top: u64, entry: extern "C" fn(usize) -> !, arg: usize)` | the first switch to the context calls `samara_task_start()`, then `entry(arg)` on that stack |
//! | `unsafe task::init_user(&mut Context, stack_top: u64, &UserFrame)` | the first switch to the context calls `samara_task_start()`, then `samara_exit_to_user` with a copy of the frame placed at the top of the stack, then enters user mode with exactly those registers |
//! | `unsafe task::switch(prev: *mut Context, next: *const Context)` | save the current kernel context in `prev`, resume `next`; returns when something switches back to `prev` |
//! | `task::set_kernel_stack(top: u64)` | the stack the next entry from user mode on this CPU lands on (the scheduler calls it before running a user task) |
//! | `mmu::USER_VA_END: u64` | one past the highest user address the kernel may map (x86_64: `2^47 - 4096`, the top page stays unmapped for SYSRET) |
//! | `unsafe mmu::init_user_root(root_phys: u64)` | prepare a new, zeroed user root table (x86_64 copies the kernel half of the PML4 into it; MIPS64 needs nothing) |
//! | `unsafe mmu::activate(root_phys: u64, root_entry: u64, mm: u64)` | load the user address space whose root table is at `root_phys` (`root_entry` is `PageTable::root_entry()`), tagged for TLB purposes by `mm` (an `MmId`'s raw value); flushes this CPU's stale translations of `mm` if `mmu::invalidate_cached` marked them |
//! | `mmu::activate_kernel()` | switch to the kernel-only translation (no user half loaded) |
//! | `mmu::flush_local(start: u64, end: u64)` | invalidate this CPU's translations of `[start, end)` in the currently loaded address space |
//! | `mmu::flush_local_all()` | invalidate all of this CPU's translations of the currently loaded address space |
//! | `mmu::invalidate_cached(mm: u64)` | on every CPU, mark the translations of `mm` kept under a tag that is not loaded (x86 PCIDs, MIPS ASIDs) stale, so that the next `activate` of `mm` there flushes them; each mark is an AcqRel read-modify-write (a swap), and `activate` takes it with one — pair (S4) of `mm::shootdown`, whose loom model fails otherwise |
//! | `mmu::kick(cpus: u64)` | make the CPUs in the mask run `samara_ipi` soon: an IPI on x86_64; on a port without IPIs a no-op (they poll from the tick, idle and spin loops) |
//! | `mmu::describe() -> impl Display` | the MMU features in use, for the banner (PCID, x2APIC, TLB size, ...) |
//! | `mmu::exec_protection() -> bool` | whether pages without `EXEC` really cannot be executed (x86_64 NX; MIPS64 only with RI/XI, which QEMU's Octeon68XX lacks) |
//!
//! # TLB shootdown: what the port provides
//!
//! The protocol is arch-neutral (`mm::shootdown`, driven by the kernel's
//! `os::tlb`): before a CPU activates an address space the kernel records it
//! as loaded there; an initiator marks stale tags (`invalidate_cached`),
//! samples which CPUs have the address space loaded, posts each a request,
//! `kick`s them and waits, answering requests itself meanwhile. A target
//! answers from `samara_ipi`, from `samara_tick`, from the idle loop and
//! from every kernel spin loop; for a request it calls back into the port
//! with `flush_local`/`flush_local_all` (the address space is loaded) or
//! `activate_kernel` (it held it only lazily). A port without IPIs leaves
//! `kick` empty: its CPUs answer within a tick.
//!
//! # Kernel entry points the port calls
//!
//! Defined by the kernel binary with `#[no_mangle] extern "Rust"`; the type
//! aliases in [`hooks`] name their signatures, and the kernel checks its
//! definitions against them (`const _: arch::hooks::X = x;`).
//!
//! | symbol | when |
//! | --- | --- |
//! | `samara_main(&'static BootInfo) -> !` | once, on the boot CPU |
//! | `samara_kernel_fault(&FaultReport) -> !` | a memory fault in kernel mode |
//! | `samara_secondary_main(cpu: usize) -> !` | on each secondary CPU after its arch setup |
//! | `samara_task_start()` | first thing a new task runs (finishes the switch that started it) |
//! | `samara_syscall(&mut UserFrame)` | a system call; the result goes into the frame |
//! | `samara_user_trap(&mut UserFrame, &UserTrap)` | any exception taken in user mode (memory fault, illegal instruction, ...) |
//! | `samara_tick(from_user: bool)` | a timer tick; `from_user` says whether it interrupted user mode (otherwise it interrupted idle) |
//! | `samara_ipi()` | an inter-processor interrupt (or its polled equivalent): service the kernel's mailboxes |
//! | `samara_exit_to_user(&mut UserFrame)` | the last thing before every return to user mode (after syscalls, traps and interrupts from user mode); may switch tasks or never return (the task exits) |
#![no_std]
#![cfg_attr(target_arch = "mips64", feature(asm_experimental_arch))]

#[cfg(samara_tasks)]
extern crate alloc;

use core::fmt;

#[cfg_attr(target_arch = "x86_64", path = "x86_64/mod.rs")]
#[cfg_attr(target_arch = "mips64", path = "mips64/mod.rs")]
pub mod imp;

pub use imp::{console, cpu, exit, paging, NAME};
#[cfg(samara_tasks)]
pub use imp::{irq, mmu, smp, task, timer};

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

/// What an exception taken in user mode was, for `samara_user_trap`.
#[derive(Debug, Clone, Copy)]
pub enum UserTrap {
    /// A memory access the MMU refused: not present, a protection
    /// violation, or (MIPS) a TLB miss, invalid or modified exception.
    MemoryFault(FaultReport),
    /// Any other exception: the arch's code (x86 vector, MIPS ExcCode), its
    /// name, and where it happened.
    Exception {
        code: u64,
        name: &'static str,
        pc: u64,
    },
}

// Defined by the kernel binary (kernel/src/main.rs) with #[no_mangle].
unsafe extern "Rust" {
    fn samara_main(info: &'static boot::BootInfo) -> !;
    fn samara_kernel_fault(report: &FaultReport) -> !;
}

/// The signatures of the kernel entry points the port calls (see "Kernel
/// entry points the port calls" above). The kernel checks its definitions
/// against these aliases, and the port calls them only through the wrappers
/// of this module, so a mismatch is a compile error on one side or the other
/// rather than undefined behaviour.
#[cfg(samara_tasks)]
pub mod hooks {
    use crate::imp::task::UserFrame;
    use crate::UserTrap;

    pub type SecondaryMain = fn(usize) -> !;
    pub type TaskStart = fn();
    pub type Syscall = fn(&mut UserFrame);
    pub type UserTrapHook = fn(&mut UserFrame, &UserTrap);
    pub type Tick = fn(bool);
    pub type Ipi = fn();
    pub type ExitToUser = fn(&mut UserFrame);

    unsafe extern "Rust" {
        fn samara_secondary_main(cpu: usize) -> !;
        fn samara_task_start();
        fn samara_syscall(frame: &mut UserFrame);
        fn samara_user_trap(frame: &mut UserFrame, trap: &UserTrap);
        fn samara_tick(from_user: bool);
        fn samara_ipi();
        fn samara_exit_to_user(frame: &mut UserFrame);
    }

    // SAFETY (all wrappers below): the kernel binary defines each symbol
    // with `#[no_mangle] extern "Rust"` and checks its type against the
    // alias above at compile time (kernel/src/os/hooks.rs); the wrappers
    // only forward their arguments.

    pub fn secondary_main(cpu: usize) -> ! {
        // SAFETY: see above.
        unsafe { samara_secondary_main(cpu) }
    }

    pub fn task_start() {
        // SAFETY: see above.
        unsafe { samara_task_start() }
    }

    pub fn syscall(frame: &mut UserFrame) {
        // SAFETY: see above.
        unsafe { samara_syscall(frame) }
    }

    pub fn user_trap(frame: &mut UserFrame, trap: &UserTrap) {
        // SAFETY: see above.
        unsafe { samara_user_trap(frame, trap) }
    }

    pub fn tick(from_user: bool) {
        // SAFETY: see above.
        unsafe { samara_tick(from_user) }
    }

    pub fn ipi() {
        // SAFETY: see above.
        unsafe { samara_ipi() }
    }

    pub fn exit_to_user(frame: &mut UserFrame) {
        // SAFETY: see above.
        unsafe { samara_exit_to_user(frame) }
    }
}

/// Hands the boot CPU to the kernel. Called once by the entry code.
pub fn enter_kernel(info: &'static boot::BootInfo) -> ! {
    // SAFETY: the kernel binary defines `samara_main` with exactly this signature (a mismatch is a link error, not UB: the symbol is mangled- free but the kernel declares it with the same Rust types from `boot`).
    unsafe { samara_main(info) }
}

/// Hands a decoded memory fault to the kernel, which never returns (yet).
pub fn report_fault(report: &FaultReport) -> ! {
    // SAFETY: as for `samara_main`: defined by the kernel binary with this exact signature.
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

// The task contract (see "Contract for tasks"), checked where the port has it.
#[cfg(samara_tasks)]
const _: () = {
    use imp::task::{Context, UserFrame};
    let _: fn() -> usize = imp::smp::this_cpu;
    let _: fn() -> usize = imp::smp::cpu_count;
    let _: fn() -> usize = imp::smp::start_secondaries;
    let _: fn() = imp::irq::wait_for_interrupt;
    let _: fn() = imp::irq::relax;
    let _: fn(u32) = imp::timer::start_tick;
    let _: fn() -> u64 = imp::timer::now_ns;
    let _: fn() -> u64 = imp::timer::cycles;
    let _: fn() -> u64 = imp::timer::cycles_per_second;
    let _: unsafe fn(&mut Context, u64, extern "C" fn(usize) -> !, usize) = imp::task::init_kernel;
    let _: unsafe fn(&mut Context, u64, &UserFrame) = imp::task::init_user;
    let _: unsafe fn(*mut Context, *const Context) = imp::task::switch;
    let _: fn(u64) = imp::task::set_kernel_stack;
    let _: fn(u64, u64, [u64; 2]) -> UserFrame = UserFrame::new_user;
    let _: fn(&UserFrame) -> u64 = UserFrame::pc;
    let _: fn(&UserFrame) -> u64 = UserFrame::sp;
    let _: fn(&UserFrame) -> u64 = UserFrame::syscall_number;
    let _: fn(&UserFrame) -> [u64; 6] = UserFrame::syscall_args;
    let _: fn(&mut UserFrame, u64) = UserFrame::set_syscall_return;
    let _: u64 = imp::mmu::USER_VA_END;
    let _: unsafe fn(u64) = imp::mmu::init_user_root;
    let _: unsafe fn(u64, u64, u64) = imp::mmu::activate;
    let _: fn() = imp::mmu::activate_kernel;
    let _: fn(u64, u64) = imp::mmu::flush_local;
    let _: fn() = imp::mmu::flush_local_all;
    let _: fn(u64) = imp::mmu::invalidate_cached;
    let _: fn(u64) = imp::mmu::kick;
    let _: fn() -> bool = imp::mmu::exec_protection;
};

#[cfg(samara_tasks)]
#[allow(dead_code)]
fn contract_task_types() {
    fn default<T: Default>() {}
    fn clone<T: Clone>() {}
    fn display<T: fmt::Display>(_: &T) {}
    default::<imp::task::Context>();
    clone::<imp::task::UserFrame>();
    display(&imp::mmu::describe());
}
