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
