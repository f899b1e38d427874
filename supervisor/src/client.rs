//! The client side of the API (blocking; the CLI and tests use it).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::api::{self, ApiError, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the daemon at {path} (is `bulkhead serve` running? set --socket or BULKHEAD_SOCKET)"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the daemon: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Api(ApiError),
    #[error("the daemon sent a reply this client does not understand: {0}")]
    BadReply(String),
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends a raw line (tests use this for malformed requests) and reads
    /// one reply line as JSON.
    pub fn raw(&mut self, line: &[u8]) -> Result<serde_json::Value, ClientError> {
        self.writer.write_all(line)?;
        self.read_reply()
    }

    /// One JSON reply line.
    pub fn read_reply(&mut self) -> Result<serde_json::Value, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&line).map_err(|e| ClientError::BadReply(format!("{e}: {line}")))
    }

    /// Sends `req`; the reply's fields on success, the API error otherwise.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        let reply = self.raw(api::request_line(req).as_bytes())?;
        if reply["ok"] == serde_json::Value::Bool(true) {
            return Ok(reply);
        }
        let error: ApiError = serde_json::from_value(reply["error"].clone())
            .map_err(|e| ClientError::BadReply(format!("{e}: {reply}")))?;
        Err(ClientError::Api(error))
    }

    /// The connection's halves, after a request that switched it to
    /// streaming (`vm.console`, `vm.logs` with `follow`).
    pub fn into_parts(self) -> (BufReader<UnixStream>, UnixStream) {
        (self.reader, self.writer)
    }
}
