//! COM1 output of a booting guest, shared between the vCPU thread (which
//! writes it) and the test (which waits for text in it).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// COM1 output, shared with the test thread.
#[derive(Clone)]
pub struct Serial {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Names the file the whole output goes to when a wait times out.
    test: &'static str,
}

impl Write for Serial {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Serial {
    pub fn new(test: &'static str) -> Serial {
        Serial {
            bytes: Arc::default(),
            test,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    /// Waits until `needle` appears after byte `from`; returns the text
    /// after `from` up to the end of the needle's line, and where that ends.
    pub fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> (String, usize) {
        let start = Instant::now();
        loop {
            let text = self.text();
            let tail = text.get(from..).unwrap_or("");
            if let Some(at) = tail.find(needle) {
                let line_end = tail[at..].find('\n').map_or(tail.len(), |e| at + e);
                return (tail[..line_end].to_string(), from + line_end);
            }
            if start.elapsed() > timeout {
                let dump = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("{}-serial.txt", self.test));
                let _ = std::fs::write(&dump, &text);
                panic!(
                    "no {needle:?} on the serial console within {timeout:?}; whole output in {}; it ends:\n{}",
                    dump.display(),
                    &text[text.floor_char_boundary(text.len().saturating_sub(3000))..]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
