//! CPU numbering and starting the application processors (APs).
//!
//! The boot CPU learns the CPUs from the ACPI MADT (`boot::acpi`); logical
//! CPU 0 is the boot CPU, the others follow in table order. Each AP is
//! started with INIT-SIPI-SIPI into a real-mode trampoline copied to
//! [`TRAMPOLINE`] (below 1 MiB, as SIPI requires), one at a time:
//!
//! 1. 16-bit: load the trampoline's GDT, set CR0.PE, far-jump to 32-bit code.
//! 2. 32-bit: CR4.PAE|PGE, CR3 = the trampoline PML4 (below 4 GiB, identity
//!    maps the first 2 MiB and shares the kernel's upper-half entries),
//!    EFER.LME|NXE|SCE, CR0.PG|WP (and clear the CD/NW an AP starts with),
//!    far-jump to 64-bit code.
//! 3. 64-bit: load the stack and argument the boot CPU left at
//!    [`PARAMS`] and jump to [`ap_entry`] in the higher half, which loads the
//!    kernel's own page tables and sets the CPU up like the boot CPU.
//!
//! Memory at 0x8000..0xc000 is conventional RAM on every PC (the E820 map
//! lists 0..0x9fc00 as RAM), and nothing in it is needed any more when the
//! APs start: the boot data were copied and the ACPI tables parsed first.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use alloc::boxed::Box;

use super::gdt::CpuTables;
use super::percpu::PerCpu;
use super::{apic, console, cpu, gdt, mmu, paging, percpu, syscall, timer, trap};

/// Most CPUs Samara drives (matches `mm::cpu::MAX_CPUS`).
pub const MAX_CPUS: usize = 64;

/// Where the trampoline runs (SIPI vector 0x08).
const TRAMPOLINE: u64 = 0x8000;
/// Parameters the trampoline reads: CR3, stack, argument, entry.
const PARAMS: u64 = 0x8f00;
const TRAMP_PML4: u64 = 0x9000;
const TRAMP_PDPT: u64 = 0xa000;
const TRAMP_PD: u64 = 0xb000;
/// Initial (then idle) stack of each AP.
const AP_STACK_SIZE: usize = 64 * 1024;

static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);
static STARTED: AtomicUsize = AtomicUsize::new(1);

/// This CPU's logical number.
#[inline(always)]
pub fn this_cpu() -> usize {
    percpu::cpu()
}

/// CPUs in the MADT that Samara may start (the boot CPU included).
pub fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::Relaxed)
}

/// The APIC ID of logical CPU `cpu`.
pub fn apic_id(cpu: usize) -> u32 {
    APIC_IDS[cpu].load(Ordering::Relaxed)
}

/// Records the CPUs: the boot CPU (APIC ID `boot_apic`) as CPU 0, then the
/// others of `madt_ids` in order. Boot CPU, before `start_secondaries`.
pub fn set_cpus(boot_apic: u32, madt_ids: &[u32]) {
    APIC_IDS[0].store(boot_apic, Ordering::Relaxed);
    let mut n = 1;
    for &id in madt_ids
        .iter()
        .filter(|&&id| id != boot_apic)
        .take(MAX_CPUS - 1)
    {
        APIC_IDS[n].store(id, Ordering::Relaxed);
        n += 1;
    }
    CPU_COUNT.store(n, Ordering::Relaxed);
}

global_asm!(
    r#"
    .section .rodata.samara_ap_trampoline, "a"
    .balign 16
    .global samara_ap_trampoline_start
samara_ap_trampoline_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (ap_tramp_gdtr - samara_ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $({base} + ap_tramp32 - samara_ap_trampoline_start)

    .code32
ap_tramp32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0xa0, %eax
    movl %eax, %cr4
    movl {params}, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x901, %eax
    wrmsr
    movl %cr0, %eax
    andl $0x9fffffff, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl $0x18, $({base} + ap_tramp64 - samara_ap_trampoline_start)

    .code64
ap_tramp64:
    movq {params} + 8, %rsp
    movq {params} + 16, %rdi
    movq {params} + 24, %rax
    jmpq *%rax

    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
ap_tramp_gdtr:
    .word 31
    .long {base} + ap_tramp_gdt - samara_ap_trampoline_start
    .global samara_ap_trampoline_end
samara_ap_trampoline_end:
    .text
    "#,
    base = const TRAMPOLINE,
    params = const PARAMS,
    options(att_syntax),
);

unsafe extern "C" {
    static samara_ap_trampoline_start: u8;
    static samara_ap_trampoline_end: u8;
}

/// What the boot CPU hands one AP.
struct ApBoot {
    cpu: usize,
    percpu: *mut PerCpu,
    tables: *mut CpuTables,
    online: AtomicBool,
}

#[repr(C, align(16))]
struct ApStack([u8; AP_STACK_SIZE]);

fn write_phys(pa: u64, v: u64) {
    // SAFETY: callers pass addresses of the trampoline page and its page tables (0x8000..0xc000), conventional RAM nobody else uses while the boot CPU starts APs one by one (see the module docs).
    unsafe { (paging::phys_to_virt(pa) as *mut u64).write_volatile(v) };
}

/// Copies the trampoline and builds its page tables.
fn install_trampoline() {
    let start = core::ptr::addr_of!(samara_ap_trampoline_start);
    let len = core::ptr::addr_of!(samara_ap_trampoline_end) as usize - start as usize;
    assert!(
        len <= (PARAMS - TRAMPOLINE) as usize,
        "AP trampoline too large"
    );
    // SAFETY: the source is the trampoline's bytes in .rodata; the destination is the trampoline page (see `write_phys`).
    unsafe {
        core::ptr::copy_nonoverlapping(start, paging::phys_to_virt(TRAMPOLINE), len);
        core::ptr::write_bytes(paging::phys_to_virt(TRAMP_PML4), 0, 3 * 4096);
    }
    const P_RW: u64 = 0x3;
    write_phys(TRAMP_PML4, TRAMP_PDPT | P_RW);
    write_phys(TRAMP_PDPT, TRAMP_PD | P_RW);
    write_phys(TRAMP_PD, 0x83); // 2 MiB page at 0: P | RW | PS
    let kernel = paging::phys_to_virt(paging::kernel_root()) as *const u64;
    for i in 256..512 {
        // SAFETY: the kernel PML4 is a 4 KiB table in the physmap.
        let e = unsafe { kernel.add(i).read_volatile() };
        write_phys(TRAMP_PML4 + 8 * i as u64, e);
    }
}

/// Starts every AP (see the arch contract); returns how many CPUs run.
/// Stops at the first AP that does not come up within a second.
pub fn start_secondaries() -> usize {
    let n = cpu_count();
    if n == 1 {
        return 1;
    }
    install_trampoline();
    for cpu in 1..n {
        let tables: *mut CpuTables = Box::into_raw(Box::<CpuTables>::new_zeroed()).cast();
        let area = Box::into_raw(Box::new(PerCpu::new()));
        // SAFETY: zero bytes are a valid `ApStack`.
        let stack = Box::into_raw(unsafe { Box::<ApStack>::new_zeroed().assume_init() });
        let boot = Box::leak(Box::new(ApBoot {
            cpu,
            percpu: area,
            tables,
            online: AtomicBool::new(false),
        }));
        // The entry is jumped to, not called: leave room for the return
        // address a call would have pushed, so RSP is 8 mod 16 there.
        let top = stack as u64 + AP_STACK_SIZE as u64 - 8;
        write_phys(PARAMS, TRAMP_PML4);
        write_phys(PARAMS + 8, top);
        write_phys(PARAMS + 16, boot as *const ApBoot as u64);
        write_phys(PARAMS + 24, ap_entry as *const () as u64);
        let id = apic_id(cpu);
        apic::send_init(id);
        timer::delay_us(10_000);
        for _ in 0..2 {
            apic::send_startup(id, (TRAMPOLINE >> 12) as u8);
            timer::delay_us(200);
        }
        let deadline = timer::cycles() + timer::cycles_per_second();
        // Acquire pairs with the AP's Release store in `ap_entry`: its setup
        // is done before we reuse the trampoline parameters.
        while !boot.online.load(Ordering::Acquire) {
            if timer::cycles() > deadline {
                crate::write_display(
                    console::write_bytes,
                    &format_args!(
                        "samara: CPU {cpu} (APIC ID {id}) did not start; running with {cpu} CPU(s)\n"
                    ),
                );
                CPU_COUNT.store(cpu, Ordering::Relaxed);
                return cpu;
            }
            core::hint::spin_loop();
        }
        STARTED.store(cpu + 1, Ordering::Relaxed);
    }
    n
}

/// An AP's first Rust code, on its own stack, with the trampoline's page
/// tables.
extern "C" fn ap_entry(boot: &'static ApBoot) -> ! {
    // SAFETY: the kernel root maps the kernel image, its stacks and the physmap: everything this CPU touches from here on.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) paging::kernel_root(), options(nostack)) };
    // SAFETY: `tables` and `percpu` were allocated for this CPU alone and are never freed; interrupts are off.
    unsafe {
        gdt::load(boot.tables);
        percpu::install(boot.percpu, boot.cpu, boot.tables);
    }
    trap::load();
    cpu::init_features();
    syscall::init_cpu();
    mmu::init_cpu();
    apic::init_cpu();
    // Release pairs with the Acquire load in `start_secondaries`.
    boot.online.store(true, Ordering::Release);
    crate::hooks::secondary_main(boot.cpu)
}
