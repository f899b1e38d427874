//! PCI configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF data)
//! and the configuration space of a PCI function.
//!
//! [`PciHost`] decodes the guest's port accesses into configuration reads and
//! writes of one function on bus 0; the board supplies its functions through
//! [`PciDevices`] (it owns them as concrete types, so no downcasting is needed
//! to reach, say, the power-management function's registers). A function is
//! anything that implements [`PciFunction`]; most embed a [`ConfigSpace`],
//! whose per-bit write masks give read-only fields, writable registers and
//! BAR sizing (a BAR's low address bits are read-only zero, so writing all
//! ones reads back the size).

use crate::bus::IoSize;

/// The address port (dword accesses only).
pub const CONFIG_ADDRESS: u16 = 0xCF8;
/// The first data port; 0xCFC-0xCFF select the byte lane.
pub const CONFIG_DATA: u16 = 0xCFC;
/// PIIX3 Reset Control Register (byte port inside the 0xCF8 dword).
pub const RESET_CONTROL: u16 = 0xCF9;

/// Configuration space register offsets.
pub mod reg {
    pub const VENDOR_ID: u8 = 0x00;
    pub const DEVICE_ID: u8 = 0x02;
    pub const COMMAND: u8 = 0x04;
    pub const STATUS: u8 = 0x06;
    pub const REVISION: u8 = 0x08;
    pub const CLASS: u8 = 0x09;
    pub const HEADER_TYPE: u8 = 0x0E;
    pub const BAR0: u8 = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: u8 = 0x2C;
    pub const INTERRUPT_LINE: u8 = 0x3C;
    pub const INTERRUPT_PIN: u8 = 0x3D;
}

/// A BAR's kind and size (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// I/O space; size at least 4.
    Io { size: u32 },
    /// 32-bit memory space; size at least 16.
    Memory32 { size: u32, prefetchable: bool },
}

/// 256 bytes of configuration space with a write mask and a
/// write-one-to-clear mask per bit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    writable: [u8; 256],
    w1c: [u8; 256],
}

impl ConfigSpace {
    /// A type-0 header: IDs, class code (class, subclass, programming
    /// interface), revision. The command register's I/O, memory, bus master,
    /// parity and SERR# enables and the interrupt line are writable; the
    /// status register's error bits are write-one-to-clear.
    pub fn new(vendor: u16, device: u16, class: [u8; 3], revision: u8) -> Self {
        let mut c = Self {
            bytes: [0; 256],
            writable: [0; 256],
            w1c: [0; 256],
        };
        c.set_u16(reg::VENDOR_ID, vendor);
        c.set_u16(reg::DEVICE_ID, device);
        c.bytes[usize::from(reg::REVISION)] = revision;
        c.bytes[0x09] = class[2];
        c.bytes[0x0A] = class[1];
        c.bytes[0x0B] = class[0];
        c.set_writable_u16(reg::COMMAND, 0x0147);
        c.w1c[usize::from(reg::STATUS) + 1] = 0xF9;
        c.set_writable(reg::INTERRUPT_LINE, 0xFF);
        c
    }

    /// Marks the header as that of a multi-function device.
    pub fn set_multifunction(&mut self) {
        self.bytes[usize::from(reg::HEADER_TYPE)] |= 0x80;
    }

    /// Reads `size` bytes at `offset` (little-endian; bytes past 0xFF read 0xFF).
    pub fn read(&self, offset: u8, size: IoSize) -> u32 {
        (0..size as usize).fold(0, |acc, i| {
            let b = self
                .bytes
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0xFF);
            acc | u32::from(b) << (8 * i)
        })
    }

    /// Writes `size` bytes at `offset` through the masks.
    pub fn write(&mut self, offset: u8, size: IoSize, value: u32) {
        for i in 0..size as usize {
            let Some(at) = usize::from(offset).checked_add(i).filter(|&a| a < 256) else {
                break;
            };
            let v = (value >> (8 * i)) as u8;
            let wm = self.writable[at];
            let old = self.bytes[at] & !(v & self.w1c[at]);
            self.bytes[at] = (old & !wm) | (v & wm);
        }
    }

    /// Sets a byte directly (device-side update; ignores the masks).
    pub fn set_u8(&mut self, offset: u8, value: u8) {
        self.bytes[usize::from(offset)] = value;
    }

    pub fn set_u16(&mut self, offset: u8, value: u16) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: u8, value: u32) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    fn set_bytes(&mut self, offset: u8, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(slot) = self.bytes.get_mut(usize::from(offset) + i) {
                *slot = b;
            }
        }
    }

    pub fn u8(&self, offset: u8) -> u8 {
        self.bytes[usize::from(offset)]
    }

    pub fn u16(&self, offset: u8) -> u16 {
        self.read(offset, IoSize::Word) as u16
    }

    pub fn u32(&self, offset: u8) -> u32 {
        self.read(offset, IoSize::Dword)
    }

    /// Which bits of the byte at `offset` the guest may change.
    pub fn set_writable(&mut self, offset: u8, mask: u8) {
        self.writable[usize::from(offset)] = mask;
    }

    pub fn set_writable_u16(&mut self, offset: u8, mask: u16) {
        for (i, b) in mask.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = self.writable.get_mut(usize::from(offset) + i) {
                *slot = b;
            }
        }
    }

    pub fn set_writable_u32(&mut self, offset: u8, mask: u32) {
        for (i, b) in mask.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = self.writable.get_mut(usize::from(offset) + i) {
                *slot = b;
            }
        }
    }

    /// Declares BAR `index` (0-5). The type bits are read-only and the
    /// address bits below the size read as zero, so writing all ones and
    /// reading back gives `!(size - 1) | type`.
    pub fn set_bar(&mut self, index: u8, bar: Bar) {
        let offset = reg::BAR0 + 4 * index.min(5);
        let (size, type_bits) = match bar {
            Bar::Io { size } => (size.max(4), 0x1),
            Bar::Memory32 { size, prefetchable } => {
                (size.max(16), if prefetchable { 0x8 } else { 0x0 })
            }
        };
        let size = size.next_power_of_two();
        self.set_u32(offset, type_bits);
        let mask = !(size - 1);
        let mask = if type_bits & 1 != 0 {
            mask & 0xFFFF
        } else {
            mask
        };
        self.set_writable_u32(offset, mask);
    }

    /// The base address programmed into BAR `index`, type bits stripped
    /// (no check of the command register's decode enables).
    pub fn bar_address(&self, index: u8) -> u32 {
        let v = self.u32(reg::BAR0 + 4 * index.min(5));
        if v & 1 != 0 { v & !0x3 } else { v & !0xF }
    }

    /// The raw bytes, for snapshots.
    pub fn bytes(&self) -> &[u8; 256] {
        &self.bytes
    }

    /// Restores the bytes of a snapshot (the masks come from the device model).
    pub fn restore(&mut self, bytes: &[u8]) {
        for (dst, src) in self.bytes.iter_mut().zip(bytes) {
            *dst = *src;
        }
    }
}

/// One PCI function's configuration space, as the host bridge reaches it.
/// `offset` is any byte offset; `size` accesses never cross a dword.
pub trait PciFunction {
    fn config_read(&mut self, offset: u8, size: IoSize) -> u32;
    fn config_write(&mut self, offset: u8, size: IoSize, value: u32);
}

impl PciFunction for ConfigSpace {
    fn config_read(&mut self, offset: u8, size: IoSize) -> u32 {
        self.read(offset, size)
    }
    fn config_write(&mut self, offset: u8, size: IoSize, value: u32) {
        self.write(offset, size, value)
    }
}

/// The functions on bus 0, as the board owns them.
pub trait PciDevices {
    /// The function at `devfn` (device << 3 | function), if present.
    fn function(&mut self, devfn: u8) -> Option<&mut dyn PciFunction>;
}

/// What a host-bridge port write asks of the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum HostEffect {
    None,
    /// Port 0xCF9 asked for a system reset.
    Reset,
}

/// Configuration mechanism #1 plus the PIIX3 reset control register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciHost {
    address: u32,
    reset_control: u8,
}

impl PciHost {
    const ENABLE: u32 = 1 << 31;
    /// Bits that hold state: enable, bus, device, function, register.
    const ADDRESS_MASK: u32 = 0x80FF_FFFC;

    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes a data-port access into (devfn, offset), or `None` when the
    /// access reaches no function on bus 0.
    fn target(&self, port: u16, size: IoSize) -> Option<(u8, u8)> {
        let lane = (port - CONFIG_DATA) as u8;
        if self.address & Self::ENABLE == 0
            || (self.address >> 16) & 0xFF != 0
            || u32::from(lane) % size as u32 != 0
        {
            return None;
        }
        let devfn = (self.address >> 8) as u8;
        let offset = (self.address as u8 & 0xFC) | lane;
        Some((devfn, offset))
    }

    /// An IN from 0xCF8-0xCFF.
    pub fn read(&mut self, port: u16, size: IoSize, devices: &mut dyn PciDevices) -> u32 {
        match (port, size) {
            (CONFIG_ADDRESS, IoSize::Dword) => self.address,
            (RESET_CONTROL, IoSize::Byte) => u32::from(self.reset_control),
            (CONFIG_DATA..=0xCFF, _) => self
                .target(port, size)
                .and_then(|(devfn, offset)| {
                    devices.function(devfn).map(|f| f.config_read(offset, size))
                })
                .unwrap_or(size.ones()),
            _ => size.ones(),
        }
    }

    /// An OUT to 0xCF8-0xCFF.
    pub fn write(
        &mut self,
        port: u16,
        size: IoSize,
        value: u32,
        devices: &mut dyn PciDevices,
    ) -> HostEffect {
        match (port, size) {
            (CONFIG_ADDRESS, IoSize::Dword) => self.address = value & Self::ADDRESS_MASK,
            (RESET_CONTROL, IoSize::Byte) => {
                // Bit 2 (RST_CPU) going 0→1 resets; bit 1 picks hard vs soft,
                // which the board treats alike.
                let value = value as u8;
                let fire = value & 0x04 != 0 && self.reset_control & 0x04 == 0;
                self.reset_control = value & 0x02;
                if fire {
                    return HostEffect::Reset;
                }
            }
            (CONFIG_DATA..=0xCFF, _) => {
                if let Some((devfn, offset)) = self.target(port, size)
                    && let Some(f) = devices.function(devfn)
                {
                    f.config_write(offset, size, value);
                }
            }
            _ => {}
        }
        HostEffect::None
    }

    /// (address register, reset control register), for snapshots.
    pub fn state(&self) -> (u32, u8) {
        (self.address, self.reset_control)
    }

    pub fn from_state(state: (u32, u8)) -> Self {
        Self {
            address: state.0 & Self::ADDRESS_MASK,
            reset_control: state.1 & 0x02,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bus 0 with one function at 00.0 and one at 03.0 with BARs.
    struct TwoDevices {
        bridge: ConfigSpace,
        nic: ConfigSpace,
    }

    impl PciDevices for TwoDevices {
        fn function(&mut self, devfn: u8) -> Option<&mut dyn PciFunction> {
            match devfn {
                0x00 => Some(&mut self.bridge),
                0x18 => Some(&mut self.nic),
                _ => None,
            }
        }
    }

    fn bus() -> (PciHost, TwoDevices) {
        let mut nic = ConfigSpace::new(0x1011, 0x0009, [0x02, 0x00, 0x00], 0x20);
        nic.set_bar(0, Bar::Io { size: 0x80 });
        nic.set_bar(
            1,
            Bar::Memory32 {
                size: 0x1000,
                prefetchable: false,
            },
        );
        let devices = TwoDevices {
            bridge: ConfigSpace::new(0x8086, 0x1237, [0x06, 0x00, 0x00], 0x02),
            nic,
        };
        (PciHost::new(), devices)
    }

    fn address(dev: u32, func: u32, offset: u32) -> u32 {
        0x8000_0000 | dev << 11 | func << 8 | offset
    }

    fn cfg_read(h: &mut PciHost, d: &mut TwoDevices, addr: u32, port: u16, size: IoSize) -> u32 {
        let _ = h.write(CONFIG_ADDRESS, IoSize::Dword, addr, d);
        h.read(port, size, d)
    }

    #[test]
    fn reads_vendor_and_device_id_as_a_dword() {
        let (mut h, mut d) = bus();
        let id = cfg_read(&mut h, &mut d, address(0, 0, 0), CONFIG_DATA, IoSize::Dword);
        assert_eq!(id, 0x1237_8086);
    }

    #[test]
    fn byte_and_word_lanes_select_the_right_offset() {
        let (mut h, mut d) = bus();
        let class = cfg_read(&mut h, &mut d, address(0, 0, 8), 0xCFE, IoSize::Word);
        let revision = cfg_read(&mut h, &mut d, address(0, 0, 8), 0xCFC, IoSize::Byte);
        let device_hi = cfg_read(&mut h, &mut d, address(0, 0, 0), 0xCFF, IoSize::Byte);
        assert_eq!((class, revision, device_hi), (0x0600, 0x02, 0x12));
    }

    #[test]
    fn absent_device_reads_all_ones() {
        let (mut h, mut d) = bus();
        let v = cfg_read(&mut h, &mut d, address(5, 0, 0), CONFIG_DATA, IoSize::Dword);
        assert_eq!(v, 0xFFFF_FFFF);
    }

    #[test]
    fn other_buses_read_all_ones() {
        let (mut h, mut d) = bus();
        let v = cfg_read(
            &mut h,
            &mut d,
            address(0, 0, 0) | 1 << 16,
            CONFIG_DATA,
            IoSize::Word,
        );
        assert_eq!(v, 0xFFFF);
    }

    #[test]
    fn disabled_address_reads_all_ones() {
        let (mut h, mut d) = bus();
        let v = cfg_read(&mut h, &mut d, 0, CONFIG_DATA, IoSize::Dword);
        assert_eq!(v, 0xFFFF_FFFF);
    }

    #[test]
    fn address_register_reads_back_without_low_bits() {
        let (mut h, mut d) = bus();
        let _ = h.write(CONFIG_ADDRESS, IoSize::Dword, 0xFFFF_FFFF, &mut d);
        assert_eq!(h.read(CONFIG_ADDRESS, IoSize::Dword, &mut d), 0x80FF_FFFC);
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let (mut h, mut d) = bus();
        let _ = h.write(CONFIG_ADDRESS, IoSize::Dword, address(0, 0, 0), &mut d);
        let _ = h.write(CONFIG_DATA, IoSize::Dword, 0, &mut d);
        assert_eq!(h.read(CONFIG_DATA, IoSize::Dword, &mut d), 0x1237_8086);
    }

    #[test]
    fn io_bar_sizing_reads_back_size_mask() {
        let (mut h, mut d) = bus();
        let _ = h.write(CONFIG_ADDRESS, IoSize::Dword, address(3, 0, 0x10), &mut d);
        let _ = h.write(CONFIG_DATA, IoSize::Dword, 0xFFFF_FFFF, &mut d);
        assert_eq!(h.read(CONFIG_DATA, IoSize::Dword, &mut d), 0x0000_FF81);
    }

    #[test]
    fn memory_bar_sizing_then_programming() {
        let (mut h, mut d) = bus();
        let _ = h.write(CONFIG_ADDRESS, IoSize::Dword, address(3, 0, 0x14), &mut d);
        let _ = h.write(CONFIG_DATA, IoSize::Dword, 0xFFFF_FFFF, &mut d);
        let sized = h.read(CONFIG_DATA, IoSize::Dword, &mut d);
        let _ = h.write(CONFIG_DATA, IoSize::Dword, 0xFEBF_1000, &mut d);
        assert_eq!(sized, 0xFFFF_F000);
        assert_eq!(d.nic.bar_address(1), 0xFEBF_1000);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let (mut h, mut d) = bus();
        d.nic.set_u16(reg::STATUS, 0x2000);
        let _ = h.write(CONFIG_ADDRESS, IoSize::Dword, address(3, 0, 4), &mut d);
        let _ = h.write(0xCFE, IoSize::Word, 0x2000, &mut d);
        assert_eq!(d.nic.u16(reg::STATUS), 0);
    }

    #[test]
    fn misaligned_data_access_is_ignored() {
        let (mut h, mut d) = bus();
        let v = cfg_read(&mut h, &mut d, address(0, 0, 0), 0xCFD, IoSize::Word);
        assert_eq!(v, 0xFFFF);
    }

    #[test]
    fn reset_control_bit2_requests_reset() {
        let (mut h, mut d) = bus();
        let effect = h.write(RESET_CONTROL, IoSize::Byte, 0x06, &mut d);
        assert_eq!(effect, HostEffect::Reset);
    }

    #[test]
    fn byte_write_to_cf8_is_not_an_address_write() {
        let (mut h, mut d) = bus();
        let _ = h.write(CONFIG_ADDRESS, IoSize::Dword, address(0, 0, 0), &mut d);
        let _ = h.write(CONFIG_ADDRESS, IoSize::Byte, 0, &mut d);
        assert_eq!(
            h.read(CONFIG_ADDRESS, IoSize::Dword, &mut d),
            address(0, 0, 0)
        );
    }
}
