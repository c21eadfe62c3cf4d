// Allocation and duplication take a payload; a stable part is not one.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let a = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        let _b = slab.dup(0, a.stable());
        let _c = slab.alloc(0, *a.stable());
    });
}
