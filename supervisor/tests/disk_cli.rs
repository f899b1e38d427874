//! `bulkhead disk ...` end to end: the real binary on real files.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

fn bulkhead(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("disk")
        .args(args)
        .output()
        .expect("running bulkhead")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn create_info_check_and_overwrite_rules() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let o = bulkhead(&["create", p(&base), "--size", "10M"]);
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(out(&o).contains("rounded up"), "{}", out(&o));

    // Refused without --force (5: conflict), replaced with it.
    assert_eq!(code(&bulkhead(&["create", p(&base), "--size", "10M"])), 5);
    let o = bulkhead(&[
        "create",
        p(&base),
        "--size",
        "20M",
        "--type",
        "fixed",
        "--force",
    ]);
    assert_eq!(code(&o), 0, "{o:?}");

    let child = dir.path().join("child.vhd");
    assert_eq!(
        code(&bulkhead(&["create", p(&child), "--parent", p(&base)])),
        0
    );

    let o = bulkhead(&["info", "--json", p(&child)]);
    assert_eq!(code(&o), 0, "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "vhd_differencing");
    assert_eq!(v["layers"][1]["format"], "vhd_fixed");
    assert_eq!(v["chain"].as_array().unwrap().len(), 2);
    assert!(v["size"].as_u64().unwrap() >= 20 << 20);
    let o = bulkhead(&["info", p(&child)]);
    assert!(out(&o).contains("vhd differencing") && out(&o).contains("parent 1:"));

    let o = bulkhead(&["check", "--json", p(&child)]);
    assert_eq!(code(&o), 0, "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);

    let raw = dir.path().join("disk.img");
    assert_eq!(
        code(&bulkhead(&[
            "create",
            p(&raw),
            "--size",
            "1M",
            "--type",
            "raw"
        ])),
        0
    );
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 20);
}

#[test]
fn check_exits_1_on_a_damaged_image_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhd");
    assert_eq!(code(&bulkhead(&["create", p(&img), "--size", "4M"])), 0);
    let mut b = std::fs::read(&img).unwrap();
    b[700] ^= 0xFF; // inside the dynamic header
    std::fs::write(&img, b).unwrap();
    let o = bulkhead(&["check", p(&img)]);
    assert_eq!(code(&o), 1);
    assert!(
        out(&o).contains("error: ") && out(&o).contains("checksum"),
        "{}",
        out(&o)
    );
    let o = bulkhead(&["check", "--json", p(&img)]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"][0]["kind"], "bad_checksum");
    // Opening it is an error too (1), a missing file is 3.
    assert_eq!(code(&bulkhead(&["info", p(&img)])), 1);
    assert_eq!(
        code(&bulkhead(&["info", p(&dir.path().join("none.vhd"))])),
        3
    );
    assert_eq!(
        code(&bulkhead(&["check", p(&dir.path().join("none.vhd"))])),
        3
    );
}

#[test]
fn convert_merge_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.img");
    let mut data = vec![0u8; 3 << 20];
    for (i, b) in data.iter_mut().enumerate().take(1 << 20) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&raw, &data).unwrap();
    let vhd = dir.path().join("d.vhd");
    let o = bulkhead(&["convert", p(&raw), p(&vhd)]);
    assert_eq!(code(&o), 0, "{o:?}");
    // Not over an existing file without --force; never onto itself.
    assert_eq!(code(&bulkhead(&["convert", p(&raw), p(&vhd)])), 5);
    assert_eq!(
        code(&bulkhead(&["convert", p(&raw), p(&raw), "--force"])),
        2
    );
    assert_eq!(
        code(&bulkhead(&[
            "convert",
            p(&raw),
            p(&vhd),
            "--type",
            "fixed",
            "--force"
        ])),
        0
    );

    let child = dir.path().join("c.vhd");
    assert_eq!(
        code(&bulkhead(&["create", p(&child), "--parent", p(&vhd)])),
        0
    );
    let mut d = disk::open(&child, true).unwrap();
    d.write_at(2 << 20, &[7u8; 4096]).unwrap();
    d.close().unwrap();
    let o = bulkhead(&["merge", p(&child)]);
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(!child.exists());

    let back = dir.path().join("back.img");
    assert_eq!(
        code(&bulkhead(&["convert", p(&vhd), p(&back), "--type", "raw"])),
        0
    );
    let b = std::fs::read(&back).unwrap();
    assert_eq!(&b[..1 << 20], &data[..1 << 20]);
    assert_eq!(&b[2 << 20..(2 << 20) + 4096], &[7u8; 4096][..]);

    let dynamic = dir.path().join("dyn.vhd");
    assert_eq!(code(&bulkhead(&["convert", p(&back), p(&dynamic)])), 0);
    let o = bulkhead(&["compact", p(&dynamic)]);
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(out(&o).contains("compacted"));
    // A fixed image has nothing to compact: an error, not a crash.
    assert_eq!(code(&bulkhead(&["compact", p(&vhd)])), 1);
    // Merging what is not a differencing image is a usage error.
    assert_eq!(code(&bulkhead(&["merge", p(&vhd)])), 2);
}

#[test]
fn bad_sizes_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.vhd");
    for size in ["1.5G", "10X", "0", "3000G"] {
        let o = bulkhead(&["create", p(&f), "--size", size]);
        assert_eq!(code(&o), 2, "{size}: {o:?}");
    }
    assert_eq!(
        code(&bulkhead(&[
            "create",
            p(&f),
            "--size",
            "1000",
            "--type",
            "raw"
        ])),
        2
    );
    assert_eq!(code(&bulkhead(&["create", p(&f)])), 2);
    assert!(!f.exists());
}
