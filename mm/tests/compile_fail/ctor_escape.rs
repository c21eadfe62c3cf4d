// The constructor token cannot be smuggled out of the constructor to make
// stable parts later.
include!("common/vma.rs");

struct Sneaky;

thread_local! {
    static STASH: core::cell::Cell<Option<&'static Ctor<'static>>> = const { core::cell::Cell::new(None) };
}

impl SlabObject for Sneaky {
    type Stable = ();
    type Payload = ();
    fn construct(ctor: &Ctor<'_>) {
        STASH.with(|s| s.set(Some(ctor)));
    }
}

fn main() {}
