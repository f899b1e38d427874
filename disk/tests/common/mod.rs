//! Helpers shared by the disk crate's integration tests.
#![allow(dead_code)]

pub mod images;

use std::path::Path;
use std::process::Command;

/// Deterministic bytes: `len` bytes of a xorshift stream seeded by `seed`,
/// with every fourth 64 KiB run zero (so sparse formats skip some).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (i * 8 / 65536) % 4 != 3 {
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
    out
}

/// The path of `qemu-img`, or None (printing SKIPPED) when it is missing;
/// in CI (CI=true) a missing qemu-img fails the test.
pub fn qemu_img(test: &str) -> Option<&'static str> {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("qemu-img");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: qemu-img is missing (scripts/setup installs qemu-utils)");
    }
    eprintln!("SKIPPED {test}: qemu-img not installed");
    None
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Reads the whole disk.
pub fn read_all(disk: &mut disk::Disk) -> Vec<u8> {
    let mut out = vec![0u8; disk.size() as usize];
    for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
        disk.read_at(i as u64 * (1 << 20), chunk).unwrap();
    }
    out
}
