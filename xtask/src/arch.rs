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
            _ => Err(format!(
                "unknown architecture `{s}` (expected x86_64 or mips64)"
            )),
        }
    }
}

/// The MIPS64 platform a kernel is built for (`--board`). x86_64 has one
/// platform (QEMU's q35) and only accepts the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Board {
    /// QEMU's Malta (mips64) or q35 (x86_64): the default, bootable in QEMU.
    #[default]
    Malta,
    /// Cavium Octeon boards booted by U-Boot (`cargo xtask flash`).
    Octeon,
}

impl Board {
    pub fn name(self) -> &'static str {
        match self {
            Board::Malta => "malta",
            Board::Octeon => "octeon",
        }
    }

    /// Checks that `arch` has this board.
    pub fn check(self, arch: Arch) -> Result<(), String> {
        match (arch, self) {
            (Arch::X86_64, Board::Octeon) => Err(format!(
                "--board {} needs --arch mips64 (x86_64 has one platform, QEMU's q35)",
                self.name()
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Board {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "malta" => Ok(Board::Malta),
            "octeon" => Ok(Board::Octeon),
            _ => Err(format!("unknown board `{s}` (expected malta or octeon)")),
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
        assert!("arm"
            .parse::<Arch>()
            .unwrap_err()
            .contains("x86_64 or mips64"));
        for a in Arch::ALL {
            assert_eq!(a.name().parse(), Ok(a));
        }
    }

    #[test]
    fn boards() {
        assert_eq!("octeon".parse(), Ok(Board::Octeon));
        assert_eq!("malta".parse(), Ok(Board::Malta));
        assert!("erlite".parse::<Board>().is_err());
        assert!(Board::Octeon.check(Arch::Mips64).is_ok());
        assert!(Board::Octeon
            .check(Arch::X86_64)
            .unwrap_err()
            .contains("--arch mips64"));
        assert!(Board::Malta.check(Arch::X86_64).is_ok());
    }
}
