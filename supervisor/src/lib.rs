//! The Bulkhead supervisor: the daemon (`bulkhead serve`) that runs one
//! sandboxed `bulkhead-worker` per VM, and the client side of its API.
//!
//! - [`api`]: the JSON-lines API (requests, replies, error kinds).
//! - [`config`]: VM definitions, the policy, default paths.
//! - [`daemon`]: the VM table, the API server, restart policy, shutdown.
//! - [`worker`]: one worker run: spawn, handshake, supervise, classify.
//! - [`run`]: `bulkhead run`, one VM in the foreground without a daemon.
//! - [`serial`]: serial logs and forensics tails.
//! - [`client`]: talking to the daemon.

pub mod api;
pub mod base64;
pub mod client;
pub mod config;
pub mod daemon;
pub mod drives;
pub mod run;
pub mod serial;
mod sys;
pub mod worker;

pub use sys::RawTerminal;
