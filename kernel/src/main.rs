//! The Samara kernel: ties `boot`, `arch` and `mm` together.
#![no_std]
#![no_main]

fn main() {}
