//! The IDE controller on the whole PC, driven by small Multiboot kernels
//! assembled here: PIO and bus-master DMA reads and writes against an
//! in-memory disk, with the bytes checked on both sides. The guest polls
//! while the drive's I/O thread works, as a driver with interrupts off does.

mod common;

use common::multiboot;
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::*;
use machine::pc::{DriveConfig, DriveKind, Firmware, IDE_BM_BASE, Pc, PcConfig, PcError, PcExit};

/// Where the guests keep data buffers and the PRD table.
const BUF: u32 = 0x20_0000;
const PRD: u32 = 0x30_0000;
const DISK_SECTORS: usize = 64;

type Image = Arc<Mutex<Vec<u8>>>;

fn patterned() -> Vec<u8> {
    (0..DISK_SECTORS * 512)
        .map(|i| (i / 512) as u8 ^ (i as u8).rotate_left(3))
        .collect()
}

fn pc(kernel: Vec<u8>, image: &Image) -> Pc {
    Pc::new(PcConfig {
        ram_mib: 16,
        firmware: Firmware::Multiboot {
            kernel,
            cmdline: "ide".into(),
            modules: vec![],
        },
        framebuffer: None,
        serial: [Box::new(std::io::sink()), Box::new(std::io::sink())],
        debug_console: None,
        debug_exit: true,
        clock: None,
        port_hook: None,
        drives: vec![DriveConfig {
            channel: 0,
            slave: false,
            kind: DriveKind::Disk,
            backend: Box::new(image.clone()),
            model: "BULKHEAD HARDDISK".into(),
            serial: "BH0001".into(),
        }],
    })
    .expect("machine")
}

/// LBA28 taskfile for the primary master, then the command.
fn issue(a: &mut CodeAssembler, command: u8, lba: u32, count: u8) -> Result<(), IcedError> {
    for (port, v) in [
        (0x1F6u32, 0xE0 | (lba >> 24) & 0x0F),
        (0x1F2, u32::from(count)),
        (0x1F3, lba & 0xFF),
        (0x1F4, (lba >> 8) & 0xFF),
        (0x1F5, (lba >> 16) & 0xFF),
        (0x1F7, u32::from(command)),
    ] {
        a.mov(dx, port)?;
        a.mov(al, v)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Spins until status has BSY clear and `bits` set.
fn wait_status(a: &mut CodeAssembler, bits: u32) -> Result<(), IcedError> {
    let mut poll = a.create_label();
    a.mov(dx, 0x1F7u32)?;
    a.set_label(&mut poll)?;
    a.in_(al, dx)?;
    a.test(al, 0x80)?;
    a.jnz(poll)?;
    if bits != 0 {
        a.and(al, bits)?;
        a.cmp(al, bits)?;
        a.jne(poll)?;
    }
    Ok(())
}

/// Ends the run with the status register's value on the debug-exit port.
fn exit_with_status(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(dx, 0x1F7u32)?;
    a.in_(al, dx)?;
    a.movzx(eax, al)?;
    a.mov(dx, 0xF4u32)?;
    a.out(dx, eax)?;
    a.hlt()
}

fn read_mem(pc: &mut Pc, addr: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    pc.cpu_mut().read_phys_bytes(addr, &mut v);
    v
}

#[test]
fn guest_reads_sectors_by_pio_across_sector_boundaries() {
    let image: Image = Arc::new(Mutex::new(patterned()));
    let k = multiboot(|a| {
        a.cld()?;
        issue(a, 0x20, 5, 3)?; // READ SECTORS, LBA 5, 3 sectors
        a.mov(edi, BUF)?;
        for _ in 0..3 {
            wait_status(a, 0x08)?;
            a.mov(dx, 0x1F0u32)?;
            a.mov(ecx, 256u32)?;
            a.rep().insw()?;
        }
        exit_with_status(a)
    });
    let mut m = pc(k, &image);
    assert_eq!(m.run(Some(50_000_000)), PcExit::DebugExit(0x50));
    assert_eq!(
        read_mem(&mut m, BUF, 3 * 512),
        patterned()[5 * 512..8 * 512]
    );
}

#[test]
fn guest_writes_sectors_by_pio_and_the_image_has_them() {
    let image: Image = Arc::new(Mutex::new(patterned()));
    let k = multiboot(|a| {
        a.cld()?;
        // Two sectors of 0x00, 0x01, ... 0xFF, 0x00, ...
        a.mov(edi, BUF)?;
        a.xor(eax, eax)?;
        a.mov(ecx, 1024u32)?;
        let mut fill = a.create_label();
        a.set_label(&mut fill)?;
        a.stosb()?;
        a.inc(al)?;
        a.dec(ecx)?;
        a.jnz(fill)?;
        issue(a, 0x30, 10, 2)?; // WRITE SECTORS, LBA 10
        a.mov(esi, BUF)?;
        for _ in 0..2 {
            wait_status(a, 0x08)?;
            a.mov(dx, 0x1F0u32)?;
            a.mov(ecx, 256u32)?;
            a.rep().outsw()?;
        }
        wait_status(a, 0)?;
        exit_with_status(a)
    });
    let mut m = pc(k, &image);
    assert_eq!(m.run(Some(50_000_000)), PcExit::DebugExit(0x50));
    let want: Vec<u8> = (0..1024).map(|i| i as u8).collect();
    assert_eq!(image.lock().unwrap()[10 * 512..12 * 512], want[..]);
    assert_eq!(image.lock().unwrap()[12 * 512..], patterned()[12 * 512..]);
}

/// A PRD table of (address, bytes) regions, programmed into the primary
/// channel's bus master; then the command, then the start bit.
fn dma(
    a: &mut CodeAssembler,
    regions: &[(u32, u16)],
    command: u8,
    lba: u32,
    count: u8,
    to_memory: bool,
) -> Result<(), IcedError> {
    for (i, &(addr, len)) in regions.iter().enumerate() {
        let eot = if i + 1 == regions.len() {
            0x8000_0000u32
        } else {
            0
        };
        a.mov(dword_ptr(PRD + 8 * i as u32), addr)?;
        a.mov(dword_ptr(PRD + 8 * i as u32 + 4), u32::from(len) | eot)?;
    }
    let bm = u32::from(IDE_BM_BASE);
    a.mov(dx, bm + 4)?;
    a.mov(eax, PRD)?;
    a.out(dx, eax)?;
    let dir = if to_memory { 0x08u32 } else { 0 };
    a.mov(dx, bm)?;
    a.mov(al, dir)?;
    a.out(dx, al)?;
    // Clear old interrupt and error bits.
    a.mov(dx, bm + 2)?;
    a.mov(al, 0x06u32)?;
    a.out(dx, al)?;
    issue(a, command, lba, count)?;
    a.mov(dx, bm)?;
    a.mov(al, dir | 1)?;
    a.out(dx, al)?;
    // Wait for the bus master's interrupt bit, then stop the engine.
    let mut poll = a.create_label();
    a.mov(dx, bm + 2)?;
    a.set_label(&mut poll)?;
    a.in_(al, dx)?;
    a.test(al, 0x04)?;
    a.jz(poll)?;
    a.mov(dx, bm)?;
    a.mov(al, 0u32)?;
    a.out(dx, al)
}

#[test]
fn guest_reads_by_dma_into_scattered_buffers() {
    let image: Image = Arc::new(Mutex::new(patterned()));
    let k = multiboot(|a| {
        dma(a, &[(BUF, 1024), (BUF + 0x8000, 2048)], 0xC8, 20, 6, true)?;
        exit_with_status(a)
    });
    let mut m = pc(k, &image);
    assert_eq!(m.run(Some(50_000_000)), PcExit::DebugExit(0x50));
    let p = patterned();
    assert_eq!(read_mem(&mut m, BUF, 1024), p[20 * 512..22 * 512]);
    assert_eq!(read_mem(&mut m, BUF + 0x8000, 2048), p[22 * 512..26 * 512]);
}

#[test]
fn guest_writes_by_dma_and_reads_it_back_by_dma() {
    let image: Image = Arc::new(Mutex::new(patterned()));
    let k = multiboot(|a| {
        a.cld()?;
        a.mov(edi, BUF)?;
        a.mov(eax, 0xC0DE_F00Du32)?;
        a.mov(ecx, 1024u32)?; // 4 KiB
        a.rep().stosd()?;
        dma(a, &[(BUF, 4096)], 0xCA, 40, 8, false)?;
        dma(a, &[(BUF + 0x1_0000, 4096)], 0xC8, 40, 8, true)?;
        exit_with_status(a)
    });
    let mut m = pc(k, &image);
    assert_eq!(m.run(Some(50_000_000)), PcExit::DebugExit(0x50));
    let want: Vec<u8> = std::iter::repeat_n(0xC0DE_F00Du32.to_le_bytes(), 1024)
        .flatten()
        .collect();
    assert_eq!(image.lock().unwrap()[40 * 512..48 * 512], want[..]);
    assert_eq!(read_mem(&mut m, BUF + 0x1_0000, 4096), want);
}

#[test]
fn dma_over_guest_code_drops_the_cached_code() {
    // The guest runs a routine, DMAs new code over it, and runs it again:
    // the second call must see the new code.
    let image: Image = Arc::new(Mutex::new(patterned()));
    // Sector 50: `mov eax, 0x22; ret`.
    image.lock().unwrap()[50 * 512..50 * 512 + 6].copy_from_slice(&[0xB8, 0x22, 0, 0, 0, 0xC3]);
    let routine = BUF + 0x2_0000;
    let k = multiboot(|a| {
        a.mov(esp, 0x9_0000u32)?;
        // Routine v1: `mov eax, 0x11; ret`.
        a.mov(dword_ptr(routine), 0x0000_11B8u32)?;
        a.mov(word_ptr(routine + 4), 0xC300u32)?;
        a.mov(ebx, routine)?;
        a.call(ebx)?;
        a.mov(esi, eax)?;
        dma(a, &[(routine, 512)], 0xC8, 50, 1, true)?;
        a.mov(ebx, routine)?;
        a.call(ebx)?;
        a.shl(eax, 8)?;
        a.or(eax, esi)?;
        a.mov(dx, 0xF4u32)?;
        a.out(dx, eax)?;
        a.hlt()
    });
    let mut m = pc(k, &image);
    assert_eq!(m.run(Some(50_000_000)), PcExit::DebugExit(0x2211));
}

#[test]
fn two_drives_in_one_slot_are_refused() {
    let drive = || DriveConfig {
        channel: 1,
        slave: true,
        kind: DriveKind::Cdrom,
        backend: Box::new(vec![0u8; 4096]),
        model: "CD".into(),
        serial: "1".into(),
    };
    let err = Pc::new(PcConfig {
        ram_mib: 16,
        firmware: Firmware::Multiboot {
            kernel: multiboot(|a| a.hlt()),
            cmdline: String::new(),
            modules: vec![],
        },
        framebuffer: None,
        serial: [Box::new(std::io::sink()), Box::new(std::io::sink())],
        debug_console: None,
        debug_exit: false,
        clock: None,
        port_hook: None,
        drives: vec![drive(), drive()],
    })
    .err()
    .expect("refused");
    assert!(matches!(
        err,
        PcError::DriveSlotTaken {
            channel: 1,
            slave: true
        }
    ));
}

#[test]
fn a_cd_image_that_is_not_whole_2048_byte_sectors_is_refused() {
    let err = Pc::new(PcConfig {
        ram_mib: 16,
        firmware: Firmware::Multiboot {
            kernel: multiboot(|a| a.hlt()),
            cmdline: String::new(),
            modules: vec![],
        },
        framebuffer: None,
        serial: [Box::new(std::io::sink()), Box::new(std::io::sink())],
        debug_console: None,
        debug_exit: false,
        clock: None,
        port_hook: None,
        drives: vec![DriveConfig {
            channel: 1,
            slave: false,
            kind: DriveKind::Cdrom,
            backend: Box::new(vec![0u8; 2560]),
            model: "CD".into(),
            serial: "1".into(),
        }],
    })
    .err()
    .expect("refused");
    assert!(matches!(err, PcError::BadDriveSize { size: 2560, .. }));
}
