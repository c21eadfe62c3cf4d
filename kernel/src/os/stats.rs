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
    s
}
