//! Malta: from `_start` to `samara_main` on the boot CPU: console, TLB, CPU count,
//! and the Malta boot data parsed by `boot::malta` into a `BootInfo`, then
//! [`crate::enter_kernel`].

use boot::malta::{self, BootMemory, EntryRegs, LOW_RAM_MAX};
use boot::BootInfo;
use spin::Once;

use crate::imp::console::{self, arch_println};
use crate::imp::paging::{self, CKSEG0};
use crate::imp::{exit, smp, uhi};
use crate::ExitStatus;

/// Physical memory below `limit`, read through CKSEG0 (unmapped, so a read
/// can never take a TLB exception). Only the low RAM alias lies there.
struct LowRam {
    limit: u64,
}

impl BootMemory for LowRam {
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
        let Some(end) = phys.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > self.limit {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `phys + i < limit <= 256 MiB`, so the address is in CKSEG0's window onto low RAM, which Malta always populates up to `limit` (see `ram_limit`); reading RAM has no side effects.
            *b = unsafe { core::ptr::read_volatile((CKSEG0 + phys + i as u64) as *const u8) };
        }
        true
    }
}

/// How far the boot-data reader may look: a3 (the low RAM size the loader
/// reports) when it is plausible, else the 256 MiB low window. Reading past
/// real RAM there would raise a bus error, which the exception handler
/// reports; the parser never dereferences a pointer outside this bound.
fn ram_limit(a3: u64, kernel_end: u64) -> u64 {
    if a3 > kernel_end && a3 <= LOW_RAM_MAX {
        a3
    } else {
        LOW_RAM_MAX
    }
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Ticks the boot CPU waits for the parked set to stop changing, and at most
/// (about 3 ms and 26 ms at QEMU Malta's 160 MHz Count).
const CPU_COUNT_STABLE: u64 = 1 << 19;
const CPU_COUNT_LIMIT: u64 = 1 << 22;

/// Called by `_start` on the boot CPU with the boot loader's a0..a3, on the
/// boot stack, BSS clear, kernel vectors installed, interrupts off.
#[unsafe(no_mangle)]
extern "C" fn samara_mips_boot(a0: u64, a1: u64, a2: u64, a3: u64) -> ! {
    console::init();
    // a0 = -1 is QEMU's sign that a UHI host is present (-semihosting); only
    // then may `sdbbp` be used, to exit or to ask for the arguments.
    uhi::set_present(a0 as i64 == -1);
    if let Err(e) = crate::imp::init_cpu() {
        arch_println!("\nmips64: this CPU's MMU cannot run Samara: {e}");
        arch_println!("samara: result: fail: unsupported MMU");
        exit::exit_qemu(ExitStatus::Failure);
    }
    smp::count_cpus(CPU_COUNT_STABLE, CPU_COUNT_LIMIT);
    let cpus = smp::number_cpus(0, smp::present_mask()) as u32;
    init_asids(cpus as usize);
    let kernel = paging::kernel_phys_extent();
    let mem = LowRam {
        limit: ram_limit(a3, kernel.1),
    };
    let regs = EntryRegs { a0, a1, a2, a3 };
    let host = uhi::present().then_some(&uhi::Args as &dyn malta::HostArgs);
    let info = match malta::parse(&mem, host, &regs, kernel, cpus) {
        Ok(info) => info,
        Err(e) => {
            arch_println!("\nmips64: bad Malta boot data: {e}");
            arch_println!("  a0 {a0:#x} a1 {a1:#x} a2 {a2:#x} a3 {a3:#x}");
            arch_println!("samara: result: fail: bad boot data");
            exit::exit_qemu(ExitStatus::Failure);
        }
    };
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
