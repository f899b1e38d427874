//! Direct boot: loading a kernel into guest memory and starting the CPU at
//! its 32-bit entry point without firmware, the way QEMU's `-kernel` does.
//!
//! - `linux.rs`: the Linux x86 boot protocol (bzImage, 2.06 or newer);
//! - `multiboot.rs`: Multiboot v1 kernels (ELF32 or the a.out kludge) with modules.
//!
//! Both share the physical memory layout below, the e820 map and the flat
//! boot GDT.

pub mod linux;
pub mod multiboot;

use thiserror::Error;

use crate::cpu::{Cpu, Seg, SegCache, TableReg, cr0, reg};
use crate::memory::PhysMemory;

/// Where direct boot puts things in low memory.
pub mod layout {
    /// The boot GDT (null, null, flat code 0x10, flat data 0x18).
    pub const GDT: u32 = 0x6000;
    /// Linux's zero page (`struct boot_params`).
    pub const ZERO_PAGE: u32 = 0x7000;
    /// The Multiboot information structure and the tables it points to.
    pub const MULTIBOOT_INFO: u32 = 0x9000;
    /// The kernel command line.
    pub const CMDLINE: u32 = 0x2_0000;
    /// Room for the command line.
    pub const CMDLINE_MAX: u32 = 0x1_0000;
    /// Top of conventional memory: the EBDA and the BIOS area above it are reserved.
    pub const EBDA: u32 = 0x9_FC00;
    /// Where a bzImage's protected-mode kernel is loaded.
    pub const KERNEL: u32 = 0x10_0000;
    /// Copy of the ACPI RSDP in the BIOS area, where a search finds it.
    pub const RSDP_LOW: u32 = 0xE_0000;
}

/// Selector of the flat 32-bit code segment in the boot GDT (Linux's `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the flat data segment in the boot GDT (Linux's `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;

/// Flat 4 GiB code (execute/read, DPL 0, 32-bit) and data (read/write) descriptors.
const FLAT_CODE: u64 = 0x00CF_9B00_0000_FFFF;
const FLAT_DATA: u64 = 0x00CF_9300_0000_FFFF;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("{what} is not a bzImage (no HdrS setup header)")]
    NotBzImage { what: String },
    #[error("kernel boot protocol {major}.{minor:02} is too old: 2.06 or newer is needed")]
    ProtocolTooOld { major: u8, minor: u8 },
    #[error("the kernel is not loadable high (LOADED_HIGH is clear): a zImage is not supported")]
    NotLoadedHigh,
    #[error("the kernel image is truncated: {0}")]
    Truncated(&'static str),
    #[error("the kernel needs {need:#x} bytes at {at:#x} but guest RAM ends at {ram:#x}")]
    KernelTooBig { at: u32, need: u64, ram: u32 },
    #[error(
        "the initrd ({size} bytes) does not fit in guest RAM below {limit:#x} above the kernel (ends at {kernel_end:#x}); give the VM more memory"
    )]
    InitrdTooBig {
        size: u64,
        limit: u32,
        kernel_end: u32,
    },
    #[error("the command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: u32 },
    #[error("{what} is not a Multiboot v1 kernel (no header in its first 8 KiB)")]
    NotMultiboot { what: String },
    #[error("Multiboot kernel: {0}")]
    Multiboot(String),
    #[error("Multiboot module {index} ({size} bytes) does not fit in guest RAM")]
    ModuleTooBig { index: usize, size: u64 },
}

/// One e820 entry: base, length, type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub base: u64,
    pub len: u64,
    pub kind: E820Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
    Acpi = 3,
}

/// The memory map of a machine with `ram_size` bytes of RAM whose top
/// `acpi_len` bytes hold the ACPI tables.
pub fn e820_map(ram_size: u32, acpi_len: u32) -> Vec<E820Entry> {
    let e = |base: u64, len: u64, kind| E820Entry { base, len, kind };
    let top = (ram_size - acpi_len) as u64;
    let mut map = vec![
        e(0, layout::EBDA as u64, E820Kind::Ram),
        e(
            layout::EBDA as u64,
            0xA_0000 - layout::EBDA as u64,
            E820Kind::Reserved,
        ),
        e(0xE_0000, 0x2_0000, E820Kind::Reserved),
        e(0x10_0000, top - 0x10_0000, E820Kind::Ram),
    ];
    if acpi_len > 0 {
        map.push(e(top, acpi_len as u64, E820Kind::Acpi));
    }
    // The local APIC page and the BIOS flash below 4 GiB.
    map.push(e(0xFEE0_0000, 0x1000, E820Kind::Reserved));
    map.push(e(0xFFFC_0000, 0x4_0000, E820Kind::Reserved));
    map
}

/// Writes the boot GDT and puts the CPU in 32-bit protected mode with flat
/// segments, interrupts off, paging off, at `entry`.
pub(crate) fn enter_protected_flat(cpu: &mut Cpu, entry: u32) {
    let mut gdt = [0u8; 32];
    gdt[16..24].copy_from_slice(&FLAT_CODE.to_le_bytes());
    gdt[24..32].copy_from_slice(&FLAT_DATA.to_le_bytes());
    cpu.write_phys_bytes(layout::GDT, &gdt);
    cpu.reset();
    cpu.set_gdtr(TableReg {
        base: layout::GDT,
        limit: 31,
    });
    cpu.set_cr0(cr0::PE | cr0::ET);
    cpu.set_seg_cache(Seg::CS, SegCache::from_descriptor(BOOT_CS, FLAT_CODE));
    for s in [Seg::DS, Seg::ES, Seg::SS, Seg::FS, Seg::GS] {
        cpu.set_seg_cache(s, SegCache::from_descriptor(BOOT_DS, FLAT_DATA));
    }
    cpu.set_eflags(0x2);
    for r in 0..8 {
        cpu.set_gpr(r, 0);
    }
    cpu.set_eip(entry);
    debug_assert_eq!(reg::EAX, 0);
}

/// Copies `bytes` to guest RAM at `addr`, or explains why it does not fit.
fn load(mem: &mut PhysMemory, addr: u32, bytes: &[u8]) -> Result<(), BootError> {
    if mem.load(addr, bytes) {
        Ok(())
    } else {
        Err(BootError::KernelTooBig {
            at: addr,
            need: bytes.len() as u64,
            ram: mem.ram_size(),
        })
    }
}

/// Little-endian field readers over a byte slice that return None past its end.
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserves_the_bios_area_and_acpi_tables() {
        let map = e820_map(64 << 20, 0x1_0000);
        assert_eq!(
            map[0],
            E820Entry {
                base: 0,
                len: 0x9_FC00,
                kind: E820Kind::Ram
            }
        );
        let high = map[3];
        assert_eq!(
            (high.base, high.len),
            (0x10_0000, (64 << 20) - 0x10_0000 - 0x1_0000)
        );
        assert_eq!(map[4].kind, E820Kind::Acpi);
    }
}
