//! In-QEMU integration tests: boot a kernel image per scenario and judge it by its exit status.
