//! `faultstorm`: T threads each map a private region and touch every page
//! (R rounds of map, touch, unmap), while one more thread maps and unmaps
//! unrelated regions in a loop, changing the VMA tree (and taking the mmap
//! write lock) under the faulting threads' feet. Then, with every other
//! thread gone, two single-threaded loops: `mmap-loop` maps and unmaps an
//! untouched region, `fork-loop` forks a child that exits at once and waits
//! for it. The work and the timed regions are those of the Linux anchor
//! (tests/linux-anchor), so that `cargo xtask bench` compares like with like.
//!
//! Arguments: `samara_abi::faultstorm::Args` packed in `arg0`/`arg1`:
//! threads (0: one per CPU), pages per region (0: 256), rounds (0: 4),
//! mmap-loop ops (0: [`DEFAULT_MMAP_OPS`]), fork-loop ops (0:
//! [`DEFAULT_FORK_OPS`]).
//!
//! Prints the fault rate, the per-VMA lock counters and the share of faults
//! handled without the mmap lock, and three machine-readable lines
//! (BENCHMARKS.md, "In-guest lines"):
//!
//! ```text
//! faultstorm: threads=T pages=P rounds=R faults=F ns=N faults_per_sec=X
//!   vma_success=.. vma_abort=.. vma_retry=.. vma_miss=.. mmap_locked=..
//!   lockless_permille=.. cycles_per_fault=.. mapper_ops=.. touch_cycles=..
//! mmap-loop: ops=N pages=4 cycles=C ns=T
//! fork-loop: ops=N pages=64 cycles=C ns=T
//! ```
//!
//! A kernel built with `count-shared-writes` also puts `atomic_rmw=
//! atomic_stores= shared_writes= shared_lines=` on the `faultstorm:` line:
//! mm's `linecount` totals over the page faults from the program's start
//! (it resets them while it is the only thread) to the storm's end, that
//! is the storm's faults and the few before it.
//!
//! Cycles are [`samara_user::cycles`]: the TSC on x86_64, CP0 Count on
//! MIPS64, the counter of the kernel's `cycles_per_fault`.
//! `touch_cycles` is the time the faulting threads spend in their write
//! loops (one word per page of a fresh mapping: one fault each), summed
//! over threads and rounds; mapping, the read-back check and unmapping are
//! outside it. A loop's `cycles` and `ns` span all its ops.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use samara_user::abi::faultstorm::{Args, FORK_LOOP_PAGES, MMAP_LOOP_PAGES};
use samara_user::abi::stats_flags::RESET_LINECOUNT;
use samara_user::{cycles, cycles_between, fork, mmap_anon, munmap, println, spawn, wait};
use samara_user::{Stopwatch, PAGE};

samara_user::entry!(main);

static STOP: AtomicBool = AtomicBool::new(false);
static MAPPER_OPS: AtomicU64 = AtomicU64::new(0);
static PAGES: AtomicU64 = AtomicU64::new(0);
static ROUNDS: AtomicU64 = AtomicU64::new(0);
/// Counter ticks the workers spent in their write loops, all rounds.
static TOUCH_CYCLES: AtomicU64 = AtomicU64::new(0);

/// `mmap-loop` ops when the command line gives no `mmap_ops=`: few, so
/// that `cargo xtask test`'s runs under TCG stay short (about 20-40 us an
/// op there, on either architecture); `cargo xtask bench` passes the
/// anchor's count.
const DEFAULT_MMAP_OPS: u64 = 1000;
/// `fork-loop` ops when the command line gives no `fork_ops=` (as above;
/// about 1 ms an op under TCG).
const DEFAULT_FORK_OPS: u64 = 20;

/// A faulting thread: returns the number of pages it touched, or
/// `u64::MAX` after a failed system call.
extern "C" fn worker(id: u64) -> u64 {
    let pages = PAGES.load(Ordering::Relaxed);
    let len = pages * PAGE;
    let mut touched = 0;
    let mut touch_cycles = 0;
    for round in 0..ROUNDS.load(Ordering::Relaxed) {
        let Ok(base) = mmap_anon(len) else {
            println!("faultstorm: worker {id}: mmap failed in round {round}");
            return u64::MAX;
        };
        // The timed write loop (one region is far shorter than a wrap of
        // MIPS's 32-bit Count).
        let c0 = cycles();
        for i in 0..pages {
            let p = (base + i * PAGE) as *mut u64;
            // SAFETY: `p` lies in the private mapping this thread just made.
            unsafe { p.write_volatile(id << 32 | i) };
        }
        touch_cycles += cycles_between(c0, cycles());
        touched += pages;
        // Read back one word per page: the pages stayed ours.
        for i in (0..pages).step_by(97) {
            let p = (base + i * PAGE) as *const u64;
            // SAFETY: as above.
            let v = unsafe { p.read_volatile() };
            if v != id << 32 | i {
                println!("faultstorm: worker {id}: page {i} holds {v:#x}");
                return u64::MAX;
            }
        }
        if munmap(base, len).is_err() {
            println!("faultstorm: worker {id}: munmap failed");
            return u64::MAX;
        }
    }
    // Relaxed: main reads the sum only after joining every worker, and the
    // kernel's thread exit and join order this add before the join returns.
    TOUCH_CYCLES.fetch_add(touch_cycles, Ordering::Relaxed);
    touched
}

/// The disturber: maps, touches and unmaps small unrelated regions until
/// told to stop.
extern "C" fn mapper(_: u64) -> u64 {
    while !STOP.load(Ordering::Relaxed) {
        let Ok(a) = mmap_anon(8 * PAGE) else {
            return u64::MAX;
        };
        // SAFETY: the first page of the mapping just made.
        unsafe { (a as *mut u64).write_volatile(1) };
        if munmap(a, 8 * PAGE).is_err() {
            return u64::MAX;
        }
        MAPPER_OPS.fetch_add(1, Ordering::Relaxed);
    }
    0
}

/// `mmap-loop`: maps and unmaps an untouched [`MMAP_LOOP_PAGES`]-page
/// region `ops` times.
fn mmap_loop(ops: u64) -> Result<(), &'static str> {
    let len = MMAP_LOOP_PAGES * PAGE;
    let t0 = samara_user::clock_ns();
    let mut sw = Stopwatch::start();
    for _ in 0..ops {
        let a = mmap_anon(len).map_err(|_| "mmap failed")?;
        munmap(a, len).map_err(|_| "munmap failed")?;
        sw.keep_up();
    }
    let cycles = sw.elapsed();
    let ns = samara_user::clock_ns() - t0;
    println!("mmap-loop: ops={ops} pages={MMAP_LOOP_PAGES} cycles={cycles} ns={ns}");
    Ok(())
}

/// `fork-loop`: with [`FORK_LOOP_PAGES`] pages written, forks a child that
/// exits at once and waits for it, `ops` times; then checks that the pages
/// still hold what was written (every fork write-protected them for copy
/// on write, every child's exit dropped its share).
fn fork_loop(ops: u64) -> Result<(), &'static str> {
    let len = FORK_LOOP_PAGES * PAGE;
    let mem = mmap_anon(len).map_err(|_| "mmap failed")?;
    let word = |i: u64| (mem + i * PAGE) as *mut u64;
    for i in 0..FORK_LOOP_PAGES {
        // SAFETY: page `i` of the private mapping just made.
        unsafe { word(i).write_volatile(0xf0 << 32 | i) };
    }
    let t0 = samara_user::clock_ns();
    let mut sw = Stopwatch::start();
    for _ in 0..ops {
        match fork() {
            Ok(0) => samara_user::exit(0),
            Ok(pid) => match wait(pid) {
                Ok((p, 0)) if p == pid => {}
                Ok((_, status)) => {
                    println!("fork-loop: child {pid} exited with {status}");
                    return Err("a child failed");
                }
                Err(_) => return Err("wait failed"),
            },
            Err(_) => return Err("fork failed"),
        }
        sw.keep_up();
    }
    let cycles = sw.elapsed();
    let ns = samara_user::clock_ns() - t0;
    for i in 0..FORK_LOOP_PAGES {
        // SAFETY: as above; the mapping is still ours.
        let v = unsafe { word(i).read_volatile() };
        if v != 0xf0 << 32 | i {
            println!("fork-loop: page {i} holds {v:#x} after the forks");
            return Err("the parent's pages changed");
        }
    }
    munmap(mem, len).map_err(|_| "munmap failed")?;
    println!("fork-loop: ops={ops} pages={FORK_LOOP_PAGES} cycles={cycles} ns={ns}");
    Ok(())
}

fn main(arg0: u64, arg1: u64) -> u64 {
    // The only thread of the only user process: no page fault is in
    // flight, so the shared-cache-line counts start clean here
    // (`count-shared-writes` kernels; a no-op on others).
    let s0 = samara_user::stats_with(RESET_LINECOUNT);
    let args = Args::decode([arg0, arg1]);
    let or = |v: u32, default: u64| if v == 0 { default } else { u64::from(v) };
    let threads = or(args.threads, s0.cpus.max(1)).min(64);
    let pages = or(args.pages, 256);
    let rounds = or(args.rounds, 4);
    let mmap_ops = or(args.mmap_ops, DEFAULT_MMAP_OPS);
    let fork_ops = or(args.fork_ops, DEFAULT_FORK_OPS);
    PAGES.store(pages, Ordering::Relaxed);
    ROUNDS.store(rounds, Ordering::Relaxed);
    println!(
        "faultstorm: {threads} faulting thread(s) x {rounds} round(s) x {pages} pages, one mapper thread, {} CPU(s), per-VMA locking {}; then {mmap_ops} mmap+munmap and {fork_ops} fork+exit+wait",
        s0.cpus,
        if s0.per_vma_lock == 1 { "on" } else { "off" }
    );
    let Ok(m) = spawn(mapper, 0, 64 * 1024) else {
        println!("faultstorm: cannot start the mapper thread");
        return 1;
    };
    let t0 = samara_user::clock_ns();
    let s1 = samara_user::stats();
    let mut workers = [const { None }; 64];
    for (i, w) in workers.iter_mut().enumerate().take(threads as usize) {
        match spawn(worker, i as u64, 64 * 1024) {
            Ok(t) => *w = Some(t),
            Err(e) => {
                println!("faultstorm: cannot start worker {i}: {}", e.name());
                return 1;
            }
        }
    }
    let mut failed = false;
    let mut touched = 0;
    for w in workers.iter_mut().filter_map(Option::take) {
        match w.join() {
            Ok(u64::MAX) | Err(_) => failed = true,
            Ok(n) => touched += n,
        }
    }
    let t1 = samara_user::clock_ns();
    let s2 = samara_user::stats();
    STOP.store(true, Ordering::Relaxed);
    if m.join() != Ok(0) {
        failed = true;
    }
    let ns = (t1 - t0).max(1);
    let faults = s2.faults - s1.faults;
    let success = s2.vma_lock_success - s1.vma_lock_success;
    let lockless = success * 1000 / faults.max(1);
    let fcycles = s2.fault_cycles - s1.fault_cycles;
    let fcount = (s2.fault_cycles_count - s1.fault_cycles_count).max(1);
    let rate = faults * 1_000_000_000 / ns;
    // Every worker is joined (see the add in `worker`).
    let touch_cycles = TOUCH_CYCLES.load(Ordering::Relaxed);
    println!(
        "faultstorm: {faults} faults in {}.{:03} ms: {rate} faults/s; {} pages touched, {} cycles per page in the write loops; {} cycles per fault (trap to return)",
        ns / 1_000_000,
        ns / 1000 % 1000,
        touched,
        touch_cycles / touched.max(1),
        fcycles / fcount
    );
    println!(
        "faultstorm: VMA_LOCK_SUCCESS {success}, ABORT {}, RETRY {}, MISS {}; faults under the mmap lock {}; {}.{}% without the mmap lock",
        s2.vma_lock_abort - s1.vma_lock_abort,
        s2.vma_lock_retry - s1.vma_lock_retry,
        s2.vma_lock_miss - s1.vma_lock_miss,
        s2.mmap_lock_faults - s1.mmap_lock_faults,
        lockless / 10,
        lockless % 10
    );
    // One write call for the whole line (no other thread prints now).
    let mut line = samara_user::Out::default();
    let _ = write!(
        line,
        "faultstorm: threads={threads} pages={pages} rounds={rounds} faults={faults} ns={ns} faults_per_sec={rate} vma_success={success} vma_abort={} vma_retry={} vma_miss={} mmap_locked={} lockless_permille={lockless} cycles_per_fault={} mapper_ops={} touch_cycles={touch_cycles}",
        s2.vma_lock_abort - s1.vma_lock_abort,
        s2.vma_lock_retry - s1.vma_lock_retry,
        s2.vma_lock_miss - s1.vma_lock_miss,
        s2.mmap_lock_faults - s1.mmap_lock_faults,
        fcycles / fcount,
        MAPPER_OPS.load(Ordering::Relaxed)
    );
    if s2.linecount == 1 {
        // Counted since the reset at the start of `main`: the storm's
        // faults and the few before it (this program's first pages, the
        // mapper's rounds before the clock started).
        let _ = write!(
            line,
            " atomic_rmw={} atomic_stores={} shared_writes={} shared_lines={}",
            s2.line_rmw, s2.line_stores, s2.line_shared_writes, s2.line_shared_lines
        );
    }
    let _ = writeln!(line);
    line.flush();
    if touched != threads * pages * rounds {
        println!(
            "faultstorm: touched {touched} pages, expected {}",
            threads * pages * rounds
        );
        failed = true;
    }
    if failed {
        return 1;
    }
    // Every other thread is gone: the loops run alone, as the anchor's do.
    if let Err(e) = mmap_loop(mmap_ops) {
        println!("faultstorm: mmap-loop: {e}");
        return 1;
    }
    if let Err(e) = fork_loop(fork_ops) {
        println!("faultstorm: fork-loop: {e}");
        return 1;
    }
    0
}
