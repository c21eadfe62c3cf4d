//! Host benchmarks: every `mm/benches/*.rs` (criterion 0.8), run with
//! `cargo bench`, their results read back from criterion's own JSON files,
//! and the pairs the mm issues compare ([`pairs`]) turned into ratios.
//!
//! Criterion writes, per benchmark, `<criterion home>/<directory_name>/new/`
//! `benchmark.json` (the ids: `full_id` is "group/function/parameter") and
//! `estimates.json` (mean, median, slope, ... each with a point estimate and
//! a 95% confidence interval, in nanoseconds per iteration). The figure used
//! is criterion's "typical" estimate, the one it prints as `time:`: the
//! linear-regression slope when it sampled linearly, else the mean.
//!
//! A new benchmark file is picked up by itself (its results are listed);
//! comparing it against a baseline takes one more [`Pair`] in [`pairs`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use crate::bench::{Estimate, Spread};

/// One criterion result.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionResult {
    /// "group/function/parameter", as criterion prints it.
    pub full_id: String,
    /// Nanoseconds per iteration, with criterion's 95% interval.
    pub time: Estimate,
    /// "slope" or "mean": which estimate `time` is.
    pub estimator: &'static str,
}

fn estimate_of(v: &Value, what: &str) -> Result<Estimate, String> {
    let num = |path: &[&str]| -> Result<f64, String> {
        let mut x = v;
        for p in path {
            x = x
                .get(p)
                .ok_or_else(|| format!("estimates.json: {what} has no {}", path.join(".")))?;
        }
        x.as_f64()
            .ok_or_else(|| format!("estimates.json: {what}.{} is not a number", path.join(".")))
    };
    let level = num(&["confidence_interval", "confidence_level"])?;
    Ok(Estimate {
        value: num(&["point_estimate"])?,
        lo: num(&["confidence_interval", "lower_bound"])?,
        hi: num(&["confidence_interval", "upper_bound"])?,
        spread: Spread::Confidence(level),
    })
}

/// Reads one benchmark's `benchmark.json` and `estimates.json` texts.
pub fn parse_result(benchmark_json: &str, estimates_json: &str) -> Result<CriterionResult, String> {
    let b: Value = serde_json::from_str(benchmark_json)
        .map_err(|e| format!("benchmark.json is not JSON: {e}"))?;
    let full_id = b
        .get("full_id")
        .and_then(Value::as_str)
        .ok_or("benchmark.json has no full_id string")?
        .to_string();
    let e: Value = serde_json::from_str(estimates_json)
        .map_err(|e| format!("estimates.json of {full_id} is not JSON: {e}"))?;
    let (estimator, est) = match e.get("slope") {
        Some(s) if !s.is_null() => ("slope", s),
        _ => (
            "mean",
            e.get("mean")
                .ok_or_else(|| format!("estimates.json of {full_id} has no mean"))?,
        ),
    };
    Ok(CriterionResult {
        time: estimate_of(est, estimator).map_err(|m| format!("{full_id}: {m}"))?,
        full_id,
        estimator,
    })
}

/// Every `new/benchmark.json` under `dir` written at or after `since` (older
/// files are results of earlier runs), keyed by `full_id`.
pub fn collect(dir: &Path, since: SystemTime) -> Result<BTreeMap<String, CriterionResult>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                // Criterion's own "report" pages and the base/change
                // directories hold no current results.
                let name = e.file_name();
                if name != "report" && name != "base" && name != "change" {
                    stack.push(p);
                }
                continue;
            }
            if e.file_name() != "benchmark.json" || !d.ends_with("new") {
                continue;
            }
            let est = d.join("estimates.json");
            let fresh = std::fs::metadata(&est)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if !fresh {
                continue;
            }
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            let r = parse_result(&read(&p)?, &read(&est)?)?;
            out.insert(r.full_id.clone(), r);
        }
    }
    Ok(out)
}

/// A figure compared with a baseline from the same benchmark file.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The benchmark file (`mm/benches/<bench>.rs`).
    pub bench: &'static str,
    /// Section of the report.
    pub section: String,
    /// Row name.
    pub name: String,
    /// criterion `full_id` of Samara's figure.
    pub figure: String,
    /// criterion `full_id` of what it is compared with, and how to call it.
    pub baseline: Option<(String, String)>,
    /// Subtracted from both before the ratio: the cost both sit on (RCU's
    /// read side is compared above the bare load).
    pub floor: Option<String>,
    /// The issue's target, for the reader.
    pub target: Option<&'static str>,
}

impl Pair {
    fn new(bench: &'static str, section: &str, name: String, figure: String) -> Pair {
        Pair {
            bench,
            section: section.to_string(),
            name,
            figure,
            baseline: None,
            floor: None,
            target: None,
        }
    }

    fn vs(mut self, label: &str, id: String) -> Pair {
        self.baseline = Some((label.to_string(), id));
        self
    }

    fn floor(mut self, id: &str) -> Pair {
        self.floor = Some(id.to_string());
        self
    }

    fn target(mut self, t: &'static str) -> Pair {
        self.target = Some(t);
        self
    }
}

/// The maple bench's sizes (mm/benches/maple.rs `SIZES`).
const MAPLE_SIZES: [u32; 5] = [10, 100, 1_000, 10_000, 100_000];

/// The comparisons the mm issues ask for. Ids are criterion's `full_id`s;
/// a pair whose bench file does not exist yet is reported as pending, one
/// whose ids are not among the bench's results as an error that lists them.
pub fn pairs() -> Vec<Pair> {
    let mut v = vec![];
    // Issue 3: slab alloc+free pair of a 200-byte object vs Box.
    for t in ["1 thread", "2 threads"] {
        v.push(
            Pair::new(
                "slab",
                "slab",
                format!("slab alloc+free 200 B, {t}"),
                format!("alloc+free 200 B/slab, {t}"),
            )
            .vs("Box (glibc malloc)", format!("alloc+free 200 B/Box, {t}"))
            .target("faster than the global allocator"),
        );
    }
    // Issue 3: RCU read side vs crossbeam-epoch, above the bare-load floor.
    v.push(
        Pair::new(
            "rcu",
            "rcu",
            "RCU read section (QSBR read_lock)".into(),
            "rcu_read_side/samara_qsbr_read_lock".into(),
        )
        .vs(
            "crossbeam-epoch pin()",
            "rcu_read_side/crossbeam_epoch_pin".into(),
        )
        .floor("rcu_read_side/bare_load")
        .target(">= 10x cheaper"),
    );
    for busy in [1, 2] {
        v.push(Pair::new(
            "rcu",
            "rcu",
            format!("synchronize(), {busy} busy CPU(s)"),
            format!("rcu_synchronize_{busy}_busy_cpus"),
        ));
    }
    // Frames: per-CPU caches vs the global buddy path.
    for (fig, base) in [
        ("per-CPU cache hit", "global buddy path"),
        ("per-CPU cache hit, 2 CPUs", "global buddy path, 2 CPUs"),
    ] {
        v.push(
            Pair::new(
                "frame",
                "frame",
                format!("frame alloc+free order 0, {fig}"),
                format!("frame alloc+free, order 0/{fig}"),
            )
            .vs(base, format!("frame alloc+free, order 0/{base}")),
        );
    }
    // Issue 4: maple tree lookups, stores, gap search.
    for n in MAPLE_SIZES {
        for (label, id) in [("BTreeMap", "btree"), ("intrusive RBTree", "rbtree")] {
            let mut p = Pair::new(
                "maple",
                "maple",
                format!("lookup, {n} ranges, vs {label}"),
                format!("lookup/maple/{n}"),
            )
            .vs(label, format!("lookup/{id}/{n}"));
            if id == "btree" {
                p = p.target("within 1.2x of BTreeMap (ratio >= 0.83)");
            }
            v.push(p);
        }
        v.push(
            Pair::new(
                "maple",
                "maple",
                format!("store+erase, {n} ranges"),
                format!("store_erase/maple/{n}"),
            )
            .vs("BTreeMap", format!("store_erase/btree/{n}")),
        );
        v.push(
            Pair::new(
                "maple",
                "maple",
                format!("gap search (highest), {n} ranges"),
                format!("gap/maple/{n}"),
            )
            .vs("BTreeMap scan", format!("gap/btree_scan/{n}")),
        );
    }
    for pace in ["busy", "paced"] {
        for n in [1_000, 100_000] {
            v.push(
                Pair::new(
                    "maple",
                    "maple",
                    format!("lookup, 2 readers + {pace} writer, {n} ranges"),
                    format!("contended/maple/{pace}/{n}"),
                )
                .vs(
                    "RwLock<BTreeMap>",
                    format!("contended/rwlock_btree/{pace}/{n}"),
                )
                .target(">= 2x"),
            );
        }
    }
    v
}

/// A number a bench prints itself (measurements criterion cannot express,
/// such as throughput of several threads at once): the `index`-th decimal
/// number after `marker` on the first stdout line containing it.
#[derive(Debug, Clone)]
pub struct Printed {
    pub marker: String,
    pub index: usize,
}

impl Printed {
    fn new(marker: impl Into<String>, index: usize) -> Printed {
        Printed {
            marker: marker.into(),
            index,
        }
    }

    /// Finds the number in a bench's stdout.
    pub fn find(&self, stdout: &str) -> Option<f64> {
        let line = stdout.lines().find(|l| l.contains(&self.marker))?;
        let rest = &line[line.find(&self.marker)? + self.marker.len()..];
        numbers(rest).nth(self.index)
    }
}

/// The decimal numbers in `s`, in order ("1.25 M (79.6 %)" -> 1.25, 79.6).
fn numbers(s: &str) -> impl Iterator<Item = f64> + '_ {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|w| w.trim_matches('.'))
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
}

/// A printed figure, optionally against a printed baseline.
#[derive(Debug, Clone)]
pub struct PrintedPair {
    pub bench: &'static str,
    pub section: String,
    pub name: String,
    /// Unit as the report formats it ("percent": already a percentage).
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub figure: Printed,
    pub baseline: Option<(String, Printed)>,
    pub target: Option<&'static str>,
}

/// Figures benches print. Issue 5's fault throughput (mm/benches/fault.rs,
/// branch aspace-verify, as drafted there: "N faulting thread(s): per-VMA
/// locks: A M faults/s alone, B M with the mmap/munmap thread (C %)", the
/// same for "mmap lock only", and "vma_rcu_callbacks: ... (X per freed
/// VMA; ...)"); adjust the markers here if that output changes.
pub fn printed_pairs() -> Vec<PrintedPair> {
    let mut v = Vec::new();
    let sec = "fault";
    for t in [1, 2] {
        let pv = format!("{t} faulting thread(s): per-VMA locks:");
        let ml = format!("{t} faulting thread(s): mmap lock only:");
        v.push(PrintedPair {
            bench: "fault",
            section: sec.into(),
            name: format!("write faults, {t} thread(s) + mmap/munmap thread, per-VMA locks"),
            unit: "M faults/s",
            higher_is_better: true,
            figure: Printed::new(pv.clone(), 1),
            baseline: Some(("mmap lock only".into(), Printed::new(ml.clone(), 1))),
            target: None,
        });
        for (label, marker, target) in [
            ("per-VMA locks", pv, Some(">= 90%")),
            ("mmap lock only", ml, None),
        ] {
            v.push(PrintedPair {
                bench: "fault",
                section: sec.into(),
                name: format!(
                    "throughput kept with the mmap/munmap thread running, {t} thread(s), {label}"
                ),
                unit: "percent",
                higher_is_better: true,
                figure: Printed::new(marker, 2),
                baseline: None,
                target,
            });
        }
    }
    v.push(PrintedPair {
        bench: "fault",
        section: sec.into(),
        name: "RCU callbacks per freed VMA".into(),
        unit: "per VMA",
        higher_is_better: false,
        figure: Printed::new("vma_rcu_callbacks:", 2),
        baseline: None,
        target: Some("0"),
    });
    v
}

/// The benchmark files present: `mm/benches/*.rs` stems, sorted.
pub fn bench_files(root: &Path) -> Vec<String> {
    let dir = root.join("mm").join("benches");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".rs").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Criterion arguments of a `--quick` run: short warm-up and measurement
/// (criterion still reports a confidence interval; it is just wider).
pub const QUICK_ARGS: &[&str] = &["--warm-up-time", "0.3", "--measurement-time", "1"];

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: &str = r#"{"group_id":"gap","function_id":"maple","value_str":"10","throughput":null,"full_id":"gap/maple/10","directory_name":"gap/maple/10","title":"gap/maple/10"}"#;

    fn est(p: f64, lo: f64, hi: f64) -> String {
        format!(
            r#"{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{lo},"upper_bound":{hi}}},"point_estimate":{p},"standard_error":1.0}}"#
        )
    }

    fn estimates(slope: Option<(f64, f64, f64)>) -> String {
        let m = est(10.0, 9.0, 11.0);
        let s = slope.map_or("null".to_string(), |(p, l, h)| est(p, l, h));
        format!(r#"{{"mean":{m},"median":{m},"median_abs_dev":{m},"slope":{s},"std_dev":{m}}}"#)
    }

    #[test]
    fn reads_the_typical_estimate() {
        let r = parse_result(BENCH, &estimates(Some((5.0, 4.5, 5.5)))).unwrap();
        assert_eq!(r.full_id, "gap/maple/10");
        assert_eq!(r.estimator, "slope");
        assert_eq!((r.time.value, r.time.lo, r.time.hi), (5.0, 4.5, 5.5));
        assert_eq!(r.time.spread, Spread::Confidence(0.95));
        // Flat sampling (iter_custom with few iterations): no slope.
        let r = parse_result(BENCH, &estimates(None)).unwrap();
        assert_eq!((r.estimator, r.time.value), ("mean", 10.0));
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(parse_result("{", &estimates(None)).is_err());
        assert!(parse_result(r#"{"x":1}"#, &estimates(None))
            .unwrap_err()
            .contains("full_id"));
        let no_ci = r#"{"mean":{"point_estimate":1.0},"slope":null}"#;
        assert!(parse_result(BENCH, no_ci)
            .unwrap_err()
            .contains("confidence_interval"));
    }

    #[test]
    fn collects_only_fresh_results() {
        let dir = std::env::temp_dir().join(format!("xtask-crit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let put = |sub: &str, id: &str| {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("benchmark.json"), BENCH.replace("gap/maple/10", id)).unwrap();
            std::fs::write(d.join("estimates.json"), estimates(None)).unwrap();
        };
        put("gap/maple/10/new", "gap/maple/10");
        put("gap/maple/10/base", "stale/base");
        put("a b/new", "group a/b");
        let all = collect(&dir, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            ["gap/maple/10", "group a/b"]
        );
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(collect(&dir, later).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_printed_figures() {
        let out = "fault_scaling: write faults on fresh pages, 4096 pages x 8 phases per case\n  \
                   1 faulting thread(s): per-VMA locks: 1.25 M faults/s alone, 1.20 M with \
                   the mmap/munmap thread (96.0 %)\n  \
                   2 faulting thread(s): per-VMA locks: 2.10 M faults/s alone, 2.00 M with \
                   the mmap/munmap thread (95.2 %)\n\
                   vma_rcu_callbacks: 100000 VMAs freed, 0 RCU callbacks from the VMA cache \
                   (0.000000 per freed VMA; 12 slab pages created in all)\n";
        let p = Printed::new("2 faulting thread(s): per-VMA locks:", 1);
        assert_eq!(p.find(out), Some(2.0));
        assert_eq!(Printed::new("per-VMA locks:", 2).find(out), Some(96.0));
        assert_eq!(Printed::new("vma_rcu_callbacks:", 2).find(out), Some(0.0));
        assert_eq!(Printed::new("vma_rcu_callbacks:", 9).find(out), None);
        assert_eq!(Printed::new("absent:", 0).find(out), None);
        let names: Vec<String> = printed_pairs().into_iter().map(|p| p.name).collect();
        assert!(names.iter().any(|n| n.contains("per-VMA")));
    }

    #[test]
    fn pairs_name_existing_benches_and_unique_rows() {
        let root = crate::workspace_root();
        let files = bench_files(&root);
        for b in ["rcu", "slab", "frame"] {
            assert!(files.iter().any(|f| f == b), "mm/benches/{b}.rs");
        }
        let ps = pairs();
        let mut names: Vec<&str> = ps.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "row names are unique");
    }
}
