//! Tasks, per-CPU state and the scheduler: one global round-robin run
//! queue, preemption only on a tick that interrupted user mode (see the
//! interrupt rule in `arch/src/lib.rs`), an idle task per CPU.
//!
//! # Task states
//!
//! Each task's `state` and `on_cpu` (a CPU is running on its stack, or
//! switching away from it) change together under the task's own lock.
//! `RUNNING` (on a CPU) → `RUNNABLE` → `RUNNING` ...; a task that waits sets
//! itself `BLOCKED` under the lock that protects what it waits for, then
//! calls [`schedule`]; [`wake`] moves it `BLOCKED` → `RUNNABLE`. `DEAD`
//! tasks never run again; the CPU that switched away from one drops its
//! reference (which may free its stack) on the next task's stack.
//!
//! **Only tasks that are off every CPU are ever on the run queue.** A task
//! that yields, or is woken before it got off its CPU, is queued by the
//! CPU that switches away from it, after it is off its stack
//! ([`finish_switch`]: `on_cpu` cleared, and queued if `RUNNABLE`, in one
//! critical section); [`wake`] queues a task itself only if it is off its
//! CPU. So a CPU that picks a task from the queue never waits for another
//! CPU, and two CPUs can never each wait for the task the other is leaving.
//! A task woken before it switched away, with nothing else to run, simply
//! keeps running.
//!
//! # Lock order
//!
//! process locks → a task's lock → run-queue lock → (heap). The sleeper
//! list's lock comes before task locks.
//!
//! # Idle and wake-ups
//!
//! An idle CPU sets its `idle_waiting` flag *under the run-queue lock* when
//! it finds the queue empty, then halts with interrupts enabled. A waker
//! reads the flags under the same lock after pushing, so either the idle
//! CPU saw the task or the waker sees the flag and sends it an IPI (which
//! `sti; hlt` cannot miss).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mm::addr::Frame;
use mm::cpu::{CachePadded, MAX_CPUS};
use mm::rcu::RcuCpu;
use mm::sync::SpinLock;

use super::mem;
use super::process::Process;

/// Kernel stack size: 2^3 frames = 32 KiB.
const STACK_ORDER: u32 = 3;
pub const STACK_SIZE: usize = 4096 << STACK_ORDER;
/// Timer frequency.
pub const HZ: u32 = 100;
/// Ticks a user task runs before it yields to a waiting one.
const SLICE_TICKS: u32 = 2;

pub const RUNNING: u8 = 0;
pub const RUNNABLE: u8 = 1;
pub const BLOCKED: u8 = 2;
pub const DEAD: u8 = 3;

/// A task name for messages.
#[derive(Clone, Copy)]
pub struct Name {
    buf: [u8; 16],
    len: u8,
}

impl Name {
    pub fn new(s: &str) -> Name {
        let mut n = Name {
            buf: [0; 16],
            len: 0,
        };
        // Cut at a character boundary.
        let mut end = s.len().min(16);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        n.buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        n.len = end as u8;
        n
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("?")
    }
}

/// A task's kernel stack: `2^STACK_ORDER` frames from the frame allocator.
struct KStack {
    frame: Frame,
    top: u64,
}

impl KStack {
    fn new() -> Option<KStack> {
        let fa = mem::fa();
        let frame = fa.alloc(super::cpu_id(), STACK_ORDER).ok()?;
        let base = fa.frame_ptr(frame)?.as_ptr() as u64;
        Some(KStack {
            frame,
            top: base + STACK_SIZE as u64,
        })
    }
}

impl Drop for KStack {
    fn drop(&mut self) {
        // SAFETY: the block came from the allocator with this order, and a stack is dropped only with its task, after the last CPU switched off it (`finish_switch` drops the CPU's reference only then).
        unsafe { mem::fa().free(super::cpu_id(), self.frame, STACK_ORDER) };
    }
}

pub struct Task {
    pub tid: u64,
    pub name: Name,
    /// The saved kernel context; touched only by the CPU switching to or
    /// from the task (serialised by `on_cpu`).
    ctx: UnsafeCell<arch::task::Context>,
    /// `None` for idle tasks, which run on their CPU's boot stack.
    stack: Option<KStack>,
    sched: SpinLock<SchedState>,
    /// The process of a user task.
    pub process: Option<Arc<Process>>,
    /// The value the thread exited with (valid once `exited`).
    pub exit_value: AtomicU64,
    /// Set (Release) when the thread has exited, before joiners are woken.
    pub exited: AtomicBool,
    pub is_idle: bool,
}

/// A task's scheduling state; see the module docs.
struct SchedState {
    state: u8,
    on_cpu: bool,
}

// SAFETY: `ctx` is the only non-Sync field; it is accessed only by the CPU
// that switches to or from the task, one at a time (a task is picked only
// when off every CPU, see the module docs).
unsafe impl Sync for Task {}
// SAFETY: as above; a task may be created on one CPU and run on another.
unsafe impl Send for Task {}

static NEXT_TID: AtomicU64 = AtomicU64::new(1);

impl Task {
    fn new(name: &str, process: Option<Arc<Process>>, is_idle: bool) -> Option<Task> {
        Some(Task {
            tid: NEXT_TID.fetch_add(1, Ordering::Relaxed),
            name: Name::new(name),
            ctx: UnsafeCell::new(arch::task::Context::default()),
            stack: if is_idle { None } else { Some(KStack::new()?) },
            sched: SpinLock::new(SchedState {
                state: RUNNABLE,
                on_cpu: false,
            }),
            process,
            exit_value: AtomicU64::new(0),
            exited: AtomicBool::new(false),
            is_idle,
        })
    }

    /// A kernel thread that will run `entry(arg)`; not queued yet.
    pub fn new_kernel(
        name: &str,
        entry: extern "C" fn(usize) -> !,
        arg: usize,
    ) -> Option<Arc<Task>> {
        let t = Task::new(name, None, false)?;
        let top = t.stack_top();
        // SAFETY: the stack is the new task's own, nobody runs on it yet, and its top is page-aligned.
        unsafe { arch::task::init_kernel(&mut *t.ctx.get(), top, entry, arg) };
        Some(Arc::new(t))
    }

    /// A user thread of `process` that will enter user mode with `frame`;
    /// not queued yet.
    pub fn new_user(
        name: &str,
        process: Arc<Process>,
        frame: &arch::task::UserFrame,
    ) -> Option<Arc<Task>> {
        let t = Task::new(name, Some(process), false)?;
        let top = t.stack_top();
        // SAFETY: as in `new_kernel`; the frame is a user-mode frame built by `UserFrame::new_user` or copied from a user task's entry.
        unsafe { arch::task::init_user(&mut *t.ctx.get(), top, frame) };
        Some(Arc::new(t))
    }

    /// Sets the state of the *running* task (`BLOCKED`, `DEAD`).
    pub fn set_state(&self, s: u8) {
        self.sched.lock().state = s;
    }

    fn stack_top(&self) -> u64 {
        self.stack.as_ref().map_or(0, |s| s.top)
    }
}

/// One CPU's scheduler state. The `Cell`s are touched only by their own
/// CPU with interrupts off; the atomics also by others.
pub struct Cpu {
    /// The running task; the CPU owns one strong reference to it.
    current: Cell<*const Task>,
    /// The idle task; owned forever.
    idle: Cell<*const Task>,
    /// The task just switched away from, until `finish_switch`.
    prev: Cell<*const Task>,
    rcu: UnsafeCell<Option<RcuCpu<'static>>>,
    /// Reschedule at the next return to user mode.
    pub need_resched: AtomicBool,
    /// Halted in the idle loop with an empty run queue (under the run-queue
    /// lock).
    idle_waiting: AtomicBool,
    slice: Cell<u32>,
    pub online: AtomicBool,
    pub ticks: AtomicU64,
    /// Page faults from user mode handled on this CPU.
    pub faults: AtomicU64,
    /// Set by the IPI handler (for `test=smp`).
    pub ipis: AtomicU64,
    /// Cycles spent handling page faults from user mode, and how many.
    pub fault_cycles: AtomicU64,
    pub fault_count: AtomicU64,
    /// When the current trap from user mode began (cycle counter), 0 if
    /// it is not a page fault being timed.
    pub trap_start: Cell<u64>,
}

// SAFETY: see the type's documentation: the non-Sync fields are used only
// by their own CPU, with interrupts off, never reentrantly.
unsafe impl Sync for Cpu {}

static CPUS: [CachePadded<Cpu>; MAX_CPUS] = [const {
    CachePadded(Cpu {
        current: Cell::new(core::ptr::null()),
        idle: Cell::new(core::ptr::null()),
        prev: Cell::new(core::ptr::null()),
        rcu: UnsafeCell::new(None),
        need_resched: AtomicBool::new(false),
        idle_waiting: AtomicBool::new(false),
        slice: Cell::new(0),
        online: AtomicBool::new(false),
        ticks: AtomicU64::new(0),
        faults: AtomicU64::new(0),
        ipis: AtomicU64::new(0),
        fault_cycles: AtomicU64::new(0),
        fault_count: AtomicU64::new(0),
        trap_start: Cell::new(0),
    })
}; MAX_CPUS];

/// This CPU's state.
pub fn this() -> &'static Cpu {
    &CPUS[super::cpu_id()]
}

pub fn cpu(n: usize) -> &'static Cpu {
    &CPUS[n]
}

static RUNQ: SpinLock<VecDeque<Arc<Task>>> = SpinLock::new(VecDeque::new());

/// Sleeping tasks and their deadlines (`timer::now_ns`); the tick wakes
/// them. `NEXT_WAKE` is the earliest deadline (u64::MAX: none), so a tick
/// reads one word unless someone is due.
static SLEEPERS: SpinLock<alloc::vec::Vec<(u64, Arc<Task>)>> =
    SpinLock::new(alloc::vec::Vec::new());
static NEXT_WAKE: AtomicU64 = AtomicU64::new(u64::MAX);

/// Blocks the current task for at least `ns` nanoseconds (to the next tick
/// after the deadline).
pub fn sleep_ns(ns: u64) {
    let deadline = arch::timer::now_ns() + ns;
    let me = current_arc();
    {
        let mut s = SLEEPERS.lock();
        me.set_state(BLOCKED);
        s.push((deadline, me));
        NEXT_WAKE.fetch_min(deadline, Ordering::Relaxed);
    }
    schedule();
}

fn wake_sleepers() {
    let now = arch::timer::now_ns();
    if NEXT_WAKE.load(Ordering::Relaxed) > now {
        return;
    }
    let mut s = SLEEPERS.lock();
    let mut next = u64::MAX;
    s.retain(|(d, t)| {
        if *d <= now {
            wake(t);
            false
        } else {
            next = next.min(*d);
            true
        }
    });
    NEXT_WAKE.store(next, Ordering::Relaxed);
}

/// Runs `f` with this CPU's RCU handle.
pub fn with_rcu<R>(f: impl FnOnce(&mut RcuCpu<'static>) -> R) -> R {
    // SAFETY: only this CPU touches its handle, with interrupts off, and no caller holds a borrow across a call that could reach here again (the interrupt handlers run only in user mode or in `wait_for_interrupt`, outside any `with_rcu`; in a spin loop's relax halt, which may be inside one, the arch handler only acknowledges and calls no kernel code).
    let slot = unsafe { &mut *this().rcu.get() };
    f(slot
        .as_mut()
        .expect("RCU handle used before the CPU came online"))
}

/// The running task.
pub fn current() -> &'static Task {
    let p = this().current.get();
    // SAFETY: the CPU owns a strong reference to its current task, so it is alive at least until this CPU switches away, and the returned reference is only used by code running as that task.
    unsafe { &*p }
}

/// A new strong reference to the running task.
pub fn current_arc() -> Arc<Task> {
    let p = this().current.get();
    // SAFETY: `p` came from `Arc::into_raw` and the CPU's reference keeps the count above zero.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

/// Makes the code running on this CPU its idle task and brings the CPU
/// online (RCU handle). Every CPU, once, on its boot stack.
pub fn init_cpu(cpu: usize) {
    if cpu == 0 {
        // The queues' buffers are allocated once, at boot, so that the
        // free-frame count the workloads compare does not move when they
        // grow (they do only past these sizes).
        RUNQ.lock().reserve(1024);
        SLEEPERS.lock().reserve(64);
        super::process::init();
    }
    let idle = Task::new("idle", None, true).expect("idle task");
    {
        let mut s = idle.sched.lock();
        s.state = RUNNING;
        s.on_cpu = true;
    }
    let p = Arc::into_raw(Arc::new(idle));
    let c = this();
    c.idle.set(p);
    // The CPU's `current` reference is a second one to the same task.
    // SAFETY: `p` is a live Arc pointer.
    unsafe { Arc::increment_strong_count(p) };
    c.current.set(p);
    let handle = mem::rcu()
        .register_cpu(cpu)
        .expect("CPU registered with RCU twice");
    // SAFETY: this CPU's slot, not yet used by anyone.
    unsafe { *c.rcu.get() = Some(handle) };
    c.online.store(true, Ordering::Release);
}

/// Puts a task that is off every CPU on the run queue and wakes an idle CPU
/// for it.
fn push(t: Arc<Task>) {
    let mut q = RUNQ.lock();
    q.push_back(t);
    // Under the lock: pairs with the idle loop's check (module docs).
    let me = super::cpu_id();
    let target = (0..arch::smp::cpu_count())
        .filter(|&c| c != me)
        .find(|&c| CPUS[c].idle_waiting.load(Ordering::Relaxed));
    if let Some(c) = target {
        CPUS[c].idle_waiting.store(false, Ordering::Relaxed);
        drop(q);
        arch::mmu::kick(1 << c);
    }
}

/// Makes a new task runnable.
pub fn enqueue(t: Arc<Task>) {
    {
        let mut s = t.sched.lock();
        debug_assert!(!s.on_cpu, "a new task is on a CPU");
        s.state = RUNNABLE;
    }
    push(t);
}

/// Wakes a blocked task (no effect if it is not blocked). If it is still
/// switching away from its CPU, that CPU queues it (`finish_switch`).
pub fn wake(t: &Arc<Task>) {
    let mut s = t.sched.lock();
    if s.state != BLOCKED {
        return;
    }
    s.state = RUNNABLE;
    if !s.on_cpu {
        // Under the task's lock, so `finish_switch` cannot queue it too.
        push(t.clone());
    }
}

/// Whether a task is waiting for a CPU.
pub fn runnable_waiting() -> bool {
    !RUNQ.lock().is_empty()
}

/// Gives the CPU to the next runnable task, if the current one is done,
/// blocked, or another is waiting. Interrupts off.
pub fn schedule() {
    let c = this();
    let prev_ptr = c.current.get();
    // SAFETY: the CPU's reference keeps the current task alive.
    let prev = unsafe { &*prev_ptr };
    let mut ps = prev.sched.lock();
    let next = RUNQ.lock().pop_front();
    let next = match next {
        Some(n) => {
            if ps.state == RUNNING && !prev.is_idle {
                // Queued by `finish_switch` once off this CPU.
                ps.state = RUNNABLE;
            }
            n
        }
        None if ps.state == RUNNING => return,
        None if ps.state == RUNNABLE && !prev.is_idle => {
            // Woken before it got off this CPU and nothing else to run:
            // keep running (nobody else will queue it: it is on a CPU).
            ps.state = RUNNING;
            return;
        }
        None => {
            // Blocked or dead: the idle task runs until someone queues work.
            let idle = c.idle.get();
            // SAFETY: the idle task is owned forever; a new reference.
            unsafe {
                Arc::increment_strong_count(idle);
                Arc::from_raw(idle)
            }
        }
    };
    drop(ps);
    switch_to(prev_ptr, next);
}

/// The syscall `yield` and the preemption point.
pub fn yield_now() {
    schedule();
}

fn switch_to(prev_ptr: *const Task, next: Arc<Task>) {
    let c = this();
    {
        // The lock's Acquire pairs with the Release of `finish_switch` on
        // the CPU that ran `next` last: its context is saved.
        let mut s = next.sched.lock();
        assert!(!s.on_cpu, "task {} picked while on a CPU", next.tid);
        s.on_cpu = true;
        s.state = RUNNING;
    }
    if let Some(p) = &next.process {
        let mm = p.mm.id();
        let cpu = super::cpu_id();
        if mem::shootdown().loaded(cpu) != mm {
            // (S1 in mm::shootdown) record first, then activate.
            mem::shootdown().set_loaded(cpu, mm);
            // SAFETY: the root stays valid while any thread of the process can run (the address space is torn down only after its last thread left it, see `process::exit_thread`).
            unsafe { arch::mmu::activate(p.mm.root_phys(), p.mm.root_entry(), mm) };
        }
        arch::task::set_kernel_stack(next.stack_top());
    }
    c.slice.set(0);
    with_rcu(|r| r.quiescent_state());
    let next_ptr = Arc::into_raw(next);
    c.prev.set(prev_ptr);
    c.current.set(next_ptr);
    // SAFETY: `prev` is the running task (its context is ours to save) and `next` is off every CPU (`on_cpu` was clear) with a context saved by `switch` or built by `init_*`.
    unsafe {
        let prev_ctx = (*prev_ptr).ctx.get();
        let next_ctx = (*next_ptr).ctx.get();
        arch::task::switch(prev_ctx, next_ctx);
    }
    finish_switch();
}

/// Completes a switch on the new task's stack: the previous task is off
/// this CPU, so it may run elsewhere (queued here if it is runnable), and
/// the CPU's reference to it is dropped. Called after `switch` returns and
/// first thing in new tasks (`samara_task_start`).
pub fn finish_switch() {
    let c = this();
    let prev = c.prev.replace(core::ptr::null());
    if prev.is_null() {
        return;
    }
    // SAFETY: the CPU's reference, taken with `Arc::into_raw` when the task became current; a dead task's stack is freed when it drops, here, on another stack.
    let prev = unsafe { Arc::from_raw(prev) };
    let mut s = prev.sched.lock();
    s.on_cpu = false;
    if s.state == RUNNABLE && !prev.is_idle {
        push(prev.clone());
    }
}

/// The timer tick (interrupts off). From user mode: a quiescent state and
/// the time slice; from idle: nothing (the idle loop reports when it wakes).
pub fn tick(from_user: bool) {
    let c = this();
    c.ticks.fetch_add(1, Ordering::Relaxed);
    wake_sleepers();
    if from_user {
        with_rcu(|r| r.quiescent_state());
        let s = c.slice.get() + 1;
        c.slice.set(s);
        if s >= SLICE_TICKS && runnable_waiting() {
            c.need_resched.store(true, Ordering::Relaxed);
        }
    }
}

/// Each CPU's idle loop, on its boot stack.
pub fn idle_loop() -> ! {
    let c = this();
    loop {
        super::tlb::service();
        let next = {
            let mut q = RUNQ.lock();
            let n = q.pop_front();
            if n.is_none() {
                c.idle_waiting.store(true, Ordering::Relaxed);
            }
            n
        };
        if let Some(next) = next {
            switch_to(c.current.get(), next);
            continue;
        }
        with_rcu(|r| r.enter_idle());
        arch::irq::wait_for_interrupt();
        with_rcu(|r| {
            r.exit_idle();
            r.quiescent_state();
        });
        c.idle_waiting.store(false, Ordering::Relaxed);
    }
}
