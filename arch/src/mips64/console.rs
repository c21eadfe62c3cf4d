//! The boot console: the board's UART (`board::uart`), polled, plus
//! `arch_println!` for the arch layer's own messages.
//!
//! | board  | UART                                           | set up by      |
//! |--------|------------------------------------------------|----------------|
//! | Malta  | PIIX4 COM1, a 16550 with byte registers (CKSEG1) | [`init`]: 115200 8N1 |
//! | Octeon | MIO UART0, 64-bit CSRs at an 8-byte stride (XKPHYS I/O) | U-Boot: its divisor is kept |

pub use super::board::uart::{init, write_bytes};

/// `println!` for the arch layer's own messages (boot errors, exception
/// dumps), through [`crate::RawWriter`]: `\n` becomes `\r\n`, no lock is
/// taken (like the kernel's emergency writer).
macro_rules! arch_println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::RawWriter($crate::imp::console::write_bytes), $($arg)*);
    }};
}
pub(crate) use arch_println;
