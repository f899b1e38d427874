//! Protected-mode and paging scaffolding for guest-program tests: a GDT
//! with flat ring-0 and ring-3 segments and a 32-bit TSS, an IDT whose
//! gates lead to one HLT stub per vector, SYSENTER MSRs, and helpers to
//! build two-level page tables. Everything is poked into guest memory and
//! loaded through the `Cpu` API, so no guest instruction is needed to get
//! there. Faults are read back from the stub the CPU halted in.

use machine::{Cpu, RunExit, Seg, SegCache, TableReg, cr0, msr};

use super::Guest;

pub const GDT: u32 = 0x1000;
pub const IDT: u32 = 0x2000;
/// A 32-bit TSS; its I/O bitmap (when enabled) follows the 0x68-byte header.
pub const TSS: u32 = 0x3000;
pub const IOMAP: u32 = TSS + 0x68;
/// Limit of a TSS that holds a full I/O bitmap and the trailing 0xFF byte.
pub const TSS_LIMIT_WITH_MAP: u32 = 0x68 + 0x2000;
/// Exception stubs: vector `v` halts at `STUBS + 8 * v`.
pub const STUBS: u32 = 0x6000;
/// SYSENTER lands here: a HLT that ends user-mode tests.
pub const SYSENTER_HLT: u32 = 0x6400;
pub const KSTACK: u32 = 0x8000;
pub const USTACK: u32 = 0x7800;
/// Where test code goes.
pub const CODE: u32 = 0x10000;
/// Page directory; page tables are allocated after it.
pub const PD: u32 = 0x20000;

pub const KCODE: u16 = 0x08;
pub const KDATA: u16 = 0x10;
pub const UCODE: u16 = 0x1B;
pub const UDATA: u16 = 0x23;
pub const TSS_SEL: u16 = 0x28;

pub const PTE_P: u32 = 1;
pub const PTE_W: u32 = 2;
pub const PTE_U: u32 = 4;
pub const PTE_A: u32 = 0x20;
pub const PTE_D: u32 = 0x40;
pub const PDE_PS: u32 = 0x80;
pub const PTE_G: u32 = 0x100;

/// A raw segment descriptor.
pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (base, limit) = (base as u64, limit as u64);
    (limit & 0xFFFF)
        | (base & 0xFF_FFFF) << 16
        | (access as u64) << 40
        | ((limit >> 16) & 0xF) << 48
        | (flags as u64 & 0xF) << 52
        | (base >> 24) << 56
}

/// An exception the guest took, read from the stub it halted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// Return CS:EIP pushed by the CPU (the faulting instruction for faults).
    pub cs: u16,
    pub eip: u32,
}

fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17)
}

const FLAT_CODE: u8 = 0x9B;
const FLAT_DATA: u8 = 0x93;
const DPL3: u8 = 0x60;

impl Guest {
    /// A machine in flat 32-bit protected mode at CPL 0, EIP = [`CODE`],
    /// with the GDT, IDT, TSS (no I/O bitmap) and SYSENTER MSRs set up.
    pub fn protected(mib: u64) -> Guest {
        let mut g = Guest::new(mib);
        let gdt = [
            0,
            descriptor(0, 0xFFFFF, FLAT_CODE, 0xC),
            descriptor(0, 0xFFFFF, FLAT_DATA, 0xC),
            descriptor(0, 0xFFFFF, FLAT_CODE | DPL3, 0xC),
            descriptor(0, 0xFFFFF, FLAT_DATA | DPL3, 0xC),
            descriptor(TSS, 0x67, 0x8B, 0),
        ];
        for (i, d) in gdt.iter().enumerate() {
            g.poke(GDT + 8 * i as u32, &d.to_le_bytes());
        }
        for v in 0..32u32 {
            let stub = STUBS + 8 * v;
            g.poke(stub, &[0xF4]);
            // 32-bit interrupt gate, DPL 3 so INT n works from ring 3 too.
            let gate = (stub as u64 & 0xFFFF)
                | (KCODE as u64) << 16
                | 0xEE00u64 << 32
                | (stub as u64 >> 16) << 48;
            g.poke(IDT + 8 * v, &gate.to_le_bytes());
        }
        g.poke(SYSENTER_HLT, &[0xF4]);
        // TSS: ESP0, SS0; the I/O map base points past the limit (no bitmap).
        g.poke(TSS + 4, &KSTACK.to_le_bytes());
        g.poke(TSS + 8, &(KDATA as u32).to_le_bytes());
        g.poke(TSS + 0x66, &0xFFFFu16.to_le_bytes());

        let cpu = &mut g.cpu;
        cpu.set_gdtr(TableReg {
            base: GDT,
            limit: (gdt.len() * 8 - 1) as u16,
        });
        cpu.set_idtr(TableReg {
            base: IDT,
            limit: 32 * 8 - 1,
        });
        cpu.set_cr0(cpu.cr0() | cr0::PE);
        cpu.set_seg_cache(Seg::CS, SegCache::from_descriptor(KCODE, gdt[1]));
        for s in [Seg::DS, Seg::ES, Seg::FS, Seg::GS, Seg::SS] {
            cpu.set_seg_cache(s, SegCache::from_descriptor(KDATA, gdt[2]));
        }
        cpu.set_tr_cache(SegCache::from_descriptor(TSS_SEL, gdt[5]));
        cpu.set_cpl(0);
        cpu.set_gpr(machine::reg::ESP, KSTACK);
        cpu.set_eip(CODE);
        cpu.write_msr(msr::SYSENTER_CS, KCODE as u64).unwrap();
        cpu.write_msr(msr::SYSENTER_ESP, KSTACK as u64).unwrap();
        cpu.write_msr(msr::SYSENTER_EIP, SYSENTER_HLT as u64)
            .unwrap();
        g
    }

    /// Drops to CPL 3 (flat ring-3 segments, ESP = [`USTACK`]) at `eip`.
    pub fn enter_user(&mut self, eip: u32) {
        let cpu = &mut self.cpu;
        let code = descriptor(0, 0xFFFFF, FLAT_CODE | DPL3, 0xC);
        let data = descriptor(0, 0xFFFFF, FLAT_DATA | DPL3, 0xC);
        cpu.set_seg_cache(Seg::CS, SegCache::from_descriptor(UCODE, code));
        for s in [Seg::DS, Seg::ES, Seg::FS, Seg::GS, Seg::SS] {
            cpu.set_seg_cache(s, SegCache::from_descriptor(UDATA, data));
        }
        cpu.set_cpl(3);
        cpu.set_gpr(machine::reg::ESP, USTACK);
        cpu.set_eip(eip);
    }

    /// Gives the TSS an I/O permission bitmap (all ports allowed) followed
    /// by the mandatory 0xFF byte.
    pub fn enable_io_bitmap(&mut self) {
        self.poke(TSS + 0x66, &0x68u16.to_le_bytes());
        self.poke(IOMAP, &[0; 0x2000]);
        self.poke(IOMAP + 0x2000, &[0xFF]);
        let raw = descriptor(TSS, TSS_LIMIT_WITH_MAP, 0x8B, 0);
        self.cpu
            .set_tr_cache(SegCache::from_descriptor(TSS_SEL, raw));
    }

    /// Sets or clears the bitmap bit of one port.
    pub fn deny_port(&mut self, port: u16, deny: bool) {
        let at = IOMAP + (port as u32 >> 3);
        let mut b = [0u8];
        self.cpu.read_phys_bytes(at, &mut b);
        let bit = 1 << (port & 7);
        b[0] = if deny { b[0] | bit } else { b[0] & !bit };
        self.poke(at, &b);
    }

    /// The exception whose stub the CPU is halted in, if any.
    pub fn exception(&mut self) -> Option<Exception> {
        let eip = self.cpu.eip();
        if !self.cpu.is_halted() || !(STUBS + 1..STUBS + 1 + 32 * 8).contains(&eip) {
            return None;
        }
        let vector = ((eip - STUBS - 1) / 8) as u8;
        let mut sp = self.cpu.gpr(machine::reg::ESP);
        let error_code = has_error_code(vector).then(|| {
            let c = self.peek_u32(sp);
            sp += 4;
            c
        });
        Some(Exception {
            vector,
            error_code,
            eip: self.peek_u32(sp),
            cs: self.peek_u32(sp + 4) as u16,
        })
    }

    /// Runs and expects to stop in the stub of an exception.
    pub fn run_to_exception(&mut self) -> Exception {
        let exit = self.run(10_000);
        self.exception()
            .unwrap_or_else(|| panic!("no exception: {exit:?} at eip {:#x}", self.cpu.eip()))
    }

    /// Runs and expects a plain HLT outside the exception stubs.
    pub fn run_to_hlt(&mut self) {
        let exit = self.run(10_000);
        assert!(
            matches!(exit, RunExit::Halted | RunExit::HaltedInterruptsDisabled),
            "{exit:?} at eip {:#x}",
            self.cpu.eip()
        );
        if let Some(e) = self.exception() {
            panic!("unexpected exception {e:x?}");
        }
    }

    // ---- paging ----

    /// Writes a page-directory entry.
    pub fn set_pde(&mut self, lin: u32, pde: u32) {
        self.poke(PD + (lin >> 22) * 4, &pde.to_le_bytes());
    }

    /// The page-table entry slot for `lin` (its page table must exist).
    pub fn pte_addr(&mut self, lin: u32) -> u32 {
        let pde = self.peek_u32(PD + (lin >> 22) * 4);
        (pde & !0xFFF) + ((lin >> 12) & 0x3FF) * 4
    }

    pub fn pte(&mut self, lin: u32) -> u32 {
        let a = self.pte_addr(lin);
        self.peek_u32(a)
    }

    /// Maps the 4 KiB page at `lin` to `phys` with `flags` (P is added),
    /// creating its page table (user, writable) when the directory entry is empty.
    pub fn map(&mut self, lin: u32, phys: u32, flags: u32) {
        let slot = PD + (lin >> 22) * 4;
        if self.peek_u32(slot) & PTE_P == 0 {
            let table = PD + 0x1000 * (1 + (lin >> 22));
            self.poke(table, &[0; 4096]);
            self.set_pde(lin, table | PTE_P | PTE_W | PTE_U);
        }
        let a = self.pte_addr(lin);
        self.poke(a, &((phys & !0xFFF) | flags | PTE_P).to_le_bytes());
    }

    /// Writes a raw PTE (present or not) for `lin`.
    pub fn set_pte(&mut self, lin: u32, pte: u32) {
        let a = self.pte_addr(lin);
        self.poke(a, &pte.to_le_bytes());
    }

    /// Identity-maps the first 4 MiB (user, writable) and turns paging on.
    /// Page tables for directory slot `i` live at `PD + 0x1000 * (i + 1)`.
    pub fn enable_paging(&mut self) {
        self.poke(PD, &[0; 4096]);
        for page in 0..1024 {
            self.map(page << 12, page << 12, PTE_W | PTE_U);
        }
        let cpu: &mut Cpu = &mut self.cpu;
        cpu.load_cr3(PD);
        cpu.set_cr0(cpu.cr0() | cr0::PG);
    }
}

/// Real-mode exception stubs: vector `v` halts at `REAL_STUBS + v`.
pub const REAL_STUBS: u32 = 0x500;

impl Guest {
    /// A real-mode machine at 0000:`org` whose IVT sends vectors 0-31 to
    /// HLT stubs, with SP = 0x7000.
    pub fn real_mode_with_stubs(mib: u64, org: u32) -> Guest {
        let mut g = Guest::real_mode(mib, org);
        for v in 0..32u32 {
            g.poke(REAL_STUBS + v, &[0xF4]);
            g.poke(v * 4, &((REAL_STUBS + v) as u16).to_le_bytes());
            g.poke(v * 4 + 2, &[0, 0]);
        }
        g.cpu.set_gpr(machine::reg::ESP, 0x7000);
        g
    }

    /// The real-mode exception whose stub the CPU is halted in, if any.
    pub fn real_exception(&self) -> Option<u8> {
        let eip = self.cpu.eip();
        (self.cpu.is_halted() && (REAL_STUBS + 1..REAL_STUBS + 33).contains(&eip))
            .then(|| (eip - REAL_STUBS - 1) as u8)
    }
}
