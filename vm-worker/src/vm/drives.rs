//! The VM's IDE drives: the image descriptors the supervisor passed (fd 9
//! onwards, see `protocol::fds`) opened with the `disk` crate (raw images,
//! VHD fixed, dynamic and differencing chains) and adapted to the machine's
//! [`BlockBackend`].
//!
//! Images are parsed only after the sandbox is in force: a hostile image
//! that found a bug in the parser would find itself in the jail.
//!
//! A VHD keeps new blocks' table entries in memory until a flush (see the
//! `disk` crate's write ordering), like a drive's write cache: the guest's
//! FLUSH CACHE flushes, the I/O thread flushes a dirty image after a quiet
//! second, and the image is flushed when the machine is dropped.

use std::fs::File;
use std::io;
use std::time::Duration;

use machine::BlockBackend;
use machine::pc::{DriveConfig, DriveKind};
use protocol::{DriveAttachment, DriveMedia, ImageFormat};

/// A drive's descriptors as setup took them.
pub struct DriveFiles {
    pub attachment: DriveAttachment,
    /// The image, then its parents.
    pub files: Vec<File>,
}

#[derive(Debug, thiserror::Error)]
#[error("the {slot} image (fd {fd}): {source}")]
pub struct DriveError {
    slot: protocol::IdeSlot,
    fd: i32,
    #[source]
    source: disk::DiskError,
}

/// How long a dirty VHD waits for more writes before its I/O thread
/// flushes it on its own.
const QUIET_FLUSH: Duration = Duration::from_secs(1);

/// A `disk` image as the IDE controller's backend.
struct Image(disk::Disk);

impl BlockBackend for Image {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf).map_err(io::Error::other)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, buf).map_err(io::Error::other)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(io::Error::other)
    }
    fn idle_flush_after(&self) -> Option<Duration> {
        self.0.needs_flush().then_some(QUIET_FLUSH)
    }
}

/// Opens every drive's image chain.
pub fn open(drives: Vec<DriveFiles>) -> Result<Vec<DriveConfig>, DriveError> {
    drives
        .into_iter()
        .map(
            |DriveFiles {
                 attachment: a,
                 files,
             }| {
                let hint = match a.format {
                    ImageFormat::Raw => disk::FormatHint::Raw,
                    ImageFormat::Vhd => disk::FormatHint::Vhd,
                };
                let image = disk::open_files_as(files, hint, !a.read_only).map_err(|source| {
                    DriveError {
                        slot: a.slot,
                        fd: a.fds[0],
                        source,
                    }
                })?;
                let (channel, position) = a.slot.channel_and_position();
                let (kind, model) = match a.media {
                    DriveMedia::Disk => (DriveKind::Disk, "Bulkhead Virtual Disk"),
                    DriveMedia::Cdrom => (DriveKind::Cdrom, "Bulkhead Virtual CD-ROM"),
                };
                // A VHD's id makes a stable serial (Linux's /dev/disk/by-id).
                let serial = match image.uuid() {
                    Some(id) => format!("{id}").replace('-', "").chars().take(20).collect(),
                    None => format!("BH{channel}{position}"),
                };
                Ok(DriveConfig {
                    channel,
                    slave: position == 1,
                    kind,
                    backend: Box::new(Image(image)),
                    model: model.into(),
                    serial,
                })
            },
        )
        .collect()
}
