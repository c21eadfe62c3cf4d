//! The Linux anchor: a Debian kernel booted in the same QEMU machine as
//! Samara (same machine type, firmware, CPU model, accelerator, CPUs and
//! memory: [`crate::qemu::qemu_args`] builds both command lines), with an
//! initramfs whose `/init` is `tests/linux-anchor` — the same workloads
//! through real Linux syscalls, printing the same `samara: bench:` lines.
//!
//! The kernel is Debian's `linux-image-amd64`, newest version apt knows
//! (on bookworm with backports configured: 6.12, which has per-VMA locking;
//! bookworm's own 6.1 predates it — per-VMA locking landed in 6.4). xtask
//! fetches the package with `apt-get download` and unpacks only `/boot`
//! with `dpkg-deb` into `target/linux/` (no root install), once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bench_cpio::{self, Entry};
use crate::bench_guest::GuestResults;
use crate::qemu::{self, Machine, Outcome, RunSpec};
use crate::{workspace_root, Arch, Error, Result};

/// The Debian metapackage that names the current kernel image package.
pub const META_PACKAGE: &str = "linux-image-amd64";

/// The first Linux release with per-VMA locking (`CONFIG_PER_VMA_LOCK`).
const PER_VMA_LOCK_SINCE: (u32, u32, u32) = (6, 4, 0);

/// Where downloaded kernels are unpacked: `target/linux/<package>/boot/`.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("linux")
}

/// A bootable Linux kernel and what is known about it.
#[derive(Debug, Clone)]
pub struct LinuxKernel {
    pub image: PathBuf,
    /// `uname -r` as the file name says (`vmlinuz-<release>`), or "custom".
    pub release: String,
    /// The Debian package it came from.
    pub package: Option<String>,
    /// `CONFIG_PER_VMA_LOCK` from the `config-<release>` next to the image.
    pub per_vma_lock: Option<bool>,
    /// `CONFIG_PER_VMA_LOCK_STATS`: whether /proc/vmstat has the counters.
    pub per_vma_lock_stats: Option<bool>,
}

impl LinuxKernel {
    fn from_image(image: PathBuf, package: Option<String>) -> LinuxKernel {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let release = name
            .strip_prefix("vmlinuz-")
            .map_or_else(|| "custom".to_string(), str::to_string);
        let config = image.with_file_name(format!("config-{release}"));
        let config = std::fs::read_to_string(config).ok();
        let option = |key: &str| config.as_deref().map(|c| kconfig_enabled(c, key));
        LinuxKernel {
            per_vma_lock: option("CONFIG_PER_VMA_LOCK"),
            per_vma_lock_stats: option("CONFIG_PER_VMA_LOCK_STATS"),
            image,
            release,
            package,
        }
    }

    /// "Linux 6.12.95+deb12-amd64 (Debian linux-image-..., per-VMA locking: yes)".
    pub fn describe(&self) -> String {
        let pvl = match self.per_vma_lock {
            Some(true) => "per-VMA locking: yes (CONFIG_PER_VMA_LOCK=y)",
            Some(false) => "per-VMA locking: no (CONFIG_PER_VMA_LOCK unset; it landed in 6.4)",
            None => "per-VMA locking: unknown (no config file next to the image)",
        };
        match &self.package {
            Some(p) => format!("Linux {} (Debian package {p}; {pvl})", self.release),
            None => format!("Linux {} ({}; {pvl})", self.release, self.image.display()),
        }
    }
}

/// `KEY=y` is present in a kconfig file.
fn kconfig_enabled(config: &str, key: &str) -> bool {
    config
        .lines()
        .any(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')) == Some("y"))
}

/// `(major, minor, patch)` of an image package name such as
/// `linux-image-6.12.95+deb12-amd64`.
fn package_kernel_version(pkg: &str) -> Option<(u32, u32, u32)> {
    let v = pkg.strip_prefix("linux-image-")?;
    let v = v.split(['+', '-']).next()?;
    let mut it = v.split('.').map(|n| n.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// From `apt-cache show linux-image-amd64` (one stanza per version known to
/// apt), the image package with the newest kernel.
pub fn newest_image_package(apt_cache_show: &str) -> Option<String> {
    apt_cache_show
        .lines()
        .filter_map(|l| l.strip_prefix("Depends:"))
        .flat_map(|deps| deps.split(','))
        .filter_map(|d| d.split_whitespace().next())
        .filter(|p| package_kernel_version(p).is_some())
        .max_by_key(|p| package_kernel_version(p))
        .map(str::to_string)
}

/// A cached unpacked package: `target/linux/<pkg>/boot/vmlinuz-*`.
fn cached_image(pkg_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(pkg_dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

fn run_captured(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel to boot: `custom` if given, else the newest cached Debian
/// kernel, else the newest one apt knows, downloaded now.
pub fn kernel(custom: Option<&Path>) -> Result<LinuxKernel> {
    if let Some(p) = custom {
        if !p.is_file() {
            return Err(Error::new(format!(
                "--linux-kernel {}: no such file",
                p.display()
            )));
        }
        return Ok(LinuxKernel::from_image(p.to_path_buf(), None));
    }
    let skip_hint = "(`--only` without `linux` skips the Linux anchor; \
                     `--linux-kernel PATH` boots a bzImage of your own)";
    let which = |tool: &str| {
        crate::install::which(tool).ok_or_else(|| {
            Error::new(format!(
                "the Linux anchor needs a Debian kernel package, fetched with apt-get and \
                 unpacked with dpkg-deb, but `{tool}` is not installed {skip_hint}"
            ))
        })
    };
    let apt_cache = which("apt-cache");
    let pkg = match apt_cache.and_then(|ac| {
        run_captured(
            Command::new(ac).args(["show", META_PACKAGE]),
            "apt-cache show",
        )
    }) {
        Ok(text) => newest_image_package(&text),
        Err(e) => {
            // Offline or not Debian: a kernel fetched earlier still works.
            if let Some(k) = newest_cached() {
                println!("xtask: note: {e}; using the cached {}", k.release);
                return Ok(k);
            }
            return Err(e);
        }
    };
    let Some(pkg) = pkg else {
        return Err(Error::new(format!(
            "apt-cache knows no {META_PACKAGE} package with a kernel image dependency \
             (run apt-get update?) {skip_hint}"
        )));
    };
    if package_kernel_version(&pkg).is_some_and(|v| v < PER_VMA_LOCK_SINCE) {
        println!(
            "xtask: note: the newest kernel apt knows is {pkg}, older than 6.4: no per-VMA \
             locking in the anchor (on Debian 12, enable bookworm-backports for 6.12)"
        );
    }
    let dir = cache_dir().join(&pkg);
    if let Some(image) = cached_image(&dir) {
        return Ok(LinuxKernel::from_image(image, Some(pkg)));
    }
    let (apt_get, dpkg_deb, tar) = (which("apt-get")?, which("dpkg-deb")?, which("tar")?);
    let download = cache_dir().join("download");
    std::fs::create_dir_all(&download)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", download.display())))?;
    println!(
        "xtask: the Linux anchor boots Debian's kernel: downloading {pkg} with apt-get \
         (~100 MB, once; unpacked to {}) {skip_hint}",
        dir.display()
    );
    crate::bench::status_ok(
        Command::new(apt_get)
            .args(["download", &pkg])
            .current_dir(&download),
        &format!("apt-get download {pkg}"),
    )?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| Error::new(format!("cannot list {}: {e}", download.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")
            })
        })
        .ok_or_else(|| Error::new(format!("apt-get download left no {pkg}_*.deb")))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    // Only /boot (image, config, System.map): the modules are 400 MB and
    // the anchor needs none (serial console and initramfs are built in).
    let mut unpack = Command::new(dpkg_deb)
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run dpkg-deb: {e}")))?;
    let tar_status = Command::new(tar)
        .arg("-x")
        .arg("-C")
        .arg(&dir)
        .args(["--wildcards", "./boot/*"])
        .stdin(unpack.stdout.take().expect("stdout is piped"))
        .status()
        .map_err(|e| Error::new(format!("cannot run tar: {e}")))?;
    let dpkg_status = unpack
        .wait()
        .map_err(|e| Error::new(format!("cannot wait for dpkg-deb: {e}")))?;
    if !tar_status.success() || !dpkg_status.success() {
        return Err(Error::new(format!(
            "unpacking {} failed (dpkg-deb {dpkg_status}, tar {tar_status})",
            deb.display()
        )));
    }
    let _ = std::fs::remove_file(&deb);
    let image =
        cached_image(&dir).ok_or_else(|| Error::new(format!("{pkg} holds no /boot/vmlinuz-*")))?;
    Ok(LinuxKernel::from_image(image, Some(pkg)))
}

/// The newest kernel already unpacked under [`cache_dir`].
fn newest_cached() -> Option<LinuxKernel> {
    std::fs::read_dir(cache_dir())
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pkg = e.file_name().to_string_lossy().into_owned();
            let v = package_kernel_version(&pkg)?;
            Some((v, pkg, cached_image(&e.path())?))
        })
        .max_by_key(|(v, _, _)| *v)
        .map(|(_, pkg, image)| LinuxKernel::from_image(image, Some(pkg)))
}

/// Target of the anchor: the host's own, statically linked.
const ANCHOR_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds tests/linux-anchor as a static executable and checks it is one.
pub fn build_anchor() -> Result<PathBuf> {
    let target_dir = workspace_root().join("target").join("linux-anchor");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "-p", "linux-anchor", "--target"])
        .arg(ANCHOR_TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        // With --target, RUSTFLAGS reach only the target's crates, not
        // build scripts: glibc's static archives (libc6-dev) are linked in.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    crate::bench::status_ok(
        &mut cmd,
        "cargo build --release -p linux-anchor (static, x86_64-unknown-linux-gnu)",
    )?;
    let exe = target_dir
        .join(ANCHOR_TARGET)
        .join("release")
        .join("linux-anchor");
    let bytes = std::fs::read(&exe)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", exe.display())))?;
    check_static(&bytes).map_err(|e| Error::new(format!("{}: {e}", exe.display())))?;
    Ok(exe)
}

/// An x86_64 ELF executable with no program interpreter (`PT_INTERP`): it
/// runs as `/init` with nothing else in the file system.
pub fn check_static(elf: &[u8]) -> std::result::Result<(), String> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 || u16::from_le_bytes([elf[18], elf[19]]) != 62 {
        return Err("not a little-endian ELF64 x86_64 file".into());
    }
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54), u16_at(56));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let ty = elf
            .get(off..off + 4)
            .ok_or("program headers run past the end of the file")?;
        if u32::from_le_bytes(ty.try_into().expect("4 bytes")) == PT_INTERP {
            return Err(
                "dynamically linked (has PT_INTERP): glibc's static libraries \
                        (libc6-dev) are needed for +crt-static"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The initramfs: `/init` (the anchor), `/dev/console` (Linux opens it for
/// init's stdin/stdout/stderr before devtmpfs exists), mount points.
pub fn initramfs(anchor: &[u8]) -> Result<Vec<u8>> {
    let entries = [
        Entry::dir("dev"),
        Entry::char_dev("dev/console", 0o600, 5, 1),
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::file("init", 0o755, anchor.to_vec()),
    ];
    bench_cpio::archive(&entries).map_err(Error::new)
}

/// The Linux command line: serial console, quiet, a kernel panic ends QEMU
/// (`-no-reboot`), no transparent huge pages (Debian's default is
/// `always`, which would turn most of faultstorm's 4 KiB faults into a few
/// 2 MiB ones: Samara maps 4 KiB pages), then the anchor's parameters,
/// which Linux passes on to init as environment variables.
pub fn kernel_cmdline(params: &[(String, String)]) -> String {
    let mut s = String::from("console=ttyS0 quiet panic=-1 transparent_hugepage=never");
    for (k, v) in params {
        s.push_str(&format!(" anchor_{k}={v}"));
    }
    s
}

/// One boot of the anchor.
pub struct AnchorRun {
    pub results: GuestResults,
    /// The console output (the anchor also logs Linux's mitigations).
    pub output: String,
    pub elapsed: Duration,
}

/// Boots `kernel` with the anchor's initramfs on `machine`.
pub fn run(
    kernel: &LinuxKernel,
    initramfs: &Path,
    machine: &Machine,
    params: &[(String, String)],
    log: PathBuf,
    timeout: Duration,
) -> Result<AnchorRun> {
    let cmdline = kernel_cmdline(params);
    let spec = RunSpec {
        arch: Arch::X86_64,
        image: &kernel.image,
        kernel_args: &cmdline,
        machine,
        log,
        timeout: Some(timeout),
        echo: false,
    };
    let extra: Vec<OsString> = vec!["-initrd".into(), initramfs.into()];
    let report = qemu::run_with(&spec, &extra)?;
    if report.outcome != Outcome::Pass {
        let tail: Vec<&str> = report.output.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::new(format!(
            "Linux anchor run: {}; serial log {}; last lines:\n{}",
            report.outcome.describe(Some(timeout)),
            report.log.display(),
            tail.join("\n")
        )));
    }
    let results = GuestResults::from_output(&report.output).map_err(|e| {
        Error::new(format!(
            "Linux anchor run: {e} (serial log {})",
            report.log.display()
        ))
    })?;
    Ok(AnchorRun {
        results,
        output: report.output,
        elapsed: report.elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_kernel_package() {
        let show = "Package: linux-image-amd64\nVersion: 6.12.95-1~bpo12+1\n\
                    Depends: linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)\n\n\
                    Package: linux-image-amd64\nVersion: 6.1.192-2\n\
                    Depends: linux-image-6.1.0-41-amd64 (= 6.1.192-2)\n\n\
                    Package: linux-image-amd64\nVersion: 6.1.176-1\n\
                    Depends: linux-image-6.1.0-37-amd64 (= 6.1.176-1), kmod\n";
        assert_eq!(
            newest_image_package(show).as_deref(),
            Some("linux-image-6.12.95+deb12-amd64")
        );
        assert_eq!(
            package_kernel_version("linux-image-6.1.0-41-amd64"),
            Some((6, 1, 0))
        );
        assert_eq!(package_kernel_version("kmod"), None);
        assert_eq!(newest_image_package("Package: x\n"), None);
    }

    #[test]
    fn reads_kconfig_options() {
        let c = "CONFIG_PER_VMA_LOCK=y\n# CONFIG_PER_VMA_LOCK_STATS is not set\n";
        assert!(kconfig_enabled(c, "CONFIG_PER_VMA_LOCK"));
        assert!(!kconfig_enabled(c, "CONFIG_PER_VMA_LOCK_STATS"));
        assert!(!kconfig_enabled(
            "CONFIG_PER_VMA_LOCK_STATSX=y",
            "CONFIG_PER_VMA_LOCK_STATS"
        ));
    }

    #[test]
    fn recognises_static_executables() {
        // This test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_static(&me).unwrap_err().contains("PT_INTERP"));
        assert!(check_static(b"#!/bin/sh\n").is_err());
        // A minimal static ELF64 header with no program headers.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        (elf[4], elf[5], elf[18]) = (2, 1, 62);
        assert_eq!(check_static(&elf), Ok(()));
    }

    #[test]
    fn initramfs_holds_init_and_the_console() {
        let a = initramfs(b"\x7fELF...").unwrap();
        let e = bench_cpio::parse(&a).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "proc", "sys", "init"]);
        assert_eq!(e[1].rdev, (5, 1));
        assert_eq!(e[4].mode, bench_cpio::S_IFREG | 0o755);
    }

    #[test]
    fn parameters_reach_init_as_environment() {
        let c = kernel_cmdline(&[("pages".into(), "8".into())]);
        assert!(c.starts_with("console=ttyS0 "));
        assert!(c.contains("transparent_hugepage=never"));
        assert!(c.ends_with(" anchor_pages=8"));
    }
}
