//! The shared-memory framebuffer: a sealed memfd that the worker draws into
//! and the supervisor reads.
//!
//! Layout (all integers little-endian, the header accessed only as atomics):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0      | 8    | magic [`FB_MAGIC`] |
//! | 8      | 4    | version [`FB_VERSION`] |
//! | 12     | 4    | pixel format ([`PixelFormat::to_raw`]) |
//! | 16     | 4    | width (pixels) |
//! | 20     | 4    | height (pixels) |
//! | 24     | 4    | stride (bytes per row) |
//! | 28     | 4    | reserved (0) |
//! | 32     | 8    | seqlock sequence: odd while the writer updates |
//! | 40     | 8    | frame counter: +1 on every commit |
//! | 48     | 512  | dirty tiles of the last commit: one u64 per row of 64x64 tiles, bit = tile column |
//! | 4096   | ...  | pixels ([`PIXELS_OFFSET`]) |
//!
//! The supervisor [`create`]s the memfd sized for the largest mode and seals
//! it against shrinking and growing, so a worker can never make the
//! supervisor's mapping fault (SIGBUS). The worker maps it with [`FbWriter`];
//! in the worker the pixel area is also the guest's linear framebuffer, which
//! is why it starts on its own page. The supervisor maps it read-only with
//! [`FbReader`], which treats every header field as hostile: it re-validates
//! them against the mapping size on every read.
//!
//! The seqlock makes the header (mode, frame counter, dirty tiles) consistent
//! with the pixels copied under it. The guest can draw into the pixel area at
//! any time, so a snapshot may still catch a guest half-way through a
//! drawing; it never catches a half-changed mode.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use thiserror::Error;

use crate::messages::{PixelFormat, VideoMode};
use crate::sys::{self, Mapping, PAGE};

/// `b"BHFRAME\0"` as a little-endian u64.
pub const FB_MAGIC: u64 = u64::from_le_bytes(*b"BHFRAME\0");
/// Bumped on any incompatible layout change.
pub const FB_VERSION: u32 = 1;
/// Where the pixels start: the page after the header.
pub const PIXELS_OFFSET: usize = PAGE;
/// Dirty tiles are this many pixels square.
pub const TILE: u32 = 64;
/// Tile rows (and columns) the dirty bitmap holds.
pub const DIRTY_ROWS: usize = 64;
/// The largest width or height: what the dirty bitmap covers.
pub const MAX_DIMENSION: u32 = TILE * DIRTY_ROWS as u32;
/// How many times [`FbReader::snapshot`] tries before reporting a torn read.
pub const SNAPSHOT_ATTEMPTS: u32 = 200;

/// The header page as the two processes share it.
#[repr(C)]
pub(crate) struct RawHeader {
    magic: AtomicU64,
    version: AtomicU32,
    format: AtomicU32,
    width: AtomicU32,
    height: AtomicU32,
    stride: AtomicU32,
    reserved: AtomicU32,
    seq: AtomicU64,
    frame_counter: AtomicU64,
    dirty: [AtomicU64; DIRTY_ROWS],
}

#[derive(Debug, Error)]
pub enum FbError {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("framebuffer size {width}x{height} is out of range (1..={MAX_DIMENSION} each way)")]
    BadSize { width: u32, height: u32 },
    #[error("mode {width}x{height} needs {needed} pixel bytes; the buffer has {available}")]
    ModeTooLarge {
        width: u32,
        height: u32,
        needed: u64,
        available: u64,
    },
    #[error(
        "the memfd lacks seals {missing:#x} (has {seals:#x}): refusing to map a buffer the peer could shrink"
    )]
    NotSealed { seals: i32, missing: i32 },
    #[error("the buffer is {len} bytes: too small or too large for a framebuffer")]
    BadLength { len: u64 },
    #[error("bad framebuffer magic {0:#018x}")]
    BadMagic(u64),
    #[error("framebuffer version {0}, expected {FB_VERSION}")]
    BadVersion(u32),
    #[error("unknown pixel format {0}")]
    BadFormat(u32),
    #[error("no video mode set yet")]
    NoMode,
    #[error(
        "header describes {width}x{height} stride {stride}, which does not fit the {available}-byte pixel area"
    )]
    BadMode {
        width: u32,
        height: u32,
        stride: u32,
        available: u64,
    },
    #[error("the writer kept the header changing for {attempts} attempts")]
    Torn { attempts: u32 },
    #[error("frame has {got} pixel bytes for {width}x{height}")]
    BadFrame { width: u32, height: u32, got: usize },
    #[error("png: {0}")]
    Png(#[from] png::EncodingError),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> FbError {
    move |source| FbError::Io { op, source }
}

fn check_size(width: u32, height: u32) -> Result<(), FbError> {
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(FbError::BadSize { width, height });
    }
    Ok(())
}

/// The seals a shared framebuffer must carry.
pub const REQUIRED_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Bytes of memfd a framebuffer of at most `max_width` x `max_height` needs.
pub fn buffer_len(max_width: u32, max_height: u32) -> Result<u64, FbError> {
    check_size(max_width, max_height)?;
    let pixels = u64::from(max_width) * u64::from(max_height) * 4;
    Ok(PIXELS_OFFSET as u64 + pixels.next_multiple_of(PAGE as u64))
}

/// Creates the framebuffer memfd (owner side): sized for the largest mode,
/// close-on-exec, sealed against shrinking and growing, and sealed against
/// further sealing. `F_SEAL_WRITE` is deliberately absent: the worker writes.
pub fn create(max_width: u32, max_height: u32) -> Result<OwnedFd, FbError> {
    let len = buffer_len(max_width, max_height)?;
    const NAME: &CStr = c"bulkhead-framebuffer";
    let fd = sys::memfd_create_sealable(NAME).map_err(io_err("memfd_create"))?;
    sys::set_len(fd.as_fd(), len).map_err(io_err("ftruncate"))?;
    // One call, so F_SEAL_SEAL never lands before the others: after it no
    // seal can be added or removed.
    sys::add_seals(fd.as_fd(), REQUIRED_SEALS).map_err(io_err("F_ADD_SEALS"))?;
    Ok(fd)
}

/// Which 64x64 tiles changed in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyTiles {
    /// One word per tile row; bit `x` is tile column `x`.
    pub rows: [u64; DIRTY_ROWS],
}

impl Default for DirtyTiles {
    fn default() -> DirtyTiles {
        DirtyTiles {
            rows: [0; DIRTY_ROWS],
        }
    }
}

impl DirtyTiles {
    pub fn new() -> DirtyTiles {
        DirtyTiles::default()
    }
    /// Every tile a `width` x `height` screen covers.
    pub fn all(width: u32, height: u32) -> DirtyTiles {
        let mut d = DirtyTiles::new();
        d.mark_rect(0, 0, width, height);
        d
    }
    /// Marks the tiles a pixel rectangle touches (clipped to the bitmap).
    pub fn mark_rect(&mut self, x: u32, y: u32, width: u32, height: u32) {
        if width == 0 || height == 0 {
            return;
        }
        let max = DIRTY_ROWS as u32 - 1;
        let (tx0, ty0) = (x / TILE, y / TILE);
        if tx0 > max || ty0 > max {
            return;
        }
        let tx1 = (x.saturating_add(width - 1) / TILE).min(max);
        let ty1 = (y.saturating_add(height - 1) / TILE).min(max);
        // Columns tx0..=tx1 as a mask.
        let mask = (u64::MAX >> (63 - (tx1 - tx0))) << tx0;
        for row in &mut self.rows[ty0 as usize..=ty1 as usize] {
            *row |= mask;
        }
    }
    pub fn mark(&mut self, tile_x: u32, tile_y: u32) {
        if tile_x < 64 && (tile_y as usize) < DIRTY_ROWS {
            self.rows[tile_y as usize] |= 1 << tile_x;
        }
    }
    pub fn is_dirty(&self, tile_x: u32, tile_y: u32) -> bool {
        tile_x < 64
            && (tile_y as usize) < DIRTY_ROWS
            && self.rows[tile_y as usize] & (1 << tile_x) != 0
    }
    pub fn is_empty(&self) -> bool {
        self.rows.iter().all(|&r| r == 0)
    }
    /// How many tiles are dirty.
    pub fn count(&self) -> usize {
        self.rows.iter().map(|r| r.count_ones() as usize).sum()
    }
    /// The dirty tiles as (column, row).
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.rows.iter().enumerate().flat_map(|(y, &row)| {
            (0..64u32)
                .filter(move |x| row & (1 << x) != 0)
                .map(move |x| (x, y as u32))
        })
    }
}

/// The worker's side: maps the buffer read/write and publishes frames.
#[derive(Debug)]
pub struct FbWriter {
    map: Mapping,
    mode: Option<VideoMode>,
    /// The odd sequence number of an open `begin`.
    open_seq: Option<u64>,
    /// The next commit marks every tile dirty.
    mode_changed: bool,
}

impl FbWriter {
    /// Maps `fd` read/write and writes a fresh header (no mode yet).
    pub fn new(fd: impl AsFd) -> Result<FbWriter, FbError> {
        let fd = fd.as_fd();
        let len = sys::file_len(fd).map_err(io_err("fstat"))?;
        let len = mappable_len(len)?;
        let map = Mapping::new(fd, len, true).map_err(io_err("mmap"))?;
        let mut w = FbWriter {
            map,
            mode: None,
            open_seq: None,
            mode_changed: false,
        };
        w.begin();
        let h = w.map.header();
        h.magic.store(FB_MAGIC, Ordering::Relaxed);
        h.version.store(FB_VERSION, Ordering::Relaxed);
        h.format
            .store(PixelFormat::X8R8G8B8.to_raw(), Ordering::Relaxed);
        for f in [&h.width, &h.height, &h.stride, &h.reserved] {
            f.store(0, Ordering::Relaxed);
        }
        h.frame_counter.store(0, Ordering::Relaxed);
        for d in &h.dirty {
            d.store(0, Ordering::Relaxed);
        }
        w.end();
        Ok(w)
    }

    /// Bytes available for pixels.
    pub fn capacity(&self) -> usize {
        self.map.len() - PIXELS_OFFSET
    }

    pub fn mode(&self) -> Option<VideoMode> {
        self.mode
    }

    /// Switches to a `width` x `height` x8r8g8b8 mode (packed rows) with
    /// every tile dirty. Outside an update it publishes the change as a frame
    /// at once; inside one (after [`begin`](FbWriter::begin)) it waits for
    /// the [`commit`](FbWriter::commit), so readers see the new mode only
    /// with the pixels drawn for it.
    pub fn set_mode(&mut self, width: u32, height: u32) -> Result<VideoMode, FbError> {
        check_size(width, height)?;
        let stride = width * 4;
        let needed = u64::from(stride) * u64::from(height);
        if needed > self.capacity() as u64 {
            return Err(FbError::ModeTooLarge {
                width,
                height,
                needed,
                available: self.capacity() as u64,
            });
        }
        let mode = VideoMode {
            width,
            height,
            stride,
            format: PixelFormat::X8R8G8B8,
        };
        let inside_update = self.open_seq.is_some();
        self.begin();
        let h = self.map.header();
        h.format.store(mode.format.to_raw(), Ordering::Relaxed);
        h.width.store(width, Ordering::Relaxed);
        h.height.store(height, Ordering::Relaxed);
        h.stride.store(stride, Ordering::Relaxed);
        self.mode = Some(mode);
        self.mode_changed = true;
        if !inside_update {
            self.commit(&DirtyTiles::new());
        }
        Ok(mode)
    }

    /// The current mode's pixels (`stride * height` bytes; empty with no
    /// mode). Do not hold this while the guest draws into the same memory
    /// through another mapping.
    pub fn pixels_mut(&mut self) -> &mut [u8] {
        let len = self
            .mode
            .map_or(0, |m| m.stride as usize * m.height as usize);
        // set_mode checked that the mode fits the capacity.
        self.map.bytes_mut(PIXELS_OFFSET, len).unwrap_or_default()
    }

    /// The current mode's pixels as 32-bit words (`stride / 4 * height`;
    /// empty with no mode), read through atomics: for a writer whose guest
    /// draws into the same memory from another thread (the worker's
    /// presenter comparing tiles while the vCPU runs).
    pub fn pixel_words(&self) -> &[AtomicU32] {
        let words = self
            .mode
            .map_or(0, |m| m.stride as usize / 4 * m.height as usize);
        // set_mode checked that the mode fits the capacity.
        self.map
            .atomic_words(PIXELS_OFFSET, words)
            .unwrap_or_default()
    }

    /// Opens an update: readers retry until [`commit`](FbWriter::commit).
    /// A second `begin` without a commit is a no-op.
    pub fn begin(&mut self) {
        if self.open_seq.is_some() {
            return;
        }
        let seq = &self.map.header().seq;
        let s = seq.load(Ordering::Relaxed);
        // The next odd number (a previous writer may have died mid-update).
        let odd = (s | 1).wrapping_add(if s & 1 == 1 { 2 } else { 0 });
        seq.store(odd, Ordering::Relaxed);
        // Readers that see any later write also see the odd sequence.
        fence(Ordering::Release);
        self.open_seq = Some(odd);
    }

    /// Publishes a frame: records the dirty tiles, counts the frame and
    /// closes the update (opening one first if needed).
    pub fn commit(&mut self, dirty: &DirtyTiles) {
        self.begin();
        let dirty = match (self.mode_changed, self.mode) {
            (true, Some(m)) => DirtyTiles::all(m.width, m.height),
            _ => *dirty,
        };
        self.mode_changed = false;
        let h = self.map.header();
        for (slot, &row) in h.dirty.iter().zip(&dirty.rows) {
            slot.store(row, Ordering::Relaxed);
        }
        h.frame_counter.fetch_add(1, Ordering::Relaxed);
        self.end();
    }

    /// Closes an open update: the sequence becomes even again.
    fn end(&mut self) {
        if let Some(odd) = self.open_seq.take() {
            self.map
                .header()
                .seq
                .store(odd.wrapping_add(1), Ordering::Release);
        }
    }

    /// Frames committed so far.
    pub fn frame_counter(&self) -> u64 {
        self.map.header().frame_counter.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn raw_header(&self) -> &RawHeader {
        self.map.header()
    }
}

fn mappable_len(len: u64) -> Result<usize, FbError> {
    match usize::try_from(len) {
        Ok(l) if l >= PIXELS_OFFSET + 4 && l <= isize::MAX as usize => Ok(l),
        _ => Err(FbError::BadLength { len }),
    }
}

/// One consistent copy of the screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Bytes per row of `pixels`: always `width * 4` (rows are packed).
    pub stride: u32,
    pub format: PixelFormat,
    /// The frame counter this copy was taken at.
    pub frame_counter: u64,
    /// Tiles the commit that produced `frame_counter` changed: exact for a
    /// reader whose previous copy was `frame_counter - 1`, otherwise treat
    /// the whole screen as changed.
    pub dirty: DirtyTiles,
    pub pixels: Vec<u8>,
}

/// The supervisor's side: a read-only mapping of a buffer the worker writes.
#[derive(Debug)]
pub struct FbReader {
    map: Mapping,
}

impl FbReader {
    /// Maps `fd` read-only after checking it carries [`REQUIRED_SEALS`].
    pub fn open(fd: impl AsFd) -> Result<FbReader, FbError> {
        let fd = fd.as_fd();
        // Seals first: once F_SEAL_SEAL is on they cannot change, so the size
        // read next stays the size for the mapping's lifetime.
        let seals = sys::get_seals(fd).map_err(io_err("F_GET_SEALS"))?;
        let missing = REQUIRED_SEALS & !seals;
        if missing != 0 {
            return Err(FbError::NotSealed { seals, missing });
        }
        let len = sys::file_len(fd).map_err(io_err("fstat"))?;
        let len = mappable_len(len)?;
        let map = Mapping::new(fd, len, false).map_err(io_err("mmap"))?;
        Ok(FbReader { map })
    }

    /// The frame counter as the writer last stored it (a cheap "anything
    /// new?" hint; not validated).
    pub fn frame_counter(&self) -> u64 {
        self.map.header().frame_counter.load(Ordering::Acquire)
    }

    /// A consistent copy of the current frame.
    pub fn snapshot(&self) -> Result<Frame, FbError> {
        self.snapshot_with_attempts(SNAPSHOT_ATTEMPTS)
    }

    /// [`snapshot`](FbReader::snapshot) with a given retry budget.
    pub fn snapshot_with_attempts(&self, attempts: u32) -> Result<Frame, FbError> {
        let h = self.map.header();
        for attempt in 0..attempts {
            if attempt > 0 {
                backoff(attempt);
            }
            let s1 = h.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                continue;
            }
            let frame = self.read_unlocked();
            fence(Ordering::Acquire);
            if h.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            // Stable: any validation error is the writer's real header.
            return frame;
        }
        Err(FbError::Torn { attempts })
    }

    /// Validates the header and copies the pixels, without the seqlock.
    fn read_unlocked(&self) -> Result<Frame, FbError> {
        let h = self.map.header();
        let magic = h.magic.load(Ordering::Relaxed);
        if magic != FB_MAGIC {
            return Err(FbError::BadMagic(magic));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != FB_VERSION {
            return Err(FbError::BadVersion(version));
        }
        let raw_format = h.format.load(Ordering::Relaxed);
        let format = PixelFormat::from_raw(raw_format).ok_or(FbError::BadFormat(raw_format))?;
        let width = h.width.load(Ordering::Relaxed);
        let height = h.height.load(Ordering::Relaxed);
        let stride = h.stride.load(Ordering::Relaxed);
        if width == 0 && height == 0 {
            return Err(FbError::NoMode);
        }
        let available = (self.map.len() - PIXELS_OFFSET) as u64;
        let row = u64::from(width) * u64::from(format.bytes_per_pixel());
        let bad = FbError::BadMode {
            width,
            height,
            stride,
            available,
        };
        if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(bad);
        }
        // Rows start word-aligned, do not overlap, and the last one ends
        // inside the mapping.
        let needed = u64::from(stride) * u64::from(height - 1) + row;
        if !stride.is_multiple_of(4) || u64::from(stride) < row || needed > available {
            return Err(bad);
        }
        let frame_counter = h.frame_counter.load(Ordering::Relaxed);
        let mut dirty = DirtyTiles::new();
        for (d, slot) in dirty.rows.iter_mut().zip(&h.dirty) {
            *d = slot.load(Ordering::Relaxed);
        }
        // Bounded by the mapping size through `needed` above.
        let mut pixels = Vec::with_capacity(row as usize * height as usize);
        for y in 0..height as usize {
            let start = PIXELS_OFFSET + y * stride as usize;
            let words = self
                .map
                .atomic_words(start, width as usize)
                .ok_or(FbError::BadMode {
                    width,
                    height,
                    stride,
                    available,
                })?;
            pixels.extend(
                words
                    .iter()
                    .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()),
            );
        }
        Ok(Frame {
            width,
            height,
            stride: row as u32,
            format,
            frame_counter,
            dirty,
            pixels,
        })
    }
}

/// Waits before retry `attempt`: yield at first, then sleep briefly.
fn backoff(attempt: u32) {
    if attempt < 16 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The frame as an RGB PNG.
pub fn encode_png(frame: &Frame) -> Result<Vec<u8>, FbError> {
    let PixelFormat::X8R8G8B8 = frame.format;
    let expected = frame.width as usize * frame.height as usize * 4;
    if frame.width == 0 || frame.height == 0 || frame.pixels.len() != expected {
        return Err(FbError::BadFrame {
            width: frame.width,
            height: frame.height,
            got: frame.pixels.len(),
        });
    }
    let rgb: Vec<u8> = frame
        .pixels
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, frame.width, frame.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&rgb)?;
    w.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    fn writer_reader(max_w: u32, max_h: u32) -> (FbWriter, FbReader) {
        let fd = create(max_w, max_h).unwrap();
        (FbWriter::new(&fd).unwrap(), FbReader::open(&fd).unwrap())
    }

    #[test]
    fn created_memfd_is_sized_and_sealed_but_writable() {
        let fd = create(640, 480).unwrap();
        assert_eq!(sys::file_len(fd.as_fd()).unwrap(), 4096 + 640 * 480 * 4);
        let seals = sys::get_seals(fd.as_fd()).unwrap();
        assert_eq!(seals & REQUIRED_SEALS, REQUIRED_SEALS);
        assert_eq!(seals & libc::F_SEAL_WRITE, 0);
        assert!(
            sys::set_len(fd.as_fd(), 4096).is_err(),
            "shrinking must be refused"
        );
        assert!(
            sys::set_len(fd.as_fd(), 1 << 30).is_err(),
            "growing must be refused"
        );
    }

    #[test]
    fn size_is_page_rounded_and_bounded() {
        assert_eq!(buffer_len(3, 1).unwrap(), 4096 + 4096);
        assert!(matches!(buffer_len(0, 10), Err(FbError::BadSize { .. })));
        assert!(matches!(
            buffer_len(MAX_DIMENSION + 1, 10),
            Err(FbError::BadSize { .. })
        ));
    }

    #[test]
    fn reader_sees_no_mode_before_set_mode() {
        let (_w, r) = writer_reader(64, 64);
        assert!(matches!(r.snapshot(), Err(FbError::NoMode)));
    }

    #[test]
    fn snapshot_returns_the_committed_pixels_and_mode() {
        let (mut w, r) = writer_reader(640, 480);
        let mode = w.set_mode(320, 200).unwrap();
        assert_eq!(mode.stride, 1280);
        let px = w.pixels_mut();
        assert_eq!(px.len(), 320 * 200 * 4);
        px[..4].copy_from_slice(&0x00FF_8040u32.to_le_bytes());
        let mut dirty = DirtyTiles::new();
        dirty.mark_rect(0, 0, 1, 1);
        w.commit(&dirty);
        let f = r.snapshot().unwrap();
        assert_eq!(
            (f.width, f.height, f.stride, f.format),
            (320, 200, 1280, PixelFormat::X8R8G8B8)
        );
        assert_eq!(f.frame_counter, 2, "set_mode and commit each count a frame");
        assert_eq!(&f.pixels[..4], &[0x40, 0x80, 0xFF, 0x00]);
        assert_eq!(f.dirty.iter().collect::<Vec<_>>(), [(0, 0)]);
        assert_eq!(r.frame_counter(), 2);
    }

    #[test]
    fn set_mode_larger_than_the_buffer_is_refused() {
        let (mut w, _r) = writer_reader(320, 200);
        assert!(matches!(
            w.set_mode(640, 480),
            Err(FbError::ModeTooLarge { .. })
        ));
        assert!(w.mode().is_none());
    }

    #[test]
    fn reader_refuses_an_unsealed_memfd() {
        let fd = sys::memfd_create_sealable(c"unsealed").unwrap();
        sys::set_len(fd.as_fd(), 8192).unwrap();
        let err = FbReader::open(&fd).unwrap_err();
        assert!(
            matches!(err, FbError::NotSealed { missing, .. } if missing == REQUIRED_SEALS),
            "{err:?}"
        );
    }

    #[test]
    fn reader_refuses_a_descriptor_that_is_not_a_memfd() {
        let (read_end, _write_end) = std::io::pipe().unwrap();
        assert!(matches!(
            FbReader::open(&read_end),
            Err(FbError::Io {
                op: "F_GET_SEALS",
                ..
            })
        ));
    }

    #[test]
    fn reader_refuses_a_partly_sealed_memfd() {
        let fd = sys::memfd_create_sealable(c"partly").unwrap();
        sys::set_len(fd.as_fd(), 8192).unwrap();
        sys::add_seals(fd.as_fd(), libc::F_SEAL_GROW | libc::F_SEAL_SEAL).unwrap();
        let err = FbReader::open(&fd).unwrap_err();
        assert!(
            matches!(
                err,
                FbError::NotSealed {
                    missing: libc::F_SEAL_SHRINK,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn reader_rejects_a_hostile_header_larger_than_the_mapping() {
        let (mut w, r) = writer_reader(64, 64);
        w.set_mode(64, 64).unwrap();
        let h = w.raw_header();
        h.width.store(4096, Ordering::Relaxed);
        h.height.store(4096, Ordering::Relaxed);
        h.stride.store(4096 * 4, Ordering::Relaxed);
        assert!(matches!(
            r.snapshot(),
            Err(FbError::BadMode { width: 4096, .. })
        ));
    }

    #[test]
    fn reader_rejects_hostile_stride_format_magic_and_version() {
        let (mut w, r) = writer_reader(64, 64);
        w.set_mode(64, 64).unwrap();
        let h = w.raw_header();
        // A stride shorter than a row would make rows overlap.
        h.stride.store(4, Ordering::Relaxed);
        assert!(matches!(r.snapshot(), Err(FbError::BadMode { .. })));
        // A huge stride with one row still has to end inside the mapping.
        h.stride.store(u32::MAX - 3, Ordering::Relaxed);
        h.height.store(2, Ordering::Relaxed);
        assert!(matches!(r.snapshot(), Err(FbError::BadMode { .. })));
        h.stride.store(257, Ordering::Relaxed);
        assert!(
            matches!(r.snapshot(), Err(FbError::BadMode { .. })),
            "unaligned stride"
        );
        h.stride.store(256, Ordering::Relaxed);
        h.height.store(64, Ordering::Relaxed);
        h.format.store(7, Ordering::Relaxed);
        assert!(matches!(r.snapshot(), Err(FbError::BadFormat(7))));
        h.format.store(1, Ordering::Relaxed);
        h.version.store(9, Ordering::Relaxed);
        assert!(matches!(r.snapshot(), Err(FbError::BadVersion(9))));
        h.magic.store(0, Ordering::Relaxed);
        assert!(matches!(r.snapshot(), Err(FbError::BadMagic(0))));
        h.magic.store(FB_MAGIC, Ordering::Relaxed);
        h.version.store(FB_VERSION, Ordering::Relaxed);
        assert!(r.snapshot().is_ok());
    }

    #[test]
    fn a_sequence_stuck_odd_gives_a_torn_error_not_a_hang() {
        let (mut w, r) = writer_reader(64, 64);
        w.set_mode(64, 64).unwrap();
        w.begin();
        assert!(matches!(
            r.snapshot_with_attempts(20),
            Err(FbError::Torn { attempts: 20 })
        ));
        w.commit(&DirtyTiles::new());
        assert!(r.snapshot_with_attempts(1).is_ok());
    }

    #[test]
    fn torn_reads_are_retried_until_the_writer_commits() {
        let (mut w, r) = writer_reader(64, 64);
        w.set_mode(64, 64).unwrap();
        w.begin();
        let committer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            w.commit(&DirtyTiles::new());
            w
        });
        let f = r.snapshot().unwrap();
        let w = committer.join().unwrap();
        assert_eq!(f.frame_counter, w.frame_counter());
    }

    #[test]
    fn concurrent_mode_changes_never_yield_a_mixed_header() {
        let (mut w, r) = writer_reader(256, 256);
        w.set_mode(256, 16).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // The writer flips between two modes and fills each with its own
        // colour, bumping the sequence continuously.
        let writer = std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop2.load(Ordering::Relaxed) {
                let (width, height, colour) = if i.is_multiple_of(2) {
                    (16, 256, 0x11)
                } else {
                    (256, 16, 0x22)
                };
                w.begin();
                w.set_mode(width, height).unwrap();
                w.pixels_mut().fill(colour);
                w.commit(&DirtyTiles::all(width, height));
                i += 1;
                // A real presenter commits at most every 33 ms; a writer
                // that never pauses can starve the reader on a loaded host
                // (the reader then reports `Torn`, which is its contract).
                // A short pause keeps the race without the starvation.
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        });
        for _ in 0..200 {
            let f = r.snapshot_with_attempts(10_000).unwrap();
            if f.frame_counter == 1 {
                continue; // the first mode, before the writer thread ran
            }
            let colour = if f.width == 16 { 0x11 } else { 0x22 };
            assert_eq!(f.width * f.height, 4096);
            assert_eq!(f.pixels.len(), 4096 * 4);
            // The pixels are the ones drawn for the mode the header names.
            assert!(f.pixels.iter().all(|&b| b == colour));
            assert_eq!(f.dirty, DirtyTiles::all(f.width, f.height));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[test]
    fn dirty_tiles_mark_rectangles_and_clip() {
        let mut d = DirtyTiles::new();
        d.mark_rect(63, 0, 2, 1);
        assert_eq!(d.iter().collect::<Vec<_>>(), [(0, 0), (1, 0)]);
        let all = DirtyTiles::all(MAX_DIMENSION, MAX_DIMENSION);
        assert!(all.rows.iter().all(|&r| r == u64::MAX));
        let mut clipped = DirtyTiles::new();
        clipped.mark_rect(MAX_DIMENSION - 1, MAX_DIMENSION - 1, 1000, 1000);
        assert_eq!(clipped.iter().collect::<Vec<_>>(), [(63, 63)]);
        clipped.mark_rect(MAX_DIMENSION, 0, 10, 10);
        assert_eq!(clipped.iter().count(), 1);
    }

    #[test]
    fn png_of_a_snapshot_decodes_to_the_same_rgb() {
        let (mut w, r) = writer_reader(8, 4);
        w.set_mode(3, 2).unwrap();
        let colours: [u32; 6] = [
            0x00FF_0000,
            0x0000_FF00,
            0x0000_00FF,
            0x00FF_FFFF,
            0x0000_0000,
            0x0012_3456,
        ];
        for (px, c) in w.pixels_mut().chunks_exact_mut(4).zip(colours) {
            px.copy_from_slice(&c.to_le_bytes());
        }
        w.commit(&DirtyTiles::all(3, 2));
        let png_bytes = encode_png(&r.snapshot().unwrap()).unwrap();
        let mut reader = png::Decoder::new(png_bytes.as_slice()).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width, info.height, info.color_type),
            (3, 2, png::ColorType::Rgb)
        );
        let expected: Vec<u8> = colours
            .iter()
            .flat_map(|c| [(c >> 16) as u8, (c >> 8) as u8, *c as u8])
            .collect();
        assert_eq!(&buf[..info.buffer_size()], expected.as_slice());
    }

    #[test]
    fn png_of_an_inconsistent_frame_is_an_error() {
        let f = Frame {
            width: 2,
            height: 2,
            stride: 8,
            format: PixelFormat::X8R8G8B8,
            frame_counter: 0,
            dirty: DirtyTiles::new(),
            pixels: vec![0; 3],
        };
        assert!(matches!(encode_png(&f), Err(FbError::BadFrame { .. })));
    }
}
