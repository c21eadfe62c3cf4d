//! Frame alloc+free pair: per-CPU cache hit vs. the global (zone-locked)
//! buddy path.
//!
//! `cargo bench -p mm --bench frame -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mm::frame::{FrameAllocator, FrameConfig, HostFrames};

/// `iters` alloc+free pairs on each of two CPUs (threads) at once; the
/// slowest thread's time.
fn two_cpus(fa: &FrameAllocator, iters: u64) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|cpu| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        let f = fa.alloc(cpu, 0).unwrap();
                        black_box(f);
                        // SAFETY: just allocated, unused.
                        unsafe { fa.free(cpu, f, 0) };
                    }
                    t.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn bench(c: &mut Criterion) {
    let cached = HostFrames::with_config(64 << 20, &[], FrameConfig::new(2));
    let global = HostFrames::with_config(
        64 << 20,
        &[],
        FrameConfig {
            nr_cpus: 2,
            pcp_batch: 0,
            pcp_high: 0,
        },
    );

    let mut g = c.benchmark_group("frame alloc+free, order 0");
    g.bench_function("per-CPU cache hit", |b| {
        b.iter(|| {
            let f = cached.alloc(0, 0).unwrap();
            black_box(f);
            // SAFETY: just allocated, unused.
            unsafe { cached.free(0, f, 0) };
        })
    });
    g.bench_function("global buddy path", |b| {
        b.iter(|| {
            let f = global.alloc(0, 0).unwrap();
            black_box(f);
            // SAFETY: just allocated, unused.
            unsafe { global.free(0, f, 0) };
        })
    });
    g.bench_function("per-CPU cache hit, 2 CPUs", |b| {
        b.iter_custom(|n| two_cpus(&cached, n))
    });
    g.bench_function("global buddy path, 2 CPUs", |b| {
        b.iter_custom(|n| two_cpus(&global, n))
    });
    g.bench_function("per-CPU cache hit, zeroed", |b| {
        b.iter(|| {
            let f = cached.alloc_zeroed(0, 0).unwrap();
            black_box(f);
            // SAFETY: just allocated, unused.
            unsafe { cached.free(0, f, 0) };
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
