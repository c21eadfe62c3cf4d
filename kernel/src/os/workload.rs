//! What the `init` kernel thread runs: an integration-test scenario that
//! needs the scheduler (`test=smp`, `test=user`) or a workload
//! (`workload=...`), then the checks and the closing lines.
//!
//! A workload ends with one machine-readable line,
//!
//! ```text
//! samara: summary: workload=NAME status=S cpus=N per_vma_lock=on|off
//!   faults=.. vma_lock_success=.. vma_lock_abort=.. vma_lock_retry=..
//!   vma_lock_miss=.. mmap_locked_faults=.. frames_free_before=..
//!   frames_free_after=.. vmas_live=.. rcu_grace_periods=..
//!   remote_flushes=.. cycles_per_fault=.. cycles_per_second=..
//!   elapsed_ms=.. checks=pass|fail
//! ```
//!
//! (one line), then `samara: result: ...`; the run passes only if the
//! program exited with 0, every process was reaped, and the free-frame and
//! live-VMA counts came back to their values before the workload.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use arch::ExitStatus;
use boot::options::{Options, Scenario, Workload};
use samara_abi::Stats;
use spin::Once;

use super::process::{self, Process};
use super::sched::{self, Task, DEAD};
use super::{loader, mem, stats};

/// What `init` runs.
#[derive(Debug, Clone, Copy)]
pub enum Run {
    Scenario(Scenario),
    Workload(Workload),
}

static WHAT: Once<(Options, Run)> = Once::new();

/// Starts the `init` kernel thread.
pub fn start_init(opts: Options, run: Run) {
    WHAT.call_once(|| (opts, run));
    let t = Task::new_kernel("init", init_main, 0).expect("init thread");
    sched::enqueue(t);
}

extern "C" fn init_main(_: usize) -> ! {
    let (opts, run) = *WHAT.get().expect("init without a job");
    match run {
        Run::Scenario(Scenario::Smp) => smp_test(),
        Run::Scenario(Scenario::User) => user_test(),
        Run::Scenario(s) => crate::finish(
            ExitStatus::Failure,
            format_args!("test {}: not a scheduler scenario", s.name()),
        ),
        Run::Workload(w) => run_workload(w, &opts),
    }
}

use sched::sleep_ns;

/// Ends the calling kernel thread.
fn exit_kernel_thread() -> ! {
    sched::current().set_state(DEAD);
    sched::schedule();
    unreachable!("a dead kernel thread ran again");
}

static SEEN_CPUS: AtomicU64 = AtomicU64::new(0);
static WORKERS_DONE: AtomicU64 = AtomicU64::new(0);

extern "C" fn spinner(_: usize) -> ! {
    for _ in 0..200 {
        SEEN_CPUS.fetch_or(1 << super::cpu_id(), Ordering::Relaxed);
        let end = arch::timer::now_ns() + 100_000;
        while arch::timer::now_ns() < end {
            core::hint::spin_loop();
        }
        sched::yield_now();
    }
    WORKERS_DONE.fetch_add(1, Ordering::Release);
    exit_kernel_thread()
}

/// The RCU check of `test=smp`: a callback queued while every other CPU
/// idles must run within a second, without anyone spinning for it.
static RCU_HEAD: mm::rcu::RcuHead = mm::rcu::RcuHead::new();
static RCU_RAN: AtomicU64 = AtomicU64::new(0);

unsafe fn rcu_callback(_: core::ptr::NonNull<mm::rcu::RcuHead>) {
    RCU_RAN.fetch_add(1, Ordering::Release);
}

fn rcu_idle_check(round: u64) -> Result<(), u64> {
    // SAFETY: the static head lives forever and is queued again only after its callback ran (checked below); the callback touches only a static.
    unsafe {
        mem::rcu().call(
            super::cpu_id(),
            core::ptr::NonNull::from(&RCU_HEAD),
            rcu_callback,
        )
    };
    let end = arch::timer::now_ns() + 1_000_000_000;
    // Acquire pairs with the callback's Release.
    while RCU_RAN.load(Ordering::Acquire) < round {
        if arch::timer::now_ns() > end {
            return Err(mem::rcu().stats().grace_periods);
        }
        sleep_ns(10_000_000);
    }
    Ok(())
}

fn fail(what: &str, args: core::fmt::Arguments<'_>) -> ! {
    crate::finish(ExitStatus::Failure, format_args!("{what}: {args}"))
}

/// `test=smp`: every CPU ticks, answers an IPI, runs kernel threads, and
/// RCU grace periods complete.
fn smp_test() -> ! {
    let n = arch::smp::cpu_count();
    let online = (0..n)
        .filter(|&c| sched::cpu(c).online.load(Ordering::Acquire))
        .count();
    println!("test smp: {online} of {n} CPU(s) online");
    if online != n {
        fail(
            "test smp",
            format_args!("only {online} of {n} CPUs came online"),
        );
    }
    let gp0 = mem::rcu().stats().grace_periods;
    sleep_ns(300_000_000);
    for c in 0..n {
        if sched::cpu(c).ticks.load(Ordering::Relaxed) == 0 {
            fail("test smp", format_args!("CPU {c} never ticked"));
        }
    }
    let me = super::cpu_id();
    for c in (0..n).filter(|&c| c != me) {
        let before = sched::cpu(c).ipis.load(Ordering::Relaxed);
        arch::mmu::kick(1 << c);
        let end = arch::timer::now_ns() + 1_000_000_000;
        while sched::cpu(c).ipis.load(Ordering::Relaxed) == before {
            if arch::timer::now_ns() > end {
                fail("test smp", format_args!("CPU {c} did not answer an IPI"));
            }
            core::hint::spin_loop();
        }
    }
    for round in 1..=3 {
        if let Err(gp) = rcu_idle_check(round) {
            fail(
                "test smp",
                format_args!("an RCU callback did not run within a second (round {round}, {gp} grace periods)"),
            );
        }
    }
    let threads = 2 * n as u64;
    for i in 0..threads {
        let t = Task::new_kernel("spinner", spinner, i as usize).expect("spinner");
        sched::enqueue(t);
    }
    let end = arch::timer::now_ns() + 20_000_000_000;
    while WORKERS_DONE.load(Ordering::Acquire) < threads {
        if arch::timer::now_ns() > end {
            fail(
                "test smp",
                format_args!(
                    "kernel threads did not finish: {} of {threads} done, ran on {:#x}",
                    WORKERS_DONE.load(Ordering::Relaxed),
                    SEEN_CPUS.load(Ordering::Relaxed)
                ),
            );
        }
        sleep_ns(1_000_000);
    }
    let seen = SEEN_CPUS.load(Ordering::Relaxed).count_ones() as usize;
    let gps = mem::rcu().stats().grace_periods - gp0;
    println!("test smp: {threads} kernel threads ran on {seen} CPU(s); {gps} RCU grace periods completed");
    if n > 1 && seen < 2 {
        fail(
            "test smp",
            format_args!("kernel threads ran on {seen} CPU only"),
        );
    }
    if gps < 3 {
        fail(
            "test smp",
            format_args!("only {gps} RCU grace periods completed"),
        );
    }
    crate::finish(
        ExitStatus::Success,
        format_args!("test smp: {n} CPUs online, ticking, answering IPIs, {gps} RCU grace periods"),
    )
}

/// Runs every queued RCU callback, returns the caches' empty pages (which
/// goes through RCU again for the type-safe caches), runs those callbacks
/// too; returns the free-frame count then. The workloads measure "before"
/// and "after" in this state.
fn quiesce() -> u64 {
    sched::with_rcu(|r| r.barrier());
    super::shrink_caches();
    sched::with_rcu(|r| r.barrier());
    mem::fa().stats().free_pages
}

/// Waits for the memory every exited process used to come back: RCU
/// callbacks run, caches shrunk, dead tasks' stacks freed (a CPU frees the
/// last task it left only when it next switches). Returns the free-frame
/// count then (or the last one seen, after a second). The caller has
/// waited for every process to be reaped and dropped its own references.
fn settle(before_free: u64) -> u64 {
    let end = arch::timer::now_ns() + 1_000_000_000;
    loop {
        let free = quiesce();
        if free == before_free || arch::timer::now_ns() > end {
            return free;
        }
        sleep_ns(1_000_000);
    }
}

/// `test=user`: several `hello` processes on all CPUs.
fn user_test() -> ! {
    let before = quiesce();
    let heap0 = super::heap::HEAP.frames_held();
    let n = 2 * arch::smp::cpu_count() as u64;
    let mut procs: Vec<Arc<Process>> = Vec::new();
    for i in 0..n {
        match loader::spawn("hello", [i, 0]) {
            Ok(p) => procs.push(p),
            Err(e) => fail("test user", format_args!("cannot start hello: {e}")),
        }
    }
    process::wait_all_gone();
    let bad: Vec<(u64, Option<u64>)> = procs
        .iter()
        .map(|p| (p.pid, p.exit_status()))
        .filter(|&(_, s)| s != Some(0))
        .collect();
    drop(procs);
    let after = settle(before);
    if !bad.is_empty() {
        fail(
            "test user",
            format_args!("processes failed: {bad:?} (pid, status)"),
        );
    }
    if after != before {
        fail(
            "test user",
            format_args!(
                "frames free {after} after, {before} before: leaked {} (heap holds {heap0} -> {} frames; {})",
                before as i64 - after as i64,
                super::heap::HEAP.frames_held(),
                super::MmObjects::now()
            ),
        );
    }
    crate::finish(
        ExitStatus::Success,
        format_args!(
            "test user: {n} user processes ran and exited with 0; frames free back at {before}"
        ),
    )
}

/// The program and arguments of a workload.
fn program(w: Workload, o: &Options) -> Result<(&'static str, [u64; 2]), &'static str> {
    let t = u64::from(o.threads.unwrap_or(0));
    let rounds = u64::from(o.rounds.unwrap_or(0));
    Ok(match w {
        Workload::None => ("", [0, 0]),
        Workload::Hello => ("hello", [0, 0]),
        Workload::Faultstorm => {
            let args = samara_abi::faultstorm::Args {
                threads: o.threads.unwrap_or(0),
                pages: o.pages.unwrap_or(0),
                rounds: o.rounds.unwrap_or(0),
                mmap_ops: o.mmap_ops.unwrap_or(0),
                fork_ops: o.fork_ops.unwrap_or(0),
            };
            // The options' ranges are within the encoding's (checked at
            // compile time below), so this fails only if they drift apart.
            let words = args
                .encode()
                .ok_or("a faultstorm parameter exceeds what its argument words carry")?;
            ("faultstorm", words)
        }
        Workload::ForkbombLite => ("forkbomb", [rounds, t]),
        Workload::Segv => ("segv", [0, 0]),
        Workload::TlbShootdown => ("tlbcheck", [rounds, 0]),
    })
}

// Every value the command line accepts survives `faultstorm`'s packing.
const _: () = {
    use samara_abi::faultstorm as fs;
    assert!(boot::options::MAX_THREADS <= fs::MAX_THREADS);
    assert!(boot::options::MAX_PAGES <= fs::MAX_PAGES);
    assert!(boot::options::MAX_ROUNDS <= fs::MAX_ROUNDS);
    assert!(boot::options::MAX_MMAP_OPS <= fs::MAX_MMAP_OPS);
    assert!(boot::options::MAX_FORK_OPS <= fs::MAX_FORK_OPS);
};

fn run_workload(w: Workload, o: &Options) -> ! {
    let (name, args) = match program(w, o) {
        Ok(p) => p,
        Err(e) => fail("workload", format_args!("{}: {e}", w.name())),
    };
    if name.is_empty() {
        crate::finish(
            ExitStatus::Success,
            format_args!("workload none: nothing to run"),
        );
    }
    if loader::image(name).is_none() {
        let mut have = alloc::string::String::new();
        for p in loader::programs() {
            have.push_str(p);
            have.push(' ');
        }
        fail(
            "workload",
            format_args!("this kernel has no user program `{name}` (embedded: {have})"),
        );
    }
    quiesce();
    let s0: Stats = stats::collect();
    let heap0 = super::heap::HEAP.frames_held();
    let t0 = arch::timer::now_ns();
    let p = match loader::spawn(name, args) {
        Ok(p) => p,
        Err(e) => fail("workload", format_args!("cannot start {name}: {e}")),
    };
    process::wait_all_gone();
    let elapsed = arch::timer::now_ns() - t0;
    let status = p.exit_status();
    drop(p);
    let free_after = settle(s0.frames_free);
    let s1 = stats::collect();
    let faults = s1.faults - s0.faults;
    let cpf = (s1.fault_cycles - s0.fault_cycles)
        / (s1.fault_cycles_count - s0.fault_cycles_count).max(1);
    let checks = status == Some(0) && free_after == s0.frames_free && s1.vmas_live == s0.vmas_live;
    println!(
        "samara: summary: workload={} status={} cpus={} per_vma_lock={} faults={faults} vma_lock_success={} vma_lock_abort={} vma_lock_retry={} vma_lock_miss={} mmap_locked_faults={} frames_free_before={} frames_free_after={free_after} vmas_live={} rcu_grace_periods={} remote_flushes={} cycles_per_fault={cpf} cycles_per_second={} elapsed_ms={} checks={}",
        w.name(),
        status.map_or(-1, |s| s as i64),
        s1.cpus,
        if super::per_vma_lock() { "on" } else { "off" },
        s1.vma_lock_success - s0.vma_lock_success,
        s1.vma_lock_abort - s0.vma_lock_abort,
        s1.vma_lock_retry - s0.vma_lock_retry,
        s1.vma_lock_miss - s0.vma_lock_miss,
        s1.mmap_lock_faults - s0.mmap_lock_faults,
        s0.frames_free,
        s1.vmas_live,
        s1.rcu_grace_periods - s0.rcu_grace_periods,
        s1.remote_flushes - s0.remote_flushes,
        s1.cycles_per_second,
        elapsed / 1_000_000,
        if checks { "pass" } else { "fail" }
    );
    if checks {
        crate::finish(
            ExitStatus::Success,
            format_args!("workload {}: exited 0, no frame or VMA leaked", w.name()),
        )
    }
    fail(
        "workload",
        format_args!(
            "{}: status {:?}, frames free {} -> {free_after}, VMAs live {} -> {}, heap frames {heap0} -> {}",
            w.name(),
            status,
            s0.frames_free,
            s0.vmas_live,
            s1.vmas_live,
            super::heap::HEAP.frames_held()
        ),
    )
}
