//! Samara's system-call ABI, shared by the kernel and user programs.
//!
//! # Calling convention
//!
//! | arch | instruction | number | arguments | result |
//! | --- | --- | --- | --- | --- |
//! | x86_64 | `syscall` | rax | rdi, rsi, rdx, r10, r8, r9 | rax (rcx, r11 clobbered) |
//! | mips64 | `syscall` | v0 | a0..a5 | v0 |
//!
//! A result in `[-4095, -1]` (as `i64`) is `-errno` ([`Errno`]); anything
//! else is the call's value. Bad pointers and arguments return an error;
//! they never kill the caller. A task that touches memory it has no right
//! to (in user mode) is killed with [`status::SEGV`].
//!
//! # Calls
//!
//! | nr | name | arguments | returns |
//! | --- | --- | --- | --- |
//! | 0 | `exit` | code | never: ends the whole process (every thread) with `code & 0xff` |
//! | 1 | `write` | ptr, len | bytes written to the console (at most [`WRITE_MAX`] per call) |
//! | 2 | `yield` | | 0 |
//! | 3 | `mmap` | addr, len, prot ([`prot`]), flags ([`map`]) | the mapping's address |
//! | 4 | `munmap` | addr, len | 0 |
//! | 5 | `mprotect` | addr, len, prot | 0 |
//! | 6 | `brk` | new end (0: query) | the current end |
//! | 7 | `fork` | | the child's pid in the parent, 0 in the child |
//! | 8 | `wait` | pid (0: any child), status ptr (0: none) | the reaped child's pid; `*status` = its [`status`] |
//! | 9 | `thread_create` | entry pc, stack top, a0, a1 | the new thread's id; it starts at `entry(a0, a1)` on the given stack (16-byte aligned top) |
//! | 10 | `thread_join` | tid | the thread's exit value |
//! | 11 | `thread_exit` | value | never: ends the calling thread (the last thread ends the process with `value & 0xff`) |
//! | 12 | `stats` | ptr to [`Stats`], size, flags ([`stats_flags`]) | 0; fills `min(size, size_of::<Stats>())` bytes |
//! | 13 | `clock` | | nanoseconds since boot |
//! | 14 | `getpid` | | the process id |
//! | 15 | `gettid` | | the thread id |
#![no_std]

pub const SYS_EXIT: u64 = 0;
pub const SYS_WRITE: u64 = 1;
pub const SYS_YIELD: u64 = 2;
pub const SYS_MMAP: u64 = 3;
pub const SYS_MUNMAP: u64 = 4;
pub const SYS_MPROTECT: u64 = 5;
pub const SYS_BRK: u64 = 6;
pub const SYS_FORK: u64 = 7;
pub const SYS_WAIT: u64 = 8;
pub const SYS_THREAD_CREATE: u64 = 9;
pub const SYS_THREAD_JOIN: u64 = 10;
pub const SYS_THREAD_EXIT: u64 = 11;
pub const SYS_STATS: u64 = 12;
pub const SYS_CLOCK: u64 = 13;
pub const SYS_GETPID: u64 = 14;
pub const SYS_GETTID: u64 = 15;
/// One more than the highest call number.
pub const NR_SYSCALLS: u64 = 16;

/// Most bytes one `write` call prints.
pub const WRITE_MAX: u64 = 4096;

/// Error numbers (Linux's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Errno {
    /// No such process or thread.
    Srch = 3,
    /// The call was interrupted because the process is being killed.
    Intr = 4,
    /// No child to wait for.
    Child = 10,
    /// Out of memory or address space.
    NoMem = 12,
    /// A bad user pointer.
    Fault = 14,
    /// A mapping exists where `MAP_FIXED_NOREPLACE` wanted none.
    Exist = 17,
    /// A malformed argument.
    Inval = 22,
    /// Joining oneself, or a thread another thread is joining.
    Deadlk = 35,
    /// No such system call.
    NoSys = 38,
}

impl Errno {
    pub const ALL: [Errno; 9] = [
        Errno::Srch,
        Errno::Intr,
        Errno::Child,
        Errno::NoMem,
        Errno::Fault,
        Errno::Exist,
        Errno::Inval,
        Errno::Deadlk,
        Errno::NoSys,
    ];

    /// The value a system call returns for this error.
    pub const fn as_return(self) -> u64 {
        (-(self as i64)) as u64
    }

    /// The error a system call's return value encodes, if any.
    pub fn from_return(v: u64) -> Option<Errno> {
        let n = -(v as i64);
        Errno::ALL.iter().copied().find(|e| *e as i64 == n)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Errno::Srch => "ESRCH",
            Errno::Intr => "EINTR",
            Errno::Child => "ECHILD",
            Errno::NoMem => "ENOMEM",
            Errno::Fault => "EFAULT",
            Errno::Exist => "EEXIST",
            Errno::Inval => "EINVAL",
            Errno::Deadlk => "EDEADLK",
            Errno::NoSys => "ENOSYS",
        }
    }
}

/// Whether a return value is an error (`[-4095, -1]`).
pub const fn is_error(v: u64) -> bool {
    v > (-4096i64) as u64
}

/// `mmap`/`mprotect` protection bits (Linux's values).
pub mod prot {
    pub const NONE: u64 = 0;
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const EXEC: u64 = 4;
}

/// `mmap` flags (Linux's values). Every mapping is anonymous; exactly one
/// of `SHARED` and `PRIVATE` is required.
pub mod map {
    pub const SHARED: u64 = 0x01;
    pub const PRIVATE: u64 = 0x02;
    pub const FIXED: u64 = 0x10;
    pub const ANONYMOUS: u64 = 0x20;
    pub const FIXED_NOREPLACE: u64 = 0x10_0000;
}

/// Process exit statuses as `wait` reports them: `exit(code)` gives
/// `code & 0xff`; a process the kernel killed gives 128 + the signal
/// number a Unix would have sent.
pub mod status {
    /// Killed for a bad memory access (SIGSEGV).
    pub const SEGV: u64 = 128 + 11;
    /// Killed for an illegal instruction, FPU use or any other exception
    /// (SIGILL).
    pub const ILL: u64 = 128 + 4;
    /// Killed because memory ran out while handling its page fault
    /// (SIGKILL, as Linux's OOM killer).
    pub const OOM: u64 = 128 + 9;
}

/// Flags of the `stats` call (its third argument); other bits are
/// [`Errno::Inval`].
pub mod stats_flags {
    /// After filling the record, clear the shared-cache-line counts
    /// ([`super::Stats::linecount`]); a no-op on a kernel that does not
    /// count. The counts are exact only if no other thread is inside a page
    /// fault meanwhile: call it while the caller is the only thread that
    /// runs user code.
    pub const RESET_LINECOUNT: u64 = 1;
    pub const ALL: u64 = RESET_LINECOUNT;
}

/// What `stats` returns. All fields are `u64`, so the layout is the same
/// on every architecture; new fields are only ever appended.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `size_of::<Stats>()` of the kernel that filled it.
    pub size: u64,
    /// Page faults handled (resolved or not), all CPUs.
    pub faults: u64,
    /// Faults handled under a per-VMA lock (Linux's VMA_LOCK_SUCCESS).
    pub vma_lock_success: u64,
    /// Per-VMA attempts that fell back to the mmap lock (VMA_LOCK_ABORT).
    pub vma_lock_abort: u64,
    /// Faults retried under the mmap lock after a VMA-locked attempt needed
    /// it (VMA_LOCK_RETRY).
    pub vma_lock_retry: u64,
    /// Per-VMA lookups that found no usable VMA (VMA_LOCK_MISS).
    pub vma_lock_miss: u64,
    /// Faults handled under the mmap read lock.
    pub mmap_lock_faults: u64,
    /// Free frames now.
    pub frames_free: u64,
    /// Frames the allocator manages.
    pub frames_total: u64,
    /// VMAs allocated and not freed, all address spaces.
    pub vmas_live: u64,
    /// RCU grace periods completed since boot.
    pub rcu_grace_periods: u64,
    /// CPUs running.
    pub cpus: u64,
    /// Whether per-VMA locking is on (1) or off (0).
    pub per_vma_lock: u64,
    /// TLB shootdowns that had to interrupt other CPUs.
    pub remote_flushes: u64,
    /// Timer ticks, all CPUs.
    pub ticks: u64,
    /// Cycle-counter ticks spent in the page-fault handler (entry to
    /// return), all CPUs, and how many faults that covers.
    pub fault_cycles: u64,
    pub fault_cycles_count: u64,
    /// The cycle counter's frequency (TSC, CP0 Count), Hz.
    pub cycles_per_second: u64,
    /// 1 if the MMU enforces `PROT_EXEC` (x86_64 NX; MIPS RI/XI, which
    /// QEMU's Octeon68XX lacks), 0 if data pages are executable anyway.
    pub exec_protection: u64,
    /// 1 if the kernel was built with `count-shared-writes` (mm's
    /// `linecount`): the four counts below are valid. They cover every page
    /// fault since boot or since the last [`stats_flags::RESET_LINECOUNT`].
    pub linecount: u64,
    /// Atomic read-modify-writes inside page faults (`atomic_rmw=`).
    pub line_rmw: u64,
    /// Atomic stores inside page faults (`atomic_stores=`).
    pub line_stores: u64,
    /// Writes of both kinds to cache lines that two or more CPUs wrote
    /// (`shared_writes=`).
    pub line_shared_writes: u64,
    /// Distinct cache lines two or more CPUs wrote (`shared_lines=`).
    pub line_shared_lines: u64,
}

/// The arguments of the `faultstorm` user program (`workload=faultstorm`),
/// packed by the kernel into the two words every program starts with
/// (`_start(arg0, arg1)`) and unpacked by the program:
///
/// | word | bits | field |
/// | --- | --- | --- |
/// | `arg0` | 7..0 | `threads`: faulting threads |
/// | `arg0` | 31..8 | `mmap_ops`: mmap+munmap pairs of the `mmap-loop` line |
/// | `arg0` | 55..32 | `fork_ops`: fork+exit+wait rounds of the `fork-loop` line |
/// | `arg1` | 31..0 | `pages`: pages per faulting thread's region |
/// | `arg1` | 63..32 | `rounds`: map-touch-unmap rounds per faulting thread |
///
/// Zero in a field means "the program's default".
pub mod faultstorm {
    /// The largest value of each field.
    pub const MAX_THREADS: u32 = 64;
    pub const MAX_PAGES: u32 = 1 << 20;
    pub const MAX_ROUNDS: u32 = 100_000;
    pub const MAX_MMAP_OPS: u32 = 10_000_000;
    pub const MAX_FORK_OPS: u32 = 1_000_000;

    /// Pages of the untouched region each `mmap-loop` op maps and unmaps,
    /// and pages written before the `fork-loop` forks: the sizes the Linux
    /// anchor (tests/linux-anchor) uses, which `cargo xtask bench` passes
    /// it from these constants, so the two systems' lines describe the
    /// same work.
    pub const MMAP_LOOP_PAGES: u64 = 4;
    pub const FORK_LOOP_PAGES: u64 = 64;

    const OPS_BITS: u32 = 24;
    const OPS_MASK: u64 = (1 << OPS_BITS) - 1;

    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Args {
        pub threads: u32,
        pub pages: u32,
        pub rounds: u32,
        pub mmap_ops: u32,
        pub fork_ops: u32,
    }

    // Every maximum fits its field.
    const _: () = assert!(MAX_THREADS < 1 << 8);
    const _: () = assert!(MAX_MMAP_OPS as u64 <= OPS_MASK && MAX_FORK_OPS as u64 <= OPS_MASK);

    impl Args {
        /// The two start words, or `None` if a field exceeds its maximum
        /// (it would not survive the packing).
        pub fn encode(self) -> Option<[u64; 2]> {
            let fits = self.threads <= MAX_THREADS
                && self.pages <= MAX_PAGES
                && self.rounds <= MAX_ROUNDS
                && self.mmap_ops <= MAX_MMAP_OPS
                && self.fork_ops <= MAX_FORK_OPS;
            fits.then(|| {
                [
                    u64::from(self.threads)
                        | u64::from(self.mmap_ops) << 8
                        | u64::from(self.fork_ops) << (8 + OPS_BITS),
                    u64::from(self.pages) | u64::from(self.rounds) << 32,
                ]
            })
        }

        /// Unpacks the start words. Bits outside the fields are ignored;
        /// a field above its maximum is clamped to it.
        pub fn decode(words: [u64; 2]) -> Args {
            let field = |v: u64, max: u32| v.min(u64::from(max)) as u32;
            Args {
                threads: field(words[0] & 0xff, MAX_THREADS),
                mmap_ops: field(words[0] >> 8 & OPS_MASK, MAX_MMAP_OPS),
                fork_ops: field(words[0] >> (8 + OPS_BITS) & OPS_MASK, MAX_FORK_OPS),
                pages: field(words[1] & 0xffff_ffff, MAX_PAGES),
                rounds: field(words[1] >> 32, MAX_ROUNDS),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        for e in Errno::ALL {
            let v = e.as_return();
            assert!(is_error(v), "{e:?}");
            assert_eq!(Errno::from_return(v), Some(e));
        }
        assert!(!is_error(0));
        assert!(!is_error(0x7fff_ffff_f000));
        assert!(!is_error((-4096i64) as u64));
        assert_eq!(Errno::from_return(0), None);
        assert_eq!(Errno::Fault.as_return(), (-14i64) as u64);
    }

    #[test]
    fn stats_layout_is_plain_u64s() {
        assert_eq!(core::mem::size_of::<Stats>() % 8, 0);
        assert_eq!(core::mem::align_of::<Stats>(), 8);
    }

    #[test]
    fn faultstorm_args_round_trip() {
        use faultstorm::*;
        let max = Args {
            threads: MAX_THREADS,
            pages: MAX_PAGES,
            rounds: MAX_ROUNDS,
            mmap_ops: MAX_MMAP_OPS,
            fork_ops: MAX_FORK_OPS,
        };
        let some = Args {
            threads: 3,
            pages: 64,
            rounds: 2,
            mmap_ops: 10_000,
            fork_ops: 200,
        };
        for a in [Args::default(), max, some] {
            assert_eq!(Args::decode(a.encode().unwrap()), a);
        }
        // The layout the table documents (the kernel and the program are
        // built separately, so the layout itself is the contract).
        assert_eq!(
            some.encode().unwrap(),
            [3 | 10_000 << 8 | 200 << 32, 64 | 2 << 32]
        );
        for bad in [
            Args {
                threads: MAX_THREADS + 1,
                ..some
            },
            Args {
                pages: MAX_PAGES + 1,
                ..some
            },
            Args {
                rounds: MAX_ROUNDS + 1,
                ..some
            },
            Args {
                mmap_ops: MAX_MMAP_OPS + 1,
                ..some
            },
            Args {
                fork_ops: MAX_FORK_OPS + 1,
                ..some
            },
        ] {
            assert_eq!(bad.encode(), None, "{bad:?}");
        }
        // Out-of-range words clamp instead of wrapping into other fields.
        assert_eq!(Args::decode([0xff, u64::MAX]).threads, MAX_THREADS);
        assert_eq!(Args::decode([0xff, u64::MAX]).rounds, MAX_ROUNDS);
        assert_eq!(Args::decode([0, 0xffff_ffff]).pages, MAX_PAGES);
    }
}
