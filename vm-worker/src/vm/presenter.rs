//! Publishes framebuffer frames. The guest draws straight into the shared
//! pixels (the memfd is its linear framebuffer: zero copy), so publishing
//! only has to say *which* 64x64 tiles changed: every [`PERIOD`] the
//! presenter compares the pixels with a private copy, tile row by tile
//! row, and commits a frame with those tiles dirty — or no frame at all if
//! nothing changed, so an idle screen costs the supervisor nothing.
//!
//! Comparing costs one pass over the screen per period (3 MiB at
//! 1024x768, about a millisecond); the alternative, dirty tracking through
//! the CPU's write path, would tax every guest store instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use protocol::framebuffer::TILE;
use protocol::{DirtyTiles, FbWriter};

/// About 30 frames per second while the screen changes.
pub const PERIOD: Duration = Duration::from_millis(33);
/// The period once the screen has not changed for [`IDLE_AFTER`] periods:
/// an idle VM's screen then costs a sixth of the CPU (the compare is the
/// whole idle cost of a halted guest), and the first change after a quiet
/// spell shows up at most this late.
pub const IDLE_PERIOD: Duration = Duration::from_millis(200);
/// Unchanged periods (about a second) before slowing to [`IDLE_PERIOD`].
pub const IDLE_AFTER: u32 = 30;
/// A frame with at most this many dirty tiles and no input since the
/// last one counts as unchanged for the period: a blinking text cursor
/// (Linux's framebuffer console toggles it every 200 ms, one or two
/// tiles) would otherwise keep an idle VM's screen at 30 compares a
/// second. Input (keys, pointer, serial) makes the next frames fast
/// again, so typing still echoes at [`PERIOD`].
pub const SMALL_CHANGE: usize = 2;

/// Whether a frame leaves the screen idle: nothing or a small change
/// changed, and no input arrived since the previous frame.
pub fn quiet(dirty: &DirtyTiles, input_since: bool) -> bool {
    !input_since && dirty.count() <= SMALL_CHANGE
}

/// How long to wait before the next compare, after `unchanged` compares
/// in a row found nothing new.
pub fn period_after(unchanged: u32) -> Duration {
    if unchanged >= IDLE_AFTER {
        IDLE_PERIOD
    } else {
        PERIOD
    }
}

/// Compares the shared pixels with a private copy.
pub struct Presenter {
    writer: FbWriter,
    /// The pixels as last published.
    copy: Vec<u32>,
    /// Frames committed (for stats).
    frames: Arc<AtomicU64>,
    /// Host input events delivered to the guest (see [`quiet`]), and the
    /// count the previous frame saw.
    input: Arc<AtomicU64>,
    input_seen: u64,
}

impl Presenter {
    /// The mode must already be set on `writer`.
    pub fn new(writer: FbWriter, frames: Arc<AtomicU64>, input: Arc<AtomicU64>) -> Presenter {
        let copy = writer
            .pixel_words()
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        frames.store(writer.frame_counter(), Ordering::Relaxed);
        let input_seen = input.load(Ordering::Relaxed);
        Presenter {
            writer,
            copy,
            frames,
            input,
            input_seen,
        }
    }

    /// Commits a frame if any tile changed since the last one; returns the
    /// dirty tiles.
    pub fn present(&mut self) -> DirtyTiles {
        let mut dirty = DirtyTiles::new();
        let Some(mode) = self.writer.mode() else {
            return dirty;
        };
        let words = self.writer.pixel_words();
        let row_words = (mode.stride / 4) as usize;
        let width = mode.width as usize;
        for (y, (shared, copy)) in words
            .chunks_exact(row_words)
            .zip(self.copy.chunks_exact_mut(row_words))
            .enumerate()
        {
            for (tx, (shared, copy)) in shared[..width]
                .chunks(TILE as usize)
                .zip(copy[..width].chunks_mut(TILE as usize))
                .enumerate()
            {
                let mut changed = false;
                for (s, c) in shared.iter().zip(copy.iter_mut()) {
                    let v = s.load(Ordering::Relaxed);
                    changed |= v != *c;
                    *c = v;
                }
                if changed {
                    dirty.mark(tx as u32, y as u32 / TILE);
                }
            }
        }
        if !dirty.is_empty() {
            self.writer.commit(&dirty);
            self.frames
                .store(self.writer.frame_counter(), Ordering::Relaxed);
        }
        dirty
    }

    /// The presenter thread: presents every [`PERIOD`] (every
    /// [`IDLE_PERIOD`] while the screen stays unchanged or [`quiet`])
    /// until `stop` is set, then once more so the last pixels drawn are
    /// published.
    pub fn run(mut self, stop: Arc<(Mutex<bool>, Condvar)>) {
        let (flag, cv) = &*stop;
        let mut unchanged = 0u32;
        let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            stopped = cv
                .wait_timeout(stopped, period_after(unchanged))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if !*stopped {
                drop(stopped);
                let dirty = self.present();
                let input = self.input.load(Ordering::Relaxed);
                let input_since = std::mem::replace(&mut self.input_seen, input) != input;
                unchanged = if quiet(&dirty, input_since) {
                    unchanged.saturating_add(1)
                } else {
                    0
                };
                stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
            }
        }
        drop(stopped);
        self.present();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blinking_cursor_is_quiet_but_input_or_a_larger_change_is_not() {
        let mut cursor = DirtyTiles::new();
        cursor.mark(3, 7);
        cursor.mark(4, 7);
        assert!(quiet(&DirtyTiles::new(), false));
        assert!(quiet(&cursor, false));
        assert!(!quiet(&cursor, true), "typing echoes at the fast rate");
        assert!(!quiet(&DirtyTiles::new(), true));
        let mut scroll = cursor;
        scroll.mark(5, 7);
        assert!(!quiet(&scroll, false));
        assert!(!quiet(&DirtyTiles::all(1024, 768), false));
    }

    #[test]
    fn an_unchanged_screen_is_compared_less_often_until_it_changes() {
        assert_eq!(period_after(0), PERIOD);
        assert_eq!(period_after(IDLE_AFTER - 1), PERIOD);
        assert_eq!(period_after(IDLE_AFTER), IDLE_PERIOD);
        assert_eq!(period_after(u32::MAX), IDLE_PERIOD);
    }

    #[test]
    fn only_changed_tiles_are_dirty_and_an_unchanged_screen_commits_nothing() {
        let fd = protocol::framebuffer::create(200, 100).unwrap();
        let mut writer = FbWriter::new(&fd).unwrap();
        writer.set_mode(200, 100).unwrap();
        let frames = Arc::new(AtomicU64::new(0));
        let mut p = Presenter::new(writer, frames.clone(), Arc::new(AtomicU64::new(0)));
        let before = frames.load(Ordering::Relaxed);
        assert!(p.present().is_empty());
        assert_eq!(frames.load(Ordering::Relaxed), before);

        // Pixel (130, 70): tile column 2, tile row 1.
        p.writer.pixel_words()[70 * 200 + 130].store(0x00FF_0000, Ordering::Relaxed);
        let dirty = p.present();
        assert_eq!(dirty.iter().collect::<Vec<_>>(), [(2, 1)]);
        assert_eq!(frames.load(Ordering::Relaxed), before + 1);
        assert!(p.present().is_empty());
    }
}
