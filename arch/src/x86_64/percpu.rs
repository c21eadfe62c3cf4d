//! The per-CPU area, reached through the GS base.
//!
//! In the kernel, `IA32_GS_BASE` points at this CPU's [`PerCpu`]; in user
//! mode it holds the user's GS base (always 0: user programs cannot change
//! it, CR4.FSGSBASE is off) and `IA32_KERNEL_GS_BASE` holds the per-CPU
//! pointer. Every entry from user mode executes `swapgs` first and every
//! return to user mode last, so kernel code always finds its area at
//! `gs:0`. The syscall entry uses two fixed slots before it has a stack:
//! `gs:8` (the current task's kernel stack top) and `gs:16` (scratch for the
//! user stack pointer).

use core::arch::asm;

use super::gdt::CpuTables;
use super::msr;

/// Offsets used by the assembly in `trap.rs` and `smp.rs`.
pub const OFF_KERNEL_RSP: usize = 8;
pub const OFF_USER_RSP: usize = 16;
pub const OFF_CPU: usize = 24;

/// One CPU's arch data. Only its own CPU writes it, with interrupts off.
#[repr(C, align(64))]
pub struct PerCpu {
    /// Its own address (`gs:0`), so Rust can turn GS into a pointer.
    this: u64,
    /// Top of the current task's kernel stack: where `syscall` switches to.
    kernel_rsp: u64,
    /// The user RSP while the syscall entry builds its frame.
    user_rsp: u64,
    /// Logical CPU number (`smp::this_cpu`).
    cpu: u64,
    /// This CPU's GDT and TSS.
    tables: *mut CpuTables,
}

const _: () = {
    assert!(core::mem::offset_of!(PerCpu, kernel_rsp) == OFF_KERNEL_RSP);
    assert!(core::mem::offset_of!(PerCpu, user_rsp) == OFF_USER_RSP);
    assert!(core::mem::offset_of!(PerCpu, cpu) == OFF_CPU);
};

impl PerCpu {
    pub const fn new() -> Self {
        PerCpu {
            this: 0,
            kernel_rsp: 0,
            user_rsp: 0,
            cpu: 0,
            tables: core::ptr::null_mut(),
        }
    }
}

impl Default for PerCpu {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes `area` this CPU's per-CPU area, as CPU number `cpu` with the
/// tables `tables`.
///
/// # Safety
/// `area` and `tables` live for the rest of the kernel's life and belong to
/// this CPU alone; called once per CPU, with interrupts off, before anything
/// reads the per-CPU area.
pub unsafe fn install(area: *mut PerCpu, cpu: usize, tables: *mut CpuTables) {
    // SAFETY: the caller hands us exclusive use of `area`.
    unsafe {
        (*area).this = area as u64;
        (*area).cpu = cpu as u64;
        (*area).tables = tables;
    }
    // SAFETY: GS base and kernel GS base are the per-CPU MSRs; kernel mode reads GS only through the accessors below, and no user mode has run on this CPU yet (the user GS base starts at 0).
    unsafe {
        msr::write(msr::IA32_GS_BASE, area as u64);
        msr::write(msr::IA32_KERNEL_GS_BASE, 0);
    }
}

/// This CPU's logical number.
#[inline(always)]
pub fn cpu() -> usize {
    let v: u64;
    // SAFETY: in kernel mode GS points at this CPU's `PerCpu` (installed by `install` before any caller runs); the load reads its `cpu` field.
    unsafe {
        asm!("mov {}, gs:[{off}]", out(reg) v, off = const OFF_CPU,
             options(nostack, readonly, preserves_flags))
    };
    v as usize
}

/// Sets the stack that `syscall` switches to.
#[inline(always)]
pub fn set_kernel_rsp(top: u64) {
    // SAFETY: as for `cpu`; the slot is this CPU's own and only read by the syscall entry on this CPU, which cannot run concurrently (interrupts are off in the kernel, and the syscall instruction comes from user mode).
    unsafe {
        asm!("mov gs:[{off}], {}", in(reg) top, off = const OFF_KERNEL_RSP,
             options(nostack, preserves_flags))
    };
}

/// This CPU's GDT and TSS.
pub fn tables() -> *mut CpuTables {
    let p: u64;
    // SAFETY: as for `cpu`.
    unsafe {
        asm!("mov {}, gs:[{off}]", out(reg) p,
             off = const core::mem::offset_of!(PerCpu, tables),
             options(nostack, readonly, preserves_flags))
    };
    p as *mut CpuTables
}
