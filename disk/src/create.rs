//! Creating images. Never overwrites: an existing path is
//! `DiskError::Exists`. A file that fails half-way is removed.
//!
//! VHD sizes are rounded up to the next size the CHS geometry states
//! exactly (`format::exact_size`), as Virtual PC and qemu-img do: readers
//! that take the size from the geometry (Virtual PC, qemu's `vpc` driver for
//! every creator but Hyper-V's and a few others) then see the same size as
//! readers that take it from the footer. Each `create_*` returns the size
//! it made.
//!
//! Layout of a dynamic or differencing image we write: footer copy (0),
//! dynamic header (512), BAT (1536, padded to a sector, all free), the
//! parent locators' data (differencing: `W2ru` relative, then `W2ku`
//! absolute, each padded to a sector), blocks as they are allocated, and
//! the footer.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::DiskError;
use crate::format::{
    self, DEFAULT_BLOCK_SIZE, DiskType, DynamicHeader, FOOTER_SIZE, Footer, HEADER_SIZE, Locator,
    MAX_BLOCK_SIZE, MAX_DISK_SIZE, MIN_BLOCK_SIZE, SECTOR, Uuid, VHD_EPOCH,
};
use crate::image::{Layer, MAX_CHAIN, open};
use crate::storage::Storage;
use crate::vhd::{locator_space, sync, write_at};

/// What a new sparse image links to.
pub(crate) struct ParentLink {
    pub uuid: Uuid,
    pub timestamp: u32,
    pub name: String,
    /// Platform code and data of each locator.
    pub locators: Vec<(u32, Vec<u8>)>,
}

pub(crate) fn new_file(path: &Path) -> Result<File, DiskError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => DiskError::Exists(path.to_path_buf()),
            _ => DiskError::Io {
                context: format!("creating {}", path.display()),
                source: e,
            },
        })
}

/// Syncs the directory holding `path`, so a new name survives a crash.
pub(crate) fn sync_dir(path: &Path) -> Result<(), DiskError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(DiskError::io(format!("syncing {}", dir.display())))
}

/// Creates `path`, fills it with `build`, syncs it; removes it on failure.
fn create_with(
    path: &Path,
    build: impl FnOnce(&File) -> Result<u64, DiskError>,
) -> Result<u64, DiskError> {
    let f = new_file(path)?;
    let r = build(&f).and_then(|size| {
        f.sync_all()
            .map_err(DiskError::io(format!("syncing {}", path.display())))?;
        sync_dir(path)?;
        Ok(size)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

fn vhd_size(size: u64) -> Result<u64, DiskError> {
    if size == 0 {
        return Err(DiskError::BadSize(size));
    }
    if size > MAX_DISK_SIZE {
        return Err(DiskError::SizeTooLarge(size));
    }
    let exact = format::exact_size(size);
    if exact > MAX_DISK_SIZE {
        return Err(DiskError::SizeTooLarge(exact));
    }
    Ok(exact)
}

/// A raw image of `size` bytes (a non-zero multiple of 512), sparse.
pub fn create_raw(path: &Path, size: u64) -> Result<u64, DiskError> {
    if size == 0 || !size.is_multiple_of(SECTOR) {
        return Err(DiskError::BadSize(size));
    }
    create_with(path, |f| {
        f.set_len(size)
            .map_err(DiskError::io(format!("sizing {}", path.display())))?;
        Ok(size)
    })
}

/// A fixed VHD: the data (sparse, reads as zeros) and the footer.
pub fn create_fixed(path: &Path, size: u64) -> Result<u64, DiskError> {
    let size = vhd_size(size)?;
    create_with(path, |f| {
        write_fixed(f, size, Uuid::random()?)?;
        Ok(size)
    })
}

pub(crate) fn write_fixed(s: &dyn Storage, size: u64, uuid: Uuid) -> Result<(), DiskError> {
    let footer = Footer::new(DiskType::Fixed, size, uuid);
    write_at(s, &footer.to_bytes(), size, "footer")
}

/// A dynamic VHD with 2 MiB blocks.
pub fn create_dynamic(path: &Path, size: u64) -> Result<u64, DiskError> {
    create_dynamic_with_block_size(path, size, DEFAULT_BLOCK_SIZE)
}

/// A dynamic VHD with blocks of `block_size` bytes (a power of two from
/// 512 bytes to 256 MiB).
pub fn create_dynamic_with_block_size(
    path: &Path,
    size: u64,
    block_size: u32,
) -> Result<u64, DiskError> {
    let size = vhd_size(size)?;
    check_block_size(block_size)?;
    create_with(path, |f| {
        let footer = Footer::new(DiskType::Dynamic, size, Uuid::random()?);
        write_sparse(f, &footer, block_size, None)?;
        Ok(size)
    })
}

fn check_block_size(block_size: u32) -> Result<(), DiskError> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(DiskError::BadBlockSize(block_size));
    }
    Ok(())
}

/// Writes an empty sparse image: footer copy, header, free BAT, locator
/// data, footer. Returns the footer's offset.
pub(crate) fn write_sparse(
    s: &dyn Storage,
    footer: &Footer,
    block_size: u32,
    parent: Option<&ParentLink>,
) -> Result<u64, DiskError> {
    let entries = footer.current_size.div_ceil(u64::from(block_size));
    let entries = u32::try_from(entries)
        .map_err(|_| DiskError::Unsupported("too many blocks for a BAT".into()))?;
    let table_offset = (FOOTER_SIZE + HEADER_SIZE) as u64;
    let bat_bytes = (u64::from(entries) * 4).next_multiple_of(SECTOR);
    let mut header = DynamicHeader::new(table_offset, entries, block_size);
    let mut at = table_offset + bat_bytes;
    let mut locator_data = Vec::new();
    if let Some(p) = parent {
        header.parent_uuid = p.uuid;
        header.parent_timestamp = p.timestamp;
        header.parent_name = p.name.clone();
        for (slot, (code, data)) in p.locators.iter().take(8).enumerate() {
            let space = locator_space(data.len());
            header.locators[slot] = Locator {
                code: *code,
                data_space: space as u32,
                data_length: data.len() as u32,
                data_offset: at,
            };
            locator_data.push((at, data));
            at += space;
        }
    }
    let fb = footer.to_bytes();
    write_at(s, &fb, 0, "footer copy")?;
    write_at(
        s,
        &header.to_bytes(),
        FOOTER_SIZE as u64,
        "dynamic disk header",
    )?;
    let free = vec![0xFFu8; 64 << 10];
    let mut off = 0;
    while off < bat_bytes {
        let n = (bat_bytes - off).min(free.len() as u64) as usize;
        write_at(s, &free[..n], table_offset + off, "block allocation table")?;
        off += n as u64;
    }
    for (offset, data) in locator_data {
        let mut padded = data.clone();
        padded.resize(locator_space(data.len()) as usize, 0);
        write_at(s, &padded, offset, "parent locator")?;
    }
    write_at(s, &fb, at, "footer")?;
    sync(s)?;
    Ok(at)
}

/// A differencing VHD whose parent is the VHD at `parent` (itself any VHD,
/// differencing too). The child records the parent's id, file name,
/// modification time, and two locators: relative to the child's directory
/// (`W2ru`) and absolute (`W2ku`).
pub fn create_differencing(path: &Path, parent: &Path) -> Result<u64, DiskError> {
    let (size, geometry, block_size, uuid) = {
        let disk = open(parent, false)?;
        if disk.depth() >= MAX_CHAIN {
            return Err(DiskError::ChainTooDeep(MAX_CHAIN));
        }
        let Layer::Vhd(v) = &disk.layers[0] else {
            return Err(DiskError::ParentNotVhd);
        };
        (
            v.footer.current_size,
            v.footer.geometry,
            v.sparse
                .as_ref()
                .map_or(DEFAULT_BLOCK_SIZE, |s| s.header.block_size),
            v.footer.uuid,
        )
    };
    let mut link = parent_link(path, parent)?;
    link.uuid = uuid;
    create_with(path, |f| {
        let mut footer = Footer::new(DiskType::Differencing, size, Uuid::random()?);
        footer.geometry = geometry;
        write_sparse(f, &footer, block_size, Some(&link))?;
        Ok(size)
    })
}

/// The parent's name, modification time and locators as seen from the
/// child at `child` (its directory must exist).
pub(crate) fn parent_link(child: &Path, parent: &Path) -> Result<ParentLink, DiskError> {
    let parent_abs =
        std::fs::canonicalize(parent).map_err(|e| crate::chain::open_error(parent, e))?;
    let dir = child
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_abs: PathBuf =
        std::fs::canonicalize(dir).map_err(|e| crate::chain::open_error(dir, e))?;
    let mtime = std::fs::metadata(&parent_abs)
        .map(|m| m.mtime())
        .unwrap_or(0);
    let timestamp = u32::try_from((mtime.max(0) as u64).saturating_sub(VHD_EPOCH)).unwrap_or(0);
    let name = parent_abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rel = crate::chain::relative_locator(&dir_abs, &parent_abs);
    let abs = parent_abs.to_string_lossy().into_owned();
    Ok(ParentLink {
        uuid: Uuid::default(),
        timestamp,
        name,
        locators: vec![
            (format::PLATFORM_W2RU, format::encode_utf16le(&rel)),
            (format::PLATFORM_W2KU, format::encode_utf16le(&abs)),
        ],
    })
}
