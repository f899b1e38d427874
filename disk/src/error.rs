//! The crate's one error type. Every way a hostile or damaged image can be
//! wrong has its own variant, so callers (and `check`) can tell them apart.

use std::io;
use std::path::PathBuf;

use crate::format::Uuid;

/// Which on-disk structure an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    Footer,
    FooterCopy,
    DynamicHeader,
    Bat,
    ParentLocator,
    Block,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Structure::Footer => "footer",
            Structure::FooterCopy => "footer copy",
            Structure::DynamicHeader => "dynamic disk header",
            Structure::Bat => "block allocation table",
            Structure::ParentLocator => "parent locator",
            Structure::Block => "data block",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not found")]
    NotFound(PathBuf),
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("the file is truncated: the {what} needs {needed} bytes, the file has {len}")]
    Truncated {
        what: Structure,
        needed: u64,
        len: u64,
    },
    #[error("bad cookie in the {what}: expected {expected:?}")]
    BadCookie {
        what: Structure,
        expected: &'static str,
    },
    #[error("bad checksum in the {what}: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        what: Structure,
        stored: u32,
        computed: u32,
    },
    #[error("unsupported {what} version {version:#010x}")]
    BadVersion { what: Structure, version: u32 },
    #[error("unsupported disk type {0} (2 fixed, 3 dynamic, 4 differencing)")]
    BadDiskType(u32),
    #[error(
        "the footer at the end of the file is missing or damaged, its copy at offset 0 is intact \
         (a truncated file?): {0}"
    )]
    FooterLost(Box<DiskError>),
    #[error("the footer at the end and its copy at offset 0 differ")]
    FooterMismatch,
    #[error("disk size {0} bytes is over the VHD limit of 2040 GiB")]
    SizeTooLarge(u64),
    #[error("disk size {0} bytes is not a non-zero multiple of 512")]
    BadSize(u64),
    #[error("block size {0} is not a power of two between 512 bytes and 256 MiB")]
    BadBlockSize(u32),
    #[error(
        "the block allocation table has {entries} entries but a disk of {size} bytes needs {needed}"
    )]
    TableSizeInconsistent {
        entries: u32,
        needed: u64,
        size: u64,
    },
    #[error(
        "the {what} at offset {offset} ({len} bytes) lies past the end of the file ({file_len})"
    )]
    PastEof {
        what: Structure,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error("block {block} at offset {offset} lies past the end of the data area ({end})")]
    BlockPastEof { block: u32, offset: u64, end: u64 },
    #[error("{a} and {b} overlap at offset {offset}")]
    Overlap { a: String, b: String, offset: u64 },
    #[error("bad {what}: {detail}")]
    Malformed { what: Structure, detail: String },
    #[error("the parent chain of {0} loops")]
    ParentLoop(PathBuf),
    #[error("the parent chain is deeper than {0} images")]
    ChainTooDeep(usize),
    #[error("parent of {child} not found (tried: {})", list(tried))]
    ParentNotFound { child: PathBuf, tried: Vec<PathBuf> },
    #[error("the parent's id {found} is not the id {expected} the child expects")]
    ParentUuidMismatch { expected: Uuid, found: Uuid },
    #[error("the parent is {parent} bytes, the differencing child {child}")]
    ParentSizeMismatch { parent: u64, child: u64 },
    #[error("a differencing image needs its parent, and none was given")]
    MissingParent,
    #[error("a {0} image has no parent, but more files were given")]
    UnexpectedParent(&'static str),
    #[error("a parent must be a VHD image")]
    ParentNotVhd,
    #[error("offset {offset} length {len}: not a multiple of 512")]
    Unaligned { offset: u64, len: usize },
    #[error("offset {offset} length {len} is past the end of the {size}-byte disk")]
    OutOfRange { offset: u64, len: usize, size: u64 },
    #[error("the disk is open read-only")]
    ReadOnly,
    #[error("{0}")]
    Unsupported(String),
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no usable locator".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl DiskError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
        let context = context.into();
        move |source| DiskError::Io { context, source }
    }

    pub(crate) fn malformed(what: Structure, detail: impl Into<String>) -> DiskError {
        DiskError::Malformed {
            what,
            detail: detail.into(),
        }
    }

    /// True when the error says an image is damaged or hostile (as opposed
    /// to an I/O failure or a caller's mistake).
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self,
            DiskError::Io { .. }
                | DiskError::NotFound(_)
                | DiskError::Exists(_)
                | DiskError::Unaligned { .. }
                | DiskError::OutOfRange { .. }
                | DiskError::ReadOnly
                | DiskError::Unsupported(_)
        )
    }
}
