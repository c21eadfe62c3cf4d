//! Property test of `mm::pgtable` against a model: random sequences of
//! install, lookup, unmap, protect, copy-on-write replacement, fork copy and
//! free_tables on one page table, checked after every step against a
//! `BTreeMap<va, (frame, prot)>`, for each PTE format.
//!
//! Checked after every operation: every candidate address looks up to what
//! the model says; the tree's tables are exactly `nr_tables()`; frames are
//! accounted exactly (allocated = mapped frames + tables); every frame
//! released by a gather was released after a flush covering its page (if
//! the page was accessible); every page whose rights shrank was flushed;
//! after free_tables no table left lies inside `[floor, ceiling)` and
//! overlaps the freed range. At the end the page table is destroyed and
//! the allocator is back at zero.

use std::collections::{BTreeMap, HashMap};

use mm::addr::Frame;
use mm::frame::{FrameConfig, HostFrames};
use mm::pgtable::{
    entry_span, CmpxchgError, InstallError, Mips64Pte, PageTable, PgTableError, Prot, Pte,
    PteFormat, RecordingFlush, SoftPte, TlbGather, X86_64Pte, LEVELS,
};
use mm::vma::lock::MmId;
use proptest::prelude::*;

const PAGE: u64 = 4096;
const MM: MmId = MmId::from_raw(0x77_0000);

/// Candidate page addresses: a few pages in a few leaf tables in a few
/// level-2 and level-3 tables, plus the last pages below the user limit.
fn candidates<F: PteFormat>() -> Vec<u64> {
    let mut v = Vec::new();
    for i4 in 0..2u64 {
        for i3 in [0u64, 1] {
            for i2 in [0u64, 1, 511] {
                for i1 in [0u64, 1, 2, 7, 510, 511] {
                    v.push((i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12));
                }
            }
        }
    }
    for k in 1..=3 {
        v.push(F::USER_VA_END - k * PAGE);
    }
    v.sort_unstable();
    v.dedup();
    v
}

#[derive(Debug, Clone)]
enum Op {
    Install {
        at: usize,
        prot: u8,
    },
    Lookup {
        at: usize,
    },
    Unmap {
        a: usize,
        b: usize,
    },
    Protect {
        a: usize,
        b: usize,
        prot: u8,
    },
    Cow {
        at: usize,
        prot: u8,
    },
    Fork {
        a: usize,
        b: usize,
        cow: bool,
    },
    FreeTables {
        f: usize,
        a: usize,
        b: usize,
        c: usize,
    },
    BadInstall {
        at: usize,
        unaligned: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let i = || 0..1000usize;
    prop_oneof![
        6 => (i(), 0u8..16).prop_map(|(at, prot)| Op::Install { at, prot }),
        1 => i().prop_map(|at| Op::Lookup { at }),
        2 => (i(), i()).prop_map(|(a, b)| Op::Unmap { a, b }),
        2 => (i(), i(), 0u8..16).prop_map(|(a, b, prot)| Op::Protect { a, b, prot }),
        2 => (i(), 0u8..16).prop_map(|(at, prot)| Op::Cow { at, prot }),
        1 => (i(), i(), any::<bool>()).prop_map(|(a, b, cow)| Op::Fork { a, b, cow }),
        2 => (i(), i(), i(), i()).prop_map(|(f, a, b, c)| Op::FreeTables { f, a, b, c }),
        1 => (i(), any::<bool>()).prop_map(|(at, unaligned)| Op::BadInstall { at, unaligned }),
    ]
}

struct Harness<'a, F: PteFormat> {
    hf: &'a HostFrames,
    pt: PageTable<'a, F>,
    cands: Vec<u64>,
    /// va -> (frame, protection as the format represents it).
    model: BTreeMap<u64, (Frame, Prot)>,
}

fn prot_of(bits: u8) -> Prot {
    Prot::from_bits_truncate(bits) | Prot::USER
}

impl<'a, F: PteFormat> Harness<'a, F> {
    fn cand(&self, i: usize) -> u64 {
        self.cands[i % self.cands.len()]
    }

    /// `[min, max + PAGE)` of two candidates.
    fn range(&self, a: usize, b: usize) -> (u64, u64) {
        let (x, y) = (self.cand(a), self.cand(b));
        (x.min(y), x.max(y) + PAGE)
    }

    /// Runs `f` with a gather whose release callback checks that each
    /// released frame is one the model expects released, that its page was
    /// flushed first if it was accessible, and drops the mapping's
    /// reference. Returns the frames released and the flush log.
    fn with_gather<R>(
        &self,
        expect: &HashMap<Frame, (u64, bool)>,
        f: impl FnOnce(&mut TlbGather<'_>) -> R,
    ) -> (R, Vec<Frame>, RecordingFlush) {
        let fl = RecordingFlush::with_ceiling(8);
        let mut released = Vec::new();
        let hf = self.hf;
        let r = {
            let mut rel = |fr: Frame| {
                let &(va, accessible) = expect
                    .get(&fr)
                    .unwrap_or_else(|| panic!("unexpected release of {fr:?}"));
                assert!(
                    !accessible || fl.covered(MM, va),
                    "{fr:?} at {va:#x} released before its TLB flush"
                );
                // SAFETY: each mapping holds one reference; this one is gone and flushed.
                unsafe { hf.put(0, fr, 0) };
                released.push(fr);
            };
            let mut g = TlbGather::new(MM, 0, &fl, hf, &mut rel);
            let r = f(&mut g);
            g.finish();
            r
        };
        (r, released, fl)
    }

    /// Model entries in `[s, e)` as release expectations.
    fn expect_in(&self, s: u64, e: u64) -> HashMap<Frame, (u64, bool)> {
        self.model
            .range(s..e)
            .map(|(&va, &(fr, p))| (fr, (va, F::representable(p).is_accessible())))
            .collect()
    }

    fn check(&mut self) {
        for &va in &self.cands {
            let got = self.pt.lookup(va);
            match self.model.get(&va) {
                Some(&(fr, p)) => {
                    assert_eq!(got.frame(), Some(fr), "{va:#x}");
                    assert_eq!(got.prot(), F::representable(p), "{va:#x}");
                    assert_eq!(got, Pte::leaf(fr, p), "{va:#x}");
                }
                None => assert_eq!(got, Pte::NONE, "{va:#x}"),
            }
        }
        let mut n = 0;
        self.pt.for_each_table(&mut |_, _| n += 1);
        assert_eq!(n, self.pt.nr_tables());
        assert_eq!(
            self.hf.stats().allocated_pages,
            (self.model.len() + n) as u64,
            "frame accounting"
        );
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Install { at, prot } => {
                let va = self.cand(at);
                let p = prot_of(prot);
                let fr = self.hf.alloc(0, 0).unwrap();
                let r = self.pt.install_leaf(va, Pte::leaf(fr, p), 0);
                match self.model.get(&va) {
                    None => {
                        assert_eq!(r, Ok(()));
                        self.model.insert(va, (fr, F::representable(p)));
                    }
                    Some(&(old, op)) => {
                        assert_eq!(r, Err(InstallError::AlreadyPresent(Pte::leaf(old, op))));
                        // SAFETY: never mapped.
                        unsafe { self.hf.free(0, fr, 0) };
                    }
                }
            }
            Op::Lookup { at } => {
                // Any address inside the page.
                let va = self.cand(at) + (at as u64 * 37) % PAGE;
                let exp = self.model.get(&(va & !(PAGE - 1)));
                assert_eq!(self.pt.lookup(va).frame(), exp.map(|&(f, _)| f));
            }
            Op::Unmap { a, b } => {
                let (s, e) = self.range(a, b);
                let expect = self.expect_in(s, e);
                let (r, released, _) = self.with_gather(&expect, |g| self.pt.unmap_range(s, e, g));
                assert_eq!(r, Ok(expect.len() as u64));
                assert_eq!(released.len(), expect.len());
                self.model.retain(|&va, _| va < s || va >= e);
            }
            Op::Protect { a, b, prot } => {
                let (s, e) = self.range(a, b);
                let p = prot_of(prot);
                let before: Vec<(u64, Pte<F>)> = self
                    .model
                    .range(s..e)
                    .map(|(&va, &(fr, op))| (va, Pte::leaf(fr, op)))
                    .collect();
                let (r, released, fl) =
                    self.with_gather(&HashMap::new(), |g| self.pt.protect_range(s, e, p, g));
                assert!(released.is_empty());
                let changed = before
                    .iter()
                    .filter(|(_, old)| old.with_prot(p) != *old)
                    .count();
                assert_eq!(r, Ok(changed as u64));
                for (va, old) in before {
                    if old.needs_flush_for(old.with_prot(p)) {
                        assert!(fl.covered(MM, va), "{va:#x}: rights shrank unflushed");
                    }
                    self.model.get_mut(&va).unwrap().1 = F::representable(p);
                }
            }
            Op::Cow { at, prot } => {
                let va = self.cand(at);
                let Some(&(old_fr, old_p)) = self.model.get(&va) else {
                    return;
                };
                let old = Pte::<F>::leaf(old_fr, old_p);
                let p = prot_of(prot);
                let new_fr = self.hf.alloc(0, 0).unwrap();
                let new = Pte::<F>::leaf(new_fr, p);
                let mut expect = HashMap::new();
                expect.insert(old_fr, (va, old.is_accessible()));
                let ((stale, r), released, _) = self.with_gather(&expect, |g| {
                    let stale_old = Pte::<F>::leaf(Frame::from_pfn(old_fr.pfn() ^ 1), old_p);
                    (
                        self.pt.compare_exchange_leaf(va, stale_old, new, g),
                        self.pt.compare_exchange_leaf(va, old, new, g),
                    )
                });
                assert_eq!(stale, Err(CmpxchgError::Changed(old)));
                assert_eq!(r, Ok(()));
                assert_eq!(released, [old_fr]);
                self.model.insert(va, (new_fr, F::representable(p)));
            }
            Op::Fork { a, b, cow } => {
                let (s, e) = self.range(a, b);
                let child = PageTable::<F>::new(self.hf, 0).unwrap();
                let before = self.expect_in(s, e);
                let mut copied = Vec::new();
                let hf = self.hf;
                let ((r, writable), released, fl) = self.with_gather(&HashMap::new(), |g| {
                    let writable: Vec<u64> = self
                        .model
                        .range(s..e)
                        .filter(|(_, &(_, p))| F::representable(p).contains(Prot::WRITE))
                        .map(|(&va, _)| va)
                        .collect();
                    let r = self
                        .pt
                        .copy_range_for_fork(&child, s, e, cow, g, &mut |va, fr| {
                            hf.meta(fr).unwrap().get_ref();
                            copied.push((va, fr));
                        });
                    (r, writable)
                });
                assert!(released.is_empty());
                assert_eq!(r, Ok(before.len() as u64));
                assert_eq!(copied.len(), before.len());
                if cow {
                    for va in writable {
                        assert!(fl.covered(MM, va), "{va:#x}: write-protect unflushed");
                        self.model.get_mut(&va).unwrap().1.remove(Prot::WRITE);
                    }
                }
                for &(va, fr) in &copied {
                    let &(mfr, p) = self.model.get(&va).expect("copied an unmapped page");
                    assert_eq!(fr, mfr);
                    assert_eq!(child.lookup(va), Pte::leaf(fr, p));
                    assert_eq!(self.pt.lookup(va), Pte::leaf(fr, p));
                }
                // Tear the child down: its references go, the parent's stay.
                let expect: HashMap<Frame, (u64, bool)> =
                    copied.iter().map(|&(va, fr)| (fr, (va, true))).collect();
                let ((), rel, _) = self.with_gather(&expect, |g| child.destroy(g));
                assert_eq!(rel.len(), copied.len());
                for (_, fr) in copied {
                    assert_eq!(self.hf.meta(fr).unwrap().ref_count(), 1);
                }
            }
            Op::FreeTables { f, a, b, c } => {
                // floor <= start < end <= ceiling, from candidate boundaries.
                let mut pts = [f, a, b, c].map(|i| self.cand(i));
                pts.sort_unstable();
                let floor = if f % 3 == 0 { 0 } else { pts[0] };
                let (s, e) = (pts[1], pts[2] + PAGE);
                let ceiling = if c % 3 == 0 {
                    F::USER_VA_END
                } else {
                    (pts[3] + PAGE).max(e)
                };
                // The address-space layer unmaps the gap before freeing its
                // tables.
                let expect = self.expect_in(floor, ceiling);
                let (r, _, _) = self.with_gather(&expect, |g| {
                    self.pt.unmap_range(floor, ceiling, g)?;
                    // SAFETY: nothing else uses the page table.
                    unsafe { self.pt.free_tables(s, e, floor, ceiling, g) }
                });
                let freed = r.unwrap();
                self.model.retain(|&va, _| va < floor || va >= ceiling);
                let mut left = Vec::new();
                self.pt
                    .for_each_table(&mut |level, base| left.push((level, base)));
                for (level, base) in left {
                    if level == LEVELS {
                        continue;
                    }
                    let end = base + entry_span(level + 1);
                    assert!(
                        !(floor <= base && end <= ceiling && base < e && s < end),
                        "level-{level} table at {base:#x} survived free_tables({s:#x}..{e:#x}, \
                         {floor:#x}..{ceiling:#x}) ({freed} freed)"
                    );
                }
            }
            Op::BadInstall { at, unaligned } => {
                let va = if unaligned {
                    self.cand(at) + 8
                } else {
                    F::USER_VA_END + self.cand(at)
                };
                let fr = self.hf.alloc(0, 0).unwrap();
                assert_eq!(
                    self.pt.install_leaf(va, Pte::leaf(fr, Prot::READ), 0),
                    Err(InstallError::BadAddress(va))
                );
                // SAFETY: never mapped.
                unsafe { self.hf.free(0, fr, 0) };
                // A range reaching beyond the limit is refused whole.
                let start = (va & !(PAGE - 1)).min(F::USER_VA_END - PAGE);
                let (r, released, _) = self.with_gather(&HashMap::new(), |g| {
                    self.pt.unmap_range(start, F::USER_VA_END + PAGE, g)
                });
                assert!(matches!(r, Err(PgTableError::BadRange { .. })), "{r:?}");
                assert!(released.is_empty());
            }
        }
    }
}

fn run<F: PteFormat>(ops: &[Op]) {
    let hf = HostFrames::with_config(8 << 20, &[], FrameConfig::new(1));
    let pt = PageTable::<F>::new(&hf, 0).unwrap();
    let mut h = Harness {
        hf: &hf,
        pt,
        cands: candidates::<F>(),
        model: BTreeMap::new(),
    };
    h.check();
    for op in ops {
        h.step(op);
        h.check();
    }
    let Harness { pt, model, .. } = h;
    let expect: HashMap<Frame, (u64, bool)> = model
        .iter()
        .map(|(&va, &(fr, p))| (fr, (va, F::representable(p).is_accessible())))
        .collect();
    let fl = RecordingFlush::new();
    let mut n = 0;
    let mut rel = |fr: Frame| {
        assert!(expect.contains_key(&fr), "unexpected release of {fr:?}");
        // SAFETY: the last mapping of the frame is gone and flushed.
        unsafe { hf.put(0, fr, 0) };
        n += 1;
    };
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    pt.destroy(&mut g);
    g.finish();
    assert_eq!(n, model.len());
    assert!(!fl.is_empty() || model.is_empty());
    assert_eq!(hf.stats().allocated_pages, 0, "frames leaked");
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 256 },
        ..ProptestConfig::default()
    };
    if cfg!(miri) {
        // Saving failures needs the file system, which Miri isolates.
        c.failure_persistence = None;
    }
    c
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 0..if cfg!(miri) { 12 } else { 60 })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pgtable_model_x86_64(ops in ops()) {
        run::<X86_64Pte>(&ops);
    }

    #[test]
    fn pgtable_model_mips64(ops in ops()) {
        run::<Mips64Pte>(&ops);
    }

    #[test]
    fn pgtable_model_soft(ops in ops()) {
        run::<SoftPte>(&ops);
    }
}
