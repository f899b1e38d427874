//! The i8042 keyboard controller (ports 0x60 data, 0x64 status/command) with
//! a PS/2 keyboard and IntelliMouse behind it, and System Control Port A
//! (port 0x92: fast A20 and fast reset).
//!
//! The controller holds one output byte at a time; the devices queue the rest.
//! When a byte is loaded into the output buffer the controller raises IRQ1
//! (keyboard side) or IRQ12 (aux side) if the command byte enables it; a read
//! of port 0x60 empties the buffer, drops the line and loads the next byte
//! (a fresh edge). Scancodes from the keyboard are translated from set 2 to
//! set 1 when the command byte's XLAT bit is set.
//!
//! Reset and A20 requests are returned as [`I8042Effects`]; the board ORs the
//! A20 outputs of the 8042 and port 0x92 into the CPU's A20 gate (the chipset
//! masks A20 only when both are off).

use super::IrqLine;
use super::ps2::{Ps2Keyboard, Ps2KeyboardState, Ps2Mouse, Ps2MouseState, set2_to_set1};

/// Port offsets, relative to 0x60.
pub const DATA_PORT: u16 = 0x60;
pub const COMMAND_PORT: u16 = 0x64;

/// Status register bits (port 0x64 read).
pub mod status {
    /// Output buffer full: a byte waits at port 0x60.
    pub const OBF: u8 = 1 << 0;
    // Bit 1, IBF (input buffer full), is always clear: writes are processed
    // at once. Bits 6-7 (timeout, parity error) are always clear too.
    /// System flag (set by a passed self test, mirrors command byte bit 2).
    pub const SYS: u8 = 1 << 2;
    /// The last write went to port 0x64 (command) rather than 0x60 (data).
    pub const A2: u8 = 1 << 3;
    /// Keyboard not inhibited (the key lock is open).
    pub const INH: u8 = 1 << 4;
    /// The output buffer holds mouse (aux) data.
    pub const AUXB: u8 = 1 << 5;
}

/// Command byte bits (controller RAM byte 0).
pub mod ccb {
    pub const KBD_INT: u8 = 1 << 0;
    pub const AUX_INT: u8 = 1 << 1;
    pub const SYS: u8 = 1 << 2;
    pub const KBD_DISABLE: u8 = 1 << 4;
    pub const AUX_DISABLE: u8 = 1 << 5;
    pub const XLAT: u8 = 1 << 6;
}

/// Output port bits (commands 0xD0/0xD1).
pub mod outport {
    /// CPU reset line, active low: writing 0 resets the CPU.
    pub const RESET: u8 = 1 << 0;
    pub const A20: u8 = 1 << 1;
    pub const AUX_OBF: u8 = 1 << 4;
    pub const KBD_OBF: u8 = 1 << 5;
}

/// What a write asks of the board.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I8042Effects {
    /// Pulse the CPU's reset line.
    pub reset: bool,
    /// The controller's A20 output changed to this level.
    pub a20: Option<bool>,
}

impl I8042Effects {
    pub fn is_empty(&self) -> bool {
        !self.reset && self.a20.is_none()
    }
}

/// Who put the byte in the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The controller or the keyboard: IRQ1.
    Keyboard,
    /// The mouse: IRQ12, status AUXB.
    Aux,
}

/// Plain-data snapshot of an [`I8042`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct I8042State {
    pub ram: Vec<u8>,
    pub status_sys: bool,
    pub last_was_command: bool,
    pub output: Option<(u8, bool)>,
    pub last_output: u8,
    pub controller_queue: Vec<(u8, bool)>,
    pub pending: Option<u8>,
    pub output_port: u8,
    pub xlat_break: bool,
    pub keyboard: Ps2KeyboardState,
    pub mouse: Ps2MouseState,
}

/// Controller responses queued ahead of device data (the longest burst is
/// one response; a few spare slots absorb guests that never read).
const CONTROLLER_QUEUE_LIMIT: usize = 4;
/// Unhandled commands logged before the log goes quiet.
const LOG_BUDGET: u32 = 16;

/// The keyboard controller. `I` is the board's IRQ line type (IRQ1, IRQ12).
pub struct I8042<I: IrqLine> {
    /// Controller RAM: byte 0 is the command byte.
    ram: [u8; 32],
    status_sys: bool,
    last_was_command: bool,
    output: Option<(u8, Source)>,
    last_output: u8,
    controller_queue: Vec<(u8, Source)>,
    /// A controller command waiting for its data byte at port 0x60.
    pending: Option<u8>,
    output_port: u8,
    /// XLAT saw a set-2 0xF0 prefix: the next code is a break.
    xlat_break: bool,
    keyboard: Ps2Keyboard,
    mouse: Ps2Mouse,
    irq1: I,
    irq12: I,
    unhandled: u32,
}

impl<I: IrqLine> I8042<I> {
    /// A controller as after power-on: interrupts enabled, no translation
    /// (the BIOS or OS sets the command byte it wants), A20 on.
    pub fn new(irq1: I, irq12: I) -> Self {
        let mut ram = [0; 32];
        ram[0] = ccb::KBD_INT | ccb::AUX_INT;
        Self {
            ram,
            status_sys: false,
            last_was_command: false,
            output: None,
            last_output: 0,
            controller_queue: Vec::new(),
            pending: None,
            output_port: outport::RESET | outport::A20,
            xlat_break: false,
            keyboard: Ps2Keyboard::new(),
            mouse: Ps2Mouse::new(),
            irq1,
            irq12,
            unhandled: 0,
        }
    }

    /// Back to the power-on state (machine reset), keeping the IRQ lines.
    /// The board re-applies A20 from [`I8042::a20`] (on after reset).
    pub fn reset(&mut self) {
        let mut ram = [0; 32];
        ram[0] = ccb::KBD_INT | ccb::AUX_INT;
        self.ram = ram;
        self.status_sys = false;
        self.last_was_command = false;
        self.output = None;
        self.last_output = 0;
        self.controller_queue.clear();
        self.pending = None;
        self.output_port = outport::RESET | outport::A20;
        self.xlat_break = false;
        self.keyboard = Ps2Keyboard::new();
        self.mouse = Ps2Mouse::new();
        self.update_irqs();
    }

    fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// The controller's A20 output (output port bit 1).
    pub fn a20(&self) -> bool {
        self.output_port & outport::A20 != 0
    }

    pub fn keyboard(&self) -> &Ps2Keyboard {
        &self.keyboard
    }

    /// Host keyboard input: one key's set-2 make or break sequence.
    pub fn key_event_set2(&mut self, bytes: &[u8]) -> bool {
        let queued = self.keyboard.key_event_set2(bytes);
        self.refill();
        queued
    }

    /// Host keyboard input for one of the well-known keys.
    pub fn key_event(&mut self, key: super::ps2::Key, pressed: bool) -> bool {
        let queued = self.keyboard.key_event(key, pressed);
        self.refill();
        queued
    }

    /// Host pointer input; see [`Ps2Mouse::mouse_event`].
    pub fn mouse_event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        self.mouse.mouse_event(dx, dy, dz, buttons);
        self.refill();
    }

    /// A port read; `port` is 0x60 or 0x64 (other values read 0xFF).
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            DATA_PORT => self.read_data(),
            COMMAND_PORT => self.read_status(),
            _ => 0xFF,
        }
    }

    /// A port write; `port` is 0x60 or 0x64 (others are ignored).
    pub fn write(&mut self, port: u16, value: u8) -> I8042Effects {
        match port {
            DATA_PORT => {
                self.last_was_command = false;
                let effects = self.write_data(value);
                self.refill();
                effects
            }
            COMMAND_PORT => {
                self.last_was_command = true;
                let effects = self.write_command(value);
                self.refill();
                effects
            }
            _ => I8042Effects::default(),
        }
    }

    fn read_status(&self) -> u8 {
        let mut s = status::INH;
        if let Some((_, source)) = self.output {
            s |= status::OBF;
            if source == Source::Aux {
                s |= status::AUXB;
            }
        }
        if self.status_sys {
            s |= status::SYS;
        }
        if self.last_was_command {
            s |= status::A2;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let Some((byte, _)) = self.output.take() else {
            // An empty buffer reads as the last byte, as on hardware.
            return self.last_output;
        };
        self.last_output = byte;
        self.update_irqs();
        self.refill();
        byte
    }

    /// Queues a controller-generated byte for the output buffer.
    fn queue_controller(&mut self, byte: u8, source: Source) {
        if self.controller_queue.len() < CONTROLLER_QUEUE_LIMIT {
            self.controller_queue.push((byte, source));
        }
    }

    /// Loads the output buffer if it is empty and someone has data.
    fn refill(&mut self) {
        if self.output.is_none() {
            self.output = self.next_output();
        }
        self.update_irqs();
    }

    fn next_output(&mut self) -> Option<(u8, Source)> {
        if !self.controller_queue.is_empty() {
            return Some(self.controller_queue.remove(0));
        }
        let cb = self.command_byte();
        if cb & ccb::KBD_DISABLE == 0 {
            while let Some(byte) = self.keyboard.pop() {
                if cb & ccb::XLAT == 0 {
                    return Some((byte, Source::Keyboard));
                }
                if byte == 0xF0 {
                    self.xlat_break = true;
                    continue;
                }
                let mut code = set2_to_set1(byte);
                if std::mem::take(&mut self.xlat_break) {
                    code |= 0x80;
                }
                return Some((code, Source::Keyboard));
            }
        }
        if cb & ccb::AUX_DISABLE == 0
            && let Some(byte) = self.mouse.pop()
        {
            return Some((byte, Source::Aux));
        }
        None
    }

    fn update_irqs(&mut self) {
        let cb = self.command_byte();
        let (kbd, aux) = match self.output {
            Some((_, Source::Keyboard)) => (cb & ccb::KBD_INT != 0, false),
            Some((_, Source::Aux)) => (false, cb & ccb::AUX_INT != 0),
            None => (false, false),
        };
        self.irq1.set_level(kbd);
        self.irq12.set_level(aux);
    }

    fn write_data(&mut self, value: u8) -> I8042Effects {
        let Some(cmd) = self.pending.take() else {
            // Talking to the keyboard re-enables its interface, as the
            // controller drives the clock line to send.
            self.ram[0] &= !ccb::KBD_DISABLE;
            self.keyboard.write(value);
            return I8042Effects::default();
        };
        match cmd {
            0x60..=0x7F => {
                self.ram[usize::from(cmd - 0x60)] = value;
                if cmd == 0x60 {
                    // The status register's system flag follows the command byte.
                    self.status_sys = value & ccb::SYS != 0;
                }
                self.update_irqs();
            }
            0xD1 => return self.set_output_port(value),
            0xD2 => self.queue_controller(value, Source::Keyboard),
            0xD3 => self.queue_controller(value, Source::Aux),
            0xD4 => {
                // Likewise for the aux interface.
                self.ram[0] &= !ccb::AUX_DISABLE;
                self.mouse.write(value);
            }
            _ => {}
        }
        I8042Effects::default()
    }

    fn set_output_port(&mut self, value: u8) -> I8042Effects {
        let old_a20 = self.a20();
        // The buffer-full bits reflect the output buffer; the rest is stored.
        self.output_port = value & !(outport::AUX_OBF | outport::KBD_OBF);
        let mut effects = I8042Effects::default();
        if self.a20() != old_a20 {
            effects.a20 = Some(self.a20());
        }
        if value & outport::RESET == 0 {
            effects.reset = true;
            // The line is pulsed: the controller lets it go again at once.
            self.output_port |= outport::RESET;
        }
        effects
    }

    fn output_port_value(&self) -> u8 {
        let mut v = self.output_port;
        match self.output {
            Some((_, Source::Keyboard)) => v |= outport::KBD_OBF,
            Some((_, Source::Aux)) => v |= outport::AUX_OBF,
            None => {}
        }
        v
    }

    fn write_command(&mut self, cmd: u8) -> I8042Effects {
        self.pending = None;
        match cmd {
            0x20..=0x3F => {
                let v = self.ram[usize::from(cmd - 0x20)];
                self.queue_controller(v, Source::Keyboard);
            }
            0x60..=0x7F | 0xD1..=0xD4 => self.pending = Some(cmd),
            // Password installed? No.
            0xA4 => self.queue_controller(0xF1, Source::Keyboard),
            0xA7 => self.ram[0] |= ccb::AUX_DISABLE,
            0xA8 => self.ram[0] &= !ccb::AUX_DISABLE,
            0xA9 | 0xAB => self.queue_controller(0x00, Source::Keyboard),
            0xAA => {
                self.status_sys = true;
                self.queue_controller(0x55, Source::Keyboard);
            }
            0xAD => self.ram[0] |= ccb::KBD_DISABLE,
            0xAE => self.ram[0] &= !ccb::KBD_DISABLE,
            // Input port: keyboard not inhibited, no manufacturing jumper.
            0xC0 => self.queue_controller(0xA0, Source::Keyboard),
            0xD0 => {
                let v = self.output_port_value();
                self.queue_controller(v, Source::Keyboard);
            }
            0xDD => return self.set_output_port(self.output_port & !outport::A20),
            0xDF => return self.set_output_port(self.output_port | outport::A20),
            // Test inputs: clock and data low.
            0xE0 => self.queue_controller(0x00, Source::Keyboard),
            0xF0..=0xFF => {
                // Pulse the output lines whose bit is clear in the low nibble.
                let effects = I8042Effects {
                    reset: cmd & 1 == 0,
                    a20: None,
                };
                return effects;
            }
            _ => {
                if self.unhandled < LOG_BUDGET {
                    tracing::debug!(cmd, "i8042: unhandled controller command");
                }
                self.unhandled = self.unhandled.saturating_add(1);
            }
        }
        I8042Effects::default()
    }

    pub fn state(&self) -> I8042State {
        let enc = |(b, s): (u8, Source)| (b, s == Source::Aux);
        I8042State {
            ram: self.ram.to_vec(),
            status_sys: self.status_sys,
            last_was_command: self.last_was_command,
            output: self.output.map(enc),
            last_output: self.last_output,
            controller_queue: self.controller_queue.iter().copied().map(enc).collect(),
            pending: self.pending,
            output_port: self.output_port,
            xlat_break: self.xlat_break,
            keyboard: self.keyboard.state(),
            mouse: self.mouse.state(),
        }
    }

    pub fn from_state(s: &I8042State, irq1: I, irq12: I) -> Self {
        let dec = |(b, aux): (u8, bool)| (b, if aux { Source::Aux } else { Source::Keyboard });
        let mut ram = [0; 32];
        for (dst, src) in ram.iter_mut().zip(&s.ram) {
            *dst = *src;
        }
        let mut dev = Self {
            ram,
            status_sys: s.status_sys,
            last_was_command: s.last_was_command,
            output: s.output.map(dec),
            last_output: s.last_output,
            controller_queue: s
                .controller_queue
                .iter()
                .copied()
                .take(CONTROLLER_QUEUE_LIMIT)
                .map(dec)
                .collect(),
            pending: s.pending,
            output_port: s.output_port,
            xlat_break: s.xlat_break,
            keyboard: Ps2Keyboard::from_state(&s.keyboard),
            mouse: Ps2Mouse::from_state(&s.mouse),
            irq1,
            irq12,
            unhandled: 0,
        };
        dev.update_irqs();
        dev
    }
}

/// System Control Port A (port 0x92): bit 1 fast A20, bit 0 fast reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemControlA {
    value: u8,
}

impl SystemControlA {
    pub const PORT: u16 = 0x92;
    const RESET: u8 = 1 << 0;
    const A20: u8 = 1 << 1;

    pub fn new() -> Self {
        Self::default()
    }

    /// This port's A20 output.
    pub fn a20(&self) -> bool {
        self.value & Self::A20 != 0
    }

    pub fn read(&self) -> u8 {
        self.value
    }

    /// A write; a 0→1 edge on bit 0 requests a reset.
    pub fn write(&mut self, value: u8) -> I8042Effects {
        let old = self.value;
        self.value = value;
        I8042Effects {
            reset: old & Self::RESET == 0 && value & Self::RESET != 0,
            a20: (old & Self::A20 != value & Self::A20).then_some(value & Self::A20 != 0),
        }
    }

    pub fn state(&self) -> u8 {
        self.value
    }

    pub fn from_state(value: u8) -> Self {
        Self { value }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ps2::{ACK, BAT_OK, Key, buttons};
    use super::super::testing::RecordingIrq;
    use super::*;

    struct Rig {
        kbc: I8042<RecordingIrq>,
        irq1: RecordingIrq,
        irq12: RecordingIrq,
    }

    fn rig() -> Rig {
        let irq1 = RecordingIrq::default();
        let irq12 = RecordingIrq::default();
        Rig {
            kbc: I8042::new(irq1.clone(), irq12.clone()),
            irq1,
            irq12,
        }
    }

    impl Rig {
        fn command(&mut self, cmd: u8) -> I8042Effects {
            self.kbc.write(COMMAND_PORT, cmd)
        }
        fn data(&mut self, value: u8) -> I8042Effects {
            self.kbc.write(DATA_PORT, value)
        }
        fn drain(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.kbc.read(COMMAND_PORT) & status::OBF != 0 {
                out.push(self.kbc.read(DATA_PORT));
            }
            out
        }
    }

    #[test]
    fn self_test_answers_55_and_sets_sys() {
        let mut r = rig();
        r.command(0xAA);
        assert_eq!(r.drain(), [0x55]);
        assert_ne!(r.kbc.read(COMMAND_PORT) & status::SYS, 0);
    }

    #[test]
    fn command_byte_write_then_read_back() {
        let mut r = rig();
        r.command(0x60);
        r.data(0x47);
        r.command(0x20);
        assert_eq!(r.drain(), [0x47]);
    }

    #[test]
    fn status_a2_tracks_last_port_written() {
        let mut r = rig();
        r.command(0xAD);
        let after_command = r.kbc.read(COMMAND_PORT) & status::A2;
        r.data(0xF4);
        let after_data = r.kbc.read(COMMAND_PORT) & status::A2;
        assert_eq!((after_command, after_data), (status::A2, 0));
    }

    #[test]
    fn interface_tests_answer_zero() {
        let mut r = rig();
        r.command(0xAB);
        r.drain();
        r.command(0xA9);
        assert_eq!(r.drain(), [0x00]);
    }

    #[test]
    fn keyboard_data_raises_irq1_and_read_lowers_it() {
        let mut r = rig();
        r.kbc.key_event(Key::Char('a'), true);
        let raised = r.irq1.level.get();
        let byte = r.kbc.read(DATA_PORT);
        assert!(raised);
        assert_eq!(byte, 0x1C);
        assert!(!r.irq1.level.get());
    }

    #[test]
    fn each_queued_byte_gives_a_fresh_irq1_edge() {
        let mut r = rig();
        r.kbc.key_event(Key::Up, true);
        r.drain();
        assert_eq!(r.irq1.rising_edges.get(), 2);
    }

    #[test]
    fn keyboard_irq_disabled_in_command_byte_stays_low() {
        let mut r = rig();
        r.command(0x60);
        r.data(0x00);
        r.kbc.key_event(Key::Char('a'), true);
        assert!(!r.irq1.level.get());
        assert_ne!(r.kbc.read(COMMAND_PORT) & status::OBF, 0);
    }

    #[test]
    fn xlat_translates_set2_make_and_break_to_set1() {
        let mut r = rig();
        r.command(0x60);
        r.data(ccb::KBD_INT | ccb::XLAT);
        r.kbc.key_event_set2(&[0x1C]);
        r.kbc.key_event_set2(&[0xE0, 0xF0, 0x75]);
        assert_eq!(r.drain(), [0x1E, 0xE0, 0xC8]);
    }

    #[test]
    fn xlat_translates_identify_response() {
        let mut r = rig();
        r.command(0x60);
        r.data(ccb::XLAT);
        r.data(0xF2);
        assert_eq!(r.drain(), [ACK, 0xAB, 0x41]);
    }

    #[test]
    fn keyboard_disabled_by_ad_holds_data_until_ae() {
        let mut r = rig();
        r.command(0xAD);
        r.kbc.key_event(Key::Enter, true);
        let while_disabled = r.drain();
        r.command(0xAE);
        assert!(while_disabled.is_empty());
        assert_eq!(r.drain(), [0x5A]);
    }

    #[test]
    fn keyboard_reset_through_port_60() {
        let mut r = rig();
        r.data(0xFF);
        assert_eq!(r.drain(), [ACK, BAT_OK]);
    }

    #[test]
    fn d4_sends_to_mouse_and_reply_sets_auxb_and_irq12() {
        let mut r = rig();
        r.command(0xD4);
        r.data(0xF2);
        let status = r.kbc.read(COMMAND_PORT);
        assert_ne!(status & status::AUXB, 0);
        assert!(r.irq12.level.get());
        assert_eq!(r.drain(), [ACK, 0x00]);
    }

    #[test]
    fn mouse_packet_reaches_guest_when_enabled() {
        let mut r = rig();
        r.command(0xD4);
        r.data(0xF4);
        r.drain();
        r.kbc.mouse_event(1, -1, 0, buttons::RIGHT);
        assert_eq!(r.drain(), [0x0A, 0x01, 0x01]);
        assert_eq!(r.irq12.rising_edges.get(), 4);
    }

    #[test]
    fn aux_disabled_by_a7_holds_mouse_data_until_a8() {
        let mut r = rig();
        r.command(0xD4);
        r.data(0xF4);
        r.drain();
        r.command(0xA7);
        r.kbc.mouse_event(1, 0, 0, 0);
        let while_disabled = r.drain();
        r.command(0xA8);
        assert!(while_disabled.is_empty());
        assert_eq!(r.drain(), [0x08, 0x01, 0x00]);
    }

    #[test]
    fn writing_to_the_keyboard_reenables_its_interface() {
        let mut r = rig();
        r.command(0xAD);
        r.data(0xF2);
        assert_eq!(r.drain(), [ACK, 0xAB, 0x83]);
    }

    #[test]
    fn d2_and_d3_echo_as_keyboard_and_aux_data() {
        let mut r = rig();
        r.command(0xD3);
        r.data(0x12);
        let aux = r.kbc.read(COMMAND_PORT) & status::AUXB;
        let first = r.drain();
        r.command(0xD2);
        r.data(0x34);
        assert_eq!(aux, status::AUXB);
        assert_eq!(first, [0x12]);
        assert_eq!(r.drain(), [0x34]);
    }

    #[test]
    fn output_port_write_toggles_a20() {
        let mut r = rig();
        r.command(0xD1);
        let off = r.data(0xDD);
        r.command(0xD1);
        let on = r.data(0xDF);
        assert_eq!(off.a20, Some(false));
        assert_eq!(on.a20, Some(true));
        assert!(!off.reset && !on.reset);
    }

    #[test]
    fn output_port_read_reports_a20_and_reset_high() {
        let mut r = rig();
        r.command(0xD0);
        assert_eq!(r.drain()[0] & 0x03, 0x03);
    }

    #[test]
    fn output_port_bit0_clear_requests_reset() {
        let mut r = rig();
        r.command(0xD1);
        let e = r.data(0x02);
        assert!(e.reset);
    }

    #[test]
    fn dd_and_df_gate_a20() {
        let mut r = rig();
        let off = r.command(0xDD);
        let on = r.command(0xDF);
        assert_eq!((off.a20, on.a20), (Some(false), Some(true)));
    }

    #[test]
    fn fe_pulses_reset_and_ff_does_not() {
        let mut r = rig();
        let fe = r.command(0xFE);
        let ff = r.command(0xFF);
        assert!(fe.reset);
        assert!(!ff.reset);
    }

    #[test]
    fn unknown_commands_and_ports_are_harmless() {
        let mut r = rig();
        for cmd in 0..=0xFFu8 {
            if cmd & 0xF0 != 0xF0 && cmd != 0xD1 {
                r.command(cmd);
                r.data(cmd);
            }
        }
        r.kbc.write(0x61, 0x12);
        assert_eq!(r.kbc.read(0x61), 0xFF);
    }

    #[test]
    fn empty_data_port_reads_last_byte() {
        let mut r = rig();
        r.command(0xAA);
        r.drain();
        assert_eq!(r.kbc.read(DATA_PORT), 0x55);
    }

    #[test]
    fn command_byte_sys_bit_shows_in_status() {
        let mut r = rig();
        r.command(0x60);
        r.data(ccb::SYS);
        assert_ne!(r.kbc.read(COMMAND_PORT) & status::SYS, 0);
    }

    #[test]
    fn reset_clears_pending_output_and_lowers_irqs() {
        let mut r = rig();
        r.kbc.key_event(Key::Char('a'), true);
        r.kbc.reset();
        assert_eq!(r.kbc.read(COMMAND_PORT) & status::OBF, 0);
        assert!(!r.irq1.level.get());
        assert!(r.kbc.a20());
    }

    #[test]
    fn state_round_trips() {
        let mut r = rig();
        r.command(0x60);
        r.data(0x65);
        r.kbc.key_event(Key::Char('z'), true);
        let copy = I8042::from_state(
            &r.kbc.state(),
            RecordingIrq::default(),
            RecordingIrq::default(),
        );
        assert_eq!(copy.state(), r.kbc.state());
    }

    #[test]
    fn port92_bit1_gates_a20_and_bit0_edge_resets() {
        let mut p = SystemControlA::new();
        let a20 = p.write(0x02);
        let reset = p.write(0x03);
        let held = p.write(0x03);
        assert_eq!(a20.a20, Some(true));
        assert!(reset.reset);
        assert!(!held.reset);
        assert!(p.a20());
    }
}
