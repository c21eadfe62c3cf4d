//! The kernel's TLB shootdown: `mm::shootdown`'s protocol over the arch
//! layer, and the `TlbFlush` the page tables call.
//!
//! Scheme (details and the memory-ordering argument in `mm::shootdown`):
//! each CPU records the address space it has loaded (`set_loaded`, before
//! the MMU switch, in `sched::switch_to`). A flush of address space `mm`
//! marks `mm`'s PCIDs stale on every CPU, samples who has `mm` loaded,
//! flushes locally if this CPU does, posts a request to each of the
//! others, sends them the kernel IPI, and waits for their answers.
//!
//! Interrupts are off in the kernel, so the IPI reaches a CPU only in user
//! mode or idle (or ends the relax halt of a spinning CPU, whose handler
//! only acknowledges it: see `arch::irq::relax`); every other CPU answers
//! from a spin loop: `mm`'s (the
//! relax hook installed at boot: every kernel lock is an `mm` spin lock)
//! and the initiator's own wait (two CPUs may shoot at each other). A CPU
//! inside the kernel that does not spin reaches user
//! mode, idle or a spin loop in bounded time. On a port without IPIs
//! (MIPS) the tick and the idle loop answer instead.
//!
//! A CPU that holds `mm` only lazily (its current task is a kernel thread
//! or idle, or the task whose process is exiting) does not flush: it drops
//! `mm` altogether — loads the kernel's page tables and records that it
//! holds nothing — so that a page table being freed is never a CPU's CR3.

use mm::cpu::CpuId;
use mm::pgtable::{FlushRange, TlbFlush};
use mm::shootdown::ShootdownOps;
use mm::vma::lock::MmId;

use super::{mem, sched};

/// The arch and scheduler side of the protocol.
pub struct Ops;

impl ShootdownOps for Ops {
    fn invalidate_cached(&self, mm: u64) {
        arch::mmu::invalidate_cached(mm);
    }

    fn kick(&self, cpus: u64) {
        arch::mmu::kick(cpus);
    }

    fn flush_local(&self, cpu: CpuId, mm: u64, range: Option<(u64, u64)>) {
        let uses = sched::current()
            .process
            .as_ref()
            .is_some_and(|p| p.mm.id() == mm);
        if !uses {
            arch::mmu::activate_kernel();
            mem::shootdown().set_loaded(cpu, 0);
            return;
        }
        match range {
            Some((start, end)) => arch::mmu::flush_local(start, end),
            None => arch::mmu::flush_local_all(),
        }
    }
}

/// Answers this CPU's pending shootdown requests (cheap when none).
pub fn service() {
    if let Some(sd) = mem::shootdown_opt() {
        sd.service(super::cpu_id(), &Ops);
    }
}

/// The relax hook `mm` calls in every spin loop: answer requests, then let
/// the arch relax (`arch::irq::relax`: on QEMU's Malta, yield the
/// round-robin emulator to the vCPU being waited for; on x86_64 under a
/// hypervisor, after 20 us of spinning, halt briefly so a descheduled vCPU
/// being waited for gets the host core). A request posted during the halt
/// (its IPI ends the halt) is answered by the next iteration's hook.
pub fn spin_hook() {
    service();
    arch::irq::relax();
}

/// Leaves any user address space on this CPU (before the current task's
/// address space is torn down): the kernel's page tables, nothing loaded.
pub fn leave_mm() {
    arch::mmu::activate_kernel();
    mem::shootdown().set_loaded(super::cpu_id(), 0);
}

/// The `TlbFlush` the page tables use.
pub struct KernelFlush;

pub static FLUSH: KernelFlush = KernelFlush;

impl TlbFlush for KernelFlush {
    fn flush_range(&self, mm: MmId, range: FlushRange) {
        mem::shootdown().flush(
            super::cpu_id(),
            mm.raw(),
            Some((range.start, range.end)),
            &Ops,
        );
    }

    fn flush_all(&self, mm: MmId) {
        mem::shootdown().flush(super::cpu_id(), mm.raw(), None, &Ops);
    }
}
