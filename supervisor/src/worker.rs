//! One worker run: open the images (the broker model), create the
//! sockets and the sealed framebuffer, spawn `bulkhead-worker run` with
//! everything at its fd number, do the handshake, then pump control
//! frames, serial bytes and stderr until the worker exits; classify the
//! exit, keep forensics and hand the result to the restart policy.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{
    BootSource, DebugFlags, FbReader, FramebufferSize, FromWorker, GuestEvent, Hello, ToWorker,
    VmState, WorkerConfig, WorkerExit, WorkerOutcome, fds,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::api::{CrashRecord, ExitRecord};
use crate::config::VmDef;
use crate::daemon::{self, Daemon, Status};
use crate::serial::{SerialLog, TAIL};

/// The framebuffer every VM gets (the largest mode it can set).
pub const FB_WIDTH: u32 = 1024;
pub const FB_HEIGHT: u32 = 768;
/// Hello and Ready must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// More control frames than this per second is a flood: a violation.
const MAX_FRAMES_PER_SEC: u32 = 2000;
/// Stderr kept per run (it carries the seccomp report line).
const STDERR_TAIL: usize = 16 * 1024;

/// A spawned worker, before the handshake.
pub struct Prepared {
    pub child: tokio::process::Child,
    pub pid: Option<u32>,
    control: UnixStream,
    serial: UnixStream,
    pub memfd: Arc<OwnedFd>,
    pub control_tx: mpsc::Sender<Vec<u8>>,
    control_rx: mpsc::Receiver<Vec<u8>>,
    cgroup: String,
    /// The drives, their images already placed at fd 9 onwards.
    drives: Vec<protocol::DriveAttachment>,
}

/// What the supervise task needs from the VM table.
pub struct RunCtx {
    pub daemon: Arc<Daemon>,
    pub name: String,
    pub generation: u64,
    pub console: broadcast::Sender<Arc<[u8]>>,
    pub serial_in: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>,
    pub log: Arc<Mutex<SerialLog>>,
    pub def: VmDef,
}

/// How to spawn one worker: everything [`prepare`] needs besides the VM
/// definition. The daemon fills it from its options and the VM's slot;
/// `bulkhead run` from its command line.
pub struct Spawn<'a> {
    /// The `bulkhead-worker` binary.
    pub worker: &'a Path,
    /// The worker's own uid and gid (so workers cannot signal each other).
    pub uid: u32,
    /// The worker's cgroup, under `bulkhead/`.
    pub cgroup: &'a str,
    /// Pass `--allow-weaker` (the operator's explicit choice).
    pub allow_weaker: bool,
    /// Where the VM's undo disks live.
    pub undo_dir: PathBuf,
}

impl<'a> Spawn<'a> {
    /// The daemon's spawn of the VM `def` in `slot`.
    pub fn for_daemon(d: &'a Daemon, def: &'a VmDef, slot: u32) -> Spawn<'a> {
        Spawn {
            worker: &d.opts.worker,
            uid: d.opts.uid_base.saturating_add(slot),
            cgroup: &def.name,
            allow_weaker: d.opts.allow_weaker_sandbox,
            undo_dir: d.state.undo(&def.name),
        }
    }
}

/// The worker binary: `BULKHEAD_WORKER`, else `bulkhead-worker` next to
/// this executable.
pub fn find_worker() -> PathBuf {
    if let Some(p) = std::env::var_os("BULKHEAD_WORKER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("bulkhead-worker")))
        .unwrap_or_else(|| PathBuf::from("bulkhead-worker"))
}

fn open_image(path: &Path) -> Result<OwnedFd, String> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// Opens the images, creates the channels and spawns the worker. Must run
/// on a thread that outlives the worker (the worker's parent-death signal
/// fires when the spawning thread ends): the runtime's threads do.
pub fn prepare(spawn: &Spawn, def: &VmDef) -> Result<Prepared, String> {
    let kernel = open_image(&def.kernel)?;
    let initrd = def.initrd.as_deref().map(open_image).transpose()?;
    let drives = crate::drives::open(&def.drives, &spawn.undo_dir)?;
    let (control, control_theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let (serial, serial_theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let memfd = protocol::framebuffer::create(FB_WIDTH, FB_HEIGHT)
        .map_err(|e| format!("framebuffer: {e}"))?;
    let memfd_theirs = memfd.try_clone().map_err(|e| format!("framebuffer: {e}"))?;

    let uid = spawn.uid.to_string();
    let mut cmd = tokio::process::Command::new(spawn.worker);
    cmd.arg("run")
        .args(["--uid", &uid, "--gid", &uid])
        .args(["--cgroup", spawn.cgroup])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if spawn.allow_weaker {
        cmd.arg("--allow-weaker");
    }
    if def.jit {
        cmd.arg("--jit");
    }
    let mut placed: Vec<(RawFd, RawFd)> = vec![
        (control_theirs.as_raw_fd(), fds::CONTROL),
        (memfd_theirs.as_raw_fd(), fds::FRAMEBUFFER),
        (serial_theirs.as_raw_fd(), fds::SERIAL_COM1),
        (kernel.as_raw_fd(), fds::KERNEL),
    ];
    if let Some(initrd) = &initrd {
        placed.push((initrd.as_raw_fd(), fds::INITRD));
    }
    let drive_fds = fds::FIRST_EXTRA..fds::FIRST_EXTRA + drives.fds.len() as RawFd;
    placed.extend(
        drives
            .fds
            .iter()
            .map(|fd| fd.as_raw_fd())
            .zip(drive_fds.clone()),
    );
    let all: Vec<RawFd> = fds::ALL
        .iter()
        .map(|&(fd, _)| fd)
        .chain(drive_fds)
        .collect();
    // SAFETY: the closure only calls async-signal-safe functions (fcntl,
    // dup2, close) on fds this process owns and allocates nothing.
    unsafe {
        cmd.pre_exec(move || crate::sys::place_fds(&placed, &all));
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", spawn.worker.display()))?;
    let attachments = drives.attachments;
    drop((
        control_theirs,
        serial_theirs,
        memfd_theirs,
        kernel,
        initrd,
        drives.fds,
    ));

    let to_tokio = |s: std::os::unix::net::UnixStream| {
        s.set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(s))
            .map_err(|e| format!("socket: {e}"))
    };
    let (control_tx, control_rx) = mpsc::channel(256);
    Ok(Prepared {
        pid: child.id(),
        child,
        control: to_tokio(control)?,
        serial: to_tokio(serial)?,
        memfd: Arc::new(memfd),
        control_tx,
        control_rx,
        cgroup: spawn.cgroup.to_string(),
        drives: attachments,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    Ready,
    Running,
}

/// Everything observed during a run that decides how it is classified.
#[derive(Default)]
struct Observed {
    violation: Option<String>,
    guest: Option<GuestEvent>,
    stderr: Vec<u8>,
}

/// Where the events of one run go: the daemon's VM table ([`RunCtx`]) or
/// the terminal of `bulkhead run`.
pub trait RunHost: Send + Sync {
    /// The VM's name, for log lines.
    fn name(&self) -> &str;
    /// Bytes the guest wrote to COM1.
    fn serial_output(&self, bytes: &[u8]);
    /// The worker reported a state change (Running after Ready).
    fn status(&self, status: Status);
    /// A line for the operator (worker log lines, violations).
    fn log(&self, line: &str);
    /// Whether the end of this run was asked for (not a failure).
    fn stop_requested(&self) -> bool;
    /// Bytes the worker wrote to stderr (they are also kept for the
    /// classification).
    fn worker_stderr(&self, _bytes: &[u8]) {}
}

impl RunHost for RunCtx {
    fn name(&self) -> &str {
        &self.name
    }

    fn serial_output(&self, bytes: &[u8]) {
        if let Ok(mut log) = self.log.lock() {
            log.append(bytes);
        }
        let _ = self.console.send(Arc::from(bytes));
    }

    fn status(&self, status: Status) {
        daemon::set_status(&self.daemon, &self.name, self.generation, status);
    }

    fn log(&self, line: &str) {
        eprintln!("bulkhead: {}: {line}", self.name);
    }

    fn stop_requested(&self) -> bool {
        self.daemon
            .vms()
            .get(&self.name)
            .and_then(|vm| vm.run.as_ref().map(|r| r.stop_requested))
            .unwrap_or(false)
    }
}

/// How a run ended.
pub struct Ended {
    pub record: ExitRecord,
    /// The worker's exit, if its status was collected.
    pub outcome: Option<WorkerOutcome>,
}

/// The supervise task of one daemon run.
pub async fn supervise(ctx: RunCtx, p: Prepared, started: oneshot::Sender<Result<u32, String>>) {
    let memfd = p.memfd.clone();
    let cgroup = p.cgroup.clone();
    let serial_in = ctx.serial_in.clone();
    let Ended { record, .. } = drive(&ctx, &ctx.def, serial_in, p, Some(started)).await;
    eprintln!("bulkhead: {}: worker ended: {}", ctx.name, record.reason);

    let crash = if record.failure {
        let dir = ctx.daemon.state.forensics(&ctx.name);
        let tail = ctx.log.lock().map(|l| l.tail()).unwrap_or_default();
        let rec = record.clone();
        tokio::task::spawn_blocking(move || write_forensics(&dir, &rec, &tail, &memfd))
            .await
            .ok()
            .and_then(|r| {
                r.map_err(|e| eprintln!("bulkhead: writing forensics: {e}"))
                    .ok()
            })
    } else {
        None
    };
    let _ = tokio::task::spawn_blocking(move || remove_cgroup(&cgroup)).await;
    daemon::run_ended(&ctx.daemon, &ctx.name, ctx.generation, record, crash);
}

/// Runs one prepared worker to its end: the handshake (the VM `def`),
/// control frames, serial bytes both ways (input from `serial_in`) and
/// stderr; then classifies the exit. `started` hears the worker's pid once
/// it runs the guest, or why it never did. The caller cleans up (the
/// cgroup) with [`remove_cgroup`].
pub async fn drive(
    host: &dyn RunHost,
    def: &VmDef,
    serial_in: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>,
    mut p: Prepared,
    started: Option<oneshot::Sender<Result<u32, String>>>,
) -> Ended {
    let mut started = started;
    let pid = p.pid;
    let config = worker_config(def, std::mem::take(&mut p.drives));
    let (mut ctl_r, ctl_w) = p.control.into_split();
    let (mut ser_r, ser_w) = p.serial.into_split();
    let writer = tokio::spawn(frame_writer(ctl_w, p.control_rx));
    let serial_writer = tokio::spawn(serial_writer(ser_w, serial_in));
    let send = |tx: &mpsc::Sender<Vec<u8>>, frame: Result<Vec<u8>, protocol::EncodeError>| {
        if let Ok(frame) = frame {
            let _ = tx.try_send(frame);
        }
    };
    send(&p.control_tx, protocol::encode(&Hello::current()));

    let mut stderr = p.child.stderr.take();
    let mut obs = Observed::default();
    let mut decoder = protocol::FrameDecoder::new();
    let mut phase = Phase::Hello;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let (mut ctl_eof, mut ser_eof, mut err_eof) = (false, false, stderr.is_none());
    let (mut cbuf, mut sbuf, mut ebuf) = (vec![0u8; 64 * 1024], vec![0u8; 16 * 1024], [0u8; 4096]);
    let mut window = (Instant::now(), 0u32);

    let status = loop {
        tokio::select! {
            status = p.child.wait() => break status.ok(),
            n = ctl_r.read(&mut cbuf), if !ctl_eof => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    ctl_eof = true;
                    continue;
                }
                decoder.push(&cbuf[..n]);
                let result = drain_frames(host, &config, &mut decoder, &mut phase, &mut obs, &p.control_tx, &mut window);
                if phase == Phase::Running
                    && let Some(tx) = started.take()
                {
                    let _ = tx.send(Ok(pid.unwrap_or(0)));
                }
                if let Err(violation) = result {
                    host.log(&format!("protocol violation: {violation}; killing the worker"));
                    obs.violation = Some(violation);
                    ctl_eof = true;
                    let _ = p.child.start_kill();
                }
            }
            n = ser_r.read(&mut sbuf), if !ser_eof => match n {
                Ok(n) if n > 0 => host.serial_output(&sbuf[..n]),
                _ => ser_eof = true,
            },
            n = read_opt(&mut stderr, &mut ebuf), if !err_eof => match n {
                Ok(n) if n > 0 => {
                    host.worker_stderr(&ebuf[..n]);
                    keep_tail(&mut obs.stderr, &ebuf[..n], STDERR_TAIL);
                }
                _ => err_eof = true,
            },
            _ = tokio::time::sleep_until(deadline), if phase != Phase::Running && obs.violation.is_none() => {
                obs.violation = Some(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"));
                let _ = p.child.start_kill();
            }
        }
    };
    writer.abort();
    serial_writer.abort();
    // What the worker flushed on its way out.
    let drain = Duration::from_millis(500);
    while !ser_eof {
        match tokio::time::timeout(drain, ser_r.read(&mut sbuf)).await {
            Ok(Ok(n)) if n > 0 => host.serial_output(&sbuf[..n]),
            _ => ser_eof = true,
        }
    }
    while !err_eof {
        match tokio::time::timeout(drain, read_opt(&mut stderr, &mut ebuf)).await {
            Ok(Ok(n)) if n > 0 => {
                host.worker_stderr(&ebuf[..n]);
                keep_tail(&mut obs.stderr, &ebuf[..n], STDERR_TAIL);
            }
            _ => err_eof = true,
        }
    }

    let outcome = status.map(WorkerOutcome::from_status);
    let record = classify(outcome, &obs, host.stop_requested());
    if let Some(tx) = started.take() {
        let _ = tx.send(Err(record.reason.clone()));
    }
    Ended { record, outcome }
}

async fn read_opt(
    r: &mut Option<tokio::process::ChildStderr>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => Ok(0),
    }
}

fn keep_tail(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    buf.extend_from_slice(bytes);
    let excess = buf.len().saturating_sub(cap);
    buf.drain(..excess);
}

/// Decodes and validates every complete frame; `Err` is a protocol
/// violation.
fn drain_frames(
    host: &dyn RunHost,
    config: &WorkerConfig,
    decoder: &mut protocol::FrameDecoder,
    phase: &mut Phase,
    obs: &mut Observed,
    tx: &mpsc::Sender<Vec<u8>>,
    window: &mut (Instant, u32),
) -> Result<(), String> {
    let send = |msg: &dyn Fn() -> Result<Vec<u8>, protocol::EncodeError>| {
        if let Ok(frame) = msg() {
            let _ = tx.try_send(frame);
        }
    };
    loop {
        if window.0.elapsed() >= Duration::from_secs(1) {
            *window = (Instant::now(), 0);
        }
        if *phase == Phase::Hello {
            match decoder.next_message::<Hello>() {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("bad hello frame: {e}")),
                Some(Ok(hello)) => {
                    protocol::check_hello(&hello).map_err(|e| e.to_string())?;
                    send(&|| protocol::encode(config));
                    *phase = Phase::Ready;
                }
            }
            continue;
        }
        let msg = match decoder.next_message::<FromWorker>() {
            None => return Ok(()),
            Some(Err(e)) => return Err(format!("bad frame: {e}")),
            Some(Ok(msg)) => msg,
        };
        window.1 += 1;
        if window.1 > MAX_FRAMES_PER_SEC {
            return Err(format!("more than {MAX_FRAMES_PER_SEC} frames in a second"));
        }
        match msg {
            FromWorker::Ready(info) => {
                if *phase != Phase::Ready {
                    return Err("Ready sent twice".into());
                }
                if info.ram_mib != config.ram_mib {
                    return Err(format!(
                        "Ready reports {} MiB, configured {}",
                        info.ram_mib, config.ram_mib
                    ));
                }
                send(&|| protocol::encode(&ToWorker::Start));
                *phase = Phase::Running;
                host.status(Status::Running);
            }
            _ if *phase != Phase::Running => {
                // State and log messages before Ready are fine; guest
                // events are not.
                if let FromWorker::Guest(_) = msg {
                    return Err("guest event before Ready".into());
                }
            }
            FromWorker::State(state) => {
                let status = match state {
                    VmState::Paused => Status::Paused,
                    _ => Status::Running,
                };
                host.status(status);
            }
            FromWorker::VideoMode(mode) => {
                let max = protocol::framebuffer::MAX_DIMENSION;
                if mode.width > max || mode.height > max {
                    return Err(format!(
                        "video mode {}x{} out of range",
                        mode.width, mode.height
                    ));
                }
            }
            FromWorker::Stats(_) => {}
            FromWorker::Guest(event) => {
                obs.guest = Some(event);
                if matches!(
                    event,
                    GuestEvent::TripleFault { .. } | GuestEvent::HaltedForever
                ) {
                    send(&|| protocol::encode(&ToWorker::Shutdown));
                }
            }
            FromWorker::Log(line) => {
                host.log(&format!(
                    "worker {:?}: {}{}",
                    line.level,
                    line.text.as_str().escape_debug(),
                    if line.dropped > 0 {
                        format!(" ({} dropped)", line.dropped)
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
}

fn worker_config(def: &VmDef, drives: Vec<protocol::DriveAttachment>) -> WorkerConfig {
    WorkerConfig {
        ram_mib: def.memory_mib,
        boot: BootSource::Linux {
            kernel_fd: fds::KERNEL,
            initrd_fd: def.initrd.as_ref().map(|_| fds::INITRD),
            cmdline: def.append.clone(),
        },
        framebuffer: Some(FramebufferSize {
            width: FB_WIDTH,
            height: FB_HEIGHT,
        }),
        serial: true,
        debug: DebugFlags::default(),
        drives,
    }
}

async fn frame_writer(mut w: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if w.write_all(&frame).await.is_err() {
            return;
        }
    }
}

async fn serial_writer(
    mut w: tokio::net::unix::OwnedWriteHalf,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>,
) {
    let mut rx = rx.lock_owned().await;
    while let Some(bytes) = rx.recv().await {
        if w.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

fn record(kind: &str, reason: String, failure: bool) -> ExitRecord {
    ExitRecord {
        kind: kind.into(),
        reason,
        time_ms: daemon::now_ms(),
        failure,
    }
}

fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

/// How a run ended, in order of precedence: a protocol violation, a guest
/// fault, then the worker's exit status.
fn classify(outcome: Option<WorkerOutcome>, obs: &Observed, stop_requested: bool) -> ExitRecord {
    if let Some(v) = &obs.violation {
        return record(
            "protocol_violation",
            format!("protocol violation: {v}"),
            true,
        );
    }
    match obs.guest {
        Some(GuestEvent::TripleFault { eip }) => {
            return record(
                "triple_fault",
                format!("guest triple fault at eip {eip:#010x}"),
                true,
            );
        }
        Some(GuestEvent::HaltedForever) => {
            return record("halted", "guest halted with interrupts off".into(), true);
        }
        _ => {}
    }
    let Some(outcome) = outcome else {
        return record("worker_error", "the worker's status was lost".into(), true);
    };
    match outcome {
        WorkerOutcome::Exited(WorkerExit::Ok) => match obs.guest {
            _ if stop_requested => record("stopped", "stopped by request".into(), false),
            Some(GuestEvent::PowerOff) => record("power_off", "guest powered off".into(), false),
            Some(GuestEvent::DebugExit(v)) => record(
                "debug_exit",
                format!("guest wrote {v:#x} to the debug-exit port"),
                false,
            ),
            _ => record("exited", "the worker exited cleanly".into(), false),
        },
        WorkerOutcome::Exited(WorkerExit::SeccompViolation) => {
            let text = String::from_utf8_lossy(&obs.stderr);
            let reason = match protocol::parse_seccomp_report(&text) {
                Some(nr) => format!(
                    "sandbox violation: forbidden syscall {} ({nr})",
                    protocol::syscall_name(nr).unwrap_or("unknown")
                ),
                None => "sandbox violation: forbidden syscall (no report)".into(),
            };
            record("seccomp", reason, true)
        }
        WorkerOutcome::Exited(code) => record(
            "worker_error",
            format!("worker {code}{}", last_line(&obs.stderr)),
            true,
        ),
        WorkerOutcome::Signaled(sig) if stop_requested => record(
            "stopped",
            format!("killed by request (signal {sig})"),
            false,
        ),
        WorkerOutcome::Signaled(sig) => record(
            "signal",
            format!("worker killed by signal {sig} ({})", signal_name(sig)),
            true,
        ),
        // The pid-namespace reaper exits 128+N when the worker inside died
        // of signal N.
        WorkerOutcome::UnknownCode(code) if (129..=192).contains(&code) => {
            let sig = code - 128;
            if stop_requested {
                record(
                    "stopped",
                    format!("killed by request (signal {sig})"),
                    false,
                )
            } else {
                record(
                    "signal",
                    format!("worker killed by signal {sig} ({})", signal_name(sig)),
                    true,
                )
            }
        }
        WorkerOutcome::UnknownCode(code) => record(
            "worker_error",
            format!("worker exited with code {code}{}", last_line(&obs.stderr)),
            true,
        ),
    }
}

/// A PNG of the current frame.
pub fn screenshot(memfd: &OwnedFd) -> Result<Vec<u8>, protocol::FbError> {
    let reader = FbReader::open(memfd)?;
    let frame = reader.snapshot()?;
    protocol::encode_png(&frame)
}

/// `crash.json`, `serial.log` (last 64 KiB) and `screen.png` (if the
/// guest had a picture) in `dir`, replacing the previous crash's.
fn write_forensics(
    dir: &Path,
    exit: &ExitRecord,
    serial: &[u8],
    memfd: &OwnedFd,
) -> Result<CrashRecord, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let serial_path = dir.join("serial.log");
    let start = serial.len().saturating_sub(TAIL);
    crate::config::write_atomic(&serial_path, &serial[start..]).map_err(|e| e.to_string())?;
    let png_path = dir.join("screen.png");
    let screenshot = match screenshot(memfd) {
        Ok(png) => {
            crate::config::write_atomic(&png_path, &png).map_err(|e| e.to_string())?;
            Some(png_path.display().to_string())
        }
        Err(_) => {
            let _ = std::fs::remove_file(&png_path);
            None
        }
    };
    let crash = CrashRecord {
        exit: exit.clone(),
        dir: dir.display().to_string(),
        serial_log: serial_path.display().to_string(),
        screenshot,
    };
    let json = serde_json::to_vec_pretty(&crash).map_err(|e| e.to_string())?;
    crate::config::write_atomic(&dir.join("crash.json"), &json).map_err(|e| e.to_string())?;
    Ok(crash)
}

/// Removes the worker's cgroup (`bulkhead/NAME`, v2 or every v1
/// controller); retries while the exiting tasks leave it.
pub fn remove_cgroup(name: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let dirs = [
        root.join("bulkhead").join(name),
        root.join("memory/bulkhead").join(name),
        root.join("cpu/bulkhead").join(name),
        root.join("pids/bulkhead").join(name),
    ];
    for dir in dirs.iter().filter(|d| d.exists()) {
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified() {
        let obs = Observed::default();
        let c = |o, stop| classify(Some(o), &obs, stop);
        assert_eq!(c(WorkerOutcome::Signaled(9), false).kind, "signal");
        assert!(
            c(WorkerOutcome::Signaled(9), false)
                .reason
                .contains("signal 9")
        );
        assert!(!c(WorkerOutcome::Signaled(9), true).failure);
        assert_eq!(c(WorkerOutcome::UnknownCode(137), false).kind, "signal");
        assert!(!c(WorkerOutcome::Exited(WorkerExit::Ok), false).failure);
        let obs = Observed {
            stderr: b"x\nbulkhead-worker: seccomp violation: syscall 257\n".to_vec(),
            ..Observed::default()
        };
        let r = classify(
            Some(WorkerOutcome::Exited(WorkerExit::SeccompViolation)),
            &obs,
            false,
        );
        assert!(r.reason.contains("openat (257)"), "{}", r.reason);
        let obs = Observed {
            guest: Some(GuestEvent::TripleFault { eip: 0x1234 }),
            ..Observed::default()
        };
        let r = classify(Some(WorkerOutcome::Exited(WorkerExit::Ok)), &obs, false);
        assert_eq!(r.kind, "triple_fault");
        assert!(r.failure);
    }
}
