//! A seeded generator of realistic address-space traces: the layouts
//! `/proc/PID/maps` shows for x86-64 processes, then a long stream of
//! `mmap`/`munmap`/`mprotect`/`brk` as maple-tree stores and erases.
//!
//! Layout (user space below 2^47):
//! - a PIE binary at `0x5555_5555_4000` + random pages: `r--`, `r-x`,
//!   `r--`, `rw-` segments and a bss;
//! - the heap (`brk`) after the bss at a random offset, growing and
//!   shrinking;
//! - the stack near the top (`0x7ffc..`-`0x7fff..`) with `vvar`/`vdso` below
//!   it;
//! - `mmap_base` 128 MiB+ below the stack; shared libraries (four segments
//!   each, some with a `---` guard hole), malloc arenas (64 MiB reserved,
//!   partly made writable), thread stacks with guard pages and small
//!   anonymous maps, all placed top-down with the highest-gap search, as
//!   Linux's default `mmap` layout does.

use super::{Model, Rng};

pub const PAGE: u64 = 4096;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const MMAP_MIN: u64 = 0x1_0000;

/// One step of a trace. Values (VMA ids) are unique per store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TOp {
    Store(u64, u64, u64),
    Erase(u64, u64),
    /// Top-down `mmap` placement: the highest fit; the replayer checks the
    /// tree agrees with the model. The store that follows uses it.
    GapHigh {
        size: u64,
        align: u64,
        min: u64,
        max: u64,
    },
    /// Bottom-up placement (`MAP_32BIT`-like, legacy layout).
    GapLow {
        size: u64,
        align: u64,
        min: u64,
        max: u64,
    },
}

pub struct Trace {
    rng: Rng,
    /// The generator's own view, to aim operations at existing mappings.
    pub model: Model,
    next_id: u64,
    brk_start: u64,
    brk: u64,
    mmap_base: u64,
    /// Soft limit on mappings: above it unmapping becomes more likely.
    target: usize,
}

impl Trace {
    pub fn new(seed: u64, target: usize) -> Self {
        Trace {
            rng: Rng::new(seed),
            model: Model::new(),
            next_id: 1,
            brk_start: 0,
            brk: 0,
            mmap_base: 0,
            target,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn pages(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.range(lo, hi) * PAGE
    }

    fn store(&mut self, out: &mut Vec<TOp>, first: u64, last: u64) {
        let id = self.id();
        self.model.store(first, last, Some(id));
        out.push(TOp::Store(first, last, id));
    }

    fn erase(&mut self, out: &mut Vec<TOp>, first: u64, last: u64) {
        self.model.store(first, last, None);
        out.push(TOp::Erase(first, last));
    }

    /// Places `size` bytes top-down below `mmap_base`; `None` if full.
    fn place(&mut self, out: &mut Vec<TOp>, size: u64, align: u64) -> Option<u64> {
        let q = TOp::GapHigh {
            size,
            align,
            min: MMAP_MIN,
            max: self.mmap_base - 1,
        };
        out.push(q);
        self.model
            .gap_highest(size, align, MMAP_MIN, self.mmap_base - 1)
    }

    /// A fresh process image (as after `execve`).
    pub fn exec(&mut self, out: &mut Vec<TOp>) {
        if !self.model.is_empty() {
            self.erase(out, 0, u64::MAX);
        }
        // Binary.
        let mut at = 0x5555_5555_4000 + self.pages(0, 1 << 20);
        for (lo, hi) in [(1, 8), (10, 2000), (5, 500), (1, 50), (0, 100)] {
            let len = self.pages(lo, hi);
            if len > 0 {
                self.store(out, at, at + len - 1);
                at += len;
            }
        }
        // Heap.
        self.brk_start = at + self.pages(0, 1 << 13);
        self.brk = self.brk_start + self.pages(1, 33);
        self.store(out, self.brk_start, self.brk - 1);
        // Stack, vvar/vdso below it.
        let stack_top = TASK_SIZE - self.pages(0, 1 << 22);
        let stack_lo = stack_top - self.pages(33, 64);
        self.store(out, stack_lo, stack_top - 1);
        let vdso = stack_lo - self.pages(2, 1 << 10) - 6 * PAGE;
        self.store(out, vdso, vdso + 4 * PAGE - 1);
        self.store(out, vdso + 4 * PAGE, vdso + 6 * PAGE - 1);
        // mmap area.
        self.mmap_base = vdso - (128 << 20) - self.pages(0, 1 << 16);
        let libs = self.rng.range(10, 60);
        for _ in 0..libs {
            self.map_library(out);
        }
    }

    fn map_library(&mut self, out: &mut Vec<TOp>) {
        let segs = [
            self.pages(1, 16),
            self.pages(1, 2000),
            self.pages(1, 300),
            self.pages(1, 20),
        ];
        let hole = if self.rng.chance(30) {
            self.pages(1, 511)
        } else {
            0
        };
        let total: u64 = segs.iter().sum::<u64>() + hole;
        let align = if total > (8 << 20) { 2 << 20 } else { PAGE };
        let Some(base) = self.place(out, total, align) else {
            return;
        };
        let mut at = base;
        for (i, len) in segs.into_iter().enumerate() {
            self.store(out, at, at + len - 1);
            at += len;
            if i == 1 && hole > 0 {
                // `---p` guard between text and data.
                self.store(out, at, at + hole - 1);
                at += hole;
            }
        }
    }

    /// A random mapped range, if any, near a random address.
    fn some_vma(&mut self) -> Option<(u64, u64, u64)> {
        let probe = self.rng.range(MMAP_MIN, TASK_SIZE);
        self.model
            .find(probe, u64::MAX)
            .or_else(|| self.model.find_rev(probe, 0))
    }

    /// One system call's worth of operations.
    pub fn step(&mut self, out: &mut Vec<TOp>) {
        if self.model.is_empty() || self.rng.next_u64().is_multiple_of(20_000) {
            self.exec(out);
            return;
        }
        let crowded = self.model.len() > self.target;
        let r = self.rng.range(0, 99);
        match r {
            // Anonymous mmap, top-down.
            0..=24 if !crowded => {
                let size = match self.rng.range(0, 9) {
                    0..=5 => self.pages(1, 16),
                    6..=7 => self.pages(16, 2048),
                    _ => self.pages(2048, 1 << 16),
                };
                let align = if self.rng.chance(10) { 2 << 20 } else { PAGE };
                if let Some(a) = self.place(out, size, align) {
                    self.store(out, a, a + size - 1);
                }
            }
            // Thread stack: guard page plus 8 MiB.
            25..=27 if !crowded => {
                if let Some(a) = self.place(out, (8 << 20) + PAGE, PAGE) {
                    self.store(out, a, a + PAGE - 1);
                    self.store(out, a + PAGE, a + (8 << 20) + PAGE - 1);
                }
            }
            // malloc arena: reserve 64 MiB aligned, enable a prefix.
            28..=29 if !crowded => {
                if let Some(a) = self.place(out, 64 << 20, 64 << 20) {
                    self.store(out, a, a + (64 << 20) - 1);
                    let rw = self.pages(33, 4096);
                    self.store(out, a, a + rw - 1);
                }
            }
            30..=31 if !crowded => self.map_library(out),
            // munmap of a whole mapping or a piece of one.
            32..=56 if crowded || self.rng.chance(50) => {
                if let Some((f, l, _)) = self.some_vma() {
                    let len = (l - f + 1) / PAGE;
                    let (a, b) = match self.rng.range(0, 3) {
                        0 => (f, l),
                        1 => (f, f + self.pages(1, len) - 1),
                        2 => (l + 1 - self.pages(1, len), l),
                        _ => {
                            let a = f + self.pages(0, len - 1);
                            (a, a + self.pages(1, (l + 1 - a) / PAGE) - 1)
                        }
                    };
                    self.erase(out, a, b);
                }
            }
            // mprotect of part of a mapping: splits it in up to three.
            57..=76 => {
                if let Some((f, l, _)) = self.some_vma() {
                    let len = (l - f + 1) / PAGE;
                    let a = f + self.pages(0, len - 1);
                    let b = a + self.pages(1, (l + 1 - a) / PAGE) - 1;
                    self.store(out, a, b);
                }
            }
            // brk: grow (if the space is free) or shrink.
            77..=91 => {
                if self.rng.chance(60) {
                    let grow = self.pages(1, 64);
                    if self.model.find(self.brk, self.brk + grow - 1).is_none() {
                        self.store(out, self.brk, self.brk + grow - 1);
                        self.brk += grow;
                    }
                } else if self.brk - self.brk_start > PAGE {
                    let shrink = self.pages(1, (self.brk - self.brk_start) / PAGE - 1);
                    self.erase(out, self.brk - shrink, self.brk - 1);
                    self.brk -= shrink;
                }
            }
            // MAP_FIXED over whatever is there, possibly many mappings.
            92..=95 => {
                if let Some((f, _, _)) = self.some_vma() {
                    let len = self.pages(1, 1 << 14);
                    self.store(out, f, f.saturating_add(len - 1).min(TASK_SIZE - 1));
                }
            }
            // munmap of a large region spanning many mappings.
            96 => {
                if let Some((f, _, _)) = self.some_vma() {
                    let len = self.pages(1, 1 << 20);
                    self.erase(out, f, f.saturating_add(len - 1).min(TASK_SIZE - 1));
                }
            }
            // Bottom-up placement in the low 4 GiB (MAP_32BIT).
            97 => {
                let size = self.pages(1, 64);
                let q = TOp::GapLow {
                    size,
                    align: PAGE,
                    min: 0x4000_0000,
                    max: 0xffff_ffff,
                };
                out.push(q);
                if let Some(a) = self.model.gap_lowest(size, PAGE, 0x4000_0000, 0xffff_ffff) {
                    self.store(out, a, a + size - 1);
                }
            }
            _ => {
                // mprotect across a mapping boundary (merging-like store).
                if let Some((_, l, _)) = self.some_vma() {
                    if l < TASK_SIZE - 1 {
                        let a = l + 1 - PAGE;
                        self.store(out, a, a + 2 * PAGE - 1);
                    }
                }
            }
        }
    }
}
