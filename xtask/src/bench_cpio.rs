//! A writer for the "newc" cpio format (Linux's initramfs format,
//! Documentation/driver-api/early-userspace/buffer-format.rst), so that the
//! bench's Linux initramfs is built without a `cpio` tool or root rights:
//! device nodes are just header fields here.
//!
//! Each entry is a 110-byte ASCII header — the magic `070701` and thirteen
//! 8-digit hexadecimal fields — then the NUL-terminated name, padded to a
//! multiple of 4 bytes counted from the header's start, then the file data,
//! padded to a multiple of 4. The archive ends with an entry named
//! `TRAILER!!!`. Linux reads an uncompressed archive as is.

/// The file type bits of `mode` (as in `st_mode`).
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFCHR: u32 = 0o020_000;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/` (e.g. `dev/console`).
    pub name: String,
    /// Type and permission bits (`S_IFREG | 0o755`).
    pub mode: u32,
    /// Device number of a character or block node (major, minor).
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

impl Entry {
    pub fn dir(name: &str) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFDIR | 0o755,
            rdev: (0, 0),
            data: Vec::new(),
        }
    }

    pub fn file(name: &str, perm: u32, data: Vec<u8>) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFREG | (perm & 0o7777),
            rdev: (0, 0),
            data,
        }
    }

    pub fn char_dev(name: &str, perm: u32, major: u32, minor: u32) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFCHR | (perm & 0o7777),
            rdev: (major, minor),
            data: Vec::new(),
        }
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Appends one header, name and data. `ino` must differ between entries
/// (the unpacker treats equal inode numbers with nlink > 1 as hard links).
fn push_entry(out: &mut Vec<u8>, ino: u32, e: &Entry) -> Result<(), String> {
    if e.name.is_empty() || e.name.starts_with('/') || e.name.contains('\0') {
        return Err(format!(
            "cpio: bad member name {:?} (relative, non-empty, no NUL)",
            e.name
        ));
    }
    let filesize = u32::try_from(e.data.len())
        .map_err(|_| format!("cpio: {} is larger than 4 GiB", e.name))?;
    let nlink = if e.mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
    // The archive starts 4-aligned and every member ends 4-aligned, so the
    // padding below is relative to the header's start, as the format wants.
    debug_assert!(out.len().is_multiple_of(4));
    out.extend_from_slice(MAGIC);
    let fields = [
        ino,
        e.mode,
        0, // uid: root
        0, // gid: root
        nlink,
        0, // mtime
        filesize,
        0, // devmajor (of the file system holding the file)
        0, // devminor
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1, // namesize, with the NUL
        0,                       // check (only for the "crc" format, 070702)
    ];
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&e.data);
    pad4(out);
    Ok(())
}

/// The archive holding `entries` in order (parents before children).
pub fn archive(entries: &[Entry]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        push_entry(&mut out, i as u32 + 1, e)?;
    }
    push_entry(
        &mut out,
        0,
        &Entry {
            name: TRAILER.into(),
            mode: 0,
            rdev: (0, 0),
            data: Vec::new(),
        },
    )?;
    Ok(out)
}

/// Reads an archive back (tests, and a check before booting with it).
pub fn parse(mut bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        if bytes.len() < HEADER_LEN {
            return Err(format!("cpio: truncated header at byte {offset}"));
        }
        if &bytes[..6] != MAGIC {
            return Err(format!("cpio: bad magic at byte {offset}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i])
                .map_err(|_| format!("cpio: non-ASCII header at byte {offset}"))?;
            u32::from_str_radix(s, 16)
                .map_err(|_| format!("cpio: bad hex field {s:?} at byte {offset}"))
        };
        let (mode, filesize) = (field(1)?, field(6)? as usize);
        let (rmaj, rmin, namesize) = (field(9)?, field(10)?, field(11)? as usize);
        let name_end = HEADER_LEN + namesize;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + filesize;
        if namesize == 0 || bytes.len() < data_end {
            return Err(format!("cpio: truncated member at byte {offset}"));
        }
        if bytes[name_end - 1] != 0 {
            return Err(format!("cpio: name not NUL-terminated at byte {offset}"));
        }
        let name = String::from_utf8_lossy(&bytes[HEADER_LEN..name_end - 1]).into_owned();
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            mode,
            rdev: (rmaj, rmin),
            data: bytes[data_start..data_end].to_vec(),
        });
        let next = data_end.next_multiple_of(4).min(bytes.len());
        offset += next;
        bytes = &bytes[next..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_format() {
        let a = archive(&[Entry::file("init", 0o755, b"hello".to_vec())]).unwrap();
        // Header: magic, ino 1, mode 0100755, uid, gid, nlink 1, mtime,
        // filesize 5, devmajor, devminor, rdevmajor, rdevminor, namesize 5
        // ("init" + NUL), check.
        let header = "070701\
                      00000001000081ed000000000000000000000001000000000000000500000000\
                      0000000000000000000000000000000500000000";
        assert_eq!(&a[..HEADER_LEN], header.as_bytes());
        // Name at 110..115, padded to 116; data at 116..121, padded to 124.
        assert_eq!(&a[110..116], b"init\0\0");
        assert_eq!(&a[116..124], b"hello\0\0\0");
        assert_eq!(&a[124..130], MAGIC);
        assert!(a.len().is_multiple_of(4));
    }

    #[test]
    fn round_trips_files_dirs_and_device_nodes() {
        let entries = vec![
            Entry::dir("dev"),
            Entry::char_dev("dev/console", 0o600, 5, 1),
            Entry::dir("proc"),
            Entry::file("init", 0o755, (0..=255).collect()),
            // Name lengths that exercise every padding remainder.
            Entry::file("a", 0o644, vec![1]),
            Entry::file("ab", 0o644, vec![1, 2]),
            Entry::file("abc", 0o644, vec![1, 2, 3]),
            Entry::file("abcd", 0o644, Vec::new()),
        ];
        let a = archive(&entries).unwrap();
        assert_eq!(parse(&a).unwrap(), entries);
        assert_eq!(entries[1].mode, 0o020600);
    }

    #[test]
    fn refuses_bad_names_and_detects_damage() {
        assert!(archive(&[Entry::dir("/abs")]).is_err());
        assert!(archive(&[Entry::dir("")]).is_err());
        let a = archive(&[Entry::file("init", 0o755, vec![7; 100])]).unwrap();
        assert!(parse(&a[..a.len() - 8]).is_err(), "missing trailer");
        assert!(parse(&a[..50]).is_err(), "truncated header");
        let mut bad = a.clone();
        bad[0] = b'1';
        assert!(parse(&bad).is_err(), "bad magic");
    }
}
