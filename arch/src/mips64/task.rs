//! Tasks: kernel contexts and the user register frame.
//!
//! [`Context`] and [`switch`] are [`super::context`]'s; [`UserFrame`] is the
//! exception entry's [`TrapFrame`], which holds every user register, so a
//! syscall reads its number and arguments there and writes its result
//! there.
//!
//! # Syscall convention (n64)
//!
//! `syscall` with the number in v0 ($2) and up to six arguments in a0..a5
//! ($4..$9); the result comes back in v0, a negative errno on failure (the
//! kernel's convention on both architectures; Linux MIPS instead signals
//! errors in a3). EPC is advanced past the `syscall` before the kernel sees
//! the frame, so returning resumes after it. Every other register is
//! preserved.

pub use super::context::{switch, Context};
use super::trap::USER_STATUS;
pub use super::trap::{set_kernel_stack, TrapFrame as UserFrame, USER_FRAME_RESERVE};

#[cfg(samara_tasks)]
core::arch::global_asm!(
    r#"
    .text
    .set push
    .set noreorder
    .set noat
# A new kernel thread: s0 = entry, s1 = argument.
    .globl samara_mips_kernel_task_entry
samara_mips_kernel_task_entry:
    jal     {task_start}
    nop
    jalr    $s0
    move    $a0, $s1                    # (delay slot)
1:  b       1b                          # entries never return
    nop

# A new user task: s0 = its user frame (the top of its kernel stack).
    .globl samara_mips_user_task_entry
samara_mips_user_task_entry:
    jal     {task_start}
    nop
    jal     {exit_to_user}
    move    $a0, $s0                    # (delay slot)
    j       samara_mips_exception_return
    move    $sp, $s0                    # (delay slot)
    .set pop
"#,
    task_start = sym task_start,
    exit_to_user = sym exit_to_user,
);

#[cfg(samara_tasks)]
unsafe extern "C" {
    fn samara_mips_kernel_task_entry();
    fn samara_mips_user_task_entry();
}

#[cfg(samara_tasks)]
extern "C" fn task_start() {
    crate::hooks::task_start();
}

#[cfg(samara_tasks)]
extern "C" fn exit_to_user(frame: &mut UserFrame) {
    crate::hooks::exit_to_user(frame);
}

/// Prepares a kernel thread: the first switch to `ctx` runs
/// `samara_task_start()` and then `entry(arg)` on the stack below
/// `stack_top`.
///
/// # Safety
/// `stack_top` is the 16-byte-aligned top of a stack owned by the new task.
#[cfg(samara_tasks)]
pub unsafe fn init_kernel(
    ctx: &mut Context,
    stack_top: u64,
    entry: extern "C" fn(usize) -> !,
    arg: usize,
) {
    // SAFETY: the caller's contract.
    *ctx = unsafe {
        Context::with_entry(
            stack_top,
            samara_mips_kernel_task_entry as *const () as u64,
            entry as usize as u64,
            arg as u64,
        )
    };
}

/// Prepares a user task: its first run calls `samara_task_start()`, then
/// `samara_exit_to_user` with a copy of `frame` placed at the top of the
/// stack (where every later exception from user mode saves it), then enters
/// user mode with exactly those registers.
///
/// # Safety
/// As for [`init_kernel`]; `frame` must describe user mode
/// ([`UserFrame::new_user`] or a copy of a saved user frame: Status with
/// EXL and KSU = user).
#[cfg(samara_tasks)]
pub unsafe fn init_user(ctx: &mut Context, stack_top: u64, frame: &UserFrame) {
    debug_assert!(stack_top.is_multiple_of(16));
    let at = stack_top - USER_FRAME_RESERVE;
    // SAFETY: the frame fits below the stack top (the caller's contract).
    unsafe { (at as *mut UserFrame).write(frame.clone()) };
    let entry = samara_mips_user_task_entry as *const () as u64;
    // SAFETY: the register block goes below the frame.
    *ctx = unsafe { Context::with_entry(at, entry, at, 0) };
}

impl UserFrame {
    /// The frame a new task enters user mode with: `pc`, `sp`, a0 and a1;
    /// every other register zero.
    pub fn new_user(pc: u64, sp: u64, args: [u64; 2]) -> Self {
        let mut f = UserFrame::zeroed();
        f.epc = pc;
        f.status = USER_STATUS;
        f.regs[29] = sp;
        f.regs[4] = args[0];
        f.regs[5] = args[1];
        f
    }

    /// The user program counter (EPC).
    pub fn pc(&self) -> u64 {
        self.epc
    }

    /// The user stack pointer.
    pub fn sp(&self) -> u64 {
        self.regs[29]
    }

    /// The syscall number (v0).
    pub fn syscall_number(&self) -> u64 {
        self.regs[2]
    }

    /// The six syscall arguments (a0..a5).
    pub fn syscall_args(&self) -> [u64; 6] {
        [
            self.regs[4],
            self.regs[5],
            self.regs[6],
            self.regs[7],
            self.regs[8],
            self.regs[9],
        ]
    }

    /// Sets the syscall's result (v0).
    pub fn set_syscall_return(&mut self, v: u64) {
        self.regs[2] = v;
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::empty()
    }
}
