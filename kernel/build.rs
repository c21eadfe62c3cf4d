//! Passes the linker script of the target architecture to the final link.
//!
//! The scripts live in `linker/` at the workspace root; the path is made
//! absolute so it does not depend on the directory rustc runs in.

use std::path::PathBuf;

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let script = match arch.as_str() {
        "x86_64" => "x86_64.ld",
        "mips64" => "mips64-malta.ld",
        // Host builds (e.g. `cargo check` without --target) link nothing.
        _ => return,
    };
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let path = dir.join("..").join("linker").join(script);
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-link-arg-bins=-T{}", path.display());
}
