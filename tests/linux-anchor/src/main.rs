//! The Linux anchor of `cargo xtask bench`: Samara's in-guest workloads done
//! through real Linux syscalls, so that Linux's figures can be measured in the
//! same virtual machine, in the same run, as Samara's.
//!
//! xtask packs this program as `/init` of a tiny initramfs (no shell, no
//! libc outside this static executable), boots a Debian kernel with it, and
//! reads the lines it prints on the console, which have the form of
//! Samara's own (BENCHMARKS.md, "In-guest lines"; parsed by
//! xtask/src/bench_guest.rs):
//!
//! - `faultstorm`, as Samara's `kernel/user/src/bin/faultstorm.rs` does it:
//!   `threads` threads each map a private anonymous region of `pages` pages,
//!   write a word to every page (one minor fault each), read back every 97th
//!   page, unmap it, `rounds` times; meanwhile one more thread maps an
//!   8-page region, writes its first page and unmaps it, in a loop (taking
//!   the mmap lock for writing again and again). Wall-clock time runs from
//!   before the faulting threads start until all are joined; the faults are
//!   Linux's minor-fault count over that time (the mapper's included, as
//!   Samara counts them); the TSC cycles spent in the write loops are summed.
//! - `mmap-loop`: one thread maps and unmaps an untouched `mmap_pages`-page
//!   region `mmap_ops` times; TSC cycles per mmap+munmap pair.
//! - `fork-loop`: with `fork_pages` pages of anonymous memory written, fork a
//!   child that exits at once and wait for it, `fork_ops` times; TSC cycles
//!   per fork+exit+wait.
//!
//! Parameters come from the environment: Linux hands every `key=value` word
//! of its command line that it does not know to init as an environment
//! variable, so xtask writes `anchor_pages=1024` and so on after the kernel's
//! own arguments. As process 1 the program exits QEMU itself through the
//! `isa-debug-exit` port (status 33 when every workload ran, 35 otherwise);
//! as an ordinary process it just exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const PAGE: usize = 4096;

/// Pages of each region the `faultstorm` mapper thread maps (as Samara's).
const MAPPER_PAGES: usize = 8;

/// The workloads, by the names the summary lines carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    FaultStorm,
    MmapLoop,
    ForkLoop,
}

impl Workload {
    const ALL: [(&'static str, Workload); 3] = [
        ("faultstorm", Workload::FaultStorm),
        ("mmap-loop", Workload::MmapLoop),
        ("fork-loop", Workload::ForkLoop),
    ];
}

/// What to run, and how big.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Params {
    /// Faulting threads in `faultstorm` (default: one per online CPU).
    threads: usize,
    /// Pages per region in `faultstorm`.
    pages: usize,
    /// Map-touch-unmap rounds per faulting thread.
    rounds: usize,
    mmap_ops: u64,
    mmap_pages: usize,
    fork_ops: u64,
    fork_pages: usize,
    run: Vec<Workload>,
}

impl Params {
    /// Reads `anchor_*` variables through `get`; anything missing takes its
    /// default, anything malformed is an error naming the variable.
    fn from_lookup(get: impl Fn(&str) -> Option<String>, cpus: usize) -> Result<Params, String> {
        let num = |key: &str, default: u64, max: u64| -> Result<u64, String> {
            match get(key) {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err(format!("{key}={v}: expected an integer in 1..={max}")),
                },
            }
        };
        // Regions are at most 1 GiB each; the caller sizes guest memory.
        let max_pages = 1 << 18;
        let run = match get("anchor_run") {
            None => Workload::ALL.iter().map(|&(_, w)| w).collect(),
            Some(list) => list
                .split(',')
                .map(|name| {
                    Workload::ALL
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|&(_, w)| w)
                        .ok_or_else(|| {
                            format!(
                                "anchor_run: unknown workload `{name}` (known: faultstorm, \
                                 mmap-loop, fork-loop)"
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(Params {
            threads: num("anchor_threads", cpus as u64, 1024)? as usize,
            pages: num("anchor_pages", 1024, max_pages)? as usize,
            rounds: num("anchor_rounds", 4, 1 << 20)? as usize,
            mmap_ops: num("anchor_mmap_ops", 20_000, 1 << 30)?,
            mmap_pages: num("anchor_mmap_pages", 4, max_pages)? as usize,
            fork_ops: num("anchor_fork_ops", 500, 1 << 24)?,
            fork_pages: num("anchor_fork_pages", 64, max_pages)? as usize,
            run,
        })
    }
}

/// One machine-readable line: `NAME: key=value ...`.
struct Line {
    text: String,
}

impl Line {
    fn new(prefix: &str) -> Line {
        Line {
            text: prefix.to_string(),
        }
    }

    fn push(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Line {
        use std::fmt::Write;
        let _ = write!(self.text, " {key}={value}");
        self
    }
}

/// The CPU's cycle counter (the TSC, as Samara's x86_64 figures use).
#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it, and user mode may execute it unless CR4.TSD is set, which Linux leaves clear for processes that have not asked for PR_SET_TSC.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Other hosts (the program only runs as a guest on x86_64; elsewhere it
/// still builds and its tests run): nanoseconds stand in for cycles.
#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The calling process's minor-fault count (`ru_minflt`, all threads).
fn minor_faults() -> Result<u64, String> {
    // SAFETY: all-zero bytes are a valid `rusage` (integers and timevals).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` for the call's duration.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Err(format!("getrusage: {}", std::io::Error::last_os_error()));
    }
    Ok(ru.ru_minflt as u64)
}

/// A private anonymous read-write mapping, unmapped on drop.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn map(pages: usize) -> Result<Region, String> {
        let len = pages * PAGE;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing replaces nothing that Rust code owns.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {pages} pages: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Region { ptr: p.cast(), len })
    }

    /// Writes `tag << 32 | page index` to every page (first touch: one
    /// minor fault each); returns the TSC cycles the loop took.
    fn touch(&self, tag: u64) -> u64 {
        let t0 = rdtsc();
        for (i, off) in (0..self.len).step_by(PAGE).enumerate() {
            // SAFETY: `off + 8 <= len`, page-aligned, and [ptr, ptr + len) is this region's read-write mapping, alive until `self` drops.
            unsafe {
                self.ptr
                    .add(off)
                    .cast::<u64>()
                    .write_volatile(tag << 32 | i as u64)
            };
        }
        rdtsc() - t0
    }

    /// Reads back every 97th page written by [`Region::touch`].
    fn check(&self, tag: u64) -> Result<(), String> {
        for (i, off) in (0..self.len).step_by(PAGE).enumerate().step_by(97) {
            // SAFETY: as in `touch`.
            let v = unsafe { self.ptr.add(off).cast::<u64>().read_volatile() };
            if v != tag << 32 | i as u64 {
                return Err(format!("page {i} of thread {tag} holds {v:#x}"));
            }
        }
        Ok(())
    }
}

impl Region {
    /// The mapper's touch: one word in the first page.
    fn touch_first(&self) {
        // SAFETY: the region is at least one page, mapped read-write.
        unsafe { self.ptr.cast::<u64>().write_volatile(1) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: [ptr, ptr + len) is exactly the mapping `map` created, and no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn faultstorm(p: &Params, cpus: usize) -> Result<Line, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mapper_ops = Arc::new(AtomicU64::new(0));
    // The mapper runs before the clock starts, as in Samara's faultstorm.
    let mapper = {
        let (stop, ops) = (stop.clone(), mapper_ops.clone());
        std::thread::spawn(move || -> Result<(), String> {
            // Pairs with the Release store after the faulters are joined:
            // once seen, the storm is over.
            while !stop.load(Ordering::Acquire) {
                let r = Region::map(MAPPER_PAGES)?;
                r.touch_first();
                drop(r);
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let t0 = Instant::now();
    let faults_before = minor_faults()?;
    let faulters: Vec<_> = (0..p.threads)
        .map(|id| {
            let (pages, rounds) = (p.pages, p.rounds);
            std::thread::spawn(move || -> Result<u64, String> {
                let mut cycles = 0;
                for _ in 0..rounds {
                    let r = Region::map(pages)?;
                    cycles += r.touch(id as u64);
                    r.check(id as u64)?;
                }
                Ok(cycles)
            })
        })
        .collect();
    let mut touch_cycles = 0u64;
    let mut first_err = None;
    for f in faulters {
        match f.join() {
            Ok(Ok(c)) => touch_cycles += c,
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some("a faulting thread panicked".into())),
        }
    }
    let ns = t0.elapsed().as_nanos().max(1);
    let faults = minor_faults()? - faults_before;
    // Pairs with the Acquire load in the mapper's loop.
    stop.store(true, Ordering::Release);
    match mapper.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => first_err = first_err.or(Some(e)),
        Err(_) => first_err = first_err.or(Some("the mapper thread panicked".into())),
    }
    if let Some(e) = first_err {
        return Err(format!("faultstorm: {e}"));
    }
    let ops = mapper_ops.load(Ordering::Relaxed);
    let mut l = Line::new("faultstorm:");
    l.push("threads", p.threads)
        .push("pages", p.pages)
        .push("rounds", p.rounds)
        .push("faults", faults)
        .push("ns", ns)
        .push("faults_per_sec", u128::from(faults) * 1_000_000_000 / ns)
        .push("mapper_ops", ops)
        .push("touch_cycles", touch_cycles)
        .push("cpus", cpus);
    Ok(l)
}

fn mmap_loop(p: &Params) -> Result<Line, String> {
    let t0 = Instant::now();
    let c0 = rdtsc();
    for _ in 0..p.mmap_ops {
        drop(Region::map(p.mmap_pages)?);
    }
    let cycles = rdtsc() - c0;
    let ns = t0.elapsed().as_nanos();
    let mut l = Line::new("mmap-loop:");
    l.push("ops", p.mmap_ops)
        .push("pages", p.mmap_pages)
        .push("cycles", cycles)
        .push("ns", ns);
    Ok(l)
}

fn fork_loop(p: &Params) -> Result<Line, String> {
    let mem = Region::map(p.fork_pages)?;
    mem.touch(0);
    let t0 = Instant::now();
    let c0 = rdtsc();
    for _ in 0..p.fork_ops {
        // SAFETY: the child only calls the async-signal-safe `_exit`, so forking a process that had threads (now all joined) is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: `_exit` ends the child without running any of the parent's atexit handlers or touching shared stdio state.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return Err(format!(
                "fork-loop: child ended with wait status {status:#x}"
            ));
        }
    }
    let cycles = rdtsc() - c0;
    let ns = t0.elapsed().as_nanos();
    drop(mem);
    let mut l = Line::new("fork-loop:");
    l.push("ops", p.fork_ops)
        .push("pages", p.fork_pages)
        .push("cycles", cycles)
        .push("ns", ns);
    Ok(l)
}

/// Mounts a pseudo file system if we are init (nothing is mounted yet).
fn mount(fstype: &str, target: &str) {
    let cstr = |s: &str| std::ffi::CString::new(s).expect("no NUL in literal names");
    let (src, dst, ty) = (cstr(fstype), cstr(target), cstr(fstype));
    // SAFETY: three NUL-terminated strings that outlive the call; no data.
    let r = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        println!(
            "linux-anchor: cannot mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The kernel's and the CPU's description, for the log.
fn describe_system(cpus: usize) -> Result<Line, String> {
    // SAFETY: all-zero bytes are a valid `utsname` (arrays of c_char).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable `utsname`.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(format!("uname: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: uname NUL-terminates `release` within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    let mut l = Line::new("linux-anchor: system:");
    l.push("release", release.to_string_lossy().replace(' ', "_"))
        .push("cpus", cpus);
    if let Ok(thp) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        // "always madvise [never]": the bracketed word is the setting.
        if let Some(sel) = thp.split_whitespace().find(|w| w.starts_with('[')) {
            l.push("thp", sel.trim_matches(|c| c == '[' || c == ']'));
        }
    }
    Ok(l)
}

/// CPU vulnerability mitigations in force (they change syscall and fault
/// entry costs), one log line each.
fn print_mitigations() {
    let dir = "/sys/devices/system/cpu/vulnerabilities";
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut v: Vec<(String, String)> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let state = std::fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), state))
        })
        .collect();
    v.sort();
    for (name, state) in v {
        println!("linux-anchor: vulnerability {name}: {}", state.trim());
    }
}

fn run(pid1: bool) -> Result<(), String> {
    if pid1 {
        mount("proc", "/proc");
        mount("sysfs", "/sys");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let params = Params::from_lookup(|k| std::env::var(k).ok(), cpus)?;
    println!("{}", describe_system(cpus)?.text);
    print_mitigations();
    for &w in &params.run {
        let line = match w {
            Workload::FaultStorm => faultstorm(&params, cpus)?,
            Workload::MmapLoop => mmap_loop(&params)?,
            Workload::ForkLoop => fork_loop(&params)?,
        };
        println!("{}", line.text);
    }
    Ok(())
}

/// `isa-debug-exit` (xtask's QEMU machine has it at 0xf4): QEMU exits with
/// `(code << 1) | 1`, so 0x10 gives 33 (success) and 0x11 gives 35.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends the virtual machine (we are init: returning would panic the kernel).
fn exit_vm(success: bool) -> ! {
    // Let the UART drain: output still queued in the tty is lost otherwise.
    // SAFETY: tcdrain only waits on the descriptor; a non-tty just fails.
    unsafe { libc::tcdrain(libc::STDOUT_FILENO) };
    #[cfg(target_arch = "x86_64")]
    {
        let code: u32 = if success { 0x10 } else { 0x11 };
        // SAFETY: asks for access to the exit port's four bytes only; init runs with CAP_SYS_RAWIO.
        if unsafe { libc::ioperm(DEBUG_EXIT_PORT.into(), 4, 1) } == 0 {
            // SAFETY: ioperm granted the port; on xtask's machine the write ends QEMU, elsewhere the port is unused and the write does nothing.
            unsafe {
                core::arch::asm!("out dx, eax", in("dx") DEBUG_EXIT_PORT, in("eax") code,
                    options(nomem, nostack))
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (success, DEBUG_EXIT_PORT);
    // No exit device: power off (QEMU then exits with status 0).
    // SAFETY: as init we may power the machine off; nothing is left to sync.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        std::thread::park();
    }
}

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        // A panic in init would panic the kernel and lose the message.
        std::panic::set_hook(Box::new(|info| {
            println!("samara: result: fail: linux anchor panicked: {info}");
            exit_vm(false)
        }));
    }
    let result = run(pid1);
    match &result {
        Ok(()) => println!("samara: result: pass: linux anchor"),
        Err(e) => println!("samara: result: fail: linux anchor: {e}"),
    }
    if pid1 {
        exit_vm(result.is_ok());
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_follow_the_cpu_count() {
        let p = Params::from_lookup(lookup(&[]), 3).unwrap();
        assert_eq!(p.threads, 3);
        assert_eq!(p.run.len(), 3);
    }

    #[test]
    fn parameters_are_read_and_checked() {
        let p = Params::from_lookup(
            lookup(&[
                ("anchor_pages", "8"),
                ("anchor_rounds", "2"),
                ("anchor_run", "mmap-loop,faultstorm"),
            ]),
            2,
        )
        .unwrap();
        assert_eq!((p.pages, p.rounds), (8, 2));
        assert_eq!(p.run, vec![Workload::MmapLoop, Workload::FaultStorm]);
        for bad in [
            ("anchor_pages", "0"),
            ("anchor_pages", "many"),
            ("anchor_threads", "-1"),
            ("anchor_run", "faultstorm,nope"),
        ] {
            let e = Params::from_lookup(lookup(&[bad]), 2).unwrap_err();
            assert!(e.contains(bad.0), "{e}");
        }
    }

    #[test]
    fn workloads_run_and_report() {
        // A small storm on the host: every touch is a first touch.
        let p = Params::from_lookup(
            lookup(&[
                ("anchor_threads", "2"),
                ("anchor_pages", "16"),
                ("anchor_rounds", "2"),
                ("anchor_mmap_ops", "10"),
                ("anchor_fork_ops", "2"),
            ]),
            2,
        )
        .unwrap();
        let fs = faultstorm(&p, 2).unwrap().text;
        assert!(
            fs.starts_with("faultstorm: threads=2 pages=16 rounds=2 faults="),
            "{fs}"
        );
        assert!(
            fs.contains(" touch_cycles=") && fs.ends_with(" cpus=2"),
            "{fs}"
        );
        let mm = mmap_loop(&p).unwrap().text;
        assert!(mm.starts_with("mmap-loop: ops=10 pages=4 cycles="), "{mm}");
        let fk = fork_loop(&p).unwrap().text;
        assert!(fk.starts_with("fork-loop: ops=2 pages=64 cycles="), "{fk}");
    }
}
