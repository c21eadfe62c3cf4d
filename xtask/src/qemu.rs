//! Running a kernel image in QEMU: per-arch machine arguments (all of them
//! are in [`qemu_args`]), accelerator choice, time-out, serial log, and the
//! decoding of QEMU's exit status.
//!
//! Exit statuses, the same on both architectures:
//!
//! | QEMU status | meaning |
//! | --- | --- |
//! | 33 | the kernel reported success (x86_64: 0x10 to isa-debug-exit, which QEMU turns into `0x10 << 1 \| 1`; MIPS64: UHI semihosting exit with 33) |
//! | 35 | the kernel reported failure (0x11 << 1 \| 1; UHI exit 35) |
//! | anything else | QEMU or harness error: 1 is QEMU's own error; 0 means the guest reset or powered off (a triple fault with `-no-reboot`) |

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Arch, Error, Result};

/// QEMU status when the kernel reports success.
pub const STATUS_SUCCESS: i32 = 33;
/// QEMU status when the kernel reports failure.
pub const STATUS_FAILURE: i32 = 35;

/// The kernel prints its closing line with this prefix (kernel/src/main.rs).
pub const SUMMARY_PREFIX: &str = "samara: result:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What the user asked for (`--accel`, or `SAMARA_ACCEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when /dev/kvm is usable and the guest is the host's architecture.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// `SAMARA_ACCEL=auto|kvm|tcg`, for runs started by the test harness.
    pub fn from_env() -> Result<AccelChoice> {
        match std::env::var("SAMARA_ACCEL").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(AccelChoice::Auto),
            Ok("kvm") => Ok(AccelChoice::Kvm),
            Ok("tcg") => Ok(AccelChoice::Tcg),
            Ok(other) => Err(Error::new(format!(
                "SAMARA_ACCEL={other}: expected auto, kvm or tcg"
            ))),
        }
    }
}

/// Whether this process can use KVM: /dev/kvm opens read-write.
pub fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Picks the accelerator and says why.
pub fn choose_accel(arch: Arch, choice: AccelChoice) -> Result<(Accel, &'static str)> {
    let native = arch == Arch::X86_64 && cfg!(target_arch = "x86_64");
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, "TCG (requested)")),
        AccelChoice::Kvm if !native => Err(Error::new(format!(
            "KVM cannot run {arch} guests on this {} host",
            std::env::consts::ARCH
        ))),
        AccelChoice::Kvm if !kvm_usable() => Err(Error::new(
            "KVM requested but /dev/kvm cannot be opened read-write",
        )),
        AccelChoice::Kvm => Ok((Accel::Kvm, "KVM (requested)")),
        AccelChoice::Auto if !native => Ok((Accel::Tcg, "TCG (no KVM for this guest)")),
        AccelChoice::Auto if kvm_usable() => Ok((Accel::Kvm, "KVM (/dev/kvm is usable)")),
        AccelChoice::Auto => Ok((Accel::Tcg, "TCG (/dev/kvm is not usable)")),
    }
}

/// The virtual machine around the kernel.
#[derive(Debug, Clone)]
pub struct Machine {
    pub smp: u32,
    /// QEMU `-m` syntax: "256M", "2G".
    pub mem: String,
    pub accel: Accel,
    /// Wait for GDB on tcp::1234 before the first instruction.
    pub gdb: bool,
}

/// Default guest memory (Malta tops out at 2 GiB; both boot in 256 MiB).
pub const DEFAULT_MEM: &str = "256M";

/// Checks a `--mem` value the way QEMU reads it: a number with an optional
/// K/M/G/T suffix (no suffix means MiB).
pub fn parse_mem(s: &str) -> std::result::Result<String, String> {
    let digits = s.trim_end_matches(|c: char| "kKmMgGtT".contains(c));
    let suffix_len = s.len() - digits.len();
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && suffix_len <= 1 => Ok(s.to_string()),
        _ => Err(format!(
            "`{s}` is not a memory size (examples: 256M, 2G, 512)"
        )),
    }
}

/// Every QEMU argument for booting `image` on `arch`, in one place.
pub fn qemu_args(
    arch: Arch,
    image: &Path,
    kernel_args: &str,
    m: &Machine,
    log: &Path,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    match arch {
        Arch::X86_64 => {
            push("-machine");
            push("q35");
            // qboot instead of SeaBIOS: it boots the PVH kernel directly and
            // takes ~0.1 s where SeaBIOS takes ~3.5 s under nested KVM.
            push("-bios");
            push("qboot.rom");
            match m.accel {
                Accel::Kvm => {
                    push("-accel");
                    push("kvm");
                    // Nested KVM (this CI) rejects the host's
                    // IA32_ARCH_CAPABILITIES MSR value; Samara does not use it.
                    push("-cpu");
                    push("host,-arch-capabilities");
                }
                Accel::Tcg => {
                    push("-accel");
                    push("tcg");
                    push("-cpu");
                    push("max");
                }
            }
            // The kernel's exit port (arch/src/x86_64/exit.rs).
            push("-device");
            push("isa-debug-exit,iobase=0xf4,iosize=0x04");
        }
        Arch::Mips64 => {
            push("-machine");
            push("malta");
            push("-cpu");
            push("Octeon68XX");
            // The kernel exits through UHI semihosting (`sdbbp`).
            push("-semihosting");
        }
    }
    push("-m");
    push(&m.mem);
    push("-smp");
    push(&m.smp.to_string());
    push("-display");
    push("none");
    push("-monitor");
    push("none");
    // A reset (e.g. a triple fault) ends the run instead of rebooting forever.
    push("-no-reboot");
    // The first UART goes to stdout (which xtask reads) and to the log.
    // (QEMU option syntax: a comma inside a value is written twice.)
    push("-chardev");
    push(&format!(
        "stdio,id=con,signal=off,logfile={}",
        log.to_string_lossy().replace(',', ",,")
    ));
    push("-serial");
    push("chardev:con");
    if m.gdb {
        push("-s");
        push("-S");
    }
    push("-kernel");
    a.push(image.into());
    a.push("-append".into());
    a.push(kernel_args.into());
    a
}

/// How a QEMU run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Status 33: the kernel reported success.
    Pass,
    /// Status 35: the kernel reported failure.
    KernelFailure,
    /// Any other status: QEMU failed, or the guest reset/powered off.
    QemuError(i32),
    /// QEMU was killed by a signal (not by us).
    Signal(i32),
    /// The time-out expired and xtask killed QEMU.
    TimedOut,
}

impl Outcome {
    pub fn from_status(status: ExitStatus) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(STATUS_SUCCESS), _) => Outcome::Pass,
            (Some(STATUS_FAILURE), _) => Outcome::KernelFailure,
            (Some(c), _) => Outcome::QemuError(c),
            (None, Some(s)) => Outcome::Signal(s),
            (None, None) => Outcome::QemuError(-1),
        }
    }

    pub fn describe(&self, timeout: Option<Duration>) -> String {
        match self {
            Outcome::Pass => format!("kernel reported success (QEMU status {STATUS_SUCCESS})"),
            Outcome::KernelFailure => {
                format!("kernel reported failure (QEMU status {STATUS_FAILURE})")
            }
            Outcome::QemuError(0) => {
                "QEMU exited with status 0: the guest reset or powered off without reporting \
                 (a triple fault ends the run this way under -no-reboot)"
                    .to_string()
            }
            Outcome::QemuError(1) => "QEMU failed (status 1: QEMU's own error)".to_string(),
            Outcome::QemuError(c) => format!("QEMU exited with unexpected status {c}"),
            Outcome::Signal(s) => format!("QEMU was killed by signal {s}"),
            Outcome::TimedOut => format!(
                "time-out: QEMU still running after {:?}, killed",
                timeout.unwrap_or_default()
            ),
        }
    }
}

/// One QEMU run.
pub struct RunSpec<'a> {
    pub arch: Arch,
    pub image: &'a Path,
    pub kernel_args: &'a str,
    pub machine: &'a Machine,
    /// Serial log (created or truncated).
    pub log: PathBuf,
    /// `None`: no time-out (GDB sessions).
    pub timeout: Option<Duration>,
    /// Copy the serial output to our stdout as it arrives.
    pub echo: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    /// Everything QEMU wrote to stdout (the serial console).
    pub output: String,
    /// QEMU's own stderr (its warnings and errors).
    pub stderr: String,
    pub log: PathBuf,
    pub elapsed: Duration,
    /// The command line, for error messages.
    pub command: String,
}

impl Report {
    /// The kernel's closing `samara: result:` lines.
    pub fn summary(&self) -> Vec<&str> {
        summary_lines(&self.output)
    }
}

/// The lines of `output` that start with [`SUMMARY_PREFIX`] (after any `\r`).
pub fn summary_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .map(|l| l.trim_matches('\r'))
        .filter(|l| l.starts_with(SUMMARY_PREFIX))
        .collect()
}

fn reader_thread(
    mut from: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
    echo: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if echo {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
    })
}

/// Boots the image and waits for QEMU to exit or the time-out to expire.
/// An `Err` means QEMU could not be started at all.
pub fn run(spec: &RunSpec<'_>) -> Result<Report> {
    run_with(spec, &[])
}

/// [`run`] with `extra` appended to the QEMU command line (the bench's Linux
/// anchor adds `-initrd`).
pub fn run_with(spec: &RunSpec<'_>, extra: &[OsString]) -> Result<Report> {
    let qemu = crate::install::ensure_qemu(spec.arch)?;
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    }
    // QEMU appends to an existing logfile; start each run with an empty one.
    std::fs::write(&spec.log, b"")
        .map_err(|e| Error::new(format!("cannot write {}: {e}", spec.log.display())))?;
    let mut args = qemu_args(
        spec.arch,
        spec.image,
        spec.kernel_args,
        spec.machine,
        &spec.log,
    );
    args.extend(extra.iter().cloned());
    let command = std::iter::once(qemu.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains(' ') {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let start = Instant::now();
    let mut child = Command::new(&qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot start {}: {e}", qemu.display())))?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let t_out = reader_thread(
        child.stdout.take().expect("stdout is piped"),
        out.clone(),
        spec.echo,
    );
    let t_err = reader_thread(
        child.stderr.take().expect("stderr is piped"),
        err.clone(),
        false,
    );
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Outcome::from_status(status),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(format!("cannot wait for QEMU: {e}")));
            }
        }
        if spec.timeout.is_some_and(|t| start.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let _ = t_out.join();
    let _ = t_err.join();
    let text = |b: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&b.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    };
    Ok(Report {
        outcome,
        output: text(&out),
        stderr: text(&err),
        log: spec.log.clone(),
        elapsed,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn decodes_exit_statuses() {
        let code = |c: i32| Outcome::from_status(ExitStatus::from_raw(c << 8));
        assert_eq!(code(33), Outcome::Pass);
        assert_eq!(code(35), Outcome::KernelFailure);
        assert_eq!(code(1), Outcome::QemuError(1));
        assert_eq!(code(0), Outcome::QemuError(0));
        assert_eq!(
            Outcome::from_status(ExitStatus::from_raw(9)),
            Outcome::Signal(9)
        );
        // The x86_64 kernel writes 0x10 / 0x11 to isa-debug-exit.
        assert_eq!((0x10 << 1) | 1, STATUS_SUCCESS);
        assert_eq!((0x11 << 1) | 1, STATUS_FAILURE);
    }

    fn args_of(arch: Arch, accel: Accel, gdb: bool) -> Vec<String> {
        let m = Machine {
            smp: 2,
            mem: "512M".into(),
            accel,
            gdb,
        };
        qemu_args(
            arch,
            Path::new("/k/samara.elf"),
            "test=boot x=1",
            &m,
            Path::new("/l/s.log"),
        )
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
    }

    fn has_pair(a: &[String], k: &str, v: &str) -> bool {
        a.windows(2).any(|w| w[0] == k && w[1] == v)
    }

    #[test]
    fn x86_64_arguments() {
        let a = args_of(Arch::X86_64, Accel::Kvm, false);
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-bios", "qboot.rom"));
        assert!(has_pair(
            &a,
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04"
        ));
        assert!(has_pair(&a, "-kernel", "/k/samara.elf"));
        assert!(has_pair(&a, "-append", "test=boot x=1"));
        assert!(has_pair(&a, "-m", "512M"));
        assert!(has_pair(&a, "-smp", "2"));
        assert!(has_pair(
            &a,
            "-chardev",
            "stdio,id=con,signal=off,logfile=/l/s.log"
        ));
        assert!(!a.contains(&"-S".to_string()));
        let t = args_of(Arch::X86_64, Accel::Tcg, true);
        assert!(has_pair(&t, "-accel", "tcg"));
        assert!(t.contains(&"-S".to_string()) && t.contains(&"-s".to_string()));
    }

    #[test]
    fn mips64_arguments() {
        let a = args_of(Arch::Mips64, Accel::Tcg, false);
        assert!(has_pair(&a, "-machine", "malta"));
        assert!(has_pair(&a, "-cpu", "Octeon68XX"));
        assert!(a.contains(&"-semihosting".to_string()));
        assert!(!a.iter().any(|x| x.contains("isa-debug-exit")));
        assert!(has_pair(&a, "-append", "test=boot x=1"));
    }

    #[test]
    fn mips64_never_uses_kvm() {
        assert_eq!(
            choose_accel(Arch::Mips64, AccelChoice::Auto).unwrap().0,
            Accel::Tcg
        );
        assert!(choose_accel(Arch::Mips64, AccelChoice::Kvm).is_err());
        assert_eq!(
            choose_accel(Arch::X86_64, AccelChoice::Tcg).unwrap().0,
            Accel::Tcg
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mem("256M").unwrap(), "256M");
        assert!(parse_mem("2G").is_ok() && parse_mem("512").is_ok());
        assert!(parse_mem("lots").is_err());
        assert!(parse_mem("0").is_err());
        assert!(parse_mem("1MB").is_err());
        assert!(parse_mem("").is_err());
    }

    #[test]
    fn extracts_the_kernel_summary() {
        let out = "banner\r\nsamara: result: pass: test boot\r\nmore\n";
        assert_eq!(summary_lines(out), vec!["samara: result: pass: test boot"]);
        assert!(summary_lines("no summary").is_empty());
    }
}
