//! Passes the linker script of the target architecture (and, on MIPS64, of
//! the board: feature `board-octeon`) to the final link, sets
//! `cfg(samara_tasks)` where the arch port implements the task contract
//! (keep in sync with arch/build.rs), and embeds the user programs.
//!
//! The scripts live in `linker/` at the workspace root; the path is made
//! absolute so it does not depend on the directory rustc runs in, and the
//! directory is a library search path so that scripts can INCLUDE shared
//! parts (`mips64-kernel.ld`).
//!
//! User programs: xtask builds `kernel/user` first and passes the directory
//! of its binaries in `SAMARA_USER_DIR`; this script writes
//! `$OUT_DIR/user_programs.rs`, a table of `include_bytes!` of every
//! program found there. Without the variable (a kernel built by plain
//! cargo, or an arch whose programs xtask does not build yet) the table is
//! empty and a workload says which program is missing.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The programs a kernel embeds when they exist.
const PROGRAMS: &[&str] = &["hello", "faultstorm", "forkbomb", "segv", "tlbcheck"];

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch == "x86_64" || arch == "mips64" {
        println!("cargo:rustc-cfg=samara_tasks");
    }
    user_programs();
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

fn user_programs() {
    println!("cargo:rerun-if-env-changed=SAMARA_USER_DIR");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut table = String::from(
        "/// (name, ELF image) of every embedded user program.\n\
         pub static PROGRAMS: &[(&str, &[u8])] = &[\n",
    );
    if let Some(dir) = std::env::var_os("SAMARA_USER_DIR") {
        let dir = PathBuf::from(dir);
        for p in PROGRAMS {
            let f = dir.join(p);
            println!("cargo:rerun-if-changed={}", f.display());
            if f.is_file() {
                let _ = writeln!(
                    table,
                    "    ({p:?}, include_bytes!({:?})),",
                    f.display().to_string()
                );
            }
        }
    }
    table.push_str("];\n");
    std::fs::write(out.join("user_programs.rs"), table).expect("cannot write user_programs.rs");
}
