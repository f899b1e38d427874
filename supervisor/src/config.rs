//! What the daemon keeps on disk: VM definitions (`vms/NAME.toml`), the
//! policy (`policy.toml`), default paths, and name validation.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "invalid VM name {0:?}: use 1-48 letters, digits, '-' or '_', starting with a letter or digit"
    )]
    BadName(String),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// When the daemon restarts a VM whose worker ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// After a failure (crash, signal, sandbox or protocol violation,
    /// triple fault), not after a guest power-off.
    OnFailure,
    /// After any end the operator did not ask for (power-off included).
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(RestartPolicy::No),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            _ => Err(format!("{s:?}: expected no, on-failure or always")),
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        })
    }
}

/// One VM's definition: `vms/NAME.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDef {
    pub name: String,
    pub owner_uid: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub append: String,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub autostart: bool,
    /// Run the guest's code through the CPU's JIT: about 1.5x faster on
    /// integer code; its seccomp filter lets the JIT's code pages become
    /// executable (off: no worker memory is ever executable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jit: bool,
    /// IDE drives (`[[drive]]` tables).
    #[serde(default, rename = "drive", skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<crate::drives::DriveDef>,
}

/// Largest guest RAM (the worker's limit).
pub const MAX_MEMORY_MIB: u32 = protocol::WorkerConfig::MAX_RAM_MIB;

impl VmDef {
    /// Checks the definition and gives drives without a slot their slot.
    pub fn normalize(&mut self) -> Result<(), ConfigError> {
        crate::drives::assign_slots(&mut self.drives)?;
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name(&self.name)?;
        if self.drives.iter().any(|d| d.slot.is_none()) {
            return Err(ConfigError::Invalid("a drive has no slot".into()));
        }
        let mut drives = self.drives.clone();
        crate::drives::assign_slots(&mut drives)?;
        if self.memory_mib == 0 || self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::Invalid(format!(
                "memory {} MiB is out of range: use 1..={MAX_MEMORY_MIB}",
                self.memory_mib
            )));
        }
        if !self.kernel.is_absolute() || self.initrd.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(ConfigError::Invalid(
                "kernel and initrd paths must be absolute".into(),
            ));
        }
        if self.append.len() > protocol::WorkerConfig::MAX_CMDLINE || self.append.contains('\0') {
            return Err(ConfigError::Invalid(format!(
                "the kernel command line must be at most {} bytes with no NUL",
                protocol::WorkerConfig::MAX_CMDLINE
            )));
        }
        Ok(())
    }
}

/// VM names: 1-48 of `[A-Za-z0-9_-]`, not starting with `-` or `_` (they
/// name files and cgroups).
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadName(name.to_string()))
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// The state directory's layout.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn vms(&self) -> PathBuf {
        self.root.join("vms")
    }
    pub fn vm_file(&self, name: &str) -> PathBuf {
        self.vms().join(format!("{name}.toml"))
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn serial_log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.serial.log"))
    }
    pub fn forensics(&self, name: &str) -> PathBuf {
        self.root.join("forensics").join(name)
    }
    pub fn policy(&self) -> PathBuf {
        self.root.join("policy.toml")
    }
    /// The VM's undo disks (see [`crate::drives`]).
    pub fn undo(&self, name: &str) -> PathBuf {
        self.root.join("undo").join(name)
    }

    /// Creates the directories (mode 0700: definitions name host paths).
    pub fn create(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [
            self.root.clone(),
            self.vms(),
            self.logs(),
            self.root.join("forensics"),
            self.root.join("undo"),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir))?;
        }
        Ok(())
    }

    pub fn save(&self, def: &VmDef) -> Result<(), ConfigError> {
        let text = toml::to_string(def).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        write_atomic(&self.vm_file(&def.name), text.as_bytes())
    }

    /// Every valid definition; invalid files are returned as errors
    /// beside them (the daemon logs and skips them).
    pub fn load_all(&self) -> (Vec<VmDef>, Vec<ConfigError>) {
        let (mut defs, mut errors) = (Vec::new(), Vec::new());
        let dir = self.vms();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return (defs, vec![io_err(&dir)(e)]),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            match load_def(&path) {
                Ok(def) => defs.push(def),
                Err(e) => errors.push(e),
            }
        }
        (defs, errors)
    }
}

fn load_def(path: &Path) -> Result<VmDef, ConfigError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let mut def: VmDef = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // A hand-written `[[drive]]` may leave the slot out.
    def.normalize().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if path.file_stem().and_then(|s| s.to_str()) != Some(def.name.as_str()) {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("the file name does not match name = {:?}", def.name),
        });
    }
    Ok(def)
}

/// The daemon's policy: built-in defaults, overridden by `policy.toml` in
/// the state directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// VMs one non-root uid may define.
    pub max_vms_per_uid: u32,
    /// Guest RAM (MiB) one non-root uid may define in total.
    pub max_memory_mib_per_uid: u32,
    /// Power button to kill, for `vm stop` and daemon shutdown.
    pub stop_timeout_ms: u64,
    /// First restart delay; doubles per failure up to the max.
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// This many failures within the window park a VM as `failed`.
    pub crash_loop_failures: u32,
    pub crash_loop_window_ms: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_vms_per_uid: 16,
            max_memory_mib_per_uid: 8192,
            stop_timeout_ms: 10_000,
            restart_backoff_ms: 500,
            restart_backoff_max_ms: 30_000,
            crash_loop_failures: 5,
            crash_loop_window_ms: 60_000,
        }
    }
}

impl Policy {
    /// The defaults, or `path` over them if it exists.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Policy::default()),
            Err(e) => Err(io_err(path)(e)),
        }
    }
}

/// Where the socket and state directory are by default: root uses
/// `/run/bulkhead` and `/var/lib/bulkhead`; others `$XDG_RUNTIME_DIR` and
/// `$XDG_STATE_HOME/bulkhead` (or `~/.local/state/bulkhead`).
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/bulkhead/bulkhead.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("bulkhead.sock"),
        _ => std::env::temp_dir().join(format!("bulkhead-{}.sock", current_uid())),
    }
}

pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/bulkhead");
    }
    match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("bulkhead"),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(".local/state/bulkhead")
        }
    }
}

/// The socket a client uses: `--socket`, then `BULKHEAD_SOCKET`, then the
/// default.
pub fn client_socket(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("BULKHEAD_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(default_socket)
}

pub fn current_uid() -> u32 {
    crate::sys::getuid()
}

fn is_root() -> bool {
    current_uid() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "web-1", "A_b", "0x"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "_a", "a/b", "..", "a.b", "a b", &"x".repeat(49)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn definitions_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir {
            root: dir.path().to_path_buf(),
        };
        state.create().unwrap();
        let def = VmDef {
            name: "web".into(),
            owner_uid: 1000,
            memory_mib: 64,
            kernel: "/k".into(),
            initrd: None,
            append: "console=ttyS0".into(),
            restart: RestartPolicy::OnFailure,
            autostart: true,
            jit: true,
            drives: vec![crate::drives::DriveDef {
                path: "/disk.vhd".into(),
                slot: Some(protocol::IdeSlot::PrimaryMaster),
                media: protocol::DriveMedia::Disk,
                read_only: false,
                undo: Some(crate::drives::UndoAction::Discard),
            }],
        };
        state.save(&def).unwrap();
        let text = fs::read_to_string(state.vm_file("web")).unwrap();
        assert!(text.contains("[[drive]]"), "{text}");
        fs::write(state.vms().join("bad.toml"), "name = 1").unwrap();
        let (defs, errors) = state.load_all();
        assert_eq!(defs, vec![def]);
        assert_eq!(errors.len(), 1);
        let leftovers: Vec<_> = fs::read_dir(state.vms())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn policy_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        assert_eq!(Policy::load(&path).unwrap(), Policy::default());
        fs::write(&path, "max_vms_per_uid = 2\n").unwrap();
        assert_eq!(Policy::load(&path).unwrap().max_vms_per_uid, 2);
        fs::write(&path, "max_vms = 2\n").unwrap();
        assert!(Policy::load(&path).is_err());
    }
}
