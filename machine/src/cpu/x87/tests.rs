//! Instruction-level tests: small real-mode programs assembled with
//! iced-x86, run to HLT, then the FPU state and memory checked.

use iced_x86::code_asm::*;

use super::softfloat::{self as sf, F80};
use super::sw;
use crate::bus::NullBus;
use crate::cpu::{Cpu, RunExit, cr0, flags};
use crate::memory::PhysMemory;

const CODE: u32 = 0x1000;
const DATA: u32 = 0x2000;
/// Where the #NM and #MF handlers (a bare HLT each) live.
const NM_HANDLER: u32 = 0x600;
const MF_HANDLER: u32 = 0x700;
const OTHER_HANDLER: u32 = 0x800;

fn cpu() -> Cpu {
    let mem = PhysMemory::new(1 << 20).expect("RAM");
    let mut cpu = Cpu::new(mem, Box::new(NullBus));
    cpu.set_seg_cache(crate::cpu::Seg::CS, crate::cpu::SegCache::real_mode(0));
    cpu.set_eip(CODE);
    // Every exception vector points at a HLT (so a test never loops on
    // a fault); #NM and #MF have their own.
    for v in 0..32u32 {
        cpu.write_phys_bytes(v * 4, &(OTHER_HANDLER as u16).to_le_bytes());
    }
    cpu.write_phys_bytes(OTHER_HANDLER, &[0xF4]);
    cpu.write_phys_bytes(7 * 4, &(NM_HANDLER as u16).to_le_bytes());
    cpu.write_phys_bytes(16 * 4, &(MF_HANDLER as u16).to_le_bytes());
    cpu.write_phys_bytes(NM_HANDLER, &[0xF4]);
    cpu.write_phys_bytes(MF_HANDLER, &[0xF4]);
    cpu
}

/// Assembles `f`'s 16-bit code followed by HLT and runs it to the HLT.
fn run_on(cpu: &mut Cpu, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) {
    let mut a = CodeAssembler::new(16).expect("assembler");
    f(&mut a).expect("assemble");
    a.hlt().expect("hlt");
    let bytes = a.assemble(CODE as u64).expect("assemble");
    cpu.write_phys_bytes(CODE, &bytes);
    let exit = cpu.run(10_000);
    assert!(
        matches!(exit, RunExit::Halted | RunExit::HaltedInterruptsDisabled),
        "{exit:?}"
    );
}

fn run(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Cpu {
    let mut c = cpu();
    c.fpu.init();
    run_on(&mut c, f);
    c
}

fn poke(cpu: &mut Cpu, addr: u32, bytes: &[u8]) {
    cpu.write_phys_bytes(addr, bytes);
}

fn peek<const N: usize>(cpu: &mut Cpu, addr: u32) -> [u8; N] {
    let mut b = [0; N];
    cpu.read_phys_bytes(addr, &mut b);
    b
}

fn st(cpu: &Cpu, i: u8) -> F80 {
    cpu.fpu.st(i)
}

fn x(v: f64) -> F80 {
    sf::from_host(v)
}

#[test]
fn fld_fadd_fstp_m64_adds_doubles() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &1.5f64.to_le_bytes());
    poke(&mut c, DATA + 8, &2.25f64.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld(qword_ptr(DATA))?;
        a.fadd(qword_ptr(DATA + 8))?;
        a.fstp(qword_ptr(DATA + 16))
    });
    assert_eq!(f64::from_le_bytes(peek(&mut c, DATA + 16)), 3.75);
    assert_eq!(c.fpu_tag_word(), 0xFFFF);
    assert_eq!(c.fpu_status_word(), 0);
}

#[test]
fn register_forms_compute_in_extended_precision() {
    // 1/3 rounds up to 0xAAAA_AAAA_AAAA_AAAB * 2^-65; times 3 that is
    // 1 + 2^-65, a quarter ulp above 1, so the product rounds to 1.
    let c = run(|a| {
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.fadd_2(st0, st1)?; // 2
        a.faddp(st1, st0)?; // 3
        a.fdivp(st1, st0)?; // 1/3
        a.fld1()?;
        a.fld1()?;
        a.fadd_2(st0, st0)?;
        a.faddp(st1, st0)?; // 3
        a.fmulp(st1, st0)?; // (1/3) * 3
        a.fld1()?;
        a.fsubp(st1, st0)?; // - 1
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.faddp(st1, st0)?;
        a.faddp(st1, st0)?; // 3
        a.fld1()?;
        a.fdivrp(st1, st0) // 1/3
    });
    assert_eq!(st(&c, 0), F80::new(false, 0x3FFD, 0xAAAA_AAAA_AAAA_AAAB));
    assert_eq!(st(&c, 1), F80::ZERO);
    assert_eq!(c.fpu.top, 6);
}

#[test]
fn fsubr_and_fdivr_reverse_their_operands() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &10f32.to_le_bytes());
    poke(&mut c, DATA + 4, &4i16.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld1()?;
        a.fsubr(dword_ptr(DATA))?; // 10 - 1 = 9
        a.fidivr(word_ptr(DATA + 4))?; // 4 / 9
        a.fld1()?;
        a.fsubr_2(st1, st0) // ST1 = ST0 - ST1 = 1 - 4/9
    });
    let mut e = sf::Env::new();
    let q = sf::div(&mut e, x(4.0), x(9.0));
    assert_eq!(st(&c, 1), sf::sub(&mut e, F80::ONE, q));
}

#[test]
fn integer_loads_and_stores_follow_rounding_control() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &2.5f64.to_le_bytes());
    poke(&mut c, DATA + 8, &(0x037F | 0x0400u16).to_le_bytes()); // round down
    poke(&mut c, DATA + 16, &(-123456789012345i64).to_le_bytes());
    run_on(&mut c, |a| {
        a.fld(qword_ptr(DATA))?;
        a.fist(word_ptr(DATA + 32))?; // nearest: 2
        a.fchs()?;
        a.fldcw(word_ptr(DATA + 8))?;
        a.fistp(dword_ptr(DATA + 34))?; // down: -3
        a.fild(qword_ptr(DATA + 16))?;
        a.fistp(qword_ptr(DATA + 40))
    });
    assert_eq!(i16::from_le_bytes(peek(&mut c, DATA + 32)), 2);
    assert_eq!(i32::from_le_bytes(peek(&mut c, DATA + 34)), -3);
    assert_eq!(
        i64::from_le_bytes(peek(&mut c, DATA + 40)),
        -123456789012345
    );
    assert_eq!(c.fpu_status_word() & 0x3F, sf::PE as u16);
}

#[test]
fn fist_out_of_range_stores_integer_indefinite() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &1e10f64.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld(qword_ptr(DATA))?;
        a.fistp(dword_ptr(DATA + 8))
    });
    assert_eq!(u32::from_le_bytes(peek(&mut c, DATA + 8)), 0x8000_0000);
    assert_eq!(c.fpu_status_word() & 0x3F, sf::IE as u16);
}

#[test]
fn m80_and_bcd_round_trip() {
    let mut c = cpu();
    c.fpu.init();
    let v = F80::new(true, 0x1234, 0xDEAD_BEEF_0BAD_F00D);
    poke(&mut c, DATA, &v.to_le_bytes());
    let bcd = [0x21, 0x43, 0x65, 0x87, 0x09, 0, 0, 0, 0x12, 0x80];
    poke(&mut c, DATA + 16, &bcd);
    run_on(&mut c, |a| {
        a.fld(tword_ptr(DATA))?;
        a.fbld(tword_ptr(DATA + 16))?;
        a.fbstp(tword_ptr(DATA + 48))?;
        a.fstp(tword_ptr(DATA + 32))
    });
    assert_eq!(peek::<10>(&mut c, DATA + 32), v.to_le_bytes());
    assert_eq!(peek::<10>(&mut c, DATA + 48), bcd);
    assert_eq!(c.fpu_tag_word(), 0xFFFF);
}

#[test]
fn single_precision_stores_round_and_flag() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &0.1f64.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld(qword_ptr(DATA))?;
        a.fst(dword_ptr(DATA + 8))
    });
    assert_eq!(f32::from_le_bytes(peek(&mut c, DATA + 8)), 0.1f32);
    assert_eq!(c.fpu_status_word() & 0x3F, sf::PE as u16);
    assert_eq!(c.fpu.top, 7);
}

#[test]
fn fcom_sets_condition_codes_and_fcomi_sets_eflags() {
    let c = run(|a| {
        a.fld1()?;
        a.fldz()?;
        a.fcom_2(st0, st1)?; // 0 < 1: C0
        a.fnstsw(ax)
    });
    assert_eq!(c.gpr(0) as u16 & (sw::C0 | sw::C2 | sw::C3), sw::C0);
    let c = run(|a| {
        a.fldz()?;
        a.fld1()?;
        a.fcomi(st0, st1) // 1 > 0
    });
    assert_eq!(c.eflags() & (flags::ZF | flags::PF | flags::CF), 0);
    let c = run(|a| {
        a.fld1()?;
        a.fld1()?;
        a.fucomip(st0, st1)
    });
    assert_eq!(c.eflags() & (flags::ZF | flags::PF | flags::CF), flags::ZF);
    assert_eq!(c.fpu.top, 7);
}

#[test]
fn fucomi_with_a_nan_is_unordered_without_invalid() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &f64::NAN.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld1()?;
        a.fld(qword_ptr(DATA))?;
        a.fucomi(st0, st1)
    });
    let f = c.eflags() & (flags::ZF | flags::PF | flags::CF);
    assert_eq!(f, flags::ZF | flags::PF | flags::CF);
    assert_eq!(c.fpu_status_word() & 0x3F, 0);
}

#[test]
fn fcmov_moves_on_condition() {
    let c = run(|a| {
        a.fld1()?;
        a.fldz()?;
        a.fcomi(st0, st1)?; // 0 < 1: CF
        a.fcmovb(st0, st1) // taken: ST0 = 1
    });
    assert_eq!(st(&c, 0), F80::ONE);
    let c = run(|a| {
        a.fld1()?;
        a.fldz()?;
        a.fcomi(st0, st1)?;
        a.fcmovnb(st0, st1)
    });
    assert_eq!(st(&c, 0), F80::ZERO);
}

#[test]
fn constants_follow_the_rounding_mode() {
    let c = run(|a| {
        a.fldpi()?;
        a.fldl2e()?;
        a.fldln2()
    });
    assert_eq!(st(&c, 2), F80::new(false, 0x4000, 0xC90F_DAA2_2168_C235));
    assert_eq!(st(&c, 1), F80::new(false, 0x3FFF, 0xB8AA_3B29_5C17_F0BC));
    assert_eq!(st(&c, 0), F80::new(false, 0x3FFE, 0xB172_17F7_D1CF_79AC));
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &(0x037Fu16 | 0x0C00).to_le_bytes());
    run_on(&mut c, |a| {
        a.fldcw(word_ptr(DATA))?;
        a.fldpi()
    });
    assert_eq!(st(&c, 0), F80::new(false, 0x4000, 0xC90F_DAA2_2168_C234));
}

#[test]
fn stack_overflow_masked_pushes_indefinite_and_sets_sf_c1() {
    let c = run(|a| {
        for _ in 0..9 {
            a.fld1()?;
        }
        Ok(())
    });
    assert_eq!(st(&c, 0), F80::INDEFINITE);
    let s = c.fpu_status_word();
    assert_eq!(s & (sw::SF | sw::C1 | 1), sw::SF | sw::C1 | 1);
}

#[test]
fn stack_underflow_masked_gives_indefinite() {
    let c = run(|a| a.fadd_2(st0, st1));
    assert_eq!(st(&c, 0), F80::INDEFINITE);
    assert_eq!(c.fpu_status_word() & (sw::SF | sw::C1 | 1), sw::SF | 1);
}

#[test]
fn unmasked_exception_raises_mf_on_the_next_waiting_instruction() {
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::NE);
    c.fpu.init();
    poke(&mut c, DATA, &(0x037Fu16 & !4).to_le_bytes()); // unmask ZE
    run_on(&mut c, |a| {
        a.fldcw(word_ptr(DATA))?;
        a.fldz()?;
        a.fld1()?;
        a.fdiv_2(st0, st1)?; // 1/0: ZE, ST0 unchanged
        a.fnop() // #MF here
    });
    assert_eq!(c.eip(), MF_HANDLER + 1);
    assert_eq!(st(&c, 0), F80::ONE);
    let s = c.fpu_status_word();
    assert_eq!(s & (sw::ES | sw::B | 4), sw::ES | sw::B | 4);
}

#[test]
fn without_ne_an_unmasked_exception_asserts_ferr_instead() {
    let mut c = cpu();
    c.set_cr0(c.cr0() & !cr0::NE);
    c.fpu.init();
    poke(&mut c, DATA, &(0x037Fu16 & !4).to_le_bytes());
    run_on(&mut c, |a| {
        a.fldcw(word_ptr(DATA))?;
        a.fldz()?;
        a.fld1()?;
        a.fdiv_2(st0, st1)?;
        a.wait()
    });
    assert_eq!(c.eip(), CODE + 12);
    assert!(c.fpu_error_pending());
    let mut c2 = c;
    c2.halted = false;
    c2.set_eip(CODE);
    run_on(&mut c2, |a| a.fnclex());
    assert!(!c2.fpu_error_pending());
}

#[test]
fn ts_or_em_raise_nm_and_wait_needs_mp_too() {
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::TS);
    run_on(&mut c, |a| a.fld1());
    assert_eq!(c.eip(), NM_HANDLER + 1);
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::TS);
    run_on(&mut c, |a| a.wait());
    assert_eq!(c.eip(), CODE + 2);
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::TS | cr0::MP);
    run_on(&mut c, |a| a.wait());
    assert_eq!(c.eip(), NM_HANDLER + 1);
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::EM);
    run_on(&mut c, |a| a.fninit());
    assert_eq!(c.eip(), NM_HANDLER + 1);
}

#[test]
fn fninit_and_fnstcw_fnstsw_report_the_init_state() {
    let mut c = run(|a| {
        a.fninit()?;
        a.fnstcw(word_ptr(DATA))?;
        a.fnstsw(word_ptr(DATA + 2))
    });
    assert_eq!(u16::from_le_bytes(peek(&mut c, DATA)), 0x037F);
    assert_eq!(u16::from_le_bytes(peek(&mut c, DATA + 2)), 0);
    assert_eq!(c.fpu_tag_word(), 0xFFFF);
}

#[test]
fn fsave_frstor_round_trip_and_fsave_reinitializes() {
    let mut c = run(|a| {
        a.fld1()?;
        a.fldpi()?;
        a.fnsave(ptr(DATA))?;
        a.fld1()?;
        a.frstor(ptr(DATA))
    });
    assert_eq!(c.fpu.top, 6);
    assert_eq!(st(&c, 1), F80::ONE);
    assert_eq!(st(&c, 0).sig, 0xC90F_DAA2_2168_C235);
    // 16-bit real-mode layout: CW, SW (TOP = 6), TW, then ST(0).
    let img: [u8; 24] = peek(&mut c, DATA);
    assert_eq!(u16::from_le_bytes([img[0], img[1]]), 0x037F);
    assert_eq!(u16::from_le_bytes([img[2], img[3]]), 6 << 11);
    assert_eq!(u16::from_le_bytes([img[4], img[5]]), 0x0FFF);
    assert_eq!(&img[14..24], &st(&c, 0).to_le_bytes());
}

#[test]
fn fstenv_masks_exceptions_and_fldenv_restores() {
    let mut c = run(|a| {
        a.fld1()?;
        a.fnstenv(ptr(DATA))?;
        a.fnstcw(word_ptr(DATA + 0x40))?;
        a.fldenv(ptr(DATA))?;
        a.fnstcw(word_ptr(DATA + 0x42))
    });
    assert_eq!(u16::from_le_bytes(peek(&mut c, DATA + 0x40)), 0x037F);
    assert_eq!(u16::from_le_bytes(peek(&mut c, DATA + 0x42)), 0x037F);
    // FIP is the FLD1's linear address; FOP is D9 E8 -> 1E8.
    let img: [u8; 14] = peek(&mut c, DATA);
    assert_eq!(u16::from_le_bytes([img[6], img[7]]), CODE as u16);
    assert_eq!(u16::from_le_bytes([img[8], img[9]]) & 0x7FF, 0x1E8);
}

#[test]
fn fprem_loop_and_fxam_and_fxtract() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &3.0f64.to_le_bytes());
    poke(&mut c, DATA + 8, &1e30f64.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld(qword_ptr(DATA))?;
        a.fld(qword_ptr(DATA + 8))?;
        for _ in 0..4 {
            a.fprem()?;
        }
        Ok(())
    });
    assert_eq!(c.fpu_status_word() & sw::C2, 0);
    assert_eq!(sf::to_host(st(&c, 0)), 1e30f64 % 3.0);
    let c = run(|a| {
        a.fldz()?;
        a.fchs()?;
        a.fxam()
    });
    assert_eq!(c.fpu_status_word() & sw::CC, sw::C3 | sw::C1);
    let c = run(|a| {
        a.fld1()?;
        a.fld1()?;
        a.faddp(st1, st0)?;
        a.fld1()?;
        a.faddp(st1, st0)?; // 3
        a.fxtract()
    });
    assert_eq!(st(&c, 0), x(1.5));
    assert_eq!(st(&c, 1), x(1.0));
}

#[test]
fn trig_sets_c2_out_of_range_and_fptan_pushes_one() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &1e20f64.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld(qword_ptr(DATA))?;
        a.fsin()
    });
    assert_ne!(c.fpu_status_word() & sw::C2, 0);
    assert_eq!(sf::to_host(st(&c, 0)), 1e20);
    let c = run(|a| {
        a.fld1()?;
        a.fptan()
    });
    assert_eq!(st(&c, 0), F80::ONE);
    assert_eq!(sf::to_host(st(&c, 1)), 1f64.tan());
    let c = run(|a| {
        a.fldz()?;
        a.fsincos()
    });
    assert_eq!((st(&c, 0), st(&c, 1)), (F80::ONE, F80::ZERO));
}

#[test]
fn fxch_ffree_fincstp() {
    let c = run(|a| {
        a.fld1()?;
        a.fldz()?;
        a.fxch(st0, st1)
    });
    assert_eq!((st(&c, 0), st(&c, 1)), (F80::ONE, F80::ZERO));
    let c = run(|a| {
        a.fld1()?;
        a.ffree(st0)?;
        a.fincstp()
    });
    assert_eq!(c.fpu.top, 0);
    assert_eq!(c.fpu_tag_word(), 0xFFFF);
}

#[test]
fn precision_control_rounds_arithmetic_to_24_bits() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &0x007Fu16.to_le_bytes()); // PC = 24 bits
    poke(&mut c, DATA + 2, &3i16.to_le_bytes());
    run_on(&mut c, |a| {
        a.fldcw(word_ptr(DATA))?;
        a.fld1()?;
        a.fidiv(word_ptr(DATA + 2))
    });
    assert_eq!(sf::to_host(st(&c, 0)), (1.0f32 / 3.0) as f64);
}

/// Runs raw code bytes followed by HLT.
fn run_bytes(cpu: &mut Cpu, code: &[u8]) {
    let mut bytes = code.to_vec();
    bytes.push(0xF4);
    cpu.write_phys_bytes(CODE, &bytes);
    let exit = cpu.run(10_000);
    assert!(
        matches!(exit, RunExit::Halted | RunExit::HaltedInterruptsDisabled),
        "{exit:?}"
    );
}

#[test]
fn o32_fnstenv_in_real_mode_uses_the_32_bit_real_layout() {
    let mut c = cpu();
    c.fpu.init();
    // fld1; o32 fnstenv [0x2000]
    run_bytes(&mut c, &[0xD9, 0xE8, 0x66, 0xD9, 0x36, 0x00, 0x20]);
    let env: [u8; 28] = peek(&mut c, DATA);
    let w =
        |i: usize| u32::from_le_bytes([env[4 * i], env[4 * i + 1], env[4 * i + 2], env[4 * i + 3]]);
    assert_eq!(w(0), 0xFFFF_037F);
    assert_eq!(w(1) & 0xFFFF, 7 << 11);
    assert_eq!(w(2) & 0xFFFF, 0x3FFF);
    assert_eq!(w(3) & 0xFFFF, CODE);
    assert_eq!(w(4), 0x1E8);
    // The restore reads it back.
    c.halted = false;
    c.set_eip(CODE);
    c.fpu.init();
    // o32 fldenv [0x2000]
    run_bytes(&mut c, &[0x66, 0xD9, 0x26, 0x00, 0x20]);
    assert_eq!(c.fpu.top, 7);
    assert_eq!(c.fpu.fip, CODE);
    assert_eq!(c.fpu.fop, 0x1E8);
    assert_eq!(c.fpu_tag_word(), 0x3FFF);
}

#[test]
fn frstor_of_a_pending_unmasked_exception_faults_on_the_next_instruction() {
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::NE);
    c.fpu.init();
    // A 16-bit real-mode image: CW with ZE unmasked, SW with ZE set, all empty.
    let mut img = [0u8; 94];
    img[0..2].copy_from_slice(&0x037Bu16.to_le_bytes());
    img[2..4].copy_from_slice(&0x0004u16.to_le_bytes());
    img[4..6].copy_from_slice(&0xFFFFu16.to_le_bytes());
    poke(&mut c, DATA, &img);
    run_on(&mut c, |a| {
        a.frstor(ptr(DATA))?;
        a.fnstsw(word_ptr(DATA + 0x100))?;
        a.fld1()
    });
    assert_eq!(c.eip(), MF_HANDLER + 1);
    assert_eq!(u16::from_le_bytes(peek(&mut c, DATA + 0x100)), 0x8084);
    assert_eq!(c.fpu_tag_word(), 0xFFFF);
}

#[test]
fn fldcw_unmasking_a_recorded_exception_makes_it_pending() {
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::NE);
    c.fpu.init();
    poke(&mut c, DATA, &0x037Eu16.to_le_bytes()); // IE unmasked
    run_on(&mut c, |a| {
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.fld1()?;
        a.fld1()?; // masked stack overflow: IE recorded
        a.fldcw(word_ptr(DATA))?;
        a.fnop()
    });
    assert_eq!(c.eip(), MF_HANDLER + 1);
    assert_ne!(c.fpu_status_word() & sw::ES, 0);
}

#[test]
fn fxch_with_an_empty_register_fills_it_with_indefinite() {
    let c = run(|a| {
        a.fld1()?;
        a.fxch(st0, st3)
    });
    assert_eq!(st(&c, 0), F80::INDEFINITE);
    assert_eq!(st(&c, 3), F80::ONE);
    assert_eq!(c.fpu_status_word() & (sw::SF | 1), sw::SF | 1);
}

#[test]
fn fbstp_rounds_in_the_current_mode() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &(-2.5f64).to_le_bytes());
    run_on(&mut c, |a| {
        a.fld(qword_ptr(DATA))?;
        a.fbstp(tword_ptr(DATA + 16))
    });
    assert_eq!(
        peek::<10>(&mut c, DATA + 16),
        [2, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]
    );
    assert_eq!(c.fpu_status_word() & 0x3F, sf::PE as u16);
}

#[test]
fn fst_sti_copies_and_fstp_st0_pops() {
    let c = run(|a| {
        a.fldz()?;
        a.fld1()?;
        a.fst(st1)?;
        a.fldpi()?;
        a.fstp(st0)
    });
    assert_eq!((st(&c, 0), st(&c, 1)), (F80::ONE, F80::ONE));
    assert_eq!(c.fpu.top, 6);
}

#[test]
fn fcom_with_a_signaling_nan_operand_is_invalid_and_unordered() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &0x7F80_0001u32.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld1()?;
        a.fcom(dword_ptr(DATA))
    });
    let s = c.fpu_status_word();
    assert_eq!(s & (sw::C3 | sw::C2 | sw::C0), sw::C3 | sw::C2 | sw::C0);
    assert_eq!(s & 0x3F, sf::IE as u16);
}

#[test]
fn fincstp_fdecstp_move_top_only() {
    let c = run(|a| {
        a.fld1()?;
        a.fdecstp()?;
        a.fdecstp()?;
        a.fincstp()
    });
    assert_eq!(c.fpu.top, 6);
    assert_eq!(st(&c, 1), F80::ONE);
    assert!(c.fpu.is_empty(0));
}

#[test]
fn fyl2x_fpatan_f2xm1_fscale_through_instructions() {
    let mut c = cpu();
    c.fpu.init();
    poke(&mut c, DATA, &8.0f64.to_le_bytes());
    run_on(&mut c, |a| {
        a.fld1()?;
        a.fld(qword_ptr(DATA))?;
        a.fyl2x()?; // 1 * log2(8) = 3
        a.fld1()?;
        a.fld1()?;
        a.fpatan()?; // atan(1/1) = pi/4
        a.fld1()?;
        a.f2xm1()?; // 2^1 - 1 = 1
        a.fld1()?;
        a.fscale() // 1 * 2^1 = 2 (ST1 = 1)
    });
    assert_eq!(st(&c, 0), x(2.0));
    assert_eq!(st(&c, 1), x(1.0));
    assert_eq!(st(&c, 2), F80::new(false, 0x3FFE, 0xC90F_DAA2_2168_C235));
    assert_eq!(st(&c, 3), x(3.0));
}

#[test]
fn non_waiting_control_instructions_ignore_a_pending_exception() {
    let mut c = cpu();
    c.set_cr0(c.cr0() | cr0::NE);
    c.fpu.init();
    poke(&mut c, DATA, &0x037Bu16.to_le_bytes()); // ZE unmasked
    run_on(&mut c, |a| {
        a.fldcw(word_ptr(DATA))?;
        a.fldz()?;
        a.fld1()?;
        a.fdiv_2(st0, st1)?; // ZE pending
        a.fnstsw(ax)?;
        a.fnstenv(ptr(DATA + 0x10))?;
        a.fninit()?;
        a.fld1() // nothing pending any more
    });
    assert_eq!(c.eip(), CODE + 21);
    assert_eq!(c.gpr(0) as u16 & 0x80FF, 0x8084);
    assert_eq!(st(&c, 0), F80::ONE);
    assert_eq!(c.fpu_status_word(), 7 << 11);
}
