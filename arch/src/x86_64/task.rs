//! Task contexts: the kernel context switch, new kernel threads and user
//! tasks, and the user register frame.
//!
//! A suspended task's kernel context is its stack pointer; the callee-saved
//! registers (rbp, rbx, r12..r15) and the return address are on its stack,
//! pushed by [`switch`]:
//!
//! ```text
//!   ctx.rsp -> r15 r14 r13 r12 rbx rbp  return-address  (stack top ->)
//! ```
//!
//! A new task's stack is built to look the same, returning into an entry
//! stub: `kernel_task_entry` (r12 = function, r13 = argument) for kernel
//! threads, `user_task_entry` for user tasks, whose [`UserFrame`] sits at
//! the very top of the stack, where every later entry from user mode will
//! put it too.

use core::arch::global_asm;

use super::trap::{TrapFrame, FRAME_SIZE, SYSCALL_VECTOR, USER_RFLAGS};
use super::{gdt, percpu};

/// A suspended task's kernel context.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Context {
    rsp: u64,
}

/// The user registers saved on entry from user mode.
pub type UserFrame = TrapFrame;

impl TrapFrame {
    /// Registers for entering user mode at `pc`, as a function called with
    /// `args` in its first two argument registers (rdi, rsi) on the stack
    /// whose 16-byte-aligned top is `stack_top`, interrupts enabled. The
    /// SysV ABI wants RSP + 8 16-byte aligned at a function's entry, so RSP
    /// starts 8 below the top (where a call would have put the return
    /// address).
    pub fn new_user(pc: u64, stack_top: u64, args: [u64; 2]) -> TrapFrame {
        TrapFrame {
            rdi: args[0],
            rsi: args[1],
            vector: SYSCALL_VECTOR,
            rip: pc,
            cs: u64::from(gdt::USER_CS),
            rflags: USER_RFLAGS,
            rsp: stack_top - 8,
            ss: u64::from(gdt::USER_DS),
            ..TrapFrame::default()
        }
    }

    pub fn pc(&self) -> u64 {
        self.rip
    }

    pub fn sp(&self) -> u64 {
        self.rsp
    }

    /// The syscall ABI: number in rax, arguments in rdi, rsi, rdx, r10, r8,
    /// r9 (r10 instead of rcx, which `syscall` overwrites), result in rax.
    pub fn syscall_number(&self) -> u64 {
        self.rax
    }

    pub fn syscall_args(&self) -> [u64; 6] {
        [self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9]
    }

    pub fn set_syscall_return(&mut self, v: u64) {
        self.rax = v;
    }
}

global_asm!(
    r#"
    .section .text.samara_task, "ax"
    .global samara_x86_switch
samara_x86_switch:
    /* rdi = prev context, rsi = next context. */
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rdi], rsp
    mov rsp, [rsi]
    /* An interrupt from user mode leaves SS null; AMD's SYSRET would then
       return with an unusable SS cache. Keep SS valid across switches. */
    mov eax, {kernel_ds}
    mov ss, eax
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global samara_x86_kernel_task_entry
samara_x86_kernel_task_entry:
    call {task_start}
    mov rdi, r13
    call r12
    ud2

    .global samara_x86_user_task_entry
samara_x86_user_task_entry:
    call {task_start}
    mov rdi, rsp
    call {exit_to_user}
    jmp samara_x86_trap_return
    "#,
    kernel_ds = const gdt::KERNEL_DS,
    task_start = sym task_start,
    exit_to_user = sym exit_to_user,
);

unsafe extern "C" {
    fn samara_x86_switch(prev: *mut Context, next: *const Context);
    fn samara_x86_kernel_task_entry();
    fn samara_x86_user_task_entry();
}

extern "C" fn task_start() {
    crate::hooks::task_start();
}

extern "C" fn exit_to_user(frame: &mut UserFrame) {
    crate::hooks::exit_to_user(frame);
}

/// Saves the current kernel context in `prev` and resumes `next`.
///
/// # Safety
/// `prev` is writable and `next` holds a context saved by this function or
/// built by [`init_kernel`]/[`init_user`], whose stack is alive and used by
/// no CPU; interrupts are off.
pub unsafe fn switch(prev: *mut Context, next: *const Context) {
    // SAFETY: the caller's contract; the callee-saved registers are saved and restored by the assembly, the others are clobbered as by any call.
    unsafe { samara_x86_switch(prev, next) }
}

/// Writes the switch frame that makes the first switch to `ctx` "return"
/// into `entry` with r12, r13 set, leaving RSP at `top` (16-aligned) there.
///
/// # Safety
/// `[top - 56, top)` is writable stack memory of the new task.
unsafe fn push_switch_frame(ctx: &mut Context, top: u64, entry: u64, r12: u64, r13: u64) {
    let words: [u64; 7] = [0, 0, r13, r12, 0, 0, entry]; // r15 r14 r13 r12 rbx rbp ret
    let base = top - 56;
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), base as *mut u64, 7) };
    ctx.rsp = base;
}

/// Prepares a kernel thread: the first switch to `ctx` runs
/// `samara_task_start()` and then `entry(arg)` on the stack below
/// `stack_top`.
///
/// # Safety
/// `stack_top` is the 16-byte-aligned top of a stack owned by the new task.
pub unsafe fn init_kernel(
    ctx: &mut Context,
    stack_top: u64,
    entry: extern "C" fn(usize) -> !,
    arg: usize,
) {
    debug_assert!(stack_top.is_multiple_of(16));
    // SAFETY: the caller's contract.
    unsafe {
        push_switch_frame(
            ctx,
            stack_top,
            samara_x86_kernel_task_entry as *const () as u64,
            entry as usize as u64,
            arg as u64,
        )
    };
}

/// Prepares a user task: its first run enters user mode with `frame`.
///
/// # Safety
/// As for [`init_kernel`]; `frame` must describe user mode (CS and SS the
/// user selectors; [`UserFrame::new_user`] or a copy of a saved frame).
pub unsafe fn init_user(ctx: &mut Context, stack_top: u64, frame: &UserFrame) {
    debug_assert!(stack_top.is_multiple_of(16));
    let at = stack_top - FRAME_SIZE as u64;
    // SAFETY: the frame fits below the stack top (the caller's contract).
    unsafe { (at as *mut UserFrame).write(frame.clone()) };
    // SAFETY: as above, below the frame.
    unsafe {
        push_switch_frame(
            ctx,
            at,
            samara_x86_user_task_entry as *const () as u64,
            0,
            0,
        )
    };
}

/// The stack the next entry from user mode on this CPU lands on: TSS.RSP0
/// for interrupts and exceptions, the per-CPU slot for `syscall`.
pub fn set_kernel_stack(top: u64) {
    // SAFETY: the per-CPU tables are this CPU's and loaded; interrupts are off in the kernel.
    unsafe { gdt::set_rsp0(percpu::tables(), top) };
    percpu::set_kernel_rsp(top);
}
