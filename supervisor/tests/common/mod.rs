//! Helpers every supervisor end-to-end test file shares.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
