//! Exception vectors, the XTLB refill handler, the register frame, fault
//! decoding, and dispatch to the kernel.
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
//! # The XTLB refill handler (+0x080)
//!
//! A miss on a user address walks the current address space's
//! `mm::pgtable::PageTable<Mips64Pte>` (root in KScratch2, see
//! [`super::mmu`]) and loads the even/odd PTE pair into EntryLo0/1
//! verbatim; the PTE format is EntryLo's (`mm::pgtable::mips64`). It uses
//! only k0/k1, runs with EXL set (so it cannot be interrupted), and its hit
//! path is exactly the 32 instructions that fit between +0x080 and +0x100:
//!
//! ```text
//!  1 dmfc0  k0, BadVAddr           17 dsrl   k0, k0, 18     # VA[29:21]*8
//!  2 dsrl32 k1, k0, 30   # R bits  18 andi   k0, k0, 0xff8
//!  3 bnez   k1, not_user           19 daddu  k1, k1, k0
//!  4  dmfc0 k1, KScratch2 # root   20 ld     k1, 0(k1)      # leaf table
//!  5 dsrl32 k0, k0, 4   # VA>>36   21 beqz   k1, no_table
//!  6 andi   k0, k0, 0xff8          22  dmfc0 k0, BadVAddr
//!  7 daddu  k1, k1, k0             23 dsrl   k0, k0, 9      # VA[20:13]*16
//!  8 ld     k1, 0(k1)  # level 3   24 andi   k0, k0, 0xff0
//!  9 beqz   k1, no_table           25 daddu  k1, k1, k0
//! 10  dmfc0 k0, BadVAddr           26 ld     k0, 0(k1)      # even PTE
//! 11 dsrl   k0, k0, 27 # VA[38:30] 27 ld     k1, 8(k1)      # odd PTE
//! 12 andi   k0, k0, 0xff8          28 dmtc0  k0, EntryLo0
//! 13 daddu  k1, k1, k0             29 dmtc0  k1, EntryLo1
//! 14 ld     k1, 0(k1)  # level 2   30 ehb
//! 15 beqz   k1, no_table           31 tlbwr
//! 16  dmfc0 k0, BadVAddr           32 eret
//! ```
//!
//! Four dependent loads (root, level 3, level 2, the pair), three
//! table-present branches, no PTE manipulation. A missing table
//! (`no_table`, +0x280) writes an invalid pair with `tlbwr` and `eret`s: the
//! retried access then raises TLBL/TLBS through +0x180 and reaches the
//! kernel's fault path, exactly like an empty PTE (which refills as V = 0).
//! A miss outside xuseg (`not_user`, +0x300: XKSEG, nothing is mapped
//! there) takes the general path below, recorded as vector 0x080.
//!
//! # The general path
//!
//! Every other vector runs `EXCEPTION_ENTRY`, which uses only k0/k1 (the
//! registers the ABI reserves for exception code, so nothing live is lost)
//! to pick the stack, then allocates a [`TrapFrame`] there, records the
//! vector and jumps to the common save path.
//!
//! Stack choice: an exception from kernel mode (Status.KSU = 0) stays on the
//! interrupted stack; one from user mode switches to
//! `samara_mips_kernel_sp[EBase.CPUNum]`, the running task's kernel stack
//! top ([`set_kernel_stack`]), so the user frame always sits at the top of
//! the task's kernel stack (where [`enter_user`] builds the first one).
//!
//! The common path saves every GPR (except zero, k0, k1), hi/lo, EPC, Status,
//! Cause and BadVAddr, then clears EXL/KSU/IE so that the Rust handler runs
//! as ordinary kernel code with interrupts off: a fault inside the handler is
//! a new exception with its own EPC, not a silent re-entry. On return it sets
//! EXL again before restoring EPC and Status (so no exception can clobber
//! them half-way), restores the registers and `eret`s.
//!
//! # Dispatch ([`samara_mips_trap`])
//!
//! To the kernel's entry points (`crate::hooks`, the task contract):
//!
//! | exception | from | goes to |
//! |-----------|------|---------|
//! | Int: timer (IP7) | user, idle | [`super::timer`] acknowledges it; `samara_ipi` (there are no IPIs: every timer interrupt services the kernel's cross-CPU requests), and at the kernel's rate `samara_tick` |
//! | Sys | user | EPC += 4, `samara_syscall` |
//! | TLBL/TLBS/Mod/TLBRI/TLBXI/AdEL/AdES | user | `samara_user_trap(MemoryFault)`, then the TLB entry is refreshed from the page table ([`super::mmu::refresh`]) |
//! | anything else | user | `samara_user_trap(Exception)` |
//! | anything else | kernel | the kernel fault report or a panic |
//!
//! Before every return to user mode `samara_ipi` (a polling point: there
//! are no IPIs) and `samara_exit_to_user` run.
//!
//! The MIPS-only test scenarios (`kernel/src/mips.rs`) install their own
//! [`Handlers`] instead ([`set_handlers`]); they also take kernel-mode TLB
//! faults on user addresses. Without either, every exception but the timer
//! is fatal, as at boot.
//!
//! Known gap: a kernel stack overflow faults again while saving the frame
//! on the same bad stack, with EXL set, and loops. There is no guard page or
//! separate exception stack yet (stacks live in unmapped XKPHYS/CKSEG0).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use spin::Once;

use super::console::arch_println;
use super::cp0::{self, cause, status};
use super::smp::MAX_CPUS;
use super::{cpu, mmu, timer};
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

impl TrapFrame {
    /// All registers zero.
    pub const fn zeroed() -> Self {
        TrapFrame {
            regs: [0; 32],
            hi: 0,
            lo: 0,
            epc: 0,
            status: 0,
            cause: 0,
            badvaddr: 0,
            vector: 0,
            _pad: 0,
        }
    }
}

/// Frame size; keeps sp 16-byte aligned as the n64 ABI requires.
const FRAME_SIZE: usize = 320;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME_SIZE);
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));

/// Per-CPU kernel stack top used when an exception arrives from user mode.
/// Written by the owning CPU ([`set_kernel_stack`], [`enter_user`]) before
/// it returns to user mode; read by the same CPU's exception entry, so
/// program order suffices.
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

    # The XTLB refill handler: see the module documentation. Exactly 32
    # instructions; the assembler refuses the `.org 0x100` below if it grows.
    .org 0x080
    dmfc0   $k0, $8                     # BadVAddr
    dsrl32  $k1, $k0, 30                # VA[63:62]: 0 for xuseg
    bnez    $k1, samara_mips_refill_not_user
    dmfc0   $k1, $31, {kscratch}        # (delay slot) root table
    dsrl32  $k0, $k0, 4                 # level 4: VA[47:39] * 8
    andi    $k0, $k0, 0xff8
    daddu   $k1, $k1, $k0
    ld      $k1, 0($k1)                 # level-3 table or 0
    beqz    $k1, samara_mips_refill_no_table
    dmfc0   $k0, $8                     # (delay slot)
    dsrl    $k0, $k0, 27                # level 3: VA[38:30] * 8
    andi    $k0, $k0, 0xff8
    daddu   $k1, $k1, $k0
    ld      $k1, 0($k1)                 # level-2 table or 0
    beqz    $k1, samara_mips_refill_no_table
    dmfc0   $k0, $8                     # (delay slot)
    dsrl    $k0, $k0, 18                # level 2: VA[29:21] * 8
    andi    $k0, $k0, 0xff8
    daddu   $k1, $k1, $k0
    ld      $k1, 0($k1)                 # leaf table or 0
    beqz    $k1, samara_mips_refill_no_table
    dmfc0   $k0, $8                     # (delay slot)
    dsrl    $k0, $k0, 9                 # level 1: pair VA[20:13] * 16
    andi    $k0, $k0, 0xff0
    daddu   $k1, $k1, $k0
    ld      $k0, 0($k1)                 # even page's PTE, verbatim
    ld      $k1, 8($k1)                 # odd page's PTE, verbatim
    dmtc0   $k0, $2                     # EntryLo0
    dmtc0   $k1, $3                     # EntryLo1
    ehb
    tlbwr                               # EntryHi (VPN2, ASID) set by the miss
    eret

    .org 0x100
    EXCEPTION_ENTRY 0x100
    .org 0x180
    EXCEPTION_ENTRY 0x180

    # No table on the walk: load an invalid pair, so that the retried access
    # raises TLBL/TLBS through 0x180.
    .org 0x280
samara_mips_refill_no_table:
    dmtc0   $zero, $2
    dmtc0   $zero, $3
    ehb
    tlbwr
    eret

    # A refill outside xuseg: nothing is mapped there; report it.
    .org 0x300
samara_mips_refill_not_user:
    EXCEPTION_ENTRY 0x080

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
    kscratch = const cp0::KSCRATCH_PGD,
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
    // SAFETY: `samara_mips_vectors` is the 4 KiB-aligned CKSEG0 vector page defined above; it is part of the kernel image and never moves.
    unsafe { cp0::set_ebase(base) };
    // SAFETY: with EBase valid, clearing BEV sends exceptions to the kernel's vectors instead of the boot ROM; nothing else in Status changes.
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

/// Fatal exceptions being reported per CPU: a second one while the first is
/// still being reported means the reporting path itself faulted.
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

/// Where the timer interrupt found the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickFrom {
    /// Running user code (a quiescent state for RCU).
    User,
    /// In [`cpu::idle_wait`] (a quiescent state for RCU).
    Idle,
    /// In the kernel with interrupts enabled outside idle (a bug: the
    /// kernel keeps them off; reported, not a quiescent state).
    Kernel,
}

/// The kernel's side of exception handling. Each runs as ordinary kernel
/// code (interrupts off) on the interrupted task's kernel stack, and may
/// switch to another task before returning (the frame stays on this
/// task's stack until it is resumed).
pub struct Handlers {
    /// A `syscall` from user mode. EPC already points past it; the handler
    /// reads the number and arguments from the frame and writes the result.
    pub syscall: fn(&mut TrapFrame),
    /// A memory-access exception on a user address, from user mode or from
    /// the kernel touching user memory. Returns `true` once the access can
    /// be retried (the arch then refreshes the TLB entry from the page
    /// table, [`super::mmu::refresh`]), `false` if it is not the kernel's
    /// to resolve: a user task then gets [`Handlers::user_exception`]; a
    /// kernel access becomes a kernel fault report.
    pub page_fault: fn(&mut TrapFrame, &FaultReport) -> bool,
    /// Any other exception in user mode (reserved instruction, overflow,
    /// trap, break, coprocessor unusable, a declined fault). The kernel
    /// kills the task; if it returns, the task resumes as the frame says.
    pub user_exception: fn(&mut TrapFrame),
    /// The timer tick, after it was acknowledged. With no IPIs on this
    /// platform, this is where a CPU running user code or idling services
    /// the kernel's cross-CPU requests (TLB shootdown).
    pub tick: fn(&mut TrapFrame, TickFrom),
    /// Last thing before every return to user mode (and before
    /// [`enter_user`]'s first): RCU quiescent state, rescheduling.
    pub return_to_user: fn(&mut TrapFrame),
}

static HANDLERS: Once<Handlers> = Once::new();

/// Installs the kernel's handlers (once; later calls are ignored). Until
/// then every exception but the timer is fatal.
pub fn set_handlers(h: Handlers) {
    HANDLERS.call_once(|| h);
}

/// Sets the kernel stack this CPU switches to on an exception from user
/// mode: the running task's stack top (16-byte aligned). The scheduler
/// calls it when it switches to a task that will return to user mode.
pub fn set_kernel_stack(top: u64) {
    let cpu = cp0::cpu_num() as usize % MAX_CPUS;
    // Relaxed: read only by this CPU's exception entry (program order).
    KERNEL_SP[cpu].store(top, Ordering::Relaxed);
}

/// The registers a task starts user mode with.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserStart {
    /// Entry point (EPC).
    pub pc: u64,
    /// Stack pointer.
    pub sp: u64,
    /// a0..a3.
    pub args: [u64; 4],
}

/// The Status a task runs user mode with: 64-bit user and kernel segments,
/// user mode, interrupts on with only the timer unmasked; EXL set so that
/// restoring it in the exception return does not drop to user mode before
/// the `eret`.
pub const USER_STATUS: u64 =
    status::KX | status::UX | status::KSU_USER | status::EXL | status::IM7 | status::IE;

/// Bytes at the top of every task's kernel stack reserved for its user
/// frame: exceptions from user mode save it there, and [`enter_user`]
/// builds the first one there. [`super::context::Context::new`] starts
/// tasks below it.
pub const USER_FRAME_RESERVE: u64 = FRAME_SIZE as u64;

/// Enters user mode for the first time on this task: builds the user frame
/// at the top of the task's kernel stack `kstack_top` (where exceptions from
/// user mode will save it from now on), makes that the CPU's kernel stack,
/// runs [`Handlers::return_to_user`] and `eret`s.
///
/// # Safety
/// `kstack_top` must be the 16-byte-aligned top of the kernel stack this
/// task runs on, whose top [`USER_FRAME_RESERVE`] bytes nothing uses (a task
/// started by `Context::new` never does). Everything else on that stack is
/// abandoned. The current address space must be the task's.
pub unsafe fn enter_user(kstack_top: u64, start: &UserStart) -> ! {
    let mut regs = [0u64; 32];
    regs[4..8].copy_from_slice(&start.args);
    regs[29] = start.sp;
    let mut f = TrapFrame {
        regs,
        hi: 0,
        lo: 0,
        epc: start.pc,
        status: USER_STATUS,
        cause: 0,
        badvaddr: 0,
        vector: 0,
        _pad: 0,
    };
    set_kernel_stack(kstack_top);
    if let Some(h) = HANDLERS.get() {
        (h.return_to_user)(&mut f);
    }
    let frame_addr = kstack_top - USER_FRAME_RESERVE;
    // SAFETY: the reserved top of this task's kernel stack is unused (caller's contract), 16-byte aligned and FRAME_SIZE bytes long; the exception return path restores every register from it and `eret`s to user mode with USER_STATUS (EXL set until the `eret`). Nothing on the rest of the stack is needed again.
    unsafe {
        core::ptr::write(frame_addr as *mut TrapFrame, f);
        asm!(
            ".set push",
            ".set noreorder",
            "move $sp, {frame}",
            "j samara_mips_exception_return",
            "nop",
            ".set pop",
            frame = in(reg) frame_addr,
            options(noreturn),
        )
    }
}

/// Calls the fatal path: dumps the frame and reports a kernel fault or
/// panics. Nested fatal exceptions exit at once.
fn fatal(frame: &TrapFrame) -> ! {
    let cpu = cp0::cpu_num() as usize % MAX_CPUS;
    let code = cause::exc_code(frame.cause);
    // Relaxed: the counter is only ever touched by its own CPU.
    if DEPTH[cpu].fetch_add(1, Ordering::Relaxed) != 0 {
        arch_println!("\nmips64: exception while handling an exception");
        dump(frame);
        super::exit::exit_qemu(crate::ExitStatus::Failure);
    }
    dump(frame);
    match decode_fault(frame) {
        Some(report) => crate::report_fault(&report),
        None => panic!(
            "unexpected {} exception (ExcCode {}) at pc {:#x}",
            exc::name(code),
            code,
            frame.epc
        ),
    }
}

/// Whether `addr` is in xuseg (user addresses; TLB-mapped per address space).
#[inline]
fn is_user_addr(addr: u64) -> bool {
    addr >> 62 == 0
}

/// Called by `samara_mips_exception_common` with the saved frame; returning
/// resumes the interrupted context as the frame now describes it.
#[unsafe(no_mangle)]
extern "C" fn samara_mips_trap(frame: &mut TrapFrame) {
    let code = cause::exc_code(frame.cause);
    let from_user = frame.status & status::KSU_MASK != 0;
    if code == exc::INT {
        interrupt(frame, from_user);
    } else if let Some(h) = HANDLERS.get() {
        scenario_dispatch(h, frame, code, from_user);
    } else {
        kernel_dispatch(frame, code, from_user);
    }
    if from_user {
        exit_to_user(frame);
    }
}

/// The exception's instruction: EPC, or the delay slot after it (Cause.BD).
fn faulting_pc(f: &TrapFrame) -> u64 {
    if f.cause & cause::BD != 0 {
        f.epc.wrapping_add(4)
    } else {
        f.epc
    }
}

/// Dispatch to the kernel's entry points (`crate::hooks`). The kernel never
/// touches user memory through the TLB (its user copies walk the page
/// table), so every exception from kernel mode is fatal.
#[cfg(samara_tasks)]
fn kernel_dispatch(frame: &mut TrapFrame, code: u64, from_user: bool) {
    if !from_user {
        fatal(frame);
    }
    if code == exc::SYS && frame.cause & cause::BD == 0 {
        frame.epc = frame.epc.wrapping_add(4);
        crate::hooks::syscall(frame);
        return;
    }
    match decode_fault(frame) {
        Some(r) => {
            crate::hooks::user_trap(frame, &crate::UserTrap::MemoryFault(r));
            // The access is retried (or the task dies on its way out):
            // drop the stale copy the fault came from (mmu::refresh).
            mmu::refresh(r.address);
        }
        None => {
            let trap = crate::UserTrap::Exception {
                code,
                name: exc::name(code),
                pc: faulting_pc(frame),
            };
            crate::hooks::user_trap(frame, &trap);
        }
    }
}

/// Without the task contract there is no kernel to hand user exceptions to.
#[cfg(not(samara_tasks))]
fn kernel_dispatch(frame: &mut TrapFrame, _code: u64, _from_user: bool) {
    fatal(frame);
}

/// Dispatch to handlers a test scenario installed ([`set_handlers`]).
fn scenario_dispatch(h: &Handlers, frame: &mut TrapFrame, code: u64, from_user: bool) {
    if code == exc::SYS && from_user && frame.cause & cause::BD == 0 {
        frame.epc = frame.epc.wrapping_add(4);
        (h.syscall)(frame);
        return;
    }
    match decode_fault(frame) {
        Some(r)
            if from_user || (is_user_addr(r.address) && code != exc::ADEL && code != exc::ADES) =>
        {
            if (h.page_fault)(frame, &r) {
                mmu::refresh(r.address);
            } else if from_user {
                (h.user_exception)(frame);
            } else {
                fatal(frame);
            }
        }
        _ if from_user => (h.user_exception)(frame),
        _ => fatal(frame),
    }
}

/// The last thing before returning to user mode. With no IPIs, every
/// return to user mode is also a polling point for the kernel's cross-CPU
/// requests (`samara_ipi`: one load when none is pending), so a CPU whose
/// task faults or calls the kernel often answers a shootdown at once
/// instead of at its next tick.
fn exit_to_user(frame: &mut TrapFrame) {
    if let Some(h) = HANDLERS.get() {
        (h.return_to_user)(frame);
        return;
    }
    #[cfg(samara_tasks)]
    {
        crate::hooks::ipi();
        crate::hooks::exit_to_user(frame);
    }
}

/// Timer interrupts taken on running CPUs since boot (all CPUs).
pub static TIMER_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// Interrupts: only the Count/Compare timer (IP7) is ever unmasked. It is
/// acknowledged and re-armed and the kernel's tick handler run; anything
/// else is a bug. A tick that arrives in idle between enabling interrupts
/// and the `wait` skips the `wait` (see [`cpu::idle_wait`]).
fn interrupt(frame: &mut TrapFrame, from_user: bool) {
    let pending = (frame.cause >> cause::IP_SHIFT) & (frame.status >> 8) & 0xff;
    if pending & 0x80 != 0 {
        // Relaxed: a statistic; nothing is published through it.
        TIMER_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
        let Some(kernel_tick) = timer::ack() else {
            // Not started on this CPU (a stray enable): push it away.
            cp0::set_compare(cp0::count().wrapping_sub(1));
            return;
        };
        if !from_user && cpu::in_relax() {
            // A kernel spin loop yielding the emulator (`cpu::relax_wait`):
            // acknowledged above; nothing else may run here.
            cpu::skip_wait(&mut frame.epc);
            return;
        }
        let from = if from_user {
            TickFrom::User
        } else if cpu::in_idle() {
            cpu::skip_wait(&mut frame.epc);
            TickFrom::Idle
        } else {
            TickFrom::Kernel
        };
        if let Some(h) = HANDLERS.get() {
            (h.tick)(frame, from);
            return;
        }
        #[cfg(samara_tasks)]
        {
            // No IPIs: every timer interrupt is also the "IPI" that makes
            // this CPU service the kernel's cross-CPU requests.
            crate::hooks::ipi();
            if kernel_tick && from != TickFrom::Kernel {
                crate::hooks::tick(from == TickFrom::User);
            }
        }
        #[cfg(not(samara_tasks))]
        let _ = kernel_tick;
        return;
    }
    dump(frame);
    panic!("unexpected interrupt, IP {:#04x}", pending);
}
