//! The transcendental instructions: FSIN, FCOS, FSINCOS, FPTAN, FPATAN,
//! F2XM1, FYL2X, FYL2XP1.
//!
//! Accuracy, honestly: the special cases (zeros, infinities, NaNs, the
//! invalid and divide-by-zero cases, exact powers of two for the
//! logarithms, the out-of-range test for |x| >= 2^63) follow the SDM
//! exactly, and tiny arguments use the exact leading term in extended
//! precision. Everything else is evaluated with the host's binary64 libm
//! on the operand rounded to binary64 (logarithms split off the binary
//! exponent first, so the extended range is kept): results carry about
//! 53 correct bits rather than the ~64 of a real x87, and the trigonometric
//! functions reduce the binary64-rounded argument (a real x87 reduces with
//! a 66-bit pi, so both lose accuracy for huge arguments). Every inexact
//! result raises PE; C1 is left clear. The arithmetic, loads and stores
//! never go through binary64.

use super::softfloat::{self as sf, Env, F80};

/// ln 2 and log2 e rounded to nearest extended (the FLDLN2 / FLDL2E values).
const LN2: F80 = F80::new(false, 0x3FFE, 0xB172_17F7_D1CF_79AC);
const L2E: F80 = F80::new(false, 0x3FFF, 0xB8AA_3B29_5C17_F0BC);

/// Arguments at or beyond 2^63 in magnitude are out of range (C2 = 1).
const TRIG_LIMIT: i32 = 63;
/// Below 2^-40, sin x = tan x = x and cos x = 1 to extended precision.
const TINY: i32 = -40;

fn inexact(env: &mut Env, v: f64) -> F80 {
    env.raise(sf::PE);
    env.rounded_up = false;
    sf::from_host(v)
}

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

/// FSIN: `None` when the operand is out of range.
pub fn sin(env: &mut Env, a: F80) -> Option<F80> {
    match trig_operand(env, a) {
        Err(r) => Some(r),
        Ok(None) => None,
        Ok(Some(e)) if e < TINY => {
            env.raise(sf::PE);
            Some(a)
        }
        Ok(Some(_)) => Some(inexact(env, sf::to_host(a).sin())),
    }
}

/// FCOS.
pub fn cos(env: &mut Env, a: F80) -> Option<F80> {
    match trig_operand(env, a) {
        Err(_) if a.is_zero() => Some(F80::ONE),
        Err(r) => Some(r),
        Ok(None) => None,
        Ok(Some(e)) if e < TINY => {
            env.raise(sf::PE);
            Some(F80::ONE)
        }
        Ok(Some(_)) => Some(inexact(env, sf::to_host(a).cos())),
    }
}

/// FPTAN's tangent (the caller pushes 1.0).
pub fn tan(env: &mut Env, a: F80) -> Option<F80> {
    match trig_operand(env, a) {
        Err(r) => Some(r),
        Ok(None) => None,
        Ok(Some(e)) if e < TINY => {
            env.raise(sf::PE);
            Some(a)
        }
        Ok(Some(_)) => Some(inexact(env, sf::to_host(a).tan())),
    }
}

/// FSINCOS: (sine, cosine).
pub fn sincos(env: &mut Env, a: F80) -> Option<(F80, F80)> {
    let s = sin(env, a)?;
    let c = cos(env, a)?;
    Some((s, c))
}

/// FPATAN: the angle of the point (x, y), i.e. atan(y / x) in the right quadrant.
pub fn atan2(env: &mut Env, y: F80, x: F80) -> F80 {
    if let Some(r) = sf::nan2(env, y, x) {
        return r;
    }
    sf::denormal_check(env, y);
    sf::denormal_check(env, x);
    if y.is_zero() || x.is_zero() || y.is_inf() || x.is_inf() {
        // Exact signed zeros, or multiples of pi/4 the host computes exactly rounded.
        let r = sf::to_host(y).atan2(sf::to_host(x));
        if r == 0.0 {
            return sf::from_host(r);
        }
        return inexact(env, r);
    }
    let (sy, ey, my) = y.unpack();
    let (sx, ex, mx) = x.unpack();
    let d = ey - ex;
    if d < -62 && !sx {
        // atan(t) = t to extended precision.
        return sf::div(env, y, x);
    }
    let d = d.clamp(-1000, 1000);
    let fy = (my as f64 / (1u64 << 63) as f64) * f64::powi(2.0, d);
    let fx = mx as f64 / (1u64 << 63) as f64;
    let r = (if sy { -fy } else { fy }).atan2(if sx { -fx } else { fx });
    inexact(env, r)
}

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
    let (_, e, _) = a.unpack();
    if e < -60 {
        return sf::mul(env, a, LN2);
    }
    inexact(env, (sf::to_host(a) * std::f64::consts::LN_2).exp_m1())
}

/// log2 of a finite positive value, as exactly as binary64 allows.
fn log2(env: &mut Env, x: F80) -> F80 {
    let (_, e, m) = x.unpack();
    if m == 1 << 63 {
        return sf::from_i64(e as i64);
    }
    if e == 0 || e == -1 {
        // Near 1: log2(1 + t) with t = x - 1 exact (Sterbenz).
        let mut exact = Env::new();
        let t = sf::sub(&mut exact, x, F80::ONE);
        return inexact(env, sf::to_host(t).ln_1p() / std::f64::consts::LN_2);
    }
    let frac = (m as f64 / (1u64 << 63) as f64).log2();
    let mut scratch = Env::new();
    env.raise(sf::PE);
    sf::add(&mut scratch, sf::from_i64(e as i64), sf::from_host(frac))
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
    let l = log2(env, x);
    sf::mul(env, y, l)
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
    let (s, e, _) = x.unpack();
    if e >= 0 && s {
        // x <= -1: outside the domain of the logarithm.
        return sf::invalid(env);
    }
    let l = if e < -60 {
        sf::mul(env, x, L2E)
    } else {
        inexact(env, sf::to_host(x).ln_1p() / std::f64::consts::LN_2)
    };
    sf::mul(env, y, l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: f64) -> F80 {
        sf::from_host(v)
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
        let mut e = Env::new();
        assert_eq!(sf::to_host(sin(&mut e, x(0.5)).unwrap()), 0.5f64.sin());
        assert_eq!(e.flags, sf::PE);
    }

    #[test]
    fn logarithms_exact_on_powers_of_two_and_zero_divide() {
        let mut e = Env::new();
        assert_eq!(yl2x(&mut e, x(3.0), x(8.0)), x(9.0));
        assert_eq!(e.flags, 0);
        assert_eq!(yl2x(&mut e, x(1.0), F80::ZERO), F80::INF.neg());
        assert_eq!(e.flags, sf::ZE);
        let mut e = Env::new();
        assert_eq!(yl2x(&mut e, x(1.0), x(-2.0)), F80::INDEFINITE);
        let r = sf::to_host(yl2x(&mut Env::new(), x(1.0), x(10.0)));
        assert!((r - 10f64.log2()).abs() < 1e-15);
        let r = sf::to_host(yl2xp1(&mut Env::new(), x(2.0), x(0.25)));
        assert!((r - 2.0 * 1.25f64.log2()).abs() < 1e-15);
    }

    #[test]
    fn atan_and_exp() {
        let mut e = Env::new();
        let r = sf::to_host(atan2(&mut e, x(1.0), x(1.0)));
        assert_eq!(r, std::f64::consts::FRAC_PI_4);
        let r = sf::to_host(atan2(&mut e, x(1.0), x(-1e300)));
        assert_eq!(r, std::f64::consts::PI);
        assert_eq!(atan2(&mut e, F80::ZERO, x(2.0)), F80::ZERO);
        let r = sf::to_host(exp2m1(&mut e, x(0.5)));
        assert!((r - (2f64.sqrt() - 1.0)).abs() < 2e-16);
        assert_eq!(exp2m1(&mut e, F80::INF.neg()), F80::ONE.neg());
    }
}
