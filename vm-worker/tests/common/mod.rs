//! The supervisor's side of `bulkhead-worker run`, for tests and the
//! `worker` benchmark: socketpairs, the sealed framebuffer memfd and the
//! boot images placed at the documented fd numbers ([`protocol::fds`]) in
//! the child, the handshake, and helpers to read the control and serial
//! channels and to inspect the worker's processes in /proc.
//!
//! Included by tests/run.rs, tests/isolation.rs and (through `#[path]`)
//! benches/worker.rs; not every includer uses every item.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use protocol::{
    BootSource, DebugFlags, FramebufferSize, FromWorker, Hello, ToWorker, VmState, WorkerConfig,
    fds,
};
use vm_worker::sandbox::{self, cgroup};

pub const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-worker");
/// How long any single wait on the worker lasts before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Why this host cannot give the full sandbox (root, every protection),
/// or `None` when it can.
pub fn sandbox_unavailable() -> Option<String> {
    let host = sandbox::probe();
    if !host.running_as_root {
        return Some(
            "not root (the sandbox creates namespaces and cgroups and switches to a \
             per-VM uid)"
                .into(),
        );
    }
    let missing = host.missing();
    if !missing.is_empty() {
        return Some(format!("this host lacks {missing:?}"));
    }
    None
}

/// Whether this host gives the full sandbox; prints why not.
pub fn sandbox_available(test: &str) -> bool {
    match sandbox_unavailable() {
        None => true,
        Some(why) => {
            eprintln!("SKIPPED the sandbox part of {test}: {why}; running with --no-sandbox");
            false
        }
    }
}

/// A bytes image as a read-only fd (a file unlinked right away).
pub fn image_fd(bytes: &[u8]) -> OwnedFd {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "bulkhead-worker-image-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file.into()
}

/// Options for [`Worker::spawn`].
pub struct Spawn {
    pub kernel: OwnedFd,
    pub initrd: Option<OwnedFd>,
    /// Full sandbox; `false` runs `--no-sandbox`.
    pub sandbox: bool,
    pub config: WorkerConfig,
    /// Placed at fd 9 onwards (the drives' images, in config order).
    pub drives: Vec<OwnedFd>,
    /// `--jit`: the CPU's JIT and the seccomp filter that allows it.
    pub jit: bool,
}

impl Spawn {
    /// A Multiboot or Linux `kernel` with `ram_mib` of RAM, COM1 and a
    /// `width` x `height` framebuffer (none when `fb` is `None`).
    pub fn new(kernel: &[u8], sandbox: bool, ram_mib: u32, fb: Option<(u32, u32)>) -> Spawn {
        Spawn {
            kernel: image_fd(kernel),
            initrd: None,
            jit: false,
            sandbox,
            config: WorkerConfig {
                ram_mib,
                boot: BootSource::Linux {
                    kernel_fd: fds::KERNEL,
                    initrd_fd: None,
                    cmdline: String::new(),
                },
                framebuffer: fb.map(|(width, height)| FramebufferSize { width, height }),
                serial: true,
                debug: DebugFlags::default(),
                drives: Vec::new(),
            },
            drives: Vec::new(),
        }
    }
}

/// A running worker as the supervisor holds it.
pub struct Worker {
    pub child: Child,
    pub control: UnixStream,
    pub serial: UnixStream,
    pub memfd: OwnedFd,
    pub cgroup: Option<String>,
    /// Taken right before fork+exec.
    pub spawned_at: Instant,
}

impl Worker {
    /// Spawns `bulkhead-worker run` with the fds in place and does the
    /// handshake (hellos and the config); does not wait for Ready.
    pub fn spawn(opts: Spawn) -> Worker {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let (control, control_theirs) = UnixStream::pair().unwrap();
        let (serial, serial_theirs) = UnixStream::pair().unwrap();
        let (w, h) = opts
            .config
            .framebuffer
            .map_or((64, 64), |f| (f.width, f.height));
        let memfd = protocol::framebuffer::create(w, h).unwrap();
        let memfd_theirs = memfd.try_clone().unwrap();
        let (kernel, initrd, drives) = (opts.kernel, opts.initrd, opts.drives);

        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let cgroup = if opts.sandbox {
            let name = format!("run-test-{}-{n}", std::process::id());
            // Twenty uids per test process; workers beyond twenty reuse
            // them, which is fine for the benchmark's one-at-a-time spawns.
            let uid = sandbox::ID_BASE + 7000 + (std::process::id() % 1000) * 20 + n % 20;
            cmd.args(["--uid", &uid.to_string(), "--cgroup", &name]);
            Some(name)
        } else {
            cmd.arg("--no-sandbox");
            None
        };
        if opts.jit {
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
        placed.extend(drives.iter().map(|d| d.as_raw_fd()).zip(fds::FIRST_EXTRA..));
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) on fds
        // this process owns, between fork and exec.
        unsafe {
            cmd.pre_exec(move || place_fds(&placed));
        }
        let spawned_at = Instant::now();
        let child = cmd.spawn().unwrap();
        drop((
            control_theirs,
            serial_theirs,
            memfd_theirs,
            kernel,
            initrd,
            drives,
        ));
        control.set_read_timeout(Some(TIMEOUT)).unwrap();
        serial.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut w = Worker {
            child,
            control,
            serial,
            memfd,
            cgroup,
            spawned_at,
        };
        protocol::write_frame(&mut w.control, &Hello::current()).unwrap();
        protocol::read_hello(&mut w.control).unwrap();
        protocol::write_frame(&mut w.control, &opts.config).unwrap();
        w
    }

    pub fn send(&mut self, msg: &ToWorker) {
        protocol::write_frame(&mut self.control, msg).unwrap();
    }

    /// The next frame that `want` accepts, skipping others (log lines,
    /// state changes not asked for).
    pub fn expect<T>(&mut self, what: &str, mut want: impl FnMut(&FromWorker) -> Option<T>) -> T {
        loop {
            let msg: FromWorker = protocol::read_frame(&mut self.control)
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}\n{}", self.stderr_now()));
            if let Some(t) = want(&msg) {
                return t;
            }
        }
    }

    pub fn expect_state(&mut self, state: VmState) {
        self.expect(&format!("State({state:?})"), |m| {
            (*m == FromWorker::State(state)).then_some(())
        });
    }

    /// Reads the serial socket until `text` has arrived; returns all that
    /// was read.
    pub fn expect_serial(&mut self, text: &str) -> String {
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
        String::from_utf8_lossy(&got).into_owned()
    }

    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Exit code, and stderr (read after exit).
    pub fn finish(mut self) -> (Option<i32>, String) {
        let status = self.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), err)
    }

    pub fn stderr_now(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        format!("worker stderr:\n{err}")
    }

    /// The process that runs the VM: with the sandbox, the spawned process
    /// forks into the new pid namespace and waits as its reaper, and the
    /// VM runs in that child; without, it is the spawned process itself.
    pub fn vm_pid(&self) -> u32 {
        let pid = self.child.id();
        if self.cgroup.is_none() {
            return pid;
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(&c) = children_of(pid).first() {
                return c;
            }
            assert!(Instant::now() < deadline, "worker {pid} has no child");
            std::thread::sleep(Duration::from_millis(5));
        }
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
    // ...then into place (dup2 clears close-on-exec on the target): the
    // fixed numbers, and the drives' from fd 9 on.
    let drives = placed
        .iter()
        .map(|&(_, dst)| dst)
        .filter(|&d| d >= fds::FIRST_EXTRA);
    for fd in fds::ALL.iter().map(|&(fd, _)| fd).chain(drives) {
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

/// Host pids whose parent is `pid`: /proc/PID/task/*/children where the
/// kernel has it, else a scan of /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                kids.extend(
                    list.split_whitespace()
                        .filter_map(|s| s.parse::<u32>().ok()),
                );
            }
        }
        if !kids.is_empty() {
            return kids;
        }
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(n) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if status_field(n, "PPid").as_deref() == Some(pid.to_string().as_str()) {
            kids.push(n);
        }
    }
    kids
}

/// A field of /proc/PID/status, its value trimmed.
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Clock ticks per second (USER_HZ).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}

/// A field of /proc/PID/smaps_rollup, in KiB.
pub fn smaps_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in smaps_rollup of {pid}"))
}

/// The byte [`idle_kernel`]'s first OUT sends to COM1.
pub const FIRST_BYTE: u8 = b'!';

/// A Multiboot kernel (a.out kludge, loaded at 1 MiB) whose first three
/// instructions put [`FIRST_BYTE`] on COM1 (no waiting on the line status:
/// the transmitter of a fresh UART is empty), then print "IDLE\n", mask
/// both PICs and halt with interrupts enabled: an idle guest with no
/// timer, which stays halted until the supervisor ends it.
pub fn idle_kernel() -> Vec<u8> {
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
        a.mov(dx, 0x3F8)?;
        a.mov(al, u32::from(FIRST_BYTE))?;
        a.out(dx, al)?;
        for &byte in b"IDLE\n" {
            let mut wait = a.create_label();
            a.set_label(&mut wait)?;
            a.mov(dx, 0x3FD)?;
            a.in_(al, dx)?;
            a.test(al, 0x20)?;
            a.jz(wait)?;
            a.mov(dx, 0x3F8)?;
            a.mov(al, u32::from(byte))?;
            a.out(dx, al)?;
        }
        a.mov(al, 0xFF)?;
        a.out(0x21, al)?;
        a.out(0xA1, al)?;
        a.sti()?;
        let mut idle = a.create_label();
        a.set_label(&mut idle)?;
        a.hlt()?;
        a.jmp(idle)?;
        a.assemble(u64::from(ORG))
    };
    build().expect("assemble the idle kernel")
}
