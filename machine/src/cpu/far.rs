//! Far control transfers: JMP/CALL far (direct and indirect), RETF, IRET.
//! Real and v86 mode are paragraph-based; protected mode adds descriptor
//! checks, call gates with privilege changes and parameter copying,
//! returns to outer levels and to v86 mode, and task switches (`task.rs`).

use iced_x86::{Code, Instruction};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::interrupt::FrameStack;
use super::segment::{Desc, SegCache, sel_error, sys_type};
use super::task::TaskSource;
use super::{Cpu, Seg, flags, reg};

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

    /// Protected-mode far JMP (SDM vol. 2, JMP): to a code segment, through
    /// a call gate (no privilege change), or to a TSS or task gate (a task
    /// switch).
    fn jmp_far_protected(&mut self, sel: u16, off: u32, bytes: u32) -> Result<()> {
        let off = if bytes == 2 { off & 0xFFFF } else { off };
        let d = self.far_target(sel)?;
        let err = sel_error(sel);
        let rpl = (sel & 3) as u8;
        if d.is_segment() {
            self.check_direct_code(d, sel)?;
            if off > d.limit() {
                return Err(Fault::GP0);
            }
            self.load_cs(d, sel, self.cpl)?;
            self.next_eip = off;
            return Ok(());
        }
        if d.dpl() < self.cpl || d.dpl() < rpl {
            return Err(Fault::gp(err));
        }
        match d.system_type() {
            Some(sys_type::CALL_GATE16 | sys_type::CALL_GATE32) => {
                if !d.present() {
                    return Err(Fault::np(err));
                }
                let (csel, code) = self.gate_code(d)?;
                let cerr = sel_error(csel);
                let priv_ok = if code.conforming_code() {
                    code.dpl() <= self.cpl
                } else {
                    code.dpl() == self.cpl
                };
                if !priv_ok {
                    return Err(Fault::gp(cerr));
                }
                if !code.present() {
                    return Err(Fault::np(cerr));
                }
                let target = d.gate_offset();
                if target > code.limit() {
                    return Err(Fault::GP0);
                }
                self.load_cs(code, csel, self.cpl)?;
                self.next_eip = target;
                Ok(())
            }
            Some(sys_type::TASK_GATE) => {
                if !d.present() {
                    return Err(Fault::np(err));
                }
                let tss = d.gate_selector();
                let desc = self.task_gate_target(tss, 0)?;
                self.task_switch(tss, desc, TaskSource::Jmp, None, self.next_eip)
            }
            Some(sys_type::TSS16_AVAIL | sys_type::TSS32_AVAIL) if sel & 4 == 0 => {
                if !d.present() {
                    return Err(Fault::np(err));
                }
                self.task_switch(sel, d, TaskSource::Jmp, None, self.next_eip)
            }
            _ => Err(Fault::gp(err)),
        }
    }

    /// Protected-mode far CALL (SDM vol. 2, CALL): to a code segment,
    /// through a call gate (to a more privileged non-conforming segment:
    /// a stack switch through the TSS with parameter copying), or to a TSS
    /// or task gate (a nested task switch).
    fn call_far_protected(&mut self, sel: u16, off: u32, bytes: u32) -> Result<()> {
        let off = if bytes == 2 { off & 0xFFFF } else { off };
        let d = self.far_target(sel)?;
        let err = sel_error(sel);
        let rpl = (sel & 3) as u8;
        let ret = self.next_eip;
        let old_cs = self.segs[Seg::CS as usize].selector as u32;
        if d.is_segment() {
            self.check_direct_code(d, sel)?;
            if off > d.limit() {
                return Err(Fault::GP0);
            }
            let mut st = self.current_stack();
            self.frame_push(&mut st, bytes, old_cs)?;
            self.frame_push(&mut st, bytes, ret)?;
            self.load_cs(d, sel, self.cpl)?;
            self.regs[reg::ESP] = st.esp;
            self.next_eip = off;
            return Ok(());
        }
        if d.dpl() < self.cpl || d.dpl() < rpl {
            return Err(Fault::gp(err));
        }
        match d.system_type() {
            Some(sys_type::CALL_GATE16 | sys_type::CALL_GATE32) => {
                if !d.present() {
                    return Err(Fault::np(err));
                }
                self.call_gate(d)
            }
            Some(sys_type::TASK_GATE) => {
                if !d.present() {
                    return Err(Fault::np(err));
                }
                let tss = d.gate_selector();
                let desc = self.task_gate_target(tss, 0)?;
                self.task_switch(tss, desc, TaskSource::Call, None, ret)
            }
            Some(sys_type::TSS16_AVAIL | sys_type::TSS32_AVAIL) if sel & 4 == 0 => {
                if !d.present() {
                    return Err(Fault::np(err));
                }
                self.task_switch(sel, d, TaskSource::Call, None, ret)
            }
            _ => Err(Fault::gp(err)),
        }
    }

    /// CALL through call gate `gate` (present, DPL checked).
    fn call_gate(&mut self, gate: Desc) -> Result<()> {
        let (csel, code) = self.gate_code(gate)?;
        let cerr = sel_error(csel);
        if code.dpl() > self.cpl {
            return Err(Fault::gp(cerr));
        }
        if !code.present() {
            return Err(Fault::np(cerr));
        }
        let target = gate.gate_offset();
        if target > code.limit() {
            return Err(Fault::GP0);
        }
        let bytes = if gate.access() & 8 != 0 { 4 } else { 2 };
        let ret = self.next_eip;
        let old_cs = self.segs[Seg::CS as usize].selector as u32;
        if !code.conforming_code() && code.dpl() < self.cpl {
            // More privilege: a new stack from the TSS, with the old SS:ESP
            // and the gate's parameters copied onto it.
            let dpl = code.dpl();
            let (ss_sel, esp) = self.tss_stack(dpl, 0)?;
            let ss = self.check_stack_seg(ss_sel, dpl, Fault::ts)?;
            let mut st = FrameStack {
                cache: ss,
                esp,
                user: false,
                fault: Fault::ss(sel_error(ss_sel)),
            };
            let old_ss = self.segs[Seg::SS as usize].selector as u32;
            let old_esp = self.regs[reg::ESP];
            self.frame_push(&mut st, bytes, old_ss)?;
            self.frame_push(&mut st, bytes, old_esp)?;
            for i in (0..gate.gate_params()).rev() {
                let p = self.peek(bytes, i * bytes)?;
                self.frame_push(&mut st, bytes, p)?;
            }
            self.frame_push(&mut st, bytes, old_cs)?;
            self.frame_push(&mut st, bytes, ret)?;
            self.load_cs(code, csel, dpl)?;
            self.segs[Seg::SS as usize] = st.cache;
            self.regs[reg::ESP] = st.esp;
            self.update_mode();
        } else {
            let mut st = self.current_stack();
            self.frame_push(&mut st, bytes, old_cs)?;
            self.frame_push(&mut st, bytes, ret)?;
            self.load_cs(code, csel, self.cpl)?;
            self.regs[reg::ESP] = st.esp;
        }
        self.next_eip = target;
        Ok(())
    }

    /// The descriptor a far JMP/CALL names: #GP(0) for a null selector,
    /// #GP(sel) outside its table.
    fn far_target(&mut self, sel: u16) -> Result<Desc> {
        if sel & 0xFFFC == 0 {
            return Err(Fault::GP0);
        }
        self.read_desc_or(sel, Fault::gp(sel_error(sel)))
    }

    /// A direct far JMP/CALL target: a code segment, conforming with
    /// DPL ≤ CPL or non-conforming with RPL ≤ CPL = DPL (#GP(sel)), present
    /// (#NP(sel)).
    fn check_direct_code(&self, d: Desc, sel: u16) -> Result<()> {
        let err = sel_error(sel);
        let rpl = (sel & 3) as u8;
        let ok = d.is_code()
            && if d.conforming_code() {
                d.dpl() <= self.cpl
            } else {
                rpl <= self.cpl && d.dpl() == self.cpl
            };
        if !ok {
            return Err(Fault::gp(err));
        }
        if !d.present() {
            return Err(Fault::np(err));
        }
        Ok(())
    }

    /// The code segment a call gate names: #GP(0) for a null selector,
    /// #GP(sel) outside its table or not code.
    fn gate_code(&mut self, gate: Desc) -> Result<(u16, Desc)> {
        let csel = gate.gate_selector();
        if csel & 0xFFFC == 0 {
            return Err(Fault::GP0);
        }
        let cerr = sel_error(csel);
        let code = self.read_desc_or(csel, Fault::gp(cerr))?;
        if !code.is_code() {
            return Err(Fault::gp(cerr));
        }
        Ok((csel, code))
    }

    /// SS:ESP as a frame stack (pushes raise #SS(0)).
    fn current_stack(&self) -> FrameStack {
        FrameStack {
            cache: self.segs[Seg::SS as usize],
            esp: self.regs[reg::ESP],
            user: self.cpl == 3,
            fault: Fault::ss(0),
        }
    }

    /// The code segment RETF/IRET return to: not null (#GP(0)), RPL ≥ CPL,
    /// in its table, code, conforming with DPL ≤ RPL or non-conforming with
    /// DPL = RPL (#GP(sel)), present (#NP(sel)).
    fn check_return_code(&mut self, sel: u16) -> Result<Desc> {
        if sel & 0xFFFC == 0 {
            return Err(Fault::GP0);
        }
        let err = sel_error(sel);
        let rpl = (sel & 3) as u8;
        if rpl < self.cpl {
            return Err(Fault::gp(err));
        }
        let d = self.read_desc_or(sel, Fault::gp(err))?;
        let ok = d.is_code()
            && if d.conforming_code() {
                d.dpl() <= rpl
            } else {
                d.dpl() == rpl
            };
        if !ok {
            return Err(Fault::gp(err));
        }
        if !d.present() {
            return Err(Fault::np(err));
        }
        Ok(d)
    }

    /// Loads SS:ESP popped by a return to an outer level: a 16-bit stack
    /// keeps ESP's upper half.
    fn load_outer_stack(&mut self, ss: SegCache, esp: u32) {
        let esp = if ss.big() {
            esp
        } else {
            (self.regs[reg::ESP] & 0xFFFF_0000) | (esp & 0xFFFF)
        };
        self.segs[Seg::SS as usize] = ss;
        self.regs[reg::ESP] = esp;
        self.update_mode();
    }

    /// Protected-mode RETF (SDM vol. 2, RET): same level, or to an outer
    /// level with SS:ESP popped too and inaccessible data segments nulled.
    fn ret_far_protected(&mut self, bytes: u32, imm: u32) -> Result<()> {
        let off = self.peek(bytes, 0)?;
        let sel = self.peek(bytes, bytes)? as u16;
        let d = self.check_return_code(sel)?;
        if off > d.limit() {
            return Err(Fault::GP0);
        }
        let rpl = (sel & 3) as u8;
        if rpl == self.cpl {
            self.load_cs(d, sel, rpl)?;
            self.adjust_sp(2 * bytes + imm);
        } else {
            let esp = self.peek(bytes, 2 * bytes + imm)?;
            let ss_sel = self.peek(bytes, 3 * bytes + imm)? as u16;
            let ss = self.check_stack_seg(ss_sel, rpl, Fault::gp)?;
            self.load_cs(d, sel, rpl)?;
            self.load_outer_stack(ss, esp);
            self.adjust_sp(imm);
            self.null_inaccessible_data_segs();
        }
        self.next_eip = off;
        Ok(())
    }

    /// Protected-mode IRET (SDM vol. 2, IRET): a task return when NT is
    /// set, a return to v86 mode from CPL 0 when the popped EFLAGS has VM,
    /// otherwise a same- or outer-level return.
    fn iret_protected(&mut self, bytes: u32) -> Result<()> {
        if self.flags.test(flags::NT) {
            let link = self.read_sys_u16(self.tr.base)?;
            let err = sel_error(link);
            let d = self.read_gdt_desc(link, Fault::ts(err))?;
            if !matches!(
                d.system_type(),
                Some(sys_type::TSS16_BUSY | sys_type::TSS32_BUSY)
            ) {
                return Err(Fault::ts(err));
            }
            if !d.present() {
                return Err(Fault::np(err));
            }
            return self.task_switch(link, d, TaskSource::Iret, None, self.next_eip);
        }
        let off = self.peek(bytes, 0)?;
        let sel = self.peek(bytes, bytes)? as u16;
        let fl = self.peek(bytes, 2 * bytes)?;
        if bytes == 4 && fl & flags::VM != 0 && self.cpl == 0 {
            return self.iret_to_v86(off, sel, fl);
        }
        let d = self.check_return_code(sel)?;
        if off > d.limit() {
            return Err(Fault::GP0);
        }
        let rpl = (sel & 3) as u8;
        let old_cpl = self.cpl;
        if rpl == self.cpl {
            self.load_cs(d, sel, rpl)?;
            self.adjust_sp(3 * bytes);
            self.set_iret_flags(fl, bytes, old_cpl);
        } else {
            let esp = self.peek(bytes, 3 * bytes)?;
            let ss_sel = self.peek(bytes, 4 * bytes)? as u16;
            let ss = self.check_stack_seg(ss_sel, rpl, Fault::gp)?;
            self.load_cs(d, sel, rpl)?;
            self.set_iret_flags(fl, bytes, old_cpl);
            self.load_outer_stack(ss, esp);
            self.null_inaccessible_data_segs();
        }
        self.next_eip = off;
        Ok(())
    }

    /// EFLAGS from an IRET image, by the privilege the IRET ran at: IF only
    /// at CPL ≤ IOPL; IOPL, VIF and VIP only at CPL 0; VM is never set here.
    fn set_iret_flags(&mut self, fl: u32, bytes: u32, cpl: u8) {
        let mut mask =
            flags::ARITH | flags::TF | flags::DF | flags::NT | flags::RF | flags::AC | flags::ID;
        if cpl <= self.iopl() {
            mask |= flags::IF;
        }
        if cpl == 0 {
            mask |= flags::IOPL | flags::VIF | flags::VIP;
        }
        if bytes == 2 {
            mask &= 0xFFFF;
        }
        let v = (self.flags.get() & !mask) | (fl & mask);
        self.flags.set(v);
        self.update_mode();
    }

    /// IRETD from CPL 0 to v86 mode: EIP, CS, EFLAGS, ESP, SS, ES, DS, FS,
    /// GS from the stack.
    fn iret_to_v86(&mut self, off: u32, cs: u16, fl: u32) -> Result<()> {
        let esp = self.peek(4, 12)?;
        let ss = self.peek(4, 16)? as u16;
        let es = self.peek(4, 20)? as u16;
        let ds = self.peek(4, 24)? as u16;
        let fs = self.peek(4, 28)? as u16;
        let gs = self.peek(4, 32)? as u16;
        if off > 0xFFFF {
            return Err(Fault::GP0);
        }
        self.flags.set(fl);
        self.update_mode();
        for (s, v) in [
            (Seg::CS, cs),
            (Seg::SS, ss),
            (Seg::ES, es),
            (Seg::DS, ds),
            (Seg::FS, fs),
            (Seg::GS, gs),
        ] {
            self.load_seg_real(s, v);
        }
        self.regs[reg::ESP] = esp;
        self.next_eip = off;
        Ok(())
    }

    /// IRET in v86 mode: with IOPL 3 it works as in real mode but leaves
    /// IOPL (and VM, VIF, VIP) alone; otherwise #GP(0).
    fn iret_v86(&mut self, bytes: u32) -> Result<()> {
        if self.iopl() < 3 {
            return Err(Fault::GP0);
        }
        let off = self.peek(bytes, 0)?;
        let sel = self.peek(bytes, bytes)? as u16;
        let fl = self.peek(bytes, 2 * bytes)?;
        if off > 0xFFFF {
            return Err(Fault::GP0);
        }
        self.adjust_sp(3 * bytes);
        self.load_seg_real(Seg::CS, sel);
        self.next_eip = off;
        let keep = if bytes == 2 {
            0xFFFF_0000 | flags::IOPL
        } else {
            flags::IOPL | flags::VM | flags::VIF | flags::VIP
        };
        let v = (self.flags.get() & keep) | (fl & !keep);
        self.flags.set(v);
        self.update_mode();
        Ok(())
    }
}
