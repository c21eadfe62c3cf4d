//! `forkbomb-lite`: in each round the parent maps private anonymous memory
//! and a shared anonymous page, fills them, and forks children that each
//! fork a grandchild; everyone writes to the private pages (copy on write),
//! checks that the other processes' writes stay invisible and the shared
//! page's stay visible, unmaps and exits. With per-VMA locking off this is
//! the pattern that crashed the reference design on an Octeon board (a
//! forked VMA's anon_vma chain head overwritten by a whole-object copy).
//!
//! Arguments: `arg0` = rounds (0: 8), `arg1` = children per round (0: 3).
#![no_std]
#![no_main]

use samara_user::abi::{map, prot, status};
use samara_user::{fork, mmap, mmap_anon, munmap, println, wait, PAGE};

samara_user::entry!(main);

const PAGES: u64 = 16;

fn fill(base: u64, tag: u64) {
    for i in 0..PAGES {
        // SAFETY: `base` is a private mapping of PAGES pages.
        unsafe { ((base + i * PAGE) as *mut u64).write_volatile(tag << 16 | i) };
    }
}

fn holds(base: u64, tag: u64) -> bool {
    (0..PAGES).all(|i| {
        // SAFETY: as in `fill`.
        let v = unsafe { ((base + i * PAGE) as *const u64).read_volatile() };
        v == tag << 16 | i
    })
}

/// A child or grandchild: check the inherited contents, write its own (COW),
/// check again, bump the shared counter, unmap, exit.
fn child(region: u64, shared: u64, parent_tag: u64, tag: u64) -> ! {
    if !holds(region, parent_tag) {
        println!(
            "forkbomb: pid {} did not inherit the parent's pages",
            samara_user::getpid()
        );
        samara_user::exit(2);
    }
    fill(region, tag);
    if !holds(region, tag) {
        samara_user::exit(3);
    }
    let counter = shared as *const core::sync::atomic::AtomicU64;
    // SAFETY: `shared` is a shared anonymous page mapped before the fork.
    unsafe { (*counter).fetch_add(1, core::sync::atomic::Ordering::Relaxed) };
    if munmap(region, PAGES * PAGE).is_err() {
        samara_user::exit(4);
    }
    samara_user::exit(0)
}

fn main(arg0: u64, arg1: u64) -> u64 {
    let rounds = if arg0 == 0 { 8 } else { arg0 };
    let kids = if arg1 == 0 { 3 } else { arg1.min(16) };
    println!("forkbomb: {rounds} round(s) of {kids} child(ren), each forking a grandchild");
    let mut forks = 0;
    for round in 0..rounds {
        let Ok(region) = mmap_anon(PAGES * PAGE) else {
            println!("forkbomb: mmap failed");
            return 1;
        };
        let Ok(shared) = mmap(
            0,
            PAGE,
            prot::READ | prot::WRITE,
            map::SHARED | map::ANONYMOUS,
        ) else {
            println!("forkbomb: shared mmap failed");
            return 1;
        };
        let base_tag = round * 100 + 1;
        fill(region, base_tag);
        for k in 0..kids {
            match fork() {
                Ok(0) => {
                    // A child: fork a grandchild first, so that three
                    // generations share the pages.
                    let my_tag = base_tag + 10 + k;
                    match fork() {
                        Ok(0) => child(region, shared, base_tag, my_tag + 50),
                        Ok(g) => {
                            let r = wait(g);
                            if r != Ok((g, 0)) {
                                println!("forkbomb: grandchild {g}: {r:?}");
                                samara_user::exit(5);
                            }
                            child(region, shared, base_tag, my_tag)
                        }
                        Err(e) => {
                            println!("forkbomb: fork in child failed: {}", e.name());
                            samara_user::exit(6)
                        }
                    }
                }
                Ok(_) => forks += 2,
                Err(e) => {
                    println!("forkbomb: fork failed: {}", e.name());
                    return 1;
                }
            }
        }
        // The parent writes too while the children run (COW the other way).
        fill(region, base_tag + 1);
        let mut bad = 0;
        for _ in 0..kids {
            match wait(0) {
                Ok((_, 0)) => {}
                Ok((pid, st)) => {
                    println!(
                        "forkbomb: child {pid} exited with {st}{}",
                        if st == status::SEGV {
                            " (segfault)"
                        } else {
                            ""
                        }
                    );
                    bad += 1;
                }
                Err(e) => {
                    println!("forkbomb: wait failed: {}", e.name());
                    return 1;
                }
            }
        }
        let counter = shared as *const core::sync::atomic::AtomicU64;
        // SAFETY: the shared page is still mapped here.
        let seen = unsafe { (*counter).load(core::sync::atomic::Ordering::Relaxed) };
        if bad != 0 || !holds(region, base_tag + 1) || seen != 2 * kids {
            println!("forkbomb: round {round}: {bad} bad child(ren), shared counter {seen} (expected {})", 2 * kids);
            return 1;
        }
        if munmap(region, PAGES * PAGE).is_err() || munmap(shared, PAGE).is_err() {
            return 1;
        }
    }
    println!("forkbomb: {forks} processes forked, all exited cleanly");
    0
}
