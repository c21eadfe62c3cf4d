//! Kernel context switch.
//!
//! A switched-out task is its kernel stack pointer: [`switch`] pushes the
//! callee-saved registers of the n64 ABI (s0-s7, gp, s8/fp, ra) on the
//! current stack, stores sp in the outgoing [`Context`], loads the incoming
//! one's sp, pops its registers and returns into it. Everything else the
//! caller needs was saved by the compiler around the call (the asm is an
//! ordinary function call for Rust). Interrupts stay off throughout, as in
//! all kernel code; Status, EntryHi and KScratch2 are per CPU, not per
//! task (the scheduler switches the address space separately, with
//! [`super::mmu::switch_mm`]).
//!
//! A new task's stack holds a register block whose ra is
//! `samara_mips_task_start`, with the entry function in s0 and its argument
//! in s1; the first switch "returns" there and the trampoline calls
//! `entry(arg)`, which must not return. Tasks start
//! [`USER_FRAME_RESERVE`] bytes below the stack top, leaving that space for
//! the user frame.

use core::arch::global_asm;

use super::trap::USER_FRAME_RESERVE;

/// Bytes [`switch`] pushes: 11 registers, rounded to 16.
const SWITCH_FRAME: u64 = 96;

global_asm!(
    r#"
    .text
    .set push
    .set noreorder
    .set noat
    .globl samara_mips_switch
    .type samara_mips_switch, @function
# a0 = &mut prev.sp, a1 = next.sp
samara_mips_switch:
    daddiu  $sp, $sp, -96
    sd      $16, 0($sp)
    sd      $17, 8($sp)
    sd      $18, 16($sp)
    sd      $19, 24($sp)
    sd      $20, 32($sp)
    sd      $21, 40($sp)
    sd      $22, 48($sp)
    sd      $23, 56($sp)
    sd      $28, 64($sp)
    sd      $30, 72($sp)
    sd      $31, 80($sp)
    sd      $sp, 0($a0)
    move    $sp, $a1
    ld      $16, 0($sp)
    ld      $17, 8($sp)
    ld      $18, 16($sp)
    ld      $19, 24($sp)
    ld      $20, 32($sp)
    ld      $21, 40($sp)
    ld      $22, 48($sp)
    ld      $23, 56($sp)
    ld      $28, 64($sp)
    ld      $30, 72($sp)
    ld      $31, 80($sp)
    jr      $ra
    daddiu  $sp, $sp, 96                # (delay slot)
    .size samara_mips_switch, . - samara_mips_switch

    .globl samara_mips_task_start
    .type samara_mips_task_start, @function
samara_mips_task_start:
    jalr    $s0
    move    $a0, $s1                    # (delay slot) the argument
1:  b       1b                          # entry functions never return
    nop
    .size samara_mips_task_start, . - samara_mips_task_start
    .set pop
"#
);

unsafe extern "C" {
    fn samara_mips_switch(prev_sp: *mut u64, next_sp: u64);
    fn samara_mips_task_start();
}

/// A switched-out kernel context: its saved stack pointer.
#[derive(Debug)]
pub struct Context {
    sp: u64,
}

impl Context {
    /// A context to be filled in by the first [`switch`] away from it (the
    /// context of whatever runs now).
    pub const fn empty() -> Self {
        Context { sp: 0 }
    }

    /// A new task on the stack whose 16-byte-aligned top is `stack_top`:
    /// the first switch to it calls `entry(arg)` with sp
    /// [`USER_FRAME_RESERVE`] bytes below the top.
    ///
    /// # Safety
    /// The stack must be at least a few KiB, valid and used by nothing else
    /// for as long as the task exists.
    pub unsafe fn new(stack_top: u64, entry: extern "C" fn(u64) -> !, arg: u64) -> Self {
        // SAFETY: the caller's contract; the register block lies below the reserved user frame.
        unsafe {
            Self::with_entry(
                stack_top - USER_FRAME_RESERVE,
                samara_mips_task_start as *const () as u64,
                entry as usize as u64,
                arg,
            )
        }
    }

    /// A context whose first switch "returns" to `ra` with s0 = `s0`, s1 =
    /// `s1` and sp = `top` (16-byte aligned): the register block is written
    /// just below `top`.
    ///
    /// # Safety
    /// `[top - 96, top)` is writable stack memory nothing else uses.
    pub(crate) unsafe fn with_entry(top: u64, ra: u64, s0: u64, s1: u64) -> Self {
        debug_assert!(top.is_multiple_of(16));
        let sp = top - SWITCH_FRAME;
        let regs = sp as *mut u64;
        // SAFETY: per the function's contract: 12 words below `top`.
        unsafe {
            for i in 0..12 {
                regs.add(i).write(0);
            }
            regs.add(0).write(s0);
            regs.add(1).write(s1);
            regs.add(10).write(ra);
        }
        Context { sp }
    }
}

/// Saves the current kernel context in `*prev` and resumes `*next`.
/// Returns when something switches back to `*prev`.
///
/// Raw pointers, not references: the context being switched away from is
/// typically switched back to by code running on the other stack (a trap
/// handler, the scheduler), which must be able to name it meanwhile.
///
/// # Safety
/// `prev` must be valid for writes and `next` for reads; `*next` must hold
/// a context saved by `switch` (or made by [`Context::new`]) that is not
/// running, whose stack is still valid; interrupts must be off.
pub unsafe fn switch(prev: *mut Context, next: *const Context) {
    // SAFETY: per the function's contract; the asm follows the C ABI and preserves every callee-saved register of both contexts. `next.sp` is read before the asm stores to `prev.sp` (they may be the same object only if the caller switches to itself, which the read-then-write order keeps harmless).
    unsafe {
        let next_sp = (*next).sp;
        samara_mips_switch(&raw mut (*prev).sp, next_sp)
    };
}
