//! Guest programs for data movement, string and near branch instructions,
//! in real mode and in 32-bit flat protected mode.

mod common;

use common::Guest;
use iced_x86::IcedError;
use iced_x86::code_asm::*;
use machine::{RunExit, Seg, SegCache, reg};

/// Where test code is loaded.
const ORG: u32 = 0x1000;
/// Real-mode fault stubs: vector v's handler is at `STUBS + 8 v`; it
/// records v at `FAULT_VEC` and halts.
const STUBS: u32 = 0x0E00;
const FAULT_VEC: u32 = 0x0DFF;

type Build = dyn FnOnce(&mut CodeAssembler) -> Result<(), IcedError>;

/// Installs the IVT and the stubs described at [`STUBS`].
fn install_fault_stubs(g: &mut Guest) {
    for v in 0..32u32 {
        let stub = STUBS + 8 * v;
        g.poke(v * 4, &[stub as u8, (stub >> 8) as u8, 0, 0]);
        // mov byte cs:[FAULT_VEC], v ; hlt
        g.poke(
            stub,
            &[
                0x2E,
                0xC6,
                0x06,
                FAULT_VEC as u8,
                (FAULT_VEC >> 8) as u8,
                v as u8,
                0xF4,
            ],
        );
    }
    g.poke(FAULT_VEC, &[0xFF]);
}

/// A real-mode guest (all segments 0, SP 0x8000) with `build` at [`ORG`],
/// fault stubs installed, not yet run.
fn real_guest(build: Box<Build>) -> Guest {
    let mut a = CodeAssembler::new(16).unwrap();
    build(&mut a).unwrap();
    let mut g = Guest::real_mode(2, ORG);
    install_fault_stubs(&mut g);
    g.load(ORG, a);
    g.cpu.set_gpr(reg::ESP, 0x8000);
    g
}

/// Runs a real-mode program to HLT.
fn real(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError> + 'static) -> Guest {
    let mut g = real_guest(Box::new(build));
    assert_eq!(g.run(1_000_000), RunExit::HaltedInterruptsDisabled);
    g
}

/// Flat 4 GiB code and data descriptors.
const FLAT_CODE: u64 = 0x00CF_9A00_0000_FFFF;
const FLAT_DATA: u64 = 0x00CF_9200_0000_FFFF;

/// A 32-bit flat protected-mode guest (CPL 0, ESP 0x80000) with `build`
/// at [`ORG`], not yet run.
fn flat_guest(build: Box<Build>) -> Guest {
    let mut a = CodeAssembler::new(32).unwrap();
    build(&mut a).unwrap();
    let mut g = Guest::new(4);
    g.cpu.set_cr0(g.cpu.cr0() | machine::cr0::PE);
    g.cpu
        .set_seg_cache(Seg::CS, SegCache::from_descriptor(0x08, FLAT_CODE));
    for s in [Seg::DS, Seg::ES, Seg::SS, Seg::FS, Seg::GS] {
        g.cpu
            .set_seg_cache(s, SegCache::from_descriptor(0x10, FLAT_DATA));
    }
    g.cpu.set_cpl(0);
    g.cpu.set_eip(ORG);
    g.load(ORG, a);
    g.cpu.set_gpr(reg::ESP, 0x80000);
    g
}

/// Runs a flat 32-bit program to HLT.
fn flat(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError> + 'static) -> Guest {
    let mut g = flat_guest(Box::new(build));
    assert_eq!(g.run(1_000_000), RunExit::HaltedInterruptsDisabled);
    g
}

fn peek(g: &mut Guest, addr: u32, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    g.cpu.read_phys_bytes(addr, &mut b);
    b
}

fn peek16(g: &mut Guest, addr: u32) -> u16 {
    g.peek_u32(addr) as u16
}

fn gpr(g: &Guest, r: usize) -> u32 {
    g.cpu.gpr(r)
}

fn fault_vector(g: &mut Guest) -> u8 {
    peek(g, FAULT_VEC, 1)[0]
}

// ============================ MOV and friends ============================

#[test]
fn mov_moves_between_registers_memory_and_immediates() {
    let mut g = real(|a| {
        a.mov(ax, 0x1234)?;
        a.mov(bl, al)?;
        a.mov(bh, 0x56)?;
        a.mov(cx, bx)?;
        a.mov(word_ptr(0x2000), cx)?;
        a.mov(dx, word_ptr(0x2000))?;
        a.mov(byte_ptr(0x2002), 0x77)?;
        a.mov(al, byte_ptr(0x2002))?; // moffs form
        a.mov(word_ptr(0x2004), ax)?; // moffs store
        a.mov(esi, 0xDEAD_BEEFu32)?;
        a.mov(dword_ptr(bx + si + 0x10), esi)?; // bx+si wraps: 0x5634+0xBEEF+0x10
        a.mov(edi, dword_ptr(bx + si + 0x10))?;
        a.mov(dword_ptr(0x2008), 0x0102_0304)?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EAX) & 0xFFFF, 0x1277);
    assert_eq!(gpr(&g, reg::EBX) & 0xFFFF, 0x5634);
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 0x5634);
    assert_eq!(gpr(&g, reg::EDX) & 0xFFFF, 0x5634);
    assert_eq!(peek16(&mut g, 0x2004), 0x1277);
    let ea = (0x5634u32 + 0xBEEF + 0x10) & 0xFFFF;
    assert_eq!(g.peek_u32(ea), 0xDEAD_BEEF);
    assert_eq!(gpr(&g, reg::EDI), 0xDEAD_BEEF);
    assert_eq!(g.peek_u32(0x2008), 0x0102_0304);
}

#[test]
fn movzx_and_movsx_extend_bytes_and_words() {
    let g = real(|a| {
        a.mov(word_ptr(0x2000), 0x80F0)?;
        a.movzx(eax, byte_ptr(0x2000))?;
        a.movsx(ebx, byte_ptr(0x2000))?;
        a.movzx(ecx, word_ptr(0x2000))?;
        a.movsx(edx, word_ptr(0x2000))?;
        a.mov(si, 0x7F7F)?;
        a.movsx(di, byte_ptr(0x2001))?;
        a.movzx(bp, si)?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EAX), 0xF0);
    assert_eq!(gpr(&g, reg::EBX), 0xFFFF_FFF0);
    assert_eq!(gpr(&g, reg::ECX), 0x80F0);
    assert_eq!(gpr(&g, reg::EDX), 0xFFFF_80F0);
    assert_eq!(gpr(&g, reg::EDI) & 0xFFFF, 0xFF80);
    assert_eq!(gpr(&g, reg::EBP) & 0xFFFF, 0x7F7F);
}

#[test]
fn lea_truncates_to_address_and_operand_size() {
    let g = real(|a| {
        a.mov(ebx, 0x1234_FFF0)?;
        a.mov(esi, 0x0000_0020)?;
        a.lea(ax, ptr(bx + si + 4))?; // 16-bit address wraps
        a.lea(ecx, ptr(bx + si + 4))?; // 16-bit address, zero-extended
        a.lea(edx, ptr(ebx + esi * 4 + 4))?; // 32-bit address
        a.lea(di, ptr(ebx + esi * 4 + 4))?; // truncated to 16 bits
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EAX) & 0xFFFF, 0x0014);
    assert_eq!(gpr(&g, reg::ECX), 0x0014);
    assert_eq!(gpr(&g, reg::EDX), 0x1235_0074);
    assert_eq!(gpr(&g, reg::EDI) & 0xFFFF, 0x0074);
}

#[test]
fn xchg_swaps_registers_and_memory() {
    let mut g = real(|a| {
        a.mov(ax, 0x1111)?;
        a.mov(bx, 0x2222)?;
        a.xchg(ax, bx)?;
        a.mov(ecx, 0x3333_3333)?;
        a.mov(dword_ptr(0x2000), 0x4444_4444)?;
        a.xchg(dword_ptr(0x2000), ecx)?;
        a.mov(dl, 0x55)?;
        a.mov(dh, 0x66)?;
        a.xchg(dl, dh)?;
        a.nop()?;
        a.pause()?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EAX) & 0xFFFF, 0x2222);
    assert_eq!(gpr(&g, reg::EBX) & 0xFFFF, 0x1111);
    assert_eq!(gpr(&g, reg::ECX), 0x4444_4444);
    assert_eq!(g.peek_u32(0x2000), 0x3333_3333);
    assert_eq!(gpr(&g, reg::EDX) & 0xFFFF, 0x5566);
}

#[test]
fn xlat_lahf_sahf_and_flag_bits() {
    let g = real(|a| {
        for i in 0..16u8 {
            a.mov(byte_ptr(0x2100 + i as u32), (i * 3) as u32)?;
        }
        a.mov(bx, 0x2100)?;
        a.mov(al, 5)?;
        a.xlatb()?;
        a.mov(cl, al)?;
        a.mov(ah, 0xD5)?; // SF ZF AF PF CF
        a.sahf()?;
        a.cmc()?; // CF off
        a.lahf()?;
        a.mov(ch, ah)?;
        a.stc()?;
        a.std()?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::ECX) & 0xFF, 15);
    assert_eq!((gpr(&g, reg::ECX) >> 8) & 0xFF, 0xD6);
    let fl = g.cpu.eflags();
    assert_eq!(fl & 0x4D5, 0x4D5, "SF ZF AF PF CF DF all set: {fl:#x}");
}

#[test]
fn bswap_cmov_and_setcc() {
    let mut g = real(|a| {
        a.mov(eax, 0x1122_3344)?;
        a.bswap(eax)?;
        a.mov(dword_ptr(0x2000), 0xAAAA_AAAAu32)?;
        a.mov(ecx, 7)?;
        a.mov(edx, 7)?;
        a.mov(ah, 0x40)?; // ZF only
        a.sahf()?;
        a.cmove(ecx, dword_ptr(0x2000))?; // taken
        a.cmovne(edx, dword_ptr(0x2000))?; // not taken
        a.sete(byte_ptr(0x2004))?;
        a.setb(bl)?;
        a.seta(bh)?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EAX), 0x4433_4011);
    assert_eq!(gpr(&g, reg::ECX), 0xAAAA_AAAA);
    assert_eq!(gpr(&g, reg::EDX), 7);
    assert_eq!(peek(&mut g, 0x2004, 1)[0], 1);
    assert_eq!(gpr(&g, reg::EBX) & 0xFFFF, 0x0000);
}

#[test]
fn cmov_reads_its_memory_source_even_when_false() {
    // A false CMOVNE whose source is past the segment limit still faults.
    let mut g = real(|a| {
        a.mov(ah, 0x40)?;
        a.sahf()?;
        a.mov(bx, 0xFFFE)?;
        a.cmovne(eax, dword_ptr(bx))?;
        a.mov(byte_ptr(0x2000), 1)?;
        a.hlt()
    });
    assert_eq!(fault_vector(&mut g), 13);
    assert_eq!(peek(&mut g, 0x2000, 1)[0], 0);
}

#[test]
fn mov_to_cs_is_undefined() {
    let mut g = real(|a| {
        a.db(&[0x8E, 0xC8])?; // mov cs, ax
        a.hlt()
    });
    assert_eq!(fault_vector(&mut g), 6);
    // The pushed IP is the faulting instruction's.
    let top = gpr(&g, reg::ESP);
    assert_eq!(peek16(&mut g, top), ORG as u16);
}

#[test]
fn mov_sreg_loads_real_mode_segments() {
    let mut g = real(|a| {
        a.mov(ax, 0x0200)?;
        a.mov(es, ax)?;
        a.mov(word_ptr(0x10).es(), 0xBEEF)?;
        a.mov(bx, es)?;
        a.mov(word_ptr(0x2000), es)?;
        a.mov(ecx, 0xFFFF_FFFFu32)?;
        a.db(&[0x66, 0x8C, 0xC1])?; // mov ecx, es: zero-extends
        a.hlt()
    });
    assert_eq!(peek16(&mut g, 0x2010), 0xBEEF);
    assert_eq!(gpr(&g, reg::EBX) & 0xFFFF, 0x0200);
    assert_eq!(peek16(&mut g, 0x2000), 0x0200);
    assert_eq!(gpr(&g, reg::ECX), 0x0200);
    assert_eq!(g.cpu.seg(Seg::ES).base, 0x2000);
}

#[test]
fn lds_les_lss_load_far_pointers() {
    let g = real(|a| {
        a.mov(word_ptr(0x2000), 0x1234)?;
        a.mov(word_ptr(0x2002), 0x0300)?;
        a.mov(dword_ptr(0x2010), 0x0000_7000)?;
        a.mov(word_ptr(0x2014), 0x0040)?;
        a.les(di, dword_ptr(0x2000))?;
        a.lss(esp, fword_ptr(0x2010))?;
        a.lds(si, dword_ptr(0x2000))?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EDI) & 0xFFFF, 0x1234);
    assert_eq!(g.cpu.seg(Seg::ES).selector, 0x0300);
    assert_eq!(gpr(&g, reg::ESP), 0x7000);
    assert_eq!(g.cpu.seg(Seg::SS).base, 0x400);
    assert_eq!(gpr(&g, reg::ESI) & 0xFFFF, 0x1234);
    assert_eq!(g.cpu.seg(Seg::DS).selector, 0x0300);
}

#[test]
fn bound_raises_br_outside_the_range() {
    let mut g = real(|a| {
        a.mov(word_ptr(0x2000), 0xFFF0)?; // -16
        a.mov(word_ptr(0x2002), 0x0010)?; // 16
        a.mov(ax, 0xFFF0)?;
        a.bound(ax, dword_ptr(0x2000))?; // in range
        a.mov(ax, 0x0011)?;
        a.bound(ax, dword_ptr(0x2000))?; // out: #BR
        a.hlt()
    });
    assert_eq!(fault_vector(&mut g), 5);
}

#[test]
fn store_into_the_next_instruction_of_the_same_block_takes_effect() {
    let mut g = real(|a| {
        let mut patch = a.create_label();
        a.mov(al, 0)?;
        a.mov(bx, 0)?;
        a.db(&[0xC6, 0x06])?; // mov byte [patch+1], 0x42
        a.dw(&[(ORG + 2 + 3 + 5 + 1) as u16])?;
        a.db(&[0x42])?;
        a.set_label(&mut patch)?;
        a.mov(al, 0x11)?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EAX) & 0xFF, 0x42);
    let _ = fault_vector(&mut g);
}

#[test]
fn rep_stos_over_the_following_code_takes_effect() {
    // The REP STOSB turns a `jmp $` right after it into two NOPs.
    let g = real(|a| {
        a.mov(di, ORG + 3 + 2 + 3 + 2)?;
        a.mov(al, 0x90)?;
        a.mov(cx, 2)?;
        a.rep().stosb()?;
        a.db(&[0xEB, 0xFE])?; // jmp $
        a.mov(bl, 0x99)?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EBX) & 0xFF, 0x99);
}

// ================================ stack ================================

#[test]
fn push_and_pop_registers_memory_and_immediates() {
    let mut g = real(|a| {
        a.mov(ax, 0x1234)?;
        a.push(ax)?;
        a.push(sp)?; // pushes 0x7FFE, the value before the push
        a.pop(bx)?;
        a.pop(cx)?;
        a.push(0x7Fi32)?;
        a.pop(dx)?;
        a.db(&[0x6A, 0x80])?; // push -128 (word)
        a.pop(si)?;
        a.db(&[0x66, 0x6A, 0xFF])?; // push dword -1
        a.pop(edi)?;
        a.mov(word_ptr(0x2000), 0xCAFE)?;
        a.push(word_ptr(0x2000))?;
        a.pop(word_ptr(0x2002))?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EBX) & 0xFFFF, 0x7FFE);
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 0x1234);
    assert_eq!(gpr(&g, reg::EDX) & 0xFFFF, 0x7F);
    assert_eq!(gpr(&g, reg::ESI) & 0xFFFF, 0xFF80);
    assert_eq!(gpr(&g, reg::EDI), 0xFFFF_FFFF);
    assert_eq!(peek16(&mut g, 0x2002), 0xCAFE);
    assert_eq!(gpr(&g, reg::ESP), 0x8000);
}

#[test]
fn pop_sp_and_pop_into_esp_addressed_memory() {
    let g = flat(|a| {
        a.push(0x1111_1111i32)?;
        a.push(0x2222_2222i32)?;
        // pop [esp]: the address uses ESP after the pop.
        a.pop(dword_ptr(esp))?;
        a.mov(eax, dword_ptr(esp))?;
        a.push(0x0006_0000i32)?;
        a.pop(esp)?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EAX), 0x2222_2222);
    assert_eq!(gpr(&g, reg::ESP), 0x0006_0000);
}

#[test]
fn segment_register_pushes_and_pops() {
    let g = flat(|a| {
        a.mov(dword_ptr(0x7FFFC), 0xAAAA_AAAAu32)?;
        a.push(ds)?; // 32-bit: ESP -= 4, only the selector word written
        a.mov(eax, esp)?;
        a.mov(ebx, dword_ptr(esp))?;
        a.pop(ecx)?;
        a.db(&[0x66, 0x0E])?; // push cs (16-bit)
        a.mov(edx, esp)?;
        a.db(&[0x66, 0x58])?; // pop ax
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::EBX), 0xAAAA_0010);
    assert_eq!(gpr(&g, reg::ECX), 0xAAAA_0010);
    assert_eq!(gpr(&g, reg::EDX), 0x7FFFE);
    assert_eq!(
        gpr(&g, reg::EAX),
        0x0007_0008,
        "ESP was 0x7FFFC, then POP AX of CS"
    );
}

#[test]
fn pop_segment_registers_in_real_mode() {
    let g = real(|a| {
        a.push(0x0123i32)?;
        a.pop(es)?;
        a.push(0x0456i32)?;
        a.pop(fs)?;
        a.push(0x0100i32)?;
        a.pop(ss)?; // SS base 0x1000: the stack moves
        a.hlt()
    });
    assert_eq!(g.cpu.seg(Seg::ES).selector, 0x0123);
    assert_eq!(g.cpu.seg(Seg::FS).base, 0x4560);
    assert_eq!(g.cpu.seg(Seg::SS).base, 0x1000);
    assert_eq!(gpr(&g, reg::ESP), 0x8000);
}

#[test]
fn pusha_and_popa_round_trip_and_skip_sp() {
    let mut g = real(|a| {
        a.mov(ax, 1)?;
        a.mov(cx, 2)?;
        a.mov(dx, 3)?;
        a.mov(bx, 4)?;
        a.mov(bp, 6)?;
        a.mov(si, 7)?;
        a.mov(di, 8)?;
        a.pusha()?;
        a.mov(word_ptr(0x7FF6), 0x5555)?; // the saved SP slot
        a.mov(ax, 0)?;
        a.mov(cx, 0)?;
        a.mov(dx, 0)?;
        a.mov(bx, 0)?;
        a.mov(bp, 0)?;
        a.mov(si, 0)?;
        a.mov(di, 0)?;
        a.popa()?;
        a.hlt()
    });
    for (r, v) in [
        (reg::EAX, 1),
        (reg::ECX, 2),
        (reg::EDX, 3),
        (reg::EBX, 4),
        (reg::EBP, 6),
        (reg::ESI, 7),
        (reg::EDI, 8),
    ] {
        assert_eq!(gpr(&g, r) & 0xFFFF, v, "register {r}");
    }
    assert_eq!(gpr(&g, reg::ESP), 0x8000);
    assert_eq!(peek16(&mut g, 0x7FF0), 8, "DI pushed last");
}

#[test]
fn pushad_stores_the_original_esp() {
    let mut g = flat(|a| {
        a.mov(eax, 0xA)?;
        a.pushad()?;
        a.popad()?;
        a.hlt()
    });
    assert_eq!(g.peek_u32(0x80000 - 20), 0x80000);
    assert_eq!(g.peek_u32(0x80000 - 4), 0xA);
    assert_eq!(gpr(&g, reg::ESP), 0x80000);
}

#[test]
fn enter_builds_frames_at_every_nesting_level() {
    for level in [0u32, 1, 2, 3, 5] {
        let mut g = flat(move |a| {
            a.mov(ebp, 0x70000)?;
            // The enclosing frame's saved frame pointers.
            for k in 1..8u32 {
                a.mov(dword_ptr(0x70000 - 4 * k), 0x1000 * k)?;
            }
            a.enter(0x20u32, level)?;
            a.hlt()
        });
        let frame = 0x80000 - 4;
        assert_eq!(g.peek_u32(frame), 0x70000, "level {level}: old EBP");
        assert_eq!(gpr(&g, reg::EBP), frame, "level {level}: new EBP");
        let mut top = frame;
        if level > 0 {
            for k in 1..level {
                top -= 4;
                assert_eq!(g.peek_u32(top), 0x1000 * k, "level {level}: display {k}");
            }
            top -= 4;
            assert_eq!(g.peek_u32(top), frame, "level {level}: own frame");
        }
        assert_eq!(gpr(&g, reg::ESP), top - 0x20, "level {level}: ESP");
    }
}

#[test]
fn enter_and_leave_with_16_bit_operands() {
    let mut g = real(|a| {
        a.mov(bp, 0x6000)?;
        a.mov(word_ptr(0x5FFE), 0xABCD)?;
        a.enter(8u32, 2u32)?;
        a.mov(si, sp)?;
        a.mov(di, bp)?;
        a.leave()?;
        a.hlt()
    });
    assert_eq!(peek16(&mut g, 0x7FFE), 0x6000);
    assert_eq!(peek16(&mut g, 0x7FFC), 0xABCD);
    assert_eq!(peek16(&mut g, 0x7FFA), 0x7FFE);
    assert_eq!(gpr(&g, reg::EDI) & 0xFFFF, 0x7FFE);
    assert_eq!(gpr(&g, reg::ESI) & 0xFFFF, 0x7FFA - 8);
    assert_eq!(gpr(&g, reg::EBP) & 0xFFFF, 0x6000);
    assert_eq!(gpr(&g, reg::ESP), 0x8000);
}

// ================================ strings ================================

#[test]
fn rep_movs_copies_forwards_and_backwards() {
    let mut g = real(|a| {
        for i in 0..16u32 {
            a.mov(byte_ptr(0x3000 + i), i + 1)?;
        }
        a.mov(si, 0x3000)?;
        a.mov(di, 0x4000)?;
        a.mov(cx, 8)?;
        a.rep().movsw()?;
        // Backwards, dwords.
        a.std()?;
        a.mov(si, 0x300C)?;
        a.mov(di, 0x500C)?;
        a.mov(cx, 4)?;
        a.db(&[0xF3, 0x66, 0xA5])?; // rep movsd
        a.cld()?;
        a.hlt()
    });
    let want: Vec<u8> = (1..=16).collect();
    assert_eq!(peek(&mut g, 0x4000, 16), want);
    assert_eq!(peek(&mut g, 0x5000, 16), want);
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 0);
    assert_eq!(gpr(&g, reg::ESI) & 0xFFFF, 0x2FFC);
    assert_eq!(gpr(&g, reg::EDI) & 0xFFFF, 0x4FFC);
}

#[test]
fn overlapping_rep_movsb_replicates_a_pattern() {
    let mut g = flat(|a| {
        a.mov(dword_ptr(0x10000), 0x0302_0100)?;
        a.mov(esi, 0x10000)?;
        a.mov(edi, 0x10003)?;
        a.mov(ecx, 3000)?;
        a.rep().movsb()?;
        a.hlt()
    });
    let got = peek(&mut g, 0x10000, 3003);
    let want: Vec<u8> = (0..3003).map(|i| (i % 3) as u8).collect();
    assert_eq!(got, want);
}

#[test]
fn rep_movsd_across_pages_and_a_long_fill() {
    let mut g = flat(|a| {
        a.mov(edi, 0x10000)?;
        a.mov(eax, 0x1122_3344)?;
        a.mov(ecx, 0x3001)?; // 48 KiB + 4, not page aligned at the end
        a.rep().stosd()?;
        a.mov(esi, 0x10002)?; // unaligned source
        a.mov(edi, 0x30FFE)?; // destination straddles a page
        a.mov(ecx, 0x1000)?;
        a.rep().movsd()?;
        a.hlt()
    });
    assert_eq!(g.peek_u32(0x10000), 0x1122_3344);
    assert_eq!(g.peek_u32(0x10000 + 4 * 0x3000), 0x1122_3344);
    assert_eq!(g.peek_u32(0x10000 + 4 * 0x3001), 0);
    assert_eq!(g.peek_u32(0x30FFE), 0x3344_1122);
    assert_eq!(g.peek_u32(0x30FFE + 4 * 0xFFF), 0x3344_1122);
    assert_eq!(gpr(&g, reg::EDI), 0x30FFE + 0x4000);
}

#[test]
fn long_rep_yields_between_batches_and_resumes() {
    let mut g = flat_guest(Box::new(|a| {
        a.mov(edi, 0x100000)?;
        a.mov(ecx, 0x10000)?;
        a.mov(eax, 0xA5A5_A5A5u32)?;
        a.rep().stosd()?;
        a.hlt()
    }));
    let exit = g.cpu.run(4);
    assert_eq!(exit, RunExit::BudgetExhausted);
    let count = gpr(&g, reg::ECX);
    assert!(count > 0 && count < 0x10000, "ECX {count:#x} mid-way");
    assert_eq!(g.cpu.eip(), ORG + 15, "still on the REP");
    assert_eq!(gpr(&g, reg::EDI), 0x100000 + 4 * (0x10000 - count));
    assert_eq!(g.run(1000), RunExit::HaltedInterruptsDisabled);
    assert_eq!(gpr(&g, reg::ECX), 0);
    assert_eq!(g.peek_u32(0x100000 + 4 * 0xFFFF), 0xA5A5_A5A5);
    assert_eq!(g.peek_u32(0x100000 + 4 * 0x10000), 0);
}

#[test]
fn rep_movsw_faulting_mid_way_leaves_registers_consistent() {
    // DI reaches 0xFFFF: the word store there exceeds the ES limit (#GP).
    let mut g = real(|a| {
        a.mov(si, 0x3000)?;
        a.mov(di, 0xFFF1)?;
        a.mov(cx, 20)?;
        a.rep().movsw()?;
        a.hlt()
    });
    assert_eq!(fault_vector(&mut g), 13);
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 20 - 7);
    assert_eq!(gpr(&g, reg::ESI) & 0xFFFF, 0x3000 + 14);
    assert_eq!(gpr(&g, reg::EDI) & 0xFFFF, 0xFFFF);
    // The pushed IP is the REP instruction (prefix included).
    let top = gpr(&g, reg::ESP);
    assert_eq!(peek16(&mut g, top) as u32, ORG + 9);
}

#[test]
fn repe_cmps_and_repne_scas_stop_on_zf() {
    let g = real(|a| {
        a.mov(dword_ptr(0x3000), 0x4433_2211)?;
        a.mov(dword_ptr(0x4000), 0x4499_2211)?;
        a.mov(si, 0x3000)?;
        a.mov(di, 0x4000)?;
        a.mov(cx, 4)?;
        a.repe().cmpsb()?;
        a.lahf()?;
        a.mov(bx, cx)?;
        a.mov(bp, si)?;
        // REPNE SCASB for 0x44.
        a.mov(di, 0x3000)?;
        a.mov(al, 0x44)?;
        a.mov(cx, 10)?;
        a.repne().scasb()?;
        a.hlt()
    });
    assert_eq!(
        gpr(&g, reg::EBX) & 0xFFFF,
        1,
        "stopped after the third byte"
    );
    assert_eq!(gpr(&g, reg::EBP) & 0xFFFF, 0x3003);
    assert_eq!(
        (gpr(&g, reg::EAX) >> 8) & 0x40,
        0,
        "ZF clear after mismatch"
    );
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 6);
    assert_eq!(gpr(&g, reg::EDI) & 0xFFFF, 0x3004);
    assert!(g.cpu.eflags() & 0x40 != 0, "ZF set on the match");
}

#[test]
fn lods_stos_with_segment_override_and_32_bit_addresses() {
    let mut g = real(|a| {
        a.mov(ax, 0x0300)?;
        a.mov(fs, ax)?;
        a.mov(word_ptr(0x3010), 0xBEEF)?;
        a.mov(si, 0x0010)?;
        a.db(&[0x64, 0xAD])?; // lods ax, word fs:[si]
        a.mov(di, 0x4000)?;
        a.stosw()?;
        a.hlt()
    });
    assert_eq!(peek16(&mut g, 0x4000), 0xBEEF);
}

#[test]
fn address_size_selects_the_count_and_index_registers() {
    // In real mode a 32-bit address REP MOVSB counts ECX and runs into the
    // 64 KiB limit with EDI = 0x10000 (#GP), the registers telling how far
    // it got.
    let mut g = real(|a| {
        a.mov(esi, 0x3010)?;
        a.mov(edi, 0x5000)?;
        a.mov(ecx, 0x0001_0002)?;
        a.db(&[0x67, 0xF3, 0xA4])?; // rep movsb (a32)
        a.hlt()
    });
    assert_eq!(fault_vector(&mut g), 13);
    assert_eq!(gpr(&g, reg::EDI), 0x10000);
    assert_eq!(gpr(&g, reg::ESI), 0x3010 + 0xB000);
    assert_eq!(gpr(&g, reg::ECX), 0x5002);
    // In 32-bit code a 16-bit address REP counts CX and indexes with SI/DI.
    let mut g = flat(|a| {
        a.mov(dword_ptr(0x3000), 0x0403_0201)?;
        a.mov(esi, 0xABCD_3000u32)?;
        a.mov(edi, 0x1234_4000)?;
        a.mov(ecx, 0x0001_0003)?;
        a.db(&[0x67, 0xF3, 0xA4])?; // rep movsb (a16)
        a.hlt()
    });
    assert_eq!(peek(&mut g, 0x4000, 4), vec![1, 2, 3, 0]);
    assert_eq!(gpr(&g, reg::ECX), 0x0001_0000);
    assert_eq!(gpr(&g, reg::ESI), 0xABCD_3003);
    assert_eq!(gpr(&g, reg::EDI), 0x1234_4003);
}

#[test]
fn outs_and_ins_use_the_port_in_dx() {
    let mut g = real(|a| {
        for (i, b) in b"hello".iter().enumerate() {
            a.mov(byte_ptr(0x3000 + i as u32), *b as u32)?;
        }
        a.mov(dx, 0xE9)?;
        a.mov(si, 0x3000)?;
        a.mov(cx, 5)?;
        a.rep().outsb()?;
        a.mov(dx, 0x80)?;
        a.mov(di, 0x4000)?;
        a.mov(cx, 3)?;
        a.rep().insw()?;
        a.hlt()
    });
    assert_eq!(g.console(), "hello");
    assert_eq!(
        peek(&mut g, 0x4000, 7),
        vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0]
    );
}

#[test]
fn string_ops_wrap_16_bit_indexes() {
    let g = real(|a| {
        a.mov(esi, 0x1234_FFFF)?;
        a.lodsb()?;
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::ESI), 0x1234_0000);
}

// ================================ branches ================================

/// Whether condition `cc` holds for these EFLAGS (the reference model).
fn cond(cc: u8, f: u32) -> bool {
    let (cf, pf, zf, sf, of) = (
        f & 1 != 0,
        f & 4 != 0,
        f & 0x40 != 0,
        f & 0x80 != 0,
        f & 0x800 != 0,
    );
    let r = match cc >> 1 {
        0 => of,
        1 => cf,
        2 => zf,
        3 => cf || zf,
        4 => sf,
        5 => pf,
        6 => sf != of,
        _ => zf || sf != of,
    };
    r ^ (cc & 1 != 0)
}

#[test]
fn jcc_follows_every_condition() {
    for cc in 0..16u8 {
        for flags in [0x002u32, 0x003, 0x046, 0x082, 0x802, 0x882, 0x0C7, 0x8C3] {
            for near in [false, true] {
                let mut a = CodeAssembler::new(16).unwrap();
                if near {
                    a.db(&[0x0F, 0x80 + cc, 0x03, 0x00]).unwrap();
                } else {
                    a.db(&[0x70 + cc, 0x03]).unwrap();
                }
                a.mov(al, 1).unwrap();
                a.hlt().unwrap();
                a.mov(al, 2).unwrap();
                a.hlt().unwrap();
                let mut g = Guest::real_mode(1, ORG);
                g.load(ORG, a);
                g.cpu.set_eflags(flags);
                g.run(100);
                let taken = gpr(&g, reg::EAX) & 0xFF == 2;
                assert_eq!(taken, cond(cc, flags), "cc {cc:#x} flags {flags:#x}");
            }
        }
    }
}

#[test]
fn call_ret_and_indirect_jumps() {
    let mut g = real_guest(Box::new(|a| {
        a.push(0x1111i32)?;
        a.call(0x1800u64)?;
        a.mov(bx, sp)?;
        a.mov(word_ptr(0x2000), 0x1810)?;
        a.jmp(word_ptr(0x2000))?;
        a.hlt()
    }));
    g.poke(0x1800, &[0xB9, 0x42, 0x00, 0xC2, 0x02, 0x00]); // mov cx, 0x42 ; ret 2
    g.poke(0x1810, &[0xBA, 0x77, 0x00, 0xF4]); // mov dx, 0x77 ; hlt
    assert_eq!(g.run(100), RunExit::HaltedInterruptsDisabled);
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 0x42);
    assert_eq!(
        gpr(&g, reg::EBX) & 0xFFFF,
        0x8000,
        "RET 2 dropped the argument"
    );
    assert_eq!(gpr(&g, reg::EDX) & 0xFFFF, 0x77);
    assert_eq!(g.cpu.eip(), 0x1814);
}

#[test]
fn indirect_call_through_register_and_memory() {
    let mut g = flat_guest(Box::new(|a| {
        a.mov(eax, 0x1800)?;
        a.call(eax)?;
        a.mov(dword_ptr(0x2000), 0x1800)?;
        a.mov(edx, ecx)?;
        a.mov(ecx, 0)?;
        a.call(dword_ptr(0x2000))?;
        a.hlt()
    }));
    g.poke(0x1800, &[0xB9, 0x99, 0, 0, 0, 0xC3]); // mov ecx, 0x99 ; ret
    assert_eq!(g.run(100), RunExit::HaltedInterruptsDisabled);
    assert_eq!(gpr(&g, reg::EDX), 0x99);
    assert_eq!(gpr(&g, reg::ECX), 0x99);
    assert_eq!(gpr(&g, reg::ESP), 0x80000);
}

#[test]
fn loops_count_cx_or_ecx_by_address_size() {
    let g = real(|a| {
        let mut l1 = a.create_label();
        let mut l2 = a.create_label();
        let mut skip = a.create_label();
        a.mov(ecx, 0x0001_0005)?;
        a.mov(bx, 0)?;
        a.set_label(&mut l1)?;
        a.xchg(bx, bx)?;
        a.loop_(l1)?; // CX: stops at CX = 0, ECX high half kept
        a.mov(esi, ecx)?;
        a.mov(ecx, 3)?;
        a.set_label(&mut l2)?;
        a.db(&[0x67, 0xE2, 0xFE])?; // loop l2 with ECX (a32): branches to itself
        a.mov(edi, ecx)?;
        a.jcxz(skip)?;
        a.mov(edi, 0xBAD)?;
        a.set_label(&mut skip)?;
        a.mov(ah, 0x40)?; // ZF
        a.sahf()?;
        a.mov(cx, 5)?;
        a.db(&[0xE0, 0xFE])?; // loopne $: ZF set, falls through after one
        a.mov(bp, cx)?;
        a.mov(cx, 5)?;
        a.db(&[0xE1, 0xFE])?; // loope $: runs to CX = 0
        a.hlt()
    });
    assert_eq!(gpr(&g, reg::ESI), 0x0001_0000);
    assert_eq!(gpr(&g, reg::EDI), 0);
    assert_eq!(gpr(&g, reg::EBP) & 0xFFFF, 4);
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 0);
}

#[test]
fn near_jump_outside_cs_limit_faults() {
    let mut g = real(|a| {
        a.mov(eax, 0x0001_0000)?;
        a.db(&[0x66, 0xFF, 0xE0])?; // jmp eax
        a.hlt()
    });
    assert_eq!(fault_vector(&mut g), 13);
    let top = gpr(&g, reg::ESP);
    assert_eq!(peek16(&mut g, top) as u32, ORG + 6);
}

#[test]
fn sixteen_bit_operand_branch_in_32_bit_code_truncates_eip() {
    // At 0x1_0000 a jmp with a 66 prefix lands at (EIP + rel) & 0xFFFF.
    let mut a = CodeAssembler::new(32).unwrap();
    a.db(&[0x66, 0xE9, 0x10, 0x00]).unwrap(); // jmp rel16 +0x10
    let mut g = flat_guest(Box::new(|a| a.hlt()));
    g.load(0x1_0000, a);
    g.poke(0x0014, &[0xB0, 0x33, 0xF4]); // mov al, 0x33 ; hlt
    g.cpu.set_eip(0x1_0000);
    assert_eq!(g.run(100), RunExit::HaltedInterruptsDisabled);
    assert_eq!(gpr(&g, reg::EAX) & 0xFF, 0x33);
    assert_eq!(g.cpu.eip(), 0x17);
}

#[test]
fn single_step_trap_waits_one_instruction_after_mov_ss() {
    let mut g = real(|a| {
        a.mov(bx, ss)?;
        a.xor(cx, cx)?;
        a.pushf()?;
        a.pop(ax)?;
        a.or(ax, 0x100)?; // TF
        a.push(ax)?;
        a.popf()?;
        a.mov(ss, bx)?; // holds the trap off for one instruction
        a.inc(cx)?; // the trap comes after this one
        a.inc(cx)?;
        a.hlt()
    });
    assert_eq!(fault_vector(&mut g), 1);
    assert_eq!(gpr(&g, reg::ECX) & 0xFFFF, 1);
}
