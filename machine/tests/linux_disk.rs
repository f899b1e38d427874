//! Acceptance: Debian's i386 kernel (the guest kit) drives Bulkhead's PIIX3
//! IDE controller with ata_piix: a raw ext2 disk as /dev/sda and an ISO in
//! the CD-ROM drive as /dev/sr0, both by bus-master DMA. The guest checks a
//! file the host wrote, writes one the host then reads back from the image,
//! reads the CD, and measures sequential read throughput.
//!
//! One boot serves every check (a boot takes about a minute). Skipped, with
//! a message, when the guest kit or e2fsprogs/genisoimage are missing,
//! unless CI=true.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

mod common;

use common::serial::Serial;
use machine::ReadOnly;
use machine::pc::{DriveConfig, DriveKind, Firmware, Pc, PcConfig, PcExit, PcHandle};

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite(kit: &Path) -> Option<String> {
    if !kit.join("kernel").exists() || !kit.join("modules/ata_piix.ko").exists() {
        return Some(format!(
            "the guest kit with storage modules is missing in {}: run scripts/guest-kit",
            kit.display()
        ));
    }
    for tool in ["mke2fs", "debugfs", "genisoimage"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
        if !found {
            return Some(format!("{tool} is missing: run scripts/setup"));
        }
    }
    None
}

fn kit_dir() -> PathBuf {
    std::env::var_os("BULKHEAD_GUEST_KIT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bulkhead/guest-kit"))
        })
        .expect("HOME or BULKHEAD_GUEST_KIT")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 64 MiB ext2 image holding `hello.bin` (random bytes), and an ISO
/// holding `readme.txt`. Returns (disk, iso, hello.bin bytes).
fn images(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let _ = std::fs::remove_dir_all(dir);
    let (root, cd) = (dir.join("root"), dir.join("cd"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&cd).unwrap();
    // Deterministic "random" content (xorshift), larger than one DMA transfer.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let hello: Vec<u8> = (0..700_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("hello.bin"), &hello).unwrap();
    std::fs::write(cd.join("readme.txt"), "bulkhead iso9660 ok\n").unwrap();
    let (disk, iso) = (dir.join("disk.img"), dir.join("cd.iso"));
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-b", "1024", "-d"])
        .arg(&root)
        .arg(&disk)
        .arg("64M"));
    run(Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-o"])
        .arg(&iso)
        .arg(&cd));
    (disk, iso, hello)
}

fn md5_hex(data: &[u8]) -> String {
    // The host's md5sum, so the test needs no hashing crate.
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn boot(
    kit: &Path,
    disk: &Path,
    iso: &Path,
) -> (PcHandle, Serial, std::thread::JoinHandle<PcExit>) {
    let serial = Serial::new("linux_disk");
    let out = serial.clone();
    let kernel = std::fs::read(kit.join("kernel")).unwrap();
    let initrd = std::fs::read(kit.join("initrd")).unwrap();
    let disk = std::fs::File::options()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let iso = std::fs::File::open(iso).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let vcpu = std::thread::spawn(move || {
        let mut pc = Pc::new(PcConfig {
            ram_mib: 256,
            firmware: Firmware::Linux {
                kernel,
                initrd: Some(initrd),
                cmdline: "console=ttyS0".into(),
            },
            framebuffer: None,
            serial: [Box::new(out), Box::new(std::io::sink())],
            debug_console: None,
            debug_exit: false,
            clock: None,
            port_hook: None,
            drives: vec![
                DriveConfig {
                    channel: 0,
                    slave: false,
                    kind: DriveKind::Disk,
                    backend: Box::new(disk),
                    model: "BULKHEAD HARDDISK".into(),
                    serial: "BHHD0001".into(),
                },
                DriveConfig {
                    channel: 1,
                    slave: false,
                    kind: DriveKind::Cdrom,
                    backend: Box::new(ReadOnly(iso)),
                    model: "BULKHEAD CD-ROM".into(),
                    serial: "BHCD0001".into(),
                },
            ],
        })
        .expect("machine");
        common::jit_from_env(pc.cpu_mut());
        tx.send(pc.handle()).unwrap();
        pc.run(None)
    });
    let handle = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("machine built");
    (handle, serial, vcpu)
}

/// Types `command` and returns the output from after it up to the line
/// holding `marker`.
fn ask(handle: &PcHandle, serial: &Serial, at: &mut usize, command: &str, marker: &str) -> String {
    handle.serial_input(0, format!("{command}\n").as_bytes());
    let (text, next) = serial.wait_for(marker, *at, Duration::from_secs(120));
    *at = next;
    text
}

#[test]
fn debian_guest_reads_and_writes_an_ext2_disk_and_reads_an_iso_by_dma() {
    let kit = kit_dir();
    if let Some(why) = missing_prerequisite(&kit) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux_disk");
    let (disk, iso, hello) = images(&dir);
    let (handle, serial, vcpu) = boot(&kit, &disk, &iso);
    let (_, mut at) = serial.wait_for("BULKHEAD-GUEST-READY", 0, Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(2));

    // The kernel found both drives and runs them in a DMA mode.
    let found = ask(
        &handle,
        &serial,
        &mut at,
        "dmesg | grep -E 'ata[12]|sd 0|sr 1'; cat /sys/class/ata_device/dev*/xfer_mode; echo PROBE-$((6*7))",
        "PROBE-42",
    );
    println!("{found}");
    for want in [
        "ata1.00: ATA-7: BULKHEAD HARDDISK",
        "ATAPI: BULKHEAD CD-ROM",
        "[sda]",
        "sr0",
    ] {
        assert!(
            found.contains(want),
            "no {want:?} in the kernel log:\n{found}"
        );
    }
    assert_eq!(
        found.matches("XFER_MW_DMA_2").count(),
        2,
        "both drives should run multiword DMA 2:\n{found}"
    );

    // The file the host wrote reads back intact; a new one is written.
    let sum = ask(
        &handle,
        &serial,
        &mut at,
        "mkdir -p /mnt /cd; mount -t ext2 /dev/sda /mnt && md5sum /mnt/hello.bin; echo SUM-$((6*7))",
        "SUM-42",
    );
    assert!(
        sum.contains(&md5_hex(&hello)),
        "md5sum in the guest differs from the host's:\n{sum}"
    );
    ask(
        &handle,
        &serial,
        &mut at,
        "seq 1 20000 > /mnt/written.txt; sync; umount /mnt; echo UMOUNT-$((6*7))",
        "UMOUNT-42",
    );

    // The CD's file.
    let cd = ask(
        &handle,
        &serial,
        &mut at,
        "mount -t iso9660 /dev/sr0 /cd && cat /cd/readme.txt; umount /cd; echo CD-$((6*7))",
        "CD-42",
    );
    assert!(cd.contains("bulkhead iso9660 ok"), "CD read:\n{cd}");

    // Sequential read throughput, page cache dropped first.
    let dd = ask(
        &handle,
        &serial,
        &mut at,
        "echo 3 > /proc/sys/vm/drop_caches; time dd if=/dev/sda of=/dev/null bs=1M count=64 2>&1; echo DD-$((6*7))",
        "DD-42",
    );
    let secs = dd
        .lines()
        .find_map(|l| l.trim().strip_prefix("real"))
        .and_then(|t| {
            let t = t.trim();
            let (m, s) = t.split_once('m')?;
            Some(
                m.trim().parse::<f64>().ok()? * 60.0
                    + s.trim().strip_suffix('s')?.parse::<f64>().ok()?,
            )
        })
        .unwrap_or_else(|| panic!("no time in {dd:?}"));
    println!(
        "guest sequential read: 64 MiB in {secs:.2} s = {:.1} MiB/s",
        64.0 / secs
    );

    handle.serial_input(0, b"poweroff\n");
    assert_eq!(vcpu.join().expect("vCPU thread"), PcExit::PowerOff);

    // The host reads the guest's file from the image.
    let out = Command::new("debugfs")
        .args(["-R", "cat /written.txt"])
        .arg(&disk)
        .output()
        .expect("debugfs");
    let written = String::from_utf8_lossy(&out.stdout);
    let expect: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(
        written == expect,
        "the guest's file read back wrong ({} bytes)",
        written.len()
    );
}
