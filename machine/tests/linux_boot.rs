//! Acceptance: Debian's i386 kernel boots on Bulkhead's PC to a busybox
//! shell (the guest kit from `scripts/guest-kit`), keeps time a guest can
//! trust, draws its console into the framebuffer, idles without burning
//! host CPU and shuts down cleanly when the power button is pressed.
//!
//! One boot serves every check, in order (a boot takes about a minute).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use machine::pc::{Firmware, FramebufferConfig, FramebufferMemory, Pc, PcConfig, PcExit, PcHandle};

/// COM1 output, shared with the test thread.
#[derive(Clone, Default)]
struct Serial(Arc<Mutex<Vec<u8>>>);

impl Write for Serial {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Serial {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// Waits until `needle` appears after byte `from`; returns the text
    /// after `from` up to the end of the needle's line, and where that ends.
    fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> (String, usize) {
        let start = Instant::now();
        loop {
            let text = self.text();
            let tail = text.get(from..).unwrap_or("");
            if let Some(at) = tail.find(needle) {
                let line_end = tail[at..].find('\n').map_or(tail.len(), |e| at + e);
                return (tail[..line_end].to_string(), from + line_end);
            }
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} on the serial console within {timeout:?}; it shows:\n{}",
                &text[text.len().saturating_sub(3000)..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

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

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn send(handle: &PcHandle, line: &str) {
    handle.serial_input(0, format!("{line}\n").as_bytes());
}

#[test]
fn debian_guest_boots_keeps_time_draws_idles_and_powers_off() {
    let (kernel, initrd) = guest_kit();
    let serial = Serial::default();
    let out = serial.clone();
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
        })
        .expect("machine");
        tx.send(pc.handle()).unwrap();
        let exit = loop {
            match pc.run(None) {
                PcExit::Stopped => {
                    // The test asked for a framebuffer look.
                    let (w, h, stride, px) = pc.framebuffer().unwrap();
                    let lit = (0..h as usize)
                        .flat_map(|y| px[y * stride as usize..][..w as usize * 4].chunks_exact(4))
                        .filter(|p| p[..3] != [0, 0, 0])
                        .count();
                    println!("framebuffer: {lit} lit pixels");
                    assert!(lit > 2000, "the framebuffer console drew only {lit} pixels");
                    continue;
                }
                other => break other,
            }
        };
        exit
    });
    let handle = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("machine built");

    let boot = Instant::now();
    let (_, mut at) = serial.wait_for("BULKHEAD-GUEST-READY", 0, Duration::from_secs(600));
    println!("guest ready after {:.1} s", boot.elapsed().as_secs_f64());
    // Let init start the shell.
    std::thread::sleep(Duration::from_secs(2));

    // The guest's clock matches the host's within 2 s.
    // The marker is computed by the guest so the echoed command line does not match.
    send(&handle, "echo DATE-$(date +%s)-$((6*7))");
    let (line, next) = serial.wait_for("-42", at, Duration::from_secs(60));
    at = next;
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

    // An idle guest costs the host almost nothing: HLT blocks the vCPU.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let share = (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    println!("idle guest: {:.1}% of a host CPU", share * 100.0);
    assert!(
        share < 0.10,
        "idle guest used {:.1}% of a host CPU",
        share * 100.0
    );

    // The framebuffer console has drawn (checked on the vCPU thread).
    handle.stop();
    std::thread::sleep(Duration::from_millis(200));

    // The power button shuts the guest down cleanly (acpid runs poweroff).
    handle.power_button();
    let _ = serial.wait_for("BULKHEAD-GUEST-POWER-BUTTON", at, Duration::from_secs(60));
    let exit = vcpu.join().expect("vCPU thread");
    assert_eq!(exit, PcExit::PowerOff);
}
