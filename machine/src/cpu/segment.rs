//! Segment descriptor caches, descriptor parsing and segment register loads.

use super::fault::Result;
use super::{Cpu, Seg};

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
    pub const AVL: u16 = 1 << 12;
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

impl Cpu {
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

    /// Protected-mode selector load with descriptor checks.
    fn load_seg_protected(&mut self, seg: Seg, selector: u16) -> Result<()> {
        let _ = (seg, selector);
        Err(super::Fault::UD)
    }
}
