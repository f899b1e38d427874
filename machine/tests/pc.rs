//! The PC as a whole, with small Multiboot kernels assembled here: machine
//! events (triple fault, debug exit, power-off) end a run cleanly, and COM1
//! carries a guest's output.

mod common;

use common::{LOAD, multiboot};
use std::io::Write;
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::*;
use machine::pc::{Firmware, Pc, PcConfig, PcExit};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pc(kernel: Vec<u8>, com1: Capture) -> Pc {
    Pc::new(PcConfig {
        ram_mib: 32,
        firmware: Firmware::Multiboot {
            kernel,
            cmdline: "test".into(),
            modules: vec![],
        },
        framebuffer: None,
        serial: [Box::new(com1), Box::new(std::io::sink())],
        debug_console: None,
        debug_exit: true,
        clock: None,
        port_hook: None,
        drives: Vec::new(),
    })
    .expect("machine")
}

#[test]
fn a_triple_fault_is_a_machine_event_not_a_panic() {
    let k = multiboot(|a| {
        // An empty IDT: the #BP cannot be delivered, nor the #GP, nor the #DF.
        a.push(0)?;
        a.push(0)?;
        a.lidt(ptr(esp + 2))?;
        a.int3()?;
        a.hlt()
    });
    let mut m = pc(k, Capture::default());
    assert_eq!(m.run(Some(1_000_000)), PcExit::TripleFault);
}

#[test]
fn debug_exit_port_ends_the_run_with_the_written_value() {
    let k = multiboot(|a| {
        a.mov(dx, 0xF4u32)?;
        a.mov(al, 0x21u32)?;
        a.out(dx, al)?;
        a.hlt()
    });
    let mut m = pc(k, Capture::default());
    assert_eq!(m.run(Some(1_000_000)), PcExit::DebugExit(0x21));
}

#[test]
fn com1_carries_guest_output_and_acpi_s5_powers_off() {
    let k = multiboot(|a| {
        let mut next = a.create_label();
        let mut wait = a.create_label();
        let mut done = a.create_label();
        a.mov(esi, LOAD + 0x200)?; // the message, placed below
        a.set_label(&mut next)?;
        a.mov(bl, byte_ptr(esi))?;
        a.test(bl, bl)?;
        a.jz(done)?;
        a.set_label(&mut wait)?;
        a.mov(dx, 0x3FDu32)?; // LSR: wait for THR empty
        a.in_(al, dx)?;
        a.test(al, 0x20)?;
        a.jz(wait)?;
        a.mov(dx, 0x3F8u32)?;
        a.mov(al, bl)?;
        a.out(dx, al)?;
        a.inc(esi)?;
        a.jmp(next)?;
        a.set_label(&mut done)?;
        // PM1a_CNT: SLP_TYP = S5 (0), SLP_EN.
        a.mov(dx, machine::acpi::PM1A_CNT as u32)?;
        a.mov(ax, 1u32 << 13)?;
        a.out(dx, ax)?;
        a.hlt()
    });
    let mut k = k;
    k.resize(0x200, 0);
    k.extend_from_slice(b"hello from COM1\n\0");
    let out = Capture::default();
    let mut m = pc(k, out.clone());
    assert_eq!(m.run(Some(10_000_000)), PcExit::PowerOff);
    assert_eq!(&*out.0.lock().unwrap(), b"hello from COM1\n");
}
