//! In-guest benchmark results: the machine-readable lines that Samara's
//! workloads print (`kernel/user/src/bin/faultstorm.rs` and
//! `kernel/src/os/workload.rs`), and that the Linux anchor
//! (`tests/linux-anchor`) prints in the same form, and the figures derived
//! from them. BENCHMARKS.md ("In-guest lines") is the reference.
//!
//! ```text
//! faultstorm: threads=T pages=P rounds=R faults=F ns=N faults_per_sec=X vma_success=..
//!   vma_abort=.. vma_retry=.. vma_miss=.. mmap_locked=.. lockless_permille=..
//!   cycles_per_fault=.. mapper_ops=.. touch_cycles=..    (the user program, one line)
//! mmap-loop: ops=.. pages=.. cycles=.. ns=..              (faultstorm, after the storm)
//! fork-loop: ops=.. pages=.. cycles=.. ns=..              (faultstorm, after the storm)
//! samara: summary: workload=faultstorm status=0 cpus=4 per_vma_lock=on faults=.. ... checks=pass
//! ```
//!
//! Samara and the anchor print all of these from one boot (the anchor no
//! `vma_*`, `cycles_per_fault` or summary line).
//!
//! A line is machine-readable when every word after its prefix is
//! `key=value` (`faultstorm:` also prints readable lines, whose first word
//! has no `=`; they are skipped). Keys are `[a-z0-9_]+`, each at most once;
//! numbers are unsigned decimal integers. Unknown keys are ignored, so either
//! side may add fields; a missing required key or a malformed number is an
//! error that names it.

use std::collections::BTreeMap;

/// The kernel's closing summary (`kernel/src/os/workload.rs`).
pub const SUMMARY_PREFIX: &str = "samara: summary:";
/// The Linux anchor's description of the system it ran on.
pub const SYSTEM_PREFIX: &str = "linux-anchor: system:";

/// One parsed `key=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLine {
    /// `faultstorm`, `mmap-loop`, `fork-loop`, `summary`, `system`.
    pub what: &'static str,
    pub fields: BTreeMap<String, String>,
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The prefixes of machine-readable lines, and their names.
const PREFIXES: [(&str, &str); 5] = [
    ("faultstorm:", "faultstorm"),
    ("mmap-loop:", "mmap-loop"),
    ("fork-loop:", "fork-loop"),
    (SUMMARY_PREFIX, "summary"),
    (SYSTEM_PREFIX, "system"),
];

impl KvLine {
    /// `Ok(None)` if `line` is not a machine-readable line.
    pub fn parse(line: &str) -> Result<Option<KvLine>, String> {
        let line = line.trim_matches(|c| c == '\r' || c == '\n');
        let Some((rest, what)) = PREFIXES
            .iter()
            .find_map(|&(p, what)| Some((line.strip_prefix(p)?, what)))
        else {
            return Ok(None);
        };
        let mut words = rest.split_whitespace().peekable();
        // Readable lines of the same program ("faultstorm: 4 faulting
        // thread(s) ...") start with a word that is not key=value.
        if !words.peek().is_some_and(|w| w.contains('=')) {
            return Ok(None);
        }
        let mut fields = BTreeMap::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("`{w}` is not KEY=VALUE in `{line}`"))?;
            if !is_key(k) || v.is_empty() {
                return Err(format!("bad field `{w}` in `{line}`"));
            }
            if fields.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("field `{k}` given twice in `{line}`"));
            }
        }
        Ok(Some(KvLine { what, fields }))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    pub fn opt_int(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("`{}` line: {key}={v} is not an unsigned integer", self.what)),
        }
    }

    pub fn int(&self, key: &str) -> Result<u64, String> {
        self.opt_int(key)?
            .ok_or_else(|| format!("`{}` line has no `{key}=`", self.what))
    }

    pub fn text(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("`{}` line has no `{key}=`", self.what))
    }
}

/// Linux's `VMA_LOCK_*` events and the faults handled under the mmap lock,
/// over the storm (`vma_success=` ... `mmap_locked=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmaCounts {
    pub success: u64,
    pub abort: u64,
    pub retry: u64,
    pub miss: u64,
    pub mmap_locked: u64,
}

/// The `count-shared-writes` build's totals over the storm's faults
/// (`mm::linecount::summary()`; optional keys, all four together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedWrites {
    /// `atomic_rmw=`: atomic read-modify-writes inside fault scopes.
    pub rmw: u64,
    /// `atomic_stores=`: atomic stores inside fault scopes.
    pub stores: u64,
    /// `shared_writes=`: writes of both kinds to cache lines that two or
    /// more CPUs wrote.
    pub shared_writes: u64,
    /// `shared_lines=`: distinct such lines.
    pub shared_lines: u64,
}

/// Per fault: atomic RMWs, atomic stores, writes to shared lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedPerFault {
    pub rmw: f64,
    pub stores: f64,
    pub shared_writes: f64,
}

/// A `faultstorm: threads=...` line.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultStorm {
    pub threads: u64,
    pub pages: u64,
    pub rounds: u64,
    /// Page faults the kernel counted over the storm (the mapper's
    /// included).
    pub faults: u64,
    /// Wall-clock time from before the faulting threads are started until
    /// all of them are joined.
    pub ns: u64,
    pub mapper_ops: u64,
    /// Samara: trap-to-return cycles per fault (TSC; MIPS: Count).
    pub cycles_per_fault: Option<u64>,
    /// Samara: the lock counters.
    pub vma: Option<VmaCounts>,
    /// Cycles the faulting threads spent in their touch loops, summed
    /// (`touch_cycles=`; both print it; optional so that a kernel from
    /// before it still parses).
    pub touch_cycles: Option<u64>,
    /// Instrumented builds only.
    pub shared: Option<SharedWrites>,
}

impl FaultStorm {
    pub fn from_line(l: &KvLine) -> Result<FaultStorm, String> {
        let vma_keys = [
            "vma_success",
            "vma_abort",
            "vma_retry",
            "vma_miss",
            "mmap_locked",
        ];
        let vma = if vma_keys.iter().any(|k| l.get(k).is_some()) {
            Some(VmaCounts {
                success: l.int(vma_keys[0])?,
                abort: l.int(vma_keys[1])?,
                retry: l.int(vma_keys[2])?,
                miss: l.int(vma_keys[3])?,
                mmap_locked: l.int(vma_keys[4])?,
            })
        } else {
            None
        };
        let shared_keys = [
            "atomic_rmw",
            "atomic_stores",
            "shared_writes",
            "shared_lines",
        ];
        let shared = if shared_keys.iter().any(|k| l.get(k).is_some()) {
            Some(SharedWrites {
                rmw: l.int(shared_keys[0])?,
                stores: l.int(shared_keys[1])?,
                shared_writes: l.int(shared_keys[2])?,
                shared_lines: l.int(shared_keys[3])?,
            })
        } else {
            None
        };
        let f = FaultStorm {
            threads: l.int("threads")?,
            pages: l.int("pages")?,
            rounds: l.int("rounds")?,
            faults: l.int("faults")?,
            ns: l.int("ns")?,
            mapper_ops: l.int("mapper_ops")?,
            cycles_per_fault: l.opt_int("cycles_per_fault")?,
            vma,
            touch_cycles: l.opt_int("touch_cycles")?,
            shared,
        };
        if f.ns == 0 || f.touches() == 0 {
            return Err("faultstorm line: ns, threads, pages and rounds must be non-zero".into());
        }
        Ok(f)
    }

    /// Pages written: threads x pages x rounds (one first touch each).
    pub fn touches(&self) -> u64 {
        self.threads * self.pages * self.rounds
    }

    /// Faults per second of wall-clock time.
    pub fn faults_per_sec(&self) -> f64 {
        self.faults as f64 * 1e9 / self.ns as f64
    }

    /// Cycles per page written, seen from user mode (trap, fault handling
    /// and return included): comparable between Samara and Linux.
    pub fn touch_cycles_per_fault(&self) -> Option<f64> {
        self.touch_cycles.map(|c| c as f64 / self.touches() as f64)
    }

    /// Share of faults handled without the mmap lock, as the kernel's
    /// `lockless_permille`: `vma_success / faults`.
    pub fn share_without_mmap_lock(&self) -> Option<f64> {
        let v = self.vma?;
        (self.faults > 0).then(|| v.success as f64 / self.faults as f64)
    }

    /// Instrumented builds: the counts per fault.
    pub fn shared_writes_per_fault(&self) -> Option<SharedPerFault> {
        let s = self.shared?;
        let per = |x: u64| x as f64 / self.faults as f64;
        (self.faults > 0).then(|| SharedPerFault {
            rmw: per(s.rmw),
            stores: per(s.stores),
            shared_writes: per(s.shared_writes),
        })
    }
}

/// The kernel's `samara: summary:` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub workload: String,
    /// The program's exit status (-1: none).
    pub status: i64,
    pub cpus: u64,
    pub per_vma_lock: bool,
    /// Every process reaped, frames and VMAs back to their boot values.
    pub checks_pass: bool,
}

impl Summary {
    pub fn from_line(l: &KvLine) -> Result<Summary, String> {
        let status = l.text("status")?;
        Ok(Summary {
            workload: l.text("workload")?.to_string(),
            status: status
                .parse()
                .map_err(|_| format!("summary line: status={status} is not an integer"))?,
            cpus: l.int("cpus")?,
            per_vma_lock: match l.text("per_vma_lock")? {
                "on" => true,
                "off" => false,
                v => {
                    return Err(format!(
                        "summary line: per_vma_lock={v}, expected on or off"
                    ))
                }
            },
            checks_pass: match l.text("checks")? {
                "pass" => true,
                "fail" => false,
                v => return Err(format!("summary line: checks={v}, expected pass or fail")),
            },
        })
    }
}

/// An `mmap-loop:` or `fork-loop:` line.
#[derive(Debug, Clone, PartialEq)]
pub struct OpLoop {
    pub ops: u64,
    pub pages: u64,
    pub cycles: u64,
    pub ns: u64,
}

impl OpLoop {
    pub fn from_line(l: &KvLine) -> Result<OpLoop, String> {
        let r = OpLoop {
            ops: l.int("ops")?,
            pages: l.int("pages")?,
            cycles: l.int("cycles")?,
            ns: l.int("ns")?,
        };
        if r.ops == 0 {
            return Err(format!("`{}` line: ops=0", l.what));
        }
        Ok(r)
    }

    pub fn cycles_per_op(&self) -> f64 {
        self.cycles as f64 / self.ops as f64
    }
}

/// Everything one boot reported.
#[derive(Debug, Clone, Default)]
pub struct GuestResults {
    pub faultstorm: Option<FaultStorm>,
    pub summary: Option<Summary>,
    pub mmap_loop: Option<OpLoop>,
    pub fork_loop: Option<OpLoop>,
    /// The anchor's `release=` (Linux's `uname -r`).
    pub release: Option<String>,
}

impl GuestResults {
    /// Collects the machine-readable lines of one console log; a malformed
    /// line is an error, a measurement given twice too.
    pub fn from_output(output: &str) -> Result<GuestResults, String> {
        let mut r = GuestResults::default();
        for line in output.lines() {
            let Some(l) = KvLine::parse(line)? else {
                continue;
            };
            let duplicate = match l.what {
                "faultstorm" => r.faultstorm.replace(FaultStorm::from_line(&l)?).is_some(),
                "mmap-loop" => r.mmap_loop.replace(OpLoop::from_line(&l)?).is_some(),
                "fork-loop" => r.fork_loop.replace(OpLoop::from_line(&l)?).is_some(),
                "summary" => r.summary.replace(Summary::from_line(&l)?).is_some(),
                _ => {
                    r.release = l.get("release").map(String::from);
                    false
                }
            };
            if duplicate {
                return Err(format!("two `{}` lines in one run", l.what));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Samara's faultstorm and kernel print them (x86_64 under TCG,
    /// `--smp 2 -- workload=faultstorm pages=256 rounds=4 mmap_ops=100
    /// fork_ops=10`), with the serial console's line ends.
    const SAMARA: &str = "\
        faultstorm: 2 faulting thread(s) x 4 round(s) x 256 pages, one mapper thread, 2 CPU(s), per-VMA locking on; then 100 mmap+munmap and 10 fork+exit+wait\r\n\
        faultstorm: 2264 faults in 55.597 ms: 40721 faults/s; 2048 pages touched, 83131 cycles per page in the write loops; 48158 cycles per fault (trap to return)\r\n\
        faultstorm: VMA_LOCK_SUCCESS 1872, ABORT 392, RETRY 0, MISS 0; faults under the mmap lock 392; 82.6% without the mmap lock\r\n\
        faultstorm: threads=2 pages=256 rounds=4 faults=2264 ns=55597235 faults_per_sec=40721 vma_success=1872 vma_abort=392 vma_retry=0 vma_miss=0 mmap_locked=392 lockless_permille=826 cycles_per_fault=48158 mapper_ops=218 touch_cycles=170254107\r\n\
        mmap-loop: ops=100 pages=4 cycles=14642576 ns=5670965\r\n\
        fork-loop: ops=10 pages=64 cycles=36845639 ns=14245952\r\n\
        samara: summary: workload=faultstorm status=0 cpus=2 per_vma_lock=on faults=2355 vma_lock_success=1963 vma_lock_abort=392 vma_lock_retry=0 vma_lock_miss=0 mmap_locked_faults=392 frames_free_before=64564 frames_free_after=64564 vmas_live=0 rcu_grace_periods=37 remote_flushes=261 cycles_per_fault=57355 cycles_per_second=2594248800 elapsed_ms=114 checks=pass\r\n\
        samara: result: pass: workload faultstorm: exited 0, no frame or VMA leaked\r\n";

    #[test]
    fn parses_samaras_faultstorm_loops_and_summary() {
        let r = GuestResults::from_output(SAMARA).unwrap();
        let f = r.faultstorm.unwrap();
        assert_eq!(
            (f.threads, f.pages, f.rounds, f.touches()),
            (2, 256, 4, 2048)
        );
        assert_eq!(f.faults_per_sec(), 2264.0 * 1e9 / 55_597_235.0);
        assert_eq!(f.cycles_per_fault, Some(48158));
        assert_eq!(f.share_without_mmap_lock(), Some(1872.0 / 2264.0));
        assert_eq!(f.vma.unwrap().abort, 392);
        assert_eq!(f.touch_cycles, Some(170_254_107));
        assert_eq!(f.touch_cycles_per_fault(), Some(170_254_107.0 / 2048.0));
        assert_eq!(f.shared, None);
        let s = r.summary.unwrap();
        assert_eq!(
            s,
            Summary {
                workload: "faultstorm".into(),
                status: 0,
                cpus: 2,
                per_vma_lock: true,
                checks_pass: true
            }
        );
        assert_eq!(
            r.mmap_loop,
            Some(OpLoop {
                ops: 100,
                pages: 4,
                cycles: 14_642_576,
                ns: 5_670_965
            })
        );
        assert_eq!(r.fork_loop.unwrap().cycles_per_op(), 3_684_563.9);
    }

    /// A kernel from before the loop lines and `touch_cycles=`: the storm
    /// and summary still parse, the rest is absent (the report says
    /// pending).
    #[test]
    fn parses_an_older_samaras_lines() {
        let old: String = SAMARA
            .lines()
            .filter(|l| !l.contains("-loop:"))
            .map(|l| l.replace(" touch_cycles=170254107", "") + "\n")
            .collect();
        let r = GuestResults::from_output(&old).unwrap();
        assert_eq!(r.faultstorm.unwrap().touch_cycles, None);
        assert!(r.summary.is_some());
        assert!(r.mmap_loop.is_none() && r.fork_loop.is_none());
    }

    #[test]
    fn parses_the_anchors_lines() {
        let out = "linux-anchor: system: release=6.12.95+deb12-amd64 cpus=4 thp=never\n\
            faultstorm: threads=4 pages=8 rounds=1 faults=35 ns=500 faults_per_sec=70000000 \
            mapper_ops=3 touch_cycles=64000 cpus=4\n\
            mmap-loop: ops=10 pages=4 cycles=25000 ns=9000\n\
            fork-loop: ops=2 pages=64 cycles=900000 ns=300000\n\
            samara: result: pass: linux anchor\n";
        let r = GuestResults::from_output(out).unwrap();
        let f = r.faultstorm.unwrap();
        assert_eq!((f.vma, f.cycles_per_fault), (None, None));
        assert_eq!(f.touch_cycles_per_fault(), Some(2000.0));
        assert_eq!(f.share_without_mmap_lock(), None);
        assert_eq!(r.mmap_loop.unwrap().cycles_per_op(), 2500.0);
        assert_eq!(r.fork_loop.unwrap().cycles_per_op(), 450_000.0);
        assert_eq!(r.release.as_deref(), Some("6.12.95+deb12-amd64"));
        assert!(r.summary.is_none());
    }

    #[test]
    fn instrumented_counts_are_per_fault() {
        let line = "faultstorm: threads=1 pages=1 rounds=10 faults=10 ns=1 mapper_ops=0 \
                    atomic_rmw=10 atomic_stores=20 shared_writes=1 shared_lines=1 future_key=x";
        let f = FaultStorm::from_line(&KvLine::parse(line).unwrap().unwrap()).unwrap();
        assert_eq!(
            f.shared_writes_per_fault(),
            Some(SharedPerFault {
                rmw: 1.0,
                stores: 2.0,
                shared_writes: 0.1
            })
        );
        let partial =
            "faultstorm: threads=1 pages=1 rounds=1 faults=1 ns=1 mapper_ops=0 atomic_rmw=1";
        let e = FaultStorm::from_line(&KvLine::parse(partial).unwrap().unwrap()).unwrap_err();
        assert!(e.contains("atomic_stores"), "{e}");
    }

    #[test]
    fn malformed_lines_are_errors_that_say_why() {
        let cases = [
            ("faultstorm: threads=1 novalue", "not KEY=VALUE"),
            ("faultstorm: threads=1 threads=2", "twice"),
            ("mmap-loop: ops=1 K=1", "bad field"),
            ("samara: summary: workload=x x=", "bad field"),
        ];
        for (line, why) in cases {
            let e = KvLine::parse(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
        // Readable lines and other output are not machine lines.
        for line in [
            "faultstorm: 4 faulting thread(s) x 4 round(s)",
            "faultstorm: worker 1: mmap failed in round 0",
            "samara: result: pass",
            "",
        ] {
            assert_eq!(KvLine::parse(line).unwrap(), None, "{line}");
        }
        let storm = |s: &str| FaultStorm::from_line(&KvLine::parse(s).unwrap().unwrap());
        let ok = "faultstorm: threads=2 pages=256 rounds=4 faults=2050 ns=1000 mapper_ops=7";
        assert!(storm(ok).is_ok());
        let e = storm(&ok.replace(" mapper_ops=7", "")).unwrap_err();
        assert!(e.contains("mapper_ops"), "{e}");
        let e = storm(&ok.replace("faults=2050", "faults=2k")).unwrap_err();
        assert!(e.contains("faults=2k"), "{e}");
        let e = storm(&format!("{ok} vma_success=3")).unwrap_err();
        assert!(e.contains("vma_abort"), "{e}");
        assert!(storm(&ok.replace("ns=1000", "ns=0")).is_err());
        let summary = |s: &str| Summary::from_line(&KvLine::parse(s).unwrap().unwrap());
        let good =
            "samara: summary: workload=faultstorm status=0 cpus=2 per_vma_lock=on checks=pass";
        assert!(summary(good).is_ok());
        assert!(summary(&good.replace("checks=pass", "checks=maybe")).is_err());
        assert!(
            summary(&good.replace("status=0", "status=-1"))
                .unwrap()
                .status
                == -1
        );
        let twice = format!("{SAMARA}{SAMARA}");
        assert!(GuestResults::from_output(&twice)
            .unwrap_err()
            .contains("two"));
    }
}
