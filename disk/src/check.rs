//! `check`: verifies an image (and its parents) without changing it, and
//! lists every problem it finds rather than stopping at the first, as far
//! as the damage lets it read on.
//!
//! Errors make an image unusable or wrong (bad checksums, blocks past the
//! end or overlapping, a missing parent, ...). Warnings do not: leaked
//! space (an allocation a crash interrupted leaves an orphan block before
//! the footer; `compact` reclaims it), blocks with no sector in them, a
//! size the CHS geometry does not state, a saved-state flag.

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use crate::chain::{hint_for, open_error, resolve_chain};
use crate::error::DiskError;
use crate::format::{DiskType, FEATURES_RESERVED, MAX_CHS_SECTORS, SECTOR, UNALLOCATED, Uuid};
use crate::image::{FormatHint, ImageFormat};
use crate::storage::Storage;
use crate::vhd::{self, Probe, Region, metadata_regions, read_at, read_bat, read_meta};

/// At most this many problems are listed; the rest are counted.
const MAX_LISTED: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Io,
    Truncated,
    BadCookie,
    BadChecksum,
    BadVersion,
    BadDiskType,
    FooterLost,
    FooterMismatch,
    BadSize,
    BadBlockSize,
    TableSize,
    PastEof,
    BlockPastEof,
    Overlap,
    Malformed,
    Parent,
    ParentLoop,
    ChainTooDeep,
    OrphanBlock,
    Leak,
    EmptyBlock,
    ExtraEntry,
    Geometry,
    SavedState,
    Features,
    NilUuid,
    TrailingData,
}

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub kind: ProblemKind,
    /// The file it is about (a parent's, in a chain).
    pub file: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// The files checked, leaf first.
    pub files: Vec<String>,
    pub format: Option<ImageFormat>,
    pub size: Option<u64>,
    /// Blocks the leaf holds (sparse images).
    pub allocated_blocks: u64,
    /// Bytes no structure references, over all files.
    pub leaked_bytes: u64,
    pub problems: Vec<Problem>,
    /// Problems found past the listing limit.
    pub unlisted: u64,
}

impl CheckReport {
    /// No errors (warnings allowed).
    pub fn is_clean(&self) -> bool {
        self.errors() == 0
    }

    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
            + usize::from(self.unlisted > 0)
    }

    pub fn warnings(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .count()
    }

    fn push(&mut self, severity: Severity, kind: ProblemKind, file: &str, message: String) {
        if self.problems.len() >= MAX_LISTED {
            self.unlisted += 1;
            return;
        }
        self.problems.push(Problem {
            severity,
            kind,
            file: file.to_string(),
            message,
        });
    }

    fn error(&mut self, file: &str, e: &DiskError) {
        self.push(Severity::Error, kind_of(e), file, e.to_string());
    }
}

pub(crate) fn kind_of(e: &DiskError) -> ProblemKind {
    use ProblemKind as K;
    match e {
        DiskError::Io { .. } | DiskError::NotFound(_) | DiskError::Exists(_) => K::Io,
        DiskError::Truncated { .. } => K::Truncated,
        DiskError::BadCookie { .. } => K::BadCookie,
        DiskError::BadChecksum { .. } => K::BadChecksum,
        DiskError::BadVersion { .. } => K::BadVersion,
        DiskError::BadDiskType(_) => K::BadDiskType,
        DiskError::FooterLost(_) => K::FooterLost,
        DiskError::FooterMismatch => K::FooterMismatch,
        DiskError::SizeTooLarge(_) | DiskError::BadSize(_) => K::BadSize,
        DiskError::BadBlockSize(_) => K::BadBlockSize,
        DiskError::TableSizeInconsistent { .. } => K::TableSize,
        DiskError::PastEof { .. } => K::PastEof,
        DiskError::BlockPastEof { .. } => K::BlockPastEof,
        DiskError::Overlap { .. } => K::Overlap,
        DiskError::ParentLoop(_) => K::ParentLoop,
        DiskError::ChainTooDeep(_) => K::ChainTooDeep,
        DiskError::ParentNotFound { .. }
        | DiskError::ParentUuidMismatch { .. }
        | DiskError::ParentSizeMismatch { .. }
        | DiskError::MissingParent
        | DiskError::UnexpectedParent(_)
        | DiskError::ParentNotVhd => K::Parent,
        _ => K::Malformed,
    }
}

/// What `check_file` learnt about a file, for linking it to its parent.
struct Summary {
    size: u64,
    uuid: Option<Uuid>,
    parent_uuid: Option<Uuid>,
}

/// Checks the image at `path` and its parents. An error only when the
/// image itself cannot be opened; everything else is in the report.
pub fn check(path: &Path) -> Result<CheckReport, DiskError> {
    let mut report = CheckReport::default();
    File::open(path).map_err(|e| open_error(path, e))?;
    let chain = match resolve_chain(path) {
        Ok(c) => c,
        Err(e) => {
            report.error(&path.display().to_string(), &e);
            vec![path.to_path_buf()]
        }
    };
    let mut summaries = Vec::new();
    for (i, p) in chain.iter().enumerate() {
        let name = p.display().to_string();
        report.files.push(name.clone());
        let file = match File::open(p) {
            Ok(f) => f,
            Err(e) => {
                report.error(&name, &open_error(p, e));
                break;
            }
        };
        let hint = if i == 0 {
            hint_for(path)
        } else {
            FormatHint::Vhd
        };
        match check_file(&file, hint, &name, &mut report, i == 0) {
            Some(s) => summaries.push(s),
            None => break,
        }
    }
    link(&chain, &summaries, &mut report);
    Ok(report)
}

/// Checks one file (no parents): the fuzz target's and tests' entry.
pub fn check_storage(s: &dyn Storage, hint: FormatHint) -> CheckReport {
    let mut report = CheckReport {
        files: vec!["(image)".into()],
        ..CheckReport::default()
    };
    check_file(s, hint, "(image)", &mut report, true);
    report
}

fn link(chain: &[std::path::PathBuf], s: &[Summary], report: &mut CheckReport) {
    for (i, pair) in s.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        let name = chain[i].display().to_string();
        if child.parent_uuid != parent.uuid {
            report.error(
                &name,
                &DiskError::ParentUuidMismatch {
                    expected: child.parent_uuid.unwrap_or_default(),
                    found: parent.uuid.unwrap_or_default(),
                },
            );
        }
        if child.size != parent.size {
            report.error(
                &name,
                &DiskError::ParentSizeMismatch {
                    parent: parent.size,
                    child: child.size,
                },
            );
        }
    }
}

fn check_file(
    s: &dyn Storage,
    hint: FormatHint,
    name: &str,
    report: &mut CheckReport,
    leaf: bool,
) -> Option<Summary> {
    use ProblemKind as K;
    use Severity::Warning;
    let kind = match hint {
        FormatHint::Raw => Probe::Raw,
        FormatHint::Vhd => Probe::Vhd,
        FormatHint::Probe => match vhd::probe(s) {
            Ok(k) => k,
            Err(e) => {
                report.error(name, &e);
                return None;
            }
        },
    };
    if kind == Probe::Raw {
        let len = vhd::file_len(s).unwrap_or(0);
        if len == 0 || !len.is_multiple_of(SECTOR) {
            report.error(name, &DiskError::BadSize(len));
        }
        if leaf {
            report.format = Some(ImageFormat::Raw);
            report.size = Some(len);
        }
        return Some(Summary {
            size: len,
            uuid: None,
            parent_uuid: None,
        });
    }
    let meta = match read_meta(s) {
        Ok(m) => m,
        Err(e) => {
            report.error(name, &e);
            return None;
        }
    };
    let f = &meta.footer;
    let format = match f.disk_type {
        DiskType::Fixed => ImageFormat::VhdFixed,
        DiskType::Dynamic => ImageFormat::VhdDynamic,
        DiskType::Differencing => ImageFormat::VhdDifferencing,
    };
    if leaf {
        report.format = Some(format);
        report.size = Some(f.current_size);
    }
    if f.features & FEATURES_RESERVED == 0 {
        report.push(
            Warning,
            K::Features,
            name,
            "the reserved feature bit (0x2) is clear".into(),
        );
    }
    if f.saved_state != 0 {
        report.push(
            Warning,
            K::SavedState,
            name,
            "the saved-state flag is set: a saved virtual machine's disk".into(),
        );
    }
    if f.uuid.is_nil() {
        report.push(
            Warning,
            K::NilUuid,
            name,
            "the unique id is all zero".into(),
        );
    }
    let chs = f.geometry.sectors();
    if chs != MAX_CHS_SECTORS && chs * SECTOR != f.current_size {
        report.push(
            Warning,
            K::Geometry,
            name,
            format!(
                "the geometry {}/{}/{} states {} bytes, the footer {}: Virtual PC and qemu see the former",
                f.geometry.cylinders,
                f.geometry.heads,
                f.geometry.sectors_per_track,
                chs * SECTOR,
                f.current_size
            ),
        );
    }
    let mut summary = Summary {
        size: f.current_size,
        uuid: Some(f.uuid),
        parent_uuid: None,
    };
    let Some(sm) = meta.sparse else {
        let extra = meta.file_len - SECTOR - f.current_size;
        if extra > 0 {
            report.push(
                Warning,
                K::TrailingData,
                name,
                format!("{extra} bytes between the data and the footer"),
            );
        }
        return Some(summary);
    };
    if f.disk_type == DiskType::Differencing {
        summary.parent_uuid = Some(sm.header.parent_uuid);
    }
    let h = &sm.header;
    let block_size = u64::from(h.block_size);
    let bitmap_size = h.bitmap_size();
    let needed = f.current_size.div_ceil(block_size) as usize;
    let bat = match read_bat(s, h.table_offset, h.max_table_entries) {
        Ok(b) => b,
        Err(e) => {
            report.error(name, &e);
            return None;
        }
    };
    let mut regions = metadata_regions(f, &sm);
    let mut blocks = Vec::new();
    for (i, &e) in bat.iter().enumerate() {
        if e == UNALLOCATED {
            continue;
        }
        let start = u64::from(e) * SECTOR;
        let end = start + bitmap_size + block_size;
        if end > sm.footer_offset {
            report.error(
                name,
                &DiskError::BlockPastEof {
                    block: i as u32,
                    offset: start,
                    end: sm.footer_offset,
                },
            );
            continue;
        }
        if i >= needed {
            report.push(
                Warning,
                K::ExtraEntry,
                name,
                format!("BAT entry {i}, past the end of the disk, is allocated"),
            );
        }
        regions.push(Region {
            name: format!("block {i}"),
            start,
            end,
        });
        blocks.push((i, start));
    }
    if leaf {
        report.allocated_blocks = blocks.len() as u64;
    }
    // Overlaps, and the space nothing references.
    regions.sort_by_key(|r| (r.start, r.end));
    let mut furthest: Option<usize> = None;
    let mut cursor = 0u64;
    let mut gaps = Vec::new();
    for i in 0..regions.len() {
        let r = &regions[i];
        if r.start > cursor {
            gaps.push((cursor, r.start));
        }
        if let Some(fi) = furthest
            && r.start < regions[fi].end
        {
            report.error(
                name,
                &DiskError::Overlap {
                    a: regions[fi].name.clone(),
                    b: r.name.clone(),
                    offset: r.start,
                },
            );
        }
        if furthest.is_none_or(|fi| r.end > regions[fi].end) {
            furthest = Some(i);
        }
        cursor = cursor.max(r.end);
    }
    if sm.footer_offset > cursor {
        gaps.push((cursor, sm.footer_offset));
    }
    for (start, end) in gaps {
        let len = end - start;
        if len < SECTOR {
            continue; // padding to a sector
        }
        report.leaked_bytes += len;
        let (kind, what) = if len >= bitmap_size + block_size {
            (
                K::OrphanBlock,
                "an orphan block (an allocation a crash interrupted?)",
            )
        } else {
            (K::Leak, "leaked space")
        };
        report.push(
            Warning,
            kind,
            name,
            format!("{len} bytes at offset {start} are referenced by nothing: {what}; compact reclaims it"),
        );
    }
    // Bitmaps: every allocated block should hold at least one sector.
    let mut bits = vec![0u8; bitmap_size as usize];
    for (i, start) in blocks {
        if i >= needed {
            continue;
        }
        if let Err(e) = read_at(s, &mut bits, start, "sector bitmap") {
            report.error(name, &e);
            continue;
        }
        let sectors = block_size / SECTOR;
        let used = (0..sectors).any(|k| bits[(k / 8) as usize] & (0x80 >> (k % 8)) != 0);
        if !used {
            report.push(
                Warning,
                K::EmptyBlock,
                name,
                format!("block {i} is allocated but its bitmap marks no sector"),
            );
        }
    }
    Some(summary)
}
