//! Unit tests of the PTE formats and the page table (small enough for
//! Miri: `cargo +nightly miri test -p mm pgtable`). The model-based
//! property test and the multi-threaded stress test are in
//! `mm/tests/pgtable_*.rs`, the loom models in `mm/tests/loom_pgtable.rs`.

use super::*;
use crate::frame::{FrameConfig, HostFrames};
use crate::vma::lock::MmId;
use std::vec::Vec;

const MM: MmId = MmId::from_raw(0x5a5a_0000);
const GIB: u64 = 1 << 30;
const MIB2: u64 = 1 << 21;

fn host_frames() -> HostFrames {
    let bytes = if cfg!(miri) { 512 << 10 } else { 1 << 20 };
    HostFrames::with_config(bytes, &[], FrameConfig::new(2))
}

fn every_prot() -> impl Iterator<Item = Prot> {
    (0u8..16).map(Prot::from_bits_truncate)
}

/// A fresh frame mapped with `prot`.
fn leaf<F: PteFormat>(hf: &HostFrames, prot: Prot) -> Pte<F> {
    Pte::leaf(hf.alloc_zeroed(0, 0).unwrap(), prot)
}

/// Drops the mapping's reference to every released frame.
fn free_released(hf: &HostFrames, released: &[Frame]) {
    for &f in released {
        // SAFETY: the frame came from `hf` in `leaf()`; each mapping of it holds one reference, and the gather released this mapping after the flush.
        unsafe { hf.put(0, f, 0) };
    }
}

/// Destroys `pt` and frees what it mapped; the allocator must then be back
/// at `baseline` allocated pages.
fn destroy_all<F: PteFormat>(hf: &HostFrames, pt: PageTable<'_, F>, baseline: u64) {
    let fl = RecordingFlush::new();
    let mut released = Vec::new();
    let mut rel = |f: Frame| released.push(f);
    let mut g = TlbGather::new(MM, 0, &fl, hf, &mut rel);
    pt.destroy(&mut g);
    g.finish();
    free_released(hf, &released);
    hf.drain_all();
    assert_eq!(hf.stats().allocated_pages, baseline, "frames leaked");
}

// ---- formats ---------------------------------------------------------

fn check_format<F: PteFormat>() {
    let frames = [0, 1, 0x12345, F::MAX_PFN >> 1, F::MAX_PFN].map(Frame::from_pfn);
    for prot in every_prot() {
        let rep = F::representable(prot);
        assert!(
            rep.contains(prot),
            "{}: {prot:?} narrowed to {rep:?}",
            F::NAME
        );
        assert_eq!(F::representable(rep), rep);
        for frame in frames {
            let pte = Pte::<F>::leaf(frame, prot);
            let raw = pte.raw();
            assert_ne!(raw, 0, "{}: leaf encodes to 0", F::NAME);
            assert!(
                F::is_leaf(raw) && !F::is_table(raw),
                "{}: {raw:#x}",
                F::NAME
            );
            assert!(pte.is_mapped());
            assert_eq!(pte.frame(), Some(frame), "{}: {prot:?} {raw:#x}", F::NAME);
            assert_eq!(pte.prot(), rep, "{}: {frame:?} {raw:#x}", F::NAME);
            assert_eq!(pte.is_accessible(), rep.is_accessible());
            assert!(pte.allows(prot));
            assert_eq!(
                pte.wrprotect().prot(),
                rep.difference(Prot::WRITE) | F::representable(rep.difference(Prot::WRITE))
            );
            assert_eq!(pte.wrprotect().frame(), Some(frame));
            for p2 in every_prot() {
                assert_eq!(pte.with_prot(p2), Pte::leaf(frame, p2));
            }
        }
    }
    for pa in [0, 0x1000, 0x1234_5000, F::MAX_PFN << PAGE_SHIFT] {
        let raw = F::encode_table(PhysAddr::new(pa));
        assert_ne!(raw, 0);
        assert!(
            F::is_table(raw) && !F::is_leaf(raw),
            "{}: {raw:#x}",
            F::NAME
        );
        assert!(!F::is_accessible(raw));
        assert_eq!(F::table_addr(raw), PhysAddr::new(pa));
    }
    let none = Pte::<F>::NONE;
    assert!(none.is_none() && !none.is_mapped() && !none.is_accessible());
    assert_eq!(none.frame(), None);
    assert_eq!(none.prot(), Prot::empty());
    assert_eq!(none.wrprotect(), none);
}

#[test]
fn pgtable_formats_round_trip() {
    check_format::<X86_64Pte>();
    check_format::<Mips64Pte>();
    check_format::<SoftPte>();
}

#[test]
fn pgtable_x86_bits_match_the_x86_64_crate() {
    use super::x86_64::*;
    use ::x86_64::structures::paging::PageTableFlags as T;
    assert_eq!(P, T::PRESENT.bits());
    assert_eq!(RW, T::WRITABLE.bits());
    assert_eq!(US, T::USER_ACCESSIBLE.bits());
    assert_eq!(PWT, T::WRITE_THROUGH.bits());
    assert_eq!(PCD, T::NO_CACHE.bits());
    assert_eq!(A, T::ACCESSED.bits());
    assert_eq!(D, T::DIRTY.bits());
    assert_eq!(G, T::GLOBAL.bits());
    assert_eq!(SW_MAPPED, T::BIT_9.bits());
    assert_eq!(XD, T::NO_EXECUTE.bits());
    assert_eq!(
        ADDR_MASK,
        ::x86_64::PhysAddr::new_truncate(!0).as_u64() & !0xfff
    );
}

#[test]
fn pgtable_x86_leaf_bits() {
    use super::x86_64::*;
    let f = Frame::from_pfn(0x12345);
    let rw = Pte::<X86_64Pte>::leaf(f, Prot::READ | Prot::WRITE | Prot::USER).raw();
    assert_eq!(rw, P | RW | US | A | D | SW_MAPPED | XD | 0x1234_5000);
    let rx = Pte::<X86_64Pte>::leaf(f, Prot::READ | Prot::EXEC | Prot::USER).raw();
    assert_eq!(rx, P | US | A | SW_MAPPED | 0x1234_5000);
    // Write-only and exec-only widen to include read.
    let wo = Pte::<X86_64Pte>::leaf(f, Prot::WRITE | Prot::USER);
    assert_eq!(wo.prot(), Prot::READ | Prot::WRITE | Prot::USER);
    // PROT_NONE: not present, frame kept but inverted (L1TF), U/S kept.
    let none = Pte::<X86_64Pte>::leaf(f, Prot::NONE_USER);
    assert_eq!(none.raw() & P, 0);
    assert_ne!(none.raw() & ADDR_MASK, 0x1234_5000);
    assert_eq!(none.raw() & ADDR_MASK, !0x1234_5000u64 & ADDR_MASK);
    assert_eq!(none.frame(), Some(f));
    assert_eq!(none.prot(), Prot::USER);
    assert!(!none.is_accessible() && none.is_mapped());
    assert_eq!(
        X86_64Pte::encode_table(PhysAddr::new(0xabc_d000)),
        P | RW | US | A | 0xabc_d000
    );
}

#[test]
fn pgtable_mips_leaf_is_entrylo() {
    use mips64::*;
    let f = Frame::from_pfn(0x12345);
    let rw = Pte::<Mips64Pte>::leaf(f, Prot::READ | Prot::WRITE | Prot::USER).raw();
    assert_eq!(rw, SW_MAPPED | XI | D | V | (0x12345 << 6));
    // dmtc0 drops the software bit and, without PageGrain.RIE/XIE, RI/XI:
    // what remains is exactly EntryLo (PFN at bit 6, C = 0, D, V, G = 0).
    assert_eq!(dmtc0_entrylo(rw, 0), D | V | (0x12345 << 6));
    const RIE_XIE: u32 = 3 << 30;
    assert_eq!(dmtc0_entrylo(rw, RIE_XIE), XI | D | V | (0x12345 << 6));
    let lo = dmtc0_entrylo(rw, 0);
    assert_eq!(((lo & PFN_MASK) >> PFN_SHIFT) << 12, f.start().as_u64());
    assert_eq!(lo & G, 0);
    assert_eq!((lo >> C_SHIFT) & 7, CCA);
    // Software bits sit in the fill field, above PFN and below XI.
    assert_eq!(SW_MAPPED & ENTRYLO_MASK, 0);
    assert_eq!(SW_MAPPED & (RI | XI), 0);
    // Highest frame: PFN fills bits 6..=42 exactly.
    let top = Pte::<Mips64Pte>::leaf(Frame::from_pfn(Mips64Pte::MAX_PFN), Prot::READ);
    assert_eq!(dmtc0_entrylo(top.raw(), 0), PFN_MASK | V);
    assert_eq!(PFN_MASK, ((1u64 << 43) - 1) & !0x3f);
    // Exec-only: RI set, XI clear; PROT_NONE: V clear, frame kept.
    let xo = Pte::<Mips64Pte>::leaf(f, Prot::EXEC);
    assert_eq!(xo.raw() & (RI | XI | V | D), RI | V);
    assert_eq!(xo.prot(), Prot::EXEC | Prot::USER);
    let none = Pte::<Mips64Pte>::leaf(f, Prot::NONE_USER);
    assert_eq!(dmtc0_entrylo(none.raw(), 0), 0x12345 << 6);
    assert_eq!(none.frame(), Some(f));
    // Table entries are XKPHYS cached pointers.
    assert_eq!(
        Mips64Pte::encode_table(PhysAddr::new(0x1234_5000)),
        0x8000_0000_1234_5000
    );
    assert_eq!(Mips64Pte::USER_VA_END, 1 << 42);
}

#[test]
fn pgtable_needs_flush_only_when_rights_shrink_or_frame_changes() {
    let f = Frame::from_pfn(7);
    let g = Frame::from_pfn(8);
    let p = |fr, prot| Pte::<SoftPte>::leaf(fr, prot | Prot::USER);
    let (r, rw, rx, none) = (
        Prot::READ,
        Prot::READ | Prot::WRITE,
        Prot::READ | Prot::EXEC,
        Prot::empty(),
    );
    assert!(!p(f, r).needs_flush_for(p(f, rw)), "upgrade");
    assert!(p(f, rw).needs_flush_for(p(f, r)), "write-protect");
    assert!(p(f, rx).needs_flush_for(p(f, rw)), "exec dropped");
    assert!(p(f, r).needs_flush_for(p(f, none)), "to PROT_NONE");
    assert!(!p(f, none).needs_flush_for(p(f, rw)), "from PROT_NONE");
    assert!(p(f, r).needs_flush_for(p(g, rw)), "other frame");
    assert!(!p(f, r).needs_flush_for(p(f, r)));
}

// ---- the page table ----------------------------------------------------

fn basic_install_lookup<F: PteFormat>() {
    let hf = host_frames();
    let base = hf.stats().allocated_pages;
    let pt = PageTable::<F>::new(&hf, 0).unwrap();
    assert_eq!(pt.nr_tables(), 1);
    assert_eq!(pt.root_entry(), F::encode_table(pt.root_phys()));
    let rw = Prot::READ | Prot::WRITE | Prot::USER;
    let a = leaf::<F>(&hf, rw);
    pt.install_leaf(0x40_0000, a, 0).unwrap();
    assert_eq!(pt.nr_tables(), 4);
    assert_eq!(pt.lookup(0x40_0000), a);
    assert_eq!(
        pt.lookup(0x40_0fff),
        a,
        "lookup takes any address in the page"
    );
    assert_eq!(pt.lookup(0x40_1000), Pte::NONE);
    assert_eq!(pt.lookup(0x1_0000_0000), Pte::NONE);
    // A second install on the page loses and reports the winner.
    let b = leaf::<F>(&hf, rw);
    assert_eq!(
        pt.install_leaf(0x40_0000, b, 1),
        Err(InstallError::AlreadyPresent(a))
    );
    // Neighbours share tables as far as their addresses agree.
    pt.install_leaf(0x40_1000, b, 0).unwrap();
    assert_eq!(pt.nr_tables(), 4);
    let c = leaf::<F>(&hf, rw);
    pt.install_leaf(0x40_0000 + MIB2, c, 0).unwrap();
    assert_eq!(pt.nr_tables(), 5);
    let d = leaf::<F>(&hf, rw);
    pt.install_leaf(GIB, d, 0).unwrap();
    assert_eq!(pt.nr_tables(), 7);
    // The last page below the limit is mappable; the limit is not.
    let e = leaf::<F>(&hf, rw);
    let last = F::USER_VA_END - PAGE;
    pt.install_leaf(last, e, 0).unwrap();
    assert_eq!(pt.lookup(last), e);
    assert_eq!(pt.nr_tables(), 10);
    let x = leaf::<F>(&hf, rw);
    assert_eq!(
        pt.install_leaf(F::USER_VA_END, x, 0),
        Err(InstallError::BadAddress(F::USER_VA_END))
    );
    assert_eq!(
        pt.install_leaf(0x123, x, 0),
        Err(InstallError::BadAddress(0x123))
    );
    assert_eq!(pt.lookup(F::USER_VA_END), Pte::NONE);
    assert_eq!(pt.lookup(u64::MAX), Pte::NONE);
    // SAFETY: `x` was never mapped.
    unsafe { hf.free(0, x.frame().unwrap(), 0) };
    // SAFETY: `b` lost its first install; it is mapped once (at 0x40_1000).
    destroy_all(&hf, pt, base);
}

#[test]
fn pgtable_install_and_lookup() {
    basic_install_lookup::<X86_64Pte>();
    basic_install_lookup::<Mips64Pte>();
    basic_install_lookup::<SoftPte>();
}

#[test]
fn pgtable_limits_are_checked() {
    let hf = host_frames();
    for bad in [0, 0x123, (1 << 47) + PAGE, 1 << 48] {
        assert!(matches!(
            PageTable::<X86_64Pte>::with_limit(&hf, 0, bad),
            Err(PgTableError::BadRange { .. })
        ));
    }
    assert!(PageTable::<Mips64Pte>::with_limit(&hf, 0, 1 << 43).is_err());
    let pt = PageTable::<Mips64Pte>::with_limit(&hf, 0, 1 << 40).unwrap();
    assert_eq!(pt.va_end(), 1 << 40);
    let x = leaf::<Mips64Pte>(&hf, Prot::READ);
    assert_eq!(
        pt.install_leaf(1 << 40, x, 0),
        Err(InstallError::BadAddress(1 << 40))
    );
    let fl = RecordingFlush::new();
    let mut rel = |_: Frame| panic!("nothing mapped");
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    for (s, e) in [(PAGE, 0), (1, PAGE), (0, 1 << 41)] {
        assert_eq!(
            pt.unmap_range(s, e, &mut g),
            Err(PgTableError::BadRange { start: s, end: e })
        );
        assert_eq!(
            pt.protect_range(s, e, Prot::READ, &mut g),
            Err(PgTableError::BadRange { start: s, end: e })
        );
    }
    assert_eq!(pt.unmap_range(PAGE, PAGE, &mut g), Ok(0));
    g.finish();
    assert!(fl.is_empty());
    // SAFETY: never mapped.
    unsafe { hf.free(0, x.frame().unwrap(), 0) };
    destroy_all(&hf, pt, 0);
}

#[test]
fn pgtable_rejects_memory_beyond_the_format() {
    use crate::phys::HostMemory;
    let mem = HostMemory::with_phys_base(64 << 10, 1 << 49);
    let (s, e) = mem.phys_range();
    let (dmap, cfg) = (mem.direct_map(), FrameConfig::new(1));
    // SAFETY: the memory is ours and outlives the allocator.
    let fa = unsafe { FrameAllocator::new(dmap, &[(s, e)], cfg) }.unwrap();
    assert_eq!(
        PageTable::<Mips64Pte>::new(&fa, 0).err(),
        Some(PgTableError::FramesOutOfRange { phys_end: e })
    );
    let pt = PageTable::<X86_64Pte>::new(&fa, 0).unwrap();
    let fl = RecordingFlush::new();
    let mut rel = |_: Frame| {};
    let mut g = TlbGather::new(MM, 0, &fl, &fa, &mut rel);
    pt.destroy(&mut g);
    g.finish();
}

fn unmap_releases_after_flush<F: PteFormat>() {
    let hf = host_frames();
    let base = hf.stats().allocated_pages;
    let pt = PageTable::<F>::new(&hf, 0).unwrap();
    let rw = Prot::READ | Prot::WRITE | Prot::USER;
    let mut mapped = Vec::new();
    for i in 0..6u64 {
        let prot = if i == 3 { Prot::NONE_USER } else { rw };
        let p = leaf::<F>(&hf, prot);
        pt.install_leaf(0x10_0000 + i * PAGE, p, 0).unwrap();
        mapped.push((0x10_0000 + i * PAGE, p.frame().unwrap()));
    }
    let fl = RecordingFlush::new();
    let mut released = Vec::new();
    let lookup = mapped.clone();
    let mut rel = |f: Frame| {
        let &(va, _) = lookup.iter().find(|(_, g)| *g == f).expect("unknown frame");
        assert!(
            va == 0x10_0000 + 3 * PAGE || fl.covered(MM, va),
            "{f:?} released before its TLB flush"
        );
        released.push(f);
    };
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    // Unmap pages 1..5: page 3 is PROT_NONE and needs no flush.
    assert_eq!(
        pt.unmap_range(0x10_0000 + PAGE, 0x10_0000 + 5 * PAGE, &mut g),
        Ok(4)
    );
    assert!(fl.is_empty(), "flushed before finish");
    let st = g.finish();
    assert_eq!(st.pages_released, 4);
    assert_eq!(st.range_flushes, 1);
    assert_eq!(
        fl.events(),
        [FlushEvent::Range(
            MM,
            FlushRange {
                start: 0x10_0000 + PAGE,
                end: 0x10_0000 + 5 * PAGE,
                freed_tables: false
            }
        )]
    );
    assert_eq!(released.len(), 4);
    for (va, _) in &mapped[1..5] {
        assert_eq!(pt.lookup(*va), Pte::NONE);
    }
    assert!(pt.lookup(0x10_0000).is_mapped());
    assert!(pt.lookup(0x10_0000 + 5 * PAGE).is_mapped());
    free_released(&hf, &released);

    // Only a PROT_NONE page: nothing to flush.
    let p = leaf::<F>(&hf, Prot::NONE_USER);
    pt.install_leaf(0x20_0000, p, 0).unwrap();
    let fl2 = RecordingFlush::new();
    let mut rel2 = |_: Frame| {};
    let mut g = TlbGather::new(MM, 0, &fl2, &hf, &mut rel2);
    assert_eq!(pt.unmap_range(0x20_0000, 0x20_0000 + PAGE, &mut g), Ok(1));
    assert_eq!(g.finish().pages_released, 1);
    assert!(fl2.is_empty());
    free_released(&hf, &[p.frame().unwrap()]);
    destroy_all(&hf, pt, base);
}

#[test]
fn pgtable_unmap_releases_after_flush() {
    unmap_releases_after_flush::<X86_64Pte>();
    unmap_releases_after_flush::<Mips64Pte>();
    unmap_releases_after_flush::<SoftPte>();
}

#[test]
fn pgtable_gather_flushes_early_when_its_batch_fills() {
    let hf = host_frames();
    let pt = PageTable::<SoftPte>::new(&hf, 0).unwrap();
    let n = PAGE_BATCH as u64 + 5;
    let mut frames = Vec::new();
    for i in 0..n {
        let p = leaf::<SoftPte>(&hf, Prot::READ | Prot::USER);
        pt.install_leaf(i * PAGE, p, 0).unwrap();
        frames.push(p.frame().unwrap());
    }
    let fl = RecordingFlush::with_ceiling(1 << 20);
    let mut released = Vec::new();
    let mut rel = |f: Frame| {
        let i = frames.iter().position(|&g| g == f).unwrap() as u64;
        assert!(fl.covered(MM, i * PAGE), "page {i} released unflushed");
        released.push(f);
    };
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(pt.unmap_range(0, n * PAGE, &mut g), Ok(n));
    // The first batch went out when the 65th page was gathered.
    assert_eq!(fl.len(), 1);
    let st = g.finish();
    assert_eq!(st.range_flushes, 2);
    assert_eq!(st.pages_released, n);
    assert_eq!(released.len() as u64, n);
    free_released(&hf, &released);
    destroy_all(&hf, pt, 0);
}

fn protect_and_cow<F: PteFormat>() {
    let hf = host_frames();
    let pt = PageTable::<F>::new(&hf, 0).unwrap();
    let rw = Prot::READ | Prot::WRITE | Prot::USER;
    let ro = Prot::READ | Prot::USER;
    let a = leaf::<F>(&hf, rw);
    let b = leaf::<F>(&hf, ro);
    pt.install_leaf(0x7000, a, 0).unwrap();
    pt.install_leaf(0x8000, b, 0).unwrap();

    // Downgrade: the writable page needs a flush; the read-only one changes
    // nothing.
    let fl = RecordingFlush::new();
    let mut rel = |_: Frame| panic!("protect releases nothing");
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(pt.protect_range(0x7000, 0x9000, ro, &mut g), Ok(1));
    g.finish();
    assert_eq!(pt.lookup(0x7000).prot(), F::representable(ro));
    assert!(fl.covered(MM, 0x7000) && !fl.covered(MM, 0x8000));

    // Upgrade back: no flush.
    let fl = RecordingFlush::new();
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(pt.protect_range(0x7000, 0x8000, rw, &mut g), Ok(1));
    g.finish();
    assert!(fl.is_empty());
    assert_eq!(pt.lookup(0x7000), a);

    // COW break on 0x8000: copy into a new frame, swap it in; the old frame
    // is released after the flush.
    let old = pt.lookup(0x8000);
    let new = leaf::<F>(&hf, rw);
    let fl = RecordingFlush::new();
    let mut released = Vec::new();
    let mut rel2 = |f: Frame| {
        assert!(fl.covered(MM, 0x8000));
        released.push(f);
    };
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel2);
    // A stale `old` loses.
    assert_eq!(
        pt.compare_exchange_leaf(0x8000, old.with_prot(rw), new, &mut g),
        Err(CmpxchgError::Changed(old))
    );
    pt.compare_exchange_leaf(0x8000, old, new, &mut g).unwrap();
    assert_eq!(pt.lookup(0x8000), new);
    // Upgrading an exclusive page in place: no flush, nothing released.
    pt.compare_exchange_leaf(0x7000, a, a.with_prot(rw | Prot::EXEC), &mut g)
        .unwrap();
    assert_eq!(
        pt.compare_exchange_leaf(0x9000, a, new, &mut g),
        Err(CmpxchgError::Changed(Pte::NONE))
    );
    assert_eq!(
        pt.compare_exchange_leaf(1 << 47 << 1, a, new, &mut g),
        Err(CmpxchgError::BadAddress(1 << 48))
    );
    let st = g.finish();
    assert_eq!(st.pages_released, 1);
    assert_eq!(released, [b.frame().unwrap()]);
    assert_eq!(fl.len(), 1);
    free_released(&hf, &released);
    destroy_all(&hf, pt, 0);
}

#[test]
fn pgtable_protect_and_copy_on_write() {
    protect_and_cow::<X86_64Pte>();
    protect_and_cow::<Mips64Pte>();
    protect_and_cow::<SoftPte>();
}

fn fork_copy<F: PteFormat>() {
    let hf = host_frames();
    let parent = PageTable::<F>::new(&hf, 0).unwrap();
    let rw = Prot::READ | Prot::WRITE | Prot::USER;
    let ro = Prot::READ | Prot::USER;
    let pages = [
        (0x1000, rw),
        (0x2000, ro),
        (0x20_0000, rw),
        (GIB + 0x3000, Prot::NONE_USER),
    ];
    for (va, prot) in pages {
        parent.install_leaf(va, leaf::<F>(&hf, prot), 0).unwrap();
    }
    let fl = RecordingFlush::with_ceiling(1 << 20);
    let mut rel = |_: Frame| panic!("fork releases nothing");
    let mut copied = Vec::new();
    let mut on_copy = |va: u64, f: Frame| {
        hf.meta(f).unwrap().get_ref();
        copied.push((va, f));
    };

    // A shared mapping is copied as is: nothing write-protected, no flush.
    let shared = PageTable::<F>::new(&hf, 0).unwrap();
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(
        parent.copy_range_for_fork(&shared, 0, 2 * GIB, false, &mut g, &mut on_copy),
        Ok(4)
    );
    g.finish();
    assert!(fl.is_empty());
    for (va, _) in pages {
        assert_eq!(shared.lookup(va), parent.lookup(va));
    }

    // A private one: writable pages write-protected in both, and flushed in
    // the parent.
    let child = PageTable::<F>::new(&hf, 0).unwrap();
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(
        parent.copy_range_for_fork(&child, 0, 2 * GIB, true, &mut g, &mut on_copy),
        Ok(4)
    );
    // Copying onto existing mappings is refused.
    assert_eq!(
        parent.copy_range_for_fork(&child, 0x1000, 0x2000, true, &mut g, &mut on_copy),
        Err(PgTableError::Occupied(0x1000))
    );
    g.finish();
    // One flush, of the span of the write-protected pages.
    assert_eq!(
        fl.events(),
        [FlushEvent::Range(
            MM,
            FlushRange {
                start: 0x1000,
                end: 0x20_1000,
                freed_tables: false
            }
        )]
    );
    assert_eq!(copied.len(), 8);
    for (va, prot) in pages {
        let p = parent.lookup(va);
        let c = child.lookup(va);
        assert_eq!(p, c, "{va:#x}");
        assert_eq!(p.prot(), F::representable(prot).difference(Prot::WRITE));
        assert_eq!(shared.lookup(va).prot(), F::representable(prot));
        assert!(copied.contains(&(va, p.frame().unwrap())));
        assert!(prot != rw || fl.covered(MM, va), "{va:#x} not flushed");
        assert_eq!(hf.meta(p.frame().unwrap()).unwrap().ref_count(), 3);
    }
    destroy_all(
        &hf,
        child,
        4 + shared.nr_tables() as u64 + parent.nr_tables() as u64,
    );
    destroy_all(&hf, shared, 4 + parent.nr_tables() as u64);
    destroy_all(&hf, parent, 0);
}

#[test]
fn pgtable_fork_copy() {
    fork_copy::<X86_64Pte>();
    fork_copy::<Mips64Pte>();
    fork_copy::<SoftPte>();
}

fn free_tables_floor_ceiling<F: PteFormat>() {
    let hf = host_frames();
    let base = hf.stats().allocated_pages;
    let mut pt = PageTable::<F>::new(&hf, 0).unwrap();
    let rw = Prot::READ | Prot::WRITE | Prot::USER;
    let (a, b, c) = (0x40_0000, 0x60_0000, GIB);
    for va in [a, b, c] {
        pt.install_leaf(va, leaf::<F>(&hf, rw), 0).unwrap();
    }
    // root, level 3, level 2 for [0, 1G) with leaf tables for a and b,
    // level 2 for [1G, 2G) with c's leaf table.
    assert_eq!(pt.nr_tables(), 7);
    let fl = RecordingFlush::with_ceiling(1 << 30);
    let mut released = Vec::new();
    let mut rel = |f: Frame| released.push(f);

    // munmap of b's VMA, between a's VMA (ending at a + 4K) and c's: b's
    // leaf table goes, the level-2 table it shares with a stays.
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(pt.unmap_range(b, b + PAGE, &mut g), Ok(1));
    // SAFETY: no other operation runs on this page table.
    let bad = unsafe { pt.free_tables(b, b + PAGE, b + PAGE, c, &mut g) };
    assert_eq!(
        bad,
        Err(PgTableError::BadRange {
            start: b + PAGE,
            end: c
        })
    );
    // SAFETY: as above.
    let freed = unsafe { pt.free_tables(b, b + PAGE, a + PAGE, c, &mut g) };
    assert_eq!(freed, Ok(1));
    let st = g.finish();
    assert_eq!((st.tables_freed, st.pages_released), (1, 1));
    assert_eq!(pt.nr_tables(), 6);
    assert!(fl.events().contains(&FlushEvent::Range(
        MM,
        FlushRange {
            start: b,
            end: b + MIB2,
            freed_tables: true
        }
    )));
    assert!(pt.lookup(a).is_mapped() && pt.lookup(c).is_mapped());
    let mut tables = Vec::new();
    pt.for_each_table(&mut |level, base| tables.push((level, base)));
    assert!(!tables.contains(&(1, b)) && tables.contains(&(1, a)));
    assert_eq!(tables.len(), 6);

    // munmap of a's VMA, now with nothing below it and c above: the whole
    // level-2 table for [0, 1G) goes with a's leaf table.
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(pt.unmap_range(a, a + PAGE, &mut g), Ok(1));
    // SAFETY: as above.
    assert_eq!(unsafe { pt.free_tables(a, a + PAGE, 0, c, &mut g) }, Ok(2));
    g.finish();
    assert_eq!(pt.nr_tables(), 4);
    // Tables come back when needed.
    let d = leaf::<F>(&hf, rw);
    pt.install_leaf(b, d, 0).unwrap();
    assert_eq!(pt.nr_tables(), 6);
    assert_eq!(pt.lookup(b), d);

    // The last VMAs go: everything but the root.
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    assert_eq!(pt.unmap_range(0, 2 * GIB, &mut g), Ok(2));
    // SAFETY: as above.
    let freed = unsafe { pt.free_tables(0, 2 * GIB, 0, F::USER_VA_END, &mut g) };
    assert_eq!(freed, Ok(5));
    g.finish();
    assert_eq!(pt.nr_tables(), 1);
    free_released(&hf, &released);
    hf.drain_all();
    assert_eq!(hf.stats().allocated_pages, base + 1);
    destroy_all(&hf, pt, base);
}

#[test]
fn pgtable_free_tables_respects_floor_and_ceiling() {
    free_tables_floor_ceiling::<X86_64Pte>();
    free_tables_floor_ceiling::<Mips64Pte>();
    free_tables_floor_ceiling::<SoftPte>();
}

/// The MIPS XTLB refill handler of `mips64`'s documentation, step by step:
/// XKPHYS pointers used as they are, the same shifts and masks, the even and
/// odd PTEs loaded verbatim.
fn mips_refill(pt: &PageTable<'_, Mips64Pte>, hf: &HostFrames, badvaddr: u64) -> (u64, u64) {
    let ld = |addr: u64| -> u64 {
        assert_eq!(
            addr >> 49,
            mips64::XKPHYS_CACHED >> 49,
            "{addr:#x} not XKPHYS"
        );
        let pa = PhysAddr::new(addr & ((1 << 49) - 1));
        let p = hf.direct_map().to_virt(pa).expect("pointer outside RAM");
        // SAFETY: `p` is an 8-byte-aligned entry of a live table in `hf`.
        unsafe { (*p.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire) }
    };
    assert_eq!(badvaddr >> 62, 0, "not xuseg");
    let mut k1 = pt.root_entry();
    for shift in [36, 27, 18] {
        k1 = ld(k1 + ((badvaddr >> shift) & 0xff8));
        if k1 == 0 {
            return (0, 0);
        }
    }
    let k1 = k1 + ((badvaddr >> 9) & 0xff0);
    (ld(k1), ld(k1 + 8))
}

#[test]
fn pgtable_mips_refill_handler_loads_entrylo_pairs() {
    use mips64::*;
    let hf = host_frames();
    let pt = PageTable::<Mips64Pte>::new(&hf, 0).unwrap();
    let top = Mips64Pte::USER_VA_END - 2 * PAGE;
    let maps = [
        (0x1_2000, Prot::READ | Prot::WRITE),
        (0x1_3000, Prot::READ),
        (0x4_5000, Prot::READ | Prot::EXEC),
        (0x7_8000, Prot::empty()),
        (top, Prot::READ),
        (top + PAGE, Prot::READ | Prot::WRITE),
    ];
    for (va, prot) in maps {
        pt.install_leaf(va, leaf::<Mips64Pte>(&hf, prot | Prot::USER), 0)
            .unwrap();
    }
    for va in [
        0x1_2000,
        0x1_3abc,
        0x4_4000,
        0x4_5008,
        0x7_8000,
        0x7_9000,
        0x40_0000,
        0x1_0000_0000,
        top + 0x1234,
    ] {
        let even = va & !0x1fff;
        let (lo0, lo1) = mips_refill(&pt, &hf, va);
        assert_eq!(lo0, pt.lookup(even).raw(), "{va:#x}");
        assert_eq!(lo1, pt.lookup(even + PAGE).raw(), "{va:#x}");
        for (lo, page) in [(lo0, even), (lo1, even + PAGE)] {
            let hw = dmtc0_entrylo(lo, 0);
            let pte = pt.lookup(page);
            assert_eq!(hw & V != 0, pte.is_accessible(), "{page:#x}");
            assert_eq!(hw & D != 0, pte.prot().contains(Prot::WRITE), "{page:#x}");
            assert_eq!(hw & G, 0);
            if let Some(f) = pte.frame() {
                assert_eq!((hw & PFN_MASK) >> PFN_SHIFT, f.pfn());
            } else {
                assert_eq!(hw, 0, "{page:#x}: empty PTE must refill as invalid");
            }
        }
    }
    destroy_all(&hf, pt, 0);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "TlbGather dropped without finish()")]
fn pgtable_unfinished_gather_panics() {
    let hf = host_frames();
    let pt = PageTable::<SoftPte>::new(&hf, 0).unwrap();
    pt.install_leaf(0, leaf::<SoftPte>(&hf, Prot::READ | Prot::USER), 0)
        .unwrap();
    let fl = RecordingFlush::new();
    let mut rel = |_: Frame| {};
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    pt.unmap_range(0, PAGE, &mut g).unwrap();
    drop(g);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "PageTable dropped without destroy()")]
fn pgtable_undestroyed_table_panics() {
    let hf = host_frames();
    let pt = PageTable::<SoftPte>::new(&hf, 0).unwrap();
    drop(pt);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "is still mapped")]
fn pgtable_free_tables_checks_leaves_are_gone() {
    let hf = host_frames();
    let pt = PageTable::<SoftPte>::new(&hf, 0).unwrap();
    pt.install_leaf(0, leaf::<SoftPte>(&hf, Prot::READ | Prot::USER), 0)
        .unwrap();
    let fl = RecordingFlush::new();
    let mut rel = |_: Frame| {};
    let mut g = TlbGather::new(MM, 0, &fl, &hf, &mut rel);
    // SAFETY: no other operation runs on this page table.
    let _ = unsafe { pt.free_tables(0, PAGE, 0, GIB, &mut g) };
}

#[test]
fn pgtable_concurrent_installs_small() {
    // Two threads race for the same fresh tables and the same pages (the
    // full-size version is `mm/tests/pgtable_concurrent.rs`).
    let hf = host_frames();
    let pt = PageTable::<X86_64Pte>::new(&hf, 0).unwrap();
    let rounds = if cfg!(miri) { 2 } else { 30 };
    for r in 0..rounds {
        let va = (r + 1) * GIB;
        let wins: Vec<u32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2usize)
                .map(|cpu| {
                    let (pt, hf) = (&pt, &hf);
                    s.spawn(move || {
                        let mut won = 0;
                        for i in 0..4 {
                            let p = leaf::<X86_64Pte>(hf, Prot::READ | Prot::USER);
                            match pt.install_leaf(va + i * PAGE, p, cpu) {
                                Ok(()) => won += 1,
                                Err(InstallError::AlreadyPresent(w)) => {
                                    assert!(w.is_mapped());
                                    // SAFETY: ours, never mapped.
                                    unsafe { hf.free(cpu, p.frame().unwrap(), 0) };
                                }
                                Err(e) => panic!("{e:?}"),
                            }
                        }
                        won
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(wins.iter().sum::<u32>(), 4);
        assert_eq!(pt.nr_tables() as u64, 2 + 2 * (r + 1));
    }
    hf.drain_all();
    assert_eq!(
        hf.stats().allocated_pages,
        pt.nr_tables() as u64 + 4 * rounds,
        "a losing table was not freed"
    );
    destroy_all(&hf, pt, 0);
}

/// The root entries at and above the limit belong to the arch layer (x86_64
/// puts the kernel's upper-half PML4 entries there): teardown and the table
/// walk must neither follow nor free them.
#[test]
fn pgtable_root_entries_above_the_limit_are_left_alone() {
    let hf = host_frames();
    let baseline = hf.stats().allocated_pages;
    let mut pt = PageTable::<X86_64Pte>::new(&hf, 0).unwrap();
    let root = hf.frame_ptr(Frame::containing(pt.root_phys())).unwrap();
    // What the kernel half looks like to this module: table entries
    // pointing at memory it does not own (here, a bogus frame number the
    // allocator never handed out; following or freeing it would trip the
    // allocator's range assert or corrupt it).
    let foreign = X86_64Pte::encode_table(PhysAddr::new(0x7777_7000));
    let entries = root.as_ptr().cast::<u64>();
    for i in 256..512 {
        // SAFETY: the root is a 4 KiB table this test's page table owns; entries 256.. are beyond its 2^47 limit.
        unsafe { entries.add(i).write(foreign) };
    }
    let p = leaf::<X86_64Pte>(&hf, Prot::READ | Prot::USER);
    pt.install_leaf(0x40_0000, p, 0).unwrap();
    let mut levels = Vec::new();
    pt.for_each_table(&mut |level, base| levels.push((level, base)));
    assert_eq!(
        levels,
        vec![(4, 0), (3, 0), (2, 0), (1, 0x40_0000 & !(MIB2 - 1))]
    );
    destroy_all(&hf, pt, baseline);
    // SAFETY: the root frame went back to the allocator, but its memory is still the host buffer; the test only checks its upper half was not rewritten by the teardown.
    let kept = unsafe { entries.add(300).read() };
    assert_eq!(kept, foreign);
}
