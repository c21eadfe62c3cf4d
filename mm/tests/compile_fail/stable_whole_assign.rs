// The whole-object copy of the Octeon bug: overwrite a new object's stable
// part (its anon_vma_chain head) with another object's.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let src = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        let new = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        *new.stable() = *src.stable();
    });
}
