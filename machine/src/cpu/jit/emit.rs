//! x86-64 code for one block, written with iced-x86's code assembler.
//!
//! Register use: `rbx` holds the `Cpu` pointer for the whole function
//! (callee-saved, pushed in the prologue, which also aligns the stack for
//! calls); `eax`, `ecx`, `edx` are scratch. Guest registers live in
//! `cpu.regs` and are loaded and stored around each instruction.

use std::mem::{offset_of, size_of};

use iced_x86::code_asm::{
    AsmMemoryOperand, AsmRegister32, CodeAssembler, CodeLabel, al, ax, byte_ptr, cl, cx, dl,
    dword_ptr, eax, ecx, edx, esi, ptr, qword_ptr, rax, rbx, rcx, rdi, rdx, rsi, word_ptr,
};
use iced_x86::{Code, Mnemonic, OpKind};

use super::super::exec::Insn;
use super::super::flags::{Flags, Lazy};
use super::super::paging::{Tlb, TlbEntry};
use super::super::{Cpu, Seg, SegCache, reg};
use super::{ENDED, settle_cf, trampoline};

const REGS: usize = offset_of!(Cpu, regs);
const FLAGS: usize = offset_of!(Cpu, flags);
const SEGS: usize = offset_of!(Cpu, segs);
const TLB: usize = offset_of!(Cpu, tlb);
const STACK32: usize = offset_of!(Cpu, stack32);
const NEXT_EIP: usize = offset_of!(Cpu, next_eip);

/// A field of the CPU at byte offset `off`, as a memory operand.
fn at(off: usize) -> AsmMemoryOperand {
    rbx + off as i32
}

fn gpr(n: u8) -> AsmMemoryOperand {
    dword_ptr(at(REGS + 4 * (n as usize & 7)))
}

fn flag(field: usize) -> AsmMemoryOperand {
    dword_ptr(at(FLAGS + field))
}

type Asm = Result<(), iced_x86::IcedError>;

/// The ALU operations compiled natively.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AluOp {
    Add,
    Sub,
    Cmp,
    And,
    Or,
    Xor,
    Test,
}

/// An operand of `Emitter::sized`: a register (its bytes in `cpu.regs`),
/// the memory operand, or an immediate (masked to the width).
enum Opnd {
    Reg(AsmMemoryOperand),
    Mem,
    Imm(u32),
}

/// Register `n` of `w` bytes in `cpu.regs`: AL..BL are the low bytes of
/// EAX..EBX, AH..BH the next ones.
fn reg_at(n: u8, w: usize) -> AsmMemoryOperand {
    if w == 1 {
        at(REGS + 4 * (n as usize & 3) + ((n as usize >> 2) & 1))
    } else {
        at(REGS + 4 * (n as usize & 7))
    }
}

/// Where an ALU instruction's second operand comes from.
enum Src {
    Reg(u8),
    Imm(u32),
    Mem,
}

pub(super) struct Emitter {
    a: CodeAssembler,
}

impl Emitter {
    /// Emits the code for `insns`; `None` when no instruction would run
    /// natively (the trampolines alone gain nothing) or assembly fails.
    pub fn new(insns: &[Insn]) -> Option<Self> {
        let mut e = Emitter {
            a: CodeAssembler::new(64).ok()?,
        };
        match e.block(insns) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(e),
        }
    }

    /// The machine code for address `ip`.
    pub fn assemble(&mut self, ip: u64) -> Option<Vec<u8>> {
        self.a.assemble(ip).ok()
    }

    /// Emits the whole function; returns the number of native instructions.
    fn block(&mut self, insns: &[Insn]) -> Result<usize, iced_x86::IcedError> {
        let mut exit = self.a.create_label();
        let mut ended = self.a.create_label();
        let mut bails: Vec<(CodeLabel, usize)> = Vec::new();
        let mut native = 0;
        self.a.push(rbx)?;
        self.a.mov(rbx, rdi)?;
        for (k, d) in insns.iter().enumerate() {
            let bail = self.a.create_label();
            if self.branch(d, k, ended)? || self.conditional(d, k, ended)? {
                native += 1;
                continue;
            }
            match self.native(d, bail)? {
                Some(true) => {
                    native += 1;
                    bails.push((bail, k));
                }
                Some(false) => native += 1,
                None => self.call_handler(d, k, ended)?,
            }
        }
        self.a.mov(eax, insns.len() as u32)?;
        self.a.set_label(&mut exit)?;
        self.a.pop(rbx)?;
        self.a.ret()?;
        self.a.set_label(&mut ended)?;
        self.a.mov(eax, ENDED)?;
        self.a.jmp(exit)?;
        for (mut l, k) in bails {
            self.a.set_label(&mut l)?;
            self.a.mov(eax, k as u32)?;
            self.a.jmp(exit)?;
        }
        Ok(native)
    }

    /// Calls `trampoline(cpu, d, k)`; a non-zero result ends the block.
    fn call_handler(&mut self, d: &Insn, k: usize, ended: CodeLabel) -> Asm {
        let a = &mut self.a;
        a.mov(rdi, rbx)?;
        a.mov(rsi, d as *const Insn as u64)?;
        a.mov(edx, k as u32)?;
        a.mov(rax, trampoline as *const () as u64)?;
        a.call(rax)?;
        a.test(eax, eax)?;
        a.jne(ended)
    }

    /// Near branches with 32-bit operand size (Jcc, JMP, CALL rel32, RET):
    /// a fast path that writes `next_eip` as the handler would, and the
    /// handler through the trampoline for everything the fast path does
    /// not cover (lazy flags it cannot replay, a target past the CS
    /// limit, a 16-bit stack, a TLB miss). Returns false (nothing
    /// emitted) for other instructions.
    fn branch(
        &mut self,
        d: &Insn,
        k: usize,
        ended: CodeLabel,
    ) -> Result<bool, iced_x86::IcedError> {
        let i = &d.i;
        let cs_hi = at(SEGS + Seg::CS as usize * size_of::<SegCache>() + offset_of!(SegCache, hi));
        let next_eip = dword_ptr(at(NEXT_EIP));
        let esp = gpr(reg::ESP as u8);
        let mut slow = self.a.create_label();
        let mut done = self.a.create_label();
        match i.code() {
            Code::Jmp_rel8_32 | Code::Jmp_rel32_32 => {
                let target = i.near_branch32();
                self.a.cmp(dword_ptr(cs_hi), target)?;
                self.a.jb(slow)?;
                self.a.mov(next_eip, target)?;
                self.a.jmp(done)?;
            }
            Code::Call_rel32_32 => {
                let target = i.near_branch32();
                self.a.cmp(dword_ptr(cs_hi), target)?;
                self.a.jb(slow)?;
                self.a.cmp(byte_ptr(at(STACK32)), 0)?;
                self.a.je(slow)?;
                self.a.mov(eax, esp)?;
                self.a.sub(eax, 4)?;
                self.host_at(Seg::SS, 4, true, slow)?;
                self.a.mov(dword_ptr(rcx), d.next_ip)?;
                self.a.sub(esp, 4)?;
                self.a.mov(next_eip, target)?;
                self.a.jmp(done)?;
            }
            Code::Retnd => {
                self.a.cmp(byte_ptr(at(STACK32)), 0)?;
                self.a.je(slow)?;
                self.a.mov(eax, esp)?;
                self.host_at(Seg::SS, 4, false, slow)?;
                self.a.mov(eax, dword_ptr(rcx))?;
                self.a.cmp(eax, dword_ptr(cs_hi))?;
                self.a.ja(slow)?;
                self.a.mov(next_eip, eax)?;
                self.a.add(esp, 4)?;
                self.a.jmp(done)?;
            }
            _ if i.is_jcc_short_or_near() && matches!(i.op0_kind(), OpKind::NearBranch32) => {
                let cc = i.condition_code() as u32 - 1;
                let target = i.near_branch32();
                self.replay_flags(cc, slow)?;
                let mut taken = self.a.create_label();
                self.jcc(cc, taken)?;
                self.a.mov(next_eip, d.next_ip)?;
                self.a.jmp(done)?;
                self.a.set_label(&mut taken)?;
                self.a.cmp(dword_ptr(cs_hi), target)?;
                self.a.jb(slow)?;
                self.a.mov(next_eip, target)?;
                self.a.jmp(done)?;
            }
            _ => return Ok(false),
        }
        self.a.set_label(&mut slow)?;
        self.call_handler(d, k, ended)?;
        self.a.set_label(&mut done)?;
        // `done` needs an instruction of its own.
        self.a.nop()?;
        Ok(true)
    }

    /// Sets the host flags to what the pending lazy flags stand for, for
    /// condition `cc`, by replaying the recorded 32-bit operation; jumps
    /// to `slow` when it cannot.
    fn replay_flags(&mut self, cc: u32, slow: CodeLabel) -> Asm {
        if matches!(cc, 2 | 3) {
            // B / AE read CF alone, which every lazy kind gives.
            return self.host_cf();
        }
        let a = &mut self.a;
        let mut not_sub = a.create_label();
        let mut not_logic = a.create_label();
        let mut not_add = a.create_label();
        let mut ready = a.create_label();
        a.cmp(flag(offset_of!(Flags, sign)), 0x8000_0000u32)?;
        a.jne(slow)?;
        a.movzx(eax, byte_ptr(at(FLAGS + offset_of!(Flags, lazy))))?;
        a.mov(ecx, flag(offset_of!(Flags, a)))?;
        a.cmp(eax, Lazy::Sub as u32)?;
        a.jne(not_sub)?;
        a.cmp(ecx, flag(offset_of!(Flags, b)))?;
        a.jmp(ready)?;
        a.set_label(&mut not_sub)?;
        a.cmp(eax, Lazy::Logic as u32)?;
        a.jne(not_logic)?;
        a.mov(ecx, flag(offset_of!(Flags, res)))?;
        a.test(ecx, ecx)?;
        a.jmp(ready)?;
        a.set_label(&mut not_logic)?;
        a.cmp(eax, Lazy::Add as u32)?;
        a.jne(not_add)?;
        a.add(ecx, flag(offset_of!(Flags, b)))?;
        a.jmp(ready)?;
        a.set_label(&mut not_add)?;
        if matches!(cc >> 1, 2 | 4 | 5) {
            // Z, S and P follow the result alone (shifts, multiplies).
            let mut not_co = a.create_label();
            a.cmp(eax, Lazy::CarryOverflow as u32)?;
            a.jne(not_co)?;
            a.mov(ecx, flag(offset_of!(Flags, res)))?;
            a.test(ecx, ecx)?;
            a.jmp(ready)?;
            a.set_label(&mut not_co)?;
        }
        // INC/DEC keep CF in `bits`: replayed only for conditions without CF.
        if matches!(cc >> 1, 1 | 3) {
            a.jmp(slow)?;
        } else {
            let mut not_inc = a.create_label();
            a.cmp(eax, Lazy::Inc as u32)?;
            a.jne(not_inc)?;
            a.inc(ecx)?;
            a.jmp(ready)?;
            a.set_label(&mut not_inc)?;
            a.cmp(eax, Lazy::Dec as u32)?;
            a.jne(slow)?;
            a.dec(ecx)?;
        }
        a.set_label(&mut ready)?;
        a.nop()
    }

    /// Sets the host CF to the guest's CF, as `Flags::cf` derives it for
    /// every lazy kind (the operands are masked to the width, so the
    /// comparisons hold at any width). Clobbers `eax`, `edx`.
    fn host_cf(&mut self) -> Asm {
        let a = &mut self.a;
        let mut done = a.create_label();
        let lazy = byte_ptr(at(FLAGS + offset_of!(Flags, lazy)));
        a.movzx(eax, lazy)?;
        let kinds = [
            Lazy::Add,
            Lazy::Adc1,
            Lazy::Sub,
            Lazy::Sbb1,
            Lazy::Logic,
            Lazy::CarryOverflow,
        ];
        for kind in kinds {
            let mut next = a.create_label();
            a.cmp(eax, kind as u32)?;
            a.jne(next)?;
            match kind {
                // res < a
                Lazy::Add => {
                    a.mov(edx, flag(offset_of!(Flags, res)))?;
                    a.cmp(edx, flag(offset_of!(Flags, a)))?;
                }
                // res <= a, i.e. not a < res
                Lazy::Adc1 => {
                    a.mov(edx, flag(offset_of!(Flags, a)))?;
                    a.cmp(edx, flag(offset_of!(Flags, res)))?;
                    a.cmc()?;
                }
                // a < b
                Lazy::Sub => {
                    a.mov(edx, flag(offset_of!(Flags, a)))?;
                    a.cmp(edx, flag(offset_of!(Flags, b)))?;
                }
                // a <= b, i.e. not b < a
                Lazy::Sbb1 => {
                    a.mov(edx, flag(offset_of!(Flags, b)))?;
                    a.cmp(edx, flag(offset_of!(Flags, a)))?;
                    a.cmc()?;
                }
                Lazy::Logic => a.clc()?,
                // a != 0
                _ => {
                    a.mov(edx, flag(offset_of!(Flags, a)))?;
                    a.neg(edx)?;
                }
            }
            a.jmp(done)?;
            a.set_label(&mut next)?;
        }
        // None, Inc, Dec: CF is bit 0 of `bits`.
        a.bt(flag(offset_of!(Flags, bits)), 0)?;
        a.set_label(&mut done)?;
        a.nop()
    }

    /// ADC/SBB r32, r32 or imm: as `alu::<ADC | SBB, 4>`.
    fn adc_sbb(&mut self, d: &Insn, sbb: bool, src: Src) -> Asm {
        self.host_cf()?;
        let a = &mut self.a;
        a.setb(dl)?;
        a.movzx(edx, dl)?;
        match src {
            Src::Reg(r) => a.mov(eax, gpr(r))?,
            Src::Imm(v) => a.mov(eax, v)?,
            Src::Mem => unreachable!("register and immediate forms only"),
        }
        a.mov(ecx, gpr(d.r0))?;
        a.mov(flag(offset_of!(Flags, a)), ecx)?;
        a.mov(flag(offset_of!(Flags, b)), eax)?;
        a.bt(edx, 0)?;
        if sbb {
            a.sbb(ecx, eax)?;
            a.add(edx, Lazy::Sub as u32)?;
        } else {
            a.adc(ecx, eax)?;
            a.add(edx, Lazy::Add as u32)?;
        }
        a.mov(flag(offset_of!(Flags, res)), ecx)?;
        a.mov(flag(offset_of!(Flags, sign)), 0x8000_0000u32)?;
        a.mov(byte_ptr(at(FLAGS + offset_of!(Flags, lazy))), dl)?;
        a.mov(gpr(d.r0), ecx)
    }

    /// `j<cc> l` for condition number `cc` (the encoding's low nibble).
    fn jcc(&mut self, cc: u32, l: CodeLabel) -> Asm {
        let a = &mut self.a;
        match cc {
            0 => a.jo(l),
            1 => a.jno(l),
            2 => a.jb(l),
            3 => a.jae(l),
            4 => a.je(l),
            5 => a.jne(l),
            6 => a.jbe(l),
            7 => a.ja(l),
            8 => a.js(l),
            9 => a.jns(l),
            10 => a.jp(l),
            11 => a.jnp(l),
            12 => a.jl(l),
            13 => a.jge(l),
            14 => a.jle(l),
            _ => a.jg(l),
        }
    }

    /// Emits `d` natively when it is in the subset: `Some(uses_bail)`, or
    /// `None` (nothing emitted) for the trampoline.
    fn native(&mut self, d: &Insn, bail: CodeLabel) -> Result<Option<bool>, iced_x86::IcedError> {
        let i = &d.i;
        if !d.ip_blind || i.has_lock_prefix() {
            return Ok(None);
        }
        let n = i.op_count();
        let is_gpr32 =
            |op: u32| op < n && i.op_kind(op) == OpKind::Register && i.op_register(op).is_gpr32();
        let is_mem = |op: u32, bytes: usize| {
            op < n
                && i.op_kind(op) == OpKind::Memory
                && d.amask == u32::MAX
                && i.memory_size().size() == bytes
        };
        let is_imm = |op: u32| {
            op < n && matches!(i.op_kind(op), OpKind::Immediate32 | OpKind::Immediate8to32)
        };
        if let Some(mem) = self.sized(d, bail)? {
            return Ok(Some(mem));
        }
        let op = match i.mnemonic() {
            Mnemonic::Add => AluOp::Add,
            Mnemonic::Sub => AluOp::Sub,
            Mnemonic::Cmp => AluOp::Cmp,
            Mnemonic::And => AluOp::And,
            Mnemonic::Or => AluOp::Or,
            Mnemonic::Xor => AluOp::Xor,
            Mnemonic::Test => AluOp::Test,
            Mnemonic::Mov => {
                if is_gpr32(0) && is_gpr32(1) {
                    self.a.mov(eax, gpr(d.r1))?;
                    self.a.mov(gpr(d.r0), eax)?;
                    return Ok(Some(false));
                }
                if is_gpr32(0) && is_imm(1) {
                    self.a.mov(gpr(d.r0), d.imm)?;
                    return Ok(Some(false));
                }
                if is_gpr32(0) && is_mem(1, 4) {
                    self.host_addr(d, 4, false, bail)?;
                    self.a.mov(eax, dword_ptr(rcx))?;
                    self.a.mov(gpr(d.r0), eax)?;
                    return Ok(Some(true));
                }
                if is_mem(0, 4) && (is_gpr32(1) || is_imm(1)) {
                    self.host_addr(d, 4, true, bail)?;
                    if is_imm(1) {
                        self.a.mov(dword_ptr(rcx), d.imm)?;
                    } else {
                        self.a.mov(eax, gpr(d.r1))?;
                        self.a.mov(dword_ptr(rcx), eax)?;
                    }
                    return Ok(Some(true));
                }
                return Ok(None);
            }
            Mnemonic::Lea if i.code() == Code::Lea_r32_m && d.amask == u32::MAX => {
                self.ea(d)?;
                self.a.mov(gpr(d.r0), eax)?;
                return Ok(Some(false));
            }
            Mnemonic::Movzx | Mnemonic::Movsx if is_gpr32(0) => {
                let sx = i.mnemonic() == Mnemonic::Movsx;
                let mem = i.op1_kind() == OpKind::Memory;
                let bytes = if mem {
                    i.memory_size().size()
                } else {
                    i.op1_register().size()
                };
                if mem && !is_mem(1, bytes) {
                    return Ok(None);
                }
                let src = if mem {
                    self.host_addr(d, bytes as u32, false, bail)?;
                    rcx + 0
                } else if bytes == 1 {
                    // AL..BL are the low bytes of EAX..EBX, AH..BH the next.
                    at(REGS + 4 * (d.r1 as usize & 3) + ((d.r1 as usize >> 2) & 1))
                } else {
                    at(REGS + 4 * (d.r1 as usize & 7))
                };
                match (bytes, sx) {
                    (1, false) => self.a.movzx(eax, byte_ptr(src))?,
                    (1, true) => self.a.movsx(eax, byte_ptr(src))?,
                    (2, false) => self.a.movzx(eax, word_ptr(src))?,
                    (2, true) => self.a.movsx(eax, word_ptr(src))?,
                    _ => return Ok(None),
                }
                self.a.mov(gpr(d.r0), eax)?;
                return Ok(Some(mem));
            }
            Mnemonic::Push if i.code() == Code::Push_r32 => {
                // As `push_r32`'s fast path; a 16-bit stack takes the slow one.
                self.a.cmp(byte_ptr(at(STACK32)), 0)?;
                self.a.je(bail)?;
                self.a.mov(eax, gpr(reg::ESP as u8))?;
                self.a.sub(eax, 4)?;
                self.host_at(Seg::SS, 4, true, bail)?;
                self.a.mov(edx, gpr(d.r0))?;
                self.a.mov(dword_ptr(rcx), edx)?;
                self.a.sub(gpr(reg::ESP as u8), 4)?;
                return Ok(Some(true));
            }
            Mnemonic::Pop if i.code() == Code::Pop_r32 => {
                self.a.cmp(byte_ptr(at(STACK32)), 0)?;
                self.a.je(bail)?;
                self.a.mov(eax, gpr(reg::ESP as u8))?;
                self.host_at(Seg::SS, 4, false, bail)?;
                self.a.mov(edx, dword_ptr(rcx))?;
                // ESP first: POP ESP loads ESP with the popped value.
                self.a.add(gpr(reg::ESP as u8), 4)?;
                self.a.mov(gpr(d.r0), edx)?;
                return Ok(Some(true));
            }
            Mnemonic::Imul if n >= 2 && is_gpr32(0) && (is_gpr32(1) || is_mem(1, 4)) => {
                // As `imul_trunc::<4>`: CF = OF = the product overflowed.
                let mem = !is_gpr32(1);
                if mem {
                    self.host_addr(d, 4, false, bail)?;
                    self.a.mov(eax, dword_ptr(rcx))?;
                } else {
                    self.a.mov(eax, gpr(d.r1))?;
                }
                if n == 3 {
                    self.a.imul_3(ecx, eax, d.imm as i32)?;
                } else {
                    self.a.mov(ecx, gpr(d.r0))?;
                    self.a.imul_2(ecx, eax)?;
                }
                self.a.seto(dl)?;
                self.a.movzx(edx, dl)?;
                self.carry_overflow(d, edx_cf_of())?;
                return Ok(Some(mem));
            }
            Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar
                if is_gpr32(0) && i.op1_kind() == OpKind::Immediate8 =>
            {
                self.shift(d, i.mnemonic())?;
                return Ok(Some(false));
            }
            Mnemonic::Adc | Mnemonic::Sbb if is_gpr32(0) && (is_gpr32(1) || is_imm(1)) => {
                let src = if is_gpr32(1) {
                    Src::Reg(d.r1)
                } else {
                    Src::Imm(d.imm)
                };
                self.adc_sbb(d, i.mnemonic() == Mnemonic::Sbb, src)?;
                return Ok(Some(false));
            }
            _ if matches!(
                i.code(),
                Code::Nopw | Code::Nopd | Code::Pause | Code::Nop_rm16 | Code::Nop_rm32
            ) =>
            {
                return Ok(Some(false));
            }
            Mnemonic::Inc | Mnemonic::Dec if is_gpr32(0) => {
                self.inc_dec(d, i.mnemonic() == Mnemonic::Dec)?;
                return Ok(Some(false));
            }
            _ => return Ok(None),
        };
        if !is_gpr32(0) {
            return Ok(None);
        }
        let src = if is_gpr32(1) {
            Src::Reg(d.r1)
        } else if is_imm(1) {
            Src::Imm(d.imm)
        } else if is_mem(1, 4) {
            Src::Mem
        } else {
            return Ok(None);
        };
        let mem = matches!(src, Src::Mem);
        self.alu(d, op, src, bail)?;
        Ok(Some(mem))
    }

    /// MOV and the ALU group at 8 and 16 bits, and with a memory
    /// destination at any width (the 32-bit register-destination forms
    /// are `alu`'s): `Some(uses_bail)`, or `None` (nothing emitted).
    fn sized(&mut self, d: &Insn, bail: CodeLabel) -> Result<Option<bool>, iced_x86::IcedError> {
        let i = &d.i;
        let op = match i.mnemonic() {
            Mnemonic::Mov => None,
            Mnemonic::Add => Some(AluOp::Add),
            Mnemonic::Sub => Some(AluOp::Sub),
            Mnemonic::Cmp => Some(AluOp::Cmp),
            Mnemonic::And => Some(AluOp::And),
            Mnemonic::Or => Some(AluOp::Or),
            Mnemonic::Xor => Some(AluOp::Xor),
            Mnemonic::Test => Some(AluOp::Test),
            _ => return Ok(None),
        };
        if i.op_count() != 2 {
            return Ok(None);
        }
        let w = match i.op0_kind() {
            OpKind::Register => i.op0_register().size(),
            OpKind::Memory => i.memory_size().size(),
            _ => 0,
        };
        let mask = match w {
            1 => 0xFF,
            2 => 0xFFFF,
            4 => u32::MAX,
            _ => return Ok(None),
        };
        let operand = |k: u32| -> Option<Opnd> {
            match i.op_kind(k) {
                OpKind::Register => {
                    let r = i.op_register(k);
                    let n = if k == 0 { d.r0 } else { d.r1 };
                    ((r.is_gpr8() || r.is_gpr16() || r.is_gpr32()) && r.size() == w)
                        .then(|| Opnd::Reg(reg_at(n, w)))
                }
                OpKind::Memory => {
                    (d.amask == u32::MAX && i.memory_size().size() == w).then_some(Opnd::Mem)
                }
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32 => Some(Opnd::Imm(d.imm & mask)),
                _ => None,
            }
        };
        let (Some(dst), Some(src)) = (operand(0), operand(1)) else {
            return Ok(None);
        };
        if matches!(dst, Opnd::Imm(_)) || (w == 4 && matches!(dst, Opnd::Reg(_))) {
            return Ok(None);
        }
        let writes = !matches!(op, Some(AluOp::Cmp | AluOp::Test));
        let mem = matches!(dst, Opnd::Mem) || matches!(src, Opnd::Mem);
        if mem {
            // A memory destination that is written takes the write fast
            // path (as `rmw_ptr_fast` and `write_fast_*` do).
            self.host_addr(d, w as u32, matches!(dst, Opnd::Mem) && writes, bail)?;
            // `ecx` holds the destination's value below.
            self.a.mov(rsi, rcx)?;
        }
        self.load_sized(eax, &src, w)?;
        let Some(op) = op else {
            self.store_sized(&dst, w, false)?;
            return Ok(Some(mem));
        };
        self.load_sized(ecx, &dst, w)?;
        self.alu_ecx_eax(op, mask)?;
        if writes {
            self.store_sized(&dst, w, true)?;
        }
        Ok(Some(mem))
    }

    /// `r` = operand `o` of `w` bytes, zero-extended (memory through `rsi`).
    fn load_sized(&mut self, r: AsmRegister32, o: &Opnd, w: usize) -> Asm {
        let m = match *o {
            Opnd::Imm(v) => return self.a.mov(r, v),
            Opnd::Reg(m) => m,
            Opnd::Mem => rsi + 0,
        };
        match w {
            1 => self.a.movzx(r, byte_ptr(m)),
            2 => self.a.movzx(r, word_ptr(m)),
            _ => self.a.mov(r, dword_ptr(m)),
        }
    }

    /// Operand `o` (a register or memory through `rsi`) = the low `w`
    /// bytes of `ecx` (`from_ecx`) or `eax`.
    fn store_sized(&mut self, o: &Opnd, w: usize, from_ecx: bool) -> Asm {
        let m = match *o {
            Opnd::Reg(m) => m,
            _ => rsi + 0,
        };
        match (w, from_ecx) {
            (1, true) => self.a.mov(byte_ptr(m), cl),
            (1, false) => self.a.mov(byte_ptr(m), al),
            (2, true) => self.a.mov(word_ptr(m), cx),
            (2, false) => self.a.mov(word_ptr(m), ax),
            (_, true) => self.a.mov(dword_ptr(m), ecx),
            (_, false) => self.a.mov(dword_ptr(m), eax),
        }
    }

    /// `r0 = r0 OP src` at 32 bits, recording the flags as `alu::<OP, 4>` does.
    fn alu(&mut self, d: &Insn, op: AluOp, src: Src, bail: CodeLabel) -> Asm {
        // b in eax, a in ecx (the memory operand first: it may bail).
        match src {
            Src::Mem => {
                self.host_addr(d, 4, false, bail)?;
                self.a.mov(eax, dword_ptr(rcx))?;
            }
            Src::Reg(r) => self.a.mov(eax, gpr(r))?,
            Src::Imm(v) => self.a.mov(eax, v)?,
        }
        self.a.mov(ecx, gpr(d.r0))?;
        self.alu_ecx_eax(op, u32::MAX)?;
        if !matches!(op, AluOp::Cmp | AluOp::Test) {
            self.a.mov(gpr(d.r0), ecx)?;
        }
        Ok(())
    }

    /// `ecx = ecx OP eax` cut to the operand size `mask` (0xFF, 0xFFFF or
    /// all ones), recording the lazy flags as `alu::<OP, W>` does.
    fn alu_ecx_eax(&mut self, op: AluOp, mask: u32) -> Asm {
        let a = &mut self.a;
        let lazy = match op {
            AluOp::Add | AluOp::Sub | AluOp::Cmp => {
                a.mov(flag(offset_of!(Flags, a)), ecx)?;
                a.mov(flag(offset_of!(Flags, b)), eax)?;
                if op == AluOp::Add {
                    a.add(ecx, eax)?;
                    Lazy::Add
                } else {
                    a.sub(ecx, eax)?;
                    Lazy::Sub
                }
            }
            _ => {
                a.mov(flag(offset_of!(Flags, a)), 0u32)?;
                a.mov(flag(offset_of!(Flags, b)), 0u32)?;
                match op {
                    AluOp::Or => a.or(ecx, eax)?,
                    AluOp::Xor => a.xor(ecx, eax)?,
                    _ => a.and(ecx, eax)?,
                }
                Lazy::Logic
            }
        };
        if mask != u32::MAX {
            a.and(ecx, mask)?;
        }
        a.mov(flag(offset_of!(Flags, res)), ecx)?;
        a.mov(flag(offset_of!(Flags, sign)), (mask >> 1) + 1)?;
        a.mov(byte_ptr(at(FLAGS + offset_of!(Flags, lazy))), lazy as u32)?;
        Ok(())
    }

    /// Records `ecx` as the result with CF and OF (0 or 1) from the
    /// given registers, as `Flags::carry_overflow` at 32 bits, and stores
    /// it in r0.
    fn carry_overflow(&mut self, d: &Insn, (cf, of): (AsmRegister32, AsmRegister32)) -> Asm {
        let a = &mut self.a;
        a.mov(flag(offset_of!(Flags, a)), cf)?;
        a.mov(flag(offset_of!(Flags, b)), of)?;
        a.mov(flag(offset_of!(Flags, res)), ecx)?;
        a.mov(flag(offset_of!(Flags, sign)), 0x8000_0000u32)?;
        a.mov(
            byte_ptr(at(FLAGS + offset_of!(Flags, lazy))),
            Lazy::CarryOverflow as u32,
        )?;
        a.mov(gpr(d.r0), ecx)
    }

    /// SHL/SHR/SAR r32, imm8, as `shift_value::<K, 4>`: a count of 0
    /// changes nothing; OF follows the last single-bit step.
    fn shift(&mut self, d: &Insn, m: Mnemonic) -> Asm {
        let count = d.imm & 31;
        if count == 0 {
            return Ok(());
        }
        let a = &mut self.a;
        a.mov(ecx, gpr(d.r0))?;
        match m {
            Mnemonic::Shl | Mnemonic::Sal => {
                a.mov(eax, ecx)?;
                a.shr(eax, 32 - count)?;
                a.and(eax, 1)?;
                a.shl(ecx, count)?;
                a.mov(edx, ecx)?;
                a.shr(edx, 31)?;
                a.xor(edx, eax)?;
            }
            _ => {
                if count > 1 {
                    if m == Mnemonic::Shr {
                        a.shr(ecx, count - 1)?;
                    } else {
                        a.sar(ecx, count - 1)?;
                    }
                }
                a.mov(eax, ecx)?;
                a.and(eax, 1)?;
                if m == Mnemonic::Shr {
                    a.mov(edx, ecx)?;
                    a.shr(edx, 31)?;
                    a.shr(ecx, 1)?;
                } else {
                    a.xor(edx, edx)?;
                    a.sar(ecx, 1)?;
                }
            }
        }
        self.carry_overflow(d, (eax, edx))
    }

    /// SETcc r8 and CMOVcc r32, r32: the condition from the replayed
    /// flags, the handler through the trampoline when they cannot be.
    fn conditional(
        &mut self,
        d: &Insn,
        k: usize,
        ended: CodeLabel,
    ) -> Result<bool, iced_x86::IcedError> {
        let i = &d.i;
        use Mnemonic as M;
        let set = matches!(
            i.mnemonic(),
            M::Seto
                | M::Setno
                | M::Setb
                | M::Setae
                | M::Sete
                | M::Setne
                | M::Setbe
                | M::Seta
                | M::Sets
                | M::Setns
                | M::Setp
                | M::Setnp
                | M::Setl
                | M::Setge
                | M::Setle
                | M::Setg
        ) && i.op0_kind() == OpKind::Register
            && i.op0_register().is_gpr8()
            && i.op_count() == 1;
        let cmov = matches!(
            i.mnemonic(),
            M::Cmovo
                | M::Cmovno
                | M::Cmovb
                | M::Cmovae
                | M::Cmove
                | M::Cmovne
                | M::Cmovbe
                | M::Cmova
                | M::Cmovs
                | M::Cmovns
                | M::Cmovp
                | M::Cmovnp
                | M::Cmovl
                | M::Cmovge
                | M::Cmovle
                | M::Cmovg
        ) && i.op_count() == 2
            && i.op0_kind() == OpKind::Register
            && i.op0_register().is_gpr32()
            && ((i.op1_kind() == OpKind::Register && i.op1_register().is_gpr32())
                || (i.op1_kind() == OpKind::Memory
                    && d.amask == u32::MAX
                    && i.memory_size().size() == 4));
        if !(set || cmov) || !d.ip_blind || i.has_lock_prefix() {
            return Ok(false);
        }
        let cc = i.condition_code() as u32 - 1;
        let mut slow = self.a.create_label();
        let mut done = self.a.create_label();
        let mut yes = self.a.create_label();
        let cmov_mem = cmov && i.op1_kind() == OpKind::Memory;
        if cmov_mem {
            // CMOV reads its source whatever the condition (`data::cmov`).
            self.host_addr(d, 4, false, slow)?;
            self.a.mov(esi, dword_ptr(rcx))?;
        }
        self.replay_flags(cc, slow)?;
        self.jcc(cc, yes)?;
        let r8 = at(REGS + 4 * (d.r0 as usize & 3) + ((d.r0 as usize >> 2) & 1));
        if set {
            self.a.mov(byte_ptr(r8), 0u32)?;
        }
        self.a.jmp(done)?;
        self.a.set_label(&mut yes)?;
        if set {
            self.a.mov(byte_ptr(r8), 1u32)?;
        } else if cmov_mem {
            self.a.mov(gpr(d.r0), esi)?;
        } else {
            self.a.mov(eax, gpr(d.r1))?;
            self.a.mov(gpr(d.r0), eax)?;
        }
        self.a.jmp(done)?;
        self.a.set_label(&mut slow)?;
        self.call_handler(d, k, ended)?;
        self.a.set_label(&mut done)?;
        self.a.nop()?;
        Ok(true)
    }

    /// INC r32 / DEC r32, as `Flags::inc_dec` records them.
    fn inc_dec(&mut self, d: &Insn, dec: bool) -> Asm {
        let a = &mut self.a;
        let mut keep = a.create_label();
        a.movzx(eax, byte_ptr(at(FLAGS + offset_of!(Flags, lazy))))?;
        for kept in [Lazy::None, Lazy::Inc, Lazy::Dec] {
            a.cmp(eax, kept as u32)?;
            a.je(keep)?;
        }
        a.mov(rdi, rbx)?;
        a.mov(rax, settle_cf as *const () as u64)?;
        a.call(rax)?;
        a.set_label(&mut keep)?;
        a.mov(ecx, gpr(d.r0))?;
        a.mov(flag(offset_of!(Flags, a)), ecx)?;
        a.mov(flag(offset_of!(Flags, b)), 1u32)?;
        if dec {
            a.sub(ecx, 1)?;
        } else {
            a.add(ecx, 1)?;
        }
        a.mov(flag(offset_of!(Flags, res)), ecx)?;
        a.mov(flag(offset_of!(Flags, sign)), 0x8000_0000u32)?;
        let lazy = if dec { Lazy::Dec } else { Lazy::Inc };
        a.mov(byte_ptr(at(FLAGS + offset_of!(Flags, lazy))), lazy as u32)?;
        a.mov(gpr(d.r0), ecx)
    }

    /// The effective address (32-bit addressing) into `eax`; clobbers `ecx`.
    fn ea(&mut self, d: &Insn) -> Asm {
        let a = &mut self.a;
        a.mov(eax, d.disp)?;
        if d.base as usize != reg::ZERO {
            a.add(eax, gpr(d.base))?;
        }
        if d.index as usize != reg::ZERO {
            a.mov(ecx, gpr(d.index))?;
            if d.scale != 0 {
                a.shl(ecx, (d.scale & 31) as u32)?;
            }
            a.add(eax, ecx)?;
        }
        Ok(())
    }

    /// The host address of the memory operand into `rcx`, through the
    /// same fast path as `read_fast_u32`/`write_fast_u32`: segment bound,
    /// then the TLB entry's read or write tag. Jumps to `bail` when the
    /// fast path does not apply. Clobbers `eax`, `edx`.
    fn host_addr(&mut self, d: &Insn, bytes: u32, write: bool, bail: CodeLabel) -> Asm {
        self.ea(d)?;
        self.host_at(d.seg, bytes, write, bail)
    }

    /// `host_addr` for the offset in `eax` within segment `seg`.
    fn host_at(&mut self, seg: Seg, bytes: u32, write: bool, bail: CodeLabel) -> Asm {
        let a = &mut self.a;
        let seg = SEGS + seg as usize * size_of::<SegCache>();
        let end = if write {
            offset_of!(SegCache, wend)
        } else {
            offset_of!(SegCache, rend)
        };
        a.cmp(eax, dword_ptr(at(seg + end)))?;
        a.jae(bail)?;
        a.add(eax, dword_ptr(at(seg + offset_of!(SegCache, base))))?;
        // Entry = sets + ((user_off | (lin >> 12) & 1023) * size).
        a.mov(edx, eax)?;
        a.shr(edx, 12)?;
        a.and(edx, (super::super::paging::TLB_SIZE - 1) as u32)?;
        a.or(rdx, qword_ptr(at(TLB + offset_of!(Tlb, user_off))))?;
        a.shl(rdx, size_of::<TlbEntry>().trailing_zeros())?;
        a.add(rdx, qword_ptr(at(TLB + offset_of!(Tlb, sets))))?;
        a.lea(ecx, ptr(rax + (bytes as i32 - 1)))?;
        a.and(ecx, !0xFFFu32)?;
        let tag = if write {
            offset_of!(TlbEntry, wtag)
        } else {
            offset_of!(TlbEntry, rtag)
        };
        a.cmp(ecx, dword_ptr(rdx + tag as i32))?;
        a.jne(bail)?;
        a.mov(rcx, qword_ptr(rdx + offset_of!(TlbEntry, host) as i32))?;
        a.add(rcx, rax)
    }
}

const _: () = assert!(size_of::<TlbEntry>().is_power_of_two());

/// CF and OF both in `edx` (a multiply's overflow).
fn edx_cf_of() -> (AsmRegister32, AsmRegister32) {
    (edx, edx)
}
