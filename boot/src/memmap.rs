//! The physical memory map, as a fixed-capacity sorted list of regions.
//!
//! Boot protocols report memory in their own shapes (E820-style tables, a
//! single size, a free list). Each parser pushes what it finds here; the
//! map keeps regions sorted, merges touching regions of the same kind, and
//! lets a later, more specific reservation (the kernel image, boot data)
//! carve a hole out of usable memory.

use core::fmt;

/// Most regions any supported boot protocol produces, with room to spare.
pub const MAX_REGIONS: usize = 64;

/// What a physical range may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RegionKind {
    /// Free RAM the frame allocator may hand out.
    Usable,
    /// RAM holding the kernel image (text, data, bss, boot stack).
    Kernel,
    /// RAM the boot loader still uses or that holds data we read later.
    BootData,
    /// Firmware, MMIO or anything else that must not be touched.
    Reserved,
}

/// A half-open physical range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
}

impl Region {
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Why a region could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// `end <= start`, or the range wraps.
    Empty,
    /// More than [`MAX_REGIONS`] disjoint regions.
    Full,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Empty => f.write_str("empty or wrapping memory region"),
            MapError::Full => write!(f, "more than {MAX_REGIONS} memory regions"),
        }
    }
}

/// Sorted, non-overlapping physical regions.
#[derive(Clone)]
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryMap {
    pub const fn new() -> Self {
        const EMPTY: Region = Region {
            start: 0,
            end: 0,
            kind: RegionKind::Reserved,
        };
        MemoryMap {
            regions: [EMPTY; MAX_REGIONS],
            len: 0,
        }
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// Total bytes of the given kind.
    pub fn total(&self, kind: RegionKind) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == kind)
            .map(Region::len)
            .sum()
    }

    /// Adds `[start, end)` as `kind`. Where it overlaps existing regions the
    /// more restrictive kind wins (`Reserved` > `BootData` > `Kernel` >
    /// `Usable`), so reserving over usable memory punches a hole and adding
    /// usable memory never frees a reservation. On error the map is unchanged.
    pub fn add(&mut self, start: u64, end: u64, kind: RegionKind) -> Result<(), MapError> {
        if end <= start {
            return Err(MapError::Empty);
        }
        // Build the result in a scratch copy so that `Full` leaves `self` untouched.
        let mut out = MemoryMap::new();
        let mut cuts: [u64; 2 * MAX_REGIONS + 2] = [0; 2 * MAX_REGIONS + 2];
        let mut n = 0;
        for r in self.regions() {
            cuts[n] = r.start;
            cuts[n + 1] = r.end;
            n += 2;
        }
        cuts[n] = start;
        cuts[n + 1] = end;
        n += 2;
        let cuts = &mut cuts[..n];
        cuts.sort_unstable();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            if lo == hi {
                continue;
            }
            let mut kind_here: Option<RegionKind> = (start <= lo && hi <= end).then_some(kind);
            for r in self.regions() {
                if r.start <= lo && hi <= r.end {
                    kind_here = Some(kind_here.map_or(r.kind, |k| k.max(r.kind)));
                }
            }
            if let Some(k) = kind_here {
                out.push_merging(Region {
                    start: lo,
                    end: hi,
                    kind: k,
                })?;
            }
        }
        *self = out;
        Ok(())
    }

    /// Takes `size` bytes of usable memory, aligned to `align` (a power of
    /// two) and ending at or below `limit`, from the lowest address that fits,
    /// and marks them [`RegionKind::Kernel`]. For page tables and other
    /// kernel data allocated before the frame allocator exists.
    pub fn allocate(&mut self, size: u64, align: u64, limit: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two());
        if size == 0 {
            return None;
        }
        let start = self
            .regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .find_map(|r| {
                let start = r.start.checked_add(align - 1)? & !(align - 1);
                let end = start.checked_add(size)?;
                (end <= r.end && end <= limit).then_some(start)
            })?;
        // Cannot be `Full`: carving from the edge or middle of one region
        // adds at most two regions, and a failure leaves the map unchanged.
        self.add(start, start + size, RegionKind::Kernel).ok()?;
        Some(start)
    }

    /// Appends a region that starts at or after the last one, merging it with
    /// its predecessor when they touch and have the same kind.
    fn push_merging(&mut self, r: Region) -> Result<(), MapError> {
        if let Some(last) = self.regions[..self.len].last_mut() {
            debug_assert!(last.end <= r.start);
            if last.end == r.start && last.kind == r.kind {
                last.end = r.end;
                return Ok(());
            }
        }
        if self.len == MAX_REGIONS {
            return Err(MapError::Full);
        }
        self.regions[self.len] = r;
        self.len += 1;
        Ok(())
    }
}

impl fmt::Debug for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.regions()).finish()
    }
}

impl fmt::Display for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.regions() {
            writeln!(f, "  [{:#014x}-{:#014x}) {:?}", r.start, r.end, r.kind)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegionKind::*;

    fn spans(m: &MemoryMap) -> Vec<(u64, u64, RegionKind)> {
        m.regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect()
    }

    #[test]
    fn merges_touching_usable() {
        let mut m = MemoryMap::new();
        m.add(0x1000, 0x2000, Usable).unwrap();
        m.add(0x2000, 0x3000, Usable).unwrap();
        m.add(0x5000, 0x6000, Usable).unwrap();
        assert_eq!(
            spans(&m),
            vec![(0x1000, 0x3000, Usable), (0x5000, 0x6000, Usable)]
        );
        assert_eq!(m.total(Usable), 0x3000);
    }

    #[test]
    fn reservation_punches_hole_and_usable_never_frees_it() {
        let mut m = MemoryMap::new();
        m.add(0, 0x10000, Usable).unwrap();
        m.add(0x4000, 0x6000, Kernel).unwrap();
        assert_eq!(
            spans(&m),
            vec![
                (0, 0x4000, Usable),
                (0x4000, 0x6000, Kernel),
                (0x6000, 0x10000, Usable)
            ]
        );
        m.add(0x3000, 0x7000, Usable).unwrap();
        assert_eq!(m.total(Kernel), 0x2000);
        m.add(0x5000, 0x12000, Reserved).unwrap();
        assert_eq!(
            spans(&m),
            vec![
                (0, 0x4000, Usable),
                (0x4000, 0x5000, Kernel),
                (0x5000, 0x12000, Reserved)
            ]
        );
    }

    #[test]
    fn allocate_takes_lowest_fit_below_limit() {
        let mut m = MemoryMap::new();
        m.add(0x1000, 0x2800, Usable).unwrap();
        m.add(0x5000, 0x9000, Usable).unwrap();
        // 0x1000..0x2800 cannot hold an aligned 0x2000.
        assert_eq!(m.allocate(0x2000, 0x2000, u64::MAX), Some(0x6000));
        assert_eq!(m.allocate(0x1000, 0x1000, u64::MAX), Some(0x1000));
        assert_eq!(m.allocate(0x1000, 0x1000, 0x2800), None);
        assert_eq!(m.allocate(0x1000, 0x1000, 0x6000), Some(0x5000));
        assert_eq!(
            spans(&m),
            vec![
                (0x1000, 0x2000, Kernel),
                (0x2000, 0x2800, Usable),
                (0x5000, 0x8000, Kernel),
                (0x8000, 0x9000, Usable)
            ]
        );
        assert_eq!(m.allocate(0x2000, 0x1000, u64::MAX), None);
        assert_eq!(m.allocate(0, 0x1000, u64::MAX), None);
    }

    #[test]
    fn rejects_empty_and_overflow_without_change() {
        let mut m = MemoryMap::new();
        assert_eq!(m.add(5, 5, Usable), Err(MapError::Empty));
        assert_eq!(m.add(6, 5, Usable), Err(MapError::Empty));
        for i in 0..MAX_REGIONS as u64 {
            m.add(i * 0x2000, i * 0x2000 + 0x1000, Usable).unwrap();
        }
        let before = spans(&m);
        assert_eq!(
            m.add(0x1_0000_0000, 0x1_0000_1000, Usable),
            Err(MapError::Full)
        );
        assert_eq!(spans(&m), before);
        // Filling a gap merges three regions into one, so it still fits.
        m.add(0x1000, 0x2000, Usable).unwrap();
        assert_eq!(m.regions().len(), MAX_REGIONS - 1);
    }
}
