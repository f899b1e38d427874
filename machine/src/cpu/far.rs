//! Far control transfers: JMP/CALL far (direct and indirect), RETF, IRET.
//! Real and v86 mode here; protected mode adds descriptor checks, call
//! gates, privilege changes and task switches.

use iced_x86::{Code, Instruction};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::{Cpu, Seg, flags};

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    Some(match i.code() {
        Code::Jmp_ptr1616 | Code::Jmp_ptr1632 => jmp_far_ptr,
        Code::Jmp_m1616 | Code::Jmp_m1632 => jmp_far_mem,
        Code::Call_ptr1616 | Code::Call_ptr1632 => call_far_ptr,
        Code::Call_m1616 | Code::Call_m1632 => call_far_mem,
        Code::Retfw | Code::Retfd | Code::Retfw_imm16 | Code::Retfd_imm16 => retf,
        Code::Iretw | Code::Iretd => iret,
        _ => return None,
    })
}

/// Operand size of a far transfer: 4 for the 32-bit forms.
fn far_bytes(i: &Instruction) -> u32 {
    match i.code() {
        Code::Jmp_ptr1632
        | Code::Jmp_m1632
        | Code::Call_ptr1632
        | Code::Call_m1632
        | Code::Retfd
        | Code::Retfd_imm16
        | Code::Iretd => 4,
        _ => 2,
    }
}

/// Reads a far pointer (offset, then selector) from the memory operand.
fn read_far_pointer(cpu: &mut Cpu, d: &Insn, bytes: u32) -> Result<(u16, u32)> {
    let off = cpu.ea(d);
    let target = cpu.read_sized(d.seg, off, bytes)?;
    let sel = cpu.read_u16(d.seg, off.wrapping_add(bytes) & d.amask)?;
    Ok((sel, target))
}

/// JMP ptr16:16 / ptr16:32.
fn jmp_far_ptr(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let (sel, off) = (d.i.far_branch_selector(), d.i.far_branch32());
    cpu.jmp_far(sel, off, far_bytes(&d.i))
}

/// JMP m16:16 / m16:32.
fn jmp_far_mem(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let bytes = far_bytes(&d.i);
    let (sel, off) = read_far_pointer(cpu, d, bytes)?;
    cpu.jmp_far(sel, off, bytes)
}

/// CALL ptr16:16 / ptr16:32.
fn call_far_ptr(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let (sel, off) = (d.i.far_branch_selector(), d.i.far_branch32());
    cpu.call_far(sel, off, far_bytes(&d.i))
}

/// CALL m16:16 / m16:32.
fn call_far_mem(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let bytes = far_bytes(&d.i);
    let (sel, off) = read_far_pointer(cpu, d, bytes)?;
    cpu.call_far(sel, off, bytes)
}

/// RETF / RETF imm16.
fn retf(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let imm = if matches!(d.i.code(), Code::Retfw_imm16 | Code::Retfd_imm16) {
        d.i.immediate16() as u32
    } else {
        0
    };
    cpu.ret_far(far_bytes(&d.i), imm)
}

/// IRET / IRETD.
fn iret(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.iret(far_bytes(&d.i))
}

impl Cpu {
    /// Far JMP to `sel:off` with operand size `bytes`.
    pub(crate) fn jmp_far(&mut self, sel: u16, off: u32, bytes: u32) -> Result<()> {
        if self.protected_mode() && !self.v86_mode() {
            return self.jmp_far_protected(sel, off, bytes);
        }
        let off = if bytes == 2 { off & 0xFFFF } else { off };
        if off > self.segs[Seg::CS as usize].hi {
            return Err(Fault::GP0);
        }
        self.load_seg_real(Seg::CS, sel);
        self.next_eip = off;
        self.stop_block = true;
        Ok(())
    }

    /// Far CALL to `sel:off` with operand size `bytes`.
    pub(crate) fn call_far(&mut self, sel: u16, off: u32, bytes: u32) -> Result<()> {
        if self.protected_mode() && !self.v86_mode() {
            return self.call_far_protected(sel, off, bytes);
        }
        let off = if bytes == 2 { off & 0xFFFF } else { off };
        let old_cs = self.segs[Seg::CS as usize].selector as u32;
        let ret = self.next_eip;
        let sp = self.regs[super::reg::ESP];
        let r = self.push(bytes, old_cs).and_then(|_| self.push(bytes, ret));
        if let Err(f) = r {
            self.regs[super::reg::ESP] = sp;
            return Err(f);
        }
        if off > self.segs[Seg::CS as usize].hi {
            self.regs[super::reg::ESP] = sp;
            return Err(Fault::GP0);
        }
        self.load_seg_real(Seg::CS, sel);
        self.next_eip = off;
        self.stop_block = true;
        Ok(())
    }

    /// Far RET with operand size `bytes`, releasing `imm` more bytes of stack.
    pub(crate) fn ret_far(&mut self, bytes: u32, imm: u32) -> Result<()> {
        if self.protected_mode() && !self.v86_mode() {
            return self.ret_far_protected(bytes, imm);
        }
        let off = self.peek(bytes, 0)?;
        let sel = self.peek(bytes, bytes)? as u16;
        if off > self.segs[Seg::CS as usize].hi {
            return Err(Fault::GP0);
        }
        self.adjust_sp(2 * bytes + imm);
        self.load_seg_real(Seg::CS, sel);
        self.next_eip = off;
        self.stop_block = true;
        Ok(())
    }

    /// IRET with operand size `bytes`.
    pub(crate) fn iret(&mut self, bytes: u32) -> Result<()> {
        self.sys.nmi_blocked = false;
        if self.v86_mode() {
            return self.iret_v86(bytes);
        }
        if self.protected_mode() {
            return self.iret_protected(bytes);
        }
        let off = self.peek(bytes, 0)?;
        let sel = self.peek(bytes, bytes)? as u16;
        let fl = self.peek(bytes, 2 * bytes)?;
        if off > self.segs[Seg::CS as usize].hi {
            return Err(Fault::GP0);
        }
        self.adjust_sp(3 * bytes);
        self.load_seg_real(Seg::CS, sel);
        self.next_eip = off;
        // Real mode: every flag is writable (IOPL and NT included); VM and
        // RF are not changed by a 32-bit IRET here, VIF/VIP are kept.
        let keep = if bytes == 2 {
            0xFFFF_0000
        } else {
            flags::VM | flags::VIF | flags::VIP
        };
        let v = (self.flags.get() & keep) | (fl & !keep);
        self.flags.set(v & !flags::RF);
        self.stop_block = true;
        Ok(())
    }

    fn jmp_far_protected(&mut self, sel: u16, off: u32, bytes: u32) -> Result<()> {
        let _ = (sel, off, bytes);
        Err(Fault::GP0)
    }
    fn call_far_protected(&mut self, sel: u16, off: u32, bytes: u32) -> Result<()> {
        let _ = (sel, off, bytes);
        Err(Fault::GP0)
    }
    fn ret_far_protected(&mut self, bytes: u32, imm: u32) -> Result<()> {
        let _ = (bytes, imm);
        Err(Fault::GP0)
    }
    fn iret_protected(&mut self, bytes: u32) -> Result<()> {
        let _ = bytes;
        Err(Fault::GP0)
    }
    fn iret_v86(&mut self, bytes: u32) -> Result<()> {
        let _ = bytes;
        Err(Fault::GP0)
    }
}
