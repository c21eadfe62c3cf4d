//! The local APIC (x2APIC when the CPU has it, xAPIC otherwise) and the
//! legacy 8259 PICs, which are remapped and masked.
//!
//! x2APIC registers are MSRs `0x800 + (offset >> 4)`; xAPIC registers are
//! the same offsets in the 4 KiB MMIO page at `IA32_APIC_BASE` (0xfee0_0000
//! on every PC), reached through the physmap. The physmap maps that region
//! write-back like RAM, which is wrong for MMIO: [`init_boot`] marks the
//! 2 MiB physmap page holding it uncacheable (PCD | PWT) before first use.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::instructions::port::Port;

use super::{msr, paging};

// Register offsets (SDM vol. 3A, table 10-1).
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration 0b0011: divide the timer clock by 16.
pub const TIMER_DIVIDE_16: u32 = 0x3;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_MODE_INIT: u32 = 0b101 << 8;
const ICR_MODE_STARTUP: u32 = 0b110 << 8;

static X2APIC: AtomicBool = AtomicBool::new(false);
/// Virtual address of the xAPIC MMIO page (unused in x2APIC mode).
static XAPIC_VIRT: AtomicU64 = AtomicU64::new(0);

/// Whether the CPU has an x2APIC (CPUID.1:ECX[21]).
fn has_x2apic() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 21) != 0
}

/// Whether the LAPIC runs in x2APIC mode.
pub fn x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

fn read(reg: u32) -> u32 {
    if x2apic() {
        // SAFETY: x2APIC mode is enabled on this CPU, so the register's MSR exists.
        unsafe { msr::read(0x800 + (reg >> 4)) as u32 }
    } else {
        let p = (XAPIC_VIRT.load(Ordering::Relaxed) + u64::from(reg)) as *const u32;
        // SAFETY: the xAPIC page is mapped uncacheable at XAPIC_VIRT (init_boot) and `reg` is a register offset inside it.
        unsafe { p.read_volatile() }
    }
}

fn write(reg: u32, value: u32) {
    if x2apic() {
        // SAFETY: as in `read`.
        unsafe { msr::write(0x800 + (reg >> 4), u64::from(value)) }
    } else {
        let p = (XAPIC_VIRT.load(Ordering::Relaxed) + u64::from(reg)) as *mut u32;
        // SAFETY: as in `read`.
        unsafe { p.write_volatile(value) }
    }
}

/// Remaps the 8259 PICs to vectors 0x30..0x40 (away from the exceptions)
/// and masks every line: Samara uses only the local APIC.
fn disable_pic() {
    let out = |port: u16, v: u8| {
        // SAFETY: ports 0x20/0x21/0xa0/0xa1 are the 8259s of every PC; the ICW sequence below is the standard initialisation.
        unsafe { Port::<u8>::new(port).write(v) }
    };
    let base = super::trap::PIC_BASE_VECTOR;
    out(0x20, 0x11); // ICW1: init, ICW4 follows
    out(0xa0, 0x11);
    out(0x21, base); // ICW2: vector base
    out(0xa1, base + 8);
    out(0x21, 4); // ICW3: slave on IRQ 2
    out(0xa1, 2);
    out(0x21, 1); // ICW4: 8086 mode
    out(0xa1, 1);
    out(0x21, 0xff); // mask everything
    out(0xa1, 0xff);
}

/// Boot CPU: masks the PICs, chooses the APIC mode, maps the xAPIC page if
/// needed, and enables this CPU's LAPIC.
pub fn init_boot() {
    disable_pic();
    X2APIC.store(has_x2apic(), Ordering::Relaxed);
    if !x2apic() {
        // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC.
        let base = unsafe { msr::read(msr::IA32_APIC_BASE) } & APIC_BASE_ADDR_MASK;
        paging::make_uncacheable(base);
        XAPIC_VIRT.store(paging::phys_to_virt(base) as u64, Ordering::Relaxed);
    }
    init_cpu();
}

/// Enables this CPU's LAPIC (in the mode [`init_boot`] chose), accepts
/// every priority, and masks its timer until `timer::start_tick`.
pub fn init_cpu() {
    // SAFETY: IA32_APIC_BASE exists; setting EN (and EXTD when the CPU has an x2APIC, which init_boot checked) is the architectural enable sequence, xAPIC to x2APIC being a legal transition.
    unsafe {
        let mut v = msr::read(msr::IA32_APIC_BASE) | APIC_BASE_ENABLE;
        if x2apic() {
            v |= APIC_BASE_X2APIC;
        }
        msr::write(msr::IA32_APIC_BASE, v);
    }
    write(REG_TPR, 0);
    write(
        REG_LVT_TIMER,
        LVT_MASKED | u32::from(super::trap::TIMER_VECTOR),
    );
    write(
        REG_SVR,
        SVR_ENABLE | u32::from(super::trap::SPURIOUS_VECTOR),
    );
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    let v = read(REG_ID);
    if x2apic() {
        v
    } else {
        v >> 24
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Writes the interrupt command register: `low` to the CPU `dest`.
fn send(dest: u32, low: u32) {
    if x2apic() {
        // SAFETY: x2APIC mode is on; the ICR is one 64-bit MSR write.
        unsafe { msr::write(0x830, (u64::from(dest) << 32) | u64::from(low)) };
    } else {
        write(REG_ICR_HIGH, dest << 24);
        write(REG_ICR_LOW, low);
        while read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
            core::hint::spin_loop();
        }
    }
}

/// Sends a fixed, edge-triggered interrupt with `vector` to APIC `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    send(dest, u32::from(vector));
}

/// INIT (level assert) to APIC `dest`.
pub fn send_init(dest: u32) {
    send(dest, ICR_MODE_INIT | ICR_LEVEL_ASSERT);
}

/// STARTUP with the real-mode entry page `page` (entry = page * 4096).
pub fn send_startup(dest: u32, page: u8) {
    send(dest, ICR_MODE_STARTUP | ICR_LEVEL_ASSERT | u32::from(page));
}

/// Starts the timer counting down from `count` (divide by 16), one shot
/// and masked: for calibration.
pub fn timer_start_oneshot_masked(count: u32) {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(
        REG_LVT_TIMER,
        LVT_MASKED | u32::from(super::trap::TIMER_VECTOR),
    );
    write(REG_TIMER_INIT, count);
}

/// The timer's current count.
pub fn timer_current() -> u32 {
    read(REG_TIMER_CURRENT)
}

/// Starts the timer counting down from `count` (divide by 16), one shot,
/// interrupting at zero: the tick and the relax wake-up (`timer`). Writing
/// the initial count restarts the countdown, so this replaces any shot in
/// flight; an interrupt the previous shot already raised stays pending.
pub fn timer_start_oneshot(count: u32) {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, u32::from(super::trap::TIMER_VECTOR));
    write(REG_TIMER_INIT, count);
}
