//! The decoder fuzz target's body, shared by `fuzz/fuzz_targets/decode_frames.rs`
//! and `tests/fuzz_corpus.rs`, which runs the corpus in CI without cargo-fuzz.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{FrameDecoder, MAX_FRAME, PREFIX_LEN, decode, decode_body, encode};
use crate::messages::{FromWorker, Hello, ToWorker, WorkerConfig};

/// Feeds `data` through every decoding path, as every message type. Panics
/// only when an invariant breaks: a decoder must not panic, must not buffer
/// past the cap, and a message that decodes must re-encode to a frame that
/// decodes and re-encodes to the same bytes.
pub fn decode_frames(data: &[u8]) {
    whole::<Hello>(data);
    whole::<ToWorker>(data);
    whole::<FromWorker>(data);
    whole::<WorkerConfig>(data);

    // Incrementally: first a piece as long as the first byte says, then
    // fixed pieces, so frames straddle pushes at varying places.
    let first = data.first().map_or(1, |&b| usize::from(b).max(1));
    for piece in [first, 1, 7, 4096] {
        let mut dec = FrameDecoder::new();
        let mut rest = data;
        let mut n = first;
        let mut frames = 0usize;
        'stream: while !rest.is_empty() {
            let take = n.min(rest.len());
            dec.push(&rest[..take]);
            rest = &rest[take..];
            n = piece;
            assert!(dec.buffered() <= PREFIX_LEN + MAX_FRAME + first.max(piece));
            while let Some(frame) = dec.next_frame() {
                let Ok(body) = frame else { break 'stream };
                assert!(body.len() <= MAX_FRAME);
                frames += 1;
                body_as::<Hello>(&body);
                body_as::<ToWorker>(&body);
                body_as::<FromWorker>(&body);
                body_as::<WorkerConfig>(&body);
            }
        }
        assert!(frames <= data.len() / PREFIX_LEN);
    }
}

fn whole<T: Serialize + DeserializeOwned>(data: &[u8]) {
    if let Ok(value) = decode::<T>(data) {
        round_trip(&value);
    }
}

fn body_as<T: Serialize + DeserializeOwned>(body: &[u8]) {
    if let Ok(value) = decode_body::<T>(body) {
        round_trip(&value);
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) {
    let frame = encode(value).expect("a decoded message re-encodes");
    let again: T = decode(&frame).expect("a re-encoded message decodes");
    let frame2 = encode(&again).expect("and re-encodes again");
    assert_eq!(frame, frame2, "re-encoding is not stable");
}
