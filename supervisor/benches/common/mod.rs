//! Helpers both supervisor benchmarks share .

use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// The worker, built with the release profile in a target directory of
/// its own: target/release/bulkhead-worker is vm-worker's bench build
/// (with its test-only chaos feature), which this must not replace.
pub fn worker() -> PathBuf {
    let target = Path::new(BIN)
        .ancestors()
        .nth(2)
        .expect("target directory")
        .join("supervisor-bench");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "vm-worker",
            "--bin",
            "bulkhead-worker",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build for the worker");
    assert!(status.success(), "building bulkhead-worker failed");
    target.join("release").join("bulkhead-worker")
}

/// The Debian guest kit's kernel and initramfs, if `scripts/guest-kit` made them.
pub fn guest_kit() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("BULKHEAD_GUEST_KIT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bulkhead/guest-kit"))
        })?;
    let (kernel, initrd) = (dir.join("kernel"), dir.join("initrd"));
    (kernel.exists() && initrd.exists()).then_some((kernel, initrd))
}
