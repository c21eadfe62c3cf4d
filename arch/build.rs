//! Sets `cfg(samara_tasks)` for the architectures whose port implements the
//! task contract (arch/src/lib.rs, "Contract for tasks"). Keep the list in
//! sync with kernel/build.rs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch == "x86_64" || arch == "mips64" {
        println!("cargo:rustc-cfg=samara_tasks");
    }
}
