//! Per-CPU GDT and TSS with their interrupt stacks (IST).
//!
//! Every CPU has its own [`CpuTables`]: a GDT (the TSS descriptor differs
//! per CPU, and `ltr` marks it busy in the table it lives in) and a TSS
//! whose `RSP0` is the current task's kernel stack (set on every switch to
//! a user task, see `task::set_kernel_stack`).
//!
//! Selector layout, dictated by `syscall`/`sysret` (STAR, see `syscall.rs`):
//!
//! | selector | descriptor |
//! | --- | --- |
//! | 0x08 | kernel code, 64-bit (STAR[47:32]; `syscall` loads CS = 0x08, SS = 0x10) |
//! | 0x10 | kernel data |
//! | 0x18 | null (would be 32-bit user code for a compat-mode `sysret`, never used) |
//! | 0x20 | user data, DPL 3 (`sysret` loads SS = STAR[63:48] + 8 = 0x23) |
//! | 0x28 | user code, 64-bit, DPL 3 (`sysret` loads CS = STAR[63:48] + 16 = 0x2b) |
//! | 0x30 | TSS (16 bytes) |
//!
//! Exceptions that can arrive with a stack we must not trust run on their
//! own IST stack, so the CPU never pushes a frame below the interrupted
//! RSP: double fault (the stack may be what overflowed), NMI and machine
//! check (they can hit anywhere). IST stacks are per CPU and re-entered from
//! the top, so nothing that can switch tasks may use them: page faults,
//! which the kernel resolves and which may kill (and so switch away from) a
//! task, run on the task's kernel stack (from user mode the CPU switches to
//! `RSP0`). A kernel stack overflow therefore ends in a double fault, which
//! is reported on its IST stack.

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use x86_64::instructions::tables::{lgdt, load_tss};
use x86_64::structures::gdt::SegmentSelector;
use x86_64::structures::DescriptorTablePointer;
use x86_64::{PrivilegeLevel, VirtAddr};

/// IST slots (1-based in the IDT gate, 0-based in the TSS array).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
/// STAR[63:48]: the base `sysret` adds 8 (SS) and 16 (CS) to, RPL 3.
pub const SYSRET_BASE: u16 = 0x18 | 3;
pub const USER_DS: u16 = 0x20 | 3;
pub const USER_CS: u16 = 0x28 | 3;
const TSS_SEL: u16 = 0x30;

pub const IST_STACK_SIZE: usize = 16 * 1024;
const IST_STACKS: usize = 3;

/// The 64-bit TSS (SDM vol. 3A, figure 8-11). Packed: the 64-bit fields
/// sit at offsets 4, 12, ... .
#[repr(C, packed(4))]
pub struct Tss {
    _reserved0: u32,
    /// RSP0..RSP2: stacks for privilege-level changes (only RSP0 is used).
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

const _: () = assert!(core::mem::size_of::<Tss>() == 104);

#[repr(C, align(16))]
pub struct IstStacks([[u8; IST_STACK_SIZE]; IST_STACKS]);

/// A CPU's descriptor tables and IST stacks.
#[repr(C, align(16))]
pub struct CpuTables {
    gdt: [u64; 8],
    tss: Tss,
    ist: IstStacks,
}

impl CpuTables {
    pub const fn new() -> Self {
        CpuTables {
            gdt: [0; 8],
            tss: Tss {
                _reserved0: 0,
                rsp: [0; 3],
                _reserved1: 0,
                ist: [0; 7],
                _reserved2: 0,
                _reserved3: 0,
                // No I/O permission bitmap: the base points past the limit.
                iomap_base: core::mem::size_of::<Tss>() as u16,
            },
            ist: IstStacks([[0; IST_STACK_SIZE]; IST_STACKS]),
        }
    }
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}

/// The boot CPU's tables (secondary CPUs allocate theirs, see `smp.rs`).
static mut BOOT_TABLES: CpuTables = CpuTables::new();

/// The boot CPU's tables, for [`load`].
pub fn boot_tables() -> *mut CpuTables {
    core::ptr::addr_of_mut!(BOOT_TABLES)
}

/// Fills `t` and loads it on this CPU: GDT, segment registers, TSS.
///
/// # Safety
/// `t` lives forever, belongs to this CPU alone, and is not in use yet;
/// interrupts are off.
pub unsafe fn load(t: *mut CpuTables) {
    // SAFETY: exclusive access per the contract.
    let t = unsafe { &mut *t };
    let ist_base = core::ptr::addr_of!(t.ist) as u64;
    let mut ist = [0u64; 7];
    for (i, slot) in ist.iter_mut().take(IST_STACKS).enumerate() {
        // Stacks grow down: the IST entry is the top of stack `i`.
        *slot = ist_base + ((i + 1) * IST_STACK_SIZE) as u64;
    }
    t.tss.ist = ist;
    // No I/O permission bitmap: the base points past the limit (a zeroed
    // TSS would put it at 0, inside the TSS, granting ports to user mode).
    t.tss.iomap_base = core::mem::size_of::<Tss>() as u16;
    let tss = core::ptr::addr_of!(t.tss) as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    t.gdt = [
        0,
        0x00af_9a00_0000_ffff, // 0x08 kernel code: P, DPL 0, code, L
        0x00cf_9200_0000_ffff, // 0x10 kernel data: P, DPL 0, data, writable
        0,                     // 0x18 unused (compat-mode sysret)
        0x00cf_f200_0000_ffff, // 0x20 user data: P, DPL 3
        0x00af_fa00_0000_ffff, // 0x28 user code: P, DPL 3, L
        // 0x30 TSS, low half: limit, base 0..24, type 9 (available 64-bit
        // TSS), P, base 24..32.
        (limit & 0xffff) | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | (((tss >> 24) & 0xff) << 56),
        // high half: base 32..64.
        tss >> 32,
    ];
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of_val(&t.gdt) - 1) as u16,
        base: VirtAddr::new(t.gdt.as_ptr() as u64),
    };
    // SAFETY: the GDT lives forever (caller's contract) and holds valid descriptors; CS is reloaded with the 64-bit kernel code segment at the same privilege, so execution continues unchanged; the data segments are flat; the TSS descriptor describes `t.tss`, available (not busy).
    unsafe {
        lgdt(&ptr);
        CS::set_reg(SegmentSelector::new(KERNEL_CS >> 3, PrivilegeLevel::Ring0));
        SS::set_reg(SegmentSelector::new(KERNEL_DS >> 3, PrivilegeLevel::Ring0));
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        load_tss(SegmentSelector(TSS_SEL));
    }
}

/// Sets `RSP0`, the stack an interrupt or exception from user mode lands
/// on, in the TSS of this CPU.
///
/// # Safety
/// `t` is this CPU's loaded tables; interrupts are off.
pub unsafe fn set_rsp0(t: *mut CpuTables, top: u64) {
    // SAFETY: per the contract nobody else touches this TSS; the field is packed, so it is written unaligned.
    unsafe { core::ptr::addr_of_mut!((*t).tss.rsp[0]).write_unaligned(top) };
}
