//! Quiescent-state-based RCU (QSBR).
//!
//! A reader announces nothing: a CPU that is inside a read-side critical
//! section simply has not yet passed a *quiescent state*, a point where it
//! holds no reference obtained under RCU. The kernel reports quiescent states
//! from the places where no read section can be open: the timer tick taken
//! from user mode or idle, a context switch, the return to user mode.
//! [`RcuCpu::read_lock`] therefore compiles to nothing in release builds: no
//! atomic instruction, no store to a shared cache line.
//!
//! A *grace period* (GP) begins after an updater has unpublished an object
//! and ends once every online, non-idle CPU has reported a quiescent state
//! since the beginning. Every read section that could have seen the old
//! object has then finished, and the object may be freed. Callbacks queued
//! with [`Rcu::call`] run after such a grace period; [`RcuCpu::synchronize`]
//! waits for one; [`RcuCpu::barrier`] waits for every queued callback.
//!
//! # State
//!
//! `gp_seq` counts grace periods the way Linux's `rcu_seq` does: its low bit
//! says whether a GP is in progress, the rest counts completed GPs. GP `s`
//! (odd) starts when `gp_seq` moves from `s - 1` to `s` and completes when it
//! moves to `s + 1`. Each CPU owns one cache line holding the last GP it
//! reported (`qs_seq`) and its idle counter (`dynticks`, odd while active).
//! A report stores to the reporting CPU's own line only; whoever polls the
//! GP engine checks the online CPUs' lines and ends the GP when all of them
//! reported or are idle. Nothing on the read side and nothing in a report
//! writes a line another CPU writes.
//!
//! # Memory ordering (the pairs, each documented at both ends below)
//!
//! - (A) *Removal vs. the GP that covers it.* An updater unpublishes an
//!   object, then queues its callback; [`Rcu::snap`] reads `gp_seq` with an
//!   AcqRel read-modify-write. GP starts are RMWs of `gp_seq` too, so either
//!   the snapshot precedes the start in `gp_seq`'s modification order (then
//!   the start acquires the removal, and the GP counts) or it follows it (the
//!   snapshot then sees the GP running and waits for the next one).
//! - (B) *GP start vs. later readers.* A CPU reads `gp_seq` with Acquire
//!   before reporting; a read section it opens after the report therefore
//!   happens after the start, hence after every removal the GP covers, and
//!   cannot find the removed object.
//! - (C) *Earlier readers vs. GP end.* The report is a Release store of
//!   `qs_seq`; the poller reads it with Acquire, then ends the GP with an
//!   AcqRel RMW of `gp_seq`; a callback runs only after an Acquire load of
//!   `gp_seq` shows its GP completed. Every read section that ended before
//!   the report thus happens before the callback frees anything.
//! - (D) *Idle CPUs.* Entering and leaving idle are AcqRel RMWs of the
//!   CPU's `dynticks`; the poller samples an idle CPU with an AcqRel RMW of
//!   the same word. If the sample comes first in its modification order, the
//!   CPU's exit from idle acquires the poller's view (which includes every
//!   removal the GP covers, by (A)/(B)); if the CPU's entry comes first, the
//!   poller acquires everything the CPU read before it went idle. RMWs rather
//!   than fences make the argument hold in the C++ model that loom checks.
//!
//! # Locking
//!
//! Each CPU's callback queue has its own [`SpinLock`]; `gp_lock` serialises
//! starting and ending grace periods, and CPUs coming online or going
//! offline against the engine's scan of the online CPUs. The engine only
//! try-locks it; nobody holding it waits for anything else. A queue lock is
//! never held while taking `gp_lock`, and no lock is held while callbacks
//! run.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::cpu::{CachePadded, CpuId, PerCpu, MAX_CPUS};
use crate::sync::{injected, spin_loop, AtomicU64, Fault, Ordering, SpinLock, UnsafeCell};

/// The type of an RCU callback: receives the head it was queued with.
pub type RcuFunc = unsafe fn(NonNull<RcuHead>);

/// The link an object embeds to be passed to [`Rcu::call`].
///
/// While queued, the head belongs to RCU: the object must neither be freed
/// nor queued again until the callback has run.
pub struct RcuHead {
    next: UnsafeCell<*mut RcuHead>,
    func: UnsafeCell<Option<RcuFunc>>,
    /// The `gp_seq` value at which the callback may run (see [`Rcu::snap`]).
    snap: UnsafeCell<u64>,
}

// SAFETY: the fields are only accessed by whoever holds the queue lock of the
// queue the head is on, or by the single invoker after it dequeued the head.
unsafe impl Send for RcuHead {}
// SAFETY: as for `Send`; a shared `&RcuHead` gives no access to the fields.
unsafe impl Sync for RcuHead {}

impl Default for RcuHead {
    fn default() -> Self {
        Self::new()
    }
}

impl RcuHead {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RcuHead {
            next: UnsafeCell::new(ptr::null_mut()),
            func: UnsafeCell::new(None),
            snap: UnsafeCell::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        RcuHead {
            next: UnsafeCell::new(ptr::null_mut()),
            func: UnsafeCell::new(None),
            snap: UnsafeCell::new(0),
        }
    }
}

/// A FIFO of queued heads, oldest first. Snapshots are non-decreasing from
/// head to tail because they are taken with an RMW of `gp_seq` under the lock.
struct CbQueue {
    head: *mut RcuHead,
    tail: *mut RcuHead,
}

// SAFETY: the queue only holds pointers to heads whose owners handed them
// over to RCU with `Rcu::call`, which requires them to be usable from any CPU.
unsafe impl Send for CbQueue {}

impl CbQueue {
    const fn new() -> Self {
        CbQueue {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
        }
    }

    /// # Safety
    /// `h` is valid, owned by RCU from now on, and not on any queue.
    unsafe fn push(&mut self, h: NonNull<RcuHead>) {
        let h = h.as_ptr();
        // SAFETY: `h` is valid and exclusively ours (caller's contract); the tail, if any, is a queued head protected by the lock we hold.
        unsafe {
            (*h).next.with_mut(|n| *n = ptr::null_mut());
            if self.tail.is_null() {
                self.head = h;
            } else {
                (*self.tail).next.with_mut(|n| *n = h);
            }
        }
        self.tail = h;
    }

    /// The snapshot of the oldest queued callback.
    fn first_snap(&self) -> Option<u64> {
        // SAFETY: `head` is a queued head protected by the lock we hold.
        (!self.head.is_null()).then(|| unsafe { (*self.head).snap.with(|s| *s) })
    }

    /// The snapshot of the newest queued callback.
    fn last_snap(&self) -> Option<u64> {
        // SAFETY: `tail` is a queued head protected by the lock we hold.
        (!self.tail.is_null()).then(|| unsafe { (*self.tail).snap.with(|s| *s) })
    }

    /// Detaches the callbacks whose grace period has completed at `gp_seq`.
    fn take_ready(&mut self, gp_seq: u64) -> *mut RcuHead {
        let first = self.head;
        let mut last: *mut RcuHead = ptr::null_mut();
        let mut cur = self.head;
        // SAFETY: every head on the queue is valid and protected by our lock.
        unsafe {
            while !cur.is_null() && seq_done(gp_seq, (*cur).snap.with(|s| *s)) {
                last = cur;
                cur = (*cur).next.with(|n| *n);
            }
            if last.is_null() {
                return ptr::null_mut();
            }
            (*last).next.with_mut(|n| *n = ptr::null_mut());
        }
        self.head = cur;
        if cur.is_null() {
            self.tail = ptr::null_mut();
        }
        first
    }
}

/// Whether the grace period a callback with snapshot `snap` waits for has
/// completed once `gp_seq` reads `cur`.
#[inline]
fn seq_done(cur: u64, snap: u64) -> bool {
    cur.wrapping_sub(snap) as i64 >= 0
}

/// Per-CPU RCU state; one cache line per CPU (see [`PerCpu`]).
struct RcuCpuState {
    /// The last GP (odd `gp_seq` value) this CPU reported a quiescent state
    /// for. Written only by the owning CPU (Release, pair (C)).
    qs_seq: AtomicU64,
    /// Odd while the CPU is active, even while idle or offline. Changed only
    /// by AcqRel RMWs (pair (D)).
    dynticks: AtomicU64,
    /// Read-side nesting depth, for the debug check in reports. Only the
    /// owning CPU touches it.
    #[cfg(debug_assertions)]
    nesting: AtomicU64,
    cbs: SpinLock<CbQueue>,
    /// Callbacks queued on / invoked from this CPU's queue (statistics and
    /// [`RcuCpu::barrier`]). Written under `cbs`.
    queued: AtomicU64,
    invoked: AtomicU64,
}

impl RcuCpuState {
    fn new() -> Self {
        RcuCpuState {
            qs_seq: AtomicU64::new(0),
            dynticks: AtomicU64::new(0),
            #[cfg(debug_assertions)]
            nesting: AtomicU64::new(0),
            cbs: SpinLock::new(CbQueue::new()),
            queued: AtomicU64::new(0),
            invoked: AtomicU64::new(0),
        }
    }

    fn is_active(dynticks: u64) -> bool {
        dynticks & 1 == 1
    }
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RcuStats {
    /// Grace periods completed since boot.
    pub grace_periods: u64,
    /// Callbacks ever queued with [`Rcu::call`].
    pub callbacks_queued: u64,
    /// Callbacks that have run.
    pub callbacks_invoked: u64,
}

/// Why a CPU could not be brought online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// `cpu >= MAX_CPUS`.
    OutOfRange(CpuId),
    /// The CPU already has a live handle.
    AlreadyOnline(CpuId),
}

/// The RCU domain: one per system.
pub struct Rcu {
    /// See the module documentation. Written only at GP start and end.
    gp_seq: CachePadded<AtomicU64>,
    /// The highest GP snapshot some callback or waiter needs; the engine
    /// keeps starting grace periods until `gp_seq` reaches it.
    gp_needed: CachePadded<AtomicU64>,
    /// CPUs with a live [`RcuCpu`] handle. The GP engine scans only these.
    /// Changed only under `gp_lock`.
    online: AtomicU64,
    /// Serialises GP start and end, and CPUs going on- and offline against
    /// the engine's scans (see "Locking").
    gp_lock: SpinLock<()>,
    cpus: PerCpu<RcuCpuState>,
}

impl Default for Rcu {
    fn default() -> Self {
        Self::new()
    }
}

impl Rcu {
    pub fn new() -> Self {
        Rcu {
            gp_seq: CachePadded(AtomicU64::new(0)),
            gp_needed: CachePadded(AtomicU64::new(0)),
            online: AtomicU64::new(0),
            gp_lock: SpinLock::new(()),
            cpus: PerCpu::new(|_| RcuCpuState::new()),
        }
    }

    /// Brings `cpu` online and returns its handle, through which that CPU
    /// (and only it) reads and reports quiescent states.
    pub fn register_cpu(&self, cpu: CpuId) -> Result<RcuCpu<'_>, RegisterError> {
        if cpu >= MAX_CPUS {
            return Err(RegisterError::OutOfRange(cpu));
        }
        let bit = 1u64 << cpu;
        // Under `gp_lock`, which the GP engine holds while it scans `online`:
        // either the engine's scan comes first, and this CPU's later read
        // sections happen after it (and after every removal the running GP
        // covers), or this CPU is in the scan.
        let _g = self.gp_lock.lock();
        if self.online.load(Ordering::Relaxed) & bit != 0 {
            return Err(RegisterError::AlreadyOnline(cpu));
        }
        self.online
            .store(self.online.load(Ordering::Relaxed) | bit, Ordering::Relaxed);
        let st = self.cpus.get(cpu);
        // The CPU starts active (odd). Until its first report, `qs_seq` is
        // older than any GP in progress, so the engine waits for it: a CPU
        // coming online in the middle of a GP is treated conservatively.
        // AcqRel: pairs with the poller's sampling RMW in `cpu_quiet` (D).
        let d = st.dynticks.fetch_add(1, Ordering::AcqRel);
        debug_assert!(!RcuCpuState::is_active(d));
        Ok(RcuCpu {
            rcu: self,
            cpu,
            _not_send: PhantomData,
        })
    }

    /// A read-side critical section on `cpu`, for code that knows its CPU
    /// number but cannot borrow the CPU's [`RcuCpu`] handle. Prefer
    /// [`RcuCpu::read_lock`], whose borrow makes holding the guard across a
    /// report a compile error; for this one, debug builds check it at run
    /// time.
    #[inline(always)]
    pub fn read_lock(&self, cpu: CpuId) -> RcuReadGuard<'_> {
        RcuReadGuard::new(self, cpu)
    }

    /// Queues `func(head)` to run on some CPU after a grace period that
    /// starts after this call. Callbacks queued on one CPU run in order.
    ///
    /// Samara's kernel calls this with interrupts disabled on `cpu`; any CPU
    /// number is correct, the caller's own one is cheapest.
    ///
    /// # Safety
    /// `head` points to a valid [`RcuHead`] that is not queued, and it and
    /// whatever `func` uses stay valid until `func` has run. `func` may run
    /// on any CPU, in the context of whoever polls the queue.
    pub unsafe fn call(&self, cpu: CpuId, head: NonNull<RcuHead>, func: RcuFunc) {
        let st = self.cpus.get(cpu);
        let mut q = st.cbs.lock();
        // Taking the snapshot under the queue lock keeps snapshots monotonic
        // along the queue, which `take_ready` relies on.
        let snap = self.snap();
        // SAFETY: the caller hands the head over to us.
        unsafe {
            head.as_ref().func.with_mut(|f| *f = Some(func));
            head.as_ref().snap.with_mut(|s| *s = snap);
            q.push(head);
        }
        st.queued
            .store(st.queued.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        drop(q);
        self.request_gp(snap);
    }

    /// Queues an owning closure, for callers that have an allocator.
    #[cfg(any(test, feature = "std"))]
    pub fn call_boxed<F: FnOnce() + Send + 'static>(&self, cpu: CpuId, f: F) {
        #[repr(C)]
        struct Boxed<F> {
            head: RcuHead,
            f: F,
        }
        unsafe fn run<F: FnOnce()>(h: NonNull<RcuHead>) {
            // SAFETY: `h` is the first field of a `#[repr(C)] Boxed<F>` leaked below, and each head runs once: we own the box again.
            let b = unsafe { Box::from_raw(h.as_ptr().cast::<Boxed<F>>()) };
            (b.f)();
        }
        let b = Box::into_raw(Box::new(Boxed {
            head: RcuHead::new(),
            f,
        }));
        // SAFETY: the box is leaked until `run` reclaims it; the head is its first field (repr(C)) and not queued anywhere else.
        unsafe { self.call(cpu, NonNull::new_unchecked(b.cast::<RcuHead>()), run::<F>) }
    }

    /// The `gp_seq` value at which a grace period that starts after this
    /// point has completed.
    ///
    /// The AcqRel RMW is pair (A): it orders the caller's preceding removal
    /// against every GP start (`start_gp`'s RMW of `gp_seq`).
    fn snap(&self) -> u64 {
        let cur = self.gp_seq.fetch_add(0, Ordering::AcqRel);
        if injected(Fault::RcuSnapCountsCurrentGp) {
            return (cur + 1) & !1;
        }
        // Idle (even): the next GP to start covers us; it completes at
        // cur + 2. In progress (odd): it may have started before our removal,
        // so we need the one after it, completing at cur + 3.
        (cur + 3) & !1
    }

    /// Records that a grace period completing at `snap` is needed. The GP
    /// starts at the next poll (a quiescent-state report, idle entry, or a
    /// waiter's loop), so that callbacks queued in between share it.
    fn request_gp(&self, snap: u64) {
        self.gp_needed.fetch_max(snap, Ordering::Relaxed);
    }

    /// Drives the GP engine one step: ends the current GP if every CPU has
    /// passed a quiescent state, starts the next one if someone needs it.
    /// Cheap when there is nothing to do; callable from any CPU.
    fn advance_gp(&self) {
        let Some(_g) = self.gp_lock.try_lock() else {
            // Someone else is advancing; they will see what we would see.
            return;
        };
        let mut seq = self.gp_seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            if !self.all_cpus_quiet(seq) {
                return;
            }
            // Pair (C): AcqRel, released to callback invokers' Acquire loads
            // of `gp_seq`; the Acquire half orders this after the reports we
            // read in `all_cpus_quiet`.
            self.gp_seq.fetch_add(1, Ordering::AcqRel);
            seq += 1;
        }
        if seq_done(seq, self.gp_needed.load(Ordering::Relaxed)) {
            return;
        }
        // Start GP seq + 1. Pair (A): this RMW is ordered against every
        // `snap()` RMW. Pair (B): CPUs read the new value with Acquire before
        // reporting for it.
        self.gp_seq.fetch_add(1, Ordering::AcqRel);
        // Idle CPUs may already count; a GP with no active CPU ends at once.
        if self.all_cpus_quiet(seq + 1) {
            self.gp_seq.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Whether every online CPU has reported a quiescent state for GP `gp`
    /// or is idle.
    fn all_cpus_quiet(&self, gp: u64) -> bool {
        // Relaxed: `online` changes only under `gp_lock`, which we hold.
        let mut mask = self.online.load(Ordering::Relaxed);
        while mask != 0 {
            let cpu = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if !self.cpu_quiet(cpu, gp) {
                return false;
            }
        }
        true
    }

    fn cpu_quiet(&self, cpu: CpuId, gp: u64) -> bool {
        let st = self.cpus.get(cpu);
        // Pair (C): Acquire pairs with the Release store in `report_qs`.
        if st.qs_seq.load(Ordering::Acquire) == gp {
            return true;
        }
        // Pair (D): an RMW, not a load, so that it is ordered against the
        // CPU's own RMWs when it enters or leaves idle. Costs a write to an
        // idle CPU's line once per GP; never to an active CPU's.
        let d = if injected(Fault::RcuIdleSampleLoad) {
            st.dynticks.load(Ordering::Acquire)
        } else {
            st.dynticks.fetch_add(0, Ordering::AcqRel)
        };
        !RcuCpuState::is_active(d)
    }

    /// Runs the callbacks on `cpu`'s queue whose grace period has completed.
    fn invoke_ready(&self, cpu: CpuId) {
        let st = self.cpus.get(cpu);
        // Pair (C): Acquire pairs with the AcqRel RMW that ended the GP.
        let seq = self.gp_seq.load(Ordering::Acquire);
        let mut list = {
            let mut q = st.cbs.lock();
            match q.first_snap() {
                Some(s) if seq_done(seq, s) => q.take_ready(seq),
                _ => return,
            }
        };
        let mut n = 0;
        while let Some(h) = NonNull::new(list) {
            // SAFETY: the detached list is ours alone; each head is valid until its callback runs, so read its fields first.
            let (next, func) = unsafe {
                (
                    h.as_ref().next.with(|n| *n),
                    h.as_ref().func.with_mut(|f| (*f).take()),
                )
            };
            list = next;
            if let Some(func) = func {
                // SAFETY: `func` was queued with this head by `call`, whose contract keeps both valid until now; it runs exactly once.
                unsafe { func(h) };
            }
            n += 1;
        }
        // Counted under the lock so `barrier` never sees `invoked` run ahead
        // of the callbacks actually done; Release pairs with its Acquire.
        let _q = st.cbs.lock();
        st.invoked
            .store(st.invoked.load(Ordering::Relaxed) + n, Ordering::Release);
    }

    /// Counters summed over all CPUs.
    pub fn stats(&self) -> RcuStats {
        let mut s = RcuStats {
            grace_periods: self.gp_seq.load(Ordering::Acquire) / 2,
            ..RcuStats::default()
        };
        for (_, st) in self.cpus.iter() {
            s.callbacks_queued += st.queued.load(Ordering::Relaxed);
            s.callbacks_invoked += st.invoked.load(Ordering::Relaxed);
        }
        s
    }

    /// Callbacks queued on `cpu` that have not run yet.
    pub fn pending_callbacks(&self, cpu: CpuId) -> u64 {
        let st = self.cpus.get(cpu);
        let _q = st.cbs.lock();
        st.queued.load(Ordering::Relaxed) - st.invoked.load(Ordering::Relaxed)
    }
}

/// A CPU's handle on the RCU domain. There is one per online CPU; it is
/// neither `Send` nor `Sync`: it stands for "the code running on this CPU".
pub struct RcuCpu<'a> {
    rcu: &'a Rcu,
    cpu: CpuId,
    _not_send: PhantomData<*mut ()>,
}

impl<'a> RcuCpu<'a> {
    pub fn id(&self) -> CpuId {
        self.cpu
    }

    pub fn rcu(&self) -> &'a Rcu {
        self.rcu
    }

    fn state(&self) -> &'a RcuCpuState {
        self.rcu.cpus.get(self.cpu)
    }

    /// Opens a read-side critical section. Free in release builds.
    ///
    /// The guard borrows this handle, and reporting a quiescent state needs
    /// it mutably, so a guard held across a report does not compile.
    #[inline(always)]
    pub fn read_lock(&self) -> RcuReadGuard<'_> {
        RcuReadGuard::new(self.rcu, self.cpu)
    }

    /// Reports a quiescent state (the kernel calls this from the tick, idle,
    /// context switch and the return to user mode), then advances the grace
    /// period engine and runs this CPU's ready callbacks.
    pub fn quiescent_state(&mut self) {
        self.report_qs();
        self.rcu.advance_gp();
        self.rcu.invoke_ready(self.cpu);
    }

    /// Reports a quiescent state without driving the grace-period engine or
    /// running callbacks: for hot paths (the kernel's return to user mode
    /// after every fault and syscall). It reads `gp_seq` and writes only
    /// this CPU's own line, and only once per grace period; the engine
    /// notices the report at the next [`Self::quiescent_state`] on any CPU
    /// (the tick does one).
    pub fn report(&mut self) {
        self.report_qs();
    }

    fn report_qs(&self) {
        let st = self.state();
        #[cfg(debug_assertions)]
        {
            let depth = st.nesting.load(Ordering::Relaxed);
            assert!(
                depth == 0,
                "RCU: CPU {} reported a quiescent state inside {} open read-side critical \
                 section(s); a reader's references would be freed under it",
                self.cpu,
                depth
            );
        }
        // Pair (B): Acquire pairs with the AcqRel RMW that started the GP, so
        // read sections after this report see every removal it covers.
        let seq = self.rcu.gp_seq.load(Ordering::Acquire);
        if seq & 1 == 1 && st.qs_seq.load(Ordering::Relaxed) != seq {
            // Pair (C): Release orders this CPU's earlier read sections
            // before the report; pairs with the Acquire load in `cpu_quiet`.
            let order = if injected(Fault::RcuReportRelaxed) {
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            st.qs_seq.store(seq, order);
        }
    }

    /// Enters an extended quiescent state (idle): until [`exit_idle`], this
    /// CPU holds no grace period up and runs no read sections.
    ///
    /// [`exit_idle`]: RcuCpu::exit_idle
    pub fn enter_idle(&mut self) {
        self.report_qs();
        // Pair (D): Release half publishes this CPU's earlier reads to the
        // poller's sampling RMW in `cpu_quiet`.
        let d = self.state().dynticks.fetch_add(1, Ordering::AcqRel);
        debug_assert!(
            RcuCpuState::is_active(d),
            "RCU: CPU {} entered idle twice",
            self.cpu
        );
        self.rcu.advance_gp();
    }

    /// Leaves idle; read sections may follow.
    pub fn exit_idle(&mut self) {
        // Pair (D): Acquire half pairs with the poller's sampling RMW: if the
        // poller counted us idle, our next read sections see the removals
        // its grace period covers.
        let d = self.state().dynticks.fetch_add(1, Ordering::AcqRel);
        debug_assert!(
            !RcuCpuState::is_active(d),
            "RCU: CPU {} left idle twice",
            self.cpu
        );
    }

    /// Queues a callback on this CPU; see [`Rcu::call`].
    ///
    /// # Safety
    /// As for [`Rcu::call`].
    pub unsafe fn call(&self, head: NonNull<RcuHead>, func: RcuFunc) {
        // SAFETY: forwarded contract.
        unsafe { self.rcu.call(self.cpu, head, func) }
    }

    /// Waits for a full grace period: every read section that was open when
    /// this was called has ended when it returns.
    pub fn synchronize(&mut self) {
        let snap = self.rcu.snap();
        self.rcu.request_gp(snap);
        loop {
            self.quiescent_state();
            if seq_done(self.rcu.gp_seq.load(Ordering::Acquire), snap) {
                return;
            }
            spin_loop();
        }
    }

    /// Waits until every callback queued (on any CPU) before this call has
    /// run. Helps by running other CPUs' ready callbacks, so idle CPUs do
    /// not stall it.
    pub fn barrier(&mut self) {
        let rcu = self.rcu;
        let mut targets = [0u64; MAX_CPUS];
        let mut need = 0u64;
        for (cpu, st) in rcu.cpus.iter() {
            let q = st.cbs.lock();
            targets[cpu] = st.queued.load(Ordering::Relaxed);
            if let Some(s) = q.last_snap() {
                need = need.max(s);
            }
        }
        if need != 0 {
            rcu.request_gp(need);
        }
        loop {
            self.quiescent_state();
            let mut done = true;
            for (cpu, st) in rcu.cpus.iter() {
                if targets[cpu] == 0 {
                    continue;
                }
                rcu.invoke_ready(cpu);
                // Acquire pairs with the Release store in `invoke_ready`.
                if st.invoked.load(Ordering::Acquire) < targets[cpu] {
                    done = false;
                }
            }
            if done {
                return;
            }
            spin_loop();
        }
    }
}

impl Drop for RcuCpu<'_> {
    /// Takes the CPU offline: it holds no grace period up from now on. Its
    /// queued callbacks stay queued and run when some CPU calls
    /// [`RcuCpu::barrier`] or brings the CPU back online and polls.
    fn drop(&mut self) {
        let st = self.state();
        #[cfg(debug_assertions)]
        debug_assert_eq!(st.nesting.load(Ordering::Relaxed), 0);
        // Pair (D) as for entering idle. An idle CPU is already quiescent.
        if RcuCpuState::is_active(st.dynticks.load(Ordering::Relaxed)) {
            st.dynticks.fetch_add(1, Ordering::AcqRel);
        }
        {
            // Under `gp_lock` (see `register_cpu`): the next scan that no
            // longer sees this CPU acquires everything it read before.
            let _g = self.rcu.gp_lock.lock();
            let online = self.rcu.online.load(Ordering::Relaxed);
            self.rcu
                .online
                .store(online & !(1u64 << self.cpu), Ordering::Relaxed);
        }
        self.rcu.advance_gp();
    }
}

/// Proof of an open read-side critical section: references obtained under
/// it stay valid until it is dropped. Neither `Send` nor `Sync`.
#[must_use = "an RCU read section ends as soon as its guard is dropped"]
pub struct RcuReadGuard<'a> {
    #[cfg(debug_assertions)]
    state: &'a RcuCpuState,
    _rcu: PhantomData<&'a Rcu>,
    _not_send: PhantomData<*mut ()>,
}

impl<'a> RcuReadGuard<'a> {
    #[inline(always)]
    fn new(rcu: &'a Rcu, cpu: CpuId) -> Self {
        #[cfg(debug_assertions)]
        {
            let state = rcu.cpus.get(cpu);
            state
                .nesting
                .store(state.nesting.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            RcuReadGuard {
                state,
                _rcu: PhantomData,
                _not_send: PhantomData,
            }
        }
        #[cfg(not(debug_assertions))]
        {
            let _ = (rcu, cpu);
            RcuReadGuard {
                _rcu: PhantomData,
                _not_send: PhantomData,
            }
        }
    }
}

impl Drop for RcuReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        self.state.nesting.store(
            self.state.nesting.load(Ordering::Relaxed) - 1,
            Ordering::Relaxed,
        );
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};

    /// A callback target that records the order callbacks ran in.
    #[repr(C)]
    struct Tagged {
        head: RcuHead,
        tag: usize,
        log: Arc<Mutex<Vec<usize>>>,
    }

    unsafe fn log_tag(h: NonNull<RcuHead>) {
        // SAFETY: every head queued with this function is the first field of a `Box<Tagged>` leaked by `queue_tagged`.
        let t = unsafe { Box::from_raw(h.as_ptr().cast::<Tagged>()) };
        t.log.lock().unwrap().push(t.tag);
    }

    fn queue_tagged(rcu: &Rcu, cpu: CpuId, tag: usize, log: &Arc<Mutex<Vec<usize>>>) {
        let t = Box::into_raw(Box::new(Tagged {
            head: RcuHead::new(),
            tag,
            log: log.clone(),
        }));
        // SAFETY: `head` is at offset 0 of the leaked `Tagged` (checked below), which `log_tag` frees exactly once.
        unsafe {
            assert_eq!(core::mem::offset_of!(Tagged, head), 0);
            rcu.call(cpu, NonNull::new_unchecked(t.cast()), log_tag);
        }
    }

    #[test]
    fn callbacks_wait_for_every_active_cpu_and_run_in_order() {
        let rcu = Rcu::new();
        let mut c0 = rcu.register_cpu(0).unwrap();
        let mut c1 = rcu.register_cpu(1).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for tag in 0..5 {
            queue_tagged(&rcu, 0, tag, &log);
        }
        // CPU 1 never reports: nothing may run, however often CPU 0 polls.
        for _ in 0..10 {
            c0.quiescent_state();
        }
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(rcu.pending_callbacks(0), 5);
        c1.quiescent_state();
        c0.quiescent_state();
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        let s = rcu.stats();
        assert_eq!((s.callbacks_queued, s.callbacks_invoked), (5, 5));
        // The five callbacks were batched into one grace period.
        assert_eq!(s.grace_periods, 1);
    }

    #[test]
    fn a_report_from_before_the_grace_period_does_not_count() {
        let rcu = Rcu::new();
        let mut c0 = rcu.register_cpu(0).unwrap();
        let mut c1 = rcu.register_cpu(1).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        queue_tagged(&rcu, 0, 1, &log);
        c0.quiescent_state(); // starts GP 1
        c1.quiescent_state(); // CPU 1 reports for GP 1
        queue_tagged(&rcu, 0, 2, &log); // queued during GP 1: needs GP 2
        c0.quiescent_state(); // ends GP 1, starts GP 2
        assert_eq!(*log.lock().unwrap(), vec![1]);
        c0.quiescent_state();
        assert_eq!(*log.lock().unwrap(), vec![1], "GP 2 needs CPU 1's report");
        c1.quiescent_state();
        c0.quiescent_state();
        assert_eq!(*log.lock().unwrap(), vec![1, 2]);
        assert_eq!(rcu.stats().grace_periods, 2);
    }

    #[test]
    fn idle_and_offline_cpus_do_not_hold_up_grace_periods() {
        let rcu = Rcu::new();
        let mut c0 = rcu.register_cpu(0).unwrap();
        let mut c1 = rcu.register_cpu(1).unwrap();
        let c2 = rcu.register_cpu(2).unwrap();
        c1.enter_idle();
        drop(c2);
        let log = Arc::new(Mutex::new(Vec::new()));
        queue_tagged(&rcu, 0, 7, &log);
        c0.quiescent_state(); // starts the GP
        c0.quiescent_state(); // reports: the only active CPU
        assert_eq!(*log.lock().unwrap(), vec![7]);
        // Back from idle, CPU 1 counts again.
        c1.exit_idle();
        queue_tagged(&rcu, 0, 8, &log);
        c0.quiescent_state();
        c0.quiescent_state();
        assert_eq!(*log.lock().unwrap(), vec![7]);
        c1.quiescent_state();
        c0.quiescent_state();
        assert_eq!(*log.lock().unwrap(), vec![7, 8]);
        // CPU 2 can come back.
        assert!(rcu.register_cpu(2).is_ok());
    }

    #[test]
    fn register_rejects_bad_and_duplicate_cpus() {
        let rcu = Rcu::new();
        let _c = rcu.register_cpu(3).unwrap();
        assert_eq!(
            rcu.register_cpu(3).err(),
            Some(RegisterError::AlreadyOnline(3))
        );
        assert_eq!(
            rcu.register_cpu(MAX_CPUS).err(),
            Some(RegisterError::OutOfRange(MAX_CPUS))
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "inside 1 open read-side critical section")]
    fn report_inside_read_section_panics() {
        let rcu = Rcu::new();
        let mut c0 = rcu.register_cpu(0).unwrap();
        let _g = rcu.read_lock(0);
        c0.quiescent_state();
    }

    #[test]
    fn barrier_runs_callbacks_queued_on_idle_cpus() {
        let rcu = Rcu::new();
        let mut c0 = rcu.register_cpu(0).unwrap();
        let mut c1 = rcu.register_cpu(1).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        queue_tagged(&rcu, 1, 1, &log);
        queue_tagged(&rcu, 1, 2, &log);
        c1.enter_idle();
        c0.barrier();
        assert_eq!(*log.lock().unwrap(), vec![1, 2]);
        assert_eq!(rcu.pending_callbacks(1), 0);
    }

    /// An object readers find through `SLOT`; freeing poisons it first so a
    /// reader that raced with the free sees the poison.
    struct Obj {
        value: AtomicUsize,
    }
    const POISON: usize = usize::MAX;

    struct SendPtr(*mut Obj);
    // SAFETY: the pointer is handed from the updater to the callback that
    // frees it; nothing else uses it.
    unsafe impl Send for SendPtr {}

    fn stress(readers: usize, updates: usize) {
        let rcu = Arc::new(Rcu::new());
        let slot = Arc::new(AtomicPtr::new(Box::into_raw(Box::new(Obj {
            value: AtomicUsize::new(0),
        }))));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for cpu in 1..=readers {
            let (rcu, slot, stop) = (rcu.clone(), slot.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut me = rcu.register_cpu(cpu).unwrap();
                let mut last = 0;
                while !stop.load(SeqCst) {
                    {
                        let _g = me.read_lock();
                        // SAFETY: the object was reachable under the read section; RCU keeps it alive until we report.
                        let v = unsafe { &*slot.load(SeqCst) }.value.load(SeqCst);
                        assert_ne!(v, POISON, "reader saw a freed object");
                        assert!(v >= last, "values only grow");
                        last = v;
                    }
                    me.quiescent_state();
                }
            }));
        }
        let mut me = rcu.register_cpu(0).unwrap();
        for i in 1..=updates {
            let new = Box::into_raw(Box::new(Obj {
                value: AtomicUsize::new(i),
            }));
            let old = SendPtr(slot.swap(new, SeqCst));
            if i % 2 == 0 {
                me.synchronize();
                // SAFETY: unpublished and a grace period has passed.
                let b = unsafe { Box::from_raw(old.0) };
                b.value.store(POISON, SeqCst);
            } else {
                rcu.call_boxed(0, move || {
                    let old = old;
                    // SAFETY: unpublished before queueing; runs after a GP.
                    let b = unsafe { Box::from_raw(old.0) };
                    b.value.store(POISON, SeqCst);
                });
            }
            me.quiescent_state();
        }
        me.barrier();
        stop.store(true, SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        let s = rcu.stats();
        assert_eq!(s.callbacks_queued, s.callbacks_invoked);
        assert_eq!(s.callbacks_queued as usize, updates.div_ceil(2));
        // SAFETY: the last object is still published and no reader remains.
        drop(unsafe { Box::from_raw(slot.load(SeqCst)) });
    }

    #[test]
    fn stress_readers_against_updater() {
        if cfg!(miri) {
            stress(2, 20);
        } else {
            stress(3, 2_000);
        }
    }
}
