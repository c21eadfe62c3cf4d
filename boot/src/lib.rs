//! Boot protocols and the boot information they produce.
//!
//! Every boot path (PVH on x86_64, the Malta pseudo-bootloader's argv/env on
//! MIPS64, the Octeon boot descriptor on real boards) is parsed here into one
//! [`BootInfo`]. The parsers are plain, host-tested Rust over byte slices; the
//! arch layer only hands them the raw pointers it received.
#![cfg_attr(not(test), no_std)]

pub mod acpi;
pub mod cmdline;
pub mod elf;
pub mod malta;
pub mod memmap;
pub mod octeon;
pub mod options;
pub mod phys;
pub mod pvh;

pub use cmdline::CmdLine;
pub use memmap::{MemoryMap, Region, RegionKind};

/// Everything the kernel learns from its boot loader, in one arch-neutral form.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// Physical memory, sorted and non-overlapping.
    pub memory: MemoryMap,
    /// The kernel command line, copied out of boot-loader memory.
    pub cmdline: CmdLine,
    /// Name of the platform ("qemu-pvh", "malta", "octeon").
    pub platform: &'static str,
    /// Number of CPUs the boot protocol reports (1 if it does not say; on
    /// x86_64 the arch layer sets it from the ACPI MADT).
    pub cpu_count: u32,
    /// Physical address of the ACPI RSDP if the boot loader passed one
    /// (PVH `rsdp_paddr`), else 0.
    pub acpi_rsdp: u64,
}
