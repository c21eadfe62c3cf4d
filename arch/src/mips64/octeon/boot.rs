//! Octeon: from `_start` to `samara_main` on the boot core: TLB, the boot
//! descriptor, bootinfo and bootmem free list parsed by `boot::octeon` into
//! a `BootInfo`, the parked cores of the core mask, then
//! [`crate::enter_kernel`].

use boot::octeon::{self, EntryRegs, DDR0_SIZE, DDR1_BASE, DDR1_SIZE, DDR2_BASE, DDR2_SIZE};
use boot::phys::BootMemory;
use boot::BootInfo;
use spin::Once;

use crate::imp::console::{self, arch_println};
use crate::imp::cp0;
use crate::imp::paging::{self, XKPHYS_CACHED};
use crate::imp::{exit, smp};
use crate::ExitStatus;

/// Physical memory read through XKPHYS (unmapped, cached, coherent). Only
/// the largest possible DRAM windows are readable, so not even a parser bug
/// could make it touch the I/O hole or CSR space; within them,
/// `boot::octeon` checks every address against the board's real DRAM size
/// before reading it.
struct Xkphys;

impl BootMemory for Xkphys {
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
        let Some(end) = phys.checked_add(buf.len() as u64) else {
            return false;
        };
        let windows = [
            (0, DDR0_SIZE),
            (DDR1_BASE, DDR1_BASE + DDR1_SIZE),
            (DDR2_BASE, DDR2_BASE + DDR2_SIZE),
        ];
        if !windows.iter().any(|&(s, e)| s <= phys && end <= e) {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `phys + i` lies in an Octeon DRAM window (checked above) and, per the parser's checks, inside the DRAM the boot loader reported; XKPHYS is unmapped (Status.KX is set), so the read cannot take a TLB exception, and reading RAM has no side effects.
            *b = unsafe {
                core::ptr::read_volatile((XKPHYS_CACHED | (phys + i as u64)) as *const u8)
            };
        }
        true
    }
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Count ticks the boot core waits for the other cores of the core mask to
/// park (about 1 s at a 1 GHz core clock; Count runs at the core clock on
/// cnMIPS). U-Boot starts them before it jumps to the boot core.
const PARK_WAIT_LIMIT: u64 = 1 << 30;

/// Called by `_start` on the boot core (a2 != 0) with U-Boot's a0..a3, on
/// the boot stack, BSS clear, kernel vectors installed, interrupts off.
#[unsafe(no_mangle)]
extern "C" fn samara_mips_boot(a0: u64, a1: u64, a2: u64, a3: u64) -> ! {
    console::init();
    if let Err(e) = crate::imp::init_cpu() {
        arch_println!("\nmips64: this CPU's MMU cannot run Samara: {e}");
        arch_println!("samara: result: fail: unsupported MMU");
        exit::exit_qemu(ExitStatus::Failure);
    }
    let kernel = paging::kernel_phys_extent();
    let boot_core = cp0::cpu_num();
    let regs = EntryRegs { a0, a1, a2, a3 };
    let (info, oct) = match octeon::parse(&Xkphys, &regs, kernel, boot_core) {
        Ok(parsed) => parsed,
        Err(e) => {
            arch_println!("\nmips64: bad Octeon boot data: {e}");
            arch_println!("  a0 {a0:#x} a1 {a1:#x} a2 {a2:#x} a3 {a3:#x}");
            arch_println!("samara: result: fail: bad boot data");
            exit::exit_qemu(ExitStatus::Failure);
        }
    };
    arch_println!();
    crate::write_display(console::write_bytes, &oct);
    let others = oct.core_mask.low64() & !1u64.checked_shl(boot_core).unwrap_or(0);
    let parked = smp::wait_for(others, PARK_WAIT_LIMIT);
    if parked & others != others {
        arch_println!(
            "octeon: cores {:#x} of the core mask did not reach the kernel",
            others & !parked
        );
    }
    if parked & !others != 0 {
        arch_println!(
            "octeon: cores {:#x} entered the kernel without being in the core mask",
            parked & !others
        );
    }
    smp::set_count_hz(u64::from(oct.eclock_hz));
    let cpus = smp::number_cpus(boot_core, parked);
    init_asids(cpus);
    crate::enter_kernel(BOOT_INFO.call_once(|| info))
}

/// Sizes the ASID tables for the CPUs found (`mmu::init`).
fn init_asids(cpus: usize) {
    if let Err(e) = crate::imp::mmu::init(cpus) {
        arch_println!("\nmips64: cannot set up ASIDs: {e}");
        arch_println!("samara: result: fail: unsupported MMU");
        exit::exit_qemu(ExitStatus::Failure);
    }
}
