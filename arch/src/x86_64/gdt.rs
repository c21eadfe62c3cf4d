//! The long-mode GDT and the TSS with its interrupt stacks (IST).
//!
//! Exceptions that can arrive with a stack we must not trust run on their
//! own IST stack, so the CPU never pushes a frame below the interrupted
//! RSP: double fault (the stack may be what overflowed), NMI and machine
//! check (they can hit anywhere, including the first instruction of a
//! handler before it has switched stacks), and page fault (a kernel stack
//! overflow into a guard page faults on that very stack).
//!
//! IST stacks are re-entered from the top on every exception that uses
//! them, so a nested exception of the same vector overwrites the outer
//! frame. Nested page faults would do that; today a kernel page fault is
//! fatal and its handler only decodes registers, so it cannot fault again.
//! When issue 6 adds fixable faults from user mode, #PF moves back to the
//! normal kernel stack (entry from user switches via TSS.RSP0 anyway).

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slots (1-based in the IDT gate, 0-based in the TSS array).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;
pub const IST_PAGE_FAULT: u8 = 4;

const IST_STACK_SIZE: usize = 16 * 1024;
const IST_STACKS: usize = 4;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

/// Only the CPU writes these (through TSS.IST); Rust never references them.
static mut IST_STACK_MEM: [IstStack; IST_STACKS] =
    [const { IstStack([0; IST_STACK_SIZE]) }; IST_STACKS];

struct Selectors {
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

/// The kernel code selector, for IDT gates.
pub fn kernel_code_selector() -> u16 {
    GDT.get().map_or(0x08, |(_, s)| s.code.0)
}

/// Builds and loads the GDT and TSS, reloads the segment registers. Boot CPU,
/// once, before [`super::trap::init`].
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let base = core::ptr::addr_of_mut!(IST_STACK_MEM) as u64;
        // The TSS is packed: copy the array out, fill it, write it back.
        let mut ist = tss.interrupt_stack_table;
        for (i, slot) in ist.iter_mut().take(IST_STACKS).enumerate() {
            // Stacks grow down: the IST entry is the top of stack `i`.
            *slot = VirtAddr::new(base + ((i + 1) * IST_STACK_SIZE) as u64);
        }
        tss.interrupt_stack_table = ist;
        tss
    });
    let (gdt, sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        (gdt, Selectors { code, data, tss })
    });
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which
    // lives in a static for the kernel's lifetime; the code descriptor is a
    // 64-bit ring-0 segment so execution continues unchanged, and the TSS
    // descriptor is an available 64-bit TSS whose IST stacks are static.
    unsafe {
        CS::set_reg(sel.code);
        SS::set_reg(sel.data);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        load_tss(sel.tss);
    }
}
