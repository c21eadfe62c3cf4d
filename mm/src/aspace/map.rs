//! mmap, munmap, mprotect and brk: changes to the VMA layout.
//!
//! Every operation validates its arguments before it takes a lock, runs
//! under the mmap write lock, write-locks each VMA before changing or
//! removing it, and either completes or fails with nothing visible changed
//! (the only partial effect an out-of-memory failure may leave is a VMA
//! split, which does not change what is mapped).

use bitflags::bitflags;

use super::fault::vm_prot;
use super::shm::Shm;
use super::{AddressSpace, Errno, PAGE};
use crate::cpu::CpuId;
use crate::maple::MapleWriter;
use crate::pgtable::{Prot, PteFormat};
use crate::sync::Ordering;
use crate::vma::lock::{MmapWriteGuard, VmaWriteLocked};
use crate::vma::{VmFlags, VmaPayload, VmaRef};

bitflags! {
    /// `mmap` flags (Linux's `MAP_*` values).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MapFlags: u32 {
        const SHARED = 0x01;
        const PRIVATE = 0x02;
        const FIXED = 0x10;
        const ANONYMOUS = 0x20;
        const GROWSDOWN = 0x100;
        const FIXED_NOREPLACE = 0x10_0000;
    }
}

/// `PROT_*` bits.
pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

/// Linux's default `vm.max_map_count`.
pub const MAX_MAP_COUNT: u64 = 65530;

type Writer<'t, 'a> = MapleWriter<'t, VmaRef, &'a super::SlabNodeAlloc<'a>>;

fn prot_flags(prot: u32) -> Result<VmFlags, Errno> {
    if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
        return Err(Errno::Inval);
    }
    let mut f = VmFlags::empty();
    f.set(VmFlags::READ, prot & PROT_READ != 0);
    f.set(VmFlags::WRITE, prot & PROT_WRITE != 0);
    f.set(VmFlags::EXEC, prot & PROT_EXEC != 0);
    Ok(f)
}

/// Rounds `len` up to pages; `None` on zero or overflow.
fn page_len(len: u64) -> Option<u64> {
    if len == 0 {
        return None;
    }
    len.checked_add(PAGE - 1).map(|l| l & !(PAGE - 1))
}

/// The page protection for a VMA's existing pages: private writable pages
/// may be shared copy-on-write, so writes are re-enabled by faults.
fn pte_prot(flags: VmFlags) -> Prot {
    let p = vm_prot(flags);
    if flags.contains(VmFlags::SHARED) {
        p
    } else {
        p - Prot::WRITE
    }
}

impl<'a, F: PteFormat> AddressSpace<'a, F> {
    /// Maps `len` bytes of anonymous memory (Linux's `mmap` with
    /// `MAP_ANONYMOUS`). Without `FIXED`, `addr` is a hint; the area is
    /// placed top-down below the stack area otherwise. Returns the address.
    pub fn mmap(
        &self,
        cpu: CpuId,
        addr: u64,
        len: u64,
        prot: u32,
        flags: MapFlags,
    ) -> Result<u64, Errno> {
        let layout = self.ctx.layout;
        let mut vmflags = prot_flags(prot)?;
        // Linux: a zero length is malformed (EINVAL), one that overflows
        // when rounded up to pages cannot be mapped (ENOMEM).
        if len == 0 {
            return Err(Errno::Inval);
        }
        let len = page_len(len).ok_or(Errno::NoMem)?;
        if flags.contains(MapFlags::SHARED) == flags.contains(MapFlags::PRIVATE) {
            return Err(Errno::Inval);
        }
        if !flags.contains(MapFlags::ANONYMOUS) {
            return Err(Errno::Inval); // no files in Samara
        }
        vmflags.set(VmFlags::SHARED, flags.contains(MapFlags::SHARED));
        vmflags.set(VmFlags::GROWSDOWN, flags.contains(MapFlags::GROWSDOWN));
        if vmflags.contains(VmFlags::GROWSDOWN | VmFlags::SHARED) {
            return Err(Errno::Inval);
        }
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        if fixed {
            if !addr.is_multiple_of(PAGE) {
                return Err(Errno::Inval);
            }
            let end = addr.checked_add(len).ok_or(Errno::NoMem)?;
            if addr < layout.min_addr || end > layout.va_end {
                return Err(Errno::NoMem);
            }
        } else if len > layout.mmap_base - layout.min_addr {
            return Err(Errno::NoMem);
        }

        let g = self.mmap.write();
        let mut w = self.tree.write(cpu);
        let start = if fixed {
            if w.find(addr, addr + len - 1).is_some() {
                if flags.contains(MapFlags::FIXED_NOREPLACE) {
                    return Err(Errno::Exist);
                }
                self.unmap_locked(&g, &mut w, cpu, addr, addr + len)?;
            }
            addr
        } else {
            let hint = addr & !(PAGE - 1);
            let hint_ok = hint >= layout.min_addr
                && hint.checked_add(len).is_some_and(|e| e <= layout.mmap_base)
                && w.find(hint, hint + len - 1).is_none();
            if hint_ok {
                hint
            } else {
                w.find_gap_highest(len, PAGE, layout.min_addr, layout.mmap_base - 1)
                    .map_err(|_| Errno::NoMem)?
            }
        };
        self.map_range(&g, &mut w, cpu, start, start + len, vmflags)?;
        Ok(start)
    }

    /// Unmaps `[addr, addr + len)` (Linux's `munmap`), splitting VMAs that
    /// straddle the ends.
    pub fn munmap(&self, cpu: CpuId, addr: u64, len: u64) -> Result<(), Errno> {
        let len = page_len(len).ok_or(Errno::Inval)?;
        let end = addr.checked_add(len).ok_or(Errno::Inval)?;
        if !addr.is_multiple_of(PAGE) || end > self.ctx.layout.va_end {
            return Err(Errno::Inval);
        }
        let g = self.mmap.write();
        let mut w = self.tree.write(cpu);
        self.unmap_locked(&g, &mut w, cpu, addr, end)
    }

    /// Changes the protection of `[addr, addr + len)`, which must be fully
    /// mapped (Linux's `mprotect`, except that a hole fails the call before
    /// anything changed rather than after the part below the hole).
    ///
    /// Arguments are checked in Linux's order: an unaligned address is
    /// EINVAL, a zero length succeeds without looking further (even with a
    /// bad `prot`), a length that overflows is ENOMEM, then `prot`.
    pub fn mprotect(&self, cpu: CpuId, addr: u64, len: u64, prot: u32) -> Result<(), Errno> {
        if !addr.is_multiple_of(PAGE) {
            return Err(Errno::Inval);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_len(len).ok_or(Errno::NoMem)?;
        let end = addr.checked_add(len).ok_or(Errno::NoMem)?;
        let access = prot_flags(prot)?;
        if end > self.ctx.layout.va_end {
            return Err(Errno::NoMem);
        }
        let g = self.mmap.write();
        let mut w = self.tree.write(cpu);
        // The whole range must be mapped, without holes.
        let mut next = addr;
        for r in w.iter(addr, end - 1) {
            if r.first > next {
                return Err(Errno::NoMem);
            }
            next = r.last + 1;
        }
        if next < end {
            return Err(Errno::NoMem);
        }
        self.split_around(&g, &mut w, cpu, addr, end)?;
        let mut changed = [None; 64];
        let mut cursor = addr;
        while cursor < end {
            let mut n = 0;
            for r in w.iter(cursor, end - 1) {
                if n == changed.len() {
                    break;
                }
                changed[n] = Some(r.entry);
                n += 1;
            }
            if n == 0 {
                break; // cannot happen: the range was checked to be covered
            }
            for vma in changed[..n].iter().flatten() {
                // SAFETY: in the tree under the mmap write lock: pinned.
                let (p, lock) = unsafe { (vma.payload(), &vma.stable().lock) };
                let wl = lock.write_lock(&g);
                let flags = (p.flags() - VmFlags::ACCESS) | access;
                p.set_flags(wl, flags);
                let (s, e) = (p.start(), p.end());
                self.with_gather(cpu, |gather| {
                    self.pt.protect_range(s, e, pte_prot(flags), gather)
                })?;
                cursor = e;
            }
        }
        // Neighbours that now look alike become one VMA again.
        let first = if addr > 0 { addr - 1 } else { 0 };
        self.merge_in(&g, &mut w, cpu, first, end);
        Ok(())
    }

    /// Moves the end of the heap to `new` (Linux's `brk`): returns the new
    /// end, or the old one if `new` is below the heap's start, collides
    /// with another mapping, or memory ran out. `brk(0)` returns the end.
    pub fn brk(&self, cpu: CpuId, new: u64) -> u64 {
        let g = self.mmap.write();
        let base = self.start_brk.load(Ordering::Relaxed);
        let cur = self.brk.load(Ordering::Relaxed);
        if base == 0 || new < base || new > self.ctx.layout.mmap_base {
            return cur;
        }
        let round = |v: u64| (v + PAGE - 1) & !(PAGE - 1);
        let (old_end, new_end) = (round(cur), round(new));
        let mut w = self.tree.write(cpu);
        let ok = if new_end < old_end {
            self.unmap_locked(&g, &mut w, cpu, new_end, old_end).is_ok()
        } else if new_end > old_end {
            w.find(old_end, new_end - 1).is_none()
                && self
                    .map_range(
                        &g,
                        &mut w,
                        cpu,
                        old_end,
                        new_end,
                        VmFlags::READ | VmFlags::WRITE | VmFlags::HEAP,
                    )
                    .is_ok()
        } else {
            true
        };
        if !ok {
            return cur;
        }
        self.brk.store(new, Ordering::Relaxed);
        new
    }

    // ---- building blocks (mmap write lock held) -------------------------

    /// A fresh VMA, write-locked (it is unreachable until inserted).
    fn alloc_vma<'g>(
        &self,
        g: &'g MmapWriteGuard<'_>,
        cpu: CpuId,
        payload: VmaPayload,
    ) -> Result<(VmaRef, VmaWriteLocked<'g>), Errno> {
        if self.nr_vmas() >= MAX_MAP_COUNT {
            return Err(Errno::NoMem);
        }
        let vma = VmaRef::new(self.ctx.vmas.alloc(cpu, payload)?.publish());
        // SAFETY: just allocated: ours, its page alive.
        let wl = unsafe { vma.stable() }.lock.write_lock_unreachable(g);
        Ok((vma, wl))
    }

    /// Frees a VMA that is detached (or was never attached): unlinks its
    /// anon_vma chains, drops its shared-memory object.
    pub(super) fn free_vma(&self, cpu: CpuId, vma: VmaRef) {
        {
            let _a = self.anon_lock.lock();
            // SAFETY: unreachable and ours; anon lock held.
            unsafe { self.ctx.anon.unlink_all(cpu, vma) };
        }
        // SAFETY: as above.
        let p = unsafe { vma.payload() };
        if !p.shm().is_null() {
            // SAFETY: the VMA held one reference on its object.
            unsafe { Shm::put(p.shm(), &self.ctx.shms, self.ctx.frames, cpu) };
        }
        // SAFETY: detached, so no reader holds it, and nothing else refers to it any more. (The cache is type-safe by RCU: a stale RCU reader may still look at its stable part, which stays valid.)
        unsafe {
            debug_assert!(!vma.stable().lock.is_attached(), "freeing an attached VMA");
            self.ctx.vmas.free_ptr(cpu, vma.slab_ptr());
        }
    }

    /// Puts a new VMA in the tree and makes it visible to faults.
    fn insert_vma(
        &self,
        w: &mut Writer<'_, 'a>,
        cpu: CpuId,
        vma: VmaRef,
        wl: VmaWriteLocked<'_>,
    ) -> Result<(), Errno> {
        // SAFETY: ours until attached.
        let p = unsafe { vma.payload() };
        if w.store_range(p.start(), p.end() - 1, vma).is_err() {
            self.free_vma(cpu, vma);
            return Err(Errno::NoMem);
        }
        // SAFETY: as above.
        unsafe { vma.stable() }.lock.mark_attached(wl);
        self.nr_vmas.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes a write-locked VMA whose range the tree no longer maps to it,
    /// and frees it.
    fn drop_vma(&self, cpu: CpuId, vma: VmaRef, wl: VmaWriteLocked<'_>) {
        // SAFETY: pinned by the mmap write lock until freed below.
        unsafe { vma.stable() }.lock.mark_detached(wl);
        self.nr_vmas.fetch_sub(1, Ordering::Relaxed);
        self.free_vma(cpu, vma);
    }

    /// Maps the free range `[start, end)` with `flags`, extending a
    /// neighbour when it is compatible (Linux's `vma_merge`).
    fn map_range(
        &self,
        g: &MmapWriteGuard<'_>,
        w: &mut Writer<'_, 'a>,
        cpu: CpuId,
        start: u64,
        end: u64,
        flags: VmFlags,
    ) -> Result<(), Errno> {
        if flags.contains(VmFlags::SHARED) {
            let shm = Shm::create(&self.ctx.shms, self.ctx.frames, cpu, (end - start) / PAGE)?;
            let (vma, wl) =
                match self.alloc_vma(g, cpu, VmaPayload::new(self.id(), start, end, flags, 0)) {
                    Ok(v) => v,
                    Err(e) => {
                        // SAFETY: created above with one reference, ours.
                        unsafe { Shm::put(shm, &self.ctx.shms, self.ctx.frames, cpu) };
                        return Err(e);
                    }
                };
            // SAFETY: ours (unpublished).
            unsafe { vma.payload() }.set_shm(wl, shm);
            return self.insert_vma(w, cpu, vma, wl);
        }
        let mergeable = |v: VmaRef| {
            // SAFETY: in the tree under the mmap write lock: pinned.
            let p = unsafe { v.payload() };
            p.flags() == flags
        };
        let prev = start
            .checked_sub(1)
            .and_then(|a| w.load_range(a))
            .filter(|r| r.last + 1 == start && mergeable(r.entry));
        let next = w
            .load_range(end)
            .filter(|r| r.first == end && mergeable(r.entry));
        let anon = |v: VmaRef| {
            // SAFETY: VMAs in the tree are pinned by the mmap write lock.
            unsafe { v.payload() }.anon_vma()
        };
        match (prev, next) {
            (Some(p), Some(n)) if anon(p.entry) == anon(n.entry) || anon(n.entry).is_null() => {
                // Bridge: `p` absorbs the new range and `n`.
                // SAFETY: pinned.
                let (pl, nl) = unsafe { (&p.entry.stable().lock, &n.entry.stable().lock) };
                let (pw, nw) = (pl.write_lock(g), nl.write_lock(g));
                w.store_range(p.first, n.last, p.entry)
                    .map_err(|_| Errno::NoMem)?;
                // SAFETY: pinned.
                let pp = unsafe { p.entry.payload() };
                pp.set_range(pw, p.first, n.last + 1, pp.pgoff());
                self.drop_vma(cpu, n.entry, nw);
                Ok(())
            }
            (Some(p), _) => {
                // SAFETY: pinned.
                let pw = unsafe { p.entry.stable() }.lock.write_lock(g);
                w.store_range(p.first, end - 1, p.entry)
                    .map_err(|_| Errno::NoMem)?;
                // SAFETY: pinned.
                let pp = unsafe { p.entry.payload() };
                pp.set_range(pw, p.first, end, pp.pgoff());
                Ok(())
            }
            (None, Some(n)) => {
                // SAFETY: pinned.
                let nw = unsafe { n.entry.stable() }.lock.write_lock(g);
                w.store_range(start, n.last, n.entry)
                    .map_err(|_| Errno::NoMem)?;
                // SAFETY: pinned.
                let np = unsafe { n.entry.payload() };
                let pages = (end - start) / PAGE;
                np.set_range(nw, start, n.last + 1, np.pgoff().wrapping_sub(pages));
                Ok(())
            }
            (None, None) => {
                let (vma, wl) = self.alloc_vma(
                    g,
                    cpu,
                    VmaPayload::new(self.id(), start, end, flags, start / PAGE),
                )?;
                self.insert_vma(w, cpu, vma, wl)
            }
        }
    }

    /// Splits the VMA containing `at` (if `at` is strictly inside one) into
    /// `[start, at)` and a new VMA `[at, end)` (Linux's `__split_vma`).
    fn split_at(
        &self,
        g: &MmapWriteGuard<'_>,
        w: &mut Writer<'_, 'a>,
        cpu: CpuId,
        at: u64,
    ) -> Result<(), Errno> {
        let Some(r) = w.load_range(at) else {
            return Ok(());
        };
        if r.first == at {
            return Ok(());
        }
        let vma = r.entry;
        // SAFETY: in the tree under the mmap write lock: pinned.
        let p = unsafe { vma.payload() };
        let (vs, ve) = (p.start(), p.end());
        if self.nr_vmas() >= MAX_MAP_COUNT {
            return Err(Errno::NoMem);
        }
        // The upper part: a duplicate of the payload (never of the stable
        // part), with its own chains to the same anon_vmas.
        let upper = VmaRef::new(self.ctx.vmas.dup(cpu, p)?.publish());
        // SAFETY: ours until attached.
        let (up, ul) = unsafe { (upper.payload(), &upper.stable().lock) };
        let uw = ul.write_lock_unreachable(g);
        up.set_range(uw, at, ve, p.pgoff() + (at - vs) / PAGE);
        up.set_anon_vma(core::ptr::null_mut());
        {
            let _a = self.anon_lock.lock();
            // SAFETY: both pinned, anon lock held; `upper` has no chains.
            if unsafe { self.ctx.anon.clone_chains(cpu, upper, vma) }.is_err() {
                drop(_a);
                // SAFETY: ours, never attached.
                unsafe { self.ctx.vmas.free_ptr(cpu, upper.slab_ptr()) };
                return Err(Errno::NoMem);
            }
            up.set_anon_vma(p.anon_vma());
        }
        if !p.shm().is_null() {
            // SAFETY: `vma` holds a reference; `upper` takes another.
            unsafe { Shm::from_ptr(p.shm()) }.get();
        }
        // SAFETY: pinned.
        let wl = unsafe { vma.stable() }.lock.write_lock(g);
        if w.store_range(at, ve - 1, upper).is_err() {
            self.free_vma(cpu, upper);
            return Err(Errno::NoMem);
        }
        p.set_range(wl, vs, at, p.pgoff());
        ul.mark_attached(uw);
        self.nr_vmas.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Splits so that no VMA straddles `start` or `end`.
    fn split_around(
        &self,
        g: &MmapWriteGuard<'_>,
        w: &mut Writer<'_, 'a>,
        cpu: CpuId,
        start: u64,
        end: u64,
    ) -> Result<(), Errno> {
        self.split_at(g, w, cpu, start)?;
        self.split_at(g, w, cpu, end)
    }

    /// Unmaps `[start, end)` under the mmap write lock.
    pub(super) fn unmap_locked(
        &self,
        g: &MmapWriteGuard<'_>,
        w: &mut Writer<'_, 'a>,
        cpu: CpuId,
        start: u64,
        end: u64,
    ) -> Result<(), Errno> {
        if w.find(start, end - 1).is_none() {
            return Ok(());
        }
        self.split_around(g, w, cpu, start, end)?;
        let floor = start
            .checked_sub(1)
            .and_then(|a| w.find_rev(a, 0))
            .map_or(0, |r| r.last + 1);
        let ceiling = w.find(end, u64::MAX).map_or(self.pt.va_end(), |r| r.first);
        let ctx = self.ctx;
        let mut release = |f| ctx.release_frame(cpu, f);
        let mut gather =
            crate::pgtable::TlbGather::new(self.id(), cpu, ctx.tlb, ctx.frames, &mut release);
        let mut result = Ok(());
        loop {
            // Take the VMAs out in batches of up to 64: write-lock them,
            // erase their span from the tree, then detach and free them.
            let mut batch = [None; 64];
            let mut n = 0;
            let mut span_end = start;
            for r in w.iter(start, end - 1) {
                if n == batch.len() {
                    break;
                }
                batch[n] = Some(r.entry);
                span_end = r.last + 1;
                n += 1;
            }
            if n == 0 {
                break;
            }
            let locks: [Option<VmaWriteLocked<'_>>; 64] = core::array::from_fn(|i| {
                // SAFETY: in the tree under the mmap write lock: pinned.
                batch[i].map(|v| unsafe { v.stable() }.lock.write_lock(g))
            });
            if w.erase_range(start, span_end - 1).is_err() {
                result = Err(Errno::NoMem);
                break;
            }
            for (vma, wl) in batch.iter().zip(locks) {
                let (Some(vma), Some(wl)) = (vma, wl) else {
                    break;
                };
                // SAFETY: pinned until `drop_vma` frees it.
                let p = unsafe { vma.payload() };
                // No fault can fill the range: the VMA is write-locked,
                // detached below, and gone from the tree.
                if let Err(e) = self.pt.unmap_range(p.start(), p.end(), &mut gather) {
                    debug_assert!(false, "unmap_range of a VMA failed: {e:?}");
                }
                self.drop_vma(cpu, *vma, wl);
            }
        }
        if result.is_ok() {
            // SAFETY: no VMA is left in [floor, ceiling) (floor and ceiling are the neighbours' edges), and we hold the mmap write lock, so no fault or other operation walks these tables.
            if let Err(e) = unsafe { self.pt.free_tables(start, end, floor, ceiling, &mut gather) }
            {
                debug_assert!(false, "free_tables failed: {e:?}");
            }
        }
        gather.finish();
        result
    }

    /// Merges adjacent compatible VMAs whose boundaries lie in
    /// `[from, to]` (after mprotect). Best effort: a merge that would need
    /// memory it cannot get is skipped.
    fn merge_in(
        &self,
        g: &MmapWriteGuard<'_>,
        w: &mut Writer<'_, 'a>,
        cpu: CpuId,
        from: u64,
        to: u64,
    ) {
        let mut at = from;
        while let Some(a) = w.find(at, to) {
            let Some(b) = w.load_range(a.last + 1).filter(|b| b.first == a.last + 1) else {
                at = a.last + 1;
                if at > to {
                    break;
                }
                continue;
            };
            if b.first > to {
                break;
            }
            // SAFETY: in the tree under the mmap write lock: pinned.
            let (ap, bp) = unsafe { (a.entry.payload(), b.entry.payload()) };
            let (aa, ba) = (ap.anon_vma(), bp.anon_vma());
            let same = ap.flags() == bp.flags() && !ap.flags().contains(VmFlags::SHARED);
            // `b` folds into `a` when it has no pages of its own to account
            // for (no anon_vma) or shares `a`'s; `a` into `b` likewise.
            let survivor = if !same {
                None
            } else if aa == ba || ba.is_null() {
                Some((a, b, true))
            } else if aa.is_null() {
                Some((b, a, false))
            } else {
                None
            };
            let Some((keep, gone, keep_is_lower)) = survivor else {
                at = b.first;
                continue;
            };
            // SAFETY: pinned.
            let (kl, gl) = unsafe { (&keep.entry.stable().lock, &gone.entry.stable().lock) };
            let (kw, gw) = (kl.write_lock(g), gl.write_lock(g));
            if w.store_range(a.first, b.last, keep.entry).is_err() {
                at = b.first;
                continue;
            }
            // SAFETY: pinned.
            let kp = unsafe { keep.entry.payload() };
            let pgoff = if keep_is_lower {
                kp.pgoff()
            } else {
                kp.pgoff().wrapping_sub((a.last + 1 - a.first) / PAGE)
            };
            kp.set_range(kw, a.first, b.last + 1, pgoff);
            self.drop_vma(cpu, gone.entry, gw);
            at = a.first;
        }
    }
}
