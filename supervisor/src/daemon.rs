//! `bulkhead serve`: the daemon. Owns the VM table, serves the API socket
//! and supervises one worker per running VM (see [`crate::worker`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::api::{
    self, ApiError, CrashRecord, ErrorKind, ExitRecord, MAX_REQUEST, Request, VmInfo,
};
use crate::config::{Policy, RestartPolicy, StateDir, VmDef};
use crate::serial::SerialLog;
use crate::worker;

/// How `bulkhead serve` was started.
#[derive(Clone, Debug)]
pub struct Options {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Pass `--allow-weaker` to workers (operator's explicit choice).
    pub allow_weaker_sandbox: bool,
    /// Per-VM uids are `uid_base + slot`.
    pub uid_base: u32,
    /// The `bulkhead-worker` binary.
    pub worker: PathBuf,
}

/// How long a client may take to send one request line.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `vm.start` waits for the worker's Ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A VM's state as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Stopped,
    Starting,
    Running,
    Paused,
    /// Waiting to be restarted by its restart policy.
    Backoff,
    /// Parked after a crash loop; `vm start` clears it.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Stopped => "stopped",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Backoff => "backoff",
            Status::Failed => "failed",
        }
    }
    fn is_active(self) -> bool {
        matches!(self, Status::Starting | Status::Running | Status::Paused)
    }
}

/// A running worker, as the table holds it.
pub struct Run {
    pub pid: Option<u32>,
    pub slot: u32,
    pub started: Instant,
    /// Complete frames for the control socket's writer task.
    pub control: mpsc::Sender<Vec<u8>>,
    pub memfd: Arc<std::os::fd::OwnedFd>,
    /// The operator (or shutdown) asked for this run to end: no restart.
    pub stop_requested: bool,
}

/// A VM: its definition and runtime state.
pub struct Vm {
    pub def: VmDef,
    pub status: Status,
    pub run: Option<Run>,
    pub restarts: u32,
    /// Failure times within the crash-loop window.
    pub failures: VecDeque<Instant>,
    pub last_exit: Option<ExitRecord>,
    pub last_crash: Option<CrashRecord>,
    /// Bumped by every start; stale restart timers compare it.
    pub generation: u64,
    /// Serial output to attached consoles and `vm logs -f`.
    pub console: broadcast::Sender<Arc<[u8]>>,
    /// Console input, written to COM1 by the running worker's task.
    pub serial_in: mpsc::Sender<Vec<u8>>,
    pub serial_in_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>,
    pub log: Arc<Mutex<SerialLog>>,
}

impl Vm {
    fn new(def: VmDef, state: &StateDir) -> Vm {
        let (console, _) = broadcast::channel(256);
        let (serial_in, rx) = mpsc::channel(64);
        let log = SerialLog::new(state.serial_log(&def.name));
        let last_crash = load_crash(state, &def.name);
        Vm {
            def,
            status: Status::Stopped,
            run: None,
            restarts: 0,
            failures: VecDeque::new(),
            last_exit: None,
            last_crash,
            generation: 0,
            console,
            serial_in,
            serial_in_rx: Arc::new(tokio::sync::Mutex::new(rx)),
            log: Arc::new(Mutex::new(log)),
        }
    }

    fn info(&self) -> VmInfo {
        let d = &self.def;
        VmInfo {
            name: d.name.clone(),
            owner_uid: d.owner_uid,
            memory_mib: d.memory_mib,
            kernel: d.kernel.display().to_string(),
            initrd: d.initrd.as_ref().map(|p| p.display().to_string()),
            append: d.append.clone(),
            restart: d.restart,
            autostart: d.autostart,
            jit: d.jit,
            drives: d.drives.clone(),
            state: self.status.as_str().to_string(),
            pid: self.run.as_ref().and_then(|r| r.pid),
            uptime_ms: self
                .run
                .as_ref()
                .filter(|_| self.status.is_active())
                .map(|r| r.started.elapsed().as_millis() as u64),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            last_crash: self.last_crash.clone(),
        }
    }
}

/// The crash record a previous daemon left in the forensics directory.
fn load_crash(state: &StateDir, name: &str) -> Option<CrashRecord> {
    let dir = state.forensics(name);
    let text = std::fs::read_to_string(dir.join("crash.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The daemon.
pub struct Daemon {
    pub opts: Options,
    pub state: StateDir,
    pub policy: Policy,
    vms: Mutex<HashMap<String, Vm>>,
    pub shutting_down: AtomicBool,
    /// Notified whenever a worker run ends.
    pub run_ended: tokio::sync::Notify,
}

impl Daemon {
    pub fn vms(&self) -> MutexGuard<'_, HashMap<String, Vm>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots of running workers (per-VM uid = uid_base + slot).
    pub fn take_slot(vms: &HashMap<String, Vm>) -> u32 {
        let used: Vec<u32> = vms
            .values()
            .filter_map(|v| v.run.as_ref().map(|r| r.slot))
            .collect();
        (0..).find(|s| !used.contains(s)).unwrap_or(0)
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(opts: Options) -> Result<(), String> {
    let state = StateDir {
        root: opts.state_dir.clone(),
    };
    state.create().map_err(|e| e.to_string())?;
    let policy = Policy::load(&state.policy()).map_err(|e| e.to_string())?;
    let listener = bind(&opts.socket)?;

    let (defs, errors) = state.load_all();
    for e in errors {
        eprintln!("bulkhead: skipping a VM definition: {e}");
    }
    let mut table = HashMap::new();
    for def in defs {
        let vm = Vm::new(def.clone(), &state);
        table.insert(def.name.clone(), vm);
    }
    let daemon = Arc::new(Daemon {
        opts,
        state,
        policy,
        vms: Mutex::new(table),
        shutting_down: AtomicBool::new(false),
        run_ended: tokio::sync::Notify::new(),
    });
    eprintln!(
        "bulkhead: serving on {} (state in {})",
        daemon.opts.socket.display(),
        daemon.state.root.display()
    );

    let autostart: Vec<String> = daemon
        .vms()
        .values()
        .filter(|v| v.def.autostart)
        .map(|v| v.def.name.clone())
        .collect();
    for name in autostart {
        let d = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = start_vm(&d, &name, true).await {
                eprintln!("bulkhead: autostart of {name}: {}", e.message);
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let d = daemon.clone();
                    tokio::spawn(async move { connection(d, stream).await });
                }
                Err(e) => {
                    eprintln!("bulkhead: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    shutdown(&daemon).await;
    let _ = std::fs::remove_file(&daemon.opts.socket);
    Ok(())
}

/// Binds the socket (mode 0666: access is decided per request from the
/// peer's credentials). A stale socket file is replaced; a live one means
/// another daemon is running.
fn bind(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another daemon is serving on {}; stop it first",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

/// Power button to every running VM, then kill what is left after the
/// stop timeout.
async fn shutdown(d: &Arc<Daemon>) {
    d.shutting_down.store(true, Ordering::SeqCst);
    eprintln!("bulkhead: shutting down: stopping VMs");
    let frame = protocol::encode(&protocol::ToWorker::PowerButton).unwrap_or_default();
    {
        let mut vms = d.vms();
        for vm in vms.values_mut() {
            if vm.status == Status::Backoff {
                vm.status = Status::Stopped;
            }
            if let Some(run) = &mut vm.run {
                run.stop_requested = true;
                let _ = run.control.try_send(frame.clone());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_millis(d.policy.stop_timeout_ms);
    let any_running = |d: &Daemon| d.vms().values().any(|v| v.run.is_some());
    while any_running(d) && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), d.run_ended.notified()).await;
    }
    for vm in d.vms().values() {
        if let Some(pid) = vm.run.as_ref().and_then(|r| r.pid) {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while any_running(d) && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), d.run_ended.notified()).await;
    }
}

/// One API connection: request lines in, reply lines out.
async fn connection(d: Arc<Daemon>, stream: UnixStream) {
    let peer = match stream.peer_cred() {
        Ok(c) => Caller {
            uid: c.uid(),
            gid: c.gid(),
        },
        Err(_) => return,
    };
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let line = match tokio::time::timeout(READ_TIMEOUT, read_line(&mut r)).await {
            Err(_) => {
                let e = ApiError::new(ErrorKind::BadRequest, "timed out waiting for a request");
                let _ = w.write_all(api::error_line(&e).as_bytes()).await;
                return;
            }
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(LineError::Io)) => return,
            Ok(Err(LineError::TooLarge)) => {
                let e = ApiError::new(
                    ErrorKind::TooLarge,
                    format!("request longer than {MAX_REQUEST} bytes"),
                );
                let _ = w.write_all(api::error_line(&e).as_bytes()).await;
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let req = match api::parse_request(&line) {
            Ok(req) => req,
            Err(e) => {
                if w.write_all(api::error_line(&e).as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        match req {
            Request::Console { name } => {
                return console(&d, peer, &name, r, w).await;
            }
            Request::Logs { name, follow } => {
                match logs(&d, peer, &name, follow) {
                    Err(e) => {
                        if w.write_all(api::error_line(&e).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Ok((text, rx)) => {
                        let reply = api::ok_line(json!({ "data": text }));
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        if let Some(rx) = rx {
                            return follow_logs(rx, r, w).await;
                        }
                    }
                }
                continue;
            }
            req => {
                let reply = match handle(&d, peer, req).await {
                    Ok(v) => api::ok_line(v),
                    Err(e) => api::error_line(&e),
                };
                if w.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

enum LineError {
    Io,
    TooLarge,
}

/// One line, at most [`MAX_REQUEST`] bytes; `None` at a clean end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await.map_err(|_| LineError::Io)?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_REQUEST {
            return Err(LineError::TooLarge);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// Who sent a request (SO_PEERCRED).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    fn may_see(&self, vm: &Vm) -> bool {
        self.uid == 0 || self.uid == vm.def.owner_uid
    }
}

/// The VM named `name` if the caller may see it; `NotFound` otherwise
/// (other users' VMs do not exist for a caller).
fn visible<'a>(
    vms: &'a mut HashMap<String, Vm>,
    caller: Caller,
    name: &str,
) -> Result<&'a mut Vm, ApiError> {
    match vms.get_mut(name) {
        Some(vm) if caller.may_see(vm) => Ok(vm),
        _ => Err(ApiError::not_found(name)),
    }
}

async fn handle(
    d: &Arc<Daemon>,
    caller: Caller,
    req: Request,
) -> Result<serde_json::Value, ApiError> {
    match req {
        Request::Ping {} => Ok(json!({"version": env!("CARGO_PKG_VERSION"), "uid": caller.uid})),
        Request::Create {
            name,
            memory_mib,
            kernel,
            initrd,
            append,
            restart,
            autostart,
            jit,
            drives,
        } => {
            let def = VmDef {
                name,
                owner_uid: caller.uid,
                memory_mib,
                kernel: PathBuf::from(kernel),
                initrd: initrd.map(PathBuf::from),
                append,
                restart,
                autostart,
                jit,
                drives,
            };
            create(d, caller, def)
        }
        Request::List {} => {
            let vms = d.vms();
            let mut list: Vec<VmInfo> = vms
                .values()
                .filter(|vm| caller.may_see(vm))
                .map(Vm::info)
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(json!({ "vms": list }))
        }
        Request::Info { name } => {
            let mut vms = d.vms();
            let vm = visible(&mut vms, caller, &name)?;
            Ok(json!({ "vm": vm.info() }))
        }
        Request::Start { name } => {
            {
                let mut vms = d.vms();
                let vm = visible(&mut vms, caller, &name)?;
                if vm.status == Status::Failed {
                    vm.failures.clear();
                }
            }
            let pid = start_vm(d, &name, false).await?;
            Ok(json!({ "pid": pid }))
        }
        Request::Stop {
            name,
            force,
            timeout_ms,
        } => stop_vm(d, caller, &name, force, timeout_ms).await,
        Request::Kill { name } => stop_vm(d, caller, &name, true, None).await,
        Request::Reset { name } => send(d, caller, &name, protocol::ToWorker::Reset, None),
        Request::Pause { name } => send(
            d,
            caller,
            &name,
            protocol::ToWorker::Pause,
            Some(Status::Paused),
        ),
        Request::Resume { name } => send(
            d,
            caller,
            &name,
            protocol::ToWorker::Resume,
            Some(Status::Running),
        ),
        Request::Remove { name } => {
            let mut vms = d.vms();
            let vm = visible(&mut vms, caller, &name)?;
            if vm.run.is_some() || vm.status.is_active() {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("VM {name:?} is running; stop it first (`bulkhead vm stop {name}`)"),
                ));
            }
            std::fs::remove_file(d.state.vm_file(&name))
                .or_else(|e| match e.kind() {
                    io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| ApiError::internal(format!("removing the definition: {e}")))?;
            // Undo disks left by a VM parked as failed were never
            // committed: removing the VM discards them.
            let undo = d.state.undo(&name);
            if undo.exists() {
                std::fs::remove_dir_all(&undo).map_err(|e| {
                    ApiError::internal(format!(
                        "removing the undo disks in {}: {e}",
                        undo.display()
                    ))
                })?;
            }
            vms.remove(&name);
            Ok(json!({}))
        }
        Request::Screenshot { name } => {
            let memfd = {
                let mut vms = d.vms();
                let vm = visible(&mut vms, caller, &name)?;
                match &vm.run {
                    Some(run) => run.memfd.clone(),
                    None => {
                        return Err(ApiError::new(
                            ErrorKind::Conflict,
                            format!("VM {name:?} is not running; start it first"),
                        ));
                    }
                }
            };
            let png = tokio::task::spawn_blocking(move || worker::screenshot(&memfd))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::new(ErrorKind::Conflict, format!("no picture: {e}")))?;
            Ok(json!({ "png_base64": crate::base64::encode(&png) }))
        }
        Request::Console { .. } | Request::Logs { .. } => {
            Err(ApiError::internal("handled by the connection"))
        }
    }
}

fn create(d: &Arc<Daemon>, caller: Caller, mut def: VmDef) -> Result<serde_json::Value, ApiError> {
    def.normalize()
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()))?;
    for path in std::iter::once(&def.kernel).chain(def.initrd.as_ref()) {
        check_readable(caller, path)?;
    }
    for drive in &def.drives {
        // An undo drive's image is only read; its writes go to the undo disk.
        check_access(
            caller,
            &drive.path,
            !drive.read_only && drive.undo.is_none(),
        )?;
        crate::drives::check_image(drive).map_err(|e| ApiError::new(ErrorKind::BadRequest, e))?;
    }
    let mut vms = d.vms();
    if vms.contains_key(&def.name) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("the name {:?} is taken; choose another", def.name),
        ));
    }
    if caller.uid != 0 {
        let mine: Vec<&Vm> = vms
            .values()
            .filter(|v| v.def.owner_uid == caller.uid)
            .collect();
        let count = mine.len() as u32;
        let memory: u64 = mine.iter().map(|v| u64::from(v.def.memory_mib)).sum();
        if count >= d.policy.max_vms_per_uid {
            return Err(ApiError::new(
                ErrorKind::Quota,
                format!(
                    "you have {count} VMs, the limit is {}; remove one first",
                    d.policy.max_vms_per_uid
                ),
            ));
        }
        if memory + u64::from(def.memory_mib) > u64::from(d.policy.max_memory_mib_per_uid) {
            return Err(ApiError::new(
                ErrorKind::Quota,
                format!(
                    "{} MiB more would exceed your memory quota of {} MiB ({memory} MiB in use)",
                    def.memory_mib, d.policy.max_memory_mib_per_uid
                ),
            ));
        }
    }
    d.state
        .save(&def)
        .map_err(|e| ApiError::internal(format!("saving the definition: {e}")))?;
    let info = {
        let mut vm = Vm::new(def.clone(), &d.state);
        vm.last_crash = None;
        let info = vm.info();
        vms.insert(def.name.clone(), vm);
        info
    };
    Ok(json!({ "vm": info }))
}

fn check_readable(caller: Caller, path: &Path) -> Result<(), ApiError> {
    check_access(caller, path, false)
}

/// The daemon opens images on the caller's behalf (the broker model), so it
/// checks that the caller could open them itself: every directory on the
/// way searchable and the file readable (and writable when `write`) by the
/// caller's uid or primary gid.
pub(crate) fn check_access(caller: Caller, path: &Path, write: bool) -> Result<(), ApiError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if caller.uid == 0 {
        return Ok(());
    }
    let allows = |m: &std::fs::Metadata, bit: u32| {
        let mode = m.mode();
        if m.uid() == caller.uid {
            mode & (bit << 6) != 0
        } else if m.gid() == caller.gid {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    let denied = || {
        ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "{}: you (uid {}) cannot {} this file",
                path.display(),
                caller.uid,
                if write { "write" } else { "read" }
            ),
        )
    };
    if !allows(&meta, 4) || (write && !allows(&meta, 2)) {
        return Err(denied());
    }
    for dir in path.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|_| denied())?;
        if !allows(&m, 1) {
            return Err(denied());
        }
    }
    Ok(())
}

/// Sends one control message to a running VM.
fn send(
    d: &Arc<Daemon>,
    caller: Caller,
    name: &str,
    msg: protocol::ToWorker,
    status: Option<Status>,
) -> Result<serde_json::Value, ApiError> {
    let mut vms = d.vms();
    let vm = visible(&mut vms, caller, name)?;
    let (Some(run), Status::Running | Status::Paused) = (&vm.run, vm.status) else {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("VM {name:?} is {}; start it first", vm.status.as_str()),
        ));
    };
    let frame = protocol::encode(&msg).map_err(|e| ApiError::internal(e.to_string()))?;
    run.control.try_send(frame).map_err(|_| {
        ApiError::internal("the worker is not reading its control channel; try `vm kill`")
    })?;
    if let Some(s) = status {
        vm.status = s;
    }
    Ok(json!({}))
}

/// Starts a VM and waits until its worker is Ready (or failed).
pub async fn start_vm(d: &Arc<Daemon>, name: &str, restart: bool) -> Result<u32, ApiError> {
    let (tx, rx) = oneshot::channel();
    {
        let mut vms = d.vms();
        let slot = Daemon::take_slot(&vms);
        let Some(vm) = vms.get_mut(name) else {
            return Err(ApiError::not_found(name));
        };
        if d.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "the daemon is shutting down",
            ));
        }
        if vm.run.is_some() || vm.status.is_active() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("VM {name:?} is already {}", vm.status.as_str()),
            ));
        }
        if restart {
            vm.restarts += 1;
        }
        vm.generation += 1;
        vm.status = Status::Starting;
        let prepared = worker::prepare(&worker::Spawn::for_daemon(d, &vm.def, slot), &vm.def);
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                vm.status = Status::Stopped;
                let record = ExitRecord {
                    kind: "spawn_failed".into(),
                    reason: e.clone(),
                    time_ms: now_ms(),
                    failure: true,
                };
                vm.last_exit = Some(record);
                return Err(ApiError::internal(format!("starting {name}: {e}")));
            }
        };
        vm.run = Some(Run {
            pid: prepared.pid,
            slot,
            started: Instant::now(),
            control: prepared.control_tx.clone(),
            memfd: prepared.memfd.clone(),
            stop_requested: false,
        });
        let ctx = worker::RunCtx {
            daemon: d.clone(),
            name: name.to_string(),
            generation: vm.generation,
            console: vm.console.clone(),
            serial_in: vm.serial_in_rx.clone(),
            log: vm.log.clone(),
            def: vm.def.clone(),
        };
        tokio::spawn(worker::supervise(ctx, prepared, tx));
    }
    match tokio::time::timeout(START_TIMEOUT, rx).await {
        Ok(Ok(Ok(pid))) => Ok(pid),
        Ok(Ok(Err(e))) => Err(ApiError::internal(format!("starting {name}: {e}"))),
        Ok(Err(_)) => Err(ApiError::internal(format!(
            "starting {name}: the worker ended"
        ))),
        Err(_) => Err(ApiError::internal(format!(
            "starting {name}: the worker was not ready within {START_TIMEOUT:?}"
        ))),
    }
}

async fn stop_vm(
    d: &Arc<Daemon>,
    caller: Caller,
    name: &str,
    force: bool,
    timeout_ms: Option<u64>,
) -> Result<serde_json::Value, ApiError> {
    let (pid, generation) = {
        let mut vms = d.vms();
        let vm = visible(&mut vms, caller, name)?;
        if matches!(vm.status, Status::Backoff | Status::Failed) && vm.run.is_none() {
            vm.status = Status::Stopped;
            return Ok(json!({}));
        }
        let generation = vm.generation;
        let Some(run) = &mut vm.run else {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("VM {name:?} is not running"),
            ));
        };
        run.stop_requested = true;
        if !force {
            let frame = protocol::encode(&protocol::ToWorker::PowerButton)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let _ = run.control.try_send(frame);
        }
        (run.pid, generation)
    };
    let still_running = |d: &Daemon| {
        d.vms()
            .get(name)
            .is_some_and(|vm| vm.generation == generation && vm.run.is_some())
    };
    if !force {
        let timeout = Duration::from_millis(timeout_ms.unwrap_or(d.policy.stop_timeout_ms));
        let deadline = Instant::now() + timeout;
        while still_running(d) && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(50), d.run_ended.notified()).await;
        }
    }
    let mut killed = false;
    if still_running(d)
        && let Some(pid) = pid
    {
        let _ = crate::sys::kill(pid, libc::SIGKILL);
        killed = true;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while still_running(d) && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), d.run_ended.notified()).await;
    }
    Ok(json!({ "killed": killed }))
}

/// Called by the supervise task when a run has ended: records it and
/// applies the restart policy.
pub fn run_ended(
    d: &Arc<Daemon>,
    name: &str,
    generation: u64,
    record: ExitRecord,
    crash: Option<CrashRecord>,
) {
    let mut undo_drives;
    let restart_after = {
        let mut vms = d.vms();
        let Some(vm) = vms.get_mut(name) else {
            return;
        };
        if vm.generation != generation {
            return;
        }
        undo_drives = vm.def.drives.clone();
        let stop_requested = vm.run.as_ref().is_some_and(|r| r.stop_requested);
        vm.run = None;
        if let Some(crash) = crash {
            vm.last_crash = Some(crash);
        }
        let failure = record.failure;
        vm.last_exit = Some(record);
        let policy = &d.policy;
        let wants = match vm.def.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => failure,
            RestartPolicy::Always => true,
        };
        if stop_requested || d.shutting_down.load(Ordering::SeqCst) || !wants {
            vm.status = Status::Stopped;
            None
        } else {
            // A restart continues on the same undo disks.
            undo_drives.clear();
            let now = Instant::now();
            let window = Duration::from_millis(policy.crash_loop_window_ms);
            if failure {
                vm.failures.push_back(now);
            }
            while vm
                .failures
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                vm.failures.pop_front();
            }
            let n = vm.failures.len() as u32;
            if failure && n >= policy.crash_loop_failures {
                eprintln!("bulkhead: {name}: {n} failures within {window:?}: parked as failed");
                vm.status = Status::Failed;
                // Its undo disks stay for the operator to inspect; the
                // next start continues on them.
                undo_drives.clear();
                None
            } else {
                vm.status = Status::Backoff;
                let exp = n.saturating_sub(1).min(20);
                let delay = policy
                    .restart_backoff_ms
                    .saturating_mul(1 << exp)
                    .min(policy.restart_backoff_max_ms);
                Some(Duration::from_millis(delay))
            }
        }
    };
    if restart_after.is_none() && undo_drives.iter().any(|dr| dr.undo.is_some()) {
        // The VM stopped for good: its undo disks
        // are committed or discarded now. A commit can take a while; the
        // daemon's runtime is multi-threaded, so other VMs carry on.
        let dir = d.state.undo(name);
        let finish = || crate::drives::finish_undo(&undo_drives, &dir);
        let lines = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(finish)
            }
            _ => finish(),
        };
        for line in lines {
            match line {
                Ok(line) => eprintln!("bulkhead: {name}: {line}"),
                Err(e) => eprintln!("bulkhead: {name}: undo disk: {e}"),
            }
        }
    }
    d.run_ended.notify_waiters();
    if let Some(delay) = restart_after {
        let d = d.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let due = d
                .vms()
                .get(&name)
                .is_some_and(|vm| vm.generation == generation && vm.status == Status::Backoff);
            if due {
                {
                    if let Some(vm) = d.vms().get_mut(&name) {
                        vm.status = Status::Stopped;
                    }
                }
                if let Err(e) = start_vm(&d, &name, true).await {
                    eprintln!("bulkhead: restarting {name}: {}", e.message);
                }
            }
        });
    }
}

/// Updates a VM's status from the worker's state reports.
pub fn set_status(d: &Daemon, name: &str, generation: u64, status: Status) {
    if let Some(vm) = d.vms().get_mut(name)
        && vm.generation == generation
        && vm.run.is_some()
    {
        vm.status = status;
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type LogsReply = (String, Option<broadcast::Receiver<Arc<[u8]>>>);

fn logs(d: &Arc<Daemon>, caller: Caller, name: &str, follow: bool) -> Result<LogsReply, ApiError> {
    let mut vms = d.vms();
    let vm = visible(&mut vms, caller, name)?;
    let rx = follow.then(|| vm.console.subscribe());
    let bytes = crate::serial::read_log(&d.state.serial_log(name), 1024 * 1024)
        .map_err(|e| ApiError::internal(format!("reading the serial log: {e}")))?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), rx))
}

/// `vm logs -f`: one `{"serial":"..."}` line per chunk until the client
/// goes away.
async fn follow_logs(
    mut rx: broadcast::Receiver<Arc<[u8]>>,
    mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    let mut sink = [0u8; 256];
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Ok(bytes) => {
                    let mut line = json!({"serial": String::from_utf8_lossy(&bytes)}).to_string();
                    line.push('\n');
                    if w.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            n = r.read(&mut sink) => if !matches!(n, Ok(n) if n > 0) { return },
        }
    }
}

/// `vm console`: after the ok reply the connection carries raw bytes: from
/// the client to COM1, from COM1 to the client.
async fn console(
    d: &Arc<Daemon>,
    caller: Caller,
    name: &str,
    mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    let attached = {
        let mut vms = d.vms();
        visible(&mut vms, caller, name).map(|vm| (vm.console.subscribe(), vm.serial_in.clone()))
    };
    let (mut rx, input) = match attached {
        Ok(a) => a,
        Err(e) => {
            let _ = w.write_all(api::error_line(&e).as_bytes()).await;
            return;
        }
    };
    if w.write_all(api::ok_line(json!({})).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; protocol::SerialBytes::MAX];
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Ok(bytes) => if w.write_all(&bytes).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            n = r.read(&mut buf) => match n {
                Ok(n) if n > 0 => { let _ = input.try_send(buf[..n].to_vec()); }
                _ => return,
            },
        }
    }
}
