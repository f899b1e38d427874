//! The VHD on-disk structures of Microsoft's "Virtual Hard Disk Image Format
//! Specification" (v1.0): the 512-byte hard disk footer, the 1024-byte
//! dynamic disk header with its eight parent locator entries, the CHS
//! geometry algorithm and the one's-complement checksum. All fields are
//! big-endian. Parsing validates every field a reader relies on and never
//! allocates from a value it read.

use std::fmt;

use serde::Serialize;

use crate::error::{DiskError, Structure};

pub const SECTOR: u64 = 512;
pub const FOOTER_SIZE: usize = 512;
pub const HEADER_SIZE: usize = 1024;
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// Feature bit 1 is reserved and must always be set.
pub const FEATURES_RESERVED: u32 = 0x0000_0002;
pub const VERSION: u32 = 0x0001_0000;
/// The spec's limit for a VHD's size.
pub const MAX_DISK_SIZE: u64 = 2040 << 30;
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// A BAT entry for a block with no space in the file.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// The footer's data offset of a fixed disk: none.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
pub const VHD_EPOCH: u64 = 946_684_800;
/// The largest geometry the spec's algorithm yields (about 127 GiB).
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// Our creator application, version and host OS. The creator is ours
/// ("bkhd"); qemu's `vpc` driver takes the size of such an image from its
/// CHS geometry, which is why `create_*` round sizes up to one the geometry
/// states exactly (see `exact_size`).
pub const CREATOR_APP: [u8; 4] = *b"bkhd";
pub const CREATOR_VERSION: u32 = 0x0001_0000;
/// "Wi2k": the spec defines only Windows and Macintosh host codes.
pub const CREATOR_OS: [u8; 4] = *b"Wi2k";

/// Platform codes of parent locators.
pub const PLATFORM_NONE: u32 = 0;
/// Relative Windows path, UTF-16 little-endian.
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// Absolute Windows path, UTF-16 little-endian.
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Deprecated Windows codes (not written, read as ASCII paths).
pub const PLATFORM_WI2R: u32 = u32::from_be_bytes(*b"Wi2r");
pub const PLATFORM_WI2K: u32 = u32::from_be_bytes(*b"Wi2k");
pub const PLATFORM_MAC: u32 = u32::from_be_bytes(*b"Mac ");
/// Mac OS X: a UTF-8 `file://` URL.
pub const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");
/// The largest locator we read: a 32767-character UTF-16 path.
pub const MAX_LOCATOR_LEN: u32 = 65536;

/// One's complement of the byte sum, skipping the 4 checksum bytes at
/// `skip`.
pub fn checksum(buf: &[u8], skip: usize) -> u32 {
    let sum = buf
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// A 16-byte unique id, shown as 8-4-4-4-12 hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random version-4 id (from the kernel's random pool).
    pub fn random() -> Result<Uuid, DiskError> {
        use std::io::Read;
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(DiskError::io("reading /dev/urandom"))?;
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        Ok(Uuid(b))
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Seconds since the VHD epoch, now.
pub fn timestamp_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(unix.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The spec's algorithm (appendix "CHS Calculation"): the geometry for a
    /// disk of `total_sectors`, which may state fewer sectors than that.
    pub fn for_sectors(total_sectors: u64) -> Geometry {
        let total = total_sectors.min(MAX_CHS_SECTORS);
        let (spt, heads, cth);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cth = total / spt;
        } else {
            let mut s = 17;
            let mut c = total / s;
            let mut h = c.div_ceil(1024).max(4);
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = total / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = total / s;
            }
            spt = s;
            heads = h;
            cth = c;
        }
        Geometry {
            cylinders: (cth / heads) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }

    pub fn sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    fn to_u32(self) -> u32 {
        (u32::from(self.cylinders) << 16)
            | (u32::from(self.heads) << 8)
            | u32::from(self.sectors_per_track)
    }

    fn from_u32(v: u32) -> Geometry {
        Geometry {
            cylinders: (v >> 16) as u16,
            heads: (v >> 8) as u8,
            sectors_per_track: v as u8,
        }
    }
}

/// The smallest size of at least `size` bytes (a multiple of 512) that
/// readers deriving the size from the CHS geometry (Virtual PC, qemu's
/// `vpc` driver for most creators) see exactly: its geometry states it.
/// Above the largest geometry (about 127 GiB) those readers use the
/// footer's size, so the size is kept.
pub fn exact_size(size: u64) -> u64 {
    let sectors = size.div_ceil(SECTOR);
    if sectors >= MAX_CHS_SECTORS {
        return sectors * SECTOR;
    }
    // The geometry of n sectors states at most n; step up until it states
    // at least the request. The loop ends within a few hundred steps (one
    // track of the widest layout).
    let mut n = sectors;
    loop {
        let g = Geometry::for_sectors(n);
        if g.sectors() >= sectors {
            return g.sectors() * SECTOR;
        }
        n += 1;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
}

/// The hard disk footer (at the end of every VHD; dynamic and differencing
/// images keep a copy at offset 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub version: u32,
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub uuid: Uuid,
    pub saved_state: u8,
}

impl Footer {
    pub fn new(disk_type: DiskType, size: u64, uuid: Uuid) -> Footer {
        Footer {
            features: FEATURES_RESERVED,
            version: VERSION,
            data_offset: match disk_type {
                DiskType::Fixed => NO_DATA_OFFSET,
                _ => FOOTER_SIZE as u64,
            },
            timestamp: timestamp_now(),
            creator_app: CREATOR_APP,
            creator_version: CREATOR_VERSION,
            creator_os: CREATOR_OS,
            original_size: size,
            current_size: size,
            geometry: Geometry::for_sectors(size / SECTOR),
            disk_type,
            uuid,
            saved_state: 0,
        }
    }

    /// Parses and validates a footer: cookie, checksum, version, type and
    /// size (a non-zero multiple of 512, at most 2040 GiB).
    pub fn parse(b: &[u8; FOOTER_SIZE], what: Structure) -> Result<Footer, DiskError> {
        if &b[0..8] != FOOTER_COOKIE {
            return Err(DiskError::BadCookie {
                what,
                expected: "conectix",
            });
        }
        let stored = be32(b, 64);
        let computed = checksum(b, 64);
        if stored != computed {
            return Err(DiskError::BadChecksum {
                what,
                stored,
                computed,
            });
        }
        let version = be32(b, 12);
        if version >> 16 != 1 {
            return Err(DiskError::BadVersion { what, version });
        }
        let disk_type = match be32(b, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            t => return Err(DiskError::BadDiskType(t)),
        };
        let current_size = be64(b, 48);
        if current_size > MAX_DISK_SIZE {
            return Err(DiskError::SizeTooLarge(current_size));
        }
        if current_size == 0 || !current_size.is_multiple_of(SECTOR) {
            return Err(DiskError::BadSize(current_size));
        }
        Ok(Footer {
            features: be32(b, 8),
            version,
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator_app: b[28..32].try_into().unwrap_or_default(),
            creator_version: be32(b, 32),
            creator_os: b[36..40].try_into().unwrap_or_default(),
            original_size: be64(b, 40),
            current_size,
            geometry: Geometry::from_u32(be32(b, 56)),
            disk_type,
            uuid: Uuid(b[68..84].try_into().unwrap_or_default()),
            saved_state: b[84],
        })
    }

    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(FOOTER_COOKIE);
        put32(&mut b, 8, self.features);
        put32(&mut b, 12, self.version);
        put64(&mut b, 16, self.data_offset);
        put32(&mut b, 24, self.timestamp);
        b[28..32].copy_from_slice(&self.creator_app);
        put32(&mut b, 32, self.creator_version);
        b[36..40].copy_from_slice(&self.creator_os);
        put64(&mut b, 40, self.original_size);
        put64(&mut b, 48, self.current_size);
        put32(&mut b, 56, self.geometry.to_u32());
        put32(&mut b, 60, self.disk_type.code());
        b[68..84].copy_from_slice(&self.uuid.0);
        b[84] = self.saved_state;
        let sum = checksum(&b, 64);
        put32(&mut b, 64, sum);
        b
    }
}

/// One of the dynamic header's eight parent locator entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locator {
    pub code: u32,
    /// The spec says sectors; Virtual PC and Hyper-V store bytes. We write
    /// bytes (a multiple of 512) and read only `data_length` bytes.
    pub data_space: u32,
    pub data_length: u32,
    pub data_offset: u64,
}

impl Locator {
    pub fn code_name(&self) -> String {
        String::from_utf8_lossy(&self.code.to_be_bytes())
            .trim_end_matches('\0')
            .to_string()
    }
}

/// The dynamic disk header (at the footer's data offset, usually 512).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicHeader {
    pub data_offset: u64,
    pub table_offset: u64,
    pub version: u32,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub parent_uuid: Uuid,
    pub parent_timestamp: u32,
    /// The parent's file name, UTF-16 big-endian, at most 256 units.
    pub parent_name: String,
    pub locators: [Locator; 8],
}

impl DynamicHeader {
    pub fn new(table_offset: u64, max_table_entries: u32, block_size: u32) -> DynamicHeader {
        DynamicHeader {
            data_offset: NO_DATA_OFFSET,
            table_offset,
            version: VERSION,
            max_table_entries,
            block_size,
            parent_uuid: Uuid::default(),
            parent_timestamp: 0,
            parent_name: String::new(),
            locators: [Locator::default(); 8],
        }
    }

    /// Parses and validates a header: cookie, checksum, version and block
    /// size. The table's position and size are checked against the file by
    /// the caller.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<DynamicHeader, DiskError> {
        let what = Structure::DynamicHeader;
        if &b[0..8] != HEADER_COOKIE {
            return Err(DiskError::BadCookie {
                what,
                expected: "cxsparse",
            });
        }
        let stored = be32(b, 36);
        let computed = checksum(b, 36);
        if stored != computed {
            return Err(DiskError::BadChecksum {
                what,
                stored,
                computed,
            });
        }
        let version = be32(b, 24);
        if version >> 16 != 1 {
            return Err(DiskError::BadVersion { what, version });
        }
        let block_size = be32(b, 32);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(DiskError::BadBlockSize(block_size));
        }
        let units: Vec<u16> = b[64..576]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let mut locators = [Locator::default(); 8];
        for (i, l) in locators.iter_mut().enumerate() {
            let at = 576 + i * 24;
            *l = Locator {
                code: be32(b, at),
                data_space: be32(b, at + 4),
                data_length: be32(b, at + 8),
                data_offset: be64(b, at + 16),
            };
        }
        Ok(DynamicHeader {
            data_offset: be64(b, 8),
            table_offset: be64(b, 16),
            version,
            max_table_entries: be32(b, 28),
            block_size,
            parent_uuid: Uuid(b[40..56].try_into().unwrap_or_default()),
            parent_timestamp: be32(b, 56),
            parent_name: String::from_utf16_lossy(&units),
            locators,
        })
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(HEADER_COOKIE);
        put64(&mut b, 8, self.data_offset);
        put64(&mut b, 16, self.table_offset);
        put32(&mut b, 24, self.version);
        put32(&mut b, 28, self.max_table_entries);
        put32(&mut b, 32, self.block_size);
        b[40..56].copy_from_slice(&self.parent_uuid.0);
        put32(&mut b, 56, self.parent_timestamp);
        for (i, unit) in self.parent_name.encode_utf16().take(256).enumerate() {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&unit.to_be_bytes());
        }
        for (i, l) in self.locators.iter().enumerate() {
            let at = 576 + i * 24;
            put32(&mut b, at, l.code);
            put32(&mut b, at + 4, l.data_space);
            put32(&mut b, at + 8, l.data_length);
            put64(&mut b, at + 16, l.data_offset);
        }
        let sum = checksum(&b, 36);
        put32(&mut b, 36, sum);
        b
    }

    /// Bytes of one block's sector bitmap: a bit per sector, padded to a
    /// sector.
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size(self.block_size)
    }
}

pub fn bitmap_size(block_size: u32) -> u64 {
    (u64::from(block_size) / SECTOR)
        .div_ceil(8)
        .next_multiple_of(SECTOR)
}

/// Encodes a locator path: UTF-16 little-endian for the Windows codes.
pub fn encode_utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// Decodes a locator's bytes into a path string, per platform code.
pub fn decode_locator(code: u32, data: &[u8]) -> Option<String> {
    let s = match code {
        PLATFORM_W2RU | PLATFORM_W2KU => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16(&units).ok()?
        }
        PLATFORM_WI2R | PLATFORM_WI2K | PLATFORM_MACX => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            String::from_utf8(data[..end].to_vec()).ok()?
        }
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_spec_table() {
        // 64 MiB: 17 sectors per track, 8 heads.
        let g = Geometry::for_sectors(64 << 11);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (963, 8, 17));
        // Past 65535*16*63 sectors: 255 sectors, 16 heads.
        let g = Geometry::for_sectors(100 << 21);
        assert_eq!((g.heads, g.sectors_per_track), (16, 255));
        // Capped at the largest geometry.
        let g = Geometry::for_sectors(1 << 40);
        assert_eq!(g.sectors(), MAX_CHS_SECTORS);
    }

    #[test]
    fn exact_size_is_stated_by_its_own_geometry() {
        for mib in [1u64, 3, 10, 64, 100, 500, 1000, 4000] {
            let size = exact_size(mib << 20);
            assert!(size >= mib << 20);
            assert_eq!(
                Geometry::for_sectors(size / SECTOR).sectors() * SECTOR,
                size
            );
        }
        assert_eq!(exact_size(200 << 30), 200 << 30);
    }

    #[test]
    fn footer_round_trips_and_checksum_covers_every_byte() {
        let f = Footer::new(DiskType::Dynamic, 10 << 20, Uuid([7; 16]));
        let mut b = f.to_bytes();
        assert_eq!(Footer::parse(&b, Structure::Footer).unwrap(), f);
        b[100] ^= 1;
        assert!(matches!(
            Footer::parse(&b, Structure::Footer),
            Err(DiskError::BadChecksum { .. })
        ));
    }

    #[test]
    fn header_round_trips_with_parent_name() {
        let mut h = DynamicHeader::new(1536, 5, DEFAULT_BLOCK_SIZE);
        h.parent_name = "base disk é.vhd".into();
        h.locators[0] = Locator {
            code: PLATFORM_W2RU,
            data_space: 512,
            data_length: 20,
            data_offset: 4096,
        };
        let b = h.to_bytes();
        assert_eq!(DynamicHeader::parse(&b).unwrap(), h);
    }

    #[test]
    fn uuid_displays_as_8_4_4_4_12() {
        let u = Uuid([0xab; 16]);
        assert_eq!(u.to_string(), "abababab-abab-abab-abab-abababababab");
    }
}
