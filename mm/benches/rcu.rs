//! RCU benchmarks: read-side cost against crossbeam-epoch's `pin()`, and
//! grace-period latency while other CPUs are busy in read sections.
//!
//! `cargo bench -p mm --bench rcu` (or `cargo xtask bench`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mm::rcu::Rcu;

fn read_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("rcu_read_side");
    let value = Box::into_raw(Box::new(42u64));
    let slot = AtomicPtr::new(value);

    // The floor both read sections sit on: the protected load alone. The
    // read-side cost of each scheme is its time minus this one.
    g.bench_function("bare_load", |b| {
        // SAFETY: `value` is never freed during the benchmark.
        b.iter(|| black_box(unsafe { *slot.load(Ordering::Acquire) }))
    });
    let rcu = Rcu::new();
    let cpu = rcu.register_cpu(0).unwrap();
    g.bench_function("samara_qsbr_read_lock", |b| {
        b.iter(|| {
            let _g = cpu.read_lock();
            // SAFETY: `value` is never freed during the benchmark.
            black_box(unsafe { *slot.load(Ordering::Acquire) })
        })
    });
    g.bench_function("crossbeam_epoch_pin", |b| {
        b.iter(|| {
            let _g = crossbeam_epoch::pin();
            // SAFETY: as above.
            black_box(unsafe { *slot.load(Ordering::Acquire) })
        })
    });
    g.finish();
    drop(cpu);
    // SAFETY: allocated above, no reader left.
    drop(unsafe { Box::from_raw(value) });
}

/// `synchronize()` on CPU 0 while CPUs 1 and 2 loop in read sections and
/// report a quiescent state after each one, as a kernel's tick would.
fn grace_period(c: &mut Criterion) {
    let rcu = Arc::new(Rcu::new());
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (1..=2)
        .map(|cpu| {
            let (rcu, stop) = (rcu.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut me = rcu.register_cpu(cpu).unwrap();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    {
                        let _g = me.read_lock();
                        for i in 0..64 {
                            x = black_box(x.wrapping_add(i));
                        }
                    }
                    me.quiescent_state();
                }
            })
        })
        .collect();
    let mut me = rcu.register_cpu(0).unwrap();
    c.bench_function("rcu_synchronize_2_busy_cpus", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                me.synchronize();
            }
            t.elapsed()
        })
    });
    drop(me);
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        t.join().unwrap();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = read_side, grace_period
}
criterion_main!(benches);
