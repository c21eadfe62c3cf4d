//! UHI (Unified Hosting Interface) semihosting calls, as QEMU implements
//! them under `-semihosting`: `sdbbp 1` with the operation in t9 ($25) and
//! arguments in a0..a3; results come back in v0 ($2) and v1 ($3, errno).
//!
//! Only call these when the host is known to be there: QEMU sets a0 = -1 at
//! entry under `-semihosting` (xtask always passes the flag), and the boot
//! code records that in [`present`]. Without a host, `sdbbp` raises a debug
//! exception into the boot ROM, which runs off into the weeds.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use boot::malta::HostArgs;

/// UHI operation numbers (QEMU `target/mips/tcg/system/mips-semi.c`).
pub mod op {
    pub const EXIT: u64 = 1;
    pub const ARGC: u64 = 9;
    pub const ARGNLEN: u64 = 10;
    pub const ARGN: u64 = 11;
}

/// Whether the boot loader said a UHI host is present (a0 = -1 at entry).
/// Set once by the boot CPU before anything else runs; Relaxed suffices
/// because every reader runs after it on the boot CPU, or on a CPU released
/// later through the Release/Acquire handshake in `smp`.
static PRESENT: AtomicBool = AtomicBool::new(false);

/// Records whether a UHI host is present. Called once at boot.
pub fn set_present(present: bool) {
    PRESENT.store(present, Ordering::Relaxed);
}

/// Whether a UHI host answers `sdbbp 1`.
pub fn present() -> bool {
    PRESENT.load(Ordering::Relaxed)
}

/// Performs UHI operation `op` with arguments `a0`, `a1` and returns v0.
///
/// # Safety
/// The host must be present (see the module comment), and any pointer
/// argument must be valid for what the operation does with it (`ARGN`
/// writes the argument and its NUL to the buffer at `a1`).
pub unsafe fn call(op: u64, a0: u64, a1: u64) -> u64 {
    let v0: u64;
    // SAFETY: per the function's contract. QEMU's UHI handler reads $25, $4 and $5, may write through the pointer the contract covers, and writes only $2 and $3.
    unsafe {
        asm!(
            "sdbbp 1",
            in("$25") op,
            in("$4") a0,
            in("$5") a1,
            lateout("$2") v0,
            lateout("$3") _,
            options(nostack),
        )
    };
    v0
}

/// The host's argument vector (`-append` split at spaces, after the kernel
/// path), through UHI `argc`/`argnlen`/`argn`. Unlike the Malta boot
/// loader's table it is not truncated to 255 bytes.
pub struct Args;

impl HostArgs for Args {
    fn count(&self) -> Option<usize> {
        // SAFETY: ARGC takes no pointer; the caller only builds `Args` when a0 = -1 says the host is present.
        let n = unsafe { call(op::ARGC, 0, 0) } as i64;
        usize::try_from(n).ok()
    }

    fn get(&self, n: usize, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: ARGNLEN takes no pointer; host present as above.
        let len = unsafe { call(op::ARGNLEN, n as u64, 0) } as i64;
        let len = usize::try_from(len).ok()?;
        if len >= buf.len() {
            return None;
        }
        // SAFETY: the host writes `len + 1 <= buf.len()` bytes (the argument and its NUL) to `buf`, which is valid for writes and exclusively borrowed for the duration of the call.
        let r = unsafe { call(op::ARGN, n as u64, buf.as_mut_ptr() as u64) };
        (r == 0).then_some(len)
    }
}
