//! Time: the TSC as the clock, the LAPIC timer as the tick, both calibrated
//! once on the boot CPU against the 8254 PIT.
//!
//! Calibration (as Linux's `pit_calibrate_tsc`): PIT channel 2, gated by
//! port 0x61 and not connected to the speaker, counts down
//! [`CALIBRATION_MS`] milliseconds in mode 0; its output (port 0x61 bit 5)
//! rises at the end. Meanwhile the TSC and the LAPIC timer run; their
//! deltas give both frequencies. Every CPU of a PC shares the APIC bus
//! clock, so secondaries reuse the boot CPU's figure; the TSC is assumed
//! synchronised across CPUs (true on KVM and TCG, and on hardware with an
//! invariant TSC).

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

use super::apic;
use super::smp::{self, MAX_CPUS};

/// The PIT's input clock (Hz).
const PIT_HZ: u64 = 1_193_182;
/// Length of the calibration window.
pub const CALIBRATION_MS: u64 = 20;
/// Polls of port 0x61 before the PIT is declared dead (far more than any
/// 20 ms window takes, even under TCG).
const PIT_POLL_LIMIT: u64 = 200_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// LAPIC timer ticks per second after the divide-by-16.
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);

/// The time-stamp counter.
#[inline(always)]
pub fn cycles() -> u64 {
    // SAFETY: rdtsc is available on every x86_64 CPU and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn cycles_per_second() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since calibration.
pub fn now_ns() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed).max(1);
    let delta = cycles().saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ((u128::from(delta) * 1_000_000_000) / u128::from(hz)) as u64
}

/// Busy-waits `us` microseconds (after calibration).
pub fn delay_us(us: u64) {
    let end = cycles() + cycles_per_second() / 1_000_000 * us;
    while cycles() < end {
        core::hint::spin_loop();
    }
}

/// Why calibration failed.
#[derive(Debug, Clone, Copy)]
pub enum CalibrationError {
    /// The PIT's channel-2 output never rose.
    PitDead,
    /// A counter did not move (TSC or LAPIC timer).
    NoProgress { tsc: u64, lapic: u64 },
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CalibrationError::PitDead => {
                f.write_str("the PIT's channel 2 never reached terminal count")
            }
            CalibrationError::NoProgress { tsc, lapic } => write!(
                f,
                "counters did not advance over the PIT window (TSC {tsc}, LAPIC {lapic})"
            ),
        }
    }
}

/// Measures the TSC and LAPIC timer frequencies. Boot CPU, once, after
/// `apic::init_boot`, interrupts off.
pub fn calibrate() -> Result<(), CalibrationError> {
    let mut p61 = Port::<u8>::new(0x61);
    let mut cmd = Port::<u8>::new(0x43);
    let mut ch2 = Port::<u8>::new(0x42);
    let latch = PIT_HZ * CALIBRATION_MS / 1000;
    // SAFETY: ports 0x61, 0x43 and 0x42 are the PC's system control port and PIT; this only gates channel 2 (speaker off) and programs it.
    let (t0, t1, l1) = unsafe {
        let v = p61.read();
        p61.write((v & !0x02) | 0x01);
        cmd.write(0xb0); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(latch as u8);
        ch2.write((latch >> 8) as u8);
        apic::timer_start_oneshot_masked(u32::MAX);
        let t0 = cycles();
        let mut polls = 0;
        while p61.read() & 0x20 == 0 {
            polls += 1;
            if polls > PIT_POLL_LIMIT {
                return Err(CalibrationError::PitDead);
            }
        }
        (t0, cycles(), apic::timer_current())
    };
    let tsc = t1.wrapping_sub(t0);
    let lapic = u64::from(u32::MAX - l1);
    if tsc == 0 || lapic == 0 {
        return Err(CalibrationError::NoProgress { tsc, lapic });
    }
    TSC_HZ.store(tsc * 1000 / CALIBRATION_MS, Ordering::Relaxed);
    LAPIC_HZ.store(lapic * 1000 / CALIBRATION_MS, Ordering::Relaxed);
    TSC_AT_BOOT.store(cycles(), Ordering::Relaxed);
    Ok(())
}

/// LAPIC timer frequency (after the divider), for the banner.
pub fn lapic_hz() -> u64 {
    LAPIC_HZ.load(Ordering::Relaxed)
}

/// TSC cycles between two ticks (set by the first `start_tick`).
static TICK_PERIOD: AtomicU64 = AtomicU64::new(0);

/// Per CPU: the TSC value at which its next tick is due; 0 until the CPU
/// starts its tick. Only its own CPU touches its slot, with interrupts off
/// (or from its own interrupt handler), hence Relaxed throughout.
static NEXT_TICK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Ticks whose interrupt arrives this close before the deadline count as
/// due: the LAPIC count is the TSC interval converted at the calibrated
/// ratio, which can round a few cycles short.
const EARLY_SLACK_SHIFT: u32 = 6;

/// Starts this CPU's periodic tick at `hz` (see the arch contract).
///
/// The tick is a chain of one-shot LAPIC interrupts at TSC deadlines kept
/// in [`NEXT_TICK`], not the LAPIC's periodic mode: a spinning CPU borrows
/// the same timer for a short wake-up (`irq::relax`) and afterwards
/// re-arms it for the pending deadline, which periodic mode cannot express
/// (rewriting its count restarts the period, so frequent relaxing would
/// postpone the tick indefinitely). No tick is lost to a relax: only
/// [`tick_due`] advances the deadline.
pub fn start_tick(hz: u32) {
    let period = (TSC_HZ.load(Ordering::Relaxed) / u64::from(hz.max(1))).max(1);
    TICK_PERIOD.store(period, Ordering::Relaxed);
    let next = cycles() + period;
    NEXT_TICK[smp::this_cpu()].store(next, Ordering::Relaxed);
    arm_at(next);
}

/// Programs this CPU's LAPIC timer to interrupt at TSC value `deadline`
/// (at once if it has passed).
fn arm_at(deadline: u64) {
    let tsc = u128::from(deadline.saturating_sub(cycles()));
    let count = tsc * u128::from(LAPIC_HZ.load(Ordering::Relaxed))
        / u128::from(TSC_HZ.load(Ordering::Relaxed).max(1));
    apic::timer_start_oneshot(count.clamp(1, u128::from(u32::MAX)) as u32);
}

/// Whether this CPU's tick runs (`start_tick` was called on it).
pub(super) fn tick_started() -> bool {
    NEXT_TICK[smp::this_cpu()].load(Ordering::Relaxed) != 0
}

/// Called for every timer interrupt outside a relax halt: whether it is
/// this CPU's tick. If so, the next deadline is one period on (or one
/// period from now if the CPU ran with interrupts off past a whole period:
/// missed ticks are not replayed); if not (the interrupt of a relax
/// wake-up shot that fired after the relax ended, or one converted a little
/// short), the timer is re-armed for the pending deadline. Either way the
/// timer is armed again on return.
pub(super) fn tick_due() -> bool {
    let slot = &NEXT_TICK[smp::this_cpu()];
    let due = slot.load(Ordering::Relaxed);
    let period = TICK_PERIOD.load(Ordering::Relaxed);
    let now = cycles();
    if now + (period >> EARLY_SLACK_SHIFT) < due {
        arm_at(due);
        return false;
    }
    let mut next = due + period;
    if next <= now {
        next = now + period;
    }
    slot.store(next, Ordering::Relaxed);
    arm_at(next);
    true
}

/// Arms this CPU's timer to interrupt within `cycles` TSC cycles, or at
/// the next tick's deadline if that comes first: the wake-up of a relax
/// halt. [`rearm_tick`] undoes it.
pub(super) fn arm_wakeup(within: u64) {
    let due = NEXT_TICK[smp::this_cpu()].load(Ordering::Relaxed);
    arm_at(due.min(cycles() + within));
}

/// Re-arms this CPU's timer for its pending tick after a relax halt. If the
/// deadline has passed (the halt's interrupt was the tick, absorbed by the
/// relax handler), the timer fires at once and the tick is taken at the
/// next point where interrupts are enabled, as any tick raised in the
/// kernel is.
pub(super) fn rearm_tick() {
    arm_at(NEXT_TICK[smp::this_cpu()].load(Ordering::Relaxed));
}
