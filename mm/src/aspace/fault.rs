//! The page-fault handler.
//!
//! First, without the mmap lock: find the VMA under RCU and read-lock it
//! ([`lock_vma_under_rcu`]), handle the fault under that lock. On any doubt
//! (no VMA, contended, recycled VMA, wrong address space, changed range), or
//! when the fault needs the mmap lock after all (preparing the anon_vma while
//! a writer holds the mmap lock), fall back: take the mmap read lock, find
//! the VMA (growing a stack if the address is just below one), handle the
//! fault there. Counted like Linux's `VMA_LOCK_*` vmstat events.
//!
//! Installing a page is lock-free ([`PageTable::install_leaf`]): two
//! faults on one page race with a compare-and-swap, the loser frees its
//! frame. Copy-on-write replaces the entry with another compare-and-swap
//! and frees the old frame's mapping reference only after the TLB flush.
//!
//! [`PageTable::install_leaf`]: crate::pgtable::PageTable::install_leaf

use super::{AddressSpace, Errno, PAGE};
use crate::addr::Frame;
use crate::cpu::CpuId;
use crate::pgtable::{CmpxchgError, InstallError, Prot, Pte, PteFormat};
use crate::sync::{fence, Ordering};
use crate::vma::lock::{lock_vma_under_rcu, MmapReadGuard, VmaLockEvent};
use crate::vma::{RcuVma, VmFlags, VmaRef};

/// What the faulting access tried to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exec,
}

/// Why a segmentation fault is delivered (Linux's `si_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegvKind {
    /// No mapping at the address (`SEGV_MAPERR`).
    MapErr,
    /// A mapping that forbids the access (`SEGV_ACCERR`).
    AccErr,
}

/// A fault the kernel must deliver to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    Segv { addr: u64, kind: SegvKind },
    OutOfMemory,
}

/// Why the handler did not finish under the lock it was called with.
pub(super) enum Fail {
    Segv(SegvKind),
    Oom,
    /// Needs the mmap lock (Linux's `VM_FAULT_RETRY` under a VMA lock).
    Retry,
}

/// Which lock pins the VMA during [`AddressSpace::fault_in`].
pub(super) enum Held<'g> {
    /// A VMA read lock (no mmap lock).
    Vma,
    /// The mmap read lock.
    Mmap(#[allow(dead_code)] &'g MmapReadGuard<'g>),
}

impl Access {
    fn allowed_by(self, flags: VmFlags) -> bool {
        match self {
            Access::Read => flags.contains(VmFlags::READ),
            Access::Write => flags.contains(VmFlags::WRITE),
            Access::Exec => flags.contains(VmFlags::EXEC),
        }
    }

    fn prot(self) -> Prot {
        match self {
            Access::Read => Prot::READ,
            Access::Write => Prot::WRITE,
            Access::Exec => Prot::EXEC,
        }
    }
}

/// The page protection a VMA's flags grant (user pages).
pub(super) fn vm_prot(flags: VmFlags) -> Prot {
    let mut p = Prot::USER;
    if flags.contains(VmFlags::READ) {
        p |= Prot::READ;
    }
    if flags.contains(VmFlags::WRITE) {
        p |= Prot::WRITE;
    }
    if flags.contains(VmFlags::EXEC) {
        p |= Prot::EXEC;
    }
    p
}

impl<F: PteFormat> AddressSpace<'_, F> {
    /// Handles a fault at `addr` on `cpu`. `Ok` means the access can be
    /// retried; an error is delivered to the task.
    pub fn handle_fault(&self, cpu: CpuId, addr: u64, access: Access) -> Result<(), FaultError> {
        // The instrumented build measures the cache lines faults write.
        #[cfg(feature = "count-shared-writes")]
        let _scope = crate::linecount::Scope::begin();
        self.handle_fault_inner(cpu, addr, access)
    }

    fn handle_fault_inner(&self, cpu: CpuId, addr: u64, access: Access) -> Result<(), FaultError> {
        let segv = |kind| FaultError::Segv { addr, kind };
        if addr >= self.ctx.layout.va_end {
            return Err(segv(SegvKind::MapErr));
        }
        let stats = &self.ctx.stats;
        if self.ctx.per_vma_lock() {
            // A QSBR read section costs nothing, so it simply spans the
            // whole fault; the VMA reference would keep the VMA alive
            // without it.
            let guard = self.ctx.rcu.read_lock(cpu);
            let locked = lock_vma_under_rcu(self.id(), &self.mmap, addr, cpu, stats, |a| {
                self.tree.load(&guard, a).map(|v| {
                    // SAFETY: read from the VMA tree inside `guard`'s section.
                    unsafe { RcuVma::new(&guard, v) }
                })
            });
            if let Some(vg) = locked {
                match self.fault_in(cpu, vg.vma().vma(), addr, access, Held::Vma) {
                    Ok(()) => {
                        stats.count(cpu, VmaLockEvent::Success);
                        return Ok(());
                    }
                    Err(Fail::Retry) => stats.count(cpu, VmaLockEvent::Retry),
                    Err(Fail::Segv(kind)) => {
                        stats.count(cpu, VmaLockEvent::Success);
                        return Err(segv(kind));
                    }
                    Err(Fail::Oom) => {
                        stats.count(cpu, VmaLockEvent::Success);
                        return Err(FaultError::OutOfMemory);
                    }
                }
            }
        }
        let r = self.fault_mmap_locked(cpu, addr, access);
        stats.count(cpu, VmaLockEvent::MmapLocked);
        r
    }

    /// The fallback: the fault under the mmap read lock.
    fn fault_mmap_locked(&self, cpu: CpuId, addr: u64, access: Access) -> Result<(), FaultError> {
        let segv = |kind| FaultError::Segv { addr, kind };
        loop {
            let g = self.mmap.read();
            let vma = match self.vma_at(cpu, addr) {
                Some(v) => v,
                None => {
                    drop(g);
                    if self.grow_stack(cpu, addr)? {
                        continue;
                    }
                    return Err(segv(SegvKind::MapErr));
                }
            };
            return match self.fault_in(cpu, vma, addr, access, Held::Mmap(&g)) {
                Ok(()) => Ok(()),
                Err(Fail::Segv(kind)) => Err(segv(kind)),
                Err(Fail::Oom) => Err(FaultError::OutOfMemory),
                Err(Fail::Retry) => unreachable!("retry under the mmap lock"),
            };
        }
    }

    /// The VMA containing `addr`; the caller holds the mmap lock.
    pub(super) fn vma_at(&self, cpu: CpuId, addr: u64) -> Option<VmaRef> {
        let guard = self.ctx.rcu.read_lock(cpu);
        self.tree.load(&guard, addr)
    }

    /// Faults the page at `addr` in from user-memory copies (`copy_*_user`),
    /// under the caller's mmap lock.
    pub(super) fn fault_for_copy(
        &self,
        cpu: CpuId,
        addr: u64,
        access: Access,
        g: &MmapReadGuard<'_>,
    ) -> Result<(), Errno> {
        let vma = self.vma_at(cpu, addr).ok_or(Errno::Fault)?;
        self.fault_in(cpu, vma, addr, access, Held::Mmap(g))
            .map_err(|f| match f {
                Fail::Oom => Errno::NoMem,
                _ => Errno::Fault,
            })
    }

    /// Grows a stack VMA down to cover `addr`, if `addr` lies within the
    /// stack limit below a `GROWSDOWN` VMA and the guard gap above the
    /// previous VMA stays free. Returns whether it grew.
    fn grow_stack(&self, cpu: CpuId, addr: u64) -> Result<bool, FaultError> {
        let layout = &self.ctx.layout;
        let g = self.mmap.write();
        let page = addr & !(PAGE - 1);
        let mut w = self.tree.write(cpu);
        let Some(next) = w.find(addr, u64::MAX) else {
            return Ok(false);
        };
        let (vma, end) = (next.entry, next.last + 1);
        // SAFETY: in the tree under the mmap write lock: pinned.
        let p = unsafe { vma.payload() };
        if next.first <= addr {
            return Ok(true); // someone else grew it, or mapped it meanwhile
        }
        if !p.flags().contains(VmFlags::GROWSDOWN) || end - page > layout.stack_max {
            return Ok(false);
        }
        let floor = w
            .prev(addr)
            .map_or(layout.min_addr, |r| r.last + 1 + layout.stack_guard);
        if page < floor {
            return Ok(false);
        }
        // SAFETY: pinned, as above.
        let lock = unsafe { &vma.stable().lock };
        let wl = lock.write_lock(&g);
        if w.store_range(page, end - 1, vma).is_err() {
            return Err(FaultError::OutOfMemory);
        }
        let pages_down = (p.start() - page) / PAGE;
        p.set_range(wl, page, end, p.pgoff().wrapping_sub(pages_down));
        Ok(true)
    }

    /// Handles the fault in `vma`, which the caller has pinned with `held`.
    pub(super) fn fault_in(
        &self,
        cpu: CpuId,
        vma: VmaRef,
        addr: u64,
        access: Access,
        held: Held<'_>,
    ) -> Result<(), Fail> {
        // SAFETY: pinned by `held` (a VMA read reference or the mmap lock).
        let p = unsafe { vma.payload() };
        let flags = p.flags();
        if !access.allowed_by(flags) {
            return Err(Fail::Segv(SegvKind::AccErr));
        }
        let page = addr & !(PAGE - 1);
        if flags.contains(VmFlags::SHARED) {
            let shm = self.shm_of(vma);
            return self.fault_shared(cpu, shm, p.pgoff_of(page), page, flags, access);
        }
        if p.anon_vma().is_null() {
            self.anon_prepare(cpu, vma, &held)?;
        }
        self.fault_private(cpu, page, flags, access)
    }

    /// Gives the VMA its anon_vma before its first private page (Linux's
    /// `vmf_anon_prepare`): under a VMA lock this needs the mmap read lock
    /// too, which it only try-locks; if a writer holds it, the fault is
    /// retried under the mmap lock.
    fn anon_prepare(&self, cpu: CpuId, vma: VmaRef, held: &Held<'_>) -> Result<(), Fail> {
        let _mmap = match held {
            Held::Vma => Some(self.mmap.try_read().ok_or(Fail::Retry)?),
            Held::Mmap(_) => None,
        };
        let _a = self.anon_lock.lock();
        // SAFETY: `vma` is pinned (caller), and we hold its mm's anon lock.
        unsafe { self.ctx.anon.prepare(cpu, vma) }
            .map(|_| ())
            .map_err(|_| Fail::Oom)
    }

    /// A fault in private anonymous memory: a new zeroed page, or a
    /// copy-on-write (or write-enable of an exclusive page).
    fn fault_private(
        &self,
        cpu: CpuId,
        page: u64,
        flags: VmFlags,
        access: Access,
    ) -> Result<(), Fail> {
        let frames = self.ctx.frames;
        let full = vm_prot(flags);
        loop {
            let pte = self.pt.lookup(page);
            if pte.is_none() {
                // A fresh page is exclusive: map it with every right the VMA
                // grants, so a later write needs no second fault.
                let frame = frames.alloc_zeroed(cpu, 0).map_err(|_| Fail::Oom)?;
                self.note_mapped(frame);
                match self.pt.install_leaf(page, Pte::leaf(frame, full), cpu) {
                    Ok(()) => return Ok(()),
                    Err(InstallError::AlreadyPresent(_)) => {
                        // Another fault on this page won; re-examine.
                        self.ctx.release_frame(cpu, frame);
                        continue;
                    }
                    Err(InstallError::OutOfMemory) => {
                        self.ctx.release_frame(cpu, frame);
                        return Err(Fail::Oom);
                    }
                    Err(InstallError::BadAddress(_)) => {
                        self.ctx.release_frame(cpu, frame);
                        return Err(Fail::Segv(SegvKind::MapErr));
                    }
                }
            }
            if pte.allows(access.prot()) {
                return Ok(()); // raced with another fault, or a stale TLB entry
            }
            let old = pte.frame().expect("a mapped entry without a frame");
            let exclusive = frames.meta(old).is_some_and(|m| m.ref_count() == 1);
            if exclusive {
                // Our mapping holds the only reference. Acquire pairs with
                // the Release decrement (`PageMeta::put_ref`) by which the
                // last other holder (another address space's mapping, or a
                // copy-on-write pin) let go: its reads of the page (its copy)
                // happen before the writes the upgrade lets through.
                fence(Ordering::Acquire);
            }
            if access != Access::Write || exclusive {
                // Upgrade in place: the VMA allows it and nobody shares the
                // page (or no write is involved).
                let new = pte.with_prot(if exclusive { full } else { full - Prot::WRITE });
                match self.with_gather(cpu, |g| self.pt.compare_exchange_leaf(page, pte, new, g)) {
                    Ok(()) | Err(CmpxchgError::Changed(_)) => continue,
                    Err(CmpxchgError::BadAddress(_)) => return Err(Fail::Segv(SegvKind::MapErr)),
                }
            }
            // Copy on write. Pin the old page first: another thread's
            // copy-on-write of this page may drop the last reference to it
            // meanwhile, and then the entry has changed anyway.
            let Some(old_meta) = frames.meta(old) else {
                return Err(Fail::Segv(SegvKind::AccErr));
            };
            if !old_meta.try_get_ref() {
                continue;
            }
            // The entry may have changed between our lookup and the pin, and
            // the frame been freed and reused: copy only from the frame the
            // entry still maps (see `copy_user` for the ordering).
            if self.pt.lookup(page) != pte {
                // SAFETY: drops the pin taken just above.
                unsafe { frames.put(cpu, old, 0) };
                continue;
            }
            let copy = match frames.alloc(cpu, 0) {
                Ok(c) => c,
                Err(_) => {
                    // SAFETY: drops the reference taken just above.
                    unsafe { frames.put(cpu, old, 0) };
                    return Err(Fail::Oom);
                }
            };
            self.copy_frame(old, copy);
            // SAFETY: drops the pin taken above; the copy is done.
            unsafe { frames.put(cpu, old, 0) };
            self.note_mapped(copy);
            let new = Pte::leaf(copy, full);
            // The old frame's mapping reference is dropped by the gather,
            // after the TLB flush that removes every cached translation to
            // it.
            match self.with_gather(cpu, |g| self.pt.compare_exchange_leaf(page, pte, new, g)) {
                Ok(()) => return Ok(()),
                Err(_) => {
                    self.ctx.release_frame(cpu, copy);
                    continue;
                }
            }
        }
    }

    /// A fault in shared anonymous memory: map the object's page.
    fn fault_shared(
        &self,
        cpu: CpuId,
        shm: &super::shm::Shm,
        pgoff: u64,
        page: u64,
        flags: VmFlags,
        access: Access,
    ) -> Result<(), Fail> {
        let full = vm_prot(flags);
        loop {
            let pte = self.pt.lookup(page);
            if pte.is_none() {
                let frame = shm
                    .get_or_alloc(self.ctx.frames, cpu, pgoff)
                    .map_err(|_| Fail::Oom)?;
                // The mapping's own reference, beside the object's.
                if let Some(m) = self.ctx.frames.meta(frame) {
                    m.get_ref();
                }
                self.note_mapped(frame);
                match self.pt.install_leaf(page, Pte::leaf(frame, full), cpu) {
                    Ok(()) => return Ok(()),
                    Err(InstallError::AlreadyPresent(_)) => {
                        self.ctx.release_frame(cpu, frame);
                        continue;
                    }
                    Err(_) => {
                        self.ctx.release_frame(cpu, frame);
                        return Err(Fail::Oom);
                    }
                }
            }
            if pte.allows(access.prot()) {
                return Ok(());
            }
            let new = pte.with_prot(full);
            match self.with_gather(cpu, |g| self.pt.compare_exchange_leaf(page, pte, new, g)) {
                Ok(()) | Err(CmpxchgError::Changed(_)) => continue,
                Err(CmpxchgError::BadAddress(_)) => return Err(Fail::Segv(SegvKind::MapErr)),
            }
        }
    }

    /// The shared-memory object of a `SHARED` VMA the caller pinned.
    fn shm_of(&self, vma: VmaRef) -> &super::shm::Shm<'_> {
        // SAFETY: pinned (caller); a shared VMA holds a reference on its object for as long as it exists, and sets it before it is attached.
        unsafe { super::shm::Shm::from_ptr(vma.payload().shm()) }
    }

    /// A new mapping of `frame` is about to be installed.
    fn note_mapped(&self, frame: Frame) {
        if let Some(m) = self.ctx.frames.meta(frame) {
            m.inc_map_count();
        }
    }

    fn copy_frame(&self, from: Frame, to: Frame) {
        let frames = self.ctx.frames;
        let (src, dst) = (frames.frame_ptr(from), frames.frame_ptr(to));
        let (Some(src), Some(dst)) = (src, dst) else {
            panic!("copy-on-write of a frame outside the direct map");
        };
        // SAFETY: both frames are RAM reached through the direct map; `to` is freshly allocated (ours alone) and `from` is mapped read-only by everyone who maps it, so nothing writes it during the copy.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), PAGE as usize) };
    }
}
