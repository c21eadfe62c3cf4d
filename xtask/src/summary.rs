//! The kernel's machine-readable workload summary
//! (`samara: summary: key=value ...`, see `kernel/src/os/workload.rs`) and
//! the readable table `cargo xtask run` prints from it.

use std::collections::BTreeMap;
use std::fmt::Write;

/// The prefix of the summary line.
pub const PREFIX: &str = "samara: summary: ";

/// The `key=value` pairs of the last line of `output` that starts with
/// `prefix` (after any `\r`).
pub fn fields(output: &str, prefix: &str) -> Option<BTreeMap<String, String>> {
    let line = output
        .lines()
        .map(|l| l.trim_matches('\r'))
        .rev()
        .find_map(|l| l.strip_prefix(prefix))?;
    Some(
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// `1234567` as `1,234,567`.
fn grouped(v: &str) -> String {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return v.to_string();
    }
    let mut out = String::new();
    for (i, c) in v.chars().enumerate() {
        if i > 0 && (v.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The summary as a table, or `None` if the run printed none.
pub fn readable(output: &str) -> Option<String> {
    let s = fields(output, PREFIX)?;
    let get = |k: &str| s.get(k).map_or("?".to_string(), |v| grouped(v));
    let mut t = String::new();
    let _ = writeln!(
        t,
        "xtask: workload {} on {} CPU(s), per-VMA locking {}: exit status {}, checks {}",
        get("workload"),
        get("cpus"),
        get("per_vma_lock"),
        get("status"),
        get("checks")
    );
    // faultstorm's machine-readable line (its readable ones share the prefix).
    let storm = output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("faultstorm: threads="))
        .and_then(|l| fields(l.trim_start(), "faultstorm: "));
    if let Some(f) = storm.or_else(|| fields(output, "faultstorm: ")) {
        if let Some(rate) = f.get("faults_per_sec") {
            let _ = writeln!(t, "  {:<28} {}", "faults per second", grouped(rate));
        }
        if let Some(p) = f
            .get("lockless_permille")
            .and_then(|p| p.parse::<u64>().ok())
        {
            let _ = writeln!(
                t,
                "  {:<28} {}.{} %",
                "faults without the mmap lock",
                p / 10,
                p % 10
            );
        }
        // touch_cycles over the pages written: each write was a first touch.
        let n = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(c), Some(threads), Some(pages), Some(rounds)) =
            (n("touch_cycles"), n("threads"), n("pages"), n("rounds"))
        {
            if let Some(per) = c.checked_div(threads * pages * rounds) {
                let _ = writeln!(
                    t,
                    "  {:<28} {}",
                    "cycles per page written",
                    grouped(&per.to_string())
                );
            }
        }
    }
    for (label, prefix) in [
        ("cycles per mmap+munmap", "mmap-loop: "),
        ("cycles per fork+exit+wait", "fork-loop: "),
    ] {
        let Some(l) = fields(output, prefix) else {
            continue;
        };
        let n = |k: &str| l.get(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(c), Some(ops)) = (n("cycles"), n("ops")) {
            if let Some(per) = c.checked_div(ops) {
                let _ = writeln!(t, "  {label:<28} {}", grouped(&per.to_string()));
            }
        }
    }
    let rows = [
        ("page faults", "faults"),
        ("cycles per fault", "cycles_per_fault"),
        ("VMA_LOCK_SUCCESS", "vma_lock_success"),
        ("VMA_LOCK_ABORT", "vma_lock_abort"),
        ("VMA_LOCK_RETRY", "vma_lock_retry"),
        ("VMA_LOCK_MISS", "vma_lock_miss"),
        ("faults under the mmap lock", "mmap_locked_faults"),
        ("frames free before", "frames_free_before"),
        ("frames free after", "frames_free_after"),
        ("VMAs live after", "vmas_live"),
        ("RCU grace periods", "rcu_grace_periods"),
        ("remote TLB shootdowns", "remote_flushes"),
        ("elapsed (ms)", "elapsed_ms"),
    ];
    for (label, key) in rows {
        let _ = writeln!(t, "  {label:<28} {}", get(key));
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "banner\r\n\
        faultstorm: threads=2 pages=10 rounds=1 faults=20 ns=5 faults_per_sec=4000000 lockless_permille=975 touch_cycles=60000\r\n\
        mmap-loop: ops=10 pages=4 cycles=123450 ns=100\r\n\
        samara: summary: workload=faultstorm status=0 cpus=4 per_vma_lock=on faults=1234567 vma_lock_success=7 checks=pass\r\n\
        samara: result: pass: x\r\n";

    #[test]
    fn parses_and_formats_the_summary() {
        let f = fields(OUT, PREFIX).unwrap();
        assert_eq!(f["workload"], "faultstorm");
        assert_eq!(f["faults"], "1234567");
        let t = readable(OUT).unwrap();
        assert!(
            t.contains(
                "workload faultstorm on 4 CPU(s), per-VMA locking on: exit status 0, checks pass"
            ),
            "{t}"
        );
        assert!(t.contains("page faults                  1,234,567"), "{t}");
        assert!(t.contains("faults per second            4,000,000"), "{t}");
        assert!(t.contains("97.5 %"), "{t}");
        assert!(t.contains("VMA_LOCK_ABORT               ?"), "{t}");
        assert!(t.contains("cycles per page written      3,000"), "{t}");
        assert!(t.contains("cycles per mmap+munmap       12,345"), "{t}");
        // No fork-loop line: no row.
        assert!(!t.contains("fork"), "{t}");
        assert_eq!(readable("no summary here"), None);
        assert_eq!(grouped("100"), "100");
        assert_eq!(grouped("1000"), "1,000");
        assert_eq!(grouped("-1"), "-1");
    }
}
