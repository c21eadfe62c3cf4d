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
