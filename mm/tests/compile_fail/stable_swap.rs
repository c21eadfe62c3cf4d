// Swapping the stable parts of two live objects.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let a = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        let b = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        core::mem::swap(a.stable(), b.stable());
    });
}
