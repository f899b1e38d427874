//! The run loop, the decoded-block cache and handler dispatch.
//!
//! Guest code is decoded once with iced-x86 into blocks of [`Insn`]s, each
//! carrying its handler and pre-digested operands, and cached by the
//! backing-store offset of its first byte together with the EIP it was
//! decoded at (so iced's absolute branch targets and `next_ip` stay right
//! when the same bytes run at another address) and checked against the code
//! size it was decoded for. A block ends at a control transfer, at the end of a page or after
//! [`MAX_BLOCK`] instructions. A write to a page holding cached code drops
//! the page's blocks (`invalidate_code`), so self-modifying code stays
//! correct. Interrupts and other signals are looked at between blocks, and
//! only when the shared signal word is non-zero.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind,
    Register,
};

use super::fault::{Fault, Result};
use super::paging::tlb_index;
use super::{Cpu, Seg, ShutdownReason, flags, jit, reg};
use crate::bus::Signals;
use crate::memory::Region;

/// Longest block, in instructions.
pub(crate) const MAX_BLOCK: usize = 64;

/// An instruction handler. `cpu.eip` is the instruction's own address and
/// `cpu.next_eip` the next one's; control transfers write `next_eip`.
pub(crate) type Handler = fn(&mut Cpu, &Insn) -> Result<()>;

/// Called before each instruction when tracing (`Cpu::set_trace`).
pub type TraceHook = Box<dyn FnMut(&Cpu, &Instruction)>;

/// A decoded instruction with its handler and pre-digested operands.
#[derive(Clone, Debug)]
pub(crate) struct Insn {
    pub handler: Handler,
    pub i: Instruction,
    pub len: u32,
    /// The instruction's own EIP (blocks are cached per EIP).
    pub ip: u32,
    /// The handler is IP-blind (see `select_handler`): the run loop
    /// updates `eip` only around the others, at faults and at block ends.
    pub ip_blind: bool,
    /// EIP of the next instruction (blocks are cached per EIP, so it is
    /// known at decode time), wrapped to the code size.
    pub next_ip: u32,
    /// Memory operand: segment, base and index register numbers (both
    /// [`reg::ZERO`] when absent), scale as a shift, displacement and
    /// address-size mask. `ea()` combines them without branches.
    pub seg: Seg,
    pub base: u8,
    pub index: u8,
    pub scale: u8,
    pub disp: u32,
    pub amask: u32,
    /// Register numbers within their class (GPR in encoding order, segment,
    /// CR, DR, ST(i)) of operands 0, 1 and 2 where those are registers.
    pub r0: u8,
    pub r1: u8,
    pub r2: u8,
    /// The first immediate operand, sign- or zero-extended as the encoding says.
    pub imm: u32,
}

/// Why `run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunExit {
    /// The instruction budget is used up.
    BudgetExhausted,
    /// HLT with interrupts enabled: call `run` again once an interrupt is due.
    Halted,
    /// HLT with interrupts disabled: only NMI or reset can wake the CPU.
    HaltedInterruptsDisabled,
    /// `Signals::STOP` was raised.
    Stopped,
    /// `Signals::RESET` was raised; the CPU has been reset.
    Reset,
    /// The CPU shut down (triple fault); it stays stopped until reset.
    Shutdown(ShutdownReason),
}

/// A decoded block, shared (`Rc`) between the cache and a run that may
/// drop it from the cache while it executes (self-modifying code).
struct Block {
    /// The cache key (see `fetch_block`).
    key: u64,
    insns: Box<[Insn]>,
    /// Bytes covered, for the CS limit check.
    span: u32,
    /// Decoded as 32-bit code.
    code32: bool,
    /// No instruction in the block can change CS, CPL or the code size:
    /// all are IP-blind, near branches or string moves (see `links_ok`).
    linkable: bool,
    /// The blocks that followed this one, so that a chain skips the TLB
    /// and cache look-ups, the code-size and CS limit checks. A link is
    /// good while `Tlb::epoch` keeps the value it was made under: the epoch
    /// moves at every TLB flush or fill, every drop of cached code
    /// (`decode_block`, `invalidate_code`, reset), at the start of every
    /// chain (interrupts, faults, the caller and the block that is not
    /// `linkable`, which ends a chain, may have changed CS). Only linkable
    /// blocks run to their end follow or make links.
    links: [Cell<Link>; 2],
    /// Every instruction but the last is IP-blind: the run loop skips the
    /// per-instruction IP bookkeeping (see `run_insns`).
    blind_body: bool,
    /// The block's compiled code, or how often it ran without (see `jit`).
    jit: Cell<JitSlot>,
}

/// A block's standing with the JIT.
#[derive(Clone, Copy)]
enum JitSlot {
    /// Interpreted so far, this many times.
    Cold(u32),
    /// Compiled (valid while the JIT's generation is `generation`). The
    /// code refers to the block's instructions, so it lives no longer
    /// than the block: it is only reached through the block.
    Code { f: jit::JitFn, generation: u32 },
    /// Not worth compiling.
    Never,
}

/// A successor of a block: the block cached for `eip` when `Tlb::epoch`
/// was `epoch`, with its CS limit checked.
#[derive(Clone, Copy)]
struct Link {
    eip: u32,
    epoch: u64,
    to: *const Block,
}

const NO_LINK: Link = Link {
    eip: 0,
    epoch: u64::MAX,
    to: std::ptr::null(),
};

impl Block {
    fn new(key: u64, insns: Box<[Insn]>, span: u32, code32: bool, linkable: bool) -> Self {
        let blind_body = insns
            .split_last()
            .is_none_or(|(_, body)| body.iter().all(|d| d.ip_blind));
        Block {
            blind_body,
            key,
            insns,
            span,
            code32,
            linkable,
            links: [Cell::new(NO_LINK), Cell::new(NO_LINK)],
            jit: Cell::new(JitSlot::Cold(0)),
        }
    }

    /// The linked successor at `eip`, when its link is current: a block
    /// the code cache held when the epoch had this value (`link` is only
    /// given cached blocks). Every drop of a cached block moves the epoch,
    /// so a current link names a block the cache still holds.
    #[inline(always)]
    fn follow(&self, eip: u32, epoch: u64) -> Option<*const Block> {
        for l in &self.links {
            let l = l.get();
            if l.eip == eip && l.epoch == epoch {
                return Some(l.to);
            }
        }
        None
    }

    /// Records `to` (a cached block whose CS limit check passed) as the
    /// successor at `eip`: the first slot unless it is current.
    #[inline(always)]
    fn link(&self, eip: u32, epoch: u64, to: *const Block) {
        let slot = if self.links[0].get().epoch == epoch {
            &self.links[1]
        } else {
            &self.links[0]
        };
        slot.set(Link { eip, epoch, to });
    }
}

/// What `run_linked` tells the chain.
enum Chain {
    /// A block stopped early or faulted: back through the checks in `run`.
    Stop,
    /// A linkable block ran to its end: the next block may be linked to
    /// it (a cached block: see `CodeCache::retired`).
    Next(*const Block),
}

/// Instructions allowed in a linkable block besides IP-blind ones: near
/// branches and string moves (not INS/OUTS, which reach devices).
fn links_ok(i: &Instruction) -> bool {
    super::branch::handler(i).is_some()
        || (super::string::handler(i).is_some()
            && !matches!(
                i.mnemonic(),
                Mnemonic::Insb
                    | Mnemonic::Insw
                    | Mnemonic::Insd
                    | Mnemonic::Outsb
                    | Mnemonic::Outsw
                    | Mnemonic::Outsd
            ))
}

/// Multiplicative hashing for u64 keys: the keys are backing offsets.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

const FAST_SLOTS: usize = 4096;
/// Cached blocks kept before the whole cache is dropped (about 16-40 MiB).
const MAX_BLOCKS: usize = 1 << 16;

/// Decoded blocks, indexed by where their code lives.
pub(crate) struct CodeCache {
    blocks: KeyMap<Rc<Block>>,
    /// Block keys per backing page.
    pages: HashMap<u32, Vec<u64>, BuildHasherDefault<KeyHasher>>,
    /// One bit per backing page: the page holds cached code.
    code_bits: Vec<u64>,
    /// Direct-mapped front of `blocks`.
    fast: Box<[Option<Rc<Block>>]>,
    /// Blocks dropped from the cache during the current chain, freed
    /// before the next one: a chain refers to the block it runs and the
    /// one it came from by pointer (see `run_linked`), and a write to
    /// their own code may drop them midway (the write also ends the
    /// chain, so this holds at most one chain's worth).
    retired: Vec<Rc<Block>>,
}

impl CodeCache {
    pub fn new(backing_len: usize) -> Self {
        let pages = backing_len.div_ceil(4096);
        CodeCache {
            blocks: KeyMap::default(),
            pages: HashMap::default(),
            code_bits: vec![0; pages.div_ceil(64)],
            fast: vec![None; FAST_SLOTS].into_boxed_slice(),
            retired: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.retired.extend(self.blocks.drain().map(|(_, b)| b));
        self.pages.clear();
        self.code_bits.iter_mut().for_each(|w| *w = 0);
        self.fast.iter_mut().for_each(|s| *s = None);
    }

    /// Whether the backing page holding offset `off` has cached code.
    #[inline(always)]
    pub fn page_has_code(&self, off: u32) -> bool {
        let p = (off >> 12) as usize;
        self.code_bits
            .get(p / 64)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    #[inline(always)]
    fn slot(key: u64) -> usize {
        ((key ^ (key >> 12)) as usize) & (FAST_SLOTS - 1)
    }

    #[inline(always)]
    fn get(&mut self, key: u64) -> Option<Rc<Block>> {
        if let Some(b) = &self.fast[Self::slot(key)]
            && b.key == key
        {
            return Some(b.clone());
        }
        self.get_slow(key)
    }

    #[inline(never)]
    fn get_slow(&mut self, key: u64) -> Option<Rc<Block>> {
        let b = self.blocks.get(&key)?.clone();
        self.fast[Self::slot(key)] = Some(b.clone());
        Some(b)
    }

    /// Caches a block (replacing one decoded at the same place for the
    /// other code size); returns true when its page had no code before.
    fn insert(&mut self, key: u64, block: Rc<Block>) -> bool {
        if self.blocks.len() >= MAX_BLOCKS {
            // Bound the cache's memory the way a JIT bounds its code buffer:
            // drop everything and let the working set decode again.
            self.clear();
        }
        let page = (key as u32) >> 12;
        if self.code_bits.len() <= page as usize / 64 {
            // Memory was added after the CPU was built.
            self.code_bits.resize(page as usize / 64 + 1, 0);
        }
        let word = &mut self.code_bits[page as usize / 64];
        let first = *word & (1 << (page % 64)) == 0;
        *word |= 1 << (page % 64);
        self.fast[Self::slot(key)] = Some(block.clone());
        match self.blocks.insert(key, block) {
            Some(old) => self.retired.push(old),
            None => self.pages.entry(page).or_default().push(key),
        }
        first
    }

    fn invalidate_page(&mut self, page: u32) {
        if let Some(keys) = self.pages.remove(&page) {
            for key in keys {
                if let Some(b) = self.blocks.remove(&key) {
                    self.retired.push(b);
                }
                let s = &mut self.fast[Self::slot(key)];
                if s.as_ref().is_some_and(|b| b.key == key) {
                    *s = None;
                }
            }
        }
        if let Some(w) = self.code_bits.get_mut(page as usize / 64) {
            *w &= !(1 << (page % 64));
        }
    }
}

/// Maps an iced register to its number within its class.
pub(crate) fn reg_num(r: Register) -> u8 {
    let n = r as u32;
    let rel = |first: Register| (n - first as u32) as u8;
    if r.is_gpr8() {
        rel(Register::AL)
    } else if r.is_gpr16() {
        rel(Register::AX)
    } else if r.is_gpr32() {
        rel(Register::EAX)
    } else if r.is_segment_register() {
        rel(Register::ES)
    } else if r.is_cr() {
        rel(Register::CR0)
    } else if r.is_dr() {
        rel(Register::DR0)
    } else if r.is_st() {
        rel(Register::ST0)
    } else if r.is_tr() {
        rel(Register::TR0)
    } else {
        0
    }
}

fn seg_of(r: Register) -> Seg {
    match r {
        Register::ES => Seg::ES,
        Register::CS => Seg::CS,
        Register::SS => Seg::SS,
        Register::FS => Seg::FS,
        Register::GS => Seg::GS,
        _ => Seg::DS,
    }
}

impl Insn {
    pub(crate) fn new(mut i: Instruction, code32: bool) -> Self {
        p6_alias(&mut i);
        let ip_mask = if code32 { u32::MAX } else { 0xFFFF };
        let (handler, ip_blind) = select_handler(&i);
        let mut d = Insn {
            handler,
            i,
            len: i.len() as u32,
            ip: i.ip32(),
            ip_blind,
            next_ip: (i.ip32().wrapping_add(i.len() as u32)) & ip_mask,
            seg: Seg::DS,
            base: reg::ZERO as u8,
            index: reg::ZERO as u8,
            scale: 0,
            disp: 0,
            amask: u32::MAX,
            r0: 0,
            r1: 0,
            r2: 0,
            imm: 0,
        };
        let mut have_imm = false;
        for op in 0..i.op_count().min(3) {
            let kind = i.op_kind(op);
            match kind {
                OpKind::Register => {
                    let n = reg_num(i.op_register(op));
                    match op {
                        0 => d.r0 = n,
                        1 => d.r1 = n,
                        _ => d.r2 = n,
                    }
                }
                OpKind::Memory => {
                    d.seg = seg_of(i.memory_segment());
                    let base = i.memory_base();
                    let index = i.memory_index();
                    if base != Register::None {
                        d.base = reg_num(base);
                    }
                    if index != Register::None {
                        d.index = reg_num(index);
                        d.scale = i.memory_index_scale().trailing_zeros() as u8;
                    }
                    d.disp = i.memory_displacement32();
                    let addr16 = base.is_gpr16()
                        || index.is_gpr16()
                        || (base == Register::None
                            && index == Register::None
                            && i.memory_displ_size() == 2);
                    d.amask = if addr16 { 0xFFFF } else { u32::MAX };
                }
                OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => {
                    d.seg = seg_of(i.memory_segment());
                    d.amask = 0xFFFF;
                }
                OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => {
                    d.seg = seg_of(i.memory_segment());
                }
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8_2nd
                    if !have_imm =>
                {
                    have_imm = true;
                    d.imm = i.immediate(op) as u32;
                }
                _ => {}
            }
        }
        d
    }

    /// The memory operand is absent (operand 0 is a register).
    #[inline(always)]
    pub fn op0_is_reg(&self) -> bool {
        self.i.op0_kind() == OpKind::Register
    }
}

/// Encodings that later CPUs gave new meanings but a P6 executes as the
/// old instruction with an ignored prefix: F3 0F BC/BD (TZCNT/LZCNT since
/// BMI1/ABM) are REP BSF/BSR here. Compilers emit `rep bsf` on purpose
/// (it is TZCNT where available and BSF elsewhere), so this matters.
fn p6_alias(i: &mut Instruction) {
    let code = match i.code() {
        Code::Tzcnt_r16_rm16 => Code::Bsf_r16_rm16,
        Code::Tzcnt_r32_rm32 => Code::Bsf_r32_rm32,
        Code::Lzcnt_r16_rm16 => Code::Bsr_r16_rm16,
        Code::Lzcnt_r32_rm32 => Code::Bsr_r32_rm32,
        _ => return,
    };
    i.set_code(code);
}

/// Mnemonics that accept a LOCK prefix (with a memory destination).
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

/// The handler for `i`, and whether it is "IP-blind": it neither reads nor
/// writes `eip`/`next_eip` (directly or through anything it calls), so
/// the run loop need not keep them current while it runs. The ALU and
/// data-movement handlers are; everything else is assumed not to be.
fn select_handler(i: &Instruction) -> (Handler, bool) {
    if i.is_invalid() {
        return (invalid_opcode, false);
    }
    if i.has_lock_prefix() && (!lockable(i.mnemonic()) || i.op0_kind() != OpKind::Memory) {
        return (invalid_opcode, false);
    }
    if let Some(h) = super::alu::handler(i).or_else(|| super::data::handler(i)) {
        return (h, true);
    }
    let h = super::string::handler(i)
        .or_else(|| super::branch::handler(i))
        .or_else(|| super::far::handler(i))
        .or_else(|| super::segment::handler(i))
        .or_else(|| super::system::handler(i))
        .or_else(|| super::interrupt::handler(i))
        .or_else(|| super::x87::handler(i))
        .unwrap_or(not_implemented);
    (h, false)
}

/// An encoding the CPU does not decode: #UD.
fn invalid_opcode(_: &mut Cpu, _: &Insn) -> Result<()> {
    Err(Fault::UD)
}

/// A valid encoding this CPU model does not implement (a later
/// extension, or a gap): #UD for the guest, a log line for the operator.
fn not_implemented(cpu: &mut Cpu, d: &Insn) -> Result<()> {
    cpu.note_unimplemented(d.i.code());
    Err(Fault::UD)
}

impl Cpu {
    /// Rate-limited operator log line for an instruction raising #UD
    /// because it is not implemented.
    pub(crate) fn note_unimplemented(&mut self, code: Code) {
        if self.sys.unimplemented_logged < 64 {
            self.sys.unimplemented_logged += 1;
            tracing::warn!(
                target: "bulkhead::cpu",
                "instruction not implemented, raising #UD: {code:?} at {:04x}:{:08x}",
                self.segs[Seg::CS as usize].selector,
                self.eip
            );
        }
    }

    /// Installs (or removes) a hook called before every instruction.
    /// While it is installed blocks hold one instruction.
    pub fn set_trace(&mut self, hook: Option<TraceHook>) {
        self.trace = hook;
        self.stop_block = true;
    }

    /// Runs until `budget` instructions have retired or something stops the CPU.
    pub fn run(&mut self, budget: u64) -> RunExit {
        let end = self.icount.saturating_add(budget);
        loop {
            // No block runs between chains (see `CodeCache::retired`).
            if !self.code.retired.is_empty() {
                self.code.retired.clear();
            }
            if let Some(r) = self.shutdown {
                return RunExit::Shutdown(r);
            }
            let sig = self.signals.load();
            if (sig != 0 || self.halted || self.flags.test(flags::TF))
                && let Some(exit) = self.service_signals(sig)
            {
                return exit;
            }
            if self.icount >= end {
                return RunExit::BudgetExhausted;
            }
            debug_assert_eq!(self.tlb.user_off != 0, self.cpl == 3, "put_cpl keeps them");
            let single = self.irq_shadow || self.trace.is_some() || self.flags.test(flags::TF);
            let mut max = if single {
                1
            } else {
                (end - self.icount).min(MAX_BLOCK as u64) as usize
            };
            let tf = self.flags.test(flags::TF);
            self.irq_shadow = false;
            self.ss_shadow = false;
            let before = self.icount;
            if single {
                self.run_block(max);
            } else {
                // Chain blocks while nothing needs looking at: a block
                // that stops early (mode change, HLT, STI, fault...), one
                // that is not linkable (it may have changed CS, CPL, the
                // code size or TF) or a raised signal goes back through
                // the checks above. CS may have changed since the last
                // chain: drop the links.
                self.tlb.epoch += 1;
                let mut prev = std::ptr::null();
                while let Chain::Next(p) = self.run_linked(max, prev)
                    && self.icount < end
                    && self.signals.load() == 0
                {
                    prev = p;
                    max = (end - self.icount).min(MAX_BLOCK as u64) as usize;
                }
            }
            // MOV SS / POP SS hold the trap off until after the next
            // instruction (SDM vol. 3, 6.8.3); TF was then still set.
            if tf && !self.ss_shadow && self.icount > before && self.shutdown.is_none() {
                // Single-step trap after the instruction (SDM vol. 3, 17.3.1.4).
                self.dr[6] |= 1 << 14;
                self.deliver_fault(Fault::DB);
            }
        }
    }

    /// Looks at the signal word (and HLT state) between blocks. Returns
    /// `Some` when `run` must return.
    #[cold]
    fn service_signals(&mut self, sig: u32) -> Option<RunExit> {
        if sig & Signals::STOP != 0 && self.signals.take(Signals::STOP) != 0 {
            return Some(RunExit::Stopped);
        }
        if sig & Signals::RESET != 0 && self.signals.take(Signals::RESET) != 0 {
            self.reset();
            return Some(RunExit::Reset);
        }
        if sig & Signals::A20_CHANGED != 0 && self.signals.take(Signals::A20_CHANGED) != 0 {
            let on = self.signals.a20();
            if on != self.mem.a20_enabled() {
                self.mem.set_a20(on);
                self.tlb.flush_all();
            }
        }
        if !self.irq_shadow {
            if sig & Signals::NMI != 0
                && !self.sys.nmi_blocked
                && self.signals.take(Signals::NMI) != 0
            {
                self.halted = false;
                self.sys.nmi_blocked = true;
                self.deliver_external(super::vector::NMI);
            } else if sig & Signals::INTR != 0
                && self.flags.test(flags::IF)
                && let Some(v) = self.bus.interrupt_ack()
            {
                self.halted = false;
                self.deliver_external(v);
            }
        }
        if self.halted {
            return Some(if self.flags.test(flags::IF) {
                RunExit::Halted
            } else {
                RunExit::HaltedInterruptsDisabled
            });
        }
        None
    }

    /// Finds (or decodes) the block at CS:EIP and runs up to `max` of its instructions.
    /// Returns true when they all ran: no fault, and no handler asked for
    /// the block to stop.
    #[inline(always)]
    fn run_block(&mut self, max: usize) -> bool {
        let block = match self.fetch_block() {
            Ok(b) => b,
            Err(f) => {
                self.deliver_fault(f);
                return false;
            }
        };
        let cs = &self.segs[Seg::CS as usize];
        let limit_ok = self.eip >= cs.lo
            && self.eip <= cs.hi
            && cs.hi - self.eip >= block.span.saturating_sub(1);
        self.stop_block = false;
        let insns = &block.insns[..block.insns.len().min(max)];
        if limit_ok && self.trace.is_none() {
            self.run_insns::<false>(insns, block.blind_body)
        } else {
            self.run_insns::<true>(insns, false)
        }
    }

    /// `run_block` within a chain: `prev`, the linkable block that just ran
    /// to its end, may know the block at CS:EIP (see `Block::links`).
    /// Blocks are referred to by pointer here: `prev` and linked blocks
    /// are cached blocks, which `CodeCache::retired` keeps alive until the
    /// chain ends even when a write drops them from the cache.
    #[inline(always)]
    fn run_linked(&mut self, max: usize, prev: *const Block) -> Chain {
        let epoch = self.tlb.epoch;
        let linked = if prev.is_null() {
            None
        } else {
            // SAFETY: `prev` is a block cached during this chain.
            unsafe { (*prev).follow(self.eip, epoch) }
        };
        let held: Rc<Block>;
        let block: &Block = match linked {
            // SAFETY: a current link names a block the cache holds.
            Some(b) => unsafe { &*b },
            None => {
                let block = match self.fetch_block() {
                    Ok(b) => b,
                    Err(f) => {
                        self.deliver_fault(f);
                        return Chain::Stop;
                    }
                };
                let cs = &self.segs[Seg::CS as usize];
                let limit_ok = self.eip >= cs.lo
                    && self.eip <= cs.hi
                    && cs.hi - self.eip >= block.span.saturating_sub(1);
                if !limit_ok || self.trace.is_some() {
                    self.stop_block = false;
                    let insns = &block.insns[..block.insns.len().min(max)];
                    self.run_insns::<true>(insns, false);
                    return Chain::Stop;
                }
                // The fetch may have filled the TLB or decoded: then the
                // epoch moved and the link would never be followed.
                if !prev.is_null() && block.key != u64::MAX {
                    // SAFETY: as above.
                    unsafe { (*prev).link(self.eip, self.tlb.epoch, Rc::as_ptr(&block)) };
                }
                held = block;
                &held
            }
        };
        self.stop_block = false;
        let insns = if block.insns.len() <= max {
            &block.insns[..]
        } else {
            &block.insns[..max]
        };
        let done = if self.jit.on && insns.len() == block.insns.len() && block.key != u64::MAX {
            self.run_compiled(block)
        } else {
            self.run_insns::<false>(insns, block.blind_body)
        };
        if !done {
            return Chain::Stop;
        }
        // Uncached blocks (key u64::MAX) are never linkable.
        if block.linkable {
            Chain::Next(block)
        } else {
            Chain::Stop
        }
    }

    /// `run_insns` over the whole (cached) `block` through its compiled
    /// code, compiling it once it is hot (see `jit`).
    #[inline(never)]
    fn run_compiled(&mut self, block: &Block) -> bool {
        let f = match block.jit.get() {
            JitSlot::Code { f, generation } if generation == self.jit.generation => f,
            JitSlot::Never => return self.run_insns::<false>(&block.insns, block.blind_body),
            JitSlot::Cold(n) if n + 1 < self.jit.threshold => {
                block.jit.set(JitSlot::Cold(n + 1));
                return self.run_insns::<false>(&block.insns, block.blind_body);
            }
            _ => match self.jit.compile(&block.insns) {
                Some((f, generation)) => {
                    block.jit.set(JitSlot::Code { f, generation });
                    f
                }
                None => {
                    block.jit.set(JitSlot::Never);
                    return self.run_insns::<false>(&block.insns, block.blind_body);
                }
            },
        };
        // SAFETY: `f` is this block's code of the current generation (its
        // memory was not reused); it reads and writes the CPU only as the
        // handlers it stands for would, and refers to `block.insns`, which
        // lives as long as `block`.
        let r = unsafe { f(self) };
        if r == jit::ENDED {
            return false;
        }
        let k = r as usize;
        self.icount += k as u64;
        if k == block.insns.len() {
            self.retire(&block.insns[k - 1]);
            return true;
        }
        // Bailed at instruction k before it changed anything.
        self.run_insns::<false>(&block.insns[k..], block.blind_body)
    }

    /// Runs decoded instructions until one ends the block or faults.
    /// `CHECKED`: check each against the CS limit and call the trace hook
    /// (the block may run past the limit, or tracing is on).
    /// Returns true when none faulted or stopped the block.
    /// `blind_body`: every instruction but the last is IP-blind (true of
    /// any prefix of a block whose `blind_body` holds).
    #[inline(always)]
    fn run_insns<const CHECKED: bool>(&mut self, insns: &[Insn], blind_body: bool) -> bool {
        if !CHECKED && blind_body {
            let Some((last, body)) = insns.split_last() else {
                return true;
            };
            for (k, d) in body.iter().enumerate() {
                if let Err(f) = (d.handler)(self, d) {
                    self.eip = d.ip;
                    self.icount += k as u64;
                    self.deliver_fault(f);
                    return false;
                }
                if self.stop_block {
                    self.eip = d.next_ip;
                    self.icount += k as u64 + 1;
                    return false;
                }
            }
            self.icount += body.len() as u64;
            return self.run_insns::<false>(std::slice::from_ref(last), false);
        }
        // Retired instructions are counted per block; the instructions
        // that read the count mid-block (RDTSC, RDMSR, WRMSR, RDPMC)
        // always start a block (see `reads_icount`). `eip`/`next_eip` are
        // kept current only around handlers that are not IP-blind, and
        // set from the decoded instruction at faults and at the end.
        for (k, d) in insns.iter().enumerate() {
            if CHECKED {
                self.eip = d.ip;
                let cs = &self.segs[Seg::CS as usize];
                if self.eip > cs.hi || cs.hi - self.eip < d.len - 1 {
                    self.icount += k as u64;
                    self.deliver_fault(Fault::GP0);
                    return false;
                }
                if let Some(mut hook) = self.trace.take() {
                    hook(self, &d.i);
                    self.trace = Some(hook);
                }
            }
            if !d.ip_blind {
                self.eip = d.ip;
                self.next_eip = d.next_ip;
            }
            if let Err(f) = (d.handler)(self, d) {
                if d.ip_blind {
                    self.eip = d.ip;
                }
                self.icount += k as u64;
                self.deliver_fault(f);
                return false;
            }
            if self.stop_block {
                self.retire(d);
                self.icount += k as u64 + 1;
                return false;
            }
        }
        if let Some(d) = insns.last() {
            self.retire(d);
        }
        self.icount += insns.len() as u64;
        true
    }

    /// EIP after `d` completed.
    #[inline(always)]
    pub(crate) fn retire(&mut self, d: &Insn) {
        self.eip = if d.ip_blind { d.next_ip } else { self.next_eip };
    }

    /// The block at CS:EIP, from the cache or freshly decoded.
    #[inline(always)]
    fn fetch_block(&mut self) -> Result<Rc<Block>> {
        let lin = self.segs[Seg::CS as usize].base.wrapping_add(self.eip);
        let user = self.cpl == 3;
        let e = &self.tlb.sets[user as usize][tlb_index(lin)];
        if e.rtag != lin & !0xFFF {
            return self.fetch_block_miss(lin, user);
        }
        let off = lin.wrapping_add(e.addend);
        let key = off as u64 | (self.eip as u64) << 32;
        if let Some(b) = self.code.get(key)
            && b.code32 == self.code32
        {
            return Ok(b);
        }
        self.decode_block(lin, off, key, user)
    }

    /// `fetch_block` when the code page is not in the TLB.
    #[inline(never)]
    fn fetch_block_miss(&mut self, lin: u32, user: bool) -> Result<Rc<Block>> {
        let phys = self.translate_fill(lin, false, user)?;
        let off = match self.mem.region(phys) {
            Region::Ram(o) | Region::Rom(o) => o,
            Region::Mmio => return self.decode_uncached(lin, user),
        };
        let key = off as u64 | (self.eip as u64) << 32;
        if let Some(b) = self.code.get(key)
            && b.code32 == self.code32
        {
            return Ok(b);
        }
        self.decode_block(lin, off, key, user)
    }

    #[cold]
    fn decode_block(&mut self, lin: u32, off: u32, key: u64, user: bool) -> Result<Rc<Block>> {
        let page_end = (off & !0xFFF) as usize + 4096;
        let bytes = &self.mem.backing[off as usize..page_end];
        let bitness = if self.code32 { 32 } else { 16 };
        let mut decoder = Decoder::with_ip(bitness, bytes, self.eip as u64, DecoderOptions::NONE);
        let mut insns = Vec::with_capacity(8);
        let mut span = 0u32;
        let mut linkable = true;
        let mut i = Instruction::default();
        while decoder.can_decode() && insns.len() < MAX_BLOCK {
            decoder.decode_out(&mut i);
            if decoder.last_error() == DecoderError::NoMoreBytes {
                break;
            }
            if reads_icount(&i) && !insns.is_empty() {
                // Left for the next block, which it starts.
                break;
            }
            span += i.len() as u32;
            let ends = ends_block(&i);
            let d = Insn::new(i, self.code32);
            linkable &= d.ip_blind || links_ok(&d.i);
            insns.push(d);
            if ends {
                break;
            }
        }
        if insns.is_empty() {
            // The first instruction crosses into the next page.
            return self.decode_uncached(lin, user);
        }
        let block = Rc::new(Block::new(key, insns.into(), span, self.code32, linkable));
        if self.code.insert(key, block.clone()) {
            self.tlb.protect_page(off & !0xFFF);
        }
        // The insert may have dropped cached blocks (one replaced, or all).
        self.tlb.epoch += 1;
        Ok(block)
    }

    /// Decodes one instruction whose bytes are fetched one at a time
    /// through the TLB (page-crossing instructions, code in MMIO). It is
    /// not cached.
    #[cold]
    fn decode_uncached(&mut self, lin: u32, user: bool) -> Result<Rc<Block>> {
        let mut buf = [0u8; 15];
        let mut n = 0;
        let mut fault = None;
        while n < 15 {
            match self.read_lin_u8(lin.wrapping_add(n as u32), user) {
                Ok(b) => buf[n] = b,
                Err(f) => {
                    fault = Some(f);
                    break;
                }
            }
            n += 1;
        }
        let bitness = if self.code32 { 32 } else { 16 };
        let mut decoder =
            Decoder::with_ip(bitness, &buf[..n], self.eip as u64, DecoderOptions::NONE);
        let i = decoder.decode();
        if decoder.last_error() == DecoderError::NoMoreBytes {
            return Err(fault.unwrap_or(Fault::GP0));
        }
        Ok(Rc::new(Block::new(
            u64::MAX,
            vec![Insn::new(i, self.code32)].into(),
            i.len() as u32,
            self.code32,
            false,
        )))
    }

    /// Drops cached code on the backing page holding `off` (a write hit it).
    pub(crate) fn invalidate_code(&mut self, off: u32) {
        self.code.invalidate_page(off >> 12);
        self.tlb.epoch += 1;
        self.stop_block = true;
    }
}

/// Instructions that read the retired-instruction count (the TSC when it
/// counts instructions), which is exact only at the start of a block.
fn reads_icount(i: &Instruction) -> bool {
    matches!(
        i.code(),
        Code::Rdtsc | Code::Rdmsr | Code::Wrmsr | Code::Rdpmc
    )
}

/// Instructions after which a block ends: every control transfer and
/// interrupt-related instruction. Handlers that change modes end the block
/// themselves through `stop_block`.
fn ends_block(i: &Instruction) -> bool {
    i.flow_control() != FlowControl::Next || matches!(i.mnemonic(), Mnemonic::Hlt)
}
