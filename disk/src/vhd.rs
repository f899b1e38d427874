//! Parsing and validating one image file (raw, or a VHD of any type), and
//! the per-file state of a sparse (dynamic or differencing) VHD: its block
//! allocation table, sector bitmaps and where the next block goes.
//!
//! Every length and offset read from the file is checked against the file's
//! length before it is used, so no allocation is larger than what the file
//! holds: the BAT is read only when the file contains it, and nothing else
//! read from the image sizes a buffer (block sizes are capped at 256 MiB
//! and only a block's bitmap, at most 64 KiB, is ever buffered).

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::error::{DiskError, Structure};
use crate::format::{
    self, DiskType, DynamicHeader, FOOTER_COOKIE, FOOTER_SIZE, Footer, HEADER_SIZE,
    MAX_LOCATOR_LEN, PLATFORM_NONE, SECTOR, UNALLOCATED,
};
use crate::storage::Storage;

/// Bitmaps kept in memory before clean ones are dropped.
const BITMAP_CACHE_BYTES: usize = 8 << 20;

pub(crate) fn read_at(
    s: &dyn Storage,
    buf: &mut [u8],
    offset: u64,
    what: &str,
) -> Result<(), DiskError> {
    s.read_exact_at(buf, offset).map_err(DiskError::io(format!(
        "reading the {what} at offset {offset}"
    )))
}

pub(crate) fn write_at(
    s: &dyn Storage,
    buf: &[u8],
    offset: u64,
    what: &str,
) -> Result<(), DiskError> {
    s.write_all_at(buf, offset).map_err(DiskError::io(format!(
        "writing the {what} at offset {offset}"
    )))
}

pub(crate) fn sync(s: &dyn Storage) -> Result<(), DiskError> {
    s.sync_data().map_err(DiskError::io("fdatasync"))
}

pub(crate) fn file_len(s: &dyn Storage) -> Result<u64, DiskError> {
    s.len().map_err(DiskError::io("reading the file's length"))
}

/// What a file looks like before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Raw,
    Vhd,
}

/// A VHD has "conectix" at its end (every type) or at its start (the copy
/// of a dynamic or differencing image whose end is damaged).
pub(crate) fn probe(s: &dyn Storage) -> Result<Probe, DiskError> {
    let len = file_len(s)?;
    let mut cookie = [0u8; 8];
    if len >= FOOTER_SIZE as u64 {
        read_at(s, &mut cookie, len - FOOTER_SIZE as u64, "footer")?;
        if &cookie == FOOTER_COOKIE {
            return Ok(Probe::Vhd);
        }
    }
    if len >= 8 {
        read_at(s, &mut cookie, 0, "footer copy")?;
        if &cookie == FOOTER_COOKIE {
            return Ok(Probe::Vhd);
        }
    }
    Ok(Probe::Raw)
}

/// A named byte range of the file, for overlap checks.
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

/// Finds the first pair of overlapping regions.
pub(crate) fn first_overlap(regions: &mut [Region]) -> Option<(usize, usize)> {
    regions.sort_by_key(|r| (r.start, r.end));
    let mut furthest: Option<usize> = None;
    for i in 0..regions.len() {
        if regions[i].start == regions[i].end {
            continue;
        }
        if let Some(f) = furthest {
            if regions[i].start < regions[f].end {
                return Some((f, i));
            }
            if regions[i].end > regions[f].end {
                furthest = Some(i);
            }
        } else {
            furthest = Some(i);
        }
    }
    None
}

/// The metadata of a dynamic or differencing VHD, before the BAT is read.
pub(crate) struct SparseMeta {
    pub header: DynamicHeader,
    /// Where the footer is (the file's length minus 512).
    pub footer_offset: u64,
    /// Locator index and its (validated) bytes.
    pub locators: Vec<(usize, Vec<u8>)>,
}

/// The footer (and, for sparse images, the header) of a VHD file.
pub(crate) struct Meta {
    pub footer: Footer,
    pub footer_raw: [u8; FOOTER_SIZE],
    pub file_len: u64,
    pub sparse: Option<SparseMeta>,
}

/// Reads and validates the footer, its copy and the dynamic header (with
/// parent locator data) of a VHD.
pub(crate) fn read_meta(s: &dyn Storage) -> Result<Meta, DiskError> {
    let len = file_len(s)?;
    let fsize = FOOTER_SIZE as u64;
    if len < fsize {
        return Err(DiskError::Truncated {
            what: Structure::Footer,
            needed: fsize,
            len,
        });
    }
    let mut raw = [0u8; FOOTER_SIZE];
    read_at(s, &mut raw, len - fsize, "footer")?;
    let footer = match Footer::parse(&raw, Structure::Footer) {
        Ok(f) => f,
        Err(e) => {
            let mut copy = [0u8; FOOTER_SIZE];
            read_at(s, &mut copy, 0, "footer copy")?;
            return Err(match Footer::parse(&copy, Structure::FooterCopy) {
                Ok(c) if c.disk_type != DiskType::Fixed => DiskError::FooterLost(Box::new(e)),
                _ => e,
            });
        }
    };
    let footer_offset = len - fsize;
    if footer.disk_type == DiskType::Fixed {
        if footer.current_size > footer_offset {
            return Err(DiskError::Truncated {
                what: Structure::Block,
                needed: footer.current_size + fsize,
                len,
            });
        }
        return Ok(Meta {
            footer,
            footer_raw: raw,
            file_len: len,
            sparse: None,
        });
    }
    // Dynamic and differencing: copy at 0, header, BAT, footer at the end.
    let min = fsize + HEADER_SIZE as u64 + fsize;
    if len < min {
        return Err(DiskError::Truncated {
            what: Structure::DynamicHeader,
            needed: min,
            len,
        });
    }
    let mut copy = [0u8; FOOTER_SIZE];
    read_at(s, &mut copy, 0, "footer copy")?;
    Footer::parse(&copy, Structure::FooterCopy)?;
    if copy != raw {
        return Err(DiskError::FooterMismatch);
    }
    let hoff = footer.data_offset;
    if hoff < fsize
        || hoff
            .checked_add(HEADER_SIZE as u64)
            .is_none_or(|end| end > footer_offset)
    {
        return Err(DiskError::PastEof {
            what: Structure::DynamicHeader,
            offset: hoff,
            len: HEADER_SIZE as u64,
            file_len: len,
        });
    }
    let mut hb = [0u8; HEADER_SIZE];
    read_at(s, &mut hb, hoff, "dynamic disk header")?;
    let header = DynamicHeader::parse(&hb)?;

    let needed = footer.current_size.div_ceil(u64::from(header.block_size));
    let entries = u64::from(header.max_table_entries);
    // One BAT sector of slack: some writers round the table up.
    if entries < needed || entries > needed.next_multiple_of(128) {
        return Err(DiskError::TableSizeInconsistent {
            entries: header.max_table_entries,
            needed,
            size: footer.current_size,
        });
    }
    let bat_len = entries * 4;
    if header.table_offset < fsize
        || header
            .table_offset
            .checked_add(bat_len)
            .is_none_or(|end| end > footer_offset)
    {
        return Err(DiskError::PastEof {
            what: Structure::Bat,
            offset: header.table_offset,
            len: bat_len,
            file_len: len,
        });
    }
    let mut locators = Vec::new();
    if footer.disk_type == DiskType::Differencing {
        for (i, l) in header.locators.iter().enumerate() {
            if l.code == PLATFORM_NONE {
                continue;
            }
            if l.data_length > MAX_LOCATOR_LEN {
                return Err(DiskError::malformed(
                    Structure::ParentLocator,
                    format!("locator {i} claims {} bytes", l.data_length),
                ));
            }
            if l.data_offset < fsize
                || l.data_offset
                    .checked_add(u64::from(l.data_length))
                    .is_none_or(|end| end > footer_offset)
            {
                return Err(DiskError::PastEof {
                    what: Structure::ParentLocator,
                    offset: l.data_offset,
                    len: u64::from(l.data_length),
                    file_len: len,
                });
            }
            let mut data = vec![0u8; l.data_length as usize];
            read_at(s, &mut data, l.data_offset, "parent locator")?;
            locators.push((i, data));
        }
    }
    Ok(Meta {
        footer,
        footer_raw: raw,
        file_len: len,
        sparse: Some(SparseMeta {
            header,
            footer_offset,
            locators,
        }),
    })
}

/// Reads `entries` big-endian BAT entries in bounded pieces.
pub(crate) fn read_bat(s: &dyn Storage, offset: u64, entries: u32) -> Result<Vec<u32>, DiskError> {
    let mut bat = Vec::with_capacity(entries as usize);
    let mut buf = vec![0u8; 64 << 10];
    let mut left = u64::from(entries) * 4;
    let mut at = offset;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        read_at(s, &mut buf[..n], at, "block allocation table")?;
        bat.extend(
            buf[..n]
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
        );
        left -= n as u64;
        at += n as u64;
    }
    Ok(bat)
}

/// The regions of a sparse image's metadata (not its blocks).
pub(crate) fn metadata_regions(footer: &Footer, m: &SparseMeta) -> Vec<Region> {
    let h = &m.header;
    let mut r = vec![
        Region {
            name: "the footer copy".into(),
            start: 0,
            end: FOOTER_SIZE as u64,
        },
        Region {
            name: "the dynamic disk header".into(),
            start: footer.data_offset,
            end: footer.data_offset + HEADER_SIZE as u64,
        },
        Region {
            name: "the block allocation table".into(),
            start: h.table_offset,
            end: h.table_offset + u64::from(h.max_table_entries) * 4,
        },
    ];
    if footer.disk_type == DiskType::Differencing {
        for (i, l) in h.locators.iter().enumerate() {
            if l.code != PLATFORM_NONE && l.data_length > 0 {
                r.push(Region {
                    name: format!("parent locator {i}"),
                    start: l.data_offset,
                    end: l.data_offset + u64::from(l.data_length),
                });
            }
        }
    }
    r
}

/// State of an open dynamic or differencing VHD.
pub(crate) struct Sparse {
    pub header: DynamicHeader,
    pub block_size: u64,
    pub bitmap_size: u64,
    /// Entries for every block of the disk (slack entries are not kept).
    pub bat: Vec<u32>,
    /// Where the footer is, and where the next block goes.
    pub end: u64,
    cache: HashMap<u32, Vec<u8>>,
    cache_bytes: usize,
    /// Bitmaps changed in memory whose block's BAT entry is durable: written
    /// only in the second phase of a flush, after the data they cover.
    dirty_bitmaps: BTreeSet<u32>,
    /// Blocks allocated since the last flush: their BAT entries are not on
    /// disk yet, so their bitmaps can be written at once.
    new_blocks: HashSet<u32>,
    /// 128-entry pieces of the BAT changed in memory.
    dirty_bat: BTreeSet<u64>,
    /// Skip the sync after moving the footer (building a new image that is
    /// thrown away if anything fails).
    pub bulk: bool,
}

impl Sparse {
    pub(crate) fn load(
        s: &dyn Storage,
        footer: &Footer,
        meta: SparseMeta,
    ) -> Result<Sparse, DiskError> {
        let header = meta.header.clone();
        let block_size = u64::from(header.block_size);
        let bitmap_size = header.bitmap_size();
        let needed = footer.current_size.div_ceil(block_size);
        let all = read_bat(s, header.table_offset, header.max_table_entries)?;
        // Every allocated block must lie between the metadata and the
        // footer and overlap nothing.
        let mut regions = metadata_regions(footer, &meta);
        for (i, &e) in all.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let start = u64::from(e) * SECTOR;
            let end = start + bitmap_size + block_size;
            if end > meta.footer_offset {
                return Err(DiskError::BlockPastEof {
                    block: i as u32,
                    offset: start,
                    end: meta.footer_offset,
                });
            }
            regions.push(Region {
                name: format!("block {i}"),
                start,
                end,
            });
        }
        if let Some((a, b)) = first_overlap(&mut regions) {
            return Err(DiskError::Overlap {
                a: regions[a].name.clone(),
                b: regions[b].name.clone(),
                offset: regions[b].start,
            });
        }
        let mut bat = all;
        bat.truncate(needed as usize);
        Ok(Sparse {
            header,
            block_size,
            bitmap_size,
            bat,
            end: meta.footer_offset,
            cache: HashMap::new(),
            cache_bytes: 0,
            dirty_bitmaps: BTreeSet::new(),
            new_blocks: HashSet::new(),
            dirty_bat: BTreeSet::new(),
            bulk: false,
        })
    }

    pub(crate) fn block_offset(&self, block: u32) -> Option<u64> {
        match self.bat.get(block as usize) {
            Some(&e) if e != UNALLOCATED => Some(u64::from(e) * SECTOR),
            _ => None,
        }
    }

    /// The sector bitmap of an allocated block (cached).
    pub(crate) fn bitmap(&mut self, s: &dyn Storage, block: u32) -> Result<&[u8], DiskError> {
        if !self.cache.contains_key(&block) {
            let off = self
                .block_offset(block)
                .ok_or_else(|| DiskError::malformed(Structure::Block, "bitmap of a free block"))?;
            let mut b = vec![0u8; self.bitmap_size as usize];
            read_at(s, &mut b, off, "sector bitmap")?;
            self.insert_cache(block, b);
        }
        Ok(self.cache.get(&block).map(Vec::as_slice).unwrap_or(&[]))
    }

    fn insert_cache(&mut self, block: u32, b: Vec<u8>) {
        if self.cache_bytes + b.len() > BITMAP_CACHE_BYTES {
            let dirty = &self.dirty_bitmaps;
            self.cache.retain(|k, _| dirty.contains(k));
            self.cache_bytes = self.cache.values().map(Vec::len).sum();
        }
        self.cache_bytes += b.len();
        self.cache.insert(block, b);
    }

    /// Moves the footer one block further and hands out the space it
    /// leaves. The new footer is written, and synced, before anything is
    /// written over the old one: at every instant the file ends with a
    /// valid footer. The BAT entry stays in memory until `flush`.
    fn allocate(
        &mut self,
        s: &dyn Storage,
        footer_raw: &[u8],
        block: u32,
    ) -> Result<u64, DiskError> {
        let start = self.end;
        let new_end = start + self.bitmap_size + self.block_size;
        let entry = u32::try_from(start / SECTOR)
            .ok()
            .filter(|&e| e != UNALLOCATED && start.is_multiple_of(SECTOR))
            .ok_or_else(|| {
                DiskError::Unsupported(format!(
                    "no room for block {block}: the file would pass the 2 TiB a BAT entry can address"
                ))
            })?;
        write_at(s, footer_raw, new_end, "footer")?;
        if !self.bulk {
            sync(s)?;
        }
        self.end = new_end;
        self.bat[block as usize] = entry;
        self.dirty_bat.insert(u64::from(block) / 128);
        self.new_blocks.insert(block);
        self.insert_cache(block, vec![0u8; self.bitmap_size as usize]);
        Ok(start)
    }

    /// Writes `data` at sector `first` of `block`, allocating the block.
    pub(crate) fn write_in_block(
        &mut self,
        s: &dyn Storage,
        footer_raw: &[u8],
        block: u32,
        first: u64,
        data: &[u8],
    ) -> Result<(), DiskError> {
        let off = match self.block_offset(block) {
            Some(off) => off,
            None => self.allocate(s, footer_raw, block)?,
        };
        write_at(
            s,
            data,
            off + self.bitmap_size + first * SECTOR,
            "data block",
        )?;
        let count = data.len() as u64 / SECTOR;
        self.bitmap(s, block)?;
        let bits = self.cache.get_mut(&block).expect("bitmap just cached");
        let mut changed = false;
        for sector in first..first + count {
            let (byte, mask) = ((sector / 8) as usize, 0x80u8 >> (sector % 8));
            if bits[byte] & mask == 0 {
                bits[byte] |= mask;
                changed = true;
            }
        }
        if changed {
            if self.new_blocks.contains(&block) {
                // Not referenced by a durable BAT entry yet: any order.
                let bits = bits.clone();
                write_at(s, &bits, off, "sector bitmap")?;
            } else {
                self.dirty_bitmaps.insert(block);
            }
        }
        Ok(())
    }

    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty_bat.is_empty() || !self.dirty_bitmaps.is_empty()
    }

    /// Second phase of a flush, after the data is durable: bitmaps of old
    /// blocks and the changed pieces of the BAT. The caller syncs after.
    pub(crate) fn write_metadata(&mut self, s: &dyn Storage) -> Result<(), DiskError> {
        for &block in &self.dirty_bitmaps {
            if let (Some(off), Some(bits)) = (self.block_offset(block), self.cache.get(&block)) {
                write_at(s, bits, off, "sector bitmap")?;
            }
        }
        let total = u64::from(self.header.max_table_entries);
        for &piece in &self.dirty_bat {
            let first = piece * 128;
            let last = (first + 128).min(self.bat.len() as u64).min(total);
            let buf: Vec<u8> = self.bat[first as usize..last as usize]
                .iter()
                .flat_map(|e| e.to_be_bytes())
                .collect();
            write_at(
                s,
                &buf,
                self.header.table_offset + first * 4,
                "block allocation table",
            )?;
        }
        Ok(())
    }

    pub(crate) fn mark_clean(&mut self) {
        self.dirty_bitmaps.clear();
        self.dirty_bat.clear();
        self.new_blocks.clear();
    }
}

/// The length of a locator region as written: whole sectors.
pub(crate) fn locator_space(len: usize) -> u64 {
    (len as u64).next_multiple_of(SECTOR).max(SECTOR)
}

/// The paths a differencing image's locators name, in the order to try
/// them, as decoded strings with their platform code.
pub(crate) fn locator_paths(
    header: &DynamicHeader,
    locs: &[(usize, Vec<u8>)],
) -> Vec<(u32, String)> {
    let order = [
        format::PLATFORM_W2RU,
        format::PLATFORM_W2KU,
        format::PLATFORM_WI2R,
        format::PLATFORM_WI2K,
        format::PLATFORM_MACX,
    ];
    let mut out = Vec::new();
    for code in order {
        for (i, data) in locs {
            if header.locators[*i].code == code
                && let Some(p) = format::decode_locator(code, data)
            {
                out.push((code, p));
            }
        }
    }
    out
}
