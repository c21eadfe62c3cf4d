//! Finding QEMU, and installing it on Debian/Ubuntu when it is missing.
//!
//! As root on a Debian-like system the package is installed with apt-get
//! (after saying so). Debian 12 machines that carry `qemu-utils` from
//! bookworm-backports cannot install bookworm's own qemu-system 7.2 next to
//! it, so when the plain install fails the backports suite is enabled and the
//! install retried from there. Anywhere else the exact command is printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Arch, Error, Result};

/// `name` found in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\t<real>\t<effective>\t...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `(ID, ID_LIKE, VERSION_CODENAME)` from /etc/os-release.
fn os_release() -> (String, String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("ID"), get("ID_LIKE"), get("VERSION_CODENAME"))
}

fn apt(args: &[&str]) -> bool {
    println!("xtask: + apt-get {}", args.join(" "));
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

/// The QEMU binary for `arch`, installing its package first if needed and
/// possible.
pub fn ensure_qemu(arch: Arch) -> Result<PathBuf> {
    let bin = arch.qemu_binary();
    if let Some(p) = which(bin) {
        return Ok(p);
    }
    let pkg = arch.qemu_package();
    let (id, id_like, codename) = os_release();
    let debian_like = id == "debian" || id == "ubuntu" || id_like.contains("debian");
    if !debian_like {
        return Err(Error::new(format!(
            "{bin} not found in PATH. Install QEMU's {arch} system emulator with your \
             package manager (Debian/Ubuntu: `sudo apt-get install {pkg}`; Fedora: \
             `sudo dnf install {bin}`), then retry."
        )));
    }
    if !is_root() || which("apt-get").is_none() {
        return Err(Error::new(format!(
            "{bin} not found in PATH. Install it with:\n    sudo apt-get update && sudo apt-get install -y {pkg}"
        )));
    }
    println!("xtask: {bin} not found; installing the Debian package {pkg} with apt-get (running as root)");
    if apt(&["update"])
        && apt(&["install", "-y", "--no-install-recommends", pkg])
        && which(bin).is_some()
    {
        return which(bin).ok_or_else(|| Error::new(format!("{bin} still missing after install")));
    }
    if !codename.is_empty() {
        // Typically qemu-utils from backports blocks the stable qemu-system.
        let suite = format!("{codename}-backports");
        let list = Path::new("/etc/apt/sources.list.d").join(format!("{suite}.list"));
        println!(
            "xtask: plain install failed; enabling {suite} in {} and retrying from there",
            list.display()
        );
        let line = if id == "ubuntu" {
            format!("deb http://archive.ubuntu.com/ubuntu {suite} main universe\n")
        } else {
            format!("deb http://deb.debian.org/debian {suite} main\n")
        };
        if !list.exists() {
            std::fs::write(&list, line)
                .map_err(|e| Error::new(format!("cannot write {}: {e}", list.display())))?;
        }
        if apt(&["update"])
            && apt(&[
                "install",
                "-y",
                "--no-install-recommends",
                "-t",
                &suite,
                pkg,
            ])
        {
            if let Some(p) = which(bin) {
                return Ok(p);
            }
        }
    }
    Err(Error::new(format!(
        "could not install {pkg}; install it by hand:\n    apt-get update && apt-get install -y {pkg}\n\
         (on Debian 12 with backports' qemu-utils: apt-get install -y -t bookworm-backports {pkg})"
    )))
}
