//! EFLAGS with lazily computed arithmetic flags.
//!
//! Arithmetic instructions record their operands, result, width and kind;
//! CF/PF/AF/ZF/SF/OF are derived only when something reads them (a Jcc, a
//! PUSHF, an ADC). Instructions whose flag rules do not fit the lazy kinds
//! (shifts, multiplies, BCD) store the six flags directly with `set_arith`.

pub const CF: u32 = 1 << 0;
pub const PF: u32 = 1 << 2;
pub const AF: u32 = 1 << 4;
pub const ZF: u32 = 1 << 6;
pub const SF: u32 = 1 << 7;
pub const TF: u32 = 1 << 8;
pub const IF: u32 = 1 << 9;
pub const DF: u32 = 1 << 10;
pub const OF: u32 = 1 << 11;
pub const IOPL: u32 = 3 << 12;
pub const NT: u32 = 1 << 14;
pub const RF: u32 = 1 << 16;
pub const VM: u32 = 1 << 17;
pub const AC: u32 = 1 << 18;
pub const VIF: u32 = 1 << 19;
pub const VIP: u32 = 1 << 20;
pub const ID: u32 = 1 << 21;
/// Bit 1 always reads as 1.
pub const FIXED1: u32 = 1 << 1;
/// The six status flags.
pub const ARITH: u32 = CF | PF | AF | ZF | SF | OF;

/// How the pending status flags are to be derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Lazy {
    /// The status flags in `bits` are valid.
    None,
    Add,
    /// Add with carry-in 1 (with carry-in 0 it is recorded as `Add`).
    Adc1,
    Sub,
    /// Subtract with borrow-in 1.
    Sbb1,
    /// AND/OR/XOR/TEST: CF = OF = AF = 0.
    Logic,
    /// INC: like Add with b = 1, CF kept in `bits`.
    Inc,
    /// DEC: like Sub with b = 1, CF kept in `bits`.
    Dec,
    /// SHL/SHR/SAR, MUL/IMUL: `a` holds CF and `b` OF (0 or 1); AF = 0.
    CarryOverflow,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Flags {
    /// EFLAGS; the status bits are stale unless `lazy` is `None`
    /// (CF stays valid for `Inc`/`Dec`).
    pub(crate) bits: u32,
    pub(crate) lazy: Lazy,
    /// Sign bit of the operation's width (0x80, 0x8000 or 0x8000_0000).
    pub(crate) sign: u32,
    pub(crate) a: u32,
    pub(crate) b: u32,
    pub(crate) res: u32,
}

impl Default for Flags {
    fn default() -> Self {
        Self {
            bits: FIXED1,
            lazy: Lazy::None,
            sign: 0x8000_0000,
            a: 0,
            b: 0,
            res: 0,
        }
    }
}

/// The width mask for an operand size in bytes.
#[inline(always)]
pub(crate) const fn size_mask(bytes: u32) -> u32 {
    match bytes {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

#[inline(always)]
const fn sign_of(bytes: u32) -> u32 {
    match bytes {
        1 => 0x80,
        2 => 0x8000,
        _ => 0x8000_0000,
    }
}

#[inline(always)]
fn parity(v: u32) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

impl Flags {
    /// The whole EFLAGS value.
    pub fn get(&self) -> u32 {
        if self.lazy == Lazy::None {
            return self.bits;
        }
        let mut f = self.bits & !ARITH;
        if self.cf() {
            f |= CF;
        }
        if parity(self.res) {
            f |= PF;
        }
        if self.af() {
            f |= AF;
        }
        if self.res == 0 {
            f |= ZF;
        }
        if self.res & self.sign != 0 {
            f |= SF;
        }
        if self.of() {
            f |= OF;
        }
        f
    }

    /// Replaces EFLAGS wholesale (the caller has applied any write masks).
    #[inline]
    pub fn set(&mut self, value: u32) {
        self.bits = (value & !(1 << 3 | 1 << 5 | 1 << 15)) | FIXED1;
        self.lazy = Lazy::None;
    }

    /// Non-status bits (IF, DF, IOPL, VM, ...), which are never lazy.
    #[inline(always)]
    pub fn control(&self) -> u32 {
        self.bits & !ARITH
    }

    /// Sets or clears one or more non-status bits.
    #[inline]
    pub fn set_control(&mut self, mask: u32, on: bool) {
        debug_assert_eq!(mask & ARITH, 0);
        if on {
            self.bits |= mask
        } else {
            self.bits &= !mask
        }
    }

    #[inline(always)]
    pub fn test(&self, mask: u32) -> bool {
        debug_assert_eq!(mask & ARITH, 0);
        self.bits & mask != 0
    }

    #[inline]
    pub fn cf(&self) -> bool {
        match self.lazy {
            Lazy::None | Lazy::Inc | Lazy::Dec => self.bits & CF != 0,
            Lazy::Add => self.res < self.a,
            Lazy::Adc1 => self.res <= self.a,
            Lazy::Sub => self.a < self.b,
            Lazy::Sbb1 => self.a <= self.b,
            Lazy::Logic => false,
            Lazy::CarryOverflow => self.a != 0,
        }
    }

    #[inline]
    pub fn zf(&self) -> bool {
        match self.lazy {
            Lazy::None => self.bits & ZF != 0,
            _ => self.res == 0,
        }
    }

    #[inline]
    pub fn sf(&self) -> bool {
        match self.lazy {
            Lazy::None => self.bits & SF != 0,
            _ => self.res & self.sign != 0,
        }
    }

    #[inline]
    pub fn pf(&self) -> bool {
        match self.lazy {
            Lazy::None => self.bits & PF != 0,
            _ => parity(self.res),
        }
    }

    #[inline]
    pub fn af(&self) -> bool {
        match self.lazy {
            Lazy::None => self.bits & AF != 0,
            Lazy::Logic | Lazy::CarryOverflow => false,
            _ => (self.a ^ self.b ^ self.res) & 0x10 != 0,
        }
    }

    #[inline]
    pub fn of(&self) -> bool {
        match self.lazy {
            Lazy::None => self.bits & OF != 0,
            Lazy::Add | Lazy::Adc1 | Lazy::Inc => {
                (self.a ^ self.res) & (self.b ^ self.res) & self.sign != 0
            }
            Lazy::Sub | Lazy::Sbb1 | Lazy::Dec => {
                (self.a ^ self.b) & (self.a ^ self.res) & self.sign != 0
            }
            Lazy::Logic => false,
            Lazy::CarryOverflow => self.b != 0,
        }
    }

    /// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc).
    #[inline]
    pub fn cond(&self, cc: u8) -> bool {
        let r = match cc >> 1 {
            0 => self.of(),
            1 => self.cf(),
            2 => self.zf(),
            3 => self.cf() || self.zf(),
            4 => self.sf(),
            5 => self.pf(),
            6 => self.sf() != self.of(),
            _ => self.zf() || (self.sf() != self.of()),
        };
        r ^ (cc & 1 != 0)
    }

    /// Records `res = a + b (+ carry)` at width `bytes`; operands already masked.
    #[inline(always)]
    pub fn add(&mut self, bytes: u32, a: u32, b: u32, carry: bool, res: u32) {
        self.lazy = if carry { Lazy::Adc1 } else { Lazy::Add };
        self.record(bytes, a, b, res);
    }

    /// Records `res = a - b (- borrow)`; CMP and NEG (a = 0) use it too.
    #[inline(always)]
    pub fn sub(&mut self, bytes: u32, a: u32, b: u32, borrow: bool, res: u32) {
        self.lazy = if borrow { Lazy::Sbb1 } else { Lazy::Sub };
        self.record(bytes, a, b, res);
    }

    /// Records a logical result (AND, OR, XOR, TEST).
    #[inline(always)]
    pub fn logic(&mut self, bytes: u32, res: u32) {
        self.lazy = Lazy::Logic;
        self.record(bytes, 0, 0, res);
    }

    /// Records INC (`dec == false`) or DEC of `a` giving `res`; CF is kept.
    #[inline(always)]
    pub fn inc_dec(&mut self, bytes: u32, a: u32, res: u32, dec: bool) {
        // After None, Inc and Dec, CF is already in `bits` (a DEC/JNZ loop
        // never leaves that state).
        if !matches!(self.lazy, Lazy::None | Lazy::Inc | Lazy::Dec) {
            let cf = self.cf();
            self.bits = (self.bits & !CF) | cf as u32;
        }
        self.lazy = if dec { Lazy::Dec } else { Lazy::Inc };
        self.record(bytes, a, 1, res);
    }

    #[inline(always)]
    fn record(&mut self, bytes: u32, a: u32, b: u32, res: u32) {
        self.sign = sign_of(bytes);
        self.a = a;
        self.b = b;
        self.res = res;
    }

    /// Records a result (masked to `bytes`) with explicit CF and OF (each
    /// 0 or 1), as shifts and multiplies set them; SF, ZF and PF follow
    /// the result, AF is cleared.
    #[inline(always)]
    pub fn carry_overflow(&mut self, bytes: u32, cf: u32, of: u32, res: u32) {
        self.lazy = Lazy::CarryOverflow;
        self.record(bytes, cf, of, res);
    }

    /// Stores the six status flags directly from `status` (other bits ignored).
    #[inline]
    pub fn set_arith(&mut self, status: u32) {
        self.bits = (self.bits & !ARITH) | (status & ARITH);
        self.lazy = Lazy::None;
    }

    /// Sets or clears some status flags, leaving the others as they are.
    #[inline]
    pub fn set_status(&mut self, mask: u32, on: bool) {
        let f = self.get();
        self.bits = if on { f | mask } else { f & !mask };
        self.lazy = Lazy::None;
    }

    /// Status flags SF, ZF and PF for a result at width `bytes` (for
    /// instructions that compute the rest themselves).
    pub fn szp(bytes: u32, res: u32) -> u32 {
        let res = res & size_mask(bytes);
        let mut f = 0;
        if res == 0 {
            f |= ZF;
        }
        if res & sign_of(bytes) != 0 {
            f |= SF;
        }
        if parity(res) {
            f |= PF;
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add8(a: u32, b: u32) -> u32 {
        let mut f = Flags::default();
        f.add(1, a, b, false, (a + b) & 0xFF);
        f.get() & ARITH
    }

    fn sub8(a: u32, b: u32, borrow: bool) -> u32 {
        let mut f = Flags::default();
        f.sub(
            1,
            a,
            b,
            borrow,
            a.wrapping_sub(b).wrapping_sub(borrow as u32) & 0xFF,
        );
        f.get() & ARITH
    }

    #[test]
    fn add_sets_carry_overflow_and_adjust() {
        assert_eq!(add8(0xFF, 1), CF | ZF | AF | PF);
        assert_eq!(add8(0x7F, 1), OF | SF | AF);
        assert_eq!(add8(1, 2), PF);
    }

    #[test]
    fn sbb_with_borrow_of_equal_operands_borrows() {
        assert_eq!(sub8(5, 5, true) & CF, CF);
        assert_eq!(sub8(5, 5, false) & (CF | ZF), ZF);
        assert_eq!(sub8(0x80, 1, false) & OF, OF);
    }

    #[test]
    fn inc_keeps_carry() {
        let mut f = Flags::default();
        f.set(CF);
        f.inc_dec(4, 0xFFFF_FFFF, 0, false);
        assert_eq!(f.get() & (CF | ZF), CF | ZF);
    }

    #[test]
    fn conditions_follow_signed_compare() {
        let mut f = Flags::default();
        f.sub(4, (-5i32) as u32, 3, false, (-8i32) as u32);
        assert!(f.cond(0xC)); // L
        assert!(!f.cond(0x2)); // B is false: 0xFFFFFFFB > 3 unsigned
        assert!(f.cond(0x3)); // AE
    }
}
