// A fresh list head (and so a fresh stable part) cannot be made outside the
// slab constructor: the `Ctor` token cannot be obtained.
include!("common/vma.rs");

fn main() {
    let ctor = Ctor::new();
    let _fresh = StableList::new(&ctor, AvcAdapter::new());
}
