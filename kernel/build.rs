//! Passes the linker script of the target architecture (and, on MIPS64, of
//! the board: feature `board-octeon`) to the final link.
//!
//! The scripts live in `linker/` at the workspace root; the path is made
//! absolute so it does not depend on the directory rustc runs in, and the
//! directory is a library search path so that scripts can INCLUDE shared
//! parts (`mips64-kernel.ld`).

use std::path::PathBuf;

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let script = match arch.as_str() {
        "x86_64" => "x86_64.ld",
        "mips64" if std::env::var_os("CARGO_FEATURE_BOARD_OCTEON").is_some() => "mips64-octeon.ld",
        "mips64" => "mips64-malta.ld",
        // Host builds (e.g. `cargo check` without --target) link nothing.
        _ => return,
    };
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let linker = dir.join("..").join("linker");
    let path = linker.join(script);
    println!("cargo:rerun-if-changed={}", linker.display());
    println!("cargo:rustc-link-arg-bins=-L{}", linker.display());
    println!("cargo:rustc-link-arg-bins=-T{}", path.display());
}
