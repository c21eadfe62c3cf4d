//! Unit tests of the slab. Property and multi-threaded tests live in
//! `mm/tests/slab.rs`; the compile-fail proofs in `mm/tests/compile_fail/`.

use super::*;
use crate::frame::{FrameConfig, HostFrames};
use crate::rcu::Rcu;
use std::sync::atomic::{
    AtomicU64 as StdAtomicU64, AtomicUsize as StdAtomicUsize, Ordering::SeqCst,
};

use intrusive_collections::{intrusive_adapter, LinkedListAtomicLink, UnsafeRef};

static SERIAL: StdAtomicU64 = StdAtomicU64::new(1);
const LIVE: u64 = 0x11fe_11fe;
const DEAD: u64 = 0xdead_dead;

/// A chain element linked on a stable list. The atomic link makes it
/// `Sync`, as elements reachable from a shared stable part must be.
struct Link {
    link: LinkedListAtomicLink,
    val: u32,
}
intrusive_adapter!(LinkAdapter = UnsafeRef<Link>: Link { link => LinkedListAtomicLink });

struct Obj;
struct ObjStable {
    /// Unique per constructor call.
    serial: u64,
    /// LIVE while the page is alive; DEAD once the stable part is dropped.
    magic: AtomicU64,
    lock: SpinLock<()>,
    list: StableList<LinkAdapter>,
}
impl Drop for ObjStable {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Relaxed);
        DROPS.fetch_add(1, SeqCst);
    }
}
static DROPS: StdAtomicUsize = StdAtomicUsize::new(0);

#[derive(Clone, Debug, PartialEq)]
struct ObjPayload {
    id: u64,
    bytes: [u8; 40],
}

impl SlabObject for Obj {
    type Stable = ObjStable;
    type Payload = ObjPayload;
    fn construct(ctor: &Ctor<'_>) -> ObjStable {
        ObjStable {
            serial: SERIAL.fetch_add(1, SeqCst),
            magic: AtomicU64::new(LIVE),
            lock: SpinLock::new(()),
            list: StableList::new(ctor, LinkAdapter::new()),
        }
    }
}

fn payload(id: u64) -> ObjPayload {
    ObjPayload {
        id,
        bytes: [id as u8; 40],
    }
}

fn frames() -> HostFrames {
    HostFrames::new(if cfg!(miri) { 256 << 10 } else { 4 << 20 }, 2)
}

fn cfg(per_page: u32, reserve: u32) -> SlabConfig {
    SlabConfig {
        name: "test",
        max_objects_per_page: per_page,
        reserve_empty_pages: reserve,
    }
}

#[test]
fn geometry_of_a_200_byte_object() {
    struct Big;
    impl SlabObject for Big {
        type Stable = AtomicU64;
        type Payload = [u8; 192];
        fn construct(_: &Ctor<'_>) -> AtomicU64 {
            AtomicU64::new(0)
        }
    }
    let g = geometry::<Big>(0).unwrap();
    assert_eq!(g.slot_size, 200);
    assert_eq!(g.page_order, 0);
    // (4096 - header) / 200
    assert_eq!(g.objs_per_page as usize, (PAGE_SIZE - g.first_slot) / 200);
    assert!(g.objs_per_page >= 19);
    assert_eq!(geometry::<Big>(3).unwrap().objs_per_page, 3);

    struct Huge;
    impl SlabObject for Huge {
        type Stable = ();
        type Payload = [u8; PAGE_SIZE << MAX_SLAB_ORDER];
        fn construct(_: &Ctor<'_>) {}
    }
    assert!(matches!(
        geometry::<Huge>(0),
        Err(SlabError::ObjectTooLarge { .. })
    ));
}

#[test]
fn constructor_runs_once_per_slot_and_reuse_keeps_the_stable_part() {
    let hf = frames();
    let slab = Slab::<Obj>::new(&hf, cfg(4, 1)).unwrap();
    let a = slab.alloc(0, payload(1)).unwrap();
    let st = slab.stats();
    assert_eq!(st.pages_created, 1);
    assert_eq!(st.constructor_calls, 4);
    let addr = a.stable() as *const ObjStable;
    let serial = a.stable().serial;
    assert_eq!(a.payload(), &payload(1));
    slab.free(0, a);
    // LIFO: the same slot comes back, with the same stable part and a new
    // payload; the constructor did not run again.
    let b = slab.alloc(0, payload(2)).unwrap();
    assert_eq!(b.stable() as *const ObjStable, addr);
    assert_eq!(b.stable().serial, serial);
    assert_eq!(b.payload(), &payload(2));
    assert_eq!(slab.stats().constructor_calls, 4);
    // All four slots of the page, then a second page.
    let mut objs = vec![b];
    for i in 0..7 {
        objs.push(slab.alloc(0, payload(10 + i)).unwrap());
    }
    let st = slab.stats();
    assert_eq!(
        (st.pages_created, st.constructor_calls, st.objects_in_use),
        (2, 8, 8)
    );
    let mut serials: Vec<_> = objs.iter().map(|o| o.stable().serial).collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 8, "every slot has its own stable part");
    drop(objs);
    assert_eq!(slab.stats().objects_in_use, 0);
}

#[test]
fn dup_copies_only_the_payload() {
    let hf = frames();
    let slab = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
    let src = slab.alloc(0, payload(7)).unwrap();
    let l = Box::into_raw(Box::new(Link {
        link: LinkedListAtomicLink::new(),
        val: 3,
    }));
    {
        let _g = src.stable().lock.lock();
        // SAFETY: `lock` protects `list`, and we hold it; `l` is a live, unlinked element that the list now owns.
        unsafe { src.stable().list.push_back(UnsafeRef::from_raw(l)) };
    }
    let dst = slab.dup(0, src.payload()).unwrap();
    assert_eq!(dst.payload(), src.payload());
    assert_ne!(dst.stable().serial, src.stable().serial);
    // SAFETY: single-threaded; no one else touches either list.
    unsafe {
        assert!(
            dst.stable().list.is_empty(),
            "the new object's list head is its own"
        );
        assert_eq!(
            src.stable().list.iter().map(|l| l.val).collect::<Vec<_>>(),
            [3]
        );
        let back = src.stable().list.pop_front().unwrap();
        drop(Box::from_raw(UnsafeRef::into_raw(back)));
    }
}

#[test]
fn empty_pages_beyond_the_reserve_go_back_at_once() {
    let hf = frames();
    let base = hf.stats();
    let drops = DROPS.load(SeqCst);
    let slab = Slab::<Obj>::new(&hf, cfg(2, 1)).unwrap();
    let with_cache = hf.stats().allocated_pages;
    let objs: Vec<_> = (0..8).map(|i| slab.alloc(1, payload(i)).unwrap()).collect();
    assert_eq!(slab.stats().pages, 4);
    assert_eq!(hf.stats().allocated_pages, with_cache + 4);
    drop(objs);
    // All 8 sit in CPU 1's cache: pages are still "in use".
    assert_eq!(slab.stats().objects_cached, 8);
    slab.drain_cpu(1);
    let st = slab.stats();
    assert_eq!((st.pages, st.empty_pages, st.pages_freed), (1, 1, 3));
    assert_eq!(st.rcu_calls, 0);
    assert_eq!(hf.stats().allocated_pages, with_cache + 1);
    assert!(
        DROPS.load(SeqCst) >= drops + 6,
        "stable parts of freed pages were dropped"
    );
    slab.shrink(0);
    assert_eq!(slab.stats().pages, 0);
    drop(slab);
    hf.drain_all();
    assert_eq!(hf.stats(), base);
}

#[test]
fn typesafe_by_rcu_frees_pages_after_a_grace_period_one_callback_each() {
    let hf = frames();
    let base = hf.stats();
    let rcu = Rcu::new();
    let mut h = rcu.register_cpu(0).unwrap();
    // SAFETY: destroyed with `destroy` below, after which nothing remains.
    let slab = unsafe { Slab::<Obj>::new_typesafe_by_rcu(&hf, &rcu, cfg(2, 0)) }.unwrap();
    let objs: Vec<_> = (0..6).map(|i| slab.alloc(0, payload(i)).unwrap()).collect();
    let stables: Vec<*const ObjStable> = objs.iter().map(|o| o.stable() as *const _).collect();
    drop(objs);
    assert_eq!(
        slab.stats().rcu_calls,
        0,
        "freeing objects queues no RCU callback"
    );
    assert_eq!(rcu.stats().callbacks_queued, 0);
    // Reuse is immediate.
    let again = slab.alloc(0, payload(9)).unwrap();
    assert!(stables.contains(&(again.stable() as *const _)));
    drop(again);
    {
        let _g = h.read_lock();
        slab.shrink(0);
        let st = slab.stats();
        assert_eq!((st.pages, st.pages_pending_rcu, st.rcu_calls), (0, 3, 3));
        assert_eq!(rcu.stats().callbacks_queued, 3, "one callback per page");
        // A reader inside its section still sees live stable parts.
        for &s in &stables {
            // SAFETY: the pages wait for a grace period that cannot end while this CPU is in a read section.
            assert_eq!(unsafe { (*s).magic.load(Ordering::Relaxed) }, LIVE);
        }
    }
    h.barrier();
    let st = slab.stats();
    assert_eq!(
        (st.pages_pending_rcu, st.pages_freed, st.rcu_calls),
        (0, 3, 3)
    );
    assert_eq!(rcu.stats().callbacks_invoked, 3);
    slab.destroy(&mut h);
    hf.drain_all();
    assert_eq!(hf.stats(), base);
}

#[test]
#[should_panic(expected = "waiting for an RCU grace period")]
fn dropping_a_cache_with_pending_pages_panics() {
    let hf = frames();
    let rcu = Rcu::new();
    let _h = rcu.register_cpu(0).unwrap();
    // SAFETY: the drop below must panic before the descriptor is freed.
    let slab = unsafe { Slab::<Obj>::new_typesafe_by_rcu(&hf, &rcu, cfg(2, 0)) }.unwrap();
    drop(slab.alloc(0, payload(1)).unwrap());
    slab.shrink(0);
    drop(slab);
}

#[test]
fn out_of_memory_and_bad_cpu_are_errors() {
    let hf = HostFrames::with_config(64 * PAGE_SIZE, &[], FrameConfig::new(2));
    let slab = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
    assert!(matches!(
        slab.alloc(2, payload(0)),
        Err(SlabError::BadCpu(2))
    ));
    let mut objs = vec![];
    let err = loop {
        match slab.alloc(0, payload(objs.len() as u64)) {
            Ok(o) => objs.push(o),
            Err(e) => break e,
        }
    };
    assert_eq!(err, SlabError::OutOfMemory);
    assert_eq!(hf.stats().free_pages, 0);
    for (i, o) in objs.iter().enumerate() {
        assert_eq!(o.payload().id, i as u64, "payloads intact");
    }
    let n = objs.len();
    drop(objs);
    assert_eq!(slab.stats().frees, n as u64);
    // Memory is usable again.
    slab.shrink(0);
    drop(slab.alloc(0, payload(0)).unwrap());
}

#[test]
fn published_objects_round_trip_through_raw_pointers() {
    let hf = frames();
    let slab = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
    let p = slab.alloc(0, payload(5)).unwrap().publish();
    // SAFETY: we allocated it and nobody else knows the pointer.
    let q = unsafe { SlabPtr::<Obj>::from_raw(p.as_raw()) };
    assert_eq!(p, q);
    // SAFETY: as above: exclusively ours, so it is pinned.
    unsafe {
        assert_eq!(q.payload().id, 5);
        q.payload_mut().id = 6;
        assert_eq!(p.payload().id, 6);
        assert_eq!(p.stable().magic.load(Ordering::Relaxed), LIVE);
    }
    // SAFETY: unpublished (never shared), no other users.
    let o = unsafe { slab.reclaim(1, p) };
    assert_eq!(o.payload().id, 6);
    assert_eq!(o.cpu(), 1);
    drop(o);
    assert_eq!(slab.stats().objects_in_use, 0);
    let p = slab.alloc(0, payload(8)).unwrap().publish();
    // SAFETY: as above.
    unsafe { slab.free_ptr(0, p) };
    assert_eq!(slab.stats().objects_in_use, 0);
}

#[test]
fn cpu_cache_flushes_a_batch_when_full() {
    let hf = frames();
    let slab = Slab::<Obj>::new(&hf, cfg(0, 8)).unwrap();
    let objs: Vec<_> = (0..CPU_CACHE_CAPACITY as u64 + 5)
        .map(|i| slab.alloc(0, payload(i)).unwrap())
        .collect();
    let before = slab.stats().objects_cached;
    for o in objs {
        slab.free(1, o);
    }
    // CPU 1 filled up at 28 and flushed 14; then took 5 more.
    assert_eq!(
        slab.stats().objects_cached - before,
        (CPU_CACHE_CAPACITY - CPU_CACHE_BATCH + 5) as u64
    );
}

#[cfg(debug_assertions)]
mod misuse {
    use super::*;

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_of_a_published_object() {
        let hf = frames();
        let slab = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
        let p = slab
            .alloc(
                0,
                ObjPayload {
                    id: 1,
                    bytes: [0; 40],
                },
            )
            .unwrap()
            .publish();
        // SAFETY: deliberately unsound: the second free must be caught.
        unsafe {
            slab.free_ptr(0, p);
            slab.free_ptr(0, p);
        }
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_after_flush_to_the_page() {
        let hf = frames();
        let slab = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
        let p = slab.alloc(0, payload(1)).unwrap().publish();
        let keep = slab.alloc(0, payload(2)).unwrap();
        // SAFETY: deliberately unsound: the second free must be caught.
        unsafe {
            slab.free_ptr(0, p);
            slab.drain_cpu(0);
            slab.free_ptr(0, p);
        }
        drop(keep);
    }

    #[test]
    #[should_panic(expected = "is not an object of this cache")]
    fn free_of_a_foreign_object() {
        let hf = frames();
        let a = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
        let b = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
        let p = a.alloc(0, payload(1)).unwrap().publish();
        // SAFETY: deliberately unsound: must be caught.
        unsafe { b.free_ptr(0, p) };
    }
}

#[test]
#[should_panic(expected = "freeing an object of another cache")]
fn free_to_the_wrong_cache_panics() {
    let hf = frames();
    let a = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
    let b = Slab::<Obj>::new(&hf, cfg(0, 1)).unwrap();
    let o = a.alloc(0, payload(1)).unwrap();
    b.free(0, o);
}
