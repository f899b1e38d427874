//! Frames to the supervisor: one writer under a lock (every thread sends
//! whole frames through it, so frames never interleave), and log lines
//! behind a rate limiter.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{FromWorker, LogLevel, LogLine, LogText};

/// The worker → supervisor half of the control socket.
#[derive(Clone)]
pub struct Outbox {
    stream: Arc<Mutex<UnixStream>>,
    limiter: Arc<Mutex<Limiter>>,
}

impl Outbox {
    pub fn new(stream: UnixStream) -> Outbox {
        Outbox {
            stream: Arc::new(Mutex::new(stream)),
            limiter: Arc::new(Mutex::new(Limiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW))),
        }
    }

    /// Sends one frame. A write error means the supervisor is gone: the
    /// control thread sees the same as end-of-stream and ends the worker,
    /// so the error is dropped here.
    pub fn send(&self, msg: &FromWorker) {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        let _ = protocol::write_frame(&mut *stream, msg);
    }

    /// Sends a log line unless the limiter says this second is used up;
    /// the next line sent carries the count of the ones dropped.
    pub fn log(&self, level: LogLevel, text: &str) {
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now());
        if let Some(dropped) = verdict {
            self.send(&FromWorker::Log(LogLine {
                level,
                text: LogText::truncated(text),
                dropped,
            }));
        }
    }
}

/// Log lines the worker sends per window, at most.
pub const LOG_LINES_PER_WINDOW: u32 = 20;
pub const LOG_WINDOW: Duration = Duration::from_secs(1);

/// A fixed-window counter: `max` lines per window, the rest dropped and
/// counted.
#[derive(Debug)]
pub struct Limiter {
    max: u32,
    window: Duration,
    start: Option<Instant>,
    sent: u32,
    dropped: u32,
}

impl Limiter {
    pub fn new(max: u32, window: Duration) -> Limiter {
        Limiter {
            max,
            window,
            start: None,
            sent: 0,
            dropped: 0,
        }
    }

    /// `Some(lines dropped since the last admitted one)` if a line may go
    /// out at `now`, `None` if it is dropped.
    pub fn admit(&mut self, now: Instant) -> Option<u32> {
        let expired = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if expired {
            self.start = Some(now);
            self.sent = 0;
        }
        if self.sent < self.max {
            self.sent += 1;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped = self.dropped.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_drops_past_the_limit_and_reports_the_count_next_window() {
        let mut l = Limiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(0));
    }
}
