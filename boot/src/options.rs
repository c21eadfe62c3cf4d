//! The kernel's command-line options, parsed strictly.
//!
//! Every word of the command line must be a known `key=value`; anything else
//! is an error naming the word and listing the valid keys, so that a typo in
//! a test or benchmark invocation can never silently run the default.
//!
//! | key | values | default |
//! | --- | --- | --- |
//! | `test` | `boot`, `pagefault`, `panic`, `mips-user`, `mips-shootdown` | none: run the workload |
//! | `workload` | `none` | `none` |
//! | `per_vma_lock` | `on`, `off` | `on` when compiled in |

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
}

impl Scenario {
    pub const ALL: [(&'static str, Scenario); 5] = [
        ("boot", Scenario::Boot),
        ("pagefault", Scenario::PageFault),
        ("panic", Scenario::Panic),
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
    pub const ALL: [(&'static str, Workload); 1] = [("none", Workload::None)];

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
}

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
}

/// One line per key with its values, for error messages and `--help` text.
pub const VALID_KEYS: &str =
    "test=boot|pagefault|panic|mips-user|mips-shootdown, workload=none, per_vma_lock=on|off";

impl fmt::Display for OptionError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::UnknownKey(k) => write!(f, "unknown key `{k}`"),
            OptionError::MissingValue(k) => write!(f, "`{k}` needs a value (`{k}=...`)"),
            OptionError::BadValue { key, value } => {
                write!(f, "`{value}` is not a valid value for `{key}`")
            }
            OptionError::Duplicate(k) => write!(f, "`{k}` given more than once"),
        }?;
        write!(f, "; valid keys: {VALID_KEYS}")
    }
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
        let mut o = Options::default();
        let (mut seen_test, mut seen_workload, mut seen_pvl) = (false, false, false);
        for (key, value) in cmdline.args() {
            let seen = match key {
                "test" => &mut seen_test,
                "workload" => &mut seen_workload,
                "per_vma_lock" => &mut seen_pvl,
                _ => return Err(OptionError::UnknownKey(key)),
            };
            let value = value.ok_or(OptionError::MissingValue(key))?;
            if core::mem::replace(seen, true) {
                return Err(OptionError::Duplicate(key));
            }
            match key {
                "test" => o.test = Some(lookup(&Scenario::ALL, key, value)?),
                "workload" => o.workload = lookup(&Workload::ALL, key, value)?,
                _ => o.per_vma_lock = Some(lookup(&[("on", true), ("off", false)], key, value)?),
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
                per_vma_lock: Some(false)
            }
        );
        assert_eq!(parse("per_vma_lock=on").unwrap().per_vma_lock, Some(true));
        assert_eq!(parse("test=panic").unwrap().test, Some(Scenario::Panic));
        assert_eq!(Scenario::PageFault.name(), "pagefault");
        assert_eq!(
            parse("test=mips-shootdown").unwrap().test,
            Some(Scenario::MipsShootdown)
        );
        assert_eq!(Scenario::MipsUser.name(), "mips-user");
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
