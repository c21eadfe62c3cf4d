//! Host stress test of the address-space layer: std threads stand in for
//! CPUs, each with its own RCU handle, reporting quiescent states in its
//! loop, so that the maple tree's retired nodes and the VMA slab's pages
//! are reclaimed while faults run.
//!
//! - *Faulters* (one per CPU 1..=F) each own a private and a shared region
//!   of one address space. They write tagged values into their pages and
//!   read them back the way a CPU does (see [`Mmu`]): a page-table lookup,
//!   a page fault through `handle_fault` when the entry does not allow the
//!   access, then the access through the entry. Every few rounds a faulter
//!   unmaps and remaps its private region (fresh zero pages; its VMAs are
//!   recycled through the slab). Faulter 0's regions are touched by no one
//!   else except fork.
//! - The *mutator* maps and unmaps scratch mappings around them, mprotects
//!   subranges of the other faulters' private regions read-write again
//!   (splitting and merging their VMAs and write-protecting their pages
//!   under them), validates the address space, and forks it: in the child
//!   the faulters' private pages hold what they held at the fork (checked
//!   against what the faulters had published before and after it), the
//!   shared pages see later writes, and the child's own writes copy pages
//!   without disturbing the parent (whose faulters keep checking their
//!   values). Then the child exits, its VMAs going back to the slab.
//! - The *recycler* maps, faults and unmaps in a second address space, so
//!   that VMAs freed by one are reused by the other while stale lockless
//!   lookups may still find them (the owner check of `lock_vma_under_rcu`).
//!
//! Run with per-VMA locks on and off (`set_per_vma_lock`). At the end the
//! fault counters must match the configuration, and after every address
//! space exited, the caches shrank and RCU callbacks ran, every frame,
//! VMA, anon_vma, chain and shared object is back.
//!
//! Large natively; small under Miri, which checks every access for data
//! races (user memory is accessed with atomics, as the hardware would) and
//! use after free: `cargo +nightly miri test -p mm --test aspace_stress`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Mutex;
use std::thread;

use mm::aspace::{
    Access, AddressSpace, FaultError, MapFlags, MmContext, SegvKind, UserLayout, PROT_READ,
    PROT_WRITE,
};
use mm::frame::HostFrames;
use mm::pgtable::{FlushRange, Prot, SoftPte, TlbFlush};
use mm::rcu::{Rcu, RcuCpu};
use mm::vma::lock::{MmId, VmaLockCounts};

const PAGE: u64 = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PRIV: MapFlags = MapFlags::PRIVATE
    .union(MapFlags::ANONYMOUS)
    .union(MapFlags::FIXED);
const SHARED: MapFlags = MapFlags::SHARED
    .union(MapFlags::ANONYMOUS)
    .union(MapFlags::FIXED);

/// Where each faulter's regions live: faulter `i` owns
/// `[PRIV_BASE + i * STRIDE, + pages)` and `[SHM_BASE + i * STRIDE, + pages)`.
const PRIV_BASE: u64 = 0x1000_0000;
const SHM_BASE: u64 = 0x2000_0000;
const STRIDE: u64 = 0x10_0000;
/// The mutator's scratch zone.
const SCRATCH: u64 = 0x3000_0000;
const SCRATCH_PAGES: u64 = 64;

struct Size {
    faulters: usize,
    pages: u64,
    rounds: u64,
    /// A faulter remaps its private region every this many rounds.
    remap_every: u64,
    mutator_ops: u64,
    recycler_ops: u64,
    memory: usize,
}

#[cfg(miri)]
const SIZE: Size = Size {
    faulters: 2,
    pages: 2,
    rounds: 4,
    remap_every: 3,
    mutator_ops: 8,
    recycler_ops: 6,
    memory: 4 << 20,
};

#[cfg(not(miri))]
const SIZE: Size = Size {
    faulters: 3,
    pages: 24,
    rounds: 200,
    remap_every: 5,
    mutator_ops: 4000,
    recycler_ops: 3000,
    memory: 64 << 20,
};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The simulated MMUs and their TLB shootdown.
///
/// CPU `c` performs a user access holding `cpus[c]`: it looks the page up
/// and, if the entry allows the access, performs it, all under the lock (a
/// translation is used only for the access it was looked up for: no TLB).
/// A flush takes and drops every CPU's lock, so it returns only once every
/// access that may have used a dropped translation has completed, which is
/// exactly what `TlbFlush` promises (an IPI shootdown on real hardware).
struct Mmu {
    cpus: Vec<Mutex<()>>,
    flushes: AtomicU64,
}

impl Mmu {
    fn new(n: usize) -> Self {
        Mmu {
            cpus: (0..n).map(|_| Mutex::new(())).collect(),
            flushes: AtomicU64::new(0),
        }
    }

    fn shootdown(&self) {
        for c in &self.cpus {
            drop(c.lock().unwrap());
        }
        self.flushes.fetch_add(1, Relaxed);
    }
}

impl TlbFlush for Mmu {
    fn flush_range(&self, _: MmId, _: FlushRange) {
        self.shootdown();
    }

    fn flush_all(&self, _: MmId) {
        self.shootdown();
    }
}

type Mm<'a> = AddressSpace<'a, SoftPte>;

/// A user access of 8 bytes at `addr` by CPU `cpu`: writes `val` if given,
/// returns the value read (or written). Faults as a CPU would.
fn user_access(
    mmu: &Mmu,
    mm: &Mm<'_>,
    cpu: usize,
    addr: u64,
    val: Option<u64>,
) -> Result<u64, FaultError> {
    let (need, access) = match val {
        Some(_) => (Prot::WRITE | Prot::USER, Access::Write),
        None => (Prot::READ | Prot::USER, Access::Read),
    };
    loop {
        {
            let _on_cpu = mmu.cpus[cpu].lock().unwrap();
            let pte = mm.page_table().lookup(addr);
            if pte.allows(need) {
                let frames = mm.context().frames();
                let p = frames.frame_ptr(pte.frame().unwrap()).unwrap();
                // SAFETY: the entry maps this frame with the access allowed, and cannot be replaced and the frame freed before the shootdown that waits for our lock; 8-byte aligned inside the page. User memory is accessed atomically only.
                let word = unsafe {
                    AtomicU64::from_ptr(p.as_ptr().add((addr % PAGE) as usize).cast::<u64>())
                };
                return Ok(match val {
                    Some(v) => {
                        word.store(v, Relaxed);
                        v
                    }
                    None => word.load(Relaxed),
                });
            }
        }
        mm.handle_fault(cpu, addr, access)?;
    }
}

/// The value faulter `i` writes into page `j` in round `r`.
fn tag(i: usize, j: u64, r: u64) -> u64 {
    ((i as u64 + 1) << 56) | (j << 40) | r
}

/// Where in page `j` the faulters keep their word (spread over the page).
fn slot(base: u64, j: u64) -> u64 {
    base + j * PAGE + (j * 8 % 512) * 8
}

/// What the faulters publish for the fork checks.
struct Published {
    /// Per faulter and page: the last round whose private write completed.
    private: Vec<Vec<AtomicU64>>,
    /// The same for the shared pages.
    shared: Vec<Vec<AtomicU64>>,
    /// Per faulter: odd while it remaps its private region; counts remaps.
    epoch: Vec<AtomicU64>,
    /// Rounds done per faulter, then operations done by the recycler.
    progress: Vec<AtomicU64>,
}

struct Shared<'a> {
    mmu: &'a Mmu,
    mm: Mm<'a>,
    other: Mm<'a>,
    published: Published,
    stop: AtomicBool,
}

/// Sets `stop` when dropped: a thread that panics stops the others (which
/// would otherwise wait for it forever), so that the panic is reported.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Release);
        }
    }
}

fn map_regions(mm: &Mm<'_>, i: usize, pages: u64) {
    let (p, s) = (PRIV_BASE + i as u64 * STRIDE, SHM_BASE + i as u64 * STRIDE);
    assert_eq!(mm.mmap(0, p, pages * PAGE, RW, PRIV), Ok(p));
    assert_eq!(mm.mmap(0, s, pages * PAGE, RW, SHARED), Ok(s));
}

fn faulter(sh: &Shared<'_>, i: usize, me: &mut RcuCpu<'_>) {
    let cpu = me.id();
    let (mm, mmu, pb) = (&sh.mm, sh.mmu, &sh.published);
    let pages = SIZE.pages;
    let (pbase, sbase) = (PRIV_BASE + i as u64 * STRIDE, SHM_BASE + i as u64 * STRIDE);
    // What this faulter wrote last into each page (0: nothing since the
    // region was last mapped).
    let mut mine = vec![0u64; pages as usize];
    let mut shm = vec![0u64; pages as usize];
    let mut rng = Rng::new(100 + i as u64);
    // At least `rounds` rounds, and on until the mutator is done, so that
    // all of its work happens around faults.
    let mut r = 0;
    while !sh.stop.load(Acquire) {
        // Release: a fork that reads this afterwards happens after our
        // earlier rounds' writes.
        pb.progress[i].store(r, Release);
        r += 1;
        if r % SIZE.remap_every == 0 {
            pb.epoch[i].fetch_add(1, AcqRel);
            mm.munmap(cpu, pbase, pages * PAGE).unwrap();
            assert_eq!(mm.mmap(cpu, pbase, pages * PAGE, RW, PRIV), Ok(pbase));
            for j in 0..pages {
                pb.private[i][j as usize].store(0, Release);
                mine[j as usize] = 0;
            }
            pb.epoch[i].fetch_add(1, AcqRel);
            me.quiescent_state();
        }
        for j in 0..pages {
            let (pa, sa) = (slot(pbase, j), slot(sbase, j));
            // What we wrote is still there: no fault, COW, mprotect, fork,
            // split or merge may lose or mix it up.
            let got = user_access(mmu, mm, cpu, pa, None).unwrap();
            assert_eq!(got, mine[j as usize], "faulter {i} private page {j}");
            let got = user_access(mmu, mm, cpu, sa, None).unwrap();
            assert_eq!(got, shm[j as usize], "faulter {i} shared page {j}");
            let v = tag(i, j, r);
            user_access(mmu, mm, cpu, pa, Some(v)).unwrap();
            mine[j as usize] = v;
            pb.private[i][j as usize].store(r, Release);
            if (r + j) % 3 == 0 {
                user_access(mmu, mm, cpu, sa, Some(v)).unwrap();
                shm[j as usize] = v;
                pb.shared[i][j as usize].store(r, Release);
            }
            if i > 0 && j % 2 == 0 {
                // A fault in the mutator's scratch zone, whose VMAs come and
                // go (and are reused by the recycler's address space): the
                // lockless lookup meets detached, reused and write-locked
                // VMAs. Only the result is checked; nothing is accessed.
                let a = SCRATCH + rng.below(SCRATCH_PAGES) * PAGE;
                let access = if rng.below(2) == 0 {
                    Access::Read
                } else {
                    Access::Write
                };
                match mm.handle_fault(cpu, a, access) {
                    Ok(())
                    | Err(FaultError::Segv {
                        kind: SegvKind::MapErr,
                        ..
                    }) => {}
                    Err(e) => panic!("scratch fault at {a:#x}: {e:?}"),
                }
            }
            me.quiescent_state();
        }
    }
}

/// The checks of a forked child, on the mutator's CPU.
fn check_child(
    sh: &Shared<'_>,
    child: &Mm<'_>,
    cpu: usize,
    before: &[Vec<u64>],
    after: &[u64],
    epochs: &[u64],
) {
    let pb = &sh.published;
    for i in 0..SIZE.faulters {
        let (pbase, sbase) = (PRIV_BASE + i as u64 * STRIDE, SHM_BASE + i as u64 * STRIDE);
        let stable = epochs[i].is_multiple_of(2) && pb.epoch[i].load(Acquire) == epochs[i];
        for j in 0..SIZE.pages {
            // Private: a value of this faulter's page from before the fork
            // ended (at least what was published before it began, unless
            // the region was remapped meanwhile).
            let mut b = [0u8; 8];
            let private = child.copy_from_user(cpu, slot(pbase, j), &mut b);
            if private.is_err() {
                // Forked while the faulter had its region unmapped.
                assert!(
                    !stable,
                    "child: faulter {i} page {j} not mapped: {private:?}"
                );
                continue;
            }
            let v = u64::from_le_bytes(b);
            let r = v & 0xff_ffff_ffff;
            assert!(
                v == 0 || v == tag(i, j, r),
                "child: faulter {i} page {j} holds foreign value {v:#x}"
            );
            // Not newer than the round the faulter was in when fork
            // returned: its later writes went to pages of its own.
            assert!(
                r <= after[i] + 1,
                "child: faulter {i} page {j} holds round {r}, written after the fork (the \
                 faulter had done {} rounds)",
                after[i]
            );
            if stable {
                assert!(
                    r >= before[i][j as usize],
                    "child: faulter {i} page {j} round {r} older than published {}",
                    before[i][j as usize]
                );
            }
            // Shared: at least what was published before we look.
            let published = pb.shared[i][j as usize].load(Acquire);
            let v = user_access(sh.mmu, child, cpu, slot(sbase, j), None).unwrap();
            let r = v & 0xff_ffff_ffff;
            assert!(v == 0 || v == tag(i, j, r), "child: shared {i}/{j} {v:#x}");
            assert!(
                r >= published,
                "child: shared write of round {published} not seen"
            );
            // The child's own write copies the page; the parent's faulter
            // keeps checking its value.
            let w = tag(9, j, 0xabc);
            child
                .copy_to_user(cpu, slot(pbase, j), &w.to_le_bytes())
                .unwrap();
            child.copy_from_user(cpu, slot(pbase, j), &mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), w);
        }
    }
}

fn mutator(sh: &Shared<'_>, me: &mut RcuCpu<'_>) {
    let cpu = me.id();
    let mm = &sh.mm;
    let mut rng = Rng::new(7);
    let mut forks = 0;
    for n in 0..SIZE.mutator_ops {
        if sh.stop.load(Acquire) {
            break; // another thread failed
        }
        match rng.below(16) {
            0..=5 => {
                // A scratch mapping: fixed or hinted, private or shared.
                let pages = 1 + rng.below(6);
                let at = SCRATCH + rng.below(SCRATCH_PAGES - pages) * PAGE;
                let flags = if rng.below(3) == 0 { SHARED } else { PRIV };
                let flags = if rng.below(2) == 0 {
                    flags - MapFlags::FIXED
                } else {
                    flags
                };
                if let Ok(a) = mm.mmap(cpu, at, pages * PAGE, RW, flags) {
                    mm.copy_to_user(cpu, a, &n.to_le_bytes()).unwrap();
                    if !(SCRATCH..SCRATCH + SCRATCH_PAGES * PAGE).contains(&a) {
                        mm.munmap(cpu, a, pages * PAGE).unwrap();
                    }
                }
            }
            6..=9 => {
                // munmap in the scratch zone, across several VMAs.
                let pages = 1 + rng.below(12);
                let at = SCRATCH + rng.below(SCRATCH_PAGES - pages) * PAGE;
                mm.munmap(cpu, at, pages * PAGE).unwrap();
            }
            10..=12 if SIZE.faulters > 1 => {
                // Read-write again over part of another faulter's private
                // region: split, write-protect, merge back, under faults.
                let i = 1 + rng.below(SIZE.faulters as u64 - 1);
                let base = PRIV_BASE + i * STRIDE;
                let first = rng.below(SIZE.pages);
                let len = 1 + rng.below(SIZE.pages - first);
                // The faulter may be remapping it: then ENOMEM is fine.
                let _ = mm.mprotect(cpu, base + first * PAGE, len * PAGE, RW);
            }
            13 => mm.validate(cpu).unwrap(),
            _ => {
                let pb = &sh.published;
                let epochs: Vec<u64> = pb.epoch.iter().map(|e| e.load(Acquire)).collect();
                let before: Vec<Vec<u64>> = pb
                    .private
                    .iter()
                    .map(|v| v.iter().map(|r| r.load(Acquire)).collect())
                    .collect();
                let child = mm.fork(cpu).unwrap();
                let after: Vec<u64> = pb.progress.iter().map(|r| r.load(Acquire)).collect();
                child.validate(cpu).unwrap();
                check_child(sh, &child, cpu, &before, &after, &epochs);
                child.validate(cpu).unwrap();
                child.exit(cpu);
                forks += 1;
            }
        }
        me.quiescent_state();
    }
    // Everyone does at least their minimum around us.
    let want = |k: usize| {
        if k < SIZE.faulters {
            SIZE.rounds
        } else {
            SIZE.recycler_ops
        }
    };
    let p = &sh.published.progress;
    while !sh.stop.load(Acquire) && (0..p.len()).any(|k| p[k].load(Relaxed) < want(k)) {
        me.quiescent_state();
        thread::yield_now();
    }
    assert!(forks > 0 || cfg!(miri), "the mutator never forked");
}

fn recycler(sh: &Shared<'_>, me: &mut RcuCpu<'_>) {
    let cpu = me.id();
    let mut rng = Rng::new(11);
    let other = &sh.other;
    let mut n = 0;
    while !sh.stop.load(Acquire) {
        sh.published.progress[SIZE.faulters].store(n, Relaxed);
        n += 1;
        let pages = 1 + rng.below(4);
        let a = other
            .mmap(cpu, 0, pages * PAGE, RW, PRIV - MapFlags::FIXED)
            .unwrap();
        other
            .copy_to_user(cpu, a + rng.below(pages) * PAGE, &n.to_le_bytes())
            .unwrap();
        other.munmap(cpu, a, pages * PAGE).unwrap();
        me.quiescent_state();
    }
}

fn stress(per_vma: bool) {
    let nf = SIZE.faulters;
    let ncpus = nf + 3;
    let frames = HostFrames::new(SIZE.memory, ncpus);
    let rcu = Rcu::new();
    let mmu = Mmu::new(ncpus);
    let baseline = frames.stats().free_pages;
    // SAFETY: destroyed below after an RCU barrier.
    let ctx = unsafe {
        MmContext::<SoftPte>::new(&frames, &rcu, &mmu, UserLayout::for_format::<SoftPte>())
    }
    .unwrap();
    // Without the `per-vma-lock` feature the switch stays off: both
    // variants run the mmap-lock fault path and are checked as such.
    let wanted = per_vma;
    let per_vma = ctx.set_per_vma_lock(wanted);
    assert_eq!(per_vma, wanted && cfg!(feature = "per-vma-lock"));
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    for i in 0..nf {
        map_regions(&mm, i, SIZE.pages);
    }
    let per_page = || {
        (0..SIZE.pages)
            .map(|_| AtomicU64::new(0))
            .collect::<Vec<_>>()
    };
    let other = AddressSpace::new(&ctx, 0).unwrap();
    let (mm, other) = {
        let sh = Shared {
            mmu: &mmu,
            mm,
            other,
            published: Published {
                private: (0..nf).map(|_| per_page()).collect(),
                shared: (0..nf).map(|_| per_page()).collect(),
                epoch: (0..nf).map(|_| AtomicU64::new(0)).collect(),
                progress: (0..=nf).map(|_| AtomicU64::new(0)).collect(),
            },
            stop: AtomicBool::new(false),
        };
        thread::scope(|s| {
            for i in 0..nf {
                let (sh, rcu) = (&sh, &rcu);
                s.spawn(move || {
                    let _stop = StopOnDrop(&sh.stop);
                    let mut me = rcu.register_cpu(1 + i).unwrap();
                    faulter(sh, i, &mut me);
                });
            }
            let (shr, rcur) = (&sh, &rcu);
            let m = s.spawn(move || {
                let _stop = StopOnDrop(&shr.stop);
                let mut me = rcur.register_cpu(nf + 1).unwrap();
                mutator(shr, &mut me);
            });
            s.spawn(move || {
                let _stop = StopOnDrop(&shr.stop);
                let mut me = rcur.register_cpu(nf + 2).unwrap();
                recycler(shr, &mut me);
            });
            let r = m.join();
            sh.stop.store(true, Release);
            if let Err(e) = r {
                std::panic::resume_unwind(e);
            }
        });
        (sh.mm, sh.other)
    };
    mm.validate(0).unwrap();
    other.validate(0).unwrap();

    // The counters. A fault ends either as a success under a VMA lock or
    // under the mmap lock.
    let total = ctx.fault_counts();
    let c0 = ctx.fault_counts_cpu(1);
    let faults = |c: &VmaLockCounts| c.success + c.mmap_locked;
    let all: u64 = (1..=nf).map(|c| faults(&ctx.fault_counts_cpu(c))).sum();
    assert!(all >= nf as u64 * SIZE.pages, "faulters faulted ({all})");
    if per_vma {
        // Faulter 0's VMAs are write-locked only by fork, its own remaps
        // and the anon_vma preparation of its first faults: nearly all of
        // its faults are handled under the VMA lock.
        assert!(
            c0.success * 10 >= faults(&c0) * 7,
            "per-VMA locks on, but faulter 0's faults mostly fell back: {c0:?}"
        );
    } else {
        assert_eq!(total.success, 0, "per-VMA locks off: {total:?}");
        assert_eq!(total.abort + total.miss + total.retry, 0, "{total:?}");
    }
    eprintln!(
        "aspace_stress (per-VMA locks {}): faulter 0 {c0:?}; all CPUs {total:?}; {} flushes",
        if per_vma { "on" } else { "off" },
        mmu.flushes.load(Relaxed)
    );

    mm.exit(0);
    other.exit(0);
    assert_eq!(ctx.mms_live(), 0);
    assert_eq!(ctx.vmas_live(), 0, "VMAs leaked");
    assert_eq!(ctx.anon_objects_live(), (0, 0, 0), "anon objects leaked");
    let vst = ctx.vma_cache_stats();
    assert!(vst.frees > 0 && vst.allocs == vst.frees);
    assert!(
        vst.rcu_calls <= vst.pages_created,
        "VMA frees issued RCU callbacks: {} for {} slab pages",
        vst.rcu_calls,
        vst.pages_created
    );
    let mut me = rcu.register_cpu(0).unwrap();
    ctx.shrink(0);
    me.barrier();
    ctx.destroy(&mut me);
    frames.drain_all();
    assert_eq!(frames.stats().free_pages, baseline, "frames leaked");
}

#[test]
fn aspace_stress_per_vma_locks() {
    stress(true);
}

#[test]
fn aspace_stress_mmap_lock_only() {
    stress(false);
}
