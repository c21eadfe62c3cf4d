//! Samara's host build tool, as a library: kernel builds, QEMU runs, the
//! QEMU installer, and booting Octeon boards through U-Boot (`flash`,
//! `serial`, `elf`). The `xtask` binary (`cargo xtask ...`) is the command line
//! over it; the `qemu-tests` integration tests use the same functions, so a
//! kernel is built and booted exactly one way.

pub mod arch;
pub mod bench;
pub mod bench_cpio;
pub mod bench_criterion;
pub mod bench_guest;
pub mod bench_linux;
pub mod bench_plot;
pub mod bench_shared;
pub mod bench_vm;
pub mod build;
pub mod elf;
pub mod flash;
pub mod install;
pub mod qemu;
pub mod serial;
pub mod summary;

use std::path::PathBuf;

pub use arch::{Arch, Board};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Where xtask keeps kernel images and serial logs: `target/samara/`.
pub fn output_dir() -> PathBuf {
    workspace_root().join("target").join("samara")
}

/// An error worth one line to the user; `Display` says what failed and,
/// where there is one, which log to read.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
