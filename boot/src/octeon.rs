//! The Cavium Octeon boot protocol: U-Boot's `bootoctlinux` boot descriptor,
//! the `cvmx_bootinfo` block and the `cvmx_bootmem` free list.
//!
//! # Entry
//!
//! `bootoctlinux` (Cavium SDK U-Boot and mainline U-Boot alike) starts the
//! kernel's ELF entry point on every core of the core mask with:
//!
//! | reg | value                                                                 |
//! |-----|-----------------------------------------------------------------------|
//! | a0  | argc                                                                  |
//! | a1  | argv: SDK U-Boot passes a table of 32-bit pointers, mainline U-Boot its own `char **` (64-bit pointers): not portable, so unused here |
//! | a2  | 1 on the boot ("init") core, 0 on the others                          |
//! | a3  | XKPHYS address of this core's `octeon_boot_descriptor`                |
//!
//! (mainline `arch/mips/mach-octeon/bootoctlinux.c`, `do_bootoctlinux`; Linux
//! `arch/mips/include/asm/mach-cavium-octeon/kernel-entry-init.h`.) The
//! arguments are therefore taken from the descriptor, whose `argv[]` holds
//! 32-bit *physical* addresses in both loaders (Linux `prom_init` reads them
//! with `cvmx_phys_to_ptr`).
//!
//! # Layouts (all fields big-endian, natural alignment)
//!
//! `octeon_boot_descriptor`, versions 6 and 7 (same layout; 7 only renamed
//! deprecated fields), 400 bytes. Sources: Linux
//! `arch/mips/include/asm/octeon/octeon.h`, mainline U-Boot
//! `arch/mips/mach-octeon/bootoctlinux.c` (`OCTEON_CURRENT_DESC_VERSION` 7),
//! SDK `octeon-app-init.h` (version 6):
//!
//! | off | type      | field             | used for                       |
//! |-----|-----------|-------------------|--------------------------------|
//! | 0   | u32       | desc_version      | must be 6 or 7                 |
//! | 4   | u32       | desc_size         | at least 400                   |
//! | 60  | u32       | argc              | at most 64                     |
//! | 64  | u32 x 64  | argv              | physical string addresses      |
//! | 320 | u32       | flags             | bit 3: console on UART1        |
//! | 392 | u64       | cvmx_desc_vaddr   | physical address of the bootinfo |
//!
//! `cvmx_bootinfo`, major version 1, minor 0..4 (each minor appends fields).
//! Sources: Linux and U-Boot `cvmx-bootinfo.h`, `cvmx-coremask.h`:
//!
//! | off | type      | field              | minor |
//! |-----|-----------|--------------------|-------|
//! | 0   | u32       | major_version      | 0     |
//! | 4   | u32       | minor_version      | 0     |
//! | 48  | u32       | flags              | 0     |
//! | 52  | u32       | core_mask          | 0     |
//! | 56  | u32       | dram_size (MiB)    | 0     |
//! | 60  | u32       | phy_mem_desc_addr  | 0     |
//! | 68  | u32       | eclock_hz          | 0     |
//! | 72  | u32       | dclock_hz          | 0     |
//! | 80  | u16       | board_type         | 0     |
//! | 82  | u8 x 2    | board_rev_major/minor | 0  |
//! | 148 | u32       | config_flags       | 2     |
//! | 152 | u64       | fdt_addr           | 3     |
//! | 160 | u64 x 16  | ext_core_mask (1024 cores, bit n of word n/64) | 4 |
//!
//! Sizes: 120 bytes at minor 0, 144 at 1, 152 at 2, 160 at 3, 288 at 4.
//!
//! `cvmx_bootmem_desc`, major 1..=3 (Linux and U-Boot refuse majors above 3;
//! the first three fields never moved): `lock` u32 at 0, `flags` u32 at 4,
//! `head_addr` u64 at 8, `major_version` u32 at 16, `minor_version` u32 at
//! 20. Each free block starts with `cvmx_bootmem_block_header`: `next_block_addr`
//! u64 at 0 (0 ends the list) and `size` u64 at 8. The list is sorted by
//! address (the allocator treats a descending link as corruption) and blocks
//! are multiples of 16 bytes at 16-byte alignment
//! (`CVMX_BOOTMEM_ALIGNMENT_SIZE`). Sources: `cvmx-bootmem.h`,
//! `executive/cvmx-bootmem.c`, U-Boot `cvmx_bootmem_phy_mem_list_init`.
//!
//! # Physical DRAM
//!
//! Octeon maps DRAM in three windows around the boot-bus/I/O hole at
//! 256 MiB..512 MiB (U-Boot `OCTEON_DDR0/1/2_*`, Linux `setup.c`): the first
//! 256 MiB at 0, the next 256 MiB at 0x4_1000_0000, the rest from
//! 0x2000_0000. [`Dram::from_size`] rebuilds them from `dram_size`; every
//! pointer is checked against them before it is read.
//!
//! The descriptor and the bootinfo are located before the DRAM size is
//! known, so they must lie in the first DRAM window (both loaders put them in
//! low memory); on a board with less RAM than that window a wild a3 below
//! 256 MiB can still fault when read (the exception handler reports it).
//!
//! # What is usable
//!
//! The free list is what U-Boot did not keep for itself. Neither loader
//! takes the kernel image out of it (the ELF is loaded before the list is
//! built, or into a block freed just before the jump; Linux allocates only
//! above `_end`), and mainline U-Boot leaves its own bootmem descriptor at
//! 1 MiB inside the first free block. So the kernel image is marked
//! [`RegionKind::Kernel`], and the descriptor, the bootinfo, the bootmem
//! descriptor and the device tree are marked [`RegionKind::BootData`], all
//! rounded out to pages; free blocks are rounded in to pages.

use core::fmt;

use crate::cmdline::{CmdLine, CmdLineError};
use crate::memmap::{MapError, MemoryMap, RegionKind};
use crate::phys::{align_down, align_up, read_be16, read_be32, read_be64, BootMemory};
use crate::BootInfo;

/// Granule of the memory map built here.
pub const PAGE: u64 = 4096;

/// First DRAM window: physical 0..256 MiB.
pub const DDR0_BASE: u64 = 0;
pub const DDR0_SIZE: u64 = 0x1000_0000;
/// Second window: DRAM bytes 256..512 MiB.
pub const DDR1_BASE: u64 = 0x4_1000_0000;
pub const DDR1_SIZE: u64 = 0x1000_0000;
/// Third window: DRAM beyond 512 MiB.
pub const DDR2_BASE: u64 = 0x2000_0000;
pub const DDR2_SIZE: u64 = 0x3_e000_0000;
/// The most DRAM the three windows describe (16 GiB, U-Boot's
/// `OCTEON_MAX_PHY_MEM_SIZE`); more is ignored.
pub const MAX_DRAM: u64 = DDR0_SIZE + DDR1_SIZE + DDR2_SIZE;

/// Physical addresses with bit 48 set are I/O (CSRs); DRAM lies below.
pub const IO_BIT: u64 = 1 << 48;

/// U-Boot keeps the first 1 MiB (vectors, its debug stacks, the device tree
/// of SDK U-Boot at 512 KiB): the kernel must load above it.
pub const LOW_RESERVED: u64 = 1 << 20;

/// Descriptor versions understood (same layout).
pub const DESC_VERSIONS: core::ops::RangeInclusive<u32> = 6..=7;
/// Size of the descriptor through `cvmx_desc_vaddr`.
pub const DESC_SIZE: u32 = 400;
/// Largest `desc_size` believed.
pub const DESC_SIZE_MAX: u32 = 4096;
/// `OCTEON_ARGV_MAX_ARGS`.
pub const ARGV_MAX: u32 = 64;
/// Longest argument string accepted.
pub const MAX_STRING: usize = crate::cmdline::MAX_CMDLINE;

/// Bootinfo major version understood.
pub const BOOTINFO_MAJOR: u32 = 1;
/// Highest bootmem descriptor major version understood.
pub const BOOTMEM_MAJOR_MAX: u32 = 3;
/// Size of `cvmx_bootmem_desc` (through `named_block_array_addr`).
pub const BOOTMEM_DESC_SIZE: u64 = 48;
/// `CVMX_BOOTMEM_ALIGNMENT_SIZE`.
pub const BOOTMEM_ALIGN: u64 = 16;
/// Most free blocks walked before the list counts as corrupt.
pub const MAX_FREE_BLOCKS: usize = 256;

/// Flattened device tree header magic and size limits.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
pub const FDT_MIN_SIZE: u32 = 40;
pub const FDT_MAX_SIZE: u32 = 2 << 20;

/// Offsets in `octeon_boot_descriptor`.
pub mod desc {
    pub const VERSION: u64 = 0;
    pub const SIZE: u64 = 4;
    pub const ARGC: u64 = 60;
    pub const ARGV: u64 = 64;
    pub const FLAGS: u64 = 320;
    pub const CVMX_DESC_VADDR: u64 = 392;
    /// `OCTEON_BL_FLAG_CONSOLE_UART1`.
    pub const FLAG_CONSOLE_UART1: u32 = 1 << 3;
}

/// Offsets in `cvmx_bootinfo`.
pub mod bootinfo {
    pub const MAJOR: u64 = 0;
    pub const MINOR: u64 = 4;
    pub const FLAGS: u64 = 48;
    pub const CORE_MASK: u64 = 52;
    pub const DRAM_SIZE: u64 = 56;
    pub const PHY_MEM_DESC_ADDR: u64 = 60;
    pub const ECLOCK_HZ: u64 = 68;
    pub const DCLOCK_HZ: u64 = 72;
    pub const BOARD_TYPE: u64 = 80;
    pub const BOARD_REV_MAJOR: u64 = 82;
    pub const BOARD_REV_MINOR: u64 = 83;
    pub const CONFIG_FLAGS: u64 = 148;
    pub const FDT_ADDR: u64 = 152;
    pub const EXT_CORE_MASK: u64 = 160;
    /// `BOOT_FLAG_INIT_CORE`: set in the bootinfo of the core that does
    /// application-wide initialisation.
    pub const FLAG_INIT_CORE: u32 = 1 << 0;

    /// The structure's size at `minor` (what the loader promises to fill).
    pub const fn size(minor: u32) -> u64 {
        match minor {
            0 => 120,
            1 => 144,
            2 => 152,
            3 => 160,
            _ => 288,
        }
    }
}

/// Offsets in `cvmx_bootmem_desc` and its free-block headers.
pub mod bootmem {
    pub const LOCK: u64 = 0;
    pub const HEAD_ADDR: u64 = 8;
    pub const MAJOR: u64 = 16;
    pub const MINOR: u64 = 20;
    pub const BLOCK_NEXT: u64 = 0;
    pub const BLOCK_SIZE: u64 = 8;
}

/// The registers `bootoctlinux` passes to the entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRegs {
    pub a0: u64,
    pub a1: u64,
    pub a2: u64,
    pub a3: u64,
}

/// The physical DRAM windows of a board with a given DRAM size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dram {
    ranges: [(u64, u64); 3],
    len: usize,
    /// DRAM bytes described (at most [`MAX_DRAM`]).
    pub total: u64,
}

impl Dram {
    /// The windows holding the first `bytes` of DRAM, in the order U-Boot
    /// fills them (DDR0, DDR1, DDR2).
    pub const fn from_size(bytes: u64) -> Dram {
        let total = if bytes > MAX_DRAM { MAX_DRAM } else { bytes };
        let mut d = Dram {
            ranges: [(0, 0); 3],
            len: 0,
            total,
        };
        let low = if total < DDR0_SIZE { total } else { DDR0_SIZE };
        if low > 0 {
            d.ranges[0] = (DDR0_BASE, DDR0_BASE + low);
            d.len = 1;
        }
        let rest = total - low;
        if rest > 0 {
            let mid = if rest < DDR1_SIZE { rest } else { DDR1_SIZE };
            d.ranges[d.len] = (DDR1_BASE, DDR1_BASE + mid);
            d.len += 1;
            if rest > mid {
                d.ranges[d.len] = (DDR2_BASE, DDR2_BASE + (rest - mid));
                d.len += 1;
            }
        }
        d
    }

    /// The `[start, end)` windows, unsorted (DDR0, DDR1, DDR2).
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.len]
    }

    /// Whether `[start, start + len)` lies inside one window (`len` may be 0
    /// only for an address inside a window).
    pub fn contains(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        self.ranges()
            .iter()
            .any(|&(s, e)| s <= start && end <= e && start < e)
    }
}

/// The set of cores `bootoctlinux` started (`cvmx_coremask`: bit n of word
/// n / 64 is core n, as EBase.CPUNum numbers them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CoreMask(pub [u64; 16]);

impl CoreMask {
    pub const fn from_low(mask: u64) -> CoreMask {
        let mut m = [0; 16];
        m[0] = mask;
        CoreMask(m)
    }

    pub fn contains(&self, core: u32) -> bool {
        let (w, b) = ((core / 64) as usize, core % 64);
        w < self.0.len() && self.0[w] & (1 << b) != 0
    }

    /// Cores 0..63, the ones Samara can drive.
    pub fn low64(&self) -> u64 {
        self.0[0]
    }

    pub fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

impl fmt::Debug for CoreMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CoreMask {
    /// Hex, most significant non-zero word first, words joined with `_`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top = self.0.iter().rposition(|&w| w != 0).unwrap_or(0);
        write!(f, "{:#x}", self.0[top])?;
        for w in self.0[..top].iter().rev() {
            write!(f, "_{w:016x}")?;
        }
        Ok(())
    }
}

/// The name of a `cvmx_board_types_enum` value, for the boards Samara
/// targets and the common evaluation boards (Linux and U-Boot
/// `cvmx-bootinfo.h`/`cvmx-app-init.h`).
pub const fn board_name(board_type: u16) -> Option<&'static str> {
    Some(match board_type {
        0 => "NULL",
        1 => "SIM",
        2 => "EBT3000",
        8 => "EBH3000",
        9 => "EBH3100",
        11 => "CN3010_EVB_HS5",
        17 => "EBH5600",
        19 => "EBH5200",
        20 => "BBGW_REF",
        28 => "GENERIC",
        33 => "EBB6300",
        39 => "EBB6800",
        42 => "EBB6600",
        76 => "EBB7304",
        20002 => "UBNT_E100 (EdgeRouter Lite)",
        20003 => "UBNT_E200 (EdgeRouter 8/PRO)",
        20005 => "UBNT_E220",
        20300 => "UBNT_E300 (EdgeRouter 4/6P)",
        _ => return None,
    })
}

/// What the Octeon boot data says beyond the [`BootInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcteonInfo {
    /// Physical address, version and size of the boot descriptor.
    pub desc_addr: u64,
    pub desc_version: u32,
    pub desc_size: u32,
    /// Descriptor flags (`OCTEON_BL_FLAG_*`).
    pub desc_flags: u32,
    /// Physical address and (major, minor) version of the bootinfo.
    pub bootinfo_addr: u64,
    pub bootinfo_version: (u32, u32),
    /// Bootinfo flags (`BOOT_FLAG_INIT_CORE`) and, from minor 2, config
    /// flags (`CVMX_BOOTINFO_CFG_FLAG_*`).
    pub flags: u32,
    pub config_flags: Option<u32>,
    pub board_type: u16,
    pub board_rev: (u8, u8),
    pub core_mask: CoreMask,
    pub boot_core: u32,
    pub dram: Dram,
    /// Core and DRAM clocks (Hz).
    pub eclock_hz: u32,
    pub dclock_hz: u32,
    /// Physical address and version of the bootmem descriptor.
    pub bootmem_addr: u64,
    pub bootmem_version: (u32, u32),
    /// Free blocks on the list and their total size.
    pub free_blocks: usize,
    pub free_bytes: u64,
    /// Physical address and size of the device tree (bootinfo minor >= 3).
    pub fdt: Option<(u64, u32)>,
}

impl OcteonInfo {
    /// Whether U-Boot's console is UART1 (Samara's console is UART0).
    pub fn console_on_uart1(&self) -> bool {
        self.desc_flags & desc::FLAG_CONSOLE_UART1 != 0
    }
}

struct Mhz(u32);

impl fmt::Display for Mhz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hz = self.0;
        if hz.is_multiple_of(1_000_000) {
            write!(f, "{} MHz", hz / 1_000_000)
        } else {
            write!(f, "{}.{:03} MHz", hz / 1_000_000, (hz % 1_000_000) / 1000)
        }
    }
}

impl fmt::Display for OcteonInfo {
    /// Three lines, each prefixed `octeon: `, newline-terminated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "octeon: board ")?;
        match board_name(self.board_type) {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "unknown")?,
        }
        writeln!(
            f,
            " (type {}, rev {}.{}), boot descriptor v{} at {:#x}, bootinfo v{}.{} at {:#x}",
            self.board_type,
            self.board_rev.0,
            self.board_rev.1,
            self.desc_version,
            self.desc_addr,
            self.bootinfo_version.0,
            self.bootinfo_version.1,
            self.bootinfo_addr
        )?;
        writeln!(
            f,
            "octeon: core mask {} ({} cores, boot core {}), core clock {}, DRAM clock {}, DRAM {} MiB{}",
            self.core_mask,
            self.core_mask.count(),
            self.boot_core,
            Mhz(self.eclock_hz),
            Mhz(self.dclock_hz),
            self.dram.total >> 20,
            if self.console_on_uart1() {
                ", U-Boot console on UART1 (Samara uses UART0)"
            } else {
                ""
            }
        )?;
        write!(
            f,
            "octeon: bootmem v{}.{} at {:#x}: {} free blocks, {} KiB; ",
            self.bootmem_version.0,
            self.bootmem_version.1,
            self.bootmem_addr,
            self.free_blocks,
            self.free_bytes >> 10
        )?;
        match self.fdt {
            Some((addr, size)) => writeln!(f, "device tree at {addr:#x} ({size} bytes)"),
            None => writeln!(f, "no device tree"),
        }
    }
}

/// Why the Octeon boot data was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcteonError {
    /// a3 is not an XKPHYS (or CKSEG0/1) address of 8-byte-aligned memory
    /// in the first DRAM window.
    DescPointer(u64),
    /// A structure lies (partly) where nothing can be read.
    Unreadable {
        what: &'static str,
        phys: u64,
    },
    DescVersion(u32),
    DescSize(u32),
    /// `cvmx_desc_vaddr` names no usable bootinfo location.
    BootinfoPointer(u64),
    BootinfoVersion {
        major: u32,
        minor: u32,
    },
    /// `dram_size` is 0.
    NoDram,
    /// A structure or block is not inside DRAM.
    OutsideDram {
        what: &'static str,
        addr: u64,
        len: u64,
    },
    /// An address is not aligned as the protocol requires.
    Misaligned {
        what: &'static str,
        addr: u64,
        align: u64,
    },
    TooManyArgs(u32),
    NullArg {
        index: u32,
    },
    Unterminated {
        index: u32,
        phys: u64,
    },
    /// The arguments start with U-Boot's own command: `endbootargs` missing.
    MissingEndBootArgs,
    EmptyCoreMask,
    /// (`mask` is the mask's low 64 bits, the cores Samara can drive.)
    BootCoreNotInMask {
        core: u32,
        mask: u64,
    },
    /// `phy_mem_desc_addr` is NULL.
    NoBootmem,
    BootmemVersion {
        major: u32,
        minor: u32,
    },
    /// The bootmem lock word is held: the list may be mid-update.
    BootmemLocked(u32),
    /// A free block with a zero or misaligned size, or one running off the
    /// end of the address space.
    FreeBlockSize {
        addr: u64,
        size: u64,
    },
    /// A link that does not point past the previous block (a cycle, or a
    /// list out of order).
    FreeListOrder {
        prev: u64,
        next: u64,
    },
    /// A block that starts inside the previous one.
    FreeListOverlap {
        prev_end: u64,
        next: u64,
    },
    FreeListTooLong,
    FdtMagic {
        addr: u64,
        magic: u32,
    },
    FdtSize {
        addr: u64,
        size: u32,
    },
    KernelOutsideRam {
        start: u64,
        end: u64,
    },
    /// Boot data the loader still owns lies inside the kernel image.
    KernelOverlaps {
        what: &'static str,
        addr: u64,
    },
    NoUsableMemory,
    CmdLine(CmdLineError),
    Map(MapError),
}

impl fmt::Display for OcteonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OcteonError::*;
        match *self {
            DescPointer(a3) => write!(
                f,
                "a3 = {a3:#x} is not the XKPHYS address of an 8-byte-aligned boot descriptor \
                 in the first {} MiB of DRAM",
                DDR0_SIZE >> 20
            ),
            Unreadable { what, phys } => write!(f, "{what} at physical {phys:#x} cannot be read"),
            DescVersion(v) => write!(
                f,
                "boot descriptor version {v} is not supported (expected {}..={})",
                DESC_VERSIONS.start(),
                DESC_VERSIONS.end()
            ),
            DescSize(s) => write!(
                f,
                "boot descriptor size {s} is outside {DESC_SIZE}..={DESC_SIZE_MAX}"
            ),
            BootinfoPointer(p) => write!(
                f,
                "cvmx_desc_vaddr {p:#x} is not the address of an 8-byte-aligned bootinfo \
                 in the first {} MiB of DRAM",
                DDR0_SIZE >> 20
            ),
            BootinfoVersion { major, minor } => write!(
                f,
                "cvmx_bootinfo version {major}.{minor} is not supported (expected major {BOOTINFO_MAJOR})"
            ),
            NoDram => f.write_str("cvmx_bootinfo reports 0 MiB of DRAM"),
            OutsideDram { what, addr, len } => {
                write!(f, "{what} [{addr:#x}, +{len:#x}) is not inside DRAM")
            }
            Misaligned { what, addr, align } => {
                write!(f, "{what} at {addr:#x} is not {align}-byte aligned")
            }
            TooManyArgs(n) => write!(f, "argc {n} exceeds {ARGV_MAX}"),
            NullArg { index } => write!(f, "argv[{index}] is NULL"),
            Unterminated { index, phys } => write!(
                f,
                "argv[{index}] at {phys:#x} has no NUL within {MAX_STRING} bytes of DRAM"
            ),
            MissingEndBootArgs => f.write_str(
                "the arguments start with U-Boot's own `bootoctlinux` command line: put \
                 `endbootargs` before the kernel arguments",
            ),
            EmptyCoreMask => f.write_str("the core mask is empty"),
            BootCoreNotInMask { core, mask } => {
                write!(f, "boot core {core} is not in the core mask ({mask:#x} for cores 0..63)")
            }
            NoBootmem => f.write_str("cvmx_bootinfo has no bootmem descriptor (NULL)"),
            BootmemVersion { major, minor } => write!(
                f,
                "bootmem descriptor version {major}.{minor} is not supported \
                 (expected major 1..={BOOTMEM_MAJOR_MAX})"
            ),
            BootmemLocked(v) => write!(
                f,
                "bootmem descriptor lock is held ({v:#x}): the free list may be mid-update"
            ),
            FreeBlockSize { addr, size } => {
                write!(f, "free block at {addr:#x} has bad size {size:#x}")
            }
            FreeListOrder { prev, next } => write!(
                f,
                "free block at {prev:#x} links back to {next:#x} (a cycle or an unsorted list)"
            ),
            FreeListOverlap { prev_end, next } => write!(
                f,
                "free block at {next:#x} overlaps the previous one (ends at {prev_end:#x})"
            ),
            FreeListTooLong => write!(f, "free list has more than {MAX_FREE_BLOCKS} blocks"),
            FdtMagic { addr, magic } => write!(
                f,
                "device tree at {addr:#x} has magic {magic:#010x}, not {FDT_MAGIC:#010x}"
            ),
            FdtSize { addr, size } => write!(
                f,
                "device tree at {addr:#x} claims {size} bytes (expected {FDT_MIN_SIZE}..={FDT_MAX_SIZE})"
            ),
            KernelOutsideRam { start, end } => write!(
                f,
                "kernel image [{start:#x}, {end:#x}) is not inside the first DRAM window above {LOW_RESERVED:#x}"
            ),
            KernelOverlaps { what, addr } => {
                write!(f, "{what} at {addr:#x} lies inside the kernel image")
            }
            NoUsableMemory => f.write_str("no usable memory left on the bootmem free list"),
            CmdLine(e) => write!(f, "command line: {e}"),
            Map(e) => write!(f, "memory map: {e}"),
        }
    }
}

impl From<CmdLineError> for OcteonError {
    fn from(e: CmdLineError) -> Self {
        OcteonError::CmdLine(e)
    }
}

impl From<MapError> for OcteonError {
    fn from(e: MapError) -> Self {
        OcteonError::Map(e)
    }
}

/// The physical address of a kernel-segment pointer: XKPHYS (any cache
/// attribute) or the 32-bit compatibility segments CKSEG0/CKSEG1. `None` for
/// anything else, and for XKPHYS addresses of I/O space.
pub fn kernel_addr_to_phys(v: u64) -> Option<u64> {
    if v >> 62 == 0b10 {
        // XKPHYS: bits 61:59 are the cache attribute, 58:0 the address.
        let phys = v & ((1 << 59) - 1);
        return (phys < IO_BIT).then_some(phys);
    }
    if (0xffff_ffff_8000_0000..0xffff_ffff_c000_0000).contains(&v) {
        return Some(v & 0x1fff_ffff);
    }
    None
}

/// A physical address as a loader writes it: plainly physical, or (Linux
/// accepts this too) already a kernel-segment pointer.
fn loader_addr_to_phys(v: u64) -> Option<u64> {
    if v < IO_BIT {
        Some(v)
    } else {
        kernel_addr_to_phys(v)
    }
}

/// A reader confined to known DRAM: every access is checked against `dram`
/// before the underlying memory is touched.
struct Checked<'a, M: BootMemory + ?Sized> {
    mem: &'a M,
    dram: Dram,
}

impl<M: BootMemory + ?Sized> Checked<'_, M> {
    fn span(&self, what: &'static str, addr: u64, len: u64) -> Result<(), OcteonError> {
        if self.dram.contains(addr, len) {
            Ok(())
        } else {
            Err(OcteonError::OutsideDram { what, addr, len })
        }
    }

    fn u16(&self, what: &'static str, phys: u64) -> Result<u16, OcteonError> {
        self.span(what, phys, 2)?;
        read_be16(self.mem, phys).ok_or(OcteonError::Unreadable { what, phys })
    }

    fn u32(&self, what: &'static str, phys: u64) -> Result<u32, OcteonError> {
        self.span(what, phys, 4)?;
        read_be32(self.mem, phys).ok_or(OcteonError::Unreadable { what, phys })
    }

    fn u64(&self, what: &'static str, phys: u64) -> Result<u64, OcteonError> {
        self.span(what, phys, 8)?;
        read_be64(self.mem, phys).ok_or(OcteonError::Unreadable { what, phys })
    }

    fn u8(&self, what: &'static str, phys: u64) -> Result<u8, OcteonError> {
        self.span(what, phys, 1)?;
        let mut b = [0u8; 1];
        if self.mem.read(phys, &mut b) {
            Ok(b[0])
        } else {
            Err(OcteonError::Unreadable { what, phys })
        }
    }
}

/// Everything needed from the boot descriptor and the bootinfo.
struct Blocks {
    desc: u64,
    desc_version: u32,
    desc_size: u32,
    bootinfo: u64,
    minor: u32,
}

/// Finds and version-checks the descriptor and the bootinfo, which must lie
/// in the first DRAM window (see the module comment).
fn locate<M: BootMemory + ?Sized>(mem: &M, a3: u64) -> Result<Blocks, OcteonError> {
    let low = Checked {
        mem,
        dram: Dram::from_size(DDR0_SIZE),
    };
    let desc = kernel_addr_to_phys(a3)
        .filter(|&p| p != 0 && p.is_multiple_of(8) && low.dram.contains(p, u64::from(DESC_SIZE)))
        .ok_or(OcteonError::DescPointer(a3))?;
    let desc_version = low.u32("boot descriptor", desc + desc::VERSION)?;
    if !DESC_VERSIONS.contains(&desc_version) {
        return Err(OcteonError::DescVersion(desc_version));
    }
    let desc_size = low.u32("boot descriptor", desc + desc::SIZE)?;
    if !(DESC_SIZE..=DESC_SIZE_MAX).contains(&desc_size) {
        return Err(OcteonError::DescSize(desc_size));
    }
    low.span("boot descriptor", desc, u64::from(desc_size))?;
    let raw = low.u64("boot descriptor", desc + desc::CVMX_DESC_VADDR)?;
    let bootinfo = loader_addr_to_phys(raw)
        .filter(|&p| p != 0 && p.is_multiple_of(8) && low.dram.contains(p, bootinfo::size(0)))
        .ok_or(OcteonError::BootinfoPointer(raw))?;
    let major = low.u32("bootinfo", bootinfo + bootinfo::MAJOR)?;
    let minor = low.u32("bootinfo", bootinfo + bootinfo::MINOR)?;
    if major != BOOTINFO_MAJOR {
        return Err(OcteonError::BootinfoVersion { major, minor });
    }
    low.span("bootinfo", bootinfo, bootinfo::size(minor))?;
    Ok(Blocks {
        desc,
        desc_version,
        desc_size,
        bootinfo,
        minor,
    })
}

/// Appends the words of the descriptor's argv strings.
fn parse_args<M: BootMemory + ?Sized>(
    mem: &Checked<'_, M>,
    desc: u64,
) -> Result<CmdLine, OcteonError> {
    let argc = mem.u32("boot descriptor", desc + desc::ARGC)?;
    if argc > ARGV_MAX {
        return Err(OcteonError::TooManyArgs(argc));
    }
    let mut cmdline = CmdLine::empty();
    let mut buf = [0u8; MAX_STRING];
    for index in 0..argc {
        let ptr = mem.u32("argv table", desc + desc::ARGV + 4 * u64::from(index))?;
        if ptr == 0 {
            return Err(OcteonError::NullArg { index });
        }
        let start = u64::from(ptr);
        let mut len = None;
        for (i, slot) in buf.iter_mut().enumerate() {
            // Byte by byte, so nothing past the NUL (possibly past DRAM)
            // is read.
            let b = mem.u8("argv string", start + i as u64)?;
            if b == 0 {
                len = Some(i);
                break;
            }
            *slot = b;
        }
        let len = len.ok_or(OcteonError::Unterminated { index, phys: start })?;
        let arg = &buf[..len];
        if index == 0 && (arg == b"bootoctlinux" || arg == b"bootoct") {
            return Err(OcteonError::MissingEndBootArgs);
        }
        for word in arg
            .split(|c| c.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
        {
            cmdline.push_word(word)?;
        }
    }
    Ok(cmdline)
}

/// Validates the device tree header at `fdt_addr`, returning its extent.
fn parse_fdt<M: BootMemory + ?Sized>(
    mem: &Checked<'_, M>,
    raw: u64,
) -> Result<Option<(u64, u32)>, OcteonError> {
    if raw == 0 {
        return Ok(None);
    }
    let addr = loader_addr_to_phys(raw).ok_or(OcteonError::OutsideDram {
        what: "device tree",
        addr: raw,
        len: 8,
    })?;
    if !addr.is_multiple_of(8) {
        return Err(OcteonError::Misaligned {
            what: "device tree",
            addr,
            align: 8,
        });
    }
    let magic = mem.u32("device tree", addr)?;
    if magic != FDT_MAGIC {
        return Err(OcteonError::FdtMagic { addr, magic });
    }
    let size = mem.u32("device tree", addr + 4)?;
    if !(FDT_MIN_SIZE..=FDT_MAX_SIZE).contains(&size) {
        return Err(OcteonError::FdtSize { addr, size });
    }
    mem.span("device tree", addr, u64::from(size))?;
    Ok(Some((addr, size)))
}

/// Walks the bootmem free list and adds every block, rounded in to pages, to
/// `map` as usable. Returns (blocks, bytes) as listed.
fn walk_free_list<M: BootMemory + ?Sized>(
    mem: &Checked<'_, M>,
    head: u64,
    map: &mut MemoryMap,
) -> Result<(usize, u64), OcteonError> {
    let mut addr = head;
    let mut prev: Option<(u64, u64)> = None;
    let mut blocks = 0;
    let mut bytes: u64 = 0;
    while addr != 0 {
        if blocks == MAX_FREE_BLOCKS {
            return Err(OcteonError::FreeListTooLong);
        }
        // Sorted, non-overlapping blocks: each link must point at or past
        // the end of the previous block. This also rules out cycles, since
        // addresses strictly increase along the walk.
        if let Some((p, end)) = prev {
            if addr <= p {
                return Err(OcteonError::FreeListOrder {
                    prev: p,
                    next: addr,
                });
            }
            if addr < end {
                return Err(OcteonError::FreeListOverlap {
                    prev_end: end,
                    next: addr,
                });
            }
        }
        if !addr.is_multiple_of(BOOTMEM_ALIGN) {
            return Err(OcteonError::Misaligned {
                what: "free block",
                addr,
                align: BOOTMEM_ALIGN,
            });
        }
        let next = mem.u64("free block header", addr + bootmem::BLOCK_NEXT)?;
        let size = mem.u64("free block header", addr + bootmem::BLOCK_SIZE)?;
        if size < BOOTMEM_ALIGN || !size.is_multiple_of(BOOTMEM_ALIGN) {
            return Err(OcteonError::FreeBlockSize { addr, size });
        }
        mem.span("free block", addr, size)?;
        let end = addr + size;
        let (s, e) = (align_up(addr, PAGE), align_down(end, PAGE));
        if s < e {
            map.add(s, e, RegionKind::Usable)?;
        }
        blocks += 1;
        bytes += size;
        prev = Some((addr, end));
        addr = next;
    }
    Ok((blocks, bytes))
}

/// Parses everything `bootoctlinux` passed into a [`BootInfo`] and the
/// Octeon details. `kernel` is the physical extent of the loaded image and
/// `boot_core` this core's EBase.CPUNum.
pub fn parse<M: BootMemory + ?Sized>(
    mem: &M,
    regs: &EntryRegs,
    kernel: (u64, u64),
    boot_core: u32,
) -> Result<(BootInfo, OcteonInfo), OcteonError> {
    let blocks = locate(mem, regs.a3)?;
    let low = Checked {
        mem,
        dram: Dram::from_size(DDR0_SIZE),
    };
    let bi = blocks.bootinfo;
    let dram_mib = low.u32("bootinfo", bi + bootinfo::DRAM_SIZE)?;
    if dram_mib == 0 {
        return Err(OcteonError::NoDram);
    }
    let mem = Checked {
        mem,
        dram: Dram::from_size(u64::from(dram_mib) << 20),
    };
    // Now that the DRAM size is known, the blocks found above must lie in it.
    mem.span("boot descriptor", blocks.desc, u64::from(blocks.desc_size))?;
    mem.span("bootinfo", bi, bootinfo::size(blocks.minor))?;

    let core_mask = if blocks.minor >= 4 {
        let mut words = [0u64; 16];
        for (i, w) in words.iter_mut().enumerate() {
            *w = mem.u64("bootinfo", bi + bootinfo::EXT_CORE_MASK + 8 * i as u64)?;
        }
        CoreMask(words)
    } else {
        CoreMask::from_low(u64::from(mem.u32("bootinfo", bi + bootinfo::CORE_MASK)?))
    };
    if core_mask.is_empty() {
        return Err(OcteonError::EmptyCoreMask);
    }
    if !core_mask.contains(boot_core) {
        return Err(OcteonError::BootCoreNotInMask {
            core: boot_core,
            mask: core_mask.low64(),
        });
    }

    let cmdline = parse_args(&mem, blocks.desc)?;
    let fdt = if blocks.minor >= 3 {
        parse_fdt(&mem, mem.u64("bootinfo", bi + bootinfo::FDT_ADDR)?)?
    } else {
        None
    };

    let bootmem_addr = u64::from(mem.u32("bootinfo", bi + bootinfo::PHY_MEM_DESC_ADDR)?);
    if bootmem_addr == 0 {
        return Err(OcteonError::NoBootmem);
    }
    if !bootmem_addr.is_multiple_of(8) {
        return Err(OcteonError::Misaligned {
            what: "bootmem descriptor",
            addr: bootmem_addr,
            align: 8,
        });
    }
    mem.span("bootmem descriptor", bootmem_addr, BOOTMEM_DESC_SIZE)?;
    let major = mem.u32("bootmem descriptor", bootmem_addr + bootmem::MAJOR)?;
    let minor = mem.u32("bootmem descriptor", bootmem_addr + bootmem::MINOR)?;
    if !(1..=BOOTMEM_MAJOR_MAX).contains(&major) {
        return Err(OcteonError::BootmemVersion { major, minor });
    }
    let lock = mem.u32("bootmem descriptor", bootmem_addr + bootmem::LOCK)?;
    if lock != 0 {
        return Err(OcteonError::BootmemLocked(lock));
    }

    // The kernel must sit in the first window, above U-Boot's first MiB, and
    // must not have been loaded over data the loader handed us.
    let (kstart, kend) = kernel;
    if kstart < LOW_RESERVED || kstart >= kend || kend > DDR0_SIZE.min(mem.dram.total) {
        return Err(OcteonError::KernelOutsideRam {
            start: kstart,
            end: kend,
        });
    }
    let mut boot_data: [(&'static str, u64, u64); 4] = [
        ("boot descriptor", blocks.desc, u64::from(blocks.desc_size)),
        ("bootinfo", bi, bootinfo::size(blocks.minor)),
        ("bootmem descriptor", bootmem_addr, BOOTMEM_DESC_SIZE),
        ("device tree", 0, 0),
    ];
    if let Some((addr, size)) = fdt {
        boot_data[3] = ("device tree", addr, u64::from(size));
    }
    for &(what, addr, len) in boot_data.iter().filter(|d| d.2 != 0) {
        if addr < kend && kstart < addr + len {
            return Err(OcteonError::KernelOverlaps { what, addr });
        }
    }

    let mut map = MemoryMap::new();
    let head = mem.u64("bootmem descriptor", bootmem_addr + bootmem::HEAD_ADDR)?;
    let (free_blocks, free_bytes) = walk_free_list(&mem, head, &mut map)?;
    map.add(
        align_down(kstart, PAGE),
        align_up(kend, PAGE),
        RegionKind::Kernel,
    )?;
    for &(_, addr, len) in boot_data.iter().filter(|d| d.2 != 0) {
        map.add(
            align_down(addr, PAGE),
            align_up(addr + len, PAGE),
            RegionKind::BootData,
        )?;
    }
    if map.total(RegionKind::Usable) == 0 {
        return Err(OcteonError::NoUsableMemory);
    }

    let info = OcteonInfo {
        desc_addr: blocks.desc,
        desc_version: blocks.desc_version,
        desc_size: blocks.desc_size,
        desc_flags: mem.u32("boot descriptor", blocks.desc + desc::FLAGS)?,
        bootinfo_addr: bi,
        bootinfo_version: (BOOTINFO_MAJOR, blocks.minor),
        flags: mem.u32("bootinfo", bi + bootinfo::FLAGS)?,
        config_flags: if blocks.minor >= 2 {
            Some(mem.u32("bootinfo", bi + bootinfo::CONFIG_FLAGS)?)
        } else {
            None
        },
        board_type: mem.u16("bootinfo", bi + bootinfo::BOARD_TYPE)?,
        board_rev: (
            mem.u8("bootinfo", bi + bootinfo::BOARD_REV_MAJOR)?,
            mem.u8("bootinfo", bi + bootinfo::BOARD_REV_MINOR)?,
        ),
        core_mask,
        boot_core,
        dram: mem.dram,
        eclock_hz: mem.u32("bootinfo", bi + bootinfo::ECLOCK_HZ)?,
        dclock_hz: mem.u32("bootinfo", bi + bootinfo::DCLOCK_HZ)?,
        bootmem_addr,
        bootmem_version: (major, minor),
        free_blocks,
        free_bytes,
        fdt,
    };
    let boot = BootInfo {
        memory: map,
        cmdline,
        platform: "octeon",
        // Samara drives cores 0..63 (`mm::cpu::MAX_CPUS`).
        cpu_count: core_mask.low64().count_ones(),
        acpi_rsdp: 0,
    };
    Ok((boot, info))
}

#[cfg(test)]
mod tests;
