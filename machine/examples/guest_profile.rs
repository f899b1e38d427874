//! Where a directly booted guest spends its time, by guest function.
//!
//! Boots a kernel like `bulkhead run --kernel` does, stops every `--slice`
//! retired instructions, and charges the host time of each slice to the
//! guest symbol at the slice's end (from a `System.map`). Until the marker
//! appears on COM1, or `--until` retired instructions.
//!
//! `cargo run --release -p machine --example guest_profile -- KERNEL INITRD SYMBOLS [MARKER]`
//!
//! SYMBOLS is a `System.map` or the guest's `/proc/kallsyms` (Debian's
//! packaged System.map is a stub; boot the kit once and save kallsyms).
//! The command line is `$APPEND`, by default `console=ttyS0 nokaslr` so
//! that the addresses match. With `IDLE=SECS` it instead measures the
//! guest idling at its shell after the marker: host CPU and instructions
//! per second. With `STOP_AT=N` it stops after N retired instructions
//! (a window to run under callgrind). `JIT=1` turns the baseline JIT on.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use machine::pc::{Firmware, FramebufferConfig, FramebufferMemory, Pc, PcConfig, PcExit};

struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        std::io::stderr().write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initrd, map, rest @ ..] = &args[..] else {
        eprintln!("usage: guest_profile KERNEL INITRD System.map [MARKER]");
        std::process::exit(2);
    };
    let marker = rest.first().map_or("BULKHEAD-GUEST-READY", |s| s.as_str());
    let mut syms: Vec<(u32, String)> = std::fs::read_to_string(map)
        .expect("System.map")
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let a = u32::from_str_radix(f.next()?, 16).ok()?;
            let t = f.next()?;
            let name = f.next()?;
            t.eq_ignore_ascii_case("t").then(|| (a, name.to_string()))
        })
        .collect();
    syms.sort();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut pc = Pc::new(PcConfig {
        ram_mib: 256,
        firmware: Firmware::Linux {
            kernel: std::fs::read(kernel).expect("kernel"),
            initrd: Some(std::fs::read(initrd).expect("initrd")),
            cmdline: std::env::var("APPEND").unwrap_or("console=ttyS0 nokaslr".into()),
        },
        // `FB=1`: a 1024x768 framebuffer, as the worker gives every VM.
        framebuffer: std::env::var_os("FB").map(|_| FramebufferConfig {
            width: 1024,
            height: 768,
            memory: FramebufferMemory::Private,
        }),
        serial: [Box::new(Tee(out.clone())), Box::new(std::io::sink())],
        debug_console: None,
        debug_exit: false,
        clock: None,
        port_hook: None,
        drives: Vec::new(),
    })
    .expect("machine");
    // `JIT=1`: the baseline JIT on.
    if std::env::var_os("JIT").is_some_and(|v| v != "0") {
        pc.cpu_mut().set_jit(true);
    }
    let slice = 20_000;
    let stop_at: Option<u64> = std::env::var("STOP_AT").ok().and_then(|s| s.parse().ok());
    let mut time: HashMap<String, (f64, u64)> = HashMap::new();
    let start = Instant::now();
    let mut last = start;
    let mut seen = 0;
    loop {
        let exit = pc.run(Some(slice));
        let now = Instant::now();
        let eip = pc.cpu().eip();
        let name = match syms.partition_point(|(a, _)| *a <= eip) {
            n if n == 0 || n == syms.len() => format!("{:#x} (page)", eip & !0xFFF),
            n => syms[n - 1].1.clone(),
        };
        let e = time.entry(name).or_default();
        e.0 += (now - last).as_secs_f64();
        e.1 += 1;

        last = now;
        if stop_at.is_some_and(|n| pc.cpu().instruction_count() >= n) {
            break;
        }
        if !matches!(exit, PcExit::InstructionLimit) {
            eprintln!("exit {exit:?}");
            break;
        }
        let o = out.lock().unwrap();
        if o.len() > seen {
            if String::from_utf8_lossy(&o[seen.saturating_sub(64)..]).contains(marker) {
                break;
            }
            seen = o.len();
        }
    }
    let total = start.elapsed().as_secs_f64();
    if let Some(secs) = std::env::var("IDLE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        // The guest idles at its shell: host CPU and instructions per second.
        let cpu = || {
            // SAFETY: rusage is plain integers, valid when zeroed.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: getrusage writes the struct it is given.
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
            ru.ru_utime.tv_sec as f64
                + ru.ru_utime.tv_usec as f64 / 1e6
                + ru.ru_stime.tv_sec as f64
                + ru.ru_stime.tv_usec as f64 / 1e6
        };
        let settle = Instant::now();
        while settle.elapsed().as_secs_f64() < 2.0 {
            pc.run(Some(1_000_000));
        }
        let (c0, t0, i0) = (cpu(), Instant::now(), pc.cpu().instruction_count());
        while t0.elapsed().as_secs_f64() < secs {
            pc.run(Some(1_000_000));
        }
        let wall = t0.elapsed().as_secs_f64();
        println!(
            "idle: {:.1}% of a CPU, {:.0} instructions/s",
            (cpu() - c0) / wall * 100.0,
            (pc.cpu().instruction_count() - i0) as f64 / wall
        );
        return;
    }
    let mut v: Vec<_> = time.into_iter().collect();
    v.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!(
        "total {total:.2} s, {} instructions",
        pc.cpu().instruction_count()
    );
    for (name, (t, n)) in v.iter().take(60) {
        println!("{:6.2}% {t:7.3} s {n:8} {name}", t / total * 100.0);
    }
}
