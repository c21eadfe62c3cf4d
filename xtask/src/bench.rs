//! `cargo xtask bench`: Samara's benchmarks side by side with their
//! baselines, in one run, as ratios; a table on stdout, `target/bench/`
//! `report.md` and `report.json`, and the fault-throughput plot
//! `target/bench/faults.svg`.
//!
//! Three kinds of figures (BENCHMARKS.md describes the method):
//!
//! - host: every `mm/benches/*.rs` under criterion ([`crate::bench_criterion`]),
//!   each figure with criterion's 95% confidence interval, compared with the
//!   baseline the mm issues name (`Box`, crossbeam-epoch, `BTreeMap`, ...);
//! - in-guest: Samara's `faultstorm` workload booted in QEMU with 1, 2 and
//!   4 CPUs, per-VMA locks and mmap lock only, and the same work done by a
//!   Debian Linux kernel in the same virtual machine in the same run (the
//!   Linux anchor), [`crate::bench_vm`];
//! - a functional scaling check of `faultstorm` at 8 and 16 CPUs under TCG.
//!
//! Every row says where it was measured (host, KVM or TCG); ratios are only
//! ever taken between figures of one accelerator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::bench_criterion::{self, CriterionResult};
use crate::qemu::AccelChoice;
use crate::{workspace_root, Arch, Error, Result};

/// How a figure's interval was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spread {
    /// A confidence interval at this level (criterion: 0.95).
    Confidence(f64),
    /// Median of this many runs, `lo`/`hi` the smallest and largest.
    Runs(usize),
}

/// A measured figure with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub spread: Spread,
}

impl Estimate {
    /// Median, minimum and maximum of `values` (None if empty).
    pub fn of_runs(values: &[f64]) -> Option<Estimate> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Estimate {
            value: median,
            lo: v[0],
            hi: v[n - 1],
            spread: Spread::Runs(n),
        })
    }

    /// `self - floor`, with the widest interval the two allow.
    pub fn minus(&self, floor: &Estimate) -> Estimate {
        Estimate {
            value: self.value - floor.value,
            lo: self.lo - floor.hi,
            hi: self.hi - floor.lo,
            spread: self.spread,
        }
    }

    fn json(&self) -> Value {
        let (kind, detail) = match self.spread {
            Spread::Confidence(l) => ("confidence_interval", json!(l)),
            Spread::Runs(n) => ("min_max_of_runs", json!(n)),
        };
        json!({ "value": self.value, "lo": self.lo, "hi": self.hi,
                "interval": kind, "interval_detail": detail })
    }
}

/// Which way is better for a row's figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, cycles.
    Lower,
    /// Throughput, shares.
    Higher,
}

/// How many times better the figure is than the baseline (> 1: Samara
/// wins), with the interval the two intervals allow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    /// Only a lower bound is known (the figure's interval reaches zero).
    pub at_least: bool,
}

/// `figure` against `baseline`: `baseline / figure` for lower-is-better
/// figures, `figure / baseline` for higher-is-better ones.
pub fn ratio(better: Better, figure: &Estimate, baseline: &Estimate) -> Option<Ratio> {
    // Put both as "cost" (lower is better): the ratio is base / fig.
    let (num, den) = match better {
        Better::Lower => (baseline, figure),
        Better::Higher => (figure, baseline),
    };
    if num.value <= 0.0 || num.hi <= 0.0 {
        return None;
    }
    if den.lo > 0.0 && den.value > 0.0 {
        return Some(Ratio {
            value: num.value / den.value,
            lo: num.lo.max(0.0) / den.hi,
            hi: num.hi / den.lo,
            at_least: false,
        });
    }
    // The denominator's interval reaches zero (a figure at the floor):
    // only a lower bound is meaningful.
    (den.hi > 0.0).then(|| Ratio {
        value: num.lo.max(0.0) / den.hi,
        lo: num.lo.max(0.0) / den.hi,
        hi: f64::INFINITY,
        at_least: true,
    })
}

/// Whether a row was measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Measured,
    /// Waiting for another part (a workload, a bench file) to land.
    Pending(String),
    Failed(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: String,
    pub name: String,
    /// "ns", "cycles", "faults/s", "%".
    pub unit: &'static str,
    pub better: Better,
    pub figure: Option<Estimate>,
    pub baseline: Option<(String, Option<Estimate>)>,
    pub ratio: Option<Ratio>,
    pub target: Option<String>,
    /// "host", "KVM", "TCG".
    pub accel: String,
    pub status: Status,
    pub note: Option<String>,
    /// Structured extras for report.json (counters, parameters).
    pub details: Value,
}

impl Row {
    pub fn new(section: &str, name: &str, unit: &'static str, better: Better, accel: &str) -> Row {
        Row {
            section: section.to_string(),
            name: name.to_string(),
            unit,
            better,
            figure: None,
            baseline: None,
            ratio: None,
            target: None,
            accel: accel.to_string(),
            status: Status::Measured,
            note: None,
            details: Value::Null,
        }
    }

    /// Sets figure and baseline and computes the ratio.
    pub fn with(
        mut self,
        figure: Option<Estimate>,
        baseline: Option<(String, Option<Estimate>)>,
    ) -> Row {
        self.ratio = match (&figure, &baseline) {
            (Some(f), Some((_, Some(b)))) => ratio(self.better, f, b),
            _ => None,
        };
        self.figure = figure;
        self.baseline = baseline;
        self
    }

    pub fn status(mut self, s: Status) -> Row {
        self.status = s;
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = Some(n.into());
        self
    }

    fn json(&self) -> Value {
        let (status, why) = match &self.status {
            Status::Measured => ("measured", None),
            Status::Pending(w) => ("pending", Some(w.clone())),
            Status::Failed(w) => ("failed", Some(w.clone())),
        };
        json!({
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "better": match self.better { Better::Lower => "lower", Better::Higher => "higher" },
            "figure": self.figure.as_ref().map(Estimate::json),
            "baseline": self.baseline.as_ref().map(|(n, e)| json!({
                "name": n, "estimate": e.as_ref().map(Estimate::json) })),
            "ratio": self.ratio.map(|r| json!({
                "value": r.value, "lo": r.lo,
                "hi": if r.hi.is_finite() { json!(r.hi) } else { Value::Null },
                "at_least": r.at_least })),
            "target": self.target,
            "accel": self.accel,
            "status": status,
            "reason": why,
            "note": self.note,
            "details": self.details,
        })
    }
}

/// A figure in its unit, three significant digits.
pub fn format_value(unit: &str, v: f64) -> String {
    match unit {
        "ns" => {
            let (x, u) = if v.abs() >= 1e9 {
                (v / 1e9, "s")
            } else if v.abs() >= 1e6 {
                (v / 1e6, "ms")
            } else if v.abs() >= 1e3 {
                (v / 1e3, "µs")
            } else {
                (v, "ns")
            };
            format!("{} {u}", sig3(x))
        }
        "%" => format!("{:.1}%", v * 100.0),
        "percent" => format!("{v:.1}%"),
        "faults/s" => format!("{}/s", crate::bench_plot::human(v)),
        "cycles" if v.abs() >= 1e4 => format!("{} cycles", crate::bench_plot::human(v)),
        "cycles" => format!("{} cycles", sig3(v)),
        _ => format!("{} {unit}", sig3(v)),
    }
}

/// Three significant digits, no exponent.
fn sig3(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{x:.3}")
    }
}

fn format_estimate(unit: &str, e: &Estimate) -> String {
    let mid = format_value(unit, e.value);
    if e.lo == e.hi {
        return mid;
    }
    // The interval in the same unit without repeating it.
    let strip = |s: String| {
        s.split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches("/s")
            .to_string()
    };
    let (lo, hi) = match unit {
        "ns" | "cycles" if !(unit == "cycles" && e.value.abs() >= 1e4) => {
            // Keep the scale of the point value.
            let scale = if unit == "ns" {
                match e.value.abs() {
                    v if v >= 1e9 => 1e9,
                    v if v >= 1e6 => 1e6,
                    v if v >= 1e3 => 1e3,
                    _ => 1.0,
                }
            } else {
                1.0
            };
            (sig3(e.lo / scale), sig3(e.hi / scale))
        }
        _ => (
            strip(format_value(unit, e.lo)),
            strip(format_value(unit, e.hi)),
        ),
    };
    format!("{mid} [{lo}, {hi}]")
}

fn format_ratio(r: &Ratio) -> String {
    if r.at_least {
        format!("≥ {:.1}x", r.value)
    } else if r.hi.is_finite() {
        format!("{:.2}x [{:.2}, {:.2}]", r.value, r.lo, r.hi)
    } else {
        format!("{:.2}x", r.value)
    }
}

/// The machine the run happened on.
#[derive(Debug, Clone, Default)]
pub struct MachineInfo {
    pub cpu_model: String,
    pub logical_cpus: usize,
    pub ram_bytes: u64,
    pub host_kernel: String,
    /// "virtual machine" when /proc/cpuinfo has the hypervisor flag.
    pub virtualised: bool,
    /// The loaded KVM module: kvm_intel, kvm_amd, kvm_pvm.
    pub kvm_module: Option<String>,
    pub qemu_version: String,
    pub rustc_version: String,
    pub load_start: String,
    pub load_end: String,
    pub commit: String,
}

fn first_line_of(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The loaded KVM implementation, from /sys/module.
pub fn kvm_module() -> Option<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists())
        .map(str::to_string)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl MachineInfo {
    pub fn probe() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |k: &str| {
            cpuinfo.lines().find_map(|l| {
                let (key, v) = l.split_once(':')?;
                (key.trim() == k).then(|| v.trim().to_string())
            })
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let dirty = !first_line_of(
            Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .current_dir(workspace_root()),
        )
        .eq("unknown");
        let commit = first_line_of(
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(workspace_root()),
        );
        let mut cpu_model = field("model name").unwrap_or_else(|| "unknown".into());
        if let (Some(fam), Some(model)) = (field("cpu family"), field("model")) {
            cpu_model.push_str(&format!(" (family {fam}, model {model})"));
        }
        MachineInfo {
            cpu_model,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_bytes: ram_kib * 1024,
            host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            virtualised: field("flags").is_some_and(|f| f.split(' ').any(|x| x == "hypervisor")),
            kvm_module: kvm_module(),
            qemu_version: first_line_of(Command::new(Arch::X86_64.qemu_binary()).arg("--version")),
            rustc_version: first_line_of(
                Command::new("rustc")
                    .arg("--version")
                    .current_dir(workspace_root()),
            ),
            load_start: loadavg(),
            load_end: String::new(),
            commit: if dirty {
                format!("{commit} (with uncommitted changes)")
            } else {
                commit
            },
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{}, {} logical CPUs, {:.1} GiB RAM{}; Linux {}",
            self.cpu_model,
            self.logical_cpus,
            self.ram_bytes as f64 / (1u64 << 30) as f64,
            if self.virtualised {
                " (itself a virtual machine)"
            } else {
                ""
            },
            self.host_kernel
        )
    }

    fn json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "logical_cpus": self.logical_cpus,
            "ram_bytes": self.ram_bytes,
            "host_kernel": self.host_kernel,
            "virtualised": self.virtualised,
            "kvm_module": self.kvm_module,
            "qemu": self.qemu_version,
            "rustc": self.rustc_version,
            "load_average_start": self.load_start,
            "load_average_end": self.load_end,
            "commit": self.commit,
        })
    }
}

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Parts to run (empty: all); see [`parts`].
    pub only: Vec<String>,
    pub arches: Vec<Arch>,
    pub accel: AccelChoice,
    /// Boots per configuration (default 3, 1 with --quick).
    pub reps: Option<u32>,
    pub mem: String,
    pub linux_kernel: Option<PathBuf>,
    /// Also write the report into BENCHMARKS.md.
    pub save: bool,
    /// Samara's guests boot the `count-shared-writes` build.
    pub count_shared_writes: bool,
    /// The command line, for the report.
    pub command: String,
}

/// The parts `--only` selects: each host bench file by name,
/// `shared-lines` (the instrumented build's counts), `host` for all of
/// those, `guest` (Samara in QEMU), `linux` (the Linux anchor), `scaling`
/// (8 and 16 CPUs under TCG).
pub fn parts(root: &std::path::Path) -> Vec<String> {
    let mut v = bench_criterion::bench_files(root);
    v.extend(["shared-lines", "host", "guest", "linux", "scaling"].map(String::from));
    v
}

impl Options {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }

    fn wants_host_bench(&self, bench: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == bench || p == "host")
    }
}

/// Runs `cmd`, inheriting stdout/stderr; an error if it fails.
pub fn status_ok(cmd: &mut Command, label: &str) -> Result<()> {
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

/// Extra text a bench prints besides criterion's lines (the maple bench's
/// tree shape table): the block starting with a line that starts with
/// `marker`, up to the next blank or criterion line.
fn captured_block(stdout: &str, marker: &str) -> Option<String> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(marker));
    let first = lines.next()?;
    let mut block = vec![first];
    block.extend(lines.take_while(|l| {
        !l.trim().is_empty()
            && !l.starts_with("Benchmarking")
            && !l.contains("time:")
            && !l.starts_with("Gnuplot")
    }));
    Some(block.join("\n"))
}

/// Blocks of bench output worth keeping in the report: (bench, marker).
const CAPTURES: &[(&str, &str)] = &[
    ("maple", "maple tree shape"),
    ("fault", "fault_scaling:"),
    ("fault", "vma_rcu_callbacks:"),
];

/// Runs one bench file under criterion; returns its stdout.
fn run_host_bench(name: &str, quick: bool) -> Result<String> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["bench", "-p", "mm", "--bench", name, "--"])
        .env("CRITERION_HOME", criterion_home())
        .stdout(Stdio::piped());
    if quick {
        cmd.args(bench_criterion::QUICK_ARGS);
    }
    let label = format!("cargo bench -p mm --bench {name}");
    println!("xtask: + {label}{}", if quick { " (quick)" } else { "" });
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {label}: {e}")))?;
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            println!("{line}");
            out.push_str(&line);
            out.push('\n');
        }
    }
    let s = child
        .wait()
        .map_err(|e| Error::new(format!("cannot wait for {label}: {e}")))?;
    if !s.success() {
        return Err(Error::new(format!("`{label}` failed ({s})")));
    }
    Ok(out)
}

/// Where criterion writes (the workspace's target/criterion).
pub fn criterion_home() -> PathBuf {
    workspace_root().join("target").join("criterion")
}

/// Host rows: the [`bench_criterion::pairs`] first, then every other
/// result as a plain figure.
fn host_rows(
    results: &BTreeMap<String, CriterionResult>,
    ran: &BTreeMap<String, std::result::Result<(), String>>,
    present: &[String],
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for p in bench_criterion::pairs() {
        let section = format!("host: {}", p.section);
        let better = Better::Lower;
        let mut row = Row::new(&section, &p.name, "ns", better, "host");
        row.target = p.target.map(str::to_string);
        if !present.iter().any(|b| b == p.bench) {
            rows.push(row.status(Status::Pending(format!(
                "mm/benches/{}.rs is not on this branch yet",
                p.bench
            ))));
            continue;
        }
        match ran.get(p.bench) {
            None => continue, // not selected by --only
            Some(Err(e)) => {
                rows.push(row.status(Status::Failed(e.clone())));
                continue;
            }
            Some(Ok(())) => {}
        }
        let get = |id: &str| results.get(id).map(|r| r.time);
        let mut missing: Vec<&str> = Vec::new();
        let fig = get(&p.figure);
        if fig.is_none() {
            missing.push(&p.figure);
        }
        let base = p.baseline.as_ref().map(|(label, id)| {
            let e = get(id);
            if e.is_none() {
                missing.push(id);
            }
            (label.clone(), e)
        });
        let floor = p.floor.as_ref().map(|id| {
            let e = get(id);
            if e.is_none() {
                missing.push(id);
            }
            e
        });
        used.insert(p.figure.clone());
        if let Some((_, id)) = &p.baseline {
            used.insert(id.clone());
        }
        if let Some(id) = &p.floor {
            used.insert(id.clone());
        }
        if !missing.is_empty() {
            // The ids no pair names: where a renamed benchmark went.
            let named: Vec<String> = bench_criterion::pairs()
                .into_iter()
                .flat_map(|q| {
                    std::iter::once(q.figure)
                        .chain(q.baseline.map(|(_, id)| id))
                        .chain(q.floor)
                })
                .collect();
            let unnamed: Vec<&str> = results
                .keys()
                .filter(|k| !named.contains(k))
                .map(String::as_str)
                .collect();
            rows.push(row.status(Status::Failed(format!(
                "criterion ids not found: {} (fix the entry in xtask/src/bench_criterion.rs; \
                 ids this run produced that no entry names: {})",
                missing.join(", "),
                if unnamed.is_empty() {
                    "none".to_string()
                } else {
                    unnamed.join(", ")
                }
            ))));
            continue;
        }
        let (fig, base) = match floor.flatten() {
            Some(fl) => {
                row = row.note(format!(
                    "costs above the bare load ({}), which both schemes pay",
                    format_value("ns", fl.value)
                ));
                (
                    fig.map(|f| f.minus(&fl)),
                    base.map(|(l, b)| (l, b.map(|b| b.minus(&fl)))),
                )
            }
            None => (fig, base),
        };
        rows.push(row.with(fig, base));
    }
    for (id, r) in results {
        if used.contains(id) {
            continue;
        }
        let group = id.split('/').next().unwrap_or(id);
        let mut row = Row::new("host: other results", id, "ns", Better::Lower, "host")
            .with(Some(r.time), None);
        row.details = json!({ "group": group, "estimator": r.estimator });
        rows.push(row);
    }
    rows
}

/// Rows of the figures benches print ([`bench_criterion::printed_pairs`]).
fn printed_rows(
    outputs: &BTreeMap<String, String>,
    ran: &BTreeMap<String, std::result::Result<(), String>>,
    present: &[String],
) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in bench_criterion::printed_pairs() {
        let better = if p.higher_is_better {
            Better::Higher
        } else {
            Better::Lower
        };
        let mut row = Row::new(
            &format!("host: {}", p.section),
            &p.name,
            p.unit,
            better,
            "host",
        );
        row.target = p.target.map(str::to_string);
        if !present.iter().any(|b| b == p.bench) {
            rows.push(row.status(Status::Pending(format!(
                "mm/benches/{}.rs is not on this branch yet",
                p.bench
            ))));
            continue;
        }
        let out = match (ran.get(p.bench), outputs.get(p.bench)) {
            (None, _) => continue, // not selected by --only
            (Some(Err(e)), _) => {
                rows.push(row.status(Status::Failed(e.clone())));
                continue;
            }
            (Some(Ok(())), out) => out.map_or("", String::as_str),
        };
        let one = |v: f64| Estimate {
            value: v,
            lo: v,
            hi: v,
            spread: Spread::Runs(1),
        };
        let fig = p.figure.find(out).map(one);
        let base = p
            .baseline
            .as_ref()
            .map(|(label, b)| (label.clone(), b.find(out).map(one)));
        let lost: Vec<&str> = std::iter::once(&p.figure)
            .filter(|_| fig.is_none())
            .chain(
                p.baseline
                    .iter()
                    .filter(|_| base.as_ref().is_some_and(|(_, e)| e.is_none()))
                    .map(|(_, b)| b),
            )
            .map(|x| x.marker.as_str())
            .collect();
        if !lost.is_empty() {
            rows.push(row.status(Status::Failed(format!(
                "mm/benches/{}.rs printed no number after {} (fix the entry in \
                 xtask/src/bench_criterion.rs, printed_pairs)",
                p.bench,
                lost.iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))));
            continue;
        }
        rows.push(
            row.with(fig, base)
                .note("printed by the bench: one measurement"),
        );
    }
    rows
}

/// The whole report.
pub struct Report {
    pub machine: MachineInfo,
    pub command: String,
    pub date: String,
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
    pub captures: Vec<(String, String)>,
    pub plot: Option<String>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Command: `{}`  ", self.command);
        let _ = writeln!(s, "Date: {}; commit {}  ", self.date, self.machine.commit);
        let _ = writeln!(s, "Machine: {}  ", self.machine.describe());
        let _ = writeln!(
            s,
            "QEMU: {}; KVM module: {}; {}  ",
            self.machine.qemu_version,
            self.machine.kvm_module.as_deref().unwrap_or("none"),
            self.machine.rustc_version
        );
        let _ = writeln!(
            s,
            "Load average (1, 5, 15 min): {} at the start, {} at the end",
            self.machine.load_start, self.machine.load_end
        );
        s.push('\n');
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        s.push_str(
            "Ratio: how many times better Samara's figure is than the baseline (baseline time / \
             Samara time, or Samara rate / baseline rate): above 1 Samara wins. Host intervals are \
             criterion's 95% confidence intervals (ratio intervals combine both ends); guest \
             figures are the median of the boots with [min, max].\n\n",
        );
        let mut sections: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !sections.contains(&r.section.as_str()) {
                sections.push(&r.section);
            }
        }
        for sec in sections {
            let _ = writeln!(s, "### {sec}\n");
            let _ = writeln!(
                s,
                "| benchmark | Samara | baseline | ratio | target | where | note |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for r in self.rows.iter().filter(|r| r.section == sec) {
                let fig = match (&r.status, &r.figure) {
                    (Status::Pending(_), _) => "pending".to_string(),
                    (Status::Failed(_), _) => "FAILED".to_string(),
                    (_, Some(e)) => format_estimate(r.unit, e),
                    (_, None) => "—".to_string(),
                };
                let base = match &r.baseline {
                    Some((n, Some(e))) => format!("{n}: {}", format_estimate(r.unit, e)),
                    Some((n, None)) => format!("{n}: —"),
                    None => "—".into(),
                };
                let ratio = r.ratio.as_ref().map_or("—".into(), format_ratio);
                let mut note = r.note.clone().unwrap_or_default();
                match &r.status {
                    Status::Pending(w) | Status::Failed(w) => {
                        if !note.is_empty() {
                            note.push_str("; ");
                        }
                        note.push_str(w);
                    }
                    Status::Measured => {}
                }
                let _ = writeln!(
                    s,
                    "| {} | {fig} | {base} | {ratio} | {} | {} | {} |",
                    r.name,
                    r.target.as_deref().unwrap_or(""),
                    r.accel,
                    note.replace('|', "\\|")
                );
            }
            s.push('\n');
        }
        for (title, block) in &self.captures {
            let _ = writeln!(s, "### {title}\n\n```text\n{block}\n```\n");
        }
        if let Some(p) = &self.plot {
            let _ = writeln!(s, "![fault throughput against CPU count]({p})\n");
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "command": self.command,
            "date": self.date,
            "machine": self.machine.json(),
            "notes": self.notes,
            "rows": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "captures": self.captures.iter().map(|(t, b)| json!({"title": t, "text": b})).collect::<Vec<_>>(),
            "plot": self.plot,
        })
    }
}

/// UTC date and time of `t` as "YYYY-MM-DD HH:MM UTC".
pub fn utc_string(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Proleptic Gregorian date of the day `z` days after 1970-01-01: count
/// 400-year eras (146 097 days) from 0000-03-01, so that the leap day ends
/// each year of the shifted calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Markers around the generated report in BENCHMARKS.md.
const SAVE_BEGIN: &str = "<!-- cargo xtask bench --save: begin -->";
const SAVE_END: &str = "<!-- cargo xtask bench --save: end -->";

/// `doc` with the text between the markers replaced by `report` (markers
/// added after the first heading when missing).
pub fn splice_report(doc: &str, report: &str) -> String {
    let block = format!("{SAVE_BEGIN}\n{report}{SAVE_END}\n");
    if let (Some(b), Some(e)) = (doc.find(SAVE_BEGIN), doc.find(SAVE_END)) {
        if b < e {
            let after = &doc[e + SAVE_END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            return format!("{}{block}{after}", &doc[..b]);
        }
    }
    // After the title line, if there is one.
    match doc.find('\n') {
        Some(i) if doc.starts_with("# ") => {
            format!("{}\n\n{block}\n{}", &doc[..i], doc[i + 1..].trim_start())
        }
        _ => format!("{block}\n{doc}"),
    }
}

/// `cargo xtask bench`.
pub fn run(o: &Options) -> Result<()> {
    let root = workspace_root();
    let all_parts = parts(&root);
    if o.only.iter().any(|p| p == "list") {
        for p in &all_parts {
            println!("{p}");
        }
        return Ok(());
    }
    for p in &o.only {
        if !all_parts.contains(p) && p != "fault" && p != "maple" {
            return Err(Error::new(format!(
                "--only {p}: unknown part; parts: {}",
                all_parts.join(", ")
            )));
        }
    }
    let out_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", out_dir.display())))?;
    let started = SystemTime::now();
    let mut machine = MachineInfo::probe();
    println!("xtask: bench on {}", machine.describe());
    let mut rows = Vec::new();
    let mut captures = Vec::new();
    let mut notes = Vec::new();

    // Host benches.
    let present = bench_criterion::bench_files(&root);
    let mut ran = BTreeMap::new();
    let mut outputs = BTreeMap::new();
    for b in &present {
        if !o.wants_host_bench(b) {
            continue;
        }
        let r = run_host_bench(b, o.quick);
        if let Ok(out) = &r {
            outputs.insert(b.clone(), out.clone());
            for (bench, marker) in CAPTURES {
                if bench == b {
                    if let Some(block) = captured_block(out, marker) {
                        captures.push((format!("host: {bench} (printed by the bench)"), block));
                    }
                }
            }
        }
        ran.insert(b.clone(), r.map(|_| ()).map_err(|e| e.to_string()));
    }
    if !ran.is_empty() || o.wants("host") {
        let results = bench_criterion::collect(&criterion_home(), started).map_err(Error::new)?;
        rows.extend(host_rows(&results, &ran, &present));
        rows.extend(printed_rows(&outputs, &ran, &present));
        if o.quick {
            notes.push(format!(
                "host benches ran with `--quick` (criterion {}): wider intervals than a full run",
                bench_criterion::QUICK_ARGS.join(" ")
            ));
        }
    }

    // Scalability by counting: the instrumented build's per-fault counts.
    if o.only.is_empty() || o.only.iter().any(|p| p == "shared-lines" || p == "host") {
        match crate::bench_shared::measure(if o.quick { 3 } else { 5 }) {
            Ok(runs) => rows.extend(crate::bench_shared::rows(&runs)),
            Err(e) => rows.push(
                Row::new(
                    "host: scalability by counting",
                    "count-shared-writes build",
                    "per fault",
                    Better::Lower,
                    "host",
                )
                .status(Status::Failed(e.to_string())),
            ),
        }
    }

    // In-guest benches and the Linux anchor.
    let guest = crate::bench_vm::GuestOptions {
        quick: o.quick,
        reps: o.reps.unwrap_or(if o.quick { 1 } else { 3 }),
        mem: o.mem.clone(),
        accel: o.accel,
        arches: o.arches.clone(),
        samara: o.wants("guest"),
        linux: o.wants("linux"),
        scaling: o.wants("scaling") && !(o.quick && o.only.is_empty()),
        linux_kernel: o.linux_kernel.clone(),
        out_dir: out_dir.clone(),
        count_shared_writes: o.count_shared_writes,
    };
    let mut plot = None;
    if guest.samara || guest.linux || guest.scaling {
        let g = crate::bench_vm::run(&guest)?;
        rows.extend(g.rows);
        notes.extend(g.notes);
        if !g.series.is_empty() {
            let path = out_dir.join("faults.svg");
            crate::bench_plot::write(&path, &g.plot_title, &g.series).map_err(Error::new)?;
            plot = Some("faults.svg".to_string());
        }
    }

    machine.load_end = loadavg();
    let report = Report {
        machine,
        command: o.command.clone(),
        date: utc_string(started),
        notes,
        rows,
        captures,
        plot,
    };
    let md = report.markdown();
    let md_path = out_dir.join("report.md");
    let json_path = out_dir.join("report.json");
    let write = |p: &PathBuf, s: &str| {
        std::fs::write(p, s).map_err(|e| Error::new(format!("cannot write {}: {e}", p.display())))
    };
    write(&md_path, &format!("# Samara benchmark report\n\n{md}"))?;
    let json_text = serde_json::to_string_pretty(&report.json())
        .map_err(|e| Error::new(format!("cannot encode report.json: {e}")))?;
    write(&json_path, &json_text)?;
    println!("\n{md}");
    println!("xtask: wrote {}", md_path.display());
    println!("xtask: wrote {}", json_path.display());
    if let Some(p) = &report.plot {
        println!("xtask: wrote {}", out_dir.join(p).display());
    }
    if o.save {
        let doc_path = root.join("BENCHMARKS.md");
        let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
        let mut saved = format!("## Latest report (`cargo xtask bench --save`)\n\n{md}");
        if let Some(p) = &report.plot {
            let dest = root.join("benchmarks");
            std::fs::create_dir_all(&dest)
                .map_err(|e| Error::new(format!("cannot create {}: {e}", dest.display())))?;
            std::fs::copy(out_dir.join(p), dest.join(p))
                .map_err(|e| Error::new(format!("cannot copy the plot: {e}")))?;
            saved = saved.replace(&format!("]({p})"), &format!("](benchmarks/{p})"));
        }
        write(&doc_path, &splice_report(&doc, &saved))?;
        println!("xtask: saved the report into {}", doc_path.display());
    }
    let failed: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| matches!(r.status, Status::Failed(_)))
        .collect();
    if !failed.is_empty() {
        return Err(Error::new(format!(
            "{} row(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|r| format!("{} / {}", r.section, r.name))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci(v: f64, lo: f64, hi: f64) -> Estimate {
        Estimate {
            value: v,
            lo,
            hi,
            spread: Spread::Confidence(0.95),
        }
    }

    #[test]
    fn ratios_point_the_right_way() {
        // Times: Samara 10 ns vs baseline 20 ns: 2x better.
        let r = ratio(Better::Lower, &ci(10.0, 9.0, 11.0), &ci(20.0, 19.0, 21.0)).unwrap();
        assert_eq!(r.value, 2.0);
        assert!((r.lo - 19.0 / 11.0).abs() < 1e-12 && (r.hi - 21.0 / 9.0).abs() < 1e-12);
        // Rates: Samara 3M/s vs 1M/s: 3x better.
        let r = ratio(Better::Higher, &ci(3.0, 3.0, 3.0), &ci(1.0, 1.0, 1.0)).unwrap();
        assert_eq!((r.value, r.at_least), (3.0, false));
        // A cost at the floor: only a lower bound.
        let fig = ci(0.01, -0.04, 0.05);
        let r = ratio(Better::Lower, &fig, &ci(2.0, 1.9, 2.1)).unwrap();
        assert!(r.at_least && (r.value - 1.9 / 0.05).abs() < 1e-9);
        // A figure entirely below the floor: no ratio at all.
        assert!(ratio(Better::Lower, &ci(-0.1, -0.2, -0.05), &ci(2.0, 1.9, 2.1)).is_none());
    }

    #[test]
    fn floors_widen_intervals() {
        let d = ci(3.0, 2.8, 3.2).minus(&ci(1.0, 0.9, 1.1));
        assert_eq!(d.value, 2.0);
        assert!((d.lo - 1.7).abs() < 1e-12 && (d.hi - 2.3).abs() < 1e-12);
    }

    #[test]
    fn run_statistics() {
        let e = Estimate::of_runs(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            (e.value, e.lo, e.hi, e.spread),
            (2.0, 1.0, 3.0, Spread::Runs(3))
        );
        assert_eq!(Estimate::of_runs(&[4.0, 1.0]).unwrap().value, 2.5);
        assert!(Estimate::of_runs(&[]).is_none());
    }

    #[test]
    fn formats_values() {
        assert_eq!(format_value("ns", 18.83), "18.8 ns");
        assert_eq!(format_value("ns", 15_600_000.0), "15.6 ms");
        assert_eq!(format_value("%", 0.975), "97.5%");
        assert_eq!(format_value("faults/s", 1_500_000.0), "1.50M/s");
        assert_eq!(format_value("cycles", 3_879_738.0), "3.88M cycles");
        assert_eq!(
            format_estimate("cycles", &ci(72_132.0, 70_861.0, 72_286.0)),
            "72.1k cycles [70.9k, 72.3k]"
        );
        assert_eq!(
            format_estimate("ns", &ci(1500.0, 1400.0, 1600.0)),
            "1.50 µs [1.40, 1.60]"
        );
        assert_eq!(
            format_estimate("cycles", &ci(2000.0, 2000.0, 2000.0)),
            "2000 cycles"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 3_723);
        assert_eq!(utc_string(t), "1970-01-02 01:02 UTC");
    }

    #[test]
    fn captures_bench_printouts() {
        let out = "Benchmarking x\nmaple tree shape (VMA-like layouts):\n  ranges height\n      10      1\n\
                   lookup/maple/10 time: [1 ns 2 ns 3 ns]\n";
        assert_eq!(
            captured_block(out, "maple tree shape").unwrap(),
            "maple tree shape (VMA-like layouts):\n  ranges height\n      10      1"
        );
        assert_eq!(captured_block(out, "nothing"), None);
    }

    #[test]
    fn report_goes_between_the_markers() {
        let doc = "# Benchmarks\n\n## Old section\ntext\n";
        let once = splice_report(doc, "R1\n");
        assert!(once.starts_with("# Benchmarks\n\n<!--"));
        assert!(once.contains("R1\n") && once.contains("## Old section\ntext\n"));
        let twice = splice_report(&once, "R2\n");
        assert!(twice.contains("R2\n") && !twice.contains("R1"));
        assert!(twice.contains("## Old section\ntext\n"));
        assert_eq!(twice.matches(SAVE_BEGIN).count(), 1);
    }

    #[test]
    fn host_rows_pend_fail_and_pair() {
        let t = |v: f64| CriterionResult {
            full_id: String::new(),
            time: ci(v, v * 0.95, v * 1.05),
            estimator: "slope",
        };
        let mut res = BTreeMap::new();
        res.insert("alloc+free 200 B/slab, 1 thread".to_string(), t(10.0));
        res.insert("alloc+free 200 B/Box, 1 thread".to_string(), t(20.0));
        res.insert("alloc+free 200 B/extra".to_string(), t(5.0));
        let mut ran = BTreeMap::new();
        ran.insert("slab".to_string(), Ok(()));
        let present = vec!["slab".to_string()];
        let rows = host_rows(&res, &ran, &present);
        let one = rows
            .iter()
            .find(|r| r.name == "slab alloc+free 200 B, 1 thread")
            .unwrap();
        assert_eq!(one.ratio.unwrap().value, 2.0);
        let two = rows
            .iter()
            .find(|r| r.name == "slab alloc+free 200 B, 2 threads")
            .unwrap();
        assert!(matches!(&two.status, Status::Failed(w) if w.contains("not found")));
        let printed = printed_rows(&BTreeMap::new(), &ran, &present);
        let fault = printed.iter().find(|r| r.section == "host: fault").unwrap();
        assert!(matches!(&fault.status, Status::Pending(w) if w.contains("fault.rs")));
        // Present and run, but printing something else: a failure naming
        // the marker; printing the lines: figures and a ratio.
        let present = vec!["fault".to_string()];
        let mut ran = BTreeMap::new();
        ran.insert("fault".to_string(), Ok(()));
        let mut outputs = BTreeMap::new();
        outputs.insert("fault".to_string(), "something else\n".to_string());
        let bad = printed_rows(&outputs, &ran, &present);
        assert!(matches!(&bad[0].status, Status::Failed(w) if w.contains("per-VMA locks:")));
        outputs.insert(
            "fault".to_string(),
            "  1 faulting thread(s): per-VMA locks: 1.0 M faults/s alone, 0.9 M with x (90.0 %)\n\
             1 faulting thread(s): mmap lock only: 1.0 M faults/s alone, 0.3 M with x (30.0 %)\n"
                .to_string(),
        );
        let good = printed_rows(&outputs, &ran, &present);
        assert_eq!(good[0].ratio.unwrap().value, 3.0);
        assert_eq!(good[1].figure.unwrap().value, 90.0);
        assert!(rows.iter().any(|r| r.name == "alloc+free 200 B/extra"));
        // Benches not selected by --only leave no rows.
        assert!(!rows
            .iter()
            .any(|r| r.section == "host: rcu" && r.status == Status::Measured));
    }
}
