//! Exception and interrupt delivery: the double-fault rules, the real-mode
//! IVT, protected-mode IDT gates (interrupt, trap, task) with privilege
//! changes, and the v86 variants; plus INT n, INT3, INTO and INT1.

use iced_x86::{Code, Instruction};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result, vector};
use super::{Cpu, Seg, ShutdownReason, flags};

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
            match self.interrupt(current.vector, IntKind::Exception, current.error_code, ret) {
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

    /// Protected mode (and v86): through an IDT gate.
    fn interrupt_protected(
        &mut self,
        v: u8,
        kind: IntKind,
        error: Option<u32>,
        ret: u32,
    ) -> Result<()> {
        let _ = (v, kind, error, ret);
        Err(Fault::gp(0))
    }
}

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    Some(match i.code() {
        Code::Int_imm8 => int_imm8,
        Code::Int3 => int3,
        Code::Into => into,
        Code::Int1 => int1,
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
