//! The per-architecture facts xtask needs: Rust target, QEMU binary and
//! package, defaults. QEMU's machine arguments are in `qemu.rs`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Mips64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Mips64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Mips64 => "mips64",
        }
    }

    /// The QEMU system emulator.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Mips64 => "qemu-system-mips64",
        }
    }

    /// The Debian/Ubuntu package that ships [`Arch::qemu_binary`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Mips64 => "qemu-system-mips",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "x86-64" | "amd64" => Ok(Arch::X86_64),
            "mips64" | "octeon" => Ok(Arch::Mips64),
            _ => Err(format!("unknown architecture `{s}` (expected x86_64 or mips64)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_aliases() {
        assert_eq!("x86_64".parse(), Ok(Arch::X86_64));
        assert_eq!("mips64".parse(), Ok(Arch::Mips64));
        assert_eq!("octeon".parse(), Ok(Arch::Mips64));
        assert!("arm".parse::<Arch>().unwrap_err().contains("x86_64 or mips64"));
        for a in Arch::ALL {
            assert_eq!(a.name().parse(), Ok(a));
        }
    }
}
