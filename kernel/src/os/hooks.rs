//! The kernel entry points the arch layer calls (see "Kernel entry points
//! the port calls" in `arch/src/lib.rs`). Each definition is checked
//! against the arch's type alias, so a signature drift is a compile error.

use core::fmt::Write;
use core::sync::atomic::Ordering;

use arch::task::UserFrame;
use arch::{AccessKind, UserTrap};
use samara_abi::status;

use super::umem::{Access, FaultError};
use super::{process, sched, syscall, tlb};

const _: arch::hooks::SecondaryMain = samara_secondary_main;
const _: arch::hooks::TaskStart = samara_task_start;
const _: arch::hooks::Syscall = samara_syscall;
const _: arch::hooks::UserTrapHook = samara_user_trap;
const _: arch::hooks::Tick = samara_tick;
const _: arch::hooks::Ipi = samara_ipi;
const _: arch::hooks::ExitToUser = samara_exit_to_user;

#[unsafe(no_mangle)]
pub extern "Rust" fn samara_secondary_main(cpu: usize) -> ! {
    super::secondary_main(cpu)
}

#[unsafe(no_mangle)]
pub extern "Rust" fn samara_task_start() {
    sched::finish_switch();
}

#[unsafe(no_mangle)]
pub extern "Rust" fn samara_syscall(frame: &mut UserFrame) {
    syscall::dispatch(frame);
}

#[unsafe(no_mangle)]
pub extern "Rust" fn samara_user_trap(frame: &mut UserFrame, trap: &UserTrap) {
    let start = arch::timer::cycles();
    let task = sched::current();
    let p = task
        .process
        .as_ref()
        .expect("a trap from user mode without a process");
    let (what, st) = match *trap {
        UserTrap::MemoryFault(r) => {
            let access = match r.access {
                AccessKind::Read => Access::Read,
                AccessKind::Write => Access::Write,
                AccessKind::Execute => Access::Exec,
            };
            super::count_fault();
            match p.mm.handle_fault(super::cpu_id(), r.address, access) {
                Ok(()) => {
                    sched::this().trap_start.set(start);
                    return;
                }
                Err(FaultError::Segv) => ("segfault", status::SEGV),
                Err(FaultError::OutOfMemory) => ("out of memory", status::OOM),
            }
        }
        UserTrap::Exception { name, .. } => (name, status::ILL),
    };
    let mut w = crate::console::lock();
    let _ = write!(
        w,
        "samara: task {} ({}) killed: {what}",
        task.tid,
        task.name.as_str()
    );
    let _ = match *trap {
        UserTrap::MemoryFault(r) => writeln!(
            w,
            " at {:#x} ({}), pc={:#x}",
            r.address,
            match r.access {
                AccessKind::Read => "read",
                AccessKind::Write => "write",
                AccessKind::Execute => "exec",
            },
            frame.pc(),
        ),
        UserTrap::Exception { code, pc, .. } => writeln!(w, " (exception {code}), pc={pc:#x}"),
    };
    drop(w);
    p.kill(st);
}

#[unsafe(no_mangle)]
pub extern "Rust" fn samara_tick(from_user: bool) {
    tlb::service();
    sched::tick(from_user);
}

#[unsafe(no_mangle)]
pub extern "Rust" fn samara_ipi() {
    sched::this().ipis.fetch_add(1, Ordering::Relaxed);
    tlb::service();
}

#[unsafe(no_mangle)]
pub extern "Rust" fn samara_exit_to_user(_frame: &mut UserFrame) {
    let c = sched::this();
    loop {
        let task = sched::current();
        if task.process.as_ref().is_some_and(|p| p.killed()) {
            c.trap_start.set(0);
            process::exit_thread(0);
        }
        if c.need_resched.swap(false, Ordering::Relaxed) {
            // The fault's time would include other tasks': drop it.
            c.trap_start.set(0);
            sched::schedule();
            continue;
        }
        break;
    }
    sched::with_rcu(|r| r.report());
    let start = c.trap_start.replace(0);
    if start != 0 {
        let d = arch::timer::cycles().wrapping_sub(start);
        c.fault_cycles.fetch_add(d, Ordering::Relaxed);
        c.fault_count.fetch_add(1, Ordering::Relaxed);
    }
}
