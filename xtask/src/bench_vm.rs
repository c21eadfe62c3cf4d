//! The in-guest half of `cargo xtask bench`: boots Samara's `faultstorm`
//! workload (per-VMA locks and mmap lock only) and the Linux anchor in the
//! same QEMU machine, interleaved (Samara per-VMA, Samara mmap lock, Linux,
//! for each CPU count, then again for each repetition) so that drift in
//! the host's load hits all three alike, and turns their summary lines into
//! report rows and the plot.
//!
//! Accelerator: KVM when usable, else TCG, for Samara and Linux alike. One
//! exception is decided here, not silently: when /dev/kvm is served by
//! `kvm_pvm` (PVM, a page-table-based nested hypervisor), guest kernels run
//! largely through its instruction emulator: Samara's fault path costs ~25M
//! cycles there, and a stock Linux kernel dies in it (emulation failures on
//! SHLX in the zstd decompressor, on CMPXCHG16B and XRSTOR in early boot;
//! with those CPU features masked it needs ~40 s to reach the slab
//! allocator). `auto` then means TCG for both; `--accel kvm` forces PVM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::bench::{Better, Estimate, Row, Status};
use crate::bench_guest::{FaultStorm, GuestResults, OpLoop, SharedPerFault};
use crate::bench_linux::{self, LinuxKernel};
use crate::bench_plot::{Point, Series};
use crate::build::KernelConfig;
use crate::qemu::{self, Accel, AccelChoice, Machine, Outcome, RunSpec};
use crate::{Arch, Board, Error, Result};

/// CPU counts of the comparison.
pub const CPUS: [u32; 3] = [1, 2, 4];
/// CPU counts of the functional scaling check (TCG).
pub const SCALING_CPUS: [u32; 2] = [8, 16];

/// What the guest part was asked to do.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    pub quick: bool,
    pub reps: u32,
    pub mem: String,
    pub accel: AccelChoice,
    pub arches: Vec<Arch>,
    pub samara: bool,
    pub linux: bool,
    pub scaling: bool,
    pub linux_kernel: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// Samara's kernels are the `count-shared-writes` build: faultstorm's
    /// line carries the counts (rows "... per fault"), and its timings
    /// include the counting.
    pub count_shared_writes: bool,
}

/// Rows, notes and plot data.
pub struct GuestOutcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub series: Vec<Series>,
    pub plot_title: String,
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    SamaraPvl,
    SamaraMmapLock,
    Linux,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::SamaraPvl => "Samara, per-VMA locks",
            System::SamaraMmapLock => "Samara, mmap lock only",
            System::Linux => "Linux",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            System::SamaraPvl => "samara-pvl",
            System::SamaraMmapLock => "samara-nopvl",
            System::Linux => "linux",
        }
    }

    fn per_vma_lock(self) -> bool {
        self == System::SamaraPvl
    }
}

const SAMARA: [System; 2] = [System::SamaraPvl, System::SamaraMmapLock];

fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "KVM",
        Accel::Tcg => "TCG",
    }
}

/// Where the guests run, and why.
struct AccelPlan {
    accel: Accel,
    why: String,
}

/// The accelerator for Samara and Linux alike. `auto` takes KVM when
/// /dev/kvm is usable, except when it is served by `kvm_pvm`: PVM runs
/// guest kernels deprivileged and emulates what they cannot do natively, so
/// fault-path costs measure its emulator (Samara's `faultstorm` there:
/// ~120 faults/s and ~25M cycles per fault, against ~6.6k faults/s under
/// TCG on the same host), and a stock Linux kernel does not boot under it
/// at all (emulation failures on SHLX, CMPXCHG16B, XRSTOR).
fn plan_accel(arch: Arch, choice: AccelChoice) -> Result<AccelPlan> {
    let (accel, why) = qemu::choose_accel(arch, choice)?;
    let module = crate::bench::kvm_module();
    if accel == Accel::Kvm && choice == AccelChoice::Auto && module.as_deref() == Some("kvm_pvm") {
        return Ok(AccelPlan {
            accel: Accel::Tcg,
            why: "TCG, for Samara and Linux alike: /dev/kvm here is kvm_pvm (PVM, a nested, \
                  page-table-based hypervisor), which emulates much of a guest kernel: \
                  Samara's faultstorm runs ~50x slower there than under TCG (~25M cycles per \
                  fault), and a stock Linux kernel does not boot (emulation failures on SHLX, \
                  CMPXCHG16B, XRSTOR); `--accel kvm` forces it"
                .into(),
        });
    }
    let mut why = why.to_string();
    if accel == Accel::Kvm {
        if let Some(m) = module {
            why.push_str(&format!(", module {m}"));
        }
    }
    Ok(AccelPlan { accel, why })
}

/// Everything measured for one accelerator and architecture.
#[derive(Default)]
struct Runs {
    results: BTreeMap<(System, u32), Vec<GuestResults>>,
    /// Why a system has no (or fewer) results.
    status: BTreeMap<System, Status>,
}

impl Runs {
    fn get(&self, s: System, cpus: u32) -> &[GuestResults] {
        self.results.get(&(s, cpus)).map_or(&[], Vec::as_slice)
    }

    fn status(&self, s: System) -> Status {
        self.status.get(&s).cloned().unwrap_or(Status::Measured)
    }
}

/// Samara kernels (release builds), built on first use.
struct Kernels {
    arch: Arch,
    count_shared_writes: bool,
    images: BTreeMap<bool, std::result::Result<PathBuf, String>>,
}

impl Kernels {
    fn image(&mut self, per_vma_lock: bool) -> std::result::Result<PathBuf, String> {
        let (arch, count_shared_writes) = (self.arch, self.count_shared_writes);
        self.images
            .entry(per_vma_lock)
            .or_insert_with(|| {
                let c = KernelConfig {
                    arch,
                    board: Board::Malta,
                    release: true,
                    per_vma_lock,
                    count_shared_writes,
                };
                println!("xtask: building kernel ({})", c.describe());
                c.build(true).map_err(|e| e.to_string())
            })
            .clone()
    }
}

fn timeout(accel: Accel, cpus: u32) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(180),
        Accel::Tcg => Duration::from_secs(240 + 30 * u64::from(cpus)),
    }
}

/// The work both systems do at `cpus` CPUs under `accel`: one faulting
/// thread per CPU, 1024-page regions, and enough rounds for the storm to
/// last well above timer resolution (TCG runs ~50x slower than KVM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub threads: u32,
    pub pages: u32,
    pub rounds: u32,
    pub mmap_ops: u32,
    pub mmap_pages: u32,
    pub fork_ops: u32,
    pub fork_pages: u32,
}

impl Work {
    pub fn new(accel: Accel, cpus: u32) -> Work {
        let kvm = accel == Accel::Kvm;
        Work {
            threads: cpus,
            pages: 1024,
            rounds: if kvm { 32 } else { 8 },
            mmap_ops: if kvm { 100_000 } else { 10_000 },
            // Samara's faultstorm uses these sizes (it has no option for
            // them); the anchor gets them on its command line.
            mmap_pages: samara_abi::faultstorm::MMAP_LOOP_PAGES as u32,
            fork_ops: if kvm { 2_000 } else { 200 },
            fork_pages: samara_abi::faultstorm::FORK_LOOP_PAGES as u32,
        }
    }

    /// Samara's command line: the kernel's own keys (boot/src/options.rs:
    /// `threads=`, `pages=`, `rounds=`, and the loops' `mmap_ops=`,
    /// `fork_ops=`; faultstorm prints the `mmap-loop`/`fork-loop` lines
    /// after the storm, from the same boot).
    pub fn samara_args(&self, per_vma_lock: bool) -> String {
        format!(
            "workload=faultstorm{} threads={} pages={} rounds={} mmap_ops={} fork_ops={}",
            if per_vma_lock { " per_vma_lock=on" } else { "" },
            self.threads,
            self.pages,
            self.rounds,
            self.mmap_ops,
            self.fork_ops
        )
    }

    /// The anchor's parameters (`anchor_KEY=VALUE` on Linux's command line).
    pub fn anchor_params(&self) -> Vec<(String, String)> {
        [
            ("threads", self.threads),
            ("pages", self.pages),
            ("rounds", self.rounds),
            ("mmap_ops", self.mmap_ops),
            ("mmap_pages", self.mmap_pages),
            ("fork_ops", self.fork_ops),
            ("fork_pages", self.fork_pages),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// Boots Samara with `workload=faultstorm`.
fn boot_samara(
    arch: Arch,
    image: &Path,
    system: System,
    machine: &Machine,
    work: &Work,
    log: PathBuf,
) -> std::result::Result<GuestResults, Status> {
    let args = work.samara_args(system.per_vma_lock());
    let t = timeout(machine.accel, machine.smp);
    let report = qemu::run(&RunSpec {
        arch,
        image,
        kernel_args: &args,
        machine,
        log,
        timeout: Some(t),
        echo: false,
    })
    .map_err(|e| Status::Failed(e.to_string()))?;
    let log = report.log.display().to_string();
    // A kernel from before the workloads (issue 6) refuses the command
    // line, or lacks the program.
    if let Some(l) = report.output.lines().find(|l| {
        l.contains("bad kernel command line") || l.contains("has no user program `faultstorm`")
    }) {
        // The kernel's reason, without its list of valid keys.
        let why = l.trim().trim_start_matches("samara: result: fail: ");
        let why = why.split(';').next().unwrap_or(why);
        return Err(Status::Pending(format!(
            "this kernel does not run the bench's faultstorm yet (issue 6, branches \
             kx86/kmips): {why}"
        )));
    }
    let r = GuestResults::from_output(&report.output)
        .map_err(|e| Status::Failed(format!("{e} (serial log {log})")))?;
    if report.outcome != Outcome::Pass {
        return Err(Status::Failed(format!(
            "{} (serial log {log})",
            report.outcome.describe(Some(t))
        )));
    }
    let Some(s) = &r.summary else {
        return Err(Status::Failed(format!(
            "the kernel printed no `samara: summary:` line (serial log {log})"
        )));
    };
    if s.workload != "faultstorm" || s.status != 0 || !s.checks_pass {
        return Err(Status::Failed(format!(
            "workload {} exited with status {}, checks {} (serial log {log})",
            s.workload,
            s.status,
            if s.checks_pass { "pass" } else { "fail" }
        )));
    }
    if s.per_vma_lock != system.per_vma_lock() {
        return Err(Status::Failed(format!(
            "the kernel ran with per_vma_lock={} but was booted for {} (serial log {log})",
            if s.per_vma_lock { "on" } else { "off" },
            system.label()
        )));
    }
    let Some(f) = &r.faultstorm else {
        return Err(Status::Failed(format!(
            "faultstorm printed no `faultstorm: threads=...` line (serial log {log})"
        )));
    };
    if f.vma.is_none() || f.cycles_per_fault.is_none() {
        return Err(Status::Failed(format!(
            "Samara's faultstorm line lacks the VMA_LOCK_* counters or cycles_per_fault \
             (serial log {log})"
        )));
    }
    if (f.threads, f.pages, f.rounds)
        != (
            u64::from(work.threads),
            u64::from(work.pages),
            u64::from(work.rounds),
        )
    {
        return Err(Status::Failed(format!(
            "faultstorm ran threads={} pages={} rounds={}, not what `{args}` asked",
            f.threads, f.pages, f.rounds
        )));
    }
    Ok(r)
}

/// The Linux kernel and initramfs, prepared once.
struct Anchor {
    kernel: LinuxKernel,
    initramfs: PathBuf,
}

fn prepare_anchor(o: &GuestOptions) -> Result<Anchor> {
    let kernel = bench_linux::kernel(o.linux_kernel.as_deref())?;
    println!("xtask: Linux anchor: {}", kernel.describe());
    let exe = bench_linux::build_anchor()?;
    let bytes = std::fs::read(&exe)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", exe.display())))?;
    let cpio = bench_linux::initramfs(&bytes)?;
    let initramfs = o.out_dir.join("linux-initramfs.cpio");
    std::fs::write(&initramfs, cpio)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", initramfs.display())))?;
    Ok(Anchor { kernel, initramfs })
}

fn summary(r: &GuestResults) -> String {
    let mut parts = Vec::new();
    if let Some(f) = &r.faultstorm {
        parts.push(format!(
            "{}/s faults",
            crate::bench_plot::human(f.faults_per_sec())
        ));
    }
    if let Some(m) = &r.mmap_loop {
        parts.push(format!("mmap+munmap {:.0} cycles", m.cycles_per_op()));
    }
    if let Some(f) = &r.fork_loop {
        parts.push(format!("fork+exit {:.0} cycles", f.cycles_per_op()));
    }
    parts.join(", ")
}

/// Boots every system at every CPU count `reps` times under `accel`.
#[allow(clippy::too_many_arguments)]
fn measure(
    o: &GuestOptions,
    arch: Arch,
    accel: Accel,
    cpu_counts: &[u32],
    systems: &[System],
    reps: u32,
    kernels: &mut Kernels,
    anchor: &mut Option<std::result::Result<Anchor, String>>,
    mitigations: &mut Vec<String>,
) -> Runs {
    let mut runs = Runs::default();
    let total = reps as usize * cpu_counts.len() * systems.len();
    let mut n = 0;
    for rep in 0..reps {
        for &cpus in cpu_counts {
            let machine = Machine {
                smp: cpus,
                mem: o.mem.clone(),
                accel,
                gdb: false,
            };
            let work = Work::new(accel, cpus);
            for &sys in systems {
                n += 1;
                if runs.status(sys) != Status::Measured {
                    continue; // pending or broken: do not boot it again
                }
                let log = o.out_dir.join("logs").join(format!(
                    "{arch}-{}-{}-{cpus}cpu-{}.log",
                    accel_name(accel).to_lowercase(),
                    sys.slug(),
                    rep + 1
                ));
                let what = format!(
                    "[{n}/{total}] {arch} {}, {}, {cpus} CPU(s)",
                    accel_name(accel),
                    sys.label()
                );
                let result = match sys {
                    System::SamaraPvl | System::SamaraMmapLock => kernels
                        .image(sys.per_vma_lock())
                        .map_err(|e| Status::Failed(format!("kernel build: {e}")))
                        .and_then(|img| boot_samara(arch, &img, sys, &machine, &work, log)),
                    System::Linux => {
                        let a = anchor
                            .get_or_insert_with(|| prepare_anchor(o).map_err(|e| e.to_string()));
                        match a {
                            Err(e) => Err(Status::Failed(e.clone())),
                            Ok(a) => bench_linux::run(
                                &a.kernel,
                                &a.initramfs,
                                &machine,
                                &work.anchor_params(),
                                log,
                                timeout(accel, cpus),
                            )
                            .map(|run| {
                                if mitigations.is_empty() {
                                    *mitigations = mitigations_of(&run.output);
                                }
                                run.results
                            })
                            .map_err(|e| Status::Failed(e.to_string())),
                        }
                    }
                };
                match result {
                    Ok(r) => {
                        println!("xtask: {what}: {}", summary(&r));
                        runs.results.entry((sys, cpus)).or_default().push(r);
                    }
                    Err(s) => {
                        match &s {
                            Status::Pending(w) => println!("xtask: {what}: pending: {w}"),
                            Status::Failed(w) => println!("xtask: {what}: FAILED: {w}"),
                            Status::Measured => {}
                        }
                        runs.status.insert(sys, s);
                    }
                }
            }
        }
    }
    runs
}

/// Linux's mitigations that are in force (not "Not affected"), from the
/// anchor's log lines.
fn mitigations_of(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix("linux-anchor: vulnerability ")
        })
        .filter(|l| !l.ends_with("Not affected"))
        .map(str::to_string)
        .collect()
}

/// Median/min/max of `f` over the runs that have it.
fn stat(runs: &[GuestResults], f: impl Fn(&GuestResults) -> Option<f64>) -> Option<Estimate> {
    let v: Vec<f64> = runs.iter().filter_map(f).collect();
    Estimate::of_runs(&v)
}

/// The run with the median faults/s (its counters go into the report).
fn median_storm(runs: &[GuestResults]) -> Option<&FaultStorm> {
    let mut v: Vec<&FaultStorm> = runs.iter().filter_map(|r| r.faultstorm.as_ref()).collect();
    v.sort_by(|a, b| a.faults_per_sec().total_cmp(&b.faults_per_sec()));
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// The status of a figure that is missing although its system ran.
fn missing(runs: &Runs, s: System, what: &str) -> Status {
    match runs.status(s) {
        Status::Measured if runs.results.keys().any(|(sys, _)| *sys == s) => {
            Status::Pending(format!("{} printed no `{what}` line", s.label()))
        }
        Status::Measured => Status::Pending(format!("{} not run (--only)", s.label())),
        other => other,
    }
}

/// A status in words, for notes.
fn describe(s: &Status) -> String {
    match s {
        Status::Measured => "measured".into(),
        Status::Pending(w) => format!("pending: {w}"),
        Status::Failed(w) => format!("failed: {w}"),
    }
}

/// Why Samara has no results at all in `runs` (None if it has some): its
/// rows then shrink to one per figure Linux has, plus one summary row.
fn samara_absent(runs: &Runs) -> Option<Status> {
    if SAMARA
        .iter()
        .any(|s| runs.results.keys().any(|(sys, _)| sys == s))
    {
        return None;
    }
    Some(
        SAMARA
            .iter()
            .map(|&s| runs.status(s))
            .find(|st| *st != Status::Measured)
            .unwrap_or_else(|| Status::Pending("Samara not run (--only)".into())),
    )
}

/// A Samara row against a Linux baseline (when Linux ran).
#[allow(clippy::too_many_arguments)]
fn versus_linux(
    section: &str,
    name: &str,
    unit: &'static str,
    better: Better,
    accel: Accel,
    runs: &Runs,
    sys: System,
    cpus: u32,
    with_linux: bool,
    what: &str,
    f: impl Fn(&GuestResults) -> Option<f64> + Copy,
) -> Row {
    let fig = stat(runs.get(sys, cpus), f);
    let base = with_linux.then(|| {
        let label = System::Linux.label().to_string();
        (label, stat(runs.get(System::Linux, cpus), f))
    });
    let mut row = Row::new(section, name, unit, better, accel_name(accel)).with(fig, base);
    if fig.is_none() {
        row = row.status(missing(runs, sys, what));
    } else if with_linux && row.baseline.as_ref().is_some_and(|(_, b)| b.is_none()) {
        row = row.note(format!(
            "Linux: {}",
            describe(&missing(runs, System::Linux, what))
        ));
    }
    row
}

type Figure = fn(&GuestResults) -> Option<f64>;

fn faults_per_sec(r: &GuestResults) -> Option<f64> {
    r.faultstorm.as_ref().map(FaultStorm::faults_per_sec)
}

fn touch_cycles(r: &GuestResults) -> Option<f64> {
    r.faultstorm
        .as_ref()
        .and_then(FaultStorm::touch_cycles_per_fault)
}

fn kernel_cycles(r: &GuestResults) -> Option<f64> {
    r.faultstorm
        .as_ref()
        .and_then(|f| f.cycles_per_fault)
        .map(|c| c as f64)
}

fn share_unlocked(r: &GuestResults) -> Option<f64> {
    r.faultstorm
        .as_ref()
        .and_then(FaultStorm::share_without_mmap_lock)
}

fn shared_per_fault(r: &GuestResults) -> Option<SharedPerFault> {
    r.faultstorm
        .as_ref()
        .and_then(FaultStorm::shared_writes_per_fault)
}

fn storm_rows(
    arch: Arch,
    accel: Accel,
    runs: &Runs,
    cpu_counts: &[u32],
    with_linux: bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let acc = accel_name(accel);
    let sec = format!("guest {arch}, {acc}: faultstorm");
    if let Some(why) = samara_absent(runs) {
        if with_linux {
            for &cpus in cpu_counts {
                let figures: [(&str, &'static str, Better, Figure); 2] = [
                    ("faults/s", "faults/s", Better::Higher, faults_per_sec),
                    (
                        "cycles per fault seen from user mode",
                        "cycles",
                        Better::Lower,
                        touch_cycles,
                    ),
                ];
                for (name, unit, better, f) in figures {
                    let base = stat(runs.get(System::Linux, cpus), f);
                    rows.push(
                        Row::new(
                            &sec,
                            &format!("{name}, {cpus} CPU(s), Samara"),
                            unit,
                            better,
                            acc,
                        )
                        .with(None, Some((System::Linux.label().into(), base)))
                        .status(why.clone()),
                    );
                }
                rows.extend(linux_storm_row(&sec, accel, runs, cpus));
            }
        }
        rows.push(
            Row::new(
                &sec,
                "Samara: trap-to-return cycles per fault, share of faults without the mmap \
                 lock, VMA_LOCK_* counters, per-VMA locks vs mmap lock only",
                "",
                Better::Higher,
                acc,
            )
            .status(why),
        );
        return rows;
    }
    for &cpus in cpu_counts {
        for sys in SAMARA {
            let l = sys.label();
            let figures: [(String, &'static str, Better, bool, Figure); 4] = [
                (
                    format!("faults/s, {cpus} CPU(s), {l}"),
                    "faults/s",
                    Better::Higher,
                    with_linux,
                    faults_per_sec,
                ),
                (
                    format!("cycles per fault seen from user mode, {cpus} CPU(s), {l}"),
                    "cycles",
                    Better::Lower,
                    with_linux,
                    touch_cycles,
                ),
                (
                    format!("cycles per fault, trap to return, {cpus} CPU(s), {l}"),
                    "cycles",
                    Better::Lower,
                    false,
                    kernel_cycles,
                ),
                (
                    format!("share of faults without the mmap lock, {cpus} CPU(s), {l}"),
                    "%",
                    Better::Higher,
                    false,
                    share_unlocked,
                ),
            ];
            for (name, unit, better, vs_linux, f) in figures {
                let mut row = versus_linux(
                    &sec,
                    &name,
                    unit,
                    better,
                    accel,
                    runs,
                    sys,
                    cpus,
                    vs_linux,
                    "faultstorm",
                    f,
                );
                if unit == "%" {
                    if let Some(f) = median_storm(runs.get(sys, cpus)) {
                        annotate_counters(&mut row, f);
                    }
                }
                rows.push(row);
            }
            // The instrumented build's counts, when its lines carry them.
            if runs
                .get(sys, cpus)
                .iter()
                .any(|r| shared_per_fault(r).is_some())
            {
                let counts: [(&str, Figure); 3] = [
                    ("writes to cache lines other CPUs write", |r| {
                        shared_per_fault(r).map(|s| s.shared_writes)
                    }),
                    ("atomic read-modify-writes", |r| {
                        shared_per_fault(r).map(|s| s.rmw)
                    }),
                    ("atomic stores", |r| shared_per_fault(r).map(|s| s.stores)),
                ];
                for (i, (what, f)) in counts.into_iter().enumerate() {
                    let mut row = Row::new(
                        &sec,
                        &format!("{what} per fault, {cpus} CPU(s), {l}"),
                        "per fault",
                        Better::Lower,
                        acc,
                    )
                    .with(stat(runs.get(sys, cpus), f), None);
                    if i == 0 {
                        row.target = Some("~0 for disjoint VMAs (RadixVM)".into());
                    }
                    rows.push(row);
                }
            }
        }
        // Per-VMA locks against the mmap lock, inside Samara.
        let pvl = stat(runs.get(System::SamaraPvl, cpus), faults_per_sec);
        let nopvl = stat(runs.get(System::SamaraMmapLock, cpus), faults_per_sec);
        let mut row = Row::new(
            &sec,
            &format!("faults/s, {cpus} CPU(s): per-VMA locks vs mmap lock only"),
            "faults/s",
            Better::Higher,
            acc,
        )
        .with(pvl, Some((System::SamaraMmapLock.label().into(), nopvl)));
        if pvl.is_none() {
            row = row.status(missing(runs, System::SamaraPvl, "faultstorm"));
        }
        rows.push(row);
        if with_linux {
            rows.extend(linux_storm_row(&sec, accel, runs, cpus));
        }
    }
    rows
}

/// The median run's lock counters, as a note and as details.
fn annotate_counters(row: &mut Row, f: &FaultStorm) {
    let Some(v) = f.vma else {
        return;
    };
    row.note = Some(format!(
        "median run: VMA_LOCK_SUCCESS {}, ABORT {}, RETRY {}, MISS {}; under the mmap lock \
         {}; {} faults for {} touches; mapper {} mmap+munmap",
        v.success,
        v.abort,
        v.retry,
        v.miss,
        v.mmap_locked,
        f.faults,
        f.touches(),
        f.mapper_ops
    ));
    row.details = json!({
        "vma_lock_success": v.success, "vma_lock_abort": v.abort,
        "vma_lock_retry": v.retry, "vma_lock_miss": v.miss,
        "mmap_locked": v.mmap_locked, "faults": f.faults,
        "touches": f.touches(), "threads": f.threads, "pages": f.pages,
        "rounds": f.rounds, "mapper_ops": f.mapper_ops,
    });
}

/// Linux's own faultstorm figure, with what it counted.
fn linux_storm_row(sec: &str, accel: Accel, runs: &Runs, cpus: u32) -> Option<Row> {
    let f = median_storm(runs.get(System::Linux, cpus))?;
    let mut row = Row::new(
        sec,
        &format!("Linux faults/s, {cpus} CPU(s) (the baseline above)"),
        "faults/s",
        Better::Higher,
        accel_name(accel),
    )
    .with(stat(runs.get(System::Linux, cpus), faults_per_sec), None)
    .note(format!(
        "median run: {} minor faults for {} touches ({} threads x {} pages x {} rounds); \
         mapper {} mmap+munmap",
        f.faults,
        f.touches(),
        f.threads,
        f.pages,
        f.rounds,
        f.mapper_ops
    ));
    if (f.faults as f64) < 0.95 * f.touches() as f64 {
        row = row.status(Status::Failed(
            "Linux counted fewer faults than pages touched (huge pages?)".into(),
        ));
    }
    Some(row)
}

fn loop_rows(
    arch: Arch,
    accel: Accel,
    runs: &Runs,
    cpu_counts: &[u32],
    with_linux: bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let acc = accel_name(accel);
    type Pick = fn(&GuestResults) -> Option<&OpLoop>;
    let loops: [(&str, &str, Pick); 2] = [
        ("mmap/munmap loop", "mmap-loop", |r| r.mmap_loop.as_ref()),
        ("fork/exit loop", "fork-loop", |r| r.fork_loop.as_ref()),
    ];
    let absent = samara_absent(runs);
    for (title, line, pick) in loops {
        let sec = format!("guest {arch}, {acc}: {title}");
        // What each op was, from any run that has the line.
        let shape = |cpus: u32| {
            SAMARA
                .iter()
                .chain([&System::Linux])
                .flat_map(|&s| runs.get(s, cpus))
                .find_map(pick)
                .map(|l| format!("{} ops, {}-page region", l.ops, l.pages))
        };
        if let Some(why) = &absent {
            if !with_linux {
                rows.push(
                    Row::new(&sec, "Samara: cycles per op", "cycles", Better::Lower, acc)
                        .status(why.clone()),
                );
                continue;
            }
            for &cpus in cpu_counts {
                let base = stat(runs.get(System::Linux, cpus), |r| {
                    pick(r).map(OpLoop::cycles_per_op)
                });
                let mut row = Row::new(
                    &sec,
                    &format!("cycles per op, {cpus} CPU(s), Samara"),
                    "cycles",
                    Better::Lower,
                    acc,
                )
                .with(None, Some((System::Linux.label().into(), base)))
                .status(why.clone());
                row.note = shape(cpus);
                rows.push(row);
            }
            continue;
        }
        for &cpus in cpu_counts {
            for sys in SAMARA {
                let mut row = versus_linux(
                    &sec,
                    &format!("cycles per op, {cpus} CPU(s), {}", sys.label()),
                    "cycles",
                    Better::Lower,
                    accel,
                    runs,
                    sys,
                    cpus,
                    with_linux,
                    line,
                    move |r| pick(r).map(OpLoop::cycles_per_op),
                );
                if row.note.is_none() {
                    row.note = shape(cpus);
                }
                rows.push(row);
            }
        }
    }
    rows
}

fn scaling_rows(arch: Arch, runs: &Runs) -> Vec<Row> {
    let sec = format!("guest {arch}, TCG: functional scaling check (faultstorm)");
    let mut rows = Vec::new();
    for cpus in SCALING_CPUS {
        for sys in SAMARA {
            let fig = stat(runs.get(sys, cpus), |r| {
                r.faultstorm.as_ref().map(FaultStorm::faults_per_sec)
            });
            let mut row = Row::new(
                &sec,
                &format!("faultstorm completes, {cpus} CPUs, {}", sys.label()),
                "faults/s",
                Better::Higher,
                "TCG",
            )
            .with(fig, None)
            .note("TCG on this host's cores: a functional check, not scaling evidence");
            if fig.is_none() {
                row = row.status(missing(runs, sys, "faultstorm"));
            } else if let Some(f) = median_storm(runs.get(sys, cpus)) {
                if let Some(s) = f.share_without_mmap_lock() {
                    row = row.note(format!(
                        "{:.1}% of faults without the mmap lock; TCG: a functional check, not \
                         scaling evidence",
                        s * 100.0
                    ));
                }
            }
            rows.push(row);
        }
    }
    rows
}

fn series(runs: &Runs, with_linux: bool, linux_label: &str) -> Vec<Series> {
    let mut systems = SAMARA.to_vec();
    if with_linux {
        systems.push(System::Linux);
    }
    systems
        .into_iter()
        .filter_map(|s| {
            let points: Vec<Point> = CPUS
                .iter()
                .filter_map(|&cpus| {
                    let e = stat(runs.get(s, cpus), |r| {
                        r.faultstorm.as_ref().map(FaultStorm::faults_per_sec)
                    })?;
                    Some(Point {
                        cpus,
                        median: e.value,
                        min: e.lo,
                        max: e.hi,
                    })
                })
                .collect();
            let label = if s == System::Linux {
                linux_label.to_string()
            } else {
                s.label().to_string()
            };
            let colour = s as usize;
            (!points.is_empty()).then_some(Series {
                label,
                colour,
                points,
            })
        })
        .collect()
}

/// Runs the guest part.
pub fn run(o: &GuestOptions) -> Result<GuestOutcome> {
    let mut out = GuestOutcome {
        rows: Vec::new(),
        notes: Vec::new(),
        series: Vec::new(),
        plot_title: String::new(),
    };
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut anchor: Option<std::result::Result<Anchor, String>> = None;
    let mut mitigations = Vec::new();
    for &arch in &o.arches {
        let with_linux = o.linux && arch == Arch::X86_64;
        if o.linux && !with_linux {
            out.notes.push(format!(
                "{arch}: no Linux anchor (Debian ships no kernel for QEMU's Octeon Malta); \
                 Samara's figures stand alone"
            ));
        }
        let plan = plan_accel(arch, o.accel)?;
        out.notes.push(format!(
            "{arch} guests: {}; {} boot(s) per configuration, {} memory, interleaved \
             Samara per-VMA / Samara mmap lock / Linux",
            plan.why, o.reps, o.mem
        ));
        if CPUS.iter().any(|&c| c as usize > host_cpus) {
            out.notes.push(format!(
                "the host has {host_cpus} logical CPUs: guests with more vCPUs than that \
                 time-share them (figures at those CPU counts measure contention, not scaling)"
            ));
        }
        if o.samara && o.count_shared_writes {
            out.notes.push(format!(
                "{arch}: Samara booted its count-shared-writes build (every mm atomic \
                 counted): its per-fault write counts are exact, its timings slower than \
                 the plain build's and not comparable with Linux's"
            ));
        }
        let mut kernels = Kernels {
            arch,
            count_shared_writes: o.count_shared_writes,
            images: BTreeMap::new(),
        };
        let mut systems = Vec::new();
        if o.samara {
            systems.extend(SAMARA);
        }
        if with_linux {
            systems.push(System::Linux);
        }
        if !systems.is_empty() {
            let runs = measure(
                o,
                arch,
                plan.accel,
                &CPUS,
                &systems,
                o.reps,
                &mut kernels,
                &mut anchor,
                &mut mitigations,
            );
            out.rows
                .extend(storm_rows(arch, plan.accel, &runs, &CPUS, with_linux));
            out.rows
                .extend(loop_rows(arch, plan.accel, &runs, &CPUS, with_linux));
            if out.series.is_empty() {
                let linux_label = match &anchor {
                    Some(Ok(a)) => format!("Linux {}", a.kernel.release),
                    _ => "Linux".to_string(),
                };
                out.series = series(&runs, with_linux, &linux_label);
                out.plot_title = format!(
                    "faultstorm: faults/s against CPUs ({arch}, {})",
                    accel_name(plan.accel)
                );
            }
        }
        if o.scaling && o.samara {
            let runs = measure(
                o,
                arch,
                Accel::Tcg,
                &SCALING_CPUS,
                &SAMARA,
                1,
                &mut kernels,
                &mut anchor,
                &mut mitigations,
            );
            out.rows.extend(scaling_rows(arch, &runs));
        }
    }
    match &anchor {
        Some(Ok(a)) => {
            out.notes.push(format!(
                "Linux anchor: {}; booted with `{}`; /init is tests/linux-anchor (static); \
                 CONFIG_PER_VMA_LOCK_STATS {}",
                a.kernel.describe(),
                bench_linux::kernel_cmdline(&[]),
                match a.kernel.per_vma_lock_stats {
                    Some(true) => "set",
                    Some(false) => "unset (Linux reports no VMA_LOCK_* counters)",
                    None => "unknown",
                }
            ));
            if !mitigations.is_empty() {
                out.notes.push(format!(
                    "Linux's CPU mitigations in force: {}",
                    mitigations.join("; ")
                ));
            }
        }
        Some(Err(e)) => out.notes.push(format!("Linux anchor unavailable: {e}")),
        None => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One boot's lines: `cpus` threads x 10 pages x 1 round in `ns`, an
    /// mmap loop of 10 ops in 5000 cycles; `extra` joins the storm line.
    fn results(cpus: u32, ns: u64, extra: &str) -> GuestResults {
        let out = format!(
            "faultstorm: threads={cpus} pages=10 rounds=1 faults={} ns={ns} mapper_ops=5 \
             touch_cycles=1000{extra}\n\
             mmap-loop: ops=10 pages=4 cycles=5000 ns=100\n",
            10 * cpus
        );
        GuestResults::from_output(&out).unwrap()
    }

    const SAMARA_EXTRA: &str = " cycles_per_fault=50 vma_success=9 vma_abort=0 vma_retry=0 \
        vma_miss=0 mmap_locked=1";

    #[test]
    fn both_systems_get_the_same_work() {
        let w = Work::new(Accel::Tcg, 4);
        assert_eq!(
            w.samara_args(true),
            "workload=faultstorm per_vma_lock=on threads=4 pages=1024 rounds=8 \
             mmap_ops=10000 fork_ops=200"
        );
        assert_eq!(
            w.samara_args(false),
            "workload=faultstorm threads=4 pages=1024 rounds=8 mmap_ops=10000 fork_ops=200"
        );
        let p = w.anchor_params();
        let get = |k: &str| p.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("threads"), get("pages"), get("rounds")),
            (Some("4"), Some("1024"), Some("8"))
        );
        // The loops: the same counts, and the region sizes Samara's
        // faultstorm has built in.
        assert_eq!(
            (get("mmap_ops"), get("mmap_pages")),
            (Some("10000"), Some("4"))
        );
        assert_eq!(
            (get("fork_ops"), get("fork_pages")),
            (Some("200"), Some("64"))
        );
        let k = Work::new(Accel::Kvm, 2);
        assert!(k
            .samara_args(true)
            .ends_with(" mmap_ops=100000 fork_ops=2000"));
        // The kernel accepts every such command line and reads the same
        // figures from it (its own parser, boot/src/options.rs).
        for w in [w, k, Work::new(Accel::Tcg, 1)] {
            for pvl in [true, false] {
                let args = w.samara_args(pvl);
                let c = boot::CmdLine::from_bytes(args.as_bytes()).unwrap();
                let o = boot::options::Options::parse(&c).unwrap_or_else(|e| panic!("{args}: {e}"));
                assert_eq!(o.workload, boot::options::Workload::Faultstorm);
                assert_eq!(o.per_vma_lock, pvl.then_some(true));
                assert_eq!(
                    (o.threads, o.pages, o.rounds, o.mmap_ops, o.fork_ops),
                    (
                        Some(w.threads),
                        Some(w.pages),
                        Some(w.rounds),
                        Some(w.mmap_ops),
                        Some(w.fork_ops)
                    ),
                    "{args}"
                );
            }
        }
        assert!(Work::new(Accel::Kvm, 1).rounds > w.rounds);
    }

    #[test]
    fn rows_compare_against_linux_and_pend_without_samara() {
        let mut runs = Runs::default();
        runs.results
            .insert((System::Linux, 1), vec![results(1, 1_000_000, "")]);
        runs.status.insert(
            System::SamaraPvl,
            Status::Pending("no workload=faultstorm".into()),
        );
        runs.status.insert(
            System::SamaraMmapLock,
            Status::Pending("no workload=faultstorm".into()),
        );
        let rows = storm_rows(Arch::X86_64, Accel::Tcg, &runs, &[1], true);
        // Samara absent: one row per figure Linux has, one summary row.
        assert_eq!(rows.len(), 4, "{rows:#?}");
        let r = rows
            .iter()
            .find(|r| r.name == "faults/s, 1 CPU(s), Samara")
            .unwrap();
        assert!(matches!(&r.status, Status::Pending(w) if w.contains("faultstorm")));
        // Linux's figure is there as the baseline: 10 faults in 1 ms.
        let base = r.baseline.as_ref().unwrap().1.unwrap();
        assert_eq!(base.value, 10_000.0);
        assert!(rows
            .iter()
            .any(|r| r.name.starts_with("Linux faults/s, 1 CPU")));

        // Samara measured: a ratio appears.
        runs.status.clear();
        runs.results.insert(
            (System::SamaraPvl, 1),
            vec![results(1, 500_000, SAMARA_EXTRA)],
        );
        let rows = storm_rows(Arch::X86_64, Accel::Tcg, &runs, &[1], true);
        let r = rows
            .iter()
            .find(|r| r.name == "faults/s, 1 CPU(s), Samara, per-VMA locks")
            .unwrap();
        assert_eq!(r.ratio.unwrap().value, 2.0);
        let share = rows
            .iter()
            .find(|r| {
                r.name
                    .starts_with("share of faults without the mmap lock, 1 CPU(s), Samara, per")
            })
            .unwrap();
        assert_eq!(share.figure.unwrap().value, 0.9);
        assert!(share.note.as_ref().unwrap().contains("VMA_LOCK_SUCCESS 9"));
        let loops = loop_rows(Arch::X86_64, Accel::Tcg, &runs, &[1], true);
        let mm = loops
            .iter()
            .find(|r| r.section.ends_with("mmap/munmap loop") && r.name.contains("per-VMA"))
            .unwrap();
        assert_eq!(mm.figure.unwrap().value, 500.0);
        assert_eq!(mm.ratio.unwrap().value, 1.0);
        let s = series(&runs, true, "Linux 6.12");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].label, "Linux 6.12");
    }

    #[test]
    fn mitigations_in_force_are_listed() {
        let out = "linux-anchor: vulnerability meltdown: Not affected\r\n\
                   linux-anchor: vulnerability spectre_v2: Mitigation: Retpolines\r\n";
        assert_eq!(
            mitigations_of(out),
            vec!["spectre_v2: Mitigation: Retpolines"]
        );
    }

    #[test]
    fn accelerator_choice() {
        // Whatever this machine has, TCG requested is TCG with no KVM extra.
        let p = plan_accel(Arch::X86_64, AccelChoice::Tcg).unwrap();
        assert_eq!(p.accel, Accel::Tcg);
        let m = plan_accel(Arch::Mips64, AccelChoice::Auto).unwrap();
        assert_eq!(m.accel, Accel::Tcg);
        // Auto never lands on PVM.
        let a = plan_accel(Arch::X86_64, AccelChoice::Auto).unwrap();
        if crate::bench::kvm_module().as_deref() == Some("kvm_pvm") {
            assert_eq!(a.accel, Accel::Tcg);
        }
    }
}
