//! String instructions: MOVS, CMPS, SCAS, LODS, STOS, INS, OUTS in every
//! width and address size, with REP / REPE / REPNE.
//!
//! One iteration reads and writes through the normal access paths and
//! updates (E)SI/(E)DI/(E)CX only once it has succeeded, so a fault in the
//! middle of a REP leaves the registers describing exactly the work done
//! and the instruction restarts from there.
//!
//! A REP runs at most [`REP_BATCH`] iterations per execution; if count
//! remains, `next_eip` stays on the instruction and the block ends, so the
//! run loop can take interrupts before it carries on. REP MOVS and REP
//! STOS with DF = 0 copy or fill whole runs within a page straight in the
//! backing store when both pages have direct TLB entries; a page with
//! cached code or MMIO has no direct write entry, so those writes still
//! take the normal path (and self-modifying code stays correct).

use iced_x86::{Code, Instruction, OpKind};

use super::exec::{Handler, Insn};
use super::fault::Result;
use super::flags::{self, size_mask};
use super::paging::tlb_index;
use super::segment::rights;
use super::{Cpu, Seg, reg};
use crate::bus::IoSize;

/// Most iterations of a REP between two looks at pending interrupts.
pub(crate) const REP_BATCH: u32 = 16384;

/// No prefix, REP/REPE (F3), REPNE (F2).
const NONE: u8 = 0;
const REPE: u8 = 1;
const REPNE: u8 = 2;

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    use Code::*;
    let a32 = (0..i.op_count()).any(|n| {
        matches!(
            i.op_kind(n),
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI
        )
    });
    let rep = if i.has_repe_prefix() {
        REPE
    } else if i.has_repne_prefix() {
        REPNE
    } else {
        NONE
    };
    macro_rules! pick {
        ($op:ty, $b:literal) => {
            match (a32, rep) {
                (false, NONE) => run::<$op, $b, false, NONE>,
                (false, REPE) => run::<$op, $b, false, REPE>,
                (false, _) => run::<$op, $b, false, REPNE>,
                (true, NONE) => run::<$op, $b, true, NONE>,
                (true, REPE) => run::<$op, $b, true, REPE>,
                (true, _) => run::<$op, $b, true, REPNE>,
            }
        };
    }
    Some(match i.code() {
        Movsb_m8_m8 => pick!(Movs, 1),
        Movsw_m16_m16 => pick!(Movs, 2),
        Movsd_m32_m32 => pick!(Movs, 4),
        Cmpsb_m8_m8 => pick!(Cmps, 1),
        Cmpsw_m16_m16 => pick!(Cmps, 2),
        Cmpsd_m32_m32 => pick!(Cmps, 4),
        Scasb_AL_m8 => pick!(Scas, 1),
        Scasw_AX_m16 => pick!(Scas, 2),
        Scasd_EAX_m32 => pick!(Scas, 4),
        Lodsb_AL_m8 => pick!(Lods, 1),
        Lodsw_AX_m16 => pick!(Lods, 2),
        Lodsd_EAX_m32 => pick!(Lods, 4),
        Stosb_m8_AL => pick!(Stos, 1),
        Stosw_m16_AX => pick!(Stos, 2),
        Stosd_m32_EAX => pick!(Stos, 4),
        Insb_m8_DX => pick!(Ins, 1),
        Insw_m16_DX => pick!(Ins, 2),
        Insd_m32_DX => pick!(Ins, 4),
        Outsb_DX_m8 => pick!(Outs, 1),
        Outsw_DX_m16 => pick!(Outs, 2),
        Outsd_DX_m32 => pick!(Outs, 4),
        _ => return None,
    })
}

/// One string operation. `B` is the element size, `A32` the address size.
trait StrOp {
    /// Whether REPE/REPNE look at ZF (CMPS, SCAS) rather than meaning REP.
    const COMPARES: bool = false;
    /// Port I/O: the permission check comes first.
    const IO: bool = false;
    /// One iteration, including the (E)SI/(E)DI update.
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()>;
    /// Up to `max` iterations straight in host memory (DF = 0); the number
    /// done, or `None` when the fast path does not apply here.
    fn fast<const B: u32, const A32: bool>(cpu: &mut Cpu, d: &Insn, max: u32) -> Option<u32> {
        let _ = (cpu, d, max);
        None
    }
}

#[inline(always)]
const fn amask<const A32: bool>() -> u32 {
    if A32 { u32::MAX } else { 0xFFFF }
}

impl Cpu {
    /// (E)SI or (E)DI at the address size.
    #[inline(always)]
    fn index<const A32: bool>(&self, r: usize) -> u32 {
        self.regs[r] & amask::<A32>()
    }

    /// Steps (E)SI or (E)DI by `n` elements of `B` bytes in the DF direction.
    #[inline(always)]
    fn advance<const B: u32, const A32: bool>(&mut self, r: usize, n: u32) {
        let m = amask::<A32>();
        let delta = (B * n).wrapping_mul(if self.flags.test(flags::DF) {
            u32::MAX
        } else {
            1
        });
        let v = self.regs[r];
        self.regs[r] = (v & !m) | (v.wrapping_add(delta) & m);
    }

    /// How many elements of `B` bytes at `seg:off` onwards (ascending)
    /// stay inside the segment (with `need` rights), the address-size
    /// wrap and the page, capped at `max`. Zero when even the first does
    /// not.
    #[inline(always)]
    fn run_room<const B: u32, const A32: bool>(
        &self,
        seg: Seg,
        off: u32,
        need: u8,
        max: u32,
    ) -> u32 {
        let s = &self.segs[seg as usize];
        if s.rights & need != need || off < s.lo || off > s.hi {
            return 0;
        }
        let lin = s.base.wrapping_add(off);
        let top = (s.hi as u64).min(amask::<A32>() as u64);
        let in_seg = (top + 1 - off as u64) / B as u64;
        let in_page = (0x1000 - (lin & 0xFFF)) / B;
        in_seg.min(in_page as u64).min(max as u64) as u32
    }
}

/// Runs a string instruction: once, or as a REP loop of at most
/// [`REP_BATCH`] iterations per execution.
fn run<Op: StrOp, const B: u32, const A32: bool, const REP: u8>(
    cpu: &mut Cpu,
    d: &Insn,
) -> Result<()> {
    if REP == NONE {
        if Op::IO {
            cpu.io_allowed(cpu.reg16(reg::EDX as u8), B)?;
        }
        return Op::once::<B, A32>(cpu, d);
    }
    let m = amask::<A32>();
    let mut count = cpu.regs[reg::ECX] & m;
    if count == 0 {
        return Ok(());
    }
    if Op::IO {
        cpu.io_allowed(cpu.reg16(reg::EDX as u8), B)?;
    }
    let single_step = cpu.flags.test(flags::TF);
    let mut budget = if single_step { 1 } else { REP_BATCH };
    loop {
        let done = if !single_step && !cpu.flags.test(flags::DF) {
            Op::fast::<B, A32>(cpu, d, count.min(budget))
        } else {
            None
        };
        let n = match done {
            Some(n) => n,
            None => {
                Op::once::<B, A32>(cpu, d)?;
                1
            }
        };
        count -= n;
        cpu.regs[reg::ECX] = (cpu.regs[reg::ECX] & !m) | count;
        if count == 0 {
            return Ok(());
        }
        if Op::COMPARES && cpu.flags.zf() != (REP == REPE) {
            return Ok(());
        }
        budget = budget.saturating_sub(n);
        if budget == 0 {
            // Come back to this instruction after the interrupt check.
            cpu.next_eip = cpu.eip;
            cpu.stop_block = true;
            return Ok(());
        }
    }
}

/// MOVS m8/m16/m32: [ES:(E)DI] ← [seg:(E)SI].
struct Movs;
impl StrOp for Movs {
    #[inline(always)]
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
        let v = cpu.read_sized(d.seg, cpu.index::<A32>(reg::ESI), B)?;
        cpu.write_sized(Seg::ES, cpu.index::<A32>(reg::EDI), B, v)?;
        cpu.advance::<B, A32>(reg::ESI, 1);
        cpu.advance::<B, A32>(reg::EDI, 1);
        Ok(())
    }

    fn fast<const B: u32, const A32: bool>(cpu: &mut Cpu, d: &Insn, max: u32) -> Option<u32> {
        let si = cpu.index::<A32>(reg::ESI);
        let di = cpu.index::<A32>(reg::EDI);
        let n = cpu.run_room::<B, A32>(d.seg, si, rights::READ, max);
        let n = cpu.run_room::<B, A32>(Seg::ES, di, rights::WRITE, n);
        if n == 0 {
            return None;
        }
        let user = cpu.cpl == 3;
        let src = cpu.segs[d.seg as usize].base.wrapping_add(si);
        let dst = cpu.segs[Seg::ES as usize].base.wrapping_add(di);
        let se = &cpu.tlb.sets[user as usize][tlb_index(src)];
        let de = &cpu.tlb.sets[user as usize][tlb_index(dst)];
        if se.rtag != src & !0xFFF || de.wtag != dst & !0xFFF {
            return None;
        }
        let so = src.wrapping_add(se.addend) as usize;
        let dof = dst.wrapping_add(de.addend) as usize;
        let len = (n * B) as usize;
        let mem = &mut cpu.mem.backing;
        if dof > so && dof < so + len {
            // Overlapping forwards: element by element, as the hardware
            // does (this is how `rep movsb` replicates a pattern).
            for k in (0..len).step_by(B as usize) {
                mem.copy_within(so + k..so + k + B as usize, dof + k);
            }
        } else {
            mem.copy_within(so..so + len, dof);
        }
        cpu.advance::<B, A32>(reg::ESI, n);
        cpu.advance::<B, A32>(reg::EDI, n);
        Some(n)
    }
}

/// CMPS m8/m16/m32: compares [seg:(E)SI] with [ES:(E)DI] (source minus
/// destination).
struct Cmps;
impl StrOp for Cmps {
    const COMPARES: bool = true;
    #[inline(always)]
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
        let a = cpu.read_sized(d.seg, cpu.index::<A32>(reg::ESI), B)?;
        let b = cpu.read_sized(Seg::ES, cpu.index::<A32>(reg::EDI), B)?;
        cpu.flags
            .sub(B, a, b, false, a.wrapping_sub(b) & size_mask(B));
        cpu.advance::<B, A32>(reg::ESI, 1);
        cpu.advance::<B, A32>(reg::EDI, 1);
        Ok(())
    }
}

/// SCAS m8/m16/m32: compares AL/AX/EAX with [ES:(E)DI].
struct Scas;
impl StrOp for Scas {
    const COMPARES: bool = true;
    #[inline(always)]
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
        let a = cpu.reg_sized(reg::EAX as u8, B);
        let b = cpu.read_sized(Seg::ES, cpu.index::<A32>(reg::EDI), B)?;
        cpu.flags
            .sub(B, a, b, false, a.wrapping_sub(b) & size_mask(B));
        cpu.advance::<B, A32>(reg::EDI, 1);
        Ok(())
    }
}

/// LODS m8/m16/m32: AL/AX/EAX ← [seg:(E)SI].
struct Lods;
impl StrOp for Lods {
    #[inline(always)]
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
        let v = cpu.read_sized(d.seg, cpu.index::<A32>(reg::ESI), B)?;
        cpu.set_reg_sized(reg::EAX as u8, B, v);
        cpu.advance::<B, A32>(reg::ESI, 1);
        Ok(())
    }
}

/// STOS m8/m16/m32: [ES:(E)DI] ← AL/AX/EAX.
struct Stos;
impl StrOp for Stos {
    #[inline(always)]
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
        let v = cpu.reg_sized(reg::EAX as u8, B);
        cpu.write_sized(Seg::ES, cpu.index::<A32>(reg::EDI), B, v)?;
        cpu.advance::<B, A32>(reg::EDI, 1);
        Ok(())
    }

    fn fast<const B: u32, const A32: bool>(cpu: &mut Cpu, _: &Insn, max: u32) -> Option<u32> {
        let di = cpu.index::<A32>(reg::EDI);
        let n = cpu.run_room::<B, A32>(Seg::ES, di, rights::WRITE, max);
        if n == 0 {
            return None;
        }
        let user = cpu.cpl == 3;
        let dst = cpu.segs[Seg::ES as usize].base.wrapping_add(di);
        let de = &cpu.tlb.sets[user as usize][tlb_index(dst)];
        if de.wtag != dst & !0xFFF {
            return None;
        }
        let dof = dst.wrapping_add(de.addend) as usize;
        let len = (n * B) as usize;
        let v = cpu.reg_sized(reg::EAX as u8, B).to_le_bytes();
        let out = &mut cpu.mem.backing[dof..dof + len];
        if B == 1 {
            out.fill(v[0]);
        } else {
            for chunk in out.chunks_exact_mut(B as usize) {
                chunk.copy_from_slice(&v[..B as usize]);
            }
        }
        cpu.advance::<B, A32>(reg::EDI, n);
        Some(n)
    }
}

/// INS m8/m16/m32, DX: [ES:(E)DI] ← port DX. The destination is checked
/// before the port is read, so a faulting iteration loses no input.
struct Ins;
impl StrOp for Ins {
    const IO: bool = true;
    #[inline(always)]
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, _: &Insn) -> Result<()> {
        let di = cpu.index::<A32>(reg::EDI);
        let lin = cpu.seg_check(Seg::ES, di, B, rights::WRITE)?;
        cpu.prepare_write(lin, B, cpu.cpl == 3)?;
        let port = cpu.reg16(reg::EDX as u8);
        let v = cpu.bus.port_read(port, IoSize::from_bytes(B)) & size_mask(B);
        cpu.write_sized(Seg::ES, di, B, v)?;
        cpu.advance::<B, A32>(reg::EDI, 1);
        Ok(())
    }
}

/// OUTS DX, m8/m16/m32: port DX ← [seg:(E)SI].
struct Outs;
impl StrOp for Outs {
    const IO: bool = true;
    #[inline(always)]
    fn once<const B: u32, const A32: bool>(cpu: &mut Cpu, d: &Insn) -> Result<()> {
        let v = cpu.read_sized(d.seg, cpu.index::<A32>(reg::ESI), B)?;
        let port = cpu.reg16(reg::EDX as u8);
        cpu.bus.port_write(port, IoSize::from_bytes(B), v);
        cpu.advance::<B, A32>(reg::ESI, 1);
        Ok(())
    }
}
