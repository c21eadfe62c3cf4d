//! Slab: property tests against a model, and a multi-CPU stress test of
//! the type-safe-by-RCU policy with lockless readers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use mm::frame::HostFrames;
use mm::rcu::Rcu;
use mm::slab::{Ctor, Owned, Slab, SlabConfig, SlabObject, SlabPtr};
use proptest::prelude::*;

static SERIAL: AtomicU64 = AtomicU64::new(1);
const LIVE: u64 = 0x0b1e_c7ed;
const DEAD: u64 = 0xdead_beef;

/// A VMA-like object: the stable part carries the pinning protocol
/// (refcnt: 0 free/detached, 1 attached, +1 per reader), an identity key
/// readers check after pinning, and a liveness magic its drop (page
/// release) overwrites.
struct Obj;
struct ObjStable {
    serial: u64,
    magic: AtomicU64,
    refcnt: AtomicU32,
    key: AtomicU64,
}
impl Drop for ObjStable {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Relaxed);
    }
}
#[derive(Clone, Debug, PartialEq)]
struct Payload {
    id: u64,
    fill: [u64; 6],
}
fn payload(id: u64) -> Payload {
    Payload { id, fill: [id; 6] }
}

impl SlabObject for Obj {
    type Stable = ObjStable;
    type Payload = Payload;
    fn construct(_: &Ctor<'_>) -> ObjStable {
        ObjStable {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            magic: AtomicU64::new(LIVE),
            refcnt: AtomicU32::new(0),
            key: AtomicU64::new(0),
        }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 3 } else { cases },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { cpu: usize },
    Free { pick: usize, cpu: usize },
    Dup { pick: usize },
    Drain { cpu: usize },
    Shrink,
    Quiesce,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize).prop_map(|cpu| Op::Alloc { cpu }),
        5 => (any::<usize>(), 0..2usize).prop_map(|(pick, cpu)| Op::Free { pick, cpu }),
        1 => any::<usize>().prop_map(|pick| Op::Dup { pick }),
        1 => (0..2usize).prop_map(|cpu| Op::Drain { cpu }),
        1 => Just(Op::Shrink),
        1 => Just(Op::Quiesce),
    ]
}

/// Runs `ops` against the model. With `keep_pages`, no page is ever freed
/// (huge reserve, no shrink), so each slot's constructor serial must never
/// change. Returns the number of objects freed.
fn run<'s>(
    slab: &'s Slab<'s, Obj>,
    ops: &[Op],
    keep_pages: bool,
    mut quiesce: impl FnMut(),
) -> u64 {
    let mut live: BTreeMap<usize, Owned<'s, Obj>> = BTreeMap::new();
    let mut serial_of: BTreeMap<usize, u64> = BTreeMap::new();
    let mut next_id = 0;
    let mut freed = 0;
    for op in ops {
        let new = match *op {
            Op::Alloc { cpu } => {
                next_id += 1;
                Some(slab.alloc(cpu, payload(next_id)).expect("memory suffices"))
            }
            Op::Dup { pick } if !live.is_empty() => {
                let src = live.values().nth(pick % live.len()).unwrap();
                let o = slab.dup(0, src.payload()).unwrap();
                assert_eq!(o.payload(), src.payload());
                assert_ne!(
                    o.stable().serial,
                    src.stable().serial,
                    "dup copied a stable part"
                );
                Some(o)
            }
            Op::Free { pick, cpu } if !live.is_empty() => {
                let k = *live.keys().nth(pick % live.len()).unwrap();
                let o = live.remove(&k).unwrap();
                assert_eq!(o.payload().fill, [o.payload().id; 6], "payload corrupted");
                slab.free(cpu, o);
                freed += 1;
                None
            }
            Op::Drain { cpu } => {
                slab.drain_cpu(cpu);
                None
            }
            Op::Shrink if !keep_pages => {
                slab.shrink(0);
                None
            }
            Op::Quiesce => {
                quiesce();
                None
            }
            _ => None,
        };
        if let Some(o) = new {
            let addr = o.stable() as *const ObjStable as usize;
            assert!(
                !live.contains_key(&addr),
                "object {addr:#x} handed out twice"
            );
            assert_eq!(o.stable().magic.load(Ordering::Relaxed), LIVE);
            let s = o.stable().serial;
            if keep_pages {
                if let Some(&old) = serial_of.get(&addr) {
                    assert_eq!(old, s, "constructor ran again on a reused slot");
                }
            }
            serial_of.insert(addr, s);
            live.insert(addr, o);
        }
        let st = slab.stats();
        assert_eq!(st.objects_in_use, live.len() as u64);
        assert_eq!(
            st.constructor_calls,
            st.pages_created * u64::from(st.objects_per_page)
        );
        // Every slot ever seen got its own constructor run.
        assert!(serial_of.len() as u64 <= st.constructor_calls);
        assert_eq!(
            serial_of.values().collect::<BTreeSet<_>>().len(),
            serial_of.len(),
            "two slots share one constructor run"
        );
    }
    freed += live.len() as u64;
    drop(live);
    freed
}

fn mem() -> usize {
    if cfg!(miri) {
        256 << 10
    } else {
        4 << 20
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn slab_random_ops_match_the_model(ops in prop::collection::vec(op(), 1..300), per_page in 1u32..12) {
        let hf = HostFrames::new(mem(), 2);
        let base = hf.stats();
        {
            let cfg = SlabConfig { name: "prop", max_objects_per_page: per_page, reserve_empty_pages: 1 };
            let slab = Slab::<Obj>::new(&hf, cfg).unwrap();
            run(&slab, &ops, false, || {});
            slab.shrink(0);
            let st = slab.stats();
            prop_assert_eq!((st.pages, st.objects_in_use, st.objects_cached), (0, 0, 0));
            prop_assert_eq!(st.pages_created, st.pages_freed);
            prop_assert_eq!(st.rcu_calls, 0);
        }
        hf.drain_all();
        prop_assert_eq!(hf.stats(), base);
    }

    #[test]
    fn slab_reuse_never_reruns_the_constructor(ops in prop::collection::vec(op(), 1..300)) {
        let hf = HostFrames::new(mem(), 2);
        let cfg = SlabConfig { name: "keep", max_objects_per_page: 5, reserve_empty_pages: u32::MAX };
        let slab = Slab::<Obj>::new(&hf, cfg).unwrap();
        run(&slab, &ops, true, || {});
        prop_assert_eq!(slab.stats().pages_freed, 0);
    }

    #[test]
    fn slab_typesafe_by_rcu_queues_one_callback_per_page_never_per_object(
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let hf = HostFrames::new(mem(), 2);
        let base = hf.stats();
        let rcu = Rcu::new();
        let mut h = rcu.register_cpu(0).unwrap();
        let cfg = SlabConfig { name: "rcu", max_objects_per_page: 4, reserve_empty_pages: 0 };
        // SAFETY: destroyed with `destroy`, which waits for the callbacks.
        let slab = unsafe { Slab::<Obj>::new_typesafe_by_rcu(&hf, &rcu, cfg) }.unwrap();
        let h_cell = std::cell::RefCell::new(&mut h);
        let freed = run(&slab, &ops, false, || h_cell.borrow_mut().quiescent_state());
        let st = slab.stats();
        let rs = rcu.stats();
        prop_assert_eq!(rs.callbacks_queued, st.rcu_calls);
        prop_assert!(st.rcu_calls <= st.pages_created);
        prop_assert_eq!(st.pages_freed + st.pages_pending_rcu, st.rcu_calls);
        let _ = freed;
        slab.destroy(&mut h);
        hf.drain_all();
        prop_assert_eq!(hf.stats(), base);
    }
}

/// Freeing many objects queues no RCU callback: only whole pages do.
#[test]
fn slab_zero_rcu_callbacks_per_freed_object() {
    let hf = HostFrames::new(mem(), 2);
    let rcu = Rcu::new();
    let mut h = rcu.register_cpu(0).unwrap();
    let cfg = SlabConfig {
        name: "vma",
        max_objects_per_page: 0,
        reserve_empty_pages: 1,
    };
    // SAFETY: destroyed with `destroy`.
    let slab = unsafe { Slab::<Obj>::new_typesafe_by_rcu(&hf, &rcu, cfg) }.unwrap();
    let n = if cfg!(miri) { 200 } else { 100_000 };
    for i in 0..n {
        // Alloc/free churn as on an mmap/munmap loop.
        let a = slab.alloc(0, payload(i)).unwrap();
        let b = slab.alloc(0, payload(i + 1)).unwrap();
        drop(a);
        drop(b);
        if i % 64 == 0 {
            h.quiescent_state();
        }
    }
    let st = slab.stats();
    assert_eq!(st.frees, 2 * n);
    assert_eq!(st.rcu_calls, 0);
    assert_eq!(
        rcu.stats().callbacks_queued,
        0,
        "0 RCU callbacks per freed object"
    );
    slab.destroy(&mut h);
}

/// Lockless readers on two CPUs look objects up in a table under RCU while
/// the same CPUs replace, free and reuse them and shrink the cache. A
/// reader must always find a live object of the right type (never a freed
/// page: `magic` is overwritten when a page's stable parts are dropped),
/// and after pinning it, a payload that matches its key.
#[test]
fn slab_stale_readers_never_see_a_freed_page() {
    const SLOTS: usize = 6;
    let hf = HostFrames::new(mem(), 2);
    let base = hf.stats();
    let rcu = Rcu::new();
    let cfg = SlabConfig {
        name: "stress",
        max_objects_per_page: 2,
        reserve_empty_pages: 0,
    };
    // SAFETY: torn down with `destroy` after both CPUs finished.
    let slab = unsafe { Slab::<Obj>::new_typesafe_by_rcu(&hf, &rcu, cfg) }.unwrap();
    let table: Vec<AtomicPtr<u8>> = (0..SLOTS)
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    let rounds = if cfg!(miri) { 60 } else { 30_000 };
    let shrink_every = if cfg!(miri) { 4 } else { 16 };
    let next_id = AtomicU64::new(1);
    let pinned_reads = AtomicU64::new(0);

    std::thread::scope(|s| {
        for cpu in 0..2 {
            let (slab, table, rcu, next_id, pinned_reads) =
                (&slab, &table, &rcu, &next_id, &pinned_reads);
            s.spawn(move || {
                let mut h = rcu.register_cpu(cpu).unwrap();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ cpu as u64;
                let mut rand = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for round in 0..rounds {
                    let i = (rand() % SLOTS as u64) as usize;
                    let dice = rand() % 6;
                    if dice < 3 {
                        // Update: publish a new object in slot i (or, one
                        // time in three, nothing), retire the old one.
                        let new = if dice == 0 {
                            std::ptr::null_mut()
                        } else {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            let o = slab.alloc(cpu, payload(id)).unwrap();
                            o.stable().key.store(id, Ordering::Relaxed);
                            // Attach: Release orders the payload and key
                            // before any reader's pin (its Acquire CAS).
                            o.stable().refcnt.store(1, Ordering::Release);
                            o.publish().as_raw().as_ptr()
                        };
                        // Release: readers that load the pointer (Acquire)
                        // see the constructed stable part and the attach.
                        let old = table[i].swap(new, Ordering::AcqRel);
                        if let Some(old) = std::ptr::NonNull::new(old) {
                            // SAFETY: pointers in the table are `Obj`s.
                            let old = unsafe { SlabPtr::<Obj>::from_raw(old) };
                            // SAFETY: we unpublished it; it is allocated.
                            let st = unsafe { old.stable() };
                            // Detach: wait for pinned readers to leave.
                            // Acquire pairs with their Release unpin.
                            while st
                                .refcnt
                                .compare_exchange(1, 0, Ordering::Acquire, Ordering::Relaxed)
                                .is_err()
                            {
                                std::hint::spin_loop();
                            }
                            // SAFETY: unpublished and detached: nobody can pin it; RCU readers may still look at the stable part, which the cache keeps valid.
                            unsafe { slab.free_ptr(cpu, old) };
                        }
                    } else {
                        let g = h.read_lock();
                        let raw = table[i].load(Ordering::Acquire);
                        if let Some(raw) = std::ptr::NonNull::new(raw) {
                            // SAFETY: read from the table inside `g`.
                            let p = unsafe { SlabPtr::<Obj>::from_raw(raw) };
                            // SAFETY: as above; the cache is type-safe by RCU.
                            let st = unsafe { p.stable_rcu(&g) };
                            assert_eq!(
                                st.magic.load(Ordering::Relaxed),
                                LIVE,
                                "reader saw a freed slab page"
                            );
                            // Pin: increment unless detached (0).
                            let mut r = st.refcnt.load(Ordering::Relaxed);
                            let pinned = loop {
                                if r == 0 {
                                    break false;
                                }
                                match st.refcnt.compare_exchange_weak(
                                    r,
                                    r + 1,
                                    Ordering::Acquire,
                                    Ordering::Relaxed,
                                ) {
                                    Ok(_) => break true,
                                    Err(now) => r = now,
                                }
                            };
                            if pinned {
                                // Revalidate: possibly a reused object; its
                                // payload must match its own key.
                                let key = st.key.load(Ordering::Relaxed);
                                // SAFETY: pinned: it cannot be freed or rewritten until we unpin.
                                let pl = unsafe { p.payload() };
                                assert_eq!(pl.id, key, "pinned payload does not match key");
                                assert_eq!(pl.fill, [key; 6]);
                                pinned_reads.fetch_add(1, Ordering::Relaxed);
                                // Release: pairs with the detach's Acquire.
                                st.refcnt.fetch_sub(1, Ordering::Release);
                            }
                            // Linger in the section, as a page-fault
                            // handler would, and look again: the page must
                            // still not have been freed.
                            for _ in 0..(rand() % 256) {
                                std::hint::spin_loop();
                            }
                            assert_eq!(
                                st.magic.load(Ordering::Relaxed),
                                LIVE,
                                "slab page freed under an RCU reader"
                            );
                        }
                        drop(g);
                    }
                    if round % shrink_every == 0 {
                        slab.shrink(cpu);
                    }
                    h.quiescent_state();
                }
                h.barrier();
            });
        }
    });
    assert!(
        pinned_reads.load(Ordering::Relaxed) > 0,
        "readers pinned something"
    );
    let mut h = rcu.register_cpu(0).unwrap();
    for e in &table {
        if let Some(raw) = std::ptr::NonNull::new(e.swap(std::ptr::null_mut(), Ordering::AcqRel)) {
            // SAFETY: the table held `Obj`s; no reader remains.
            unsafe { slab.free_ptr(0, SlabPtr::<Obj>::from_raw(raw)) };
        }
    }
    let st = slab.stats();
    assert!(st.rcu_calls > 0, "pages were released through RCU");
    assert_eq!(st.objects_in_use, 0);
    assert_eq!(rcu.stats().callbacks_queued, st.rcu_calls);
    slab.destroy(&mut h);
    drop(h);
    hf.drain_all();
    assert_eq!(hf.stats(), base);
}
