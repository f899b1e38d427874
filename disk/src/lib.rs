//! Bulkhead's disk images: raw, and VHD fixed, dynamic and differencing
//! images as Microsoft's "Virtual Hard Disk Image Format Specification"
//! defines them (the format of Virtual PC and Virtual Server 2005, which
//! qemu-img calls `vpc`).
//!
//! Made for a sandboxed worker that opens no paths: the supervisor finds an
//! image's parents ([`resolve_chain`]) and opens the files; the worker gets
//! the open [`File`](std::fs::File)s and calls [`open_files`]. An open
//! [`Disk`] does only positional reads and writes, `fdatasync` and `fstat`
//! (through the [`Storage`] trait), never `open`, `ftruncate` or `lseek`.
//!
//! - [`format`]: the on-disk structures (footer, dynamic header, CHS
//!   geometry, checksums, parent locators).
//! - [`Disk`]: reads fall through sector bitmaps to parents; writes go to
//!   the leaf and are crash-consistent (the write ordering is documented on
//!   the `image` module and in `docs/disk.md`).
//! - [`create_raw`], [`create_fixed`], [`create_dynamic`],
//!   [`create_differencing`]; [`undo`] disks as in Virtual Server.
//! - [`check`], [`compact`], [`merge`], [`convert`]: the maintenance
//!   operations, with progress callbacks.
//! - [`cli`]: `bulkhead disk ...`.
//!
//! Images are hostile input: every structure is validated against the
//! file's length before use, every error is a typed [`DiskError`], and no
//! allocation is sized by an unchecked field.

mod chain;
mod check;
pub mod cli;
mod create;
mod error;
pub mod format;
mod image;
mod ops;
mod storage;
mod vhd;

#[doc(hidden)]
pub mod fuzzing;

pub use chain::resolve_chain;
pub use check::{CheckReport, Problem, ProblemKind, Severity, check, check_storage};
pub use create::{
    create_differencing, create_dynamic, create_dynamic_with_block_size, create_fixed, create_raw,
};
pub use error::{DiskError, Structure};
pub use image::{
    Disk, FormatHint, ImageFormat, LayerInfo, MAX_CHAIN, open, open_files, open_files_as,
    open_storage,
};
pub use ops::{CompactReport, Progress, Target, compact, convert, merge, no_progress, undo};
pub use storage::{MemStorage, Storage};
