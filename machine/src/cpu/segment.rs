//! Segment descriptor caches, descriptor parsing and segment register loads.

use iced_x86::{Code, Instruction};

use super::exec::{Handler, Insn};
use super::fault::{Fault, Result};
use super::{Cpu, Seg, flags};

/// Access-rights bits as kept in [`SegCache::attr`]: the low byte is the
/// descriptor's byte 5 (type, S, DPL, P), bits 12..15 its flags nibble.
pub mod attr {
    pub const ACCESSED: u16 = 1 << 0;
    /// Data: writable. Code: readable.
    pub const RW: u16 = 1 << 1;
    /// Data: expand-down. Code: conforming.
    pub const DC: u16 = 1 << 2;
    pub const CODE: u16 = 1 << 3;
    /// Code or data (not a system descriptor).
    pub const S: u16 = 1 << 4;
    pub const DPL_SHIFT: u16 = 5;
    pub const P: u16 = 1 << 7;
    pub const DB: u16 = 1 << 14;
    pub const G: u16 = 1 << 15;
}

/// Rights bits in [`SegCache::rights`], derived from `attr` and the mode.
pub(crate) mod rights {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
}

/// A segment register's hidden part (its descriptor cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegCache {
    pub selector: u16,
    pub base: u32,
    /// Effective limit in bytes (granularity applied).
    pub limit: u32,
    pub attr: u16,
    /// Lowest valid offset (non-zero only for expand-down segments).
    pub(crate) lo: u32,
    /// Highest valid offset.
    pub(crate) hi: u32,
    pub(crate) rights: u8,
    /// Fast-path bounds derived from `lo`, `hi` and `rights` by
    /// [`SegCache::set_fast_bounds`]: an access of up to 4 bytes at an offset
    /// below `rend` (`wend`) may read (write) without further segment
    /// checks. 0 (the default) sends every access through the full check.
    pub(crate) rend: u32,
    pub(crate) wend: u32,
}

impl SegCache {
    /// A real-mode segment: base = selector × 16, 64 KiB, read/write.
    pub fn real_mode(selector: u16) -> Self {
        let mut c = SegCache {
            selector,
            base: (selector as u32) << 4,
            limit: 0xFFFF,
            attr: attr::P | attr::S | attr::RW | attr::ACCESSED,
            ..Default::default()
        };
        c.refresh(true);
        c
    }

    /// LDTR/TR after reset: base 0, limit 0xFFFF, present.
    pub(crate) fn system_reset() -> Self {
        SegCache {
            limit: 0xFFFF,
            hi: 0xFFFF,
            attr: attr::P | 2,
            ..Default::default()
        }
    }

    /// A cache loaded from a raw 8-byte descriptor.
    pub fn from_descriptor(selector: u16, raw: u64) -> Self {
        let lo = raw as u32;
        let hi = (raw >> 32) as u32;
        let base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF00_0000);
        let mut limit = (lo & 0xFFFF) | (hi & 0x000F_0000);
        let attr = (((hi >> 8) & 0xFF) | ((hi >> 8) & 0xF000)) as u16;
        if attr & attr::G != 0 {
            limit = (limit << 12) | 0xFFF;
        }
        let mut c = SegCache {
            selector,
            base,
            limit,
            attr,
            ..Default::default()
        };
        c.refresh(false);
        c
    }

    /// Recomputes the fast-check fields from `attr` and `limit`.
    /// `unchecked` (real and v86 mode) grants read and write regardless of type.
    pub(crate) fn refresh(&mut self, unchecked: bool) {
        let top = if self.big() { u32::MAX } else { 0xFFFF };
        if self.is_data() && self.attr & attr::DC != 0 {
            // Expand-down: valid offsets are (limit, top].
            self.lo = self.limit.wrapping_add(1);
            self.hi = if self.limit == u32::MAX { 0 } else { top };
            if self.limit == u32::MAX {
                self.lo = 1; // empty range
            }
        } else {
            self.lo = 0;
            self.hi = self.limit;
        }
        self.rights = if unchecked {
            rights::READ | rights::WRITE
        } else if !self.present() || self.attr & attr::S == 0 {
            0
        } else if self.is_code() {
            if self.attr & attr::RW != 0 {
                rights::READ
            } else {
                0
            }
        } else if self.attr & attr::RW != 0 {
            rights::READ | rights::WRITE
        } else {
            rights::READ
        };
        self.set_fast_bounds();
    }

    /// Derives `rend`/`wend` from `lo`, `hi` and `rights`. Only expand-up
    /// segments (lo = 0) get a fast path, and it stops 3 bytes short of
    /// the limit so that any access of up to 4 bytes below the bound is
    /// within the segment; the rest takes the full check.
    pub(crate) fn set_fast_bounds(&mut self) {
        let end = if self.lo == 0 && self.hi >= 3 {
            self.hi - 2
        } else {
            0
        };
        self.rend = if self.rights & rights::READ != 0 {
            end
        } else {
            0
        };
        let rw = rights::READ | rights::WRITE;
        // Writes include the read of a read-modify-write.
        self.wend = if self.rights & rw == rw { end } else { 0 };
    }

    /// A null or unusable segment: every access faults.
    pub(crate) fn null(selector: u16) -> Self {
        SegCache {
            selector,
            lo: 1,
            hi: 0,
            ..Default::default()
        }
    }

    pub fn present(&self) -> bool {
        self.attr & attr::P != 0
    }
    pub fn dpl(&self) -> u8 {
        ((self.attr >> attr::DPL_SHIFT) & 3) as u8
    }
    /// D/B flag: 32-bit code segment or 32-bit stack.
    pub fn big(&self) -> bool {
        self.attr & attr::DB != 0
    }
    pub fn is_code(&self) -> bool {
        self.attr & (attr::S | attr::CODE) == attr::S | attr::CODE
    }
    pub fn is_data(&self) -> bool {
        self.attr & (attr::S | attr::CODE) == attr::S
    }
    /// System descriptor type (S = 0): the low four bits of `attr`.
    pub fn system_type(&self) -> Option<u8> {
        (self.attr & attr::S == 0).then_some((self.attr & 0xF) as u8)
    }
}

/// System descriptor types (the low four bits of byte 5 with S = 0).
pub(crate) mod sys_type {
    pub const TSS16_AVAIL: u8 = 1;
    pub const LDT: u8 = 2;
    pub const TSS16_BUSY: u8 = 3;
    pub const CALL_GATE16: u8 = 4;
    pub const TASK_GATE: u8 = 5;
    pub const INT_GATE16: u8 = 6;
    pub const TRAP_GATE16: u8 = 7;
    pub const TSS32_AVAIL: u8 = 9;
    pub const TSS32_BUSY: u8 = 0xB;
    pub const CALL_GATE32: u8 = 0xC;
    pub const INT_GATE32: u8 = 0xE;
    pub const TRAP_GATE32: u8 = 0xF;
    /// The busy bit of a TSS type.
    pub const BUSY: u8 = 2;
}

/// The error code a fault about `sel` carries: the selector with its RPL
/// bits cleared (bit 0 is EXT, bit 1 IDT, both 0 here).
#[inline]
pub(crate) fn sel_error(sel: u16) -> u32 {
    (sel & 0xFFFC) as u32
}

/// A raw 8-byte descriptor from the GDT, LDT or IDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desc(pub u64);

impl Desc {
    fn hi(self) -> u32 {
        (self.0 >> 32) as u32
    }
    fn lo(self) -> u32 {
        self.0 as u32
    }
    /// Byte 5: type, S, DPL, P.
    pub fn access(self) -> u8 {
        (self.hi() >> 8) as u8
    }
    pub fn present(self) -> bool {
        self.access() & 0x80 != 0
    }
    pub fn dpl(self) -> u8 {
        (self.access() >> 5) & 3
    }
    /// Code or data (S = 1).
    pub fn is_segment(self) -> bool {
        self.access() & 0x10 != 0
    }
    pub fn is_code(self) -> bool {
        self.access() & 0x18 == 0x18
    }
    pub fn is_data(self) -> bool {
        self.access() & 0x18 == 0x10
    }
    pub fn conforming_code(self) -> bool {
        self.access() & 0x1C == 0x1C
    }
    pub fn readable_code(self) -> bool {
        self.access() & 0x1A == 0x1A
    }
    pub fn writable_data(self) -> bool {
        self.access() & 0x1A == 0x12
    }
    /// System descriptor type, `None` for code and data.
    pub fn system_type(self) -> Option<u8> {
        (!self.is_segment()).then_some(self.access() & 0xF)
    }
    /// The descriptor cache for `selector` (accessed bit set, as the load sets it).
    pub fn cache(self, selector: u16) -> SegCache {
        let raw = if self.is_segment() {
            self.0 | 1 << 40
        } else {
            self.0
        };
        SegCache::from_descriptor(selector, raw)
    }
    /// Limit in bytes, granularity applied.
    pub fn limit(self) -> u32 {
        let l = (self.lo() & 0xFFFF) | (self.hi() & 0x000F_0000);
        if self.hi() & (1 << 23) != 0 {
            (l << 12) | 0xFFF
        } else {
            l
        }
    }
    /// Gate: the target selector.
    pub fn gate_selector(self) -> u16 {
        (self.lo() >> 16) as u16
    }
    /// Gate: the target offset (16 bits for the 286 gate types).
    pub fn gate_offset(self) -> u32 {
        let off = (self.lo() & 0xFFFF) | (self.hi() & 0xFFFF_0000);
        if self.access() & 8 == 0 {
            off & 0xFFFF
        } else {
            off
        }
    }
    /// Call gate: the parameter count.
    pub fn gate_params(self) -> u32 {
        self.hi() & 0x1F
    }
}

impl Cpu {
    /// Linear address of the descriptor `sel` names, `None` when it lies
    /// outside its table (or names the LDT and no LDT is loaded).
    pub(crate) fn desc_addr(&self, sel: u16) -> Option<u32> {
        let (base, limit) = if sel & 4 != 0 {
            if self.ldtr.selector & 0xFFFC == 0 || !self.ldtr.present() {
                return None;
            }
            (self.ldtr.base, self.ldtr.limit)
        } else {
            (self.gdtr.base, self.gdtr.limit as u32)
        };
        let index = (sel & !7) as u32;
        if index.checked_add(7)? > limit {
            return None;
        }
        Some(base.wrapping_add(index))
    }

    /// Reads the descriptor `sel` names (a system access: no CPL check),
    /// `None` when it is outside its table.
    pub(crate) fn read_desc(&mut self, sel: u16) -> Result<Option<Desc>> {
        let Some(addr) = self.desc_addr(sel) else {
            return Ok(None);
        };
        let lo = self.read_sys_u32(addr)? as u64;
        let hi = self.read_sys_u32(addr.wrapping_add(4))? as u64;
        Ok(Some(Desc(lo | hi << 32)))
    }

    /// Reads the descriptor `sel` names, raising `outside` when it lies
    /// outside its table.
    pub(crate) fn read_desc_or(&mut self, sel: u16, outside: Fault) -> Result<Desc> {
        self.read_desc(sel)?.ok_or(outside)
    }

    /// Reads a descriptor from the GDT only (TSS, LDT descriptors).
    pub(crate) fn read_gdt_desc(&mut self, sel: u16, outside: Fault) -> Result<Desc> {
        if sel & 4 != 0 {
            return Err(outside);
        }
        self.read_desc_or(sel, outside)
    }

    /// Sets the accessed bit in the descriptor `sel` names, if it is clear.
    pub(crate) fn set_desc_accessed(&mut self, sel: u16) -> Result<()> {
        if let Some(addr) = self.desc_addr(sel) {
            let a = addr.wrapping_add(5);
            let b = self.read_sys_u8(a)?;
            if b & 1 == 0 {
                self.write_sys_u8(a, b | 1)?;
            }
        }
        Ok(())
    }

    /// Sets or clears the busy bit of the TSS descriptor `sel` names.
    pub(crate) fn set_tss_busy(&mut self, sel: u16, busy: bool) -> Result<()> {
        if sel & 0xFFFC == 0 {
            return Ok(());
        }
        if let Some(addr) = self.desc_addr(sel & !4) {
            let a = addr.wrapping_add(5);
            let b = self.read_sys_u8(a)?;
            let nb = if busy {
                b | sys_type::BUSY
            } else {
                b & !sys_type::BUSY
            };
            self.write_sys_u8(a, nb)?;
        }
        Ok(())
    }

    /// MOV/POP/LDS-style load of a data or stack segment register,
    /// with every protected-mode check (SDM vol. 2, MOV; vol. 3, 5.5-5.8).
    pub(crate) fn load_seg(&mut self, seg: Seg, selector: u16) -> Result<()> {
        if !self.protected_mode() || self.v86_mode() {
            self.load_seg_real(seg, selector);
            return Ok(());
        }
        self.load_seg_protected(seg, selector)
    }

    /// Real and v86 mode: base = selector × 16. In real mode the limit and
    /// attributes are kept (so "unreal mode" works as on hardware); in v86
    /// mode they are forced to a 64 KiB, DPL 3 data segment.
    pub(crate) fn load_seg_real(&mut self, seg: Seg, selector: u16) {
        let v86 = self.v86_mode();
        let s = &mut self.segs[seg as usize];
        s.selector = selector;
        s.base = (selector as u32) << 4;
        if v86 {
            *s = SegCache::real_mode(selector);
            s.attr |= 3 << attr::DPL_SHIFT;
        }
        if matches!(seg, Seg::CS | Seg::SS) {
            self.update_mode();
        }
    }

    /// Protected-mode load of DS/ES/FS/GS or SS with descriptor checks.
    /// CS is loaded only by far transfers, interrupts and task switches.
    pub(crate) fn load_seg_protected(&mut self, seg: Seg, selector: u16) -> Result<()> {
        let cache = match seg {
            Seg::CS => return Err(Fault::UD),
            Seg::SS => self.check_stack_seg(selector, self.cpl, Fault::gp)?,
            _ => match self.check_data_seg(selector, self.cpl, Fault::gp, Fault::np)? {
                Some(c) => c,
                None => SegCache::null(selector),
            },
        };
        self.segs[seg as usize] = cache;
        if seg == Seg::SS {
            self.update_mode();
        }
        Ok(())
    }

    /// Checks `selector` as a stack segment for privilege level `cpl`
    /// (null, table limit, RPL = DPL = CPL, writable data: `bad(sel)`;
    /// not present: #SS(sel)), sets its accessed bit and returns its cache.
    pub(crate) fn check_stack_seg(
        &mut self,
        selector: u16,
        cpl: u8,
        bad: fn(u32) -> Fault,
    ) -> Result<SegCache> {
        if selector & 0xFFFC == 0 {
            return Err(bad(0));
        }
        let err = sel_error(selector);
        let d = self.read_desc_or(selector, bad(err))?;
        if (selector & 3) as u8 != cpl || !d.writable_data() || d.dpl() != cpl {
            return Err(bad(err));
        }
        if !d.present() {
            return Err(Fault::ss(err));
        }
        self.set_desc_accessed(selector)?;
        Ok(d.cache(selector))
    }

    /// Checks `selector` as a data segment (DS, ES, FS, GS) at privilege
    /// level `cpl`: `Ok(None)` for a null selector; table limit, type
    /// (data or readable code) and privilege (DPL ≥ max(CPL, RPL) unless
    /// conforming code) raise `bad(sel)`, not present `np(sel)`.
    pub(crate) fn check_data_seg(
        &mut self,
        selector: u16,
        cpl: u8,
        bad: fn(u32) -> Fault,
        np: fn(u32) -> Fault,
    ) -> Result<Option<SegCache>> {
        if selector & 0xFFFC == 0 {
            return Ok(None);
        }
        let err = sel_error(selector);
        let d = self.read_desc_or(selector, bad(err))?;
        if !d.is_data() && !d.readable_code() {
            return Err(bad(err));
        }
        let rpl = (selector & 3) as u8;
        if !d.conforming_code() && (rpl > d.dpl() || cpl > d.dpl()) {
            return Err(bad(err));
        }
        if !d.present() {
            return Err(np(err));
        }
        self.set_desc_accessed(selector)?;
        Ok(Some(d.cache(selector)))
    }

    /// After a return to an outer privilege level: DS, ES, FS and GS
    /// holding data or non-conforming code segments more privileged than
    /// the new CPL are nulled (SDM vol. 2, RET and IRET).
    pub(crate) fn null_inaccessible_data_segs(&mut self) {
        for s in [Seg::ES, Seg::DS, Seg::FS, Seg::GS] {
            let c = &self.segs[s as usize];
            let conforming = c.is_code() && c.attr & attr::DC != 0;
            if (c.is_data() || (c.is_code() && !conforming)) && c.dpl() < self.cpl {
                self.segs[s as usize] = SegCache::null(0);
            }
        }
    }

    /// The cache loaded into CS for code descriptor `d`, selector `sel`
    /// with its RPL replaced by `cpl`; sets CPL and the mode bits.
    pub(crate) fn load_cs(&mut self, d: Desc, sel: u16, cpl: u8) -> Result<()> {
        self.set_desc_accessed(sel)?;
        let sel = (sel & !3) | cpl as u16;
        self.segs[Seg::CS as usize] = d.cache(sel);
        self.put_cpl(cpl);
        self.update_mode();
        Ok(())
    }

    /// Protected mode outside v86, where LAR, LSL, VERR, VERW, ARPL, SLDT,
    /// STR, LLDT and LTR are defined (#UD elsewhere).
    fn require_protected(&self) -> Result<()> {
        if !self.protected_mode() || self.v86_mode() {
            return Err(Fault::UD);
        }
        Ok(())
    }

    /// The descriptor for LAR/LSL/VERR/VERW: `None` (ZF = 0) when the
    /// selector is null, outside its table or not visible at CPL and RPL.
    fn visible_desc(&mut self, sel: u16) -> Result<Option<Desc>> {
        if sel & 0xFFFC == 0 {
            return Ok(None);
        }
        let Some(d) = self.read_desc(sel)? else {
            return Ok(None);
        };
        let rpl = (sel & 3) as u8;
        if !d.conforming_code() && (d.dpl() < self.cpl || d.dpl() < rpl) {
            return Ok(None);
        }
        Ok(Some(d))
    }
}

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    Some(match i.code() {
        Code::Lar_r16_rm16 | Code::Lar_r32_r32m16 => lar,
        Code::Lsl_r16_rm16 | Code::Lsl_r32_r32m16 => lsl,
        Code::Verr_rm16 | Code::Verr_r32m16 => verr,
        Code::Verw_rm16 | Code::Verw_r32m16 => verw,
        Code::Arpl_rm16_r16 | Code::Arpl_r32m16_r32 => arpl,
        Code::Sldt_rm16 | Code::Sldt_r32m16 => sldt,
        Code::Str_rm16 | Code::Str_r32m16 => str_,
        Code::Lldt_rm16 | Code::Lldt_r32m16 => lldt,
        Code::Ltr_rm16 | Code::Ltr_r32m16 => ltr,
        _ => return None,
    })
}

/// Destination width of LAR/LSL.
fn dest_bytes(d: &Insn) -> u32 {
    d.i.op_register(0).size() as u32
}

/// LAR r16/r32, r/m16: access rights of a visible code, data, TSS, LDT,
/// call-gate or task-gate descriptor; ZF says whether it was loaded.
fn lar(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    let sel = cpu.read_rm(d, 1, 2)? as u16;
    let ok = match cpu.visible_desc(sel)? {
        Some(desc)
            if desc.is_segment() || matches!(desc.system_type(), Some(1..=5 | 9 | 0xB | 0xC)) =>
        {
            let ar = desc.hi() & 0x00FF_FF00;
            cpu.set_reg_sized(d.r0, dest_bytes(d), ar);
            true
        }
        _ => false,
    };
    cpu.flags.set_status(flags::ZF, ok);
    Ok(())
}

/// LSL r16/r32, r/m16: the byte-granular limit of a visible code, data,
/// TSS or LDT descriptor; ZF says whether it was loaded.
fn lsl(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    let sel = cpu.read_rm(d, 1, 2)? as u16;
    let ok = match cpu.visible_desc(sel)? {
        Some(desc) if desc.is_segment() || matches!(desc.system_type(), Some(1..=3 | 9 | 0xB)) => {
            cpu.set_reg_sized(d.r0, dest_bytes(d), desc.limit());
            true
        }
        _ => false,
    };
    cpu.flags.set_status(flags::ZF, ok);
    Ok(())
}

/// VERR r/m16: ZF = the segment is readable at CPL and RPL.
fn verr(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    let sel = cpu.read_rm(d, 0, 2)? as u16;
    let ok = matches!(cpu.visible_desc(sel)?, Some(x) if x.is_data() || x.readable_code());
    cpu.flags.set_status(flags::ZF, ok);
    Ok(())
}

/// VERW r/m16: ZF = the segment is writable at CPL and RPL.
fn verw(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    let sel = cpu.read_rm(d, 0, 2)? as u16;
    let ok = matches!(cpu.visible_desc(sel)?, Some(x) if x.writable_data());
    cpu.flags.set_status(flags::ZF, ok);
    Ok(())
}

/// ARPL r/m16, r16: raise the destination selector's RPL to the source's.
fn arpl(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    let src = cpu.reg16(d.r1);
    let mut adjusted = false;
    cpu.modify_rm(d, 2, |_, dst| {
        if dst & 3 < src as u32 & 3 {
            adjusted = true;
            (dst & !3) | (src as u32 & 3)
        } else {
            dst
        }
    })?;
    cpu.flags.set_status(flags::ZF, adjusted);
    Ok(())
}

/// Stores a system selector: zero-extended into a 32-bit register, 16
/// bits to memory.
fn store_selector(cpu: &mut Cpu, d: &Insn, sel: u16) -> Result<()> {
    let bytes = if d.op0_is_reg() {
        d.i.op_register(0).size() as u32
    } else {
        2
    };
    cpu.write_rm(d, bytes, sel as u32)
}

/// SLDT r/m16.
fn sldt(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    let sel = cpu.ldtr.selector;
    store_selector(cpu, d, sel)
}

/// STR r/m16.
fn str_(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    let sel = cpu.tr.selector;
    store_selector(cpu, d, sel)
}

/// LLDT r/m16: a null selector leaves LDTR unusable; otherwise an LDT
/// descriptor from the GDT.
fn lldt(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    if cpu.cpl != 0 {
        return Err(Fault::GP0);
    }
    let sel = cpu.read_rm(d, 0, 2)? as u16;
    cpu.load_ldtr(sel, Fault::gp, Fault::np)
}

/// LTR r/m16: an available TSS from the GDT, marked busy.
fn ltr(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.require_protected()?;
    if cpu.cpl != 0 {
        return Err(Fault::GP0);
    }
    let sel = cpu.read_rm(d, 0, 2)? as u16;
    if sel & 0xFFFC == 0 {
        return Err(Fault::GP0);
    }
    let err = sel_error(sel);
    let desc = cpu.read_gdt_desc(sel, Fault::gp(err))?;
    if !matches!(
        desc.system_type(),
        Some(sys_type::TSS16_AVAIL | sys_type::TSS32_AVAIL)
    ) {
        return Err(Fault::gp(err));
    }
    if !desc.present() {
        return Err(Fault::np(err));
    }
    cpu.set_tss_busy(sel, true)?;
    cpu.tr = Desc(desc.0 | (sys_type::BUSY as u64) << 40).cache(sel);
    Ok(())
}

impl Cpu {
    /// Loads LDTR (LLDT and task switches): a null selector leaves it
    /// unusable; otherwise the selector must name a present LDT descriptor
    /// in the GDT (`bad(sel)`, or `np(sel)` when not present).
    pub(crate) fn load_ldtr(
        &mut self,
        sel: u16,
        bad: fn(u32) -> Fault,
        np: fn(u32) -> Fault,
    ) -> Result<()> {
        if sel & 0xFFFC == 0 {
            self.ldtr = SegCache::null(sel);
            return Ok(());
        }
        let err = sel_error(sel);
        let desc = self.read_gdt_desc(sel, bad(err))?;
        if desc.system_type() != Some(sys_type::LDT) {
            return Err(bad(err));
        }
        if !desc.present() {
            return Err(np(err));
        }
        self.ldtr = desc.cache(sel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::NullBus;
    use crate::cpu::{TableReg, cr0};
    use crate::memory::PhysMemory;

    const GDT: u32 = 0x1000;
    const K_DATA: u16 = 0x10;
    const U_DATA: u16 = 0x1B;
    const EXEC_ONLY: u16 = 0x20;
    const CONF_READ: u16 = 0x28;
    const NOT_PRESENT: u16 = 0x30;
    const K_CODE: u16 = 0x08;

    fn flat(access: u8) -> u64 {
        0x00CF_0000_0000_FFFF | (access as u64) << 40
    }

    /// Protected mode at `cpl` with a GDT of flat segments.
    fn cpu_at(cpl: u8) -> Cpu {
        let mut cpu = Cpu::new(PhysMemory::new(1 << 20).expect("RAM"), Box::new(NullBus));
        for (sel, d) in [
            (K_CODE, flat(0x9A)),
            (K_DATA, flat(0x92)),
            (U_DATA, flat(0xF2)),
            (EXEC_ONLY, flat(0xF8)),
            (CONF_READ, flat(0x9E)),
            (NOT_PRESENT, flat(0x72)),
        ] {
            cpu.write_phys_bytes(GDT + (sel & !7) as u32, &d.to_le_bytes());
        }
        cpu.set_gdtr(TableReg {
            base: GDT,
            limit: 0x37,
        });
        cpu.set_cr0(cpu.cr0() | cr0::PE);
        cpu.set_seg_cache(Seg::CS, SegCache::from_descriptor(K_CODE, flat(0x9B)));
        cpu.set_cpl(cpl);
        cpu
    }

    #[test]
    fn null_selector_in_ds_loads_an_unusable_segment() {
        let mut cpu = cpu_at(0);
        assert_eq!(cpu.load_seg(Seg::DS, 0x0003), Ok(()));
        assert_eq!(cpu.seg(Seg::DS).selector, 3);
        assert_eq!(cpu.read_u8(Seg::DS, 0), Err(Fault::GP0));
    }

    #[test]
    fn null_selector_in_ss_is_gp0() {
        let mut cpu = cpu_at(0);
        assert_eq!(cpu.load_seg(Seg::SS, 0), Err(Fault::gp(0)));
    }

    #[test]
    fn ss_needs_rpl_and_dpl_equal_to_cpl_and_presence() {
        let mut cpu = cpu_at(3);
        assert_eq!(cpu.load_seg(Seg::SS, K_DATA | 3), Err(Fault::gp(0x10)));
        assert_eq!(cpu.load_seg(Seg::SS, U_DATA & !3), Err(Fault::gp(0x18)));
        assert_eq!(cpu.load_seg(Seg::SS, NOT_PRESENT | 3), Err(Fault::ss(0x30)));
        assert_eq!(cpu.load_seg(Seg::SS, U_DATA), Ok(()));
        assert!(cpu.stack32);
    }

    #[test]
    fn ss_must_be_writable_data() {
        let mut cpu = cpu_at(0);
        assert_eq!(cpu.load_seg(Seg::SS, CONF_READ), Err(Fault::gp(0x28)));
    }

    #[test]
    fn selector_beyond_the_gdt_limit_is_gp_without_rpl() {
        let mut cpu = cpu_at(0);
        assert_eq!(cpu.load_seg(Seg::DS, 0x3B), Err(Fault::gp(0x38)));
    }

    #[test]
    fn ldt_selector_without_an_ldt_is_gp() {
        let mut cpu = cpu_at(0);
        assert_eq!(cpu.load_seg(Seg::ES, 0x0C), Err(Fault::gp(0x0C)));
    }

    #[test]
    fn data_segment_privilege_checks() {
        let mut cpu = cpu_at(3);
        assert_eq!(cpu.load_seg(Seg::DS, K_DATA | 3), Err(Fault::gp(0x10)));
        assert_eq!(cpu.load_seg(Seg::DS, EXEC_ONLY | 3), Err(Fault::gp(0x20)));
        // Readable conforming code is loadable at any privilege.
        assert_eq!(cpu.load_seg(Seg::DS, CONF_READ | 3), Ok(()));
        assert_eq!(cpu.load_seg(Seg::FS, U_DATA), Ok(()));
        let mut cpu = cpu_at(0);
        assert_eq!(cpu.load_seg(Seg::GS, K_DATA), Ok(()));
        assert_eq!(cpu.load_seg(Seg::GS, U_DATA), Ok(()));
    }

    #[test]
    fn rpl_above_dpl_is_gp() {
        let mut cpu = cpu_at(0);
        assert_eq!(cpu.load_seg(Seg::DS, K_DATA | 2), Err(Fault::gp(0x10)));
    }

    #[test]
    fn not_present_data_segment_is_np() {
        let mut cpu = cpu_at(3);
        assert_eq!(cpu.load_seg(Seg::DS, NOT_PRESENT | 3), Err(Fault::np(0x30)));
    }

    #[test]
    fn load_sets_the_accessed_bit() {
        let mut cpu = cpu_at(0);
        cpu.load_seg(Seg::DS, K_DATA).expect("load");
        let mut b = [0u8];
        cpu.read_phys_bytes(GDT + 0x10 + 5, &mut b);
        assert_eq!(b[0], 0x93);
        assert_ne!(cpu.seg(Seg::DS).attr & attr::ACCESSED, 0);
    }

    #[test]
    fn v86_load_is_paragraph_based() {
        let mut cpu = cpu_at(0);
        cpu.set_eflags(flags::VM | 2);
        cpu.load_seg(Seg::DS, 0x1234).expect("load");
        let ds = cpu.seg(Seg::DS);
        assert_eq!((ds.base, ds.limit, ds.dpl()), (0x12340, 0xFFFF, 3));
    }
}
