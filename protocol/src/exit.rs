//! How a worker ends: fixed exit codes shared with the supervisor, and the
//! line a worker's SIGSYS handler prints when the seccomp filter traps.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// A worker's exit code. The numbers are part of the protocol: never reuse
/// or renumber one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum WorkerExit {
    /// Clean shutdown (`ToWorker::Shutdown`, or the guest ended and the
    /// supervisor asked the worker to stop).
    Ok = 0,
    /// Bad arguments, missing fds, a config that does not validate.
    BadSetup = 64,
    /// A sandbox step failed (namespaces, mounts, cgroups, seccomp install).
    SandboxFailed = 65,
    /// The supervisor sent something the worker could not accept, or the
    /// control channel broke.
    ProtocolError = 66,
    /// The seccomp filter trapped a forbidden syscall (see
    /// [`SECCOMP_REPORT_PREFIX`] for the stderr line naming it).
    SeccompViolation = 67,
    /// A Rust panic (the default code of a panicking `main`).
    Panic = 101,
}

impl WorkerExit {
    pub const ALL: [WorkerExit; 6] = [
        WorkerExit::Ok,
        WorkerExit::BadSetup,
        WorkerExit::SandboxFailed,
        WorkerExit::ProtocolError,
        WorkerExit::SeccompViolation,
        WorkerExit::Panic,
    ];

    pub const fn code(self) -> i32 {
        self as i32
    }

    pub const fn from_code(code: i32) -> Option<WorkerExit> {
        Some(match code {
            0 => WorkerExit::Ok,
            64 => WorkerExit::BadSetup,
            65 => WorkerExit::SandboxFailed,
            66 => WorkerExit::ProtocolError,
            67 => WorkerExit::SeccompViolation,
            101 => WorkerExit::Panic,
            _ => return None,
        })
    }

    pub const fn description(self) -> &'static str {
        match self {
            WorkerExit::Ok => "exited cleanly",
            WorkerExit::BadSetup => "bad setup (arguments, fds or configuration)",
            WorkerExit::SandboxFailed => "sandbox setup failed",
            WorkerExit::ProtocolError => "protocol error on the control channel",
            WorkerExit::SeccompViolation => "sandbox violation (forbidden syscall)",
            WorkerExit::Panic => "panicked",
        }
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.description(), self.code())
    }
}

/// How a worker process ended, as the supervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerOutcome {
    Exited(WorkerExit),
    /// An exit code outside [`WorkerExit`].
    UnknownCode(i32),
    /// Killed by this signal (OOM killer, supervisor kill, a seccomp
    /// `kill_process` action, ...).
    Signaled(i32),
}

impl WorkerOutcome {
    pub fn from_status(status: ExitStatus) -> WorkerOutcome {
        match (status.code(), status.signal()) {
            (Some(code), _) => WorkerExit::from_code(code)
                .map_or(WorkerOutcome::UnknownCode(code), WorkerOutcome::Exited),
            (None, Some(sig)) => WorkerOutcome::Signaled(sig),
            // Neither: stopped/continued statuses are not terminations.
            (None, None) => WorkerOutcome::UnknownCode(-1),
        }
    }
}

/// The start of the line a worker writes to stderr from its SIGSYS handler;
/// the syscall number in decimal follows, then `\n`.
pub const SECCOMP_REPORT_PREFIX: &str = "bulkhead-worker: seccomp violation: syscall ";
/// Room for the whole report line.
pub const SECCOMP_REPORT_MAX: usize = SECCOMP_REPORT_PREFIX.len() + 21;

/// Formats the report line into `buf` without allocating or locking, so a
/// signal handler can call it and `write(2)` the result.
pub fn format_seccomp_report(nr: i64, buf: &mut [u8; SECCOMP_REPORT_MAX]) -> &[u8] {
    let prefix = SECCOMP_REPORT_PREFIX.as_bytes();
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    if nr < 0 {
        buf[len] = b'-';
        len += 1;
    }
    let mut digits = [0u8; 20];
    let mut n = nr.unsigned_abs();
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in digits[..count].iter().rev() {
        buf[len] = d;
        len += 1;
    }
    buf[len] = b'\n';
    &buf[..len + 1]
}

/// Finds the last report line in a worker's stderr and returns its syscall
/// number.
pub fn parse_seccomp_report(stderr: &str) -> Option<i64> {
    stderr.lines().rev().find_map(|line| {
        line.trim_end()
            .strip_prefix(SECCOMP_REPORT_PREFIX)?
            .parse()
            .ok()
    })
}

/// Names of the syscalls a report is likely to name (x86_64 numbering, the
/// host's), or `None` for one not in the table.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    SYSCALL_NAMES
        .iter()
        .find(|&&(n, _)| n == nr)
        .map(|&(_, name)| name)
}

/// Common syscalls: the ones a worker uses and the ones its policy forbids.
const SYSCALL_NAMES: &[(i64, &str)] = &[
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_open, "open"),
    (libc::SYS_close, "close"),
    (libc::SYS_stat, "stat"),
    (libc::SYS_fstat, "fstat"),
    (libc::SYS_lstat, "lstat"),
    (libc::SYS_poll, "poll"),
    (libc::SYS_lseek, "lseek"),
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_munmap, "munmap"),
    (libc::SYS_brk, "brk"),
    (libc::SYS_rt_sigaction, "rt_sigaction"),
    (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    (libc::SYS_rt_sigreturn, "rt_sigreturn"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_access, "access"),
    (libc::SYS_pipe, "pipe"),
    (libc::SYS_sched_yield, "sched_yield"),
    (libc::SYS_mremap, "mremap"),
    (libc::SYS_madvise, "madvise"),
    (libc::SYS_dup, "dup"),
    (libc::SYS_dup2, "dup2"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_getpid, "getpid"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_accept, "accept"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_shutdown, "shutdown"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_exit, "exit"),
    (libc::SYS_wait4, "wait4"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_uname, "uname"),
    (libc::SYS_fcntl, "fcntl"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_ftruncate, "ftruncate"),
    (libc::SYS_getdents, "getdents"),
    (libc::SYS_getcwd, "getcwd"),
    (libc::SYS_chdir, "chdir"),
    (libc::SYS_rename, "rename"),
    (libc::SYS_mkdir, "mkdir"),
    (libc::SYS_rmdir, "rmdir"),
    (libc::SYS_creat, "creat"),
    (libc::SYS_link, "link"),
    (libc::SYS_unlink, "unlink"),
    (libc::SYS_symlink, "symlink"),
    (libc::SYS_readlink, "readlink"),
    (libc::SYS_chmod, "chmod"),
    (libc::SYS_chown, "chown"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_getuid, "getuid"),
    (libc::SYS_setuid, "setuid"),
    (libc::SYS_setgid, "setgid"),
    (libc::SYS_setsid, "setsid"),
    (libc::SYS_setresuid, "setresuid"),
    (libc::SYS_setresgid, "setresgid"),
    (libc::SYS_capget, "capget"),
    (libc::SYS_capset, "capset"),
    (libc::SYS_sigaltstack, "sigaltstack"),
    (libc::SYS_mknod, "mknod"),
    (libc::SYS_personality, "personality"),
    (libc::SYS_mlock, "mlock"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_arch_prctl, "arch_prctl"),
    (libc::SYS_setrlimit, "setrlimit"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_gettid, "gettid"),
    (libc::SYS_tkill, "tkill"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_getdents64, "getdents64"),
    (libc::SYS_set_tid_address, "set_tid_address"),
    (libc::SYS_clock_gettime, "clock_gettime"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_exit_group, "exit_group"),
    (libc::SYS_epoll_wait, "epoll_wait"),
    (libc::SYS_epoll_ctl, "epoll_ctl"),
    (libc::SYS_tgkill, "tgkill"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_mkdirat, "mkdirat"),
    (libc::SYS_newfstatat, "newfstatat"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_set_robust_list, "set_robust_list"),
    (libc::SYS_splice, "splice"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    (libc::SYS_timerfd_create, "timerfd_create"),
    (libc::SYS_eventfd2, "eventfd2"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_epoll_create1, "epoll_create1"),
    (libc::SYS_dup3, "dup3"),
    (libc::SYS_pipe2, "pipe2"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_prlimit64, "prlimit64"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_sendmmsg, "sendmmsg"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_seccomp, "seccomp"),
    (libc::SYS_getrandom, "getrandom"),
    (libc::SYS_memfd_create, "memfd_create"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_statx, "statx"),
    (libc::SYS_rseq, "rseq"),
    (libc::SYS_pidfd_send_signal, "pidfd_send_signal"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_pidfd_open, "pidfd_open"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_close_range, "close_range"),
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_faccessat2, "faccessat2"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_numbers_and_round_trip() {
        let codes: Vec<i32> = WorkerExit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 64, 65, 66, 67, 101]);
        for e in WorkerExit::ALL {
            assert_eq!(WorkerExit::from_code(e.code()), Some(e));
        }
        assert_eq!(WorkerExit::from_code(1), None);
    }

    #[test]
    fn outcome_distinguishes_known_codes_unknown_codes_and_signals() {
        assert_eq!(
            WorkerOutcome::from_status(ExitStatus::from_raw(67 << 8)),
            WorkerOutcome::Exited(WorkerExit::SeccompViolation)
        );
        assert_eq!(
            WorkerOutcome::from_status(ExitStatus::from_raw(3 << 8)),
            WorkerOutcome::UnknownCode(3)
        );
        assert_eq!(
            WorkerOutcome::from_status(ExitStatus::from_raw(libc::SIGKILL)),
            WorkerOutcome::Signaled(libc::SIGKILL)
        );
    }

    #[test]
    fn seccomp_report_formats_and_parses_back() {
        let mut buf = [0u8; SECCOMP_REPORT_MAX];
        let line = format_seccomp_report(libc::SYS_openat, &mut buf);
        assert_eq!(line, b"bulkhead-worker: seccomp violation: syscall 257\n");
        let stderr = format!("some log\n{}other\n", std::str::from_utf8(line).unwrap());
        assert_eq!(parse_seccomp_report(&stderr), Some(257));
        let mut buf = [0u8; SECCOMP_REPORT_MAX];
        let extreme = format_seccomp_report(i64::MIN, &mut buf).to_vec();
        assert_eq!(
            parse_seccomp_report(std::str::from_utf8(&extreme).unwrap()),
            Some(i64::MIN)
        );
        assert_eq!(parse_seccomp_report("no report here\n"), None);
        assert_eq!(
            parse_seccomp_report(&format!("{SECCOMP_REPORT_PREFIX}x\n")),
            None
        );
    }

    #[test]
    fn forbidden_syscalls_have_names() {
        for (nr, name) in [
            (2, "open"),
            (257, "openat"),
            (41, "socket"),
            (42, "connect"),
            (59, "execve"),
        ] {
            assert_eq!(syscall_name(nr), Some(name));
        }
        assert_eq!(syscall_name(101), Some("ptrace"));
        assert_eq!(syscall_name(62), Some("kill"));
        assert_eq!(syscall_name(56), Some("clone"));
        assert_eq!(syscall_name(100_000), None);
    }
}
