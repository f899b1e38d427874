//! The file descriptors a worker inherits, at fixed numbers.
//!
//! The supervisor opens everything (the broker model: a worker opens no
//! paths and creates no sockets) and places each descriptor at its number
//! before exec; the worker's sandbox closes every other descriptor.
//!
//! | fd | constant | what | present |
//! |---:|----------|------|---------|
//! | 0  | —        | `/dev/null` | always |
//! | 1  | —        | worker stdout (captured by the supervisor) | always |
//! | 2  | —        | worker stderr (captured; carries the seccomp report line) | always |
//! | 3  | [`CONTROL`] | control socket: framed [`crate::ToWorker`] / [`crate::FromWorker`] | always |
//! | 4  | [`FRAMEBUFFER`] | sealed framebuffer memfd ([`crate::framebuffer`]) | with a display |
//! | 5  | [`SERIAL_COM1`] | COM1 byte stream, both directions (a socket) | with `serial` |
//! | 6  | [`KERNEL`] | bzImage, read-only | Linux boot |
//! | 7  | [`INITRD`] | initrd, read-only | Linux boot with an initrd |
//! | 8  | [`FIRMWARE`] | BIOS image, read-only | firmware boot |
//! | 9… | [`FIRST_EXTRA`] | disk images in [`crate::WorkerConfig::drives`] order (each image, then its VHD parents); later NIC channels | as configured |

use std::os::fd::RawFd;

/// The control socket.
pub const CONTROL: RawFd = 3;
/// The framebuffer memfd.
pub const FRAMEBUFFER: RawFd = 4;
/// COM1's byte stream.
pub const SERIAL_COM1: RawFd = 5;
/// The kernel image (direct Linux boot).
pub const KERNEL: RawFd = 6;
/// The initrd (direct Linux boot).
pub const INITRD: RawFd = 7;
/// The firmware image (BIOS boot).
pub const FIRMWARE: RawFd = 8;
/// The first number for descriptors added later (disks, NICs).
pub const FIRST_EXTRA: RawFd = 9;

/// Every fixed number with its name, in order.
pub const ALL: [(RawFd, &str); 6] = [
    (CONTROL, "control"),
    (FRAMEBUFFER, "framebuffer"),
    (SERIAL_COM1, "serial-com1"),
    (KERNEL, "kernel"),
    (INITRD, "initrd"),
    (FIRMWARE, "firmware"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_numbers_are_distinct_consecutive_and_above_stdio() {
        let numbers: Vec<RawFd> = ALL.iter().map(|&(fd, _)| fd).collect();
        assert_eq!(numbers, (3..FIRST_EXTRA).collect::<Vec<_>>());
    }
}
