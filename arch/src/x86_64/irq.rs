//! Interrupt enable/disable for the idle loop, and what a spinning CPU
//! does between two polls ([`relax`]).

use core::sync::atomic::{AtomicBool, Ordering};

use mm::spinwait::{SpinWait, YieldPolicy};

use super::smp::{self, MAX_CPUS};
use super::timer;

/// Enables interrupts, halts until one arrives (and is handled), disables
/// them again. `sti` takes effect after the next instruction, so `sti; hlt`
/// cannot lose an interrupt that becomes pending after the caller's last
/// check: it is delivered while halted and wakes the CPU.
pub fn wait_for_interrupt() {
    // SAFETY: the interrupt handlers are installed on every CPU that runs the kernel (trap::load); interrupts are off again on return, as the kernel's interrupt rule requires.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
}

// Lock-holder preemption. Under a hypervisor (KVM, or QEMU's multi-threaded
// TCG, one host thread per vCPU) a vCPU is a host thread the host can
// deschedule at any instruction — also while it holds a kernel spin lock or
// owes a TLB-shootdown answer. A CPU spinning on it then burns its host
// time slice doing nothing, and with more vCPUs than host cores each wait
// can last a whole host time slice (milliseconds): faultstorm on 4 vCPUs
// over 2 host cores ran at a tenth of its 1-CPU fault rate, and with
// single-threaded TCG (round-robin, nothing ever preempted while running)
// it did not collapse.
//
// So a CPU that has spun for `SPIN_BEFORE_HALT_US` without getting
// anywhere halts for at most `HALT_US` (its LAPIC timer wakes it, or the
// shootdown IPI a CPU waiting on it sends), handing its host core to
// whichever vCPU the host runs next; then it polls again, and halts again
// while the wait goes on. Like Linux's paravirt spinlocks (which halt after
// 2^15 spins, but are kicked by the unlocker, which needs a list of
// waiters these locks do not keep), this costs latency when the holder is
// running after all: the lock may be released just after the halt began.
// On bare metal nothing is descheduled and every such halt would be pure
// loss, so it is done only when CPUID reports a hypervisor.

/// Continuous spinning after which a CPU halts (first halt of a wait).
const SPIN_BEFORE_HALT_US: u64 = 20;
/// Longest relax halt (the timer ends it unless an IPI comes first).
const HALT_US: u64 = 50;
/// Two relax calls further apart than this belong to different waits: the
/// CPU did something else in between, so the spin count starts again.
const SAME_WAIT_GAP_US: u64 = 5;

/// Per CPU: its current wait (`mm::spinwait` recognises waits and says
/// when to halt). Only its own CPU touches its slot, with interrupts off.
static WAITS: [SpinWait; MAX_CPUS] = [const { SpinWait::new() }; MAX_CPUS];

/// Per CPU: inside the halt of [`relax`], so the timer and IPI handlers
/// only acknowledge (see [`in_relax_halt`]). Written by its own CPU with
/// interrupts off and read by its own interrupt handler: Relaxed suffices
/// (one CPU's program order; the `asm!` around the halt is a compiler
/// barrier).
static HALTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Whether an interrupt from kernel mode came from [`relax`]'s halt. The
/// handler then acknowledges the interrupt and does nothing else: the
/// spinning code may hold any kernel lock, so no kernel code may run. What
/// the interrupt asked for is not lost: an IPI's request stays posted and
/// the spin loop's next poll answers it (the kernel's relax hook services
/// requests on every iteration); the timer's tick deadline stays pending
/// and `relax` re-arms the timer for it (`timer::rearm_tick`).
pub fn in_relax_halt() -> bool {
    HALTED[smp::this_cpu()].load(Ordering::Relaxed)
}

/// Called by the kernel's relax hook on every iteration of every spin loop
/// (interrupts off). Under a hypervisor, yields the host CPU once the wait
/// has lasted [`SPIN_BEFORE_HALT_US`] (see above); on bare metal, nothing
/// (the caller's `pause` is enough).
pub fn relax() {
    if !super::cpu::under_hypervisor() || !timer::tick_started() {
        // Without a tick nothing but an IPI could end the halt.
        return;
    }
    let per_us = timer::cycles_per_second() / 1_000_000;
    let policy = YieldPolicy {
        spin_before_yield: SPIN_BEFORE_HALT_US * per_us,
        same_wait_gap: SAME_WAIT_GAP_US * per_us,
    };
    let cpu = smp::this_cpu();
    let wait = &WAITS[cpu];
    if !wait.poll(timer::cycles(), &policy) {
        return;
    }
    timer::arm_wakeup(HALT_US * per_us);
    HALTED[cpu].store(true, Ordering::Relaxed);
    // SAFETY: interrupts are enabled for the `hlt` only (`sti` takes effect after the next instruction, so an interrupt pending already ends the `hlt` rather than being taken before it), and every timer or IPI interrupt taken while `HALTED` is set is only acknowledged (`in_relax_halt`, checked in `trap::trap_dispatch`): no kernel code runs on top of the spinning code, which keeps the kernel's interrupt rule for everything but that acknowledgement. The timer was just armed, so the `hlt` ends within HALT_US.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
    HALTED[cpu].store(false, Ordering::Relaxed);
    timer::rearm_tick();
    // The halt is part of the wait, not a gap between two waits.
    wait.yielded(timer::cycles());
}
