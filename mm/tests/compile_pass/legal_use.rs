// The legal API, end to end: this must compile and run.
include!("../compile_fail/common/vma.rs");

use mm::frame::HostFrames;
use mm::rcu::Rcu;

fn main() {
    let frames = HostFrames::new(1 << 20, 1);
    let rcu = Rcu::new();
    let mut cpu0 = rcu.register_cpu(0).unwrap();
    // SAFETY: torn down with `destroy`, which waits for every callback.
    let slab = unsafe { Slab::<Vma>::new_typesafe_by_rcu(&frames, &rcu, SlabConfig::new("vma")) }
        .unwrap();

    // Owned: fill in the payload, use the stable part in place.
    let mut vma = slab.alloc(0, VmaPayload { start: 0x1000, end: 0x2000 }).unwrap();
    vma.payload_mut().end = 0x3000;
    vma.stable().refcnt.store(1, Ordering::Release);
    let avc = Box::into_raw(Box::new(Avc { link: LinkedListAtomicLink::new() }));
    {
        let _g = vma.stable().chain_lock.lock();
        // SAFETY: `chain_lock` protects the list and is held; `avc` is live and unlinked.
        unsafe { vma.stable().anon_vma_chain.push_back(UnsafeRef::from_raw(avc)) };
    }

    // fork's duplicate: payload only; the copy has its own, empty chain.
    let copy = slab.dup(0, vma.payload()).unwrap();
    assert_eq!(copy.payload(), vma.payload());
    {
        let _g = copy.stable().chain_lock.lock();
        // SAFETY: lock held.
        assert!(unsafe { copy.stable().anon_vma_chain.is_empty() });
    }
    drop(copy);

    // Publish; a reader finds it under RCU and looks at the stable part.
    let published: SlabPtr<Vma> = vma.publish();
    {
        let guard = cpu0.read_lock();
        // SAFETY: the object is allocated and the cache is type-safe by RCU.
        let stable = unsafe { published.stable_rcu(&guard) };
        assert_eq!(stable.refcnt.load(Ordering::Acquire), 1);
    }
    // SAFETY: nobody else has the pointer, so the object is pinned.
    assert_eq!(unsafe { published.payload() }.end, 0x3000);

    // Unpublish, unlink the chain, free.
    // SAFETY: never shared; we are the only user.
    let vma = unsafe { slab.reclaim(0, published) };
    {
        let _g = vma.stable().chain_lock.lock();
        // SAFETY: lock held; the element was pushed above.
        let back = unsafe { vma.stable().anon_vma_chain.pop_front() }.unwrap();
        // SAFETY: `back` is the element leaked from a Box above.
        drop(unsafe { Box::from_raw(UnsafeRef::into_raw(back)) });
    }
    vma.stable().refcnt.store(0, Ordering::Release);
    slab.free(0, vma);

    assert_eq!(slab.stats().objects_in_use, 0);
    slab.destroy(&mut cpu0);
}
