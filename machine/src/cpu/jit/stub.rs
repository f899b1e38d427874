//! Builds without a JIT back end: `Cpu::set_jit` is accepted and ignored.

use super::Cpu;
use super::exec::Insn;

pub(crate) const ENDED: u32 = u32::MAX;
pub(crate) type JitFn = unsafe extern "C" fn(*mut Cpu) -> u32;
pub(crate) const SUPPORTED: bool = false;

#[derive(Default)]
pub(crate) struct Jit {
    pub on: bool,
    pub threshold: u32,
    pub generation: u32,
    pub compiled: u64,
}

impl Jit {
    pub fn compile(&mut self, _: &[Insn]) -> Option<(JitFn, u32)> {
        None
    }
}
