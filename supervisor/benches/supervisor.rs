//! What the supervisor costs and how fast it reacts, measured through a
//! real `bulkhead serve` with real sandboxed workers:
//!
//! - boot: `vm start` to the Debian guest kit's `BULKHEAD-GUEST-READY`
//!   line on COM1 (256 MiB, `console=ttyS0`, as `machine`'s boot bench),
//!   median of `--boots` (3) boots one after another;
//! - crash: SIGKILL a worker running a tiny guest (restart policy
//!   `on-failure`, backoff 0) and time, from the kill, the daemon's record
//!   of the exit, the new worker's spawn, its `running` state (Ready and
//!   Start) and its first COM1 byte; `--kills` (10) kills;
//! - idle: `--vms` (50) VMs of 16 MiB running a tiny guest that halts with
//!   interrupts enabled: RSS and PSS of every worker process and its
//!   children plus the daemon, and their CPU time over 10 s.
//!
//! `cargo bench -p supervisor --bench supervisor [-- --json] [--vms N]
//! [--boots N] [--kills N] [--skip-boot]`. The Debian part needs the guest
//! kit (`scripts/guest-kit`); without it that part is skipped with a note.
//! Not as root, the daemon runs with `--allow-weaker-sandbox`.

mod common;
use common::{guest_kit, is_root, worker};
use std::io::{BufRead, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iced_x86::code_asm::*;
use serde_json::{Value, json};
use supervisor::api::Request;
use supervisor::client::Client;

use common::BIN;
const MARKER: &[u8] = b"BULKHEAD-GUEST-READY";
const TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_SECS: u64 = 10;

struct Args {
    json: bool,
    vms: usize,
    boots: usize,
    kills: usize,
    skip_boot: bool,
}

fn args() -> Args {
    let mut a = Args {
        json: false,
        vms: 50,
        boots: 3,
        kills: 10,
        skip_boot: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |it: &mut dyn Iterator<Item = String>, flag: &str| -> usize {
        it.next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} takes a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--vms" => a.vms = number(&mut it, "--vms"),
            "--boots" => a.boots = number(&mut it, "--boots").max(1),
            "--kills" => a.kills = number(&mut it, "--kills").max(1),
            "--skip-boot" => a.skip_boot = true,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    a
}

/// A Multiboot kernel (a.out kludge at 1 MiB) that prints `text` on COM1,
/// masks both PICs and halts with interrupts enabled: an idle VM.
fn idle_kernel(text: &[u8]) -> Vec<u8> {
    const ORG: u32 = 0x10_0000;
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = (1 << 16) | 0b10;
    let build = || -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(32)?;
        a.dd(&[
            MAGIC,
            FLAGS,
            0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
            ORG,
            ORG,
            0,
            0,
            ORG + 32,
        ])?;
        for &byte in text {
            let mut wait = a.create_label();
            a.set_label(&mut wait)?;
            a.mov(dx, 0x3FD)?;
            a.in_(al, dx)?;
            a.test(al, 0x20)?;
            a.jz(wait)?;
            a.mov(dx, 0x3F8)?;
            a.mov(al, u32::from(byte))?;
            a.out(dx, al)?;
        }
        a.mov(al, 0xFF)?;
        a.out(0x21, al)?;
        a.out(0xA1, al)?;
        a.sti()?;
        let mut idle = a.create_label();
        a.set_label(&mut idle)?;
        a.hlt()?;
        a.jmp(idle)?;
        a.assemble(u64::from(ORG))
    };
    build().expect("assemble the idle kernel")
}

/// A daemon in a temp dir; SIGTERM (then SIGKILL) on drop, which ends its
/// workers too (they carry a parent-death signal).
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn new(worker: &Path, policy: &str, uid_base: u32) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(
            state.join("policy.toml"),
            format!("stop_timeout_ms = 1000\n{policy}"),
        )
        .unwrap();
        let socket = dir.path().join("bulkhead.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(["--uid-base", &uid_base.to_string()])
            .env("BULKHEAD_WORKER", worker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !is_root() {
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

    fn client(&self) -> Client {
        Client::connect(&self.socket()).unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(c: &mut Client, req: Request) -> Value {
    let what = format!("{req:?}");
    c.call(&req).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn create(c: &mut Client, name: &str, mib: u32, kernel: &str, extra: (Option<String>, &str, &str)) {
    let (initrd, append, restart) = extra;
    let req = json!({
        "op": "vm.create", "name": name, "memory_mib": mib, "kernel": kernel,
        "initrd": initrd, "append": append, "restart": restart,
    });
    let req: Request = serde_json::from_value(req).unwrap();
    call(c, req);
}

fn info(c: &mut Client, name: &str) -> Value {
    call(
        c,
        Request::Info {
            name: name.to_string(),
        },
    )["vm"]
        .clone()
}

/// Serial output as it arrived: (when, bytes).
type Received = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// COM1 output of one VM as it arrives, with arrival times (a
/// `vm.console` connection; it survives restarts).
struct Console {
    received: Received,
    stream: UnixStream,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    fn attach(d: &Daemon, name: &str) -> Console {
        let mut client = d.client();
        call(
            &mut client,
            Request::Console {
                name: name.to_string(),
            },
        );
        let (mut reader, writer) = client.into_parts();
        let received: Received = Arc::default();
        let sink = received.clone();
        let reader = std::thread::spawn(move || {
            // Bytes already buffered after the reply line come first.
            let buffered = reader.buffer().to_vec();
            if !buffered.is_empty() {
                sink.lock().unwrap().push((Instant::now(), buffered));
            }
            reader.consume(reader.buffer().len());
            let mut inner = reader.into_inner();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = inner.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push((Instant::now(), buf[..n].to_vec()));
            }
        });
        Console {
            received,
            stream: writer,
            reader: Some(reader),
        }
    }

    /// When the first byte at or after `since` arrived.
    fn first_after(&self, since: Instant) -> Option<Instant> {
        let r = self.received.lock().unwrap();
        r.iter().map(|(t, _)| *t).find(|t| *t >= since)
    }

    /// When `needle` was complete, counting bytes from `since`.
    fn found(&self, needle: &[u8], since: Instant) -> Option<Instant> {
        let r = self.received.lock().unwrap();
        let mut text = Vec::new();
        for (t, bytes) in r.iter().filter(|(t, _)| *t >= since) {
            text.extend_from_slice(bytes);
            if text.windows(needle.len()).any(|w| w == needle) {
                return Some(*t);
            }
        }
        None
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn bench_boot(worker: &Path, boots: usize) -> Value {
    let Some((kernel, initrd)) = guest_kit() else {
        return json!({ "skipped": "the guest kit is missing: run scripts/guest-kit" });
    };
    let d = Daemon::new(worker, "", 410_000 + (std::process::id() % 100) * 100);
    let mut c = d.client();
    create(
        &mut c,
        "bench-deb",
        256,
        kernel.to_str().unwrap(),
        (Some(initrd.display().to_string()), "console=ttyS0", "no"),
    );
    let mut to_marker = Vec::new();
    let mut to_running = Vec::new();
    for i in 0..boots {
        let console = Console::attach(&d, "bench-deb");
        let start = Instant::now();
        call(
            &mut d.client(),
            Request::Start {
                name: "bench-deb".into(),
            },
        );
        to_running.push(ms(start.elapsed()));
        let deadline = start + Duration::from_secs(600);
        let at = loop {
            if let Some(at) = console.found(MARKER, start) {
                break at;
            }
            assert!(Instant::now() < deadline, "boot {i}: no marker in 600 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        to_marker.push(ms(at - start));
        eprintln!(
            "boot {i}: vm start to marker {:.1} s",
            ms(at - start) / 1000.0
        );
        // A fresh connection: the daemon drops one idle for 30 s.
        call(
            &mut d.client(),
            Request::Stop {
                name: "bench-deb".into(),
                force: true,
                timeout_ms: None,
            },
        );
    }
    json!({
        "boots": boots,
        "start_reply_ms_median": median(&mut to_running.clone()),
        "to_marker_ms": to_marker.clone(),
        "to_marker_ms_median": median(&mut to_marker),
    })
}

fn bench_crash(worker: &Path, kills: usize) -> Value {
    let policy = "restart_backoff_ms = 0\nrestart_backoff_max_ms = 0\ncrash_loop_failures = 1000\n";
    let d = Daemon::new(worker, policy, 420_000 + (std::process::id() % 100) * 100);
    let kernel = d.write("crash.bin", &idle_kernel(b"BOOT\n"));
    let mut c = d.client();
    let name = "bench-crash";
    create(&mut c, name, 16, &kernel, (None, "", "on-failure"));
    let console = Console::attach(&d, name);
    let t0 = Instant::now();
    call(&mut c, Request::Start { name: name.into() });
    while console.found(b"BOOT", t0).is_none() {
        assert!(t0.elapsed() < TIMEOUT, "the crash guest did not boot");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut recorded, mut spawned, mut running, mut first_byte) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(300));
        let before = info(&mut c, name);
        let pid = before["pid"].as_u64().unwrap() as i32;
        let restarts = before["restarts"].as_u64().unwrap();
        let kill_wall = wall_ms();
        let killed = Instant::now();
        // SAFETY: kill with the pid of a worker of our daemon.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let (seen_running, vm) = loop {
            let vm = info(&mut c, name);
            let now = Instant::now();
            if vm["restarts"].as_u64() > Some(restarts) && vm["state"] == "running" {
                break (now, vm);
            }
            assert!(killed.elapsed() < TIMEOUT, "kill {k}: no restart: {vm}");
            std::thread::sleep(Duration::from_millis(1));
        };
        let exit = &vm["last_exit"];
        assert_eq!(exit["kind"], "signal", "{vm}");
        recorded.push(exit["time_ms"].as_u64().unwrap().saturating_sub(kill_wall) as f64);
        let uptime = Duration::from_millis(vm["uptime_ms"].as_u64().unwrap());
        spawned.push(ms((seen_running - uptime).saturating_duration_since(killed)));
        running.push(ms(seen_running - killed));
        let first = loop {
            if let Some(at) = console.first_after(killed) {
                break at;
            }
            assert!(killed.elapsed() < TIMEOUT, "kill {k}: no serial output");
            std::thread::sleep(Duration::from_millis(1));
        };
        first_byte.push(ms(first - killed));
    }
    let stat = |v: &mut Vec<f64>| json!({ "median": median(v), "max": max(v) });
    json!({
        "kills": kills,
        "kill_to_exit_recorded_ms": stat(&mut recorded),
        "kill_to_worker_spawned_ms": stat(&mut spawned),
        "kill_to_running_ms": stat(&mut running),
        "kill_to_first_serial_byte_ms": stat(&mut first_byte),
    })
}

/// Pids whose parent is `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(p);
        }
    }
    out
}

/// A process and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children(all[i]));
        i += 1;
    }
    all
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

/// A field of /proc/PID/smaps_rollup, in KiB.
fn smaps_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn bench_idle(worker: &Path, vms: usize) -> Value {
    let d = Daemon::new(worker, "", 430_000 + (std::process::id() % 100) * 100);
    let kernel = d.write("idle.bin", &idle_kernel(b"IDLE\n"));
    let mut c = d.client();
    let names: Vec<String> = (0..vms).map(|i| format!("bench-idle-{i}")).collect();
    let t0 = Instant::now();
    for name in &names {
        create(&mut c, name, 16, &kernel, (None, "", "no"));
        call(&mut c, Request::Start { name: name.clone() });
    }
    let started = t0.elapsed();
    for name in &names {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let logs = call(
                &mut c,
                Request::Logs {
                    name: name.clone(),
                    follow: false,
                },
            );
            if logs["data"].as_str().unwrap_or("").contains("IDLE") {
                break;
            }
            assert!(Instant::now() < deadline, "{name} did not print IDLE");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let worker_pids: Vec<u32> = names
        .iter()
        .flat_map(|n| tree(info(&mut c, n)["pid"].as_u64().unwrap() as u32))
        .collect();
    let processes = worker_pids.len();
    let sum = |key: &str| worker_pids.iter().map(|&p| smaps_kib(p, key)).sum::<u64>();
    let (rss, pss) = (sum("Rss"), sum("Pss"));
    let (daemon_rss, daemon_pss) = (smaps_kib(d.pid(), "Rss"), smaps_kib(d.pid(), "Pss"));

    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (w0, d0) = (ticks(&worker_pids), cpu_ticks(d.pid()));
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let secs = t.elapsed().as_secs_f64();
    let (w1, d1) = (ticks(&worker_pids), cpu_ticks(d.pid()));
    let pct = |ticks: u64| (ticks as f64 / hz / secs * 1000.0).round() / 10.0;
    let workers_cpu = pct(w1 - w0);
    let daemon_cpu = pct(d1 - d0);
    let n = vms as f64;
    json!({
        "vms": vms,
        "guest_ram_mib": 16,
        "start_all_ms": ms(started),
        "worker_processes": processes,
        "workers_rss_mib": mib(rss),
        "workers_pss_mib": mib(pss),
        "daemon_rss_mib": mib(daemon_rss),
        "daemon_pss_mib": mib(daemon_pss),
        "total_rss_mib": mib(rss + daemon_rss),
        "total_pss_mib": mib(pss + daemon_pss),
        "per_vm_rss_mib": mib(((rss + daemon_rss) as f64 / n) as u64),
        "per_vm_pss_mib": mib(((pss + daemon_pss) as f64 / n) as u64),
        "cpu_seconds": IDLE_SECS,
        "workers_cpu_pct": workers_cpu,
        "daemon_cpu_pct": daemon_cpu,
        "total_cpu_pct": ((workers_cpu + daemon_cpu) * 10.0).round() / 10.0,
        "per_vm_cpu_pct": ((workers_cpu + daemon_cpu) / n * 100.0).round() / 100.0,
    })
}

fn main() {
    let a = args();
    let worker = worker();
    if !is_root() {
        eprintln!("not root: the daemon runs with --allow-weaker-sandbox");
    }
    let boot = if a.skip_boot {
        json!({ "skipped": "--skip-boot" })
    } else {
        bench_boot(&worker, a.boots)
    };
    let crash = bench_crash(&worker, a.kills);
    let idle = bench_idle(&worker, a.vms);
    let all = json!({ "boot": boot, "crash": crash, "idle": idle, "root": is_root() });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap());
    } else {
        print_tables(&all);
    }
}

fn print_tables(all: &Value) {
    let boot = &all["boot"];
    println!("## vm start to the Debian guest's marker (256 MiB, console=ttyS0)\n");
    if let Some(why) = boot["skipped"].as_str() {
        println!("skipped: {why}\n");
    } else {
        println!("| boots | median | each | vm start reply (median) |");
        println!("|---|---|---|---|");
        let each: Vec<String> = boot["to_marker_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| format!("{:.1} s", v.as_f64().unwrap() / 1000.0))
            .collect();
        println!(
            "| {} | {:.1} s | {} | {} ms |\n",
            boot["boots"],
            boot["to_marker_ms_median"].as_f64().unwrap() / 1000.0,
            each.join(", "),
            boot["start_reply_ms_median"]
        );
    }
    let crash = &all["crash"];
    println!(
        "## SIGKILL of a worker to its restart ({} kills, backoff 0)\n",
        crash["kills"]
    );
    println!("| from the kill to | median | max |");
    println!("|---|---|---|");
    for (key, what) in [
        (
            "kill_to_exit_recorded_ms",
            "the daemon's record of the exit",
        ),
        ("kill_to_worker_spawned_ms", "the new worker spawned"),
        ("kill_to_running_ms", "running (Ready and Start)"),
        (
            "kill_to_first_serial_byte_ms",
            "the guest's first COM1 byte",
        ),
    ] {
        println!(
            "| {what} | {} ms | {} ms |",
            crash[key]["median"], crash[key]["max"]
        );
    }
    let idle = &all["idle"];
    println!(
        "\n## {} idle VMs ({} MiB each; {} worker processes; created and started in {} ms)\n",
        idle["vms"], idle["guest_ram_mib"], idle["worker_processes"], idle["start_all_ms"]
    );
    println!("| | workers | daemon | total | per VM |");
    println!("|---|---|---|---|---|");
    println!(
        "| RSS | {} MiB | {} MiB | {} MiB | {} MiB |",
        idle["workers_rss_mib"],
        idle["daemon_rss_mib"],
        idle["total_rss_mib"],
        idle["per_vm_rss_mib"]
    );
    println!(
        "| PSS | {} MiB | {} MiB | {} MiB | {} MiB |",
        idle["workers_pss_mib"],
        idle["daemon_pss_mib"],
        idle["total_pss_mib"],
        idle["per_vm_pss_mib"]
    );
    println!(
        "| CPU over {} s (% of one CPU) | {}% | {}% | {}% | {}% |",
        idle["cpu_seconds"],
        idle["workers_cpu_pct"],
        idle["daemon_cpu_pct"],
        idle["total_cpu_pct"],
        idle["per_vm_cpu_pct"]
    );
}
