//! TLB reset and size discovery.
//!
//! Nothing is mapped yet (the kernel lives in unmapped CKSEG0/XKPHYS), but
//! the TLB still has to be put into a known state: after reset its contents
//! are undefined on real hardware, and two entries that match the same
//! virtual page raise a machine check. QEMU zeroes it, which leaves every
//! entry matching virtual page 0 of ASID 0. [`init`] gives every entry a
//! distinct, never-used virtual page with both halves invalid, as Linux's
//! `local_flush_tlb_all` does.
//!
//! The placeholder pages are `CKSEG0 + i * 8 KiB`. CKSEG0 itself is never
//! translated, but EntryHi keeps only R (bits 63:62) and the implemented
//! VPN2 bits, so the entries really match the top of XKSEG; nothing may be
//! mapped in the last 2 GiB below XKSEG's end, and since V = 0 even an
//! accidental hit is a TLB-invalid exception, never a stray translation.
//!
//! The size: Config1.MMUSize gives up to 64 entries; Octeon II+ extend it
//! with Config4.MMUSizeExt (Config4.MMUExtDef = 1), which exists only when
//! the Config1..3 M bits chain to it. QEMU's Octeon68XX fills Config4 with an
//! extension of 3 (256 entries) but leaves Config3.M clear, so the
//! architected size there is Config1's 64, which is also all it models. As a
//! guard against such disagreements [`init`] verifies the size by reading
//! entries back (on a TLB smaller than advertised the indices wrap).

use core::sync::atomic::{AtomicUsize, Ordering};

use super::cp0;
use super::paging::CKSEG0;

/// The TLB size found by [`init`] (0 before it ran).
static ENTRIES: AtomicUsize = AtomicUsize::new(0);

/// The number of TLB entries the Config registers advertise.
pub fn advertised_entries() -> usize {
    let c1 = cp0::config1();
    let mut entries = (((c1 >> 25) & 0x3f) + 1) as usize;
    // Config1.M → Config2 exists, Config2.M → Config3, Config3.M → Config4.
    let has_config4 =
        c1 & (1 << 31) != 0 && cp0::config2() & (1 << 31) != 0 && cp0::config3() & (1 << 31) != 0;
    if has_config4 {
        let c4 = cp0::config4();
        // MMUExtDef (15:14) = 1: Config4[7:0] extends MMUSize-1 by 6 bits.
        if (c4 >> 14) & 0b11 == 1 {
            entries += ((c4 & 0xff) as usize) << 6;
        }
    }
    entries
}

/// The VPN2 placeholder of entry `i` (see the module comment).
const fn placeholder(i: usize) -> u64 {
    CKSEG0 + (i as u64) * 0x2000
}

/// Resets every TLB entry to an invalid placeholder, records the real size
/// and returns it. Called on each CPU before it uses mapped addresses; the
/// caller runs with interrupts off.
pub fn init() -> usize {
    let advertised = advertised_entries();
    let saved_hi = cp0::entryhi();
    cp0::tlb::set_wired(0);
    // Highest index first: on a TLB smaller than advertised the indices wrap,
    // and writing downwards leaves every real slot holding its own index's
    // placeholder, which the read-back below relies on.
    for i in (0..advertised).rev() {
        // SAFETY: each placeholder is a distinct VPN2 with V = 0 in both
        // halves (EntryLo0/1 = 0), in the part of XKSEG nothing maps, with a
        // 4 KiB page mask; the kernel runs unmapped, so no live translation
        // is removed. Interrupts are off (caller's contract).
        unsafe { cp0::tlb::write_indexed(i as u64, placeholder(i), 0, 0, 0) };
    }
    // The first index whose read-back is not its own placeholder is where
    // the hardware wrapped around.
    let mut real = advertised;
    let vpn2_mask: u64 = !0x1fff;
    for i in 0..advertised {
        // SAFETY: EntryHi is restored below; interrupts are off.
        let hi = unsafe { cp0::tlb::read_entryhi(i as u64) };
        // Compare only the low VPN2 bits that every implementation keeps.
        if (hi ^ placeholder(i)) & vpn2_mask & 0xff_ffff_ffff != 0 {
            real = i;
            break;
        }
    }
    // SAFETY: restores the ASID/VPN2 that was current on entry.
    unsafe { cp0::tlb::set_entryhi(saved_hi) };
    ENTRIES.store(real, Ordering::Relaxed);
    real
}

/// The TLB size found at boot (0 if [`init`] has not run).
pub fn entries() -> usize {
    ENTRIES.load(Ordering::Relaxed)
}
