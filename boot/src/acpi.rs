//! Finding the CPUs in the ACPI tables: RSDP, RSDT/XSDT, MADT.
//!
//! Layouts (ACPI 6.5, §5.2.5 RSDP, §5.2.6 system description table header,
//! §5.2.7 RSDT, §5.2.8 XSDT, §5.2.12 MADT; all little endian):
//!
//! ```text
//! RSDP (20 bytes, revision 0; 36 bytes, revision >= 2)
//!    0 "RSD PTR "   8 checksum (first 20 bytes sum to 0)   9 OEM ID[6]
//!   15 revision    16 u32 RSDT address   20 u32 length   24 u64 XSDT address
//!   32 extended checksum (all `length` bytes sum to 0)
//! table header (36 bytes)
//!    0 signature[4]  4 u32 length (whole table)  8 revision  9 checksum
//!   (the whole table sums to 0)
//! RSDT: header, then u32 table addresses; XSDT: header, then u64 addresses
//! MADT ("APIC"): header, 36 u32 local APIC address, 40 u32 flags, then
//!   entries [type u8, length u8, ...]:
//!   type 0 (processor local APIC, 8 bytes): 2 ACPI UID u8, 3 APIC ID u8, 4 u32 flags
//!   type 5 (local APIC address override, 12 bytes): 4 u64 address
//!   type 9 (processor local x2APIC, 16 bytes): 4 u32 x2APIC ID, 8 u32 flags, 12 u32 UID
//!   flags bit 0: enabled; bit 1: online capable (hot-plug; not started)
//! ```
//!
//! Every length and checksum is validated before a byte of the structure is
//! used, and everything is read through [`PhysMem`], so a corrupt table is
//! an error, never a wild read.

use core::fmt;

use crate::pvh::{u32_at, u64_at, PhysMem};

/// Most CPUs reported (Samara manages at most 64; more are counted in
/// [`Madt::ignored`]).
pub const MAX_CPUS: usize = 64;

const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;
const HEADER_LEN: usize = 36;
const MADT_FIXED_LEN: usize = HEADER_LEN + 8;
/// Tables larger than this are refused (a real MADT for 64 CPUs is < 2 KiB).
const MAX_TABLE_LEN: u32 = 1 << 20;

/// The BIOS read-only area the RSDP may be in when nobody passes its address.
pub const BIOS_AREA: (u64, u64) = (0xe_0000, 0x10_0000);
/// Where the BIOS data area stores the EBDA segment.
const EBDA_SEGMENT_PTR: u64 = 0x40e;

/// Why the CPUs could not be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// No valid RSDP where the boot loader said, nor in the EBDA or BIOS area.
    NoRsdp,
    /// A structure lies (partly) outside readable memory.
    Unreadable { what: &'static str, addr: u64 },
    /// A checksum does not add up.
    BadChecksum { what: &'static str, addr: u64 },
    /// A length field is impossible (too short for the structure, too large).
    BadLength {
        what: &'static str,
        addr: u64,
        len: u32,
    },
    /// A MADT entry runs past the table or has a length too short for its type.
    BadMadtEntry { offset: usize, kind: u8, len: u8 },
    /// The root table lists no MADT.
    NoMadt,
    /// The MADT lists no enabled processor.
    NoCpus,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AcpiError::NoRsdp => f.write_str("no ACPI RSDP found"),
            AcpiError::Unreadable { what, addr } => {
                write!(f, "{what} at {addr:#x} is not readable")
            }
            AcpiError::BadChecksum { what, addr } => write!(f, "{what} at {addr:#x}: bad checksum"),
            AcpiError::BadLength { what, addr, len } => {
                write!(f, "{what} at {addr:#x}: impossible length {len}")
            }
            AcpiError::BadMadtEntry { offset, kind, len } => write!(
                f,
                "MADT entry of type {kind} at offset {offset} has a bad length {len}"
            ),
            AcpiError::NoMadt => f.write_str("the ACPI root table lists no MADT (\"APIC\")"),
            AcpiError::NoCpus => f.write_str("the MADT lists no enabled processor"),
        }
    }
}

/// What the MADT says about the CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Madt {
    /// Physical address of the local APIC registers (xAPIC mode).
    pub lapic_addr: u64,
    /// APIC IDs of the enabled processors, in table order.
    apic_ids: [u32; MAX_CPUS],
    count: usize,
    /// Enabled processors beyond [`MAX_CPUS`], plus duplicates.
    pub ignored: usize,
}

impl Madt {
    /// APIC IDs of the enabled processors, in table order, without
    /// duplicates.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.count]
    }
}

fn read<'m>(
    mem: &'m impl PhysMem,
    what: &'static str,
    addr: u64,
    len: usize,
) -> Result<&'m [u8], AcpiError> {
    mem.read(addr, len)
        .ok_or(AcpiError::Unreadable { what, addr })
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

/// The root table: (address, whether it is the XSDT).
fn check_rsdp(mem: &impl PhysMem, addr: u64) -> Result<(u64, bool), AcpiError> {
    let v1 = read(mem, "RSDP", addr, RSDP_V1_LEN)?;
    if &v1[..8] != RSDP_SIGNATURE {
        return Err(AcpiError::NoRsdp);
    }
    if !sums_to_zero(v1) {
        return Err(AcpiError::BadChecksum { what: "RSDP", addr });
    }
    if v1[15] >= 2 {
        let head = read(mem, "RSDP", addr, RSDP_V2_LEN)?;
        let len = u32_at(head, 20);
        if (len as usize) < RSDP_V2_LEN || len > 4096 {
            return Err(AcpiError::BadLength {
                what: "RSDP",
                addr,
                len,
            });
        }
        let all = read(mem, "RSDP", addr, len as usize)?;
        if !sums_to_zero(all) {
            return Err(AcpiError::BadChecksum {
                what: "RSDP (extended)",
                addr,
            });
        }
        let xsdt = u64_at(head, 24);
        if xsdt != 0 {
            return Ok((xsdt, true));
        }
    }
    Ok((u64::from(u32_at(v1, 16)), false))
}

/// Scans `[start, end)` on 16-byte boundaries for a valid RSDP.
fn scan(mem: &impl PhysMem, start: u64, end: u64) -> Option<u64> {
    let mut a = start & !15;
    while a + RSDP_V1_LEN as u64 <= end {
        if mem
            .read(a, 8)
            .is_some_and(|s| s == RSDP_SIGNATURE.as_slice())
            && check_rsdp(mem, a).is_ok()
        {
            return Some(a);
        }
        a += 16;
    }
    None
}

/// Finds the RSDP: at `hint` if non-zero (the PVH start info's
/// `rsdp_paddr`), else in the first KiB of the EBDA, else in the BIOS area
/// (ACPI 6.5 §5.2.5.1).
pub fn find_rsdp(mem: &impl PhysMem, hint: u64) -> Result<u64, AcpiError> {
    if hint != 0 {
        check_rsdp(mem, hint)?;
        return Ok(hint);
    }
    if let Some(seg) = mem.read(EBDA_SEGMENT_PTR, 2) {
        let ebda = u64::from(u16::from_le_bytes([seg[0], seg[1]])) << 4;
        if ebda != 0 {
            if let Some(a) = scan(mem, ebda, ebda + 1024) {
                return Ok(a);
            }
        }
    }
    scan(mem, BIOS_AREA.0, BIOS_AREA.1).ok_or(AcpiError::NoRsdp)
}

/// Reads and validates the whole table at `addr`.
fn table<'m>(mem: &'m impl PhysMem, what: &'static str, addr: u64) -> Result<&'m [u8], AcpiError> {
    let head = read(mem, what, addr, HEADER_LEN)?;
    let len = u32_at(head, 4);
    if (len as usize) < HEADER_LEN || len > MAX_TABLE_LEN {
        return Err(AcpiError::BadLength { what, addr, len });
    }
    let all = read(mem, what, addr, len as usize)?;
    if !sums_to_zero(all) {
        return Err(AcpiError::BadChecksum { what, addr });
    }
    Ok(all)
}

/// Finds the MADT through the RSDP at `rsdp` and lists the enabled CPUs.
pub fn parse_madt(mem: &impl PhysMem, rsdp: u64) -> Result<Madt, AcpiError> {
    let (root_addr, xsdt) = check_rsdp(mem, rsdp)?;
    let root_what = if xsdt { "XSDT" } else { "RSDT" };
    let root = table(mem, root_what, root_addr)?;
    let entry = if xsdt { 8 } else { 4 };
    let mut madt_addr = None;
    for e in root[HEADER_LEN..].chunks_exact(entry) {
        let a = if xsdt {
            u64_at(e, 0)
        } else {
            u64::from(u32_at(e, 0))
        };
        if read(mem, "ACPI table", a, 4)? == b"APIC" {
            madt_addr = Some(a);
            break;
        }
    }
    let addr = madt_addr.ok_or(AcpiError::NoMadt)?;
    let t = table(mem, "MADT", addr)?;
    if t.len() < MADT_FIXED_LEN {
        return Err(AcpiError::BadLength {
            what: "MADT",
            addr,
            len: t.len() as u32,
        });
    }
    let mut m = Madt {
        lapic_addr: u64::from(u32_at(t, 36)),
        apic_ids: [0; MAX_CPUS],
        count: 0,
        ignored: 0,
    };
    let mut off = MADT_FIXED_LEN;
    while off < t.len() {
        let bad = |kind, len| AcpiError::BadMadtEntry {
            offset: off,
            kind,
            len,
        };
        if off + 2 > t.len() {
            return Err(bad(t[off], 0));
        }
        let (kind, len) = (t[off], t[off + 1]);
        if len < 2 || off + len as usize > t.len() {
            return Err(bad(kind, len));
        }
        let e = &t[off..off + len as usize];
        let cpu = match kind {
            0 if len >= 8 => Some((u32::from(e[3]), u32_at(e, 4))),
            9 if len >= 16 => Some((u32_at(e, 4), u32_at(e, 8))),
            5 if len >= 12 => {
                m.lapic_addr = u64_at(e, 4);
                None
            }
            0 | 9 | 5 => return Err(bad(kind, len)),
            _ => None,
        };
        if let Some((id, flags)) = cpu {
            if flags & 1 != 0 {
                if m.apic_ids().contains(&id) || m.count == MAX_CPUS {
                    m.ignored += 1;
                } else {
                    m.apic_ids[m.count] = id;
                    m.count += 1;
                }
            }
        }
        off += len as usize;
    }
    if m.count == 0 {
        return Err(AcpiError::NoCpus);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Physical memory `[0, bytes.len())`.
    struct Mem(Vec<u8>);

    impl PhysMem for Mem {
        fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
            let off = usize::try_from(pa).ok()?;
            self.0.get(off..off.checked_add(len)?)
        }
    }

    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let s = b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        b[at] = 0u8.wrapping_sub(s);
    }

    fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum
        t.extend_from_slice(b"SAMARA");
        t.extend_from_slice(b"TESTTABL");
        t.extend_from_slice(&[0; 12]);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn x2apic(id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![9, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
        e
    }

    fn madt(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for e in entries {
            body.extend_from_slice(e);
        }
        sdt(b"APIC", &body)
    }

    fn rsdp_v2(xsdt: u64, rsdt: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(RSDP_SIGNATURE);
        r.push(0);
        r.extend_from_slice(b"SAMARA");
        r.push(2);
        r.extend_from_slice(&rsdt.to_le_bytes());
        r.extend_from_slice(&(RSDP_V2_LEN as u32).to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0; 4]);
        fix_checksum(&mut r[..RSDP_V1_LEN], 8);
        fix_checksum(&mut r, 32);
        r
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(RSDP_SIGNATURE);
        r.push(0);
        r.extend_from_slice(b"SAMARA");
        r.push(0);
        r.extend_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    const RSDP: u64 = 0xf_5000;
    const XSDT: u64 = 0x7000;
    const MADT: u64 = 0x8000;
    const FACP: u64 = 0x9000;

    /// 1 MiB of memory with an RSDP v2 in the BIOS area -> XSDT -> (FACP, MADT).
    fn machine(madt_bytes: &[u8]) -> Mem {
        let mut m = Mem(vec![0; 0x10_0000]);
        let put = |m: &mut Mem, at: u64, b: &[u8]| {
            m.0[at as usize..at as usize + b.len()].copy_from_slice(b)
        };
        let mut xsdt_body = Vec::new();
        xsdt_body.extend_from_slice(&FACP.to_le_bytes());
        xsdt_body.extend_from_slice(&MADT.to_le_bytes());
        put(&mut m, XSDT, &sdt(b"XSDT", &xsdt_body));
        put(&mut m, FACP, &sdt(b"FACP", &[0; 8]));
        put(&mut m, MADT, madt_bytes);
        put(&mut m, RSDP, &rsdp_v2(XSDT, 0));
        m
    }

    #[test]
    fn finds_cpus_like_qemu_q35() {
        let t = madt(&[
            lapic(0, 0, 1),
            lapic(1, 1, 1),
            lapic(2, 2, 1),
            lapic(3, 3, 1),
            vec![1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0], // I/O APIC: skipped
            vec![2, 10, 0, 0, 2, 0, 0, 0, 0, 0],             // override: skipped
        ]);
        let m = machine(&t);
        let rsdp = find_rsdp(&m, 0).unwrap();
        assert_eq!(rsdp, RSDP);
        let madt = parse_madt(&m, rsdp).unwrap();
        assert_eq!(madt.apic_ids(), &[0, 1, 2, 3]);
        assert_eq!(madt.lapic_addr, 0xfee0_0000);
        assert_eq!(madt.ignored, 0);
        // The hint wins, and is validated.
        assert_eq!(find_rsdp(&m, RSDP).unwrap(), RSDP);
        assert_eq!(find_rsdp(&m, RSDP + 16).unwrap_err(), AcpiError::NoRsdp);
    }

    #[test]
    fn disabled_duplicate_x2apic_and_override() {
        let mut ov = vec![5, 12, 0, 0];
        ov.extend_from_slice(&0xfed0_0000u64.to_le_bytes());
        let t = madt(&[
            lapic(0, 4, 1),
            lapic(1, 5, 0), // disabled
            lapic(2, 6, 2), // online capable only: not started
            x2apic(300, 1),
            lapic(3, 4, 1), // duplicate
            ov,
        ]);
        let madt = parse_madt(&machine(&t), RSDP).unwrap();
        assert_eq!(madt.apic_ids(), &[4, 300]);
        assert_eq!(madt.ignored, 1);
        assert_eq!(madt.lapic_addr, 0xfed0_0000);
    }

    #[test]
    fn rsdt_through_v1_rsdp_in_the_ebda() {
        let mut m = machine(&madt(&[lapic(0, 0, 1), lapic(1, 7, 1)]));
        // Remove the v2 RSDP, put a v1 one in the EBDA (segment 0x9fc0).
        m.0[RSDP as usize..RSDP as usize + 8].fill(0);
        let rsdt_at = 0x6000u64;
        let mut body = Vec::new();
        body.extend_from_slice(&(MADT as u32).to_le_bytes());
        let rsdt = sdt(b"RSDT", &body);
        m.0[rsdt_at as usize..rsdt_at as usize + rsdt.len()].copy_from_slice(&rsdt);
        m.0[0x40e..0x410].copy_from_slice(&0x9fc0u16.to_le_bytes());
        let v1 = rsdp_v1(rsdt_at as u32);
        m.0[0x9fc10..0x9fc10 + v1.len()].copy_from_slice(&v1);
        let rsdp = find_rsdp(&m, 0).unwrap();
        assert_eq!(rsdp, 0x9fc10);
        assert_eq!(parse_madt(&m, rsdp).unwrap().apic_ids(), &[0, 7]);
    }

    #[test]
    fn rejects_corruption() {
        let good = madt(&[lapic(0, 0, 1)]);
        // A flipped byte breaks the MADT checksum.
        let mut bad = good.clone();
        bad[40] ^= 1;
        assert_eq!(
            parse_madt(&machine(&bad), RSDP).unwrap_err(),
            AcpiError::BadChecksum {
                what: "MADT",
                addr: MADT
            }
        );
        // An entry claiming to run past the table.
        let mut e = lapic(0, 0, 1);
        e[1] = 200;
        assert!(matches!(
            parse_madt(&machine(&madt(&[e])), RSDP).unwrap_err(),
            AcpiError::BadMadtEntry {
                kind: 0,
                len: 200,
                ..
            }
        ));
        // A zero-length entry would loop forever.
        assert!(matches!(
            parse_madt(&machine(&madt(&[vec![0x7f, 0]])), RSDP).unwrap_err(),
            AcpiError::BadMadtEntry { len: 0, .. }
        ));
        // A local APIC entry too short for its type.
        assert!(matches!(
            parse_madt(&machine(&madt(&[vec![0, 4, 0, 0]])), RSDP).unwrap_err(),
            AcpiError::BadMadtEntry {
                kind: 0,
                len: 4,
                ..
            }
        ));
        // No enabled processor.
        assert_eq!(
            parse_madt(&machine(&madt(&[lapic(0, 0, 0)])), RSDP).unwrap_err(),
            AcpiError::NoCpus
        );
        // A table length beyond readable memory.
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&0xf_f000u32.to_le_bytes());
        fix_checksum(&mut huge, 9);
        let m = machine(&huge);
        assert!(matches!(
            parse_madt(&m, RSDP).unwrap_err(),
            AcpiError::Unreadable { what: "MADT", .. }
        ));
        // A length shorter than the header.
        let mut short = good.clone();
        short[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            parse_madt(&machine(&short), RSDP).unwrap_err(),
            AcpiError::BadLength {
                what: "MADT",
                len: 10,
                ..
            }
        ));
        // An RSDP with a bad checksum is not found by the scan.
        let mut m = machine(&good);
        m.0[RSDP as usize + 9] ^= 0x55;
        assert_eq!(find_rsdp(&m, 0).unwrap_err(), AcpiError::NoRsdp);
        assert_eq!(
            find_rsdp(&m, RSDP).unwrap_err(),
            AcpiError::BadChecksum {
                what: "RSDP",
                addr: RSDP
            }
        );
        // No MADT in the root table.
        let mut m = machine(&good);
        m.0[MADT as usize..MADT as usize + 4].copy_from_slice(b"HPET");
        assert_eq!(parse_madt(&m, RSDP).unwrap_err(), AcpiError::NoMadt);
    }

    #[test]
    fn caps_at_max_cpus() {
        let entries: Vec<Vec<u8>> = (0..70).map(|i| x2apic(i, 1)).collect();
        let madt = parse_madt(&machine(&madt(&entries)), RSDP).unwrap();
        assert_eq!(madt.apic_ids().len(), MAX_CPUS);
        assert_eq!(madt.ignored, 6);
    }
}
