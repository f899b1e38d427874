//! PS/2 devices behind the i8042: an MF2 keyboard (scancode set 2 native) and
//! a Microsoft IntelliMouse (3-byte packets, 4-byte after the 200,100,80
//! sample-rate knock).
//!
//! Both are byte-stream devices: the controller hands them each byte the guest
//! writes ([`Ps2Keyboard::write`], [`Ps2Mouse::write`]) and pulls their output
//! one byte at a time (`pop`). Host input arrives through
//! [`Ps2Keyboard::key_event_set2`] / [`Ps2Keyboard::key_event`] and
//! [`Ps2Mouse::mouse_event`]. Output queues are bounded: host input that does
//! not fit is dropped (keyboard) or merged into the next packet (mouse);
//! command responses always fit.

use std::collections::VecDeque;

/// Acknowledge: the device accepted a command or parameter byte.
pub const ACK: u8 = 0xFA;
/// Resend: the device did not understand the byte.
pub const RESEND: u8 = 0xFE;
/// Basic assurance test passed (after reset).
pub const BAT_OK: u8 = 0xAA;

/// Host input bytes a device buffers before it drops (keyboard) or merges
/// (mouse) new input. A real keyboard buffers 16 keys; a few more cost nothing.
const INPUT_QUEUE_LIMIT: usize = 64;
/// Room always left for command responses (the longest is 4 bytes).
const RESPONSE_RESERVE: usize = 8;

/// Scancode set 2 → set 1, as the 8042 translates (and as a set-1 keyboard
/// sends). Entries 0x00-0x7F follow the key positions; 0x80 and up pass
/// through except 0x83 (F7) and 0x84 (Alt+SysRq), whose set-2 codes lie there.
const SET2_TO_SET1_LOW: [u8; 128] = [
    // 0x00-0x0F: -, F9, -, F5, F3, F1, F2, F12, -, F10, F8, F6, F4, Tab, `, -
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59,
    // 0x10-0x1F: -, LAlt, LShift, -, LCtrl, Q, 1, -, -, -, Z, S, A, W, 2, -
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b,
    // 0x20-0x2F: -, C, X, D, E, 4, 3, -, -, Space, V, F, T, R, 5, -
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d,
    // 0x30-0x3F: -, N, B, H, G, Y, 6, -, -, -, M, J, U, 7, 8, -
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f,
    // 0x40-0x4F: -, ',', K, I, O, 0, 9, -, -, '.', /, L, ;, P, -, -
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61,
    // 0x50-0x5F: -, -, ', -, [, =, -, -, Caps, RShift, Enter, ], -, \, -, -
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76,
    // 0x60-0x6F: -, 102nd, -, -, -, -, Backspace, -, -, KP1, -, KP4, KP7, -, -, -
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f,
    // 0x70-0x7F: KP0, KP., KP2, KP5, KP6, KP8, Esc, NumLock, F11, KP+, KP3, KP-, KP*, KP9, Scroll, -
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54,
];

/// Translates one set-2 byte to set 1 (prefixes 0xE0/0xE1 and responses such
/// as 0xFA pass through; the 0xF0 break prefix is handled by the caller).
pub fn set2_to_set1(code: u8) -> u8 {
    match code {
        0x00..=0x7F => SET2_TO_SET1_LOW[usize::from(code)],
        0x83 => 0x41,
        0x84 => 0x54,
        _ => code,
    }
}

/// A few well-known keys, for host code that has no set-2 codes of its own.
/// The VNC layer produces set-2 sequences itself and uses
/// [`Ps2Keyboard::key_event_set2`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A letter `'a'..='z'` (case-insensitive) or digit `'0'..='9'`.
    Char(char),
    Escape,
    Enter,
    Space,
    Backspace,
    Tab,
    LeftShift,
    LeftCtrl,
    LeftAlt,
    Up,
    Down,
    Left,
    Right,
    Delete,
    /// F1-F12.
    F(u8),
}

impl Key {
    /// (extended, set-2 make code), or `None` for a value outside the set.
    fn set2(self) -> Option<(bool, u8)> {
        const LETTERS: [u8; 26] = [
            0x1C, 0x32, 0x21, 0x23, 0x24, 0x2B, 0x34, 0x33, 0x43, 0x3B, 0x42, 0x4B, 0x3A, 0x31,
            0x44, 0x4D, 0x15, 0x2D, 0x1B, 0x2C, 0x3C, 0x2A, 0x1D, 0x22, 0x35, 0x1A,
        ];
        const DIGITS: [u8; 10] = [0x45, 0x16, 0x1E, 0x26, 0x25, 0x2E, 0x36, 0x3D, 0x3E, 0x46];
        const FKEYS: [u8; 12] = [
            0x05, 0x06, 0x04, 0x0C, 0x03, 0x0B, 0x83, 0x0A, 0x01, 0x09, 0x78, 0x07,
        ];
        Some(match self {
            Key::Char(c) => {
                let c = c.to_ascii_lowercase();
                let code = match c {
                    'a'..='z' => LETTERS[usize::from(c as u8 - b'a')],
                    '0'..='9' => DIGITS[usize::from(c as u8 - b'0')],
                    _ => return None,
                };
                (false, code)
            }
            Key::Escape => (false, 0x76),
            Key::Enter => (false, 0x5A),
            Key::Space => (false, 0x29),
            Key::Backspace => (false, 0x66),
            Key::Tab => (false, 0x0D),
            Key::LeftShift => (false, 0x12),
            Key::LeftCtrl => (false, 0x14),
            Key::LeftAlt => (false, 0x11),
            Key::Up => (true, 0x75),
            Key::Down => (true, 0x72),
            Key::Left => (true, 0x6B),
            Key::Right => (true, 0x74),
            Key::Delete => (true, 0x71),
            Key::F(n @ 1..=12) => (false, FKEYS[usize::from(n - 1)]),
            Key::F(_) => return None,
        })
    }
}

/// Plain-data snapshot of a [`Ps2Keyboard`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ps2KeyboardState {
    pub queue: Vec<u8>,
    pub pending: Option<u8>,
    pub scanning: bool,
    pub scancode_set: u8,
    pub leds: u8,
    pub typematic: u8,
    pub last_sent: u8,
}

/// An MF2 PS/2 keyboard.
#[derive(Clone, Debug)]
pub struct Ps2Keyboard {
    queue: VecDeque<u8>,
    /// A command waiting for its parameter byte (0xED, 0xF0, 0xF3).
    pending: Option<u8>,
    scanning: bool,
    scancode_set: u8,
    leds: u8,
    typematic: u8,
    last_sent: u8,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Ps2Keyboard {
    /// Default typematic byte: 10.9 characters/s, 500 ms delay.
    const DEFAULT_TYPEMATIC: u8 = 0x2B;

    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            pending: None,
            scanning: true,
            scancode_set: 2,
            leds: 0,
            typematic: Self::DEFAULT_TYPEMATIC,
            last_sent: 0,
        }
    }

    /// The LED bits last set by the guest (bit 0 Scroll, 1 Num, 2 Caps).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes the next output byte.
    pub fn pop(&mut self) -> Option<u8> {
        let byte = self.queue.pop_front()?;
        self.last_sent = byte;
        Some(byte)
    }

    fn respond(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.queue.len() < INPUT_QUEUE_LIMIT + RESPONSE_RESERVE {
                self.queue.push_back(b);
            }
        }
    }

    fn set_defaults(&mut self) {
        self.typematic = Self::DEFAULT_TYPEMATIC;
        self.scancode_set = 2;
    }

    /// A byte from the host: a guest write to port 0x60 with no controller
    /// command pending.
    pub fn write(&mut self, byte: u8) {
        if let Some(cmd) = self.pending.take() {
            match cmd {
                0xED => {
                    self.leds = byte & 0x07;
                    self.respond(&[ACK]);
                }
                0xF3 => {
                    self.typematic = byte & 0x7F;
                    self.respond(&[ACK]);
                }
                _ => match byte {
                    0 => {
                        let set = self.scancode_set;
                        self.respond(&[ACK, set]);
                    }
                    1 | 2 => {
                        self.scancode_set = byte;
                        self.respond(&[ACK]);
                    }
                    // Set 3 is not implemented: refuse it, so guests stay in set 2.
                    _ => self.respond(&[RESEND]),
                },
            }
            return;
        }
        match byte {
            0xED | 0xF0 | 0xF3 => {
                self.pending = Some(byte);
                self.respond(&[ACK]);
            }
            0xEE => self.respond(&[0xEE]),
            0xF2 => self.respond(&[ACK, 0xAB, 0x83]),
            0xF4 => {
                self.scanning = true;
                self.respond(&[ACK]);
            }
            0xF5 => {
                self.set_defaults();
                self.scanning = false;
                self.respond(&[ACK]);
            }
            0xF6 => {
                self.set_defaults();
                self.scanning = true;
                self.respond(&[ACK]);
            }
            // Set-3 key-type commands: accepted, meaningless in set 2.
            0xF7..=0xFD => self.respond(&[ACK]),
            0xFE => {
                let last = self.last_sent;
                self.respond(&[last]);
            }
            0xFF => {
                self.queue.clear();
                self.set_defaults();
                self.leds = 0;
                self.scanning = true;
                self.respond(&[ACK, BAT_OK]);
            }
            _ => self.respond(&[RESEND]),
        }
    }

    /// One key's make or break sequence in set 2 (e.g. `[0x1C]`,
    /// `[0xF0, 0x1C]`, `[0xE0, 0xF0, 0x75]`), as the VNC layer produces them.
    /// Converted to set 1 when the guest selected it. Dropped whole when
    /// scanning is disabled, the sequence is longer than 8 bytes, or the
    /// queue is full. Returns whether it was queued.
    pub fn key_event_set2(&mut self, bytes: &[u8]) -> bool {
        if !self.scanning
            || bytes.is_empty()
            || bytes.len() > 8
            || self.queue.len() + bytes.len() > INPUT_QUEUE_LIMIT
        {
            return false;
        }
        if self.scancode_set == 1 {
            let mut release = false;
            for &b in bytes {
                if b == 0xF0 {
                    release = true;
                    continue;
                }
                let code = set2_to_set1(b) | if release { 0x80 } else { 0 };
                release = false;
                self.queue.push_back(code);
            }
        } else {
            self.queue.extend(bytes.iter().copied());
        }
        true
    }

    /// Press or release one of the well-known [`Key`]s.
    pub fn key_event(&mut self, key: Key, pressed: bool) -> bool {
        let Some((extended, code)) = key.set2() else {
            return false;
        };
        let mut seq = [0u8; 3];
        let mut n = 0;
        if extended {
            seq[n] = 0xE0;
            n += 1;
        }
        if !pressed {
            seq[n] = 0xF0;
            n += 1;
        }
        seq[n] = code;
        self.key_event_set2(&seq[..=n])
    }

    pub fn state(&self) -> Ps2KeyboardState {
        Ps2KeyboardState {
            queue: self.queue.iter().copied().collect(),
            pending: self.pending,
            scanning: self.scanning,
            scancode_set: self.scancode_set,
            leds: self.leds,
            typematic: self.typematic,
            last_sent: self.last_sent,
        }
    }

    pub fn from_state(s: &Ps2KeyboardState) -> Self {
        let mut queue: VecDeque<u8> = s.queue.iter().copied().collect();
        queue.truncate(INPUT_QUEUE_LIMIT + RESPONSE_RESERVE);
        Self {
            queue,
            pending: s.pending,
            scanning: s.scanning,
            scancode_set: if s.scancode_set == 1 { 1 } else { 2 },
            leds: s.leds & 7,
            typematic: s.typematic & 0x7F,
            last_sent: s.last_sent,
        }
    }
}

/// Mouse buttons for [`Ps2Mouse::mouse_event`] (bit positions as in a packet).
pub mod buttons {
    pub const LEFT: u8 = 1 << 0;
    pub const RIGHT: u8 = 1 << 1;
    pub const MIDDLE: u8 = 1 << 2;
}

/// Plain-data snapshot of a [`Ps2Mouse`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ps2MouseState {
    pub queue: Vec<u8>,
    pub pending: Option<u8>,
    pub enabled: bool,
    pub remote: bool,
    pub wrap: bool,
    pub scaling_2to1: bool,
    pub resolution: u8,
    pub sample_rate: u8,
    pub rate_history: [u8; 3],
    pub intellimouse: bool,
    pub buttons: u8,
    pub dx: i32,
    pub dy: i32,
    pub dz: i32,
    pub last_sent: u8,
}

/// A Microsoft IntelliMouse (PS/2, wheel).
#[derive(Clone, Debug)]
pub struct Ps2Mouse {
    queue: VecDeque<u8>,
    /// A command waiting for its parameter (0xE8, 0xF3).
    pending: Option<u8>,
    enabled: bool,
    remote: bool,
    wrap: bool,
    scaling_2to1: bool,
    resolution: u8,
    sample_rate: u8,
    /// The last three sample rates set, oldest first (the IntelliMouse knock).
    rate_history: [u8; 3],
    intellimouse: bool,
    buttons: u8,
    /// Motion not yet reported, PS/2 orientation (y up, z as sent).
    dx: i32,
    dy: i32,
    dz: i32,
    /// A report is owed (motion or a button change).
    dirty: bool,
    last_sent: u8,
}

impl Default for Ps2Mouse {
    fn default() -> Self {
        Self::new()
    }
}

impl Ps2Mouse {
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            pending: None,
            enabled: false,
            remote: false,
            wrap: false,
            scaling_2to1: false,
            resolution: 2,
            sample_rate: 100,
            rate_history: [0; 3],
            intellimouse: false,
            buttons: 0,
            dx: 0,
            dy: 0,
            dz: 0,
            dirty: false,
            last_sent: 0,
        }
    }

    /// The device ID the mouse reports: 0, or 3 once the knock was given.
    pub fn device_id(&self) -> u8 {
        if self.intellimouse { 3 } else { 0 }
    }

    fn packet_len(&self) -> usize {
        if self.intellimouse { 4 } else { 3 }
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes the next output byte; room freed lets merged motion through.
    pub fn pop(&mut self) -> Option<u8> {
        let byte = self.queue.pop_front()?;
        self.last_sent = byte;
        if self.queue.is_empty() {
            self.stream_report();
        }
        Some(byte)
    }

    fn respond(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.queue.len() < INPUT_QUEUE_LIMIT + RESPONSE_RESERVE {
                self.queue.push_back(b);
            }
        }
    }

    fn set_defaults(&mut self) {
        self.sample_rate = 100;
        self.resolution = 2;
        self.scaling_2to1 = false;
        self.remote = false;
        self.enabled = false;
        self.dx = 0;
        self.dy = 0;
        self.dz = 0;
        self.dirty = false;
    }

    /// A byte from the host (controller command 0xD4 then port 0x60).
    pub fn write(&mut self, byte: u8) {
        if let Some(cmd) = self.pending.take() {
            if cmd == 0xE8 {
                self.resolution = byte & 3;
            } else {
                self.set_sample_rate(byte);
            }
            self.respond(&[ACK]);
            return;
        }
        if self.wrap && byte != 0xEC && byte != 0xFF {
            self.respond(&[byte]);
            return;
        }
        match byte {
            0xE6 => {
                self.scaling_2to1 = false;
                self.respond(&[ACK]);
            }
            0xE7 => {
                self.scaling_2to1 = true;
                self.respond(&[ACK]);
            }
            0xE8 | 0xF3 => {
                self.pending = Some(byte);
                self.respond(&[ACK]);
            }
            0xE9 => {
                let status = (u8::from(self.remote) << 6)
                    | (u8::from(self.enabled) << 5)
                    | (u8::from(self.scaling_2to1) << 4)
                    | ((self.buttons & buttons::LEFT) << 2)
                    | ((self.buttons & buttons::MIDDLE) >> 1)
                    | ((self.buttons & buttons::RIGHT) >> 1);
                let (res, rate) = (self.resolution, self.sample_rate);
                self.respond(&[ACK, status, res, rate]);
            }
            0xEA => {
                self.remote = false;
                self.respond(&[ACK]);
            }
            0xEB => {
                self.respond(&[ACK]);
                self.emit_packet(false);
            }
            0xEC => {
                self.wrap = false;
                self.respond(&[ACK]);
            }
            0xEE => {
                self.wrap = true;
                self.respond(&[ACK]);
            }
            0xF0 => {
                self.remote = true;
                self.respond(&[ACK]);
            }
            0xF2 => {
                let id = self.device_id();
                self.respond(&[ACK, id]);
            }
            0xF4 => {
                self.enabled = true;
                self.respond(&[ACK]);
            }
            0xF5 => {
                self.enabled = false;
                self.respond(&[ACK]);
            }
            0xF6 => {
                self.set_defaults();
                self.respond(&[ACK]);
            }
            0xFE => {
                let last = self.last_sent;
                self.respond(&[last]);
            }
            0xFF => {
                self.queue.clear();
                self.set_defaults();
                self.wrap = false;
                self.intellimouse = false;
                self.rate_history = [0; 3];
                self.respond(&[ACK, BAT_OK, 0x00]);
            }
            _ => self.respond(&[RESEND]),
        }
    }

    fn set_sample_rate(&mut self, rate: u8) {
        self.sample_rate = rate;
        self.rate_history = [self.rate_history[1], self.rate_history[2], rate];
        if self.rate_history == [200, 100, 80] {
            self.intellimouse = true;
        }
    }

    /// Host pointer input: relative motion in screen orientation (`dx` right,
    /// `dy` down), wheel `dz` in IntelliMouse orientation (negative = away
    /// from the user, "up"), and the [`buttons`] now held. Motion accumulates
    /// while the queue is full or the mouse is in remote mode.
    pub fn mouse_event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        let buttons = buttons & 7;
        if !self.enabled && !self.remote {
            // Reporting is off: a later enable must not replay old motion.
            self.buttons = buttons;
            return;
        }
        self.dx = self.dx.saturating_add(dx);
        self.dy = self.dy.saturating_sub(dy);
        self.dz = self.dz.saturating_add(dz);
        if buttons != self.buttons || dx != 0 || dy != 0 || dz != 0 {
            self.dirty = true;
        }
        self.buttons = buttons;
        self.stream_report();
    }

    fn stream_report(&mut self) {
        if self.enabled
            && !self.remote
            && !self.wrap
            && self.dirty
            && self.queue.len() + self.packet_len() <= INPUT_QUEUE_LIMIT
        {
            self.emit_packet(true);
        }
    }

    /// 2:1 scaling, applied to stream-mode reports only.
    fn scale_2to1(v: i32) -> i32 {
        let magnitude = match v.unsigned_abs() {
            0 => 0,
            1 | 2 => 1,
            3 => 3,
            4 => 6,
            5 => 9,
            m => m.saturating_mul(2).min(i32::MAX as u32),
        } as i32;
        magnitude * v.signum()
    }

    /// Emits one packet from the accumulated motion. Motion beyond the 9-bit
    /// range saturates and sets the overflow bit; the excess is dropped,
    /// as a real mouse drops it.
    fn emit_packet(&mut self, stream: bool) {
        if stream && self.scaling_2to1 {
            self.dx = Self::scale_2to1(self.dx);
            self.dy = Self::scale_2to1(self.dy);
        }
        fn axis(v: i32) -> (u8, bool, bool) {
            let clamped = v.clamp(-256, 255);
            (clamped as u8, clamped < 0, clamped != v)
        }
        let (x, x_sign, x_over) = axis(self.dx);
        let (y, y_sign, y_over) = axis(self.dy);
        let b0 = (self.buttons & 7)
            | 0x08
            | (u8::from(x_sign) << 4)
            | (u8::from(y_sign) << 5)
            | (u8::from(x_over) << 6)
            | (u8::from(y_over) << 7);
        self.queue.extend([b0, x, y]);
        if self.intellimouse {
            self.queue.push_back(self.dz.clamp(-8, 7) as u8);
        }
        self.dx = 0;
        self.dy = 0;
        self.dz = 0;
        self.dirty = false;
    }

    pub fn state(&self) -> Ps2MouseState {
        Ps2MouseState {
            queue: self.queue.iter().copied().collect(),
            pending: self.pending,
            enabled: self.enabled,
            remote: self.remote,
            wrap: self.wrap,
            scaling_2to1: self.scaling_2to1,
            resolution: self.resolution,
            sample_rate: self.sample_rate,
            rate_history: self.rate_history,
            intellimouse: self.intellimouse,
            buttons: self.buttons,
            dx: self.dx,
            dy: self.dy,
            dz: self.dz,
            last_sent: self.last_sent,
        }
    }

    pub fn from_state(s: &Ps2MouseState) -> Self {
        let mut queue: VecDeque<u8> = s.queue.iter().copied().collect();
        queue.truncate(INPUT_QUEUE_LIMIT + RESPONSE_RESERVE);
        Self {
            queue,
            pending: s.pending,
            enabled: s.enabled,
            remote: s.remote,
            wrap: s.wrap,
            scaling_2to1: s.scaling_2to1,
            resolution: s.resolution & 3,
            sample_rate: s.sample_rate,
            rate_history: s.rate_history,
            intellimouse: s.intellimouse,
            buttons: s.buttons & 7,
            dx: s.dx,
            dy: s.dy,
            dz: s.dz,
            dirty: s.dx != 0 || s.dy != 0 || s.dz != 0,
            last_sent: s.last_sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_kbd(k: &mut Ps2Keyboard) -> Vec<u8> {
        std::iter::from_fn(|| k.pop()).collect()
    }

    fn drain_mouse(m: &mut Ps2Mouse) -> Vec<u8> {
        std::iter::from_fn(|| m.pop()).collect()
    }

    #[test]
    fn translation_table_maps_well_known_keys() {
        assert_eq!(set2_to_set1(0x1C), 0x1E); // A
        assert_eq!(set2_to_set1(0x76), 0x01); // Esc
        assert_eq!(set2_to_set1(0x5A), 0x1C); // Enter
        assert_eq!(set2_to_set1(0x83), 0x41); // F7
        assert_eq!(set2_to_set1(0xFA), 0xFA); // ACK passes through
        assert_eq!(set2_to_set1(0xE0), 0xE0);
    }

    #[test]
    fn keyboard_identify_answers_ack_ab_83() {
        let mut k = Ps2Keyboard::new();
        k.write(0xF2);
        assert_eq!(drain_kbd(&mut k), [ACK, 0xAB, 0x83]);
    }

    #[test]
    fn keyboard_reset_answers_ack_then_bat_ok() {
        let mut k = Ps2Keyboard::new();
        k.write(0xFF);
        assert_eq!(drain_kbd(&mut k), [ACK, BAT_OK]);
    }

    #[test]
    fn keyboard_echo_answers_ee_without_ack() {
        let mut k = Ps2Keyboard::new();
        k.write(0xEE);
        assert_eq!(drain_kbd(&mut k), [0xEE]);
    }

    #[test]
    fn keyboard_set_leds_acks_command_and_parameter() {
        let mut k = Ps2Keyboard::new();
        k.write(0xED);
        k.write(0x05);
        assert_eq!(drain_kbd(&mut k), [ACK, ACK]);
        assert_eq!(k.leds(), 0x05);
    }

    #[test]
    fn keyboard_get_scancode_set_reports_two() {
        let mut k = Ps2Keyboard::new();
        k.write(0xF0);
        k.write(0x00);
        assert_eq!(drain_kbd(&mut k), [ACK, ACK, 2]);
    }

    #[test]
    fn keyboard_refuses_scancode_set_three() {
        let mut k = Ps2Keyboard::new();
        k.write(0xF0);
        k.write(0x03);
        assert_eq!(drain_kbd(&mut k), [ACK, RESEND]);
    }

    #[test]
    fn keyboard_in_set_one_sends_translated_break_codes() {
        let mut k = Ps2Keyboard::new();
        k.write(0xF0);
        k.write(0x01);
        drain_kbd(&mut k);
        k.key_event(Key::Up, false);
        assert_eq!(drain_kbd(&mut k), [0xE0, 0xC8]);
    }

    #[test]
    fn keyboard_unknown_command_answers_resend() {
        let mut k = Ps2Keyboard::new();
        k.write(0x12);
        assert_eq!(drain_kbd(&mut k), [RESEND]);
    }

    #[test]
    fn keyboard_resend_repeats_last_byte() {
        let mut k = Ps2Keyboard::new();
        k.write(0xF2);
        drain_kbd(&mut k);
        k.write(0xFE);
        assert_eq!(drain_kbd(&mut k), [0x83]);
    }

    #[test]
    fn keyboard_disabled_drops_keys() {
        let mut k = Ps2Keyboard::new();
        k.write(0xF5);
        drain_kbd(&mut k);
        let queued = k.key_event(Key::Char('a'), true);
        assert!(!queued);
        assert!(!k.has_output());
    }

    #[test]
    fn keyboard_extended_key_release_is_e0_f0_code() {
        let mut k = Ps2Keyboard::new();
        k.key_event(Key::Left, false);
        assert_eq!(drain_kbd(&mut k), [0xE0, 0xF0, 0x6B]);
    }

    #[test]
    fn keyboard_queue_is_bounded() {
        let mut k = Ps2Keyboard::new();
        for _ in 0..1000 {
            k.key_event_set2(&[0x1C]);
        }
        assert_eq!(drain_kbd(&mut k).len(), INPUT_QUEUE_LIMIT);
    }

    #[test]
    fn keyboard_state_round_trips() {
        let mut k = Ps2Keyboard::new();
        k.write(0xED);
        k.key_event(Key::Char('q'), true);
        let copy = Ps2Keyboard::from_state(&k.state());
        assert_eq!(copy.state(), k.state());
    }

    #[test]
    fn mouse_reset_answers_ack_bat_and_id() {
        let mut m = Ps2Mouse::new();
        m.write(0xFF);
        assert_eq!(drain_mouse(&mut m), [ACK, BAT_OK, 0x00]);
    }

    #[test]
    fn mouse_becomes_intellimouse_after_rate_knock() {
        let mut m = Ps2Mouse::new();
        for rate in [200, 100, 80] {
            m.write(0xF3);
            m.write(rate);
        }
        m.write(0xF2);
        let out = drain_mouse(&mut m);
        assert_eq!(out[out.len() - 2..], [ACK, 0x03]);
    }

    #[test]
    fn mouse_without_knock_identifies_as_zero() {
        let mut m = Ps2Mouse::new();
        m.write(0xF2);
        assert_eq!(drain_mouse(&mut m), [ACK, 0x00]);
    }

    #[test]
    fn mouse_status_request_reports_mode_resolution_and_rate() {
        let mut m = Ps2Mouse::new();
        m.write(0xE8);
        m.write(3);
        m.write(0xF4);
        m.write(0xE7);
        drain_mouse(&mut m);
        m.write(0xE9);
        assert_eq!(drain_mouse(&mut m), [ACK, 0x30, 3, 100]);
    }

    #[test]
    fn mouse_disabled_sends_no_packets() {
        let mut m = Ps2Mouse::new();
        m.mouse_event(5, 5, 0, 0);
        assert!(!m.has_output());
    }

    #[test]
    fn motion_while_disabled_is_not_replayed_on_enable() {
        let mut m = Ps2Mouse::new();
        m.mouse_event(5, 5, 0, 0);
        m.write(0xF4);
        m.mouse_event(1, 0, 0, 0);
        assert_eq!(drain_mouse(&mut m), [ACK, 0x08, 0x01, 0x00]);
    }

    #[test]
    fn mouse_packet_carries_sign_bits_and_inverts_y() {
        let mut m = Ps2Mouse::new();
        m.write(0xF4);
        drain_mouse(&mut m);
        m.mouse_event(-3, 4, 0, buttons::LEFT);
        assert_eq!(drain_mouse(&mut m), [0x08 | 0x01 | 0x10 | 0x20, 0xFD, 0xFC]);
    }

    #[test]
    fn scaling_2to1_applies_to_stream_reports() {
        let mut m = Ps2Mouse::new();
        m.write(0xE7);
        m.write(0xF4);
        drain_mouse(&mut m);
        m.mouse_event(4, -10, 0, 0);
        assert_eq!(drain_mouse(&mut m), [0x08, 6, 20]);
    }

    #[test]
    fn mouse_large_motion_sets_overflow_and_saturates() {
        let mut m = Ps2Mouse::new();
        m.write(0xF4);
        drain_mouse(&mut m);
        m.mouse_event(1000, 0, 0, 0);
        assert_eq!(drain_mouse(&mut m), [0x08 | 0x40, 0xFF, 0x00]);
    }

    #[test]
    fn intellimouse_packet_has_wheel_byte() {
        let mut m = Ps2Mouse::new();
        for rate in [200, 100, 80] {
            m.write(0xF3);
            m.write(rate);
        }
        m.write(0xF4);
        drain_mouse(&mut m);
        m.mouse_event(0, 0, -1, 0);
        assert_eq!(drain_mouse(&mut m), [0x08, 0, 0, 0xFF]);
    }

    #[test]
    fn mouse_remote_mode_reports_on_read_data() {
        let mut m = Ps2Mouse::new();
        m.write(0xF0);
        m.write(0xF4);
        drain_mouse(&mut m);
        m.mouse_event(2, 0, 0, 0);
        assert!(!m.has_output());
        m.write(0xEB);
        assert_eq!(drain_mouse(&mut m), [ACK, 0x08, 2, 0]);
    }

    #[test]
    fn mouse_wrap_mode_echoes_bytes() {
        let mut m = Ps2Mouse::new();
        m.write(0xEE);
        m.write(0x42);
        m.write(0xEC);
        assert_eq!(drain_mouse(&mut m), [ACK, 0x42, ACK]);
    }

    #[test]
    fn mouse_motion_merges_while_queue_is_full() {
        let mut m = Ps2Mouse::new();
        m.write(0xF4);
        drain_mouse(&mut m);
        for _ in 0..100 {
            m.mouse_event(1, 0, 0, 0);
        }
        let out = drain_mouse(&mut m);
        let total: i32 = out.chunks(3).map(|p| i32::from(p[1] as i8)).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn mouse_state_round_trips() {
        let mut m = Ps2Mouse::new();
        m.write(0xF4);
        m.mouse_event(1, 2, 0, buttons::RIGHT);
        let copy = Ps2Mouse::from_state(&m.state());
        assert_eq!(copy.state(), m.state());
    }
}
