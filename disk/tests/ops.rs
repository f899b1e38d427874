//! convert, merge, compact and undo disks.

mod common;

use std::path::Path;

use common::{pattern, read_all};
use disk::{DiskError, ImageFormat, Target, compact, convert, merge, no_progress, open, undo};

fn write(path: &Path, offset: u64, data: &[u8]) {
    let mut d = open(path, true).unwrap();
    d.write_at(offset, data).unwrap();
    d.close().unwrap();
}

fn contents(path: &Path) -> Vec<u8> {
    read_all(&mut open(path, false).unwrap())
}

#[test]
fn convert_round_trips_through_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let size = 5 << 20;
    let data = pattern(6, size);
    let raw = dir.path().join("src.img");
    std::fs::write(&raw, &data).unwrap();
    let mut last = (0, 0);
    let fixed = dir.path().join("f.vhd");
    let made = convert(&raw, &fixed, Target::Fixed, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(last, (size as u64, size as u64));
    assert!(made >= size as u64);
    let dynamic = dir.path().join("d.vhd");
    convert(&fixed, &dynamic, Target::Dynamic, &mut no_progress).unwrap();
    let back = dir.path().join("back.img");
    convert(&dynamic, &back, Target::Raw, &mut no_progress).unwrap();
    for p in [&fixed, &dynamic, &back] {
        let c = contents(p);
        assert_eq!(&c[..size], &data[..], "{}", p.display());
        assert!(c[size..].iter().all(|&b| b == 0));
        assert!(disk::check(p).unwrap().problems.is_empty());
    }
    assert_eq!(
        open(&dynamic, false).unwrap().format(),
        ImageFormat::VhdDynamic
    );
    // Zero stretches stay holes.
    let zeros = dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 8 << 20]).unwrap();
    let sparse = dir.path().join("sparse.vhd");
    convert(&zeros, &sparse, Target::Dynamic, &mut no_progress).unwrap();
    assert!(std::fs::metadata(&sparse).unwrap().len() < 64 << 10);
    assert!(matches!(
        convert(&zeros, &sparse, Target::Dynamic, &mut no_progress),
        Err(DiskError::Exists(_))
    ));
}

#[test]
fn convert_flattens_a_differencing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let size = disk::create_dynamic(&base, 4 << 20).unwrap() as usize;
    write(&base, 0, &pattern(7, 3 << 20));
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    write(&child, 1 << 20, &[0xEE; 4096]);
    let flat = dir.path().join("flat.vhd");
    convert(&child, &flat, Target::Dynamic, &mut no_progress).unwrap();
    let d = open(&flat, false).unwrap();
    assert_eq!((d.depth(), d.size() as usize), (1, size));
    drop(d);
    assert_eq!(contents(&flat), contents(&child));
}

#[test]
fn merge_moves_the_child_sectors_into_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    disk::create_dynamic(&base, 4 << 20).unwrap();
    write(&base, 0, &pattern(8, 4 << 20)[..3 << 20]);
    let mid = dir.path().join("mid.vhd");
    disk::create_differencing(&mid, &base).unwrap();
    write(&mid, 4096, &[1u8; 1024]);
    let top = dir.path().join("top.vhd");
    disk::create_differencing(&top, &mid).unwrap();
    write(&top, 2 << 20, &[2u8; 512]);
    write(&top, 0, &[0u8; 512]); // zeros are data too
    let before_base = contents(&base);
    let expect = contents(&top);

    merge(&top, true, &mut no_progress).unwrap();
    assert!(top.exists());
    assert_eq!(contents(&mid), expect);
    assert_eq!(contents(&base), before_base);

    merge(&mid, false, &mut no_progress).unwrap();
    assert!(!mid.exists());
    assert_eq!(contents(&base), expect);
    assert!(disk::check(&base).unwrap().is_clean());

    assert!(matches!(
        merge(&base, false, &mut no_progress),
        Err(DiskError::Unsupported(_))
    ));
}

#[test]
fn compact_drops_zero_blocks_and_orphans_and_keeps_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhd");
    disk::create_dynamic(&path, 8 << 20).unwrap();
    write(&path, 0, &[3u8; 4096]);
    write(&path, 2 << 20, &vec![0u8; 1 << 20]); // allocated, all zero
    write(&path, 6 << 20, &[4u8; 512]);
    // An orphan block, as a crash would leave it.
    {
        let mut b = std::fs::read(&path).unwrap();
        let footer = b[b.len() - 512..].to_vec();
        let end = b.len() - 512;
        b.resize(end + 512 + (2 << 20), 0);
        b.extend(footer);
        std::fs::write(&path, b).unwrap();
    }
    let before = disk::check(&path).unwrap();
    assert!(before.leaked_bytes > 0);
    let id = open(&path, false).unwrap().uuid();
    let expect = contents(&path);

    let r = compact(&path, &mut no_progress).unwrap();
    assert_eq!((r.blocks_before, r.blocks_after), (3, 2));
    assert!(r.bytes_after < r.bytes_before);
    assert_eq!(contents(&path), expect);
    assert_eq!(open(&path, false).unwrap().uuid(), id);
    let after = disk::check(&path).unwrap();
    assert!(after.problems.is_empty(), "{after:?}");
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn compact_keeps_a_differencing_image_zeros_and_parent_link() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    disk::create_dynamic(&base, 4 << 20).unwrap();
    write(&base, 0, &[9u8; 8192]);
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    write(&child, 512, &[0u8; 1024]); // zeros over the parent's nines
    let expect = contents(&child);
    compact(&child, &mut no_progress).unwrap();
    assert_eq!(contents(&child), expect);
    assert_eq!(open(&child, false).unwrap().depth(), 2);
    assert!(matches!(
        compact(&base.with_file_name("nope.vhd"), &mut no_progress),
        Err(DiskError::NotFound(_))
    ));
    let fixed = dir.path().join("f.vhd");
    disk::create_fixed(&fixed, 1 << 20).unwrap();
    assert!(matches!(
        compact(&fixed, &mut no_progress),
        Err(DiskError::Unsupported(_))
    ));
}

#[test]
fn undo_disks_commit_or_discard_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("vm.vhd");
    disk::create_dynamic(&base, 2 << 20).unwrap();
    write(&base, 0, &[1u8; 512]);
    let original = contents(&base);

    let u = undo::create(&base, None).unwrap();
    assert_eq!(u, dir.path().join("vm.vud"));
    assert!(matches!(
        undo::create(&base, None),
        Err(DiskError::Exists(_))
    ));
    write(&u, 0, &[2u8; 512]);
    assert_eq!(contents(&u)[..512], [2u8; 512]);
    undo::discard(&u).unwrap();
    assert!(!u.exists());
    assert_eq!(contents(&base), original);

    let elsewhere = tempfile::tempdir().unwrap();
    let u = undo::create(&base, Some(elsewhere.path())).unwrap();
    assert!(u.starts_with(elsewhere.path()));
    write(&u, 0, &[3u8; 512]);
    undo::commit(&u, &mut no_progress).unwrap();
    assert!(!u.exists());
    assert_eq!(contents(&base)[..512], [3u8; 512]);
    // discard refuses what is not an undo (differencing) disk.
    assert!(matches!(
        undo::discard(&base),
        Err(DiskError::Unsupported(_))
    ));
    assert!(base.exists());
}
