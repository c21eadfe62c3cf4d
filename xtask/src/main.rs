//! `cargo xtask`: build, run and test Samara.
//!
//! ```text
//! cargo xtask build [--arch A] [--release] [--no-per-vma-lock]
//! cargo xtask run   [--arch A] [--release] [--no-per-vma-lock] [--smp N] [--mem SIZE]
//!                   [--accel auto|kvm|tcg] [--gdb] [--timeout SECS] [-- KERNEL_ARGS...]
//! cargo xtask test  [--arch A] [--release] [--no-per-vma-lock] [--smp N] [--mem SIZE]
//!                   [--accel ...] [--only STEP]...
//! cargo xtask miri  [-- ARGS...]
//! cargo xtask bench [--quick] [--only PART]... [--arch A]... [--accel ...] [--reps N]
//!                   [--mem SIZE] [--linux-kernel BZIMAGE] [--save]
//! cargo xtask flash --board octeon [--tftp DIR [--server IP] | --fat "usb 0:1"]
//!                   [--loadaddr ADDR] [--coremask MASK] [--serial DEV [--baud N]]
//!                   [--release] [--no-per-vma-lock] [-- KERNEL_ARGS...]
//! ```
//!
//! New subcommands (bench, flash) are one more `Cmd` variant and function;
//! new test steps are one more entry in [`test_steps`].

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use xtask::build::KernelConfig;
use xtask::qemu::{self, AccelChoice, Machine, Outcome, RunSpec};
use xtask::{output_dir, workspace_root, Arch, Board, Error, Result};

/// Architectures whose kernels `cargo xtask test` lints, builds and boots by
/// default.
const TEST_ARCHES: &[Arch] = &[Arch::X86_64, Arch::Mips64];

/// What `cargo xtask run` runs when the kernel arguments name no scenario
/// or workload.
const DEFAULT_WORKLOAD: &str = "faultstorm";

/// Host crates that clippy checks with `--all-targets` (the kernel crates
/// are checked per target instead).
const HOST_PACKAGES: &[&str] = &[
    "mm",
    "boot",
    "samara-abi",
    "xtask",
    "qemu-tests",
    "linux-anchor",
];

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test the Samara kernel",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel image (target/samara/<config>/samara.elf).
    Build(KernelOpts),
    /// Build the kernel and boot it in QEMU; exits 0 if the kernel reports success.
    Run(RunOpts),
    /// Format check, clippy, host unit tests and the QEMU integration tests.
    Test(TestOpts),
    /// Run mm's tests under Miri (nightly; installs miri with rustup if missing).
    Miri(MiriOpts),
    /// Benchmarks side by side with their baselines: host (criterion), Samara
    /// in QEMU, Linux in the same VM; writes target/bench/report.{md,json}.
    Bench(BenchOpts),
    /// Build for an Octeon board, check the image, write it with a U-Boot
    /// script, and (with --serial) boot it through U-Boot and watch it.
    Flash(FlashOpts),
}

#[derive(Args)]
struct FlashOpts {
    /// The platform: only octeon boards are flashed.
    #[arg(long, value_parser = parse_board)]
    board: Board,
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
    /// Build without the `per-vma-lock` feature.
    #[arg(long)]
    no_per_vma_lock: bool,
    /// Write samara.elf and the scripts into this TFTP server directory and
    /// load with tftpboot (default: tftpboot, files in target/samara/flash/).
    #[arg(long, value_name = "DIR", conflicts_with = "fat")]
    tftp: Option<std::path::PathBuf>,
    /// TFTP server address for tftpboot (default: U-Boot's serverip).
    #[arg(long, value_name = "IP")]
    server: Option<String>,
    /// Load with fatload from this U-Boot device instead, e.g. "usb 0:1"
    /// (EdgeRouter Lite) or "mmc 0:1"; copy samara.elf to that partition.
    #[arg(long, value_name = "IFACE DEV:PART")]
    fat: Option<String>,
    /// Where U-Boot loads the ELF file (SDK U-Boot: 0x20000000; EdgeRouter
    /// Lite: 0x9f00000; mainline: 0xffffffff80100000).
    #[arg(long, default_value = "0x20000000", value_parser = parse_hex)]
    loadaddr: u64,
    /// Cores U-Boot starts (all but the boot core park in the kernel).
    #[arg(long, default_value = "0x1", value_parser = parse_hex)]
    coremask: u64,
    /// Drive U-Boot on this serial device, then monitor the kernel and exit
    /// with the status it reports.
    #[arg(long, value_name = "DEV")]
    serial: Option<std::path::PathBuf>,
    /// Baud rate of --serial (U-Boot's console rate).
    #[arg(long, default_value_t = 115200)]
    baud: u32,
    /// With --serial: seconds to wait for U-Boot (power the board on meanwhile).
    #[arg(long, default_value_t = 300)]
    prompt_timeout: u64,
    /// With --serial: seconds the kernel may run before the monitor gives up.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Kernel command line (see boot/src/options.rs), e.g. test=boot per_vma_lock=off.
    #[arg(last = true)]
    kernel_args: Vec<String>,
}

#[derive(Args, Clone)]
struct KernelOpts {
    /// Target architecture.
    #[arg(long, default_value = "x86_64", value_parser = parse_arch)]
    arch: Arch,
    /// MIPS64 platform: malta (QEMU) or octeon (U-Boot boards, see `flash`).
    #[arg(long, default_value = "malta", value_parser = parse_board)]
    board: Board,
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
    /// Build without the `per-vma-lock` feature (fault path under the mmap lock only).
    #[arg(long)]
    no_per_vma_lock: bool,
    /// Instrumented build (feature `count-shared-writes`): faultstorm's line
    /// adds mm's counts of atomic and shared-cache-line writes; slower.
    #[arg(long)]
    count_shared_writes: bool,
}

impl KernelOpts {
    fn config(&self) -> KernelConfig {
        KernelConfig {
            arch: self.arch,
            board: self.board,
            release: self.release,
            per_vma_lock: !self.no_per_vma_lock,
            count_shared_writes: self.count_shared_writes,
        }
    }
}

#[derive(Args, Clone)]
struct MachineOpts {
    /// Number of CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    smp: u32,
    /// Guest memory, QEMU syntax (256M, 2G). Malta takes at most 2G.
    #[arg(long, default_value = qemu::DEFAULT_MEM, value_parser = qemu::parse_mem)]
    mem: String,
    /// Accelerator: auto picks KVM when /dev/kvm is usable (x86_64 guests only).
    /// Default: $SAMARA_ACCEL, else auto.
    #[arg(long, value_enum)]
    accel: Option<AccelChoice>,
}

#[derive(Args)]
struct RunOpts {
    #[command(flatten)]
    kernel: KernelOpts,
    #[command(flatten)]
    machine: MachineOpts,
    /// Wait for GDB on localhost:1234 before the first instruction (no time-out).
    #[arg(long)]
    gdb: bool,
    /// Seconds before QEMU is killed and the run reported as hung.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Kernel command line (see boot/src/options.rs), e.g. workload=segv per_vma_lock=off;
    /// without test= or workload=, `run` adds workload=faultstorm.
    #[arg(last = true)]
    kernel_args: Vec<String>,
}

#[derive(Args)]
struct TestOpts {
    /// Only this architecture (default: all enabled ones).
    #[arg(long, value_parser = parse_arch)]
    arch: Option<Arch>,
    /// Test release-profile kernels.
    #[arg(long)]
    release: bool,
    /// Only the configuration without per-vma-lock (default: both).
    #[arg(long)]
    no_per_vma_lock: bool,
    #[command(flatten)]
    machine: MachineOpts,
    /// Run only these steps (repeatable); `--only list` prints them.
    #[arg(long)]
    only: Vec<String>,
}

#[derive(Args)]
struct BenchOpts {
    /// Short host measurements, one boot per guest configuration, no TCG
    /// scaling check.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (repeatable): a bench file (slab, rcu, ...),
    /// host, guest, linux, scaling; `--only list` prints them.
    #[arg(long, value_name = "PART")]
    only: Vec<String>,
    /// Guest architectures (repeatable; default x86_64).
    #[arg(long, value_parser = parse_arch)]
    arch: Vec<Arch>,
    /// Accelerator of the guests; default $SAMARA_ACCEL, else auto.
    #[arg(long, value_enum)]
    accel: Option<AccelChoice>,
    /// Boots per guest configuration (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    reps: Option<u32>,
    /// Guest memory, for Samara and Linux alike.
    #[arg(long, default_value = "512M", value_parser = qemu::parse_mem)]
    mem: String,
    /// Boot this Linux bzImage as the anchor instead of Debian's package.
    #[arg(long, value_name = "BZIMAGE")]
    linux_kernel: Option<std::path::PathBuf>,
    /// Also write the report into BENCHMARKS.md (plot to benchmarks/).
    #[arg(long)]
    save: bool,
    /// Boot Samara's instrumented build (feature `count-shared-writes`):
    /// the report adds the atomic and shared-cache-line writes per fault;
    /// Samara's timings then include the counting's cost.
    #[arg(long)]
    count_shared_writes: bool,
}

#[derive(Args)]
struct MiriOpts {
    /// Extra arguments for `cargo miri test -p mm` (e.g. a test filter).
    #[arg(last = true)]
    args: Vec<String>,
}

fn parse_arch(s: &str) -> std::result::Result<Arch, String> {
    s.parse()
}

fn parse_board(s: &str) -> std::result::Result<Board, String> {
    s.parse()
}

fn parse_hex(s: &str) -> std::result::Result<u64, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|_| format!("`{s}` is not a hexadecimal number"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Build(o) => build(&o).map(|_| ()),
        Cmd::Run(o) => run(&o),
        Cmd::Test(o) => test(&o),
        Cmd::Miri(o) => miri(&o),
        Cmd::Bench(o) => bench(&o),
        Cmd::Flash(o) => match flash(&o) {
            // The kernel's own status (`samara: exit N`), when it ran.
            Ok(Some(code)) => return ExitCode::from(code),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build(o: &KernelOpts) -> Result<std::path::PathBuf> {
    o.board.check(o.arch).map_err(Error::new)?;
    let config = o.config();
    println!("xtask: building kernel ({})", config.describe());
    let start = Instant::now();
    let image = config.build(false)?;
    println!(
        "xtask: built {} in {:.1} s",
        rel(&image),
        start.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// `path` relative to the workspace root, for shorter messages.
fn rel(path: &std::path::Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn run(o: &RunOpts) -> Result<()> {
    if o.kernel.board == Board::Octeon {
        return Err(Error::new(
            "the octeon platform needs a real board (QEMU has the Octeon CPU but not its SoC); \
             use `cargo xtask flash --board octeon`",
        ));
    }
    let image = build(&o.kernel)?;
    let config = o.kernel.config();
    let choice = match o.machine.accel {
        Some(c) => c,
        None => AccelChoice::from_env()?,
    };
    let (accel, why) = qemu::choose_accel(config.arch, choice)?;
    let machine = Machine {
        smp: o.machine.smp,
        mem: o.machine.mem.clone(),
        accel,
        gdb: o.gdb,
    };
    let log = output_dir()
        .join("logs")
        .join(format!("run-{}.log", config.slug()));
    // Without a scenario or workload on the command line, run the default
    // workload.
    let mut kernel_args = o.kernel_args.join(" ");
    if !o
        .kernel_args
        .iter()
        .any(|a| a.starts_with("test=") || a.starts_with("workload="))
    {
        kernel_args = format!("workload={DEFAULT_WORKLOAD} {kernel_args}")
            .trim_end()
            .to_string();
    }
    println!(
        "xtask: booting {} in QEMU with {why}, {} CPU(s), {} memory, args \"{kernel_args}\"",
        config.arch, machine.smp, machine.mem
    );
    if o.gdb {
        println!(
            "xtask: QEMU waits for GDB: gdb {} -ex 'target remote localhost:1234'",
            rel(&image)
        );
    }
    let timeout = (!o.gdb).then(|| Duration::from_secs(o.timeout));
    println!(
        "xtask: running (serial log {}{})",
        rel(&log),
        timeout.map_or(String::new(), |t| format!(", time-out {} s", t.as_secs()))
    );
    let report = qemu::run(&RunSpec {
        arch: config.arch,
        image: &image,
        kernel_args: &kernel_args,
        machine: &machine,
        log,
        timeout,
        echo: true,
    })?;
    println!();
    let summary = report.summary();
    if summary.is_empty() {
        println!("xtask: the kernel printed no summary line");
    }
    for line in summary {
        println!("xtask: kernel summary: {line}");
    }
    if let Some(table) = xtask::summary::readable(&report.output) {
        print!("{table}");
    }
    let what = report.outcome.describe(timeout);
    if report.outcome == Outcome::Pass {
        println!(
            "xtask: {what}, {:.2} s in QEMU",
            report.elapsed.as_secs_f64()
        );
        return Ok(());
    }
    if !report.stderr.trim().is_empty() {
        eprintln!("xtask: QEMU's stderr:\n{}", report.stderr.trim_end());
    }
    Err(Error::new(format!(
        "{what}; serial log: {}\n       command: {}",
        report.log.display(),
        report.command
    )))
}

/// One step of `cargo xtask test`.
struct Step {
    name: String,
    run: Box<dyn Fn() -> Result<()>>,
}

impl Step {
    fn new(name: impl Into<String>, run: impl Fn() -> Result<()> + 'static) -> Step {
        Step {
            name: name.into(),
            run: Box::new(run),
        }
    }

    /// A step that runs `cargo ARGS` in the workspace with `envs` set.
    fn cargo(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Step {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let label = format!("cargo {}", args.join(" "));
        Step::new(name, move || {
            let mut cmd = cargo();
            cmd.args(&args);
            for (k, v) in &envs {
                cmd.env(k, v);
            }
            status(&mut cmd, &label)
        })
    }
}

/// The names of the loom model test targets (`mm/tests/loom_*.rs`).
fn loom_tests() -> Result<Vec<String>> {
    let dir = workspace_root().join("mm/tests");
    let rd = std::fs::read_dir(&dir)
        .map_err(|e| Error::new(format!("cannot list {}: {e}", dir.display())))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| Some(n.strip_suffix(".rs")?.to_string()))
        .filter(|n| n.starts_with("loom_"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::new("no loom models found in mm/tests"));
    }
    Ok(names)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Tests counted from libtest's `test result:` lines of every command run
/// through [`status`], for the closing line of `cargo xtask test`.
static TESTS_PASSED: AtomicU64 = AtomicU64::new(0);
static TESTS_FAILED: AtomicU64 = AtomicU64::new(0);

/// `(passed, failed)` from a libtest summary line such as
/// "test result: ok. 13 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ...".
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |what: &str| {
        rest.split(';').find_map(|part| {
            part.trim()
                .strip_suffix(what)?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
    };
    Some((count(" passed")?, count(" failed")?))
}

/// Runs `cmd`, streaming its stdout through (and counting test results).
fn status(cmd: &mut Command, label: &str) -> Result<()> {
    println!("xtask: + {label}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {label}: {e}")))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            println!("{line}");
            if let Some((p, f)) = parse_test_result(&line) {
                TESTS_PASSED.fetch_add(p, Ordering::Relaxed);
                TESTS_FAILED.fetch_add(f, Ordering::Relaxed);
            }
        }
    }
    let s = child
        .wait()
        .map_err(|e| Error::new(format!("cannot wait for {label}: {e}")))?;
    if s.success() {
        Ok(())
    } else {
        Err(Error::new(format!("`{label}` failed ({s})")))
    }
}

/// Everything `cargo xtask test` runs, in order. To add a step (loom,
/// proptest, trybuild), push one more `Step`; for example loom:
/// `Step::cargo("loom", &["test", "-p", "mm", "--release", "--test", "loom_*"],
/// &[("RUSTFLAGS", "--cfg loom"), ("CARGO_TARGET_DIR", "target/loom")])`.
fn test_steps(o: &TestOpts) -> Vec<Step> {
    let arches: Vec<Arch> = match o.arch {
        Some(a) => vec![a],
        None => TEST_ARCHES.to_vec(),
    };
    let pvl_configs: Vec<bool> = if o.no_per_vma_lock {
        vec![false]
    } else {
        vec![true, false]
    };
    let mut steps = vec![Step::cargo("fmt", &["fmt", "--all", "--check"], &[])];

    let mut clippy_host = vec!["clippy", "--all-targets"];
    for p in HOST_PACKAGES {
        clippy_host.extend(["-p", p]);
    }
    clippy_host.extend(["--", "-D", "warnings"]);
    steps.push(Step::cargo("clippy-host", &clippy_host, &[]));

    for &arch in &arches {
        let release = o.release;
        steps.push(Step::new(format!("clippy-kernel-{arch}"), move || {
            let config = KernelConfig {
                arch,
                board: Board::Malta,
                release,
                per_vma_lock: true,
                count_shared_writes: false,
            };
            // The user programs first: the kernel embeds them, and clippy
            // checks them for the same target.
            if let Some(mut cmd) = config.user_cargo("clippy") {
                cmd.args(["--", "-D", "warnings"]);
                status(
                    &mut cmd,
                    &format!("cargo clippy (user programs, {arch}) -- -D warnings"),
                )?;
                config.build_user(false)?;
            }
            let mut cmd = config.cargo("clippy");
            cmd.args(["--", "-D", "warnings"]);
            status(
                &mut cmd,
                &format!("cargo clippy (kernel, {arch}) -- -D warnings"),
            )?;
            // The instrumented build compiles code the plain one does not.
            let counted = KernelConfig {
                count_shared_writes: true,
                ..config
            };
            let mut cmd = counted.cargo("clippy");
            cmd.args(["--", "-D", "warnings"]);
            status(
                &mut cmd,
                &format!("cargo clippy (kernel, {arch}, count-shared-writes) -- -D warnings"),
            )
        }));
    }

    if arches.contains(&Arch::Mips64) {
        let release = o.release;
        steps.push(Step::new("clippy-kernel-mips64-octeon", move || {
            let config = KernelConfig {
                arch: Arch::Mips64,
                board: Board::Octeon,
                release,
                per_vma_lock: true,
                count_shared_writes: false,
            };
            let mut cmd = config.cargo("clippy");
            cmd.args(["--", "-D", "warnings"]);
            status(
                &mut cmd,
                "cargo clippy (kernel, mips64 octeon) -- -D warnings",
            )
        }));
    }

    // Default members: the host crates' unit and integration tests.
    steps.push(Step::cargo("unit", &["test"], &[]));
    // The same mm suite with per-VMA locking compiled out (issue 5: both
    // configurations pass the same tests).
    steps.push(Step::cargo(
        "unit-mm-no-per-vma-lock",
        &[
            "test",
            "-p",
            "mm",
            "--no-default-features",
            "--lib",
            "--tests",
        ],
        &[],
    ));

    // The instrumented build: shared-cache-line writes per fault.
    steps.push(Step::cargo(
        "mm-shared-lines",
        xtask::bench_shared::ARGS,
        &[],
    ));

    // The loom models: every `mm/tests/loom_*.rs`, built with `--cfg loom`
    // in their own target directory (the cfg changes every dependency), one
    // test at a time because the mutation tests flip a process-wide switch.
    steps.push(Step::new("loom", || {
        let mut cmd = cargo();
        cmd.args(["test", "-p", "mm", "--release"]);
        for t in loom_tests()? {
            cmd.args(["--test", &t]);
        }
        cmd.args(["--", "--test-threads=1"]);
        cmd.env("RUSTFLAGS", "--cfg loom");
        cmd.env("CARGO_TARGET_DIR", workspace_root().join("target/loom"));
        status(
            &mut cmd,
            "cargo test -p mm --release --test loom_* (--cfg loom)",
        )
    }));

    let configs: Vec<KernelConfig> = arches
        .iter()
        .flat_map(|&arch| {
            pvl_configs.iter().map(move |&per_vma_lock| KernelConfig {
                arch,
                board: Board::Malta,
                release: o.release,
                per_vma_lock,
                count_shared_writes: false,
            })
        })
        .collect();
    let mut build_configs = configs.clone();
    // The instrumented build too: the `faultstorm_counted` tests of the pvl
    // configurations boot it.
    build_configs.extend(
        configs
            .iter()
            .filter(|c| c.per_vma_lock)
            .map(|c| KernelConfig {
                count_shared_writes: true,
                ..*c
            }),
    );
    steps.push(Step::new("build-kernels", move || {
        for c in &build_configs {
            println!("xtask: building kernel ({})", c.describe());
            c.build(false)?;
        }
        Ok(())
    }));

    // Octeon boards are not in QEMU: build their kernels and check the
    // program headers against every usual U-Boot load address.
    if arches.contains(&Arch::Mips64) {
        let octeon: Vec<KernelConfig> = pvl_configs
            .iter()
            .map(|&per_vma_lock| KernelConfig {
                arch: Arch::Mips64,
                board: Board::Octeon,
                release: o.release,
                per_vma_lock,
                count_shared_writes: false,
            })
            .collect();
        steps.push(Step::new("octeon-image", move || {
            for c in &octeon {
                println!("xtask: building kernel ({})", c.describe());
                let image = c.build(false)?;
                let bytes = std::fs::read(&image)
                    .map_err(|e| Error::new(format!("cannot read {}: {e}", image.display())))?;
                for &(addr, who) in xtask::elf::KNOWN_LOADADDRS {
                    let l = xtask::elf::check_octeon(&bytes, addr).map_err(|e| {
                        Error::new(format!("{}: loadaddr {addr:#x} ({who}): {e}", rel(&image)))
                    })?;
                    println!(
                        "xtask: {}: ELF64 CKSEG0 image at physical [{:#x}, {:#x}), entry {:#x}: \
                         fits loadaddr {addr:#x} ({who})",
                        rel(&image),
                        l.phys_start,
                        l.phys_end,
                        l.entry
                    );
                }
            }
            Ok(())
        }));
    }

    // The integration tests are named ARCH::CONFIG::SCENARIO (tests/tests/qemu.rs);
    // the filters select the configurations built above.
    let mut qemu_args: Vec<String> = ["test", "-p", "qemu-tests", "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in &configs {
        let pvl = if c.per_vma_lock { "pvl" } else { "nopvl" };
        qemu_args.push(format!("{}::{pvl}::", c.arch));
    }
    let mut envs = vec![
        ("SAMARA_TEST_SMP".to_string(), o.machine.smp.to_string()),
        ("SAMARA_TEST_MEM".to_string(), o.machine.mem.clone()),
    ];
    if o.release {
        envs.push(("SAMARA_TEST_RELEASE".to_string(), "1".to_string()));
    }
    if let Some(a) = o.machine.accel {
        let v = match a {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        };
        envs.push(("SAMARA_ACCEL".to_string(), v.to_string()));
    }
    steps.push(Step::new("qemu", move || {
        let mut cmd = cargo();
        cmd.args(&qemu_args[..]);
        cmd.envs(envs.iter().map(|(k, v)| (k, v)));
        status(&mut cmd, &format!("cargo {}", qemu_args.join(" ")))
    }));
    steps
}

fn test(o: &TestOpts) -> Result<()> {
    let steps = test_steps(o);
    if o.only.iter().any(|s| s == "list") {
        for s in &steps {
            println!("{}", s.name);
        }
        return Ok(());
    }
    for name in &o.only {
        if !steps.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::new(format!(
                "unknown step `{name}`; steps: {}",
                names.join(", ")
            )));
        }
    }
    for a in Arch::ALL {
        match o.arch {
            Some(only) if only != a => {
                println!("xtask: NOTE: {a} is not in this run (--arch {only})")
            }
            None if !TEST_ARCHES.contains(&a) => println!(
                "xtask: NOTE: {a} is not in this run (not enabled in xtask TEST_ARCHES; \
                 `cargo xtask test --arch {a}` runs it)"
            ),
            _ => {}
        }
    }
    let total = Instant::now();
    let mut times = Vec::new();
    for step in steps
        .iter()
        .filter(|s| o.only.is_empty() || o.only.contains(&s.name))
    {
        println!("xtask: === step {} ===", step.name);
        let start = Instant::now();
        let r = (step.run)();
        times.push((step.name.clone(), start.elapsed()));
        if let Err(e) = r {
            println!(
                "tests: {} passed, {} failed",
                TESTS_PASSED.load(Ordering::Relaxed),
                TESTS_FAILED.load(Ordering::Relaxed).max(1)
            );
            return Err(Error::new(format!("step {} failed: {e}", step.name)));
        }
    }
    println!("xtask: all steps passed:");
    for (name, t) in &times {
        println!("xtask:   {name:<22} {:>7.1} s", t.as_secs_f64());
    }
    println!(
        "xtask:   {:<22} {:>7.1} s",
        "total",
        total.elapsed().as_secs_f64()
    );
    // The closing line CI reads: every libtest result of the steps above.
    println!(
        "tests: {} passed, {} failed",
        TESTS_PASSED.load(Ordering::Relaxed),
        TESTS_FAILED.load(Ordering::Relaxed)
    );
    Ok(())
}

/// `flash`: returns the kernel's exit status when it drove the board.
fn flash(o: &FlashOpts) -> Result<Option<u8>> {
    use xtask::{elf, flash, serial};
    if o.board != Board::Octeon {
        return Err(Error::new(
            "flash boots real boards: use --board octeon (malta runs in QEMU: cargo xtask run --arch mips64)",
        ));
    }
    let source = match &o.fat {
        Some(spec) => {
            let mut words = spec.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(iface), Some(dev), None) => flash::Source::Fat {
                    iface: iface.to_string(),
                    dev: dev.to_string(),
                },
                _ => {
                    return Err(Error::new(format!(
                        "--fat `{spec}`: expected an interface and a device, e.g. \"usb 0:1\""
                    )))
                }
            }
        }
        None => flash::Source::Tftp {
            server: o.server.clone(),
        },
    };
    let plan = flash::Plan {
        loadaddr: o.loadaddr,
        coremask: o.coremask,
        source,
        kernel_args: o.kernel_args.clone(),
    };
    // Validate everything the board will see before spending a build on it.
    let cmds = flash::commands(&plan)?;
    let config = KernelConfig {
        arch: Arch::Mips64,
        board: Board::Octeon,
        release: o.release,
        per_vma_lock: !o.no_per_vma_lock,
        count_shared_writes: false,
    };
    println!("xtask: building kernel ({})", config.describe());
    let image = config.build(false)?;
    let bytes = std::fs::read(&image)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", image.display())))?;
    let layout = elf::check_octeon(&bytes, o.loadaddr)?;
    println!(
        "xtask: image checked: entry {:#x}, loads at physical [{:#x}, {:#x}), file at [{:#x}, {:#x}) while U-Boot copies it",
        layout.entry, layout.phys_start, layout.phys_end, layout.file_at.0, layout.file_at.1
    );
    for w in &layout.warnings {
        println!("xtask: note: {w}");
    }
    let dir = match &o.tftp {
        Some(d) => d.clone(),
        None => output_dir().join("flash").join(config.slug()),
    };
    let out = flash::write_outputs(&dir, &image, &cmds)?;
    println!("xtask: wrote {}", rel(&out.image));
    println!("xtask: wrote {}", rel(&out.script_text));
    match &out.script_image {
        Some(p) => println!("xtask: wrote {} (mkimage -T script)", rel(p)),
        None => println!(
            "xtask: mkimage not found: no script image (Debian: apt-get install u-boot-tools)"
        ),
    }
    if let flash::Source::Fat { iface, dev } = &plan.source {
        println!(
            "xtask: copy {} to the FAT partition U-Boot sees as `{iface} {dev}`",
            rel(&out.image)
        );
    } else if o.tftp.is_none() {
        println!(
            "xtask: serve {} from your TFTP server's root (or pass --tftp DIR)",
            rel(&dir)
        );
    }
    let Some(dev) = &o.serial else {
        print!("xtask: {}", flash::instructions(&plan, &cmds, &out));
        return Ok(None);
    };
    println!(
        "xtask: driving U-Boot on {} at {} baud: power the board on or reset it (waiting {} s)",
        dev.display(),
        o.baud,
        o.prompt_timeout
    );
    let port = serial::Tty::open(dev, o.baud)?;
    let mut stdout = std::io::stdout();
    let timeouts = serial::Timeouts {
        prompt: Duration::from_secs(o.prompt_timeout),
        echo: Duration::from_secs(2),
        command: Duration::from_secs(120),
        kernel: Duration::from_secs(o.timeout),
    };
    let code = serial::Driver::new(port, &mut stdout).boot(&cmds, &timeouts)?;
    println!();
    println!("xtask: the kernel reported exit status {code}");
    Ok(Some(code))
}

fn bench(o: &BenchOpts) -> Result<()> {
    let accel = match o.accel {
        Some(a) => a,
        None => AccelChoice::from_env()?,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    xtask::bench::run(&xtask::bench::Options {
        quick: o.quick,
        only: o.only.clone(),
        arches: if o.arch.is_empty() {
            vec![Arch::X86_64]
        } else {
            o.arch.clone()
        },
        accel,
        reps: o.reps,
        mem: o.mem.clone(),
        linux_kernel: o.linux_kernel.clone(),
        save: o.save,
        count_shared_writes: o.count_shared_writes,
        command: format!("cargo xtask {}", args.join(" ")),
    })
}

fn miri(o: &MiriOpts) -> Result<()> {
    let has_miri = Command::new("cargo")
        .args(["+nightly", "miri", "--version"])
        .current_dir(workspace_root())
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_miri {
        println!("xtask: miri is not installed for nightly; installing it with rustup");
        status(
            Command::new("rustup").args([
                "component",
                "add",
                "--toolchain",
                "nightly",
                "miri",
                "rust-src",
            ]),
            "rustup component add --toolchain nightly miri rust-src",
        )?;
    }
    // `cargo +nightly` from the rustup proxy overrides rust-toolchain.toml.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["+nightly", "miri", "test", "-p", "mm"])
        .args(&o.args);
    let label = format!("cargo +nightly miri test -p mm {}", o.args.join(" "));
    status(&mut cmd, label.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 13 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
            ),
            Some((13, 0))
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 8 passed; 1 failed; 0 ignored; 0 measured; 8 filtered out"
            ),
            Some((8, 1))
        );
        assert_eq!(parse_test_result("running 8 tests"), None);
    }

    #[test]
    fn x86_64_is_always_tested() {
        // The host's own architecture is never left out of `cargo xtask test`.
        assert!(TEST_ARCHES.contains(&Arch::X86_64));
    }
}
