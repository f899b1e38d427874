//! End to end with a real guest: a real `bulkhead serve`, real sandboxed
//! workers and the Debian guest kit from `scripts/guest-kit` (Debian 12's
//! i386 kernel and a busybox initramfs), driven through the CLI and the
//! console API.
//!
//! One test, in order (four concurrent boots on two cores take a few
//! minutes, so every check shares them): four VMs boot, list as running
//! and show their own consoles in screenshots; one worker is killed with
//! SIGKILL while the other three keep printing; the killed VM restarts,
//! boots again and `vm info` tells why it died and where its forensics are.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
/// A Debian boot is ~40 s of one core; four share two cores (265 s on a
/// heavily loaded 2-core machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const TIMEOUT: Duration = Duration::from_secs(60);
const MARKER: &str = "BULKHEAD-GUEST-READY";
const VMS: usize = 4;
const VICTIM: usize = 1;

/// The worker binary with the test profile's optimisation (a dev build
/// would take many minutes per boot), in a target directory of its own:
/// target/debug/bulkhead-worker is vm-worker's test build (with the
/// test-only chaos feature) and the e2e tests' dev build is in
/// target/supervisor-tests; no build may replace another's binary mid-run.
fn worker() -> PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER
        .get_or_init(|| common::build_worker("supervisor-debian", &["--profile", "test"]))
        .clone()
}

/// A daemon in a temp dir; SIGTERM (then SIGKILL) on drop, which ends its
/// workers too (they carry a parent-death signal).
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn new(test: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        // A short stop timeout keeps the drop quick.
        std::fs::write(state.join("policy.toml"), "stop_timeout_ms = 3000\n").unwrap();
        let socket = dir.path().join("bulkhead.sock");
        let uid_base = 350_000 + (std::process::id() % 200) * 100;
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(["--uid-base", &uid_base.to_string()])
            .env("BULKHEAD_WORKER", worker())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !common::is_root() {
            eprintln!("{test}: not root: the daemon runs with --allow-weaker-sandbox");
            cmd.arg("--allow-weaker-sandbox");
        }
        let d = Daemon {
            child: cmd.spawn().unwrap(),
            dir,
        };
        let deadline = Instant::now() + TIMEOUT;
        while UnixStream::connect(d.socket()).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("bulkhead.sock")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
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

    fn screenshot(&self, name: &str) -> Vec<u8> {
        let file = self.dir.path().join(format!("{name}.png"));
        self.ok(&["vm", "screenshot", name, "-o", file.to_str().unwrap()]);
        std::fs::read(&file).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serial output as it arrived: (when, bytes).
type Received = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// An attached `vm.console` connection (it survives restarts): a thread
/// timestamps every chunk of COM1 output; `type_line` writes to COM1.
struct Console {
    name: String,
    stream: UnixStream,
    received: Received,
    reader: Option<JoinHandle<()>>,
}

impl Console {
    fn attach(d: &Daemon, name: &str) -> Console {
        let mut stream = UnixStream::connect(d.socket()).unwrap();
        let request = format!("{{\"v\":1,\"op\":\"vm.console\",\"name\":\"{name}\"}}\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8];
        while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            reply.push(byte[0]);
        }
        assert_eq!(
            reply,
            b"{\"ok\":true}",
            "{}",
            String::from_utf8_lossy(&reply)
        );
        let received: Received = Arc::default();
        let sink = received.clone();
        let mut r = stream.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                let now = Instant::now();
                sink.lock().unwrap().push((now, buf[..n].to_vec()));
            }
        });
        Console {
            name: name.to_string(),
            stream,
            received,
            reader: Some(reader),
        }
    }

    fn type_line(&self, line: &str) {
        (&self.stream)
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// Everything received since `since`.
    fn text_since(&self, since: Instant) -> String {
        let chunks = self.received.lock().unwrap();
        let bytes: Vec<u8> = chunks
            .iter()
            .filter(|(t, _)| *t >= since)
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn wait_for(&self, needle: &str, since: Instant, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text_since(since);
            if text.contains(needle) {
                return;
            }
            if Instant::now() > deadline {
                let tail = &text[text.floor_char_boundary(text.len().saturating_sub(2000))..];
                panic!(
                    "{}: no {needle:?} on COM1 within {timeout:?}; it ends:\n{tail}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// When each `tick` line arrived, within [from, to].
    fn ticks(&self, from: Instant, to: Instant) -> Vec<Instant> {
        let chunks = self.received.lock().unwrap();
        let mut line = Vec::new();
        let mut times = Vec::new();
        for (t, bytes) in chunks.iter() {
            for &b in bytes {
                if b == b'\n' {
                    if line.strip_suffix(b"\r").unwrap_or(&line) == b"tick"
                        && (from..=to).contains(t)
                    {
                        times.push(*t);
                    }
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        times
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Decodes a PNG (asserting it is one) and counts pixels that are not black.
fn lit_pixels(png: &[u8]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixel data");
    let bpp = info.color_type.samples();
    assert!(bpp >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks_exact(bpp)
        .filter(|p| p[..3] != [0, 0, 0])
        .count()
}

/// The longest wait between consecutive instants, counting from `from`
/// to the first and from the last to `to`.
fn max_gap(from: Instant, times: &[Instant], to: Instant) -> Duration {
    let mut all = vec![from];
    all.extend_from_slice(times);
    all.push(to);
    all.windows(2).map(|w| w[1] - w[0]).max().unwrap()
}

#[test]
fn four_debian_guests_boot_show_their_consoles_and_survive_a_killed_neighbour() {
    let (kernel, initrd) = common::guest_kit();
    let d = Daemon::new("debian");
    let names: Vec<String> = (0..VMS).map(|i| format!("deb-{i}")).collect();
    let consoles: Vec<Console> = names
        .iter()
        .map(|name| {
            d.ok(&[
                "vm",
                "create",
                name,
                "--memory",
                "128",
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--append",
                "console=ttyS0 console=tty0",
                "--restart",
                "on-failure",
            ]);
            Console::attach(&d, name)
        })
        .collect();

    // Four concurrent boots.
    let boot = Instant::now();
    for name in &names {
        d.ok(&["vm", "start", name]);
    }
    let list = d.ok(&["vm", "list", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), VMS, "{list:?}");
    for vm in list {
        assert_eq!(vm["state"], "running", "{vm}");
        assert!(vm["pid"].as_u64().unwrap() > 0, "{vm}");
    }
    for c in &consoles {
        c.wait_for(MARKER, boot, BOOT_TIMEOUT);
        // The shell's prompt follows the marker.
        c.wait_for("# ", boot, TIMEOUT);
    }
    println!("four concurrent boots to the marker: {:?}", boot.elapsed());
    let list = d.ok(&["vm", "list", "--json"]);
    for vm in list.as_array().unwrap() {
        assert_eq!(vm["state"], "running", "{vm}");
    }

    // Each guest writes its own name on its framebuffer console; the
    // shell computes the reply so the typed echo cannot match it.
    for (i, c) in consoles.iter().enumerate() {
        c.type_line(&format!(
            "echo THIS-IS-VM-{i} > /dev/tty0; echo written-$((100 + {i}))"
        ));
    }
    for (i, c) in consoles.iter().enumerate() {
        c.wait_for(&format!("written-{}", 100 + i), boot, TIMEOUT);
    }
    // The worker's presenter publishes the screen every 33 ms: retry until
    // every screen is lit and all four differ.
    let deadline = Instant::now() + TIMEOUT;
    let shots = loop {
        let shots: Vec<Vec<u8>> = names.iter().map(|n| d.screenshot(n)).collect();
        let lit: Vec<usize> = shots.iter().map(|s| lit_pixels(s)).collect();
        let distinct = (0..VMS).all(|i| (0..i).all(|j| shots[i] != shots[j]));
        if lit.iter().all(|&n| n > 2000) && distinct {
            println!("screenshots: lit pixels {lit:?}");
            break shots;
        }
        assert!(
            Instant::now() < deadline,
            "screenshots: lit pixels {lit:?}, all distinct: {distinct}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    drop(shots);

    // Steady output from every guest.
    for c in &consoles {
        c.type_line("while true; do echo tick; sleep 0.2; done");
    }
    let typed = Instant::now();
    let deadline = typed + TIMEOUT;
    while consoles
        .iter()
        .any(|c| c.ticks(typed, Instant::now()).len() < 5)
    {
        assert!(Instant::now() < deadline, "the guests do not tick");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGKILL one worker; the other three keep ticking.
    let victim = &names[VICTIM];
    let before = d.info(victim);
    let pid = before["pid"].as_u64().unwrap() as i32;
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    // SAFETY: kill with a worker's pid (the daemon's child, not reaped
    // while it runs).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let info = d.wait_info(victim, "a restart", |i| {
        i["restarts"].as_u64() >= Some(1) && i["state"] == "running"
    });
    let restarted = killed.elapsed();
    assert_ne!(info["pid"].as_u64().unwrap() as i32, pid, "{info}");
    // Watch the others through detection, forensics, the restart and the
    // first seconds of the new boot (which takes a core).
    std::thread::sleep(Duration::from_secs(10));
    let (from, to) = (killed - Duration::from_secs(2), Instant::now());
    for (i, c) in consoles.iter().enumerate() {
        if i == VICTIM {
            continue;
        }
        let ticks = c.ticks(from, to);
        let gap = max_gap(from, &ticks, to);
        println!(
            "{}: {} ticks in {:?} around the kill, longest gap {gap:?}",
            c.name,
            ticks.len(),
            to - from
        );
        assert!(
            gap < Duration::from_secs(1),
            "{}: serial output stopped for {gap:?} while a neighbour was killed",
            c.name
        );
        let info = d.info(&c.name);
        assert_eq!(info["restarts"], 0, "{info}");
        assert_eq!(info["state"], "running", "{info}");
    }
    println!("kill to running again: {restarted:?}");

    // The killed VM boots again.
    consoles[VICTIM].wait_for(MARKER, killed, BOOT_TIMEOUT);
    println!("kill to the marker again: {:?}", killed.elapsed());

    // Why it died, and the forensics.
    let info = d.info(victim);
    let crash = &info["last_crash"];
    assert_eq!(crash["exit"]["kind"], "signal", "{info}");
    assert_eq!(crash["exit"]["failure"], true, "{info}");
    let reason = crash["exit"]["reason"].as_str().unwrap();
    assert!(reason.contains("signal 9"), "{info}");
    let dir = PathBuf::from(crash["dir"].as_str().unwrap());
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("crash.json")).unwrap()).unwrap();
    assert_eq!(recorded["exit"]["kind"], "signal", "{recorded}");
    let serial = std::fs::read_to_string(crash["serial_log"].as_str().unwrap()).unwrap();
    assert!(serial.contains("tick"), "{serial:?}");
    let screen = std::fs::read(crash["screenshot"].as_str().unwrap()).unwrap();
    let lit = lit_pixels(&screen);
    assert!(lit > 2000, "the forensic screenshot has {lit} lit pixels");
    let human = String::from_utf8(d.cli(&["vm", "info", victim]).stdout).unwrap();
    assert!(human.contains("signal 9"), "{human}");
    assert!(human.contains(dir.to_str().unwrap()), "{human}");
}
