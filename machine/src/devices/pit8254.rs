//! Intel 8254 programmable interval timer, plus the channel-2 half of port
//! 0x61 (NMI status and control).
//!
//! Offsets 0-2 are the counters (ports 0x40-0x42), offset 3 the control word
//! (0x43). The counters tick at 1.193182 MHz, derived from the injected
//! [`Clock`]: nothing happens per tick. Each channel remembers where its
//! counting cycle started; counter values and OUT levels are computed from the
//! elapsed tick count. Channel 0's OUT drives IRQ0: [`Pit8254::poll`] raises an
//! edge for every rising edge of OUT that became due (several overdue edges
//! coalesce into one, as an edge-triggered PIC would see them), and
//! [`Pit8254::next_deadline`] says when the next one is due.
//!
//! Modelling choices:
//! - The one-clock delay between a count write and the counter loading is not
//!   modelled: counting starts at the write.
//! - A new count written while mode 2 or 3 runs takes effect at the end of the
//!   current period (real mode 3 switches at the end of the current half-cycle).
//! - Modes 2 and 3 treat a count of 1 as 2 (1 is illegal there and would
//!   otherwise ask for an interrupt every 838 ns).
//! - At power-on no channel counts until programmed; gates 0 and 1 are tied
//!   high, gate 2 follows port 0x61 bit 0.

use std::time::Duration;

use super::{Clock, IrqLine};

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Port 0x61 refresh-request toggle period (15.085 µs on the AT).
const REFRESH_TOGGLE_NS: u128 = 15_085;

/// Whole PIT ticks elapsed at `t`.
fn ticks_at(t: Duration) -> u64 {
    (t.as_nanos() * PIT_HZ as u128 / 1_000_000_000) as u64
}

/// The earliest time at which `tick` has elapsed.
fn time_of_tick(tick: u64) -> Duration {
    let ns = (tick as u128 * 1_000_000_000).div_ceil(PIT_HZ as u128);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

fn from_bcd(raw: u16) -> u32 {
    (0..4).fold(0, |acc, i| {
        let digit = u32::from((raw >> (12 - 4 * i)) & 0xF);
        acc * 10 + digit
    })
}

fn to_bcd(value: u32) -> u16 {
    (0..4).fold(0u16, |acc, i| {
        let digit = (value / 10u32.pow(3 - i)) % 10;
        (acc << 4) | digit as u16
    })
}

/// One counter's state, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PitChannelState {
    /// Mode 0-5.
    pub mode: u8,
    /// BCD counting.
    pub bcd: bool,
    /// Read/write access: 1 = LSB, 2 = MSB, 3 = LSB then MSB.
    pub access: u8,
    /// The last count the guest wrote (raw register value).
    pub reload: u16,
    /// The count of the cycle in progress.
    pub active: u16,
    /// A counting cycle is in progress (mode 1/5: triggered).
    pub armed: bool,
    /// A count has been written since the last control word.
    pub loaded: bool,
    /// Ticks advance (gate permits counting).
    pub running: bool,
    /// Ticks counted in this cycle before `start_tick`.
    pub base_ticks: u64,
    /// The tick at which the current run of counting began.
    pub start_tick: u64,
    /// The counter value shown while no cycle is in progress.
    pub idle_count: u16,
    /// OUT while no cycle is in progress.
    pub idle_out: bool,
    /// Modes 2/3: the tick at which `reload` replaces `active`.
    pub pending_at: Option<u64>,
    /// GATE input level.
    pub gate: bool,
    /// A written count has not reached the counting element yet.
    pub null_count: bool,
    /// LSB of a two-byte count write, waiting for its MSB.
    pub write_lsb: Option<u8>,
    /// Next live two-byte read returns the MSB.
    pub read_msb_next: bool,
    /// A latched count, not fully read yet.
    pub latched_count: Option<u16>,
    /// Next read of the latched count returns its MSB.
    pub latch_msb_next: bool,
    /// A latched status byte, not read yet.
    pub latched_status: Option<u8>,
}

impl PitChannelState {
    fn power_on(gate: bool) -> Self {
        Self {
            mode: 0,
            bcd: false,
            access: 3,
            reload: 0,
            active: 0,
            armed: false,
            loaded: false,
            running: false,
            base_ticks: 0,
            start_tick: 0,
            idle_count: 0,
            idle_out: true,
            pending_at: None,
            gate,
            null_count: false,
            write_lsb: None,
            read_msb_next: false,
            latched_count: None,
            latch_msb_next: false,
            latched_status: None,
        }
    }
}

/// The whole PIT's state, for saved states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PitState {
    pub channels: [PitChannelState; 3],
    /// Port 0x61 bits 0-3 as written.
    pub port61: u8,
    /// Tick up to which IRQ0 edges have been delivered.
    pub irq_tick: u64,
    /// The level last driven on IRQ0.
    pub irq_level: bool,
}

#[derive(Clone, Debug)]
struct Channel {
    s: PitChannelState,
}

/// Rising edges of OUT with ticks in `(k1, k2]` for a cycle of `n` ticks.
fn edges_between(mode: u8, n: u64, k1: u64, k2: u64) -> u64 {
    match mode {
        2 | 3 => k2 / n - k1 / n,
        4 | 5 => u64::from(k1 <= n && n < k2),
        _ => u64::from(k1 < n && n <= k2),
    }
}

/// The first tick count `> k` at which OUT rises, for a cycle of `n` ticks.
fn next_edge_after(mode: u8, n: u64, k: u64) -> Option<u64> {
    match mode {
        2 | 3 => Some((k / n + 1) * n),
        4 | 5 => (k <= n).then_some(n + 1),
        _ => (k < n).then_some(n),
    }
}

fn out_for(mode: u8, n: u64, k: u64) -> bool {
    match mode {
        2 => k % n != n - 1,
        3 => k % n < n.div_ceil(2),
        4 | 5 => k != n,
        _ => k >= n,
    }
}

impl Channel {
    fn mode(&self) -> u8 {
        self.s.mode
    }

    /// Ticks in a cycle for a raw count.
    fn cycle_len(&self, raw: u16) -> u64 {
        let n = match (raw, self.s.bcd) {
            (0, false) => 0x1_0000,
            (0, true) => 10_000,
            (raw, false) => u64::from(raw),
            (raw, true) => u64::from(from_bcd(raw)).max(1),
        };
        if matches!(self.mode(), 2 | 3) {
            n.max(2)
        } else {
            n
        }
    }

    /// The count of the cycle in progress at tick `t` and the ticks elapsed
    /// in it, or `None` when no cycle is in progress.
    fn view(&self, t: u64) -> Option<(u64, u64)> {
        if !self.s.armed {
            return None;
        }
        if let Some(at) = self.s.pending_at
            && t >= at
        {
            return Some((self.cycle_len(self.s.reload), t - at));
        }
        let k = if self.s.running {
            self.s.base_ticks + t.saturating_sub(self.s.start_tick)
        } else {
            self.s.base_ticks
        };
        Some((self.cycle_len(self.s.active), k))
    }

    /// Applies a pending reload that is due by `t`.
    fn settle(&mut self, t: u64) {
        if let Some(at) = self.s.pending_at
            && t >= at
        {
            self.s.active = self.s.reload;
            self.s.base_ticks = 0;
            self.s.start_tick = at;
            self.s.pending_at = None;
            self.s.null_count = false;
        }
    }

    fn out(&self, t: u64) -> bool {
        if matches!(self.mode(), 2 | 3) && !self.s.gate {
            return true;
        }
        match self.view(t) {
            Some((n, k)) => out_for(self.mode(), n, k),
            None => self.s.idle_out,
        }
    }

    /// The counter value at `t`, as the guest reads it (BCD-encoded in BCD mode).
    fn count(&self, t: u64) -> u16 {
        let Some((n, k)) = self.view(t) else {
            return self.s.idle_count;
        };
        let modulus = if self.s.bcd { 10_000 } else { 0x1_0000 };
        let value = match self.mode() {
            2 => n - k % n,
            3 => {
                let phase = k % n;
                let high = n.div_ceil(2);
                let into_half = if phase < high { phase } else { phase - high };
                (n - 2 * into_half) & !1
            }
            _ => (n + modulus - k % modulus) % modulus,
        } % modulus;
        if self.s.bcd {
            to_bcd(value as u32)
        } else {
            value as u16
        }
    }

    fn rising_edges(&self, t1: u64, t2: u64) -> u64 {
        if t2 <= t1 || !self.s.armed || !self.s.running {
            return 0;
        }
        if let Some(at) = self.s.pending_at
            && t1 < at
            && at <= t2
        {
            // The old count runs up to the reload tick, the new one after it.
            let n_old = self.cycle_len(self.s.active);
            let k1 = self.s.base_ticks + t1.saturating_sub(self.s.start_tick);
            let k_at = self.s.base_ticks + at.saturating_sub(self.s.start_tick);
            let n_new = self.cycle_len(self.s.reload);
            return edges_between(self.mode(), n_old, k1, k_at)
                + edges_between(self.mode(), n_new, 0, t2 - at);
        }
        match (self.view(t1), self.view(t2)) {
            (Some((n, k1)), Some((_, k2))) => edges_between(self.mode(), n, k1, k2),
            _ => 0,
        }
    }

    fn next_rising_edge(&self, t: u64) -> Option<u64> {
        if !self.s.armed || !self.s.running {
            return None;
        }
        if let Some(at) = self.s.pending_at
            && t < at
        {
            return Some(at);
        }
        let (n, k) = self.view(t)?;
        next_edge_after(self.mode(), n, k).map(|edge_k| t + (edge_k - k))
    }

    /// Starts a counting cycle with the last written count at `t`.
    fn start_cycle(&mut self, t: u64) {
        self.s.active = self.s.reload;
        self.s.armed = true;
        self.s.base_ticks = 0;
        self.s.start_tick = t;
        self.s.pending_at = None;
        self.s.null_count = false;
        self.s.running = match self.mode() {
            1 | 5 => true,
            _ => self.s.gate,
        };
    }

    /// Freezes the visible counter (control word, mode-0 first byte).
    fn stop(&mut self, t: u64, idle_out: bool) {
        self.s.idle_count = self.count(t);
        self.s.armed = false;
        self.s.running = false;
        self.s.pending_at = None;
        self.s.idle_out = idle_out;
    }

    fn write_control(&mut self, t: u64, value: u8) {
        let access = (value >> 4) & 3;
        let mode = match (value >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.settle(t);
        self.stop(t, mode != 0);
        self.s.mode = mode;
        self.s.access = access;
        self.s.bcd = value & 1 != 0;
        self.s.loaded = false;
        self.s.null_count = true;
        self.s.write_lsb = None;
        self.s.read_msb_next = false;
    }

    fn latch_count(&mut self, t: u64) {
        self.settle(t);
        if self.s.latched_count.is_none() {
            self.s.latched_count = Some(self.count(t));
            self.s.latch_msb_next = self.s.access == 2;
        }
    }

    fn latch_status(&mut self, t: u64) {
        self.settle(t);
        if self.s.latched_status.is_none() {
            let null = self.s.null_count || self.s.pending_at.is_some_and(|at| t < at);
            self.s.latched_status = Some(
                u8::from(self.out(t)) << 7
                    | u8::from(null) << 6
                    | self.s.access << 4
                    | self.s.mode << 1
                    | u8::from(self.s.bcd),
            );
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        self.settle(t);
        if let Some(status) = self.s.latched_status.take() {
            return status;
        }
        if let Some(latched) = self.s.latched_count {
            let [lo, hi] = latched.to_le_bytes();
            if self.s.access == 3 && !self.s.latch_msb_next {
                self.s.latch_msb_next = true;
                return lo;
            }
            self.s.latched_count = None;
            self.s.latch_msb_next = false;
            return if self.s.access == 1 { lo } else { hi };
        }
        let [lo, hi] = self.count(t).to_le_bytes();
        match self.s.access {
            1 => lo,
            2 => hi,
            _ => {
                self.s.read_msb_next = !self.s.read_msb_next;
                if self.s.read_msb_next { lo } else { hi }
            }
        }
    }

    fn write(&mut self, t: u64, value: u8) {
        self.settle(t);
        let raw = match self.s.access {
            1 => u16::from(value),
            2 => u16::from(value) << 8,
            _ => match self.s.write_lsb.take() {
                Some(lo) => u16::from_le_bytes([lo, value]),
                None => {
                    self.s.write_lsb = Some(value);
                    if self.mode() == 0 {
                        // The first byte stops counting and drops OUT.
                        self.stop(t, false);
                    }
                    return;
                }
            },
        };
        self.load(t, raw);
    }

    fn load(&mut self, t: u64, raw: u16) {
        self.s.reload = raw;
        self.s.null_count = true;
        let first = !self.s.loaded;
        self.s.loaded = true;
        match self.mode() {
            0 | 4 => self.start_cycle(t),
            2 | 3 if first || !self.s.armed || !self.s.running => self.start_cycle(t),
            2 | 3 => {
                // The current period finishes with the old count.
                if let Some((n, k)) = self.view(t) {
                    self.s.pending_at = Some(t + (n - k % n));
                }
            }
            _ => {} // 1, 5: waits for a gate trigger.
        }
    }

    fn set_gate(&mut self, t: u64, gate: bool) {
        self.settle(t);
        if gate == self.s.gate {
            return;
        }
        let k = self.view(t).map(|(_, k)| k);
        self.s.gate = gate;
        match self.mode() {
            0 | 4 => {
                if let Some(k) = k {
                    self.s.base_ticks = k;
                    self.s.start_tick = t;
                    self.s.running = gate;
                }
            }
            2 | 3 => {
                if gate && self.s.loaded {
                    self.start_cycle(t);
                } else if !gate && self.s.armed {
                    self.s.running = false;
                    self.s.base_ticks = k.unwrap_or(0);
                    if self.s.pending_at.take().is_some() {
                        self.s.active = self.s.reload;
                    }
                }
            }
            _ => {
                if gate && self.s.loaded {
                    self.start_cycle(t);
                }
            }
        }
    }
}

/// The 8254 with channel 0 wired to IRQ0 and channel 2 to port 0x61.
pub struct Pit8254<C: Clock, I: IrqLine> {
    clock: C,
    irq0: I,
    channels: [Channel; 3],
    port61: u8,
    irq_tick: u64,
    irq_level: bool,
}

impl<C: Clock, I: IrqLine> Pit8254<C, I> {
    /// Offset of the control word register (port 0x43).
    pub const CONTROL: u8 = 3;

    /// A PIT in its power-on state, timed by `clock`, with channel 0's OUT on `irq0`.
    pub fn new(clock: C, irq0: I) -> Self {
        let irq_tick = ticks_at(clock.now());
        Self {
            clock,
            irq0,
            channels: [
                Channel {
                    s: PitChannelState::power_on(true),
                },
                Channel {
                    s: PitChannelState::power_on(true),
                },
                Channel {
                    s: PitChannelState::power_on(false),
                },
            ],
            port61: 0,
            irq_tick,
            // OUT is undefined at power-on; take it as high so that
            // programming a periodic mode does not look like an edge.
            irq_level: true,
        }
    }

    /// Now, in ticks, never behind what IRQ0 has already been accounted to.
    fn tick(&self) -> u64 {
        ticks_at(self.clock.now()).max(self.irq_tick)
    }

    /// A guest read at `offset` (0-2 counters; the control word reads 0xFF).
    pub fn read(&mut self, offset: u8) -> u8 {
        let t = self.tick();
        // Account IRQ0 edges first: a read may apply a pending reload.
        self.update_irq(t);
        match self.channels.get_mut(usize::from(offset)) {
            Some(ch) => ch.read(t),
            None => 0xFF,
        }
    }

    /// A guest write at `offset` (0-2 counters, 3 control word).
    pub fn write(&mut self, offset: u8, value: u8) {
        let t = self.tick();
        self.update_irq(t);
        match offset {
            0..=2 => self.channels[usize::from(offset)].write(t, value),
            Self::CONTROL => self.write_control(t, value),
            _ => {}
        }
        self.update_irq(t);
    }

    fn write_control(&mut self, t: u64, value: u8) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) != 0 {
                    if value & 0x20 == 0 {
                        ch.latch_count(t);
                    }
                    if value & 0x10 == 0 {
                        ch.latch_status(t);
                    }
                }
            }
            return;
        }
        let ch = &mut self.channels[usize::from(select)];
        if value & 0x30 == 0 {
            ch.latch_count(t);
        } else {
            ch.write_control(t, value);
        }
    }

    /// Port 0x61 as the PIT sees it: bit 0 gate 2, bit 1 speaker data enable,
    /// bits 2-3 as written, bit 4 refresh toggle, bit 5 OUT2.
    pub fn read_port61(&mut self) -> u8 {
        let now = self.clock.now();
        let t = self.tick();
        let refresh = (now.as_nanos() / REFRESH_TOGGLE_NS) & 1 == 1;
        (self.port61 & 0x0F) | u8::from(refresh) << 4 | u8::from(self.channels[2].out(t)) << 5
    }

    /// A write to port 0x61: bit 0 gates channel 2, bit 1 enables the speaker.
    pub fn write_port61(&mut self, value: u8) {
        let t = self.tick();
        self.port61 = value & 0x0F;
        self.channels[2].set_gate(t, value & 1 != 0);
    }

    /// Whether the speaker is sounding (gate 2 and speaker data enabled).
    pub fn speaker_enabled(&self) -> bool {
        self.port61 & 0x03 == 0x03
    }

    /// Raises IRQ0 for every rising edge of channel 0's OUT due by `now`.
    pub fn poll(&mut self, now: Duration) {
        let t = ticks_at(now).max(self.irq_tick);
        self.update_irq(t);
    }

    /// When channel 0's OUT next rises (the board calls [`Pit8254::poll`]
    /// then); `None` when it never will without a guest write.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.channels[0]
            .next_rising_edge(self.irq_tick)
            .map(time_of_tick)
    }

    fn update_irq(&mut self, t: u64) {
        let ch0 = &mut self.channels[0];
        let edges = ch0.rising_edges(self.irq_tick, t);
        ch0.settle(t);
        let out = ch0.out(t);
        if edges > 0 {
            if self.irq_level {
                self.irq0.set_level(false);
            }
            self.irq0.set_level(true);
            self.irq_level = true;
        }
        if out != self.irq_level {
            self.irq0.set_level(out);
            self.irq_level = out;
        }
        self.irq_tick = t;
    }

    /// A plain-data snapshot.
    pub fn state(&self) -> PitState {
        PitState {
            channels: self.channels.clone().map(|ch| ch.s),
            port61: self.port61,
            irq_tick: self.irq_tick,
            irq_level: self.irq_level,
        }
    }

    /// Rebuilds a PIT from a snapshot taken against the same time base.
    pub fn from_state(state: &PitState, clock: C, irq0: I) -> Self {
        let mut pit = Self::new(clock, irq0);
        pit.channels = state.channels.clone().map(|mut s| {
            s.mode = s.mode.min(5);
            s.access = s.access.clamp(1, 3);
            Channel { s }
        });
        pit.port61 = state.port61 & 0x0F;
        pit.irq_tick = state.irq_tick;
        pit.irq_level = state.irq_level;
        pit.irq0.set_level(state.irq_level);
        pit
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FakeClock, RecordingIrq};
    use super::*;

    fn pit() -> (Pit8254<FakeClock, RecordingIrq>, FakeClock, RecordingIrq) {
        let clock = FakeClock::default();
        let irq = RecordingIrq::default();
        (Pit8254::new(clock.clone(), irq.clone()), clock, irq)
    }

    /// Advances `clock` by exactly `n` PIT ticks (from a tick boundary).
    fn advance_ticks(clock: &FakeClock, n: u64) {
        let now = ticks_at(clock.0.get());
        clock.0.set(time_of_tick(now + n));
    }

    fn program(pit: &mut Pit8254<FakeClock, RecordingIrq>, control: u8, count: u16) {
        let channel = control >> 6;
        pit.write(CONTROL, control);
        let [lo, hi] = count.to_le_bytes();
        pit.write(channel, lo);
        pit.write(channel, hi);
    }

    fn read_word(pit: &mut Pit8254<FakeClock, RecordingIrq>, channel: u8) -> u16 {
        let lo = pit.read(channel);
        let hi = pit.read(channel);
        u16::from_le_bytes([lo, hi])
    }

    const CONTROL: u8 = 3;

    /// Linux's PM-timer and TSC calibration: channel 2, gate high, mode 0,
    /// count 0xFFFF, then poll port 0x61 bit 5 until OUT2 rises.
    #[test]
    fn pit_channel2_mode0_out2_rises_after_the_count_as_linux_calibration_expects() {
        let (mut pit, clock, _) = pit();
        clock.advance(Duration::from_millis(3));
        let v = pit.read_port61();
        pit.write_port61((v & !0x02) | 0x01);
        pit.write(CONTROL, 0xB0);
        pit.write(2, 0xFF);
        pit.write(2, 0xFF);
        clock.advance(Duration::from_micros(54_900));
        assert_eq!(pit.read_port61() & 0x20, 0);
        clock.advance(Duration::from_micros(100));
        assert_eq!(pit.read_port61() & 0x20, 0x20);
    }

    #[test]
    fn tick_conversion_round_trips() {
        let t = time_of_tick(1_193_182);

        assert_eq!(t, Duration::from_secs(1));
        assert_eq!(ticks_at(time_of_tick(12_345)), 12_345);
    }

    #[test]
    fn pit_mode2_reload_raises_irq0_each_period() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x34, 1000);

        advance_ticks(&clock, 999);
        pit.poll(clock.0.get());
        assert_eq!(irq.rising_edges.get(), 0);
        advance_ticks(&clock, 1);
        pit.poll(clock.0.get());
        assert_eq!(irq.rising_edges.get(), 1);
        advance_ticks(&clock, 1000);
        pit.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 2);
    }

    #[test]
    fn pit_next_deadline_is_channel0_next_rising_edge() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x34, 1000);
        advance_ticks(&clock, 250);
        pit.poll(clock.0.get());

        let deadline = pit.next_deadline();

        assert_eq!(deadline, Some(time_of_tick(1000)));
    }

    #[test]
    fn pit_unprogrammed_has_no_deadline_and_no_irq() {
        let (mut pit, clock, irq) = pit();
        advance_ticks(&clock, 100_000);

        pit.poll(clock.0.get());

        assert_eq!(pit.next_deadline(), None);
        assert_eq!(irq.rising_edges.get(), 0);
    }

    #[test]
    fn pit_late_poll_coalesces_overdue_edges() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x34, 100);
        advance_ticks(&clock, 1000);

        pit.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 1);
        assert_eq!(pit.next_deadline(), Some(time_of_tick(1100)));
    }

    #[test]
    fn pit_mode2_counter_counts_down_and_reloads() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x34, 1000);
        advance_ticks(&clock, 300);
        assert_eq!(read_word(&mut pit, 0), 700);

        advance_ticks(&clock, 1000);

        assert_eq!(read_word(&mut pit, 0), 700);
    }

    #[test]
    fn pit_mode0_raises_irq0_once_at_terminal_count() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x30, 500);

        advance_ticks(&clock, 499);
        pit.poll(clock.0.get());
        assert_eq!(irq.rising_edges.get(), 0);
        advance_ticks(&clock, 1);
        pit.poll(clock.0.get());
        assert_eq!(irq.rising_edges.get(), 1);
        advance_ticks(&clock, 70_000);
        pit.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 1);
        assert_eq!(pit.next_deadline(), None);
    }

    #[test]
    fn pit_mode0_counter_wraps_after_terminal_count() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x30, 10);

        advance_ticks(&clock, 12);

        assert_eq!(read_word(&mut pit, 0), 0xFFFE);
    }

    #[test]
    fn pit_mode0_first_byte_stops_counting_and_drops_out() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0xB0, 10); // channel 2
        pit.write_port61(0x01);
        program(&mut pit, 0xB0, 10);
        advance_ticks(&clock, 20);
        assert_eq!(pit.read_port61() & 0x20, 0x20);

        pit.write(2, 0x40);
        advance_ticks(&clock, 5);

        assert_eq!(pit.read_port61() & 0x20, 0);
        pit.write(CONTROL, 0x80); // latch channel 2
        assert_eq!(read_word(&mut pit, 2), 0xFFF6);
    }

    #[test]
    fn pit_channel2_mode0_sets_port61_out2_after_count_as_linux_calibration_polls() {
        let (mut pit, clock, _irq) = pit();
        pit.write_port61(0x01); // gate high, speaker off
        program(&mut pit, 0xB0, 11932); // ~10 ms
        advance_ticks(&clock, 11931);
        assert_eq!(pit.read_port61() & 0x20, 0);

        advance_ticks(&clock, 1);

        assert_eq!(pit.read_port61() & 0x21, 0x21);
    }

    #[test]
    fn pit_gate_low_pauses_mode0_count() {
        let (mut pit, clock, _irq) = pit();
        pit.write_port61(0x01);
        program(&mut pit, 0xB0, 1000);
        advance_ticks(&clock, 100);
        pit.write_port61(0x00);

        advance_ticks(&clock, 500);

        assert_eq!(read_word(&mut pit, 2), 900);
        pit.write_port61(0x01);
        advance_ticks(&clock, 50);
        assert_eq!(read_word(&mut pit, 2), 850);
    }

    #[test]
    fn pit_mode1_one_shot_starts_on_gate_rising_edge() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0xB2, 100); // channel 2, mode 1
        advance_ticks(&clock, 500);
        assert_eq!(pit.read_port61() & 0x20, 0x20);

        pit.write_port61(0x01);
        advance_ticks(&clock, 99);
        assert_eq!(pit.read_port61() & 0x20, 0);
        advance_ticks(&clock, 1);

        assert_eq!(pit.read_port61() & 0x20, 0x20);
    }

    #[test]
    fn pit_mode1_retriggers_on_new_gate_edge() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0xB2, 100);
        pit.write_port61(0x01);
        advance_ticks(&clock, 60);
        pit.write_port61(0x00);

        pit.write_port61(0x01);
        advance_ticks(&clock, 60);

        assert_eq!(read_word(&mut pit, 2), 40);
        assert_eq!(pit.read_port61() & 0x20, 0);
    }

    #[test]
    fn pit_mode3_square_wave_half_high_half_low() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x36, 100);
        advance_ticks(&clock, 49);
        pit.write(CONTROL, 0xE2); // read-back status of channel 0
        let high = pit.read(0) & 0x80;
        advance_ticks(&clock, 1);
        pit.write(CONTROL, 0xE2);
        let low = pit.read(0) & 0x80;
        advance_ticks(&clock, 50);
        pit.poll(clock.0.get());

        assert_eq!((high, low), (0x80, 0x00));
        assert_eq!(irq.rising_edges.get(), 1);
    }

    #[test]
    fn pit_mode3_counter_decrements_by_two() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x36, 100);

        advance_ticks(&clock, 10);

        assert_eq!(read_word(&mut pit, 0), 80);
    }

    #[test]
    fn pit_mode3_gate_low_forces_out_high_and_rising_gate_restarts() {
        let (mut pit, clock, _irq) = pit();
        pit.write_port61(0x01);
        program(&mut pit, 0xB6, 100);
        advance_ticks(&clock, 70);
        assert_eq!(pit.read_port61() & 0x20, 0);

        pit.write_port61(0x00);
        assert_eq!(pit.read_port61() & 0x20, 0x20);
        pit.write_port61(0x01);
        advance_ticks(&clock, 10);

        assert_eq!(read_word(&mut pit, 2), 80);
    }

    #[test]
    fn pit_mode4_software_strobe_pulses_once() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x38, 200);
        advance_ticks(&clock, 200);
        pit.poll(clock.0.get());
        assert!(!irq.level.get());

        advance_ticks(&clock, 1);
        pit.poll(clock.0.get());
        advance_ticks(&clock, 100_000);
        pit.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 1);
        assert!(irq.level.get());
    }

    #[test]
    fn pit_mode5_hardware_strobe_counts_after_gate_trigger() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0xBA, 30); // channel 2 mode 5
        pit.write_port61(0x01);
        advance_ticks(&clock, 30);
        assert_eq!(pit.read_port61() & 0x20, 0);

        advance_ticks(&clock, 1);

        assert_eq!(pit.read_port61() & 0x20, 0x20);
    }

    #[test]
    fn pit_mode2_new_count_takes_effect_at_next_reload() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x34, 1000);
        advance_ticks(&clock, 400);
        pit.write(0, 100);
        pit.write(0, 0);
        advance_ticks(&clock, 599);
        pit.poll(clock.0.get());
        assert_eq!(irq.rising_edges.get(), 0);

        advance_ticks(&clock, 1);
        pit.poll(clock.0.get());
        advance_ticks(&clock, 100);
        pit.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 2);
        assert_eq!(read_word(&mut pit, 0), 100);
    }

    #[test]
    fn pit_counter_read_after_pending_reload_keeps_the_reload_edge() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x34, 1000);
        pit.poll(clock.0.get());
        pit.write(0, 100);
        pit.write(0, 0);
        advance_ticks(&clock, 1050);

        let count = read_word(&mut pit, 0);
        pit.poll(clock.0.get());

        assert_eq!(count, 50);
        assert_eq!(irq.rising_edges.get(), 1);
        assert_eq!(pit.next_deadline(), Some(time_of_tick(1100)));
    }

    #[test]
    fn pit_readback_latches_counts_of_several_channels() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x34, 1000);
        program(&mut pit, 0x74, 500);
        advance_ticks(&clock, 100);

        pit.write(CONTROL, 0xD6); // latch counts of channels 0 and 1
        advance_ticks(&clock, 100);

        assert_eq!(read_word(&mut pit, 0), 900);
        assert_eq!(read_word(&mut pit, 1), 400);
    }

    #[test]
    fn pit_null_count_set_until_pending_count_loads() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x34, 1000);
        pit.write(0, 100);
        pit.write(0, 0);
        pit.write(CONTROL, 0xE2);
        let before = pit.read(0);

        advance_ticks(&clock, 1000);
        pit.write(CONTROL, 0xE2);
        let after = pit.read(0);

        assert_eq!(before & 0x40, 0x40);
        assert_eq!(after & 0x40, 0x00);
    }

    #[test]
    fn pit_bcd_mode_counts_in_decimal() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x31, 0x1000); // mode 0, BCD 1000

        advance_ticks(&clock, 1);

        assert_eq!(read_word(&mut pit, 0), 0x0999);
    }

    #[test]
    fn pit_bcd_zero_means_ten_thousand() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x35, 0x0000); // mode 2, BCD

        advance_ticks(&clock, 10_000);
        pit.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 1);
    }

    #[test]
    fn pit_binary_zero_means_65536() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x34, 0);
        advance_ticks(&clock, 65_535);
        pit.poll(clock.0.get());
        assert_eq!(irq.rising_edges.get(), 0);

        advance_ticks(&clock, 1);
        pit.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 1);
    }

    #[test]
    fn pit_lsb_only_access_reads_and_writes_low_byte() {
        let (mut pit, clock, _irq) = pit();
        pit.write(CONTROL, 0x10); // channel 0, LSB, mode 0
        pit.write(0, 50);

        advance_ticks(&clock, 20);

        assert_eq!(pit.read(0), 30);
        assert_eq!(pit.read(0), 30);
    }

    #[test]
    fn pit_msb_only_access_writes_high_byte() {
        let (mut pit, clock, _irq) = pit();
        pit.write(CONTROL, 0x20); // channel 0, MSB, mode 0
        pit.write(0, 0x02);

        advance_ticks(&clock, 0x100);

        assert_eq!(pit.read(0), 0x01);
    }

    #[test]
    fn pit_counter_latch_freezes_value_until_read() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x34, 1000);
        advance_ticks(&clock, 100);
        pit.write(CONTROL, 0x00);

        advance_ticks(&clock, 300);

        assert_eq!(read_word(&mut pit, 0), 900);
        assert_eq!(read_word(&mut pit, 0), 600);
    }

    #[test]
    fn pit_second_latch_before_read_is_ignored() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x34, 1000);
        pit.write(CONTROL, 0x00);
        advance_ticks(&clock, 300);

        pit.write(CONTROL, 0x00);

        assert_eq!(read_word(&mut pit, 0), 1000);
    }

    #[test]
    fn pit_readback_status_reports_mode_access_and_out() {
        let (mut pit, _clock, _irq) = pit();
        program(&mut pit, 0x76, 100); // channel 1, word, mode 3

        pit.write(CONTROL, 0xE4); // status only, channel 1

        assert_eq!(pit.read(1), 0x80 | 0x30 | 0x06);
    }

    #[test]
    fn pit_readback_status_shows_null_count_after_control_word() {
        let (mut pit, _clock, _irq) = pit();
        pit.write(CONTROL, 0x30);

        pit.write(CONTROL, 0xE2);

        assert_eq!(pit.read(0), 0x40 | 0x30);
    }

    #[test]
    fn pit_readback_status_then_count_reads_status_first() {
        let (mut pit, clock, _irq) = pit();
        program(&mut pit, 0x34, 1000);
        advance_ticks(&clock, 10);

        pit.write(CONTROL, 0xC2); // count and status, channel 0

        assert_eq!(pit.read(0), 0x80 | 0x30 | 0x04);
        assert_eq!(read_word(&mut pit, 0), 990);
    }

    #[test]
    fn pit_control_word_for_mode2_after_mode0_raises_out_and_irq0() {
        let (mut pit, _clock, irq) = pit();
        program(&mut pit, 0x30, 1000);

        pit.write(CONTROL, 0x34);

        assert_eq!(irq.rising_edges.get(), 1);
    }

    #[test]
    fn pit_port61_refresh_bit_toggles_and_control_bits_read_back() {
        let (mut pit, clock, _irq) = pit();
        pit.write_port61(0xFE);
        let first = pit.read_port61();

        clock.advance(Duration::from_nanos(15_085));

        assert_eq!(first & 0x1F, 0x0E);
        assert_eq!(pit.read_port61() & 0x10, 0x10);
    }

    #[test]
    fn pit_speaker_enabled_needs_gate_and_data_bits() {
        let (mut pit, _clock, _irq) = pit();

        pit.write_port61(0x03);

        assert!(pit.speaker_enabled());
    }

    #[test]
    fn pit_control_port_reads_float_high() {
        let (mut pit, _clock, _irq) = pit();

        assert_eq!(pit.read(CONTROL), 0xFF);
    }

    #[test]
    fn pit_state_round_trips() {
        let (mut pit, clock, irq) = pit();
        program(&mut pit, 0x34, 1000);
        advance_ticks(&clock, 123);
        pit.write(CONTROL, 0x00);

        let mut restored = Pit8254::from_state(&pit.state(), clock.clone(), irq.clone());

        assert_eq!(restored.state(), pit.state());
        assert_eq!(read_word(&mut restored, 0), 877);
    }
}
