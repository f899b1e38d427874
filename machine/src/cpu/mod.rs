//! The Pentium II-class CPU: an interpreter over iced-x86's decoder with a
//! per-physical-page decoded-block cache, a software TLB and lazy flags.
//!
//! One file per concern:
//! - `exec.rs`: the run loop, the block cache and handler dispatch;
//! - `flags.rs`: EFLAGS and lazy status flags;
//! - `operand.rs`: ModRM/SIB effective addresses and operand access;
//! - `access.rs`: segmented and linear memory access through the TLB;
//! - `paging.rs`: page walks and the software TLB;
//! - `alu.rs`, `data.rs`, `string.rs`, `branch.rs`: the integer instructions;
//! - `segment.rs`: descriptors, selector loads and protection checks;
//! - `interrupt.rs`: exception and interrupt delivery (real, protected, v86);
//! - `far.rs`: far JMP/CALL/RET/IRET, call gates;
//! - `task.rs`: hardware task switching;
//! - `system.rs`: control registers, MSRs, CPUID and the other system instructions;
//! - `x87/`: the floating-point unit;
//! - `jit/`: the baseline JIT (off unless `Cpu::set_jit(true)`).

mod access;
mod alu;
mod branch;
mod data;
mod exec;
mod far;
mod fault;
mod flags;
mod interrupt;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod jit;
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[path = "jit/stub.rs"]
mod jit;
mod operand;
mod paging;
mod segment;
mod string;
mod system;
mod task;
mod x87;

use crate::bus::{Bus, Signals};
use crate::memory::PhysMemory;

pub use exec::{RunExit, TraceHook};
pub use fault::{Fault, vector};
pub(crate) use flags::Flags;
pub use segment::SegCache;
pub use system::{CpuidInfo, TscSource, cpuid_edx, msr};

/// General-purpose register numbers, in x86 encoding order.
pub mod reg {
    pub const EAX: usize = 0;
    pub const ECX: usize = 1;
    pub const EDX: usize = 2;
    pub const EBX: usize = 3;
    pub const ESP: usize = 4;
    pub const EBP: usize = 5;
    pub const ESI: usize = 6;
    pub const EDI: usize = 7;
    /// A slot that always holds zero: operand decoding points absent
    /// base/index registers here so effective addresses need no branches.
    pub(crate) const ZERO: usize = 8;
}

/// Segment register numbers, in x86 encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Seg {
    ES = 0,
    CS = 1,
    SS = 2,
    DS = 3,
    FS = 4,
    GS = 5,
}

impl Seg {
    pub const ALL: [Seg; 6] = [Seg::ES, Seg::CS, Seg::SS, Seg::DS, Seg::FS, Seg::GS];
    pub(crate) fn from_index(i: u8) -> Seg {
        Seg::ALL[(i % 6) as usize]
    }
}

/// Descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableReg {
    pub base: u32,
    pub limit: u16,
}

pub mod cr0 {
    pub const PE: u32 = 1 << 0;
    pub const MP: u32 = 1 << 1;
    pub const EM: u32 = 1 << 2;
    pub const TS: u32 = 1 << 3;
    pub const ET: u32 = 1 << 4;
    pub const NE: u32 = 1 << 5;
    pub const WP: u32 = 1 << 16;
    pub const AM: u32 = 1 << 18;
    pub const NW: u32 = 1 << 29;
    pub const CD: u32 = 1 << 30;
    pub const PG: u32 = 1 << 31;
}

pub mod cr4 {
    pub const VME: u32 = 1 << 0;
    pub const PVI: u32 = 1 << 1;
    pub const TSD: u32 = 1 << 2;
    pub const DE: u32 = 1 << 3;
    pub const PSE: u32 = 1 << 4;
    pub const PAE: u32 = 1 << 5;
    pub const MCE: u32 = 1 << 6;
    pub const PGE: u32 = 1 << 7;
    pub const PCE: u32 = 1 << 8;
    pub const OSFXSR: u32 = 1 << 9;
}

/// What happens when the guest triple-faults: the platform decides, the CPU
/// only reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    TripleFault,
}

/// The CPU and the memory and bus it drives.
pub struct Cpu {
    /// EAX..EDI, then slots that are always zero (see [`reg::ZERO`]); 16
    /// so that an index masked with 15 needs no bounds check.
    pub(crate) regs: [u32; 16],
    pub(crate) eip: u32,
    /// EIP of the instruction after the one executing; branches write it.
    pub(crate) next_eip: u32,
    pub(crate) flags: Flags,
    pub(crate) segs: [SegCache; 6],
    pub(crate) ldtr: SegCache,
    pub(crate) tr: SegCache,
    pub(crate) gdtr: TableReg,
    pub(crate) idtr: TableReg,
    pub(crate) cr0: u32,
    pub(crate) cr2: u32,
    pub(crate) cr3: u32,
    pub(crate) cr4: u32,
    pub(crate) dr: [u32; 8],
    /// Current privilege level (CS.RPL in protected mode, 3 in v86, 0 in real mode).
    pub(crate) cpl: u8,
    /// CS.D: 32-bit default operand and address size.
    pub(crate) code32: bool,
    /// SS.B: ESP (not SP) is the stack pointer.
    pub(crate) stack32: bool,

    pub(crate) sys: system::SysState,
    pub(crate) fpu: x87::Fpu,
    pub(crate) tlb: paging::Tlb,
    pub(crate) code: exec::CodeCache,

    /// Halted by HLT, waiting for an interrupt.
    pub(crate) halted: bool,
    /// Interrupts (and single-step traps) are held off for one instruction
    /// after MOV SS / POP SS / STI.
    pub(crate) irq_shadow: bool,
    /// The shadow comes from MOV SS / POP SS, which also holds off the
    /// single-step trap (STI's shadow does not).
    pub(crate) ss_shadow: bool,
    /// Set by a handler when the rest of the current block must not run
    /// (mode change, code invalidated, interrupt window opened...).
    pub(crate) stop_block: bool,
    /// Nesting depth of exception delivery, for double and triple faults.
    pub(crate) fault_depth: u8,
    pub(crate) shutdown: Option<ShutdownReason>,
    /// Instructions retired since reset.
    pub(crate) icount: u64,
    pub(crate) trace: Option<TraceHook>,
    /// The baseline JIT (off unless `set_jit(true)`).
    pub(crate) jit: jit::Jit,

    pub mem: PhysMemory,
    pub bus: Box<dyn Bus>,
    pub(crate) signals: Signals,
}

impl Cpu {
    /// A CPU in its power-on state over `mem`, with `bus` for everything else.
    pub fn new(mem: PhysMemory, bus: Box<dyn Bus>) -> Self {
        let mut cpu = Cpu {
            regs: [0; 16],
            eip: 0,
            next_eip: 0,
            flags: Flags::default(),
            segs: [SegCache::default(); 6],
            ldtr: SegCache::default(),
            tr: SegCache::default(),
            gdtr: TableReg::default(),
            idtr: TableReg::default(),
            cr0: 0,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            dr: [0; 8],
            cpl: 0,
            code32: false,
            stack32: false,
            sys: system::SysState::default(),
            fpu: x87::Fpu::default(),
            tlb: paging::Tlb::new(),
            code: exec::CodeCache::new(mem.backing_len()),
            halted: false,
            irq_shadow: false,
            ss_shadow: false,
            stop_block: false,
            fault_depth: 0,
            shutdown: None,
            icount: 0,
            trace: None,
            jit: jit::Jit::default(),
            mem,
            bus,
            signals: Signals::new(),
        };
        cpu.reset();
        cpu
    }

    /// The power-on / RESET state (SDM vol. 3, table 9-1): real mode,
    /// CS:IP = F000:FFF0 with CS base FFFF0000.
    pub fn reset(&mut self) {
        self.regs = [0; 16];
        // EDX holds the processor signature after reset.
        self.regs[reg::EDX] = system::CPUID_SIGNATURE;
        self.flags = Flags::default();
        for s in Seg::ALL {
            self.segs[s as usize] = SegCache::real_mode(0);
        }
        self.segs[Seg::CS as usize] = SegCache::real_mode(0xF000);
        self.segs[Seg::CS as usize].base = 0xFFFF_0000;
        self.eip = 0xFFF0;
        self.next_eip = self.eip;
        self.ldtr = SegCache::system_reset();
        self.tr = SegCache::system_reset();
        self.gdtr = TableReg {
            base: 0,
            limit: 0xFFFF,
        };
        self.idtr = TableReg {
            base: 0,
            limit: 0xFFFF,
        };
        self.cr0 = cr0::ET | cr0::CD | cr0::NW;
        self.cr2 = 0;
        self.cr3 = 0;
        self.cr4 = 0;
        self.dr = [0; 8];
        self.dr[6] = 0xFFFF_0FF0;
        self.dr[7] = 0x0000_0400;
        self.put_cpl(0);
        self.code32 = false;
        self.stack32 = false;
        self.sys.reset();
        self.set_tsc(0);
        self.fpu = x87::Fpu::default();
        self.halted = false;
        self.irq_shadow = false;
        self.ss_shadow = false;
        self.stop_block = true;
        self.fault_depth = 0;
        self.shutdown = None;
        self.mem.set_a20(true);
        self.tlb.flush_all();
        self.code.clear();
    }

    /// The signal lines devices and other threads use to reach this CPU.
    pub fn signals(&self) -> Signals {
        self.signals.clone()
    }

    /// Replaces the signal word (a platform that built its devices first
    /// hands them the word, then the CPU).
    pub fn set_signals(&mut self, signals: Signals) {
        self.signals = signals;
    }

    /// Turns the baseline JIT on or off for this CPU. Compiled code needs
    /// executable memory, which the worker's sandbox forbids: only callers
    /// outside it (benchmarks, tests, tools) turn it on. A no-op on hosts
    /// without a JIT back end.
    pub fn set_jit(&mut self, on: bool) {
        self.jit.on = on && jit::SUPPORTED;
        self.stop_block = true;
    }

    /// Runs a block this many times before compiling it (0: at once).
    #[doc(hidden)]
    pub fn set_jit_threshold(&mut self, runs: u32) {
        self.jit.threshold = runs;
    }

    /// Blocks the JIT has compiled.
    #[doc(hidden)]
    pub fn jit_compiled_blocks(&self) -> u64 {
        self.jit.compiled
    }

    /// Instructions retired since power-on.
    pub fn instruction_count(&self) -> u64 {
        self.icount
    }

    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Interrupts enabled (EFLAGS.IF).
    pub fn interrupts_enabled(&self) -> bool {
        self.flags.test(flags::IF)
    }

    // ---- register access for loaders, tests and the debugger ----

    /// General-purpose register `r` (see [`reg`]).
    pub fn gpr(&self, r: usize) -> u32 {
        self.regs[r & 7]
    }
    pub fn set_gpr(&mut self, r: usize, v: u32) {
        self.regs[r & 7] = v;
    }
    pub fn eip(&self) -> u32 {
        self.eip
    }
    pub fn set_eip(&mut self, v: u32) {
        self.eip = v;
        self.next_eip = v;
        self.stop_block = true;
    }
    pub fn eflags(&self) -> u32 {
        self.flags.get()
    }
    /// Sets EFLAGS without any privilege masking (loaders and tests).
    pub fn set_eflags(&mut self, v: u32) {
        self.flags.set(v);
        self.update_mode();
    }
    pub fn seg(&self, s: Seg) -> &SegCache {
        &self.segs[s as usize]
    }
    /// Loads a segment register from a ready-made descriptor cache (loaders and tests).
    pub fn set_seg_cache(&mut self, s: Seg, cache: SegCache) {
        self.segs[s as usize] = cache;
        self.update_mode();
    }
    pub fn cr0(&self) -> u32 {
        self.cr0
    }
    pub fn cr2(&self) -> u32 {
        self.cr2
    }
    pub fn cr3(&self) -> u32 {
        self.cr3
    }
    pub fn cr4(&self) -> u32 {
        self.cr4
    }
    /// Loads CR0 (MOV CR0, LMSW, loaders and tests): flushes the TLB when
    /// paging or write protection changes and re-derives the mode. ET is
    /// hardwired to 1 on this CPU. The caller has made the architectural
    /// checks (MOV CR0 raises #GP for PG without PE, NW without CD).
    pub fn set_cr0(&mut self, value: u32) {
        let value = value | cr0::ET;
        let changed = self.cr0 ^ value;
        self.cr0 = value;
        if changed & (cr0::PG | cr0::WP | cr0::PE) != 0 {
            self.tlb.flush_all();
        }
        self.update_mode();
    }

    /// Loads CR3 (flushes non-global TLB entries).
    pub fn load_cr3(&mut self, value: u32) {
        self.set_cr3(value);
        self.stop_block = true;
    }

    /// Loads CR4: a change of PSE, PGE or PAE flushes the whole TLB.
    pub fn set_cr4(&mut self, value: u32) {
        let changed = self.cr4 ^ value;
        self.cr4 = value;
        if changed & (cr4::PSE | cr4::PGE | cr4::PAE) != 0 {
            self.tlb.flush_all();
        }
        self.stop_block = true;
    }

    pub fn cpl(&self) -> u8 {
        self.cpl
    }
    /// Sets CPL directly (loaders and tests that build protected-mode state by hand).
    pub fn set_cpl(&mut self, cpl: u8) {
        self.put_cpl(cpl & 3);
        self.stop_block = true;
    }

    /// Sets CPL and points the TLB's fast paths at its set.
    #[inline(always)]
    pub(crate) fn put_cpl(&mut self, cpl: u8) {
        self.cpl = cpl;
        self.tlb.user_off = if cpl == 3 { paging::TLB_SIZE } else { 0 };
    }
    pub fn gdtr(&self) -> TableReg {
        self.gdtr
    }
    pub fn idtr(&self) -> TableReg {
        self.idtr
    }
    pub fn set_gdtr(&mut self, t: TableReg) {
        self.gdtr = t;
    }
    pub fn set_idtr(&mut self, t: TableReg) {
        self.idtr = t;
    }

    /// Protected mode (CR0.PE).
    #[inline(always)]
    pub fn protected_mode(&self) -> bool {
        self.cr0 & cr0::PE != 0
    }

    /// Virtual-8086 mode (protected mode with EFLAGS.VM).
    #[inline(always)]
    pub fn v86_mode(&self) -> bool {
        self.flags.test(flags::VM)
    }

    /// Re-derives the cached mode bits (CPL, code and stack size) from
    /// CR0, EFLAGS.VM and the CS/SS caches, and ends the current block.
    pub(crate) fn update_mode(&mut self) {
        if !self.protected_mode() {
            self.put_cpl(0);
        } else if self.v86_mode() {
            self.put_cpl(3);
        }
        let cs = &self.segs[Seg::CS as usize];
        let ss = &self.segs[Seg::SS as usize];
        if !self.protected_mode() {
            self.code32 = cs.big();
            self.stack32 = ss.big();
            // Real mode checks limits but not types.
            for s in &mut self.segs {
                s.rights = segment::rights::READ | segment::rights::WRITE;
                s.set_fast_bounds();
            }
        } else if self.v86_mode() {
            self.code32 = false;
            self.stack32 = false;
        } else {
            // In protected mode CPL is set explicitly by whatever loads CS
            // (far transfers, interrupts, task switches, SYSENTER/SYSEXIT);
            // right after MOV CR0 sets PE it stays 0 from real mode.
            self.code32 = cs.big();
            self.stack32 = ss.big();
        }
        self.stop_block = true;
    }

    /// Current stack pointer width mask.
    #[inline(always)]
    pub(crate) fn sp_mask(&self) -> u32 {
        if self.stack32 { 0xFFFF_FFFF } else { 0xFFFF }
    }
}
