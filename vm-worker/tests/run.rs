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

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use protocol::{
    BootSource, DebugFlags, FbReader, FramebufferSize, FromWorker, GuestEvent, Hello, ToWorker,
    VmState, WorkerConfig, WorkerExit, fds,
};
use vm_worker::sandbox::{self, cgroup};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-worker");
const WIDTH: u32 = 320;
const HEIGHT: u32 = 200;
const FB: u64 = 0xFD00_0000;
const RED: u32 = 0x00FF_0000;
const GREEN: u32 = 0x0000_FF00;
/// Green pixel position.
const GX: u32 = 100;
const GY: u32 = 70;
const TIMEOUT: Duration = Duration::from_secs(60);

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

/// Whether this host gives the full sandbox (root, every protection).
fn sandbox_available(test: &str) -> bool {
    let host = sandbox::probe();
    if !host.running_as_root {
        eprintln!("SKIPPED the sandbox part of {test}: not root; running with --no-sandbox");
        return false;
    }
    let missing = host.missing();
    if !missing.is_empty() {
        eprintln!("SKIPPED the sandbox part of {test}: this host lacks {missing:?}");
        return false;
    }
    true
}

/// A running worker as the supervisor holds it.
struct Worker {
    child: Child,
    control: UnixStream,
    serial: UnixStream,
    memfd: OwnedFd,
    cgroup: Option<String>,
}

/// Options for [`Worker::spawn`].
struct Spawn {
    kernel: OwnedFd,
    initrd: Option<OwnedFd>,
    sandbox: bool,
    config: WorkerConfig,
}

impl Spawn {
    fn new(test: &str, ending: Ending) -> Spawn {
        Spawn {
            kernel: image_fd(&kernel(ending)),
            initrd: None,
            sandbox: sandbox_available(test),
            config: WorkerConfig {
                ram_mib: 16,
                boot: BootSource::Linux {
                    kernel_fd: fds::KERNEL,
                    initrd_fd: None,
                    cmdline: String::new(),
                },
                framebuffer: Some(FramebufferSize {
                    width: WIDTH,
                    height: HEIGHT,
                }),
                serial: true,
                debug: DebugFlags::default(),
            },
        }
    }
}

/// The kernel image as a read-only fd (a file unlinked right away).
fn image_fd(bytes: &[u8]) -> OwnedFd {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "bulkhead-run-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file.into()
}

impl Worker {
    /// Spawns `bulkhead-worker run` with the fds in place and does the
    /// handshake (hellos and the config); does not wait for Ready.
    fn spawn(opts: Spawn) -> Worker {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let (control, control_theirs) = UnixStream::pair().unwrap();
        let (serial, serial_theirs) = UnixStream::pair().unwrap();
        let memfd = protocol::framebuffer::create(WIDTH, HEIGHT).unwrap();
        let memfd_theirs = memfd.try_clone().unwrap();
        let (kernel, initrd) = (opts.kernel, opts.initrd);

        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let cgroup = if opts.sandbox {
            let name = format!("run-test-{}-{n}", std::process::id());
            let uid = sandbox::ID_BASE + 7000 + (std::process::id() % 1000) * 20 + n;
            cmd.args(["--uid", &uid.to_string(), "--cgroup", &name]);
            Some(name)
        } else {
            cmd.arg("--no-sandbox");
            None
        };
        let mut placed: Vec<(RawFd, RawFd)> = vec![
            (control_theirs.as_raw_fd(), fds::CONTROL),
            (memfd_theirs.as_raw_fd(), fds::FRAMEBUFFER),
            (serial_theirs.as_raw_fd(), fds::SERIAL_COM1),
            (kernel.as_raw_fd(), fds::KERNEL),
        ];
        if let Some(initrd) = &initrd {
            placed.push((initrd.as_raw_fd(), fds::INITRD));
        }
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) on fds
        // this process owns, between fork and exec.
        unsafe {
            cmd.pre_exec(move || place_fds(&placed));
        }
        let child = cmd.spawn().unwrap();
        drop((control_theirs, serial_theirs, memfd_theirs, kernel, initrd));
        control.set_read_timeout(Some(TIMEOUT)).unwrap();
        serial.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut w = Worker {
            child,
            control,
            serial,
            memfd,
            cgroup,
        };
        protocol::write_frame(&mut w.control, &Hello::current()).unwrap();
        protocol::read_hello(&mut w.control).unwrap();
        protocol::write_frame(&mut w.control, &opts.config).unwrap();
        w
    }

    fn send(&mut self, msg: &ToWorker) {
        protocol::write_frame(&mut self.control, msg).unwrap();
    }

    /// The next frame that `want` accepts, skipping others (log lines,
    /// state changes not asked for).
    fn expect<T>(&mut self, what: &str, mut want: impl FnMut(&FromWorker) -> Option<T>) -> T {
        loop {
            let msg: FromWorker = protocol::read_frame(&mut self.control)
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}\n{}", self.stderr_now()));
            if let Some(t) = want(&msg) {
                return t;
            }
        }
    }

    fn expect_ready(&mut self) {
        let info = self.expect("Ready", |m| match m {
            FromWorker::Ready(info) => Some(*info),
            _ => None,
        });
        assert_eq!(info.ram_mib, 16);
        assert_eq!(
            info.video_mode.map(|m| (m.width, m.height)),
            Some((WIDTH, HEIGHT))
        );
    }

    fn expect_state(&mut self, state: VmState) {
        self.expect(&format!("State({state:?})"), |m| {
            (*m == FromWorker::State(state)).then_some(())
        });
    }

    /// Reads the serial socket until `text` has arrived.
    fn expect_serial(&mut self, text: &str) {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains(text) {
            let n = self
                .serial
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("serial: {e}; so far {got:?}"));
            assert!(
                n > 0,
                "serial closed; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit code, and stderr (read after exit).
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), err)
    }

    fn stderr_now(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        format!("worker stderr:\n{err}")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(name) = &self.cgroup {
            let root = Path::new(cgroup::DEFAULT_ROOT);
            let deadline = Instant::now() + Duration::from_secs(2);
            while cgroup::remove(root, name).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// In the child: put each fd at its number, close the optional ones that
/// are not passed (an outer harness may have leaked fds there).
fn place_fds(placed: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // First out of the way (a source may sit on another's target)...
    let mut high = Vec::with_capacity(placed.len());
    for &(src, dst) in placed {
        // SAFETY: fcntl on an fd this process owns.
        high.push((
            check(unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 100) })?,
            dst,
        ));
    }
    // ...then into place (dup2 clears close-on-exec on the target).
    for fd in fds::ALL.iter().map(|&(fd, _)| fd) {
        match high.iter().find(|&&(_, dst)| dst == fd) {
            Some(&(src, dst)) => {
                // SAFETY: both fds are valid numbers in this process.
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

fn pixel(frame: &protocol::Frame, x: u32, y: u32) -> u32 {
    let at = (y * frame.stride + x * 4) as usize;
    u32::from_le_bytes(frame.pixels[at..at + 4].try_into().unwrap()) & 0x00FF_FFFF
}

#[test]
fn guest_prints_draws_into_shared_memory_and_powers_off() {
    let mut w = Worker::spawn(Spawn::new(
        "guest_prints_draws_into_shared_memory_and_powers_off",
        Ending::PowerOff,
    ));
    w.expect_ready();
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
    let mut w = Worker::spawn(Spawn::new(
        "power_button_pause_resume_and_stats",
        Ending::PowerButton,
    ));
    w.expect_ready();
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
    let mut w = Worker::spawn(Spawn::new(
        "a_garbage_frame_exits_with_protocol_error",
        Ending::PowerButton,
    ));
    w.expect_ready();
    // A 3-byte body that is no ToWorker variant.
    w.control
        .write_all(&[3, 0, 0, 0, 0xFF, 0xFF, 0xFF])
        .unwrap();
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::ProtocolError.code()), "{err}");
}

#[test]
fn the_supervisor_hanging_up_ends_the_worker_cleanly() {
    let mut w = Worker::spawn(Spawn::new(
        "the_supervisor_hanging_up_ends_the_worker_cleanly",
        Ending::PowerButton,
    ));
    w.expect_ready();
    w.send(&ToWorker::Start);
    w.control.shutdown(std::net::Shutdown::Write).unwrap();
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}

#[test]
fn shutdown_ends_the_worker_cleanly() {
    let mut w = Worker::spawn(Spawn::new(
        "shutdown_ends_the_worker_cleanly",
        Ending::PowerButton,
    ));
    w.expect_ready();
    w.send(&ToWorker::Start);
    w.expect_state(VmState::Running);
    w.send(&ToWorker::Shutdown);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}

#[test]
fn an_invalid_config_exits_with_bad_setup() {
    let mut opts = Spawn::new("an_invalid_config_exits_with_bad_setup", Ending::PowerOff);
    opts.config.ram_mib = 0;
    let w = Worker::spawn(opts);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::BadSetup.code()), "{err}");
    assert!(err.contains("invalid WorkerConfig"), "{err}");
}

#[test]
fn guest_opening_a_host_file_through_the_chaos_port_is_trapped() {
    let test = "guest_opening_a_host_file_through_the_chaos_port_is_trapped";
    let opts = Spawn::new(test, Ending::Chaos(6));
    if !opts.sandbox {
        eprintln!("SKIPPED {test}: needs the sandbox's seccomp filter");
        return;
    }
    let mut w = Worker::spawn(opts);
    w.expect_ready();
    w.send(&ToWorker::Start);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::SeccompViolation.code()), "{err}");
    assert_eq!(
        protocol::parse_seccomp_report(&err),
        Some(libc::SYS_openat),
        "{err}"
    );
}

/// The real Debian guest kit (scripts/guest-kit) booted by the worker to
/// its ready marker on the serial socket. Slow (minutes): run with
/// `BULKHEAD_GUEST_KIT=DIR cargo test -p vm-worker --test run -- --ignored`.
#[test]
#[ignore = "boots a real Linux guest (minutes); needs BULKHEAD_GUEST_KIT"]
fn debian_guest_kit_boots_to_its_ready_marker() {
    let test = "debian_guest_kit_boots_to_its_ready_marker";
    if std::env::var_os("BULKHEAD_GUEST_KIT").is_none() {
        eprintln!("SKIPPED {test}: set BULKHEAD_GUEST_KIT to the guest kit directory");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest-kit");
    let out = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/guest-kit failed");
    let paths = String::from_utf8(out.stdout).unwrap();
    let path = |key: &str| {
        paths
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("guest-kit printed no {key}"))
            .to_string()
    };
    let open = |p: String| -> OwnedFd { std::fs::File::open(p).unwrap().into() };
    let mut opts = Spawn::new(test, Ending::PowerOff);
    opts.kernel = open(path("kernel="));
    opts.initrd = Some(open(path("initrd=")));
    opts.config.ram_mib = 256;
    opts.config.boot = BootSource::Linux {
        kernel_fd: fds::KERNEL,
        initrd_fd: Some(fds::INITRD),
        cmdline: "console=ttyS0".into(),
    };
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
    w.send(&ToWorker::Shutdown);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}
