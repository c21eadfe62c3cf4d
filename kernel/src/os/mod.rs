//! The operating system around `mm`: memory set-up, CPUs, the scheduler,
//! processes, system calls, the user-program loader and the workloads.
//!
//! Built for architectures whose port implements the task contract
//! (`cfg(samara_tasks)`, see `arch/src/lib.rs`).
//!
//! # Boot
//!
//! On the boot CPU, [`start`]: the frame allocator, RCU and shootdown state
//! ([`mem`]), the heap (usable from then on), the relax hook, this CPU's idle
//! task and RCU handle, the other CPUs ([`secondary_main`] on each), every
//! CPU's tick, then the `init` kernel thread that runs the scenario or
//! workload ([`workload`]); the boot CPU becomes idle.
//!
//! # The interrupt rule
//!
//! Kernel code runs with interrupts disabled; they are enabled only in user
//! mode and in the idle loop's halt (and inside `arch::irq::relax`'s halt in
//! a spin loop, where the arch handler only acknowledges them and calls no
//! kernel entry point). So `mm`'s spin locks need not be
//! interrupt-safe, nothing in the kernel is preempted, and preemption
//! happens only on a tick that interrupted user mode. RCU quiescent states
//! are reported on every tick from user mode, on every context switch, in
//! idle (extended quiescent state around the halt, plus a report at each
//! wake-up) and on every return to user mode; grace periods therefore
//! advance on an idle system and under load.

pub mod heap;
mod hooks;
mod loader;
pub mod mem;
mod process;
mod sched;
mod stats;
mod syscall;
mod tlb;
mod umem;
mod workload;

use core::sync::atomic::Ordering;

use boot::options::Options;
use boot::BootInfo;

pub use workload::Run;

/// This CPU's logical number (0 before the arch sets up per-CPU data).
#[inline(always)]
pub fn cpu_id() -> usize {
    arch::smp::this_cpu()
}

/// Whether the fault path uses per-VMA locks now.
pub fn per_vma_lock() -> bool {
    mem::ctx().per_vma_lock()
}

/// The fault counters.
pub struct FaultCounts {
    pub faults: u64,
    pub success: u64,
    pub abort: u64,
    pub retry: u64,
    pub miss: u64,
    pub mmap_locked: u64,
    pub vmas_live: u64,
}

/// Counts a page fault from user mode on this CPU.
pub fn count_fault() {
    sched::this().faults.fetch_add(1, Ordering::Relaxed);
}

pub fn fault_counts() -> FaultCounts {
    let faults = (0..arch::smp::cpu_count())
        .map(|c| sched::cpu(c).faults.load(Ordering::Relaxed))
        .sum();
    let c = mem::ctx().fault_counts();
    FaultCounts {
        faults,
        success: c.success,
        abort: c.abort,
        retry: c.retry,
        miss: c.miss,
        mmap_locked: c.mmap_locked,
        vmas_live: mem::ctx().vmas_live(),
    }
}

/// Brings the system up and runs `run` in the `init` kernel thread.
pub fn start(info: &'static BootInfo, opts: Options, per_vma_lock: bool, run: Run) -> ! {
    let ncpu = arch::smp::cpu_count();
    if let Err(e) = mem::init(info, ncpu, per_vma_lock) {
        crate::finish(
            arch::ExitStatus::Failure,
            format_args!("cannot set up memory: {e}"),
        );
    }
    mm::sync::set_relax_hook(tlb::spin_hook);
    sched::init_cpu(0);
    let started = arch::smp::start_secondaries();
    // Wait until every started CPU has its idle task.
    while (0..started).any(|c| !sched::cpu(c).online.load(Ordering::Acquire)) {
        core::hint::spin_loop();
    }
    println!(
        "  cpus:         {started} online; {}",
        arch::mmu::describe()
    );
    stats::install_linecount_hook();
    arch::timer::start_tick(sched::HZ);
    workload::start_init(opts, run);
    sched::idle_loop()
}

/// A secondary CPU, after its arch set-up.
pub fn secondary_main(cpu: usize) -> ! {
    sched::init_cpu(cpu);
    arch::timer::start_tick(sched::HZ);
    sched::idle_loop()
}

/// Returns the address-space caches' empty pages to the frame allocator
/// (through RCU where the cache demands it; the heap frees its pages
/// eagerly).
pub fn shrink_caches() {
    mem::ctx().shrink(cpu_id());
}

/// What the address-space layer still holds, for leak reports.
pub struct MmObjects {
    mms: u64,
    vmas: u64,
    anon: (u64, u64, u64),
}

impl MmObjects {
    pub fn now() -> MmObjects {
        let c = mem::ctx();
        MmObjects {
            mms: c.mms_live(),
            vmas: c.vmas_live(),
            anon: c.anon_objects_live(),
        }
    }
}

impl core::fmt::Display for MmObjects {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} address spaces, {} VMAs, {} anon_vmas, {} anon_vma chains, {} shared objects live",
            self.mms, self.vmas, self.anon.0, self.anon.1, self.anon.2
        )
    }
}
