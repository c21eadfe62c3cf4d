//! Interrupt control for the idle loop. The kernel runs with interrupts
//! off; only the idle loop and user mode take them (the timer, IP7).

/// Enables interrupts, halts until one arrives, disables them again. An
/// interrupt that arrives between the enable and the `wait` ends the wait
/// at once (see [`super::cpu::idle_wait`]); there are no IPIs, so the
/// kernel's wake-ups reach an idle CPU at its next tick.
pub fn wait_for_interrupt() {
    super::cpu::idle_wait();
}

/// What a CPU spinning in the kernel does between two polls: on QEMU's
/// Malta, yield the emulator ([`super::cpu::relax_wait`]); on Octeon boards,
/// whose cores really run in parallel, nothing.
pub fn relax() {
    if super::board::YIELD_WHEN_SPINNING {
        super::cpu::relax_wait();
    }
}
