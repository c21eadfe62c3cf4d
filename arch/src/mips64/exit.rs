//! Ending a QEMU run: UHI semihosting `exit` (see [`super::uhi`]).
//!
//! `qemu-exit` has no MIPS backend, so this is Samara's, with the same
//! interface. With `-semihosting`, QEMU treats `sdbbp 1` as a UHI call: t9
//! ($25) holds the operation (1 = exit) and a0 the status, and QEMU exits
//! with exactly that status. Samara's statuses match what x86_64's
//! isa-debug-exit produces (`(code << 1) | 1`): 33 for success, 35 for
//! failure, so xtask decodes both architectures alike.
//!
//! Without `-semihosting` (the boot loader then passes a0 != -1) there is
//! no way out: Malta has no exit device (its reset register only reboots)
//! and `sdbbp` would jump into the boot ROM. The CPU then says so on the
//! console, with the status, and halts; the harness's time-out ends QEMU.

use super::console::arch_println;
use super::uhi;
use crate::ExitStatus;

/// The status QEMU exits with.
pub const fn host_status(status: ExitStatus) -> u64 {
    match status {
        ExitStatus::Success => 33,
        ExitStatus::Failure => 35,
    }
}

/// Ends the QEMU run with `status`.
pub fn exit_qemu(status: ExitStatus) -> ! {
    let code = host_status(status);
    if uhi::present() {
        // SAFETY: `exit` takes no pointer, and the host is present, so this
        // terminates QEMU with `code`.
        unsafe { uhi::call(uhi::op::EXIT, code, 0) };
    }
    arch_println!(
        "\nmips64: cannot exit QEMU with status {code}: no UHI host (start QEMU with \
         -semihosting); halting"
    );
    super::cpu::halt_forever()
}
