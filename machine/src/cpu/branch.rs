//! Near control transfers: Jcc, JMP and CALL near (relative and r/m), RET
//! near, LOOP/LOOPE/LOOPNE and JCXZ/JECXZ.
//!
//! Every target is checked against the CS limit (#GP(0)) before anything
//! else changes. iced-x86 has already added relative displacements to the
//! decode-time EIP (blocks are keyed by EIP, so that stays right) and
//! truncated the target to 16 bits for a 16-bit operand size. A taken
//! branch only writes `cpu.next_eip`: the block ends at it anyway.

use iced_x86::{Code, Instruction};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::{Cpu, Seg, reg};

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    use Code::*;
    Some(match i.code() {
        Jmp_rel8_16 | Jmp_rel8_32 | Jmp_rel16 | Jmp_rel32_32 => jmp_rel,
        Jmp_rm16 => jmp_rm::<2>,
        Jmp_rm32 => jmp_rm::<4>,
        Call_rel16 => call_rel::<2>,
        Call_rel32_32 => call_rel::<4>,
        Call_rm16 => call_rm::<2>,
        Call_rm32 => call_rm::<4>,
        Retnw => ret::<2, false>,
        Retnd => ret::<4, false>,
        Retnw_imm16 => ret::<2, true>,
        Retnd_imm16 => ret::<4, true>,
        Loop_rel8_16_CX | Loop_rel8_32_CX => loop_::<false, 0>,
        Loop_rel8_16_ECX | Loop_rel8_32_ECX => loop_::<true, 0>,
        Loope_rel8_16_CX | Loope_rel8_32_CX => loop_::<false, 1>,
        Loope_rel8_16_ECX | Loope_rel8_32_ECX => loop_::<true, 1>,
        Loopne_rel8_16_CX | Loopne_rel8_32_CX => loop_::<false, 2>,
        Loopne_rel8_16_ECX | Loopne_rel8_32_ECX => loop_::<true, 2>,
        Jcxz_rel8_16 | Jcxz_rel8_32 => jcxz::<false>,
        Jecxz_rel8_16 | Jecxz_rel8_32 => jcxz::<true>,
        c => return jcc_handler(c),
    })
}

/// Jcc rel8/rel16/rel32, one instantiation per condition.
fn jcc_handler(c: Code) -> Option<Handler> {
    use Code::*;
    macro_rules! by_cc {
        ($($a:ident $b:ident $c:ident $d:ident = $cc:literal),* $(,)?) => {
            match c {
                $($a | $b | $c | $d => Some(jcc::<$cc>),)*
                _ => None,
            }
        };
    }
    by_cc!(
        Jo_rel8_16 Jo_rel8_32 Jo_rel16 Jo_rel32_32 = 0,
        Jno_rel8_16 Jno_rel8_32 Jno_rel16 Jno_rel32_32 = 1,
        Jb_rel8_16 Jb_rel8_32 Jb_rel16 Jb_rel32_32 = 2,
        Jae_rel8_16 Jae_rel8_32 Jae_rel16 Jae_rel32_32 = 3,
        Je_rel8_16 Je_rel8_32 Je_rel16 Je_rel32_32 = 4,
        Jne_rel8_16 Jne_rel8_32 Jne_rel16 Jne_rel32_32 = 5,
        Jbe_rel8_16 Jbe_rel8_32 Jbe_rel16 Jbe_rel32_32 = 6,
        Ja_rel8_16 Ja_rel8_32 Ja_rel16 Ja_rel32_32 = 7,
        Js_rel8_16 Js_rel8_32 Js_rel16 Js_rel32_32 = 8,
        Jns_rel8_16 Jns_rel8_32 Jns_rel16 Jns_rel32_32 = 9,
        Jp_rel8_16 Jp_rel8_32 Jp_rel16 Jp_rel32_32 = 10,
        Jnp_rel8_16 Jnp_rel8_32 Jnp_rel16 Jnp_rel32_32 = 11,
        Jl_rel8_16 Jl_rel8_32 Jl_rel16 Jl_rel32_32 = 12,
        Jge_rel8_16 Jge_rel8_32 Jge_rel16 Jge_rel32_32 = 13,
        Jle_rel8_16 Jle_rel8_32 Jle_rel16 Jle_rel32_32 = 14,
        Jg_rel8_16 Jg_rel8_32 Jg_rel16 Jg_rel32_32 = 15,
    )
}

impl Cpu {
    /// Sets the next EIP to a near target inside the CS limit, or #GP(0).
    #[inline(always)]
    fn near_jump(&mut self, target: u32) -> Result<()> {
        if target > self.segs[Seg::CS as usize].hi {
            return Err(Fault::GP0);
        }
        self.next_eip = target;
        Ok(())
    }
}

/// The relative target iced computed at decode time (already truncated to
/// 16 bits for a 16-bit operand size).
#[inline(always)]
fn rel_target(d: &Insn) -> u32 {
    d.i.near_branch32()
}

/// Jcc rel8 / rel16 / rel32.
fn jcc<const CC: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if cpu.flags.cond(CC) {
        cpu.near_jump(rel_target(d))
    } else {
        Ok(())
    }
}

/// JMP rel8 / rel16 / rel32.
fn jmp_rel(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.near_jump(rel_target(d))
}

/// JMP r/m16 / JMP r/m32.
fn jmp_rm<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let target = cpu.read_rm(d, 0, B)?;
    cpu.near_jump(target)
}

/// CALL rel16 / CALL rel32: the target is checked before the return
/// address is pushed.
fn call_rel<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let target = rel_target(d);
    call_near::<B>(cpu, target)
}

/// CALL r/m16 / CALL r/m32.
fn call_rm<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let target = cpu.read_rm(d, 0, B)?;
    call_near::<B>(cpu, target)
}

#[inline(always)]
fn call_near<const B: u32>(cpu: &mut Cpu, target: u32) -> Result<()> {
    if target > cpu.segs[Seg::CS as usize].hi {
        return Err(Fault::GP0);
    }
    cpu.push(B, cpu.next_eip)?;
    cpu.next_eip = target;
    Ok(())
}

/// RET / RET imm16 (near): pops (E)IP, then releases `imm16` more bytes.
fn ret<const B: u32, const IMM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let target = cpu.peek(B, 0)?;
    cpu.near_jump(target)?;
    let extra = if IMM { d.imm & 0xFFFF } else { 0 };
    cpu.adjust_sp(B + extra);
    Ok(())
}

/// LOOP / LOOPE / LOOPNE rel8 (`KIND` 0, 1, 2): decrements CX or ECX
/// (by address size) without touching flags and branches while it is
/// non-zero (and ZF matches).
fn loop_<const A32: bool, const KIND: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let ecx = cpu.regs[reg::ECX];
    let (new, count) = if A32 {
        let c = ecx.wrapping_sub(1);
        (c, c)
    } else {
        let c = ecx.wrapping_sub(1) & 0xFFFF;
        ((ecx & 0xFFFF_0000) | c, c)
    };
    let take = count != 0
        && match KIND {
            0 => true,
            1 => cpu.flags.zf(),
            _ => !cpu.flags.zf(),
        };
    if take {
        // A target outside CS faults with the count unchanged.
        cpu.near_jump(rel_target(d))?;
    }
    cpu.regs[reg::ECX] = new;
    Ok(())
}

/// JCXZ / JECXZ rel8.
fn jcxz<const A32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let count = if A32 {
        cpu.regs[reg::ECX]
    } else {
        cpu.regs[reg::ECX] & 0xFFFF
    };
    if count == 0 {
        cpu.near_jump(rel_target(d))
    } else {
        Ok(())
    }
}
