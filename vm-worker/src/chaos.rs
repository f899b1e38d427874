//! TEST ONLY (cargo feature `chaos`, refused in builds without debug
//! assertions): a device on I/O port 0x5C through which a guest makes the
//! worker misbehave the ways a compromised worker would, so the supervisor
//! and the sandbox can be tested against them.
//!
//! The worker will map [`ChaosDevice::port_write`] into the `Pc`'s port bus
//! when the VM main loop lands.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;

use crate::sandbox::inside;

/// The I/O port a guest writes an action number to.
pub const PORT: u16 = 0x5C;

/// What a write of `value` to [`PORT`] makes the worker do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChaosAction {
    Panic = 1,
    Segfault = 2,
    SpinForever = 3,
    AllocateWithoutBound = 4,
    GarbageFrames = 5,
    OpenHostFile = 6,
    Socket = 7,
    Execve = 8,
    Ptrace = 9,
    Kill = 10,
}

impl ChaosAction {
    pub const ALL: [ChaosAction; 10] = [
        ChaosAction::Panic,
        ChaosAction::Segfault,
        ChaosAction::SpinForever,
        ChaosAction::AllocateWithoutBound,
        ChaosAction::GarbageFrames,
        ChaosAction::OpenHostFile,
        ChaosAction::Socket,
        ChaosAction::Execve,
        ChaosAction::Ptrace,
        ChaosAction::Kill,
    ];

    pub fn from_value(value: u32) -> Option<ChaosAction> {
        Self::ALL.into_iter().find(|a| *a as u32 == value)
    }
}

/// Performs `action`. Returns only for actions that can return: garbage
/// frames (after sending them) and forbidden syscalls that were *not*
/// trapped (the error says what happened instead).
pub fn act(action: ChaosAction, control_fd: BorrowedFd<'_>) -> io::Result<()> {
    match action {
        ChaosAction::Panic => panic!("chaos: guest asked the worker to panic"),
        ChaosAction::Segfault => {
            // SAFETY: deliberately NOT safe: this store to address 0 is the
            // crash the guest asked for (SIGSEGV); the chaos feature exists
            // only in test builds.
            unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 0x5C) };
            Err(io::Error::other(
                "write through a null pointer did not fault",
            ))
        }
        ChaosAction::SpinForever => loop {
            std::hint::spin_loop();
        },
        ChaosAction::AllocateWithoutBound => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // vec![x; n] writes every byte, so the pages are really used.
                hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
            }
        }
        ChaosAction::GarbageFrames => {
            let mut out = File::from(control_fd.try_clone_to_owned()?);
            out.write_all(&garbage())?;
            out.flush()
        }
        ChaosAction::OpenHostFile => Err(inside::try_open("/etc/passwd")),
        ChaosAction::Socket => Err(inside::try_socket()),
        ChaosAction::Execve => Err(inside::try_execve("/bin/sh")),
        ChaosAction::Ptrace => Err(inside::try_ptrace(1)),
        ChaosAction::Kill => Err(inside::try_kill(1)),
    }
}

/// Frames no supervisor should accept: an absurd length prefix, a
/// truncated frame, and length-prefixed noise.
fn garbage() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::MAX.to_le_bytes());
    out.extend_from_slice(b"\xff\xfe not a frame");
    out.extend_from_slice(&64u32.to_le_bytes());
    out.extend_from_slice(b"short");
    let mut x: u32 = 0x9E37_79B9;
    out.extend_from_slice(&4096u32.to_le_bytes());
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

/// The port device: decodes guest writes to [`PORT`].
#[derive(Debug)]
pub struct ChaosDevice<'fd> {
    control_fd: BorrowedFd<'fd>,
}

impl<'fd> ChaosDevice<'fd> {
    pub fn new(control_fd: BorrowedFd<'fd>) -> Self {
        ChaosDevice { control_fd }
    }

    /// A guest OUT to `port`. Unknown ports and values are ignored, like
    /// writes to an unmapped ISA port.
    pub fn port_write(&mut self, port: u16, value: u32) -> io::Result<()> {
        match (port, ChaosAction::from_value(value)) {
            (PORT, Some(action)) => act(action, self.control_fd),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn values_map_to_actions() {
        assert_eq!(ChaosAction::from_value(1), Some(ChaosAction::Panic));
        assert_eq!(ChaosAction::from_value(10), Some(ChaosAction::Kill));
        assert_eq!(ChaosAction::from_value(0), None);
        assert_eq!(ChaosAction::from_value(11), None);
    }

    #[test]
    fn other_ports_and_values_are_ignored() {
        let stderr = io::stderr();
        let mut dev = ChaosDevice::new(stderr.as_fd());
        assert!(dev.port_write(0x80, 1).is_ok());
        assert!(dev.port_write(PORT, 0).is_ok());
    }

    #[test]
    #[should_panic(expected = "chaos")]
    fn panic_action_panics() {
        let stderr = io::stderr();
        let mut dev = ChaosDevice::new(stderr.as_fd());
        let _ = dev.port_write(PORT, 1);
    }

    #[test]
    fn garbage_starts_with_an_impossible_length() {
        assert_eq!(&garbage()[..4], &[0xff; 4]);
    }
}
