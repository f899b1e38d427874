//! Every raw libc call of the worker lives here: small safe wrappers that
//! return `io::Result`, so the sandbox steps above read as plain Rust.
//!
//! Functions that must also work between `fork` and `_exit` in a child of a
//! multi-threaded process (the probes) stick to raw syscalls.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use protocol::WorkerExit;
use protocol::exit::{SECCOMP_REPORT_MAX, format_seccomp_report};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_long(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

/// Removes every environment variable.
///
/// Only call while the process is single-threaded (the sandbox runs before
/// any thread is spawned): `environ` is not protected against concurrent
/// `getenv`.
pub fn clear_env() -> io::Result<()> {
    // SAFETY: clearenv takes no pointers; the caller guarantees no other
    // thread reads the environment concurrently.
    check(unsafe { libc::clearenv() }).map(drop)
}

/// Closes every fd in `first..=last`.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range takes plain integers; closing fds this process owns
    // is exactly the intent (the caller has listed the fds to keep).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    match check_long(rc) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // Kernels before 5.9: close one by one up to the fd limit.
            let max = getrlimit(libc::RLIMIT_NOFILE)?.0.min(u64::from(last)) as u32;
            for fd in first..=max {
                // SAFETY: closing a possibly-unused fd number; EBADF is ignored.
                unsafe { libc::close(fd as RawFd) };
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`, which outlives the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// fork(2). In the child only async-signal-safe work may follow if the
/// parent had other threads.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no pointer arguments; callers are either
    // single-threaded (the sandbox) or do only raw syscalls in the child
    // before `_exit` (the probes).
    match check(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exited {
    Code(i32),
    Signal(i32),
}

impl Exited {
    /// Shell convention: a death by signal N becomes 128 + N.
    pub fn as_exit_code(self) -> i32 {
        match self {
            Exited::Code(c) => c,
            Exited::Signal(s) => 128 + s,
        }
    }
}

/// Waits for `pid` to terminate, retrying on EINTR.
pub fn wait_exit(pid: libc::pid_t) -> io::Result<Exited> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        match check(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => {
                if libc::WIFEXITED(status) {
                    return Ok(Exited::Code(libc::WEXITSTATUS(status)));
                }
                if libc::WIFSIGNALED(status) {
                    return Ok(Exited::Signal(libc::WTERMSIG(status)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// _exit(2): no destructors, no atexit handlers, no stdio flush.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and takes no pointers.
    unsafe { libc::_exit(code) }
}

pub fn set_pdeathsig(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// True when the other end of a pipe has been closed (POLLHUP), without
/// blocking.
pub fn peer_closed(fd: &OwnedFd) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    check(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok(pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0)
}

pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or a NUL-terminated string that
    // lives until the end of this function.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
    .map(drop)
}

pub fn umount_detach(target: &str) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is NUL-terminated and outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

pub fn pivot_root(new_root: &str, put_old: &str) -> io::Result<()> {
    let new_root = cstring(new_root)?;
    let put_old = cstring(put_old)?;
    // SAFETY: both are NUL-terminated strings that outlive the call.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

pub fn chdir(path: &str) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: NUL-terminated string outliving the call.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

pub fn setgroups_empty() -> io::Result<()> {
    // SAFETY: a zero-length list; the pointer is not read.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

pub fn setresgid(gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

pub fn setresuid(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// (real uid, effective uid, real gid, effective gid).
pub fn ids() -> (u32, u32, u32, u32) {
    // SAFETY: these calls cannot fail and take no arguments.
    unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    }
}

pub fn getpid() -> i32 {
    // SAFETY: cannot fail.
    unsafe { libc::getpid() }
}

pub fn parent_pid() -> i32 {
    // SAFETY: cannot fail.
    unsafe { libc::getppid() }
}

/// This UTS namespace's hostname.
pub fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and its length.
    check(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) })?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

pub type Resource = libc::__rlimit_resource_t;

pub fn setrlimit(resource: Resource, limit: u64) -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: `rl` is a valid rlimit for the duration of the call.
    check(unsafe { libc::setrlimit(resource, &rl) }).map(drop)
}

/// (soft, hard).
pub fn getrlimit(resource: Resource) -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-pointer.
    check(unsafe { libc::getrlimit(resource, &mut rl) })?;
    Ok((rl.rlim_cur, rl.rlim_max))
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

pub fn no_new_privs() -> io::Result<bool> {
    prctl(libc::PR_GET_NO_NEW_PRIVS, 0).map(|v| v == 1)
}

pub fn set_dumpable(on: bool) -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong).map(drop)
}

pub fn dumpable() -> io::Result<bool> {
    prctl(libc::PR_GET_DUMPABLE, 0).map(|v| v == 1)
}

/// 0 disabled, 1 strict, 2 filter. Calling this under strict mode kills the
/// process; under a filter it must be allowed by the filter.
pub fn seccomp_mode() -> io::Result<i32> {
    prctl(libc::PR_GET_SECCOMP, 0)
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP in the
/// current user namespace). Returns how many were dropped.
pub fn drop_bounding_set() -> io::Result<u32> {
    let mut n = 0;
    for cap in 0..64 {
        match prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(_) => n += 1,
            // EINVAL: past the last capability this kernel knows.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Effective, permitted and inheritable sets of this thread, 64 bits each.
pub fn capabilities() -> io::Result<(u64, u64, u64)> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capget v3 expects.
    check_long(unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) })?;
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

/// Empties the effective, permitted and inheritable sets.
pub fn capset_zero() -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capset v3 expects.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) }).map(drop)
}

/// Names of the network interfaces visible in this network namespace.
pub fn interface_names() -> io::Result<Vec<String>> {
    // SAFETY: no arguments; returns an array we free below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut p = list;
    loop {
        // SAFETY: `p` walks the array returned by if_nameindex, which ends
        // with an entry whose index is 0 and name null.
        let entry = unsafe { &*p };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the list.
        names.push(
            unsafe { CStr::from_ptr(entry.if_name) }
                .to_string_lossy()
                .into_owned(),
        );
        // SAFETY: the terminator has not been reached, so p+1 is in bounds.
        p = unsafe { p.add(1) };
    }
    // SAFETY: `list` came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(list) };
    Ok(names)
}

/// True when the filesystem holding `path` is mounted read-only.
pub fn is_read_only(path: &str) -> io::Result<bool> {
    let path = cstring(path)?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a valid out-pointer.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

// ---------------------------------------------------------------------------
// Seccomp violation reporting.

/// The SIGSYS part of `siginfo_t` on x86_64 (`_sigsys` in the kernel's
/// union, which starts at offset 16).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // for SIGSYS its union holds `_sigsys`, laid out as SigsysInfo.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    // protocol's formatter neither allocates nor locks.
    let mut buf = [0u8; SECCOMP_REPORT_MAX];
    let line = format_seccomp_report(i64::from(nr), &mut buf);
    // SAFETY: write(2) and _exit(2) are async-signal-safe and both allowed
    // by the worker filter; `line` is valid for its length.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(WorkerExit::SeccompViolation.code());
    }
}

/// Installs the SIGSYS handler that reports a trapped syscall and exits
/// with [`WorkerExit::SeccompViolation`].
pub fn install_sigsys_handler() -> io::Result<()> {
    // SAFETY: sigaction is plain old data; zeroed means empty mask, no flags.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa.sa_mask` is a valid sigset_t.
    check(unsafe { libc::sigemptyset(&mut sa.sa_mask) })?;
    // SAFETY: valid sigaction; the handler only calls async-signal-safe
    // functions.
    check(unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) }).map(drop)
}

/// Installs a compiled BPF program on every thread of the process (TSYNC).
pub fn apply_seccomp(program: &[seccompiler::sock_filter]) -> io::Result<()> {
    seccompiler::apply_filter_all_threads(program).map_err(|e| match e {
        seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => io,
        other => io::Error::other(other.to_string()),
    })
}

// ---------------------------------------------------------------------------
// Deliberately forbidden syscalls, for `sandbox-check --forbidden` and the
// chaos device. Each returns the io error in case the call is NOT trapped.

pub fn try_open(path: &str) -> io::Error {
    let Ok(path) = cstring(path) else {
        return io::Error::from(io::ErrorKind::InvalidInput);
    };
    // SAFETY: NUL-terminated path; a returned fd is closed right away.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: fd was just opened by us.
        unsafe { libc::close(fd) };
        return io::Error::other("open succeeded");
    }
    io::Error::last_os_error()
}

pub fn try_socket() -> io::Error {
    // SAFETY: integer arguments; a returned fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: fd was just created by us.
        unsafe { libc::close(fd) };
        return io::Error::other("socket succeeded");
    }
    io::Error::last_os_error()
}

pub fn try_execve(path: &str) -> io::Error {
    let Ok(path) = cstring(path) else {
        return io::Error::from(io::ErrorKind::InvalidInput);
    };
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated path, null-terminated argv and envp arrays that
    // outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

pub fn try_ptrace(pid: i32) -> io::Error {
    // SAFETY: PTRACE_ATTACH takes a pid and ignores addr/data.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc == 0 {
        return io::Error::other("ptrace succeeded");
    }
    io::Error::last_os_error()
}

/// kill(pid, 0): an existence probe, harmless if it were ever allowed.
pub fn try_kill(pid: i32) -> io::Error {
    // SAFETY: integer arguments; signal 0 delivers nothing.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return io::Error::other("kill succeeded");
    }
    io::Error::last_os_error()
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Borrows an inherited fd for the rest of the process's life.
pub fn borrow_inherited(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass stdio or an fd from the plan's keep_fds: it was
    // inherited open and the worker never closes it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
