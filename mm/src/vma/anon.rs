//! anon_vmas and anon_vma chains: how anonymous memory remembers which VMAs
//! may map its pages, across splits and forks (Linux's `mm/rmap.c` model).
//!
//! - An [`AnonVma`] stands for the anonymous pages first faulted in one VMA.
//!   Its chain list holds one [`Avc`] per VMA that may map such pages. The
//!   anon_vmas of one fork family form a tree; every one points at the
//!   tree's *root*, whose lock protects the chain lists of the whole tree.
//! - An [`Avc`] (anon_vma chain entry) links one VMA with one anon_vma. It
//!   sits on two intrusive lists at once: the VMA's `chains` (in
//!   [`VmaStable`](super::VmaStable)) and the anon_vma's `avcs`.
//! - Forking a VMA gives the child an Avc to each of the parent's
//!   anon_vmas (it maps the same pages, copied on write) plus a new
//!   anon_vma of its own for pages it copies; splitting a VMA gives the new
//!   part an Avc to each anon_vma of the old one.
//! - Unmapping a VMA unlinks all its Avcs; an anon_vma whose list becomes
//!   empty drops its reference and is freed when nothing else refers to it
//!   (children hold a reference on their root).
//!
//! The VMA's `chains` list head lives in the VMA's constructor-owned part:
//! it is the field the reference design's fork overwrote with a whole-VMA
//! copy (and then `unlink_anon_vmas` walked another VMA's list). Here fork
//! duplicates only [`VmaPayload`](super::VmaPayload), so that cannot
//! happen; [`check_vma_chains`] verifies the lists in tests.
//!
//! # Locking
//!
//! Lock order: mmap lock → the address space's anon lock (protects its
//! VMAs' `chains` lists and `anon_vma` pointers) → the anon_vma root lock
//! (protects every `avcs` list of that anon_vma tree). All functions here
//! are `unsafe` with the contract that the caller holds the anon lock of
//! the address space owning each VMA passed in, and has pinned the VMAs.

use core::ptr::NonNull;

use intrusive_collections::{intrusive_adapter, LinkedListAtomicLink, UnsafeRef};

use super::VmaRef;
use crate::cpu::CpuId;
use crate::slab::{Ctor, Slab, SlabError, SlabObject, SlabPtr, StableList};
use crate::sync::{AtomicPtr, AtomicU32, Ordering, SpinLock};

/// An anonymous-memory object; opaque, reached through [`AnonRef`].
pub enum AnonVma {}

/// The slab object type of anon_vmas.
pub enum AnonVmaObj {}

pub struct AnonVmaStable {
    /// Used on the root only: protects the `avcs` of the whole tree.
    lock: SpinLock<()>,
    avcs: StableList<SameAnonAdapter>,
}

pub struct AnonVmaPayload {
    root: AtomicPtr<AnonVma>,
    parent: AtomicPtr<AnonVma>,
    /// 1 while `avcs` is non-empty, +1 per descendant whose root this is.
    refcount: AtomicU32,
}

impl SlabObject for AnonVmaObj {
    type Stable = AnonVmaStable;
    type Payload = AnonVmaPayload;

    fn construct(ctor: &Ctor<'_>) -> AnonVmaStable {
        AnonVmaStable {
            lock: SpinLock::new(()),
            avcs: StableList::new(ctor, SameAnonAdapter::new()),
        }
    }
}

/// A pointer to an anon_vma.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AnonRef(SlabPtr<AnonVmaObj>);

impl AnonRef {
    pub fn as_ptr(self) -> *mut AnonVma {
        self.0.as_raw().as_ptr().cast()
    }

    /// # Safety
    /// `p` came from [`AnonRef::as_ptr`] and is non-null.
    pub unsafe fn from_ptr(p: *mut AnonVma) -> AnonRef {
        // SAFETY: forwarded contract.
        AnonRef(unsafe { SlabPtr::from_raw(NonNull::new_unchecked(p.cast())) })
    }

    fn stable<'a>(self) -> &'a AnonVmaStable {
        // SAFETY: anon_vmas are freed only when unreferenced (refcount), and every caller reaches this one through a live reference: a VMA's Avc, a child's root pointer, or its own allocation.
        unsafe { self.0.stable() }
    }

    fn payload<'a>(self) -> &'a AnonVmaPayload {
        // SAFETY: as for `stable`; fields are atomics.
        unsafe { self.0.payload() }
    }

    pub fn root(self) -> AnonRef {
        // SAFETY: set at creation to a live anon_vma (itself or a referenced ancestor), never null once published.
        unsafe { AnonRef::from_ptr(self.payload().root.load(Ordering::Relaxed)) }
    }

    /// The identity of the anon_vma this one was forked from (null for a
    /// root). Only for comparisons: a child pins its root, not its parent,
    /// so the parent may be gone.
    pub fn parent_ptr(self) -> *mut AnonVma {
        self.payload().parent.load(Ordering::Relaxed)
    }

    /// Number of Avcs (VMAs) on this anon_vma's list, for tests.
    pub fn nr_avcs(self) -> usize {
        let root = self.root();
        let _g = root.stable().lock.lock();
        // SAFETY: the root lock protects every `avcs` list of the tree.
        unsafe { self.stable().avcs.iter() }.count()
    }
}

/// The slab object type of anon_vma chain entries.
pub enum AvcObj {}

/// An anon_vma chain entry (Linux's `struct anon_vma_chain`).
pub struct Avc {
    vma: VmaRef,
    anon: AnonRef,
    /// Set right after allocation: how to free this entry from a list link.
    this: Option<SlabPtr<AvcObj>>,
    same_vma: LinkedListAtomicLink,
    same_anon: LinkedListAtomicLink,
}

impl SlabObject for AvcObj {
    type Stable = ();
    type Payload = Avc;

    fn construct(_: &Ctor<'_>) {}
}

intrusive_adapter!(pub SameVmaAdapter = UnsafeRef<Avc>: Avc { same_vma => LinkedListAtomicLink });
intrusive_adapter!(pub SameAnonAdapter = UnsafeRef<Avc>: Avc { same_anon => LinkedListAtomicLink });

/// The slabs anon_vma bookkeeping allocates from.
pub struct AnonSlabs<'a> {
    pub anon_vmas: Slab<'a, AnonVmaObj>,
    pub avcs: Slab<'a, AvcObj>,
}

impl AnonSlabs<'_> {
    fn new_avc(&self, cpu: CpuId, vma: VmaRef, anon: AnonRef) -> Result<UnsafeRef<Avc>, SlabError> {
        let owned = self.avcs.alloc(
            cpu,
            Avc {
                vma,
                anon,
                this: None,
                same_vma: LinkedListAtomicLink::new(),
                same_anon: LinkedListAtomicLink::new(),
            },
        )?;
        let p = owned.publish();
        // SAFETY: just allocated and published nowhere yet: ours alone.
        unsafe { p.payload_mut() }.this = Some(p);
        // SAFETY: the payload lives until `free_avc` frees it, after it is unlinked from both lists. The pointer has the slot's provenance (not that of a reference which later accesses through the slot pointer would invalidate).
        Ok(unsafe { UnsafeRef::from_raw(p.payload_raw().as_ptr()) })
    }

    /// # Safety
    /// `avc` is on no list and not used afterwards.
    unsafe fn free_avc(&self, cpu: CpuId, avc: UnsafeRef<Avc>) {
        debug_assert!(!avc.same_vma.is_linked() && !avc.same_anon.is_linked());
        let this = avc.this.expect("Avc without its slab pointer");
        // SAFETY: allocated by `new_avc`, now unlinked and unused.
        unsafe { self.avcs.free_ptr(cpu, this) };
    }

    fn new_anon_vma(&self, cpu: CpuId, parent: Option<AnonRef>) -> Result<AnonRef, SlabError> {
        let owned = self.anon_vmas.alloc(
            cpu,
            AnonVmaPayload {
                root: AtomicPtr::new(core::ptr::null_mut()),
                parent: AtomicPtr::new(parent.map_or(core::ptr::null_mut(), AnonRef::as_ptr)),
                refcount: AtomicU32::new(1),
            },
        )?;
        let me = AnonRef(owned.publish());
        let root = match parent {
            Some(p) => {
                let root = p.root();
                // The child keeps its root alive.
                root.payload().refcount.fetch_add(1, Ordering::Relaxed);
                root
            }
            None => me,
        };
        me.payload().root.store(root.as_ptr(), Ordering::Relaxed);
        Ok(me)
    }

    fn put_anon_vma(&self, cpu: CpuId, mut av: AnonRef) {
        loop {
            // AcqRel: the last put sees every unlink that preceded the
            // others' puts before it frees.
            if av.payload().refcount.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            let root = av.root();
            // SAFETY: the count reached zero: no Avc and no descendant refers to it any more.
            unsafe { self.anon_vmas.free_ptr(cpu, av.0) };
            if root == av {
                return;
            }
            av = root;
        }
    }

    /// Links `vma` and `anon` through a new Avc.
    ///
    /// # Safety
    /// See the module docs (anon lock of `vma`'s mm held, `vma` pinned);
    /// `anon` is referenced (it is `vma`'s own, or on a chain of a VMA the
    /// caller pinned).
    unsafe fn link(&self, cpu: CpuId, vma: VmaRef, anon: AnonRef) -> Result<(), SlabError> {
        let avc = self.new_avc(cpu, vma, anon)?;
        let root = anon.root();
        // SAFETY: the caller pinned `vma` and holds its mm's anon lock, which protects `chains`.
        unsafe { vma.stable().chains.push_back(avc.clone()) };
        let _g = root.stable().lock.lock();
        // SAFETY: the root lock protects the tree's `avcs` lists.
        unsafe { anon.stable().avcs.push_back(avc) };
        Ok(())
    }

    /// Gives `vma` an anon_vma if it has none (Linux's `__anon_vma_prepare`),
    /// before its first anonymous page is mapped.
    ///
    /// # Safety
    /// See the module docs.
    pub unsafe fn prepare(&self, cpu: CpuId, vma: VmaRef) -> Result<AnonRef, SlabError> {
        // SAFETY: pinned by the caller.
        let p = unsafe { vma.payload() };
        if let Some(av) = NonNull::new(p.anon_vma()) {
            // SAFETY: non-null anon_vma pointers come from `as_ptr`.
            return Ok(unsafe { AnonRef::from_ptr(av.as_ptr()) });
        }
        let av = self.new_anon_vma(cpu, None)?;
        // SAFETY: forwarded contract; `av` is ours.
        if let Err(e) = unsafe { self.link(cpu, vma, av) } {
            self.put_anon_vma(cpu, av);
            return Err(e);
        }
        p.set_anon_vma(av.as_ptr());
        Ok(av)
    }

    /// Gives `dst` an Avc to every anon_vma of `src` (Linux's
    /// `anon_vma_clone`), for a VMA split off `src` or forked from it. On
    /// failure `dst` is left with no chains.
    ///
    /// # Safety
    /// See the module docs, for both VMAs (they may belong to different
    /// address spaces: the caller holds both anon locks).
    pub unsafe fn clone_chains(
        &self,
        cpu: CpuId,
        dst: VmaRef,
        src: VmaRef,
    ) -> Result<(), SlabError> {
        // SAFETY: `src` pinned, its anon lock held: its list is stable.
        for avc in unsafe { src.stable().chains.iter() } {
            // SAFETY: forwarded; `avc.anon` is referenced through `src`.
            if let Err(e) = unsafe { self.link(cpu, dst, avc.anon) } {
                // SAFETY: forwarded.
                unsafe { self.unlink_all(cpu, dst) };
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sets up the chains of `child`, a fork's duplicate of `parent`
    /// (Linux's `anon_vma_fork`): an Avc to each of the parent's anon_vmas,
    /// and a new anon_vma of the child's own in the parent's tree.
    ///
    /// # Safety
    /// See the module docs, for both VMAs. `child`'s payload is a copy of
    /// `parent`'s, and `child` has no chains yet.
    pub unsafe fn fork(&self, cpu: CpuId, child: VmaRef, parent: VmaRef) -> Result<(), SlabError> {
        // SAFETY: pinned by the caller.
        let (cp, pp) = unsafe { (child.payload(), parent.payload()) };
        cp.set_anon_vma(core::ptr::null_mut());
        let Some(pav) = NonNull::new(pp.anon_vma()) else {
            return Ok(());
        };
        // SAFETY: non-null anon_vma pointers come from `as_ptr`.
        let pav = unsafe { AnonRef::from_ptr(pav.as_ptr()) };
        // SAFETY: forwarded.
        unsafe { self.clone_chains(cpu, child, parent)? };
        let av = match self.new_anon_vma(cpu, Some(pav)) {
            Ok(av) => av,
            Err(e) => {
                // SAFETY: forwarded.
                unsafe { self.unlink_all(cpu, child) };
                return Err(e);
            }
        };
        // SAFETY: forwarded.
        if let Err(e) = unsafe { self.link(cpu, child, av) } {
            self.put_anon_vma(cpu, av);
            // SAFETY: forwarded.
            unsafe { self.unlink_all(cpu, child) };
            return Err(e);
        }
        cp.set_anon_vma(av.as_ptr());
        Ok(())
    }

    /// Unlinks every Avc of `vma` and drops the anon_vmas left with none
    /// (Linux's `unlink_anon_vmas`): the path the Octeon board crashed in.
    ///
    /// # Safety
    /// See the module docs. `vma` is detached or being torn down.
    pub unsafe fn unlink_all(&self, cpu: CpuId, vma: VmaRef) {
        // SAFETY: pinned, anon lock held.
        let chains = unsafe { &vma.stable().chains };
        // SAFETY: as above.
        while let Some(avc) = unsafe { chains.pop_front() } {
            debug_assert!(avc.vma == vma, "an Avc on the wrong VMA's chain list");
            let anon = avc.anon;
            let root = anon.root();
            let now_empty = {
                let _g = root.stable().lock.lock();
                // SAFETY: the root lock protects the tree's `avcs` lists, and `avc` is on `anon`'s list (it was linked by `link`).
                unsafe {
                    anon.stable().avcs.remove(&*avc as *const Avc);
                    anon.stable().avcs.is_empty()
                }
            };
            // SAFETY: unlinked from both lists.
            unsafe { self.free_avc(cpu, avc) };
            if now_empty {
                self.put_anon_vma(cpu, anon);
            }
        }
        // SAFETY: pinned.
        unsafe { vma.payload() }.set_anon_vma(core::ptr::null_mut());
    }
}

/// Checks the chain lists of `vma`: every Avc on them names `vma`, is on
/// its anon_vma's list, and `vma`'s own anon_vma is among them. Returns the
/// number of chains. For tests and debug assertions.
///
/// # Safety
/// See the module docs.
pub unsafe fn check_vma_chains(vma: VmaRef) -> Result<usize, &'static str> {
    let mut n = 0;
    let mut own_found = false;
    // SAFETY: pinned, anon lock held.
    let own = unsafe { vma.payload() }.anon_vma();
    // SAFETY: as above.
    for avc in unsafe { vma.stable().chains.iter() } {
        if avc.vma != vma {
            return Err("Avc names another VMA");
        }
        let root = avc.anon.root();
        let _g = root.stable().lock.lock();
        // SAFETY: the root lock protects the list.
        let on_list = unsafe { avc.anon.stable().avcs.iter() }.any(|a| core::ptr::eq(a, &*avc));
        if !on_list {
            return Err("Avc missing from its anon_vma's list");
        }
        own_found |= avc.anon.as_ptr() == own;
        n += 1;
    }
    if !own.is_null() && !own_found {
        return Err("VMA's anon_vma has no Avc");
    }
    Ok(n)
}
