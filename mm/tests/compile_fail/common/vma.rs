// A VMA-shaped slab object shared by the trybuild cases (`include!`d; not
// a test case itself). The stable part holds what Linux's VMA constructor
// owns: the lock word, the lock sequence and the anon_vma_chain list head.

#[allow(unused_imports)]
use core::sync::atomic::{AtomicU32, Ordering};
#[allow(unused_imports)]
use intrusive_collections::{intrusive_adapter, LinkedListAtomicLink, UnsafeRef};
#[allow(unused_imports)]
use mm::slab::{Ctor, Owned, Slab, SlabConfig, SlabObject, SlabPtr, StableList};
#[allow(unused_imports)]
use mm::sync::SpinLock;

pub struct Avc {
    pub link: LinkedListAtomicLink,
}
intrusive_adapter!(pub AvcAdapter = UnsafeRef<Avc>: Avc { link => LinkedListAtomicLink });

pub struct Vma;

pub struct VmaStable {
    pub refcnt: AtomicU32,
    pub lock_seq: AtomicU32,
    pub chain_lock: SpinLock<()>,
    pub anon_vma_chain: StableList<AvcAdapter>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VmaPayload {
    pub start: u64,
    pub end: u64,
}

impl SlabObject for Vma {
    type Stable = VmaStable;
    type Payload = VmaPayload;
    fn construct(ctor: &Ctor<'_>) -> VmaStable {
        VmaStable {
            refcnt: AtomicU32::new(0),
            lock_seq: AtomicU32::new(u32::MAX),
            chain_lock: SpinLock::new(()),
            anon_vma_chain: StableList::new(ctor, AvcAdapter::new()),
        }
    }
}

#[allow(dead_code)]
pub fn with_slab(f: impl FnOnce(&Slab<'_, Vma>)) {
    let frames = mm::frame::HostFrames::new(1 << 20, 1);
    let slab = Slab::<Vma>::new(&frames, SlabConfig::new("vma")).unwrap();
    f(&slab);
}
