//! The smallest program: prints, yields, checks that bad arguments come
//! back as errors, and exits with 0 when every check held (`test=user`).
#![no_std]
#![no_main]

use samara_user::abi::{self, Errno};
use samara_user::{println, syscall};

samara_user::entry!(main);

fn check(what: &str, ok: bool, failures: &mut u64) {
    if !ok {
        println!("hello: FAILED: {what}");
        *failures += 1;
    }
}

fn main(arg0: u64, _arg1: u64) -> u64 {
    let pid = samara_user::getpid();
    println!(
        "hello from user mode: pid {pid}, tid {}, arg {arg0}",
        samara_user::gettid()
    );
    let mut failures = 0;
    for _ in 0..3 {
        samara_user::yield_now();
    }
    // Pointers the kernel must refuse without touching them.
    check(
        "write of an unmapped buffer is EFAULT",
        syscall(abi::SYS_WRITE, [0x1000, 16, 0, 0, 0, 0]) == Err(Errno::Fault),
        &mut failures,
    );
    check(
        "write of a kernel address is EFAULT",
        syscall(abi::SYS_WRITE, [0xffff_8000_0000_0000, 16, 0, 0, 0, 0]) == Err(Errno::Fault),
        &mut failures,
    );
    check(
        "write of a wrapping range is EFAULT",
        syscall(abi::SYS_WRITE, [u64::MAX - 3, 16, 0, 0, 0, 0]) == Err(Errno::Fault),
        &mut failures,
    );
    check(
        "stats into an unmapped buffer is EFAULT",
        syscall(abi::SYS_STATS, [0x2000, 64, 0, 0, 0, 0]) == Err(Errno::Fault),
        &mut failures,
    );
    check(
        "an unknown call is ENOSYS",
        syscall(999, [0; 6]) == Err(Errno::NoSys),
        &mut failures,
    );
    check(
        "joining a thread that does not exist is ESRCH",
        samara_user::thread_join(12345) == Err(Errno::Srch),
        &mut failures,
    );
    check(
        "waiting without children is ECHILD",
        samara_user::wait(0) == Err(Errno::Child),
        &mut failures,
    );
    let s = samara_user::stats();
    check(
        "stats reports its size and the CPUs",
        s.size == core::mem::size_of::<abi::Stats>() as u64 && s.cpus >= 1,
        &mut failures,
    );
    let t0 = samara_user::clock_ns();
    samara_user::yield_now();
    check(
        "the clock moves forward",
        samara_user::clock_ns() >= t0,
        &mut failures,
    );
    if failures == 0 {
        println!("hello: all checks passed on {} CPU(s)", s.cpus);
    }
    failures
}
