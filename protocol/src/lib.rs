//! Everything that crosses Bulkhead's process boundary between the trusted
//! supervisor and an untrusted `bulkhead-worker`:
//!
//! - [`messages`]: the serde messages of the control channel ([`Hello`],
//!   [`WorkerConfig`], [`ToWorker`], [`FromWorker`]).
//! - [`frame`]: their framing (little-endian `u32` length + postcard body,
//!   capped at [`MAX_FRAME`]) with typed errors; blocking readers and an
//!   incremental [`FrameDecoder`] for async code.
//! - [`fds`]: the fd numbers a worker inherits.
//! - [`framebuffer`]: the sealed shared-memory framebuffer, its writer
//!   (worker) and its validating read-only reader (supervisor), PNG output.
//! - [`exit`]: worker exit codes and the seccomp violation report line.
//!
//! The supervisor side treats everything it receives as hostile: decoding
//! never panics, never allocates past the frame cap, and the framebuffer
//! reader re-validates the header on every read.

pub mod exit;
pub mod fds;
pub mod frame;
pub mod framebuffer;
pub mod messages;
mod sys;

#[doc(hidden)]
pub mod fuzzing;

pub use exit::{
    SECCOMP_REPORT_PREFIX, WorkerExit, WorkerOutcome, parse_seccomp_report, syscall_name,
};
pub use frame::{
    DecodeError, EncodeError, FrameDecoder, HelloError, MAX_FRAME, ReadError, WriteError,
    check_hello, decode, decode_body, encode, read_frame, read_hello, write_frame,
};
pub use framebuffer::{DirtyTiles, FbError, FbReader, FbWriter, Frame, PIXELS_OFFSET, encode_png};
pub use messages::{
    BootSource, DebugFlags, DriveAttachment, DriveMedia, FramebufferSize, FromWorker, GuestEvent,
    Hello, IdeSlot, ImageFormat, KeyEvent, LogLevel, LogLine, LogText, PROTOCOL_VERSION,
    PixelFormat, PointerEvent, ReadyInfo, SerialBytes, Set2Key, Stats, ToWorker, VideoMode,
    VmState, WorkerConfig,
};
