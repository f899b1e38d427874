//! The embedded seccomp filters (compiled from policies/seccomp/worker.json
//! by build.rs) and their installation.
//!
//! Filters in the policy:
//! - `worker`: the allowlist for every worker thread; anything else traps
//!   (SIGSYS → report line → exit 67). All worker threads share it today;
//!   a stricter per-thread-kind filter can be stacked later on the thread
//!   itself (filters only ever narrow).
//! - `deny_clone3`: answers clone3 with ENOSYS so glibc falls back to clone,
//!   whose flags `worker` can inspect.
//! - `reaper`: the pid-namespace parent, which only waits and exits.

use std::io;

use seccompiler::sock_filter;

use super::sys;

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter {0:?} is not in the embedded policy")]
    MissingFilter(&'static str),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(#[source] io::Error),
    #[error("installing seccomp filter {name:?}: {source}")]
    Apply {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Names of the filters embedded in this binary.
pub fn filter_names() -> impl Iterator<Item = &'static str> {
    FILTERS.iter().map(|(name, _)| *name)
}

/// The compiled BPF program of filter `name`.
pub fn program(name: &'static str) -> Result<Vec<sock_filter>, SeccompError> {
    let (_, bytes) = FILTERS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or(SeccompError::MissingFilter(name))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn apply(name: &'static str) -> Result<(), SeccompError> {
    let prog = program(name)?;
    sys::apply_seccomp(&prog).map_err(|source| SeccompError::Apply { name, source })
}

/// Installs the SIGSYS reporter and the worker filters on every thread.
///
/// Order: the handler first (a trap before it exists would kill with a bare
/// SIGSYS); `deny_clone3` before `worker`, because once `worker` is in force
/// the seccomp() and prctl() calls needed to add another filter trap.
/// `jit`: install `worker_jit` instead of `worker` (build.rs derives it:
/// one more rule, mprotect to PROT_READ|PROT_EXEC, for the CPU's JIT).
pub fn install_worker(jit: bool) -> Result<(), SeccompError> {
    sys::install_sigsys_handler().map_err(SeccompError::Handler)?;
    apply("deny_clone3")?;
    apply(if jit { "worker_jit" } else { "worker" })
}

/// Installs the reaper filter (pid-namespace parent).
pub fn install_reaper() -> Result<(), SeccompError> {
    sys::install_sigsys_handler().map_err(SeccompError::Handler)?;
    apply("reaper")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_embeds_the_four_filters() {
        let mut names: Vec<_> = filter_names().collect();
        names.sort();
        assert_eq!(names, ["deny_clone3", "reaper", "worker", "worker_jit"]);
    }

    #[test]
    fn the_jit_filter_is_the_worker_filter_and_a_little_more() {
        // One more rule: a few BPF instructions, no fewer.
        let (worker, jit) = (program("worker").unwrap(), program("worker_jit").unwrap());
        assert!(jit.len() > worker.len() && jit.len() < worker.len() + 16);
    }

    #[test]
    fn worker_filter_is_nonempty_whole_instructions() {
        let (_, bytes) = FILTERS.iter().find(|(n, _)| *n == "worker").unwrap();
        assert_eq!(bytes.len() % 8, 0);
        assert!(program("worker").unwrap().len() > 50);
    }

    #[test]
    fn unknown_filter_is_an_error() {
        assert!(matches!(
            program("nope"),
            Err(SeccompError::MissingFilter("nope"))
        ));
    }
}
