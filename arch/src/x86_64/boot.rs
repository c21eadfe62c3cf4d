//! PVH entry: 32-bit stub, boot page tables, long mode, then Rust.
//!
//! QEMU (and Xen, Firecracker, cloud-hypervisor) enter a PVH kernel at the
//! 32-bit physical address in its `XEN_ELFNOTE_PHYS32_ENTRY` note with:
//! protected mode, paging off, flat 4 GiB CS/DS/ES/SS, interrupts off, EBX =
//! physical address of `struct hvm_start_info`, and no usable stack.
//!
//! The stub (in `.boot.text`, identity mapped at 1 MiB) zeroes `.boot.bss`
//! and `.bss`, then builds these boot page tables out of `.boot.bss`, all with
//! 2 MiB pages:
//!
//! ```text
//!   PML4[0]   -> boot_pdpt_low : PA 0..4 GiB at VA 0        (identity; dropped in Rust)
//!   PML4[256] -> boot_pdpt_low : PA 0..4 GiB at PHYSMAP_BASE (0xffff_8000_0000_0000)
//!   PML4[511] -> boot_pdpt_high: [510] PA 0..1 GiB, [511] PA 1..2 GiB
//!                                at KERNEL_VMA (0xffff_ffff_8000_0000)
//! ```
//!
//! It sets CR4.PAE|PGE, EFER.LME, CR0.PG|WP, loads a three-entry boot GDT and
//! far-returns into 64-bit code, which jumps to the higher-half
//! `x86_64_higher_half`: load the boot stack (in `.bss`, higher half) and call
//! [`x86_64_start`] with the start-info address.

use core::arch::global_asm;

use boot::pvh::{self, PhysMem};
use boot::{acpi, BootInfo};
use spin::Once;

use super::percpu::PerCpu;
use super::{apic, console, cpu, exit, gdt, mmu, paging, percpu, smp, syscall, timer, trap};
use crate::ExitStatus;

/// Stack of the boot CPU until the kernel has a scheduler.
const BOOT_STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; BOOT_STACK_SIZE]);

/// Only touched through `rsp` (the `lea` in the entry code below).
static mut BOOT_STACK: Stack = Stack([0; BOOT_STACK_SIZE]);

global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 8                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32       /* QEMU reads a 64-bit value for ELF64 */
    .balign 4

    .section .boot.bss, "aw", @nobits
    .balign 4096
boot_pml4:       .skip 4096
boot_pdpt_low:   .skip 4096
boot_pdpt_high:  .skip 4096
boot_pd:         .skip 4 * 4096    /* 2048 x 2 MiB = PA 0..4 GiB */
boot_stub_stack: .skip 256
boot_stub_stack_top:

    .section .boot.rodata, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff  /* 0x10: data, DPL 0 */
boot_gdt_end:
    .balign 4
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx                    /* hvm_start_info PA; kept in esi to Rust */

    /* Zero .boot.bss and .bss (by physical address: paging is off). */
    xor eax, eax
    mov edi, offset __boot_bss_start
    mov ecx, offset __boot_bss_end
    sub ecx, edi
    shr ecx, 2
    rep stosd
    mov edi, offset __bss_phys_start
    mov ecx, offset __bss_phys_end
    sub ecx, edi
    shr ecx, 2
    rep stosd

    mov esp, offset boot_stub_stack_top

    /* boot_pd: 2048 entries, entry i maps PA i * 2 MiB (P | RW | PS). */
    mov edi, offset boot_pd
    xor ecx, ecx
pvh_fill_pd:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [edi + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jb pvh_fill_pd

    /* boot_pdpt_low[0..4] -> the four PDs (P | RW). */
    mov edi, offset boot_pdpt_low
    mov eax, offset boot_pd
    or eax, 0x3
    mov [edi], eax
    add eax, 4096
    mov [edi + 8], eax
    add eax, 4096
    mov [edi + 16], eax
    add eax, 4096
    mov [edi + 24], eax

    /* boot_pdpt_high[510..512] -> PA 0..2 GiB (the kernel's -2 GiB window). */
    mov edi, offset boot_pdpt_high
    mov eax, offset boot_pd
    or eax, 0x3
    mov [edi + 510 * 8], eax
    add eax, 4096
    mov [edi + 511 * 8], eax

    mov edi, offset boot_pml4
    mov eax, offset boot_pdpt_low
    or eax, 0x3
    mov [edi], eax                  /* identity map, for the next few instructions */
    mov [edi + 256 * 8], eax        /* physmap */
    mov eax, offset boot_pdpt_high
    or eax, 0x3
    mov [edi + 511 * 8], eax        /* kernel image */
    mov cr3, edi

    mov eax, cr4
    or eax, 0xa0                    /* PAE | PGE */
    mov cr4, eax
    mov ecx, 0xc0000080             /* IA32_EFER */
    rdmsr
    or eax, 0x100                   /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001              /* PG | WP | PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    mov eax, offset pvh_start64
    push 0x08
    push eax
    retf                            /* reload CS: now in 64-bit mode */

    .code64
pvh_start64:
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov ss, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax
    movabs rax, offset x86_64_higher_half
    jmp rax

    .section .text.x86_64_higher_half, "ax"
x86_64_higher_half:
    lea rsp, [rip + {stack} + {stack_size}]
    mov edi, esi                    /* zero-extends: start_info PA */
    xor ebp, ebp                    /* terminates frame-pointer walks */
    call {start}
    ud2
    "#,
    stack = sym BOOT_STACK,
    stack_size = const BOOT_STACK_SIZE,
    start = sym x86_64_start,
);

unsafe extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Physical memory as the boot physmap shows it: everything below 4 GiB.
struct BootPhysmap;

impl PhysMem for BootPhysmap {
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
        let end = pa.checked_add(len as u64)?;
        if end > paging::BOOT_PHYSMAP_END {
            return None;
        }
        // SAFETY: the boot page tables map PA 0..BOOT_PHYSMAP_END at PHYSMAP_BASE for the kernel's lifetime (the physmap is never unmapped), and we checked the range lies inside it. The boot data read here is not written by anyone while we parse it.
        Some(unsafe { core::slice::from_raw_parts(paging::phys_to_virt(pa), len) })
    }
}

/// The boot CPU's per-CPU area (secondaries allocate theirs).
static mut BOOT_PERCPU: PerCpu = PerCpu::new();

/// Prints `what: err` and ends the run with failure: bad boot data or
/// missing hardware is not a kernel bug.
fn fail(what: &str, err: &dyn core::fmt::Display) -> ! {
    crate::write_display(
        console::write_bytes,
        &format_args!("samara: {what}: {err}\n"),
    );
    exit::exit_qemu(ExitStatus::Failure);
}

/// First Rust code on the boot CPU, on the boot stack, in the higher half.
///
/// Order matters: segments before the GS base (loading a segment register
/// may clear it), the GS base before anything asks which CPU it runs on,
/// the identity map dropped before PCIDs (CR4.PCIDE wants PCID 0 in CR3),
/// the ACPI tables parsed before anything writes low memory, the timer
/// calibrated before the APs are started (their start-up delays use it).
extern "C" fn x86_64_start(start_info_pa: u64) -> ! {
    console::init();
    // SAFETY: the boot CPU's tables and per-CPU area are statics used by this CPU alone; interrupts are off.
    unsafe {
        gdt::load(gdt::boot_tables());
        percpu::install(core::ptr::addr_of_mut!(BOOT_PERCPU), 0, gdt::boot_tables());
    }
    trap::load();
    cpu::init_features();
    syscall::init_cpu();
    // Nothing below runs from the low half any more.
    paging::drop_identity_map();
    mmu::init_cpu();

    // Both symbols are defined by linker/x86_64.ld; only their addresses
    // (physical, as absolute symbols) are used, never their contents.
    let kernel = core::ptr::addr_of!(__kernel_phys_start) as u64
        ..core::ptr::addr_of!(__kernel_phys_end) as u64;
    let mut info = match pvh::parse(&BootPhysmap, start_info_pa, kernel) {
        Ok(info) => info,
        Err(e) => {
            // Bad boot data is the boot loader's fault, not a kernel bug: say
            // what was wrong and stop cleanly.
            console::write_bytes(b"samara: cannot use the PVH start info: ");
            crate::write_display(console::write_bytes, &e);
            console::write_bytes(b"\r\n");
            exit::exit_qemu(ExitStatus::Failure);
        }
    };
    if let Err(e) = paging::extend_physmap(&mut info.memory) {
        fail("cannot map all of RAM", &e);
    }
    apic::init_boot();
    let madt = acpi::find_rsdp(&BootPhysmap, info.acpi_rsdp)
        .and_then(|rsdp| acpi::parse_madt(&BootPhysmap, rsdp));
    match madt {
        Ok(m) => smp::set_cpus(apic::id(), m.apic_ids()),
        Err(e) => {
            // Without a MADT the other CPUs cannot be found: run on this one.
            crate::write_display(
                console::write_bytes,
                &format_args!("samara: no CPU list ({e}); running on the boot CPU only\n"),
            );
            smp::set_cpus(apic::id(), &[]);
        }
    }
    info.cpu_count = smp::cpu_count() as u32;
    if let Err(e) = timer::calibrate() {
        fail("cannot calibrate the timer", &e);
    }
    crate::enter_kernel(BOOT_INFO.call_once(|| info))
}
