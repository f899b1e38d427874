//! The raw fd calls of the VM main loop.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of inherited descriptor `fd` if it is open.
///
/// Call once per number, on the main thread before any other thread
/// exists, for the numbers of `protocol::fds` and the drive fds the
/// `WorkerConfig` names (fd 9 onwards) only: by the
/// supervisor contract nothing else in this process owns them.
pub(crate) fn take_inherited(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is a
    // valid argument (a closed one gives EBADF).
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    // SAFETY: the fd is open, and per the contract above nothing else owns
    // it, so this OwnedFd is its only owner and closes it exactly once.
    open.then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes every thread allocate from glibc's main arena (brk). A thread
/// arena's heap, when it shrinks, makes glibc open
/// `/proc/sys/vm/overcommit_memory` once, which the seccomp filter traps:
/// seen when the vCPU thread dropped the machine at power-off. The main
/// arena trims with `brk` alone. The worker has a handful of threads and
/// allocates little on hot paths, so one arena costs nothing measurable.
/// Main thread only, before any other thread exists.
pub(crate) fn single_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists, so no allocation races with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
