//! The kernel's command-line options, parsed strictly.
//!
//! Every word of the command line must be a known `key=value`; anything else
//! is an error naming the word and listing the valid keys, so that a typo in
//! a test or benchmark invocation can never silently run the default.
//!
//! | key | values | default |
//! | --- | --- | --- |
//! | `test` | `boot`, `pagefault`, `panic`, `smp`, `user`, `mips-user`, `mips-shootdown` | none: run the workload |
//! | `workload` | `none`, `hello`, `faultstorm`, `forkbomb-lite`, `segv`, `tlb-shootdown` | `none` |
//! | `per_vma_lock` | `on`, `off` | `on` when compiled in |
//! | `threads` | 1..=64: faulting threads (`faultstorm`), children per round (`forkbomb-lite`) | the program's default |
//! | `pages` | 1..=1048576: pages per region (`faultstorm`) | the program's default |
//! | `rounds` | 1..=100000: rounds (`faultstorm`, `forkbomb-lite`, `tlb-shootdown`) | the program's default |
//! | `mmap_ops` | 1..=10000000: mmap+munmap pairs of `faultstorm`'s `mmap-loop` line | the program's default |
//! | `fork_ops` | 1..=1000000: fork+exit+wait rounds of `faultstorm`'s `fork-loop` line | the program's default |

use core::fmt;

use crate::CmdLine;

/// An integration-test scenario (`test=NAME`), run instead of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Boot, print the banner, exit with success.
    Boot,
    /// Read an unmapped kernel address; passes only if the fault handler
    /// reports exactly that address as a kernel-mode not-present read.
    PageFault,
    /// Panic deliberately; the run must end with the failure status.
    Panic,
    /// Every CPU comes online, ticks, answers an IPI and runs kernel
    /// threads; RCU grace periods complete.
    Smp,
    /// User processes run on all CPUs, use the basic system calls, exit
    /// with 0, and give back every frame.
    User,
    /// MIPS64 only: user mode, syscalls, refills and faults, ASID rollover,
    /// driven directly by the kernel (no scheduler).
    MipsUser,
    /// MIPS64 only, two or more CPUs: cross-CPU TLB shootdown without IPIs.
    MipsShootdown,
}

/// The workload to run after boot (`workload=NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workload {
    /// Nothing: boot, report, exit.
    #[default]
    None,
    /// The `hello` program.
    Hello,
    /// Threads fault in private regions while another maps and unmaps.
    Faultstorm,
    /// Processes fork, write copy-on-write pages, unmap and exit.
    ForkbombLite,
    /// Programs that fault on purpose; the kernel kills them and goes on.
    Segv,
    /// No CPU uses a translation after munmap, mprotect or fork changed it.
    TlbShootdown,
}

impl Scenario {
    pub const ALL: [(&'static str, Scenario); 7] = [
        ("boot", Scenario::Boot),
        ("pagefault", Scenario::PageFault),
        ("panic", Scenario::Panic),
        ("smp", Scenario::Smp),
        ("user", Scenario::User),
        ("mips-user", Scenario::MipsUser),
        ("mips-shootdown", Scenario::MipsShootdown),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("?", |(n, _)| n)
    }
}

impl Workload {
    pub const ALL: [(&'static str, Workload); 6] = [
        ("none", Workload::None),
        ("hello", Workload::Hello),
        ("faultstorm", Workload::Faultstorm),
        ("forkbomb-lite", Workload::ForkbombLite),
        ("segv", Workload::Segv),
        ("tlb-shootdown", Workload::TlbShootdown),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, w)| *w == self)
            .map_or("?", |(n, _)| n)
    }
}

/// The parsed options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub test: Option<Scenario>,
    pub workload: Workload,
    /// `per_vma_lock=on|off` if given; the kernel combines it with whether
    /// the feature is compiled in.
    pub per_vma_lock: Option<bool>,
    /// Workload parameters (see the table above).
    pub threads: Option<u32>,
    pub pages: Option<u32>,
    pub rounds: Option<u32>,
    pub mmap_ops: Option<u32>,
    pub fork_ops: Option<u32>,
}

/// The largest value of each numeric key (`faultstorm` carries them all in
/// its two argument words: `samara_abi::faultstorm`, whose limits the
/// kernel checks these against at compile time).
pub const MAX_THREADS: u32 = 64;
pub const MAX_PAGES: u32 = 1 << 20;
pub const MAX_ROUNDS: u32 = 100_000;
pub const MAX_MMAP_OPS: u32 = 10_000_000;
pub const MAX_FORK_OPS: u32 = 1_000_000;

/// Why the command line was refused. Borrows the offending word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionError<'a> {
    /// A key Samara does not know.
    UnknownKey(&'a str),
    /// A word without `=value`.
    MissingValue(&'a str),
    /// A known key with a value it does not accept.
    BadValue { key: &'a str, value: &'a str },
    /// The same key twice (which one should win is a guess we refuse to make).
    Duplicate(&'a str),
    /// A number outside the key's range.
    OutOfRange {
        key: &'a str,
        value: &'a str,
        min: u32,
        max: u32,
    },
}

/// One line per key with its values, for error messages and `--help` text.
pub const VALID_KEYS: &str = "test=boot|pagefault|panic|smp|user|mips-user|mips-shootdown, \
workload=none|hello|faultstorm|forkbomb-lite|segv|tlb-shootdown, per_vma_lock=on|off, \
threads=1..64, pages=1..1048576, rounds=1..100000, mmap_ops=1..10000000, fork_ops=1..1000000";

impl fmt::Display for OptionError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::UnknownKey(k) => write!(f, "unknown key `{k}`"),
            OptionError::MissingValue(k) => write!(f, "`{k}` needs a value (`{k}=...`)"),
            OptionError::BadValue { key, value } => {
                write!(f, "`{value}` is not a valid value for `{key}`")
            }
            OptionError::Duplicate(k) => write!(f, "`{k}` given more than once"),
            OptionError::OutOfRange {
                key,
                value,
                min,
                max,
            } => write!(f, "`{value}` is not a number in {min}..={max} for `{key}`"),
        }?;
        write!(f, "; valid keys: {VALID_KEYS}")
    }
}

fn number<'a>(key: &'a str, value: &'a str, min: u32, max: u32) -> Result<u32, OptionError<'a>> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or(OptionError::OutOfRange {
            key,
            value,
            min,
            max,
        })
}

fn lookup<'a, T: Copy>(
    table: &[(&str, T)],
    key: &'a str,
    value: &'a str,
) -> Result<T, OptionError<'a>> {
    table
        .iter()
        .find(|(n, _)| *n == value)
        .map(|(_, v)| *v)
        .ok_or(OptionError::BadValue { key, value })
}

impl Options {
    /// Parses every word of `cmdline`; the first bad word is the error.
    pub fn parse(cmdline: &CmdLine) -> Result<Options, OptionError<'_>> {
        const KEYS: [&str; 8] = [
            "test",
            "workload",
            "per_vma_lock",
            "threads",
            "pages",
            "rounds",
            "mmap_ops",
            "fork_ops",
        ];
        let mut o = Options::default();
        let mut seen = [false; KEYS.len()];
        for (key, value) in cmdline.args() {
            let i = KEYS
                .iter()
                .position(|k| *k == key)
                .ok_or(OptionError::UnknownKey(key))?;
            let value = value.ok_or(OptionError::MissingValue(key))?;
            if core::mem::replace(&mut seen[i], true) {
                return Err(OptionError::Duplicate(key));
            }
            match key {
                "test" => o.test = Some(lookup(&Scenario::ALL, key, value)?),
                "workload" => o.workload = lookup(&Workload::ALL, key, value)?,
                "per_vma_lock" => {
                    o.per_vma_lock = Some(lookup(&[("on", true), ("off", false)], key, value)?)
                }
                "threads" => o.threads = Some(number(key, value, 1, MAX_THREADS)?),
                "pages" => o.pages = Some(number(key, value, 1, MAX_PAGES)?),
                "rounds" => o.rounds = Some(number(key, value, 1, MAX_ROUNDS)?),
                "mmap_ops" => o.mmap_ops = Some(number(key, value, 1, MAX_MMAP_OPS)?),
                _ => o.fork_ops = Some(number(key, value, 1, MAX_FORK_OPS)?),
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        let c = CmdLine::from_bytes(s.as_bytes()).unwrap();
        Options::parse(&c).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_known_keys() {
        assert_eq!(parse("").unwrap(), Options::default());
        assert_eq!(
            parse(" test=pagefault  per_vma_lock=off workload=none ").unwrap(),
            Options {
                test: Some(Scenario::PageFault),
                workload: Workload::None,
                per_vma_lock: Some(false),
                ..Options::default()
            }
        );
        assert_eq!(parse("per_vma_lock=on").unwrap().per_vma_lock, Some(true));
        assert_eq!(parse("test=panic").unwrap().test, Some(Scenario::Panic));
        assert_eq!(Scenario::PageFault.name(), "pagefault");
        let o = parse("workload=forkbomb-lite threads=4 pages=100 rounds=7").unwrap();
        assert_eq!(o.workload, Workload::ForkbombLite);
        assert_eq!(
            (o.threads, o.pages, o.rounds),
            (Some(4), Some(100), Some(7))
        );
        assert_eq!(Workload::Faultstorm.name(), "faultstorm");
        assert_eq!(parse("test=smp").unwrap().test, Some(Scenario::Smp));
        assert_eq!(
            parse("test=mips-shootdown").unwrap().test,
            Some(Scenario::MipsShootdown)
        );
        assert_eq!(Scenario::MipsUser.name(), "mips-user");
        let o = parse("workload=faultstorm mmap_ops=10000 fork_ops=200").unwrap();
        assert_eq!((o.mmap_ops, o.fork_ops), (Some(10_000), Some(200)));
        assert_eq!((o.threads, o.pages, o.rounds), (None, None, None));
        let o = parse("mmap_ops=10000000 fork_ops=1000000").unwrap();
        assert_eq!(
            (o.mmap_ops, o.fork_ops),
            (Some(MAX_MMAP_OPS), Some(MAX_FORK_OPS))
        );
        assert_eq!(parse("").unwrap().mmap_ops, None);
    }

    #[test]
    fn rejects_numbers_out_of_range() {
        assert!(parse("threads=0")
            .unwrap_err()
            .starts_with("`0` is not a number in 1..=64 for `threads`"));
        assert!(parse("threads=65").is_err());
        assert!(parse("pages=-1").is_err());
        assert!(parse("rounds=1e3").is_err());
        assert!(parse("pages=1048577").is_err());
        assert_eq!(
            parse("mmap_ops=0").unwrap_err(),
            format!("`0` is not a number in 1..=10000000 for `mmap_ops`; valid keys: {VALID_KEYS}")
        );
        assert!(parse("mmap_ops=10000001")
            .unwrap_err()
            .starts_with("`10000001` is not a number in 1..=10000000 for `mmap_ops`"));
        assert!(parse("fork_ops=1000001")
            .unwrap_err()
            .starts_with("`1000001` is not a number in 1..=1000000 for `fork_ops`"));
        assert!(parse("fork_ops=many")
            .unwrap_err()
            .starts_with("`many` is not a number in 1..=1000000 for `fork_ops`"));
        assert!(parse("fork_ops=")
            .unwrap_err()
            .starts_with("`` is not a number in 1..=1000000 for `fork_ops`"));
        assert!(parse("fork_ops=2 fork_ops=3")
            .unwrap_err()
            .starts_with("`fork_ops` given more than once"));
        assert!(parse("mmap_ops")
            .unwrap_err()
            .starts_with("`mmap_ops` needs a value"));
        assert!(parse("threads=2 threads=3")
            .unwrap_err()
            .starts_with("`threads` given more than once"));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values_with_the_list() {
        let e = parse("test=boot quiet").unwrap_err();
        assert!(
            e.starts_with("`quiet` needs a value") || e.starts_with("unknown key `quiet`"),
            "{e}"
        );
        assert!(e.ends_with(VALID_KEYS), "{e}");
        assert_eq!(
            parse("verbose=1").unwrap_err(),
            format!("unknown key `verbose`; valid keys: {VALID_KEYS}")
        );
        assert_eq!(
            parse("test=reboot").unwrap_err(),
            format!("`reboot` is not a valid value for `test`; valid keys: {VALID_KEYS}")
        );
        assert!(parse("per_vma_lock=yes")
            .unwrap_err()
            .starts_with("`yes` is not a valid value for `per_vma_lock`"));
        assert!(parse("workload=")
            .unwrap_err()
            .starts_with("`` is not a valid value for `workload`"));
        assert!(parse("test")
            .unwrap_err()
            .starts_with("`test` needs a value"));
        assert!(parse("test=boot test=panic")
            .unwrap_err()
            .starts_with("`test` given more than once"));
    }
}
