//! Security tests: two workers at once cannot see, signal or ptrace each
//! other. Each runs in its own pid namespace (where it is pid 1 and the
//! other does not exist) under its own host uid (so even a shared pid
//! namespace would refuse kill and ptrace), besides the seccomp filter
//! that traps kill/ptrace outright (tests/sandbox.rs).
//!
//! The workers cannot be asked to attack each other without seccomp (the
//! worker has no such mode), so the "other protections alone" part is
//! shown from the host: a probe process takes worker A's host uid, or
//! joins A's pid namespace, and tries kill(B, 0) and ptrace(ATTACH, B)
//! with no seccomp filter of its own; each try is refused, while the same
//! probe reaches A itself (a positive control).
//!
//! Needs root: without it each test prints "SKIPPED: ..." and returns.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Spawn, Worker, children_of, idle_kernel, sandbox_unavailable, status_field};
use protocol::{FromWorker, ToWorker, VmState};
use vm_worker::sandbox::{self, cgroup};

fn skip(test: &str) -> bool {
    match sandbox_unavailable() {
        None => false,
        Some(why) => {
            eprintln!("SKIPPED {test}: needs root because two sandboxed workers are needed: {why}");
            true
        }
    }
}

/// An idle VM (halted guest, interrupts on, no timer) in the full sandbox.
fn idle_vm() -> Worker {
    let mut w = Worker::spawn(Spawn::new(&idle_kernel(), true, 16, None));
    w.expect("Ready", |m| matches!(m, FromWorker::Ready(_)).then_some(()));
    w.send(&ToWorker::Start);
    w.expect_state(VmState::Running);
    w.expect_serial("IDLE\n");
    w
}

fn host_uid(pid: u32) -> u32 {
    let uid = status_field(pid, "Uid").unwrap_or_else(|| panic!("no Uid for {pid}"));
    let ids: Vec<u32> = uid.split_whitespace().map(|u| u.parse().unwrap()).collect();
    assert!(
        ids.iter().all(|&u| u == ids[0]),
        "real/effective/saved/fs differ: {uid}"
    );
    ids[0]
}

fn ns(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// What a probe process got: 0 or an errno.
#[derive(Debug, PartialEq, Eq)]
struct Tried {
    kill: i32,
    ptrace: i32,
}

/// Forks a probe that (optionally) joins `pidns` and takes `uid` and
/// gid `uid`, then tries `kill(target, 0)` and `ptrace(PTRACE_ATTACH,
/// target)`. No seccomp filter applies to the probe: what refuses it is
/// the pid namespace or the uid alone.
fn probe(pidns: Option<&File>, uid: Option<u32>, target: u32) -> Tried {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned here only.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let ns_fd = pidns.map_or(-1, |f| f.as_raw_fd());
    let tx_fd = tx.as_raw_fd();
    // SAFETY: fork in a multi-threaded process: the child calls only
    // async-signal-safe raw syscalls (setns, fork, setres[ug]id, kill,
    // ptrace, write, waitpid) and _exit, and allocates nothing.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; this is the child.
        unsafe { probe_child(ns_fd, uid, target, tx_fd) }
    }
    drop(tx);
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let mut buf = [0u8; 8];
    let n = std::io::Read::read(&mut File::from(rx), &mut buf).unwrap();
    assert_eq!(n, 8, "the probe reported nothing (status {status:#x})");
    Tried {
        kill: i32::from_ne_bytes(buf[..4].try_into().unwrap()),
        ptrace: i32::from_ne_bytes(buf[4..].try_into().unwrap()),
    }
}

/// The forked probe. Never returns.
///
/// # Safety
///
/// Only in the child of a fork: async-signal-safe calls only.
unsafe fn probe_child(ns_fd: i32, uid: Option<u32>, target: u32, tx: i32) -> ! {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    // SAFETY: raw syscalls on plain integers and a stack buffer (the
    // whole function); _exit ends the process without running destructors.
    unsafe {
        if ns_fd >= 0 {
            // A pid namespace applies to the children of the caller.
            if libc::setns(ns_fd, libc::CLONE_NEWPID) != 0 {
                libc::_exit(10);
            }
            let pid = libc::fork();
            if pid < 0 {
                libc::_exit(11);
            }
            if pid > 0 {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                libc::_exit(0);
            }
        }
        if let Some(id) = uid {
            let id = libc::c_long::from(id);
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, id, id, id) != 0
                || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
            {
                libc::_exit(12);
            }
        }
        let target = libc::c_long::from(target);
        let kill = if libc::syscall(libc::SYS_kill, target, 0) == 0 {
            0
        } else {
            errno()
        };
        let ptrace = if libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH, target, 0, 0) == 0 {
            // Not expected; the tracee is released when this process exits.
            0
        } else {
            errno()
        };
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&kill.to_ne_bytes());
        buf[4..].copy_from_slice(&ptrace.to_ne_bytes());
        libc::write(tx, buf.as_ptr().cast(), 8);
        libc::_exit(0);
    }
}

#[test]
fn two_running_vms_cannot_see_signal_or_ptrace_each_other() {
    let test = "two_running_vms_cannot_see_signal_or_ptrace_each_other";
    if skip(test) {
        return;
    }
    let (a, b) = (idle_vm(), idle_vm());
    let (va, vb) = (a.vm_pid(), b.vm_pid());

    // Both run at once, each as pid 1 of its own pid namespace.
    for vm in [va, vb] {
        let nspid = status_field(vm, "NSpid").unwrap();
        assert_eq!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");
        assert_eq!(status_field(vm, "Seccomp").as_deref(), Some("2"));
        assert_eq!(status_field(vm, "NoNewPrivs").as_deref(), Some("1"));
        assert_eq!(
            status_field(vm, "CapEff").as_deref(),
            Some("0000000000000000")
        );
    }
    let me = std::process::id();
    for kind in ["pid", "user", "net", "mnt", "ipc", "uts"] {
        assert_ne!(ns(va, kind), ns(vb, kind), "{kind} namespace shared");
        assert_ne!(ns(va, kind), ns(me, kind), "{kind} namespace of the host");
    }
    // Distinct per-VM host uids.
    let (ua, ub) = (host_uid(va), host_uid(vb));
    assert!(
        ua >= sandbox::ID_BASE && ub >= sandbox::ID_BASE,
        "{ua} {ub}"
    );
    assert_ne!(ua, ub);

    let ns_a = File::open(format!("/proc/{va}/ns/pid")).unwrap();
    let ns_b = File::open(format!("/proc/{vb}/ns/pid")).unwrap();
    let (esrch, eperm) = (libc::ESRCH, libc::EPERM);
    // The uid alone (host pid namespace, no seccomp): refused.
    let refused = Tried {
        kill: eperm,
        ptrace: eperm,
    };
    assert_eq!(probe(None, Some(ua), vb), refused, "A's uid towards B");
    assert_eq!(probe(None, Some(ub), va), refused, "B's uid towards A");
    // ...while the same uid reaches its own VM (so the refusal is B's).
    assert_eq!(probe(None, Some(ua), va).kill, 0, "A's uid towards A");
    // The pid namespace alone (even as root): the other VM does not exist.
    let unseen = Tried {
        kill: esrch,
        ptrace: esrch,
    };
    assert_eq!(probe(Some(&ns_a), None, vb), unseen, "from A's pidns to B");
    assert_eq!(probe(Some(&ns_b), None, va), unseen, "from B's pidns to A");
    // ...where pid 1 is its own VM.
    assert_eq!(probe(Some(&ns_a), Some(ua), 1).kill, 0, "A's pid 1 as A");
    // Both together.
    assert_eq!(probe(Some(&ns_a), Some(ua), vb), unseen);

    // Both VMs survived all of it.
    for mut w in [a, b] {
        w.send(&ToWorker::QueryStats);
        w.expect("Stats", |m| matches!(m, FromWorker::Stats(_)).then_some(()));
        w.send(&ToWorker::Shutdown);
        let (code, err) = w.finish();
        assert_eq!(code, Some(protocol::WorkerExit::Ok.code()), "{err}");
    }
}

/// A `sandbox-check` that stays alive after its report (chaos action 3:
/// spin), so two can be inspected at once.
struct Check {
    child: Child,
    uid: u32,
    cgroup: String,
}

impl Check {
    fn spawn() -> Check {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let uid = sandbox::ID_BASE + 9000 + (std::process::id() % 1000) * 10 + n % 10;
        let cgroup = format!("isolation-{}-{n}", std::process::id());
        let child = Command::new(BIN)
            .args(["sandbox-check", "--json", "--chaos", "3", "--uid"])
            .arg(uid.to_string())
            .args(["--cgroup", &cgroup])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Check { child, uid, cgroup }
    }

    /// The JSON report (the first line of stdout).
    fn report(&mut self) -> serde_json::Value {
        let mut out = std::io::BufReader::new(self.child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("report {line:?}: {e}"))
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        // Killing the reaper takes the spinning worker with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let root = std::path::Path::new(cgroup::DEFAULT_ROOT);
        let deadline = Instant::now() + Duration::from_secs(2);
        while cgroup::remove(root, &self.cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn two_sandbox_checks_at_once_each_are_pid_1_under_their_own_uid() {
    let test = "two_sandbox_checks_at_once_each_are_pid_1_under_their_own_uid";
    if skip(test) {
        return;
    }
    let (mut a, mut b) = (Check::spawn(), Check::spawn());
    let (ra, rb) = (a.report(), b.report());
    // Both are alive now (spinning after their reports).
    let (ca, cb) = (children_of(a.child.id()), children_of(b.child.id()));
    assert_eq!((ca.len(), cb.len()), (1, 1), "{ca:?} {cb:?}");
    for (r, check) in [(&ra, &a), (&rb, &b)] {
        assert_eq!(r["inside"]["pid"], 1, "pid 1 of its own pid namespace");
        assert_eq!(r["inside"]["seccomp_mode"], 2);
        assert_eq!(r["sandbox"]["host_uid"], check.uid);
        assert_eq!(r["sandbox"]["confinement"]["root_entries"], 0);
        let namespaces = r["sandbox"]["namespaces"].as_array().unwrap();
        assert!(namespaces.iter().any(|n| n == "PidNs"), "{namespaces:?}");
        assert!(namespaces.iter().any(|n| n == "UserNs"), "{namespaces:?}");
    }
    assert_ne!(ra["sandbox"]["host_uid"], rb["sandbox"]["host_uid"]);
    assert_ne!(ns(ca[0], "pid"), ns(cb[0], "pid"));
    assert_eq!(host_uid(ca[0]), a.uid);
    assert_eq!(host_uid(cb[0]), b.uid);
}
