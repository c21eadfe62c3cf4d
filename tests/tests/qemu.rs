//! Every scenario on every architecture and `per-vma-lock` configuration.
//! Architectures whose port implements the task contract (arch/src/lib.rs)
//! also run the scenarios that need the scheduler and user mode
//! (`tasks`), with at least 4 CPUs.
//!
//! Test names are `ARCH::CONFIG::SCENARIO` (CONFIG is `pvl` or `nopvl`);
//! `cargo xtask test` selects architectures with those prefixes as filters.

use qemu_tests::Arch;

/// The scenarios that need the scheduler and user mode.
macro_rules! task_scenarios {
    (tasks, $arch:expr, $per_vma_lock:expr) => {
        #[test]
        fn smp() {
            qemu_tests::scenario_smp($arch, $per_vma_lock);
        }

        #[test]
        fn user() {
            qemu_tests::scenario_user($arch, $per_vma_lock);
        }

        #[test]
        fn faultstorm() {
            qemu_tests::scenario_faultstorm($arch, $per_vma_lock);
        }

        #[test]
        fn forkbomb_lite() {
            qemu_tests::scenario_forkbomb($arch, $per_vma_lock);
        }

        #[test]
        fn segv() {
            qemu_tests::scenario_segv($arch, $per_vma_lock);
        }

        #[test]
        fn tlb_shootdown() {
            qemu_tests::scenario_tlb_shootdown($arch, $per_vma_lock);
        }
    };
}

macro_rules! scenarios {
    (@body $config:ident, $arch:expr, $per_vma_lock:expr, [$($tasks:ident)?], { $($extra:item)* }) => {
        pub mod $config {
            use super::*;
            $(task_scenarios!($tasks, $arch, $per_vma_lock);)?

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
    // Architecture-specific scenarios follow `extra`.
    ($config:ident, $arch:expr, $per_vma_lock:expr $(, $tasks:ident)?, extra { $($extra:item)* }) => {
        scenarios!(@body $config, $arch, $per_vma_lock, [$($tasks)?], { $($extra)* });
    };
    ($config:ident, $arch:expr, $per_vma_lock:expr $(, $tasks:ident)?) => {
        scenarios!(@body $config, $arch, $per_vma_lock, [$($tasks)?], {});
    };
}

mod x86_64 {
    use super::*;
    scenarios!(
        pvl,
        Arch::X86_64,
        true,
        tasks,
        extra {
            #[test]
            fn faultstorm_counted() {
                qemu_tests::scenario_faultstorm_counted(Arch::X86_64, true);
            }
        }
    );
    scenarios!(nopvl, Arch::X86_64, false, tasks);
}

mod mips64 {
    use super::*;
    scenarios!(
        pvl,
        Arch::Mips64,
        true,
        tasks,
        extra {
            #[test]
            fn faultstorm_counted() {
                qemu_tests::scenario_faultstorm_counted(Arch::Mips64, true);
            }

            #[test]
            fn mips_user() {
                qemu_tests::scenario_mips_user(true);
            }

            #[test]
            fn mips_shootdown() {
                qemu_tests::scenario_mips_shootdown(true);
            }
        }
    );
    scenarios!(
        nopvl,
        Arch::Mips64,
        false,
        tasks,
        extra {
            #[test]
            fn mips_user() {
                qemu_tests::scenario_mips_user(false);
            }

            #[test]
            fn mips_shootdown() {
                qemu_tests::scenario_mips_shootdown(false);
            }
        }
    );
}
