//! Exception and interrupt delivery: the double-fault rules, the real-mode
//! IVT, protected-mode IDT gates (interrupt, trap, task) with privilege
//! changes, and the v86 variants; plus INT n, INT3, INTO and INT1.

use iced_x86::{Code, Instruction};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result, vector};
use super::segment::{Desc, SegCache, rights, sel_error, sys_type};
use super::task::TaskSource;
use super::{Cpu, Seg, ShutdownReason, flags, reg};

/// What is being delivered, for the rules that differ (DPL checks,
/// error codes, the v86 IOPL check, the EXT bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntKind {
    /// An exception raised by the CPU.
    Exception,
    /// INT n / INT3 / INTO: the gate DPL is checked against CPL.
    Software,
    /// INT1 (ICEBP): like an exception, no DPL check.
    Icebp,
    /// INTR or NMI.
    External,
}

impl Cpu {
    /// Delivers an exception an instruction raised, applying the
    /// double-fault rules (SDM vol. 3, table 6-5): a contributory fault or
    /// page fault during delivery of another becomes #DF; a fault while
    /// delivering #DF shuts the CPU down (triple fault).
    pub(crate) fn deliver_fault(&mut self, f: Fault) {
        let mut current = f;
        loop {
            if current.vector == vector::PF || Fault::is_contributory(current.vector) {
                self.halted = false;
            }
            let ret = self.eip;
            match self.interrupt(
                current.vector,
                IntKind::Exception,
                current.error_code(),
                ret,
            ) {
                Ok(()) => return,
                Err(next) => {
                    if current.vector == vector::DF {
                        self.shutdown = Some(ShutdownReason::TripleFault);
                        return;
                    }
                    let cur_c = Fault::is_contributory(current.vector);
                    let cur_pf = current.vector == vector::PF;
                    let next_c = Fault::is_contributory(next.vector);
                    let next_pf = next.vector == vector::PF;
                    current = if (cur_c && next_c) || (cur_pf && (next_c || next_pf)) {
                        Fault::with_code(vector::DF, 0)
                    } else {
                        next
                    };
                }
            }
        }
    }

    /// Delivers an external interrupt (INTR vector or NMI) at an
    /// instruction boundary.
    pub(crate) fn deliver_external(&mut self, v: u8) {
        let ret = self.eip;
        if let Err(f) = self.interrupt(v, IntKind::External, None, ret) {
            self.deliver_fault(f);
        }
    }

    /// Transfers control through IDT/IVT entry `v`, pushing `ret` as the
    /// return EIP. On success CS:EIP (and `next_eip`) is the handler.
    pub(crate) fn interrupt(
        &mut self,
        v: u8,
        kind: IntKind,
        error: Option<u32>,
        ret: u32,
    ) -> Result<()> {
        self.stop_block = true;
        if !self.protected_mode() {
            return self.interrupt_real(v, ret);
        }
        self.interrupt_protected(v, kind, error, ret)
    }

    /// Real mode: FLAGS, CS, IP on the stack, CS:IP from the IVT.
    fn interrupt_real(&mut self, v: u8, ret: u32) -> Result<()> {
        let entry = v as u32 * 4;
        if entry + 3 > self.idtr.limit as u32 {
            return Err(Fault::gp(0));
        }
        let base = self.idtr.base;
        let ip = self.read_sys_u16(base.wrapping_add(entry))?;
        let cs = self.read_sys_u16(base.wrapping_add(entry + 2))?;
        let fl = self.flags.get();
        let old_cs = self.segs[Seg::CS as usize].selector;
        let sp = self.regs[super::reg::ESP];
        let pushed = self
            .push(2, fl)
            .and_then(|_| self.push(2, old_cs as u32))
            .and_then(|_| self.push(2, ret));
        if let Err(f) = pushed {
            self.regs[super::reg::ESP] = sp;
            return Err(f);
        }
        self.flags
            .set_control(flags::IF | flags::TF | flags::AC, false);
        self.load_seg_real(Seg::CS, cs);
        self.eip = ip as u32;
        self.next_eip = ip as u32;
        Ok(())
    }

    /// Protected mode (and v86): through an IDT gate (SDM vol. 3, 6.12;
    /// vol. 2, INT n). Nothing is committed until every check has passed
    /// and the frame is written, so a fault leaves the old state intact.
    fn interrupt_protected(
        &mut self,
        v: u8,
        kind: IntKind,
        error: Option<u32>,
        ret: u32,
    ) -> Result<()> {
        // EXT: the event did not come from the program's INT n/INT3/INTO.
        let ext = (kind != IntKind::Software) as u32;
        let v86 = self.v86_mode();
        if kind == IntKind::Software && v86 && self.iopl() < 3 {
            return Err(Fault::GP0);
        }
        let idt_err = v as u32 * 8 + 2 + ext;
        let entry = v as u32 * 8;
        if entry + 7 > self.idtr.limit as u32 {
            return Err(Fault::gp(idt_err));
        }
        let at = self.idtr.base.wrapping_add(entry);
        let lo = self.read_sys_u32(at)? as u64;
        let hi = self.read_sys_u32(at.wrapping_add(4))? as u64;
        let gate = Desc(lo | hi << 32);
        let ty = gate.system_type();
        if !matches!(
            ty,
            Some(
                sys_type::TASK_GATE
                    | sys_type::INT_GATE16
                    | sys_type::TRAP_GATE16
                    | sys_type::INT_GATE32
                    | sys_type::TRAP_GATE32
            )
        ) {
            return Err(Fault::gp(idt_err));
        }
        if kind == IntKind::Software && gate.dpl() < self.cpl {
            return Err(Fault::gp(idt_err));
        }
        if !gate.present() {
            return Err(Fault::np(idt_err));
        }
        if ty == Some(sys_type::TASK_GATE) {
            let tss = gate.gate_selector();
            let desc = self.task_gate_target(tss, ext)?;
            return self.task_switch(tss, desc, TaskSource::Int, error, ret);
        }

        let sel = gate.gate_selector();
        if sel & 0xFFFC == 0 {
            return Err(Fault::gp(ext));
        }
        let serr = sel_error(sel) | ext;
        let code = self.read_desc_or(sel, Fault::gp(serr))?;
        if !code.is_code() || code.dpl() > self.cpl {
            return Err(Fault::gp(serr));
        }
        if !code.present() {
            return Err(Fault::np(serr));
        }
        let off = gate.gate_offset();
        if off > code.limit() {
            return Err(Fault::gp(ext));
        }
        let bytes = if gate.access() & 8 != 0 { 4 } else { 2 };
        let trap = gate.access() & 1 != 0;
        let old_flags = self.flags.get();
        let old_cs = self.segs[Seg::CS as usize].selector as u32;
        let old_ss = self.segs[Seg::SS as usize].selector as u32;
        let old_esp = self.regs[reg::ESP];

        let inner = !code.conforming_code() && code.dpl() < self.cpl;
        let (new_cpl, mut st) = if inner {
            let dpl = code.dpl();
            if v86 && dpl != 0 {
                return Err(Fault::gp(serr));
            }
            let (ss_sel, esp) = self.tss_stack(dpl, ext)?;
            let ss = self
                .check_stack_seg(ss_sel, dpl, Fault::ts)
                .map_err(|f| with_ext(f, ext))?;
            let mut st = FrameStack {
                cache: ss,
                esp,
                user: false,
                fault: Fault::ss(sel_error(ss_sel) | ext),
            };
            if v86 {
                for s in [Seg::GS, Seg::FS, Seg::DS, Seg::ES] {
                    let sel = self.segs[s as usize].selector as u32;
                    self.frame_push(&mut st, bytes, sel)?;
                }
            }
            self.frame_push(&mut st, bytes, old_ss)?;
            self.frame_push(&mut st, bytes, old_esp)?;
            (dpl, st)
        } else {
            if v86 {
                return Err(Fault::gp(serr));
            }
            let st = FrameStack {
                cache: self.segs[Seg::SS as usize],
                esp: old_esp,
                user: self.cpl == 3,
                fault: Fault::ss(ext),
            };
            (self.cpl, st)
        };
        self.frame_push(&mut st, bytes, old_flags)?;
        self.frame_push(&mut st, bytes, old_cs)?;
        self.frame_push(&mut st, bytes, ret)?;
        if let Some(e) = error {
            self.frame_push(&mut st, bytes, e)?;
        }
        self.set_desc_accessed(sel)?;

        // Commit.
        if inner {
            self.segs[Seg::SS as usize] = st.cache;
        }
        self.regs[reg::ESP] = st.esp;
        if v86 {
            for s in [Seg::ES, Seg::DS, Seg::FS, Seg::GS] {
                self.segs[s as usize] = SegCache::null(0);
            }
        }
        self.flags
            .set_control(flags::TF | flags::NT | flags::RF | flags::VM, false);
        if !trap {
            self.flags.set_control(flags::IF, false);
        }
        self.segs[Seg::CS as usize] = code.cache((sel & !3) | new_cpl as u16);
        self.put_cpl(new_cpl);
        self.update_mode();
        self.eip = off;
        self.next_eip = off;
        Ok(())
    }

    /// EFLAGS.IOPL.
    #[inline]
    pub(crate) fn iopl(&self) -> u8 {
        ((self.flags.control() & flags::IOPL) >> 12) as u8
    }

    /// The stack for privilege level `dpl` from the current TSS: (SS, ESP).
    /// #TS(TR selector) when the TSS is too short to hold it.
    pub(crate) fn tss_stack(&mut self, dpl: u8, ext: u32) -> Result<(u16, u32)> {
        let tr = self.tr;
        let fault = Fault::ts(sel_error(tr.selector) | ext);
        let dpl = dpl as u32;
        if tr.attr & 8 != 0 {
            let off = 4 + 8 * dpl;
            if off + 5 > tr.limit {
                return Err(fault);
            }
            let esp = self.read_sys_u32(tr.base.wrapping_add(off))?;
            let ss = self.read_sys_u16(tr.base.wrapping_add(off + 4))?;
            Ok((ss, esp))
        } else {
            let off = 2 + 4 * dpl;
            if off + 3 > tr.limit {
                return Err(fault);
            }
            let sp = self.read_sys_u16(tr.base.wrapping_add(off))?;
            let ss = self.read_sys_u16(tr.base.wrapping_add(off + 2))?;
            Ok((ss, sp as u32))
        }
    }

    /// Pushes onto a stack that is not (yet) SS:ESP, checking its limit.
    pub(crate) fn frame_push(&mut self, st: &mut FrameStack, bytes: u32, v: u32) -> Result<()> {
        let mask = if st.cache.big() { u32::MAX } else { 0xFFFF };
        let sp = st.esp.wrapping_sub(bytes) & mask;
        let c = &st.cache;
        if c.rights & rights::WRITE == 0 || sp < c.lo || sp > c.hi || c.hi - sp < bytes - 1 {
            return Err(st.fault);
        }
        let lin = c.base.wrapping_add(sp);
        if bytes == 2 {
            self.write_lin_u16(lin, v as u16, st.user)?;
        } else {
            self.write_lin_u32(lin, v, st.user)?;
        }
        st.esp = (st.esp & !mask) | sp;
        Ok(())
    }
}

/// A stack a frame is built on before anything is committed: the current
/// SS:ESP or a more privileged stack taken from the TSS.
pub(crate) struct FrameStack {
    pub cache: SegCache,
    pub esp: u32,
    /// Accessed with user privilege (CPL 3).
    pub user: bool,
    /// What a push outside the segment raises.
    pub fault: Fault,
}

/// Adds the EXT bit to the error code of a #TS, #NP, #SS or #GP.
pub(crate) fn with_ext(f: Fault, ext: u32) -> Fault {
    match (f.vector, f.error_code()) {
        (vector::TS | vector::NP | vector::SS | vector::GP, Some(e)) => {
            Fault::with_code(f.vector, e | ext)
        }
        _ => f,
    }
}

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    Some(match i.code() {
        Code::Int_imm8 => int_imm8,
        Code::Int3 => int3,
        Code::Into => into,
        Code::Int1 => int1,
        Code::Pushfw | Code::Pushfd => pushf,
        Code::Popfw | Code::Popfd => popf,
        Code::Cli => cli,
        Code::Sti => sti,
        _ => return None,
    })
}

/// INT imm8.
fn int_imm8(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    software_int(cpu, d.imm as u8, IntKind::Software)
}

/// INT3.
fn int3(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    software_int(cpu, vector::BP, IntKind::Software)
}

/// INTO: #OF trap when OF is set.
fn into(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    if !cpu.flags.of() {
        return Ok(());
    }
    software_int(cpu, vector::OF, IntKind::Software)
}

/// INT1 (ICEBP): a #DB trap without the gate DPL check.
fn int1(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    software_int(cpu, vector::DB, IntKind::Icebp)
}

/// A trap-style interrupt: the return address is the next instruction.
fn software_int(cpu: &mut Cpu, v: u8, kind: IntKind) -> Result<()> {
    let ret = cpu.next_eip;
    cpu.interrupt(v, kind, None, ret)?;
    cpu.next_eip = cpu.eip;
    Ok(())
}

/// Whether CLI/STI/PUSHF/POPF-class IF changes are allowed: always in real
/// mode; in v86 mode only with IOPL 3; otherwise at CPL ≤ IOPL.
fn if_allowed(cpu: &Cpu) -> bool {
    !cpu.protected_mode() || cpu.cpl <= cpu.iopl()
}

/// PUSHF/PUSHFD: the 32-bit image has VM and RF clear. In v86 mode with
/// IOPL < 3, #GP(0).
fn pushf(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if cpu.v86_mode() && cpu.iopl() < 3 {
        return Err(Fault::GP0);
    }
    let bytes = if d.i.code() == Code::Pushfd { 4 } else { 2 };
    let v = cpu.flags.get() & !(flags::VM | flags::RF);
    cpu.push(bytes, v)
}

/// POPF/POPFD: IOPL changes only at CPL 0 (never in v86 mode), IF only at
/// CPL ≤ IOPL; VM, VIF and VIP are never changed, RF is cleared. In v86
/// mode with IOPL < 3, #GP(0).
fn popf(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v86 = cpu.v86_mode();
    if v86 && cpu.iopl() < 3 {
        return Err(Fault::GP0);
    }
    let bytes = if d.i.code() == Code::Popfd { 4 } else { 2 };
    let v = cpu.pop(bytes)?;
    let mut mask = flags::ARITH | flags::TF | flags::DF | flags::NT | flags::AC | flags::ID;
    if cpu.cpl == 0 && !v86 {
        mask |= flags::IOPL;
    }
    if if_allowed(cpu) {
        mask |= flags::IF;
    }
    if bytes == 2 {
        mask &= 0xFFFF;
    }
    let new = (cpu.flags.get() & !mask) | (v & mask);
    cpu.flags.set(new & !flags::RF);
    // IF or TF may have changed: let the run loop look again.
    cpu.stop_block = true;
    Ok(())
}

/// CLI: #GP(0) when CPL > IOPL (v86: IOPL < 3).
fn cli(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    if !if_allowed(cpu) {
        return Err(Fault::GP0);
    }
    cpu.flags.set_control(flags::IF, false);
    Ok(())
}

/// STI: #GP(0) when CPL > IOPL (v86: IOPL < 3). Setting IF from 0 holds
/// interrupts off for one more instruction.
fn sti(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    if !if_allowed(cpu) {
        return Err(Fault::GP0);
    }
    if !cpu.flags.test(flags::IF) {
        cpu.flags.set_control(flags::IF, true);
        cpu.irq_shadow = true;
        cpu.stop_block = true;
    }
    Ok(())
}
