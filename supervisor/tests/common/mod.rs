//! Helpers every supervisor end-to-end test file shares.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
