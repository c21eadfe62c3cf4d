//! A VMA's range can only change with proof that it is write-locked, and
//! that proof only comes from the mmap write lock.
use mm::vma::lock::VmaWriteLocked;
use mm::vma::VmaPayload;

fn shrink(p: &VmaPayload) {
    let forged = VmaWriteLocked { lock: todo_lock() };
    p.set_range(forged, 0x1000, 0x2000, 1);
}

fn todo_lock() -> &'static mm::vma::lock::VmaLock {
    unreachable!()
}

fn main() {
    let _ = shrink;
}
