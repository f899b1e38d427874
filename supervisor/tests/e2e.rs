//! End to end: a real `bulkhead serve` with real workers running tiny
//! Multiboot guests assembled here, driven through the CLI with `--json`.
//!
//! The worker sandbox needs root (uid switching, cgroups); these tests run
//! the daemon as is, so as root every worker is fully sandboxed. Not as
//! root, the daemon gets `--allow-weaker-sandbox` and each test says so.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const TIMEOUT: Duration = Duration::from_secs(60);
const FB: u64 = 0xFD00_0000;
const FB_WIDTH: u32 = 1024;
const GREEN: u32 = 0x0000_FF00;
const GX: u32 = 10;
const GY: u32 = 5;

/// How the guest behaves after printing "BOOT" and drawing.
#[derive(Clone, Copy)]
enum Guest {
    /// Prints "TICK\n" forever, with a delay loop between lines; the power
    /// button is polled and powers off.
    Ticks,
    /// Executes UD2 with no IDT: a triple fault.
    TripleFault,
}

/// A Multiboot kernel (a.out kludge at 1 MiB).
fn kernel(guest: Guest) -> Vec<u8> {
    const ORG: u32 = 0x10_0000;
    let build = || -> Result<Vec<u8>, IcedError> {
        let mut a = common::multiboot_assembler()?;
        let print = common::print_com1;
        print(&mut a, b"BOOT\n")?;
        a.mov(dword_ptr(FB + u64::from((GY * FB_WIDTH + GX) * 4)), GREEN)?;
        match guest {
            Guest::Ticks => {
                let mut top = a.create_label();
                let mut delay = a.create_label();
                let mut off = a.create_label();
                a.set_label(&mut top)?;
                a.nop()?;
                print(&mut a, b"TICK\n")?;
                a.mov(ecx, 200_000u32)?;
                a.set_label(&mut delay)?;
                a.mov(dx, 0x600)?;
                a.in_(ax, dx)?;
                a.test(ax, 0x100)?;
                a.jnz(off)?;
                a.dec(ecx)?;
                a.jnz(delay)?;
                a.jmp(top)?;
                a.set_label(&mut off)?;
                a.mov(dx, 0x604)?;
                a.mov(ax, 0x2000)?;
                a.out(dx, ax)?;
                let mut hang = a.create_label();
                a.set_label(&mut hang)?;
                a.hlt()?;
                a.jmp(hang)?;
            }
            Guest::TripleFault => {
                a.ud2()?;
            }
        }
        a.assemble(u64::from(ORG))
    };
    build().expect("assemble the test kernel")
}

/// The worker binary, built once for this test run.
fn worker() -> PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER
        .get_or_init(|| common::build_worker("supervisor-tests", &[]))
        .clone()
}

/// A daemon in a temp dir; SIGTERM (then SIGKILL) on drop.
struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    uid_base: u32,
    worker: PathBuf,
}

impl Daemon {
    fn new(test: &str) -> Daemon {
        Daemon::with_worker(test, worker())
    }

    fn with_worker(test: &str, worker: PathBuf) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        static N: AtomicU32 = AtomicU32::new(0);
        let uid_base =
            300_000 + (std::process::id() % 200) * 1000 + N.fetch_add(1, Ordering::Relaxed) * 40;
        let mut d = Daemon {
            child: None,
            dir,
            uid_base,
            worker,
        };
        if !common::is_root() {
            eprintln!("{test}: not root: the daemon runs with --allow-weaker-sandbox");
        }
        d.start();
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("bulkhead.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn write_policy(&self, text: &str) {
        std::fs::create_dir_all(self.state()).unwrap();
        std::fs::write(self.state().join("policy.toml"), text).unwrap();
    }

    fn start(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state())
            .args(["--uid-base", &self.uid_base.to_string()])
            .env("BULKHEAD_WORKER", &self.worker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !common::is_root() {
            cmd.arg("--allow-weaker-sandbox");
        }
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for the daemon to exit.
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill with the pid of a child we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not exit on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cli_as(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--socket").arg(self.socket()).args(args);
        if let Some(uid) = uid {
            // SAFETY: setgid/setuid only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.output().unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(None, args)
    }

    /// Runs the CLI, asserts success, parses stdout as JSON (or Null).
    fn ok(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "bulkhead {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn info(&self, name: &str) -> Value {
        self.ok(&["vm", "info", name, "--json"])
    }

    fn kernel(&self, guest: Guest) -> String {
        let name = match guest {
            Guest::Ticks => "ticks.bin",
            Guest::TripleFault => "triple.bin",
        };
        let path = self.dir.path().join(name);
        if !path.exists() {
            std::fs::write(&path, kernel(guest)).unwrap();
        }
        path.display().to_string()
    }

    fn create(&self, name: &str, guest: Guest, extra: &[&str]) -> Value {
        let kernel = self.kernel(guest);
        let mut args = vec![
            "vm", "create", name, "--memory", "16", "--kernel", &kernel, "--json",
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state().join(format!("logs/{name}.serial.log")))
            .unwrap_or_default()
    }

    /// Waits until `cond` holds for `vm info`.
    fn wait_info(&self, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let info = self.info(name);
            if cond(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: waiting for {what}: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_log(&self, name: &str, count: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.log(name).matches("TICK").count() < count {
            assert!(
                Instant::now() < deadline,
                "{name}: fewer than {count} ticks: {:?}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SAFETY: kill with the pid of a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn create_list_info_start_stop_rm_round_trip() {
    let d = Daemon::new("round_trip");
    let vm = d.create("rt-a", Guest::Ticks, &["--append", "console=ttyS0"]);
    assert_eq!(vm["name"], "rt-a");
    assert_eq!(vm["state"], "stopped");
    assert_eq!(vm["append"], "console=ttyS0");
    let list = d.ok(&["vm", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // A second create with the same name is a conflict (exit 5).
    let kernel = d.kernel(Guest::Ticks);
    let out = d.cli(&[
        "vm", "create", "rt-a", "--memory", "16", "--kernel", &kernel,
    ]);
    assert_eq!(out.status.code(), Some(5));
    // Bad names are usage errors from the daemon (exit 1) with a hint.
    let out = d.cli(&[
        "vm", "create", "../x", "--memory", "16", "--kernel", &kernel,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid VM name"));

    d.ok(&["vm", "start", "rt-a"]);
    let info = d.wait_info("rt-a", "running", |i| i["state"] == "running");
    assert!(info["pid"].as_u64().unwrap() > 0);
    d.wait_log("rt-a", 2);
    // Starting twice is a conflict.
    assert_eq!(d.cli(&["vm", "start", "rt-a"]).status.code(), Some(5));
    // Removing a running VM is a conflict.
    assert_eq!(d.cli(&["vm", "rm", "rt-a"]).status.code(), Some(5));

    d.ok(&["vm", "pause", "rt-a"]);
    d.wait_info("rt-a", "paused", |i| i["state"] == "paused");
    d.ok(&["vm", "resume", "rt-a"]);
    d.wait_info("rt-a", "running", |i| i["state"] == "running");

    // The guest polls the power button and powers off: a clean stop.
    d.ok(&["vm", "stop", "rt-a"]);
    let info = d.info("rt-a");
    assert_eq!(info["state"], "stopped", "{info}");
    assert_eq!(info["last_exit"]["failure"], false, "{info}");
    assert!(info["pid"].is_null());

    d.ok(&["vm", "rm", "rt-a"]);
    assert_eq!(d.ok(&["vm", "list", "--json"]), serde_json::json!([]));
    let out = d.cli(&["vm", "info", "rt-a"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!d.state().join("vms/rt-a.toml").exists());
}

#[test]
fn drives_are_checked_at_create_reach_the_worker_and_undo_disks_end_with_the_vm() {
    let d = Daemon::new("drives");
    let dir = d.dir.path();
    let path = |n: &str| dir.join(n).display().to_string();
    d.ok(&["disk", "create", &path("a.vhd"), "--size", "8M"]);
    std::fs::write(dir.join("b.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(dir.join("cd.iso"), vec![0u8; 2048 * 16]).unwrap();
    std::fs::write(dir.join("odd.iso"), vec![0u8; 2560]).unwrap();
    let kernel = d.kernel(Guest::Ticks);
    let create = |name: &str, drives: &[&str]| {
        let mut args = vec![
            "vm", "create", name, "--memory", "16", "--kernel", &kernel, "--json",
        ];
        args.extend_from_slice(drives);
        d.cli(&args)
    };
    let refused = |drives: &[&str], why: &str| {
        let out = create("bad", drives);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{drives:?}: {stderr}"
        );
    };
    refused(&["--disk", &path("missing.vhd")], "missing.vhd");
    refused(
        &["--disk", &format!("{},undo=discard", path("b.img"))],
        "needs a VHD",
    );
    refused(&["--cdrom", &path("odd.iso")], "2048-byte sectors");
    let a_master = format!("{},slot=primary-master", path("a.vhd"));
    let b_master = format!("{},slot=primary-master", path("b.img"));
    refused(&["--disk", &a_master, "--disk", &b_master], "two drives");
    refused(
        &["--disk", &format!("{},cache=none", path("a.vhd"))],
        "options are",
    );

    let a_undo = format!("{},undo=discard", path("a.vhd"));
    let b_ro = format!("{},ro", path("b.img"));
    let out = create(
        "dvm",
        &[
            "--disk",
            &a_undo,
            "--disk",
            &b_ro,
            "--cdrom",
            &path("cd.iso"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drives = d.info("dvm")["drives"].clone();
    let slots: Vec<&str> = drives
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["slot"].as_str().unwrap())
        .collect();
    assert_eq!(
        slots,
        ["primary-master", "primary-slave", "secondary-master"]
    );
    let toml = std::fs::read_to_string(d.state().join("vms/dvm.toml")).unwrap();
    assert_eq!(toml.matches("[[drive]]").count(), 3, "{toml}");
    let a_before = std::fs::read(dir.join("a.vhd")).unwrap();

    // The worker gets the three images (four descriptors: the undo disk and
    // its parent) and opens them inside its sandbox.
    d.ok(&["vm", "start", "dvm"]);
    d.wait_info("dvm", "running", |i| i["state"] == "running");
    d.wait_log("dvm", 2);
    let undo = d.state().join("undo/dvm/primary-master.vhd");
    assert!(undo.exists(), "no undo disk at {}", undo.display());
    d.ok(&["vm", "stop", "dvm"]);
    let info = d.info("dvm");
    assert_eq!(info["state"], "stopped", "{info}");
    assert!(!undo.exists(), "the undo disk was not discarded");
    assert!(std::fs::read(dir.join("a.vhd")).unwrap() == a_before);
}

#[test]
fn four_vms_run_concurrently_and_a_killed_worker_restarts_alone() {
    let d = Daemon::new("four_vms");
    let names = ["four-0", "four-1", "four-2", "four-3"];
    for name in names {
        d.create(name, Guest::Ticks, &["--restart", "on-failure"]);
        d.ok(&["vm", "start", name]);
    }
    for name in names {
        d.wait_log(name, 2);
    }
    let victim = d.info("four-1");
    let pid = victim["pid"].as_u64().unwrap() as i32;
    let before: Vec<usize> = names
        .iter()
        .map(|n| d.log(n).matches("TICK").count())
        .collect();
    // SAFETY: kill with a worker's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let info = d.wait_info("four-1", "a restart", |i| {
        i["restarts"].as_u64() >= Some(1) && i["state"] == "running"
    });
    assert_ne!(info["pid"].as_u64().unwrap() as i32, pid);
    let crash = &info["last_crash"];
    assert_eq!(crash["exit"]["kind"], "signal", "{info}");
    assert!(
        crash["exit"]["reason"]
            .as_str()
            .unwrap()
            .contains("signal 9"),
        "{info}"
    );
    assert!(Path::new(crash["serial_log"].as_str().unwrap()).exists());
    let human = String::from_utf8(d.cli(&["vm", "info", "four-1"]).stdout).unwrap();
    assert!(human.contains("signal 9"), "{human}");

    // The others never stopped.
    for (i, name) in names.iter().enumerate() {
        d.wait_log(name, before[i] + 2);
        if *name != "four-1" {
            let info = d.info(name);
            assert_eq!(info["restarts"], 0, "{info}");
            assert_eq!(info["state"], "running", "{info}");
        }
    }
    // Kill is an operator's stop: no restart.
    d.ok(&["vm", "kill", "four-2"]);
    let info = d.info("four-2");
    assert_eq!(info["state"], "stopped", "{info}");
}

#[test]
fn a_crash_loop_parks_the_vm_as_failed_with_forensics() {
    let d = Daemon::new("crash_loop");
    d.write_policy("restart_backoff_ms = 50\nrestart_backoff_max_ms = 200\n");
    d.create("loop-a", Guest::TripleFault, &["--restart", "always"]);
    // The first start may already see the fault.
    let _ = d.cli(&["vm", "start", "loop-a"]);
    let info = d.wait_info("loop-a", "failed", |i| i["state"] == "failed");
    assert_eq!(info["last_exit"]["kind"], "triple_fault", "{info}");
    assert!(info["restarts"].as_u64().unwrap() >= 4, "{info}");
    let crash = &info["last_crash"];
    let dir = PathBuf::from(crash["dir"].as_str().unwrap());
    let serial = std::fs::read_to_string(dir.join("serial.log")).unwrap();
    assert!(serial.contains("BOOT"), "{serial:?}");
    let exit: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("crash.json")).unwrap()).unwrap();
    assert_eq!(exit["exit"]["kind"], "triple_fault");
    let png = std::fs::read(crash["screenshot"].as_str().unwrap()).unwrap();
    assert_eq!(green_pixel(&png), GREEN);
    // `vm start` clears the parked state.
    d.write_policy("");
    let _ = d.cli(&["vm", "start", "loop-a"]);
    d.ok(&["vm", "stop", "loop-a", "--force"]);
}

/// The pixel the guest draws, from a PNG.
fn green_pixel(png: &[u8]) -> u32 {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.width, FB_WIDTH);
    let bpp = info.color_type.samples();
    let at = ((GY * info.width + GX) as usize) * bpp;
    u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]])
}

#[test]
fn screenshot_writes_a_png_of_the_guest_screen() {
    let d = Daemon::new("screenshot");
    d.create("shot-a", Guest::Ticks, &[]);
    d.ok(&["vm", "start", "shot-a"]);
    d.wait_log("shot-a", 1);
    let file = d.dir.path().join("shot.png");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        d.ok(&["vm", "screenshot", "shot-a", "-o", file.to_str().unwrap()]);
        if green_pixel(&std::fs::read(&file).unwrap()) == GREEN {
            break;
        }
        assert!(Instant::now() < deadline, "the pixel never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = d.cli(&["vm", "logs", "shot-a"]);
    assert!(String::from_utf8_lossy(&logs.stdout).starts_with("BOOT\nTICK"));
}

#[test]
fn bad_requests_get_errors_and_the_daemon_keeps_serving() {
    let d = Daemon::new("bad_requests");
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    let reply = |s: &mut std::os::unix::net::UnixStream, line: &[u8]| -> Value {
        s.write_all(line).unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8];
        while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            buf.push(byte[0]);
        }
        serde_json::from_slice(&buf).unwrap()
    };
    let r = reply(&mut s, b"{not json\n");
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["kind"], "bad_request");
    let r = reply(&mut s, b"{\"v\":1,\"op\":\"vm.list\",\"evil\":true}\n");
    assert_eq!(r["error"]["kind"], "bad_request");
    assert!(r["error"]["message"].as_str().unwrap().contains("evil"));
    let r = reply(&mut s, b"{\"v\":9,\"op\":\"vm.list\"}\n");
    assert_eq!(r["error"]["kind"], "unsupported_version");
    let r = reply(&mut s, b"{\"v\":1,\"op\":\"vm.info\",\"name\":\"nope\"}\n");
    assert_eq!(r["error"]["kind"], "not_found");
    // The same connection still works.
    let r = reply(&mut s, b"{\"v\":1,\"op\":\"vm.list\"}\n");
    assert_eq!(r["ok"], true);

    // A huge line: an error, then the connection is closed.
    let mut huge = vec![b'x'; 200 * 1024];
    huge.push(b'\n');
    let mut s2 = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    let _ = s2.write_all(&huge);
    let mut text = String::new();
    let _ = s2.read_to_string(&mut text);
    assert!(text.contains("too_large"), "{text}");

    // A client that sends half a line and stalls does not block others.
    let mut stalled = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    stalled.write_all(b"{\"v\":1,").unwrap();
    assert_eq!(d.ok(&["vm", "list", "--json"]), serde_json::json!([]));
    drop(stalled);
    assert_eq!(d.ok(&["vm", "list", "--json"]), serde_json::json!([]));
}

#[test]
fn definitions_survive_a_daemon_restart_and_autostart_vms_come_back() {
    let mut d = Daemon::new("persistence");
    d.create("keep-auto", Guest::Ticks, &["--autostart"]);
    d.create("keep-manual", Guest::Ticks, &["--restart", "always"]);
    d.ok(&["vm", "start", "keep-auto"]);
    d.wait_log("keep-auto", 1);
    assert_eq!(d.stop(), Some(0));
    assert!(!d.socket().exists());

    d.start();
    let list = d.ok(&["vm", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep-auto", "keep-manual"]);
    d.wait_info("keep-auto", "autostart", |i| i["state"] == "running");
    let info = d.info("keep-manual");
    assert_eq!(info["state"], "stopped");
    assert_eq!(info["restart"], "always");
}

#[test]
fn another_uid_cannot_see_or_control_a_vm() {
    let test = "another_uid_cannot_see_or_control_a_vm";
    if !common::is_root() {
        eprintln!("SKIPPED {test}: needs root to run the client as another uid");
        return;
    }
    let d = Daemon::new(test);
    d.create("mine", Guest::Ticks, &[]);
    let other = Some(54_321);
    let out = d.cli_as(other, &["vm", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    for cmd in [
        &["vm", "info", "mine"][..],
        &["vm", "start", "mine"],
        &["vm", "rm", "mine"],
    ] {
        assert_eq!(d.cli_as(other, cmd).status.code(), Some(3), "{cmd:?}");
    }
    // The daemon opens images for its callers: only ones they can read.
    let secret = d.dir.path().join("secret.bin");
    std::fs::write(&secret, kernel(Guest::Ticks)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = d.cli_as(
        other,
        &[
            "vm",
            "create",
            "theirs",
            "--memory",
            "16",
            "--kernel",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A readable one works, and the VM is theirs alone.
    let out = d.cli_as(
        other,
        &[
            "vm",
            "create",
            "theirs",
            "--memory",
            "16",
            "--kernel",
            &d.kernel(Guest::Ticks),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = d.ok(&["vm", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(d.info("theirs")["owner_uid"], 54_321);

    // A disk image they can read but not write: only as a read-only drive.
    let image = d.dir.path().join("shared.img");
    std::fs::write(&image, vec![0u8; 64 * 1024]).unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with_disk = |name: &str, spec: String| {
        d.cli_as(
            other,
            &[
                "vm",
                "create",
                name,
                "--memory",
                "16",
                "--kernel",
                &d.kernel(Guest::Ticks),
                "--disk",
                &spec,
            ],
        )
    };
    let out = with_disk("writer", image.display().to_string());
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write"));
    let out = with_disk("reader", format!("{},ro", image.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn console_and_follow_stream_serial_output_and_take_input() {
    let d = Daemon::new("console");
    d.create("con-a", Guest::Ticks, &[]);
    d.ok(&["vm", "start", "con-a"]);
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"{\"v\":1,\"op\":\"vm.console\",\"name\":\"con-a\"}\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.matches_ticks() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "console closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("{\"ok\":true}\n"), "{text}");
    // Input reaches the guest's COM1 (the guest ignores it).
    s.write_all(b"hello guest\n").unwrap();

    let mut f = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    f.set_read_timeout(Some(TIMEOUT)).unwrap();
    f.write_all(b"{\"v\":1,\"op\":\"vm.logs\",\"name\":\"con-a\",\"follow\":true}\n")
        .unwrap();
    let mut got = Vec::new();
    while got.windows(8).filter(|w| w == b"\"serial\"").count() < 2 {
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("{\"data\":\"BOOT\\nTICK") || text.contains("\"ok\":true"),
        "{text}"
    );
}

trait Ticks {
    fn matches_ticks(&self) -> usize;
}

impl Ticks for Vec<u8> {
    fn matches_ticks(&self) -> usize {
        self.windows(4).filter(|w| w == b"TICK").count()
    }
}

#[test]
fn workers_die_with_a_killed_daemon() {
    let mut d = Daemon::new("daemon_death");
    d.create("orphan-a", Guest::Ticks, &[]);
    d.ok(&["vm", "start", "orphan-a"]);
    let pid = d.info("orphan-a")["pid"].as_u64().unwrap() as i32;
    let mut daemon = d.child.take().unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    // SAFETY: signal 0 only probes whether the pid exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        // The worker is no child of ours: it is reaped by init.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker {pid} outlived its daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nobody removed the worker's cgroup: do it here.
    for c in ["", "memory/", "cpu/", "pids/"] {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/{c}bulkhead/orphan-a"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while dir.exists() && std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A fake worker: garbage on the control socket for VMs named `garbage*`,
/// a seccomp report and exit 67 for the others.
fn hostile_worker(dir: &Path) -> PathBuf {
    let path = dir.join("hostile-worker");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         case \"$*\" in\n\
         *garbage*) printf '\\003\\000\\000\\000\\377\\377\\377' >&3; exec sleep 30 ;;\n\
         *) echo 'bulkhead-worker: seccomp violation: syscall 41' >&2; exit 67 ;;\n\
         esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn hostile_workers_are_classified_as_violations() {
    let tools = tempfile::tempdir().unwrap();
    let d = Daemon::with_worker("hostile", hostile_worker(tools.path()));
    d.create("garbage-a", Guest::Ticks, &[]);
    let out = d.cli(&["vm", "start", "garbage-a"]);
    assert_eq!(out.status.code(), Some(1));
    let info = d.wait_info("garbage-a", "an exit", |i| !i["last_exit"].is_null());
    assert_eq!(info["last_exit"]["kind"], "protocol_violation", "{info}");
    assert_eq!(info["state"], "stopped", "{info}");

    d.create("sys-a", Guest::Ticks, &[]);
    let out = d.cli(&["vm", "start", "sys-a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("socket (41)"));
    let info = d.wait_info("sys-a", "an exit", |i| !i["last_exit"].is_null());
    assert_eq!(info["last_exit"]["kind"], "seccomp", "{info}");
}

#[test]
fn quotas_limit_non_root_callers() {
    let test = "quotas_limit_non_root_callers";
    if !common::is_root() {
        eprintln!("SKIPPED {test}: needs root to run the client as another uid");
        return;
    }
    let d = Daemon::new(test);
    d.write_policy("max_vms_per_uid = 1\nmax_memory_mib_per_uid = 20\n");
    let mut d = d;
    d.stop();
    d.start();
    let kernel = d.kernel(Guest::Ticks);
    let other = Some(54_322);
    let create = |name: &str, mib: &str| {
        d.cli_as(
            other,
            &["vm", "create", name, "--memory", mib, "--kernel", &kernel],
        )
    };
    assert_eq!(create("q-big", "32").status.code(), Some(5));
    assert!(create("q-a", "16").status.success());
    let out = create("q-b", "1");
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit"));
    // Root is not limited.
    d.create("q-root", Guest::Ticks, &[]);
}
