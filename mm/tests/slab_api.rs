//! Type-level guarantees: code that would overwrite, replace or copy the
//! constructor-owned part of a live slab object, hold an RCU read guard
//! across a quiescent-state report or move it to another CPU, or change a
//! VMA without its write lock, does not compile (`compile_fail/`); the legal
//! API does (`compile_pass/`).
//!
//! Miri cannot spawn the compiler, so this test does not exist under Miri;
//! `cargo test` runs it.

#[cfg(not(miri))]
#[test]
fn octeon_bug_is_a_type_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
    t.pass("tests/compile_pass/*.rs");
}
