//! Protected-mode conformance: descriptor checks, IDT delivery with
//! privilege changes, call gates, task switches and virtual-8086 mode
//! (Intel SDM vol. 3, chapters 5-7), driven by guest programs over a
//! GDT, IDT and TSSs built in guest memory.

mod common;

use common::Guest;
use iced_x86::IcedError;
use iced_x86::code_asm::*;
use machine::{Cpu, PhysMemory, RunExit, Seg, SegCache, ShutdownReason, TableReg, cr0, reg};

// ---- memory map ----
const GDT: u32 = 0x1000;
const IDT: u32 = 0x2000;
const TSS_A: u32 = 0x3000;
const TSS_B: u32 = 0x3100;
const TSS_16: u32 = 0x3200;
const LDT: u32 = 0x3400;
/// Kernel stack the tests start on.
const KSTACK: u32 = 0x6000;
/// Ring 1 and ring 0 stacks in task A's TSS.
const STACK1: u32 = 0x7000;
const STACK0: u32 = 0x8000;
/// Ring 3 stack.
const USTACK: u32 = 0xA000;
/// Task B's stack.
const BSTACK: u32 = 0xB000;
/// Where the kernel entry code runs (CPL 0).
const KCODE: u32 = 0x10000;
/// User code (CPL 3).
const UCODE: u32 = 0x11000;
/// Interrupt handlers, call-gate targets and other kernel code.
const HCODE: u32 = 0x12000;
/// Task B's code.
const BCODE: u32 = 0x13000;
/// Default handlers: vector v at DEFAULT + 16·v, each a HLT.
const DEFAULT: u32 = 0x20000;

// ---- selectors ----
const K_CODE: u16 = 0x08;
const K_DATA: u16 = 0x10;
const U_CODE: u16 = 0x1B;
const U_DATA: u16 = 0x23;
const TSS_A_SEL: u16 = 0x28;
const TSS_B_SEL: u16 = 0x30;
const CONF_CODE: u16 = 0x38;
const CALL_GATE: u16 = 0x40;
const NP_DATA: u16 = 0x50;
const LDT_SEL: u16 = 0x58;
const TASK_GATE: u16 = 0x60;
const TSS_16_SEL: u16 = 0x68;
const RO_DATA: u16 = 0x70;
const R1_CODE: u16 = 0x81;
const R1_DATA: u16 = 0x89;
const CALL_GATE16: u16 = 0x90;
const CONF_GATE: u16 = 0x98;
/// In the LDT: a DPL 3 data segment.
const LDT_DATA: u16 = 0x07;

const IF: u32 = 1 << 9;
const NT: u32 = 1 << 14;
const VM: u32 = 1 << 17;
const IOPL3: u32 = 3 << 12;
const ZF: u32 = 1 << 6;

/// A code or data descriptor: `access` is byte 5, `flags` the G/D nibble.
fn seg(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit & 0xFFFF) as u64
        | ((base & 0xFF_FFFF) as u64) << 16
        | (access as u64) << 40
        | (((limit >> 16) & 0xF) as u64) << 48
        | ((flags & 0xF) as u64) << 52
        | ((base >> 24) as u64) << 56
}

fn flat(access: u8) -> u64 {
    seg(0, 0xF_FFFF, access, 0xC)
}

/// A gate descriptor of system type `ty`.
fn gate(sel: u16, off: u32, ty: u8, dpl: u8, params: u8) -> u64 {
    (off & 0xFFFF) as u64
        | (sel as u64) << 16
        | (params as u64) << 32
        | ((0x80 | dpl << 5 | ty) as u64) << 40
        | ((off >> 16) as u64) << 48
}

const INT32: u8 = 0xE;
const TRAP32: u8 = 0xF;
const TASK: u8 = 0x5;
const CALL32: u8 = 0xC;
const CALL16: u8 = 0x4;

fn asm(bits: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> CodeAssembler {
    let mut a = CodeAssembler::new(bits).expect("assembler");
    f(&mut a).expect("assemble");
    a
}

struct Pm {
    g: Guest,
}

impl Pm {
    /// Protected mode at CPL 0 with flat 32-bit segments, a GDT, an IDT
    /// whose vectors 0-31 are interrupt gates to a HLT each, TSS A with
    /// ring 0 and ring 1 stacks and task B ready to run. EAX holds TSS A's
    /// selector so the entry code can start with LTR AX.
    fn new() -> Pm {
        Pm::with_cpu(Guest::new(2))
    }

    fn with_cpu(g: Guest) -> Pm {
        let entries: &[(u16, u64)] = &[
            (K_CODE, flat(0x9A)),
            (K_DATA, flat(0x92)),
            (U_CODE, flat(0xFA)),
            (U_DATA, flat(0xF2)),
            (TSS_A_SEL, seg(TSS_A, 0x67, 0x89, 0)),
            (TSS_B_SEL, seg(TSS_B, 0x67, 0x89, 0)),
            (CONF_CODE, flat(0x9E)),
            (CALL_GATE, gate(K_CODE, HCODE, CALL32, 3, 2)),
            (0x48, seg(0, 0xFFFF, 0x9A, 0)),
            (NP_DATA, flat(0x12)),
            (LDT_SEL, seg(LDT, 0x1F, 0x82, 0)),
            (TASK_GATE, gate(TSS_B_SEL, 0, TASK, 3, 0)),
            (TSS_16_SEL, seg(TSS_16, 0x2B, 0x81, 0)),
            (RO_DATA, flat(0x90)),
            (0x78, seg(0, 0xFFFF, 0x92, 0)),
            (R1_CODE, flat(0xBA)),
            (R1_DATA, flat(0xB2)),
            (CALL_GATE16, gate(R1_CODE, 0xC000, CALL16, 3, 2)),
            (CONF_GATE, gate(CONF_CODE, HCODE, CALL32, 3, 0)),
        ];
        let mut pm = Pm { g };
        for &(sel, d) in entries {
            pm.poke_u64(GDT + (sel & !7) as u32, d);
        }
        pm.poke_u64(LDT, flat(0xF2));
        for v in 0..32u32 {
            pm.set_gate(v as u8, gate(K_CODE, DEFAULT + 16 * v, INT32, 0, 0));
        }
        pm.g.poke(DEFAULT, &[0xF4; 0x1000]);
        // TSS A: ring 0 and ring 1 stacks.
        pm.poke_u32(TSS_A + 4, STACK0);
        pm.poke_u32(TSS_A + 8, K_DATA as u32);
        pm.poke_u32(TSS_A + 12, STACK1);
        pm.poke_u32(TSS_A + 16, R1_DATA as u32);
        // TSS B: a flat CPL 0 task at BCODE.
        pm.poke_u32(TSS_B + 0x20, BCODE);
        pm.poke_u32(TSS_B + 0x24, 0x2);
        pm.poke_u32(TSS_B + 0x28, 0xB0B0);
        pm.poke_u32(TSS_B + 0x38, BSTACK);
        for (i, s) in [K_DATA, K_CODE, K_DATA, K_DATA, K_DATA, K_DATA]
            .into_iter()
            .enumerate()
        {
            pm.poke_u32(TSS_B + 0x48 + 4 * i as u32, s as u32);
        }

        let cpu = &mut pm.g.cpu;
        cpu.set_gdtr(TableReg {
            base: GDT,
            limit: 0xFF,
        });
        cpu.set_idtr(TableReg {
            base: IDT,
            limit: 0x7FF,
        });
        cpu.set_cr0(cpu.cr0() | cr0::PE);
        cpu.set_seg_cache(Seg::CS, SegCache::from_descriptor(K_CODE, flat(0x9B)));
        for s in [Seg::SS, Seg::DS, Seg::ES, Seg::FS, Seg::GS] {
            cpu.set_seg_cache(s, SegCache::from_descriptor(K_DATA, flat(0x93)));
        }
        cpu.set_cpl(0);
        cpu.set_eflags(0x2);
        cpu.set_gpr(reg::ESP, KSTACK);
        cpu.set_gpr(reg::EAX, TSS_A_SEL as u32);
        cpu.set_eip(KCODE);
        pm
    }

    fn poke_u32(&mut self, a: u32, v: u32) {
        self.g.poke(a, &v.to_le_bytes());
    }
    fn poke_u16(&mut self, a: u32, v: u16) {
        self.g.poke(a, &v.to_le_bytes());
    }
    fn poke_u64(&mut self, a: u32, v: u64) {
        self.g.poke(a, &v.to_le_bytes());
    }
    fn peek(&mut self, a: u32) -> u32 {
        self.g.peek_u32(a)
    }
    fn peek_u16(&mut self, a: u32) -> u16 {
        self.g.peek_u32(a) as u16
    }
    fn set_gate(&mut self, v: u8, d: u64) {
        self.poke_u64(IDT + 8 * v as u32, d);
    }
    fn load(&mut self, org: u32, a: CodeAssembler) {
        self.g.load(org, a);
    }
    /// Kernel entry: LTR AX, then IRETD to user code at `eip` with
    /// `eflags` on the ring 3 stack (ESP = `esp`).
    fn enter_user(&mut self, eip: u32, eflags: u32, user_esp: u32) {
        self.load(
            KCODE,
            asm(32, |a| {
                a.ltr(eax)?;
                a.iretd()
            }),
        );
        let frame = KSTACK - 20;
        for (i, v) in [eip, U_CODE as u32, eflags, user_esp, U_DATA as u32]
            .into_iter()
            .enumerate()
        {
            self.poke_u32(frame + 4 * i as u32, v);
        }
        self.g.cpu.set_gpr(reg::ESP, frame);
    }
    /// Runs exactly `n` instructions.
    fn step(&mut self, n: u64) {
        assert_eq!(self.g.cpu.run(n), RunExit::BudgetExhausted);
    }
    fn run(&mut self) -> RunExit {
        self.g.run(10_000)
    }
    /// The default handler the CPU halted in.
    fn halted_in(&self) -> Option<u8> {
        let eip = self.g.cpu.eip();
        (self.g.cpu.is_halted() && (DEFAULT..DEFAULT + 0x1000).contains(&eip))
            .then(|| ((eip - 1 - DEFAULT) / 16) as u8)
    }
    fn esp(&self) -> u32 {
        self.g.cpu.gpr(reg::ESP)
    }
    /// The dwords at SS:ESP (flat stacks only).
    fn stack(&mut self, n: u32) -> Vec<u32> {
        let base = self.g.cpu.seg(Seg::SS).base.wrapping_add(self.esp());
        (0..n).map(|i| self.peek(base + 4 * i)).collect()
    }
    fn sel(&self, s: Seg) -> u16 {
        self.g.cpu.seg(s).selector
    }
    fn gdt_access(&mut self, sel: u16) -> u8 {
        (self.peek(GDT + (sel & !7) as u32 + 4) >> 8) as u8
    }
}

// ---- interrupts and exceptions ----

#[test]
fn int_from_ring3_switches_to_the_tss_stack_and_iret_returns() {
    let mut pm = Pm::new();
    pm.set_gate(0x80, gate(K_CODE, HCODE, INT32, 3, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(
        UCODE,
        asm(32, |a| {
            a.int(0x80)?;
            a.hlt()
        }),
    );
    pm.load(HCODE, asm(32, |a| a.iretd()));
    pm.step(3);

    assert_eq!(pm.g.cpu.eip(), HCODE);
    assert_eq!(pm.g.cpu.cpl(), 0);
    assert_eq!(pm.sel(Seg::SS), K_DATA);
    assert_eq!(pm.esp(), STACK0 - 20);
    assert_eq!(pm.g.cpu.eflags() & IF, 0, "interrupt gate clears IF");
    assert_eq!(
        pm.stack(5),
        [UCODE + 2, U_CODE as u32, 0x202, USTACK, U_DATA as u32]
    );
    // IRET to ring 3, then HLT at CPL 3 raises #GP(0).
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(
        pm.stack(6),
        [0, UCODE + 2, U_CODE as u32, 0x202, USTACK, U_DATA as u32]
    );
    // The IRET to ring 3 nulled the DPL 0 data segments.
    assert_eq!(pm.sel(Seg::DS), 0);
    assert_eq!(pm.sel(Seg::ES), 0);
}

#[test]
fn trap_gate_keeps_if() {
    let mut pm = Pm::new();
    pm.set_gate(0x81, gate(K_CODE, HCODE, TRAP32, 3, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.int(0x81)));
    pm.step(3);
    assert_eq!(pm.g.cpu.eip(), HCODE);
    assert_ne!(pm.g.cpu.eflags() & IF, 0);
}

#[test]
fn int_through_a_dpl0_gate_from_ring3_is_gp_with_the_idt_error_code() {
    let mut pm = Pm::new();
    pm.set_gate(0x30, gate(K_CODE, HCODE, INT32, 0, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.int(0x30)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.esp(), STACK0 - 24);
    assert_eq!(pm.stack(2), [0x30 * 8 + 2, UCODE]);
}

#[test]
fn not_present_gate_is_np_and_idt_limit_is_gp() {
    let mut pm = Pm::new();
    pm.set_gate(0x31, gate(K_CODE, HCODE, INT32, 0, 0) & !(0x80 << 40));
    pm.load(KCODE, asm(32, |a| a.int(0x31)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(11));
    assert_eq!(pm.stack(2), [0x31 * 8 + 2, KCODE]);

    let mut pm = Pm::new();
    pm.g.cpu.set_idtr(TableReg {
        base: IDT,
        limit: 0x40 * 8 - 1,
    });
    pm.load(KCODE, asm(32, |a| a.int(0x40)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(1), [0x40 * 8 + 2]);
}

#[test]
fn fault_while_delivering_an_exception_sets_ext() {
    let mut pm = Pm::new();
    pm.set_gate(6, gate(K_CODE, HCODE, INT32, 0, 0) & !(0x80 << 40));
    pm.load(KCODE, asm(32, |a| a.ud2()));
    pm.run();
    assert_eq!(pm.halted_in(), Some(11));
    assert_eq!(pm.stack(2), [6 * 8 + 2 + 1, KCODE]);
}

#[test]
fn not_present_gp_handler_becomes_a_double_fault() {
    let mut pm = Pm::new();
    pm.set_gate(13, 0);
    pm.g.cpu.set_gpr(reg::EBX, K_DATA as u32);
    // LTR of a data segment: #GP(sel), whose gate is missing.
    pm.load(KCODE, asm(32, |a| a.ltr(ebx)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(8));
    assert_eq!(pm.stack(2), [0, KCODE]);
}

#[test]
fn fault_while_delivering_a_double_fault_shuts_down() {
    let mut pm = Pm::new();
    pm.set_gate(13, 0);
    pm.set_gate(8, 0);
    pm.g.cpu.set_gpr(reg::EBX, K_DATA as u32);
    pm.load(KCODE, asm(32, |a| a.ltr(ebx)));
    assert_eq!(pm.run(), RunExit::Shutdown(ShutdownReason::TripleFault));
}

#[test]
fn gate_to_conforming_code_stays_at_the_current_privilege() {
    let mut pm = Pm::new();
    pm.set_gate(0x82, gate(CONF_CODE, HCODE, INT32, 3, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.int(0x82)));
    pm.step(3);
    assert_eq!(pm.g.cpu.eip(), HCODE);
    assert_eq!(pm.g.cpu.cpl(), 3);
    assert_eq!(pm.sel(Seg::CS), CONF_CODE | 3);
    assert_eq!(pm.sel(Seg::SS), U_DATA);
    assert_eq!(pm.stack(3), [UCODE + 2, U_CODE as u32, 0x202]);
}

// ---- far transfers ----

#[test]
fn far_call_to_conforming_code_and_retf_back() {
    let mut pm = Pm::new();
    pm.load(
        KCODE,
        asm(32, |a| {
            a.call_far(CONF_CODE, HCODE)?;
            a.hlt()
        }),
    );
    pm.load(HCODE, asm(32, |a| a.retf()));
    pm.step(1);
    assert_eq!(pm.sel(Seg::CS), CONF_CODE);
    assert_eq!(pm.stack(2), [KCODE + 7, K_CODE as u32]);
    assert_eq!(pm.run(), RunExit::HaltedInterruptsDisabled);
    assert_eq!(pm.g.cpu.eip(), KCODE + 8);
    assert_eq!(pm.sel(Seg::CS), K_CODE);
    assert_eq!(pm.esp(), KSTACK);
}

#[test]
fn far_jmp_to_more_privileged_code_is_gp_with_the_selector() {
    let mut pm = Pm::new();
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.jmp_far(K_CODE, HCODE)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(2), [K_CODE as u32, UCODE]);
}

#[test]
fn call_gate_copies_parameters_to_the_inner_stack_and_retf_returns() {
    let mut pm = Pm::new();
    pm.poke_u32(USTACK - 8, 0x1111_1111);
    pm.poke_u32(USTACK - 4, 0x2222_2222);
    pm.enter_user(UCODE, 0x202, USTACK - 8);
    pm.load(
        UCODE,
        asm(32, |a| {
            a.call_far(CALL_GATE | 3, 0)?;
            a.hlt()
        }),
    );
    pm.load(HCODE, asm(32, |a| a.retf_1(8)));
    pm.step(3);
    assert_eq!(pm.g.cpu.eip(), HCODE);
    assert_eq!(pm.g.cpu.cpl(), 0);
    assert_eq!(pm.sel(Seg::CS), K_CODE);
    assert_eq!(pm.sel(Seg::SS), K_DATA);
    assert_eq!(
        pm.stack(6),
        [
            UCODE + 7,
            U_CODE as u32,
            0x1111_1111,
            0x2222_2222,
            USTACK - 8,
            U_DATA as u32
        ]
    );
    pm.step(1);
    assert_eq!(pm.g.cpu.eip(), UCODE + 7);
    assert_eq!(pm.g.cpu.cpl(), 3);
    assert_eq!(pm.sel(Seg::SS), U_DATA);
    assert_eq!(pm.esp(), USTACK);
}

#[test]
fn sixteen_bit_call_gate_to_ring1_uses_the_ring1_stack() {
    let mut pm = Pm::new();
    let ucode = 0xD000;
    pm.poke_u16(USTACK - 4, 0x1111);
    pm.poke_u16(USTACK - 2, 0x2222);
    pm.enter_user(ucode, 0x202, USTACK - 4);
    pm.load(
        ucode,
        asm(32, |a| {
            a.call_far(CALL_GATE16 | 3, 0)?;
            a.hlt()
        }),
    );
    // O16 RETF 4.
    pm.g.poke(0xC000, &[0x66, 0xCA, 0x04, 0x00]);
    pm.step(3);
    assert_eq!(pm.g.cpu.eip(), 0xC000);
    assert_eq!(pm.g.cpu.cpl(), 1);
    assert_eq!(pm.sel(Seg::SS), R1_DATA);
    assert_eq!(pm.esp(), STACK1 - 12);
    let words: Vec<u16> = (0..6).map(|i| pm.peek_u16(STACK1 - 12 + 2 * i)).collect();
    assert_eq!(
        words,
        [
            ucode as u16 + 7,
            U_CODE,
            0x1111,
            0x2222,
            (USTACK - 4) as u16,
            U_DATA
        ]
    );
    pm.step(1);
    assert_eq!(pm.g.cpu.eip(), ucode + 7);
    assert_eq!(pm.g.cpu.cpl(), 3);
    assert_eq!(pm.esp(), USTACK);
}

#[test]
fn retf_to_an_outer_level_nulls_inaccessible_data_segments() {
    let mut pm = Pm::new();
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(
        UCODE,
        asm(32, |a| {
            a.call_far(CALL_GATE | 3, 0)?;
            a.hlt()
        }),
    );
    pm.load(HCODE, asm(32, |a| a.retf_1(8)));
    pm.step(2);
    // At ring 3 now; give it a DPL 0 DS and a DPL 3 FS.
    let cpu = &mut pm.g.cpu;
    cpu.set_seg_cache(Seg::DS, SegCache::from_descriptor(K_DATA, flat(0x93)));
    cpu.set_seg_cache(Seg::FS, SegCache::from_descriptor(U_DATA, flat(0xF3)));
    pm.step(2);
    assert_eq!(pm.g.cpu.cpl(), 3);
    assert_eq!(pm.sel(Seg::DS), 0);
    assert_eq!(pm.sel(Seg::FS), U_DATA);
}

#[test]
fn call_gate_to_conforming_code_keeps_the_stack() {
    let mut pm = Pm::new();
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.call_far(CONF_GATE | 3, 0)));
    pm.step(3);
    assert_eq!(pm.g.cpu.eip(), HCODE);
    assert_eq!(pm.g.cpu.cpl(), 3);
    assert_eq!(pm.sel(Seg::CS), CONF_CODE | 3);
    assert_eq!(pm.stack(2), [UCODE + 7, U_CODE as u32]);
}

// ---- task switches ----

#[test]
fn jmp_to_a_tss_switches_tasks_and_saves_the_old_state() {
    let mut pm = Pm::new();
    pm.g.cpu.set_gpr(reg::EBX, 0x1234);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.jmp_far(TSS_B_SEL, 0)
        }),
    );
    pm.load(BCODE, asm(32, |a| a.hlt()));
    assert_eq!(pm.run(), RunExit::HaltedInterruptsDisabled);
    assert_eq!(pm.g.cpu.eip(), BCODE + 1);
    assert_eq!(pm.g.cpu.gpr(reg::EAX), 0xB0B0);
    assert_eq!(pm.esp(), BSTACK);
    assert_ne!(pm.g.cpu.cr0() & cr0::TS, 0);
    assert_eq!(pm.g.cpu.eflags() & NT, 0);
    assert_eq!(pm.gdt_access(TSS_A_SEL), 0x89, "old task no longer busy");
    assert_eq!(pm.gdt_access(TSS_B_SEL), 0x8B, "new task busy");
    assert_eq!(pm.peek(TSS_A + 0x20), KCODE + 10, "saved EIP");
    assert_eq!(pm.peek(TSS_A + 0x28 + 12), 0x1234, "saved EBX");
    assert_eq!(pm.peek(TSS_A + 0x4C) as u16, K_CODE, "saved CS");
}

#[test]
fn call_to_a_tss_nests_and_iret_returns_to_the_caller() {
    let mut pm = Pm::new();
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.call_far(TSS_B_SEL, 0)?;
            a.hlt()
        }),
    );
    pm.load(BCODE, asm(32, |a| a.iretd()));
    pm.step(2);
    assert_eq!(pm.g.cpu.eip(), BCODE);
    assert_ne!(pm.g.cpu.eflags() & NT, 0);
    assert_eq!(pm.peek_u16(TSS_B), TSS_A_SEL, "back-link");
    assert_eq!(pm.gdt_access(TSS_A_SEL), 0x8B);
    assert_eq!(pm.gdt_access(TSS_B_SEL), 0x8B);

    assert_eq!(pm.run(), RunExit::HaltedInterruptsDisabled);
    assert_eq!(pm.g.cpu.eip(), KCODE + 11);
    assert_eq!(pm.g.cpu.gpr(reg::EAX), TSS_A_SEL as u32);
    assert_eq!(pm.gdt_access(TSS_B_SEL), 0x89);
    assert_eq!(pm.gdt_access(TSS_A_SEL), 0x8B);
    assert_eq!(
        pm.peek(TSS_B + 0x24) & NT,
        0,
        "IRET clears NT in the saved image"
    );
    assert_eq!(pm.peek(TSS_B + 0x20), BCODE + 1);
}

#[test]
fn exception_through_a_task_gate_pushes_its_error_code_in_the_new_task() {
    let mut pm = Pm::new();
    pm.set_gate(13, gate(TSS_B_SEL, 0, TASK, 0, 0));
    pm.g.cpu.set_gpr(reg::EBX, K_DATA as u32);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.ltr(ebx)
        }),
    );
    pm.load(BCODE, asm(32, |a| a.hlt()));
    pm.run();
    assert_eq!(pm.g.cpu.eip(), BCODE + 1);
    assert_eq!(pm.esp(), BSTACK - 4);
    assert_eq!(pm.stack(1), [K_DATA as u32]);
    assert_ne!(pm.g.cpu.eflags() & NT, 0);
    assert_eq!(pm.peek(TSS_A + 0x20), KCODE + 3, "faulting EIP saved");
}

#[test]
fn call_through_a_task_gate_switches_tasks() {
    let mut pm = Pm::new();
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.call_far(TASK_GATE, 0)
        }),
    );
    pm.load(BCODE, asm(32, |a| a.hlt()));
    pm.run();
    assert_eq!(pm.g.cpu.eip(), BCODE + 1);
    assert_eq!(pm.peek_u16(TSS_B), TSS_A_SEL);
}

#[test]
fn jmp_to_a_busy_tss_is_gp() {
    let mut pm = Pm::new();
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.jmp_far(TSS_A_SEL, 0)
        }),
    );
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(1), [TSS_A_SEL as u32]);
}

#[test]
fn task_switch_to_a_sixteen_bit_tss() {
    let mut pm = Pm::new();
    pm.poke_u16(TSS_16 + 0x0E, 0x4000); // IP
    pm.poke_u16(TSS_16 + 0x10, 0x0002); // FLAGS
    pm.poke_u16(TSS_16 + 0x12, 0x1616); // AX
    pm.poke_u16(TSS_16 + 0x1A, 0x5000); // SP
    for (i, s) in [0x78u16, 0x48, 0x78, 0x78].into_iter().enumerate() {
        pm.poke_u16(TSS_16 + 0x22 + 2 * i as u32, s);
    }
    pm.g.cpu.set_gpr(reg::EBX, 0xABCD_0000);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.jmp_far(TSS_16_SEL, 0)
        }),
    );
    pm.g.poke(0x4000, &[0xF4]);
    pm.run();
    assert_eq!(pm.g.cpu.eip(), 0x4001);
    assert_eq!(pm.sel(Seg::CS), 0x48);
    assert_eq!(pm.g.cpu.gpr(reg::EAX) & 0xFFFF, 0x1616);
    assert_eq!(pm.g.cpu.gpr(reg::ESP) & 0xFFFF, 0x5000);
    assert_eq!(pm.gdt_access(TSS_16_SEL), 0x83);
}

// ---- virtual-8086 mode ----

/// Kernel code that enters v86 mode at 1100:0100 (linear 0x11100) with
/// `eflags`, SS:SP = 2000:FFF0 and ES, DS, FS, GS = 3000, 4000, 5000, 6000.
fn to_v86(pm: &mut Pm, eflags: u32) {
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.iretd()
        }),
    );
    let frame = KSTACK - 36;
    let vals = [
        0x100, 0x1100, eflags, 0xFFF0, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000,
    ];
    for (i, v) in vals.into_iter().enumerate() {
        pm.poke_u32(frame + 4 * i as u32, v);
    }
    pm.g.cpu.set_gpr(reg::ESP, frame);
}

const V86_CODE: u32 = 0x11100;

#[test]
fn iret_enters_v86_mode_and_int_goes_to_ring0_and_back() {
    let mut pm = Pm::new();
    pm.set_gate(0x21, gate(K_CODE, HCODE, INT32, 3, 0));
    to_v86(&mut pm, VM | IOPL3 | IF | 2);
    pm.load(
        V86_CODE,
        asm(16, |a| {
            a.int(0x21)?;
            a.hlt()
        }),
    );
    pm.load(HCODE, asm(32, |a| a.iretd()));
    pm.step(2);
    assert_ne!(pm.g.cpu.eflags() & VM, 0);
    assert_eq!(pm.g.cpu.cpl(), 3);
    assert_eq!(pm.g.cpu.seg(Seg::DS).base, 0x40000);
    assert_eq!(pm.g.cpu.seg(Seg::CS).base, 0x11000);

    pm.step(1);
    assert_eq!(pm.g.cpu.eip(), HCODE);
    assert_eq!(pm.g.cpu.eflags() & VM, 0);
    assert_eq!(pm.g.cpu.cpl(), 0);
    assert_eq!(pm.esp(), STACK0 - 36);
    assert_eq!(
        pm.stack(9),
        [
            0x102,
            0x1100,
            VM | IOPL3 | IF | 2,
            0xFFF0,
            0x2000,
            0x3000,
            0x4000,
            0x5000,
            0x6000
        ]
    );
    for s in [Seg::DS, Seg::ES, Seg::FS, Seg::GS] {
        assert_eq!(pm.sel(s), 0);
    }

    // IRETD back to v86 mode, where HLT raises #GP(0).
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(3), [0, 0x102, 0x1100]);
    assert_eq!(pm.stack(10)[9], 0x6000);
}

#[test]
fn int_in_v86_mode_with_iopl_below_3_is_gp0() {
    let mut pm = Pm::new();
    pm.set_gate(0x21, gate(K_CODE, HCODE, INT32, 3, 0));
    to_v86(&mut pm, VM | IF | 2);
    pm.load(V86_CODE, asm(16, |a| a.int(0x21)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(4), [0, 0x100, 0x1100, VM | IF | 2]);
}

#[test]
fn pushf_in_v86_mode_with_iopl_below_3_is_gp0() {
    let mut pm = Pm::new();
    to_v86(&mut pm, VM | 2);
    pm.load(V86_CODE, asm(16, |a| a.pushf()));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(2), [0, 0x100]);
}

#[test]
fn cli_and_pushf_in_v86_mode_with_iopl3() {
    let mut pm = Pm::new();
    to_v86(&mut pm, VM | IOPL3 | IF | 2);
    pm.load(
        V86_CODE,
        asm(16, |a| {
            a.cli()?;
            a.pushf()?;
            a.hlt()
        }),
    );
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(4), [0, 0x102, 0x1100, VM | IOPL3 | 2]);
    assert_eq!(pm.peek_u16(0x20000 + 0xFFEE), (IOPL3 | 2) as u16);
}

#[test]
fn iret_in_v86_mode_with_iopl3_keeps_iopl() {
    let mut pm = Pm::new();
    to_v86(&mut pm, VM | IOPL3 | 2);
    // A 16-bit IRET frame at 2000:FFF0 -> 1100:0200, FLAGS with IOPL 0.
    pm.poke_u16(0x2FFF0, 0x200);
    pm.poke_u16(0x2FFF2, 0x1100);
    pm.poke_u16(0x2FFF4, 0x0003);
    pm.load(V86_CODE, asm(16, |a| a.iret()));
    pm.g.poke(0x11200, &[0xF4]);
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(4), [0, 0x200, 0x1100, VM | IOPL3 | 3]);
}

// ---- PUSHF/POPF/CLI/STI ----

#[test]
fn popf_at_cpl3_with_iopl0_changes_neither_if_nor_iopl_and_cli_faults() {
    let mut pm = Pm::new();
    pm.poke_u32(USTACK - 4, IOPL3 | 0x3);
    pm.enter_user(UCODE, 0x202, USTACK - 4);
    pm.load(
        UCODE,
        asm(32, |a| {
            a.popfd()?;
            a.cli()
        }),
    );
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(4), [0, UCODE + 1, U_CODE as u32, 0x203]);
}

/// A bus whose interrupt controller always answers with vector 0x40.
struct IntrBus;
impl machine::Bus for IntrBus {
    fn interrupt_ack(&mut self) -> Option<u8> {
        Some(0x40)
    }
}

fn pm_with_intr() -> Pm {
    let mem = PhysMemory::new(2 << 20).expect("RAM");
    let mut g = Guest {
        cpu: Cpu::new(mem, Box::new(IntrBus)),
        log: Default::default(),
    };
    common::jit_from_env(&mut g.cpu);
    let mut pm = Pm::with_cpu(g);
    pm.set_gate(0x40, gate(K_CODE, DEFAULT + 0x400, INT32, 0, 0));
    pm.g.cpu.signals().set_intr(true);
    pm
}

#[test]
fn sti_holds_interrupts_off_for_one_instruction() {
    let mut pm = pm_with_intr();
    pm.load(
        KCODE,
        asm(32, |a| {
            a.sti()?;
            a.cli()?;
            a.hlt()
        }),
    );
    assert_eq!(pm.run(), RunExit::HaltedInterruptsDisabled);
    assert_eq!(pm.g.cpu.eip(), KCODE + 3);
}

#[test]
fn interrupt_is_taken_after_the_instruction_following_sti() {
    let mut pm = pm_with_intr();
    pm.load(
        KCODE,
        asm(32, |a| {
            a.sti()?;
            a.sti()?;
            a.cli()?;
            a.hlt()
        }),
    );
    pm.run();
    assert_eq!(pm.halted_in(), Some(0x40));
    assert_eq!(pm.stack(3), [KCODE + 2, K_CODE as u32, IF | 2]);
}

// ---- LAR, LSL, VERR, VERW, ARPL, LTR, STR, LLDT, SLDT ----

#[test]
fn lar_and_lsl_read_visible_descriptors() {
    let mut pm = Pm::new();
    let cpu = &mut pm.g.cpu;
    cpu.set_gpr(reg::EBX, U_CODE as u32);
    cpu.set_gpr(reg::ESI, CALL_GATE as u32);
    cpu.set_gpr(reg::EDI, 0x100);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.lar(ecx, ebx)?;
            a.lsl(edx, ebx)?;
            a.lar(ebp, esi)?;
            a.lsl(edx, esi)?;
            a.lar(ebp, edi)
        }),
    );
    pm.step(1);
    assert_eq!(pm.g.cpu.gpr(reg::ECX), 0x00CF_FA00);
    assert_ne!(pm.g.cpu.eflags() & ZF, 0);
    pm.step(1);
    assert_eq!(pm.g.cpu.gpr(reg::EDX), 0xFFFF_FFFF);
    pm.step(1);
    assert_eq!(pm.g.cpu.gpr(reg::EBP), 0x0001_EC00);
    assert_ne!(pm.g.cpu.eflags() & ZF, 0);
    pm.step(1);
    assert_eq!(pm.g.cpu.eflags() & ZF, 0, "LSL rejects gates");
    assert_eq!(pm.g.cpu.gpr(reg::EDX), 0xFFFF_FFFF);
    pm.step(1);
    assert_eq!(pm.g.cpu.eflags() & ZF, 0, "beyond the GDT limit");
}

#[test]
fn lar_at_cpl3_does_not_see_dpl0_segments() {
    let mut pm = Pm::new();
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.g.cpu.set_gpr(reg::EBX, K_DATA as u32);
    pm.g.cpu.set_gpr(reg::ECX, 0x5555);
    pm.load(UCODE, asm(32, |a| a.lar(ecx, ebx)));
    pm.step(3);
    assert_eq!(pm.g.cpu.eflags() & ZF, 0);
    assert_eq!(pm.g.cpu.gpr(reg::ECX), 0x5555);
}

#[test]
fn verr_and_verw() {
    let mut pm = Pm::new();
    pm.g.cpu.set_gpr(reg::EBX, RO_DATA as u32);
    pm.g.cpu.set_gpr(reg::ECX, K_CODE as u32);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.verr(bx)?;
            a.verw(bx)?;
            a.verr(cx)?;
            a.verw(cx)
        }),
    );
    let mut zf = vec![];
    for _ in 0..4 {
        pm.step(1);
        zf.push(pm.g.cpu.eflags() & ZF != 0);
    }
    assert_eq!(zf, [true, false, true, false]);
}

#[test]
fn arpl_raises_the_destination_rpl() {
    let mut pm = Pm::new();
    pm.g.cpu.set_gpr(reg::EBX, 0x10);
    pm.g.cpu.set_gpr(reg::ECX, 0x03);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.arpl(bx, cx)?;
            a.arpl(bx, cx)
        }),
    );
    pm.step(1);
    assert_eq!(pm.g.cpu.gpr(reg::EBX), 0x13);
    assert_ne!(pm.g.cpu.eflags() & ZF, 0);
    pm.step(1);
    assert_eq!(pm.g.cpu.eflags() & ZF, 0);
}

#[test]
fn arpl_is_ud_in_real_mode() {
    let mut g = Guest::real_mode(1, 0x7C00);
    g.poke(6 * 4, &[0x00, 0x05, 0x00, 0x00]);
    g.poke(0x500, &[0xF4]);
    g.cpu.set_gpr(reg::ESP, 0x7000);
    g.load(0x7C00, asm(16, |a| a.arpl(bx, cx)));
    g.run(100);
    assert_eq!(g.cpu.eip(), 0x501);
}

#[test]
fn ltr_marks_the_tss_busy_and_str_reads_it() {
    let mut pm = Pm::new();
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.str(ecx)?;
            a.ltr(eax)
        }),
    );
    pm.step(2);
    assert_eq!(pm.g.cpu.gpr(reg::ECX), TSS_A_SEL as u32);
    assert_eq!(pm.gdt_access(TSS_A_SEL), 0x8B);
    pm.run();
    assert_eq!(pm.halted_in(), Some(13), "LTR of a busy TSS");
    assert_eq!(pm.stack(1), [TSS_A_SEL as u32]);
}

#[test]
fn ltr_at_cpl3_is_gp0() {
    let mut pm = Pm::new();
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.ltr(eax)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(2), [0, UCODE]);
}

#[test]
fn lldt_loads_the_ldt_and_sldt_reads_it() {
    let mut pm = Pm::new();
    let cpu = &mut pm.g.cpu;
    cpu.set_gpr(reg::EDX, LDT_SEL as u32);
    cpu.set_gpr(reg::EBX, LDT_DATA as u32);
    cpu.set_gpr(reg::ESI, K_DATA as u32);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.lldt(dx)?;
            a.sldt(ecx)?;
            a.lar(edi, ebx)?;
            a.lldt(si)
        }),
    );
    pm.step(3);
    assert_eq!(pm.g.cpu.gpr(reg::ECX), LDT_SEL as u32);
    assert_ne!(pm.g.cpu.eflags() & ZF, 0);
    assert_eq!(pm.g.cpu.gpr(reg::EDI), 0x00CF_F200);
    pm.run();
    assert_eq!(pm.halted_in(), Some(13), "LLDT of a data segment");
    assert_eq!(pm.stack(1), [K_DATA as u32]);
}

#[test]
fn lar_in_v86_mode_is_ud() {
    let mut pm = Pm::new();
    to_v86(&mut pm, VM | 2);
    pm.load(V86_CODE, asm(16, |a| a.lar(ax, bx)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(6));
}

#[test]
fn not_present_data_selector_in_a_new_task_is_np() {
    let mut pm = Pm::new();
    pm.poke_u32(TSS_B + 0x54, NP_DATA as u32); // DS
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.jmp_far(TSS_B_SEL, 0)
        }),
    );
    pm.run();
    assert_eq!(pm.halted_in(), Some(11));
    // Delivered in the new task: on its stack, with its EIP.
    assert_eq!(pm.stack(2), [NP_DATA as u32, BCODE]);
    assert_eq!(pm.esp(), BSTACK - 16);
}

#[test]
fn tss_debug_trap_flag_raises_db_in_the_new_task() {
    let mut pm = Pm::new();
    pm.poke_u16(TSS_B + 0x64, 1);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.jmp_far(TSS_B_SEL, 0)
        }),
    );
    pm.run();
    assert_eq!(pm.halted_in(), Some(1));
    assert_eq!(pm.stack(2), [BCODE, K_CODE as u32]);
    assert_eq!(pm.esp(), BSTACK - 12);
}

#[test]
fn sixteen_bit_interrupt_gate_pushes_a_word_frame() {
    let mut pm = Pm::new();
    // A 286 gate has a 16-bit offset.
    pm.set_gate(0x22, gate(K_CODE, 0xC000, 0x6, 0, 0));
    pm.load(KCODE, asm(32, |a| a.int(0x22)));
    pm.step(1);
    assert_eq!(pm.g.cpu.eip(), 0xC000);
    assert_eq!(pm.esp(), KSTACK - 6);
    let words: Vec<u16> = (0..3).map(|i| pm.peek_u16(KSTACK - 6 + 2 * i)).collect();
    assert_eq!(words, [(KCODE + 2) as u16, K_CODE, 2]);
}

#[test]
fn iret_from_cpl0_sets_iopl_and_cli_at_cpl3_is_then_allowed() {
    let mut pm = Pm::new();
    pm.enter_user(UCODE, IOPL3 | 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.cli()));
    pm.step(3);
    assert_eq!(
        pm.g.cpu.eflags() & (IOPL3 | IF),
        IOPL3,
        "CLI allowed with IOPL 3"
    );
}

// ---- selector loads by guest instructions ----

#[test]
fn mov_ds_of_a_dpl0_segment_at_cpl3_is_gp_with_the_selector() {
    let mut pm = Pm::new();
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.g.cpu.set_gpr(reg::EBX, K_DATA as u32 | 3);
    pm.load(UCODE, asm(32, |a| a.mov(ds, bx)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(2), [K_DATA as u32, UCODE]);
}

#[test]
fn mov_ss_of_a_not_present_segment_is_ss_fault() {
    let mut pm = Pm::new();
    pm.poke_u64(GDT + 0xA8, flat(0x12));
    pm.g.cpu.set_gpr(reg::EBX, 0xA8);
    pm.load(KCODE, asm(32, |a| a.mov(ss, bx)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(12));
    assert_eq!(pm.stack(2), [0xA8, KCODE]);
}

#[test]
fn access_through_a_null_data_segment_is_gp0() {
    let mut pm = Pm::new();
    pm.g.cpu.set_gpr(reg::EBX, 0);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.mov(es, bx)?;
            a.mov(eax, dword_ptr(0x100).es())
        }),
    );
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(2), [0, KCODE + 3]);
}

#[test]
fn syscall_style_round_trip_through_an_int_gate() {
    let mut pm = Pm::new();
    pm.set_gate(0x80, gate(K_CODE, HCODE, INT32, 3, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(
        UCODE,
        asm(32, |a| {
            a.mov(eax, 1)?;
            a.int(0x80)?;
            a.mov(ebx, eax)?;
            a.int(0x81)
        }),
    );
    // Handler: EAX += 41 (via LEA), back to ring 3.
    pm.load(
        HCODE,
        asm(32, |a| {
            a.lea(eax, dword_ptr(eax + 41))?;
            a.iretd()
        }),
    );
    pm.set_gate(0x81, gate(K_CODE, DEFAULT + 0x810, INT32, 3, 0));
    pm.run();
    assert_eq!(pm.halted_in(), Some(0x81));
    assert_eq!(pm.g.cpu.gpr(reg::EBX), 42);
}

#[test]
fn task_switch_into_a_v86_task_and_a_fault_there_uses_its_ring0_stack() {
    let mut pm = Pm::new();
    pm.poke_u32(TSS_B + 4, 0x9000); // ESP0
    pm.poke_u32(TSS_B + 8, K_DATA as u32); // SS0
    pm.poke_u32(TSS_B + 0x20, 0x100);
    pm.poke_u32(TSS_B + 0x24, VM | 2);
    pm.poke_u32(TSS_B + 0x38, 0xFFF0);
    for (i, s) in [0x3000u32, 0x1100, 0x2000, 0x4000, 0x5000, 0x6000]
        .into_iter()
        .enumerate()
    {
        pm.poke_u32(TSS_B + 0x48 + 4 * i as u32, s);
    }
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.jmp_far(TSS_B_SEL, 0)
        }),
    );
    pm.load(V86_CODE, asm(16, |a| a.hlt()));
    pm.step(2);
    assert_ne!(pm.g.cpu.eflags() & VM, 0);
    assert_eq!(pm.g.cpu.cpl(), 3);
    assert_eq!(pm.g.cpu.seg(Seg::DS).base, 0x40000);
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.esp(), 0x9000 - 40);
    assert_eq!(pm.stack(3), [0, 0x100, 0x1100]);
}

#[test]
fn bad_ring0_stack_in_the_tss_is_ts_delivered_through_a_task_gate() {
    let mut pm = Pm::new();
    pm.poke_u32(TSS_A + 8, U_DATA as u32); // SS0 with DPL 3: invalid
    pm.set_gate(10, gate(TSS_B_SEL, 0, TASK, 0, 0));
    pm.set_gate(0x80, gate(K_CODE, HCODE, INT32, 3, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.int(0x80)));
    pm.load(BCODE, asm(32, |a| a.hlt()));
    pm.run();
    assert_eq!(pm.g.cpu.eip(), BCODE + 1);
    assert_eq!(pm.stack(1), [U_DATA as u32 & !3]);
    assert_eq!(pm.peek(TSS_A + 0x20), UCODE, "the INT is restarted");
}

#[test]
fn call_gate_checks() {
    // Gate DPL below CPL: #GP(gate).
    let mut pm = Pm::new();
    pm.poke_u64(GDT + 0xA8, gate(K_CODE, HCODE, CALL32, 0, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.call_far(0xAB, 0)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(1), [0xA8]);

    // Gate not present: #NP(gate).
    let mut pm = Pm::new();
    pm.poke_u64(
        GDT + 0xA8,
        gate(K_CODE, HCODE, CALL32, 3, 0) & !(0x80 << 40),
    );
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.call_far(0xAB, 0)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(11));
    assert_eq!(pm.stack(1), [0xA8]);

    // Gate to a data segment: #GP(target).
    let mut pm = Pm::new();
    pm.poke_u64(GDT + 0xA8, gate(K_DATA, HCODE, CALL32, 3, 0));
    pm.enter_user(UCODE, 0x202, USTACK);
    pm.load(UCODE, asm(32, |a| a.call_far(0xAB, 0)));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(1), [K_DATA as u32]);
}

#[test]
fn retf_to_an_outer_level_checks_the_popped_ss() {
    let mut pm = Pm::new();
    // A hand-made outer-level frame whose SS has the wrong RPL.
    for (i, v) in [UCODE, U_CODE as u32, USTACK, K_DATA as u32 | 3]
        .into_iter()
        .enumerate()
    {
        pm.poke_u32(KSTACK - 16 + 4 * i as u32, v);
    }
    pm.g.cpu.set_gpr(reg::ESP, KSTACK - 16);
    pm.load(KCODE, asm(32, |a| a.retf()));
    pm.run();
    assert_eq!(pm.halted_in(), Some(13));
    assert_eq!(pm.stack(2), [K_DATA as u32, KCODE]);
    assert_eq!(pm.g.cpu.cpl(), 0);
}

#[test]
fn iret_with_a_not_present_return_segment_is_np() {
    let mut pm = Pm::new();
    pm.poke_u64(GDT + 0xA8, flat(0x1A));
    for (i, v) in [UCODE, 0xA8, 2].into_iter().enumerate() {
        pm.poke_u32(KSTACK - 12 + 4 * i as u32, v);
    }
    pm.g.cpu.set_gpr(reg::ESP, KSTACK - 12);
    pm.load(KCODE, asm(32, |a| a.iretd()));
    pm.run();
    assert_eq!(pm.halted_in(), Some(11));
    assert_eq!(pm.stack(2), [0xA8, KCODE]);
}

#[test]
fn double_fault_through_a_task_gate_runs_the_double_fault_task() {
    // Linux i386's arrangement: #DF goes to its own task and stack.
    let mut pm = Pm::new();
    pm.set_gate(13, 0);
    pm.set_gate(8, gate(TSS_B_SEL, 0, TASK, 0, 0));
    pm.g.cpu.set_gpr(reg::EBX, K_DATA as u32);
    pm.load(
        KCODE,
        asm(32, |a| {
            a.ltr(eax)?;
            a.ltr(ebx)
        }),
    );
    pm.load(BCODE, asm(32, |a| a.hlt()));
    pm.run();
    assert_eq!(pm.g.cpu.eip(), BCODE + 1);
    assert_eq!(pm.esp(), BSTACK - 4);
    assert_eq!(pm.stack(1), [0]);
    assert_eq!(pm.peek_u16(TSS_B), TSS_A_SEL);
}
