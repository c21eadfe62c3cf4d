//! The PVH boot protocol (x86_64): `struct hvm_start_info` and its E820-style
//! memory map, as QEMU, Xen, Firecracker and cloud-hypervisor provide them.
//!
//! Layouts (Xen's public `arch-x86/hvm/start_info.h`, all little endian):
//!
//! ```text
//! hvm_start_info                         hvm_memmap_table_entry
//!   0 u32 magic  = 0x336ec578             0 u64 addr
//!   4 u32 version (1 adds the memmap)     8 u64 size
//!   8 u32 flags                          16 u32 type (E820: 1 RAM, 2 reserved,
//!  12 u32 nr_modules                              3 ACPI, 4 NVS, 5 unusable, ...)
//!  16 u64 modlist_paddr                  20 u32 reserved
//!  24 u64 cmdline_paddr (NUL-terminated)  = 24 bytes
//!  32 u64 rsdp_paddr
//!  40 u64 memmap_paddr      (version >= 1)
//!  48 u32 memmap_entries    (version >= 1)
//!  52 u32 reserved          = 56 bytes
//! ```
//!
//! Everything is read through [`PhysMem`], which hands out byte slices of
//! physical memory and refuses ranges it cannot show, so a corrupt pointer
//! becomes an error instead of a wild read.

use core::fmt;
use core::ops::Range;

use crate::cmdline::{CmdLine, CmdLineError, MAX_CMDLINE};
use crate::memmap::{MapError, MemoryMap, RegionKind};
use crate::BootInfo;

/// `hvm_start_info.magic` ("xEn3" with the 0x80 bit of 'E' set).
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
const START_INFO_V0_SIZE: usize = 40;
const START_INFO_V1_SIZE: usize = 56;
const MEMMAP_ENTRY_SIZE: usize = 24;
/// More entries than any E820 table we accept (Linux's E820_MAX_ENTRIES_ZEROPAGE is 128).
pub const MAX_MEMMAP_ENTRIES: u32 = 128;

const E820_RAM: u32 = 1;
const E820_ACPI: u32 = 3;

/// Below this, PC memory holds the real-mode IVT, BDA, EBDA, VGA and BIOS.
pub const LOW_MEMORY_END: u64 = 0x10_0000;
const PAGE: u64 = 4096;

/// Read access to physical memory for the parser.
pub trait PhysMem {
    /// The `len` bytes at physical address `pa`, or `None` if any of them
    /// cannot be read (outside the mapped window, address overflow).
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]>;
}

/// Why the PVH start info was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvhError {
    /// A structure lies (partly) outside readable memory.
    Unreadable {
        what: &'static str,
        addr: u64,
    },
    /// `magic` is not [`START_INFO_MAGIC`]: not a PVH boot, or a bad pointer.
    BadMagic(u32),
    /// Version 0 has no memory map, and Samara has no other way to find RAM.
    NoMemoryMap {
        version: u32,
    },
    /// More memory-map entries than [`MAX_MEMMAP_ENTRIES`].
    TooManyEntries(u32),
    /// The memory map lists no usable RAM.
    NoUsableMemory,
    /// The command line has no NUL within [`MAX_CMDLINE`] bytes.
    CmdLineUnterminated,
    CmdLine(CmdLineError),
    Map(MapError),
}

impl fmt::Display for PvhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PvhError::Unreadable { what, addr } => write!(f, "{what} at {addr:#x} is not readable"),
            PvhError::BadMagic(m) => {
                write!(
                    f,
                    "start info magic is {m:#x}, expected {START_INFO_MAGIC:#x}"
                )
            }
            PvhError::NoMemoryMap { version } => {
                write!(
                    f,
                    "start info version {version} has no memory map (need version >= 1)"
                )
            }
            PvhError::TooManyEntries(n) => {
                write!(f, "{n} memory map entries, more than {MAX_MEMMAP_ENTRIES}")
            }
            PvhError::NoUsableMemory => f.write_str("the memory map lists no usable RAM"),
            PvhError::CmdLineUnterminated => {
                write!(
                    f,
                    "command line has no terminating NUL within {MAX_CMDLINE} bytes"
                )
            }
            PvhError::CmdLine(e) => write!(f, "{e}"),
            PvhError::Map(e) => write!(f, "memory map: {e}"),
        }
    }
}

impl From<MapError> for PvhError {
    fn from(e: MapError) -> Self {
        PvhError::Map(e)
    }
}

/// The little-endian `u32` at byte `off` of `b` (PVH and ACPI tables).
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The little-endian `u64` at byte `off` of `b`.
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

fn read<'m>(
    mem: &'m impl PhysMem,
    what: &'static str,
    pa: u64,
    len: usize,
) -> Result<&'m [u8], PvhError> {
    mem.read(pa, len)
        .ok_or(PvhError::Unreadable { what, addr: pa })
}

/// Reserves `[start, start + len)` rounded out to whole pages.
fn reserve(map: &mut MemoryMap, start: u64, len: u64, kind: RegionKind) -> Result<(), PvhError> {
    let lo = start & !(PAGE - 1);
    let hi = start.saturating_add(len).saturating_add(PAGE - 1) & !(PAGE - 1);
    if hi > lo {
        map.add(lo, hi, kind)?;
    }
    Ok(())
}

/// Parses the start info at `start_info_pa` into a [`BootInfo`].
///
/// `kernel` is the physical extent of the kernel image (marked
/// [`RegionKind::Kernel`]). Low memory below 1 MiB is marked
/// [`RegionKind::Reserved`]; the start info, memory map and command line are
/// marked [`RegionKind::BootData`] (everything needed from them is copied
/// into the result, so they may be reclaimed later). Usable RAM is trimmed
/// inward to whole 4 KiB pages.
pub fn parse(
    mem: &impl PhysMem,
    start_info_pa: u64,
    kernel: Range<u64>,
) -> Result<BootInfo, PvhError> {
    let head = read(mem, "start info", start_info_pa, START_INFO_V0_SIZE)?;
    let magic = u32_at(head, 0);
    if magic != START_INFO_MAGIC {
        return Err(PvhError::BadMagic(magic));
    }
    let version = u32_at(head, 4);
    if version < 1 {
        return Err(PvhError::NoMemoryMap { version });
    }
    let si = read(mem, "start info", start_info_pa, START_INFO_V1_SIZE)?;
    let cmdline_pa = u64_at(si, 24);
    let memmap_pa = u64_at(si, 40);
    let entries = u32_at(si, 48);
    if entries > MAX_MEMMAP_ENTRIES {
        return Err(PvhError::TooManyEntries(entries));
    }
    let table_len = entries as usize * MEMMAP_ENTRY_SIZE;
    let table = read(mem, "memory map", memmap_pa, table_len)?;

    let mut memory = MemoryMap::new();
    for e in table.chunks_exact(MEMMAP_ENTRY_SIZE) {
        let (addr, size, ty) = (u64_at(e, 0), u64_at(e, 8), u32_at(e, 16));
        let end = addr.saturating_add(size);
        match ty {
            E820_RAM => {
                let lo = addr.saturating_add(PAGE - 1) & !(PAGE - 1);
                let hi = end & !(PAGE - 1);
                if hi > lo {
                    memory.add(lo, hi, RegionKind::Usable)?;
                }
            }
            // ACPI tables: readable data the kernel may parse, then reclaim.
            E820_ACPI => reserve(&mut memory, addr, size, RegionKind::BootData)?,
            _ => reserve(&mut memory, addr, size, RegionKind::Reserved)?,
        }
    }
    if memory.total(RegionKind::Usable) == 0 {
        return Err(PvhError::NoUsableMemory);
    }

    let mut cmdline = CmdLine::empty();
    let mut cmdline_len = 0;
    if cmdline_pa != 0 {
        // Byte by byte, so a command line ending just before the end of
        // readable memory is still found.
        let mut len = None;
        for i in 0..=MAX_CMDLINE {
            let b = read(mem, "command line", cmdline_pa + i as u64, 1)?;
            if b[0] == 0 {
                len = Some(i);
                break;
            }
        }
        let len = len.ok_or(PvhError::CmdLineUnterminated)?;
        let bytes = read(mem, "command line", cmdline_pa, len)?;
        cmdline = CmdLine::from_bytes(bytes).map_err(PvhError::CmdLine)?;
        cmdline_len = len as u64 + 1;
    }

    reserve(&mut memory, 0, LOW_MEMORY_END, RegionKind::Reserved)?;
    reserve(
        &mut memory,
        kernel.start,
        kernel.end.saturating_sub(kernel.start),
        RegionKind::Kernel,
    )?;
    reserve(
        &mut memory,
        start_info_pa,
        START_INFO_V1_SIZE as u64,
        RegionKind::BootData,
    )?;
    reserve(
        &mut memory,
        memmap_pa,
        table_len as u64,
        RegionKind::BootData,
    )?;
    if cmdline_pa != 0 {
        reserve(&mut memory, cmdline_pa, cmdline_len, RegionKind::BootData)?;
    }

    Ok(BootInfo {
        memory,
        cmdline,
        platform: "pvh",
        cpu_count: 1,
        acpi_rsdp: u64_at(si, 32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegionKind::*;

    /// Physical memory `[base, base + bytes.len())`.
    struct FakeMem {
        base: u64,
        bytes: Vec<u8>,
    }

    impl PhysMem for FakeMem {
        fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
            let off = usize::try_from(pa.checked_sub(self.base)?).ok()?;
            self.bytes.get(off..off.checked_add(len)?)
        }
    }

    const BASE: u64 = 0x6000;
    const SI: u64 = 0x6000;
    const MAP: u64 = 0x6100;
    const CMD: u64 = 0x6400;

    fn put(m: &mut FakeMem, pa: u64, data: &[u8]) {
        let off = (pa - m.base) as usize;
        m.bytes[off..off + data.len()].copy_from_slice(data);
    }

    fn start_info(version: u32, cmdline: u64, entries: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&START_INFO_MAGIC.to_le_bytes());
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes()); // flags
        v.extend_from_slice(&0u32.to_le_bytes()); // nr_modules
        v.extend_from_slice(&0u64.to_le_bytes()); // modlist
        v.extend_from_slice(&cmdline.to_le_bytes());
        v.extend_from_slice(&0xf_5000u64.to_le_bytes()); // rsdp
        v.extend_from_slice(&MAP.to_le_bytes());
        v.extend_from_slice(&entries.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(v.len(), START_INFO_V1_SIZE);
        v
    }

    fn entry(addr: u64, size: u64, ty: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    /// What QEMU's q35 with -m 128M hands a PVH kernel, plus a command line.
    fn qemu_like(cmdline: &[u8]) -> FakeMem {
        let mut m = FakeMem {
            base: BASE,
            bytes: vec![0; 0x1000],
        };
        let table: Vec<u8> = [
            entry(0, 0x9fc00, E820_RAM),
            entry(0x9fc00, 0x400, 2),
            entry(0xf0000, 0x10000, 2),
            entry(0x10_0000, 0x7ee_0000, E820_RAM),
            entry(0x7fe_0000, 0x2_0000, 2),
            entry(0xb000_0000, 0x1000_0000, 2),
            entry(0xfed1_c000, 0x4000, 2),
            entry(0xfeff_c000, 0x4000, 2),
            entry(0xfffc_0000, 0x4_0000, 2),
        ]
        .concat();
        put(&mut m, SI, &start_info(1, CMD, 9));
        put(&mut m, MAP, &table);
        put(&mut m, CMD, cmdline);
        m
    }

    fn spans(info: &BootInfo) -> Vec<(u64, u64, RegionKind)> {
        info.memory
            .regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect()
    }

    #[test]
    fn parses_qemu_start_info() {
        let m = qemu_like(b"test=boot per_vma_lock=off\0garbage");
        let info = parse(&m, SI, 0x10_0000..0x12_3456).unwrap();
        assert_eq!(info.cmdline.as_str(), "test=boot per_vma_lock=off");
        assert_eq!(info.platform, "pvh");
        assert_eq!(info.acpi_rsdp, 0xf_5000);
        assert_eq!(
            &spans(&info)[..4],
            &[
                (0, 0x10_0000, Reserved),
                (0x10_0000, 0x12_4000, Kernel),
                (0x12_4000, 0x7fe_0000, Usable),
                (0x7fe_0000, 0x800_0000, Reserved),
            ]
        );
        // The boot data below 1 MiB is inside the low reservation already.
        assert_eq!(info.memory.total(Usable), 0x7fe_0000 - 0x12_4000);
        assert_eq!(info.memory.total(Kernel), 0x2_4000);
    }

    #[test]
    fn boot_data_above_1m_is_kept_out_of_usable_ram() {
        let mut m = FakeMem {
            base: 0x20_0000,
            bytes: vec![0; 0x1000],
        };
        let si = 0x20_0000;
        let mut s = start_info(1, 0, 1);
        s[40..48].copy_from_slice(&0x20_0800u64.to_le_bytes());
        put(&mut m, si, &s);
        put(&mut m, 0x20_0800, &entry(0x10_0000, 0x100_0000, E820_RAM));
        let info = parse(&m, si, 0x10_0000..0x18_0000).unwrap();
        assert_eq!(info.cmdline.as_str(), "");
        assert_eq!(
            spans(&info),
            vec![
                (0, 0x10_0000, Reserved),
                (0x10_0000, 0x18_0000, Kernel),
                (0x18_0000, 0x20_0000, Usable),
                (0x20_0000, 0x20_1000, BootData),
                (0x20_1000, 0x110_0000, Usable),
            ]
        );
    }

    #[test]
    fn trims_unaligned_ram_and_rounds_reservations_out() {
        let mut m = qemu_like(b"\0");
        put(
            &mut m,
            MAP,
            &[
                entry(0x20_0123, 0x10_0000, E820_RAM),
                entry(0x28_0010, 0x10, 2),
            ]
            .concat(),
        );
        put(&mut m, SI, &start_info(1, CMD, 2));
        let info = parse(&m, SI, 0x10_0000..0x10_1000).unwrap();
        assert_eq!(
            spans(&info)[2..],
            [
                (0x20_1000, 0x28_0000, Usable),
                (0x28_0000, 0x28_1000, Reserved),
                (0x28_1000, 0x30_0000, Usable)
            ]
        );
    }

    #[test]
    fn rejects_bad_magic_version_and_sizes() {
        let mut m = qemu_like(b"\0");
        put(&mut m, SI, &0x1234u32.to_le_bytes());
        assert_eq!(parse(&m, SI, 0..0).unwrap_err(), PvhError::BadMagic(0x1234));

        let mut m = qemu_like(b"\0");
        put(&mut m, SI, &start_info(0, CMD, 9));
        assert_eq!(
            parse(&m, SI, 0..0).unwrap_err(),
            PvhError::NoMemoryMap { version: 0 }
        );

        let mut m = qemu_like(b"\0");
        put(&mut m, SI, &start_info(1, CMD, 129));
        assert_eq!(
            parse(&m, SI, 0..0).unwrap_err(),
            PvhError::TooManyEntries(129)
        );

        // 100 entries run past the end of readable memory.
        let mut m = qemu_like(b"\0");
        m.bytes.truncate(0x800);
        put(&mut m, SI, &start_info(1, CMD, 100));
        assert_eq!(
            parse(&m, SI, 0..0).unwrap_err(),
            PvhError::Unreadable {
                what: "memory map",
                addr: MAP
            }
        );

        let m = qemu_like(b"\0");
        assert_eq!(
            parse(&m, 0x1_0000, 0..0).unwrap_err(),
            PvhError::Unreadable {
                what: "start info",
                addr: 0x1_0000
            }
        );

        let mut m = qemu_like(b"\0");
        put(&mut m, SI, &start_info(1, CMD, 1));
        put(&mut m, MAP, &entry(0, 0x1000_0000, 2));
        assert_eq!(parse(&m, SI, 0..0).unwrap_err(), PvhError::NoUsableMemory);
    }

    #[test]
    fn rejects_bad_command_lines() {
        let m = qemu_like(b"a=\xff\0");
        assert_eq!(
            parse(&m, SI, 0..0).unwrap_err(),
            PvhError::CmdLine(CmdLineError::NotUtf8(2))
        );
        // No NUL before the end of readable memory.
        let mut m = qemu_like(b"");
        m.bytes.truncate((CMD - BASE) as usize + 100);
        let end = m.bytes.len();
        m.bytes[(CMD - BASE) as usize..end].fill(b'x');
        assert_eq!(
            parse(&m, SI, 0..0).unwrap_err(),
            PvhError::Unreadable {
                what: "command line",
                addr: BASE + end as u64
            }
        );
        // No NUL within MAX_CMDLINE bytes.
        let mut m = qemu_like(b"");
        m.bytes.resize(0x8000, b'x');
        m.bytes[(CMD - BASE) as usize..].fill(b'x');
        assert_eq!(
            parse(&m, SI, 0..0).unwrap_err(),
            PvhError::CmdLineUnterminated
        );
    }
}
