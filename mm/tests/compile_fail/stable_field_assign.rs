// The lock word of a live object cannot be re-initialised, even through an
// exclusively owned handle.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let vma = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        vma.stable().refcnt = AtomicU32::new(1);
    });
}
