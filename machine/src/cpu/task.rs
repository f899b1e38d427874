//! Hardware task switching (SDM vol. 3, chapter 7): JMP or CALL to a TSS
//! or task gate, INT or an exception through a task gate, IRET with NT set.
//!
//! The new task's state is read before anything changes, and the old TSS is
//! checked writable, so a fault before the commit point (TR loaded) leaves
//! the old task intact. Faults while loading the new task's LDTR and
//! segment registers happen after it, in the new task's context, as on
//! hardware; so does the debug trap of a TSS with its T flag set.

use super::fault::{Fault, Result};
use super::segment::{Desc, SegCache, sel_error, sys_type};
use super::{Cpu, Seg, cr0, flags};

/// What started a task switch: it decides the busy-bit, NT and back-link
/// updates (SDM vol. 3, table 7-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskSource {
    Jmp,
    Call,
    /// INT n, an exception or an external interrupt through a task gate.
    Int,
    /// IRET with EFLAGS.NT set: back to the task in the back-link field.
    Iret,
}

/// A task's state as stored in its TSS.
struct TaskState {
    cr3: u32,
    eip: u32,
    eflags: u32,
    regs: [u32; 8],
    /// ES, CS, SS, DS, FS, GS.
    segs: [u16; 6],
    ldt: u16,
    /// The debug-trap flag (32-bit TSS only).
    trap: bool,
}

/// 32-bit TSS field offsets.
mod tss32 {
    pub const CR3: u32 = 0x1C;
    pub const EIP: u32 = 0x20;
    pub const EFLAGS: u32 = 0x24;
    pub const REGS: u32 = 0x28;
    pub const SEGS: u32 = 0x48;
    pub const LDT: u32 = 0x60;
    pub const TRAP: u32 = 0x64;
    /// The last byte task switches write (GS).
    pub const SAVED_END: u32 = 0x5F;
    pub const MIN_LIMIT: u32 = 0x67;
}

/// 16-bit (286) TSS field offsets.
mod tss16 {
    pub const IP: u32 = 0x0E;
    pub const FLAGS: u32 = 0x10;
    pub const REGS: u32 = 0x12;
    pub const SEGS: u32 = 0x22;
    pub const LDT: u32 = 0x2A;
    pub const SAVED_END: u32 = 0x29;
    pub const MIN_LIMIT: u32 = 0x2B;
}

impl Cpu {
    /// Checks the TSS a task gate names: in the GDT, an available TSS
    /// (#GP(sel)), present (#NP(sel)); `ext` is the EXT bit.
    pub(crate) fn task_gate_target(&mut self, tss: u16, ext: u32) -> Result<Desc> {
        let err = sel_error(tss) | ext;
        let d = self.read_gdt_desc(tss, Fault::gp(err))?;
        if !matches!(
            d.system_type(),
            Some(sys_type::TSS16_AVAIL | sys_type::TSS32_AVAIL)
        ) {
            return Err(Fault::gp(err));
        }
        if !d.present() {
            return Err(Fault::np(err));
        }
        Ok(d)
    }

    /// Switches to the task whose TSS descriptor `desc` selector `sel`
    /// names. `ret` is the EIP saved for the old task; `error` is pushed on
    /// the new task's stack (exceptions through a task gate). The caller
    /// has made the privilege, type and presence checks.
    pub(crate) fn task_switch(
        &mut self,
        sel: u16,
        desc: Desc,
        src: TaskSource,
        error: Option<u32>,
        ret: u32,
    ) -> Result<()> {
        self.stop_block = true;
        let err = sel_error(sel);
        let new32 = desc.access() & 8 != 0;
        let min = if new32 {
            tss32::MIN_LIMIT
        } else {
            tss16::MIN_LIMIT
        };
        if desc.limit() < min {
            return Err(Fault::ts(err));
        }
        let old = self.tr;
        let old32 = old.attr & 8 != 0;
        let old_end = if old32 {
            tss32::SAVED_END
        } else {
            tss16::SAVED_END
        };
        if old.limit < old_end {
            return Err(Fault::ts(sel_error(old.selector)));
        }

        // Everything that can fault without changing state: read the new
        // TSS, probe the old one (and the new back-link) for writing.
        let new_base = desc.cache(sel).base;
        let st = self.read_task_state(new_base, new32)?;
        self.prepare_write(old.base, old_end + 1, false)?;
        let nested = matches!(src, TaskSource::Call | TaskSource::Int);
        if nested {
            self.prepare_write(new_base, 2, false)?;
        }

        // Save the old task.
        if matches!(src, TaskSource::Jmp | TaskSource::Iret) {
            self.set_tss_busy(old.selector, false)?;
        }
        let mut old_flags = self.flags.get();
        if src == TaskSource::Iret {
            old_flags &= !flags::NT;
        }
        self.save_task_state(old.base, old32, ret, old_flags)?;
        let mut eflags = st.eflags;
        if nested {
            eflags |= flags::NT;
            self.write_sys_u16(new_base, old.selector)?;
        }
        if src != TaskSource::Iret {
            self.set_tss_busy(sel, true)?;
        }

        // Commit: from here on faults belong to the new task.
        self.tr = Desc(desc.0 | (sys_type::BUSY as u64) << 40).cache(sel);
        self.set_cr0(self.cr0 | cr0::TS);
        if new32 && self.cr0 & cr0::PG != 0 {
            self.load_cr3(st.cr3);
        }
        if new32 {
            self.regs[..8].copy_from_slice(&st.regs);
        } else {
            for (r, v) in self.regs[..8].iter_mut().zip(st.regs) {
                *r = (*r & 0xFFFF_0000) | (v & 0xFFFF);
            }
        }
        self.flags.set(eflags);
        self.eip = st.eip;
        self.next_eip = st.eip;
        for (i, &s) in st.segs.iter().enumerate() {
            self.segs[i] = SegCache::null(s);
        }
        self.ldtr = SegCache::null(st.ldt);
        self.update_mode();

        self.load_ldtr(st.ldt, Fault::ts, Fault::ts)?;
        if self.v86_mode() {
            for (i, &s) in st.segs.iter().enumerate() {
                self.load_seg_real(Seg::ALL[i], s);
            }
        } else {
            self.load_task_segments(&st)?;
        }
        self.update_mode();

        if let Some(e) = error {
            self.push(if new32 { 4 } else { 2 }, e)?;
        }
        if st.eip > self.segs[Seg::CS as usize].hi {
            return Err(Fault::GP0);
        }
        if st.trap {
            // The TSS's T flag: a debug trap before the new task's first
            // instruction, with DR6.BT.
            self.dr[6] |= 1 << 15;
            return Err(Fault::DB);
        }
        Ok(())
    }

    fn read_task_state(&mut self, base: u32, is32: bool) -> Result<TaskState> {
        let mut st = TaskState {
            cr3: 0,
            eip: 0,
            eflags: 0,
            regs: [0; 8],
            segs: [0; 6],
            ldt: 0,
            trap: false,
        };
        let at = |off: u32| base.wrapping_add(off);
        if is32 {
            st.cr3 = self.read_sys_u32(at(tss32::CR3))?;
            st.eip = self.read_sys_u32(at(tss32::EIP))?;
            st.eflags = self.read_sys_u32(at(tss32::EFLAGS))?;
            for i in 0..8 {
                st.regs[i] = self.read_sys_u32(at(tss32::REGS + 4 * i as u32))?;
            }
            for i in 0..6 {
                st.segs[i] = self.read_sys_u16(at(tss32::SEGS + 4 * i as u32))?;
            }
            st.ldt = self.read_sys_u16(at(tss32::LDT))?;
            st.trap = self.read_sys_u16(at(tss32::TRAP))? & 1 != 0;
        } else {
            st.eip = self.read_sys_u16(at(tss16::IP))? as u32;
            // The upper half of EFLAGS does not exist in a 286 TSS.
            st.eflags = self.read_sys_u16(at(tss16::FLAGS))? as u32;
            for i in 0..8 {
                st.regs[i] = self.read_sys_u16(at(tss16::REGS + 2 * i as u32))? as u32;
            }
            for i in 0..4 {
                st.segs[i] = self.read_sys_u16(at(tss16::SEGS + 2 * i as u32))?;
            }
            st.ldt = self.read_sys_u16(at(tss16::LDT))?;
        }
        Ok(st)
    }

    fn save_task_state(&mut self, base: u32, is32: bool, eip: u32, eflags: u32) -> Result<()> {
        let at = |off: u32| base.wrapping_add(off);
        if is32 {
            self.write_sys_u32(at(tss32::EIP), eip)?;
            self.write_sys_u32(at(tss32::EFLAGS), eflags)?;
            for i in 0..8 {
                self.write_sys_u32(at(tss32::REGS + 4 * i as u32), self.regs[i])?;
            }
            for i in 0..6 {
                let s = self.segs[i].selector;
                self.write_sys_u16(at(tss32::SEGS + 4 * i as u32), s)?;
            }
        } else {
            self.write_sys_u16(at(tss16::IP), eip as u16)?;
            self.write_sys_u16(at(tss16::FLAGS), eflags as u16)?;
            for i in 0..8 {
                self.write_sys_u16(at(tss16::REGS + 2 * i as u32), self.regs[i] as u16)?;
            }
            for i in 0..4 {
                let s = self.segs[i].selector;
                self.write_sys_u16(at(tss16::SEGS + 2 * i as u32), s)?;
            }
        }
        Ok(())
    }

    /// Loads CS, SS, DS, ES, FS and GS of the new task with the
    /// task-switch fault rules (SDM vol. 3, table 7-1): #TS(sel) for bad
    /// selectors, #NP(sel) for absent code and data, #SS(sel) for an
    /// absent stack.
    fn load_task_segments(&mut self, st: &TaskState) -> Result<()> {
        let cs = st.segs[Seg::CS as usize];
        let err = sel_error(cs);
        if cs & 0xFFFC == 0 {
            return Err(Fault::ts(err));
        }
        let d = self.read_desc_or(cs, Fault::ts(err))?;
        let rpl = (cs & 3) as u8;
        let priv_ok = if d.conforming_code() {
            d.dpl() <= rpl
        } else {
            d.dpl() == rpl
        };
        if !d.is_code() || !priv_ok {
            return Err(Fault::ts(err));
        }
        if !d.present() {
            return Err(Fault::np(err));
        }
        self.set_desc_accessed(cs)?;
        self.segs[Seg::CS as usize] = d.cache(cs);
        self.put_cpl(rpl);

        let ss = st.segs[Seg::SS as usize];
        self.segs[Seg::SS as usize] = self.check_stack_seg(ss, rpl, Fault::ts)?;

        for s in [Seg::ES, Seg::DS, Seg::FS, Seg::GS] {
            let sel = st.segs[s as usize];
            if let Some(c) = self.check_data_seg(sel, rpl, Fault::ts, Fault::np)? {
                self.segs[s as usize] = c;
            }
        }
        Ok(())
    }
}
