//! The MIPS Malta boot protocol: YAMON-style argv/environment tables.
//!
//! QEMU's `-M malta` (like the YAMON monitor on the real board) enters the
//! kernel with four registers:
//!
//! | reg | value                                                                  |
//! |-----|------------------------------------------------------------------------|
//! | a0  | argc, or -1 under `-semihosting` (UHI: "ask the host for argv")        |
//! | a1  | argv: a table of 32-bit pointers to NUL-terminated strings             |
//! | a2  | envp: a NULL-terminated table of 32-bit pointers, name/value in turn   |
//! | a3  | size of the RAM below the I/O hole, in bytes                           |
//!
//! All pointers are 32-bit KSEG0 addresses, sign-extended into the 64-bit
//! registers. QEMU writes argv\[0\] = kernel path and argv\[1\] = the whole
//! `-append` string (truncated to 255 bytes), then the environment
//! (`memsize`, `ememsize`, `modetty0`, `rngseed`), all inside one table at
//! physical 0x2000; argv is that table and envp starts two entries later.
//!
//! Under `-semihosting` QEMU sets a0 = -1, the UHI convention for "ask the
//! host": the full, untruncated arguments (the kernel path, then `-append`
//! split at spaces) are available through UHI calls, which the arch layer
//! offers as [`HostArgs`]. Without an answering host, a0 = -1 falls back to
//! the table, where argc is the Malta constant 2.
//!
//! Physical memory on Malta (QEMU `hw/mips/malta.c`, matching the board):
//! - all of RAM (at most 2 GiB) sits at physical `0x8000_0000`;
//! - its first `min(RAM, 256 MiB)` is aliased at physical 0 (`memsize`),
//!   which is what KSEG0/CKSEG0 can reach and where the kernel is loaded;
//! - RAM beyond 512 MiB is aliased again at physical `0x2000_0000`.
//!
//! The map built here names every byte of RAM exactly once: the low alias
//! `[0, memsize)` and the rest of RAM through the high window,
//! `[0x9000_0000, 0x8000_0000 + ememsize)` (reached through XKPHYS). The
//! duplicate aliases (`0x8000_0000..0x9000_0000` and `0x2000_0000..`) are left
//! out so that no frame can be handed out twice.
//!
//! The parser works over [`BootMemory`], a reader of physical memory, so it is
//! tested on the host against tables built byte by byte; malformed tables
//! give a [`MaltaError`], never a panic or a wild read.

use core::fmt;

use crate::cmdline::{CmdLine, CmdLineError};
use crate::memmap::{MapError, MemoryMap, RegionKind};
use crate::BootInfo;

/// Where RAM's first byte sits in the high physical window.
pub const HIGH_RAM_BASE: u64 = 0x8000_0000;
/// The largest RAM below the I/O hole (the low alias at physical 0).
pub const LOW_RAM_MAX: u64 = 256 << 20;
/// The most RAM a Malta board (and QEMU's model of it) carries.
pub const RAM_MAX: u64 = 2 << 30;
/// The exception vectors' page at physical 0 (also KSEG0's default EBase).
pub const VECTOR_AREA_END: u64 = 0x1000;
/// YAMON (and QEMU's pseudo-bootloader tables at 0x2000) live below this.
pub const FIRMWARE_AREA_END: u64 = 0xf_0000;
/// 0xf0000-0xfffff is decoded by the PIIX4 south bridge as the ISA BIOS
/// window, so PCI devices cannot DMA into it: never usable RAM.
pub const BIOS_WINDOW_END: u64 = 0x10_0000;

/// Most argv entries accepted (QEMU's table has 16 slots in all).
pub const MAX_ARGS: usize = 32;
/// Most environment name/value pairs accepted.
pub const MAX_ENV: usize = 64;
/// Longest single argv or environment string accepted, in bytes.
pub const MAX_STRING: usize = crate::cmdline::MAX_CMDLINE;

pub use crate::phys::BootMemory;

/// Arguments held by a debugger host (UHI semihosting `argc`/`argnlen`/
/// `argn`), consulted when a0 = -1.
pub trait HostArgs {
    /// The number of arguments, argv\[0\] included, or `None` if the host
    /// does not answer.
    fn count(&self) -> Option<usize>;
    /// Copies argument `n` into `buf` and returns its length (without NUL),
    /// or `None` if it does not exist or needs more than `buf.len()` bytes
    /// including its NUL.
    fn get(&self, n: usize, buf: &mut [u8]) -> Option<usize>;
}

/// Most host arguments accepted: every word of a full command line.
pub const MAX_HOST_ARGS: usize = crate::cmdline::MAX_CMDLINE / 2 + 1;

/// The registers the Malta boot loader hands to the kernel entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRegs {
    pub a0: u64,
    pub a1: u64,
    pub a2: u64,
    pub a3: u64,
}

/// Why the Malta boot data was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaltaError {
    /// a0 is neither a small argument count nor the UHI marker -1.
    BadArgc(i64),
    /// A pointer is not a sign-extended KSEG0/KSEG1 address.
    BadPointer { what: &'static str, value: u64 },
    /// A table or string lies (partly) outside readable RAM.
    Unreadable { what: &'static str, phys: u64 },
    /// A string has no NUL within [`MAX_STRING`] bytes.
    Unterminated { what: &'static str, phys: u64 },
    /// A required argv entry is a NULL pointer.
    NullArg { index: usize },
    /// The semihosting host reports more than [`MAX_HOST_ARGS`] arguments.
    TooManyHostArgs(usize),
    /// The semihosting host has no argument `index`, or it is too long.
    HostArg { index: usize },
    /// An environment name has no value (the table ends after the name).
    MissingValue,
    /// The environment has more than [`MAX_ENV`] pairs without a terminator.
    EnvTooLong,
    /// A size variable is not a decimal or `0x` hexadecimal number.
    BadNumber { name: &'static str },
    /// Neither `memsize` nor a3 gives the low RAM size.
    NoMemorySize,
    /// `memsize` is zero or larger than the 256 MiB low window.
    BadMemsize(u64),
    /// `ememsize` is below `memsize` or above the board's 2 GiB.
    BadEmemsize { memsize: u64, ememsize: u64 },
    /// The kernel image is not inside low RAM above the firmware area.
    KernelOutsideRam { start: u64, end: u64 },
    /// The command line is too long or not UTF-8.
    CmdLine(CmdLineError),
    /// The memory map overflowed.
    Map(MapError),
}

impl fmt::Display for MaltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MaltaError::BadArgc(n) => {
                write!(f, "argc (a0) is {n}: expected 0..={MAX_ARGS} or -1 (UHI)")
            }
            MaltaError::BadPointer { what, value } => {
                write!(f, "{what} pointer {value:#x} is not a KSEG0/KSEG1 address")
            }
            MaltaError::Unreadable { what, phys } => {
                write!(f, "{what} at physical {phys:#x} is outside low RAM")
            }
            MaltaError::Unterminated { what, phys } => {
                write!(
                    f,
                    "{what} at physical {phys:#x} has no NUL within {MAX_STRING} bytes"
                )
            }
            MaltaError::NullArg { index } => write!(f, "argv[{index}] is a NULL pointer"),
            MaltaError::TooManyHostArgs(n) => {
                write!(
                    f,
                    "semihosting host reports {n} arguments, more than {MAX_HOST_ARGS}"
                )
            }
            MaltaError::HostArg { index } => write!(
                f,
                "semihosting argument {index} is missing or longer than {MAX_STRING} bytes"
            ),
            MaltaError::MissingValue => {
                f.write_str("environment ends between a name and its value")
            }
            MaltaError::EnvTooLong => {
                write!(
                    f,
                    "environment has more than {MAX_ENV} entries and no terminator"
                )
            }
            MaltaError::BadNumber { name } => write!(f, "environment {name} is not a number"),
            MaltaError::NoMemorySize => f.write_str("no memsize in the environment and a3 is 0"),
            MaltaError::BadMemsize(m) => {
                write!(f, "memsize {m:#x} is not in 1..={LOW_RAM_MAX:#x}")
            }
            MaltaError::BadEmemsize { memsize, ememsize } => write!(
                f,
                "ememsize {ememsize:#x} is below memsize {memsize:#x} or above {RAM_MAX:#x}"
            ),
            MaltaError::KernelOutsideRam { start, end } => {
                write!(
                    f,
                    "kernel image [{start:#x}, {end:#x}) is not inside low RAM above {BIOS_WINDOW_END:#x}"
                )
            }
            MaltaError::CmdLine(e) => write!(f, "command line: {e}"),
            MaltaError::Map(e) => write!(f, "memory map: {e}"),
        }
    }
}

impl From<CmdLineError> for MaltaError {
    fn from(e: CmdLineError) -> Self {
        MaltaError::CmdLine(e)
    }
}

impl From<MapError> for MaltaError {
    fn from(e: MapError) -> Self {
        MaltaError::Map(e)
    }
}

/// What the Malta boot loader told us, before it becomes a [`BootInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaltaMemory {
    /// RAM reachable at physical 0 (`memsize`).
    pub low: u64,
    /// All RAM (`ememsize`, or `memsize` when the board has no more).
    pub total: u64,
}

/// Converts a boot-loader pointer (a sign-extended 32-bit KSEG0/KSEG1
/// address) to the physical address it names.
pub fn kseg_to_phys(what: &'static str, value: u64) -> Result<u64, MaltaError> {
    // KSEG0 is 0x8000_0000..0xa000_0000 and KSEG1 0xa000_0000..0xc000_0000
    // in the 32-bit view; in a 64-bit register they appear sign-extended.
    if (0xffff_ffff_8000_0000..0xffff_ffff_c000_0000).contains(&value) {
        Ok(value & 0x1fff_ffff)
    } else {
        Err(MaltaError::BadPointer { what, value })
    }
}

fn read_u32(mem: &impl BootMemory, what: &'static str, phys: u64) -> Result<u32, MaltaError> {
    let mut b = [0u8; 4];
    if !mem.read(phys, &mut b) {
        return Err(MaltaError::Unreadable { what, phys });
    }
    Ok(u32::from_be_bytes(b))
}

/// Reads the 32-bit table entry `index` of the table at `table` and turns a
/// non-NULL entry into a physical address.
fn table_entry(
    mem: &impl BootMemory,
    what: &'static str,
    table: u64,
    index: usize,
) -> Result<Option<u64>, MaltaError> {
    let slot = table + 4 * index as u64;
    let raw = read_u32(mem, what, slot)?;
    if raw == 0 {
        return Ok(None);
    }
    // Sign-extend exactly as the CPU does when it loads the pointer with `lw`.
    let value = raw as i32 as i64 as u64;
    kseg_to_phys(what, value).map(Some)
}

/// Calls `f` with the bytes of the NUL-terminated string at `phys`. Reads one
/// byte at a time so that nothing past the NUL (possibly past the end of RAM)
/// is touched.
fn with_string<R>(
    mem: &impl BootMemory,
    what: &'static str,
    phys: u64,
    f: impl FnOnce(&[u8]) -> Result<R, MaltaError>,
) -> Result<R, MaltaError> {
    let mut buf = [0u8; MAX_STRING];
    for i in 0..MAX_STRING {
        let mut byte = [0u8; 1];
        if !mem.read(phys + i as u64, &mut byte) {
            return Err(MaltaError::Unreadable {
                what,
                phys: phys + i as u64,
            });
        }
        if byte[0] == 0 {
            return f(&buf[..i]);
        }
        buf[i] = byte[0];
    }
    Err(MaltaError::Unterminated { what, phys })
}

/// Parses a YAMON number: decimal, or hexadecimal with a `0x` prefix.
pub fn parse_number(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Appends the whitespace-separated words of one argument. QEMU passes the
/// whole `-append` string as one argv entry; YAMON and UHI pass words.
/// Splitting keeps all three equivalent.
fn push_words(cmdline: &mut CmdLine, arg: &[u8]) -> Result<(), MaltaError> {
    for word in arg
        .split(|c| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        cmdline.push_word(word)?;
    }
    Ok(())
}

/// The command line from the semihosting host's arguments 1..count.
fn host_cmdline(host: &dyn HostArgs, count: usize) -> Result<CmdLine, MaltaError> {
    if count > MAX_HOST_ARGS {
        return Err(MaltaError::TooManyHostArgs(count));
    }
    let mut cmdline = CmdLine::empty();
    let mut buf = [0u8; MAX_STRING];
    for index in 1..count {
        let len = host
            .get(index, &mut buf)
            .filter(|&len| len < buf.len())
            .ok_or(MaltaError::HostArg { index })?;
        push_words(&mut cmdline, &buf[..len])?;
    }
    Ok(cmdline)
}

/// Builds the command line from argv\[1..argc\] (argv\[0\] is the kernel's
/// file name): from `host` when a0 = -1 and a host answers, else from the
/// boot loader's table.
pub fn parse_cmdline(
    mem: &impl BootMemory,
    host: Option<&dyn HostArgs>,
    regs: &EntryRegs,
) -> Result<CmdLine, MaltaError> {
    let argc = match regs.a0 as i64 {
        -1 => match host.and_then(|h| Some((h, h.count()?))) {
            Some((host, count)) => return host_cmdline(host, count),
            // No host: the Malta pseudo-bootloader's table always holds
            // exactly argv[0] and argv[1].
            None => 2,
        },
        n if (0..=MAX_ARGS as i64).contains(&n) => n as usize,
        n => return Err(MaltaError::BadArgc(n)),
    };
    let mut cmdline = CmdLine::empty();
    if argc <= 1 {
        return Ok(cmdline);
    }
    let argv = kseg_to_phys("argv table", regs.a1)?;
    for index in 1..argc {
        let Some(phys) = table_entry(mem, "argv table", argv, index)? else {
            return Err(MaltaError::NullArg { index });
        };
        with_string(mem, "argv string", phys, |s| push_words(&mut cmdline, s))?;
    }
    Ok(cmdline)
}

/// Reads `memsize`/`ememsize` from the environment (falling back to a3 for
/// the low size) and checks them against the board's limits.
pub fn parse_memory(mem: &impl BootMemory, regs: &EntryRegs) -> Result<MaltaMemory, MaltaError> {
    let mut memsize: Option<u64> = None;
    let mut ememsize: Option<u64> = None;
    if regs.a2 != 0 {
        let envp = kseg_to_phys("environment table", regs.a2)?;
        let mut index = 0;
        loop {
            if index >= 2 * MAX_ENV {
                return Err(MaltaError::EnvTooLong);
            }
            let Some(name) = table_entry(mem, "environment table", envp, index)? else {
                break;
            };
            let Some(value) = table_entry(mem, "environment table", envp, index + 1)? else {
                return Err(MaltaError::MissingValue);
            };
            index += 2;
            let key = with_string(mem, "environment name", name, |s| {
                Ok(match s {
                    b"memsize" => Some("memsize"),
                    b"ememsize" => Some("ememsize"),
                    _ => None,
                })
            })?;
            let Some(key) = key else { continue };
            let n = with_string(mem, "environment value", value, |s| {
                parse_number(s).ok_or(MaltaError::BadNumber { name: key })
            })?;
            if key == "memsize" {
                memsize = Some(n);
            } else {
                ememsize = Some(n);
            }
        }
    }
    let low = match (memsize, regs.a3) {
        (Some(m), _) => m,
        (None, a3) if a3 != 0 => a3 & 0xffff_ffff,
        (None, _) => return Err(MaltaError::NoMemorySize),
    };
    if low == 0 || low > LOW_RAM_MAX {
        return Err(MaltaError::BadMemsize(low));
    }
    let total = ememsize.unwrap_or(low);
    if total < low || total > RAM_MAX {
        return Err(MaltaError::BadEmemsize {
            memsize: low,
            ememsize: total,
        });
    }
    Ok(MaltaMemory { low, total })
}

/// Builds the physical memory map for `ram` with the kernel image at
/// physical `[kernel_start, kernel_end)`.
pub fn memory_map(
    ram: MaltaMemory,
    kernel_start: u64,
    kernel_end: u64,
) -> Result<MemoryMap, MaltaError> {
    if kernel_start < BIOS_WINDOW_END || kernel_start >= kernel_end || kernel_end > ram.low {
        return Err(MaltaError::KernelOutsideRam {
            start: kernel_start,
            end: kernel_end,
        });
    }
    let mut map = MemoryMap::new();
    map.add(0, ram.low, RegionKind::Usable)?;
    if ram.total > LOW_RAM_MAX {
        map.add(
            HIGH_RAM_BASE + LOW_RAM_MAX,
            HIGH_RAM_BASE + ram.total,
            RegionKind::Usable,
        )?;
    }
    // The kernel check above guarantees `ram.low > BIOS_WINDOW_END`, so these
    // reservations lie inside RAM and never invent memory.
    map.add(0, VECTOR_AREA_END, RegionKind::Reserved)?;
    map.add(VECTOR_AREA_END, FIRMWARE_AREA_END, RegionKind::BootData)?;
    map.add(FIRMWARE_AREA_END, BIOS_WINDOW_END, RegionKind::Reserved)?;
    map.add(kernel_start, kernel_end, RegionKind::Kernel)?;
    Ok(map)
}

/// Parses everything the Malta boot loader passed into a [`BootInfo`].
/// `host` answers UHI argument queries under semihosting (a0 = -1);
/// `kernel` is the physical extent of the loaded image; `cpu_count` is what
/// the arch layer counted (the protocol itself does not say).
pub fn parse(
    mem: &impl BootMemory,
    host: Option<&dyn HostArgs>,
    regs: &EntryRegs,
    kernel: (u64, u64),
    cpu_count: u32,
) -> Result<BootInfo, MaltaError> {
    let cmdline = parse_cmdline(mem, host, regs)?;
    let ram = parse_memory(mem, regs)?;
    let memory = memory_map(ram, kernel.0, kernel.1)?;
    Ok(BootInfo {
        memory,
        cmdline,
        platform: "malta",
        cpu_count,
        acpi_rsdp: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegionKind::*;

    /// A fake low RAM: `size` bytes at physical 0, filled with a 0xa5 pattern
    /// so that a missing NUL is noticed.
    struct FakeRam {
        bytes: Vec<u8>,
    }

    impl FakeRam {
        fn new(size: usize) -> Self {
            FakeRam {
                bytes: vec![0xa5; size],
            }
        }
        fn put(&mut self, phys: u64, data: &[u8]) {
            let p = phys as usize;
            self.bytes[p..p + data.len()].copy_from_slice(data);
        }
        fn put_ptr(&mut self, phys: u64, target: u32) {
            self.put(phys, &target.to_be_bytes());
        }
    }

    impl BootMemory for FakeRam {
        fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
            let Ok(start) = usize::try_from(phys) else {
                return false;
            };
            let Some(end) = start.checked_add(buf.len()) else {
                return false;
            };
            match self.bytes.get(start..end) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    const KSEG0: u32 = 0x8000_0000;
    const TABLE: u64 = 0x2000;
    const ENTRY: u64 = 256;

    /// Lays out a table the way QEMU's `prom_set` does: 16 pointer slots at
    /// 0x2000, then 16 string slots of 256 bytes. `None` is a NULL slot.
    fn qemu_table(entries: &[Option<&[u8]>]) -> FakeRam {
        let mut ram = FakeRam::new(0x10000);
        for (i, e) in entries.iter().enumerate() {
            let slot = TABLE + 4 * i as u64;
            match e {
                Some(s) => {
                    let at = TABLE + 4 * 16 + ENTRY * i as u64;
                    ram.put(at, s);
                    ram.put(at + s.len() as u64, &[0]);
                    ram.put_ptr(slot, KSEG0 | at as u32);
                }
                None => ram.put_ptr(slot, 0),
            }
        }
        ram
    }

    fn sx(v: u32) -> u64 {
        v as i32 as i64 as u64
    }

    fn regs(a0: i64, a3: u64) -> EntryRegs {
        EntryRegs {
            a0: a0 as u64,
            a1: sx(KSEG0 | TABLE as u32),
            a2: sx(KSEG0 | (TABLE + 8) as u32),
            a3,
        }
    }

    fn standard(cmdline: &[u8], memsize: &[u8], ememsize: &[u8]) -> FakeRam {
        qemu_table(&[
            Some(b"/path/samara.elf"),
            Some(cmdline),
            Some(b"memsize"),
            Some(memsize),
            Some(b"ememsize"),
            Some(ememsize),
            Some(b"modetty0"),
            Some(b"38400n8r"),
            None,
        ])
    }

    fn spans(m: &MemoryMap) -> Vec<(u64, u64, RegionKind)> {
        m.regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect()
    }

    #[test]
    fn qemu_layout_under_uhi_with_128_mib() {
        let ram = standard(b"test=boot  workload=x", b"134217728", b"134217728");
        let info = parse(&ram, None, &regs(-1, 128 << 20), (0x10_0000, 0x18_0000), 1).unwrap();
        assert_eq!(info.cmdline.as_str(), "test=boot workload=x");
        assert_eq!(info.platform, "malta");
        assert_eq!(
            spans(&info.memory),
            vec![
                (0, 0x1000, Reserved),
                (0x1000, 0xf_0000, BootData),
                (0xf_0000, 0x10_0000, Reserved),
                (0x10_0000, 0x18_0000, Kernel),
                (0x18_0000, 128 << 20, Usable),
            ]
        );
    }

    #[test]
    fn one_gib_uses_the_high_window_without_aliases() {
        let ram = standard(b"", b"268435456", b"0x40000000");
        let info = parse(&ram, None, &regs(2, 256 << 20), (0x10_0000, 0x20_0000), 4).unwrap();
        assert_eq!(info.cmdline.as_str(), "");
        assert_eq!(info.cpu_count, 4);
        let regions = spans(&info.memory);
        assert_eq!(regions.last(), Some(&(0x9000_0000, 0xc000_0000, Usable)));
        // Every byte of RAM exactly once: 256 MiB low + 768 MiB high.
        let ram_bytes: u64 = info.memory.regions().iter().map(|r| r.len()).sum();
        assert_eq!(ram_bytes, 1 << 30);
        assert_eq!(info.memory.total(Kernel), 0x10_0000);
    }

    #[test]
    fn argc_counts_and_words() {
        // YAMON style: words in separate argv entries, real argc.
        let ram = qemu_table(&[Some(b"k"), Some(b"a=1"), Some(b" b "), Some(b"c"), None]);
        let mut r = regs(3, 64 << 20);
        r.a2 = 0;
        assert_eq!(parse_cmdline(&ram, None, &r).unwrap().as_str(), "a=1 b");
        r.a0 = 0;
        assert_eq!(parse_cmdline(&ram, None, &r).unwrap().as_str(), "");
        r.a0 = 5;
        assert_eq!(
            parse_cmdline(&ram, None, &r).err(),
            Some(MaltaError::NullArg { index: 4 })
        );
        r.a0 = -2i64 as u64;
        assert_eq!(
            parse_cmdline(&ram, None, &r).err(),
            Some(MaltaError::BadArgc(-2))
        );
        r.a0 = 1000;
        assert_eq!(
            parse_cmdline(&ram, None, &r).err(),
            Some(MaltaError::BadArgc(1000))
        );
        // Without an environment, a3 gives the low RAM size.
        assert_eq!(
            parse_memory(&ram, &r).unwrap(),
            MaltaMemory {
                low: 64 << 20,
                total: 64 << 20
            }
        );
        r.a3 = 0;
        assert_eq!(parse_memory(&ram, &r), Err(MaltaError::NoMemorySize));
    }

    #[test]
    fn bad_pointers_are_errors() {
        let ram = standard(b"x", b"1", b"1");
        let mut r = regs(2, 0);
        r.a1 = 0x2000; // a physical address, not KSEG0
        assert_eq!(
            parse_cmdline(&ram, None, &r).err(),
            Some(MaltaError::BadPointer {
                what: "argv table",
                value: 0x2000
            })
        );
        r.a1 = 0x0000_0000_8000_2000; // not sign-extended
        assert!(matches!(
            parse_cmdline(&ram, None, &r),
            Err(MaltaError::BadPointer { .. })
        ));
        r.a1 = sx(0xc000_2000); // KSEG2 is mapped: not a boot pointer
        assert!(matches!(
            parse_cmdline(&ram, None, &r),
            Err(MaltaError::BadPointer { .. })
        ));
        // argv[1] points beyond the fake RAM.
        let mut ram = standard(b"x", b"1", b"1");
        ram.put_ptr(TABLE + 4, KSEG0 | 0x0100_0000);
        assert_eq!(
            parse_cmdline(&ram, None, &regs(2, 0)).err(),
            Some(MaltaError::Unreadable {
                what: "argv string",
                phys: 0x0100_0000
            })
        );
        // argv[1] points to a user-segment address.
        ram.put_ptr(TABLE + 4, 0x0000_3000);
        assert!(matches!(
            parse_cmdline(&ram, None, &regs(2, 0)),
            Err(MaltaError::BadPointer {
                what: "argv table",
                ..
            })
        ));
        // The table itself is past the end of RAM.
        let mut r = regs(2, 0);
        r.a1 = sx(KSEG0 | 0x00ff_fff0);
        assert!(matches!(
            parse_cmdline(&ram, None, &r),
            Err(MaltaError::Unreadable { .. })
        ));
    }

    #[test]
    fn unterminated_and_non_utf8_strings() {
        let mut ram = FakeRam::new(0x10000);
        ram.put_ptr(TABLE, KSEG0 | 0x3000);
        ram.put_ptr(TABLE + 4, KSEG0 | 0x3000);
        // 0x3000.. is the 0xa5 pattern all the way to the end of RAM.
        let r = regs(2, 0);
        assert!(matches!(
            parse_cmdline(&ram, None, &r),
            Err(MaltaError::Unterminated { .. })
        ));
        ram.put(0x3000, b"ok\xff\0");
        assert_eq!(
            parse_cmdline(&ram, None, &r).err(),
            Some(MaltaError::CmdLine(CmdLineError::NotUtf8(2)))
        );
        // A string that runs off the end of RAM is unreadable, not a panic.
        let mut small = FakeRam::new(0x3004);
        small.put_ptr(TABLE + 4, KSEG0 | 0x3000);
        assert_eq!(
            parse_cmdline(&small, None, &r).err(),
            Some(MaltaError::Unreadable {
                what: "argv string",
                phys: 0x3004
            })
        );
    }

    #[test]
    fn environment_errors() {
        // A name without a value.
        let ram = qemu_table(&[Some(b"k"), Some(b""), Some(b"memsize"), None]);
        assert_eq!(
            parse_memory(&ram, &regs(2, 0)),
            Err(MaltaError::MissingValue)
        );
        // Junk numbers.
        for bad in [&b""[..], b"0x", b"12k", b"-1", b"99999999999999999999999"] {
            let ram = standard(b"", bad, b"1");
            assert_eq!(
                parse_memory(&ram, &regs(2, 0)),
                Err(MaltaError::BadNumber { name: "memsize" }),
                "{bad:?}"
            );
        }
        // Out-of-range sizes.
        let ram = standard(b"", b"0", b"0");
        assert_eq!(
            parse_memory(&ram, &regs(2, 0)),
            Err(MaltaError::BadMemsize(0))
        );
        let ram = standard(b"", b"0x10000001", b"0x10000001");
        assert_eq!(
            parse_memory(&ram, &regs(2, 0)),
            Err(MaltaError::BadMemsize(0x1000_0001))
        );
        let ram = standard(b"", b"0x1000000", b"0x800000");
        assert!(matches!(
            parse_memory(&ram, &regs(2, 0)),
            Err(MaltaError::BadEmemsize { .. })
        ));
        let ram = standard(b"", b"0x10000000", b"0x80001000");
        assert!(matches!(
            parse_memory(&ram, &regs(2, 0)),
            Err(MaltaError::BadEmemsize { .. })
        ));
        // A table with no terminator: every slot is a pointer to "x".
        let mut ram = FakeRam::new(0x10000);
        ram.put(0x8000, b"x\0");
        for i in 0..(2 * MAX_ENV + 4) as u64 {
            ram.put_ptr(TABLE + 8 + 4 * i, KSEG0 | 0x8000);
        }
        assert_eq!(parse_memory(&ram, &regs(2, 0)), Err(MaltaError::EnvTooLong));
    }

    #[test]
    fn unknown_variables_are_skipped_and_later_ones_win() {
        let ram = qemu_table(&[
            Some(b"k"),
            Some(b""),
            Some(b"rngseed"),
            Some(b"not-a-number"),
            Some(b"memsize"),
            Some(b"0x100000"),
            Some(b"memsize"),
            Some(b"0x2000000"),
            None,
        ]);
        assert_eq!(
            parse_memory(&ram, &regs(2, 0)).unwrap(),
            MaltaMemory {
                low: 0x200_0000,
                total: 0x200_0000
            }
        );
    }

    #[test]
    fn kernel_must_be_in_low_ram() {
        let ram = MaltaMemory {
            low: 16 << 20,
            total: 16 << 20,
        };
        assert!(memory_map(ram, 0x10_0000, 0x100_0001).is_err());
        assert!(memory_map(ram, 0x20_0000, 0x20_0000).is_err());
        assert!(
            memory_map(ram, 0x8_0000, 0x20_0000).is_err(),
            "kernel over firmware data"
        );
        let m = memory_map(ram, 0x10_0000, 0x100_0000).unwrap();
        assert_eq!(m.total(Usable), 0);
        assert_eq!(m.total(Kernel), 0xf0_0000);
        // Reservations never invent memory: the map covers exactly RAM.
        let m = memory_map(
            MaltaMemory {
                low: 0x20_0000,
                total: 0x20_0000,
            },
            0x10_0000,
            0x18_0000,
        )
        .unwrap();
        let ram_bytes: u64 = m.regions().iter().map(|r| r.len()).sum();
        assert_eq!(ram_bytes, 0x20_0000);
    }

    /// A semihosting host holding `args` (argv[0] first), or one that does
    /// not answer (`None`).
    struct FakeHost(Option<Vec<Vec<u8>>>);

    impl HostArgs for FakeHost {
        fn count(&self) -> Option<usize> {
            self.0.as_ref().map(Vec::len)
        }
        fn get(&self, n: usize, buf: &mut [u8]) -> Option<usize> {
            let a = self.0.as_ref()?.get(n)?;
            if a.len() + 1 > buf.len() {
                return None;
            }
            buf[..a.len()].copy_from_slice(a);
            buf[a.len()] = 0;
            Some(a.len())
        }
    }

    fn host(args: &[&[u8]]) -> FakeHost {
        FakeHost(Some(args.iter().map(|a| a.to_vec()).collect()))
    }

    #[test]
    fn uhi_host_arguments_beat_the_truncated_table() {
        let ram = standard(b"test=boot", b"0x1000000", b"0x1000000");
        // A command line longer than QEMU's 255-byte table slot.
        let long = format!("test=boot {}", "k=v ".repeat(100));
        let words: Vec<&[u8]> = long.split(' ').map(str::as_bytes).collect();
        let mut args: Vec<&[u8]> = vec![b"/path/samara.elf"];
        args.extend(words);
        let h = host(&args);
        let info = parse(&ram, Some(&h), &regs(-1, 0), (0x10_0000, 0x20_0000), 1).unwrap();
        assert_eq!(info.cmdline.as_str(), long.trim_end());
        assert!(info.cmdline.as_str().len() > 255);
        // a0 = argc (not UHI): the host is not consulted.
        let c = parse_cmdline(&ram, Some(&h), &regs(2, 0)).unwrap();
        assert_eq!(c.as_str(), "test=boot");
        // A host that does not answer: back to the table.
        let c = parse_cmdline(&ram, Some(&FakeHost(None)), &regs(-1, 0)).unwrap();
        assert_eq!(c.as_str(), "test=boot");
        // Only argv[0]: empty command line.
        let c = parse_cmdline(&ram, Some(&host(&[b"k"])), &regs(-1, 0)).unwrap();
        assert_eq!(c.as_str(), "");
    }

    #[test]
    fn uhi_host_errors() {
        let ram = standard(b"", b"1", b"1");
        // An argument that does not fit the buffer (with its NUL).
        let big = vec![b'a'; MAX_STRING];
        let h = host(&[b"k", &big]);
        assert_eq!(
            parse_cmdline(&ram, Some(&h), &regs(-1, 0)).err(),
            Some(MaltaError::HostArg { index: 1 })
        );
        // A host whose count and arguments disagree.
        struct Liar;
        impl HostArgs for Liar {
            fn count(&self) -> Option<usize> {
                Some(3)
            }
            fn get(&self, n: usize, buf: &mut [u8]) -> Option<usize> {
                (n == 1).then(|| {
                    buf[..2].copy_from_slice(b"a\0");
                    1
                })
            }
        }
        assert_eq!(
            parse_cmdline(&ram, Some(&Liar), &regs(-1, 0)).err(),
            Some(MaltaError::HostArg { index: 2 })
        );
        struct Many;
        impl HostArgs for Many {
            fn count(&self) -> Option<usize> {
                Some(usize::MAX)
            }
            fn get(&self, _: usize, _: &mut [u8]) -> Option<usize> {
                Some(0)
            }
        }
        assert_eq!(
            parse_cmdline(&ram, Some(&Many), &regs(-1, 0)).err(),
            Some(MaltaError::TooManyHostArgs(usize::MAX))
        );
        // Words beyond MAX_CMDLINE in total.
        let word = vec![b'w'; 1000];
        let h = host(&[b"k", &word, &word, &word]);
        assert!(matches!(
            parse_cmdline(&ram, Some(&h), &regs(-1, 0)).err(),
            Some(MaltaError::CmdLine(CmdLineError::TooLong(_)))
        ));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"268435456"), Some(256 << 20));
        assert_eq!(parse_number(b"0X1f"), Some(31));
        assert_eq!(parse_number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number(b"18446744073709551616"), None);
        assert_eq!(parse_number(b"1 "), None);
    }
}
