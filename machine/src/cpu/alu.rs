//! The integer ALU instructions: ADD ADC SUB SBB CMP AND OR XOR TEST, INC
//! DEC NEG NOT, MUL IMUL DIV IDIV, the shifts and rotates, SHLD SHRD, BT BTS
//! BTR BTC, BSF BSR, the BCD adjusts, CBW CWDE CWD CDQ, CMPXCHG CMPXCHG8B
//! XADD and SALC.
//!
//! Handlers are generic over the operation, the operand width `W` (bytes)
//! and the operand form, and the form is chosen at decode time: a handler
//! never asks at run time whether its operand is a register or memory.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::flags::{AF, CF, Flags, OF, PF, SF, ZF, size_mask};
use super::operand::by_ea;
use super::{Cpu, Seg, reg};

// ---- operation numbers for the two-operand group ----

const ADD: u8 = 0;
const OR: u8 = 1;
const ADC: u8 = 2;
const SBB: u8 = 3;
const AND: u8 = 4;
const SUB: u8 = 5;
const XOR: u8 = 6;
const CMP: u8 = 7;
const TEST: u8 = 8;

// ---- shift and rotate kinds (the ModRM reg field of C0/C1/D0-D3) ----

const ROL: u8 = 0;
const ROR: u8 = 1;
const RCL: u8 = 2;
const RCR: u8 = 3;
const SHL: u8 = 4;
const SHR: u8 = 5;
const SAR: u8 = 7;

// ---- bit tests ----

const BT: u8 = 0;
const BTS: u8 = 1;
const BTR: u8 = 2;
const BTC: u8 = 3;

/// Instantiates a generic handler for the operand width `w` (1, 2 or 4
/// bytes), binding the width to the const named `$W` in `$e`. Any other
/// width leaves the instruction to the other modules.
macro_rules! by_width {
    ($w:expr, |$W:ident| $e:expr) => {
        match $w {
            1 => {
                const $W: u32 = 1;
                $e
            }
            2 => {
                const $W: u32 = 2;
                $e
            }
            4 => {
                const $W: u32 = 4;
                $e
            }
            _ => return None,
        }
    };
}

/// Picks the register or memory instance of a handler by operand `op`'s kind.
macro_rules! by_form {
    ($i:expr, $op:expr, |$M:ident| $e:expr) => {
        if $i.op_kind($op) == OpKind::Memory {
            const $M: bool = true;
            $e
        } else {
            const $M: bool = false;
            $e
        }
    };
}

/// Width in bytes of operand `op` (a register or memory).
fn width(i: &Instruction, op: u32) -> u32 {
    match i.op_kind(op) {
        OpKind::Register => i.op_register(op).size() as u32,
        OpKind::Memory => i.memory_size().size() as u32,
        _ => 0,
    }
}

/// The handler for an ALU instruction, instantiated for its operation,
/// width and operand form; `None` for every other instruction.
pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    use Mnemonic as M;
    let w = width(i, 0);
    Some(match i.mnemonic() {
        M::Add => binary::<ADD>(i)?,
        M::Or => binary::<OR>(i)?,
        M::Adc => binary::<ADC>(i)?,
        M::Sbb => binary::<SBB>(i)?,
        M::And => binary::<AND>(i)?,
        M::Sub => binary::<SUB>(i)?,
        M::Xor => binary::<XOR>(i)?,
        M::Cmp => binary::<CMP>(i)?,
        M::Test => binary::<TEST>(i)?,
        M::Inc => by_width!(w, |W| by_form!(i, 0, |MEM| inc_dec::<false, W, MEM>)),
        M::Dec => by_width!(w, |W| by_form!(i, 0, |MEM| inc_dec::<true, W, MEM>)),
        M::Neg => by_width!(w, |W| by_form!(i, 0, |MEM| neg::<W, MEM>)),
        M::Not => by_width!(w, |W| by_form!(i, 0, |MEM| not::<W, MEM>)),
        M::Mul => by_width!(w, |W| by_form!(i, 0, |MEM| mul::<W, MEM>)),
        M::Div => by_width!(w, |W| by_form!(i, 0, |MEM| div::<W, MEM>)),
        M::Idiv => by_width!(w, |W| by_form!(i, 0, |MEM| idiv::<W, MEM>)),
        M::Imul => match i.op_count() {
            1 => by_width!(w, |W| by_form!(i, 0, |MEM| imul1::<W, MEM>)),
            2 => by_width!(w, |W| by_form!(i, 1, |MEM| imul2::<W, MEM>)),
            _ => by_width!(w, |W| by_form!(i, 1, |MEM| imul3::<W, MEM>)),
        },
        M::Rol => shift::<ROL>(i)?,
        M::Ror => shift::<ROR>(i)?,
        M::Rcl => shift::<RCL>(i)?,
        M::Rcr => shift::<RCR>(i)?,
        M::Shl | M::Sal => shift::<SHL>(i)?,
        M::Shr => shift::<SHR>(i)?,
        M::Sar => shift::<SAR>(i)?,
        M::Shld => double_shift::<true>(i)?,
        M::Shrd => double_shift::<false>(i)?,
        M::Bt => bit_test::<BT>(i)?,
        M::Bts => bit_test::<BTS>(i)?,
        M::Btr => bit_test::<BTR>(i)?,
        M::Btc => bit_test::<BTC>(i)?,
        M::Bsf => by_width!(w, |W| by_form!(i, 1, |MEM| bit_scan::<false, W, MEM>)),
        M::Bsr => by_width!(w, |W| by_form!(i, 1, |MEM| bit_scan::<true, W, MEM>)),
        M::Xadd => by_width!(w, |W| by_form!(i, 0, |MEM| xadd::<W, MEM>)),
        M::Cmpxchg => by_width!(w, |W| by_form!(i, 0, |MEM| cmpxchg::<W, MEM>)),
        _ => match i.code() {
            Code::Cmpxchg8b_m64 if i.op0_kind() == OpKind::Memory => cmpxchg8b,
            Code::Daa => daa,
            Code::Das => das,
            Code::Aaa => aaa,
            Code::Aas => aas,
            Code::Aam_imm8 => aam,
            Code::Aad_imm8 => aad,
            Code::Cbw => cbw,
            Code::Cwde => cwde,
            Code::Cwd => cwd,
            Code::Cdq => cdq,
            Code::Salc => salc,
            _ => return None,
        },
    })
}

// ---- operand access at a constant width ----

#[inline(always)]
fn get<const W: u32>(cpu: &Cpu, n: u8) -> u32 {
    cpu.reg_sized(n, W)
}

#[inline(always)]
fn set<const W: u32>(cpu: &mut Cpu, n: u8, v: u32) {
    cpu.set_reg_sized(n, W, v)
}

/// Reads the memory operand.
#[inline(always)]
fn load<const W: u32>(cpu: &mut Cpu, d: &Insn) -> Result<u32> {
    let off = cpu.ea(d);
    cpu.read_sized(d.seg, off, W)
}

/// Operand `op` (0 or 1): the memory operand when `MEM`, else register r0/r1.
#[inline(always)]
fn source<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn, op: u32) -> Result<u32> {
    if MEM {
        load::<W>(cpu, d)
    } else {
        Ok(get::<W>(cpu, if op == 0 { d.r0 } else { d.r1 }))
    }
}

/// Read-modify-write of `W` bytes at `seg:off`: write access is checked
/// before the read, so the write cannot fault after `f` has run.
#[inline(always)]
fn modify_at<const W: u32>(
    cpu: &mut Cpu,
    seg: Seg,
    off: u32,
    f: impl FnOnce(&mut Cpu, u32) -> u32,
) -> Result<()> {
    match W {
        1 => {
            let (lin, old) = cpu.rmw_u8(seg, off)?;
            let new = f(cpu, old as u32);
            cpu.rmw_write_u8(lin, new as u8)
        }
        2 => {
            let (lin, old) = cpu.rmw_u16(seg, off)?;
            let new = f(cpu, old as u32);
            cpu.rmw_write_u16(lin, new as u16)
        }
        _ => {
            let (lin, old) = cpu.rmw_u32(seg, off)?;
            let new = f(cpu, old);
            cpu.rmw_write_u32(lin, new)
        }
    }
}

/// Read-modify-write of operand 0: the memory operand when `MEM`, else register r0.
#[inline(always)]
fn modify<const W: u32, const MEM: bool>(
    cpu: &mut Cpu,
    d: &Insn,
    f: impl FnOnce(&mut Cpu, u32) -> u32,
) -> Result<()> {
    if MEM {
        let off = cpu.ea(d);
        if let Some(p) = cpu.rmw_ptr_fast(d.seg, off, W) {
            // SAFETY: `p` is valid for a `W`-byte access (see `host_ptr`);
            // `f` only computes (and sets flags), so the mapping holds.
            unsafe {
                let old = match W {
                    1 => p.read() as u32,
                    2 => p.cast::<u16>().read_unaligned() as u32,
                    _ => p.cast::<u32>().read_unaligned(),
                };
                let new = f(cpu, old);
                match W {
                    1 => p.write(new as u8),
                    2 => p.cast::<u16>().write_unaligned(new as u16),
                    _ => p.cast::<u32>().write_unaligned(new),
                }
            }
            return Ok(());
        }
        modify_at::<W>(cpu, d.seg, off, f)
    } else {
        let old = get::<W>(cpu, d.r0);
        let new = f(cpu, old);
        set::<W>(cpu, d.r0, new);
        Ok(())
    }
}

#[inline(always)]
const fn sign<const W: u32>() -> u32 {
    1 << (W * 8 - 1)
}

/// Sign-extends a `W`-byte value to 64 bits.
#[inline(always)]
fn sext<const W: u32>(v: u32) -> i64 {
    match W {
        1 => v as u8 as i8 as i64,
        2 => v as u16 as i16 as i64,
        _ => v as i32 as i64,
    }
}

// ---- ADD OR ADC SBB AND SUB XOR CMP TEST ----

fn binary<const OP: u8>(i: &Instruction) -> Option<Handler> {
    Some(by_width!(width(i, 0), |W| {
        match (i.op0_kind(), i.op1_kind()) {
            (OpKind::Memory, OpKind::Register) => by_ea!(i, |S| op_mr::<OP, W, S>),
            (OpKind::Memory, _) => op_mi::<OP, W>,
            (_, OpKind::Memory) => by_ea!(i, |S| op_rm::<OP, W, S>),
            (_, OpKind::Register) => op_rr::<OP, W>,
            _ => op_ri::<OP, W>,
        }
    }))
}

/// `a OP b` at width `W`, with the flags recorded; operands are masked.
#[inline(always)]
fn alu<const OP: u8, const W: u32>(flags: &mut Flags, a: u32, b: u32) -> u32 {
    let m = size_mask(W);
    match OP {
        ADD => {
            let r = a.wrapping_add(b) & m;
            flags.add(W, a, b, false, r);
            r
        }
        ADC => {
            let c = flags.cf();
            let r = a.wrapping_add(b).wrapping_add(c as u32) & m;
            flags.add(W, a, b, c, r);
            r
        }
        SUB | CMP => {
            let r = a.wrapping_sub(b) & m;
            flags.sub(W, a, b, false, r);
            r
        }
        SBB => {
            let c = flags.cf();
            let r = a.wrapping_sub(b).wrapping_sub(c as u32) & m;
            flags.sub(W, a, b, c, r);
            r
        }
        OR => {
            let r = a | b;
            flags.logic(W, r);
            r
        }
        XOR => {
            let r = a ^ b;
            flags.logic(W, r);
            r
        }
        _ => {
            let r = a & b;
            flags.logic(W, r);
            r
        }
    }
}

/// CMP and TEST only set flags.
const fn writes(op: u8) -> bool {
    op != CMP && op != TEST
}

/// ADD r/m32, r32 (and the other ops and widths) with a register
/// destination; also the `r, r/m` forms whose source is a register.
fn op_rr<const OP: u8, const W: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let a = get::<W>(cpu, d.r0);
    let b = get::<W>(cpu, d.r1);
    let r = alu::<OP, W>(&mut cpu.flags, a, b);
    if writes(OP) {
        set::<W>(cpu, d.r0, r);
    }
    Ok(())
}

/// The fast path of a `W`-byte read of the memory operand.
#[inline(always)]
fn load_fast<const W: u32, const S: bool>(cpu: &Cpu, d: &Insn) -> Option<u32> {
    let off = cpu.ea_of::<S>(d);
    match W {
        1 => cpu.read_fast_u8(d.seg, off).map(u32::from),
        2 => cpu.read_fast_u16(d.seg, off).map(u32::from),
        _ => cpu.read_fast_u32(d.seg, off),
    }
}

/// ADD r/m32, r32 with a memory destination. CMP and TEST, which only
/// read, try the access fast path inline (see `data::mov_r32_m32`).
fn op_mr<const OP: u8, const W: u32, const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if !writes(OP)
        && let Some(a) = load_fast::<W, S>(cpu, d)
    {
        let b = get::<W>(cpu, d.r1);
        alu::<OP, W>(&mut cpu.flags, a, b);
        return Ok(());
    }
    op_mr_slow::<OP, W>(cpu, d)
}
#[inline(never)]
fn op_mr_slow<const OP: u8, const W: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = get::<W>(cpu, d.r1);
    if writes(OP) {
        modify::<W, true>(cpu, d, |cpu, a| alu::<OP, W>(&mut cpu.flags, a, b))
    } else {
        let a = load::<W>(cpu, d)?;
        alu::<OP, W>(&mut cpu.flags, a, b);
        Ok(())
    }
}

/// ADD r32, r/m32 with a memory source.
fn op_rm<const OP: u8, const W: u32, const S: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let Some(b) = load_fast::<W, S>(cpu, d) else {
        return op_rm_slow::<OP, W>(cpu, d);
    };
    let a = get::<W>(cpu, d.r0);
    let r = alu::<OP, W>(&mut cpu.flags, a, b);
    if writes(OP) {
        set::<W>(cpu, d.r0, r);
    }
    Ok(())
}
#[inline(never)]
fn op_rm_slow<const OP: u8, const W: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = load::<W>(cpu, d)?;
    let a = get::<W>(cpu, d.r0);
    let r = alu::<OP, W>(&mut cpu.flags, a, b);
    if writes(OP) {
        set::<W>(cpu, d.r0, r);
    }
    Ok(())
}

/// ADD r/m32, imm32 (imm8 sign-extended, 0x82 alias, EAX/AX/AL forms)
/// with a register destination.
fn op_ri<const OP: u8, const W: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let a = get::<W>(cpu, d.r0);
    let r = alu::<OP, W>(&mut cpu.flags, a, d.imm & size_mask(W));
    if writes(OP) {
        set::<W>(cpu, d.r0, r);
    }
    Ok(())
}

/// ADD r/m32, imm32 with a memory destination.
fn op_mi<const OP: u8, const W: u32>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = d.imm & size_mask(W);
    if writes(OP) {
        modify::<W, true>(cpu, d, |cpu, a| alu::<OP, W>(&mut cpu.flags, a, b))
    } else {
        let a = load::<W>(cpu, d)?;
        alu::<OP, W>(&mut cpu.flags, a, b);
        Ok(())
    }
}

// ---- INC DEC NEG NOT ----

/// INC r/m32, INC r32 (`DEC`: DEC r/m32, DEC r32): CF is kept.
fn inc_dec<const DEC: bool, const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    modify::<W, MEM>(cpu, d, |cpu, a| {
        let r = if DEC {
            a.wrapping_sub(1)
        } else {
            a.wrapping_add(1)
        } & size_mask(W);
        cpu.flags.inc_dec(W, a, r, DEC);
        r
    })
}

/// NEG r/m32: CF is set unless the operand was 0.
fn neg<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    modify::<W, MEM>(cpu, d, |cpu, a| {
        let r = 0u32.wrapping_sub(a) & size_mask(W);
        cpu.flags.sub(W, 0, a, false, r);
        r
    })
}

/// NOT r/m32: no flags.
fn not<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    modify::<W, MEM>(cpu, d, |_, a| !a & size_mask(W))
}

// ---- MUL IMUL DIV IDIV ----

/// Stores a multiply's flags: CF = OF = `overflow`; SF, ZF and PF (which
/// the SDM leaves undefined) follow the low half, AF is cleared.
#[inline(always)]
fn mul_flags<const W: u32>(cpu: &mut Cpu, low: u32, overflow: bool) {
    cpu.flags
        .carry_overflow(W, overflow as u32, overflow as u32, low & size_mask(W));
}

/// Writes a double-width product or a quotient/remainder pair: AL/AH for
/// bytes, AX/DX for words, EAX/EDX for doublewords.
#[inline(always)]
fn set_pair<const W: u32>(cpu: &mut Cpu, low: u32, high: u32) {
    if W == 1 {
        cpu.set_reg16(
            reg::EAX as u8,
            ((high as u16 & 0xFF) << 8) | (low as u16 & 0xFF),
        );
    } else {
        set::<W>(cpu, reg::EAX as u8, low);
        set::<W>(cpu, reg::EDX as u8, high);
    }
}

/// The double-width dividend: AX for bytes, DX:AX, EDX:EAX.
#[inline(always)]
fn dividend<const W: u32>(cpu: &Cpu) -> u64 {
    match W {
        1 => cpu.reg16(reg::EAX as u8) as u64,
        2 => (cpu.reg16(reg::EDX as u8) as u64) << 16 | cpu.reg16(reg::EAX as u8) as u64,
        _ => (cpu.reg32(reg::EDX as u8) as u64) << 32 | cpu.reg32(reg::EAX as u8) as u64,
    }
}

/// MUL r/m32: EDX:EAX = EAX * r/m32 (AX = AL * r/m8, DX:AX = AX * r/m16).
fn mul<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = source::<W, MEM>(cpu, d, 0)? as u64;
    let a = get::<W>(cpu, reg::EAX as u8) as u64;
    let p = a * b;
    let (low, high) = (p as u32 & size_mask(W), (p >> (W * 8)) as u32);
    set_pair::<W>(cpu, low, high);
    mul_flags::<W>(cpu, low, high != 0);
    Ok(())
}

/// IMUL r/m32: signed EDX:EAX = EAX * r/m32.
fn imul1<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = sext::<W>(source::<W, MEM>(cpu, d, 0)?);
    let a = sext::<W>(get::<W>(cpu, reg::EAX as u8));
    let p = a * b;
    let (low, high) = (
        p as u32 & size_mask(W),
        (p >> (W * 8)) as u32 & size_mask(W),
    );
    set_pair::<W>(cpu, low, high);
    mul_flags::<W>(cpu, low, sext::<W>(low) != p);
    Ok(())
}

/// The truncated signed product of the two- and three-operand IMULs.
#[inline(always)]
fn imul_trunc<const W: u32>(cpu: &mut Cpu, dest: u8, a: u32, b: u32) {
    let p = sext::<W>(a) * sext::<W>(b);
    let low = p as u32 & size_mask(W);
    set::<W>(cpu, dest, low);
    mul_flags::<W>(cpu, low, sext::<W>(low) != p);
}

/// IMUL r32, r/m32.
fn imul2<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = source::<W, MEM>(cpu, d, 1)?;
    let a = get::<W>(cpu, d.r0);
    imul_trunc::<W>(cpu, d.r0, a, b);
    Ok(())
}

/// IMUL r32, r/m32, imm32 (and imm8, sign-extended).
fn imul3<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let a = source::<W, MEM>(cpu, d, 1)?;
    imul_trunc::<W>(cpu, d.r0, a, d.imm & size_mask(W));
    Ok(())
}

/// DIV r/m32: EAX = EDX:EAX / r/m32, EDX = remainder; #DE on a zero
/// divisor or a quotient that does not fit. Flags are left as they were
/// (the SDM leaves all six undefined).
fn div<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = source::<W, MEM>(cpu, d, 0)? as u64;
    let a = dividend::<W>(cpu);
    let q = a.checked_div(b).ok_or(Fault::DE)?;
    if q > size_mask(W) as u64 {
        return Err(Fault::DE);
    }
    set_pair::<W>(cpu, q as u32, (a % b) as u32);
    Ok(())
}

/// IDIV r/m32: signed EDX:EAX / r/m32, quotient truncated toward zero,
/// remainder with the dividend's sign; #DE on zero or overflow.
fn idiv<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = sext::<W>(source::<W, MEM>(cpu, d, 0)?);
    let a = match W {
        1 => dividend::<W>(cpu) as u16 as i16 as i64,
        2 => dividend::<W>(cpu) as u32 as i32 as i64,
        _ => dividend::<W>(cpu) as i64,
    };
    let q = a.checked_div(b).ok_or(Fault::DE)?;
    let half = sign::<W>() as i64;
    if q < -half || q >= half {
        return Err(Fault::DE);
    }
    let r = a.checked_rem(b).ok_or(Fault::DE)?;
    set_pair::<W>(cpu, q as u32 & size_mask(W), r as u32 & size_mask(W));
    Ok(())
}

// ---- ROL ROR RCL RCR SHL SHR SAR ----

fn shift<const K: u8>(i: &Instruction) -> Option<Handler> {
    let cl = i.op1_kind() == OpKind::Register;
    Some(by_width!(width(i, 0), |W| by_form!(i, 0, |MEM| if cl {
        shift_rm::<K, W, MEM, true>
    } else {
        shift_rm::<K, W, MEM, false>
    })))
}

/// ROL r/m32, imm8 / CL / 1 (and ROR RCL RCR SHL SAL SHR SAR): the count
/// is masked to 5 bits and a count of 0 changes nothing, flags included.
fn shift_rm<const K: u8, const W: u32, const MEM: bool, const CL: bool>(
    cpu: &mut Cpu,
    d: &Insn,
) -> Result<()> {
    let count = if CL { cpu.regs[reg::ECX] } else { d.imm } & 0x1F;
    modify::<W, MEM>(cpu, d, |cpu, a| shift_value::<K, W>(cpu, a, count))
}

/// The shifted or rotated value, with the flags set. The flags follow
/// the last single-bit step, as the 286 and 386 compute them: OF is
/// defined that way for any count (the SDM defines it only for 1).
#[inline(always)]
fn shift_value<const K: u8, const W: u32>(cpu: &mut Cpu, a: u32, count: u32) -> u32 {
    if count == 0 {
        return a;
    }
    let bits = W * 8;
    let m = size_mask(W);
    let msb = |v: u32| (v >> (bits - 1)) & 1;
    let (res, cf, of) = match K {
        ROL => {
            let n = count % bits;
            let r = (a << n | a >> ((bits - n) % bits)) & m;
            let cf = r & 1;
            (r, cf, msb(r) ^ cf)
        }
        ROR => {
            let n = count % bits;
            let r = (a >> n | a << ((bits - n) % bits)) & m;
            (r, msb(r), msb(r) ^ (r >> (bits - 2)) & 1)
        }
        RCL | RCR => {
            // Rotate the (bits + 1)-bit value CF:a.
            let n = (count % (bits + 1)) as u64;
            let width = bits as u64 + 1;
            let v = (cpu.flags.cf() as u64) << bits | a as u64;
            let all = (1u64 << width) - 1;
            let v = if K == RCL {
                (v << n | v >> ((width - n) % width)) & all
            } else {
                (v >> n | v << ((width - n) % width)) & all
            };
            let r = v as u32 & m;
            let cf = (v >> bits) as u32 & 1;
            let of = if K == RCL {
                msb(r) ^ cf
            } else {
                msb(r) ^ (r >> (bits - 2)) & 1
            };
            (r, cf, of)
        }
        SHL => {
            let wide = (a as u64) << count;
            let r = wide as u32 & m;
            let cf = (wide >> bits) as u32 & 1;
            (r, cf, msb(r) ^ cf)
        }
        SHR => {
            let before_last = (a as u64) >> (count - 1);
            let r = (before_last >> 1) as u32;
            (r, before_last as u32 & 1, msb(before_last as u32 & m))
        }
        _ => {
            let before_last = sext::<W>(a) >> (count - 1);
            let r = (before_last >> 1) as u32 & m;
            (r, before_last as u32 & 1, 0)
        }
    };
    if K <= RCR {
        // Rotates change only CF and OF.
        let cf_of = if cf != 0 { CF } else { 0 } | if of != 0 { OF } else { 0 };
        let status = cpu.flags.get() & (SF | ZF | AF | PF) | cf_of;
        cpu.flags.set_arith(status);
    } else {
        cpu.flags.carry_overflow(W, cf & 1, of & 1, res);
    }
    res
}

// ---- SHLD SHRD ----

fn double_shift<const LEFT: bool>(i: &Instruction) -> Option<Handler> {
    let cl = i.op2_kind() == OpKind::Register;
    Some(match width(i, 0) {
        2 => by_form!(i, 0, |MEM| if cl {
            shd::<LEFT, 2, MEM, true>
        } else {
            shd::<LEFT, 2, MEM, false>
        }),
        4 => by_form!(i, 0, |MEM| if cl {
            shd::<LEFT, 4, MEM, true>
        } else {
            shd::<LEFT, 4, MEM, false>
        }),
        _ => return None,
    })
}

/// SHLD r/m32, r32, imm8 / CL (`LEFT == false`: SHRD). The count is
/// masked to 5 bits; 0 changes nothing. A 16-bit count above 16 (result
/// undefined) shifts through `dest:src:dest`.
fn shd<const LEFT: bool, const W: u32, const MEM: bool, const CL: bool>(
    cpu: &mut Cpu,
    d: &Insn,
) -> Result<()> {
    let count = if CL { cpu.regs[reg::ECX] } else { d.imm } & 0x1F;
    let src = get::<W>(cpu, d.r1) as u64;
    modify::<W, MEM>(cpu, d, |cpu, a| {
        if count == 0 {
            return a;
        }
        let bits = W * 8;
        let c = count as u64;
        let (res, cf) = if W == 2 {
            let x = (a as u64) << 32 | src << 16 | a as u64;
            if LEFT {
                ((x >> (32 - c)) as u32 & 0xFFFF, (x >> (48 - c)) as u32 & 1)
            } else {
                ((x >> c) as u32 & 0xFFFF, (x >> (c - 1)) as u32 & 1)
            }
        } else {
            let x = if LEFT {
                (a as u64) << 32 | src
            } else {
                src << 32 | a as u64
            };
            if LEFT {
                ((x >> (32 - c)) as u32, (x >> (64 - c)) as u32 & 1)
            } else {
                ((x >> c) as u32, (x >> (c - 1)) as u32 & 1)
            }
        };
        let of = ((res ^ a) >> (bits - 1)) & 1;
        let cf_of = if cf != 0 { CF } else { 0 } | if of != 0 { OF } else { 0 };
        cpu.flags.set_arith(Flags::szp(W, res) | cf_of);
        res
    })
}

// ---- BT BTS BTR BTC ----

fn bit_test<const K: u8>(i: &Instruction) -> Option<Handler> {
    let imm = i.op1_kind() != OpKind::Register;
    Some(match width(i, 0) {
        2 => by_form!(i, 0, |MEM| if imm {
            bt::<K, 2, MEM, true>
        } else {
            bt::<K, 2, MEM, false>
        }),
        4 => by_form!(i, 0, |MEM| if imm {
            bt::<K, 4, MEM, true>
        } else {
            bt::<K, 4, MEM, false>
        }),
        _ => return None,
    })
}

/// The new value of the tested operand, CF set to the bit's old value.
#[inline(always)]
fn bit_op<const K: u8>(cpu: &mut Cpu, v: u32, bit: u32) -> u32 {
    let mask = 1u32 << bit;
    cpu.flags.set_status(CF, v & mask != 0);
    match K {
        BTS => v | mask,
        BTR => v & !mask,
        BTC => v ^ mask,
        _ => v,
    }
}

/// BT r/m32, r32 / imm8 (and BTS BTR BTC): CF = the bit; the other status
/// flags are kept. An immediate offset is taken modulo the width; a
/// register offset into memory is signed and addresses the bit string
/// around the operand.
fn bt<const K: u8, const W: u32, const MEM: bool, const IMM: bool>(
    cpu: &mut Cpu,
    d: &Insn,
) -> Result<()> {
    let bits = W * 8;
    let offset = if IMM { d.imm } else { get::<W>(cpu, d.r1) };
    let bit = offset & (bits - 1);
    if !MEM {
        let v = get::<W>(cpu, d.r0);
        let r = bit_op::<K>(cpu, v, bit);
        if K != BT {
            set::<W>(cpu, d.r0, r);
        }
        return Ok(());
    }
    let mut off = cpu.ea(d);
    if !IMM {
        // Whole operands before or after the addressed one.
        let words = sext::<W>(offset) >> (bits.trailing_zeros());
        off = off.wrapping_add((words as u32).wrapping_mul(W)) & d.amask;
    }
    if K == BT {
        let v = cpu.read_sized(d.seg, off, W)?;
        bit_op::<K>(cpu, v, bit);
        Ok(())
    } else {
        modify_at::<W>(cpu, d.seg, off, |cpu, v| bit_op::<K>(cpu, v, bit))
    }
}

// ---- BSF BSR ----

/// BSF r32, r/m32 (`REV`: BSR): ZF = source is 0, and then the
/// destination is left unchanged; otherwise it gets the index of the
/// lowest (highest) set bit.
fn bit_scan<const REV: bool, const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = source::<W, MEM>(cpu, d, 1)?;
    cpu.flags.set_status(ZF, v == 0);
    if v != 0 {
        let idx = if REV {
            31 - v.leading_zeros()
        } else {
            v.trailing_zeros()
        };
        set::<W>(cpu, d.r0, idx);
    }
    Ok(())
}

// ---- XADD CMPXCHG CMPXCHG8B ----

/// XADD r/m32, r32: the register gets the old destination, the
/// destination the sum.
fn xadd<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let b = get::<W>(cpu, d.r1);
    let mut old = 0;
    modify::<W, MEM>(cpu, d, |cpu, a| {
        old = a;
        alu::<ADD, W>(&mut cpu.flags, a, b)
    })?;
    if MEM {
        set::<W>(cpu, d.r1, old);
    } else {
        // The destination is written last (XADD r, r with one register).
        let sum = get::<W>(cpu, d.r0);
        set::<W>(cpu, d.r1, old);
        set::<W>(cpu, d.r0, sum);
    }
    Ok(())
}

/// CMPXCHG r/m32, r32: compares EAX with the destination (flags as CMP);
/// equal: destination = r32, else EAX = destination. A memory destination
/// is always written (with its own value when unequal), as the locked
/// cycle does.
fn cmpxchg<const W: u32, const MEM: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let acc = get::<W>(cpu, reg::EAX as u8);
    let src = get::<W>(cpu, d.r1);
    let mut old = 0;
    modify::<W, MEM>(cpu, d, |cpu, a| {
        old = a;
        alu::<CMP, W>(&mut cpu.flags, acc, a);
        if a == acc { src } else { a }
    })?;
    if old != acc {
        set::<W>(cpu, reg::EAX as u8, old);
    }
    Ok(())
}

/// CMPXCHG8B m64: compares EDX:EAX with m64; equal: ZF = 1 and m64 =
/// ECX:EBX, else ZF = 0 and EDX:EAX = m64 (written back unchanged).
fn cmpxchg8b(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let off = cpu.ea(d);
    let old = cpu.read_u64(d.seg, off)?;
    let acc = (cpu.regs[reg::EDX] as u64) << 32 | cpu.regs[reg::EAX] as u64;
    let equal = old == acc;
    let new = if equal {
        (cpu.regs[reg::ECX] as u64) << 32 | cpu.regs[reg::EBX] as u64
    } else {
        old
    };
    cpu.write_u64(d.seg, off, new)?;
    if !equal {
        cpu.regs[reg::EAX] = old as u32;
        cpu.regs[reg::EDX] = (old >> 32) as u32;
    }
    cpu.flags.set_status(ZF, equal);
    Ok(())
}

// ---- BCD adjusts, sign extension, SALC ----

fn read_al(cpu: &Cpu) -> u32 {
    cpu.regs[reg::EAX] & 0xFF
}

fn set_al(cpu: &mut Cpu, v: u32) {
    cpu.set_reg8(0, v as u8);
}

/// DAA: decimal-adjusts AL after an addition.
fn daa(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let f = cpu.flags.get();
    let (old_al, old_cf) = (read_al(cpu), f & CF != 0);
    let mut v = old_al;
    let mut status = 0;
    if v & 0x0F > 9 || f & AF != 0 {
        v += 6;
        status |= AF;
    }
    if old_al > 0x99 || old_cf {
        v += 0x60;
        status |= CF;
    }
    let v = v & 0xFF;
    set_al(cpu, v);
    cpu.flags.set_arith(status | Flags::szp(1, v) | f & OF);
    Ok(())
}

/// DAS: decimal-adjusts AL after a subtraction.
fn das(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let f = cpu.flags.get();
    let (old_al, old_cf) = (read_al(cpu), f & CF != 0);
    let mut v = old_al;
    let mut status = 0;
    if v & 0x0F > 9 || f & AF != 0 {
        if v < 6 {
            status |= CF;
        }
        v = v.wrapping_sub(6);
        status |= AF;
    }
    if old_al > 0x99 || old_cf {
        v = v.wrapping_sub(0x60);
        status |= CF;
    }
    let v = v & 0xFF;
    set_al(cpu, v);
    cpu.flags.set_arith(status | Flags::szp(1, v) | f & OF);
    Ok(())
}

/// AAA: ASCII-adjusts AX after an addition.
fn aaa(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let f = cpu.flags.get();
    let mut ax = cpu.reg16(0) as u32;
    let adjust = ax & 0x0F > 9 || f & AF != 0;
    if adjust {
        ax = ax.wrapping_add(0x106);
    }
    ax &= 0xFF0F;
    cpu.set_reg16(0, ax as u16);
    let carry = if adjust { AF | CF } else { 0 };
    cpu.flags.set_arith(f & (OF | SF | ZF | PF) | carry);
    Ok(())
}

/// AAS: ASCII-adjusts AX after a subtraction.
fn aas(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let f = cpu.flags.get();
    let mut ax = cpu.reg16(0) as u32;
    let adjust = ax & 0x0F > 9 || f & AF != 0;
    if adjust {
        ax = ax.wrapping_sub(6).wrapping_sub(0x100);
    }
    ax &= 0xFF0F;
    cpu.set_reg16(0, ax as u16);
    let carry = if adjust { AF | CF } else { 0 };
    cpu.flags.set_arith(f & (OF | SF | ZF | PF) | carry);
    Ok(())
}

/// AAM imm8: AH = AL / imm8, AL = AL % imm8; #DE when imm8 is 0.
fn aam(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let base = d.imm & 0xFF;
    if base == 0 {
        return Err(Fault::DE);
    }
    let v = read_al(cpu);
    let (q, r) = (v / base, v % base);
    cpu.set_reg16(0, (q << 8 | r) as u16);
    cpu.flags.set_arith(Flags::szp(1, r));
    Ok(())
}

/// AAD imm8: AL = AL + AH * imm8, AH = 0; the flags are those of that
/// 8-bit addition.
fn aad(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let ax = cpu.reg16(0) as u32;
    let prod = ((ax >> 8) * (d.imm & 0xFF)) & 0xFF;
    let a = ax & 0xFF;
    let r = alu::<ADD, 1>(&mut cpu.flags, a, prod);
    cpu.set_reg16(0, r as u16);
    Ok(())
}

/// CBW: AX = sign-extended AL.
fn cbw(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let v = cpu.reg8(0) as i8 as i16 as u16;
    cpu.set_reg16(0, v);
    Ok(())
}

/// CWDE: EAX = sign-extended AX.
fn cwde(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    cpu.regs[reg::EAX] = cpu.reg16(0) as i16 as i32 as u32;
    Ok(())
}

/// CWD: DX = the sign of AX.
fn cwd(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let v = ((cpu.reg16(0) as i16) >> 15) as u16;
    cpu.set_reg16(reg::EDX as u8, v);
    Ok(())
}

/// CDQ: EDX = the sign of EAX.
fn cdq(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    cpu.regs[reg::EDX] = ((cpu.regs[reg::EAX] as i32) >> 31) as u32;
    Ok(())
}

/// SALC (undocumented D6): AL = CF ? 0xFF : 0.
fn salc(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let v = if cpu.flags.cf() { 0xFF } else { 0 };
    set_al(cpu, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::*;
    use crate::bus::NullBus;
    use crate::cpu::SegCache;
    use crate::memory::PhysMemory;

    const CODE: u32 = 0x1000;
    const DE_HANDLER: u32 = 0x2000;

    /// Runs `build`'s 16-bit code (then HLT) at 0000:1000 in real mode,
    /// after `setup`; #DE vectors to a HLT at 0000:2000.
    fn run(
        build: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>,
        setup: impl FnOnce(&mut Cpu),
    ) -> Cpu {
        let mut cpu = Cpu::new(PhysMemory::new(1 << 20).unwrap(), Box::new(NullBus));
        cpu.set_seg_cache(Seg::CS, SegCache::real_mode(0));
        cpu.set_gpr(reg::ESP, 0x8000);
        cpu.write_phys_bytes(0, &DE_HANDLER.to_le_bytes());
        cpu.write_phys_bytes(DE_HANDLER, &[0xF4]);
        let mut a = CodeAssembler::new(16).unwrap();
        build(&mut a).unwrap();
        a.hlt().unwrap();
        let code = a.assemble(CODE as u64).unwrap();
        cpu.write_phys_bytes(CODE, &code);
        cpu.set_eip(CODE);
        setup(&mut cpu);
        cpu.run(1000);
        cpu
    }

    fn mem32(cpu: &mut Cpu, addr: u32) -> u32 {
        let mut b = [0; 4];
        cpu.read_phys_bytes(addr, &mut b);
        u32::from_le_bytes(b)
    }

    /// Whether the CPU took #DE (the handler's HLT ran) with the faulting
    /// instruction's IP pushed.
    fn took_de(cpu: &mut Cpu) -> bool {
        let pushed_ip = mem32(cpu, 0x8000 - 6) & 0xFFFF;
        cpu.eip() == DE_HANDLER + 1 && pushed_ip == CODE
    }

    #[test]
    fn adc_with_carry_in_wraps_all_ones_to_zero_with_carry() {
        let cpu = run(
            |a| {
                a.stc()?;
                a.adc(eax, 0)
            },
            |c| c.set_gpr(reg::EAX, 0xFFFF_FFFF),
        );
        assert_eq!(cpu.gpr(reg::EAX), 0);
        assert_eq!(cpu.eflags() & (CF | ZF | OF), CF | ZF);
    }

    #[test]
    fn sub_register_form_writes_only_the_destination_width() {
        let cpu = run(
            |a| a.sub(al, bl),
            |c| {
                c.set_gpr(reg::EAX, 0x1234_5600);
                c.set_gpr(reg::EBX, 1);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX), 0x1234_56FF);
        assert_eq!(cpu.eflags() & (CF | SF | AF), CF | SF | AF);
    }

    #[test]
    fn neg_of_zero_clears_carry_and_of_nonzero_sets_it() {
        let cpu = run(
            |a| {
                a.neg(eax)?;
                a.setc(bl)?;
                a.neg(ecx)
            },
            |c| c.set_gpr(reg::ECX, 5),
        );
        assert_eq!(cpu.gpr(reg::EBX) & 0xFF, 0);
        assert_eq!(cpu.gpr(reg::ECX), (-5i32) as u32);
        assert_eq!(cpu.eflags() & CF, CF);
    }

    #[test]
    fn inc_keeps_carry_and_overflows_at_the_sign_boundary() {
        let cpu = run(
            |a| {
                a.stc()?;
                a.inc(word_ptr(0x500))
            },
            |c| c.write_phys_bytes(0x500, &0x7FFFu16.to_le_bytes()),
        );
        let mut cpu = cpu;
        assert_eq!(mem32(&mut cpu, 0x500) & 0xFFFF, 0x8000);
        assert_eq!(cpu.eflags() & (CF | OF | SF), CF | OF | SF);
    }

    #[test]
    fn mul_32_sets_carry_and_overflow_when_the_high_half_is_used() {
        let cpu = run(
            |a| a.mul(ecx),
            |c| {
                c.set_gpr(reg::EAX, 0x8000_0000);
                c.set_gpr(reg::ECX, 4);
            },
        );
        assert_eq!((cpu.gpr(reg::EDX), cpu.gpr(reg::EAX)), (2, 0));
        assert_eq!(cpu.eflags() & (CF | OF), CF | OF);
    }

    #[test]
    fn imul_two_operand_flags_truncation_only() {
        let cpu = run(
            |a| {
                a.imul_2(eax, ecx)?;
                a.setc(bl)?;
                a.imul_3(edx, ecx, 0x10000)
            },
            |c| {
                c.set_gpr(reg::EAX, (-3i32) as u32);
                c.set_gpr(reg::ECX, 0x10000);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX), (-0x30000i32) as u32);
        assert_eq!(cpu.gpr(reg::EBX) & 0xFF, 0, "-3 * 65536 fits");
        assert_eq!(cpu.gpr(reg::EDX), 0);
        assert_eq!(cpu.eflags() & (CF | OF), CF | OF, "2^32 does not fit");
    }

    #[test]
    fn imul_8_sign_extends_into_ah() {
        let cpu = run(
            |a| a.imul(bl),
            |c| {
                c.set_gpr(reg::EAX, 0xFF); // -1
                c.set_gpr(reg::EBX, 0x02);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX) & 0xFFFF, 0xFFFE);
        assert_eq!(cpu.eflags() & (CF | OF), 0);
    }

    #[test]
    fn div_by_zero_raises_de_at_the_instruction() {
        let mut cpu = run(|a| a.div(ecx), |c| c.set_gpr(reg::EAX, 7));
        assert!(took_de(&mut cpu));
        assert_eq!(cpu.gpr(reg::EAX), 7, "no register changes");
    }

    #[test]
    fn div_quotient_overflow_raises_de() {
        let mut cpu = run(
            |a| a.div(cl),
            |c| {
                c.set_gpr(reg::EAX, 0x0200);
                c.set_gpr(reg::ECX, 2);
            },
        );
        assert!(took_de(&mut cpu));
    }

    #[test]
    fn div_32_divides_the_64_bit_edx_eax() {
        let cpu = run(
            |a| a.div(ecx),
            |c| {
                c.set_gpr(reg::EDX, 1);
                c.set_gpr(reg::EAX, 5);
                c.set_gpr(reg::ECX, 0x10);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX), 0x1000_0000);
        assert_eq!(cpu.gpr(reg::EDX), 5);
    }

    #[test]
    fn idiv_of_the_most_negative_dividend_by_minus_one_raises_de() {
        let mut cpu = run(
            |a| a.idiv(ecx),
            |c| {
                c.set_gpr(reg::EDX, 0x8000_0000);
                c.set_gpr(reg::EAX, 0);
                c.set_gpr(reg::ECX, u32::MAX);
            },
        );
        assert!(took_de(&mut cpu));
    }

    #[test]
    fn idiv_truncates_toward_zero_and_accepts_the_most_negative_quotient() {
        let cpu = run(
            |a| {
                a.idiv(cx)?;
                a.mov(si, ax)?;
                a.mov(di, dx)?;
                a.mov(ax, -256i32)?;
                a.cwd()?;
                a.mov(bl, 2)?;
                a.idiv(bl)
            },
            |c| {
                c.set_gpr(reg::EDX, 0xFFFF);
                c.set_gpr(reg::EAX, (-7i16) as u16 as u32);
                c.set_gpr(reg::ECX, 2);
            },
        );
        assert_eq!(cpu.gpr(reg::ESI) & 0xFFFF, (-3i16) as u16 as u32);
        assert_eq!(cpu.gpr(reg::EDI) & 0xFFFF, 0xFFFF, "remainder -1");
        assert_eq!(cpu.gpr(reg::EAX) & 0xFFFF, 0x0080, "-128 fits in AL");
    }

    #[test]
    fn shift_count_is_masked_to_five_bits_and_zero_changes_no_flags() {
        let cpu = run(
            |a| {
                a.stc()?;
                a.shl(eax, cl)
            },
            |c| {
                c.set_gpr(reg::EAX, 0x1234);
                c.set_gpr(reg::ECX, 32);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX), 0x1234);
        assert_eq!(cpu.eflags() & CF, CF);
    }

    #[test]
    fn shl_8_by_more_than_the_width_clears_the_operand() {
        let cpu = run(
            |a| a.shl(al, cl),
            |c| {
                c.set_gpr(reg::EAX, 0xFF);
                c.set_gpr(reg::ECX, 9);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX), 0);
        assert_eq!(cpu.eflags() & (CF | ZF), ZF);
    }

    #[test]
    fn sar_fills_with_the_sign_and_shifts_out_the_last_bit() {
        let cpu = run(|a| a.sar(eax, 4), |c| c.set_gpr(reg::EAX, 0x8000_0018));
        assert_eq!(cpu.gpr(reg::EAX), 0xF800_0001);
        assert_eq!(cpu.eflags() & (CF | OF | SF), CF | SF);
    }

    #[test]
    fn rcl_32_by_one_moves_carry_in_and_sets_overflow() {
        let cpu = run(|a| a.rcl(eax, 1), |c| c.set_gpr(reg::EAX, 0x8000_0000));
        assert_eq!(cpu.gpr(reg::EAX), 0);
        assert_eq!(cpu.eflags() & (CF | OF), CF | OF);
    }

    #[test]
    fn rcr_16_counts_modulo_17() {
        let cpu = run(
            |a| {
                a.stc()?;
                a.rcr(ax, cl)?;
                a.mov(bx, ax)?;
                a.mov(cl, 18)?;
                a.rcr(ax, cl)
            },
            |c| {
                c.set_gpr(reg::EAX, 0x0002);
                c.set_gpr(reg::ECX, 17);
            },
        );
        assert_eq!(cpu.gpr(reg::EBX) & 0xFFFF, 0x0002, "17 is a full turn");
        assert_eq!(cpu.gpr(reg::EAX) & 0xFFFF, 0x8001, "18 is one step");
        assert_eq!(cpu.eflags() & CF, 0);
    }

    #[test]
    fn rol_8_by_a_multiple_of_eight_still_sets_carry() {
        let cpu = run(|a| a.rol(al, 8), |c| c.set_gpr(reg::EAX, 0x81));
        assert_eq!(cpu.gpr(reg::EAX), 0x81);
        assert_eq!(cpu.eflags() & CF, CF);
    }

    #[test]
    fn shld_and_shrd_32_fill_from_the_source() {
        let cpu = run(
            |a| {
                a.shld(eax, ebx, 8)?;
                a.shrd(edx, ebx, cl)
            },
            |c| {
                c.set_gpr(reg::EAX, 0x1234_5678);
                c.set_gpr(reg::EBX, 0x9ABC_DEF0);
                c.set_gpr(reg::ECX, 36);
                c.set_gpr(reg::EDX, 0x0000_0018);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX), 0x3456_789A);
        assert_eq!(cpu.gpr(reg::EDX), 0x0000_0001);
        assert_eq!(cpu.eflags() & CF, CF, "bit 3 of EDX went out last");
    }

    #[test]
    fn shld_16_by_sixteen_yields_the_source() {
        let cpu = run(
            |a| a.shld(ax, bx, 16),
            |c| {
                c.set_gpr(reg::EAX, 0x1111);
                c.set_gpr(reg::EBX, 0xABCD);
            },
        );
        assert_eq!(cpu.gpr(reg::EAX) & 0xFFFF, 0xABCD);
    }

    #[test]
    fn bt_register_offset_addresses_the_bit_string_around_the_operand() {
        let mut cpu = run(
            |a| {
                a.bts(dword_ptr(bx), eax)?;
                a.btr(word_ptr(bx), cx)?;
                a.setc(dl)
            },
            |c| {
                c.set_gpr(reg::EBX, 0x504);
                c.set_gpr(reg::EAX, u32::MAX); // bit -1: bit 31 of the dword before
                c.set_gpr(reg::ECX, 35); // bit 3 of the word at +4
                c.write_phys_bytes(0x508, &[0x08]);
            },
        );
        assert_eq!(mem32(&mut cpu, 0x500), 0x8000_0000);
        assert_eq!(mem32(&mut cpu, 0x508), 0);
        assert_eq!(cpu.gpr(reg::EDX) & 0xFF, 1);
    }

    #[test]
    fn bt_immediate_offset_stays_within_the_operand() {
        let cpu = run(|a| a.btc(ax, 17), |c| c.set_gpr(reg::EAX, 0x0002));
        assert_eq!(cpu.gpr(reg::EAX) & 0xFFFF, 0);
        assert_eq!(cpu.eflags() & CF, CF);
    }

    #[test]
    fn bsf_of_zero_sets_zf_and_keeps_the_destination() {
        let cpu = run(
            |a| {
                a.bsf(ecx, eax)?;
                a.setz(bl)?;
                a.bsr(edx, esi)
            },
            |c| {
                c.set_gpr(reg::ECX, 0x1234);
                c.set_gpr(reg::ESI, 0x00F0);
            },
        );
        assert_eq!(cpu.gpr(reg::ECX), 0x1234);
        assert_eq!(cpu.gpr(reg::EBX) & 0xFF, 1);
        assert_eq!(cpu.gpr(reg::EDX), 7);
        assert_eq!(cpu.eflags() & ZF, 0);
    }

    #[test]
    fn rep_bsf_is_bsf_not_tzcnt() {
        let cpu = run(
            |a| a.db(&[0xF3, 0x0F, 0xBC, 0xC8]), // rep bsf cx, ax
            |c| {
                c.set_gpr(reg::ECX, 0x1234);
                c.set_gpr(reg::EAX, 0);
            },
        );
        assert_eq!(cpu.gpr(reg::ECX), 0x1234);
        assert_eq!(cpu.eflags() & ZF, ZF);
    }

    #[test]
    fn cmpxchg_stores_on_equal_and_loads_the_accumulator_otherwise() {
        let mut cpu = run(
            |a| {
                a.cmpxchg(dword_ptr(0x500), ecx)?;
                a.setz(bl)?;
                a.cmpxchg(dword_ptr(0x500), edx)
            },
            |c| {
                c.set_gpr(reg::EAX, 5);
                c.set_gpr(reg::ECX, 9);
                c.set_gpr(reg::EDX, 11);
                c.write_phys_bytes(0x500, &5u32.to_le_bytes());
            },
        );
        assert_eq!(cpu.gpr(reg::EBX) & 0xFF, 1);
        assert_eq!(mem32(&mut cpu, 0x500), 9);
        assert_eq!(cpu.gpr(reg::EAX), 9, "second compare failed and loaded EAX");
        assert_eq!(cpu.eflags() & ZF, 0);
    }

    #[test]
    fn cmpxchg8b_swaps_on_equal_and_loads_edx_eax_otherwise() {
        let mut cpu = run(
            |a| {
                a.cmpxchg8b(qword_ptr(0x500))?;
                a.setz(dh)?;
                a.mov(esi, 0)?;
                a.cmpxchg8b(qword_ptr(0x500))
            },
            |c| {
                c.set_gpr(reg::EDX, 2);
                c.set_gpr(reg::EAX, 1);
                c.set_gpr(reg::ECX, 4);
                c.set_gpr(reg::EBX, 3);
                c.write_phys_bytes(0x500, &0x2_0000_0001u64.to_le_bytes());
            },
        );
        assert_eq!(mem32(&mut cpu, 0x500), 3);
        assert_eq!(mem32(&mut cpu, 0x504), 4);
        assert_eq!((cpu.gpr(reg::EDX), cpu.gpr(reg::EAX)), (4, 3));
        assert_eq!(cpu.eflags() & ZF, 0);
    }

    #[test]
    fn xadd_exchanges_then_adds() {
        let mut cpu = run(
            |a| {
                a.xadd(dword_ptr(0x500), ecx)?;
                a.xadd(eax, eax)
            },
            |c| {
                c.set_gpr(reg::EAX, 21);
                c.set_gpr(reg::ECX, 2);
                c.write_phys_bytes(0x500, &40u32.to_le_bytes());
            },
        );
        assert_eq!(mem32(&mut cpu, 0x500), 42);
        assert_eq!(cpu.gpr(reg::ECX), 40);
        assert_eq!(cpu.gpr(reg::EAX), 42);
    }

    #[test]
    fn daa_adjusts_a_packed_bcd_sum() {
        let cpu = run(
            |a| {
                a.add(al, 0x28)?;
                a.daa()
            },
            |c| c.set_gpr(reg::EAX, 0x19),
        );
        assert_eq!(cpu.gpr(reg::EAX) & 0xFF, 0x47);
        assert_eq!(cpu.eflags() & (CF | AF), AF);
    }

    #[test]
    fn aam_by_zero_raises_de() {
        let mut cpu = run(|a| a.db(&[0xD4, 0x00]), |_| {});
        assert!(took_de(&mut cpu));
    }

    #[test]
    fn aad_folds_ah_into_al() {
        let cpu = run(|a| a.aad(10), |c| c.set_gpr(reg::EAX, 0x0407));
        assert_eq!(cpu.gpr(reg::EAX) & 0xFFFF, 47);
    }

    #[test]
    fn sign_extensions_and_salc() {
        let cpu = run(
            |a| {
                a.cwde()?;
                a.cdq()?;
                a.stc()?;
                a.db(&[0xD6]) // SALC
            },
            |c| c.set_gpr(reg::EAX, 0x8000),
        );
        assert_eq!(cpu.gpr(reg::EAX), 0xFFFF_80FF);
        assert_eq!(cpu.gpr(reg::EDX), 0xFFFF_FFFF);
    }
}
