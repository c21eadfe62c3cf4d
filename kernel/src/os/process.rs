//! Processes: an address space, its threads, its children; exit, kill,
//! wait and join.
//!
//! # Exit
//!
//! A thread leaves its address space first ([`tlb::leave_mm`]: the kernel
//! page tables, nothing loaded), then counts itself out of its process.
//! The last one out tears the address space down — every other thread has
//! left it already, and CPUs that still hold it lazily drop it when the
//! teardown's shootdown reaches them — so no CPU ever runs on a freed page
//! table. It then orphans its children, publishes the exit status, and
//! wakes its parent; a process nobody will wait for (no parent, or an
//! exited one) is reaped at once.
//!
//! # Kill
//!
//! [`Process::kill`] records the status (the first kill wins) and wakes
//! every blocked thread; each thread exits at its next return to user mode
//! (`exit_to_user`), so a thread running on another CPU stops within a
//! tick.
//!
//! # Locks and ordering
//!
//! Lock order: a parent's `inner` → a child's `inner` → the run queue. A
//! child publishes its status with a Release store *before* it takes its
//! parent's lock to wake it; a waiter scans its children's statuses
//! (Acquire) under its own lock, registered as a waiter before it unlocks,
//! so a wake-up between its scan and its sleep is never lost.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mm::sync::SpinLock;
use samara_abi::Errno;

use super::sched::{self, Name, Task, BLOCKED, DEAD};
use super::tlb;
use super::umem::UserMm;

/// `exit_status` before the process has exited.
const RUNNING: u64 = u64::MAX;
/// Tags a kill status in `killed`.
const KILLED: u64 = 1 << 63;

pub struct Process {
    pub pid: u64,
    pub name: Name,
    pub mm: UserMm,
    inner: SpinLock<Inner>,
    /// The kill status (0: not killed).
    killed: AtomicU64,
    /// The exit status once every thread has exited, else `RUNNING`.
    exit_status: AtomicU64,
    /// Set by the one `reap` that counts the process out.
    reaped: AtomicBool,
}

struct Inner {
    parent: Option<Weak<Process>>,
    /// Threads, until joined or the process is reaped.
    threads: Vec<Arc<Task>>,
    live: usize,
    children: Vec<Arc<Process>>,
    /// Threads blocked in `wait` or `join` on this process.
    waiters: Vec<Arc<Task>>,
    /// Threads someone is joining (tids).
    joining: Vec<u64>,
}

static NEXT_PID: AtomicU64 = AtomicU64::new(1);
/// Processes not yet reaped.
static LIVE: AtomicU64 = AtomicU64::new(0);
/// Kernel tasks waiting for `LIVE` to reach 0.
static ALL_GONE: SpinLock<Vec<Arc<Task>>> = SpinLock::new(Vec::new());

/// Allocates the long-lived lists at boot (see `sched::init_cpu`).
pub fn init() {
    ALL_GONE.lock().reserve(4);
}

/// Processes not yet reaped.
pub fn live() -> u64 {
    LIVE.load(Ordering::Acquire)
}

impl Process {
    /// A process with no threads yet.
    pub fn new(name: &str, mm: UserMm, parent: Option<&Arc<Process>>) -> Arc<Process> {
        LIVE.fetch_add(1, Ordering::AcqRel);
        let p = Arc::new(Process {
            pid: NEXT_PID.fetch_add(1, Ordering::Relaxed),
            name: Name::new(name),
            mm,
            inner: SpinLock::new(Inner {
                parent: parent.map(Arc::downgrade),
                threads: Vec::new(),
                live: 0,
                children: Vec::new(),
                waiters: Vec::new(),
                joining: Vec::new(),
            }),
            killed: AtomicU64::new(0),
            exit_status: AtomicU64::new(RUNNING),
            reaped: AtomicBool::new(false),
        });
        if let Some(parent) = parent {
            parent.inner.lock().children.push(p.clone());
        }
        p
    }

    /// Undoes `new` for a process that never got a thread (its first
    /// thread could not be created).
    pub fn abandon(self: &Arc<Self>) {
        // SAFETY: no thread ever ran in the address space and nobody else can reach it.
        unsafe { self.mm.exit(super::cpu_id()) };
        let parent = self.inner.lock().parent.take().and_then(|w| w.upgrade());
        if let Some(parent) = parent {
            parent
                .inner
                .lock()
                .children
                .retain(|c| !Arc::ptr_eq(c, self));
        }
        self.exit_status.store(0, Ordering::Release);
        reap(self);
    }

    /// Adds a thread and makes it runnable.
    pub fn start_thread(&self, t: Arc<Task>) {
        {
            let mut g = self.inner.lock();
            g.threads.push(t.clone());
            g.live += 1;
        }
        sched::enqueue(t);
    }

    /// Whether the process has been killed (or is exiting).
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire) != 0
    }

    /// The exit status, once every thread has exited.
    pub fn exit_status(&self) -> Option<u64> {
        let s = self.exit_status.load(Ordering::Acquire);
        (s != RUNNING).then_some(s)
    }

    /// Ends every thread of the process with `status` (the first kill
    /// wins; `exit` uses it too).
    pub fn kill(&self, status: u64) {
        // Bit 63 tags "killed", so that status 0 is not "alive".
        let tagged = status | KILLED;
        if self
            .killed
            .compare_exchange(0, tagged, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let g = self.inner.lock();
        for t in g.threads.iter().chain(g.waiters.iter()) {
            sched::wake(t);
        }
    }

    /// Blocks the current thread until `ready` (checked under this
    /// process's lock) returns `Some`, or the process is killed (`EINTR`).
    fn wait_on<R>(&self, mut ready: impl FnMut(&mut Inner) -> Option<R>) -> Result<R, Errno> {
        loop {
            let me = sched::current_arc();
            {
                let mut g = self.inner.lock();
                if let Some(r) = ready(&mut g) {
                    return Ok(r);
                }
                if self.killed() {
                    return Err(Errno::Intr);
                }
                me.set_state(BLOCKED);
                g.waiters.push(me.clone());
            }
            sched::schedule();
            self.inner.lock().waiters.retain(|w| !Arc::ptr_eq(w, &me));
        }
    }

    fn wake_waiters(&self) {
        let g = self.inner.lock();
        for w in &g.waiters {
            sched::wake(w);
        }
    }

    /// `wait`: reaps an exited child (`pid` 0: any). `put_status` stores the
    /// status for the caller; if it fails the child is not reaped.
    pub fn wait_child(
        &self,
        pid: u64,
        mut put_status: impl FnMut(u64) -> Result<(), Errno>,
    ) -> Result<u64, Errno> {
        let child = self.wait_on(|g| {
            if !g.children.iter().any(|c| pid == 0 || c.pid == pid) {
                return Some(Err(Errno::Child));
            }
            // Acquire pairs with the Release store in `exit_process`.
            g.children
                .iter()
                .position(|c| {
                    (pid == 0 || c.pid == pid) && c.exit_status.load(Ordering::Acquire) != RUNNING
                })
                .map(|i| Ok(g.children[i].clone()))
        })??;
        put_status(child.exit_status.load(Ordering::Acquire))?;
        let mut g = self.inner.lock();
        if let Some(i) = g.children.iter().position(|c| Arc::ptr_eq(c, &child)) {
            g.children.swap_remove(i);
            drop(g);
            reap(&child);
        }
        Ok(child.pid)
    }

    /// `thread_join`: waits for thread `tid` of this process and returns
    /// its value.
    pub fn join(&self, tid: u64) -> Result<u64, Errno> {
        let me = sched::current().tid;
        if tid == me {
            return Err(Errno::Deadlk);
        }
        {
            let mut g = self.inner.lock();
            if !g.threads.iter().any(|t| t.tid == tid) {
                return Err(Errno::Srch);
            }
            if g.joining.contains(&tid) {
                return Err(Errno::Deadlk);
            }
            g.joining.push(tid);
        }
        let r = self.wait_on(|g| {
            let i = g.threads.iter().position(|t| t.tid == tid)?;
            // Acquire pairs with the Release store in `exit_thread`.
            if !g.threads[i].exited.load(Ordering::Acquire) {
                return None;
            }
            let t = g.threads.swap_remove(i);
            Some(t.exit_value.load(Ordering::Relaxed))
        });
        self.inner.lock().joining.retain(|&t| t != tid);
        r
    }
}

/// Drops a reaped process from the live count and wakes whoever waits for
/// all processes to be gone.
fn reap(p: &Arc<Process>) {
    if p.reaped.swap(true, Ordering::AcqRel) {
        return;
    }
    // Break the process ↔ thread reference cycle.
    let threads = core::mem::take(&mut p.inner.lock().threads);
    drop(threads);
    if LIVE.fetch_sub(1, Ordering::AcqRel) == 1 {
        for t in ALL_GONE.lock().iter() {
            sched::wake(t);
        }
    }
}

/// Blocks the current (kernel) task until every process has been reaped.
pub fn wait_all_gone() {
    loop {
        let me = sched::current_arc();
        {
            let mut g = ALL_GONE.lock();
            if live() == 0 {
                g.retain(|t| !Arc::ptr_eq(t, &me));
                return;
            }
            me.set_state(BLOCKED);
            if !g.iter().any(|t| Arc::ptr_eq(t, &me)) {
                g.push(me.clone());
            }
        }
        // `reap` decrements before it takes ALL_GONE's lock, so a reap
        // after our check finds us registered and wakes us.
        sched::schedule();
    }
}

/// Ends the current thread with `value`. The last thread ends the process.
pub fn exit_thread(value: u64) -> ! {
    let t = sched::current_arc();
    let p = t.process.clone().expect("exit_thread from a kernel thread");
    // Leave the address space before counting out (module docs).
    tlb::leave_mm();
    t.exit_value.store(value, Ordering::Relaxed);
    let last = {
        let mut g = p.inner.lock();
        g.live -= 1;
        // Release pairs with the Acquire in `join`.
        t.exited.store(true, Ordering::Release);
        g.live == 0
    };
    p.wake_waiters();
    if last {
        exit_process(&p, value);
    }
    drop(p);
    t.set_state(DEAD);
    drop(t);
    sched::schedule();
    unreachable!("a dead task was scheduled again");
}

fn exit_process(p: &Arc<Process>, last_value: u64) {
    let killed = p.killed.load(Ordering::Acquire);
    let status = if killed != 0 {
        killed & !KILLED
    } else {
        last_value & 0xff
    };
    // SAFETY: every thread of the process has exited and left the address space (`exit_thread`), and nothing else uses it: no other thread can fault, copy or fork from it now, and the process is never run again.
    unsafe { p.mm.exit(super::cpu_id()) };
    // Orphan the children; reap those that already exited.
    let children = core::mem::take(&mut p.inner.lock().children);
    for c in children {
        let mut g = c.inner.lock();
        // Acquire pairs with the child's Release store below.
        if c.exit_status.load(Ordering::Acquire) != RUNNING {
            drop(g);
            reap(&c);
        } else {
            g.parent = None;
        }
    }
    // Release pairs with the Acquire loads in `wait_child` and above.
    p.exit_status.store(status, Ordering::Release);
    // After the store: a parent exiting now either saw the status (and
    // reaps us) or cleared `parent` before we read it (and we reap
    // ourselves); `reap` counts a process out only once either way.
    let parent = p.inner.lock().parent.clone();
    match parent.and_then(|w| w.upgrade()) {
        Some(parent) => parent.wake_waiters(),
        None => reap(p),
    }
}
