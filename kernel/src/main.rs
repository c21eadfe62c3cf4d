//! The Samara kernel: ties `boot`, `arch` and `mm` together.
//!
//! The arch entry code parses the boot protocol into a [`BootInfo`] and calls
//! [`samara_main`], which prints the banner, parses the command line strictly
//! ([`boot::options`]) and runs either an integration-test scenario
//! (`test=NAME`) or a workload. Every run ends through `arch::exit::exit_qemu`;
//! the last line printed before it starts with `samara: result:`, which
//! xtask shows as the run's summary.
#![no_std]
#![no_main]
#![cfg_attr(target_arch = "mips64", feature(asm_experimental_arch))]

#[cfg(samara_tasks)]
extern crate alloc;

#[macro_use]
mod console;
#[cfg(target_arch = "mips64")]
mod mips;
#[cfg(samara_tasks)]
mod os;

use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU64, Ordering};

use arch::{AccessKind, ExitStatus, FaultReport};
use boot::options::{Options, Scenario, Workload};
use boot::{BootInfo, RegionKind};

/// Whether per-VMA locking is compiled in (cargo feature `per-vma-lock`).
const PER_VMA_LOCK_BUILT: bool = cfg!(feature = "per-vma-lock");

/// Prints the closing line and ends the run.
pub fn finish(status: ExitStatus, args: fmt::Arguments<'_>) -> ! {
    let verdict = match status {
        ExitStatus::Success => "pass",
        ExitStatus::Failure => "fail",
    };
    println!("samara: result: {verdict}: {args}");
    arch::exit::exit_qemu(status)
}

/// Sizes as the banner prints them.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", b >> 30)
        } else if b >= 1 << 20 {
            write!(f, "{} MiB", b >> 20)
        } else {
            write!(f, "{} KiB", b >> 10)
        }
    }
}

fn banner(info: &BootInfo) {
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!();
    println!(
        "Samara {} ({}, {build} build)",
        env!("CARGO_PKG_VERSION"),
        arch::NAME
    );
    println!("  cpu:          {}", arch::cpu::description());
    println!(
        "  platform:     {}, {} CPU(s) reported",
        info.platform, info.cpu_count
    );
    let m = &info.memory;
    println!(
        "  memory:       {} usable, {} kernel, {} boot data, {} reserved, in {} regions",
        Size(m.total(RegionKind::Usable)),
        Size(m.total(RegionKind::Kernel)),
        Size(m.total(RegionKind::BootData)),
        Size(m.total(RegionKind::Reserved)),
        m.regions().len()
    );
    print!("{m}");
    println!("  cmdline:      \"{}\"", info.cmdline.as_str());
}

/// Entry from the arch layer on the boot CPU. Never returns: every path ends
/// the QEMU run with a status.
#[no_mangle]
pub extern "Rust" fn samara_main(info: &'static BootInfo) -> ! {
    banner(info);
    let opts = match Options::parse(&info.cmdline) {
        Ok(o) => o,
        Err(e) => finish(
            ExitStatus::Failure,
            format_args!("bad kernel command line: {e}"),
        ),
    };
    let per_vma_lock = match (PER_VMA_LOCK_BUILT, opts.per_vma_lock) {
        (false, Some(true)) => finish(
            ExitStatus::Failure,
            format_args!(
                "bad kernel command line: per_vma_lock=on, but this kernel was built without \
                 the per-vma-lock feature"
            ),
        ),
        (built, requested) => built && requested.unwrap_or(true),
    };
    println!(
        "  per-vma-lock: {}, {}",
        if PER_VMA_LOCK_BUILT {
            "compiled in"
        } else {
            "compiled out"
        },
        if per_vma_lock { "enabled" } else { "disabled" }
    );
    if cfg!(feature = "count-shared-writes") {
        println!("  linecount:    count-shared-writes build: mm atomics in page faults are counted (slower; not for timing)");
    }
    match opts.test {
        #[cfg(samara_tasks)]
        Some(s @ (Scenario::Smp | Scenario::User)) => {
            os::start(info, opts, per_vma_lock, os::Run::Scenario(s))
        }
        #[cfg(not(samara_tasks))]
        Some(s @ (Scenario::Smp | Scenario::User)) => finish(
            ExitStatus::Failure,
            format_args!(
                "test {}: this architecture has no scheduler or user mode yet",
                s.name()
            ),
        ),
        Some(Scenario::Boot) => {
            let checked = check_physmap(info);
            finish(
                ExitStatus::Success,
                format_args!(
                    "test boot: booted, {checked} usable regions reachable, exited cleanly"
                ),
            )
        }
        Some(Scenario::PageFault) => pagefault_scenario(),
        Some(Scenario::Panic) => {
            println!("test panic: panicking on purpose");
            panic!("deliberate panic (test=panic)");
        }
        #[cfg(target_arch = "mips64")]
        Some(Scenario::MipsUser) => mips::scenario_user(info),
        #[cfg(target_arch = "mips64")]
        Some(Scenario::MipsShootdown) => mips::scenario_shootdown(info),
        #[cfg(not(target_arch = "mips64"))]
        Some(s @ (Scenario::MipsUser | Scenario::MipsShootdown)) => finish(
            ExitStatus::Failure,
            format_args!("test={} runs on mips64 only", s.name()),
        ),
        None => match opts.workload {
            Workload::None => finish(
                ExitStatus::Success,
                format_args!("workload none: nothing to run"),
            ),
            #[cfg(samara_tasks)]
            w => os::start(info, opts, per_vma_lock, os::Run::Workload(w)),
            #[cfg(not(samara_tasks))]
            w => finish(
                ExitStatus::Failure,
                format_args!(
                    "workload {}: this architecture has no user mode yet",
                    w.name()
                ),
            ),
        },
    }
}

/// Writes and reads back the first and last word of every usable region
/// through `arch::paging::phys_to_virt`, proving the direct map covers all of
/// RAM. Returns the number of regions checked.
fn check_physmap(info: &BootInfo) -> usize {
    let mut checked = 0;
    for r in info
        .memory
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Usable)
    {
        for pa in [r.start, r.end - 8] {
            let p = arch::paging::phys_to_virt(pa) as *mut u64;
            let pattern = 0x5a5a_0000_0000_0000 | pa;
            // SAFETY: `pa` is 8-byte aligned (usable regions are page aligned) and lies in usable RAM that nothing owns yet (no allocator exists before this scenario), and the arch layer maps all RAM at phys_to_virt. The old value is restored.
            let ok = unsafe {
                let old = p.read_volatile();
                p.write_volatile(pattern);
                let back = p.read_volatile();
                p.write_volatile(old);
                back == pattern
            };
            if !ok {
                finish(
                    ExitStatus::Failure,
                    format_args!("test boot: physmap word at PA {pa:#x} does not hold data"),
                );
            }
        }
        checked += 1;
    }
    checked
}

/// The address `test=pagefault` reads, or 0 outside that scenario. Written
/// once before the faulting read and read by the fault hook on the same CPU,
/// so program order alone orders them; Relaxed is enough.
static EXPECTED_FAULT: AtomicU64 = AtomicU64::new(0);

fn pagefault_scenario() -> ! {
    let addr = arch::paging::UNMAPPED_KERNEL_ADDR;
    EXPECTED_FAULT.store(addr, Ordering::Relaxed);
    println!("test pagefault: reading unmapped kernel address {addr:#x}");
    // SAFETY: none: this read is meant to fault. The address is in a kernel range the arch layer guarantees is unmapped, so the CPU raises a page fault (TLB miss on MIPS) before any value is produced, and the fault hook below ends the run; the load never completes. Volatile keeps the compiler from dropping or reordering it.
    let value = unsafe { core::ptr::read_volatile(addr as *const u64) };
    finish(
        ExitStatus::Failure,
        format_args!("test pagefault: read of {addr:#x} returned {value:#x} without a fault"),
    )
}

/// Called by the arch layer with a decoded memory fault.
#[no_mangle]
pub extern "Rust" fn samara_kernel_fault(r: &FaultReport) -> ! {
    let mut w = console::emergency_writer();
    let _ = writeln!(
        w,
        "kernel fault: {:?} access to {:#x} at pc {:#x} ({}, {} mode, cause {:#x})",
        r.access,
        r.address,
        r.pc,
        if r.present {
            "protection violation"
        } else {
            "not present"
        },
        if r.user { "user" } else { "kernel" },
        r.raw
    );
    let expected = EXPECTED_FAULT.load(Ordering::Relaxed);
    if expected == 0 {
        finish(ExitStatus::Failure, format_args!("unexpected kernel fault"));
    }
    if r.address == expected && r.access == AccessKind::Read && !r.user && !r.present {
        finish(
            ExitStatus::Success,
            format_args!("test pagefault: caught not-present kernel read of {expected:#x}"),
        )
    }
    finish(
        ExitStatus::Failure,
        format_args!(
            "test pagefault: expected a not-present kernel read of {expected:#x}, decoded {:?} of {:#x} \
             (present {}, user {})",
            r.access, r.address, r.present, r.user
        ),
    )
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut w = console::emergency_writer();
    match info.location() {
        Some(l) => {
            let _ = writeln!(
                w,
                "\nkernel panicked at {}:{}:{}:\n{}",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            );
        }
        None => {
            let _ = writeln!(w, "\nkernel panicked:\n{}", info.message());
        }
    }
    let _ = writeln!(w, "samara: result: fail: kernel panic");
    arch::exit::exit_qemu(ExitStatus::Failure)
}
