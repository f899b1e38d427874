//! Operand access: registers by number, the ModRM/SIB effective address and
//! the r/m operand (operand 0 or 1 as register or memory), plus the stack.

use iced_x86::{Instruction, OpKind, Register};

use super::exec::Insn;
use super::fault::Result;
use super::{Cpu, Seg, reg};

/// The memory operand has no index register and uses 32-bit addressing, so
/// its effective address is just base + displacement (an absent base reads
/// as the zero register): handlers instantiated with `SIMPLE` use
/// [`Cpu::ea_of`] to skip the rest of the computation.
pub(crate) fn simple_ea(i: &Instruction) -> bool {
    let base = i.memory_base();
    i.memory_index() == Register::None
        && !base.is_gpr16()
        && !(base == Register::None && i.memory_displ_size() == 2)
}

/// Instantiates `$e` with the const `$S` bound to `simple_ea($i)`.
macro_rules! by_ea {
    ($i:expr, |$S:ident| $e:expr) => {
        if $crate::cpu::operand::simple_ea($i) {
            const $S: bool = true;
            $e
        } else {
            const $S: bool = false;
            $e
        }
    };
}
pub(crate) use by_ea;

impl Cpu {
    /// Effective address of the memory operand; `SIMPLE` when the decoder
    /// found [`simple_ea`] true for it.
    #[inline(always)]
    pub(crate) fn ea_of<const SIMPLE: bool>(&self, d: &Insn) -> u32 {
        if SIMPLE {
            d.disp.wrapping_add(self.regs[d.base as usize & 15])
        } else {
            self.ea(d)
        }
    }

    /// Effective address (offset within the segment) of the memory operand.
    #[inline(always)]
    pub(crate) fn ea(&self, d: &Insn) -> u32 {
        d.disp
            .wrapping_add(self.regs[d.base as usize & 15])
            .wrapping_add(self.regs[d.index as usize & 15] << (d.scale & 31))
            & d.amask
    }

    // ---- registers by encoding number ----

    /// 8-bit register: 0-3 = AL, CL, DL, BL; 4-7 = AH, CH, DH, BH.
    #[inline(always)]
    pub(crate) fn reg8(&self, n: u8) -> u8 {
        let n = n as usize & 7;
        (self.regs[n & 3] >> ((n & 4) * 2)) as u8
    }
    #[inline(always)]
    pub(crate) fn set_reg8(&mut self, n: u8, v: u8) {
        let n = n as usize & 7;
        let shift = (n & 4) * 2;
        let r = &mut self.regs[n & 3];
        *r = (*r & !(0xFF << shift)) | ((v as u32) << shift);
    }
    #[inline(always)]
    pub(crate) fn reg16(&self, n: u8) -> u16 {
        self.regs[n as usize & 7] as u16
    }
    #[inline(always)]
    pub(crate) fn set_reg16(&mut self, n: u8, v: u16) {
        let r = &mut self.regs[n as usize & 7];
        *r = (*r & 0xFFFF_0000) | v as u32;
    }
    #[inline(always)]
    pub(crate) fn reg32(&self, n: u8) -> u32 {
        self.regs[n as usize & 7]
    }
    #[inline(always)]
    pub(crate) fn set_reg32(&mut self, n: u8, v: u32) {
        self.regs[n as usize & 7] = v;
    }

    /// A register of `bytes` width (1, 2, 4), zero-extended.
    #[inline(always)]
    pub(crate) fn reg_sized(&self, n: u8, bytes: u32) -> u32 {
        match bytes {
            1 => self.reg8(n) as u32,
            2 => self.reg16(n) as u32,
            _ => self.reg32(n),
        }
    }
    #[inline(always)]
    pub(crate) fn set_reg_sized(&mut self, n: u8, bytes: u32, v: u32) {
        match bytes {
            1 => self.set_reg8(n, v as u8),
            2 => self.set_reg16(n, v as u16),
            _ => self.set_reg32(n, v),
        }
    }

    // ---- memory operand of any width ----

    /// Reads `bytes` (1, 2, 4) at `seg:off`, zero-extended.
    #[inline(always)]
    pub(crate) fn read_sized(&mut self, seg: Seg, off: u32, bytes: u32) -> Result<u32> {
        Ok(match bytes {
            1 => self.read_u8(seg, off)? as u32,
            2 => self.read_u16(seg, off)? as u32,
            _ => self.read_u32(seg, off)?,
        })
    }
    #[inline(always)]
    pub(crate) fn write_sized(&mut self, seg: Seg, off: u32, bytes: u32, v: u32) -> Result<()> {
        match bytes {
            1 => self.write_u8(seg, off, v as u8),
            2 => self.write_u16(seg, off, v as u16),
            _ => self.write_u32(seg, off, v),
        }
    }

    // ---- r/m operands: operand `op` (0 or 1) is a register or the memory operand ----

    /// Reads operand `op`, a register (number in `r0`/`r1`) or memory, of `bytes` width.
    #[inline(always)]
    pub(crate) fn read_rm(&mut self, d: &Insn, op: u32, bytes: u32) -> Result<u32> {
        if d.i.op_kind(op) == OpKind::Register {
            let n = if op == 0 { d.r0 } else { d.r1 };
            Ok(self.reg_sized(n, bytes))
        } else {
            let off = self.ea(d);
            self.read_sized(d.seg, off, bytes)
        }
    }

    /// Writes operand 0 (register or memory) of `bytes` width.
    #[inline(always)]
    pub(crate) fn write_rm(&mut self, d: &Insn, bytes: u32, v: u32) -> Result<()> {
        if d.i.op0_kind() == OpKind::Register {
            self.set_reg_sized(d.r0, bytes, v);
            Ok(())
        } else {
            let off = self.ea(d);
            self.write_sized(d.seg, off, bytes, v)
        }
    }

    /// Read-modify-write of operand 0: `f` gets the old value and returns
    /// the new one. Memory is checked for write access before the read, and
    /// written before `f`'s other effects become visible only if the caller
    /// records them after this returns.
    #[inline(always)]
    pub(crate) fn modify_rm(
        &mut self,
        d: &Insn,
        bytes: u32,
        f: impl FnOnce(&mut Cpu, u32) -> u32,
    ) -> Result<()> {
        if d.i.op0_kind() == OpKind::Register {
            let old = self.reg_sized(d.r0, bytes);
            let new = f(self, old);
            self.set_reg_sized(d.r0, bytes, new);
            return Ok(());
        }
        let off = self.ea(d);
        match bytes {
            1 => {
                let (lin, old) = self.rmw_u8(d.seg, off)?;
                let new = f(self, old as u32);
                self.rmw_write_u8(lin, new as u8)
            }
            2 => {
                let (lin, old) = self.rmw_u16(d.seg, off)?;
                let new = f(self, old as u32);
                self.rmw_write_u16(lin, new as u16)
            }
            _ => {
                let (lin, old) = self.rmw_u32(d.seg, off)?;
                let new = f(self, old);
                self.rmw_write_u32(lin, new)
            }
        }
    }

    // ---- stack ----

    /// Pushes a value of `bytes` (2 or 4) onto SS:(E)SP. ESP changes only
    /// if the write succeeds.
    #[inline(always)]
    pub(crate) fn push(&mut self, bytes: u32, v: u32) -> Result<()> {
        let mask = self.sp_mask();
        let sp = self.regs[reg::ESP].wrapping_sub(bytes) & mask;
        if bytes == 2 {
            self.write_u16(Seg::SS, sp, v as u16)?;
        } else {
            self.write_u32(Seg::SS, sp, v)?;
        }
        self.regs[reg::ESP] = (self.regs[reg::ESP] & !mask) | sp;
        Ok(())
    }

    /// Pops a value of `bytes` (2 or 4) from SS:(E)SP.
    #[inline(always)]
    pub(crate) fn pop(&mut self, bytes: u32) -> Result<u32> {
        let v = self.peek(bytes, 0)?;
        self.adjust_sp(bytes);
        Ok(v)
    }

    /// Reads the stack `offset` bytes above (E)SP without popping.
    #[inline(always)]
    pub(crate) fn peek(&mut self, bytes: u32, offset: u32) -> Result<u32> {
        let mask = self.sp_mask();
        let sp = self.regs[reg::ESP].wrapping_add(offset) & mask;
        if bytes == 2 {
            Ok(self.read_u16(Seg::SS, sp)? as u32)
        } else {
            self.read_u32(Seg::SS, sp)
        }
    }

    /// Adds `delta` to (E)SP at the current stack width.
    #[inline(always)]
    pub(crate) fn adjust_sp(&mut self, delta: u32) {
        let mask = self.sp_mask();
        let sp = self.regs[reg::ESP];
        self.regs[reg::ESP] = (sp & !mask) | (sp.wrapping_add(delta) & mask);
    }
}
