//! Runs the `open_image` fuzz target's corpus through the same function the
//! fuzzer calls, so CI exercises it without cargo-fuzz or nightly.
//!
//! The seed files are made by `write_seed_corpus` (ignored; run it with
//! `cargo test -p disk --test fuzz_corpus -- --ignored` after a format
//! change). Files the fuzzer finds are added next to them by hand.

mod common;

use std::path::PathBuf;

use common::images::*;
use disk::FormatHint;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/open_image")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_goes_through_the_fuzz_target() {
    let files = corpus();
    assert!(files.len() >= 15, "only {} corpus files", files.len());
    for (name, data) in &files {
        let outcome = std::panic::catch_unwind(|| disk::fuzzing::open_image(data));
        assert!(
            outcome.is_ok(),
            "fuzz target panicked on corpus file {name}"
        );
    }
}

#[test]
fn valid_seed_files_still_open() {
    for (name, data) in corpus().iter().filter(|(n, _)| n.starts_with("valid-")) {
        let r = open_bytes(data.clone(), FormatHint::Probe);
        let ok = match &r {
            Ok(_) => true,
            // A differencing image alone lacks its parent, by design.
            Err(disk::DiskError::MissingParent) => name.contains("differencing"),
            Err(_) => false,
        };
        assert!(ok, "seed {name} no longer opens: {r:?}");
    }
}

#[test]
fn invalid_seed_files_are_refused() {
    for (name, data) in corpus().iter().filter(|(n, _)| n.starts_with("bad-")) {
        assert!(open_vhd(data.clone()).is_err(), "seed {name} opens");
    }
}

/// Fixed ids and timestamps, so the seeds do not change on every run.
fn stable(mut b: Vec<u8>) -> Vec<u8> {
    patch_footer(&mut b, |f| {
        f.uuid = disk::format::Uuid([0x42; 16]);
        f.timestamp = 0x2000_0000;
    });
    b
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut s: Vec<(String, Vec<u8>)> = Vec::new();
    let dyn_small = stable(made(
        |p| disk::create_dynamic_with_block_size(p, 64 << 10, 4096).unwrap(),
        &[(0, 0x11, 4), (12288, 0x22, 2)],
    ));
    let fixed = stable(made(
        |p| disk::create_fixed(p, 36 << 10).unwrap(),
        &[(512, 0x33, 3)],
    ));
    let tiny_blocks = stable(made(
        |p| disk::create_dynamic_with_block_size(p, 40 << 10, 512).unwrap(),
        &[(0, 0x44, 1), (4096, 0x55, 8)],
    ));
    let diff = {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.vhd");
        disk::create_dynamic_with_block_size(&base, 64 << 10, 4096).unwrap();
        let child = dir.path().join("child.vhd");
        disk::create_differencing(&child, &base).unwrap();
        let mut d = disk::open(&child, true).unwrap();
        d.write_at(8192, &[0x66; 1536]).unwrap();
        d.close().unwrap();
        let mut b = stable(std::fs::read(&child).unwrap());
        patch_header(&mut b, |h| {
            h.parent_uuid = disk::format::Uuid([0x24; 16]);
            h.parent_timestamp = 0;
        });
        b
    };
    s.push(("valid-raw".into(), vec![0x77; 8192]));
    s.push(("valid-fixed".into(), fixed.clone()));
    s.push(("valid-dynamic".into(), dyn_small.clone()));
    s.push(("valid-dynamic-512-byte-blocks".into(), tiny_blocks));
    s.push(("valid-differencing-alone".into(), diff.clone()));

    let n = dyn_small.len();
    s.push((
        "bad-truncated-dynamic".into(),
        dyn_small[..n - 700].to_vec(),
    ));
    s.push(("bad-truncated-footer".into(), dyn_small[..n - 1].to_vec()));
    s.push(("bad-short".into(), b"conectix".to_vec()));
    let mut b = fixed.clone();
    let end = b.len() - 512;
    b[end + 100] ^= 1;
    s.push(("bad-footer-checksum".into(), b));
    let mut b = dyn_small.clone();
    b[600] ^= 1;
    s.push(("bad-header-checksum".into(), b));
    let mut b = dyn_small.clone();
    b[512] = b'X';
    s.push(("bad-header-cookie".into(), b));
    let mut b = dyn_small.clone();
    b[40] ^= 1;
    s.push(("bad-footer-copy".into(), b));
    let mut b = dyn_small.clone();
    set_bat(&mut b, 3, 0x00FF_FFFF);
    s.push(("bad-bat-past-eof".into(), b));
    let mut b = dyn_small.clone();
    let first = bat(&b, 0);
    set_bat(&mut b, 3, first);
    s.push(("bad-overlapping-blocks".into(), b));
    let mut b = dyn_small.clone();
    set_bat(&mut b, 3, 2);
    s.push(("bad-block-over-header".into(), b));
    let mut b = dyn_small.clone();
    patch_header(&mut b, |h| h.block_size = 3 << 10);
    s.push(("bad-block-size".into(), b));
    let mut b = dyn_small.clone();
    patch_header(&mut b, |h| h.max_table_entries = u32::MAX);
    s.push(("bad-table-entries".into(), b));
    let mut b = dyn_small.clone();
    patch_footer(&mut b, |f| f.current_size = 2000 << 30);
    patch_header(&mut b, |h| h.max_table_entries = (2000 << 30) / 4096);
    s.push(("bad-table-larger-than-file".into(), b));
    let mut b = dyn_small.clone();
    patch_footer(&mut b, |f| f.current_size = 4 << 40);
    s.push(("bad-absurd-size".into(), b));
    let mut b = diff.clone();
    patch_header(&mut b, |h| h.locators[0].data_length = 1 << 30);
    s.push(("bad-locator-length".into(), b));
    let garbage: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8)
        .collect();
    s.push(("garbage".into(), garbage));
    s
}

/// Regenerates the seed files (not a check: run by hand).
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in seeds() {
        std::fs::write(dir.join(name), data).unwrap();
    }
}
