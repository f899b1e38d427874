//! The x87 FPU: register stack, control/status/tag words, the last
//! instruction and data pointers, exceptions and their delivery.
//!
//! - `softfloat.rs`: the 80-bit extended-precision arithmetic (exact, a
//!   true soft-float);
//! - `trans.rs`: the transcendental instructions (128-bit fixed-point
//!   series, one rounding to extended; its header states the accuracy);
//! - `ops.rs`: the instruction handlers, named after the manual's mnemonics.
//!
//! Exceptions: every operation collects IEEE flags in a [`softfloat::Env`];
//! `Fpu::raise` records them in the status word and, for an unmasked one,
//! sets ES and B. The exception is delivered on the next *waiting* x87
//! instruction (`Cpu::fpu_enter`): #MF when CR0.NE=1, otherwise the FERR#
//! latch the platform turns into IRQ13 (`Cpu::fpu_error_pending`).
//! CR0.EM or CR0.TS make every x87 instruction raise #NM; WAIT/FWAIT raises
//! #NM only when CR0.MP and CR0.TS are both set.

mod ops;
mod softfloat;
mod trans;

use iced_x86::Instruction;

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::segment::rights;
use super::{Cpu, Seg, cr0};
use softfloat::F80;

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    ops::handler(i)
}

/// Status word bits.
pub(crate) mod sw {
    pub const EXC: u16 = 0x3F;
    pub const SF: u16 = 1 << 6;
    pub const ES: u16 = 1 << 7;
    pub const C0: u16 = 1 << 8;
    pub const C1: u16 = 1 << 9;
    pub const C2: u16 = 1 << 10;
    pub const TOP: u16 = 7 << 11;
    pub const C3: u16 = 1 << 14;
    pub const B: u16 = 1 << 15;
    pub const CC: u16 = C0 | C1 | C2 | C3;
}

/// Tag values (two bits per physical register).
pub(crate) mod tag {
    pub const VALID: u16 = 0;
    pub const ZERO: u16 = 1;
    pub const SPECIAL: u16 = 2;
    pub const EMPTY: u16 = 3;
}

/// The control word after FNINIT.
const CW_INIT: u16 = 0x037F;

/// The FPU's architectural state.
#[derive(Clone, Debug)]
pub(crate) struct Fpu {
    /// Physical registers R0..R7; ST(i) is `regs[(top + i) & 7]`.
    pub regs: [F80; 8],
    pub top: u8,
    /// Status word without the TOP field.
    pub sw: u16,
    pub cw: u16,
    /// One bit per physical register: set when the register is empty.
    pub empty: u8,
    /// Last non-control instruction: offset, CS selector and 11-bit opcode.
    pub fip: u32,
    pub fcs: u16,
    pub fop: u16,
    /// Last memory operand of a non-control instruction: offset and selector.
    pub fdp: u32,
    pub fds: u16,
    /// FERR# latch: a waiting instruction found an unmasked exception
    /// pending while CR0.NE=0 (the PC routes it to IRQ13).
    pub ferr: bool,
}

impl Default for Fpu {
    /// The power-on state (SDM vol. 3, table 9-1): control word 0040h,
    /// status 0, every register holding +0.0 and tagged valid.
    fn default() -> Self {
        Fpu {
            regs: [F80::ZERO; 8],
            top: 0,
            sw: 0,
            cw: 0x0040,
            empty: 0,
            fip: 0,
            fcs: 0,
            fop: 0,
            fdp: 0,
            fds: 0,
            ferr: false,
        }
    }
}

impl Fpu {
    /// FNINIT.
    pub fn init(&mut self) {
        let regs = self.regs;
        *self = Fpu {
            regs,
            cw: CW_INIT,
            empty: 0xFF,
            ..Fpu::default()
        };
    }

    #[inline]
    fn phys(&self, i: u8) -> usize {
        ((self.top + i) & 7) as usize
    }
    #[inline]
    pub fn st(&self, i: u8) -> F80 {
        self.regs[self.phys(i)]
    }
    #[inline]
    pub fn is_empty(&self, i: u8) -> bool {
        self.empty & (1 << self.phys(i)) != 0
    }
    /// Writes ST(i) and tags it non-empty.
    #[inline]
    pub fn set_st(&mut self, i: u8, v: F80) {
        let p = self.phys(i);
        self.regs[p] = v;
        self.empty &= !(1 << p);
    }
    pub fn free(&mut self, i: u8) {
        self.empty |= 1 << self.phys(i);
    }
    pub fn pop(&mut self) {
        self.free(0);
        self.top = (self.top + 1) & 7;
    }
    /// Pushes `v` (the caller has checked ST(7) is empty).
    pub fn push(&mut self, v: F80) {
        self.top = (self.top + 7) & 7;
        self.set_st(0, v);
    }

    /// The status word as FSTSW stores it.
    pub fn status(&self) -> u16 {
        let mut s = self.sw & !(sw::TOP | sw::B);
        if s & sw::ES != 0 {
            s |= sw::B;
        }
        s | (self.top as u16) << 11
    }

    /// Loads a status word (FLDENV, FRSTOR).
    pub fn set_status(&mut self, v: u16) {
        self.top = ((v >> 11) & 7) as u8;
        self.sw = v & !sw::TOP;
        self.update_es();
    }

    /// Loads the control word (bit 6 reads as 1, bits 13-15 as 0).
    pub fn set_cw(&mut self, v: u16) {
        self.cw = (v & 0x1F3F) | 0x0040;
        self.update_es();
    }

    /// ES and B follow the unmasked exceptions the status word records.
    fn update_es(&mut self) {
        if self.sw & sw::EXC & !self.cw != 0 {
            self.sw |= sw::ES | sw::B;
        } else {
            self.sw &= !(sw::ES | sw::B);
            self.ferr = false;
        }
    }

    /// The tag a register's contents give it.
    fn tag_of(v: F80) -> u16 {
        if v.exp() == 0x7FFF || v.is_denormal() || v.is_unsupported() {
            tag::SPECIAL
        } else if v.is_zero() {
            tag::ZERO
        } else {
            tag::VALID
        }
    }

    /// The full tag word (physical register order).
    pub fn tag_word(&self) -> u16 {
        (0..8).fold(0, |t, p| {
            let v = if self.empty & (1 << p) != 0 {
                tag::EMPTY
            } else {
                Fpu::tag_of(self.regs[p])
            };
            t | v << (2 * p)
        })
    }

    /// Loads a tag word: only "empty" is taken from it; the other tags
    /// follow the registers' contents, as on the 387 and later.
    pub fn set_tag_word(&mut self, t: u16) {
        self.empty = (0..8).fold(0, |e, p| {
            e | (((t >> (2 * p)) & 3 == tag::EMPTY) as u8) << p
        });
    }

    /// Records exceptions; returns true when one of them is unmasked.
    pub fn raise(&mut self, flags: u8) -> bool {
        let flags = flags as u16 & sw::EXC;
        self.sw |= flags;
        if flags & !self.cw != 0 {
            self.sw |= sw::ES | sw::B;
            true
        } else {
            false
        }
    }

    /// Sets the condition codes in `mask` to `value` (the others are kept).
    pub fn set_cc(&mut self, mask: u16, value: u16) {
        self.sw = (self.sw & !mask) | (value & mask);
    }

    /// Stack overflow or underflow: IE with SF, C1 = 1 for overflow.
    /// Returns true when IE is masked (the masked response goes ahead).
    pub fn stack_fault(&mut self, overflow: bool) -> bool {
        self.set_cc(sw::C1, if overflow { sw::C1 } else { 0 });
        self.sw |= sw::SF;
        !self.raise(softfloat::IE)
    }

    pub fn ie_masked(&self) -> bool {
        self.cw & softfloat::IE as u16 != 0
    }

    pub fn env(&self) -> softfloat::Env {
        softfloat::Env::from_cw(self.cw)
    }
}

impl Cpu {
    /// Entry checks of a waiting x87 instruction: #NM when CR0.EM or
    /// CR0.TS, then a pending unmasked exception is delivered (#MF with
    /// CR0.NE, the FERR# latch without).
    #[inline]
    pub(crate) fn fpu_enter(&mut self) -> Result<()> {
        if self.cr0 & (cr0::EM | cr0::TS) != 0 {
            return Err(Fault::NM);
        }
        if self.fpu.sw & sw::ES != 0 {
            self.fpu_pending()?;
        }
        Ok(())
    }

    #[cold]
    fn fpu_pending(&mut self) -> Result<()> {
        if self.cr0 & cr0::NE != 0 {
            return Err(Fault::MF);
        }
        self.fpu.ferr = true;
        Ok(())
    }

    /// Entry check of a non-waiting control instruction (FNINIT, FNSTSW...).
    #[inline]
    pub(crate) fn fpu_enter_nowait(&self) -> Result<()> {
        if self.cr0 & (cr0::EM | cr0::TS) != 0 {
            return Err(Fault::NM);
        }
        Ok(())
    }

    /// WAIT/FWAIT: #NM only when both MP and TS are set.
    pub(crate) fn fpu_wait(&mut self) -> Result<()> {
        if self.cr0 & (cr0::MP | cr0::TS) == cr0::MP | cr0::TS {
            return Err(Fault::NM);
        }
        if self.fpu.sw & sw::ES != 0 {
            self.fpu_pending()?;
        }
        Ok(())
    }

    /// Records the instruction (and memory operand) pointers and the
    /// opcode of a non-control instruction.
    pub(crate) fn fpu_note(&mut self, d: &Insn, mem: bool) {
        let cs = &self.segs[Seg::CS as usize];
        self.fpu.fip = self.eip;
        self.fpu.fcs = cs.selector;
        let lin = cs.base.wrapping_add(self.eip);
        self.fpu.fop = self.fpu_opcode(lin, d.len);
        if mem {
            self.fpu.fdp = self.ea(d);
            self.fpu.fds = self.segs[d.seg as usize].selector;
        }
    }

    /// The 11-bit FOP: low three bits of the escape opcode, then ModRM.
    /// The bytes are read through the TLB only (they were just fetched);
    /// 0 if they are not there.
    fn fpu_opcode(&self, lin: u32, len: u32) -> u16 {
        let mut at = lin;
        for _ in 0..len.min(15) {
            let Some(b) = self.peek_code(at) else {
                return 0;
            };
            if (0xD8..=0xDF).contains(&b) {
                let modrm = self.peek_code(at.wrapping_add(1)).unwrap_or(0);
                return ((b as u16 & 7) << 8) | modrm as u16;
            }
            at = at.wrapping_add(1);
        }
        0
    }

    fn peek_code(&self, lin: u32) -> Option<u8> {
        let e = self.tlb.current(lin);
        if e.rtag != lin & !0xFFF {
            return None;
        }
        self.mem
            .backing
            .get(lin.wrapping_add(e.addend) as usize)
            .copied()
    }

    /// Reads `out.len()` bytes at `seg:off` (80-bit operands, environments).
    pub(crate) fn fpu_read_bytes(&mut self, seg: Seg, off: u32, out: &mut [u8]) -> Result<()> {
        let lin = self.seg_check(seg, off, out.len() as u32, rights::READ)?;
        let user = self.cpl == 3;
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read_lin_u8(lin.wrapping_add(i as u32), user)?;
        }
        Ok(())
    }

    /// Writes `data` at `seg:off`; every page is checked before any byte is written.
    pub(crate) fn fpu_write_bytes(&mut self, seg: Seg, off: u32, data: &[u8]) -> Result<()> {
        let lin = self.seg_check(seg, off, data.len() as u32, rights::WRITE)?;
        let user = self.cpl == 3;
        self.prepare_write(lin, data.len() as u32, user)?;
        for (i, &b) in data.iter().enumerate() {
            self.write_lin_u8(lin.wrapping_add(i as u32), b, user)?;
        }
        Ok(())
    }

    // ---- for the platform, tests and the debugger ----

    /// The FERR# latch: an unmasked x87 exception was met by a waiting
    /// instruction while CR0.NE=0. A PC routes this to IRQ13; writing port
    /// F0h (IGNNE#) clears it through [`Cpu::fpu_clear_error`]. FNCLEX and
    /// FNINIT clear it too.
    pub fn fpu_error_pending(&self) -> bool {
        self.fpu.ferr
    }

    /// Drops the FERR# latch (the platform's port F0h write).
    pub fn fpu_clear_error(&mut self) {
        self.fpu.ferr = false;
    }

    /// The FPU status word (with TOP).
    pub fn fpu_status_word(&self) -> u16 {
        self.fpu.status()
    }

    pub fn fpu_control_word(&self) -> u16 {
        self.fpu.cw
    }

    pub fn fpu_tag_word(&self) -> u16 {
        self.fpu.tag_word()
    }

    /// ST(i) in memory format (8 bytes significand, 2 bytes sign and exponent).
    pub fn fpu_st(&self, i: u8) -> [u8; 10] {
        self.fpu.st(i & 7).to_le_bytes()
    }

    /// Pushes a value in memory format (tests and loaders).
    pub fn fpu_push(&mut self, v: [u8; 10]) {
        self.fpu.push(F80::from_le_bytes(v));
    }
}

#[cfg(test)]
mod tests;
