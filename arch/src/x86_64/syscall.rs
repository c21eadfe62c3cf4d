//! The `syscall` entry and the `sysret` return.
//!
//! `syscall` jumps to `samara_x86_syscall_entry` with CS/SS from STAR, the
//! user RIP in RCX and RFLAGS in R11, RFLAGS masked by FMASK (interrupts
//! off, direction flag clear), and the *user* stack. The entry swaps to the
//! kernel GS base, switches to the task's kernel stack (`gs:8`) and builds
//! the same [`TrapFrame`] an interrupt from user mode builds, so the kernel
//! sees one frame type and a new task or a fork child can leave through the
//! `iretq` path.
//!
//! The return uses `sysretq` when the frame allows it: RIP below
//! [`mmu::USER_VA_END`] (so canonical: an Intel CPU raises #GP *in ring 0,
//! on the user stack* for a non-canonical RCX) and the user selectors.
//! Otherwise it takes `iretq` (`samara_x86_trap_return`). `sysretq`
//! restores RCX and R11 from RIP and RFLAGS: the ABI declares both
//! clobbered by `syscall`.

use core::arch::global_asm;

use super::trap::{TrapFrame, SYSCALL_VECTOR};
use super::{gdt, mmu, msr, percpu};

/// RFLAGS bits cleared on `syscall`: TF, IF, DF, IOPL, NT, AC.
const FMASK: u64 = (1 << 8) | (1 << 9) | (1 << 10) | (3 << 12) | (1 << 14) | (1 << 18);

global_asm!(
    r#"
    .section .text.samara_syscall, "ax"
    .global samara_x86_syscall_entry
samara_x86_syscall_entry:
    swapgs
    mov gs:[{user_rsp}], rsp
    mov rsp, gs:[{kernel_rsp}]
    push {user_ds}
    push qword ptr gs:[{user_rsp}]
    push r11
    push {user_cs}
    push rcx
    push 0
    push {vector}
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    call {dispatch}
    test al, al
    jz samara_x86_trap_return
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    /* rsp -> vector, error, rip, cs, rflags, rsp, ss */
    mov rcx, [rsp + 16]
    mov r11, [rsp + 32]
    mov rsp, [rsp + 40]
    swapgs
    sysretq
    "#,
    user_rsp = const percpu::OFF_USER_RSP,
    kernel_rsp = const percpu::OFF_KERNEL_RSP,
    user_ds = const gdt::USER_DS,
    user_cs = const gdt::USER_CS,
    vector = const SYSCALL_VECTOR,
    dispatch = sym syscall_dispatch,
);

unsafe extern "C" {
    fn samara_x86_syscall_entry();
}

/// The syscall entry point (LSTAR).
pub fn entry() -> u64 {
    samara_x86_syscall_entry as *const () as u64
}

/// RFLAGS bits a user program may set (CF, PF, AF, ZF, SF, DF, OF, AC).
const USER_FLAGS: u64 = 0x8d5 | (1 << 18);

/// Times a broken `syscall` was completed in software (see
/// [`complete_broken_syscall`]); the first one prints a note.
static EMULATED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Completes a `syscall` that the CPU only half executed.
///
/// Some virtualisation stacks execute SYSCALL's register effects — RCX =
/// the return address, R11 = RFLAGS, RFLAGS masked by FMASK, RIP = LSTAR —
/// but leave CS and SS, and so the privilege level, at the user's values:
/// the fetch of the entry point's first instruction then raises a user-mode
/// page fault at LSTAR. Seen with PVM (`kvm_pvm`, the Pagetable-based
/// Virtual Machine, which runs guest kernels deprivileged and is what
/// `/dev/kvm` is on the machine Samara is developed on); real CPUs and
/// QEMU's TCG never do it. When the fault
/// has exactly that signature the kernel finishes the job: the return
/// address and flags go back into the frame (RCX must be a user address,
/// the flags are cut to what user mode may set, with interrupts on), and
/// the frame is handled as a system call, returning through `iretq`.
/// Returns `false` (a genuine fault) when RCX is not a user address: a
/// program that jumps to LSTAR itself gains nothing it could not get from a
/// `syscall`.
pub fn complete_broken_syscall(frame: &mut TrapFrame) -> bool {
    if frame.rcx >= mmu::USER_VA_END {
        return false;
    }
    if EMULATED.fetch_add(1, core::sync::atomic::Ordering::Relaxed) == 0 {
        crate::write_display(
            super::console::write_bytes,
            &format_args!(
                "samara: note: this CPU's SYSCALL does not enter ring 0 (a virtualisation bug); \
                 completing system calls from the page fault it raises\n"
            ),
        );
    }
    frame.rip = frame.rcx;
    frame.rflags = (frame.r11 & USER_FLAGS) | super::trap::USER_RFLAGS;
    frame.vector = SYSCALL_VECTOR;
    frame.error = 0;
    crate::hooks::syscall(frame);
    true
}

/// Runs the syscall and the return-to-user work; returns whether `sysretq`
/// may be used (1) or `iretq` must be (0).
extern "C" fn syscall_dispatch(frame: &mut TrapFrame) -> u64 {
    crate::hooks::syscall(frame);
    crate::hooks::exit_to_user(frame);
    u64::from(
        frame.rip < mmu::USER_VA_END
            && frame.cs == u64::from(gdt::USER_CS)
            && frame.ss == u64::from(gdt::USER_DS),
    )
}

/// Programs this CPU's syscall MSRs and enables `syscall` (EFER.SCE).
pub fn init_cpu() {
    let star = (u64::from(gdt::SYSRET_BASE) << 48) | (u64::from(gdt::KERNEL_CS) << 32);
    // SAFETY: these MSRs exist on every x86_64 CPU; the entry point is the assembly above, the selectors match the GDT (gdt.rs), and FMASK clears IF so the kernel starts with interrupts off.
    unsafe {
        msr::write(msr::IA32_STAR, star);
        msr::write(msr::IA32_LSTAR, entry());
        msr::write(msr::IA32_FMASK, FMASK);
        let efer = msr::read(msr::IA32_EFER);
        msr::write(msr::IA32_EFER, efer | msr::EFER_SCE | msr::EFER_NXE);
    }
}
