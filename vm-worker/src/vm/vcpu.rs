//! The vCPU thread: owns the [`Pc`] (which is `!Send`, so it is built on
//! this thread) and runs it in slices, between which it looks at the run
//! flags the control thread sets. While the guest is halted `Pc::run`
//! blocks on its own condvar; while the VM is paused, not yet started or
//! stopped by the guest, this thread blocks on [`RunFlags`]' condvar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use machine::pc::{Pc, PcConfig, PcExit, PcHandle};
use protocol::{FromWorker, GuestEvent, LogLevel, VmState, WorkerExit};

use super::outbox::Outbox;

/// Instructions per `Pc::run` call: the vCPU thread comes up for air (run
/// flags, the instruction counter for stats) at least this often while the
/// guest computes. About 10–50 ms of guest time.
const SLICE: u64 = 2_000_000;

/// What the control thread asks of the vCPU thread.
#[derive(Debug, Default)]
pub struct Flags {
    pub started: bool,
    pub paused: bool,
    pub shutdown: bool,
    pub reset: bool,
    /// Bumped on every change, so the vCPU thread wakes for each.
    generation: u64,
}

/// The run flags and the condvar the vCPU thread waits on.
#[derive(Default)]
pub struct RunFlags {
    flags: Mutex<Flags>,
    cv: Condvar,
}

impl RunFlags {
    fn lock(&self) -> MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the flags and wakes the vCPU thread.
    pub fn update(&self, f: impl FnOnce(&mut Flags)) {
        let mut flags = self.lock();
        f(&mut flags);
        flags.generation += 1;
        drop(flags);
        self.cv.notify_all();
    }
}

/// Counters the control thread reads for `QueryStats`.
#[derive(Default)]
pub struct Counters {
    pub instructions: AtomicU64,
    pub paused_ms: AtomicU64,
}

/// Everything the vCPU thread needs besides the machine's configuration.
pub struct Vcpu {
    pub flags: Arc<RunFlags>,
    pub counters: Arc<Counters>,
    pub out: Outbox,
    /// Where the built machine's handle (or why it could not be built) goes.
    pub ready: SyncSender<Result<PcHandle, String>>,
    /// Where the worker's end goes.
    pub exit: Sender<WorkerExit>,
    /// Run the guest through the CPU's JIT.
    pub jit: bool,
}

impl Vcpu {
    /// The thread body: builds the Pc from `config` and runs it.
    pub fn run(self, config: PcConfig) {
        let mut pc = match Pc::new(config) {
            Ok(pc) => pc,
            Err(e) => {
                let _ = self.ready.send(Err(e.to_string()));
                return;
            }
        };
        pc.cpu_mut().set_jit(self.jit);
        if self.ready.send(Ok(pc.handle())).is_err() {
            return;
        }
        self.main_loop(&mut pc);
    }

    fn main_loop(&self, pc: &mut Pc) {
        // Stopped by the guest (triple fault, halted forever): only Reset or
        // Shutdown move it on.
        let mut guest_stopped = false;
        let mut reported = VmState::Stopped;
        let mut seen = 0;
        loop {
            let mut flags = self.flags.lock();
            if flags.shutdown {
                return;
            }
            if std::mem::take(&mut flags.reset) {
                drop(flags);
                // Between runs, so reset directly: what the CPU's RESET
                // line does inside `Pc::run` (CPU, then devices and boot).
                pc.cpu_mut().reset();
                match pc.reset() {
                    Ok(()) => guest_stopped = false,
                    Err(e) => {
                        self.out.log(LogLevel::Error, &format!("reset failed: {e}"));
                        guest_stopped = true;
                    }
                }
                continue;
            }
            let state = if guest_stopped {
                VmState::Halted
            } else if !flags.started {
                VmState::Stopped
            } else if flags.paused {
                VmState::Paused
            } else {
                VmState::Running
            };
            if state != reported {
                drop(flags);
                reported = state;
                self.out.send(&FromWorker::State(state));
                continue;
            }
            if state != VmState::Running {
                // Wait for the control thread to change something.
                let since = Instant::now();
                let flags = self
                    .flags
                    .cv
                    .wait_while(flags, |f| f.generation == seen)
                    .unwrap_or_else(|e| e.into_inner());
                seen = flags.generation;
                drop(flags);
                if state == VmState::Paused {
                    let ms = since.elapsed().as_millis() as u64;
                    self.counters.paused_ms.fetch_add(ms, Ordering::Relaxed);
                }
                continue;
            }
            drop(flags);

            let exit = pc.run(Some(SLICE));
            self.counters
                .instructions
                .store(pc.cpu().instruction_count(), Ordering::Relaxed);
            match exit {
                PcExit::InstructionLimit | PcExit::Stopped => {}
                PcExit::PowerOff => return self.guest_ended(GuestEvent::PowerOff),
                PcExit::DebugExit(v) => return self.guest_ended(GuestEvent::DebugExit(v)),
                PcExit::TripleFault => {
                    let eip = pc.cpu().eip();
                    self.out
                        .send(&FromWorker::Guest(GuestEvent::TripleFault { eip }));
                    guest_stopped = true;
                }
                PcExit::HaltedForever => {
                    self.out.send(&FromWorker::Guest(GuestEvent::HaltedForever));
                    guest_stopped = true;
                }
            }
        }
    }

    /// The guest ended the VM (power-off, debug exit): report it and end
    /// the worker cleanly; the supervisor decides about a restart.
    fn guest_ended(&self, event: GuestEvent) {
        self.out.send(&FromWorker::Guest(event));
        let _ = self.exit.send(WorkerExit::Ok);
    }
}
