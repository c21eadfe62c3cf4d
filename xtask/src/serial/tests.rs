//! The driver against a scripted fake U-Boot on a pseudo-terminal: the
//! driver opens the pty's slave side by path, as it opens /dev/ttyUSB0,
//! and the fake answers on the master side the way U-Boot does (banner,
//! autoboot countdown, prompt, character echo, slow output, TFTP retrying
//! until interrupted, the kernel's console after `bootoctlinux`).

use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::*;
use crate::flash::{commands, Plan, Source};

const PROMPT: &str = "Octeon ubnt_e100# ";

#[derive(Clone)]
struct Script {
    /// Print the autoboot countdown (else: sit at a prompt printed before
    /// the driver opened the line).
    autoboot: bool,
    /// Delay between output characters (a slow board or a slow line).
    char_delay: Duration,
    tftp_ok: bool,
    /// `bootoctlinux` finds an ELF image.
    elf_ok: bool,
    /// The status the kernel reports, or None for a kernel that never ends.
    exit: Option<u8>,
    /// Say nothing at all (board off).
    silent: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            autoboot: true,
            char_delay: Duration::from_micros(200),
            tftp_ok: true,
            elf_ok: true,
            exit: Some(0),
            silent: false,
        }
    }
}

/// What the fake saw.
#[derive(Default)]
struct Seen {
    lines: Vec<String>,
    ctrl_c: usize,
}

struct Fake {
    port: FdPort,
    script: Script,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    fn say(&mut self, s: &str) {
        for b in s.bytes() {
            let _ = self.port.write_all(&[b]);
            if !self.script.char_delay.is_zero() {
                std::thread::sleep(self.script.char_delay);
            }
        }
    }

    /// One byte, or None after `timeout` (or once the test is over).
    fn key(&mut self, timeout: Duration) -> Option<u8> {
        let end = Instant::now() + timeout;
        while Instant::now() < end && !self.stop.load(Ordering::Relaxed) {
            let mut b = [0u8; 1];
            match self.port.read_timeout(&mut b, Duration::from_millis(20)) {
                Ok(1) => {
                    if b[0] == CTRL_C {
                        self.seen.lock().unwrap().ctrl_c += 1;
                    }
                    return Some(b[0]);
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Reads a command line with echo, as U-Boot's line editor does.
    fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            let b = self.key(Duration::from_secs(30))?;
            match b {
                b'\r' | b'\n' => {
                    self.say("\r\n");
                    return Some(line);
                }
                CTRL_C => {
                    self.say("<INTERRUPT>\r\n");
                    self.say(PROMPT);
                    line.clear();
                }
                _ => {
                    self.say(&(b as char).to_string());
                    line.push(b as char);
                }
            }
        }
    }

    fn run(mut self) {
        if self.script.silent {
            while self.key(Duration::from_secs(30)).is_some() {}
            return;
        }
        self.say("\r\n\r\nU-Boot 2013.07 (Samara fake, Octeon SDK layout)\r\n\r\n");
        self.say("BIST check passed.\r\nUBNT_E100 r1:2, r2:18, f:4/71\r\nDRAM:  512 MB\r\n");
        if self.script.autoboot {
            self.say("Hit any key to stop autoboot:  3");
            let mut stopped = false;
            for n in (0..3).rev() {
                if self.key(Duration::from_millis(400)).is_some() {
                    stopped = true;
                    break;
                }
                self.say(&format!("\x08\x08\x08 {n} "));
            }
            if !stopped {
                self.say("\r\nfatload usb 0 $(loadaddr) vmlinux.64 ...\r\n");
                return;
            }
            self.say("\x08\x08\x08 0 \r\n");
        } else {
            // Sitting at a prompt printed long ago: only a key wakes it.
            if self.key(Duration::from_secs(30)) == Some(CTRL_C) {
                self.say("<INTERRUPT>\r\n");
            }
        }
        loop {
            self.say(PROMPT);
            let Some(line) = self.read_line() else { return };
            self.seen.lock().unwrap().lines.push(line.clone());
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                None => {}
                Some("tftpboot") => {
                    self.say("Using octeth0 device\r\nTFTP from server 192.168.1.2; our IP address is 192.168.1.20\r\n");
                    self.say(&format!("Filename '{}'.\r\nLoad address: {}\r\nLoading: ", words[2], words[1]));
                    if self.script.tftp_ok {
                        for _ in 0..5 {
                            self.say("#");
                            std::thread::sleep(Duration::from_millis(30));
                        }
                        self.say("\r\ndone\r\nBytes transferred = 204800 (32000 hex)\r\n");
                    } else {
                        // U-Boot keeps retrying until interrupted.
                        loop {
                            self.say("T T T T T \r\nRetry count exceeded; starting again\r\n");
                            if self.key(Duration::from_millis(200)) == Some(CTRL_C) {
                                self.say("\r\nAbort\r\n");
                                break;
                            }
                            if self.stop.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                    }
                }
                Some("usb") => self.say("(Re)start USB...\r\nUSB:   scanning bus for devices... 1 USB Device(s) found\r\n"),
                Some("fatload") => self.say("reading samara.elf\r\n\r\n204800 bytes read\r\n"),
                Some("bootoctlinux") if self.script.elf_ok => {
                    self.say("ELF file is 64 bit\r\nAllocated memory for ELF segment: addr: 0x1100000, size 0x30000\r\n");
                    self.say("Bootloader: Done loading app on coremask: 0x3\r\n");
                    std::thread::sleep(Duration::from_millis(100));
                    self.say("\r\nSamara 0.1.0 (mips64, debug build)\r\n  platform:     octeon, 2 CPU(s) reported\r\n");
                    match self.script.exit {
                        Some(0) => self.say("samara: result: pass: test boot: booted\r\n"),
                        Some(_) => self.say("samara: result: fail: kernel panic\r\n"),
                        None => {}
                    }
                    if let Some(n) = self.script.exit {
                        // The marker arrives in two pieces.
                        self.say("samara: ex");
                        std::thread::sleep(Duration::from_millis(150));
                        self.say(&format!("it {n}\r\nmips64: halting\r\n"));
                    }
                    while self.key(Duration::from_secs(30)).is_some() {}
                    return;
                }
                Some("bootoctlinux") => self.say("## No elf image at address 0x20000000\r\n"),
                Some(other) => self.say(&format!("Unknown command '{other}' - try 'help'\r\n")),
            }
        }
    }
}

/// A pty pair with the fake on the master side; returns the slave's path.
struct Rig {
    path: PathBuf,
    _slave: File,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    fake: Option<JoinHandle<()>>,
}

impl Rig {
    fn new(script: Script) -> Rig {
        let mut master = -1;
        let mut slave = -1;
        // SAFETY: openpty writes two descriptors to the given ints; the name, termios and winsize pointers may be NULL.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", io::Error::last_os_error());
        // Raw mode before anything is written: with the default ECHO the
        // line discipline would echo the fake's own output back to it.
        set_raw(slave, libc::B115200).unwrap();
        let path = std::fs::read_link(format!("/proc/self/fd/{slave}")).unwrap();
        // SAFETY: both descriptors were just returned by openpty and are owned by nothing else; each File takes sole ownership of one.
        let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let fake = Fake {
            port: FdPort(master),
            script,
            seen: seen.clone(),
            stop: stop.clone(),
        };
        let fake = std::thread::spawn(move || fake.run());
        Rig {
            path,
            _slave: slave,
            seen,
            stop,
            fake: Some(fake),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.fake.take() {
            f.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        prompt: Duration::from_secs(10),
        echo: Duration::from_secs(2),
        command: Duration::from_secs(10),
        kernel: Duration::from_secs(10),
    }
}

fn plan(source: Source) -> Vec<UbootCommand> {
    commands(&Plan {
        loadaddr: 0x2000_0000,
        coremask: 0x3,
        source,
        kernel_args: vec!["test=boot".into()],
    })
    .unwrap()
}

fn tftp() -> Vec<UbootCommand> {
    plan(Source::Tftp { server: None })
}

/// Runs the driver on the rig's tty; returns its result and what it printed.
fn drive(rig: &Rig, cmds: &[UbootCommand], t: Timeouts) -> (Result<u8>, String) {
    let port = Tty::open(&rig.path, 115200).unwrap();
    let mut out = Vec::new();
    let r = Driver::new(port, &mut out).boot(cmds, &t);
    (r, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn boots_through_autoboot_and_reports_the_kernel_status() {
    let rig = Rig::new(Script::default());
    let (r, out) = drive(&rig, &tftp(), timeouts());
    let seen = rig.finish();
    assert_eq!(r.unwrap(), 0, "{out}");
    assert_eq!(
        seen.lines,
        [
            "tftpboot 0x20000000 samara.elf",
            "bootoctlinux 0x20000000 coremask=0x3 endbootargs test=boot"
        ]
    );
    assert!(seen.ctrl_c >= 1, "autoboot was interrupted");
    // The console was copied through, kernel output included.
    assert!(
        out.contains("Bytes transferred") && out.contains("samara: result: pass"),
        "{out}"
    );
    assert!(!seen.lines.iter().any(|l| l.contains("saveenv")));
}

#[test]
fn slow_board_and_fatload() {
    let rig = Rig::new(Script {
        char_delay: Duration::from_millis(2),
        ..Script::default()
    });
    let cmds = plan(Source::Fat {
        iface: "usb".into(),
        dev: "0:1".into(),
    });
    let (r, out) = drive(&rig, &cmds, timeouts());
    let seen = rig.finish();
    assert_eq!(r.unwrap(), 0, "{out}");
    assert_eq!(seen.lines[0], "usb start");
    assert_eq!(seen.lines[1], "fatload usb 0:1 0x20000000 samara.elf");
}

#[test]
fn kernel_failure_status_is_returned() {
    let rig = Rig::new(Script {
        exit: Some(1),
        ..Script::default()
    });
    let (r, out) = drive(&rig, &tftp(), timeouts());
    rig.finish();
    assert_eq!(r.unwrap(), 1, "{out}");
}

#[test]
fn a_board_already_at_its_prompt() {
    let rig = Rig::new(Script {
        autoboot: false,
        ..Script::default()
    });
    let port = Tty::open(&rig.path, 115200).unwrap();
    let mut out = Vec::new();
    let mut d = Driver::new(port, &mut out);
    let r = d.boot(&tftp(), &timeouts());
    let prompt = d.prompt();
    drop(d);
    rig.finish();
    assert_eq!(r.unwrap(), 0);
    assert_eq!(prompt.as_deref(), Some(PROMPT));
}

#[test]
fn failed_tftp_is_reported_and_interrupted() {
    let rig = Rig::new(Script {
        tftp_ok: false,
        ..Script::default()
    });
    let (r, out) = drive(&rig, &tftp(), timeouts());
    let seen = rig.finish();
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("`tftpboot 0x20000000 samara.elf` failed") && e.contains("Retry count exceeded"),
        "{e}"
    );
    // Ctrl-C stopped the retries, and the boot command was never typed.
    assert!(out.contains("Abort"), "{out}");
    assert_eq!(seen.lines, ["tftpboot 0x20000000 samara.elf"]);
}

#[test]
fn boot_command_returning_to_the_prompt_is_an_error() {
    let rig = Rig::new(Script {
        elf_ok: false,
        ..Script::default()
    });
    let (r, _) = drive(&rig, &tftp(), timeouts());
    rig.finish();
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("returned to the U-Boot prompt") && e.contains("No elf image"),
        "{e}"
    );
}

#[test]
fn silent_line_and_silent_kernel_time_out() {
    let rig = Rig::new(Script {
        silent: true,
        ..Script::default()
    });
    let t = Timeouts {
        prompt: Duration::from_secs(1),
        ..timeouts()
    };
    let (r, _) = drive(&rig, &tftp(), t);
    rig.finish();
    assert!(r.unwrap_err().to_string().contains("no U-Boot prompt"));

    let rig = Rig::new(Script {
        exit: None,
        ..Script::default()
    });
    let t = Timeouts {
        kernel: Duration::from_secs(1),
        ..timeouts()
    };
    let (r, out) = drive(&rig, &tftp(), t);
    rig.finish();
    let e = r.unwrap_err().to_string();
    assert!(e.contains("no `samara: exit N` line"), "{e}");
    assert!(out.contains("Samara 0.1.0"), "{out}");
}

#[test]
fn unknown_commands_fail_and_unsafe_ones_are_never_sent() {
    let rig = Rig::new(Script::default());
    let cmds = vec![UbootCommand {
        kind: Kind::Prepare,
        line: "frobnicate".into(),
    }];
    let (r, _) = drive(&rig, &cmds, timeouts());
    rig.finish();
    assert!(r.unwrap_err().to_string().contains("Unknown command"));

    let rig = Rig::new(Script::default());
    let cmds = vec![UbootCommand {
        kind: Kind::Prepare,
        line: "saveenv".into(),
    }];
    let (r, _) = drive(&rig, &cmds, timeouts());
    let seen = rig.finish();
    assert!(r.unwrap_err().to_string().contains("never writes"));
    assert!(seen.lines.is_empty(), "{:?}", seen.lines);
}
