//! IDE drives end to end: Debian's i386 guest (the guest kit) in `bulkhead
//! run`, in the real sandbox (as root; otherwise a SKIPPED line), with four
//! drives: a dynamic VHD made by our `bulkhead disk convert`, a dynamic VHD
//! made by qemu-img on an undo disk that is committed, a fixed VHD on an undo
//! disk that is discarded, and an ISO on the CD-ROM. The guest mounts the
//! ext2 filesystems built on the host, checks a file's checksum, writes new
//! files and powers off; the host then finds those files in the images (read
//! back through our crate and through qemu-img).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const MARKER: &str = "BULKHEAD-GUEST-READY";
/// A whole Debian boot on a loaded CI machine, plus the disk work.
const TIMEOUT: Duration = Duration::from_secs(400);

/// The worker with the test profile's optimisation (see debian.rs).
fn worker() -> PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER
        .get_or_init(|| common::build_worker("supervisor-debian", &["--profile", "test"]))
        .clone()
}

/// Runs a host tool, failing the test with its output if it fails.
fn tool(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (scripts/setup installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bulkhead(args: &[&str], dir: &Path) -> String {
    tool(BIN, args, dir)
}

/// Host tools the test needs; in CI their absence is a failure.
fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = ["mke2fs", "debugfs", "qemu-img", "genisoimage", "sha256sum"]
        .into_iter()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: missing host tools {missing:?} (scripts/setup installs them)"
    );
    eprintln!("SKIPPED {test}: missing host tools {missing:?}; run scripts/setup");
    false
}

/// A 32 MiB ext2 image holding `files`.
fn ext2_image(dir: &Path, name: &str, files: &Path) -> PathBuf {
    let raw = dir.join(name);
    tool(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext2",
            "-d",
            files.to_str().unwrap(),
            raw.to_str().unwrap(),
            "32M",
        ],
        dir,
    );
    raw
}

/// A file's content from an ext2 image (raw), by debugfs.
fn ext2_cat(raw: &Path, file: &str) -> String {
    tool(
        "debugfs",
        &["-R", &format!("cat {file}"), raw.to_str().unwrap()],
        raw.parent().unwrap(),
    )
}

/// The first field of `sha256sum FILE`.
fn sha256(path: &Path) -> String {
    tool(
        "sha256sum",
        &[path.to_str().unwrap()],
        path.parent().unwrap(),
    )
    .split_whitespace()
    .next()
    .unwrap()
    .to_string()
}

/// A VHD's content as raw, read by our crate and by qemu-img; both must agree.
fn vhd_to_raw(dir: &Path, vhd: &str) -> PathBuf {
    let ours = dir.join(format!("{vhd}.ours.raw"));
    let theirs = dir.join(format!("{vhd}.qemu.raw"));
    bulkhead(
        &[
            "disk",
            "convert",
            vhd,
            ours.to_str().unwrap(),
            "--type",
            "raw",
        ],
        dir,
    );
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            vhd,
            theirs.to_str().unwrap(),
        ],
        dir,
    );
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "{vhd}: our reading differs from qemu-img's"
    );
    ours
}

/// Types `command` at the guest's shell and waits for it to succeed;
/// returns what the guest printed meanwhile.
fn step(run: &mut common::Foreground, n: u32, command: &str) -> String {
    run.forget();
    // Quoted so that the shell's echo of the typed line does not match.
    run.write(format!("{command}; echo \"S\"TEP-{n}-$?.\n").as_bytes());
    // Exit status 0, or one starting with 1-9.
    let ends: Vec<String> = (0..10).map(|d| format!("STEP-{n}-{d}")).collect();
    let which = run.expect_any(&ends.iter().map(String::as_str).collect::<Vec<_>>());
    let seen = run.seen();
    assert_eq!(which, 0, "step {n} failed: {command}\n{seen}");
    seen
}

#[test]
fn debian_reads_and_writes_vhd_disks_undo_disks_and_a_cdrom() {
    let test = "debian_reads_and_writes_vhd_disks_undo_disks_and_a_cdrom";
    if !common::is_root() {
        eprintln!("SKIPPED {test}: the full sandbox needs root");
        return;
    }
    if !tools_present(test) {
        return;
    }
    let (kernel, initrd) = common::guest_kit();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // What the guest will find: the same ext2 filesystem on three disks.
    let files = d.join("files");
    std::fs::create_dir(&files).unwrap();
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(files.join("payload.bin"), &payload).unwrap();
    let payload_sha = sha256(&files.join("payload.bin"));
    let raw = ext2_image(d, "fs.raw", &files);
    bulkhead(
        &["disk", "convert", "fs.raw", "a.vhd", "--type", "dynamic"],
        d,
    );
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic",
            "fs.raw",
            "b.vhd",
        ],
        d,
    );
    bulkhead(
        &["disk", "convert", "fs.raw", "c.vhd", "--type", "fixed"],
        d,
    );
    let c_before = sha256(&d.join("c.vhd"));
    let iso_files = d.join("iso");
    std::fs::create_dir(&iso_files).unwrap();
    std::fs::write(iso_files.join("readme.txt"), "on the cd\n").unwrap();
    tool(
        "genisoimage",
        &["-quiet", "-r", "-V", "BULKHEAD", "-o", "cd.iso", "iso"],
        d,
    );
    drop(raw);

    let path = |n: &str| d.join(n).to_str().unwrap().to_string();
    let (a, b, c, iso) = (
        path("a.vhd"),
        format!("{},undo=commit", path("b.vhd")),
        format!("{},undo=discard", path("c.vhd")),
        path("cd.iso"),
    );
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        "console=ttyS0",
        "--memory",
        "256",
        "--disk",
        &a,
        "--disk",
        &b,
        "--disk",
        &c,
        "--cdrom",
        &iso,
    ];
    let mut run =
        common::Foreground::start(&args, &worker(), tempfile::tempdir().unwrap(), TIMEOUT);
    run.expect(MARKER);

    // Primary master a -> sda, primary slave b -> sdb, secondary master is
    // the CD-ROM (sr0), secondary slave c -> sdc.
    step(&mut run, 1, "mkdir -p /mnt/a /mnt/b /mnt/c /mnt/cd");
    step(
        &mut run,
        2,
        "mount /dev/sda /mnt/a && mount /dev/sdb /mnt/b && mount /dev/sdc /mnt/c && mount -t iso9660 -o ro /dev/sr0 /mnt/cd",
    );
    step(
        &mut run,
        3,
        &format!(
            "for m in a b c; do sha256sum /mnt/$m/payload.bin | grep -q {payload_sha} || exit 1; done; grep -q 'on the cd' /mnt/cd/readme.txt"
        ),
    );
    step(
        &mut run,
        4,
        "for m in a b c; do echo written-on-$m > /mnt/$m/new.txt; done; dd if=/dev/urandom of=/mnt/a/big.bin bs=64k count=32 2>/dev/null",
    );
    let report = step(
        &mut run,
        5,
        "sha256sum /mnt/a/big.bin && cat /sys/class/ata_device/dev1.0/xfer_mode",
    );
    step(&mut run, 6, "umount /mnt/a /mnt/b /mnt/c /mnt/cd && sync");
    run.write(b"poweroff -f\n");
    let (status, stdout, stderr) = run.finish();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}\nstdout: {stdout}");
    // ata_piix drives a PIIX3 in multiword DMA mode 2 (no UDMA on a PIIX3).
    assert!(
        report.contains("XFER_MW_DMA_2"),
        "libata did not pick DMA: {report}"
    );
    let big_sha = report
        .lines()
        .find(|l| l.trim_end().ends_with("  /mnt/a/big.bin"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the guest's checksum of big.bin")
        .to_string();
    assert!(
        stderr.contains("committed the undo disk"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("discarded the undo disk"),
        "stderr: {stderr}"
    );

    // a.vhd: written in place; every reader agrees, and check is clean.
    bulkhead(&["disk", "check", "a.vhd"], d);
    let a_raw = vhd_to_raw(d, "a.vhd");
    assert_eq!(ext2_cat(&a_raw, "/new.txt"), "written-on-a\n");
    tool(
        "debugfs",
        &["-R", "dump /big.bin big.out", a_raw.to_str().unwrap()],
        d,
    );
    assert_eq!(sha256(&d.join("big.out")), big_sha);
    tool("e2fsck", &["-fn", a_raw.to_str().unwrap()], d);
    // b.vhd (qemu-img's image): the undo disk was merged into it.
    bulkhead(&["disk", "check", "b.vhd"], d);
    assert_eq!(
        ext2_cat(&vhd_to_raw(d, "b.vhd"), "/new.txt"),
        "written-on-b\n"
    );
    // c.vhd: untouched, byte for byte.
    assert_eq!(sha256(&d.join("c.vhd")), c_before);
}
