//! `bulkhead-worker run`: one VM, from the fds the supervisor passed.
//!
//! The sequence, all of it in [`run`]:
//!
//! 1. Main thread, nothing else running yet: take fds 3..=8
//!    ([`protocol::fds`]), exchange hellos on the control socket, read and
//!    validate the [`protocol::WorkerConfig`], read the boot images from
//!    their fds and map the framebuffer memfd's header ([`setup`]). The
//!    worker opens no path itself.
//! 2. Enter the sandbox ([`crate::sandbox::enter`]) keeping fds 3, 4 and 5;
//!    seccomp goes on last. The machine is built *after* seccomp: the
//!    filter allows `mmap` of any flags but `PROT_EXEC` (guest RAM, the
//!    shared framebuffer, thread stacks), so nothing needs mapping early,
//!    and the machine's own set-up already runs under the filter that
//!    confines the guest.
//! 3. Threads: `vcpu0` builds the `Pc` (it is `!Send`) and runs it
//!    ([`vcpu`]); `control` serves [`protocol::ToWorker`] frames
//!    ([`control`]); `present` publishes framebuffer frames
//!    ([`presenter`]); `serial-out`/`serial-in` move COM1's bytes over fd
//!    5 ([`serial`]). Every frame to the supervisor goes through one
//!    locked writer ([`outbox`]).
//! 4. The main thread waits for the end: the guest powered off or wrote
//!    the debug-exit port, the supervisor sent Shutdown or closed the
//!    socket (exit 0), or sent a frame the worker cannot accept (exit 66).
//!    It flushes the last frame and COM1's buffered output, then returns.

pub mod control;
pub mod drives;
pub mod outbox;
pub mod presenter;
pub mod serial;
pub mod setup;
mod sys;
pub mod vcpu;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use machine::pc::{PcConfig, PortHook, SerialOut};
use protocol::{FbError, FromWorker, LogLevel, ReadyInfo, VmState, WorkerConfig, WorkerExit, fds};

use crate::sandbox::{self, CgroupPlan, Limits, Plan, SandboxError};
use outbox::Outbox;
use presenter::Presenter;
use serial::{SerialRing, SerialSink};
use setup::{Inherited, SetupError};
use vcpu::{Counters, RunFlags, Vcpu};

/// How long the worker waits for COM1's buffered output to reach fd 5
/// before exiting.
const SERIAL_DRAIN: Duration = Duration::from_secs(1);
/// Memory the worker needs besides guest RAM (framebuffer copy, decoded
/// code cache, thread stacks, boot images).
const OVERHEAD_BYTES: u64 = 256 << 20;

/// The sandbox `run` enters.
#[derive(Clone, Debug)]
pub enum SandboxChoice {
    Enter {
        uid: u32,
        gid: u32,
        cgroup_root: PathBuf,
        cgroup: String,
        /// Cgroup memory limit; guest RAM plus an overhead when `None`.
        memory: Option<u64>,
        allow_weaker: bool,
        /// The seccomp filter lets the CPU's JIT make code executable.
        jit: bool,
    },
    /// Tests that cannot run as root only: no isolation at all.
    None,
}

impl SandboxChoice {
    /// The plan for this VM, keeping the fds `run` still needs.
    pub fn plan(&self, config: &WorkerConfig) -> Option<Plan> {
        let SandboxChoice::Enter {
            uid,
            gid,
            cgroup_root,
            cgroup,
            memory,
            allow_weaker,
            jit,
        } = self
        else {
            return None;
        };
        let mut plan = Plan::for_vm(0);
        plan.uid = *uid;
        plan.gid = *gid;
        plan.hostname = "bulkhead-vm".into();
        plan.allow_weaker = *allow_weaker;
        plan.jit = *jit;
        plan.keep_fds = vec![fds::CONTROL];
        if config.framebuffer.is_some() {
            plan.keep_fds.push(fds::FRAMEBUFFER);
        }
        if config.serial {
            plan.keep_fds.push(fds::SERIAL_COM1);
        }
        plan.keep_fds
            .extend(config.drives.iter().flat_map(|d| d.fds.iter().copied()));
        plan.cgroup = Some(CgroupPlan {
            root: cgroup_root.clone(),
            name: cgroup.clone(),
            limits: Limits {
                memory_bytes: memory.unwrap_or((u64::from(config.ram_mib) << 20) + OVERHEAD_BYTES),
                cpu_percent: 100,
                pids_max: 64,
            },
        });
        Some(plan)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("entering the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("setting the framebuffer mode: {0}")]
    Framebuffer(#[source] FbError),
    #[error("duplicating the {what} fd: {source}")]
    Dup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("spawning the {name} thread: {source}")]
    Spawn {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("building the machine: {0}")]
    Build(String),
    #[error("the supervisor sent a frame the worker cannot accept")]
    Protocol,
}

impl VmError {
    /// The exit code the supervisor sees.
    pub fn exit(&self) -> WorkerExit {
        match self {
            VmError::Setup(e) => e.exit(),
            VmError::Sandbox(_) => WorkerExit::SandboxFailed,
            VmError::Protocol => WorkerExit::ProtocolError,
            _ => WorkerExit::BadSetup,
        }
    }
}

fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, VmError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| VmError::Spawn { name, source })
}

/// A panic on any thread ends the worker with [`WorkerExit::Panic`]: a
/// worker with a dead vCPU or control thread must not linger.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::exit(WorkerExit::Panic.code());
    }));
}

/// Runs the VM. Main thread only, with no other thread started yet (the
/// sandbox forks).
/// `jit`: run the guest through the CPU's JIT (`choice` must then allow
/// it: `SandboxChoice::Enter { jit: true, .. }`).
pub fn run(choice: &SandboxChoice, jit: bool) -> Result<(), VmError> {
    exit_on_panic();
    sys::single_malloc_arena();
    let setup = setup::setup(Inherited::take())?;
    match choice.plan(&setup.config) {
        Some(plan) => {
            sandbox::enter(&plan)?;
        }
        None => eprintln!(
            "bulkhead-worker: WARNING: --no-sandbox: this worker runs the guest with NO \
             isolation (no namespaces, no cgroup, no seccomp). For tests only; never use \
             it for a real VM."
        ),
    }
    let setup::Setup {
        control,
        config,
        firmware,
        framebuffer,
        serial,
        drives,
    } = setup;
    // Parsed inside the sandbox: the images are untrusted input.
    let drives = drives::open(drives).map_err(|e| VmError::Build(e.to_string()))?;
    // Clones only now: the sandbox closes every fd it was not told to keep.
    let dup = |what| move |source| VmError::Dup { what, source };
    let out = Outbox::new(control.try_clone().map_err(dup("control"))?);
    let (exit_tx, exit_rx) = mpsc::channel();

    let ring = Arc::new(SerialRing::default());
    let (com1, serial_in): (SerialOut, _) = match serial {
        Some(file) => {
            let input = file.try_clone().map_err(dup("serial"))?;
            let r = ring.clone();
            spawn("serial-out", move || r.write_to(file))?;
            (Box::new(SerialSink(ring.clone())), Some(input))
        }
        None => (Box::new(io::sink()), None),
    };

    let (writer, fb_config) = match framebuffer.map(setup::SharedFramebuffer::pc_config) {
        Some((mut writer, fb)) => {
            let mode = writer
                .set_mode(fb.width.into(), fb.height.into())
                .map_err(VmError::Framebuffer)?;
            (Some((writer, mode)), Some(fb))
        }
        None => (None, None),
    };
    let video_mode = writer.as_ref().map(|&(_, mode)| mode);

    let flags = Arc::new(RunFlags::default());
    let counters = Arc::new(Counters::default());
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let vcpu = Vcpu {
        flags: flags.clone(),
        counters: counters.clone(),
        out: out.clone(),
        ready: ready_tx,
        exit: exit_tx.clone(),
        jit,
    };
    let ram_mib = config.ram_mib;
    let debug = config.debug;
    let vcpu_out = out.clone();
    let vcpu_thread = spawn("vcpu0", move || {
        if debug.deterministic {
            vcpu_out.log(
                LogLevel::Warn,
                "deterministic time is not available yet: using the host clock",
            );
        }
        // Built here: the config holds `!Send` parts (the clock, the hook).
        let config = PcConfig {
            ram_mib,
            firmware,
            framebuffer: fb_config,
            serial: [com1, Box::new(io::sink())],
            debug_console: debug
                .debug_console
                .then(|| Box::new(LogWriter::new(vcpu_out.clone())) as Box<dyn Write>),
            debug_exit: debug.debug_exit,
            clock: None,
            port_hook: port_hook(&vcpu_out),
            drives,
        };
        vcpu.run(config);
    })?;
    let handle = match ready_rx.recv() {
        Ok(Ok(handle)) => handle,
        Ok(Err(e)) => return Err(VmError::Build(e)),
        Err(_) => return Err(VmError::Build("the vCPU thread ended".into())),
    };
    let built = Instant::now();
    out.send(&FromWorker::Ready(ReadyInfo {
        ram_mib,
        video_mode,
    }));

    let frames = Arc::new(AtomicU64::new(0));
    let input = Arc::new(AtomicU64::new(0));
    let presenter = match writer {
        Some((writer, mode)) => {
            out.send(&FromWorker::VideoMode(mode));
            let stop = Arc::new((Mutex::new(false), Condvar::new()));
            let p = Presenter::new(writer, frames.clone(), input.clone());
            let s = stop.clone();
            Some((stop, spawn("present", move || p.run(s))?))
        }
        None => None,
    };
    if let Some(serial_input) = serial_in {
        let h = handle.clone();
        let events = input.clone();
        spawn("serial-in", move || {
            serial::read_into(serial_input, h, events)
        })?;
    }
    let ctl = control::Control {
        handle: handle.clone(),
        flags: flags.clone(),
        counters,
        frames,
        input,
        out: out.clone(),
        exit: exit_tx,
        built,
    };
    spawn("control", move || ctl.run(control))?;

    // Every sender lives in a thread that sends before it ends, and a panic
    // exits the process: recv fails only if that reasoning breaks.
    let code = exit_rx.recv().unwrap_or(WorkerExit::Ok);

    flags.update(|f| f.shutdown = true);
    handle.stop();
    // The vCPU thread drops the machine, which joins the drives' I/O
    // threads and flushes their images: nothing the guest wrote is lost.
    let _ = vcpu_thread.join();
    if let Some((stop, join)) = presenter {
        *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        stop.1.notify_all();
        let _ = join.join();
    }
    ring.drain(SERIAL_DRAIN);
    let dropped = ring.dropped();
    if dropped > 0 {
        out.log(
            LogLevel::Warn,
            &format!("COM1: {dropped} bytes of guest output dropped (fd 5 was not read)"),
        );
    }
    match code {
        WorkerExit::Ok => {
            out.send(&FromWorker::State(VmState::Stopped));
            Ok(())
        }
        _ => Err(VmError::Protocol),
    }
}

/// The debug console (ports 0xE9/0x402) as rate-limited log lines.
struct LogWriter {
    out: Outbox,
    line: Vec<u8>,
}

impl LogWriter {
    const MAX_LINE: usize = 256;

    fn new(out: Outbox) -> LogWriter {
        LogWriter {
            out,
            line: Vec::new(),
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b != b'\n' {
                self.line.push(b);
            }
            if b == b'\n' || self.line.len() >= Self::MAX_LINE {
                let text = String::from_utf8_lossy(&self.line).into_owned();
                self.out.log(LogLevel::Info, &format!("guest: {text}"));
                self.line.clear();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// With the `chaos` feature (tests only), guest writes to port 0x5C reach
/// the chaos device.
#[cfg(feature = "chaos")]
fn port_hook(out: &Outbox) -> Option<PortHook> {
    use crate::chaos::ChaosDevice;
    let out = out.clone();
    let mut device = ChaosDevice::new(sandbox::inside::inherited_fd(fds::CONTROL));
    Some(Box::new(move |port, value| {
        if let Err(e) = device.port_write(port, value) {
            out.log(LogLevel::Warn, &format!("chaos action {value}: {e}"));
        }
    }))
}

#[cfg(not(feature = "chaos"))]
fn port_hook(_out: &Outbox) -> Option<PortHook> {
    None
}
