//! Building the kernel for one configuration (arch x profile x features).
//!
//! Kernel builds use their own target directory, `target/kernel/`, so that
//! host builds (xtask, host tests, clippy) and kernel builds never invalidate
//! each other, and so that a kernel build started from inside `cargo test`
//! (the `qemu-tests` integration tests) never waits on the lock of the
//! target directory that the outer cargo holds. Each finished image is copied
//! to `target/samara/<config>/samara.elf`, so images of different
//! configurations exist side by side.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{output_dir, workspace_root, Arch, Board, Error, Result};

/// The MIPS64 target spec (Octeon, n64, big endian, soft-float, os = none).
pub const MIPS64_TARGET_SPEC: &str = "linker/mips64-samara-none.json";

/// One kernel configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    pub arch: Arch,
    /// The MIPS64 platform (cargo feature `board-octeon` for Octeon);
    /// always [`Board::Malta`] on x86_64.
    pub board: Board,
    pub release: bool,
    /// Build with the `per-vma-lock` feature (the default).
    pub per_vma_lock: bool,
    /// Build with the `count-shared-writes` feature: mm counts the atomic
    /// writes of every page fault and which cache lines several CPUs write
    /// (faultstorm prints the totals); slower, so never for timings.
    pub count_shared_writes: bool,
}

impl KernelConfig {
    /// "x86_64, debug, per-vma-lock on"; "mips64 (octeon), ..." for boards;
    /// ", count-shared-writes" for the instrumented build.
    pub fn describe(&self) -> String {
        format!(
            "{}{}, {}, per-vma-lock {}{}",
            self.arch,
            if self.board == Board::Octeon {
                " (octeon)"
            } else {
                ""
            },
            self.profile(),
            if self.per_vma_lock { "on" } else { "off" },
            if self.count_shared_writes {
                ", count-shared-writes"
            } else {
                ""
            }
        )
    }

    /// A file-name-safe name: "x86_64-debug-pvl", "mips64-release-nopvl",
    /// "mips64-octeon-debug-pvl", "x86_64-release-pvl-csw" (instrumented).
    pub fn slug(&self) -> String {
        format!(
            "{}{}-{}-{}{}",
            self.arch,
            if self.board == Board::Octeon {
                "-octeon"
            } else {
                ""
            },
            self.profile(),
            if self.per_vma_lock { "pvl" } else { "nopvl" },
            if self.count_shared_writes { "-csw" } else { "" }
        )
    }

    fn profile(&self) -> &'static str {
        if self.release {
            "release"
        } else {
            "debug"
        }
    }

    /// The target directory of all kernel builds.
    pub fn target_dir() -> PathBuf {
        workspace_root().join("target").join("kernel")
    }

    /// The name cargo uses for the target's output directory.
    fn target_name(&self) -> &'static str {
        match self.arch {
            Arch::X86_64 => "x86_64-unknown-none",
            // Cargo names a JSON target's directory after the file stem.
            Arch::Mips64 => "mips64-samara-none",
        }
    }

    /// Where [`KernelConfig::build`] leaves the image.
    pub fn image_path(&self) -> PathBuf {
        output_dir().join(self.slug()).join("samara.elf")
    }

    /// The directory holding this architecture's user programs once
    /// [`KernelConfig::build_user`] ran, or `None` where xtask does not
    /// build them (every architecture does now). The kernel's build script
    /// embeds every program it finds there (`SAMARA_USER_DIR`).
    pub fn user_dir(&self) -> Option<PathBuf> {
        Some(
            workspace_root()
                .join("target/user")
                .join(self.target_name())
                .join("release"),
        )
    }

    /// A `cargo <subcommand>` of the user programs (`kernel/user`), always
    /// optimised (they are benchmarks as much as tests), in their own target
    /// directory, linked statically at their fixed address with the small
    /// code model (the target's default is the kernel model), debug info
    /// stripped (they are embedded in the kernel image).
    pub fn user_cargo(&self, subcommand: &str) -> Option<Command> {
        self.user_dir()?;
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(workspace_root())
            .env_remove("CARGO_TARGET_DIR")
            .env(
                "RUSTFLAGS",
                "-C relocation-model=static -C code-model=small -C strip=debuginfo",
            )
            .args([subcommand, "-p", "samara-user", "--release", "--target"]);
        match self.arch {
            Arch::X86_64 => {
                cmd.arg(self.target_name());
            }
            Arch::Mips64 => {
                // The kernel's target spec serves user programs too (static,
                // non-PIC n64, soft-float); like the kernel they need
                // build-std and therefore RUSTC_BOOTSTRAP (see `cargo`).
                cmd.arg(workspace_root().join(MIPS64_TARGET_SPEC));
                cmd.env("RUSTC_BOOTSTRAP", "1").args([
                    "-Z",
                    "build-std=core",
                    "-Z",
                    "build-std-features=compiler-builtins-mem",
                    "-Z",
                    "json-target-spec",
                ]);
            }
        }
        cmd.arg("--target-dir")
            .arg(workspace_root().join("target/user"));
        Some(cmd)
    }

    /// Builds the user programs (if this architecture has them) and returns
    /// their directory.
    pub fn build_user(&self, quiet: bool) -> Result<Option<PathBuf>> {
        let Some(mut cmd) = self.user_cargo("build") else {
            return Ok(None);
        };
        run_cargo(&mut cmd, quiet, "user programs")?;
        Ok(self.user_dir())
    }

    /// A `cargo <subcommand>` (build, clippy, check) of the kernel binary for
    /// this configuration, with every flag the target needs.
    pub fn cargo(&self, subcommand: &str) -> Command {
        let root = workspace_root();
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .arg(subcommand);
        if let Some(dir) = self.user_dir() {
            cmd.env("SAMARA_USER_DIR", dir);
        }
        match self.arch {
            Arch::X86_64 => {
                cmd.args(["--target", "x86_64-unknown-none"]);
            }
            Arch::Mips64 => {
                // MIPS64 has no built-in bare-metal target, so the kernel is
                // built from a custom target spec with core/alloc compiled by
                // build-std. Both are unstable cargo/rustc features; like
                // Rust-for-Linux, Samara uses them on a pinned stable
                // toolchain by setting RUSTC_BOOTSTRAP=1 for this one child
                // process only (never in the user's shell, never for host
                // crates). Since 1.9x, cargo also wants -Zjson-target-spec
                // before it accepts a `.json` target.
                cmd.env("RUSTC_BOOTSTRAP", "1");
                cmd.args([
                    "-Z",
                    "build-std=core,alloc",
                    "-Z",
                    "build-std-features=compiler-builtins-mem",
                    "-Z",
                    "json-target-spec",
                    "--target",
                ]);
                cmd.arg(root.join(MIPS64_TARGET_SPEC));
            }
        }
        cmd.args(["-p", "kernel", "--bin", "samara", "--target-dir"]);
        cmd.arg(Self::target_dir());
        if self.release {
            cmd.arg("--release");
        }
        if !self.per_vma_lock {
            cmd.arg("--no-default-features");
        }
        let mut features = Vec::new();
        if self.board == Board::Octeon {
            features.push("board-octeon");
        }
        if self.count_shared_writes {
            features.push("count-shared-writes");
        }
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        cmd
    }

    /// Builds the kernel and returns the path of its image. With `quiet`,
    /// cargo's output is captured and only shown (its tail) in the error.
    pub fn build(&self, quiet: bool) -> Result<PathBuf> {
        // Every configuration of an architecture leaves its binary at the
        // same path (`target/kernel/<target>/<profile>/samara`, cargo's
        // uplifted copy, rewritten by every build, even an up-to-date one),
        // so a build and the copy below must not interleave with another
        // configuration's build: the copy would take the other's binary.
        // Cargo's own lock covers only the build. This lock covers builds
        // within one process (the QEMU tests build on several threads).
        static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        self.build_user(quiet)?;
        let mut cmd = self.cargo("build");
        run_cargo(&mut cmd, quiet, &format!("kernel ({})", self.describe()))?;
        let built = Self::target_dir()
            .join(self.target_name())
            .join(self.profile())
            .join("samara");
        let image = self.image_path();
        if let Some(dir) = image.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::copy(&built, &image).map_err(|e| {
            Error::new(format!(
                "cannot copy {} to {}: {e}",
                built.display(),
                image.display()
            ))
        })?;
        Ok(image)
    }
}

/// Runs a cargo build; with `quiet`, its output is captured and only shown
/// (its tail) in the error.
fn run_cargo(cmd: &mut Command, quiet: bool, what: &str) -> Result<()> {
    let status = if quiet {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::new(format!("cannot run cargo: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::new(format!(
                "build of the {what} failed:\n{}",
                tail.join("\n")
            )));
        }
        out.status
    } else {
        cmd.status()
            .map_err(|e| Error::new(format!("cannot run cargo: {e}")))?
    };
    if !status.success() {
        return Err(Error::new(format!(
            "build of the {what} failed: cargo exited with {status}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &KernelConfig) -> Vec<String> {
        c.cargo("build")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn x86_64_build_uses_builtin_target_and_features() {
        let c = KernelConfig {
            arch: Arch::X86_64,
            board: Board::Malta,
            release: true,
            per_vma_lock: false,
            count_shared_writes: false,
        };
        let a = args(&c);
        assert!(a
            .windows(2)
            .any(|w| w == ["--target", "x86_64-unknown-none"]));
        assert!(a.contains(&"--release".to_string()));
        assert!(a.contains(&"--no-default-features".to_string()));
        assert!(!a.iter().any(|x| x.contains("build-std")));
        let cmd = c.cargo("build");
        assert!(!cmd.get_envs().any(|(k, _)| k == "RUSTC_BOOTSTRAP"));
        // The kernel embeds the user programs xtask builds for it.
        let dir = c.user_dir().unwrap();
        assert!(dir.ends_with("target/user/x86_64-unknown-none/release"));
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == "SAMARA_USER_DIR" && v == Some(dir.as_os_str())));
        let u: Vec<String> = c
            .user_cargo("build")
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(u.windows(2).any(|w| w == ["-p", "samara-user"]));
        assert!(u.contains(&"--release".to_string()));
        assert_eq!(c.slug(), "x86_64-release-nopvl");
        assert!(c
            .image_path()
            .ends_with("target/samara/x86_64-release-nopvl/samara.elf"));
    }

    #[test]
    fn mips64_build_sets_bootstrap_only_on_the_child() {
        let c = KernelConfig {
            arch: Arch::Mips64,
            board: Board::Malta,
            release: false,
            per_vma_lock: true,
            count_shared_writes: false,
        };
        let cmd = c.cargo("clippy");
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs
            .iter()
            .any(|(k, v)| *k == "RUSTC_BOOTSTRAP" && v.is_some_and(|v| v == "1")));
        let a: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(a[0], "clippy");
        assert!(a.contains(&"build-std=core,alloc".to_string()));
        assert!(a.contains(&"json-target-spec".to_string()));
        assert!(a.iter().any(|x| x.ends_with(MIPS64_TARGET_SPEC)));
        assert!(!a.contains(&"--no-default-features".to_string()));
        assert!(!a.contains(&"board-octeon".to_string()));
        assert_eq!(c.slug(), "mips64-debug-pvl");
    }

    #[test]
    fn octeon_build_selects_the_board_feature() {
        let c = KernelConfig {
            arch: Arch::Mips64,
            board: Board::Octeon,
            release: true,
            per_vma_lock: false,
            count_shared_writes: false,
        };
        let a = args(&c);
        assert!(a.windows(2).any(|w| w == ["--features", "board-octeon"]));
        assert!(a.contains(&"--no-default-features".to_string()));
        assert_eq!(c.slug(), "mips64-octeon-release-nopvl");
        assert_eq!(c.describe(), "mips64 (octeon), release, per-vma-lock off");
        // Both features, in one comma-separated --features list.
        let csw = KernelConfig {
            count_shared_writes: true,
            ..c
        };
        let a = args(&csw);
        assert!(a
            .windows(2)
            .any(|w| w == ["--features", "board-octeon,count-shared-writes"]));
        assert_eq!(csw.slug(), "mips64-octeon-release-nopvl-csw");
    }

    #[test]
    fn instrumented_build_has_its_own_image() {
        let c = KernelConfig {
            arch: Arch::X86_64,
            board: Board::Malta,
            release: true,
            per_vma_lock: true,
            count_shared_writes: true,
        };
        let a = args(&c);
        assert!(a
            .windows(2)
            .any(|w| w == ["--features", "count-shared-writes"]));
        assert!(!a.contains(&"--no-default-features".to_string()));
        assert_eq!(c.slug(), "x86_64-release-pvl-csw");
        assert_eq!(
            c.describe(),
            "x86_64, release, per-vma-lock on, count-shared-writes"
        );
        let plain = KernelConfig {
            count_shared_writes: false,
            ..c
        };
        assert_ne!(plain.image_path(), c.image_path());
        assert!(!args(&plain).iter().any(|x| x.contains("count-shared")));
    }
}
