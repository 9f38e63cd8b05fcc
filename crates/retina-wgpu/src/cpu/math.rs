//! Branch-free f32 math that LLVM vectorises: the CPU twin of `shaders/shared/numerics.wgsl`.
//!
//! `std`'s `exp` is a call into libm and stops a loop from being vectorised; these are written
//! with arithmetic, comparisons and bit casts only, so a loop over a slice compiles to packed
//! SIMD (AVX2 when the CPU has it: see `multiversion!`).

/// A quiet NaN.
pub const NAN: f32 = f32::NAN;

/// True for NaN and +-inf (tests the exponent bits, like the shaders).
#[inline(always)]
pub fn is_non_finite(x: f32) -> bool {
    x.to_bits() & 0x7f80_0000 == 0x7f80_0000
}

/// `exp(x)`, within 2 ulp of the true value for x in [-87, 88] (Cephes `expf`): x = n ln2 + r
/// with |r| <= ln2 / 2, a degree-6 polynomial for exp(r), and 2^n from exponent bits.
/// Below -87.3 (where the result would be a denormal) it returns 0, as GPUs that flush
/// denormals do: a clamped 2^-126 would turn `exp(-x) * x` into a number of order 1 for x near
/// `f32::MAX`, where it is 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.376_26);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // `shifted` holds n in its low mantissa bits: 2^n without a float-to-int conversion.
    let scale = f32::from_bits((shifted.to_bits().wrapping_sub(0x4b40_0000 - 127)) << 23);
    if x <= -87.336_55 { 0.0 } else { p * scale }
}

/// `log(1 + e)` for e in [0, 1], as `2 atanh(e / (2 + e))` by its series (see
/// `shaders/shared/numerics.wgsl`): 1e-9 relative, no cancellation for tiny e.
#[inline(always)]
pub fn log1p_unit(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0 + s2 * (1.0 / 15.0)))))));
    2.0 * s * series
}

/// Defines a function that runs `$body` compiled for AVX2 + FMA when the CPU has them
/// (checked at run time, x86-64 only), else for the baseline target. Helpers the body calls
/// should be `#[inline(always)]` so that they are compiled inside the feature-enabled copy.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: both features were detected on this CPU.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_matches_libm_to_two_ulp() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
            x += 0.000_97;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 2e-38 && exp(-1e4) >= 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn log1p_unit_matches_f64_over_its_range() {
        let mut worst = 0.0f64;
        for i in 0..=100_000 {
            let e = i as f32 / 100_000.0;
            let got = f64::from(log1p_unit(e));
            let want = f64::from(e).ln_1p();
            if want > 0.0 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        for e in [1e-30f32, 1e-12, 3e-8, 1e-5] {
            let rel = (f64::from(log1p_unit(e)) - f64::from(e).ln_1p()).abs() / f64::from(e).ln_1p();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }
}
