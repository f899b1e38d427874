//! Multiboot v1 (the GNU Multiboot Specification 0.6.96), as QEMU's
//! `-kernel` accepts it: an ELF32 kernel, or any image with the a.out kludge
//! (header flag 16) giving its load addresses; modules with their command
//! lines; a memory map. The CPU starts in 32-bit protected mode with
//! EAX = 0x2BADB002 and EBX pointing at the information structure.

use super::{BootError, E820Entry, enter_protected_flat, layout, le16, le32, load};
use crate::cpu::{Cpu, reg};

const HEADER_MAGIC: u32 = 0x1BAD_B002;
const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// Header flag: the load addresses in the header are valid (a.out kludge).
const AOUT_KLUDGE: u32 = 1 << 16;
/// Header flags we can honour: page-align modules (0), memory info (1), the kludge.
const SUPPORTED_REQUIRED: u32 = 0b11;

/// Information-structure flags.
mod info {
    pub const MEM: u32 = 1 << 0;
    pub const CMDLINE: u32 = 1 << 2;
    pub const MODS: u32 = 1 << 3;
    pub const MMAP: u32 = 1 << 6;
    pub const LOADER_NAME: u32 = 1 << 9;
}

/// A module: its bytes and its command line (by convention its name first).
pub struct Module<'a> {
    pub bytes: &'a [u8],
    pub cmdline: &'a str,
}

pub struct MultibootBoot<'a> {
    pub kernel: &'a [u8],
    pub cmdline: &'a str,
    pub modules: &'a [Module<'a>],
    pub e820: &'a [E820Entry],
    /// Highest address + 1 modules may reach.
    pub ram_top: u32,
}

/// Whether `kernel` carries a Multiboot v1 header.
pub fn is_multiboot(kernel: &[u8]) -> bool {
    find_header(kernel).is_some()
}

fn find_header(k: &[u8]) -> Option<usize> {
    (0..k.len().min(8192).saturating_sub(11))
        .step_by(4)
        .find(|&at| {
            let (Some(magic), Some(flags), Some(sum)) =
                (le32(k, at), le32(k, at + 4), le32(k, at + 8))
            else {
                return false;
            };
            magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0
        })
}

/// Loads the kernel and modules, writes the information structure and
/// starts the CPU at the kernel's entry. Returns the entry point.
pub fn load_multiboot(cpu: &mut Cpu, boot: &MultibootBoot) -> Result<u32, BootError> {
    let k = boot.kernel;
    let hdr = find_header(k).ok_or_else(|| BootError::NotMultiboot {
        what: "the kernel".into(),
    })?;
    let flags = le32(k, hdr + 4).unwrap_or(0);
    let required = flags & 0xFFFF;
    if required & !SUPPORTED_REQUIRED != 0 {
        return Err(BootError::Multiboot(format!(
            "it requires features this loader lacks (header flags {flags:#x}: video mode selection?)"
        )));
    }
    let (entry, image_end) = if flags & AOUT_KLUDGE != 0 {
        load_aout_kludge(cpu, k, hdr)?
    } else {
        load_elf(cpu, k)?
    };

    // Modules, page-aligned, after the kernel; then strings.
    let mut mods = Vec::with_capacity(boot.modules.len());
    let mut at = image_end.next_multiple_of(4096);
    for (index, m) in boot.modules.iter().enumerate() {
        let size = m.bytes.len() as u64;
        let end = at as u64 + size;
        if end > boot.ram_top as u64 {
            return Err(BootError::ModuleTooBig { index, size });
        }
        load(&mut cpu.mem, at, m.bytes)?;
        mods.push((at, end as u32));
        at = (end as u32).next_multiple_of(4096);
    }

    // The information structure, then its tables and strings, below 64 KiB.
    let mut blob: Vec<u8> = vec![0; 88];
    let base = layout::MULTIBOOT_INFO;
    let push_str = |blob: &mut Vec<u8>, s: &str| -> u32 {
        let addr = base + blob.len() as u32;
        blob.extend_from_slice(s.as_bytes());
        blob.push(0);
        addr
    };
    let cmdline = push_str(&mut blob, boot.cmdline);
    let name = push_str(&mut blob, "Bulkhead");
    let mod_strings: Vec<u32> = boot
        .modules
        .iter()
        .map(|m| push_str(&mut blob, m.cmdline))
        .collect();
    blob.resize(blob.len().next_multiple_of(4), 0);
    let mods_addr = base + blob.len() as u32;
    for (&(start, end), &s) in mods.iter().zip(&mod_strings) {
        for v in [start, end, s, 0] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mmap_addr = base + blob.len() as u32;
    for e in boot.e820 {
        blob.extend_from_slice(&20u32.to_le_bytes());
        blob.extend_from_slice(&e.base.to_le_bytes());
        blob.extend_from_slice(&e.len.to_le_bytes());
        blob.extend_from_slice(&(e.kind as u32).to_le_bytes());
    }
    let mmap_len = base + blob.len() as u32 - mmap_addr;
    if blob.len() > (layout::CMDLINE - base) as usize {
        return Err(BootError::Multiboot(
            "the command lines are too long for the information area".into(),
        ));
    }
    let ram = cpu.mem.ram_size();
    let upper_kib = boot
        .e820
        .iter()
        .find(|e| e.base == 0x10_0000)
        .map_or((ram.saturating_sub(0x10_0000)) / 1024, |e| {
            (e.len / 1024) as u32
        });
    let fields: [(usize, u32); 10] = [
        (
            0,
            info::MEM | info::CMDLINE | info::MODS | info::MMAP | info::LOADER_NAME,
        ),
        (4, layout::EBDA / 1024),
        (8, upper_kib),
        (16, cmdline),
        (20, mods.len() as u32),
        (24, mods_addr),
        (44, mmap_len),
        (48, mmap_addr),
        (64, name),
        (12, 0xFFFF_FFFF), // boot_device: not given (flag 1 is clear)
    ];
    for (at, v) in fields {
        blob[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    load(&mut cpu.mem, base, &blob)?;

    enter_protected_flat(cpu, entry);
    cpu.set_gpr(reg::EAX, BOOTLOADER_MAGIC);
    cpu.set_gpr(reg::EBX, base);
    Ok(entry)
}

/// The a.out kludge: the header says which file bytes go where.
fn load_aout_kludge(cpu: &mut Cpu, k: &[u8], hdr: usize) -> Result<(u32, u32), BootError> {
    let field =
        |i: usize| le32(k, hdr + 12 + 4 * i).ok_or(BootError::Multiboot("truncated header".into()));
    let (header_addr, load_addr, load_end, bss_end, entry) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    let bad = |what: &str| BootError::Multiboot(format!("bad a.out kludge header: {what}"));
    let file_start = (hdr as u32)
        .checked_sub(header_addr.wrapping_sub(load_addr))
        .ok_or_else(|| bad("load address after the header"))? as usize;
    let load_len = if load_end == 0 {
        k.len() - file_start
    } else {
        load_end
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr before load_addr"))? as usize
    };
    let bytes = k
        .get(file_start..file_start + load_len)
        .ok_or_else(|| bad("load range beyond the file"))?;
    load(&mut cpu.mem, load_addr, bytes)?;
    let end = load_addr + load_len as u32;
    let mut image_end = end;
    if bss_end > end {
        load(&mut cpu.mem, end, &vec![0; (bss_end - end) as usize])?;
        image_end = bss_end;
    }
    Ok((entry, image_end))
}

/// ELF32 i386 executables: every PT_LOAD segment at its physical address.
fn load_elf(cpu: &mut Cpu, k: &[u8]) -> Result<(u32, u32), BootError> {
    let bad =
        |what: &str| BootError::Multiboot(format!("not a loadable ELF32 i386 kernel: {what}"));
    if k.get(0..4) != Some(b"\x7fELF") || k.get(4) != Some(&1) || k.get(5) != Some(&1) {
        return Err(bad("no ELF32 little-endian header (and no a.out kludge)"));
    }
    if le16(k, 18) != Some(3) {
        return Err(bad("machine is not i386"));
    }
    let entry = le32(k, 24).ok_or_else(|| bad("truncated"))?;
    let phoff = le32(k, 28).ok_or_else(|| bad("truncated"))? as usize;
    let phentsize = le16(k, 42).ok_or_else(|| bad("truncated"))? as usize;
    let phnum = le16(k, 44).ok_or_else(|| bad("truncated"))? as usize;
    if phentsize < 32 {
        return Err(bad("program header entries too small"));
    }
    let mut image_end = 0u32;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let f = |o: usize| le32(k, ph + o).ok_or_else(|| bad("program header beyond the file"));
        if f(0)? != 1 {
            continue; // not PT_LOAD
        }
        let (offset, paddr, filesz, memsz) = (f(4)? as usize, f(12)?, f(16)? as usize, f(20)?);
        let data = k
            .get(offset..offset + filesz)
            .ok_or_else(|| bad("segment beyond the file"))?;
        load(&mut cpu.mem, paddr, data)?;
        if memsz as usize > filesz {
            load(
                &mut cpu.mem,
                paddr + filesz as u32,
                &vec![0; memsz as usize - filesz],
            )?;
        }
        image_end = image_end.max(paddr.saturating_add(memsz));
    }
    if image_end == 0 {
        return Err(bad("no loadable segments"));
    }
    Ok((entry, image_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NullBus, PhysMemory};

    fn cpu() -> Cpu {
        Cpu::new(PhysMemory::new(16 << 20).unwrap(), Box::new(NullBus))
    }

    /// A flat binary with the a.out kludge, loaded at 1 MiB, entry right after the header.
    fn kludge_kernel() -> Vec<u8> {
        let flags = AOUT_KLUDGE | 0b10;
        let mut k = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
            0x10_0000, // header_addr
            0x10_0000, // load_addr
            0,         // load_end_addr: whole file
            0x10_2000, // bss_end_addr
            0x10_0020, // entry
        ] {
            k.extend_from_slice(&v.to_le_bytes());
        }
        k.extend_from_slice(&[0xF4; 16]);
        k
    }

    #[test]
    fn kludge_kernel_with_module_gets_info_and_magic() {
        let mut c = cpu();
        let k = kludge_kernel();
        let modules = [Module {
            bytes: b"module bytes",
            cmdline: "mod1 arg",
        }];
        let e820 = crate::boot::e820_map(16 << 20, 0);
        let entry = load_multiboot(
            &mut c,
            &MultibootBoot {
                kernel: &k,
                cmdline: "kernel args",
                modules: &modules,
                e820: &e820,
                ram_top: 16 << 20,
            },
        )
        .unwrap();
        assert_eq!(entry, 0x10_0020);
        assert_eq!(c.gpr(reg::EAX), BOOTLOADER_MAGIC);
        assert_eq!(c.gpr(reg::EBX), layout::MULTIBOOT_INFO);
        let mut info = [0u8; 88];
        c.read_phys_bytes(layout::MULTIBOOT_INFO, &mut info);
        assert_eq!(le32(&info, 20), Some(1));
        let mods_addr = le32(&info, 24).unwrap();
        let mut m = [0u8; 16];
        c.read_phys_bytes(mods_addr, &mut m);
        let (start, end) = (le32(&m, 0).unwrap(), le32(&m, 4).unwrap());
        assert_eq!((start, end - start), (0x10_2000, 12));
        let mut bytes = [0u8; 12];
        c.read_phys_bytes(start, &mut bytes);
        assert_eq!(&bytes, b"module bytes");
    }

    #[test]
    fn a_file_without_header_is_refused() {
        let mut c = cpu();
        let r = load_multiboot(
            &mut c,
            &MultibootBoot {
                kernel: &[0u8; 100],
                cmdline: "",
                modules: &[],
                e820: &[],
                ram_top: 16 << 20,
            },
        );
        assert!(matches!(r, Err(BootError::NotMultiboot { .. })));
    }
}
