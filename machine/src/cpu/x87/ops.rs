//! x87 instruction handlers, named after the manual's mnemonics.
//!
//! Every handler reads its memory operand (or checks its destination is
//! writable) before it changes any FPU state, so a fault leaves the FPU as
//! it was. Results go through `commit`, which records the exceptions and
//! suppresses the write when an unmasked IE, DE or ZE (or, for memory
//! destinations, OE or UE) says the destination must stay unchanged.

use iced_x86::{Code, Instruction};

use super::softfloat::{self as sf, Cmp, Env, F80};
use super::{Fpu, sw, trans};
use crate::cpu::exec::{Handler, Insn};
use crate::cpu::fault::Result;
use crate::cpu::{Cpu, flags, reg};

// ---- operation and operand kinds (const generic parameters) ----

const ADD: u8 = 0;
const MUL: u8 = 1;
const SUB: u8 = 2;
const SUBR: u8 = 3;
const DIV: u8 = 4;
const DIVR: u8 = 5;

const M32FP: u8 = 0;
const M64FP: u8 = 1;
const M16INT: u8 = 2;
const M32INT: u8 = 3;
const M64INT: u8 = 4;

const K_ONE: u8 = 0;
const K_ZERO: u8 = 1;
const K_PI: u8 = 2;
const K_L2E: u8 = 3;
const K_L2T: u8 = 4;
const K_LG2: u8 = 5;
const K_LN2: u8 = 6;

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    use Code::*;
    Some(match i.code() {
        // Loads.
        Fld_m32fp => fld_mem::<M32FP>,
        Fld_m64fp => fld_mem::<M64FP>,
        Fild_m16int => fld_mem::<M16INT>,
        Fild_m32int => fld_mem::<M32INT>,
        Fild_m64int => fld_mem::<M64INT>,
        Fld_m80fp => fld_m80fp,
        Fbld_m80bcd => fbld_m80bcd,
        Fld_sti => fld_sti,
        Fld1 => fld_const::<K_ONE>,
        Fldz => fld_const::<K_ZERO>,
        Fldpi => fld_const::<K_PI>,
        Fldl2e => fld_const::<K_L2E>,
        Fldl2t => fld_const::<K_L2T>,
        Fldlg2 => fld_const::<K_LG2>,
        Fldln2 => fld_const::<K_LN2>,
        // Stores.
        Fst_m32fp => fst_mem::<M32FP, false>,
        Fstp_m32fp => fst_mem::<M32FP, true>,
        Fst_m64fp => fst_mem::<M64FP, false>,
        Fstp_m64fp => fst_mem::<M64FP, true>,
        Fist_m16int => fst_mem::<M16INT, false>,
        Fistp_m16int => fst_mem::<M16INT, true>,
        Fist_m32int => fst_mem::<M32INT, false>,
        Fistp_m32int => fst_mem::<M32INT, true>,
        Fistp_m64int => fst_mem::<M64INT, true>,
        Fstp_m80fp => fstp_m80fp,
        Fbstp_m80bcd => fbstp_m80bcd,
        Fst_sti => fst_sti::<false>,
        Fstp_sti | Fstpnce_sti | Fstp_sti_DFD0 | Fstp_sti_DFD8 => fst_sti::<true>,
        // Arithmetic.
        Fadd_m32fp => arith_mem::<ADD, M32FP>,
        Fmul_m32fp => arith_mem::<MUL, M32FP>,
        Fsub_m32fp => arith_mem::<SUB, M32FP>,
        Fsubr_m32fp => arith_mem::<SUBR, M32FP>,
        Fdiv_m32fp => arith_mem::<DIV, M32FP>,
        Fdivr_m32fp => arith_mem::<DIVR, M32FP>,
        Fadd_m64fp => arith_mem::<ADD, M64FP>,
        Fmul_m64fp => arith_mem::<MUL, M64FP>,
        Fsub_m64fp => arith_mem::<SUB, M64FP>,
        Fsubr_m64fp => arith_mem::<SUBR, M64FP>,
        Fdiv_m64fp => arith_mem::<DIV, M64FP>,
        Fdivr_m64fp => arith_mem::<DIVR, M64FP>,
        Fiadd_m16int => arith_mem::<ADD, M16INT>,
        Fimul_m16int => arith_mem::<MUL, M16INT>,
        Fisub_m16int => arith_mem::<SUB, M16INT>,
        Fisubr_m16int => arith_mem::<SUBR, M16INT>,
        Fidiv_m16int => arith_mem::<DIV, M16INT>,
        Fidivr_m16int => arith_mem::<DIVR, M16INT>,
        Fiadd_m32int => arith_mem::<ADD, M32INT>,
        Fimul_m32int => arith_mem::<MUL, M32INT>,
        Fisub_m32int => arith_mem::<SUB, M32INT>,
        Fisubr_m32int => arith_mem::<SUBR, M32INT>,
        Fidiv_m32int => arith_mem::<DIV, M32INT>,
        Fidivr_m32int => arith_mem::<DIVR, M32INT>,
        Fadd_st0_sti => arith_st0_sti::<ADD>,
        Fmul_st0_sti => arith_st0_sti::<MUL>,
        Fsub_st0_sti => arith_st0_sti::<SUB>,
        Fsubr_st0_sti => arith_st0_sti::<SUBR>,
        Fdiv_st0_sti => arith_st0_sti::<DIV>,
        Fdivr_st0_sti => arith_st0_sti::<DIVR>,
        Fadd_sti_st0 => arith_sti_st0::<ADD, false>,
        Fmul_sti_st0 => arith_sti_st0::<MUL, false>,
        Fsub_sti_st0 => arith_sti_st0::<SUB, false>,
        Fsubr_sti_st0 => arith_sti_st0::<SUBR, false>,
        Fdiv_sti_st0 => arith_sti_st0::<DIV, false>,
        Fdivr_sti_st0 => arith_sti_st0::<DIVR, false>,
        Faddp_sti_st0 => arith_sti_st0::<ADD, true>,
        Fmulp_sti_st0 => arith_sti_st0::<MUL, true>,
        Fsubp_sti_st0 => arith_sti_st0::<SUB, true>,
        Fsubrp_sti_st0 => arith_sti_st0::<SUBR, true>,
        Fdivp_sti_st0 => arith_sti_st0::<DIV, true>,
        Fdivrp_sti_st0 => arith_sti_st0::<DIVR, true>,
        Fsqrt => unary::<0>,
        Frndint => unary::<1>,
        F2xm1 => unary::<2>,
        Fsin => fsin_fcos::<false>,
        Fcos => fsin_fcos::<true>,
        Fptan => fptan_fsincos::<false>,
        Fsincos => fptan_fsincos::<true>,
        Fscale => fscale,
        Fpatan => binary_pop::<0>,
        Fyl2x => binary_pop::<1>,
        Fyl2xp1 => binary_pop::<2>,
        Fprem => fprem::<false>,
        Fprem1 => fprem::<true>,
        Fxtract => fxtract,
        Fchs => fchs_fabs::<false>,
        Fabs => fchs_fabs::<true>,
        // Comparisons.
        Fcom_m32fp => fcom_mem::<M32FP, false>,
        Fcomp_m32fp => fcom_mem::<M32FP, true>,
        Fcom_m64fp => fcom_mem::<M64FP, false>,
        Fcomp_m64fp => fcom_mem::<M64FP, true>,
        Ficom_m16int => fcom_mem::<M16INT, false>,
        Ficomp_m16int => fcom_mem::<M16INT, true>,
        Ficom_m32int => fcom_mem::<M32INT, false>,
        Ficomp_m32int => fcom_mem::<M32INT, true>,
        Fcom_st0_sti | Fcom_st0_sti_DCD0 => fcom_sti::<false, 0>,
        Fcomp_st0_sti | Fcomp_st0_sti_DCD8 | Fcomp_st0_sti_DED0 => fcom_sti::<false, 1>,
        Fucom_st0_sti => fcom_sti::<true, 0>,
        Fucomp_st0_sti => fcom_sti::<true, 1>,
        Fcompp => fcompp::<false>,
        Fucompp => fcompp::<true>,
        Fcomi_st0_sti => fcomi::<false, false>,
        Fcomip_st0_sti => fcomi::<false, true>,
        Fucomi_st0_sti => fcomi::<true, false>,
        Fucomip_st0_sti => fcomi::<true, true>,
        Ftst => ftst,
        Fxam => fxam,
        Fcmovb_st0_sti => fcmov::<0x2>,
        Fcmove_st0_sti => fcmov::<0x4>,
        Fcmovbe_st0_sti => fcmov::<0x6>,
        Fcmovu_st0_sti => fcmov::<0xA>,
        Fcmovnb_st0_sti => fcmov::<0x3>,
        Fcmovne_st0_sti => fcmov::<0x5>,
        Fcmovnbe_st0_sti => fcmov::<0x7>,
        Fcmovnu_st0_sti => fcmov::<0xB>,
        // Register stack.
        Fxch_st0_sti | Fxch_st0_sti_DDC8 | Fxch_st0_sti_DFC8 => fxch,
        Ffree_sti => ffree::<false>,
        Ffreep_sti => ffree::<true>,
        Fincstp => fincstp_fdecstp::<1>,
        Fdecstp => fincstp_fdecstp::<7>,
        Fnop => fnop,
        // Control.
        Fninit => finit::<false>,
        Finit => finit::<true>,
        Fnclex => fclex::<false>,
        Fclex => fclex::<true>,
        Fnstsw_AX => fstsw_ax::<false>,
        Fstsw_AX => fstsw_ax::<true>,
        Fnstsw_m2byte => fstsw_m2byte::<false>,
        Fstsw_m2byte => fstsw_m2byte::<true>,
        Fnstcw_m2byte => fstcw::<false>,
        Fstcw_m2byte => fstcw::<true>,
        Fldcw_m2byte => fldcw,
        Fnstenv_m14byte => fstenv::<false, false>,
        Fstenv_m14byte => fstenv::<false, true>,
        Fnstenv_m28byte => fstenv::<true, false>,
        Fstenv_m28byte => fstenv::<true, true>,
        Fldenv_m14byte => fldenv::<false>,
        Fldenv_m28byte => fldenv::<true>,
        Fnsave_m94byte => fsave::<false, false>,
        Fsave_m94byte => fsave::<false, true>,
        Fnsave_m108byte => fsave::<true, false>,
        Fsave_m108byte => fsave::<true, true>,
        Frstor_m94byte => frstor::<false>,
        Frstor_m108byte => frstor::<true>,
        Wait => fwait,
        // 8087/287 leftovers: no-ops on the 387 and later.
        Fneni | Fndisi | Fnsetpm => fnop_control::<false>,
        Feni | Fdisi | Fsetpm => fnop_control::<true>,
        _ => return None,
    })
}

// ---- shared pieces ----

fn calc(op: u8, env: &mut Env, a: F80, b: F80) -> F80 {
    match op {
        ADD => sf::add(env, a, b),
        MUL => sf::mul(env, a, b),
        SUB => sf::sub(env, a, b),
        SUBR => sf::sub(env, b, a),
        DIV => sf::div(env, a, b),
        _ => sf::div(env, b, a),
    }
}

/// Exceptions that, unmasked, leave a register destination unchanged.
const BLOCK_REG: u8 = sf::IE | sf::DE | sf::ZE;
/// ... and a memory destination.
const BLOCK_MEM: u8 = sf::IE | sf::OE | sf::UE;

impl Fpu {
    fn opt(&self, i: u8) -> Option<F80> {
        (!self.is_empty(i)).then(|| self.st(i))
    }

    /// Records `env`'s exceptions and C1; true when the result may be written.
    fn settle(&mut self, env: &Env, block: u8) -> bool {
        self.set_cc(sw::C1, if env.rounded_up { sw::C1 } else { 0 });
        self.raise(env.flags);
        env.flags & block & !(self.cw as u8) == 0
    }

    /// Writes ST(dst) (and pops) unless an unmasked exception forbids it.
    fn commit(&mut self, env: &Env, v: F80, dst: u8, pop: bool) {
        if self.settle(env, BLOCK_REG) {
            self.set_st(dst, v);
            if pop {
                self.pop();
            }
        }
    }

    /// Stack underflow with the masked response: ST(dst) = indefinite.
    fn underflow(&mut self, dst: u8, pop: bool) {
        if self.stack_fault(false) {
            self.set_st(dst, F80::INDEFINITE);
            if pop {
                self.pop();
            }
        }
    }

    /// `ST(dst) = a op b` with operands that may be empty registers.
    fn arith(&mut self, op: u8, dst: u8, a: Option<F80>, b: Option<F80>, mut env: Env, pop: bool) {
        let (Some(a), Some(b)) = (a, b) else {
            return self.underflow(dst, pop);
        };
        let r = calc(op, &mut env, a, b);
        self.commit(&env, r, dst, pop);
    }

    /// Pushes a loaded value; `env` holds the exceptions the load raised.
    fn load(&mut self, v: F80, env: &Env) {
        if !self.is_empty(7) {
            if self.stack_fault(true) {
                self.push(F80::INDEFINITE);
            }
            return;
        }
        if self.settle(env, BLOCK_REG) {
            self.push(v);
        }
    }

    /// Condition codes of a comparison: C3 C2 C0 (C1 cleared).
    fn set_compare(&mut self, c: Cmp) {
        let v = match c {
            Cmp::Greater => 0,
            Cmp::Less => sw::C0,
            Cmp::Equal => sw::C3,
            Cmp::Unordered => sw::C3 | sw::C2 | sw::C0,
        };
        self.set_cc(sw::CC, v);
    }
}

impl Cpu {
    /// Reads a memory operand of `kind` and converts it (exactly) to extended.
    fn fpu_read_operand(&mut self, d: &Insn, kind: u8, env: &mut Env) -> Result<F80> {
        let off = self.ea(d);
        Ok(match kind {
            M32FP => sf::from_f32(env, self.read_u32(d.seg, off)?),
            M64FP => sf::from_f64(env, self.read_u64(d.seg, off)?),
            M16INT => sf::from_i64(self.read_u16(d.seg, off)? as i16 as i64),
            M32INT => sf::from_i64(self.read_u32(d.seg, off)? as i32 as i64),
            _ => sf::from_i64(self.read_u64(d.seg, off)? as i64),
        })
    }

    fn read_m80(&mut self, d: &Insn) -> Result<[u8; 10]> {
        let mut b = [0; 10];
        let off = self.ea(d);
        self.fpu_read_bytes(d.seg, off, &mut b)?;
        Ok(b)
    }
}

// ---- loads ----

/// FLD m32fp / m64fp, FILD m16int / m32int / m64int.
fn fld_mem<const KIND: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let mut env = cpu.fpu.env();
    let v = cpu.fpu_read_operand(d, KIND, &mut env)?;
    cpu.fpu_note(d, true);
    cpu.fpu.load(v, &env);
    Ok(())
}

/// FLD m80fp: no conversion, no exceptions but stack overflow.
fn fld_m80fp(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let v = F80::from_le_bytes(cpu.read_m80(d)?);
    cpu.fpu_note(d, true);
    cpu.fpu.load(v, &Env::new());
    Ok(())
}

/// FBLD m80bcd.
fn fbld_m80bcd(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let v = sf::from_bcd(cpu.read_m80(d)?);
    cpu.fpu_note(d, true);
    cpu.fpu.load(v, &Env::new());
    Ok(())
}

/// FLD ST(i).
fn fld_sti(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    match f.opt(d.r0 & 7) {
        Some(v) => f.load(v, &Env::new()),
        None if f.is_empty(7) => {
            if f.stack_fault(false) {
                f.push(F80::INDEFINITE);
            }
        }
        None => f.load(F80::INDEFINITE, &Env::new()),
    }
    Ok(())
}

/// The 128-bit expansions (exponent, significand) of the FLDxx constants;
/// the rounding mode picks the last bit, as on the 387 and later.
const CONSTANTS: [(i32, u128); 5] = [
    (1, 0xC90F_DAA2_2168_C234_C4C6_628B_80DC_1CD1),
    (0, 0xB8AA_3B29_5C17_F0BB_BE87_FED0_691D_3E88),
    (1, 0xD49A_784B_CD1B_8AFE_492B_F6FF_4DAF_DB4C),
    (-2, 0x9A20_9A84_FBCF_F798_8F89_59AC_0B7C_9178),
    (-1, 0xB172_17F7_D1CF_79AB_C9E3_B398_03F2_F6AF),
];

/// FLD1, FLDZ, FLDPI, FLDL2E, FLDL2T, FLDLG2, FLDLN2.
fn fld_const<const K: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let v = match K {
        K_ONE => F80::ONE,
        K_ZERO => F80::ZERO,
        _ => {
            let (e, m) = CONSTANTS[(K - K_PI) as usize];
            sf::constant(cpu.fpu.env().round, e, m)
        }
    };
    cpu.fpu.load(v, &Env::new());
    Ok(())
}

// ---- stores ----

/// FST/FSTP m32fp, m64fp; FIST/FISTP m16int, m32int; FISTP m64int.
fn fst_mem<const KIND: u8, const POP: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, true);
    let off = cpu.ea(d);
    let mut env = cpu.fpu.env();
    env.wrap = false;
    let underflow = cpu.fpu.is_empty(0);
    if underflow && !cpu.fpu.ie_masked() {
        cpu.fpu.stack_fault(false);
        return Ok(());
    }
    let v = if underflow {
        F80::INDEFINITE
    } else {
        cpu.fpu.st(0)
    };
    let mut probe = env;
    let bits = match KIND {
        M32FP => sf::to_f32(&mut probe, v) as u64,
        M64FP => sf::to_f64(&mut probe, v),
        M16INT => sf::to_int(&mut probe, v, 16) as u64,
        M32INT => sf::to_int(&mut probe, v, 32) as u64,
        _ => sf::to_int(&mut probe, v, 64) as u64,
    };
    let write = underflow || probe.flags & BLOCK_MEM & !(cpu.fpu.cw as u8) == 0;
    if write {
        match KIND {
            M32FP | M32INT => cpu.write_u32(d.seg, off, bits as u32)?,
            M16INT => cpu.write_u16(d.seg, off, bits as u16)?,
            _ => cpu.write_u64(d.seg, off, bits)?,
        }
    }
    let f = &mut cpu.fpu;
    if underflow {
        f.stack_fault(false);
    } else {
        f.settle(&probe, BLOCK_MEM);
    }
    if write && POP {
        f.pop();
    }
    Ok(())
}

/// Stores ST(0) as raw 10 bytes (`bcd`: as packed BCD) and pops.
fn store_m80(cpu: &mut Cpu, d: &Insn, bcd: bool) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, true);
    let off = cpu.ea(d);
    let underflow = cpu.fpu.is_empty(0);
    if underflow && !cpu.fpu.ie_masked() {
        cpu.fpu.stack_fault(false);
        return Ok(());
    }
    let mut env = cpu.fpu.env();
    let bytes = match (underflow, bcd) {
        (true, true) => sf::BCD_INDEFINITE,
        (true, false) => F80::INDEFINITE.to_le_bytes(),
        (false, true) => sf::to_bcd(&mut env, cpu.fpu.st(0)),
        (false, false) => cpu.fpu.st(0).to_le_bytes(),
    };
    let write = underflow || env.flags & BLOCK_MEM & !(cpu.fpu.cw as u8) == 0;
    if write {
        cpu.fpu_write_bytes(d.seg, off, &bytes)?;
    }
    let f = &mut cpu.fpu;
    if underflow {
        f.stack_fault(false);
    } else {
        f.settle(&env, BLOCK_MEM);
    }
    if write {
        f.pop();
    }
    Ok(())
}

/// FSTP m80fp.
fn fstp_m80fp(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    store_m80(cpu, d, false)
}

/// FBSTP m80bcd.
fn fbstp_m80bcd(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    store_m80(cpu, d, true)
}

/// FST/FSTP ST(i): a copy, no rounding.
fn fst_sti<const POP: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    match f.opt(0) {
        Some(v) => {
            f.set_cc(sw::C1, 0);
            f.set_st(d.r0 & 7, v);
            if POP {
                f.pop();
            }
        }
        None => f.underflow(d.r0 & 7, POP),
    }
    Ok(())
}

// ---- arithmetic ----

/// FADD/FMUL/FSUB/FSUBR/FDIV/FDIVR ST(0), m32fp / m64fp, and FIADD... m16int / m32int.
fn arith_mem<const OP: u8, const KIND: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let mut env = cpu.fpu.env();
    let b = cpu.fpu_read_operand(d, KIND, &mut env)?;
    cpu.fpu_note(d, true);
    let a = cpu.fpu.opt(0);
    cpu.fpu.arith(OP, 0, a, Some(b), env, false);
    Ok(())
}

/// FADD ST(0), ST(i) and the others.
fn arith_st0_sti<const OP: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let (a, b) = (f.opt(0), f.opt(d.r1 & 7));
    f.arith(OP, 0, a, b, f.env(), false);
    Ok(())
}

/// FADD ST(i), ST(0), FADDP ST(i), ST(0) and the others.
fn arith_sti_st0<const OP: u8, const POP: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let i = d.r0 & 7;
    let (a, b) = (f.opt(i), f.opt(0));
    f.arith(OP, i, a, b, f.env(), POP);
    Ok(())
}

/// FSQRT, FRNDINT, F2XM1 on ST(0).
fn unary<const OP: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let Some(a) = f.opt(0) else {
        f.underflow(0, false);
        return Ok(());
    };
    let mut env = f.env();
    let r = match OP {
        0 => sf::sqrt(&mut env, a),
        1 => sf::round_to_int(&mut env, a),
        _ => trans::exp2m1(&mut env, a),
    };
    f.commit(&env, r, 0, false);
    Ok(())
}

/// FSIN, FCOS: C2 = 1 and ST(0) unchanged when |ST(0)| >= 2^63.
fn fsin_fcos<const COS: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let Some(a) = f.opt(0) else {
        f.set_cc(sw::C2, 0);
        f.underflow(0, false);
        return Ok(());
    };
    let mut env = f.env();
    let r = if COS {
        trans::cos(&mut env, a)
    } else {
        trans::sin(&mut env, a)
    };
    match r {
        Some(r) => {
            f.set_cc(sw::C2, 0);
            f.commit(&env, r, 0, false);
        }
        None => f.set_cc(sw::C2, sw::C2),
    }
    Ok(())
}

/// FPTAN (ST(0) = tan, push 1.0) and FSINCOS (ST(0) = sin, push cos).
fn fptan_fsincos<const SINCOS: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let a = f.opt(0);
    if a.is_none() || !f.is_empty(7) {
        f.set_cc(sw::C2, 0);
        if f.stack_fault(a.is_some()) {
            f.set_st(0, F80::INDEFINITE);
            f.push(F80::INDEFINITE);
        }
        return Ok(());
    }
    let a = a.unwrap_or_default();
    let mut env = f.env();
    let r = if SINCOS {
        trans::sincos(&mut env, a)
    } else {
        trans::tan(&mut env, a).map(|t| {
            // tan(NaN) pushes the NaN again, not 1.0.
            let second = if t.is_nan() { t } else { F80::ONE };
            (t, second)
        })
    };
    match r {
        Some((r0, r1)) => {
            f.set_cc(sw::C2, 0);
            if f.settle(&env, BLOCK_REG) {
                f.set_st(0, r0);
                f.push(r1);
            }
        }
        None => f.set_cc(sw::C2, sw::C2),
    }
    Ok(())
}

/// FSCALE: ST(0) = ST(0) * 2^trunc(ST(1)).
fn fscale(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let (Some(a), Some(b)) = (f.opt(0), f.opt(1)) else {
        f.underflow(0, false);
        return Ok(());
    };
    let mut env = f.env();
    let r = sf::scale(&mut env, a, b);
    f.commit(&env, r, 0, false);
    Ok(())
}

/// FPATAN, FYL2X, FYL2XP1: ST(1) = f(ST(1), ST(0)), then pop.
fn binary_pop<const OP: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let (Some(x), Some(y)) = (f.opt(0), f.opt(1)) else {
        f.underflow(1, true);
        return Ok(());
    };
    let mut env = f.env();
    let r = match OP {
        0 => trans::atan2(&mut env, y, x),
        1 => trans::yl2x(&mut env, y, x),
        _ => trans::yl2xp1(&mut env, y, x),
    };
    f.commit(&env, r, 1, true);
    Ok(())
}

/// FPREM, FPREM1: partial remainder of ST(0) by ST(1); C2 = incomplete,
/// C0 C3 C1 = quotient bits 2, 1, 0.
fn fprem<const IEEE: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let (Some(a), Some(b)) = (f.opt(0), f.opt(1)) else {
        f.set_cc(sw::C2, 0);
        f.underflow(0, false);
        return Ok(());
    };
    let mut env = f.env();
    let r = sf::remainder(&mut env, a, b, IEEE);
    if f.settle(&env, BLOCK_REG) {
        f.set_st(0, r.value);
        let q = r.quotient as u16;
        let cc = if r.complete {
            (q & 4) << 6 | (q & 2) << 13 | (q & 1) << 9
        } else {
            sw::C2
        };
        f.set_cc(sw::CC, cc);
    }
    Ok(())
}

/// FXTRACT: ST(0) = exponent, then push the significand.
fn fxtract(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let a = f.opt(0);
    if a.is_none() || !f.is_empty(7) {
        if f.stack_fault(a.is_some()) {
            f.set_st(0, F80::INDEFINITE);
            f.push(F80::INDEFINITE);
        }
        return Ok(());
    }
    let mut env = f.env();
    let (e, s) = sf::extract(&mut env, a.unwrap_or_default());
    if f.settle(&env, BLOCK_REG) {
        f.set_st(0, e);
        f.push(s);
    }
    Ok(())
}

/// FCHS, FABS: sign changes only (no exceptions but stack underflow).
fn fchs_fabs<const ABS: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    match f.opt(0) {
        Some(v) => {
            f.set_cc(sw::C1, 0);
            f.set_st(0, if ABS { v.abs() } else { v.neg() });
        }
        None => f.underflow(0, false),
    }
    Ok(())
}

// ---- comparisons ----

impl Fpu {
    /// FCOM-style compare of `a` with `b`, then `pops` pops; `pre` holds
    /// the exceptions loading a memory operand raised.
    fn compare(&mut self, a: Option<F80>, b: Option<F80>, quiet: bool, pops: u8, pre: u8) {
        let (Some(a), Some(b)) = (a, b) else {
            if self.stack_fault(false) {
                self.set_compare(Cmp::Unordered);
                self.set_cc(sw::C1, 0);
                for _ in 0..pops {
                    self.pop();
                }
            }
            return;
        };
        let mut env = self.env();
        env.flags = pre;
        let c = sf::compare(&mut env, a, b, quiet);
        if self.settle(&env, sf::IE | sf::DE) {
            self.set_compare(c);
            for _ in 0..pops {
                self.pop();
            }
        }
    }
}

/// FCOM/FCOMP m32fp / m64fp, FICOM/FICOMP m16int / m32int.
fn fcom_mem<const KIND: u8, const POP: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let mut env = cpu.fpu.env();
    let b = cpu.fpu_read_operand(d, KIND, &mut env)?;
    cpu.fpu_note(d, true);
    let a = cpu.fpu.opt(0);
    cpu.fpu.compare(a, Some(b), false, POP as u8, env.flags);
    Ok(())
}

/// FCOM/FCOMP/FUCOM/FUCOMP ST(i).
fn fcom_sti<const QUIET: bool, const POPS: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let (a, b) = (f.opt(0), f.opt(d.r1 & 7));
    f.compare(a, b, QUIET, POPS, 0);
    Ok(())
}

/// FCOMPP, FUCOMPP: compare ST(0) with ST(1), pop twice.
fn fcompp<const QUIET: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let (a, b) = (f.opt(0), f.opt(1));
    f.compare(a, b, QUIET, 2, 0);
    Ok(())
}

/// FCOMI/FCOMIP/FUCOMI/FUCOMIP ST(0), ST(i): the result goes to ZF, PF, CF.
fn fcomi<const QUIET: bool, const POP: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let (a, b) = (f.opt(0), f.opt(d.r1 & 7));
    let c = match (a, b) {
        (Some(a), Some(b)) => {
            let mut env = f.env();
            let c = sf::compare(&mut env, a, b, QUIET);
            if !f.settle(&env, sf::IE | sf::DE) {
                return Ok(());
            }
            c
        }
        _ => {
            if !f.stack_fault(false) {
                return Ok(());
            }
            Cmp::Unordered
        }
    };
    f.set_cc(sw::C1, 0);
    if POP {
        f.pop();
    }
    let status = match c {
        Cmp::Greater => 0,
        Cmp::Less => flags::CF,
        Cmp::Equal => flags::ZF,
        Cmp::Unordered => flags::ZF | flags::PF | flags::CF,
    };
    cpu.flags.set_arith(status);
    Ok(())
}

/// FTST: compare ST(0) with +0.0.
fn ftst(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let a = f.opt(0);
    f.compare(a, Some(F80::ZERO), false, 0, 0);
    Ok(())
}

/// FXAM: classify ST(0) into C3 C2 C0, its sign into C1.
fn fxam(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let v = f.st(0);
    let class = if f.is_empty(0) {
        sw::C3 | sw::C0
    } else if v.is_unsupported() {
        0
    } else if v.is_nan() {
        sw::C0
    } else if v.is_inf() {
        sw::C2 | sw::C0
    } else if v.is_zero() {
        sw::C3
    } else if v.is_denormal() {
        sw::C3 | sw::C2
    } else {
        sw::C2
    };
    let sign = if v.sign() { sw::C1 } else { 0 };
    f.set_cc(sw::CC, class | sign);
    Ok(())
}

/// FCMOVcc ST(0), ST(i); `CC` is the Jcc condition nibble.
fn fcmov<const CC: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let take = cpu.flags.cond(CC);
    let f = &mut cpu.fpu;
    match (f.opt(0), f.opt(d.r1 & 7)) {
        (Some(_), Some(v)) => {
            f.set_cc(sw::C1, 0);
            if take {
                f.set_st(0, v);
            }
        }
        _ => f.underflow(0, false),
    }
    Ok(())
}

// ---- register stack ----

/// FXCH ST(i).
fn fxch(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    let f = &mut cpu.fpu;
    let i = d.r1 & 7;
    let (a, b) = (f.opt(0), f.opt(i));
    if (a.is_none() || b.is_none()) && !f.stack_fault(false) {
        return Ok(());
    }
    if a.is_some() && b.is_some() {
        f.set_cc(sw::C1, 0);
    }
    f.set_st(0, b.unwrap_or(F80::INDEFINITE));
    f.set_st(i, a.unwrap_or(F80::INDEFINITE));
    Ok(())
}

/// FFREE ST(i), FFREEP ST(i).
fn ffree<const POP: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    cpu.fpu.free(d.r0 & 7);
    if POP {
        cpu.fpu.pop();
    }
    Ok(())
}

/// FINCSTP (`STEP` 1), FDECSTP (`STEP` 7): TOP moves, tags stay.
fn fincstp_fdecstp<const STEP: u8>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    cpu.fpu.top = (cpu.fpu.top + STEP) & 7;
    cpu.fpu.set_cc(sw::C1, 0);
    Ok(())
}

/// FNOP.
fn fnop(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    cpu.fpu_note(d, false);
    Ok(())
}

// ---- control ----

/// The entry checks of a control instruction with (`WAIT`) or without a
/// WAIT prefix folded in.
fn control_enter<const WAIT: bool>(cpu: &mut Cpu) -> Result<()> {
    if WAIT {
        cpu.fpu_wait()?;
    }
    cpu.fpu_enter_nowait()
}

/// FNENI, FNDISI, FNSETPM (and their waiting forms): no-ops on the 387 and later.
fn fnop_control<const WAIT: bool>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)
}

/// WAIT/FWAIT.
fn fwait(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    cpu.fpu_wait()
}

/// FINIT/FNINIT.
fn finit<const WAIT: bool>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)?;
    cpu.fpu.init();
    Ok(())
}

/// FCLEX/FNCLEX: clears the exception flags, SF, ES and B.
fn fclex<const WAIT: bool>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)?;
    cpu.fpu.sw &= !(sw::EXC | sw::SF | sw::ES | sw::B);
    cpu.fpu.ferr = false;
    Ok(())
}

/// FSTSW/FNSTSW AX.
fn fstsw_ax<const WAIT: bool>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)?;
    let s = cpu.fpu.status();
    cpu.set_reg16(reg::EAX as u8, s);
    Ok(())
}

/// FSTSW/FNSTSW m2byte.
fn fstsw_m2byte<const WAIT: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)?;
    let off = cpu.ea(d);
    let s = cpu.fpu.status();
    cpu.write_u16(d.seg, off, s)
}

/// FSTCW/FNSTCW m2byte.
fn fstcw<const WAIT: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)?;
    let off = cpu.ea(d);
    let cw = cpu.fpu.cw;
    cpu.write_u16(d.seg, off, cw)
}

/// FLDCW m2byte: unmasking a recorded exception makes it pending.
fn fldcw(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let off = cpu.ea(d);
    let v = cpu.read_u16(d.seg, off)?;
    cpu.fpu.set_cw(v);
    Ok(())
}

impl Cpu {
    /// The FSTENV image: 28 bytes (`bits32`) or 14, in the protected-mode
    /// layout or (real and virtual-8086 mode) the real-mode one.
    fn fpu_env_image(&self, bits32: bool) -> ([u8; 28], usize) {
        let f = &self.fpu;
        let pm = self.protected_mode() && !self.v86_mode();
        let (cw, sw, tw) = (f.cw as u32, f.status() as u32, f.tag_word() as u32);
        let fop = f.fop as u32 & 0x7FF;
        let fipl = ((f.fcs as u32) << 4).wrapping_add(f.fip);
        let fdpl = ((f.fds as u32) << 4).wrapping_add(f.fdp);
        let mut b = [0u8; 28];
        if bits32 {
            let words: [u32; 7] = if pm {
                [
                    0xFFFF_0000 | cw,
                    0xFFFF_0000 | sw,
                    0xFFFF_0000 | tw,
                    f.fip,
                    f.fcs as u32 | fop << 16,
                    f.fdp,
                    0xFFFF_0000 | f.fds as u32,
                ]
            } else {
                [
                    0xFFFF_0000 | cw,
                    0xFFFF_0000 | sw,
                    0xFFFF_0000 | tw,
                    0xFFFF_0000 | (fipl & 0xFFFF),
                    (fipl >> 16) << 12 | fop,
                    0xFFFF_0000 | (fdpl & 0xFFFF),
                    (fdpl >> 16) << 12,
                ]
            };
            for (i, w) in words.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            (b, 28)
        } else {
            let words: [u32; 7] = if pm {
                [cw, sw, tw, f.fip, f.fcs as u32, f.fdp, f.fds as u32]
            } else {
                [
                    cw,
                    sw,
                    tw,
                    fipl,
                    (fipl >> 16 & 0xF) << 12 | fop,
                    fdpl,
                    (fdpl >> 16 & 0xF) << 12,
                ]
            };
            for (i, w) in words.iter().enumerate() {
                b[i * 2..i * 2 + 2].copy_from_slice(&(*w as u16).to_le_bytes());
            }
            (b, 14)
        }
    }

    /// Loads an FLDENV image (the inverse of `fpu_env_image`).
    fn fpu_load_env(&mut self, b: &[u8], bits32: bool) {
        let pm = self.protected_mode() && !self.v86_mode();
        let w = |i: usize| -> u32 {
            if bits32 {
                u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
            } else {
                u16::from_le_bytes([b[i * 2], b[i * 2 + 1]]) as u32
            }
        };
        let f = &mut self.fpu;
        f.cw = (w(0) as u16 & 0x1F3F) | 0x0040;
        f.set_tag_word(w(2) as u16);
        if pm {
            f.fip = w(3);
            f.fcs = w(4) as u16;
            f.fop = if bits32 {
                (w(4) >> 16) as u16 & 0x7FF
            } else {
                0
            };
            f.fdp = w(5);
            f.fds = w(6) as u16;
        } else {
            // Bits 31:16 (20-bit addresses: 19:16) sit above FOP.
            let mask = if bits32 { 0xFFFF } else { 0xF };
            f.fip = (w(3) & 0xFFFF) | ((w(4) >> 12) & mask) << 16;
            f.fop = w(4) as u16 & 0x7FF;
            f.fdp = (w(5) & 0xFFFF) | ((w(6) >> 12) & mask) << 16;
            f.fcs = 0;
            f.fds = 0;
        }
        f.set_status(w(1) as u16);
    }
}

/// FSTENV/FNSTENV m14byte / m28byte: store the environment, then mask
/// every exception.
fn fstenv<const BITS32: bool, const WAIT: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)?;
    let off = cpu.ea(d);
    let (img, len) = cpu.fpu_env_image(BITS32);
    cpu.fpu_write_bytes(d.seg, off, &img[..len])?;
    cpu.fpu.cw |= sw::EXC;
    Ok(())
}

/// FLDENV m14byte / m28byte.
fn fldenv<const BITS32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let off = cpu.ea(d);
    let mut b = [0u8; 28];
    let len = if BITS32 { 28 } else { 14 };
    cpu.fpu_read_bytes(d.seg, off, &mut b[..len])?;
    cpu.fpu_load_env(&b[..len], BITS32);
    Ok(())
}

/// FSAVE/FNSAVE m94byte / m108byte: environment and ST(0)..ST(7), then FNINIT.
fn fsave<const BITS32: bool, const WAIT: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    control_enter::<WAIT>(cpu)?;
    let off = cpu.ea(d);
    let (img, len) = cpu.fpu_env_image(BITS32);
    let mut b = [0u8; 108];
    b[..len].copy_from_slice(&img[..len]);
    for i in 0..8u8 {
        let at = len + 10 * i as usize;
        b[at..at + 10].copy_from_slice(&cpu.fpu.st(i).to_le_bytes());
    }
    cpu.fpu_write_bytes(d.seg, off, &b[..len + 80])?;
    cpu.fpu.init();
    Ok(())
}

/// FRSTOR m94byte / m108byte.
fn frstor<const BITS32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.fpu_enter()?;
    let off = cpu.ea(d);
    let len = if BITS32 { 28 } else { 14 };
    let mut b = [0u8; 108];
    cpu.fpu_read_bytes(d.seg, off, &mut b[..len + 80])?;
    cpu.fpu_load_env(&b[..len], BITS32);
    for i in 0..8u8 {
        let at = len + 10 * i as usize;
        let mut r = [0u8; 10];
        r.copy_from_slice(&b[at..at + 10]);
        let p = cpu.fpu.phys(i);
        cpu.fpu.regs[p] = F80::from_le_bytes(r);
    }
    Ok(())
}
