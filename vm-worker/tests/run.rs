//! `bulkhead-worker run` end to end: this file plays the supervisor. It
//! creates the control and serial socketpairs and the sealed framebuffer
//! memfd, places them and the kernel image at the documented fd numbers
//! (protocol::fds) in the child, speaks the protocol, and watches serial
//! output, framebuffer and exit code of a tiny Multiboot guest assembled
//! here.
//!
//! As root with every protection available the worker runs in the full
//! sandbox; otherwise with `--no-sandbox` and a "SKIPPED" note for the
//! sandbox part (and the tests that need it are skipped).

mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Spawn, TIMEOUT, Worker, sandbox_available, status_field};
use iced_x86::code_asm::*;
use protocol::{BootSource, FbReader, FromWorker, GuestEvent, ToWorker, VmState, WorkerExit, fds};
use vm_worker::sandbox;

const WIDTH: u32 = 320;
const HEIGHT: u32 = 200;
const FB: u64 = 0xFD00_0000;
const RED: u32 = 0x00FF_0000;
const GREEN: u32 = 0x0000_FF00;
/// Green pixel position.
const GX: u32 = 100;
const GY: u32 = 70;

/// How the test guest ends after printing and drawing.
#[derive(Clone, Copy)]
enum Ending {
    /// ACPI S5 right away.
    PowerOff,
    /// Polls PM1_STS.PWRBTN_STS (bit 8), then S5.
    PowerButton,
    /// Writes this value to the chaos port 0x5C.
    Chaos(u8),
}

/// A Multiboot kernel (a.out kludge, loaded at 1 MiB) that prints
/// "HELLO\n" on COM1, draws a red pixel at (0, 0) and a green one at
/// (GX, GY), then ends as `ending` says.
fn kernel(ending: Ending) -> Vec<u8> {
    const ORG: u32 = 0x10_0000;
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = (1 << 16) | 0b10;
    let build = || -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(32)?;
        a.dd(&[
            MAGIC,
            FLAGS,
            0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
            ORG,      // header_addr
            ORG,      // load_addr
            0,        // load_end_addr: the whole file
            0,        // bss_end_addr: none
            ORG + 32, // entry: right after this header
        ])?;
        for &byte in b"HELLO\n" {
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
        a.mov(dword_ptr(FB), RED)?;
        a.mov(dword_ptr(FB + u64::from((GY * WIDTH + GX) * 4)), GREEN)?;
        match ending {
            Ending::PowerOff => {}
            Ending::PowerButton => {
                let mut poll = a.create_label();
                a.set_label(&mut poll)?;
                a.pause()?;
                a.mov(dx, 0x600)?;
                a.in_(ax, dx)?;
                a.test(ax, 0x100)?;
                a.jz(poll)?;
            }
            Ending::Chaos(v) => {
                a.mov(al, u32::from(v))?;
                a.out(0x5C, al)?;
            }
        }
        // PM1a_CNT: SLP_TYP = S5 (0), SLP_EN.
        a.mov(dx, 0x604)?;
        a.mov(ax, 0x2000)?;
        a.out(dx, ax)?;
        let mut hang = a.create_label();
        a.set_label(&mut hang)?;
        a.hlt()?;
        a.jmp(hang)?;
        a.assemble(u64::from(ORG))
    };
    build().expect("assemble the test kernel")
}

fn spawn_opts(test: &str, ending: Ending) -> Spawn {
    Spawn::new(
        &kernel(ending),
        sandbox_available(test),
        16,
        Some((WIDTH, HEIGHT)),
    )
}

fn expect_ready(w: &mut Worker) {
    let info = w.expect("Ready", |m| match m {
        FromWorker::Ready(info) => Some(*info),
        _ => None,
    });
    assert_eq!(info.ram_mib, 16);
    assert_eq!(
        info.video_mode.map(|m| (m.width, m.height)),
        Some((WIDTH, HEIGHT))
    );
}

fn pixel(frame: &protocol::Frame, x: u32, y: u32) -> u32 {
    let at = (y * frame.stride + x * 4) as usize;
    u32::from_le_bytes(frame.pixels[at..at + 4].try_into().unwrap()) & 0x00FF_FFFF
}

#[test]
fn guest_prints_draws_into_shared_memory_and_powers_off() {
    let mut w = Worker::spawn(spawn_opts(
        "guest_prints_draws_into_shared_memory_and_powers_off",
        Ending::PowerOff,
    ));
    expect_ready(&mut w);
    let mode = w.expect("VideoMode", |m| match m {
        FromWorker::VideoMode(mode) => Some(*mode),
        _ => None,
    });
    assert_eq!(
        (mode.width, mode.height, mode.stride),
        (WIDTH, HEIGHT, WIDTH * 4)
    );
    w.send(&ToWorker::Start);
    w.expect_state(VmState::Running);
    w.expect("Guest(PowerOff)", |m| {
        (*m == FromWorker::Guest(GuestEvent::PowerOff)).then_some(())
    });
    w.expect_serial("HELLO\n");

    let reader = FbReader::open(&w.memfd).unwrap();
    let frame = reader.snapshot().unwrap();
    assert_eq!((frame.width, frame.height), (WIDTH, HEIGHT));
    assert_eq!(pixel(&frame, 0, 0), RED);
    assert_eq!(pixel(&frame, GX, GY), GREEN);
    assert_eq!(pixel(&frame, 1, 0), 0);
    // The presenter published the drawing (the final present at exit at
    // the latest): the last frame's dirty tiles are the drawn ones.
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
    let frame = reader.snapshot().unwrap();
    assert!(
        frame.frame_counter >= 2,
        "frame counter {}",
        frame.frame_counter
    );

    let png = protocol::encode_png(&frame).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut png_reader = decoder.read_info().unwrap();
    let mut buf = vec![0; png_reader.output_buffer_size()];
    let info = png_reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    let bpp = info.color_type.samples();
    let at = ((GY * WIDTH + GX) as usize) * bpp;
    assert_eq!(&buf[at..at + 3], &[0x00, 0xFF, 0x00]);
}

#[test]
fn power_button_pause_resume_and_stats() {
    let mut w = Worker::spawn(spawn_opts(
        "power_button_pause_resume_and_stats",
        Ending::PowerButton,
    ));
    expect_ready(&mut w);
    w.send(&ToWorker::Start);
    w.expect_state(VmState::Running);
    w.expect_serial("HELLO\n");

    // The counter is updated after each slice of guest instructions.
    let deadline = Instant::now() + TIMEOUT;
    let stats = loop {
        w.send(&ToWorker::QueryStats);
        let stats = w.expect("Stats", |m| match m {
            FromWorker::Stats(s) => Some(*s),
            _ => None,
        });
        if stats.instructions > 0 || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(stats.instructions > 0, "{stats:?}");
    assert!(stats.frames >= 1, "{stats:?}");

    w.send(&ToWorker::Pause);
    w.expect_state(VmState::Paused);
    w.send(&ToWorker::Resume);
    w.expect_state(VmState::Running);

    w.send(&ToWorker::PowerButton);
    w.expect("Guest(PowerOff)", |m| {
        (*m == FromWorker::Guest(GuestEvent::PowerOff)).then_some(())
    });
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}

#[test]
fn a_garbage_frame_exits_with_protocol_error() {
    let mut w = Worker::spawn(spawn_opts(
        "a_garbage_frame_exits_with_protocol_error",
        Ending::PowerButton,
    ));
    expect_ready(&mut w);
    // A 3-byte body that is no ToWorker variant.
    w.control
        .write_all(&[3, 0, 0, 0, 0xFF, 0xFF, 0xFF])
        .unwrap();
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::ProtocolError.code()), "{err}");
}

#[test]
fn the_supervisor_hanging_up_ends_the_worker_cleanly() {
    let mut w = Worker::spawn(spawn_opts(
        "the_supervisor_hanging_up_ends_the_worker_cleanly",
        Ending::PowerButton,
    ));
    expect_ready(&mut w);
    w.send(&ToWorker::Start);
    w.control.shutdown(std::net::Shutdown::Write).unwrap();
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}

#[test]
fn shutdown_ends_the_worker_cleanly() {
    let mut w = Worker::spawn(spawn_opts(
        "shutdown_ends_the_worker_cleanly",
        Ending::PowerButton,
    ));
    expect_ready(&mut w);
    w.send(&ToWorker::Start);
    w.expect_state(VmState::Running);
    w.send(&ToWorker::Shutdown);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}

#[test]
fn an_invalid_config_exits_with_bad_setup() {
    let mut opts = spawn_opts("an_invalid_config_exits_with_bad_setup", Ending::PowerOff);
    opts.config.ram_mib = 0;
    let w = Worker::spawn(opts);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::BadSetup.code()), "{err}");
    assert!(err.contains("invalid WorkerConfig"), "{err}");
}

#[test]
fn a_corrupt_disk_image_exits_with_bad_setup_naming_the_drive() {
    use protocol::{DriveAttachment, DriveMedia, IdeSlot, ImageFormat};
    let test = "a_corrupt_disk_image_exits_with_bad_setup_naming_the_drive";
    // A VHD footer cookie on garbage: hostile bytes the worker must refuse
    // (inside its sandbox) without panicking.
    let mut image = vec![0xA5u8; 64 * 1024];
    let end = image.len() - 512;
    image[end..end + 8].copy_from_slice(b"conectix");
    let mut opts = spawn_opts(test, Ending::PowerOff);
    opts.drives.push(common::image_fd(&image));
    opts.config.drives.push(DriveAttachment {
        slot: IdeSlot::PrimarySlave,
        media: DriveMedia::Disk,
        format: ImageFormat::Vhd,
        fds: vec![protocol::fds::FIRST_EXTRA],
        read_only: true,
    });
    let w = Worker::spawn(opts);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::BadSetup.code()), "{err}");
    assert!(err.contains("the primary-slave image (fd 9)"), "{err}");
}

#[test]
fn guest_opening_a_host_file_through_the_chaos_port_is_trapped() {
    let test = "guest_opening_a_host_file_through_the_chaos_port_is_trapped";
    let opts = spawn_opts(test, Ending::Chaos(6));
    if !opts.sandbox {
        eprintln!("SKIPPED {test}: needs the sandbox's seccomp filter");
        return;
    }
    let mut w = Worker::spawn(opts);
    expect_ready(&mut w);
    w.send(&ToWorker::Start);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::SeccompViolation.code()), "{err}");
    assert_eq!(
        protocol::parse_seccomp_report(&err),
        Some(libc::SYS_openat),
        "{err}"
    );
}

/// Where scripts/guest-kit keeps the kit: `$BULKHEAD_GUEST_KIT`, else
/// `${XDG_CACHE_HOME:-~/.cache}/bulkhead/guest-kit` (as the script says).
fn guest_kit_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BULKHEAD_GUEST_KIT") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("neither BULKHEAD_GUEST_KIT nor XDG_CACHE_HOME nor HOME is set");
    cache.join("bulkhead/guest-kit")
}

/// The real Debian guest kit (scripts/guest-kit: Debian 12's i386 kernel
/// and a busybox initramfs) booted by the worker to its ready marker on
/// the serial socket, then a command typed into the guest's shell over the
/// same channel. 35-60 s. CI builds the kit before the tests; without it
/// this test fails (it never passes silently).
///
/// With the sandbox, the VM process is also checked from the host while
/// the guest runs: its own pid namespace (pid 1 there), no_new_privs,
/// seccomp filter mode, no effective capabilities, the per-VM uid. The
/// confinement seen from inside (empty read-only root, only `lo`, every
/// namespace) is what tests/sandbox.rs `sandbox_check_reports_full_confinement`
/// asserts: `run` and `sandbox-check` enter the same `sandbox::enter`.
/// (Typing `cat /proc/self/status` into the guest would show the guest
/// shell's status, not the worker's.)
#[test]
fn debian_guest_kit_boots_to_its_ready_marker() {
    boot_debian("debian_guest_kit_boots_to_its_ready_marker", false);
}

/// The same through the CPU's JIT: the worker's seccomp filter is then
/// `worker_jit`, without which the JIT's first mprotect to PROT_EXEC would
/// trap (exit 67).
#[test]
fn debian_guest_kit_boots_through_the_jit_in_the_sandbox() {
    boot_debian(
        "debian_guest_kit_boots_through_the_jit_in_the_sandbox",
        true,
    );
}

fn boot_debian(test: &str, jit: bool) {
    let kit = guest_kit_dir();
    let (kernel, initrd) = (kit.join("kernel"), kit.join("initrd"));
    let present = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    assert!(
        present(&kernel) && present(&initrd),
        "{test}: the guest kit is missing: no kernel and initrd in {}. Run scripts/guest-kit \
         first (it builds the kit there; set BULKHEAD_GUEST_KIT to use another directory).",
        kit.display()
    );
    let open = |p: &Path| -> OwnedFd { std::fs::File::open(p).unwrap().into() };
    let mut opts = spawn_opts(test, Ending::PowerOff);
    opts.kernel = open(&kernel);
    opts.initrd = Some(open(&initrd));
    opts.jit = jit;
    opts.config.ram_mib = 256;
    opts.config.boot = BootSource::Linux {
        kernel_fd: fds::KERNEL,
        initrd_fd: Some(fds::INITRD),
        cmdline: "console=ttyS0".into(),
    };
    let sandboxed = opts.sandbox;
    let mut w = Worker::spawn(opts);
    w.serial
        .set_read_timeout(Some(Duration::from_secs(600)))
        .unwrap();
    let ready = w.expect("Ready", |m| match m {
        FromWorker::Ready(info) => Some(*info),
        _ => None,
    });
    assert_eq!(ready.ram_mib, 256);
    w.send(&ToWorker::Start);
    let start = Instant::now();
    w.expect_serial("BULKHEAD-GUEST-READY");
    eprintln!("{test}: guest ready after {:?}", start.elapsed());

    // Serial input reaches the guest's shell; its answer comes back.
    w.serial.write_all(b"echo sum=$((6*7))\n").unwrap();
    w.expect_serial("sum=42");

    if sandboxed {
        let vm = w.vm_pid();
        let field = |key| status_field(vm, key).unwrap_or_else(|| panic!("{key} of {vm}"));
        let nspid = field("NSpid");
        assert_eq!(
            nspid.split_whitespace().last(),
            Some("1"),
            "pid 1 of its own pid namespace: NSpid {nspid}"
        );
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(field("Seccomp"), "2", "seccomp filter mode");
        assert_eq!(field("CapEff"), "0000000000000000");
        let uid = field("Uid");
        assert!(
            uid.split_whitespace()
                .all(|u| u.parse::<u32>().unwrap() >= sandbox::ID_BASE),
            "per-VM uid, got {uid}"
        );
        let host_pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
        assert_ne!(
            std::fs::read_link(format!("/proc/{vm}/ns/pid")).unwrap(),
            host_pidns
        );
    }

    w.send(&ToWorker::Shutdown);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}
