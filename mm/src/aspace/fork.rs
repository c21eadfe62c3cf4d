//! fork and exit.
//!
//! Fork duplicates each VMA with the slab's `dup`, which clones the payload
//! and nothing else: the new VMA keeps the lock and the anon_vma chain list
//! head its slot's constructor made. That is the whole fix for the
//! reference design's Octeon crash (a whole-object copy replaced the new
//! VMA's list head with the parent's), and here it is the only way the code
//! can be written. Private pages are then shared read-only between parent
//! and child and copied on the first write.

use super::shm::Shm;
use super::{AddressSpace, Errno};
use crate::cpu::CpuId;
use crate::pgtable::{PteFormat, TlbGather};
use crate::sync::Ordering;
use crate::vma::VmaRef;

impl<'a, F: PteFormat> AddressSpace<'a, F> {
    /// A copy of this address space for a forked child.
    pub fn fork(&self, cpu: CpuId) -> Result<AddressSpace<'a, F>, Errno> {
        let child = AddressSpace::new(self.ctx, cpu)?;
        match self.copy_into(&child, cpu) {
            Ok(()) => Ok(child),
            Err(e) => {
                child.exit(cpu);
                Err(e)
            }
        }
    }

    fn copy_into(&self, child: &AddressSpace<'a, F>, cpu: CpuId) -> Result<(), Errno> {
        let ctx = self.ctx;
        let g = self.mmap.write();
        let cg = child.mmap.write();
        let w = self.tree.write(cpu);
        let mut cw = child.tree.write(cpu);
        child
            .start_brk
            .store(self.start_brk.load(Ordering::Relaxed), Ordering::Relaxed);
        child
            .brk
            .store(self.brk.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut release = |f| ctx.release_frame(cpu, f);
        let mut gather = TlbGather::new(self.id(), cpu, ctx.tlb, ctx.frames, &mut release);
        let mut result = Ok(());
        for r in w.iter(0, u64::MAX) {
            let vma = r.entry;
            // SAFETY: in the tree under the mmap write lock: pinned.
            let (p, lock) = unsafe { (vma.payload(), &vma.stable().lock) };
            // Stop faults in the parent's VMA while its pages are shared.
            let _wl = lock.write_lock(&g);
            let new = match ctx.vmas.dup(cpu, p) {
                Ok(o) => VmaRef::new(o.publish()),
                Err(_) => {
                    result = Err(Errno::NoMem);
                    break;
                }
            };
            // SAFETY: ours until attached.
            let (np, nl) = unsafe { (new.payload(), &new.stable().lock) };
            let nw = nl.write_lock_unreachable(&cg);
            np.set_owner(nw, child.id());
            let linked = {
                // Parent's anon lock, then the child's: the child is
                // unreachable, so the order cannot deadlock.
                let _pa = self.anon_lock.lock();
                let _ca = child.anon_lock.lock();
                // SAFETY: both pinned, both anon locks held; `new`'s payload is a copy of `vma`'s and it has no chains.
                unsafe { ctx.anon.fork(cpu, new, vma) }
            };
            if linked.is_err() {
                np.set_anon_vma(core::ptr::null_mut());
                // SAFETY: never attached, no chains, no shm reference taken.
                unsafe { ctx.vmas.free_ptr(cpu, new.slab_ptr()) };
                result = Err(Errno::NoMem);
                break;
            }
            if !np.shm().is_null() {
                // SAFETY: the parent's VMA holds a reference.
                unsafe { Shm::from_ptr(np.shm()) }.get();
            }
            if cw.store_range(r.first, r.last, new).is_err() {
                child.free_vma(cpu, new);
                result = Err(Errno::NoMem);
                break;
            }
            nl.mark_attached(nw);
            child.nr_vmas.fetch_add(1, Ordering::Relaxed);
            let cow = !p.flags().contains(crate::vma::VmFlags::SHARED);
            let copied = self.pt.copy_range_for_fork(
                &child.pt,
                r.first,
                r.last + 1,
                cow,
                &mut gather,
                &mut |_, frame| {
                    // The child's mapping holds its own reference.
                    if let Some(m) = ctx.frames.meta(frame) {
                        m.get_ref();
                        m.inc_map_count();
                    }
                },
            );
            if copied.is_err() {
                result = Err(Errno::NoMem);
                break;
            }
        }
        drop(cw);
        drop(w);
        // The parent's write-protected pages are flushed before its write
        // lock (and with it every VMA write lock) is dropped.
        gather.finish();
        drop(cg);
        drop(g);
        result
    }

    /// Tears the address space down: every VMA detached and freed, every
    /// page and page table released after a full TLB flush.
    pub fn exit(self, cpu: CpuId) {
        let ctx = self.ctx;
        let id = self.id();
        {
            let g = self.mmap.write();
            let mut w = self.tree.write(cpu);
            while let Some(r) = w.find(0, u64::MAX) {
                // SAFETY: in the tree under the mmap write lock: pinned.
                let wl = unsafe { r.entry.stable() }.lock.write_lock(&g);
                if w.erase_range(r.first, r.last).is_err() {
                    // Out of nodes while shrinking the tree: detach anyway;
                    // dropping the tree below frees it whole.
                    self.detach_all_from(&g, cpu, r.first);
                    break;
                }
                // SAFETY: pinned until freed.
                unsafe { r.entry.stable() }.lock.mark_detached(wl);
                self.nr_vmas.fetch_sub(1, Ordering::Relaxed);
                self.free_vma(cpu, r.entry);
            }
        }
        let AddressSpace { pt, tree, .. } = self;
        drop(tree);
        let mut release = |f| ctx.release_frame(cpu, f);
        let mut gather = TlbGather::new(id, cpu, ctx.tlb, ctx.frames, &mut release);
        pt.destroy(&mut gather);
        gather.finish();
        ctx.live_mms.fetch_sub(1, Ordering::Relaxed);
    }

    /// Detaches and frees every VMA from `from` on without changing the
    /// tree (exit's out-of-memory path; the tree is dropped whole after).
    fn detach_all_from(&self, g: &crate::vma::lock::MmapWriteGuard<'_>, cpu: CpuId, from: u64) {
        let guard = self.ctx.rcu.read_lock(cpu);
        let mut vmas = [None; 64];
        let mut at = from;
        loop {
            let mut n = 0;
            for r in self.tree.iter(&guard, at, u64::MAX) {
                if n == vmas.len() {
                    break;
                }
                vmas[n] = Some(r.entry);
                at = r.last.saturating_add(1);
                n += 1;
            }
            if n == 0 {
                break;
            }
            for v in vmas[..n].iter().flatten() {
                // SAFETY: pinned by the mmap write lock.
                let lock = unsafe { &v.stable().lock };
                let wl = lock.write_lock(g);
                lock.mark_detached(wl);
                self.nr_vmas.fetch_sub(1, Ordering::Relaxed);
                self.free_vma(cpu, *v);
            }
            if n < vmas.len() {
                break;
            }
        }
    }
}
