//! The development runner: boots a kernel or firmware image on Bulkhead's
//! PC, in this process, without the sandbox. For developers and test
//! kernels; VMs for users run under `bulkhead`.
//!
//! Exit status: 0 the guest powered off (or halted with interrupts off),
//! 1 error, 2 usage, 3 triple fault, 4 instruction limit reached,
//! (v << 1) | 1 the guest wrote v to the debug-exit port (QEMU's
//! isa-debug-exit convention).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use machine::pc::{
    DriveConfig, DriveKind, Firmware, FramebufferConfig, FramebufferMemory, Pc, PcConfig, PcExit,
};
use machine::{BlockBackend, ReadOnly};

#[derive(Parser)]
#[command(about = "Boot a kernel or firmware image on Bulkhead's emulated PC (development runner)")]
struct Args {
    /// A bzImage or a Multiboot v1 kernel (ELF32 or a.out kludge), booted directly.
    #[arg(long, conflicts_with = "bios")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk for a bzImage; for a Multiboot kernel, modules as
    /// "FILE ARGS,FILE2 ARGS" (each module's command line starts with its file name).
    #[arg(long, requires = "kernel")]
    initrd: Option<String>,
    /// Kernel command line.
    #[arg(long, default_value = "", requires = "kernel")]
    append: String,
    /// A BIOS image (a multiple of 64 KiB) entered at the reset vector.
    #[arg(long)]
    bios: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u32,
    /// Where COM1 goes: the terminal (input too), nowhere, or a file.
    #[arg(long, default_value = "stdio")]
    serial: String,
    /// Framebuffer size WIDTHxHEIGHT (32 bpp), or "none".
    #[arg(long, default_value = "1024x768")]
    framebuffer: String,
    /// Write the framebuffer to this PNG when the run ends.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Enable the debug-exit device on port 0xF4 (machine::pc::DEBUG_EXIT_PORT).
    #[arg(long)]
    debug_exit: bool,
    /// Stop after this many instructions.
    #[arg(long)]
    max_instructions: Option<u64>,
    /// Every SECS seconds, print the CPU and interrupt state to stderr
    /// (diagnosing a guest that stops making progress).
    #[arg(long, value_name = "SECS")]
    watchdog: Option<u64>,
    /// A raw disk image on the IDE controller, read-write; repeat for more
    /// (primary master, primary slave, then the secondary channel's free slots).
    #[arg(long, value_name = "FILE")]
    disk: Vec<PathBuf>,
    /// Attach the --disk images read-only.
    #[arg(long)]
    disk_ro: bool,
    /// An ISO image in an ATAPI CD-ROM drive (secondary master).
    #[arg(long, value_name = "FILE.iso")]
    cdrom: Option<PathBuf>,
    /// Debug console (ports 0xE9/0x402) output.
    #[arg(long, value_enum, default_value_t = DebugConsole::Stderr)]
    debug_console: DebugConsole,
}

#[derive(Clone, Copy, ValueEnum)]
enum DebugConsole {
    Stderr,
    None,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("run: {e}");
            ExitCode::from(1)
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn run(args: Args) -> Result<ExitCode, String> {
    let firmware = match (&args.kernel, &args.bios) {
        (Some(k), None) => {
            let kernel = read(k)?;
            if machine::boot::multiboot::is_multiboot(&kernel)
                && machine::boot::linux::check_header(&kernel).is_err()
            {
                let mut modules = Vec::new();
                for m in args.initrd.iter().flat_map(|s| s.split(',')) {
                    let file = m.split_whitespace().next().unwrap_or(m);
                    modules.push((read(&PathBuf::from(file))?, m.to_string()));
                }
                Firmware::Multiboot {
                    kernel,
                    cmdline: format!("{} {}", k.display(), args.append),
                    modules,
                }
            } else {
                let initrd = match &args.initrd {
                    Some(p) => Some(read(&PathBuf::from(p))?),
                    None => None,
                };
                Firmware::Linux {
                    kernel,
                    initrd,
                    cmdline: args.append.clone(),
                }
            }
        }
        (None, Some(b)) => Firmware::Bios { image: read(b)? },
        _ => return Err("give --kernel FILE or --bios FILE (see --help)".into()),
    };
    let framebuffer = if args.framebuffer == "none" {
        None
    } else {
        let (w, h) = args
            .framebuffer
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .filter(|&(w, h): &(u16, u16)| (64..=4096).contains(&w) && (64..=4096).contains(&h))
            .ok_or("--framebuffer takes WIDTHxHEIGHT (64..4096 each) or none")?;
        Some(FramebufferConfig {
            width: w,
            height: h,
            memory: FramebufferMemory::Private,
        })
    };
    let stdio = args.serial == "stdio";
    let com1: machine::pc::SerialOut = match args.serial.as_str() {
        "stdio" => Box::new(std::io::stdout()),
        "none" => Box::new(std::io::sink()),
        path => {
            Box::new(std::fs::File::create(path).map_err(|e| format!("cannot create {path}: {e}"))?)
        }
    };
    let drives = drives(&args)?;
    let mut pc = Pc::new(PcConfig {
        ram_mib: args.mem,
        firmware,
        framebuffer,
        serial: [com1, Box::new(std::io::sink())],
        debug_console: match args.debug_console {
            DebugConsole::Stderr => Some(Box::new(std::io::stderr())),
            DebugConsole::None => None,
        },
        debug_exit: args.debug_exit,
        clock: None,
        port_hook: None,
        drives,
    })
    .map_err(|e| e.to_string())?;
    if stdio {
        let handle = pc.handle();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                handle.serial_input(0, &buf[..n]);
            }
        });
    }
    if let Some(secs) = args.watchdog {
        let handle = pc.handle();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
                handle.stop();
            }
        });
    }
    let start = std::time::Instant::now();
    let exit = loop {
        let exit = pc.run(args.max_instructions);
        if exit == PcExit::Stopped && args.watchdog.is_some() {
            eprintln!("run: watchdog\n{}", pc.debug_state());
            continue;
        }
        break exit;
    };
    let secs = start.elapsed().as_secs_f64();
    let _ = std::io::stdout().flush();
    let n = pc.cpu().instruction_count();
    eprintln!(
        "run: {exit:?} after {n} instructions in {secs:.2} s ({:.1} MIPS), EIP {:08x}",
        n as f64 / secs / 1e6,
        pc.cpu().eip()
    );
    if let Some(path) = &args.screenshot {
        let (w, h, stride, bytes) = pc.framebuffer().ok_or("--screenshot needs a framebuffer")?;
        write_png(path, w, h, stride, bytes)?;
    }
    Ok(match exit {
        PcExit::PowerOff | PcExit::HaltedForever | PcExit::Stopped => ExitCode::SUCCESS,
        PcExit::DebugExit(v) => ExitCode::from((((v << 1) | 1) & 0xFF) as u8),
        PcExit::TripleFault => ExitCode::from(3),
        PcExit::InstructionLimit => ExitCode::from(4),
    })
}

/// The IDE drives --disk, --disk-ro and --cdrom ask for.
fn drives(args: &Args) -> Result<Vec<DriveConfig>, String> {
    let open = |path: &PathBuf, write: bool| {
        std::fs::File::options()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    };
    let mut drives = Vec::new();
    if let Some(iso) = &args.cdrom {
        drives.push(DriveConfig {
            channel: 1,
            slave: false,
            kind: DriveKind::Cdrom,
            backend: Box::new(ReadOnly(open(iso, false)?)),
            model: "BULKHEAD CD-ROM".into(),
            serial: "BHCD0001".into(),
        });
    }
    let mut slots = [(0, false), (0, true), (1, false), (1, true)]
        .into_iter()
        .filter(|&(ch, slave)| !(args.cdrom.is_some() && ch == 1 && !slave));
    for (i, path) in args.disk.iter().enumerate() {
        let (channel, slave) = slots.next().ok_or("at most four IDE drives")?;
        let file = open(path, !args.disk_ro)?;
        let backend: Box<dyn BlockBackend> = if args.disk_ro {
            Box::new(ReadOnly(file))
        } else {
            Box::new(file)
        };
        drives.push(DriveConfig {
            channel,
            slave,
            kind: DriveKind::Disk,
            backend,
            model: "BULKHEAD HARDDISK".into(),
            serial: format!("BHHD{i:04}"),
        });
    }
    Ok(drives)
}

/// The framebuffer (x8r8g8b8) as an RGB PNG.
fn write_png(path: &PathBuf, w: u32, h: u32, stride: u32, px: &[u8]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        let row = &px[(y * stride) as usize..(y * stride + w * 4) as usize];
        for p in row.chunks_exact(4) {
            rgb.extend_from_slice(&[p[2], p[1], p[0]]);
        }
    }
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
    Ok(())
}
