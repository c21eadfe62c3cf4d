//! Page-fault and mmap benchmarks on the host (software page table).
//!
//! `cargo bench -p mm --bench fault` (or `cargo xtask bench`).
//!
//! 1. `fault_scaling` (custom measurement, printed): write-fault throughput
//!    of 1 and 2 faulting threads, each faulting fresh pages of its own
//!    VMA, without and with a third thread looping mmap/munmap of
//!    unrelated regions of the same address space, with per-VMA locks on
//!    and off (the runtime switch). Reported: faults/s per case, the
//!    with-writer / no-writer ratio per configuration (target for per-VMA
//!    locks: >= 90 %), and per-VMA / mmap-lock with the writer running.
//!    The four cases of one thread count are measured interleaved, phase
//!    by phase, so that drift of the (shared) machine hits them alike.
//! 2. `mmap_munmap` (criterion): one anonymous mmap + munmap pair, in an
//!    empty address space and in one with 1000 other VMAs; and the pair
//!    with one page faulted in between.
//! 3. `vma_rcu_callbacks` (printed): RCU callbacks the VMA cache issued per
//!    VMA freed over many mmap/munmap pairs (target: zero; the type-safe
//!    cache defers only whole slab pages).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mm::aspace::{Access, AddressSpace, MapFlags, MmContext, UserLayout, PROT_READ, PROT_WRITE};
use mm::frame::HostFrames;
use mm::pgtable::{RecordingFlush, SoftPte};
use mm::rcu::Rcu;

const PAGE: u64 = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PRIV: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const FIXED: MapFlags = PRIV.union(MapFlags::FIXED);

/// Faulter `i`'s VMA; the writer's regions are far from all of them.
const FAULT_BASE: u64 = 0x1000_0000;
const FAULT_STRIDE: u64 = 0x1000_0000;
const WRITER_BASE: u64 = 0x7000_0000;
/// Pages each faulter faults per measured phase.
const PHASE_PAGES: u64 = 8192;
const PHASES: usize = 12;

/// A flush that records nothing (the host has no TLB; `RecordingFlush`
/// would grow without bound).
struct NoFlush;

impl mm::pgtable::TlbFlush for NoFlush {
    fn flush_range(&self, _: mm::vma::lock::MmId, _: mm::pgtable::FlushRange) {}
    fn flush_all(&self, _: mm::vma::lock::MmId) {}
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Case {
    per_vma: bool,
    writer: bool,
}

const CASES: [Case; 4] = [
    Case {
        per_vma: true,
        writer: false,
    },
    Case {
        per_vma: true,
        writer: true,
    },
    Case {
        per_vma: false,
        writer: false,
    },
    Case {
        per_vma: false,
        writer: true,
    },
];

/// What one case measured.
#[derive(Clone, Copy, Default)]
struct Outcome {
    /// Faults per second of the faulting threads, summed.
    rate: f64,
    /// The faulting threads' faults handled under a VMA lock.
    vma_locked: u64,
    /// All their faults (under a VMA lock or the mmap lock).
    faults: u64,
}

/// Each case of [`CASES`] with `faulters` threads, measured interleaved.
fn measure(faulters: usize) -> [Outcome; 4] {
    let ncpu = faulters + 2;
    let frames = HostFrames::new(faulters * PHASE_PAGES as usize * 4096 + (96 << 20), ncpu);
    let rcu = Rcu::new();
    let flush = NoFlush;
    let layout = UserLayout::for_format::<SoftPte>();
    // SAFETY: destroyed at the end after an RCU barrier.
    let ctx = unsafe { MmContext::<SoftPte>::new(&frames, &rcu, &flush, layout) }.unwrap();
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    let start = Barrier::new(faulters + 2);
    let done = Barrier::new(faulters + 2);
    let case = AtomicUsize::new(0);
    let running = AtomicUsize::new(0);
    let writer_on = AtomicBool::new(false);
    let quit = AtomicBool::new(false);
    // Nanoseconds spent faulting, per case and faulter.
    let nanos: Vec<AtomicU64> = (0..4 * faulters).map(|_| AtomicU64::new(0)).collect();
    let writer_pairs = AtomicU64::new(0);
    let writer_stalls = AtomicU64::new(0);
    // (VMA-locked, all) faults of the faulting CPUs, per case.
    let mut counted = [(0u64, 0u64); 4];
    let faulter_counts = || {
        (1..=faulters).fold((0, 0), |(v, a), cpu| {
            let c = ctx.fault_counts_cpu(cpu);
            (v + c.success, a + c.success + c.mmap_locked)
        })
    };
    std::thread::scope(|s| {
        for i in 0..faulters {
            let (mm, start, done, quit, nanos, rcu, case, running, writer_on) = (
                &mm, &start, &done, &quit, &nanos, &rcu, &case, &running, &writer_on,
            );
            s.spawn(move || {
                let cpu = 1 + i;
                let mut me = rcu.register_cpu(cpu).unwrap();
                let base = FAULT_BASE + i as u64 * FAULT_STRIDE;
                loop {
                    me.enter_idle();
                    start.wait();
                    me.exit_idle();
                    if quit.load(Acquire) {
                        break;
                    }
                    let ci = case.load(Relaxed);
                    let t = Instant::now();
                    for p in 0..PHASE_PAGES {
                        mm.handle_fault(cpu, base + p * PAGE, Access::Write)
                            .unwrap();
                        // The return to user mode after the fault: a
                        // quiescent state in Samara's kernel.
                        me.quiescent_state();
                    }
                    let e = t.elapsed().as_nanos() as u64;
                    nanos[ci * faulters + i].fetch_add(e, Relaxed);
                    // The last faulter through stops the writer.
                    if running.fetch_sub(1, AcqRel) == 1 {
                        writer_on.store(false, Release);
                    }
                    // Idle while blocked: the writer may be waiting for a
                    // grace period (its callback-flood guard).
                    me.enter_idle();
                    done.wait();
                    me.exit_idle();
                }
            });
        }
        {
            let (mm, start, done, quit, writer_on, writer_pairs, writer_stalls, rcu) = (
                &mm,
                &start,
                &done,
                &quit,
                &writer_on,
                &writer_pairs,
                &writer_stalls,
                &rcu,
            );
            s.spawn(move || {
                let cpu = faulters + 1;
                let mut me = rcu.register_cpu(cpu).unwrap();
                let mut k = 0u64;
                let mut stalls = 0u64;
                loop {
                    me.enter_idle();
                    start.wait();
                    me.exit_idle();
                    if quit.load(Acquire) {
                        break;
                    }
                    while writer_on.load(Acquire) {
                        let at = WRITER_BASE + (k % 64) * 4 * PAGE;
                        let a = mm.mmap(cpu, at, 2 * PAGE, RW, PRIV).unwrap();
                        mm.munmap(cpu, a, 2 * PAGE).unwrap();
                        k += 1;
                        if k.is_multiple_of(16) {
                            me.quiescent_state();
                            // Callback-flood guard: when a faulter spins
                            // long for the mmap lock it reports no
                            // quiescent state, while every pair here
                            // retires maple nodes through RCU. Wait for a
                            // grace period rather than run out of memory
                            // (outside the mmap lock, so the faulters get
                            // it meanwhile).
                            if rcu.pending_callbacks(cpu) > 20_000 {
                                me.synchronize();
                                stalls += 1;
                            }
                        }
                    }
                    me.enter_idle();
                    done.wait();
                    me.exit_idle();
                }
                writer_pairs.store(k, Relaxed);
                writer_stalls.store(stalls, Relaxed);
            });
        }
        // The coordinator (CPU 0, not registered with RCU: it holds no
        // read section) maps the faulters' regions, starts a phase, and
        // unmaps them afterwards; cases are interleaved phase by phase.
        for _ in 0..PHASES {
            for (ci, c) in CASES.iter().enumerate() {
                ctx.set_per_vma_lock(c.per_vma);
                for i in 0..faulters {
                    let base = FAULT_BASE + i as u64 * FAULT_STRIDE;
                    mm.mmap(0, base, PHASE_PAGES * PAGE, RW, FIXED).unwrap();
                }
                case.store(ci, Relaxed);
                running.store(faulters, Relaxed);
                writer_on.store(c.writer, Release);
                let before = faulter_counts();
                start.wait();
                done.wait();
                let after = faulter_counts();
                counted[ci].0 += after.0 - before.0;
                counted[ci].1 += after.1 - before.1;
                for i in 0..faulters {
                    let base = FAULT_BASE + i as u64 * FAULT_STRIDE;
                    mm.munmap(0, base, PHASE_PAGES * PAGE).unwrap();
                }
            }
        }
        quit.store(true, Release);
        start.wait();
    });
    assert!(writer_pairs.load(Relaxed) > 0, "the writer never ran");
    if writer_stalls.load(Relaxed) > 0 {
        println!(
            "  (the writer waited {} times for a grace period: RCU callback backlog)",
            writer_stalls.load(Relaxed)
        );
    }
    let mut out = [Outcome::default(); 4];
    for (ci, o) in out.iter_mut().enumerate() {
        for i in 0..faulters {
            let ns = nanos[ci * faulters + i].load(Relaxed) as f64;
            o.rate += (PHASE_PAGES as usize * PHASES) as f64 / (ns / 1e9);
        }
        (o.vma_locked, o.faults) = counted[ci];
    }
    mm.exit(0);
    let mut me = rcu.register_cpu(0).unwrap();
    ctx.shrink(0);
    me.barrier();
    ctx.destroy(&mut me);
    out
}

fn fault_scaling(_: &mut Criterion) {
    println!();
    println!(
        "fault_scaling: write faults on fresh pages of each thread's own VMA, {} pages x {} \
         phases per case",
        PHASE_PAGES, PHASES
    );
    for faulters in [1usize, 2] {
        let r = measure(faulters);
        let [pv, pv_w, ml, ml_w] = r.map(|o| o.rate);
        let share = |o: Outcome| 100.0 * o.vma_locked as f64 / o.faults.max(1) as f64;
        println!(
            "  {faulters} faulting thread(s): per-VMA locks: {:.2} M faults/s alone, {:.2} M with \
             the mmap/munmap thread ({:.1} %)",
            pv / 1e6,
            pv_w / 1e6,
            100.0 * pv_w / pv
        );
        println!(
            "  {faulters} faulting thread(s): mmap lock only: {:.2} M faults/s alone, {:.2} M with \
             the mmap/munmap thread ({:.1} %)",
            ml / 1e6,
            ml_w / 1e6,
            100.0 * ml_w / ml
        );
        println!(
            "  {faulters} faulting thread(s): with the writer, per-VMA / mmap-lock = {:.2}x",
            pv_w / ml_w
        );
        println!(
            "  {faulters} faulting thread(s): faults under a VMA lock: {:.1} % alone, {:.1} % \
             with the mmap/munmap thread ({} faults)",
            share(r[0]),
            share(r[1]),
            r[1].faults
        );
    }
}

fn mmap_munmap(c: &mut Criterion) {
    let frames = HostFrames::new(64 << 20, 1);
    let rcu = Rcu::new();
    let flush = RecordingFlush::new();
    // SAFETY: destroyed at the end after an RCU barrier.
    let ctx = unsafe {
        MmContext::<SoftPte>::new(&frames, &rcu, &flush, UserLayout::for_format::<SoftPte>())
    }
    .unwrap();
    let mut me = rcu.register_cpu(0).unwrap();
    let mut g = c.benchmark_group("mmap_munmap");
    for others in [0u64, 1000] {
        let mm = AddressSpace::new(&ctx, 0).unwrap();
        // Other VMAs (alternating protections, so they stay apart).
        for i in 0..others {
            let prot = if i % 2 == 0 { RW } else { PROT_READ };
            mm.mmap(0, 0x1000_0000 + i * 2 * PAGE, PAGE, prot, FIXED)
                .unwrap();
        }
        let mut n = 0u64;
        g.bench_function(format!("pair_{others}_other_vmas"), |b| {
            b.iter(|| {
                let a = mm.mmap(0, 0, 4 * PAGE, RW, PRIV).unwrap();
                mm.munmap(0, black_box(a), 4 * PAGE).unwrap();
                n += 1;
                if n.is_multiple_of(64) {
                    me.quiescent_state();
                }
            })
        });
        g.bench_function(format!("pair_with_fault_{others}_other_vmas"), |b| {
            b.iter(|| {
                let a = mm.mmap(0, 0, 4 * PAGE, RW, PRIV).unwrap();
                mm.handle_fault(0, a, Access::Write).unwrap();
                mm.munmap(0, black_box(a), 4 * PAGE).unwrap();
                n += 1;
                if n.is_multiple_of(64) {
                    me.quiescent_state();
                }
                flush.take();
            })
        });
        mm.exit(0);
    }
    g.finish();

    // RCU callbacks per freed VMA over many pairs.
    let mm = AddressSpace::new(&ctx, 0).unwrap();
    let before = ctx.vma_cache_stats();
    let pairs = 100_000u64;
    for n in 0..pairs {
        let a = mm.mmap(0, 0, 4 * PAGE, RW, PRIV).unwrap();
        mm.handle_fault(0, a, Access::Write).unwrap();
        mm.munmap(0, a, 4 * PAGE).unwrap();
        if n.is_multiple_of(64) {
            me.quiescent_state();
            flush.take();
        }
    }
    let after = ctx.vma_cache_stats();
    let freed = after.frees - before.frees;
    let calls = after.rcu_calls - before.rcu_calls;
    println!(
        "vma_rcu_callbacks: {freed} VMAs freed, {calls} RCU callbacks from the VMA cache ({:.6} \
         per freed VMA; {} slab pages created in all)",
        calls as f64 / freed as f64,
        after.pages_created
    );
    mm.exit(0);
    ctx.shrink(0);
    me.barrier();
    ctx.destroy(&mut me);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = fault_scaling, mmap_munmap
}
criterion_main!(benches);
