//! x86_64: PVH entry, GDT/TSS/IDT, COM1 console, isa-debug-exit, physmap.
//!
//! Boot flow: QEMU jumps to `pvh_start32` ([`boot`]) in 32-bit protected mode
//! with paging off; the stub builds the boot page tables, enters long mode and
//! jumps to the higher-half kernel, which runs [`boot::x86_64_start`]: console,
//! GDT/TSS and per-CPU area, IDT, CPU features and syscall MSRs, drop the
//! identity map, PCIDs, parse the PVH start info, extend the physmap over
//! all RAM, LAPIC, the CPU list from ACPI, timer calibration, then
//! `samara_main`. The kernel starts the other CPUs later
//! ([`smp::start_secondaries`]), which repeat the per-CPU part.

pub mod apic;
pub mod boot;
pub mod console;
pub mod cpu;
pub mod exit;
mod gdt;
pub mod irq;
pub mod mmu;
mod msr;
pub mod paging;
mod percpu;
pub mod smp;
mod syscall;
pub mod task;
pub mod timer;
mod trap;

/// The architecture's name as the banner prints it.
pub const NAME: &str = "x86_64";
