//! Starting a user program: parse the embedded ELF image (`boot::elf`),
//! map its segments and a stack into a fresh address space, start its
//! first thread.

use alloc::sync::Arc;

use boot::elf::{self, ElfError};
use samara_abi::Errno;

use super::process::Process;
use super::sched::Task;
use super::umem::{prot_bits, UserMm, MIN_ADDR};

/// The programs xtask built and the kernel embeds (`kernel/build.rs`).
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/user_programs.rs"));
}

/// Size of the main thread's stack as mapped; it grows down on faults (up
/// to the layout's stack limit).
pub const STACK_SIZE: u64 = 64 * 1024;

/// The embedded image of program `name`.
pub fn image(name: &str) -> Option<&'static [u8]> {
    embedded::PROGRAMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
}

/// Names of the embedded programs.
pub fn programs() -> impl Iterator<Item = &'static str> {
    embedded::PROGRAMS.iter().map(|(n, _)| *n)
}

#[derive(Debug)]
pub enum LoadError {
    NoSuchProgram,
    Elf(ElfError),
    Mem(Errno),
    NoTask,
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::NoSuchProgram => f.write_str("no such program in this kernel image"),
            LoadError::Elf(e) => write!(f, "bad ELF image: {e}"),
            LoadError::Mem(e) => write!(f, "cannot map it: {}", e.name()),
            LoadError::NoTask => f.write_str("out of memory for its first thread"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
const MACHINE: (u16, elf::Endian) = (elf::EM_X86_64, elf::Endian::Little);
#[cfg(target_arch = "mips64")]
const MACHINE: (u16, elf::Endian) = (elf::EM_MIPS, elf::Endian::Big);

/// Maps each segment writable, copies its file bytes in (the rest stays
/// zero), then gives it its own protection; maps the stack. Returns the
/// stack's top.
fn map_program(
    mm: &UserMm,
    cpu: usize,
    image: &[u8],
    prog: &elf::Program,
) -> Result<u64, LoadError> {
    for s in prog.segments() {
        let (start, end) = s.pages();
        mm.map_fixed(cpu, start, end - start, prot_bits(true, true, false), false)
            .map_err(LoadError::Mem)?;
        let bytes = &image[s.offset as usize..(s.offset + s.filesz) as usize];
        mm.copy_to_user(cpu, s.vaddr, bytes)
            .map_err(LoadError::Mem)?;
        let prot = prot_bits(s.read, s.write, s.exec);
        mm.mprotect(cpu, start, end - start, u64::from(prot))
            .map_err(LoadError::Mem)?;
    }
    mm.set_brk_base(prog.end()).map_err(LoadError::Mem)?;
    let top = arch::mmu::USER_VA_END;
    mm.map_fixed(
        cpu,
        top - STACK_SIZE,
        STACK_SIZE,
        prot_bits(true, true, false),
        true,
    )
    .map_err(LoadError::Mem)?;
    Ok(top)
}

/// Creates a process running program `name` with `args` in its first two
/// argument registers; returns it (already runnable).
pub fn spawn(name: &str, args: [u64; 2]) -> Result<Arc<Process>, LoadError> {
    let image = image(name).ok_or(LoadError::NoSuchProgram)?;
    let prog = elf::parse(
        image,
        MACHINE.0,
        MACHINE.1,
        MIN_ADDR,
        arch::mmu::USER_VA_END,
    )
    .map_err(LoadError::Elf)?;
    let cpu = super::cpu_id();
    let mm = UserMm::new(cpu).map_err(LoadError::Mem)?;
    let stack_top = match map_program(&mm, cpu, image, &prog) {
        Ok(t) => t,
        Err(e) => {
            // SAFETY: the address space was never published.
            unsafe { mm.exit(cpu) };
            return Err(e);
        }
    };
    let p = Process::new(name, mm, None);
    let frame = arch::task::UserFrame::new_user(prog.entry, stack_top, args);
    let Some(t) = Task::new_user(name, p.clone(), &frame) else {
        p.abandon();
        return Err(LoadError::NoTask);
    };
    p.start_thread(t);
    Ok(p)
}
