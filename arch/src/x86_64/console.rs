//! COM1: a polled 16550 UART at I/O port 0x3f8, 115200 8N1.
//!
//! No interrupts, no locking: the kernel serialises writers (see
//! `kernel/src/console.rs`). QEMU's 16550 never holds THR busy for long, but
//! real hardware does, so each byte waits for THR-empty with a bounded spin
//! (a dead UART must not hang the kernel; the byte is dropped instead).

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;

// Register offsets from the base port (DLAB = 0 unless noted).
const THR: u16 = 0; // transmit holding (write)
const DLL: u16 = 0; // divisor latch low (DLAB = 1)
const IER: u16 = 1; // interrupt enable
const DLM: u16 = 1; // divisor latch high (DLAB = 1)
const FCR: u16 = 2; // FIFO control (write)
const LCR: u16 = 3; // line control
const MCR: u16 = 4; // modem control
const LSR: u16 = 5; // line status

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const FCR_ENABLE_CLEAR: u8 = 0x07; // enable FIFOs, clear RX and TX
const MCR_DTR_RTS: u8 = 0x03;
const LSR_THRE: u8 = 0x20; // transmit holding register empty

/// Spins per byte before giving up on a UART that never drains.
const THRE_SPINS: u32 = 100_000;

fn outb(reg: u16, val: u8) {
    let mut port = Port::<u8>::new(COM1 + reg);
    // SAFETY: COM1 is the 16550 that every PC-compatible QEMU machine decodes at 0x3f8; writing its registers has no memory side effects.
    unsafe { port.write(val) }
}

fn inb(reg: u16) -> u8 {
    let mut port = Port::<u8>::new(COM1 + reg);
    // SAFETY: as in `outb`; reading LSR has no side effects we rely on.
    unsafe { port.read() }
}

/// Programs COM1 for 115200 8N1 with FIFOs and no interrupts.
pub fn init() {
    outb(IER, 0);
    outb(LCR, LCR_DLAB);
    outb(DLL, 1); // 115200 / 1
    outb(DLM, 0);
    outb(LCR, LCR_8N1);
    outb(FCR, FCR_ENABLE_CLEAR);
    outb(MCR, MCR_DTR_RTS);
}

/// Writes raw bytes (no newline translation: the kernel's console does that).
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        let mut spins = 0;
        while inb(LSR) & LSR_THRE == 0 && spins < THRE_SPINS {
            core::hint::spin_loop();
            spins += 1;
        }
        outb(THR, b);
    }
}
