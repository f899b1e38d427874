//! Helpers every supervisor end-to-end test file shares.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iced_x86::IcedError;
use iced_x86::code_asm::*;

/// Whether the tests run as root (the full worker sandbox needs it).
pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Builds `bulkhead-worker` with the extra cargo `args` into
/// `target/<subdir>`, and returns the binary. Each kind of build gets a
/// target directory of its own: `target/debug/bulkhead-worker` is
/// vm-worker's test build (with its test-only chaos feature), and no build
/// may replace another's binary while tests run it.
pub fn build_worker(subdir: &str, args: &[&str]) -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_bulkhead"))
        .ancestors()
        .nth(2)
        .expect("target directory")
        .join(subdir);
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "vm-worker", "--bin", "bulkhead-worker"])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build for the worker");
    assert!(
        status.success(),
        "building bulkhead-worker ({subdir}) failed"
    );
    target.join("debug").join("bulkhead-worker")
}

/// Where the tiny test kernels load and start (Multiboot, a.out kludge).
pub const KERNEL_ORG: u32 = 0x10_0000;

/// A 32-bit assembler for a tiny Multiboot kernel at [`KERNEL_ORG`], with
/// its header (a.out kludge: the whole file loads at the origin, entry
/// right after the 32-byte header) already emitted.
pub fn multiboot_assembler() -> Result<CodeAssembler, IcedError> {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = (1 << 16) | 0b10;
    let mut a = CodeAssembler::new(32)?;
    a.dd(&[
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
        KERNEL_ORG,
        KERNEL_ORG,
        0,
        0,
        KERNEL_ORG + 32,
    ])?;
    Ok(a)
}

/// Emits code that prints `text` on COM1, polling the transmitter.
pub fn print_com1(a: &mut CodeAssembler, text: &[u8]) -> Result<(), IcedError> {
    for &byte in text {
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(dx, 0x3FD)?;
        a.in_(al, dx)?;
        a.test(al, 0x20)?;
        a.jz(wait)?;
        a.mov(dx, 0x3F8)?;
        a.mov(al, byte as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// `bulkhead run ARGS...` with every stdio piped and `BULKHEAD_WORKER` set;
/// stdout arrives on the channel. `dir` (the guest's files) lives as long
/// as the run.
pub struct Foreground {
    pub child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
    timeout: Duration,
    pub dir: tempfile::TempDir,
}

impl Foreground {
    pub fn start(
        args: &[&str],
        worker: &Path,
        dir: tempfile::TempDir,
        timeout: Duration,
    ) -> Foreground {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("run")
            .args(args)
            .env("BULKHEAD_WORKER", worker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bulkhead run");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Foreground {
            child,
            stdout: rx,
            seen: Vec::new(),
            timeout,
            dir,
        }
    }

    /// Reads stdout until it contains `text` (the seen text is kept, so
    /// call [`Foreground::forget`] between commands).
    pub fn expect(&mut self, text: &str) {
        self.expect_any(&[text]);
    }

    /// Reads stdout until it contains one of `texts`; returns its index.
    pub fn expect_any(&mut self, texts: &[&str]) -> usize {
        let deadline = Instant::now() + self.timeout;
        loop {
            let seen = String::from_utf8_lossy(&self.seen);
            if let Some(i) = texts.iter().position(|t| seen.contains(t)) {
                return i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(bytes) => self.seen.extend_from_slice(&bytes),
                Err(_) => panic!("none of {texts:?} on stdout; got {seen:?}"),
            }
        }
    }

    /// The stdout seen since the last [`Foreground::forget`].
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Drops the stdout seen so far (so `expect` looks only at what comes next).
    pub fn forget(&mut self) {
        self.seen.clear();
    }

    pub fn write(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the exit; returns the status, all stdout and stderr.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("bulkhead run did not exit within {:?}", self.timeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(bytes) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            self.seen.extend_from_slice(&bytes);
        }
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (
            status,
            String::from_utf8_lossy(&self.seen).into_owned(),
            stderr,
        )
    }
}

/// The Debian guest kit's kernel and initramfs (`scripts/guest-kit`), or a
/// failure that says how to get them.
pub fn guest_kit() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("BULKHEAD_GUEST_KIT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bulkhead/guest-kit"))
        })
        .expect("HOME or BULKHEAD_GUEST_KIT");
    let (kernel, initrd) = (dir.join("kernel"), dir.join("initrd"));
    assert!(
        kernel.exists() && initrd.exists(),
        "the Debian guest kit is missing in {}: run scripts/guest-kit first (CI does)",
        dir.display()
    );
    (kernel, initrd)
}
