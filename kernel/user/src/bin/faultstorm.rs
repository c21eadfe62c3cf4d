//! `faultstorm`: T threads each map a private region and touch every page
//! (R rounds of map, touch, unmap), while one more thread maps and unmaps
//! unrelated regions in a loop, changing the VMA tree (and taking the mmap
//! write lock) under the faulting threads' feet.
//!
//! Arguments: `arg0` = threads (0: one per CPU), `arg1` = pages per region
//! (low 32 bits, 0: 256) and rounds (high 32 bits, 0: 4).
//!
//! Prints the fault rate, the per-VMA lock counters and the share of faults
//! handled without the mmap lock, and one machine-readable line:
//! `faultstorm: threads=T pages=P rounds=R faults=F ns=N faults_per_sec=X
//!  vma_success=.. vma_abort=.. vma_retry=.. vma_miss=.. mmap_locked=..
//!  lockless_permille=.. cycles_per_fault=.. mapper_ops=..`
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use samara_user::{mmap_anon, munmap, println, spawn, PAGE};

samara_user::entry!(main);

static STOP: AtomicBool = AtomicBool::new(false);
static MAPPER_OPS: AtomicU64 = AtomicU64::new(0);
static PAGES: AtomicU64 = AtomicU64::new(0);
static ROUNDS: AtomicU64 = AtomicU64::new(0);

/// A faulting thread: returns the number of pages it touched, or
/// `u64::MAX` after a failed system call.
extern "C" fn worker(id: u64) -> u64 {
    let pages = PAGES.load(Ordering::Relaxed);
    let len = pages * PAGE;
    let mut touched = 0;
    for round in 0..ROUNDS.load(Ordering::Relaxed) {
        let Ok(base) = mmap_anon(len) else {
            println!("faultstorm: worker {id}: mmap failed in round {round}");
            return u64::MAX;
        };
        for i in 0..pages {
            let p = (base + i * PAGE) as *mut u64;
            // SAFETY: `p` lies in the private mapping this thread just made.
            unsafe { p.write_volatile(id << 32 | i) };
            touched += 1;
        }
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

fn main(arg0: u64, arg1: u64) -> u64 {
    let s0 = samara_user::stats();
    let threads = if arg0 == 0 { s0.cpus.max(1) } else { arg0 }.min(64);
    let pages = match arg1 & 0xffff_ffff {
        0 => 256,
        p => p,
    };
    let rounds = match arg1 >> 32 {
        0 => 4,
        r => r,
    };
    PAGES.store(pages, Ordering::Relaxed);
    ROUNDS.store(rounds, Ordering::Relaxed);
    println!(
        "faultstorm: {threads} faulting thread(s) x {rounds} round(s) x {pages} pages, one mapper thread, {} CPU(s), per-VMA locking {}",
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
    println!(
        "faultstorm: {faults} faults in {}.{:03} ms: {rate} faults/s; {} pages touched; {} cycles per fault (trap to return)",
        ns / 1_000_000,
        ns / 1000 % 1000,
        touched,
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
    println!(
        "faultstorm: threads={threads} pages={pages} rounds={rounds} faults={faults} ns={ns} faults_per_sec={rate} vma_success={success} vma_abort={} vma_retry={} vma_miss={} mmap_locked={} lockless_permille={lockless} cycles_per_fault={} mapper_ops={}",
        s2.vma_lock_abort - s1.vma_lock_abort,
        s2.vma_lock_retry - s1.vma_lock_retry,
        s2.vma_lock_miss - s1.vma_lock_miss,
        s2.mmap_lock_faults - s1.mmap_lock_faults,
        fcycles / fcount,
        MAPPER_OPS.load(Ordering::Relaxed)
    );
    if touched != threads * pages * rounds {
        println!(
            "faultstorm: touched {touched} pages, expected {}",
            threads * pages * rounds
        );
        failed = true;
    }
    u64::from(failed)
}
