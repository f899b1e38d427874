//! The x87 FPU run as guest programs in flat 32-bit protected mode: the
//! idioms compilers and C libraries emit (truncating conversions through
//! FLDCW, FNSTSW/SAHF and FCOMI branches), the protected-mode FNSTENV
//! layout, and #NM / #MF delivery.

mod common;

use common::Guest;
use common::pm::{self, KCODE, KDATA};
use iced_x86::code_asm::*;
use machine::{cr0, vector};

const DATA: u32 = 0x30000;

fn protected(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Guest {
    let mut a = CodeAssembler::new(32).unwrap();
    build(&mut a).unwrap();
    a.hlt().unwrap();
    let mut g = Guest::protected(4);
    g.load(pm::CODE, a);
    g
}

fn peek<const N: usize>(g: &mut Guest, addr: u32) -> [u8; N] {
    let mut b = [0; N];
    g.cpu.read_phys_bytes(addr, &mut b);
    b
}

#[test]
fn c_style_truncating_conversion_through_fldcw() {
    // What a C compiler emits for `(int)x` before SSE: save the control
    // word, set RC = chop, FISTP, restore.
    let mut g = protected(|a| {
        a.fninit()?;
        a.fld(qword_ptr(DATA))?;
        a.fnstcw(word_ptr(DATA + 8))?;
        a.mov(ax, word_ptr(DATA + 8))?;
        a.mov(word_ptr(DATA + 10), 0x0F7F)?;
        a.fldcw(word_ptr(DATA + 10))?;
        a.fistp(dword_ptr(DATA + 12))?;
        a.fldcw(word_ptr(DATA + 8))
    });
    g.poke(DATA, &(-7.9f64).to_le_bytes());
    g.run_to_hlt();
    assert_eq!(i32::from_le_bytes(peek(&mut g, DATA + 12)), -7);
    assert_eq!(g.cpu.fpu_control_word(), 0x037F);
}

#[test]
fn fnstsw_sahf_and_fcomi_drive_branches() {
    // if (a < b) flag it, twice: once the 387 way, once the P6 way.
    let mut g = protected(|a| {
        let mut skip1 = a.create_label();
        let mut skip2 = a.create_label();
        a.fninit()?;
        a.fld(dword_ptr(DATA + 4))?; // b
        a.fld(dword_ptr(DATA))?; // a
        a.fcom_2(st0, st1)?;
        a.fnstsw(ax)?;
        a.sahf()?;
        a.jae(skip1)?;
        a.mov(dword_ptr(DATA + 0x20), 1)?;
        a.set_label(&mut skip1)?;
        a.fcomip(st0, st1)?;
        a.jae(skip2)?;
        a.mov(dword_ptr(DATA + 0x24), 1)?;
        a.set_label(&mut skip2)?;
        a.fstp(st0)
    });
    g.poke(DATA, &1.5f32.to_le_bytes());
    g.poke(DATA + 4, &2.5f32.to_le_bytes());
    g.run_to_hlt();
    assert_eq!(g.peek_u32(DATA + 0x20), 1);
    assert_eq!(g.peek_u32(DATA + 0x24), 1);
    assert_eq!(g.cpu.fpu_tag_word(), 0xFFFF);
}

#[test]
fn fnstenv_protected_layout_records_pointers_and_opcode() {
    let mut g = protected(|a| {
        a.fninit()?;
        a.mov(esi, DATA)?;
        a.fld(qword_ptr(esi + 0x10))?; // DD 46 10
        a.fnstenv(ptr(DATA + 0x40))
    });
    g.poke(DATA + 0x10, &1.0f64.to_le_bytes());
    g.run_to_hlt();
    let env: [u8; 28] = peek(&mut g, DATA + 0x40);
    let w =
        |i: usize| u32::from_le_bytes([env[4 * i], env[4 * i + 1], env[4 * i + 2], env[4 * i + 3]]);
    assert_eq!(w(0) & 0xFFFF, 0x037F);
    assert_eq!(w(1) & 0xFFFF, 7 << 11);
    assert_eq!(w(2) & 0xFFFF, 0x3FFF);
    // FNINIT (2 bytes) and MOV ESI (5 bytes) come first.
    assert_eq!(w(3), pm::CODE + 7);
    assert_eq!(w(4) & 0xFFFF, KCODE as u32);
    assert_eq!(w(4) >> 16, 0x546);
    assert_eq!(w(5), DATA + 0x10);
    assert_eq!(w(6) & 0xFFFF, KDATA as u32);
    // FNSTENV masks every exception.
    assert_eq!(g.cpu.fpu_control_word(), 0x037F);
}

#[test]
fn unmasked_divide_by_zero_delivers_mf_at_the_next_waiting_instruction() {
    let mut g = protected(|a| {
        a.fninit()?;
        a.fldcw(word_ptr(DATA))?;
        a.fldz()?;
        a.fld1()?;
        a.fdiv_2(st0, st1)?; // ZE recorded, no fault yet
        a.nop()?;
        a.wait() // #MF here
    });
    g.poke(DATA, &0x037Bu16.to_le_bytes());
    g.cpu.set_cr0(g.cpu.cr0() | cr0::NE);
    let e = g.run_to_exception();
    assert_eq!(e.vector, vector::MF);
    assert_eq!(e.eip, pm::CODE + 2 + 6 + 2 + 2 + 2 + 1);
    assert_eq!(g.cpu.fpu_status_word() & 0x80FF, 0x8084);
}

#[test]
fn task_switched_raises_nm_at_the_fpu_instruction() {
    let mut g = protected(|a| a.fld1());
    g.cpu.set_cr0(g.cpu.cr0() | cr0::TS | cr0::MP);
    let e = g.run_to_exception();
    assert_eq!(e.vector, vector::NM);
    assert_eq!(e.eip, pm::CODE);
}

#[test]
fn libm_style_exp_and_log_sequences() {
    // exp(x) = 2^(x log2 e), split into integer and fraction parts, and
    // ln(x) = ln 2 * log2(x): the sequences i386 libm implementations use.
    let mut g = protected(|a| {
        a.fninit()?;
        a.fld(qword_ptr(DATA))?; // x
        a.fldl2e()?;
        a.fmulp(st1, st0)?; // t = x log2 e
        a.fld(st0)?;
        a.frndint()?; // n
        a.fsub_2(st1, st0)?; // f = t - n
        a.fxch(st0, st1)?;
        a.f2xm1()?;
        a.fld1()?;
        a.faddp(st1, st0)?; // 2^f
        a.fscale()?; // 2^f * 2^n
        a.fstp(st1)?;
        a.fstp(qword_ptr(DATA + 8))?;
        a.fldln2()?;
        a.fld(qword_ptr(DATA))?;
        a.fyl2x()?;
        a.fstp(qword_ptr(DATA + 16))
    });
    g.poke(DATA, &3.7f64.to_le_bytes());
    g.run_to_hlt();
    let exp = f64::from_le_bytes(peek(&mut g, DATA + 8));
    let ln = f64::from_le_bytes(peek(&mut g, DATA + 16));
    assert!((exp - 3.7f64.exp()).abs() <= 3.7f64.exp() * 2e-16, "{exp}");
    assert!((ln - 3.7f64.ln()).abs() <= 3.7f64.ln() * 2e-16, "{ln}");
    assert_eq!(g.cpu.fpu_tag_word(), 0xFFFF);
}
