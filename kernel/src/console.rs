//! The kernel console: `print!`/`println!` over the arch console.
//!
//! One lock serialises whole `print!` calls so lines from different CPUs do
//! not interleave. The panic and fault paths must print even if the CPU died
//! while holding it, so they use [`emergency_writer`] instead.

use core::fmt::{self, Write};

use spin::Mutex;

/// Turns `\n` into `\r\n` for serial terminals.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, line) in s.split('\n').enumerate() {
            if i > 0 {
                arch::console::write_bytes(b"\r\n");
            }
            arch::console::write_bytes(line.as_bytes());
        }
        Ok(())
    }
}

/// Held for the duration of one `print!`. Lock order: leaf (nothing is
/// acquired while holding it; exceptions raised while it is held go through
/// `emergency_writer`, which does not take it).
static LOCK: Mutex<()> = Mutex::new(());

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let _ = Console.write_fmt(args);
}

/// A writer for the panic and fault paths: never blocks on [`LOCK`]. Output
/// may interleave with a `print!` that the failing CPU interrupted, which is
/// better than deadlocking on the lock that CPU holds.
pub fn emergency_writer() -> Console {
    Console
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
