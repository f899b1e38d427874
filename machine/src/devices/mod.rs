//! PC devices, one chip per file. Device logic is pure and register-level:
//! `read(offset)` / `write(offset, value)` plus narrow injected effects (an
//! [`IrqLine`], an output `Write`, a [`Clock`]). The platform maps devices
//! into the port and MMIO buses; no device knows about the CPU, threads or IPC.

mod i8042;
mod ide;
mod lapic;
mod pci;
mod piix;
mod ps2;

pub use i8042::{I8042, I8042Effects, I8042State, SystemControlA};
pub(crate) use ide::Drive;
pub use ide::{
    Chs, DmaMemory, DmaMode, DriveConfig, DriveKind, IDE_DEVFN, IDETIM, PRIMARY_BASE,
    PRIMARY_CONTROL, Piix3Ide, SECONDARY_BASE, SECONDARY_CONTROL,
};
pub use lapic::{
    Ack, BUS_HZ as LAPIC_BUS_HZ, DEFAULT_BASE as LAPIC_DEFAULT_BASE, InterruptKind, Lapic,
    LapicState, MMIO_SIZE as LAPIC_MMIO_SIZE, lvt as lapic_lvt, regs as lapic_regs,
};
pub use pci::{Bar, ConfigSpace, HostEffect, PciDevices, PciFunction, PciHost, reg as pci_reg};
pub use piix::{
    HOST_BRIDGE_DEVFN, I440fx, ISA_DEVFN, PM_DEVFN, PM_TIMER_HZ, Piix, Piix3Isa, Piix4Pm,
    Piix4PmState, PmEffect, pm1, pmio,
};
pub use ps2::{
    Key, Ps2Keyboard, Ps2KeyboardState, Ps2Mouse, Ps2MouseState, buttons as mouse_buttons,
};

use std::time::Duration;

mod cmos;
mod pic8259;
mod pit8254;
mod uart16550;

pub use cmos::{Cmos, CmosState};
pub use pic8259::{ChipState as PicChipState, InitStep as PicInitStep, PicPair, PicState};
pub use pit8254::{PIT_HZ, Pit8254, PitChannelState, PitState};
pub use uart16550::{Uart16550, UartState};

/// An interrupt request line driven by a device.
pub trait IrqLine {
    /// Drives the line to `level` (true = asserted).
    fn set_level(&mut self, level: bool);

    /// An edge: assert then deassert (for edge-triggered ISA sources).
    fn pulse(&mut self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// Time as a device sees it: monotonic, from an arbitrary origin.
pub trait Clock {
    fn now(&self) -> Duration;
}

/// The host's monotonic clock.
#[derive(Clone, Debug)]
pub struct HostClock {
    origin: std::time::Instant,
}

impl Default for HostClock {
    fn default() -> Self {
        Self {
            origin: std::time::Instant::now(),
        }
    }
}

impl Clock for HostClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Test doubles shared by the device tests.

    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    /// A clock that moves only when the test says so.
    #[derive(Clone, Default)]
    pub struct FakeClock(pub Rc<Cell<Duration>>);

    impl FakeClock {
        pub fn advance(&self, d: Duration) {
            self.0.set(self.0.get() + d);
        }
    }

    impl super::Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0.get()
        }
    }

    /// An IRQ line that remembers its level and counts rising edges.
    #[derive(Clone, Default)]
    pub struct RecordingIrq {
        pub level: Rc<Cell<bool>>,
        pub rising_edges: Rc<Cell<u32>>,
    }

    impl super::IrqLine for RecordingIrq {
        fn set_level(&mut self, level: bool) {
            if level && !self.level.get() {
                self.rising_edges.set(self.rising_edges.get() + 1);
            }
            self.level.set(level);
        }
    }
}
