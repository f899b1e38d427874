//! National Semiconductor 16550A UART (the PC's COM ports).
//!
//! Offsets 0-7 are the UART's eight registers (COM1 at 0x3F8, COM2 at 0x2F8;
//! the board picks the base and the IRQ line). Transmitted bytes go to an
//! injected [`Write`]; received bytes arrive through [`Uart16550::receive`],
//! which takes only what fits in the receive FIFO so the caller keeps the rest
//! (flow control by back-pressure, nothing is ever dropped on input).
//!
//! Modelling choices:
//! - Transmission is instantaneous: a byte written to THR goes straight to
//!   the output, so THR and the transmitter are always empty again by the
//!   time the guest looks (THRE and TEMT read 1, the transmit FIFO never
//!   fills) and the THR-empty interrupt is raised again at once.
//! - Character timeout (FIFO mode): pending when the receive FIFO holds data
//!   below its trigger level and neither a byte arrived nor the guest read
//!   one for four character times at the programmed baud rate and frame
//!   format. [`Uart16550::next_deadline`] says when it falls due.
//! - A break from the host ([`Uart16550::receive_break`]) queues a zero byte
//!   and sets BI at once rather than when that byte reaches the FIFO's head.
//! - The PC wires INTR through a buffer enabled by OUT2: the IRQ line is
//!   driven only while MCR.OUT2 is set, and never in loopback mode (where the
//!   16550 forces its modem-control output pins inactive).
//! - Parity and framing errors cannot happen (the input is bytes, not bits).

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use super::{Clock, IrqLine};

/// Receive FIFO depth.
const FIFO_SIZE: usize = 16;
/// The UART's input clock divided by 16: the baud rate at divisor 1.
const BASE_BAUD: u64 = 115_200;

mod ier {
    pub const ERBFI: u8 = 0x01;
    pub const ETBEI: u8 = 0x02;
    pub const ELSI: u8 = 0x04;
    pub const EDSSI: u8 = 0x08;
}

mod iir {
    pub const NONE: u8 = 0x01;
    pub const LINE_STATUS: u8 = 0x06;
    pub const RX_DATA: u8 = 0x04;
    pub const RX_TIMEOUT: u8 = 0x0C;
    pub const THR_EMPTY: u8 = 0x02;
    pub const MODEM_STATUS: u8 = 0x00;
    pub const FIFOS_ON: u8 = 0xC0;
}

mod lsr {
    pub const DR: u8 = 0x01;
    pub const OE: u8 = 0x02;
    pub const BI: u8 = 0x10;
    pub const THRE: u8 = 0x20;
    pub const TEMT: u8 = 0x40;
    pub const FIFO_ERROR: u8 = 0x80;
}

mod mcr {
    pub const DTR: u8 = 0x01;
    pub const RTS: u8 = 0x02;
    pub const OUT1: u8 = 0x04;
    pub const OUT2: u8 = 0x08;
    pub const LOOP: u8 = 0x10;
}

mod msr {
    pub const TERI: u8 = 0x04;
    pub const CTS: u8 = 0x10;
    pub const DSR: u8 = 0x20;
    pub const RI: u8 = 0x40;
    pub const DCD: u8 = 0x80;
}

const LCR_DLAB: u8 = 0x80;
const LCR_BREAK: u8 = 0x40;

/// The UART's state, for saved states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UartState {
    pub rx: Vec<u8>,
    pub divisor: u16,
    pub ier: u8,
    /// FCR bits as last written: FIFO enable and trigger level.
    pub fcr: u8,
    pub lcr: u8,
    pub mcr: u8,
    /// LSR error bits (OE, BI, FIFO error) not yet read.
    pub lsr_errors: u8,
    /// MSR input levels (bits 4-7) and delta bits (0-3).
    pub msr: u8,
    /// Modem inputs from the outside world (bits 4-7 of MSR) outside loopback.
    pub modem_inputs: u8,
    pub scratch: u8,
    /// A THR-empty interrupt waits to be identified.
    pub thre_pending: bool,
    /// The last time a byte arrived or the guest read one (character timeout).
    pub rx_activity: Duration,
    /// When the interrupt level was last worked out.
    pub checked_at: Duration,
    /// The level last driven on the IRQ line.
    pub irq_level: bool,
}

/// A 16550A UART.
pub struct Uart16550<C: Clock, I: IrqLine, W: Write> {
    clock: C,
    irq: I,
    out: W,
    s: UartState,
    rx: VecDeque<u8>,
    /// Output errors, counted; only the first is logged.
    output_errors: u64,
}

impl<C: Clock, I: IrqLine, W: Write> Uart16550<C, I, W> {
    /// A UART after reset: 9600 baud, 8N1, FIFOs off, interrupts disabled,
    /// with CTS, DSR and DCD asserted (a connected terminal).
    pub fn new(clock: C, irq: I, out: W) -> Self {
        let now = clock.now();
        Self {
            clock,
            irq,
            out,
            s: UartState {
                rx: Vec::new(),
                divisor: 12,
                ier: 0,
                fcr: 0,
                lcr: 0x03,
                mcr: 0,
                lsr_errors: 0,
                msr: msr::CTS | msr::DSR | msr::DCD,
                modem_inputs: msr::CTS | msr::DSR | msr::DCD,
                scratch: 0,
                thre_pending: false,
                rx_activity: now,
                checked_at: now,
                irq_level: false,
            },
            rx: VecDeque::with_capacity(FIFO_SIZE),
            output_errors: 0,
        }
    }

    /// A guest read of register `offset` (0-7).
    pub fn read(&mut self, offset: u8) -> u8 {
        let now = self.now();
        let dlab = self.s.lcr & LCR_DLAB != 0;
        let value = match offset {
            0 if dlab => self.s.divisor.to_le_bytes()[0],
            1 if dlab => self.s.divisor.to_le_bytes()[1],
            0 => {
                let byte = self.rx.pop_front().unwrap_or(0);
                self.s.rx_activity = now;
                byte
            }
            1 => self.s.ier,
            2 => self.read_iir(now),
            3 => self.s.lcr,
            4 => self.s.mcr,
            5 => {
                let value = self.lsr();
                self.s.lsr_errors = 0;
                value
            }
            6 => {
                let value = self.s.msr;
                self.s.msr &= 0xF0;
                value
            }
            7 => self.s.scratch,
            _ => 0xFF,
        };
        self.update_irq(now);
        value
    }

    /// A guest write of register `offset` (0-7).
    pub fn write(&mut self, offset: u8, value: u8) {
        let now = self.now();
        let dlab = self.s.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.s.divisor = (self.s.divisor & 0xFF00) | u16::from(value),
            1 if dlab => self.s.divisor = (self.s.divisor & 0x00FF) | u16::from(value) << 8,
            0 => self.transmit(now, value),
            1 => {
                let enabling_thre = value & ier::ETBEI != 0 && self.s.ier & ier::ETBEI == 0;
                self.s.ier = value & 0x0F;
                if enabling_thre {
                    // THR is always empty: enabling the interrupt raises it.
                    self.s.thre_pending = true;
                }
            }
            2 => self.write_fcr(now, value),
            3 => {
                let breaking = value & LCR_BREAK != 0 && self.s.lcr & LCR_BREAK == 0;
                self.s.lcr = value;
                if breaking && self.loopback() {
                    self.s.lsr_errors |= lsr::BI | lsr::FIFO_ERROR;
                    self.push_rx(0, now);
                }
            }
            4 => self.write_mcr(value),
            7 => self.s.scratch = value,
            _ => {} // LSR and MSR are read-only (writes are factory test only).
        }
        self.update_irq(now);
    }

    /// Offers host input; returns how many of `bytes` fit in the receive
    /// FIFO (the caller keeps the rest for later). Nothing is taken in
    /// loopback mode, where the serial input is disconnected.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        if self.loopback() {
            return 0;
        }
        let now = self.now();
        let room = self.capacity().saturating_sub(self.rx.len());
        let taken = room.min(bytes.len());
        self.rx.extend(&bytes[..taken]);
        if taken > 0 {
            self.s.rx_activity = now;
        }
        self.update_irq(now);
        taken
    }

    /// How many bytes [`Uart16550::receive`] would take now.
    pub fn rx_room(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.capacity().saturating_sub(self.rx.len())
        }
    }

    /// A break condition on the serial input (e.g. a SysRq request):
    /// queues a zero character and sets BI. Returns false if the FIFO is full.
    pub fn receive_break(&mut self) -> bool {
        if self.rx_room() == 0 {
            return false;
        }
        let now = self.now();
        self.s.lsr_errors |= lsr::BI | lsr::FIFO_ERROR;
        self.push_rx(0, now);
        self.update_irq(now);
        true
    }

    /// Sets the modem status inputs (outside loopback mode).
    pub fn set_modem_inputs(&mut self, cts: bool, dsr: bool, ri: bool, dcd: bool) {
        self.s.modem_inputs =
            u8::from(cts) << 4 | u8::from(dsr) << 5 | u8::from(ri) << 6 | u8::from(dcd) << 7;
        if !self.loopback() {
            self.set_msr_inputs(self.s.modem_inputs);
        }
        let now = self.now();
        self.update_irq(now);
    }

    /// Re-evaluates the character timeout at `now` and drives the IRQ line.
    pub fn poll(&mut self, now: Duration) {
        let now = now.max(self.s.checked_at);
        self.update_irq(now);
    }

    /// When a character-timeout interrupt next falls due, if one will.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.s.ier & ier::ERBFI == 0 || !self.fifo_enabled() {
            return None;
        }
        if self.rx.is_empty() || self.rx.len() >= self.trigger_level() {
            return None;
        }
        let due = self.s.rx_activity + self.char_time() * 4;
        (due > self.s.checked_at).then_some(due)
    }

    /// Bytes the output refused (each is dropped).
    pub fn output_errors(&self) -> u64 {
        self.output_errors
    }

    /// A plain-data snapshot.
    pub fn state(&self) -> UartState {
        let mut s = self.s.clone();
        s.rx = self.rx.iter().copied().collect();
        s
    }

    /// Rebuilds a UART from a snapshot.
    pub fn from_state(state: &UartState, clock: C, mut irq: I, out: W) -> Self {
        let mut s = state.clone();
        let mut rx: VecDeque<u8> = std::mem::take(&mut s.rx).into();
        rx.truncate(FIFO_SIZE);
        s.ier &= 0x0F;
        irq.set_level(s.irq_level);
        Self {
            clock,
            irq,
            out,
            s,
            rx,
            output_errors: 0,
        }
    }

    fn now(&self) -> Duration {
        self.clock.now().max(self.s.checked_at)
    }

    fn loopback(&self) -> bool {
        self.s.mcr & mcr::LOOP != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.s.fcr & 0x01 != 0
    }

    /// The receive buffer's depth: the FIFO, or the single holding register.
    fn capacity(&self) -> usize {
        if self.fifo_enabled() { FIFO_SIZE } else { 1 }
    }

    fn trigger_level(&self) -> usize {
        match self.s.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    /// One character's time on the wire at the programmed rate and format.
    fn char_time(&self) -> Duration {
        let bits = 1
            + 5
            + u64::from(self.s.lcr & 3)
            + u64::from(self.s.lcr & 0x08 != 0)
            + if self.s.lcr & 0x04 != 0 { 2 } else { 1 };
        let divisor = if self.s.divisor == 0 {
            0x1_0000
        } else {
            u64::from(self.s.divisor)
        };
        Duration::from_nanos(bits * divisor * 1_000_000_000 / BASE_BAUD)
    }

    fn push_rx(&mut self, byte: u8, now: Duration) {
        if self.rx.len() < self.capacity() {
            self.rx.push_back(byte);
        } else {
            // Overrun: the character in the shift register is lost.
            self.s.lsr_errors |= lsr::OE;
        }
        self.s.rx_activity = now;
    }

    fn transmit(&mut self, now: Duration, byte: u8) {
        if self.loopback() {
            self.push_rx(byte, now);
        } else if let Err(err) = self.out.write_all(&[byte]).and_then(|()| self.out.flush()) {
            self.output_errors += 1;
            if self.output_errors == 1 {
                tracing::warn!(%err, "uart16550: output failed; dropping bytes (logged once)");
            }
        }
        // The byte is gone at once: THR is empty again.
        self.s.thre_pending = true;
    }

    fn write_fcr(&mut self, now: Duration, value: u8) {
        let was_enabled = self.fifo_enabled();
        let enable = value & 0x01 != 0;
        if enable != was_enabled || value & 0x02 != 0 {
            self.rx.clear();
            self.s.rx_activity = now;
        }
        // Bit 2 clears the transmit FIFO, which never holds anything here.
        self.s.fcr = if enable { value & 0xC1 } else { 0 };
    }

    fn write_mcr(&mut self, value: u8) {
        self.s.mcr = value & 0x1F;
        let inputs = if self.loopback() {
            let m = self.s.mcr;
            let bit = |mask: u8, to: u8| if m & mask != 0 { to } else { 0 };
            bit(mcr::RTS, msr::CTS)
                | bit(mcr::DTR, msr::DSR)
                | bit(mcr::OUT1, msr::RI)
                | bit(mcr::OUT2, msr::DCD)
        } else {
            self.s.modem_inputs
        };
        self.set_msr_inputs(inputs);
    }

    /// Sets MSR's input bits, recording deltas.
    fn set_msr_inputs(&mut self, inputs: u8) {
        let old = self.s.msr;
        let changed = (old ^ inputs) & 0xF0;
        let mut delta = (changed >> 4) & !msr::TERI;
        // TERI: RI went from on to off.
        if old & msr::RI != 0 && inputs & msr::RI == 0 {
            delta |= msr::TERI;
        }
        self.s.msr = (inputs & 0xF0) | (old & 0x0F) | (delta & 0x0F);
    }

    fn lsr(&self) -> u8 {
        let mut value = lsr::THRE | lsr::TEMT | (self.s.lsr_errors & (lsr::OE | lsr::BI));
        if !self.rx.is_empty() {
            value |= lsr::DR;
        }
        if self.fifo_enabled() && self.s.lsr_errors & lsr::FIFO_ERROR != 0 {
            value |= lsr::FIFO_ERROR;
        }
        value
    }

    fn timeout_due(&self, now: Duration) -> bool {
        self.fifo_enabled()
            && !self.rx.is_empty()
            && self.rx.len() < self.trigger_level()
            && now >= self.s.rx_activity + self.char_time() * 4
    }

    /// The highest-priority pending interrupt's IIR code.
    fn identify(&self, now: Duration) -> u8 {
        let enabled = self.s.ier;
        if enabled & ier::ELSI != 0 && self.s.lsr_errors & (lsr::OE | lsr::BI) != 0 {
            iir::LINE_STATUS
        } else if enabled & ier::ERBFI != 0 && self.rx.len() >= self.rx_threshold() {
            iir::RX_DATA
        } else if enabled & ier::ERBFI != 0 && self.timeout_due(now) {
            iir::RX_TIMEOUT
        } else if enabled & ier::ETBEI != 0 && self.s.thre_pending {
            iir::THR_EMPTY
        } else if enabled & ier::EDSSI != 0 && self.s.msr & 0x0F != 0 {
            iir::MODEM_STATUS
        } else {
            iir::NONE
        }
    }

    /// Bytes needed for a received-data interrupt.
    fn rx_threshold(&self) -> usize {
        if self.fifo_enabled() {
            self.trigger_level()
        } else {
            1
        }
    }

    fn read_iir(&mut self, now: Duration) -> u8 {
        let id = self.identify(now);
        if id == iir::THR_EMPTY {
            self.s.thre_pending = false;
        }
        let fifo_bits = if self.fifo_enabled() {
            iir::FIFOS_ON
        } else {
            0
        };
        id | fifo_bits
    }

    fn update_irq(&mut self, now: Duration) {
        self.s.checked_at = now;
        let gated = self.s.mcr & mcr::OUT2 != 0 && !self.loopback();
        let level = gated && self.identify(now) != iir::NONE;
        if level != self.s.irq_level {
            self.s.irq_level = level;
            self.irq.set_level(level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FakeClock, RecordingIrq};
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A byte sink the test can look into.
    #[derive(Clone, Default)]
    struct Sink(Rc<RefCell<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("gone"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    type Uart = Uart16550<FakeClock, RecordingIrq, Sink>;

    const RBR: u8 = 0;
    const IER: u8 = 1;
    const IIR: u8 = 2;
    const FCR: u8 = 2;
    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const LSR: u8 = 5;
    const MSR: u8 = 6;
    const SCR: u8 = 7;

    fn uart() -> (Uart, FakeClock, RecordingIrq, Sink) {
        let clock = FakeClock::default();
        let irq = RecordingIrq::default();
        let sink = Sink::default();
        let uart = Uart16550::new(clock.clone(), irq.clone(), sink.clone());
        (uart, clock, irq, sink)
    }

    /// What Linux's 8250 driver leaves behind: 115200 8N1, FIFOs on with a
    /// 14-byte trigger, DTR/RTS/OUT2, RX and line-status interrupts.
    fn linux_uart() -> (Uart, FakeClock, RecordingIrq, Sink) {
        let (mut uart, clock, irq, sink) = uart();
        uart.write(LCR, 0x83);
        uart.write(0, 0x01);
        uart.write(1, 0x00);
        uart.write(LCR, 0x03);
        uart.write(FCR, 0xC7);
        uart.write(MCR, 0x0B);
        uart.write(IER, 0x05);
        (uart, clock, irq, sink)
    }

    #[test]
    fn uart_thr_write_goes_to_output() {
        let (mut uart, _clock, _irq, sink) = uart();

        for &b in b"hi\n" {
            uart.write(0, b);
        }

        assert_eq!(&*sink.0.borrow(), b"hi\n");
        assert_eq!(uart.read(LSR), 0x60);
    }

    #[test]
    fn uart_output_errors_are_counted_not_fatal() {
        let clock = FakeClock::default();
        let mut uart = Uart16550::new(clock, RecordingIrq::default(), Broken);

        uart.write(0, b'x');
        uart.write(0, b'y');

        assert_eq!(uart.output_errors(), 2);
    }

    #[test]
    fn uart_dlab_exposes_divisor_latch() {
        let (mut uart, _clock, _irq, _sink) = uart();

        uart.write(LCR, 0x83);
        uart.write(0, 0x34);
        uart.write(1, 0x12);

        assert_eq!((uart.read(0), uart.read(1)), (0x34, 0x12));
        uart.write(LCR, 0x03);
        assert_eq!(uart.read(IER), 0x00);
    }

    #[test]
    fn uart_scratch_and_ier_read_back() {
        let (mut uart, _clock, _irq, _sink) = uart();

        uart.write(SCR, 0x5A);
        uart.write(IER, 0xFF);

        assert_eq!(uart.read(SCR), 0x5A);
        assert_eq!(uart.read(IER), 0x0F);
    }

    #[test]
    fn uart_receive_sets_data_ready_and_rbr_returns_bytes_in_order() {
        let (mut uart, _clock, _irq, _sink) = linux_uart();

        let taken = uart.receive(b"ab");

        assert_eq!(taken, 2);
        assert_eq!(uart.read(LSR) & 0x01, 0x01);
        assert_eq!((uart.read(RBR), uart.read(RBR)), (b'a', b'b'));
        assert_eq!(uart.read(LSR) & 0x01, 0x00);
    }

    #[test]
    fn uart_receive_takes_only_what_fits_in_fifo() {
        let (mut uart, _clock, _irq, _sink) = linux_uart();

        let taken = uart.receive(&[0x41; 20]);

        assert_eq!(taken, 16);
        assert_eq!(uart.receive(b"z"), 0);
        assert_eq!(uart.read(LSR) & 0x02, 0x00);
    }

    #[test]
    fn uart_without_fifo_holds_one_byte() {
        let (mut uart, _clock, _irq, _sink) = uart();

        let taken = uart.receive(b"xyz");

        assert_eq!(taken, 1);
        assert_eq!(uart.read(IIR), 0x01);
    }

    #[test]
    fn uart_rx_trigger_level_raises_rx_data_interrupt() {
        let (mut uart, _clock, irq, _sink) = linux_uart();
        uart.receive(&[0; 13]);
        assert!(!irq.level.get());

        uart.receive(&[0]);

        assert!(irq.level.get());
        assert_eq!(uart.read(IIR), 0xC4);
    }

    #[test]
    fn uart_rx_below_trigger_times_out_after_four_char_times() {
        let (mut uart, clock, irq, _sink) = linux_uart();
        uart.receive(b"k");
        let deadline = uart.next_deadline();
        // 115200 8N1: 10 bits = 86.805 us per character.
        assert_eq!(deadline, Some(Duration::from_nanos(4 * 86_805)));

        clock.advance(Duration::from_nanos(4 * 86_805));
        uart.poll(clock.0.get());

        assert!(irq.level.get());
        assert_eq!(uart.read(IIR), 0xCC);
        assert_eq!(uart.read(RBR), b'k');
        assert!(!irq.level.get());
        assert_eq!(uart.next_deadline(), None);
    }

    #[test]
    fn uart_rx_timeout_scales_with_divisor_and_frame() {
        let (mut uart, _clock, _irq, _sink) = linux_uart();
        uart.write(LCR, 0x80);
        uart.write(0, 12); // 9600 baud
        uart.write(LCR, 0x1F); // 8 data bits, even parity, 2 stop bits

        uart.receive(b"k");

        // 12 bits at 9600 baud = 1.25 ms per character.
        assert_eq!(uart.next_deadline(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn uart_rx_timeout_restarts_when_guest_reads() {
        let (mut uart, clock, _irq, _sink) = linux_uart();
        uart.receive(b"kl");
        clock.advance(Duration::from_micros(200));

        uart.read(RBR);

        assert_eq!(uart.read(IIR), 0xC1);
        assert_eq!(
            uart.next_deadline(),
            Some(Duration::from_micros(200) + Duration::from_nanos(4 * 86_805))
        );
    }

    #[test]
    fn uart_non_fifo_rx_interrupts_on_every_byte() {
        let (mut uart, _clock, irq, _sink) = uart();
        uart.write(MCR, 0x08);
        uart.write(IER, 0x01);

        uart.receive(b"q");

        assert!(irq.level.get());
        assert_eq!(uart.read(IIR), 0x04);
    }

    #[test]
    fn uart_thre_interrupt_on_enable_cleared_by_iir_read() {
        let (mut uart, _clock, irq, _sink) = uart();
        uart.write(MCR, 0x08);

        uart.write(IER, 0x02);

        assert!(irq.level.get());
        assert_eq!(uart.read(IIR), 0x02);
        assert!(!irq.level.get());
        assert_eq!(uart.read(IIR), 0x01);
    }

    #[test]
    fn uart_thre_interrupt_returns_after_each_thr_write() {
        let (mut uart, _clock, irq, _sink) = uart();
        uart.write(MCR, 0x08);
        uart.write(IER, 0x02);
        uart.read(IIR);

        uart.write(0, b'a');

        assert!(irq.level.get());
        assert_eq!(irq.rising_edges.get(), 2);
    }

    #[test]
    fn uart_rewriting_ier_with_etbei_set_does_not_reraise_thre() {
        let (mut uart, _clock, _irq, _sink) = uart();
        uart.write(IER, 0x02);
        uart.read(IIR);

        uart.write(IER, 0x03);

        assert_eq!(uart.read(IIR), 0x01);
    }

    #[test]
    fn uart_irq_needs_out2() {
        let (mut uart, _clock, irq, _sink) = uart();
        uart.write(IER, 0x02);
        assert!(!irq.level.get());

        uart.write(MCR, 0x08);

        assert!(irq.level.get());
    }

    #[test]
    fn uart_interrupt_priority_line_status_over_rx_over_thre() {
        let (mut uart, _clock, _irq, _sink) = uart();
        uart.write(MCR, 0x18); // loopback to force an overrun
        uart.write(IER, 0x0F);
        uart.write(0, 1);
        uart.write(0, 2); // overruns the single holding register

        let first = uart.read(IIR);
        uart.read(LSR);
        let second = uart.read(IIR);
        uart.read(RBR);
        let third = uart.read(IIR);

        assert_eq!((first, second, third), (0x06, 0x04, 0x02));
    }

    #[test]
    fn uart_modem_status_interrupt_has_lowest_priority_and_clears_on_msr_read() {
        let (mut uart, _clock, irq, _sink) = uart();
        uart.write(MCR, 0x08);
        uart.write(IER, 0x08);

        uart.set_modem_inputs(false, true, false, true);

        assert!(irq.level.get());
        assert_eq!(uart.read(IIR), 0x00);
        assert_eq!(uart.read(MSR), 0xA1);
        assert_eq!(uart.read(IIR), 0x01);
    }

    #[test]
    fn uart_ring_indicator_trailing_edge_sets_teri() {
        let (mut uart, _clock, _irq, _sink) = uart();
        uart.set_modem_inputs(true, true, true, true);
        uart.read(MSR);

        uart.set_modem_inputs(true, true, false, true);

        assert_eq!(uart.read(MSR), 0xB4);
    }

    #[test]
    fn uart_loopback_returns_tx_to_rx_and_keeps_output_quiet() {
        let (mut uart, _clock, _irq, sink) = linux_uart();
        uart.write(MCR, 0x1B);

        uart.write(0, 0x55);

        assert!(sink.0.borrow().is_empty());
        assert_eq!(uart.read(RBR), 0x55);
        assert_eq!(uart.receive(b"x"), 0);
    }

    #[test]
    fn uart_loopback_wires_mcr_outputs_to_msr_inputs() {
        let (mut uart, _clock, _irq, _sink) = uart();
        uart.read(MSR);

        uart.write(MCR, 0x1A); // loop, OUT2, RTS

        assert_eq!(uart.read(MSR) & 0xF0, 0x90);
        uart.write(MCR, 0x15); // loop, OUT1, DTR
        assert_eq!(uart.read(MSR) & 0xF0, 0x60);
    }

    #[test]
    fn uart_loopback_gates_irq_off() {
        let (mut uart, _clock, irq, _sink) = uart();
        uart.write(IER, 0x02);

        uart.write(MCR, 0x18);

        assert!(!irq.level.get());
        assert_eq!(uart.read(IIR), 0x02);
    }

    #[test]
    fn uart_loopback_break_sets_bi_and_line_status_interrupt() {
        let (mut uart, _clock, _irq, _sink) = linux_uart();
        uart.write(MCR, 0x1B);

        uart.write(LCR, 0x43);

        assert_eq!(uart.read(IIR), 0xC6);
        assert_eq!(uart.read(LSR), 0xF1);
        assert_eq!(uart.read(LSR), 0x61);
    }

    #[test]
    fn uart_host_break_queues_zero_with_bi() {
        let (mut uart, _clock, _irq, _sink) = linux_uart();

        let queued = uart.receive_break();

        assert!(queued);
        assert_eq!(uart.read(LSR) & 0x11, 0x11);
        assert_eq!(uart.read(RBR), 0x00);
    }

    #[test]
    fn uart_fcr_reports_fifos_in_iir_and_reset_clears_rx() {
        let (mut uart, _clock, _irq, _sink) = linux_uart();
        uart.receive(b"abc");

        uart.write(FCR, 0xC3);

        assert_eq!(uart.read(IIR) & 0xC0, 0xC0);
        assert_eq!(uart.read(LSR) & 0x01, 0x00);
        uart.write(FCR, 0x00);
        assert_eq!(uart.read(IIR) & 0xC0, 0x00);
    }

    #[test]
    fn uart_trigger_level_4_interrupts_at_four_bytes() {
        let (mut uart, _clock, irq, _sink) = linux_uart();
        uart.write(FCR, 0x41);

        uart.receive(b"abcd");

        assert!(irq.level.get());
        assert_eq!(uart.read(IIR), 0xC4);
    }

    #[test]
    fn uart_reading_empty_rbr_returns_zero() {
        let (mut uart, _clock, _irq, _sink) = uart();

        assert_eq!(uart.read(RBR), 0);
    }

    #[test]
    fn uart_out_of_range_offsets_are_ignored() {
        let (mut uart, _clock, _irq, _sink) = uart();

        uart.write(9, 1);

        assert_eq!(uart.read(9), 0xFF);
    }

    #[test]
    fn uart_state_round_trips() {
        let (mut uart, clock, irq, sink) = linux_uart();
        uart.receive(b"hello");
        uart.write(SCR, 9);

        let mut restored = Uart16550::from_state(&uart.state(), clock, irq, sink);

        assert_eq!(restored.state(), uart.state());
        assert_eq!(restored.read(RBR), b'h');
    }
}
