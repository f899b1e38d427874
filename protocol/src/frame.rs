//! Framing on the control socket: a little-endian `u32` body length, then a
//! postcard body of at most [`MAX_FRAME`] bytes.
//!
//! Readers never panic on input and never allocate more than the cap: the
//! length is checked before a buffer is sized for it.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::messages::{HELLO_MAGIC, Hello, PROTOCOL_VERSION};

/// The largest body a frame may carry (the 4-byte prefix not included).
pub const MAX_FRAME: usize = 1 << 20;
/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("message encodes to {len} bytes, over the {MAX_FRAME}-byte frame cap")]
    TooLarge { len: usize },
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("frame length {len} is over the {MAX_FRAME}-byte cap")]
    TooLarge { len: u64 },
    #[error("truncated frame: {got} of {needed} bytes")]
    Truncated { needed: usize, got: usize },
    #[error("{extra} bytes after the message")]
    TrailingBytes { extra: usize },
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
}

#[derive(Debug, Error)]
pub enum ReadError {
    /// The peer closed the stream at a frame boundary.
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error("read: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Error)]
pub enum WriteError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("write: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HelloError {
    #[error("bad hello magic {found:02x?}: the peer does not speak this protocol")]
    BadMagic { found: [u8; 8] },
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
}

/// `value` as a complete frame (prefix and body).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = postcard::to_extend(value, vec![0u8; PREFIX_LEN])?;
    let len = out.len() - PREFIX_LEN;
    if len > MAX_FRAME {
        return Err(EncodeError::TooLarge { len });
    }
    // MAX_FRAME fits in a u32, so this cannot truncate.
    out[..PREFIX_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decodes one complete frame (prefix and body, nothing after it).
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    let Some((prefix, body)) = frame.split_first_chunk::<PREFIX_LEN>() else {
        return Err(DecodeError::Truncated {
            needed: PREFIX_LEN,
            got: frame.len(),
        });
    };
    let len = body_len(*prefix)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(DecodeError::Truncated {
            needed: PREFIX_LEN + len,
            got: frame.len(),
        }),
        std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes {
            extra: body.len() - len,
        }),
        std::cmp::Ordering::Equal => decode_body(body),
    }
}

/// Decodes a frame body (as [`FrameDecoder::next_frame`] returns it). The
/// message must use every byte.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    if body.len() > MAX_FRAME {
        return Err(DecodeError::TooLarge {
            len: body.len() as u64,
        });
    }
    let (value, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(value)
}

/// The body length a prefix announces, refused if over the cap.
fn body_len(prefix: [u8; PREFIX_LEN]) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(prefix);
    if len as usize > MAX_FRAME {
        return Err(DecodeError::TooLarge { len: len.into() });
    }
    Ok(len as usize)
}

/// Reads one frame, blocking. A stream that ends before the first byte of a
/// frame is [`ReadError::Closed`]; one that ends inside a frame is
/// [`DecodeError::Truncated`].
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, ReadError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let got = read_full(r, &mut prefix)?;
    if got == 0 {
        return Err(ReadError::Closed);
    }
    if got < PREFIX_LEN {
        return Err(DecodeError::Truncated {
            needed: PREFIX_LEN,
            got,
        }
        .into());
    }
    let len = body_len(prefix)?;
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(DecodeError::Truncated {
            needed: PREFIX_LEN + len,
            got: PREFIX_LEN + got,
        }
        .into());
    }
    Ok(decode_body(&body)?)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes one frame (a single `write_all`, so frames never interleave on a
/// writer shared under a lock).
pub fn write_frame<T: Serialize + ?Sized>(w: &mut impl Write, value: &T) -> Result<(), WriteError> {
    let frame = encode(value)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Checks a peer's hello against ours.
pub fn check_hello(hello: &Hello) -> Result<(), HelloError> {
    if hello.magic != HELLO_MAGIC {
        return Err(HelloError::BadMagic { found: hello.magic });
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(HelloError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        });
    }
    Ok(())
}

/// Reads the peer's hello and checks it.
pub fn read_hello(r: &mut impl Read) -> Result<Hello, ReadError> {
    let hello: Hello = read_frame(r)?;
    check_hello(&hello)?;
    Ok(hello)
}

/// An incremental frame splitter for non-blocking readers (a tokio task):
/// [`push`](FrameDecoder::push) whatever bytes arrived, then call
/// [`next_frame`](FrameDecoder::next_frame) until it returns `None`.
///
/// Memory stays bounded by one capped frame plus the last push, as long as
/// the caller drains frames after each push. A length over the cap is
/// reported as soon as its prefix arrives, before any of the body is
/// buffered, and the decoder then stays failed: a stream that lost framing
/// cannot be resynchronised.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as frames.
    pos: usize,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, DecodeError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        let avail = &self.buf[self.pos..];
        let (prefix, rest) = avail.split_first_chunk::<PREFIX_LEN>()?;
        let len = match body_len(*prefix) {
            Ok(len) => len,
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.pos = 0;
                return Some(Err(e));
            }
        };
        let body = rest.get(..len)?.to_vec();
        self.pos += PREFIX_LEN + len;
        Some(Ok(body))
    }

    /// The next frame decoded as a `T`.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Option<Result<T, DecodeError>> {
        self.next_frame()
            .map(|r| r.and_then(|body| decode_body(&body)))
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether the stream ended cleanly if it ended now (no partial frame).
    pub fn is_at_boundary(&self) -> bool {
        self.failed.is_none() && self.buffered() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{FromWorker, GuestEvent, ToWorker};

    /// A reader that fails the test if asked for more than `limit` bytes in
    /// one call, standing in for "never allocates past the cap".
    struct Stingy<'a> {
        data: &'a [u8],
        largest_request: usize,
    }

    impl Read for Stingy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest_request = self.largest_request.max(buf.len());
            let n = buf.len().min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn write_then_read_frames_in_order() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Hello::current()).unwrap();
        write_frame(&mut wire, &ToWorker::Pause).unwrap();
        write_frame(&mut wire, &ToWorker::Shutdown).unwrap();
        let mut r = wire.as_slice();
        assert_eq!(read_hello(&mut r).unwrap(), Hello::current());
        assert_eq!(read_frame::<ToWorker>(&mut r).unwrap(), ToWorker::Pause);
        assert_eq!(read_frame::<ToWorker>(&mut r).unwrap(), ToWorker::Shutdown);
        assert!(matches!(
            read_frame::<ToWorker>(&mut r),
            Err(ReadError::Closed)
        ));
    }

    /// Returns `EINTR` before every successful read.
    struct Interrupting<'a> {
        data: &'a [u8],
        interrupt_next: bool,
    }

    impl Read for Interrupting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt_next = !self.interrupt_next;
            if !self.interrupt_next {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.data.len()).min(3);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let frame = encode(&FromWorker::Guest(GuestEvent::DebugExit(7))).unwrap();
        let mut r = Interrupting {
            data: &frame,
            interrupt_next: true,
        };
        let msg = read_frame::<FromWorker>(&mut r).unwrap();
        assert_eq!(msg, FromWorker::Guest(GuestEvent::DebugExit(7)));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut wire = u32::MAX.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        let mut r = Stingy {
            data: &wire,
            largest_request: 0,
        };
        let err = read_frame::<ToWorker>(&mut r).unwrap_err();
        assert!(
            matches!(err, ReadError::Decode(DecodeError::TooLarge { len }) if len == u64::from(u32::MAX))
        );
        assert_eq!(r.largest_request, PREFIX_LEN);
    }

    #[test]
    fn length_exactly_at_the_cap_is_accepted_one_over_is_not() {
        assert!(body_len((MAX_FRAME as u32).to_le_bytes()).is_ok());
        assert_eq!(
            body_len((MAX_FRAME as u32 + 1).to_le_bytes()),
            Err(DecodeError::TooLarge {
                len: MAX_FRAME as u64 + 1
            })
        );
    }

    #[test]
    fn encoding_over_the_cap_is_refused() {
        let big = vec![0u8; MAX_FRAME];
        assert!(matches!(encode(&big), Err(EncodeError::TooLarge { .. })));
    }

    #[test]
    fn eof_inside_the_prefix_is_truncated_not_closed() {
        let mut r: &[u8] = &[5, 0];
        let err = read_frame::<ToWorker>(&mut r).unwrap_err();
        assert!(matches!(
            err,
            ReadError::Decode(DecodeError::Truncated { needed: 4, got: 2 })
        ));
    }

    #[test]
    fn eof_inside_the_body_is_truncated() {
        let frame = encode(&FromWorker::Guest(GuestEvent::TripleFault {
            eip: 0x1234_5678,
        }))
        .unwrap();
        let mut r = &frame[..frame.len() - 1];
        let err = read_frame::<FromWorker>(&mut r).unwrap_err();
        assert!(
            matches!(err, ReadError::Decode(DecodeError::Truncated { .. })),
            "{err:?}"
        );
        assert!(matches!(
            decode::<FromWorker>(&frame[..frame.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn bytes_after_the_frame_or_message_are_refused() {
        let mut frame = encode(&ToWorker::Start).unwrap();
        frame.push(0);
        assert_eq!(
            decode::<ToWorker>(&frame),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
        // A body with a complete message and then more.
        assert_eq!(
            decode_body::<ToWorker>(&[0, 0]),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn garbage_body_is_a_postcard_error() {
        let mut frame = 1u32.to_le_bytes().to_vec();
        frame.push(0xFF);
        assert!(matches!(
            decode::<ToWorker>(&frame),
            Err(DecodeError::Postcard(_))
        ));
    }

    #[test]
    fn bad_magic_is_refused() {
        let hello = Hello {
            magic: *b"NOTBULKH",
            version: PROTOCOL_VERSION,
        };
        assert_eq!(
            check_hello(&hello),
            Err(HelloError::BadMagic {
                found: *b"NOTBULKH"
            })
        );
        let wire = encode(&hello).unwrap();
        assert!(matches!(
            read_hello(&mut wire.as_slice()),
            Err(ReadError::Hello(HelloError::BadMagic { .. }))
        ));
    }

    #[test]
    fn version_mismatch_is_refused() {
        let hello = Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION + 1,
        };
        assert_eq!(
            check_hello(&hello),
            Err(HelloError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            })
        );
    }

    #[test]
    fn decoder_reassembles_frames_split_anywhere() {
        let msgs = crate::fuzzing::sample_from_worker();
        let wire: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in &wire {
            dec.push(std::slice::from_ref(byte));
            while let Some(m) = dec.next_message::<FromWorker>() {
                got.push(m.unwrap());
            }
        }
        assert_eq!(got, msgs);
        assert!(dec.is_at_boundary());
    }

    #[test]
    fn decoder_refuses_oversized_length_without_buffering_the_body() {
        let mut dec = FrameDecoder::new();
        dec.push(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(matches!(
            dec.next_frame(),
            Some(Err(DecodeError::TooLarge { .. }))
        ));
        dec.push(&[0; 1024]);
        assert_eq!(dec.buffered(), 0);
        // It stays failed: framing is lost.
        assert!(matches!(
            dec.next_frame(),
            Some(Err(DecodeError::TooLarge { .. }))
        ));
    }

    #[test]
    fn decoder_waits_for_a_partial_frame() {
        let frame = encode(&ToWorker::QueryStats).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&frame[..2]);
        assert!(dec.next_frame().is_none());
        assert!(!dec.is_at_boundary());
        dec.push(&frame[2..]);
        assert_eq!(
            dec.next_message::<ToWorker>(),
            Some(Ok(ToWorker::QueryStats))
        );
        assert!(dec.next_frame().is_none());
    }
}
