//! Arbitrary bytes through every decoder path: whole frames, the incremental
//! `FrameDecoder` at varying split points, as every message type.
//!
//! Run: `cd protocol/fuzz && cargo +nightly fuzz run decode_frames`.
//! The same function runs over `corpus/decode_frames/` in CI
//! (`protocol/tests/fuzz_corpus.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    protocol::fuzzing::decode_frames(data);
});
