//! Ending a run: the exit marker, then UHI semihosting `exit` under QEMU
//! (see [`super::uhi`]) or a halt.
//!
//! `qemu-exit` has no MIPS backend, so this is Samara's, with the same
//! interface. With `-semihosting`, QEMU treats `sdbbp 1` as a UHI call: t9
//! ($25) holds the operation (1 = exit) and a0 the status, and QEMU exits
//! with exactly that status. Samara's statuses match what x86_64's
//! isa-debug-exit produces (`(code << 1) | 1`): 33 for success, 35 for
//! failure, so xtask decodes both architectures alike.
//!
//! Without a UHI host (Malta without `-semihosting`, where `sdbbp` would
//! jump into the boot ROM, and every Octeon board) there is no way out: the
//! CPU says so after the marker and halts. Whoever watches the console (the
//! QEMU harness's time-out, `cargo xtask flash`) reads the status from the
//! `samara: exit N` marker that [`exit_qemu`] prints on every path.

use super::board;
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

/// Ends the run with `status`.
pub fn exit_qemu(status: ExitStatus) -> ! {
    crate::print_exit_marker(status);
    let code = host_status(status);
    if uhi::present() {
        // SAFETY: `exit` takes no pointer, and the host is present, so this terminates QEMU with `code`.
        unsafe { uhi::call(uhi::op::EXIT, code, 0) };
    }
    arch_println!("mips64: {}", board::NO_EXIT);
    super::cpu::halt_forever()
}
