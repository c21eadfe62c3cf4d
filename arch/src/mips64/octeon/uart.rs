//! The Octeon console: MIO UART0, a 16550-compatible UART whose registers
//! are 64-bit CSRs at an 8-byte stride in I/O space.
//!
//! Addresses (Octeon HRM "MIO UART"; `CVMX_MIO_UARTX_*` in the SDK's
//! `cvmx-mio-defs.h`): UART0 at physical 0x1_1800_0000_0800 (bit 48 set: an
//! I/O address), LSR at +0x28, THR at +0x40 (a write-only port of its own,
//! not shared with RBR/DLL at +0x00). Linux's `prom_putchar`
//! (`arch/mips/cavium-octeon/setup.c`) polls LSR bit 5 (THRE) and writes the
//! byte to THR with 64-bit CSR accesses; so does this driver.
//!
//! The registers are reached through XKPHYS with cache attribute 0
//! (uncached): 0x8000_0000_0000_0000 | physical. That needs Status.KX,
//! which `_start` sets before anything else.
//!
//! [`init`] changes nothing: U-Boot has programmed the divisor for its own
//! console (115200 8N1 on every board Samara targets) and the kernel keeps
//! it, so the same terminal shows both.

use core::ptr::{read_volatile, write_volatile};

/// UART0 through XKPHYS, uncached.
const UART0: u64 = 0x8001_1800_0000_0800;
/// Line status register.
const LSR: u64 = 0x28;
/// Transmit holding register.
const THR: u64 = 0x40;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THRE: u64 = 0x20;

/// Spins per byte before giving up on a UART that never drains (a dead
/// console drops output instead of hanging the kernel).
const THRE_SPINS: u32 = 1_000_000;

fn csr_read(reg: u64) -> u64 {
    // SAFETY: UART0's LSR is a 64-bit CSR at this XKPHYS I/O address on every Octeon (CN3xxx..CN7xxx); Status.KX is set, so the access is a plain uncached load that cannot fault, and reading LSR only reports status.
    unsafe { read_volatile((UART0 + reg) as *const u64) }
}

fn csr_write(reg: u64, v: u64) {
    // SAFETY: as in `csr_read`; THR is the UART's write-only transmit register and writing it touches no memory.
    unsafe { write_volatile((UART0 + reg) as *mut u64, v) }
}

/// Keeps U-Boot's settings (see the module comment).
pub fn init() {}

/// Writes raw bytes (no newline translation: the kernel's console does that).
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        let mut spins = 0;
        while csr_read(LSR) & LSR_THRE == 0 && spins < THRE_SPINS {
            core::hint::spin_loop();
            spins += 1;
        }
        csr_write(THR, u64::from(b));
    }
}
