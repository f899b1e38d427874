//! Two-level paging (4 KiB and 4 MiB pages) and the software TLB.
//!
//! The TLB is direct-mapped, one set for supervisor and one for user
//! accesses. An entry holds the linear page it maps separately for reads and
//! for writes (`rtag`/`wtag`) and an addend that turns a linear address into
//! an offset of the backing store. A write tag is installed only when a
//! write may go straight to host memory: the page is RAM, writable at this
//! privilege, already dirty, and holds no cached code. Everything else
//! (MMIO, ROM writes, first writes, code pages) takes the slow path.

use super::fault::{Fault, Result, pf};
use super::{Cpu, cr0, cr4};
use crate::memory::Region;

pub(crate) const TLB_BITS: u32 = 10;
pub(crate) const TLB_SIZE: usize = 1 << TLB_BITS;
/// A tag no page-aligned address can match.
pub(crate) const NO_TAG: u32 = 1;

/// `repr(C)`: the JIT reads `rtag`, `wtag` and `host` at fixed offsets.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct TlbEntry {
    pub rtag: u32,
    pub wtag: u32,
    /// host address = `host` + linear address (wrapping): `addend` turned
    /// into a pointer into the backing store, for the access fast path.
    pub host: *mut u8,
    /// backing offset = linear address + addend (wrapping).
    pub addend: u32,
    /// Backing-store offset of the page, for dropping write access when
    /// the page gets cached code.
    pub ppage: u32,
    pub global: bool,
    /// Filled from a 4 MiB page: INVLPG anywhere in it drops this entry.
    pub large: bool,
}

const EMPTY: TlbEntry = TlbEntry {
    rtag: NO_TAG,
    wtag: NO_TAG,
    host: std::ptr::null_mut(),
    addend: 0,
    ppage: 0,
    global: false,
    large: false,
};

pub(crate) struct Tlb {
    /// `sets[user][index]`.
    pub sets: Box<[[TlbEntry; TLB_SIZE]; 2]>,
    /// Where the current privilege's set starts in `sets` flattened: 0
    /// (supervisor) or `TLB_SIZE` (CPL 3). `Cpu::put_cpl` keeps it.
    pub user_off: usize,
    /// Indices filled since the last flush, so flushes touch only those.
    used: Vec<(u8, u16)>,
    /// Some entry filled since the last full flush came from a 4 MiB page.
    has_large: bool,
    /// Bumped whenever the code-fetch view may change: every TLB flush and
    /// fill, every drop of cached code, every change of CS, CPL or code
    /// size (see `Block::links` in exec.rs).
    pub epoch: u64,
}

#[inline(always)]
pub(crate) fn tlb_index(lin: u32) -> usize {
    (lin >> 12) as usize & (TLB_SIZE - 1)
}

impl Tlb {
    pub fn new() -> Self {
        Tlb {
            sets: Box::new([[EMPTY; TLB_SIZE]; 2]),
            user_off: 0,
            used: Vec::with_capacity(256),
            has_large: false,
            epoch: 0,
        }
    }

    /// The entry for `lin` in the set of the current privilege.
    #[inline(always)]
    pub fn current(&self, lin: u32) -> &TlbEntry {
        let i = (self.user_off | tlb_index(lin)) & (2 * TLB_SIZE - 1);
        &self.sets.as_flattened()[i]
    }

    pub fn flush_all(&mut self) {
        self.epoch += 1;
        for &(s, i) in &self.used {
            self.sets[s as usize][i as usize] = EMPTY;
        }
        self.used.clear();
        self.has_large = false;
    }

    /// A CR3 load: everything but global pages.
    pub fn flush_non_global(&mut self) {
        self.epoch += 1;
        let sets = &mut self.sets;
        self.used.retain(|&(s, i)| {
            let e = &mut sets[s as usize][i as usize];
            if e.global {
                true
            } else {
                *e = EMPTY;
                false
            }
        });
    }

    /// INVLPG: the entry for `lin` in both sets, global or not; when
    /// 4 MiB pages are cached, every entry of the 4 MiB page holding `lin`
    /// (the TLB caches large pages in 4 KiB pieces).
    pub fn flush_page(&mut self, lin: u32) {
        self.epoch += 1;
        let page = lin & !0xFFF;
        let i = tlb_index(lin);
        for set in self.sets.iter_mut() {
            let e = &mut set[i];
            if e.rtag == page || e.wtag == page {
                *e = EMPTY;
            }
        }
        if self.has_large {
            for &(s, i) in &self.used {
                let e = &mut self.sets[s as usize][i as usize];
                if e.large && e.rtag >> 22 == lin >> 22 {
                    *e = EMPTY;
                }
            }
        }
    }

    /// Drops direct write access to a backing page (it now holds cached code).
    pub fn protect_page(&mut self, ppage: u32) {
        for &(s, i) in &self.used {
            let e = &mut self.sets[s as usize][i as usize];
            if e.ppage == ppage {
                e.wtag = NO_TAG;
            }
        }
    }

    fn insert(&mut self, user: bool, lin: u32, e: TlbEntry) {
        self.epoch += 1;
        let i = tlb_index(lin);
        if self.used.len() >= TLB_SIZE * 4 {
            // Many refills of the same slots: compact the list by a full flush.
            self.flush_all();
        }
        self.has_large |= e.large;
        self.sets[user as usize][i] = e;
        self.used.push((user as u8, i as u16));
    }
}

/// Result of a translation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Translation {
    pub phys: u32,
    /// A write at this privilege would be allowed and would not need to set
    /// a dirty bit.
    pub write_direct: bool,
    pub global: bool,
    /// Mapped by a 4 MiB page.
    pub large: bool,
}

const PTE_P: u32 = 1;
const PTE_W: u32 = 2;
const PTE_U: u32 = 4;
const PTE_A: u32 = 0x20;
const PTE_D: u32 = 0x40;
const PDE_PS: u32 = 0x80;
const PTE_G: u32 = 0x100;

impl Cpu {
    #[inline(always)]
    pub(crate) fn paging(&self) -> bool {
        self.cr0 & cr0::PG != 0
    }

    /// Translates a linear address for an access, walking the page tables
    /// (and setting accessed/dirty bits) when paging is on. Faults set CR2.
    pub(crate) fn translate(&mut self, lin: u32, write: bool, user: bool) -> Result<Translation> {
        let a20 = self.mem.a20_mask();
        if !self.paging() {
            return Ok(Translation {
                phys: lin & a20,
                write_direct: true,
                global: false,
                large: false,
            });
        }
        let err = ((write as u32) * pf::WRITE) | ((user as u32) * pf::USER);
        let fault = |cpu: &mut Cpu, code: u32| {
            cpu.cr2 = lin;
            Err(Fault::pf(code))
        };
        let pde_addr = ((self.cr3 & !0xFFF) | ((lin >> 22) << 2)) & a20;
        let pde = self.read_phys_u32(pde_addr);
        if pde & PTE_P == 0 {
            return fault(self, err);
        }
        let wp = self.cr0 & cr0::WP != 0;
        if pde & PDE_PS != 0 && self.cr4 & cr4::PSE != 0 {
            if pde & 0x003F_E000 != 0 {
                return fault(self, err | pf::PRESENT | pf::RSVD);
            }
            let ok_w = pde & PTE_W != 0;
            if !access_allowed(pde & PTE_U != 0, ok_w, write, user, wp) {
                return fault(self, err | pf::PRESENT);
            }
            let new = pde | PTE_A | if write { PTE_D } else { 0 };
            if new != pde {
                self.write_phys_u32(pde_addr, new);
            }
            let phys = ((pde & 0xFFC0_0000) | (lin & 0x003F_FFFF)) & a20;
            let can_write = access_allowed(pde & PTE_U != 0, ok_w, true, user, wp);
            return Ok(Translation {
                phys,
                write_direct: can_write && new & PTE_D != 0,
                global: pde & PTE_G != 0 && self.cr4 & cr4::PGE != 0,
                large: true,
            });
        }
        let pte_addr = ((pde & !0xFFF) | ((lin >> 10) & 0xFFC)) & a20;
        let pte = self.read_phys_u32(pte_addr);
        if pte & PTE_P == 0 {
            if pde & PTE_A == 0 {
                self.write_phys_u32(pde_addr, pde | PTE_A);
            }
            return fault(self, err);
        }
        let u = pde & pte & PTE_U != 0;
        let w = pde & pte & PTE_W != 0;
        if !access_allowed(u, w, write, user, wp) {
            return fault(self, err | pf::PRESENT);
        }
        if pde & PTE_A == 0 {
            self.write_phys_u32(pde_addr, pde | PTE_A);
        }
        let new = pte | PTE_A | if write { PTE_D } else { 0 };
        if new != pte {
            self.write_phys_u32(pte_addr, new);
        }
        Ok(Translation {
            phys: ((pte & !0xFFF) | (lin & 0xFFF)) & a20,
            write_direct: access_allowed(u, w, true, user, wp) && new & PTE_D != 0,
            global: pte & PTE_G != 0 && self.cr4 & cr4::PGE != 0,
            large: false,
        })
    }

    /// Translates and installs a TLB entry for the page (when it is memory).
    pub(crate) fn translate_fill(&mut self, lin: u32, write: bool, user: bool) -> Result<u32> {
        let t = self.translate(lin, write, user)?;
        let page = lin & !0xFFF;
        let (off, writable) = match self.mem.region(t.phys & !0xFFF) {
            Region::Ram(off) => (off, t.write_direct && !self.code.page_has_code(off)),
            Region::Rom(off) => (off, false),
            Region::Mmio => return Ok(t.phys),
        };
        // `Cpu::host_ptr` relies on this: an entry maps a whole backing page.
        debug_assert!((off & !0xFFF) as usize + 4096 <= self.mem.backing_len());
        let entry = TlbEntry {
            rtag: page,
            wtag: if writable { page } else { NO_TAG },
            host: self
                .mem
                .backing
                .as_ptr()
                .wrapping_add(off as usize)
                .wrapping_sub(page as usize),
            addend: off.wrapping_sub(page),
            ppage: off & !0xFFF,
            global: t.global,
            large: t.large,
        };
        self.tlb.insert(user, lin, entry);
        Ok(t.phys)
    }

    /// A CR3 load (MOV CR3, task switch): flush what CR3 covers.
    pub(crate) fn set_cr3(&mut self, value: u32) {
        self.cr3 = value;
        if self.cr4 & cr4::PGE != 0 {
            self.tlb.flush_non_global();
        } else {
            self.tlb.flush_all();
        }
    }
}

#[inline(always)]
fn access_allowed(page_user: bool, page_write: bool, write: bool, user: bool, wp: bool) -> bool {
    if user {
        page_user && (!write || page_write)
    } else {
        !write || page_write || !wp
    }
}
