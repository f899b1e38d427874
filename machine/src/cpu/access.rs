//! Guest memory access: segment checks, then the software TLB, then (on a
//! miss, a page-crossing access, MMIO or a write to a code page) the slow
//! path through the page walker and the physical memory map.

use super::fault::{Fault, Result};
use super::paging::tlb_index;
use super::segment::rights;
use super::{Cpu, Seg};
use crate::bus::IoSize;
use crate::memory::Region;

/// The TLB tag an access of `n` bytes at `lin` must match to take the fast
/// path: the page of its last byte. Entries are indexed by the page of the
/// first byte, and two pages with the same index cannot both be cached, so
/// a page-crossing access never matches.
#[inline(always)]
fn tag_of(lin: u32, n: u32) -> u32 {
    lin.wrapping_add(n - 1) & !0xFFF
}

/// The host address of linear `lin` through a TLB entry's `host`. Every
/// entry with a valid tag maps its linear page to a whole 4 KiB page of the
/// backing store (`translate_fill` installs only RAM and ROM pages, which
/// are page-aligned and page-sized), and the backing reservation never
/// moves or shrinks; so for an access that a tag compare placed within that
/// page, the returned pointer is valid for the access's size.
#[inline(always)]
fn host_ptr(lin: u32, host: *mut u8) -> *mut u8 {
    host.wrapping_add(lin as usize)
}

macro_rules! lin_access {
    ($read:ident, $write:ident, $ty:ty, $n:expr) => {
        /// Reads from a linear address with the given privilege.
        #[inline(always)]
        pub(crate) fn $read(&mut self, lin: u32, user: bool) -> Result<$ty> {
            let e = &self.tlb.sets[user as usize][tlb_index(lin)];
            if e.rtag == tag_of(lin, $n) {
                // SAFETY: a matching read tag means the access lies within
                // one page that the entry maps to a whole page of the
                // backing store (see `host_ptr`).
                return Ok(unsafe { host_ptr(lin, e.host).cast::<$ty>().read_unaligned() });
            }
            Ok(self.read_lin_slow(lin, $n, user)? as $ty)
        }

        /// Writes to a linear address with the given privilege.
        #[inline(always)]
        pub(crate) fn $write(&mut self, lin: u32, value: $ty, user: bool) -> Result<()> {
            let e = &self.tlb.sets[user as usize][tlb_index(lin)];
            if e.wtag == tag_of(lin, $n) {
                // SAFETY: as for reads; a write tag also means the page is
                // RAM without cached code.
                unsafe { host_ptr(lin, e.host).cast::<$ty>().write_unaligned(value) };
                return Ok(());
            }
            self.write_lin_slow(lin, value as u64, $n, user)
        }
    };
}

macro_rules! seg_access {
    ($read:ident, $write:ident, $rfast:ident, $wfast:ident, $rmw:ident, $slow:ident, $wslow:ident, $rlin:ident, $wlin:ident, $ty:ty, $n:expr) => {
        /// Reads `seg:off` with the current privilege.
        #[inline(always)]
        pub(crate) fn $read(&mut self, seg: Seg, off: u32) -> Result<$ty> {
            if let Some(v) = self.$rfast(seg, off) {
                return Ok(v);
            }
            self.$slow(seg, off, rights::READ).map(|(_, v)| v)
        }

        /// The fast path of a read of `seg:off`: `None` when it needs the
        /// full checks (callers then take their out-of-line slow path).
        #[inline(always)]
        pub(crate) fn $rfast(&self, seg: Seg, off: u32) -> Option<$ty> {
            let s = &self.segs[seg as usize];
            if off < s.rend {
                let lin = s.base.wrapping_add(off);
                let e = self.tlb.current(lin);
                if e.rtag == tag_of(lin, $n) {
                    // SAFETY: a matching read tag: see `host_ptr`.
                    return Some(unsafe { host_ptr(lin, e.host).cast::<$ty>().read_unaligned() });
                }
            }
            None
        }

        /// The fast path of a write of `seg:off`: false (nothing written)
        /// when it needs the full checks.
        #[inline(always)]
        pub(crate) fn $wfast(&mut self, seg: Seg, off: u32, value: $ty) -> bool {
            let s = &self.segs[seg as usize];
            if off < s.wend {
                let lin = s.base.wrapping_add(off);
                let e = self.tlb.current(lin);
                if e.wtag == tag_of(lin, $n) {
                    // SAFETY: a matching write tag: see `host_ptr`.
                    unsafe { host_ptr(lin, e.host).cast::<$ty>().write_unaligned(value) };
                    return true;
                }
            }
            false
        }

        /// Writes `seg:off` with the current privilege.
        #[inline(always)]
        pub(crate) fn $write(&mut self, seg: Seg, off: u32, value: $ty) -> Result<()> {
            if self.$wfast(seg, off, value) {
                return Ok(());
            }
            self.$wslow(seg, off, value)
        }

        /// The full path of a write of `seg:off`.
        #[inline(never)]
        fn $wslow(&mut self, seg: Seg, off: u32, value: $ty) -> Result<()> {
            let lin = self.seg_check(seg, off, $n, rights::WRITE)?;
            self.$wlin(lin, value, self.cpl == 3)
        }

        /// The read half of a read-modify-write: checks for write access
        /// (as hardware does) and returns the linear address for the write.
        #[inline(always)]
        pub(crate) fn $rmw(&mut self, seg: Seg, off: u32) -> Result<(u32, $ty)> {
            let s = &self.segs[seg as usize];
            if off < s.wend {
                let lin = s.base.wrapping_add(off);
                let e = self.tlb.current(lin);
                // A write tag implies the read tag of the same page.
                if e.wtag == tag_of(lin, $n) {
                    // SAFETY: a matching write tag: see `host_ptr`.
                    let v = unsafe { host_ptr(lin, e.host).cast::<$ty>().read_unaligned() };
                    return Ok((lin, v));
                }
            }
            self.$slow(seg, off, rights::READ | rights::WRITE)
        }

        /// The full path of a read or read-modify-write of `seg:off`.
        #[inline(never)]
        fn $slow(&mut self, seg: Seg, off: u32, need: u8) -> Result<(u32, $ty)> {
            let lin = self.seg_check(seg, off, $n, need)?;
            let user = self.cpl == 3;
            if need & rights::WRITE != 0 {
                let e = &self.tlb.sets[user as usize][tlb_index(lin)];
                if e.wtag != tag_of(lin, $n) {
                    self.prepare_write(lin, $n, user)?;
                }
            }
            Ok((lin, self.$rlin(lin, user)?))
        }
    };
}

impl Cpu {
    /// The host address of an `n`-byte read-modify-write of `seg:off` when
    /// the write fast path hits (a write tag implies the read tag, RAM and
    /// no cached code on the page): `None` when it needs the full checks.
    #[inline(always)]
    pub(crate) fn rmw_ptr_fast(&self, seg: Seg, off: u32, n: u32) -> Option<*mut u8> {
        let s = &self.segs[seg as usize];
        if off < s.wend {
            let lin = s.base.wrapping_add(off);
            let e = self.tlb.current(lin);
            if e.wtag == tag_of(lin, n) {
                return Some(host_ptr(lin, e.host));
            }
        }
        None
    }

    lin_access!(read_lin_u8, write_lin_u8, u8, 1);
    lin_access!(read_lin_u16, write_lin_u16, u16, 2);
    lin_access!(read_lin_u32, write_lin_u32, u32, 4);

    seg_access!(
        read_u8,
        write_u8,
        read_fast_u8,
        write_fast_u8,
        rmw_u8,
        slow_u8,
        wslow_u8,
        read_lin_u8,
        write_lin_u8,
        u8,
        1
    );
    seg_access!(
        read_u16,
        write_u16,
        read_fast_u16,
        write_fast_u16,
        rmw_u16,
        slow_u16,
        wslow_u16,
        read_lin_u16,
        write_lin_u16,
        u16,
        2
    );
    seg_access!(
        read_u32,
        write_u32,
        read_fast_u32,
        write_fast_u32,
        rmw_u32,
        slow_u32,
        wslow_u32,
        read_lin_u32,
        write_lin_u32,
        u32,
        4
    );

    /// Writes the second half of a read-modify-write at the current privilege.
    #[inline(always)]
    pub(crate) fn rmw_write_u8(&mut self, lin: u32, v: u8) -> Result<()> {
        self.write_lin_u8(lin, v, self.cpl == 3)
    }
    #[inline(always)]
    pub(crate) fn rmw_write_u16(&mut self, lin: u32, v: u16) -> Result<()> {
        self.write_lin_u16(lin, v, self.cpl == 3)
    }
    #[inline(always)]
    pub(crate) fn rmw_write_u32(&mut self, lin: u32, v: u32) -> Result<()> {
        self.write_lin_u32(lin, v, self.cpl == 3)
    }

    /// Reads 8 bytes at `seg:off` (CMPXCHG8B, far pointers with 32-bit
    /// offsets, x87 double and integer loads).
    pub(crate) fn read_u64(&mut self, seg: Seg, off: u32) -> Result<u64> {
        let lin = self.seg_check(seg, off, 8, rights::READ)?;
        let user = self.cpl == 3;
        if (lin & 0xFFF) > 0xFF8 {
            self.translate(lin, false, user)?;
            self.translate(lin.wrapping_add(7) & !0xFFF, false, user)?;
        }
        let lo = self.read_lin_u32(lin, user)? as u64;
        let hi = self.read_lin_u32(lin.wrapping_add(4), user)? as u64;
        Ok(lo | hi << 32)
    }

    /// Writes 8 bytes at `seg:off`; both pages are checked before either is written.
    pub(crate) fn write_u64(&mut self, seg: Seg, off: u32, v: u64) -> Result<()> {
        let lin = self.seg_check(seg, off, 8, rights::WRITE)?;
        let user = self.cpl == 3;
        self.prepare_write(lin, 8, user)?;
        self.write_lin_u32(lin, v as u32, user)?;
        self.write_lin_u32(lin.wrapping_add(4), (v >> 32) as u32, user)
    }

    /// Checks that `[lin, lin+len)` (len ≤ 4096) is writable, faulting
    /// before anything is written (an access may cross into a second page).
    pub(crate) fn prepare_write(&mut self, lin: u32, len: u32, user: bool) -> Result<()> {
        self.translate(lin, true, user)?;
        let last = lin.wrapping_add(len - 1);
        if last & !0xFFF != lin & !0xFFF {
            self.translate(last & !0xFFF, true, user)?;
        }
        Ok(())
    }

    /// Segment limit and rights check; returns the linear address.
    #[inline(always)]
    pub(crate) fn seg_check(&self, seg: Seg, off: u32, size: u32, need: u8) -> Result<u32> {
        let s = &self.segs[seg as usize];
        if s.rights & need != need || off < s.lo || off > s.hi || s.hi - off < size - 1 {
            return Err(self.seg_fault(seg));
        }
        Ok(s.base.wrapping_add(off))
    }

    /// The exception a failed check on `seg` raises: #SS(0) for the stack
    /// segment, #GP(0) otherwise.
    pub(crate) fn seg_fault(&self, seg: Seg) -> Fault {
        if seg == Seg::SS {
            Fault::ss(0)
        } else {
            Fault::GP0
        }
    }

    /// Supervisor-privileged linear reads (descriptor tables, TSS, IDT):
    /// these ignore CPL as the hardware's implicit accesses do.
    pub(crate) fn read_sys_u32(&mut self, lin: u32) -> Result<u32> {
        self.read_lin_u32(lin, false)
    }
    pub(crate) fn read_sys_u16(&mut self, lin: u32) -> Result<u16> {
        self.read_lin_u16(lin, false)
    }
    pub(crate) fn read_sys_u8(&mut self, lin: u32) -> Result<u8> {
        self.read_lin_u8(lin, false)
    }
    pub(crate) fn write_sys_u32(&mut self, lin: u32, v: u32) -> Result<()> {
        self.write_lin_u32(lin, v, false)
    }
    pub(crate) fn write_sys_u16(&mut self, lin: u32, v: u16) -> Result<()> {
        self.write_lin_u16(lin, v, false)
    }
    pub(crate) fn write_sys_u8(&mut self, lin: u32, v: u8) -> Result<()> {
        self.write_lin_u8(lin, v, false)
    }

    #[cold]
    fn read_lin_slow(&mut self, lin: u32, n: u32, user: bool) -> Result<u32> {
        let last = lin.wrapping_add(n - 1);
        if last & !0xFFF == lin & !0xFFF {
            let phys = self.translate_fill(lin, false, user)?;
            return Ok(self.read_phys(phys, n));
        }
        // Crosses a page: translate both pages first so a fault on the
        // second leaves no side effects, then read byte by byte.
        let p0 = self.translate(lin, false, user)?.phys;
        let p1 = self.translate(last & !0xFFF, false, user)?.phys;
        let mut v = 0u32;
        for i in 0..n {
            let a = lin.wrapping_add(i);
            let p = if a & !0xFFF == lin & !0xFFF {
                p0 + (a - lin)
            } else {
                p1 + (a & 0xFFF)
            };
            v |= self.read_phys(p, 1) << (8 * i);
        }
        Ok(v)
    }

    #[cold]
    fn write_lin_slow(&mut self, lin: u32, v: u64, n: u32, user: bool) -> Result<()> {
        let last = lin.wrapping_add(n - 1);
        if last & !0xFFF == lin & !0xFFF {
            let phys = self.translate_fill(lin, true, user)?;
            self.write_phys(phys, n, v as u32);
            return Ok(());
        }
        let p0 = self.translate(lin, true, user)?.phys;
        let p1 = self.translate(last & !0xFFF, true, user)?.phys;
        for i in 0..n {
            let a = lin.wrapping_add(i);
            let p = if a & !0xFFF == lin & !0xFFF {
                p0 + (a - lin)
            } else {
                p1 + (a & 0xFFF)
            };
            self.write_phys(p, 1, (v >> (8 * i)) as u32 & 0xFF);
        }
        Ok(())
    }

    /// Reads `n` (1, 2 or 4) bytes of physical memory; the access must not
    /// cross a page.
    pub(crate) fn read_phys(&mut self, phys: u32, n: u32) -> u32 {
        match self.mem.region(phys) {
            Region::Ram(o) | Region::Rom(o) => {
                let o = o as usize;
                let mut b = [0u8; 4];
                b[..n as usize].copy_from_slice(&self.mem.backing[o..o + n as usize]);
                u32::from_le_bytes(b)
            }
            Region::Mmio => self.bus.mmio_read(phys, IoSize::from_bytes(n)),
        }
    }

    /// Writes `n` (1, 2 or 4) bytes of physical memory, dropping any cached
    /// code on the page; the access must not cross a page.
    pub(crate) fn write_phys(&mut self, phys: u32, n: u32, v: u32) {
        match self.mem.region(phys) {
            Region::Ram(o) => {
                if self.code.page_has_code(o) {
                    self.invalidate_code(o);
                }
                let o = o as usize;
                self.mem.backing[o..o + n as usize].copy_from_slice(&v.to_le_bytes()[..n as usize]);
            }
            Region::Rom(_) => {}
            Region::Mmio => self.bus.mmio_write(phys, IoSize::from_bytes(n), v),
        }
    }

    pub(crate) fn read_phys_u32(&mut self, phys: u32) -> u32 {
        self.read_phys(phys, 4)
    }

    pub(crate) fn write_phys_u32(&mut self, phys: u32, v: u32) {
        self.write_phys(phys, 4, v)
    }

    /// Copies bytes into guest physical memory (loaders, DMA): cached code
    /// on the written pages is dropped; ROM is skipped; MMIO gets byte
    /// writes. A page at a time: RAM pages are one copy each.
    pub fn write_phys_bytes(&mut self, phys: u32, data: &[u8]) {
        self.copy_in(phys, data, true);
    }

    /// A bus master's write: as [`Cpu::write_phys_bytes`], but MMIO is no
    /// DMA target (the writes are dropped; the board is busy with the DMA).
    pub(crate) fn dma_write(&mut self, phys: u32, data: &[u8]) {
        self.copy_in(phys, data, false);
    }

    fn copy_in(&mut self, phys: u32, data: &[u8], to_mmio: bool) {
        for_each_page(phys, data.len(), |addr, range| {
            let bytes = &data[range];
            match self.mem.region(addr) {
                Region::Ram(o) => {
                    if self.code.page_has_code(o) {
                        self.invalidate_code(o);
                    }
                    let o = o as usize;
                    self.mem.backing[o..o + bytes.len()].copy_from_slice(bytes);
                }
                Region::Rom(_) => {}
                Region::Mmio if !to_mmio => {}
                Region::Mmio => {
                    for (i, &b) in bytes.iter().enumerate() {
                        self.bus
                            .mmio_write(addr.wrapping_add(i as u32), IoSize::Byte, b as u32);
                    }
                }
            }
        });
    }

    /// Reads guest physical memory (RAM and ROM; MMIO reads through the
    /// bus), a page at a time.
    pub fn read_phys_bytes(&mut self, phys: u32, out: &mut [u8]) {
        self.copy_out(phys, out, true);
    }

    /// A bus master's read: as [`Cpu::read_phys_bytes`], but MMIO is no
    /// DMA source (it reads as all ones; the board is busy with the DMA).
    pub(crate) fn dma_read(&mut self, phys: u32, out: &mut [u8]) {
        self.copy_out(phys, out, false);
    }

    fn copy_out(&mut self, phys: u32, out: &mut [u8], from_mmio: bool) {
        for_each_page(phys, out.len(), |addr, range| {
            let out = &mut out[range];
            match self.mem.region(addr) {
                Region::Ram(o) | Region::Rom(o) => {
                    let o = o as usize;
                    out.copy_from_slice(&self.mem.backing[o..o + out.len()]);
                }
                Region::Mmio if !from_mmio => out.fill(0xFF),
                Region::Mmio => {
                    for (i, b) in out.iter_mut().enumerate() {
                        *b = self
                            .bus
                            .mmio_read(addr.wrapping_add(i as u32), IoSize::Byte)
                            as u8;
                    }
                }
            }
        });
    }
}

/// Splits `len` bytes from physical address `phys` at 4 KiB page
/// boundaries (every region of the memory map is whole pages): calls `f`
/// with each piece's address and its range in the caller's buffer.
fn for_each_page(phys: u32, len: usize, mut f: impl FnMut(u32, std::ops::Range<usize>)) {
    let mut done = 0;
    while done < len {
        let addr = phys.wrapping_add(done as u32);
        let chunk = (0x1000 - (addr & 0xFFF) as usize).min(len - done);
        f(addr, done..done + chunk);
        done += chunk;
    }
}
