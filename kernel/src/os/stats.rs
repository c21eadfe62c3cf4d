//! The system-wide counters: the `stats` system call and the workload
//! summaries read them.

use core::sync::atomic::Ordering;

use samara_abi::Stats;

use super::{mem, sched};

/// A snapshot of every counter.
pub fn collect() -> Stats {
    let fa = mem::fa().stats();
    let ncpu = arch::smp::cpu_count();
    let mut s = Stats {
        size: core::mem::size_of::<Stats>() as u64,
        frames_free: fa.free_pages,
        frames_total: fa.managed_pages,
        rcu_grace_periods: mem::rcu().stats().grace_periods,
        cpus: ncpu as u64,
        per_vma_lock: u64::from(super::per_vma_lock()),
        remote_flushes: mem::shootdown().stats().remote_flushes,
        cycles_per_second: arch::timer::cycles_per_second(),
        exec_protection: u64::from(arch::mmu::exec_protection()),
        ..Stats::default()
    };
    for c in (0..ncpu).map(sched::cpu) {
        s.ticks += c.ticks.load(Ordering::Relaxed);
        s.fault_cycles += c.fault_cycles.load(Ordering::Relaxed);
        s.fault_cycles_count += c.fault_count.load(Ordering::Relaxed);
    }
    let f = super::fault_counts();
    s.faults = f.faults;
    s.vma_lock_success = f.success;
    s.vma_lock_abort = f.abort;
    s.vma_lock_retry = f.retry;
    s.vma_lock_miss = f.miss;
    s.mmap_lock_faults = f.mmap_locked;
    s.vmas_live = f.vmas_live;
    #[cfg(feature = "count-shared-writes")]
    {
        let l = mm::linecount::summary();
        s.linecount = 1;
        s.line_rmw = l.rmw;
        s.line_stores = l.stores;
        s.line_shared_writes = l.shared_writes;
        s.line_shared_lines = l.shared_lines;
    }
    s
}

/// Clears the shared-cache-line counts (see `samara_abi::stats_flags`).
pub fn reset_linecount() {
    #[cfg(feature = "count-shared-writes")]
    mm::linecount::reset();
}

/// mm's `linecount` hook: the CPU whose writes are being counted. Every
/// CPU that runs mm code has its per-CPU state set up by the time the
/// kernel installs the hook ([`install_linecount_hook`]).
#[cfg(feature = "count-shared-writes")]
fn linecount_cpu() -> Option<mm::cpu::CpuId> {
    Some(super::cpu_id())
}

/// Starts counting shared-cache-line writes (instrumented builds; a no-op
/// otherwise). Called once every CPU is online: the hook reads the CPU
/// number from per-CPU state (GS on x86_64, KScratch on MIPS64), which a
/// CPU still coming up may not have yet.
pub fn install_linecount_hook() {
    #[cfg(feature = "count-shared-writes")]
    {
        mm::linecount::set_cpu_hook(linecount_cpu);
        mm::linecount::reset();
    }
}
