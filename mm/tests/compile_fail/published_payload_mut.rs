// Once published, the payload is no longer exclusively ours: the owning
// handle is gone, and the pointer's mutable access is `unsafe`.
include!("common/vma.rs");

fn main() {
    with_slab(|slab| {
        let mut a = slab.alloc(0, VmaPayload { start: 0, end: 4096 }).unwrap();
        let p: SlabPtr<Vma> = a.publish();
        a.payload_mut().start = 8192;
        p.payload_mut().end = 8192;
    });
}
