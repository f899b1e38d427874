//! Motorola MC146818 real-time clock with its battery-backed CMOS RAM.
//!
//! Offset 0 is the index port (0x70; bit 7 of a write disables NMI), offset 1
//! the data port (0x71). 128 bytes: the time registers 0x00-0x09, registers
//! A-D at 0x0A-0x0D, NVRAM after that, with the century at 0x32 and the
//! memory-size fields BIOSes read (filled in by the board with
//! [`Cmos::set_memory_size`]).
//!
//! Time: the clock runs from an injected wall-clock origin (UNIX time at the
//! [`Clock`]'s zero) plus the monotonic [`Clock`]. Guest writes to the time
//! registers are kept as an offset from host time; nothing is counted per
//! second. Interrupt flags (periodic, alarm, update-ended) are worked out
//! from elapsed time when register C is read or [`Cmos::poll`] runs;
//! [`Cmos::next_deadline`] says when an enabled interrupt next becomes due.
//!
//! Modelling choices:
//! - The divider bits of register A are stored but do not stop the clock.
//! - Out-of-range time values written by the guest are clamped into range
//!   when the clock takes them over; the day of week is always derived from
//!   the date (writes to it are ignored).
//! - The data mode and 12/24-hour bits take effect immediately for reads:
//!   the time registers are re-encoded rather than left as written.
//! - The periodic interrupt's phase is tied to the monotonic clock's origin.

use std::time::Duration;

use super::{Clock, IrqLine};

const NS_PER_SEC: i128 = 1_000_000_000;
/// The update cycle: UIP is set this long before the time registers change.
const UIP_NS: i128 = 244_000;
/// The time base the periodic rates divide.
const RTC_HZ: u128 = 32_768;

mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const SECONDS_ALARM: u8 = 0x01;
    pub const MINUTES: u8 = 0x02;
    pub const MINUTES_ALARM: u8 = 0x03;
    pub const HOURS: u8 = 0x04;
    pub const HOURS_ALARM: u8 = 0x05;
    pub const DAY_OF_WEEK: u8 = 0x06;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0A;
    pub const B: u8 = 0x0B;
    pub const C: u8 = 0x0C;
    pub const D: u8 = 0x0D;
    pub const CENTURY: u8 = 0x32;
}

mod b {
    pub const SET: u8 = 0x80;
    pub const PIE: u8 = 0x40;
    pub const AIE: u8 = 0x20;
    pub const UIE: u8 = 0x10;
    pub const BINARY: u8 = 0x04;
    pub const HOURS_24: u8 = 0x02;
}

mod c {
    pub const IRQF: u8 = 0x80;
    pub const PF: u8 = 0x40;
    pub const AF: u8 = 0x20;
    pub const UF: u8 = 0x10;
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (days since 1970-01-01).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Broken-down time, binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let tod = secs.rem_euclid(86_400) as u32;
        Self {
            year,
            month,
            day,
            hour: tod / 3600,
            minute: tod / 60 % 60,
            second: tod % 60,
        }
    }

    fn to_unix(self) -> i64 {
        let days = days_from_civil(self.year, self.month.clamp(1, 12), self.day.clamp(1, 31));
        days * 86_400
            + i64::from(self.hour.min(23)) * 3600
            + i64::from(self.minute.min(59)) * 60
            + i64::from(self.second.min(59))
    }

    /// Day of week as the RTC counts it: Sunday = 1.
    fn day_of_week(self) -> u32 {
        let days = days_from_civil(self.year, self.month, self.day);
        (days + 4).rem_euclid(7) as u32 + 1
    }
}

/// The RTC's state, for saved states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmosState {
    /// The 128 bytes; the time registers hold the frozen time only while SET.
    pub ram: [u8; 128],
    /// Selected register.
    pub index: u8,
    /// Index port bit 7.
    pub nmi_disabled: bool,
    /// UNIX time, in ns, at the clock's zero.
    pub origin_unix_ns: i128,
    /// Guest time minus host time, in ns.
    pub offset_ns: i128,
    /// Monotonic time up to which interrupt flags have been worked out.
    pub events_at: Duration,
    /// The level last driven on IRQ 8.
    pub irq_level: bool,
}

/// The MC146818 RTC and CMOS RAM.
pub struct Cmos<C: Clock, I: IrqLine> {
    clock: C,
    irq: I,
    s: CmosState,
}

impl<C: Clock, I: IrqLine> Cmos<C, I> {
    /// Offset of the index port (0x70).
    pub const INDEX: u8 = 0;
    /// Offset of the data port (0x71).
    pub const DATA: u8 = 1;

    /// An RTC whose clock reads `unix_time_at_origin` when `clock` reads
    /// zero (the board passes the host's wall-clock time minus `clock.now()`),
    /// raising IRQ 8 on `irq`.
    pub fn new(clock: C, irq: I, unix_time_at_origin: Duration) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(reg::A)] = 0x26;
        ram[usize::from(reg::B)] = b::HOURS_24;
        ram[usize::from(reg::D)] = 0x80;
        let events_at = clock.now();
        let mut cmos = Self {
            clock,
            irq,
            s: CmosState {
                ram,
                index: 0,
                nmi_disabled: false,
                origin_unix_ns: unix_time_at_origin.as_nanos() as i128,
                offset_ns: 0,
                events_at,
                irq_level: false,
            },
        };
        cmos.update_checksum();
        cmos
    }

    /// Whether the guest has disabled NMI through the index port.
    pub fn nmi_disabled(&self) -> bool {
        self.s.nmi_disabled
    }

    /// A guest read at `offset`. The index port is write-only and reads 0xFF.
    pub fn read(&mut self, offset: u8) -> u8 {
        if offset != Self::DATA {
            return 0xFF;
        }
        let now = self.now();
        self.run_events(now);
        let index = self.s.index;
        match index {
            reg::A => {
                let uip = !self.set_mode() && self.in_update_window(now);
                self.reg(reg::A) & 0x7F | u8::from(uip) << 7
            }
            reg::C => {
                let value = self.reg(reg::C);
                self.s.ram[usize::from(reg::C)] = 0;
                self.drive_irq();
                value
            }
            reg::D => 0x80,
            _ if Self::is_time_register(index) && !self.set_mode() => {
                self.time_register(index, DateTime::from_unix(self.rtc_secs(now)))
            }
            _ => self.s.ram[usize::from(index)],
        }
    }

    /// A guest write at `offset`.
    pub fn write(&mut self, offset: u8, value: u8) {
        if offset == Self::INDEX {
            self.s.index = value & 0x7F;
            self.s.nmi_disabled = value & 0x80 != 0;
            return;
        }
        if offset != Self::DATA {
            return;
        }
        let now = self.now();
        self.run_events(now);
        let index = self.s.index;
        match index {
            reg::A => self.s.ram[usize::from(reg::A)] = value & 0x7F,
            reg::B => self.write_b(now, value),
            reg::C | reg::D => {}
            reg::DAY_OF_WEEK => {}
            _ if Self::is_time_register(index) && !self.set_mode() => {
                // Change one field of the running clock, keeping its phase.
                let current = self.rtc_secs(now);
                self.freeze_into_ram(current);
                self.s.ram[usize::from(index)] = value;
                let wanted = self.ram_time().to_unix();
                self.s.offset_ns += i128::from(wanted - current) * NS_PER_SEC;
            }
            _ => self.s.ram[usize::from(index)] = value,
        }
        self.drive_irq();
    }

    fn write_b(&mut self, now: Duration, value: u8) {
        let was_set = self.set_mode();
        let mut value = value;
        if value & b::SET != 0 {
            // Setting SET also clears UIE.
            value &= !b::UIE;
        }
        if was_set && value & b::SET == 0 {
            // The clock restarts from the written time (read in the format
            // it was written in), a full second before its next update.
            let wanted = i128::from(self.ram_time().to_unix()) * NS_PER_SEC;
            self.s.offset_ns = wanted - self.host_ns(now);
        }
        self.s.ram[usize::from(reg::B)] = value;
        if !was_set && value & b::SET != 0 {
            // Freeze the time in the format just selected.
            self.freeze_into_ram(self.rtc_secs(now));
        }
    }

    /// Raises IRQ 8 for whatever became due by `now`.
    pub fn poll(&mut self, now: Duration) {
        self.run_events(now);
        self.drive_irq();
    }

    /// When an enabled interrupt next becomes due; `None` with none
    /// enabled, or while IRQF is already set (nothing more can be signalled
    /// until the guest reads register C).
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.reg(reg::C) & c::IRQF != 0 {
            return None;
        }
        let b = self.reg(reg::B);
        let periodic = (b & b::PIE != 0)
            .then(|| self.periodic_ticks())
            .flatten()
            .map(|period| {
                let tick = rtc_ticks(self.s.events_at) / period * period + period;
                time_of_rtc_tick(tick)
            });
        let update = (b & (b::UIE | b::AIE) != 0 && b & b::SET == 0).then(|| {
            let rtc = self.host_ns(self.s.events_at) + self.s.offset_ns;
            let next = (rtc.div_euclid(NS_PER_SEC) + 1) * NS_PER_SEC;
            let delta = next - rtc;
            self.s.events_at + Duration::from_nanos(delta as u64)
        });
        match (periodic, update) {
            (Some(p), Some(u)) => Some(p.min(u)),
            (p, u) => p.or(u),
        }
    }

    /// Writes a CMOS byte directly (the board filling in configuration).
    /// Recomputes the checksum when the byte is inside 0x10-0x2D.
    pub fn set_byte(&mut self, index: u8, value: u8) {
        let index = index & 0x7F;
        self.s.ram[usize::from(index)] = value;
        if (0x10..=0x2D).contains(&index) {
            self.update_checksum();
        }
    }

    /// A CMOS byte as stored (time registers hold their frozen value only
    /// while SET).
    pub fn byte(&self, index: u8) -> u8 {
        self.s.ram[usize::from(index & 0x7F)]
    }

    /// Fills in the memory-size fields for `ram_bytes` of RAM, split as an
    /// i440FX board does: RAM below 3.5 GiB stays low, the rest is above 4 GiB.
    pub fn set_memory_size(&mut self, ram_bytes: u64) {
        const LOW_LIMIT: u64 = 0xE000_0000;
        let below = ram_bytes.min(LOW_LIMIT);
        self.set_memory_layout(below, ram_bytes - below);
    }

    /// Fills in the memory-size fields for `below_4g` bytes of RAM from
    /// address 0 and `above_4g` bytes from 4 GiB.
    pub fn set_memory_layout(&mut self, below_4g: u64, above_4g: u64) {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let base_kib = (below_4g / KIB).min(640) as u16;
        let ext_kib = (below_4g.saturating_sub(MIB) / KIB).min(0xFFFF) as u16;
        let above_16m = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xFFFF) as u16;
        let above_4g = (above_4g / (64 * KIB)).min(0xFF_FFFF) as u32;
        let [base_lo, base_hi] = base_kib.to_le_bytes();
        let [ext_lo, ext_hi] = ext_kib.to_le_bytes();
        let [hi_lo, hi_hi] = above_16m.to_le_bytes();
        let [a0, a1, a2, _] = above_4g.to_le_bytes();
        for (index, value) in [
            (0x15, base_lo),
            (0x16, base_hi),
            (0x17, ext_lo),
            (0x18, ext_hi),
            (0x30, ext_lo),
            (0x31, ext_hi),
            (0x34, hi_lo),
            (0x35, hi_hi),
            (0x5B, a0),
            (0x5C, a1),
            (0x5D, a2),
        ] {
            self.s.ram[index] = value;
        }
        self.update_checksum();
    }

    /// The equipment byte 0x14: floppy drives (0-4), FPU, EGA/VGA video.
    pub fn set_equipment(&mut self, floppy_drives: u8, fpu: bool) {
        let floppy = if floppy_drives == 0 {
            0
        } else {
            0x01 | ((floppy_drives.min(4) - 1) << 6)
        };
        self.set_byte(0x14, floppy | u8::from(fpu) << 1);
    }

    fn update_checksum(&mut self) {
        let sum: u16 = self.s.ram[0x10..=0x2D].iter().map(|&b| u16::from(b)).sum();
        let [lo, hi] = sum.to_le_bytes();
        self.s.ram[0x2E] = hi;
        self.s.ram[0x2F] = lo;
    }

    /// A plain-data snapshot.
    pub fn state(&self) -> CmosState {
        self.s.clone()
    }

    /// Rebuilds an RTC from a snapshot.
    pub fn from_state(state: &CmosState, clock: C, mut irq: I) -> Self {
        let mut s = state.clone();
        s.index &= 0x7F;
        irq.set_level(s.irq_level);
        Self { clock, irq, s }
    }

    fn now(&self) -> Duration {
        self.clock.now().max(self.s.events_at)
    }

    fn reg(&self, index: u8) -> u8 {
        self.s.ram[usize::from(index)]
    }

    fn set_mode(&self) -> bool {
        self.reg(reg::B) & b::SET != 0
    }

    fn is_time_register(index: u8) -> bool {
        matches!(
            index,
            reg::SECONDS
                | reg::MINUTES
                | reg::HOURS
                | reg::DAY_OF_WEEK
                | reg::DAY_OF_MONTH
                | reg::MONTH
                | reg::YEAR
                | reg::CENTURY
        )
    }

    /// Host UNIX time in ns at monotonic time `now`.
    fn host_ns(&self, now: Duration) -> i128 {
        self.s.origin_unix_ns + now.as_nanos() as i128
    }

    fn rtc_ns(&self, now: Duration) -> i128 {
        self.host_ns(now) + self.s.offset_ns
    }

    fn rtc_secs(&self, now: Duration) -> i64 {
        let secs = self.rtc_ns(now).div_euclid(NS_PER_SEC);
        secs.clamp(i128::from(i64::MIN / 2), i128::from(i64::MAX / 2)) as i64
    }

    fn in_update_window(&self, now: Duration) -> bool {
        self.rtc_ns(now).rem_euclid(NS_PER_SEC) >= NS_PER_SEC - UIP_NS
    }

    fn encode(&self, value: u32) -> u8 {
        let value = value % 100;
        if self.reg(reg::B) & b::BINARY != 0 {
            value as u8
        } else {
            (((value / 10) << 4) | (value % 10)) as u8
        }
    }

    fn decode(&self, value: u8) -> u32 {
        if self.reg(reg::B) & b::BINARY != 0 {
            u32::from(value)
        } else {
            u32::from(value >> 4) * 10 + u32::from(value & 0xF)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.reg(reg::B) & b::HOURS_24 != 0 {
            self.encode(hour)
        } else {
            let h12 = if hour.is_multiple_of(12) {
                12
            } else {
                hour % 12
            };
            self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, value: u8) -> u32 {
        if self.reg(reg::B) & b::HOURS_24 != 0 {
            self.decode(value)
        } else {
            let h = self.decode(value & 0x7F) % 12;
            if value & 0x80 != 0 { h + 12 } else { h }
        }
    }

    fn time_register(&self, index: u8, t: DateTime) -> u8 {
        match index {
            reg::SECONDS => self.encode(t.second),
            reg::MINUTES => self.encode(t.minute),
            reg::HOURS => self.encode_hour(t.hour),
            reg::DAY_OF_WEEK => self.encode(t.day_of_week()),
            reg::DAY_OF_MONTH => self.encode(t.day),
            reg::MONTH => self.encode(t.month),
            reg::YEAR => self.encode(t.year.rem_euclid(100) as u32),
            reg::CENTURY => self.encode(t.year.div_euclid(100).rem_euclid(100) as u32),
            _ => self.reg(index),
        }
    }

    /// Copies the running time into the time registers.
    fn freeze_into_ram(&mut self, secs: i64) {
        let t = DateTime::from_unix(secs);
        for index in [
            reg::SECONDS,
            reg::MINUTES,
            reg::HOURS,
            reg::DAY_OF_WEEK,
            reg::DAY_OF_MONTH,
            reg::MONTH,
            reg::YEAR,
            reg::CENTURY,
        ] {
            self.s.ram[usize::from(index)] = self.time_register(index, t);
        }
    }

    /// The time the time registers in RAM spell.
    fn ram_time(&self) -> DateTime {
        let year = self.decode(self.reg(reg::YEAR)).min(99);
        let century = self.decode(self.reg(reg::CENTURY)).min(99);
        DateTime {
            year: i64::from(century * 100 + year),
            month: self.decode(self.reg(reg::MONTH)),
            day: self.decode(self.reg(reg::DAY_OF_MONTH)),
            hour: self.decode_hour(self.reg(reg::HOURS)),
            minute: self.decode(self.reg(reg::MINUTES)),
            second: self.decode(self.reg(reg::SECONDS)),
        }
    }

    /// Periodic interrupt period in 32.768 kHz ticks, from register A's RS bits.
    fn periodic_ticks(&self) -> Option<u128> {
        match self.reg(reg::A) & 0x0F {
            0 => None,
            rs @ (1 | 2) => Some(1 << (rs + 6)),
            rs => Some(1 << (rs - 1)),
        }
    }

    /// Sets the flags of register C for events in `(events_at, now]`.
    fn run_events(&mut self, now: Duration) {
        let then = self.s.events_at;
        if now <= then {
            return;
        }
        let mut flags = 0;
        if let Some(period) = self.periodic_ticks()
            && rtc_ticks(now) / period > rtc_ticks(then) / period
        {
            flags |= c::PF;
        }
        if !self.set_mode() {
            let first = self.rtc_ns(then).div_euclid(NS_PER_SEC) + 1;
            let last = self.rtc_ns(now).div_euclid(NS_PER_SEC);
            if last >= first {
                flags |= c::UF;
                if self.alarm_in(first, last) {
                    flags |= c::AF;
                }
            }
        }
        self.s.ram[usize::from(reg::C)] |= flags;
        self.s.events_at = now;
    }

    /// Whether the alarm matches any second in `first..=last`.
    fn alarm_in(&self, first: i128, last: i128) -> bool {
        let alarm = [
            self.reg(reg::HOURS_ALARM),
            self.reg(reg::MINUTES_ALARM),
            self.reg(reg::SECONDS_ALARM),
        ];
        let matches = |secs: i128| {
            let tod = secs.rem_euclid(86_400) as u32;
            let now = [
                self.encode_hour(tod / 3600),
                self.encode(tod / 60 % 60),
                self.encode(tod % 60),
            ];
            alarm
                .iter()
                .zip(now)
                .all(|(&a, n)| a & 0xC0 == 0xC0 || a == n)
        };
        let span = (last - first).min(86_400);
        (0..=span).any(|i| matches(first + i))
    }

    /// Recomputes IRQF from the flags and enables and drives IRQ 8.
    fn drive_irq(&mut self) {
        let flags = self.reg(reg::C) & (c::PF | c::AF | c::UF);
        let enabled = self.reg(reg::B) & (b::PIE | b::AIE | b::UIE);
        let irqf = flags & enabled != 0;
        let c_reg = &mut self.s.ram[usize::from(reg::C)];
        if irqf {
            *c_reg |= c::IRQF;
        } else {
            *c_reg &= !c::IRQF;
        }
        if irqf != self.s.irq_level {
            self.s.irq_level = irqf;
            self.irq.set_level(irqf);
        }
    }
}

fn rtc_ticks(t: Duration) -> u128 {
    t.as_nanos() * RTC_HZ / NS_PER_SEC as u128
}

fn time_of_rtc_tick(tick: u128) -> Duration {
    let ns = (tick * NS_PER_SEC as u128).div_ceil(RTC_HZ);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FakeClock, RecordingIrq};
    use super::*;

    type Rtc = Cmos<FakeClock, RecordingIrq>;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const LEAP_EVE: u64 = 1_709_251_198;

    fn rtc_at(unix: u64) -> (Rtc, FakeClock, RecordingIrq) {
        let clock = FakeClock::default();
        let irq = RecordingIrq::default();
        let rtc = Cmos::new(clock.clone(), irq.clone(), Duration::from_secs(unix));
        (rtc, clock, irq)
    }

    fn read(rtc: &mut Rtc, index: u8) -> u8 {
        rtc.write(Rtc::INDEX, index);
        rtc.read(Rtc::DATA)
    }

    fn write(rtc: &mut Rtc, index: u8, value: u8) {
        rtc.write(Rtc::INDEX, index);
        rtc.write(Rtc::DATA, value);
    }

    fn time(rtc: &mut Rtc) -> [u8; 8] {
        [0x32, 0x09, 0x08, 0x07, 0x06, 0x04, 0x02, 0x00].map(|i| read(rtc, i))
    }

    #[test]
    fn civil_conversion_round_trips_across_leap_day() {
        let t = DateTime::from_unix(LEAP_EVE as i64);

        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
        assert_eq!((t.hour, t.minute, t.second), (23, 59, 58));
        assert_eq!(t.to_unix(), LEAP_EVE as i64);
    }

    #[test]
    fn cmos_reads_wall_clock_time_in_bcd_24h_by_default() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        let t = time(&mut rtc);

        assert_eq!(t, [0x20, 0x24, 0x02, 0x29, 0x05, 0x23, 0x59, 0x58]);
    }

    #[test]
    fn cmos_time_advances_with_the_monotonic_clock_across_month_end() {
        let (mut rtc, clock, _irq) = rtc_at(LEAP_EVE);

        clock.advance(Duration::from_secs(2));

        assert_eq!(
            time(&mut rtc),
            [0x20, 0x24, 0x03, 0x01, 0x06, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn cmos_binary_mode_reads_binary_values() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        write(&mut rtc, 0x0B, 0x06);

        assert_eq!(time(&mut rtc), [20, 24, 2, 29, 5, 23, 59, 58]);
    }

    #[test]
    fn cmos_12_hour_mode_sets_pm_bit() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        write(&mut rtc, 0x0B, 0x00);

        assert_eq!(read(&mut rtc, 0x04), 0x80 | 0x11);
    }

    #[test]
    fn cmos_12_hour_mode_midnight_reads_12_am() {
        let (mut rtc, clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0B, 0x00);

        clock.advance(Duration::from_secs(2));

        assert_eq!(read(&mut rtc, 0x04), 0x12);
    }

    #[test]
    fn cmos_set_bit_freezes_time_and_guest_writes_take_effect_on_release() {
        let (mut rtc, clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0B, 0x82);
        clock.advance(Duration::from_secs(5));
        assert_eq!(read(&mut rtc, 0x00), 0x58);
        write(&mut rtc, 0x09, 0x99);
        write(&mut rtc, 0x32, 0x19);
        write(&mut rtc, 0x08, 0x12);
        write(&mut rtc, 0x07, 0x31);
        write(&mut rtc, 0x04, 0x23);
        write(&mut rtc, 0x02, 0x59);
        write(&mut rtc, 0x00, 0x59);

        write(&mut rtc, 0x0B, 0x02);
        clock.advance(Duration::from_secs(1));

        assert_eq!(
            time(&mut rtc),
            [0x20, 0x00, 0x01, 0x01, 0x07, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn cmos_write_to_running_clock_changes_only_that_field() {
        let (mut rtc, clock, _irq) = rtc_at(LEAP_EVE);

        write(&mut rtc, 0x02, 0x10);
        clock.advance(Duration::from_secs(1));

        assert_eq!(
            time(&mut rtc),
            [0x20, 0x24, 0x02, 0x29, 0x05, 0x23, 0x10, 0x59]
        );
    }

    #[test]
    fn cmos_12_hour_binary_write_sets_pm_hour() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0B, 0x84); // SET, binary, 12-hour
        write(&mut rtc, 0x04, 0x80 | 7);

        write(&mut rtc, 0x0B, 0x04); // run, still binary 12-hour

        assert_eq!(read(&mut rtc, 0x04), 0x87);
        write(&mut rtc, 0x0B, 0x06); // binary, 24-hour
        assert_eq!(read(&mut rtc, 0x04), 19);
    }

    #[test]
    fn cmos_garbage_time_values_are_clamped_not_fatal() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0B, 0x82);
        for index in [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32] {
            write(&mut rtc, index, 0xFF);
        }

        write(&mut rtc, 0x0B, 0x02);

        assert_eq!(
            time(&mut rtc),
            [0x99, 0x99, 0x12, 0x31, 0x06, 0x23, 0x59, 0x59]
        );
    }

    #[test]
    fn cmos_uip_set_in_the_244us_before_an_update() {
        let (mut rtc, clock, _irq) = rtc_at(LEAP_EVE);
        clock.advance(Duration::from_nanos(999_755_999));
        let before = read(&mut rtc, 0x0A);

        clock.advance(Duration::from_nanos(1));
        let during = read(&mut rtc, 0x0A);
        clock.advance(Duration::from_nanos(244_000));
        let after = read(&mut rtc, 0x0A);

        assert_eq!((before, during, after), (0x26, 0xA6, 0x26));
    }

    #[test]
    fn cmos_register_d_reports_valid_ram_and_time() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0D, 0x00);

        assert_eq!(read(&mut rtc, 0x0D), 0x80);
    }

    #[test]
    fn cmos_periodic_interrupt_at_1024hz_raises_irq8_until_c_is_read() {
        let (mut rtc, clock, irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0A, 0x26);
        write(&mut rtc, 0x0B, 0x42);

        clock.advance(time_of_rtc_tick(32));
        rtc.poll(clock.0.get());
        assert!(irq.level.get());
        clock.advance(time_of_rtc_tick(32));
        rtc.poll(clock.0.get());

        assert_eq!(irq.rising_edges.get(), 1);
        assert_eq!(read(&mut rtc, 0x0C), 0xC0);
        assert!(!irq.level.get());
        assert_eq!(read(&mut rtc, 0x0C), 0x00);
    }

    #[test]
    fn cmos_periodic_deadline_follows_rate_select() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0A, 0x23); // 8192 Hz
        write(&mut rtc, 0x0B, 0x42);

        let deadline = rtc.next_deadline();

        assert_eq!(deadline, Some(time_of_rtc_tick(4)));
    }

    #[test]
    fn cmos_rate_select_1_is_256hz() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0A, 0x21);
        write(&mut rtc, 0x0B, 0x42);

        assert_eq!(
            rtc.next_deadline(),
            Some(Duration::from_micros(3906) + Duration::from_nanos(250))
        );
    }

    #[test]
    fn cmos_no_deadline_without_enabled_interrupts() {
        let (rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        assert_eq!(rtc.next_deadline(), None);
    }

    #[test]
    fn cmos_periodic_flag_sets_without_pie_but_no_irq() {
        let (mut rtc, clock, irq) = rtc_at(LEAP_EVE);
        clock.advance(Duration::from_millis(1));

        rtc.poll(clock.0.get());

        assert!(!irq.level.get());
        assert_eq!(read(&mut rtc, 0x0C), 0x40);
    }

    #[test]
    fn cmos_enabling_pie_with_pf_pending_raises_irq() {
        let (mut rtc, clock, irq) = rtc_at(LEAP_EVE);
        clock.advance(Duration::from_millis(1));
        rtc.poll(clock.0.get());

        write(&mut rtc, 0x0B, 0x42);

        assert!(irq.level.get());
    }

    #[test]
    fn cmos_update_ended_interrupt_each_second() {
        let (mut rtc, clock, irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0A, 0x20); // no periodic rate
        write(&mut rtc, 0x0B, 0x12);
        assert_eq!(rtc.next_deadline(), Some(Duration::from_secs(1)));

        clock.advance(Duration::from_secs(1));
        rtc.poll(clock.0.get());

        assert!(irq.level.get());
        assert_eq!(read(&mut rtc, 0x0C), 0x90);
    }

    #[test]
    fn cmos_alarm_fires_when_time_matches() {
        let (mut rtc, clock, irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0A, 0x20);
        write(&mut rtc, 0x05, 0x00);
        write(&mut rtc, 0x03, 0x00);
        write(&mut rtc, 0x01, 0x01);
        write(&mut rtc, 0x0B, 0x22);
        clock.advance(Duration::from_secs(2));
        rtc.poll(clock.0.get());
        assert!(!irq.level.get());

        clock.advance(Duration::from_secs(1));
        rtc.poll(clock.0.get());

        assert!(irq.level.get());
        assert_eq!(read(&mut rtc, 0x0C), 0xB0);
    }

    #[test]
    fn cmos_alarm_dont_care_bytes_match_every_value() {
        let (mut rtc, clock, irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0A, 0x20);
        write(&mut rtc, 0x05, 0xC0);
        write(&mut rtc, 0x03, 0xFF);
        write(&mut rtc, 0x01, 0x59);
        write(&mut rtc, 0x0B, 0x22);

        clock.advance(Duration::from_secs(61));
        rtc.poll(clock.0.get());

        assert!(irq.level.get());
    }

    #[test]
    fn cmos_set_bit_stops_update_interrupts_and_clears_uie() {
        let (mut rtc, clock, _irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0A, 0x20);

        write(&mut rtc, 0x0B, 0x92);
        clock.advance(Duration::from_secs(3));

        assert_eq!(read(&mut rtc, 0x0B), 0x82);
        assert_eq!(read(&mut rtc, 0x0C), 0x00);
    }

    #[test]
    fn cmos_index_port_bit7_disables_nmi() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        rtc.write(Rtc::INDEX, 0x8F);

        assert!(rtc.nmi_disabled());
        assert_eq!(rtc.read(Rtc::INDEX), 0xFF);
    }

    #[test]
    fn cmos_nvram_bytes_read_back() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        write(&mut rtc, 0x7F, 0xA5);
        write(&mut rtc, 0x40, 0x5A);

        assert_eq!(read(&mut rtc, 0x7F), 0xA5);
        assert_eq!(read(&mut rtc, 0xC0), 0x5A);
    }

    #[test]
    fn cmos_memory_size_fields_for_128_mib() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        rtc.set_memory_size(128 << 20);

        let bytes = [
            0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5B, 0x5C, 0x5D,
        ]
        .map(|i| read(&mut rtc, i));
        assert_eq!(
            bytes,
            [0x80, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07, 0, 0, 0]
        );
    }

    #[test]
    fn cmos_memory_size_fields_for_32_mib() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        rtc.set_memory_size(32 << 20);

        let bytes = [0x17, 0x18, 0x34, 0x35].map(|i| read(&mut rtc, i));
        assert_eq!(bytes, [0x00, 0x7C, 0x00, 0x01]);
    }

    #[test]
    fn cmos_memory_above_4g_in_64k_units() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        rtc.set_memory_size(5 << 30);

        let bytes = [0x34, 0x35, 0x5B, 0x5C, 0x5D].map(|i| read(&mut rtc, i));
        assert_eq!(bytes, [0x00, 0xDF, 0x00, 0x60, 0x00]);
    }

    #[test]
    fn cmos_checksum_covers_0x10_to_0x2d() {
        let (mut rtc, _clock, _irq) = rtc_at(LEAP_EVE);

        rtc.set_equipment(1, true);
        rtc.set_memory_size(64 << 20);

        let sum: u16 = (0x10..=0x2D).map(|i| u16::from(read(&mut rtc, i))).sum();
        let stored = u16::from_be_bytes([read(&mut rtc, 0x2E), read(&mut rtc, 0x2F)]);
        assert_eq!(stored, sum);
        assert_eq!(read(&mut rtc, 0x14), 0x03);
    }

    #[test]
    fn cmos_state_round_trips() {
        let (mut rtc, clock, irq) = rtc_at(LEAP_EVE);
        write(&mut rtc, 0x0B, 0x42);
        write(&mut rtc, 0x50, 0x77);
        clock.advance(Duration::from_millis(3));
        rtc.poll(clock.0.get());

        let mut restored = Cmos::from_state(&rtc.state(), clock.clone(), irq.clone());

        assert_eq!(restored.state(), rtc.state());
        assert_eq!(time(&mut restored), time(&mut rtc));
    }
}
