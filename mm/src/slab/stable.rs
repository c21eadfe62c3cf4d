//! Building blocks for stable parts.

use intrusive_collections::linked_list::{CursorMut, Iter, LinkedList, LinkedListOps};
use intrusive_collections::{Adapter, PointerOps};

use super::Ctor;
use crate::sync::UnsafeCell;

type Ptr<A> = <<A as Adapter>::PointerOps as PointerOps>::Pointer;

/// An intrusive list head (from `intrusive-collections`) that lives in a
/// stable part: made once by the slot's constructor, then only operated on
/// in place.
///
/// This is the field whose overwrite crashed the Octeon board: a
/// whole-object copy replaced a live `anon_vma_chain` head with the
/// source's. Here nothing can replace the head as a whole — there is no
/// `Default`, no `Clone`, no `take`, no `&mut LinkedList` and no way to make
/// one outside a constructor (it needs a [`Ctor`]). Elements move in and
/// out through cursors and push/pop; the head itself stays put.
///
/// Which lock protects the list is the owner's business; every accessor is
/// `unsafe` and requires the caller to hold it. Keep the `StableList`
/// itself directly in the stable part, next to its lock — never inside a
/// lock or cell that hands out `&mut StableList`: with two such `&mut`s,
/// `mem::swap` would exchange two live objects' heads, which no type can
/// forbid once the `&mut` exists.
pub struct StableList<A: Adapter>
where
    A::LinkOps: LinkedListOps,
{
    list: UnsafeCell<LinkedList<A>>,
}

// SAFETY: the list is only accessed under the caller's lock (every accessor
// is unsafe and says so), so it may be shared and sent like a `Mutex` of it.
unsafe impl<A: Adapter + Send> Sync for StableList<A>
where
    A::LinkOps: LinkedListOps,
    Ptr<A>: Send,
{
}
// SAFETY: as above.
unsafe impl<A: Adapter + Send> Send for StableList<A>
where
    A::LinkOps: LinkedListOps,
    Ptr<A>: Send,
{
}

impl<A: Adapter> StableList<A>
where
    A::LinkOps: LinkedListOps,
{
    /// An empty list; only inside [`SlabObject::construct`](super::SlabObject::construct).
    pub fn new(_ctor: &Ctor<'_>, adapter: A) -> Self {
        StableList {
            list: UnsafeCell::new(LinkedList::new(adapter)),
        }
    }

    /// # Safety
    /// The caller holds the lock protecting this list, for as long as it
    /// uses the returned borrow.
    // `&mut` from `&self` is the point of the wrapper: exclusivity comes
    // from the caller's lock, which is this function's contract.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn list(&self) -> &mut LinkedList<A> {
        // SAFETY: the caller's lock makes this the only access.
        self.list.with_mut(|p| unsafe { &mut *p })
    }

    /// Whether the list is empty.
    ///
    /// # Safety
    /// The caller holds the lock protecting this list.
    pub unsafe fn is_empty(&self) -> bool {
        // SAFETY: forwarded.
        unsafe { self.list() }.is_empty()
    }

    /// # Safety
    /// The caller holds the lock protecting this list.
    pub unsafe fn push_back(&self, val: Ptr<A>) {
        // SAFETY: forwarded.
        unsafe { self.list() }.push_back(val)
    }

    /// # Safety
    /// The caller holds the lock protecting this list.
    pub unsafe fn push_front(&self, val: Ptr<A>) {
        // SAFETY: forwarded.
        unsafe { self.list() }.push_front(val)
    }

    /// # Safety
    /// The caller holds the lock protecting this list.
    pub unsafe fn pop_front(&self) -> Option<Ptr<A>> {
        // SAFETY: forwarded.
        unsafe { self.list() }.pop_front()
    }

    /// A cursor at the front, for in-place removal and insertion.
    ///
    /// # Safety
    /// The caller holds the lock protecting this list while the cursor
    /// lives.
    pub unsafe fn front_mut(&self) -> CursorMut<'_, A> {
        // SAFETY: forwarded.
        unsafe { self.list() }.front_mut()
    }

    /// Unlinks the element `value` points to.
    ///
    /// # Safety
    /// The caller holds the lock protecting this list, and `value` is an
    /// element of *this* list.
    pub unsafe fn remove(
        &self,
        value: *const <A::PointerOps as PointerOps>::Value,
    ) -> Option<Ptr<A>> {
        // SAFETY: forwarded; `value` is linked into this list.
        unsafe { self.list().cursor_mut_from_ptr(value) }.remove()
    }

    /// # Safety
    /// The caller holds the lock protecting this list while the iterator
    /// lives.
    pub unsafe fn iter(&self) -> Iter<'_, A> {
        // SAFETY: forwarded.
        unsafe { self.list() }.iter()
    }
}
