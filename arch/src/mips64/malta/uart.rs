//! The Malta console: the PIIX4 super-I/O's COM1, a 16550 UART.
//!
//! The south bridge decodes ISA I/O port 0x3f8 at physical 0x1800_03f8 (the
//! GT-64120 maps PCI I/O space at 0x1800_0000). Its registers are bytes at
//! consecutive addresses, so byte loads and stores need no endian swapping
//! on this big-endian board. We reach them through CKSEG1 (unmapped,
//! uncached), so the console works before and regardless of any TLB state.
//!
//! No interrupts, no locking: the kernel serialises writers. Each byte waits
//! for THR-empty with a bounded spin, so a dead UART drops output instead of
//! hanging the kernel.

use core::ptr::{read_volatile, write_volatile};

/// COM1 through CKSEG1: 0xffff_ffff_a000_0000 + physical 0x1800_03f8.
const COM1: usize = 0xffff_ffff_b800_03f8;

// Register offsets (DLAB = 0 unless noted).
const THR: usize = 0; // transmit holding (write)
const DLL: usize = 0; // divisor latch low (DLAB = 1)
const IER: usize = 1; // interrupt enable
const DLM: usize = 1; // divisor latch high (DLAB = 1)
const FCR: usize = 2; // FIFO control (write)
const LCR: usize = 3; // line control
const MCR: usize = 4; // modem control
const LSR: usize = 5; // line status

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const FCR_ENABLE_CLEAR: u8 = 0x07;
const MCR_DTR_RTS: u8 = 0x03;
const LSR_THRE: u8 = 0x20;

/// Spins per byte before giving up on a UART that never drains.
const THRE_SPINS: u32 = 100_000;

fn write_reg(reg: usize, v: u8) {
    // SAFETY: COM1's registers are MMIO bytes at this CKSEG1 address on every Malta (and in QEMU's model); CKSEG1 is unmapped, so the store cannot fault, and writing UART registers touches no memory.
    unsafe { write_volatile((COM1 + reg) as *mut u8, v) }
}

fn read_reg(reg: usize) -> u8 {
    // SAFETY: as in `write_reg`; reading LSR has no side effects we rely on.
    unsafe { read_volatile((COM1 + reg) as *const u8) }
}

/// Programs COM1 for 115200 8N1 (1.8432 MHz clock / 16 / 1) with FIFOs and
/// no interrupts.
pub fn init() {
    write_reg(IER, 0);
    write_reg(LCR, LCR_DLAB);
    write_reg(DLL, 1);
    write_reg(DLM, 0);
    write_reg(LCR, LCR_8N1);
    write_reg(FCR, FCR_ENABLE_CLEAR);
    write_reg(MCR, MCR_DTR_RTS);
}

/// Writes raw bytes (no newline translation: the kernel's console does that).
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        let mut spins = 0;
        while read_reg(LSR) & LSR_THRE == 0 && spins < THRE_SPINS {
            core::hint::spin_loop();
            spins += 1;
        }
        write_reg(THR, b);
    }
}
