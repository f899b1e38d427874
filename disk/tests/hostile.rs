//! Damaged and hostile images: each gets its own typed error, never a
//! panic, and never an allocation larger than the file.

mod common;

use common::images::*;
use disk::Structure;
use disk::format::PLATFORM_W2RU;
use disk::{DiskError, FormatHint, ImageFormat};

#[test]
fn files_too_short_for_a_footer_are_truncated() {
    for len in [0usize, 100, 511] {
        assert!(matches!(
            open_vhd(vec![0; len]),
            Err(DiskError::Truncated {
                what: Structure::Footer,
                ..
            })
        ));
    }
}

#[test]
fn a_truncated_dynamic_image_names_its_lost_footer() {
    let b = dynamic();
    for cut in [600, 2048, b.len() - 700] {
        match open_vhd(b[..cut].to_vec()) {
            Err(DiskError::FooterLost(_)) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn a_fixed_image_shorter_than_its_size_is_truncated() {
    let b = fixed();
    let footer = b[b.len() - 512..].to_vec();
    let mut short = b[..4096].to_vec();
    short.extend(footer);
    assert!(matches!(
        open_vhd(short),
        Err(DiskError::Truncated {
            what: Structure::Block,
            ..
        })
    ));
}

#[test]
fn bad_footer_and_header_checksums_are_refused() {
    let mut b = fixed();
    let end = b.len() - 512;
    b[end + 200] ^= 0x40;
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::BadChecksum {
            what: Structure::Footer,
            ..
        })
    ));
    let mut b = dynamic();
    b[512 + 900] ^= 1;
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::BadChecksum {
            what: Structure::DynamicHeader,
            ..
        })
    ));
}

#[test]
fn bad_cookies_are_refused() {
    let mut b = fixed();
    let end = b.len() - 512;
    b[end] = b'X';
    assert!(matches!(
        open_vhd(b.clone()),
        Err(DiskError::BadCookie {
            what: Structure::Footer,
            ..
        })
    ));
    // Probed, a fixed image without its cookie is just raw data.
    assert_eq!(
        open_bytes(b, FormatHint::Probe).unwrap().format(),
        ImageFormat::Raw
    );
    let mut b = dynamic();
    b[512] = b'X';
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::BadCookie {
            what: Structure::DynamicHeader,
            ..
        })
    ));
    let mut b = dynamic();
    let end = b.len() - 512;
    b[end + 3] = b'X';
    match open_vhd(b) {
        Err(DiskError::FooterLost(e)) => assert!(matches!(*e, DiskError::BadCookie { .. })),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_footer_copy_that_differs_is_refused() {
    let mut b = dynamic();
    let end = b.len() - 512;
    let mut f =
        disk::format::Footer::parse(b[..512].try_into().unwrap(), Structure::Footer).unwrap();
    f.timestamp += 1;
    b[..512].copy_from_slice(&f.to_bytes());
    assert!(b[..512] != b[end..]);
    assert!(matches!(open_vhd(b), Err(DiskError::FooterMismatch)));
}

#[test]
fn bad_types_versions_and_sizes_are_refused() {
    let mut b = fixed();
    let end = b.len() - 512;
    b[end + 63] = 7; // disk type 7, checksum fixed below
    let sum = disk::format::checksum(&b[end..], 64);
    b[end + 64..end + 68].copy_from_slice(&sum.to_be_bytes());
    assert!(matches!(open_vhd(b), Err(DiskError::BadDiskType(7))));

    let mut b = dynamic();
    patch_footer(&mut b, |f| f.version = 0x0002_0000);
    assert!(matches!(open_vhd(b), Err(DiskError::BadVersion { .. })));

    let mut b = dynamic();
    patch_footer(&mut b, |f| f.current_size = 2041 << 30);
    assert!(matches!(open_vhd(b), Err(DiskError::SizeTooLarge(_))));

    let mut b = dynamic();
    patch_footer(&mut b, |f| f.current_size = (1 << 20) + 100);
    assert!(matches!(open_vhd(b), Err(DiskError::BadSize(_))));
}

#[test]
fn block_sizes_that_are_not_powers_of_two_or_absurd_are_refused() {
    for size in [0u32, 3000, 256, 1 << 30, u32::MAX] {
        let mut b = dynamic();
        patch_header(&mut b, |h| h.block_size = size);
        assert!(
            matches!(open_vhd(b), Err(DiskError::BadBlockSize(s)) if s == size),
            "{size}"
        );
    }
}

#[test]
fn table_sizes_inconsistent_with_the_disk_size_are_refused() {
    for entries in [0u32, 15, 1000, u32::MAX] {
        let mut b = dynamic();
        patch_header(&mut b, |h| h.max_table_entries = entries);
        assert!(
            matches!(open_vhd(b), Err(DiskError::TableSizeInconsistent { .. })),
            "{entries}"
        );
    }
}

#[test]
fn a_table_larger_than_the_file_is_refused_before_it_is_read() {
    // 2000 GiB in 2 MiB blocks: a 4 MiB table claimed by a 3 KiB file.
    let mut b = dynamic();
    let len = b.len();
    patch_footer(&mut b, |f| f.current_size = 2000 << 30);
    patch_header(&mut b, |h| {
        h.block_size = 2 << 20;
        h.max_table_entries = 1_024_000;
    });
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::PastEof {
            what: Structure::Bat,
            ..
        })
    ));
    let mut b = dynamic();
    patch_header(&mut b, |h| h.table_offset = len as u64 - 530);
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::PastEof {
            what: Structure::Bat,
            ..
        })
    ));
    let mut b = dynamic();
    patch_footer(&mut b, |f| f.data_offset = u64::MAX - 100);
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::PastEof {
            what: Structure::DynamicHeader,
            ..
        })
    ));
}

#[test]
fn bat_entries_past_the_end_of_the_file_are_refused() {
    for entry in [0x0010_0000u32, 0xFFFF_FFF0] {
        let mut b = dynamic();
        set_bat(&mut b, 5, entry);
        assert!(
            matches!(open_vhd(b), Err(DiskError::BlockPastEof { block: 5, .. })),
            "{entry:#x}"
        );
    }
}

#[test]
fn overlapping_blocks_and_metadata_are_refused() {
    let mut b = dynamic();
    let first = bat(&b, 0);
    set_bat(&mut b, 1, first);
    assert!(matches!(open_vhd(b), Err(DiskError::Overlap { .. })));
    let mut b = dynamic();
    let half = bat(&b, 0) + 1; // half a block further on
    set_bat(&mut b, 1, half);
    assert!(matches!(open_vhd(b), Err(DiskError::Overlap { .. })));
    let mut b = dynamic();
    set_bat(&mut b, 1, 1); // over the dynamic header
    match open_vhd(b) {
        Err(DiskError::Overlap { a, b, .. }) => {
            assert!(format!("{a} {b}").contains("header"), "{a} / {b}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_parent_locators_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    disk::create_dynamic(&base, 1 << 20).unwrap();
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    let good = std::fs::read(&child).unwrap();
    let len = good.len() as u64;

    let mut b = good.clone();
    patch_header(&mut b, |h| h.locators[0].data_offset = len - 10);
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::PastEof {
            what: Structure::ParentLocator,
            ..
        })
    ));
    let mut b = good.clone();
    patch_header(&mut b, |h| h.locators[1].data_length = u32::MAX);
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::Malformed {
            what: Structure::ParentLocator,
            ..
        })
    ));
    let mut b = good;
    patch_header(&mut b, |h| {
        h.locators[1].code = PLATFORM_W2RU;
        h.locators[1].data_offset = 0;
        h.locators[1].data_length = 512;
    });
    assert!(matches!(
        open_vhd(b),
        Err(DiskError::PastEof { .. } | DiskError::Overlap { .. })
    ));
}

#[test]
fn every_single_byte_flip_of_small_images_is_handled_without_a_panic() {
    for image in [dynamic(), fixed()] {
        let n = image.len();
        let spots: Vec<usize> = (0..2048.min(n)).chain(n - 512..n).collect();
        for &i in &spots {
            let mut b = image.clone();
            b[i] ^= 0xA5;
            disk::fuzzing::open_image(&b);
        }
    }
}
