//! Object types of the slab: the [`SlabObject`] split, the constructor
//! token, and the two ways of holding an object ([`Owned`], [`SlabPtr`]).

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use super::Slab;
use crate::cpu::CpuId;
use crate::rcu::RcuReadGuard;

/// A type of object a [`Slab`] caches, split in two parts.
///
/// * [`Stable`](Self::Stable) is built by [`construct`](Self::construct)
///   once per slot, when the slab page holding the slot is created, and
///   survives every free and reallocation of the slot until the page goes
///   back to the frame allocator. It holds the state whose identity must
///   outlive one allocation: lock and reference-count words, list heads,
///   the attached flag, lock sequence numbers. After construction it is
///   reachable only through `&Self::Stable`; it changes only through its own
///   interior-mutable API (atomics, [`StableList`](super::StableList)).
/// * [`Payload`](Self::Payload) is the per-allocation part: moved in by
///   [`Slab::alloc`], cloned by [`Slab::dup`], dropped by the free.
///
/// No slab operation writes the stable part of a live slot, and no safe
/// code can: see the module documentation.
pub trait SlabObject {
    /// The constructor-owned part. `Send` because pages are torn down on
    /// whichever CPU releases them, `Sync` because RCU readers on any CPU
    /// may look at it.
    type Stable: Send + Sync;
    /// The per-allocation part.
    type Payload;

    /// Builds the stable part of one slot. Runs once per slot, when its
    /// slab page is created — not per allocation.
    fn construct(ctor: &Ctor<'_>) -> Self::Stable;
}

/// Proof that code runs inside [`SlabObject::construct`].
///
/// Only the slab creates one, and only while constructing a slot; the
/// borrow passed to `construct` cannot outlive the call. Stable-part
/// building blocks that must never be re-created in a live object, such as
/// [`StableList`](super::StableList), demand it, so a fresh one cannot be
/// made anywhere else.
pub struct Ctor<'a> {
    _invariant: PhantomData<fn(&'a ()) -> &'a ()>,
    _not_send: PhantomData<*mut ()>,
}

impl Ctor<'_> {
    pub(super) fn new() -> Self {
        Ctor {
            _invariant: PhantomData,
            _not_send: PhantomData,
        }
    }
}

/// One object slot, at a fixed place in a slab page for the page's life.
#[repr(C)]
pub(super) struct Slot<T: SlabObject> {
    pub(super) stable: T::Stable,
    pub(super) body: Body<T::Payload>,
}

/// The payload of an allocated slot, or the free-list link of a free one.
/// Readers that have not pinned the object never look here (see the module
/// documentation), so the link may overwrite a freed payload.
#[repr(C)]
pub(super) union Body<P> {
    pub(super) payload: ManuallyDrop<P>,
    pub(super) next_free: *mut u8,
}

impl<T: SlabObject> Slot<T> {
    #[inline(always)]
    pub(super) fn stable_ptr(this: NonNull<Self>) -> *mut T::Stable {
        // SAFETY: `this` points to a slot inside a live slab page; taking a field address creates no reference.
        unsafe { ptr::addr_of_mut!((*this.as_ptr()).stable) }
    }

    #[inline(always)]
    pub(super) fn payload_ptr(this: NonNull<Self>) -> *mut T::Payload {
        // SAFETY: as above. `ManuallyDrop<P>` is `repr(transparent)`.
        unsafe { ptr::addr_of_mut!((*this.as_ptr()).body.payload).cast::<T::Payload>() }
    }

    #[inline(always)]
    pub(super) fn next_free_ptr(this: NonNull<Self>) -> *mut *mut u8 {
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*this.as_ptr()).body.next_free) }
    }
}

/// An object exclusively owned by its allocator: not yet published.
///
/// Gives `&Stable` and both `&Payload` and `&mut Payload`. It is not
/// `Clone` and not `Copy`, and it dereferences to nothing, so the object
/// can be neither duplicated wholesale nor overwritten. Dropping it frees
/// the object to the CPU cache it was allocated from; [`Slab::free`] frees
/// it to a given CPU's cache. [`Owned::publish`] turns it into a
/// [`SlabPtr`] for sharing, after which the payload is no longer
/// exclusively ours.
#[must_use = "dropping an Owned frees the object"]
pub struct Owned<'s, T: SlabObject> {
    pub(super) slot: NonNull<Slot<T>>,
    pub(super) slab: &'s Slab<'s, T>,
    pub(super) cpu: CpuId,
}

// SAFETY: an `Owned` is the unique handle on its payload, so it may move
// to another thread when the payload may; the stable part is `Sync`, and the
// slab it frees into is `Sync` under the same bound.
unsafe impl<T: SlabObject> Send for Owned<'_, T> where T::Payload: Send {}
// SAFETY: `&Owned` gives `&Stable` (Sync) and `&Payload`.
unsafe impl<T: SlabObject> Sync for Owned<'_, T> where T::Payload: Send + Sync {}

impl<'s, T: SlabObject> Owned<'s, T> {
    /// The constructor-owned part. Shared access only, ever.
    #[inline]
    pub fn stable(&self) -> &T::Stable {
        // SAFETY: the slot is allocated to us, so its page is alive, and its stable part was initialised by the constructor.
        unsafe { &*Slot::stable_ptr(self.slot) }
    }

    /// The payload.
    #[inline]
    pub fn payload(&self) -> &T::Payload {
        // SAFETY: allocated slot, payload initialised by `alloc`; we own it and no `SlabPtr` to it exists yet.
        unsafe { &*Slot::payload_ptr(self.slot) }
    }

    /// The payload, mutably: the object is exclusively ours.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut T::Payload {
        // SAFETY: as for `payload`, and `&mut self` makes this the only reference.
        unsafe { &mut *Slot::payload_ptr(self.slot) }
    }

    /// The CPU cache a plain drop frees the object to.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }

    /// Frees the object and hands its payload back (moved out, not
    /// dropped).
    pub fn into_payload(self) -> T::Payload {
        // SAFETY: we own the slot and its initialised payload; after the read the slot is recycled without dropping the payload again.
        let payload = unsafe { ptr::read(Slot::payload_ptr(self.slot)) };
        let (slab, cpu, slot) = (self.slab, self.cpu, self.slot);
        core::mem::forget(self);
        // SAFETY: the payload was moved out; the slot is ours.
        unsafe { slab.recycle_slot(cpu, slot) };
        payload
    }

    /// Gives up exclusive ownership: the object may now be reachable by
    /// others (stored in a tree, linked on a list), so from here on its
    /// payload is only reached through [`SlabPtr`]'s unsafe accessors, whose
    /// contracts say who may write it. The object is not freed.
    #[inline]
    pub fn publish(self) -> SlabPtr<T> {
        let p = SlabPtr { slot: self.slot };
        core::mem::forget(self);
        p
    }
}

impl<T: SlabObject> Drop for Owned<'_, T> {
    fn drop(&mut self) {
        // SAFETY: we own the object; after this nothing uses it.
        unsafe { self.slab.free_slot(self.cpu, self.slot) }
    }
}

impl<T: SlabObject> core::fmt::Debug for Owned<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Owned({:p})", self.slot)
    }
}

/// A published object: a plain pointer to a slot, `Copy`, storable in
/// RCU-protected structures. Every access is `unsafe`, with the contract
/// naming what keeps the access valid.
pub struct SlabPtr<T: SlabObject> {
    slot: NonNull<Slot<T>>,
}

impl<T: SlabObject> Clone for SlabPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: SlabObject> Copy for SlabPtr<T> {}
impl<T: SlabObject> PartialEq for SlabPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.slot == other.slot
    }
}
impl<T: SlabObject> Eq for SlabPtr<T> {}

impl<T: SlabObject> core::fmt::Debug for SlabPtr<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SlabPtr({:p})", self.slot)
    }
}

// SAFETY: a `SlabPtr` is an address; what may be done through it is up to
// the unsafe accessors' contracts. It crosses threads like `&Stable`
// (Sync) and, through those contracts, like the payload.
unsafe impl<T: SlabObject> Send for SlabPtr<T> where T::Payload: Send + Sync {}
// SAFETY: as above.
unsafe impl<T: SlabObject> Sync for SlabPtr<T> where T::Payload: Send + Sync {}

impl<T: SlabObject> SlabPtr<T> {
    /// The address, for storing in a tree or comparing identities.
    #[inline]
    pub fn as_raw(self) -> NonNull<u8> {
        self.slot.cast()
    }

    /// Rebuilds a pointer from [`Self::as_raw`].
    ///
    /// # Safety
    ///
    /// `raw` came from `as_raw` of a `SlabPtr<T>` (same `T`).
    #[inline]
    pub unsafe fn from_raw(raw: NonNull<u8>) -> Self {
        SlabPtr { slot: raw.cast() }
    }

    /// The stable part.
    ///
    /// # Safety
    ///
    /// The slot's page must stay alive for `'a`: the caller owns a
    /// reference that keeps the object allocated for `'a`, or the object's
    /// slab is type-safe by RCU and `'a` lies within an RCU read section in
    /// which this pointer was read from an RCU-protected location (use
    /// [`Self::stable_rcu`] to have the borrow checker enforce the second
    /// half). The object may have been freed and reused since: the stable
    /// part is then the new object's, and the caller must revalidate.
    #[inline]
    pub unsafe fn stable<'a>(self) -> &'a T::Stable {
        // SAFETY: the caller guarantees the page is alive for 'a; stable parts are initialised for the page's whole life and only ever shared.
        unsafe { &*Slot::stable_ptr(self.slot) }
    }

    /// The stable part, borrowed for no longer than the RCU read section
    /// `guard`.
    ///
    /// # Safety
    ///
    /// The object's slab is type-safe by RCU, and this pointer was read
    /// from an RCU-protected location inside `guard`'s section (or the
    /// object was allocated and not freed when the section began).
    #[inline]
    pub unsafe fn stable_rcu<'g>(self, guard: &'g RcuReadGuard<'_>) -> &'g T::Stable {
        let _ = guard;
        // SAFETY: the grace period that must elapse before the page is freed cannot end while `guard`'s section is open, and the caller vouches that the page was alive when the section began.
        unsafe { self.stable() }
    }

    /// The payload, shared.
    ///
    /// # Safety
    ///
    /// The caller has *pinned* this incarnation of the object for `'a`: it
    /// stays allocated, is not freed and reallocated, and nobody holds a
    /// `&mut` to its payload (through [`Self::payload_mut`]) during `'a` —
    /// typically by holding a read reference counted in the stable part and
    /// revalidated after taking it. A reader that has merely found the
    /// pointer under RCU has not pinned anything: `alloc` rewrites a reused
    /// slot's payload with plain stores.
    #[inline]
    pub unsafe fn payload<'a>(self) -> &'a T::Payload {
        // SAFETY: the caller pinned the object: its payload is initialised and not written during 'a.
        unsafe { &*Slot::payload_ptr(self.slot) }
    }

    /// The payload, exclusively.
    ///
    /// # Safety
    ///
    /// As for [`Self::payload`], and in addition no other reference to the
    /// payload exists during `'a` (e.g. the object is write-locked by its
    /// own protocol and every reader has drained, or it is unpublished).
    #[inline]
    pub unsafe fn payload_mut<'a>(self) -> &'a mut T::Payload {
        // SAFETY: the caller guarantees exclusivity for 'a.
        unsafe { &mut *Slot::payload_ptr(self.slot) }
    }

    /// A raw pointer to the payload, with the provenance of the whole slot
    /// (unlike a pointer taken from [`Self::payload_mut`]'s reference, which
    /// covers the payload only, and from a field reference, which covers
    /// that field only). For objects handed out by address, e.g. an
    /// `RcuHead` inside the payload that a callback turns back into the
    /// object, or a payload that [`Self::from_payload`] turns back into the
    /// slot. Creating it is safe; using it follows [`Self::payload`]'s and
    /// [`Self::payload_mut`]'s rules.
    #[inline]
    pub fn payload_raw(self) -> NonNull<T::Payload> {
        // SAFETY: a field address of a non-null slot pointer is non-null.
        unsafe { NonNull::new_unchecked(Slot::payload_ptr(self.slot)) }
    }

    /// The object whose payload `payload` points to.
    ///
    /// # Safety
    ///
    /// `payload` was obtained from [`Self::payload`]/[`Self::payload_mut`]
    /// (or [`Owned::payload`]) of an object of a `Slab<T>`.
    #[inline]
    pub unsafe fn from_payload(payload: NonNull<T::Payload>) -> Self {
        let off = core::mem::offset_of!(Slot<T>, body);
        // SAFETY: the payload is the `body` field of a slot (caller's contract), so stepping back by its offset stays inside the slot.
        let slot = unsafe { payload.cast::<u8>().sub(off) };
        SlabPtr { slot: slot.cast() }
    }

    pub(super) fn slot(self) -> NonNull<Slot<T>> {
        self.slot
    }
}
