//! `bulkhead`: the supervisor daemon (`serve`), its command-line client
//! and `run` (one VM in the foreground, no daemon).
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 permission denied,
//! 5 conflict or quota (docs/api.md); `run` has its own (docs/run.md).

use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use serde_json::Value;

use protocol::DriveMedia;
use supervisor::api::{Request, VmInfo};
use supervisor::client::{Client, ClientError};
use supervisor::config::{self, RestartPolicy};
use supervisor::daemon;
use supervisor::drives::DriveDef;

#[derive(Parser)]
#[command(
    name = "bulkhead",
    about = "Bulkhead: many sandboxed x86 PCs on one host"
)]
struct Cli {
    /// The daemon's socket (default: $BULKHEAD_SOCKET, then
    /// /run/bulkhead/bulkhead.sock for root or $XDG_RUNTIME_DIR/bulkhead.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// State directory (default: /var/lib/bulkhead for root, else
        /// $XDG_STATE_HOME/bulkhead or ~/.local/state/bulkhead).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Let workers start on hosts lacking some sandbox protections
        /// (`bulkhead doctor` lists them). Never the default.
        #[arg(long)]
        allow_weaker_sandbox: bool,
        /// First per-VM uid/gid (VM slot n runs as BASE + n). Give each
        /// daemon on one host its own range.
        #[arg(long, default_value_t = 100_000)]
        uid_base: u32,
    },
    /// Run one VM in the foreground, without a daemon; COM1 is the terminal.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Create, inspect, check and convert disk images (VHD, raw).
    #[command(subcommand)]
    Disk(disk::cli::DiskCommand),
    /// Show which sandbox protections this host provides.
    Doctor {
        #[arg(long)]
        json: bool,
    },
}

const RUN_HELP: &str = "\
Serial console: on a terminal, COM1 is the terminal in raw mode (every key goes
to the guest). Escape key: Ctrl-] then q quits (the worker is shut down);
Ctrl-] Ctrl-] sends one Ctrl-]. When stdin is not a terminal, COM1
reads stdin and writes stdout unchanged (no escape key; EOF on stdin leaves the
guest running).

The worker is fully sandboxed, which needs root: it runs as a uid/gid of its
own (--uid) in the cgroup bulkhead/run-<pid>. Without root, `run` refuses and
names what is missing, unless --allow-weaker-sandbox.

Exit status (one line on stderr says why):
  0  the guest powered off
  1  error (unreadable images, no sandbox, stopped by a signal)
  2  usage (bad command line or values)
  3  the guest triple-faulted or halted with interrupts off
  4  the worker crashed or violated the sandbox (the reason names the syscall)
  5  quit with the escape key";

#[derive(clap::Args)]
struct RunArgs {
    /// The kernel: a bzImage or a Multiboot image.
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// At exit, save the last frame of the screen as this PNG.
    #[arg(long, value_name = "FILE.png")]
    screenshot: Option<PathBuf>,
    /// The worker's uid and gid (default: 150000 + pid % 50000).
    #[arg(long)]
    uid: Option<u32>,
    /// Run even where the full sandbox is not available (`bulkhead
    /// doctor` lists what is missing). Never the default.
    #[arg(long)]
    allow_weaker_sandbox: bool,
    /// A hard disk: PATH[,slot=SLOT][,ro][,undo=commit|discard] (raw or
    /// VHD; repeatable; slots fill primary-master, primary-slave,
    /// secondary-slave; undo runs on a throwaway differencing disk
    /// committed or discarded when the VM stops).
    #[arg(long = "disk", value_name = "PATH[,OPTS]", value_parser = disk_spec)]
    disks: Vec<DriveDef>,
    /// A CD-ROM: PATH[,slot=SLOT] (an ISO image; secondary-master first).
    #[arg(long = "cdrom", value_name = "PATH[,OPTS]", value_parser = cdrom_spec)]
    cdroms: Vec<DriveDef>,
    /// Run the guest's code through the CPU's JIT: about 1.5x faster on
    /// integer code; its seccomp filter lets the JIT's code pages become
    /// executable (off: no worker memory is ever executable).
    #[arg(long)]
    jit: bool,
}

fn disk_spec(s: &str) -> Result<DriveDef, String> {
    DriveDef::parse(s, DriveMedia::Disk)
}

fn cdrom_spec(s: &str) -> Result<DriveDef, String> {
    DriveDef::parse(s, DriveMedia::Cdrom)
}

#[derive(Subcommand)]
enum VmCommand {
    /// Define a VM (direct Linux boot).
    Create {
        name: String,
        /// Guest RAM in MiB.
        #[arg(long)]
        memory: u32,
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        append: String,
        #[arg(long, default_value = "no")]
        restart: RestartPolicy,
        /// Start with the daemon.
        #[arg(long)]
        autostart: bool,
        /// Run the guest's code through the CPU's JIT: about 1.5x faster on
        /// integer code; its seccomp filter lets the JIT's code pages become
        /// executable (off: no worker memory is ever executable).
        #[arg(long)]
        jit: bool,
        /// A hard disk: PATH[,slot=SLOT][,ro][,undo=commit|discard] (raw or
        /// VHD; repeatable; slots fill primary-master, primary-slave,
        /// secondary-slave; undo runs on a throwaway differencing disk
        /// committed or discarded when the VM stops).
        #[arg(long = "disk", value_name = "PATH[,OPTS]", value_parser = disk_spec)]
        disks: Vec<DriveDef>,
        /// A CD-ROM: PATH[,slot=SLOT] (an ISO image; secondary-master first).
        #[arg(long = "cdrom", value_name = "PATH[,OPTS]", value_parser = cdrom_spec)]
        cdroms: Vec<DriveDef>,
        #[arg(long)]
        json: bool,
    },
    /// List VMs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one VM.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Start {
        name: String,
    },
    /// Press the power button; kill after the timeout.
    Stop {
        name: String,
        /// Kill right away.
        #[arg(long)]
        force: bool,
        /// Seconds to wait before killing (default: the daemon's policy).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Kill the worker now (no restart).
    Kill {
        name: String,
    },
    Reset {
        name: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Delete a stopped VM's definition.
    Rm {
        name: String,
    },
    /// Print the serial log.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Save the screen as PNG.
    Screenshot {
        name: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Attach to COM1 (detach with Ctrl-]).
    Console {
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Run(args) => return run_foreground(args),
        Command::Disk(cmd) => return disk::cli::run(cmd),
        command => command,
    };
    match run(cli.socket, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            let code = e
                .downcast_ref::<ClientError>()
                .map(|c| match c {
                    ClientError::Api(api) => api.kind.exit_code(),
                    _ => 1,
                })
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}

fn run(socket_arg: Option<PathBuf>, command: Command) -> Result<()> {
    let socket = config::client_socket(socket_arg.clone());
    match command {
        Command::Serve {
            state_dir,
            allow_weaker_sandbox,
            uid_base,
        } => {
            let opts = daemon::Options {
                state_dir: state_dir.unwrap_or_else(config::default_state_dir),
                socket: socket_arg.unwrap_or_else(config::default_socket),
                allow_weaker_sandbox,
                uid_base,
                worker: supervisor::worker::find_worker(),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(daemon::serve(opts)).map_err(|e| anyhow!(e))
        }
        // `main` runs it: its exit status is its own.
        Command::Run(_) => Err(anyhow!("`run` is not a client command")),
        Command::Disk(_) => Err(anyhow!("`disk` is not a client command")),
        Command::Doctor { json } => doctor(json),
        Command::Vm(cmd) => vm(&socket, cmd),
    }
}

/// `bulkhead run`: its exit status is its own (`RUN_HELP`).
fn run_foreground(args: RunArgs) -> ExitCode {
    let code = supervisor::run::run(supervisor::run::RunOptions {
        kernel: args.kernel,
        initrd: args.initrd,
        append: args.append,
        memory_mib: args.memory,
        screenshot: args.screenshot,
        uid: args.uid,
        allow_weaker_sandbox: args.allow_weaker_sandbox,
        worker: supervisor::worker::find_worker(),
        drives: args.disks.into_iter().chain(args.cdroms).collect(),
        jit: args.jit,
    });
    ExitCode::from(code as u8)
}

fn call(socket: &Path, req: &Request) -> Result<Value> {
    let mut client = Client::connect(socket)?;
    Ok(client.call(req)?)
}

fn absolute(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    Ok(abs.display().to_string())
}

fn vm(socket: &Path, cmd: VmCommand) -> Result<()> {
    let simple = |req: Request| -> Result<()> {
        call(socket, &req)?;
        Ok(())
    };
    match cmd {
        VmCommand::Create {
            name,
            memory,
            kernel,
            initrd,
            append,
            restart,
            autostart,
            jit,
            disks,
            cdroms,
            json,
        } => {
            let drives = disks
                .into_iter()
                .chain(cdroms)
                .map(|d| {
                    Ok(DriveDef {
                        path: absolute(&d.path)?.into(),
                        ..d
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let reply = call(
                socket,
                &Request::Create {
                    name: name.clone(),
                    memory_mib: memory,
                    kernel: absolute(&kernel)?,
                    initrd: initrd.as_deref().map(absolute).transpose()?,
                    append,
                    restart,
                    autostart,
                    jit,
                    drives,
                },
            )?;
            if json {
                println!("{}", reply["vm"]);
            } else {
                println!("created {name}; start it with `bulkhead vm start {name}`");
            }
            Ok(())
        }
        VmCommand::List { json } => {
            let reply = call(socket, &Request::List {})?;
            if json {
                println!("{}", reply["vms"]);
                return Ok(());
            }
            let vms: Vec<VmInfo> = serde_json::from_value(reply["vms"].clone())?;
            println!(
                "{:<20} {:<9} {:>8} {:>7} {:<10} {:>9} {:>8}  LAST EXIT",
                "NAME", "STATE", "PID", "MEMORY", "RESTART", "UPTIME", "RESTARTS"
            );
            for v in vms {
                println!(
                    "{:<20} {:<9} {:>8} {:>6}M {:<10} {:>9} {:>8}  {}",
                    v.name,
                    v.state,
                    v.pid.map_or("-".into(), |p| p.to_string()),
                    v.memory_mib,
                    v.restart.to_string(),
                    v.uptime_ms.map_or("-".into(), uptime),
                    v.restarts,
                    v.last_exit.map_or("-".into(), |e| e.reason),
                );
            }
            Ok(())
        }
        VmCommand::Info { name, json } => {
            let reply = call(socket, &Request::Info { name })?;
            if json {
                println!("{}", reply["vm"]);
                return Ok(());
            }
            let v: VmInfo = serde_json::from_value(reply["vm"].clone())?;
            println!("name:      {}", v.name);
            println!("state:     {}", v.state);
            println!("owner uid: {}", v.owner_uid);
            println!("memory:    {} MiB", v.memory_mib);
            println!("kernel:    {}", v.kernel);
            for d in &v.drives {
                let mut opts = String::new();
                if d.read_only {
                    opts.push_str(", read-only");
                }
                if let Some(undo) = d.undo {
                    opts.push_str(&format!(", undo {undo:?}").to_lowercase());
                }
                println!(
                    "drive:     {} {}: {}{opts}",
                    d.slot.map_or("-".into(), |s| s.to_string()),
                    if d.media == DriveMedia::Cdrom {
                        "cdrom"
                    } else {
                        "disk"
                    },
                    d.path.display()
                );
            }
            if let Some(i) = &v.initrd {
                println!("initrd:    {i}");
            }
            println!("append:    {}", v.append);
            println!("restart:   {} (autostart: {})", v.restart, v.autostart);
            println!("cpu:       {}", if v.jit { "jit" } else { "interpreter" });
            if let Some(pid) = v.pid {
                println!("pid:       {pid}");
            }
            if let Some(ms) = v.uptime_ms {
                println!("uptime:    {}", uptime(ms));
            }
            println!("restarts:  {}", v.restarts);
            if let Some(e) = &v.last_exit {
                println!("last exit: {}", e.reason);
            }
            if let Some(c) = &v.last_crash {
                println!("last crash: {}", c.exit.reason);
                println!("  serial:     {}", c.serial_log);
                if let Some(s) = &c.screenshot {
                    println!("  screenshot: {s}");
                }
            }
            Ok(())
        }
        VmCommand::Start { name } => {
            let reply = call(socket, &Request::Start { name: name.clone() })?;
            println!("started {name} (worker pid {})", reply["pid"]);
            Ok(())
        }
        VmCommand::Stop {
            name,
            force,
            timeout,
        } => simple(Request::Stop {
            name,
            force,
            timeout_ms: timeout.map(|s| s.saturating_mul(1000)),
        }),
        VmCommand::Kill { name } => simple(Request::Kill { name }),
        VmCommand::Reset { name } => simple(Request::Reset { name }),
        VmCommand::Pause { name } => simple(Request::Pause { name }),
        VmCommand::Resume { name } => simple(Request::Resume { name }),
        VmCommand::Rm { name } => simple(Request::Remove { name }),
        VmCommand::Logs { name, follow } => logs(socket, name, follow),
        VmCommand::Screenshot { name, output } => {
            let reply = call(socket, &Request::Screenshot { name })?;
            let png = reply["png_base64"]
                .as_str()
                .and_then(supervisor::base64::decode)
                .ok_or_else(|| anyhow!("the daemon sent no PNG"))?;
            std::fs::write(&output, png).with_context(|| output.display().to_string())?;
            Ok(())
        }
        VmCommand::Console { name } => console(socket, name),
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn logs(socket: &Path, name: String, follow: bool) -> Result<()> {
    let mut client = Client::connect(socket)?;
    let reply = client.call(&Request::Logs { name, follow })?;
    let mut out = std::io::stdout().lock();
    out.write_all(reply["data"].as_str().unwrap_or("").as_bytes())?;
    out.flush()?;
    if follow {
        let (mut reader, _writer) = client.into_parts();
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                out.write_all(v["serial"].as_str().unwrap_or("").as_bytes())?;
                out.flush()?;
            }
            line.clear();
        }
    }
    Ok(())
}

/// Ctrl-] detaches.
const DETACH: u8 = 0x1d;

fn console(socket: &Path, name: String) -> Result<()> {
    let mut client = Client::connect(socket)?;
    client.call(&Request::Console { name: name.clone() })?;
    eprintln!("attached to {name}; detach with Ctrl-]\r");
    let (mut reader, mut writer) = client.into_parts();
    let raw = supervisor::RawTerminal::enter(std::io::stdin().as_raw_fd());
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let input = &buf[..n];
        let (input, detach) = match input.iter().position(|&b| b == DETACH) {
            Some(i) => (&input[..i], true),
            None => (input, false),
        };
        writer.write_all(input)?;
        if detach {
            break;
        }
    }
    drop(raw);
    eprintln!("\ndetached from {name}");
    Ok(())
}

fn doctor(json: bool) -> Result<()> {
    let worker = supervisor::worker::find_worker();
    let mut cmd = std::process::Command::new(&worker);
    cmd.arg("probe");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().with_context(|| {
        format!(
            "running {} probe (set BULKHEAD_WORKER to the worker binary)",
            worker.display()
        )
    })?;
    if !out.status.success() {
        return Err(anyhow!(
            "{} probe failed: {}",
            worker.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if json {
        let probe: Value = serde_json::from_slice(&out.stdout).context("probe output")?;
        println!(
            "{}",
            serde_json::json!({"worker": worker.display().to_string(), "probe": probe})
        );
    } else {
        println!("worker: {}", worker.display());
        std::io::stdout().write_all(&out.stdout)?;
        println!(
            "VMs start only with every protection present, unless the daemon runs with --allow-weaker-sandbox."
        );
    }
    Ok(())
}
