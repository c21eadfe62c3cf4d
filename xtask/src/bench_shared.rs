//! Scalability by counting, on the host: `mm`'s instrumented build
//! (feature `count-shared-writes`, mm/src/linecount.rs) counts, per page
//! fault, the atomic read-modify-writes and stores, and the writes that go
//! to cache lines another CPU also writes. Its test `mm/tests/linecount.rs`
//! faults two threads into two disjoint VMAs of one address space, once
//! with the mmap lock only and once with per-VMA locks, and prints one line
//! per configuration:
//!
//! ```text
//! mmap lock:    1022 faults: 5.07 RMW, 11.08 stores, 2.295 writes to shared lines per fault (7 lines)
//! per-VMA lock: 1022 faults: 5.07 RMW, 11.08 stores, 0.295 writes to shared lines per fault (6 lines)
//! ```
//!
//! The bench runs that test and reads those lines (a failed assertion in
//! the test still leaves its lines, which are then reported as measured).

use std::process::{Command, Stdio};

use crate::bench::{Better, Estimate, Row, Status};
use crate::{workspace_root, Error, Result};

/// One configuration's counts, per fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineCounts {
    pub faults: u64,
    pub rmw: f64,
    pub stores: f64,
    pub shared_writes: f64,
    pub shared_lines: u64,
}

/// The two configurations of one run of the test.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Run {
    pub mmap_lock: Option<LineCounts>,
    pub per_vma: Option<LineCounts>,
}

const MMAP_LABEL: &str = "mmap lock:";
const VMA_LABEL: &str = "per-VMA lock:";

fn parse_counts(rest: &str) -> Result<LineCounts> {
    let t: Vec<&str> = rest.split_whitespace().collect();
    let bad = || Error::new(format!("unexpected shared-line count format: `{rest}`"));
    let (mut faults, mut rmw, mut stores, mut shared, mut lines) = (None, None, None, None, None);
    for w in t.windows(2) {
        let (n, what) = (w[0], w[1]);
        let f = || n.trim_start_matches('(').parse::<f64>().ok();
        if what.starts_with("faults") {
            faults = n.parse::<u64>().ok();
        } else if what.starts_with("RMW") {
            rmw = f();
        } else if what.starts_with("stores") {
            stores = f();
        } else if what == "writes" {
            shared = f();
        } else if n.starts_with('(') && what.starts_with("lines") {
            lines = n.trim_start_matches('(').parse::<u64>().ok();
        }
    }
    Ok(LineCounts {
        faults: faults.ok_or_else(bad)?,
        rmw: rmw.ok_or_else(bad)?,
        stores: stores.ok_or_else(bad)?,
        shared_writes: shared.ok_or_else(bad)?,
        shared_lines: lines.ok_or_else(bad)?,
    })
}

/// Reads the test's output.
pub fn parse(output: &str) -> Result<Run> {
    let mut run = Run::default();
    for l in output.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix(MMAP_LABEL) {
            run.mmap_lock = Some(parse_counts(rest)?);
        } else if let Some(rest) = l.strip_prefix(VMA_LABEL) {
            run.per_vma = Some(parse_counts(rest)?);
        }
    }
    Ok(run)
}

/// The test command (also `cargo xtask test`'s `mm-shared-lines` step).
pub const ARGS: &[&str] = &[
    "test",
    "-p",
    "mm",
    "--release",
    "--features",
    "count-shared-writes",
    "--test",
    "linecount",
    "--",
    "--nocapture",
];

/// Runs the test `reps` times (its counts depend on how the two threads
/// interleave) and returns the runs that printed both lines.
pub fn measure(reps: u32) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    println!("xtask: + cargo {} (x{reps})", ARGS.join(" "));
    for _ in 0..reps {
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .args(ARGS)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| Error::new(format!("cannot run cargo test: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let run = parse(&text)?;
        if run.mmap_lock.is_none() && run.per_vma.is_none() {
            return Err(Error::new(format!(
                "mm/tests/linecount.rs printed no counts ({}):\n{}",
                out.status,
                text.trim_end()
            )));
        }
        if !out.status.success() {
            println!("xtask: note: the linecount test's own assertion failed in this run");
        }
        runs.push(run);
    }
    Ok(runs)
}

/// Report rows: per-VMA locks against the mmap lock, per figure.
pub fn rows(runs: &[Run]) -> Vec<Row> {
    let sec = "host: scalability by counting (count-shared-writes build, 2 threads faulting \
               in disjoint VMAs)";
    type Pick = fn(&LineCounts) -> f64;
    let figures: [(&str, &'static str, Pick); 4] = [
        (
            "writes to cache lines both CPUs write, per fault",
            "per fault",
            |c| c.shared_writes,
        ),
        ("atomic read-modify-writes per fault", "per fault", |c| {
            c.rmw
        }),
        ("atomic stores per fault", "per fault", |c| c.stores),
        ("distinct cache lines both CPUs write", "lines", |c| {
            c.shared_lines as f64
        }),
    ];
    let of = |pick: Pick, vma: bool| {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| if vma { r.per_vma } else { r.mmap_lock })
            .map(|c| pick(&c))
            .collect();
        Estimate::of_runs(&v)
    };
    let mut out = Vec::new();
    for (i, (name, unit, pick)) in figures.into_iter().enumerate() {
        let fig = of(pick, true);
        let mut row = Row::new(
            sec,
            &format!("{name}, per-VMA locks"),
            unit,
            Better::Lower,
            "host",
        )
        .with(fig, Some(("mmap lock only".into(), of(pick, false))));
        if i == 0 {
            row.target = Some("~0 for disjoint VMAs (RadixVM)".into());
            if let Some(c) = runs.iter().find_map(|r| r.per_vma) {
                row = row.note(format!(
                    "{} faults per configuration; the remainder is the frame allocator's \
                     refills (see mm/tests/linecount.rs)",
                    c.faults
                ));
            }
        }
        if fig.is_none() {
            row = row.status(Status::Failed(
                "the linecount test printed no per-VMA-lock line (per-vma-lock feature off?)"
                    .into(),
            ));
        }
        out.push(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "running 1 test\n\
        mmap lock:    1022 faults: 5.07 RMW, 11.08 stores, 2.295 writes to shared lines per fault (7 lines)\n\
        per-VMA lock: 1022 faults: 5.07 RMW, 11.08 stores, 0.295 writes to shared lines per fault (6 lines)\n\
        test disjoint_faults_write_no_shared_line_with_per_vma_locks ... ok\n";

    #[test]
    fn parses_the_linecount_lines() {
        let r = parse(OUT).unwrap();
        let m = r.mmap_lock.unwrap();
        assert_eq!(
            (m.faults, m.rmw, m.stores, m.shared_writes, m.shared_lines),
            (1022, 5.07, 11.08, 2.295, 7)
        );
        assert_eq!(r.per_vma.unwrap().shared_writes, 0.295);
        assert_eq!(parse("nothing here\n").unwrap(), Run::default());
        assert!(parse("mmap lock: 12 faults: lots of RMW\n").is_err());
    }

    #[test]
    fn rows_compare_per_vma_with_mmap_lock() {
        let r = parse(OUT).unwrap();
        let rs = rows(&[r, r]);
        assert_eq!(rs.len(), 4);
        let shared = &rs[0];
        assert_eq!(shared.figure.unwrap().value, 0.295);
        let ratio = shared.ratio.unwrap().value;
        assert!((ratio - 2.295 / 0.295).abs() < 1e-9, "{ratio}");
        let only_mmap = Run {
            mmap_lock: r.mmap_lock,
            per_vma: None,
        };
        assert!(matches!(rows(&[only_mmap])[0].status, Status::Failed(_)));
    }
}
