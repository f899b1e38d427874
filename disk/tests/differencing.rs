//! Differencing images: chains, parent resolution by locators, linkage
//! checks.

mod common;

use std::path::Path;

use common::{pattern, read_all};
use disk::format::DynamicHeader;
use disk::{DiskError, ImageFormat, create_differencing, create_dynamic, create_fixed, open};

fn write(path: &Path, offset: u64, data: &[u8]) {
    let mut d = open(path, true).unwrap();
    d.write_at(offset, data).unwrap();
    d.close().unwrap();
}

/// Rewrites a sparse image's dynamic header (and its checksum).
pub fn patch_header(path: &Path, f: impl FnOnce(&mut DynamicHeader)) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1024];
    file.read_exact_at(&mut b, 512).unwrap();
    let mut h = DynamicHeader::parse(&b).unwrap();
    f(&mut h);
    file.write_all_at(&h.to_bytes(), 512).unwrap();
}

#[test]
fn a_three_level_chain_reads_each_layer_over_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let size = create_dynamic(&base, 8 << 20).unwrap() as usize;
    let data = pattern(4, size);
    write(&base, 0, &data);
    let mid = dir.path().join("mid.vhd");
    assert_eq!(create_differencing(&mid, &base).unwrap() as usize, size);
    write(&mid, 1 << 20, &[0xAA; 4096]);
    write(&mid, (3 << 20) + 512, &[0u8; 512]); // zeros shadow the parent
    let top = dir.path().join("top.vhd");
    create_differencing(&top, &mid).unwrap();
    write(&top, (1 << 20) + 1024, &[0xBB; 1024]);

    let mut expect = data.clone();
    expect[1 << 20..(1 << 20) + 4096].fill(0xAA);
    expect[(3 << 20) + 512..(3 << 20) + 1024].fill(0);
    expect[(1 << 20) + 1024..(1 << 20) + 2048].fill(0xBB);

    assert_eq!(
        disk::resolve_chain(&top).unwrap(),
        vec![top.clone(), mid.clone(), base.clone()]
    );
    let mut d = open(&top, false).unwrap();
    assert_eq!(d.format(), ImageFormat::VhdDifferencing);
    assert_eq!(d.depth(), 3);
    assert_eq!(read_all(&mut d), expect);
    // The parents are untouched.
    let mut b = open(&base, false).unwrap();
    assert_eq!(read_all(&mut b), data);
}

#[test]
fn open_files_takes_the_chain_as_open_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    create_fixed(&base, 2 << 20).unwrap();
    write(&base, 0, &[1u8; 1024]);
    let child = dir.path().join("child.vhd");
    create_differencing(&child, &base).unwrap();
    let files = disk::resolve_chain(&child)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(i == 0)
                .open(p)
                .unwrap()
        })
        .collect();
    let mut d = disk::open_files(files, true).unwrap();
    d.write_at(512, &[2u8; 512]).unwrap();
    let mut buf = [0u8; 1536];
    d.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..512], &[1u8; 512]);
    assert_eq!(&buf[512..1024], &[2u8; 512]);
    assert_eq!(&buf[1024..], &[0u8; 512]);
}

#[test]
fn the_relative_locator_finds_a_parent_after_the_directory_moves() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(a.join("sub")).unwrap();
    let base = a.join("base.vhd");
    create_dynamic(&base, 1 << 20).unwrap();
    let child = a.join("sub/child.vhd");
    create_differencing(&child, &base).unwrap();
    let b = root.path().join("b");
    std::fs::rename(&a, &b).unwrap();
    let chain = disk::resolve_chain(&b.join("sub/child.vhd")).unwrap();
    assert_eq!(chain[1], b.join("sub/../base.vhd"));
}

#[test]
fn the_absolute_locator_finds_a_parent_after_the_child_moves() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base.vhd");
    create_dynamic(&base, 1 << 20).unwrap();
    let child = root.path().join("child.vhd");
    create_differencing(&child, &base).unwrap();
    std::fs::create_dir(root.path().join("elsewhere")).unwrap();
    let moved = root.path().join("elsewhere/child.vhd");
    std::fs::rename(&child, &moved).unwrap();
    let chain = disk::resolve_chain(&moved).unwrap();
    assert_eq!(chain[1], std::fs::canonicalize(&base).unwrap());
}

#[test]
fn a_missing_parent_is_reported_with_the_paths_tried() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    create_dynamic(&base, 1 << 20).unwrap();
    let child = dir.path().join("child.vhd");
    create_differencing(&child, &base).unwrap();
    std::fs::remove_file(&base).unwrap();
    match open(&child, false) {
        Err(DiskError::ParentNotFound { tried, .. }) => {
            assert!(tried.iter().any(|t| t.ends_with("base.vhd")), "{tried:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_parent_with_another_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    create_dynamic(&base, 1 << 20).unwrap();
    let child = dir.path().join("child.vhd");
    create_differencing(&child, &base).unwrap();
    std::fs::remove_file(&base).unwrap();
    create_dynamic(&base, 1 << 20).unwrap(); // same name, new id
    assert!(matches!(
        open(&child, false),
        Err(DiskError::ParentUuidMismatch { .. })
    ));
    // Handing the files over directly is checked the same way.
    let files = vec![
        std::fs::File::open(&child).unwrap(),
        std::fs::File::open(&base).unwrap(),
    ];
    assert!(matches!(
        disk::open_files(files, false),
        Err(DiskError::ParentUuidMismatch { .. })
    ));
}

#[test]
fn a_differencing_image_without_its_parent_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    create_dynamic(&base, 1 << 20).unwrap();
    let child = dir.path().join("child.vhd");
    create_differencing(&child, &base).unwrap();
    let files = vec![std::fs::File::open(&child).unwrap()];
    assert!(matches!(
        disk::open_files(files, false),
        Err(DiskError::MissingParent)
    ));
    let files = vec![
        std::fs::File::open(&base).unwrap(),
        std::fs::File::open(&base).unwrap(),
    ];
    assert!(matches!(
        disk::open_files(files, false),
        Err(DiskError::UnexpectedParent(_))
    ));
}

#[test]
fn a_loop_in_the_parent_chain_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.vhd");
    create_dynamic(&p, 1 << 20).unwrap();
    let a = dir.path().join("a.vhd");
    create_differencing(&a, &p).unwrap();
    let b = dir.path().join("b.vhd");
    create_differencing(&b, &a).unwrap();
    // b takes p's place, and a now names b's id: a -> b -> a.
    let b_id = open(&b, false).unwrap().uuid().unwrap();
    std::fs::rename(&b, &p).unwrap();
    patch_header(&a, |h| h.parent_uuid = b_id);
    assert!(matches!(
        disk::resolve_chain(&a),
        Err(DiskError::ParentLoop(_))
    ));
    // Descriptors that go round in circles stop at the depth limit.
    let files: Vec<_> = (0..65)
        .map(|i| std::fs::File::open(if i % 2 == 0 { &a } else { &p }).unwrap())
        .collect();
    assert!(matches!(
        disk::open_files(files, false),
        Err(DiskError::ChainTooDeep(64))
    ));
}

#[test]
fn a_chain_deeper_than_64_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut prev = dir.path().join("0.vhd");
    create_dynamic(&prev, 1 << 20).unwrap();
    for i in 1..64 {
        let next = dir.path().join(format!("{i}.vhd"));
        create_differencing(&next, &prev).unwrap();
        prev = next;
    }
    assert_eq!(open(&prev, false).unwrap().depth(), 64);
    let last = dir.path().join("64.vhd");
    assert!(matches!(
        create_differencing(&last, &prev),
        Err(DiskError::ChainTooDeep(64))
    ));
}
