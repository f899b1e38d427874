//! The ACPI tables the machine generates for direct boot: RSDP, RSDT, FADT
//! (revision 1, PIIX4-style PM registers), FACS, a DSDT whose AML defines
//! `\_S5` (so `poweroff` works). There is deliberately no MADT, as on the
//! ACPI 1.0 firmware of 440BX boards: the 8259 pair reaches the CPU through
//! the local APIC's LINT0 in virtual-wire mode, and a MADT without an I/O
//! APIC makes Linux choose symmetric-I/O mode and mask LINT0, which would cut
//! the PIC off (ARCHITECTURE.md has the details). The fixed-feature power
//! button (FADT flag PWR_BUTTON clear) signals the guest through PM1_STS.

/// Where the PM registers (PM1a event, PM1a control, PM timer, GPE0) live in
/// I/O space: PIIX4's PMBA as QEMU and SeaBIOS program it.
pub const PM_BASE: u16 = 0x600;
pub const PM1A_EVT: u16 = PM_BASE;
pub const PM1A_CNT: u16 = PM_BASE + 4;
pub const PM_TMR: u16 = PM_BASE + 8;
pub const GPE0: u16 = PM_BASE + 0x0C;
/// The SCI's ISA IRQ.
pub const SCI_IRQ: u8 = 9;
/// SLP_TYP value `\_S5` names (written to PM1a_CNT with SLP_EN to power off).
pub const SLP_TYP_S5: u8 = 0;
/// Bytes the tables take; the platform reserves this much at the top of RAM.
pub const TABLES_SIZE: u32 = 0x1000;
/// The local APIC's MMIO base (fixed: there is no MADT to move it).
pub const LAPIC_BASE: u32 = 0xFEE0_0000;

const OEM_ID: &[u8; 6] = b"BLKHD ";
const OEM_TABLE_ID: &[u8; 8] = b"BULKHEAD";

/// The tables, laid out to be copied to guest-physical `base`.
pub struct Tables {
    pub bytes: Vec<u8>,
    /// Physical address of the RSDP (inside `bytes`).
    pub rsdp: u32,
    /// The 20-byte RSDP, for a second copy in the BIOS area.
    pub rsdp_bytes: [u8; 20],
}

/// Builds the tables for placement at `base` (16-byte aligned).
pub fn build(base: u32) -> Tables {
    // Layout inside the blob.
    const RSDP: u32 = 0x00;
    const RSDT: u32 = 0x20;
    const FADT: u32 = 0x60;
    const FACS: u32 = 0x100;
    const DSDT: u32 = 0x200;
    let mut b = vec![0u8; TABLES_SIZE as usize];

    let dsdt = dsdt(base + TABLES_SIZE);
    b[DSDT as usize..DSDT as usize + dsdt.len()].copy_from_slice(&dsdt);

    // FACS: signature, length 64, version 0 (ACPI 1.0).
    let facs = &mut b[FACS as usize..FACS as usize + 64];
    facs[0..4].copy_from_slice(b"FACS");
    facs[4..8].copy_from_slice(&64u32.to_le_bytes());

    let mut fadt = header(b"FACP", 116, 1);
    put32(&mut fadt, 36, base + FACS);
    put32(&mut fadt, 40, base + DSDT);
    fadt[45] = 0; // preferred PM profile: unspecified
    put16(&mut fadt, 46, SCI_IRQ as u16);
    put32(&mut fadt, 48, 0); // no SMI command port: ACPI mode is always on
    put32(&mut fadt, 56, PM1A_EVT as u32);
    put32(&mut fadt, 64, PM1A_CNT as u32);
    put32(&mut fadt, 76, PM_TMR as u32);
    put32(&mut fadt, 80, GPE0 as u32);
    fadt[88] = 4; // PM1_EVT_LEN
    fadt[89] = 2; // PM1_CNT_LEN
    fadt[91] = 4; // PM_TMR_LEN
    fadt[92] = 4; // GPE0_BLK_LEN
    put16(&mut fadt, 96, 0x0FFF); // P_LVL2_LAT > 100: C2 not supported
    put16(&mut fadt, 98, 0x0FFF); // P_LVL3_LAT > 1000: C3 not supported
    fadt[108] = 0x32; // CENTURY: the RTC's century byte
    // Flags: WBINVD works (0), C1 supported (2), power button is a fixed
    // feature (bit 4 clear), no sleep button (5), RTC wake not needed.
    put32(&mut fadt, 112, 1 << 0 | 1 << 2 | 1 << 5);
    finish(&mut fadt);
    b[FADT as usize..FADT as usize + fadt.len()].copy_from_slice(&fadt);

    let mut rsdt = header(b"RSDT", 36 + 4, 1);
    put32(&mut rsdt, 36, base + FADT);
    finish(&mut rsdt);
    b[RSDT as usize..RSDT as usize + rsdt.len()].copy_from_slice(&rsdt);

    let mut rsdp = [0u8; 20];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 0; // revision 0: ACPI 1.0, RSDT only
    put32(&mut rsdp, 16, base + RSDT);
    rsdp[8] = checksum(&rsdp);
    b[RSDP as usize..RSDP as usize + 20].copy_from_slice(&rsdp);

    Tables {
        bytes: b,
        rsdp: base + RSDP,
        rsdp_bytes: rsdp,
    }
}

/// The DSDT: `Name (\_S5, Package () { SLP_TYP_S5, SLP_TYP_S5, 0, 0 })`
/// and the PCI root bridge `\_SB.PCI0` (PNP0A03) with its `_CRS`: under
/// ACPI, Linux scans PCI only below the root bridges the namespace declares,
/// and assigns device BARs only inside the windows their `_CRS` names.
/// `ram_top` is where guest RAM ends (the memory window starts there).
fn dsdt(ram_top: u32) -> Vec<u8> {
    let mut t = header(b"DSDT", 36, 1);
    t.extend_from_slice(&[
        0x08, // NameOp
        b'\\', b'_', b'S', b'5', b'_', // \_S5_
        0x12, // PackageOp
        0x08, // PkgLength (one byte: the 8 bytes from here to the end of the package)
        0x04, // NumElements
        0x0A, SLP_TYP_S5, // BytePrefix value
        0x0A, SLP_TYP_S5, 0x00, // ZeroOp
        0x00, // ZeroOp
    ]);
    let mut device = b"PCI0".to_vec();
    device.extend_from_slice(&[
        0x08, b'_', b'H', b'I', b'D', // Name (_HID, EisaId ("PNP0A03"))
        0x0C, 0x41, 0xD0, 0x0A, 0x03, 0x08, b'_', b'A', b'D', b'R', 0x00, // Name (_ADR, Zero)
        0x08, b'_', b'U', b'I', b'D', 0x00, // Name (_UID, Zero)
    ]);
    let crs = pci_crs(ram_top);
    let mut buffer = vec![0x0A, crs.len() as u8]; // BufferSize (BytePrefix)
    buffer.extend(crs);
    device.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S', 0x11]); // Name (_CRS, Buffer
    device.extend(pkg_length(buffer));
    let mut scope = b"\\_SB_".to_vec();
    scope.extend_from_slice(&[0x5B, 0x82]); // DeviceOp
    scope.extend(pkg_length(device));
    t.push(0x10); // ScopeOp
    t.extend(pkg_length(scope));
    let len = t.len() as u32;
    put32(&mut t, 4, len);
    finish(&mut t);
    t
}

/// `body` prefixed with its AML PkgLength (which counts itself).
fn pkg_length(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    if body.len() < 0x3F {
        out.push((body.len() + 1) as u8);
    } else {
        let n = body.len() + 2;
        debug_assert!(n <= 0xFFF);
        out.push(0x40 | (n & 0x0F) as u8);
        out.push((n >> 4) as u8);
    }
    out.extend(body);
    out
}

/// The root bridge's resources: bus 0-255, the configuration ports, I/O
/// below and above them, the VGA window and memory from the end of RAM to
/// below the I/O APIC area.
fn pci_crs(ram_top: u32) -> Vec<u8> {
    let mut r = Vec::new();
    let word = |r: &mut Vec<u8>, kind: u8, flags: u8, min: u16, max: u16| {
        // Word Address Space Descriptor: producer, fixed min and max.
        r.extend_from_slice(&[0x88, 0x0D, 0x00, kind, 0x0C, flags, 0, 0]);
        for v in [min, max, 0, max - min + 1] {
            r.extend_from_slice(&v.to_le_bytes());
        }
    };
    word(&mut r, 2, 0, 0x0000, 0x00FF); // bus numbers
    r.extend_from_slice(&[0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]); // IO 0xCF8, 8 ports
    word(&mut r, 1, 0x03, 0x0000, 0x0CF7);
    word(&mut r, 1, 0x03, 0x0D00, 0xFFFF);
    let dword_memory = |r: &mut Vec<u8>, min: u32, max: u32| {
        // DWord Address Space Descriptor: memory, read-write, non-cacheable.
        r.extend_from_slice(&[0x87, 0x17, 0x00, 0x00, 0x0C, 0x01]);
        for v in [0, min, max, 0, max - min + 1] {
            r.extend_from_slice(&v.to_le_bytes());
        }
    };
    dword_memory(&mut r, 0x000A_0000, 0x000B_FFFF);
    dword_memory(&mut r, ram_top, 0xFEBF_FFFF);
    r.extend_from_slice(&[0x79, 0x00]); // End Tag
    r
}

/// A standard 36-byte SDT header with a zero checksum.
fn header(sig: &[u8; 4], len: u32, revision: u8) -> Vec<u8> {
    let mut h = vec![0u8; len as usize];
    h[0..4].copy_from_slice(sig);
    put32(&mut h, 4, len);
    h[8] = revision;
    h[10..16].copy_from_slice(OEM_ID);
    h[16..24].copy_from_slice(OEM_TABLE_ID);
    put32(&mut h, 24, 1);
    h[28..32].copy_from_slice(b"BLKH");
    put32(&mut h, 32, 1);
    h
}

fn finish(t: &mut [u8]) {
    t[9] = 0;
    t[9] = checksum(t);
}

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)))
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_at(t: &Tables, base: u32, addr: u32) -> &[u8] {
        let at = (addr - base) as usize;
        let len = u32::from_le_bytes(t.bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        &t.bytes[at..at + len]
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    #[test]
    fn every_table_checksums_to_zero_and_links_resolve() {
        let base = 0x3FF_0000;
        let t = build(base);
        assert_eq!(sum(&t.rsdp_bytes), 0);
        let rsdt_addr = u32::from_le_bytes(t.rsdp_bytes[16..20].try_into().unwrap());
        let rsdt = table_at(&t, base, rsdt_addr);
        assert_eq!((&rsdt[0..4], sum(rsdt)), (&b"RSDT"[..], 0));
        let fadt_addr = u32::from_le_bytes(rsdt[36..40].try_into().unwrap());
        let fadt = table_at(&t, base, fadt_addr);
        assert_eq!((&fadt[0..4], sum(fadt), fadt.len()), (&b"FACP"[..], 0, 116));
        let dsdt = table_at(
            &t,
            base,
            u32::from_le_bytes(fadt[40..44].try_into().unwrap()),
        );
        assert_eq!((&dsdt[0..4], sum(dsdt)), (&b"DSDT"[..], 0));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        assert_eq!(rsdt.len(), 40, "the RSDT lists only the FADT (no MADT)");
    }

    #[test]
    fn s5_package_encodes_four_elements() {
        let d = dsdt(0x1000_0000);
        let pkg = d.windows(2).position(|w| w == [0x12, 0x08]).unwrap();
        // PkgLength counts itself and everything after it in the package:
        // the package ends where the \_SB scope starts.
        let scope = d.windows(5).position(|w| w == b"\\_SB_").unwrap() - 3;
        assert_eq!(scope - (pkg + 1), 0x08);
        assert_eq!(d[pkg + 2], 4);
    }

    #[test]
    fn pci_root_bridge_scope_reaches_the_table_end() {
        let d = dsdt(0x1000_0000);
        let scope = d.windows(5).position(|w| w == b"\\_SB_").unwrap() - 3;
        let len = usize::from(d[scope + 1] & 0x0F) | usize::from(d[scope + 2]) << 4;
        assert_eq!(d[scope], 0x10);
        assert_eq!(d.len() - (scope + 1), len);
    }

    #[test]
    fn pkg_length_uses_two_bytes_past_63() {
        assert_eq!(pkg_length(vec![0; 62])[0], 63);
        assert_eq!(&pkg_length(vec![0; 100])[..2], &[0x46, 0x06]);
    }
}
