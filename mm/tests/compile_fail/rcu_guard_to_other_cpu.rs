//! An RCU read guard belongs to the CPU that opened the section: it cannot
//! move to another thread (another CPU).
use mm::rcu::Rcu;

fn main() {
    let rcu = Rcu::new();
    let g = rcu.read_lock(0);
    std::thread::spawn(move || drop(g));
}
