//! ELF64 executables: the header and the loadable segments of the user
//! programs the kernel embeds (`kernel/user/`), validated before the kernel
//! maps a byte of them.
//!
//! Layouts (System V gABI; all fields in the file's byte order, which the
//! caller names: little endian for x86_64, big endian for MIPS64):
//!
//! ```text
//! Elf64_Ehdr (64 bytes)                    Elf64_Phdr (56 bytes)
//!   0 e_ident[16]: 7f 'E' 'L' 'F', class     0 u32 p_type (1 = PT_LOAD)
//!     (2 = 64-bit), data (1 = LE, 2 = BE),   4 u32 p_flags (1 X, 2 W, 4 R)
//!     version 1                              8 u64 p_offset
//!  16 u16 e_type (2 = ET_EXEC)              16 u64 p_vaddr
//!  18 u16 e_machine (62 x86_64, 8 MIPS)     24 u64 p_paddr
//!  20 u32 e_version                         32 u64 p_filesz
//!  24 u64 e_entry                           40 u64 p_memsz
//!  32 u64 e_phoff                           48 u64 p_align
//!  54 u16 e_phentsize  56 u16 e_phnum
//! ```

use core::fmt;

pub const EM_X86_64: u16 = 62;
pub const EM_MIPS: u16 = 8;
const PT_LOAD: u32 = 1;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
/// Most loadable segments accepted.
pub const MAX_SEGMENTS: usize = 8;
const PAGE: u64 = 4096;

/// Byte order of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

/// A loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Segment {
    /// The page-aligned range the segment occupies.
    pub fn pages(&self) -> (u64, u64) {
        (
            self.vaddr & !(PAGE - 1),
            (self.vaddr + self.memsz).next_multiple_of(PAGE),
        )
    }
}

/// A validated executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl Program {
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// The page-aligned end of the highest segment (where the heap starts).
    pub fn end(&self) -> u64 {
        self.segments()
            .iter()
            .map(|s| s.pages().1)
            .max()
            .unwrap_or(0)
    }
}

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    BadMagic,
    NotElf64,
    WrongEndian,
    NotExecutable(u16),
    WrongMachine(u16),
    BadPhdrTable,
    TooManySegments,
    /// Segment `n`'s file bytes are outside the image, or memsz < filesz.
    BadSegment(usize),
    /// Segment `n` is not inside `[min_addr, va_end)`, or wraps.
    SegmentOutOfRange(usize),
    /// Segments `n` and an earlier one share a page.
    Overlap(usize),
    /// vaddr and offset disagree modulo the page size.
    Misaligned(usize),
    /// The entry point is in no executable segment.
    BadEntry(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::TooShort => f.write_str("shorter than an ELF header"),
            ElfError::BadMagic => f.write_str("not an ELF file"),
            ElfError::NotElf64 => f.write_str("not a 64-bit ELF file"),
            ElfError::WrongEndian => f.write_str("wrong byte order for this machine"),
            ElfError::NotExecutable(t) => write!(f, "ELF type {t} is not an executable"),
            ElfError::WrongMachine(m) => write!(f, "ELF machine {m} is not this architecture"),
            ElfError::BadPhdrTable => f.write_str("program header table outside the file"),
            ElfError::TooManySegments => {
                write!(f, "more than {MAX_SEGMENTS} loadable segments")
            }
            ElfError::BadSegment(n) => write!(f, "segment {n} lies outside the file"),
            ElfError::SegmentOutOfRange(n) => {
                write!(f, "segment {n} is outside the user address range")
            }
            ElfError::Overlap(n) => write!(f, "segment {n} overlaps an earlier one"),
            ElfError::Misaligned(n) => {
                write!(
                    f,
                    "segment {n}: address and offset differ modulo the page size"
                )
            }
            ElfError::BadEntry(e) => {
                write!(f, "entry point {e:#x} is not in an executable segment")
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    big: bool,
}

impl Reader<'_> {
    fn u16(&self, off: usize) -> u16 {
        let v = [self.b[off], self.b[off + 1]];
        if self.big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    }
    fn u32(&self, off: usize) -> u32 {
        let v = [
            self.b[off],
            self.b[off + 1],
            self.b[off + 2],
            self.b[off + 3],
        ];
        if self.big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }
    fn u64(&self, off: usize) -> u64 {
        let (a, b) = (u64::from(self.u32(off)), u64::from(self.u32(off + 4)));
        if self.big {
            a << 32 | b
        } else {
            b << 32 | a
        }
    }
}

/// Parses `image`, expecting `machine` and `endian`, with every segment
/// inside `[min_addr, va_end)`.
pub fn parse(
    image: &[u8],
    machine: u16,
    endian: Endian,
    min_addr: u64,
    va_end: u64,
) -> Result<Program, ElfError> {
    if image.len() < EHDR_LEN {
        return Err(ElfError::TooShort);
    }
    if image[..4] != [0x7f, b'E', b'L', b'F'] {
        return Err(ElfError::BadMagic);
    }
    if image[4] != 2 {
        return Err(ElfError::NotElf64);
    }
    let big = match (image[5], endian) {
        (1, Endian::Little) => false,
        (2, Endian::Big) => true,
        _ => return Err(ElfError::WrongEndian),
    };
    let r = Reader { b: image, big };
    let ty = r.u16(16);
    if ty != 2 {
        return Err(ElfError::NotExecutable(ty));
    }
    let m = r.u16(18);
    if m != machine {
        return Err(ElfError::WrongMachine(m));
    }
    let entry = r.u64(24);
    let phoff = r.u64(32);
    let phentsize = usize::from(r.u16(54));
    let phnum = usize::from(r.u16(56));
    let table_end = usize::try_from(phoff)
        .ok()
        .and_then(|o| o.checked_add(phnum.checked_mul(phentsize)?));
    if phentsize < PHDR_LEN || table_end.is_none_or(|e| e > image.len()) {
        return Err(ElfError::BadPhdrTable);
    }
    let mut p = Program {
        entry,
        segments: [Segment::default(); MAX_SEGMENTS],
        count: 0,
    };
    for i in 0..phnum {
        let o = phoff as usize + i * phentsize;
        if r.u32(o) != PT_LOAD {
            continue;
        }
        let n = p.count;
        if n == MAX_SEGMENTS {
            return Err(ElfError::TooManySegments);
        }
        let flags = r.u32(o + 4);
        let s = Segment {
            offset: r.u64(o + 8),
            vaddr: r.u64(o + 16),
            filesz: r.u64(o + 32),
            memsz: r.u64(o + 40),
            read: flags & 4 != 0,
            write: flags & 2 != 0,
            exec: flags & 1 != 0,
        };
        if s.filesz > s.memsz
            || s.offset
                .checked_add(s.filesz)
                .is_none_or(|e| e > image.len() as u64)
        {
            return Err(ElfError::BadSegment(n));
        }
        if s.vaddr < min_addr || s.vaddr.checked_add(s.memsz).is_none_or(|e| e > va_end) {
            return Err(ElfError::SegmentOutOfRange(n));
        }
        if s.vaddr % PAGE != s.offset % PAGE {
            return Err(ElfError::Misaligned(n));
        }
        let (a, b) = s.pages();
        if p.segments().iter().any(|t| {
            let (c, d) = t.pages();
            a < d && c < b
        }) {
            return Err(ElfError::Overlap(n));
        }
        p.segments[n] = s;
        p.count += 1;
    }
    if !p
        .segments()
        .iter()
        .any(|s| s.exec && (s.vaddr..s.vaddr + s.memsz).contains(&entry))
    {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seg {
        vaddr: u64,
        offset: u64,
        filesz: u64,
        memsz: u64,
        flags: u32,
    }

    fn build(big: bool, machine: u16, entry: u64, segs: &[Seg], file_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; file_len.max(EHDR_LEN + PHDR_LEN * segs.len())];
        let put16 = |b: &mut Vec<u8>, o: usize, v: u16| {
            let x = if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            b[o..o + 2].copy_from_slice(&x)
        };
        let put32 = |b: &mut Vec<u8>, o: usize, v: u32| {
            let x = if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            b[o..o + 4].copy_from_slice(&x)
        };
        let put64 = |b: &mut Vec<u8>, o: usize, v: u64| {
            let x = if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            b[o..o + 8].copy_from_slice(&x)
        };
        b[..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
        b[4] = 2;
        b[5] = if big { 2 } else { 1 };
        b[6] = 1;
        put16(&mut b, 16, 2);
        put16(&mut b, 18, machine);
        put32(&mut b, 20, 1);
        put64(&mut b, 24, entry);
        put64(&mut b, 32, EHDR_LEN as u64);
        put16(&mut b, 54, PHDR_LEN as u16);
        put16(&mut b, 56, segs.len() as u16);
        for (i, s) in segs.iter().enumerate() {
            let o = EHDR_LEN + i * PHDR_LEN;
            put32(&mut b, o, PT_LOAD);
            put32(&mut b, o + 4, s.flags);
            put64(&mut b, o + 8, s.offset);
            put64(&mut b, o + 16, s.vaddr);
            put64(&mut b, o + 24, s.vaddr);
            put64(&mut b, o + 32, s.filesz);
            put64(&mut b, o + 40, s.memsz);
            put64(&mut b, o + 48, PAGE);
        }
        b
    }

    fn user_like() -> Vec<Seg> {
        vec![
            Seg {
                vaddr: 0x40_0000,
                offset: 0x1000,
                filesz: 0x1800,
                memsz: 0x1800,
                flags: 5,
            },
            Seg {
                vaddr: 0x40_2000,
                offset: 0x3000,
                filesz: 0x100,
                memsz: 0x100,
                flags: 4,
            },
            Seg {
                vaddr: 0x40_3000,
                offset: 0x4000,
                filesz: 0x10,
                memsz: 0x2000,
                flags: 6,
            },
        ]
    }

    const END: u64 = (1 << 47) - 4096;

    #[test]
    fn parses_what_the_user_linker_script_makes() {
        for big in [false, true] {
            let img = build(big, EM_X86_64, 0x40_0010, &user_like(), 0x5000);
            let e = if big { Endian::Big } else { Endian::Little };
            let p = parse(&img, EM_X86_64, e, 0x10000, END).unwrap();
            assert_eq!(p.entry, 0x40_0010);
            assert_eq!(p.segments().len(), 3);
            assert_eq!(p.segments()[0].pages(), (0x40_0000, 0x40_2000));
            assert!(p.segments()[0].exec && !p.segments()[0].write);
            assert!(p.segments()[2].write && !p.segments()[2].exec);
            assert_eq!(p.end(), 0x40_5000);
        }
    }

    #[test]
    fn rejects_bad_images() {
        let ok = build(false, EM_X86_64, 0x40_0010, &user_like(), 0x5000);
        let p = |img: &[u8]| parse(img, EM_X86_64, Endian::Little, 0x10000, END);
        assert_eq!(p(&ok[..10]), Err(ElfError::TooShort));
        let mut b = ok.clone();
        b[1] = b'X';
        assert_eq!(p(&b), Err(ElfError::BadMagic));
        let mut b = ok.clone();
        b[4] = 1;
        assert_eq!(p(&b), Err(ElfError::NotElf64));
        assert_eq!(
            parse(&ok, EM_X86_64, Endian::Big, 0x10000, END),
            Err(ElfError::WrongEndian)
        );
        assert_eq!(
            parse(&ok, EM_MIPS, Endian::Little, 0x10000, END),
            Err(ElfError::WrongMachine(EM_X86_64))
        );
        let mut b = ok.clone();
        b[16] = 3; // ET_DYN
        assert_eq!(p(&b), Err(ElfError::NotExecutable(3)));
        let mut b = ok.clone();
        b[56] = 0xff; // 511 entries run past the end
        b[57] = 0x01;
        assert_eq!(p(&b), Err(ElfError::BadPhdrTable));
        // File bytes beyond the image.
        let img = build(false, EM_X86_64, 0x40_0010, &user_like(), 0x4008);
        assert_eq!(p(&img), Err(ElfError::BadSegment(2)));
        // A segment below the minimum address, one reaching the kernel.
        let mut s = user_like();
        s[0].vaddr = 0x1000;
        s[0].offset = 0x1000;
        let img = build(false, EM_X86_64, 0x1010, &s, 0x5000);
        assert_eq!(p(&img), Err(ElfError::SegmentOutOfRange(0)));
        let mut s = user_like();
        s[2].vaddr = END - 0x1000;
        s[2].offset = 0x4000;
        let img = build(false, EM_X86_64, 0x40_0010, &s, 0x5000);
        assert_eq!(p(&img), Err(ElfError::SegmentOutOfRange(2)));
        let mut s = user_like();
        s[2].memsz = u64::MAX - 0x1000;
        let img = build(false, EM_X86_64, 0x40_0010, &s, 0x5000);
        assert_eq!(p(&img), Err(ElfError::SegmentOutOfRange(2)));
        // Overlapping pages, mismatched alignment, entry outside the code.
        let mut s = user_like();
        s[1].vaddr = 0x40_1000;
        s[1].offset = 0x3000;
        let img = build(false, EM_X86_64, 0x40_0010, &s, 0x5000);
        assert_eq!(p(&img), Err(ElfError::Overlap(1)));
        let mut s = user_like();
        s[1].offset = 0x3008;
        let img = build(false, EM_X86_64, 0x40_0010, &s, 0x5000);
        assert_eq!(p(&img), Err(ElfError::Misaligned(1)));
        let img = build(false, EM_X86_64, 0x40_3000, &user_like(), 0x5000);
        assert_eq!(p(&img), Err(ElfError::BadEntry(0x40_3000)));
        let mut s = user_like();
        s[0].filesz = 0x2000; // filesz > memsz
        let img = build(false, EM_X86_64, 0x40_0010, &s, 0x5000);
        assert_eq!(p(&img), Err(ElfError::BadSegment(0)));
    }
}
