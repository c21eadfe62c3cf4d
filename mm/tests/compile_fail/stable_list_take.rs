// A stable list head offers no whole-value replacement: no `take`, no
// `Default`, no `&mut` to the raw list.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let a = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        let _g = a.stable().chain_lock.lock();
        let _stolen = a.stable().anon_vma_chain.take();
        let _fresh: StableList<AvcAdapter> = Default::default();
    });
}
