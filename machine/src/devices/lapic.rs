//! The P6 (Pentium Pro / Pentium II) local APIC, xAPIC MMIO interface.
//!
//! # Architecture decision: no I/O APIC (for now)
//!
//! The machine has one CPU, and its interrupt path is the one Virtual
//! Server's 440BX board had: the 8259 pair's INTR output reaches the CPU
//! through the local APIC's LINT0 pin in virtual-wire mode (LVT LINT0 =
//! ExtINT), and NMI arrives on LINT1. There is no I/O APIC: the MADT
//! describes only the local APIC (with PCAT_COMPAT set) and a Local APIC NMI
//! entry for LINT1, so guests route every ISA and PCI interrupt through the
//! PIC (PCI INTx via the PIIX3 PIRQ routing registers). The local APIC is
//! still there for what single-CPU guests use it for: its timer, self-IPIs,
//! TPR-based masking and the spurious vector. An I/O APIC (82093AA) becomes
//! worth its cost with SMP guests or with enough PCI devices that sharing the
//! four PIRQ lines hurts; adding it then means an MADT I/O APIC entry plus
//! interrupt source overrides, and fixed deliveries into [`Lapic`] through a
//! new `deliver(vector, level)` entry point, with no change to the CPU side.
//!
//! # How the board uses it
//!
//! MMIO at the APIC base (0xFEE0_0000, 4 KiB) goes to [`Lapic::mmio_read`] /
//! [`Lapic::mmio_write`] (aligned dwords; the board's adapter splits and
//! merges narrower accesses). The PIC's output drives [`Lapic::set_lint0`].
//! After anything that can change the answer (an MMIO write, a LINT change,
//! [`Lapic::poll`]), the board sets the CPU's INTR to
//! `interrupt_pending().is_some()` and raises NMI if [`Lapic::take_nmi`]
//! says so. On the CPU's INTA cycle, [`Lapic::acknowledge`] names the vector
//! or hands over to the PIC ([`Ack::ExtInt`]). The timer is time-driven:
//! the vCPU thread may block until [`Lapic::next_deadline`].
//!
//! When the APIC is globally disabled (IA32_APIC_BASE.EN clear) the P6
//! behaves as if it had no APIC: INTR and NMI from the board pass straight
//! through, MMIO reads float (all ones) and writes are dropped; a P6 cannot
//! re-enable it until reset.

use std::time::Duration;

use super::Clock;

/// The APIC timer's input clock: the P6's bus clock. 100 MHz is a 440BX
/// front-side bus; guests calibrate the timer against the PIT or PM timer,
/// so the value only has to be steady, not any particular one.
pub const BUS_HZ: u64 = 100_000_000;

/// The default APIC base (IA32_APIC_BASE after reset).
pub const DEFAULT_BASE: u32 = 0xFEE0_0000;
/// Bytes the MMIO window decodes.
pub const MMIO_SIZE: u32 = 0x1000;

/// Register offsets.
pub mod regs {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const APR: u32 = 0x090;
    pub const PPR: u32 = 0x0A0;
    pub const EOI: u32 = 0x0B0;
    pub const LDR: u32 = 0x0D0;
    pub const DFR: u32 = 0x0E0;
    pub const SVR: u32 = 0x0F0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
}

/// Version register: integrated APIC (0x11), max LVT entry 4 (timer,
/// performance counter, LINT0, LINT1, error), as on the Pentium II.
pub const VERSION: u32 = 0x0004_0011;

/// LVT and ICR fields.
pub mod lvt {
    pub const VECTOR: u32 = 0xFF;
    pub const DELIVERY_MODE: u32 = 7 << 8;
    pub const MODE_FIXED: u32 = 0 << 8;
    pub const MODE_LOWEST: u32 = 1 << 8;
    pub const MODE_SMI: u32 = 2 << 8;
    pub const MODE_NMI: u32 = 4 << 8;
    pub const MODE_INIT: u32 = 5 << 8;
    pub const MODE_STARTUP: u32 = 6 << 8;
    pub const MODE_EXTINT: u32 = 7 << 8;
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    pub const POLARITY: u32 = 1 << 13;
    pub const REMOTE_IRR: u32 = 1 << 14;
    pub const LEVEL: u32 = 1 << 15;
    pub const MASKED: u32 = 1 << 16;
    pub const TIMER_PERIODIC: u32 = 1 << 17;
    /// After reset: everything masked.
    pub const RESET: u32 = MASKED;
    /// ICR destination shorthand (bits 18-19).
    pub const SHORTHAND: u32 = 3 << 18;
    pub const SHORTHAND_SELF: u32 = 1 << 18;
    pub const SHORTHAND_ALL: u32 = 2 << 18;
    pub const SHORTHAND_OTHERS: u32 = 3 << 18;
    /// ICR destination mode: logical.
    pub const LOGICAL: u32 = 1 << 11;
}

/// Error status bits.
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
}

const SVR_ENABLE: u32 = 1 << 8;
const SVR_FOCUS_DISABLE: u32 = 1 << 9;

/// Which kind of interrupt the CPU's INTR input should see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// A fixed interrupt the APIC itself will name.
    Fixed,
    /// The PIC's INTR, through LINT0 (ExtINT) or with the APIC out of the way.
    ExtInt,
}

/// The answer to the CPU's interrupt acknowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Deliver this vector (moved from IRR to ISR).
    Vector(u8),
    /// Deliver the spurious vector: what was pending went away (masked by
    /// TPR) between INTR and INTA. Not recorded in ISR; no EOI expected.
    Spurious(u8),
    /// The PIC answers: run its INTA cycle.
    ExtInt,
}

/// Indices into the LVT array.
const LVT_TIMER: usize = 0;
const LVT_PERF: usize = 1;
const LVT_LINT0: usize = 2;
const LVT_LINT1: usize = 3;
const LVT_ERROR: usize = 4;

/// Plain-data snapshot of a [`Lapic`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LapicState {
    pub id: u32,
    pub tpr: u32,
    pub ldr: u32,
    pub dfr: u32,
    pub svr: u32,
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub irr: [u32; 8],
    pub esr: u32,
    pub esr_pending: u32,
    pub icr: [u32; 2],
    pub lvt: [u32; 5],
    pub timer_initial: u32,
    pub timer_divide: u32,
    pub timer_base: Duration,
    pub timer_count_base: u32,
    pub timer_fired: u64,
    pub lint0: bool,
    pub lint1: bool,
    pub nmi_pending: bool,
    pub globally_enabled: bool,
}

/// The local APIC.
pub struct Lapic<C: Clock> {
    id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// The ESR as last latched by a write.
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    icr: [u32; 2],
    lvt: [u32; 5],
    timer_initial: u32,
    timer_divide: u32,
    /// When the counter last held `timer_count_base`.
    timer_base: Duration,
    timer_count_base: u32,
    /// Expirations already delivered since `timer_base`.
    timer_fired: u64,
    lint0: bool,
    lint1: bool,
    nmi_pending: bool,
    globally_enabled: bool,
    clock: C,
}

impl<C: Clock> Lapic<C> {
    /// A local APIC as after reset, with APIC ID `id` (0-15). LINT0 is
    /// programmed ExtINT and LINT1 NMI, unmasked — the virtual-wire set-up a
    /// BIOS does for the bootstrap processor — so the PIC reaches the CPU
    /// even when no firmware runs (direct boot).
    pub fn new(clock: C, id: u8) -> Self {
        let state = Self::power_on_state(id, clock.now());
        Self::from_state(&state, clock)
    }

    fn power_on_state(id: u8, now: Duration) -> LapicState {
        let mut lvt = [lvt::RESET; 5];
        lvt[LVT_LINT0] = lvt::MODE_EXTINT;
        lvt[LVT_LINT1] = lvt::MODE_NMI;
        LapicState {
            id: u32::from(id & 0x0F) << 24,
            dfr: 0xFFFF_FFFF,
            svr: 0xFF,
            lvt,
            timer_base: now,
            globally_enabled: true,
            ..LapicState::default()
        }
    }

    /// Hardware reset (RESET#, not INIT): back to the power-on state,
    /// keeping the APIC ID and the LINT input levels.
    pub fn reset(&mut self) {
        let mut state = Self::power_on_state((self.id >> 24) as u8, self.clock.now());
        state.lint0 = self.lint0;
        state.lint1 = self.lint1;
        self.restore(&state);
    }

    fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// IA32_APIC_BASE.EN. Clearing it takes the APIC off the bus; on a P6
    /// only a reset brings it back, so setting it again is ignored.
    pub fn set_enabled_by_msr(&mut self, enabled: bool) {
        if !enabled && self.globally_enabled {
            let nmi = self.nmi_pending;
            self.reset();
            self.nmi_pending = nmi;
            self.globally_enabled = false;
        }
    }

    /// Whether the APIC decodes its MMIO window.
    pub fn globally_enabled(&self) -> bool {
        self.globally_enabled
    }

    // ----- IRR / ISR bit vectors -----

    fn bit(regs: &[u32; 8], v: u8) -> bool {
        regs[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }

    fn set_bit(regs: &mut [u32; 8], v: u8, on: bool) {
        let word = &mut regs[usize::from(v >> 5)];
        if on {
            *word |= 1 << (v & 31);
        } else {
            *word &= !(1 << (v & 31));
        }
    }

    fn highest(regs: &[u32; 8]) -> Option<u8> {
        (0..8usize)
            .rev()
            .find(|&i| regs[i] != 0)
            .map(|i| (i as u8) * 32 + (31 - regs[i].leading_zeros() as u8))
    }

    fn ppr(&self) -> u32 {
        let isrv = Self::highest(&self.isr).map_or(0, u32::from);
        if (self.tpr & 0xF0) >= (isrv & 0xF0) {
            self.tpr & 0xFF
        } else {
            isrv & 0xF0
        }
    }

    fn apr(&self) -> u32 {
        let isrv = Self::highest(&self.isr).map_or(0, u32::from) & 0xF0;
        let irrv = Self::highest(&self.irr).map_or(0, u32::from) & 0xF0;
        let tpr = self.tpr & 0xFF;
        if (tpr & 0xF0) >= isrv && (tpr & 0xF0) >= irrv {
            tpr
        } else {
            isrv.max(irrv).max(tpr & 0xF0)
        }
    }

    fn record_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let entry = self.lvt[LVT_ERROR];
        if entry & lvt::MASKED == 0 {
            let v = (entry & lvt::VECTOR) as u8;
            // An illegal error vector must not recurse.
            if v >= 16 {
                self.accept_fixed(v, false);
            }
        }
    }

    /// A fixed interrupt arrives: into IRR (TMR says edge or level).
    fn accept_fixed(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.record_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        Self::set_bit(&mut self.irr, vector, true);
        Self::set_bit(&mut self.tmr, vector, level);
    }

    /// The highest IRR vector whose class beats the PPR.
    fn deliverable(&self) -> Option<u8> {
        if !self.globally_enabled || !self.software_enabled() {
            return None;
        }
        let v = Self::highest(&self.irr)?;
        (u32::from(v) & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    fn extint_pending(&self) -> bool {
        if !self.globally_enabled {
            return self.lint0;
        }
        let entry = self.lvt[LVT_LINT0];
        self.lint0 && entry & lvt::MASKED == 0 && entry & lvt::DELIVERY_MODE == lvt::MODE_EXTINT
    }

    /// Whether the CPU's INTR should be asserted, and for what.
    pub fn interrupt_pending(&self) -> Option<InterruptKind> {
        if self.deliverable().is_some() {
            Some(InterruptKind::Fixed)
        } else if self.extint_pending() {
            Some(InterruptKind::ExtInt)
        } else {
            None
        }
    }

    /// The CPU's interrupt acknowledge.
    pub fn acknowledge(&mut self) -> Option<Ack> {
        if let Some(v) = self.deliverable() {
            Self::set_bit(&mut self.irr, v, false);
            Self::set_bit(&mut self.isr, v, true);
            return Some(Ack::Vector(v));
        }
        if self.extint_pending() {
            return Some(Ack::ExtInt);
        }
        if self.globally_enabled && self.software_enabled() {
            return Some(Ack::Spurious(self.svr as u8));
        }
        None
    }

    /// Takes a pending NMI (from LINT1, an LVT programmed NMI, or an NMI IPI).
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi_pending)
    }

    /// What a LINT pin's rising edge or level does, per its LVT entry.
    fn lint_event(&mut self, index: usize, level: bool, rising: bool) {
        let entry = self.lvt[index];
        if entry & lvt::MASKED != 0 {
            return;
        }
        let vector = (entry & lvt::VECTOR) as u8;
        match entry & lvt::DELIVERY_MODE {
            lvt::MODE_NMI if rising => self.nmi_pending = true,
            lvt::MODE_FIXED if index == LVT_LINT0 && entry & lvt::LEVEL != 0 => {
                self.level_fixed_lint0(vector, level)
            }
            lvt::MODE_FIXED if rising => self.accept_fixed(vector, false),
            // ExtINT is looked at as a level by `interrupt_pending`; SMI and
            // INIT have nowhere to go in this machine.
            _ => {}
        }
    }

    /// A level-triggered fixed LINT0: one delivery per assertion, the next
    /// only after the EOI clears remote IRR.
    fn level_fixed_lint0(&mut self, vector: u8, level: bool) {
        if level && self.lvt[LVT_LINT0] & lvt::REMOTE_IRR == 0 {
            self.accept_fixed(vector, true);
            self.lvt[LVT_LINT0] |= lvt::REMOTE_IRR;
        }
    }

    /// The PIC's INTR output, wired to LINT0.
    pub fn set_lint0(&mut self, level: bool) {
        let rising = level && !self.lint0;
        self.lint0 = level;
        if self.globally_enabled {
            self.lint_event(LVT_LINT0, level, rising);
        }
    }

    /// The board's NMI source, wired to LINT1 (always edge-sensitive).
    pub fn set_lint1(&mut self, level: bool) {
        let rising = level && !self.lint1;
        self.lint1 = level;
        if !self.globally_enabled {
            self.nmi_pending |= rising;
        } else {
            self.lint_event(LVT_LINT1, level, rising);
        }
    }

    // ----- timer -----

    fn timer_divisor(&self) -> u64 {
        let v = (self.timer_divide & 3) | ((self.timer_divide >> 1) & 4);
        if v == 7 { 1 } else { 2 << v }
    }

    /// Timer ticks (after the divider) since `timer_base`.
    fn timer_ticks(&self, now: Duration) -> u64 {
        let nanos = now.saturating_sub(self.timer_base).as_nanos();
        let ticks = nanos * u128::from(BUS_HZ) / 1_000_000_000 / u128::from(self.timer_divisor());
        ticks.min(u128::from(u64::MAX)) as u64
    }

    fn periodic(&self) -> bool {
        self.lvt[LVT_TIMER] & lvt::TIMER_PERIODIC != 0
    }

    /// Expirations since `timer_base` by `now`.
    fn timer_expirations(&self, now: Duration) -> u64 {
        if self.timer_initial == 0 || self.timer_count_base == 0 {
            return 0;
        }
        let ticks = self.timer_ticks(now);
        let first = u64::from(self.timer_count_base);
        if ticks < first {
            0
        } else if self.periodic() {
            1 + (ticks - first) / u64::from(self.timer_initial)
        } else {
            1
        }
    }

    fn timer_current(&self, now: Duration) -> u32 {
        if self.timer_initial == 0 || self.timer_count_base == 0 {
            return 0;
        }
        let ticks = self.timer_ticks(now);
        let first = u64::from(self.timer_count_base);
        if ticks < first {
            (first - ticks) as u32
        } else if self.periodic() {
            let period = u64::from(self.timer_initial);
            (period - (ticks - first) % period) as u32
        } else {
            0
        }
    }

    /// Restarts the count from `count` at `now` (initial-count writes,
    /// divider and mode changes keep the counter continuous).
    fn rebase_timer(&mut self, now: Duration, count: u32) {
        self.timer_base = now;
        self.timer_count_base = count;
        self.timer_fired = 0;
    }

    /// Timer service: an expiry since the last poll sets the timer vector in
    /// IRR (several expiries coalesce into one, as a busy APIC would).
    pub fn poll(&mut self, now: Duration) {
        let n = self.timer_expirations(now);
        if n > self.timer_fired {
            self.timer_fired = n;
            let entry = self.lvt[LVT_TIMER];
            if entry & lvt::MASKED == 0 && self.globally_enabled {
                self.accept_fixed((entry & lvt::VECTOR) as u8, false);
            }
            if self.periodic() {
                // Keep the arithmetic small: re-base on the last expiry.
                let period = u64::from(self.timer_initial);
                let first = u64::from(self.timer_count_base);
                let at_ticks = first + (n - 1) * period;
                let at = self.ticks_to_time(at_ticks);
                let base = self.timer_base.saturating_add(at);
                self.rebase_timer(base, self.timer_initial);
            }
        }
    }

    fn ticks_to_time(&self, ticks: u64) -> Duration {
        let nanos = (u128::from(ticks) * u128::from(self.timer_divisor()) * 1_000_000_000)
            .div_ceil(u128::from(BUS_HZ));
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    /// When the timer next expires, if that would interrupt.
    pub fn next_deadline(&self) -> Option<Duration> {
        if !self.globally_enabled
            || self.lvt[LVT_TIMER] & lvt::MASKED != 0
            || self.timer_initial == 0
            || self.timer_count_base == 0
            || (!self.periodic() && self.timer_fired > 0)
        {
            return None;
        }
        let first = u64::from(self.timer_count_base);
        let ticks = first + self.timer_fired * u64::from(self.timer_initial);
        Some(self.timer_base.saturating_add(self.ticks_to_time(ticks)))
    }

    // ----- MMIO -----

    /// A dword read at `offset` (0..0x1000) in the APIC window; the
    /// register containing `offset` answers.
    pub fn mmio_read(&mut self, offset: u32) -> u32 {
        if !self.globally_enabled {
            return 0xFFFF_FFFF;
        }
        let reg = offset & 0xFF0;
        let index = ((reg >> 4) & 7) as usize;
        match reg {
            regs::ID => self.id,
            regs::VERSION => VERSION,
            regs::TPR => self.tpr,
            regs::APR => self.apr(),
            regs::PPR => self.ppr(),
            regs::LDR => self.ldr,
            regs::DFR => self.dfr,
            regs::SVR => self.svr,
            0x100..=0x170 => self.isr[index],
            0x180..=0x1F0 => self.tmr[index],
            0x200..=0x270 => self.irr[index],
            regs::ESR => self.esr,
            regs::ICR_LOW => self.icr[0],
            regs::ICR_HIGH => self.icr[1],
            regs::LVT_TIMER => self.lvt[LVT_TIMER],
            regs::LVT_PERF => self.lvt[LVT_PERF],
            regs::LVT_LINT0 => self.lvt[LVT_LINT0],
            regs::LVT_LINT1 => self.lvt[LVT_LINT1],
            regs::LVT_ERROR => self.lvt[LVT_ERROR],
            regs::TIMER_INITIAL => self.timer_initial,
            regs::TIMER_CURRENT => self.timer_current(self.clock.now()),
            regs::TIMER_DIVIDE => self.timer_divide,
            // EOI is write-only; reserved registers read zero.
            _ => 0,
        }
    }

    /// A dword write at `offset` (16-byte aligned; others are dropped).
    pub fn mmio_write(&mut self, offset: u32, value: u32) {
        if !self.globally_enabled || offset & 0xF != 0 {
            return;
        }
        match offset & 0xFF0 {
            regs::ID => self.id = value & 0x0F00_0000,
            regs::TPR => self.tpr = value & 0xFF,
            regs::EOI => self.eoi(),
            regs::LDR => self.ldr = value & 0xFF00_0000,
            regs::DFR => self.dfr = value | 0x0FFF_FFFF,
            regs::SVR => {
                // P6: spurious vector bits 0-3 are hardwired to ones.
                self.svr = (value & (SVR_FOCUS_DISABLE | SVR_ENABLE | 0xF0)) | 0x0F;
                if !self.software_enabled() {
                    for entry in &mut self.lvt {
                        *entry |= lvt::MASKED;
                    }
                }
            }
            regs::ESR => {
                self.esr = std::mem::take(&mut self.esr_pending);
            }
            regs::ICR_LOW => {
                self.icr[0] = value & 0x000C_CFFF;
                self.send_ipi();
            }
            regs::ICR_HIGH => self.icr[1] = value & 0xFF00_0000,
            regs::LVT_TIMER => {
                let now = self.clock.now();
                let current = self.timer_current(now);
                self.write_lvt(LVT_TIMER, value, 0x3_00FF);
                // The count carries on from where it is (a one-shot that
                // already ran out stays at zero, stopped).
                self.rebase_timer(now, current);
            }
            regs::LVT_PERF => self.write_lvt(LVT_PERF, value, 0x1_07FF),
            regs::LVT_LINT0 => {
                self.write_lvt(LVT_LINT0, value, 0x1_A7FF);
                let level = self.lint0;
                self.lint_event(LVT_LINT0, level, false);
            }
            regs::LVT_LINT1 => self.write_lvt(LVT_LINT1, value, 0x1_A7FF),
            regs::LVT_ERROR => self.write_lvt(LVT_ERROR, value, 0x1_00FF),
            regs::TIMER_INITIAL => {
                self.timer_initial = value;
                let now = self.clock.now();
                self.rebase_timer(now, value);
            }
            regs::TIMER_DIVIDE => {
                let now = self.clock.now();
                let current = self.timer_current(now);
                self.timer_divide = value & 0xB;
                self.rebase_timer(now, current);
            }
            // Read-only and reserved registers.
            _ => {}
        }
    }

    /// Writes an LVT entry through its writable bits; remote IRR and
    /// delivery status are the APIC's. A software-disabled APIC keeps
    /// every entry masked.
    fn write_lvt(&mut self, index: usize, value: u32, writable: u32) {
        let keep = self.lvt[index] & lvt::REMOTE_IRR;
        let mut entry = (value & writable & !lvt::REMOTE_IRR) | keep;
        if !self.software_enabled() {
            entry |= lvt::MASKED;
        }
        self.lvt[index] = entry;
    }

    fn eoi(&mut self) {
        let Some(v) = Self::highest(&self.isr) else {
            return;
        };
        Self::set_bit(&mut self.isr, v, false);
        if Self::bit(&self.tmr, v) {
            Self::set_bit(&mut self.tmr, v, false);
            // A level-triggered LINT0 source may still be asserted.
            let entry = self.lvt[LVT_LINT0];
            if entry & lvt::REMOTE_IRR != 0 && (entry & lvt::VECTOR) as u8 == v {
                self.lvt[LVT_LINT0] &= !lvt::REMOTE_IRR;
                let level = self.lint0;
                self.lint_event(LVT_LINT0, level, false);
            }
        }
    }

    /// Whether an IPI's destination includes this (only) APIC.
    fn ipi_hits_self(&self) -> bool {
        let dest = self.icr[1] >> 24;
        match self.icr[0] & lvt::SHORTHAND {
            lvt::SHORTHAND_SELF | lvt::SHORTHAND_ALL => true,
            lvt::SHORTHAND_OTHERS => false,
            _ if self.icr[0] & lvt::LOGICAL != 0 => {
                let logical = self.ldr >> 24;
                if self.dfr >> 28 == 0xF {
                    logical & dest != 0
                } else {
                    // Cluster model: high nibble is the cluster, low the members.
                    (logical >> 4 == dest >> 4 || dest >> 4 == 0xF) && logical & dest & 0xF != 0
                }
            }
            _ => dest == 0xFF || dest == self.id >> 24,
        }
    }

    /// ICR low written: send at once (so delivery status never reads busy).
    fn send_ipi(&mut self) {
        let vector = (self.icr[0] & lvt::VECTOR) as u8;
        let mode = self.icr[0] & lvt::DELIVERY_MODE;
        if matches!(mode, lvt::MODE_FIXED | lvt::MODE_LOWEST) && vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
            return;
        }
        if !self.ipi_hits_self() {
            // No other CPUs: the message goes nowhere.
            return;
        }
        match mode {
            lvt::MODE_FIXED | lvt::MODE_LOWEST if self.software_enabled() => {
                self.accept_fixed(vector, false)
            }
            lvt::MODE_NMI => self.nmi_pending = true,
            // INIT and STARTUP to ourselves, SMI, ExtINT: nothing to do on a
            // single CPU without SMM (a self-INIT is not architecturally
            // allowed).
            lvt::MODE_INIT | lvt::MODE_STARTUP | lvt::MODE_SMI | lvt::MODE_EXTINT => {}
            _ => {}
        }
    }

    pub fn state(&self) -> LapicState {
        LapicState {
            id: self.id,
            tpr: self.tpr,
            ldr: self.ldr,
            dfr: self.dfr,
            svr: self.svr,
            isr: self.isr,
            tmr: self.tmr,
            irr: self.irr,
            esr: self.esr,
            esr_pending: self.esr_pending,
            icr: self.icr,
            lvt: self.lvt,
            timer_initial: self.timer_initial,
            timer_divide: self.timer_divide,
            timer_base: self.timer_base,
            timer_count_base: self.timer_count_base,
            timer_fired: self.timer_fired,
            lint0: self.lint0,
            lint1: self.lint1,
            nmi_pending: self.nmi_pending,
            globally_enabled: self.globally_enabled,
        }
    }

    pub fn from_state(s: &LapicState, clock: C) -> Self {
        let mut dev = Self {
            id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr: [0; 2],
            lvt: [0; 5],
            timer_initial: 0,
            timer_divide: 0,
            timer_base: Duration::ZERO,
            timer_count_base: 0,
            timer_fired: 0,
            lint0: false,
            lint1: false,
            nmi_pending: false,
            globally_enabled: true,
            clock,
        };
        dev.restore(s);
        dev
    }

    fn restore(&mut self, s: &LapicState) {
        self.id = s.id & 0x0F00_0000;
        self.tpr = s.tpr & 0xFF;
        self.ldr = s.ldr & 0xFF00_0000;
        self.dfr = s.dfr | 0x0FFF_FFFF;
        self.svr = (s.svr & 0x3F0) | 0x0F;
        self.isr = s.isr;
        self.tmr = s.tmr;
        self.irr = s.irr;
        self.esr = s.esr;
        self.esr_pending = s.esr_pending;
        self.icr = s.icr;
        self.lvt = s.lvt;
        self.timer_initial = s.timer_initial;
        self.timer_divide = s.timer_divide & 0xB;
        self.timer_base = s.timer_base;
        self.timer_count_base = s.timer_count_base;
        self.timer_fired = s.timer_fired;
        self.lint0 = s.lint0;
        self.lint1 = s.lint1;
        self.nmi_pending = s.nmi_pending;
        self.globally_enabled = s.globally_enabled;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::FakeClock;
    use super::*;

    fn apic() -> (Lapic<FakeClock>, FakeClock) {
        let clock = FakeClock::default();
        (Lapic::new(clock.clone(), 0), clock)
    }

    /// An APIC the guest has software-enabled, spurious vector 0xFF.
    fn enabled_apic() -> (Lapic<FakeClock>, FakeClock) {
        let (mut a, clock) = apic();
        a.mmio_write(regs::SVR, 0x1FF);
        (a, clock)
    }

    fn self_ipi(a: &mut Lapic<FakeClock>, vector: u8) {
        a.mmio_write(regs::ICR_LOW, lvt::SHORTHAND_SELF | u32::from(vector));
    }

    fn isr_bit(a: &mut Lapic<FakeClock>, v: u8) -> bool {
        let word = a.mmio_read(regs::ISR + u32::from(v >> 5) * 0x10);
        word & (1 << (v & 31)) != 0
    }

    #[test]
    fn version_is_integrated_apic_with_max_lvt_4() {
        let (mut a, _) = apic();
        assert_eq!(a.mmio_read(regs::VERSION), 0x0004_0011);
    }

    #[test]
    fn reset_values_match_the_manual() {
        let (mut a, _) = apic();
        let values =
            [regs::SVR, regs::DFR, regs::LVT_TIMER, regs::LVT_ERROR].map(|r| a.mmio_read(r));
        assert_eq!(values, [0xFF, 0xFFFF_FFFF, 0x1_0000, 0x1_0000]);
    }

    #[test]
    fn spurious_vector_low_nibble_is_hardwired_to_ones() {
        let (mut a, _) = apic();
        a.mmio_write(regs::SVR, 0x120);
        assert_eq!(a.mmio_read(regs::SVR), 0x12F);
    }

    #[test]
    fn apic_id_is_four_bits_and_writable() {
        let (mut a, _) = apic();
        a.mmio_write(regs::ID, 0xFF00_0000);
        assert_eq!(a.mmio_read(regs::ID), 0x0F00_0000);
    }

    #[test]
    fn after_reset_pic_intr_passes_through_lint0_as_extint() {
        let (mut a, _) = apic();
        a.set_lint0(true);
        assert_eq!(a.interrupt_pending(), Some(InterruptKind::ExtInt));
        assert_eq!(a.acknowledge(), Some(Ack::ExtInt));
    }

    #[test]
    fn masked_lint0_blocks_pic_intr() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LVT_LINT0, lvt::MASKED | lvt::MODE_EXTINT);
        a.set_lint0(true);
        assert_eq!(a.interrupt_pending(), None);
    }

    #[test]
    fn globally_disabled_apic_passes_intr_and_floats_mmio() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LVT_LINT0, lvt::MASKED);
        a.set_enabled_by_msr(false);
        a.set_lint0(true);
        assert_eq!(a.interrupt_pending(), Some(InterruptKind::ExtInt));
        assert_eq!(a.mmio_read(regs::VERSION), 0xFFFF_FFFF);
    }

    #[test]
    fn globally_disabled_apic_stays_off_until_reset() {
        let (mut a, _) = apic();
        a.set_enabled_by_msr(false);
        a.set_enabled_by_msr(true);
        let while_off = a.globally_enabled();
        a.reset();
        assert!(!while_off);
        assert!(a.globally_enabled());
    }

    #[test]
    fn globally_disabled_lint1_edge_is_nmi() {
        let (mut a, _) = apic();
        a.set_enabled_by_msr(false);
        a.set_lint1(true);
        assert!(a.take_nmi());
    }

    #[test]
    fn self_ipi_is_delivered_and_moves_to_isr() {
        let (mut a, _) = enabled_apic();
        self_ipi(&mut a, 0x41);
        let pending = a.interrupt_pending();
        let ack = a.acknowledge();
        assert_eq!(pending, Some(InterruptKind::Fixed));
        assert_eq!(ack, Some(Ack::Vector(0x41)));
        assert!(isr_bit(&mut a, 0x41));
        assert_eq!(a.mmio_read(regs::IRR + 0x20), 0);
    }

    #[test]
    fn fixed_interrupts_take_precedence_over_extint() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LVT_LINT0, lvt::MODE_EXTINT);
        a.set_lint0(true);
        self_ipi(&mut a, 0x30);
        assert_eq!(a.acknowledge(), Some(Ack::Vector(0x30)));
        assert_eq!(a.acknowledge(), Some(Ack::ExtInt));
    }

    #[test]
    fn software_disabled_apic_does_not_accept_fixed_ipis() {
        let (mut a, _) = apic();
        self_ipi(&mut a, 0x41);
        assert_eq!(a.interrupt_pending(), None);
    }

    #[test]
    fn eoi_clears_highest_in_service_vector() {
        let (mut a, _) = enabled_apic();
        self_ipi(&mut a, 0x31);
        a.acknowledge();
        self_ipi(&mut a, 0x51);
        a.acknowledge();
        a.mmio_write(regs::EOI, 0);
        assert!(!isr_bit(&mut a, 0x51));
        assert!(isr_bit(&mut a, 0x31));
    }

    #[test]
    fn in_service_vector_blocks_its_own_priority_class() {
        let (mut a, _) = enabled_apic();
        self_ipi(&mut a, 0x51);
        a.acknowledge();
        self_ipi(&mut a, 0x52);
        let same_class = a.interrupt_pending();
        self_ipi(&mut a, 0x61);
        assert_eq!(same_class, None);
        assert_eq!(a.acknowledge(), Some(Ack::Vector(0x61)));
        assert_eq!(a.mmio_read(regs::PPR), 0x60);
    }

    #[test]
    fn tpr_masks_lower_and_equal_priority_classes() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::TPR, 0x50);
        self_ipi(&mut a, 0x5F);
        let masked = a.interrupt_pending();
        a.mmio_write(regs::TPR, 0x40);
        assert_eq!(masked, None);
        assert_eq!(a.interrupt_pending(), Some(InterruptKind::Fixed));
    }

    #[test]
    fn ppr_is_tpr_when_tpr_class_is_higher() {
        let (mut a, _) = enabled_apic();
        self_ipi(&mut a, 0x31);
        a.acknowledge();
        a.mmio_write(regs::TPR, 0x45);
        assert_eq!(a.mmio_read(regs::PPR), 0x45);
    }

    #[test]
    fn acknowledge_after_tpr_raise_returns_spurious_vector() {
        let (mut a, _) = enabled_apic();
        self_ipi(&mut a, 0x41);
        a.mmio_write(regs::TPR, 0xF0);
        assert_eq!(a.acknowledge(), Some(Ack::Spurious(0xFF)));
    }

    #[test]
    fn esr_reports_errors_only_after_a_write() {
        let (mut a, _) = enabled_apic();
        self_ipi(&mut a, 0x05);
        let before = a.mmio_read(regs::ESR);
        a.mmio_write(regs::ESR, 0);
        let latched = a.mmio_read(regs::ESR);
        a.mmio_write(regs::ESR, 0);
        assert_eq!(before, 0);
        assert_eq!(latched, esr::SEND_ILLEGAL_VECTOR);
        assert_eq!(a.mmio_read(regs::ESR), 0);
    }

    #[test]
    fn error_lvt_raises_its_vector() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LVT_ERROR, 0xFE);
        self_ipi(&mut a, 0x01);
        assert_eq!(a.acknowledge(), Some(Ack::Vector(0xFE)));
    }

    #[test]
    fn icr_delivery_status_never_reads_busy() {
        let (mut a, _) = enabled_apic();
        self_ipi(&mut a, 0x40);
        assert_eq!(a.mmio_read(regs::ICR_LOW) & lvt::DELIVERY_STATUS, 0);
    }

    #[test]
    fn physical_ipi_to_own_id_is_delivered_and_to_other_id_is_not() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::ICR_HIGH, 0x0300_0000);
        a.mmio_write(regs::ICR_LOW, 0x44);
        let other = a.interrupt_pending();
        a.mmio_write(regs::ICR_HIGH, 0);
        a.mmio_write(regs::ICR_LOW, 0x44);
        assert_eq!(other, None);
        assert_eq!(a.acknowledge(), Some(Ack::Vector(0x44)));
    }

    #[test]
    fn logical_flat_ipi_matches_ldr() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LDR, 0x0100_0000);
        a.mmio_write(regs::ICR_HIGH, 0x0100_0000);
        a.mmio_write(regs::ICR_LOW, lvt::LOGICAL | 0x44);
        assert_eq!(a.acknowledge(), Some(Ack::Vector(0x44)));
    }

    #[test]
    fn nmi_ipi_to_self_raises_nmi() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::ICR_LOW, lvt::SHORTHAND_SELF | lvt::MODE_NMI);
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
    }

    #[test]
    fn lint1_rising_edge_raises_nmi_once() {
        let (mut a, _) = enabled_apic();
        a.set_lint1(true);
        a.set_lint1(true);
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
    }

    #[test]
    fn level_fixed_lint0_redelivers_after_eoi_while_asserted() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LVT_LINT0, lvt::LEVEL | 0x70);
        a.set_lint0(true);
        a.acknowledge();
        let remote_irr = a.mmio_read(regs::LVT_LINT0) & lvt::REMOTE_IRR;
        a.mmio_write(regs::EOI, 0);
        assert_eq!(remote_irr, lvt::REMOTE_IRR);
        assert_eq!(a.acknowledge(), Some(Ack::Vector(0x70)));
    }

    #[test]
    fn software_disable_masks_every_lvt_entry() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LVT_TIMER, 0x40);
        a.mmio_write(regs::SVR, 0xFF);
        a.mmio_write(regs::LVT_LINT1, lvt::MODE_NMI);
        let entries = [regs::LVT_TIMER, regs::LVT_LINT0, regs::LVT_LINT1].map(|r| a.mmio_read(r));
        assert!(entries.iter().all(|e| e & lvt::MASKED != 0));
    }

    #[test]
    fn one_shot_timer_counts_down_and_fires_once() {
        let (mut a, clock) = enabled_apic();
        a.mmio_write(regs::TIMER_DIVIDE, 0xB); // divide by 1
        a.mmio_write(regs::LVT_TIMER, 0x40);
        a.mmio_write(regs::TIMER_INITIAL, 1000); // 10 µs at 100 MHz
        clock.advance(Duration::from_micros(5));
        let halfway = a.mmio_read(regs::TIMER_CURRENT);
        let deadline = a.next_deadline();
        clock.advance(Duration::from_micros(5));
        a.poll(clock.0.get());
        assert_eq!(halfway, 500);
        assert_eq!(deadline, Some(Duration::from_micros(10)));
        assert_eq!(a.acknowledge(), Some(Ack::Vector(0x40)));
        assert_eq!(a.mmio_read(regs::TIMER_CURRENT), 0);
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn periodic_timer_reloads_and_fires_every_period() {
        let (mut a, clock) = enabled_apic();
        a.mmio_write(regs::TIMER_DIVIDE, 0xB);
        a.mmio_write(regs::LVT_TIMER, lvt::TIMER_PERIODIC | 0x40);
        a.mmio_write(regs::TIMER_INITIAL, 1000);
        let mut fired = 0;
        for _ in 0..3 {
            let deadline = a.next_deadline().unwrap();
            clock.0.set(deadline);
            a.poll(deadline);
            if a.acknowledge() == Some(Ack::Vector(0x40)) {
                fired += 1;
                a.mmio_write(regs::EOI, 0);
            }
        }
        assert_eq!(fired, 3);
        assert_eq!(clock.0.get(), Duration::from_micros(30));
        assert_eq!(a.mmio_read(regs::TIMER_CURRENT), 1000);
    }

    #[test]
    fn divide_configuration_slows_the_count() {
        let (mut a, clock) = enabled_apic();
        a.mmio_write(regs::TIMER_DIVIDE, 0x3); // divide by 16
        a.mmio_write(regs::TIMER_INITIAL, 1000);
        clock.advance(Duration::from_micros(16));
        assert_eq!(a.mmio_read(regs::TIMER_CURRENT), 900);
    }

    #[test]
    fn masked_timer_has_no_deadline_and_raises_nothing() {
        let (mut a, clock) = enabled_apic();
        a.mmio_write(regs::LVT_TIMER, lvt::MASKED | 0x40);
        a.mmio_write(regs::TIMER_INITIAL, 10);
        clock.advance(Duration::from_millis(1));
        a.poll(clock.0.get());
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.interrupt_pending(), None);
    }

    #[test]
    fn zero_initial_count_stops_the_timer() {
        let (mut a, _) = enabled_apic();
        a.mmio_write(regs::LVT_TIMER, 0x40);
        a.mmio_write(regs::TIMER_INITIAL, 100);
        a.mmio_write(regs::TIMER_INITIAL, 0);
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn every_register_access_is_harmless() {
        let (mut a, clock) = enabled_apic();
        for offset in (0..MMIO_SIZE).step_by(4) {
            a.mmio_write(offset, 0xFFFF_FFFF);
            a.mmio_read(offset);
            clock.advance(Duration::from_nanos(7));
            a.poll(clock.0.get());
        }
        a.acknowledge();
    }

    #[test]
    fn state_round_trips() {
        let (mut a, clock) = enabled_apic();
        a.mmio_write(regs::LVT_TIMER, lvt::TIMER_PERIODIC | 0x40);
        a.mmio_write(regs::TIMER_INITIAL, 1234);
        self_ipi(&mut a, 0x55);
        let copy = Lapic::from_state(&a.state(), clock);
        assert_eq!(copy.state(), a.state());
    }
}
