//! ATA details of a drive: the IDENTIFY DEVICE and IDENTIFY PACKET DEVICE
//! data, CHS geometry, and the transfer modes the drive reports.

/// ATA command opcodes.
pub mod cmd {
    pub const NOP: u8 = 0x00;
    pub const DEVICE_RESET: u8 = 0x08;
    pub const RECALIBRATE: u8 = 0x10;
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_NORETRY: u8 = 0x21;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const READ_DMA_EXT: u8 = 0x25;
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_NORETRY: u8 = 0x31;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const WRITE_DMA_EXT: u8 = 0x35;
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    pub const READ_VERIFY: u8 = 0x40;
    pub const READ_VERIFY_NORETRY: u8 = 0x41;
    pub const READ_VERIFY_EXT: u8 = 0x42;
    pub const SEEK: u8 = 0x70;
    pub const EXECUTE_DEVICE_DIAGNOSTIC: u8 = 0x90;
    pub const INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
    pub const PACKET: u8 = 0xA0;
    pub const IDENTIFY_PACKET_DEVICE: u8 = 0xA1;
    pub const READ_MULTIPLE: u8 = 0xC4;
    pub const WRITE_MULTIPLE: u8 = 0xC5;
    pub const SET_MULTIPLE_MODE: u8 = 0xC6;
    pub const READ_DMA: u8 = 0xC8;
    pub const READ_DMA_NORETRY: u8 = 0xC9;
    pub const WRITE_DMA: u8 = 0xCA;
    pub const WRITE_DMA_NORETRY: u8 = 0xCB;
    pub const STANDBY_IMMEDIATE: u8 = 0xE0;
    pub const IDLE_IMMEDIATE: u8 = 0xE1;
    pub const STANDBY: u8 = 0xE2;
    pub const IDLE: u8 = 0xE3;
    pub const CHECK_POWER_MODE: u8 = 0xE5;
    pub const SLEEP: u8 = 0xE6;
    pub const FLUSH_CACHE: u8 = 0xE7;
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
    pub const SET_FEATURES: u8 = 0xEF;
    // The ATA-1 era opcodes of the power commands.
    pub const STANDBY_IMMEDIATE_OLD: u8 = 0x94;
    pub const IDLE_IMMEDIATE_OLD: u8 = 0x95;
    pub const STANDBY_OLD: u8 = 0x96;
    pub const IDLE_OLD: u8 = 0x97;
    pub const CHECK_POWER_MODE_OLD: u8 = 0x98;
    pub const SLEEP_OLD: u8 = 0x99;
}

/// Status register bits.
pub mod status {
    pub const ERR: u8 = 1 << 0;
    pub const DRQ: u8 = 1 << 3;
    /// Device seek complete (ATA) / service (ATAPI).
    pub const DSC: u8 = 1 << 4;
    pub const DRDY: u8 = 1 << 6;
    pub const BSY: u8 = 1 << 7;
}

/// Error register bits.
pub mod error {
    pub const ABRT: u8 = 1 << 2;
    pub const IDNF: u8 = 1 << 4;
    pub const UNC: u8 = 1 << 6;
}

/// Sectors a READ/WRITE MULTIPLE block holds at most (IDENTIFY word 47).
pub const MAX_MULTIPLE: u16 = 16;
/// Highest PIO, multiword DMA and Ultra DMA modes the drive reports.
pub const MAX_PIO: u8 = 4;
pub const MAX_MWDMA: u8 = 2;
pub const MAX_UDMA: u8 = 5;

/// Cylinders, heads, sectors per track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chs {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors: u8,
}

impl Chs {
    /// The default translation of a disk of `sectors` sectors: 16 heads,
    /// 63 sectors per track, at most 16383 cylinders.
    pub fn for_sectors(sectors: u64) -> Chs {
        let cylinders = (sectors / (16 * 63)).clamp(1, 16383) as u16;
        Chs {
            cylinders,
            heads: 16,
            sectors: 63,
        }
    }

    pub fn capacity(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// The transfer mode the host selected with SET FEATURES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaMode {
    None,
    Multiword(u8),
    Ultra(u8),
}

/// What IDENTIFY reports, besides the size.
pub struct IdentifyInfo<'a> {
    pub model: &'a str,
    pub serial: &'a str,
    pub firmware: &'a str,
    pub sectors: u64,
    pub chs: Chs,
    pub current_chs: Chs,
    pub multiple: u16,
    pub dma: DmaMode,
    pub write_cache: bool,
    /// Device 1 on its channel (word 93 reports which device it is).
    pub slave: bool,
}

/// Puts `s` into words `at..at + len/2` as ATA strings go: space-padded,
/// two characters a word, the first in the high byte.
fn put_string(words: &mut [u16; 256], at: usize, len: usize, s: &str) {
    let mut bytes = s
        .as_bytes()
        .iter()
        .copied()
        .filter(u8::is_ascii_graphic_or_space);
    for w in &mut words[at..at + len / 2] {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from(hi) << 8 | u16::from(lo);
    }
}

trait AsciiPrintable {
    fn is_ascii_graphic_or_space(&self) -> bool;
}

impl AsciiPrintable for u8 {
    fn is_ascii_graphic_or_space(&self) -> bool {
        self.is_ascii_graphic() || *self == b' '
    }
}

fn dma_words(dma: DmaMode) -> (u16, u16) {
    let mw_supported = (1u16 << (MAX_MWDMA + 1)) - 1;
    let udma_supported = (1u16 << (MAX_UDMA + 1)) - 1;
    match dma {
        DmaMode::None => (mw_supported, udma_supported),
        DmaMode::Multiword(m) => (mw_supported | 1 << (8 + m), udma_supported),
        DmaMode::Ultra(m) => (mw_supported, udma_supported | 1 << (8 + m)),
    }
}

/// IDENTIFY DEVICE data of a hard disk.
pub fn identify_device(info: &IdentifyInfo) -> [u16; 256] {
    let mut w = [0u16; 256];
    w[0] = 0x0040; // fixed device
    w[1] = info.chs.cylinders;
    w[3] = u16::from(info.chs.heads);
    w[6] = u16::from(info.chs.sectors);
    put_string(&mut w, 10, 20, info.serial);
    put_string(&mut w, 23, 8, info.firmware);
    put_string(&mut w, 27, 40, info.model);
    w[47] = 0x8000 | MAX_MULTIPLE;
    // IORDY supported, LBA, DMA.
    w[49] = 1 << 11 | 1 << 9 | 1 << 8;
    w[50] = 0x4000;
    w[51] = 0x0200;
    w[52] = 0x0200;
    // Words 54-58, 64-70 and 88 are valid.
    w[53] = 0x0007;
    let cur = info.current_chs;
    w[54] = cur.cylinders;
    w[55] = u16::from(cur.heads);
    w[56] = u16::from(cur.sectors);
    let cur_cap = cur.capacity().min(info.sectors).min(u64::from(u32::MAX)) as u32;
    w[57] = cur_cap as u16;
    w[58] = (cur_cap >> 16) as u16;
    w[59] = if info.multiple > 0 {
        0x0100 | info.multiple
    } else {
        0
    };
    let lba28 = info.sectors.min(0x0FFF_FFFF) as u32;
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    let (mwdma, udma) = dma_words(info.dma);
    w[63] = mwdma;
    w[64] = 0x0003; // PIO 3 and 4
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    w[80] = 0x00F0; // ATA/ATAPI-4 to -7
    w[81] = 0x0016;
    // Supported: NOP, write cache, power management; 48-bit, FLUSH CACHE
    // (EXT).
    w[82] = 1 << 14 | 1 << 5 | 1 << 3;
    w[83] = 0x4000 | 1 << 13 | 1 << 12 | 1 << 10;
    w[84] = 0x4000;
    w[85] = 1 << 14 | u16::from(info.write_cache) << 5 | 1 << 3;
    w[86] = 1 << 13 | 1 << 12 | 1 << 10;
    w[87] = 0x4000;
    w[88] = udma;
    // Hardware reset result: an 80-conductor cable (CBLID), the device
    // number and "determined by the jumper".
    w[93] = if info.slave { 0x6300 } else { 0x600B };
    w[100] = info.sectors as u16;
    w[101] = (info.sectors >> 16) as u16;
    w[102] = (info.sectors >> 32) as u16;
    w[103] = (info.sectors >> 48) as u16;
    checksum(&mut w);
    w
}

/// IDENTIFY PACKET DEVICE data of a CD-ROM drive.
pub fn identify_packet_device(info: &IdentifyInfo) -> [u16; 256] {
    let mut w = [0u16; 256];
    // ATAPI, CD-ROM, removable, DRQ within 50 µs, 12-byte packets.
    w[0] = 2 << 14 | 5 << 8 | 1 << 7 | 2 << 5;
    put_string(&mut w, 10, 20, info.serial);
    put_string(&mut w, 23, 8, info.firmware);
    put_string(&mut w, 27, 40, info.model);
    w[49] = 1 << 11 | 1 << 9 | 1 << 8;
    w[50] = 0x4000;
    w[53] = 0x0006; // words 64-70 and 88 valid
    let (mwdma, udma) = dma_words(info.dma);
    w[63] = mwdma;
    w[64] = 0x0003;
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    w[71] = 30;
    w[72] = 30;
    w[80] = 0x001E; // ATAPI-1 to -4
    w[82] = 1 << 14 | 1 << 4; // NOP, PACKET
    w[83] = 0x4000;
    w[84] = 0x4000;
    w[85] = 1 << 14 | 1 << 4;
    w[87] = 0x4000;
    w[88] = udma;
    w[93] = if info.slave { 0x6300 } else { 0x600B };
    checksum(&mut w);
    w
}

/// Word 255: signature 0xA5 and a checksum making all 512 bytes sum to 0.
fn checksum(w: &mut [u16; 256]) {
    w[255] = 0x00A5;
    let sum = w
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .fold(0u8, u8::wrapping_add);
    w[255] |= u16::from(sum.wrapping_neg()) << 8;
}

/// The words as the data port delivers them.
pub fn to_bytes(words: &[u16; 256]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> IdentifyInfo<'static> {
        IdentifyInfo {
            model: "BULKHEAD HARDDISK",
            serial: "BH0001",
            firmware: "1.0",
            sectors: 0x1_2345_6789,
            chs: Chs::for_sectors(0x1_2345_6789),
            current_chs: Chs::for_sectors(0x1_2345_6789),
            multiple: 0,
            dma: DmaMode::Multiword(2),
            write_cache: true,
            slave: false,
        }
    }

    #[test]
    fn strings_are_byte_swapped_and_space_padded() {
        let w = identify_device(&info());
        assert_eq!(w[27], u16::from_be_bytes(*b"BU"));
        assert_eq!(w[46], u16::from_be_bytes(*b"  "));
        assert_eq!(w[10], u16::from_be_bytes(*b"BH"));
    }

    #[test]
    fn lba28_capacity_saturates_and_lba48_holds_the_size() {
        let w = identify_device(&info());
        assert_eq!((w[60], w[61]), (0xFFFF, 0x0FFF));
        assert_eq!((w[100], w[101], w[102]), (0x6789, 0x2345, 0x0001));
    }

    #[test]
    fn selected_dma_mode_is_reported() {
        let w = identify_device(&info());
        assert_eq!(w[63], 0x0407);
        assert_eq!(w[88], 0x003F);
    }

    #[test]
    fn identify_data_sums_to_zero() {
        let bytes = to_bytes(&identify_packet_device(&info()));
        assert_eq!(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
    }
}
