//! Synchronisation primitives, switched to loom's model-checked versions
//! under `cfg(loom)`.
//!
//! Everything in `mm` that is shared between CPUs takes its atomics, cells
//! and spin-wait hints from here, never from `core` directly, so that the
//! loom models exercise the same code the kernel runs.

/// The instrumented build: the same atomics, counting the cache lines they
/// write (see [`crate::linecount`]).
#[cfg(all(not(loom), feature = "count-shared-writes"))]
pub use crate::linecount::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
#[cfg(all(not(loom), not(feature = "count-shared-writes")))]
pub use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(not(loom))]
pub use core::cell::UnsafeCell as CoreUnsafeCell;

/// An `UnsafeCell` with loom's access-tracking interface (`with`/`with_mut`),
/// so that loom can flag unsynchronised accesses to plain data.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub const fn new(v: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(v))
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// Tells the CPU (or loom's scheduler) that we are spinning on a value
/// another CPU will change, and lets the kernel do what it must do while
/// waiting (see [`set_relax_hook`]).
#[inline(always)]
pub fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    {
        let hook = RELAX_HOOK.load(core::sync::atomic::Ordering::Relaxed);
        if !hook.is_null() {
            // SAFETY: only `set_relax_hook` stores here, and it stores a `fn()` pointer.
            let f: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(hook) };
            f();
        }
        core::hint::spin_loop();
    }
}

#[cfg(not(loom))]
static RELAX_HOOK: core::sync::atomic::AtomicPtr<()> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Registers what every spin-wait in `mm` calls on each iteration.
///
/// Samara's kernel runs `mm` with interrupts disabled, so a CPU spinning
/// here (for a lock, a grace period, a VMA's readers to drain) cannot take
/// the interrupt that would ask it to flush its TLB — while the CPU asking
/// may itself be what it waits for. The kernel's hook answers pending TLB
/// shootdown requests (and anything else that must not wait), which breaks
/// every such cycle. The hook must not take `mm` locks.
#[cfg(not(loom))]
pub fn set_relax_hook(f: fn()) {
    RELAX_HOOK.store(f as *mut (), core::sync::atomic::Ordering::Relaxed);
}

/// A test-and-test-and-set spin lock, built on [`AtomicBool`] from this
/// module so that loom models the lock along with what it protects.
///
/// Not interrupt-safe: Samara's kernel runs `mm` code with interrupts
/// disabled, so a lock is never re-entered on the same CPU from a handler.
pub struct SpinLock<T: ?Sized> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `data` to one holder at a time, so it
// is as thread-safe as a `Mutex<T>`: shareable when `T` may be sent.
unsafe impl<T: ?Sized + Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: ?Sized + Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    #[cfg(not(loom))]
    pub const fn new(v: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(v),
        }
    }

    #[cfg(loom)]
    pub fn new(v: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(v),
        }
    }
}

impl<T: ?Sized> SpinLock<T> {
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }

    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        // Acquire pairs with the Release store in `SpinLockGuard::drop`: the
        // previous holder's writes to `data` are visible to the new holder.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinLockGuard { lock: self })
    }

    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        return self.data.get_mut();
        #[cfg(loom)]
        // SAFETY: `&mut self` proves no guard is alive.
        return self.data.with_mut(|p| unsafe { &mut *p });
    }
}

/// Holds a [`SpinLock`]; derefs to the protected data.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinLockGuard<'a, T: ?Sized> {
    lock: &'a SpinLock<T>,
}

impl<T: ?Sized> core::ops::Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this CPU holds the lock, so no one else accesses `data` until it is dropped.
        self.lock.data.with(|p| unsafe { &*p })
    }
}

impl<T: ?Sized> core::ops::DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference derived from the guard.
        self.lock.data.with_mut(|p| unsafe { &mut *p })
    }
}

impl<T: ?Sized> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the Acquire exchange in `SpinLock::try_lock`.
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// Deliberate breakage of a concurrency protocol, for mutation tests of the
/// loom models: each model is run once as written, where it must pass, and
/// once with the barrier or check it depends on removed, where loom must
/// report a failure. Outside `cfg(loom)` nothing can be injected and
/// [`injected`] is a constant `false` that compiles away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Fault {
    /// RCU: a quiescent-state report stops being a Release store, so a
    /// reader's accesses are no longer ordered before the grace period end.
    RcuReportRelaxed = 1 << 0,
    /// RCU: a callback queued during a grace period is satisfied by that
    /// grace period, which may have started before the removal it protects.
    RcuSnapCountsCurrentGp = 1 << 1,
    /// RCU: the grace-period engine samples an idle CPU's counter with a
    /// plain load instead of a read-modify-write.
    RcuIdleSampleLoad = 1 << 2,
    /// VMA: attaching stops being a Release store, so a reader that locks
    /// a freshly (re)initialised VMA may see its old fields.
    VmaAttachRelaxed = 1 << 3,
    /// VMA: a reader takes a reference even on a detached VMA.
    VmaSkipDetachedCheck = 1 << 4,
    /// VMA: `lock_vma_under_rcu` no longer checks the VMA's owner.
    VmaSkipMmCheck = 1 << 5,
    /// VMA: `lock_vma_under_rcu` no longer checks the VMA still covers the
    /// faulting address.
    VmaSkipRangeCheck = 1 << 6,
    /// Slab: a type-safe-by-RCU cache frees an empty slab page at once
    /// instead of after a grace period.
    SlabFreeWithoutGracePeriod = 1 << 8,
    /// Page table: a new table is linked into its parent before it is
    /// zeroed, so a walker may find the frame's old contents.
    PgtablePublishBeforeZero = 1 << 12,
    /// Page table: a new table is linked with a Relaxed compare-and-swap,
    /// so its zeroing is not ordered before walkers that find it.
    PgtablePublishRelaxed = 1 << 13,
    /// Page table: walkers read table entries with Relaxed loads, so they
    /// are not ordered after the zeroing of the table they enter.
    PgtableWalkRelaxed = 1 << 14,
    /// Shootdown: the initiator samples the CPUs' loaded address spaces with
    /// plain loads instead of RMWs, so a CPU that is activating the address
    /// space may be missed while it misses the stale mark.
    ShootdownSampleLoad = 1 << 16,
    /// Shootdown: an initiator posts its request with a Relaxed RMW, so a
    /// target may read an old request (and skip the flush it asks for).
    ShootdownPendingRelaxed = 1 << 17,
    /// ASIDs: `invalidate_cached` marks nothing, so a CPU that switched
    /// away during a shootdown comes back to its stale entries.
    AsidSkipMark = 1 << 18,
    /// ASIDs: activation writes the context back with a plain store, which
    /// can overwrite a stale mark that landed after it read the word.
    AsidStoreOverMark = 1 << 19,
}

#[cfg(loom)]
static INJECTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether `f` is being injected (only ever under `cfg(loom)`).
#[inline(always)]
pub fn injected(f: Fault) -> bool {
    #[cfg(loom)]
    return INJECTED.load(std::sync::atomic::Ordering::SeqCst) & f as u32 != 0;
    #[cfg(not(loom))]
    {
        let _ = f;
        false
    }
}

/// Runs `body` with `f` injected. The switch is process-wide: loom test
/// binaries run with `--test-threads=1`.
#[cfg(loom)]
pub fn with_fault<R>(f: Fault, body: impl FnOnce() -> R) -> R {
    use std::sync::atomic::Ordering::SeqCst;
    struct Reset(u32);
    impl Drop for Reset {
        fn drop(&mut self) {
            INJECTED.fetch_and(!self.0, SeqCst);
        }
    }
    INJECTED.fetch_or(f as u32, SeqCst);
    let _reset = Reset(f as u32);
    body()
}
