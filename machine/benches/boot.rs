//! Boot to the guest kit's shell marker, side by side with QEMU TCG.
//!
//! Boots Debian's i386 kernel and the busybox initramfs from
//! `scripts/guest-kit` on Bulkhead's PC (in a child process, so its peak RSS
//! is its own) and on `qemu-system-i386 -accel tcg` with the same kernel,
//! initrd, command line and RAM, and reports the wall time from process
//! start to the `BULKHEAD-GUEST-READY` line on COM1 and each process's peak
//! RSS. Bulkhead runs twice: interpreted, and with the baseline JIT on
//! (`bulkhead-jit`).
//!
//! `cargo bench -p machine --bench boot -- [--runs N] [--json] [--no-peers]`

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use machine::pc::{Firmware, Pc, PcConfig};

const MARKER: &str = "BULKHEAD-GUEST-READY";
const RAM_MIB: u32 = 256;
const APPEND: &str = "console=ttyS0";
const CHILD_ENV: &str = "BULKHEAD_BOOT_BENCH_CHILD";
/// Set in the child that runs with the JIT on.
const JIT_ENV: &str = "BULKHEAD_BOOT_BENCH_JIT";

fn guest_kit() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("BULKHEAD_GUEST_KIT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bulkhead/guest-kit"))
        })
        .expect("HOME or BULKHEAD_GUEST_KIT");
    let (k, i) = (dir.join("kernel"), dir.join("initrd"));
    if !k.exists() || !i.exists() {
        eprintln!(
            "boot: the guest kit is missing in {}; run scripts/guest-kit",
            dir.display()
        );
        std::process::exit(1);
    }
    (k, i)
}

/// The child: boot on our PC with COM1 on stdout until killed.
fn child(kernel: &str, initrd: &str) -> ! {
    let mut pc = Pc::new(PcConfig {
        ram_mib: RAM_MIB,
        firmware: Firmware::Linux {
            kernel: std::fs::read(kernel).expect("kernel"),
            initrd: Some(std::fs::read(initrd).expect("initrd")),
            cmdline: APPEND.into(),
        },
        framebuffer: None,
        serial: [Box::new(std::io::stdout()), Box::new(std::io::sink())],
        debug_console: None,
        debug_exit: false,
        clock: None,
        port_hook: None,
        drives: Vec::new(),
    })
    .expect("machine");
    pc.cpu_mut().set_jit(std::env::var_os(JIT_ENV).is_some());
    let exit = pc.run(None);
    let _ = std::io::stdout().flush();
    eprintln!("boot child: {exit:?}");
    std::process::exit(0)
}

/// Runs `cmd` until its stdout shows the marker; (seconds, peak RSS in KiB).
fn measure(mut cmd: Command) -> Option<(f64, u64)> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if String::from_utf8_lossy(&line).contains(MARKER) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let secs = rx
        .recv_timeout(Duration::from_secs(900))
        .ok()
        .map(|_| start.elapsed().as_secs_f64());
    let _ = child.kill();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers; it reaps the
    // child, so std's Child is not waited on again.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    Some((secs?, usage.ru_maxrss as u64))
}

/// An engine's name and how to start it.
type Engine<'a> = (&'static str, Box<dyn Fn() -> Command + 'a>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        let (k, i) = arg.split_once('\n').expect("kernel\\ninitrd");
        child(k, i);
    }
    let mut runs = 1usize;
    let mut json = false;
    let mut peers = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).expect("--runs N"),
            "--json" => json = true,
            "--no-peers" => peers = false,
            "--bench" => {}
            other => {
                eprintln!("boot: unknown argument {other}; use --runs N, --json, --no-peers");
                std::process::exit(2);
            }
        }
    }
    let (kernel, initrd) = guest_kit();
    let ours = || {
        let mut c = Command::new(std::env::current_exe().expect("own path"));
        c.env(
            CHILD_ENV,
            format!("{}\n{}", kernel.display(), initrd.display()),
        );
        c
    };
    let qemu = || {
        let mut c = Command::new("qemu-system-i386");
        c.args([
            "-M",
            "pc",
            "-cpu",
            "pentium2",
            "-m",
            &RAM_MIB.to_string(),
            "-accel",
            "tcg",
        ])
        .args([
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", APPEND]);
        c
    };
    let mut results: Vec<(&str, Vec<f64>, u64)> = Vec::new();
    let ours_jit = || {
        let mut c = ours();
        c.env(JIT_ENV, "1");
        c
    };
    let mut engines: Vec<Engine> = vec![
        ("bulkhead", Box::new(ours)),
        ("bulkhead-jit", Box::new(ours_jit)),
    ];
    if peers {
        engines.push(("qemu-tcg", Box::new(qemu)));
    }
    for (name, make) in &engines {
        let mut times = Vec::new();
        let mut rss = 0;
        for run in 0..runs {
            match measure(make()) {
                Some((t, r)) => {
                    eprintln!(
                        "boot: {name} run {}: {t:.2} s, peak RSS {} MiB",
                        run + 1,
                        r / 1024
                    );
                    times.push(t);
                    rss = rss.max(r);
                }
                None => eprintln!("boot: {name} did not reach the marker"),
            }
        }
        if !times.is_empty() {
            results.push((name, times, rss));
        }
    }
    if json {
        let items: Vec<String> = results
            .iter()
            .map(|(n, t, r)| {
                format!(
                    "{{\"engine\":\"{n}\",\"seconds\":{:.3},\"peak_rss_kib\":{r}}}",
                    median(t.clone())
                )
            })
            .collect();
        println!("[{}]", items.join(","));
        return;
    }
    let ours_t = results
        .iter()
        .find(|r| r.0 == "bulkhead")
        .map(|r| median(r.1.clone()));
    println!(
        "{:<10} {:>14} {:>14} {:>12}",
        "engine", "boot-to-marker", "peak RSS", "vs bulkhead"
    );
    for (name, times, rss) in &results {
        let t = median(times.clone());
        let ratio = ours_t.map_or("-".to_string(), |o| format!("{:.2}x", o / t));
        println!(
            "{:<10} {:>12.2} s {:>10} MiB {:>12}",
            name,
            t,
            rss / 1024,
            ratio
        );
    }
    println!("(ratio: Bulkhead's time / the engine's time; {runs} run(s) each, median)");
}
