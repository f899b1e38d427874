//! Acceptance: Debian's i386 kernel boots on Bulkhead's PC to a busybox
//! shell (the guest kit from `scripts/guest-kit`), keeps time a guest can
//! trust, draws its console into the framebuffer, idles without burning
//! host CPU and shuts down cleanly when the power button is pressed.
//!
//! One boot serves every check, in order (a boot takes about a minute).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::serial::Serial;
use machine::pc::{Firmware, FramebufferConfig, FramebufferMemory, Pc, PcConfig, PcExit, PcHandle};

fn guest_kit() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("BULKHEAD_GUEST_KIT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bulkhead/guest-kit"))
        })
        .expect("HOME or BULKHEAD_GUEST_KIT");
    let (kernel, initrd) = (dir.join("kernel"), dir.join("initrd"));
    assert!(
        kernel.exists() && initrd.exists(),
        "the guest kit is missing in {}: run scripts/guest-kit first (CI does)",
        dir.display()
    );
    (kernel, initrd)
}

/// CPU time of the vCPU thread alone (the other test of this file boots
/// its own guest in the same process at the same time).
fn cpu_time<T>(thread: &std::thread::JoinHandle<T>) -> Duration {
    use std::os::unix::thread::JoinHandleExt;
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the thread is joinable (not yet joined), so its pthread_t is
    // valid; both calls write through valid pointers.
    unsafe {
        assert_eq!(
            libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock),
            0
        );
        libc::clock_gettime(clock, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn send(handle: &PcHandle, line: &str) {
    handle.serial_input(0, format!("{line}\n").as_bytes());
}

/// The framebuffer as the vCPU thread last saw it (the test asks with `PcHandle::stop`).
type FbView = Arc<Mutex<Vec<u8>>>;

/// Boots the guest kit on a vCPU thread; every `stop` request copies the
/// framebuffer into the returned view and resumes.
fn boot() -> (PcHandle, Serial, FbView, std::thread::JoinHandle<PcExit>) {
    let (kernel, initrd) = guest_kit();
    let serial = Serial::new("linux_boot");
    let out = serial.clone();
    let fb: FbView = Arc::default();
    let fb_view = fb.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let vcpu = std::thread::spawn(move || {
        let mut pc = Pc::new(PcConfig {
            ram_mib: 256,
            firmware: Firmware::Linux {
                kernel: std::fs::read(kernel).unwrap(),
                initrd: Some(std::fs::read(initrd).unwrap()),
                cmdline: "console=ttyS0 console=tty0".into(),
            },
            framebuffer: Some(FramebufferConfig {
                width: 1024,
                height: 768,
                memory: FramebufferMemory::Private,
            }),
            serial: [Box::new(out), Box::new(std::io::sink())],
            debug_console: None,
            debug_exit: false,
            clock: None,
            port_hook: None,
            drives: Vec::new(),
        })
        .expect("machine");
        common::jit_from_env(pc.cpu_mut());
        tx.send(pc.handle()).unwrap();
        loop {
            match pc.run(None) {
                PcExit::Stopped => {
                    let (_, _, _, px) = pc.framebuffer().unwrap();
                    *fb_view.lock().unwrap() = px.to_vec();
                }
                other => return other,
            }
        }
    });
    let handle = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("machine built");
    (handle, serial, fb, vcpu)
}

/// A copy of the framebuffer, taken on the vCPU thread.
fn framebuffer(handle: &PcHandle, fb: &FbView) -> Vec<u8> {
    fb.lock().unwrap().clear();
    handle.stop();
    let start = Instant::now();
    loop {
        let px = fb.lock().unwrap().clone();
        if !px.is_empty() {
            return px;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no framebuffer copy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lit_pixels(px: &[u8]) -> usize {
    px.chunks_exact(4).filter(|p| p[..3] != [0, 0, 0]).count()
}

/// Types `command` and returns the output line that contains `marker`.
fn ask(handle: &PcHandle, serial: &Serial, at: &mut usize, command: &str, marker: &str) -> String {
    send(handle, command);
    let (line, next) = serial.wait_for(marker, *at, Duration::from_secs(60));
    *at = next;
    line
}

#[test]
fn debian_guest_boots_keeps_time_identifies_our_cpu_shares_its_framebuffer_reboots_and_powers_off()
{
    let (handle, serial, fb, vcpu) = boot();
    let started = Instant::now();
    let (_, mut at) = serial.wait_for("BULKHEAD-GUEST-READY", 0, Duration::from_secs(600));
    println!("guest ready after {:.1} s", started.elapsed().as_secs_f64());
    // Let init start the shell.
    std::thread::sleep(Duration::from_secs(2));

    // The guest's clock matches the host's within 2 s. (Markers are
    // computed by the guest, so the echoed command line never matches.)
    let line = ask(
        &handle,
        &serial,
        &mut at,
        "echo DATE-$(date +%s)-$((6*7))",
        "-42",
    );
    let guest: u64 = line
        .rsplit("DATE-")
        .next()
        .and_then(|s| s.trim_end().strip_suffix("-42"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no date in {line:?}"));
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    println!("guest date {guest}, host {host}");
    assert!(
        guest.abs_diff(host) <= 2,
        "guest clock {guest} vs host {host}"
    );

    // `sleep 2` takes 2 s of host time, within 10%.
    send(&handle, "echo SLEEP-A; sleep 2; echo SLEEP-B");
    let (_, next) = serial.wait_for("\nSLEEP-A", at, Duration::from_secs(60));
    let t0 = Instant::now();
    let (_, next) = serial.wait_for("\nSLEEP-B", next, Duration::from_secs(60));
    let slept = t0.elapsed().as_secs_f64();
    at = next;
    println!("sleep 2 took {slept:.3} s of host time");
    assert!((1.8..=2.2).contains(&slept), "sleep 2 took {slept:.3} s");

    // HLT blocks the vCPU: an idle guest leaves the host CPU alone. Debian's
    // 686 kernel is built with CONFIG_HZ_PERIODIC at 250 Hz, so the idle
    // guest still runs its timer tick (about 4,000 instructions, 250 times
    // a second): a few percent of a CPU, more in this unoptimised build
    // and on a loaded machine. A vCPU that spun instead of blocking would
    // use all of one. BENCHMARKS.md has the figure against QEMU.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu_time(&vcpu), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let share = (cpu_time(&vcpu) - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    println!("idle guest: {:.1}% of a host CPU", share * 100.0);
    assert!(
        share < 0.35,
        "idle guest used {:.1}% of a host CPU: is HLT blocking?",
        share * 100.0
    );

    // The kernel is i686 and sees our CPU: GenuineIntel family 6 model 5
    // with exactly the features we implement.
    let uname = ask(
        &handle,
        &serial,
        &mut at,
        "uname -a; echo UNAME-$((6*7))",
        "UNAME-42",
    );
    assert!(uname.contains("i686"), "uname -a: {uname}");
    let cpuinfo = ask(
        &handle,
        &serial,
        &mut at,
        "cat /proc/cpuinfo; echo CPUINFO-$((6*7))",
        "CPUINFO-42",
    );
    for want in ["GenuineIntel", "cpu family\t: 6", "model\t\t: 5"] {
        assert!(
            cpuinfo.contains(want),
            "no {want:?} in /proc/cpuinfo:\n{cpuinfo}"
        );
    }
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().skip(2).collect())
        .unwrap_or_default();
    for want in [
        "fpu", "de", "pse", "tsc", "msr", "cx8", "apic", "sep", "mtrr", "pge", "cmov",
    ] {
        assert!(flags.contains(&want), "flag {want} missing: {flags:?}");
    }
    for absent in ["pae", "mmx", "fxsr", "sse", "vme"] {
        assert!(
            !flags.contains(&absent),
            "flag {absent} reported: {flags:?}"
        );
    }

    // The console has drawn into the framebuffer.
    let lit = lit_pixels(&framebuffer(&handle, &fb));
    println!("framebuffer after boot: {lit} lit pixels");
    assert!(lit > 2000, "the framebuffer console drew only {lit} pixels");

    // Bytes the guest writes to /dev/fb0 are the bytes in our buffer.
    // fbcon is unbound first so it cannot scroll the pattern away. (Each
    // command stays under 80 columns: busybox's line editor loses typeahead
    // while it redraws a wrapped line.)
    send(
        &handle,
        "for v in /sys/class/vtconsole/vtcon*; do echo 0 >$v/bind; done",
    );
    send(
        &handle,
        "dd if=/dev/urandom of=/tmp/p bs=256 count=1; cat /tmp/p >/dev/fb0",
    );
    let out = ask(
        &handle,
        &serial,
        &mut at,
        "hexdump -v -e '/1 \"%02x\"' /tmp/p; echo; echo FB-$((6*7))",
        "FB-42",
    );
    let hex = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 512 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no pattern dump in {out:?}"));
    let pattern: Vec<u8> = (0..256)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let px = framebuffer(&handle, &fb);
    assert_eq!(
        &px[..256],
        &pattern[..],
        "/dev/fb0 bytes differ from the shared buffer"
    );

    // `reboot -f` resets the machine; the kernel boots a second time.
    send(&handle, "reboot -f");
    let t0 = Instant::now();
    let (_, next) = serial.wait_for("BULKHEAD-GUEST-READY", at, Duration::from_secs(600));
    at = next;
    println!(
        "second boot ready after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));

    // `poweroff` ends the run with a power-off event.
    send(&handle, "poweroff");
    let _ = at;
    assert_eq!(vcpu.join().expect("vCPU thread"), PcExit::PowerOff);
}

#[test]
fn debian_guest_shuts_down_cleanly_on_the_power_button() {
    let (handle, serial, _fb, vcpu) = boot();
    let (_, at) = serial.wait_for("BULKHEAD-GUEST-READY", 0, Duration::from_secs(600));
    // acpid starts before the marker; give the shell a moment too.
    std::thread::sleep(Duration::from_secs(2));
    handle.power_button();
    let _ = serial.wait_for("BULKHEAD-GUEST-POWER-BUTTON", at, Duration::from_secs(60));
    assert_eq!(vcpu.join().expect("vCPU thread"), PcExit::PowerOff);
}
