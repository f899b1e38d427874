//! The CPU's view of everything that is not RAM or ROM: I/O ports, MMIO
//! regions and the interrupt-acknowledge cycle, plus the shared signal word
//! through which devices (and other threads) get the CPU's attention.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Width of an I/O port or MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoSize {
    Byte = 1,
    Word = 2,
    Dword = 4,
}

impl IoSize {
    /// All-ones for this width: what an unmapped port or address reads as.
    pub fn ones(self) -> u32 {
        match self {
            IoSize::Byte => 0xFF,
            IoSize::Word => 0xFFFF,
            IoSize::Dword => 0xFFFF_FFFF,
        }
    }

    pub(crate) fn from_bytes(n: u32) -> IoSize {
        match n {
            1 => IoSize::Byte,
            2 => IoSize::Word,
            _ => IoSize::Dword,
        }
    }
}

/// Port I/O, MMIO and interrupt acknowledge, as the CPU sees them.
///
/// Every method has a default that behaves like an empty ISA bus: reads
/// float high, writes are dropped, no interrupt controller answers.
pub trait Bus {
    /// IN from `port`.
    fn port_read(&mut self, port: u16, size: IoSize) -> u32 {
        let _ = port;
        size.ones()
    }
    /// OUT to `port`.
    fn port_write(&mut self, port: u16, size: IoSize, value: u32) {
        let _ = (port, size, value);
    }
    /// A read of a physical address that is neither RAM nor ROM.
    fn mmio_read(&mut self, addr: u32, size: IoSize) -> u32 {
        let _ = addr;
        size.ones()
    }
    /// A write to a physical address that is neither RAM nor ROM.
    fn mmio_write(&mut self, addr: u32, size: IoSize, value: u32) {
        let _ = (addr, size, value);
    }
    /// The INTA cycle: the CPU accepted the INTR line; the interrupt
    /// controller names the vector. `None` when nothing claims it (the CPU
    /// then drops the request).
    fn interrupt_ack(&mut self) -> Option<u8> {
        None
    }
}

/// A bus with nothing on it.
#[derive(Debug, Default)]
pub struct NullBus;

impl Bus for NullBus {}

/// The CPU's input lines, shared with devices and with other threads.
///
/// The CPU looks at this word once per decoded block; only a non-zero value
/// sends it down the slow path, so an idle line costs one relaxed load.
#[derive(Clone, Debug, Default)]
pub struct Signals(Arc<AtomicU32>);

impl Signals {
    /// INTR: level-triggered maskable interrupt request (the PIC's output).
    pub const INTR: u32 = 1 << 0;
    /// NMI: edge-triggered, cleared when the CPU takes it.
    pub const NMI: u32 = 1 << 1;
    /// Stop: return from `run` at the next instruction boundary (pause,
    /// timer service, shutdown requests from another thread).
    pub const STOP: u32 = 1 << 2;
    /// Reset: the platform asks for a CPU reset (keyboard controller, port 0x92, 0xCF9).
    pub const RESET: u32 = 1 << 3;
    /// The A20 gate changed; the CPU re-reads [`Signals::A20_MASKED`].
    pub const A20_CHANGED: u32 = 1 << 4;
    /// Level: A20 is gated off (physical address bit 20 forced to 0).
    /// Only looked at when `A20_CHANGED` is raised.
    pub const A20_MASKED: u32 = 1 << 5;

    pub fn new() -> Self {
        Self::default()
    }
    pub fn raise(&self, bits: u32) {
        self.0.fetch_or(bits, Ordering::AcqRel);
    }
    pub fn lower(&self, bits: u32) {
        self.0.fetch_and(!bits, Ordering::AcqRel);
    }
    /// Sets or clears the INTR level.
    pub fn set_intr(&self, level: bool) {
        if level {
            self.raise(Self::INTR)
        } else {
            self.lower(Self::INTR)
        }
    }
    /// The signal word, with the A20 level (not an attention bit) masked out.
    #[inline(always)]
    pub fn load(&self) -> u32 {
        self.0.load(Ordering::Relaxed) & !Self::A20_MASKED
    }

    /// Gates A20 on or off and tells the CPU.
    pub fn set_a20(&self, enabled: bool) {
        if enabled {
            self.lower(Self::A20_MASKED)
        } else {
            self.raise(Self::A20_MASKED)
        }
        self.raise(Self::A20_CHANGED);
    }

    /// Whether A20 is currently gated on.
    pub fn a20(&self) -> bool {
        self.0.load(Ordering::Relaxed) & Self::A20_MASKED == 0
    }
    /// Clears `bits` and returns which of them were set.
    pub fn take(&self, bits: u32) -> u32 {
        self.0.fetch_and(!bits, Ordering::AcqRel) & bits
    }
}
