//! A software PTE format for host tests and for the host fault-path
//! benchmarks: no MMU reads it, it can express every [`Prot`] exactly, and
//! its layout differs from both hardware formats (frame number at bit 16,
//! flags in the low bits) so that code assuming either hardware layout
//! fails its tests.
//!
//! | bit    | meaning                                      |
//! |--------|----------------------------------------------|
//! | 0      | accessible (any of read/write/exec)          |
//! | 1..=4  | read, write, exec, user                      |
//! | 5      | leaf ("mapped")                              |
//! | 6      | table entry                                  |
//! | 16..64 | frame number (leaf) or table frame number    |

use super::pte::{Prot, PteFormat};
use crate::addr::{Frame, PhysAddr, PAGE_SHIFT};

const VALID: u64 = 1 << 0;
const PROT_SHIFT: u32 = 1;
const LEAF: u64 = 1 << 5;
const TABLE: u64 = 1 << 6;
const PFN_SHIFT: u32 = 16;

/// Host-only software page-table entries. See the module documentation.
#[derive(Debug)]
pub enum SoftPte {}

impl PteFormat for SoftPte {
    const NAME: &'static str = "soft";
    const USER_VA_END: u64 = 1 << 47;
    const MAX_PFN: u64 = (1 << (64 - PFN_SHIFT)) - 1;

    #[inline]
    fn encode_leaf(frame: Frame, prot: Prot) -> u64 {
        let valid = if prot.is_accessible() { VALID } else { 0 };
        LEAF | valid | (u64::from(prot.bits()) << PROT_SHIFT) | (frame.pfn() << PFN_SHIFT)
    }

    #[inline]
    fn encode_table(table: PhysAddr) -> u64 {
        TABLE | ((table.as_u64() >> PAGE_SHIFT) << PFN_SHIFT)
    }

    #[inline]
    fn is_leaf(raw: u64) -> bool {
        raw & LEAF != 0
    }

    #[inline]
    fn is_table(raw: u64) -> bool {
        raw & (TABLE | LEAF) == TABLE
    }

    #[inline]
    fn is_accessible(raw: u64) -> bool {
        raw & (LEAF | VALID) == LEAF | VALID
    }

    #[inline]
    fn leaf_frame(raw: u64) -> Frame {
        Frame::from_pfn(raw >> PFN_SHIFT)
    }

    #[inline]
    fn leaf_prot(raw: u64) -> Prot {
        Prot::from_bits_truncate((raw >> PROT_SHIFT) as u8 & 0xf)
    }

    #[inline]
    fn table_addr(raw: u64) -> PhysAddr {
        PhysAddr::new((raw >> PFN_SHIFT) << PAGE_SHIFT)
    }

    #[inline]
    fn representable(prot: Prot) -> Prot {
        prot
    }
}
