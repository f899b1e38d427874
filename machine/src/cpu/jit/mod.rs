//! A baseline JIT: hot decoded blocks become one host function each.
//!
//! Off unless `Cpu::set_jit(true)` is called (the worker's sandbox forbids
//! executable memory). Only whole cached blocks run through the chain path
//! of the run loop (no trace hook, CS limit checked) are compiled, at
//! their 16th run. A compiled block runs a subset natively, writing the
//! interpreter's lazy-flag state exactly as its handlers do: MOV and
//! ADD/SUB/CMP/AND/OR/XOR/TEST (8, 16, 32 bits; register, immediate and
//! 32-bit-addressed memory operands), ADC/SBB/INC/DEC/IMUL/SHL/SHR/SAR
//! r32, LEA, MOVZX/MOVSX, PUSH/POP r32, SETcc r8, CMOVcc r32, r32 and
//! the near branches (Jcc, JMP rel, CALL rel32, RET). Conditions are
//! evaluated on host flags by replaying the recorded operation when the
//! lazy kind allows (CF always). Everything else, and every case a fast
//! path does not cover, calls the instruction's handler through
//! [`trampoline`].
//!
//! The compiled function is `extern "C" fn(cpu) -> u32`; it returns
//! - `k` in `0..=n` (n = the block's length): `k` instructions completed
//!   and nothing else happened; the interpreter continues with `insns[k..]`
//!   (a native memory access that misses the TLB fast path "bails" this way
//!   before it changes anything), and retires the block when `k == n`;
//! - [`ENDED`]: a trampolined instruction faulted or stopped the block, and
//!   the trampoline has settled `eip` and `icount` as `run_insns` would.
//!
//! Executable memory is one region per CPU, filled by bump allocation and
//! kept W^X (pages are writable only while code is written into them).
//! When it is full every compiled block is dropped at once: a generation
//! number stored with each block's code tells stale code apart.

mod emit;

use super::Cpu;
use super::exec::Insn;

/// Returned by compiled code when the block ended inside a trampoline.
pub(crate) const ENDED: u32 = u32::MAX;

/// A compiled block.
pub(crate) type JitFn = unsafe extern "C" fn(*mut Cpu) -> u32;

/// Blocks run this many times before they are compiled.
const DEFAULT_THRESHOLD: u32 = 16;

/// Size of the executable region.
const REGION: usize = 32 << 20;

/// The JIT's per-CPU state.
pub(crate) struct Jit {
    pub on: bool,
    pub threshold: u32,
    /// Moves when the region is recycled: code of another generation is stale.
    pub generation: u32,
    /// Blocks compiled so far (tests and tools).
    pub compiled: u64,
    /// Size of the code region, reserved at the first compile.
    region: usize,
    mem: Option<ExecMem>,
}

impl Default for Jit {
    fn default() -> Self {
        Jit {
            on: false,
            threshold: DEFAULT_THRESHOLD,
            generation: 0,
            compiled: 0,
            region: REGION,
            mem: None,
        }
    }
}

/// Whether this build can compile at all.
pub(crate) const SUPPORTED: bool = true;

impl Jit {
    /// Compiles `insns` (a whole cached block). `None`: the block is not
    /// worth compiling (no native instruction) or the region cannot be had.
    pub fn compile(&mut self, insns: &[Insn]) -> Option<(JitFn, u32)> {
        let mut code = emit::Emitter::new(insns)?;
        if self.mem.is_none() {
            self.mem = Some(ExecMem::new(self.region)?);
        }
        let mem = self.mem.as_mut()?;
        let bytes = match code.assemble(mem.next_addr()) {
            Some(b) if mem.fits(b.len()) => b,
            _ => {
                // Full: drop every compiled block (see `generation`).
                mem.used = 0;
                self.generation = self.generation.wrapping_add(1);
                let b = code.assemble(mem.next_addr())?;
                if !mem.fits(b.len()) {
                    return None;
                }
                b
            }
        };
        let f = mem.write(&bytes)?;
        // SAFETY: `f` points at the function just written, which follows
        // the C ABI with one pointer argument and a u32 result (emit.rs).
        let f: JitFn = unsafe { std::mem::transmute::<*const u8, JitFn>(f) };
        self.compiled += 1;
        Some((f, self.generation))
    }
}

/// One instruction run through its handler from compiled code: what
/// `run_insns` does for it. `k` is its index in the block (the count of
/// instructions that completed before it). Returns 0 to go on, 1 when the
/// block ends here (fault delivered or `stop_block`), `eip` and `icount`
/// settled.
///
/// # Safety
/// `cpu` is the CPU running the compiled block and `d` an instruction of
/// that block (blocks outlive their compiled code).
pub(crate) unsafe extern "C" fn trampoline(cpu: *mut Cpu, d: *const Insn, k: u64) -> u32 {
    // SAFETY: see the function's contract; compiled code holds no other
    // reference to the CPU while it calls here.
    let (cpu, d) = unsafe { (&mut *cpu, &*d) };
    if !d.ip_blind {
        cpu.eip = d.ip;
        cpu.next_eip = d.next_ip;
    }
    if let Err(f) = (d.handler)(cpu, d) {
        if d.ip_blind {
            cpu.eip = d.ip;
        }
        cpu.icount += k;
        cpu.deliver_fault(f);
        return 1;
    }
    if cpu.stop_block {
        cpu.retire(d);
        cpu.icount += k + 1;
        return 1;
    }
    0
}

/// INC/DEC keep CF: settle it into `bits` when the lazy state is one
/// that does not keep it there (what `Flags::inc_dec` does first).
///
/// # Safety
/// `cpu` is the CPU running the compiled block.
pub(crate) unsafe extern "C" fn settle_cf(cpu: *mut Cpu) {
    // SAFETY: as for `trampoline`.
    let cpu = unsafe { &mut *cpu };
    let cf = cpu.flags.cf();
    cpu.flags.bits = (cpu.flags.bits & !super::flags::CF) | cf as u32;
}

/// Anonymous memory for generated code: writable or executable, never both.
struct ExecMem {
    base: *mut u8,
    size: usize,
    used: usize,
}

const PAGE: usize = 4096;

impl ExecMem {
    fn new(size: usize) -> Option<Self> {
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            tracing::warn!(target: "bulkhead::cpu", "JIT: no code region: {}", std::io::Error::last_os_error());
            return None;
        }
        Some(ExecMem {
            base: p.cast(),
            size,
            used: 0,
        })
    }

    fn next_addr(&self) -> u64 {
        self.base as u64 + self.used as u64
    }

    fn fits(&self, len: usize) -> bool {
        self.used + len <= self.size
    }

    /// Copies `code` to the next free bytes (16-byte aligned) and returns
    /// its address; the pages are executable again on return.
    fn write(&mut self, code: &[u8]) -> Option<*const u8> {
        let start = self.used;
        let end = start + code.len();
        let lo = start & !(PAGE - 1);
        let hi = end.div_ceil(PAGE) * PAGE;
        // SAFETY: `lo..hi` lies within the mapping (`fits` was checked and
        // the size is page-aligned); no compiled code runs while it is
        // being written.
        unsafe {
            let region = self.base.add(lo).cast();
            if libc::mprotect(region, hi - lo, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                return None;
            }
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.base.add(start), code.len());
            if libc::mprotect(region, hi - lo, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                return None;
            }
        }
        self.used = end.next_multiple_of(16).min(self.size);
        // SAFETY: `start` is within the mapping.
        Some(unsafe { self.base.add(start) })
    }
}

impl Drop for ExecMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the compiled code in it is
        // only reachable through this CPU's blocks, which are dropped
        // with it (or checked against the generation).
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

#[cfg(test)]
mod tests;
