//! The transcendental instructions: FSIN, FCOS, FSINCOS, FPTAN, FPATAN,
//! F2XM1, FYL2X, FYL2XP1.
//!
//! They are evaluated in 128-bit fixed point ([`Fx`], 124 fraction bits)
//! with series that converge well on a reduced argument, and the result is
//! rounded once to the 64-bit significand:
//! - sine and cosine: reduction of |x| < 2^63 modulo pi/2 by long division
//!   with a 124-bit pi/2, corrected by the next 128 bits of pi/2 (so the
//!   quadrant is exact and the remainder good to ~2^-124 absolute), then
//!   Taylor series on |r| <= pi/4; the tangent is their quotient;
//! - arctangent: t = min/max of |y|, |x|, reduced by atan(k/8) table
//!   entries to |t'| <= 1/16, then its series; quadrant fix-ups with pi;
//! - log2: the binary exponent plus 2 atanh((m-1)/(m+1)) / ln 2 with m in
//!   [sqrt(1/2), sqrt(2)); log2(1+x) for |x| < 1/2 as x times a series, so
//!   small x keeps its relative accuracy; y times the logarithm is one
//!   rounding of the exact 192-bit product;
//! - 2^x - 1 as x ln2 (1 + z/2! + z^2/3! + ...), z = x ln 2.
//!
//! Results are within one unit in the last place of the extended result
//! (checked against mpmath in the tests; the intermediate error is near
//! 2^-120 of the result, more only for arguments within ~2^-60 of a
//! multiple of pi/2). A real x87 reduces with a 66-bit pi, so for large
//! arguments it is the hardware that is less accurate. Outside the
//! documented domains, F2XM1 beyond |x| <= 1 comes from the host's binary64
//! libm and FYL2XP1 beyond |x| < 1/2 takes log2 of the rounded 1 + x. Special operands (zeros,
//! infinities, NaNs, the invalid and divide-by-zero cases) follow the SDM
//! exactly. Every result that is not exact raises PE.

use super::softfloat::{self as sf, Env, F80};

/// Fraction bits of the fixed-point format.
const FRAC: u32 = 124;
const ONE: u128 = 1 << FRAC;

/// Constants scaled by 2^124 (rounded to nearest).
const PI2_FX: u128 = 0x1921_fb54_442d_1846_9898_cc51_701b_839a;
/// pi/2 * 2^124 - `PI2_FX`, scaled by 2^128 (positive): the next 128 bits
/// of pi/2, for the reduction of large arguments.
const PI2_LO: u128 = 0x2520_49c1_114c_f98e_8041_77d4_c762_7364;
const PI_FX: u128 = 0x3243_f6a8_885a_308d_3131_98a2_e037_0734;
const L2E_FX: u128 = 0x1715_4765_2b82_fe17_77d0_ffda_0d23_a7d1;
const LN2_FX: u128 = 0x0b17_217f_7d1c_f79a_bc9e_3b39_803f_2f6b;
/// atan(k / 8), k = 0..8.
const ATAN_FX: [u128; 9] = [
    0,
    0x01fd_5ba9_aac2_f6dc_6591_2f31_3e7d_111e,
    0x03eb_6ebf_2590_1bac_55b7_1e7b_d7de_8860,
    0x05bd_8650_7937_bc23_9c55_1909_16e7_f224,
    0x076b_19c1_586e_d3da_2b7f_222f_65e1_d468,
    0x08f0_05d5_ef7f_59f9_b5c8_35e1_665c_4374,
    0x0a4b_c7d1_934f_7092_419a_87f2_a457_daca,
    0x0b80_53e2_bc23_19e7_3cb2_da55_210a_4444,
    0x0c90_fdaa_2216_8c23_4c4c_6628_b80d_c1cd,
];
/// sqrt(2) as a 64-bit significand.
const SQRT2_SIG: u64 = 0xB504_F333_F9DE_6484;

/// Arguments at or beyond 2^63 in magnitude are out of range (C2 = 1).
const TRIG_LIMIT: i32 = 63;
/// Below 2^-40, sin x = tan x = x and cos x = 1 to extended precision.
const TINY: i32 = -40;
/// Bound on series terms (every series here converges well before it).
const MAX_TERMS: u128 = 200;

/// A signed fixed-point number: `mag / 2^124`, |value| < 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fx {
    neg: bool,
    mag: u128,
}

impl Fx {
    const ZERO: Fx = Fx::pos(0);

    const fn pos(mag: u128) -> Fx {
        Fx { neg: false, mag }
    }

    fn negate(self) -> Fx {
        Fx {
            neg: !self.neg,
            mag: self.mag,
        }
    }

    fn add(self, o: Fx) -> Fx {
        if self.neg == o.neg {
            Fx {
                neg: self.neg,
                mag: self.mag.saturating_add(o.mag),
            }
        } else if self.mag >= o.mag {
            Fx {
                neg: self.neg,
                mag: self.mag - o.mag,
            }
        } else {
            Fx {
                neg: o.neg,
                mag: o.mag - self.mag,
            }
        }
    }

    fn sub(self, o: Fx) -> Fx {
        self.add(o.negate())
    }

    fn mul(self, o: Fx) -> Fx {
        Fx {
            neg: self.neg ^ o.neg,
            mag: mul_shift(self.mag, o.mag),
        }
    }

    fn div(self, o: Fx) -> Fx {
        Fx {
            neg: self.neg ^ o.neg,
            mag: div_shift(self.mag, o.mag),
        }
    }

    fn div_int(self, k: u128) -> Fx {
        Fx {
            neg: self.neg,
            mag: self.mag / k.max(1),
        }
    }

    /// A finite value with exponent <= 2 (|x| < 8); tiny bits may be lost.
    fn from_f80(a: F80) -> Fx {
        if a.is_zero() {
            return Fx::ZERO;
        }
        let (s, e, m) = a.unpack();
        let sh = e + 61;
        let mag = if sh >= 0 {
            (m as u128) << sh.min(63)
        } else if sh > -128 {
            (m as u128) >> -sh
        } else {
            0
        };
        Fx { neg: s, mag }
    }

    /// Rounds to extended (the caller raises PE).
    fn to_f80(self, env: &mut Env) -> F80 {
        if self.mag == 0 {
            return F80::ZERO.with_sign(self.neg);
        }
        sf::pack_wide(env, self.neg, 127 - FRAC as i32, self.mag)
    }
}

/// `a * b / 2^124` from the full 256-bit product.
fn mul_shift(a: u128, b: u128) -> u128 {
    const LO: u128 = u64::MAX as u128;
    let (a1, a0) = (a >> 64, a & LO);
    let (b1, b0) = (b >> 64, b & LO);
    let p00 = a0 * b0;
    let (mid, mid_carry) = (a0 * b1).overflowing_add(a1 * b0);
    let (lo, carry) = p00.overflowing_add(mid << 64);
    let hi = (a1 * b1)
        .wrapping_add(mid >> 64)
        .wrapping_add((mid_carry as u128) << 64)
        .wrapping_add(carry as u128);
    (hi << (128 - FRAC)) | (lo >> FRAC)
}

/// `a * 2^124 / b` (truncated) by long division; needs a / b < 16.
fn div_shift(a: u128, b: u128) -> u128 {
    if b == 0 {
        return u128::MAX;
    }
    let mut q = a / b;
    let mut r = a % b;
    for _ in 0..FRAC {
        // r < b < 2^127: no overflow.
        r <<= 1;
        q = (q << 1) | (r >= b) as u128;
        if r >= b {
            r -= b;
        }
    }
    q
}

/// `a * 2^shift / b` (truncated) for 64-bit `a`, `b`.
fn ratio(a: u64, b: u64, shift: i32) -> u128 {
    if shift < 0 || b == 0 {
        return 0;
    }
    let (a, b) = (a as u128, b as u128);
    let mut q = a / b;
    let mut r = a % b;
    for _ in 0..shift {
        r <<= 1;
        q = (q << 1) | (r >= b) as u128;
        if r >= b {
            r -= b;
        }
    }
    q
}

/// `a / b` for positive fixed-point magnitudes as a wide value
/// (exponent, significand with a sticky bit) for `pack_wide`.
fn quotient_wide(a: u128, b: u128) -> (i32, u128) {
    if a == 0 || b == 0 {
        return (0, 0);
    }
    let (la, lb) = (a.leading_zeros(), b.leading_zeros());
    let (a, b) = (a << (la - 1), b << (lb - 1));
    let mut q = (a >= b) as u128;
    let mut r = if a >= b { a - b } else { a };
    for _ in 0..127 {
        r <<= 1;
        q = (q << 1) | (r >= b) as u128;
        if r >= b {
            r -= b;
        }
    }
    (lb as i32 - la as i32, q | (r != 0) as u128)
}

fn inexact(env: &mut Env, r: F80) -> F80 {
    env.raise(sf::PE);
    r
}

fn from_host(env: &mut Env, v: f64) -> F80 {
    env.raise(sf::PE);
    sf::from_host(v)
}

// ---- sine, cosine, tangent ----

/// Common checks of a trigonometric operand: `Err(result)` for NaNs,
/// infinities (invalid) and zeros, `Ok(None)` when out of range.
fn trig_operand(env: &mut Env, a: F80) -> Result<Option<i32>, F80> {
    if let Some(r) = sf::nan1(env, a) {
        return Err(r);
    }
    if a.is_inf() {
        return Err(sf::invalid(env));
    }
    if a.is_zero() {
        return Err(a);
    }
    sf::denormal_check(env, a);
    let (_, e, _) = a.unpack();
    Ok((e < TRIG_LIMIT).then_some(e))
}

/// |x| = q * pi/2 + r with |r| <= pi/4: (q mod 4, r).
///
/// Long division of |x| by the 124-bit `PI2_FX` gives q exactly for that
/// divisor; the remainder is then corrected by q times the next 128 bits
/// of pi/2, so it is good to about 2^-124 absolute even for |x| near 2^63.
fn reduce(a: F80) -> (u32, Fx) {
    let (_, e, m) = a.unpack();
    if e < -1 {
        return (0, Fx::from_f80(a.abs()));
    }
    // Long division of m * 2^(e + 61) (|x| in units of 2^-124) by pi/2.
    let bits = 64 + (e + 61) as u32;
    let (mut r, mut q) = (0u128, 0u64);
    for i in 0..bits {
        let bit = if i < 64 { (m >> (63 - i)) & 1 } else { 0 };
        r = (r << 1) | bit as u128;
        q <<= 1;
        if r >= PI2_FX {
            r -= PI2_FX;
            q |= 1;
        }
    }
    // r -= q * (pi/2 - PI2_FX), in units of 2^-124 (less than 2^63 of them).
    let hi = q as u128 * (PI2_LO >> 64);
    let lo = q as u128 * (PI2_LO & u64::MAX as u128);
    let corr = (hi + (lo >> 64)) >> 64;
    let mut r = r as i128 - corr as i128;
    if r < 0 {
        r += PI2_FX as i128;
        q = q.wrapping_sub(1);
    }
    let r = r as u128;
    let q = (q & 3) as u32;
    if r > PI2_FX / 2 {
        (
            (q + 1) & 3,
            Fx {
                neg: true,
                mag: PI2_FX - r,
            },
        )
    } else {
        (q, Fx::pos(r))
    }
}

/// Taylor series of (sin r, cos r) for |r| <= pi/4.
fn sin_cos_series(r: Fx) -> (Fx, Fx) {
    let r2 = r.mul(r);
    let (mut s, mut term) = (r, r);
    for k in 1..MAX_TERMS {
        term = term.mul(r2).div_int(2 * k * (2 * k + 1)).negate();
        if term.mag == 0 {
            break;
        }
        s = s.add(term);
    }
    let (mut c, mut term) = (Fx::pos(ONE), Fx::pos(ONE));
    for k in 1..MAX_TERMS {
        term = term.mul(r2).div_int((2 * k - 1) * (2 * k)).negate();
        if term.mag == 0 {
            break;
        }
        c = c.add(term);
    }
    (s, c)
}

/// (sin |x|, cos |x|) in fixed point.
fn sin_cos_fx(a: F80) -> (Fx, Fx) {
    let (q, r) = reduce(a);
    let (s, c) = sin_cos_series(r);
    match q {
        0 => (s, c),
        1 => (c, s.negate()),
        2 => (s.negate(), c.negate()),
        _ => (c.negate(), s),
    }
}

/// FSIN: `None` when the operand is out of range.
pub fn sin(env: &mut Env, a: F80) -> Option<F80> {
    match trig_operand(env, a) {
        Err(r) => Some(r),
        Ok(None) => None,
        Ok(Some(e)) if e < TINY => Some(inexact(env, a)),
        Ok(Some(_)) => {
            let (s, _) = sin_cos_fx(a);
            let s = if a.sign() { s.negate() } else { s };
            let r = s.to_f80(env);
            Some(inexact(env, r))
        }
    }
}

/// FCOS.
pub fn cos(env: &mut Env, a: F80) -> Option<F80> {
    match trig_operand(env, a) {
        Err(_) if a.is_zero() => Some(F80::ONE),
        Err(r) => Some(r),
        Ok(None) => None,
        Ok(Some(e)) if e < TINY => Some(inexact(env, F80::ONE)),
        Ok(Some(_)) => {
            let (_, c) = sin_cos_fx(a);
            let r = c.to_f80(env);
            Some(inexact(env, r))
        }
    }
}

/// FPTAN's tangent (the caller pushes 1.0).
pub fn tan(env: &mut Env, a: F80) -> Option<F80> {
    match trig_operand(env, a) {
        Err(r) => Some(r),
        Ok(None) => None,
        Ok(Some(e)) if e < TINY => Some(inexact(env, a)),
        Ok(Some(_)) => {
            let (s, c) = sin_cos_fx(a);
            let (e, m) = quotient_wide(s.mag, c.mag);
            let r = sf::pack_wide(env, a.sign() ^ s.neg ^ c.neg, e, m);
            Some(inexact(env, r))
        }
    }
}

/// FSINCOS: (sine, cosine).
pub fn sincos(env: &mut Env, a: F80) -> Option<(F80, F80)> {
    let s = sin(env, a)?;
    let c = cos(env, a)?;
    Some((s, c))
}

// ---- arctangent ----

/// atan(t) for 0 <= t <= 1.
fn atan_fx(t: Fx) -> Fx {
    let k = ((t.mag + (1 << (FRAC - 4))) >> (FRAC - 3)).min(8);
    let c = Fx::pos(k << (FRAC - 3));
    let tp = t.sub(c).div(Fx::pos(ONE).add(t.mul(c)));
    let tp2 = tp.mul(tp);
    let (mut sum, mut pow) = (tp, tp);
    for n in 1..MAX_TERMS {
        pow = pow.mul(tp2).negate();
        let term = pow.div_int(2 * n + 1);
        if term.mag == 0 {
            break;
        }
        sum = sum.add(term);
    }
    Fx::pos(ATAN_FX[k as usize]).add(sum)
}

/// FPATAN: the angle of the point (x, y), i.e. atan(y / x) in the right quadrant.
pub fn atan2(env: &mut Env, y: F80, x: F80) -> F80 {
    if let Some(r) = sf::nan2(env, y, x) {
        return r;
    }
    sf::denormal_check(env, y);
    sf::denormal_check(env, x);
    if y.is_zero() || x.is_zero() || y.is_inf() || x.is_inf() {
        // Signed zeros, or multiples of pi/4.
        let r = sf::to_host(y).atan2(sf::to_host(x));
        if r == 0.0 {
            return sf::from_host(r);
        }
        let quarters = (r / std::f64::consts::FRAC_PI_4).round() as i32;
        let v = Fx::pos(PI_FX).mul(Fx::pos((quarters.unsigned_abs() as u128) << (FRAC - 2)));
        let v = if quarters < 0 { v.negate() } else { v };
        let r = v.to_f80(env);
        return inexact(env, r);
    }
    let (sy, ey, my) = y.unpack();
    let (sx, ex, mx) = x.unpack();
    let swap = (ey, my) > (ex, mx);
    let (n, en, d, ed) = if swap {
        (mx, ex, my, ey)
    } else {
        (my, ey, mx, ex)
    };
    let diff = en - ed;
    if diff < -40 && !swap && !sx {
        // atan(t) = t (1 - t^2/3 ...) = t to extended precision.
        let r = sf::div(env, y, x);
        return inexact(env, r);
    }
    let t = Fx::pos(ratio(n, d, FRAC as i32 + diff));
    let mut r = atan_fx(t);
    if swap {
        r = Fx::pos(PI2_FX).sub(r);
    }
    if sx {
        r = Fx::pos(PI_FX).sub(r);
    }
    let r = if sy { r.negate() } else { r };
    let v = r.to_f80(env);
    inexact(env, v)
}

// ---- 2^x - 1 ----

/// F2XM1: 2^x - 1 (defined for -1 <= x <= 1).
pub fn exp2m1(env: &mut Env, a: F80) -> F80 {
    if let Some(r) = sf::nan1(env, a) {
        return r;
    }
    if a.is_zero() {
        return a;
    }
    if a.is_inf() {
        return if a.sign() { F80::ONE.neg() } else { a };
    }
    sf::denormal_check(env, a);
    let (_, e, m) = a.unpack();
    if e > 0 || (e == 0 && m != 1 << 63) {
        // Outside the documented domain.
        return from_host(env, (sf::to_host(a) * std::f64::consts::LN_2).exp_m1());
    }
    // 2^x - 1 = x ln2 (1 + z/2! + z^2/3! + ...), z = x ln 2.
    let z = Fx::from_f80(a).mul(Fx::pos(LN2_FX));
    let (mut sum, mut term) = (Fx::pos(ONE), Fx::pos(ONE));
    for n in 1..MAX_TERMS {
        term = term.mul(z).div_int(n + 1);
        if term.mag == 0 {
            break;
        }
        sum = sum.add(term);
    }
    let f = sum.mul(Fx::pos(LN2_FX));
    let r = sf::mul_wide(env, a, f.neg, 127 - FRAC as i32, f.mag);
    inexact(env, r)
}

// ---- logarithms ----

/// log2 of a finite positive value as a wide value (sign, exponent, significand).
fn log2_wide(x: F80) -> (bool, i32, u128) {
    let (_, e, m) = x.unpack();
    if m == 1 << 63 {
        return (e < 0, 127 - 63, (e.unsigned_abs() as u128) << 63);
    }
    // m' = m / 2^63 in [sqrt(1/2), sqrt(2)).
    let (e, mfx) = if m > SQRT2_SIG {
        (e + 1, (m as u128) << 60)
    } else {
        (e, (m as u128) << 61)
    };
    let t = Fx::pos(mfx)
        .sub(Fx::pos(ONE))
        .div(Fx::pos(mfx).add(Fx::pos(ONE)));
    let t2 = t.mul(t);
    let (mut sum, mut pow) = (t, t);
    for n in 1..MAX_TERMS {
        pow = pow.mul(t2);
        let term = pow.div_int(2 * n + 1);
        if term.mag == 0 {
            break;
        }
        sum = sum.add(term);
    }
    let l = Fx {
        neg: sum.neg,
        mag: sum.mag << 1,
    }
    .mul(Fx::pos(L2E_FX));
    if e == 0 {
        return (l.neg, 127 - FRAC as i32, l.mag);
    }
    // e + l at 2^-108 resolution (|e| < 2^15).
    let frac = (l.mag >> 16) as i128;
    let total = ((e as i128) << 108) + if l.neg { -frac } else { frac };
    (total < 0, 127 - 108, total.unsigned_abs())
}

/// FYL2X: y * log2(x).
pub fn yl2x(env: &mut Env, y: F80, x: F80) -> F80 {
    if let Some(r) = sf::nan2(env, y, x) {
        return r;
    }
    if x.sign() && !x.is_zero() {
        return sf::invalid(env);
    }
    if x.is_zero() {
        if y.is_zero() {
            return sf::invalid(env);
        }
        sf::denormal_check(env, y);
        env.raise(sf::ZE);
        return F80::INF.with_sign(!y.sign());
    }
    if x.is_inf() {
        if y.is_zero() {
            return sf::invalid(env);
        }
        sf::denormal_check(env, y);
        return F80::INF.with_sign(y.sign());
    }
    sf::denormal_check(env, x);
    sf::denormal_check(env, y);
    let (neg, e, m) = log2_wide(x);
    if m == 0 {
        // x = 1: y * 0.
        return sf::mul(env, y, F80::ZERO.with_sign(neg));
    }
    if y.is_inf() {
        return F80::INF.with_sign(y.sign() ^ neg);
    }
    if y.is_zero() {
        return F80::ZERO.with_sign(y.sign() ^ neg);
    }
    let exact = x.sig == 1 << 63;
    let r = sf::mul_wide(env, y, neg, e, m);
    if exact { r } else { inexact(env, r) }
}

/// FYL2XP1: y * log2(x + 1) (defined for |x| < 1 - sqrt(2)/2).
pub fn yl2xp1(env: &mut Env, y: F80, x: F80) -> F80 {
    if let Some(r) = sf::nan2(env, y, x) {
        return r;
    }
    if x.is_zero() {
        return sf::mul(env, y, x);
    }
    if x.is_inf() {
        return sf::invalid(env);
    }
    sf::denormal_check(env, x);
    sf::denormal_check(env, y);
    let (s, e, _) = x.unpack();
    if e >= 0 && s {
        // x <= -1: outside the domain of the logarithm.
        return sf::invalid(env);
    }
    if y.is_inf() || y.is_zero() {
        return sf::mul(env, y, x);
    }
    if e >= -1 {
        // |x| >= 1/2, outside the documented domain: log2 of the rounded 1 + x.
        let mut scratch = Env::new();
        let (neg, le, lm) = log2_wide(sf::add(&mut scratch, F80::ONE, x));
        let r = sf::mul_wide(env, y, neg, le, lm);
        return inexact(env, r);
    }
    // log2(1 + x) = x log2(e) (1 - x/2 + x^2/3 - ...).
    let xf = Fx::from_f80(x);
    let (mut sum, mut pow) = (Fx::pos(ONE), Fx::pos(ONE));
    for n in 1..MAX_TERMS {
        pow = pow.mul(xf).negate();
        let term = pow.div_int(n + 1);
        if term.mag == 0 {
            break;
        }
        sum = sum.add(term);
    }
    let f = sum.mul(Fx::pos(L2E_FX));
    // x * f exactly to 128 bits, then times y with one rounding.
    let (_, ex, mx) = x.unpack();
    let p1 = mx as u128 * (f.mag >> 64);
    let p0 = mx as u128 * (f.mag & u64::MAX as u128);
    let top = (p1 + (p0 >> 64)) | (p0 as u64 != 0) as u128;
    // x * f = mx/2^63 * 2^ex * mag/2^124 = top * 2^(ex - 123).
    let r = sf::mul_wide(env, y, x.sign() ^ f.neg, ex + 4, top);
    inexact(env, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: f64) -> F80 {
        sf::from_host(v)
    }

    fn ext(sign: bool, exp: u16, sig: u64) -> F80 {
        F80::new(sign, exp, sig)
    }

    /// Within one unit in the last place of the correctly rounded value.
    fn close(got: F80, want: F80) {
        let ok = got.se == want.se && got.sig.abs_diff(want.sig) <= 1;
        assert!(ok, "got {got:x?}, want {want:x?}");
    }

    #[test]
    fn trig_specials_and_range() {
        let mut e = Env::new();
        assert_eq!(sin(&mut e, F80::NEG_ZERO), Some(F80::NEG_ZERO));
        assert_eq!(cos(&mut e, F80::ZERO), Some(F80::ONE));
        assert_eq!(e.flags, 0);
        assert_eq!(sin(&mut e, x(1e19)), None);
        assert_eq!(sin(&mut e, F80::INF), Some(F80::INDEFINITE));
        assert_eq!(e.flags, sf::IE);
    }

    #[test]
    fn trig_values_are_extended_accurate() {
        let mut e = Env::new();
        close(
            sin(&mut e, x(1.0)).unwrap(),
            ext(false, 0x3FFE, 0xd76aa47848677021),
        );
        close(
            cos(&mut e, x(1.0)).unwrap(),
            ext(false, 0x3FFE, 0x8a51407da8345c92),
        );
        close(
            tan(&mut e, x(1.0)).unwrap(),
            ext(false, 0x3FFF, 0xc75922e5f71d2dc5),
        );
        close(
            sin(&mut e, x(1e10)).unwrap(),
            ext(true, 0x3FFD, 0xf99a63c4b5271a66),
        );
        close(
            cos(&mut e, x(1e18)).unwrap(),
            ext(false, 0x3FFB, 0xf26d039603acd38c),
        );
        close(
            sin(&mut e, x(-1.0)).unwrap(),
            ext(true, 0x3FFE, 0xd76aa47848677021),
        );
        assert_eq!(e.flags, sf::PE);
    }

    #[test]
    fn logarithms() {
        let mut e = Env::new();
        assert_eq!(yl2x(&mut e, x(3.0), x(8.0)), x(9.0));
        assert_eq!(yl2x(&mut e, x(3.0), x(0.25)), x(-6.0));
        assert_eq!(e.flags, 0);
        assert_eq!(yl2x(&mut e, x(1.0), F80::ZERO), F80::INF.neg());
        assert_eq!(e.flags, sf::ZE);
        let mut e = Env::new();
        assert_eq!(yl2x(&mut e, x(1.0), x(-2.0)), F80::INDEFINITE);
        let mut e = Env::new();
        close(
            yl2x(&mut e, x(1.0), x(10.0)),
            ext(false, 0x4000, 0xd49a784bcd1b8afe),
        );
        close(
            yl2x(&mut e, x(3.0), x(1.5)),
            ext(false, 0x3FFF, 0xe0a02756f9c1cb6f),
        );
        close(
            yl2xp1(&mut e, x(2.0), x(0.25)),
            ext(false, 0x3FFE, 0xa4d3c25e68dc57f2),
        );
        assert_eq!(e.flags, sf::PE);
    }

    #[test]
    fn arctangent_and_exponential() {
        let mut e = Env::new();
        close(
            atan2(&mut e, x(1.0), x(1.0)),
            ext(false, 0x3FFE, 0xC90F_DAA2_2168_C235),
        );
        close(
            atan2(&mut e, x(1.0), x(3.0)),
            ext(false, 0x3FFD, 0xa4bc7d1934f70924),
        );
        close(
            atan2(&mut e, x(3.0), x(-1.0)),
            ext(false, 0x3FFF, 0xf23ef9e86ea6847e),
        );
        assert_eq!(atan2(&mut e, F80::ZERO, x(2.0)), F80::ZERO);
        close(
            exp2m1(&mut e, x(0.5)),
            ext(false, 0x3FFD, 0xd413cccfe7799211),
        );
        close(
            exp2m1(&mut e, x(-0.75)),
            ext(true, 0x3FFD, 0xcf901f5ce48ead21),
        );
        assert_eq!(exp2m1(&mut e, F80::INF.neg()), F80::ONE.neg());
        close(exp2m1(&mut e, x(1.0)), F80::ONE);
    }

    /// Relative agreement with the host's binary64 libm over a sweep.
    #[test]
    fn sweeps_agree_with_binary64() {
        let near = |got: F80, want: f64| {
            let g = sf::to_host(got);
            assert!(
                (g - want).abs() <= 4e-16 * want.abs().max(1e-300),
                "{g} vs {want} ({got:x?})"
            );
        };
        let mut e = Env::new();
        for i in -400..400 {
            let v = i as f64 * 0.37 + 0.001;
            near(sin(&mut e, x(v)).unwrap(), v.sin());
            near(cos(&mut e, x(v)).unwrap(), v.cos());
            near(tan(&mut e, x(v)).unwrap(), v.tan());
            let w = (i as f64 * 0.013).sin() * 3.0 + 0.5;
            near(atan2(&mut e, x(v), x(w)), v.atan2(w));
        }
        for i in 1..400 {
            let v = i as f64 * 1.7e-3 * (i as f64);
            near(yl2x(&mut e, x(1.0), x(v)), v.log2());
            let t = i as f64 / 400.0 - 0.5;
            near(
                exp2m1(&mut e, x(2.0 * t)),
                (2.0 * t * std::f64::consts::LN_2).exp_m1(),
            );
            near(
                yl2xp1(&mut e, x(1.0), x(t * 0.58)),
                (t * 0.58).ln_1p() / std::f64::consts::LN_2,
            );
        }
        near(
            yl2xp1(&mut e, x(1.0), x(1e-30)),
            1e-30 / std::f64::consts::LN_2,
        );
        near(exp2m1(&mut e, x(-1e-30)), -1e-30 * std::f64::consts::LN_2);
    }

    /// Within one ulp of mpmath's correctly rounded results
    /// (testdata/trans.txt: fn, x, y, result).
    #[test]
    fn transcendental_vectors_from_mpmath() {
        let hex16 = |s: &str| u16::from_str_radix(s, 16).expect("hex");
        let hex64 = |s: &str| u64::from_str_radix(s, 16).expect("hex");
        let key =
            |v: F80| ((v.exp() as i128) << 64 | v.sig as i128) * if v.sign() { -1 } else { 1 };
        for line in include_str!("testdata/trans.txt").lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let a = F80 {
                se: hex16(f[1]),
                sig: hex64(f[2]),
            };
            let b = F80 {
                se: hex16(f[3]),
                sig: hex64(f[4]),
            };
            let want = F80 {
                se: hex16(f[5]),
                sig: hex64(f[6]),
            };
            let mut e = Env::new();
            let got = match f[0] {
                "sin" => sin(&mut e, a),
                "cos" => cos(&mut e, a),
                "tan" => tan(&mut e, a),
                "atan" => Some(atan2(&mut e, b, a)),
                "yl2x" => Some(yl2x(&mut e, b, a)),
                "yl2xp1" => Some(yl2xp1(&mut e, b, a)),
                _ => Some(exp2m1(&mut e, a)),
            }
            .expect("in range");
            assert!((key(got) - key(want)).abs() <= 1, "{line}: got {got:x?}");
        }
    }

    #[test]
    fn fixed_point_helpers() {
        assert_eq!(mul_shift(ONE, ONE), ONE);
        assert_eq!(mul_shift(3 * ONE, ONE / 2), 3 * ONE / 2);
        assert_eq!(div_shift(ONE, 4 * ONE), ONE / 4);
        assert_eq!(ratio(1, 3, 2), 1);
        let (e, m) = quotient_wide(ONE, 3 * ONE);
        let mut env = Env::new();
        assert_eq!(
            sf::pack_wide(&mut env, false, e, m),
            ext(false, 0x3FFD, 0xAAAA_AAAA_AAAA_AAAB)
        );
    }
}
