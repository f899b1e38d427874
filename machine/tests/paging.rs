//! Paging as guest programs see it: 4 KiB and 4 MiB pages, protection,
//! accessed and dirty bits, page-fault error codes and CR2, TLB
//! consistency (INVLPG, CR3 loads, global pages), page-crossing accesses,
//! self-modifying code through an alias mapping, and the A20 gate.
//!
//! LGDT and SGDT/SIDT serve as memory probes: LGDT reads six bytes that
//! then show up in GDTR, SIDT writes IDTR's six bytes.

mod common;

use common::Guest;
use common::pm::{self, PD, PDE_PS, PTE_A, PTE_D, PTE_G, PTE_P, PTE_U, PTE_W, SYSENTER_HLT};
use iced_x86::code_asm::*;
use machine::cr0 as cr0_bits;
use machine::cr4 as cr4_bits;
use machine::{Seg, SegCache, TableReg, reg, vector};

/// A flat protected-mode guest with the first 4 MiB identity-mapped and
/// paging on, running `build`'s code at CPL 0.
fn paged(mib: u64, build: impl FnOnce(&mut CodeAssembler)) -> Guest {
    let mut a = CodeAssembler::new(32).unwrap();
    build(&mut a);
    let mut g = Guest::protected(mib);
    g.enable_paging();
    g.load(pm::CODE, a);
    g
}

/// Six bytes an LGDT reads as limit `limit`, base `base`.
fn put_pseudo(g: &mut Guest, phys: u32, limit: u16, base: u32) {
    let mut b = limit.to_le_bytes().to_vec();
    b.extend_from_slice(&base.to_le_bytes());
    g.poke(phys, &b);
}

fn gdtr(limit: u16, base: u32) -> TableReg {
    TableReg { base, limit }
}

/// Continues after a HLT to the next one.
fn resume(g: &mut Guest) {
    g.cpu.wake();
    g.run_to_hlt();
}

fn peek(g: &mut Guest, phys: u32, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    g.cpu.read_phys_bytes(phys, &mut b);
    b
}

// ---- translation ----

#[test]
fn four_kib_page_maps_linear_to_physical() {
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x40_0010)).unwrap();
        a.sidt(ptr(0x40_0100)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x5_0000, PTE_W);
    put_pseudo(&mut g, 0x5_0010, 0x1234, 0xCAFE_F00D);
    g.cpu.set_idtr(gdtr(0x0FFF, 0x1122_3344));
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr(), gdtr(0x1234, 0xCAFE_F00D));
    assert_eq!(
        peek(&mut g, 0x5_0100, 6),
        [0xFF, 0x0F, 0x44, 0x33, 0x22, 0x11]
    );
}

#[test]
fn four_mib_page_maps_with_cr4_pse() {
    let mut g = paged(16, |a| {
        a.lgdt(ptr(0x81_2345)).unwrap();
        a.sidt(ptr(0xBF_FFF0)).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_cr4(cr4_bits::PSE);
    g.set_pde(0x80_0000, 0x40_0000 | PDE_PS | PTE_W | PTE_P);
    put_pseudo(&mut g, 0x41_2345, 0x77, 0x0012_3456);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr(), gdtr(0x77, 0x0012_3456));
    assert_eq!(peek(&mut g, 0x7F_FFF0, 2), g.cpu.idtr().limit.to_le_bytes());
    let pde = g.peek_u32(PD + 2 * 4);
    assert_eq!(pde & (PTE_A | PTE_D), PTE_A | PTE_D);
}

#[test]
fn pde_ps_is_a_page_table_pointer_without_cr4_pse() {
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x80_0010)).unwrap();
        a.hlt().unwrap();
    });
    // The PDE points at a page table at 0x30000 and has PS set.
    g.poke(0x3_0000, &[0; 4096]);
    g.set_pde(0x80_0000, 0x3_0000 | PDE_PS | PTE_W | PTE_P);
    g.poke(0x3_0000, &(0x6_0000 | PTE_P).to_le_bytes());
    put_pseudo(&mut g, 0x6_0010, 0x55, 0x0006_0000);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr(), gdtr(0x55, 0x0006_0000));
}

#[test]
fn reads_set_accessed_and_writes_set_dirty() {
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
        a.sidt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x5_0000, PTE_W);
    let pde_slot = PD + 4;
    let pde = g.peek_u32(pde_slot);
    g.poke(pde_slot, &(pde & !PTE_A).to_le_bytes());
    g.run_to_hlt();
    assert_eq!(g.pte(0x40_0000) & (PTE_A | PTE_D), PTE_A);
    assert_ne!(g.peek_u32(pde_slot) & PTE_A, 0);
    resume(&mut g);
    assert_eq!(g.pte(0x40_0000) & (PTE_A | PTE_D), PTE_A | PTE_D);
    assert_eq!(
        g.peek_u32(pde_slot) & PTE_D,
        0,
        "4 KiB PDEs get no dirty bit"
    );
}

#[test]
fn supervisor_writes_to_read_only_pages_succeed_without_cr0_wp() {
    let mut g = paged(4, |a| {
        a.sidt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x5_0000, 0);
    g.cpu.set_idtr(gdtr(0xABCD, 0));
    g.run_to_hlt();
    assert_eq!(peek(&mut g, 0x5_0000, 2), [0xCD, 0xAB]);
}

#[test]
fn page_crossing_accesses_use_both_mappings() {
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x40_0FFE)).unwrap();
        a.sidt(ptr(0x40_0FFD)).unwrap();
        a.hlt().unwrap();
    });
    // Two linear pages in a row backed by physical pages far apart.
    g.map(0x40_0000, 0x5_0000, PTE_W);
    g.map(0x40_1000, 0x7_0000, PTE_W);
    g.poke(0x5_0FFE, &[0x34, 0x12]);
    g.poke(0x7_0000, &[0x78, 0x56, 0x34, 0x12]);
    g.cpu.set_idtr(gdtr(0x2211, 0x6655_4433));
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr(), gdtr(0x1234, 0x1234_5678));
    assert_eq!(peek(&mut g, 0x5_0FFD, 3), [0x11, 0x22, 0x33]);
    assert_eq!(peek(&mut g, 0x7_0000, 3), [0x44, 0x55, 0x66]);
}

// ---- TLB consistency ----

/// LGDT [0x400000]; HLT, three times, with `between` before the third.
fn tlb_guest(between: impl FnOnce(&mut CodeAssembler)) -> Guest {
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
        a.lgdt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
        between(a);
        a.lgdt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
    });
    put_pseudo(&mut g, 0x5_0000, 0x5555, 0);
    put_pseudo(&mut g, 0x6_0000, 0x6666, 0);
    g
}

/// Runs a `tlb_guest`: the mapping moves from 0x50000 to 0x60000 after the
/// first read. Returns the limits the second and third reads saw.
fn run_tlb_guest(g: &mut Guest, pte_flags: u32) -> (u16, u16) {
    g.map(0x40_0000, 0x5_0000, pte_flags);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr().limit, 0x5555);
    g.map(0x40_0000, 0x6_0000, pte_flags);
    resume(g);
    let second = g.cpu.gdtr().limit;
    resume(g);
    (second, g.cpu.gdtr().limit)
}

#[test]
fn a_changed_pte_is_not_seen_until_invlpg() {
    let mut g = tlb_guest(|a| a.invlpg(ptr(0x40_0000)).unwrap());
    assert_eq!(run_tlb_guest(&mut g, PTE_W), (0x5555, 0x6666));
}

#[test]
fn a_cr3_load_flushes_non_global_translations() {
    let mut g = tlb_guest(|a| a.mov(cr3, eax).unwrap());
    g.cpu.set_gpr(reg::EAX, PD);
    // The G bit means nothing while CR4.PGE is clear.
    assert_eq!(run_tlb_guest(&mut g, PTE_W | PTE_G), (0x5555, 0x6666));
}

#[test]
fn global_pages_survive_a_cr3_load_with_cr4_pge() {
    let mut g = tlb_guest(|a| a.mov(cr3, eax).unwrap());
    g.cpu.set_gpr(reg::EAX, PD);
    g.cpu.set_cr4(cr4_bits::PGE);
    assert_eq!(run_tlb_guest(&mut g, PTE_W | PTE_G), (0x5555, 0x5555));
}

#[test]
fn invlpg_drops_global_pages() {
    let mut g = tlb_guest(|a| {
        a.mov(cr3, eax).unwrap();
        a.invlpg(ptr(0x40_0000)).unwrap();
    });
    g.cpu.set_gpr(reg::EAX, PD);
    g.cpu.set_cr4(cr4_bits::PGE);
    assert_eq!(run_tlb_guest(&mut g, PTE_W | PTE_G), (0x5555, 0x6666));
}

#[test]
fn clearing_cr4_pge_flushes_global_pages() {
    let mut g = tlb_guest(|a| a.mov(cr4, ebx).unwrap());
    g.cpu.set_gpr(reg::EBX, 0);
    g.cpu.set_cr4(cr4_bits::PGE);
    assert_eq!(run_tlb_guest(&mut g, PTE_W | PTE_G), (0x5555, 0x6666));
}

#[test]
fn invlpg_anywhere_in_a_4mib_page_drops_all_of_it() {
    let mut g = paged(16, |a| {
        a.lgdt(ptr(0x80_0000)).unwrap();
        a.lgdt(ptr(0xBF_F000)).unwrap();
        a.hlt().unwrap();
        a.invlpg(ptr(0x80_0000)).unwrap();
        a.lgdt(ptr(0xBF_F000)).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_cr4(cr4_bits::PSE);
    g.set_pde(0x80_0000, 0x40_0000 | PDE_PS | PTE_W | PTE_P);
    put_pseudo(&mut g, 0x7F_F000, 0x4444, 0);
    put_pseudo(&mut g, 0xBF_F000, 0xCCCC, 0);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr().limit, 0x4444);
    g.set_pde(0x80_0000, 0x80_0000 | PDE_PS | PTE_W | PTE_P);
    resume(&mut g);
    assert_eq!(g.cpu.gdtr().limit, 0xCCCC);
}

// ---- self-modifying code ----

/// `sidt [target]; out 0xE9, al; hlt` with the SIDT aimed at the OUT: an
/// IDTR of limit 0xE8E6 and base F4F4F4F4 rewrites it to `out 0xE8, al;
/// hlt...`.
fn smc_code(target: u32) -> Vec<u8> {
    let mut b = vec![0x0F, 0x01, 0x0D];
    b.extend_from_slice(&target.to_le_bytes());
    b.extend_from_slice(&[0xE6, 0xE9, 0xF4]);
    b
}

#[test]
fn a_write_through_an_alias_mapping_invalidates_cached_code() {
    let mut g = paged(4, |a| a.hlt().unwrap());
    // 0x400000 is a second mapping of the code page.
    g.map(0x40_0000, pm::CODE, PTE_W);
    g.poke(pm::CODE, &smc_code(0x40_0007));
    g.cpu.set_idtr(gdtr(0xE8E6, 0xF4F4_F4F4));
    g.run_to_hlt();
    assert_eq!(g.log.borrow().ports, vec![(0xE8, 0)]);
}

/// A loop whose first block (on the code page) runs `modify` and jumps to
/// a second block on another page that adds its `mov eax, imm32`
/// immediate (at 0x40_1001 linear) into EBX, 1000 times: a block linked to
/// its successor must not run a stale copy of it.
fn linked_successor_guest(modify: impl FnOnce(&mut CodeAssembler)) -> Guest {
    let mut g = paged(4, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 1000).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        modify(a);
        a.mov(edx, 0x40_1000).unwrap();
        a.jmp(edx).unwrap();
    });
    g.map(0x40_1000, 0x1_1000, PTE_W);
    let mut b = CodeAssembler::new(32).unwrap();
    b.mov(eax, 1).unwrap();
    b.add(ebx, eax).unwrap();
    b.dec(ecx).unwrap();
    b.jz(0x40_1000 + 0x20).unwrap();
    b.mov(edx, pm::CODE + 7).unwrap();
    b.jmp(edx).unwrap();
    let mut bytes = b.assemble(0x40_1000).unwrap();
    bytes.resize(0x20, 0x90);
    bytes.push(0xF4);
    g.poke(0x1_1000, &bytes);
    g
}

#[test]
fn a_linked_successor_rewritten_every_iteration_runs_its_new_code() {
    // Each pass increments the immediate, then adds it: 2 + 3 + ... + 1001.
    let mut g = linked_successor_guest(|a| a.inc(dword_ptr(0x40_1001)).unwrap());
    g.run(100_000);
    assert!(g.cpu.is_halted(), "eip {:#x}", g.cpu.eip());
    assert_eq!(g.cpu.gpr(reg::EBX), 501_500);
}

/// A block that rewrites the immediate of its own next instruction, 1000
/// times within one `run`: the running block leaves the cache midway
/// (and must stay alive until the run ends), and the new immediate runs.
#[test]
fn a_block_rewriting_its_own_next_instruction_runs_the_new_one() {
    // mov ecx, imm32 (5) + xor ebx, ebx (2) + mov [disp32], ecx (6): the
    // `mov eax, imm32` starts 13 bytes in, its immediate one byte later.
    let imm = pm::CODE + 14;
    let mut g = paged(4, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 1000).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(dword_ptr(imm), ecx).unwrap();
        a.mov(eax, 0x1234_5678).unwrap();
        a.add(ebx, eax).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    assert_eq!(g.peek_u32(imm), 0x1234_5678, "the layout the test assumes");
    g.run(100_000);
    assert!(g.cpu.is_halted(), "eip {:#x}", g.cpu.eip());
    // Each pass adds the count it just wrote: 1000 + 999 + ... + 1.
    assert_eq!(g.cpu.gpr(reg::EBX), 500_500);
}

#[test]
fn a_linked_successor_remapped_with_invlpg_runs_the_new_page() {
    // Each pass maps 0x40_1000 to the other of two copies of the block
    // (immediates 1 and 3) by flipping PTE bit 13, then INVLPG: 1000
    // passes alternate 3, 1, 3, ... = 2000.
    // The page table `map` made for 0x40_0000, entry 1.
    let pte = PD + 0x2000 + 4;
    let mut g = linked_successor_guest(|a| {
        a.xor(dword_ptr(pte), 0x2000).unwrap();
        a.invlpg(ptr(0x40_1000)).unwrap();
    });
    let mut copy = [0u8; 0x21];
    g.cpu.read_phys_bytes(0x1_1000, &mut copy);
    copy[1] = 3;
    g.poke(0x1_3000, &copy);
    g.run(100_000);
    assert!(g.cpu.is_halted(), "eip {:#x}", g.cpu.eip());
    assert_eq!(g.cpu.gpr(reg::EBX), 2000);
}

#[test]
fn a_writable_alias_cached_before_the_code_loses_direct_writes() {
    // Stage 1 writes through the alias while its page holds no code, so
    // the alias gets a direct-write TLB entry; stage 2 runs code from that
    // page and modifies itself through the alias.
    let mut g = paged(4, |a| {
        a.sidt(ptr(0x40_0800)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x1_1000, PTE_W);
    g.poke(0x1_1000, &smc_code(0x40_0007));
    g.cpu.set_idtr(gdtr(0xE8E6, 0xF4F4_F4F4));
    g.run_to_hlt();
    g.cpu.wake();
    g.cpu.set_eip(0x1_1000);
    g.run_to_hlt();
    assert_eq!(g.log.borrow().ports, vec![(0xE8, 0)]);
}

// ---- A20 ----

#[test]
fn a20_gate_wraps_real_mode_addresses_at_1mib() {
    let mut g = Guest::real_mode(2, 0x1000);
    let mut a = CodeAssembler::new(16).unwrap();
    a.lgdt(ptr(0x810)).unwrap();
    a.hlt().unwrap();
    g.load(0x1000, a);
    g.cpu.set_seg_cache(Seg::DS, SegCache::real_mode(0xFFFF));
    put_pseudo(&mut g, 0x10_0800, 0x1111, 0);
    put_pseudo(&mut g, 0x800, 0x2222, 0);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr().limit, 0x1111);
    g.cpu.signals().set_a20(false);
    g.cpu.wake();
    g.cpu.set_eip(0x1000);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr().limit, 0x2222);
    g.cpu.signals().set_a20(true);
    g.cpu.wake();
    g.cpu.set_eip(0x1000);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr().limit, 0x1111);
}

#[test]
fn a20_gate_masks_physical_addresses_after_paging() {
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x15_0000, PTE_W);
    put_pseudo(&mut g, 0x15_0000, 0x1515, 0);
    put_pseudo(&mut g, 0x05_0000, 0x0505, 0);
    g.cpu.signals().set_a20(false);
    g.run_to_hlt();
    assert_eq!(g.cpu.gdtr().limit, 0x0505);
}

// ---- page faults ----

/// User code at 0x11000 running `build`'s code, then SYSENTER (which
/// halts at CPL 0).
fn user_paged(build: impl FnOnce(&mut CodeAssembler)) -> Guest {
    let mut g = paged(4, |_| {});
    let mut a = CodeAssembler::new(32).unwrap();
    build(&mut a);
    a.sysenter().unwrap();
    g.load(0x1_1000, a);
    g.enter_user(0x1_1000);
    g
}

/// Expects a #PF with `code` for `lin` raised by the instruction at `eip`.
fn expect_pf(g: &mut Guest, code: u32, lin: u32, eip: u32) {
    let e = g.run_to_exception();
    assert_eq!((e.vector, e.error_code), (vector::PF, Some(code)));
    assert_eq!(g.cpu.cr2(), lin);
    assert_eq!(e.eip, eip);
}

#[test]
fn a_read_of_a_not_present_page_faults_with_code_0() {
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x40_0123)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x5_0000, PTE_W);
    g.set_pte(0x40_0000, 0x5_0000);
    expect_pf(&mut g, 0, 0x40_0123, pm::CODE);
}

#[test]
fn a_write_to_a_not_present_directory_entry_faults_with_code_2() {
    let mut g = paged(4, |a| {
        a.sidt(ptr(0xC000_0010u64)).unwrap();
        a.hlt().unwrap();
    });
    expect_pf(&mut g, 2, 0xC000_0010, pm::CODE);
}

#[test]
fn a_user_write_to_a_read_only_page_faults_with_code_7() {
    let mut g = user_paged(|a| a.sgdt(ptr(0x40_0000)).unwrap());
    g.map(0x40_0000, 0x5_0000, PTE_U);
    expect_pf(&mut g, 7, 0x40_0000, 0x1_1000);
}

#[test]
fn a_user_write_to_a_supervisor_page_faults_with_code_7() {
    let mut g = user_paged(|a| a.sgdt(ptr(0x40_0000)).unwrap());
    g.map(0x40_0000, 0x5_0000, PTE_W);
    expect_pf(&mut g, 7, 0x40_0000, 0x1_1000);
}

#[test]
fn a_user_page_under_a_supervisor_directory_entry_is_supervisor() {
    let mut g = user_paged(|a| a.sgdt(ptr(0x40_0000)).unwrap());
    g.map(0x40_0000, 0x5_0000, PTE_W | PTE_U);
    let pde = g.peek_u32(PD + 4);
    g.set_pde(0x40_0000, pde & !PTE_U);
    expect_pf(&mut g, 7, 0x40_0000, 0x1_1000);
}

#[test]
fn user_writes_to_a_user_writable_page_succeed() {
    let mut g = user_paged(|a| a.sgdt(ptr(0x40_0000)).unwrap());
    g.map(0x40_0000, 0x5_0000, PTE_W | PTE_U);
    g.run_to_hlt();
    assert_eq!(g.cpu.eip(), SYSENTER_HLT + 1);
    assert_eq!(g.pte(0x40_0000) & PTE_D, PTE_D);
}

#[test]
fn a_user_fetch_from_a_supervisor_page_faults_with_code_5() {
    let mut g = user_paged(|_| {});
    // Make the user code's own page supervisor-only.
    g.map(0x1_1000, 0x1_1000, PTE_W);
    expect_pf(&mut g, 5, 0x1_1000, 0x1_1000);
}

#[test]
fn a_supervisor_write_to_a_read_only_page_faults_with_cr0_wp() {
    let mut g = paged(4, |a| {
        a.sidt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x5_0000, PTE_U);
    g.cpu.set_cr0(g.cpu.cr0() | cr0_bits::WP);
    expect_pf(&mut g, 3, 0x40_0000, pm::CODE);
    assert_eq!(g.pte(0x40_0000) & PTE_D, 0);
}

#[test]
fn a_reserved_bit_in_a_4mib_pde_faults_with_rsvd() {
    let mut g = paged(16, |a| {
        a.sidt(ptr(0x80_0000)).unwrap();
        a.hlt().unwrap();
    });
    g.cpu.set_cr4(cr4_bits::PSE);
    g.set_pde(0x80_0000, 0x40_0000 | 1 << 13 | PDE_PS | PTE_W | PTE_P);
    expect_pf(&mut g, 8 | 2 | 1, 0x80_0000, pm::CODE);
}

#[test]
fn a_page_crossing_write_faulting_on_the_second_page_writes_nothing() {
    let mut g = paged(4, |a| {
        a.sidt(ptr(0x40_0FFE)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x5_0000, PTE_W);
    g.poke(0x5_0FFE, &[0xEE, 0xEE]);
    expect_pf(&mut g, 2, 0x40_1000, pm::CODE);
    assert_eq!(peek(&mut g, 0x5_0FFE, 2), [0xEE, 0xEE]);
}

#[test]
fn a_fault_leaves_the_stale_translation_behind_and_invlpg_retries_cleanly() {
    // Linux's lazy TLB pattern: a page is made present after a fault and
    // the faulting access is retried.
    let mut g = paged(4, |a| {
        a.lgdt(ptr(0x40_0000)).unwrap();
        a.hlt().unwrap();
    });
    g.map(0x40_0000, 0x5_0000, PTE_W);
    g.set_pte(0x40_0000, 0);
    expect_pf(&mut g, 0, 0x40_0000, pm::CODE);
    g.map(0x40_0000, 0x5_0000, PTE_W);
    put_pseudo(&mut g, 0x5_0000, 0x4242, 0);
    g.cpu.wake();
    g.cpu.set_eip(pm::CODE);
    g.run_to_hlt();
    assert_eq!(
        g.cpu.gdtr().limit,
        0x4242,
        "not-present entries are not cached"
    );
}

#[test]
fn a_write_into_the_next_instruction_of_the_running_block_takes_effect() {
    let mut g = paged(4, |a| a.hlt().unwrap());
    g.poke(pm::CODE, &smc_code(pm::CODE + 7));
    g.cpu.set_idtr(gdtr(0xE8E6, 0xF4F4_F4F4));
    g.run_to_hlt();
    assert_eq!(g.log.borrow().ports, vec![(0xE8, 0)]);
}

#[test]
fn an_instruction_fetch_crossing_into_a_not_present_page_faults_on_the_second_page() {
    let mut g = paged(4, |_| {});
    g.map(0x40_0000, 0x5_0000, PTE_W);
    // SIDT [abs32] is 7 bytes: four on the first page, three on the missing one.
    g.poke(0x5_0FFC, &smc_code(0x40_0800)[..4]);
    g.cpu.set_eip(0x40_0FFC);
    expect_pf(&mut g, 0, 0x40_1000, 0x40_0FFC);
}

#[test]
fn a_supervisor_translation_in_the_tlb_does_not_grant_user_access() {
    let mut g = paged(4, |a| {
        a.sidt(ptr(0x40_0000)).unwrap();
        a.sysexit().unwrap();
    });
    let mut a = CodeAssembler::new(32).unwrap();
    a.sgdt(ptr(0x40_0000)).unwrap();
    a.sysenter().unwrap();
    g.load(0x1_1000, a);
    g.map(0x40_0000, 0x5_0000, PTE_W);
    g.cpu.set_gpr(reg::EDX, 0x1_1000);
    g.cpu.set_gpr(reg::ECX, pm::USTACK);
    expect_pf(&mut g, 7, 0x40_0000, 0x1_1000);
}
