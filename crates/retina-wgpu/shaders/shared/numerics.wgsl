// Numerics shared by the loss kernels. src/cpu/math.rs is the CPU twin: same formulas, same
// order of operations, so that the two backends agree to a few ulps.

const NAN_BITS: u32 = 0x7fc00000u;
// The same bits in a variable: WebGPU's compilers (Tint) reject a constant expression whose
// value is NaN, so the bitcast must read something that is not a constant.
var<private> nan_bits: u32 = NAN_BITS;

// A quiet NaN, built from its bits so that no fast-math assumption folds it away.
fn nan_f32() -> f32 {
    return bitcast<f32>(nan_bits);
}

// True for NaN and +-inf. Tests the exponent bits: shader compilers may assume that NaNs never
// occur and fold `x != x` to false, but they cannot fold an integer test.
fn is_non_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

// log(1 + e) for e in [0, 1], the only range the losses need (e = exp(-|x|)).
// WGSL has no log1p, and log(1 + e) loses every digit once e < 2^-24; GPU `log` is also only
// accurate to an absolute 2^-21 near 1. Instead: log(1 + e) = 2 atanh(s) with s = e / (2 + e)
// in [0, 1/3], and atanh(s) = s (1 + s^2/3 + s^4/5 + ...). With s^2 <= 1/9 the series truncated
// after s^14/15 is accurate to 1e-9 relative, and it is made of multiply-adds only.
fn log1p_unit(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0
        + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0 + s2 * (1.0 / 15.0)))))));
    return 2.0 * s * series;
}
