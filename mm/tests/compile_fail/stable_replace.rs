// Replacing a constructor-owned field of a live object.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let a = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        let _old = core::mem::replace(&mut a.stable().lock_seq, AtomicU32::new(0));
    });
}
