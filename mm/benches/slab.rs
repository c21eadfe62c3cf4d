//! Slab alloc+free pair vs. the host's global allocator (`Box<T>`) for a
//! 200-byte object, on one CPU and on two CPUs at once.
//!
//! `cargo bench -p mm --bench slab -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mm::frame::HostFrames;
use mm::slab::{Ctor, Slab, SlabConfig, SlabObject};

/// 8 bytes of stable part (a reference count) + 192 bytes of payload.
struct Obj200;
impl SlabObject for Obj200 {
    type Stable = AtomicU64;
    type Payload = [u64; 24];
    fn construct(_: &Ctor<'_>) -> AtomicU64 {
        AtomicU64::new(0)
    }
}

/// The same 200 bytes as one plain struct, for `Box`.
#[allow(dead_code)]
struct Boxed200 {
    refcnt: AtomicU64,
    payload: [u64; 24],
}

const _: () = assert!(core::mem::size_of::<Boxed200>() == 200);

/// Runs `pair` `iters` times on each of `threads` threads started together;
/// returns the slowest thread's time, so the figure is per-thread latency of
/// one pair while the other thread does the same.
fn on_threads(threads: usize, iters: u64, pair: impl Fn(usize) + Sync) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|cpu| {
                let (start, pair) = (&start, &pair);
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        pair(cpu);
                    }
                    t.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn bench(c: &mut Criterion) {
    let frames = HostFrames::new(64 << 20, 2);
    let slab = Slab::<Obj200>::new(&frames, SlabConfig::new("bench200")).unwrap();
    assert_eq!(slab.stats().slot_size, 200);

    let mut g = c.benchmark_group("alloc+free 200 B");
    g.bench_function("slab, 1 thread", |b| {
        b.iter(|| {
            let o = slab.alloc(0, black_box([7u64; 24])).unwrap();
            black_box(o.payload());
            slab.free(0, o);
        })
    });
    g.bench_function("Box, 1 thread", |b| {
        b.iter(|| {
            let o = Box::new(Boxed200 {
                refcnt: AtomicU64::new(0),
                payload: black_box([7u64; 24]),
            });
            black_box(&o.payload);
            drop(o);
        })
    });
    g.bench_function("slab, 2 threads", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, |cpu| {
                let o = slab.alloc(cpu, black_box([7u64; 24])).unwrap();
                black_box(o.payload());
                slab.free(cpu, o);
            })
        })
    });
    g.bench_function("Box, 2 threads", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, |_| {
                let o = Box::new(Boxed200 {
                    refcnt: AtomicU64::new(0),
                    payload: black_box([7u64; 24]),
                });
                black_box(&o.payload);
                drop(o);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
