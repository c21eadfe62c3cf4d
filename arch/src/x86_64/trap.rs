//! The IDT, the interrupt and exception entry stubs, and the return path
//! to user mode.
//!
//! Stable Rust has no `extern "x86-interrupt"`, so every vector gets a
//! small assembly stub that pushes a zero error code when the CPU does not
//! push one, then the vector number, and joins `trap_common`, which
//! switches to the kernel GS base when the CPU came from user mode, saves
//! the general registers into a [`TrapFrame`] and calls [`trap_dispatch`].
//! `trap_return` undoes all of it and `iretq`s; new user tasks and the
//! syscall path use it too.
//!
//! Vectors: 0..32 exceptions; [`TIMER_VECTOR`] the LAPIC timer;
//! [`IPI_VECTOR`] the kernel's inter-processor interrupt; 0x30..0x40 the
//! (remapped, masked) legacy PIC, whose spurious interrupts are ignored;
//! [`SPURIOUS_VECTOR`] the LAPIC's spurious vector; anything else is a bug.
//!
//! All gates are interrupt gates, so IF = 0 on entry: the kernel runs with
//! interrupts off (see the interrupt rule in `arch/src/lib.rs`).

use core::arch::global_asm;
use core::fmt::Write;

use spin::Once;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use super::{apic, gdt};
use crate::{AccessKind, FaultReport, UserTrap};

/// Registers saved on every entry (exception, interrupt, syscall), lowest
/// address first. From user mode the frame always occupies the top
/// [`FRAME_SIZE`] bytes of the task's kernel stack.
#[repr(C)]
#[derive(Debug, Clone, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector, or [`SYSCALL_VECTOR`] for the syscall entry.
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error: u64,
    // Pushed by the CPU (by the syscall entry for syscalls).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

pub const FRAME_SIZE: usize = 22 * 8;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME_SIZE);
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));
/// Offset of `cs` in the frame, as `trap_common` sees it after the stub's
/// two pushes (vector, error) and before the register pushes.
const CS_AFTER_STUB: usize = 3 * 8;

pub const TIMER_VECTOR: u8 = 0x20;
pub const IPI_VECTOR: u8 = 0x21;
pub const PIC_BASE_VECTOR: u8 = 0x30;
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Marks frames built by the syscall entry.
pub const SYSCALL_VECTOR: u64 = 0x100;

/// RFLAGS.IF, and the always-one bit 1: what a user task starts with.
pub const USER_RFLAGS: u64 = 0x202;

// Vectors whose exceptions push an error code (SDM vol. 3A, table 6-1):
// #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21, #VC 29, #SX 30.
// Each stub is at most 12 bytes (push imm8, push imm32, jmp rel32) and
// starts on a 16-byte boundary, so vector n's stub is at
// `samara_x86_trap_stubs + 16 * n`.
global_asm!(
    r#"
    .section .text.trap_stubs, "ax"
    .balign 16
    .global samara_x86_trap_stubs
samara_x86_trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push 0
    .endif
    push vec
    jmp trap_common
    .set vec, vec + 1
    .endr

trap_common:
    /* From user mode (CS.RPL = 3): switch to the kernel GS base. */
    test byte ptr [rsp + {cs_off}], 3
    jz 1f
    swapgs
1:
    /* The CPU aligned RSP to 16 before pushing its 5-word frame; with the
       error code, the vector and 15 registers the frame is 22 words, so RSP
       is 16-byte aligned again at the call, as the SysV ABI wants. */
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
    cld
    call {dispatch}

    .global samara_x86_trap_return
samara_x86_trap_return:
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
    add rsp, 16                     /* vector and error code */
    /* Back to user mode: restore the user GS base last. */
    test byte ptr [rsp + 8], 3
    jz 2f
    swapgs
2:
    iretq

    "#,
    dispatch = sym trap_dispatch,
    cs_off = const CS_AFTER_STUB,
);

unsafe extern "C" {
    /// The 256 stubs above, 16 bytes apart.
    static samara_x86_trap_stubs: [u8; 0];
}

/// One 16-byte IDT gate (SDM vol. 3A, figure 6-8).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    /// Bits 0..3: IST index (0 = no stack switch).
    ist: u8,
    /// P | DPL | type (0xe = 64-bit interrupt gate: IF cleared on entry).
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    fn interrupt(handler: u64, selector: u16, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist,
            type_attr: 0x8e, // present, DPL 0, interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<Idt> = Once::new();

const NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "non-maskable interrupt (NMI)",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range exceeded (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack-segment fault (#SS)",
    "general protection (#GP)",
    "page fault (#PF)",
    "reserved (15)",
    "x87 floating-point (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating-point (#XM)",
    "virtualization (#VE)",
    "control protection (#CP)",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security (#SX)",
    "reserved (31)",
];

const PF_VECTOR: u64 = 14;

// Page-fault error code bits (SDM vol. 3A, 4.7).
const PF_PRESENT: u64 = 1 << 0;
const PF_WRITE: u64 = 1 << 1;
const PF_USER: u64 = 1 << 2;
const PF_INSTRUCTION: u64 = 1 << 4;

/// Builds the IDT (once) and loads it on this CPU: every vector, with IST
/// stacks for #DF, NMI and #MC (see [`gdt`]). After [`gdt::load`].
pub fn load() {
    let idt = IDT.call_once(|| {
        let stubs = core::ptr::addr_of!(samara_x86_trap_stubs) as u64;
        Idt(core::array::from_fn(|vector| {
            let ist = match vector {
                2 => gdt::IST_NMI,
                8 => gdt::IST_DOUBLE_FAULT,
                18 => gdt::IST_MACHINE_CHECK,
                _ => 0,
            };
            Gate::interrupt(stubs + 16 * vector as u64, gdt::KERNEL_CS, ist)
        }))
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the IDT lives in a static for the kernel's lifetime, every gate points at a stub above with the kernel code selector, and each IST index names a stack the TSS provides (gdt::load ran).
    unsafe { lidt(&ptr) };
}

impl TrapFrame {
    /// Whether the CPU was in user mode when this frame was saved.
    pub fn is_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// Turns a page-fault frame into the arch-neutral report.
fn decode_page_fault(frame: &TrapFrame, cr2: u64) -> FaultReport {
    let e = frame.error;
    let access = if e & PF_INSTRUCTION != 0 {
        AccessKind::Execute
    } else if e & PF_WRITE != 0 {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    FaultReport {
        address: cr2,
        access,
        pc: frame.rip,
        user: e & PF_USER != 0,
        present: e & PF_PRESENT != 0,
        raw: e,
    }
}

fn exception_name(vector: u64) -> &'static str {
    NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("unknown vector")
}

/// Called by `trap_common` with the saved frame, interrupts off.
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector;
    let user = frame.is_user();
    match vector {
        0..32 => {
            let trap = if vector == PF_VECTOR {
                // CR2 must be read before anything can fault again.
                let cr2 = Cr2::read_raw();
                let report = decode_page_fault(frame, cr2);
                if !user {
                    crate::report_fault(&report);
                }
                if cr2 == super::syscall::entry()
                    && frame.rip == cr2
                    && frame.error & PF_INSTRUCTION != 0
                    && super::syscall::complete_broken_syscall(frame)
                {
                    crate::hooks::exit_to_user(frame);
                    return;
                }
                UserTrap::MemoryFault(report)
            } else if user && vector != 2 && vector != 8 && vector != 18 {
                UserTrap::Exception {
                    code: vector,
                    name: exception_name(vector),
                    pc: frame.rip,
                }
            } else {
                kernel_exception(frame)
            };
            crate::hooks::user_trap(frame, &trap);
        }
        // Interrupts taken in `irq::relax`'s halt interrupted a spin loop
        // that may hold any kernel lock: acknowledge them and run nothing
        // (see `irq::in_relax_halt` for why nothing is lost).
        v if (v == u64::from(TIMER_VECTOR) || v == u64::from(IPI_VECTOR))
            && !user
            && super::irq::in_relax_halt() =>
        {
            apic::eoi();
        }
        v if v == u64::from(TIMER_VECTOR) => {
            // EOI first: the handler may switch to another task, which then
            // returns to user mode with this vector still in service.
            apic::eoi();
            // Also re-arms the one-shot timer (`timer::start_tick`).
            if super::timer::tick_due() {
                crate::hooks::tick(user);
            }
        }
        v if v == u64::from(IPI_VECTOR) => {
            apic::eoi();
            crate::hooks::ipi();
        }
        // Spurious interrupts (LAPIC, and the masked 8259s' IRQ 7 and 15)
        // need no EOI and carry no work.
        v if v == u64::from(SPURIOUS_VECTOR)
            || (u64::from(PIC_BASE_VECTOR)..u64::from(PIC_BASE_VECTOR) + 16).contains(&v) => {}
        _ => {
            kernel_exception(frame);
        }
    }
    if user {
        crate::hooks::exit_to_user(frame);
    }
}

/// An exception the kernel cannot handle: report everything we know and
/// stop through the kernel's panic path (which exits QEMU with failure).
fn kernel_exception(frame: &TrapFrame) -> ! {
    let name = exception_name(frame.vector);
    let mut out = crate::RawWriter(super::console::write_bytes);
    let _ = write!(
        out,
        "\nexception {} {name}: error {:#x} rip {:#x} cs {:#x} rflags {:#x} rsp {:#x} ss {:#x} cr2 {:#x}\n\
         rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}\n\
         r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}\n",
        frame.vector,
        frame.error,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
        Cr2::read_raw(),
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
    );
    panic!(
        "unhandled exception {} ({name}) at rip {:#x}",
        frame.vector, frame.rip
    );
}
