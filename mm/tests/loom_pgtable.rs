//! Model checks of lock-free page-table population (run with `--cfg loom`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p mm --release --test loom_pgtable -- --test-threads=1
//! ```
//!
//! Two faulting CPUs install leaves into an empty page table at once, so
//! both try to allocate the same three intermediate tables. Under loom a
//! table's entries are model objects: a fresh table holds stale non-zero
//! values (what the frame held before) and zeroing it is an unsynchronised
//! write, so loom reports any walker that reads a table whose zeroing is
//! not ordered before it. The models check that both leaves end up present,
//! that exactly one copy of each table is kept and the losers' copies are
//! freed (frame accounting is exact: no per-CPU frame caches), and that of
//! two faults on one page exactly one installs. Each mutation test breaks
//! one ordering the protocol depends on (P1 in `mm::pgtable`) and asserts
//! that loom then finds the bug.
#![cfg(loom)]

use loom::sync::Arc;
use mm::addr::Frame;
use mm::frame::{FrameAllocator, FrameConfig, HostFrames};
use mm::pgtable::{InstallError, PageTable, Prot, Pte, RecordingFlush, TlbGather, X86_64Pte};
use mm::sync::{with_fault, Fault};
use mm::vma::lock::MmId;

type Pt = PageTable<'static, X86_64Pte>;

const PAGE: u64 = 4096;
/// In the second 512 GiB, so every level below the root must be built.
const VA: u64 = (1 << 39) + (5 << 30) + (7 << 21);

/// Executions explored by the last model run (for the test output).
static EXECUTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_execution() {
    EXECUTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `model`, printing how many executions loom explored.
fn explore(name: &str, model: fn()) {
    EXECUTIONS.store(0, std::sync::atomic::Ordering::Relaxed);
    model();
    eprintln!(
        "{name}: {} executions",
        EXECUTIONS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // Two preemptions: ~1.5k executions per race model, a few seconds.
    // LOOM_MAX_PREEMPTIONS=3 explores ~13k each (about 25 s), also clean.
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    // Building the frame allocator and tearing the tables down take a few
    // thousand (single-threaded) atomic operations per execution.
    b.max_branches = 50_000;
    b
}

/// Allocator, page table and two leaf frames for one execution.
struct Setup {
    // Field order is drop order: the page table (already destroyed) before
    // the frames it borrowed.
    pt: Option<Arc<Pt>>,
    hf: Arc<HostFrames>,
}

fn setup() -> Setup {
    let cfg = FrameConfig {
        nr_cpus: 2,
        pcp_batch: 0,
        pcp_high: 0,
    };
    let hf = Arc::new(HostFrames::with_config(32 * PAGE as usize, &[], cfg));
    // SAFETY: the allocator lives in `hf`, which `Setup` drops after the page table (see `finish`); the page table never outlives it.
    let fa: &'static FrameAllocator = unsafe { &*(&**hf as *const FrameAllocator) };
    let pt = Arc::new(PageTable::new(fa, 0).unwrap());
    Setup { pt: Some(pt), hf }
}

impl Setup {
    fn pt(&self) -> Arc<Pt> {
        self.pt.as_ref().unwrap().clone()
    }

    fn leaf(&self) -> Pte<X86_64Pte> {
        Pte::leaf(
            self.hf.alloc(0, 0).unwrap(),
            Prot::READ | Prot::WRITE | Prot::USER,
        )
    }

    /// Destroys the page table and returns the leaf frames; checks that
    /// the allocator is back to empty.
    fn finish(mut self) {
        let pt = Arc::try_unwrap(self.pt.take().unwrap()).unwrap_or_else(|_| panic!("shared"));
        let fl = RecordingFlush::new();
        let hf = &*self.hf;
        let mut rel = |f: Frame| {
            // SAFETY: each leaf frame was allocated here and mapped once.
            unsafe { hf.free(0, f, 0) }
        };
        let mut g = TlbGather::new(MmId::from_raw(1), 0, &fl, hf, &mut rel);
        pt.destroy(&mut g);
        g.finish();
        assert_eq!(self.hf.stats().allocated_pages, 0, "frames leaked");
    }
}

/// Two CPUs fault on neighbouring pages of an empty address space: both
/// build the level-3, level-2 and leaf tables, one copy of each survives.
fn race_neighbours() {
    builder().check(|| {
        count_execution();
        let s = setup();
        let (a, b) = (s.leaf(), s.leaf());
        let t = {
            let pt = s.pt();
            loom::thread::spawn(move || pt.install_leaf(VA + PAGE, b, 1))
        };
        let ra = s.pt().install_leaf(VA, a, 0);
        let rb = t.join().unwrap();
        assert_eq!(ra, Ok(()));
        assert_eq!(rb, Ok(()));
        let pt = s.pt();
        assert_eq!(pt.lookup(VA), a);
        assert_eq!(pt.lookup(VA + PAGE), b);
        assert_eq!(pt.nr_tables(), 4, "one copy of each table");
        assert_eq!(
            s.hf.stats().allocated_pages,
            2 + 4,
            "the losers' tables were not freed"
        );
        drop(pt);
        s.finish();
    });
}

/// Two CPUs fault on the same page: exactly one installs, the other sees
/// the winner's entry.
fn race_same_page() {
    builder().check(|| {
        count_execution();
        let s = setup();
        let (a, b) = (s.leaf(), s.leaf());
        let t = {
            let pt = s.pt();
            loom::thread::spawn(move || pt.install_leaf(VA, b, 1))
        };
        let ra = s.pt().install_leaf(VA, a, 0);
        let rb = t.join().unwrap();
        let (winner, loser) = match (ra, rb) {
            (Ok(()), Err(InstallError::AlreadyPresent(w))) => {
                assert_eq!(w, a);
                (a, b)
            }
            (Err(InstallError::AlreadyPresent(w)), Ok(())) => {
                assert_eq!(w, b);
                (b, a)
            }
            r => panic!("not exactly one winner: {r:?}"),
        };
        assert_eq!(s.pt().lookup(VA), winner);
        assert_eq!(s.pt().nr_tables(), 4);
        // SAFETY: the loser's frame was never mapped.
        unsafe { s.hf.free(0, loser.frame().unwrap(), 0) };
        assert_eq!(s.hf.stats().allocated_pages, 1 + 4);
        s.finish();
    });
}

/// A lookup races with the fault that builds the tables: it finds nothing
/// or the new entry, and never reads a table before its zeroing.
fn race_lookup() {
    builder().check(|| {
        count_execution();
        let s = setup();
        let a = s.leaf();
        let t = {
            let pt = s.pt();
            loom::thread::spawn(move || pt.lookup(VA))
        };
        s.pt().install_leaf(VA, a, 0).unwrap();
        let seen = t.join().unwrap();
        assert!(seen == Pte::NONE || seen == a, "lookup saw {seen:?}");
        s.finish();
    });
}

#[test]
fn concurrent_faults_build_each_table_once() {
    explore("race_neighbours", race_neighbours);
}

#[test]
fn concurrent_faults_on_one_page_have_one_winner() {
    explore("race_same_page", race_same_page);
}

#[test]
fn lookup_never_sees_an_unzeroed_table() {
    explore("race_lookup", race_lookup);
}

/// Runs `model` with `f` injected; loom must fail it for one of the
/// `reasons` (a panic message fragment), not for running out of branches.
fn assert_loom_catches(f: Fault, model: fn(), reasons: &[&str]) {
    let r = std::panic::catch_unwind(|| with_fault(f, model));
    let Err(e) = r else {
        panic!("loom found no bug with {f:?} injected: the model does not test it");
    };
    let msg = e
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| e.downcast_ref::<&str>().copied())
        .unwrap_or("<non-string panic>");
    assert!(
        reasons.iter().any(|r| msg.contains(r)),
        "with {f:?} injected loom failed for an unexpected reason: {msg}"
    );
    eprintln!("{f:?}: caught: {}", msg.lines().next().unwrap_or(""));
}

/// Loom's report of a load not ordered after an unsynchronised write (the
/// zeroing), and what a walker that follows a stale entry hits.
const STALE_TABLE: &[&str] = &["Causality violation", "corrupt page table"];

#[test]
fn mutation_publish_before_zeroing_is_caught() {
    assert_loom_catches(
        Fault::PgtablePublishBeforeZero,
        race_neighbours,
        STALE_TABLE,
    );
}

#[test]
fn mutation_relaxed_publish_is_caught() {
    assert_loom_catches(Fault::PgtablePublishRelaxed, race_neighbours, STALE_TABLE);
}

#[test]
fn mutation_relaxed_walk_is_caught() {
    assert_loom_catches(Fault::PgtableWalkRelaxed, race_lookup, STALE_TABLE);
}
