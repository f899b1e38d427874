//! `bulkhead-worker`: the per-VM process: the sandbox it enters before
//! running guest code ([`sandbox`]), the host probe behind `bulkhead
//! doctor`, and the VM main loop ([`vm`]: inherited fds, a `Pc` on a vCPU
//! thread, the control protocol). Exit codes are [`protocol::WorkerExit`].

#[cfg(all(feature = "chaos", not(debug_assertions)))]
compile_error!(
    "the `chaos` feature lets a guest crash the worker on purpose: tests only, never in a release build"
);

#[cfg(feature = "chaos")]
pub mod chaos;
pub mod sandbox;
pub mod vm;
