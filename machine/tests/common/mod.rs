//! Shared harness for guest-program tests: a bare machine (RAM, the debug
//! console port 0xE9, nothing else) and helpers to assemble code into it
//! with iced-x86's code assembler and run it to HLT.

#![allow(dead_code)]

pub mod pm;
pub mod serial;

use std::cell::RefCell;
use std::rc::Rc;

use iced_x86::IcedError;
use iced_x86::code_asm::CodeAssembler;
use machine::{Bus, Cpu, IoSize, PhysMemory, RunExit};

/// What the guest wrote to port 0xE9, and every other port write.
#[derive(Default)]
pub struct Log {
    pub console: Vec<u8>,
    pub ports: Vec<(u16, u32)>,
}

/// A bus with the debug console on 0xE9; other ports float high.
pub struct TestBus(pub Rc<RefCell<Log>>);

impl Bus for TestBus {
    fn port_write(&mut self, port: u16, _size: IoSize, value: u32) {
        let mut log = self.0.borrow_mut();
        if port == 0xE9 {
            log.console.push(value as u8);
        }
        log.ports.push((port, value));
    }
}

/// `BULKHEAD_TEST_JIT=1` runs the guest-program tests with the JIT on,
/// compiling every block at its first run.
pub fn jit_from_env(cpu: &mut Cpu) {
    if std::env::var_os("BULKHEAD_TEST_JIT").is_some_and(|v| v != "0") {
        cpu.set_jit(true);
        cpu.set_jit_threshold(0);
    }
}

pub struct Guest {
    pub cpu: Cpu,
    pub log: Rc<RefCell<Log>>,
}

impl Guest {
    /// A machine with `mib` MiB of RAM in its reset state.
    pub fn new(mib: u64) -> Guest {
        let log = Rc::new(RefCell::new(Log::default()));
        let mem = PhysMemory::new(mib << 20).expect("RAM");
        let mut cpu = Cpu::new(mem, Box::new(TestBus(log.clone())));
        jit_from_env(&mut cpu);
        Guest { cpu, log }
    }

    /// A machine whose CPU starts in real mode at 0000:`org` (CS base 0).
    pub fn real_mode(mib: u64, org: u32) -> Guest {
        let mut g = Guest::new(mib);
        g.cpu
            .set_seg_cache(machine::Seg::CS, machine::SegCache::real_mode(0));
        g.cpu.set_eip(org);
        g
    }

    /// Assembles `a` (bitness chosen when it was created) for address `org`
    /// and writes it to physical memory at `org`.
    pub fn load(&mut self, org: u32, mut a: CodeAssembler) {
        let bytes = a.assemble(org as u64).expect("assemble");
        self.cpu.write_phys_bytes(org, &bytes);
    }

    /// Writes raw bytes to physical memory.
    pub fn poke(&mut self, addr: u32, bytes: &[u8]) {
        self.cpu.write_phys_bytes(addr, bytes);
    }

    pub fn peek_u32(&mut self, addr: u32) -> u32 {
        let mut b = [0; 4];
        self.cpu.read_phys_bytes(addr, &mut b);
        u32::from_le_bytes(b)
    }

    /// Runs until HLT (or `limit` instructions), returning how it stopped.
    pub fn run(&mut self, limit: u64) -> RunExit {
        let mut left = limit;
        loop {
            let before = self.cpu.instruction_count();
            let exit = self.cpu.run(left);
            left = left.saturating_sub(self.cpu.instruction_count() - before);
            match exit {
                RunExit::BudgetExhausted if left > 0 => continue,
                other => return other,
            }
        }
    }

    /// What the guest printed on port 0xE9.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.log.borrow().console).into_owned()
    }
}

/// Where [`multiboot`] kernels load.
pub const LOAD: u32 = 0x10_0000;

/// A Multiboot kernel (a.out kludge) whose code starts right after the header.
pub fn multiboot(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let flags = 1u32 << 16;
    let entry = LOAD + 32;
    let mut k = Vec::new();
    for v in [
        0x1BAD_B002u32,
        flags,
        0u32.wrapping_sub(0x1BAD_B002u32.wrapping_add(flags)),
        LOAD,
        LOAD,
        0,
        0,
        entry,
    ] {
        k.extend_from_slice(&v.to_le_bytes());
    }
    let mut a = CodeAssembler::new(32).unwrap();
    body(&mut a).unwrap();
    k.extend(a.assemble(entry as u64).unwrap());
    k
}
