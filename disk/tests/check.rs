//! `check`: clean images pass; each kind of damage is listed.

mod common;

use common::images::*;
use disk::{FormatHint, MemStorage, ProblemKind, Severity, check, check_storage};

fn kinds(b: Vec<u8>) -> Vec<(Severity, ProblemKind)> {
    check_storage(&MemStorage::new(b), FormatHint::Vhd)
        .problems
        .iter()
        .map(|p| (p.severity, p.kind))
        .collect()
}

#[test]
fn fresh_images_of_every_type_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    disk::create_dynamic(&base, 5 << 20).unwrap();
    let mut d = disk::open(&base, true).unwrap();
    d.write_at(1 << 20, &[9u8; 8192]).unwrap();
    d.close().unwrap();
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    let fixed = dir.path().join("f.vhd");
    disk::create_fixed(&fixed, 3 << 20).unwrap();
    let raw = dir.path().join("r.img");
    disk::create_raw(&raw, 3 << 20).unwrap();
    for p in [&base, &child, &fixed, &raw] {
        let r = check(p).unwrap();
        assert!(
            r.is_clean() && r.problems.is_empty(),
            "{}: {r:?}",
            p.display()
        );
    }
    let r = check(&child).unwrap();
    assert_eq!(r.files.len(), 2);
    assert_eq!(r.format, Some(disk::ImageFormat::VhdDifferencing));
    let r = check(&base).unwrap();
    assert_eq!(r.allocated_blocks, 1);
}

#[test]
fn every_bad_block_is_listed_not_just_the_first() {
    let mut b = dynamic();
    set_bat(&mut b, 5, 0x0010_0000);
    set_bat(&mut b, 6, 0x0020_0000);
    let first = bat(&b, 0);
    set_bat(&mut b, 7, first);
    let k = kinds(b);
    assert_eq!(
        k.iter()
            .filter(|k| **k == (Severity::Error, ProblemKind::BlockPastEof))
            .count(),
        2,
        "{k:?}"
    );
    assert!(
        k.contains(&(Severity::Error, ProblemKind::Overlap)),
        "{k:?}"
    );
}

#[test]
fn an_interrupted_allocation_is_an_orphan_block_warning_not_an_error() {
    // What a crash after the footer moved but before the BAT entry was
    // written leaves: a block's worth of space before the footer.
    let mut b = dynamic();
    let footer = b[b.len() - 512..].to_vec();
    let span = 512 + (64 << 10);
    let end = b.len() - 512;
    b.truncate(end);
    b.extend(footer.iter()); // the old footer, now unreferenced
    b.resize(end + span, 0);
    b.extend(footer);
    let r = check_storage(&MemStorage::new(b.clone()), FormatHint::Vhd);
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.leaked_bytes, span as u64);
    assert_eq!(r.problems[0].kind, ProblemKind::OrphanBlock);
    // And the image opens and takes new blocks after the orphan.
    let mut d = disk::open_storage(
        vec![Box::new(MemStorage::new(b)) as Box<dyn disk::Storage>],
        FormatHint::Vhd,
        true,
    )
    .unwrap();
    d.write_at(512 << 10, &[1u8; 512]).unwrap();
    d.flush().unwrap();
}

#[test]
fn an_allocated_block_with_an_empty_bitmap_is_a_warning() {
    let mut b = dynamic();
    let at = bat(&b, 2) as usize * 512;
    b[at..at + 512].fill(0);
    assert_eq!(kinds(b), vec![(Severity::Warning, ProblemKind::EmptyBlock)]);
}

#[test]
fn damaged_structures_are_errors() {
    let mut b = dynamic();
    b[600] ^= 1;
    assert_eq!(kinds(b), vec![(Severity::Error, ProblemKind::BadChecksum)]);
    let b = dynamic();
    let n = b.len();
    assert_eq!(
        kinds(b[..n - 1000].to_vec()),
        vec![(Severity::Error, ProblemKind::FooterLost)]
    );
    let mut b = dynamic();
    patch_footer(&mut b, |f| {
        f.current_size -= 512;
        f.saved_state = 1;
    });
    let k = kinds(b);
    assert!(
        k.contains(&(Severity::Warning, ProblemKind::Geometry)),
        "{k:?}"
    );
    assert!(
        k.contains(&(Severity::Warning, ProblemKind::SavedState)),
        "{k:?}"
    );
}

#[test]
fn a_missing_parent_is_an_error_and_the_report_serializes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    disk::create_dynamic(&base, 1 << 20).unwrap();
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    std::fs::remove_file(&base).unwrap();
    let r = check(&child).unwrap();
    assert!(!r.is_clean());
    assert_eq!(r.problems[0].kind, ProblemKind::Parent);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["problems"][0]["kind"], "parent");
    assert_eq!(json["problems"][0]["severity"], "error");
    assert!(matches!(
        check(&dir.path().join("nope.vhd")),
        Err(disk::DiskError::NotFound(_))
    ));
}
