//! A process's user memory, as the kernel sees it.
//!
//! TEMPORARY: until `mm::aspace` (the address-space layer with VMAs, being
//! built on `main`) lands, this is a page table and nothing more: the
//! loader maps the program and its stack eagerly, `copy_{from,to}_user`
//! walk the table, and every page fault is a segmentation fault because
//! there are no VMAs to resolve it against. The memory system calls answer
//! `ENOSYS`. The methods mirror `AddressSpace`'s so that switching over
//! changes this file, not its callers.

use mm::addr::{Frame, PAGE_SIZE};
#[cfg(target_arch = "mips64")]
use mm::pgtable::Mips64Pte;
#[cfg(target_arch = "x86_64")]
use mm::pgtable::X86_64Pte;
use mm::pgtable::{PageTable, Prot, Pte, TlbGather};
use mm::vma::lock::MmId;
use samara_abi::Errno;

use super::{mem, tlb};

/// The page-table format the MMU reads.
#[cfg(target_arch = "x86_64")]
pub type ArchPte = X86_64Pte;
#[cfg(target_arch = "mips64")]
pub type ArchPte = Mips64Pte;
const PAGE: u64 = PAGE_SIZE as u64;

/// First address the kernel maps for user programs (Linux's mmap_min_addr).
pub const MIN_ADDR: u64 = 0x10000;

/// What a faulting access was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exec,
}

/// Why a fault was not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// No mapping, or one that forbids the access.
    Segv,
    /// Constructed by `mm::aspace`'s fault path once it lands.
    #[allow(dead_code)]
    OutOfMemory,
}

pub struct UserMm {
    /// `None` after `exit`. Written only by `exit`, whose contract excludes
    /// every other use.
    pt: core::cell::UnsafeCell<Option<PageTable<'static, ArchPte>>>,
    id: u64,
}

// SAFETY: the page table is shared by the process's threads (its own
// operations are thread-safe); the cell is written only by `exit`, which
// requires exclusive use.
unsafe impl Sync for UserMm {}
// SAFETY: as above.
unsafe impl Send for UserMm {}

static NEXT_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

impl UserMm {
    pub fn new(cpu: usize) -> Result<UserMm, Errno> {
        let pt = PageTable::<ArchPte>::with_limit(mem::fa(), cpu, arch::mmu::USER_VA_END + PAGE)
            .map_err(|_| Errno::NoMem)?;
        // SAFETY: a fresh, zeroed root nobody uses yet.
        unsafe { arch::mmu::init_user_root(pt.root_phys().as_u64()) };
        Ok(UserMm {
            pt: core::cell::UnsafeCell::new(Some(pt)),
            id: NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
        })
    }

    fn pt(&self) -> &PageTable<'static, ArchPte> {
        // SAFETY: only `exit` writes the cell, and its contract rules out
        // any use of `self` during or after it.
        unsafe { (*self.pt.get()).as_ref() }.expect("user memory used after exit")
    }

    /// The identity the TLB code tags this address space with.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn root_phys(&self) -> u64 {
        self.pt().root_phys().as_u64()
    }

    pub fn root_entry(&self) -> u64 {
        self.pt().root_entry()
    }

    /// Maps fresh zeroed pages over `[addr, addr + len)` with `prot` (for
    /// the loader and the initial stack).
    pub fn map_fixed(&self, cpu: usize, addr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        let fa = mem::fa();
        let mut va = addr;
        while va < addr + len {
            let f = fa.alloc_zeroed(cpu, 0).map_err(|_| Errno::NoMem)?;
            if let Err(_e) = self
                .pt()
                .install_leaf(va, Pte::leaf(f, prot | Prot::USER), cpu)
            {
                // SAFETY: `f` was never mapped.
                unsafe { fa.free(cpu, f, 0) };
                return Err(Errno::Inval);
            }
            va += PAGE;
        }
        Ok(())
    }

    /// Copies between kernel memory and `[addr, addr + len)` of this address
    /// space through the physmap, page by page. `EFAULT` if any page is not
    /// mapped or (for writes) not writable, or the range leaves user space.
    fn copy(
        &self,
        addr: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), Errno> {
        let end = addr.checked_add(len as u64).ok_or(Errno::Fault)?;
        if end > arch::mmu::USER_VA_END {
            return Err(Errno::Fault);
        }
        let fa = mem::fa();
        let mut va = addr;
        let mut done = 0;
        while va < end {
            let pte = self.pt().lookup(va & !(PAGE - 1));
            let frame: Frame = pte.frame().ok_or(Errno::Fault)?;
            let prot = pte.prot();
            if !prot.contains(Prot::USER | Prot::READ) || (write && !prot.contains(Prot::WRITE)) {
                return Err(Errno::Fault);
            }
            let off = (va % PAGE) as usize;
            let n = (PAGE as usize - off).min((end - va) as usize);
            let p = fa.frame_ptr(frame).ok_or(Errno::Fault)?.as_ptr();
            // SAFETY: `off < PAGE`, inside the frame.
            f(unsafe { p.add(off) }, done, n);
            va += n as u64;
            done += n;
        }
        Ok(())
    }

    pub fn copy_from_user(&self, _cpu: usize, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let dst = buf.as_mut_ptr();
        self.copy(addr, buf.len(), false, |src, at, n| {
            // SAFETY: `src` points at `n` bytes of a mapped user frame in the
            // physmap; `dst + at .. + n` is inside `buf`.
            unsafe { core::ptr::copy_nonoverlapping(src, dst.add(at), n) }
        })
    }

    pub fn copy_to_user(&self, _cpu: usize, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        let src = buf.as_ptr();
        self.copy(addr, buf.len(), true, |dst, at, n| {
            // SAFETY: as in `copy_from_user`, the other way round.
            unsafe { core::ptr::copy_nonoverlapping(src.add(at), dst, n) }
        })
    }

    /// The loader's copy into the program's pages, whatever their
    /// protection (it writes through the physmap; user mode never sees the
    /// pages writable).
    pub fn copy_to_user_any(&self, _cpu: usize, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        let src = buf.as_ptr();
        self.copy(addr, buf.len(), false, |dst, at, n| {
            // SAFETY: as in `copy_to_user`.
            unsafe { core::ptr::copy_nonoverlapping(src.add(at), dst, n) }
        })
    }

    /// No VMAs yet: every fault is a segmentation fault.
    pub fn handle_fault(&self, _cpu: usize, _addr: u64, _access: Access) -> Result<(), FaultError> {
        Err(FaultError::Segv)
    }

    pub fn mmap(&self, _cpu: usize, _a: u64, _l: u64, _p: u64, _f: u64) -> Result<u64, Errno> {
        Err(Errno::NoSys)
    }

    pub fn munmap(&self, _cpu: usize, _a: u64, _l: u64) -> Result<(), Errno> {
        Err(Errno::NoSys)
    }

    pub fn mprotect(&self, _cpu: usize, _a: u64, _l: u64, _p: u64) -> Result<(), Errno> {
        Err(Errno::NoSys)
    }

    pub fn brk(&self, _cpu: usize, _end: u64) -> Result<u64, Errno> {
        Err(Errno::NoSys)
    }

    pub fn fork(&self, _cpu: usize) -> Result<UserMm, Errno> {
        Err(Errno::NoSys)
    }

    pub fn set_brk_base(&self, _base: u64) -> Result<(), Errno> {
        Ok(())
    }

    /// Tears the address space down: every mapped frame and table goes back
    /// to the allocator after a full shootdown, which makes CPUs that still
    /// hold it lazily drop it.
    ///
    /// # Safety
    /// Nothing uses this address space concurrently or afterwards (the last
    /// thread has exited and left it).
    pub unsafe fn exit(&self, cpu: usize) {
        // SAFETY: exclusive per the contract.
        let Some(pt) = (unsafe { (*self.pt.get()).take() }) else {
            return;
        };
        let fa = mem::fa();
        let mut release = |f: Frame| {
            // SAFETY: the mapping's reference; called after the flush.
            unsafe { fa.put(cpu, f, 0) };
        };
        let mut g = TlbGather::new(MmId::from_raw(self.id), cpu, &tlb::FLUSH, fa, &mut release);
        pt.destroy(&mut g);
        g.finish();
    }
}

impl Drop for UserMm {
    fn drop(&mut self) {
        debug_assert!(
            self.pt.get_mut().is_none(),
            "user memory dropped without exit()"
        );
    }
}
