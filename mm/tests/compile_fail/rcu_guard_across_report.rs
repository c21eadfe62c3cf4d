//! An RCU read guard cannot be held across a quiescent-state report: the
//! guard borrows the CPU handle, the report needs it mutably.
use mm::rcu::Rcu;

fn main() {
    let rcu = Rcu::new();
    let mut cpu = rcu.register_cpu(0).unwrap();
    let guard = cpu.read_lock();
    cpu.quiescent_state();
    drop(guard);
}
