//! The IDT and the exception entry stubs.
//!
//! Stable Rust has no `extern "x86-interrupt"`, so each of the 32 exception
//! vectors gets a small assembly stub that pushes a zero error code when the
//! CPU does not push one, then the vector number, and joins `trap_common`,
//! which saves the general registers into a [`TrapFrame`] and calls
//! [`trap_dispatch`]. Hardware interrupts stay masked (IF = 0) for now.

use core::arch::global_asm;
use core::fmt::Write;

use spin::Once;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use super::gdt;
use crate::{AccessKind, FaultReport};

/// Registers saved on exception entry, lowest address first.
#[repr(C)]
#[derive(Debug)]
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
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error: u64,
    // Pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Vectors whose exceptions push an error code (SDM vol. 3A, table 6-1):
// #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21, #VC 29, #SX 30.
global_asm!(
    r#"
    .macro TRAP_STUB vec, has_error
    .balign 16
trap_stub_\vec:
    .if \has_error == 0
    push 0
    .endif
    push \vec
    jmp trap_common
    .endm

    .section .text.trap_stubs, "ax"
    TRAP_STUB 0, 0
    TRAP_STUB 1, 0
    TRAP_STUB 2, 0
    TRAP_STUB 3, 0
    TRAP_STUB 4, 0
    TRAP_STUB 5, 0
    TRAP_STUB 6, 0
    TRAP_STUB 7, 0
    TRAP_STUB 8, 1
    TRAP_STUB 9, 0
    TRAP_STUB 10, 1
    TRAP_STUB 11, 1
    TRAP_STUB 12, 1
    TRAP_STUB 13, 1
    TRAP_STUB 14, 1
    TRAP_STUB 15, 0
    TRAP_STUB 16, 0
    TRAP_STUB 17, 1
    TRAP_STUB 18, 0
    TRAP_STUB 19, 0
    TRAP_STUB 20, 0
    TRAP_STUB 21, 1
    TRAP_STUB 22, 0
    TRAP_STUB 23, 0
    TRAP_STUB 24, 0
    TRAP_STUB 25, 0
    TRAP_STUB 26, 0
    TRAP_STUB 27, 0
    TRAP_STUB 28, 0
    TRAP_STUB 29, 1
    TRAP_STUB 30, 1
    TRAP_STUB 31, 0

trap_common:
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
    iretq

    .section .rodata.trap_stub_table, "a"
    .balign 8
    .global trap_stub_table
trap_stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad trap_stub_\n
    .endr
    "#,
    dispatch = sym trap_dispatch,
);

unsafe extern "C" {
    /// Addresses of the 32 stubs above, by vector.
    static trap_stub_table: [u64; 32];
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
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

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

/// Builds and loads the IDT: all 32 exception vectors, with IST stacks for
/// #DF, NMI, #MC and #PF (see [`gdt`]). Boot CPU, once, after [`gdt::init`].
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut gates = [Gate::MISSING; 256];
        let sel = gdt::kernel_code_selector();
        // SAFETY: the table is emitted by the global_asm above and never written.
        let stubs = unsafe { &*core::ptr::addr_of!(trap_stub_table) };
        for (vector, &stub) in stubs.iter().enumerate() {
            let ist = match vector {
                2 => gdt::IST_NMI,
                8 => gdt::IST_DOUBLE_FAULT,
                14 => gdt::IST_PAGE_FAULT,
                18 => gdt::IST_MACHINE_CHECK,
                _ => 0,
            };
            gates[vector] = Gate::interrupt(stub, sel, ist);
        }
        Idt(gates)
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the IDT lives in a static for the kernel's lifetime, every
    // present gate points at a stub above with the kernel code selector,
    // and each IST index names a stack the TSS provides (gdt::init ran).
    unsafe { lidt(&ptr) };
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

/// Called by `trap_common` with the saved frame.
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if frame.vector == PF_VECTOR {
        // CR2 must be read before anything can fault again.
        let cr2 = Cr2::read_raw();
        crate::report_fault(&decode_page_fault(frame, cr2));
    }
    // No other exception is expected yet: report everything we know and
    // stop through the kernel's panic path (which exits QEMU with failure).
    let name = NAMES
        .get(frame.vector as usize)
        .copied()
        .unwrap_or("unknown vector");
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
