//! Guest disk throughput: the Debian guest kit's busybox `dd` on the IDE
//! disk, in `bulkhead run` (the real sandbox, release builds) and in
//! `qemu-system-i386 -accel tcg` in the same invocation, for three images
//! holding the same 128 MiB of pseudo-random bytes: raw, a dynamic VHD and
//! a fixed VHD (both made by `bulkhead disk convert`).
//!
//! Each engine boots a fresh copy of the image as its first disk (sda), and
//! after `BULKHEAD-GUEST-READY` runs, `--repeat` (3) times each:
//!
//! - read: `echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sda of=/dev/null
//!   bs=1M count=128`;
//! - write: `dd if=/dev/zero of=/dev/sda bs=1M count=64 conv=fsync`.
//!
//! Debian's busybox `dd` prints only its record counts, so the guest reads
//! `/proc/uptime` (10 ms resolution) just before and after each `dd`; the
//! host's time for the whole shell step is kept as a check of the guest's
//! clock. Figures are MiB/s (2^20 bytes per second), medians of the
//! repeats; the ratio is Bulkhead's / QEMU's (above 1: Bulkhead is faster).
//! It also times the host-side conversion of the raw image to a dynamic
//! VHD: `bulkhead disk convert` against `qemu-img convert -O vpc`.
//!
//! `cargo bench -p supervisor --bench disk [-- --json] [--repeat N]
//! [--no-qemu]`. Needs root (the sandbox) and the guest kit
//! (`scripts/guest-kit`); without either it prints why and stops. The
//! machine's load average is printed with the figures.

mod common;
use common::{guest_kit, is_root, worker};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::BIN;
const MARKER: &str = "BULKHEAD-GUEST-READY";
const MIB: u64 = 1 << 20;
const IMAGE_MIB: u64 = 128;
const READ_MIB: u64 = 128;
const WRITE_MIB: u64 = 64;
const RAM_MIB: &str = "256";
/// A Debian boot on a loaded machine, or one dd at a few MiB/s.
const TIMEOUT: Duration = Duration::from_secs(600);

struct Args {
    json: bool,
    repeat: usize,
    qemu: bool,
}

fn args() -> Args {
    let mut a = Args {
        json: false,
        repeat: 3,
        qemu: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--repeat" => {
                a.repeat = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--repeat takes a number");
                a.repeat = a.repeat.max(1);
            }
            "--no-qemu" => a.qemu = false,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    a
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a host tool and returns how long it took; panics with its output
/// if it fails.
fn tool(program: &str, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (scripts/setup installs it)"));
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// `IMAGE_MIB` MiB of xorshift64* output: incompressible, no zero blocks,
/// so every VHD block is allocated.
fn random_image(path: &Path) {
    let mut out = BufWriter::with_capacity(MIB as usize, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 0..IMAGE_MIB {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.write_all(&chunk).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Host-side raw → dynamic VHD conversion, ours and qemu-img's, median of
/// three each (the raw image is in the page cache; outputs are not synced).
fn bench_convert(dir: &Path, raw: &Path) -> Value {
    let out = dir.join("convert.vhd");
    let (raw_s, out_s) = (raw.to_str().unwrap(), out.to_str().unwrap());
    let mut ours = Vec::new();
    let mut qemu = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_file(&out);
        ours.push(secs(tool(
            BIN,
            &["disk", "convert", raw_s, out_s, "--type", "dynamic"],
        )));
        let _ = std::fs::remove_file(&out);
        qemu.push(secs(tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                "subformat=dynamic",
                raw_s,
                out_s,
            ],
        )));
    }
    let _ = std::fs::remove_file(&out);
    let (o, q) = (median(&ours), median(&qemu));
    json!({
        "mib": IMAGE_MIB,
        "bulkhead_s": o,
        "bulkhead_all_s": ours,
        "qemu_img_s": q,
        "qemu_img_all_s": qemu,
        "bulkhead_mib_s": round1(IMAGE_MIB as f64 / o),
        "qemu_img_mib_s": round1(IMAGE_MIB as f64 / q),
    })
}

/// A guest on COM1 over a child's stdin/stdout (either engine); stderr is
/// kept for failure messages.
struct Guest {
    child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    seen: Vec<u8>,
    what: String,
}

impl Guest {
    fn start(mut cmd: Command, what: &str) -> Guest {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Guest {
            child,
            stdout: rx,
            stderr,
            seen: Vec::new(),
            what: what.to_string(),
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "{}: {why}\nstdout: {}\nstderr: {}",
            self.what,
            String::from_utf8_lossy(&self.seen),
            String::from_utf8_lossy(&self.stderr.lock().unwrap())
        );
    }

    /// Reads stdout until it contains `text`.
    fn expect(&mut self, text: &str) {
        if !self.expect_within(text, TIMEOUT) {
            self.fail(&format!("no {text:?} on COM1"));
        }
    }

    /// Reads stdout until it contains `text` or `wait` has passed.
    fn expect_within(&mut self, text: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while !String::from_utf8_lossy(&self.seen).contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(bytes) => self.seen.extend_from_slice(&bytes),
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                Err(mpsc::RecvTimeoutError::Disconnected) => self.fail("COM1 closed"),
            }
        }
        true
    }

    /// Waits until the shell takes whole lines: the first keystrokes after
    /// the marker can be eaten while busybox's line editor asks the
    /// terminal for the cursor position (ESC [6n).
    fn settle(&mut self) {
        for k in 0..20 {
            self.seen.clear();
            self.write(format!("echo \"R\"EADY-{k}\n").as_bytes());
            if self.expect_within(&format!("READY-{k}"), Duration::from_secs(3)) {
                return;
            }
        }
        self.fail("the shell did not answer");
    }

    fn write(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Types `command` at the shell, waits for it to succeed; returns what
    /// the guest printed and the host's time from typing to the status.
    fn step(&mut self, n: u32, command: &str) -> (String, Duration) {
        self.seen.clear();
        let start = Instant::now();
        // Quoted so that the shell's echo of the typed line does not match.
        self.write(format!("{command}; echo \"S\"TEP-{n}-$?.\n").as_bytes());
        let deadline = start + TIMEOUT;
        let status = loop {
            if let Some(status) = step_status(&String::from_utf8_lossy(&self.seen), n) {
                break status;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(bytes) => self.seen.extend_from_slice(&bytes),
                Err(_) => self.fail(&format!("step {n}: no exit status: {command}")),
            }
        };
        let took = start.elapsed();
        if status != 0 {
            self.fail(&format!("step {n} exited {status}: {command}"));
        }
        let seen = String::from_utf8_lossy(&self.seen).into_owned();
        (seen, took)
    }

    /// `poweroff -f` and the exit.
    fn power_off(mut self) -> ExitStatus {
        self.write(b"poweroff -f\n");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.fail("did not exit after poweroff -f");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The exit status in `STEP-n-STATUS.`, once the whole line is there.
fn step_status(seen: &str, n: u32) -> Option<u32> {
    let tag = format!("STEP-{n}-");
    let rest = &seen[seen.find(&tag)? + tag.len()..];
    let (status, _) = rest.split_once('.')?;
    status.parse().ok()
}

/// One image format: its name, its file, QEMU's `format=`.
struct Image {
    kind: &'static str,
    path: PathBuf,
    qemu_format: &'static str,
}

#[derive(Clone, Copy)]
enum Engine {
    Bulkhead,
    Qemu,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Bulkhead => "bulkhead",
            Engine::Qemu => "qemu-tcg",
        }
    }

    fn command(
        self,
        kit: &(PathBuf, PathBuf),
        worker: &Path,
        disk: &Path,
        format: &str,
    ) -> Command {
        let (kernel, initrd) = kit;
        match self {
            Engine::Bulkhead => {
                let mut c = Command::new(BIN);
                c.arg("run")
                    .arg("--kernel")
                    .arg(kernel)
                    .arg("--initrd")
                    .arg(initrd)
                    .args(["--append", "console=ttyS0", "--memory", RAM_MIB])
                    .arg("--disk")
                    .arg(disk)
                    .env("BULKHEAD_WORKER", worker);
                c
            }
            Engine::Qemu => {
                let mut c = Command::new("qemu-system-i386");
                c.args(["-accel", "tcg", "-m", RAM_MIB])
                    .arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .args(["-append", "console=ttyS0", "-nographic", "-no-reboot"])
                    .arg("-drive")
                    .arg(format!(
                        "file={},format={format},if=ide",
                        disk.to_str().unwrap()
                    ));
                c
            }
        }
    }
}

/// Guest seconds between the two `/proc/uptime` readings on the `UT` line
/// (`UT up idle / up idle`), and the full records `dd` copied.
fn parse_dd(seen: &str) -> Option<(f64, u64)> {
    let ut = seen
        .lines()
        .find_map(|l| l.trim().strip_prefix("UT "))?
        .split_whitespace()
        .collect::<Vec<_>>();
    let (a, b): (f64, f64) = (ut.first()?.parse().ok()?, ut.get(3)?.parse().ok()?);
    let records = seen.lines().find_map(|l| {
        let (full, rest) = l.trim().split_once('+')?;
        rest.ends_with("records out").then(|| full.parse().ok())?
    })?;
    Some((b - a, records))
}

/// One `dd` in the guest, timed by /proc/uptime: (MiB/s, guest s, host s).
fn dd(guest: &mut Guest, n: u32, dd_args: &str, mib: u64) -> (f64, f64, f64) {
    let command = format!(
        "a=$(cat /proc/uptime) && dd {dd_args} 2>&1 && b=$(cat /proc/uptime) && echo \"U\"\"T $a / $b\""
    );
    let (seen, host) = guest.step(n, &command);
    let Some((guest_s, records)) = parse_dd(&seen) else {
        guest.fail(&format!("step {n}: no uptime or record count in {seen:?}"));
    };
    if records != mib {
        guest.fail(&format!("step {n}: dd copied {records} MiB, not {mib}"));
    }
    // /proc/uptime has 10 ms resolution.
    let guest_s = guest_s.max(0.01);
    (round1(mib as f64 / guest_s), round2(guest_s), secs(host))
}

fn bench_guest(
    engine: Engine,
    kit: &(PathBuf, PathBuf),
    worker: &Path,
    image: &Image,
    dir: &Path,
    repeat: usize,
) -> Value {
    // A fresh copy of the pristine image: the write test overwrites it.
    let disk = dir.join(format!("{}-{}.img", engine.name(), image.kind));
    std::fs::copy(&image.path, &disk).unwrap();
    let what = format!("{} on the {} image", engine.name(), image.kind);
    let cmd = engine.command(kit, worker, &disk, image.qemu_format);
    let boot = Instant::now();
    let mut guest = Guest::start(cmd, &what);
    guest.expect(MARKER);
    let boot_s = secs(boot.elapsed());
    guest.settle();
    let (info, _) = guest.step(
        1,
        "cat /sys/class/ata_device/dev1.0/xfer_mode /sys/block/sda/size",
    );
    let xfer_mode = info
        .lines()
        .find(|l| l.trim().starts_with("XFER_"))
        .map(|l| l.trim().to_string());
    let sectors: Option<u64> = info.lines().find_map(|l| l.trim().parse().ok());
    let mut step = 2;
    let mut reads = Vec::new();
    for _ in 0..repeat {
        guest.step(step, "sync; echo 3 > /proc/sys/vm/drop_caches");
        step += 1;
        reads.push(dd(
            &mut guest,
            step,
            &format!("if=/dev/sda of=/dev/null bs=1M count={READ_MIB}"),
            READ_MIB,
        ));
        step += 1;
    }
    let mut writes = Vec::new();
    for _ in 0..repeat {
        writes.push(dd(
            &mut guest,
            step,
            &format!("if=/dev/zero of=/dev/sda bs=1M count={WRITE_MIB} conv=fsync"),
            WRITE_MIB,
        ));
        step += 1;
    }
    let status = guest.power_off();
    let _ = std::fs::remove_file(&disk);
    eprintln!(
        "disk: {what}: read {:?} MiB/s, write {:?} MiB/s",
        reads.iter().map(|r| r.0).collect::<Vec<_>>(),
        writes.iter().map(|w| w.0).collect::<Vec<_>>()
    );
    let summary = |runs: &[(f64, f64, f64)]| {
        json!({
            "mib_s": median(&runs.iter().map(|r| r.0).collect::<Vec<_>>()),
            "all_mib_s": runs.iter().map(|r| r.0).collect::<Vec<_>>(),
            "guest_s": runs.iter().map(|r| r.1).collect::<Vec<_>>(),
            "host_step_s": runs.iter().map(|r| r.2).collect::<Vec<_>>(),
        })
    };
    json!({
        "boot_to_marker_s": boot_s,
        "xfer_mode": xfer_mode,
        "disk_mib": sectors.map(|s| round1(s as f64 * 512.0 / MIB as f64)),
        "read": summary(&reads),
        "write": summary(&writes),
        "exit_code": status.code(),
    })
}

fn ratio(ours: &Value, theirs: &Value) -> Value {
    match (ours["mib_s"].as_f64(), theirs["mib_s"].as_f64()) {
        (Some(o), Some(t)) if t > 0.0 => json!(round2(o / t)),
        _ => Value::Null,
    }
}

fn main() {
    let a = args();
    if !is_root() {
        eprintln!("disk: not root: `bulkhead run` needs the full sandbox; nothing measured");
        return;
    }
    let Some(kit) = guest_kit() else {
        eprintln!("disk: the guest kit is missing: run scripts/guest-kit; nothing measured");
        return;
    };
    let worker = worker();
    let load_start = load_average();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("pristine.raw");
    random_image(&raw);
    let convert = bench_convert(d, &raw);
    let (raw_s, d_s) = (raw.to_str().unwrap(), d.to_str().unwrap());
    for (name, kind) in [
        ("pristine-dynamic.vhd", "dynamic"),
        ("pristine-fixed.vhd", "fixed"),
    ] {
        tool(
            BIN,
            &[
                "disk",
                "convert",
                raw_s,
                &format!("{d_s}/{name}"),
                "--type",
                kind,
            ],
        );
    }
    let images = [
        Image {
            kind: "raw",
            path: raw.clone(),
            qemu_format: "raw",
        },
        Image {
            kind: "dynamic VHD",
            path: d.join("pristine-dynamic.vhd"),
            qemu_format: "vpc",
        },
        Image {
            kind: "fixed VHD",
            path: d.join("pristine-fixed.vhd"),
            qemu_format: "vpc",
        },
    ];
    let mut engines = vec![Engine::Bulkhead];
    if a.qemu {
        engines.push(Engine::Qemu);
    }
    let mut rows = Vec::new();
    for image in &images {
        let mut row = json!({ "image": image.kind });
        for &engine in &engines {
            row[engine.name()] = bench_guest(engine, &kit, &worker, image, d, a.repeat);
        }
        if a.qemu {
            let (o, q) = (&row["bulkhead"], &row["qemu-tcg"]);
            let (read, write) = (
                ratio(&o["read"], &q["read"]),
                ratio(&o["write"], &q["write"]),
            );
            row["read_ratio"] = read;
            row["write_ratio"] = write;
        }
        rows.push(row);
    }
    let all = json!({
        "image_mib": IMAGE_MIB,
        "read_mib": READ_MIB,
        "write_mib": WRITE_MIB,
        "repeat": a.repeat,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "images": rows,
        "convert_raw_to_dynamic_vhd": convert,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap());
    } else {
        print_tables(&all);
    }
}

fn print_tables(all: &Value) {
    println!(
        "## Guest disk throughput (Debian guest kit, 256 MiB, busybox dd on sda; MiB/s, median of {})\n",
        all["repeat"]
    );
    println!(
        "load average {} at the start, {} at the end ({} CPUs)\n",
        all["load_average_start"].as_str().unwrap_or("?"),
        all["load_average_end"].as_str().unwrap_or("?"),
        all["cpus"]
    );
    println!(
        "| image | read {} MiB: Bulkhead | QEMU TCG | ratio | write {} MiB (fsync): Bulkhead | QEMU TCG | ratio |",
        all["read_mib"], all["write_mib"]
    );
    println!("|---|---|---|---|---|---|---|");
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x}"));
    let r = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}x"));
    for row in all["images"].as_array().unwrap() {
        let (o, q) = (&row["bulkhead"], &row["qemu-tcg"]);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row["image"].as_str().unwrap(),
            f(&o["read"]["mib_s"]),
            f(&q["read"]["mib_s"]),
            r(&row["read_ratio"]),
            f(&o["write"]["mib_s"]),
            f(&q["write"]["mib_s"]),
            r(&row["write_ratio"]),
        );
    }
    println!("\n(ratio: Bulkhead's MiB/s / QEMU's; above 1: Bulkhead is faster)\n");
    for row in all["images"].as_array().unwrap() {
        for engine in ["bulkhead", "qemu-tcg"] {
            let e = &row[engine];
            if e.is_null() {
                continue;
            }
            println!(
                "{} / {engine}: boot {} s, {}, sda {} MiB; read {} MiB/s (host s {}), write {} MiB/s (host s {})",
                row["image"].as_str().unwrap(),
                e["boot_to_marker_s"],
                e["xfer_mode"].as_str().unwrap_or("?"),
                e["disk_mib"],
                e["read"]["all_mib_s"],
                e["read"]["host_step_s"],
                e["write"]["all_mib_s"],
                e["write"]["host_step_s"],
            );
        }
    }
    let c = &all["convert_raw_to_dynamic_vhd"];
    println!(
        "\n## Host: {} MiB raw → dynamic VHD (median of 3)\n",
        c["mib"]
    );
    println!("| tool | seconds | MiB/s |");
    println!("|---|---|---|");
    println!(
        "| `bulkhead disk convert --type dynamic` | {} | {} |",
        c["bulkhead_s"], c["bulkhead_mib_s"]
    );
    println!(
        "| `qemu-img convert -O vpc -o subformat=dynamic` | {} | {} |",
        c["qemu_img_s"], c["qemu_img_mib_s"]
    );
}
