//! What this host can give a worker: each protection is tried for real in
//! a throw-away child process. This is what `bulkhead doctor` prints and
//! what the supervisor checks before starting VMs.

use std::fmt;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ID_BASE, Protection, cgroup, seccomp, sys};

/// One line of the probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub protection: Protection,
    pub available: bool,
    /// Why not, or how (e.g. "writable" for a cgroup hierarchy).
    pub detail: String,
}

/// The protections this host provides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProtections {
    pub running_as_root: bool,
    pub cgroup_version: Option<cgroup::CgroupVersion>,
    pub checks: Vec<Check>,
}

impl HostProtections {
    pub fn available(&self, p: Protection) -> bool {
        self.checks.iter().any(|c| c.protection == p && c.available)
    }

    /// Protections the default plan needs and this host lacks. Either
    /// cgroup version satisfies the cgroup requirement; when neither is
    /// usable, the one reported missing is that of the detected hierarchy
    /// (v2 when none is detected).
    pub fn missing(&self) -> Vec<Protection> {
        let mut missing: Vec<Protection> = Protection::ALL
            .into_iter()
            .filter(|p| !matches!(p, Protection::CgroupV1 | Protection::CgroupV2))
            .filter(|&p| !self.available(p))
            .collect();
        if !self.available(Protection::CgroupV1) && !self.available(Protection::CgroupV2) {
            missing.push(match self.cgroup_version {
                Some(cgroup::CgroupVersion::V1) => Protection::CgroupV1,
                _ => Protection::CgroupV2,
            });
        }
        missing
    }
}

impl fmt::Display for HostProtections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "bulkhead worker sandbox: host protections")?;
        for c in &self.checks {
            let mark = if c.available { "ok" } else { "MISSING" };
            write!(
                f,
                "  [{mark:^7}] {:<10} {}",
                c.protection,
                c.protection.describe()
            )?;
            if !c.detail.is_empty() {
                write!(f, " ({})", c.detail)?;
            }
            writeln!(f)?;
        }
        let version = match self.cgroup_version {
            Some(cgroup::CgroupVersion::V1) => "v1 (per-controller hierarchies)",
            Some(cgroup::CgroupVersion::V2) => "v2 (unified hierarchy)",
            None => "none found",
        };
        writeln!(f, "  cgroup hierarchy: {version}")?;
        let missing = self.missing();
        if missing.is_empty() {
            write!(f, "  all protections available")
        } else {
            let names: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
            write!(
                f,
                "  missing: {}; workers will not start unless the weaker mode is explicitly allowed",
                names.join(", ")
            )
        }
    }
}

/// Probes this host with the standard cgroup root.
pub fn probe() -> HostProtections {
    probe_with(Path::new(cgroup::DEFAULT_ROOT))
}

/// Probes this host, looking for cgroups under `cgroup_root`.
pub fn probe_with(cgroup_root: &Path) -> HostProtections {
    let running_as_root = sys::ids().1 == 0;
    let mut checks = Vec::new();
    let mut add = |protection, result: io::Result<()>| {
        checks.push(Check {
            protection,
            available: result.is_ok(),
            detail: result.err().map(|e| e.to_string()).unwrap_or_default(),
        })
    };

    // The user namespace must work for an unprivileged uid: that is how
    // the worker creates it.
    add(
        Protection::UserNs,
        in_child(|| {
            if sys::ids().1 == 0 {
                sys::setgroups_empty()?;
                sys::setresgid(65534)?;
                sys::setresuid(65534)?;
            }
            sys::unshare(libc::CLONE_NEWUSER)
        }),
    );
    for (protection, flag) in [
        (Protection::PidNs, libc::CLONE_NEWPID),
        (Protection::NetNs, libc::CLONE_NEWNET),
        (Protection::MountNs, libc::CLONE_NEWNS),
        (Protection::IpcNs, libc::CLONE_NEWIPC),
        (Protection::UtsNs, libc::CLONE_NEWUTS),
    ] {
        add(protection, in_child(move || sys::unshare(flag)));
    }
    add(
        Protection::PivotRoot,
        in_child(|| {
            sys::unshare(libc::CLONE_NEWNS)?;
            super::pivot_to_empty_root("/tmp").map_err(|e| io::Error::other(e.to_string()))
        }),
    );
    add(
        Protection::PerVmIds,
        in_child(|| {
            sys::setgroups_empty()?;
            sys::setresgid(ID_BASE)?;
            sys::setresuid(ID_BASE)
        }),
    );
    let cgroup_version = cgroup::detect(cgroup_root);
    for (protection, version) in [
        (Protection::CgroupV1, cgroup::CgroupVersion::V1),
        (Protection::CgroupV2, cgroup::CgroupVersion::V2),
    ] {
        let result = if cgroup_version != Some(version) {
            Err(io::Error::other(format!(
                "no {version:?} hierarchy under {}",
                cgroup_root.display()
            )))
        } else if !cgroup::writable(cgroup_root, version) {
            Err(io::Error::other(format!(
                "{} not writable by this process",
                cgroup_root.display()
            )))
        } else {
            Ok(())
        };
        add(protection, result);
    }
    add(Protection::NoNewPrivs, sys::no_new_privs().map(drop));
    // The real worker filter, installed in a child that then exits.
    add(
        Protection::Seccomp,
        in_child(|| seccomp::install_worker(false).map_err(|e| io::Error::other(e.to_string()))),
    );

    HostProtections {
        running_as_root,
        cgroup_version,
        checks,
    }
}

/// Runs `f` in a forked child and reports its outcome (the child's exit
/// status carries the errno). The child does nothing but `f` and `_exit`.
fn in_child(f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    match sys::fork()? {
        sys::Fork::Child => {
            let code = match f() {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().map_or(255, |n| n.clamp(1, 254)),
            };
            sys::exit_now(code)
        }
        sys::Fork::Parent(pid) => match sys::wait_exit(pid)? {
            sys::Exited::Code(0) => Ok(()),
            sys::Exited::Code(255) => Err(io::Error::other("failed")),
            sys::Exited::Code(errno) => Err(io::Error::from_raw_os_error(errno)),
            sys::Exited::Signal(s) => Err(io::Error::other(format!("probe killed by signal {s}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(available: &[Protection]) -> HostProtections {
        HostProtections {
            running_as_root: true,
            cgroup_version: Some(cgroup::CgroupVersion::V1),
            checks: Protection::ALL
                .into_iter()
                .map(|p| Check {
                    protection: p,
                    available: available.contains(&p),
                    detail: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn either_cgroup_version_satisfies_the_requirement() {
        let all_but_v2: Vec<_> = Protection::ALL
            .into_iter()
            .filter(|&p| p != Protection::CgroupV2)
            .collect();
        assert!(host(&all_but_v2).missing().is_empty());
    }

    #[test]
    fn missing_protections_are_named() {
        let without_userns: Vec<_> = Protection::ALL
            .into_iter()
            .filter(|&p| p != Protection::UserNs)
            .collect();
        let h = host(&without_userns);
        assert_eq!(h.missing(), [Protection::UserNs]);
        assert!(h.to_string().contains("missing: UserNs"));
    }

    #[test]
    fn no_cgroup_reports_the_detected_version_missing() {
        let h = host(&[Protection::UserNs]);
        assert!(h.missing().contains(&Protection::CgroupV1));
    }

    #[test]
    fn probe_reports_no_new_privs_and_serializes() {
        let h = probe();
        assert!(h.available(Protection::NoNewPrivs));
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"protection\":\"Seccomp\""));
    }
}
