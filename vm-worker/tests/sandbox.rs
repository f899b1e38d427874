//! Security tests: the real `bulkhead-worker` binary enters the real
//! sandbox with the real seccomp filter, checks its confinement from
//! inside, and dies with exit code 67 on every forbidden syscall.
//!
//! Tests that need root (namespaces, per-VM ids, cgroups) print
//! "SKIPPED: ..." and return when the host cannot provide them.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use protocol::{SECCOMP_REPORT_PREFIX, WorkerExit};
use vm_worker::sandbox::{self, Protection, cgroup};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-worker");

/// Distinct uid and cgroup per test, so tests can run in parallel.
struct Slot {
    uid: u32,
    cgroup: String,
}

impl Slot {
    fn new() -> Slot {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Slot {
            uid: sandbox::ID_BASE + 5000 + (std::process::id() % 1000) * 50 + n,
            cgroup: format!("test-{}-{n}", std::process::id()),
        }
    }

    fn check(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["sandbox-check", "--json", "--uid"])
            .arg(self.uid.to_string())
            .args(["--cgroup", &self.cgroup])
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The worker's pid namespace may take a moment to empty.
        let root = Path::new(cgroup::DEFAULT_ROOT);
        let deadline = Instant::now() + Duration::from_secs(2);
        while cgroup::remove(root, &self.cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Skips (with a message saying why) unless this host gives the full
/// sandbox: root, every namespace, a writable cgroup hierarchy, seccomp.
fn full_sandbox_unavailable(test: &str) -> bool {
    let host = sandbox::probe();
    if !host.running_as_root {
        eprintln!(
            "SKIPPED {test}: needs root because the sandbox creates namespaces, \
             cgroups and switches to a per-VM uid"
        );
        return true;
    }
    let missing = host.missing();
    if !missing.is_empty() {
        eprintln!("SKIPPED {test}: this host lacks {missing:?}");
        return true;
    }
    false
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); status {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_trapped(out: &Output, syscall_nr: u32) {
    let line = format!("{SECCOMP_REPORT_PREFIX}{syscall_nr}\n");
    assert_eq!(
        out.status.code(),
        Some(WorkerExit::SeccompViolation.code()),
        "stderr: {}",
        stderr(out)
    );
    assert!(
        stderr(out).contains(&line),
        "want {line:?} in {}",
        stderr(out)
    );
    // The report came out before the violation: the filter was in force.
    assert_eq!(json(out)["inside"]["seccomp_mode"], 2);
}

#[test]
fn sandbox_check_reports_full_confinement() {
    if full_sandbox_unavailable("sandbox_check_reports_full_confinement") {
        return;
    }
    let slot = Slot::new();
    let out = slot.check(&[]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let r = json(&out);
    let s = &r["sandbox"];
    let c = &s["confinement"];
    assert_eq!(r["inside"]["pid"], 1, "pid 1 of its own pid namespace");
    assert_eq!(r["inside"]["seccomp_mode"], 2);
    assert_eq!(
        r["inside"]["threads_joined"], 2,
        "threads work under the filter"
    );
    assert_eq!(
        r["inside"]["allocated_mib"], 32,
        "allocation works under the filter"
    );
    assert_eq!(s["host_uid"], slot.uid);
    assert_eq!(s["host_gid"], slot.uid);
    assert_eq!(c["uid"], 65534, "unmapped inside the user namespace");
    for ns in ["UserNs", "PidNs", "NetNs", "MountNs", "IpcNs", "UtsNs"] {
        assert!(
            s["namespaces"].as_array().unwrap().iter().any(|v| v == ns),
            "{ns} missing in {}",
            s["namespaces"]
        );
    }
    assert_eq!(s["pivot_root"], true);
    assert_eq!(c["root_entries"], 0, "empty root");
    assert_eq!(c["root_read_only"], true);
    assert_eq!(c["net_interfaces"], serde_json::json!(["lo"]));
    assert_eq!(c["hostname"], "bulkhead-check");
    assert_eq!(c["cap_effective"], 0);
    assert_eq!(c["cap_permitted"], 0);
    assert_eq!(c["cap_inheritable"], 0);
    assert_eq!(c["no_new_privs"], true);
    assert_eq!(c["dumpable"], false);
    assert_eq!(c["rlimit_core"], 0);
    assert!(s["cgroup"] == "V1" || s["cgroup"] == "V2");
    assert_eq!(s["seccomp"], true);
    assert_eq!(s["weakened"], serde_json::json!([]));
}

fn forbidden(test: &str, which: &str, syscall_nr: u32) {
    if full_sandbox_unavailable(test) {
        return;
    }
    let slot = Slot::new();
    let out = slot.check(&["--forbidden", which]).output().unwrap();
    assert_trapped(&out, syscall_nr);
}

#[test]
fn open_traps_with_exit_67() {
    forbidden("open_traps_with_exit_67", "open", libc::SYS_openat as u32);
}

#[test]
fn socket_traps_with_exit_67() {
    forbidden(
        "socket_traps_with_exit_67",
        "socket",
        libc::SYS_socket as u32,
    );
}

#[test]
fn execve_traps_with_exit_67() {
    forbidden(
        "execve_traps_with_exit_67",
        "execve",
        libc::SYS_execve as u32,
    );
}

#[test]
fn ptrace_traps_with_exit_67() {
    forbidden(
        "ptrace_traps_with_exit_67",
        "ptrace",
        libc::SYS_ptrace as u32,
    );
}

#[test]
fn kill_traps_with_exit_67() {
    forbidden("kill_traps_with_exit_67", "kill", libc::SYS_kill as u32);
}

#[test]
fn missing_protection_fails_naming_it_unless_weaker_mode_allowed() {
    if full_sandbox_unavailable("missing_protection_fails_naming_it_unless_weaker_mode_allowed") {
        return;
    }
    let slot = Slot::new();
    let no_cgroups = ["--cgroup-root", "/nonexistent-cgroup-root"];
    let out = slot.check(&no_cgroups).output().unwrap();
    assert_eq!(out.status.code(), Some(WorkerExit::SandboxFailed.code()));
    assert!(
        stderr(&out).contains("CgroupV2"),
        "stderr: {}",
        stderr(&out)
    );

    let mut weaker = no_cgroups.to_vec();
    weaker.push("--allow-weaker");
    let out = slot.check(&weaker).output().unwrap();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["sandbox"]["weakened"][0]["protection"], "CgroupV2");
    assert_eq!(
        r["inside"]["seccomp_mode"], 2,
        "everything else still applies"
    );
}

#[test]
fn probe_prints_json_for_every_protection() {
    let out = Command::new(BIN)
        .args(["probe", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), Protection::ALL.len());
    assert!(checks.iter().any(|c| c["protection"] == "Seccomp"));
    assert!(v.get("running_as_root").is_some());
}

#[test]
fn probe_prints_human_readable_table() {
    let out = Command::new(BIN).arg("probe").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PidNs"));
    assert!(text.contains("cgroup hierarchy:"));
}

#[test]
fn run_without_a_control_fd_exits_bad_setup() {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--no-sandbox"]).stdin(Stdio::null());
    // SAFETY: close_range is async-signal-safe; the child closes fds an
    // outer harness may have leaked (a jobserver pipe) so fd 3 is missing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(WorkerExit::BadSetup.code()));
    assert!(
        stderr(&out).contains("fd 3 (control) is not open"),
        "{}",
        stderr(&out)
    );
}

// --- Chaos device (feature `chaos`, on for tests) ---------------------------

fn chaos(slot: &Slot, n: u32, extra: &[&str]) -> Output {
    let mut args = vec!["--chaos".to_string(), n.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    slot.check(&args).output().unwrap()
}

#[test]
fn chaos_forbidden_syscalls_all_trap() {
    if full_sandbox_unavailable("chaos_forbidden_syscalls_all_trap") {
        return;
    }
    for (n, nr) in [
        (6, libc::SYS_openat),
        (7, libc::SYS_socket),
        (8, libc::SYS_execve),
        (9, libc::SYS_ptrace),
        (10, libc::SYS_kill),
    ] {
        let slot = Slot::new();
        assert_trapped(&chaos(&slot, n, &[]), nr as u32);
    }
}

#[test]
fn chaos_panic_exits_101() {
    if full_sandbox_unavailable("chaos_panic_exits_101") {
        return;
    }
    let out = chaos(&Slot::new(), 1, &[]);
    assert_eq!(
        out.status.code(),
        Some(WorkerExit::Panic.code()),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("chaos"));
}

#[test]
fn chaos_segfault_is_reported_as_signal_11() {
    if full_sandbox_unavailable("chaos_segfault_is_reported_as_signal_11") {
        return;
    }
    let out = chaos(&Slot::new(), 2, &[]);
    // The pid-namespace reaper exits 128 + signal.
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGSEGV),
        "{}",
        stderr(&out)
    );
}

#[test]
fn chaos_unbounded_allocation_is_stopped_by_the_cgroup() {
    if full_sandbox_unavailable("chaos_unbounded_allocation_is_stopped_by_the_cgroup") {
        return;
    }
    let out = chaos(&Slot::new(), 4, &["--memory", &(96u64 << 20).to_string()]);
    // The memory cgroup's OOM killer sends SIGKILL.
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGKILL),
        "{}",
        stderr(&out)
    );
}

#[test]
fn chaos_garbage_frames_reach_the_control_fd() {
    if full_sandbox_unavailable("chaos_garbage_frames_reach_the_control_fd") {
        return;
    }
    let out = chaos(&Slot::new(), 5, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let newline = out.stdout.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(&out.stdout[newline + 1..newline + 5], &[0xff; 4]);
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(n) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if status.lines().any(|l| l == format!("PPid:\t{pid}")) {
            kids.push(n);
        }
    }
    kids
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Zombie: dead, waiting to be reaped by init.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

#[test]
fn chaos_spinning_worker_dies_with_its_parent() {
    if full_sandbox_unavailable("chaos_spinning_worker_dies_with_its_parent") {
        return;
    }
    let slot = Slot::new();
    let mut child = slot
        .check(&["--chaos", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reaper = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let worker = loop {
        if let Some(&w) = children_of(reaper).first() {
            break w;
        }
        assert!(Instant::now() < deadline, "worker never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!gone(worker), "the spinning worker should still run");
    // What a supervisor does to a hung VM: kill the process it spawned.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(worker) {
        assert!(
            Instant::now() < deadline,
            "worker {worker} survived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workers_run_as_distinct_host_uids() {
    if full_sandbox_unavailable("workers_run_as_distinct_host_uids") {
        return;
    }
    let (a, b) = (Slot::new(), Slot::new());
    let ra = json(&a.check(&[]).output().unwrap());
    let rb = json(&b.check(&[]).output().unwrap());
    assert_eq!(ra["sandbox"]["host_uid"], a.uid);
    assert_eq!(rb["sandbox"]["host_uid"], b.uid);
    assert_ne!(a.uid, b.uid);
}
