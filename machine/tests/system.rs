//! System instructions run as guest programs: CPUID, MSRs, control and
//! debug registers, descriptor-table registers, SYSENTER/SYSEXIT, port I/O
//! and its protection, RDTSC.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::Guest;
use common::pm::{self, KCODE, KDATA, KSTACK, SYSENTER_HLT, UCODE, UDATA};
use iced_x86::code_asm::*;
use machine::cr0 as cr0_bits;
use machine::cr4 as cr4_bits;
use machine::{Seg, TableReg, TscSource, cpuid_edx, msr, reg, vector};

const ORG: u32 = 0x1000;

/// A real-mode guest at 0000:1000 running `build`'s code, with exception stubs.
fn real(build: impl FnOnce(&mut CodeAssembler)) -> Guest {
    let mut a = CodeAssembler::new(16).unwrap();
    build(&mut a);
    let mut g = Guest::real_mode_with_stubs(1, ORG);
    g.load(ORG, a);
    g
}

/// A flat 32-bit protected-mode guest at CPL 0 running `build`'s code.
fn protected(build: impl FnOnce(&mut CodeAssembler)) -> Guest {
    let mut a = CodeAssembler::new(32).unwrap();
    build(&mut a);
    let mut g = Guest::protected(4);
    g.load(pm::CODE, a);
    g
}

/// Runs a real-mode guest expected to end at its own HLT.
fn run_real(g: &mut Guest) {
    g.cpu.wake();
    g.run(10_000);
    assert_eq!(g.real_exception(), None, "eip {:#x}", g.cpu.eip());
    assert!(g.cpu.is_halted());
}

/// Runs a real-mode guest expected to raise exception `v`.
fn run_real_expect(g: &mut Guest, v: u8) {
    g.cpu.wake();
    g.run(10_000);
    assert_eq!(g.real_exception(), Some(v), "eip {:#x}", g.cpu.eip());
}

fn cpuid(g: &mut Guest, leaf: u32) -> [u32; 4] {
    g.cpu.set_gpr(reg::EAX, leaf);
    g.cpu.set_eip(ORG);
    run_real(g);
    [
        g.cpu.gpr(reg::EAX),
        g.cpu.gpr(reg::EBX),
        g.cpu.gpr(reg::ECX),
        g.cpu.gpr(reg::EDX),
    ]
}

fn cpuid_guest() -> Guest {
    real(|a| {
        a.cpuid().unwrap();
        a.hlt().unwrap();
    })
}

// ---- CPUID ----

#[test]
fn cpuid_leaf0_names_genuine_intel_with_max_leaf_2() {
    let mut g = cpuid_guest();
    let [a, b, c, d] = cpuid(&mut g, 0);
    assert_eq!(a, 2);
    let mut vendor = Vec::new();
    for w in [b, d, c] {
        vendor.extend_from_slice(&w.to_le_bytes());
    }
    assert_eq!(vendor, b"GenuineIntel");
}

#[test]
fn cpuid_leaf1_reports_pentium_ii_signature_and_exactly_the_implemented_features() {
    let mut g = cpuid_guest();
    let [a, b, c, d] = cpuid(&mut g, 1);
    assert_eq!(a, 0x652, "family 6 model 5 stepping 2");
    assert_eq!((b, c), (0, 0));
    let expected = cpuid_edx::FPU
        | cpuid_edx::DE
        | cpuid_edx::PSE
        | cpuid_edx::TSC
        | cpuid_edx::MSR
        | cpuid_edx::CX8
        | cpuid_edx::SEP
        | cpuid_edx::MTRR
        | cpuid_edx::PGE
        | cpuid_edx::CMOV;
    assert_eq!(d, expected);
    for absent in [
        cpuid_edx::VME,
        cpuid_edx::PAE,
        cpuid_edx::MCE,
        cpuid_edx::APIC,
        cpuid_edx::MCA,
        cpuid_edx::PAT,
        cpuid_edx::PSE36,
        cpuid_edx::MMX,
        cpuid_edx::FXSR,
    ] {
        assert_eq!(d & absent, 0, "{absent:#x}");
    }
    assert_eq!(g.cpu.cpuid_info().query(1), [a, b, c, d]);
}

#[test]
fn cpuid_reports_apic_only_when_the_platform_has_one() {
    let mut g = cpuid_guest();
    g.cpu.set_apic_present(true);
    assert_ne!(cpuid(&mut g, 1)[3] & cpuid_edx::APIC, 0);
    g.cpu.set_apic_present(false);
    assert_eq!(cpuid(&mut g, 1)[3] & cpuid_edx::APIC, 0);
}

#[test]
fn cpuid_leaf2_has_pentium_ii_cache_descriptors() {
    let mut g = cpuid_guest();
    assert_eq!(cpuid(&mut g, 2), [0x0302_0101, 0, 0, 0x0C04_0843]);
}

#[test]
fn cpuid_leaves_above_the_maximum_return_the_highest_basic_leaf() {
    let mut g = cpuid_guest();
    let leaf2 = cpuid(&mut g, 2);
    assert_eq!(cpuid(&mut g, 3), leaf2);
    assert_eq!(cpuid(&mut g, 0x8000_0000), leaf2);
    assert_eq!(cpuid(&mut g, 0xFFFF_FFFF), leaf2);
}

#[test]
fn cpuid_info_matches_what_the_guest_sees() {
    let mut g = cpuid_guest();
    let info = g.cpu.cpuid_info();
    for leaf in [0, 1, 2, 7, 0x8000_0001] {
        assert_eq!(cpuid(&mut g, leaf), info.query(leaf), "leaf {leaf:#x}");
    }
}

// ---- MSRs ----

/// A guest that runs WRMSR; HLT; RDMSR; HLT.
fn msr_guest() -> Guest {
    real(|a| {
        a.wrmsr().unwrap();
        a.hlt().unwrap();
        a.rdmsr().unwrap();
        a.hlt().unwrap();
    })
}

/// WRMSR `value` to `index`, then RDMSR it back with EDX:EAX clobbered.
fn msr_round_trip(g: &mut Guest, index: u32, value: u64) -> u64 {
    g.cpu.set_eip(ORG);
    g.cpu.set_gpr(reg::ECX, index);
    g.cpu.set_gpr(reg::EAX, value as u32);
    g.cpu.set_gpr(reg::EDX, (value >> 32) as u32);
    run_real(g);
    g.cpu.set_gpr(reg::EAX, 0xDEAD_BEEF);
    g.cpu.set_gpr(reg::EDX, 0xDEAD_BEEF);
    run_real(g);
    (g.cpu.gpr(reg::EDX) as u64) << 32 | g.cpu.gpr(reg::EAX) as u64
}

#[test]
fn sysenter_msrs_round_trip() {
    let mut g = msr_guest();
    assert_eq!(msr_round_trip(&mut g, msr::SYSENTER_CS, 0x0008), 0x0008);
    assert_eq!(
        msr_round_trip(&mut g, msr::SYSENTER_ESP, 0xC000_1000),
        0xC000_1000
    );
    assert_eq!(
        msr_round_trip(&mut g, msr::SYSENTER_EIP, 0xC010_2030),
        0xC010_2030
    );
}

#[test]
fn mtrrs_are_kept_as_storage() {
    let mut g = msr_guest();
    let base = 0x0000_0000_0000_0006; // WB at 0
    let mask = 0x0000_000F_F800_0800; // 128 MiB, valid
    assert_eq!(msr_round_trip(&mut g, msr::MTRR_PHYS_BASE0, base), base);
    assert_eq!(msr_round_trip(&mut g, msr::MTRR_PHYS_BASE0 + 1, mask), mask);
    let fixed = 0x0606_0606_0606_0606;
    assert_eq!(msr_round_trip(&mut g, msr::MTRR_FIX64K_00000, fixed), fixed);
    assert_eq!(msr_round_trip(&mut g, msr::MTRR_FIX4K_F8000, fixed), fixed);
    assert_eq!(msr_round_trip(&mut g, msr::MTRR_DEF_TYPE, 0xC06), 0xC06);
    assert_eq!(g.cpu.read_msr(msr::MTRRCAP), Some(0x508));
}

#[test]
fn tsc_writes_set_only_the_low_32_bits() {
    let mut g = msr_guest();
    let v = msr_round_trip(&mut g, msr::TSC, 0x1234_5678_0000_1000);
    assert!((0x1000..0x1010).contains(&v), "{v:#x}");
}

#[test]
fn apic_base_msr_exists_only_with_an_apic_and_keeps_the_bsp_bit() {
    let mut g = msr_guest();
    assert_eq!(g.cpu.read_msr(msr::APIC_BASE), None);
    g.cpu.set_apic_present(true);
    g.cpu.reset();
    g.cpu
        .set_seg_cache(Seg::CS, machine::SegCache::real_mode(0));
    assert_eq!(g.cpu.apic_base(), 0xFEE0_0900);
    // Relocate and disable; the BSP flag is read-only.
    assert_eq!(
        msr_round_trip(&mut g, msr::APIC_BASE, 0xFEC0_0000),
        0xFEC0_0100
    );
    assert_eq!(g.cpu.apic_base(), 0xFEC0_0100);
}

#[test]
fn p6_identification_msrs_read_and_the_microcode_signature_is_kept() {
    let mut g = msr_guest();
    for index in [msr::PLATFORM_ID, msr::EBL_CR_POWERON, msr::MTRRCAP] {
        g.cpu.set_gpr(reg::ECX, index);
        g.cpu.set_eip(ORG + 3); // the RDMSR
        run_real(&mut g);
    }
    assert_eq!(msr_round_trip(&mut g, msr::BIOS_SIGN_ID, 0), 0);
    assert_eq!(
        msr_round_trip(&mut g, msr::BIOS_SIGN_ID, 0x0000_0033_0000_0000),
        0x0000_0033_0000_0000
    );
}

#[test]
fn rdmsr_of_an_unknown_msr_raises_gp() {
    let mut g = real(|a| {
        a.rdmsr().unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::ECX, 0x1A0); // IA32_MISC_ENABLE: not on a Pentium II
    run_real_expect(&mut g, vector::GP);
}

#[test]
fn wrmsr_to_read_only_unknown_or_malformed_msrs_raises_gp() {
    let cases: [(u32, u64); 6] = [
        (msr::MTRRCAP, 0),
        (msr::PLATFORM_ID, 0),
        (0xC000_0080, 0),                 // EFER: no long mode
        (msr::MTRR_PHYS_BASE0, 2),        // memory type 2 is reserved
        (msr::MTRR_DEF_TYPE, 0x1006),     // reserved bit 12
        (msr::MTRR_FIX16K_80000, 0x0700), // type 7 in one byte
    ];
    for (index, value) in cases {
        let mut g = real(|a| {
            a.wrmsr().unwrap();
            a.hlt().unwrap();
        });
        g.cpu.set_gpr(reg::ECX, index);
        g.cpu.set_gpr(reg::EAX, value as u32);
        g.cpu.set_gpr(reg::EDX, (value >> 32) as u32);
        g.run(100);
        assert_eq!(g.real_exception(), Some(vector::GP), "MSR {index:#x}");
    }
}

// ---- control registers ----

fn mov_cr_guest(cr: AsmRegisterCr) -> Guest {
    real(|a| {
        a.mov(cr, eax).unwrap();
        a.mov(ebx, cr).unwrap();
        a.hlt().unwrap();
    })
}

#[test]
fn mov_cr0_with_pg_but_not_pe_raises_gp() {
    let mut g = mov_cr_guest(cr0);
    g.cpu.set_gpr(reg::EAX, cr0_bits::PG | cr0_bits::ET);
    run_real_expect(&mut g, vector::GP);
    assert_eq!(g.cpu.cr0() & cr0_bits::PG, 0);
}

#[test]
fn mov_cr0_with_nw_but_not_cd_raises_gp() {
    let mut g = mov_cr_guest(cr0);
    g.cpu.set_gpr(reg::EAX, cr0_bits::NW | cr0_bits::ET);
    run_real_expect(&mut g, vector::GP);
}

#[test]
fn mov_cr0_ignores_reserved_bits_and_keeps_et() {
    let mut g = mov_cr_guest(cr0);
    g.cpu.set_gpr(
        reg::EAX,
        cr0_bits::MP | cr0_bits::NE | cr0_bits::WP | 0x0000_0F80,
    );
    run_real(&mut g);
    assert_eq!(
        g.cpu.gpr(reg::EBX),
        cr0_bits::MP | cr0_bits::NE | cr0_bits::WP | cr0_bits::ET
    );
}

#[test]
fn mov_cr0_setting_pe_enters_protected_mode_at_cpl0() {
    let mut g = mov_cr_guest(cr0);
    g.cpu.set_gpr(reg::EAX, cr0_bits::PE);
    run_real(&mut g);
    assert_ne!(g.cpu.cr0() & cr0_bits::PE, 0);
    assert_eq!(g.cpu.cpl(), 0);
}

#[test]
fn mov_cr4_accepts_implemented_features() {
    let mut g = mov_cr_guest(cr4);
    let bits = cr4_bits::PSE | cr4_bits::PGE | cr4_bits::TSD | cr4_bits::DE | cr4_bits::PCE;
    g.cpu.set_gpr(reg::EAX, bits);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EBX), bits);
}

#[test]
fn mov_cr4_rejects_features_cpuid_does_not_report() {
    for bit in [
        cr4_bits::VME,
        cr4_bits::PVI,
        cr4_bits::PAE,
        cr4_bits::MCE,
        cr4_bits::OSFXSR,
        1 << 10,
    ] {
        let mut g = mov_cr_guest(cr4);
        g.cpu.set_gpr(reg::EAX, bit);
        run_real_expect(&mut g, vector::GP);
        assert_eq!(g.cpu.cr4(), 0, "{bit:#x}");
    }
}

#[test]
fn mov_cr2_and_cr3_round_trip() {
    let mut g = mov_cr_guest(cr2);
    g.cpu.set_gpr(reg::EAX, 0xDEAD_BEEF);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EBX), 0xDEAD_BEEF);
    let mut g = mov_cr_guest(cr3);
    g.cpu.set_gpr(reg::EAX, 0x0012_3018);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EBX), 0x0012_3018);
}

#[test]
fn mov_from_cr1_raises_ud() {
    let mut g = Guest::real_mode_with_stubs(1, ORG);
    g.poke(ORG, &[0x0F, 0x20, 0xC8, 0xF4]); // mov eax, cr1; hlt
    run_real_expect(&mut g, vector::UD);
}

#[test]
fn smsw_stores_cr0_low_word_to_r16_and_all_of_cr0_to_r32() {
    let mut g = real(|a| {
        a.smsw(bx).unwrap();
        a.smsw(ecx).unwrap();
        a.smsw(word_ptr(0x800)).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::EBX, 0xAAAA_0000);
    run_real(&mut g);
    let msw = g.cpu.cr0();
    assert_eq!(msw >> 16, (cr0_bits::CD | cr0_bits::NW) >> 16);
    assert_eq!(g.cpu.gpr(reg::EBX), 0xAAAA_0000 | (msw & 0xFFFF));
    assert_eq!(g.cpu.gpr(reg::ECX), msw);
    assert_eq!(g.peek_u32(0x800) & 0xFFFF, msw & 0xFFFF);
}

#[test]
fn lmsw_sets_pe_and_ts_but_cannot_clear_pe() {
    let mut g = real(|a| {
        a.lmsw(ax).unwrap();
        a.hlt().unwrap();
        a.lmsw(bx).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(
        reg::EAX,
        (cr0_bits::PE | cr0_bits::TS | cr0_bits::MP) | 0xFFF0,
    );
    g.cpu.set_gpr(reg::EBX, 0);
    run_real(&mut g);
    assert_eq!(
        g.cpu.cr0() & 0xF,
        cr0_bits::PE | cr0_bits::TS | cr0_bits::MP
    );
    assert_eq!(
        g.cpu.cr0() & cr0_bits::NE,
        0,
        "LMSW touches only the low four bits"
    );
    run_real(&mut g);
    assert_eq!(g.cpu.cr0() & 0xF, cr0_bits::PE);
}

#[test]
fn clts_clears_ts() {
    let mut g = real(|a| {
        a.clts().unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_cr0(g.cpu.cr0() | cr0_bits::TS);
    run_real(&mut g);
    assert_eq!(g.cpu.cr0() & cr0_bits::TS, 0);
}

#[test]
fn invd_and_wbinvd_run_at_cpl0() {
    let mut g = real(|a| {
        a.invd().unwrap();
        a.wbinvd().unwrap();
        a.hlt().unwrap();
    });
    run_real(&mut g);
}

#[test]
fn ud2_raises_ud() {
    let mut g = real(|a| {
        a.ud2().unwrap();
        a.hlt().unwrap();
    });
    run_real_expect(&mut g, vector::UD);
}

// ---- debug registers ----

#[test]
fn dr4_and_dr5_alias_dr6_and_dr7_without_cr4_de() {
    let mut g = real(|a| {
        a.mov(dr5, eax).unwrap();
        a.mov(ebx, dr7).unwrap();
        a.mov(ecx, dr4).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::EAX, 0x0000_0003); // L0 | G0
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EBX), 0x0000_0403, "DR7 bit 10 reads as 1");
    assert_eq!(g.cpu.gpr(reg::ECX), 0xFFFF_0FF0, "DR6 reset value");
}

#[test]
fn dr4_with_cr4_de_raises_ud() {
    let mut g = real(|a| {
        a.mov(eax, dr4).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_cr4(cr4_bits::DE);
    run_real_expect(&mut g, vector::UD);
}

#[test]
fn dr6_reserved_bits_read_as_ones() {
    let mut g = real(|a| {
        a.mov(dr6, eax).unwrap();
        a.mov(ebx, dr6).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::EAX, 0);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EBX), 0xFFFF_0FF0);
}

#[test]
fn debug_register_access_with_dr7_gd_raises_db_and_sets_bd() {
    let mut g = real(|a| {
        a.mov(dr7, eax).unwrap();
        a.mov(ebx, dr0).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::EAX, 1 << 13);
    run_real_expect(&mut g, vector::DB);
    let mut frame = [0u8; 2];
    g.cpu.read_phys_bytes(g.cpu.gpr(reg::ESP), &mut frame);
    assert_eq!(
        u16::from_le_bytes(frame) as u32,
        ORG + 3,
        "a fault on MOV DR"
    );
}

// ---- descriptor-table registers ----

#[test]
fn lgdt_with_16_bit_operand_loads_a_24_bit_base() {
    let mut g = real(|a| {
        a.lgdt(ptr(0x800)).unwrap();
        a.lidt(ptr(0x808)).unwrap();
        a.hlt().unwrap();
    });
    g.poke(0x800, &[0x27, 0x00, 0x00, 0x10, 0x34, 0x12]);
    g.poke(0x808, &[0xFF, 0x03, 0x00, 0x00, 0x00, 0x00]);
    run_real(&mut g);
    assert_eq!(
        g.cpu.gdtr(),
        TableReg {
            base: 0x34_1000,
            limit: 0x27
        }
    );
    assert_eq!(
        g.cpu.idtr(),
        TableReg {
            base: 0,
            limit: 0x3FF
        }
    );
}

#[test]
fn lgdt_with_32_bit_operand_loads_the_whole_base() {
    let mut g = protected(|a| {
        a.lgdt(ptr(0x900)).unwrap();
        a.hlt().unwrap();
    });
    g.poke(0x900, &[0x27, 0x00, 0x00, 0x10, 0x34, 0x12]);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr().base, 0x1234_1000);
}

#[test]
fn sgdt_with_16_bit_operand_stores_a_zero_top_byte() {
    let mut g = real(|a| {
        a.sgdt(ptr(0x800)).unwrap();
        a.sidt(ptr(0x808)).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gdtr(TableReg {
        base: 0xC012_3456,
        limit: 0x1FF,
    });
    g.cpu.set_idtr(TableReg {
        base: 0x89AB_CDEF,
        limit: 0x7FF,
    });
    g.poke(0x800, &[0xEE; 16]);
    run_real(&mut g);
    let mut b = [0u8; 16];
    g.cpu.read_phys_bytes(0x800, &mut b);
    assert_eq!(&b[..8], &[0xFF, 0x01, 0x56, 0x34, 0x12, 0x00, 0xEE, 0xEE]);
    assert_eq!(&b[8..14], &[0xFF, 0x07, 0xEF, 0xCD, 0xAB, 0x00]);
}

#[test]
fn sgdt_with_32_bit_operand_stores_the_whole_base() {
    let mut g = protected(|a| {
        a.sgdt(ptr(0x900)).unwrap();
        a.hlt().unwrap();
    });
    g.run_to_hlt();
    let mut b = [0u8; 6];
    g.cpu.read_phys_bytes(0x900, &mut b);
    let gdtr = g.cpu.gdtr();
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), gdtr.limit);
    assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), gdtr.base);
}

// ---- port I/O ----

#[test]
fn out_writes_every_width_through_imm8_and_dx() {
    let mut g = real(|a| {
        a.out(0x80, al).unwrap();
        a.out(0x82, ax).unwrap();
        a.out(0x84, eax).unwrap();
        a.out(dx, al).unwrap();
        a.out(dx, ax).unwrap();
        a.out(dx, eax).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::EAX, 0x1234_5678);
    g.cpu.set_gpr(reg::EDX, 0x3F8);
    run_real(&mut g);
    assert_eq!(
        g.log.borrow().ports,
        vec![
            (0x80, 0x78),
            (0x82, 0x5678),
            (0x84, 0x1234_5678),
            (0x3F8, 0x78),
            (0x3F8, 0x5678),
            (0x3F8, 0x1234_5678),
        ]
    );
}

#[test]
fn in_reads_into_al_ax_and_eax_only() {
    let mut g = real(|a| {
        a.in_(al, 0x60).unwrap();
        a.hlt().unwrap();
        a.in_(ax, dx).unwrap();
        a.hlt().unwrap();
        a.in_(eax, dx).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::EAX, 0x1234_5600);
    g.cpu.set_gpr(reg::EDX, 0x1F0);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EAX), 0x1234_56FF, "an empty bus floats high");
    g.cpu.set_gpr(reg::EAX, 0x1234_0000);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EAX), 0x1234_FFFF);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EAX), 0xFFFF_FFFF);
}

/// User code at 0x11000: OUT DX, AX then SYSENTER (which halts at CPL 0).
fn user_out_guest() -> Guest {
    let mut g = Guest::protected(4);
    let mut a = CodeAssembler::new(32).unwrap();
    a.out(dx, ax).unwrap();
    a.sysenter().unwrap();
    g.load(0x11000, a);
    g.enter_user(0x11000);
    g.cpu.set_gpr(reg::EAX, 0xBEEF);
    g
}

#[test]
fn cpl3_io_is_allowed_when_the_bitmap_bits_are_clear() {
    let mut g = user_out_guest();
    g.enable_io_bitmap();
    g.deny_port(0x3F7, true);
    g.deny_port(0x3FA, true);
    g.cpu.set_gpr(reg::EDX, 0x3F8);
    g.run_to_hlt();
    assert_eq!(g.cpu.eip(), SYSENTER_HLT + 1);
    assert_eq!(g.log.borrow().ports, vec![(0x3F8, 0xBEEF)]);
}

#[test]
fn cpl3_io_is_allowed_by_iopl_3_whatever_the_bitmap_says() {
    let mut g = user_out_guest();
    g.enable_io_bitmap();
    g.deny_port(0x3F8, true);
    g.cpu.set_eflags(g.cpu.eflags() | 3 << 12);
    g.cpu.set_gpr(reg::EDX, 0x3F8);
    g.run_to_hlt();
    assert_eq!(g.log.borrow().ports, vec![(0x3F8, 0xBEEF)]);
}

#[test]
fn cpl3_io_to_a_denied_port_raises_gp() {
    let mut g = user_out_guest();
    g.enable_io_bitmap();
    g.deny_port(0x3F9, true); // the second byte of a 16-bit access
    g.cpu.set_gpr(reg::EDX, 0x3F8);
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.error_code), (vector::GP, Some(0)));
    assert_eq!(e.eip, 0x11000);
    assert!(g.log.borrow().ports.is_empty());
}

#[test]
fn cpl3_io_without_a_bitmap_raises_gp() {
    let mut g = user_out_guest();
    g.cpu.set_gpr(reg::EDX, 0x80);
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.error_code), (vector::GP, Some(0)));
}

#[test]
fn cpl3_io_beyond_the_tss_limit_raises_gp() {
    let mut g = user_out_guest();
    g.enable_io_bitmap();
    // A TSS whose limit ends the bitmap at port 0x3FF.
    let raw = pm::descriptor(pm::TSS, 0x68 + 0x7F, 0x8B, 0);
    g.cpu
        .set_tr_cache(machine::SegCache::from_descriptor(pm::TSS_SEL, raw));
    g.cpu.set_gpr(reg::EDX, 0x3FF);
    let e = g.run_to_exception();
    assert_eq!(e.vector, vector::GP);
}

// ---- privilege checks at CPL 3 ----

#[test]
fn privileged_instructions_at_cpl3_raise_gp() {
    let builders: [fn(&mut CodeAssembler); 8] = [
        |a| a.mov(cr0, eax).unwrap(),
        |a| a.mov(eax, cr3).unwrap(),
        |a| a.mov(eax, dr7).unwrap(),
        |a| a.wrmsr().unwrap(),
        |a| a.rdmsr().unwrap(),
        |a| a.lgdt(ptr(0x900)).unwrap(),
        |a| a.clts().unwrap(),
        |a| a.hlt().unwrap(),
    ];
    for (n, build) in builders.iter().enumerate() {
        let mut g = Guest::protected(4);
        let mut a = CodeAssembler::new(32).unwrap();
        build(&mut a);
        g.load(0x11000, a);
        g.enter_user(0x11000);
        g.cpu.set_gpr(reg::ECX, msr::SYSENTER_CS);
        let e = g.run_to_exception();
        assert_eq!((e.vector, e.error_code), (vector::GP, Some(0)), "case {n}");
        assert_eq!(e.eip, 0x11000);
    }
}

// ---- SYSENTER / SYSEXIT ----

#[test]
fn sysexit_then_sysenter_round_trip_between_cpl0_and_cpl3() {
    let mut g = protected(|a| {
        a.sysexit().unwrap();
    });
    let mut a = CodeAssembler::new(32).unwrap();
    a.rdtsc().unwrap();
    a.sysenter().unwrap();
    g.load(0x11000, a);
    g.cpu.set_gpr(reg::EDX, 0x11000);
    g.cpu.set_gpr(reg::ECX, 0x7700);
    g.cpu.set_eflags(g.cpu.eflags() | 1 << 9); // IF
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    g.cpu.set_trace(Some(Box::new(move |cpu, _| {
        log.borrow_mut().push((
            cpu.eip(),
            cpu.cpl(),
            cpu.seg(Seg::CS).selector,
            cpu.seg(Seg::SS).selector,
            cpu.gpr(reg::ESP),
        ));
    })));
    g.run_to_hlt();
    let seen = seen.borrow();
    assert_eq!(seen[1], (0x11000, 3, UCODE, UDATA, 0x7700));
    assert_eq!(seen[3], (SYSENTER_HLT, 0, KCODE, KDATA, KSTACK));
    assert_eq!(g.cpu.eflags() & (1 << 9), 0, "SYSENTER clears IF");
    let code = g.cpu.seg(Seg::CS);
    assert_eq!(
        (code.base, code.limit, code.dpl(), code.big()),
        (0, u32::MAX, 0, true)
    );
}

#[test]
fn sysenter_in_real_mode_raises_gp() {
    let mut g = real(|a| {
        a.sysenter().unwrap();
        a.hlt().unwrap();
    });
    g.cpu.write_msr(msr::SYSENTER_CS, 8).unwrap();
    run_real_expect(&mut g, vector::GP);
}

#[test]
fn sysenter_with_a_null_sysenter_cs_raises_gp() {
    let mut g = protected(|a| {
        a.sysenter().unwrap();
    });
    g.cpu.write_msr(msr::SYSENTER_CS, 0).unwrap();
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.error_code), (vector::GP, Some(0)));
}

#[test]
fn sysexit_at_cpl3_raises_gp() {
    let mut g = Guest::protected(4);
    let mut a = CodeAssembler::new(32).unwrap();
    a.sysexit().unwrap();
    g.load(0x11000, a);
    g.enter_user(0x11000);
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.error_code), (vector::GP, Some(0)));
}

// ---- RDTSC ----

fn rdtsc_value(g: &mut Guest) -> u64 {
    g.cpu.set_eip(ORG);
    run_real(g);
    (g.cpu.gpr(reg::EDX) as u64) << 32 | g.cpu.gpr(reg::EAX) as u64
}

#[test]
fn rdtsc_is_strictly_monotonic() {
    let mut g = real(|a| {
        a.rdtsc().unwrap();
        a.hlt().unwrap();
    });
    let mut last = rdtsc_value(&mut g);
    for _ in 0..10 {
        let t = rdtsc_value(&mut g);
        assert!(t > last, "{t} after {last}");
        last = t;
    }
}

#[test]
fn rdtsc_counts_instructions_in_deterministic_mode() {
    let mut g = real(|a| {
        a.rdtsc().unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_tsc_source(TscSource::Instructions {
        ticks_per_instruction: 10,
    });
    g.cpu.set_tsc(1000);
    let t = rdtsc_value(&mut g);
    assert_eq!(t, 1000);
    let t2 = rdtsc_value(&mut g);
    assert_eq!(t2 - t, 10 * 2, "RDTSC and HLT retired in between");
}

#[test]
fn rdtsc_in_straight_line_code_counts_each_retired_instruction() {
    // RDTSC; three NOPs; RDTSC: the second read sees exactly four more
    // instructions, though all of them may run as one decoded block.
    let mut g = real(|a| {
        a.rdtsc().unwrap();
        a.mov(esi, eax).unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
        a.rdtsc().unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_tsc_source(TscSource::Instructions {
        ticks_per_instruction: 1,
    });
    g.cpu.set_tsc(500);
    let t = rdtsc_value(&mut g);
    assert_eq!(g.cpu.gpr(reg::ESI), 500);
    assert_eq!(t, 504);
}

#[test]
fn rdtsc_from_the_host_clock_advances() {
    let mut g = real(|a| {
        a.rdtsc().unwrap();
        a.hlt().unwrap();
    });
    g.cpu
        .set_tsc_source(TscSource::HostClock { hz: 1_000_000_000 });
    let t = rdtsc_value(&mut g);
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert!(rdtsc_value(&mut g) >= t + 1_000_000);
}

#[test]
fn rdtsc_at_cpl3_with_cr4_tsd_raises_gp() {
    let mut g = Guest::protected(4);
    let mut a = CodeAssembler::new(32).unwrap();
    a.rdtsc().unwrap();
    a.sysenter().unwrap();
    g.load(0x11000, a);
    g.enter_user(0x11000);
    g.cpu.set_cr4(cr4_bits::TSD);
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.error_code), (vector::GP, Some(0)));
}

#[test]
fn rdtsc_at_cpl3_without_tsd_is_allowed() {
    let mut g = Guest::protected(4);
    let mut a = CodeAssembler::new(32).unwrap();
    a.rdtsc().unwrap();
    a.sysenter().unwrap();
    g.load(0x11000, a);
    g.enter_user(0x11000);
    g.run_to_hlt();
    assert_eq!(g.cpu.eip(), SYSENTER_HLT + 1);
}

#[test]
fn rdpmc_reads_zero_at_cpl0_and_rejects_counters_above_1() {
    let mut g = real(|a| {
        a.rdpmc().unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_gpr(reg::EAX, 5);
    g.cpu.set_gpr(reg::ECX, 1);
    run_real(&mut g);
    assert_eq!(g.cpu.gpr(reg::EAX), 0);
    g.cpu.set_gpr(reg::ECX, 2);
    g.cpu.set_eip(ORG);
    run_real_expect(&mut g, vector::GP);
}

/// A v86-mode guest at 1100:0000 running OUT DX, AL then HLT (which
/// faults at CPL 3), with IOPL 3 and an I/O bitmap.
fn v86_out_guest(deny: bool) -> Guest {
    let mut g = Guest::protected(4);
    g.poke(0x1_1000, &[0xEE, 0xF4]); // out dx, al; hlt
    g.enable_io_bitmap();
    g.deny_port(0x80, deny);
    g.cpu.set_eflags(g.cpu.eflags() | 1 << 17 | 3 << 12);
    for s in [Seg::DS, Seg::ES, Seg::FS, Seg::GS, Seg::SS] {
        g.cpu.set_seg_cache(s, machine::SegCache::real_mode(0));
    }
    g.cpu
        .set_seg_cache(Seg::CS, machine::SegCache::real_mode(0x1100));
    g.cpu.set_eip(0);
    g.cpu.set_gpr(reg::ESP, 0x7000);
    g.cpu.set_gpr(reg::EDX, 0x80);
    g
}

#[test]
fn v86_io_consults_the_bitmap_even_with_iopl_3() {
    let mut g = v86_out_guest(true);
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.error_code, e.eip), (vector::GP, Some(0), 0));
    assert!(g.log.borrow().ports.is_empty());

    let mut g = v86_out_guest(false);
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.eip), (vector::GP, 1), "the HLT faults");
    assert_eq!(g.log.borrow().ports.len(), 1);
}
