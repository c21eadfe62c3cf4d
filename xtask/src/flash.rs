//! `cargo xtask flash`: the U-Boot commands that boot a Samara image on an
//! Octeon board, the files that go with them, and the safety rule that
//! nothing Samara sends ever writes the board's flash.
//!
//! The boot is two U-Boot commands (plus `usb start`/`mmc rescan` before a
//! FAT load):
//!
//! ```text
//! tftpboot 0x20000000 samara.elf                 (or: fatload usb 0:1 0x20000000 samara.elf)
//! bootoctlinux 0x20000000 coremask=0x1 endbootargs test=boot
//! ```
//!
//! `endbootargs` ends U-Boot's own options: only the words after it reach
//! the kernel (without it, the kernel would get U-Boot's whole command line;
//! `boot::octeon` refuses that with a clear message). `coremask=` names the
//! cores U-Boot starts; all but the boot core park in the kernel.
//!
//! The same commands are written to `samara-boot.txt` and, when `mkimage`
//! (Debian: u-boot-tools) is installed, to `samara-boot.scr`, a legacy
//! `mkimage -T script` image for U-Boot's `source` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The kernel image's file name on the TFTP server or FAT partition.
pub const IMAGE_NAME: &str = "samara.elf";
/// The plain-text command list.
pub const SCRIPT_TEXT_NAME: &str = "samara-boot.txt";
/// The `mkimage -T script` image of the same commands.
pub const SCRIPT_IMAGE_NAME: &str = "samara-boot.scr";
/// Default load address: Cavium SDK U-Boot's `loadaddr`.
pub const DEFAULT_LOADADDR: u64 = 0x2000_0000;
/// How far above the kernel's load address the script image is loaded.
pub const SCRIPT_OFFSET: u64 = 16 << 20;

/// Where U-Boot gets the image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `tftpboot`, from `server` if given (else U-Boot's `serverip`).
    Tftp { server: Option<String> },
    /// `fatload IFACE DEV[:PART]`, e.g. `usb 0:1` (the EdgeRouter Lite's
    /// internal stick) or `mmc 0:1` (the EdgeRouter 4's eMMC).
    Fat { iface: String, dev: String },
}

/// Everything that decides the U-Boot commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub loadaddr: u64,
    pub coremask: u64,
    pub source: Source,
    pub kernel_args: Vec<String>,
}

/// What a command is for, which decides how its output is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Preparation (`usb start`, `mmc rescan`): only an unknown command fails.
    Prepare,
    /// `tftpboot`: must report "Bytes transferred".
    Tftp,
    /// `fatload`: must report "bytes read".
    Fatload,
    /// `bootoctlinux`: must not come back to the prompt.
    Boot,
}

/// One line typed at the U-Boot prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UbootCommand {
    pub kind: Kind,
    pub line: String,
}

/// Refuses any command that could write the board's flash or environment:
/// `saveenv`/`env save`, erase/protect, flash-device commands, and anything
/// with "write" in a word. Everything xtask sends passes through here.
pub fn check_safe(line: &str) -> Result<()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let first = words.first().copied().unwrap_or("");
    let forbidden = words.iter().any(|w| {
        let w = w.to_ascii_lowercase();
        w == "saveenv" || w == "erase" || w == "protect" || w.contains("write")
    }) || (first == "env" && words.get(1) == Some(&"save"))
        || [
            "sf",
            "nand",
            "mtd",
            "eeprom",
            "cp",
            "cp.b",
            "cp.w",
            "cp.l",
            "bootloaderupdate",
        ]
        .contains(&first);
    if forbidden {
        return Err(Error::new(format!(
            "refusing to send `{line}` to U-Boot: xtask never writes a board's flash or environment"
        )));
    }
    Ok(())
}

/// Checks a kernel argument: one word that U-Boot's command parser passes
/// through unchanged (no quotes, `;`, `$`, `#` or `\`).
fn check_arg(arg: &str) -> Result<()> {
    if arg.is_empty()
        || arg
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"';$#\\".contains(c))
    {
        return Err(Error::new(format!(
            "kernel argument `{arg}` cannot be passed through U-Boot's command line \
             (one word, without quotes, ';', '$', '#' or '\\')"
        )));
    }
    Ok(())
}

fn check_word(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:-_".contains(c))
    {
        return Err(Error::new(format!(
            "{what} `{s}` is not a plain U-Boot word"
        )));
    }
    Ok(())
}

/// The commands that load and boot the image, in order.
pub fn commands(plan: &Plan) -> Result<Vec<UbootCommand>> {
    if plan.coremask == 0 {
        return Err(Error::new("--coremask 0 starts no core"));
    }
    for a in &plan.kernel_args {
        check_arg(a)?;
    }
    let addr = format!("{:#x}", plan.loadaddr);
    let mut cmds = Vec::new();
    match &plan.source {
        Source::Tftp { server } => {
            let file = match server {
                Some(s) => {
                    check_word("TFTP server", s)?;
                    format!("{s}:{IMAGE_NAME}")
                }
                None => IMAGE_NAME.to_string(),
            };
            cmds.push(UbootCommand {
                kind: Kind::Tftp,
                line: format!("tftpboot {addr} {file}"),
            });
        }
        Source::Fat { iface, dev } => {
            check_word("FAT interface", iface)?;
            check_word("FAT device", dev)?;
            match iface.as_str() {
                "usb" => cmds.push(UbootCommand {
                    kind: Kind::Prepare,
                    line: "usb start".to_string(),
                }),
                "mmc" => cmds.push(UbootCommand {
                    kind: Kind::Prepare,
                    line: "mmc rescan".to_string(),
                }),
                _ => {}
            }
            cmds.push(UbootCommand {
                kind: Kind::Fatload,
                line: format!("fatload {iface} {dev} {addr} {IMAGE_NAME}"),
            });
        }
    }
    let mut boot = format!(
        "bootoctlinux {addr} coremask={:#x} endbootargs",
        plan.coremask
    );
    for a in &plan.kernel_args {
        boot.push(' ');
        boot.push_str(a);
    }
    cmds.push(UbootCommand {
        kind: Kind::Boot,
        line: boot,
    });
    for c in &cmds {
        check_safe(&c.line)?;
    }
    Ok(cmds)
}

/// The plain-text script: one command per line.
pub fn script_text(cmds: &[UbootCommand]) -> String {
    cmds.iter().map(|c| format!("{}\n", c.line)).collect()
}

/// The files `flash` leaves for the board.
#[derive(Debug)]
pub struct Outputs {
    pub image: PathBuf,
    pub script_text: PathBuf,
    /// `None` when `mkimage` is not installed.
    pub script_image: Option<PathBuf>,
}

/// Writes `samara.elf`, the script text and (with `mkimage`) the script
/// image into `dir`.
pub fn write_outputs(dir: &Path, elf: &Path, cmds: &[UbootCommand]) -> Result<Outputs> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    let image = dir.join(IMAGE_NAME);
    if elf != image {
        std::fs::copy(elf, &image).map_err(|e| {
            Error::new(format!(
                "cannot copy {} to {}: {e}",
                elf.display(),
                image.display()
            ))
        })?;
    }
    let script_text_path = dir.join(SCRIPT_TEXT_NAME);
    std::fs::write(&script_text_path, script_text(cmds))
        .map_err(|e| Error::new(format!("cannot write {}: {e}", script_text_path.display())))?;
    let script_image = match crate::install::which("mkimage") {
        Some(mkimage) => {
            let out = dir.join(SCRIPT_IMAGE_NAME);
            let status = Command::new(mkimage)
                .args(["-A", "mips", "-O", "linux", "-T", "script", "-C", "none"])
                .args(["-a", "0", "-e", "0", "-n", "Samara boot"])
                .arg("-d")
                .arg(&script_text_path)
                .arg(&out)
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| Error::new(format!("cannot run mkimage: {e}")))?;
            if !status.success() {
                return Err(Error::new(format!("mkimage failed ({status})")));
            }
            Some(out)
        }
        None => None,
    };
    Ok(Outputs {
        image,
        script_text: script_text_path,
        script_image,
    })
}

/// The console instructions `flash` prints when it does not drive the
/// board itself.
pub fn instructions(plan: &Plan, cmds: &[UbootCommand], out: &Outputs) -> String {
    let mut s = String::from("On the board's U-Boot console (interrupt autoboot first), type:\n");
    for c in cmds {
        s.push_str(&format!("    {}\n", c.line));
    }
    if out.script_image.is_some() {
        let at = plan.loadaddr + SCRIPT_OFFSET;
        let load = match &plan.source {
            Source::Tftp { server: Some(srv) } => {
                format!("tftpboot {at:#x} {srv}:{SCRIPT_IMAGE_NAME}")
            }
            Source::Tftp { server: None } => format!("tftpboot {at:#x} {SCRIPT_IMAGE_NAME}"),
            Source::Fat { iface, dev } => {
                format!("fatload {iface} {dev} {at:#x} {SCRIPT_IMAGE_NAME}")
            }
        };
        s.push_str(&format!(
            "or run the script image (older U-Boot: `autoscr` instead of `source`):\n    {load}\n    source {at:#x}\n"
        ));
    } else {
        s.push_str(
            "(mkimage is not installed, so no script image was made; Debian: apt-get install u-boot-tools)\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(source: Source) -> Plan {
        Plan {
            loadaddr: DEFAULT_LOADADDR,
            coremask: 0x3,
            source,
            kernel_args: vec!["test=boot".into(), "per_vma_lock=off".into()],
        }
    }

    #[test]
    fn tftp_commands() {
        let c = commands(&plan(Source::Tftp { server: None })).unwrap();
        let lines: Vec<&str> = c.iter().map(|c| c.line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "tftpboot 0x20000000 samara.elf",
                "bootoctlinux 0x20000000 coremask=0x3 endbootargs test=boot per_vma_lock=off"
            ]
        );
        assert_eq!(c[0].kind, Kind::Tftp);
        assert_eq!(c[1].kind, Kind::Boot);
        let c = commands(&plan(Source::Tftp {
            server: Some("192.168.1.2".into()),
        }))
        .unwrap();
        assert_eq!(c[0].line, "tftpboot 0x20000000 192.168.1.2:samara.elf");
        assert_eq!(
            script_text(&c),
            "tftpboot 0x20000000 192.168.1.2:samara.elf\n\
             bootoctlinux 0x20000000 coremask=0x3 endbootargs test=boot per_vma_lock=off\n"
        );
    }

    #[test]
    fn fat_commands() {
        let c = commands(&plan(Source::Fat {
            iface: "usb".into(),
            dev: "0:1".into(),
        }))
        .unwrap();
        let lines: Vec<&str> = c.iter().map(|c| c.line.as_str()).collect();
        assert_eq!(
            lines[..2],
            ["usb start", "fatload usb 0:1 0x20000000 samara.elf"]
        );
        assert_eq!((c[0].kind, c[1].kind), (Kind::Prepare, Kind::Fatload));
        let c = commands(&plan(Source::Fat {
            iface: "mmc".into(),
            dev: "0".into(),
        }))
        .unwrap();
        assert_eq!(c[0].line, "mmc rescan");
    }

    #[test]
    fn bad_input_is_refused() {
        let mut p = plan(Source::Tftp { server: None });
        p.kernel_args = vec!["a=1;saveenv".into()];
        assert!(commands(&p).unwrap_err().0.contains("cannot be passed"));
        p.kernel_args = vec!["$(bootargs)".into()];
        assert!(commands(&p).is_err());
        p.kernel_args = vec![];
        p.coremask = 0;
        assert!(commands(&p).is_err());
        let p = plan(Source::Tftp {
            server: Some("host; reset".into()),
        });
        assert!(commands(&p).is_err());
        let p = plan(Source::Fat {
            iface: "usb".into(),
            dev: "0:1 ;".into(),
        });
        assert!(commands(&p).is_err());
    }

    #[test]
    fn never_writes_flash() {
        for bad in [
            "saveenv",
            "env save",
            "erase 0x1fc00000 +0x80000",
            "protect off all",
            "sf write 0x20000000 0 0x1000",
            "nand write 0 0 0",
            "mmc write 0x20000000 0 1",
            "fatwrite usb 0:1 0x20000000 x 1",
            "cp.b 0x20000000 0x1fc00000 0x1000",
            "bootloaderupdate",
        ] {
            assert!(check_safe(bad).is_err(), "{bad}");
        }
        for ok in [
            "tftpboot 0x20000000 samara.elf",
            "usb start",
            "bootoctlinux 0x20000000",
        ] {
            assert!(check_safe(ok).is_ok(), "{ok}");
        }
    }
}
