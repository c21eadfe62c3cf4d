//! In-guest benchmark results: the `samara: bench:` summary lines that
//! Samara's workloads and the Linux anchor (tests/linux-anchor) print, and
//! the figures derived from them.
//!
//! The format (BENCHMARKS.md, "Summary lines", is the reference):
//!
//! ```text
//! samara: bench: NAME v=1 os=samara|linux arch=x86_64|mips64 KEY=VALUE ...
//! ```
//!
//! One line per measurement, `NAME` one of `faultstorm`, `mmap-loop`,
//! `fork-loop` (and `system`, descriptive only). Keys are `[a-z0-9_]+`,
//! values have no spaces, counts and times are unsigned decimal integers (a
//! `no_std` kernel prints them without floating point), each key at most
//! once. Unknown keys are kept and ignored, so either side may add fields;
//! a missing required key or a malformed number is an error that names them.

use std::collections::BTreeMap;

/// Every summary line starts with this (after any `\r`).
pub const BENCH_PREFIX: &str = "samara: bench:";
/// The format version this parser reads (`v=1`).
pub const FORMAT_VERSION: u64 = 1;

/// One parsed summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchLine {
    pub name: String,
    pub fields: BTreeMap<String, String>,
}

fn is_word(s: &str, extra: char) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == extra)
}

impl BenchLine {
    /// `Ok(None)` if `line` is not a summary line at all.
    pub fn parse(line: &str) -> Result<Option<BenchLine>, String> {
        let line = line.trim_matches(|c| c == '\r' || c == '\n');
        let Some(rest) = line.strip_prefix(BENCH_PREFIX) else {
            return Ok(None);
        };
        let mut words = rest.split_whitespace();
        let name = words
            .next()
            .ok_or_else(|| format!("summary line without a name: `{line}`"))?;
        if !is_word(name, '-') {
            return Err(format!("bad benchmark name `{name}` in `{line}`"));
        }
        let mut fields = BTreeMap::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("`{w}` is not KEY=VALUE in `{line}`"))?;
            if !is_word(k, '_') || v.is_empty() {
                return Err(format!("bad field `{w}` in `{line}`"));
            }
            if fields.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("field `{k}` given twice in `{line}`"));
            }
        }
        let l = BenchLine {
            name: name.to_string(),
            fields,
        };
        match l.int("v")? {
            FORMAT_VERSION => Ok(Some(l)),
            v => Err(format!(
                "`{name}` line has format version {v}; this xtask reads version {FORMAT_VERSION}"
            )),
        }
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
                .map_err(|_| format!("`{}` line: {key}={v} is not an unsigned integer", self.name)),
        }
    }

    pub fn int(&self, key: &str) -> Result<u64, String> {
        self.opt_int(key)?
            .ok_or_else(|| format!("`{}` line has no `{key}=`", self.name))
    }

    pub fn text(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("`{}` line has no `{key}=`", self.name))
    }
}

/// Every summary line of a console log, in order.
pub fn bench_lines(output: &str) -> Result<Vec<BenchLine>, String> {
    let mut v = Vec::new();
    for line in output.lines() {
        if let Some(l) = BenchLine::parse(line)? {
            v.push(l);
        }
    }
    Ok(v)
}

/// Which system produced a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Samara,
    Linux,
}

fn os_of(l: &BenchLine) -> Result<Os, String> {
    match l.text("os")? {
        "samara" => Ok(Os::Samara),
        "linux" => Ok(Os::Linux),
        other => Err(format!("`{}` line: unknown os={other}", l.name)),
    }
}

/// Linux's `VMA_LOCK_*` counters and the faults handled under the mmap lock,
/// as Samara counts them (mm::vma::lock::VmaLockCounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmaCounts {
    pub success: u64,
    pub abort: u64,
    pub retry: u64,
    pub miss: u64,
    pub mmap_locked: u64,
}

/// The `count-shared-writes` build's totals over the storm's faults
/// (`mm::linecount::summary()`; optional fields, all four together).
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

/// A `faultstorm` line.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultStorm {
    pub os: Os,
    pub cpus: u64,
    /// Samara: `pvl=on|off`, the per-VMA-lock setting in force.
    pub per_vma_lock: Option<bool>,
    pub threads: u64,
    pub pages: u64,
    pub rounds: u64,
    /// Pages written (threads x pages x rounds): the faults expected.
    pub touches: u64,
    /// Minor faults the kernel counted during the storm.
    pub faults: u64,
    /// Wall-clock time of the storm.
    pub ns: u64,
    /// TSC/Count cycles the faulting threads spent in their touch loops.
    pub touch_cycles: u64,
    /// Samara: cycles from fault trap entry to return to user, summed over
    /// `fault_samples` faults.
    pub fault_cycles: Option<(u64, u64)>,
    pub mapper_pages: u64,
    pub mapper_ops: u64,
    /// Samara: the lock counters (required from Samara).
    pub vma: Option<VmaCounts>,
    /// Instrumented builds only.
    pub shared: Option<SharedWrites>,
}

impl FaultStorm {
    pub fn from_line(l: &BenchLine) -> Result<FaultStorm, String> {
        let os = os_of(l)?;
        let per_vma_lock = match l.get("pvl") {
            None => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(v) => return Err(format!("faultstorm line: pvl={v}, expected on or off")),
        };
        let fault_cycles = match (l.opt_int("fault_cycles")?, l.opt_int("fault_samples")?) {
            (Some(c), Some(n)) => Some((c, n)),
            (None, None) => None,
            _ => return Err("faultstorm line: fault_cycles and fault_samples go together".into()),
        };
        let vma_keys = [
            "vma_lock_success",
            "vma_lock_abort",
            "vma_lock_retry",
            "vma_lock_miss",
            "mmap_locked",
        ];
        let vma = if vma_keys.iter().any(|k| l.get(k).is_some()) || os == Os::Samara {
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
        if os == Os::Samara {
            if per_vma_lock.is_none() {
                return Err("Samara's faultstorm line has no `pvl=on|off`".into());
            }
            if fault_cycles.is_none() {
                return Err(
                    "Samara's faultstorm line has no `fault_cycles=`/`fault_samples=`".into(),
                );
            }
        }
        let keys = [
            "atomic_rmw",
            "atomic_stores",
            "shared_writes",
            "shared_lines",
        ];
        let shared = if keys.iter().any(|k| l.get(k).is_some()) {
            Some(SharedWrites {
                rmw: l.int(keys[0])?,
                stores: l.int(keys[1])?,
                shared_writes: l.int(keys[2])?,
                shared_lines: l.int(keys[3])?,
            })
        } else {
            None
        };
        let f = FaultStorm {
            os,
            cpus: l.int("cpus")?,
            per_vma_lock,
            threads: l.int("threads")?,
            pages: l.int("pages")?,
            rounds: l.int("rounds")?,
            touches: l.int("touches")?,
            faults: l.int("faults")?,
            ns: l.int("ns")?,
            touch_cycles: l.int("touch_cycles")?,
            fault_cycles,
            mapper_pages: l.int("mapper_pages")?,
            mapper_ops: l.int("mapper_ops")?,
            vma,
            shared,
        };
        if f.ns == 0 || f.touches == 0 {
            return Err("faultstorm line: ns and touches must be non-zero".into());
        }
        if f.touches != f.threads * f.pages * f.rounds {
            return Err(format!(
                "faultstorm line: touches={} but threads x pages x rounds = {}",
                f.touches,
                f.threads * f.pages * f.rounds
            ));
        }
        Ok(f)
    }

    /// Faults per second of wall-clock time (the faults the kernel counted).
    pub fn faults_per_sec(&self) -> f64 {
        self.faults as f64 * 1e9 / self.ns as f64
    }

    /// Cycles per page written, seen from user mode (trap, fault handling
    /// and return included): comparable between Samara and Linux.
    pub fn touch_cycles_per_fault(&self) -> f64 {
        self.touch_cycles as f64 / self.touches as f64
    }

    /// Samara: cycles from trap entry to return, per fault.
    pub fn kernel_cycles_per_fault(&self) -> Option<f64> {
        self.fault_cycles
            .filter(|&(_, n)| n > 0)
            .map(|(c, n)| c as f64 / n as f64)
    }

    /// Share of faults handled without the mmap lock:
    /// `vma_lock_success / (vma_lock_success + mmap_locked)`.
    pub fn share_without_mmap_lock(&self) -> Option<f64> {
        let v = self.vma?;
        let all = v.success + v.mmap_locked;
        (all > 0).then(|| v.success as f64 / all as f64)
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

/// An `mmap-loop` or `fork-loop` line.
#[derive(Debug, Clone, PartialEq)]
pub struct OpLoop {
    pub os: Os,
    pub ops: u64,
    pub pages: u64,
    pub cycles: u64,
    pub ns: u64,
}

impl OpLoop {
    pub fn from_line(l: &BenchLine) -> Result<OpLoop, String> {
        let r = OpLoop {
            os: os_of(l)?,
            ops: l.int("ops")?,
            pages: l.int("pages")?,
            cycles: l.int("cycles")?,
            ns: l.int("ns")?,
        };
        if r.ops == 0 {
            return Err(format!("`{}` line: ops=0", l.name));
        }
        Ok(r)
    }

    pub fn cycles_per_op(&self) -> f64 {
        self.cycles as f64 / self.ops as f64
    }

    pub fn ns_per_op(&self) -> f64 {
        self.ns as f64 / self.ops as f64
    }
}

/// Everything one boot reported.
#[derive(Debug, Clone, Default)]
pub struct GuestResults {
    pub faultstorm: Option<FaultStorm>,
    pub mmap_loop: Option<OpLoop>,
    pub fork_loop: Option<OpLoop>,
    /// The `system` line's `release=` (Linux's `uname -r`).
    pub release: Option<String>,
}

impl GuestResults {
    /// Collects the lines of one console log; a malformed line is an error,
    /// a measurement given twice too.
    pub fn from_output(output: &str) -> Result<GuestResults, String> {
        let mut r = GuestResults::default();
        for l in bench_lines(output)? {
            let duplicate = match l.name.as_str() {
                "faultstorm" => r.faultstorm.replace(FaultStorm::from_line(&l)?).is_some(),
                "mmap-loop" => r.mmap_loop.replace(OpLoop::from_line(&l)?).is_some(),
                "fork-loop" => r.fork_loop.replace(OpLoop::from_line(&l)?).is_some(),
                "system" => {
                    r.release = l.get("release").map(String::from);
                    false
                }
                // Forward compatibility: measurements this xtask does not
                // know yet are skipped, not fatal.
                _ => false,
            };
            if duplicate {
                return Err(format!("two `{}` lines in one run", l.name));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMARA: &str = "samara: bench: faultstorm v=1 os=samara arch=x86_64 cpus=2 pvl=on \
        threads=2 pages=256 rounds=4 touches=2048 faults=2050 ns=1000000 touch_cycles=4096000 \
        fault_cycles=2050000 fault_samples=2050 mapper_pages=4 mapper_ops=77 \
        vma_lock_success=2000 vma_lock_abort=1 vma_lock_retry=2 vma_lock_miss=3 mmap_locked=50";

    #[test]
    fn parses_a_samara_faultstorm_line() {
        let l = BenchLine::parse(&format!("{SAMARA}\r")).unwrap().unwrap();
        assert_eq!(l.name, "faultstorm");
        let f = FaultStorm::from_line(&l).unwrap();
        assert_eq!(f.os, Os::Samara);
        assert_eq!(f.per_vma_lock, Some(true));
        assert_eq!(f.faults_per_sec(), 2_050_000.0);
        assert_eq!(f.touch_cycles_per_fault(), 2000.0);
        assert_eq!(f.kernel_cycles_per_fault(), Some(1000.0));
        assert_eq!(f.share_without_mmap_lock(), Some(2000.0 / 2050.0));
        assert_eq!(f.vma.unwrap().miss, 3);
        assert_eq!(f.shared, None);
    }

    #[test]
    fn linux_lines_need_no_kernel_counters() {
        let out = "Linux version ...\n\
            samara: bench: system v=1 os=linux arch=x86_64 cpus=4 release=6.12.95+deb12-amd64\n\
            samara: bench: faultstorm v=1 os=linux arch=x86_64 cpus=4 threads=4 pages=8 rounds=1 \
            touches=32 faults=35 ns=500 touch_cycles=64000 mapper_pages=4 mapper_ops=3\n\
            samara: bench: mmap-loop v=1 os=linux arch=x86_64 cpus=4 ops=10 pages=4 cycles=25000 ns=9000\n\
            samara: result: pass: linux anchor\n";
        let r = GuestResults::from_output(out).unwrap();
        let f = r.faultstorm.unwrap();
        assert_eq!((f.os, f.vma, f.fault_cycles), (Os::Linux, None, None));
        assert_eq!(f.share_without_mmap_lock(), None);
        assert_eq!(r.mmap_loop.unwrap().cycles_per_op(), 2500.0);
        assert!(r.fork_loop.is_none());
        assert_eq!(r.release.as_deref(), Some("6.12.95+deb12-amd64"));
    }

    #[test]
    fn instrumented_counts_are_per_fault() {
        let line = format!(
            "{SAMARA} atomic_rmw=2050 atomic_stores=4100 shared_writes=205 shared_lines=3 \
             future_key=x"
        );
        let f = FaultStorm::from_line(&BenchLine::parse(&line).unwrap().unwrap()).unwrap();
        assert_eq!(
            f.shared_writes_per_fault(),
            Some(SharedPerFault {
                rmw: 1.0,
                stores: 2.0,
                shared_writes: 0.1
            })
        );
        let partial = format!("{SAMARA} atomic_rmw=2050");
        let e = FaultStorm::from_line(&BenchLine::parse(&partial).unwrap().unwrap()).unwrap_err();
        assert!(e.contains("atomic_stores"), "{e}");
    }

    #[test]
    fn malformed_lines_are_errors_that_say_why() {
        let cases = [
            ("samara: bench:", "without a name"),
            ("samara: bench: Faultstorm v=1", "bad benchmark name"),
            ("samara: bench: x v=1 novalue", "not KEY=VALUE"),
            ("samara: bench: x v=1 a=1 a=2", "twice"),
            ("samara: bench: x a=1", "no `v=`"),
            ("samara: bench: x v=2", "format version 2"),
            ("samara: bench: x v=1 K=1", "bad field"),
        ];
        for (line, why) in cases {
            let e = BenchLine::parse(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
        assert_eq!(BenchLine::parse("samara: result: pass").unwrap(), None);
        let parse = |s: &str| FaultStorm::from_line(&BenchLine::parse(s).unwrap().unwrap());
        // Samara must report its counters, its configuration and fault cycles.
        let no_counters = SAMARA.replace(" mmap_locked=50", "");
        assert!(parse(&no_counters).unwrap_err().contains("mmap_locked"));
        let no_pvl = SAMARA.replace(" pvl=on", "");
        assert!(parse(&no_pvl).unwrap_err().contains("pvl"));
        let bad_num = SAMARA.replace("faults=2050", "faults=2k");
        assert!(parse(&bad_num).unwrap_err().contains("faults=2k"));
        let wrong_total = SAMARA.replace("touches=2048", "touches=2047");
        assert!(parse(&wrong_total)
            .unwrap_err()
            .contains("threads x pages x rounds"));
        let twice = format!("{SAMARA}\n{SAMARA}\n");
        assert!(GuestResults::from_output(&twice).is_err());
    }
}
