//! A VM's serial output: a size-capped log on disk (rotated once) and the
//! last 64 KiB in memory for crash forensics.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes kept in memory (and written as forensics).
pub const TAIL: usize = 64 * 1024;
/// Log size before it is rotated to `.1`.
pub const LOG_CAP: u64 = 1024 * 1024;

pub struct SerialLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    tail: VecDeque<u8>,
}

impl SerialLog {
    pub fn new(path: PathBuf) -> SerialLog {
        SerialLog {
            path,
            file: None,
            size: 0,
            tail: VecDeque::new(),
        }
    }

    /// Appends `bytes`; disk errors are reported once and otherwise
    /// ignored (a full disk must not stop the VM).
    pub fn append(&mut self, bytes: &[u8]) {
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..excess);
        if let Err(e) = self.write(bytes) {
            if self.file.is_some() {
                eprintln!("bulkhead: serial log {}: {e}", self.path.display());
            }
            self.file = None;
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size >= LOG_CAP {
            self.file = None;
            fs::rename(&self.path, rotated(&self.path))?;
            self.file = Some(File::create(&self.path)?);
            self.size = 0;
        }
        if let Some(f) = &mut self.file {
            f.write_all(bytes)?;
            self.size += bytes.len() as u64;
        }
        Ok(())
    }

    pub fn tail(&self) -> Vec<u8> {
        self.tail.iter().copied().collect()
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// The last `max` bytes of the log (rotated part first).
pub fn read_log(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_path_buf()] {
        match File::open(&p) {
            Ok(mut f) => {
                let len = f.metadata()?.len();
                f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
                f.take(max).read_to_end(&mut out)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let excess = out.len().saturating_sub(max as usize);
    out.drain(..excess);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_once_and_tail_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.log");
        let mut log = SerialLog::new(path.clone());
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            log.append(&chunk);
        }
        log.append(b"END");
        assert!(fs::metadata(&path).unwrap().len() < LOG_CAP);
        assert_eq!(fs::metadata(rotated(&path)).unwrap().len(), LOG_CAP);
        assert_eq!(log.tail().len(), TAIL);
        assert!(log.tail().ends_with(b"END"));
        let all = read_log(&path, 10).unwrap();
        assert_eq!(all, b"xxxxxxxEND");
    }
}
