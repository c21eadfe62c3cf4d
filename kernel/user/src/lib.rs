//! The runtime of Samara's user programs: system calls, console output,
//! threads, the entry point and the panic handler.
//!
//! A program is `#![no_std] #![no_main]` and names its main function with
//! [`entry!`]; the kernel starts it at `_start(arg0, arg1)` with the two
//! words the workload passes (see `kernel/src/os/workload.rs`).
#![no_std]
#![cfg_attr(target_arch = "mips64", feature(asm_experimental_arch))]

use core::fmt::{self, Write};

pub use samara_abi as abi;
use samara_abi::{Errno, Stats};

/// Raw system calls.
pub mod sys {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn call(nr: u64, a: [u64; 6]) -> u64 {
        let ret: u64;
        // SAFETY: the syscall ABI (samara_abi): the kernel reads the number and six arguments, returns in rax and clobbers rcx and r11; it touches our memory only through the pointers we pass, as the call's contract says.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") nr => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack)
            );
        }
        ret
    }

    #[cfg(target_arch = "mips64")]
    #[inline(always)]
    pub fn call(nr: u64, a: [u64; 6]) -> u64 {
        let ret: u64;
        // SAFETY: the syscall ABI (samara_abi; n64 registers, see the kernel's arch/src/mips64/task.rs): number in v0, arguments in a0..a5, result in v0, every other register preserved; the kernel touches our memory only through the pointers we pass.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("$2") nr => ret,
                in("$4") a[0], in("$5") a[1], in("$6") a[2],
                in("$7") a[3], in("$8") a[4], in("$9") a[5],
                options(nostack)
            );
        }
        ret
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "mips64")))]
    compile_error!("samara-user: add this architecture's `syscall` sequence to sys::call");
}

fn result(v: u64) -> Result<u64, Errno> {
    if samara_abi::is_error(v) {
        Err(Errno::from_return(v).unwrap_or(Errno::Inval))
    } else {
        Ok(v)
    }
}

pub fn syscall(nr: u64, a: [u64; 6]) -> Result<u64, Errno> {
    result(sys::call(nr, a))
}

pub fn exit(code: u64) -> ! {
    sys::call(samara_abi::SYS_EXIT, [code, 0, 0, 0, 0, 0]);
    unreachable!("exit returned")
}

pub fn thread_exit(value: u64) -> ! {
    sys::call(samara_abi::SYS_THREAD_EXIT, [value, 0, 0, 0, 0, 0]);
    unreachable!("thread_exit returned")
}

pub fn write(b: &[u8]) -> Result<u64, Errno> {
    syscall(
        samara_abi::SYS_WRITE,
        [b.as_ptr() as u64, b.len() as u64, 0, 0, 0, 0],
    )
}

pub fn yield_now() {
    sys::call(samara_abi::SYS_YIELD, [0; 6]);
}

pub fn mmap(addr: u64, len: u64, prot: u64, flags: u64) -> Result<u64, Errno> {
    syscall(samara_abi::SYS_MMAP, [addr, len, prot, flags, 0, 0])
}

pub fn munmap(addr: u64, len: u64) -> Result<u64, Errno> {
    syscall(samara_abi::SYS_MUNMAP, [addr, len, 0, 0, 0, 0])
}

pub fn mprotect(addr: u64, len: u64, prot: u64) -> Result<u64, Errno> {
    syscall(samara_abi::SYS_MPROTECT, [addr, len, prot, 0, 0, 0])
}

pub fn brk(end: u64) -> Result<u64, Errno> {
    syscall(samara_abi::SYS_BRK, [end, 0, 0, 0, 0, 0])
}

pub fn fork() -> Result<u64, Errno> {
    syscall(samara_abi::SYS_FORK, [0; 6])
}

/// Waits for child `pid` (0: any); returns (pid, status).
pub fn wait(pid: u64) -> Result<(u64, u64), Errno> {
    let mut status = 0u64;
    let p = syscall(
        samara_abi::SYS_WAIT,
        [pid, &mut status as *mut u64 as u64, 0, 0, 0, 0],
    )?;
    Ok((p, status))
}

pub fn thread_join(tid: u64) -> Result<u64, Errno> {
    syscall(samara_abi::SYS_THREAD_JOIN, [tid, 0, 0, 0, 0, 0])
}

pub fn stats() -> Stats {
    stats_with(0)
}

/// [`stats`] with `flags` ([`samara_abi::stats_flags`]).
pub fn stats_with(flags: u64) -> Stats {
    let mut s = Stats::default();
    let r = syscall(
        samara_abi::SYS_STATS,
        [
            &mut s as *mut Stats as u64,
            core::mem::size_of::<Stats>() as u64,
            flags,
            0,
            0,
            0,
        ],
    );
    if let Err(e) = r {
        panic!("stats failed: {}", e.name());
    }
    s
}

pub fn clock_ns() -> u64 {
    sys::call(samara_abi::SYS_CLOCK, [0; 6])
}

pub fn getpid() -> u64 {
    sys::call(samara_abi::SYS_GETPID, [0; 6])
}

pub fn gettid() -> u64 {
    sys::call(samara_abi::SYS_GETTID, [0; 6])
}

/// The CPU's cycle counter, read in user mode: the same counter the
/// kernel's `cycles_per_fault` and [`Stats::cycles_per_second`] use, so
/// figures from both are in one unit.
///
/// - x86_64: the TSC (`rdtsc`, allowed in user mode because the kernel
///   keeps CR4.TSD clear on every CPU), 64 bits wide.
/// - MIPS64: CP0 Count through `rdhwr $2` (hardware register CC, which the
///   kernel enables for user mode in HWREna on every CPU). Count is 32 bits
///   wide and wraps (every 26.8 s at QEMU Malta's 160 MHz): subtract two
///   readings with [`cycles_between`], and keep each timed span well under
///   a wrap, or time longer loops with a [`Stopwatch`].
///
/// Threads can move between CPUs; the counters of different CPUs run from
/// one clock under QEMU (TSC and Count alike), so a span measured across a
/// migration is still right there.
#[inline(always)]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` only reads the time-stamp counter; it faults in user mode only if CR4.TSD is set, which Samara never does (arch/src/x86_64/cpu.rs `init_features` clears it).
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(target_arch = "mips64")]
    {
        let c: u64;
        // SAFETY: `rdhwr $2` reads CP0 Count, with no other effect; user mode may execute it because the kernel sets HWREna.CC on every CPU (arch/src/mips64/mod.rs `init_cpu`). The value arrives sign-extended from 32 bits; the mask keeps the counter's bits.
        unsafe {
            core::arch::asm!(
                ".set push",
                ".set mips64r2",
                ".set noat",
                "rdhwr {0}, $2",
                ".set pop",
                out(reg) c,
                options(nomem, nostack, preserves_flags)
            )
        };
        c & CYCLES_MASK
    }
}

/// The bits [`cycles`] counts in: it wraps from `CYCLES_MASK` to 0.
#[cfg(target_arch = "x86_64")]
pub const CYCLES_MASK: u64 = u64::MAX;
/// The bits [`cycles`] counts in: it wraps from `CYCLES_MASK` to 0.
#[cfg(target_arch = "mips64")]
pub const CYCLES_MASK: u64 = 0xffff_ffff;

/// Counter ticks from reading `start` to the later reading `end`, across
/// at most one wrap of a narrow counter. A span that seems to run backwards
/// (more than half the counter's range, which no timed span here comes
/// near: a reading on a CPU whose counter lags the first one's) counts as
/// zero rather than as almost a whole wrap.
#[inline(always)]
pub fn cycles_between(start: u64, end: u64) -> u64 {
    let d = end.wrapping_sub(start) & CYCLES_MASK;
    if d > CYCLES_MASK / 2 {
        0
    } else {
        d
    }
}

/// Times a loop of many short pieces of work with [`cycles`], exactly,
/// even when the whole loop lasts longer than a narrow counter's wrap
/// period: [`Stopwatch::keep_up`] after each piece adds the span since the
/// previous reading (consecutive spans share their readings, so nothing
/// between them is lost or counted twice). On a 64-bit counter `keep_up`
/// reads nothing, and the timed region is the same as one reading before
/// the loop and one after it.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    last: u64,
    total: u64,
}

impl Stopwatch {
    /// Starts counting now.
    #[inline(always)]
    pub fn start() -> Stopwatch {
        Stopwatch {
            last: cycles(),
            total: 0,
        }
    }

    /// Folds the span since the previous reading into the total if the
    /// counter could wrap before the next one: call it at least once per
    /// wrap period.
    #[inline(always)]
    pub fn keep_up(&mut self) {
        if CYCLES_MASK != u64::MAX {
            self.elapsed();
        }
    }

    /// The counter ticks since [`Stopwatch::start`].
    #[inline(always)]
    pub fn elapsed(&mut self) -> u64 {
        let now = cycles();
        self.total += cycles_between(self.last, now);
        self.last = now;
        self.total
    }
}

pub const PAGE: u64 = 4096;

/// Anonymous private read-write memory.
pub fn mmap_anon(len: u64) -> Result<u64, Errno> {
    mmap(
        0,
        len,
        samara_abi::prot::READ | samara_abi::prot::WRITE,
        samara_abi::map::PRIVATE | samara_abi::map::ANONYMOUS,
    )
}

/// Starts a thread running `f(arg)` on a fresh `stack_size`-byte stack;
/// returns its id. The stack is the thread's own mapping; [`join`] unmaps it.
pub fn spawn(f: extern "C" fn(u64) -> u64, arg: u64, stack_size: u64) -> Result<Thread, Errno> {
    let stack = mmap_anon(stack_size)?;
    let top = stack + stack_size;
    match syscall(
        samara_abi::SYS_THREAD_CREATE,
        [
            thread_trampoline as *const () as u64,
            top,
            f as *const () as u64,
            arg,
            0,
            0,
        ],
    ) {
        Ok(tid) => Ok(Thread {
            tid,
            stack,
            stack_size,
        }),
        Err(e) => {
            let _ = munmap(stack, stack_size);
            Err(e)
        }
    }
}

/// A thread started by [`spawn`].
pub struct Thread {
    pub tid: u64,
    stack: u64,
    stack_size: u64,
}

impl Thread {
    /// Waits for the thread, unmaps its stack, returns its value.
    pub fn join(self) -> Result<u64, Errno> {
        let v = thread_join(self.tid)?;
        munmap(self.stack, self.stack_size)?;
        Ok(v)
    }
}

/// Where new threads start: the kernel passes (function, argument) as the
/// first two arguments.
extern "C" fn thread_trampoline(f: u64, arg: u64) -> ! {
    // SAFETY: `spawn` passed the address of an `extern "C" fn(u64) -> u64`.
    let f: extern "C" fn(u64) -> u64 = unsafe { core::mem::transmute(f as usize) };
    thread_exit(f(arg))
}

/// Console output: formats into a buffer and writes it in one call, so
/// lines from different threads do not interleave mid-line.
pub struct Out {
    buf: [u8; 512],
    len: usize,
}

impl Default for Out {
    fn default() -> Self {
        Out {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl Out {
    pub fn flush(&mut self) {
        if self.len > 0 {
            let _ = write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut o = Out::default();
    let _ = o.write_fmt(args);
    o.flush();
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Defines `_start`, which calls `$main(arg0, arg1) -> u64` and exits the
/// process with its value.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = ".text._start")]
        pub extern "C" fn _start(arg0: u64, arg1: u64) -> ! {
            let f: fn(u64, u64) -> u64 = $main;
            $crate::exit(f(arg0, arg1))
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut o = Out::default();
    let _ = writeln!(o, "user panic (pid {}): {}", getpid(), info);
    o.flush();
    exit(101)
}
