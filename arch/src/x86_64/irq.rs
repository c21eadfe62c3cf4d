//! Interrupt enable/disable for the idle loop.

/// Enables interrupts, halts until one arrives (and is handled), disables
/// them again. `sti` takes effect after the next instruction, so `sti; hlt`
/// cannot lose an interrupt that becomes pending after the caller's last
/// check: it is delivered while halted and wakes the CPU.
pub fn wait_for_interrupt() {
    // SAFETY: the interrupt handlers are installed on every CPU that runs
    // the kernel (trap::load); interrupts are off again on return, as the
    // kernel's interrupt rule requires.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
}

/// Nothing: a spinning CPU just spins (the caller's `spin_loop` hint is
/// enough; every CPU runs in parallel, also under TCG, which is
/// multi-threaded for x86_64 guests).
pub fn relax() {}
