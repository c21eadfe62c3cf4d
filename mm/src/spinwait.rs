//! When a spinning CPU stops spinning and yields its CPU for a while: the
//! arch-neutral policy behind x86_64's `irq::relax` (which says why a guest
//! must: lock-holder preemption).
//!
//! Every kernel spin loop calls the same relax hook on each iteration and
//! says neither where its wait began nor when it ended, so a wait is
//! recognised by time: relax calls less than [`YieldPolicy::same_wait_gap`]
//! apart belong to one wait; a longer gap means the CPU did something else
//! in between, and a new wait starts. Once a wait has lasted
//! [`YieldPolicy::spin_before_yield`], every further poll says "yield";
//! the time spent yielded belongs to the wait ([`SpinWait::yielded`]).

use crate::sync::{AtomicU64, Ordering};

/// The thresholds, in the caller's clock unit (TSC cycles on x86_64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct YieldPolicy {
    /// Spinning this long without getting anywhere makes the CPU yield.
    pub spin_before_yield: u64,
    /// Two relax calls further apart than this belong to different waits.
    pub same_wait_gap: u64,
}

/// One CPU's current wait. Only its own CPU calls [`SpinWait::poll`] and
/// [`SpinWait::yielded`] (the kernel: with interrupts off), so the fields
/// are atomics only to be `Sync` in a static per-CPU array; Relaxed
/// throughout, nothing is published through them.
#[derive(Debug)]
pub struct SpinWait {
    /// Clock at the first relax call of the current wait.
    since: AtomicU64,
    /// Clock at the latest relax call (or the end of the latest yield).
    last: AtomicU64,
}

impl Default for SpinWait {
    fn default() -> Self {
        Self::new()
    }
}

impl SpinWait {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        SpinWait {
            since: AtomicU64::new(0),
            last: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        SpinWait {
            since: AtomicU64::new(0),
            last: AtomicU64::new(0),
        }
    }

    /// A relax call at clock `now`: whether the CPU should yield now.
    /// A clock that went backwards (another CPU's counter after a
    /// migration, a wrap) reads as a huge gap: a new wait, never a yield.
    pub fn poll(&self, now: u64, p: &YieldPolicy) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        if now.wrapping_sub(last) > p.same_wait_gap {
            self.since.store(now, Ordering::Relaxed);
        }
        self.last.store(now, Ordering::Relaxed);
        now.wrapping_sub(self.since.load(Ordering::Relaxed)) >= p.spin_before_yield
    }

    /// The CPU yielded until clock `now`: however long that took, the next
    /// poll continues the same wait.
    pub fn yielded(&self, now: u64) {
        self.last.store(now, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const P: YieldPolicy = YieldPolicy {
        spin_before_yield: 1000,
        same_wait_gap: 50,
    };

    /// Polls every `step` from `start` until the policy says yield; returns
    /// the clock at that poll.
    fn first_yield(w: &SpinWait, start: u64, step: u64) -> u64 {
        let mut t = start;
        for _ in 0..10_000 {
            if w.poll(t, &P) {
                return t;
            }
            t += step;
        }
        panic!("never yielded");
    }

    #[test]
    fn yields_once_a_wait_lasts_the_threshold() {
        let w = SpinWait::new();
        let t0 = 1_000_000;
        assert_eq!(first_yield(&w, t0, 10), t0 + 1000);
        // And keeps yielding while the wait goes on.
        assert!(w.poll(t0 + 1010, &P));
    }

    #[test]
    fn a_gap_starts_a_new_wait() {
        let w = SpinWait::new();
        let t0 = 1_000_000;
        for i in 0..90 {
            assert!(!w.poll(t0 + i * 10, &P));
        }
        // 51 later: a different wait; the 890 spun before do not count.
        let t1 = t0 + 890 + 51;
        assert!(!w.poll(t1, &P));
        assert_eq!(first_yield(&w, t1, 10), t1 + 1000);
    }

    #[test]
    fn time_yielded_belongs_to_the_wait() {
        let w = SpinWait::new();
        let t = first_yield(&w, 5_000, 10);
        // A yield far longer than the gap, then the next poll.
        w.yielded(t + 10_000);
        assert!(w.poll(t + 10_010, &P));
        // Without `yielded`, the same pause would have started a new wait.
        let v = SpinWait::new();
        let t = first_yield(&v, 5_000, 10);
        assert!(!v.poll(t + 10_010, &P));
    }

    #[test]
    fn a_clock_going_backwards_starts_a_new_wait() {
        let w = SpinWait::new();
        let t = first_yield(&w, 1_000_000, 10);
        assert!(!w.poll(t - 5, &P));
    }
}
