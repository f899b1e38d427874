//! Interoperation with qemu-img's `vpc` driver, both ways. Needs qemu-img
//! (Debian's qemu-utils); without it each test prints SKIPPED, except in CI
//! (CI=true) where it fails.

mod common;

use std::path::Path;

use common::{p, pattern, qemu_img, read_all, run};
use disk::{ImageFormat, create_dynamic, create_fixed, open};

const SIZE: usize = 10 << 20;

fn write_image(path: &Path, data: &[u8]) {
    let mut d = open(path, true).unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            d.write_at(i as u64 * (1 << 20), chunk).unwrap();
        }
    }
    d.close().unwrap();
}

fn qemu_info_size(qemu: &str, path: &Path) -> u64 {
    let (code, out, err) = run(qemu, &["info", "-f", "vpc", "--output=json", p(path)]);
    assert_eq!(code, 0, "qemu-img info: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn qemu_check(qemu: &str, path: &Path) {
    let (code, out, err) = run(qemu, &["check", "-f", "vpc", p(path)]);
    // qemu's vpc driver has no check (exit 63, "does not support checks");
    // anything else must be a clean check.
    assert!(
        code == 0 || (code == 63 && err.contains("not support")),
        "qemu-img check: {code} {out} {err}"
    );
}

#[test]
fn our_fixed_and_dynamic_images_read_back_identical_in_qemu() {
    let Some(qemu) = qemu_img("our_fixed_and_dynamic_images_read_back_identical_in_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(1, SIZE);
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &data).unwrap();
    for (name, create) in [
        (
            "fixed.vhd",
            create_fixed as fn(&Path, u64) -> Result<u64, disk::DiskError>,
        ),
        ("dynamic.vhd", create_dynamic),
    ] {
        let vhd = dir.path().join(name);
        let size = create(&vhd, SIZE as u64).unwrap();
        assert!(size >= SIZE as u64);
        write_image(&vhd, &data);
        qemu_check(qemu, &vhd);
        assert_eq!(
            qemu_info_size(qemu, &vhd),
            size,
            "{name}: qemu sees our size"
        );
        let (code, out, err) = run(
            qemu,
            &["compare", "-f", "raw", "-F", "vpc", p(&raw), p(&vhd)],
        );
        assert_eq!(code, 0, "{name}: qemu-img compare: {out} {err}");
    }
}

#[test]
fn qemu_made_images_read_back_identical_here() {
    let Some(qemu) = qemu_img("qemu_made_images_read_back_identical_here") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(2, SIZE);
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &data).unwrap();
    for sub in ["dynamic", "fixed"] {
        let vhd = dir.path().join(format!("q-{sub}.vhd"));
        let (code, _, err) = run(
            qemu,
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                &format!("subformat={sub}"),
                p(&raw),
                p(&vhd),
            ],
        );
        assert_eq!(code, 0, "qemu-img convert: {err}");
        let mut d = open(&vhd, false).unwrap();
        assert_eq!(
            d.format(),
            if sub == "fixed" {
                ImageFormat::VhdFixed
            } else {
                ImageFormat::VhdDynamic
            }
        );
        assert_eq!(d.size(), qemu_info_size(qemu, &vhd));
        let back = read_all(&mut d);
        assert_eq!(&back[..SIZE], &data[..], "{sub}: data");
        assert!(back[SIZE..].iter().all(|&b| b == 0), "{sub}: padding");
        let report = disk::check(&vhd).unwrap();
        assert!(report.problems.is_empty(), "{sub}: {report:?}");
    }
    // An empty image qemu-img creates.
    let empty = dir.path().join("empty.vhd");
    let (code, _, err) = run(
        qemu,
        &[
            "create",
            "-f",
            "vpc",
            "-o",
            "subformat=dynamic",
            p(&empty),
            "64M",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mut d = open(&empty, true).unwrap();
    assert_eq!(d.size(), qemu_info_size(qemu, &empty));
    d.write_at(4096, &[7u8; 512]).unwrap();
    d.close().unwrap();
    let back = dir.path().join("back.raw");
    let (code, _, err) = run(
        qemu,
        &["convert", "-f", "vpc", "-O", "raw", p(&empty), p(&back)],
    );
    assert_eq!(code, 0, "{err}");
    let back = std::fs::read(&back).unwrap();
    assert_eq!(&back[4096..4608], &[7u8; 512][..]);
    assert!(back[..4096].iter().chain(&back[4608..]).all(|&b| b == 0));
}

/// qemu's `vpc` driver reads a differencing image but not its parent (it
/// shows the child's own sectors over zeros); it cannot create one. So:
/// a qemu-made parent under our child, read here; and qemu reads our child
/// alone with our size and our sectors.
#[test]
fn our_differencing_child_over_a_qemu_made_parent() {
    let Some(qemu) = qemu_img("our_differencing_child_over_a_qemu_made_parent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(5, SIZE);
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &data).unwrap();
    let base = dir.path().join("base.vhd");
    let (code, _, err) = run(
        qemu,
        &["convert", "-f", "raw", "-O", "vpc", p(&raw), p(&base)],
    );
    assert_eq!(code, 0, "{err}");
    let child = dir.path().join("child.vhd");
    let size = disk::create_differencing(&child, &base).unwrap();
    let mut d = open(&child, true).unwrap();
    let ours = [0xC3u8; 8192];
    d.write_at(3 << 20, &ours).unwrap();
    d.close().unwrap();

    let mut expect = data.clone();
    expect.resize(size as usize, 0);
    expect[3 << 20..(3 << 20) + 8192].copy_from_slice(&ours);
    let mut d = open(&child, false).unwrap();
    assert_eq!(read_all(&mut d), expect);

    assert_eq!(qemu_info_size(qemu, &child), size);
    let alone = dir.path().join("alone.raw");
    let (code, _, err) = run(
        qemu,
        &["convert", "-f", "vpc", "-O", "raw", p(&child), p(&alone)],
    );
    assert_eq!(code, 0, "{err}");
    let alone = std::fs::read(&alone).unwrap();
    assert_eq!(&alone[3 << 20..(3 << 20) + 8192], &ours[..]);
}

/// A chain of ours, flattened by our `convert`, compares equal in qemu with
/// what we read through the chain; and qemu's own conversion of our
/// dynamic image back to raw matches too.
#[test]
fn our_differencing_chain_flattened_compares_equal_in_qemu() {
    let Some(qemu) = qemu_img("our_differencing_chain_flattened_compares_equal_in_qemu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    create_dynamic(&base, SIZE as u64).unwrap();
    write_image(&base, &pattern(9, SIZE));
    let child = dir.path().join("child.vhd");
    disk::create_differencing(&child, &base).unwrap();
    let mut d = open(&child, true).unwrap();
    d.write_at(5 << 20, &[0x5Cu8; 3 << 19]).unwrap();
    d.write_at(512, &[0u8; 512]).unwrap();
    d.close().unwrap();
    let expect = dir.path().join("expect.raw");
    std::fs::write(&expect, read_all(&mut open(&child, false).unwrap())).unwrap();

    for target in [disk::Target::Dynamic, disk::Target::Fixed] {
        let flat = dir.path().join(format!("flat-{target:?}.vhd"));
        disk::convert(&child, &flat, target, &mut disk::no_progress).unwrap();
        let (code, out, err) = run(
            qemu,
            &["compare", "-f", "raw", "-F", "vpc", p(&expect), p(&flat)],
        );
        assert_eq!(code, 0, "{target:?}: {out} {err}");
    }
}

/// A real file system survives raw -> our dynamic VHD -> qemu's raw:
/// mkfs.ext4 makes it, e2fsck finds it clean at the end.
#[test]
fn an_ext4_file_system_survives_our_vhd_and_qemu() {
    let Some(qemu) = qemu_img("an_ext4_file_system_survives_our_vhd_and_qemu") else {
        return;
    };
    let has_e2fs = std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok();
    if !has_e2fs {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "mkfs.ext4 missing in CI"
        );
        eprintln!("SKIPPED an_ext4_file_system_survives_our_vhd_and_qemu: no e2fsprogs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fs.img");
    std::fs::write(&raw, vec![0u8; 16 << 20]).unwrap();
    let (code, _, err) = run("mkfs.ext4", &["-q", "-F", "-L", "bulkhead", p(&raw)]);
    assert_eq!(code, 0, "{err}");
    let vhd = dir.path().join("fs.vhd");
    disk::convert(&raw, &vhd, disk::Target::Dynamic, &mut disk::no_progress).unwrap();
    let back = dir.path().join("back.img");
    let (code, _, err) = run(
        qemu,
        &["convert", "-f", "vpc", "-O", "raw", p(&vhd), p(&back)],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run("e2fsck", &["-fn", p(&back)]);
    assert_eq!(code, 0, "e2fsck: {out} {err}");
    let a = std::fs::read(&raw).unwrap();
    let b = std::fs::read(&back).unwrap();
    assert_eq!(&b[..a.len()], &a[..]);
}
