//! The kernel console: `print!`/`println!` over the arch console.
//!
//! One lock serialises whole `print!` calls so lines from different CPUs do
//! not interleave. It is `mm`'s spin lock, whose spin loop services TLB
//! shootdowns (a CPU waiting to print must not hold up one). The panic and
//! fault paths must print even if the CPU died while holding it, so they
//! use [`emergency_writer`] instead.

use core::fmt::{self, Write};

use mm::sync::{SpinLock, SpinLockGuard};

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
static LOCK: SpinLock<Console> = SpinLock::new(Console);

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = LOCK.lock().write_fmt(args);
}

/// The console, locked: for messages written in several pieces.
#[cfg_attr(not(samara_tasks), allow(dead_code))]
pub fn lock() -> SpinLockGuard<'static, Console> {
    LOCK.lock()
}

/// Writes bytes from a user program: `\n` becomes `\r\n`, and bytes that
/// are not printable ASCII (other than newline and tab) become `?`, so a
/// program cannot send escape sequences to the host terminal.
#[cfg_attr(not(samara_tasks), allow(dead_code))]
pub fn write_user(bytes: &[u8]) {
    let _g = LOCK.lock();
    let mut buf = [0u8; 64];
    let mut n = 0;
    for &b in bytes {
        let out: &[u8] = match b {
            b'\n' => b"\r\n",
            b'\t' | 0x20..=0x7e => core::slice::from_ref(&b),
            _ => b"?",
        };
        if n + out.len() > buf.len() {
            arch::console::write_bytes(&buf[..n]);
            n = 0;
        }
        buf[n..n + out.len()].copy_from_slice(out);
        n += out.len();
    }
    arch::console::write_bytes(&buf[..n]);
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
