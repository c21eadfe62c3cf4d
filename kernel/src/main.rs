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
        let v = if status == ExitStatus::Success {
            "pass"
        } else {
            "fail"
        };
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
                _ => finish(
                    ExitStatus::Failure,
                    format_args!("unknown kernel argument {k}"),
                ),
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
            Some("write") => {
                let addr = paging::UNMAPPED_KERNEL_ADDR + 8;
                // SAFETY: meant to fault.
                unsafe { core::ptr::write_volatile(addr as *mut u64, 1) };
                finish(ExitStatus::Failure, format_args!("write did not fault"))
            }
            Some("exec") => {
                // SAFETY: meant to fault on the instruction fetch.
                let f: extern "C" fn() =
                    unsafe { core::mem::transmute(paging::UNMAPPED_KERNEL_ADDR as usize) };
                f();
                finish(ExitStatus::Failure, format_args!("exec did not fault"))
            }
            Some("adel") => {
                let addr = 0xc000_1000_0000_0000u64;
                // SAFETY: meant to fault (beyond SEGBITS).
                let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
                finish(ExitStatus::Failure, format_args!("adel did not fault {v}"))
            }
            Some("irq") => {
                use arch::imp::cp0;
                let st = cp0::status();
                cp0::set_compare(cp0::count().wrapping_add(10_000) & 0xffff_ffff);
                // SAFETY: IM7 + IE with the timer armed; the trap handler acks it.
                unsafe { cp0::set_status(st | cp0::status::IM7 | cp0::status::IE) };
                let start = cp0::count();
                let mut x = 0u64;
                while cp0::count().wrapping_sub(start) & 0xffff_ffff < 1_000_000 {
                    x = x.wrapping_mul(31).wrapping_add(7);
                }
                // SAFETY: restore.
                unsafe { cp0::set_status(st) };
                let n = arch::imp::trap::TIMER_INTERRUPTS.load(Ordering::Relaxed);
                finish(
                    if n == 1 {
                        ExitStatus::Success
                    } else {
                        ExitStatus::Failure
                    },
                    format_args!("irq: {n} timer interrupts, x={x:#x}"),
                )
            }
            Some("highmem") => {
                let top = info.memory.regions().last().unwrap();
                let pa = top.end - 8;
                let p = paging::phys_to_virt(pa) as *mut u64;
                // SAFETY: pa is usable RAM, reached through XKPHYS.
                unsafe { p.write_volatile(0x5a5a_1234_5678_a5a5) };
                // SAFETY: as for the write just above.
                let v = unsafe { p.read_volatile() };
                finish(
                    if v == 0x5a5a_1234_5678_a5a5 {
                        ExitStatus::Success
                    } else {
                        ExitStatus::Failure
                    },
                    format_args!("highmem {pa:#x} via {:#x} read {v:#x}", p as u64),
                )
            }
            Some("smp") => {
                static STARTED: AtomicU64 = AtomicU64::new(0);
                static mut STACKS: [[u64; 2048]; 64] = [[0; 2048]; 64];
                extern "C" fn ap(arg: u64, cpu: u64) -> ! {
                    arch::imp::trap::init();
                    arch::imp::tlb::init();
                    println!("cpu {cpu} up (arg {arg:#x}), ebase cpu {}", cpu::id());
                    STARTED.fetch_add(1, Ordering::SeqCst);
                    cpu::halt_forever()
                }
                let mask = arch::imp::smp::present_mask();
                for c in 1..64u32 {
                    if mask & (1 << c) != 0 {
                        // SAFETY: only the address is taken; CPU c alone uses STACKS[c].
                        let top = unsafe { (&raw mut STACKS[c as usize]) as u64 + 2048 * 8 };
                        // SAFETY: `top` is the top of a stack only CPU c uses; `ap` never returns.
                        unsafe { arch::imp::smp::start_secondary(c, ap, top, 0xabc0 + c as u64) }
                            .unwrap();
                        while STARTED.load(Ordering::SeqCst) < c as u64 {}
                    }
                }
                // SAFETY: both calls are refused before any stack is used.
                let err = unsafe { arch::imp::smp::start_secondary(1, ap, 0, 0) };
                // SAFETY: refused: CPU 77 does not exist.
                let err77 = unsafe { arch::imp::smp::start_secondary(77, ap, 0, 0) };
                println!("second start of cpu1: {err:?}; cpu 77: {err77:?}");
                finish(
                    ExitStatus::Success,
                    format_args!("smp: {} started", STARTED.load(Ordering::SeqCst)),
                )
            }
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
            println!(
                "\nkernel panicked at {}:{}:{}:\n{}",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            );
        }
        println!("samara: result: fail: kernel panic");
        exit::exit_qemu(ExitStatus::Failure)
    }
}
