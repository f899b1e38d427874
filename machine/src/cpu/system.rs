//! System instructions: control and debug registers, MSRs, CPUID, RDTSC,
//! descriptor-table registers, HLT, SYSENTER/SYSEXIT, port I/O with its
//! protection checks.
//!
//! Every privileged instruction checks CPL first (CPL is 3 in v86 mode and
//! 0 in real mode, so one `cpl != 0` test covers all three modes).

use std::time::Instant;

use iced_x86::{Code, Instruction, OpKind};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::segment::SegCache;
use super::{Cpu, Seg, TableReg, cr0, cr4, flags, reg};
use crate::bus::IoSize;

/// CPUID leaf 1 EAX and EDX-after-reset: family 6, model 5 (Pentium II
/// "Deschutes"), stepping 2.
pub(crate) const CPUID_SIGNATURE: u32 = 0x0652;

/// CPUID leaf 1 EDX feature bits. [`FEATURES_EDX`] lists exactly those this
/// CPU implements; the others are named so the omission is visible.
pub mod cpuid_edx {
    /// x87 FPU on chip.
    pub const FPU: u32 = 1 << 0;
    /// Virtual-8086 mode extensions (CR4.VME/PVI): not implemented.
    pub const VME: u32 = 1 << 1;
    /// Debugging extensions: CR4.DE (DR4/DR5 raise #UD).
    pub const DE: u32 = 1 << 2;
    /// 4 MiB pages (CR4.PSE).
    pub const PSE: u32 = 1 << 3;
    /// RDTSC and CR4.TSD.
    pub const TSC: u32 = 1 << 4;
    /// RDMSR/WRMSR.
    pub const MSR: u32 = 1 << 5;
    /// Physical address extension: not implemented.
    pub const PAE: u32 = 1 << 6;
    /// Machine-check exception: not implemented.
    pub const MCE: u32 = 1 << 7;
    /// CMPXCHG8B.
    pub const CX8: u32 = 1 << 8;
    /// An on-chip local APIC (platform-dependent: `Cpu::set_apic_present`).
    pub const APIC: u32 = 1 << 9;
    /// SYSENTER/SYSEXIT.
    pub const SEP: u32 = 1 << 11;
    /// Memory type range registers (kept as storage; caching is not modelled).
    pub const MTRR: u32 = 1 << 12;
    /// Global pages (CR4.PGE).
    pub const PGE: u32 = 1 << 13;
    /// Machine-check architecture: not implemented.
    pub const MCA: u32 = 1 << 14;
    /// CMOVcc (and FCMOVcc/FCOMI with FPU).
    pub const CMOV: u32 = 1 << 15;
    /// Page attribute table: not implemented.
    pub const PAT: u32 = 1 << 16;
    /// 36-bit 4 MiB page addresses: not implemented.
    pub const PSE36: u32 = 1 << 17;
    /// MMX: not implemented (yet).
    pub const MMX: u32 = 1 << 23;
    /// FXSAVE/FXRSTOR: not implemented.
    pub const FXSR: u32 = 1 << 24;

    /// What this CPU reports, APIC aside (that bit is added when the
    /// platform has a local APIC).
    pub const FEATURES_EDX: u32 = FPU | DE | PSE | TSC | MSR | CX8 | SEP | MTRR | PGE | CMOV;
}

/// Highest basic CPUID leaf.
const CPUID_MAX_LEAF: u32 = 2;

/// Leaf 2 of a Pentium II with 512 KiB of L2: EAX = 03020101 (one
/// iteration; descriptors 01 ITLB 4K×32, 02 ITLB 4M×2, 03 DTLB 4K×64),
/// EDX = 0C040843 (43 L2 512K 4-way, 08 L1I 16K, 04 DTLB 4M×8, 0C L1D 16K).
const CPUID_LEAF2: [u32; 4] = [0x0302_0101, 0, 0, 0x0C04_0843];

/// CR4 bits this CPU accepts; the rest raise #GP(0) (CPUID does not report them).
const CR4_SUPPORTED: u32 = cr4::TSD | cr4::DE | cr4::PSE | cr4::PGE | cr4::PCE;

/// CR0 bits this CPU keeps; others read back as 0.
const CR0_SUPPORTED: u32 = cr0::PE
    | cr0::MP
    | cr0::EM
    | cr0::TS
    | cr0::ET
    | cr0::NE
    | cr0::WP
    | cr0::AM
    | cr0::NW
    | cr0::CD
    | cr0::PG;

/// What CPUID reports (kept here so tests and `/proc/cpuinfo` checks
/// can compare against exactly what is implemented).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidInfo {
    /// Leaf 0 vendor string, "GenuineIntel".
    pub vendor: [u8; 12],
    /// Highest basic leaf (leaf 0 EAX).
    pub max_leaf: u32,
    /// Leaf 1 EAX: stepping, model, family.
    pub signature: u32,
    /// Leaf 1 EDX (see [`cpuid_edx`]).
    pub features_edx: u32,
    /// Leaf 1 ECX: no extended features.
    pub features_ecx: u32,
    /// Leaf 2: cache and TLB descriptors.
    pub leaf2: [u32; 4],
}

impl CpuidInfo {
    /// EAX, EBX, ECX, EDX for `leaf`. Leaves above the maximum (basic or
    /// extended; this CPU has no extended leaves) return the highest basic
    /// leaf's values, as Intel processors do.
    pub fn query(&self, leaf: u32) -> [u32; 4] {
        match leaf {
            0 => {
                let w = |i: usize| {
                    u32::from_le_bytes([
                        self.vendor[i],
                        self.vendor[i + 1],
                        self.vendor[i + 2],
                        self.vendor[i + 3],
                    ])
                };
                // EBX, EDX, ECX spell the vendor in that order.
                [self.max_leaf, w(0), w(8), w(4)]
            }
            1 => [self.signature, 0, self.features_ecx, self.features_edx],
            _ => self.leaf2,
        }
    }
}

/// Where RDTSC's count comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// `ticks_per_instruction` ticks per retired instruction: deterministic,
    /// for tests and replay.
    Instructions { ticks_per_instruction: u64 },
    /// The host's monotonic clock scaled to `hz`.
    HostClock { hz: u64 },
}

impl Default for TscSource {
    fn default() -> Self {
        TscSource::Instructions {
            ticks_per_instruction: 1,
        }
    }
}

/// MSR numbers.
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1B;
    pub const EBL_CR_POWERON: u32 = 0x2A;
    pub const BIOS_UPDT_TRIG: u32 = 0x79;
    pub const BIOS_SIGN_ID: u32 = 0x8B;
    pub const MTRRCAP: u32 = 0xFE;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    pub const MTRR_PHYS_MASK7: u32 = 0x20F;
    pub const MTRR_FIX64K_00000: u32 = 0x250;
    pub const MTRR_FIX16K_80000: u32 = 0x258;
    pub const MTRR_FIX16K_A0000: u32 = 0x259;
    pub const MTRR_FIX4K_C0000: u32 = 0x268;
    pub const MTRR_FIX4K_F8000: u32 = 0x26F;
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
}

/// APIC_BASE after reset: base FEE00000, global enable (bit 11), BSP (bit 8).
const APIC_BASE_RESET: u64 = 0xFEE0_0900;
const APIC_BASE_BSP: u64 = 1 << 8;
/// Writable APIC_BASE bits: enable and a 36-bit physical base.
const APIC_BASE_WRITABLE: u64 = (1 << 11) | 0x0000_000F_FFFF_F000;
/// MTRRcap: 8 variable ranges, fixed ranges supported (bit 8), write combining (bit 10).
const MTRRCAP_VALUE: u64 = 0x508;
/// Bits of a physical address (36) above the page offset, for MTRR bases and masks.
const MTRR_ADDR_BITS: u64 = 0x0000_000F_FFFF_F000;

/// Configuration that survives a reset (the platform set it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SysConfig {
    pub apic_present: bool,
    pub tsc_source: TscSource,
    /// Epoch of [`TscSource::HostClock`].
    pub epoch: Instant,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig {
            apic_present: false,
            tsc_source: TscSource::default(),
            epoch: Instant::now(),
        }
    }
}

/// System state that is not in the architectural register file.
#[derive(Clone, Debug, Default)]
pub(crate) struct SysState {
    /// NMIs are blocked until the next IRET.
    pub nmi_blocked: bool,
    /// How many "not implemented" lines have been logged.
    pub unimplemented_logged: u32,
    /// How many "unknown MSR" lines have been logged.
    pub msr_logged: u32,
    pub config: SysConfig,
    /// Added to the raw tick count to give the TSC (WRMSR to the TSC sets it).
    pub tsc_offset: u64,
    pub apic_base: u64,
    pub bios_sign_id: u64,
    pub sysenter_cs: u32,
    pub sysenter_esp: u32,
    pub sysenter_eip: u32,
    /// PhysBase0, PhysMask0, ... PhysMask7.
    pub mtrr_var: [u64; 16],
    /// 0x250, 0x258, 0x259, 0x268..=0x26F.
    pub mtrr_fixed: [u64; 11],
    pub mtrr_def_type: u64,
}

impl SysState {
    /// RESET: everything but the platform configuration and log counters.
    pub fn reset(&mut self) {
        let keep = SysState {
            unimplemented_logged: self.unimplemented_logged,
            msr_logged: self.msr_logged,
            config: self.config,
            apic_base: APIC_BASE_RESET,
            ..Default::default()
        };
        *self = keep;
    }
}

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    Some(match i.code() {
        Code::Hlt => hlt,
        Code::Mov_r32_cr => mov_r32_cr,
        Code::Mov_cr_r32 => mov_cr_r32,
        Code::Mov_r32_dr => mov_r32_dr,
        Code::Mov_dr_r32 => mov_dr_r32,
        Code::Lgdt_m1632_16 | Code::Lgdt_m1632 => lgdt,
        Code::Lidt_m1632_16 | Code::Lidt_m1632 => lidt,
        Code::Sgdt_m1632_16 | Code::Sgdt_m1632 => sgdt,
        Code::Sidt_m1632_16 | Code::Sidt_m1632 => sidt,
        Code::Smsw_rm16 | Code::Smsw_r32m16 => smsw,
        Code::Lmsw_rm16 => lmsw,
        Code::Clts => clts,
        Code::Invd | Code::Wbinvd => invd_wbinvd,
        Code::Invlpg_m => invlpg,
        Code::Rdtsc => rdtsc,
        Code::Rdmsr => rdmsr,
        Code::Wrmsr => wrmsr,
        Code::Rdpmc => rdpmc,
        Code::Cpuid => cpuid,
        Code::Sysenter => sysenter,
        Code::Sysexitd => sysexit,
        Code::In_AL_imm8 | Code::In_AX_imm8 | Code::In_EAX_imm8 => in_imm8,
        Code::In_AL_DX | Code::In_AX_DX | Code::In_EAX_DX => in_dx,
        Code::Out_imm8_AL | Code::Out_imm8_AX | Code::Out_imm8_EAX => out_imm8,
        Code::Out_DX_AL | Code::Out_DX_AX | Code::Out_DX_EAX => out_dx,
        Code::Ud2 | Code::Ud0 | Code::Ud1_r16_rm16 | Code::Ud1_r32_rm32 => ud,
        _ => return None,
    })
}

// ---- public API for the platform, loaders and tests ----

impl Cpu {
    /// What CPUID reports on this CPU.
    pub fn cpuid_info(&self) -> CpuidInfo {
        let apic = if self.sys.config.apic_present {
            cpuid_edx::APIC
        } else {
            0
        };
        CpuidInfo {
            vendor: *b"GenuineIntel",
            max_leaf: CPUID_MAX_LEAF,
            signature: CPUID_SIGNATURE,
            features_edx: cpuid_edx::FEATURES_EDX | apic,
            features_ecx: 0,
            leaf2: CPUID_LEAF2,
        }
    }

    /// Whether the platform has a local APIC: CPUID then reports it and the
    /// APIC_BASE MSR exists. Survives reset.
    pub fn set_apic_present(&mut self, present: bool) {
        self.sys.config.apic_present = present;
    }

    /// The APIC_BASE MSR (base address in bits 12..35, global enable in
    /// bit 11), for the platform's local APIC model.
    pub fn apic_base(&self) -> u64 {
        self.sys.apic_base
    }

    /// Chooses where the TSC comes from; the count carries on from its
    /// current value. Survives reset.
    pub fn set_tsc_source(&mut self, source: TscSource) {
        let now = self.tsc();
        self.sys.config.tsc_source = source;
        self.sys.config.epoch = Instant::now();
        self.set_tsc(now);
    }

    /// The time-stamp counter.
    pub fn tsc(&self) -> u64 {
        self.raw_ticks().wrapping_add(self.sys.tsc_offset)
    }

    /// Sets the time-stamp counter (WRMSR to the TSC, saved-state restore).
    pub fn set_tsc(&mut self, value: u64) {
        self.sys.tsc_offset = value.wrapping_sub(self.raw_ticks());
    }

    /// Reads an MSR as RDMSR would at CPL 0 (`None` where RDMSR raises #GP).
    pub fn read_msr(&self, index: u32) -> Option<u64> {
        let s = &self.sys;
        Some(match index {
            msr::TSC => self.tsc(),
            // Bits 52:50 name the platform (slot 1); 0 is what a
            // Pentium II reports on most boards.
            msr::PLATFORM_ID => 0,
            msr::APIC_BASE if s.config.apic_present => s.apic_base,
            msr::EBL_CR_POWERON => 0,
            msr::BIOS_SIGN_ID => s.bios_sign_id,
            msr::MTRRCAP => MTRRCAP_VALUE,
            msr::SYSENTER_CS => s.sysenter_cs as u64,
            msr::SYSENTER_ESP => s.sysenter_esp as u64,
            msr::SYSENTER_EIP => s.sysenter_eip as u64,
            msr::MTRR_PHYS_BASE0..=msr::MTRR_PHYS_MASK7 => {
                s.mtrr_var[(index - msr::MTRR_PHYS_BASE0) as usize]
            }
            msr::MTRR_DEF_TYPE => s.mtrr_def_type,
            _ => s.mtrr_fixed[fixed_mtrr_slot(index)?],
        })
    }

    /// Writes an MSR as WRMSR would at CPL 0; `Err` where WRMSR raises #GP
    /// (unknown or read-only MSR, reserved bits, invalid memory type).
    pub fn write_msr(&mut self, index: u32, value: u64) -> Result<()> {
        let s = &mut self.sys;
        match index {
            // P6: only the low 32 bits can be written; the high half is cleared.
            msr::TSC => self.set_tsc(value & 0xFFFF_FFFF),
            msr::APIC_BASE if s.config.apic_present => {
                if value & !(APIC_BASE_WRITABLE | APIC_BASE_BSP) != 0 {
                    return Err(Fault::GP0);
                }
                s.apic_base = (value & APIC_BASE_WRITABLE) | (s.apic_base & APIC_BASE_BSP);
            }
            // Writes are accepted and ignored (power-on configuration).
            msr::EBL_CR_POWERON => {}
            // A microcode update request: there is no microcode to update.
            msr::BIOS_UPDT_TRIG => {}
            msr::BIOS_SIGN_ID => s.bios_sign_id = value,
            msr::SYSENTER_CS => s.sysenter_cs = value as u32,
            msr::SYSENTER_ESP => s.sysenter_esp = value as u32,
            msr::SYSENTER_EIP => s.sysenter_eip = value as u32,
            msr::MTRR_PHYS_BASE0..=msr::MTRR_PHYS_MASK7 => {
                let n = (index - msr::MTRR_PHYS_BASE0) as usize;
                let ok = if n.is_multiple_of(2) {
                    value & !(MTRR_ADDR_BITS | 0xFF) == 0 && memory_type_ok(value as u8)
                } else {
                    value & !(MTRR_ADDR_BITS | 1 << 11) == 0
                };
                if !ok {
                    return Err(Fault::GP0);
                }
                s.mtrr_var[n] = value;
            }
            msr::MTRR_DEF_TYPE => {
                if value & !0xCFF != 0 || !memory_type_ok(value as u8) {
                    return Err(Fault::GP0);
                }
                s.mtrr_def_type = value;
            }
            _ => {
                let slot = fixed_mtrr_slot(index).ok_or(Fault::GP0)?;
                if !value.to_le_bytes().iter().all(|&t| memory_type_ok(t)) {
                    return Err(Fault::GP0);
                }
                s.mtrr_fixed[slot] = value;
            }
        }
        Ok(())
    }

    /// Ticks since the source's epoch, before the offset.
    fn raw_ticks(&self) -> u64 {
        match self.sys.config.tsc_source {
            TscSource::Instructions {
                ticks_per_instruction,
            } => self.icount.wrapping_mul(ticks_per_instruction),
            TscSource::HostClock { hz } => {
                let ns = self.sys.config.epoch.elapsed().as_nanos();
                (ns * hz as u128 / 1_000_000_000) as u64
            }
        }
    }

    /// Rate-limited operator line for an MSR access that raises #GP.
    fn note_bad_msr(&mut self, what: &str, index: u32, value: u64) {
        if self.sys.msr_logged < 64 {
            self.sys.msr_logged += 1;
            tracing::warn!(
                target: "bulkhead::cpu",
                "{what} of unknown or read-only MSR {index:#x} (value {value:#x}) at {:04x}:{:08x}: #GP",
                self.segs[Seg::CS as usize].selector,
                self.eip
            );
        }
    }

    /// Whether IN/OUT/INS/OUTS may touch `bytes` bytes at `port` here:
    /// always at CPL <= IOPL in protected mode (never IOPL-checked in real
    /// mode); otherwise, and always in v86 mode, through the TSS I/O
    /// permission bitmap. #GP(0) when denied.
    pub(crate) fn io_allowed(&mut self, port: u16, bytes: u32) -> Result<()> {
        if !self.protected_mode() {
            return Ok(());
        }
        let iopl = ((self.flags.get() & flags::IOPL) >> 12) as u8;
        if !self.v86_mode() && self.cpl <= iopl {
            return Ok(());
        }
        // The bitmap exists only in a 32-bit TSS (available 9 or busy 11)
        // that reaches its base field.
        let tr = self.tr;
        if !matches!(tr.system_type(), Some(9 | 11)) || tr.limit < 0x67 {
            return Err(Fault::GP0);
        }
        let map = self.read_sys_u16(tr.base.wrapping_add(0x66))? as u32;
        // The processor reads two bytes so that accesses straddling a byte
        // of the map are checked in one go; both must be inside the limit.
        let at = map + (port as u32 >> 3);
        if at + 1 > tr.limit {
            return Err(Fault::GP0);
        }
        let bits = self.read_sys_u16(tr.base.wrapping_add(at))? as u32;
        let mask = ((1u32 << bytes) - 1) << (port & 7);
        if bits & mask != 0 {
            return Err(Fault::GP0);
        }
        Ok(())
    }
}

/// Valid MTRR memory types: UC, WC, WT, WP, WB.
fn memory_type_ok(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// Index into `mtrr_fixed` for a fixed-range MTRR.
fn fixed_mtrr_slot(index: u32) -> Option<usize> {
    match index {
        msr::MTRR_FIX64K_00000 => Some(0),
        msr::MTRR_FIX16K_80000 => Some(1),
        msr::MTRR_FIX16K_A0000 => Some(2),
        msr::MTRR_FIX4K_C0000..=msr::MTRR_FIX4K_F8000 => {
            Some(3 + (index - msr::MTRR_FIX4K_C0000) as usize)
        }
        _ => None,
    }
}

/// #GP(0) unless CPL 0 (real mode is CPL 0, v86 mode CPL 3).
#[inline]
fn require_cpl0(cpu: &Cpu) -> Result<()> {
    if cpu.cpl != 0 {
        return Err(Fault::GP0);
    }
    Ok(())
}

/// HLT: stop until an interrupt (#GP(0) unless CPL 0).
fn hlt(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    cpu.halted = true;
    cpu.stop_block = true;
    Ok(())
}

/// UD2 (and UD0/UD1): the defined invalid opcodes.
fn ud(_: &mut Cpu, _: &Insn) -> Result<()> {
    Err(Fault::UD)
}

/// MOV r32, CR0/CR2/CR3/CR4.
fn mov_r32_cr(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let v = match d.r1 {
        0 => cpu.cr0,
        2 => cpu.cr2,
        3 => cpu.cr3,
        4 => cpu.cr4,
        _ => return Err(Fault::UD),
    };
    require_cpl0(cpu)?;
    cpu.set_reg32(d.r0, v);
    Ok(())
}

/// MOV CR0/CR2/CR3/CR4, r32.
fn mov_cr_r32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if !matches!(d.r0, 0 | 2 | 3 | 4) {
        return Err(Fault::UD);
    }
    require_cpl0(cpu)?;
    let v = cpu.reg32(d.r1);
    match d.r0 {
        0 => {
            // Reserved bits are ignored (they read back as 0).
            let v = v & CR0_SUPPORTED;
            if (v & cr0::PG != 0 && v & cr0::PE == 0) || (v & cr0::NW != 0 && v & cr0::CD == 0) {
                return Err(Fault::GP0);
            }
            cpu.set_cr0(v);
        }
        2 => cpu.cr2 = v,
        // Bits 0-2 and 5-11 are ignored by 32-bit paging; PWT and PCD are kept.
        3 => cpu.load_cr3(v & 0xFFFF_F018),
        _ => {
            if v & !CR4_SUPPORTED != 0 {
                return Err(Fault::GP0);
            }
            cpu.set_cr4(v);
        }
    }
    Ok(())
}

/// Common checks of MOV to and from a debug register: the register number
/// after DR4/DR5 aliasing (#UD with CR4.DE), CPL 0, and the general-detect
/// fault (DR7.GD: #DB with DR6.BD, GD cleared so the handler can use the
/// debug registers).
fn debug_reg(cpu: &mut Cpu, n: u8) -> Result<usize> {
    let n = match n {
        4 | 5 if cpu.cr4 & cr4::DE != 0 => return Err(Fault::UD),
        4 | 5 => n + 2,
        0..=7 => n,
        _ => return Err(Fault::UD),
    };
    require_cpl0(cpu)?;
    const GD: u32 = 1 << 13;
    const BD: u32 = 1 << 13;
    if cpu.dr[7] & GD != 0 {
        cpu.dr[6] |= BD;
        cpu.dr[7] &= !GD;
        return Err(Fault::DB);
    }
    Ok(n as usize)
}

/// MOV r32, DR0-DR7.
fn mov_r32_dr(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let n = debug_reg(cpu, d.r1)?;
    cpu.set_reg32(d.r0, cpu.dr[n]);
    Ok(())
}

/// MOV DR0-DR7, r32. Breakpoints are stored, not yet armed: the
/// address-match hardware is not modelled.
fn mov_dr_r32(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let n = debug_reg(cpu, d.r0)?;
    let v = cpu.reg32(d.r1);
    cpu.dr[n] = match n {
        // Reserved bits 4-11 and 16-31 of DR6 read as 1, bit 12 as 0 (P6).
        6 => (v & 0x0000_E00F) | 0xFFFF_0FF0,
        // DR7 bit 10 reads as 1; bits 11, 12, 14, 15 as 0.
        7 => (v & 0xFFFF_23FF) | 0x400,
        _ => v,
    };
    Ok(())
}

/// Reads the 6-byte pseudo-descriptor of LGDT/LIDT. A 16-bit operand
/// size loads only 24 bits of base.
fn read_pseudo_descriptor(cpu: &mut Cpu, d: &Insn) -> Result<TableReg> {
    let off = cpu.ea(d);
    let limit = cpu.read_u16(d.seg, off)?;
    let base = cpu.read_u32(d.seg, off.wrapping_add(2) & d.amask)?;
    let base = if d.i.code() == Code::Lgdt_m1632_16 || d.i.code() == Code::Lidt_m1632_16 {
        base & 0x00FF_FFFF
    } else {
        base
    };
    Ok(TableReg { base, limit })
}

/// Writes the 6-byte pseudo-descriptor of SGDT/SIDT, checking all six
/// bytes before writing any. With a 16-bit operand size the top byte of
/// the base is stored as 0 (386 and later; the 286 stored 0xFF).
fn write_pseudo_descriptor(cpu: &mut Cpu, d: &Insn, t: TableReg) -> Result<()> {
    let off = cpu.ea(d);
    let base = if d.i.code() == Code::Sgdt_m1632_16 || d.i.code() == Code::Sidt_m1632_16 {
        t.base & 0x00FF_FFFF
    } else {
        t.base
    };
    let lin = cpu.seg_check(d.seg, off, 6, super::segment::rights::WRITE)?;
    let user = cpu.cpl == 3;
    cpu.prepare_write(lin, 6, user)?;
    cpu.write_lin_u16(lin, t.limit, user)?;
    cpu.write_lin_u32(lin.wrapping_add(2), base, user)
}

/// LGDT m16&32.
fn lgdt(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    cpu.gdtr = read_pseudo_descriptor(cpu, d)?;
    Ok(())
}

/// LIDT m16&32.
fn lidt(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    cpu.idtr = read_pseudo_descriptor(cpu, d)?;
    Ok(())
}

/// SGDT m: not privileged on this CPU (no UMIP).
fn sgdt(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    write_pseudo_descriptor(cpu, d, cpu.gdtr)
}

/// SIDT m.
fn sidt(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    write_pseudo_descriptor(cpu, d, cpu.idtr)
}

/// SMSW r/m16, SMSW r32/m16: a 32-bit register gets all of CR0 (as P6
/// processors do), a 16-bit register or memory its low word.
fn smsw(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    if d.i.op0_kind() == OpKind::Register && d.i.code() == Code::Smsw_r32m16 {
        cpu.set_reg32(d.r0, cpu.cr0);
        return Ok(());
    }
    cpu.write_rm(d, 2, cpu.cr0 & 0xFFFF)
}

/// LMSW r/m16: loads PE, MP, EM and TS; it can set PE but never clear it.
fn lmsw(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    let src = cpu.read_rm(d, 0, 2)?;
    let low = cr0::PE | cr0::MP | cr0::EM | cr0::TS;
    let v = (cpu.cr0 & !low) | (src & low) | (cpu.cr0 & cr0::PE);
    cpu.set_cr0(v);
    Ok(())
}

/// CLTS: clears CR0.TS.
fn clts(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    cpu.cr0 &= !cr0::TS;
    Ok(())
}

/// INVD, WBINVD: caches are not modelled; only the privilege check remains.
fn invd_wbinvd(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    require_cpl0(cpu)
}

/// INVLPG m: drops the TLB entries for the page holding the operand's
/// linear address (no segment checks: it is a translation hint).
fn invlpg(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    let lin = cpu.segs[d.seg as usize].base.wrapping_add(cpu.ea(d));
    cpu.tlb.flush_page(lin);
    cpu.stop_block = true;
    Ok(())
}

/// RDTSC: EDX:EAX = TSC; #GP(0) outside CPL 0 when CR4.TSD is set.
fn rdtsc(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    if cpu.cr4 & cr4::TSD != 0 && cpu.protected_mode() && cpu.cpl != 0 {
        return Err(Fault::GP0);
    }
    let t = cpu.tsc();
    cpu.regs[reg::EAX] = t as u32;
    cpu.regs[reg::EDX] = (t >> 32) as u32;
    Ok(())
}

/// RDPMC: #GP(0) outside CPL 0 unless CR4.PCE, or for a counter other than
/// 0 and 1. Performance counters are not modelled: both read 0.
fn rdpmc(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    if cpu.cr4 & cr4::PCE == 0 && cpu.protected_mode() && cpu.cpl != 0 {
        return Err(Fault::GP0);
    }
    if cpu.regs[reg::ECX] > 1 {
        return Err(Fault::GP0);
    }
    cpu.regs[reg::EAX] = 0;
    cpu.regs[reg::EDX] = 0;
    Ok(())
}

/// RDMSR: EDX:EAX = MSR[ECX].
fn rdmsr(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    let index = cpu.regs[reg::ECX];
    let Some(v) = cpu.read_msr(index) else {
        cpu.note_bad_msr("RDMSR", index, 0);
        return Err(Fault::GP0);
    };
    cpu.regs[reg::EAX] = v as u32;
    cpu.regs[reg::EDX] = (v >> 32) as u32;
    Ok(())
}

/// WRMSR: MSR[ECX] = EDX:EAX.
fn wrmsr(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    require_cpl0(cpu)?;
    let index = cpu.regs[reg::ECX];
    let v = (cpu.regs[reg::EDX] as u64) << 32 | cpu.regs[reg::EAX] as u64;
    if let Err(f) = cpu.write_msr(index, v) {
        cpu.note_bad_msr("WRMSR", index, v);
        return Err(f);
    }
    Ok(())
}

/// CPUID: EAX, EBX, ECX, EDX for leaf EAX.
fn cpuid(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let [a, b, c, d] = cpu.cpuid_info().query(cpu.regs[reg::EAX]);
    cpu.regs[reg::EAX] = a;
    cpu.regs[reg::EBX] = b;
    cpu.regs[reg::ECX] = c;
    cpu.regs[reg::EDX] = d;
    Ok(())
}

/// A flat 4 GiB segment cache as SYSENTER/SYSEXIT load it: `code`
/// selects execute/read (type 11) or read/write (type 3), accessed.
fn flat_segment(selector: u16, code: bool, dpl: u8) -> SegCache {
    let ty: u64 = if code { 0xB } else { 0x3 };
    let access = ty | 0x10 | (dpl as u64) << 5 | 0x80;
    // Limit FFFFF with G and D/B set, base 0.
    let raw = 0xFFFF | 0xF << 48 | access << 40 | 0xC << 52;
    SegCache::from_descriptor(selector, raw)
}

/// SYSENTER: to CPL 0 through SYSENTER_CS/ESP/EIP, with VM, IF and RF
/// cleared. #GP(0) in real mode or when SYSENTER_CS is null.
fn sysenter(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let cs = cpu.sys.sysenter_cs as u16 & 0xFFFC;
    if !cpu.protected_mode() || cs == 0 {
        return Err(Fault::GP0);
    }
    cpu.flags
        .set_control(flags::VM | flags::IF | flags::RF, false);
    cpu.segs[Seg::CS as usize] = flat_segment(cs, true, 0);
    cpu.segs[Seg::SS as usize] = flat_segment(cs.wrapping_add(8), false, 0);
    cpu.put_cpl(0);
    cpu.regs[reg::ESP] = cpu.sys.sysenter_esp;
    cpu.next_eip = cpu.sys.sysenter_eip;
    cpu.update_mode();
    Ok(())
}

/// SYSEXIT: to CPL 3 at EDX with ESP = ECX, CS = SYSENTER_CS + 16 and
/// SS = SYSENTER_CS + 24 (RPL 3). #GP(0) unless protected mode at CPL 0
/// with a non-null SYSENTER_CS.
fn sysexit(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    let base = cpu.sys.sysenter_cs as u16 & 0xFFFC;
    if !cpu.protected_mode() || cpu.cpl != 0 || base == 0 {
        return Err(Fault::GP0);
    }
    cpu.segs[Seg::CS as usize] = flat_segment(base.wrapping_add(16) | 3, true, 3);
    cpu.segs[Seg::SS as usize] = flat_segment(base.wrapping_add(24) | 3, false, 3);
    cpu.put_cpl(3);
    cpu.regs[reg::ESP] = cpu.regs[reg::ECX];
    cpu.next_eip = cpu.regs[reg::EDX];
    cpu.update_mode();
    Ok(())
}

/// Width in bytes of an IN/OUT's accumulator.
fn io_bytes(code: Code) -> u32 {
    match code {
        Code::In_AL_imm8 | Code::In_AL_DX | Code::Out_imm8_AL | Code::Out_DX_AL => 1,
        Code::In_AX_imm8 | Code::In_AX_DX | Code::Out_imm8_AX | Code::Out_DX_AX => 2,
        _ => 4,
    }
}

fn port_in(cpu: &mut Cpu, port: u16, bytes: u32) -> Result<()> {
    cpu.io_allowed(port, bytes)?;
    let v = cpu.bus.port_read(port, IoSize::from_bytes(bytes));
    cpu.set_reg_sized(reg::EAX as u8, bytes, v);
    Ok(())
}

fn port_out(cpu: &mut Cpu, port: u16, bytes: u32) -> Result<()> {
    cpu.io_allowed(port, bytes)?;
    let v = cpu.reg_sized(reg::EAX as u8, bytes);
    cpu.bus.port_write(port, IoSize::from_bytes(bytes), v);
    Ok(())
}

/// IN AL/AX/EAX, imm8.
fn in_imm8(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    port_in(cpu, d.imm as u8 as u16, io_bytes(d.i.code()))
}

/// IN AL/AX/EAX, DX.
fn in_dx(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let port = cpu.regs[reg::EDX] as u16;
    port_in(cpu, port, io_bytes(d.i.code()))
}

/// OUT imm8, AL/AX/EAX.
fn out_imm8(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    port_out(cpu, d.imm as u8 as u16, io_bytes(d.i.code()))
}

/// OUT DX, AL/AX/EAX.
fn out_dx(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    let port = cpu.regs[reg::EDX] as u16;
    port_out(cpu, port, io_bytes(d.i.code()))
}

impl Cpu {
    /// The task register's descriptor cache.
    pub fn tr_cache(&self) -> SegCache {
        self.tr
    }

    /// Loads the task register from a ready-made descriptor cache
    /// (loaders and tests that build protected-mode state by hand).
    pub fn set_tr_cache(&mut self, cache: SegCache) {
        self.tr = cache;
    }
}

impl Cpu {
    /// Leaves the HLT state without an interrupt (debuggers and tests
    /// resuming the CPU at the instruction after HLT, or at a new EIP).
    pub fn wake(&mut self) {
        self.halted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::NullBus;
    use crate::memory::PhysMemory;

    const TSS: u32 = 0x3000;

    /// A CPU in protected mode at CPL 3, IOPL 0, with a 32-bit TSS whose
    /// bitmap (at TSS+0x68) allows every port and ends at `limit`.
    fn cpu_with_tss(ty: u8, limit: u32) -> Cpu {
        let mut cpu = Cpu::new(PhysMemory::new(1 << 20).unwrap(), Box::new(NullBus));
        cpu.set_cr0(cr0::PE);
        cpu.set_cpl(3);
        cpu.write_phys_bytes(TSS + 0x66, &0x68u16.to_le_bytes());
        let raw = (limit as u64 & 0xFFFF)
            | (TSS as u64) << 16
            | (0x80 | ty as u64) << 40
            | ((limit as u64 >> 16) & 0xF) << 48;
        cpu.set_tr_cache(SegCache::from_descriptor(0x28, raw));
        cpu
    }

    fn deny(cpu: &mut Cpu, port: u16) {
        let at = TSS + 0x68 + (port as u32 >> 3);
        let mut b = [0u8];
        cpu.read_phys_bytes(at, &mut b);
        cpu.write_phys_bytes(at, &[b[0] | 1 << (port & 7)]);
    }

    #[test]
    fn io_is_always_allowed_in_real_mode() {
        let mut cpu = cpu_with_tss(0xB, 0x67);
        cpu.set_cr0(0);
        assert_eq!(cpu.io_allowed(0x80, 4), Ok(()));
    }

    #[test]
    fn io_bitmap_allows_clear_ports_and_denies_set_ones() {
        let mut cpu = cpu_with_tss(0xB, 0x68 + 0x2000);
        deny(&mut cpu, 0x61);
        assert_eq!(cpu.io_allowed(0x60, 1), Ok(()));
        assert_eq!(cpu.io_allowed(0x61, 1), Err(Fault::GP0));
        assert_eq!(
            cpu.io_allowed(0x60, 2),
            Err(Fault::GP0),
            "second byte denied"
        );
        assert_eq!(cpu.io_allowed(0x5E, 2), Ok(()));
    }

    #[test]
    fn io_bitmap_checks_straddle_a_bitmap_byte() {
        let mut cpu = cpu_with_tss(0xB, 0x68 + 0x2000);
        deny(&mut cpu, 0x400);
        assert_eq!(cpu.io_allowed(0x3FE, 2), Ok(()));
        assert_eq!(cpu.io_allowed(0x3FE, 4), Err(Fault::GP0));
    }

    #[test]
    fn io_bitmap_bytes_beyond_the_tss_limit_deny() {
        // The limit ends the map after the byte of ports 0x3F8..0x3FF; the
        // word read for those ports needs the byte after it.
        let mut cpu = cpu_with_tss(0xB, 0x68 + 0x7F);
        assert_eq!(cpu.io_allowed(0x3F0, 1), Ok(()));
        assert_eq!(cpu.io_allowed(0x3F8, 1), Err(Fault::GP0));
        assert_eq!(cpu.io_allowed(0x400, 1), Err(Fault::GP0));
    }

    #[test]
    fn io_without_a_32_bit_tss_is_denied_below_iopl() {
        let mut cpu = cpu_with_tss(0x3, 0x68 + 0x2000); // busy 16-bit TSS
        assert_eq!(cpu.io_allowed(0x80, 1), Err(Fault::GP0));
        let mut cpu = cpu_with_tss(0xB, 0x65); // too short for the map base
        assert_eq!(cpu.io_allowed(0x80, 1), Err(Fault::GP0));
    }

    #[test]
    fn iopl_allows_protected_mode_but_not_v86_mode() {
        let mut cpu = cpu_with_tss(0xB, 0x68 + 0x2000);
        deny(&mut cpu, 0x80);
        cpu.set_eflags(flags::IOPL | flags::FIXED1);
        assert_eq!(cpu.io_allowed(0x80, 1), Ok(()));
        cpu.set_eflags(flags::IOPL | flags::VM | flags::FIXED1);
        assert_eq!(cpu.io_allowed(0x80, 1), Err(Fault::GP0));
        assert_eq!(cpu.io_allowed(0x81, 1), Ok(()));
    }

    #[test]
    fn msrs_reset_but_platform_configuration_survives() {
        let mut cpu = cpu_with_tss(0xB, 0x67);
        cpu.set_apic_present(true);
        cpu.write_msr(msr::SYSENTER_CS, 8).unwrap();
        cpu.write_msr(msr::APIC_BASE, 0xFEC0_0000).unwrap();
        cpu.icount = 1000;
        cpu.reset();
        assert_eq!(cpu.read_msr(msr::SYSENTER_CS), Some(0));
        assert_eq!(cpu.apic_base(), 0xFEE0_0900);
        assert_eq!(cpu.tsc(), 0, "RESET zeroes the TSC");
    }

    #[test]
    fn apic_base_rejects_reserved_bits() {
        let mut cpu = cpu_with_tss(0xB, 0x67);
        cpu.set_apic_present(true);
        assert_eq!(cpu.write_msr(msr::APIC_BASE, 0xFEE0_0001), Err(Fault::GP0));
        assert_eq!(cpu.write_msr(msr::APIC_BASE, 1 << 40), Err(Fault::GP0));
    }
}
