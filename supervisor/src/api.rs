//! The daemon's API: JSON lines over a Unix socket (see docs/api.md).
//!
//! Every request is one line holding a JSON object with `"v": 1` and an
//! `"op"`; every reply is one line, `{"ok":true,...}` or
//! `{"ok":false,"error":{"kind":...,"message":...}}`. These types are
//! shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};

use crate::config::RestartPolicy;

/// The API version this build speaks.
pub const API_VERSION: u64 = 1;
/// Longest request line the daemon accepts (bytes, newline included).
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request, after the `v` field has been checked and removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "daemon.ping")]
    Ping {},
    #[serde(rename = "vm.create")]
    Create {
        name: String,
        memory_mib: u32,
        kernel: String,
        #[serde(default)]
        initrd: Option<String>,
        #[serde(default)]
        append: String,
        #[serde(default)]
        restart: RestartPolicy,
        #[serde(default)]
        autostart: bool,
        /// Run through the CPU's JIT.
        #[serde(default)]
        jit: bool,
        /// IDE drives; slots left out are assigned (disks on the primary
        /// channel, CD-ROMs on the secondary).
        #[serde(default)]
        drives: Vec<crate::drives::DriveDef>,
    },
    #[serde(rename = "vm.list")]
    List {},
    #[serde(rename = "vm.info")]
    Info { name: String },
    #[serde(rename = "vm.start")]
    Start { name: String },
    #[serde(rename = "vm.stop")]
    Stop {
        name: String,
        #[serde(default)]
        force: bool,
        /// Milliseconds between the power button and the kill (default:
        /// the policy's `stop_timeout_ms`).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    #[serde(rename = "vm.kill")]
    Kill { name: String },
    #[serde(rename = "vm.reset")]
    Reset { name: String },
    #[serde(rename = "vm.pause")]
    Pause { name: String },
    #[serde(rename = "vm.resume")]
    Resume { name: String },
    #[serde(rename = "vm.rm")]
    Remove { name: String },
    #[serde(rename = "vm.logs")]
    Logs {
        name: String,
        #[serde(default)]
        follow: bool,
    },
    #[serde(rename = "vm.screenshot")]
    Screenshot { name: String },
    #[serde(rename = "vm.console")]
    Console { name: String },
}

/// Why a request failed: a stable, machine-readable kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not valid JSON, or not a valid request.
    BadRequest,
    /// `v` is missing or not a version this daemon speaks.
    UnsupportedVersion,
    /// The request line exceeds [`MAX_REQUEST`].
    TooLarge,
    /// No such VM (or one the caller may not see).
    NotFound,
    /// The caller may not do this.
    PermissionDenied,
    /// The VM is in the wrong state, or the name is taken.
    Conflict,
    /// The caller's quota would be exceeded.
    Quota,
    /// Something failed in the daemon (I/O, spawning a worker).
    Internal,
}

impl ErrorKind {
    /// The CLI's exit code for this kind (docs/api.md).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::NotFound => 3,
            ErrorKind::PermissionDenied => 4,
            ErrorKind::Conflict | ErrorKind::Quota => 5,
            _ => 1,
        }
    }
}

/// An error reply's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(name: &str) -> ApiError {
        ApiError::new(
            ErrorKind::NotFound,
            format!("no VM named {name:?} (see `bulkhead vm list`)"),
        )
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Internal, message)
    }
}

/// Parses one request line: JSON object, `v` equal to [`API_VERSION`],
/// then the op and its fields (unknown fields are rejected).
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("malformed JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            "a request is a JSON object",
        ));
    };
    match map.remove("v") {
        Some(v) if v.as_u64() == Some(API_VERSION) => {}
        Some(v) => {
            return Err(ApiError::new(
                ErrorKind::UnsupportedVersion,
                format!("API version {v} is not supported; this daemon speaks v{API_VERSION}"),
            ));
        }
        None => {
            return Err(ApiError::new(
                ErrorKind::UnsupportedVersion,
                format!("missing \"v\" (this daemon speaks v{API_VERSION})"),
            ));
        }
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("invalid request: {e}")))
}

/// One request as a line (with `v`), for the client.
pub fn request_line(req: &Request) -> String {
    let mut value = serde_json::to_value(req).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("v".into(), API_VERSION.into());
    }
    let mut line = value.to_string();
    line.push('\n');
    line
}

/// A success reply line: `{"ok":true}` merged with `fields` (an object).
pub fn ok_line(fields: serde_json::Value) -> String {
    let mut map = match fields {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    map.insert("ok".into(), true.into());
    let mut line = serde_json::Value::Object(map).to_string();
    line.push('\n');
    line
}

/// An error reply line.
pub fn error_line(e: &ApiError) -> String {
    let mut line = serde_json::json!({"ok": false, "error": e}).to_string();
    line.push('\n');
    line
}

/// What `vm.list` and `vm.info` report about a VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub owner_uid: u32,
    pub memory_mib: u32,
    pub kernel: String,
    pub initrd: Option<String>,
    pub append: String,
    pub restart: RestartPolicy,
    pub autostart: bool,
    #[serde(default)]
    pub jit: bool,
    #[serde(default)]
    pub drives: Vec<crate::drives::DriveDef>,
    /// stopped, starting, running, paused, backoff, failed.
    pub state: String,
    pub pid: Option<u32>,
    pub uptime_ms: Option<u64>,
    /// Restarts by the restart policy since the daemon started.
    pub restarts: u32,
    pub last_exit: Option<ExitRecord>,
    pub last_crash: Option<CrashRecord>,
}

/// How a worker run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// One word: power_off, stopped, signal, seccomp, protocol_violation,
    /// triple_fault, halted, worker_error, spawn_failed.
    pub kind: String,
    /// A sentence for humans.
    pub reason: String,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// Whether this counts as a failure for the restart policy.
    pub failure: bool,
}

/// The forensics of the last crash, kept on disk across restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrashRecord {
    pub exit: ExitRecord,
    /// Directory holding `exit.json`, `serial.log` and (with a picture)
    /// `screen.png`.
    pub dir: String,
    pub serial_log: String,
    pub screenshot: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_a_line() {
        let req = Request::Stop {
            name: "a".into(),
            force: true,
            timeout_ms: Some(5),
        };
        let line = request_line(&req);
        assert!(line.contains("\"v\":1"));
        assert_eq!(parse_request(line.trim_end().as_bytes()).unwrap(), req);
    }

    #[test]
    fn unknown_fields_versions_and_garbage_are_rejected() {
        let kind = |s: &str| parse_request(s.as_bytes()).unwrap_err().kind;
        assert_eq!(kind("{"), ErrorKind::BadRequest);
        assert_eq!(kind("[1]"), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"op":"vm.list"}"#), ErrorKind::UnsupportedVersion);
        assert_eq!(
            kind(r#"{"v":2,"op":"vm.list"}"#),
            ErrorKind::UnsupportedVersion
        );
        assert_eq!(
            kind(r#"{"v":1,"op":"vm.list","x":1}"#),
            ErrorKind::BadRequest
        );
        assert_eq!(kind(r#"{"v":1,"op":"vm.nope"}"#), ErrorKind::BadRequest);
        assert_eq!(
            parse_request(br#"{"v":1,"op":"vm.list"}"#).unwrap(),
            Request::List {}
        );
    }
}
