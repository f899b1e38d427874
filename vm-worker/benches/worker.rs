//! `cargo bench -p vm-worker --bench worker [-- --json] [-- --spawns N]
//! [-- --idle-secs S]`: what one worker costs the host.
//!
//! - spawn: from `spawn()` (fork+exec of `bulkhead-worker run`, with the
//!   supervisor's fds in place) through the hellos, the config, the
//!   sandbox set-up (namespaces, pivot_root, cgroup, uid, seccomp), the
//!   machine build, `Ready`, the supervisor's `Start`, to the first byte
//!   the guest OUTs to COM1 arriving on the serial socket. The guest's
//!   first three instructions are that OUT (`mov dx`, `mov al`, `out`),
//!   so this is "spawn to first guest instruction" plus one hop through
//!   the worker's serial ring and writer thread (a condvar wake-up and a
//!   socket write: tens of microseconds). Median and p99 over N spawns
//!   (100 by default), sandboxed and with `--no-sandbox` for comparison.
//! - memory: RSS, PSS and private dirty memory (/proc/PID/smaps_rollup) of
//!   the process that runs the VM (the sandbox's child in the new pid
//!   namespace) and of its reaper (the spawned process), for a guest that
//!   configured 64 or 256 MiB and touched almost none of it.
//! - idle CPU: utime+stime of both processes over S seconds (10 by default)
//!   while the guest is halted with interrupts enabled and no timer, with
//!   and without a 1024x768 framebuffer (the presenter compares it with
//!   its copy ~30 times a second).
//! - framebuffer: `FbReader::snapshot` of a full 1024x768x32 frame, in
//!   process, with the writer idle, committing 60 full frames a second,
//!   or committing as fast as it can.
//!
//! The sandboxed parts need root; without it they are skipped with a note
//! and the `--no-sandbox` figures are still printed.
//!
//! Building: the crate's tests enable the `chaos` feature through a
//! dev-dependency, and that feature refuses to compile without debug
//! assertions, which the bench profile turns off. Until the workspace
//! sets `[profile.bench.package.vm-worker] debug-assertions = true`, run
//! `cargo bench -p vm-worker --bench worker --config
//! 'profile.bench.package.vm-worker.debug-assertions=true'` (only the
//! vm-worker crate gets debug assertions; `machine` stays a plain release
//! build).

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{
    FIRST_BYTE, Spawn, Worker, cpu_ticks, idle_kernel, sandbox_unavailable, smaps_kib,
    ticks_per_second,
};
use protocol::{DirtyTiles, FbReader, FbWriter, FromWorker, ToWorker, VmState, WorkerExit};
use serde_json::{Value, json};

const FB_W: u32 = 1024;
const FB_H: u32 = 768;

struct Args {
    json: bool,
    spawns: usize,
    idle_secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        json: false,
        spawns: 100,
        idle_secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--spawns" => a.spawns = it.next().and_then(|v| v.parse().ok()).unwrap_or(100),
            "--idle-secs" => a.idle_secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(10),
            // `cargo bench` passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    a
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and p99 (nearest rank) of `v`, in ms.
fn percentiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.99))
}

/// Shuts a worker down cleanly and checks it exited 0.
fn shut_down(mut w: Worker) {
    w.send(&ToWorker::Shutdown);
    let (code, err) = w.finish();
    assert_eq!(code, Some(WorkerExit::Ok.code()), "{err}");
}

fn idle_worker(sandbox: bool, ram_mib: u32, fb: Option<(u32, u32)>) -> Worker {
    let mut w = Worker::spawn(Spawn::new(&idle_kernel(), sandbox, ram_mib, fb));
    w.expect("Ready", |m| matches!(m, FromWorker::Ready(_)).then_some(()));
    w.send(&ToWorker::Start);
    w.expect_state(VmState::Running);
    w.expect_serial("IDLE\n");
    w
}

/// One spawn: (spawn to Ready, Start to first byte, spawn to first byte).
fn spawn_once(sandbox: bool) -> (Duration, Duration, Duration) {
    let mut w = Worker::spawn(Spawn::new(&idle_kernel(), sandbox, 64, Some((FB_W, FB_H))));
    w.expect("Ready", |m| matches!(m, FromWorker::Ready(_)).then_some(()));
    let ready = w.spawned_at.elapsed();
    let start = Instant::now();
    w.send(&ToWorker::Start);
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut w.serial, &mut byte).unwrap();
    let first = w.spawned_at.elapsed();
    assert_eq!(byte[0], FIRST_BYTE);
    let after_start = start.elapsed();
    shut_down(w);
    (ready, after_start, first)
}

fn bench_spawn(sandbox: bool, n: usize) -> Value {
    // One unmeasured spawn warms the page cache and the cgroup hierarchy.
    spawn_once(sandbox);
    let (mut ready, mut start, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (r, s, f) = spawn_once(sandbox);
        ready.push(ms(r));
        start.push(ms(s));
        first.push(ms(f));
    }
    let (r50, r99) = percentiles(&mut ready);
    let (s50, s99) = percentiles(&mut start);
    let (f50, f99) = percentiles(&mut first);
    json!({
        "sandbox": sandbox,
        "spawns": n,
        "spawn_to_ready_ms": {"median": r50, "p99": r99},
        "start_to_first_byte_ms": {"median": s50, "p99": s99},
        "spawn_to_first_byte_ms": {"median": f50, "p99": f99},
    })
}

fn bench_memory(sandbox: bool, ram_mib: u32) -> Value {
    let w = idle_worker(sandbox, ram_mib, Some((FB_W, FB_H)));
    // Let the presenter run a few periods.
    std::thread::sleep(Duration::from_millis(500));
    let vm = w.vm_pid();
    let reaper = w.child.id();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let vm_fig = json!({
        "rss_mib": mib(smaps_kib(vm, "Rss")),
        "pss_mib": mib(smaps_kib(vm, "Pss")),
        "private_dirty_mib": mib(smaps_kib(vm, "Private_Dirty")),
        "shared_mib": mib(smaps_kib(vm, "Shared_Clean") + smaps_kib(vm, "Shared_Dirty")),
    });
    let reaper_fig = (reaper != vm).then(|| {
        json!({
            "rss_mib": mib(smaps_kib(reaper, "Rss")),
            "pss_mib": mib(smaps_kib(reaper, "Pss")),
            "private_dirty_mib": mib(smaps_kib(reaper, "Private_Dirty")),
        })
    });
    shut_down(w);
    json!({"sandbox": sandbox, "guest_ram_mib": ram_mib, "vm": vm_fig, "reaper": reaper_fig})
}

fn bench_idle(sandbox: bool, fb: Option<(u32, u32)>, secs: u64) -> Value {
    let w = idle_worker(sandbox, 64, fb);
    std::thread::sleep(Duration::from_millis(500));
    let (vm, reaper) = (w.vm_pid(), w.child.id());
    let pids: Vec<u32> = if vm == reaper {
        vec![vm]
    } else {
        vec![vm, reaper]
    };
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let wall = t.elapsed().as_secs_f64();
    let hz = ticks_per_second() as f64;
    let pct = |i: usize| (after[i] - before[i]) as f64 / hz / wall * 100.0;
    let fig = json!({
        "sandbox": sandbox,
        "framebuffer": fb.map(|(w, h)| format!("{w}x{h}")),
        "seconds": wall,
        "vm_cpu_percent": pct(0),
        "reaper_cpu_percent": (pids.len() > 1).then(|| pct(1)),
        "resolution_percent": 100.0 / hz / wall,
    });
    shut_down(w);
    fig
}

#[derive(Clone, Copy)]
enum WriterLoad {
    Idle,
    Hz60,
    FlatOut,
}

fn bench_fb_read(load: WriterLoad, secs: f64) -> Value {
    let memfd = protocol::framebuffer::create(FB_W, FB_H).unwrap();
    let theirs = memfd.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let s = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut w = FbWriter::new(theirs.as_fd()).unwrap();
        w.set_mode(FB_W, FB_H).unwrap();
        tx.send(()).unwrap();
        let all = DirtyTiles::all(FB_W, FB_H);
        let mut n = 0u32;
        while !s.load(Ordering::Relaxed) {
            match load {
                WriterLoad::Idle => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                WriterLoad::Hz60 => std::thread::sleep(Duration::from_micros(16_667)),
                WriterLoad::FlatOut => {}
            }
            w.begin();
            n = n.wrapping_add(1);
            w.pixels_mut().fill(n as u8);
            w.commit(&all);
        }
        w.frame_counter()
    });
    rx.recv().unwrap();
    let reader = FbReader::open(&memfd).unwrap();
    let (mut ok, mut torn) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < secs {
        match reader.snapshot() {
            Ok(f) => {
                assert_eq!(f.pixels.len(), (FB_W * FB_H * 4) as usize);
                std::hint::black_box(&f);
                ok += 1;
            }
            Err(_) => torn += 1,
        }
    }
    let wall = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let fps = ok as f64 / wall;
    json!({
        "writer": match load {
            WriterLoad::Idle => "idle",
            WriterLoad::Hz60 => "60 frames/s",
            WriterLoad::FlatOut => "flat out",
        },
        "frames_per_second": fps,
        "gb_per_second": fps * f64::from(FB_W * FB_H * 4) / 1e9,
        "failed_snapshots": torn,
        "frames_written": written,
    })
}

fn main() {
    let a = args();
    let skipped = sandbox_unavailable();
    if let Some(why) = &skipped {
        eprintln!("SKIPPED the sandboxed figures: {why}");
    }
    let modes: Vec<bool> = if skipped.is_none() {
        vec![true, false]
    } else {
        vec![false]
    };
    let sandboxed = skipped.is_none();

    eprintln!("worker bench: {} spawns per mode...", a.spawns);
    let spawn: Vec<Value> = modes.iter().map(|&s| bench_spawn(s, a.spawns)).collect();
    eprintln!("worker bench: memory...");
    let memory: Vec<Value> = [64, 256]
        .into_iter()
        .map(|ram| bench_memory(sandboxed, ram))
        .collect();
    eprintln!("worker bench: idle CPU, {} s per case...", a.idle_secs);
    let idle: Vec<Value> = [Some((FB_W, FB_H)), None]
        .into_iter()
        .map(|fb| bench_idle(sandboxed, fb, a.idle_secs))
        .collect();
    eprintln!("worker bench: framebuffer reads...");
    let fb: Vec<Value> = [WriterLoad::Idle, WriterLoad::Hz60, WriterLoad::FlatOut]
        .into_iter()
        .map(|l| bench_fb_read(l, 2.0))
        .collect();

    let all = json!({"spawn": spawn, "memory": memory, "idle": idle, "framebuffer_read": fb});
    if a.json {
        println!("{all}");
        return;
    }
    print_tables(&all);
}

fn f(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
}

fn print_tables(all: &Value) {
    println!("## spawn to first guest instruction (first COM1 byte on the serial socket)\n");
    println!(
        "| sandbox | spawns | spawn→Ready median / p99 | Start→first byte median / p99 | spawn→first byte median / p99 |"
    );
    println!("|---|---|---|---|---|");
    for s in all["spawn"].as_array().unwrap() {
        let pair = |k: &str| format!("{} / {} ms", f(&s[k]["median"]), f(&s[k]["p99"]));
        println!(
            "| {} | {} | {} | {} | {} |",
            s["sandbox"],
            s["spawns"],
            pair("spawn_to_ready_ms"),
            pair("start_to_first_byte_ms"),
            pair("spawn_to_first_byte_ms")
        );
    }
    println!(
        "\n## memory beyond guest RAM (guest touched almost none of it; 1024x768 framebuffer)\n"
    );
    println!(
        "| guest RAM | VM process RSS | PSS | private dirty | shared | reaper RSS | reaper private dirty |"
    );
    println!("|---|---|---|---|---|---|---|");
    for m in all["memory"].as_array().unwrap() {
        let (v, r) = (&m["vm"], &m["reaper"]);
        println!(
            "| {} MiB | {} MiB | {} MiB | {} MiB | {} MiB | {} MiB | {} MiB |",
            m["guest_ram_mib"],
            f(&v["rss_mib"]),
            f(&v["pss_mib"]),
            f(&v["private_dirty_mib"]),
            f(&v["shared_mib"]),
            f(&r["rss_mib"]),
            f(&r["private_dirty_mib"]),
        );
    }
    println!("\n## idle guest (halted, interrupts on, no timer), host CPU\n");
    println!("| framebuffer | seconds | VM process | reaper | resolution |");
    println!("|---|---|---|---|---|");
    for i in all["idle"].as_array().unwrap() {
        println!(
            "| {} | {} | {}% | {}% | {}% |",
            i["framebuffer"].as_str().unwrap_or("none"),
            f(&i["seconds"]),
            f(&i["vm_cpu_percent"]),
            f(&i["reaper_cpu_percent"]),
            f(&i["resolution_percent"]),
        );
    }
    println!("\n## FbReader::snapshot of a 1024x768x32 frame (3 MiB), in process\n");
    println!("| writer | frames/s | GB/s | failed snapshots | frames written |");
    println!("|---|---|---|---|---|");
    for r in all["framebuffer_read"].as_array().unwrap() {
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            r["writer"].as_str().unwrap_or(""),
            r["frames_per_second"].as_f64().unwrap_or(0.0),
            f(&r["gb_per_second"]),
            r["failed_snapshots"],
            r["frames_written"],
        );
    }
}
