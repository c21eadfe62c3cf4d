//! CPU numbering and per-CPU storage.
//!
//! `mm` never asks "which CPU am I on?" behind the caller's back: per-CPU
//! operations take the [`CpuId`] (in the kernel, from the per-CPU area; in
//! host tests, the index of the thread standing in for that CPU).

use core::ops::{Deref, DerefMut};

/// Index of a CPU, `0..MAX_CPUS`.
pub type CpuId = usize;

/// Most CPUs Samara manages. Bitmasks of CPUs are one `u64`.
#[cfg(not(loom))]
pub const MAX_CPUS: usize = 64;
/// Loom models run a handful of threads; fewer slots keep them small.
#[cfg(loom)]
pub const MAX_CPUS: usize = 4;

/// Pads and aligns a value to its own cache lines so that per-CPU data and
/// hot shared words never share a line (false sharing). 128 bytes covers
/// Octeon's 128-byte lines and x86's adjacent-line prefetcher.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CachePadded<T>(pub T);

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for CachePadded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// One cache-padded `T` per possible CPU.
pub struct PerCpu<T> {
    slots: [CachePadded<T>; MAX_CPUS],
}

impl<T> PerCpu<T> {
    pub fn new(mut init: impl FnMut(CpuId) -> T) -> Self {
        PerCpu {
            slots: core::array::from_fn(|i| CachePadded(init(i))),
        }
    }

    #[inline(always)]
    pub fn get(&self, cpu: CpuId) -> &T {
        &self.slots[cpu].0
    }

    pub fn iter(&self) -> impl Iterator<Item = (CpuId, &T)> {
        self.slots.iter().enumerate().map(|(i, s)| (i, &s.0))
    }
}
