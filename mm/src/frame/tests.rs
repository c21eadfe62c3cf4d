//! Unit tests of the buddy allocator's internals (free lists, splitting,
//! merging, the carve-out). Public-API and property tests live in
//! `mm/tests/frame.rs`.

use super::*;
use crate::phys::HostMemory;

const P: u64 = PAGE_SIZE as u64;

fn no_pcp(nr_cpus: usize) -> FrameConfig {
    FrameConfig {
        nr_cpus,
        pcp_batch: 0,
        pcp_high: 0,
    }
}

/// Walks every free list and checks it against the counters and the
/// metadata: heads flagged BUDDY with the list's order, aligned, links
/// consistent both ways, no two free blocks overlapping.
fn check_free_lists(fa: &FrameAllocator) -> u64 {
    let zone = fa.zone.lock();
    let mut seen = std::collections::BTreeMap::new();
    let mut pages = 0;
    for k in 0..NR_ORDERS {
        let mut n = 0;
        let mut prev = NIL;
        let mut idx = zone.heads[k];
        while idx != NIL {
            let m = fa.meta_at(idx);
            assert_eq!(m.flags(), PageFlags::BUDDY, "list {k} entry {idx}");
            assert_eq!(m.order(), Some(k as u32));
            assert_eq!(m.prev.load(Ordering::Relaxed), prev);
            let pfn = fa.frame_at(idx).pfn();
            assert_eq!(
                pfn % (1 << k),
                0,
                "block at pfn {pfn:#x} misaligned for order {k}"
            );
            assert!(seen.insert(pfn, 1u64 << k).is_none());
            prev = idx;
            idx = m.next.load(Ordering::Relaxed);
            n += 1;
        }
        assert_eq!(n, zone.nr_free[k], "order {k} count");
        pages += n << k;
    }
    let mut end = 0;
    for (&pfn, &len) in &seen {
        assert!(pfn >= end, "free blocks overlap at pfn {pfn:#x}");
        end = pfn + len;
    }
    pages
}

#[test]
fn init_carves_metadata_and_frees_the_rest_in_maximal_blocks() {
    let hf = HostFrames::with_config(8 << 20, &[], no_pcp(2));
    let st = hf.stats();
    let total = (8 << 20) / P;
    assert_eq!(st.managed_pages + st.metadata_pages, total);
    // 2048 frames * 32 bytes of metadata + 2 CPU caches = 17 frames.
    assert_eq!(st.metadata_pages, (2048u64 * 32 + 256).div_ceil(P));
    assert_eq!(st.free_pages, st.managed_pages);
    assert_eq!(st.allocated_pages, 0);
    assert_eq!(check_free_lists(&hf), st.managed_pages);
    // The 8 MiB buffer is 4 MiB aligned: the upper half is one top block.
    assert!(st.free_blocks[MAX_ORDER as usize] >= 1);
    let meta = hf.metadata.0;
    for i in 0..st.metadata_pages {
        assert!(
            !hf.manages(meta.add(i)),
            "metadata frame {i} must be reserved"
        );
    }
}

#[test]
fn split_then_free_merges_back_to_the_initial_lists() {
    let hf = HostFrames::with_config(4 << 20, &[], no_pcp(1));
    let before = hf.stats();
    let f = hf.alloc(0, 0).unwrap();
    let after = hf.stats();
    assert_eq!(after.allocated_pages, 1);
    assert_ne!(
        after.free_blocks, before.free_blocks,
        "an order-0 alloc splits a block"
    );
    check_free_lists(&hf);
    // SAFETY: `f` was allocated above and is unused.
    unsafe { hf.free(0, f, 0) };
    assert_eq!(hf.stats(), before);
    check_free_lists(&hf);
}

#[test]
fn blocks_are_aligned_to_their_order_in_physical_frames() {
    // Splitting cascades: allocating orders 0, 1, .. 9 in turn can split
    // one top block, so give it two.
    let hf = HostFrames::with_config(12 << 20, &[], no_pcp(1));
    let mut got = vec![];
    for order in 0..=MAX_ORDER {
        let f = hf.alloc(0, order).unwrap();
        assert_eq!(f.pfn() % (1 << order), 0, "order {order} block at {f:?}");
        let m = hf.meta(f).unwrap();
        assert_eq!(m.flags(), PageFlags::ALLOCATED);
        assert_eq!(m.order(), Some(order));
        assert_eq!(m.ref_count(), 1);
        got.push((f, order));
    }
    check_free_lists(&hf);
    for (f, o) in got {
        // SAFETY: allocated above, freed once.
        unsafe { hf.free(0, f, o) };
    }
    let st = hf.stats();
    assert_eq!(st.allocated_pages, 0);
    assert_eq!(check_free_lists(&hf), st.managed_pages);
}

#[test]
fn holes_and_unaligned_regions_are_never_handed_out() {
    // Usable: frames 3..9 (byte ranges not page-aligned at the edges) and
    // 20..70; everything else is a hole.
    let usable = [(3 * P - 100, 9 * P + 17), (20 * P, 70 * P)];
    let hf = HostFrames::with_config(80 * P as usize, &usable, no_pcp(1));
    let base = Frame::containing(PhysAddr::new(hf.memory().phys_range().0));
    let st = hf.stats();
    // Frame 2 is only partly usable and 9 only 17 bytes: both excluded.
    assert_eq!(st.managed_pages + st.metadata_pages, 6 + 50);
    assert_eq!(check_free_lists(&hf), st.managed_pages);
    let mut got = vec![];
    while let Ok(f) = hf.alloc(0, 0) {
        let rel = f.pfn() - base.pfn();
        assert!(
            (3..9).contains(&rel) || (20..70).contains(&rel),
            "frame {rel} is a hole"
        );
        got.push(f);
    }
    assert_eq!(got.len() as u64, st.managed_pages);
    for rel in [0, 2, 9, 10, 19, 70, 79] {
        assert!(!hf.manages(base.add(rel)), "hole frame {rel}");
    }
    for f in got {
        // SAFETY: allocated above, freed once.
        unsafe { hf.free(0, f, 0) };
    }
    assert_eq!(hf.stats(), st);
    check_free_lists(&hf);
}

#[test]
fn pcp_refills_in_batches_and_drains_past_high() {
    let cfg = FrameConfig {
        nr_cpus: 2,
        pcp_batch: 4,
        pcp_high: 8,
    };
    let hf = HostFrames::with_config(1 << 20, &[], cfg);
    let base = hf.stats();
    let f = hf.alloc(1, 0).unwrap();
    let st = hf.stats();
    assert_eq!(
        st.pcp_pages, 3,
        "refill takes a batch of 4 and hands one out"
    );
    assert_eq!(st.allocated_pages, 1);
    assert_eq!(st.free_pages + 1, base.free_pages);
    let mut fs: Vec<_> = (0..9).map(|_| hf.alloc(0, 0).unwrap()).collect();
    fs.push(f);
    // CPU 0 refilled three times (12) and handed out 9.
    assert_eq!(hf.stats().pcp_pages, 3 + 3);
    for f in fs.drain(..) {
        // SAFETY: allocated above, freed once.
        unsafe { hf.free(1, f, 0) };
    }
    // CPU 1 held 3 and got 10 back; each time it reached 9 (> high) it
    // returned a batch of 4: 3 -> 9 -> 5 -> 9 -> 5.
    assert_eq!(hf.pcp(1).count.load(Ordering::Relaxed), 5);
    assert_eq!(hf.stats().allocated_pages, 0);
    hf.drain_all();
    let st = hf.stats();
    assert_eq!(st.pcp_pages, 0);
    assert_eq!(st, base);
    assert_eq!(check_free_lists(&hf), st.managed_pages);
}

#[test]
fn oom_drains_other_cpus_before_failing() {
    let cfg = FrameConfig {
        nr_cpus: 2,
        pcp_batch: 8,
        pcp_high: 16,
    };
    let hf = HostFrames::with_config(64 * P as usize, &[], cfg);
    let managed = hf.stats().managed_pages;
    let mut got = vec![];
    while let Ok(f) = hf.alloc(0, 0) {
        got.push(f);
    }
    assert_eq!(got.len() as u64, managed);
    assert_eq!(hf.alloc(1, 0), Err(AllocError::OutOfMemory { order: 0 }));
    // Park a few frames in CPU 0's cache; CPU 1 must still get them.
    for f in got.drain(..5) {
        // SAFETY: allocated above, freed once.
        unsafe { hf.free(0, f, 0) };
    }
    assert_eq!(hf.stats().pcp_pages, 5);
    for _ in 0..5 {
        got.push(
            hf.alloc(1, 0)
                .expect("cached frames on another CPU are not lost"),
        );
    }
    assert_eq!(hf.alloc(1, 0), Err(AllocError::OutOfMemory { order: 0 }));
    assert_eq!(hf.alloc(0, 3), Err(AllocError::OutOfMemory { order: 3 }));
    for f in got {
        // SAFETY: allocated above, freed once.
        unsafe { hf.free(1, f, 0) };
    }
    hf.drain_all();
    assert_eq!(check_free_lists(&hf), managed);
}

#[test]
fn high_order_allocation_drains_caches_so_buddies_merge() {
    let cfg = FrameConfig {
        nr_cpus: 1,
        pcp_batch: 8,
        pcp_high: 64,
    };
    // Exactly one order-4 block of usable memory (frames 16..32).
    let hf = HostFrames::with_config(64 * P as usize, &[(0, P), (16 * P, 32 * P)], cfg);
    assert_eq!(hf.stats().metadata_pages, 1);
    let f = hf.alloc(0, 0).unwrap();
    // SAFETY: allocated above, freed once.
    unsafe { hf.free(0, f, 0) };
    assert_eq!(hf.stats().pcp_pages, 8, "the cache keeps the refill batch");
    let big = hf
        .alloc(0, 4)
        .expect("drained frames merge back into the order-4 block");
    assert_eq!(big.pfn() % 16, 0);
    // SAFETY: allocated above, freed once.
    unsafe { hf.free(0, big, 4) };
}

#[test]
fn bad_arguments_are_errors() {
    let hf = HostFrames::new(1 << 20, 2);
    assert_eq!(
        hf.alloc(0, MAX_ORDER + 1),
        Err(AllocError::BadOrder(MAX_ORDER + 1))
    );
    assert_eq!(hf.alloc(2, 0), Err(AllocError::BadCpu(2)));
}

#[test]
fn init_rejects_bad_maps() {
    let mem = HostMemory::new(64 * PAGE_SIZE);
    let dm = mem.direct_map();
    let (b, e) = mem.phys_range();
    let cfg = FrameConfig::new(1);
    let new = |r: &[(u64, u64)], c: FrameConfig| {
        // SAFETY: the regions are inside `mem` (or rejected), which nothing else uses; failed constructions touch nothing.
        unsafe { FrameAllocator::new(dm, r, c) }.err()
    };
    assert_eq!(
        new(&[(b, e)], FrameConfig::new(0)),
        Some(InitError::BadCpuCount(0))
    );
    assert_eq!(
        new(&[(b, e)], FrameConfig::new(65)),
        Some(InitError::BadCpuCount(65))
    );
    let bad = FrameConfig {
        nr_cpus: 1,
        pcp_batch: 9,
        pcp_high: 8,
    };
    assert_eq!(
        new(&[(b, e)], bad),
        Some(InitError::BadPcpLimits { batch: 9, high: 8 })
    );
    assert_eq!(
        new(&[(b, b)], cfg),
        Some(InitError::EmptyRegion { index: 0 })
    );
    assert_eq!(
        new(&[(b + 8 * P, b + 9 * P), (b, b + P)], cfg),
        Some(InitError::UnsortedRegions { index: 1 })
    );
    assert_eq!(
        new(&[(b, b + 4 * P), (b + 2 * P, e)], cfg),
        Some(InitError::UnsortedRegions { index: 1 })
    );
    assert_eq!(
        new(&[(b, e + P)], cfg),
        Some(InitError::NotDirectMapped { index: 0 })
    );
    assert_eq!(
        new(&[(b - P, e)], cfg),
        Some(InitError::NotDirectMapped { index: 0 })
    );
    assert_eq!(new(&[], cfg), Some(InitError::NoUsableMemory));
    assert_eq!(
        new(&[(b + 1, b + P + 1)], cfg),
        Some(InitError::NoUsableMemory)
    );
    // Two one-page regions far apart: 64 frames of metadata needs 2 KiB +
    // one CPU cache, but then nothing is left... the carve-out fits in one
    // page, so the map is accepted; with three pages of CPU caches it
    // is not.
    let two = [(b, b + P), (e - P, e)];
    assert!(new(&two, cfg).is_none());
    assert_eq!(
        new(&two, FrameConfig::new(64)),
        Some(InitError::NoRoomForMetadata {
            bytes: 64 * 32 + 64 * 128
        })
    );
}

#[test]
fn refcount_put_frees_on_last_reference() {
    let hf = HostFrames::with_config(1 << 20, &[], no_pcp(1));
    let f = hf.alloc(0, 2).unwrap();
    let m = hf.meta(f).unwrap();
    m.get_ref();
    assert_eq!(m.ref_count(), 2);
    // SAFETY: we hold two references to `f`; each put drops one.
    assert!(!unsafe { hf.put(0, f, 2) });
    assert_eq!(hf.stats().allocated_pages, 4);
    // SAFETY: as above, the last reference.
    assert!(unsafe { hf.put(0, f, 2) });
    assert_eq!(hf.stats().allocated_pages, 0);
    assert_eq!(hf.frame_of(hf.meta(f).unwrap()), f);
}

#[test]
fn frames_never_alias_and_zeroed_alloc_zeroes() {
    let hf = HostFrames::new(256 * PAGE_SIZE, 1);
    let mut got = vec![];
    while let Ok(f) = hf.alloc(0, 0) {
        let p = hf.frame_ptr(f).unwrap();
        assert_ne!(p.as_ptr() as u64, f.start().as_u64());
        // SAFETY: `f` is ours; the page is PAGE_SIZE bytes.
        unsafe { p.as_ptr().cast::<u64>().write(f.pfn()) };
        got.push(f);
    }
    for &f in &got {
        let p = hf.frame_ptr(f).unwrap();
        // SAFETY: as above.
        let stamp = unsafe { p.as_ptr().cast::<u64>().read() };
        assert_eq!(stamp, f.pfn(), "{f:?} aliased");
    }
    let last = got.pop().unwrap();
    // SAFETY: allocated above, freed once.
    unsafe { hf.free(0, last, 0) };
    let z = hf.alloc_zeroed(0, 0).unwrap();
    assert_eq!(z, last, "LIFO cache hands the same frame back");
    let zp = hf.frame_ptr(z).unwrap().as_ptr();
    // SAFETY: `z` is ours.
    let bytes = unsafe { core::slice::from_raw_parts(zp, PAGE_SIZE) };
    assert!(bytes.iter().all(|&b| b == 0));
    got.push(z);
    for f in got {
        // SAFETY: allocated above, freed once.
        unsafe { hf.free(0, f, 0) };
    }
}

#[cfg(debug_assertions)]
mod misuse {
    use super::*;

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_into_the_cpu_cache() {
        let hf = HostFrames::new(1 << 20, 1);
        let f = hf.alloc(0, 0).unwrap();
        // SAFETY: deliberately unsound: the second free must be caught.
        unsafe {
            hf.free(0, f, 0);
            hf.free(0, f, 0);
        }
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_after_merge() {
        let hf = HostFrames::with_config(1 << 20, &[], no_pcp(1));
        let f = hf.alloc(0, 0).unwrap();
        // SAFETY: deliberately unsound: the second free must be caught.
        unsafe {
            hf.free(0, f, 0);
            hf.free(0, f, 0);
        }
    }

    #[test]
    #[should_panic(expected = "allocated with order 1")]
    fn free_with_wrong_order() {
        let hf = HostFrames::new(1 << 20, 1);
        let f = hf.alloc(0, 1).unwrap();
        // SAFETY: deliberately unsound: must be caught.
        unsafe { hf.free(0, f, 0) };
    }

    #[test]
    #[should_panic(expected = "not the head of an allocated block")]
    fn free_tail_frame() {
        let hf = HostFrames::new(1 << 20, 1);
        let f = hf.alloc(0, 2).unwrap();
        // SAFETY: deliberately unsound: must be caught.
        unsafe { hf.free(0, f.add(1), 0) };
    }

    #[test]
    #[should_panic(expected = "it is reserved")]
    fn free_metadata_frame() {
        let hf = HostFrames::new(1 << 20, 1);
        let meta = hf.metadata.0;
        // SAFETY: deliberately unsound: must be caught.
        unsafe { hf.free(0, meta, 0) };
    }

    #[test]
    #[should_panic(expected = "references outstanding")]
    fn free_shared_frame() {
        let hf = HostFrames::new(1 << 20, 1);
        let f = hf.alloc(0, 0).unwrap();
        hf.meta(f).unwrap().get_ref();
        // SAFETY: deliberately unsound: must be caught.
        unsafe { hf.free(0, f, 0) };
    }

    #[test]
    #[should_panic(expected = "while mapped")]
    fn free_mapped_frame() {
        let hf = HostFrames::new(1 << 20, 1);
        let f = hf.alloc(0, 0).unwrap();
        hf.meta(f).unwrap().inc_map_count();
        // SAFETY: deliberately unsound: must be caught.
        unsafe { hf.free(0, f, 0) };
    }
}

/// Not a debug assertion: a foreign frame would index outside mem_map.
#[test]
#[should_panic(expected = "freeing foreign")]
fn free_foreign_frame_always_panics() {
    let hf = HostFrames::new(1 << 20, 1);
    let (_, end) = hf.memory().phys_range();
    // SAFETY: deliberately unsound: must be caught before any access.
    unsafe { hf.free(0, Frame::containing(PhysAddr::new(end)), 0) };
}
