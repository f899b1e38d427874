//! Every raw libc call of the supervisor, in one place.

use std::io;
use std::os::fd::RawFd;

pub fn getuid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pid <= 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: kill takes plain integers; pid > 0 names one process.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In a forked child before exec: moves each `(src, dst)` fd to `dst`
/// (close-on-exec cleared) and closes the fixed numbers in `all` that get
/// nothing. Only async-signal-safe calls.
pub fn place_fds(placed: &[(RawFd, RawFd)], all: &[RawFd]) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // First out of the way (a source may sit on another's target), into a
    // fixed-size array: no allocation after fork.
    let mut high: [(RawFd, RawFd); 96] = [(-1, -1); 96];
    if placed.len() > high.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (slot, &(src, dst)) in high.iter_mut().zip(placed) {
        // SAFETY: fcntl on an fd this process owns.
        *slot = (
            check(unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 100) })?,
            dst,
        );
    }
    for &fd in all {
        match high[..placed.len()].iter().find(|&&(_, dst)| dst == fd) {
            Some(&(src, dst)) => {
                // SAFETY: both are valid fd numbers; dup2 clears
                // close-on-exec on the target.
                check(unsafe { libc::dup2(src, dst) })?;
            }
            // SAFETY: closing a number nothing in the child uses.
            None => unsafe {
                libc::close(fd);
            },
        }
    }
    Ok(())
}

/// A terminal in raw mode until dropped (for `vm console` and `run`).
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts `fd` into raw mode, or `None` if it is not a terminal.
    pub fn enter(fd: RawFd) -> Option<RawTerminal> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write.
        if unsafe { libc::tcgetattr(fd, &mut saved) } < 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } < 0 {
            return None;
        }
        Some(RawTerminal { fd, saved })
    }
}

impl RawTerminal {
    /// A copy of what `drop` restores, for a panic hook.
    pub fn restorer(&self) -> TermRestore {
        TermRestore {
            fd: self.fd,
            saved: self.saved,
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restorer().restore();
    }
}

/// Terminal attributes to put back.
#[derive(Clone, Copy)]
pub struct TermRestore {
    fd: RawFd,
    saved: libc::termios,
}

impl TermRestore {
    pub fn restore(&self) {
        // SAFETY: restores attributes read by tcgetattr on this fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
