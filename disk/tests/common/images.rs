//! Small valid images as bytes, and ways to damage them.

use std::path::Path;

use disk::Structure;
use disk::format::{DynamicHeader, Footer};
use disk::{Disk, DiskError, FormatHint, MemStorage, Storage, open_storage};

/// The bytes of a fresh image made by `make` in a scratch directory, with
/// `writes` applied (offset, byte, sectors).
pub fn made(make: impl FnOnce(&Path) -> u64, writes: &[(u64, u8, usize)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.vhd");
    make(&path);
    let mut d = disk::open(&path, true).unwrap();
    for &(off, byte, sectors) in writes {
        d.write_at(off, &vec![byte; sectors * 512]).unwrap();
    }
    d.close().unwrap();
    std::fs::read(&path).unwrap()
}

/// A dynamic image of 64 KiB blocks with data in blocks 0 and 2.
pub fn dynamic() -> Vec<u8> {
    made(
        |p| disk::create_dynamic_with_block_size(p, 1 << 20, 64 << 10).unwrap(),
        &[(0, 0x11, 4), (130 << 10, 0x22, 2)],
    )
}

pub fn fixed() -> Vec<u8> {
    made(
        |p| disk::create_fixed(p, 256 << 10).unwrap(),
        &[(512, 0x33, 3)],
    )
}

pub fn open_bytes(bytes: Vec<u8>, hint: FormatHint) -> Result<Disk, DiskError> {
    open_storage(
        vec![Box::new(MemStorage::new(bytes)) as Box<dyn Storage>],
        hint,
        false,
    )
}

pub fn open_vhd(bytes: Vec<u8>) -> Result<Disk, DiskError> {
    open_bytes(bytes, FormatHint::Vhd)
}

fn footer_at(b: &[u8], at: usize) -> Footer {
    Footer::parse(b[at..at + 512].try_into().unwrap(), Structure::Footer).unwrap()
}

/// Changes the footer (and its copy, for sparse images), with checksums.
pub fn patch_footer(b: &mut [u8], f: impl Fn(&mut Footer)) {
    let end = b.len() - 512;
    let sparse = &b[0..8] == b"conectix";
    let mut footer = footer_at(b, end);
    f(&mut footer);
    let bytes = footer.to_bytes();
    b[end..].copy_from_slice(&bytes);
    if sparse {
        b[..512].copy_from_slice(&bytes);
    }
}

pub fn header(b: &[u8]) -> DynamicHeader {
    DynamicHeader::parse(b[512..1536].try_into().unwrap()).unwrap()
}

/// Changes the dynamic header, with its checksum.
pub fn patch_header(b: &mut [u8], f: impl Fn(&mut DynamicHeader)) {
    let mut h = header(b);
    f(&mut h);
    b[512..1536].copy_from_slice(&h.to_bytes());
}

pub fn set_bat(b: &mut [u8], index: usize, value: u32) {
    let at = header(b).table_offset as usize + index * 4;
    b[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

pub fn bat(b: &[u8], index: usize) -> u32 {
    let at = header(b).table_offset as usize + index * 4;
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
