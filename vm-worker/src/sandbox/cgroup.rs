//! Resource limits through cgroups, v2 (unified hierarchy) or v1 (one
//! hierarchy per controller). Each worker gets `bulkhead/<name>` with memory,
//! cpu and pids limits and moves itself in before it loses access to the
//! cgroup filesystem. The supervisor removes the groups after the worker
//! exits ([`remove`]).
//!
//! All paths hang off an injectable root (normally `/sys/fs/cgroup`) so the
//! logic is testable on a plain directory tree.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where cgroup hierarchies are mounted on practically every distribution.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// Parent group of every worker group.
pub const PARENT: &str = "bulkhead";
/// v1 controllers the sandbox uses, each its own hierarchy under the root.
pub const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// CFS period used for the cpu quota (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Per-worker resource limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Hard memory limit in bytes (guest RAM + emulator overhead); no swap.
    pub memory_bytes: u64,
    /// CPU bandwidth in percent of one CPU (100 = one full core).
    pub cpu_percent: u32,
    /// Maximum number of tasks (threads count).
    pub pids_max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no usable cgroup hierarchy under {root}: neither v2 (cgroup.controllers) nor v1 memory/cpu/pids"
    )]
    NoHierarchy { root: PathBuf },
    #[error("invalid cgroup name {name:?}: use letters, digits, '-' and '_'")]
    BadName { name: String },
    #[error("cgroup {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// Which hierarchy `root` holds. A "hybrid" layout (v1 controllers plus an
/// empty unified tree at `root/unified`) counts as v1: the controllers are
/// where the limits are.
pub fn detect(root: &Path) -> Option<CgroupVersion> {
    if root.join("cgroup.controllers").is_file() {
        return Some(CgroupVersion::V2);
    }
    let v1 = V1_CONTROLLERS
        .iter()
        .all(|c| root.join(c).join("cgroup.procs").is_file());
    v1.then_some(CgroupVersion::V1)
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadName {
            name: name.to_string(),
        })
    }
}

/// A created (not yet joined) worker group: the directories to write
/// `cgroup.procs` into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub version: CgroupVersion,
    pub dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err("mkdir", path)(e)),
        _ => Ok(()),
    }
}

/// Creates `bulkhead/<name>` and writes the limits.
pub fn create(root: &Path, name: &str, limits: &Limits) -> Result<Group, CgroupError> {
    check_name(name)?;
    let version = detect(root).ok_or_else(|| CgroupError::NoHierarchy {
        root: root.to_path_buf(),
    })?;
    let quota = u64::from(limits.cpu_percent) * CPU_PERIOD_US / 100;
    let dirs = match version {
        CgroupVersion::V2 => {
            // Controllers must be enabled for the children of every level.
            let enable = "+memory +cpu +pids";
            write(&root.join("cgroup.subtree_control"), enable)?;
            let parent = root.join(PARENT);
            mkdir(&parent)?;
            write(&parent.join("cgroup.subtree_control"), enable)?;
            let dir = parent.join(name);
            mkdir(&dir)?;
            write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
            vec![dir]
        }
        CgroupVersion::V1 => {
            let mut dirs = Vec::new();
            for controller in V1_CONTROLLERS {
                let parent = root.join(controller).join(PARENT);
                mkdir(&parent)?;
                let dir = parent.join(name);
                mkdir(&dir)?;
                match controller {
                    "memory" => {
                        let mem = limits.memory_bytes.to_string();
                        write(&dir.join("memory.limit_in_bytes"), &mem)?;
                        // memory+swap; only present with swap accounting.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            write(&memsw, &mem)?;
                        }
                    }
                    "cpu" => {
                        write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                    _ => write(&dir.join("pids.max"), &limits.pids_max.to_string())?,
                }
                dirs.push(dir);
            }
            dirs
        }
    };
    Ok(Group { version, dirs })
}

/// Moves process `pid` into the group (every hierarchy for v1).
pub fn join(group: &Group, pid: i32) -> Result<(), CgroupError> {
    for dir in &group.dirs {
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Removes a worker's groups after it has exited (supervisor side).
/// Missing groups are not an error; a group that still has tasks is.
pub fn remove(root: &Path, name: &str) -> Result<(), CgroupError> {
    check_name(name)?;
    let dirs: Vec<PathBuf> = match detect(root) {
        Some(CgroupVersion::V2) => vec![root.join(PARENT).join(name)],
        Some(CgroupVersion::V1) => V1_CONTROLLERS
            .iter()
            .map(|c| root.join(c).join(PARENT).join(name))
            .collect(),
        None => return Ok(()),
    };
    for dir in dirs {
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("rmdir", &dir)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// True when this process can really create (and remove) a group in every
/// hierarchy the sandbox uses (used by the probe).
pub fn writable(root: &Path, version: CgroupVersion) -> bool {
    let dirs: Vec<PathBuf> = match version {
        CgroupVersion::V2 => vec![root.to_path_buf()],
        CgroupVersion::V1 => V1_CONTROLLERS.iter().map(|c| root.join(c)).collect(),
    };
    let name = format!("probe-{}", std::process::id());
    dirs.iter().all(|d| {
        let parent = d.join(PARENT);
        let probe = parent.join(&name);
        let ok = mkdir(&parent).is_ok() && mkdir(&probe).is_ok();
        let _ = fs::remove_dir(&probe);
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "bulkhead-cg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        for f in files {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "").unwrap();
        }
        root
    }

    const LIMITS: Limits = Limits {
        memory_bytes: 256 << 20,
        cpu_percent: 50,
        pids_max: 32,
    };

    #[test]
    fn unified_tree_with_controllers_is_v2() {
        let root = tree(&["cgroup.controllers", "cgroup.procs"]);
        assert_eq!(detect(&root), Some(CgroupVersion::V2));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn hybrid_tree_is_v1() {
        let root = tree(&[
            "memory/cgroup.procs",
            "cpu/cgroup.procs",
            "pids/cgroup.procs",
            "unified/cgroup.controllers",
        ]);
        assert_eq!(detect(&root), Some(CgroupVersion::V1));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn empty_tree_has_no_hierarchy() {
        let root = tree(&["x"]);
        assert_eq!(detect(&root), None);
        assert!(matches!(
            create(&root, "vm0", &LIMITS),
            Err(CgroupError::NoHierarchy { .. })
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn v2_create_writes_limits_and_join_writes_pid() {
        let root = tree(&["cgroup.controllers", "cgroup.subtree_control"]);
        let group = create(&root, "vm7", &LIMITS).unwrap();
        let dir = root.join("bulkhead/vm7");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "268435456"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "32");
        join(&group, 1234).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "1234"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn v1_create_writes_each_controller() {
        let root = tree(&[
            "memory/cgroup.procs",
            "cpu/cgroup.procs",
            "pids/cgroup.procs",
        ]);
        let group = create(&root, "vm3", &LIMITS).unwrap();
        assert_eq!(group.version, CgroupVersion::V1);
        assert_eq!(group.dirs.len(), 3);
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("memory/bulkhead/vm3/memory.limit_in_bytes"),
            "268435456"
        );
        assert_eq!(read("cpu/bulkhead/vm3/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/bulkhead/vm3/cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids/bulkhead/vm3/pids.max"), "32");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn names_with_slashes_are_rejected() {
        let root = tree(&["cgroup.controllers"]);
        assert!(matches!(
            create(&root, "../etc", &LIMITS),
            Err(CgroupError::BadName { .. })
        ));
        fs::remove_dir_all(root).unwrap();
    }
}
