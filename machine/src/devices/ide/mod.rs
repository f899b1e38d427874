//! The PIIX3 IDE function (PCI 00:01.1, 8086:7010) in legacy mode: two
//! channels at 0x1F0-0x1F7/0x3F6 (IRQ 14) and 0x170-0x177/0x376 (IRQ 15),
//! each with a master and a slave drive, and the bus-master DMA registers at
//! BAR4. Drives are ATA hard disks or ATAPI CD-ROMs.
//!
//! Disk I/O never happens here: a command that needs the medium submits a
//! request to the drive's [`IoThread`](crate::block::IoThread) and the drive
//! reads busy; the platform calls [`Piix3Ide::service`] between CPU slices,
//! which applies finished requests (data into the PIO buffer or, through the
//! bus master's PRD table, into guest memory) and raises the interrupt.
//! Guest-memory DMA also only happens in `service`, never inside a port
//! access, because the CPU is busy executing the OUT that started it:
//! [`Piix3Ide::take_kick`] tells the board to make the CPU return first.
//!
//! Absent drives behave as QEMU's and real boards' do for the probes
//! operating systems make: taskfile writes reach both drives' registers, an
//! absent slave reads status and error 0 and ignores commands, so Linux's
//! libata finds it by signature and then sees no IDENTIFY data.

mod ata;
mod atapi;
mod bmdma;

use crate::block::{BlockBackend, IoCompletion, IoKind, IoRequest, IoThread};
use crate::bus::IoSize;

use super::IrqLine;
use super::pci::{Bar, ConfigSpace, PciFunction, reg};
pub use ata::{Chs, DmaMode};
use ata::{cmd, error, status};
use atapi::{CD_SECTOR, CdState, Reply, Sense};
use bmdma::{BusMaster, PrdOutcome};

/// Where the IDE function sits on bus 0 (device 1, function 1).
pub const IDE_DEVFN: u8 = 0x09;
/// Legacy command-block and control ports of the two channels.
pub const PRIMARY_BASE: u16 = 0x1F0;
pub const PRIMARY_CONTROL: u16 = 0x3F6;
pub const SECONDARY_BASE: u16 = 0x170;
pub const SECONDARY_CONTROL: u16 = 0x376;
/// IDETIM (primary 0x40, secondary 0x42): bit 15 enables decoding.
pub const IDETIM: [u8; 2] = [0x40, 0x42];
const IDETIM_DECODE: u16 = 1 << 15;
/// SIDETIM: slave timings (storage).
const SIDETIM: u8 = 0x44;

/// Device control register bits.
const CTL_NIEN: u8 = 1 << 1;
const CTL_SRST: u8 = 1 << 2;
const CTL_HOB: u8 = 1 << 7;

/// How many guest-triggerable warnings a drive logs before going quiet.
const WARN_BUDGET: u32 = 32;

/// Guest memory as a bus master sees it (physical addresses).
pub trait DmaMemory {
    fn read(&mut self, addr: u32, buf: &mut [u8]);
    fn write(&mut self, addr: u32, data: &[u8]);
}

/// What a drive is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    /// An ATA hard disk (512-byte sectors).
    Disk,
    /// An ATAPI CD-ROM drive with an ISO image (2048-byte sectors).
    Cdrom,
}

/// A drive of the machine, as the embedder configures it.
pub struct DriveConfig {
    /// 0 primary, 1 secondary.
    pub channel: u8,
    /// Device 1 (slave) instead of device 0 (master).
    pub slave: bool,
    pub kind: DriveKind,
    pub backend: Box<dyn BlockBackend>,
    /// IDENTIFY's model string (40 characters at most are shown).
    pub model: String,
    /// IDENTIFY's serial number (20 characters at most are shown).
    pub serial: String,
}

/// The command-block registers one drive sees. Writes reach both drives
/// of a channel; each keeps the previous value for LBA48 (HOB) reads.
#[derive(Clone, Debug, Default)]
struct TaskFile {
    feature: u8,
    count: u8,
    lba: [u8; 3],
    hob_feature: u8,
    hob_count: u8,
    hob_lba: [u8; 3],
    device: u8,
    status: u8,
    error: u8,
    /// The drive's INTRQ.
    intrq: bool,
    /// INTRQ rose since the channel last looked (for the bus master's
    /// interrupt bit).
    raised: bool,
}

impl TaskFile {
    fn raise(&mut self) {
        self.intrq = true;
        self.raised = true;
    }

    /// The reset signature: ATA (LBA 01 00 00) or ATAPI (01 14 EB); absent
    /// drives float the cylinder registers.
    fn signature(&mut self, kind: Option<DriveKind>) {
        self.count = 1;
        self.lba = match kind {
            Some(DriveKind::Disk) => [1, 0, 0],
            Some(DriveKind::Cdrom) => [1, 0x14, 0xEB],
            None => [1, 0xFF, 0xFF],
        };
        self.device &= 0xF0;
    }

    fn byte_count(&self) -> usize {
        usize::from(self.lba[1]) | usize::from(self.lba[2]) << 8
    }

    fn set_byte_count(&mut self, n: usize) {
        self.lba[1] = n as u8;
        self.lba[2] = (n >> 8) as u8;
    }
}

/// Where a drive is in its current command.
#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    /// A request is with the I/O thread.
    Busy(Pending),
    /// PIO data to the host; `buf[pos..block_end]` is the current DRQ block.
    PioIn {
        buf: Vec<u8>,
        pos: usize,
        block_end: usize,
        block: usize,
    },
    /// PIO data from the host, written when the last block is in.
    PioOut {
        buf: Vec<u8>,
        pos: usize,
        block_end: usize,
        block: usize,
        lba: u64,
    },
    /// Data waiting for the bus master to take it to memory.
    DmaIn { buf: Vec<u8> },
    /// Sectors waiting for the bus master to bring them from memory.
    DmaOut { lba: u64, len: usize },
    /// ATAPI: the 12-byte command packet is arriving.
    Packet { cdb: [u8; 12], pos: usize },
    /// ATAPI PIO data to the host, in chunks of at most the byte count limit.
    PacketIn {
        buf: Vec<u8>,
        pos: usize,
        chunk_end: usize,
        limit: usize,
    },
}

/// What a request in flight completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    PioRead { block: usize },
    DmaRead,
    Write,
    Flush,
    CdRead,
}

/// A drive: its medium (through an I/O thread) and command state.
pub(crate) struct Drive {
    kind: DriveKind,
    name: String,
    io: IoThread,
    /// Capacity in 512-byte sectors.
    sectors: u64,
    model: String,
    serial: String,
    chs: Chs,
    current_chs: Chs,
    multiple: u16,
    dma_mode: DmaMode,
    write_cache: bool,
    slave: bool,
    cd: Option<CdState>,
    phase: Phase,
    /// PACKET: data by DMA, and the byte count limit for PIO.
    packet_dma: bool,
    /// Requests submitted and not yet completed; the oldest `stale` of them
    /// belong to commands a reset aborted.
    in_flight: u32,
    stale: u32,
    warnings: u32,
}

macro_rules! guest_warn {
    ($drive:expr, $($arg:tt)*) => {
        if $drive.warn_budget() {
            tracing::warn!(target: "bulkhead::ide", drive = %$drive.name, $($arg)*);
        }
    };
}

impl Drive {
    /// A drive over `io`; `name` appears in log lines.
    pub fn new(
        kind: DriveKind,
        io: IoThread,
        name: String,
        model: &str,
        serial: &str,
        slave: bool,
    ) -> Drive {
        let sectors = io.size() / 512;
        let chs = Chs::for_sectors(sectors);
        let cd = (kind == DriveKind::Cdrom)
            .then(|| CdState::new(io.size() / CD_SECTOR, model, FIRMWARE));
        Drive {
            kind,
            name,
            io,
            sectors,
            model: model.to_string(),
            serial: serial.to_string(),
            chs,
            current_chs: chs,
            multiple: 0,
            dma_mode: DmaMode::None,
            write_cache: true,
            slave,
            cd,
            phase: Phase::Idle,
            packet_dma: false,
            in_flight: 0,
            stale: 0,
            warnings: 0,
        }
    }

    fn warn_budget(&mut self) -> bool {
        self.warnings = self.warnings.saturating_add(1);
        if self.warnings == WARN_BUDGET {
            tracing::warn!(target: "bulkhead::ide", drive = %self.name, "further warnings about this drive are suppressed");
        }
        self.warnings < WARN_BUDGET
    }

    fn submit(&mut self, kind: IoKind, offset: u64, buf: Vec<u8>, next: Pending) {
        self.in_flight += 1;
        self.io.submit(IoRequest { kind, offset, buf });
        self.phase = Phase::Busy(next);
    }

    /// Aborts the command in progress (a reset): requests in flight will
    /// be dropped when they complete.
    fn abort_all(&mut self) {
        self.stale = self.in_flight;
        self.phase = Phase::Idle;
    }

    /// The end of a reset: the signature, diagnostic code 01, ready.
    fn reset(&mut self, tf: &mut TaskFile) {
        self.abort_all();
        tf.signature(Some(self.kind));
        tf.error = 0x01;
        tf.intrq = false;
        tf.status = match self.kind {
            DriveKind::Disk => status::DRDY | status::DSC,
            DriveKind::Cdrom => 0,
        };
        if let Some(cd) = &mut self.cd {
            cd.unit_attention = true;
        }
    }

    fn info(&self) -> ata::IdentifyInfo<'_> {
        ata::IdentifyInfo {
            model: &self.model,
            serial: &self.serial,
            firmware: FIRMWARE,
            sectors: self.sectors,
            chs: self.chs,
            current_chs: self.current_chs,
            multiple: self.multiple,
            dma: self.dma_mode,
            write_cache: self.write_cache,
            slave: self.slave,
        }
    }

    fn ok(&mut self, tf: &mut TaskFile) {
        self.phase = Phase::Idle;
        tf.error = 0;
        tf.status = status::DRDY | status::DSC;
        tf.raise();
    }

    fn fail(&mut self, tf: &mut TaskFile, err: u8) {
        self.phase = Phase::Idle;
        tf.error = err;
        tf.status = status::DRDY | status::DSC | status::ERR;
        tf.raise();
    }

    fn abort(&mut self, tf: &mut TaskFile) {
        if self.kind == DriveKind::Cdrom {
            // ATAPI drives answer ATA commands they refuse with their
            // signature, so drivers can tell them from disks.
            tf.signature(Some(DriveKind::Cdrom));
        }
        self.fail(tf, error::ABRT);
    }

    /// Starts PIO data to the host: the first block is ready at once.
    fn pio_in(&mut self, tf: &mut TaskFile, buf: Vec<u8>, block: usize) {
        let block_end = block.min(buf.len());
        self.phase = Phase::PioIn {
            buf,
            pos: 0,
            block_end,
            block,
        };
        tf.error = 0;
        tf.status = status::DRDY | status::DSC | status::DRQ;
        tf.raise();
    }

    /// A command written to the command register.
    fn command(&mut self, tf: &mut TaskFile, op: u8) {
        if tf.status & status::BSY != 0 && op != cmd::DEVICE_RESET {
            return;
        }
        if self.kind == DriveKind::Cdrom {
            return self.atapi_command(tf, op);
        }
        match op {
            cmd::READ_SECTORS | cmd::READ_SECTORS_NORETRY => self.rw(tf, false, false, Some(1)),
            cmd::READ_SECTORS_EXT => self.rw(tf, false, true, Some(1)),
            cmd::WRITE_SECTORS | cmd::WRITE_SECTORS_NORETRY => self.rw(tf, true, false, Some(1)),
            cmd::WRITE_SECTORS_EXT => self.rw(tf, true, true, Some(1)),
            cmd::READ_MULTIPLE
            | cmd::READ_MULTIPLE_EXT
            | cmd::WRITE_MULTIPLE
            | cmd::WRITE_MULTIPLE_EXT => {
                if self.multiple == 0 {
                    return self.abort(tf);
                }
                let write = matches!(op, cmd::WRITE_MULTIPLE | cmd::WRITE_MULTIPLE_EXT);
                let ext = matches!(op, cmd::READ_MULTIPLE_EXT | cmd::WRITE_MULTIPLE_EXT);
                self.rw(tf, write, ext, Some(self.multiple))
            }
            cmd::READ_DMA | cmd::READ_DMA_NORETRY => self.rw(tf, false, false, None),
            cmd::READ_DMA_EXT => self.rw(tf, false, true, None),
            cmd::WRITE_DMA | cmd::WRITE_DMA_NORETRY => self.rw(tf, true, false, None),
            cmd::WRITE_DMA_EXT => self.rw(tf, true, true, None),
            cmd::READ_VERIFY | cmd::READ_VERIFY_NORETRY | cmd::READ_VERIFY_EXT => {
                match self.address(tf, op == cmd::READ_VERIFY_EXT) {
                    Some(_) => self.ok(tf),
                    None => self.fail(tf, error::IDNF),
                }
            }
            cmd::FLUSH_CACHE | cmd::FLUSH_CACHE_EXT => {
                tf.status = status::BSY | status::DRDY;
                self.submit(IoKind::Flush, 0, Vec::new(), Pending::Flush);
            }
            cmd::IDENTIFY_DEVICE => {
                let data = ata::to_bytes(&ata::identify_device(&self.info()));
                self.pio_in(tf, data, 512);
            }
            cmd::SET_FEATURES => self.set_features(tf),
            cmd::SET_MULTIPLE_MODE => {
                let n = u16::from(tf.count);
                if n == 0 || (n.is_power_of_two() && n <= ata::MAX_MULTIPLE) {
                    self.multiple = n;
                    self.ok(tf)
                } else {
                    self.abort(tf)
                }
            }
            cmd::INITIALIZE_DEVICE_PARAMETERS => {
                let heads = (tf.device & 0x0F) + 1;
                let spt = tf.count;
                if spt == 0 {
                    return self.abort(tf);
                }
                let per_cyl = u64::from(heads) * u64::from(spt);
                self.current_chs = Chs {
                    cylinders: (self.sectors / per_cyl).min(65535) as u16,
                    heads,
                    sectors: spt,
                };
                self.ok(tf)
            }
            cmd::RECALIBRATE..=0x1F | cmd::SEEK..=0x7F => self.ok(tf),
            cmd::STANDBY_IMMEDIATE
            | cmd::IDLE_IMMEDIATE
            | cmd::STANDBY
            | cmd::IDLE
            | cmd::SLEEP
            | cmd::STANDBY_IMMEDIATE_OLD
            | cmd::IDLE_IMMEDIATE_OLD
            | cmd::STANDBY_OLD
            | cmd::IDLE_OLD
            | cmd::SLEEP_OLD => self.ok(tf),
            cmd::CHECK_POWER_MODE | cmd::CHECK_POWER_MODE_OLD => {
                self.ok(tf);
                tf.count = 0xFF; // active or idle
            }
            // Not for disks; drivers probe with them.
            cmd::NOP | cmd::PACKET | cmd::IDENTIFY_PACKET_DEVICE | cmd::DEVICE_RESET => {
                self.abort(tf)
            }
            other => {
                guest_warn!(
                    self,
                    opcode = format_args!("{other:#04x}"),
                    "unknown ATA command; aborted"
                );
                self.abort(tf)
            }
        }
    }

    fn set_features(&mut self, tf: &mut TaskFile) {
        match tf.feature {
            0x02 => self.write_cache = true,
            0x82 => self.write_cache = false,
            0x03 => {
                let mode = tf.count & 0x07;
                match tf.count >> 3 {
                    0 | 1 if mode <= ata::MAX_PIO => {}
                    4 if mode <= ata::MAX_MWDMA => self.dma_mode = DmaMode::Multiword(mode),
                    8 if mode <= ata::MAX_UDMA => self.dma_mode = DmaMode::Ultra(mode),
                    _ => return self.abort(tf),
                }
            }
            // Read look-ahead on/off, reverting to defaults on/off: accepted.
            0x55 | 0xAA | 0x66 | 0xCC => {}
            other => {
                guest_warn!(
                    self,
                    feature = format_args!("{other:#04x}"),
                    "unknown SET FEATURES subcommand; aborted"
                );
                return self.abort(tf);
            }
        }
        self.ok(tf)
    }

    /// The start sector and count a read/write command names, or `None`
    /// when they are not on the disk (IDNF).
    fn address(&self, tf: &TaskFile, ext: bool) -> Option<(u64, u64)> {
        let (lba, count) = if ext {
            let lba = u64::from(tf.lba[0])
                | u64::from(tf.lba[1]) << 8
                | u64::from(tf.lba[2]) << 16
                | u64::from(tf.hob_lba[0]) << 24
                | u64::from(tf.hob_lba[1]) << 32
                | u64::from(tf.hob_lba[2]) << 40;
            let count = u64::from(tf.count) | u64::from(tf.hob_count) << 8;
            (lba, if count == 0 { 65536 } else { count })
        } else {
            let count = if tf.count == 0 {
                256
            } else {
                u64::from(tf.count)
            };
            let lba = if tf.device & 0x40 != 0 {
                u64::from(tf.lba[0])
                    | u64::from(tf.lba[1]) << 8
                    | u64::from(tf.lba[2]) << 16
                    | u64::from(tf.device & 0x0F) << 24
            } else {
                let c = &self.current_chs;
                let cyl = u64::from(tf.lba[1]) | u64::from(tf.lba[2]) << 8;
                let head = u64::from(tf.device & 0x0F);
                let sector = u64::from(tf.lba[0]);
                if sector == 0 || sector > u64::from(c.sectors) || head >= u64::from(c.heads) {
                    return None;
                }
                (cyl * u64::from(c.heads) + head) * u64::from(c.sectors) + sector - 1
            };
            (lba, count)
        };
        (lba + count <= self.sectors).then_some((lba, count))
    }

    /// READ/WRITE SECTORS, MULTIPLE (`pio_block` sectors a block) or DMA.
    fn rw(&mut self, tf: &mut TaskFile, write: bool, ext: bool, pio_block: Option<u16>) {
        let Some((lba, count)) = self.address(tf, ext) else {
            return self.fail(tf, error::IDNF);
        };
        if write && self.io.read_only() {
            guest_warn!(self, lba, "write to a read-only disk; aborted");
            return self.abort(tf);
        }
        let len = (count * 512) as usize;
        let offset = lba * 512;
        tf.error = 0;
        match (write, pio_block) {
            (false, Some(block)) => {
                tf.status = status::BSY | status::DRDY;
                let block = usize::from(block) * 512;
                self.submit(
                    IoKind::Read,
                    offset,
                    vec![0; len],
                    Pending::PioRead { block },
                );
            }
            (false, None) => {
                tf.status = status::BSY | status::DRDY;
                self.submit(IoKind::Read, offset, vec![0; len], Pending::DmaRead);
            }
            (true, Some(block)) => {
                let block = usize::from(block) * 512;
                self.phase = Phase::PioOut {
                    buf: vec![0; len],
                    pos: 0,
                    block_end: block.min(len),
                    block,
                    lba,
                };
                tf.status = status::DRDY | status::DSC | status::DRQ;
            }
            (true, None) => {
                self.phase = Phase::DmaOut { lba, len };
                tf.status = status::DRDY | status::DSC | status::DRQ;
            }
        }
    }

    fn atapi_command(&mut self, tf: &mut TaskFile, op: u8) {
        match op {
            cmd::PACKET => {
                self.packet_dma = tf.feature & 1 != 0;
                self.phase = Phase::Packet {
                    cdb: [0; 12],
                    pos: 0,
                };
                tf.count = 0x01; // CoD: the device wants the command packet
                tf.error = 0;
                tf.status = status::DRDY | status::DSC | status::DRQ;
            }
            cmd::IDENTIFY_PACKET_DEVICE => {
                let data = ata::to_bytes(&ata::identify_packet_device(&self.info()));
                self.pio_in(tf, data, 512);
            }
            cmd::DEVICE_RESET => {
                self.reset(tf);
            }
            cmd::SET_FEATURES => self.set_features(tf),
            cmd::STANDBY_IMMEDIATE
            | cmd::IDLE_IMMEDIATE
            | cmd::STANDBY
            | cmd::IDLE
            | cmd::SLEEP
            | cmd::CHECK_POWER_MODE => {
                self.ok(tf);
                if op == cmd::CHECK_POWER_MODE {
                    tf.count = 0xFF;
                }
            }
            // ATA commands an ATAPI device refuses with its signature.
            cmd::NOP
            | cmd::IDENTIFY_DEVICE
            | cmd::READ_SECTORS
            | cmd::READ_SECTORS_NORETRY
            | cmd::READ_SECTORS_EXT
            | cmd::READ_DMA
            | cmd::READ_DMA_EXT
            | cmd::SET_MULTIPLE_MODE
            | cmd::INITIALIZE_DEVICE_PARAMETERS
            | cmd::FLUSH_CACHE
            | cmd::FLUSH_CACHE_EXT => self.abort(tf),
            other => {
                guest_warn!(
                    self,
                    opcode = format_args!("{other:#04x}"),
                    "unknown ATA command to an ATAPI drive; aborted"
                );
                self.abort(tf)
            }
        }
    }

    fn packet(&mut self, tf: &mut TaskFile, cdb: [u8; 12]) {
        let Some(cd) = &mut self.cd else {
            return self.abort(tf);
        };
        match cd.execute(&cdb) {
            Reply::Done => self.atapi_ok(tf),
            Reply::Data(d) => self.atapi_data(tf, d),
            Reply::Read { lba, count } => {
                tf.status = status::BSY | status::DRDY;
                let len = (count * CD_SECTOR) as usize;
                self.submit(IoKind::Read, lba * CD_SECTOR, vec![0; len], Pending::CdRead);
            }
            Reply::Check(sense) => self.atapi_check(tf, sense),
            Reply::Unsupported(op) => {
                guest_warn!(
                    self,
                    opcode = format_args!("{op:#04x}"),
                    "unknown ATAPI packet command; CHECK CONDITION"
                );
                let sense = cd_check(&mut self.cd, Sense::INVALID_OPCODE);
                self.atapi_check(tf, sense)
            }
        }
    }

    fn atapi_ok(&mut self, tf: &mut TaskFile) {
        self.phase = Phase::Idle;
        tf.count = 0x03; // CoD | IO: status phase
        tf.error = 0;
        tf.status = status::DRDY | status::DSC;
        tf.raise();
    }

    fn atapi_check(&mut self, tf: &mut TaskFile, sense: Sense) {
        self.phase = Phase::Idle;
        tf.count = 0x03;
        tf.error = sense.key << 4;
        tf.status = status::DRDY | status::DSC | status::ERR;
        tf.raise();
    }

    /// Packet data to the host, by DMA or in PIO chunks.
    fn atapi_data(&mut self, tf: &mut TaskFile, buf: Vec<u8>) {
        if self.packet_dma {
            self.phase = Phase::DmaIn { buf };
            tf.count = 0x02;
            tf.status = status::DRDY | status::DSC | status::DRQ;
            return;
        }
        let limit = match tf.byte_count() & !1 {
            0 => 0xFFFE,
            n => n,
        };
        self.phase = Phase::PacketIn {
            buf,
            pos: 0,
            chunk_end: 0,
            limit,
        };
        self.next_chunk(tf);
    }

    /// Offers the next PIO chunk of packet data, or ends the command.
    fn next_chunk(&mut self, tf: &mut TaskFile) {
        let Phase::PacketIn {
            buf,
            pos,
            chunk_end,
            limit,
        } = &mut self.phase
        else {
            return;
        };
        if *pos >= buf.len() {
            return self.atapi_ok(tf);
        }
        let n = (*limit).min(buf.len() - *pos);
        *chunk_end = *pos + n;
        tf.set_byte_count(n);
        tf.count = 0x02; // IO: data to the host
        tf.status = status::DRDY | status::DSC | status::DRQ;
        tf.raise();
    }

    fn data_read(&mut self, tf: &mut TaskFile) -> u16 {
        match &mut self.phase {
            Phase::PioIn {
                buf,
                pos,
                block_end,
                block,
            } => {
                let w = word(buf, *pos);
                *pos += 2;
                if *pos >= *block_end {
                    if *pos >= buf.len() {
                        self.phase = Phase::Idle;
                        tf.status = status::DRDY | status::DSC;
                    } else {
                        *block_end = (*block_end + *block).min(buf.len());
                        tf.raise();
                    }
                }
                w
            }
            Phase::PacketIn {
                buf,
                pos,
                chunk_end,
                ..
            } => {
                let w = word(buf, *pos);
                *pos += 2;
                if *pos >= *chunk_end {
                    *pos = *chunk_end;
                    self.next_chunk(tf);
                }
                w
            }
            _ => 0xFFFF,
        }
    }

    fn data_write(&mut self, tf: &mut TaskFile, w: u16) {
        match &mut self.phase {
            Phase::PioOut {
                buf,
                pos,
                block_end,
                block,
                lba,
            } => {
                if let Some(dst) = buf.get_mut(*pos..*pos + 2) {
                    dst.copy_from_slice(&w.to_le_bytes());
                }
                *pos += 2;
                if *pos >= *block_end {
                    if *pos >= buf.len() {
                        let (buf, lba) = (std::mem::take(buf), *lba);
                        tf.status = status::BSY | status::DRDY;
                        self.submit(IoKind::Write, lba * 512, buf, Pending::Write);
                    } else {
                        *block_end = (*block_end + *block).min(buf.len());
                        tf.raise();
                    }
                }
            }
            Phase::Packet { cdb, pos } => {
                if let Some(dst) = cdb.get_mut(*pos..*pos + 2) {
                    dst.copy_from_slice(&w.to_le_bytes());
                }
                *pos += 2;
                if *pos >= cdb.len() {
                    let cdb = *cdb;
                    self.packet(tf, cdb);
                }
            }
            _ => {}
        }
    }

    /// Applies a finished request.
    fn complete(&mut self, tf: &mut TaskFile, done: IoCompletion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.stale > 0 {
            self.stale -= 1;
            return;
        }
        let Phase::Busy(pending) = std::mem::take(&mut self.phase) else {
            return;
        };
        if let Err(e) = done.result {
            guest_warn!(self, offset = done.offset, kind = ?done.kind, error = %e, "disk I/O failed; the guest sees an error");
            return match pending {
                Pending::PioRead { .. } | Pending::DmaRead => self.fail(tf, error::UNC),
                Pending::Write | Pending::Flush => self.fail(tf, error::ABRT),
                Pending::CdRead => {
                    let sense = cd_check(&mut self.cd, Sense::READ_ERROR);
                    self.atapi_check(tf, sense)
                }
            };
        }
        match pending {
            Pending::PioRead { block } => self.pio_in(tf, done.buf, block),
            Pending::DmaRead => {
                self.phase = Phase::DmaIn { buf: done.buf };
                tf.status = status::DRDY | status::DSC | status::DRQ;
            }
            Pending::Write if !self.write_cache => {
                self.submit(IoKind::Flush, 0, Vec::new(), Pending::Flush);
            }
            Pending::Write | Pending::Flush => self.ok(tf),
            Pending::CdRead => self.atapi_data(tf, done.buf),
        }
    }

    /// Whether the drive waits for the bus master.
    fn wants_dma(&self) -> bool {
        matches!(self.phase, Phase::DmaIn { .. } | Phase::DmaOut { .. })
    }

    /// Runs the bus master for the drive's transfer.
    fn dma(&mut self, tf: &mut TaskFile, bm: &mut BusMaster, mem: &mut dyn DmaMemory) {
        match std::mem::take(&mut self.phase) {
            Phase::DmaIn { buf } => {
                let outcome = if bm.to_memory() {
                    bm.copy_to_memory(mem, &buf)
                } else {
                    PrdOutcome::TableShort
                };
                bm.finish(outcome);
                match (outcome, self.kind) {
                    (PrdOutcome::TableShort, DriveKind::Disk) => self.fail(tf, error::ABRT),
                    (PrdOutcome::TableShort, DriveKind::Cdrom) => {
                        let sense = cd_check(&mut self.cd, Sense::INVALID_FIELD);
                        self.atapi_check(tf, sense)
                    }
                    (_, DriveKind::Disk) => self.ok(tf),
                    (_, DriveKind::Cdrom) => self.atapi_ok(tf),
                }
            }
            Phase::DmaOut { lba, len } => {
                let (data, outcome) = if bm.to_memory() {
                    (Vec::new(), PrdOutcome::TableShort)
                } else {
                    bm.copy_from_memory(mem, len)
                };
                bm.finish(outcome);
                if outcome == PrdOutcome::TableShort {
                    return self.fail(tf, error::ABRT);
                }
                tf.status = status::BSY | status::DRDY;
                self.submit(IoKind::Write, lba * 512, data, Pending::Write);
            }
            other => self.phase = other,
        }
    }
}

fn cd_check(cd: &mut Option<CdState>, sense: Sense) -> Sense {
    if let Some(cd) = cd {
        cd.check(sense);
    }
    sense
}

fn word(buf: &[u8], pos: usize) -> u16 {
    let lo = buf.get(pos).copied().unwrap_or(0);
    let hi = buf.get(pos + 1).copied().unwrap_or(0);
    u16::from_le_bytes([lo, hi])
}

/// IDENTIFY's firmware revision.
const FIRMWARE: &str = "1.0";

/// One of a channel's two device positions.
#[derive(Default)]
struct Unit {
    tf: TaskFile,
    drive: Option<Drive>,
}

/// One IDE channel: two units, the device control register, the bus master.
struct Channel<I: IrqLine> {
    units: [Unit; 2],
    selected: usize,
    control: u8,
    bm: BusMaster,
    irq: I,
    line: bool,
}

impl<I: IrqLine> Channel<I> {
    fn new(irq: I) -> Self {
        let mut ch = Channel {
            units: Default::default(),
            selected: 0,
            control: 0,
            bm: BusMaster::default(),
            irq,
            line: false,
        };
        ch.reset_units();
        ch
    }

    fn any_drive(&self) -> bool {
        self.units.iter().any(|u| u.drive.is_some())
    }

    /// The reset every drive on the channel sees (SRST, power-on, RESET#).
    fn reset_units(&mut self) {
        self.selected = 0;
        for u in &mut self.units {
            u.tf.device = 0;
            match &mut u.drive {
                Some(d) => d.reset(&mut u.tf),
                None => {
                    u.tf.signature(None);
                    u.tf.error = 0;
                    u.tf.status = 0;
                    u.tf.intrq = false;
                }
            }
        }
    }

    fn update_irq(&mut self) {
        for u in &mut self.units {
            if std::mem::take(&mut u.tf.raised) {
                self.bm.status |= bmdma::STATUS_INTERRUPT;
            }
        }
        let u = &self.units[self.selected];
        let level = u.drive.is_some() && u.tf.intrq && self.control & CTL_NIEN == 0;
        if level != self.line {
            self.line = level;
            self.irq.set_level(level);
        }
    }

    fn read_reg(&mut self, offset: u16) -> u8 {
        if !self.any_drive() {
            return 0;
        }
        let hob = self.control & CTL_HOB != 0;
        let u = &mut self.units[self.selected];
        let present = u.drive.is_some();
        let tf = &mut u.tf;
        match offset {
            1 if !present => 0,
            1 => tf.error,
            2 if hob => tf.hob_count,
            2 => tf.count,
            3..=5 if hob => tf.hob_lba[usize::from(offset - 3)],
            3..=5 => tf.lba[usize::from(offset - 3)],
            6 => tf.device,
            7 if !present => 0,
            7 => {
                tf.intrq = false;
                let s = tf.status;
                self.update_irq();
                s
            }
            _ => 0xFF,
        }
    }

    fn alt_status(&self) -> u8 {
        let u = &self.units[self.selected];
        if u.drive.is_some() { u.tf.status } else { 0 }
    }

    fn write_reg(&mut self, offset: u16, v: u8) {
        match offset {
            1..=5 => {
                self.control &= !CTL_HOB;
                for u in &mut self.units {
                    let tf = &mut u.tf;
                    match offset {
                        1 => (tf.hob_feature, tf.feature) = (tf.feature, v),
                        2 => (tf.hob_count, tf.count) = (tf.count, v),
                        _ => {
                            let i = usize::from(offset - 3);
                            (tf.hob_lba[i], tf.lba[i]) = (tf.lba[i], v);
                        }
                    }
                }
            }
            6 => {
                self.control &= !CTL_HOB;
                for u in &mut self.units {
                    u.tf.device = v;
                }
                self.selected = usize::from(v >> 4 & 1);
            }
            7 => {
                if v == cmd::EXECUTE_DEVICE_DIAGNOSTIC {
                    return self.diagnostic();
                }
                let u = &mut self.units[self.selected];
                // Commands to an absent slave are not answered.
                if let Some(d) = &mut u.drive {
                    d.command(&mut u.tf, v);
                }
            }
            _ => {}
        }
        self.update_irq();
    }

    /// EXECUTE DEVICE DIAGNOSTIC: both drives report their signature and
    /// pass; device 0 interrupts.
    fn diagnostic(&mut self) {
        for u in &mut self.units {
            if let Some(d) = &mut u.drive {
                d.abort_all();
                u.tf.signature(Some(d.kind));
                u.tf.error = 0x01;
                u.tf.status = status::DRDY | status::DSC;
            }
        }
        if self.units[0].drive.is_some() {
            self.units[0].tf.raise();
        }
        self.update_irq();
    }

    fn write_control(&mut self, v: u8) {
        let was_reset = self.control & CTL_SRST != 0;
        self.control = v;
        if v & CTL_SRST != 0 && !was_reset {
            for u in &mut self.units {
                if let Some(d) = &mut u.drive {
                    d.abort_all();
                    u.tf.status = status::BSY;
                    u.tf.intrq = false;
                }
            }
        } else if v & CTL_SRST == 0 && was_reset {
            self.reset_units();
        }
        self.update_irq();
    }

    fn data_read(&mut self) -> u16 {
        let u = &mut self.units[self.selected];
        let v = match &mut u.drive {
            Some(d) => d.data_read(&mut u.tf),
            None => 0xFFFF,
        };
        self.update_irq();
        v
    }

    fn data_write(&mut self, v: u16) {
        let u = &mut self.units[self.selected];
        if let Some(d) = &mut u.drive {
            d.data_write(&mut u.tf, v);
        }
        self.update_irq();
    }

    /// Whether a started bus master has a transfer to run.
    fn dma_ready(&self) -> bool {
        self.bm.active()
            && self
                .units
                .iter()
                .any(|u| u.drive.as_ref().is_some_and(Drive::wants_dma))
    }

    /// Applies finished requests and runs the bus master.
    fn service(&mut self, mem: &mut dyn DmaMemory) {
        for u in &mut self.units {
            if let Some(d) = &mut u.drive {
                while d.in_flight > 0 {
                    let Some(done) = d.io.try_complete() else {
                        break;
                    };
                    d.complete(&mut u.tf, done);
                }
            }
        }
        if self.bm.active() {
            for u in &mut self.units {
                if let Some(d) = &mut u.drive
                    && d.wants_dma()
                {
                    d.dma(&mut u.tf, &mut self.bm, mem);
                }
            }
        }
        self.update_irq();
    }
}

/// What a register port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Command(usize, u16),
    Control(usize),
    BusMaster(usize, u16),
}

/// The PIIX3 IDE function with its two channels.
pub struct Piix3Ide<I: IrqLine> {
    config: ConfigSpace,
    channels: [Channel<I>; 2],
    kick: bool,
}

impl<I: IrqLine> Piix3Ide<I> {
    fn initial_config() -> ConfigSpace {
        // Mass storage, IDE, programming interface 0x80: bus-master capable,
        // both channels in legacy (compatibility) mode.
        let mut config = ConfigSpace::new(0x8086, 0x7010, [0x01, 0x01, 0x80], 0x00);
        config.set_writable_u16(reg::COMMAND, 0x0005);
        config.set_u16(reg::STATUS, 0x0280);
        config.set_bar(4, Bar::Io { size: 16 });
        config.set_writable(0x0D, 0xF0); // latency timer
        config.set_writable_u16(IDETIM[0], 0xFFFF);
        config.set_writable_u16(IDETIM[1], 0xFFFF);
        config.set_writable(SIDETIM, 0xFF);
        config
    }

    /// The controller with no drives; `irq14` and `irq15` are the two
    /// channels' ISA interrupt lines.
    pub fn new(irq14: I, irq15: I) -> Self {
        Self {
            config: Self::initial_config(),
            channels: [Channel::new(irq14), Channel::new(irq15)],
            kick: false,
        }
    }

    /// Plugs a drive in (the board checked the slot is free).
    pub(crate) fn attach(&mut self, channel: usize, slave: bool, drive: Drive) {
        let ch = &mut self.channels[channel.min(1)];
        let u = &mut ch.units[usize::from(slave)];
        u.drive = Some(drive);
        ch.reset_units();
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// RESET#: configuration back to power-on values, drives reset.
    pub fn reset(&mut self) {
        self.config = Self::initial_config();
        for ch in &mut self.channels {
            ch.control = 0;
            ch.bm = BusMaster::default();
            ch.reset_units();
            ch.update_irq();
        }
        self.kick = false;
    }

    /// What firmware programs before an OS boots directly: I/O and bus
    /// master enabled, BAR4 at `bm_base`, both channels decoding.
    pub fn firmware_setup(&mut self, bm_base: u16) {
        self.config
            .write(reg::BAR0 + 16, IoSize::Dword, u32::from(bm_base) | 1);
        self.config.write(reg::COMMAND, IoSize::Word, 0x0005);
        for t in IDETIM {
            self.config.write(t, IoSize::Word, u32::from(IDETIM_DECODE));
        }
    }

    fn io_enabled(&self) -> bool {
        self.config.u16(reg::COMMAND) & 1 != 0
    }

    fn decode(&self, port: u16) -> Option<Port> {
        if !self.io_enabled() {
            return None;
        }
        for (ch, (base, control)) in [
            (PRIMARY_BASE, PRIMARY_CONTROL),
            (SECONDARY_BASE, SECONDARY_CONTROL),
        ]
        .into_iter()
        .enumerate()
        {
            if self.config.u16(IDETIM[ch]) & IDETIM_DECODE == 0 {
                continue;
            }
            if (base..base + 8).contains(&port) {
                return Some(Port::Command(ch, port - base));
            }
            if port == control {
                return Some(Port::Control(ch));
            }
        }
        let bm = self.config.bar_address(4) as u16;
        if bm != 0 && (bm..bm.wrapping_add(16)).contains(&port) {
            let off = port - bm;
            return Some(Port::BusMaster(usize::from(off >> 3), off & 7));
        }
        None
    }

    /// Whether the controller decodes `port`.
    pub fn decodes(&self, port: u16) -> bool {
        self.decode(port).is_some()
    }

    /// An IN; `None` when the port is not the controller's.
    pub fn io_read(&mut self, port: u16, size: IoSize) -> Option<u32> {
        let v = match self.decode(port)? {
            Port::Command(ch, 0) => {
                let ch = &mut self.channels[ch];
                match size {
                    IoSize::Dword => {
                        let lo = ch.data_read();
                        u32::from(lo) | u32::from(ch.data_read()) << 16
                    }
                    _ => u32::from(ch.data_read()),
                }
            }
            Port::Command(ch, off) => {
                let ch = &mut self.channels[ch];
                (0..size as u16).fold(0u32, |acc, i| {
                    let o = off + i;
                    let b = if o < 8 { ch.read_reg(o) } else { 0xFF };
                    acc | u32::from(b) << (8 * i)
                })
            }
            Port::Control(ch) => {
                let ch = &self.channels[ch];
                if ch.any_drive() {
                    u32::from(ch.alt_status())
                } else {
                    0
                }
            }
            Port::BusMaster(ch, off) => (0..size as u16).fold(0u32, |acc, i| {
                let o = off + i;
                let b = self.channels[(ch + usize::from(o >> 3)).min(1)]
                    .bm
                    .read(o & 7);
                acc | u32::from(b) << (8 * i)
            }),
        };
        Some(v & size.ones())
    }

    /// An OUT; returns whether the controller decodes the port.
    pub fn io_write(&mut self, port: u16, size: IoSize, value: u32) -> bool {
        let Some(p) = self.decode(port) else {
            return false;
        };
        match p {
            Port::Command(ch, 0) => {
                let ch = &mut self.channels[ch];
                ch.data_write(value as u16);
                if size == IoSize::Dword {
                    ch.data_write((value >> 16) as u16);
                }
            }
            Port::Command(ch, off) => {
                let ch = &mut self.channels[ch];
                for i in 0..size as u16 {
                    if off + i < 8 {
                        ch.write_reg(off + i, (value >> (8 * i)) as u8);
                    }
                }
            }
            Port::Control(ch) => self.channels[ch].write_control(value as u8),
            Port::BusMaster(ch, off) => {
                for i in 0..size as u16 {
                    let o = off + i;
                    let c = &mut self.channels[(ch + usize::from(o >> 3)).min(1)];
                    c.bm.write(o & 7, (value >> (8 * i)) as u8);
                }
            }
        }
        self.kick |= self.channels.iter().any(Channel::dma_ready);
        true
    }

    /// Whether a bus master just got a transfer to run: the platform
    /// should stop the CPU and call [`Piix3Ide::service`].
    pub fn take_kick(&mut self) -> bool {
        std::mem::take(&mut self.kick)
    }

    /// Whether any drive has a request with its I/O thread (tests).
    #[cfg(test)]
    fn io_in_flight(&self) -> bool {
        self.channels
            .iter()
            .flat_map(|c| &c.units)
            .any(|u| u.drive.as_ref().is_some_and(|d| d.in_flight > 0))
    }

    /// Applies finished disk requests and runs started bus masters; call
    /// on the vCPU thread between CPU slices.
    pub fn service(&mut self, mem: &mut dyn DmaMemory) {
        self.kick = false;
        for ch in &mut self.channels {
            ch.service(mem);
        }
    }
}

impl<I: IrqLine> PciFunction for Piix3Ide<I> {
    fn config_read(&mut self, offset: u8, size: IoSize) -> u32 {
        self.config.read(offset, size)
    }
    fn config_write(&mut self, offset: u8, size: IoSize, value: u32) {
        self.config.write(offset, size, value)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A flat guest memory for bus-master tests.

    use super::DmaMemory;

    pub struct FakeMemory(pub Vec<u8>);

    impl FakeMemory {
        pub fn new(len: usize) -> Self {
            FakeMemory(vec![0; len])
        }
    }

    impl DmaMemory for FakeMemory {
        fn read(&mut self, addr: u32, buf: &mut [u8]) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.0.get(addr as usize + i).copied().unwrap_or(0xFF);
            }
        }
        fn write(&mut self, addr: u32, data: &[u8]) {
            for (i, &b) in data.iter().enumerate() {
                if let Some(slot) = self.0.get_mut(addr as usize + i) {
                    *slot = b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
