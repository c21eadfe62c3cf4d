//! System calls (the ABI is `samara_abi`'s). Interrupts are off throughout;
//! user memory is reached only through the address space's
//! `copy_{from,to}_user`, which return `EFAULT` for bad pointers.

use alloc::sync::Arc;

use arch::task::UserFrame;
use samara_abi::{self as abi, Errno, Stats};

use super::process::{self, Process};
use super::sched::{self, Task};
use super::stats;
use super::umem::MIN_ADDR;

fn process() -> Arc<Process> {
    sched::current()
        .process
        .clone()
        .expect("system call from a kernel thread")
}

/// Runs the call in `frame` and stores its result there.
pub fn dispatch(frame: &mut UserFrame) {
    let a = frame.syscall_args();
    let cpu = super::cpu_id();
    let r: Result<u64, Errno> = match frame.syscall_number() {
        abi::SYS_EXIT => {
            process().kill(a[0] & 0xff);
            process::exit_thread(a[0])
        }
        abi::SYS_THREAD_EXIT => process::exit_thread(a[0]),
        abi::SYS_WRITE => write(cpu, a[0], a[1]),
        abi::SYS_YIELD => {
            sched::yield_now();
            Ok(0)
        }
        abi::SYS_MMAP => process().mm.mmap(cpu, a[0], a[1], a[2], a[3]),
        abi::SYS_MUNMAP => process().mm.munmap(cpu, a[0], a[1]).map(|()| 0),
        abi::SYS_MPROTECT => process().mm.mprotect(cpu, a[0], a[1], a[2]).map(|()| 0),
        abi::SYS_BRK => process().mm.brk(cpu, a[0]),
        abi::SYS_FORK => fork(cpu, frame),
        abi::SYS_WAIT => wait(cpu, a[0], a[1]),
        abi::SYS_THREAD_CREATE => thread_create(a[0], a[1], [a[2], a[3]]),
        abi::SYS_THREAD_JOIN => process().join(a[0]),
        abi::SYS_STATS => stats_call(cpu, a[0], a[1], a[2]),
        abi::SYS_CLOCK => Ok(arch::timer::now_ns()),
        abi::SYS_GETPID => Ok(process().pid),
        abi::SYS_GETTID => Ok(sched::current().tid),
        _ => Err(Errno::NoSys),
    };
    frame.set_syscall_return(match r {
        Ok(v) => v,
        Err(e) => e.as_return(),
    });
}

fn write(cpu: usize, ptr: u64, len: u64) -> Result<u64, Errno> {
    let len = len.min(abi::WRITE_MAX) as usize;
    let mut buf = [0u8; abi::WRITE_MAX as usize];
    process().mm.copy_from_user(cpu, ptr, &mut buf[..len])?;
    crate::console::write_user(&buf[..len]);
    Ok(len as u64)
}

fn fork(cpu: usize, frame: &UserFrame) -> Result<u64, Errno> {
    let parent = process();
    let mm = parent.mm.fork(cpu)?;
    let child = Process::new(parent.name.as_str(), mm, Some(&parent));
    let mut f = frame.clone();
    f.set_syscall_return(0);
    let Some(t) = Task::new_user(parent.name.as_str(), child.clone(), &f) else {
        child.abandon();
        return Err(Errno::NoMem);
    };
    child.start_thread(t);
    Ok(child.pid)
}

fn wait(cpu: usize, pid: u64, status_ptr: u64) -> Result<u64, Errno> {
    let p = process();
    p.wait_child(pid, |status| {
        if status_ptr == 0 {
            return Ok(());
        }
        p.mm.copy_to_user(cpu, status_ptr, &status.to_ne_bytes())
    })
}

fn thread_create(entry: u64, stack_top: u64, args: [u64; 2]) -> Result<u64, Errno> {
    let end = arch::mmu::USER_VA_END;
    if !(MIN_ADDR..end).contains(&entry)
        || !(MIN_ADDR + 16..=end).contains(&stack_top)
        || !stack_top.is_multiple_of(16)
    {
        return Err(Errno::Inval);
    }
    let p = process();
    let frame = UserFrame::new_user(entry, stack_top, args);
    let t = Task::new_user(p.name.as_str(), p.clone(), &frame).ok_or(Errno::NoMem)?;
    let tid = t.tid;
    p.start_thread(t);
    Ok(tid)
}

fn stats_call(cpu: usize, ptr: u64, size: u64, flags: u64) -> Result<u64, Errno> {
    if flags & !abi::stats_flags::ALL != 0 {
        return Err(Errno::Inval);
    }
    let s: Stats = stats::collect();
    let n = (size as usize).min(core::mem::size_of::<Stats>());
    // SAFETY: `Stats` is `repr(C)` and all `u64`: plain bytes, no padding.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (&s as *const Stats).cast::<u8>(),
            core::mem::size_of::<Stats>(),
        )
    };
    process().mm.copy_to_user(cpu, ptr, &bytes[..n])?;
    if flags & abi::stats_flags::RESET_LINECOUNT != 0 {
        stats::reset_linecount();
    }
    Ok(0)
}
