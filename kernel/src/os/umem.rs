//! A process's user memory: `mm::aspace`'s `AddressSpace` over the
//! system's `MmContext`, with the kernel-side glue (the arch's kernel half
//! of the root table, the system-call argument checks, error mapping).
//!
//! The kernel reaches user memory only through `copy_from_user` and
//! `copy_to_user`, which walk the page table (faulting pages in through the
//! same handler the MMU's faults use) and copy through the direct map; a
//! bad pointer is `EFAULT`, never a kernel fault.

use core::cell::UnsafeCell;

use mm::aspace::{self, AddressSpace, MapFlags};
#[cfg(target_arch = "mips64")]
use mm::pgtable::Mips64Pte;
#[cfg(target_arch = "x86_64")]
use mm::pgtable::X86_64Pte;
use samara_abi::prot::{EXEC as PROT_EXEC, READ as PROT_READ, WRITE as PROT_WRITE};
use samara_abi::Errno;

use super::mem;

/// The page-table format the MMU reads.
#[cfg(target_arch = "x86_64")]
pub type ArchPte = X86_64Pte;
#[cfg(target_arch = "mips64")]
pub type ArchPte = Mips64Pte;

/// What a faulting access was.
pub use mm::aspace::Access;

/// First address user mappings may use (Linux's `mmap_min_addr`).
pub const MIN_ADDR: u64 = 0x10000;

/// `PROT_*` bits of a loadable segment.
pub fn prot_bits(read: bool, write: bool, exec: bool) -> u32 {
    let bit = |on: bool, b: u64| if on { b as u32 } else { 0 };
    bit(read, PROT_READ) | bit(write, PROT_WRITE) | bit(exec, PROT_EXEC)
}

/// Why a fault was not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// No mapping, or one that forbids the access.
    Segv,
    OutOfMemory,
}

/// The mm layer's error as the ABI's.
fn errno(e: aspace::Errno) -> Errno {
    match e {
        aspace::Errno::NoMem => Errno::NoMem,
        aspace::Errno::Fault => Errno::Fault,
        aspace::Errno::Exist => Errno::Exist,
        aspace::Errno::Inval => Errno::Inval,
    }
}

pub struct UserMm {
    /// `None` after `exit`. Written only by `exit`, whose contract excludes
    /// every other use.
    aspace: UnsafeCell<Option<AddressSpace<'static, ArchPte>>>,
    id: u64,
    root_phys: u64,
    root_entry: u64,
}

// SAFETY: the address space is shared by the process's threads (its
// operations are thread-safe); the cell is written only by `exit`, which
// requires exclusive use.
unsafe impl Sync for UserMm {}
// SAFETY: as above.
unsafe impl Send for UserMm {}

impl UserMm {
    fn from(a: AddressSpace<'static, ArchPte>) -> UserMm {
        let pt = a.page_table();
        let (root_phys, root_entry) = (pt.root_phys().as_u64(), pt.root_entry());
        // SAFETY: a fresh root nobody uses yet; the arch writes only the entries above the user limit, which the page table leaves alone.
        unsafe { arch::mmu::init_user_root(root_phys) };
        UserMm {
            id: a.id().raw(),
            aspace: UnsafeCell::new(Some(a)),
            root_phys,
            root_entry,
        }
    }

    pub fn new(cpu: usize) -> Result<UserMm, Errno> {
        Ok(Self::from(
            AddressSpace::new(mem::ctx(), cpu).map_err(errno)?,
        ))
    }

    fn a(&self) -> &AddressSpace<'static, ArchPte> {
        // SAFETY: only `exit` writes the cell, and its contract rules out any use of `self` during or after it.
        unsafe { (*self.aspace.get()).as_ref() }.expect("user memory used after exit")
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn root_phys(&self) -> u64 {
        self.root_phys
    }

    pub fn root_entry(&self) -> u64 {
        self.root_entry
    }

    pub fn copy_from_user(&self, cpu: usize, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.a().copy_from_user(cpu, addr, buf).map_err(errno)
    }

    pub fn copy_to_user(&self, cpu: usize, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        self.a().copy_to_user(cpu, addr, buf).map_err(errno)
    }

    pub fn handle_fault(&self, cpu: usize, addr: u64, access: Access) -> Result<(), FaultError> {
        self.a()
            .handle_fault(cpu, addr, access)
            .map_err(|e| match e {
                aspace::FaultError::Segv { .. } => FaultError::Segv,
                aspace::FaultError::OutOfMemory => FaultError::OutOfMemory,
            })
    }

    /// `mmap`: the ABI's flags and protection, checked before `mm` sees
    /// them (unknown bits are `EINVAL`; every mapping is anonymous).
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
        if flags.contains(MapFlags::GROWSDOWN) {
            // Stacks are the kernel's business (the loader maps them).
            return Err(Errno::Inval);
        }
        self.a()
            .mmap(cpu, addr, len, prot, flags | MapFlags::ANONYMOUS)
            .map_err(errno)
    }

    pub fn munmap(&self, cpu: usize, addr: u64, len: u64) -> Result<(), Errno> {
        self.a().munmap(cpu, addr, len).map_err(errno)
    }

    pub fn mprotect(&self, cpu: usize, addr: u64, len: u64, prot: u64) -> Result<(), Errno> {
        let prot = u32::try_from(prot).map_err(|_| Errno::Inval)?;
        self.a().mprotect(cpu, addr, len, prot).map_err(errno)
    }

    pub fn brk(&self, cpu: usize, end: u64) -> Result<u64, Errno> {
        Ok(self.a().brk(cpu, end))
    }

    pub fn fork(&self, cpu: usize) -> Result<UserMm, Errno> {
        Ok(Self::from(self.a().fork(cpu).map_err(errno)?))
    }

    /// The loader's mappings: fixed, private, anonymous.
    pub fn map_fixed(
        &self,
        cpu: usize,
        addr: u64,
        len: u64,
        prot: u32,
        grows_down: bool,
    ) -> Result<(), Errno> {
        let mut f = MapFlags::FIXED | MapFlags::PRIVATE | MapFlags::ANONYMOUS;
        if grows_down {
            f |= MapFlags::GROWSDOWN;
        }
        self.a()
            .mmap(cpu, addr, len, prot, f)
            .map(|_| ())
            .map_err(errno)
    }

    pub fn set_brk_base(&self, base: u64) -> Result<(), Errno> {
        self.a().set_brk_base(base).map_err(errno)
    }

    /// Tears the address space down.
    ///
    /// # Safety
    /// Nothing uses this address space concurrently or afterwards (the last
    /// thread has exited and left it).
    pub unsafe fn exit(&self, cpu: usize) {
        // SAFETY: exclusive per the contract.
        if let Some(a) = unsafe { (*self.aspace.get()).take() } {
            a.exit(cpu);
        }
    }
}

impl Drop for UserMm {
    fn drop(&mut self) {
        debug_assert!(
            self.aspace.get_mut().is_none(),
            "user memory dropped without exit()"
        );
    }
}
