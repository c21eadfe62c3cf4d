//! Ending a QEMU run through `isa-debug-exit` (iobase 0xf4, iosize 4).
//!
//! QEMU exits with `(value << 1) | 1` for a value written to the port, and
//! with 1 on its own errors, so the two codes below map to host statuses
//! 33 (success) and 35 (failure), which xtask decodes (`xtask/src/qemu.rs`).
//! The MIPS side makes QEMU exit with the same two statuses.

use crate::ExitStatus;
use qemu_exit::QEMUExit;

/// Port QEMU's `isa-debug-exit` device listens on (xtask passes the device).
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Written for success: QEMU exits with 0x10 << 1 | 1 = 33.
pub const SUCCESS_CODE: u32 = 0x10;
/// Written for failure: QEMU exits with 0x11 << 1 | 1 = 35.
pub const FAILURE_CODE: u32 = 0x11;

/// Ends the QEMU run with `status` (after the exit marker); halts if no
/// exit device is present.
pub fn exit_qemu(status: ExitStatus) -> ! {
    crate::print_exit_marker(status);
    // SAFETY: writing 0xf4 only has an effect when QEMU was started with isa-debug-exit there (xtask always adds it); on other machines the port is unused. `new` asserts the success code's low bit, as QEMU shifts it.
    let dev = unsafe { qemu_exit::X86::new(DEBUG_EXIT_PORT, (SUCCESS_CODE << 1) | 1) };
    match status {
        ExitStatus::Success => dev.exit_success(),
        // The crate's own exit_failure writes 0, which QEMU turns into 1,
        // indistinguishable from a QEMU error: write our code instead.
        ExitStatus::Failure => dev.exit(FAILURE_CODE),
    }
}
