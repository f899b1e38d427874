//! The raw fd calls of the VM main loop.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of inherited descriptor `fd` if it is open.
///
/// Call once per number, on the main thread before any other thread
/// exists, for the fixed numbers of `protocol::fds` only: by the
/// supervisor contract nothing else in this process owns them.
pub(crate) fn take_inherited(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is a
    // valid argument (a closed one gives EBADF).
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    // SAFETY: the fd is open, and per the contract above nothing else owns
    // it, so this OwnedFd is its only owner and closes it exactly once.
    open.then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
