//! In-QEMU integration tests: the host-side runner.
//!
//! Each test in `tests/qemu.rs` boots a kernel image in QEMU with one
//! scenario on the command line (`test=NAME`) and judges the run by QEMU's
//! exit status and the serial log. Images are built once per configuration
//! and process ([`image`]), with xtask's own build code; runs are bounded by
//! a time-out and their serial logs stay in `target/samara/logs/`.
//!
//! Environment (set by `cargo xtask test`, all optional):
//! `SAMARA_TEST_RELEASE=1` (test release kernels), `SAMARA_TEST_SMP=N`,
//! `SAMARA_TEST_MEM=SIZE`, `SAMARA_ACCEL=auto|kvm|tcg`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use xtask::build::KernelConfig;
pub use xtask::qemu::Outcome;
use xtask::qemu::{self, AccelChoice, Machine, RunSpec};
pub use xtask::{Arch, Board};

/// How long one scenario may run before it counts as hung. TCG-emulated
/// MIPS boots take longer than KVM x86_64 ones; both are far below this.
pub fn timeout(arch: Arch) -> Duration {
    match arch {
        Arch::X86_64 => Duration::from_secs(60),
        Arch::Mips64 => Duration::from_secs(120),
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

type ImageSlot = Arc<OnceLock<Result<PathBuf, String>>>;

/// The image of `config`, built on first use. Concurrent tests of the same
/// configuration wait for the one build; different configurations build in
/// turn (`KernelConfig::build` serialises them: they share cargo's output
/// path).
pub fn image(config: KernelConfig) -> Result<PathBuf, String> {
    static SLOTS: OnceLock<Mutex<HashMap<KernelConfig, ImageSlot>>> = OnceLock::new();
    let slot = {
        let mut map = SLOTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(config).or_default().clone()
    };
    slot.get_or_init(|| config.build(true).map_err(|e| e.to_string()))
        .clone()
}

/// The result of one scenario run, with everything needed to judge it.
pub struct ScenarioRun {
    pub config: KernelConfig,
    pub scenario: String,
    pub outcome: Outcome,
    /// The serial log's contents (`\r` removed).
    pub log_text: String,
    pub log: PathBuf,
    pub qemu_stderr: String,
    pub command: String,
}

impl ScenarioRun {
    /// Panics with the log path and contents unless `cond` holds.
    pub fn require(&self, cond: bool, what: &str) {
        if !cond {
            panic!(
                "{} ({}): {what}\noutcome: {}\nserial log: {}\ncommand: {}\nQEMU stderr: {}\n--- serial log ---\n{}--- end ---",
                self.scenario,
                self.config.describe(),
                self.outcome.describe(Some(timeout(self.config.arch))),
                self.log.display(),
                self.command,
                self.qemu_stderr.trim_end(),
                self.log_text
            );
        }
    }

    pub fn require_outcome(&self, expected: Outcome) {
        self.require(
            self.outcome == expected,
            &format!("expected {}", expected.describe(None)),
        );
    }

    pub fn require_line(&self, needle: &str) {
        self.require(
            self.log_text.contains(needle),
            &format!("serial log lacks `{needle}`"),
        );
    }

    /// The rest of the first log line that starts with `prefix`.
    pub fn line_after(&self, prefix: &str) -> &str {
        let found = self
            .log_text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix));
        self.require(
            found.is_some(),
            &format!("no log line starts with `{prefix}`"),
        );
        found.unwrap_or_default()
    }
}

/// Builds (once) and boots `arch` with `per_vma_lock` as configured and
/// `kernel_args` on the command line; `name` labels the log file.
pub fn run(arch: Arch, per_vma_lock: bool, name: &str, kernel_args: &str) -> ScenarioRun {
    run_smp(arch, per_vma_lock, name, kernel_args, None)
}

/// The CPU count of the scenarios that exercise SMP: at least 4 (more if
/// `SAMARA_TEST_SMP` asks for more).
pub fn smp_cpus() -> u32 {
    env_or("SAMARA_TEST_SMP", "4")
        .parse::<u32>()
        .unwrap_or(4)
        .max(4)
}

/// [`run`] with `smp` CPUs instead of `SAMARA_TEST_SMP`'s.
pub fn run_smp(
    arch: Arch,
    per_vma_lock: bool,
    name: &str,
    kernel_args: &str,
    smp: Option<u32>,
) -> ScenarioRun {
    run_with(
        arch,
        (per_vma_lock, false),
        name,
        kernel_args,
        smp,
        timeout(arch),
    )
}

/// How long a workload may run: page faults are slow under software
/// virtualisation (PVM's shadow paging makes one cost over a millisecond)
/// and under TCG, and the tests run side by side on few host cores.
pub fn workload_timeout(arch: Arch) -> Duration {
    timeout(arch) * 3
}

/// Boots the kernel built with `features` = (per-vma-lock,
/// count-shared-writes).
fn run_with(
    arch: Arch,
    features: (bool, bool),
    name: &str,
    kernel_args: &str,
    smp: Option<u32>,
    limit: Duration,
) -> ScenarioRun {
    let (per_vma_lock, count_shared_writes) = features;
    let config = KernelConfig {
        arch,
        board: Board::Malta,
        release: std::env::var("SAMARA_TEST_RELEASE").is_ok_and(|v| v == "1"),
        per_vma_lock,
        count_shared_writes,
    };
    let image = image(config).unwrap_or_else(|e| panic!("{e}"));
    let choice = AccelChoice::from_env().unwrap_or_else(|e| panic!("{e}"));
    let (accel, _) = qemu::choose_accel(arch, choice).unwrap_or_else(|e| panic!("{e}"));
    let smp_env = env_or("SAMARA_TEST_SMP", "1");
    let machine = Machine {
        smp: smp.unwrap_or_else(|| {
            smp_env
                .parse()
                .unwrap_or_else(|_| panic!("SAMARA_TEST_SMP={smp_env} is not a number"))
        }),
        mem: qemu::parse_mem(&env_or("SAMARA_TEST_MEM", qemu::DEFAULT_MEM))
            .unwrap_or_else(|e| panic!("SAMARA_TEST_MEM: {e}")),
        accel,
        gdb: false,
    };
    let log = xtask::output_dir()
        .join("logs")
        .join(format!("test-{}-{name}.log", config.slug()));
    let report = qemu::run(&RunSpec {
        arch,
        image: &image,
        kernel_args,
        machine: &machine,
        log: log.clone(),
        timeout: Some(limit),
        echo: false,
    })
    .unwrap_or_else(|e| panic!("{name} ({}): {e}", config.describe()));
    let log_text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("cannot read serial log {}: {e}", log.display()))
        .replace('\r', "");
    ScenarioRun {
        config,
        scenario: name.to_string(),
        outcome: report.outcome,
        log_text,
        log,
        qemu_stderr: report.stderr,
        command: report.command,
    }
}

/// The banner every successful boot prints, for this configuration.
fn require_banner(r: &ScenarioRun) {
    r.require_line(&format!("Samara {}", env!("CARGO_PKG_VERSION")));
    r.require_line(&format!("({}, ", r.config.arch));
    r.require_line("  cpu:");
    r.require_line("  memory:");
    r.require_line(if r.config.per_vma_lock {
        "per-vma-lock: compiled in, enabled"
    } else {
        "per-vma-lock: compiled out, disabled"
    });
}

/// `test=boot`: boots, prints the banner, finds all of RAM reachable, exits
/// with success.
pub fn scenario_boot(arch: Arch, per_vma_lock: bool) {
    let r = run(arch, per_vma_lock, "boot", "test=boot");
    r.require_outcome(Outcome::Pass);
    require_banner(&r);
    r.require_line("cmdline:      \"test=boot\"");
    r.require_line("samara: result: pass: test boot: booted");
    r.require_line("samara: exit 0");
}

/// `test=pagefault`: the read of an unmapped kernel address is caught, and
/// the decoded address and access type are the ones the kernel read.
pub fn scenario_pagefault(arch: Arch, per_vma_lock: bool) {
    let r = run(arch, per_vma_lock, "pagefault", "test=pagefault");
    r.require_outcome(Outcome::Pass);
    let addr = r
        .line_after("test pagefault: reading unmapped kernel address ")
        .trim()
        .to_string();
    r.require(
        addr.starts_with("0x"),
        "the probed address is printed in hex",
    );
    r.require_line(&format!("kernel fault: Read access to {addr} at pc "));
    r.require_line("(not present, kernel mode");
    r.require_line(&format!(
        "samara: result: pass: test pagefault: caught not-present kernel read of {addr}"
    ));
    r.require_line("samara: exit 0");
}

/// `test=panic`: the panic message and location reach the console and QEMU
/// exits with the failure status.
pub fn scenario_panic(arch: Arch, per_vma_lock: bool) {
    let r = run(arch, per_vma_lock, "panic", "test=panic");
    r.require_outcome(Outcome::KernelFailure);
    r.require_line("kernel panicked at kernel/src/main.rs:");
    r.require_line("deliberate panic (test=panic)");
    r.require_line("samara: result: fail: kernel panic");
    r.require_line("samara: exit 1");
}

/// An unknown key is refused with the list of valid keys and a failure status.
pub fn scenario_bad_args(arch: Arch, per_vma_lock: bool) {
    let r = run(arch, per_vma_lock, "badargs", "test=boot frobnicate=1");
    r.require_outcome(Outcome::KernelFailure);
    r.require_line("bad kernel command line: unknown key `frobnicate`; valid keys: test=");
    r.require_line("samara: exit 1");
}

/// `test=smp`: every CPU comes online, ticks, answers an IPI and runs
/// kernel threads; RCU callbacks run on an idle system.
pub fn scenario_smp(arch: Arch, per_vma_lock: bool) {
    let n = smp_cpus();
    let r = run_smp(arch, per_vma_lock, "smp", "test=smp", Some(n));
    r.require_outcome(Outcome::Pass);
    r.require_line(&format!("test smp: {n} of {n} CPU(s) online"));
    r.require_line(&format!("kernel threads ran on {n} CPU(s)"));
    r.require_line(&format!("samara: result: pass: test smp: {n} CPUs online"));
}

/// `test=user`: `hello` processes on every CPU: user mode, system calls,
/// bad pointers refused, exit, and every frame given back.
pub fn scenario_user(arch: Arch, per_vma_lock: bool) {
    let n = smp_cpus();
    let r = run_smp(arch, per_vma_lock, "user", "test=user", Some(n));
    r.require_outcome(Outcome::Pass);
    for i in 0..2 * n {
        r.require_line(&format!(", arg {i}\n"));
    }
    let passed = r
        .log_text
        .matches(&format!("hello: all checks passed on {n} CPU(s)"))
        .count();
    r.require(
        passed == 2 * n as usize,
        &format!("{passed} of {} hello processes passed their checks", 2 * n),
    );
    r.require_line(&format!(
        "samara: result: pass: test user: {} user processes ran and exited with 0; frames free back at",
        2 * n
    ));
}

/// The `key=value` fields of the kernel's workload summary line.
fn summary(r: &ScenarioRun) -> std::collections::BTreeMap<String, String> {
    let f = xtask::summary::fields(&r.log_text, xtask::summary::PREFIX);
    r.require(f.is_some(), "the kernel printed no `samara: summary:` line");
    f.unwrap_or_default()
}

fn num(r: &ScenarioRun, f: &std::collections::BTreeMap<String, String>, key: &str) -> u64 {
    let v = f.get(key).and_then(|v| v.parse::<u64>().ok());
    r.require(
        v.is_some(),
        &format!("summary field `{key}` missing or not a number"),
    );
    v.unwrap_or_default()
}

/// Runs `workload=NAME` with at least 4 CPUs and checks what every workload
/// must show: success, exit status 0, the free-frame count back at its
/// value before the workload, no VMA left, grace periods completed.
pub fn run_workload(
    arch: Arch,
    per_vma_lock: bool,
    name: &str,
    extra: &str,
) -> (ScenarioRun, std::collections::BTreeMap<String, String>) {
    run_workload_built(arch, (per_vma_lock, false), name, extra)
}

/// [`run_workload`] on the kernel built with `features` = (per-vma-lock,
/// count-shared-writes).
pub fn run_workload_built(
    arch: Arch,
    features: (bool, bool),
    name: &str,
    extra: &str,
) -> (ScenarioRun, std::collections::BTreeMap<String, String>) {
    let per_vma_lock = features.0;
    let n = smp_cpus();
    let args = format!("workload={name} {extra}");
    let r = run_with(
        arch,
        features,
        name,
        args.trim_end(),
        Some(n),
        workload_timeout(arch),
    );
    r.require_outcome(Outcome::Pass);
    let f = summary(&r);
    r.require(
        f.get("workload").map(String::as_str) == Some(name),
        "summary names the workload",
    );
    r.require(
        f.get("status").map(String::as_str) == Some("0"),
        "the program exited with 0",
    );
    r.require(
        f.get("checks").map(String::as_str) == Some("pass"),
        "the kernel's checks passed",
    );
    r.require(
        f.get("per_vma_lock").map(String::as_str) == Some(if per_vma_lock { "on" } else { "off" }),
        "per-VMA locking as configured",
    );
    let (before, after) = (
        num(&r, &f, "frames_free_before"),
        num(&r, &f, "frames_free_after"),
    );
    r.require(
        before == after,
        &format!("frames free {before} before, {after} after"),
    );
    r.require(
        num(&r, &f, "vmas_live") == 0,
        "no VMA left after the workload",
    );
    r.require(
        num(&r, &f, "rcu_grace_periods") > 0,
        "RCU grace periods completed",
    );
    r.require(num(&r, &f, "cpus") == u64::from(n), "every CPU online");
    (r, f)
}

/// The op counts `scenario_faultstorm` asks for: explicit (not the
/// program's defaults), so that the test sees `mmap_ops=`/`fork_ops=` reach
/// the program; small, so that the loops add well under a second per run.
const TEST_MMAP_OPS: u64 = 300;
const TEST_FORK_OPS: u64 = 8;

/// `workload=faultstorm`: faults resolved (per-VMA locked when on, under
/// the mmap lock when off), TLB shootdowns across CPUs, nothing leaked;
/// and the lines `cargo xtask bench` reads, parsed by its own parser, with
/// figures that agree with the wall clock: the user-mode cycle counter
/// (rdtsc / rdhwr Count) runs at the kernel's `cycles_per_second`.
pub fn scenario_faultstorm(arch: Arch, per_vma_lock: bool) {
    let (r, f) = run_workload(
        arch,
        per_vma_lock,
        "faultstorm",
        &format!("pages=64 rounds=2 mmap_ops={TEST_MMAP_OPS} fork_ops={TEST_FORK_OPS}"),
    );
    let faults = num(&r, &f, "faults");
    let n = u64::from(smp_cpus());
    r.require(
        faults >= n * 64 * 2,
        &format!("{faults} faults for {n} threads x 64 pages x 2 rounds"),
    );
    let success = num(&r, &f, "vma_lock_success");
    let locked = num(&r, &f, "mmap_locked_faults");
    if per_vma_lock {
        r.require(success > 0, "per-VMA locking handled faults");
    } else {
        r.require(
            success == 0,
            "no per-VMA locked fault with per-VMA locking off",
        );
        r.require(locked >= faults / 2, "faults went under the mmap lock");
    }
    r.require(
        num(&r, &f, "remote_flushes") > 0,
        "munmap shot down other CPUs' TLBs",
    );
    r.require_line("faultstorm: threads=");
    r.require_line(" faults/s; ");
    r.require_line(" touch_cycles=");
    r.require_line(&format!("mmap-loop: ops={TEST_MMAP_OPS} pages=4 cycles="));
    r.require_line(&format!("fork-loop: ops={TEST_FORK_OPS} pages=64 cycles="));

    let g = xtask::bench_guest::GuestResults::from_output(&r.log_text);
    r.require(g.is_ok(), &format!("bench lines do not parse: {g:?}"));
    let g = g.unwrap_or_default();
    let hz = num(&r, &f, "cycles_per_second");
    r.require(hz > 0, "cycles_per_second is known");
    // Counter ticks as nanoseconds (u128: no overflow at any rate).
    let as_ns = |c: u64| (u128::from(c) * 1_000_000_000 / u128::from(hz.max(1))) as u64;
    // Host scheduling can stall a vCPU between a clock read and a counter
    // read; this slack covers that, while a wrong unit, a lost wrap of
    // MIPS's 32-bit Count (26.8 s) or an unread counter is far outside it.
    let slack = 50_000_000;
    let Some(storm) = &g.faultstorm else {
        return r.require(false, "no faultstorm line");
    };
    r.require(
        storm.shared.is_none(),
        "shared-line counts only from a count-shared-writes build",
    );
    let touch = storm.touch_cycles.unwrap_or(0);
    r.require(touch > 0, "touch_cycles is positive");
    // Each thread's write loops lie inside the storm's wall-clock span.
    r.require(
        as_ns(touch) <= storm.threads * storm.ns + slack,
        &format!(
            "touch_cycles={touch} ({} ns) exceeds {} threads x ns={}",
            as_ns(touch),
            storm.threads,
            storm.ns
        ),
    );
    for (name, l, ops, pages) in [
        ("mmap-loop", &g.mmap_loop, TEST_MMAP_OPS, 4),
        ("fork-loop", &g.fork_loop, TEST_FORK_OPS, 64),
    ] {
        let Some(l) = l else {
            return r.require(false, &format!("no {name} line"));
        };
        r.require(
            (l.ops, l.pages) == (ops, pages),
            &format!("{name}: ops={} pages={}", l.ops, l.pages),
        );
        // `cycles` and `ns` time the same span.
        let c = as_ns(l.cycles);
        r.require(
            l.cycles > 0 && c + slack >= l.ns / 2 && c <= 2 * l.ns + slack,
            &format!(
                "{name}: cycles={} ({c} ns at {hz} Hz) disagrees with ns={}",
                l.cycles, l.ns
            ),
        );
    }
}

/// `workload=faultstorm` on the `count-shared-writes` build: the kernel
/// says it counts, and faultstorm's line carries mm's four counts, which
/// are consistent with each other and with the faults taken (every fault
/// takes a lock, per-VMA or mmap: at least one atomic read-modify-write).
pub fn scenario_faultstorm_counted(arch: Arch, per_vma_lock: bool) {
    let (r, _) = run_workload_built(
        arch,
        (per_vma_lock, true),
        "faultstorm",
        "pages=64 rounds=2 mmap_ops=50 fork_ops=2",
    );
    r.require_line("count-shared-writes build");
    let g = xtask::bench_guest::GuestResults::from_output(&r.log_text);
    r.require(g.is_ok(), &format!("bench lines do not parse: {g:?}"));
    let g = g.unwrap_or_default();
    let storm = g.faultstorm.as_ref();
    let counts = storm.and_then(|f| f.shared.map(|s| (f.faults, s)));
    let Some((faults, s)) = counts else {
        return r.require(false, "no atomic_rmw=/... on the faultstorm line");
    };
    r.require(
        s.rmw >= faults,
        &format!("atomic_rmw={} for {faults} faults", s.rmw),
    );
    r.require(s.stores > 0, "atomic stores counted");
    r.require(
        s.shared_writes <= s.rmw + s.stores && s.shared_lines <= s.shared_writes,
        &format!("inconsistent counts: {s:?}"),
    );
}

/// `workload=forkbomb-lite`: fork, copy-on-write, munmap, exit, in a loop.
pub fn scenario_forkbomb(arch: Arch, per_vma_lock: bool) {
    let (r, _) = run_workload(arch, per_vma_lock, "forkbomb-lite", "");
    r.require_line("forkbomb: 48 processes forked, all exited cleanly");
}

/// `workload=segv`: the kernel kills each faulting program with a clear
/// line and keeps going. On MIPS64 under QEMU (Octeon68XX has no RI/XI)
/// a data page executes instead of faulting, and the program checks that.
pub fn scenario_segv(arch: Arch, per_vma_lock: bool) {
    let (r, _) = run_workload(arch, per_vma_lock, "segv", "");
    let exec_protection = arch == Arch::X86_64;
    r.require_line("killed: segfault at 0x1000 (read), pc=0x");
    r.require_line("killed: segfault at 0x");
    r.require_line(" (write), pc=0x");
    let mut faulting = vec![
        "read of an unmapped address",
        "write to a read-only page",
        "fault with a sibling thread running",
    ];
    if exec_protection {
        r.require_line(" (exec), pc=0x");
        faulting.push("execution of a data page");
    } else {
        r.require_line(
            "segv: execution of a data page: ran, as expected on an MMU without execute protection",
        );
    }
    let kills = r.log_text.matches(") killed: segfault at ").count();
    r.require(
        kills == faulting.len(),
        &format!("{kills} kill lines, expected {}", faulting.len()),
    );
    for what in faulting {
        r.require_line(&format!("segv: {what}: child killed with SEGV as expected"));
    }
    r.require_line("segv: all checks passed");
}

/// `workload=tlb-shootdown`: after munmap-by-replacement, mprotect and fork
/// change a page that a thread on another CPU keeps storing to, no store
/// lands through a stale translation.
pub fn scenario_tlb_shootdown(arch: Arch, per_vma_lock: bool) {
    let (r, f) = run_workload(arch, per_vma_lock, "tlb-shootdown", "rounds=4");
    for check in ["replace", "mprotect", "fork"] {
        r.require_line(&format!(
            "tlbcheck: {check}: 4 rounds on {} CPU(s), no stale translation used",
            smp_cpus()
        ));
    }
    r.require_line("tlbcheck: all checks passed");
    r.require(
        num(&r, &f, "remote_flushes") > 0,
        "the changes shot down other CPUs' TLBs",
    );
}

/// `test=mips-user` (MIPS64): user mode, syscalls, refills, the two
/// expected faults, and ASID isolation across generation rollovers.
pub fn scenario_mips_user(per_vma_lock: bool) {
    let r = run(Arch::Mips64, per_vma_lock, "mips-user", "test=mips-user");
    r.require_outcome(Outcome::Pass);
    r.require_line("mips-user: exit 0, 4 syscalls, 2 faults resolved");
    r.require_line("mips-user: 600 rounds of two address spaces");
    r.require_line("samara: result: pass: test mips-user:");
    r.require_line("no frame leaked");
    let line = r.line_after("mips-user: 600 rounds of two address spaces at 0x200000: ");
    let rollovers: u64 = line
        .split(", ")
        .nth(1)
        .and_then(|w| w.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    r.require(rollovers >= 2, "at least two ASID generation rollovers");
}

/// `test=mips-shootdown` (MIPS64, two CPUs or more): CPU 0 unmaps pages in
/// CPU 1's TLB and CPU 1's next access faults, with CPU 1 in user mode
/// (answered from the tick), switched away (stale ASID mark, no request),
/// spinning in the kernel (spin hook), and idle.
pub fn scenario_mips_shootdown(per_vma_lock: bool) {
    let smp = env_or("SAMARA_TEST_SMP", "2")
        .parse::<u32>()
        .unwrap_or(2)
        .max(2);
    let r = run_smp(
        Arch::Mips64,
        per_vma_lock,
        "mips-shootdown",
        "test=mips-shootdown",
        Some(smp),
    );
    r.require_outcome(Outcome::Pass);
    r.require_line("platform:     malta, ");
    r.require_line("mips-shootdown: phase 1 (user mode, answered from the tick)");
    r.require_line("CPU 1 faulted at 0x200000");
    r.require_line("mips-shootdown: phase 2 (switched away: stale mark): 0 posted");
    r.require_line("faulted at 0x220000");
    r.require_line("P3 in CPU 1's TLB before true, after false");
    r.require_line("P4 in CPU 1's TLB before true, after false");
    r.require_line("samara: result: pass: test mips-shootdown:");
    r.require_line("no frame leaked");
}
