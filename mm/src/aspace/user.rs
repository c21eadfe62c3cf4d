//! Copies between the kernel and user memory.
//!
//! The kernel never dereferences a user pointer: it walks the address
//! space's page table, faults missing pages in (through the same handler
//! the MMU's faults use, under the mmap read lock), and copies through the
//! direct map. Holding the mmap read lock for the whole copy keeps munmap
//! (which needs the write lock) from freeing a page under it.

use super::fault::Access;
use super::{AddressSpace, Errno, PAGE};
use crate::cpu::CpuId;
use crate::pgtable::{Prot, PteFormat};

impl<F: PteFormat> AddressSpace<'_, F> {
    /// Copies `buf.len()` bytes from user address `addr` into `buf`.
    pub fn copy_from_user(&self, cpu: CpuId, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.copy_user(
            cpu,
            addr,
            buf.len(),
            Access::Read,
            &mut |frame_ptr, off, done, n| {
                // SAFETY: `frame_ptr + off .. + n` lies inside one mapped frame (see `copy_user`), and `buf[done..done + n]` inside `buf`.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        frame_ptr.add(off),
                        buf.as_mut_ptr().add(done),
                        n,
                    )
                };
            },
        )
    }

    /// Copies `buf` to user address `addr`.
    pub fn copy_to_user(&self, cpu: CpuId, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        self.copy_user(
            cpu,
            addr,
            buf.len(),
            Access::Write,
            &mut |frame_ptr, off, done, n| {
                // SAFETY: as in `copy_from_user`, the other way round.
                unsafe {
                    core::ptr::copy_nonoverlapping(buf.as_ptr().add(done), frame_ptr.add(off), n)
                };
            },
        )
    }

    fn copy_user(
        &self,
        cpu: CpuId,
        addr: u64,
        len: usize,
        access: Access,
        copy: &mut dyn FnMut(*mut u8, usize, usize, usize),
    ) -> Result<(), Errno> {
        let end = addr.checked_add(len as u64).ok_or(Errno::Fault)?;
        if end > self.ctx.layout.va_end {
            return Err(Errno::Fault);
        }
        let need = match access {
            Access::Write => Prot::WRITE | Prot::USER,
            _ => Prot::READ | Prot::USER,
        };
        let g = self.mmap.read();
        let mut done = 0usize;
        while done < len {
            let va = addr + done as u64;
            let page = va & !(PAGE - 1);
            let off = (va - page) as usize;
            let n = (PAGE as usize - off).min(len - done);
            let mut pte = self.pt.lookup(page);
            if !pte.allows(need) {
                self.fault_for_copy(cpu, va, access, &g)?;
                pte = self.pt.lookup(page);
                if !pte.allows(need) {
                    return Err(Errno::Fault);
                }
            }
            let frame = pte.frame().ok_or(Errno::Fault)?;
            let frames = self.ctx.frames;
            let meta = frames.meta(frame).ok_or(Errno::Fault)?;
            // Pin the frame for the copy: a copy-on-write by another thread
            // (under its VMA lock) may replace the entry and drop what may
            // be the last reference meanwhile.
            if !meta.try_get_ref() {
                continue;
            }
            // ... and may have done so between our lookup and the pin: the
            // frame may since have been freed and allocated to someone else
            // (a pin on it succeeds), or be left mapped only by another
            // address space (which could then reuse it in place for its
            // writes). Check the entry still maps what we pinned (Linux's
            // GUP-fast recheck). The entry was changed before the frame's
            // reference was dropped; our pin's Acquire synchronises with
            // that drop or with the frame's reallocation (see
            // `PageMeta::set_refcount`), so this load sees the change.
            if self.pt.lookup(page) != pte {
                // SAFETY: drops the pin taken just above.
                unsafe { self.ctx.frames.put(cpu, frame, 0) };
                continue;
            }
            let ptr = frames.frame_ptr(frame).ok_or(Errno::Fault)?;
            copy(ptr.as_ptr(), off, done, n);
            // SAFETY: drops the pin taken above.
            unsafe { frames.put(cpu, frame, 0) };
            done += n;
        }
        Ok(())
    }
}
