//! An open disk: a chain of layers (the leaf first, then its parents), read
//! through sector bitmaps, written only at the leaf.
//!
//! # Write ordering (crash consistency)
//!
//! Fixed VHDs and raw images are written in place; `flush` is `fdatasync`.
//!
//! In a dynamic or differencing VHD a write to a block with no space yet
//! allocates one at the end of the file, where the footer is:
//!
//! 1. the footer is written one block further on (the new end of the file)
//!    and synced, so the file always ends with a valid footer (the old one
//!    is now unreferenced space, still a valid footer);
//! 2. the data and the block's sector bitmap are written into the space;
//! 3. the BAT entry is changed in memory only.
//!
//! Bitmap bits of blocks whose BAT entry is already on disk are also only
//! changed in memory. `flush` then makes everything durable in two phases:
//!
//! 1. `fdatasync`: every data sector and every new block's bitmap is on disk;
//! 2. the changed bitmaps and BAT pieces are written, then `fdatasync`.
//!
//! So a BAT entry or a bitmap bit never reaches the disk before the data it
//! points to. A crash at any instant leaves a valid image: the footer at the
//! end and its copy at 0 are identical (they never change after creation),
//! every durable BAT entry points at a block whose data and bitmap are
//! durable, and every write acknowledged before the last completed `flush`
//! is there. A crash between a block's allocation and the next completed
//! flush leaves unreferenced space before the footer: `check` reports it as
//! a warning (leaked space), `compact` reclaims it, and new blocks go after
//! it. Data written without a later flush may or may not be there, as on a
//! disk with a volatile write cache: call `flush` when the guest flushes,
//! and now and then (`needs_flush`).

use std::fs::File;

use serde::Serialize;

use crate::error::DiskError;
use crate::format::{DiskType, FOOTER_SIZE, Footer, SECTOR, Uuid};
use crate::storage::Storage;
use crate::vhd::{self, Probe, Sparse, read_at, sync, write_at};

/// The longest parent chain followed.
pub const MAX_CHAIN: usize = 64;

/// What kind of image a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Raw,
    VhdFixed,
    VhdDynamic,
    VhdDifferencing,
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::VhdFixed => "vhd fixed",
            ImageFormat::VhdDynamic => "vhd dynamic",
            ImageFormat::VhdDifferencing => "vhd differencing",
        })
    }
}

/// How to read a file whose format is not known for certain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatHint {
    /// A VHD if it has a VHD footer (at its end, or its copy at the
    /// start), raw otherwise.
    Probe,
    Raw,
    /// A VHD: a missing or damaged footer is an error, not a raw image.
    Vhd,
}

pub(crate) struct Vhd {
    pub storage: Box<dyn Storage>,
    pub footer: Footer,
    pub footer_raw: [u8; FOOTER_SIZE],
    pub file_len: u64,
    pub sparse: Option<Sparse>,
}

pub(crate) enum Layer {
    Raw {
        storage: Box<dyn Storage>,
        size: u64,
    },
    Vhd(Box<Vhd>),
}

impl Layer {
    pub(crate) fn size(&self) -> u64 {
        match self {
            Layer::Raw { size, .. } => *size,
            Layer::Vhd(v) => v.footer.current_size,
        }
    }

    pub(crate) fn format(&self) -> ImageFormat {
        match self {
            Layer::Raw { .. } => ImageFormat::Raw,
            Layer::Vhd(v) => match v.footer.disk_type {
                DiskType::Fixed => ImageFormat::VhdFixed,
                DiskType::Dynamic => ImageFormat::VhdDynamic,
                DiskType::Differencing => ImageFormat::VhdDifferencing,
            },
        }
    }
}

/// Opens one file as a layer.
pub(crate) fn open_layer(storage: Box<dyn Storage>, hint: FormatHint) -> Result<Layer, DiskError> {
    let kind = match hint {
        FormatHint::Raw => Probe::Raw,
        FormatHint::Vhd => Probe::Vhd,
        FormatHint::Probe => vhd::probe(storage.as_ref())?,
    };
    if kind == Probe::Raw {
        let size = vhd::file_len(storage.as_ref())?;
        if size == 0 || size % SECTOR != 0 {
            return Err(DiskError::BadSize(size));
        }
        return Ok(Layer::Raw { storage, size });
    }
    let meta = vhd::read_meta(storage.as_ref())?;
    let sparse = match meta.sparse {
        Some(m) => Some(Sparse::load(storage.as_ref(), &meta.footer, m)?),
        None => None,
    };
    Ok(Layer::Vhd(Box::new(Vhd {
        storage,
        footer: meta.footer,
        footer_raw: meta.footer_raw,
        file_len: meta.file_len,
        sparse,
    })))
}

/// One layer, as `info` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    pub format: ImageFormat,
    /// Virtual size in bytes.
    pub size: u64,
    pub file_len: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_uuid: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_blocks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geometry: Option<crate::format::Geometry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u32>,
}

/// An open disk image (with its parents). `Send`: a worker may hand it to
/// an I/O thread.
pub struct Disk {
    pub(crate) layers: Vec<Layer>,
    pub(crate) writable: bool,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("format", &self.format())
            .field("size", &self.size())
            .field("layers", &self.layers.len())
            .field("writable", &self.writable)
            .finish()
    }
}

/// Opens a chain of already-open files, leaf first: what a sandboxed worker
/// does with the descriptors its supervisor passed it. Only the leaf is
/// written (when `writable`); every parent must be the VHD whose id the
/// child names.
pub fn open_files(chain: Vec<File>, writable: bool) -> Result<Disk, DiskError> {
    open_files_as(chain, FormatHint::Probe, writable)
}

/// `open_files` with the leaf's format given.
pub fn open_files_as(
    chain: Vec<File>,
    leaf: FormatHint,
    writable: bool,
) -> Result<Disk, DiskError> {
    open_storage(
        chain
            .into_iter()
            .map(|f| Box::new(f) as Box<dyn Storage>)
            .collect(),
        leaf,
        writable,
    )
}

/// `open_files` over any storage (tests, fuzzing, fault injection).
pub fn open_storage(
    chain: Vec<Box<dyn Storage>>,
    leaf: FormatHint,
    writable: bool,
) -> Result<Disk, DiskError> {
    if chain.is_empty() {
        return Err(DiskError::Unsupported("no image given".into()));
    }
    if chain.len() > MAX_CHAIN {
        return Err(DiskError::ChainTooDeep(MAX_CHAIN));
    }
    let mut layers = Vec::with_capacity(chain.len());
    for (i, storage) in chain.into_iter().enumerate() {
        let hint = if i == 0 { leaf } else { FormatHint::Vhd };
        let layer = open_layer(storage, hint)?;
        if i > 0 && matches!(layer, Layer::Raw { .. }) {
            return Err(DiskError::ParentNotVhd);
        }
        layers.push(layer);
    }
    for i in 0..layers.len() {
        let has_parent = i + 1 < layers.len();
        match &layers[i] {
            Layer::Vhd(v) if v.footer.disk_type == DiskType::Differencing => {
                let Some(Layer::Vhd(parent)) = layers.get(i + 1) else {
                    return Err(DiskError::MissingParent);
                };
                let expected = v.sparse.as_ref().map(|s| s.header.parent_uuid);
                if expected != Some(parent.footer.uuid) {
                    return Err(DiskError::ParentUuidMismatch {
                        expected: expected.unwrap_or_default(),
                        found: parent.footer.uuid,
                    });
                }
                if parent.footer.current_size != v.footer.current_size {
                    return Err(DiskError::ParentSizeMismatch {
                        parent: parent.footer.current_size,
                        child: v.footer.current_size,
                    });
                }
            }
            layer if has_parent => {
                return Err(DiskError::UnexpectedParent(match layer.format() {
                    ImageFormat::Raw => "raw",
                    ImageFormat::VhdFixed => "fixed",
                    _ => "dynamic",
                }));
            }
            _ => {}
        }
    }
    Ok(Disk { layers, writable })
}

/// Opens an image by path, with its parents (found by `resolve_chain`):
/// for the CLI and the supervisor, not for a sandboxed worker. Files named
/// `.vhd`, `.avhd` or `.vud` must be VHDs; others are probed.
pub fn open(path: &std::path::Path, writable: bool) -> Result<Disk, DiskError> {
    let chain = crate::chain::resolve_chain(path)?;
    let mut files = Vec::with_capacity(chain.len());
    for (i, p) in chain.iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(writable && i == 0)
            .open(p)
            .map_err(|e| crate::chain::open_error(p, e))?;
        files.push(f);
    }
    open_files_as(files, crate::chain::hint_for(path), writable)
}

fn check_range(offset: u64, len: usize, size: u64) -> Result<(), DiskError> {
    if !offset.is_multiple_of(SECTOR) || !(len as u64).is_multiple_of(SECTOR) {
        return Err(DiskError::Unaligned { offset, len });
    }
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(DiskError::OutOfRange { offset, len, size });
    }
    Ok(())
}

/// Reads `buf` at `offset` of the disk made of `layers` (the first is the
/// top); sectors a sparse layer does not hold come from the next layer, or
/// are zero.
pub(crate) fn read_layers(
    layers: &mut [Layer],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), DiskError> {
    let Some((top, rest)) = layers.split_first_mut() else {
        buf.fill(0);
        return Ok(());
    };
    match top {
        Layer::Raw { storage, .. } => read_at(storage.as_ref(), buf, offset, "data"),
        Layer::Vhd(v) => {
            let storage = v.storage.as_ref();
            let Some(sp) = v.sparse.as_mut() else {
                return read_at(storage, buf, offset, "data");
            };
            let mut done = 0usize;
            while done < buf.len() {
                let pos = offset + done as u64;
                let block = (pos / sp.block_size) as u32;
                let in_block = pos % sp.block_size;
                let n = ((sp.block_size - in_block) as usize).min(buf.len() - done);
                let chunk = &mut buf[done..done + n];
                match sp.block_offset(block) {
                    None => read_layers(rest, pos, chunk)?,
                    Some(boff) => {
                        let data_off = boff + sp.bitmap_size;
                        let first = in_block / SECTOR;
                        let count = n as u64 / SECTOR;
                        let bits = sp.bitmap(storage, block)?;
                        let bit = |s: u64| bits[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
                        // Runs of sectors that are all here or all not.
                        let runs: Vec<(u64, u64, bool)> = {
                            let mut runs = Vec::new();
                            let mut s = first;
                            while s < first + count {
                                let here = bit(s);
                                let mut e = s + 1;
                                while e < first + count && bit(e) == here {
                                    e += 1;
                                }
                                runs.push((s, e, here));
                                s = e;
                            }
                            runs
                        };
                        for (s, e, here) in runs {
                            let a = ((s - first) * SECTOR) as usize;
                            let b = ((e - first) * SECTOR) as usize;
                            if here {
                                read_at(
                                    storage,
                                    &mut chunk[a..b],
                                    data_off + s * SECTOR,
                                    "data block",
                                )?;
                            } else {
                                read_layers(
                                    rest,
                                    block as u64 * sp.block_size + s * SECTOR,
                                    &mut chunk[a..b],
                                )?;
                            }
                        }
                    }
                }
                done += n;
            }
            Ok(())
        }
    }
}

impl Disk {
    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.layers[0].size()
    }

    /// The leaf's format.
    pub fn format(&self) -> ImageFormat {
        self.layers[0].format()
    }

    pub fn read_only(&self) -> bool {
        !self.writable
    }

    /// How many files the disk is made of (1 + its parents).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The leaf's unique id (VHD only).
    pub fn uuid(&self) -> Option<Uuid> {
        match &self.layers[0] {
            Layer::Vhd(v) => Some(v.footer.uuid),
            Layer::Raw { .. } => None,
        }
    }

    /// Reads whole sectors at `offset` (both multiples of 512, inside the
    /// disk).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(offset, buf.len(), self.size())?;
        read_layers(&mut self.layers, offset, buf)
    }

    /// Writes whole sectors at `offset` into the leaf. Durable after the
    /// next `flush`.
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        if !self.writable {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, buf.len(), self.size())?;
        match &mut self.layers[0] {
            Layer::Raw { storage, .. } => write_at(storage.as_ref(), buf, offset, "data"),
            Layer::Vhd(v) => {
                let storage = v.storage.as_ref();
                let Some(sp) = v.sparse.as_mut() else {
                    return write_at(storage, buf, offset, "data");
                };
                let mut done = 0usize;
                while done < buf.len() {
                    let pos = offset + done as u64;
                    let block = (pos / sp.block_size) as u32;
                    let in_block = pos % sp.block_size;
                    let n = ((sp.block_size - in_block) as usize).min(buf.len() - done);
                    sp.write_in_block(
                        storage,
                        &v.footer_raw,
                        block,
                        in_block / SECTOR,
                        &buf[done..done + n],
                    )?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Makes every write so far durable, in the order the module
    /// documentation describes.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        if !self.writable {
            return Ok(());
        }
        match &mut self.layers[0] {
            Layer::Raw { storage, .. } => sync(storage.as_ref()),
            Layer::Vhd(v) => {
                let storage = v.storage.as_ref();
                sync(storage)?;
                if let Some(sp) = v.sparse.as_mut()
                    && sp.is_dirty()
                {
                    sp.write_metadata(storage)?;
                    sync(storage)?;
                }
                if let Some(sp) = v.sparse.as_mut() {
                    sp.mark_clean();
                }
                Ok(())
            }
        }
    }

    /// True when block allocations or bitmap changes wait for a `flush`
    /// (a worker flushes at least every few seconds while this holds).
    pub fn needs_flush(&self) -> bool {
        match &self.layers[0] {
            Layer::Vhd(v) => v.sparse.as_ref().is_some_and(|s| s.is_dirty()),
            Layer::Raw { .. } => false,
        }
    }

    /// Flushes and closes, reporting a failed flush (dropping a `Disk`
    /// flushes too, but cannot report).
    pub fn close(mut self) -> Result<(), DiskError> {
        let r = self.flush();
        self.writable = false;
        r
    }

    /// Every layer, leaf first.
    pub fn layers(&self) -> Vec<LayerInfo> {
        self.layers.iter().map(layer_info).collect()
    }

    /// True when `offset..offset+len` of the leaf holds no data of its own
    /// (sparse images only; other formats always hold everything).
    pub fn leaf_is_unallocated(&self, offset: u64, len: u64) -> bool {
        let Layer::Vhd(v) = &self.layers[0] else {
            return false;
        };
        let Some(sp) = &v.sparse else { return false };
        let first = offset / sp.block_size;
        let last = (offset + len).div_ceil(sp.block_size);
        (first..last).all(|b| sp.block_offset(b as u32).is_none())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.writable {
            let _ = self.flush();
        }
    }
}

pub(crate) fn layer_info(l: &Layer) -> LayerInfo {
    let mut info = LayerInfo {
        format: l.format(),
        size: l.size(),
        file_len: 0,
        uuid: None,
        parent_uuid: None,
        parent_name: None,
        block_size: None,
        blocks: None,
        allocated_blocks: None,
        geometry: None,
        creator: None,
        timestamp: None,
    };
    match l {
        Layer::Raw { size, .. } => info.file_len = *size,
        Layer::Vhd(v) => {
            info.file_len = v.file_len;
            info.uuid = Some(v.footer.uuid);
            info.geometry = Some(v.footer.geometry);
            info.timestamp = Some(v.footer.timestamp);
            info.creator = Some(format!(
                "{} {}.{} ({})",
                String::from_utf8_lossy(&v.footer.creator_app).trim_end_matches(['\0', ' ']),
                v.footer.creator_version >> 16,
                v.footer.creator_version & 0xFFFF,
                String::from_utf8_lossy(&v.footer.creator_os).trim_end_matches(['\0', ' ']),
            ));
            if let Some(sp) = &v.sparse {
                info.block_size = Some(sp.header.block_size);
                info.blocks = Some(sp.bat.len() as u64);
                info.allocated_blocks = Some(
                    sp.bat
                        .iter()
                        .filter(|&&e| e != crate::format::UNALLOCATED)
                        .count() as u64,
                );
                if v.footer.disk_type == DiskType::Differencing {
                    info.parent_uuid = Some(sp.header.parent_uuid);
                    info.parent_name = Some(sp.header.parent_name.clone());
                }
            }
        }
    }
    info
}
