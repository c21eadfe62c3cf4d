//! Host tests of the address-space layer, on host "physical" memory with
//! the software PTE format and a TLB flush that records its calls.

use std::sync::Arc;
use std::vec::Vec;

use super::*;
use crate::frame::HostFrames;
use crate::pgtable::{Prot, RecordingFlush, SoftPte};
use crate::vma::VmFlags;

const RW: u32 = map::PROT_READ | map::PROT_WRITE;
const PRIV: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

/// One test system: frames, RCU, flush recorder, context.
pub(crate) struct Sys {
    pub frames: HostFrames,
    pub rcu: Rcu,
    pub flush: RecordingFlush,
}

impl Sys {
    pub fn new(mib: usize, cpus: usize) -> Arc<Self> {
        Arc::new(Sys {
            frames: HostFrames::new(mib << 20, cpus),
            rcu: Rcu::new(),
            flush: RecordingFlush::new(),
        })
    }

    pub fn ctx(&self) -> MmContext<'_, SoftPte> {
        // SAFETY: every test ends with `finish`, which destroys the context after an RCU barrier.
        unsafe {
            MmContext::new(
                &self.frames,
                &self.rcu,
                &self.flush,
                UserLayout::for_format::<SoftPte>(),
            )
        }
        .unwrap()
    }

    pub fn free_frames(&self) -> u64 {
        self.frames.stats().free_pages
    }
}

/// Leak check: with every address space gone, the caches shrunk and RCU
/// callbacks run, every frame is back and no VMA or anon object is live.
fn finish(ctx: MmContext<'_, SoftPte>, rcu_cpu: &mut RcuCpu<'_>, baseline: u64) {
    assert_eq!(ctx.mms_live(), 0);
    assert_eq!(ctx.vmas_live(), 0, "VMAs leaked");
    assert_eq!(
        ctx.anon_objects_live(),
        (0, 0, 0),
        "anon_vmas, chains or shm objects leaked"
    );
    let frames = ctx.frames();
    ctx.shrink(rcu_cpu.id());
    rcu_cpu.barrier();
    ctx.destroy(rcu_cpu);
    frames.drain_all();
    assert_eq!(frames.stats().free_pages, baseline, "frames leaked");
}

fn read_u64(mm: &AddressSpace<'_, SoftPte>, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    mm.copy_from_user(0, addr, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn write_u64(mm: &AddressSpace<'_, SoftPte>, addr: u64, v: u64) {
    mm.copy_to_user(0, addr, &v.to_le_bytes()).unwrap();
}

fn vmas(mm: &AddressSpace<'_, SoftPte>) -> Vec<(u64, u64, VmFlags)> {
    let mut v = Vec::new();
    mm.for_each_vma(0, |s, e, f| v.push((s, e, f)));
    v
}

#[test]
fn mmap_fault_munmap_round_trip() {
    let sys = Sys::new(64, 2);
    let baseline = sys.free_frames();
    let mut rcu_cpu = sys.rcu.register_cpu(0).unwrap();
    let ctx = sys.ctx();
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    let a = mm.mmap(0, 0, 16 * PAGE, RW, PRIV).unwrap();
    assert!(a < ctx.layout().mmap_base && a >= ctx.layout().min_addr);
    assert_eq!(a % PAGE, 0);
    // Top-down: the next one goes below.
    let b = mm.mmap(0, 0, 4 * PAGE, RW, PRIV).unwrap();
    assert_eq!(b + 4 * PAGE, a, "adjacent and below: merged into one VMA");
    assert_eq!(mm.nr_vmas(), 1);
    for i in 0..20 {
        mm.handle_fault(0, b + i * PAGE, Access::Write).unwrap();
    }
    write_u64(&mm, a + 8, 0xdead_beef);
    assert_eq!(read_u64(&mm, a + 8), 0xdead_beef);
    assert_eq!(read_u64(&mm, a + PAGE), 0, "fresh pages are zero");
    mm.validate(0).unwrap();
    // A hole in the middle splits the VMA.
    mm.munmap(0, a, 2 * PAGE).unwrap();
    assert_eq!(mm.nr_vmas(), 2);
    assert_eq!(
        mm.handle_fault(0, a, Access::Read),
        Err(FaultError::Segv {
            addr: a,
            kind: SegvKind::MapErr
        })
    );
    mm.validate(0).unwrap();
    mm.munmap(0, b, 20 * PAGE).unwrap();
    assert_eq!(mm.nr_vmas(), 0);
    mm.exit(0);
    finish(ctx, &mut rcu_cpu, baseline);
}

#[test]
fn bad_arguments_change_nothing() {
    let sys = Sys::new(32, 1);
    let baseline = sys.free_frames();
    let mut rcu_cpu = sys.rcu.register_cpu(0).unwrap();
    let ctx = sys.ctx();
    let l = *ctx.layout();
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    let a = mm.mmap(0, 0, 4 * PAGE, RW, PRIV).unwrap();
    let before = vmas(&mm);
    let fixed = PRIV | MapFlags::FIXED;
    let cases: &[(&str, Result<u64, Errno>)] = &[
        ("zero length", mm.mmap(0, 0, 0, RW, PRIV)),
        ("length overflow", mm.mmap(0, 0, u64::MAX, RW, PRIV)),
        ("bad prot", mm.mmap(0, 0, PAGE, 8, PRIV)),
        (
            "shared and private",
            mm.mmap(0, 0, PAGE, RW, PRIV | MapFlags::SHARED),
        ),
        ("neither", mm.mmap(0, 0, PAGE, RW, MapFlags::ANONYMOUS)),
        ("not anonymous", mm.mmap(0, 0, PAGE, RW, MapFlags::PRIVATE)),
        ("unaligned fixed", mm.mmap(0, a + 1, PAGE, RW, fixed)),
        (
            "fixed beyond user space",
            mm.mmap(0, l.va_end, PAGE, RW, fixed),
        ),
        (
            "fixed wrapping",
            mm.mmap(0, !(PAGE - 1), 2 * PAGE, RW, fixed),
        ),
        ("fixed below min_addr", mm.mmap(0, 0, PAGE, RW, fixed)),
        (
            "noreplace over a mapping",
            mm.mmap(0, a, PAGE, RW, PRIV | MapFlags::FIXED_NOREPLACE),
        ),
        ("huge", mm.mmap(0, 0, 1 << 60, RW, PRIV)),
    ];
    let expect = [
        Errno::Inval,
        Errno::NoMem,
        Errno::Inval,
        Errno::Inval,
        Errno::Inval,
        Errno::Inval,
        Errno::Inval,
        Errno::NoMem,
        Errno::NoMem,
        Errno::NoMem,
        Errno::Exist,
        Errno::NoMem,
    ];
    for ((what, got), want) in cases.iter().zip(expect) {
        assert_eq!(*got, Err(want), "{what}");
    }
    assert_eq!(mm.munmap(0, a + 1, PAGE), Err(Errno::Inval));
    assert_eq!(mm.munmap(0, a, 0), Err(Errno::Inval));
    assert_eq!(mm.munmap(0, l.va_end, PAGE), Err(Errno::Inval));
    assert_eq!(mm.mprotect(0, a + 1, PAGE, RW), Err(Errno::Inval));
    assert_eq!(mm.mprotect(0, a, PAGE, 0x10), Err(Errno::Inval));
    // Linux: a zero length succeeds before `prot` is looked at; a length
    // that overflows is ENOMEM.
    assert_eq!(mm.mprotect(0, a, 0, 0x10), Ok(()));
    assert_eq!(mm.mprotect(0, a, u64::MAX, RW), Err(Errno::NoMem));
    assert_eq!(
        mm.mprotect(0, a - PAGE, 2 * PAGE, RW),
        Err(Errno::NoMem),
        "hole"
    );
    assert_eq!(vmas(&mm), before);
    let mut buf = [0u8; 8];
    assert_eq!(mm.copy_from_user(0, a - 8, &mut buf), Err(Errno::Fault));
    assert_eq!(
        mm.copy_from_user(0, u64::MAX - 3, &mut buf),
        Err(Errno::Fault)
    );
    assert_eq!(
        mm.handle_fault(0, u64::MAX, Access::Read),
        Err(FaultError::Segv {
            addr: u64::MAX,
            kind: SegvKind::MapErr
        })
    );
    mm.validate(0).unwrap();
    mm.exit(0);
    finish(ctx, &mut rcu_cpu, baseline);
}

#[test]
fn mprotect_splits_enforces_and_merges() {
    let sys = Sys::new(32, 1);
    let baseline = sys.free_frames();
    let mut rcu_cpu = sys.rcu.register_cpu(0).unwrap();
    let ctx = sys.ctx();
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    let a = mm.mmap(0, 0, 8 * PAGE, RW, PRIV).unwrap();
    write_u64(&mm, a + 3 * PAGE, 7);
    mm.mprotect(0, a + 2 * PAGE, 2 * PAGE, map::PROT_READ)
        .unwrap();
    assert_eq!(mm.nr_vmas(), 3);
    assert_eq!(read_u64(&mm, a + 3 * PAGE), 7);
    assert_eq!(
        mm.handle_fault(0, a + 3 * PAGE, Access::Write),
        Err(FaultError::Segv {
            addr: a + 3 * PAGE,
            kind: SegvKind::AccErr
        })
    );
    assert_eq!(mm.copy_to_user(0, a + 2 * PAGE, &[1]), Err(Errno::Fault));
    assert!(!mm.page_table().lookup(a + 3 * PAGE).allows(Prot::WRITE));
    mm.mprotect(0, a + 2 * PAGE, 2 * PAGE, RW).unwrap();
    assert_eq!(mm.nr_vmas(), 1, "equal neighbours merge back");
    // The exclusive page becomes writable again on the write fault.
    mm.handle_fault(0, a + 3 * PAGE, Access::Write).unwrap();
    write_u64(&mm, a + 3 * PAGE, 8);
    assert_eq!(read_u64(&mm, a + 3 * PAGE), 8);
    mm.mprotect(0, a, 8 * PAGE, 0).unwrap();
    assert_eq!(
        mm.handle_fault(0, a, Access::Read),
        Err(FaultError::Segv {
            addr: a,
            kind: SegvKind::AccErr
        })
    );
    mm.validate(0).unwrap();
    mm.exit(0);
    finish(ctx, &mut rcu_cpu, baseline);
}

#[test]
fn brk_and_stack_growth() {
    let sys = Sys::new(32, 1);
    let baseline = sys.free_frames();
    let mut rcu_cpu = sys.rcu.register_cpu(0).unwrap();
    let ctx = sys.ctx();
    let l = *ctx.layout();
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    assert_eq!(mm.brk(0, 0x1000_0000), 0, "no heap yet");
    mm.set_brk_base(0x40_0000).unwrap();
    assert_eq!(mm.brk(0, 0), 0x40_0000);
    assert_eq!(
        mm.brk(0, 0x40_0000 + 3 * PAGE + 5),
        0x40_0000 + 3 * PAGE + 5
    );
    write_u64(&mm, 0x40_0000 + 3 * PAGE, 1);
    assert_eq!(mm.brk(0, 0x40_0000 + 10 * PAGE), 0x40_0000 + 10 * PAGE);
    assert_eq!(mm.nr_vmas(), 1, "growing the heap extends its VMA");
    assert_eq!(mm.brk(0, 0x40_0000 + PAGE), 0x40_0000 + PAGE);
    assert_eq!(
        mm.copy_from_user(0, 0x40_0000 + 3 * PAGE, &mut [0u8; 8]),
        Err(Errno::Fault)
    );
    assert_eq!(
        mm.brk(0, 0x3f_0000),
        0x40_0000 + PAGE,
        "below the base: unchanged"
    );
    // A stack below mmap_base's area top, growing down on faults.
    let top = l.va_end;
    let stack = mm
        .mmap(
            0,
            top - 4 * PAGE,
            4 * PAGE,
            RW,
            PRIV | MapFlags::FIXED | MapFlags::GROWSDOWN,
        )
        .unwrap();
    mm.handle_fault(0, stack - 10 * PAGE + 8, Access::Write)
        .unwrap();
    let v = vmas(&mm);
    assert_eq!(v.last().unwrap().0, stack - 10 * PAGE);
    assert_eq!(v.last().unwrap().1, top);
    assert!(matches!(
        mm.handle_fault(0, top - l.stack_max - PAGE, Access::Write),
        Err(FaultError::Segv {
            kind: SegvKind::MapErr,
            ..
        })
    ));
    mm.validate(0).unwrap();
    mm.exit(0);
    finish(ctx, &mut rcu_cpu, baseline);
}

#[test]
fn fork_shares_pages_copy_on_write() {
    let sys = Sys::new(64, 1);
    let baseline = sys.free_frames();
    let mut rcu_cpu = sys.rcu.register_cpu(0).unwrap();
    let ctx = sys.ctx();
    let parent = AddressSpace::new(&ctx, 0).unwrap();
    let a = parent.mmap(0, 0, 8 * PAGE, RW, PRIV).unwrap();
    let s = parent
        .mmap(0, 0, 2 * PAGE, RW, MapFlags::SHARED | MapFlags::ANONYMOUS)
        .unwrap();
    for i in 0..8 {
        write_u64(&parent, a + i * PAGE, 100 + i);
    }
    write_u64(&parent, s, 1);
    let child = parent.fork(0).unwrap();
    child.validate(0).unwrap();
    parent.validate(0).unwrap();
    let used_after_fork = sys.free_frames();
    for i in 0..8 {
        assert_eq!(read_u64(&child, a + i * PAGE), 100 + i);
    }
    assert_eq!(sys.free_frames(), used_after_fork, "reads copy nothing");
    // A write in the child copies one page; the parent keeps its value.
    write_u64(&child, a + 3 * PAGE, 999);
    assert_eq!(read_u64(&child, a + 3 * PAGE), 999);
    assert_eq!(read_u64(&parent, a + 3 * PAGE), 103);
    // Shared memory stays shared.
    write_u64(&child, s, 2);
    assert_eq!(read_u64(&parent, s), 2);
    // Once the child is gone, the parent's pages are exclusive again and a
    // write reuses them in place.
    child.exit(0);
    let free = sys.free_frames();
    write_u64(&parent, a, 5);
    assert_eq!(sys.free_frames(), free, "exclusive page reused, not copied");
    parent.validate(0).unwrap();
    parent.exit(0);
    finish(ctx, &mut rcu_cpu, baseline);
}

/// The reference design's Octeon crash, with per-VMA locking off: fork a
/// process with anonymous memory, recycle VMAs through the type-safe slab
/// (freed VMAs are reused at once), munmap and exit so that anon_vma chains
/// are unlinked. No corruption; all frames and VMAs come back.
#[test]
fn octeon_fork_recycle_unlink_regression() {
    let sys = Sys::new(64, 1);
    let baseline = sys.free_frames();
    let mut rcu_cpu = sys.rcu.register_cpu(0).unwrap();
    let ctx = sys.ctx();
    ctx.set_per_vma_lock(false);
    assert!(!ctx.per_vma_lock());
    let parent = AddressSpace::new(&ctx, 0).unwrap();
    let mut areas = Vec::new();
    for i in 0..6u64 {
        // Different protections so they stay separate VMAs.
        let prot = if i.is_multiple_of(2) {
            RW
        } else {
            map::PROT_READ
        };
        let a = parent.mmap(0, 0, 4 * PAGE, prot, PRIV).unwrap();
        parent.handle_fault(0, a, Access::Read).unwrap();
        areas.push(a);
    }
    for round in 0..20u64 {
        let child = parent.fork(0).unwrap();
        // Free some of the parent's VMAs: their slots go straight back to
        // the slab's CPU cache...
        parent
            .munmap(0, areas[(round % 6) as usize], 4 * PAGE)
            .unwrap();
        // ... and are handed out again at once, here to the child.
        let fresh = child.mmap(0, 0, 2 * PAGE, RW, PRIV).unwrap();
        write_u64(&child, fresh, round);
        child.validate(0).unwrap();
        let grandchild = child.fork(0).unwrap();
        write_u64(&grandchild, fresh, round + 1);
        assert_eq!(read_u64(&child, fresh), round);
        grandchild.validate(0).unwrap();
        grandchild.exit(0);
        child.munmap(0, fresh, 2 * PAGE).unwrap();
        child.validate(0).unwrap();
        child.exit(0);
        let i = (round % 6) as usize;
        let prot = if i.is_multiple_of(2) {
            RW
        } else {
            map::PROT_READ
        };
        areas[i] = parent.mmap(0, 0, 4 * PAGE, prot, PRIV).unwrap();
        parent.handle_fault(0, areas[i], Access::Read).unwrap();
        parent.validate(0).unwrap();
    }
    let st = ctx.vmas.stats();
    assert!(
        st.allocs > st.constructor_calls,
        "more VMA allocations ({}) than slots ever constructed ({}): slots were reused",
        st.allocs,
        st.constructor_calls
    );
    assert!(st.frees > 50);
    assert!(
        st.rcu_calls <= st.pages_created,
        "at most one RCU callback per slab page, none per VMA"
    );
    parent.exit(0);
    finish(ctx, &mut rcu_cpu, baseline);
}

#[test]
fn fault_counters_follow_the_configuration() {
    let sys = Sys::new(32, 1);
    let baseline = sys.free_frames();
    let mut rcu_cpu = sys.rcu.register_cpu(0).unwrap();
    let ctx = sys.ctx();
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    let a = mm.mmap(0, 0, 4 * PAGE, RW, PRIV).unwrap();
    let on = ctx.set_per_vma_lock(true);
    assert_eq!(on, cfg!(feature = "per-vma-lock"));
    for i in 0..4 {
        mm.handle_fault(0, a + i * PAGE, Access::Write).unwrap();
    }
    let c = ctx.fault_counts();
    if on {
        assert_eq!((c.success, c.mmap_locked), (4, 0));
    } else {
        assert_eq!((c.success, c.mmap_locked), (0, 4));
    }
    ctx.set_per_vma_lock(false);
    mm.handle_fault(0, a, Access::Read).unwrap();
    assert_eq!(ctx.fault_counts().mmap_locked, c.mmap_locked + 1);
    // No VMA: the lockless lookup aborts, the fallback reports SEGV.
    ctx.set_per_vma_lock(true);
    let r = mm.handle_fault(0, a - PAGE, Access::Read);
    assert!(matches!(
        r,
        Err(FaultError::Segv {
            kind: SegvKind::MapErr,
            ..
        })
    ));
    mm.exit(0);
    finish(ctx, &mut rcu_cpu, baseline);
}
