//! Free-range search with the per-subtree gap records.
//!
//! Run under the writer lock, where the gaps are exact. A subtree is
//! entered only if its largest gap is at least `size`; with no bounds and no
//! alignment the first such subtree always holds a fit, so the search is one
//! descent. Bounds or alignment can reject a large-enough gap, which costs a
//! further descent per rejected subtree (Linux asks for `size + align - 1`
//! instead and may miss exact fits; this search is exact).

use super::node::{Enode, Kind};
use super::MapleError;
use crate::sync::{AtomicPtr, Ordering};

pub(crate) fn check_args(size: u64, align: u64, min: u64, max: u64) -> Result<(), MapleError> {
    if size == 0 || !align.is_power_of_two() || min > max {
        return Err(MapleError::InvalidArgument);
    }
    Ok(())
}

/// The lowest aligned start of `size` keys inside `[lo, hi]`.
fn fit_low(lo: u64, hi: u64, size: u64, align: u64) -> Option<u64> {
    let a = lo.checked_next_multiple_of(align)?;
    (a <= hi && hi - a >= size - 1).then_some(a)
}

/// The highest aligned start of `size` keys inside `[lo, hi]`.
fn fit_high(lo: u64, hi: u64, size: u64, align: u64) -> Option<u64> {
    if hi - lo < size - 1 {
        return None;
    }
    let a = (hi - (size - 1)) & !(align - 1);
    (a >= lo).then_some(a)
}

struct Query {
    size: u64,
    align: u64,
    min: u64,
    max: u64,
}

/// # Safety
/// The caller holds the writer lock.
pub(crate) unsafe fn lowest(
    root: &AtomicPtr<u8>,
    size: u64,
    align: u64,
    min: u64,
    max: u64,
) -> Option<u64> {
    let q = Query {
        size,
        align,
        min,
        max,
    };
    // Relaxed: under the writer lock, which orders all earlier writes.
    match Enode::from_word(root.load(Ordering::Relaxed)) {
        None => fit_low(min, max, size, align),
        // SAFETY: forwarded contract.
        Some(r) => unsafe { lowest_in(&q, r, 0, u64::MAX) },
    }
}

/// # Safety
/// The caller holds the writer lock and `e` is live, covering `[nmin, nmax]`
/// which intersects `[q.min, q.max]`.
unsafe fn lowest_in(q: &Query, e: Enode, nmin: u64, nmax: u64) -> Option<u64> {
    // SAFETY: caller's contract.
    let n = unsafe { e.node() };
    let kind = e.kind();
    let end = n.end(kind, nmax);
    let mut i = n.find_slot(kind, q.min.max(nmin));
    while i <= end {
        let first = n.slot_first(i, nmin);
        if first > q.max {
            return None;
        }
        let last = n.slot_last(kind, i, nmax);
        let w = n.slot(kind, i, Ordering::Relaxed);
        let found = match kind {
            Kind::Leaf if w.is_null() => {
                fit_low(first.max(q.min), last.min(q.max), q.size, q.align)
            }
            Kind::Leaf => None,
            Kind::Internal if n.gap(i) >= q.size => {
                // SAFETY: a child of a live node is live; it covers `[first, last]`, which intersects the query.
                Enode::from_word(w).and_then(|c| unsafe { lowest_in(q, c, first, last) })
            }
            Kind::Internal => None,
        };
        if found.is_some() {
            return found;
        }
        i += 1;
    }
    None
}

/// # Safety
/// The caller holds the writer lock.
pub(crate) unsafe fn highest(
    root: &AtomicPtr<u8>,
    size: u64,
    align: u64,
    min: u64,
    max: u64,
) -> Option<u64> {
    let q = Query {
        size,
        align,
        min,
        max,
    };
    // Relaxed: as in `lowest`.
    match Enode::from_word(root.load(Ordering::Relaxed)) {
        None => fit_high(min, max, size, align),
        // SAFETY: forwarded contract.
        Some(r) => unsafe { highest_in(&q, r, 0, u64::MAX) },
    }
}

/// # Safety
/// As for `lowest_in`.
unsafe fn highest_in(q: &Query, e: Enode, nmin: u64, nmax: u64) -> Option<u64> {
    // SAFETY: caller's contract.
    let n = unsafe { e.node() };
    let kind = e.kind();
    let mut i = n.find_slot(kind, q.max.min(nmax));
    loop {
        let last = n.slot_last(kind, i, nmax);
        if last < q.min {
            return None;
        }
        let first = n.slot_first(i, nmin);
        let w = n.slot(kind, i, Ordering::Relaxed);
        let found = match kind {
            Kind::Leaf if w.is_null() => {
                fit_high(first.max(q.min), last.min(q.max), q.size, q.align)
            }
            Kind::Leaf => None,
            Kind::Internal if n.gap(i) >= q.size => {
                // SAFETY: as in `lowest_in`.
                Enode::from_word(w).and_then(|c| unsafe { highest_in(q, c, first, last) })
            }
            Kind::Internal => None,
        };
        if found.is_some() || i == 0 {
            return found;
        }
        i -= 1;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fits_respect_bounds_and_alignment() {
        assert_eq!(fit_low(1, 100, 10, 16), Some(16));
        assert_eq!(fit_low(1, 24, 10, 16), None);
        assert_eq!(fit_low(u64::MAX - 3, u64::MAX, 1, 8), None);
        assert_eq!(fit_low(0, u64::MAX, u64::MAX, 1), Some(0));
        assert_eq!(fit_high(0, 100, 10, 16), Some(80));
        assert_eq!(fit_high(85, 100, 10, 16), None);
        assert_eq!(
            fit_high(0, u64::MAX, 1 << 12, 1 << 12),
            Some(u64::MAX - 0xfff)
        );
        assert_eq!(fit_high(5, 5, 1, 1), Some(5));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        assert_eq!(check_args(0, 1, 0, 10), Err(MapleError::InvalidArgument));
        assert_eq!(check_args(1, 3, 0, 10), Err(MapleError::InvalidArgument));
        assert_eq!(check_args(1, 0, 0, 10), Err(MapleError::InvalidArgument));
        assert_eq!(check_args(1, 1, 11, 10), Err(MapleError::InvalidArgument));
        assert_eq!(check_args(1, 1, 10, 10), Ok(()));
    }
}
