//! MIPS64 scenarios that drive the arch layer directly, without the
//! arch-neutral scheduler: `test=mips-user` and `test=mips-shootdown`.
//!
//! They build address spaces by hand with `mm::pgtable` over a frame
//! allocator on all usable RAM, copy tiny hand-assembled user routines
//! (below) into a code page, and run them in user mode on a task of their
//! own (a kernel stack, [`context::switch`], [`trap::enter_user`]). The
//! kernel's trap handlers here implement four syscalls and a fault policy
//! per CPU ([`Runner`]): map a zeroed page on a fault at the one address
//! the scenario allows, upgrade the one read-only page it allows, and kill
//! the task (switch back to the scenario) on any other fault.
//!
//! * `mips-user` (one CPU): a syscall and its result; a read of a
//!   pre-mapped page through the refill handler alone; a write fault in a
//!   region with no page tables at all (refill `no_table` path, then TLBS,
//!   then `mmu::update_tlb`); a write to a read-only page (Mod, upgrade,
//!   `tlbp`/`tlbwi` refresh); a sweep of 200 pre-mapped pages (100 TLB
//!   pairs, more than the TLB holds) with no kernel fault; then ASID
//!   isolation across generation rollovers: two address spaces map the same
//!   address to different frames and alternate 600 times while other
//!   address spaces use up ASIDs, and each must always read its own frame.
//! * `mips-shootdown` (two CPUs or more): CPU 0 unmaps pages that CPU 1 has
//!   in its TLB, through `mm::shootdown` with this port's operations
//!   ([`Ops`]: stale ASID marks, local flushes, no IPI), and CPU 1's next
//!   access must fault, in the four situations the protocol distinguishes:
//!   CPU 1 running the address space in user mode (request answered from
//!   its timer tick), switched away from it (no request: the stale mark
//!   gives it a fresh ASID on return), spinning in the kernel on a lock
//!   CPU 0 holds while it flushes (answered from the relax hook; without it
//!   this deadlocks), and idle with the address space loaded (answered from
//!   the tick taken in idle).
//!
//! Both end by destroying their address spaces and checking that every
//! frame came back.

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use arch::imp::context::{self, Context};
use arch::imp::trap::{self, Handlers, TickFrom, TrapFrame, UserStart};
use arch::imp::{cp0, cpu, mmu, smp, timer, tlb};
use arch::{AccessKind, ExitStatus, FaultReport};
use boot::{BootInfo, RegionKind};
use mm::addr::{Frame, PhysAddr, PAGE_SIZE};
use mm::cpu::CpuId;
use mm::frame::{FrameAllocator, FrameConfig};
use mm::pgtable::{FlushRange, Mips64Pte, PageTable, Prot, Pte, TlbFlush, TlbGather};
use mm::phys::DirectMap;
use mm::shootdown::{Shootdown, ShootdownOps};
use mm::vma::lock::MmId;
use spin::Once;

use crate::finish;

// ---- the user routines -------------------------------------------------

global_asm!(
    r#"
    .section .rodata.samara_user, "a"
    .balign 8
    .set push
    .set noreorder
    .set noat
    .globl samara_user_blob
samara_user_blob:

# mips-user. a0 = a pre-mapped RW page (word 0 = magic), a1 = a page in a
# region without page tables (the kernel maps it on the fault), a2 = a
# read-only page the kernel upgrades on a write, a3 = 200 pre-mapped pages
# (word 0 of page i = i).
samara_user_checks:
    move    $16, $4
    move    $17, $5
    move    $18, $6
    move    $19, $7
    li      $2, 1                       # SYS_ECHO(41) = 42
    li      $4, 41
    syscall
    li      $8, 42
    bne     $2, $8, 9f
    nop
    ld      $4, 0($16)                  # refill only
    li      $2, 2                       # SYS_REPORT(magic)
    syscall
    li      $8, 0x1234
    sd      $8, 0($17)                  # no table: refill, TLBS, fault
    ld      $9, 0($17)
    bne     $8, $9, 9f
    nop
    sd      $8, 8($18)                  # Mod: write upgrade
    ld      $9, 8($18)
    bne     $8, $9, 9f
    nop
    li      $10, 0                      # i
    li      $11, 0                      # sum
1:  dsll    $12, $10, 12
    daddu   $12, $12, $19
    ld      $13, 0($12)
    daddu   $11, $11, $13
    daddiu  $10, $10, 1
    slti    $13, $10, 200
    bnez    $13, 1b
    nop
    move    $4, $11
    li      $2, 2                       # SYS_REPORT(sum)
    syscall
    li      $2, 3                       # SYS_EXIT(0)
    li      $4, 0
    syscall
9:  li      $2, 3                       # SYS_EXIT(1): a check failed
    li      $4, 1
    syscall

# Reads the word at a0, reports it, exits.
samara_user_reader:
    ld      $4, 0($4)
    li      $2, 2
    syscall
    li      $2, 3
    li      $4, 0
    syscall

# Timing: SYS_MARK, then a3 rounds of loads from a1 addresses a2 bytes
# apart starting at a0, then SYS_MARK and exit.
samara_user_sweep:
    move    $16, $4
    move    $17, $5
    move    $18, $6
    move    $19, $7
    li      $2, 4                       # SYS_MARK
    syscall
1:  move    $8, $16                     # address
    move    $9, $17                     # left in this round
2:  ld      $10, 0($8)
    daddiu  $9, $9, -1
    bnez    $9, 2b
    daddu   $8, $8, $18                 # (delay slot)
    daddiu  $19, $19, -1
    bnez    $19, 1b
    nop
    li      $2, 4                       # SYS_MARK
    syscall
    li      $2, 3
    li      $4, 0
    syscall

# Forever: read the word at a0, then increment the counter at a1.
samara_user_loop:
1:  ld      $8, 0($4)
    ld      $9, 0($5)
    daddiu  $9, $9, 1
    b       1b
    sd      $9, 0($5)                   # (delay slot)

    .globl samara_user_blob_end
samara_user_blob_end:
    .set pop

    .globl samara_user_off_checks
    .globl samara_user_off_reader
    .globl samara_user_off_loop
    .globl samara_user_off_sweep
    .set samara_user_off_sweep, samara_user_sweep - samara_user_blob
    .set samara_user_off_checks, samara_user_checks - samara_user_blob
    .set samara_user_off_reader, samara_user_reader - samara_user_blob
    .set samara_user_off_loop, samara_user_loop - samara_user_blob
"#
);

unsafe extern "C" {
    static samara_user_blob: u8;
    static samara_user_blob_end: u8;
    static samara_user_off_checks: u8;
    static samara_user_off_reader: u8;
    static samara_user_off_loop: u8;
    static samara_user_off_sweep: u8;
}

/// Where the code page is mapped in every address space.
const CODE_VA: u64 = 0x1_0000;
/// Top of the (unused, but valid) user stack pointer.
const STACK_VA: u64 = 0x80_0000;

fn entry_of(off: *const u8) -> u64 {
    CODE_VA + off as u64
}

// ---- syscalls and per-CPU state -----------------------------------------

const SYS_ECHO: u64 = 1;
const SYS_REPORT: u64 = 2;
const SYS_EXIT: u64 = 3;
const SYS_MARK: u64 = 4;
const ENOSYS: i64 = 38;

/// Exit codes of a task that did not call SYS_EXIT.
const EXIT_KILLED: u64 = 0x100;
const EXIT_EXCEPTION: u64 = 0x101;
/// `run_user` returned because the task was preempted (still resumable).
const PREEMPTED: u64 = u64::MAX;

/// A fault the policy did not resolve.
#[derive(Debug, Clone, Copy, Default)]
struct FaultRecord {
    address: u64,
    write: bool,
    present: bool,
    user: bool,
    /// The `Q` counter at the time (shootdown loop), 0 otherwise.
    counter: u64,
    /// The hardware ASID in EntryHi at the time.
    asid: u64,
}

/// One CPU's scenario state. Touched only by its own CPU: the scenario
/// code and the trap handlers it provokes, which never run at the same time
/// (the scenario is suspended in `context::switch` while the task runs, and
/// interrupts are off in the kernel).
struct Runner {
    home: Context,
    task: Context,
    dead: Context,
    kstack_top: u64,
    kstack: Option<Frame>,
    start: UserStart,
    space: *const Space,
    exit: u64,
    demand_va: u64,
    upgrade_va: u64,
    /// Address of the shootdown loop's counter (its frame's direct map).
    counter: *const u64,
    preempt_after_ticks: u64,
    fault: Option<FaultRecord>,
    reports: [u64; 8],
    nr_reports: usize,
    faults_resolved: u64,
    syscalls: u64,
    asid_at_preempt: u64,
}

struct PerCpuRunner([UnsafeCell<Runner>; MAX]);

// SAFETY: each runner is only touched by its own CPU (see `Runner`).
unsafe impl Sync for PerCpuRunner {}

const MAX: usize = 4;

static RUNNERS: PerCpuRunner = PerCpuRunner(
    [const {
        UnsafeCell::new(Runner {
            home: Context::empty(),
            task: Context::empty(),
            dead: Context::empty(),
            kstack_top: 0,
            kstack: None,
            start: UserStart {
                pc: 0,
                sp: 0,
                args: [0; 4],
            },
            space: core::ptr::null(),
            exit: 0,
            demand_va: 0,
            upgrade_va: 0,
            counter: core::ptr::null(),
            preempt_after_ticks: 0,
            fault: None,
            reports: [0; 8],
            nr_reports: 0,
            faults_resolved: 0,
            syscalls: 0,
            asid_at_preempt: 0,
        })
    }; MAX],
);

/// This CPU's runner, as a raw pointer (see `Runner` for why access is
/// exclusive; raw because a context switch leaves the switching code's
/// borrow suspended while the task's handlers use the runner).
fn runner() -> *mut Runner {
    RUNNERS.0[mmu::this_cpu() % MAX].get()
}

fn frames() -> &'static FrameAllocator {
    FRAMES.get().expect("frames set up")
}

static FRAMES: Once<FrameAllocator> = Once::new();

/// The frame allocator over all usable RAM (XKPHYS direct map).
fn setup_frames(info: &BootInfo) -> &'static FrameAllocator {
    FRAMES.call_once(|| {
        let mut regions = [(0u64, 0u64); boot::memmap::MAX_REGIONS];
        let mut n = 0;
        for r in info
            .memory
            .regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
        {
            regions[n] = (r.start, r.end);
            n += 1;
        }
        let end = regions[..n].iter().map(|r| r.1).max().unwrap_or(0);
        // SAFETY: XKPHYS maps every physical address at a fixed offset (`arch::paging::phys_to_virt`), cached; `phys_to_virt(0)` is page-aligned.
        let dmap = unsafe {
            DirectMap::new(
                arch::paging::phys_to_virt(0),
                PhysAddr::new(0),
                PhysAddr::new(end),
            )
        };
        // SAFETY: the usable regions are RAM nothing else uses (the boot map reserves the kernel, boot data and firmware), reachable through `dmap`, and are handed to the allocator for good.
        match unsafe {
            FrameAllocator::new(
                dmap,
                &regions[..n],
                FrameConfig::new(info.cpu_count.max(1) as usize),
            )
        } {
            Ok(f) => f,
            Err(e) => finish(ExitStatus::Failure, format_args!("frame allocator: {e:?}")),
        }
    })
}

fn frame_ptr(f: Frame) -> *mut u64 {
    frames()
        .frame_ptr(f)
        .expect("allocated frames are direct-mapped")
        .as_ptr()
        .cast()
}

/// XKPHYS address one past the end of the `2^order`-page block at `f`.
fn block_top(f: Frame, order: u32) -> u64 {
    frame_ptr(f) as u64 + ((PAGE_SIZE as u64) << order)
}

// ---- address spaces -------------------------------------------------------

/// A hand-built address space: its page table and its number (what the
/// shootdown and the ASID tables know it by).
struct Space {
    pt: PageTable<'static, Mips64Pte>,
    id: u64,
}

/// Address-space numbers: distinct, non-zero, never reused in a run.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed) << 12
}

impl Space {
    fn new() -> Space {
        Self::with_id(new_id())
    }

    fn with_id(id: u64) -> Space {
        let limit = (1u64 << tlb::segbits()).min(mmu::USER_VA_END);
        let pt = PageTable::with_limit(frames(), mmu::this_cpu(), limit)
            .unwrap_or_else(|e| finish(ExitStatus::Failure, format_args!("page table: {e}")));
        Space { pt, id }
    }

    fn mm_id(&self) -> MmId {
        MmId::from_raw(self.id)
    }

    fn map(&self, va: u64, frame: Frame, prot: Prot) {
        if let Err(e) = self
            .pt
            .install_leaf(va, Pte::leaf(frame, prot), mmu::this_cpu())
        {
            finish(ExitStatus::Failure, format_args!("map {va:#x}: {e:?}"));
        }
    }

    /// Maps a new zeroed page at `va` and returns its frame.
    fn map_zeroed(&self, va: u64, prot: Prot) -> Frame {
        let f = frames()
            .alloc_zeroed(mmu::this_cpu(), 0)
            .unwrap_or_else(|_| finish(ExitStatus::Failure, format_args!("out of memory")));
        self.map(va, f, prot);
        f
    }

    /// Unmaps `[va, va + len)` and frees the frames after the shootdown.
    fn unmap(&self, va: u64, len: u64) -> u64 {
        let cpu = mmu::this_cpu();
        let flush = Flusher { mm: self.id, cpu };
        let mut release = |f: Frame| {
            // SAFETY: the mapping's reference, released after the flush.
            unsafe { frames().put(cpu, f, 0) };
        };
        let mut g = TlbGather::new(self.mm_id(), cpu, &flush, frames(), &mut release);
        let n = self
            .pt
            .unmap_range(va, va + len, &mut g)
            .unwrap_or_else(|e| finish(ExitStatus::Failure, format_args!("unmap: {e}")));
        g.finish();
        n
    }

    /// Tears the address space down (not loaded on any CPU).
    fn destroy(self) {
        let cpu = mmu::this_cpu();
        let id = self.mm_id();
        let flush = Flusher { mm: self.id, cpu };
        let mut release = |f: Frame| {
            // SAFETY: as in `unmap`. Shared frames (the code page) carry one reference per mapping.
            unsafe { frames().put(cpu, f, 0) };
        };
        let mut g = TlbGather::new(id, cpu, &flush, frames(), &mut release);
        self.pt.destroy(&mut g);
        g.finish();
    }
}

// ---- the shootdown (mm::shootdown with this port's operations) -----------

static SHOOTDOWN: Once<Shootdown> = Once::new();

fn shootdown() -> &'static Shootdown {
    SHOOTDOWN.get().expect("set up")
}

/// The arch operations the protocol needs, on MIPS.
struct Ops;

impl ShootdownOps for Ops {
    fn invalidate_cached(&self, mm: u64) {
        mmu::invalidate_cached(mm);
    }

    fn kick(&self, cpus: u64) {
        mmu::kick(cpus);
    }

    fn flush_local(&self, _cpu: CpuId, _mm: u64, range: Option<(u64, u64)>) {
        match range {
            Some((start, end)) => mmu::flush_local(start, end),
            None => mmu::flush_local_all(),
        }
    }
}

/// The gather's flush for one address space, from the running CPU.
struct Flusher {
    mm: u64,
    cpu: CpuId,
}

impl TlbFlush for Flusher {
    fn flush_range(&self, _mm: MmId, range: FlushRange) {
        shootdown().flush(self.cpu, self.mm, Some((range.start, range.end)), &Ops);
    }

    fn flush_all(&self, _mm: MmId) {
        shootdown().flush(self.cpu, self.mm, None, &Ops);
    }
}

/// Services this CPU's shootdown requests: the tick, idle (through the
/// tick), every spin loop (the relax hook) and every return to user mode.
fn service() {
    if let Some(sd) = SHOOTDOWN.get() {
        sd.service(mmu::this_cpu(), &Ops);
    }
}

/// Loads `space` on this CPU: published to the shootdown first (S1), then
/// the MMU.
fn load(space: &Space) {
    shootdown().set_loaded(mmu::this_cpu(), space.id);
    // SAFETY: the root stays valid while loaded (the scenario unloads it before destroying it); interrupts are off; `set_loaded` came first.
    unsafe {
        mmu::activate(
            space.pt.root_phys().as_u64(),
            space.pt.root_entry(),
            space.id,
        )
    };
}

/// Unloads the address space this CPU has loaded.
fn unload() {
    mmu::activate_kernel();
    shootdown().set_loaded(mmu::this_cpu(), 0);
}

/// A frame holding the user routines, mapped read/execute at `CODE_VA`.
fn code_frame() -> Frame {
    let start = &raw const samara_user_blob as usize;
    let end = &raw const samara_user_blob_end as usize;
    let len = end - start;
    assert!(len <= PAGE_SIZE, "user routines exceed a page");
    let f = frames()
        .alloc_zeroed(mmu::this_cpu(), 0)
        .unwrap_or_else(|_| finish(ExitStatus::Failure, format_args!("out of memory")));
    // SAFETY: the blob is `len` bytes of rodata; the frame is ours, a page.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, frame_ptr(f).cast(), len) };
    cpu::sync_icache(frame_ptr(f) as u64, len as u64);
    f
}

fn map_code(s: &Space, code: Frame) {
    if let Some(m) = frames().meta(code) {
        m.get_ref();
    }
    s.map(CODE_VA, code, Prot::READ | Prot::EXEC | Prot::USER);
}

// ---- running user code ----------------------------------------------------

extern "C" fn task_entry(_arg: u64) -> ! {
    let r = runner();
    // SAFETY: our runner (this CPU); `kstack_top` is the stack this task was started on by `run_user`, whose reserved top is unused.
    unsafe {
        let top = (*r).kstack_top;
        let start = (*r).start;
        trap::enter_user(top, &start)
    }
}

/// Ends the running task with `code` and switches back to the scenario.
fn task_exit(code: u64) -> ! {
    let r = runner();
    // SAFETY: our runner; `home` was saved by the switch in `run_user` / `resume`, and this task is never resumed (its context goes to `dead`).
    unsafe {
        (*r).exit = code;
        context::switch(&raw mut (*r).dead, &raw const (*r).home);
    }
    unreachable!("a dead task was resumed")
}

/// Loads `space` and switches to the task until it exits or is preempted;
/// returns the exit code or [`PREEMPTED`]. The address space is unloaded
/// again on return.
fn switch_to_task(space: &Space) -> u64 {
    let r = runner();
    load(space);
    // SAFETY: the runner is ours; the task context is valid (new or preempted); interrupts are off.
    let code = unsafe {
        (*r).space = space;
        (*r).exit = PREEMPTED;
        context::switch(&raw mut (*r).home, &raw const (*r).task);
        (*r).space = core::ptr::null();
        (*r).exit
    };
    unload();
    code
}

/// Starts `start` as a new user task in `space`; see [`switch_to_task`].
fn run_user(space: &Space, start: UserStart) -> u64 {
    let r = runner();
    let stack = frames()
        .alloc(mmu::this_cpu(), 2)
        .unwrap_or_else(|_| finish(ExitStatus::Failure, format_args!("out of memory")));
    // SAFETY: our runner; a fresh 16 KiB stack for the new task.
    unsafe {
        (*r).kstack = Some(stack);
        (*r).kstack_top = block_top(stack, 2);
        (*r).start = start;
        (*r).fault = None;
        (*r).task = Context::new((*r).kstack_top, task_entry, 0);
    }
    let code = switch_to_task(space);
    if code != PREEMPTED {
        free_task_stack();
    }
    code
}

/// Resumes the preempted task in `space`.
fn resume(space: &Space) -> u64 {
    let code = switch_to_task(space);
    if code != PREEMPTED {
        free_task_stack();
    }
    code
}

fn free_task_stack() {
    let r = runner();
    // SAFETY: our runner; the task is dead, nothing runs on its stack.
    if let Some(s) = unsafe { (*r).kstack.take() } {
        // SAFETY: allocated in `run_user` with order 2, unused now.
        unsafe { frames().free(mmu::this_cpu(), s, 2) };
    }
}

fn on_syscall(f: &mut TrapFrame) {
    let r = runner();
    let (nr, a0) = (f.regs[2], f.regs[4]);
    // SAFETY: our runner (see `Runner`).
    unsafe { (*r).syscalls += 1 };
    f.regs[2] = match nr {
        SYS_ECHO => a0.wrapping_add(1),
        SYS_REPORT => {
            // SAFETY: as above.
            unsafe {
                let n = (*r).nr_reports;
                if n < (*r).reports.len() {
                    (*r).reports[n] = a0;
                    (*r).nr_reports = n + 1;
                }
            }
            0
        }
        SYS_EXIT => task_exit(a0),
        SYS_MARK => {
            let now = cp0::count();
            // SAFETY: as above.
            unsafe {
                let n = (*r).nr_reports;
                if n < (*r).reports.len() {
                    (*r).reports[n] = now;
                    (*r).nr_reports = n + 1;
                }
            }
            0
        }
        _ => (-ENOSYS) as u64,
    };
}

fn on_page_fault(_f: &mut TrapFrame, rep: &FaultReport) -> bool {
    let r = runner();
    // SAFETY: our runner; `space` is the loaded address space (set by `switch_to_task`) or null.
    let (space, demand, upgrade) = unsafe { ((*r).space, (*r).demand_va, (*r).upgrade_va) };
    let page = rep.address & !(PAGE_SIZE as u64 - 1);
    if !space.is_null() {
        // SAFETY: loaded, hence alive (the scenario owns it).
        let s = unsafe { &*space };
        let resolved = if page == demand && !rep.present {
            s.map_zeroed(page, Prot::READ | Prot::WRITE | Prot::USER);
            true
        } else if page == upgrade && rep.present && rep.access == AccessKind::Write {
            let old = s.pt.lookup(page);
            let new = old.with_prot(Prot::READ | Prot::WRITE | Prot::USER);
            let flush = Flusher {
                mm: s.id,
                cpu: mmu::this_cpu(),
            };
            let mut release = |_f: Frame| {};
            let mut g = TlbGather::new(s.mm_id(), mmu::this_cpu(), &flush, frames(), &mut release);
            let ok = s.pt.compare_exchange_leaf(page, old, new, &mut g).is_ok();
            g.finish();
            ok
        } else {
            false
        };
        if resolved {
            // The arch refreshes the TLB from the page table on return.
            // SAFETY: our runner.
            unsafe { (*r).faults_resolved += 1 };
            return true;
        }
    }
    // SAFETY: our runner; `counter` points into a live frame when set.
    unsafe {
        let counter = if (*r).counter.is_null() {
            0
        } else {
            core::ptr::read_volatile((*r).counter)
        };
        (*r).fault = Some(FaultRecord {
            address: rep.address,
            write: rep.access == AccessKind::Write,
            present: rep.present,
            user: rep.user,
            counter,
            asid: tlb::current_asid(),
        });
    }
    if rep.user {
        task_exit(EXIT_KILLED);
    }
    false
}

fn on_user_exception(f: &mut TrapFrame) {
    crate::println!(
        "mips: user exception, cause {:#x} at pc {:#x}",
        f.cause,
        f.epc
    );
    task_exit(EXIT_EXCEPTION);
}

fn on_tick(_f: &mut TrapFrame, from: TickFrom) {
    // No IPIs: the tick is where a CPU in user mode or idle answers.
    service();
    if from != TickFrom::User {
        return;
    }
    let r = runner();
    // SAFETY: our runner; `home` holds the scenario's context while a task runs; the task's context is saved in `task` and resumed by `resume`.
    unsafe {
        if (*r).preempt_after_ticks > 0 {
            (*r).preempt_after_ticks -= 1;
            if (*r).preempt_after_ticks == 0 {
                (*r).asid_at_preempt = tlb::current_asid();
                (*r).exit = PREEMPTED;
                context::switch(&raw mut (*r).task, &raw const (*r).home);
            }
        }
    }
}

fn on_return_to_user(_f: &mut TrapFrame) {
    service();
}

/// Common setup: frames, the ASID/shootdown domain, the trap handlers.
fn setup(info: &BootInfo) {
    setup_frames(info);
    // The ASID tables were sized at boot (`mmu::init`).
    let nr_cpus = info.cpu_count.max(1) as usize;
    SHOOTDOWN.call_once(|| Shootdown::new(nr_cpus));
    mm::sync::set_relax_hook(service);
    trap::set_handlers(Handlers {
        syscall: on_syscall,
        page_fault: on_page_fault,
        user_exception: on_user_exception,
        tick: on_tick,
        return_to_user: on_return_to_user,
    });
    timer::start();
}

fn reset_runner() {
    let r = runner();
    // SAFETY: our runner; no task is running.
    unsafe {
        (*r).demand_va = 0;
        (*r).upgrade_va = 0;
        (*r).counter = core::ptr::null();
        (*r).preempt_after_ticks = 0;
        (*r).fault = None;
        (*r).nr_reports = 0;
        (*r).faults_resolved = 0;
        (*r).syscalls = 0;
    }
}

fn reports() -> ([u64; 8], usize) {
    let r = runner();
    // SAFETY: our runner.
    unsafe { ((*r).reports, (*r).nr_reports) }
}

fn fail(args: core::fmt::Arguments<'_>) -> ! {
    finish(ExitStatus::Failure, args)
}

// ---- test=mips-user -------------------------------------------------------

const MAGIC: u64 = 0x5a4d_4950_5336_3400;

/// `test=mips-user`. See the module documentation.
pub fn scenario_user(info: &BootInfo) -> ! {
    setup(info);
    let fr = frames();
    let baseline = fr.stats().allocated_pages;
    crate::println!("mips-user: MMU: {}", mmu::describe());
    let code = code_frame();

    // Part 1: syscalls, refills, faults.
    const DATA: u64 = 0x20_0000;
    const RO: u64 = 0x21_0000;
    const ARRAY: u64 = 0x100_0000;
    const DEMAND: u64 = 0x4000_0000; // 1 GiB: no level-2 table yet
    let s = Space::new();
    map_code(&s, code);
    let data = s.map_zeroed(DATA, Prot::READ | Prot::WRITE | Prot::USER);
    // SAFETY: a page we just allocated.
    unsafe { frame_ptr(data).write_volatile(MAGIC) };
    s.map_zeroed(RO, Prot::READ | Prot::USER);
    for i in 0..200u64 {
        let f = s.map_zeroed(ARRAY + i * PAGE_SIZE as u64, Prot::READ | Prot::USER);
        // SAFETY: as above.
        unsafe { frame_ptr(f).write_volatile(i) };
    }
    reset_runner();
    let r = runner();
    // SAFETY: our runner; no task is running.
    unsafe {
        (*r).demand_va = DEMAND;
        (*r).upgrade_va = RO;
    }
    let tables_before = s.pt.nr_tables();
    let t0 = cp0::count();
    let exit = run_user(
        &s,
        UserStart {
            pc: entry_of(&raw const samara_user_off_checks),
            sp: STACK_VA,
            args: [DATA, DEMAND, RO, ARRAY],
        },
    );
    let elapsed = cp0::count().wrapping_sub(t0) & 0xffff_ffff;
    // SAFETY: our runner; the task is gone.
    let (faults, syscalls, fault) = unsafe { ((*r).faults_resolved, (*r).syscalls, (*r).fault) };
    let (rep, nrep) = reports();
    crate::println!(
        "mips-user: exit {exit}, {syscalls} syscalls, {faults} faults resolved, reports {:x?}, \
         {} Count ticks",
        &rep[..nrep],
        elapsed
    );
    if exit != 0 {
        fail(format_args!(
            "mips-user: the user routine exited with {exit:#x} (last unresolved fault {fault:?})"
        ));
    }
    if nrep != 2 || rep[0] != MAGIC || rep[1] != 199 * 200 / 2 {
        fail(format_args!(
            "mips-user: reports {:x?}, expected [{MAGIC:#x}, {:#x}]",
            &rep[..nrep],
            199 * 200 / 2
        ));
    }
    if faults != 2 || syscalls != 4 {
        fail(format_args!(
            "mips-user: {faults} faults and {syscalls} syscalls, expected exactly 2 (the \
             demand write and the Mod upgrade) and 4: every other access must be served by \
             the refill handler"
        ));
    }
    if s.pt.nr_tables() != tables_before + 2 {
        fail(format_args!(
            "mips-user: the demand fault at {DEMAND:#x} should have built 2 tables"
        ));
    }
    let demand = s.pt.lookup(DEMAND);
    let ro = s.pt.lookup(RO);
    if !demand.prot().contains(Prot::WRITE) || !ro.prot().contains(Prot::WRITE) {
        fail(format_args!(
            "mips-user: PTEs after the faults: {demand:?}, {ro:?}"
        ));
    }
    // SAFETY: the demand page's frame, mapped by the fault handler.
    let written = unsafe { frame_ptr(demand.frame().expect("mapped")).read_volatile() };
    if written != 0x1234 {
        fail(format_args!(
            "mips-user: the demand page holds {written:#x}"
        ));
    }
    s.destroy();

    // Part 1b: the cost of a refill, measured in the guest: 1024 loads that
    // each touch a pair of pages for the first time (1024 refills, all on
    // the hit path of the handler: every table exists), against 1024 loads
    // that hit the TLB. Under TCG this is emulation time, not Octeon cycles.
    let (refill_ns, hit_ns) = measure_refill(code);

    // Part 2: ASIDs across generation rollovers.
    let a = Space::new();
    let b = Space::new();
    map_code(&a, code);
    map_code(&b, code);
    let fa = a.map_zeroed(DATA, Prot::READ | Prot::USER);
    let fb = b.map_zeroed(DATA, Prot::READ | Prot::USER);
    // SAFETY: pages we just allocated.
    unsafe {
        frame_ptr(fa).write_volatile(0xaaaa);
        frame_ptr(fb).write_volatile(0xbbbb);
    }
    let d = &mmu::ASIDS;
    let before = d.stats();
    let reader = UserStart {
        pc: entry_of(&raw const samara_user_off_reader),
        sp: STACK_VA,
        args: [DATA, 0, 0, 0],
    };
    const ROUNDS: usize = 600;
    for i in 0..ROUNDS {
        // After each rollover the two swap order, so that each is handed
        // the ASID the other had in the previous generation: if the
        // rollover left the old entries in the TLB, the reader would find
        // the other address space's page there.
        let swapped = (d.stats().rollovers - before.rollovers) % 2 == 1;
        let order = if swapped {
            [(&b, 0xbbbb), (&a, 0xaaaa)]
        } else {
            [(&a, 0xaaaa), (&b, 0xbbbb)]
        };
        for (space, want) in order {
            reset_runner();
            let exit = run_user(space, reader);
            let (rep, n) = reports();
            if exit != 0 || n != 1 || rep[0] != want {
                fail(format_args!(
                    "mips-user: round {i}: expected to read {want:#x}, got {:x?} (exit {exit:#x}, \
                     stats {:?})",
                    &rep[..n],
                    d.stats()
                ));
            }
        }
        // Another address space takes an ASID. Its number avoids the
        // slots of `a` and `b`, which therefore keep their ASIDs for a
        // whole generation.
        let other = loop {
            let id = new_id();
            let slot = mm::asid::slot_of(id);
            if slot != mm::asid::slot_of(a.id) && slot != mm::asid::slot_of(b.id) {
                break id;
            }
        };
        // SAFETY: the empty root is valid; no user access happens between.
        unsafe { mmu::activate(0, mmu::empty_root(), other) };
        mmu::activate_kernel();
    }
    let after = d.stats();
    let rollovers = after.rollovers - before.rollovers;
    crate::println!(
        "mips-user: {ROUNDS} rounds of two address spaces at {DATA:#x}: {} ASIDs, {rollovers} \
         generation rollovers",
        after.allocated - before.allocated
    );
    if rollovers < 2 {
        fail(format_args!(
            "mips-user: only {rollovers} ASID rollovers in {ROUNDS} rounds"
        ));
    }
    a.destroy();
    b.destroy();
    // SAFETY: the code frame's own reference (the mappings' are gone).
    unsafe { fr.put(mmu::this_cpu(), code, 0) };
    let leaked = fr.stats().allocated_pages as i64 - baseline as i64;
    if leaked != 0 {
        fail(format_args!("mips-user: {leaked} frames leaked"));
    }
    finish(
        ExitStatus::Success,
        format_args!(
            "test mips-user: syscalls, refills ({refill_ns} ns each under this emulator, a TLB \
             hit {hit_ns} ns), 2 faults, {ROUNDS} ASID rounds with {rollovers} rollovers, no \
             frame leaked"
        ),
    )
}

/// Count ticks per second on QEMU's Malta (160 MHz: half the 320 MHz CPU
/// clock, Octeon68XX's CCRes = 2).
const COUNT_HZ: u64 = 160_000_000;

/// Nanoseconds per refill and per TLB hit, from a sweep over fresh pairs and
/// one over a handful of resident ones (see `scenario_user`).
fn measure_refill(code: Frame) -> (u64, u64) {
    const BASE: u64 = 0x1000_0000;
    const PAIRS: u64 = 1024;
    let s = Space::new();
    map_code(&s, code);
    for i in 0..PAIRS {
        // One page per pair: the refill loads both halves regardless.
        s.map_zeroed(BASE + i * 0x2000, Prot::READ | Prot::USER);
    }
    let sweep = |count: u64, rounds: u64| -> u64 {
        reset_runner();
        let exit = run_user(
            &s,
            UserStart {
                pc: entry_of(&raw const samara_user_off_sweep),
                sp: STACK_VA,
                args: [BASE, count, 0x2000, rounds],
            },
        );
        let (rep, n) = reports();
        if exit != 0 || n != 2 {
            fail(format_args!("mips-user: the sweep exited with {exit:#x}"));
        }
        rep[1].wrapping_sub(rep[0]) & 0xffff_ffff
    };
    // 1024 first touches (every one a refill), then 32 resident pairs 32
    // times (hits after the first round: 32 of 64 entries).
    let misses = sweep(PAIRS, 1);
    let hits = sweep(32, 32);
    s.destroy();
    let per = |ticks: u64| ticks * 1_000_000_000 / COUNT_HZ / PAIRS;
    crate::println!(
        "mips-user: refill timing: {PAIRS} first-touch loads {misses} Count ticks, {PAIRS} TLB \
         hits {hits} ticks: {} ns per refill, {} ns per hit (TCG emulation, not Octeon cycles)",
        per(misses.saturating_sub(hits)),
        per(hits)
    );
    (per(misses.saturating_sub(hits)), per(hits))
}

// ---- test=mips-shootdown ----------------------------------------------------

/// Progress of CPU 0 (the initiator) and CPU 1 through the phases.
static STEP0: AtomicU64 = AtomicU64::new(0);
static STEP1: AtomicU64 = AtomicU64::new(0);
/// CPU 1's findings, published before its STEP1 store (Release).
static RESULT: spin::Mutex<Findings> = spin::Mutex::new(Findings::new());
/// The lock CPU 0 holds while it flushes in phase 3.
static LOCK: mm::sync::SpinLock<()> = mm::sync::SpinLock::new(());
/// The address space both CPUs use: owned by CPU 0's scenario frame,
/// published before CPU 1 starts (the release handshake of
/// `smp::start_secondary` orders it) and used by CPU 1 until its last
/// STEP1 store; CPU 0 destroys it after seeing that store.
static SHARED_SPACE: AtomicPtr<Space> = AtomicPtr::new(core::ptr::null_mut());
/// Direct-map address of the loop's counter page (Q).
static COUNTER: AtomicPtr<u64> = AtomicPtr::new(core::ptr::null_mut());
static SECONDARY_UP: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy)]
struct Findings {
    p1: Option<FaultRecord>,
    p1_exit: u64,
    p2_exit_first: u64,
    p2_asid_before: u64,
    p2_valid_before: bool,
    p2: Option<FaultRecord>,
    p2_exit: u64,
    p3_valid_before: bool,
    p3_valid_after: bool,
    p4_valid_before: bool,
    p4_valid_after: bool,
    idle_ticks: u64,
}

impl Findings {
    const fn new() -> Self {
        Findings {
            p1: None,
            p1_exit: 0,
            p2_exit_first: 0,
            p2_asid_before: 0,
            p2_valid_before: false,
            p2: None,
            p2_exit: 0,
            p3_valid_before: false,
            p3_valid_after: false,
            p4_valid_before: false,
            p4_valid_after: false,
            idle_ticks: 0,
        }
    }
}

const P1: u64 = 0x20_0000;
const P2: u64 = 0x22_0000;
const P3: u64 = 0x24_0000;
const P4: u64 = 0x26_0000;
const Q: u64 = 0x30_0000;

/// A wrap-aware time-out on Count (32 bits at 160 MHz under QEMU).
struct Deadline {
    last: u64,
    elapsed: u64,
    limit: u64,
}

impl Deadline {
    fn secs(s: u64) -> Self {
        Deadline {
            last: cp0::count(),
            elapsed: 0,
            limit: s * 160_000_000,
        }
    }

    fn expired(&mut self) -> bool {
        let now = cp0::count();
        self.elapsed += now.wrapping_sub(self.last) & 0xffff_ffff;
        self.last = now;
        self.elapsed >= self.limit
    }
}

/// Spins (answering the mailbox through the relax hook) until `step` reaches
/// `at_least`, or fails the run after 20 s.
fn wait_step(step: &AtomicU64, at_least: u64, what: &str) {
    let mut d = Deadline::secs(20);
    // Acquire: pairs with the other CPU's Release store of the step, so its
    // findings (and page-table changes) are visible.
    while step.load(Ordering::Acquire) < at_least {
        if d.expired() {
            fail(format_args!("mips-shootdown: timed out waiting for {what}"));
        }
        mm::sync::spin_loop();
    }
}

/// Like `wait_step`, but idles (for CPU 1).
fn idle_until(step: &AtomicU64, at_least: u64) {
    while step.load(Ordering::Acquire) < at_least {
        cpu::idle_wait();
    }
}

fn counter() -> u64 {
    let c = COUNTER.load(Ordering::Relaxed);
    // SAFETY: `c` is the direct-map address of the Q page, live until the address space is destroyed at the end of the scenario.
    unsafe { core::ptr::read_volatile(c) }
}

extern "C" fn secondary_main(_arg: u64, cpu: u64) -> ! {
    if let Err(e) = arch::imp::init_cpu() {
        fail(format_args!("CPU {cpu}: {e}"));
    }
    timer::start();
    SECONDARY_UP.store(true, Ordering::Release);
    if cpu != 1 {
        loop {
            cpu::idle_wait();
        }
    }
    // SAFETY: published by CPU 0 before it released us, alive until our last STEP1 store (see `SHARED_SPACE`).
    let m = unsafe { &*SHARED_SPACE.load(Ordering::Relaxed) };
    let counter_ptr = COUNTER.load(Ordering::Relaxed);
    let loop_pc = entry_of(&raw const samara_user_off_loop);
    let r = runner();

    // Phase 1: the user loop on P1 until CPU 0 unmaps it.
    idle_until(&STEP0, 1);
    reset_runner();
    // SAFETY: our runner, no task running.
    unsafe { (*r).counter = counter_ptr };
    let exit = run_user(
        m,
        UserStart {
            pc: loop_pc,
            sp: STACK_VA,
            args: [P1, Q, 0, 0],
        },
    );
    {
        let mut f = RESULT.lock();
        f.p1_exit = exit;
        // SAFETY: our runner.
        f.p1 = unsafe { (*r).fault };
    }
    STEP1.store(1, Ordering::Release);

    // Phase 2: the loop on P2, preempted after a few ticks with P2 in the
    // TLB; CPU 0 unmaps it while we are switched away; then we resume.
    idle_until(&STEP0, 2);
    reset_runner();
    // SAFETY: our runner, no task running.
    unsafe {
        (*r).counter = counter_ptr;
        (*r).preempt_after_ticks = 3;
    }
    let first = run_user(
        m,
        UserStart {
            pc: loop_pc,
            sp: STACK_VA,
            args: [P2, Q, 0, 0],
        },
    );
    // SAFETY: our runner.
    let asid_before = unsafe { (*r).asid_at_preempt };
    {
        let mut f = RESULT.lock();
        f.p2_exit_first = first;
        f.p2_asid_before = asid_before;
        f.p2_valid_before = tlb::probe_valid(asid_before, P2);
    }
    STEP1.store(2, Ordering::Release);
    idle_until(&STEP0, 3);
    let exit = resume(m);
    {
        let mut f = RESULT.lock();
        f.p2_exit = exit;
        // SAFETY: our runner.
        f.p2 = unsafe { (*r).fault };
    }
    STEP1.store(3, Ordering::Release);

    // Phase 3: load the address space, touch P3 from the kernel, then spin
    // on the lock CPU 0 holds while it unmaps P3.
    idle_until(&STEP0, 4);
    load(m);
    // SAFETY: P3 is mapped readable in the loaded address space; a kernel load from xuseg goes through the refill handler.
    let v = unsafe { core::ptr::read_volatile(P3 as *const u64) };
    let asid = tlb::current_asid();
    RESULT.lock().p3_valid_before = v == 0x5003 && tlb::probe_valid(asid, P3);
    STEP1.store(4, Ordering::Release);
    {
        let _g = LOCK.lock();
        RESULT.lock().p3_valid_after = tlb::probe_valid(asid, P3);
    }
    unload();
    STEP1.store(5, Ordering::Release);

    // Phase 4: the same, but idling while CPU 0 unmaps P4.
    idle_until(&STEP0, 6);
    load(m);
    // SAFETY: P4 is mapped readable.
    let v = unsafe { core::ptr::read_volatile(P4 as *const u64) };
    let asid = tlb::current_asid();
    RESULT.lock().p4_valid_before = v == 0x5004 && tlb::probe_valid(asid, P4);
    let ticks = timer::ticks(1);
    STEP1.store(6, Ordering::Release);
    idle_until(&STEP0, 7);
    {
        let mut f = RESULT.lock();
        f.p4_valid_after = tlb::probe_valid(asid, P4);
        f.idle_ticks = timer::ticks(1) - ticks;
    }
    unload();
    STEP1.store(7, Ordering::Release);
    loop {
        cpu::idle_wait();
    }
}

/// `test=mips-shootdown`. See the module documentation.
pub fn scenario_shootdown(info: &BootInfo) -> ! {
    if info.cpu_count < 2 {
        fail(format_args!(
            "test mips-shootdown needs at least 2 CPUs (QEMU -smp 2), found {}",
            info.cpu_count
        ));
    }
    setup(info);
    let fr = frames();
    let stack = fr
        .alloc(0, 2)
        .unwrap_or_else(|_| fail(format_args!("out of memory")));
    let baseline = fr.stats().allocated_pages;
    let code = code_frame();
    let space = Space::new();
    map_code(&space, code);
    for (k, va) in [P1, P2, P3, P4].into_iter().enumerate() {
        let f = space.map_zeroed(va, Prot::READ | Prot::WRITE | Prot::USER);
        // SAFETY: a page we just allocated.
        unsafe { frame_ptr(f).write_volatile(0x5001 + k as u64) };
    }
    let q = space.map_zeroed(Q, Prot::READ | Prot::WRITE | Prot::USER);
    COUNTER.store(frame_ptr(q), Ordering::Relaxed);
    // Relaxed: CPU 1 reads it after its release (`start_secondary`'s
    // Release store of the entry point, paired with the parked CPU's sync).
    SHARED_SPACE.store((&raw const space).cast_mut(), Ordering::Relaxed);
    let m = &space;
    // SAFETY: a fresh 16 KiB stack for CPU 1, used only by it from now on; `secondary_main` never returns.
    if let Err(e) = unsafe { smp::start_secondary(1, secondary_main, block_top(stack, 2), 0) } {
        fail(format_args!("cannot start CPU 1: {e:?}"));
    }
    let mut d = Deadline::secs(20);
    while !SECONDARY_UP.load(Ordering::Acquire) {
        if d.expired() {
            fail(format_args!("CPU 1 did not come up"));
        }
        mm::sync::spin_loop();
    }
    let dom = shootdown();

    // Phase 1.
    STEP0.store(1, Ordering::Release);
    let mut d = Deadline::secs(20);
    while counter() < 1000 {
        if d.expired() {
            fail(format_args!(
                "mips-shootdown: CPU 1's user loop does not run"
            ));
        }
        mm::sync::spin_loop();
    }
    let s0 = dom.stats();
    let t0 = cp0::count();
    space_unmap(m, P1);
    let latency = cp0::count().wrapping_sub(t0) & 0xffff_ffff;
    let c0 = counter();
    let s1 = dom.stats();
    wait_step(&STEP1, 1, "CPU 1 to fault on P1");
    let f = *RESULT.lock();
    let p1 = f.p1.unwrap_or_else(|| {
        fail(format_args!(
            "phase 1: CPU 1's task ended with {:#x} without a fault",
            f.p1_exit
        ))
    });
    crate::println!(
        "mips-shootdown: phase 1 (user mode, answered from the tick): flush took {latency} \
         Count ticks, {} request(s) posted; CPU 1 faulted at {:#x} with the counter at {} \
         (CPU 0 saw {c0} when the flush returned)",
        s1.requests - s0.requests,
        p1.address,
        p1.counter
    );
    if f.p1_exit != EXIT_KILLED
        || p1.address != P1
        || p1.present
        || !p1.user
        || p1.write
        || s1.requests - s0.requests != 1
        || p1.counter < c0
        || p1.counter > c0 + 1
    {
        fail(format_args!(
            "phase 1: expected a user read fault at {P1:#x} within one loop iteration of the \
             flush, one posted request; got {p1:?}, counter at flush {c0}, stats {s0:?} -> \
             {s1:?}"
        ));
    }

    // Phase 2.
    STEP0.store(2, Ordering::Release);
    wait_step(&STEP1, 2, "CPU 1 to be preempted");
    let f = *RESULT.lock();
    if f.p2_exit_first != PREEMPTED || !f.p2_valid_before {
        fail(format_args!(
            "phase 2: expected CPU 1 preempted with P2 in its TLB: {f:?}"
        ));
    }
    let s0 = dom.stats();
    space_unmap(m, P2);
    let s1 = dom.stats();
    STEP0.store(3, Ordering::Release);
    wait_step(&STEP1, 3, "CPU 1 to fault on P2");
    let f = *RESULT.lock();
    let p2 = f.p2.unwrap_or_else(|| {
        fail(format_args!(
            "phase 2: CPU 1's task ended with {:#x} without a fault",
            f.p2_exit
        ))
    });
    crate::println!(
        "mips-shootdown: phase 2 (switched away: stale mark): {} posted; CPU 1 had P2 under \
         ASID {}, came back with ASID {} and faulted at {:#x}",
        s1.requests - s0.requests,
        f.p2_asid_before,
        p2.asid,
        p2.address
    );
    if s1.requests != s0.requests
        || p2.address != P2
        || p2.asid == f.p2_asid_before
        || f.p2_exit != EXIT_KILLED
    {
        fail(format_args!(
            "phase 2: expected no request, a new ASID and a fault at {P2:#x}; got {f:?}, stats \
             {s0:?} -> {s1:?}"
        ));
    }

    // Phase 3.
    let guard = LOCK.lock();
    STEP0.store(4, Ordering::Release);
    wait_step(&STEP1, 4, "CPU 1 to load the address space and touch P3");
    // Let CPU 1 reach its spin on LOCK.
    let mut d = Deadline::secs(1);
    while !d.expired() {
        core::hint::spin_loop();
    }
    let s0 = dom.stats();
    space_unmap(m, P3);
    let s1 = dom.stats();
    drop(guard);
    wait_step(&STEP1, 5, "CPU 1 to take the lock");
    let f = *RESULT.lock();
    crate::println!(
        "mips-shootdown: phase 3 (spinning in the kernel on a lock CPU 0 held while flushing): \
         {} posted, answered; P3 in CPU 1's TLB before {}, after {}",
        s1.requests - s0.requests,
        f.p3_valid_before,
        f.p3_valid_after
    );
    if s1.requests - s0.requests != 1 || !f.p3_valid_before || f.p3_valid_after {
        fail(format_args!(
            "phase 3: expected one request answered from the spin, P3 dropped: {f:?}"
        ));
    }

    // Phase 4.
    STEP0.store(6, Ordering::Release);
    wait_step(&STEP1, 6, "CPU 1 to load the address space and idle");
    let s0 = dom.stats();
    space_unmap(m, P4);
    let s1 = dom.stats();
    STEP0.store(7, Ordering::Release);
    wait_step(&STEP1, 7, "CPU 1 to check P4");
    let f = *RESULT.lock();
    crate::println!(
        "mips-shootdown: phase 4 (idle with the address space loaded): {} posted, answered; P4 \
         in CPU 1's TLB before {}, after {}",
        s1.requests - s0.requests,
        f.p4_valid_before,
        f.p4_valid_after
    );
    if s1.requests - s0.requests != 1 || !f.p4_valid_before || f.p4_valid_after {
        fail(format_args!(
            "phase 4: expected one request answered in idle, P4 dropped: {f:?}"
        ));
    }

    let st = dom.stats();
    crate::println!("mips-shootdown: {st:?}, {:?}", mmu::ASIDS.stats());
    // CPU 1 is done with the address space (STEP1 = 7, Acquire above).
    SHARED_SPACE.store(core::ptr::null_mut(), Ordering::Relaxed);
    space.destroy();
    // SAFETY: the code frame's own reference (the mapping's is gone).
    unsafe { fr.put(0, code, 0) };
    let leaked = fr.stats().allocated_pages as i64 - baseline as i64;
    if leaked != 0 {
        fail(format_args!("mips-shootdown: {leaked} frames leaked"));
    }
    finish(
        ExitStatus::Success,
        format_args!(
            "test mips-shootdown: 4 unmaps seen by CPU 1 (tick, stale mark, spin, idle), {} \
             requests posted, {} serviced, no frame leaked",
            st.requests, st.serviced
        ),
    )
}

fn space_unmap(m: &Space, va: u64) {
    if m.unmap(va, PAGE_SIZE as u64) != 1 {
        fail(format_args!("unmap of {va:#x} removed nothing"));
    }
}
