//! The PC board: the devices of the 440FX/PIIX machine, their port and MMIO
//! decoding, and the interrupt wiring from device IRQ lines through the
//! 8259 pair and the local APIC's LINT0 (virtual wire) to the CPU.
//!
//! The CPU reaches the board through [`BoardBus`]; the [`Pc`](super::Pc)
//! shares it to poll timers and feed host input between CPU slices.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use crate::acpi;
use crate::bus::{Bus, IoSize, Signals};
use crate::devices::{
    Ack, Clock, Cmos, DmaMemory, Drive, HostEffect, I440fx, I8042, I8042Effects, IrqLine, Lapic,
    PciFunction, PciHost, PicPair, Piix, Piix3Ide, Piix3Isa, Piix4Pm, Pit8254, PmEffect,
    SystemControlA, Uart16550,
};

/// Serial output as the board's UARTs write it.
pub type SerialOut = Box<dyn Write + Send>;

/// The time source every device shares.
#[derive(Clone)]
pub(crate) struct PcClock(pub Rc<dyn Clock>);

impl Clock for PcClock {
    fn now(&self) -> Duration {
        self.0.now()
    }
}

/// The sixteen ISA IRQ lines as devices drive them: a level per line and
/// the rising edges seen since the board last looked, so that a pulse
/// (assert then deassert within one device call) still reaches the PIC.
#[derive(Default)]
pub(crate) struct IrqWires {
    level: Cell<u16>,
    rose: Cell<u16>,
}

/// One ISA IRQ line.
#[derive(Clone)]
pub(crate) struct Wire {
    line: u8,
    wires: Rc<IrqWires>,
}

impl IrqLine for Wire {
    fn set_level(&mut self, level: bool) {
        let bit = 1u16 << self.line;
        let old = self.wires.level.get();
        if level {
            if old & bit == 0 {
                self.wires.rose.set(self.wires.rose.get() | bit);
            }
            self.wires.level.set(old | bit);
        } else {
            self.wires.level.set(old & !bit);
        }
    }
}

/// What the board needs the platform to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Requests {
    pub power_off: bool,
    /// A write of this value to the debug-exit port.
    pub debug_exit: Option<u32>,
}

/// The debug-exit port (QEMU's isa-debug-exit default).
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
const COM1: u16 = 0x3F8;
const COM2: u16 = 0x2F8;
/// Where firmware puts the IDE bus-master registers (BAR4), as SeaBIOS does.
pub const IDE_BM_BASE: u16 = 0xC000;

pub(crate) struct Board {
    pub pic: PicPair,
    pub pit: Pit8254<PcClock, Wire>,
    pub cmos: Cmos<PcClock, Wire>,
    pub com: [Uart16550<PcClock, Wire, SerialOut>; 2],
    pub i8042: I8042<Wire>,
    pub port92: SystemControlA,
    pub pci: PciHost,
    pub piix: Piix<PcClock, Wire>,
    pub lapic: Lapic<PcClock>,
    pub clock: PcClock,
    wires: Rc<IrqWires>,
    /// Line levels last given to the PIC.
    pic_levels: u16,
    a20: bool,
    signals: Signals,
    debug_console: Option<Box<dyn Write>>,
    pub debug_exit_enabled: bool,
    /// The last POST code written to port 0x80.
    pub post_code: u8,
    pub requests: Requests,
    /// The embedder's extra port devices (writes nothing here decodes).
    port_hook: Option<super::PortHook>,
}

pub(crate) struct BoardConfig {
    pub ram_bytes: u64,
    pub serial: [SerialOut; 2],
    pub debug_console: Option<Box<dyn Write>>,
    pub debug_exit: bool,
    /// UNIX time at the clock's origin.
    pub unix_time_at_origin: Duration,
    pub port_hook: Option<super::PortHook>,
    /// IDE drives: (channel, slave, drive); slots already checked.
    pub drives: Vec<(usize, bool, Drive)>,
}

impl Board {
    pub fn new(config: BoardConfig, clock: PcClock, signals: Signals) -> Board {
        let wires = Rc::new(IrqWires::default());
        let wire = |line| Wire {
            line,
            wires: wires.clone(),
        };
        let [com1_out, com2_out] = config.serial;
        let mut cmos = Cmos::new(clock.clone(), wire(8), config.unix_time_at_origin);
        cmos.set_memory_size(config.ram_bytes);
        cmos.set_equipment(0, true);
        let mut ide = Piix3Ide::new(wire(14), wire(15));
        for (channel, slave, drive) in config.drives {
            ide.attach(channel, slave, drive);
        }
        let mut board = Board {
            pic: PicPair::new(),
            pit: Pit8254::new(clock.clone(), wire(0)),
            cmos,
            com: [
                Uart16550::new(clock.clone(), wire(4), com1_out),
                Uart16550::new(clock.clone(), wire(3), com2_out),
            ],
            i8042: I8042::new(wire(1), wire(12)),
            port92: SystemControlA::new(),
            pci: PciHost::new(),
            piix: Piix {
                host: I440fx::new(),
                isa: Piix3Isa::new(),
                ide,
                pm: Piix4Pm::new(clock.clone(), wire(acpi::SCI_IRQ), acpi::SLP_TYP_S5),
            },
            lapic: Lapic::new(clock.clone(), 0),
            clock,
            wires,
            pic_levels: 0,
            a20: true,
            signals,
            debug_console: config.debug_console,
            debug_exit_enabled: config.debug_exit,
            post_code: 0,
            requests: Requests::default(),
            port_hook: config.port_hook,
        };
        board.firmware_setup();
        board
    }

    /// What firmware would have programmed before a direct boot: the PM I/O
    /// base (FADT's PM_BASE) with its decode enabled, ACPI mode (SCI_EN)
    /// since the FADT names no SMI command port, and the IDE controller's
    /// decoding and bus-master base.
    pub fn firmware_setup(&mut self) {
        self.piix.ide.firmware_setup(IDE_BM_BASE);
        self.piix
            .pm
            .config_write(0x40, IoSize::Dword, acpi::PM_BASE as u32 | 1);
        self.piix.pm.config_write(0x80, IoSize::Byte, 1);
        self.piix.pm.set_sci_en(true);
    }

    /// The earliest time a device needs `poll`.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.pit.next_deadline(),
            self.cmos.next_deadline(),
            self.com[0].next_deadline(),
            self.com[1].next_deadline(),
            self.piix.pm.next_deadline(),
            self.lapic.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Lets every timed device catch up with the clock.
    pub fn poll(&mut self) {
        let now = self.clock.now();
        self.pit.poll(now);
        self.cmos.poll(now);
        self.com[0].poll(now);
        self.com[1].poll(now);
        self.piix.pm.poll(now);
        self.lapic.poll(now);
        self.sync_irqs();
    }

    /// Propagates IRQ line changes to the PIC, the PIC's output to LINT0,
    /// and the local APIC's state to the CPU's INTR and NMI inputs.
    pub fn sync_irqs(&mut self) {
        let rose = self.wires.rose.replace(0);
        let level = self.wires.level.get();
        let changed = (level ^ self.pic_levels) | rose;
        if changed != 0 {
            for line in 0..16u8 {
                let bit = 1 << line;
                if changed & bit == 0 || line == 2 {
                    continue;
                }
                if rose & bit != 0 {
                    // The line rose since the last sync, perhaps after
                    // dropping (an edge-triggered source re-raising, such as
                    // a UART refilling THR-empty) or before dropping again (a
                    // pulse): show the PIC that edge.
                    self.pic.set_irq(line, false);
                    self.pic.set_irq(line, true);
                }
                self.pic.set_irq(line, level & bit != 0);
            }
            self.pic_levels = level;
        }
        self.lapic.set_lint0(self.pic.output());
        if self.lapic.take_nmi() {
            self.signals.raise(Signals::NMI);
        }
        self.signals
            .set_intr(self.lapic.interrupt_pending().is_some());
    }

    /// Applies finished disk requests and runs IDE bus-master transfers
    /// (on the vCPU thread, between CPU slices).
    pub fn service_io(&mut self, mem: &mut dyn DmaMemory) {
        self.piix.ide.service(mem);
        self.sync_irqs();
    }

    /// After an IDE port access: a bus master got work, so the CPU should
    /// leave its slice for [`Board::service_io`].
    fn check_ide_kick(&mut self) {
        if self.piix.ide.take_kick() {
            self.signals.raise(Signals::STOP);
        }
    }

    fn apply_i8042(&mut self, e: I8042Effects) {
        if e.reset {
            self.signals.raise(Signals::RESET);
        }
        let a20 = self.i8042.a20() || self.port92.a20();
        if a20 != self.a20 {
            self.a20 = a20;
            self.signals.set_a20(a20);
        }
    }

    /// Resets the devices a RESET# reaches (the CPU resets itself).
    pub fn reset(&mut self) {
        self.i8042.reset();
        self.port92 = SystemControlA::new();
        self.lapic.reset();
        self.piix.pm.reset();
        self.piix.ide.reset();
        self.pic = PicPair::new();
        self.pic_levels = 0;
        self.wires.rose.set(0);
        self.a20 = true;
        self.signals.set_a20(true);
        self.firmware_setup();
        self.sync_irqs();
    }

    fn pm_offset(&self, port: u16) -> Option<u16> {
        let base = self.piix.pm.pm_io_base()?;
        port.checked_sub(base).filter(|&o| o < 0x40)
    }

    /// One byte-wide port read, for devices that only decode bytes.
    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 => match PicPair::port_offset(port) {
                Some(o) => self.pic.read(o),
                None => 0xFF,
            },
            0x40..=0x42 => self.pit.read((port - 0x40) as u8),
            0x61 => self.pit.read_port61(),
            0x60 | 0x64 => self.i8042.read(port),
            0x70 | 0x71 => self.cmos.read((port - 0x70) as u8),
            0x92 => self.port92.read(),
            0xB2 | 0xB3 => self.piix.pm.apm_read(port),
            COM1..=0x3FF => self.com[0].read((port - COM1) as u8),
            COM2..=0x2FF => self.com[1].read((port - COM2) as u8),
            // Bochs/QEMU debug console: reads identify the port.
            0xE9 => 0xE9,
            _ => 0xFF,
        }
    }

    /// Returns whether a device decodes `port`.
    fn write_byte(&mut self, port: u16, v: u8) -> bool {
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 => {
                if let Some(o) = PicPair::port_offset(port) {
                    self.pic.write(o, v);
                }
            }
            0x40..=0x43 => self.pit.write((port - 0x40) as u8, v),
            0x61 => self.pit.write_port61(v),
            0x60 | 0x64 => {
                let e = self.i8042.write(port, v);
                self.apply_i8042(e);
            }
            0x70 | 0x71 => self.cmos.write((port - 0x70) as u8, v),
            0x92 => {
                let e = self.port92.write(v);
                self.apply_i8042(e);
            }
            0xB2 | 0xB3 => self.piix.pm.apm_write(port, v),
            COM1..=0x3FF => self.com[0].write((port - COM1) as u8, v),
            COM2..=0x2FF => self.com[1].write((port - COM2) as u8, v),
            0xE9 | 0x402 => {
                if let Some(out) = &mut self.debug_console {
                    // The console is best effort: a closed pipe must not stop the guest.
                    let _ = out.write_all(&[v]);
                    let _ = out.flush();
                }
            }
            0x80 | 0x190 => self.post_code = v,
            _ => return false,
        }
        true
    }
}

/// The CPU's view of the board.
pub(crate) struct BoardBus(pub Rc<RefCell<Board>>);

impl Bus for BoardBus {
    fn port_read(&mut self, port: u16, size: IoSize) -> u32 {
        let mut b = self.0.borrow_mut();
        let v = if (0xCF8..=0xCFF).contains(&port) {
            let Board { pci, piix, .. } = &mut *b;
            pci.read(port, size, piix)
        } else if let Some(off) = b.pm_offset(port) {
            b.piix.pm.io_read(off, size)
        } else if let Some(v) = b.piix.ide.io_read(port, size) {
            b.check_ide_kick();
            v
        } else {
            // Byte-wide devices: a wider access reads consecutive ports.
            (0..size as u16).fold(0u32, |acc, i| {
                acc | (b.read_byte(port.wrapping_add(i)) as u32) << (8 * i)
            })
        };
        b.sync_irqs();
        v
    }

    fn port_write(&mut self, port: u16, size: IoSize, value: u32) {
        let mut b = self.0.borrow_mut();
        if (0xCF8..=0xCFF).contains(&port) {
            let Board { pci, piix, .. } = &mut *b;
            if pci.write(port, size, value, piix) == HostEffect::Reset {
                b.signals.raise(Signals::RESET);
            }
        } else if let Some(off) = b.pm_offset(port) {
            match b.piix.pm.io_write(off, size, value) {
                Some(PmEffect::PowerOff) => {
                    b.requests.power_off = true;
                    b.signals.raise(Signals::STOP);
                }
                Some(PmEffect::Sleep(typ)) => {
                    tracing::info!(target: "bulkhead::pc", "guest asked for sleep state SLP_TYP={typ}, which this machine does not have; ignored");
                }
                None => {}
            }
        } else if b.piix.ide.io_write(port, size, value) {
            b.check_ide_kick();
        } else if port == DEBUG_EXIT_PORT && b.debug_exit_enabled {
            b.requests.debug_exit = Some(value & size.ones());
            b.signals.raise(Signals::STOP);
        } else {
            let mut decoded = false;
            for i in 0..size as u16 {
                decoded |= b.write_byte(port.wrapping_add(i), (value >> (8 * i)) as u8);
            }
            if !decoded && let Some(hook) = &mut b.port_hook {
                hook(port, value & size.ones());
            }
        }
        b.sync_irqs();
    }

    fn mmio_read(&mut self, addr: u32, size: IoSize) -> u32 {
        let mut b = self.0.borrow_mut();
        if let Some(off) = addr.checked_sub(acpi::LAPIC_BASE).filter(|&o| o < 0x1000) {
            let v = b.lapic.mmio_read(off & !3) >> (8 * (off & 3));
            return v & size.ones();
        }
        size.ones()
    }

    fn mmio_write(&mut self, addr: u32, size: IoSize, value: u32) {
        let mut b = self.0.borrow_mut();
        if let Some(off) = addr.checked_sub(acpi::LAPIC_BASE).filter(|&o| o < 0x1000) {
            // The xAPIC decodes aligned dwords; narrower writes are merged
            // into the register's current value.
            let v = if size == IoSize::Dword && off & 3 == 0 {
                value
            } else {
                let shift = 8 * (off & 3);
                let mask = size.ones() << shift;
                let old = b.lapic.mmio_read(off & !3);
                (old & !mask) | ((value << shift) & mask)
            };
            b.lapic.mmio_write(off & !3, v);
            b.sync_irqs();
        }
    }

    fn interrupt_ack(&mut self) -> Option<u8> {
        let mut b = self.0.borrow_mut();
        let v = match b.lapic.acknowledge() {
            Some(Ack::Vector(v)) | Some(Ack::Spurious(v)) => Some(v),
            Some(Ack::ExtInt) => Some(b.pic.acknowledge()),
            None => None,
        };
        b.sync_irqs();
        v
    }
}
