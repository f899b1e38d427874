//! The chipset's PCI functions: the i440FX host bridge (00.0), the PIIX3 ISA
//! bridge (01.0), the PIIX3 IDE controller (01.1, in `ide/`) and the PIIX4
//! power-management function (01.3) with its ACPI PM I/O registers. This is the mix QEMU's `pc` machine presents and
//! SeaBIOS expects.
//!
//! The board owns the three functions (or a [`Piix`] holding them) and
//! dispatches configuration cycles to them through
//! [`PciDevices`](super::pci::PciDevices). Registers that change the
//! platform's address decoding (PAM, SMRAM, PMBA) set a flag the board takes
//! after configuration writes ([`I440fx::take_mapping_changed`],
//! [`Piix4Pm::take_io_changed`]) and then re-reads.

use std::time::Duration;

use super::ide::{IDE_DEVFN, Piix3Ide};
use super::pci::{ConfigSpace, PciDevices, PciFunction, reg};
use super::{Clock, IrqLine};
use crate::bus::IoSize;

const INTEL: u16 = 0x8086;

/// Where the functions sit on bus 0 (device << 3 | function).
pub const HOST_BRIDGE_DEVFN: u8 = 0x00;
pub const ISA_DEVFN: u8 = 0x08;
pub const PM_DEVFN: u8 = 0x0B;

/// i440FX PCI and memory controller (00.0).
#[derive(Clone, Debug)]
pub struct I440fx {
    config: ConfigSpace,
    mapping_changed: bool,
}

impl Default for I440fx {
    fn default() -> Self {
        Self::new()
    }
}

impl I440fx {
    /// PAM0-PAM6: BIOS and option-ROM shadow RAM attributes.
    pub const PAM0: u8 = 0x59;
    pub const PAM_COUNT: usize = 7;
    /// SMRAM control.
    pub const SMRAM: u8 = 0x72;
    const SMRAM_D_OPEN: u8 = 1 << 6;
    const SMRAM_D_LCK: u8 = 1 << 4;
    /// C_BASE_SEG = 010b: SMRAM at 0xA0000 (read-only).
    const SMRAM_DEFAULT: u8 = 0x02;

    pub fn new() -> Self {
        let mut config = ConfigSpace::new(INTEL, 0x1237, [0x06, 0x00, 0x00], 0x02);
        // Memory and bus-master decoding are always on in the host bridge.
        config.set_u16(reg::COMMAND, 0x0006);
        config.set_writable_u16(reg::COMMAND, 0x0000);
        config.set_writable(reg::INTERRUPT_LINE, 0);
        for i in 0..Self::PAM_COUNT as u8 {
            // PAM0's low nibble is reserved; each nibble is RE/WE (bits 0-1).
            config.set_writable(Self::PAM0 + i, if i == 0 { 0x30 } else { 0x33 });
        }
        config.set_u8(Self::SMRAM, Self::SMRAM_DEFAULT);
        config.set_writable(Self::SMRAM, 0x78);
        Self {
            config,
            mapping_changed: false,
        }
    }

    /// PAM0-PAM6, for the board's shadow-RAM mapping.
    pub fn pam(&self) -> [u8; Self::PAM_COUNT] {
        std::array::from_fn(|i| self.config.u8(Self::PAM0 + i as u8))
    }

    /// The SMRAM control register.
    pub fn smram(&self) -> u8 {
        self.config.u8(Self::SMRAM)
    }

    /// Whether PAM or SMRAM changed since the last call.
    pub fn take_mapping_changed(&mut self) -> bool {
        std::mem::take(&mut self.mapping_changed)
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    pub fn state(&self) -> Vec<u8> {
        self.config.bytes().to_vec()
    }

    pub fn from_state(bytes: &[u8]) -> Self {
        let mut dev = Self::new();
        dev.config.restore(bytes);
        dev.mapping_changed = true;
        dev
    }
}

impl PciFunction for I440fx {
    fn config_read(&mut self, offset: u8, size: IoSize) -> u32 {
        self.config.read(offset, size)
    }

    fn config_write(&mut self, offset: u8, size: IoSize, value: u32) {
        let before = (self.pam(), self.smram());
        let locked = self.smram() & Self::SMRAM_D_LCK != 0;
        self.config.write(offset, size, value);
        if locked {
            // D_LCK: SMRAM control is read-only except D_CLS until reset.
            let v = (before.1 & !0x20) | (self.smram() & 0x20);
            self.config.set_u8(Self::SMRAM, v & !Self::SMRAM_D_OPEN);
        } else if self.smram() & Self::SMRAM_D_LCK != 0 {
            // Setting D_LCK also closes SMRAM.
            let v = self.smram() & !Self::SMRAM_D_OPEN;
            self.config.set_u8(Self::SMRAM, v);
        }
        if (self.pam(), self.smram()) != before {
            self.mapping_changed = true;
        }
    }
}

/// PIIX3 PCI-to-ISA bridge (01.0).
#[derive(Clone, Debug)]
pub struct Piix3Isa {
    config: ConfigSpace,
}

impl Default for Piix3Isa {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix3Isa {
    /// PIRQRCA-D: PCI INTA#-INTD# to ISA IRQ routing.
    pub const PIRQRC: u8 = 0x60;
    /// Routing disabled (bit 7), as after reset.
    const PIRQ_DISABLED: u8 = 0x80;

    pub fn new() -> Self {
        let mut config = ConfigSpace::new(INTEL, 0x7000, [0x06, 0x01, 0x00], 0x00);
        config.set_multifunction();
        config.set_u16(reg::COMMAND, 0x0007);
        config.set_writable_u16(reg::COMMAND, 0x0008);
        config.set_u16(reg::STATUS, 0x0200);
        config.set_writable(reg::INTERRUPT_LINE, 0);
        for i in 0..4 {
            config.set_u8(Self::PIRQRC + i, Self::PIRQ_DISABLED);
            config.set_writable(Self::PIRQRC + i, 0x8F);
        }
        // Storage the BIOS programs and reads back: ISA clock/IORT (0x4C),
        // XBCS (0x4E-0x4F), TOM (0x69), MBIRQ (0x70-0x71), MBDMA (0x76-0x77),
        // APIC base (0x80), deterministic latency (0x82), SMI (0xA0-0xAF).
        config.set_u8(0x4C, 0x4D);
        config.set_u16(0x4E, 0x0003);
        config.set_u8(0x69, 0x02);
        config.set_u8(0x70, 0x80);
        config.set_u8(0x71, 0x80);
        config.set_u16(0x76, 0x0404);
        config.set_u8(0xA8, 0x0F);
        for offset in [0x4C, 0x4E, 0x4F, 0x69, 0x70, 0x71, 0x76, 0x77, 0x80, 0x82]
            .into_iter()
            .chain(0xA0..=0xAF)
        {
            config.set_writable(offset, 0xFF);
        }
        Self { config }
    }

    /// The ISA IRQ PCI interrupt line `pirq` (0 = INTA# … 3 = INTD#) is
    /// routed to, or `None` when routing is off or names a reserved IRQ.
    pub fn pirq_route(&self, pirq: usize) -> Option<u8> {
        let v = self.config.u8(Self::PIRQRC + (pirq.min(3) as u8));
        let irq = v & 0x0F;
        let valid = matches!(irq, 3..=7 | 9..=12 | 14 | 15);
        (v & Self::PIRQ_DISABLED == 0 && valid).then_some(irq)
    }

    /// All four routes.
    pub fn pirq_routes(&self) -> [Option<u8>; 4] {
        std::array::from_fn(|i| self.pirq_route(i))
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    pub fn state(&self) -> Vec<u8> {
        self.config.bytes().to_vec()
    }

    pub fn from_state(bytes: &[u8]) -> Self {
        let mut dev = Self::new();
        dev.config.restore(bytes);
        dev
    }
}

impl PciFunction for Piix3Isa {
    fn config_read(&mut self, offset: u8, size: IoSize) -> u32 {
        self.config.read(offset, size)
    }
    fn config_write(&mut self, offset: u8, size: IoSize, value: u32) {
        self.config.write(offset, size, value)
    }
}

/// What a PM register write asks of the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmEffect {
    /// SLP_EN with SLP_TYP equal to the S5 value the board's DSDT uses.
    PowerOff,
    /// SLP_EN with another SLP_TYP (S1-S4, as the DSDT defines them).
    Sleep(u8),
}

/// ACPI PM1 and GPE register bits.
pub mod pm1 {
    pub const TMR_STS: u16 = 1 << 0;
    pub const GBL_STS: u16 = 1 << 5;
    pub const PWRBTN_STS: u16 = 1 << 8;
    pub const RTC_STS: u16 = 1 << 10;
    pub const WAK_STS: u16 = 1 << 15;
    pub const TMR_EN: u16 = 1 << 0;
    pub const GBL_EN: u16 = 1 << 5;
    pub const PWRBTN_EN: u16 = 1 << 8;
    pub const RTC_EN: u16 = 1 << 10;
    pub const SCI_EN: u16 = 1 << 0;
    pub const SLP_TYP_SHIFT: u16 = 10;
    pub const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
    pub const SLP_EN: u16 = 1 << 13;
}

/// Offsets in the PM I/O block (PIIX4 layout).
pub mod pmio {
    pub const PM1_STS: u16 = 0x00;
    pub const PM1_EN: u16 = 0x02;
    pub const PM1_CNT: u16 = 0x04;
    pub const PM_TMR: u16 = 0x08;
    pub const GPE0_STS: u16 = 0x0C;
    pub const GPE0_EN: u16 = 0x0E;
    /// Size of the block PMBA decodes.
    pub const LEN: u16 = 0x40;
}

/// The ACPI PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// Plain-data snapshot of a [`Piix4Pm`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Piix4PmState {
    pub config: Vec<u8>,
    pub pm1_sts: u16,
    pub pm1_en: u16,
    pub pm1_cnt: u16,
    pub gpe0_sts: u16,
    pub gpe0_en: u16,
    pub other: Vec<u8>,
    pub tmr_period_seen: u64,
    pub apm_control: u8,
    pub apm_status: u8,
}

/// PIIX4 power management function (01.3) and its ACPI I/O registers.
pub struct Piix4Pm<C: Clock, I: IrqLine> {
    config: ConfigSpace,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    /// The rest of the 64-byte block, kept as plain storage.
    other: [u8; pmio::LEN as usize],
    /// The PM timer's bit-23 half-period count when TMR_STS last caught up.
    tmr_period_seen: u64,
    s5_slp_typ: u8,
    apm_control: u8,
    apm_status: u8,
    io_changed: bool,
    clock: C,
    sci: I,
}

impl<C: Clock, I: IrqLine> Piix4Pm<C, I> {
    /// PMBA: PM I/O base (bits 15:6), bit 0 hardwired 1.
    pub const PMBA: u8 = 0x40;
    /// PMREGMISC: bit 0 enables the PM I/O space.
    pub const PMREGMISC: u8 = 0x80;
    /// SMBBA: SMBus I/O base (bits 15:4), bit 0 hardwired 1.
    pub const SMBBA: u8 = 0x90;
    /// SMBus host configuration.
    pub const SMBHSTCFG: u8 = 0xD2;
    /// The SCI's ISA IRQ.
    pub const SCI_IRQ: u8 = 9;
    /// Values written to the APM control port (0xB2) that switch ACPI mode
    /// on and off; the FADT's ACPI_ENABLE / ACPI_DISABLE must match.
    pub const ACPI_ENABLE: u8 = 0xF1;
    pub const ACPI_DISABLE: u8 = 0xF0;
    pub const APM_CONTROL_PORT: u16 = 0xB2;
    pub const APM_STATUS_PORT: u16 = 0xB3;

    /// `s5_slp_typ` is the SLP_TYP the board's DSDT `\_S5` names; `sci` is
    /// ISA IRQ 9, driven as a level while an enabled event is pending.
    fn initial_config() -> ConfigSpace {
        let mut config = ConfigSpace::new(INTEL, 0x7113, [0x06, 0x80, 0x00], 0x03);
        config.set_writable_u16(reg::COMMAND, 0x0001);
        config.set_u8(reg::INTERRUPT_LINE, Self::SCI_IRQ);
        config.set_writable(reg::INTERRUPT_LINE, 0xFF);
        config.set_u8(reg::INTERRUPT_PIN, 1);
        config.set_u32(Self::PMBA, 1);
        config.set_writable_u32(Self::PMBA, 0x0000_FFC0);
        config.set_writable(Self::PMREGMISC, 0x01);
        config.set_u32(Self::SMBBA, 1);
        config.set_writable_u32(Self::SMBBA, 0x0000_FFF0);
        config.set_writable(Self::SMBHSTCFG, 0x0F);
        // DEVACTA/B, DEVRESA-J: storage the BIOS may program.
        for offset in 0x58..=0x7F {
            config.set_writable(offset, 0xFF);
        }
        // DEVACTB bit 25 (APMC_EN) reads as set: "SMM already initialised",
        // so SeaBIOS does not try to relocate SMBASE through an SMI that
        // this machine (no SMM) would never answer. QEMU does the same when
        // SMM is off.
        config.set_u8(0x5B, 0x02);
        config
    }

    pub fn new(clock: C, sci: I, s5_slp_typ: u8) -> Self {
        let config = Self::initial_config();
        Self {
            config,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            gpe0_sts: 0,
            gpe0_en: 0,
            other: [0; pmio::LEN as usize],
            tmr_period_seen: 0,
            s5_slp_typ: s5_slp_typ & 7,
            apm_control: 0,
            apm_status: 0,
            io_changed: false,
            clock,
            sci,
        }
    }

    /// Back to the power-on state (machine reset), keeping clock and SCI line.
    pub fn reset(&mut self) {
        let before = self.pm_io_base();
        self.config = Self::initial_config();
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = 0;
        self.gpe0_sts = 0;
        self.gpe0_en = 0;
        self.other = [0; pmio::LEN as usize];
        self.tmr_period_seen = self.ticks() >> 23;
        self.apm_control = 0;
        self.apm_status = 0;
        self.io_changed |= self.pm_io_base() != before;
        self.update_sci();
    }

    /// The PM I/O block's base port while PMREGMISC enables it.
    pub fn pm_io_base(&self) -> Option<u16> {
        let enabled = self.config.u8(Self::PMREGMISC) & 1 != 0;
        enabled.then(|| (self.config.u32(Self::PMBA) & 0xFFC0) as u16)
    }

    /// The SMBus I/O base as programmed (storage only: no SMBus controller).
    pub fn smbus_base(&self) -> u16 {
        (self.config.u32(Self::SMBBA) & 0xFFF0) as u16
    }

    /// Whether PMBA or PMREGMISC changed since the last call.
    pub fn take_io_changed(&mut self) -> bool {
        std::mem::take(&mut self.io_changed)
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The ACPI power button: sets PWRBTN_STS; the SCI follows PWRBTN_EN.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= pm1::PWRBTN_STS;
        self.update_sci();
    }

    /// A guest write to the APM control port (0xB2): the ACPI enable
    /// handshake (there is no SMM to do it, so the chipset does it here).
    pub fn apm_control_write(&mut self, value: u8) {
        self.apm_control = value;
        match value {
            Self::ACPI_ENABLE => self.pm1_cnt |= pm1::SCI_EN,
            Self::ACPI_DISABLE => self.pm1_cnt &= !pm1::SCI_EN,
            _ => {}
        }
    }

    /// The APM ports 0xB2 (control) and 0xB3 (status, plain storage).
    pub fn apm_read(&self, port: u16) -> u8 {
        match port {
            Self::APM_CONTROL_PORT => self.apm_control,
            Self::APM_STATUS_PORT => self.apm_status,
            _ => 0xFF,
        }
    }

    pub fn apm_write(&mut self, port: u16, value: u8) {
        match port {
            Self::APM_CONTROL_PORT => self.apm_control_write(value),
            Self::APM_STATUS_PORT => self.apm_status = value,
            _ => {}
        }
    }

    /// SCI_EN, for a board whose FADT has no SMI command port (the OS then
    /// assumes ACPI mode is always on, so the board sets it at reset).
    pub fn set_sci_en(&mut self, on: bool) {
        if on {
            self.pm1_cnt |= pm1::SCI_EN;
        } else {
            self.pm1_cnt &= !pm1::SCI_EN;
        }
    }

    /// The board resumed the machine from a sleep state: sets WAK_STS.
    pub fn wake(&mut self) {
        self.pm1_sts |= pm1::WAK_STS;
        self.update_sci();
    }

    /// PM timer ticks since the clock's origin.
    fn ticks(&self) -> u64 {
        let nanos = self.clock.now().as_nanos();
        (nanos * u128::from(PM_TIMER_HZ) / 1_000_000_000) as u64
    }

    /// The 24-bit PM timer.
    pub fn pm_timer(&self) -> u32 {
        (self.ticks() & 0xFF_FFFF) as u32
    }

    /// Sets TMR_STS if bit 23 toggled since the last look.
    fn catch_up_timer(&mut self) {
        let period = self.ticks() >> 23;
        if period != self.tmr_period_seen {
            self.tmr_period_seen = period;
            self.pm1_sts |= pm1::TMR_STS;
        }
    }

    fn update_sci(&mut self) {
        let events = pm1::TMR_EN | pm1::GBL_EN | pm1::PWRBTN_EN | pm1::RTC_EN;
        let level = self.pm1_sts & self.pm1_en & events != 0 || self.gpe0_sts & self.gpe0_en != 0;
        self.sci.set_level(level);
    }

    /// Timer service: raises TMR_STS (and the SCI, if TMR_EN) when bit 23
    /// of the PM timer toggles.
    pub fn poll(&mut self, _now: Duration) {
        self.catch_up_timer();
        self.update_sci();
    }

    /// When the PM timer's bit 23 next toggles, if TMR_EN asks to hear it.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.pm1_en & pm1::TMR_EN == 0 {
            return None;
        }
        let next_tick = (self.tmr_period_seen + 1) << 23;
        let nanos = (u128::from(next_tick) * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ));
        Some(Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64))
    }

    fn read_byte(&mut self, offset: u16) -> u8 {
        let (word, shift) = match offset & !1 {
            pmio::PM1_STS => {
                self.catch_up_timer();
                (self.pm1_sts, offset & 1)
            }
            pmio::PM1_EN => (self.pm1_en, offset & 1),
            pmio::PM1_CNT => (self.pm1_cnt, offset & 1),
            pmio::GPE0_STS => (self.gpe0_sts, offset & 1),
            pmio::GPE0_EN => (self.gpe0_en, offset & 1),
            _ => return self.other.get(usize::from(offset)).copied().unwrap_or(0xFF),
        };
        (word >> (8 * shift)) as u8
    }

    /// An IN from the PM I/O block; `offset` is relative to PMBA.
    pub fn io_read(&mut self, offset: u16, size: IoSize) -> u32 {
        if (pmio::PM_TMR..pmio::PM_TMR + 4).contains(&offset) {
            let shift = 8 * u32::from(offset - pmio::PM_TMR);
            return (self.pm_timer() >> shift) & size.ones();
        }
        let v = (0..size as u16).fold(0u32, |acc, i| {
            acc | u32::from(self.read_byte(offset.wrapping_add(i))) << (8 * i)
        });
        self.update_sci();
        v
    }

    /// An OUT to the PM I/O block; `offset` is relative to PMBA.
    pub fn io_write(&mut self, offset: u16, size: IoSize, value: u32) -> Option<PmEffect> {
        let mut effect = None;
        for i in 0..size as u16 {
            let at = offset.wrapping_add(i);
            let byte = (value >> (8 * i)) as u8;
            let shift = 8 * (at & 1);
            let bits = u16::from(byte) << shift;
            let lane = 0xFFu16 << shift;
            match at & !1 {
                pmio::PM1_STS => {
                    self.catch_up_timer();
                    self.pm1_sts &= !bits;
                }
                pmio::PM1_EN => self.pm1_en = (self.pm1_en & !lane) | bits,
                pmio::PM1_CNT => {
                    let cnt = (self.pm1_cnt & !lane) | bits;
                    self.pm1_cnt = cnt & !pm1::SLP_EN;
                    if cnt & pm1::SLP_EN != 0 {
                        let typ = ((cnt & pm1::SLP_TYP_MASK) >> pm1::SLP_TYP_SHIFT) as u8;
                        effect = Some(if typ == self.s5_slp_typ {
                            PmEffect::PowerOff
                        } else {
                            PmEffect::Sleep(typ)
                        });
                    }
                }
                pmio::PM_TMR | 0x0A => {}
                pmio::GPE0_STS => self.gpe0_sts &= !bits,
                pmio::GPE0_EN => self.gpe0_en = (self.gpe0_en & !lane) | bits,
                _ => {
                    if let Some(slot) = self.other.get_mut(usize::from(at)) {
                        *slot = byte;
                    }
                }
            }
        }
        self.update_sci();
        effect
    }

    /// A device raising a general-purpose event (GPE0 status bit `bit`).
    pub fn raise_gpe(&mut self, bit: u8) {
        self.gpe0_sts |= 1u16 << (bit & 15);
        self.update_sci();
    }

    pub fn state(&self) -> Piix4PmState {
        Piix4PmState {
            config: self.config.bytes().to_vec(),
            pm1_sts: self.pm1_sts,
            pm1_en: self.pm1_en,
            pm1_cnt: self.pm1_cnt,
            gpe0_sts: self.gpe0_sts,
            gpe0_en: self.gpe0_en,
            other: self.other.to_vec(),
            tmr_period_seen: self.tmr_period_seen,
            apm_control: self.apm_control,
            apm_status: self.apm_status,
        }
    }

    pub fn from_state(s: &Piix4PmState, clock: C, sci: I, s5_slp_typ: u8) -> Self {
        let mut dev = Self::new(clock, sci, s5_slp_typ);
        dev.config.restore(&s.config);
        dev.pm1_sts = s.pm1_sts;
        dev.pm1_en = s.pm1_en;
        dev.pm1_cnt = s.pm1_cnt & !pm1::SLP_EN;
        dev.gpe0_sts = s.gpe0_sts;
        dev.gpe0_en = s.gpe0_en;
        for (dst, src) in dev.other.iter_mut().zip(&s.other) {
            *dst = *src;
        }
        dev.tmr_period_seen = s.tmr_period_seen;
        dev.apm_control = s.apm_control;
        dev.apm_status = s.apm_status;
        dev.io_changed = true;
        dev.update_sci();
        dev
    }
}

impl<C: Clock, I: IrqLine> PciFunction for Piix4Pm<C, I> {
    fn config_read(&mut self, offset: u8, size: IoSize) -> u32 {
        self.config.read(offset, size)
    }

    fn config_write(&mut self, offset: u8, size: IoSize, value: u32) {
        let before = self.pm_io_base();
        self.config.write(offset, size, value);
        if self.pm_io_base() != before {
            self.io_changed = true;
        }
    }
}

/// The chipset functions together, as bus 0's fixed population. A board
/// with more functions implements [`PciDevices`] itself and delegates.
pub struct Piix<C: Clock, I: IrqLine> {
    pub host: I440fx,
    pub isa: Piix3Isa,
    pub ide: Piix3Ide<I>,
    pub pm: Piix4Pm<C, I>,
}

impl<C: Clock, I: IrqLine> PciDevices for Piix<C, I> {
    fn function(&mut self, devfn: u8) -> Option<&mut dyn PciFunction> {
        match devfn {
            HOST_BRIDGE_DEVFN => Some(&mut self.host),
            ISA_DEVFN => Some(&mut self.isa),
            IDE_DEVFN => Some(&mut self.ide),
            PM_DEVFN => Some(&mut self.pm),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pci::{CONFIG_ADDRESS, CONFIG_DATA, PciHost};
    use super::super::testing::{FakeClock, RecordingIrq};
    use super::*;

    const S5: u8 = 0;

    struct Rig {
        host: PciHost,
        piix: Piix<FakeClock, RecordingIrq>,
        clock: FakeClock,
        sci: RecordingIrq,
    }

    fn rig() -> Rig {
        let clock = FakeClock::default();
        let sci = RecordingIrq::default();
        Rig {
            host: PciHost::new(),
            piix: Piix {
                host: I440fx::new(),
                isa: Piix3Isa::new(),
                ide: Piix3Ide::new(RecordingIrq::default(), RecordingIrq::default()),
                pm: Piix4Pm::new(clock.clone(), sci.clone(), S5),
            },
            clock,
            sci,
        }
    }

    impl Rig {
        fn select(&mut self, devfn: u8, offset: u8) {
            let addr = 0x8000_0000 | u32::from(devfn) << 8 | u32::from(offset & 0xFC);
            let _ = self
                .host
                .write(CONFIG_ADDRESS, IoSize::Dword, addr, &mut self.piix);
        }
        fn cfg_read(&mut self, devfn: u8, offset: u8, size: IoSize) -> u32 {
            self.select(devfn, offset);
            let port = CONFIG_DATA + u16::from(offset & 3);
            self.host.read(port, size, &mut self.piix)
        }
        fn cfg_write(&mut self, devfn: u8, offset: u8, size: IoSize, value: u32) {
            self.select(devfn, offset);
            let port = CONFIG_DATA + u16::from(offset & 3);
            let _ = self.host.write(port, size, value, &mut self.piix);
        }
        /// Programs PMBA and enables the PM I/O space, as SeaBIOS does.
        fn enable_pm_io(&mut self, base: u16) {
            self.cfg_write(0x0B, 0x40, IoSize::Dword, u32::from(base) | 1);
            self.cfg_write(0x0B, 0x80, IoSize::Byte, 1);
        }
    }

    #[test]
    fn functions_identify_as_440fx_piix3_and_piix4_pm() {
        let mut r = rig();
        let ids = [0x00, 0x08, 0x0B].map(|devfn| r.cfg_read(devfn, 0, IoSize::Dword));
        assert_eq!(ids, [0x1237_8086, 0x7000_8086, 0x7113_8086]);
    }

    #[test]
    fn class_codes_are_host_isa_and_other_bridge() {
        let mut r = rig();
        let classes = [0x00, 0x08, 0x0B].map(|devfn| r.cfg_read(devfn, 0x0A, IoSize::Word));
        assert_eq!(classes, [0x0600, 0x0601, 0x0680]);
    }

    #[test]
    fn isa_bridge_is_multifunction() {
        let mut r = rig();
        assert_eq!(r.cfg_read(0x08, 0x0E, IoSize::Byte), 0x80);
    }

    #[test]
    fn functions_that_do_not_exist_read_all_ones() {
        let mut r = rig();
        assert_eq!(r.cfg_read(0x0A, 0, IoSize::Dword), 0xFFFF_FFFF);
    }

    #[test]
    fn ide_function_is_piix3_ide_in_legacy_mode() {
        let mut r = rig();
        let id = r.cfg_read(IDE_DEVFN, 0, IoSize::Dword);
        let class = r.cfg_read(IDE_DEVFN, 0x08, IoSize::Dword);
        assert_eq!(id, 0x7010_8086);
        assert_eq!(class, 0x0101_8000);
    }

    #[test]
    fn pam_writes_are_stored_and_flag_a_mapping_change() {
        let mut r = rig();
        r.cfg_write(0x00, 0x5A, IoSize::Word, 0x3333);
        let changed = r.piix.host.take_mapping_changed();
        assert!(changed);
        assert_eq!(r.piix.host.pam()[1..3], [0x33, 0x33]);
        assert!(!r.piix.host.take_mapping_changed());
    }

    #[test]
    fn smram_lock_closes_and_freezes_d_open() {
        let mut r = rig();
        r.cfg_write(0x00, 0x72, IoSize::Byte, 0x4A);
        r.cfg_write(0x00, 0x72, IoSize::Byte, 0x1A);
        r.cfg_write(0x00, 0x72, IoSize::Byte, 0x4A);
        assert_eq!(r.cfg_read(0x00, 0x72, IoSize::Byte), 0x1A);
    }

    #[test]
    fn pirq_routes_default_disabled() {
        let r = rig();
        assert_eq!(r.piix.isa.pirq_routes(), [None; 4]);
    }

    #[test]
    fn pirq_route_programmed_by_guest_is_exposed() {
        let mut r = rig();
        r.cfg_write(0x08, 0x60, IoSize::Dword, 0x0B0A_0B0A);
        assert_eq!(
            r.piix.isa.pirq_routes(),
            [Some(10), Some(11), Some(10), Some(11)]
        );
    }

    #[test]
    fn pirq_route_to_reserved_irq_is_none() {
        let mut r = rig();
        r.cfg_write(0x08, 0x61, IoSize::Byte, 0x02);
        assert_eq!(r.piix.isa.pirq_route(1), None);
    }

    #[test]
    fn pmba_keeps_bit0_and_ignores_low_bits() {
        let mut r = rig();
        r.cfg_write(0x0B, 0x40, IoSize::Dword, 0xFFFF_FFFF);
        assert_eq!(r.cfg_read(0x0B, 0x40, IoSize::Dword), 0x0000_FFC1);
    }

    #[test]
    fn pm_io_base_appears_only_when_pmregmisc_enables_it() {
        let mut r = rig();
        r.cfg_write(0x0B, 0x40, IoSize::Dword, 0x601);
        let before = r.piix.pm.pm_io_base();
        r.cfg_write(0x0B, 0x80, IoSize::Byte, 1);
        assert_eq!(before, None);
        assert_eq!(r.piix.pm.pm_io_base(), Some(0x600));
        assert!(r.piix.pm.take_io_changed());
    }

    #[test]
    fn pm_interrupt_line_is_9() {
        let mut r = rig();
        assert_eq!(r.cfg_read(0x0B, 0x3C, IoSize::Byte), 9);
    }

    #[test]
    fn smbus_base_is_storage() {
        let mut r = rig();
        r.cfg_write(0x0B, 0x90, IoSize::Dword, 0x0701);
        assert_eq!(r.piix.pm.smbus_base(), 0x700);
    }

    #[test]
    fn pm_timer_counts_at_3_579545_mhz() {
        let mut r = rig();
        r.enable_pm_io(0x600);
        let t0 = r.piix.pm.io_read(pmio::PM_TMR, IoSize::Dword);
        r.clock.advance(Duration::from_millis(1));
        let t1 = r.piix.pm.io_read(pmio::PM_TMR, IoSize::Dword);
        assert_eq!(t1 - t0, 3579);
    }

    #[test]
    fn pm_timer_wraps_at_24_bits() {
        let mut r = rig();
        r.clock.advance(Duration::from_secs(5));
        let t = r.piix.pm.io_read(pmio::PM_TMR, IoSize::Dword);
        assert_eq!(t, ((5 * PM_TIMER_HZ) & 0xFF_FFFF) as u32);
    }

    #[test]
    fn power_button_sets_status_without_sci_when_disabled() {
        let mut r = rig();
        r.piix.pm.press_power_button();
        let sts = r.piix.pm.io_read(pmio::PM1_STS, IoSize::Word);
        assert_eq!(sts as u16 & pm1::PWRBTN_STS, pm1::PWRBTN_STS);
        assert!(!r.sci.level.get());
    }

    #[test]
    fn power_button_raises_sci_until_status_cleared() {
        let mut r = rig();
        let _ = r
            .piix
            .pm
            .io_write(pmio::PM1_EN, IoSize::Word, u32::from(pm1::PWRBTN_EN));
        r.piix.pm.press_power_button();
        let raised = r.sci.level.get();
        let _ = r
            .piix
            .pm
            .io_write(pmio::PM1_STS, IoSize::Word, u32::from(pm1::PWRBTN_STS));
        assert!(raised);
        assert!(!r.sci.level.get());
    }

    #[test]
    fn slp_en_with_s5_type_powers_off() {
        let mut r = rig();
        let value = u32::from(pm1::SLP_EN | u16::from(S5) << pm1::SLP_TYP_SHIFT);
        let effect = r.piix.pm.io_write(pmio::PM1_CNT, IoSize::Word, value);
        assert_eq!(effect, Some(PmEffect::PowerOff));
    }

    #[test]
    fn slp_en_with_other_type_sleeps_and_reads_back_clear() {
        let mut r = rig();
        let value = u32::from(pm1::SLP_EN | 1 << pm1::SLP_TYP_SHIFT | pm1::SCI_EN);
        let effect = r.piix.pm.io_write(pmio::PM1_CNT, IoSize::Word, value);
        let cnt = r.piix.pm.io_read(pmio::PM1_CNT, IoSize::Word) as u16;
        assert_eq!(effect, Some(PmEffect::Sleep(1)));
        assert_eq!(cnt, 1 << pm1::SLP_TYP_SHIFT | pm1::SCI_EN);
    }

    #[test]
    fn slp_en_written_as_high_byte_alone_still_sleeps() {
        let mut r = rig();
        let effect = r.piix.pm.io_write(pmio::PM1_CNT + 1, IoSize::Byte, 0x20);
        assert_eq!(effect, Some(PmEffect::PowerOff));
    }

    #[test]
    fn acpi_enable_handshake_sets_sci_en() {
        let mut r = rig();
        r.piix.pm.apm_control_write(0xF1);
        let cnt = r.piix.pm.io_read(pmio::PM1_CNT, IoSize::Word) as u16;
        assert_eq!(cnt & pm1::SCI_EN, pm1::SCI_EN);
    }

    #[test]
    fn smm_reads_as_already_initialised() {
        let mut r = rig();
        let devactb = r.cfg_read(PM_DEVFN, 0x58, IoSize::Dword);
        assert_ne!(devactb & 1 << 25, 0);
    }

    #[test]
    fn apm_status_port_is_storage() {
        let mut r = rig();
        r.piix.pm.apm_write(0xB3, 0x5A);
        assert_eq!(r.piix.pm.apm_read(0xB3), 0x5A);
    }

    #[test]
    fn wake_sets_wak_sts() {
        let mut r = rig();
        r.piix.pm.wake();
        let sts = r.piix.pm.io_read(pmio::PM1_STS, IoSize::Word) as u16;
        assert_eq!(sts & pm1::WAK_STS, pm1::WAK_STS);
    }

    #[test]
    fn timer_overflow_sets_tmr_sts_and_sci_when_enabled() {
        let mut r = rig();
        let _ = r
            .piix
            .pm
            .io_write(pmio::PM1_EN, IoSize::Word, u32::from(pm1::TMR_EN));
        let deadline = r.piix.pm.next_deadline().unwrap();
        r.clock.0.set(deadline);
        r.piix.pm.poll(deadline);
        let sts = r.piix.pm.io_read(pmio::PM1_STS, IoSize::Word) as u16;
        assert_eq!(sts & pm1::TMR_STS, pm1::TMR_STS);
        assert!(r.sci.level.get());
    }

    #[test]
    fn gpe_raises_sci_when_enabled() {
        let mut r = rig();
        let _ = r.piix.pm.io_write(pmio::GPE0_EN, IoSize::Byte, 0x02);
        r.piix.pm.raise_gpe(1);
        assert!(r.sci.level.get());
    }

    #[test]
    fn every_pm_register_access_is_harmless() {
        let mut r = rig();
        for offset in 0..0x50u16 {
            for size in [IoSize::Byte, IoSize::Word, IoSize::Dword] {
                let _ = r.piix.pm.io_write(offset, size, 0xFFFF_DFFF);
                let _ = r.piix.pm.io_read(offset, size);
            }
        }
    }

    #[test]
    fn reset_drops_pending_events_and_disables_pm_io() {
        let mut r = rig();
        r.enable_pm_io(0x600);
        let _ = r
            .piix
            .pm
            .io_write(pmio::PM1_EN, IoSize::Word, u32::from(pm1::PWRBTN_EN));
        r.piix.pm.press_power_button();
        r.piix.pm.reset();
        assert!(!r.sci.level.get());
        assert_eq!(r.piix.pm.pm_io_base(), None);
    }

    #[test]
    fn pm_state_round_trips() {
        let mut r = rig();
        r.enable_pm_io(0x600);
        let _ = r.piix.pm.io_write(pmio::PM1_EN, IoSize::Word, 0x0100);
        let state = r.piix.pm.state();
        let copy = Piix4Pm::from_state(&state, r.clock.clone(), RecordingIrq::default(), S5);
        assert_eq!(copy.state(), state);
    }
}
