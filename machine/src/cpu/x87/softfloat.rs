//! 80-bit extended-precision soft-float, as the x87 computes it.
//!
//! An [`F80`] is the raw register format: sign, 15-bit biased exponent and
//! a 64-bit significand with an explicit integer bit. Arithmetic works on
//! an unpacked form (`sign`, unbiased exponent `e`, significand `m` with
//! the value `m / 2^63 * 2^e`) and widens to 128 bits so every result is
//! exact before the single rounding step (`round`), which applies the
//! rounding mode, the precision-control width (24, 53 or 64 bits) and the
//! destination's exponent range, and records the IEEE exceptions.
//!
//! The x87-specific rules implemented here (Intel SDM vol. 1, ch. 4 and 8):
//! - NaN propagation: an SNaN operand raises IE and is quieted; with two
//!   NaN operands the one with the larger significand wins (the positive
//!   one on a tie), a QNaN being preferred to an SNaN;
//! - the default NaN ("real indefinite") is negative, with significand
//!   `C000_0000_0000_0000`;
//! - unnormals, pseudo-NaNs and pseudo-infinities are invalid operands (IE),
//!   pseudo-denormals are accepted as denormals (DE), as on the 387 and later;
//! - tininess is detected after rounding; a masked underflow is flagged only
//!   when the result is also inexact;
//! - an unmasked overflow or underflow with a register destination
//!   delivers the result with its exponent wrapped by 24576 (`Env::wrap`).
//!
//! Nothing here panics for any input.

/// Exception flags, in status-word / control-word bit order.
pub const IE: u8 = 1 << 0;
pub const DE: u8 = 1 << 1;
pub const ZE: u8 = 1 << 2;
pub const OE: u8 = 1 << 3;
pub const UE: u8 = 1 << 4;
pub const PE: u8 = 1 << 5;

/// Exponent bias of the extended format.
const BIAS: i32 = 16383;
/// The exponent adjustment applied to results of an unmasked overflow or
/// underflow delivered to a register.
const WRAP: i32 = 24576;

/// Rounding control (control word bits 10-11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    Nearest,
    Down,
    Up,
    Zero,
}

impl Round {
    pub fn from_bits(rc: u16) -> Round {
        match rc & 3 {
            0 => Round::Nearest,
            1 => Round::Down,
            2 => Round::Up,
            _ => Round::Zero,
        }
    }
}

/// The environment an operation runs in and the exceptions it raised.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    pub round: Round,
    /// Significand width arithmetic results are rounded to: 24, 53 or 64.
    pub prec: u32,
    /// Exception masks (control word bits 0-5): a set bit masks.
    pub masks: u8,
    /// Exceptions raised so far.
    pub flags: u8,
    /// The last inexact rounding went up in magnitude (becomes C1).
    pub rounded_up: bool,
    /// The destination is a register: unmasked OE/UE deliver a wrapped result.
    pub wrap: bool,
}

impl Env {
    /// Round to nearest, 64-bit precision, everything masked.
    pub fn new() -> Env {
        Env {
            round: Round::Nearest,
            prec: 64,
            masks: 0x3F,
            flags: 0,
            rounded_up: false,
            wrap: true,
        }
    }

    /// The environment a control word describes.
    pub fn from_cw(cw: u16) -> Env {
        Env {
            round: Round::from_bits(cw >> 10),
            prec: match (cw >> 8) & 3 {
                0 => 24,
                2 => 53,
                _ => 64,
            },
            masks: (cw & 0x3F) as u8,
            ..Env::new()
        }
    }

    #[inline]
    pub fn raise(&mut self, f: u8) {
        self.flags |= f;
    }

    fn unmasked(&self, f: u8) -> bool {
        self.masks & f == 0
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// An 80-bit extended-precision value in register format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct F80 {
    /// Sign (bit 15) and biased exponent (bits 0-14).
    pub se: u16,
    /// Significand with the explicit integer bit at bit 63.
    pub sig: u64,
}

const INT_BIT: u64 = 1 << 63;
const QUIET_BIT: u64 = 1 << 62;

impl F80 {
    pub const ZERO: F80 = F80 { se: 0, sig: 0 };
    pub const NEG_ZERO: F80 = F80 { se: 0x8000, sig: 0 };
    pub const ONE: F80 = F80 {
        se: 0x3FFF,
        sig: INT_BIT,
    };
    pub const INF: F80 = F80 {
        se: 0x7FFF,
        sig: INT_BIT,
    };
    /// The default NaN ("real indefinite").
    pub const INDEFINITE: F80 = F80 {
        se: 0xFFFF,
        sig: 0xC000_0000_0000_0000,
    };

    pub const fn new(sign: bool, exp: u16, sig: u64) -> F80 {
        F80 {
            se: (sign as u16) << 15 | (exp & 0x7FFF),
            sig,
        }
    }

    pub fn from_le_bytes(b: [u8; 10]) -> F80 {
        let mut lo = [0; 8];
        lo.copy_from_slice(&b[..8]);
        F80 {
            sig: u64::from_le_bytes(lo),
            se: u16::from_le_bytes([b[8], b[9]]),
        }
    }

    pub fn to_le_bytes(self) -> [u8; 10] {
        let mut b = [0; 10];
        b[..8].copy_from_slice(&self.sig.to_le_bytes());
        b[8..].copy_from_slice(&self.se.to_le_bytes());
        b
    }

    #[inline]
    pub fn sign(self) -> bool {
        self.se & 0x8000 != 0
    }
    #[inline]
    pub fn exp(self) -> u16 {
        self.se & 0x7FFF
    }
    pub fn neg(self) -> F80 {
        F80 {
            se: self.se ^ 0x8000,
            sig: self.sig,
        }
    }
    pub fn abs(self) -> F80 {
        F80 {
            se: self.se & 0x7FFF,
            sig: self.sig,
        }
    }
    pub fn with_sign(self, sign: bool) -> F80 {
        F80 {
            se: (self.se & 0x7FFF) | (sign as u16) << 15,
            sig: self.sig,
        }
    }

    /// Unnormal, pseudo-NaN or pseudo-infinity: an invalid operand.
    #[inline]
    pub fn is_unsupported(self) -> bool {
        self.exp() != 0 && self.sig & INT_BIT == 0
    }
    pub fn is_nan(self) -> bool {
        self.exp() == 0x7FFF && self.sig & INT_BIT != 0 && self.sig << 1 != 0
    }
    pub fn is_snan(self) -> bool {
        self.is_nan() && self.sig & QUIET_BIT == 0
    }
    pub fn is_inf(self) -> bool {
        self.exp() == 0x7FFF && self.sig == INT_BIT
    }
    pub fn is_zero(self) -> bool {
        self.exp() == 0 && self.sig == 0
    }
    /// Denormal or pseudo-denormal.
    pub fn is_denormal(self) -> bool {
        self.exp() == 0 && self.sig != 0
    }
    /// A finite value this FPU accepts (zero, normal, denormal).
    fn is_finite_ok(self) -> bool {
        self.exp() != 0x7FFF && !self.is_unsupported()
    }
    fn quiet(self) -> F80 {
        F80 {
            se: self.se,
            sig: self.sig | QUIET_BIT,
        }
    }

    /// Unpacks a finite nonzero value: (sign, unbiased exponent, normalized significand).
    pub(super) fn unpack(self) -> (bool, i32, u64) {
        if self.exp() == 0 {
            let lz = self.sig.leading_zeros() as i32;
            (self.sign(), 1 - BIAS - lz, self.sig << lz)
        } else {
            (self.sign(), self.exp() as i32 - BIAS, self.sig)
        }
    }
}

/// A destination format for rounding.
#[derive(Clone, Copy, Debug)]
struct Format {
    prec: u32,
    emin: i32,
    emax: i32,
}

const EXT_EMIN: i32 = -16382;
const EXT_EMAX: i32 = 16383;
const DBL: Format = Format {
    prec: 53,
    emin: -1022,
    emax: 1023,
};
const SGL: Format = Format {
    prec: 24,
    emin: -126,
    emax: 127,
};

fn ext(prec: u32) -> Format {
    Format {
        prec,
        emin: EXT_EMIN,
        emax: EXT_EMAX,
    }
}

/// A rounded result: an infinity, or `m / 2^63 * 2^e` where `m` has its top
/// bit set for a normal number and `e == emin` for a denormal or zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rounded {
    Inf(bool),
    Finite(bool, i32, u64),
}

/// Shifts right, OR-ing every bit shifted out into bit 0.
#[inline]
fn shr_jam(m: u128, n: u32) -> u128 {
    if n == 0 {
        m
    } else if n >= 128 {
        (m != 0) as u128
    } else {
        (m >> n) | ((m & ((1u128 << n) - 1)) != 0) as u128
    }
}

/// Rounds `m` to a multiple of `2^drop`: (result, carried out of 128 bits,
/// inexact, rounded up in magnitude).
#[inline]
fn round_bits(m: u128, drop: u32, rc: Round, sign: bool) -> (u128, bool, bool, bool) {
    let unit = 1u128 << drop;
    let rem = m & (unit - 1);
    let q = m & !(unit - 1);
    if rem == 0 {
        return (q, false, false, false);
    }
    let half = unit >> 1;
    let inc = match rc {
        Round::Nearest => rem > half || (rem == half && q & unit != 0),
        Round::Down => sign,
        Round::Up => !sign,
        Round::Zero => false,
    };
    if inc {
        let (r, carry) = q.overflowing_add(unit);
        (r, carry, true, true)
    } else {
        (q, false, true, false)
    }
}

/// Rounds the exact value `m / 2^127 * 2^e` to `fmt`, raising PE, UE and OE.
fn round(env: &mut Env, sign: bool, e: i32, m: u128, fmt: Format) -> Rounded {
    env.rounded_up = false;
    if m == 0 {
        return Rounded::Finite(sign, fmt.emin, 0);
    }
    let lz = m.leading_zeros();
    let mut m = m << lz;
    let mut e = e - lz as i32;
    let drop = 128 - fmt.prec;
    if e < fmt.emin {
        // Tiny after rounding unless rounding with an unbounded exponent
        // carries it up to the smallest normal.
        let (_, carry, _, _) = round_bits(m, drop, env.round, sign);
        let tiny = !(e == fmt.emin - 1 && carry);
        if tiny && env.wrap && env.unmasked(UE) {
            env.raise(UE);
            e += WRAP;
        } else {
            m = shr_jam(m, (fmt.emin - e) as u32);
            let (q, _, inexact, up) = round_bits(m, drop, env.round, sign);
            if inexact {
                env.raise(PE);
                env.rounded_up = up;
            }
            if tiny && (inexact || env.unmasked(UE)) {
                env.raise(UE);
            }
            return Rounded::Finite(sign, fmt.emin, (q >> 64) as u64);
        }
    }
    let (mut q, carry, inexact, up) = round_bits(m, drop, env.round, sign);
    if carry {
        q = 1 << 127;
        e += 1;
    }
    if inexact {
        env.raise(PE);
        env.rounded_up = up;
    }
    if e > fmt.emax {
        env.raise(OE);
        if env.wrap && env.unmasked(OE) {
            return Rounded::Finite(sign, e - WRAP, (q >> 64) as u64);
        }
        env.raise(PE);
        let to_inf = match env.round {
            Round::Nearest => true,
            Round::Down => sign,
            Round::Up => !sign,
            Round::Zero => false,
        };
        env.rounded_up = to_inf;
        if to_inf {
            return Rounded::Inf(sign);
        }
        let max = !0u64 << (64 - fmt.prec);
        return Rounded::Finite(sign, fmt.emax, max);
    }
    Rounded::Finite(sign, e, (q >> 64) as u64)
}

fn pack_ext(r: Rounded) -> F80 {
    match r {
        Rounded::Inf(s) => F80::INF.with_sign(s),
        Rounded::Finite(s, e, m) => {
            let exp = if m & INT_BIT != 0 { e + BIAS } else { 0 };
            F80::new(s, exp.clamp(0, 0x7FFF) as u16, m)
        }
    }
}

/// Rounds `m / 2^127 * 2^e` to extended format at the environment's precision.
fn round_pack(env: &mut Env, sign: bool, e: i32, m: u128) -> F80 {
    pack_ext(round(env, sign, e, m, ext(env.prec)))
}

/// As `round_pack`, at full 64-bit precision (operations precision control
/// does not apply to).
fn round_pack64(env: &mut Env, sign: bool, e: i32, m: u128) -> F80 {
    pack_ext(round(env, sign, e, m, ext(64)))
}

// ---- NaN handling ----

/// The result of an operation with NaN or unsupported operands, if any.
pub(super) fn nan2(env: &mut Env, a: F80, b: F80) -> Option<F80> {
    if a.is_unsupported() || b.is_unsupported() {
        env.raise(IE);
        return Some(F80::INDEFINITE);
    }
    let (an, bn) = (a.is_nan(), b.is_nan());
    if !an && !bn {
        return None;
    }
    let (asn, bsn) = (a.is_snan(), b.is_snan());
    if asn || bsn {
        env.raise(IE);
    }
    let larger = || {
        let (ma, mb) = (a.sig | QUIET_BIT, b.sig | QUIET_BIT);
        if ma > mb || (ma == mb && !a.sign()) {
            a
        } else {
            b
        }
    };
    Some(
        match (an, bn) {
            (true, false) => a,
            (false, _) => b,
            _ if asn == bsn => larger(),
            _ if asn => b,
            _ => a,
        }
        .quiet(),
    )
}

/// The result of a one-operand operation on a NaN or unsupported value.
pub(super) fn nan1(env: &mut Env, a: F80) -> Option<F80> {
    if a.is_unsupported() {
        env.raise(IE);
        return Some(F80::INDEFINITE);
    }
    if a.is_nan() {
        if a.is_snan() {
            env.raise(IE);
        }
        return Some(a.quiet());
    }
    None
}

pub(super) fn invalid(env: &mut Env) -> F80 {
    env.raise(IE);
    F80::INDEFINITE
}

pub(super) fn denormal_check(env: &mut Env, x: F80) {
    if x.is_denormal() {
        env.raise(DE);
    }
}

/// The sign of an exact zero sum of opposite-signed operands.
fn zero_sum(env: &Env) -> F80 {
    if env.round == Round::Down {
        F80::NEG_ZERO
    } else {
        F80::ZERO
    }
}

// ---- arithmetic ----

pub fn add(env: &mut Env, a: F80, b: F80) -> F80 {
    add_signed(env, a, b, false)
}

pub fn sub(env: &mut Env, a: F80, b: F80) -> F80 {
    add_signed(env, a, b, true)
}

fn add_signed(env: &mut Env, a: F80, b: F80, negate_b: bool) -> F80 {
    if let Some(r) = nan2(env, a, b) {
        return r;
    }
    let b = if negate_b { b.neg() } else { b };
    match (a.is_inf(), b.is_inf()) {
        (true, true) if a.sign() != b.sign() => return invalid(env),
        (true, _) => {
            denormal_check(env, b);
            return a;
        }
        (_, true) => {
            denormal_check(env, a);
            return b;
        }
        _ => {}
    }
    denormal_check(env, a);
    denormal_check(env, b);
    match (a.is_zero(), b.is_zero()) {
        (true, true) => {
            return if a.sign() == b.sign() {
                a
            } else {
                zero_sum(env)
            };
        }
        (false, true) => return round_value(env, a),
        (true, false) => return round_value(env, b),
        _ => {}
    }
    let (sa, ea, ma) = a.unpack();
    let (sb, eb, mb) = b.unpack();
    // Put the larger exponent first.
    let ((sa, ea, ma), (sb, eb, mb)) = if ea >= eb {
        ((sa, ea, ma), (sb, eb, mb))
    } else {
        ((sb, eb, mb), (sa, ea, ma))
    };
    let big = (ma as u128) << 64;
    let small = shr_jam((mb as u128) << 64, (ea - eb).min(200) as u32);
    if sa == sb {
        let (s, carry) = big.overflowing_add(small);
        if carry {
            let s = (s >> 1) | (s & 1) | 1 << 127;
            return round_pack(env, sa, ea + 1, s);
        }
        round_pack(env, sa, ea, s)
    } else if big > small {
        round_pack(env, sa, ea, big - small)
    } else if small > big {
        round_pack(env, sb, ea, small - big)
    } else {
        zero_sum(env)
    }
}

/// Rounds a finite value to the precision control (x + 0, FLD-free paths).
fn round_value(env: &mut Env, a: F80) -> F80 {
    if a.is_zero() {
        return a;
    }
    let (s, e, m) = a.unpack();
    round_pack(env, s, e, (m as u128) << 64)
}

pub fn mul(env: &mut Env, a: F80, b: F80) -> F80 {
    if let Some(r) = nan2(env, a, b) {
        return r;
    }
    let sign = a.sign() ^ b.sign();
    if a.is_inf() || b.is_inf() {
        if a.is_zero() || b.is_zero() {
            return invalid(env);
        }
        denormal_check(env, a);
        denormal_check(env, b);
        return F80::INF.with_sign(sign);
    }
    denormal_check(env, a);
    denormal_check(env, b);
    if a.is_zero() || b.is_zero() {
        return F80::ZERO.with_sign(sign);
    }
    let (_, ea, ma) = a.unpack();
    let (_, eb, mb) = b.unpack();
    // ma * mb / 2^126 is in [1, 4): the product's binary point sits at
    // bit 126, so as an `m / 2^127` value its exponent is one more.
    round_pack(env, sign, ea + eb + 1, ma as u128 * mb as u128)
}

pub fn div(env: &mut Env, a: F80, b: F80) -> F80 {
    if let Some(r) = nan2(env, a, b) {
        return r;
    }
    let sign = a.sign() ^ b.sign();
    if a.is_inf() {
        if b.is_inf() {
            return invalid(env);
        }
        denormal_check(env, b);
        return F80::INF.with_sign(sign);
    }
    if b.is_inf() {
        denormal_check(env, a);
        return F80::ZERO.with_sign(sign);
    }
    if b.is_zero() {
        if a.is_zero() {
            return invalid(env);
        }
        denormal_check(env, a);
        env.raise(ZE);
        return F80::INF.with_sign(sign);
    }
    denormal_check(env, a);
    denormal_check(env, b);
    if a.is_zero() {
        return F80::ZERO.with_sign(sign);
    }
    let (_, ea, ma) = a.unpack();
    let (_, eb, mb) = b.unpack();
    // A 64-bit quotient with its top bit set, then 64 more bits and a sticky bit.
    let (num, e) = if ma >= mb {
        ((ma as u128) << 63, ea - eb)
    } else {
        ((ma as u128) << 64, ea - eb - 1)
    };
    let q1 = num / mb as u128;
    let r1 = num % mb as u128;
    let q2 = (r1 << 64) / mb as u128;
    let r2 = (r1 << 64) % mb as u128;
    let m = q1 << 64 | q2 | (r2 != 0) as u128;
    round_pack(env, sign, e, m)
}

pub fn sqrt(env: &mut Env, a: F80) -> F80 {
    if let Some(r) = nan1(env, a) {
        return r;
    }
    if a.is_zero() {
        return a;
    }
    if a.sign() {
        return invalid(env);
    }
    if a.is_inf() {
        return a;
    }
    denormal_check(env, a);
    let (_, e, m) = a.unpack();
    // sqrt(m / 2^63 * 2^e) with an even exponent: the radicand n is
    // m * 2^63 (e even) or m * 2^64 (e odd), and its root has bit 63 set.
    let half = e.div_euclid(2);
    let n = if e.rem_euclid(2) == 0 {
        (m as u128) << 63
    } else {
        (m as u128) << 64
    };
    let mut r = n.isqrt();
    let mut rem = n - r * r;
    // Eight more root bits, digit by digit; then the remainder is the sticky bit.
    for _ in 0..8 {
        rem <<= 2;
        let trial = (r << 2) | 1;
        r <<= 1;
        if rem >= trial {
            rem -= trial;
            r |= 1;
        }
    }
    let m = (r << 56) | (rem != 0) as u128;
    round_pack(env, false, half, m)
}

/// Rounds to an integer in the current rounding mode (FRNDINT).
pub fn round_to_int(env: &mut Env, a: F80) -> F80 {
    if let Some(r) = nan1(env, a) {
        return r;
    }
    if a.is_zero() || a.is_inf() {
        return a;
    }
    denormal_check(env, a);
    let (s, e, m) = a.unpack();
    if e >= 63 {
        return a;
    }
    let (int, inexact, up) = int_part(s, e, m, env.round);
    env.rounded_up = up;
    if inexact {
        env.raise(PE);
    }
    if int == 0 {
        return F80::ZERO.with_sign(s);
    }
    round_pack64(env, s, 127, int)
}

/// The magnitude of `m / 2^63 * 2^e` (e < 64) rounded to an integer:
/// (integer, inexact, rounded up in magnitude).
fn int_part(sign: bool, e: i32, m: u64, rc: Round) -> (u128, bool, bool) {
    if e >= 63 {
        return ((m as u128) << (e - 63).min(64), false, false);
    }
    let shift = (63 - e).min(127) as u32;
    let (q, _, inexact, up) = round_bits(m as u128, shift, rc, sign);
    (q >> shift, inexact, up)
}

// ---- comparisons ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Less,
    Equal,
    Greater,
    Unordered,
}

/// Compares `a` with `b`. An SNaN or unsupported operand raises IE; a QNaN
/// does too unless `quiet` (FUCOM, FUCOMI).
pub fn compare(env: &mut Env, a: F80, b: F80, quiet: bool) -> Cmp {
    if a.is_unsupported() || b.is_unsupported() {
        env.raise(IE);
        return Cmp::Unordered;
    }
    if a.is_nan() || b.is_nan() {
        if !quiet || a.is_snan() || b.is_snan() {
            env.raise(IE);
        }
        return Cmp::Unordered;
    }
    denormal_check(env, a);
    denormal_check(env, b);
    let key = |x: F80| -> (bool, i32, u64) {
        if x.is_zero() {
            (false, i32::MIN, 0)
        } else if x.is_inf() {
            (x.sign(), i32::MAX, 0)
        } else {
            x.unpack()
        }
    };
    let (sa, ea, ma) = key(a);
    let (sb, eb, mb) = key(b);
    if ea == i32::MIN && eb == i32::MIN {
        return Cmp::Equal;
    }
    let neg = |x: F80| !x.is_zero() && x.sign();
    let (na, nb) = (neg(a), neg(b));
    if na != nb {
        return if na { Cmp::Less } else { Cmp::Greater };
    }
    let _ = (sa, sb);
    let mag = (ea, ma).cmp(&(eb, mb));
    let ord = if na { mag.reverse() } else { mag };
    match ord {
        std::cmp::Ordering::Less => Cmp::Less,
        std::cmp::Ordering::Equal => Cmp::Equal,
        std::cmp::Ordering::Greater => Cmp::Greater,
    }
}

// ---- conversions ----

/// Exact conversion of an integer.
pub fn from_i64(v: i64) -> F80 {
    from_u64(v < 0, v.unsigned_abs())
}

/// Exact conversion of a magnitude with a sign.
fn from_u64(sign: bool, mag: u64) -> F80 {
    if mag == 0 {
        return F80::ZERO.with_sign(sign);
    }
    let lz = mag.leading_zeros();
    F80::new(sign, (BIAS + 63 - lz as i32) as u16, mag << lz)
}

/// Converts to an integer of `bits` (16, 32, 64) in the current rounding
/// mode. Out of range, NaN and infinity raise IE and give the "integer
/// indefinite" (the most negative value).
pub fn to_int(env: &mut Env, a: F80, bits: u32) -> i64 {
    let indefinite = i64::MIN >> (64 - bits);
    if !a.is_finite_ok() {
        env.raise(IE);
        return indefinite;
    }
    if a.is_zero() {
        return 0;
    }
    let (s, e, m) = a.unpack();
    if e >= 64 {
        env.raise(IE);
        return indefinite;
    }
    let (int, inexact, up) = int_part(s, e, m, env.round);
    let limit = 1u128 << (bits - 1);
    if int > limit || (int == limit && !s) {
        env.raise(IE);
        return indefinite;
    }
    if inexact {
        env.raise(PE);
        env.rounded_up = up;
    }
    if s {
        (int as i128).wrapping_neg() as i64
    } else {
        int as i64
    }
}

/// Loads a binary64: exact; an SNaN raises IE and is quieted, a denormal raises DE.
pub fn from_f64(env: &mut Env, bits: u64) -> F80 {
    from_binary(env, bits, 52, 11)
}

/// Loads a binary32.
pub fn from_f32(env: &mut Env, bits: u32) -> F80 {
    from_binary(env, bits as u64, 23, 8)
}

fn from_binary(env: &mut Env, bits: u64, frac_bits: u32, exp_bits: u32) -> F80 {
    let sign = bits >> (frac_bits + exp_bits) & 1 != 0;
    let exp_max = (1u64 << exp_bits) - 1;
    let exp = (bits >> frac_bits) & exp_max;
    let frac = bits & ((1u64 << frac_bits) - 1);
    let bias = (exp_max >> 1) as i32;
    let shift = 63 - frac_bits;
    if exp == exp_max {
        if frac == 0 {
            return F80::INF.with_sign(sign);
        }
        let mut x = F80::new(sign, 0x7FFF, INT_BIT | frac << shift);
        if x.sig & QUIET_BIT == 0 {
            env.raise(IE);
            x = x.quiet();
        }
        return x;
    }
    if exp == 0 {
        if frac == 0 {
            return F80::ZERO.with_sign(sign);
        }
        env.raise(DE);
        let lz = frac.leading_zeros() as i32;
        let e = 64 - bias - frac_bits as i32 - lz;
        return F80::new(sign, (e + BIAS) as u16, frac << lz);
    }
    F80::new(
        sign,
        (exp as i32 - bias + BIAS) as u16,
        INT_BIT | frac << shift,
    )
}

/// Stores as binary64, rounding in the current mode. Unmasked OE/UE here
/// mean the caller must not store.
pub fn to_f64(env: &mut Env, a: F80) -> u64 {
    to_binary(env, a, DBL, 11)
}

/// Stores as binary32.
pub fn to_f32(env: &mut Env, a: F80) -> u32 {
    to_binary(env, a, SGL, 8) as u32
}

fn to_binary(env: &mut Env, a: F80, fmt: Format, exp_bits: u32) -> u64 {
    let frac_bits = fmt.prec - 1;
    let sign_bit = (a.sign() as u64) << (frac_bits + exp_bits);
    let exp_max = (1u64 << exp_bits) - 1;
    let shift = 63 - frac_bits;
    let frac_mask = (1u64 << frac_bits) - 1;
    if a.is_unsupported() {
        env.raise(IE);
        return 1 << (frac_bits + exp_bits) | exp_max << frac_bits | 1 << (frac_bits - 1);
    }
    if a.is_nan() {
        if a.is_snan() {
            env.raise(IE);
        }
        let frac = (a.sig >> shift) & frac_mask | 1 << (frac_bits - 1);
        return sign_bit | exp_max << frac_bits | frac;
    }
    if a.is_inf() {
        return sign_bit | exp_max << frac_bits;
    }
    if a.is_zero() {
        return sign_bit;
    }
    let (s, e, m) = a.unpack();
    let wrap = env.wrap;
    env.wrap = false;
    let r = round(env, s, e, (m as u128) << 64, fmt);
    env.wrap = wrap;
    match r {
        Rounded::Inf(_) => sign_bit | exp_max << frac_bits,
        Rounded::Finite(_, e, m) => {
            let bias = (exp_max >> 1) as i32;
            let exp = if m & INT_BIT != 0 {
                (e + bias) as u64
            } else {
                0
            };
            sign_bit | (exp & exp_max) << frac_bits | (m >> shift) & frac_mask
        }
    }
}

/// Loads an 18-digit packed BCD integer (bytes 0-8 two digits each, low
/// digit first; byte 9 bit 7 the sign). Invalid digits give an undefined
/// but harmless value.
pub fn from_bcd(b: [u8; 10]) -> F80 {
    let mut v = 0u64;
    for &byte in b[..9].iter().rev() {
        v = v
            .wrapping_mul(100)
            .wrapping_add((byte >> 4) as u64 * 10 + (byte & 15) as u64);
    }
    from_u64(b[9] & 0x80 != 0, v)
}

/// The packed BCD indefinite, stored for an invalid FBSTP.
pub const BCD_INDEFINITE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF];

/// Stores as 18-digit packed BCD, rounding in the current mode; values
/// beyond 18 digits, NaNs and infinities raise IE and give the BCD indefinite.
pub fn to_bcd(env: &mut Env, a: F80) -> [u8; 10] {
    if !a.is_finite_ok() {
        env.raise(IE);
        return BCD_INDEFINITE;
    }
    let mut out = [0u8; 10];
    out[9] = if a.sign() { 0x80 } else { 0 };
    if a.is_zero() {
        return out;
    }
    let (s, e, m) = a.unpack();
    if e >= 60 {
        env.raise(IE);
        return BCD_INDEFINITE;
    }
    let (int, inexact, up) = int_part(s, e, m, env.round);
    if int > 999_999_999_999_999_999 {
        env.raise(IE);
        return BCD_INDEFINITE;
    }
    if inexact {
        env.raise(PE);
        env.rounded_up = up;
    }
    let mut v = int as u64;
    for byte in out.iter_mut().take(9) {
        let lo = (v % 10) as u8;
        v /= 10;
        let hi = (v % 10) as u8;
        v /= 10;
        *byte = hi << 4 | lo;
    }
    out
}

/// Rounds an exact 128-bit constant `m / 2^127 * 2^e` to 64 bits in the
/// current rounding mode (FLDPI and friends); no exceptions are raised.
pub fn constant(round: Round, e: i32, m: u128) -> F80 {
    let mut env = Env {
        round,
        ..Env::new()
    };
    round_pack64(&mut env, false, e, m)
}

// ---- FPREM, FPREM1, FSCALE, FXTRACT ----

/// The outcome of a partial remainder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remainder {
    pub value: F80,
    /// The low three bits of the quotient (valid when complete).
    pub quotient: u8,
    /// The reduction is complete (C2 = 0).
    pub complete: bool,
}

/// FPREM (`nearest == false`: truncating quotient) and FPREM1 (IEEE
/// remainder) of `a` by `b`. The result is exact.
pub fn remainder(env: &mut Env, a: F80, b: F80, nearest: bool) -> Remainder {
    let done = |value| Remainder {
        value,
        quotient: 0,
        complete: true,
    };
    if let Some(r) = nan2(env, a, b) {
        return done(r);
    }
    if a.is_inf() || b.is_zero() {
        return done(invalid(env));
    }
    denormal_check(env, a);
    denormal_check(env, b);
    if b.is_inf() || a.is_zero() {
        return done(a);
    }
    let (sa, ea, ma) = a.unpack();
    let (_, eb, mb) = b.unpack();
    let d = ea - eb;
    if d < 0 {
        // |a| < |b|: the quotient is 0, or 1 for FPREM1 when |a| > |b| / 2.
        if nearest && d == -1 && ma > mb {
            let r = 2 * mb as u128 - ma as u128;
            let v = round_pack64(env, !sa, ea + 1, r << 63);
            return Remainder {
                value: v,
                quotient: 1,
                complete: true,
            };
        }
        return done(a);
    }
    if d >= 64 {
        let n = (d as u32 & 31) | 32;
        let r = ((ma as u128) << n) % mb as u128;
        let value = if r == 0 {
            F80::ZERO.with_sign(sa)
        } else {
            round_pack64(env, sa, eb + d - n as i32 + 1, r << 63)
        };
        return Remainder {
            value,
            quotient: 0,
            complete: false,
        };
    }
    let num = (ma as u128) << d;
    let mut q = num / mb as u128;
    let mut r = num % mb as u128;
    let mut sign = sa;
    if nearest && (2 * r > mb as u128 || (2 * r == mb as u128 && q & 1 == 1)) {
        q += 1;
        r = mb as u128 - r;
        sign = !sa;
    }
    let value = if r == 0 {
        F80::ZERO.with_sign(sa)
    } else {
        round_pack64(env, sign, eb + 1, r << 63)
    };
    Remainder {
        value,
        quotient: (q & 7) as u8,
        complete: true,
    }
}

/// FSCALE: `a * 2^trunc(b)`.
pub fn scale(env: &mut Env, a: F80, b: F80) -> F80 {
    if let Some(r) = nan2(env, a, b) {
        return r;
    }
    if b.is_inf() {
        denormal_check(env, a);
        return match (b.sign(), a.is_zero(), a.is_inf()) {
            (false, true, _) | (true, _, true) => invalid(env),
            (false, _, _) => F80::INF.with_sign(a.sign()),
            (true, _, _) => F80::ZERO.with_sign(a.sign()),
        };
    }
    denormal_check(env, a);
    denormal_check(env, b);
    if a.is_zero() || a.is_inf() {
        return a;
    }
    let n = if b.is_zero() {
        0
    } else {
        let (s, e, m) = b.unpack();
        let mag = if e >= 30 {
            1 << 30
        } else if e < 0 {
            0
        } else {
            (m >> (63 - e)) as i32
        };
        if s { -mag } else { mag }
    };
    let (s, e, m) = a.unpack();
    round_pack64(env, s, e + n, (m as u128) << 64)
}

/// FXTRACT: (exponent as a value, significand with exponent 0). A zero
/// operand raises ZE and gives -infinity and the zero.
pub fn extract(env: &mut Env, a: F80) -> (F80, F80) {
    if let Some(r) = nan1(env, a) {
        return (r, r);
    }
    if a.is_zero() {
        env.raise(ZE);
        return (F80::INF.neg(), a);
    }
    if a.is_inf() {
        return (F80::INF, a);
    }
    denormal_check(env, a);
    let (s, e, m) = a.unpack();
    (from_i64(e as i64), F80::new(s, BIAS as u16, m))
}

// ---- wide results for the transcendental functions ----

/// Rounds `m / 2^127 * 2^e` (any `m`, normalized here) to 64 bits, no
/// precision control.
pub(super) fn pack_wide(env: &mut Env, sign: bool, e: i32, m: u128) -> F80 {
    round_pack64(env, sign, e, m)
}

/// `a * (m / 2^127 * 2^e)` for a finite nonzero `a`, with one rounding
/// (to 64 bits; precision control does not apply to these instructions).
pub(super) fn mul_wide(env: &mut Env, a: F80, sign: bool, e: i32, m: u128) -> F80 {
    let sign = a.sign() ^ sign;
    if m == 0 {
        return F80::ZERO.with_sign(sign);
    }
    let (_, ea, ma) = a.unpack();
    let lz = m.leading_zeros();
    let (m, e) = (m << lz, e - lz as i32);
    let ma = ma as u128;
    let p1 = ma * (m >> 64);
    let p0 = ma * (m & u64::MAX as u128);
    let top = p1 + (p0 >> 64);
    let sticky = (p0 as u64 != 0) as u128;
    round_pack64(env, sign, ea + e + 1, top | sticky)
}

// ---- host-float bridges for the transcendental functions ----

/// The nearest binary64 of a finite value, no flags (may be ±inf or 0
/// outside binary64's range).
pub fn to_host(a: F80) -> f64 {
    let mut env = Env::new();
    f64::from_bits(to_f64(&mut env, a))
}

/// A host binary64 as an extended value (exact).
pub fn from_host(v: f64) -> F80 {
    let mut env = Env::new();
    from_f64(&mut env, v.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: f64) -> F80 {
        from_host(v)
    }

    fn env_pc(prec: u32) -> Env {
        Env { prec, ..Env::new() }
    }

    /// A small deterministic generator of interesting binary64 values.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f64(&mut self) -> f64 {
            let r = self.next();
            // Moderate exponents so binary64 neither overflows nor underflows.
            let exp = 1023 - 60 + (r >> 52) % 120;
            f64::from_bits((r & ((1 << 52) - 1)) | exp << 52 | (r >> 63) << 63)
        }
    }

    /// 1200 vectors of 64-bit-precision add/sub/mul/div/sqrt in all four
    /// rounding modes, correctly rounded by mpmath (testdata/ext64.txt:
    /// op, rounding control, a, b, result as sign-exponent and significand).
    #[test]
    fn extended_precision_vectors_from_mpmath() {
        let hex16 = |s: &str| u16::from_str_radix(s, 16).expect("hex");
        let hex64 = |s: &str| u64::from_str_radix(s, 16).expect("hex");
        let mut n = 0;
        for line in include_str!("testdata/ext64.txt").lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let a = F80 {
                se: hex16(f[2]),
                sig: hex64(f[3]),
            };
            let b = F80 {
                se: hex16(f[4]),
                sig: hex64(f[5]),
            };
            let want = F80 {
                se: hex16(f[6]),
                sig: hex64(f[7]),
            };
            let mut e = Env::new();
            e.round = Round::from_bits(hex16(f[1]));
            let got = match f[0] {
                "add" => add(&mut e, a, b),
                "sub" => sub(&mut e, a, b),
                "mul" => mul(&mut e, a, b),
                "div" => div(&mut e, a, b),
                _ => sqrt(&mut e, a),
            };
            assert_eq!(got, want, "{line}");
            n += 1;
        }
        assert_eq!(n, 1200);
    }

    /// Results with precision control 24/53/64 over the whole extended
    /// exponent range, denormal results included, in all rounding modes
    /// (testdata/ext_pc.txt: op, RC, PC, a, b, result).
    #[test]
    fn precision_control_and_denormal_vectors_from_mpmath() {
        let hex16 = |s: &str| u16::from_str_radix(s, 16).expect("hex");
        let hex64 = |s: &str| u64::from_str_radix(s, 16).expect("hex");
        for line in include_str!("testdata/ext_pc.txt").lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let a = F80 {
                se: hex16(f[3]),
                sig: hex64(f[4]),
            };
            let b = F80 {
                se: hex16(f[5]),
                sig: hex64(f[6]),
            };
            let want = F80 {
                se: hex16(f[7]),
                sig: hex64(f[8]),
            };
            let mut e = Env::from_cw(hex16(f[1]) << 10 | hex16(f[2]) << 8 | 0x3F);
            let got = match f[0] {
                "add" => add(&mut e, a, b),
                "mul" => mul(&mut e, a, b),
                _ => div(&mut e, a, b),
            };
            assert_eq!(got, want, "{line}");
        }
    }

    /// Stores to binary32/binary64 with overflow, denormal results and
    /// all rounding modes (testdata/to_binary.txt: format, RC, value, bits).
    #[test]
    fn binary_store_vectors_from_mpmath() {
        let hex16 = |s: &str| u16::from_str_radix(s, 16).expect("hex");
        let hex64 = |s: &str| u64::from_str_radix(s, 16).expect("hex");
        for line in include_str!("testdata/to_binary.txt").lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let a = F80 {
                se: hex16(f[2]),
                sig: hex64(f[3]),
            };
            let mut e = Env::from_cw(hex16(f[1]) << 10 | 0x033F);
            let got = if f[0] == "f64" {
                to_f64(&mut e, a)
            } else {
                to_f32(&mut e, a) as u64
            };
            assert_eq!(got, hex64(f[4]), "{line}");
        }
    }

    #[test]
    fn exact_small_arithmetic_matches_binary64() {
        let mut e = Env::new();
        assert_eq!(to_host(add(&mut e, x(1.5), x(2.25))), 3.75);
        assert_eq!(to_host(sub(&mut e, x(1.5), x(2.25))), -0.75);
        assert_eq!(to_host(mul(&mut e, x(3.0), x(-7.0))), -21.0);
        assert_eq!(to_host(div(&mut e, x(1.0), x(4.0))), 0.25);
        assert_eq!(to_host(sqrt(&mut e, x(16.0))), 4.0);
        assert_eq!(e.flags, 0);
    }

    #[test]
    fn precision_53_arithmetic_is_binary64_arithmetic() {
        let mut g = Gen(0x1234_5678_9ABC_DEF1);
        for _ in 0..20000 {
            let (a, b) = (g.f64(), g.f64());
            let mut e = env_pc(53);
            assert_eq!(
                to_host(add(&mut e, x(a), x(b))).to_bits(),
                (a + b).to_bits()
            );
            assert_eq!(
                to_host(sub(&mut e, x(a), x(b))).to_bits(),
                (a - b).to_bits()
            );
            assert_eq!(
                to_host(mul(&mut e, x(a), x(b))).to_bits(),
                (a * b).to_bits()
            );
            assert_eq!(
                to_host(div(&mut e, x(a), x(b))).to_bits(),
                (a / b).to_bits()
            );
            let r = sqrt(&mut e, x(a.abs()));
            assert_eq!(to_host(r).to_bits(), a.abs().sqrt().to_bits(), "sqrt {a}");
        }
    }

    #[test]
    fn precision_24_arithmetic_is_binary32_arithmetic() {
        let mut g = Gen(0x0F0F_1234_5555_AAAA);
        for _ in 0..20000 {
            let a = f32::from_bits(g.next() as u32 & 0x3FFF_FFFF | 0x2000_0000);
            let b = f32::from_bits(g.next() as u32 & 0xBFFF_FFFF | 0x2000_0000);
            let mut e = env_pc(24);
            let (xa, xb) = (from_f32(&mut e, a.to_bits()), from_f32(&mut e, b.to_bits()));
            let back = |e: &mut Env, v: F80| f32::from_bits(to_f32(e, v));
            let r = add(&mut e, xa, xb);
            assert_eq!(back(&mut e, r).to_bits(), (a + b).to_bits());
            let r = mul(&mut e, xa, xb);
            assert_eq!(back(&mut e, r).to_bits(), (a * b).to_bits());
            let r = div(&mut e, xa, xb);
            assert_eq!(back(&mut e, r).to_bits(), (a / b).to_bits());
        }
    }

    #[test]
    fn stores_to_binary64_round_like_the_host() {
        // A 64-bit-precision quotient stored as a double is one rounding of
        // the exact extended value: compare with the extended-to-f64 rule.
        let mut e = Env::new();
        let third = div(&mut e, F80::ONE, x(3.0));
        assert_eq!(third, F80::new(false, 0x3FFD, 0xAAAA_AAAA_AAAA_AAAB));
        assert_eq!(to_host(third), 1.0 / 3.0);
        let mut e = Env::new();
        e.round = Round::Down;
        let third = div(&mut e, F80::ONE, x(3.0));
        assert_eq!(third, F80::new(false, 0x3FFD, 0xAAAA_AAAA_AAAA_AAAA));
        assert!(e.flags & PE != 0);
        assert!(!e.rounded_up);
    }

    #[test]
    fn sqrt_two_is_correctly_rounded_in_each_mode() {
        let mut e = Env::new();
        assert_eq!(
            sqrt(&mut e, x(2.0)),
            F80::new(false, 0x3FFF, 0xB504_F333_F9DE_6484)
        );
        assert_eq!(e.flags, PE);
        e.round = Round::Up;
        assert_eq!(
            sqrt(&mut e, x(2.0)),
            F80::new(false, 0x3FFF, 0xB504_F333_F9DE_6485)
        );
        assert!(e.rounded_up);
    }

    #[test]
    fn ties_round_to_even() {
        let mut e = Env::new();
        let tiny = F80::new(false, 0x3FFF - 64, INT_BIT); // 2^-64
        assert_eq!(add(&mut e, F80::ONE, tiny), F80::ONE);
        let odd = F80::new(false, 0x3FFF, INT_BIT | 1); // 1 + 2^-63
        assert_eq!(add(&mut e, odd, tiny), F80::new(false, 0x3FFF, INT_BIT | 2));
        assert_eq!(e.flags, PE);
    }

    #[test]
    fn exact_cancellation_gives_plus_zero_or_minus_zero_rounding_down() {
        let mut e = Env::new();
        assert_eq!(sub(&mut e, x(1.0), x(1.0)), F80::ZERO);
        e.round = Round::Down;
        assert_eq!(sub(&mut e, x(1.0), x(1.0)), F80::NEG_ZERO);
    }

    #[test]
    fn overflow_and_underflow_masked_and_unmasked() {
        let big = F80::new(false, 0x7FFE, INT_BIT);
        let mut e = Env::new();
        assert_eq!(mul(&mut e, big, big), F80::INF);
        assert_eq!(e.flags, OE | PE);
        let mut e = Env::new();
        e.round = Round::Zero;
        assert_eq!(mul(&mut e, big, big), F80::new(false, 0x7FFE, u64::MAX));
        // Unmasked overflow to a register: the exponent wraps by 24576.
        let mut e = Env::new();
        e.masks = 0x3F & !OE;
        assert_eq!(
            mul(&mut e, big, big),
            F80::new(false, (0x7FFE * 2 - 0x3FFF - 24576) as u16, INT_BIT)
        );
        // Masked underflow: denormal result, UE only when inexact.
        let small = F80::new(false, 1, INT_BIT);
        let mut e = Env::new();
        let half = div(&mut e, small, x(2.0));
        assert_eq!(half, F80::new(false, 0, 1 << 62));
        assert_eq!(e.flags, 0);
        let third = div(&mut e, small, x(3.0));
        assert_eq!(third.exp(), 0);
        assert_eq!(e.flags, UE | PE);
    }

    #[test]
    fn invalid_operations_give_the_indefinite() {
        let mut e = Env::new();
        assert_eq!(sub(&mut e, F80::INF, F80::INF), F80::INDEFINITE);
        assert_eq!(mul(&mut e, F80::INF, F80::ZERO), F80::INDEFINITE);
        assert_eq!(div(&mut e, F80::ZERO, F80::ZERO), F80::INDEFINITE);
        assert_eq!(sqrt(&mut e, x(-1.0)), F80::INDEFINITE);
        assert_eq!(e.flags, IE);
        let unnormal = F80::new(false, 0x3FFF, 0x4000_0000_0000_0000);
        let mut e = Env::new();
        assert_eq!(add(&mut e, unnormal, F80::ONE), F80::INDEFINITE);
        assert_eq!(e.flags, IE);
    }

    #[test]
    fn division_by_zero_raises_ze() {
        let mut e = Env::new();
        assert_eq!(div(&mut e, x(-2.0), F80::ZERO), F80::INF.neg());
        assert_eq!(e.flags, ZE);
    }

    #[test]
    fn nan_propagation_follows_x87_rules() {
        let snan = F80::new(false, 0x7FFF, INT_BIT | 5);
        let qnan_small = F80::new(false, 0x7FFF, INT_BIT | QUIET_BIT | 1);
        let qnan_big = F80::new(true, 0x7FFF, INT_BIT | QUIET_BIT | 9);
        let mut e = Env::new();
        assert_eq!(add(&mut e, snan, F80::ONE), snan.quiet());
        assert_eq!(e.flags, IE);
        let mut e = Env::new();
        assert_eq!(add(&mut e, qnan_small, qnan_big), qnan_big);
        assert_eq!(mul(&mut e, qnan_big, qnan_small), qnan_big);
        assert_eq!(e.flags, 0);
        // A QNaN wins over an SNaN whatever the significands.
        let mut e = Env::new();
        let snan_big = F80::new(false, 0x7FFF, INT_BIT | 0xFFFF);
        assert_eq!(add(&mut e, snan_big, qnan_small), qnan_small);
        assert_eq!(e.flags, IE);
    }

    #[test]
    fn denormal_operands_raise_de_and_compute() {
        let mut e = Env::new();
        let d = from_f64(&mut e, 1); // smallest binary64 denormal
        assert_eq!(e.flags, DE);
        assert_eq!(to_host(d), f64::from_bits(1));
        let pseudo = F80::new(false, 0, INT_BIT); // pseudo-denormal = 2^-16382
        let mut e = Env::new();
        let r = add(&mut e, pseudo, pseudo);
        assert_eq!(r, F80::new(false, 2, INT_BIT));
        assert_eq!(e.flags, DE);
    }

    #[test]
    fn integer_conversions_round_and_saturate_to_indefinite() {
        let mut e = Env::new();
        assert_eq!(to_int(&mut e, x(2.5), 32), 2);
        assert_eq!(to_int(&mut e, x(3.5), 32), 4);
        assert_eq!(to_int(&mut e, x(-2.5), 16), -2);
        e.round = Round::Down;
        assert_eq!(to_int(&mut e, x(-2.5), 16), -3);
        e.round = Round::Up;
        assert_eq!(to_int(&mut e, x(2.1), 64), 3);
        assert_eq!(e.flags, PE);
        let mut e = Env::new();
        assert_eq!(to_int(&mut e, x(32768.0), 16), -32768);
        assert_eq!(e.flags, IE);
        let mut e = Env::new();
        assert_eq!(to_int(&mut e, x(-32768.0), 16), -32768);
        assert_eq!(to_int(&mut e, x(-(2f64.powi(63))), 64), i64::MIN);
        assert_eq!(e.flags, 0);
        assert_eq!(from_i64(i64::MIN), x(-(2f64.powi(63))));
        assert_eq!(from_i64(-5), x(-5.0));
        assert_eq!(from_i64(0), F80::ZERO);
    }

    #[test]
    fn round_to_int_in_each_mode() {
        let mut e = Env::new();
        assert_eq!(round_to_int(&mut e, x(2.5)), x(2.0));
        assert_eq!(round_to_int(&mut e, x(-0.4)), F80::NEG_ZERO);
        e.round = Round::Up;
        assert_eq!(round_to_int(&mut e, x(0.1)), x(1.0));
        e.round = Round::Zero;
        assert_eq!(round_to_int(&mut e, x(-7.9)), x(-7.0));
        assert_eq!(round_to_int(&mut e, x(1e300)), x(1e300));
    }

    #[test]
    fn binary32_and_binary64_round_trips_and_specials() {
        let mut e = Env::new();
        for v in [
            0.0f64,
            -0.0,
            1.0,
            -3.5,
            1e-310,
            f64::MAX,
            f64::INFINITY,
            f64::MIN_POSITIVE,
        ] {
            let l = from_f64(&mut e, v.to_bits());
            assert_eq!(to_f64(&mut e, l), v.to_bits());
        }
        for v in [0.0f32, 1.0, -3.5, 1e-40, f32::MAX, f32::NEG_INFINITY] {
            let l = from_f32(&mut e, v.to_bits());
            assert_eq!(to_f32(&mut e, l), v.to_bits());
        }
        let mut e = Env::new();
        assert_eq!(to_f32(&mut e, x(1e300)), f32::INFINITY.to_bits());
        assert_eq!(e.flags, OE | PE);
        let mut e = Env::new();
        let snan32 = 0x7F80_0001;
        assert_eq!(from_f32(&mut e, snan32).sig, INT_BIT | QUIET_BIT | 1 << 40);
        assert_eq!(e.flags, IE);
        assert_eq!(to_f64(&mut e, F80::INDEFINITE), 0xFFF8_0000_0000_0000);
    }

    #[test]
    fn bcd_round_trip_and_indefinite() {
        let b = [0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0, 0, 0x80];
        let v = from_bcd(b);
        assert_eq!(v, from_i64(-123456789));
        let mut e = Env::new();
        assert_eq!(to_bcd(&mut e, v), b);
        assert_eq!(to_bcd(&mut e, x(1e18)), BCD_INDEFINITE);
        assert_eq!(e.flags, IE);
        let mut e = Env::new();
        let max = [0x99, 0x99, 0x99, 0x99, 0x99, 0x99, 0x99, 0x99, 0x99, 0];
        assert_eq!(to_bcd(&mut e, from_bcd(max)), max);
    }

    #[test]
    fn compares_order_zeros_infinities_and_nans() {
        let mut e = Env::new();
        assert_eq!(compare(&mut e, x(1.0), x(2.0), false), Cmp::Less);
        assert_eq!(compare(&mut e, x(-1.0), x(-2.0), false), Cmp::Greater);
        assert_eq!(compare(&mut e, F80::ZERO, F80::NEG_ZERO, false), Cmp::Equal);
        assert_eq!(compare(&mut e, F80::INF.neg(), x(-1e300), false), Cmp::Less);
        assert_eq!(e.flags, 0);
        let qnan = F80::INDEFINITE;
        assert_eq!(compare(&mut e, qnan, x(1.0), true), Cmp::Unordered);
        assert_eq!(e.flags, 0);
        assert_eq!(compare(&mut e, qnan, x(1.0), false), Cmp::Unordered);
        assert_eq!(e.flags, IE);
    }

    #[test]
    fn partial_remainders() {
        let mut e = Env::new();
        let r = remainder(&mut e, x(7.0), x(3.0), false);
        assert_eq!((r.value, r.quotient, r.complete), (x(1.0), 2, true));
        let r = remainder(&mut e, x(8.0), x(3.0), true);
        assert_eq!((r.value, r.quotient, r.complete), (x(-1.0), 3, true));
        let r = remainder(&mut e, x(5.5), x(2.0), false);
        assert_eq!(r.value, x(1.5));
        let r = remainder(&mut e, x(-1.75), x(2.0), true);
        assert_eq!((r.value, r.quotient), (x(0.25), 1));
        let r = remainder(&mut e, x(1e300), x(3.0), false);
        assert!(!r.complete);
        // Iterating reaches fmod's exact answer.
        let mut v = x(1e300);
        loop {
            let r = remainder(&mut e, v, x(3.0), false);
            v = r.value;
            if r.complete {
                break;
            }
        }
        assert_eq!(to_host(v), 1e300f64 % 3.0);
        assert_eq!(e.flags, 0);
    }

    #[test]
    fn scale_and_extract() {
        let mut e = Env::new();
        assert_eq!(scale(&mut e, x(3.0), x(4.9)), x(48.0));
        assert_eq!(scale(&mut e, x(3.0), x(-1.0)), x(1.5));
        assert_eq!(extract(&mut e, x(48.0)), (x(5.0), x(1.5)));
        assert_eq!(e.flags, 0);
        assert_eq!(extract(&mut e, F80::ZERO), (F80::INF.neg(), F80::ZERO));
        assert_eq!(e.flags, ZE);
    }

    #[test]
    fn constants_round_per_mode() {
        let pi = 0xC90F_DAA2_2168_C234_C4C6_628B_80DC_1CD1u128;
        assert_eq!(
            constant(Round::Nearest, 1, pi),
            F80::new(false, 0x4000, 0xC90F_DAA2_2168_C235)
        );
        assert_eq!(
            constant(Round::Down, 1, pi),
            F80::new(false, 0x4000, 0xC90F_DAA2_2168_C234)
        );
    }
}
