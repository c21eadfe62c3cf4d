//! The system's memory objects: the frame allocator over all usable RAM,
//! the RCU domain, the TLB shootdown state (and, with them, the address-
//! space context).
//!
//! Each lives in a `spin::Once` static, built once on the boot CPU before
//! any other CPU starts; afterwards they are only read.

use boot::{BootInfo, RegionKind};
use mm::addr::PhysAddr;
use mm::aspace::{MmContext, UserLayout};
use mm::frame::{FrameAllocator, FrameConfig};
use mm::phys::DirectMap;
use mm::rcu::Rcu;
use mm::shootdown::Shootdown;
use spin::Once;

use super::tlb;
use super::umem::ArchPte;

static FRAMES: Once<FrameAllocator> = Once::new();
static RCU: Once<Rcu> = Once::new();
static SHOOTDOWN: Once<Shootdown> = Once::new();
static MM: Once<MmContext<'static, ArchPte>> = Once::new();

/// The frame allocator (`None` before [`init`]).
pub fn frames() -> Option<&'static FrameAllocator> {
    FRAMES.get()
}

/// The frame allocator. Panics before [`init`], which runs first thing.
pub fn fa() -> &'static FrameAllocator {
    FRAMES.get().expect("frame allocator used before mem::init")
}

pub fn rcu() -> &'static Rcu {
    RCU.get().expect("RCU used before mem::init")
}

pub fn shootdown() -> &'static Shootdown {
    SHOOTDOWN.get().expect("shootdown used before mem::init")
}

pub fn shootdown_opt() -> Option<&'static Shootdown> {
    SHOOTDOWN.get()
}

/// The address-space context: VMA slabs, fault counters, the TLB hook.
pub fn ctx() -> &'static MmContext<'static, ArchPte> {
    MM.get().expect("address spaces used before mem::init")
}

/// Why memory could not be set up.
#[derive(Debug)]
pub enum MemError {
    TooManyRegions,
    Frames(mm::frame::InitError),
    Slabs,
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemError::TooManyRegions => f.write_str("more usable regions than the kernel takes"),
            MemError::Frames(e) => write!(f, "frame allocator: {e}"),
            MemError::Slabs => f.write_str("out of memory for the address-space caches"),
        }
    }
}

/// Builds the frame allocator over every usable region of `info` for
/// `nr_cpus` CPUs, the RCU domain, the shootdown state and the
/// address-space context (per-VMA locking `per_vma_lock` at run time; it
/// stays off without the feature). Boot CPU, once.
pub fn init(info: &BootInfo, nr_cpus: usize, per_vma_lock: bool) -> Result<(), MemError> {
    let mut regions = [(0u64, 0u64); boot::memmap::MAX_REGIONS];
    let mut n = 0;
    for r in info
        .memory
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Usable)
    {
        *regions.get_mut(n).ok_or(MemError::TooManyRegions)? = (r.start, r.end);
        n += 1;
    }
    let end = info
        .memory
        .regions()
        .iter()
        .filter(|r| r.kind != RegionKind::Reserved)
        .map(|r| r.end)
        .max()
        .unwrap_or(0);
    // SAFETY: the arch layer maps all of RAM at `phys_to_virt` for the kernel's lifetime (x86: the physmap, extended over all RAM at boot), page-aligned at both ends.
    let dmap = unsafe {
        DirectMap::new(
            arch::paging::phys_to_virt(0),
            PhysAddr::new(0),
            PhysAddr::new(end.next_multiple_of(4096)),
        )
    };
    // SAFETY: the usable regions are RAM nothing else uses: the kernel image, boot data and firmware areas are other region kinds, and the boot code allocated its own page tables out of usable RAM by marking them `Kernel`. From now on only the allocator hands them out.
    let fa = unsafe { FrameAllocator::new(dmap, &regions[..n], FrameConfig::new(nr_cpus)) }
        .map_err(MemError::Frames)?;
    let fa = FRAMES.call_once(|| fa);
    let rcu = RCU.call_once(Rcu::new);
    SHOOTDOWN.call_once(|| Shootdown::new(nr_cpus));
    // SAFETY: the context is never dropped (a static), so no RCU callback can outlive it.
    let ctx = unsafe { MmContext::new(fa, rcu, &tlb::FLUSH, UserLayout::for_format::<ArchPte>()) }
        .map_err(|_| MemError::Slabs)?;
    let ctx = MM.call_once(|| ctx);
    ctx.set_per_vma_lock(per_vma_lock);
    prime(ctx).map_err(|_| MemError::Slabs)?;
    Ok(())
}

/// Makes the address-space layer allocate the reserves it keeps for good
/// once used (the maple tree's spare retire batch, held so that retiring
/// nodes can never fail): one address space with one mapping, created and
/// torn down at boot. From then on the free-frame count after a workload
/// (caches shrunk, RCU callbacks run) equals the count before it exactly,
/// which is what the workloads check.
fn prime(ctx: &'static MmContext<'static, ArchPte>) -> Result<(), mm::aspace::Errno> {
    use mm::aspace::{AddressSpace, MapFlags};
    let a = AddressSpace::new(ctx, 0)?;
    let r = a.mmap(
        0,
        0,
        4096,
        samara_abi::prot::READ as u32,
        MapFlags::PRIVATE | MapFlags::ANONYMOUS,
    );
    a.exit(0);
    r.map(|_| ())
}
