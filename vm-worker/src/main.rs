//! bulkhead-worker: one sandboxed process per VM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use protocol::WorkerExit;
use vm_worker::sandbox::{self, CgroupPlan, Limits, Plan, Report, inside};
use vm_worker::vm::{self, SandboxChoice};

#[derive(Parser)]
#[command(name = "bulkhead-worker", about = "Bulkhead per-VM worker process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which sandbox protections this host provides (`bulkhead doctor`).
    Probe {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = sandbox::cgroup::DEFAULT_ROOT)]
        cgroup_root: PathBuf,
    },
    /// Enter the full sandbox, check from inside that it confines, and
    /// optionally attempt a forbidden syscall (which must trap: exit 67).
    SandboxCheck(CheckArgs),
    /// Run a VM from the fds the supervisor passed (fd 3: control socket;
    /// see protocol::fds for the rest).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Per-VM uid (default: ID_BASE + 0).
    #[arg(long, default_value_t = sandbox::ID_BASE)]
    uid: u32,
    /// Per-VM gid (default: same as uid).
    #[arg(long)]
    gid: Option<u32>,
    /// Cgroup name under bulkhead/ (default: worker-<pid>).
    #[arg(long)]
    cgroup: Option<String>,
    #[arg(long, default_value = sandbox::cgroup::DEFAULT_ROOT)]
    cgroup_root: PathBuf,
    /// Memory limit in bytes for the cgroup (default: guest RAM + 256 MiB).
    #[arg(long)]
    memory: Option<u64>,
    /// Start even if the host lacks protections (each one skipped is
    /// printed to stderr).
    #[arg(long)]
    allow_weaker: bool,
    /// TESTS ONLY: run the guest with no sandbox at all (for test hosts
    /// where the worker cannot be root). Prints a warning.
    #[arg(long, conflicts_with_all = ["uid", "gid", "cgroup", "memory", "allow_weaker"])]
    no_sandbox: bool,
    /// Run the guest's code through the CPU's JIT (faster; the seccomp
    /// filter then lets the JIT's code pages become executable).
    #[arg(long)]
    jit: bool,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Per-VM uid (default: ID_BASE + 0).
    #[arg(long, default_value_t = sandbox::ID_BASE)]
    uid: u32,
    /// Per-VM gid (default: same as uid).
    #[arg(long)]
    gid: Option<u32>,
    /// Cgroup name under bulkhead/ (default: check-<pid>).
    #[arg(long)]
    cgroup: Option<String>,
    #[arg(long, default_value = sandbox::cgroup::DEFAULT_ROOT)]
    cgroup_root: PathBuf,
    /// Memory limit in bytes for the cgroup.
    #[arg(long, default_value_t = 256 << 20)]
    memory: u64,
    /// Start even if the host lacks protections (recorded in the report).
    #[arg(long)]
    allow_weaker: bool,
    /// After the checks, attempt this forbidden syscall.
    #[arg(long, value_enum, default_value_t = Forbidden::None)]
    forbidden: Forbidden,
    /// After the checks, perform chaos action N (needs the `chaos` feature).
    #[arg(long)]
    chaos: Option<u32>,
    /// Fd the chaos device treats as the control socket.
    #[arg(long, default_value_t = 1)]
    control_fd: i32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Forbidden {
    None,
    Open,
    Socket,
    Execve,
    Ptrace,
    Kill,
}

/// What `sandbox-check` verified after seccomp went on.
#[derive(Serialize)]
struct Inside {
    pid: i32,
    seccomp_mode: i32,
    allocated_mib: usize,
    threads_joined: usize,
}

#[derive(Serialize)]
struct CheckOutput {
    sandbox: Report,
    inside: Inside,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Probe { json, cgroup_root } => probe(json, &cgroup_root),
        Command::SandboxCheck(args) => sandbox_check(&args),
        Command::Run(args) => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            eprintln!("bulkhead-worker: {e:#}");
            ExitCode::from(code.code() as u8)
        }
    }
}

/// An error and the worker exit code it maps to.
struct Failure(WorkerExit, anyhow::Error);

fn setup(e: anyhow::Error) -> Failure {
    Failure(WorkerExit::BadSetup, e)
}

fn probe(json: bool, cgroup_root: &std::path::Path) -> Result<(), Failure> {
    let host = sandbox::probe::probe_with(cgroup_root);
    if json {
        let text = serde_json::to_string_pretty(&host).map_err(|e| setup(e.into()))?;
        println!("{text}");
    } else {
        println!("{host}");
    }
    Ok(())
}

fn run(args: &RunArgs) -> Result<(), Failure> {
    let choice = if args.no_sandbox {
        SandboxChoice::None
    } else {
        SandboxChoice::Enter {
            uid: args.uid,
            gid: args.gid.unwrap_or(args.uid),
            cgroup_root: args.cgroup_root.clone(),
            cgroup: args
                .cgroup
                .clone()
                .unwrap_or_else(|| format!("worker-{}", std::process::id())),
            memory: args.memory,
            allow_weaker: args.allow_weaker,
            jit: args.jit,
        }
    };
    vm::run(&choice, args.jit).map_err(|e| Failure(e.exit(), e.into()))
}

fn sandbox_check(args: &CheckArgs) -> Result<(), Failure> {
    let mut plan = Plan::for_vm(0);
    plan.uid = args.uid;
    plan.gid = args.gid.unwrap_or(args.uid);
    plan.hostname = "bulkhead-check".into();
    plan.allow_weaker = args.allow_weaker;
    if args.control_fd >= 3 {
        plan.keep_fds.push(args.control_fd);
    }
    plan.cgroup = Some(CgroupPlan {
        root: args.cgroup_root.clone(),
        name: args
            .cgroup
            .clone()
            .unwrap_or_else(|| format!("check-{}", std::process::id())),
        limits: Limits {
            memory_bytes: args.memory,
            cpu_percent: 100,
            pids_max: 64,
        },
    });

    let report = sandbox::enter(&plan)
        .context("entering the sandbox")
        .map_err(|e| Failure(WorkerExit::SandboxFailed, e))?;

    // From here on: the real filter is in force.
    let inside = check_inside().map_err(|e| Failure(WorkerExit::SandboxFailed, e))?;
    let out = CheckOutput {
        sandbox: report,
        inside,
    };
    print_check(&out, args.json).map_err(setup)?;

    if let Some(n) = args.chaos {
        return chaos(n, args.control_fd).map_err(setup);
    }
    let err = match args.forbidden {
        Forbidden::None => return Ok(()),
        Forbidden::Open => inside::try_open("/etc/passwd"),
        Forbidden::Socket => inside::try_socket(),
        Forbidden::Execve => inside::try_execve("/bin/sh"),
        Forbidden::Ptrace => inside::try_ptrace(1),
        Forbidden::Kill => inside::try_kill(1),
    };
    Err(Failure(
        WorkerExit::SandboxFailed,
        anyhow::anyhow!("forbidden syscall was NOT trapped: {err}"),
    ))
}

/// Work a worker must still be able to do under the filter.
fn check_inside() -> Result<Inside> {
    let pid = inside::pid();
    let seccomp_mode = inside::seccomp_mode().context("PR_GET_SECCOMP")?;
    let mib = 32;
    let buf = std::hint::black_box(vec![1u8; mib << 20]);
    let sum: usize = buf.iter().step_by(4096).map(|&b| b as usize).sum();
    if sum != (mib << 20) / 4096 {
        bail!("allocation check failed");
    }
    drop(buf);
    let handles: Vec<_> = (0..2)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("check{i}"))
                .spawn(move || (0..1000u64).sum::<u64>() + i)
        })
        .collect::<std::io::Result<_>>()
        .context("spawning threads under the filter")?;
    let mut threads_joined = 0;
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?;
        threads_joined += 1;
    }
    Ok(Inside {
        pid,
        seccomp_mode,
        allocated_mib: mib,
        threads_joined,
    })
}

fn print_check(out: &CheckOutput, json: bool) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string(out)?)?;
    } else {
        let r = &out.sandbox;
        let c = &r.confinement;
        writeln!(stdout, "sandbox entered")?;
        writeln!(stdout, "  host uid/gid:      {}/{}", r.host_uid, r.host_gid)?;
        writeln!(stdout, "  uid/gid inside:    {}/{}", c.uid, c.gid)?;
        writeln!(stdout, "  pid:               {}", out.inside.pid)?;
        writeln!(stdout, "  namespaces:        {:?}", r.namespaces)?;
        writeln!(stdout, "  cgroup:            {:?}", r.cgroup)?;
        writeln!(stdout, "  hostname:          {}", c.hostname)?;
        writeln!(stdout, "  net interfaces:    {:?}", c.net_interfaces)?;
        writeln!(
            stdout,
            "  root:              {} entries, read-only {}",
            c.root_entries, c.root_read_only
        )?;
        writeln!(
            stdout,
            "  capabilities:      eff {:#x} perm {:#x} inh {:#x}, bounding dropped {}",
            c.cap_effective, c.cap_permitted, c.cap_inheritable, c.bounding_set_dropped
        )?;
        writeln!(stdout, "  no_new_privs:      {}", c.no_new_privs)?;
        writeln!(stdout, "  dumpable:          {}", c.dumpable)?;
        writeln!(stdout, "  seccomp mode:      {}", out.inside.seccomp_mode)?;
        for w in &r.weakened {
            writeln!(
                stdout,
                "  WEAKENED:          {} ({})",
                w.protection, w.error
            )?;
        }
    }
    // The SIGSYS handler exits without flushing stdio.
    stdout.flush()?;
    Ok(())
}

#[cfg(feature = "chaos")]
fn chaos(n: u32, control_fd: i32) -> Result<()> {
    use vm_worker::chaos::{ChaosAction, act};
    let action = ChaosAction::from_value(n).context("unknown chaos action")?;
    if control_fd < 0 {
        bail!("bad control fd {control_fd}");
    }
    act(action, inside::inherited_fd(control_fd)).context("chaos action returned")?;
    Ok(())
}

#[cfg(not(feature = "chaos"))]
fn chaos(_n: u32, _control_fd: i32) -> Result<()> {
    bail!("this worker was built without the `chaos` feature (tests only)")
}
