//! The host mapping behind guest memory: one reserved, contiguous range of
//! address space that grows as RAM and ROM images are added, and into which
//! a caller's shared buffer (the worker's framebuffer memfd) can be mapped
//! so guest stores land in it with no copy.
//!
//! This is the crate's only `unsafe` system-call module.

use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

/// Address space reserved per machine: 4 GiB of guest-physical space plus
/// room for ROM images and buffers. It is reserved with `MAP_NORESERVE`, so
/// only pages the guest touches cost memory.
pub(crate) const RESERVE: usize = (4 << 30) + (256 << 20);

/// A growable byte store backed by one anonymous mapping.
pub(crate) struct Backing {
    base: NonNull<u8>,
    /// Bytes in use (RAM, then ROM images and buffers, page-aligned).
    len: usize,
}

// SAFETY: the mapping is owned exclusively by this value; no other handle to
// it exists, so moving it to another thread is as safe as moving a Vec.
unsafe impl Send for Backing {}

#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("cannot reserve {0} bytes of address space for guest memory: {1}")]
    Reserve(usize, std::io::Error),
    #[error("guest memory would exceed its {RESERVE}-byte reservation")]
    Full,
    #[error("cannot map the shared buffer into guest memory: {0}")]
    MapShared(std::io::Error),
}

impl Backing {
    /// Reserves the address space; nothing is in use yet.
    pub fn new() -> Result<Self, BackingError> {
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses; it aliases nothing. The result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BackingError::Reserve(
                RESERVE,
                std::io::Error::last_os_error(),
            ));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or(BackingError::Reserve(
            RESERVE,
            std::io::Error::from(std::io::ErrorKind::AddrNotAvailable),
        ))?;
        Ok(Backing { base, len: 0 })
    }

    /// Extends the store by `len` zeroed bytes (rounded up to a page);
    /// returns the offset of the first new byte.
    pub fn grow(&mut self, len: usize) -> Result<usize, BackingError> {
        let len = len.next_multiple_of(4096);
        let off = self.len;
        if RESERVE - off < len {
            return Err(BackingError::Full);
        }
        self.len += len;
        Ok(off)
    }

    /// Maps `len` bytes of `fd` from `fd_offset`, shared, as the next part
    /// of the store; returns its offset. Stores to it are visible to every
    /// other mapping of the file.
    pub fn map_shared(
        &mut self,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: usize,
    ) -> Result<usize, BackingError> {
        let len = len.next_multiple_of(4096);
        let off = self.len;
        if RESERVE - off < len {
            return Err(BackingError::Full);
        }
        let fd_offset = libc::off_t::try_from(fd_offset).map_err(|_| {
            BackingError::MapShared(std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })?;
        // SAFETY: the target range [base+off, base+off+len) lies inside our
        // own reservation (checked above) and is not yet handed out, so
        // replacing it with MAP_FIXED cannot clobber memory anyone uses.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().add(off).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                fd_offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BackingError::MapShared(std::io::Error::last_os_error()));
        }
        self.len += len;
        Ok(off)
    }

    /// The first byte of the reservation. It never moves, so the CPU's
    /// software TLB may turn backing offsets into host addresses with it.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: [base, base+len) is mapped readable and writable for as
        // long as `self` lives, and `&self` prevents concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Backing {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the reservation made in `new`; no
        // reference into it can outlive `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), RESERVE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grown_memory_is_zeroed_and_writable() {
        let mut b = Backing::new().unwrap();
        let off = b.grow(10_000).unwrap();
        assert_eq!((off, b.len()), (0, 12_288));
        b[12_287] = 7;
        assert!(b[..12_287].iter().all(|&x| x == 0));
        assert_eq!(b[12_287], 7);
    }

    #[test]
    fn a_shared_buffer_sees_guest_stores() {
        let mut b = Backing::new().unwrap();
        b.grow(4096).unwrap();
        let file = tempfile_with_len(8192);
        let fd = std::os::fd::AsFd::as_fd(&file);
        let off = b.map_shared(fd, 4096, 4096).unwrap();
        b[off + 5] = 0xAB;
        let mut byte = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, 4096 + 5).unwrap();
        assert_eq!(byte[0], 0xAB);
    }

    fn tempfile_with_len(len: u64) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("bulkhead-backing-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(len).unwrap();
        f
    }
}
