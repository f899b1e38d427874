//! The crate's only `unsafe` code: memfd creation and sealing, `fstat`,
//! `mmap`/`munmap`, and typed views of a shared mapping.
//!
//! Everything here is a thin wrapper that turns a libc return value into an
//! `io::Result`; policy (sizes, which seals, what a header means) lives in
//! `framebuffer.rs`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use crate::framebuffer::RawHeader;

/// The page size the layout assumes (x86: 4 KiB).
pub(crate) const PAGE: usize = 4096;

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`.
pub(crate) fn memfd_create_sealable(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // the flags are plain bits.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ftruncate(fd, len)`.
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `fd` is a valid open descriptor for the duration of the borrow.
    let r = unsafe { libc::ftruncate(fd.as_raw_fd(), len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fcntl(fd, F_ADD_SEALS, seals)`.
pub(crate) fn add_seals(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: F_ADD_SEALS takes an int argument; `fd` is valid for the borrow.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fcntl(fd, F_GET_SEALS)`.
pub(crate) fn get_seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS takes no argument; `fd` is valid for the borrow.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// The file's size (`fstat`).
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a writable `struct stat`; `fd` is valid for the borrow.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled in `st`.
    let st = unsafe { st.assume_init() };
    u64::try_from(st.st_size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A `MAP_SHARED` mapping of a whole file, unmapped on drop.
///
/// Another process may change the bytes at any time, so the mapping hands out
/// only views that tolerate that: atomics (header, reader-side pixels) and,
/// for a writable mapping, `&mut [u8]` that this process alone writes.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; all
// shared (`&self`) access goes through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&self` methods only hand out atomic views.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared, read-only or read/write.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        if len < PAGE {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (null hint) aliases no
        // Rust object; `fd` is valid for the call; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mapping { ptr, len, writable })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The header page as atomics.
    pub(crate) fn header(&self) -> &RawHeader {
        const {
            assert!(std::mem::size_of::<RawHeader>() <= PAGE);
            assert!(std::mem::align_of::<RawHeader>() <= PAGE);
        }
        // SAFETY: the mapping is page-aligned and at least one page long
        // (checked in `new`), which covers `RawHeader`'s size and alignment
        // (asserted above). `RawHeader` is `repr(C)` and made only of
        // atomics, for which every bit pattern is valid, so whatever the other
        // process writes there is a valid value, and atomics make concurrent
        // access from both processes well defined. The reference lives no
        // longer than `self`, which keeps the mapping alive.
        unsafe { &*self.ptr.as_ptr().cast::<RawHeader>() }
    }

    /// `count` 32-bit words from byte `offset`, as atomics (for reading
    /// memory another process writes). `None` if out of range or misaligned.
    pub(crate) fn atomic_words(&self, offset: usize, count: usize) -> Option<&[AtomicU32]> {
        let bytes = count.checked_mul(4)?;
        let end = offset.checked_add(bytes)?;
        if end > self.len || !offset.is_multiple_of(4) {
            return None;
        }
        // SAFETY: `offset..end` lies inside the mapping and is 4-aligned (the
        // mapping itself is page-aligned). `AtomicU32` has the size and
        // alignment of `u32`, every bit pattern is valid, and atomic loads
        // make concurrent writes by the other process well defined. The
        // slice borrows `self`, which keeps the mapping alive.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(offset).cast::<AtomicU32>(), count)
        })
    }

    /// Bytes `offset..offset + len` for writing, on a writable mapping only.
    pub(crate) fn bytes_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        if !self.writable || end > self.len || offset < PAGE {
            // Below PAGE is the header, which is only ever touched as atomics.
            return None;
        }
        // SAFETY: the range is inside a writable mapping and past the header
        // page, which is accessed only through atomics, so this `&mut` is the
        // only Rust reference to these bytes while `self` is mutably borrowed.
        // The reading process observes them through its own mapping; it never
        // writes them.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this struct created and owns;
        // every view borrowed from it has ended since `drop` takes `&mut self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
