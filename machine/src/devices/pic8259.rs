//! The PC's cascaded pair of Intel 8259A programmable interrupt controllers,
//! plus the PIIX edge/level control registers (ELCR).
//!
//! The master answers at 0x20/0x21, the slave at 0xA0/0xA1 and the ELCR at
//! 0x4D0/0x4D1; [`PicPair::read`] and [`PicPair::write`] take an offset
//! ([`PicPair::port_offset`] maps the ISA ports to it). The slave's INT output feeds
//! the master's IR2. Devices drive lines 0-15 with [`PicPair::set_irq`]; the
//! board watches [`PicPair::output`] (INTR) and answers the CPU's INTA cycle
//! with [`PicPair::acknowledge`].
//!
//! Modelling choices:
//! - Edge-triggered requests are latched in IRR on the rising edge and stay
//!   there until acknowledged, even when the line drops again, so a device
//!   may signal an edge with [`IrqLine::pulse`](super::IrqLine::pulse).
//!   Level-triggered requests (ELCR, or ICW1 LTIM) follow the line: a line
//!   that drops before INTA yields the spurious vector (IR7 of that chip,
//!   with no ISR bit set), as on real hardware.
//! - The cascade input (master IR2) follows the slave's INT level, which
//!   stays high as long as the slave has an unserviced request it would
//!   present; this never loses a slave interrupt.
//! - 8080/85 mode (ICW4 uPM = 0) only changes the CALL sequence on an 8080;
//!   an x86 CPU reads the vector either way, so acknowledge returns the
//!   vector in both modes. Buffered mode bits are stored and ignored.

/// The master's input the slave's INT is wired to.
const CASCADE_IRQ: u8 = 2;

/// Where a chip is in its initialization sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitStep {
    /// Initialized: data-port writes are OCW1 (the mask).
    #[default]
    Ready,
    /// ICW1 written; the next data-port write is ICW2 (vector base).
    Icw2,
    /// Next data-port write is ICW3 (cascade wiring).
    Icw3,
    /// Next data-port write is ICW4 (mode).
    Icw4,
}

/// One 8259A's registers, as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChipState {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// Current level of each input line.
    pub lines: u8,
    /// Edge/level control register (1 = level).
    pub elcr: u8,
    /// ICW2: vector of IR0 (low three bits zero).
    pub vector_base: u8,
    /// ICW3 as written.
    pub icw3: u8,
    /// The IR that has the lowest priority is `lowest_priority`; the next
    /// one up has the highest (rotation state).
    pub lowest_priority: u8,
    pub init: InitStep,
    /// ICW1 IC4: an ICW4 follows.
    pub icw4_needed: bool,
    /// ICW1 SNGL: no cascade, no ICW3.
    pub single: bool,
    /// ICW1 LTIM: every input level-triggered.
    pub level_mode: bool,
    /// ICW4 AEOI.
    pub auto_eoi: bool,
    /// ICW4 uPM (8086 mode).
    pub mode_8086: bool,
    /// ICW4 SFNM.
    pub special_fully_nested: bool,
    /// ICW4 BUF / M/S bits, kept for read-back fidelity only.
    pub buffered: u8,
    /// OCW2 "rotate in automatic EOI mode".
    pub rotate_on_auto_eoi: bool,
    /// OCW3 RR/RIS: the command port reads ISR instead of IRR.
    pub read_isr: bool,
    /// OCW3 P: the next read is a poll.
    pub poll: bool,
    /// OCW3 SMM: special mask mode.
    pub special_mask: bool,
}

/// The pair's state, for saved states.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PicState {
    pub master: ChipState,
    pub slave: ChipState,
}

#[derive(Clone, Debug, Default)]
struct Chip {
    s: ChipState,
    is_master: bool,
    /// Bits of ELCR that exist (PIIX: IRQ 0, 1, 2, 8, 13 are always edge).
    elcr_mask: u8,
}

impl Chip {
    fn new(is_master: bool) -> Self {
        let mut chip = Chip {
            s: ChipState::default(),
            is_master,
            elcr_mask: if is_master { 0xF8 } else { 0xDE },
        };
        chip.s.lowest_priority = 7;
        chip
    }

    /// Inputs that are level-triggered.
    fn level_mask(&self) -> u8 {
        if self.s.level_mode { 0xFF } else { self.s.elcr }
    }

    fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1u8 << irq;
        let was = self.s.lines & bit != 0;
        if level {
            self.s.lines |= bit;
        } else {
            self.s.lines &= !bit;
        }
        if self.level_mask() & bit != 0 {
            if level {
                self.s.irr |= bit;
            } else {
                self.s.irr &= !bit;
            }
        } else if level && !was {
            self.s.irr |= bit;
        }
    }

    /// Level-triggered IRR bits always mirror their lines.
    fn resync_levels(&mut self) {
        let lm = self.level_mask();
        self.s.irr = (self.s.irr & !lm) | (self.s.lines & lm);
    }

    /// Priority rank of the highest-priority bit in `mask` (0 = highest).
    fn priority(&self, mask: u8) -> Option<u8> {
        (0..8).find(|rank| mask & (1 << ((rank + self.s.lowest_priority + 1) & 7)) != 0)
    }

    fn irq_of_rank(&self, rank: u8) -> u8 {
        (rank + self.s.lowest_priority + 1) & 7
    }

    /// The IR this chip would present to the CPU now, if any.
    fn pending(&self) -> Option<u8> {
        let requests = self.s.irr & !self.s.imr;
        let rank = self.priority(requests)?;
        let mut in_service = self.s.isr;
        if self.s.special_mask {
            in_service &= !self.s.imr;
        }
        if self.is_master && self.s.special_fully_nested {
            // A higher-priority slave request may nest inside a slave one.
            in_service &= !(1 << CASCADE_IRQ);
        }
        let current = self.priority(in_service).unwrap_or(8);
        (rank < current).then(|| self.irq_of_rank(rank))
    }

    fn intack(&mut self, irq: u8) {
        let bit = 1u8 << irq;
        if self.s.auto_eoi {
            if self.s.rotate_on_auto_eoi {
                self.s.lowest_priority = irq;
            }
        } else {
            self.s.isr |= bit;
        }
        if self.level_mask() & bit == 0 {
            self.s.irr &= !bit;
        }
    }

    fn poll_read(&mut self) -> u8 {
        self.s.poll = false;
        match self.pending() {
            Some(irq) => {
                self.intack(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            self.ocw3(value);
        } else {
            self.ocw2(value);
        }
    }

    fn icw1(&mut self, value: u8) {
        let keep = (self.s.lines, self.s.elcr);
        self.s = ChipState {
            lines: keep.0,
            elcr: keep.1,
            lowest_priority: 7,
            init: InitStep::Icw2,
            icw4_needed: value & 0x01 != 0,
            single: value & 0x02 != 0,
            level_mode: value & 0x08 != 0,
            ..ChipState::default()
        };
        // The edge-sense latches are reset: a line that is already high must
        // fall and rise again before it requests (level inputs still request).
        self.s.irr = 0;
        self.resync_levels();
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            0b000 => self.s.rotate_on_auto_eoi = false,
            0b100 => self.s.rotate_on_auto_eoi = true,
            0b001 | 0b101 => {
                if let Some(rank) = self.priority(self.s.isr) {
                    let irq = self.irq_of_rank(rank);
                    self.s.isr &= !(1 << irq);
                    if value >> 5 == 0b101 {
                        self.s.lowest_priority = irq;
                    }
                }
            }
            0b011 => self.s.isr &= !(1 << level),
            0b111 => {
                self.s.isr &= !(1 << level);
                self.s.lowest_priority = level;
            }
            0b110 => self.s.lowest_priority = level,
            _ => {} // 0b010: no operation.
        }
    }

    fn ocw3(&mut self, value: u8) {
        if value & 0x02 != 0 {
            self.s.read_isr = value & 0x01 != 0;
        }
        if value & 0x04 != 0 {
            self.s.poll = true;
        }
        if value & 0x40 != 0 {
            self.s.special_mask = value & 0x20 != 0;
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.s.init {
            InitStep::Ready => self.s.imr = value,
            InitStep::Icw2 => {
                self.s.vector_base = value & 0xF8;
                self.s.init = if self.s.single {
                    self.after_icw3()
                } else {
                    InitStep::Icw3
                };
            }
            InitStep::Icw3 => {
                self.s.icw3 = value;
                self.s.init = self.after_icw3();
            }
            InitStep::Icw4 => {
                self.s.mode_8086 = value & 0x01 != 0;
                self.s.auto_eoi = value & 0x02 != 0;
                self.s.buffered = value & 0x0C;
                self.s.special_fully_nested = value & 0x10 != 0;
                self.s.init = InitStep::Ready;
            }
        }
    }

    fn after_icw3(&self) -> InitStep {
        if self.s.icw4_needed {
            InitStep::Icw4
        } else {
            InitStep::Ready
        }
    }

    fn read_command(&mut self) -> u8 {
        if self.s.poll {
            self.poll_read()
        } else if self.s.read_isr {
            self.s.isr
        } else {
            self.s.irr
        }
    }

    fn read_data(&mut self) -> u8 {
        if self.s.poll {
            self.poll_read()
        } else {
            self.s.imr
        }
    }

    fn write_elcr(&mut self, value: u8) {
        self.s.elcr = value & self.elcr_mask;
        self.resync_levels();
    }

    /// Whether the master routes IR2 to a slave (not single mode).
    fn cascaded(&self) -> bool {
        !self.s.single
    }
}

/// The master/slave 8259A pair of a PC/AT.
#[derive(Clone, Debug)]
pub struct PicPair {
    master: Chip,
    slave: Chip,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// Master command port (0x20).
    pub const MASTER_COMMAND: u8 = 0;
    /// Master data port (0x21).
    pub const MASTER_DATA: u8 = 1;
    /// Slave command port (0xA0).
    pub const SLAVE_COMMAND: u8 = 2;
    /// Slave data port (0xA1).
    pub const SLAVE_DATA: u8 = 3;
    /// ELCR for IRQ 0-7 (0x4D0).
    pub const ELCR_MASTER: u8 = 4;
    /// ELCR for IRQ 8-15 (0x4D1).
    pub const ELCR_SLAVE: u8 = 5;

    /// Maps an ISA port to the offset [`PicPair::read`] / [`PicPair::write`] take.
    pub fn port_offset(port: u16) -> Option<u8> {
        match port {
            0x20 => Some(Self::MASTER_COMMAND),
            0x21 => Some(Self::MASTER_DATA),
            0xA0 => Some(Self::SLAVE_COMMAND),
            0xA1 => Some(Self::SLAVE_DATA),
            0x4D0 => Some(Self::ELCR_MASTER),
            0x4D1 => Some(Self::ELCR_SLAVE),
            _ => None,
        }
    }

    /// A pair in its power-on state (uninitialized, all unmasked, vector
    /// base 0); firmware programs it with ICW1-4.
    pub fn new() -> Self {
        Self {
            master: Chip::new(true),
            slave: Chip::new(false),
        }
    }

    /// Drives interrupt line `line` (0-15). Line 2 is the internal cascade
    /// and ignores outside drivers (ISA IRQ2 devices are wired to IRQ 9);
    /// lines above 15 are ignored.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        match line {
            CASCADE_IRQ => {}
            0..=7 => self.master.set_line(line, level),
            8..=15 => {
                self.slave.set_line(line - 8, level);
                self.update_cascade();
            }
            _ => {}
        }
    }

    /// The INTR level presented to the CPU.
    pub fn output(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The INTA cycle: returns the vector for the highest-priority request
    /// and moves it from IRR to ISR (or, with nothing left to present, the
    /// spurious IR7 vector of the chip concerned, with no ISR bit set).
    pub fn acknowledge(&mut self) -> u8 {
        let Some(irq) = self.master.pending() else {
            return self.master.s.vector_base | 7;
        };
        self.master.intack(irq);
        let vector = if irq == CASCADE_IRQ && self.master.cascaded() {
            match self.slave.pending() {
                Some(slave_irq) => {
                    self.slave.intack(slave_irq);
                    self.slave.s.vector_base | slave_irq
                }
                None => self.slave.s.vector_base | 7,
            }
        } else {
            self.master.s.vector_base | irq
        };
        self.update_cascade();
        vector
    }

    /// A guest read at `offset` (see the offset constants).
    pub fn read(&mut self, offset: u8) -> u8 {
        let value = match offset {
            Self::MASTER_COMMAND => self.master.read_command(),
            Self::MASTER_DATA => self.master.read_data(),
            Self::SLAVE_COMMAND => self.slave.read_command(),
            Self::SLAVE_DATA => self.slave.read_data(),
            Self::ELCR_MASTER => self.master.s.elcr,
            Self::ELCR_SLAVE => self.slave.s.elcr,
            _ => 0xFF,
        };
        // A poll read acknowledges; the slave's INT may have changed.
        self.update_cascade();
        value
    }

    /// A guest write at `offset` (see the offset constants).
    pub fn write(&mut self, offset: u8, value: u8) {
        match offset {
            Self::MASTER_COMMAND => self.master.write_command(value),
            Self::MASTER_DATA => self.master.write_data(value),
            Self::SLAVE_COMMAND => self.slave.write_command(value),
            Self::SLAVE_DATA => self.slave.write_data(value),
            Self::ELCR_MASTER => self.master.write_elcr(value),
            Self::ELCR_SLAVE => self.slave.write_elcr(value),
            _ => {}
        }
        self.update_cascade();
    }

    /// The slave's INT drives master IR2 (as a level; see the module docs).
    fn update_cascade(&mut self) {
        if !self.master.cascaded() {
            return;
        }
        let bit = 1u8 << CASCADE_IRQ;
        if self.slave.pending().is_some() {
            self.master.s.lines |= bit;
            self.master.s.irr |= bit;
        } else {
            self.master.s.lines &= !bit;
            self.master.s.irr &= !bit;
        }
    }

    /// A plain-data snapshot.
    pub fn state(&self) -> PicState {
        PicState {
            master: self.master.s.clone(),
            slave: self.slave.s.clone(),
        }
    }

    /// Rebuilds a pair from a snapshot (register values are taken as they
    /// are; out-of-range ones are masked).
    pub fn from_state(state: &PicState) -> Self {
        let mut pair = Self::new();
        pair.master.s = state.master.clone();
        pair.slave.s = state.slave.clone();
        for chip in [&mut pair.master, &mut pair.slave] {
            chip.s.lowest_priority &= 7;
            chip.s.vector_base &= 0xF8;
            chip.s.elcr &= chip.elcr_mask;
            chip.resync_levels();
        }
        pair.update_cascade();
        pair
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_COMMAND: u8 = PicPair::MASTER_COMMAND;
    const MASTER_DATA: u8 = PicPair::MASTER_DATA;
    const SLAVE_COMMAND: u8 = PicPair::SLAVE_COMMAND;
    const SLAVE_DATA: u8 = PicPair::SLAVE_DATA;
    const ELCR_MASTER: u8 = PicPair::ELCR_MASTER;
    const ELCR_SLAVE: u8 = PicPair::ELCR_SLAVE;

    /// The PC BIOS programming: edge, cascade, 8086 mode, vectors 0x08/0x70.
    fn bios_pic() -> PicPair {
        let mut pic = PicPair::new();
        pic.write(MASTER_COMMAND, 0x11);
        pic.write(MASTER_DATA, 0x08);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, 0x01);
        pic.write(SLAVE_COMMAND, 0x11);
        pic.write(SLAVE_DATA, 0x70);
        pic.write(SLAVE_DATA, 0x02);
        pic.write(SLAVE_DATA, 0x01);
        pic.write(MASTER_DATA, 0x00);
        pic.write(SLAVE_DATA, 0x00);
        pic
    }

    #[test]
    fn port_offsets_cover_both_chips_and_elcr() {
        let ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x22];

        let offsets: Vec<_> = ports.iter().map(|&p| PicPair::port_offset(p)).collect();

        assert_eq!(
            offsets,
            [Some(0), Some(1), Some(2), Some(3), Some(4), Some(5), None]
        );
    }

    #[test]
    fn pic_edge_irq_raises_intr_and_acknowledge_returns_vector() {
        let mut pic = bios_pic();

        pic.set_irq(1, true);

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x09);
        assert!(!pic.output());
        pic.write(MASTER_COMMAND, 0x0B); // OCW3: read ISR
        assert_eq!(pic.read(MASTER_COMMAND), 0x02);
    }

    #[test]
    fn pic_edge_request_survives_line_drop_until_acknowledged() {
        let mut pic = bios_pic();

        pic.set_irq(0, true);
        pic.set_irq(0, false);

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x08);
    }

    #[test]
    fn pic_edge_line_held_high_requests_once() {
        let mut pic = bios_pic();
        pic.set_irq(4, true);
        pic.acknowledge();
        pic.write(MASTER_COMMAND, 0x20);

        pic.set_irq(4, true);

        assert!(!pic.output());
    }

    #[test]
    fn pic_lower_priority_waits_for_eoi_of_higher() {
        let mut pic = bios_pic();
        pic.set_irq(0, true);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x08);
        assert!(!pic.output());

        pic.write(MASTER_COMMAND, 0x20); // non-specific EOI

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x0B);
    }

    #[test]
    fn pic_higher_priority_nests_inside_lower() {
        let mut pic = bios_pic();
        pic.set_irq(5, true);
        assert_eq!(pic.acknowledge(), 0x0D);

        pic.set_irq(1, true);

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x09);
    }

    #[test]
    fn pic_mask_blocks_request_and_unmask_releases_it() {
        let mut pic = bios_pic();
        pic.write(MASTER_DATA, 0x02);

        pic.set_irq(1, true);
        assert!(!pic.output());
        assert_eq!(pic.read(MASTER_DATA), 0x02);
        pic.write(MASTER_DATA, 0x00);

        assert!(pic.output());
    }

    #[test]
    fn pic_slave_irq_cascades_through_irq2() {
        let mut pic = bios_pic();

        pic.set_irq(12, true);

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x74);
        pic.write(SLAVE_COMMAND, 0x0B);
        pic.write(MASTER_COMMAND, 0x0B);
        assert_eq!(pic.read(SLAVE_COMMAND), 0x10);
        assert_eq!(pic.read(MASTER_COMMAND), 0x04);
    }

    #[test]
    fn pic_slave_needs_eoi_on_both_chips() {
        let mut pic = bios_pic();
        pic.set_irq(8, true);
        pic.set_irq(9, true);
        assert_eq!(pic.acknowledge(), 0x70);
        pic.write(SLAVE_COMMAND, 0x20);
        assert!(!pic.output());

        pic.write(MASTER_COMMAND, 0x20);

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x71);
    }

    #[test]
    fn pic_level_line_dropped_before_inta_gives_spurious_irq7() {
        let mut pic = bios_pic();
        pic.write(ELCR_MASTER, 0x20);
        pic.set_irq(5, true);
        assert!(pic.output());

        pic.set_irq(5, false);

        assert!(!pic.output());
        assert_eq!(pic.acknowledge(), 0x0F);
        pic.write(MASTER_COMMAND, 0x0B);
        assert_eq!(pic.read(MASTER_COMMAND), 0x00);
    }

    #[test]
    fn pic_request_masked_between_intr_and_inta_gives_spurious_irq7() {
        let mut pic = bios_pic();
        pic.set_irq(3, true);
        assert!(pic.output());

        pic.write(MASTER_DATA, 0x08);

        assert_eq!(pic.acknowledge(), 0x0F);
        pic.write(MASTER_DATA, 0x00);
        assert_eq!(pic.acknowledge(), 0x0B);
    }

    #[test]
    fn pic_level_line_requests_again_after_eoi_while_high() {
        let mut pic = bios_pic();
        pic.write(ELCR_SLAVE, 0x08);
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), 0x73);
        pic.write(SLAVE_COMMAND, 0x20);
        pic.write(MASTER_COMMAND, 0x20);

        let again = pic.output();

        assert!(again);
        assert_eq!(pic.acknowledge(), 0x73);
    }

    #[test]
    fn pic_elcr_reserved_bits_read_zero() {
        let mut pic = bios_pic();

        pic.write(ELCR_MASTER, 0xFF);
        pic.write(ELCR_SLAVE, 0xFF);

        assert_eq!(pic.read(ELCR_MASTER), 0xF8);
        assert_eq!(pic.read(ELCR_SLAVE), 0xDE);
    }

    #[test]
    fn pic_ltim_makes_every_input_level_triggered() {
        let mut pic = PicPair::new();
        pic.write(MASTER_COMMAND, 0x19); // ICW1 with LTIM, IC4
        pic.write(MASTER_DATA, 0x20);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, 0x01);
        pic.set_irq(3, true);

        pic.set_irq(3, false);

        assert!(!pic.output());
    }

    #[test]
    fn pic_auto_eoi_leaves_isr_clear() {
        let mut pic = PicPair::new();
        pic.write(MASTER_COMMAND, 0x13); // single, IC4
        pic.write(MASTER_DATA, 0x40);
        pic.write(MASTER_DATA, 0x03); // AEOI, 8086
        pic.set_irq(6, true);

        let vector = pic.acknowledge();

        assert_eq!(vector, 0x46);
        pic.write(MASTER_COMMAND, 0x0B);
        assert_eq!(pic.read(MASTER_COMMAND), 0x00);
    }

    #[test]
    fn pic_single_mode_skips_icw3() {
        let mut pic = PicPair::new();
        pic.write(MASTER_COMMAND, 0x13);
        pic.write(MASTER_DATA, 0x20);
        pic.write(MASTER_DATA, 0x01); // this is ICW4, not ICW3
        pic.write(MASTER_DATA, 0xFE); // OCW1

        assert_eq!(pic.read(MASTER_DATA), 0xFE);
    }

    #[test]
    fn pic_icw1_without_ic4_finishes_after_icw3() {
        let mut pic = PicPair::new();
        pic.write(MASTER_COMMAND, 0x10);
        pic.write(MASTER_DATA, 0x08);
        pic.write(MASTER_DATA, 0x04);

        pic.write(MASTER_DATA, 0x5A);

        assert_eq!(pic.read(MASTER_DATA), 0x5A);
    }

    #[test]
    fn pic_specific_eoi_clears_only_named_level() {
        let mut pic = bios_pic();
        pic.set_irq(5, true);
        pic.acknowledge();
        pic.set_irq(1, true);
        pic.acknowledge();

        pic.write(MASTER_COMMAND, 0x65); // specific EOI, IR5

        pic.write(MASTER_COMMAND, 0x0B);
        assert_eq!(pic.read(MASTER_COMMAND), 0x02);
    }

    #[test]
    fn pic_rotate_on_nonspecific_eoi_makes_serviced_irq_lowest() {
        let mut pic = bios_pic();
        pic.set_irq(0, true);
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x08);

        pic.write(MASTER_COMMAND, 0xA0); // rotate on non-specific EOI
        pic.set_irq(0, false);
        pic.set_irq(0, true);

        assert_eq!(pic.acknowledge(), 0x09);
    }

    #[test]
    fn pic_set_priority_command_sets_lowest_level() {
        let mut pic = bios_pic();
        pic.write(MASTER_COMMAND, 0xC3); // IR3 lowest: IR4 highest
        pic.set_irq(3, true);
        pic.set_irq(4, true);

        let first = pic.acknowledge();

        assert_eq!(first, 0x0C);
    }

    #[test]
    fn pic_rotate_in_auto_eoi_mode_rotates_on_acknowledge() {
        let mut pic = PicPair::new();
        pic.write(MASTER_COMMAND, 0x13);
        pic.write(MASTER_DATA, 0x08);
        pic.write(MASTER_DATA, 0x03);
        pic.write(MASTER_COMMAND, 0x80); // rotate in AEOI: set
        pic.set_irq(0, true);
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x08);
        pic.set_irq(0, false);
        pic.set_irq(0, true);

        let next = pic.acknowledge();

        assert_eq!(next, 0x09);
    }

    #[test]
    fn pic_poll_command_acknowledges_and_reports_level() {
        let mut pic = bios_pic();
        pic.set_irq(3, true);
        pic.write(MASTER_COMMAND, 0x0C); // OCW3 poll

        let polled = pic.read(MASTER_COMMAND);

        assert_eq!(polled, 0x83);
        assert!(!pic.output());
        assert_eq!(pic.read(MASTER_COMMAND), 0x00); // back to reading IRR
    }

    #[test]
    fn pic_poll_with_nothing_pending_reads_zero() {
        let mut pic = bios_pic();
        pic.write(MASTER_COMMAND, 0x0C);

        assert_eq!(pic.read(MASTER_DATA), 0x00);
    }

    #[test]
    fn pic_special_mask_mode_lets_lower_priority_through() {
        let mut pic = bios_pic();
        pic.set_irq(1, true);
        pic.acknowledge();
        pic.write(MASTER_DATA, 0x02); // mask the in-service level
        pic.write(MASTER_COMMAND, 0x68); // OCW3: set special mask

        pic.set_irq(6, true);

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x0E);
    }

    #[test]
    fn pic_read_irr_shows_masked_requests() {
        let mut pic = bios_pic();
        pic.write(MASTER_DATA, 0xFF);
        pic.set_irq(4, true);
        pic.write(MASTER_COMMAND, 0x0A);

        assert_eq!(pic.read(MASTER_COMMAND), 0x10);
    }

    #[test]
    fn pic_icw1_clears_mask_and_in_service() {
        let mut pic = bios_pic();
        pic.write(MASTER_DATA, 0xAA);
        pic.set_irq(1, true);
        pic.acknowledge();

        pic.write(MASTER_COMMAND, 0x11);

        pic.write(MASTER_DATA, 0x08);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, 0x01);
        assert_eq!(pic.read(MASTER_DATA), 0x00);
        pic.write(MASTER_COMMAND, 0x0B);
        assert_eq!(pic.read(MASTER_COMMAND), 0x00);
    }

    #[test]
    fn pic_special_fully_nested_lets_higher_slave_irq_nest() {
        let mut pic = PicPair::new();
        pic.write(MASTER_COMMAND, 0x11);
        pic.write(MASTER_DATA, 0x08);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, 0x11); // SFNM, 8086
        pic.write(SLAVE_COMMAND, 0x11);
        pic.write(SLAVE_DATA, 0x70);
        pic.write(SLAVE_DATA, 0x02);
        pic.write(SLAVE_DATA, 0x01);
        pic.set_irq(12, true);
        assert_eq!(pic.acknowledge(), 0x74);

        pic.set_irq(9, true);

        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x71);
    }

    #[test]
    fn pic_no_request_acknowledge_is_spurious_irq7() {
        let mut pic = bios_pic();

        assert_eq!(pic.acknowledge(), 0x0F);
    }

    #[test]
    fn pic_out_of_range_lines_and_offsets_are_ignored() {
        let mut pic = bios_pic();

        pic.set_irq(16, true);
        pic.set_irq(2, true);
        pic.write(9, 0x12);

        assert!(!pic.output());
        assert_eq!(pic.read(9), 0xFF);
    }

    #[test]
    fn pic_state_round_trips() {
        let mut pic = bios_pic();
        pic.write(ELCR_SLAVE, 0x08);
        pic.set_irq(11, true);
        pic.set_irq(3, true);
        pic.acknowledge();

        let restored = PicPair::from_state(&pic.state());

        assert_eq!(restored.state(), pic.state());
        assert_eq!(restored.output(), pic.output());
    }
}
