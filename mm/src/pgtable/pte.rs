//! Page-table entry encodings: what a PTE *means*, independent of where it
//! lives.
//!
//! A [`PteFormat`] turns a frame and a protection into the 64-bit word the
//! MMU (or the software TLB refill handler) reads, turns a table's physical
//! address into the word a higher-level entry holds, and decodes both. It
//! never touches memory. [`Pte`] is a leaf value tagged with its format, so
//! an x86 PTE cannot be stored into a MIPS table by mistake.
//!
//! Every format obeys the same rules, which [`super::PageTable`] relies on:
//!
//! * `0` is the empty entry at every level; no leaf and no table entry
//!   encodes to `0`.
//! * A leaf is either *mapped and accessible* (the hardware may use it for
//!   some access) or *mapped but inaccessible* (`PROT_NONE`: the frame stays
//!   recorded so `mprotect` can restore access, but any access faults). Both
//!   are "mapped" ([`Pte::is_mapped`]); only the first can be cached in a
//!   TLB, so only the first needs a TLB flush when it is removed.
//! * A table entry and a leaf are told apart by a software bit, so the
//!   decoders work without knowing the level (the walkers know it anyway and
//!   only assert it).

use core::fmt;
use core::marker::PhantomData;

use crate::addr::{Frame, PhysAddr};

bitflags::bitflags! {
    /// Access rights of a user mapping.
    ///
    /// `READ`/`WRITE`/`EXEC` are `PROT_READ`/`PROT_WRITE`/`PROT_EXEC`;
    /// none of them is `PROT_NONE`. `USER` makes the page reachable from
    /// user mode (x86 U/S); every mapping Samara puts in a user page table
    /// has it. Not every format can express every combination: see
    /// [`PteFormat::representable`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Prot: u8 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXEC = 1 << 2;
        const USER = 1 << 3;
    }
}

impl Prot {
    /// `PROT_NONE` for a user page: mapped, but every access faults.
    pub const NONE_USER: Prot = Prot::USER;
    /// The three access bits.
    pub const ACCESS: Prot = Prot::READ.union(Prot::WRITE).union(Prot::EXEC);

    /// Whether any access is allowed (not `PROT_NONE`).
    pub const fn is_accessible(self) -> bool {
        self.intersects(Prot::ACCESS)
    }
}

/// A PTE encoding. Implemented by uninhabited marker types
/// ([`super::X86_64Pte`], [`super::Mips64Pte`], [`super::SoftPte`]); all
/// functions are pure bit manipulation.
pub trait PteFormat: 'static {
    /// Human-readable name, for test output.
    const NAME: &'static str;
    /// One past the highest user virtual address the format's MMU can
    /// translate through a user page table (x86_64: 2^47, the canonical
    /// lower half; MIPS64 Octeon: 2^SEGBITS, the size of xuseg).
    const USER_VA_END: u64;
    /// Highest page frame number a leaf or table entry can hold.
    const MAX_PFN: u64;

    /// The leaf entry mapping `frame` with [`Self::representable`]`(prot)`.
    /// Never `0`. `frame.pfn() <= MAX_PFN` (checked by [`Pte::leaf`]).
    fn encode_leaf(frame: Frame, prot: Prot) -> u64;
    /// The entry pointing at the next-level table at `table`. Never `0`.
    fn encode_table(table: PhysAddr) -> u64;
    /// `raw` is a leaf (mapped, accessible or not).
    fn is_leaf(raw: u64) -> bool;
    /// `raw` is a table entry.
    fn is_table(raw: u64) -> bool;
    /// `raw` is a leaf the hardware may use (and cache) for some access.
    fn is_accessible(raw: u64) -> bool;
    /// The frame of a leaf (`is_leaf(raw)`).
    fn leaf_frame(raw: u64) -> Frame;
    /// The protection of a leaf (`is_leaf(raw)`).
    fn leaf_prot(raw: u64) -> Prot;
    /// The table a table entry points at (`is_table(raw)`).
    fn table_addr(raw: u64) -> PhysAddr;
    /// What `prot` becomes in this format: `leaf_prot(encode_leaf(f, p))
    /// == representable(p)`. Formats widen, never narrow: a representable
    /// protection allows at least what was asked.
    fn representable(prot: Prot) -> Prot;
}

/// A leaf page-table entry (or the empty entry) of format `F`.
#[repr(transparent)]
pub struct Pte<F: PteFormat> {
    raw: u64,
    _f: PhantomData<fn() -> F>,
}

impl<F: PteFormat> Pte<F> {
    /// The empty entry: nothing mapped.
    pub const NONE: Self = Self::from_raw(0);

    /// A leaf mapping `frame` with `prot` (as far as the format can
    /// express it, see [`PteFormat::representable`]).
    ///
    /// Panics if the frame number does not fit the format: that frame
    /// could not have come from an allocator a [`super::PageTable`] of
    /// this format accepted, and silently truncating it would map the
    /// wrong memory.
    #[inline]
    pub fn leaf(frame: Frame, prot: Prot) -> Self {
        assert!(
            frame.pfn() <= F::MAX_PFN,
            "{frame:?} does not fit a {} PTE",
            F::NAME
        );
        Self::from_raw(F::encode_leaf(frame, prot))
    }

    /// The entry with bit pattern `raw` (as read from a table).
    #[inline]
    pub const fn from_raw(raw: u64) -> Self {
        Pte {
            raw,
            _f: PhantomData,
        }
    }

    /// The bit pattern stored in the table.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.raw
    }

    /// Nothing is mapped.
    #[inline]
    pub const fn is_none(self) -> bool {
        self.raw == 0
    }

    /// A frame is mapped (Linux's `pte_present`: true for `PROT_NONE`).
    #[inline]
    pub fn is_mapped(self) -> bool {
        F::is_leaf(self.raw)
    }

    /// Mapped and usable by the hardware for some access; only such
    /// entries can be cached in a TLB.
    #[inline]
    pub fn is_accessible(self) -> bool {
        F::is_accessible(self.raw)
    }

    /// The mapped frame, if any.
    #[inline]
    pub fn frame(self) -> Option<Frame> {
        self.is_mapped().then(|| F::leaf_frame(self.raw))
    }

    /// The protection ([`Prot::empty`] if nothing is mapped).
    #[inline]
    pub fn prot(self) -> Prot {
        if self.is_mapped() {
            F::leaf_prot(self.raw)
        } else {
            Prot::empty()
        }
    }

    /// Whether the entry allows every access in `access` (a fault that
    /// finds this true was spurious: a stale TLB entry or a lost race).
    #[inline]
    pub fn allows(self, access: Prot) -> bool {
        self.is_mapped() && self.prot().contains(access)
    }

    /// The same frame with protection `prot`; [`Self::NONE`] stays none.
    #[inline]
    pub fn with_prot(self, prot: Prot) -> Self {
        match self.frame() {
            Some(f) => Self::from_raw(F::encode_leaf(f, prot)),
            None => self,
        }
    }

    /// The same mapping without write permission (copy-on-write).
    #[inline]
    pub fn wrprotect(self) -> Self {
        self.with_prot(self.prot().difference(Prot::WRITE))
    }

    /// Replacing this entry by `new` requires a TLB flush before the old
    /// frame may be reused: the old entry may be cached, and `new` maps
    /// another frame or allows less. Upgrades need none: a CPU still using
    /// the old, narrower entry takes a spurious fault, which finds the new
    /// entry and returns.
    pub fn needs_flush_for(self, new: Self) -> bool {
        if !self.is_accessible() {
            return false;
        }
        !new.is_accessible()
            || new.frame() != self.frame()
            || !new
                .prot()
                .contains(self.prot().intersection(Prot::ACCESS.union(Prot::USER)))
    }
}

impl<F: PteFormat> Clone for Pte<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: PteFormat> Copy for Pte<F> {}

impl<F: PteFormat> PartialEq for Pte<F> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<F: PteFormat> Eq for Pte<F> {}

impl<F: PteFormat> fmt::Debug for Pte<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.frame() {
            None if self.is_none() => write!(f, "Pte<{}>(none)", F::NAME),
            None => write!(f, "Pte<{}>(not a leaf: {:#x})", F::NAME, self.raw),
            Some(fr) => write!(
                f,
                "Pte<{}>({fr:?}, {:?}, raw {:#x})",
                F::NAME,
                self.prot(),
                self.raw
            ),
        }
    }
}
