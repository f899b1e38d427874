//! Guest physical memory: one contiguous host allocation holding RAM and the
//! ROM images, and a small map saying what each physical address is.
//!
//! RAM occupies `backing[0..ram_size]`; ROM images follow it. A physical
//! address resolves to a [`Region`]: an offset into `backing` (RAM or ROM) or
//! MMIO, which the CPU hands to its [`Bus`](crate::Bus). The map is consulted
//! only when the software TLB is filled, so its cost is off the hot path.

use std::os::fd::BorrowedFd;

use thiserror::Error;

use crate::backing::{Backing, BackingError};

pub const PAGE_SIZE: u32 = 4096;

/// What a physical page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Guest RAM at this offset of the backing store.
    Ram(u32),
    /// Read-only memory at this offset of the backing store; writes are dropped.
    Rom(u32),
    /// Device memory, or nothing: handled by the bus.
    Mmio,
}

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("RAM size {0:#x} bytes is not a non-zero multiple of 4 KiB below 3.5 GiB")]
    BadRamSize(u64),
    #[error(
        "ROM image of {len:#x} bytes at {base:#x} is empty, not 4 KiB-aligned, or runs past 4 GiB"
    )]
    BadRom { base: u32, len: usize },
    #[error("region {base:#x}+{len:#x} overlaps an earlier region")]
    Overlap { base: u32, len: u32 },
    #[error(
        "buffer of {len:#x} bytes at {base:#x} is empty, not 4 KiB-aligned, or runs past 4 GiB"
    )]
    BadBuffer { base: u32, len: u64 },
    #[error(transparent)]
    Host(#[from] BackingError),
}

#[derive(Clone, Debug)]
struct Overlay {
    start: u32,
    /// Inclusive end.
    last: u32,
    kind: OverlayKind,
}

#[derive(Clone, Copy, Debug)]
enum OverlayKind {
    /// A ROM image whose first byte is at this backing offset.
    Rom(u32),
    /// Memory the caller supplied (a framebuffer), writable like RAM,
    /// whose first byte is at this backing offset.
    Buffer(u32),
    Mmio,
}

/// Guest physical memory.
pub struct PhysMemory {
    pub(crate) backing: Backing,
    ram_size: u32,
    overlays: Vec<Overlay>,
    /// Physical address mask applied by the A20 gate (bit 20 clear when the gate is off).
    a20_mask: u32,
}

/// Highest RAM size accepted: everything above 3.5 GiB is the PCI hole.
pub const MAX_RAM: u64 = 0xE000_0000;

impl PhysMemory {
    /// Guest RAM of `ram_size` bytes, zeroed, A20 enabled.
    pub fn new(ram_size: u64) -> Result<Self, MemoryError> {
        if ram_size == 0 || !ram_size.is_multiple_of(PAGE_SIZE as u64) || ram_size > MAX_RAM {
            return Err(MemoryError::BadRamSize(ram_size));
        }
        let mut backing = Backing::new()?;
        backing.grow(ram_size as usize)?;
        Ok(Self {
            backing,
            ram_size: ram_size as u32,
            overlays: Vec::new(),
            a20_mask: u32::MAX,
        })
    }

    pub fn ram_size(&self) -> u32 {
        self.ram_size
    }

    /// Maps a ROM image at `base` (it hides any RAM below it).
    pub fn add_rom(&mut self, base: u32, image: &[u8]) -> Result<(), MemoryError> {
        let bad = MemoryError::BadRom {
            base,
            len: image.len(),
        };
        if image.is_empty() || !base.is_multiple_of(PAGE_SIZE) {
            return Err(bad);
        }
        let len =
            u32::try_from(image.len().next_multiple_of(PAGE_SIZE as usize)).map_err(|_| bad)?;
        let last = base.checked_add(len - 1).ok_or(MemoryError::BadRom {
            base,
            len: image.len(),
        })?;
        self.check_free(base, last)?;
        let off = self.backing.grow(len as usize)?;
        self.backing[off..off + len as usize].fill(0xFF);
        self.backing[off..off + image.len()].copy_from_slice(image);
        let off = off as u32;
        self.overlays.push(Overlay {
            start: base,
            last,
            kind: OverlayKind::Rom(off),
        });
        Ok(())
    }

    /// Maps the same ROM bytes a second time (the BIOS appears both below
    /// 1 MiB and below 4 GiB). `source` must be the base of an earlier ROM.
    pub fn alias_rom(&mut self, source: u32, base: u32, len: u32) -> Result<(), MemoryError> {
        let bad = MemoryError::BadRom {
            base,
            len: len as usize,
        };
        let Some(&Overlay {
            kind: OverlayKind::Rom(off),
            last: src_last,
            ..
        }) = self.overlays.iter().find(|o| o.start == source)
        else {
            return Err(bad);
        };
        if len == 0
            || !base.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || len - 1 > src_last - source
        {
            return Err(bad);
        }
        let last = base.checked_add(len - 1).ok_or(bad)?;
        self.check_free(base, last)?;
        self.overlays.push(Overlay {
            start: base,
            last,
            kind: OverlayKind::Rom(off),
        });
        Ok(())
    }

    /// Maps guest-physical `[base, base+len)` to memory private to this
    /// machine that behaves like RAM (a framebuffer nobody else reads).
    /// Returns its backing offset.
    pub fn add_buffer(&mut self, base: u32, len: u64) -> Result<u32, MemoryError> {
        let last = self.buffer_range(base, len)?;
        let off = self.backing.grow(len as usize)? as u32;
        self.push_buffer(base, last, off);
        Ok(off)
    }

    /// Maps guest-physical `[base, base+len)` to `len` bytes of `fd` from
    /// `fd_offset`, shared: guest stores land in the file (the worker's
    /// framebuffer memfd) with no copy. Returns its backing offset.
    pub fn add_shared_buffer(
        &mut self,
        base: u32,
        len: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
    ) -> Result<u32, MemoryError> {
        let last = self.buffer_range(base, len)?;
        let off = self.backing.map_shared(fd, fd_offset, len as usize)? as u32;
        self.push_buffer(base, last, off);
        Ok(off)
    }

    fn buffer_range(&self, base: u32, len: u64) -> Result<u32, MemoryError> {
        let bad = MemoryError::BadBuffer { base, len };
        if len == 0 || !base.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE as u64) {
            return Err(bad);
        }
        let last = u32::try_from(base as u64 + len - 1).map_err(|_| bad)?;
        self.check_free(base, last)?;
        Ok(last)
    }

    fn push_buffer(&mut self, start: u32, last: u32, off: u32) {
        self.overlays.push(Overlay {
            start,
            last,
            kind: OverlayKind::Buffer(off),
        });
    }

    /// The bytes of a region added with `add_buffer`/`add_shared_buffer`
    /// (or any RAM range), for the platform to read a framebuffer.
    pub fn bytes(&self, base: u32, len: u32) -> Option<&[u8]> {
        let off = match self.region(base) {
            Region::Ram(o) | Region::Rom(o) => o as usize,
            Region::Mmio => return None,
        };
        self.backing.get(off..off.checked_add(len as usize)?)
    }

    /// Declares `[base, base+len)` device memory (hiding RAM there).
    pub fn add_mmio(&mut self, base: u32, len: u32) -> Result<(), MemoryError> {
        let bad = || MemoryError::Overlap { base, len };
        let last = base
            .checked_add(len.checked_sub(1).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        self.check_free(base, last)?;
        self.overlays.push(Overlay {
            start: base,
            last,
            kind: OverlayKind::Mmio,
        });
        Ok(())
    }

    fn check_free(&self, start: u32, last: u32) -> Result<(), MemoryError> {
        if self
            .overlays
            .iter()
            .any(|o| start <= o.last && o.start <= last)
        {
            return Err(MemoryError::Overlap {
                base: start,
                len: last - start + 1,
            });
        }
        Ok(())
    }

    /// What `addr` (after the A20 mask) is. Region offsets are for `addr`
    /// itself, not its page.
    pub fn region(&self, addr: u32) -> Region {
        for o in &self.overlays {
            if o.start <= addr && addr <= o.last {
                return match o.kind {
                    OverlayKind::Rom(off) => Region::Rom(off + (addr - o.start)),
                    OverlayKind::Buffer(off) => Region::Ram(off + (addr - o.start)),
                    OverlayKind::Mmio => Region::Mmio,
                };
            }
        }
        if addr < self.ram_size {
            Region::Ram(addr)
        } else {
            Region::Mmio
        }
    }

    pub fn a20_enabled(&self) -> bool {
        self.a20_mask == u32::MAX
    }

    pub fn set_a20(&mut self, enabled: bool) {
        self.a20_mask = if enabled { u32::MAX } else { !(1 << 20) };
    }

    #[inline(always)]
    pub fn a20_mask(&self) -> u32 {
        self.a20_mask
    }

    /// Guest RAM, for loaders and DMA. Writers that may overwrite guest code
    /// must go through the CPU (`Cpu::write_phys`) so cached code is dropped.
    pub fn ram(&self) -> &[u8] {
        &self.backing[..self.ram_size as usize]
    }

    /// Copies `bytes` into guest RAM at physical `addr` (loaders, before the
    /// CPU runs: no cached code to invalidate). False if it does not fit in RAM.
    pub fn load(&mut self, addr: u32, bytes: &[u8]) -> bool {
        let Some(end) = (addr as usize).checked_add(bytes.len()) else {
            return false;
        };
        if end > self.ram_size as usize {
            return false;
        }
        self.backing[addr as usize..end].copy_from_slice(bytes);
        true
    }

    /// The backing bytes of the whole backing store (RAM, then ROMs).
    pub(crate) fn backing_len(&self) -> usize {
        self.backing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rom_hides_ram_and_aliases_share_bytes() {
        let mut m = PhysMemory::new(2 << 20).unwrap();
        m.add_rom(0xF0000, &[0xEA; 0x10000]).unwrap();
        m.alias_rom(0xF0000, 0xFFFF_0000, 0x10000).unwrap();
        assert_eq!(m.region(0x1000), Region::Ram(0x1000));
        assert_eq!(m.region(0xF0010), Region::Rom((2 << 20) + 0x10));
        assert_eq!(m.region(0xFFFF_0010), Region::Rom((2 << 20) + 0x10));
        assert_eq!(m.region(0x300000), Region::Mmio);
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let mut m = PhysMemory::new(1 << 20).unwrap();
        m.add_mmio(0xA0000, 0x20000).unwrap();
        assert!(matches!(
            m.add_rom(0xB0000, &[0; 4096]),
            Err(MemoryError::Overlap { .. })
        ));
    }

    #[test]
    fn bad_ram_sizes_are_refused() {
        assert!(PhysMemory::new(0).is_err());
        assert!(PhysMemory::new(4095).is_err());
        assert!(PhysMemory::new(4 << 30).is_err());
    }
}
