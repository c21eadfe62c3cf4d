//! Program-header checks for Octeon kernel images, before they go near a
//! board.
//!
//! U-Boot's `bootoctlinux` copies each loadable part of the ELF file (it
//! holds in DRAM at `loadaddr`, where `tftpboot`/`fatload` put it) to the
//! part's address. For that to work:
//!
//! - the image is ELF64, big-endian, MIPS, an executable;
//! - every PT_LOAD has `p_vaddr == p_paddr` in the 32-bit compatibility
//!   space CKSEG0 (`0xffff_ffff_8000_0000 + physical`, sign-extended 32-bit
//!   addresses, as Linux's `vmlinux.64` has them), so both the copy and the
//!   kernel's own unmapped execution use the same bytes;
//! - the physical ranges lie in the first DRAM window above the MiB U-Boot
//!   keeps ([`LOW_RESERVED`]..[`DDR0_END`]);
//! - the entry point is in an executable segment;
//! - no segment overlaps the file itself at `loadaddr`: the copy would
//!   overwrite the part of the file it has not copied yet.
//!
//! Usual load addresses ([`KNOWN_LOADADDRS`]): 0x20000000 for Cavium SDK
//! U-Boot (EdgeRouter 4/6P and the evaluation boards), 0x9f00000 on the
//! EdgeRouter Lite, and 0xffffffff80100000 (physical 1 MiB) for mainline
//! U-Boot (`CONFIG_SYS_LOAD_ADDR`, e.g. `octeon_ebb7304_defconfig`).

use crate::{Error, Result};

/// The 32-bit compatibility segments in their sign-extended 64-bit form.
pub const CKSEG0: u64 = 0xffff_ffff_8000_0000;
pub const CKSEG1: u64 = 0xffff_ffff_a000_0000;
/// U-Boot keeps physical 0..1 MiB for itself.
pub const LOW_RESERVED: u64 = 1 << 20;
/// End of the first Octeon DRAM window (the boot-bus hole follows).
pub const DDR0_END: u64 = 0x1000_0000;

/// Load addresses found in the wild, as physical addresses, with where.
pub const KNOWN_LOADADDRS: &[(u64, &str)] = &[
    (
        0x0010_0000,
        "mainline U-Boot's CONFIG_SYS_LOAD_ADDR (0xffffffff80100000)",
    ),
    (0x09f0_0000, "the EdgeRouter Lite's loadaddr"),
    (0x2000_0000, "Cavium SDK U-Boot's loadaddr"),
];

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const EM_MIPS: u16 = 8;
const ET_EXEC: u16 = 2;

/// One PT_LOAD program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub flags: u32,
}

/// What the checks need from an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    pub entry: u64,
    pub loads: Vec<Segment>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses the header and program headers of a big-endian ELF64 MIPS
/// executable.
pub fn parse(b: &[u8]) -> Result<Elf> {
    let bad = |what: &str| Error::new(format!("not a usable Octeon kernel image: {what}"));
    if b.get(..4) != Some(b"\x7fELF") {
        return Err(bad("no ELF magic"));
    }
    if b.get(4) != Some(&2) {
        return Err(bad(
            "not ELF64 (bootoctlinux starts 64-bit kernels from ELF64 files)",
        ));
    }
    if b.get(5) != Some(&2) {
        return Err(bad("not big-endian"));
    }
    let truncated = || bad("truncated ELF header");
    if be16(b, 18).ok_or_else(truncated)? != EM_MIPS {
        return Err(bad("e_machine is not MIPS"));
    }
    if be16(b, 16).ok_or_else(truncated)? != ET_EXEC {
        return Err(bad("not an executable (ET_EXEC)"));
    }
    let entry = be64(b, 24).ok_or_else(truncated)?;
    let phoff = be64(b, 32).ok_or_else(truncated)?;
    let phentsize = be16(b, 54).ok_or_else(truncated)? as usize;
    let phnum = be16(b, 56).ok_or_else(truncated)? as usize;
    if phentsize < 56 {
        return Err(bad(
            "program header entries are smaller than ELF64's 56 bytes",
        ));
    }
    let mut loads = Vec::new();
    for i in 0..phnum {
        let at = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(i * phentsize))
            .ok_or_else(|| bad("program header offset out of range"))?;
        let ph = b
            .get(at..at + 56)
            .ok_or_else(|| bad("program headers run past the end of the file"))?;
        if be32(ph, 0) != Some(PT_LOAD) {
            continue;
        }
        let seg = Segment {
            flags: be32(ph, 4).unwrap_or(0),
            vaddr: be64(ph, 16).unwrap_or(0),
            paddr: be64(ph, 24).unwrap_or(0),
            filesz: be64(ph, 32).unwrap_or(0),
            memsz: be64(ph, 40).unwrap_or(0),
        };
        let offset = be64(ph, 8).unwrap_or(0);
        if offset
            .checked_add(seg.filesz)
            .is_none_or(|end| end > b.len() as u64)
        {
            return Err(bad(&format!(
                "segment {i} claims file bytes past the end of the file"
            )));
        }
        loads.push(seg);
    }
    Ok(Elf { entry, loads })
}

/// The physical address U-Boot uses for `loadaddr`: CKSEG0/CKSEG1 and
/// 32-bit KSEG0/KSEG1 forms are translated, anything else is physical.
pub fn loadaddr_phys(addr: u64) -> u64 {
    if (CKSEG0..0xffff_ffff_c000_0000).contains(&addr) || (0x8000_0000..0xc000_0000).contains(&addr)
    {
        addr & 0x1fff_ffff
    } else {
        addr
    }
}

/// The image as it will sit in a board's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub entry: u64,
    /// Physical extent of all PT_LOAD segments (memory sizes).
    pub phys_start: u64,
    pub phys_end: u64,
    /// Where the file itself lies while U-Boot copies it: `[start, end)`.
    pub file_at: (u64, u64),
    /// Known load addresses of other boot loaders that this image would
    /// collide with (advice; the chosen one is an error).
    pub warnings: Vec<String>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Checks `image` (the ELF file's bytes) for a board whose U-Boot loads the
/// file at `loadaddr`.
pub fn check_octeon(image: &[u8], loadaddr: u64) -> Result<Layout> {
    let elf = parse(image)?;
    if elf.loads.is_empty() {
        return Err(Error::new("the image has no PT_LOAD segment"));
    }
    let mut phys_start = u64::MAX;
    let mut phys_end = 0;
    let mut entry_ok = false;
    for (i, s) in elf.loads.iter().enumerate() {
        let end = s.vaddr.checked_add(s.memsz);
        if s.vaddr < CKSEG0 || end.is_none_or(|e| e > CKSEG1) {
            return Err(Error::new(format!(
                "segment {i} at {:#x} (+{:#x}) is not in CKSEG0, the 32-bit compatibility \
                 space U-Boot and the kernel both address it through",
                s.vaddr, s.memsz
            )));
        }
        if s.paddr != s.vaddr {
            return Err(Error::new(format!(
                "segment {i}: p_paddr {:#x} differs from p_vaddr {:#x}",
                s.paddr, s.vaddr
            )));
        }
        if s.memsz < s.filesz {
            return Err(Error::new(format!("segment {i}: p_memsz < p_filesz")));
        }
        let (ps, pe) = (s.vaddr - CKSEG0, s.vaddr - CKSEG0 + s.memsz);
        if ps < LOW_RESERVED || pe > DDR0_END {
            return Err(Error::new(format!(
                "segment {i} at physical [{ps:#x}, {pe:#x}) is outside \
                 [{LOW_RESERVED:#x}, {DDR0_END:#x}): U-Boot's first MiB or beyond the first DRAM window"
            )));
        }
        phys_start = phys_start.min(ps);
        phys_end = phys_end.max(pe);
        if s.flags & PF_X != 0 && (s.vaddr..s.vaddr + s.memsz).contains(&elf.entry) {
            entry_ok = true;
        }
    }
    if !entry_ok {
        return Err(Error::new(format!(
            "entry point {:#x} is not in an executable segment",
            elf.entry
        )));
    }
    let file_len = image.len() as u64;
    let region = |base: u64| (base, base.saturating_add(file_len));
    let at = region(loadaddr_phys(loadaddr));
    for (i, s) in elf.loads.iter().enumerate() {
        let seg = (s.vaddr - CKSEG0, s.vaddr - CKSEG0 + s.memsz);
        if overlaps(seg, at) {
            return Err(Error::new(format!(
                "segment {i} at physical [{:#x}, {:#x}) overlaps the file itself at loadaddr \
                 [{:#x}, {:#x}): U-Boot would overwrite the image while copying it; choose \
                 another --loadaddr",
                seg.0, seg.1, at.0, at.1
            )));
        }
    }
    let warnings = KNOWN_LOADADDRS
        .iter()
        .filter(|(base, _)| *base != at.0 && overlaps((phys_start, phys_end), region(*base)))
        .map(|(base, who)| {
            format!(
                "the image [{phys_start:#x}, {phys_end:#x}) would overlap a file loaded at \
                 {base:#x} ({who})"
            )
        })
        .collect();
    Ok(Layout {
        entry: elf.entry,
        phys_start,
        phys_end,
        file_at: at,
        warnings,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 big-endian MIPS executable with the given PT_LOADs
    /// (vaddr, paddr, memsz, flags) and total file length.
    pub(crate) fn image(entry: u64, loads: &[(u64, u64, u64, u32)], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(64 + 56 * loads.len())];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 2; // ELFDATA2MSB
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_be_bytes());
        b[18..20].copy_from_slice(&EM_MIPS.to_be_bytes());
        b[24..32].copy_from_slice(&entry.to_be_bytes());
        b[32..40].copy_from_slice(&64u64.to_be_bytes());
        b[54..56].copy_from_slice(&56u16.to_be_bytes());
        b[56..58].copy_from_slice(&(loads.len() as u16).to_be_bytes());
        for (i, &(v, p, memsz, flags)) in loads.iter().enumerate() {
            let ph = 64 + 56 * i;
            b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_be_bytes());
            b[ph + 4..ph + 8].copy_from_slice(&flags.to_be_bytes());
            b[ph + 8..ph + 16].copy_from_slice(&0u64.to_be_bytes());
            b[ph + 16..ph + 24].copy_from_slice(&v.to_be_bytes());
            b[ph + 24..ph + 32].copy_from_slice(&p.to_be_bytes());
            b[ph + 32..ph + 40].copy_from_slice(&64u64.to_be_bytes());
            b[ph + 40..ph + 48].copy_from_slice(&memsz.to_be_bytes());
        }
        b
    }

    const K: u64 = 0xffff_ffff_8110_0000;

    fn good() -> Vec<u8> {
        image(
            K,
            &[
                (K, K, 0x2_0000, 5),
                (K + 0x2_0000, K + 0x2_0000, 0x1_0000, 6),
            ],
            0x4_0000,
        )
    }

    #[test]
    fn accepts_a_ckseg0_image() {
        let l = check_octeon(&good(), 0x2000_0000).unwrap();
        assert_eq!((l.phys_start, l.phys_end), (0x110_0000, 0x113_0000));
        assert_eq!(l.file_at, (0x2000_0000, 0x2004_0000));
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        // The same image is fine for mainline's and the ERLite's addresses.
        assert!(check_octeon(&good(), 0xffff_ffff_8010_0000).is_ok());
        assert!(check_octeon(&good(), 0x9f0_0000).is_ok());
    }

    #[test]
    fn rejects_wrong_formats() {
        let mut b = good();
        b[4] = 1;
        assert!(check_octeon(&b, 0x2000_0000)
            .unwrap_err()
            .0
            .contains("ELF64"));
        let mut b = good();
        b[5] = 1;
        assert!(check_octeon(&b, 0x2000_0000)
            .unwrap_err()
            .0
            .contains("big-endian"));
        let mut b = good();
        b[19] = 3;
        assert!(check_octeon(&b, 0x2000_0000)
            .unwrap_err()
            .0
            .contains("MIPS"));
        assert!(check_octeon(b"\x7fELF", 0).is_err());
        assert!(check_octeon(b"MZ", 0).unwrap_err().0.contains("magic"));
        let mut b = good();
        b[56..58].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(check_octeon(&b, 0x2000_0000)
            .unwrap_err()
            .0
            .contains("past the end"));
    }

    #[test]
    fn rejects_segments_outside_the_compatibility_space() {
        // XKPHYS and a plain physical address: not CKSEG0.
        for v in [0x9800_0000_0110_0000, 0x110_0000, 0xffff_ffff_a110_0000] {
            let b = image(v, &[(v, v, 0x1000, 5)], 0x2000);
            let e = check_octeon(&b, 0x2000_0000).unwrap_err();
            assert!(e.0.contains("CKSEG0"), "{v:#x}: {e}");
        }
        // VMA != LMA.
        let b = image(K, &[(K, 0x110_0000, 0x1000, 5)], 0x2000);
        assert!(check_octeon(&b, 0x2000_0000)
            .unwrap_err()
            .0
            .contains("p_paddr"));
        // Over U-Boot's first MiB, and past the first DRAM window.
        let low = 0xffff_ffff_8008_0000;
        let b = image(low, &[(low, low, 0x1000, 5)], 0x2000);
        assert!(check_octeon(&b, 0x2000_0000)
            .unwrap_err()
            .0
            .contains("first MiB"));
        let hi = 0xffff_ffff_8fff_f000;
        let b = image(hi, &[(hi, hi, 0x2000, 5)], 0x4000);
        assert!(check_octeon(&b, 0x2000_0000).is_err());
        // Entry point outside the executable segment.
        let b = image(
            K + 0x2_0000,
            &[(K, K, 0x2_0000, 5), (K + 0x2_0000, K + 0x2_0000, 0x1000, 6)],
            0x4_0000,
        );
        assert!(check_octeon(&b, 0x2000_0000)
            .unwrap_err()
            .0
            .contains("entry point"));
    }

    #[test]
    fn rejects_an_image_over_its_own_load_region() {
        // A 20 MiB file at mainline's 1 MiB load address reaches the kernel
        // at 17 MiB.
        let b = image(K, &[(K, K, 0x1000, 5)], 20 << 20);
        let e = check_octeon(&b, 0xffff_ffff_8010_0000).unwrap_err();
        assert!(e.0.contains("overlaps the file itself"), "{e}");
        // Loaded right where the kernel goes.
        let e = check_octeon(&good(), 0x110_0000).unwrap_err();
        assert!(e.0.contains("--loadaddr"), "{e}");
        // Fine at the SDK's address, with a warning about mainline's.
        let l = check_octeon(&b, 0x2000_0000).unwrap();
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("mainline"), "{:?}", l.warnings);
    }

    #[test]
    fn load_address_forms() {
        assert_eq!(loadaddr_phys(0xffff_ffff_8010_0000), 0x10_0000);
        assert_eq!(loadaddr_phys(0x8010_0000), 0x10_0000);
        assert_eq!(loadaddr_phys(0x2000_0000), 0x2000_0000);
        assert_eq!(loadaddr_phys(0x9f0_0000), 0x9f0_0000);
    }
}
