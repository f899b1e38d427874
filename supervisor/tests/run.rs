//! `bulkhead run`: a real worker in the real sandbox (as root; otherwise
//! each test prints a SKIPPED line), running tiny Multiboot guests
//! assembled here, with stdin/stdout piped.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use iced_x86::code_asm::*;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const TIMEOUT: Duration = Duration::from_secs(60);
const FB: u64 = 0xFD00_0000;
const FB_WIDTH: u32 = 1024;
const GREEN: u32 = 0x0000_FF00;
const GX: u32 = 10;
const GY: u32 = 5;

#[derive(Clone, Copy)]
enum Guest {
    /// Prints "HELLO\n", draws a green pixel, powers off.
    Hello,
    /// Executes UD2 with no IDT: a triple fault.
    TripleFault,
    /// Prints "READY\n", then echoes COM1 input; '!' powers off.
    Echo,
}

/// A Multiboot kernel (a.out kludge at 1 MiB).
fn kernel(guest: Guest) -> Vec<u8> {
    const ORG: u32 = 0x10_0000;
    let build = || -> Result<Vec<u8>, IcedError> {
        let mut a = common::multiboot_assembler()?;
        // Sends AL to COM1 once the transmitter is empty.
        let mut putc = a.create_label();
        let mut start = a.create_label();
        a.jmp(start)?;
        a.set_label(&mut putc)?;
        a.mov(bl, al)?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(dx, 0x3FD)?;
        a.in_(al, dx)?;
        a.test(al, 0x20)?;
        a.jz(wait)?;
        a.mov(dx, 0x3F8)?;
        a.mov(al, bl)?;
        a.out(dx, al)?;
        a.ret()?;
        a.set_label(&mut start)?;
        a.mov(esp, 0x9_0000u32)?;
        let print = |a: &mut CodeAssembler, text: &[u8]| -> Result<(), IcedError> {
            for &byte in text {
                a.mov(al, byte as u32)?;
                a.call(putc)?;
            }
            Ok(())
        };
        let power_off = |a: &mut CodeAssembler| -> Result<(), IcedError> {
            a.mov(dx, 0x604)?;
            a.mov(ax, 0x2000)?;
            a.out(dx, ax)?;
            let mut hang = a.create_label();
            a.set_label(&mut hang)?;
            a.hlt()?;
            a.jmp(hang)
        };
        match guest {
            Guest::Hello => {
                print(&mut a, b"HELLO\n")?;
                a.mov(dword_ptr(FB + u64::from((GY * FB_WIDTH + GX) * 4)), GREEN)?;
                power_off(&mut a)?;
            }
            Guest::TripleFault => a.ud2()?,
            Guest::Echo => {
                print(&mut a, b"READY\n")?;
                let mut poll = a.create_label();
                let mut off = a.create_label();
                a.set_label(&mut poll)?;
                a.mov(dx, 0x3FD)?;
                a.in_(al, dx)?;
                a.test(al, 0x01)?;
                a.jz(poll)?;
                a.mov(dx, 0x3F8)?;
                a.in_(al, dx)?;
                a.cmp(al, b'!' as u32)?;
                a.je(off)?;
                a.call(putc)?;
                a.jmp(poll)?;
                a.set_label(&mut off)?;
                power_off(&mut a)?;
            }
        }
        a.assemble(u64::from(ORG))
    };
    build().expect("assemble the test kernel")
}

/// The worker binary, built once for this test run.
fn worker() -> PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER
        .get_or_init(|| common::build_worker("supervisor-tests", &[]))
        .clone()
}

/// `bulkhead run --kernel <guest> --memory 16 EXTRA...` (see [`common::Foreground`]).
struct Run;

impl Run {
    fn start(guest: Guest, extra: &[&str]) -> common::Foreground {
        let dir = tempfile::tempdir().unwrap();
        let kernel_path = dir.path().join("kernel.bin");
        std::fs::write(&kernel_path, kernel(guest)).unwrap();
        let mut args = vec!["--kernel", kernel_path.to_str().unwrap(), "--memory", "16"];
        args.extend_from_slice(extra);
        common::Foreground::start(&args, &worker(), dir, TIMEOUT)
    }
}

fn skip_unless_root(test: &str) -> bool {
    if !common::is_root() {
        eprintln!("SKIPPED {test}: the full sandbox needs root");
    }
    !common::is_root()
}

/// The pixel the guest draws, from a PNG.
fn pixel(png: &[u8]) -> u32 {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.width, FB_WIDTH);
    let bpp = info.color_type.samples();
    let at = ((GY * info.width + GX) as usize) * bpp;
    u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]])
}

#[test]
fn a_guest_that_powers_off_exits_0_with_its_output_and_screenshot() {
    if skip_unless_root("a_guest_that_powers_off_exits_0_with_its_output_and_screenshot") {
        return;
    }
    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("screen.png");
    let run = Run::start(Guest::Hello, &["--screenshot", shot.to_str().unwrap()]);

    let (status, stdout, stderr) = run.finish();

    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stdout.contains("HELLO"), "stdout: {stdout:?}");
    assert!(stderr.contains("guest powered off"), "stderr: {stderr}");
    assert_eq!(pixel(&std::fs::read(&shot).unwrap()), GREEN);
}

#[test]
fn a_triple_fault_exits_3() {
    if skip_unless_root("a_triple_fault_exits_3") {
        return;
    }
    let run = Run::start(Guest::TripleFault, &[]);

    let (status, _, stderr) = run.finish();

    assert_eq!(status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains("triple fault"), "stderr: {stderr}");
}

#[test]
fn stdin_reaches_the_guest_and_its_echo_comes_back_on_stdout() {
    if skip_unless_root("stdin_reaches_the_guest_and_its_echo_comes_back_on_stdout") {
        return;
    }
    let mut run = Run::start(Guest::Echo, &[]);
    run.expect("READY\n");

    run.write(b"ping \x1dq pong\n");
    run.expect("ping \x1dq pong\n");
    run.write(b"!");
    let (status, _, stderr) = run.finish();

    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn a_sandbox_violation_exits_4_naming_the_syscall() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = dir.path().join("hostile-worker");
    std::fs::write(
        &hostile,
        "#!/bin/sh\necho 'bulkhead-worker: seccomp violation: syscall 41' >&2\nexit 67\n",
    )
    .unwrap();
    std::fs::set_permissions(&hostile, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel_path = dir.path().join("kernel.bin");
    std::fs::write(&kernel_path, kernel(Guest::Hello)).unwrap();

    let out = Command::new(BIN)
        .args(["run", "--allow-weaker-sandbox", "--kernel"])
        .arg(&kernel_path)
        .env("BULKHEAD_WORKER", &hostile)
        .stdin(Stdio::null())
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {stderr}");
    assert!(
        stderr.contains("forbidden syscall socket (41)"),
        "stderr: {stderr}"
    );
}

#[test]
fn without_root_run_refuses_and_names_what_is_missing() {
    let test = "without_root_run_refuses_and_names_what_is_missing";
    if !common::is_root() {
        eprintln!("SKIPPED {test}: needs root to run as another uid");
        return;
    }
    let nobody = 65534;
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--kernel", "/nonexistent/kernel"])
        .env("BULKHEAD_WORKER", worker())
        .stdin(Stdio::null());
    // SAFETY: setgroups/setgid/setuid only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(nobody) != 0
                || libc::setuid(nobody) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let out = cmd.output().unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("needs root"), "stderr: {stderr}");
    assert!(
        stderr.contains("--allow-weaker-sandbox"),
        "stderr: {stderr}"
    );
}
