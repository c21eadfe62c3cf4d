//! Exception vectors, the register frame, and fault decoding.
//!
//! EBase points at `samara_mips_vectors` (4 KiB aligned, in CKSEG0). The
//! MIPS64r2 layout, with Status.BEV = 0 and Cause.IV = 0:
//!
//! | offset | taken for                                                     |
//! |--------|---------------------------------------------------------------|
//! | 0x000  | TLB refill, 32-bit address spaces (unused: KX = UX = 1)        |
//! | 0x080  | XTLB refill: a TLB miss on xuseg/XKSEG with EXL = 0            |
//! | 0x100  | cache error (executed through KSEG1)                          |
//! | 0x180  | everything else, including TLB misses taken with EXL = 1       |
//!
//! Every vector runs `EXCEPTION_ENTRY`, which uses only k0/k1 (the registers
//! the ABI reserves for exception code, so nothing live is lost) to pick the
//! stack, then allocates a [`TrapFrame`] there, records the vector and jumps
//! to the common save path. The XTLB refill vector will become the page-table
//! walker of issue 6; for now it takes the general path, so a miss is decoded
//! like any other TLB exception.
//!
//! Stack choice: an exception from kernel mode (Status.KSU = 0) stays on the
//! interrupted stack; one from user mode switches to
//! `samara_mips_kernel_sp[EBase.CPUNum]`, which the scheduler of issue 6
//! keeps pointing at the current task's kernel stack top (0 today: there is
//! no user mode yet).
//!
//! The common path saves every GPR (except zero, k0, k1), hi/lo, EPC, Status,
//! Cause and BadVAddr, then clears EXL/KSU/IE so that the Rust handler runs
//! as ordinary kernel code with interrupts off: a fault inside the handler is
//! a new exception with its own EPC, not a silent re-entry. On return it sets
//! EXL again before restoring EPC and Status (so no exception can clobber
//! them half-way), restores the registers and `eret`s.
//!
//! Known gap: a kernel stack overflow faults again while saving the frame
//! on the same bad stack, with EXL set, and loops. There is no guard page or
//! separate exception stack yet (CKSEG0 is unmapped).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::console::arch_println;
use super::cp0::{self, cause, status};
use super::smp::MAX_CPUS;
use crate::{AccessKind, FaultReport};

/// The registers of the interrupted context, as the entry code saves them.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct TrapFrame {
    /// GPR n at index n. `regs[29]` is the interrupted sp; `regs[0]`,
    /// `regs[26]` and `regs[27]` (zero, k0, k1) are not saved.
    pub regs: [u64; 32],
    pub hi: u64,
    pub lo: u64,
    pub epc: u64,
    pub status: u64,
    pub cause: u64,
    pub badvaddr: u64,
    /// The vector offset that was taken (0x000, 0x080, 0x100 or 0x180).
    pub vector: u64,
    _pad: u64,
}

/// Frame size; keeps sp 16-byte aligned as the n64 ABI requires.
const FRAME_SIZE: usize = 320;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME_SIZE);
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));

/// Per-CPU kernel stack top used when an exception arrives from user mode.
/// Written by the scheduler (issue 6) before it returns to user mode on that
/// CPU; read by the same CPU's exception entry, so program order suffices.
#[unsafe(export_name = "samara_mips_kernel_sp")]
pub static KERNEL_SP: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

global_asm!(
    r#"
    .set push
    .set noreorder
    .set noat

    .macro EXCEPTION_ENTRY vector
    mfc0    $k0, $12
    andi    $k0, $k0, {ksu_mask}
    beqz    $k0, 1f                     # from kernel: stay on this stack
    move    $k1, $sp                    # (delay slot) interrupted sp
    mfc0    $k0, $15, 1                 # from user: samara_mips_kernel_sp[cpu]
    andi    $k0, $k0, 0x3ff
    dsll    $k0, $k0, 3
    dla     $sp, samara_mips_kernel_sp
    daddu   $sp, $sp, $k0
    ld      $sp, 0($sp)
1:  daddiu  $sp, $sp, -{frame}
    sd      $k1, 29*8($sp)
    li      $k1, \vector
    j       samara_mips_exception_common
    sd      $k1, {off_vector}($sp)      # (delay slot)
    .endm

    .section .text.vectors, "ax"
    .balign 4096
    .globl samara_mips_vectors
samara_mips_vectors:
    .org 0x000
    EXCEPTION_ENTRY 0x000
    .org 0x080
    EXCEPTION_ENTRY 0x080
    .org 0x100
    EXCEPTION_ENTRY 0x100
    .org 0x180
    EXCEPTION_ENTRY 0x180

    .text
    .globl samara_mips_exception_common
    .type samara_mips_exception_common, @function
samara_mips_exception_common:
    sd      $1, 1*8($sp)
    sd      $2, 2*8($sp)
    sd      $3, 3*8($sp)
    sd      $4, 4*8($sp)
    sd      $5, 5*8($sp)
    sd      $6, 6*8($sp)
    sd      $7, 7*8($sp)
    sd      $8, 8*8($sp)
    sd      $9, 9*8($sp)
    sd      $10, 10*8($sp)
    sd      $11, 11*8($sp)
    sd      $12, 12*8($sp)
    sd      $13, 13*8($sp)
    sd      $14, 14*8($sp)
    sd      $15, 15*8($sp)
    sd      $16, 16*8($sp)
    sd      $17, 17*8($sp)
    sd      $18, 18*8($sp)
    sd      $19, 19*8($sp)
    sd      $20, 20*8($sp)
    sd      $21, 21*8($sp)
    sd      $22, 22*8($sp)
    sd      $23, 23*8($sp)
    sd      $24, 24*8($sp)
    sd      $25, 25*8($sp)
    sd      $zero, 26*8($sp)
    sd      $zero, 27*8($sp)
    sd      $28, 28*8($sp)
    sd      $30, 30*8($sp)
    sd      $31, 31*8($sp)
    sd      $zero, 0($sp)
    mfhi    $8
    sd      $8, {off_hi}($sp)
    mflo    $8
    sd      $8, {off_lo}($sp)
    dmfc0   $8, $14
    sd      $8, {off_epc}($sp)
    dmfc0   $8, $8
    sd      $8, {off_badvaddr}($sp)
    mfc0    $8, $13
    sd      $8, {off_cause}($sp)
    mfc0    $8, $12
    sd      $8, {off_status}($sp)
    li      $9, {kernel_mode_clear}
    and     $8, $8, $9
    mtc0    $8, $12                     # EXL, KSU, IE off: plain kernel code
    ehb

    jal     samara_mips_trap
    move    $4, $sp                     # (delay slot) a0 = frame

    .globl samara_mips_exception_return
samara_mips_exception_return:
    mfc0    $8, $12
    ori     $8, $8, {exl}
    mtc0    $8, $12                     # EXL on before EPC/Status change
    ehb
    ld      $8, {off_status}($sp)
    mtc0    $8, $12
    ld      $8, {off_epc}($sp)
    dmtc0   $8, $14
    ld      $8, {off_hi}($sp)
    mthi    $8
    ld      $8, {off_lo}($sp)
    mtlo    $8
    ld      $1, 1*8($sp)
    ld      $2, 2*8($sp)
    ld      $3, 3*8($sp)
    ld      $4, 4*8($sp)
    ld      $5, 5*8($sp)
    ld      $6, 6*8($sp)
    ld      $7, 7*8($sp)
    ld      $8, 8*8($sp)
    ld      $9, 9*8($sp)
    ld      $10, 10*8($sp)
    ld      $11, 11*8($sp)
    ld      $12, 12*8($sp)
    ld      $13, 13*8($sp)
    ld      $14, 14*8($sp)
    ld      $15, 15*8($sp)
    ld      $16, 16*8($sp)
    ld      $17, 17*8($sp)
    ld      $18, 18*8($sp)
    ld      $19, 19*8($sp)
    ld      $20, 20*8($sp)
    ld      $21, 21*8($sp)
    ld      $22, 22*8($sp)
    ld      $23, 23*8($sp)
    ld      $24, 24*8($sp)
    ld      $25, 25*8($sp)
    ld      $28, 28*8($sp)
    ld      $30, 30*8($sp)
    ld      $31, 31*8($sp)
    ld      $sp, 29*8($sp)
    ehb
    eret
    .size samara_mips_exception_common, . - samara_mips_exception_common
    .set pop
"#,
    ksu_mask = const status::KSU_MASK,
    frame = const FRAME_SIZE,
    off_hi = const 256,
    off_lo = const 264,
    off_epc = const 272,
    off_status = const 280,
    off_cause = const 288,
    off_badvaddr = const 296,
    off_vector = const 304,
    kernel_mode_clear = const !(status::EXL | status::KSU_MASK | status::IE) as i64,
    exl = const status::EXL,
);

// The offsets above must match the struct.
const _: () = {
    assert!(core::mem::offset_of!(TrapFrame, hi) == 256);
    assert!(core::mem::offset_of!(TrapFrame, lo) == 264);
    assert!(core::mem::offset_of!(TrapFrame, epc) == 272);
    assert!(core::mem::offset_of!(TrapFrame, status) == 280);
    assert!(core::mem::offset_of!(TrapFrame, cause) == 288);
    assert!(core::mem::offset_of!(TrapFrame, badvaddr) == 296);
    assert!(core::mem::offset_of!(TrapFrame, vector) == 304);
};

unsafe extern "C" {
    static samara_mips_vectors: u8;
}

/// Points this CPU's EBase at the kernel's exception vectors and clears
/// Status.BEV. The boot CPU's entry code already did this before any Rust
/// ran; secondaries released by [`super::smp::start_secondary`] call it
/// first thing. Idempotent.
pub fn init() {
    let base = (&raw const samara_mips_vectors) as u64;
    // SAFETY: `samara_mips_vectors` is the 4 KiB-aligned CKSEG0 vector page
    // defined above; it is part of the kernel image and never moves.
    unsafe { cp0::set_ebase(base) };
    // SAFETY: with EBase valid, clearing BEV sends exceptions to the kernel's
    // vectors instead of the boot ROM; nothing else in Status changes.
    unsafe { cp0::set_status(cp0::status() & !status::BEV) };
}

/// Exception codes (Cause.ExcCode) from the MIPS64 PRA.
pub mod exc {
    pub const INT: u64 = 0;
    pub const MOD: u64 = 1;
    pub const TLBL: u64 = 2;
    pub const TLBS: u64 = 3;
    pub const ADEL: u64 = 4;
    pub const ADES: u64 = 5;
    pub const IBE: u64 = 6;
    pub const DBE: u64 = 7;
    pub const SYS: u64 = 8;
    pub const BP: u64 = 9;
    pub const RI: u64 = 10;
    pub const CPU: u64 = 11;
    pub const OV: u64 = 12;
    pub const TR: u64 = 13;
    pub const FPE: u64 = 15;
    pub const TLBRI: u64 = 19;
    pub const TLBXI: u64 = 20;
    pub const WATCH: u64 = 23;
    pub const MCHECK: u64 = 24;
    pub const CACHEERR: u64 = 30;

    /// The mnemonic the MIPS manuals use.
    pub const fn name(code: u64) -> &'static str {
        match code {
            INT => "Int",
            MOD => "Mod",
            TLBL => "TLBL",
            TLBS => "TLBS",
            ADEL => "AdEL",
            ADES => "AdES",
            IBE => "IBE",
            DBE => "DBE",
            SYS => "Sys",
            BP => "Bp",
            RI => "RI",
            CPU => "CpU",
            OV => "Ov",
            TR => "Tr",
            FPE => "FPE",
            TLBRI => "TLBRI",
            TLBXI => "TLBXI",
            WATCH => "WATCH",
            MCHECK => "MCheck",
            CACHEERR => "CacheErr",
            _ => "reserved",
        }
    }
}

/// Decodes a memory-access exception into a [`FaultReport`], or `None` for
/// any other exception. Pure: depends only on the saved registers.
///
/// - TLBL/TLBS: no valid translation (refill: no entry; invalid: V = 0) for a
///   load/fetch or a store: not present.
/// - Mod: a store to a page whose D (writable) bit is clear: present.
/// - TLBRI/TLBXI: read or execute inhibited: present.
/// - AdEL/AdES: an address the current mode may not use, or a misaligned
///   one: no translation exists, reported as not present.
///
/// An instruction fetch is recognised by BadVAddr naming the faulting
/// instruction itself (EPC, or EPC + 4 when Cause.BD says the fault hit a
/// branch delay slot).
pub fn decode_fault(f: &TrapFrame) -> Option<FaultReport> {
    let code = cause::exc_code(f.cause);
    let pc = if f.cause & cause::BD != 0 {
        f.epc.wrapping_add(4)
    } else {
        f.epc
    };
    let fetch = f.badvaddr == pc;
    let (access, present) = match code {
        exc::MOD => (AccessKind::Write, true),
        exc::TLBL | exc::ADEL if fetch => (AccessKind::Execute, false),
        exc::TLBL | exc::ADEL => (AccessKind::Read, false),
        exc::TLBS | exc::ADES => (AccessKind::Write, false),
        exc::TLBRI => (AccessKind::Read, true),
        exc::TLBXI => (AccessKind::Execute, true),
        _ => return None,
    };
    Some(FaultReport {
        address: f.badvaddr,
        access,
        pc,
        user: f.status & status::KSU_MASK != 0,
        present,
        raw: f.cause,
    })
}

/// Exceptions being handled per CPU: a second one while the first is still
/// being reported means the reporting path itself faulted.
static DEPTH: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

fn dump(f: &TrapFrame) {
    let code = cause::exc_code(f.cause);
    arch_println!(
        "mips64: exception {} (ExcCode {}) via vector {:#05x} on CPU {}",
        exc::name(code),
        code,
        f.vector,
        cp0::cpu_num()
    );
    arch_println!(
        "  epc {:#018x} badvaddr {:#018x} cause {:#010x} status {:#010x}",
        f.epc,
        f.badvaddr,
        f.cause as u32,
        f.status as u32
    );
    const NAMES: [&str; 32] = [
        "zero", "at", "v0", "v1", "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "t0", "t1", "t2",
        "t3", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "t8", "t9", "k0", "k1", "gp", "sp",
        "s8", "ra",
    ];
    for row in 0..8 {
        let i = row * 4;
        arch_println!(
            "  {:>4} {:016x} {:>4} {:016x} {:>4} {:016x} {:>4} {:016x}",
            NAMES[i],
            f.regs[i],
            NAMES[i + 1],
            f.regs[i + 1],
            NAMES[i + 2],
            f.regs[i + 2],
            NAMES[i + 3],
            f.regs[i + 3]
        );
    }
}

/// Called by `samara_mips_exception_common` with the saved frame; returning
/// resumes the interrupted context as the frame now describes it.
#[unsafe(no_mangle)]
extern "C" fn samara_mips_trap(frame: &mut TrapFrame) {
    let code = cause::exc_code(frame.cause);
    if code == exc::INT {
        interrupt(frame);
        return;
    }
    let cpu = (cp0::cpu_num() as usize) % MAX_CPUS;
    // Relaxed: the counter is only ever touched by its own CPU.
    if DEPTH[cpu].fetch_add(1, Ordering::Relaxed) != 0 {
        arch_println!("\nmips64: exception while handling an exception");
        dump(frame);
        super::exit::exit_qemu(crate::ExitStatus::Failure);
    }
    match decode_fault(frame) {
        Some(report) => {
            dump(frame);
            crate::report_fault(&report)
        }
        None => {
            dump(frame);
            panic!(
                "unexpected {} exception (ExcCode {}) at pc {:#x}",
                exc::name(code),
                code,
                frame.epc
            );
        }
    }
}

/// Timer interrupts taken on running CPUs since boot (all CPUs).
pub static TIMER_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// Interrupts. Nothing enables any yet on a running CPU except by mistake
/// or a test; a timer interrupt is counted and acknowledged (Compare pushed
/// a full 2^32-tick period away) so it cannot storm; anything else is a bug.
fn interrupt(frame: &mut TrapFrame) {
    let pending = (frame.cause >> cause::IP_SHIFT) & (frame.status >> 8) & 0xff;
    if pending & 0x80 != 0 {
        // Relaxed: a statistic; nothing is published through it.
        TIMER_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
        cp0::set_compare(cp0::count().wrapping_sub(1));
        return;
    }
    dump(frame);
    panic!("unexpected interrupt, IP {:#04x}", pending);
}
