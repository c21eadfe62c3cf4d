//! The per-CPU tick: the Count/Compare timer (IP7).
//!
//! Every CPU has its own Count register and Compare register; when they
//! match, IP7 is raised until Compare is written again. Each CPU arms its
//! own after [`start`]; the interrupt is unmasked (Status.IM7) from then
//! on, but taken only where the kernel enables interrupts: in user mode and
//! in [`super::cpu::idle_wait`].
//!
//! Re-arming uses `Count + TICK`, not `Compare + TICK`: a CPU that was not
//! taking interrupts for a while (kernel code) gets one tick, not a burst
//! of catch-up interrupts.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cp0::{self, status};
use super::smp::{self, MAX_CPUS};

/// Count ticks between timer interrupts: about 3.3 ms at QEMU Malta's
/// 160 MHz Count rate (half its 320 MHz CPU clock, in host time under TCG);
/// Octeon's Count runs at the core clock (about 0.5 ms at 1 GHz).
pub const TICK: u64 = 1 << 19;

static STARTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: Count ticks between timer interrupts.
static INTERVAL: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(TICK) }; MAX_CPUS];
/// Per CPU: timer interrupts per kernel tick ([`start_tick`]).
static DIVISOR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(1) }; MAX_CPUS];

/// Timer interrupts per second once the kernel's tick runs: the rate at
/// which a CPU in user mode or idle services cross-CPU requests (TLB
/// shootdowns wait for it: there are no IPIs). The kernel's own tick
/// (`samara_tick`) is every `POLL_HZ / hz`-th of them.
pub const POLL_HZ: u32 = 1000;
/// Per CPU: the 64-bit extension of Count (see [`cycles`]).
static EXTENDED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn this_cpu() -> usize {
    cp0::cpu_num() as usize % MAX_CPUS
}

/// Starts this CPU's tick at the default interval ([`TICK`]), every
/// interrupt a kernel tick.
pub fn start() {
    DIVISOR[this_cpu()].store(1, Ordering::Relaxed);
    start_interval(TICK);
}

/// Starts this CPU's timer at [`POLL_HZ`] interrupts per second, with a
/// kernel tick every `POLL_HZ / hz` of them (at least every one).
pub fn start_tick(hz: u32) {
    let poll = POLL_HZ.max(hz);
    DIVISOR[this_cpu()].store(u64::from(poll / hz.max(1)), Ordering::Relaxed);
    start_interval((smp::count_hz() / u64::from(poll)).max(1024));
}

/// Starts this CPU's tick: arms Compare `interval` Count ticks ahead and
/// unmasks IM7 (IE stays as it is: off in the kernel).
fn start_interval(interval: u64) {
    let cpu = this_cpu();
    // Relaxed: read only by this CPU.
    INTERVAL[cpu].store(interval, Ordering::Relaxed);
    arm(interval);
    STARTED[cpu].store(true, Ordering::Relaxed);
    // SAFETY: only unmasks the timer line; whether interrupts are taken is still decided by IE, which this does not change.
    unsafe { cp0::set_status(cp0::status() | status::IM7) };
}

/// Brings this CPU's next timer interrupt forward to at most `ticks` Count
/// ticks from now (the interrupt's acknowledgement re-arms the normal
/// interval). For [`super::cpu::relax_wait`].
pub fn wake_within(ticks: u64) {
    let now = cp0::count();
    let ahead = (cp0::compare().wrapping_sub(now) as u32) as i32;
    if ahead <= 0 || ahead as u64 > ticks {
        arm(ticks.max(64));
    }
}

/// Whether this CPU's timer runs.
pub fn started() -> bool {
    STARTED[this_cpu()].load(Ordering::Relaxed)
}

/// Acknowledges a timer interrupt on this CPU and arms the next one.
/// Returns `None` if this CPU's timer was never started, else whether this
/// interrupt is also a kernel tick (see [`start_tick`]).
pub fn ack() -> Option<bool> {
    let cpu = this_cpu();
    if !STARTED[cpu].load(Ordering::Relaxed) {
        return None;
    }
    arm(INTERVAL[cpu].load(Ordering::Relaxed));
    let n = TICKS[cpu].fetch_add(1, Ordering::Relaxed) + 1;
    cycles();
    Some(n.is_multiple_of(DIVISOR[cpu].load(Ordering::Relaxed).max(1)))
}

/// Sets Compare `interval` ticks ahead of Count, and makes sure it really
/// is ahead: if Count passed the new Compare before the write took effect
/// (the CPU was held up between reading Count and writing Compare: an
/// emulator descheduling the vCPU, a long stall), no interrupt would come
/// for a whole 2^32-tick wrap (26.8 s at 160 MHz). Linux's `mips_next_event`
/// makes the same check.
fn arm(interval: u64) {
    loop {
        let target = cp0::count().wrapping_add(interval);
        cp0::set_compare(target);
        // Signed 32-bit distance from Count to Compare: positive means the
        // interrupt is still ahead.
        let ahead = (target.wrapping_sub(cp0::count()) as u32) as i32;
        if ahead > 0 {
            return;
        }
    }
}

/// This CPU's Count, extended to 64 bits: the 32-bit register wraps every
/// 26.8 s at 160 MHz, so the high half is kept in software and advanced
/// whenever a read sees the low half go backwards. Every read and every
/// tick updates it, so a CPU must read it at least once per wrap period;
/// the tick does while the CPU takes interrupts, and kernel code never
/// runs that long with them off. Count registers of different CPUs run from
/// one clock under QEMU; on Octeon boards they are not synchronised (the
/// 64-bit CvmCount would be), so cross-CPU comparisons are approximate
/// there.
pub fn cycles() -> u64 {
    let cpu = this_cpu();
    let now = cp0::count() & 0xffff_ffff;
    // Owner-only word: Relaxed.
    let last = EXTENDED[cpu].load(Ordering::Relaxed);
    let mut ext = (last & !0xffff_ffff) | now;
    if now < last & 0xffff_ffff {
        ext += 1 << 32;
    }
    EXTENDED[cpu].store(ext, Ordering::Relaxed);
    ext
}

/// [`cycles`] per second.
pub fn cycles_per_second() -> u64 {
    smp::count_hz()
}

/// Nanoseconds since this CPU's Count started (about boot).
pub fn now_ns() -> u64 {
    let c = cycles();
    let hz = cycles_per_second();
    // Split to avoid overflow: whole seconds, then the remainder.
    (c / hz) * 1_000_000_000 + (c % hz) * 1_000_000_000 / hz
}

/// Timer interrupts taken on `cpu` (by EBase.CPUNum) so far.
pub fn ticks(cpu: usize) -> u64 {
    TICKS[cpu % MAX_CPUS].load(Ordering::Relaxed)
}
