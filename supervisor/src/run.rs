//! `bulkhead run`: one VM in the foreground, without a daemon (like
//! `qemu-system-i386 -nographic`). The worker is spawned and supervised by
//! the same code as the daemon's ([`worker::prepare`], [`worker::drive`]);
//! COM1 is the terminal (raw mode, escape Ctrl-] q) or stdin/stdout when
//! they are not a terminal. The exit status says why the run ended
//! ([`RunExit`]).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{ToWorker, WorkerExit, WorkerOutcome};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::api::ExitRecord;
use crate::config::VmDef;
use crate::daemon::Status;
use crate::sys::{self, RawTerminal};
use crate::worker::{self, Ended, RunHost, Spawn};

/// The escape key on a terminal: Ctrl-].
pub const ESCAPE: u8 = 0x1d;

/// How long the worker gets to shut down after a quit before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// `bulkhead run`'s exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RunExit {
    /// The guest powered off (or wrote to the debug-exit port).
    PowerOff = 0,
    /// Bulkhead could not run the VM (bad image, no sandbox, a signal).
    Error = 1,
    /// Bad command line (clap's status).
    Usage = 2,
    /// The guest triple-faulted or halted with interrupts off.
    GuestFault = 3,
    /// The worker crashed or broke the sandbox or protocol.
    WorkerFailed = 4,
    /// Quit with the escape key.
    Quit = 5,
}

impl RunExit {
    /// The status for a classified end of a run; `quit` says why a stop
    /// was requested, if one was.
    pub fn of(ended: &Ended, quit: Option<Quit>) -> RunExit {
        match ended.record.kind.as_str() {
            "power_off" | "debug_exit" | "exited" => RunExit::PowerOff,
            "triple_fault" | "halted" => RunExit::GuestFault,
            "seccomp" | "signal" | "protocol_violation" => RunExit::WorkerFailed,
            "stopped" => match quit {
                Some(Quit::Escape) => RunExit::Quit,
                _ => RunExit::Error,
            },
            _ => match ended.outcome {
                // The worker could not set up (arguments, images, the
                // sandbox on this host): an error, not a crash.
                Some(WorkerOutcome::Exited(WorkerExit::BadSetup | WorkerExit::SandboxFailed))
                | None => RunExit::Error,
                Some(_) => RunExit::WorkerFailed,
            },
        }
    }
}

/// Why the user ended the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quit {
    Escape,
    Signal(&'static str),
}

/// Terminal input to guest input: Ctrl-] q quits, Ctrl-] Ctrl-] sends
/// one Ctrl-], Ctrl-] followed by any other byte sends both.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending: bool,
}

impl EscapeFilter {
    /// Appends to `out` what `input` sends to the guest; `true` when the
    /// quit sequence was typed (the rest of `input` is dropped).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'q' | b'Q' => return true,
                    ESCAPE => out.push(ESCAPE),
                    _ => out.extend_from_slice(&[ESCAPE, b]),
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// What `bulkhead run` was asked to do.
pub struct RunOptions {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
    pub memory_mib: u32,
    pub screenshot: Option<PathBuf>,
    /// The worker's uid/gid (default: [`default_uid`]).
    pub uid: Option<u32>,
    pub allow_weaker_sandbox: bool,
    pub worker: PathBuf,
    /// IDE drives (`--disk`, `--cdrom`).
    pub drives: Vec<crate::drives::DriveDef>,
    /// Run through the CPU's JIT (`--jit`).
    pub jit: bool,
}

/// The default per-run uid: 150000 + pid % 50000, above the range of a
/// daemon with the default `--uid-base` (100000 + slot).
pub fn default_uid() -> u32 {
    150_000 + std::process::id() % 50_000
}

/// The terminal side of a run.
struct Console {
    name: String,
    out: std::sync::mpsc::Sender<Vec<u8>>,
    /// Raw mode needs "\r\n" for our own lines.
    raw: bool,
    quit: Mutex<Option<Quit>>,
}

impl Console {
    fn say(&self, line: &str) {
        let nl = if self.raw { "\r\n" } else { "\n" };
        eprint!("bulkhead: {line}{nl}");
    }

    fn quit(&self) -> Option<Quit> {
        self.quit.lock().map(|q| *q).unwrap_or(None)
    }
}

impl RunHost for Console {
    fn name(&self) -> &str {
        &self.name
    }

    fn serial_output(&self, bytes: &[u8]) {
        let _ = self.out.send(bytes.to_vec());
    }

    fn status(&self, _status: Status) {}

    fn log(&self, line: &str) {
        self.say(line);
    }

    fn stop_requested(&self) -> bool {
        self.quit().is_some()
    }

    /// The worker's own lines (protections skipped in the weaker mode, a
    /// seccomp report, a panic) are the operator's to see.
    fn worker_stderr(&self, bytes: &[u8]) {
        let mut err = std::io::stderr().lock();
        let _ = if self.raw {
            let mut text = Vec::with_capacity(bytes.len() + 8);
            for &b in bytes {
                if b == b'\n' {
                    text.push(b'\r');
                }
                text.push(b);
            }
            err.write_all(&text)
        } else {
            err.write_all(bytes)
        };
    }
}

/// Runs the VM to its end; returns the exit status. Prints one line to
/// stderr saying why the run ended.
pub fn run(opts: RunOptions) -> RunExit {
    let (code, reason) = match run_inner(opts) {
        Ok(end) => end,
        Err(e) => (RunExit::Error, e),
    };
    eprintln!("bulkhead: {reason} (exit {})", code as u8);
    code
}

fn run_inner(opts: RunOptions) -> Result<(RunExit, String), String> {
    let pid = std::process::id();
    let absolute = |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    let def = VmDef {
        name: format!("run-{pid}"),
        owner_uid: sys::getuid(),
        memory_mib: opts.memory_mib,
        kernel: absolute(&opts.kernel)?,
        initrd: opts.initrd.as_deref().map(absolute).transpose()?,
        append: opts.append.clone(),
        restart: Default::default(),
        autostart: false,
        jit: opts.jit,
        drives: opts
            .drives
            .iter()
            .map(|d| {
                Ok(crate::drives::DriveDef {
                    path: absolute(&d.path)?,
                    ..d.clone()
                })
            })
            .collect::<Result<_, String>>()?,
    };
    let mut def = def;
    if let Err(e) = def.normalize() {
        return Ok((RunExit::Usage, e.to_string()));
    }
    if sys::getuid() != 0 && !opts.allow_weaker_sandbox {
        return Err(not_root_message(&opts.worker));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    // The main thread spawns the worker and outlives it (the worker's
    // parent-death signal fires when the spawning thread ends).
    rt.block_on(run_vm(&opts, &def))
}

/// Names what the full sandbox lacks without root (from the worker's
/// probe).
fn not_root_message(worker: &Path) -> String {
    let missing = std::process::Command::new(worker)
        .arg("probe")
        .output()
        .ok()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("MISSING"))
                .map(|l| format!("\n  {}", l.trim()))
                .collect::<String>()
        })
        .unwrap_or_default();
    format!(
        "the full sandbox needs root (a per-run uid/gid and a cgroup); as uid {} this host lacks:{}\n\
         run as root, or pass --allow-weaker-sandbox to run with what this user has (see `bulkhead doctor`)",
        sys::getuid(),
        if missing.is_empty() {
            "\n  PerVmIds, cgroups".into()
        } else {
            missing
        }
    )
}

async fn run_vm(opts: &RunOptions, def: &VmDef) -> Result<(RunExit, String), String> {
    let spawn = Spawn {
        worker: &opts.worker,
        uid: opts.uid.unwrap_or_else(default_uid),
        cgroup: &def.name,
        allow_weaker: opts.allow_weaker_sandbox,
        undo_dir: std::env::temp_dir().join(format!("bulkhead-{}-undo", def.name)),
    };
    let prepared = worker::prepare(&spawn, def)?;
    let memfd = prepared.memfd.clone();
    let control = prepared.control_tx.clone();
    let worker_pid = prepared.pid;

    let stdin_fd = std::io::stdin().as_raw_fd();
    let raw = RawTerminal::enter(stdin_fd);
    let _restore_on_panic = raw.as_ref().map(|t| PanicRestore::install(t.restorer()));

    let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let stdout_thread = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        for bytes in out_rx {
            if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let console = Console {
        name: def.name.clone(),
        out: out_tx,
        raw: raw.is_some(),
        quit: Mutex::new(None),
    };
    if raw.is_some() {
        console.say("COM1 is this terminal; quit with Ctrl-] q");
    }

    let (serial_tx, serial_rx) = mpsc::channel::<Vec<u8>>(64);
    let (quit_tx, mut quit_rx) = mpsc::unbounded_channel::<Quit>();
    // Kept so the worker's serial input stays open after stdin's EOF.
    let _serial_keep = serial_tx.clone();
    let tty = raw.is_some();
    std::thread::spawn(move || pump_stdin(tty, &serial_tx, &quit_tx));

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let serial_in = Arc::new(tokio::sync::Mutex::new(serial_rx));
    let ended = {
        let drive = worker::drive(&console, def, serial_in, prepared, None);
        tokio::pin!(drive);
        let mut kill_at: Option<tokio::time::Instant> = None;
        loop {
            let quit = tokio::select! {
                ended = &mut drive => break ended,
                Some(q) = quit_rx.recv() => q,
                _ = sigint.recv() => Quit::Signal("SIGINT"),
                _ = sigterm.recv() => Quit::Signal("SIGTERM"),
                _ = sighup.recv() => Quit::Signal("SIGHUP"),
                _ = sleep_until(kill_at) => {
                    if let Some(pid) = worker_pid {
                        let _ = sys::kill(pid, libc::SIGKILL);
                    }
                    kill_at = None;
                    continue;
                }
            };
            if let Ok(mut q) = console.quit.lock()
                && q.is_none()
            {
                *q = Some(quit);
                if let Ok(frame) = protocol::encode(&ToWorker::Shutdown) {
                    let _ = control.try_send(frame);
                }
                kill_at = Some(tokio::time::Instant::now() + QUIT_GRACE);
            }
        }
    };

    // The serial bytes reach stdout before the reason line.
    let quit = console.quit();
    drop(console);
    let _ = stdout_thread.join();
    let cgroup = def.name.clone();
    let _ = tokio::task::spawn_blocking(move || worker::remove_cgroup(&cgroup)).await;
    drop(_restore_on_panic);
    drop(raw);
    // `run` has no restarts: its undo disks end with it.
    for line in crate::drives::finish_undo(&def.drives, &spawn.undo_dir) {
        match line {
            Ok(line) => eprintln!("bulkhead: {line}"),
            Err(e) => eprintln!("bulkhead: undo disk: {e}"),
        }
    }

    let mut code = RunExit::of(&ended, quit);
    let mut reason = reason_line(&ended.record, quit);
    if let Some(path) = &opts.screenshot {
        let shot = worker::screenshot(&memfd)
            .map_err(|e| format!("taking the screenshot: {e}"))
            .and_then(|png| {
                std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
            });
        if let Err(e) = shot {
            eprintln!("bulkhead: {e}");
            if code == RunExit::PowerOff {
                code = RunExit::Error;
                reason = format!("{reason}; {e}");
            }
        }
    }
    Ok((code, reason))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn reason_line(record: &ExitRecord, quit: Option<Quit>) -> String {
    match (record.kind.as_str(), quit) {
        ("stopped", Some(Quit::Escape)) => "quit with the escape key".into(),
        ("stopped", Some(Quit::Signal(name))) => format!("stopped by {name}"),
        _ => record.reason.clone(),
    }
}

/// Stdin to the guest's COM1, until EOF; on a terminal, watches for the
/// escape sequence.
fn pump_stdin(tty: bool, serial: &mpsc::Sender<Vec<u8>>, quit: &mpsc::UnboundedSender<Quit>) {
    let mut stdin = std::io::stdin().lock();
    let mut filter = EscapeFilter::default();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut bytes = Vec::with_capacity(n);
        let quitting = if tty {
            filter.feed(&buf[..n], &mut bytes)
        } else {
            bytes.extend_from_slice(&buf[..n]);
            false
        };
        if !bytes.is_empty() && serial.blocking_send(bytes).is_err() {
            return;
        }
        if quitting {
            let _ = quit.send(Quit::Escape);
            return;
        }
    }
}

/// Restores the terminal from a panic on any thread, then runs the
/// previous hook; uninstalled on drop.
struct PanicRestore;

impl PanicRestore {
    fn install(restorer: sys::TermRestore) -> PanicRestore {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restorer.restore();
            previous(info);
        }));
        PanicRestore
    }
}

impl Drop for PanicRestore {
    fn drop(&mut self) {
        // Back to the default hook (the one `install` wrapped is gone
        // with the closure).
        let _ = std::panic::take_hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(filter: &mut EscapeFilter, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let quit = filter.feed(input, &mut out);
        (out, quit)
    }

    #[test]
    fn escape_then_q_quits_and_drops_the_rest() {
        let (out, quit) = feed(&mut EscapeFilter::default(), b"ab\x1dqcd");
        assert_eq!((out.as_slice(), quit), (&b"ab"[..], true));
    }

    #[test]
    fn escape_sequence_split_across_reads_still_quits() {
        let mut f = EscapeFilter::default();
        assert_eq!(feed(&mut f, b"x\x1d"), (b"x".to_vec(), false));
        assert_eq!(feed(&mut f, b"q"), (Vec::new(), true));
    }

    #[test]
    fn double_escape_sends_one_and_other_keys_pass_through() {
        let (out, quit) = feed(&mut EscapeFilter::default(), b"\x1d\x1d\x1dx");
        assert_eq!((out.as_slice(), quit), (&b"\x1d\x1dx"[..], false));
    }

    fn ended(kind: &str, outcome: Option<WorkerOutcome>) -> Ended {
        Ended {
            record: ExitRecord {
                kind: kind.into(),
                reason: String::new(),
                time_ms: 0,
                failure: false,
            },
            outcome,
        }
    }

    #[test]
    fn exit_status_says_why_the_run_ended() {
        let ok = Some(WorkerOutcome::Exited(WorkerExit::Ok));
        assert_eq!(
            RunExit::of(&ended("power_off", ok), None),
            RunExit::PowerOff
        );
        assert_eq!(
            RunExit::of(&ended("triple_fault", ok), None),
            RunExit::GuestFault
        );
        assert_eq!(
            RunExit::of(&ended("seccomp", None), None),
            RunExit::WorkerFailed
        );
        assert_eq!(
            RunExit::of(&ended("stopped", ok), Some(Quit::Escape)),
            RunExit::Quit
        );
        assert_eq!(
            RunExit::of(&ended("stopped", ok), Some(Quit::Signal("SIGTERM"))),
            RunExit::Error
        );
        let panic = Some(WorkerOutcome::Exited(WorkerExit::Panic));
        assert_eq!(
            RunExit::of(&ended("worker_error", panic), None),
            RunExit::WorkerFailed
        );
        let setup = Some(WorkerOutcome::Exited(WorkerExit::SandboxFailed));
        assert_eq!(
            RunExit::of(&ended("worker_error", setup), None),
            RunExit::Error
        );
    }
}
