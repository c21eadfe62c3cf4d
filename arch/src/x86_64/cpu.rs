//! CPU identification (CPUID) and halting.

use core::arch::x86_64::__cpuid;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

/// What CPUID says about the boot CPU: vendor, family/model/stepping and
/// the brand string when the CPU has one.
pub struct Description {
    vendor: [u8; 12],
    family: u32,
    model: u32,
    stepping: u32,
    brand: [u8; 48],
}

/// Reads CPUID leaves 0, 1 and 0x8000_0002..4.
pub fn description() -> Description {
    let l0 = __cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    vendor[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
    let (mut family, mut model, mut stepping) = (0, 0, 0);
    if l0.eax >= 1 {
        let eax = __cpuid(1).eax;
        // SDM vol. 2A, CPUID leaf 1: the extended family adds to the base
        // family only when the base is 0xf; the extended model prefixes the
        // model for families 6 and 0xf.
        let base_family = (eax >> 8) & 0xf;
        let base_model = (eax >> 4) & 0xf;
        stepping = eax & 0xf;
        family = base_family;
        if base_family == 0xf {
            family += (eax >> 20) & 0xff;
        }
        model = base_model;
        if base_family == 0x6 || base_family == 0xf {
            model |= ((eax >> 16) & 0xf) << 4;
        }
    }
    let mut brand = [0u8; 48];
    if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
        for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            let r = __cpuid(leaf);
            for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
                let at = i * 16 + j * 4;
                brand[at..at + 4].copy_from_slice(&reg.to_le_bytes());
            }
        }
    }
    Description {
        vendor,
        family,
        model,
        stepping,
        brand,
    }
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vendor = core::str::from_utf8(&self.vendor).unwrap_or("?");
        write!(
            f,
            "{vendor} family {:#x} model {:#x} stepping {}",
            self.family, self.model, self.stepping
        )?;
        let len = self
            .brand
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.brand.len());
        if let Ok(brand) = core::str::from_utf8(&self.brand[..len]) {
            let brand = brand.trim();
            if !brand.is_empty() {
                write!(f, " \"{brand}\"")?;
            }
        }
        Ok(())
    }
}

/// Whether the CPU can map 1 GiB pages (CPUID 0x8000_0001 EDX bit 26).
pub fn has_1g_pages() -> bool {
    __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 26) != 0
}

/// CPUID leaf 1 ECX bit 31: reserved on hardware, set by hypervisors and
/// emulators (KVM, QEMU TCG, Xen, Hyper-V, VMware) for their guests.
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Whether CPUID says we run under a hypervisor (set by `init_features`).
static HYPERVISOR: AtomicBool = AtomicBool::new(false);

/// Whether this kernel runs as a guest: its CPUs are host threads that the
/// host may deschedule at any instruction (`irq::relax` acts on it).
pub fn under_hypervisor() -> bool {
    HYPERVISOR.load(Ordering::Relaxed)
}

/// CR0 / CR4 bits.
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_TSD: u64 = 1 << 2;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;

/// Sets this CPU's control-register features. Every CPU, once.
///
/// * CR0.EM: no x87/MMX/SSE anywhere. The kernel and the user programs are
///   soft-float (`x86_64-unknown-none`), so the kernel saves no FPU state on
///   a task switch; a user program that executes an FPU or SSE instruction
///   takes #NM or #UD and is killed instead of corrupting another task's
///   registers.
/// * CR4.SMEP and CR4.SMAP when the CPU has them: the kernel never executes
///   or touches user pages through user addresses (it copies through the
///   physmap after walking the page table), so either would catch a bug.
/// * CR4.TSD clear: user mode may read the TSC (`rdtsc`), the counter the
///   user programs time their loops with (`samara_user::cycles`), in the
///   same unit as the kernel's per-fault cycle counts. Cleared explicitly
///   rather than trusting the boot loader's CR4.
pub fn init_features() {
    // Every CPU of a VM reports the same bit; storing it again is harmless.
    HYPERVISOR.store(
        __cpuid(1).ecx & CPUID1_ECX_HYPERVISOR != 0,
        Ordering::Relaxed,
    );
    let l7 = if __cpuid(0).eax >= 7 {
        core::arch::x86_64::__cpuid_count(7, 0).ebx
    } else {
        0
    };
    // SAFETY: setting EM and clearing TS only changes which FPU instructions trap; SMEP/SMAP are set only when CPUID reports them, and no kernel code accesses user addresses; clearing TSD only lets user mode read the TSC.
    unsafe {
        let mut cr0: u64;
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nostack, nomem));
        cr0 = (cr0 | CR0_EM) & !CR0_TS;
        core::arch::asm!("mov cr0, {}", in(reg) cr0, options(nostack));
        let mut cr4: u64;
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nostack, nomem));
        cr4 &= !CR4_TSD;
        if l7 & (1 << 7) != 0 {
            cr4 |= CR4_SMEP;
        }
        if l7 & (1 << 20) != 0 {
            cr4 |= CR4_SMAP;
        }
        core::arch::asm!("mov cr4, {}", in(reg) cr4, options(nostack));
    }
}

/// Whether CR4.SMAP is on (for the banner).
pub fn smap() -> bool {
    let cr4: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nostack, nomem)) };
    cr4 & CR4_SMAP != 0
}

/// Stops this CPU for good: interrupts off, then `hlt` in a loop (an NMI
/// would wake `hlt`, hence the loop).
pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}
