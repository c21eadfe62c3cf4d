//! Samara's memory manager, independent of any architecture.
//!
//! `no_std` and tested on the host: under `cfg(test)` (and the `std`
//! feature) std threads stand in for CPUs, and under `cfg(loom)` the
//! concurrency protocols are model-checked.
#![cfg_attr(not(any(test, loom, feature = "std")), no_std)]

pub mod addr;
pub mod asid;
pub mod aspace;
pub mod cpu;
pub mod frame;
#[cfg(all(feature = "count-shared-writes", not(loom)))]
pub mod linecount;
pub mod maple;
pub mod pgtable;
pub mod phys;
pub mod rcu;
pub mod shootdown;
pub mod slab;
pub mod spinwait;
pub mod sync;
pub mod vma;
