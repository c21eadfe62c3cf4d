//! x86_64: PVH entry, GDT/TSS/IDT, COM1 console, isa-debug-exit, physmap.
//!
//! Boot flow: QEMU jumps to `pvh_start32` ([`boot`]) in 32-bit protected mode
//! with paging off; the stub builds the boot page tables, enters long mode and
//! jumps to the higher-half kernel, which runs [`boot::x86_64_start`]: console,
//! GDT/TSS, IDT, drop the identity map, parse the PVH start info, extend the
//! physmap over all RAM, then `samara_main`.

pub mod boot;
pub mod console;
pub mod cpu;
pub mod exit;
mod gdt;
pub mod paging;
mod trap;

/// The architecture's name as the banner prints it.
pub const NAME: &str = "x86_64";
