//! Data movement: MOV in all its forms, MOVZX/MOVSX, LEA, XCHG, the NOPs,
//! PUSH/POP (registers, r/m, immediates, segment registers), PUSHA/POPA,
//! ENTER/LEAVE, far-pointer loads (LDS..LSS), XLAT, LAHF/SAHF, the flag
//! bit instructions, BSWAP, CMOVcc, SETcc and BOUND.
//!
//! The hot forms (register-register MOV, MOV between a register and
//! memory, PUSH/POP of a register) get their own handlers, chosen at
//! decode time, so no operand kinds are looked at while they run.

use iced_x86::{Code, Instruction, OpKind};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::flags;
use super::operand::by_ea;
use super::{Cpu, Seg, reg};

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    use Code::*;
    let op0_reg = i.op0_kind() == OpKind::Register;
    let op1_reg = i.op_count() > 1 && i.op1_kind() == OpKind::Register;
    Some(match i.code() {
        // ---- MOV r/m, r and MOV r, r/m (and the moffs forms) ----
        Mov_rm8_r8 | Mov_r8_rm8 | Mov_AL_moffs8 | Mov_moffs8_AL => match (op0_reg, op1_reg) {
            (true, true) => mov_r8_r8,
            (true, false) => by_ea!(i, |S| mov_r8_m8::<S>),
            _ => by_ea!(i, |S| mov_m8_r8::<S>),
        },
        Mov_rm16_r16 | Mov_r16_rm16 | Mov_AX_moffs16 | Mov_moffs16_AX => match (op0_reg, op1_reg) {
            (true, true) => mov_r16_r16,
            (true, false) => by_ea!(i, |S| mov_r16_m16::<S>),
            _ => by_ea!(i, |S| mov_m16_r16::<S>),
        },
        Mov_rm32_r32 | Mov_r32_rm32 | Mov_EAX_moffs32 | Mov_moffs32_EAX => {
            match (op0_reg, op1_reg) {
                (true, true) => mov_r32_r32,
                (true, false) => by_ea!(i, |S| mov_r32_m32::<S>),
                _ => by_ea!(i, |S| mov_m32_r32::<S>),
            }
        }
        Mov_r8_imm8 => mov_r8_imm8,
        Mov_r16_imm16 => mov_r16_imm16,
        Mov_r32_imm32 => mov_r32_imm32,
        Mov_rm8_imm8 if op0_reg => mov_r8_imm8,
        Mov_rm16_imm16 if op0_reg => mov_r16_imm16,
        Mov_rm32_imm32 if op0_reg => mov_r32_imm32,
        Mov_rm8_imm8 => mov_m_imm::<1>,
        Mov_rm16_imm16 => mov_m_imm::<2>,
        Mov_rm32_imm32 => mov_m_imm::<4>,
        Mov_rm16_Sreg | Mov_r32m16_Sreg => mov_rm_sreg,
        Mov_Sreg_rm16 | Mov_Sreg_r32m16 => mov_sreg_rm,

        Movzx_r32_rm8 if !op1_reg => by_ea!(i, |S| movzx_r32_m::<1, S>),
        Movzx_r32_rm16 if !op1_reg => by_ea!(i, |S| movzx_r32_m::<2, S>),
        Movzx_r32_rm8 => movzx_r::<4, 1, false>,
        Movzx_r32_rm16 => movzx_r::<4, 2, false>,
        Movsx_r32_rm8 if op1_reg => movzx_r::<4, 1, true>,
        Movsx_r32_rm16 if op1_reg => movzx_r::<4, 2, true>,
        Movzx_r16_rm8 => movzx::<2, 1>,
        Movzx_r16_rm16 => movzx::<2, 2>,
        Movsx_r16_rm8 => movsx::<2, 1>,
        Movsx_r32_rm8 => movsx::<4, 1>,
        Movsx_r16_rm16 => movsx::<2, 2>,
        Movsx_r32_rm16 => movsx::<4, 2>,

        Lea_r16_m => lea_r16,
        Lea_r32_m => lea_r32,

        Xchg_rm8_r8 => xchg::<1>,
        Xchg_rm16_r16 | Xchg_r16_AX => xchg::<2>,
        Xchg_rm32_r32 | Xchg_r32_EAX => xchg::<4>,

        Nopw | Nopd | Pause | Nop_rm16 | Nop_rm32 => nop,
        Reservednop_rm16_r16_0F19
        | Reservednop_rm32_r32_0F19
        | Reservednop_rm16_r16_0F1A
        | Reservednop_rm32_r32_0F1A
        | Reservednop_rm16_r16_0F1B
        | Reservednop_rm32_r32_0F1B
        | Reservednop_rm16_r16_0F1C
        | Reservednop_rm32_r32_0F1C
        | Reservednop_rm16_r16_0F1D
        | Reservednop_rm32_r32_0F1D
        | Reservednop_rm16_r16_0F1E
        | Reservednop_rm32_r32_0F1E
        | Reservednop_rm16_r16_0F1F
        | Reservednop_rm32_r32_0F1F => nop,

        // ---- stack ----
        Push_r16 => push_r16,
        Push_r32 => push_r32,
        Pop_r16 => pop_r16,
        Pop_r32 => pop_r32,
        Push_rm16 => push_rm::<2>,
        Push_rm32 => push_rm::<4>,
        Pop_rm16 => pop_rm::<2>,
        Pop_rm32 => pop_rm::<4>,
        Push_imm16 | Pushw_imm8 => push_imm::<2>,
        Pushd_imm32 | Pushd_imm8 => push_imm::<4>,
        Pushw_ES | Pushw_CS | Pushw_SS | Pushw_DS | Pushw_FS | Pushw_GS => push_sreg::<2>,
        Pushd_ES | Pushd_CS | Pushd_SS | Pushd_DS | Pushd_FS | Pushd_GS => push_sreg::<4>,
        Popw_ES | Popw_SS | Popw_DS | Popw_FS | Popw_GS => pop_sreg::<2>,
        Popd_ES | Popd_SS | Popd_DS | Popd_FS | Popd_GS => pop_sreg::<4>,
        Pushaw => pusha::<2>,
        Pushad => pusha::<4>,
        Popaw => popa::<2>,
        Popad => popa::<4>,
        Enterw_imm16_imm8 => enter::<2>,
        Enterd_imm16_imm8 => enter::<4>,
        Leavew => leave::<2>,
        Leaved => leave::<4>,

        // ---- far pointers ----
        Lds_r16_m1616 => load_far::<2, { Seg::DS as u8 }>,
        Lds_r32_m1632 => load_far::<4, { Seg::DS as u8 }>,
        Les_r16_m1616 => load_far::<2, { Seg::ES as u8 }>,
        Les_r32_m1632 => load_far::<4, { Seg::ES as u8 }>,
        Lfs_r16_m1616 => load_far::<2, { Seg::FS as u8 }>,
        Lfs_r32_m1632 => load_far::<4, { Seg::FS as u8 }>,
        Lgs_r16_m1616 => load_far::<2, { Seg::GS as u8 }>,
        Lgs_r32_m1632 => load_far::<4, { Seg::GS as u8 }>,
        Lss_r16_m1616 => load_far::<2, { Seg::SS as u8 }>,
        Lss_r32_m1632 => load_far::<4, { Seg::SS as u8 }>,

        // ---- odds and ends ----
        Xlat_m8 => xlat,
        Lahf => lahf,
        Sahf => sahf,
        Clc => clc,
        Stc => stc,
        Cmc => cmc,
        Cld => cld,
        Std => std,
        Bswap_r16 => bswap_r16,
        Bswap_r32 => bswap_r32,
        Bound_r16_m1616 => bound::<2>,
        Bound_r32_m3232 => bound::<4>,

        c => return cc_handler(i, c),
    })
}

/// CMOVcc and SETcc, one instantiation per condition.
fn cc_handler(i: &Instruction, c: Code) -> Option<Handler> {
    use Code::*;
    // CMOV's r/m is operand 1, SETcc's operand 0.
    let mem = i.op_count() > 0 && i.op_kind(i.op_count() - 1) == OpKind::Memory;
    macro_rules! by_cc {
        ($f:ident, $b:literal, $($code:ident = $cc:literal),* $(,)?) => {
            match c {
                $($code => return Some(if mem { $f::<$b, $cc, true> } else { $f::<$b, $cc, false> }),)*
                _ => {}
            }
        };
    }
    by_cc!(
        cmov,
        2,
        Cmovo_r16_rm16 = 0,
        Cmovno_r16_rm16 = 1,
        Cmovb_r16_rm16 = 2,
        Cmovae_r16_rm16 = 3,
        Cmove_r16_rm16 = 4,
        Cmovne_r16_rm16 = 5,
        Cmovbe_r16_rm16 = 6,
        Cmova_r16_rm16 = 7,
        Cmovs_r16_rm16 = 8,
        Cmovns_r16_rm16 = 9,
        Cmovp_r16_rm16 = 10,
        Cmovnp_r16_rm16 = 11,
        Cmovl_r16_rm16 = 12,
        Cmovge_r16_rm16 = 13,
        Cmovle_r16_rm16 = 14,
        Cmovg_r16_rm16 = 15
    );
    by_cc!(
        cmov,
        4,
        Cmovo_r32_rm32 = 0,
        Cmovno_r32_rm32 = 1,
        Cmovb_r32_rm32 = 2,
        Cmovae_r32_rm32 = 3,
        Cmove_r32_rm32 = 4,
        Cmovne_r32_rm32 = 5,
        Cmovbe_r32_rm32 = 6,
        Cmova_r32_rm32 = 7,
        Cmovs_r32_rm32 = 8,
        Cmovns_r32_rm32 = 9,
        Cmovp_r32_rm32 = 10,
        Cmovnp_r32_rm32 = 11,
        Cmovl_r32_rm32 = 12,
        Cmovge_r32_rm32 = 13,
        Cmovle_r32_rm32 = 14,
        Cmovg_r32_rm32 = 15
    );
    by_cc!(
        setcc,
        1,
        Seto_rm8 = 0,
        Setno_rm8 = 1,
        Setb_rm8 = 2,
        Setae_rm8 = 3,
        Sete_rm8 = 4,
        Setne_rm8 = 5,
        Setbe_rm8 = 6,
        Seta_rm8 = 7,
        Sets_rm8 = 8,
        Setns_rm8 = 9,
        Setp_rm8 = 10,
        Setnp_rm8 = 11,
        Setl_rm8 = 12,
        Setge_rm8 = 13,
        Setle_rm8 = 14,
        Setg_rm8 = 15
    );
    None
}

// ---- MOV ----

/// MOV r8, r8.
fn mov_r8_r8(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.reg8(d.r1);
    cpu.set_reg8(d.r0, v);
    Ok(())
}
/// MOV r8, r/m8 (memory) and MOV AL, moffs8.
fn mov_r8_m8<const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if let Some(v) = cpu.read_fast_u8(d.seg, cpu.ea_of::<S>(d)) {
        cpu.set_reg8(d.r0, v);
        return Ok(());
    }
    mov_r8_m8_slow(cpu, d)
}
#[inline(never)]
fn mov_r8_m8_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.read_u8(d.seg, cpu.ea(d))?;
    cpu.set_reg8(d.r0, v);
    Ok(())
}
/// MOV r/m8 (memory), r8 and MOV moffs8, AL.
fn mov_m8_r8<const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if cpu.write_fast_u8(d.seg, cpu.ea_of::<S>(d), cpu.reg8(d.r1)) {
        return Ok(());
    }
    mov_m8_r8_slow(cpu, d)
}
#[inline(never)]
fn mov_m8_r8_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.write_u8(d.seg, cpu.ea(d), cpu.reg8(d.r1))
}
/// MOV r16, r16.
fn mov_r16_r16(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.reg16(d.r1);
    cpu.set_reg16(d.r0, v);
    Ok(())
}
/// MOV r16, r/m16 (memory) and MOV AX, moffs16.
fn mov_r16_m16<const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if let Some(v) = cpu.read_fast_u16(d.seg, cpu.ea_of::<S>(d)) {
        cpu.set_reg16(d.r0, v);
        return Ok(());
    }
    mov_r16_m16_slow(cpu, d)
}
#[inline(never)]
fn mov_r16_m16_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.read_u16(d.seg, cpu.ea(d))?;
    cpu.set_reg16(d.r0, v);
    Ok(())
}
/// MOV r/m16 (memory), r16 and MOV moffs16, AX.
fn mov_m16_r16<const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if cpu.write_fast_u16(d.seg, cpu.ea_of::<S>(d), cpu.reg16(d.r1)) {
        return Ok(());
    }
    mov_m16_r16_slow(cpu, d)
}
#[inline(never)]
fn mov_m16_r16_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.write_u16(d.seg, cpu.ea(d), cpu.reg16(d.r1))
}
/// MOV r32, r32.
fn mov_r32_r32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.regs[d.r0 as usize & 7] = cpu.regs[d.r1 as usize & 7];
    Ok(())
}
/// MOV r32, r/m32 (memory) and MOV EAX, moffs32. The hot memory
/// handlers try the access fast path inline and leave everything else to
/// an out-of-line slow path (a tail call, so the fast path needs no frame).
fn mov_r32_m32<const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if let Some(v) = cpu.read_fast_u32(d.seg, cpu.ea_of::<S>(d)) {
        cpu.regs[d.r0 as usize & 7] = v;
        return Ok(());
    }
    mov_r32_m32_slow(cpu, d)
}
#[inline(never)]
fn mov_r32_m32_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.read_u32(d.seg, cpu.ea(d))?;
    cpu.regs[d.r0 as usize & 7] = v;
    Ok(())
}
/// MOV r/m32 (memory), r32 and MOV moffs32, EAX.
fn mov_m32_r32<const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if cpu.write_fast_u32(d.seg, cpu.ea_of::<S>(d), cpu.regs[d.r1 as usize & 7]) {
        return Ok(());
    }
    mov_m32_r32_slow(cpu, d)
}
#[inline(never)]
fn mov_m32_r32_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.write_u32(d.seg, cpu.ea(d), cpu.regs[d.r1 as usize & 7])
}
/// MOV r8, imm8.
fn mov_r8_imm8(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.set_reg8(d.r0, d.imm as u8);
    Ok(())
}
/// MOV r16, imm16.
fn mov_r16_imm16(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.set_reg16(d.r0, d.imm as u16);
    Ok(())
}
/// MOV r32, imm32.
fn mov_r32_imm32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.regs[d.r0 as usize & 7] = d.imm;
    Ok(())
}
/// MOV r/m8, imm8 / MOV r/m16, imm16 / MOV r/m32, imm32 (memory forms).
fn mov_m_imm<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.write_sized(d.seg, cpu.ea(d), B, d.imm)
}

/// MOV r/m16, Sreg (and MOV r32/m16, Sreg): a register destination of
/// 32 bits gets the selector zero-extended (P6 and later); memory always
/// gets 16 bits.
fn mov_rm_sreg(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let sel = cpu.segs[d.r1 as usize % 6].selector;
    if d.op0_is_reg() {
        let bytes = d.i.op0_register().size() as u32;
        cpu.set_reg_sized(d.r0, bytes, sel as u32);
        Ok(())
    } else {
        cpu.write_u16(d.seg, cpu.ea(d), sel)
    }
}

/// MOV Sreg, r/m16. MOV CS is #UD; MOV SS holds interrupts off for one
/// instruction.
fn mov_sreg_rm(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let seg = Seg::from_index(d.r0);
    if seg == Seg::CS || d.r0 >= 6 {
        return Err(Fault::UD);
    }
    let sel = cpu.read_rm(d, 1, 2)? as u16;
    cpu.load_seg(seg, sel)?;
    if seg == Seg::SS {
        cpu.irq_shadow = true;
        cpu.ss_shadow = true;
        cpu.stop_block = true;
    }
    Ok(())
}

/// MOVZX r16/r32, r/m8 and r/m16.
fn movzx<const B: u32, const S: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.read_rm(d, 1, S)?;
    cpu.set_reg_sized(d.r0, B, v);
    Ok(())
}

/// MOVZX r32, m8 and m16.
fn movzx_r32_m<const S: u32, const SIMPLE: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let off = cpu.ea_of::<SIMPLE>(d);
    let v = if S == 1 {
        cpu.read_fast_u8(d.seg, off).map(u32::from)
    } else {
        cpu.read_fast_u16(d.seg, off).map(u32::from)
    };
    if let Some(v) = v {
        cpu.regs[d.r0 as usize & 7] = v;
        return Ok(());
    }
    movzx_r32_m_slow::<S>(cpu, d)
}
#[inline(never)]
fn movzx_r32_m_slow<const S: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    movzx::<4, S>(cpu, d)
}

/// MOVZX r32, r8/r16 (`SX`: MOVSX).
fn movzx_r<const B: u32, const S: u32, const SX: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.reg_sized(d.r1, S);
    let v = match (SX, S) {
        (false, _) => v,
        (true, 1) => v as u8 as i8 as i32 as u32,
        (true, _) => v as u16 as i16 as i32 as u32,
    };
    cpu.set_reg_sized(d.r0, B, v);
    Ok(())
}

/// MOVSX r16/r32, r/m8 and r/m16.
fn movsx<const B: u32, const S: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.read_rm(d, 1, S)?;
    let v = if S == 1 {
        v as u8 as i8 as i32 as u32
    } else {
        v as u16 as i16 as i32 as u32
    };
    cpu.set_reg_sized(d.r0, B, v);
    Ok(())
}

/// LEA r16, m: the offset truncated to the address size (by `ea`), then
/// to 16 bits.
fn lea_r16(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.ea(d);
    cpu.set_reg16(d.r0, v as u16);
    Ok(())
}
/// LEA r32, m: a 16-bit address is zero-extended.
fn lea_r32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.regs[d.r0 as usize & 7] = cpu.ea(d);
    Ok(())
}

/// XCHG r/m, r and XCHG r, (E)AX. With memory it is a locked
/// read-modify-write (checked for write access before the read).
fn xchg<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let r = cpu.reg_sized(d.r1, B);
    if d.op0_is_reg() {
        let old = cpu.reg_sized(d.r0, B);
        cpu.set_reg_sized(d.r0, B, r);
        cpu.set_reg_sized(d.r1, B, old);
        return Ok(());
    }
    let mut old = 0;
    cpu.modify_rm(d, B, |_, v| {
        old = v;
        r
    })?;
    cpu.set_reg_sized(d.r1, B, old);
    Ok(())
}

/// NOP, PAUSE, NOP r/m (0F 1F) and the reserved hint NOPs (0F 19..0F 1F):
/// the memory operand is not accessed.
fn nop(_: &mut Cpu, _: &Insn) -> Result<()> {
    Ok(())
}

// ---- stack ----

/// PUSH r16 (PUSH SP pushes the value before the push, as on the 286+).
fn push_r16(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.reg16(d.r0) as u32;
    cpu.push(2, v)
}
/// PUSH r32.
fn push_r32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.regs[d.r0 as usize & 7];
    if cpu.stack32 {
        let sp = cpu.regs[reg::ESP].wrapping_sub(4);
        if cpu.write_fast_u32(Seg::SS, sp, v) {
            cpu.regs[reg::ESP] = sp;
            return Ok(());
        }
    }
    push_r32_slow(cpu, d)
}
#[inline(never)]
fn push_r32_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.regs[d.r0 as usize & 7];
    cpu.push(4, v)
}
/// POP r16 (POP SP loads SP with the popped value).
fn pop_r16(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.pop(2)?;
    cpu.set_reg16(d.r0, v as u16);
    Ok(())
}
/// POP r32.
fn pop_r32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if cpu.stack32 {
        let sp = cpu.regs[reg::ESP];
        if let Some(v) = cpu.read_fast_u32(Seg::SS, sp) {
            // ESP first: POP ESP loads ESP with the popped value.
            cpu.regs[reg::ESP] = sp.wrapping_add(4);
            cpu.regs[d.r0 as usize & 7] = v;
            return Ok(());
        }
    }
    pop_r32_slow(cpu, d)
}
#[inline(never)]
fn pop_r32_slow(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.pop(4)?;
    cpu.regs[d.r0 as usize & 7] = v;
    Ok(())
}
/// PUSH r/m16 / PUSH r/m32.
fn push_rm<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.read_rm(d, 0, B)?;
    cpu.push(B, v)
}
/// POP r/m16 / POP r/m32: a memory destination addressed through ESP uses
/// ESP after the pop; a faulting store leaves ESP as it was.
fn pop_rm<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.peek(B, 0)?;
    let sp = cpu.regs[reg::ESP];
    cpu.adjust_sp(B);
    if let Err(f) = cpu.write_rm(d, B, v) {
        cpu.regs[reg::ESP] = sp;
        return Err(f);
    }
    Ok(())
}
/// PUSH imm16 / PUSH imm32 / PUSH imm8 (sign-extended).
fn push_imm<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.push(B, d.imm)
}
/// PUSH Sreg. With a 32-bit operand size the stack pointer moves by 4 and
/// only the low word is written, as the P6 does.
fn push_sreg<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let sel = cpu.segs[d.r0 as usize % 6].selector;
    if B == 2 {
        return cpu.push(2, sel as u32);
    }
    let mask = cpu.sp_mask();
    let sp = cpu.regs[reg::ESP].wrapping_sub(4) & mask;
    cpu.seg_check(Seg::SS, sp, 4, super::segment::rights::WRITE)?;
    cpu.write_u16(Seg::SS, sp, sel)?;
    cpu.regs[reg::ESP] = (cpu.regs[reg::ESP] & !mask) | sp;
    Ok(())
}
/// POP Sreg (POP CS does not exist). POP SS holds interrupts off for one
/// instruction.
fn pop_sreg<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let seg = Seg::from_index(d.r0);
    if seg == Seg::CS {
        return Err(Fault::UD);
    }
    let sel = cpu.peek(B, 0)? as u16;
    cpu.load_seg(seg, sel)?;
    cpu.adjust_sp(B);
    if seg == Seg::SS {
        cpu.irq_shadow = true;
        cpu.ss_shadow = true;
        cpu.stop_block = true;
    }
    Ok(())
}

/// PUSHA / PUSHAD: AX CX DX BX, the original SP, BP SI DI. A fault leaves
/// (E)SP unchanged.
fn pusha<const B: u32>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let saved = cpu.regs;
    let mask = flags::size_mask(B);
    for r in 0..8 {
        if let Err(f) = cpu.push(B, saved[r] & mask) {
            cpu.regs[reg::ESP] = saved[reg::ESP];
            return Err(f);
        }
    }
    Ok(())
}

/// POPA / POPAD: DI SI BP, (skip SP), BX DX CX AX. All eight slots are
/// read before any register changes.
fn popa<const B: u32>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let mut vals = [0u32; 8];
    for (i, v) in vals.iter_mut().enumerate() {
        *v = cpu.peek(B, i as u32 * B)?;
    }
    cpu.adjust_sp(8 * B);
    for (i, &v) in vals.iter().enumerate() {
        let r = 7 - i;
        if r != reg::ESP {
            cpu.set_reg_sized(r as u8, B, v);
        }
    }
    Ok(())
}

/// ENTER imm16, imm8: a stack frame of `imm16` bytes at nesting level
/// `imm8 mod 32`. (E)BP is the operand size's, (E)SP the stack's. A fault
/// leaves ESP and EBP unchanged.
fn enter<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let size = d.imm & 0xFFFF;
    let level = (d.i.immediate8_2nd() & 31) as u32;
    let (esp, ebp) = (cpu.regs[reg::ESP], cpu.regs[reg::EBP]);
    let r = enter_frame::<B>(cpu, size, level);
    if r.is_err() {
        cpu.regs[reg::ESP] = esp;
        cpu.regs[reg::EBP] = ebp;
    }
    r
}

fn enter_frame<const B: u32>(cpu: &mut Cpu, size: u32, level: u32) -> Result<()> {
    let mask = cpu.sp_mask();
    let bp = cpu.regs[reg::EBP];
    cpu.push(B, bp & flags::size_mask(B))?;
    let frame = cpu.regs[reg::ESP] & mask;
    if level > 0 {
        let mut p = bp;
        for _ in 1..level {
            p = (p & !mask) | (p.wrapping_sub(B) & mask);
            let v = cpu.read_sized(Seg::SS, p & mask, B)?;
            cpu.push(B, v)?;
        }
        cpu.push(B, frame)?;
    }
    // The new frame's bottom must be inside the stack segment.
    let new_sp = cpu.regs[reg::ESP].wrapping_sub(size) & mask;
    if size != 0 {
        cpu.seg_check(Seg::SS, new_sp, 1, super::segment::rights::WRITE)?;
    }
    cpu.set_reg_sized(reg::EBP as u8, B, frame);
    cpu.regs[reg::ESP] = (cpu.regs[reg::ESP] & !mask) | new_sp;
    Ok(())
}

/// LEAVE: (E)SP ← (E)BP at the stack size, then POP (E)BP.
fn leave<const B: u32>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let mask = cpu.sp_mask();
    let sp = cpu.regs[reg::ESP];
    cpu.regs[reg::ESP] = (sp & !mask) | (cpu.regs[reg::EBP] & mask);
    match cpu.pop(B) {
        Ok(v) => {
            cpu.set_reg_sized(reg::EBP as u8, B, v);
            Ok(())
        }
        Err(f) => {
            cpu.regs[reg::ESP] = sp;
            Err(f)
        }
    }
}

// ---- far pointers ----

/// LDS/LES/LFS/LGS/LSS r, m16:16 or m16:32: the segment register is
/// loaded (and checked) before the general register changes.
fn load_far<const B: u32, const S: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if d.i.op1_kind() != OpKind::Memory {
        return Err(Fault::UD);
    }
    let off = cpu.ea(d);
    let v = cpu.read_sized(d.seg, off, B)?;
    let sel = cpu.read_u16(d.seg, off.wrapping_add(B) & d.amask)?;
    let seg = Seg::from_index(S);
    cpu.load_seg(seg, sel)?;
    cpu.set_reg_sized(d.r0, B, v);
    if seg == Seg::SS {
        cpu.stop_block = true;
    }
    Ok(())
}

// ---- odds and ends ----

/// XLAT m8: AL ← [seg:(E)BX + AL].
fn xlat(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let off = cpu.regs[reg::EBX].wrapping_add(cpu.reg8(0) as u32) & d.amask;
    let v = cpu.read_u8(d.seg, off)?;
    cpu.set_reg8(0, v);
    Ok(())
}

/// Status flags LAHF and SAHF move.
const AH_FLAGS: u32 = flags::SF | flags::ZF | flags::AF | flags::PF | flags::CF;

/// LAHF: AH ← SF:ZF:0:AF:0:PF:1:CF.
fn lahf(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let f = cpu.flags.get() & AH_FLAGS | flags::FIXED1;
    cpu.set_reg8(4, f as u8);
    Ok(())
}

/// SAHF: SF, ZF, AF, PF, CF ← AH.
fn sahf(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let ah = cpu.reg8(4) as u32;
    let of = cpu.flags.get() & flags::OF;
    cpu.flags.set_arith(ah & AH_FLAGS | of);
    Ok(())
}

/// CLC.
fn clc(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    cpu.flags.set_status(flags::CF, false);
    Ok(())
}
/// STC.
fn stc(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    cpu.flags.set_status(flags::CF, true);
    Ok(())
}
/// CMC.
fn cmc(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let cf = cpu.flags.cf();
    cpu.flags.set_status(flags::CF, !cf);
    Ok(())
}
/// CLD.
fn cld(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    cpu.flags.set_control(flags::DF, false);
    Ok(())
}
/// STD.
fn std(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    cpu.flags.set_control(flags::DF, true);
    Ok(())
}

/// BSWAP r32.
fn bswap_r32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let r = &mut cpu.regs[d.r0 as usize & 7];
    *r = r.swap_bytes();
    Ok(())
}
/// BSWAP r16: undefined; Intel processors clear the low word.
fn bswap_r16(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.set_reg16(d.r0, 0);
    Ok(())
}

/// CMOVcc r16, r/m16 / CMOVcc r32, r/m32: the source is read (and may
/// fault) whether or not the condition holds.
fn cmov<const B: u32, const CC: u8, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = if MEM {
        let off = cpu.ea(d);
        cpu.read_sized(d.seg, off, B)?
    } else {
        cpu.reg_sized(d.r1, B)
    };
    if cpu.flags.cond(CC) {
        cpu.set_reg_sized(d.r0, B, v);
    }
    Ok(())
}

/// SETcc r/m8.
fn setcc<const B: u32, const CC: u8, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = cpu.flags.cond(CC) as u32;
    if MEM {
        let off = cpu.ea(d);
        cpu.write_sized(d.seg, off, B, v)
    } else {
        cpu.set_reg_sized(d.r0, B, v);
        Ok(())
    }
}

/// BOUND r16, m16&16 / BOUND r32, m32&32: #BR unless lower ≤ r ≤ upper
/// (signed).
fn bound<const B: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if d.i.op1_kind() != OpKind::Memory {
        return Err(Fault::UD);
    }
    let off = cpu.ea(d);
    let lo = cpu.read_sized(d.seg, off, B)?;
    let hi = cpu.read_sized(d.seg, off.wrapping_add(B) & d.amask, B)?;
    let sx = |v: u32| {
        if B == 2 {
            v as u16 as i16 as i32
        } else {
            v as i32
        }
    };
    let r = sx(cpu.reg_sized(d.r0, B));
    if r < sx(lo) || r > sx(hi) {
        return Err(Fault::BR);
    }
    Ok(())
}
