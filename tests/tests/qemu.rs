//! Every scenario on every architecture and `per-vma-lock` configuration.
//!
//! Test names are `ARCH::CONFIG::SCENARIO` (CONFIG is `pvl` or `nopvl`);
//! `cargo xtask test` selects architectures with those prefixes as filters.

use qemu_tests::Arch;

macro_rules! scenarios {
    ($config:ident, $arch:expr, $per_vma_lock:expr $(, $extra:item)*) => {
        pub mod $config {
            use super::*;

            $($extra)*

            #[test]
            fn boot() {
                qemu_tests::scenario_boot($arch, $per_vma_lock);
            }

            #[test]
            fn pagefault() {
                qemu_tests::scenario_pagefault($arch, $per_vma_lock);
            }

            #[test]
            fn panic() {
                qemu_tests::scenario_panic($arch, $per_vma_lock);
            }

            #[test]
            fn bad_args() {
                qemu_tests::scenario_bad_args($arch, $per_vma_lock);
            }
        }
    };
}

mod x86_64 {
    use super::*;
    scenarios!(pvl, Arch::X86_64, true);
    scenarios!(nopvl, Arch::X86_64, false);
}

mod mips64 {
    use super::*;
    scenarios!(
        pvl,
        Arch::Mips64,
        true,
        #[test]
        fn mips_user() {
            qemu_tests::scenario_mips_user(true);
        },
        #[test]
        fn mips_shootdown() {
            qemu_tests::scenario_mips_shootdown(true);
        }
    );
    scenarios!(
        nopvl,
        Arch::Mips64,
        false,
        #[test]
        fn mips_user() {
            qemu_tests::scenario_mips_user(false);
        },
        #[test]
        fn mips_shootdown() {
            qemu_tests::scenario_mips_shootdown(false);
        }
    );
}
