//! The SCSI/MMC command set of the ATAPI CD-ROM drive: what each 12-byte
//! packet asks for, answered with data, a read of the medium, or CHECK
//! CONDITION with sense data. Pure: the drive state machine in `mod.rs`
//! moves the bytes.

/// Sector size of a CD.
pub const CD_SECTOR: u64 = 2048;

/// SCSI opcodes the drive understands.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const SEEK_10: u8 = 0x2B;
    pub const READ_TOC: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4A;
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const READ_12: u8 = 0xA8;
    pub const SET_CD_SPEED: u8 = 0xBB;
}

/// Sense keys.
pub mod key {
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
}

/// Sense data: key, additional sense code and qualifier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const INVALID_OPCODE: Sense = Sense {
        key: key::ILLEGAL_REQUEST,
        asc: 0x20,
        ascq: 0,
    };
    pub const LBA_OUT_OF_RANGE: Sense = Sense {
        key: key::ILLEGAL_REQUEST,
        asc: 0x21,
        ascq: 0,
    };
    pub const INVALID_FIELD: Sense = Sense {
        key: key::ILLEGAL_REQUEST,
        asc: 0x24,
        ascq: 0,
    };
    pub const SAVING_NOT_SUPPORTED: Sense = Sense {
        key: key::ILLEGAL_REQUEST,
        asc: 0x39,
        ascq: 0,
    };
    pub const POWER_ON_RESET: Sense = Sense {
        key: key::UNIT_ATTENTION,
        asc: 0x29,
        ascq: 0,
    };
    pub const READ_ERROR: Sense = Sense {
        key: key::MEDIUM_ERROR,
        asc: 0x11,
        ascq: 0,
    };
}

/// What a packet command asks of the drive.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Success with no data.
    Done,
    /// Data to the host (already cut to the allocation length).
    Data(Vec<u8>),
    /// `count` sectors of the medium from `lba`.
    Read { lba: u64, count: u64 },
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// CHECK CONDITION for an opcode the drive does not know.
    Unsupported(u8),
}

/// The drive's SCSI-level state.
#[derive(Clone, Debug)]
pub struct CdState {
    /// Capacity in 2048-byte sectors.
    pub sectors: u64,
    pub sense: Sense,
    /// A UNIT ATTENTION is pending (power-on or reset).
    pub unit_attention: bool,
    pub locked: bool,
    pub model: String,
    pub firmware: String,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().filter(u8::is_ascii_graphic).take(len).collect();
    v.resize(len, b' ');
    v
}

/// A track address as LBA or as MSF (with the 2-second lead-in).
fn address(lba: u64, msf: bool) -> [u8; 4] {
    if msf {
        let frames = lba + 150;
        let m = (frames / (75 * 60)).min(0xFF) as u8;
        let s = ((frames / 75) % 60) as u8;
        let f = (frames % 75) as u8;
        [0, m, s, f]
    } else {
        (lba as u32).to_be_bytes()
    }
}

impl CdState {
    pub fn new(sectors: u64, model: &str, firmware: &str) -> CdState {
        CdState {
            sectors,
            sense: Sense::default(),
            unit_attention: true,
            locked: false,
            model: model.to_string(),
            firmware: firmware.to_string(),
        }
    }

    /// Runs one packet command.
    pub fn execute(&mut self, cdb: &[u8; 12]) -> Reply {
        let opcode = cdb[0];
        // A pending UNIT ATTENTION fails the next command, except those
        // that report status without touching the medium.
        let reports_status = matches!(
            opcode,
            op::INQUIRY
                | op::REQUEST_SENSE
                | op::GET_EVENT_STATUS_NOTIFICATION
                | op::GET_CONFIGURATION
        );
        if self.unit_attention && !reports_status {
            self.unit_attention = false;
            return self.check(Sense::POWER_ON_RESET);
        }
        let reply = match opcode {
            op::TEST_UNIT_READY | op::SEEK_10 | op::SET_CD_SPEED => Reply::Done,
            op::START_STOP_UNIT => Reply::Done,
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                self.locked = cdb[4] & 1 != 0;
                Reply::Done
            }
            op::REQUEST_SENSE => {
                let sense = if self.unit_attention && self.sense == Sense::default() {
                    self.unit_attention = false;
                    Sense::POWER_ON_RESET
                } else {
                    self.sense
                };
                self.sense = Sense::default();
                let mut d = vec![0u8; 18];
                d[0] = 0x70;
                d[2] = sense.key;
                d[7] = 10;
                d[12] = sense.asc;
                d[13] = sense.ascq;
                Reply::Data(d).cut(usize::from(cdb[4]))
            }
            op::INQUIRY => {
                if cdb[1] & 1 != 0 {
                    return self.check(Sense::INVALID_FIELD);
                }
                let mut d = vec![0x05, 0x80, 0x00, 0x21, 31, 0, 0, 0];
                let (vendor, product) = self
                    .model
                    .split_once(' ')
                    .unwrap_or(("BULKHEAD", &self.model));
                d.extend(padded(vendor, 8));
                d.extend(padded(product, 16));
                d.extend(padded(&self.firmware, 4));
                Reply::Data(d).cut(usize::from(be16(&cdb[3..5])))
            }
            op::READ_CAPACITY => {
                let last = self.sectors.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(CD_SECTOR as u32).to_be_bytes());
                Reply::Data(d)
            }
            op::READ_10 => self.read(u64::from(be32(&cdb[2..6])), u64::from(be16(&cdb[7..9]))),
            op::READ_12 => self.read(u64::from(be32(&cdb[2..6])), u64::from(be32(&cdb[6..10]))),
            op::READ_TOC => self.read_toc(cdb),
            op::MODE_SENSE_10 => self.mode_sense(cdb),
            op::GET_CONFIGURATION => {
                let start = be16(&cdb[2..4]);
                // Feature header: current profile CD-ROM.
                let mut d = vec![0u8; 8];
                d[6..8].copy_from_slice(&0x0008u16.to_be_bytes());
                if start == 0 {
                    // Profile List: one profile, CD-ROM, current.
                    d.extend_from_slice(&[0x00, 0x00, 0x03, 0x04, 0x00, 0x08, 0x01, 0x00]);
                }
                let len = (d.len() - 4) as u32;
                d[0..4].copy_from_slice(&len.to_be_bytes());
                Reply::Data(d).cut(usize::from(be16(&cdb[7..9])))
            }
            op::READ_DISC_INFORMATION => {
                // A finalized (complete) disc with one session and one track.
                let mut d = vec![0u8; 34];
                d[1] = 32;
                d[2] = 0x0E;
                d[3] = 1;
                d[4] = 1;
                d[5] = 1;
                d[6] = 1;
                Reply::Data(d).cut(usize::from(be16(&cdb[7..9])))
            }
            op::GET_EVENT_STATUS_NOTIFICATION => {
                if cdb[1] & 1 == 0 {
                    // Only polled operation is supported.
                    return self.check(Sense::INVALID_FIELD);
                }
                let classes = cdb[4];
                let d = if classes & 0x10 != 0 {
                    // Media class: no change, medium present.
                    vec![0x00, 0x06, 0x04, 0x10, 0x00, 0x02, 0x00, 0x00]
                } else {
                    // No requested class is supported (NEA).
                    vec![0x00, 0x02, 0x80, 0x10]
                };
                Reply::Data(d).cut(usize::from(be16(&cdb[7..9])))
            }
            other => return Reply::Unsupported(other),
        };
        if let Reply::Check(s) = reply {
            return self.check(s);
        }
        reply
    }

    /// Records `sense` for REQUEST SENSE and reports CHECK CONDITION.
    pub fn check(&mut self, sense: Sense) -> Reply {
        self.sense = sense;
        Reply::Check(sense)
    }

    fn read(&mut self, lba: u64, count: u64) -> Reply {
        if lba.checked_add(count).is_none_or(|end| end > self.sectors) {
            return Reply::Check(Sense::LBA_OUT_OF_RANGE);
        }
        if count == 0 {
            return Reply::Done;
        }
        Reply::Read { lba, count }
    }

    fn read_toc(&mut self, cdb: &[u8; 12]) -> Reply {
        let msf = cdb[1] & 2 != 0;
        let mut format = cdb[2] & 0x0F;
        if format == 0 {
            // Older drivers put the format in the control byte's vendor bits.
            format = cdb[9] >> 6;
        }
        let alloc = usize::from(be16(&cdb[7..9]));
        let mut d = vec![0u8, 0, 1, 1];
        match format {
            0 => {
                let start = cdb[6];
                if start > 1 && start != 0xAA {
                    return Reply::Check(Sense::INVALID_FIELD);
                }
                if start <= 1 {
                    d.extend_from_slice(&[0, 0x14, 1, 0]);
                    d.extend_from_slice(&address(0, msf));
                }
                d.extend_from_slice(&[0, 0x14, 0xAA, 0]);
                d.extend_from_slice(&address(self.sectors, msf));
            }
            1 => {
                d.extend_from_slice(&[0, 0x14, 1, 0]);
                d.extend_from_slice(&address(0, msf));
            }
            _ => return Reply::Check(Sense::INVALID_FIELD),
        }
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        Reply::Data(d).cut(alloc)
    }

    fn mode_sense(&mut self, cdb: &[u8; 12]) -> Reply {
        let page = cdb[2] & 0x3F;
        let control = cdb[2] >> 6;
        if control == 3 {
            return Reply::Check(Sense::SAVING_NOT_SUPPORTED);
        }
        let changeable = control == 1;
        let error_recovery = [0x01, 0x06, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00];
        let mut caps = vec![0u8; 20];
        caps[0] = 0x2A;
        caps[1] = 0x12;
        if !changeable {
            caps[2] = 0x00; // reads CD-ROM only
            caps[4] = 0x00;
            caps[5] = 0x00;
            // Lock supported, lock state, eject, tray mechanism.
            caps[6] = 0x20 | 0x08 | 0x01 | u8::from(self.locked) << 1;
            caps[8..10].copy_from_slice(&1378u16.to_be_bytes()); // 8x
            caps[12..14].copy_from_slice(&512u16.to_be_bytes());
            caps[14..16].copy_from_slice(&1378u16.to_be_bytes());
        }
        let mut pages = Vec::new();
        match page {
            0x01 => pages.extend_from_slice(&error_recovery),
            0x2A => pages.extend_from_slice(&caps),
            0x3F => {
                pages.extend_from_slice(&error_recovery);
                pages.extend_from_slice(&caps);
            }
            _ => return Reply::Check(Sense::INVALID_FIELD),
        }
        // Header: mode data length, medium type (120 mm data CD), no block
        // descriptors.
        let mut d = vec![0, 0, 0x01, 0, 0, 0, 0, 0];
        d.extend(pages);
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        Reply::Data(d).cut(usize::from(be16(&cdb[7..9])))
    }
}

impl Reply {
    /// Cuts data to the command's allocation length.
    fn cut(self, alloc: usize) -> Reply {
        match self {
            Reply::Data(mut d) => {
                d.truncate(alloc);
                if d.is_empty() {
                    Reply::Done
                } else {
                    Reply::Data(d)
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cd() -> CdState {
        let mut cd = CdState::new(1000, "BULKHEAD CD-ROM", "1.0");
        cd.unit_attention = false;
        cd
    }

    fn cdb(bytes: &[u8]) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    #[test]
    fn first_command_after_power_on_reports_unit_attention_once() {
        let mut cd = CdState::new(1000, "CD", "1.0");
        let first = cd.execute(&cdb(&[op::TEST_UNIT_READY]));
        let second = cd.execute(&cdb(&[op::TEST_UNIT_READY]));
        assert_eq!(first, Reply::Check(Sense::POWER_ON_RESET));
        assert_eq!(second, Reply::Done);
    }

    #[test]
    fn inquiry_names_a_removable_cdrom() {
        let Reply::Data(d) = cd().execute(&cdb(&[op::INQUIRY, 0, 0, 0, 36])) else {
            panic!("no data")
        };
        assert_eq!(d.len(), 36);
        assert_eq!(&d[..2], &[0x05, 0x80]);
        assert_eq!(&d[8..16], b"BULKHEAD");
    }

    #[test]
    fn read_capacity_reports_last_lba_and_2048_byte_blocks() {
        let reply = cd().execute(&cdb(&[op::READ_CAPACITY]));
        assert_eq!(reply, Reply::Data(vec![0, 0, 0x03, 0xE7, 0, 0, 0x08, 0]));
    }

    #[test]
    fn read_10_past_the_end_is_illegal_request() {
        let mut cd = cd();
        let reply = cd.execute(&cdb(&[op::READ_10, 0, 0, 0, 0x03, 0xE7, 0, 0, 2]));
        assert_eq!(reply, Reply::Check(Sense::LBA_OUT_OF_RANGE));
        assert_eq!(cd.sense, Sense::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn read_12_names_the_sectors() {
        let reply = cd().execute(&cdb(&[op::READ_12, 0, 0, 0, 0, 10, 0, 0, 0, 4]));
        assert_eq!(reply, Reply::Read { lba: 10, count: 4 });
    }

    #[test]
    fn toc_has_track_one_and_the_lead_out() {
        let Reply::Data(d) = cd().execute(&cdb(&[op::READ_TOC, 0, 0, 0, 0, 0, 0, 0, 100])) else {
            panic!("no data")
        };
        assert_eq!(d.len(), 20);
        assert_eq!(&d[..4], &[0, 18, 1, 1]);
        assert_eq!(d[14], 0xAA);
        assert_eq!(&d[16..20], &1000u32.to_be_bytes());
    }

    #[test]
    fn request_sense_reports_and_clears_the_last_error() {
        let mut cd = cd();
        cd.execute(&cdb(&[op::MODE_SENSE_10, 0, 0x05, 0, 0, 0, 0, 0, 64]));
        let Reply::Data(d) = cd.execute(&cdb(&[op::REQUEST_SENSE, 0, 0, 0, 18])) else {
            panic!("no data")
        };
        assert_eq!((d[2], d[12]), (key::ILLEGAL_REQUEST, 0x24));
        assert_eq!(cd.sense, Sense::default());
    }

    #[test]
    fn mode_sense_capabilities_page() {
        let Reply::Data(d) = cd().execute(&cdb(&[op::MODE_SENSE_10, 0, 0x2A, 0, 0, 0, 0, 0, 128]))
        else {
            panic!("no data")
        };
        assert_eq!(d.len(), 28);
        assert_eq!(&d[8..10], &[0x2A, 0x12]);
    }

    #[test]
    fn unknown_opcode_is_reported_as_unsupported() {
        assert_eq!(cd().execute(&cdb(&[0xFF])), Reply::Unsupported(0xFF));
    }
}
