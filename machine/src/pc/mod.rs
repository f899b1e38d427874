//! The PC: CPU, memory and board put together, booted directly (Linux
//! bzImage or Multiboot kernel) or from firmware, and run in slices between
//! which timers are polled and host input (serial bytes, the power button,
//! stop requests) is fed in. While the guest is halted the calling thread
//! blocks until the next timer deadline or host input: an idle VM costs no
//! CPU.

mod board;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

pub use crate::devices::{DriveConfig, DriveKind};
use board::{Board, BoardBus, BoardConfig, PcClock};
pub use board::{DEBUG_EXIT_PORT, IDE_BM_BASE, SerialOut};

use crate::acpi;
use crate::block::{IoThread, IoWaker};
use crate::boot::{self, BootError, linux, multiboot};
use crate::bus::Signals;
use crate::cpu::{Cpu, RunExit, ShutdownReason, TscSource};
use crate::devices::{Clock, DmaMemory, Drive, HostClock};
use crate::memory::{MemoryError, PhysMemory};

/// Guest-physical base of the linear framebuffer (where QEMU's stdvga puts its LFB).
pub const FRAMEBUFFER_BASE: u32 = 0xFD00_0000;
/// The TSC's nominal rate.
pub const TSC_HZ: u64 = 1_000_000_000;
/// Instructions per slice between timer polls.
const SLICE: u64 = 200_000;
/// Keyboard bytes or pointer events a [`PcHandle`] queues at most.
pub const MAX_QUEUED_INPUT: usize = 4096;

/// What the machine starts.
pub enum Firmware {
    /// A bzImage booted through the Linux boot protocol.
    Linux {
        kernel: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: String,
    },
    /// A Multiboot v1 kernel with modules (bytes, command line).
    Multiboot {
        kernel: Vec<u8>,
        cmdline: String,
        modules: Vec<(Vec<u8>, String)>,
    },
    /// A BIOS image mapped below 4 GiB (its last 128 KiB also below 1 MiB),
    /// entered at the reset vector.
    Bios { image: Vec<u8> },
}

/// Where the framebuffer's pixels live.
pub enum FramebufferMemory {
    /// Memory private to this process.
    Private,
    /// `fd` (a memfd) from `offset`: guest stores land in it with no copy.
    Shared { fd: OwnedFd, offset: u64 },
}

/// A 32 bpp x8r8g8b8 linear framebuffer.
pub struct FramebufferConfig {
    pub width: u16,
    pub height: u16,
    pub memory: FramebufferMemory,
}

impl FramebufferConfig {
    pub fn stride(&self) -> u32 {
        self.width as u32 * 4
    }
    /// Bytes of guest-physical space it takes (page-rounded).
    pub fn size(&self) -> u32 {
        (self.stride() * self.height as u32).next_multiple_of(4096)
    }
}

pub struct PcConfig {
    pub ram_mib: u32,
    pub firmware: Firmware,
    pub framebuffer: Option<FramebufferConfig>,
    /// COM1 and COM2 output.
    pub serial: [SerialOut; 2],
    /// Where bytes written to ports 0xE9/0x402 go.
    pub debug_console: Option<Box<dyn std::io::Write>>,
    /// Enable the debug-exit port ([`DEBUG_EXIT_PORT`]).
    pub debug_exit: bool,
    /// The time source; the host's monotonic clock when `None`.
    pub clock: Option<Rc<dyn Clock>>,
    /// Extra port devices of the embedder: called with (port, value) for
    /// every port write that no board device decodes.
    pub port_hook: Option<PortHook>,
    /// IDE drives (PIIX3 IDE, channel 0 = primary, 1 = secondary). Each
    /// gets an I/O thread (`bulkhead-ide<channel>.<0|1>`) that owns its
    /// backend; dropping the [`Pc`] joins them.
    pub drives: Vec<DriveConfig>,
}

/// See [`PcConfig::port_hook`].
pub type PortHook = Box<dyn FnMut(u16, u32)>;

#[derive(Debug, Error)]
pub enum PcError {
    #[error("guest RAM of {0} MiB is out of range (1..={max} MiB)", max = crate::MAX_RAM >> 20)]
    BadRam(u32),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("the BIOS image is {0} bytes: it must be a multiple of 64 KiB, at most 16 MiB")]
    BadBios(usize),
    #[error("IDE channel {0} does not exist (0 is primary, 1 secondary)")]
    BadIdeChannel(u8),
    #[error("IDE channel {channel} {} has two drives", if *.slave { "slave" } else { "master" })]
    DriveSlotTaken { channel: u8, slave: bool },
    #[error(
        "the {kind:?} image on IDE channel {channel} is {size} bytes: it must be a non-zero multiple of {sector}"
    )]
    BadDriveSize {
        channel: u8,
        kind: DriveKind,
        size: u64,
        sector: u64,
    },
    #[error("cannot start the I/O thread of IDE channel {channel}: {source}")]
    IoThread { channel: u8, source: std::io::Error },
}

/// Why [`Pc::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcExit {
    /// The guest powered off through ACPI (S5).
    PowerOff,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// The CPU triple-faulted (the machine is stopped; `reset` restarts it).
    TripleFault,
    /// HLT with interrupts disabled and nothing that could wake it.
    HaltedForever,
    /// The instruction limit given to `run` was reached.
    InstructionLimit,
    /// A [`PcHandle::stop`] request.
    Stopped,
}

/// Host input queued for the vCPU thread.
#[derive(Default)]
struct Inbox {
    serial: [VecDeque<u8>; 2],
    /// Key sequences (scancode set 2) for the keyboard, one per key event.
    keys: VecDeque<Vec<u8>>,
    /// Pointer events: (dx, dy, dz, buttons).
    pointer: VecDeque<(i32, i32, i32, u8)>,
    power_button: bool,
    reset: bool,
    stop: bool,
    /// A disk I/O thread finished a request.
    io_done: bool,
}

impl Inbox {
    fn pending(&self) -> bool {
        self.stop
            || self.io_done
            || self.power_button
            || self.reset
            || self.serial.iter().any(|q| !q.is_empty())
            || !self.keys.is_empty()
            || !self.pointer.is_empty()
    }
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    signals: Signals,
}

/// A handle other threads use to reach a running [`Pc`].
#[derive(Clone)]
pub struct PcHandle(Arc<Shared>);

impl PcHandle {
    fn post(&self, f: impl FnOnce(&mut Inbox)) {
        let mut inbox = self.0.inbox.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inbox);
        drop(inbox);
        self.0.wake.notify_all();
        // Make a running CPU return to the platform loop promptly.
        self.0.signals.raise(Signals::STOP);
    }
    /// Makes `run` return `PcExit::Stopped` at the next instruction boundary.
    pub fn stop(&self) {
        self.post(|i| i.stop = true);
    }
    /// Presses the ACPI power button.
    pub fn power_button(&self) {
        self.post(|i| i.power_button = true);
    }
    /// Resets the machine (as the reset button would).
    pub fn reset(&self) {
        self.post(|i| i.reset = true);
    }
    /// Queues bytes for COM1 (`port` 0) or COM2 (1); they enter the UART
    /// as its receive FIFO drains.
    pub fn serial_input(&self, port: usize, bytes: &[u8]) {
        self.post(|i| i.serial[port.min(1)].extend(bytes));
    }
    /// Queues one key's scancode set 2 make or break sequence for the PS/2
    /// keyboard. Events beyond [`MAX_QUEUED_INPUT`] queued ones are dropped,
    /// as a real keyboard drops keys when its buffer is full.
    pub fn key_set2(&self, bytes: &[u8]) {
        self.post(|i| {
            if i.keys.len() < MAX_QUEUED_INPUT {
                i.keys.push_back(bytes.to_vec());
            }
        });
    }
    /// Queues relative PS/2 mouse motion (`dy` positive is up) and the
    /// button state (bit 0 left, 1 right, 2 middle).
    pub fn pointer(&self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        self.post(|i| {
            if i.pointer.len() < MAX_QUEUED_INPUT {
                i.pointer.push_back((dx, dy, dz, buttons));
            }
        });
    }
    /// Bytes still queued for a serial port.
    pub fn serial_backlog(&self, port: usize) -> usize {
        let inbox = self.0.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.serial[port.min(1)].len()
    }
}

/// Guest memory as the IDE bus master reaches it: through the CPU's
/// physical write path, so cached code on written pages is dropped. MMIO is
/// not a DMA target here (reads float, writes are dropped): the board is
/// borrowed while DMA runs.
struct CpuDma<'a>(&'a mut Cpu);

impl DmaMemory for CpuDma<'_> {
    fn read(&mut self, addr: u32, buf: &mut [u8]) {
        self.0.dma_read(addr, buf);
    }
    fn write(&mut self, addr: u32, data: &[u8]) {
        self.0.dma_write(addr, data);
    }
}

/// Checks the drive slots and sizes and starts each drive's I/O thread.
fn start_drives(
    drives: Vec<DriveConfig>,
    waker: &IoWaker,
) -> Result<Vec<(usize, bool, Drive)>, PcError> {
    let mut taken = [[false; 2]; 2];
    let mut out = Vec::new();
    for d in drives {
        let ch = d.channel;
        if ch > 1 {
            return Err(PcError::BadIdeChannel(ch));
        }
        let slot = &mut taken[usize::from(ch)][usize::from(d.slave)];
        if std::mem::replace(slot, true) {
            return Err(PcError::DriveSlotTaken {
                channel: ch,
                slave: d.slave,
            });
        }
        let sector = match d.kind {
            DriveKind::Disk => 512,
            DriveKind::Cdrom => 2048,
        };
        let size = d.backend.size();
        if size == 0 || !size.is_multiple_of(sector) {
            return Err(PcError::BadDriveSize {
                channel: ch,
                kind: d.kind,
                size,
                sector,
            });
        }
        let name = format!("ide{ch}.{}", u8::from(d.slave));
        let io = IoThread::spawn(d.backend, format!("bulkhead-{name}"), waker.clone()).map_err(
            |source| PcError::IoThread {
                channel: ch,
                source,
            },
        )?;
        let drive = Drive::new(d.kind, io, name, &d.model, &d.serial, d.slave);
        out.push((usize::from(ch), d.slave, drive));
    }
    Ok(out)
}

/// A PC.
pub struct Pc {
    cpu: Cpu,
    board: Rc<RefCell<Board>>,
    shared: Arc<Shared>,
    firmware: Firmware,
    framebuffer: Option<(u32, u32)>,
}

impl Pc {
    pub fn new(config: PcConfig) -> Result<Pc, PcError> {
        if config.ram_mib == 0 || config.ram_mib as u64 > crate::MAX_RAM >> 20 {
            return Err(PcError::BadRam(config.ram_mib));
        }
        let ram = (config.ram_mib as u64) << 20;
        let mut mem = PhysMemory::new(ram)?;
        let framebuffer = match config.framebuffer {
            Some(fb) => {
                let size = fb.size();
                match fb.memory {
                    FramebufferMemory::Private => {
                        mem.add_buffer(FRAMEBUFFER_BASE, size as u64)?;
                    }
                    FramebufferMemory::Shared { fd, offset } => {
                        mem.add_shared_buffer(FRAMEBUFFER_BASE, size as u64, fd.as_fd(), offset)?;
                    }
                }
                Some((fb.width, fb.height, size))
            }
            None => None,
        };
        if let Firmware::Bios { image } = &config.firmware {
            let len = image.len();
            if len == 0 || !len.is_multiple_of(0x1_0000) || len > 16 << 20 {
                return Err(PcError::BadBios(len));
            }
            let base = (0x1_0000_0000u64 - len as u64) as u32;
            mem.add_rom(base, image)?;
            let low = len.min(0x2_0000) as u32;
            mem.alias_rom(base, 0x10_0000 - low, low)?;
            // Only the alias's window matters: it maps the image's start,
            // so for images over 128 KiB map the tail instead.
        }
        let clock: Rc<dyn Clock> = config
            .clock
            .unwrap_or_else(|| Rc::new(HostClock::default()));
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let unix_time_at_origin = unix_now.saturating_sub(clock.now());
        let signals = Signals::new();
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            signals: signals.clone(),
        });
        // I/O threads report completions like host input: a flag in the
        // inbox (for the halted wait) and STOP (for a running CPU).
        let waker: IoWaker = {
            let shared = Arc::downgrade(&shared);
            Arc::new(move || {
                if let Some(s) = shared.upgrade() {
                    PcHandle(s).post(|i| i.io_done = true);
                }
            })
        };
        let drives = start_drives(config.drives, &waker)?;
        let board = Rc::new(RefCell::new(Board::new(
            BoardConfig {
                ram_bytes: ram,
                serial: config.serial,
                debug_console: config.debug_console,
                debug_exit: config.debug_exit,
                unix_time_at_origin,
                port_hook: config.port_hook,
                drives,
            },
            PcClock(clock),
            signals.clone(),
        )));
        let mut cpu = Cpu::new(mem, Box::new(BoardBus(board.clone())));
        cpu.set_signals(signals.clone());
        cpu.set_apic_present(true);
        // The TSC follows host time (at a nominal 1 GHz), so the guest's
        // calibration against the PIT holds whatever the emulation speed.
        cpu.set_tsc_source(TscSource::HostClock { hz: TSC_HZ });
        let mut pc = Pc {
            cpu,
            board,
            shared,
            firmware: config.firmware,
            framebuffer: framebuffer.map(|(w, h, size)| (w as u32 | (h as u32) << 16, size)),
        };
        pc.boot()?;
        Ok(pc)
    }

    /// Loads the firmware or kernel and sets the CPU at its entry.
    fn boot(&mut self) -> Result<(), PcError> {
        let ram = self.cpu.mem.ram_size();
        let acpi_base = ram - acpi::TABLES_SIZE;
        let tables = acpi::build(acpi_base);
        let e820 = boot::e820_map(ram, acpi::TABLES_SIZE);
        match &self.firmware {
            Firmware::Bios { .. } => {
                self.cpu.reset();
                return Ok(());
            }
            Firmware::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                self.cpu.write_phys_bytes(acpi_base, &tables.bytes);
                self.cpu
                    .write_phys_bytes(boot::layout::RSDP_LOW, &tables.rsdp_bytes);
                let fb = self.framebuffer.map(|(wh, size)| linux::LinearFramebuffer {
                    base: FRAMEBUFFER_BASE,
                    width: wh as u16,
                    height: (wh >> 16) as u16,
                    stride: (wh as u16 as u32 * 4) as u16,
                    size,
                });
                linux::load_linux(
                    &mut self.cpu,
                    &linux::LinuxBoot {
                        kernel,
                        initrd: initrd.as_deref(),
                        cmdline,
                        e820: &e820,
                        framebuffer: fb,
                        acpi_rsdp: Some(tables.rsdp),
                        ram_top: acpi_base,
                    },
                )?;
            }
            Firmware::Multiboot {
                kernel,
                cmdline,
                modules,
            } => {
                self.cpu.write_phys_bytes(acpi_base, &tables.bytes);
                self.cpu
                    .write_phys_bytes(boot::layout::RSDP_LOW, &tables.rsdp_bytes);
                let mods: Vec<multiboot::Module> = modules
                    .iter()
                    .map(|(bytes, cmdline)| multiboot::Module { bytes, cmdline })
                    .collect();
                multiboot::load_multiboot(
                    &mut self.cpu,
                    &multiboot::MultibootBoot {
                        kernel,
                        cmdline,
                        modules: &mods,
                        e820: &e820,
                        ram_top: acpi_base,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// A handle for other threads (stop, power button, serial input).
    pub fn handle(&self) -> PcHandle {
        PcHandle(self.shared.clone())
    }

    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }
    pub fn cpu_mut(&mut self) -> &mut Cpu {
        &mut self.cpu
    }

    /// The framebuffer's pixels: (width, height, stride, bytes).
    pub fn framebuffer(&self) -> Option<(u32, u32, u32, &[u8])> {
        let (wh, size) = self.framebuffer?;
        let (w, h) = (wh & 0xFFFF, wh >> 16);
        let bytes = self.cpu.mem.bytes(FRAMEBUFFER_BASE, size)?;
        Some((w, h, w * 4, bytes))
    }

    /// The last POST code the guest wrote to port 0x80.
    pub fn post_code(&self) -> u8 {
        self.board.borrow().post_code
    }

    /// A multi-line description of the CPU and interrupt state, for
    /// diagnosing a guest that stopped making progress.
    pub fn debug_state(&self) -> String {
        let b = self.board.borrow();
        let now = b.clock.now();
        format!(
            "cpu: eip {:08x} eflags {:08x} cpl {} halted {} icount {}\n\
             signals {:#x} now {:?} next deadline {:?}\n\
             pic: {:?}\nlapic: {:?}\npit: {:?}",
            self.cpu.eip(),
            self.cpu.eflags(),
            self.cpu.cpl(),
            self.cpu.is_halted(),
            self.cpu.instruction_count(),
            self.shared.signals.load(),
            now,
            b.next_deadline(),
            b.pic.state(),
            b.lapic.state(),
            b.pit.state(),
        )
    }

    /// Resets CPU and devices and boots again.
    pub fn reset(&mut self) -> Result<(), PcError> {
        self.board.borrow_mut().reset();
        self.boot()
    }

    /// Runs the machine until something ends the run, or `limit`
    /// instructions (if given) have retired.
    pub fn run(&mut self, limit: Option<u64>) -> PcExit {
        let end = limit.map(|l| self.cpu.instruction_count().saturating_add(l));
        loop {
            if let Some(exit) = self.take_requests() {
                return exit;
            }
            if let Some(exit) = self.service_inbox() {
                return exit;
            }
            self.board
                .borrow_mut()
                .service_io(&mut CpuDma(&mut self.cpu));
            let budget = match end {
                Some(end) => {
                    let left = end.saturating_sub(self.cpu.instruction_count());
                    if left == 0 {
                        return PcExit::InstructionLimit;
                    }
                    left.min(SLICE)
                }
                None => SLICE,
            };
            let exit = self.cpu.run(budget);
            {
                let mut b = self.board.borrow_mut();
                // IA32_APIC_BASE.EN (bit 11) gates the local APIC.
                b.lapic
                    .set_enabled_by_msr(self.cpu.apic_base() & (1 << 11) != 0);
                b.poll();
            }
            match exit {
                RunExit::BudgetExhausted | RunExit::Stopped => {}
                RunExit::Reset => {
                    // The platform's reset line: devices too, and boot again
                    // (for direct boot the kernel is loaded afresh, as QEMU does).
                    if let Err(e) = self.reset() {
                        tracing::error!(target: "bulkhead::pc", "reboot failed: {e}");
                        return PcExit::HaltedForever;
                    }
                }
                RunExit::Shutdown(ShutdownReason::TripleFault) => return PcExit::TripleFault,
                RunExit::Halted => self.wait_for_event(),
                RunExit::HaltedInterruptsDisabled => {
                    // Only NMI or reset can wake the CPU; nothing here raises NMI by itself.
                    if !self.inbox_pending() {
                        return PcExit::HaltedForever;
                    }
                }
            }
        }
    }

    fn take_requests(&mut self) -> Option<PcExit> {
        let mut b = self.board.borrow_mut();
        let r = std::mem::take(&mut b.requests);
        if let Some(v) = r.debug_exit {
            return Some(PcExit::DebugExit(v));
        }
        r.power_off.then_some(PcExit::PowerOff)
    }

    fn inbox_pending(&self) -> bool {
        let i = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        i.pending()
    }

    /// Moves queued host input into the devices.
    fn service_inbox(&mut self) -> Option<PcExit> {
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut inbox.stop) {
            self.shared.signals.take(Signals::STOP);
            return Some(PcExit::Stopped);
        }
        // Completions are picked up by `service_io` right after this.
        inbox.io_done = false;
        let reset = std::mem::take(&mut inbox.reset);
        let mut b = self.board.borrow_mut();
        if std::mem::take(&mut inbox.power_button) {
            b.piix.pm.press_power_button();
        }
        for (port, queue) in inbox.serial.iter_mut().enumerate() {
            if !queue.is_empty() {
                let (front, _) = queue.as_slices();
                let taken = b.com[port].receive(front);
                queue.drain(..taken);
            }
        }
        for key in inbox.keys.drain(..) {
            // The keyboard's own buffer drops what does not fit.
            b.i8042.key_event_set2(&key);
        }
        for (dx, dy, dz, buttons) in inbox.pointer.drain(..) {
            b.i8042.mouse_event(dx, dy, dz, buttons);
        }
        b.sync_irqs();
        drop(b);
        drop(inbox);
        if reset {
            self.shared.signals.raise(Signals::RESET);
        }
        None
    }

    /// Blocks while the guest is halted: until the next device deadline or
    /// host input.
    fn wait_for_event(&mut self) {
        let b = self.board.borrow();
        let now = b.clock.now();
        let deadline = b.next_deadline();
        drop(b);
        let inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let pending = Inbox::pending;
        if pending(&inbox) || self.shared.signals.load() & Signals::INTR != 0 {
            return;
        }
        let timeout = match deadline {
            Some(d) => d.saturating_sub(now),
            // Nothing is scheduled: wait for host input (re-checking now and then).
            None => Duration::from_millis(100),
        };
        if timeout.is_zero() {
            return;
        }
        let _ = self
            .shared
            .wake
            .wait_timeout_while(inbox, timeout, |i| !pending(i))
            .unwrap_or_else(|e| e.into_inner());
    }
}
