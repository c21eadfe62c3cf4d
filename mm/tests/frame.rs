//! Frame allocator: property tests against a model, and CPUs (threads)
//! allocating and freeing concurrently.

use std::collections::BTreeMap;

use mm::addr::{Frame, PhysAddr, PAGE_SIZE};
use mm::frame::{AllocError, FrameConfig, FrameStats, HostFrames, MAX_ORDER};
use proptest::prelude::*;

const P: u64 = PAGE_SIZE as u64;

#[derive(Debug, Clone)]
enum Op {
    Alloc { cpu: usize, order: u32 },
    Free { pick: usize, cpu: usize },
    Drain { cpu: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Mostly small orders, like the kernel's demand.
        6 => (0..2usize, prop_oneof![4 => Just(0u32), 2 => 1..4u32, 1 => 4..=MAX_ORDER])
            .prop_map(|(cpu, order)| Op::Alloc { cpu, order }),
        5 => (any::<usize>(), 0..2usize).prop_map(|(pick, cpu)| Op::Free { pick, cpu }),
        1 => (0..2usize).prop_map(|cpu| Op::Drain { cpu }),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The model: live blocks by head pfn. Checks every allocation against it.
struct Model {
    live: BTreeMap<u64, u32>,
}

impl Model {
    fn insert(&mut self, f: Frame, order: u32) {
        let (start, len) = (f.pfn(), 1u64 << order);
        assert_eq!(start % len, 0, "{f:?} not aligned to order {order}");
        if let Some((&s, &o)) = self.live.range(..=start).next_back() {
            assert!(s + (1 << o) <= start, "{f:?} overlaps live block at {s:#x}");
        }
        if let Some((&s, _)) = self.live.range(start..).next() {
            assert!(
                start + len <= s,
                "{f:?} (order {order}) overlaps live block at {s:#x}"
            );
        }
        self.live.insert(start, order);
    }

    fn pages(&self) -> u64 {
        self.live.values().map(|&o| 1u64 << o).sum()
    }
}

fn check_accounting(st: &FrameStats, model: &Model) {
    assert_eq!(st.allocated_pages, model.pages());
    assert_eq!(st.free_pages, st.buddy_free_pages + st.pcp_pages);
    assert_eq!(
        st.buddy_free_pages,
        (0..=MAX_ORDER as usize)
            .map(|k| st.free_blocks[k] << k)
            .sum()
    );
    assert_eq!(st.managed_pages, st.free_pages + st.allocated_pages);
}

fn run(hf: &HostFrames, ops: &[Op]) {
    let base = hf.stats();
    let mut model = Model {
        live: BTreeMap::new(),
    };
    for op in ops {
        match *op {
            Op::Alloc { cpu, order } => match hf.alloc(cpu, order) {
                Ok(f) => {
                    assert!(hf.manages(f));
                    // Stamp the block so that aliasing shows up on free.
                    let p = hf.frame_ptr(f).unwrap();
                    // SAFETY: the block is ours.
                    unsafe { p.as_ptr().cast::<u64>().write(f.pfn()) };
                    model.insert(f, order);
                }
                Err(AllocError::OutOfMemory { order: o }) => {
                    assert_eq!(o, order);
                    // Really no block of that order anywhere: everything
                    // cached was drained, and no free list can serve it.
                    let st = hf.stats();
                    assert_eq!(st.pcp_pages, 0);
                    assert!(st.free_blocks[order as usize..].iter().all(|&n| n == 0));
                }
                Err(e) => panic!("unexpected {e:?}"),
            },
            Op::Free { pick, cpu } => {
                if model.live.is_empty() {
                    continue;
                }
                let (&pfn, &order) = model.live.iter().nth(pick % model.live.len()).unwrap();
                model.live.remove(&pfn);
                let f = Frame::from_pfn(pfn);
                let p = hf.frame_ptr(f).unwrap();
                // SAFETY: the block is ours until the free below.
                let stamp = unsafe { p.as_ptr().cast::<u64>().read() };
                assert_eq!(stamp, pfn, "block aliased");
                // SAFETY: allocated, not yet freed, unused from here.
                unsafe { hf.free(cpu, f, order) };
            }
            Op::Drain { cpu } => hf.drain_cpu(cpu),
        }
        check_accounting(&hf.stats(), &model);
    }
    for (&pfn, &order) in &model.live {
        // SAFETY: every remaining block is ours.
        unsafe { hf.free(0, Frame::from_pfn(pfn), order) };
    }
    hf.drain_all();
    // Everything merged back: the free lists are exactly the initial ones.
    assert_eq!(hf.stats(), base);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_alloc_free_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        let mem = if cfg!(miri) { 64 << 10 } else { 8 << 20 };
        let hf = HostFrames::with_config(mem, &[], FrameConfig { nr_cpus: 2, pcp_batch: 4, pcp_high: 12 });
        run(&hf, &ops);
    }

    #[test]
    fn random_alloc_free_with_holes_and_no_cpu_caches(
        ops in prop::collection::vec(op(), 1..200),
        cut in 1u64..40,
    ) {
        // Two usable ranges with a hole of `cut` frames and unaligned ends.
        let usable = [(P / 2, 40 * P + 7), ((40 + cut) * P, 200 * P)];
        let hf = HostFrames::with_config(256 * PAGE_SIZE, &usable, FrameConfig { nr_cpus: 2, pcp_batch: 0, pcp_high: 0 });
        let base = Frame::containing(PhysAddr::new(hf.memory().phys_range().0));
        for rel in [0, 40, 40 + cut - 1, 200, 255] {
            prop_assert!(!hf.manages(base.add(rel)));
        }
        run(&hf, &ops);
    }
}

/// Two CPUs allocate and free (and free each other's frames) at once;
/// nothing is handed out twice and the accounting is exact at the end.
#[test]
fn concurrent_cpus_keep_exact_accounting() {
    let hf = HostFrames::with_config(
        if cfg!(miri) { 128 << 10 } else { 8 << 20 },
        &[],
        FrameConfig {
            nr_cpus: 2,
            pcp_batch: 8,
            pcp_high: 32,
        },
    );
    let base = hf.stats();
    let rounds = if cfg!(miri) { 40 } else { 20_000 };
    let (tx0, rx1) = std::sync::mpsc::channel::<(Frame, u32)>();
    let (tx1, rx0) = std::sync::mpsc::channel::<(Frame, u32)>();
    std::thread::scope(|s| {
        for (cpu, tx, rx) in [(0usize, tx0, rx0), (1, tx1, rx1)] {
            let hf = &hf;
            s.spawn(move || {
                let mut mine: Vec<(Frame, u32)> = vec![];
                for i in 0..rounds {
                    let order = if i % 7 == 0 { (i % 3) as u32 } else { 0 };
                    if let Ok(f) = hf.alloc(cpu, order) {
                        let p = hf.frame_ptr(f).unwrap();
                        // SAFETY: the block is ours.
                        unsafe { p.as_ptr().cast::<u64>().write(f.pfn() | (cpu as u64) << 60) };
                        mine.push((f, order));
                    }
                    if i % 3 == 0 {
                        if let Some(x) = mine.pop() {
                            // Hand it to the other CPU to free.
                            let _ = tx.send(x);
                        }
                    }
                    while let Ok((f, o)) = rx.try_recv() {
                        mine.push((f, o));
                    }
                    if mine.len() > 16 {
                        let (f, o) = mine.remove(0);
                        let p = hf.frame_ptr(f).unwrap();
                        // SAFETY: the block is ours (we allocated it or received it); nobody else wrote it.
                        let v = unsafe { p.as_ptr().cast::<u64>().read() };
                        assert_eq!(v & !(3 << 60), f.pfn(), "block handed out twice");
                        // SAFETY: as above; freed once.
                        unsafe { hf.free(cpu, f, o) };
                    }
                }
                drop(tx);
                // Drain what the other CPU sends until it hangs up.
                for x in rx {
                    mine.push(x);
                }
                for (f, o) in mine {
                    // SAFETY: ours, freed once.
                    unsafe { hf.free(cpu, f, o) };
                }
            });
        }
    });
    hf.drain_all();
    assert_eq!(hf.stats(), base);
}
