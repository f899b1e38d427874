//! CPU throughput, side by side with QEMU TCG and Bochs.
//!
//! Each workload is a 64 KiB firmware image entered at the reset vector: a
//! 16-bit stub switches to flat 32-bit protected mode, the workload loop
//! runs `N` times, and the image ends the run on every emulator (QEMU's
//! isa-debug-exit port 0xF4, Bochs's shutdown port 0x8900, then CLI; HLT
//! which ends ours). The same image runs on all three, so all three execute
//! the same instructions; our CPU counts them. Start-up is taken out by
//! running every image twice, with `N` and with `N / 8` iterations, and
//! using the difference: MIPS = Δinstructions / Δseconds.
//!
//! `cargo bench -p machine --bench mips -- [--scale F] [--json] [--no-peers] [--peers-only] [--dump DIR] [--only WORKLOAD] [--jit]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use machine::{Cpu, NullBus, PhysMemory, RunExit};

const ROM_BASE: u32 = 0xF_0000;
const ROM_SIZE: usize = 0x1_0000;
const RAM_MIB: u64 = 64;
/// Where the image keeps its iteration count.
const N_AT: usize = 0x48;
const CODE32_AT: usize = 0x100;
const GDT_AT: usize = 0x50;
/// The string Bochs's shutdown port wants.
const SHUTDOWN_AT: usize = 0x30;

struct Workload {
    name: &'static str,
    what: &'static str,
    /// Iterations at scale 1.
    n: u32,
    body: fn(&mut CodeAssembler) -> Result<(), IcedError>,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "integer",
        what: "LCG, table updates, data-dependent branches (register and memory ALU ops)",
        n: 12_000,
        body: integer,
    },
    Workload {
        name: "bignum",
        what: "multi-precision multiply-subtract through 16-bit halves, locals on the stack (the shape of the kernel's RSA code)",
        n: 8_000,
        body: bignum,
    },
    Workload {
        name: "memcopy",
        what: "REP MOVSD of 64 KiB, then a summing loop over it",
        n: 4_000,
        body: memcopy,
    },
    Workload {
        name: "paging",
        what: "4 KiB pages over 60 MiB (one touch per page, CR3 reload per pass), code on a 4 MiB PSE page",
        n: 400,
        body: paging,
    },
];

/// The integer loop: EBP outer iterations of 1024 inner ones.
fn integer(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut outer = a.create_label();
    let mut inner = a.create_label();
    let mut skip = a.create_label();
    a.mov(ebx, 12345u32)?;
    a.mov(edi, 0x10_0000u32)?;
    a.xor(esi, esi)?;
    a.set_label(&mut outer)?;
    a.mov(edx, 1024u32)?;
    a.set_label(&mut inner)?;
    a.imul_3(ebx, ebx, 1_103_515_245i32)?;
    a.add(ebx, 12345)?;
    a.mov(eax, ebx)?;
    a.shr(eax, 16)?;
    a.and(eax, 1023)?;
    a.add(dword_ptr(edi + eax * 4), ebx)?;
    a.test(eax, 1)?;
    a.jz(skip)?;
    a.inc(esi)?;
    a.sub(ecx, dword_ptr(edi + eax * 4))?;
    a.set_label(&mut skip)?;
    a.dec(edx)?;
    a.jnz(inner)?;
    a.dec(ebp)?;
    a.jnz(outer)?;
    Ok(())
}

/// `res[j] -= s1[j] * limb + carry` over 256 limbs, the 32x32->64 product
/// built from four 16x16 IMULs the way a compiler does for a CPU without
/// a widening multiply, with the loop's state spilled to the stack: MOVs
/// to and from memory, IMUL, MOVZX, shifts, CMP/SETB/ADC/CMOV chains.
fn bignum(a: &mut CodeAssembler) -> Result<(), IcedError> {
    const S1_END: u32 = 0x10_0400;
    const RES_END: u32 = 0x10_0800;
    let mut outer = a.create_label();
    let mut inner = a.create_label();
    a.sub(esp, 16)?;
    a.set_label(&mut outer)?;
    a.mov(dword_ptr(esp), ebp)?;
    a.mov(dword_ptr(esp + 4), 0x1234_5679u32)?;
    a.mov(dword_ptr(esp + 8), -256i32)?;
    a.xor(esi, esi)?;
    a.set_label(&mut inner)?;
    a.mov(ecx, dword_ptr(esp + 8))?;
    a.mov(edx, dword_ptr(S1_END + ecx * 4))?;
    a.mov(ebx, dword_ptr(esp + 4))?;
    a.mov(edi, ebx)?;
    a.shr(edi, 16)?;
    a.movzx(ebx, bx)?;
    a.movzx(ecx, dx)?;
    a.shr(edx, 16)?;
    a.mov(eax, ecx)?;
    a.imul_2(eax, ebx)?;
    a.imul_2(ebx, edx)?;
    a.imul_2(ecx, edi)?;
    a.imul_2(edx, edi)?;
    a.mov(edi, eax)?;
    a.movzx(eax, ax)?;
    a.shr(edi, 16)?;
    a.add(ecx, ebx)?;
    a.mov(dword_ptr(esp + 12), edx)?;
    a.mov(edx, edi)?;
    a.add(edx, ecx)?;
    a.mov(ecx, dword_ptr(esp + 12))?;
    a.add(ecx, 0x1_0000)?;
    a.cmp(edx, ebx)?;
    a.mov(edi, ecx)?;
    a.mov(ecx, edx)?;
    a.cmovae(edi, dword_ptr(esp + 12))?;
    a.add(eax, esi)?;
    a.shl(ecx, 16)?;
    a.xor(ebx, ebx)?;
    a.add(eax, ecx)?;
    a.cmp(eax, esi)?;
    a.mov(esi, edx)?;
    a.setb(bl)?;
    a.shr(esi, 16)?;
    a.mov(ecx, dword_ptr(esp + 8))?;
    a.mov(edx, dword_ptr(RES_END + ecx * 4))?;
    a.sub(edx, eax)?;
    a.adc(ebx, esi)?;
    a.mov(dword_ptr(RES_END + ecx * 4), edx)?;
    a.lea(esi, dword_ptr(ebx + edi))?;
    a.add(ecx, 1)?;
    a.mov(dword_ptr(esp + 8), ecx)?;
    a.jnz(inner)?;
    a.mov(ebp, dword_ptr(esp))?;
    a.dec(ebp)?;
    a.jnz(outer)?;
    a.add(esp, 16)?;
    Ok(())
}

/// Block copies and a summing loop over what was copied.
fn memcopy(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut outer = a.create_label();
    let mut sum = a.create_label();
    a.cld()?;
    a.xor(eax, eax)?;
    a.set_label(&mut outer)?;
    a.mov(esi, 0x10_0000u32)?;
    a.mov(edi, 0x20_0000u32)?;
    a.mov(ecx, 16384u32)?;
    a.rep().movsd()?;
    a.mov(esi, 0x20_0000u32)?;
    a.mov(ecx, 2048u32)?;
    a.set_label(&mut sum)?;
    a.add(eax, dword_ptr(esi))?;
    a.add(esi, 32)?;
    a.dec(ecx)?;
    a.jnz(sum)?;
    a.dec(ebp)?;
    a.jnz(outer)?;
    Ok(())
}

/// Page tables built by the guest, then one access per 4 KiB page.
fn paging(a: &mut CodeAssembler) -> Result<(), IcedError> {
    const PD: u32 = 0x1000;
    const PT: u32 = 0x1_0000;
    const TABLES: u32 = 15;
    let mut fill = a.create_label();
    let mut pde = a.create_label();
    let mut outer = a.create_label();
    let mut touch = a.create_label();
    // PDE 0: a 4 MiB page (PSE) for low memory and this code.
    a.mov(dword_ptr(PD), 0x83u32)?;
    // PDEs 1..=15 point at page tables at PT.., which map 4 MiB..64 MiB.
    a.mov(edi, PD + 4)?;
    a.mov(eax, PT | 3)?;
    a.mov(ecx, TABLES)?;
    a.set_label(&mut pde)?;
    a.mov(dword_ptr(edi), eax)?;
    a.add(edi, 4)?;
    a.add(eax, 0x1000)?;
    a.dec(ecx)?;
    a.jnz(pde)?;
    a.mov(edi, PT)?;
    a.mov(eax, 0x40_0003u32)?;
    a.mov(ecx, TABLES * 1024)?;
    a.set_label(&mut fill)?;
    a.mov(dword_ptr(edi), eax)?;
    a.add(edi, 4)?;
    a.add(eax, 0x1000)?;
    a.dec(ecx)?;
    a.jnz(fill)?;
    a.mov(eax, cr4)?;
    a.or(eax, 0x10)?; // PSE
    a.mov(cr4, eax)?;
    a.mov(eax, PD)?;
    a.mov(cr3, eax)?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0000u32 as i32)?;
    a.mov(cr0, eax)?;
    a.xor(edx, edx)?;
    a.set_label(&mut outer)?;
    a.mov(eax, PD)?;
    a.mov(cr3, eax)?;
    a.mov(esi, 0x40_0000u32)?;
    a.mov(ecx, TABLES * 1024)?;
    a.set_label(&mut touch)?;
    a.add(edx, dword_ptr(esi + 0x10))?;
    a.mov(dword_ptr(esi + 0x20), edx)?;
    a.add(esi, 0x1000)?;
    a.dec(ecx)?;
    a.jnz(touch)?;
    a.dec(ebp)?;
    a.jnz(outer)?;
    Ok(())
}

/// Builds the 64 KiB image for `w` with `n` iterations.
fn image(w: &Workload, n: u32) -> Vec<u8> {
    let mut rom = vec![0xF4u8; ROM_SIZE];
    // 16-bit entry at F000:0000.
    let gdt_ptr = 0x40u16;
    let entry32 = ROM_BASE + CODE32_AT as u32;
    let mut stub = vec![0xFA]; // cli
    stub.extend_from_slice(&[0x2E, 0x66, 0x0F, 0x01, 0x16]); // o32 lgdt cs:[gdt_ptr]
    stub.extend_from_slice(&gdt_ptr.to_le_bytes());
    stub.extend_from_slice(&[0x0F, 0x20, 0xC0]); // mov eax, cr0
    stub.extend_from_slice(&[0x66, 0x83, 0xC8, 0x01]); // or eax, 1
    stub.extend_from_slice(&[0x0F, 0x22, 0xC0]); // mov cr0, eax
    stub.extend_from_slice(&[0x66, 0xEA]); // jmp dword 0x08:entry32
    stub.extend_from_slice(&entry32.to_le_bytes());
    stub.extend_from_slice(&0x08u16.to_le_bytes());
    rom[..stub.len()].copy_from_slice(&stub);
    rom[0x40..0x42].copy_from_slice(&23u16.to_le_bytes());
    rom[0x42..0x46].copy_from_slice(&(ROM_BASE + GDT_AT as u32).to_le_bytes());
    rom[SHUTDOWN_AT..SHUTDOWN_AT + 8].copy_from_slice(b"Shutdown");
    rom[N_AT..N_AT + 4].copy_from_slice(&n.to_le_bytes());
    let gdt: [u64; 3] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
    for (i, d) in gdt.iter().enumerate() {
        rom[GDT_AT + i * 8..GDT_AT + i * 8 + 8].copy_from_slice(&d.to_le_bytes());
    }
    let code = code32(w).expect("assemble workload");
    rom[CODE32_AT..CODE32_AT + code.len()].copy_from_slice(&code);
    // Reset vector: jmp F000:0000.
    rom[0xFFF0..0xFFF5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]);
    rom
}

fn code32(w: &Workload) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    a.mov(eax, 0x10u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(fs, ax)?;
    a.mov(gs, ax)?;
    a.mov(esp, 0x9_0000u32)?;
    a.mov(ebp, dword_ptr(ROM_BASE + N_AT as u32))?;
    (w.body)(&mut a)?;
    // QEMU: isa-debug-exit.
    a.mov(dx, 0xF4u32)?;
    a.mov(al, 0u32)?;
    a.out(dx, al)?;
    // Bochs: the shutdown port.
    a.mov(dx, 0x8900u32)?;
    a.mov(esi, ROM_BASE + SHUTDOWN_AT as u32)?;
    a.mov(ecx, 8u32)?;
    a.cld()?;
    a.rep().outsb()?;
    // Everyone else (and us): stop.
    a.cli()?;
    a.hlt()?;
    a.assemble((ROM_BASE + CODE32_AT as u32) as u64)
}

/// Runs an image on our CPU: (instructions, seconds).
fn run_ours(img: &[u8], jit: bool) -> (u64, f64) {
    let mut mem = PhysMemory::new(RAM_MIB << 20).expect("RAM");
    mem.add_rom(ROM_BASE, img).expect("ROM");
    mem.alias_rom(ROM_BASE, 0xFFFF_0000, ROM_SIZE as u32)
        .expect("ROM alias");
    let mut cpu = Cpu::new(mem, Box::new(NullBus));
    cpu.set_jit(jit);
    let start = Instant::now();
    loop {
        match cpu.run(50_000_000) {
            RunExit::BudgetExhausted => {}
            RunExit::HaltedInterruptsDisabled => break,
            other => panic!("workload stopped with {other:?} at {:08x}", cpu.eip()),
        }
    }
    (cpu.instruction_count(), start.elapsed().as_secs_f64())
}

/// Runs `cmd` to completion (killing it after `limit`); wall seconds, or None.
fn timed(mut cmd: Command, limit: Duration) -> Option<f64> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_qemu(path: &Path) -> Option<f64> {
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
    .args(["-display", "none", "-nodefaults", "-no-reboot"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-bios"])
    .arg(path);
    timed(c, Duration::from_secs(600))
}

fn run_bochs(path: &Path, dir: &Path) -> Option<f64> {
    let rc = dir.join(format!("{}.bochsrc", path.file_stem()?.to_str()?));
    let cfg = format!(
        "megs: {RAM_MIB}\nromimage: file={}\nvgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         cpu: count=1, ips=100000000, reset_on_triple_fault=0\n\
         display_library: rfb, options=\"timeout=0\"\nboot: floppy\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\nspeaker: enabled=0\n\
         log: /dev/null\npanic: action=fatal\nerror: action=ignore\ninfo: action=ignore\n\
         port_e9_hack: enabled=0\n",
        path.display()
    );
    std::fs::write(&rc, cfg).ok()?;
    let script = dir.join("bochs-debugger.rc");
    std::fs::write(&script, "c\nquit\n").ok()?;
    let mut c = Command::new("bochs");
    c.arg("-q").arg("-f").arg(&rc).arg("-rc").arg(&script);
    timed(c, Duration::from_secs(600))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Row {
    name: &'static str,
    instructions: u64,
    ours: f64,
    qemu: Option<f64>,
    bochs: Option<f64>,
}

fn main() {
    let mut scale = 1.0f64;
    let mut json = false;
    let mut peers = true;
    let mut jit = false;
    let mut ours = true;
    let mut dump: Option<PathBuf> = None;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => scale = args.next().and_then(|s| s.parse().ok()).expect("--scale F"),
            "--json" => json = true,
            "--no-peers" => peers = false,
            "--jit" => jit = true,
            "--peers-only" => ours = false,
            "--dump" => dump = args.next().map(PathBuf::from),
            "--only" => only = args.next(),
            "--bench" => {}
            other => {
                eprintln!(
                    "mips: unknown argument {other}; use --scale F, --json, --no-peers, --peers-only, --dump DIR, --only WORKLOAD, --jit"
                );
                std::process::exit(2);
            }
        }
    }
    let dir = dump.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bulkhead-mips-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("work directory");
    let qemu = peers && have("qemu-system-i386");
    let bochs = peers && have("bochs");
    if peers && !(qemu && bochs) {
        eprintln!(
            "mips: peers missing (qemu-system-i386: {qemu}, bochs: {bochs}); run scripts/setup"
        );
    }
    let mut rows = Vec::new();
    for w in WORKLOADS
        .iter()
        .filter(|w| only.as_ref().is_none_or(|o| o == w.name))
    {
        let n = ((w.n as f64 * scale) as u32).max(8);
        let small = (n / 8).max(1);
        let (big_img, small_img) = (image(w, n), image(w, small));
        let (big_path, small_path) = (
            dir.join(format!("{}.bin", w.name)),
            dir.join(format!("{}-small.bin", w.name)),
        );
        std::fs::write(&big_path, &big_img).expect("write image");
        std::fs::write(&small_path, &small_img).expect("write image");
        let ((i1, t1), (i2, t2)) = if ours {
            (run_ours(&small_img, jit), run_ours(&big_img, jit))
        } else {
            ((0, 0.0), (0, 0.0))
        };
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?).filter(|d| *d > 0.0);
        let qemu_t = qemu
            .then(|| delta(run_qemu(&small_path), run_qemu(&big_path)))
            .flatten();
        let bochs_t = bochs
            .then(|| delta(run_bochs(&small_path, &dir), run_bochs(&big_path, &dir)))
            .flatten();
        eprintln!("mips: {} done", w.name);
        rows.push(Row {
            name: w.name,
            instructions: i2 - i1,
            ours: t2 - t1,
            qemu: qemu_t,
            bochs: bochs_t,
        });
    }
    let mips = |i: u64, t: f64| i as f64 / t / 1e6;
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                let opt = |v: Option<f64>| v.map_or("null".to_string(), |x| format!("{x:.4}"));
                format!(
                    "{{\"workload\":\"{}\",\"instructions\":{},\"bulkhead_s\":{:.4},\"bulkhead_mips\":{:.1},\"qemu_s\":{},\"qemu_mips\":{},\"bochs_s\":{},\"bochs_mips\":{}}}",
                    r.name,
                    r.instructions,
                    r.ours,
                    mips(r.instructions, r.ours),
                    opt(r.qemu),
                    opt(r.qemu.map(|t| mips(r.instructions, t))),
                    opt(r.bochs),
                    opt(r.bochs.map(|t| mips(r.instructions, t))),
                )
            })
            .collect();
        println!("[{}]", items.join(","));
        return;
    }
    println!(
        "{:<9} {:>12} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "workload", "instructions", "bulkhead", "qemu-tcg", "bochs", "vs qemu", "vs bochs"
    );
    for r in &rows {
        let peer = |t: Option<f64>| {
            t.map_or("-".to_string(), |t| {
                format!("{:.0} MIPS", mips(r.instructions, t))
            })
        };
        let ratio = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{:.2}x", t / r.ours));
        println!(
            "{:<9} {:>12} {:>10} {:>10} {:>10} {:>9} {:>9}",
            r.name,
            r.instructions,
            format!("{:.0} MIPS", mips(r.instructions, r.ours)),
            peer(r.qemu),
            peer(r.bochs),
            ratio(r.qemu),
            ratio(r.bochs),
        );
    }
    println!(
        "(ratios are peer time / Bulkhead time for the same instructions: above 1 means Bulkhead is faster)"
    );
    for w in WORKLOADS {
        println!("  {}: {}", w.name, w.what);
    }
}
