//! Host tests: boot descriptor, bootinfo and bootmem images built byte by
//! byte at the documented offsets, for the loaders and boards Samara
//! targets, then truncated and corrupted.

use std::collections::BTreeMap;

use super::*;
use RegionKind::*;

/// Sparse fake DRAM: bytes inside `ram` that were never written read as
/// 0xa5 (so a missing NUL is noticed); anything outside `ram` is unreadable.
struct Fake {
    ram: Dram,
    bytes: BTreeMap<u64, u8>,
}

impl Fake {
    fn put(&mut self, at: u64, data: &[u8]) {
        assert!(
            self.ram.contains(at, data.len() as u64),
            "test writes {at:#x} outside its DRAM"
        );
        for (i, &b) in data.iter().enumerate() {
            self.bytes.insert(at + i as u64, b);
        }
    }
    fn put16(&mut self, at: u64, v: u16) {
        self.put(at, &v.to_be_bytes());
    }
    fn put32(&mut self, at: u64, v: u32) {
        self.put(at, &v.to_be_bytes());
    }
    fn put64(&mut self, at: u64, v: u64) {
        self.put(at, &v.to_be_bytes());
    }
}

impl BootMemory for Fake {
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
        if !self.ram.contains(phys, buf.len() as u64) {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = *self.bytes.get(&(phys + i as u64)).unwrap_or(&0xa5);
        }
        true
    }
}

const XKPHYS: u64 = 0x8000_0000_0000_0000;
const KERNEL: (u64, u64) = (0x110_0000, 0x118_0000);

/// One board as its boot loader leaves it.
#[derive(Clone)]
struct Board {
    dram_mib: u32,
    desc_at: u64,
    desc_version: u32,
    desc_size: u32,
    desc_flags: u32,
    bootinfo_at: u64,
    bootinfo_ptr: Option<u64>,
    major: u32,
    minor: u32,
    board_type: u16,
    rev: (u8, u8),
    core_mask: CoreMask,
    eclock: u32,
    dclock: u32,
    args: Vec<Vec<u8>>,
    args_at: u64,
    bootmem_at: u64,
    bootmem_version: (u32, u32),
    lock: u32,
    free: Vec<(u64, u64)>,
    fdt: Option<(u64, u32)>,
}

impl Board {
    /// Mainline U-Boot on an EBB7304 (CN73xx) with 2 GiB: descriptor v7,
    /// bootinfo 1.4, no board type set (mainline leaves it 0), bootmem
    /// descriptor at 1 MiB inside the first free block, its own data (and
    /// so the descriptor, bootinfo, FDT and argv) near the top of DDR0 and
    /// still on the free list; the named-block array allocated from the
    /// very top of DDR0.
    fn mainline_ebb7304() -> Board {
        Board {
            dram_mib: 2048,
            desc_at: 0x0ff0_0000,
            desc_version: 7,
            desc_size: 400,
            desc_flags: 1,
            bootinfo_at: 0x0ff0_1000,
            bootinfo_ptr: None,
            major: 1,
            minor: 4,
            board_type: 0,
            rev: (0, 0),
            core_mask: CoreMask::from_low(0xf),
            eclock: 1_200_000_000,
            dclock: 800_000_000,
            args: vec![b"test=boot".to_vec(), b"workload=none".to_vec()],
            args_at: 0x0ff1_0000,
            bootmem_at: 0x10_0000,
            bootmem_version: (3, 0),
            lock: 0,
            free: vec![
                (0x8_0000, 0x0fff_dc00 - 0x8_0000),
                (0x2000_0000, 0x6000_0000),
                (0x4_1000_0000, 0x1000_0000),
            ],
            fdt: Some((0x0fe0_0000, 0x8000)),
        }
    }

    /// Cavium SDK U-Boot on an EdgeRouter Lite (CN5020, UBNT_E100) with
    /// 512 MiB: descriptor v6, bootinfo 1.2 (no device tree, 32-bit core
    /// mask), descriptor and bootinfo allocated from bootmem (so off the
    /// free list), bootmem descriptor in the low reserved MiB, the Linux
    /// reserved block (holding the kernel) freed before the jump.
    fn sdk_erlite() -> Board {
        Board {
            dram_mib: 512,
            desc_at: 0x0f80_0000,
            desc_version: 6,
            desc_size: 400,
            desc_flags: 1,
            bootinfo_at: 0x0f80_0200,
            bootinfo_ptr: None,
            major: 1,
            minor: 2,
            board_type: 20002,
            rev: (1, 2),
            core_mask: CoreMask::from_low(0x3),
            eclock: 500_000_000,
            dclock: 266_000_000,
            args: vec![b"test=boot".to_vec()],
            args_at: 0x0f80_1000,
            bootmem_at: 0x2000,
            bootmem_version: (3, 0),
            lock: 0,
            free: vec![
                (0x10_0000, 0x0f00_0000 - 0x10_0000),
                (0x4_1000_0000, 0x1000_0000),
            ],
            fdt: None,
        }
    }

    /// SDK U-Boot on an EdgeRouter 4 (CN7130, UBNT_E300) with 1 GiB:
    /// bootinfo 1.4 with the extended core mask, device tree at 512 KiB.
    fn sdk_er4() -> Board {
        Board {
            dram_mib: 1024,
            desc_version: 7,
            minor: 4,
            board_type: 20300,
            rev: (1, 0),
            core_mask: CoreMask::from_low(0xf),
            eclock: 1_000_000_000,
            dclock: 533_333_333,
            free: vec![
                (0x10_0000, 0x0f00_0000 - 0x10_0000),
                (0x2000_0000, 0x2000_0000),
                (0x4_1000_0000, 0x1000_0000),
            ],
            fdt: Some((0x8_0000, 0x6000)),
            ..Board::sdk_erlite()
        }
    }

    /// A 128 MiB CN3010 evaluation board with an old SDK: bootinfo 1.0.
    fn small_cn3010() -> Board {
        Board {
            dram_mib: 128,
            desc_at: 0x07f0_0000,
            bootinfo_at: 0x07f0_0400,
            args_at: 0x07f0_0800,
            minor: 0,
            board_type: 11,
            core_mask: CoreMask::from_low(0x1),
            free: vec![(0x10_0000, 0x07e0_0000 - 0x10_0000)],
            fdt: None,
            ..Board::sdk_erlite()
        }
    }

    fn dram(&self) -> Dram {
        Dram::from_size(u64::from(self.dram_mib) << 20)
    }

    fn build(&self) -> Fake {
        let mut m = Fake {
            ram: self.dram(),
            bytes: BTreeMap::new(),
        };
        let d = self.desc_at;
        m.put32(d + desc::VERSION, self.desc_version);
        m.put32(d + desc::SIZE, self.desc_size);
        m.put32(d + desc::ARGC, self.args.len() as u32);
        let mut s = self.args_at;
        for (i, a) in self.args.iter().enumerate() {
            m.put32(d + desc::ARGV + 4 * i as u64, s as u32);
            m.put(s, a);
            m.put(s + a.len() as u64, &[0]);
            s += a.len() as u64 + 1;
        }
        m.put32(d + desc::FLAGS, self.desc_flags);
        m.put64(
            d + desc::CVMX_DESC_VADDR,
            self.bootinfo_ptr.unwrap_or(self.bootinfo_at),
        );

        let b = self.bootinfo_at;
        m.put32(b + bootinfo::MAJOR, self.major);
        m.put32(b + bootinfo::MINOR, self.minor);
        m.put32(b + bootinfo::FLAGS, bootinfo::FLAG_INIT_CORE);
        m.put32(b + bootinfo::CORE_MASK, self.core_mask.low64() as u32);
        m.put32(b + bootinfo::DRAM_SIZE, self.dram_mib);
        m.put32(b + bootinfo::PHY_MEM_DESC_ADDR, self.bootmem_at as u32);
        m.put32(b + bootinfo::ECLOCK_HZ, self.eclock);
        m.put32(b + bootinfo::DCLOCK_HZ, self.dclock);
        m.put16(b + bootinfo::BOARD_TYPE, self.board_type);
        m.put(b + bootinfo::BOARD_REV_MAJOR, &[self.rev.0, self.rev.1]);
        if self.minor >= 2 {
            m.put32(b + bootinfo::CONFIG_FLAGS, 0);
        }
        if self.minor >= 3 {
            m.put64(b + bootinfo::FDT_ADDR, self.fdt.map_or(0, |f| f.0));
        }
        if self.minor >= 4 {
            for (i, w) in self.core_mask.0.iter().enumerate() {
                m.put64(b + bootinfo::EXT_CORE_MASK + 8 * i as u64, *w);
            }
        }

        let bm = self.bootmem_at;
        m.put32(bm + bootmem::LOCK, self.lock);
        m.put32(bm + 4, 0);
        m.put64(
            bm + bootmem::HEAD_ADDR,
            self.free.first().map_or(0, |f| f.0),
        );
        m.put32(bm + bootmem::MAJOR, self.bootmem_version.0);
        m.put32(bm + bootmem::MINOR, self.bootmem_version.1);
        for (i, &(addr, size)) in self.free.iter().enumerate() {
            let next = self.free.get(i + 1).map_or(0, |f| f.0);
            m.put64(addr + bootmem::BLOCK_NEXT, next);
            m.put64(addr + bootmem::BLOCK_SIZE, size);
        }
        if let Some((addr, size)) = self.fdt {
            m.put32(addr, FDT_MAGIC);
            m.put32(addr + 4, size);
        }
        m
    }

    fn regs(&self) -> EntryRegs {
        EntryRegs {
            a0: self.args.len() as u64,
            a1: 0xdead_beef,
            a2: 1,
            a3: XKPHYS | self.desc_at,
        }
    }

    fn parse(&self) -> Result<(BootInfo, OcteonInfo), OcteonError> {
        parse(&self.build(), &self.regs(), KERNEL, 0)
    }
}

fn spans(m: &MemoryMap) -> Vec<(u64, u64, RegionKind)> {
    m.regions()
        .iter()
        .map(|r| (r.start, r.end, r.kind))
        .collect()
}

#[test]
fn dram_windows() {
    let d = Dram::from_size(128 << 20);
    assert_eq!(d.ranges(), &[(0, 0x800_0000)]);
    let d = Dram::from_size(384 << 20);
    assert_eq!(
        d.ranges(),
        &[(0, 0x1000_0000), (0x4_1000_0000, 0x4_1800_0000)]
    );
    let d = Dram::from_size(1 << 30);
    assert_eq!(
        d.ranges(),
        &[
            (0, 0x1000_0000),
            (0x4_1000_0000, 0x4_2000_0000),
            (0x2000_0000, 0x4000_0000)
        ]
    );
    assert_eq!(Dram::from_size(64 << 30).total, MAX_DRAM);
    assert!(d.contains(0x2000_0000, 0x1000_0000));
    assert!(!d.contains(0x1000_0000, 1), "the I/O hole is not DRAM");
    assert!(
        !d.contains(0x0fff_fff0, 0x20),
        "a range may not span two windows"
    );
    assert!(!d.contains(u64::MAX - 4, 8));
}

#[test]
fn address_forms() {
    assert_eq!(kernel_addr_to_phys(0x8000_0000_0010_0000), Some(0x10_0000));
    assert_eq!(kernel_addr_to_phys(0x9800_0000_0010_0000), Some(0x10_0000));
    assert_eq!(kernel_addr_to_phys(0xffff_ffff_8110_0000), Some(0x110_0000));
    assert_eq!(kernel_addr_to_phys(0xffff_ffff_a000_0040), Some(0x40));
    assert_eq!(
        kernel_addr_to_phys(0x8001_1800_0000_0800),
        None,
        "I/O space"
    );
    assert_eq!(
        kernel_addr_to_phys(0x10_0000),
        None,
        "physical, not a pointer"
    );
    assert_eq!(
        kernel_addr_to_phys(0xc000_0000_0000_0000),
        None,
        "XKSEG is mapped"
    );
}

#[test]
fn mainline_ebb7304() {
    let (info, oct) = Board::mainline_ebb7304().parse().unwrap();
    assert_eq!(info.platform, "octeon");
    assert_eq!(info.cmdline.as_str(), "test=boot workload=none");
    assert_eq!(info.cpu_count, 4);
    assert_eq!(
        spans(&info.memory),
        vec![
            (0x8_0000, 0x10_0000, Usable),
            (0x10_0000, 0x10_1000, BootData),
            (0x10_1000, 0x110_0000, Usable),
            (0x110_0000, 0x118_0000, Kernel),
            (0x118_0000, 0x0fe0_0000, Usable),
            (0x0fe0_0000, 0x0fe0_8000, BootData),
            (0x0fe0_8000, 0x0ff0_0000, Usable),
            (0x0ff0_0000, 0x0ff0_2000, BootData),
            (0x0ff0_2000, 0x0fff_d000, Usable),
            (0x2000_0000, 0x8000_0000, Usable),
            (0x4_1000_0000, 0x4_2000_0000, Usable),
        ]
    );
    assert_eq!(oct.desc_version, 7);
    assert_eq!(oct.bootinfo_version, (1, 4));
    assert_eq!(oct.core_mask.low64(), 0xf);
    assert_eq!(oct.dram.total, 2 << 30);
    assert_eq!(oct.free_blocks, 3);
    assert_eq!(oct.fdt, Some((0x0fe0_0000, 0x8000)));
    assert_eq!(oct.bootmem_addr, 0x10_0000);
    assert_eq!(oct.eclock_hz, 1_200_000_000);
    let text = oct.to_string();
    assert!(text.contains("board NULL (type 0"), "{text}");
    assert!(
        text.contains("core mask 0xf (4 cores, boot core 0)"),
        "{text}"
    );
    assert!(
        text.contains("core clock 1200 MHz, DRAM clock 800 MHz, DRAM 2048 MiB"),
        "{text}"
    );
    assert!(
        text.contains("device tree at 0xfe00000 (32768 bytes)"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3);
}

#[test]
fn sdk_erlite() {
    let (info, oct) = Board::sdk_erlite().parse().unwrap();
    assert_eq!(info.cmdline.as_str(), "test=boot");
    assert_eq!(info.cpu_count, 2);
    assert_eq!(
        spans(&info.memory),
        vec![
            (0x2000, 0x3000, BootData),
            (0x10_0000, 0x110_0000, Usable),
            (0x110_0000, 0x118_0000, Kernel),
            (0x118_0000, 0x0f00_0000, Usable),
            (0x0f80_0000, 0x0f80_1000, BootData),
            (0x4_1000_0000, 0x4_2000_0000, Usable),
        ]
    );
    assert_eq!(oct.bootinfo_version, (1, 2));
    assert_eq!(oct.config_flags, Some(0));
    assert_eq!(oct.fdt, None);
    assert_eq!(oct.board_type, 20002);
    assert_eq!(oct.board_rev, (1, 2));
    let text = oct.to_string();
    assert!(
        text.contains("UBNT_E100 (EdgeRouter Lite) (type 20002, rev 1.2)"),
        "{text}"
    );
    assert!(
        text.contains("core clock 500 MHz, DRAM clock 266 MHz, DRAM 512 MiB"),
        "{text}"
    );
    assert!(text.contains("no device tree"), "{text}");
}

#[test]
fn sdk_er4_with_device_tree_and_extended_mask() {
    let mut b = Board::sdk_er4();
    // Cores above 63 (garbage, or a second node) are reported but not
    // counted: Samara drives cores 0..63.
    b.core_mask.0[8] = 0xff;
    let (info, oct) = b.parse().unwrap();
    assert_eq!(info.cpu_count, 4);
    assert_eq!(oct.core_mask.count(), 12);
    assert_eq!(
        oct.core_mask.to_string(),
        format!("0xff{}_000000000000000f", "_0000000000000000".repeat(7))
    );
    assert_eq!(oct.fdt, Some((0x8_0000, 0x6000)));
    assert_eq!(
        spans(&info.memory),
        vec![
            (0x2000, 0x3000, BootData),
            (0x8_0000, 0x8_6000, BootData),
            (0x10_0000, 0x110_0000, Usable),
            (0x110_0000, 0x118_0000, Kernel),
            (0x118_0000, 0x0f00_0000, Usable),
            (0x0f80_0000, 0x0f80_1000, BootData),
            (0x2000_0000, 0x4000_0000, Usable),
            (0x4_1000_0000, 0x4_2000_0000, Usable),
        ]
    );
    assert!(oct
        .to_string()
        .contains("UBNT_E300 (EdgeRouter 4/6P) (type 20300"));
    assert!(oct.to_string().contains("DRAM clock 533.333 MHz"));
}

#[test]
fn every_bootinfo_minor_version() {
    for minor in 0..=5 {
        let mut b = Board::sdk_er4();
        b.minor = minor;
        let (info, oct) = b.parse().unwrap_or_else(|e| panic!("minor {minor}: {e}"));
        assert_eq!(oct.bootinfo_version, (1, minor));
        assert_eq!(oct.config_flags.is_some(), minor >= 2, "minor {minor}");
        // The device tree address exists only from minor 3 on.
        assert_eq!(oct.fdt.is_some(), minor >= 3, "minor {minor}");
        assert_eq!(info.cpu_count, 4);
    }
    let (info, _) = Board::small_cn3010().parse().unwrap();
    assert_eq!(
        info.memory.total(Usable),
        0x07e0_0000 - 0x10_0000 - 0x8_0000
    );
    assert_eq!(info.cpu_count, 1);
}

#[test]
fn boot_data_and_free_blocks_are_page_rounded() {
    let mut b = Board::sdk_erlite();
    b.free = vec![(0x10_0010, 0x0f00_0000 - 0x10_0010 - 0x30)];
    let (info, _) = b.parse().unwrap();
    let r = spans(&info.memory);
    assert_eq!(r[1], (0x10_1000, 0x110_0000, Usable));
    assert_eq!(r[3], (0x118_0000, 0x0eff_f000, Usable));
    for reg in info.memory.regions() {
        assert!(
            reg.start.is_multiple_of(PAGE) && reg.end.is_multiple_of(PAGE),
            "{reg:?}"
        );
    }
}

#[test]
fn descriptor_pointer_and_versions() {
    let b = Board::sdk_erlite();
    let m = b.build();
    for a3 in [
        b.desc_at,                // physical, not XKPHYS
        XKPHYS | (b.desc_at + 4), // misaligned
        XKPHYS | 0x3000_0000,     // beyond the first window
        XKPHYS,                   // NULL
        XKPHYS | (DDR0_SIZE - 8), // descriptor would run off the window
        0x8001_1800_0000_0800,    // the UART
    ] {
        let regs = EntryRegs { a3, ..b.regs() };
        assert_eq!(
            parse(&m, &regs, KERNEL, 0).err(),
            Some(OcteonError::DescPointer(a3)),
            "{a3:#x}"
        );
    }
    // A CKSEG0 alias of the descriptor is accepted like Linux accepts it.
    let regs = EntryRegs {
        a3: 0xffff_ffff_8000_0000 | b.desc_at,
        ..b.regs()
    };
    assert!(parse(&m, &regs, KERNEL, 0).is_ok());

    for v in [0, 5, 8, 0xa5a5_a5a5] {
        let mut b = Board::sdk_erlite();
        b.desc_version = v;
        assert_eq!(b.parse().err(), Some(OcteonError::DescVersion(v)));
    }
    for s in [0, 200, 399, 4097] {
        let mut b = Board::sdk_erlite();
        b.desc_size = s;
        assert_eq!(b.parse().err(), Some(OcteonError::DescSize(s)));
    }
    let mut b = Board::sdk_erlite();
    b.major = 2;
    assert_eq!(
        b.parse().err(),
        Some(OcteonError::BootinfoVersion { major: 2, minor: 2 })
    );
    for p in [0, 0x0f80_0204, 0x1_0000_0000_0000, 0x3000_0000] {
        let mut b = Board::sdk_erlite();
        b.bootinfo_ptr = Some(p);
        assert_eq!(
            b.parse().err(),
            Some(OcteonError::BootinfoPointer(p)),
            "{p:#x}"
        );
    }
    // The bootinfo may also be given as an XKPHYS pointer.
    let mut b = Board::sdk_erlite();
    b.bootinfo_ptr = Some(XKPHYS | b.bootinfo_at);
    assert!(b.parse().is_ok());
}

#[test]
fn truncated_structures() {
    // A descriptor in the last bytes of a 128 MiB board: the first-window
    // check passes (the size is not known yet), the read does not.
    let mut b = Board::small_cn3010();
    b.desc_at = 0x0800_0000 - 0x100;
    let m = b.build_truncated_desc();
    let err = parse(&m, &b.regs(), KERNEL, 0).unwrap_err();
    assert!(
        matches!(
            err,
            OcteonError::Unreadable {
                what: "boot descriptor",
                ..
            }
        ),
        "{err}"
    );

    // A bootinfo whose minor version promises more than DRAM holds.
    let mut b = Board::small_cn3010();
    b.bootinfo_at = 0x0800_0000 - 0xa0;
    b.minor = 4;
    let m = b.build_without_ext_mask();
    assert_eq!(
        parse(&m, &b.regs(), KERNEL, 0).err(),
        Some(OcteonError::OutsideDram {
            what: "bootinfo",
            addr: b.bootinfo_at,
            len: 288
        })
    );

    // DRAM smaller than where the loader put its data.
    let mut b = Board::sdk_erlite();
    b.dram_mib = 64;
    let m = b.build_with_dram(512);
    assert_eq!(
        parse(&m, &b.regs(), KERNEL, 0).err(),
        Some(OcteonError::OutsideDram {
            what: "boot descriptor",
            addr: b.desc_at,
            len: 400
        })
    );
    let mut b = Board::sdk_erlite();
    b.dram_mib = 0;
    assert_eq!(
        b.build_with_dram(512).read_parse(&b),
        Err(OcteonError::NoDram)
    );
}

impl Board {
    /// The board's image, with DRAM of `mib` regardless of what the
    /// bootinfo claims.
    fn build_with_dram(&self, mib: u64) -> Fake {
        let real = Board {
            dram_mib: mib as u32,
            ..self.clone()
        };
        let mut m = real.build();
        m.put32(self.bootinfo_at + bootinfo::DRAM_SIZE, self.dram_mib);
        m
    }

    /// Only the first 0x100 bytes of the descriptor (the rest is past DRAM).
    fn build_truncated_desc(&self) -> Fake {
        let mut m = Fake {
            ram: self.dram(),
            bytes: BTreeMap::new(),
        };
        m.put32(self.desc_at, self.desc_version);
        m.put32(self.desc_at + 4, self.desc_size);
        m
    }

    /// A minor-4 bootinfo whose extended core mask would lie past DRAM.
    fn build_without_ext_mask(&self) -> Fake {
        let b = Board {
            minor: 2,
            ..self.clone()
        };
        let mut m = b.build();
        m.put32(self.bootinfo_at + bootinfo::MINOR, self.minor);
        m
    }
}

impl Fake {
    fn read_parse(&self, b: &Board) -> Result<(), OcteonError> {
        parse(self, &b.regs(), KERNEL, 0).map(|_| ())
    }
}

#[test]
fn arguments() {
    let mut b = Board::sdk_erlite();
    b.args = vec![
        b" test=boot  per_vma_lock=off ".to_vec(),
        b"workload=none".to_vec(),
    ];
    let (info, _) = b.parse().unwrap();
    assert_eq!(
        info.cmdline.as_str(),
        "test=boot per_vma_lock=off workload=none"
    );

    b.args = vec![];
    assert_eq!(b.parse().unwrap().0.cmdline.as_str(), "");

    // Without `endbootargs`, U-Boot passes its whole command line.
    b.args = vec![
        b"bootoctlinux".to_vec(),
        b"0x20000000".to_vec(),
        b"coremask=0x3".to_vec(),
    ];
    assert_eq!(b.parse().err(), Some(OcteonError::MissingEndBootArgs));

    b.args = vec![b"ok".to_vec(); 65];
    let m = b.build_args_over_limit();
    assert_eq!(m.read_parse(&b), Err(OcteonError::TooManyArgs(65)));

    b.args = vec![b"a=\xff".to_vec()];
    assert_eq!(
        b.parse().err(),
        Some(OcteonError::CmdLine(CmdLineError::NotUtf8(2)))
    );

    // NULL, out-of-DRAM and unterminated argv entries.
    let b = Board::sdk_erlite();
    let mut m = b.build();
    m.put32(b.desc_at + desc::ARGV, 0);
    assert_eq!(m.read_parse(&b), Err(OcteonError::NullArg { index: 0 }));
    m.put32(b.desc_at + desc::ARGV, 0x1000_0000);
    assert!(matches!(
        m.read_parse(&b),
        Err(OcteonError::OutsideDram {
            what: "argv string",
            addr: 0x1000_0000,
            ..
        })
    ));
    // A string that runs into the unwritten (0xa5) part of DRAM.
    m.put32(b.desc_at + desc::ARGV, 0x0e00_0000);
    assert_eq!(
        m.read_parse(&b),
        Err(OcteonError::Unterminated {
            index: 0,
            phys: 0x0e00_0000
        })
    );
    // One that runs off the end of the DDR1 window, byte by byte.
    m.put32(b.desc_at + desc::ARGV, 0x4_1fff_fffc_u64 as u32);
    assert!(m.read_parse(&b).is_err());
}

impl Board {
    /// An image whose argc is 65 (the builder refuses to write past argv[63]).
    fn build_args_over_limit(&self) -> Fake {
        let b = Board {
            args: self.args[..64].to_vec(),
            ..self.clone()
        };
        let mut m = b.build();
        m.put32(self.desc_at + desc::ARGC, 65);
        m
    }
}

#[test]
fn core_masks() {
    let mut b = Board::sdk_erlite();
    b.core_mask = CoreMask::from_low(0);
    assert_eq!(b.parse().err(), Some(OcteonError::EmptyCoreMask));
    b.core_mask = CoreMask::from_low(0b110);
    assert_eq!(
        b.parse().err(),
        Some(OcteonError::BootCoreNotInMask {
            core: 0,
            mask: 0b110
        })
    );
    // Another boot core is fine when it is in the mask.
    let m = b.build();
    let (info, oct) = parse(&m, &b.regs(), KERNEL, 2).unwrap();
    assert_eq!((info.cpu_count, oct.boot_core), (2, 2));
    // Minor < 4: only the 32-bit mask counts, whatever lies at offset 160.
    let mut b = Board::sdk_erlite();
    b.minor = 3;
    b.core_mask = CoreMask::from_low(0xffff_ffff);
    assert_eq!(b.parse().unwrap().0.cpu_count, 32);
}

#[test]
fn bootmem_descriptor() {
    let mut b = Board::sdk_erlite();
    b.bootmem_at = 0;
    assert_eq!(b.parse().err(), Some(OcteonError::NoBootmem));
    let mut b = Board::sdk_erlite();
    b.bootmem_at = 0x2004;
    assert_eq!(
        b.parse().err(),
        Some(OcteonError::Misaligned {
            what: "bootmem descriptor",
            addr: 0x2004,
            align: 8
        })
    );
    for v in [(0, 0), (4, 0)] {
        let mut b = Board::sdk_erlite();
        b.bootmem_version = v;
        assert_eq!(
            b.parse().err(),
            Some(OcteonError::BootmemVersion {
                major: v.0,
                minor: v.1
            })
        );
    }
    let mut b = Board::sdk_erlite();
    b.bootmem_version = (2, 7);
    assert_eq!(b.parse().unwrap().1.bootmem_version, (2, 7));
    b.lock = 1;
    assert_eq!(b.parse().err(), Some(OcteonError::BootmemLocked(1)));
    let mut b = Board::sdk_erlite();
    b.bootmem_at = 0x1000_0000 - 0x20;
    assert!(matches!(
        b.build_with_bootmem_past_window().read_parse(&b),
        Err(OcteonError::OutsideDram {
            what: "bootmem descriptor",
            ..
        })
    ));
}

impl Board {
    fn build_with_bootmem_past_window(&self) -> Fake {
        let mut m = Board {
            bootmem_at: 0x2000,
            ..self.clone()
        }
        .build();
        m.put32(
            self.bootinfo_at + bootinfo::PHY_MEM_DESC_ADDR,
            self.bootmem_at as u32,
        );
        m
    }
}

#[test]
fn free_list_corruption() {
    let base = Board::mainline_ebb7304();
    let b1 = base.free[0].0;
    let b2 = base.free[1].0;

    // A cycle: the last block links back to the first.
    let mut m = base.build();
    m.put64(base.free[2].0 + bootmem::BLOCK_NEXT, b1);
    assert_eq!(
        m.read_parse(&base),
        Err(OcteonError::FreeListOrder {
            prev: base.free[2].0,
            next: b1
        })
    );
    // A self-link.
    let mut m = base.build();
    m.put64(b1 + bootmem::BLOCK_NEXT, b1);
    assert_eq!(
        m.read_parse(&base),
        Err(OcteonError::FreeListOrder { prev: b1, next: b1 })
    );
    // Overlap: the first block grows into the second.
    let mut m = base.build();
    m.put64(b1 + bootmem::BLOCK_NEXT, 0x0800_0000);
    m.put64(0x0800_0000 + bootmem::BLOCK_NEXT, 0);
    m.put64(0x0800_0000 + bootmem::BLOCK_SIZE, 0x1000);
    assert_eq!(
        m.read_parse(&base),
        Err(OcteonError::FreeListOverlap {
            prev_end: base.free[0].0 + base.free[0].1,
            next: 0x0800_0000
        })
    );
    // Zero, misaligned and address-space-wrapping sizes.
    for size in [0, 8, 0x1001, u64::MAX - 0xf] {
        let mut m = base.build();
        m.put64(b2 + bootmem::BLOCK_SIZE, size);
        let err = m.read_parse(&base).unwrap_err();
        assert!(
            matches!(
                err,
                OcteonError::FreeBlockSize { .. } | OcteonError::OutsideDram { .. }
            ),
            "size {size:#x}: {err}"
        );
    }
    // A block that runs from DDR0 into the I/O hole.
    let mut m = base.build();
    m.put64(b1 + bootmem::BLOCK_SIZE, 0x1000_0000);
    assert!(matches!(
        m.read_parse(&base),
        Err(OcteonError::OutsideDram { what: "free block", addr, .. }) if addr == b1
    ));
    // A block in the hole itself, and one past the end of DRAM.
    for bad in [0x1800_0000, 0x9000_0000] {
        let mut m = base.build();
        m.put64(b1 + bootmem::BLOCK_NEXT, bad);
        assert!(
            matches!(m.read_parse(&base), Err(OcteonError::OutsideDram { addr, .. }) if addr == bad),
            "{bad:#x}"
        );
    }
    // A misaligned link.
    let mut m = base.build();
    m.put64(b1 + bootmem::BLOCK_NEXT, b2 + 8);
    assert_eq!(
        m.read_parse(&base),
        Err(OcteonError::Misaligned {
            what: "free block",
            addr: b2 + 8,
            align: 16
        })
    );
    // An empty list leaves nothing usable.
    let mut b = Board::sdk_erlite();
    b.free.clear();
    assert_eq!(b.parse().err(), Some(OcteonError::NoUsableMemory));
    // Only the kernel's own pages free: nothing usable either.
    b.free = vec![(KERNEL.0, KERNEL.1 - KERNEL.0)];
    assert_eq!(b.parse().err(), Some(OcteonError::NoUsableMemory));
}

#[test]
fn free_list_length_is_bounded() {
    // 300 sorted 32-byte blocks, one every 8 KiB: valid links, too many.
    let mut b = Board::sdk_erlite();
    b.free = (0..300).map(|i| (0x200_0000 + i * 0x2000, 0x20)).collect();
    assert_eq!(b.parse().err(), Some(OcteonError::FreeListTooLong));
    // Exactly MAX_FREE_BLOCKS is accepted (tiny blocks round to nothing,
    // so add one real block at the end).
    b.free = (0..MAX_FREE_BLOCKS as u64 - 1)
        .map(|i| (0x200_0000 + i * 0x2000, 0x20))
        .collect();
    b.free.push((0x400_0000, 0x100_0000));
    let (info, oct) = b.parse().unwrap();
    assert_eq!(oct.free_blocks, MAX_FREE_BLOCKS);
    assert_eq!(info.memory.total(Usable), 0x100_0000);
}

#[test]
fn device_tree() {
    let mut b = Board::sdk_er4();
    let mut m = b.build();
    m.put32(0x8_0000, 0xfeed_d00d);
    assert_eq!(
        m.read_parse(&b),
        Err(OcteonError::FdtMagic {
            addr: 0x8_0000,
            magic: 0xfeed_d00d
        })
    );
    for size in [0, 39, (2 << 20) + 1] {
        b.fdt = Some((0x8_0000, size));
        assert_eq!(
            b.parse().err(),
            Some(OcteonError::FdtSize {
                addr: 0x8_0000,
                size
            })
        );
    }
    b.fdt = Some((0x8_0004, 0x100));
    assert_eq!(
        b.parse().err(),
        Some(OcteonError::Misaligned {
            what: "device tree",
            addr: 0x8_0004,
            align: 8
        })
    );
    // Minor 3 with a NULL device tree address: none.
    let mut b = Board::sdk_er4();
    b.minor = 3;
    b.fdt = None;
    assert_eq!(b.parse().unwrap().1.fdt, None);
}

#[test]
fn kernel_placement() {
    let b = Board::sdk_erlite();
    let m = b.build();
    for k in [
        (0x8_0000, 0x10_0000),      // inside U-Boot's first MiB
        (0x110_0000, 0x110_0000),   // empty
        (0x0ff0_0000, 0x1010_0000), // runs into the I/O hole
        (0x2000_0000, 0x2010_0000), // not in the first window
    ] {
        assert_eq!(
            parse(&m, &b.regs(), k, 0).err(),
            Some(OcteonError::KernelOutsideRam {
                start: k.0,
                end: k.1
            }),
            "{k:x?}"
        );
    }
    // Boot data loaded over the kernel image.
    assert_eq!(
        parse(&m, &b.regs(), (0x0f70_0000, 0x0f90_0000), 0).err(),
        Some(OcteonError::KernelOverlaps {
            what: "boot descriptor",
            addr: b.desc_at
        })
    );
    let b = Board::mainline_ebb7304();
    let m = b.build();
    assert_eq!(
        parse(&m, &b.regs(), (0x0fd0_0000, 0x0fe0_1000), 0).err(),
        Some(OcteonError::KernelOverlaps {
            what: "device tree",
            addr: 0x0fe0_0000
        })
    );
}

#[test]
fn corrupted_images_never_panic() {
    // Flip bytes of every structure the parser reads, many times over,
    // with a fixed-seed generator: every outcome must be an Ok or an Err.
    let boards = [
        Board::mainline_ebb7304(),
        Board::sdk_erlite(),
        Board::sdk_er4(),
    ];
    let mut seed: u64 = 0x5a5a_1234_dead_beef;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut errors = 0;
    for round in 0..3000 {
        let b = &boards[round % boards.len()];
        let mut m = b.build();
        let targets = [
            (b.desc_at, 400),
            (b.bootinfo_at, 288),
            (b.bootmem_at, 48),
            (b.free[0].0, 16),
            (b.free[1].0, 16),
        ];
        for _ in 0..1 + next() % 4 {
            let (base, len) = targets[(next() % targets.len() as u64) as usize];
            let at = base + next() % len;
            m.put(at, &[next() as u8]);
        }
        if m.read_parse(b).is_err() {
            errors += 1;
        }
    }
    // Most single-byte corruptions hit a checked field; some land in
    // padding or reserved fields and still parse.
    assert!(errors > 1000, "{errors} of 3000 corrupted images rejected");
}

#[test]
fn error_messages_name_the_problem() {
    let m = OcteonError::FreeListOrder {
        prev: 0x2000,
        next: 0x1000,
    }
    .to_string();
    assert!(m.contains("0x2000") && m.contains("cycle"), "{m}");
    let m = OcteonError::MissingEndBootArgs.to_string();
    assert!(m.contains("endbootargs"), "{m}");
    let m = OcteonError::DescPointer(0x1234).to_string();
    assert!(m.contains("a3 = 0x1234") && m.contains("XKPHYS"), "{m}");
}
