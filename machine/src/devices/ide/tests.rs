//! The controller driven through its ports as a guest driver would, with
//! real I/O threads over in-memory images.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::testing::RecordingIrq;
use super::testing::FakeMemory;
use super::*;
use crate::block::IoThread;

const BM: u16 = 0xC000;
const DATA: u16 = 0x1F0;
const ERROR: u16 = 0x1F1;
const FEATURE: u16 = 0x1F1;
const COUNT: u16 = 0x1F2;
const LBA0: u16 = 0x1F3;
const LBA1: u16 = 0x1F4;
const LBA2: u16 = 0x1F5;
const DEVICE: u16 = 0x1F6;
const STATUS: u16 = 0x1F7;
const COMMAND: u16 = 0x1F7;
const CONTROL: u16 = 0x3F6;
const CD: u16 = 0x1F0 - 0x170; // the secondary channel is this much lower

type Image = Arc<Mutex<Vec<u8>>>;

/// A backend whose every access fails.
struct Failing;

impl BlockBackend for Failing {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("media gone"))
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("media gone"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::other("media gone"))
    }
}

struct Rig {
    ide: Piix3Ide<RecordingIrq>,
    irq14: RecordingIrq,
    irq15: RecordingIrq,
    mem: FakeMemory,
}

/// A disk image whose every byte says where it is: sector number low byte
/// in even bytes, offset-in-sector low byte in odd ones.
fn patterned(sectors: usize) -> Vec<u8> {
    (0..sectors * 512)
        .map(|i| if i % 2 == 0 { (i / 512) as u8 } else { i as u8 })
        .collect()
}

fn drive(kind: DriveKind, backend: Box<dyn BlockBackend>, slave: bool) -> Drive {
    let io = IoThread::spawn(backend, "test-ide".into(), Arc::new(|| {})).unwrap();
    let model = match kind {
        DriveKind::Disk => "BULKHEAD HARDDISK",
        DriveKind::Cdrom => "BULKHEAD CD-ROM",
    };
    Drive::new(kind, io, "test".into(), model, "BH0001", slave)
}

impl Rig {
    fn new() -> Rig {
        let irq14 = RecordingIrq::default();
        let irq15 = RecordingIrq::default();
        let mut ide = Piix3Ide::new(irq14.clone(), irq15.clone());
        ide.firmware_setup(BM);
        Rig {
            ide,
            irq14,
            irq15,
            mem: FakeMemory::new(0x10_0000),
        }
    }

    /// A rig with a disk as primary master over `image`.
    fn with_disk(image: &Image) -> Rig {
        let mut r = Rig::new();
        r.ide.attach(
            0,
            false,
            drive(DriveKind::Disk, Box::new(image.clone()), false),
        );
        r
    }

    /// A rig with a CD-ROM drive as secondary master, unit attention cleared.
    fn with_cd(sectors: usize) -> Rig {
        let mut r = Rig::new();
        let iso: Vec<u8> = (0..sectors * 2048).map(|i| (i / 2048) as u8).collect();
        r.ide
            .attach(1, false, drive(DriveKind::Cdrom, Box::new(iso), false));
        let d = r.ide.channels[1].units[0].drive.as_mut().unwrap();
        d.cd.as_mut().unwrap().unit_attention = false;
        r
    }

    fn outb(&mut self, port: u16, v: u8) {
        assert!(self.ide.io_write(port, IoSize::Byte, u32::from(v)));
    }
    fn inb(&mut self, port: u16) -> u8 {
        self.ide.io_read(port, IoSize::Byte).unwrap() as u8
    }
    fn outw(&mut self, port: u16, v: u16) {
        self.ide.io_write(port, IoSize::Word, u32::from(v));
    }
    fn inw(&mut self, port: u16) -> u16 {
        self.ide.io_read(port, IoSize::Word).unwrap() as u16
    }
    fn outl(&mut self, port: u16, v: u32) {
        self.ide.io_write(port, IoSize::Dword, v);
    }

    /// Lets the I/O threads finish and applies their completions, as the
    /// platform does between CPU slices.
    fn settle(&mut self) {
        let start = Instant::now();
        loop {
            self.ide.service(&mut self.mem);
            if !self.ide.io_in_flight() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "I/O never finished"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An LBA28 command to the primary master.
    fn lba28(&mut self, cmd: u8, lba: u32, count: u8) {
        self.outb(DEVICE, 0xE0 | (lba >> 24) as u8 & 0x0F);
        self.outb(COUNT, count);
        self.outb(LBA0, lba as u8);
        self.outb(LBA1, (lba >> 8) as u8);
        self.outb(LBA2, (lba >> 16) as u8);
        self.outb(COMMAND, cmd);
    }

    fn read_words(&mut self, port: u16, n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| self.inw(port).to_le_bytes()).collect()
    }

    /// A PRD table at 0x1000 with one entry per (address, bytes), the
    /// direction set and the engine started.
    fn start_dma(&mut self, channel: u16, regions: &[(u32, u16)], to_memory: bool) {
        for (i, &(addr, len)) in regions.iter().enumerate() {
            let eot = if i + 1 == regions.len() {
                0x8000_0000u32
            } else {
                0
            };
            let mut e = addr.to_le_bytes().to_vec();
            e.extend_from_slice(&(u32::from(len) | eot).to_le_bytes());
            self.mem.write(0x1000 + 8 * i as u32, &e);
        }
        let base = BM + 8 * channel;
        self.outl(base + 4, 0x1000);
        let dir = if to_memory { bmdma::CMD_TO_MEMORY } else { 0 };
        self.outb(base, dir | bmdma::CMD_START);
    }

    /// A PACKET command with `cdb` to the secondary master.
    fn packet(&mut self, cdb: &[u8], byte_limit: u16, dma: bool) {
        self.outb(DEVICE - CD, 0xA0);
        self.outb(FEATURE - CD, u8::from(dma));
        self.outb(LBA1 - CD, byte_limit as u8);
        self.outb(LBA2 - CD, (byte_limit >> 8) as u8);
        self.outb(COMMAND - CD, cmd::PACKET);
        let mut c = [0u8; 12];
        c[..cdb.len()].copy_from_slice(cdb);
        for pair in c.chunks(2) {
            self.outw(DATA - CD, u16::from_le_bytes([pair[0], pair[1]]));
        }
    }
}

fn image(sectors: usize) -> Image {
    Arc::new(Mutex::new(patterned(sectors)))
}

#[test]
fn identify_device_reports_model_geometry_and_both_lba_sizes() {
    let img = image(100);
    let mut r = Rig::with_disk(&img);
    r.outb(DEVICE, 0xA0);
    r.outb(COMMAND, cmd::IDENTIFY_DEVICE);
    let irq = r.irq14.level.get();
    let st = r.inb(STATUS);
    let words: Vec<u16> = (0..256).map(|_| r.inw(DATA)).collect();
    assert!(irq);
    assert_eq!(st, 0x58);
    assert_eq!(words[27], u16::from_be_bytes(*b"BU"));
    assert_eq!((words[60], words[61]), (100, 0));
    assert_eq!((words[100], words[101]), (100, 0));
    assert_eq!(words[83] & (1 << 10 | 1 << 13), 1 << 10 | 1 << 13);
    assert_eq!(r.inb(STATUS), 0x50);
}

#[test]
fn status_read_clears_the_interrupt_and_alt_status_does_not() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(COMMAND, cmd::CHECK_POWER_MODE);
    r.inb(CONTROL);
    let after_alt = r.irq14.level.get();
    r.inb(STATUS);
    assert!(after_alt);
    assert!(!r.irq14.level.get());
    assert_eq!(r.inb(COUNT), 0xFF);
}

#[test]
fn pio_read_crosses_sector_boundaries_with_an_interrupt_per_sector() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_SECTORS, 3, 2);
    let busy = r.inb(CONTROL);
    r.settle();
    let first_irq = r.irq14.rising_edges.get();
    r.inb(STATUS);
    let data = r.read_words(DATA, 256);
    let second_irq = r.irq14.rising_edges.get();
    r.inb(STATUS);
    let rest = r.read_words(DATA, 256);
    assert_eq!(busy & status::BSY, status::BSY);
    assert_eq!((first_irq, second_irq), (1, 2));
    assert_eq!(data, patterned(8)[3 * 512..4 * 512]);
    assert_eq!(rest, patterned(8)[4 * 512..5 * 512]);
    assert_eq!(r.inb(STATUS), 0x50);
}

#[test]
fn pio_data_port_also_moves_dwords() {
    let img = image(4);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_SECTORS, 1, 1);
    r.settle();
    let d: Vec<u8> = (0..128)
        .flat_map(|_| (r.ide.io_read(DATA, IoSize::Dword).unwrap()).to_le_bytes())
        .collect();
    assert_eq!(d, patterned(4)[512..1024]);
}

#[test]
fn pio_write_sectors_reaches_the_image_after_the_last_block() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::WRITE_SECTORS, 5, 2);
    let drq = r.inb(STATUS);
    let early_irq = r.irq14.rising_edges.get();
    for i in 0..256u16 {
        r.outw(DATA, i);
    }
    r.inb(STATUS);
    for i in 256..512u16 {
        r.outw(DATA, i);
    }
    r.settle();
    let st = r.inb(STATUS);
    let expect: Vec<u8> = (0..512u16).flat_map(u16::to_le_bytes).collect();
    assert_eq!(drq, 0x58);
    assert_eq!(early_irq, 0);
    assert_eq!(st, 0x50);
    assert_eq!(r.irq14.rising_edges.get(), 2);
    assert_eq!(img.lock().unwrap()[5 * 512..7 * 512], expect[..]);
}

#[test]
fn read_multiple_interrupts_once_per_block_of_the_multiple_count() {
    let img = image(16);
    let mut r = Rig::with_disk(&img);
    r.outb(COUNT, 4);
    r.outb(COMMAND, cmd::SET_MULTIPLE_MODE);
    r.inb(STATUS);
    r.lba28(cmd::READ_MULTIPLE, 0, 8);
    r.settle();
    let data = r.read_words(DATA, 4 * 256);
    let edges = r.irq14.rising_edges.get();
    r.inb(STATUS);
    let rest = r.read_words(DATA, 4 * 256);
    assert_eq!(edges, 2);
    assert_eq!([data, rest].concat(), patterned(16)[..8 * 512]);
}

#[test]
fn read_multiple_before_set_multiple_mode_aborts() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_MULTIPLE, 0, 1);
    assert_eq!(r.inb(STATUS), 0x51);
    assert_eq!(r.inb(ERROR), error::ABRT);
}

#[test]
fn set_multiple_mode_rejects_counts_that_are_not_powers_of_two() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(COUNT, 3);
    r.outb(COMMAND, cmd::SET_MULTIPLE_MODE);
    assert_eq!(r.inb(ERROR), error::ABRT);
}

#[test]
fn lba48_registers_read_back_through_hob_and_address_the_high_bytes() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(DEVICE, 0x40);
    for (port, hi, lo) in [(COUNT, 0, 1), (LBA0, 1, 0), (LBA1, 0, 0), (LBA2, 0, 0)] {
        r.outb(port, hi);
        r.outb(port, lo);
    }
    r.outb(CONTROL, CTL_HOB);
    let hob_lba0 = r.inb(LBA0);
    r.outb(CONTROL, 0);
    r.outb(COMMAND, cmd::READ_SECTORS_EXT);
    // LBA 2^24 is far past an 8-sector disk.
    assert_eq!(hob_lba0, 1);
    assert_eq!(r.inb(STATUS), 0x51);
    assert_eq!(r.inb(ERROR), error::IDNF);
}

#[test]
fn lba48_count_zero_means_65536_sectors() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(DEVICE, 0x40);
    r.outb(COUNT, 0);
    r.outb(COUNT, 0);
    r.outb(COMMAND, cmd::READ_SECTORS_EXT);
    assert_eq!(r.inb(ERROR), error::IDNF);
}

#[test]
fn lba48_read_transfers_the_named_sectors() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(DEVICE, 0x40);
    for (port, hi, lo) in [(COUNT, 0, 2), (LBA0, 0, 6), (LBA1, 0, 0), (LBA2, 0, 0)] {
        r.outb(port, hi);
        r.outb(port, lo);
    }
    r.outb(COMMAND, cmd::READ_SECTORS_EXT);
    r.settle();
    let a = r.read_words(DATA, 256);
    let b = r.read_words(DATA, 256);
    assert_eq!([a, b].concat(), patterned(8)[6 * 512..]);
}

#[test]
fn chs_addressing_uses_the_default_translation() {
    let img = image(2 * 16 * 63);
    let mut r = Rig::with_disk(&img);
    // Cylinder 1, head 0, sector 2 = LBA 16 * 63 + 1.
    r.outb(DEVICE, 0xA0);
    r.outb(COUNT, 1);
    r.outb(LBA0, 2);
    r.outb(LBA1, 1);
    r.outb(LBA2, 0);
    r.outb(COMMAND, cmd::READ_SECTORS);
    r.settle();
    let d = r.read_words(DATA, 256);
    assert_eq!(d[0], (16 * 63 + 1) as u8);
}

#[test]
fn read_past_the_end_is_idnf() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_SECTORS, 7, 2);
    assert_eq!(r.inb(STATUS), 0x51);
    assert_eq!(r.inb(ERROR), error::IDNF);
}

#[test]
fn write_to_a_read_only_disk_aborts() {
    let mut r = Rig::new();
    let ro = crate::block::ReadOnly(patterned(8));
    r.ide
        .attach(0, false, drive(DriveKind::Disk, Box::new(ro), false));
    r.lba28(cmd::WRITE_SECTORS, 0, 1);
    assert_eq!(r.inb(STATUS), 0x51);
    assert_eq!(r.inb(ERROR), error::ABRT);
}

#[test]
fn unknown_command_aborts() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(COMMAND, 0xFE);
    assert_eq!(r.inb(STATUS), 0x51);
    assert_eq!(r.inb(ERROR), error::ABRT);
}

#[test]
fn read_error_of_the_backend_is_unc() {
    let mut r = Rig::new();
    r.ide
        .attach(0, false, drive(DriveKind::Disk, Box::new(Failing), false));
    r.lba28(cmd::READ_SECTORS, 0, 1);
    r.settle();
    assert_eq!(r.inb(STATUS), 0x51);
    assert_eq!(r.inb(ERROR), error::UNC);
}

#[test]
fn flush_error_of_the_backend_aborts() {
    let mut r = Rig::new();
    r.ide
        .attach(0, false, drive(DriveKind::Disk, Box::new(Failing), false));
    r.outb(COMMAND, cmd::FLUSH_CACHE_EXT);
    r.settle();
    assert_eq!(r.inb(ERROR), error::ABRT);
}

#[test]
fn flush_cache_completes_with_an_interrupt() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(COMMAND, cmd::FLUSH_CACHE);
    r.settle();
    assert!(r.irq14.level.get());
    assert_eq!(r.inb(STATUS), 0x50);
}

#[test]
fn absent_slave_reads_status_zero_and_ignores_commands() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(DEVICE, 0xB0);
    r.outb(COUNT, 0x55);
    let count = r.inb(COUNT);
    r.outb(COMMAND, cmd::IDENTIFY_DEVICE);
    assert_eq!(count, 0x55);
    assert_eq!(r.inb(STATUS), 0);
    assert_eq!(r.inb(ERROR), 0);
    assert!(!r.irq14.level.get());
}

#[test]
fn channel_without_drives_reads_zero() {
    let mut r = Rig::new();
    assert_eq!(r.inb(STATUS - CD), 0);
    assert_eq!(r.inb(0x376), 0);
}

#[test]
fn srst_leaves_ata_and_atapi_signatures() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.ide.attach(
        0,
        true,
        drive(DriveKind::Cdrom, Box::new(vec![0u8; 4096]), true),
    );
    r.outb(CONTROL, CTL_SRST | CTL_NIEN);
    let busy = r.inb(STATUS);
    r.outb(CONTROL, CTL_NIEN);
    let master = [
        r.inb(COUNT),
        r.inb(LBA0),
        r.inb(LBA1),
        r.inb(LBA2),
        r.inb(ERROR),
    ];
    let master_status = r.inb(STATUS);
    r.outb(DEVICE, 0xB0);
    let slave = [
        r.inb(COUNT),
        r.inb(LBA0),
        r.inb(LBA1),
        r.inb(LBA2),
        r.inb(ERROR),
    ];
    assert_eq!(busy & status::BSY, status::BSY);
    assert_eq!(master, [1, 1, 0, 0, 1]);
    assert_eq!(master_status, 0x50);
    assert_eq!(slave, [1, 1, 0x14, 0xEB, 1]);
}

#[test]
fn nien_keeps_the_interrupt_line_low() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(CONTROL, CTL_NIEN);
    r.outb(COMMAND, cmd::CHECK_POWER_MODE);
    let masked = r.irq14.level.get();
    r.outb(CONTROL, 0);
    assert!(!masked);
    assert!(r.irq14.level.get());
}

#[test]
fn execute_device_diagnostic_reports_code_01_and_the_signature() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(LBA1, 0x33);
    r.outb(COMMAND, cmd::EXECUTE_DEVICE_DIAGNOSTIC);
    assert!(r.irq14.level.get());
    assert_eq!(r.inb(ERROR), 0x01);
    assert_eq!(r.inb(LBA1), 0);
}

#[test]
fn set_features_transfer_mode_shows_in_identify() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(FEATURE, 0x03);
    r.outb(COUNT, 0x22); // multiword DMA 2
    r.outb(COMMAND, cmd::SET_FEATURES);
    r.inb(STATUS);
    r.outb(COMMAND, cmd::IDENTIFY_DEVICE);
    let words: Vec<u16> = (0..256).map(|_| r.inw(DATA)).collect();
    assert_eq!(words[63], 0x0407);
}

#[test]
fn write_cache_can_be_switched_off_and_identify_says_so() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.outb(FEATURE, 0x82);
    r.outb(COMMAND, cmd::SET_FEATURES);
    r.outb(COMMAND, cmd::IDENTIFY_DEVICE);
    let words: Vec<u16> = (0..256).map(|_| r.inw(DATA)).collect();
    assert_eq!(words[85] & 1 << 5, 0);
    assert_eq!(words[82] & 1 << 5, 1 << 5);
}

#[test]
fn dma_read_fills_guest_memory_through_the_prd_table() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_DMA, 2, 3);
    r.start_dma(0, &[(0x4000, 1024), (0x8000, 512)], true);
    let kicked = r.ide.take_kick();
    r.settle();
    let bm_status = r.inb(BM + 2);
    assert!(!kicked, "the data was not there yet");
    assert_eq!(r.mem.0[0x4000..0x4400], patterned(8)[1024..2048]);
    assert_eq!(r.mem.0[0x8000..0x8200], patterned(8)[2048..2560]);
    assert_eq!(bm_status & 7, bmdma::STATUS_INTERRUPT);
    assert!(r.irq14.level.get());
    assert_eq!(r.inb(STATUS), 0x50);
}

#[test]
fn dma_read_waits_for_the_bus_master_to_start() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_DMA, 0, 1);
    r.settle();
    let before = r.irq14.level.get();
    r.start_dma(0, &[(0x4000, 512)], true);
    let kicked = r.ide.take_kick();
    r.ide.service(&mut r.mem);
    assert!(!before);
    assert!(kicked);
    assert_eq!(r.mem.0[0x4000..0x4200], patterned(8)[..512]);
    assert!(r.irq14.level.get());
}

#[test]
fn dma_write_takes_the_sectors_from_guest_memory() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.mem.0[0x6000..0x6400].fill(0x5A);
    r.lba28(cmd::WRITE_DMA, 6, 2);
    r.start_dma(0, &[(0x6000, 1024)], false);
    assert!(r.ide.take_kick());
    r.settle();
    assert_eq!(r.inb(STATUS), 0x50);
    assert_eq!(img.lock().unwrap()[6 * 512..], [0x5A; 1024]);
    assert_eq!(r.inb(BM + 2) & 7, bmdma::STATUS_INTERRUPT);
}

#[test]
fn dma_with_a_short_prd_table_fails_the_command() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_DMA, 0, 2);
    r.start_dma(0, &[(0x4000, 512)], true);
    r.settle();
    assert_eq!(
        r.inb(BM + 2) & 7,
        bmdma::STATUS_ERROR | bmdma::STATUS_INTERRUPT
    );
    assert_eq!(r.inb(ERROR), error::ABRT);
}

#[test]
fn bus_master_registers_need_the_io_enable() {
    let mut r = Rig::new();
    r.ide.config_write(reg::COMMAND, IoSize::Word, 0);
    assert_eq!(r.ide.io_read(BM + 2, IoSize::Byte), None);
    assert_eq!(r.ide.io_read(STATUS, IoSize::Byte), None);
}

#[test]
fn legacy_ports_decode_only_while_idetim_enables_them() {
    let mut r = Rig::new();
    r.ide.config_write(IDETIM[1], IoSize::Word, 0);
    assert!(r.ide.decodes(0x1F7));
    assert!(!r.ide.decodes(0x177));
    assert!(!r.ide.decodes(0x3F7));
}

#[test]
fn atapi_drive_refuses_identify_device_with_its_signature() {
    let mut r = Rig::with_cd(4);
    r.outb(DEVICE - CD, 0xA0);
    r.outb(COMMAND - CD, cmd::IDENTIFY_DEVICE);
    assert_eq!(r.inb(ERROR - CD), error::ABRT);
    assert_eq!((r.inb(LBA1 - CD), r.inb(LBA2 - CD)), (0x14, 0xEB));
}

#[test]
fn identify_packet_device_names_a_removable_cdrom() {
    let mut r = Rig::with_cd(4);
    r.outb(DEVICE - CD, 0xA0);
    r.outb(COMMAND - CD, cmd::IDENTIFY_PACKET_DEVICE);
    let words: Vec<u16> = (0..256).map(|_| r.inw(DATA - CD)).collect();
    assert_eq!(words[0], 0x85C0);
    assert!(r.irq15.level.get());
}

#[test]
fn atapi_packet_request_then_inquiry_in_byte_count_limited_chunks() {
    let mut r = Rig::with_cd(4);
    r.packet(&[atapi::op::INQUIRY, 0, 0, 0, 36], 16, false);
    let mut got = Vec::new();
    let mut chunks = Vec::new();
    loop {
        let st = r.inb(STATUS - CD);
        if st & status::DRQ == 0 {
            assert_eq!(r.inb(COUNT - CD), 3, "status phase");
            break;
        }
        let n = usize::from(r.inb(LBA1 - CD)) | usize::from(r.inb(LBA2 - CD)) << 8;
        chunks.push(n);
        got.extend(r.read_words(DATA - CD, n / 2));
    }
    assert_eq!(chunks, [16, 16, 4]);
    assert_eq!(&got[8..16], b"BULKHEAD");
}

#[test]
fn atapi_read_10_by_pio_delivers_2048_byte_sectors() {
    let mut r = Rig::with_cd(8);
    r.packet(&[atapi::op::READ_10, 0, 0, 0, 0, 5, 0, 0, 2], 0xFFFE, false);
    r.settle();
    let reason = r.inb(COUNT - CD);
    let st = r.inb(STATUS - CD);
    let n = usize::from(r.inb(LBA1 - CD)) | usize::from(r.inb(LBA2 - CD)) << 8;
    let d = r.read_words(DATA - CD, n / 2);
    assert_eq!((reason, st, n), (2, 0x58, 4096));
    assert_eq!((d[0], d[2048], d[4095]), (5, 6, 6));
    assert_eq!(r.inb(STATUS - CD), 0x50);
}

#[test]
fn atapi_read_10_by_dma_reaches_guest_memory() {
    let mut r = Rig::with_cd(8);
    r.packet(&[atapi::op::READ_10, 0, 0, 0, 0, 7, 0, 0, 1], 0, true);
    r.start_dma(1, &[(0x2000, 2048)], true);
    r.settle();
    assert_eq!(r.mem.0[0x2000..0x2800], [7; 2048]);
    assert_eq!(r.inb(COUNT - CD), 3);
    assert!(r.irq15.level.get());
    assert_eq!(r.inb(STATUS - CD), 0x50);
}

#[test]
fn atapi_unknown_packet_is_check_condition_with_illegal_request() {
    let mut r = Rig::with_cd(4);
    r.packet(&[0xFF], 0xFFFE, false);
    let st = r.inb(STATUS - CD);
    let err = r.inb(ERROR - CD);
    r.packet(&[atapi::op::REQUEST_SENSE, 0, 0, 0, 18], 0xFFFE, false);
    let sense = r.read_words(DATA - CD, 9);
    assert_eq!(st, 0x51);
    assert_eq!(err >> 4, atapi::key::ILLEGAL_REQUEST);
    assert_eq!((sense[2], sense[12]), (atapi::key::ILLEGAL_REQUEST, 0x20));
}

#[test]
fn atapi_reports_unit_attention_after_reset() {
    let mut r = Rig::with_cd(4);
    r.outb(0x376, CTL_SRST);
    r.outb(0x376, 0);
    let reset_status = r.inb(STATUS - CD);
    r.packet(&[atapi::op::TEST_UNIT_READY], 0, false);
    let err = r.inb(ERROR - CD);
    r.packet(&[atapi::op::TEST_UNIT_READY], 0, false);
    assert_eq!(reset_status, 0);
    assert_eq!(err >> 4, atapi::key::UNIT_ATTENTION);
    assert_eq!(r.inb(STATUS - CD), 0x50);
}

#[test]
fn machine_reset_drops_completions_of_aborted_commands() {
    let img = image(8);
    let mut r = Rig::with_disk(&img);
    r.lba28(cmd::READ_SECTORS, 0, 1);
    r.ide.reset();
    r.ide.firmware_setup(BM);
    r.settle();
    assert_eq!(r.inb(STATUS), 0x50);
    assert!(!r.irq14.level.get());
}
