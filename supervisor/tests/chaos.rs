//! The chaos device end to end: a real `bulkhead serve` whose workers are
//! built with vm-worker's test-only `chaos` feature, so a guest writing an
//! action number to port 0x5C makes its own worker panic, segfault, make a
//! forbidden syscall or send garbage on the control socket. Each must be
//! reported with the right reason, must not disturb a healthy VM next to
//! it, and a crash loop must park the VM as `failed`.
//!
//! The seccomp filter, uid switching and cgroups need root: not as root,
//! every test here prints "SKIPPED" and returns.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
/// Generous: the tests share a loaded machine with other test binaries.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The chaos device's port (vm-worker/src/chaos.rs).
const CHAOS_PORT: u16 = 0x5C;

/// What a test guest does after printing its first line.
#[derive(Clone, Copy)]
enum Guest {
    /// Prints "TICK\n" forever, about every 100 ms; the power button is
    /// polled and powers off.
    Ticker,
    /// Prints "CHAOS\n", then writes this action number to port 0x5C.
    Chaos(u8),
}

/// A Multiboot kernel (a.out kludge at 1 MiB).
fn kernel(guest: Guest) -> Vec<u8> {
    const ORG: u32 = 0x10_0000;
    let build = || -> Result<Vec<u8>, IcedError> {
        let mut a = common::multiboot_assembler()?;
        let print = common::print_com1;
        match guest {
            Guest::Ticker => {
                print(&mut a, b"BOOT\n")?;
                let mut top = a.create_label();
                let mut delay = a.create_label();
                let mut off = a.create_label();
                a.set_label(&mut top)?;
                a.nop()?;
                print(&mut a, b"TICK\n")?;
                a.mov(ecx, 200_000u32)?;
                a.set_label(&mut delay)?;
                a.mov(dx, 0x600)?;
                a.in_(ax, dx)?;
                a.test(ax, 0x100)?;
                a.jnz(off)?;
                a.dec(ecx)?;
                a.jnz(delay)?;
                a.jmp(top)?;
                a.set_label(&mut off)?;
            }
            Guest::Chaos(action) => {
                print(&mut a, b"CHAOS\n")?;
                // A short pause first, so `vm start` usually sees the
                // worker running before it misbehaves.
                let mut delay = a.create_label();
                a.mov(ecx, 100_000u32)?;
                a.set_label(&mut delay)?;
                a.mov(dx, 0x600)?;
                a.in_(ax, dx)?;
                a.dec(ecx)?;
                a.jnz(delay)?;
                a.mov(dx, u32::from(CHAOS_PORT))?;
                a.mov(al, u32::from(action))?;
                a.out(dx, al)?;
                // Only reached if the action returned (garbage frames):
                // spin, so only the supervisor can end this run.
                print(&mut a, b"SURVIVED\n")?;
                let mut spin = a.create_label();
                a.set_label(&mut spin)?;
                a.jmp(spin)?;
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

/// True (after saying so) when `test` cannot run here.
fn skip(test: &str) -> bool {
    if common::is_root() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: needs root because the worker's seccomp filter, per-VM uid and \
         cgroup are what turn chaos into a reported violation"
    );
    true
}

/// The worker binary with the `chaos` feature, built once for this test
/// run into its own target directory (debug: `chaos` refuses release
/// builds), so neither e2e.rs's worker nor vm-worker's own test build is
/// replaced mid-run.
fn chaos_worker() -> PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER
        .get_or_init(|| common::build_worker("supervisor-chaos-tests", &["--features", "chaos"]))
        .clone()
}

/// A daemon in a temp dir running the chaos worker; SIGTERM (then SIGKILL)
/// on drop.
struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon with `policy` as its `policy.toml`.
    fn new(policy: &str) -> Daemon {
        let worker = chaos_worker();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A range of its own: e2e.rs uses 300,000 + ... below 500,000.
        static N: AtomicU32 = AtomicU32::new(0);
        let uid_base =
            600_000 + (std::process::id() % 200) * 1000 + N.fetch_add(1, Ordering::Relaxed) * 40;
        let mut d = Daemon { child: None, dir };
        std::fs::create_dir_all(d.state()).unwrap();
        std::fs::write(d.state().join("policy.toml"), policy).unwrap();
        d.child = Some(
            Command::new(BIN)
                .arg("serve")
                .arg("--socket")
                .arg(d.socket())
                .arg("--state-dir")
                .arg(d.state())
                .args(["--uid-base", &uid_base.to_string()])
                .env("BULKHEAD_WORKER", &worker)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(d.socket()).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("bulkhead.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs the CLI, asserts success, parses stdout as JSON (or Null).
    fn ok(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "bulkhead {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn info(&self, name: &str) -> Value {
        self.ok(&["vm", "info", name, "--json"])
    }

    fn create(&self, name: &str, guest: Guest, restart: &str) -> Value {
        let file = match guest {
            Guest::Ticker => "ticker.bin".to_string(),
            Guest::Chaos(n) => format!("chaos-{n}.bin"),
        };
        let path = self.dir.path().join(file);
        std::fs::write(&path, kernel(guest)).unwrap();
        let kernel = path.display().to_string();
        self.ok(&[
            "vm",
            "create",
            name,
            "--memory",
            "16",
            "--kernel",
            &kernel,
            "--restart",
            restart,
            "--json",
        ])
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state().join(format!("logs/{name}.serial.log")))
            .unwrap_or_default()
    }

    fn ticks(&self, name: &str) -> usize {
        self.log(name).matches("TICK").count()
    }

    /// Waits until `cond` holds for `vm info`.
    fn wait_info(&self, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let info = self.info(name);
            if cond(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: waiting for {what}: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ticks(&self, name: &str, count: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.ticks(name) < count {
            assert!(
                Instant::now() < deadline,
                "{name}: fewer than {count} ticks: {:?}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the healthy neighbour and waits for it to tick.
    fn start_ticker(&self, name: &str) -> i32 {
        self.create(name, Guest::Ticker, "no");
        self.ok(&["vm", "start", name]);
        self.wait_ticks(name, 2);
        let info = self.wait_info(name, "running", |i| i["state"] == "running");
        info["pid"].as_u64().unwrap() as i32
    }

    /// The neighbour is untouched: the same worker, never restarted, and
    /// its serial log still grows.
    fn assert_ticker_unharmed(&self, name: &str, pid: i32) {
        let before = self.ticks(name);
        self.wait_ticks(name, before + 3);
        let info = self.info(name);
        assert_eq!(info["state"], "running", "{info}");
        assert_eq!(info["restarts"], 0, "{info}");
        assert_eq!(info["pid"].as_u64().unwrap() as i32, pid, "{info}");
        assert!(info["last_exit"].is_null(), "{info}");
    }

    /// Starts `name` (the guest may already misbehave while `vm start`
    /// waits, which then reports the failure) and waits for its run to end.
    fn start_and_wait_for_exit(&self, name: &str) -> Value {
        let out = self.cli(&["vm", "start", name]);
        let info = self.wait_info(name, "the run to end", |i| {
            !i["last_exit"].is_null() && i["state"] == "stopped"
        });
        if !out.status.success() {
            // A failed start says why, like `vm info` does.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
        }
        info
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SAFETY: kill with the pid of a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Nothing of the ended worker is left in the cgroup tree (v2, or any v1
/// controller).
fn assert_cgroup_removed(name: &str) {
    let deadline = Instant::now() + TIMEOUT;
    for c in ["", "memory/", "cpu/", "pids/"] {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/{c}bulkhead/{name}"));
        while dir.exists() {
            assert!(
                Instant::now() < deadline,
                "{} outlived its worker",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One chaos VM (`--restart no`) next to a ticker: the chaos VM stops with
/// a failure whose `vm info` record `check` accepts, and the ticker keeps
/// running. Returns the chaos VM's final `vm info`.
fn chaos_next_to_a_ticker(tag: &str, action: u8) -> Value {
    let d = Daemon::new("");
    let ticker = format!("chaos-{tag}-ticker");
    let victim = format!("chaos-{tag}-vm");
    let pid = d.start_ticker(&ticker);
    d.create(&victim, Guest::Chaos(action), "no");
    let info = d.start_and_wait_for_exit(&victim);
    assert!(info["pid"].is_null(), "{info}");
    assert_eq!(info["restarts"], 0, "{info}");
    assert_eq!(info["last_exit"]["failure"], true, "{info}");
    // The guest really ran up to the chaos write, and the crash kept its
    // serial output.
    assert!(d.log(&victim).contains("CHAOS"), "{:?}", d.log(&victim));
    let crash = &info["last_crash"];
    assert_eq!(crash["exit"], info["last_exit"], "{info}");
    let serial = std::fs::read_to_string(crash["serial_log"].as_str().unwrap()).unwrap();
    assert!(serial.contains("CHAOS"), "{serial:?}");

    assert_cgroup_removed(&victim);

    d.assert_ticker_unharmed(&ticker, pid);
    // The human view gives the same reason.
    let human = String::from_utf8(d.cli(&["vm", "info", &victim]).stdout).unwrap();
    let reason = info["last_exit"]["reason"].as_str().unwrap();
    assert!(human.contains(reason), "{human}");
    d.ok(&["vm", "stop", &ticker]);
    info
}

#[test]
fn a_worker_panic_is_reported_and_its_neighbour_keeps_running() {
    if skip("a_worker_panic_is_reported_and_its_neighbour_keeps_running") {
        return;
    }
    let info = chaos_next_to_a_ticker("panic", 1);
    let exit = &info["last_exit"];
    assert_eq!(exit["kind"], "worker_error", "{info}");
    let reason = exit["reason"].as_str().unwrap();
    assert!(reason.contains("panicked (101)"), "{info}");
}

#[test]
fn a_worker_segfault_is_reported_and_its_neighbour_keeps_running() {
    if skip("a_worker_segfault_is_reported_and_its_neighbour_keeps_running") {
        return;
    }
    let info = chaos_next_to_a_ticker("segv", 2);
    let exit = &info["last_exit"];
    assert_eq!(exit["kind"], "signal", "{info}");
    let reason = exit["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("signal {} (SIGSEGV)", libc::SIGSEGV)),
        "{info}"
    );
}

#[test]
fn a_forbidden_socket_call_is_a_seccomp_violation_naming_it() {
    if skip("a_forbidden_socket_call_is_a_seccomp_violation_naming_it") {
        return;
    }
    let info = chaos_next_to_a_ticker("socket", 7);
    let exit = &info["last_exit"];
    assert_eq!(exit["kind"], "seccomp", "{info}");
    let reason = exit["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("forbidden syscall socket ({})", libc::SYS_socket)),
        "{info}"
    );
}

#[test]
fn opening_a_host_file_is_a_seccomp_violation_naming_it() {
    if skip("opening_a_host_file_is_a_seccomp_violation_naming_it") {
        return;
    }
    let info = chaos_next_to_a_ticker("open", 6);
    let exit = &info["last_exit"];
    assert_eq!(exit["kind"], "seccomp", "{info}");
    let reason = exit["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("forbidden syscall openat ({})", libc::SYS_openat)),
        "{info}"
    );
}

#[test]
fn garbage_frames_are_a_protocol_violation() {
    if skip("garbage_frames_are_a_protocol_violation") {
        return;
    }
    let info = chaos_next_to_a_ticker("garbage", 5);
    let exit = &info["last_exit"];
    assert_eq!(exit["kind"], "protocol_violation", "{info}");
    assert!(
        exit["reason"]
            .as_str()
            .unwrap()
            .starts_with("protocol violation: "),
        "{info}"
    );
}

#[test]
fn a_chaos_crash_loop_parks_the_vm_as_failed_after_the_limit() {
    if skip("a_chaos_crash_loop_parks_the_vm_as_failed_after_the_limit") {
        return;
    }
    const FAILURES: u64 = 4;
    let d = Daemon::new(&format!(
        "restart_backoff_ms = 50\nrestart_backoff_max_ms = 200\n\
         crash_loop_failures = {FAILURES}\ncrash_loop_window_ms = 600000\n"
    ));
    let ticker = "chaos-loop-ticker";
    let victim = "chaos-loop-vm";
    let pid = d.start_ticker(ticker);
    d.create(victim, Guest::Chaos(1), "always");
    // The first start may already see the panic.
    let _ = d.cli(&["vm", "start", victim]);
    let info = d.wait_info(victim, "failed", |i| i["state"] == "failed");
    // The first start plus one restart per failure but the last.
    assert_eq!(info["restarts"], FAILURES - 1, "{info}");
    assert!(info["pid"].is_null(), "{info}");
    let exit = &info["last_exit"];
    assert_eq!(exit["kind"], "worker_error", "{info}");
    assert!(
        exit["reason"].as_str().unwrap().contains("panicked (101)"),
        "{info}"
    );
    assert_eq!(info["last_crash"]["exit"], *exit, "{info}");
    // Every run got as far as the chaos write.
    assert!(
        d.log(victim).matches("CHAOS").count() as u64 >= FAILURES,
        "{:?}",
        d.log(victim)
    );
    let human = String::from_utf8(d.cli(&["vm", "info", victim]).stdout).unwrap();
    assert!(human.contains("failed"), "{human}");
    assert!(human.contains("panicked (101)"), "{human}");

    // Parked means parked: no further restarts.
    std::thread::sleep(Duration::from_secs(1));
    let later = d.info(victim);
    assert_eq!(later["state"], "failed", "{later}");
    assert_eq!(later["restarts"], FAILURES - 1, "{later}");
    d.assert_ticker_unharmed(ticker, pid);
    d.ok(&["vm", "stop", ticker]);
}

#[test]
fn execve_ptrace_and_kill_are_seccomp_violations_naming_them() {
    if skip("execve_ptrace_and_kill_are_seccomp_violations_naming_them") {
        return;
    }
    let d = Daemon::new("");
    let ticker = "chaos-sys-ticker";
    let pid = d.start_ticker(ticker);
    for (action, name, nr) in [
        (8, "execve", libc::SYS_execve),
        (9, "ptrace", libc::SYS_ptrace),
        (10, "kill", libc::SYS_kill),
    ] {
        let victim = format!("chaos-sys-{name}");
        d.create(&victim, Guest::Chaos(action), "no");
        let info = d.start_and_wait_for_exit(&victim);
        let exit = &info["last_exit"];
        assert_eq!(exit["kind"], "seccomp", "{info}");
        assert!(
            exit["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("forbidden syscall {name} ({nr})")),
            "{info}"
        );
        assert_cgroup_removed(&victim);
    }
    d.assert_ticker_unharmed(ticker, pid);
    d.ok(&["vm", "stop", ticker]);
}

#[test]
fn unbounded_allocation_is_stopped_by_the_cgroup_alone() {
    if skip("unbounded_allocation_is_stopped_by_the_cgroup_alone") {
        return;
    }
    let info = chaos_next_to_a_ticker("alloc", 4);
    let exit = &info["last_exit"];
    assert_eq!(exit["kind"], "signal", "{info}");
    assert!(
        exit["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("signal {} (SIGKILL)", libc::SIGKILL)),
        "{info}"
    );
}
