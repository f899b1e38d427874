//! CPU conformance against hardware-generated vectors (SingleStepTests, the
//! MOO format; see `shared/testdata/README.md`).
//!
//! Each vector gives a real-mode CPU state and memory, one instruction
//! followed by HLT, and the state a real chip reached. The runner loads the
//! state into a fresh 16 MiB machine, runs to the HLT (within a small
//! instruction budget, so a CPU bug cannot hang the suite), and compares
//! registers and memory with the undefined flags masked out.
//!
//! One test per suite. Results are printed per opcode file on every run
//! (and written to `conformance-<suite>.txt` in Cargo's test temporary
//! directory), and the overall pass rate must reach the suite's threshold.
//!
//! Environment:
//! - `BULKHEAD_CPU_VECTORS=<dir>`: the directory holding `ss286/` and
//!   `ss386-sample/` (default: `shared/testdata` beside the checkout);
//! - `BULKHEAD_CONFORMANCE_FILTER=<prefixes>`: run only the opcode files
//!   whose names start with one of these (comma or space separated, e.g.
//!   `00,80.,F6.6`);
//! - `BULKHEAD_CONFORMANCE_MIN_RATE=<fraction>`: override the threshold
//!   (e.g. `1.0` while working on a filtered subset);
//! - `BULKHEAD_CONFORMANCE_VERBOSE=1`: print every failing vector;
//! - `BULKHEAD_CONFORMANCE_TRACE=1`: print every instruction executed
//!   (with a filter naming one file);
//! - `BULKHEAD_TEST_JIT=1`: run with the JIT compiling every block (and
//!   no trace hook, which would keep the JIT off), as the
//!   `_through_the_jit` tests always do.
//!
//! Vectors of 286-only behaviour are skipped and counted apart: a LOCK
//! prefix the 286 ignores where later CPUs raise #UD, instructions longer
//! than the 286's 10-byte limit, MOV to and from FS/GS (#UD on the 286),
//! #GP for SS limit violations (#SS on later CPUs) and string words at
//! offset FFFF, where the 286 wraps or faults late and later CPUs fault. FPU escapes are run but not rated
//! (the 286 ran them without a coprocessor).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use machine::{Cpu, NullBus, PhysMemory, RunExit, Seg, SegCache, Signals, reg};

/// Minimum pass rate over the 80286 real-mode suite (the integer
/// instruction set's acceptance target).
const SS286_MIN_PASS_RATE: f64 = 0.995;
/// Minimum pass rate over the 80386 sample (ADD r/m8, r8, 32-bit registers).
const SS386_MIN_PASS_RATE: f64 = 1.0;

/// Instructions a vector may retire before it counts as hung (REP with
/// CX < 128, the instruction, the HLT and an exception handler fit).
const BUDGET: u64 = 1000;
const RAM: u64 = 16 << 20;

/// FLAGS bits compared in real mode: the 286 keeps bits 12-15 clear there
/// (the suite says to mask them) and bits 1, 3, 5 are fixed.
const REAL_FLAGS: u32 = 0x0FD5;

#[test]
fn ss286_real_mode() {
    run_suite("ss286", SS286_MIN_PASS_RATE);
}

#[test]
fn ss386_sample() {
    run_suite("ss386-sample", SS386_MIN_PASS_RATE);
}

/// The same vectors with the JIT compiling every block at its first run
/// (without the trace hook, which keeps the JIT off: fault loops are left
/// to the watchdog).
#[test]
fn ss286_real_mode_through_the_jit() {
    JIT.with(|j| j.set(true));
    run_suite("ss286", SS286_MIN_PASS_RATE);
}

#[test]
fn ss386_sample_through_the_jit() {
    JIT.with(|j| j.set(true));
    run_suite("ss386-sample", SS386_MIN_PASS_RATE);
}

thread_local! {
    /// Run this thread's vectors through the JIT (see the `_through_the_jit` tests).
    static JIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// ---- the MOO format ----

/// Iterates over `tag, payload` chunks; stops at a truncated chunk.
fn chunks(mut b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 8 {
            return None;
        }
        let tag: [u8; 4] = b[..4].try_into().ok()?;
        let n = u32::from_le_bytes(b[4..8].try_into().ok()?) as usize;
        let payload = b.get(8..8 + n)?;
        b = &b[8 + n..];
        Some((tag, payload))
    })
}

fn u16_at(b: &[u8], o: usize) -> u32 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u32
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

const REGS16: [&str; 14] = [
    "ax", "bx", "cx", "dx", "cs", "ss", "ds", "es", "sp", "bp", "si", "di", "ip", "flags",
];
const REGS32: [&str; 20] = [
    "cr0", "cr3", "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "cs", "ds", "es", "fs",
    "gs", "ss", "eip", "eflags", "dr6", "dr7",
];

/// A register file or memory image as a vector lists it.
#[derive(Clone, Debug, Default)]
struct State {
    regs: Vec<(&'static str, u32)>,
    ram: Vec<(u32, u8)>,
}

impl State {
    fn parse(b: &[u8]) -> State {
        let mut s = State::default();
        for (tag, p) in chunks(b) {
            match &tag {
                b"REGS" => {
                    let mask = u16_at(p, 0);
                    let mut o = 2;
                    for (i, name) in REGS16.iter().enumerate() {
                        if mask & (1 << i) != 0 {
                            s.regs.push((name, u16_at(p, o)));
                            o += 2;
                        }
                    }
                }
                b"RG32" => {
                    let mask = u32_at(p, 0);
                    let mut o = 4;
                    for (i, name) in REGS32.iter().enumerate() {
                        if mask & (1 << i) != 0 {
                            s.regs.push((name, u32_at(p, o)));
                            o += 4;
                        }
                    }
                }
                b"RAM " => {
                    let n = u32_at(p, 0) as usize;
                    s.ram = (0..n)
                        .map(|i| (u32_at(p, 4 + 5 * i), p[8 + 5 * i]))
                        .collect();
                }
                _ => {}
            }
        }
        s
    }
}

#[derive(Debug)]
struct Vector {
    index: u32,
    name: String,
    bytes: Vec<u8>,
    init: State,
    fina: State,
    /// Exception vector and the address of the FLAGS word it pushed.
    excp: Option<(u8, u32)>,
    hash: String,
}

/// The CPU mode a file's vectors run in (its `META` chunk): 0 is real mode.
fn file_mode(raw: &[u8]) -> u8 {
    chunks(raw)
        .find(|(tag, _)| tag == b"META")
        .and_then(|(_, p)| p.get(27).copied())
        .unwrap_or(0)
}

/// The vectors of a file, or the file's CPU mode when it is not real mode
/// (the only mode this runner sets up).
fn parse_file(path: &Path) -> Result<Vec<Vector>, u8> {
    let mut raw = Vec::new();
    GzDecoder::new(std::fs::File::open(path).expect("open vector file"))
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{}: not a gzip file: {e}", path.display()));
    let mode = file_mode(&raw);
    if mode != 0 {
        return Err(mode);
    }
    let mut out = Vec::new();
    for (tag, p) in chunks(&raw) {
        if &tag != b"TEST" || p.len() < 4 {
            continue;
        }
        let mut v = Vector {
            index: u32_at(p, 0),
            name: String::new(),
            bytes: Vec::new(),
            init: State::default(),
            fina: State::default(),
            excp: None,
            hash: String::new(),
        };
        for (tag, q) in chunks(&p[4..]) {
            match &tag {
                b"NAME" => v.name = String::from_utf8_lossy(&q[4..]).into_owned(),
                b"BYTS" => v.bytes = q[4..].to_vec(),
                b"INIT" => v.init = State::parse(q),
                b"FINA" => v.fina = State::parse(q),
                b"EXCP" if q.len() >= 5 => v.excp = Some((q[0], u32_at(q, 1))),
                b"HASH" => v.hash = q.iter().map(|b| format!("{b:02x}")).collect(),
                _ => {}
            }
        }
        out.push(v);
    }
    Ok(out)
}

// ---- running one vector ----

fn seg_of(name: &str) -> Option<Seg> {
    Some(match name {
        "es" => Seg::ES,
        "cs" => Seg::CS,
        "ss" => Seg::SS,
        "ds" => Seg::DS,
        "fs" => Seg::FS,
        "gs" => Seg::GS,
        _ => return None,
    })
}

fn gpr_of(name: &str) -> Option<usize> {
    Some(match name.trim_start_matches('e') {
        "ax" => reg::EAX,
        "cx" => reg::ECX,
        "dx" => reg::EDX,
        "bx" => reg::EBX,
        "sp" => reg::ESP,
        "bp" => reg::EBP,
        "si" => reg::ESI,
        "di" => reg::EDI,
        _ => return None,
    })
}

/// Loads a register named as the vectors name them; control and debug
/// registers are left at their real-mode defaults.
fn load_reg(cpu: &mut Cpu, name: &str, v: u32) {
    if let Some(s) = seg_of(name) {
        cpu.set_seg_cache(s, SegCache::real_mode(v as u16));
    } else if let Some(r) = gpr_of(name) {
        cpu.set_gpr(r, v);
    } else if name == "ip" || name == "eip" {
        cpu.set_eip(v);
    } else if name == "flags" || name == "eflags" {
        cpu.set_eflags(v & 0x0FFF);
    }
}

/// Reads a register back at the width the vector uses; `None` for the ones
/// not compared.
fn read_reg(cpu: &Cpu, name: &str, wide: bool) -> Option<u32> {
    let width = if wide { u32::MAX } else { 0xFFFF };
    if let Some(s) = seg_of(name) {
        Some(cpu.seg(s).selector as u32)
    } else if let Some(r) = gpr_of(name) {
        Some(cpu.gpr(r) & width)
    } else if name == "ip" || name == "eip" {
        Some(cpu.eip() & width)
    } else if name == "flags" || name == "eflags" {
        Some(cpu.eflags())
    } else {
        None
    }
}

thread_local! {
    /// Set while a vector runs: a panic then is recorded here instead of printed.
    static CATCHING: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records panics raised inside a vector
/// and leaves every other panic to the default hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let caught = CATCHING.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(msg) => {
                        *msg = info.to_string();
                        true
                    }
                    None => false,
                }
            });
            if !caught {
                default(info);
            }
        }));
    });
}

/// Wall-clock limit for one vector, a backstop for loops the attempt
/// budget cannot see (a fault raised before the trace hook runs).
const WATCHDOG: Duration = Duration::from_secs(2);

/// The running vectors' STOP lines and deadlines, one per test thread.
static WATCHED: Mutex<Vec<(std::thread::ThreadId, Signals, Instant)>> = Mutex::new(Vec::new());

/// Arms (with the CPU's signal lines) or disarms the watchdog for this
/// thread's vector; the first call starts the watchdog thread.
fn watchdog_arm(signals: Option<Signals>) {
    static START: Once = Once::new();
    START.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let now = Instant::now();
                let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
                for (_, s, deadline) in watched.iter() {
                    if now > *deadline {
                        s.raise(Signals::STOP);
                    }
                }
            }
        });
    });
    let me = std::thread::current().id();
    let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    watched.retain(|(t, _, _)| *t != me);
    if let Some(s) = signals {
        watched.push((me, s, Instant::now() + WATCHDOG));
    }
}

/// Runs one vector; `Err` names the first difference.
fn run_vector(v: &Vector, flags_mask: u32) -> Result<(), String> {
    CATCHING.with(|c| *c.borrow_mut() = Some(String::new()));
    let r = panic::catch_unwind(AssertUnwindSafe(|| execute(v, flags_mask)));
    let msg = CATCHING.with(|c| c.borrow_mut().take()).unwrap_or_default();
    r.unwrap_or_else(|_| Err(format!("CPU panicked: {msg}")))
}

fn execute(v: &Vector, flags_mask: u32) -> Result<(), String> {
    let wide = v.init.regs.iter().any(|(n, _)| n.starts_with('e'));
    let mem = PhysMemory::new(RAM).map_err(|e| e.to_string())?;
    let mut cpu = Cpu::new(mem, Box::new(NullBus));
    for &(name, value) in &v.init.regs {
        load_reg(&mut cpu, name, value);
    }
    for &(addr, b) in &v.init.ram {
        cpu.write_phys_bytes(addr, &[b]);
    }

    // Faulting instructions retire nothing, so a fault loop never uses up
    // `run`'s budget: count attempts in the trace hook and stop the CPU
    // through its STOP line. The watchdog catches loops outside the hook.
    let signals = cpu.signals();
    let stopper = signals.clone();
    let mut attempts = 0u64;
    let trace = std::env::var_os("BULKHEAD_CONFORMANCE_TRACE").is_some();
    // Every block compiled. The JIT runs only without a trace hook, so
    // fault loops are then left to the watchdog.
    let jit =
        JIT.with(|j| j.get()) || std::env::var_os("BULKHEAD_TEST_JIT").is_some_and(|v| v != "0");
    if jit {
        cpu.set_jit(true);
        cpu.set_jit_threshold(0);
    }
    cpu.set_trace((!jit).then(|| -> machine::TraceHook {
        Box::new(move |cpu, i| {
            if trace {
                println!(
                    "    {:04x}:{:04x} {i} (flags {:04x}, sp {:04x})",
                    cpu.seg(Seg::CS).selector,
                    cpu.eip(),
                    cpu.eflags(),
                    cpu.gpr(reg::ESP)
                );
            }
            attempts += 1;
            if attempts > BUDGET {
                stopper.raise(Signals::STOP);
            }
        })
    }));
    watchdog_arm(Some(signals));
    let mut left = BUDGET;
    loop {
        let before = cpu.instruction_count();
        let exit = cpu.run(left);
        left = left.saturating_sub(cpu.instruction_count() - before);
        match exit {
            RunExit::Halted | RunExit::HaltedInterruptsDisabled => break,
            RunExit::BudgetExhausted if left > 0 => continue,
            other => {
                watchdog_arm(None);
                return Err(format!(
                    "did not reach the HLT: {other:?} at {:04x}:{:04x}",
                    cpu.seg(Seg::CS).selector,
                    cpu.eip()
                ));
            }
        }
    }
    watchdog_arm(None);

    // Registers: INIT overridden by FINA; everything not listed in FINA is unchanged.
    let mut want: Vec<(&str, u32)> = v.init.regs.clone();
    for &(name, value) in &v.fina.regs {
        match want.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => want.push((name, value)),
        }
    }
    let fmask = flags_mask & REAL_FLAGS;
    for &(name, value) in &want {
        let Some(got) = read_reg(&cpu, name, wide) else {
            continue;
        };
        let (got, value) = if name.ends_with("flags") {
            (got & fmask, value & fmask)
        } else {
            (got, value)
        };
        if got != value {
            return Err(if name.ends_with("flags") {
                format!(
                    "{name}: got {got:#06x}, want {value:#06x} (diff {:#06x})",
                    got ^ value
                )
            } else {
                format!("{name}: got {got:#x}, want {value:#x}")
            });
        }
    }

    // Memory: every byte either vector state names.
    let mut ram: BTreeMap<u32, u8> = v.init.ram.iter().copied().collect();
    ram.extend(v.fina.ram.iter().copied());
    // The FLAGS word an exception pushed: at SS:SP-2 of the initial state
    // (the vectors' EXCP address is rounded down to even, so it is
    // computed here), compared with the undefined flags masked.
    let init = |name: &str| v.init.regs.iter().find(|(n, _)| *n == name).map(|r| r.1);
    let flags_at = match (v.excp, init("ss"), init("sp").or(init("esp"))) {
        (Some(_), Some(ss), Some(sp)) => {
            let base = (ss & 0xFFFF) << 4;
            Some([
                base + (sp.wrapping_sub(2) & 0xFFFF),
                base + (sp.wrapping_sub(1) & 0xFFFF),
            ])
        }
        _ => None,
    };
    for (&addr, &value) in &ram {
        let mut got = [0u8];
        cpu.read_phys_bytes(addr, &mut got);
        let (got, want, what) = match flags_at.and_then(|f| f.iter().position(|&a| a == addr)) {
            Some(half) => {
                let m = (fmask >> (8 * half)) as u8;
                (got[0] & m, value & m, "pushed FLAGS ")
            }
            None => (got[0], value, ""),
        };
        if got != want {
            return Err(format!(
                "{what}memory {addr:#07x}: got {got:#04x}, want {want:#04x}"
            ));
        }
    }
    Ok(())
}

// ---- what the 286 does and a Pentium II does not ----

/// Mnemonics that take a LOCK prefix with a memory destination (386 and later).
fn lockable(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Add | Adc
            | And
            | Btc
            | Btr
            | Bts
            | Cmpxchg
            | Cmpxchg8b
            | Dec
            | Inc
            | Neg
            | Not
            | Or
            | Sbb
            | Sub
            | Xor
            | Xadd
            | Xchg
    )
}

/// Why a vector records 286-only behaviour, if it does: the 286 ignores a
/// misplaced LOCK prefix (later CPUs raise #UD), limits instructions to
/// 10 bytes (later CPUs to 15), has no FS and GS, raises #GP where later
/// CPUs raise #SS (an operand or a stack word at SS:FFFF), and wraps a
/// string instruction's word at offset FFFF or faults on it only after
/// updating SI/DI, where later CPUs fault with SI/DI unchanged.
fn not_applicable(v: &Vector) -> Option<&'static str> {
    let mut dec = Decoder::new(16, &v.bytes, DecoderOptions::NO_INVALID_CHECK);
    let i = dec.decode();
    if i.has_lock_prefix() && (!lockable(i.mnemonic()) || i.op0_kind() != OpKind::Memory) {
        return Some("LOCK on an instruction that cannot be locked (#UD from the 386 on)");
    }
    if i.len() > 10 {
        return Some("longer than the 286's 10-byte instruction limit");
    }
    if (0..i.op_count()).any(|n| {
        i.op_kind(n) == OpKind::Register && matches!(i.op_register(n), Register::FS | Register::GS)
    }) {
        return Some("FS or GS, which the 286 does not have (#UD there)");
    }
    let init = |name: &str| {
        v.init
            .regs
            .iter()
            .find(|(n, _)| n.trim_start_matches('e') == name)
            .map_or(0, |r| r.1 & 0xFFFF)
    };
    let gp = v.excp.is_some_and(|(vector, _)| vector == 13);
    let ss_operand = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory)
        && i.memory_segment() == Register::SS;
    let stack_edge = i.is_stack_instruction()
        && (matches!(init("sp"), 1 | 0xFFFF)
            || (i.mnemonic() == Mnemonic::Leave && init("bp") == 0xFFFF));
    if gp && (ss_operand || stack_edge) {
        return Some("#GP for an SS limit violation (#SS from the 386 on)");
    }
    if string_word_at_ffff(&i, &init) {
        return Some("a string word at offset FFFF (the 286 wraps or faults after updating SI/DI)");
    }
    None
}

/// Whether a word string instruction touches a word at offset 0xFFFF of
/// its SI or DI operand in any of its iterations.
fn string_word_at_ffff(i: &Instruction, init: &dyn Fn(&str) -> u32) -> bool {
    if i.memory_size().size() != 2 {
        return false;
    }
    let count = if i.has_rep_prefix() || i.has_repne_prefix() {
        init("cx")
    } else {
        1
    };
    let step: u32 = if init("flags") & 0x400 != 0 {
        0xFFFE
    } else {
        2
    };
    (0..i.op_count()).any(|n| {
        let start = match i.op_kind(n) {
            OpKind::MemorySegSI => init("si"),
            OpKind::MemoryESDI => init("di"),
            _ => return false,
        };
        (0..count).any(|k| start.wrapping_add(k.wrapping_mul(step)) & 0xFFFF == 0xFFFF)
    })
}

// ---- a suite ----

#[derive(Default)]
struct OpcodeStats {
    total: usize,
    passed: usize,
    revoked: usize,
    /// Vectors of 286-only behaviour this Pentium II-class CPU does not share.
    not_applicable: usize,
    /// Counted in the pass rate (not an FPU escape, which the 286 ran without a coprocessor).
    rated: bool,
    first_failure: Option<String>,
}

fn vectors_root() -> PathBuf {
    match std::env::var_os("BULKHEAD_CPU_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

/// Opcode metadata for a file stem such as `00`, `80.1` or `F6.6`:
/// (flags mask, counted in the pass rate).
fn opcode_meta(meta: &serde_json::Value, stem: &str) -> (u32, bool) {
    let (op, ext) = match stem.split_once('.') {
        Some((op, ext)) => (op, Some(ext)),
        None => (stem, None),
    };
    let mut entry = &meta["opcodes"][op];
    if let Some(ext) = ext {
        entry = &entry["reg"][ext];
    }
    let mask = entry["flags-mask"].as_u64().unwrap_or(0xFFFF) as u32;
    let rated = entry["status"].as_str() != Some("fpu");
    (mask, rated)
}

fn run_suite(suite: &str, default_min: f64) {
    install_panic_hook();
    let dir = vectors_root().join(suite);
    assert!(
        dir.is_dir(),
        "CPU conformance vectors not found at {}: this test needs the SingleStepTests \
         vectors in shared/testdata beside the checkout (or BULKHEAD_CPU_VECTORS=<dir> \
         naming a directory that holds {suite}/)",
        dir.display()
    );
    let meta: serde_json::Value = std::fs::read_to_string(dir.join("metadata.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let revoked: HashSet<String> = std::fs::read_to_string(dir.join("revocation_list.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_ascii_lowercase())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let filter: Vec<String> = std::env::var("BULKHEAD_CONFORMANCE_FILTER")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_uppercase())
        .collect();
    let verbose = std::env::var_os("BULKHEAD_CONFORMANCE_VERBOSE").is_some();
    let min_rate = std::env::var("BULKHEAD_CONFORMANCE_MIN_RATE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(default_min);

    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("read vector directory")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let stem = path.file_name()?.to_str()?.strip_suffix(".MOO.gz")?;
            Some((stem.to_ascii_uppercase(), path))
        })
        .filter(|(stem, _)| filter.is_empty() || filter.iter().any(|f| stem.starts_with(f)))
        .collect();
    files.sort();
    if files.is_empty() {
        assert!(!filter.is_empty(), "no vector files in {}", dir.display());
        println!("{suite}: no files match the filter {filter:?}");
        return;
    }

    let mut stats: BTreeMap<String, OpcodeStats> = BTreeMap::new();
    for (stem, path) in &files {
        let (mask, rated) = opcode_meta(&meta, stem);
        let s = stats.entry(stem.clone()).or_default();
        s.rated = rated;
        let vectors = match parse_file(path) {
            Ok(v) => v,
            Err(mode) => {
                s.first_failure = Some(format!(
                    "skipped: CPU mode {mode}, the runner sets up real mode only"
                ));
                continue;
            }
        };
        for v in vectors {
            if revoked.contains(&v.hash) {
                s.revoked += 1;
                continue;
            }
            if let Some(why) = not_applicable(&v) {
                s.not_applicable += 1;
                if verbose {
                    println!("  n/a {stem} #{} `{}`: {why}", v.index, v.name);
                }
                continue;
            }
            s.total += 1;
            match run_vector(&v, mask) {
                Ok(()) => s.passed += 1,
                Err(why) => {
                    let bytes: Vec<String> = v.bytes.iter().map(|b| format!("{b:02x}")).collect();
                    let line = format!("#{} `{}` [{}]: {why}", v.index, v.name, bytes.join(" "));
                    if verbose {
                        println!("  FAIL {stem} {line}");
                    }
                    s.first_failure.get_or_insert(line);
                }
            }
        }
    }

    let (mut total, mut passed, mut revoked_n, mut na) = (0, 0, 0, 0);
    for s in stats.values().filter(|s| s.rated) {
        total += s.total;
        passed += s.passed;
        revoked_n += s.revoked;
        na += s.not_applicable;
    }
    let rate = if total == 0 {
        1.0
    } else {
        passed as f64 / total as f64
    };
    let mut report = String::new();
    let clean = stats
        .values()
        .filter(|s| s.passed == s.total && s.first_failure.is_none())
        .count();
    let _ = writeln!(
        report,
        "{suite}: {passed}/{total} passed ({:.2}%), {} of {} opcode files clean, \
         {revoked_n} revoked and {na} of 286-only behaviour skipped, threshold {:.2}%",
        rate * 100.0,
        clean,
        stats.len(),
        min_rate * 100.0
    );
    let failing: Vec<_> = stats
        .iter()
        .filter(|(_, s)| s.passed < s.total || s.first_failure.is_some())
        .collect();
    if !failing.is_empty() {
        let _ = writeln!(
            report,
            "failing opcode files (passed/total, first failure):"
        );
    }
    for (stem, s) in failing {
        let _ = writeln!(
            report,
            "  {stem:<5} {:>4}/{:<4}{} {}",
            s.passed,
            s.total,
            if s.rated { "" } else { " (not rated)" },
            s.first_failure.as_deref().unwrap_or("")
        );
    }
    // Straight to the process's stdout, past the test harness's capture,
    // so the figures show in every run, passing or not.
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("conformance-{suite}.txt"));
    let _ = std::fs::write(&out, &report);

    assert!(
        rate >= min_rate,
        "{suite}: pass rate {:.2}% is below the threshold {:.2}% (report above and in {})",
        rate * 100.0,
        min_rate * 100.0,
        out.display()
    );
}
