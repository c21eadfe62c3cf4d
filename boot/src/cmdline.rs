//! The kernel command line: a bounded copy and a `key=value` tokenizer.
//!
//! Boot loaders hand over the command line in memory they may reuse, so it is
//! copied into a fixed buffer first. Which keys exist is the kernel's business
//! (it rejects unknown ones); this module only splits words.

use core::fmt;

/// Longest command line kept, in bytes (Linux's x86 COMMAND_LINE_SIZE is 2048).
pub const MAX_CMDLINE: usize = 2048;

/// Why a command line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdLineError {
    /// Longer than [`MAX_CMDLINE`].
    TooLong(usize),
    /// Not valid UTF-8 (the byte offset of the first bad byte).
    NotUtf8(usize),
}

impl fmt::Display for CmdLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdLineError::TooLong(n) => {
                write!(f, "command line is {n} bytes, longer than {MAX_CMDLINE}")
            }
            CmdLineError::NotUtf8(at) => write!(f, "command line is not UTF-8 at byte {at}"),
        }
    }
}

/// An owned copy of the command line.
#[derive(Clone)]
pub struct CmdLine {
    buf: [u8; MAX_CMDLINE],
    len: usize,
}

impl Default for CmdLine {
    fn default() -> Self {
        Self::empty()
    }
}

impl CmdLine {
    pub const fn empty() -> Self {
        CmdLine {
            buf: [0; MAX_CMDLINE],
            len: 0,
        }
    }

    /// Copies `bytes` (without a terminating NUL) after checking it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CmdLineError> {
        if bytes.len() > MAX_CMDLINE {
            return Err(CmdLineError::TooLong(bytes.len()));
        }
        if let Err(e) = core::str::from_utf8(bytes) {
            return Err(CmdLineError::NotUtf8(e.valid_up_to()));
        }
        let mut c = CmdLine::empty();
        c.buf[..bytes.len()].copy_from_slice(bytes);
        c.len = bytes.len();
        Ok(c)
    }

    /// Appends one word (for boot loaders that pass argv, not a string),
    /// separated from what came before by a space.
    pub fn push_word(&mut self, word: &[u8]) -> Result<(), CmdLineError> {
        let sep = usize::from(self.len != 0);
        let new_len = self.len + sep + word.len();
        if new_len > MAX_CMDLINE {
            return Err(CmdLineError::TooLong(new_len));
        }
        if let Err(e) = core::str::from_utf8(word) {
            return Err(CmdLineError::NotUtf8(self.len + sep + e.valid_up_to()));
        }
        if sep == 1 {
            self.buf[self.len] = b' ';
        }
        self.buf[self.len + sep..new_len].copy_from_slice(word);
        self.len = new_len;
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        // Both constructors check UTF-8 before storing bytes.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The whitespace-separated words as `(key, value)`: `key=value` gives
    /// `Some(value)`, a bare `key` gives `None`.
    pub fn args(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.as_str()
            .split_ascii_whitespace()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (w, None),
            })
    }
}

impl fmt::Debug for CmdLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_keys_and_values() {
        let c = CmdLine::from_bytes(b"  workload=faultstorm  quiet per_vma_lock=off x=").unwrap();
        let v: Vec<_> = c.args().collect();
        assert_eq!(
            v,
            vec![
                ("workload", Some("faultstorm")),
                ("quiet", None),
                ("per_vma_lock", Some("off")),
                ("x", Some(""))
            ]
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            CmdLine::from_bytes(b"a\xffb").unwrap_err(),
            CmdLineError::NotUtf8(1)
        );
        let long = vec![b'a'; MAX_CMDLINE + 1];
        assert_eq!(
            CmdLine::from_bytes(&long).unwrap_err(),
            CmdLineError::TooLong(MAX_CMDLINE + 1)
        );
        let mut c = CmdLine::empty();
        c.push_word(b"a=1").unwrap();
        c.push_word(b"b").unwrap();
        assert_eq!(c.as_str(), "a=1 b");
        assert!(c.push_word(&long[..MAX_CMDLINE - 5]).is_err());
        assert_eq!(c.as_str(), "a=1 b");
    }
}
