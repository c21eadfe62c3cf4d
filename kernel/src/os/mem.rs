//! The system's memory objects: the frame allocator over all usable RAM,
//! the RCU domain, the TLB shootdown state (and, with them, the address-
//! space context).
//!
//! Each lives in a `spin::Once` static, built once on the boot CPU before
//! any other CPU starts; afterwards they are only read.

use boot::{BootInfo, RegionKind};
use mm::addr::PhysAddr;
use mm::frame::{FrameAllocator, FrameConfig};
use mm::phys::DirectMap;
use mm::rcu::Rcu;
use mm::shootdown::Shootdown;
use spin::Once;

static FRAMES: Once<FrameAllocator> = Once::new();
static RCU: Once<Rcu> = Once::new();
static SHOOTDOWN: Once<Shootdown> = Once::new();

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

/// Why memory could not be set up.
#[derive(Debug)]
pub enum MemError {
    TooManyRegions,
    Frames(mm::frame::InitError),
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemError::TooManyRegions => f.write_str("more usable regions than the kernel takes"),
            MemError::Frames(e) => write!(f, "frame allocator: {e}"),
        }
    }
}

/// Builds the frame allocator over every usable region of `info` for
/// `nr_cpus` CPUs, the RCU domain and the shootdown state. Boot CPU, once.
pub fn init(info: &BootInfo, nr_cpus: usize) -> Result<(), MemError> {
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
    // SAFETY: the arch layer maps all of RAM at `phys_to_virt` for the
    // kernel's lifetime (x86: the physmap, extended over all RAM at boot),
    // page-aligned at both ends.
    let dmap = unsafe {
        DirectMap::new(
            arch::paging::phys_to_virt(0),
            PhysAddr::new(0),
            PhysAddr::new(end.next_multiple_of(4096)),
        )
    };
    // SAFETY: the usable regions are RAM nothing else uses: the kernel
    // image, boot data and firmware areas are other region kinds, and the
    // boot code allocated its own page tables out of usable RAM by marking
    // them `Kernel`. From now on only the allocator hands them out.
    let fa = unsafe { FrameAllocator::new(dmap, &regions[..n], FrameConfig::new(nr_cpus)) }
        .map_err(MemError::Frames)?;
    FRAMES.call_once(|| fa);
    RCU.call_once(Rcu::new);
    SHOOTDOWN.call_once(|| Shootdown::new(nr_cpus));
    Ok(())
}
