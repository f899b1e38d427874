//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 32-bit
//! entry: the protected-mode kernel of a bzImage is loaded at 1 MiB, the
//! zero page (`struct boot_params`) carries the setup header, the command
//! line, the initrd, the e820 map, the framebuffer (`screen_info`) and the
//! ACPI RSDP address, and the CPU starts at the 32-bit entry with ESI
//! pointing at the zero page.

use super::{BootError, E820Entry, enter_protected_flat, layout, le16, le32, load};
use crate::cpu::{Cpu, reg};

/// Offsets in the bzImage / zero page (the setup header lives at 0x1F1 in both).
mod off {
    pub const SETUP_SECTS: usize = 0x1F1;
    pub const BOOT_FLAG: usize = 0x1FE;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21C;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const INIT_SIZE: usize = 0x260;
    // boot_params fields outside the setup header.
    pub const SCREEN_INFO: usize = 0x000;
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const E820_ENTRIES: usize = 0x1E8;
    pub const E820_TABLE: usize = 0x2D0;
}

const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
/// `screen_info.orig_video_isVGA` for a linear framebuffer set up by the
/// boot loader (vesafb / simplefb take it).
const VIDEO_TYPE_VLFB: u8 = 0x23;
const E820_MAX: usize = 128;

/// The framebuffer to describe in `screen_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearFramebuffer {
    pub base: u32,
    pub width: u16,
    pub height: u16,
    /// Bytes per scanline.
    pub stride: u16,
    /// Size of the framebuffer memory in bytes.
    pub size: u32,
}

/// Everything a direct Linux boot needs besides the machine.
pub struct LinuxBoot<'a> {
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    pub e820: &'a [E820Entry],
    pub framebuffer: Option<LinearFramebuffer>,
    pub acpi_rsdp: Option<u32>,
    /// Highest address + 1 the initrd may reach (the start of the ACPI tables).
    pub ram_top: u32,
}

/// What the loader put where, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub protocol: u16,
    pub entry: u32,
    pub kernel_end: u32,
    pub initrd: Option<(u32, u32)>,
}

/// Parses the setup header of a bzImage and checks what we need of it.
pub fn check_header(kernel: &[u8]) -> Result<u16, BootError> {
    let not = || BootError::NotBzImage {
        what: "the kernel".into(),
    };
    if le16(kernel, off::BOOT_FLAG) != Some(0xAA55)
        || kernel.get(off::HEADER..off::HEADER + 4) != Some(b"HdrS")
    {
        return Err(not());
    }
    let version = le16(kernel, off::VERSION).ok_or_else(not)?;
    if version < 0x0206 {
        return Err(BootError::ProtocolTooOld {
            major: (version >> 8) as u8,
            minor: version as u8,
        });
    }
    if kernel[off::LOADFLAGS] & LOADED_HIGH == 0 {
        return Err(BootError::NotLoadedHigh);
    }
    Ok(version)
}

/// Loads the kernel, initrd, command line and zero page, and sets the CPU
/// at the 32-bit entry point.
pub fn load_linux(cpu: &mut Cpu, boot: &LinuxBoot) -> Result<Loaded, BootError> {
    let k = boot.kernel;
    let protocol = check_header(k)?;
    let setup_sects = match k[off::SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let pm = k
        .get(pm_start..)
        .filter(|pm| !pm.is_empty())
        .ok_or(BootError::Truncated(
            "no protected-mode kernel after the setup sectors",
        ))?;
    let init_size = le32(k, off::INIT_SIZE).unwrap_or(0).max(pm.len() as u32);
    let kernel_end = layout::KERNEL
        .checked_add(init_size)
        .filter(|&end| end <= boot.ram_top)
        .ok_or(BootError::KernelTooBig {
            at: layout::KERNEL,
            need: init_size as u64,
            ram: boot.ram_top,
        })?;
    load(&mut cpu.mem, layout::KERNEL, pm)?;

    // The zero page starts as a copy of the setup header.
    let mut zp = vec![0u8; 4096];
    let hdr_end = (off::JUMP + 2 + k[off::JUMP + 1] as usize)
        .min(k.len())
        .min(0x280);
    zp[off::SETUP_SECTS..hdr_end].copy_from_slice(&k[off::SETUP_SECTS..hdr_end]);
    zp[off::TYPE_OF_LOADER] = 0xFF;
    zp[off::LOADFLAGS] |= CAN_USE_HEAP;
    put16(&mut zp, off::HEAP_END_PTR, 0xFE00);

    let cmdline_max = le32(k, off::CMDLINE_SIZE)
        .unwrap_or(255)
        .min(layout::CMDLINE_MAX - 1);
    if boot.cmdline.len() > cmdline_max as usize {
        return Err(BootError::CmdlineTooLong {
            len: boot.cmdline.len(),
            max: cmdline_max,
        });
    }
    let mut cmdline = boot.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    load(&mut cpu.mem, layout::CMDLINE, &cmdline)?;
    put32(&mut zp, off::CMD_LINE_PTR, layout::CMDLINE);

    let initrd = match boot.initrd {
        Some(rd) => {
            let max = le32(k, off::INITRD_ADDR_MAX).unwrap_or(0x37FF_FFFF);
            let limit = boot.ram_top.min(max.saturating_add(1));
            let size = rd.len() as u64;
            let at = (limit as u64)
                .checked_sub(size)
                .map(|a| a & !0xFFF)
                .filter(|&a| a >= kernel_end as u64)
                .ok_or(BootError::InitrdTooBig {
                    size,
                    limit,
                    kernel_end,
                })? as u32;
            load(&mut cpu.mem, at, rd)?;
            put32(&mut zp, off::RAMDISK_IMAGE, at);
            put32(&mut zp, off::RAMDISK_SIZE, rd.len() as u32);
            Some((at, rd.len() as u32))
        }
        None => None,
    };

    let n = boot.e820.len().min(E820_MAX);
    zp[off::E820_ENTRIES] = n as u8;
    for (i, e) in boot.e820.iter().take(n).enumerate() {
        let at = off::E820_TABLE + i * 20;
        zp[at..at + 8].copy_from_slice(&e.base.to_le_bytes());
        zp[at + 8..at + 16].copy_from_slice(&e.len.to_le_bytes());
        put32(&mut zp, at + 16, e.kind as u32);
    }

    if let Some(fb) = boot.framebuffer {
        write_screen_info(&mut zp[off::SCREEN_INFO..off::SCREEN_INFO + 0x40], fb);
    }
    if let Some(rsdp) = boot.acpi_rsdp {
        zp[off::ACPI_RSDP_ADDR..off::ACPI_RSDP_ADDR + 8]
            .copy_from_slice(&(rsdp as u64).to_le_bytes());
    }
    load(&mut cpu.mem, layout::ZERO_PAGE, &zp)?;

    let entry = le32(k, off::CODE32_START).unwrap_or(layout::KERNEL);
    let entry = if entry == 0 { layout::KERNEL } else { entry };
    enter_protected_flat(cpu, entry);
    cpu.set_gpr(reg::ESI, layout::ZERO_PAGE);
    Ok(Loaded {
        protocol,
        entry,
        kernel_end,
        initrd,
    })
}

/// `struct screen_info` for a 32 bpp x8r8g8b8 linear framebuffer.
fn write_screen_info(si: &mut [u8], fb: LinearFramebuffer) {
    si[0x0F] = VIDEO_TYPE_VLFB;
    put16(si, 0x12, fb.width);
    put16(si, 0x14, fb.height);
    put16(si, 0x16, 32);
    put32(si, 0x18, fb.base);
    // lfb_size is in 64 KiB units for VESA-style framebuffers.
    put32(si, 0x1C, fb.size.div_ceil(0x1_0000));
    put16(si, 0x24, fb.stride);
    // red, green, blue, reserved: size then position.
    si[0x26..0x2E].copy_from_slice(&[8, 16, 8, 8, 8, 0, 8, 24]);
    put16(si, 0x32, 1);
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NullBus, PhysMemory, Seg};

    /// A minimal bzImage: 1 setup sector besides the boot sector, protocol
    /// `version`, then `pm` as the protected-mode kernel.
    fn bzimage(version: u16, pm: &[u8]) -> Vec<u8> {
        let mut k = vec![0u8; 1024];
        k[off::SETUP_SECTS] = 1;
        put16(&mut k, off::BOOT_FLAG, 0xAA55);
        k[off::JUMP + 1] = 0x66;
        k[off::HEADER..off::HEADER + 4].copy_from_slice(b"HdrS");
        put16(&mut k, off::VERSION, version);
        k[off::LOADFLAGS] = LOADED_HIGH;
        put32(&mut k, off::CODE32_START, 0x10_0000);
        put32(&mut k, off::INITRD_ADDR_MAX, 0x37FF_FFFF);
        put32(&mut k, off::CMDLINE_SIZE, 2047);
        k.extend_from_slice(pm);
        k
    }

    fn cpu(mib: u64) -> Cpu {
        Cpu::new(PhysMemory::new(mib << 20).unwrap(), Box::new(NullBus))
    }

    fn boot<'a>(
        kernel: &'a [u8],
        initrd: Option<&'a [u8]>,
        e820: &'a [E820Entry],
    ) -> LinuxBoot<'a> {
        LinuxBoot {
            kernel,
            initrd,
            cmdline: "console=ttyS0",
            e820,
            framebuffer: None,
            acpi_rsdp: Some(0xE_0000),
            ram_top: 16 << 20,
        }
    }

    #[test]
    fn loads_kernel_initrd_and_zero_page_and_enters_32_bit() {
        let mut c = cpu(16);
        let k = bzimage(0x020F, &[0xF4; 100]);
        let e820 = super::super::e820_map(16 << 20, 0);
        let loaded = load_linux(&mut c, &boot(&k, Some(&[7; 5000]), &e820)).unwrap();
        assert_eq!(loaded.entry, 0x10_0000);
        assert_eq!(loaded.initrd, Some(((16 << 20) - 0x2000, 5000)));
        assert_eq!(c.gpr(reg::ESI), layout::ZERO_PAGE);
        assert_eq!(c.seg(Seg::CS).selector, super::super::BOOT_CS);
        assert!(c.seg(Seg::CS).big());
        let mut zp = vec![0; 4096];
        c.read_phys_bytes(layout::ZERO_PAGE, &mut zp);
        assert_eq!(le32(&zp, off::CMD_LINE_PTR), Some(layout::CMDLINE));
        assert_eq!(zp[off::E820_ENTRIES] as usize, e820.len());
        assert_eq!(zp[off::TYPE_OF_LOADER], 0xFF);
        let mut b = [0; 1];
        c.read_phys_bytes(0x10_0000, &mut b);
        assert_eq!(b[0], 0xF4);
    }

    #[test]
    fn refuses_what_is_not_a_bzimage_or_too_old() {
        let mut c = cpu(16);
        assert!(matches!(
            load_linux(&mut c, &boot(&[0u8; 4096], None, &[])),
            Err(BootError::NotBzImage { .. })
        ));
        let old = bzimage(0x0204, &[0xF4]);
        assert!(matches!(
            load_linux(&mut c, &boot(&old, None, &[])),
            Err(BootError::ProtocolTooOld { major: 2, minor: 4 })
        ));
    }

    #[test]
    fn an_initrd_that_does_not_fit_is_an_error() {
        let mut c = cpu(16);
        let k = bzimage(0x020F, &[0xF4; 100]);
        let big = vec![0u8; 15 << 20];
        assert!(matches!(
            load_linux(&mut c, &boot(&k, Some(&big), &[])),
            Err(BootError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn screen_info_describes_a_32bpp_framebuffer() {
        let mut si = [0u8; 0x40];
        let fb = LinearFramebuffer {
            base: 0xFD00_0000,
            width: 1024,
            height: 768,
            stride: 4096,
            size: 4096 * 768,
        };
        write_screen_info(&mut si, fb);
        assert_eq!(si[0x0F], VIDEO_TYPE_VLFB);
        assert_eq!(le32(&si, 0x18), Some(0xFD00_0000));
        assert_eq!(le16(&si, 0x24), Some(4096));
        assert_eq!(le32(&si, 0x1C), Some(48));
    }
}
