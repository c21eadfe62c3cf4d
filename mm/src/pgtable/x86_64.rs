//! The x86_64 4-level paging format (Intel SDM Vol. 3A §4.5, "4-Level
//! Paging and 5-Level Paging"; entry layouts in Tables 4-15 (PML4E), 4-17
//! (PDPTE referencing a page directory), 4-19 (PDE referencing a page
//! table) and 4-20 (PTE mapping a 4-KByte page)).
//!
//! # Leaf (PTE) layout
//!
//! | bit   | name      | Samara's use                                         |
//! |-------|-----------|------------------------------------------------------|
//! | 0     | P         | accessible (any of read/write/exec)                  |
//! | 1     | R/W       | writable                                             |
//! | 2     | U/S       | user page (`Prot::USER`)                             |
//! | 3, 4  | PWT, PCD  | 0: write-back through PAT entry 0                    |
//! | 5     | A         | preset: the CPU never needs a locked RMW to set it   |
//! | 6     | D         | preset on writable pages, for the same reason        |
//! | 7     | PAT       | 0                                                    |
//! | 8     | G         | 0: user pages are per address space                  |
//! | 9     | (ignored) | software: "mapped" (set on every leaf)               |
//! | 12-51 | address   | frame (inverted when P = 0, see below)               |
//! | 63    | XD        | execute-disable (requires `IA32_EFER.NXE = 1`)       |
//!
//! Presetting A and D is fine because Samara does no page reclaim or
//! writeback yet; a swap implementation would have to stop presetting them
//! (and then expect the CPU to set them with locked writes to the entry,
//! which every writer here already tolerates: all leaf updates are atomic
//! read-modify-writes).
//!
//! `PROT_NONE` leaves have P = 0 (the CPU ignores every other bit, §4.5)
//! and keep the frame *inverted* in bits 12-51, as Linux does since the L1
//! Terminal Fault disclosure: a speculative walk that uses a not-present
//! entry's address bits then points beyond installed memory instead of at
//! the frame.
//!
//! x86 cannot express write-only or exec-only pages: any access right
//! implies read ([`X86_64Pte::representable`] adds `READ`).
//!
//! # Table entries
//!
//! P | R/W | U/S | A and the next table's address: the leaf alone decides
//! the rights (rights are the intersection over all levels, §4.6), and A
//! is preset because the CPU sets it on every walk otherwise.

use super::pte::{Prot, PteFormat};
use crate::addr::{Frame, PhysAddr, PAGE_SHIFT};

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User-accessible.
pub const US: u64 = 1 << 2;
/// Page-level write-through.
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PCD: u64 = 1 << 4;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty (leaves only).
pub const D: u64 = 1 << 6;
/// Global (leaves only).
pub const G: u64 = 1 << 8;
/// Software: the entry is a leaf mapping (ignored by the CPU in every
/// paging-structure entry).
pub const SW_MAPPED: u64 = 1 << 9;
/// Execute-disable.
pub const XD: u64 = 1 << 63;
/// Physical address bits 12..=51 (MAXPHYADDR is at most 52).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// x86_64 4-level paging entries. See the module documentation.
#[derive(Debug)]
pub enum X86_64Pte {}

impl PteFormat for X86_64Pte {
    const NAME: &'static str = "x86_64";
    const USER_VA_END: u64 = 1 << 47;
    const MAX_PFN: u64 = ADDR_MASK >> PAGE_SHIFT;

    #[inline]
    fn encode_leaf(frame: Frame, prot: Prot) -> u64 {
        let prot = Self::representable(prot);
        let pa = frame.pfn() << PAGE_SHIFT;
        let user = if prot.contains(Prot::USER) { US } else { 0 };
        if !prot.is_accessible() {
            return SW_MAPPED | user | (!pa & ADDR_MASK);
        }
        let mut raw = P | SW_MAPPED | A | user | (pa & ADDR_MASK);
        if prot.contains(Prot::WRITE) {
            raw |= RW | D;
        }
        if !prot.contains(Prot::EXEC) {
            raw |= XD;
        }
        raw
    }

    #[inline]
    fn encode_table(table: PhysAddr) -> u64 {
        P | RW | US | A | (table.as_u64() & ADDR_MASK)
    }

    #[inline]
    fn is_leaf(raw: u64) -> bool {
        raw & SW_MAPPED != 0
    }

    #[inline]
    fn is_table(raw: u64) -> bool {
        raw & (P | SW_MAPPED) == P
    }

    #[inline]
    fn is_accessible(raw: u64) -> bool {
        raw & (P | SW_MAPPED) == P | SW_MAPPED
    }

    #[inline]
    fn leaf_frame(raw: u64) -> Frame {
        let addr = if raw & P != 0 { raw } else { !raw };
        Frame::from_pfn((addr & ADDR_MASK) >> PAGE_SHIFT)
    }

    #[inline]
    fn leaf_prot(raw: u64) -> Prot {
        let mut p = Prot::empty();
        if raw & US != 0 {
            p |= Prot::USER;
        }
        if raw & P != 0 {
            p |= Prot::READ;
            if raw & RW != 0 {
                p |= Prot::WRITE;
            }
            if raw & XD == 0 {
                p |= Prot::EXEC;
            }
        }
        p
    }

    #[inline]
    fn table_addr(raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR_MASK)
    }

    #[inline]
    fn representable(prot: Prot) -> Prot {
        if prot.is_accessible() {
            prot | Prot::READ
        } else {
            prot
        }
    }
}
