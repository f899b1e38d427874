//! The storage seam: a [`BlockBackend`] is a disk image as the emulated
//! controllers see it (bytes at offsets), with no knowledge of image formats.
//! The `disk` crate's images (VHD, raw) are adapted to it by the worker.
//!
//! Disk I/O never runs on the vCPU thread. Each drive gets an [`IoThread`]
//! (as Virtual Server ran I/O in child threads): the controller submits a
//! request with an owned buffer over a channel and the guest keeps running;
//! the I/O thread performs it, sends the completion back and calls the
//! platform's waker, which makes the vCPU loop return from its slice (or
//! leave its halted wait) and apply the completion between slices.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::thread::JoinHandle;

/// A disk image: bytes at offsets. `size` is a multiple of 512.
pub trait BlockBackend: Send + 'static {
    /// Size in bytes (a multiple of 512).
    fn size(&self) -> u64;
    /// Whether writes are refused (the controller aborts them up front).
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// A backend that holds writes back (a VHD keeps new blocks' table
    /// entries until a flush) asks its I/O thread to flush it on its own
    /// after this long without requests. `None`: nothing is held back.
    fn idle_flush_after(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A raw image file: positional reads and writes (`pread64`/`pwrite64`),
/// `fdatasync` for flushes. Its size is the file's length rounded down to
/// whole sectors.
impl BlockBackend for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len() & !511)
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

fn out_of_range(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes at offset {offset} are beyond the image's {size} bytes"),
    )
}

/// An image in memory (tests, scratch disks). Its size is the vector's
/// length rounded down to whole sectors.
impl BlockBackend for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64 & !511
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let size = self.size();
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= size);
        let Some(end) = end else {
            return Err(out_of_range(offset, buf.len(), size));
        };
        buf.copy_from_slice(&self[offset as usize..end as usize]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let size = self.size();
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= size);
        let Some(end) = end else {
            return Err(out_of_range(offset, buf.len(), size));
        };
        self[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Any backend, shared with the caller (tests look at an in-memory image
/// after the guest wrote it).
impl<B: BlockBackend> BlockBackend for Arc<std::sync::Mutex<B>> {
    fn size(&self) -> u64 {
        self.lock().unwrap_or_else(|e| e.into_inner()).size()
    }
    fn read_only(&self) -> bool {
        self.lock().unwrap_or_else(|e| e.into_inner()).read_only()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut b = self.lock().unwrap_or_else(|e| e.into_inner());
        b.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut b = self.lock().unwrap_or_else(|e| e.into_inner());
        b.write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
    fn idle_flush_after(&self) -> Option<std::time::Duration> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .idle_flush_after()
    }
}

/// A backend the guest may only read (CD images, `--disk-ro`): reports
/// `read_only` and refuses writes.
pub struct ReadOnly<B>(pub B);

impl<B: BlockBackend> BlockBackend for ReadOnly<B> {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the image is read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What an I/O request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoKind {
    /// Fill the request's buffer from `offset`.
    Read,
    /// Write the request's buffer at `offset`.
    Write,
    /// Make earlier writes durable.
    Flush,
}

/// A request to a drive's I/O thread, with an owned buffer.
#[derive(Debug)]
pub(crate) struct IoRequest {
    pub kind: IoKind,
    pub offset: u64,
    pub buf: Vec<u8>,
}

/// A finished request: the buffer comes back (filled, for reads).
#[derive(Debug)]
pub(crate) struct IoCompletion {
    pub kind: IoKind,
    pub offset: u64,
    pub buf: Vec<u8>,
    pub result: io::Result<()>,
}

/// Called by I/O threads after posting a completion: gets the vCPU loop's
/// attention (raise a signal, notify the halted wait).
pub(crate) type IoWaker = Arc<dyn Fn() + Send + Sync>;

/// A drive's I/O thread and the channels to it. Dropping it closes the
/// request channel and joins the thread (after any request in flight).
pub(crate) struct IoThread {
    size: u64,
    read_only: bool,
    requests: Option<Sender<IoRequest>>,
    completions: Receiver<IoCompletion>,
    /// Completions for requests the thread could not take (it is gone).
    failed: Option<IoCompletion>,
    thread: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts a thread named `name` that owns `backend`.
    pub fn spawn(
        backend: Box<dyn BlockBackend>,
        name: String,
        waker: IoWaker,
    ) -> io::Result<IoThread> {
        let (size, read_only) = (backend.size(), backend.read_only());
        let (req_tx, req_rx) = channel::<IoRequest>();
        let (done_tx, done_rx) = channel::<IoCompletion>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(backend, req_rx, done_tx, waker))?;
        Ok(IoThread {
            size,
            read_only,
            requests: Some(req_tx),
            completions: done_rx,
            failed: None,
            thread: Some(thread),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Queues a request; its completion arrives through [`IoThread::try_complete`].
    pub fn submit(&mut self, req: IoRequest) {
        let sent = match &self.requests {
            Some(tx) => tx.send(req).map_err(|e| e.0),
            None => Err(req),
        };
        if let Err(req) = sent {
            self.failed = Some(IoCompletion {
                kind: req.kind,
                offset: req.offset,
                buf: req.buf,
                result: Err(io::Error::other("the drive's I/O thread has stopped")),
            });
        }
    }

    /// A finished request, if one is ready.
    pub fn try_complete(&mut self) -> Option<IoCompletion> {
        if let Some(c) = self.failed.take() {
            return Some(c);
        }
        match self.completions.try_recv() {
            Ok(c) => Some(c),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => None,
        }
    }

    /// Waits up to `timeout` for a finished request (tests).
    #[cfg(test)]
    pub fn wait_complete(&mut self, timeout: std::time::Duration) -> Option<IoCompletion> {
        if let Some(c) = self.failed.take() {
            return Some(c);
        }
        self.completions.recv_timeout(timeout).ok()
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The I/O thread's loop: one request at a time, in order.
fn serve(
    mut backend: Box<dyn BlockBackend>,
    requests: Receiver<IoRequest>,
    done: Sender<IoCompletion>,
    waker: IoWaker,
) {
    loop {
        let next = match backend.idle_flush_after() {
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(quiet) => requests.recv_timeout(quiet),
        };
        let mut req = match next {
            Ok(req) => req,
            Err(RecvTimeoutError::Timeout) => {
                // The guest went quiet with writes held back: make them
                // durable, as a drive's cache drains when idle.
                if let Err(e) = backend.flush() {
                    tracing::warn!(target: "bulkhead::ide", "flushing an idle drive: {e}");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let result = match req.kind {
            IoKind::Read => backend.read_at(req.offset, &mut req.buf),
            IoKind::Write => backend.write_at(req.offset, &req.buf),
            IoKind::Flush => backend.flush(),
        };
        let completion = IoCompletion {
            kind: req.kind,
            offset: req.offset,
            buf: req.buf,
            result,
        };
        if done.send(completion).is_err() {
            break;
        }
        waker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(5);

    fn counting_waker() -> (IoWaker, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            Arc::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            }),
            n,
        )
    }

    /// Writes are held back until a flush, like a VHD's new blocks.
    #[derive(Default)]
    struct WriteBack {
        dirty: bool,
        flushes: usize,
    }

    impl BlockBackend for WriteBack {
        fn size(&self) -> u64 {
            512
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
            self.dirty = true;
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.dirty = false;
            self.flushes += 1;
            Ok(())
        }
        fn idle_flush_after(&self) -> Option<Duration> {
            self.dirty.then_some(Duration::from_millis(20))
        }
    }

    #[test]
    fn an_idle_io_thread_flushes_a_backend_that_holds_writes_back() {
        let backend = Arc::new(std::sync::Mutex::new(WriteBack::default()));
        let (waker, _) = counting_waker();
        let mut io = IoThread::spawn(Box::new(backend.clone()), "t".into(), waker).unwrap();
        io.submit(IoRequest {
            kind: IoKind::Write,
            offset: 0,
            buf: vec![0; 512],
        });
        assert!(io.wait_complete(WAIT).unwrap().result.is_ok());
        let deadline = std::time::Instant::now() + WAIT;
        while backend.lock().unwrap().dirty {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Clean again: no more flushes without new writes.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(backend.lock().unwrap().flushes, 1);
    }

    #[test]
    fn memory_backend_reads_and_writes_within_its_size() {
        let mut disk = vec![0u8; 1024];
        disk.write_at(510, &[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 4];
        disk.read_at(510, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
    }

    #[test]
    fn memory_backend_refuses_access_past_its_end() {
        let mut disk = vec![0u8; 1024];
        let err = disk.read_at(1022, &mut [0u8; 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn read_only_wrapper_refuses_writes() {
        let mut disk = ReadOnly(vec![0u8; 512]);
        assert!(disk.read_only());
        assert!(disk.write_at(0, &[1]).is_err());
    }

    #[test]
    fn file_backend_round_trips_at_an_offset() {
        let path = std::env::temp_dir().join(format!("bulkhead-block-{}", std::process::id()));
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(4096).unwrap();
        BlockBackend::write_at(&mut f, 1000, b"sector").unwrap();
        BlockBackend::flush(&mut f).unwrap();
        let mut buf = [0u8; 6];
        BlockBackend::read_at(&mut f, 1000, &mut buf).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&buf, b"sector");
        assert_eq!(BlockBackend::size(&f), 4096);
    }

    #[test]
    fn io_thread_completes_requests_in_order_and_wakes() {
        let (waker, wakes) = counting_waker();
        let mut io = IoThread::spawn(Box::new(vec![7u8; 2048]), "test-io".into(), waker).unwrap();
        io.submit(IoRequest {
            kind: IoKind::Write,
            offset: 512,
            buf: vec![9; 512],
        });
        io.submit(IoRequest {
            kind: IoKind::Read,
            offset: 0,
            buf: vec![0; 1024],
        });
        let write = io.wait_complete(WAIT).unwrap();
        let read = io.wait_complete(WAIT).unwrap();
        // The waker runs just after each completion is posted.
        let start = std::time::Instant::now();
        while wakes.load(Ordering::SeqCst) < 2 && start.elapsed() < WAIT {
            std::thread::yield_now();
        }
        assert!(write.result.is_ok());
        assert_eq!(read.buf[..512], [7; 512]);
        assert_eq!(read.buf[512..], [9; 512]);
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn io_thread_reports_backend_errors_in_the_completion() {
        let (waker, _) = counting_waker();
        let mut io = IoThread::spawn(Box::new(vec![0u8; 512]), "test-io".into(), waker).unwrap();
        io.submit(IoRequest {
            kind: IoKind::Read,
            offset: 512,
            buf: vec![0; 512],
        });
        let done = io.wait_complete(WAIT).unwrap();
        assert!(done.result.is_err());
    }
}
