//! The control thread: reads [`ToWorker`] frames from fd 3 and acts on
//! them. It never touches the machine directly: it sets run flags for the
//! vCPU thread and queues input through the [`PcHandle`].

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Instant;

use machine::pc::PcHandle;
use protocol::{FromWorker, LogLevel, ReadError, Stats, ToWorker, WorkerExit};

use super::outbox::Outbox;
use super::vcpu::{Counters, RunFlags};

pub struct Control {
    pub handle: PcHandle,
    pub flags: Arc<RunFlags>,
    pub counters: Arc<Counters>,
    /// Framebuffer frames committed.
    pub frames: Arc<AtomicU64>,
    /// Input events delivered to the guest (the presenter's hint).
    pub input: Arc<AtomicU64>,
    pub out: Outbox,
    pub exit: Sender<WorkerExit>,
    pub built: Instant,
}

/// For the MIPS figure: the previous query's time and instruction count.
struct Sample {
    at: Instant,
    instructions: u64,
}

impl Control {
    /// The thread body: serves frames until Shutdown, end of stream (the
    /// supervisor is gone: exit 0) or a frame it cannot accept (exit 66).
    pub fn run(self, mut input: UnixStream) {
        let mut last = Sample {
            at: self.built,
            instructions: 0,
        };
        let code = loop {
            match protocol::read_frame::<ToWorker>(&mut input) {
                Ok(ToWorker::Shutdown) => break WorkerExit::Ok,
                Ok(msg) => self.handle(msg, &mut last),
                Err(ReadError::Closed) => break WorkerExit::Ok,
                Err(e) => {
                    eprintln!("bulkhead-worker: control channel: {e}");
                    break WorkerExit::ProtocolError;
                }
            }
        };
        self.flags.update(|f| f.shutdown = true);
        self.handle.stop();
        let _ = self.exit.send(code);
    }

    fn handle(&self, msg: ToWorker, last: &mut Sample) {
        match msg {
            ToWorker::Start => self.flags.update(|f| f.started = true),
            ToWorker::Pause => {
                self.flags.update(|f| f.paused = true);
                self.handle.stop();
            }
            ToWorker::Resume => self.flags.update(|f| f.paused = false),
            ToWorker::Reset => {
                self.flags.update(|f| f.reset = true);
                self.handle.stop();
            }
            ToWorker::PowerButton => self.handle.power_button(),
            ToWorker::Key(k) => {
                self.input.fetch_add(1, Ordering::Relaxed);
                self.handle.key_set2(&k.key.bytes(k.pressed))
            }
            ToWorker::Pointer(p) => {
                self.input.fetch_add(1, Ordering::Relaxed);
                self.handle.pointer(p.dx, p.dy, p.dz, p.buttons)
            }
            ToWorker::SerialInput { port, bytes } => match port {
                0 | 1 => {
                    self.input.fetch_add(1, Ordering::Relaxed);
                    self.handle.serial_input(port.into(), bytes.as_bytes())
                }
                _ => self.out.log(
                    LogLevel::Warn,
                    &format!("serial input for port {port}, which this VM lacks: dropped"),
                ),
            },
            ToWorker::QueryStats => {
                let stats = self.stats(last);
                self.out.send(&FromWorker::Stats(stats));
            }
            // Handled by the loop in `run`.
            ToWorker::Shutdown => {}
        }
    }

    fn stats(&self, last: &mut Sample) -> Stats {
        let now = Instant::now();
        let instructions = self.counters.instructions.load(Ordering::Relaxed);
        let secs = now.saturating_duration_since(last.at).as_secs_f64();
        let mips = if secs > 0.0 {
            instructions.saturating_sub(last.instructions) as f64 / secs / 1e6
        } else {
            0.0
        };
        *last = Sample {
            at: now,
            instructions,
        };
        Stats {
            instructions,
            uptime_ms: now.saturating_duration_since(self.built).as_millis() as u64,
            // Not measured yet: the Pc does not report its HLT time or
            // delivered interrupts.
            halted_ms: 0,
            paused_ms: self.counters.paused_ms.load(Ordering::Relaxed),
            interrupts: 0,
            frames: self.frames.load(Ordering::Relaxed),
            mips,
        }
    }
}
