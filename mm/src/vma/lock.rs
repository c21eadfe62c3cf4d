//! The mmap lock, its sequence count, and per-VMA locks.
//!
//! This is the final form of Linux's per-VMA locking (a reference count in
//! place of a per-VMA rwsem), with two changes Rust makes easy:
//!
//! - A VMA read lock never touches the VMA's address space. Linux's reader
//!   may have to wake a writer waiting on `mm->vma_writer_wait` when it drops
//!   its reference, and for a recycled VMA that mm may be a foreign one being
//!   freed (it had to learn to pin it first). Samara's writers wait by
//!   spinning on the VMA's own count, so the owner is only ever *compared*:
//!   [`MmId`] is an opaque number with no way to dereference it.
//! - Holding the mmap write lock is a value, [`MmapWriteGuard`]; write-locking
//!   a VMA takes it, and the returned [`VmaWriteLocked`] proof is what the
//!   VMA's mutators demand.
//!
//! # The VMA lock word (`refcnt`)
//!
//! | value                  | meaning                                         |
//! |------------------------|-------------------------------------------------|
//! | 0                      | detached: not in any tree; readers fail         |
//! | 1                      | attached, unlocked                              |
//! | 1 + n                  | attached, n readers (transient or holding)      |
//! | `WRITER_OFFSET` + ...  | a writer is draining readers; readers fail      |
//!
//! A writer holds the VMA "write-locked" not through the count but through
//! `lock_seq`: write-locking stores the mm's current (odd) write sequence
//! there, and readers compare it with the mm's sequence. Unlocking the mmap
//! write lock bumps the mm's sequence, which unlocks every VMA write-locked
//! under it at once.
//!
//! # Memory ordering
//!
//! - (V1) *Attach.* The writer fills in the VMA (range, owner, flags), then
//!   [`VmaLock::mark_attached`] stores 1 with Release. A reader's reference
//!   increment is an Acquire RMW, so if it succeeds on the attached VMA it
//!   sees the fields written before attaching (race 3 of the reference
//!   patch: reused, reinitialised and attached while the reader locks it).
//! - (V2) *Write lock vs. reader.* The writer adds `WRITER_OFFSET` (Acquire,
//!   pairing with readers' Release decrements so their reads of the VMA
//!   happen before the writer changes it), waits for the readers to drain,
//!   stores `lock_seq`, then removes the offset with Release. A reader whose
//!   increment (Acquire) comes after that removal sees `lock_seq` and backs
//!   off; one whose increment came before made the writer wait for it.
//! - (V3) *mmap write unlock.* [`MmapWriteGuard`]'s drop bumps the mm
//!   sequence with Release after all VMA changes; the reader's check of the
//!   sequence after taking its reference is Acquire, so a reader that sees
//!   the VMA unlocked also sees what the writer changed under the lock.

use core::fmt;
use core::marker::PhantomData;

use crate::cpu::{CpuId, PerCpu};
use crate::sync::{injected, spin_loop, AtomicU32, AtomicU64, Fault, Ordering};

/// Added to a VMA's reference count while a writer excludes readers.
pub const WRITER_OFFSET: u32 = 0x4000_0000;
/// Readers fail to take a reference at or above this count.
pub const READER_LIMIT: u32 = WRITER_OFFSET - 1;

/// An address space's identity, for ownership checks on VMAs found under
/// RCU. It is a number, not a pointer: a recycled VMA's owner may be an
/// address space that no longer exists, so it must never be followed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmId(u64);

impl MmId {
    /// The identity of the object at `addr`; address spaces use their own
    /// address, which is unique among live address spaces.
    pub const fn from_addr(addr: usize) -> Self {
        MmId(addr as u64)
    }

    /// The identity a VMA has before it is given an owner.
    pub const NONE: MmId = MmId(0);

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn from_raw(raw: u64) -> Self {
        MmId(raw)
    }
}

impl fmt::Debug for MmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MmId({:#x})", self.0)
    }
}

/// The mmap lock: a reader/writer spin lock over an address space's VMA
/// layout, plus the write sequence count per-VMA locks are checked against.
///
/// Lock order: mmap lock, then VMA write locks (taken under the mmap write
/// lock, in any order: they never wait for each other, only for readers,
/// who never wait for anything while holding a VMA read lock).
pub struct MmapLock {
    /// Bit 31: a writer holds the lock. Bit 30: a writer is waiting (new
    /// readers hold off, so writers are not starved). Bits 0..30: readers.
    state: AtomicU32,
    /// Odd while a writer holds the lock; see the module docs.
    seq: AtomicU64,
}

const MMAP_WRITER: u32 = 1 << 31;
const MMAP_WAITING: u32 = 1 << 30;
const MMAP_READERS: u32 = MMAP_WAITING - 1;

impl Default for MmapLock {
    fn default() -> Self {
        Self::new()
    }
}

impl MmapLock {
    pub fn new() -> Self {
        MmapLock {
            state: AtomicU32::new(0),
            seq: AtomicU64::new(0),
        }
    }

    pub fn try_read(&self) -> Option<MmapReadGuard<'_>> {
        let s = self.state.load(Ordering::Relaxed);
        if s & (MMAP_WRITER | MMAP_WAITING) != 0 || s & MMAP_READERS == MMAP_READERS {
            return None;
        }
        // Acquire pairs with the Release in `MmapWriteGuard::drop`.
        self.state
            .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| MmapReadGuard {
                lock: self,
                _not_send: PhantomData,
            })
    }

    pub fn read(&self) -> MmapReadGuard<'_> {
        loop {
            if let Some(g) = self.try_read() {
                return g;
            }
            spin_loop();
        }
    }

    pub fn try_write(&self) -> Option<MmapWriteGuard<'_>> {
        let s = self.state.load(Ordering::Relaxed);
        if s & (MMAP_WRITER | MMAP_READERS) != 0 {
            return None;
        }
        self.state
            .compare_exchange(s, MMAP_WRITER, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| self.begin_write())
    }

    pub fn write(&self) -> MmapWriteGuard<'_> {
        loop {
            if let Some(g) = self.try_write() {
                return g;
            }
            // Announce ourselves so that new readers wait; the bit is
            // cleared when we take the lock (the store of MMAP_WRITER).
            self.state.fetch_or(MMAP_WAITING, Ordering::Relaxed);
            spin_loop();
        }
    }

    fn begin_write(&self) -> MmapWriteGuard<'_> {
        // Relaxed: readers of `seq` are ordered against this by the VMA
        // write lock (V2) that must be taken before any VMA changes.
        let s = self.seq.load(Ordering::Relaxed);
        debug_assert!(s & 1 == 0);
        self.seq.store(s + 1, Ordering::Relaxed);
        MmapWriteGuard {
            lock: self,
            seq: s + 1,
            _not_send: PhantomData,
        }
    }

    /// The current write sequence (odd while write-locked).
    #[inline]
    pub fn seq(&self) -> u64 {
        // (V3): Acquire pairs with the Release bump in `MmapWriteGuard::drop`.
        self.seq.load(Ordering::Acquire)
    }

    /// Whether some CPU holds the lock for writing (for assertions).
    pub fn is_write_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & MMAP_WRITER != 0
    }
}

/// Shared hold of the mmap lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MmapReadGuard<'a> {
    lock: &'a MmapLock,
    _not_send: PhantomData<*mut ()>,
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // Release pairs with the writer's Acquire exchange.
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

/// Exclusive hold of the mmap lock; the key to every VMA write lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MmapWriteGuard<'a> {
    lock: &'a MmapLock,
    seq: u64,
    _not_send: PhantomData<*mut ()>,
}

impl MmapWriteGuard<'_> {
    /// This write section's sequence number (odd).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn lock(&self) -> &MmapLock {
        self.lock
    }
}

impl Drop for MmapWriteGuard<'_> {
    fn drop(&mut self) {
        // (V3): unlock every VMA write-locked under this section in one
        // step. Release pairs with the Acquire in `MmapLock::seq`, read by
        // `VmaLock::try_read` after it took its reference.
        self.lock.seq.store(self.seq + 1, Ordering::Release);
        // Release pairs with the Acquire exchanges that take the lock next.
        self.lock.state.store(0, Ordering::Release);
    }
}

/// Proof that one VMA is write-locked under the current mmap write lock.
/// Mutators of the VMA's fields take it (and check it is theirs); it cannot
/// outlive the mmap write guard.
#[derive(Clone, Copy)]
pub struct VmaWriteLocked<'g> {
    lock: &'g VmaLock,
}

impl VmaWriteLocked<'_> {
    /// Whether this proof is for `lock`.
    pub fn is_for(&self, lock: &VmaLock) -> bool {
        core::ptr::eq(self.lock, lock)
    }
}

/// Why a VMA read lock was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLockError {
    /// The VMA was detached (freed, maybe reused) after it was found: the
    /// caller should look again (Linux's `-EAGAIN`, counted as a miss).
    Detached,
    /// A writer holds or is taking the VMA's write lock, or too many
    /// readers: fall back to the mmap lock.
    Contended,
}

/// A VMA's lock: the part of a VMA that its slab constructor creates and
/// that survives the VMA's reuse. See the module docs for the protocol.
pub struct VmaLock {
    refcnt: AtomicU32,
    /// The mm write sequence under which this VMA was last write-locked.
    lock_seq: AtomicU64,
}

impl VmaLock {
    /// A detached, unlocked VMA lock, as a slab constructor creates it.
    /// (Having one by value is harmless; the slab never hands out the
    /// `&mut` that could overwrite a live VMA's lock with it.)
    pub fn new_detached() -> Self {
        VmaLock {
            refcnt: AtomicU32::new(0),
            lock_seq: AtomicU64::new(u64::MAX),
        }
    }

    /// Tries to take a read reference (the first half of Linux's
    /// `vma_start_read`); the caller then checks the owner and calls
    /// [`VmaLock::check_unlocked`].
    ///
    /// `mm_seq` is the write sequence of the address space the caller
    /// believes owns the VMA; for a recycled VMA it may belong to another
    /// mm, which only leads to a false "contended" and a fallback.
    pub fn try_get(&self, mm: &MmapLock) -> Result<(), ReadLockError> {
        // Cheap early check, racy by design: a writer may lock right after.
        // A stale value only causes a false "contended" (never a false
        // "unlocked": the authoritative check is in `check_unlocked`).
        if self.lock_seq.load(Ordering::Relaxed) == mm.seq.load(Ordering::Relaxed) {
            return Err(ReadLockError::Contended);
        }
        let mut cur = self.refcnt.load(Ordering::Relaxed);
        loop {
            if cur == 0 && !injected(Fault::VmaSkipDetachedCheck) {
                return Err(ReadLockError::Detached);
            }
            if cur >= READER_LIMIT {
                return Err(ReadLockError::Contended);
            }
            // (V1), (V2): Acquire pairs with the Release store in
            // `mark_attached` and the Release removal of the writer offset
            // in `write_lock`.
            match self.refcnt.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
            spin_loop();
        }
    }

    /// With a reference held: fails if the VMA is write-locked under the
    /// current mmap write lock of `mm` (and then drops the reference).
    pub fn check_unlocked(&self, mm: &MmapLock) -> Result<(), ReadLockError> {
        // (V3): `mm.seq()` is Acquire. Relaxed suffices for `lock_seq`: the
        // writer stored it before removing its offset (Release) and our
        // increment was Acquire.
        if self.lock_seq.load(Ordering::Relaxed) == mm.seq() {
            self.put();
            return Err(ReadLockError::Contended);
        }
        Ok(())
    }

    /// Drops a read reference.
    pub fn put(&self) {
        // Release pairs with the writer's Acquire in `write_lock`/
        // `mark_detached`: our reads of the VMA happen before its changes.
        let old = self.refcnt.fetch_sub(1, Ordering::Release);
        debug_assert!(old & !WRITER_OFFSET >= 1, "VMA reference count underflow");
    }

    /// Write-locks the VMA under `mmap` (Linux's `vma_start_write`): waits
    /// for readers to drain; afterwards new readers fail until the mmap
    /// write lock is dropped. Idempotent within one mmap write section.
    pub fn write_lock<'g>(&'g self, mmap: &'g MmapWriteGuard<'_>) -> VmaWriteLocked<'g> {
        if self.lock_seq.load(Ordering::Relaxed) != mmap.seq() {
            // (V2): Acquire pairs with readers' Release in `put`.
            let old = self.refcnt.fetch_add(WRITER_OFFSET, Ordering::Acquire);
            debug_assert!(old < WRITER_OFFSET, "two writers on one VMA");
            // Wait until only the "attached" reference (or none) remains.
            while self.refcnt.load(Ordering::Acquire) > WRITER_OFFSET + 1 {
                spin_loop();
            }
            self.lock_seq.store(mmap.seq(), Ordering::Relaxed);
            // (V2): Release orders the `lock_seq` store before readers'
            // Acquire increments that come after this.
            self.refcnt.fetch_sub(WRITER_OFFSET, Ordering::Release);
        }
        VmaWriteLocked { lock: self }
    }

    /// Whether the VMA is write-locked under `mmap`.
    pub fn is_write_locked(&self, mmap: &MmapWriteGuard<'_>) -> bool {
        self.lock_seq.load(Ordering::Relaxed) == mmap.seq()
    }

    /// Makes a detached VMA visible to readers, after its fields are set
    /// and it is in the tree (V1).
    pub fn mark_attached(&self, w: VmaWriteLocked<'_>) {
        debug_assert!(w.is_for(self));
        debug_assert_eq!(
            self.refcnt.load(Ordering::Relaxed),
            0,
            "attaching an attached VMA"
        );
        let order = if injected(Fault::VmaAttachRelaxed) {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        self.refcnt.store(1, order);
    }

    /// Detaches a write-locked VMA once it is out of the tree, waiting for
    /// transient readers (who took a reference and will see the write lock
    /// and back off) to let go. Afterwards readers fail with `Detached`.
    pub fn mark_detached(&self, w: VmaWriteLocked<'_>) {
        debug_assert!(w.is_for(self));
        // Acquire pairs with readers' Release in `put`.
        let old = self.refcnt.fetch_sub(1, Ordering::Acquire);
        debug_assert!(
            (1..WRITER_OFFSET).contains(&old),
            "detaching a detached VMA ({old})"
        );
        while self.refcnt.load(Ordering::Acquire) != 0 {
            spin_loop();
        }
    }

    /// Write-locks a VMA no reader can reach (a fresh allocation, or one
    /// the caller just took out of every tree and detached).
    pub fn write_lock_unreachable<'g>(
        &'g self,
        mmap: &'g MmapWriteGuard<'_>,
    ) -> VmaWriteLocked<'g> {
        debug_assert_eq!(self.refcnt.load(Ordering::Relaxed), 0, "VMA is reachable");
        self.lock_seq.store(mmap.seq(), Ordering::Relaxed);
        VmaWriteLocked { lock: self }
    }

    pub fn is_attached(&self) -> bool {
        self.refcnt.load(Ordering::Acquire) != 0
    }

    /// The raw count, for assertions and tests.
    pub fn refcnt(&self) -> u32 {
        self.refcnt.load(Ordering::Relaxed)
    }
}

/// What a lockless VMA lookup needs from (a handle on) a VMA: its lock, and
/// its owner and range, which [`lock_vma_under_rcu`] reads only once it
/// holds a reference (they may have changed under a recycled VMA: that is
/// what the checks catch).
pub trait LockableVma {
    fn vma_lock(&self) -> &VmaLock;
    fn owner(&self) -> MmId;
    /// `start <= addr < end`, read with Relaxed loads.
    fn covers(&self, addr: u64) -> bool;
}

/// Linux's `VMA_LOCK_*` events, and faults handled under the mmap lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum VmaLockEvent {
    /// The fault was handled under the VMA lock.
    Success,
    /// Locking failed (contended, wrong mm, range changed): fell back.
    Abort,
    /// The fault needed the mmap lock after all (e.g. preparing anon_vma).
    Retry,
    /// The VMA was detached after it was found; looked up again.
    Miss,
    /// Handled under the mmap read lock.
    MmapLocked,
}

const N_EVENTS: usize = 5;

/// Per-CPU event counters. Each CPU writes only its own cache line (plain
/// Relaxed load/store, no RMW): counting costs no shared-line write.
pub struct VmaLockStats {
    counts: PerCpu<[AtomicU64; N_EVENTS]>,
}

/// A summed snapshot of [`VmaLockStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmaLockCounts {
    pub success: u64,
    pub abort: u64,
    pub retry: u64,
    pub miss: u64,
    pub mmap_locked: u64,
}

impl Default for VmaLockStats {
    fn default() -> Self {
        Self::new()
    }
}

impl VmaLockStats {
    pub fn new() -> Self {
        VmaLockStats {
            counts: PerCpu::new(|_| core::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// Counts `ev` on `cpu`. Only `cpu` itself may call this.
    #[inline]
    pub fn count(&self, cpu: CpuId, ev: VmaLockEvent) {
        let c = &self.counts.get(cpu)[ev as usize];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> VmaLockCounts {
        let mut t = [0u64; N_EVENTS];
        for (_, c) in self.counts.iter() {
            for (i, v) in c.iter().enumerate() {
                t[i] += v.load(Ordering::Relaxed);
            }
        }
        VmaLockCounts {
            success: t[0],
            abort: t[1],
            retry: t[2],
            miss: t[3],
            mmap_locked: t[4],
        }
    }
}

/// A VMA read lock taken by [`lock_vma_under_rcu`]; dropping it unlocks.
///
/// Holds a reference on the VMA's count, which keeps it attached (detaching
/// waits for readers), hence allocated: this incarnation is pinned.
#[must_use = "the VMA is unlocked as soon as the guard is dropped"]
pub struct VmaReadGuard<V: LockableVma> {
    vma: V,
}

impl<V: LockableVma> VmaReadGuard<V> {
    pub fn vma(&self) -> &V {
        &self.vma
    }
}

impl<V: LockableVma> Drop for VmaReadGuard<V> {
    fn drop(&mut self) {
        self.vma.vma_lock().put();
    }
}

/// Finds the VMA covering `addr` in the address space `(mm_id, mmap)`
/// without the mmap lock and read-locks it (Linux's `lock_vma_under_rcu`).
///
/// `lookup` walks the VMA index under the caller's RCU read section. Under
/// `SLAB_TYPESAFE_BY_RCU` the VMA it returns may be freed and reused at any
/// moment, even for another address space, so after taking the reference:
/// the owner must be `mm_id` (race 2: reused by another mm while we locked
/// it), it must not be write-locked, and it must still cover `addr` (race 1
/// and 3: reused or changed at another address). A detached VMA (race 1:
/// freed after we found it) is a miss and the walk is retried. Any other
/// doubt returns `None` and the caller takes the mmap lock.
pub fn lock_vma_under_rcu<V: LockableVma>(
    mm_id: MmId,
    mmap: &MmapLock,
    addr: u64,
    cpu: CpuId,
    stats: &VmaLockStats,
    mut lookup: impl FnMut(u64) -> Option<V>,
) -> Option<VmaReadGuard<V>> {
    loop {
        let Some(vma) = lookup(addr) else {
            stats.count(cpu, VmaLockEvent::Abort);
            return None;
        };
        match vma.vma_lock().try_get(mmap) {
            Ok(()) => {}
            Err(ReadLockError::Detached) => {
                stats.count(cpu, VmaLockEvent::Miss);
                spin_loop();
                continue;
            }
            Err(_) => {
                stats.count(cpu, VmaLockEvent::Abort);
                return None;
            }
        }
        // Race 2: reused for another address space. Compare only: the
        // owner may be gone (see `MmId`).
        if vma.owner() != mm_id && !injected(Fault::VmaSkipMmCheck) {
            vma.vma_lock().put();
            stats.count(cpu, VmaLockEvent::Abort);
            return None;
        }
        if vma.vma_lock().check_unlocked(mmap).is_err() {
            stats.count(cpu, VmaLockEvent::Abort);
            return None;
        }
        // Races 1 and 3: reused, or changed, at another range.
        if !vma.covers(addr) && !injected(Fault::VmaSkipRangeCheck) {
            vma.vma_lock().put();
            stats.count(cpu, VmaLockEvent::Abort);
            return None;
        }
        return Some(VmaReadGuard { vma });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct V {
        lock: VmaLock,
        owner: MmId,
        range: (u64, u64),
    }

    impl LockableVma for &V {
        fn vma_lock(&self) -> &VmaLock {
            &self.lock
        }
        fn owner(&self) -> MmId {
            self.owner
        }
        fn covers(&self, addr: u64) -> bool {
            self.range.0 <= addr && addr < self.range.1
        }
    }

    const MM: MmId = MmId::from_raw(0x1000);

    fn attached(mmap: &MmapLock) -> V {
        let v = V {
            lock: VmaLock::new_detached(),
            owner: MM,
            range: (0x1000, 0x3000),
        };
        let g = mmap.write();
        let w = v.lock.write_lock_unreachable(&g);
        v.lock.mark_attached(w);
        v
    }

    #[test]
    fn fresh_vma_is_write_locked_until_mmap_unlock() {
        let mmap = MmapLock::new();
        let stats = VmaLockStats::new();
        let v = V {
            lock: VmaLock::new_detached(),
            owner: MM,
            range: (0x1000, 0x3000),
        };
        let g = mmap.write();
        assert!(mmap.is_write_locked());
        let w = v.lock.write_lock_unreachable(&g);
        v.lock.mark_attached(w);
        assert!(lock_vma_under_rcu(MM, &mmap, 0x1000, 0, &stats, |_| Some(&v)).is_none());
        assert_eq!(
            v.lock.refcnt(),
            1,
            "the failed reader dropped its reference"
        );
        drop(g);
        let r = lock_vma_under_rcu(MM, &mmap, 0x1000, 0, &stats, |_| Some(&v)).unwrap();
        assert_eq!(v.lock.refcnt(), 2);
        drop(r);
        assert_eq!(v.lock.refcnt(), 1);
        let c = stats.snapshot();
        assert_eq!((c.abort, c.miss), (1, 0));
    }

    #[test]
    fn checks_owner_range_and_detached() {
        let mmap = MmapLock::new();
        let stats = VmaLockStats::new();
        let v = attached(&mmap);
        let other = MmId::from_raw(0x2000);
        assert!(lock_vma_under_rcu(other, &mmap, 0x1000, 0, &stats, |_| Some(&v)).is_none());
        assert!(lock_vma_under_rcu(MM, &mmap, 0x3000, 0, &stats, |_| Some(&v)).is_none());
        assert!(lock_vma_under_rcu(MM, &mmap, 0x2fff, 0, &stats, |_| Some(&v)).is_some());
        assert_eq!(v.lock.refcnt(), 1);
        // Detach; a lookup that still finds it misses, then the retry
        // finds nothing.
        {
            let g = mmap.write();
            let w = v.lock.write_lock(&g);
            v.lock.mark_detached(w);
        }
        let mut first = true;
        let found = lock_vma_under_rcu(MM, &mmap, 0x1000, 0, &stats, |_| {
            core::mem::take(&mut first).then_some(&v)
        });
        assert!(found.is_none());
        let c = stats.snapshot();
        assert_eq!((c.abort, c.miss, c.success), (3, 1, 0));
    }

    #[test]
    fn write_lock_is_idempotent_and_excludes_readers() {
        let mmap = MmapLock::new();
        let stats = VmaLockStats::new();
        let v = attached(&mmap);
        let g = mmap.write();
        let w1 = v.lock.write_lock(&g);
        let w2 = v.lock.write_lock(&g);
        assert!(w1.is_for(&v.lock) && w2.is_for(&v.lock));
        assert!(v.lock.is_write_locked(&g));
        assert_eq!(v.lock.refcnt(), 1);
        assert_eq!(v.lock.try_get(&mmap), Err(ReadLockError::Contended));
        drop(g);
        assert!(lock_vma_under_rcu(MM, &mmap, 0x1000, 0, &stats, |_| Some(&v)).is_some());
    }

    #[test]
    fn mmap_lock_readers_and_writers_exclude() {
        let mmap = MmapLock::new();
        let r1 = mmap.read();
        let r2 = mmap.try_read().unwrap();
        assert!(mmap.try_write().is_none());
        drop((r1, r2));
        let w = mmap.try_write().unwrap();
        assert_eq!(w.seq() & 1, 1);
        assert!(mmap.try_read().is_none());
        drop(w);
        assert_eq!(mmap.seq() & 1, 0);
    }

    #[test]
    fn mmap_lock_under_threads() {
        use std::sync::Arc;
        let mmap = Arc::new(MmapLock::new());
        let counter = Arc::new(AtomicU64::new(0));
        let n = if cfg!(miri) { 20 } else { 10_000 };
        let ts: Vec<_> = (0..3)
            .map(|i| {
                let (mmap, counter) = (mmap.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..n {
                        if i == 0 {
                            let _g = mmap.write();
                            // Non-atomic increment under the write lock.
                            let c = counter.load(Ordering::Relaxed);
                            counter.store(c + 1, Ordering::Relaxed);
                        } else {
                            let _g = mmap.read();
                            assert_eq!(mmap.seq() & 1, 0, "reader inside a write section");
                        }
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), n);
        assert_eq!(mmap.seq(), 2 * n);
    }
}
