//! CPU identification (PRId) and halting.

use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use super::cp0::{self, status};
use super::smp::MAX_CPUS;

/// PRId fields: company (23:16), implementation (15:8), revision (7:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prid(pub u32);

impl Prid {
    pub const fn company(self) -> u8 {
        (self.0 >> 16) as u8
    }
    pub const fn implementation(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub const fn revision(self) -> u8 {
        self.0 as u8
    }

    /// The company's name, for the companies the MIPS world has assigned.
    pub const fn company_name(self) -> &'static str {
        match self.company() {
            0x00 => "legacy (pre-MIPS32)",
            0x01 => "MIPS Technologies",
            0x02 => "Broadcom",
            0x03 => "Alchemy",
            0x04 => "SiByte",
            0x05 => "SandCraft",
            0x06 => "Philips",
            0x07 => "Toshiba",
            0x08 => "LSI Logic",
            0x0b => "Lexra",
            0x0c => "NetLogic",
            0x0d => "Cavium",
            0x14 => "Loongson",
            0xe1 => "Ingenic",
            _ => "unknown company",
        }
    }

    /// The Cavium part and generation for a Cavium implementation number
    /// (the numbers Linux's `cpu_probe_cavium` recognises).
    pub const fn cavium_model(self) -> Option<(&'static str, &'static str)> {
        if self.company() != 0x0d {
            return None;
        }
        Some(match self.implementation() {
            0x00 => ("CN38XX", "Octeon"),
            0x01 => ("CN31XX", "Octeon"),
            0x02 => ("CN30XX", "Octeon"),
            0x03 => ("CN58XX", "Octeon+"),
            0x04 => ("CN56XX", "Octeon+"),
            0x06 => ("CN50XX", "Octeon+"),
            0x07 => ("CN52XX", "Octeon+"),
            0x90 => ("CN63XX", "Octeon II"),
            0x91 => ("CN68XX", "Octeon II"),
            0x92 => ("CN66XX", "Octeon II"),
            0x93 => ("CN61XX", "Octeon II"),
            0x94 => ("CNF71XX", "Octeon II"),
            0x95 => ("CN78XX", "Octeon III"),
            0x96 => ("CN70XX", "Octeon III"),
            0x97 => ("CN73XX", "Octeon III"),
            0x98 => ("CNF75XX", "Octeon III"),
            _ => return None,
        })
    }
}

impl fmt::Display for Prid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cavium_model() {
            Some((part, generation)) => write!(f, "Cavium {generation} {part}")?,
            None => write!(
                f,
                "{} implementation {:#04x}",
                self.company_name(),
                self.implementation()
            )?,
        }
        write!(
            f,
            " (PRId {:#010x}: company {:#04x}, implementation {:#04x}, revision {:#04x})",
            self.0,
            self.company(),
            self.implementation(),
            self.revision()
        )
    }
}

/// What the banner prints about the boot CPU.
pub struct Description {
    pub prid: Prid,
    /// TLB entries found working at boot.
    pub tlb_entries: usize,
    /// TLB entries the Config registers advertise.
    pub tlb_advertised: usize,
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {} TLB entries", self.prid, self.tlb_entries)?;
        if self.tlb_advertised != self.tlb_entries {
            write!(f, " ({} advertised)", self.tlb_advertised)?;
        }
        Ok(())
    }
}

/// The boot CPU as the banner prints it: decoded PRId (raw value included)
/// and the TLB size found at boot.
pub fn description() -> Description {
    Description {
        prid: Prid(cp0::prid() as u32),
        tlb_entries: super::tlb::entries(),
        tlb_advertised: super::tlb::advertised_entries(),
    }
}

/// This CPU's number (EBase.CPUNum).
pub fn id() -> u32 {
    cp0::cpu_num()
}

/// Stops this CPU with interrupts off. `wait` with IE clear sleeps until an
/// interrupt is pending even though it will not be taken; the loop covers
/// that wake-up.
pub fn halt_forever() -> ! {
    // SAFETY: clearing IE only masks interrupts; nothing on this CPU runs again, so no code depends on them.
    unsafe { cp0::set_status(cp0::status() & !cp0::status::IE) };
    loop {
        // SAFETY: `wait` idles the pipeline until an interrupt is pending; it has no other architectural effect.
        unsafe { asm!("wait", options(nomem, nostack, preserves_flags)) };
    }
}

/// Per CPU: inside [`idle_wait`] (read by the timer interrupt).
static IDLE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Whether this CPU is inside [`idle_wait`].
pub fn in_idle() -> bool {
    IDLE[cp0::cpu_num() as usize % MAX_CPUS].load(Ordering::Relaxed)
}

/// Idles until the next interrupt: enables interrupts, `wait`s, and
/// disables them again after the interrupt (the timer tick, reported to the
/// kernel as [`super::trap::TickFrom::Idle`]) was handled.
///
/// An interrupt that arrives after interrupts are enabled but before the
/// `wait` would leave the `wait` sleeping until the next one; the
/// interrupt handler therefore moves an EPC that points at the `wait` past
/// it ([`skip_wait`]), so that interrupt ends the idle period like any other
/// (Linux's `__r4k_wait` rollback does the same with a region). There are no
/// IPIs: the kernel's wake-ups reach an idle CPU at its next tick.
pub fn idle_wait() {
    let cpu = cp0::cpu_num() as usize % MAX_CPUS;
    // Relaxed: read by this CPU's own interrupt handler only.
    IDLE[cpu].store(true, Ordering::Relaxed);
    // SAFETY: enabling interrupts here is the kernel's rule (idle and user mode only); the timer handler runs on this stack and returns into `samara_mips_idle`, which clears IE again before it returns.
    unsafe { samara_mips_idle() };
    IDLE[cpu].store(false, Ordering::Relaxed);
}

global_asm!(
    r#"
    .text
    .set push
    .set noreorder
    .set noat
    .globl samara_mips_idle
    .type samara_mips_idle, @function
samara_mips_idle:
    mfc0    $t0, $12
    ori     $t0, $t0, {ie}
    mtc0    $t0, $12                    # interrupts on
    ehb
    .globl samara_mips_idle_wait
samara_mips_idle_wait:
    wait
    mfc0    $t0, $12
    ori     $t0, $t0, {ie}
    xori    $t0, $t0, {ie}
    mtc0    $t0, $12                    # interrupts off
    jr.hb   $ra
    nop
    .size samara_mips_idle, . - samara_mips_idle
    .set pop
"#,
    ie = const status::IE,
);

unsafe extern "C" {
    /// Enables interrupts, `wait`s, disables them; clobbers only t0.
    fn samara_mips_idle();
    static samara_mips_idle_wait: u8;
}

/// How soon a CPU in [`relax_wait`] looks again: every 50 us.
const RELAX_WAKE_PER_SECOND: u64 = 20_000;

/// Per CPU: inside [`relax_wait`] (read by the timer interrupt).
static RELAX: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Whether this CPU is inside [`relax_wait`].
pub fn in_relax() -> bool {
    RELAX[cp0::cpu_num() as usize % MAX_CPUS].load(Ordering::Relaxed)
}

/// Waits for the next timer interrupt from inside a kernel spin loop,
/// yielding the emulator meanwhile (see `board::YIELD_WHEN_SPINNING`):
/// interrupts are enabled around the `wait`, but the interrupt handler,
/// seeing [`in_relax`], only acknowledges the timer — it runs no kernel
/// code, so whatever the spinning code holds is never re-entered, and the
/// kernel's interrupt rule holds for everything but that handler. A no-op
/// until this CPU's timer runs (nothing would end the `wait`).
pub fn relax_wait() {
    if !super::timer::started() {
        return;
    }
    // Wake up soon rather than at the next tick: handoffs between vCPUs
    // (a lock released, a request answered) are then not rounded up to a
    // whole tick, which lets a lock's waiters starve behind a busy writer.
    super::timer::wake_within(super::smp::count_hz() / RELAX_WAKE_PER_SECOND);
    let cpu = cp0::cpu_num() as usize % MAX_CPUS;
    // Relaxed: read by this CPU's own interrupt handler only.
    RELAX[cpu].store(true, Ordering::Relaxed);
    // SAFETY: interrupts on for the `wait` only; the handler does nothing but acknowledge the timer while RELAX is set (see above).
    unsafe { samara_mips_idle() };
    RELAX[cpu].store(false, Ordering::Relaxed);
}

/// Called by the interrupt handler for an interrupt taken in idle: if it
/// interrupted [`idle_wait`] just before its `wait`, resume after it.
pub fn skip_wait(epc: &mut u64) {
    if *epc == (&raw const samara_mips_idle_wait) as u64 {
        *epc += 4;
    }
}

/// Makes `len` bytes of instructions just written at `addr` (a kernel
/// address: XKPHYS or CKSEG0) visible to instruction fetch on every CPU:
/// `synci` on each line (MIPS r2; Octeon's caches keep the rest coherent),
/// then `sync`. QEMU models no caches; real Octeons need this before user
/// code copied by the kernel runs.
pub fn sync_icache(addr: u64, len: u64) {
    let step: u64;
    // SAFETY: `rdhwr $1` (SYNCI_Step) is always allowed in kernel mode.
    unsafe {
        asm!(".set push", ".set mips64r2", "rdhwr {0}, $1", ".set pop", out(reg) step, options(nomem, nostack, preserves_flags))
    };
    if step != 0 {
        let mut a = addr & !(step - 1);
        while a < addr + len {
            // SAFETY: `synci` only writes back and invalidates cache lines of an address the kernel may access.
            unsafe { asm!("synci 0({0})", in(reg) a, options(nostack, preserves_flags)) };
            a += step;
        }
    }
    // SAFETY: a full barrier; no other effect.
    unsafe { asm!("sync", options(nostack, preserves_flags)) };
}
