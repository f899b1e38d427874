//! The JIT must leave the CPU exactly as the interpreter does: every test
//! runs the same guest code both ways and compares the whole visible state.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use crate::bus::NullBus;
use crate::cpu::{Cpu, Seg, SegCache, cr0, reg};
use crate::memory::PhysMemory;

const CODE: u32 = 0x1000;
const DATA: u32 = 0x5000;
const DE_HANDLER: u32 = 0x2000;

type Build = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// A CPU with `code` at CODE: flat 32-bit protected mode (no paging, no
/// IDT) or real mode with every exception vectored to a HLT at DE_HANDLER.
fn machine(code32: bool, build: Build, jit: bool) -> Cpu {
    let mut cpu = Cpu::new(PhysMemory::new(1 << 20).unwrap(), Box::new(NullBus));
    if code32 {
        cpu.set_cr0(cpu.cr0() | cr0::PE);
        cpu.set_seg_cache(Seg::CS, SegCache::from_descriptor(8, 0x00CF_9A00_0000_FFFF));
        for s in [Seg::DS, Seg::ES, Seg::SS, Seg::FS, Seg::GS] {
            cpu.set_seg_cache(s, SegCache::from_descriptor(0x10, 0x00CF_9200_0000_FFFF));
        }
    } else {
        cpu.set_seg_cache(Seg::CS, SegCache::real_mode(0));
        for v in 0..32 {
            cpu.write_phys_bytes(v * 4, &DE_HANDLER.to_le_bytes());
        }
        cpu.write_phys_bytes(DE_HANDLER, &[0xF4]);
    }
    cpu.set_gpr(reg::ESP, 0x8000);
    let mut a = CodeAssembler::new(if code32 { 32 } else { 16 }).unwrap();
    build(&mut a).unwrap();
    a.hlt().unwrap();
    let bytes = a.assemble(CODE as u64).unwrap();
    cpu.write_phys_bytes(CODE, &bytes);
    cpu.set_eip(CODE);
    if jit {
        cpu.set_jit(true);
        cpu.set_jit_threshold(0);
    }
    cpu
}

fn state(cpu: &mut Cpu) -> (Vec<u32>, u32, u32, u64, Vec<u8>) {
    let regs = (0..8).map(|r| cpu.gpr(r)).collect();
    let mut mem = vec![0; 0x9000];
    cpu.read_phys_bytes(0, &mut mem);
    (regs, cpu.eip(), cpu.eflags(), cpu.instruction_count(), mem)
}

/// Runs `build` interpreted and compiled, in `budget`-instruction slices;
/// asserts equal states after every slice; returns the compiled CPU.
fn same_as_interpreter(code32: bool, build: Build, budget: u64) -> Cpu {
    let mut interp = machine(code32, build, false);
    let mut jit = machine(code32, build, true);
    for _ in 0..100_000 {
        let a = interp.run(budget);
        let b = jit.run(budget);
        assert_eq!(a, b);
        let (sa, sb) = (state(&mut interp), state(&mut jit));
        assert_eq!(sa.0, sb.0, "registers");
        assert_eq!(
            (sa.1, sa.2, sa.3),
            (sb.1, sb.2, sb.3),
            "eip, eflags, icount"
        );
        assert!(sa.4 == sb.4, "memory differs");
        if interp.is_halted() {
            break;
        }
    }
    assert!(interp.is_halted(), "the guest reaches its HLT");
    assert!(jit.jit_compiled_blocks() > 0, "something was compiled");
    jit
}

/// Every native form, with flags read back (PUSHF, ADC, SETcc) after each.
fn native_mix(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(ecx, 300)?;
    a.mov(esi, DATA)?;
    a.mov(dword_ptr(DATA), 0x8000_0001u32)?;
    a.set_label(&mut top)?;
    a.mov(eax, dword_ptr(esi))?;
    a.add(eax, ecx)?;
    a.mov(dword_ptr(esi + ecx * 4 + 8), eax)?;
    a.adc(edx, 0)?;
    a.sub(eax, 0x7FFF_FFFF)?;
    a.setl(bl)?;
    a.cmp(eax, ecx)?;
    a.setbe(bh)?;
    a.xor(edi, eax)?;
    a.seto(dl)?;
    a.and(edi, 0xFFF0_FFFFu32 as i32)?;
    a.or(edi, dword_ptr(esi))?;
    a.test(edi, 0x100)?;
    a.setnz(dh)?;
    a.lea(ebp, dword_ptr(eax + ecx * 8 - 3))?;
    a.movzx(eax, bh)?;
    a.movsx(ebp, byte_ptr(esi + 3))?;
    a.movzx(ebp, word_ptr(esi + 2))?;
    a.stc()?;
    a.inc(ebp)?;
    a.adc(ebx, ebp)?;
    a.add(ebx, ebx)?;
    a.dec(ebx)?;
    a.sbb(edx, ebx)?;
    a.add(dword_ptr(esi), ebx)?;
    a.mov(dword_ptr(esi + 4), 7)?;
    a.push(eax)?;
    a.push(esp)?;
    a.pop(edx)?;
    a.pop(edi)?;
    a.dec(ecx)?;
    a.jnz(top)
}

#[test]
fn compiled_native_forms_leave_the_interpreters_state() {
    same_as_interpreter(true, native_mix, 1_000_000);
}

#[test]
fn budgets_that_split_blocks_leave_the_interpreters_state() {
    same_as_interpreter(true, native_mix, 41);
}

/// The first access to DATA's page misses the TLB: the compiled block
/// bails there and the interpreter finishes it with the count right.
#[test]
fn a_tlb_miss_bails_to_the_interpreter_at_that_instruction() {
    let cpu = same_as_interpreter(
        true,
        |a| {
            a.mov(eax, 1)?;
            a.mov(ebx, dword_ptr(DATA + 0x1000))?;
            a.mov(dword_ptr(DATA + 0x2000), eax)?;
            a.add(eax, ebx)
        },
        1000,
    );
    assert_eq!(cpu.instruction_count(), 5);
}

/// #DE in a trampolined DIV after two native instructions: two retire,
/// EIP is the DIV's for the pushed return address.
#[test]
fn a_fault_in_a_trampolined_instruction_counts_those_before_it() {
    let mut cpu = same_as_interpreter(
        false,
        |a| {
            a.mov(eax, 5)?;
            a.add(eax, ebx)?;
            a.div(ecx)?;
            a.mov(edx, 9)
        },
        1000,
    );
    let mut ip = [0u8; 2];
    cpu.read_phys_bytes(0x8000 - 6, &mut ip);
    assert_eq!(
        u16::from_le_bytes(ip) as u32,
        CODE + 6 + 3,
        "DIV's IP pushed"
    );
    assert_eq!(
        cpu.instruction_count(),
        2 + 1,
        "MOV, ADD and the handler's HLT"
    );
}

/// A block that rewrites its own next instruction through a trampolined
/// byte store and through a native dword store (which must bail: code
/// pages have no write tag): the new code runs.
#[test]
fn self_modifying_code_runs_its_new_instructions() {
    let cpu = same_as_interpreter(
        true,
        |a| {
            let mut top = a.create_label();
            a.mov(ecx, 50)?;
            a.set_label(&mut top)?;
            // mov ecx (5), mov edx (2), nop, two stores (6 each): the
            // `mov eax, imm32` is at CODE + 20, `mov edi, imm32` at + 25.
            a.mov(edx, ecx)?;
            a.nop()?;
            a.mov(dword_ptr(CODE + 21), edx)?;
            a.mov(byte_ptr(CODE + 26), cl)?;
            a.mov(eax, 0x1234_5678)?;
            a.mov(edi, 0x1234_5678)?;
            a.add(ebx, eax)?;
            a.add(esi, edi)?;
            a.dec(ecx)?;
            a.jnz(top)
        },
        1000,
    );
    assert_eq!(cpu.gpr(reg::EBX), (1..=50).sum::<u32>());
}

/// PUSH/POP r32 on a 16-bit stack leave the compiled code for the slow path.
#[test]
fn push_and_pop_on_a_16_bit_stack_take_the_interpreters_path() {
    same_as_interpreter(
        false,
        |a| {
            a.mov(eax, 0x1234_5678)?;
            a.push(eax)?;
            a.push(esp)?;
            a.pop(ebx)?;
            a.pop(ecx)?;
            a.add(ecx, ebx)
        },
        1000,
    );
}

/// Jcc after every lazy kind (replayed or not), JMP, CALL and RET.
#[test]
fn compiled_branches_leave_the_interpreters_state() {
    same_as_interpreter(
        true,
        |a| {
            let mut top = a.create_label();
            let mut func = a.create_label();
            let mut skip = [(); 8].map(|_| a.create_label());
            let mut out = a.create_label();
            a.mov(ecx, 200)?;
            a.set_label(&mut top)?;
            a.mov(eax, ecx)?;
            a.imul_3(eax, eax, 0x9E37_79B9u32 as i32)?;
            a.cmp(eax, 0x8000_0000u32 as i32)?;
            a.jb(skip[0])?;
            a.inc(ebx)?;
            a.set_label(&mut skip[0])?;
            a.test(eax, 0x10)?;
            a.jnz(skip[1])?;
            a.add(esi, 3)?;
            a.set_label(&mut skip[1])?;
            a.add(eax, eax)?;
            a.jc(skip[2])?;
            a.inc(edi)?;
            a.set_label(&mut skip[2])?;
            a.inc(eax)?;
            a.jle(skip[3])?;
            a.dec(edi)?;
            a.set_label(&mut skip[3])?;
            a.dec(eax)?;
            a.jb(skip[4])?;
            a.add(ebp, 1)?;
            a.set_label(&mut skip[4])?;
            a.shl(eax, 1)?;
            a.jo(skip[5])?;
            a.add(ebp, 2)?;
            a.set_label(&mut skip[5])?;
            a.sub(eax, ecx)?;
            a.jg(skip[6])?;
            a.call(func)?;
            a.set_label(&mut skip[6])?;
            a.jmp(skip[7])?;
            a.set_label(&mut skip[7])?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.jmp(out)?;
            a.set_label(&mut func)?;
            a.add(edx, eax)?;
            a.ret()?;
            a.set_label(&mut out)?;
            a.nop()
        },
        1000,
    );
}

/// A JMP past the CS limit raises #GP from the compiled block, with EIP
/// at the JMP and the instructions before it counted.
#[test]
fn a_jump_past_the_cs_limit_faults_like_the_interpreter() {
    same_as_interpreter(
        false,
        |a| {
            a.mov(eax, 1)?;
            a.add(eax, eax)?;
            a.db(&[0x66, 0xE9])?;
            a.dd(&[0x0010_0000])
        },
        1000,
    );
}

/// IMUL, the shifts by immediates, SETcc and CMOVcc after each lazy kind.
#[test]
fn compiled_multiplies_shifts_and_conditionals_leave_the_interpreters_state() {
    same_as_interpreter(
        true,
        |a| {
            let mut top = a.create_label();
            a.mov(ecx, 300)?;
            a.mov(esi, DATA)?;
            a.mov(dword_ptr(DATA), 0x7654_3211)?;
            a.set_label(&mut top)?;
            a.mov(eax, ecx)?;
            a.imul_3(eax, eax, 0x9E37_79B9u32 as i32)?;
            a.imul_2(eax, ecx)?;
            a.seto(bl)?;
            a.imul_2(eax, dword_ptr(esi))?;
            a.setc(bh)?;
            a.imul_3(edx, dword_ptr(esi), 7)?;
            a.mov(edi, eax)?;
            a.shl(edi, 1)?;
            a.seto(dl)?;
            a.shr(edi, 1)?;
            a.seto(dh)?;
            a.shl(edi, 7)?;
            a.setc(dl)?;
            a.shr(edi, 31)?;
            a.sar(eax, 3)?;
            a.setc(ah)?;
            a.sar(eax, 1)?;
            a.shl(eax, 0)?;
            a.cmp(eax, ecx)?;
            a.cmovae(ebp, eax)?;
            a.setb(al)?;
            a.setle(ah)?;
            a.setp(bl)?;
            a.test(eax, edx)?;
            a.cmovs(ebp, ecx)?;
            a.setnz(bh)?;
            a.add(eax, edx)?;
            a.setc(dl)?;
            a.cmovo(edi, edx)?;
            a.inc(edx)?;
            a.setg(dh)?;
            a.setbe(dl)?;
            a.add(ebp, edx)?;
            a.add(ebp, ebx)?;
            a.add(ebp, edi)?;
            a.dec(ecx)?;
            a.jnz(top)
        },
        1000,
    );
}

/// ADC/SBB chains and carry conditions after every lazy kind (8-bit
/// operations included: CF does not depend on the width).
#[test]
fn compiled_carry_chains_leave_the_interpreters_state() {
    same_as_interpreter(
        true,
        |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 300)?;
            a.set_label(&mut top)?;
            a.mov(eax, ecx)?;
            a.imul_3(eax, eax, 0x9E37_79B9u32 as i32)?;
            a.add(ebx, eax)?;
            a.adc(edx, eax)?;
            a.adc(edx, ecx)?;
            a.setb(ch)?;
            a.sbb(esi, eax)?;
            a.sbb(esi, 0x1234)?;
            a.cmovae(edi, eax)?;
            a.sub(edi, ebx)?;
            a.adc(ebp, 0)?;
            a.and(edi, eax)?;
            a.adc(ebp, edi)?;
            a.shl(eax, 5)?;
            a.jb(skip)?;
            a.adc(ebp, 1)?;
            a.set_label(&mut skip)?;
            a.shr(eax, 3)?;
            a.sbb(ebp, edx)?;
            a.add(al, bl)?;
            a.adc(esi, edi)?;
            a.cmp(dl, al)?;
            a.setae(al)?;
            a.sbb(esi, ebp)?;
            a.stc()?;
            a.adc(edi, edx)?;
            a.inc(edi)?;
            a.cmovb(edx, edi)?;
            a.dec(ecx)?;
            a.jnz(top)
        },
        1000,
    );
}

/// MOV and the ALU group at 8 and 16 bits, and with memory destinations.
#[test]
fn compiled_sized_and_memory_destination_forms_leave_the_interpreters_state() {
    same_as_interpreter(
        true,
        |a| {
            let mut top = a.create_label();
            a.mov(ecx, 300)?;
            a.mov(esi, DATA)?;
            a.set_label(&mut top)?;
            a.mov(eax, ecx)?;
            a.imul_3(eax, eax, 0x9E37_79B9u32 as i32)?;
            a.mov(byte_ptr(esi + ecx), al)?;
            a.mov(bh, byte_ptr(esi + 7))?;
            a.mov(dl, ah)?;
            a.mov(dh, 0x7F)?;
            a.add(dh, al)?;
            a.seto(bl)?;
            a.sub(dl, bh)?;
            a.setb(bl)?;
            a.cmp(al, 0x80u32 as i32)?;
            a.setl(bl)?;
            a.xor(ah, byte_ptr(esi + 3))?;
            a.test(byte_ptr(esi + ecx), 0x41)?;
            a.setp(bl)?;
            a.mov(word_ptr(esi + ecx * 2 + 0x400), ax)?;
            a.mov(di, word_ptr(esi + 0x401))?;
            a.add(di, 0x7FFF)?;
            a.seto(bl)?;
            a.or(bp, di)?;
            a.and(word_ptr(esi + 2), 0xFFF0u32 as i32)?;
            a.add(dword_ptr(esi + 8), eax)?;
            a.adc(ebp, 0)?;
            a.sub(dword_ptr(esi + 12), 3)?;
            a.setbe(bh)?;
            a.cmp(dword_ptr(esi + 8), ecx)?;
            a.setg(bh)?;
            a.xor(byte_ptr(esi + 1), dl)?;
            a.mov(word_ptr(esi + 20), 0x1234)?;
            a.mov(byte_ptr(esi + 22), 0x56)?;
            a.dec(ecx)?;
            a.jnz(top)
        },
        1000,
    );
}

/// A full code region is recycled: the generation moves (so blocks
/// compiled before recompile) and new code lands at its start and runs.
#[test]
fn a_full_code_region_is_recycled() {
    use iced_x86::{Decoder, DecoderOptions};

    use crate::cpu::exec::Insn;

    let mut cpu = machine(true, |a| a.nop(), false);
    cpu.jit.region = 64 << 10;
    let code = [0x89, 0xD8, 0x40, 0xF4]; // mov eax, ebx; inc eax; hlt
    let insns: Vec<Insn> = Decoder::with_ip(32, &code, CODE as u64, DecoderOptions::NONE)
        .into_iter()
        .map(|i| Insn::new(i, true))
        .collect();
    let mut last = None;
    for _ in 0..2000 {
        last = cpu.jit.compile(&insns);
    }
    let (f, generation) = last.expect("compiles");
    assert!(generation > 0, "the region filled and was recycled");
    cpu.set_gpr(reg::EBX, 41);
    // SAFETY: `f` is the newest code for `insns`, which outlive the call.
    let r = unsafe { f(&mut cpu) };
    assert_eq!(r, super::ENDED, "HLT ends the block in its trampoline");
    assert_eq!(cpu.gpr(reg::EAX), 42);
    assert!(cpu.is_halted());
    assert_eq!(cpu.instruction_count(), 3);
}

/// CMOVcc from memory, NOPs, and Z/S/P conditions after shifts.
#[test]
fn compiled_cmov_from_memory_and_conditions_after_shifts_leave_the_interpreters_state() {
    same_as_interpreter(
        true,
        |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 300)?;
            a.mov(esi, DATA)?;
            a.set_label(&mut top)?;
            a.mov(eax, ecx)?;
            a.imul_3(eax, eax, 0x9E37_79B9u32 as i32)?;
            a.mov(dword_ptr(esi + ecx * 4), eax)?;
            a.cmp(eax, ecx)?;
            a.cmovae(ebx, dword_ptr(esi + ecx * 4))?;
            a.nop()?;
            a.pause()?;
            a.shr(eax, 29)?;
            a.cmovz(edx, dword_ptr(esi + 4))?;
            a.setp(dl)?;
            a.shl(eax, 30)?;
            a.js(skip)?;
            a.add(ebp, ecx)?;
            a.set_label(&mut skip)?;
            a.imul_2(ebx, ecx)?;
            a.cmovnz(edi, ebx)?;
            a.dec(ecx)?;
            a.jnz(top)
        },
        1000,
    );
}
