//! Worker exit codes, as the supervisor reads them.
//!
//! MOVES TO `protocol`: the `protocol` crate (being written in parallel)
//! defines the shared `WorkerExit` enum with these exact values. Until it
//! lands in main this copy stands in; the lead reconciles the two and this
//! module then re-exports `protocol::WorkerExit`.

/// How a worker process ended. Codes are part of the supervisor contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum WorkerExit {
    /// Clean shutdown.
    Ok = 0,
    /// Bad command line or inherited fds (EX_USAGE-like).
    BadSetup = 64,
    /// The sandbox could not be entered (a step failed, a protection missing).
    SandboxFailed = 65,
    /// The supervisor sent something that is not a valid frame.
    ProtocolError = 66,
    /// A syscall outside the seccomp allowlist was attempted.
    SeccompViolation = 67,
    /// A Rust panic (std's exit code for a panicking main).
    Panic = 101,
}

impl WorkerExit {
    /// The process exit status.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// Maps a process exit status back to the enum (`None` for other codes).
    pub fn from_code(code: i32) -> Option<WorkerExit> {
        [
            WorkerExit::Ok,
            WorkerExit::BadSetup,
            WorkerExit::SandboxFailed,
            WorkerExit::ProtocolError,
            WorkerExit::SeccompViolation,
            WorkerExit::Panic,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }
}

/// The line a worker writes to stderr when seccomp traps a syscall, followed
/// by the decimal syscall number and a newline. The supervisor matches this
/// prefix to name the syscall in its sandbox-violation report.
/// MOVES TO `protocol` together with [`WorkerExit`].
pub const SECCOMP_VIOLATION_PREFIX: &str = "bulkhead-worker: seccomp violation: syscall ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for e in [
            WorkerExit::Ok,
            WorkerExit::BadSetup,
            WorkerExit::SandboxFailed,
            WorkerExit::ProtocolError,
            WorkerExit::SeccompViolation,
            WorkerExit::Panic,
        ] {
            assert_eq!(WorkerExit::from_code(e.code()), Some(e));
        }
        assert_eq!(WorkerExit::from_code(1), None);
    }

    #[test]
    fn seccomp_violation_is_67() {
        assert_eq!(WorkerExit::SeccompViolation.code(), 67);
    }
}
