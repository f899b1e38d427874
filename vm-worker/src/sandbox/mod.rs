//! The worker sandbox: one declarative [`Plan`] executed step by step by
//! [`enter`]. Each step is a small function with its own [`SandboxError`]
//! variant; the order constraints are spelled out in [`enter`].
//!
//! `main` calls `sandbox::enter(&plan)` right after taking over its
//! inherited fds and before any thread is spawned or any guest code runs.

pub mod cgroup;
pub mod probe;
pub mod seccomp;
mod sys;

use std::fmt;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cgroup::{CgroupError, CgroupVersion, Limits};
pub use probe::{HostProtections, probe};
pub use seccomp::SeccompError;

/// Per-VM uids and gids start here: VM n runs as `ID_BASE + n`, so no two
/// workers share a uid and none can signal or ptrace another.
pub const ID_BASE: u32 = 100_000;

/// A protection the sandbox relies on (and `bulkhead doctor` reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protection {
    UserNs,
    PidNs,
    NetNs,
    MountNs,
    IpcNs,
    UtsNs,
    PivotRoot,
    PerVmIds,
    CgroupV1,
    CgroupV2,
    NoNewPrivs,
    Seccomp,
}

impl Protection {
    pub const ALL: [Protection; 12] = [
        Protection::UserNs,
        Protection::PidNs,
        Protection::NetNs,
        Protection::MountNs,
        Protection::IpcNs,
        Protection::UtsNs,
        Protection::PivotRoot,
        Protection::PerVmIds,
        Protection::CgroupV1,
        Protection::CgroupV2,
        Protection::NoNewPrivs,
        Protection::Seccomp,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Protection::UserNs => "user namespace (worker unprivileged on the host)",
            Protection::PidNs => "pid namespace (worker sees only itself)",
            Protection::NetNs => "network namespace (no network)",
            Protection::MountNs => "mount namespace",
            Protection::IpcNs => "IPC namespace",
            Protection::UtsNs => "UTS namespace (own hostname)",
            Protection::PivotRoot => "pivot_root into an empty read-only root",
            Protection::PerVmIds => "per-VM uid/gid (needs the supervisor to run as root)",
            Protection::CgroupV1 => "cgroup v1 memory/cpu/pids limits",
            Protection::CgroupV2 => "cgroup v2 memory/cpu/pids limits",
            Protection::NoNewPrivs => "PR_SET_NO_NEW_PRIVS",
            Protection::Seccomp => "seccomp-bpf syscall allowlist",
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{self:?}"))
    }
}

/// Which namespaces to create. All on by default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub user: bool,
    pub pid: bool,
    pub mount: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            user: true,
            pid: true,
            mount: true,
            net: true,
            ipc: true,
            uts: true,
        }
    }
}

/// Where and how the worker's cgroup is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    /// Host path of the cgroup mount(s); injectable for tests.
    pub root: PathBuf,
    /// Group name under `bulkhead/` (unique per VM).
    pub name: String,
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: must exceed the highest kept fd.
    pub nofile: u64,
    /// RLIMIT_NPROC: threads of the per-VM uid, host-wide.
    pub nproc: u64,
    /// RLIMIT_AS, if any (the cgroup memory limit is the primary bound).
    pub address_space: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: 256,
            nproc: 64,
            address_space: None,
        }
    }
}

/// Everything the sandbox will do, decided before doing any of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Inherited fds (≥ 3) to keep open; 0–2 are always kept.
    pub keep_fds: Vec<RawFd>,
    pub namespaces: Namespaces,
    /// Hostname inside the UTS namespace.
    pub hostname: String,
    /// Existing host directory on which (inside the new mount namespace
    /// only) the empty tmpfs root is mounted before pivot_root.
    pub new_root: String,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: Option<CgroupPlan>,
    pub rlimits: Rlimits,
    /// Off only in an explicit weaker mode; never off by default.
    pub seccomp: bool,
    /// The VM runs the CPU's JIT: the `worker_jit` seccomp filter, which
    /// lets code pages become executable. Off by default.
    pub jit: bool,
    /// Operator opted in: a step whose protection the host lacks is
    /// recorded in [`Report::weakened`] instead of failing.
    pub allow_weaker: bool,
}

impl Plan {
    /// Secure defaults for VM number `index`: every namespace, uid/gid
    /// `ID_BASE + index`, cgroup `bulkhead/vm<index>`, seccomp on.
    pub fn for_vm(index: u32) -> Plan {
        Plan {
            keep_fds: Vec::new(),
            namespaces: Namespaces::default(),
            hostname: format!("bulkhead-vm{index}"),
            new_root: "/tmp".to_string(),
            uid: ID_BASE + index,
            gid: ID_BASE + index,
            cgroup: Some(CgroupPlan {
                root: PathBuf::from(cgroup::DEFAULT_ROOT),
                name: format!("vm{index}"),
                limits: Limits {
                    memory_bytes: 1 << 30,
                    cpu_percent: 100,
                    pids_max: 64,
                },
            }),
            rlimits: Rlimits::default(),
            seccomp: true,
            jit: false,
            allow_weaker: false,
        }
    }
}

/// A protection that was skipped because the host lacks it and the
/// operator allowed the weaker mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weakened {
    pub protection: Protection,
    pub error: String,
}

/// What the sandbox looked like from inside just before seccomp went on
/// (these checks use syscalls the filter then forbids).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    pub pid: i32,
    /// Ids as seen inside the user namespace (65534 = unmapped).
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub root_entries: usize,
    pub root_read_only: bool,
    pub net_interfaces: Vec<String>,
    pub cap_effective: u64,
    pub cap_permitted: u64,
    pub cap_inheritable: u64,
    pub bounding_set_dropped: u32,
    pub no_new_privs: bool,
    pub dumpable: bool,
    pub rlimit_nofile: u64,
    pub rlimit_nproc: u64,
    pub rlimit_core: u64,
}

/// What [`enter`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub cgroup: Option<CgroupVersion>,
    pub namespaces: Vec<Protection>,
    pub pivot_root: bool,
    /// Ids on the host (outside the user namespace).
    pub host_uid: u32,
    pub host_gid: u32,
    pub seccomp: bool,
    pub weakened: Vec<Weakened>,
    pub confinement: Confinement,
}

/// One variant per step, each with the io error and its context.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox plan: {0}")]
    BadPlan(String),
    #[error("clearing the environment: {0}")]
    Env(#[source] io::Error),
    #[error("closing stray fds {first}..={last}: {source}")]
    CloseFds {
        first: u32,
        last: u32,
        #[source]
        source: io::Error,
    },
    #[error("cgroup limits ({protection} unavailable?): {source}")]
    Cgroup {
        protection: Protection,
        #[source]
        source: CgroupError,
    },
    #[error("unshare {protection} ({flag}): {source}; the host lacks {protection}")]
    Unshare {
        protection: Protection,
        flag: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("setting hostname {name:?}: {source}")]
    Hostname {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("forking into the pid namespace: {0}")]
    Fork(#[source] io::Error),
    #[error("arming the parent-death signal: {0}")]
    DeathSignal(#[source] io::Error),
    #[error("the pid-namespace parent died during set-up")]
    ParentGone,
    #[error("pivot_root ({stage}, {path}): {source}; the host lacks PivotRoot")]
    PivotRoot {
        stage: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("switching to per-VM ids uid {uid} gid {gid} ({stage}): {source}")]
    Ids {
        uid: u32,
        gid: u32,
        stage: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("unshare UserNs (CLONE_NEWUSER) as uid {uid}: {source}; the host lacks UserNs")]
    UserNs {
        uid: u32,
        #[source]
        source: io::Error,
    },
    #[error("dropping capabilities ({stage}): {source}")]
    Capabilities {
        stage: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("setting {resource} to {limit}: {source}")]
    Rlimit {
        resource: &'static str,
        limit: u64,
        #[source]
        source: io::Error,
    },
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(#[source] io::Error),
    #[error("PR_SET_DUMPABLE 0: {0}")]
    Dumpable(#[source] io::Error),
    #[error("checking confinement ({what}): {source}")]
    Verify {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(#[source] SeccompError),
}

impl SandboxError {
    /// The missing protection this error stands for, if it is one the
    /// operator may waive with `allow_weaker`.
    pub fn protection(&self) -> Option<Protection> {
        match self {
            SandboxError::Cgroup { protection, .. } | SandboxError::Unshare { protection, .. } => {
                Some(*protection)
            }
            SandboxError::PivotRoot { .. } => Some(Protection::PivotRoot),
            SandboxError::Ids { .. } => Some(Protection::PerVmIds),
            SandboxError::UserNs { .. } => Some(Protection::UserNs),
            SandboxError::Seccomp(_) => Some(Protection::Seccomp),
            _ => None,
        }
    }
}

/// Runs a waivable step: on failure, either fail or (weaker mode) record it.
/// Returns whether the step took effect.
fn waivable(
    plan: &Plan,
    report: &mut Report,
    result: Result<(), SandboxError>,
) -> Result<bool, SandboxError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) => match e.protection() {
            Some(protection) if plan.allow_weaker => {
                report.weakened.push(Weakened {
                    protection,
                    error: e.to_string(),
                });
                Ok(false)
            }
            _ => Err(e),
        },
    }
}

/// Enters the sandbox described by `plan`. Must be called while the process
/// is single-threaded. With a pid namespace the calling process forks: the
/// parent stays outside as a reaper and never returns from this function
/// (it exits with the child's status); the child, pid 1 of the new
/// namespace, returns the report.
pub fn enter(plan: &Plan) -> Result<Report, SandboxError> {
    validate(plan)?;
    let mut report = Report::default();
    let supervisor = sys::parent_pid();

    // 1. Environment first: nothing below, and no guest, may see host
    //    variables.
    sanitize_env()?;
    // 2. Stray fds before anything else: an fd to a host directory would
    //    survive pivot_root and undo it.
    close_stray_fds(&plan.keep_fds)?;
    // 3. Cgroup before the namespaces and pivot_root (the cgroup filesystem
    //    is unreachable afterwards) and before the uid drop (writing it
    //    needs host root); before the fork so both processes are accounted.
    if let Some(cg) = &plan.cgroup {
        let mut version = None;
        let r = join_cgroup(cg).map(|v| version = Some(v));
        waivable(plan, &mut report, r)?;
        report.cgroup = version;
    }
    // 4. Namespaces other than user: creating them needs CAP_SYS_ADMIN in
    //    the host user namespace, i.e. before the uid drop. One call each
    //    so a missing one is named.
    let mut mount_ns = false;
    let mut pid_ns = false;
    for (wanted, flag, name, protection) in [
        (
            plan.namespaces.mount,
            libc::CLONE_NEWNS,
            "CLONE_NEWNS",
            Protection::MountNs,
        ),
        (
            plan.namespaces.ipc,
            libc::CLONE_NEWIPC,
            "CLONE_NEWIPC",
            Protection::IpcNs,
        ),
        (
            plan.namespaces.uts,
            libc::CLONE_NEWUTS,
            "CLONE_NEWUTS",
            Protection::UtsNs,
        ),
        (
            plan.namespaces.net,
            libc::CLONE_NEWNET,
            "CLONE_NEWNET",
            Protection::NetNs,
        ),
        (
            plan.namespaces.pid,
            libc::CLONE_NEWPID,
            "CLONE_NEWPID",
            Protection::PidNs,
        ),
    ] {
        if !wanted {
            continue;
        }
        if waivable(plan, &mut report, unshare(flag, name, protection))? {
            report.namespaces.push(protection);
            mount_ns |= protection == Protection::MountNs;
            pid_ns |= protection == Protection::PidNs;
            if protection == Protection::UtsNs {
                set_hostname(&plan.hostname)?;
            }
        }
    }
    // 5. The pid namespace applies to children only: fork now, before the
    //    user namespace (the reaper must stay outside it) and before
    //    seccomp (the reaper gets its own filter). The parent never returns.
    let parent_alive = if pid_ns {
        Some(fork_into_pid_ns(plan, supervisor)?)
    } else {
        None
    };
    // 6. pivot_root needs our own mount namespace (never touch the host's)
    //    and CAP_SYS_ADMIN over it: after step 4, before the uid drop.
    if mount_ns {
        report.pivot_root = waivable(plan, &mut report, pivot_to_empty_root(&plan.new_root))?;
    } else if plan.namespaces.mount {
        report.weakened.push(Weakened {
            protection: Protection::PivotRoot,
            error: "no mount namespace".into(),
        });
    }
    // 7. Per-VM ids after everything that needs host root (cgroup,
    //    namespaces, mounts) and before the user namespace, so the host
    //    sees an unprivileged uid of its own. setgroups, then gid, then uid
    //    (changing the uid drops the right to change the rest).
    waivable(plan, &mut report, switch_ids(plan.uid, plan.gid))?;
    (report.host_uid, _, report.host_gid, _) = sys::ids();
    // 8. User namespace last of the namespaces: created by the unprivileged
    //    per-VM uid it grants nothing on the host, and the other namespaces
    //    stay owned by the host's user namespace, so even its capabilities
    //    cannot touch mounts, network or hostname. Needs pivot_root done
    //    (the kernel refuses CLONE_NEWUSER from a chroot-like root).
    let host_uid = report.host_uid;
    if plan.namespaces.user && waivable(plan, &mut report, enter_user_ns(host_uid))? {
        report.namespaces.push(Protection::UserNs);
    }
    // 9. Capabilities after the user namespace (which hands out a full set
    //    inside it): bounding set first (needs CAP_SETPCAP), then the rest.
    let dropped = drop_capabilities()?;
    // 10. rlimits after the fork (NPROC counts both processes) and after
    //     close_stray_fds (NOFILE must exceed the kept fds). Lowering needs
    //     no privilege.
    set_rlimits(&plan.rlimits)?;
    // 11. no_new_privs: execve can never regain privileges; also what lets
    //     an unprivileged process install seccomp.
    set_no_new_privs()?;
    // 12. Not dumpable, after every credential change (each resets it).
    set_not_dumpable()?;
    // 13. Credential changes also cleared the parent-death signal: re-arm
    //     it, then make sure the reaper did not die in between.
    if let Some(pipe) = parent_alive {
        rearm_death_signal(pipe)?;
    }
    // 14. Look around while the syscalls to do so are still allowed.
    report.confinement = verify(dropped)?;
    // 15. Seccomp last: every step above uses syscalls it forbids.
    if plan.seccomp {
        let r = seccomp::install_worker(plan.jit).map_err(SandboxError::Seccomp);
        report.seccomp = waivable(plan, &mut report, r)?;
    }
    Ok(report)
}

fn validate(plan: &Plan) -> Result<(), SandboxError> {
    if let Some(fd) = plan.keep_fds.iter().find(|&&fd| fd < 3) {
        return Err(SandboxError::BadPlan(format!(
            "keep_fds lists {fd}; 0-2 are always kept"
        )));
    }
    let max = plan.keep_fds.iter().copied().max().unwrap_or(2);
    if plan.rlimits.nofile <= max as u64 {
        return Err(SandboxError::BadPlan(format!(
            "RLIMIT_NOFILE {} does not cover kept fd {max}",
            plan.rlimits.nofile
        )));
    }
    if plan.uid == 0 || plan.gid == 0 {
        return Err(SandboxError::BadPlan(
            "a worker never runs as uid/gid 0".into(),
        ));
    }
    Ok(())
}

fn sanitize_env() -> Result<(), SandboxError> {
    sys::clear_env().map_err(SandboxError::Env)
}

/// Closes every fd ≥ 3 not listed in `keep`.
fn close_stray_fds(keep: &[RawFd]) -> Result<(), SandboxError> {
    for (first, last) in stray_ranges(keep) {
        sys::close_range(first, last).map_err(|source| SandboxError::CloseFds {
            first,
            last,
            source,
        })?;
    }
    Ok(())
}

/// The inclusive fd ranges ≥ 3 that are not in `keep`.
fn stray_ranges(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep.iter().map(|&fd| fd as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut first = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd.saturating_add(1);
    }
    ranges
}

fn join_cgroup(cg: &CgroupPlan) -> Result<CgroupVersion, SandboxError> {
    let detected = cgroup::detect(&cg.root);
    let protection = match detected {
        Some(CgroupVersion::V1) => Protection::CgroupV1,
        _ => Protection::CgroupV2,
    };
    let err = |source| SandboxError::Cgroup { protection, source };
    let group = cgroup::create(&cg.root, &cg.name, &cg.limits).map_err(err)?;
    cgroup::join(&group, sys::getpid()).map_err(err)?;
    Ok(group.version)
}

fn unshare(
    flag: libc::c_int,
    name: &'static str,
    protection: Protection,
) -> Result<(), SandboxError> {
    sys::unshare(flag).map_err(|source| SandboxError::Unshare {
        protection,
        flag: name,
        source,
    })
}

fn set_hostname(name: &str) -> Result<(), SandboxError> {
    sys::sethostname(name).map_err(|source| SandboxError::Hostname {
        name: name.to_string(),
        source,
    })
}

/// Forks; the child (pid 1 of the new pid namespace) returns the read end
/// of a pipe whose write end only the parent holds, so the child can tell
/// whether the parent is still alive. The parent becomes the reaper.
fn fork_into_pid_ns(plan: &Plan, supervisor: i32) -> Result<OwnedFd, SandboxError> {
    let (read_end, write_end) = sys::pipe().map_err(SandboxError::Fork)?;
    match sys::fork().map_err(SandboxError::Fork)? {
        sys::Fork::Parent(child) => {
            drop(read_end);
            reaper(plan, child, write_end, supervisor)
        }
        sys::Fork::Child => {
            drop(write_end);
            // Own session and process group: kill(0, …) and terminal
            // signals aimed at the supervisor's group no longer reach us.
            sys::setsid().map_err(SandboxError::Fork)?;
            sys::set_pdeathsig(libc::SIGKILL).map_err(SandboxError::DeathSignal)?;
            Ok(read_end)
        }
    }
}

/// The pid-namespace parent: holds no fds but stderr and the liveness
/// pipe, drops to the per-VM ids, locks itself down with the `reaper`
/// filter, waits and exits with the worker's status (128+N for signal N).
/// Hardening here is best effort: the reaper is outside the worker's pid
/// namespace, so a compromised worker cannot name it.
fn reaper(plan: &Plan, child: i32, alive: OwnedFd, supervisor: i32) -> ! {
    use std::os::fd::AsRawFd;
    let keep = [alive.as_raw_fd()];
    let _ = close_stray_fds(&keep);
    let _ = sys::close_range(0, 1);
    let _ = switch_ids(plan.uid, plan.gid);
    let _ = sys::set_no_new_privs();
    let _ = sys::set_dumpable(false);
    // The supervisor going away takes the reaper (and so the worker) down.
    let _ = sys::set_pdeathsig(libc::SIGKILL);
    if sys::parent_pid() != supervisor {
        sys::exit_now(protocol::WorkerExit::SandboxFailed.code());
    }
    if plan.seccomp && seccomp::install_reaper().is_err() && !plan.allow_weaker {
        let _ = sys::kill(child, libc::SIGKILL);
    }
    let code = match sys::wait_exit(child) {
        Ok(exited) => exited.as_exit_code(),
        Err(_) => protocol::WorkerExit::SandboxFailed.code(),
    };
    // Not dropped: std's debug check on close (fcntl) is outside the
    // reaper filter; _exit closes it.
    std::mem::forget(alive);
    sys::exit_now(code)
}

/// Mounts an empty tmpfs on `dir` (inside our mount namespace), makes it
/// the root, detaches the old root and remounts the new one read-only.
fn pivot_to_empty_root(dir: &str) -> Result<(), SandboxError> {
    let err = |stage: &'static str, path: &str| {
        let path = path.to_string();
        move |source| SandboxError::PivotRoot {
            stage,
            path,
            source,
        }
    };
    // Stop mount events propagating back to the host (systemd makes /
    // shared): must precede every mount below.
    sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(err("make / private", "/"))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(
        Some("bulkhead"),
        dir,
        Some("tmpfs"),
        flags,
        Some("size=16k,nr_inodes=16,mode=0555"),
    )
    .map_err(err("mount tmpfs", dir))?;
    sys::chdir(dir).map_err(err("chdir", dir))?;
    // pivot_root(".", "."): the old root ends up stacked under the new one
    // and is detached right away, leaving no directory behind.
    sys::pivot_root(".", ".").map_err(err("pivot_root", dir))?;
    sys::umount_detach(".").map_err(err("detach old root", "."))?;
    sys::chdir("/").map_err(err("chdir", "/"))?;
    sys::mount(
        None,
        "/",
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | flags,
        None,
    )
    .map_err(err("remount read-only", "/"))
}

fn switch_ids(uid: u32, gid: u32) -> Result<(), SandboxError> {
    let err = |stage| {
        move |source| SandboxError::Ids {
            uid,
            gid,
            stage,
            source,
        }
    };
    sys::setgroups_empty().map_err(err("setgroups"))?;
    sys::setresgid(gid).map_err(err("setresgid"))?;
    sys::setresuid(uid).map_err(err("setresuid"))?;
    Ok(())
}

fn enter_user_ns(uid: u32) -> Result<(), SandboxError> {
    sys::unshare(libc::CLONE_NEWUSER).map_err(|source| SandboxError::UserNs { uid, source })
}

/// Returns how many bounding-set capabilities were dropped.
fn drop_capabilities() -> Result<u32, SandboxError> {
    let err = |stage| move |source| SandboxError::Capabilities { stage, source };
    let dropped = match sys::drop_bounding_set() {
        Ok(n) => n,
        // Without CAP_SETPCAP (no user namespace, already unprivileged) the
        // bounding set cannot be changed; nothing in it is reachable anyway
        // once the other sets are empty and no_new_privs is set.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => 0,
        Err(e) => return Err(err("bounding set")(e)),
    };
    sys::clear_ambient_caps().map_err(err("ambient"))?;
    sys::capset_zero().map_err(err("capset"))?;
    Ok(dropped)
}

fn set_rlimits(r: &Rlimits) -> Result<(), SandboxError> {
    let mut limits = vec![
        (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", r.nofile),
        (libc::RLIMIT_NPROC, "RLIMIT_NPROC", r.nproc),
        (libc::RLIMIT_CORE, "RLIMIT_CORE", 0),
    ];
    if let Some(bytes) = r.address_space {
        limits.push((libc::RLIMIT_AS, "RLIMIT_AS", bytes));
    }
    for (resource, name, limit) in limits {
        sys::setrlimit(resource, limit).map_err(|source| SandboxError::Rlimit {
            resource: name,
            limit,
            source,
        })?;
    }
    Ok(())
}

fn set_no_new_privs() -> Result<(), SandboxError> {
    sys::set_no_new_privs().map_err(SandboxError::NoNewPrivs)
}

fn set_not_dumpable() -> Result<(), SandboxError> {
    sys::set_dumpable(false).map_err(SandboxError::Dumpable)
}

fn rearm_death_signal(parent_alive: OwnedFd) -> Result<(), SandboxError> {
    sys::set_pdeathsig(libc::SIGKILL).map_err(SandboxError::DeathSignal)?;
    if sys::peer_closed(&parent_alive).map_err(SandboxError::DeathSignal)? {
        return Err(SandboxError::ParentGone);
    }
    Ok(())
}

fn verify(bounding_set_dropped: u32) -> Result<Confinement, SandboxError> {
    let err = |what| move |source| SandboxError::Verify { what, source };
    let (uid, _, gid, _) = sys::ids();
    let (cap_effective, cap_permitted, cap_inheritable) =
        sys::capabilities().map_err(err("capget"))?;
    let root_entries = std::fs::read_dir("/").map_err(err("read /"))?.count();
    Ok(Confinement {
        pid: sys::getpid(),
        uid,
        gid,
        hostname: sys::hostname().map_err(err("hostname"))?,
        root_entries,
        root_read_only: sys::is_read_only("/").map_err(err("statvfs /"))?,
        net_interfaces: sys::interface_names().map_err(err("if_nameindex"))?,
        cap_effective,
        cap_permitted,
        cap_inheritable,
        bounding_set_dropped,
        no_new_privs: sys::no_new_privs().map_err(err("no_new_privs"))?,
        dumpable: sys::dumpable().map_err(err("dumpable"))?,
        rlimit_nofile: sys::getrlimit(libc::RLIMIT_NOFILE)
            .map_err(err("rlimit"))?
            .0,
        rlimit_nproc: sys::getrlimit(libc::RLIMIT_NPROC).map_err(err("rlimit"))?.0,
        rlimit_core: sys::getrlimit(libc::RLIMIT_CORE).map_err(err("rlimit"))?.0,
    })
}

/// Things code running inside the sandbox may ask (allowed by the filter).
pub mod inside {
    use super::sys;

    pub fn pid() -> i32 {
        sys::getpid()
    }

    /// 2 when a seccomp filter is in force.
    pub fn seccomp_mode() -> std::io::Result<i32> {
        sys::seccomp_mode()
    }

    /// Deliberately forbidden calls, for `sandbox-check` and the chaos
    /// device. Each returns only if the call was NOT trapped.
    pub use sys::{try_execve, try_kill, try_open, try_ptrace, try_socket};

    /// Borrows an inherited fd by number (stdio or one of the plan's
    /// `keep_fds`, which stay open for the life of the process).
    pub fn inherited_fd(fd: std::os::fd::RawFd) -> std::os::fd::BorrowedFd<'static> {
        sys::borrow_inherited(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_enables_every_protection() {
        let plan = Plan::for_vm(3);
        assert_eq!(plan.namespaces, Namespaces::default());
        assert!(plan.seccomp);
        assert!(!plan.allow_weaker);
        assert_eq!((plan.uid, plan.gid), (100_003, 100_003));
        assert_eq!(plan.cgroup.unwrap().name, "vm3");
    }

    #[test]
    fn plan_rejects_keeping_stdio_explicitly() {
        let mut plan = Plan::for_vm(0);
        plan.keep_fds = vec![2];
        assert!(matches!(validate(&plan), Err(SandboxError::BadPlan(_))));
    }

    #[test]
    fn plan_rejects_nofile_below_kept_fd() {
        let mut plan = Plan::for_vm(0);
        plan.keep_fds = vec![3, 300];
        assert!(matches!(validate(&plan), Err(SandboxError::BadPlan(_))));
    }

    #[test]
    fn stray_fds_are_everything_but_the_kept_ones() {
        assert_eq!(stray_ranges(&[]), [(3, u32::MAX - 1)]);
        assert_eq!(
            stray_ranges(&[5, 3, 9, 5]),
            [(4, 4), (6, 8), (10, u32::MAX - 1)]
        );
    }

    #[test]
    fn plan_rejects_root_ids() {
        let mut plan = Plan::for_vm(0);
        plan.uid = 0;
        assert!(matches!(validate(&plan), Err(SandboxError::BadPlan(_))));
    }

    #[test]
    fn missing_namespace_error_names_the_protection() {
        let e = SandboxError::Unshare {
            protection: Protection::NetNs,
            flag: "CLONE_NEWNET",
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(e.protection(), Some(Protection::NetNs));
        assert!(e.to_string().contains("NetNs"));
    }

    #[test]
    fn weaker_mode_records_instead_of_failing() {
        let mut plan = Plan::for_vm(0);
        let mut report = Report::default();
        let failing = || {
            Err(SandboxError::UserNs {
                uid: 1,
                source: io::Error::from_raw_os_error(libc::EPERM),
            })
        };
        assert!(waivable(&plan, &mut report, failing()).is_err());
        plan.allow_weaker = true;
        assert!(!waivable(&plan, &mut report, failing()).unwrap());
        assert_eq!(report.weakened[0].protection, Protection::UserNs);
    }

    #[test]
    fn non_protection_errors_are_never_waived() {
        let mut plan = Plan::for_vm(0);
        plan.allow_weaker = true;
        let mut report = Report::default();
        let r = Err(SandboxError::NoNewPrivs(io::Error::from_raw_os_error(
            libc::EINVAL,
        )));
        assert!(waivable(&plan, &mut report, r).is_err());
    }
}
