//! Finding a differencing image's parents by path: for the supervisor (and
//! the CLI), which then opens the files and hands them to a worker.
//!
//! A child names its parent by id (checked) and by parent locators (hints):
//! the relative Windows path (`W2ru`, resolved against the child's
//! directory) first, then the absolute one (`W2ku`), the deprecated ASCII
//! codes and Mac OS X URLs, and finally the parent's file name in the
//! child's directory. The first candidate that exists and carries the id
//! the child expects is the parent. Locators in an image are hostile input
//! like everything else in it: a candidate is only opened read-only, parsed
//! and compared by id, and the chain stops at 64 files or the first file
//! seen twice (by device and inode).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::error::DiskError;
use crate::format::{self, DiskType};
use crate::image::{FormatHint, MAX_CHAIN};
use crate::vhd::{self, Probe};

/// The format a path's name promises: `.vhd`, `.avhd` (Hyper-V snapshots)
/// and `.vud` (Virtual Server undo disks) are VHDs.
pub(crate) fn hint_for(path: &Path) -> FormatHint {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("vhd" | "avhd" | "vud") => FormatHint::Vhd,
        _ => FormatHint::Probe,
    }
}

pub(crate) fn open_error(path: &Path, e: io::Error) -> DiskError {
    if e.kind() == io::ErrorKind::NotFound {
        DiskError::NotFound(path.to_path_buf())
    } else {
        DiskError::Io {
            context: path.display().to_string(),
            source: e,
        }
    }
}

/// The image at `path` and its parents, leaf first. A raw image or a fixed
/// or dynamic VHD is a chain of one.
pub fn resolve_chain(path: &Path) -> Result<Vec<PathBuf>, DiskError> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = path.to_path_buf();
    loop {
        let file = File::open(&cur).map_err(|e| open_error(&cur, e))?;
        let md = file.metadata().map_err(|e| open_error(&cur, e))?;
        if !seen.insert((md.dev(), md.ino())) {
            return Err(DiskError::ParentLoop(cur));
        }
        if chain.len() == MAX_CHAIN {
            return Err(DiskError::ChainTooDeep(MAX_CHAIN));
        }
        chain.push(cur.clone());
        let kind = match (chain.len(), hint_for(path)) {
            (1, FormatHint::Probe) => vhd::probe(&file)?,
            (1, FormatHint::Raw) => Probe::Raw,
            _ => Probe::Vhd,
        };
        if kind == Probe::Raw {
            break;
        }
        let meta = vhd::read_meta(&file)?;
        let Some(sp) = meta
            .sparse
            .filter(|_| meta.footer.disk_type == DiskType::Differencing)
        else {
            break;
        };
        let expected = sp.header.parent_uuid;
        let candidates = parent_candidates(&cur, &sp.header, &sp.locators);
        let mut next = None;
        let mut mismatch = None;
        let mut broken = None;
        for c in &candidates {
            let Ok(f) = File::open(c) else { continue };
            match vhd::read_meta(&f) {
                Ok(m) if m.footer.uuid == expected => {
                    next = Some(c.clone());
                    break;
                }
                Ok(m) => mismatch = Some(m.footer.uuid),
                Err(e) => broken = broken.or(Some(e)),
            }
        }
        cur = match (next, mismatch, broken) {
            (Some(n), _, _) => n,
            (None, Some(found), _) => {
                return Err(DiskError::ParentUuidMismatch { expected, found });
            }
            (None, None, Some(e)) => return Err(e),
            (None, None, None) => {
                return Err(DiskError::ParentNotFound {
                    child: cur,
                    tried: candidates,
                });
            }
        };
    }
    Ok(chain)
}

/// Where a differencing image's parent may be, in the order to try.
pub(crate) fn parent_candidates(
    child: &Path,
    header: &format::DynamicHeader,
    locators: &[(usize, Vec<u8>)],
) -> Vec<PathBuf> {
    let dir = child
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = Vec::new();
    for (code, s) in vhd::locator_paths(header, locators) {
        let p = match code {
            format::PLATFORM_W2RU | format::PLATFORM_WI2R => {
                let rel = s.replace('\\', "/");
                let rel = rel.trim_start_matches("./");
                if rel.starts_with('/') {
                    continue;
                }
                dir.join(rel)
            }
            format::PLATFORM_W2KU | format::PLATFORM_WI2K => {
                if !s.starts_with('/') {
                    continue; // "C:\..." names nothing here.
                }
                PathBuf::from(s)
            }
            format::PLATFORM_MACX => match s.strip_prefix("file://") {
                Some(p) if p.starts_with('/') => PathBuf::from(percent_decode(p)),
                _ => continue,
            },
            _ => continue,
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    let name = &header.parent_name;
    if !name.is_empty() && !name.contains(['/', '\\']) && name != ".." && name != "." {
        let p = dir.join(name);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let v = (hi * 16 + lo) as u8;
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The relative locator from directory `from` to file `to` (both
/// absolute), in the Windows form Virtual PC writes: `.\parent.vhd`,
/// `..\base\parent.vhd`.
pub(crate) fn relative_locator(from: &Path, to: &Path) -> String {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = Vec::new();
    if common == f.len() {
        parts.push(".".into());
    }
    for _ in common..f.len() {
        parts.push("..".into());
    }
    for c in &t[common..] {
        parts.push(c.as_os_str().to_string_lossy().into_owned());
    }
    parts.join("\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_locator_uses_windows_separators() {
        assert_eq!(
            relative_locator(Path::new("/a/b"), Path::new("/a/b/p.vhd")),
            ".\\p.vhd"
        );
        assert_eq!(
            relative_locator(Path::new("/a/b/c"), Path::new("/a/x/p.vhd")),
            "..\\..\\x\\p.vhd"
        );
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("/a%20b/%zz%4"), "/a b/%zz%4");
    }
}
