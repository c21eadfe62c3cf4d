//! Driving U-Boot over a serial line: interrupt autoboot, type the boot
//! commands one by one (waiting for each echo and each prompt, judging each
//! command's output), then watch the kernel's console until it prints its
//! exit marker `samara: exit N`.
//!
//! The line discipline is the one a person uses: U-Boot echoes every typed
//! character and polls its UART without flow control, so typing one
//! character at a time and waiting for its echo never overruns the board's
//! receive FIFO. A command is done when the prompt comes back; its output
//! decides whether it worked (`tftpboot` must report "Bytes transferred",
//! `fatload` "bytes read"; "TFTP error", "Retry count exceeded", "Unknown
//! command" and the like fail at once, and a `tftpboot` stuck retrying is
//! interrupted with Ctrl-C so the board is left at its prompt).
//!
//! [`Tty`] is a real serial device (termios raw mode, the requested baud
//! rate); the tests run the driver against a scripted fake U-Boot on a
//! pseudo-terminal.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::flash::{check_safe, Kind, UbootCommand};
use crate::{Error, Result};

/// The kernel's exit marker (`arch::EXIT_MARKER`), followed by the status.
pub const EXIT_MARKER: &str = "samara: exit ";

/// Ctrl-C: interrupts autoboot ("any key") and any running U-Boot command.
const CTRL_C: u8 = 0x03;

/// A byte stream with read time-outs.
pub trait Port {
    /// Reads what is available, waiting at most `timeout` for the first
    /// byte; `Ok(0)` means nothing arrived in time.
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
}

/// A file descriptor polled for input.
pub struct FdPort(pub File);

impl Port for FdPort {
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and the count is 1; poll only writes `revents`.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(0);
        }
        match self.0.read(buf) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the serial line hung up",
            )),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        Write::write_all(&mut self.0, data)?;
        self.0.flush()
    }
}

/// The termios speed constant for `baud`.
pub fn baud_constant(baud: u32) -> Result<libc::speed_t> {
    Ok(match baud {
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        460800 => libc::B460800,
        921600 => libc::B921600,
        _ => {
            return Err(Error::new(format!(
                "unsupported baud rate {baud} (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)"
            )))
        }
    })
}

/// Puts the terminal on `fd` in raw mode (8N1, no flow control, no echo,
/// no line editing) at `speed`.
pub fn set_raw(fd: i32, speed: libc::speed_t) -> io::Result<()> {
    // SAFETY: termios is plain old data; an all-zero value is valid and is overwritten by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `t` a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `t` is a valid termios; these only modify it in memory.
    unsafe {
        libc::cfmakeraw(&mut t);
        libc::cfsetispeed(&mut t, speed);
        libc::cfsetospeed(&mut t, speed);
    }
    t.c_cflag |= libc::CLOCAL | libc::CREAD;
    t.c_cflag &= !(libc::CRTSCTS | libc::CSTOPB | libc::PARENB);
    t.c_iflag &= !(libc::IXON | libc::IXOFF);
    t.c_cc[libc::VMIN] = 0;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: `fd` is open and `t` a fully initialised termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A serial device in raw mode.
pub struct Tty;

impl Tty {
    /// Opens `path` (e.g. /dev/ttyUSB0) at `baud`, 8N1, raw.
    pub fn open(path: &Path, baud: u32) -> Result<FdPort> {
        let speed = baud_constant(baud)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))?;
        set_raw(file.as_raw_fd(), speed).map_err(|e| {
            Error::new(format!(
                "cannot set {} to {baud} baud raw mode: {e}",
                path.display()
            ))
        })?;
        Ok(FdPort(file))
    }
}

/// How long each phase may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Until U-Boot's autoboot message or prompt (the board may still be
    /// powering on).
    pub prompt: Duration,
    /// For the echo of one typed character.
    pub echo: Duration,
    /// For a command to bring the prompt back (a TFTP transfer).
    pub command: Duration,
    /// For the kernel to print its exit marker.
    pub kernel: Duration,
}

/// Talks to U-Boot on `port`, copying everything the board prints to `out`.
pub struct Driver<'a, P: Port> {
    port: P,
    out: &'a mut dyn Write,
    /// Everything received since the last [`Driver::mark`].
    seen: Vec<u8>,
    /// The line being received (since the last `\n`, without `\r`).
    line: Vec<u8>,
    /// The prompt, once seen.
    prompt: Option<Vec<u8>>,
}

fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(n)..]);
    s.replace('\r', "")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The line of `text` containing `needle`, trimmed.
fn line_with(text: &[u8], needle: &str) -> String {
    let s = String::from_utf8_lossy(text);
    s.lines()
        .find(|l| l.contains(needle))
        .unwrap_or(needle)
        .trim()
        .to_string()
}

impl<'a, P: Port> Driver<'a, P> {
    pub fn new(port: P, out: &'a mut dyn Write) -> Self {
        Driver {
            port,
            out,
            seen: Vec::new(),
            line: Vec::new(),
            prompt: None,
        }
    }

    /// The prompt learned from the board, if any.
    pub fn prompt(&self) -> Option<String> {
        self.prompt
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn mark(&mut self) {
        self.seen.clear();
    }

    /// Receives whatever arrives within `timeout`; returns how much.
    fn pump(&mut self, timeout: Duration) -> Result<usize> {
        let mut buf = [0u8; 512];
        let n = self
            .port
            .read_timeout(&mut buf, timeout)
            .map_err(|e| Error::new(format!("serial line: {e}")))?;
        let got = &buf[..n];
        let _ = self.out.write_all(got);
        let _ = self.out.flush();
        self.seen.extend_from_slice(got);
        for &b in got {
            match b {
                b'\n' => self.line.clear(),
                b'\r' => {}
                _ => self.line.push(b),
            }
        }
        Ok(n)
    }

    fn send(&mut self, data: &[u8]) -> Result<()> {
        self.port
            .write_all(data)
            .map_err(|e| Error::new(format!("serial line: {e}")))
    }

    /// Whether the line being received is a prompt: the learned one, or
    /// before that one ending like U-Boot's (`# `, `=> `).
    fn at_prompt(&self) -> bool {
        match &self.prompt {
            Some(p) => self.line == *p,
            None => {
                let l = &self.line;
                l.len() >= 2 && (l.ends_with(b"# ") || l.ends_with(b"=> ") || l.ends_with(b"> "))
            }
        }
    }

    /// Waits for quiet: no byte for `quiet`, or `limit` elapsed.
    fn settle(&mut self, quiet: Duration, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        while Instant::now() < end && self.pump(quiet)? > 0 {}
        Ok(())
    }

    /// Gets U-Boot to its prompt: interrupts autoboot (Ctrl-C counts as
    /// "any key"; at a prompt it just prints a new one) and learns the
    /// prompt text.
    pub fn reach_prompt(&mut self, timeout: Duration) -> Result<()> {
        self.mark();
        self.send(&[CTRL_C])?;
        let end = Instant::now() + timeout;
        let mut autoboot_seen = 0;
        let mut last_poke = Instant::now();
        loop {
            if Instant::now() >= end {
                return Err(Error::new(format!(
                    "no U-Boot prompt or autoboot message within {} s (is the board powered \
                     on, the cable on its console port, the baud rate right?); last output: {:?}",
                    timeout.as_secs(),
                    tail(&self.seen, 200)
                )));
            }
            let n = self.pump(Duration::from_millis(100))?;
            let lower = self.seen.to_ascii_lowercase();
            let count = lower.windows(8).filter(|w| w == b"autoboot").count();
            if count > autoboot_seen {
                autoboot_seen = count;
                self.send(&[CTRL_C])?;
            }
            if self.at_prompt() {
                // More prompts may follow (one per Ctrl-C); wait for quiet,
                // then take the last line as the prompt.
                self.settle(Duration::from_millis(300), Duration::from_secs(3))?;
                if self.at_prompt() {
                    self.prompt = Some(self.line.clone());
                    return Ok(());
                }
            }
            if n == 0 && last_poke.elapsed() > Duration::from_secs(2) {
                // Nothing is happening: U-Boot may sit at a prompt that was
                // printed before we opened the line.
                last_poke = Instant::now();
                self.send(&[CTRL_C])?;
            }
        }
    }

    /// Types `text`, one character at a time, waiting for each echo.
    fn type_line(&mut self, text: &str, echo: Duration) -> Result<()> {
        for &b in text.as_bytes() {
            let before = self.seen.len();
            self.send(&[b])?;
            let end = Instant::now() + echo;
            while !self.seen[before..].contains(&b) {
                if Instant::now() >= end {
                    return Err(Error::new(format!(
                        "U-Boot stopped echoing while typing `{text}` (no echo of {:?} within {} ms)",
                        b as char,
                        echo.as_millis()
                    )));
                }
                self.pump(Duration::from_millis(50))?;
            }
        }
        let before = self.seen.len();
        self.send(b"\r")?;
        let end = Instant::now() + echo;
        while !self.seen[before..].contains(&b'\n') {
            if Instant::now() >= end {
                return Err(Error::new(format!("U-Boot did not take the line `{text}`")));
            }
            self.pump(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Runs one command at the prompt and checks its output.
    pub fn run(&mut self, cmd: &UbootCommand, t: &Timeouts) -> Result<()> {
        check_safe(&cmd.line)?;
        self.mark();
        self.type_line(&cmd.line, t.echo)?;
        if cmd.kind == Kind::Boot {
            return Ok(());
        }
        let fail: &[&str] = match cmd.kind {
            Kind::Tftp => &[
                "TFTP error",
                "Retry count exceeded",
                "File not found",
                "Unknown command",
                "No ethernet",
            ],
            Kind::Fatload => &["** ", "Unable to", "Failed", "Unknown command"],
            Kind::Prepare | Kind::Boot => &["Unknown command"],
        };
        let end = Instant::now() + t.command;
        loop {
            if let Some(m) = fail
                .iter()
                .find(|m| find(&self.seen, m.as_bytes()).is_some())
            {
                let what = line_with(&self.seen, m);
                // Stop a command that retries forever and leave U-Boot at its
                // prompt for the person who takes over.
                self.send(&[CTRL_C])?;
                let stop = Instant::now() + Duration::from_secs(5);
                while !self.at_prompt() && Instant::now() < stop {
                    self.pump(Duration::from_millis(100))?;
                }
                return Err(Error::new(format!("U-Boot: `{}` failed: {what}", cmd.line)));
            }
            if self.at_prompt() {
                break;
            }
            if Instant::now() >= end {
                self.send(&[CTRL_C])?;
                return Err(Error::new(format!(
                    "U-Boot: `{}` did not finish within {} s; last output: {:?}",
                    cmd.line,
                    t.command.as_secs(),
                    tail(&self.seen, 200)
                )));
            }
            self.pump(Duration::from_millis(100))?;
        }
        let ok = match cmd.kind {
            Kind::Tftp => Some("Bytes transferred"),
            Kind::Fatload => Some("bytes read"),
            Kind::Prepare | Kind::Boot => None,
        };
        if let Some(ok) = ok {
            if find(&self.seen, ok.as_bytes()).is_none() {
                return Err(Error::new(format!(
                    "U-Boot: `{}` failed (no \"{ok}\" in its output: {:?})",
                    cmd.line,
                    tail(&self.seen, 300)
                )));
            }
        }
        Ok(())
    }

    /// After the boot command: copies the kernel's console until the exit
    /// marker and returns its status. Fails if U-Boot's prompt comes back
    /// (the boot command failed) or nothing ends the run in time.
    pub fn monitor(&mut self, timeout: Duration) -> Result<u8> {
        let end = Instant::now() + timeout;
        let mut scanned = 0;
        loop {
            // Complete lines only: the status may arrive in pieces.
            while let Some(nl) = self.seen[scanned..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.seen[scanned..scanned + nl]).into_owned();
                scanned += nl + 1;
                if let Some(pos) = line.find(EXIT_MARKER) {
                    let status = line[pos + EXIT_MARKER.len()..].trim();
                    return status.parse::<u8>().map_err(|_| {
                        Error::new(format!("unreadable exit marker line `{}`", line.trim()))
                    });
                }
            }
            if self.prompt.is_some() && self.at_prompt() {
                return Err(Error::new(format!(
                    "the boot command returned to the U-Boot prompt: {:?}",
                    tail(&self.seen, 400)
                )));
            }
            if Instant::now() >= end {
                return Err(Error::new(format!(
                    "no `{EXIT_MARKER}N` line from the kernel within {} s",
                    timeout.as_secs()
                )));
            }
            self.pump(Duration::from_millis(100))?;
        }
    }

    /// The whole session: prompt, every command, then the kernel. Returns
    /// the kernel's exit status.
    pub fn boot(&mut self, cmds: &[UbootCommand], t: &Timeouts) -> Result<u8> {
        for c in cmds {
            check_safe(&c.line)?;
        }
        self.reach_prompt(t.prompt)?;
        for c in cmds {
            self.run(c, t)?;
        }
        self.monitor(t.kernel)
    }
}

#[cfg(test)]
mod tests;
