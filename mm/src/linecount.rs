//! Counting writes to shared cache lines (feature `count-shared-writes`).
//!
//! Scalability beyond the cores at hand is argued by counting, not by
//! timing: on a 64-core Octeon or a large x86 server, what limits a fault
//! path is how many cache lines it writes that other CPUs also write (each
//! such write moves the line between caches). With this feature, every
//! atomic `mm` uses (they all come from [`crate::sync`]) is replaced by a
//! wrapper that reports each store and read-modify-write before performing
//! it. Inside a [`Scope`] (e.g. one page fault) the tracker records, per
//! cache line (128 bytes, hashed into a large table), which CPUs wrote it
//! and how often, and per CPU the number of read-modify-writes and stores.
//! [`summary`] then tells how many of the writes went to lines that more
//! than one CPU wrote during the measurement: a property of the code paths,
//! independent of how the host happened to schedule the threads.
//!
//! Two lines can hash to one slot and show up as shared; with 2^18 slots
//! that is rare, and only ever over-counts.

pub use core::sync::atomic::{fence, Ordering};
use core::sync::atomic::{
    AtomicBool as CoreBool, AtomicPtr as CoreAtomicPtr, AtomicU64 as CoreU64,
};

use crate::cpu::{CachePadded, CpuId, MAX_CPUS};

const LINE_SHIFT: u32 = 7;
const SLOT_BITS: u32 = 18;
const SLOTS: usize = 1 << SLOT_BITS;

/// Per slot: the CPUs that wrote the line (bit mask), and the writes.
static WRITERS: [CoreU64; SLOTS] = [const { CoreU64::new(0) }; SLOTS];
static WRITES: [CoreU64; SLOTS] = [const { CoreU64::new(0) }; SLOTS];
/// Per slot: the last line address written there (for diagnosis: which
/// object a shared line belongs to).
static LINE: [CoreU64; SLOTS] = [const { CoreU64::new(0) }; SLOTS];

/// Per CPU: inside a scope?, read-modify-writes, stores.
static IN_SCOPE: [CachePadded<CoreBool>; MAX_CPUS] =
    [const { CachePadded(CoreBool::new(false)) }; MAX_CPUS];
static COUNTS: [CachePadded<[CoreU64; 2]>; MAX_CPUS] =
    [const { CachePadded([const { CoreU64::new(0) }; 2]) }; MAX_CPUS];

static CPU_HOOK: CoreAtomicPtr<()> = CoreAtomicPtr::new(core::ptr::null_mut());

/// Tells the tracker how to find the current CPU (the kernel: its per-CPU
/// area; host tests: a thread-local index). Writes made while it returns
/// `None` are not counted.
pub fn set_cpu_hook(f: fn() -> Option<CpuId>) {
    CPU_HOOK.store(f as *mut (), Ordering::Relaxed);
}

fn current_cpu() -> Option<CpuId> {
    let p = CPU_HOOK.load(Ordering::Relaxed);
    if p.is_null() {
        return None;
    }
    type Hook = fn() -> Option<CpuId>;
    // SAFETY: only `set_cpu_hook` stores here, a `fn() -> Option<CpuId>`.
    let f = unsafe { core::mem::transmute::<*mut (), Hook>(p) };
    f().filter(|&c| c < MAX_CPUS)
}

#[inline(never)]
fn note(addr: usize, rmw: bool) {
    let Some(cpu) = current_cpu() else { return };
    if !IN_SCOPE[cpu].load(Ordering::Relaxed) {
        return;
    }
    let line = addr >> LINE_SHIFT;
    // Fibonacci hashing spreads neighbouring lines over the table.
    let slot =
        (line.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (usize::BITS - SLOT_BITS)) & (SLOTS - 1);
    WRITERS[slot].fetch_or(1 << cpu, Ordering::Relaxed);
    WRITES[slot].fetch_add(1, Ordering::Relaxed);
    LINE[slot].store((line << LINE_SHIFT) as u64, Ordering::Relaxed);
    let c = &COUNTS[cpu][usize::from(!rmw)];
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Writes counted since the last [`reset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Atomic read-modify-writes (failed compare-exchanges included: they
    /// take the line exclusively too).
    pub rmw: u64,
    /// Atomic stores.
    pub stores: u64,
    /// Writes (of both kinds) to lines that two or more CPUs wrote.
    pub shared_writes: u64,
    /// Distinct lines written by two or more CPUs.
    pub shared_lines: u64,
}

/// Sums what every CPU wrote inside scopes since the last [`reset`].
pub fn summary() -> LineCounts {
    let mut s = LineCounts::default();
    for c in COUNTS.iter() {
        s.rmw += c[0].load(Ordering::Relaxed);
        s.stores += c[1].load(Ordering::Relaxed);
    }
    for (w, n) in WRITERS.iter().zip(WRITES.iter()) {
        if w.load(Ordering::Relaxed).count_ones() >= 2 {
            s.shared_writes += n.load(Ordering::Relaxed);
            s.shared_lines += 1;
        }
    }
    s
}

/// Calls `f(line address, CPU mask, writes)` for every line that two or
/// more CPUs wrote since the last [`reset`] (the address is the last one
/// that hashed to the slot).
pub fn for_each_shared(mut f: impl FnMut(usize, u64, u64)) {
    for ((w, n), a) in WRITERS.iter().zip(WRITES.iter()).zip(LINE.iter()) {
        let mask = w.load(Ordering::Relaxed);
        if mask.count_ones() >= 2 {
            f(
                a.load(Ordering::Relaxed) as usize,
                mask,
                n.load(Ordering::Relaxed),
            );
        }
    }
}

/// Clears the table and the counters (no scope may be open).
pub fn reset() {
    for ((w, n), a) in WRITERS.iter().zip(WRITES.iter()).zip(LINE.iter()) {
        w.store(0, Ordering::Relaxed);
        n.store(0, Ordering::Relaxed);
        a.store(0, Ordering::Relaxed);
    }
    for c in COUNTS.iter() {
        c[0].store(0, Ordering::Relaxed);
        c[1].store(0, Ordering::Relaxed);
    }
}

/// Marks the current CPU's writes until it is dropped as part of the
/// measured operation.
pub struct Scope {
    cpu: Option<CpuId>,
}

impl Scope {
    pub fn begin() -> Scope {
        let cpu = current_cpu();
        if let Some(c) = cpu {
            IN_SCOPE[c].store(true, Ordering::Relaxed);
        }
        Scope { cpu }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(c) = self.cpu {
            IN_SCOPE[c].store(false, Ordering::Relaxed);
        }
    }
}

macro_rules! tracked_int {
    ($name:ident, $core:ident, $prim:ty) => {
        /// A counting wrapper of the `core` atomic of the same name.
        #[derive(Default)]
        #[repr(transparent)]
        pub struct $name(core::sync::atomic::$core);

        impl $name {
            pub const fn new(v: $prim) -> Self {
                $name(core::sync::atomic::$core::new(v))
            }
            #[inline]
            fn addr(&self) -> usize {
                self as *const Self as usize
            }
            #[inline]
            pub fn load(&self, o: Ordering) -> $prim {
                self.0.load(o)
            }
            #[inline]
            pub fn store(&self, v: $prim, o: Ordering) {
                note(self.addr(), false);
                self.0.store(v, o)
            }
            #[inline]
            pub fn swap(&self, v: $prim, o: Ordering) -> $prim {
                note(self.addr(), true);
                self.0.swap(v, o)
            }
            #[inline]
            pub fn compare_exchange(
                &self,
                c: $prim,
                n: $prim,
                s: Ordering,
                f: Ordering,
            ) -> Result<$prim, $prim> {
                note(self.addr(), true);
                self.0.compare_exchange(c, n, s, f)
            }
            #[inline]
            pub fn compare_exchange_weak(
                &self,
                c: $prim,
                n: $prim,
                s: Ordering,
                f: Ordering,
            ) -> Result<$prim, $prim> {
                note(self.addr(), true);
                self.0.compare_exchange_weak(c, n, s, f)
            }
            #[inline]
            pub fn get_mut(&mut self) -> &mut $prim {
                self.0.get_mut()
            }
            #[inline]
            pub fn into_inner(self) -> $prim {
                self.0.into_inner()
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

macro_rules! tracked_arith {
    ($name:ident, $prim:ty) => {
        impl $name {
            #[inline]
            pub fn fetch_add(&self, v: $prim, o: Ordering) -> $prim {
                note(self.addr(), true);
                self.0.fetch_add(v, o)
            }
            #[inline]
            pub fn fetch_sub(&self, v: $prim, o: Ordering) -> $prim {
                note(self.addr(), true);
                self.0.fetch_sub(v, o)
            }
            #[inline]
            pub fn fetch_or(&self, v: $prim, o: Ordering) -> $prim {
                note(self.addr(), true);
                self.0.fetch_or(v, o)
            }
            #[inline]
            pub fn fetch_and(&self, v: $prim, o: Ordering) -> $prim {
                note(self.addr(), true);
                self.0.fetch_and(v, o)
            }
            #[inline]
            pub fn fetch_max(&self, v: $prim, o: Ordering) -> $prim {
                note(self.addr(), true);
                self.0.fetch_max(v, o)
            }
        }
    };
}

tracked_int!(AtomicU8, AtomicU8, u8);
tracked_int!(AtomicU32, AtomicU32, u32);
tracked_int!(AtomicU64, AtomicU64, u64);
tracked_int!(AtomicUsize, AtomicUsize, usize);
tracked_int!(AtomicBool, AtomicBool, bool);
tracked_arith!(AtomicU8, u8);
tracked_arith!(AtomicU32, u32);
tracked_arith!(AtomicU64, u64);
tracked_arith!(AtomicUsize, usize);

impl AtomicBool {
    #[inline]
    pub fn fetch_or(&self, v: bool, o: Ordering) -> bool {
        note(self.addr(), true);
        self.0.fetch_or(v, o)
    }
    #[inline]
    pub fn fetch_and(&self, v: bool, o: Ordering) -> bool {
        note(self.addr(), true);
        self.0.fetch_and(v, o)
    }
}

/// A counting wrapper of `core`'s `AtomicPtr`.
#[repr(transparent)]
pub struct AtomicPtr<T>(core::sync::atomic::AtomicPtr<T>);

impl<T> Default for AtomicPtr<T> {
    fn default() -> Self {
        Self::new(core::ptr::null_mut())
    }
}

impl<T> core::fmt::Debug for AtomicPtr<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(&self.0, f)
    }
}

impl<T> AtomicPtr<T> {
    pub const fn new(p: *mut T) -> Self {
        AtomicPtr(core::sync::atomic::AtomicPtr::new(p))
    }
    #[inline]
    fn addr(&self) -> usize {
        self as *const Self as usize
    }
    #[inline]
    pub fn load(&self, o: Ordering) -> *mut T {
        self.0.load(o)
    }
    #[inline]
    pub fn store(&self, v: *mut T, o: Ordering) {
        note(self.addr(), false);
        self.0.store(v, o)
    }
    #[inline]
    pub fn swap(&self, v: *mut T, o: Ordering) -> *mut T {
        note(self.addr(), true);
        self.0.swap(v, o)
    }
    #[inline]
    pub fn compare_exchange(
        &self,
        c: *mut T,
        n: *mut T,
        s: Ordering,
        f: Ordering,
    ) -> Result<*mut T, *mut T> {
        note(self.addr(), true);
        self.0.compare_exchange(c, n, s, f)
    }
    #[inline]
    pub fn compare_exchange_weak(
        &self,
        c: *mut T,
        n: *mut T,
        s: Ordering,
        f: Ordering,
    ) -> Result<*mut T, *mut T> {
        note(self.addr(), true);
        self.0.compare_exchange_weak(c, n, s, f)
    }
    #[inline]
    pub fn get_mut(&mut self) -> &mut *mut T {
        self.0.get_mut()
    }
}
