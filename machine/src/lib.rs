//! Bulkhead's PC emulator.
//!
//! A library with no knowledge of processes or IPC: a Pentium II-class CPU
//! ([`Cpu`]) over guest physical memory ([`PhysMemory`]) and a [`Bus`] for
//! ports, MMIO and interrupt acknowledge. The worker wraps it.

pub mod acpi;
mod backing;
mod block;
pub mod boot;
mod bus;
mod cpu;
pub mod devices;
mod memory;
pub mod pc;

pub use backing::BackingError;
pub use block::{BlockBackend, ReadOnly};
pub use bus::{Bus, IoSize, NullBus, Signals};
pub use cpu::{
    Cpu, CpuidInfo, Fault, RunExit, Seg, SegCache, ShutdownReason, TableReg, TraceHook, TscSource,
    cpuid_edx, cr0, cr4, msr, reg, vector,
};
pub use memory::{MAX_RAM, MemoryError, PAGE_SIZE, PhysMemory, Region};
