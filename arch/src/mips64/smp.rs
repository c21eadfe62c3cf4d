//! Secondary CPUs: parking at boot, and releasing them later.
//!
//! With `-smp N`, QEMU's Malta starts every CPU at the kernel entry point at
//! once (there is no CPS/CM on Octeon68XX and no boot ROM spin table); on
//! Octeon boards U-Boot starts every core of the core mask there, with
//! a2 = 0 on all but the boot core. The entry code ([`super::entry`]) sends
//! every CPU but the boot CPU here before it touches the stack or BSS,
//! entirely in assembly:
//!
//! 1. it sets its bit in [`CPUS_PRESENT`] (an `lld`/`scd` OR);
//! 2. it points its own EBase at the parking vectors, arms its Count/Compare
//!    timer and enables only that interrupt (IM7 + IE);
//! 3. it loops: load its [`ReleaseSlot::pc`]; if zero, `wait`. The timer
//!    wakes it every [`PARK_TICK`] counts; the parking vector's only job is
//!    to re-arm Compare (which acknowledges the interrupt) and `eret`.
//!
//! Malta has no inter-processor interrupts (the i8259 reaches CPU 0 only),
//! so polling on a timer tick is the only way to wake a parked CPU; `wait`
//! keeps the idle CPUs from burning host time under TCG meanwhile. Octeon
//! has mailbox IPIs in the CIU, but they need the CIU set up per core; the
//! Count/Compare timer (IP7, as Linux's Octeon clockevent uses it) works on
//! every cnMIPS core as it is, so both platforms share this mechanism.
//!
//! CPUs numbered `MAX_CPUS` or above never announce themselves and sleep in
//! `wait` with interrupts off forever.
//!
//! Both statics live in `.data`, not `.bss`: secondaries use them while the
//! boot CPU is still clearing BSS.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::cp0;

/// Most CPUs Samara drives (matches `mm::cpu::MAX_CPUS`).
pub const MAX_CPUS: usize = 64;

/// Count ticks between two polls of a parked CPU (about 6.5 ms at QEMU
/// Malta's 160 MHz Count rate; shorter on real Octeons, whose Count runs at
/// the core clock).
pub const PARK_TICK: u64 = 1 << 20;

/// One parked CPU's mailbox. The releasing CPU fills `sp` and `arg`, then
/// publishes `pc`; the parked CPU reads `pc`, then the rest.
#[repr(C)]
pub struct ReleaseSlot {
    /// Where the CPU jumps; 0 while it should stay parked.
    pub pc: AtomicU64,
    /// Its initial stack pointer (16-byte aligned top of stack).
    pub sp: AtomicU64,
    /// Passed in a0; a1 carries the CPU number.
    pub arg: AtomicU64,
    _pad: u64,
}

const _: () = assert!(
    core::mem::size_of::<ReleaseSlot>() == 32,
    "entry.rs indexes slots by cpu << 5"
);

/// The mailboxes, indexed by EBase.CPUNum. Read by the parking loop in
/// `entry.rs` (offsets 0, 8, 16).
#[unsafe(export_name = "samara_mips_release")]
#[unsafe(link_section = ".data.samara_smp")]
pub static RELEASE: [ReleaseSlot; MAX_CPUS] = [const {
    ReleaseSlot {
        pc: AtomicU64::new(0),
        sp: AtomicU64::new(0),
        arg: AtomicU64::new(0),
        _pad: 0,
    }
}; MAX_CPUS];

/// Bit n is set once CPU n has parked. Written by the secondaries' `scd`
/// followed by `sync` in `entry.rs`; that `sync` pairs with the Acquire
/// loads in [`present_mask`].
#[unsafe(export_name = "samara_mips_cpus_present")]
#[unsafe(link_section = ".data.samara_smp")]
pub static CPUS_PRESENT: AtomicU64 = AtomicU64::new(0);

/// The CPUs parked so far, as a bit mask (the boot CPU is not included).
pub fn present_mask() -> u64 {
    CPUS_PRESENT.load(Ordering::Acquire)
}

/// Waits until the set of parked CPUs has been stable for `stable` Count
/// ticks, but no longer than `limit` ticks, and returns the number of CPUs
/// including the boot CPU. The Malta protocol does not say how many CPUs
/// exist; under TCG the secondaries may not have run their first
/// instructions when the boot CPU gets here.
pub fn count_cpus(stable: u64, limit: u64) -> u32 {
    let start = cp0::count();
    let mut last = present_mask();
    let mut last_change = start;
    loop {
        let now = cp0::count();
        let mask = present_mask();
        if mask != last {
            last = mask;
            last_change = now;
        }
        // Count is 32 bits wide and wraps; differences are taken modulo 2^32.
        let since_change = now.wrapping_sub(last_change) & 0xffff_ffff;
        let since_start = now.wrapping_sub(start) & 0xffff_ffff;
        if since_change >= stable || since_start >= limit {
            return 1 + last.count_ones();
        }
        core::hint::spin_loop();
    }
}

/// Waits until every CPU of `expected` has parked, but no longer than
/// `limit` Count ticks, and returns the CPUs that parked. For boot
/// protocols that say which CPUs they started (Octeon's core mask).
pub fn wait_for(expected: u64, limit: u64) -> u64 {
    let start = cp0::count();
    loop {
        let mask = present_mask();
        // Count is 32 bits wide and wraps; differences are taken modulo 2^32.
        if mask & expected == expected || cp0::count().wrapping_sub(start) & 0xffff_ffff >= limit {
            return mask;
        }
        core::hint::spin_loop();
    }
}

/// Why a CPU could not be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The CPU never parked (absent, or numbered >= [`MAX_CPUS`]).
    NotPresent(u32),
    /// It was released before.
    AlreadyStarted(u32),
}

/// Releases parked CPU `cpu`: it disables interrupts, loads `stack_top` into
/// sp and jumps to `entry(arg, cpu)`. Its EBase still points at the parking
/// vectors: the entry must call [`super::trap::init`] and
/// [`super::tlb::init`] before anything can fault.
///
/// # Safety
/// `stack_top` must be the 16-byte-aligned top of a stack that nothing else
/// uses, valid for as long as the CPU runs on it, and `entry` must not
/// return (it has nowhere to return to).
pub unsafe fn start_secondary(
    cpu: u32,
    entry: extern "C" fn(arg: u64, cpu: u64) -> !,
    stack_top: u64,
    arg: u64,
) -> Result<(), StartError> {
    let idx = cpu as usize;
    if idx >= MAX_CPUS || present_mask() & (1 << idx) == 0 {
        return Err(StartError::NotPresent(cpu));
    }
    let slot = &RELEASE[idx];
    if slot.pc.load(Ordering::Relaxed) != 0 {
        return Err(StartError::AlreadyStarted(cpu));
    }
    slot.sp.store(stack_top, Ordering::Relaxed);
    slot.arg.store(arg, Ordering::Relaxed);
    // Release: orders the stores above before `pc`. Pairs with the `sync`
    // the parked CPU executes after it sees `pc != 0` (entry.rs).
    slot.pc.store(entry as usize as u64, Ordering::Release);
    Ok(())
}

/// CPUs numbered for the kernel: logical 0 is the boot CPU, the others
/// follow in EBase.CPUNum order. `PHYS_OF[logical]` is the CPUNum.
static PHYS_OF: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// How many CPUs the kernel may use (boot CPU included); 1 until
/// [`number_cpus`] ran.
static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);

/// Numbers the boot CPU (`boot`, its CPUNum) and the parked CPUs in
/// `parked` for the kernel, and makes this the boot CPU's logical number 0.
/// Called once by the board's boot code after the CPUs parked. Returns the
/// count.
pub fn number_cpus(boot: u32, parked: u64) -> usize {
    PHYS_OF[0].store(boot, Ordering::Relaxed);
    let mut n = 1;
    let mut m = parked & !(1u64.checked_shl(boot).unwrap_or(0));
    while m != 0 && n < MAX_CPUS {
        let c = m.trailing_zeros();
        m &= m - 1;
        PHYS_OF[n].store(c, Ordering::Relaxed);
        n += 1;
    }
    CPU_COUNT.store(n, Ordering::Relaxed);
    cp0::set_kscratch_cpu(0);
    n
}

/// This CPU's logical number (0 for the boot CPU, dense up to
/// [`cpu_count`]): KScratch3, set before the CPU runs kernel code.
#[inline(always)]
pub fn this_cpu() -> usize {
    cp0::kscratch_cpu() as usize
}

/// CPUs the kernel may use, the boot CPU included.
pub fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::Relaxed)
}

/// The logical number of the CPU whose EBase.CPUNum is `phys`, if it has
/// one.
pub fn logical_of(phys: u32) -> Option<usize> {
    (0..cpu_count()).find(|&l| PHYS_OF[l].load(Ordering::Relaxed) == phys)
}

/// The EBase.CPUNum of logical CPU `logical`.
pub fn phys_of(logical: usize) -> u32 {
    PHYS_OF[logical % MAX_CPUS].load(Ordering::Relaxed)
}

/// Count register ticks per second (QEMU Malta: 160 MHz, half its 320 MHz
/// clock; Octeon: the core clock from the boot descriptor). Set by the
/// board's boot code.
static COUNT_HZ: AtomicU64 = AtomicU64::new(160_000_000);

/// Records the Count rate (board boot code).
pub fn set_count_hz(hz: u64) {
    if hz != 0 {
        COUNT_HZ.store(hz, Ordering::Relaxed);
    }
}

/// Count register ticks per second.
pub fn count_hz() -> u64 {
    COUNT_HZ.load(Ordering::Relaxed)
}

/// Bytes of each secondary CPU's boot stack (its idle loop runs on it).
#[cfg(samara_tasks)]
const SECONDARY_STACK: usize = 32 * 1024;

/// Set by each secondary once its arch set-up is done (indexed by logical
/// number); Release there, Acquire in [`start_secondaries`].
#[cfg(samara_tasks)]
static ONLINE: [core::sync::atomic::AtomicBool; MAX_CPUS] =
    [const { core::sync::atomic::AtomicBool::new(false) }; MAX_CPUS];

/// Releases every other CPU (logical 1..[`cpu_count`]) from its parking
/// loop onto a fresh stack from the kernel heap: each runs its arch set-up
/// ([`super::init_cpu`]: vectors, TLB, logical number) and calls
/// `samara_secondary_main(cpu)`; the tick is the kernel's to start. Returns
/// how many CPUs run (the boot CPU included); a CPU that does not come up
/// within a second ends the count there.
#[cfg(samara_tasks)]
pub fn start_secondaries() -> usize {
    use alloc::alloc::{alloc_zeroed, Layout};
    let n = cpu_count();
    for (cpu, online) in ONLINE.iter().enumerate().take(n).skip(1) {
        let layout = Layout::from_size_align(SECONDARY_STACK, 16).expect("a valid layout");
        // SAFETY: a non-zero-sized layout.
        let stack = unsafe { alloc_zeroed(layout) };
        if stack.is_null() {
            CPU_COUNT.store(cpu, Ordering::Relaxed);
            return cpu;
        }
        let top = stack as u64 + SECONDARY_STACK as u64;
        // SAFETY: the stack is this CPU's alone, never freed; the entry never returns.
        let r = unsafe { start_secondary(phys_of(cpu), secondary_entry, top, cpu as u64) };
        let deadline = super::timer::cycles() + count_hz();
        // Acquire pairs with the Release store in `secondary_entry`.
        while r.is_ok() && !online.load(Ordering::Acquire) {
            if super::timer::cycles() > deadline {
                break;
            }
            core::hint::spin_loop();
        }
        if r.is_err() || !online.load(Ordering::Acquire) {
            crate::write_display(
                super::console::write_bytes,
                &format_args!(
                    "samara: CPU {cpu} (CPUNum {}) did not start; running with {cpu} CPU(s)\n",
                    phys_of(cpu)
                ),
            );
            CPU_COUNT.store(cpu, Ordering::Relaxed);
            return cpu;
        }
    }
    n
}

/// A secondary's first Rust code, on its own stack, `arg` = its logical
/// number.
#[cfg(samara_tasks)]
extern "C" fn secondary_entry(arg: u64, _cpunum: u64) -> ! {
    if let Err(e) = super::init_cpu() {
        crate::write_display(
            super::console::write_bytes,
            &format_args!("samara: CPU {arg}: {e}; halting it\n"),
        );
        super::cpu::halt_forever();
    }
    cp0::set_kscratch_cpu(arg);
    // Release pairs with the Acquire load in `start_secondaries`.
    ONLINE[arg as usize].store(true, Ordering::Release);
    crate::hooks::secondary_main(arg as usize)
}
