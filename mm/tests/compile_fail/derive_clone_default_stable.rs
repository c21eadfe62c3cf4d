// A stable part holding a list head can be neither cloned (whole-object
// copy) nor default-constructed (fresh stable part outside the
// constructor).
include!("common/vma.rs");

#[derive(Clone)]
struct CloneableStable {
    chain: StableList<AvcAdapter>,
}

#[derive(Default)]
struct DefaultStable {
    chain: StableList<AvcAdapter>,
}

fn main() {}
