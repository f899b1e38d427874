//! The PIIX bus-master IDE function of one channel (SFF-8038i): command,
//! status and PRD table pointer registers, and the walk of a physical region
//! descriptor table that moves a transfer's bytes to or from guest memory.

use super::DmaMemory;

/// Command register: start/stop bus master.
pub const CMD_START: u8 = 1 << 0;
/// Command register: 1 = the bus master writes memory (a device read).
pub const CMD_TO_MEMORY: u8 = 1 << 3;
/// Status: the bus master is active.
pub const STATUS_ACTIVE: u8 = 1 << 0;
/// Status: a transfer failed (write one to clear).
pub const STATUS_ERROR: u8 = 1 << 1;
/// Status: the channel's device raised its interrupt (write one to clear).
pub const STATUS_INTERRUPT: u8 = 1 << 2;
/// Status: drive 0 / drive 1 is DMA capable (storage for the BIOS).
pub const STATUS_DMA_CAPABLE: u8 = 0x60;

/// A PRD table may not cross a 64 KiB boundary: at most 8192 entries.
const MAX_PRDS: u32 = 8192;

/// How a PRD table's size compared with the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrdOutcome {
    /// The table ended (EOT) exactly where the transfer did.
    Exact,
    /// The transfer ended before the table did: the bus master stays active.
    TableLarger,
    /// The table ended (EOT) before the transfer did.
    TableShort,
}

/// One channel's bus-master registers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusMaster {
    pub command: u8,
    pub status: u8,
    pub prd_table: u32,
}

impl BusMaster {
    /// A read of register byte `offset` (0-7).
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            0 => self.command,
            2 => self.status,
            4..=7 => (self.prd_table >> (8 * (offset - 4))) as u8,
            _ => 0,
        }
    }

    /// A write of register byte `offset`; returns whether the bus master
    /// was just started.
    pub fn write(&mut self, offset: u16, value: u8) -> bool {
        match offset {
            0 => {
                let was = self.command & CMD_START != 0;
                self.command = value & (CMD_START | CMD_TO_MEMORY);
                let now = self.command & CMD_START != 0;
                if now && !was {
                    self.status |= STATUS_ACTIVE;
                    return true;
                }
                if !now {
                    // Stopping the engine aborts whatever it was doing.
                    self.status &= !STATUS_ACTIVE;
                }
            }
            2 => {
                let keep = self.status & STATUS_ACTIVE;
                let flags = self.status & (STATUS_ERROR | STATUS_INTERRUPT) & !value;
                self.status = keep | flags | (value & STATUS_DMA_CAPABLE);
            }
            4..=7 => {
                let shift = 8 * u32::from(offset - 4);
                let v = (self.prd_table & !(0xFF << shift)) | (u32::from(value) << shift);
                self.prd_table = v & !3;
            }
            _ => {}
        }
        false
    }

    /// Whether the engine is started and active.
    pub fn active(&self) -> bool {
        self.command & CMD_START != 0 && self.status & STATUS_ACTIVE != 0
    }

    pub fn to_memory(&self) -> bool {
        self.command & CMD_TO_MEMORY != 0
    }

    /// Walks the PRD table calling `f(guest_address, offset_in_transfer,
    /// length)` for each piece of a `len`-byte transfer.
    fn walk(
        &self,
        mem: &mut dyn DmaMemory,
        len: usize,
        mut f: impl FnMut(&mut dyn DmaMemory, u32, usize, usize),
    ) -> PrdOutcome {
        let mut done = 0usize;
        for i in 0..MAX_PRDS {
            let mut entry = [0u8; 8];
            mem.read(self.prd_table.wrapping_add(8 * i), &mut entry);
            let base = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) & !1;
            let count = match u16::from_le_bytes([entry[4], entry[5]]) {
                0 => 0x1_0000,
                n => usize::from(n & !1),
            };
            let eot = entry[7] & 0x80 != 0;
            let n = count.min(len - done);
            if n > 0 {
                f(mem, base, done, n);
            }
            done += n;
            if done == len {
                return if n == count && eot {
                    PrdOutcome::Exact
                } else {
                    PrdOutcome::TableLarger
                };
            }
            if eot {
                return PrdOutcome::TableShort;
            }
        }
        PrdOutcome::TableShort
    }

    /// Copies `data` into guest memory through the PRD table.
    pub fn copy_to_memory(&self, mem: &mut dyn DmaMemory, data: &[u8]) -> PrdOutcome {
        self.walk(mem, data.len(), |mem, addr, at, n| {
            mem.write(addr, &data[at..at + n])
        })
    }

    /// Gathers `len` bytes from guest memory through the PRD table.
    pub fn copy_from_memory(&self, mem: &mut dyn DmaMemory, len: usize) -> (Vec<u8>, PrdOutcome) {
        let mut data = vec![0u8; len];
        let outcome = self.walk(mem, len, |mem, addr, at, n| {
            mem.read(addr, &mut data[at..at + n])
        });
        (data, outcome)
    }

    /// Ends a transfer: the engine goes idle unless the table was larger
    /// than the transfer; a short table is a bus-master error.
    pub fn finish(&mut self, outcome: PrdOutcome) {
        match outcome {
            PrdOutcome::Exact => self.status &= !STATUS_ACTIVE,
            PrdOutcome::TableLarger => {}
            PrdOutcome::TableShort => {
                self.status &= !STATUS_ACTIVE;
                self.status |= STATUS_ERROR;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::FakeMemory;
    use super::*;

    fn prd(mem: &mut FakeMemory, at: u32, entries: &[(u32, u16, bool)]) {
        for (i, &(addr, count, eot)) in entries.iter().enumerate() {
            let flags = if eot { 0x8000_0000u32 } else { 0 };
            let mut e = addr.to_le_bytes().to_vec();
            e.extend_from_slice(&(u32::from(count) | flags).to_le_bytes());
            mem.write(at + 8 * i as u32, &e);
        }
    }

    fn started(table: u32, to_memory: bool) -> BusMaster {
        let mut bm = BusMaster::default();
        for (i, b) in table.to_le_bytes().into_iter().enumerate() {
            bm.write(4 + i as u16, b);
        }
        let dir = if to_memory { CMD_TO_MEMORY } else { 0 };
        bm.write(0, CMD_START | dir);
        bm
    }

    #[test]
    fn start_sets_active_and_stop_clears_it() {
        let mut bm = BusMaster::default();
        let kicked = bm.write(0, CMD_START);
        let active = bm.status & STATUS_ACTIVE;
        bm.write(0, 0);
        assert!(kicked);
        assert_eq!(active, STATUS_ACTIVE);
        assert_eq!(bm.status & STATUS_ACTIVE, 0);
    }

    #[test]
    fn status_error_and_interrupt_are_write_one_to_clear() {
        let mut bm = BusMaster {
            status: STATUS_ERROR | STATUS_INTERRUPT,
            ..BusMaster::default()
        };
        bm.write(2, STATUS_INTERRUPT | 0x20);
        assert_eq!(bm.status, STATUS_ERROR | 0x20);
    }

    #[test]
    fn prd_table_pointer_is_dword_aligned() {
        let mut bm = BusMaster::default();
        for (i, b) in 0x1234_5677u32.to_le_bytes().into_iter().enumerate() {
            bm.write(4 + i as u16, b);
        }
        assert_eq!(bm.prd_table, 0x1234_5674);
    }

    #[test]
    fn scatter_across_entries_ends_exactly_at_eot() {
        let mut mem = FakeMemory::new(0x10_0000);
        prd(&mut mem, 0x1000, &[(0x2000, 2, false), (0x3000, 6, true)]);
        let bm = started(0x1000, true);
        let outcome = bm.copy_to_memory(&mut mem, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(outcome, PrdOutcome::Exact);
        assert_eq!(&mem.0[0x2000..0x2002], &[1, 2]);
        assert_eq!(&mem.0[0x3000..0x3006], &[3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_larger_table_leaves_the_engine_active() {
        let mut mem = FakeMemory::new(0x10_0000);
        prd(&mut mem, 0x1000, &[(0x2000, 4096, true)]);
        let mut bm = started(0x1000, true);
        let outcome = bm.copy_to_memory(&mut mem, &[1; 512]);
        bm.finish(outcome);
        assert_eq!(outcome, PrdOutcome::TableLarger);
        assert_eq!(bm.status & STATUS_ACTIVE, STATUS_ACTIVE);
    }

    #[test]
    fn count_zero_means_64_kib() {
        let mut mem = FakeMemory::new(0x20_0000);
        prd(&mut mem, 0x1000, &[(0x10_0000, 0, true)]);
        let bm = started(0x1000, true);
        let outcome = bm.copy_to_memory(&mut mem, &vec![0xAB; 0x1_0000]);
        assert_eq!(outcome, PrdOutcome::Exact);
        assert_eq!(mem.0[0x10_FFFF], 0xAB);
    }

    #[test]
    fn a_short_table_is_reported() {
        let mut mem = FakeMemory::new(0x10_0000);
        prd(&mut mem, 0x1000, &[(0x2000, 512, true)]);
        let mut bm = started(0x1000, false);
        let (_, outcome) = bm.copy_from_memory(&mut mem, 1024);
        bm.finish(outcome);
        assert_eq!(outcome, PrdOutcome::TableShort);
        assert_eq!(bm.status & (STATUS_ACTIVE | STATUS_ERROR), STATUS_ERROR);
    }
}
