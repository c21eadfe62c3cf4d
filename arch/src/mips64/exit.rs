//! Ending a QEMU run: UHI semihosting `exit`.
//!
//! `qemu-exit` has no MIPS backend, so this is Samara's, with the same
//! interface. With `-semihosting`, QEMU treats `sdbbp 1` as a UHI call: t9
//! ($25) holds the operation (1 = exit) and a0 the status, and QEMU exits
//! with exactly that status. Samara's statuses match what x86_64's
//! isa-debug-exit produces (`(code << 1) | 1`): 33 for success, 35 for
//! failure, so xtask decodes both architectures alike.
//!
//! Without `-semihosting` QEMU raises a debug exception into the boot ROM
//! instead; there is no other exit device on Malta (its reset register only
//! reboots), so we never get here in a correctly launched run. Should the
//! `sdbbp` return, the CPU says so on the console and halts.

use core::arch::asm;

use crate::ExitStatus;

/// The UHI operation number of `exit`.
const UHI_EXIT: u64 = 1;

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
    // SAFETY: a UHI call reads only $25 and $4 and, under -semihosting,
    // terminates QEMU. If semihosting is off, the debug exception does not
    // come back here; if it somehow does, no register the compiler relies on
    // was changed beyond the declared inputs.
    unsafe {
        asm!(
            "sdbbp 1",
            in("$25") UHI_EXIT,
            in("$4") code,
            options(nostack),
        )
    };
    super::console::write_bytes(
        b"\r\nmips64: UHI exit returned (QEMU lacks -semihosting); halting\r\n",
    );
    super::cpu::halt_forever()
}
