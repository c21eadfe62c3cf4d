//! The kernel entry point `_start`, and the parking code for secondary CPUs.
//!
//! The boot loader jumps here on every CPU with a0..a3 as described in
//! `boot::malta` or `boot::octeon`, in kernel mode. Malta's leaves ERL clear
//! and BEV set; Octeon secondaries started through an NMI arrive with ERL
//! (and BEV) set. `_start`:
//!
//! 1. masks interrupts and leaves exception/error level, sets KX and UX
//!    (64-bit kernel and user segments: XKPHYS/XKSEG reachable, TLB misses
//!    there go to the XTLB refill vector), keeps BEV for now;
//! 2. reads EBase.CPUNum into $t0 and runs the board's boot-CPU test
//!    (`board::park_unless_boot_cpu!`: CPUNum != 0 on Malta, a2 == 0 on
//!    Octeon): every other CPU goes to `samara_mips_park` without touching
//!    memory other than the `.data` mailboxes;
//! 3. the boot CPU loads sp/gp, clears BSS with 8-byte stores, installs the
//!    kernel's exception vectors in EBase and clears BEV, then calls
//!    `samara_mips_boot(a0, a1, a2, a3)` (see `boot.rs`) with the boot
//!    loader's registers untouched.
//!
//! Everything runs with `noreorder` (delay slots are explicit) and `noat`
//! (`dla` then expands without $at, into six instructions using only its
//! destination register).

use core::arch::global_asm;

use super::board::park_unless_boot_cpu;
use super::cp0::status;
use super::smp::{MAX_CPUS, PARK_TICK};

global_asm!(
    concat!(
        r#"
    .section .text.entry, "ax"
    .globl _start
    .type _start, @function
    .set push
    .set noreorder
    .set noat
_start:
    mfc0    $t0, $12
    li      $t1, {status_clear}
    and     $t0, $t0, $t1
    li      $t1, {status_set}
    or      $t0, $t0, $t1
    mtc0    $t0, $12
    ehb

    mfc0    $t0, $15, 1                 # EBase
    andi    $t0, $t0, 0x3ff             # CPUNum
"#,
        park_unless_boot_cpu!(),
        r#"
    dla     $sp, __boot_stack_top
    dla     $gp, _gp

    dla     $t0, __bss_start
    dla     $t1, __bss_end
1:  beq     $t0, $t1, 2f
    nop
    sd      $zero, 0($t0)
    b       1b
    daddiu  $t0, $t0, 8
2:
    dla     $t0, samara_mips_vectors
    mtc0    $t0, $15, 1                 # EBase: bits 29:12 only, 31:30 stay 0b10
    ehb
    mfc0    $t1, $12
    li      $t2, {bev_clear}
    and     $t1, $t1, $t2
    mtc0    $t1, $12
    ehb

    jal     samara_mips_boot
    nop
3:  wait
    b       3b
    nop
    .size _start, . - _start

# A secondary CPU, $t0 = CPUNum. Uses only $t0-$t3 and memory in .data.
    .globl samara_mips_park
    .type samara_mips_park, @function
samara_mips_park:
    sltiu   $t1, $t0, {max_cpus}
    beqz    $t1, 9f
    nop

    dla     $t2, samara_mips_cpus_present
    li      $t1, 1
    dsllv   $t1, $t1, $t0
4:  lld     $t3, 0($t2)
    or      $t3, $t3, $t1
    scd     $t3, 0($t2)
    beqz    $t3, 4b
    nop
    sync                                # pairs with smp::present_mask's Acquire

    dla     $t1, samara_mips_park_vectors
    mtc0    $t1, $15, 1
    ehb
7:  mfc0    $t1, $9                     # Count
    li      $t3, {park_tick}
    addu    $t1, $t1, $t3
    mtc0    $t1, $11                    # Compare = Count + PARK_TICK
    ehb
    mfc0    $t3, $9
    subu    $t3, $t1, $t3               # Compare - Count, 32-bit signed
    blez    $t3, 7b                     # already passed: no tick for 2^32
    nop
    mfc0    $t1, $12
    li      $t3, {bev_clear}
    and     $t1, $t1, $t3
    ori     $t1, $t1, {im7_ie}
    mtc0    $t1, $12                    # BEV off, IM7 + IE on
    ehb

    dla     $t2, samara_mips_release
    dsll    $t3, $t0, 5                 # sizeof(ReleaseSlot) == 32
    daddu   $t2, $t2, $t3
5:  ld      $t3, 0($t2)                 # slot.pc
    bnez    $t3, 6f
    nop
    wait
    b       5b
    nop
6:  sync                                # pairs with start_secondary's Release store
    mfc0    $t1, $12
    li      $t0, {irq_clear}
    and     $t1, $t1, $t0
    mtc0    $t1, $12                    # interrupts off again
    ehb
    ld      $sp, 8($t2)
    ld      $a0, 16($t2)
    mfc0    $a1, $15, 1
    andi    $a1, $a1, 0x3ff
    jr      $t3
    nop

9:  mfc0    $t1, $12                    # beyond MAX_CPUS: sleep forever
    li      $t3, {irq_clear}
    and     $t1, $t1, $t3
    mtc0    $t1, $12
    ehb
10: wait
    b       10b
    nop
    .size samara_mips_park, . - samara_mips_park

# Parking vectors: EBase of parked CPUs. Only the timer interrupt is enabled;
# re-arm Compare (which clears it), making sure Count has not already passed
# it (a CPU held up between the two would wait a whole 2^32-tick wrap), and
# return to the polling loop.
    .section .text.vectors.park, "ax"
    .balign 4096
    .globl samara_mips_park_vectors
samara_mips_park_vectors:
    .org 0x000
    b       samara_mips_park_dead
    nop
    .org 0x080
    b       samara_mips_park_dead
    nop
    .org 0x100
    b       samara_mips_park_dead
    nop
    .org 0x180
12: mfc0    $k0, $9
    li      $k1, {park_tick}
    addu    $k0, $k0, $k1
    mtc0    $k0, $11
    ehb
    mfc0    $k1, $9
    subu    $k1, $k0, $k1               # Compare - Count, 32-bit signed
    blez    $k1, 12b                    # already passed: re-arm
    nop
    eret
    .org 0x200
    b       samara_mips_park_dead
    nop
# Anything but the timer on a parked CPU is a bug: stop it for good.
samara_mips_park_dead:
    mfc0    $k0, $12
    li      $k1, {irq_clear}
    and     $k0, $k0, $k1
    mtc0    $k0, $12
    ehb
11: wait
    b       11b
    nop
    .set pop
"#
    ),
    status_clear = const !(status::IE | status::EXL | status::ERL | status::KSU_MASK | status::IM_MASK),
    status_set = const status::KX | status::UX | status::BEV,
    bev_clear = const !status::BEV,
    im7_ie = const status::IM7 | status::IE,
    irq_clear = const !(status::IE | status::IM_MASK),
    max_cpus = const MAX_CPUS,
    park_tick = const PARK_TICK,
);
