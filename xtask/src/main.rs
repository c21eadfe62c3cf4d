//! `cargo xtask`: build, run and test Samara.
//!
//! ```text
//! cargo xtask build [--arch A] [--release] [--no-per-vma-lock]
//! cargo xtask run   [--arch A] [--release] [--no-per-vma-lock] [--smp N] [--mem SIZE]
//!                   [--accel auto|kvm|tcg] [--gdb] [--timeout SECS] [-- KERNEL_ARGS...]
//! cargo xtask test  [--arch A] [--release] [--no-per-vma-lock] [--smp N] [--mem SIZE]
//!                   [--accel ...] [--only STEP]...
//! cargo xtask miri  [-- ARGS...]
//! ```
//!
//! New subcommands (bench, flash) are one more `Cmd` variant and function;
//! new test steps are one more entry in [`test_steps`].

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use xtask::build::KernelConfig;
use xtask::qemu::{self, AccelChoice, Machine, Outcome, RunSpec};
use xtask::{output_dir, workspace_root, Arch, Board, Error, Result};

/// Architectures whose kernels `cargo xtask test` lints, builds and boots by
/// default.
const TEST_ARCHES: &[Arch] = &[Arch::X86_64, Arch::Mips64];

/// Host crates that clippy checks with `--all-targets` (the kernel crates
/// are checked per target instead).
const HOST_PACKAGES: &[&str] = &["mm", "boot", "xtask", "qemu-tests"];

#[derive(Parser)]
#[command(
    name = "cargo xtask",
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
}

impl KernelOpts {
    fn config(&self) -> KernelConfig {
        KernelConfig {
            arch: self.arch,
            board: self.board,
            release: self.release,
            per_vma_lock: !self.no_per_vma_lock,
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
    /// Kernel command line: test=boot|pagefault|panic, workload=none, per_vma_lock=on|off.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Build(o) => build(&o).map(|_| ()),
        Cmd::Run(o) => run(&o),
        Cmd::Test(o) => test(&o),
        Cmd::Miri(o) => miri(&o),
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
    let kernel_args = o.kernel_args.join(" ");
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

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn status(cmd: &mut Command, label: &str) -> Result<()> {
    println!("xtask: + {label}");
    let s = cmd
        .status()
        .map_err(|e| Error::new(format!("cannot run {label}: {e}")))?;
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
            };
            let mut cmd = config.cargo("clippy");
            cmd.args(["--", "-D", "warnings"]);
            status(
                &mut cmd,
                &format!("cargo clippy (kernel, {arch}) -- -D warnings"),
            )
        }));
    }

    // Default members: the host crates' unit and integration tests.
    steps.push(Step::cargo("unit", &["test"], &[]));

    let configs: Vec<KernelConfig> = arches
        .iter()
        .flat_map(|&arch| {
            pvl_configs.iter().map(move |&per_vma_lock| KernelConfig {
                arch,
                board: Board::Malta,
                release: o.release,
                per_vma_lock,
            })
        })
        .collect();
    let build_configs = configs.clone();
    steps.push(Step::new("build-kernels", move || {
        for c in &build_configs {
            println!("xtask: building kernel ({})", c.describe());
            c.build(false)?;
        }
        Ok(())
    }));

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
    let arches: Vec<Arch> = o.arch.map_or(TEST_ARCHES.to_vec(), |a| vec![a]);
    for a in Arch::ALL {
        if !arches.contains(&a) {
            println!(
                "xtask: NOTE: {a} is not in this run (not enabled in xtask TEST_ARCHES; \
                 `cargo xtask test --arch {a}` runs it)"
            );
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
    Ok(())
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
    status(&mut cmd, "cargo +nightly miri test -p mm")
}
