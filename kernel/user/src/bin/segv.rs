//! `segv`: children that read an unmapped address, write a read-only page,
//! execute a non-executable page (where the MMU can forbid it: see
//! `Stats::exec_protection`), and fault in one thread while another runs;
//! the kernel must kill each (reporting the fault) and keep going. The
//! parent checks their statuses and that bad system-call arguments come
//! back as errors.
#![no_std]
#![no_main]

use samara_user::abi::{self, map, prot, status, Errno};
use samara_user::{fork, mmap, mmap_anon, println, spawn, syscall, wait, PAGE};

samara_user::entry!(main);

/// Runs `f` in a child and returns its exit status.
fn in_child(f: fn()) -> u64 {
    match fork() {
        Ok(0) => {
            f();
            samara_user::exit(0)
        }
        Ok(pid) => match wait(pid) {
            Ok((p, st)) if p == pid => st,
            r => {
                println!("segv: wait({pid}) gave {r:?}");
                u64::MAX
            }
        },
        Err(e) => {
            println!("segv: fork failed: {}", e.name());
            u64::MAX
        }
    }
}

fn read_unmapped() {
    // SAFETY: none: the read is meant to fault (nothing is mapped at 64 KiB and below), and the kernel kills the process.
    let v = unsafe { (0x1000 as *const u64).read_volatile() };
    println!("segv: read of 0x1000 returned {v}");
}

fn write_read_only() {
    let p = mmap(0, PAGE, prot::READ, map::PRIVATE | map::ANONYMOUS).expect("mmap");
    // SAFETY: none: the page is read-only, so the write faults.
    unsafe { (p as *mut u64).write_volatile(1) };
    println!("segv: write to a read-only page succeeded");
}

/// A function that returns at once, as machine code.
#[cfg(target_arch = "x86_64")]
const RETURN: &[u8] = &[0xc3]; // ret
#[cfg(target_arch = "mips64")]
const RETURN: &[u8] = &[0x03, 0xe0, 0x00, 0x08, 0, 0, 0, 0]; // jr ra; nop

fn exec_data() {
    let p = mmap_anon(PAGE).expect("mmap");
    for (i, b) in RETURN.iter().enumerate() {
        // SAFETY: the page is ours and writable.
        unsafe { (p as *mut u8).add(i).write_volatile(*b) };
    }
    // SAFETY: none where the MMU enforces PROT_EXEC: the page is not executable, so the call faults. Elsewhere it returns at once.
    let f: extern "C" fn() = unsafe { core::mem::transmute(p as usize) };
    f();
    println!("segv: executing a data page returned");
}

extern "C" fn spin(_: u64) -> u64 {
    loop {
        samara_user::yield_now();
    }
}

fn fault_with_a_sibling_thread() {
    // The sibling never exits by itself: killing the process must end it.
    let _t = spawn(spin, 0, 16 * 1024).expect("spawn");
    read_unmapped();
}

fn main(_: u64, _: u64) -> u64 {
    let mut failures = 0;
    // (what, case, whether it faults only where PROT_EXEC is enforced)
    let cases: [(&str, fn(), bool); 4] = [
        ("read of an unmapped address", read_unmapped, false),
        ("write to a read-only page", write_read_only, false),
        ("execution of a data page", exec_data, true),
        (
            "fault with a sibling thread running",
            fault_with_a_sibling_thread,
            false,
        ),
    ];
    let exec_protection = samara_user::stats().exec_protection != 0;
    for (what, f, needs_exec_protection) in cases {
        let st = in_child(f);
        if needs_exec_protection && !exec_protection {
            // This MMU cannot forbid execution: the data page must simply
            // run (and return), not crash or hang.
            if st == 0 {
                println!("segv: {what}: ran, as expected on an MMU without execute protection");
            } else {
                println!("segv: FAILED: {what}: child exited with {st}, expected 0");
                failures += 1;
            }
        } else if st == status::SEGV {
            println!("segv: {what}: child killed with SEGV as expected");
        } else {
            println!("segv: FAILED: {what}: child exited with {st}");
            failures += 1;
        }
    }
    let errs: [(&str, Result<u64, Errno>, Errno); 6] = [
        (
            "mmap of length 0",
            mmap(0, 0, prot::READ, map::PRIVATE | map::ANONYMOUS),
            Errno::Inval,
        ),
        (
            "mmap without SHARED or PRIVATE",
            mmap(0, PAGE, prot::READ, map::ANONYMOUS),
            Errno::Inval,
        ),
        (
            "mmap FIXED at an unaligned address",
            mmap(
                0x40_0123,
                PAGE,
                prot::READ,
                map::PRIVATE | map::ANONYMOUS | map::FIXED,
            ),
            Errno::Inval,
        ),
        (
            "munmap of an unaligned address",
            samara_user::munmap(0x40_0123, PAGE),
            Errno::Inval,
        ),
        (
            "write from a kernel address",
            syscall(abi::SYS_WRITE, [0xffff_ffff_8000_0000, 8, 0, 0, 0, 0]),
            Errno::Fault,
        ),
        (
            "wait with a bad status pointer",
            {
                match fork() {
                    Ok(0) => samara_user::exit(0),
                    Ok(pid) => {
                        let r = syscall(abi::SYS_WAIT, [pid, 0x10, 0, 0, 0, 0]);
                        // Reap it for real if the bad pointer was refused first.
                        let _ = wait(pid);
                        r
                    }
                    Err(e) => Err(e),
                }
            },
            Errno::Fault,
        ),
    ];
    for (what, got, want) in errs {
        if got != Err(want) {
            println!(
                "segv: FAILED: {what}: got {got:?}, expected {}",
                want.name()
            );
            failures += 1;
        }
    }
    if failures == 0 {
        println!("segv: all checks passed");
    }
    failures
}
