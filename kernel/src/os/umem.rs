//! A process's user memory, as the kernel sees it: an `mm::aspace`
//! address space (VMAs in a maple tree readable under RCU, the fault path
//! under per-VMA locks with the mmap-lock fallback, copy-on-write fork,
//! user copies through the page table) over the system's [`MmContext`].
//!
//! This file adapts `AddressSpace` to the kernel's types: the ABI's error
//! numbers and flags, the loader's eager mappings, and one exclusive-use
//! point, [`UserMm::exit`].

use core::cell::UnsafeCell;

use mm::aspace::{self, AddressSpace, MapFlags, MmContext, UserLayout};
#[cfg(target_arch = "mips64")]
use mm::pgtable::Mips64Pte;
use mm::pgtable::Prot;
#[cfg(target_arch = "x86_64")]
use mm::pgtable::X86_64Pte;
use samara_abi::Errno;
use spin::Once;

use super::{mem, tlb};

/// The page-table format the MMU reads.
#[cfg(target_arch = "x86_64")]
pub type ArchPte = X86_64Pte;
#[cfg(target_arch = "mips64")]
pub type ArchPte = Mips64Pte;

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
    OutOfMemory,
}

static CONTEXT: Once<MmContext<'static, ArchPte>> = Once::new();

/// The user layout: `mm`'s default for the page-table format, checked
/// against what the arch layer maps (the loader puts the stack right below
/// `arch::mmu::USER_VA_END`).
fn layout() -> UserLayout {
    let l = UserLayout::for_format::<ArchPte>();
    debug_assert_eq!(l.va_end, arch::mmu::USER_VA_END);
    debug_assert_eq!(l.min_addr, MIN_ADDR);
    l
}

/// Builds the address-space context (slab caches, counters) over the frame
/// allocator, RCU and the kernel's TLB flush. Boot CPU, once, after
/// `mem::init`.
pub fn init(per_vma_lock: bool) -> Result<(), mm::slab::SlabError> {
    // SAFETY: the context lives in a static and is never dropped, so every
    // RCU callback it queues runs while it exists.
    let ctx = unsafe { MmContext::new(mem::fa(), mem::rcu(), &tlb::FLUSH, layout()) }?;
    let ctx = CONTEXT.call_once(|| ctx);
    ctx.set_per_vma_lock(per_vma_lock);
    Ok(())
}

/// The address-space context. Panics before [`init`].
pub fn context() -> &'static MmContext<'static, ArchPte> {
    CONTEXT.get().expect("user memory used before umem::init")
}

fn errno(e: aspace::Errno) -> Errno {
    match e {
        aspace::Errno::NoMem => Errno::NoMem,
        aspace::Errno::Fault => Errno::Fault,
        aspace::Errno::Exist => Errno::Exist,
        aspace::Errno::Inval => Errno::Inval,
    }
}

/// `PROT_*` bits (the ABI's, which are Linux's, as `mm::aspace` takes
/// them) of a page protection.
fn prot_bits(p: Prot) -> u32 {
    let mut b = 0;
    if p.contains(Prot::READ) {
        b |= samara_abi::prot::READ;
    }
    if p.contains(Prot::WRITE) {
        b |= samara_abi::prot::WRITE;
    }
    if p.contains(Prot::EXEC) {
        b |= samara_abi::prot::EXEC;
    }
    b as u32
}

pub struct UserMm {
    /// `None` after `exit`. Written only by `exit`, whose contract excludes
    /// every other use.
    asp: UnsafeCell<Option<AddressSpace<'static, ArchPte>>>,
    id: u64,
}

// SAFETY: the address space is shared by the process's threads (its own
// operations are thread-safe); the cell is written only by `exit`, which
// requires exclusive use.
unsafe impl Sync for UserMm {}
// SAFETY: as above.
unsafe impl Send for UserMm {}

impl UserMm {
    fn wrap(asp: AddressSpace<'static, ArchPte>) -> UserMm {
        // SAFETY: a fresh, zeroed root nobody uses yet.
        unsafe { arch::mmu::init_user_root(asp.page_table().root_phys().as_u64()) };
        let id = asp.id().raw();
        UserMm {
            asp: UnsafeCell::new(Some(asp)),
            id,
        }
    }

    pub fn new(cpu: usize) -> Result<UserMm, Errno> {
        AddressSpace::new(context(), cpu)
            .map(Self::wrap)
            .map_err(errno)
    }

    fn asp(&self) -> &AddressSpace<'static, ArchPte> {
        // SAFETY: only `exit` writes the cell, and its contract rules out
        // any use of `self` during or after it.
        unsafe { (*self.asp.get()).as_ref() }.expect("user memory used after exit")
    }

    /// The identity the TLB code tags this address space with.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn root_phys(&self) -> u64 {
        self.asp().page_table().root_phys().as_u64()
    }

    pub fn root_entry(&self) -> u64 {
        self.asp().page_table().root_entry()
    }

    /// Maps `[addr, addr + len)` as private anonymous memory with `prot`
    /// (for the loader and the initial stack). Pages are faulted in on
    /// first touch, by the loader's copy or by the program.
    pub fn map_fixed(&self, cpu: usize, addr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        self.asp()
            .mmap(
                cpu,
                addr,
                len,
                prot_bits(prot),
                MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED_NOREPLACE,
            )
            .map(|_| ())
            .map_err(errno)
    }

    pub fn copy_from_user(&self, cpu: usize, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.asp().copy_from_user(cpu, addr, buf).map_err(errno)
    }

    pub fn copy_to_user(&self, cpu: usize, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        self.asp().copy_to_user(cpu, addr, buf).map_err(errno)
    }

    /// The loader's copy into a segment mapped with `prot`: the range is
    /// made writable for the copy, then given `prot` back (the program never
    /// runs meanwhile: it has no thread yet).
    pub fn load(
        &self,
        cpu: usize,
        addr: u64,
        span: (u64, u64),
        bytes: &[u8],
        prot: Prot,
    ) -> Result<(), Errno> {
        let (start, end) = span;
        let a = self.asp();
        if !prot.contains(Prot::WRITE) {
            a.mprotect(cpu, start, end - start, prot_bits(prot | Prot::WRITE))
                .map_err(errno)?;
        }
        a.copy_to_user(cpu, addr, bytes).map_err(errno)?;
        if !prot.contains(Prot::WRITE) {
            a.mprotect(cpu, start, end - start, prot_bits(prot))
                .map_err(errno)?;
        }
        Ok(())
    }

    pub fn handle_fault(&self, cpu: usize, addr: u64, access: Access) -> Result<(), FaultError> {
        let access = match access {
            Access::Read => aspace::Access::Read,
            Access::Write => aspace::Access::Write,
            Access::Exec => aspace::Access::Exec,
        };
        self.asp()
            .handle_fault(cpu, addr, access)
            .map_err(|e| match e {
                aspace::FaultError::Segv { .. } => FaultError::Segv,
                aspace::FaultError::OutOfMemory => FaultError::OutOfMemory,
            })
    }

    pub fn mmap(
        &self,
        cpu: usize,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
    ) -> Result<u64, Errno> {
        let prot = u32::try_from(prot).map_err(|_| Errno::Inval)?;
        let flags = u32::try_from(flags)
            .ok()
            .and_then(MapFlags::from_bits)
            .ok_or(Errno::Inval)?;
        self.asp().mmap(cpu, addr, len, prot, flags).map_err(errno)
    }

    pub fn munmap(&self, cpu: usize, addr: u64, len: u64) -> Result<(), Errno> {
        self.asp().munmap(cpu, addr, len).map_err(errno)
    }

    pub fn mprotect(&self, cpu: usize, addr: u64, len: u64, prot: u64) -> Result<(), Errno> {
        let prot = u32::try_from(prot).map_err(|_| Errno::Inval)?;
        self.asp().mprotect(cpu, addr, len, prot).map_err(errno)
    }

    /// Linux's `brk`: returns the (possibly unchanged) break.
    pub fn brk(&self, cpu: usize, end: u64) -> Result<u64, Errno> {
        Ok(self.asp().brk(cpu, end))
    }

    /// A copy-on-write copy of this address space for a forked child.
    pub fn fork(&self, cpu: usize) -> Result<UserMm, Errno> {
        self.asp().fork(cpu).map(Self::wrap).map_err(errno)
    }

    pub fn set_brk_base(&self, base: u64) -> Result<(), Errno> {
        self.asp().set_brk_base(base).map_err(errno)
    }

    /// Tears the address space down: every VMA, mapped frame and table goes
    /// back after a full shootdown, which makes CPUs that still hold it
    /// lazily drop it.
    ///
    /// # Safety
    /// Nothing uses this address space concurrently or afterwards (the last
    /// thread has exited and left it).
    pub unsafe fn exit(&self, cpu: usize) {
        // SAFETY: exclusive per the contract.
        if let Some(a) = unsafe { (*self.asp.get()).take() } {
            a.exit(cpu);
        }
    }
}

impl Drop for UserMm {
    fn drop(&mut self) {
        debug_assert!(
            self.asp.get_mut().is_none(),
            "user memory dropped without exit()"
        );
    }
}
