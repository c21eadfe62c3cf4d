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
use super::smp::MAX_CPUS;

/// Count ticks between timer interrupts: about 3.3 ms at QEMU Malta's
/// 160 MHz Count rate (half its 320 MHz CPU clock, in host time under TCG);
/// Octeon's Count runs at the core clock (about 0.5 ms at 1 GHz).
pub const TICK: u64 = 1 << 19;

static STARTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn this_cpu() -> usize {
    cp0::cpu_num() as usize % MAX_CPUS
}

/// Starts this CPU's tick: arms Compare and unmasks IM7 (IE stays as it
/// is: off in the kernel).
pub fn start() {
    cp0::set_compare(cp0::count().wrapping_add(TICK));
    // Relaxed: read only by this CPU.
    STARTED[this_cpu()].store(true, Ordering::Relaxed);
    // SAFETY: only unmasks the timer line; whether interrupts are taken is
    // still decided by IE, which this does not change.
    unsafe { cp0::set_status(cp0::status() | status::IM7) };
}

/// Acknowledges a timer interrupt on this CPU and arms the next one.
/// Returns `false` if this CPU's tick was never started.
pub fn ack() -> bool {
    let cpu = this_cpu();
    if !STARTED[cpu].load(Ordering::Relaxed) {
        return false;
    }
    cp0::set_compare(cp0::count().wrapping_add(TICK));
    TICKS[cpu].fetch_add(1, Ordering::Relaxed);
    true
}

/// Ticks taken on `cpu` so far.
pub fn ticks(cpu: usize) -> u64 {
    TICKS[cpu % MAX_CPUS].load(Ordering::Relaxed)
}
