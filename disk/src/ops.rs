//! The maintenance operations: `convert`, `merge`, `compact`, and undo
//! disks. They run in the supervisor or the CLI (they open paths), on
//! images no VM is using. Long ones report progress as (done, total)
//! through a callback.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chain::resolve_chain;
use crate::create::{self, ParentLink};
use crate::error::DiskError;
use crate::format::{DiskType, PLATFORM_NONE, SECTOR};
use crate::image::{Disk, Layer, open, open_files_as};
use crate::vhd::read_at;

/// Progress of a long operation: (units done, units in all).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A progress callback that ignores progress.
pub fn no_progress(_: u64, _: u64) {}

/// The formats `convert` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Raw,
    Fixed,
    Dynamic,
}

/// Bytes copied at a time.
const CHUNK: usize = 2 << 20;

/// Removes `path` if `f` fails.
fn or_remove<T>(path: &Path, r: Result<T, DiskError>) -> Result<T, DiskError> {
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

fn set_bulk(disk: &mut Disk) {
    if let Layer::Vhd(v) = &mut disk.layers[0]
        && let Some(sp) = v.sparse.as_mut()
    {
        sp.bulk = true;
    }
}

/// Copies the disk at `src` (any format, with its parents) into a new
/// image at `dst` of format `to`. All-zero stretches are not written, so
/// raw and dynamic results are sparse. A VHD's size is rounded up to what
/// its geometry states (the extra sectors read as zero). Returns the new
/// image's size.
pub fn convert(src: &Path, dst: &Path, to: Target, progress: Progress) -> Result<u64, DiskError> {
    let mut from = open(src, false)?;
    let size = from.size();
    let made = match to {
        Target::Raw => create::create_raw(dst, size)?,
        Target::Fixed => create::create_fixed(dst, size)?,
        Target::Dynamic => create::create_dynamic(dst, size)?,
    };
    or_remove(dst, copy_into(&mut from, dst, progress)).map(|()| made)
}

fn copy_into(from: &mut Disk, dst: &Path, progress: Progress) -> Result<(), DiskError> {
    let size = from.size();
    let mut to = open(dst, true)?;
    set_bulk(&mut to);
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        let chunk = &mut buf[..n];
        from.read_at(at, chunk)?;
        // Write only the sectors that are not zero, in runs.
        let mut s = 0;
        while s < n {
            if chunk[s..s + 512].iter().all(|&b| b == 0) {
                s += 512;
                continue;
            }
            let mut e = s + 512;
            while e < n && chunk[e..e + 512].iter().any(|&b| b != 0) {
                e += 512;
            }
            to.write_at(at + s as u64, &chunk[s..e])?;
            s = e;
        }
        at += n as u64;
        progress(at, size);
    }
    to.close()?;
    create::sync_dir(dst)
}

/// The runs of sectors (start, end, in sectors within the block) a sparse
/// layer's block holds itself.
fn own_runs(bits: &[u8], sectors: u64) -> Vec<(u64, u64)> {
    let bit = |s: u64| bits[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
    let mut runs = Vec::new();
    let mut s = 0;
    while s < sectors {
        if !bit(s) {
            s += 1;
            continue;
        }
        let mut e = s + 1;
        while e < sectors && bit(e) {
            e += 1;
        }
        runs.push((s, e));
        s = e;
    }
    runs
}

/// Calls `each(virtual offset, data)` for every run of sectors the leaf of
/// `disk` (a sparse VHD) holds itself, block by block.
fn for_each_own_run(
    disk: &mut Disk,
    progress: Progress,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    let size = disk.size();
    let Layer::Vhd(v) = &mut disk.layers[0] else {
        return Err(DiskError::Unsupported("not a VHD".into()));
    };
    let storage = v.storage.as_ref();
    let sp = v
        .sparse
        .as_mut()
        .ok_or_else(|| DiskError::Unsupported("not a dynamic or differencing VHD".into()))?;
    let blocks = sp.bat.len() as u32;
    let mut buf = Vec::new();
    for block in 0..blocks {
        progress(u64::from(block), u64::from(blocks));
        let Some(off) = sp.block_offset(block) else {
            continue;
        };
        let base = u64::from(block) * sp.block_size;
        let sectors = (sp.block_size / SECTOR).min((size - base) / SECTOR);
        let bits = sp.bitmap(storage, block)?.to_vec();
        for (s, e) in own_runs(&bits, sectors) {
            buf.resize(((e - s) * SECTOR) as usize, 0);
            read_at(
                storage,
                &mut buf,
                off + sp.bitmap_size + s * SECTOR,
                "data block",
            )?;
            each(base + s * SECTOR, &buf)?;
        }
    }
    progress(u64::from(blocks), u64::from(blocks));
    Ok(())
}

/// Merges the differencing image `child` into its parent: every sector the
/// child holds is written into the parent, which is then flushed; the
/// child is removed unless `keep_child`. Interrupted, it can be run again
/// (the child is untouched until the parent is flushed). Other children
/// of the same parent no longer see the data they were made over.
pub fn merge(child: &Path, keep_child: bool, progress: Progress) -> Result<(), DiskError> {
    let chain = resolve_chain(child)?;
    if chain.len() < 2 {
        return Err(DiskError::Unsupported(format!(
            "{} is not a differencing image",
            child.display()
        )));
    }
    let mut parent = open(&chain[1], true)?;
    // The child alone with its parent chain, read-only.
    let files = chain
        .iter()
        .map(|p| std::fs::File::open(p).map_err(|e| crate::chain::open_error(p, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut from = open_files_as(files, crate::image::FormatHint::Vhd, false)?;
    for_each_own_run(&mut from, progress, |offset, data| {
        parent.write_at(offset, data)
    })?;
    parent.close()?;
    if !keep_child {
        drop(from);
        std::fs::remove_file(child)
            .map_err(DiskError::io(format!("removing {}", child.display())))?;
        create::sync_dir(child)?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct CompactReport {
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub blocks_before: u64,
    pub blocks_after: u64,
}

/// Rewrites a dynamic or differencing VHD without its orphan space and
/// (dynamic only) without blocks holding only zeros, keeping its id,
/// parent link and every sector's data and bitmap state. The new image is
/// built in a temporary file next to it, synced, and renamed over it.
pub fn compact(path: &Path, progress: Progress) -> Result<CompactReport, DiskError> {
    let chain = resolve_chain(path)?;
    let files = chain
        .iter()
        .map(|p| std::fs::File::open(p).map_err(|e| crate::chain::open_error(p, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut old = open_files_as(files, crate::chain::hint_for(path), false)?;
    let (footer, block_size, link, bytes_before, blocks_before) = {
        let Layer::Vhd(v) = &old.layers[0] else {
            return Err(DiskError::Unsupported(
                "a raw image has nothing to compact".into(),
            ));
        };
        let Some(sp) = &v.sparse else {
            return Err(DiskError::Unsupported(
                "a fixed VHD has nothing to compact".into(),
            ));
        };
        let link = (v.footer.disk_type == DiskType::Differencing)
            .then(|| parent_link_of(v.storage.as_ref(), &sp.header))
            .transpose()?;
        let blocks = sp
            .bat
            .iter()
            .filter(|&&e| e != crate::format::UNALLOCATED)
            .count();
        (
            v.footer.clone(),
            sp.header.block_size,
            link,
            v.file_len,
            blocks as u64,
        )
    };
    let differencing = footer.disk_type == DiskType::Differencing;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.compact-{}", std::process::id()));
    let result = (|| {
        let f = create::new_file(&tmp)?;
        if let Ok(md) = std::fs::metadata(path) {
            let _ = f.set_permissions(md.permissions());
        }
        create::write_sparse(&f, &footer, block_size, link.as_ref())?;
        drop(f);
        // The new leaf alone: writes must not look at parents.
        let mut new = open_leaf_only(&tmp)?;
        set_bulk(&mut new);
        for_each_own_run(&mut old, progress, |offset, data| {
            if !differencing && data.iter().all(|&b| b == 0) {
                return Ok(());
            }
            new.write_at(offset, data)
        })?;
        new.close()?;
        let len = std::fs::metadata(&tmp)
            .map_err(DiskError::io(format!("{}", tmp.display())))?
            .len();
        std::fs::rename(&tmp, path).map_err(DiskError::io(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))?;
        create::sync_dir(path)?;
        Ok(len)
    })();
    let bytes_after = or_remove(&tmp, result)?;
    let blocks_after = open_leaf_only(path)?
        .layers()
        .first()
        .and_then(|l| l.allocated_blocks)
        .unwrap_or(0);
    Ok(CompactReport {
        bytes_before,
        bytes_after,
        blocks_before,
        blocks_after,
    })
}

/// Opens a differencing image as if it had no parent (only its own
/// sectors are read; for tools that rewrite it).
fn open_leaf_only(path: &Path) -> Result<Disk, DiskError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| crate::chain::open_error(path, e))?;
    let layer = crate::image::open_layer(Box::new(f), crate::image::FormatHint::Vhd)?;
    Ok(Disk {
        layers: vec![layer],
        writable: true,
    })
}

/// A differencing image's parent link, copied as it is (locator bytes
/// included).
fn parent_link_of(
    s: &dyn crate::storage::Storage,
    h: &crate::format::DynamicHeader,
) -> Result<ParentLink, DiskError> {
    let mut locators = Vec::new();
    for l in h.locators.iter().filter(|l| l.code != PLATFORM_NONE) {
        let mut data = vec![0u8; l.data_length as usize];
        read_at(s, &mut data, l.data_offset, "parent locator")?;
        locators.push((l.code, data));
    }
    Ok(ParentLink {
        uuid: h.parent_uuid,
        timestamp: h.parent_timestamp,
        name: h.parent_name.clone(),
        locators,
    })
}

/// Undo disks, as in Virtual Server: a throwaway differencing child over a
/// VM's disk takes every write of a session; at power-off it is committed
/// (merged into the disk) or discarded (deleted).
pub mod undo {
    use super::*;

    /// Where the undo disk of `parent` goes: `<stem>.vud` in `dir`, or
    /// next to the parent.
    pub fn path_for(parent: &Path, dir: Option<&Path>) -> PathBuf {
        let stem = parent
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        let dir = dir
            .map(Path::to_path_buf)
            .or_else(|| parent.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        dir.join(format!("{stem}.vud"))
    }

    /// Creates the undo disk of `parent` (see `path_for`). An undo disk
    /// left from an earlier session is `DiskError::Exists`: commit or
    /// discard it first.
    pub fn create(parent: &Path, dir: Option<&Path>) -> Result<PathBuf, DiskError> {
        let path = path_for(parent, dir);
        create::create_differencing(&path, parent)?;
        Ok(path)
    }

    /// Merges the undo disk into its parent and deletes it.
    pub fn commit(undo: &Path, progress: Progress) -> Result<(), DiskError> {
        merge(undo, false, progress)
    }

    /// Deletes the undo disk (after checking it is one: a differencing VHD).
    pub fn discard(undo: &Path) -> Result<(), DiskError> {
        let f = std::fs::File::open(undo).map_err(|e| crate::chain::open_error(undo, e))?;
        let meta = crate::vhd::read_meta(&f)?;
        if meta.footer.disk_type != DiskType::Differencing {
            return Err(DiskError::Unsupported(format!(
                "{} is not a differencing image: not discarding it",
                undo.display()
            )));
        }
        std::fs::remove_file(undo)
            .map_err(DiskError::io(format!("removing {}", undo.display())))?;
        create::sync_dir(undo)
    }
}
