//! COM1's own channel (fd 5), so a chatty guest never delays control
//! messages.
//!
//! Output: the UART writes into a bounded ring ([`SerialRing`], 64 KiB);
//! a writer thread moves it to the fd. The vCPU thread never blocks on the
//! peer: when the ring is full (the supervisor stopped reading) new bytes
//! are dropped and counted, as a UART with nothing listening loses them.
//! That beats both alternatives: blocking would freeze the guest on a slow
//! reader, and an unbounded buffer would let the guest grow the worker's
//! memory without limit.
//!
//! Input: a reader thread feeds what arrives on the fd to the UART through
//! [`PcHandle::serial_input`], pausing while the UART's backlog is large so
//! the supervisor cannot grow it without limit either.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use machine::pc::PcHandle;

/// Bytes of guest output buffered at most.
pub const RING_CAPACITY: usize = 64 << 10;
/// Bytes of input queued for the UART before the reader stops reading.
pub const INPUT_BACKLOG: usize = 16 << 10;
/// One write or read on the fd.
const CHUNK: usize = 4096;

#[derive(Default)]
struct Ring {
    bytes: VecDeque<u8>,
    /// Bytes dropped because the ring was full or the peer was gone.
    dropped: u64,
    /// A chunk is being written to the fd.
    writing: bool,
    /// The fd failed (peer gone): everything from now on is dropped.
    closed: bool,
}

/// The bounded buffer between the UART and the writer thread.
#[derive(Default)]
pub struct SerialRing {
    ring: Mutex<Ring>,
    cv: Condvar,
}

impl SerialRing {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Waits (at most `timeout`) until everything buffered reached the fd.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut r = self.lock();
        while (!r.bytes.is_empty() || r.writing) && !r.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            r = self
                .cv
                .wait_timeout(r, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The writer thread's loop: until the fd fails.
    pub fn write_to(&self, mut out: impl Write) {
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            {
                let mut r = self.lock();
                r.writing = false;
                self.cv.notify_all();
                while r.bytes.is_empty() {
                    r = self.cv.wait(r).unwrap_or_else(|e| e.into_inner());
                }
                let n = r.bytes.len().min(CHUNK);
                chunk.clear();
                chunk.extend(r.bytes.drain(..n));
                r.writing = true;
            }
            if out.write_all(&chunk).is_err() {
                let mut r = self.lock();
                r.closed = true;
                r.writing = false;
                r.dropped += (chunk.len() + r.bytes.len()) as u64;
                r.bytes.clear();
                self.cv.notify_all();
                return;
            }
        }
    }
}

/// The UART's output: appends to the ring, never blocks.
pub struct SerialSink(pub Arc<SerialRing>);

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut r = self.0.lock();
        let room = if r.closed {
            0
        } else {
            RING_CAPACITY.saturating_sub(r.bytes.len())
        };
        let take = room.min(buf.len());
        r.bytes.extend(&buf[..take]);
        r.dropped += (buf.len() - take) as u64;
        drop(r);
        if take > 0 {
            self.0.cv.notify_all();
        }
        // Always "written": a UART does not push back on the guest.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reader thread's loop: fd → COM1 until end of stream or an error.
/// Counts what it delivers in `events` (the presenter's input hint).
pub fn read_into(mut input: File, handle: PcHandle, events: Arc<AtomicU64>) {
    let mut buf = [0u8; CHUNK];
    loop {
        if handle.serial_backlog(0) > INPUT_BACKLOG {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                events.fetch_add(1, Ordering::Relaxed);
                handle.serial_input(0, &buf[..n])
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_and_counts_instead_of_blocking() {
        let ring = Arc::new(SerialRing::default());
        let mut sink = SerialSink(ring.clone());
        let big = vec![b'x'; RING_CAPACITY + 10];
        assert_eq!(sink.write(&big).unwrap(), big.len());
        assert_eq!(ring.dropped(), 10);
        assert_eq!(sink.write(b"more").unwrap(), 4);
        assert_eq!(ring.dropped(), 14);
    }

    #[test]
    fn the_writer_moves_bytes_in_order_and_drain_waits_for_it() {
        let ring = Arc::new(SerialRing::default());
        let (out, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let writer = {
            let ring = ring.clone();
            std::thread::spawn(move || ring.write_to(out))
        };
        SerialSink(ring.clone()).write_all(b"HELLO").unwrap();
        ring.drain(Duration::from_secs(5));
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HELLO");
        drop(peer);
        // The peer is gone: the next write fails and the writer stops.
        SerialSink(ring.clone()).write_all(b"lost").unwrap();
        writer.join().unwrap();
        assert_eq!(ring.dropped(), 4);
    }
}
