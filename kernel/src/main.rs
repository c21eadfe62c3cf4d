//! The Samara kernel: ties `boot`, `arch` and `mm` together.
//!
//! TEMPORARY (branch `mips`): a minimal MIPS64-only kernel main to exercise
//! the arch layer until the foundation branch's kernel main is merged; that
//! one replaces this file wholesale.
#![no_std]
#![no_main]

#[cfg(target_arch = "mips64")]
mod mips_temp {
    use core::fmt::{self, Write};
    use core::panic::PanicInfo;
    use core::sync::atomic::{AtomicU64, Ordering};

    use arch::imp::{console, cpu, exit, paging};
    use arch::{AccessKind, ExitStatus, FaultReport};
    use boot::{BootInfo, RegionKind};

    struct Con;
    impl fmt::Write for Con {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for (i, l) in s.split('\n').enumerate() {
                if i > 0 {
                    console::write_bytes(b"\r\n");
                }
                console::write_bytes(l.as_bytes());
            }
            Ok(())
        }
    }

    macro_rules! println {
        ($($a:tt)*) => {{ let _ = writeln!(Con, $($a)*); }};
    }

    fn finish(status: ExitStatus, msg: fmt::Arguments<'_>) -> ! {
        let v = if status == ExitStatus::Success { "pass" } else { "fail" };
        println!("samara: result: {v}: {msg}");
        exit::exit_qemu(status)
    }

    static EXPECTED_FAULT: AtomicU64 = AtomicU64::new(0);

    #[no_mangle]
    pub extern "Rust" fn samara_main(info: &'static BootInfo) -> ! {
        println!();
        println!("Samara {} ({})", env!("CARGO_PKG_VERSION"), arch::imp::NAME);
        println!("  cpu:      {}", cpu::description());
        println!("  platform: {}, {} CPU(s)", info.platform, info.cpu_count);
        println!(
            "  memory:   {} KiB usable, {} KiB kernel",
            info.memory.total(RegionKind::Usable) >> 10,
            info.memory.total(RegionKind::Kernel) >> 10
        );
        let _ = write!(Con, "{}", info.memory);
        println!("  cmdline:  \"{}\"", info.cmdline.as_str());
        let mut test = None;
        for (k, v) in info.cmdline.args() {
            match (k, v) {
                ("test", Some(t)) => test = Some(t),
                _ => finish(ExitStatus::Failure, format_args!("unknown kernel argument {k}")),
            }
        }
        match test {
            Some("boot") | None => finish(ExitStatus::Success, format_args!("test boot")),
            Some("pagefault") => {
                let addr = paging::UNMAPPED_KERNEL_ADDR;
                EXPECTED_FAULT.store(addr, Ordering::Relaxed);
                println!("test pagefault: reading {addr:#x}");
                // SAFETY: meant to fault; the handler ends the run.
                let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
                finish(ExitStatus::Failure, format_args!("read returned {v:#x}"))
            }
            Some("panic") => panic!("deliberate panic (test=panic)"),
            Some(t) => finish(ExitStatus::Failure, format_args!("unknown test {t}")),
        }
    }

    #[no_mangle]
    pub extern "Rust" fn samara_kernel_fault(r: &FaultReport) -> ! {
        println!(
            "kernel fault: {:?} access to {:#x} at pc {:#x} (present {}, user {}, cause {:#x})",
            r.access, r.address, r.pc, r.present, r.user, r.raw
        );
        let e = EXPECTED_FAULT.load(Ordering::Relaxed);
        if e != 0 && r.address == e && r.access == AccessKind::Read && !r.present && !r.user {
            finish(ExitStatus::Success, format_args!("test pagefault: caught"))
        }
        finish(ExitStatus::Failure, format_args!("unexpected kernel fault"))
    }

    #[panic_handler]
    fn panic(info: &PanicInfo<'_>) -> ! {
        if let Some(l) = info.location() {
            println!("\nkernel panicked at {}:{}:{}:\n{}", l.file(), l.line(), l.column(), info.message());
        }
        println!("samara: result: fail: kernel panic");
        exit::exit_qemu(ExitStatus::Failure)
    }
}
