//! Virtual memory areas.
//!
//! A VMA is a slab object of the type-safe-by-RCU VMA cache, split the way
//! [`SlabObject`] demands:
//!
//! - [`VmaStable`], built once per slab slot by the constructor and never
//!   replaced: the VMA lock (reference count + lock sequence, see
//!   [`lock`]) and the head of the VMA's anon_vma chain list. A lockless
//!   reader holding a stale pointer touches only this part before it has
//!   pinned the VMA.
//! - [`VmaPayload`], the per-allocation part: range, flags, page offset,
//!   owner, anon_vma, shared-memory object. Every field is an atomic so that
//!   a reader that pinned the VMA (its reference keeps writers out) and the
//!   writer that changes it under the VMA write lock never race on plain
//!   memory. Fork's duplicate clones exactly this part ([`Slab::dup`]); the
//!   list head it must not overwrite is not reachable from here.
//!
//! [`Slab::dup`]: crate::slab::Slab::dup

pub mod anon;
pub mod lock;

use core::fmt;
use core::marker::PhantomData;
use core::num::NonZeroUsize;
use core::ptr::NonNull;

use bitflags::bitflags;

use self::anon::{AnonVma, SameVmaAdapter};
use self::lock::{LockableVma, MmId, VmaLock, VmaWriteLocked};
use crate::addr::PAGE_SIZE;
use crate::maple::MapleEntry;
use crate::rcu::RcuReadGuard;
use crate::slab::{Ctor, SlabObject, SlabPtr, StableList};
use crate::sync::{AtomicPtr, AtomicU64, Ordering};

bitflags! {
    /// What a VMA allows and how it behaves (Linux's `VM_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct VmFlags: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXEC = 1 << 2;
        /// Writes are shared with every mapping of the same memory (and
        /// survive fork as shared), instead of copied on write.
        const SHARED = 1 << 3;
        /// A stack: grows down on faults just below its start.
        const GROWSDOWN = 1 << 8;
        /// The heap managed by `brk`.
        const HEAP = 1 << 9;
    }
}

impl VmFlags {
    /// The access bits.
    pub const ACCESS: VmFlags = VmFlags::from_bits_truncate(
        VmFlags::READ.bits() | VmFlags::WRITE.bits() | VmFlags::EXEC.bits(),
    );

    /// Private and writable: written pages are copied on write after fork.
    pub fn is_cow(self) -> bool {
        self.contains(VmFlags::WRITE) && !self.contains(VmFlags::SHARED)
    }
}

/// The slab object type of VMAs.
pub enum VmaObj {}

/// The constructor-owned part of a VMA: survives free and reuse.
pub struct VmaStable {
    pub(crate) lock: VmaLock,
    /// The anon_vma chain entries of this VMA (Linux's
    /// `vma->anon_vma_chain`), protected by the owning address space's
    /// anon lock.
    pub(crate) chains: StableList<SameVmaAdapter>,
}

/// The per-allocation part of a VMA.
pub struct VmaPayload {
    start: AtomicU64,
    end: AtomicU64,
    flags: AtomicU64,
    /// Offset of `start` in the backing object, in pages (for anonymous
    /// private memory, `start / PAGE_SIZE` when the VMA was created).
    pgoff: AtomicU64,
    owner: AtomicU64,
    anon_vma: AtomicPtr<AnonVma>,
    shm: AtomicPtr<u8>,
}

impl VmaPayload {
    pub fn new(owner: MmId, start: u64, end: u64, flags: VmFlags, pgoff: u64) -> Self {
        debug_assert!(
            start < end
                && start.is_multiple_of(PAGE_SIZE as u64)
                && end.is_multiple_of(PAGE_SIZE as u64)
        );
        VmaPayload {
            start: AtomicU64::new(start),
            end: AtomicU64::new(end),
            flags: AtomicU64::new(flags.bits()),
            pgoff: AtomicU64::new(pgoff),
            owner: AtomicU64::new(owner.raw()),
            anon_vma: AtomicPtr::new(core::ptr::null_mut()),
            shm: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

/// The duplicate fork makes (Linux's `vm_area_dup`): every payload field,
/// and nothing else — the list head and lock are the new slot's own.
impl Clone for VmaPayload {
    fn clone(&self) -> Self {
        let r = Ordering::Relaxed;
        VmaPayload {
            start: AtomicU64::new(self.start.load(r)),
            end: AtomicU64::new(self.end.load(r)),
            flags: AtomicU64::new(self.flags.load(r)),
            pgoff: AtomicU64::new(self.pgoff.load(r)),
            owner: AtomicU64::new(self.owner.load(r)),
            anon_vma: AtomicPtr::new(self.anon_vma.load(r)),
            shm: AtomicPtr::new(self.shm.load(r)),
        }
    }
}

impl SlabObject for VmaObj {
    type Stable = VmaStable;
    type Payload = VmaPayload;

    fn construct(ctor: &Ctor<'_>) -> VmaStable {
        VmaStable {
            lock: VmaLock::new_detached(),
            chains: StableList::new(ctor, SameVmaAdapter::new()),
        }
    }
}

/// A pointer to a VMA: what the maple tree stores.
///
/// Copyable and unchecked, like the pointers Linux keeps in its maple tree;
/// what may be done through it depends on what the holder has pinned, so
/// the payload accessors are `unsafe` with that contract. The stable part
/// is always safe to read while the VMA's slab page is alive (see
/// [`VmaRef::stable`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VmaRef(SlabPtr<VmaObj>);

impl fmt::Debug for VmaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmaRef({:p})", self.0.as_raw())
    }
}

impl MapleEntry for VmaRef {
    fn into_raw(self) -> NonZeroUsize {
        // The tree stores plain integers: expose the slot's provenance so
        // that `from_raw` can take it back up.
        let addr = self.0.as_raw().as_ptr().expose_provenance();
        // SAFETY: a slab slot address is never zero.
        unsafe { NonZeroUsize::new_unchecked(addr) }
    }

    unsafe fn from_raw(raw: NonZeroUsize) -> Self {
        // `raw` came from `into_raw` of a `VmaRef` (caller's contract),
        // i.e. from `SlabPtr::as_raw`, whose provenance `into_raw` exposed.
        // (Miri warns about the integer-to-pointer step;
        // `-Zmiri-permissive-provenance` acknowledges it.)
        let p = core::ptr::with_exposed_provenance_mut::<u8>(raw.get());
        // SAFETY: `p` is the non-zero address of a live slab slot of the VMA cache, with the provenance exposed by `into_raw`.
        VmaRef(unsafe { SlabPtr::from_raw(NonNull::new_unchecked(p)) })
    }
}

impl VmaRef {
    pub(crate) fn new(p: SlabPtr<VmaObj>) -> Self {
        VmaRef(p)
    }

    pub(crate) fn slab_ptr(self) -> SlabPtr<VmaObj> {
        self.0
    }

    /// The constructor-owned part.
    ///
    /// # Safety
    /// The VMA's slab page is alive for `'a`: the VMA is allocated and not
    /// freed during `'a` (its address space's mmap lock or a VMA reference
    /// pins it), or `'a` lies inside the RCU read section in which this
    /// pointer was read from the VMA tree (the VMA cache is type-safe by
    /// RCU; the stable part may then belong to a reused VMA).
    pub unsafe fn stable<'a>(self) -> &'a VmaStable {
        // SAFETY: forwarded contract.
        unsafe { self.0.stable() }
    }

    /// The payload.
    ///
    /// # Safety
    /// This incarnation of the VMA is pinned for `'a`: it is in a tree
    /// whose mmap lock the caller holds, or the caller holds a VMA read
    /// reference on it, or the caller owns it (unpublished or detached
    /// under the mmap write lock). Fields change only under the VMA write
    /// lock, and every field is atomic, so a shared reference is sound.
    pub unsafe fn payload<'a>(self) -> &'a VmaPayload {
        // SAFETY: forwarded contract.
        unsafe { self.0.payload() }
    }
}

/// Reads of a pinned VMA; see [`VmaRef::payload`] for when one is pinned.
/// Relaxed loads: ordering comes from whatever pinned the VMA.
impl VmaPayload {
    #[inline]
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn flags(&self) -> VmFlags {
        VmFlags::from_bits_retain(self.flags.load(Ordering::Relaxed))
    }

    #[inline]
    pub fn pgoff(&self) -> u64 {
        self.pgoff.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn owner(&self) -> MmId {
        MmId::from_raw(self.owner.load(Ordering::Relaxed))
    }

    #[inline]
    pub fn anon_vma(&self) -> *mut AnonVma {
        self.anon_vma.load(Ordering::Acquire)
    }

    #[inline]
    pub fn shm(&self) -> *mut u8 {
        self.shm.load(Ordering::Relaxed)
    }

    /// The page offset of `addr` inside this VMA's backing object.
    #[inline]
    pub fn pgoff_of(&self, addr: u64) -> u64 {
        self.pgoff() + (addr - self.start()) / PAGE_SIZE as u64
    }

    /// Changes the range. The caller write-locked this VMA (`w`).
    pub fn set_range(&self, w: VmaWriteLocked<'_>, start: u64, end: u64, pgoff: u64) {
        let _ = w;
        debug_assert!(start < end);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.pgoff.store(pgoff, Ordering::Relaxed);
    }

    /// Changes the flags. The caller write-locked this VMA (`w`).
    pub fn set_flags(&self, w: VmaWriteLocked<'_>, flags: VmFlags) {
        let _ = w;
        self.flags.store(flags.bits(), Ordering::Relaxed);
    }

    /// Sets the owner of a VMA being duplicated or reused. The caller
    /// write-locked it (`w`), and it is not attached.
    pub fn set_owner(&self, w: VmaWriteLocked<'_>, owner: MmId) {
        let _ = w;
        self.owner.store(owner.raw(), Ordering::Relaxed);
    }

    /// Publishes the anon_vma. Release pairs with the Acquire in
    /// [`Self::anon_vma`]: a fault that sees the pointer sees the anon_vma
    /// initialised. Under the owner's anon lock.
    pub(crate) fn set_anon_vma(&self, av: *mut AnonVma) {
        self.anon_vma.store(av, Ordering::Release);
    }

    pub(crate) fn set_shm(&self, w: VmaWriteLocked<'_>, shm: *mut u8) {
        let _ = w;
        self.shm.store(shm, Ordering::Relaxed);
    }
}

/// A VMA pointer read from the tree inside the RCU read section `'g`: the
/// handle [`lock::lock_vma_under_rcu`] works on. Its stable part stays
/// readable for the whole section (the cache is type-safe by RCU); its
/// owner and range are read only once a reference pins it.
#[derive(Clone, Copy)]
pub struct RcuVma<'g> {
    vma: VmaRef,
    _section: PhantomData<&'g RcuReadGuard<'g>>,
}

impl<'g> RcuVma<'g> {
    /// # Safety
    /// `vma` was read from a VMA tree inside `guard`'s read section (or the
    /// VMA was allocated when the section began).
    pub unsafe fn new(guard: &'g RcuReadGuard<'_>, vma: VmaRef) -> Self {
        let _ = guard;
        RcuVma {
            vma,
            _section: PhantomData,
        }
    }

    pub fn vma(&self) -> VmaRef {
        self.vma
    }
}

impl LockableVma for RcuVma<'_> {
    fn vma_lock(&self) -> &VmaLock {
        // SAFETY: read from the tree inside the read section `'g`, which outlives `self` (`new`'s contract); the VMA cache is type-safe by RCU, so the slot's page stays alive for the section.
        &unsafe { self.vma.stable() }.lock
    }

    fn owner(&self) -> MmId {
        // SAFETY: `lock_vma_under_rcu` calls this only with a read reference held, which pins this incarnation.
        unsafe { self.vma.payload() }.owner()
    }

    fn covers(&self, addr: u64) -> bool {
        // SAFETY: as for `owner`.
        let p = unsafe { self.vma.payload() };
        p.start() <= addr && addr < p.end()
    }
}
