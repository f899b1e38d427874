//! `bulkhead-worker`: the per-VM process. Today: the sandbox it enters
//! before running guest code, and the host probe behind `bulkhead doctor`.
//! The VM main loop (inherited fds, a `Pc` on a vCPU thread, the control
//! protocol) follows once the `protocol` crate lands.

#[cfg(all(feature = "chaos", not(debug_assertions)))]
compile_error!(
    "the `chaos` feature lets a guest crash the worker on purpose: tests only, never in a release build"
);

#[cfg(feature = "chaos")]
pub mod chaos;
pub mod exit;
pub mod sandbox;
