//! Differential property test of the address-space layer (`mm::aspace`)
//! against a page-level model, in the style of NrOS's model checks.
//!
//! A family of up to four address spaces (forked from one another) is
//! driven by random sequences of mmap (fixed, non-fixed, hinted, private,
//! shared, grows-down, invalid), munmap, mprotect, brk, user copies in both
//! directions, page faults followed by direct accesses through the page
//! table (what the MMU would do), fork, exit and switches of the per-VMA
//! lock. The model keeps, per address space, a `BTreeMap` page → (VMA
//! flags, shared object and page offset) and the bytes of every page that
//! was written (private bytes per address space, shared bytes per object).
//!
//! Checked after every step, for every live address space:
//! - `AddressSpace::validate` (maple tree, VMA ranges, owners, attachment,
//!   anon_vma chains, VMA count);
//! - the VMAs of `for_each_vma`, expanded to pages, equal the model's pages
//!   (merging is the implementation's business; what is mapped is not);
//! - every present page-table entry lies in a mapped page, allows no more
//!   than its VMA, and maps a frame whose bytes equal the model's; a
//!   private page with no entry is all zero in the model;
//! - copy-on-write isolation: a private frame mapped writable is mapped
//!   once and referenced once; the map count of every mapped frame equals
//!   the number of entries (in all address spaces) mapping it, and its
//!   reference count that plus one for a shared object's own reference;
//!   all entries for one shared page map the same frame;
//! - results and errors (Linux's errno values) equal the model's;
//! - TLB flushes: every entry that was accessible before the step and is
//!   gone, points elsewhere, or allows less after it (or belonged to an
//!   address space that exited) is covered by a flush the step recorded.
//!
//! At the end every address space exits, the caches are shrunk and
//! destroyed after an RCU barrier, and every frame, VMA, anon_vma, chain
//! and shared object is back.

use std::collections::{BTreeMap, HashMap};

use mm::aspace::{
    Access, AddressSpace, Errno, FaultError, MapFlags, MmContext, SegvKind, UserLayout, PROT_EXEC,
    PROT_READ, PROT_WRITE,
};
use mm::frame::HostFrames;
use mm::pgtable::{FlushEvent, Prot, Pte, RecordingFlush, SoftPte};
use mm::rcu::{Rcu, RcuCpu};
use mm::vma::VmFlags;
use proptest::prelude::*;

const PAGE: u64 = 4096;
const PAGE_US: usize = 4096;
/// A small user space, so that fixed, hinted and top-down mappings, the
/// heap and the stack all collide.
const MIN: u64 = 16 * PAGE;
const MMAP_BASE: u64 = MIN + 80 * PAGE;
const VA_END: u64 = MMAP_BASE + 32 * PAGE;
const STACK_MAX: u64 = 8 * PAGE;
const GUARD: u64 = 2 * PAGE;
const BRK_BASE: u64 = MIN + 4 * PAGE;
const MAX_FAMILY: usize = 4;
const CPU: usize = 0;

fn layout() -> UserLayout {
    UserLayout {
        min_addr: MIN,
        va_end: VA_END,
        mmap_base: MMAP_BASE,
        stack_max: STACK_MAX,
        stack_guard: GUARD,
    }
}

type Mm<'a> = AddressSpace<'a, SoftPte>;

// ---- operations --------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Mmap {
        who: usize,
        addr: A,
        len: u64,
        prot: u32,
        flags: MapFlags,
    },
    Munmap {
        who: usize,
        addr: A,
        len: u64,
    },
    Mprotect {
        who: usize,
        addr: A,
        len: u64,
        prot: u32,
    },
    Brk {
        who: usize,
        new: u64,
    },
    WriteUser {
        who: usize,
        addr: A,
        len: usize,
        seed: u8,
    },
    ReadUser {
        who: usize,
        addr: A,
        len: usize,
    },
    Fault {
        who: usize,
        addr: A,
        access: Access,
        seed: u8,
    },
    Fork {
        who: usize,
    },
    Exit {
        who: usize,
    },
    PerVmaLock(bool),
}

/// An address: absolute, or relative to the pages the address space maps
/// when the operation runs (so that most operations hit something).
#[derive(Debug, Clone, Copy)]
enum A {
    Abs(u64),
    /// Byte `off` from the start of the `idx`-th mapped page (mod count).
    Mapped(u16, u64),
    /// `pages` pages below the `idx`-th mapped page (stack growth).
    Below(u16, u64),
}

impl A {
    fn resolve(self, s: &MSpace) -> u64 {
        let nth = |idx: u16| {
            let n = s.pages.len();
            (n > 0).then(|| *s.pages.keys().nth(idx as usize % n).unwrap())
        };
        match self {
            A::Abs(a) => a,
            A::Mapped(idx, off) => nth(idx).map_or(MIN + off, |p| p + off),
            A::Below(idx, pages) => nth(idx).map_or(MIN, |p| p.saturating_sub(pages * PAGE)),
        }
    }
}

/// Mostly inside what is mapped, sometimes anywhere.
fn sel(aligned: bool) -> impl Strategy<Value = A> {
    let off = if aligned {
        prop_oneof![4 => (0..3u64).prop_map(|p| p * PAGE), 1 => 1..PAGE].boxed()
    } else {
        (0..2 * PAGE).boxed()
    };
    prop_oneof![
        6 => (any::<u16>(), off).prop_map(|(i, o)| A::Mapped(i, o)),
        1 => (any::<u16>(), 1..12u64).prop_map(|(i, p)| A::Below(i, p)),
        3 => addr().prop_map(A::Abs),
    ]
}

fn page_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (MIN / PAGE..VA_END / PAGE).prop_map(|p| p * PAGE),
        1 => (0..VA_END / PAGE + 4).prop_map(|p| p * PAGE),
    ]
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => page_addr(),
        2 => (page_addr(), 1..PAGE).prop_map(|(a, o)| a + o),
        1 => Just(0u64),
        1 => Just(VA_END),
        1 => Just(!(PAGE - 1)),
        1 => Just(u64::MAX - 7),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        24 => (1..10u64).prop_map(|p| p * PAGE),
        6 => 1..3 * PAGE,
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - PAGE),
        1 => Just(1u64 << 40),
        1 => (20..120u64).prop_map(|p| p * PAGE),
    ]
}

fn prot() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => Just(PROT_READ | PROT_WRITE),
        8 => 0..8u32,
        1 => (0..8u32).prop_map(|p| p | 8),
    ]
}

fn map_flags() -> impl Strategy<Value = MapFlags> {
    let anon = MapFlags::ANONYMOUS;
    let kind = prop_oneof![
        16 => Just(MapFlags::PRIVATE | anon),
        8 => Just(MapFlags::SHARED | anon),
        4 => Just(MapFlags::PRIVATE | anon | MapFlags::GROWSDOWN),
        1 => Just(anon),
        1 => Just(MapFlags::PRIVATE | MapFlags::SHARED | anon),
        1 => Just(MapFlags::PRIVATE),
        1 => Just(MapFlags::SHARED | anon | MapFlags::GROWSDOWN),
    ];
    let place = prop_oneof![
        4 => Just(MapFlags::empty()),
        4 => Just(MapFlags::FIXED),
        1 => Just(MapFlags::FIXED_NOREPLACE),
        1 => Just(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE),
    ];
    (kind, place).prop_map(|(k, p)| k | p)
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        4 => Just(Access::Write),
        4 => Just(Access::Read),
        1 => Just(Access::Exec),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..MAX_FAMILY;
    prop_oneof![
        10 => (who.clone(), sel(true), len(), prot(), map_flags(), any::<bool>()).prop_map(
            |(who, a, l, prot, flags, hint)| {
                // Non-fixed mappings mostly without a hint.
                let addr = if flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE)
                    || hint
                {
                    a
                } else {
                    A::Abs(0)
                };
                Op::Mmap { who, addr, len: l, prot, flags }
            }
        ),
        5 => (who.clone(), sel(true), len()).prop_map(|(who, addr, len)| Op::Munmap { who, addr, len }),
        5 => (who.clone(), sel(true), len(), prot())
            .prop_map(|(who, addr, len, prot)| Op::Mprotect { who, addr, len, prot }),
        3 => (who.clone(), prop_oneof![
                4 => (0..40u64).prop_map(|p| BRK_BASE + p * PAGE / 2 + p),
                1 => Just(0u64),
                1 => 0..BRK_BASE,
                1 => Just(VA_END),
            ])
            .prop_map(|(who, new)| Op::Brk { who, new }),
        10 => (who.clone(), sel(false), 0..2 * PAGE_US, any::<u8>())
            .prop_map(|(who, addr, len, seed)| Op::WriteUser { who, addr, len, seed }),
        5 => (who.clone(), sel(false), 0..2 * PAGE_US)
            .prop_map(|(who, addr, len)| Op::ReadUser { who, addr, len }),
        12 => (who.clone(), sel(false), access(), any::<u8>())
            .prop_map(|(who, addr, access, seed)| Op::Fault { who, addr, access, seed }),
        2 => who.clone().prop_map(|who| Op::Fork { who }),
        1 => who.prop_map(|who| Op::Exit { who }),
        1 => any::<bool>().prop_map(Op::PerVmaLock),
    ]
}

// ---- the model -----------------------------------------------------------

/// What the model knows about one mapped page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MPage {
    /// The VMA flags the page must have (access, SHARED, GROWSDOWN, HEAP).
    flags: VmFlags,
    /// Shared memory: (object, page offset in it).
    shm: Option<(u32, u64)>,
}

type Bytes = Box<[u8; PAGE_US]>;

#[derive(Clone, Default)]
struct MSpace {
    pages: BTreeMap<u64, MPage>,
    /// Bytes of private pages that were written (absent: zero).
    private: HashMap<u64, Bytes>,
    start_brk: u64,
    brk: u64,
}

#[derive(Default)]
struct Model {
    /// Bytes of shared pages that were written, by (object, page offset).
    shm: HashMap<(u32, u64), Bytes>,
    next_obj: u32,
}

fn page_align(len: u64) -> Option<u64> {
    len.checked_add(PAGE - 1).map(|l| l & !(PAGE - 1))
}

fn prot_flags(prot: u32) -> Result<VmFlags, Errno> {
    if prot & !7 != 0 {
        return Err(Errno::Inval);
    }
    let mut f = VmFlags::empty();
    f.set(VmFlags::READ, prot & PROT_READ != 0);
    f.set(VmFlags::WRITE, prot & PROT_WRITE != 0);
    f.set(VmFlags::EXEC, prot & PROT_EXEC != 0);
    Ok(f)
}

fn zero_page() -> Bytes {
    Box::new([0u8; PAGE_US])
}

impl MSpace {
    fn any_mapped(&self, start: u64, end: u64) -> bool {
        self.pages.range(start..end).next().is_some()
    }

    fn unmap(&mut self, start: u64, end: u64) {
        let gone: Vec<u64> = self.pages.range(start..end).map(|(&p, _)| p).collect();
        for p in gone {
            self.pages.remove(&p);
            self.private.remove(&p);
        }
    }

    fn allows(&self, va: u64, f: VmFlags) -> bool {
        self.pages
            .get(&(va & !(PAGE - 1)))
            .is_some_and(|p| p.flags.contains(f))
    }
}

impl Model {
    fn byte(&self, s: &MSpace, va: u64) -> u8 {
        let page = va & !(PAGE - 1);
        let off = (va - page) as usize;
        let p = s.pages[&page];
        let bytes = match p.shm {
            Some(k) => self.shm.get(&k),
            None => s.private.get(&page),
        };
        bytes.map_or(0, |b| b[off])
    }

    fn page_bytes<'m>(&'m self, s: &'m MSpace, page: u64) -> Option<&'m Bytes> {
        match s.pages[&page].shm {
            Some(k) => self.shm.get(&k),
            None => s.private.get(&page),
        }
    }

    fn write_byte(&mut self, s: &mut MSpace, va: u64, v: u8) {
        let page = va & !(PAGE - 1);
        let off = (va - page) as usize;
        let p = s.pages[&page];
        let bytes = match p.shm {
            Some(k) => self.shm.entry(k).or_insert_with(zero_page),
            None => s.private.entry(page).or_insert_with(zero_page),
        };
        bytes[off] = v;
    }

    fn map(&mut self, s: &mut MSpace, start: u64, end: u64, flags: VmFlags) {
        let obj = flags.contains(VmFlags::SHARED).then(|| {
            self.next_obj += 1;
            self.next_obj
        });
        for (i, p) in (start..end).step_by(PAGE_US).enumerate() {
            let shm = obj.map(|o| (o, i as u64));
            s.pages.insert(p, MPage { flags, shm });
            s.private.remove(&p);
        }
    }

    /// Linux's `mmap` (anonymous only), in Samara's order of checks.
    fn mmap(
        &mut self,
        s: &mut MSpace,
        addr: u64,
        len: u64,
        prot: u32,
        flags: MapFlags,
    ) -> Result<u64, Errno> {
        let mut vmflags = prot_flags(prot)?;
        if len == 0 {
            return Err(Errno::Inval);
        }
        let len = page_align(len).ok_or(Errno::NoMem)?;
        if flags.contains(MapFlags::SHARED) == flags.contains(MapFlags::PRIVATE) {
            return Err(Errno::Inval);
        }
        if !flags.contains(MapFlags::ANONYMOUS) {
            return Err(Errno::Inval);
        }
        vmflags.set(VmFlags::SHARED, flags.contains(MapFlags::SHARED));
        vmflags.set(VmFlags::GROWSDOWN, flags.contains(MapFlags::GROWSDOWN));
        if vmflags.contains(VmFlags::SHARED | VmFlags::GROWSDOWN) {
            return Err(Errno::Inval);
        }
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        let start = if fixed {
            if !addr.is_multiple_of(PAGE) {
                return Err(Errno::Inval);
            }
            let end = addr.checked_add(len).ok_or(Errno::NoMem)?;
            if addr < MIN || end > VA_END {
                return Err(Errno::NoMem);
            }
            if s.any_mapped(addr, end) {
                if flags.contains(MapFlags::FIXED_NOREPLACE) {
                    return Err(Errno::Exist);
                }
                s.unmap(addr, end);
            }
            addr
        } else {
            if len > MMAP_BASE - MIN {
                return Err(Errno::NoMem);
            }
            let hint = addr & !(PAGE - 1);
            if hint >= MIN
                && hint.checked_add(len).is_some_and(|e| e <= MMAP_BASE)
                && !s.any_mapped(hint, hint + len)
            {
                hint
            } else {
                // Top-down: the highest free range below the mmap base.
                let mut a = MMAP_BASE - len;
                loop {
                    if !s.any_mapped(a, a + len) {
                        break a;
                    }
                    if a < MIN + PAGE {
                        return Err(Errno::NoMem);
                    }
                    a -= PAGE;
                }
            }
        };
        self.map(s, start, start + len, vmflags);
        Ok(start)
    }

    fn munmap(&mut self, s: &mut MSpace, addr: u64, len: u64) -> Result<(), Errno> {
        let len = page_align(len).filter(|&l| l != 0).ok_or(Errno::Inval)?;
        let end = addr.checked_add(len).ok_or(Errno::Inval)?;
        if !addr.is_multiple_of(PAGE) || end > VA_END {
            return Err(Errno::Inval);
        }
        s.unmap(addr, end);
        Ok(())
    }

    /// Linux's `mprotect` order of checks; all or nothing (Samara checks
    /// the whole range is mapped before it changes anything).
    fn mprotect(&mut self, s: &mut MSpace, addr: u64, len: u64, prot: u32) -> Result<(), Errno> {
        if !addr.is_multiple_of(PAGE) {
            return Err(Errno::Inval);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).filter(|&l| l != 0).ok_or(Errno::NoMem)?;
        let end = addr.checked_add(len).ok_or(Errno::NoMem)?;
        let access = prot_flags(prot)?;
        if end > VA_END {
            return Err(Errno::NoMem);
        }
        if (addr..end)
            .step_by(PAGE_US)
            .any(|p| !s.pages.contains_key(&p))
        {
            return Err(Errno::NoMem);
        }
        for p in (addr..end).step_by(PAGE_US) {
            let mp = s.pages.get_mut(&p).unwrap();
            mp.flags = (mp.flags - VmFlags::ACCESS) | access;
        }
        Ok(())
    }

    fn brk(&mut self, s: &mut MSpace, new: u64) -> u64 {
        let (base, cur) = (s.start_brk, s.brk);
        if base == 0 || new < base || new > MMAP_BASE {
            return cur;
        }
        let round = |v: u64| (v + PAGE - 1) & !(PAGE - 1);
        let (old_end, new_end) = (round(cur), round(new));
        if new_end < old_end {
            s.unmap(new_end, old_end);
        } else if new_end > old_end {
            if s.any_mapped(old_end, new_end) {
                return cur;
            }
            self.map(
                s,
                old_end,
                new_end,
                VmFlags::READ | VmFlags::WRITE | VmFlags::HEAP,
            );
        }
        s.brk = new;
        new
    }

    /// A fault: grows a stack if the address is just below one (`vmas` are
    /// the real VMAs, whose boundaries the growth limit depends on), then
    /// checks the access.
    fn fault(
        &mut self,
        s: &mut MSpace,
        vmas: &[(u64, u64, VmFlags)],
        addr: u64,
        access: Access,
    ) -> Result<(), FaultError> {
        let segv = |kind| Err(FaultError::Segv { addr, kind });
        if addr >= VA_END {
            return segv(SegvKind::MapErr);
        }
        let page = addr & !(PAGE - 1);
        if !s.pages.contains_key(&page) {
            let Some(&(vs, ve, vf)) = vmas.iter().find(|v| v.0 > addr) else {
                return segv(SegvKind::MapErr);
            };
            if !vf.contains(VmFlags::GROWSDOWN) || ve - page > STACK_MAX {
                return segv(SegvKind::MapErr);
            }
            let floor = vmas
                .iter()
                .rev()
                .find(|v| v.1 <= addr)
                .map_or(MIN, |v| v.1 + GUARD);
            if page < floor {
                return segv(SegvKind::MapErr);
            }
            let below = s.pages[&vs];
            assert!(below.shm.is_none(), "a shared stack");
            for p in (page..vs).step_by(PAGE_US) {
                s.pages.insert(p, below);
            }
        }
        let need = match access {
            Access::Read => VmFlags::READ,
            Access::Write => VmFlags::WRITE,
            Access::Exec => VmFlags::EXEC,
        };
        if s.allows(page, need) {
            Ok(())
        } else {
            segv(SegvKind::AccErr)
        }
    }
}

// ---- the system under test ------------------------------------------------

struct Member<'a> {
    mm: Mm<'a>,
    model: MSpace,
}

fn vmas_of(mm: &Mm<'_>) -> Vec<(u64, u64, VmFlags)> {
    let mut v = Vec::new();
    mm.for_each_vma(CPU, |s, e, f| v.push((s, e, f)));
    v
}

/// The bytes of `frame`, through the direct map.
fn frame_bytes<'f>(ctx: &MmContext<'f, SoftPte>, pte: Pte<SoftPte>) -> &'f [u8] {
    let frame = pte.frame().unwrap();
    let p = ctx
        .frames()
        .frame_ptr(frame)
        .expect("mapped frame outside RAM");
    // SAFETY: a mapped frame is direct-mapped RAM of PAGE bytes; the test is single-threaded, so nothing writes it while the slice lives (it is dropped before the next operation).
    unsafe { std::slice::from_raw_parts(p.as_ptr(), PAGE_US) }
}

/// What the MMU does after a successful fault: the access, through the
/// entry now present. Writes `v` (for writes) and returns the byte.
fn mmu_access(ctx: &MmContext<'_, SoftPte>, mm: &Mm<'_>, addr: u64, access: Access, v: u8) -> u8 {
    let pte = mm.page_table().lookup(addr);
    let need = match access {
        Access::Read => Prot::READ,
        Access::Write => Prot::WRITE,
        Access::Exec => Prot::EXEC,
    };
    assert!(
        pte.allows(need | Prot::USER),
        "after a successful {access:?} fault at {addr:#x} the entry is {pte:?}"
    );
    let frame = pte.frame().unwrap();
    let p = ctx.frames().frame_ptr(frame).unwrap();
    let off = (addr % PAGE) as usize;
    // SAFETY: a mapped frame is direct-mapped RAM; single-threaded test.
    unsafe {
        if access == Access::Write {
            p.as_ptr().add(off).write(v);
        }
        p.as_ptr().add(off).read()
    }
}

/// Every page-table entry of every member, by page.
fn snapshot_ptes(fam: &[Member<'_>]) -> Vec<Vec<Pte<SoftPte>>> {
    fam.iter()
        .map(|m| {
            (0..VA_END / PAGE)
                .map(|p| m.mm.page_table().lookup(p * PAGE))
                .collect()
        })
        .collect()
}

fn check_flushes(
    before: &[(mm::vma::lock::MmId, Vec<Pte<SoftPte>>)],
    after: &HashMap<mm::vma::lock::MmId, Vec<Pte<SoftPte>>>,
    events: &[FlushEvent],
    what: &Op,
) -> Result<(), TestCaseError> {
    for (id, old) in before {
        for (i, &o) in old.iter().enumerate() {
            let va = i as u64 * PAGE;
            let new = after.get(id).map_or(Pte::NONE, |v| v[i]);
            if o.needs_flush_for(new) {
                prop_assert!(
                    events.iter().any(|e| e.covers(*id, va)),
                    "{what:?}: {id:?} page {va:#x} went from {o:?} to {new:?} without a TLB \
                     flush covering it (flushes: {events:?})"
                );
            }
        }
    }
    Ok(())
}

/// The per-step checks of the module docs.
fn check_family(
    ctx: &MmContext<'_, SoftPte>,
    model: &Model,
    fam: &[Member<'_>],
    what: &Op,
) -> Result<(), TestCaseError> {
    // Frame → number of entries mapping it; shared page → its frame.
    let mut maps: HashMap<u64, u32> = HashMap::new();
    let mut shared_frame: HashMap<(u32, u64), u64> = HashMap::new();
    let mut private_frames: HashMap<u64, bool> = HashMap::new();
    for (k, m) in fam.iter().enumerate() {
        if let Err(e) = m.mm.validate(CPU) {
            return Err(TestCaseError::fail(format!(
                "{what:?}: member {k} invalid: {e}"
            )));
        }
        prop_assert_eq!(m.mm.nr_vmas() as usize, vmas_of(&m.mm).len());
        // The mapped pages and their flags.
        let mut real = BTreeMap::new();
        for (s, e, f) in vmas_of(&m.mm) {
            for p in (s..e).step_by(PAGE_US) {
                real.insert(p, f);
            }
        }
        let want: BTreeMap<u64, VmFlags> =
            m.model.pages.iter().map(|(&p, mp)| (p, mp.flags)).collect();
        prop_assert_eq!(&real, &want, "{:?}: member {} pages differ", what, k);
        // Every entry.
        for i in 0..VA_END / PAGE {
            let va = i * PAGE;
            let pte = m.mm.page_table().lookup(va);
            let Some(mp) = m.model.pages.get(&va) else {
                prop_assert!(
                    pte.is_none(),
                    "{:?}: member {} maps unmapped page {:#x}: {:?}",
                    what,
                    k,
                    va,
                    pte
                );
                continue;
            };
            let Some(frame) = pte.frame() else {
                prop_assert!(pte.is_none());
                if mp.shm.is_none() {
                    prop_assert!(
                        m.model
                            .private
                            .get(&va)
                            .is_none_or(|b| b.iter().all(|&x| x == 0)),
                        "{:?}: member {} page {:#x} has data in the model but no entry",
                        what,
                        k,
                        va
                    );
                }
                continue;
            };
            // No more rights than the VMA grants.
            let mut allowed = Prot::USER;
            for (vf, pf) in [
                (VmFlags::READ, Prot::READ),
                (VmFlags::WRITE, Prot::WRITE),
                (VmFlags::EXEC, Prot::EXEC),
            ] {
                if mp.flags.contains(vf) {
                    allowed |= pf;
                }
            }
            prop_assert!(
                allowed.contains(pte.prot()),
                "{:?}: member {} page {:#x}: entry {:?} exceeds VMA flags {:?}",
                what,
                k,
                va,
                pte,
                mp.flags
            );
            // The bytes.
            let got = frame_bytes(ctx, pte);
            match model.page_bytes(&m.model, va) {
                Some(b) => prop_assert!(
                    got == &b[..],
                    "{:?}: member {} page {:#x}: bytes differ (first at {:?})",
                    what,
                    k,
                    va,
                    got.iter().zip(b.iter()).position(|(a, b)| a != b)
                ),
                None => prop_assert!(
                    got.iter().all(|&x| x == 0),
                    "{:?}: member {} page {:#x} should be zero",
                    what,
                    k,
                    va
                ),
            }
            *maps.entry(frame.pfn()).or_default() += 1;
            match mp.shm {
                Some(key) => {
                    let f = *shared_frame.entry(key).or_insert(frame.pfn());
                    prop_assert_eq!(
                        f,
                        frame.pfn(),
                        "{:?}: shared page {:?} in two frames",
                        what,
                        key
                    );
                }
                None => {
                    let w = private_frames.entry(frame.pfn()).or_insert(false);
                    *w |= pte.prot().contains(Prot::WRITE);
                }
            }
        }
    }
    let frames = ctx.frames();
    for (&pfn, &n) in &maps {
        let meta = frames.meta(mm::addr::Frame::from_pfn(pfn)).unwrap();
        prop_assert_eq!(
            meta.map_count(),
            n,
            "{:?}: map count of pfn {:#x}",
            what,
            pfn
        );
        let shared = shared_frame.values().any(|&f| f == pfn);
        let refs = n + u32::from(shared);
        prop_assert_eq!(
            meta.ref_count(),
            refs,
            "{:?}: ref count of pfn {:#x}",
            what,
            pfn
        );
        if private_frames.get(&pfn) == Some(&true) {
            prop_assert_eq!(
                n,
                1,
                "{:?}: private frame {:#x} writable but mapped {} times",
                what,
                pfn,
                n
            );
        }
    }
    Ok(())
}

fn fill(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8).wrapping_add(1) | 1)
        .collect()
}

/// Runs `ops`. With `free_left`, memory is short: after the first address
/// space exists, frames are taken away until only that many are free.
fn run(ops: Vec<Op>, per_vma: bool, free_left: Option<u64>) -> Result<(), TestCaseError> {
    let frames = HostFrames::new(16 << 20, 1);
    let rcu = Rcu::new();
    let flush = RecordingFlush::new();
    let baseline = frames.stats().free_pages;
    let mut rcu_cpu = rcu.register_cpu(CPU).unwrap();
    // SAFETY: the context is destroyed below after an RCU barrier.
    let ctx = unsafe { MmContext::<SoftPte>::new(&frames, &rcu, &flush, layout()) }.unwrap();
    ctx.set_per_vma_lock(per_vma);
    let result = run_on(&ctx, &flush, &mut rcu_cpu, ops, free_left);
    // Leak check, also after a failure (a panic in it would hide the
    // failure; it only runs when the run itself passed).
    if result.is_ok() {
        prop_assert_eq!(ctx.mms_live(), 0);
        prop_assert_eq!(ctx.vmas_live(), 0, "VMAs leaked");
        prop_assert_eq!(ctx.anon_objects_live(), (0, 0, 0), "anon objects leaked");
        let st = ctx.vma_cache_stats();
        prop_assert!(
            st.rcu_calls <= st.pages_created,
            "VMA frees issued RCU callbacks: {} callbacks, {} pages",
            st.rcu_calls,
            st.pages_created
        );
    }
    ctx.shrink(CPU);
    rcu_cpu.barrier();
    if result.is_ok() {
        ctx.destroy(&mut rcu_cpu);
        frames.drain_all();
        prop_assert_eq!(frames.stats().free_pages, baseline, "frames leaked");
    } else {
        // Address spaces may have leaked with the failure; keep the
        // context's memory rather than tear down under them.
        std::mem::forget(ctx);
    }
    result
}

fn run_on<'a>(
    ctx: &'a MmContext<'a, SoftPte>,
    flush: &RecordingFlush,
    rcu_cpu: &mut RcuCpu<'_>,
    ops: Vec<Op>,
    free_left: Option<u64>,
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let first = AddressSpace::new(ctx, CPU).unwrap();
    first.set_brk_base(BRK_BASE).unwrap();
    let frames = ctx.frames();
    let mut ballast = Vec::new();
    if let Some(k) = free_left {
        while frames.stats().free_pages > k {
            ballast.push(frames.alloc(CPU, 0).unwrap());
        }
    }
    let mut fam = vec![Member {
        mm: first,
        model: MSpace {
            start_brk: BRK_BASE,
            brk: BRK_BASE,
            ..MSpace::default()
        },
    }];
    let mut outcome = Ok(());
    for op in &ops {
        let before: Vec<_> = fam
            .iter()
            .zip(snapshot_ptes(&fam))
            .map(|(m, p)| (m.mm.id(), p))
            .collect();
        flush.take();
        let pages_before: Vec<_> = fam.iter().map(|m| m.model.pages.clone()).collect();
        // The model applies a write before it learns that the system
        // failed it for want of memory; `resync` restores shared pages
        // the failed operation could not have reached from this copy.
        let shm_before = free_left.is_some().then(|| model.shm.clone());
        match step(ctx, &mut model, &mut fam, op, free_left.is_some()) {
            Ok(None) => {}
            Ok(Some(k)) => {
                let shm_before = shm_before
                    .as_ref()
                    .expect("resync only in memory-short runs");
                outcome = resync(
                    ctx,
                    &mut model,
                    &mut fam[k],
                    &pages_before[k],
                    shm_before,
                    op,
                );
            }
            Err(e) => outcome = Err(e),
        }
        if outcome.is_err() {
            break;
        }
        let events = flush.take();
        let after: HashMap<_, _> = fam
            .iter()
            .zip(snapshot_ptes(&fam))
            .map(|(m, p)| (m.mm.id(), p))
            .collect();
        outcome = check_flushes(&before, &after, &events, op)
            .and_then(|()| check_family(ctx, &model, &fam, op));
        if outcome.is_err() {
            break;
        }
        rcu_cpu.quiescent_state();
    }
    for m in fam {
        m.mm.exit(CPU);
    }
    for f in ballast {
        // SAFETY: allocated above, never used.
        unsafe { frames.free(CPU, f, 0) };
    }
    outcome
}

/// After an operation failed for want of memory: what it may have left
/// half done (documented: VMA splits, a fixed mmap's unmapping, part of a
/// munmap or of a user copy, a grown stack) is taken from the real address
/// space, after checking that every page it maps is mapped as the model
/// had it either before or after the operation.
fn resync(
    ctx: &MmContext<'_, SoftPte>,
    model: &mut Model,
    m: &mut Member<'_>,
    before: &BTreeMap<u64, MPage>,
    shm_before: &HashMap<(u32, u64), Bytes>,
    what: &Op,
) -> Result<(), TestCaseError> {
    let mut pages = BTreeMap::new();
    for (s, e, f) in vmas_of(&m.mm) {
        for p in (s..e).step_by(PAGE_US) {
            let was = [before.get(&p), m.model.pages.get(&p)]
                .into_iter()
                .flatten()
                .find(|mp| mp.flags == f);
            let Some(&mp) = was else {
                return Err(TestCaseError::fail(format!(
                    "{what:?} failed for want of memory and left page {p:#x} mapped {f:?}, \
                     as neither before ({:?}) nor after ({:?})",
                    before.get(&p),
                    m.model.pages.get(&p)
                )));
            };
            pages.insert(p, mp);
        }
    }
    let mut private = HashMap::new();
    for (&p, mp) in &pages {
        let pte = m.mm.page_table().lookup(p);
        if pte.frame().is_none() {
            // A write reaches a page only through an entry the failed
            // operation installed; without one, the shared object's page
            // holds what it held before (the model wrote it already).
            if let Some(k) = mp.shm {
                match shm_before.get(&k) {
                    Some(b) => model.shm.insert(k, b.clone()),
                    None => model.shm.remove(&k),
                };
            }
            continue;
        }
        let mut b = zero_page();
        b.copy_from_slice(frame_bytes(ctx, pte));
        match mp.shm {
            Some(k) => {
                model.shm.insert(k, b);
            }
            None => {
                private.insert(p, b);
            }
        }
    }
    m.model.pages = pages;
    m.model.private = private;
    m.model.brk = m.mm.brk(CPU, 0);
    Ok(())
}

/// Whether the outcomes agree; with memory short, a failure for want of
/// memory where the model succeeded asks for a resync instead.
fn agree<T: PartialEq + std::fmt::Debug>(
    got: T,
    want: T,
    out_of_memory: bool,
    oom: bool,
    op: &Op,
) -> Result<bool, TestCaseError> {
    if got == want {
        return Ok(false);
    }
    if oom && out_of_memory {
        return Ok(true);
    }
    Err(TestCaseError::fail(format!(
        "{op:?}: got {got:?}, the model says {want:?}"
    )))
}

/// Runs one operation on the system and the model and compares; returns
/// the member to resync after a failure for want of memory (`oom` runs).
fn step<'a>(
    ctx: &'a MmContext<'a, SoftPte>,
    model: &mut Model,
    fam: &mut Vec<Member<'a>>,
    op: &Op,
    oom: bool,
) -> Result<Option<usize>, TestCaseError> {
    let n = fam.len();
    let nomem = |e: Result<(), Errno>| e == Err(Errno::NoMem);
    match *op {
        Op::Mmap {
            who,
            addr,
            len,
            prot,
            flags,
        } => {
            let m = &mut fam[who % n];
            let addr = addr.resolve(&m.model);
            let got = m.mm.mmap(CPU, addr, len, prot, flags);
            let want = model.mmap(&mut m.model, addr, len, prot, flags);
            if agree(got, want, got == Err(Errno::NoMem), oom, op)? {
                return Ok(Some(who % n));
            }
        }
        Op::Munmap { who, addr, len } => {
            let m = &mut fam[who % n];
            let addr = addr.resolve(&m.model);
            let got = m.mm.munmap(CPU, addr, len);
            let want = model.munmap(&mut m.model, addr, len);
            if agree(got, want, nomem(got), oom, op)? {
                return Ok(Some(who % n));
            }
        }
        Op::Mprotect {
            who,
            addr,
            len,
            prot,
        } => {
            let m = &mut fam[who % n];
            let addr = addr.resolve(&m.model);
            let got = m.mm.mprotect(CPU, addr, len, prot);
            let want = model.mprotect(&mut m.model, addr, len, prot);
            if agree(got, want, nomem(got), oom, op)? {
                return Ok(Some(who % n));
            }
        }
        Op::Brk { who, new } => {
            let m = &mut fam[who % n];
            let old = m.model.brk;
            let got = m.mm.brk(CPU, new);
            let want = model.brk(&mut m.model, new);
            // brk reports a failure by returning the old end.
            if agree(got, want, got == old, oom, op)? {
                return Ok(Some(who % n));
            }
        }
        Op::WriteUser {
            who,
            addr,
            len,
            seed,
        } => {
            let m = &mut fam[who % n];
            let addr = addr.resolve(&m.model);
            let data = fill(seed, len);
            let got = m.mm.copy_to_user(CPU, addr, &data);
            // Page by page, up to the first page that is not writable.
            let want = match addr.checked_add(len as u64) {
                Some(end) if end <= VA_END => {
                    let mut r = Ok(());
                    let mut va = addr;
                    while va < end {
                        let page_end = ((va & !(PAGE - 1)) + PAGE).min(end);
                        if !m.model.allows(va, VmFlags::WRITE) {
                            r = Err(Errno::Fault);
                            break;
                        }
                        for a in va..page_end {
                            model.write_byte(&mut m.model, a, data[(a - addr) as usize]);
                        }
                        va = page_end;
                    }
                    r
                }
                _ => Err(Errno::Fault),
            };
            if agree(got, want, nomem(got), oom, op)? {
                return Ok(Some(who % n));
            }
        }
        Op::ReadUser { who, addr, len } => {
            let m = &fam[who % n];
            let addr = addr.resolve(&m.model);
            let mut buf = vec![0u8; len];
            let got = m.mm.copy_from_user(CPU, addr, &mut buf);
            let want = match addr.checked_add(len as u64) {
                Some(end) if end <= VA_END => {
                    if (addr..end).all(|a| m.model.allows(a, VmFlags::READ)) {
                        Ok(())
                    } else {
                        Err(Errno::Fault)
                    }
                }
                _ => Err(Errno::Fault),
            };
            if agree(got, want, nomem(got), oom, op)? {
                return Ok(Some(who % n));
            }
            if got.is_ok() {
                for (i, &b) in buf.iter().enumerate() {
                    let want = model.byte(&m.model, addr + i as u64);
                    prop_assert_eq!(b, want, "{:?}: byte {} differs", op, i);
                }
            }
        }
        Op::Fault {
            who,
            addr,
            access,
            seed,
        } => {
            let m = &mut fam[who % n];
            let addr = addr.resolve(&m.model);
            let vmas = vmas_of(&m.mm);
            let got = m.mm.handle_fault(CPU, addr, access);
            let want = model.fault(&mut m.model, &vmas, addr, access);
            if agree(got, want, got == Err(FaultError::OutOfMemory), oom, op)? {
                return Ok(Some(who % n));
            }
            if got.is_ok() {
                let b = mmu_access(ctx, &m.mm, addr, access, seed);
                if access == Access::Write {
                    model.write_byte(&mut m.model, addr, seed);
                }
                prop_assert_eq!(b, model.byte(&m.model, addr), "{:?}: byte differs", op);
            }
        }
        Op::Fork { who } => {
            if n < MAX_FAMILY {
                let parent = &fam[who % n];
                let child = match parent.mm.fork(CPU) {
                    Ok(c) => c,
                    Err(Errno::NoMem) if oom => return Ok(None),
                    Err(e) => return Err(TestCaseError::fail(format!("fork: {e:?}"))),
                };
                let cm = parent.model.clone();
                fam.push(Member {
                    mm: child,
                    model: cm,
                });
            }
        }
        Op::Exit { who } => {
            if n > 1 {
                let m = fam.swap_remove(who % n);
                m.mm.exit(CPU);
            }
        }
        Op::PerVmaLock(on) => {
            ctx.set_per_vma_lock(on);
        }
    }
    Ok(None)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 256 },
        max_shrink_iters: 4096,
        // Failures are reported shrunk and kept in `model_regressions`;
        // no files (Miri isolates the file system anyway).
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn aspace_matches_model(ops in prop::collection::vec(op(), 1..120), per_vma in any::<bool>()) {
        run(ops, per_vma, None)?;
    }

    /// The same with memory short: every operation either agrees with the
    /// model or fails for want of memory leaving only documented partial
    /// effects; the invariants hold after every step, and nothing leaks.
    #[test]
    fn aspace_survives_out_of_memory(
        ops in prop::collection::vec(op(), 1..120),
        per_vma in any::<bool>(),
        free_left in 0..160u64,
    ) {
        run(ops, per_vma, Some(free_left))?;
    }
}

/// Fixed sequences that must keep working (regressions found by the
/// property test are added here in their shrunk form).
#[test]
fn model_regressions() {
    let anon = MapFlags::ANONYMOUS;
    let cases: Vec<Vec<Op>> = vec![
        // Fork, write in the child, exit the parent first.
        vec![
            Op::Mmap {
                who: 0,
                addr: A::Abs(0),
                len: 4 * PAGE,
                prot: 3,
                flags: MapFlags::PRIVATE | anon,
            },
            Op::WriteUser {
                who: 0,
                addr: A::Abs(MMAP_BASE - 4 * PAGE + 10),
                len: 100,
                seed: 1,
            },
            Op::Fork { who: 0 },
            Op::WriteUser {
                who: 1,
                addr: A::Abs(MMAP_BASE - 4 * PAGE + 50),
                len: 100,
                seed: 2,
            },
            Op::Exit { who: 0 },
        ],
    ];
    for ops in cases {
        for per_vma in [false, true] {
            run(ops.clone(), per_vma, None).unwrap();
        }
    }
}

/// The VMA cache is type-safe by RCU: freeing a VMA queues no RCU
/// callback (only an empty slab page released to the frame allocator
/// does). Many mmap/fault/munmap pairs in steady state issue none at all.
#[test]
fn vma_frees_issue_no_rcu_callbacks() {
    let frames = HostFrames::new(16 << 20, 1);
    let rcu = Rcu::new();
    let flush = RecordingFlush::new();
    let mut me = rcu.register_cpu(CPU).unwrap();
    // SAFETY: destroyed below after an RCU barrier.
    let ctx = unsafe { MmContext::<SoftPte>::new(&frames, &rcu, &flush, layout()) }.unwrap();
    let mm = AddressSpace::new(&ctx, CPU).unwrap();
    let keep = mm
        .mmap(
            CPU,
            0,
            PAGE,
            PROT_READ,
            MapFlags::PRIVATE | MapFlags::ANONYMOUS,
        )
        .unwrap();
    let pairs = if cfg!(miri) { 50 } else { 20_000 };
    let rcu_before = rcu.stats().callbacks_queued;
    let before = ctx.vma_cache_stats();
    for n in 0..pairs {
        let a = mm
            .mmap(
                CPU,
                0,
                3 * PAGE,
                PROT_READ | PROT_WRITE,
                MapFlags::PRIVATE | MapFlags::ANONYMOUS,
            )
            .unwrap();
        assert_ne!(a, keep);
        mm.handle_fault(CPU, a + (n % 3) * PAGE, Access::Write)
            .unwrap();
        // Split it first, so that two VMAs are freed per round.
        mm.mprotect(CPU, a, PAGE, PROT_READ).unwrap();
        mm.munmap(CPU, a, 3 * PAGE).unwrap();
        me.quiescent_state();
        flush.take();
    }
    let after = ctx.vma_cache_stats();
    let freed = after.frees - before.frees;
    assert!(freed >= 2 * pairs, "{freed} VMAs freed");
    assert_eq!(
        after.rcu_calls - before.rcu_calls,
        0,
        "the VMA cache issued RCU callbacks for {freed} freed VMAs"
    );
    // (Maple nodes are retired through RCU, one batch per write session,
    // not per VMA: at most one callback per munmap/mprotect/mmap call.)
    let queued = rcu.stats().callbacks_queued - rcu_before;
    assert!(
        queued <= 3 * pairs,
        "{queued} RCU callbacks for {pairs} rounds"
    );
    mm.exit(CPU);
    ctx.shrink(CPU);
    me.barrier();
    ctx.destroy(&mut me);
}

/// Shrunk failure of `aspace_survives_out_of_memory` (14 free frames):
/// a user write into a shared mapping runs out of memory after its first
/// page, so the model (which had applied all of it) must forget the bytes
/// it put in the second page; a later write there shows them otherwise.
#[test]
fn oom_regression_shared_after_munmap() {
    let shared = MapFlags::SHARED | MapFlags::ANONYMOUS;
    let private = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    let ops = vec![
        Op::Mmap {
            who: 0,
            addr: A::Mapped(0, 0),
            len: 3 * PAGE,
            prot: 3,
            flags: shared | MapFlags::FIXED,
        },
        Op::Mmap {
            who: 0,
            addr: A::Abs(0),
            len: 7 * PAGE,
            prot: 3,
            flags: shared,
        },
        Op::WriteUser {
            who: 0,
            addr: A::Mapped(7570, 150),
            len: 3947,
            seed: 0,
        },
        Op::Brk { who: 0, new: 94214 },
        Op::Munmap {
            who: 0,
            addr: A::Mapped(2751, 0),
            len: 7 * PAGE,
        },
        Op::Brk {
            who: 0,
            new: 106508,
        },
        Op::Mmap {
            who: 0,
            addr: A::Abs(0),
            len: 4 * PAGE,
            prot: 3,
            flags: private,
        },
        Op::Mmap {
            who: 0,
            addr: A::Abs(0),
            len: PAGE,
            prot: 3,
            flags: private | MapFlags::GROWSDOWN,
        },
        Op::WriteUser {
            who: 0,
            addr: A::Mapped(10440, 4097),
            len: 1,
            seed: 0,
        },
    ];
    for per_vma in [false, true] {
        run(ops.clone(), per_vma, Some(14)).unwrap();
    }
}
