// Objects cannot be copied or cloned as a whole; an owned handle does not
// dereference to the slot.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let a = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        let _b = a.clone();
        let _c = *a;
    });
}
