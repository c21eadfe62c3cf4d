//! `tlb-shootdown`: checks that no CPU keeps using a translation after the
//! mapping behind it was replaced, write-protected, or shared copy-on-write.
//!
//! In each case a writer thread stores an increasing counter into page P
//! and publishes it in page Q, in a loop, while the main thread (on another
//! CPU when there is one) changes P's mapping and then waits for the
//! writer to make a thousand more stores:
//!
//! * **replace** — `mmap(MAP_FIXED)` puts a fresh zero page at P. The
//!   writer's later stores must land in it: if its CPU kept the old
//!   translation they go to the freed frame and the new page stays 0.
//! * **mprotect** — P becomes read-only. The writer's next store must fault
//!   and the kernel must kill the process (status SEGV); a CPU with the old
//!   writable translation keeps storing and the main thread sees P move.
//!   Runs in a child process so that the kill is observable.
//! * **fork** — the child's view of P must not change after the fork: a
//!   writer CPU whose writable translation survived the parent's
//!   write-protection would store into the frame the child shares.
//!
//! Each check runs `arg0` times (0: 20).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use samara_user::abi::{map, prot, status};
use samara_user::{fork, mmap, mmap_anon, mprotect, println, spawn, wait, PAGE};

samara_user::entry!(main);

static P: AtomicU64 = AtomicU64::new(0);
static Q: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn p() -> *mut u64 {
    P.load(Ordering::Relaxed) as *mut u64
}

fn q() -> &'static AtomicU64 {
    // SAFETY: Q holds the address of a private page mapped for the whole run and used only as an atomic counter.
    unsafe { &*(Q.load(Ordering::Relaxed) as *const AtomicU64) }
}

/// Stores 1, 2, 3, ... into P, publishing each in Q after the store.
extern "C" fn writer(_: u64) -> u64 {
    let mut i = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        i += 1;
        // SAFETY: P is mapped (or, in the mprotect check, the store faults and the kernel kills the process, which is the point).
        unsafe { p().write_volatile(i) };
        q().store(i, Ordering::Release);
    }
    0
}

/// Waits until the writer has published `n` more stores after `from`.
fn wait_past(from: u64, n: u64) -> u64 {
    loop {
        let v = q().load(Ordering::Acquire);
        if v >= from + n {
            return v;
        }
        core::hint::spin_loop();
    }
}

fn read_p() -> u64 {
    // SAFETY: P is mapped readable in every check when this runs.
    unsafe { p().read_volatile() }
}

fn start_writer() -> Option<samara_user::Thread> {
    STOP.store(false, Ordering::Relaxed);
    let t = spawn(writer, 0, 16 * 1024).ok()?;
    wait_past(q().load(Ordering::Acquire), 100);
    Some(t)
}

fn stop_writer(t: samara_user::Thread) {
    STOP.store(true, Ordering::Relaxed);
    let _ = t.join();
}

fn check_replace() -> Result<(), &'static str> {
    let w = start_writer().ok_or("cannot start the writer")?;
    let r = mmap(
        P.load(Ordering::Relaxed),
        PAGE,
        prot::READ | prot::WRITE,
        map::PRIVATE | map::ANONYMOUS | map::FIXED,
    );
    let at = q().load(Ordering::Acquire);
    wait_past(at, 1000);
    let seen = read_p();
    stop_writer(w);
    if r.is_err() {
        return Err("mmap(MAP_FIXED) failed");
    }
    if seen <= at {
        return Err("stores after the replacement did not reach the new page");
    }
    Ok(())
}

/// In a child: the writer must be killed by the write protection.
fn mprotect_child() -> ! {
    let Some(_w) = start_writer() else {
        samara_user::exit(2)
    };
    if mprotect(P.load(Ordering::Relaxed), PAGE, prot::READ).is_err() {
        samara_user::exit(3);
    }
    let at = read_p();
    // If stores go on after mprotect returned, some CPU kept a writable
    // translation. A store already under way when mprotect flushed may
    // land (`at + 1`); nothing after it may. The writer's vCPU may be
    // descheduled by the host for a while: wait up to a second.
    let end = samara_user::clock_ns() + 1_000_000_000;
    while samara_user::clock_ns() < end {
        samara_user::yield_now();
        if read_p() > at + 1 {
            samara_user::exit(1);
        }
    }
    // Not killed and no stores: the writer stalled somehow.
    samara_user::exit(4)
}

fn check_mprotect() -> Result<(), &'static str> {
    match fork() {
        Ok(0) => mprotect_child(),
        Ok(pid) => match wait(pid) {
            Ok((_, s)) if s == status::SEGV => Ok(()),
            Ok((_, 1)) => Err("stores went on after mprotect(PROT_READ) returned"),
            Ok(_) => Err("the child neither faulted nor saw stores"),
            Err(_) => Err("wait failed"),
        },
        Err(_) => Err("fork failed"),
    }
}

fn check_fork() -> Result<(), &'static str> {
    let w = start_writer().ok_or("cannot start the writer")?;
    let r = match fork() {
        Ok(0) => {
            // The child: P is its private copy; nothing may store into it.
            let first = read_p();
            let end = samara_user::clock_ns() + 20_000_000;
            while samara_user::clock_ns() < end {
                samara_user::yield_now();
            }
            samara_user::exit(u64::from(read_p() != first))
        }
        Ok(pid) => {
            wait_past(q().load(Ordering::Acquire), 1000);
            wait(pid)
        }
        Err(_) => {
            stop_writer(w);
            return Err("fork failed");
        }
    };
    stop_writer(w);
    match r {
        Ok((_, 0)) => Ok(()),
        Ok((_, 1)) => Err("the child's copy changed after the fork"),
        _ => Err("the child failed"),
    }
}

/// One check: `Err` says what went wrong.
type Check = fn() -> Result<(), &'static str>;

fn main(arg0: u64, _: u64) -> u64 {
    let rounds = if arg0 == 0 { 20 } else { arg0 };
    let (Ok(pp), Ok(qq)) = (mmap_anon(PAGE), mmap_anon(PAGE)) else {
        println!("tlbcheck: mmap failed");
        return 1;
    };
    P.store(pp, Ordering::Relaxed);
    Q.store(qq, Ordering::Relaxed);
    let checks: [(&str, Check); 3] = [
        ("replace", check_replace),
        ("mprotect", check_mprotect),
        ("fork", check_fork),
    ];
    let cpus = samara_user::stats().cpus;
    for (name, f) in checks {
        for round in 0..rounds {
            if let Err(e) = f() {
                println!("tlbcheck: FAILED: {name}, round {round}: {e}");
                return 1;
            }
        }
        println!("tlbcheck: {name}: {rounds} rounds on {cpus} CPU(s), no stale translation used");
    }
    let s = samara_user::stats();
    println!(
        "tlbcheck: all checks passed ({} remote TLB shootdowns so far)",
        s.remote_flushes
    );
    0
}
