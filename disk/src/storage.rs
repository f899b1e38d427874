//! The only I/O an open image does, behind a small trait: positional reads
//! and writes, `fdatasync` and the length. For a `File` these are exactly
//! `pread64`, `pwrite64`, `fdatasync` and `statx`/`fstat`, the calls the
//! worker's seccomp policy allows. Tests put a fault-injecting layer here
//! (a "file" that loses unsynced writes at a simulated power cut).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// Backing store of one image file.
pub trait Storage: Send {
    /// Fills `buf` from `offset`; a read past the end is an
    /// `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file when needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the length is 0.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Storage for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl<S: Storage + ?Sized + Sync> Storage for Arc<S> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        (**self).sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
}

/// An image held in memory (fuzzing, tests). Clones share the bytes.
#[derive(Clone, Default)]
pub struct MemStorage {
    data: Arc<Mutex<Vec<u8>>>,
}

/// The largest in-memory image: a write past it fails instead of
/// allocating without bound (a hostile image may ask for a block at 2 TiB).
const MEM_LIMIT: u64 = 1 << 30;

impl MemStorage {
    pub fn new(data: Vec<u8>) -> MemStorage {
        MemStorage {
            data: Arc::new(Mutex::new(data)),
        }
    }

    /// A copy of the bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.lock();
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= data.len() as u64 => {
                buf.copy_from_slice(&data[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.lock();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= MEM_LIMIT)
            .ok_or_else(|| io::Error::from(io::ErrorKind::StorageFull))?;
        if end > data.len() as u64 {
            data.resize(end as usize, 0);
        }
        data[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len() as u64)
    }
}
