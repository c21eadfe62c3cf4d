// Nor can the constructor token be forged by naming its fields.
include!("common/vma.rs");

fn main() {
    let ctor = Ctor { _invariant: core::marker::PhantomData, _not_send: core::marker::PhantomData };
    let _fresh = StableList::new(&ctor, AvcAdapter::new());
}
