//! Pointwise (1 x 1, stride 1, unpadded) convolution on the CPU with AVX-512: the forward pass
//! of [`crate::cpu::conv`] for MobileNet's pointwise layers, the FPN laterals and the heads, in
//! f32, one image at a time. Each output is `bias[o] + sum over c of w[o][c] * x[c][p]`, read
//! from the input's planes where they lie (no copy, unlike the dense kernel's window) and
//! written through the epilogue straight into the output's planes: one pass over each.
//!
//! The output pixels are split into bands, one parallel task each. A task takes its pixels in
//! runs of [`P`] (48): for each block of 8 output channels it accumulates 8 x 48 outputs in
//! 24 zmm registers over every input channel (three input loads and eight broadcast weights
//! feeding 24 FMAs per channel), applies LeakyReLU in the registers and stores the block's
//! rows; the run's inputs (24 KiB for 128 channels) are read again by the next block from
//! L1 (the path takes layers of at most [`MAX_WEIGHTS`] weights). The image's last partial
//! run goes through a zero-padded copy. Sums run from the bias in input-channel order, fused
//! multiply-adds throughout: the results differ from the GEMM path's in the last bits.

use rayon::prelude::*;

use crate::cpu::conv::{ConvProblem, Real, store_epilogue_avx512};

/// Output channels per block: one broadcast weight each per input channel.
const OB: usize = 8;

/// Pixels per run in 16-lane registers: 8 output channels x 3 registers is 24 accumulators of
/// the 32 zmm registers.
const VECTORS: usize = 3;

/// Pixels per run.
const P: usize = 16 * VECTORS;

/// Multiply-adds per parallel task, about: enough to pay for the task, small enough that a
/// layer of a few thousand pixels still has several tasks per thread.
const TASK_WORK: usize = 1 << 19;

/// Weights (input times output channels) up to which the path is taken. Measured in
/// RetinaFace's pass on the project's AVX-512 VM (2 threads, against the GEMM path): 1.4-1.7x
/// faster at 8 -> 16 up to 64 -> 64 channels and for the heads, 1.1-1.2x at 64 -> 128 and
/// 128 -> 64, but 0.85x at 128 -> 128 and 0.5-0.7x at 128 -> 256, 256 -> 256 and 256 -> 64:
/// there a block's weights and a run's inputs no longer share L1, and the GEMM's packed panels
/// win.
const MAX_WEIGHTS: usize = 64 * 128;

/// Whether the CPU has AVX-512F and FMA.
fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether [`forward`] runs problem `p` (else the caller takes the GEMM path): a 1 x 1 kernel
/// at stride 1 without padding, at most [`MAX_WEIGHTS`] weights, f32, one image or a batch the
/// GEMM path would run as one GEMM (fewer images than threads; with more, its per-image GEMMs
/// in parallel are as fast), and AVX-512.
pub(crate) fn applies<T: Real>(p: &ConvProblem<'_, T>, per_image: bool) -> bool {
    T::as_f32(p.x).is_some()
        && p.conv.kernel == (1, 1)
        && p.conv.stride == 1
        && p.conv.padding == 0
        && (1..=MAX_WEIGHTS).contains(&(p.input.c * p.out.c))
        && p.input.plane() > 0
        && (p.input.n == 1 || !per_image)
        && available()
}

/// Forward pass into `y` (`p.out` shaped): the bias, then LeakyReLU of slope `leaky` when
/// given. Callers check [`applies`] first (or, in tests, [`available`]).
pub(crate) fn forward<T: Real>(p: &ConvProblem<'_, T>, bias: Option<&[T]>, leaky: Option<T>, y: &mut [T]) {
    let (Some(x), Some(w), Some(y)) = (T::as_f32(p.x), T::as_f32(p.w), T::as_f32_mut(y)) else {
        unreachable!("applies() admits f32 only")
    };
    let bias = bias.and_then(T::as_f32);
    let leaky = leaky.map(Real::to_f32);
    let (cin, cout, hw) = (p.input.c, p.out.c, p.out.plane());
    let blocks = cout.div_ceil(OB);
    // Weights as [block][ci][OB], zero past the last output channel; the bias likewise.
    let mut packed_scratch = p.pool.take(blocks * cin * OB);
    let packed = T::as_f32_mut(&mut packed_scratch).unwrap_or_default();
    packed.fill(0.0);
    for co in 0..cout {
        for ci in 0..cin {
            packed[(co / OB * cin + ci) * OB + co % OB] = w[co * cin + ci];
        }
    }
    let mut bias_scratch = p.pool.take(blocks * OB);
    let bias_packed = T::as_f32_mut(&mut bias_scratch).unwrap_or_default();
    bias_packed.fill(0.0);
    if let Some(b) = bias {
        bias_packed[..cout].copy_from_slice(b);
    }
    let (packed, bias_packed) = (&*packed, &*bias_packed);
    // Bands of whole runs, about TASK_WORK multiply-adds each, but at least two per thread
    // where the runs allow.
    let runs = hw.div_ceil(P);
    let band = (TASK_WORK / (P * cin * blocks * OB))
        .min(runs.div_ceil(2 * rayon::current_num_threads()))
        .clamp(1, runs)
        * P;
    for (image, y) in y.chunks_exact_mut(cout * hw).enumerate() {
        let x = &x[image * cin * hw..][..cin * hw];
        // Each band's pixels of every output plane: disjoint slices, one list per band.
        let mut bands: Vec<Vec<&mut [f32]>> = (0..hw.div_ceil(band)).map(|_| Vec::with_capacity(cout)).collect();
        for plane in y.chunks_exact_mut(hw) {
            for (list, part) in bands.iter_mut().zip(plane.chunks_mut(band)) {
                list.push(part);
            }
        }
        bands.into_par_iter().enumerate().for_each(|(chunk, mut outs)| {
            let start = chunk * band;
            let len = outs[0].len();
            let full = len / P * P;
            for at in (0..full).step_by(P) {
                for (block, outs) in outs.chunks_mut(OB).enumerate() {
                    let w = &packed[block * cin * OB..][..cin * OB];
                    let b = &bias_packed[block * OB..][..OB];
                    // SAFETY: `applies` (or the test) found AVX-512F and FMA on this CPU.
                    unsafe { run(x, hw, start + at, w, b, outs, at, leaky) };
                }
            }
            if full < len {
                tail(x, hw, start + full, packed, bias_packed, &mut outs, full, leaky, p);
            }
        });
    }
}

/// The image's last partial run, pixels `q..hw` of every plane: copied with zeros to [`P`]
/// pixels per input channel, computed into a scratch block and copied out.
#[allow(clippy::too_many_arguments)]
fn tail<T: Real>(
    x: &[f32],
    hw: usize,
    q: usize,
    packed: &[f32],
    bias: &[f32],
    outs: &mut [&mut [f32]],
    at: usize,
    leaky: Option<f32>,
    p: &ConvProblem<'_, T>,
) {
    let (cin, n) = (p.input.c, hw - q);
    let mut input_scratch = p.pool.take(cin * P);
    let input = T::as_f32_mut(&mut input_scratch).unwrap_or_default();
    input.fill(0.0);
    for (dst, src) in input.chunks_exact_mut(P).zip(x.chunks_exact(hw)) {
        dst[..n].copy_from_slice(&src[q..]);
    }
    let mut out_scratch = p.pool.take(OB * P);
    let out = T::as_f32_mut(&mut out_scratch).unwrap_or_default();
    for (block, outs) in outs.chunks_mut(OB).enumerate() {
        let w = &packed[block * cin * OB..][..cin * OB];
        let b = &bias[block * OB..][..OB];
        let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(P).take(outs.len()).collect();
        // SAFETY: `applies` (or the test) found AVX-512F and FMA on this CPU.
        unsafe { run(input, P, 0, w, b, &mut rows, 0, leaky) };
        for (dst, src) in outs.iter_mut().zip(&rows) {
            dst[at..at + n].copy_from_slice(&src[..n]);
        }
    }
}

/// One run of [`P`] pixels for one block of output channels: `outs[o][at..at + P]` = the
/// epilogue of `bias[o] + sum over c of w[c * OB + o] * x[c * stride + q + j]`, for the
/// `outs.len()` (at most [`OB`]) channels of the block. `x` holds the input's channels
/// `stride` apart; `w` holds `x`'s channel count times [`OB`] weights.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,fma")]
fn run(
    x: &[f32],
    stride: usize,
    q: usize,
    w: &[f32],
    bias: &[f32],
    outs: &mut [&mut [f32]],
    at: usize,
    leaky: Option<f32>,
) {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps};
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; OB];
    for (a, &b) in acc.iter_mut().zip(bias) {
        *a = [_mm512_set1_ps(b); VECTORS];
    }
    for (c, wc) in w.chunks_exact(OB).enumerate() {
        let src = &x[c * stride + q..][..P];
        let mut v = [_mm512_setzero_ps(); VECTORS];
        for (i, v) in v.iter_mut().enumerate() {
            // SAFETY: `src` holds P values; this load reads 16 of them.
            *v = unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * i)) };
        }
        for (a, &wo) in acc.iter_mut().zip(<&[f32; OB]>::try_from(wc).expect("OB weights")) {
            let wo = _mm512_set1_ps(wo);
            for (a, &v) in a.iter_mut().zip(&v) {
                *a = _mm512_fmadd_ps(wo, v, *a);
            }
        }
    }
    for (a, out) in acc.iter().zip(outs.iter_mut()) {
        store_epilogue_avx512(&mut out[at..at + P], a, leaky);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Conv2d, Shape};

    /// The path's output against the definition on each case (`cin -> cout` channels).
    fn check(cases: &[(usize, usize, Shape)]) {
        let cases: Vec<(Conv2d, Shape)> = cases.iter().map(|&(i, o, s)| (Conv2d::new(i, o, 1, 1), s)).collect();
        crate::cpu::conv::tests::check_forward(forward::<f32>, &cases);
    }

    /// Shapes that reach a partial output block and many full ones, several bands with a
    /// partial last run, an image of fewer pixels than one run, two images, and the most
    /// input channels the path takes. Only where the CPU has AVX-512 (elsewhere the kernel never runs).
    #[test]
    fn matches_the_definition() {
        if !available() {
            return;
        }
        check(&[
            (8, 16, Shape::new(1, 8, 61, 83)),
            (64, 20, Shape::new(1, 64, 15, 20)),
            (3, 5, Shape::new(2, 3, 7, 9)),
            (128, 64, Shape::new(1, 128, 9, 11)),
            (5, 64, Shape::new(1, 5, 1, 96)),
        ]);
    }

    /// Shapes small enough for Miri (`cargo +nightly miri test --lib cpu::pointwise::tests::tiny`,
    /// with AVX-512 enabled for Miri's CPU): one full run and a partial one, and a partial
    /// output block.
    #[test]
    fn tiny_shapes_match_the_definition() {
        if !available() {
            return;
        }
        check(&[(2, 9, Shape::new(1, 2, 1, 50)), (1, 3, Shape::new(1, 1, 2, 3))]);
    }

    /// Whether the path takes convolution `c` on input `s` in precision `T`.
    fn takes<T: Real>(c: Conv2d, s: Shape, per_image: bool) -> bool {
        crate::cpu::conv::tests::takes(applies::<T>, c, s, per_image)
    }

    /// The layers the path takes: RetinaFace's pointwise layers, laterals and heads, not 3 x 3
    /// or strided layers, wider layers, f64, or batches the GEMM path runs image by image.
    #[test]
    fn takes_the_pointwise_layers() {
        let s = Shape::new(1, 64, 60, 80);
        assert_eq!(takes::<f32>(Conv2d::new(64, 64, 1, 1), s, false), available());
        assert_eq!(takes::<f32>(Conv2d::new(64, 20, 1, 1), s, true), available());
        assert!(!takes::<f32>(Conv2d::new(64, 64, 3, 1), s, false));
        assert!(!takes::<f32>(Conv2d::new(64, 64, 1, 2), s, false));
        let wide = Shape::new(1, 128, 30, 40);
        assert_eq!(takes::<f32>(Conv2d::new(128, 64, 1, 1), wide, false), available());
        assert!(!takes::<f32>(Conv2d::new(128, 128, 1, 1), wide, false));
        assert!(!takes::<f32>(
            Conv2d::new(64, 64, 1, 1),
            Shape::new(8, 64, 60, 80),
            true
        ));
        assert!(!takes::<f64>(Conv2d::new(64, 64, 1, 1), s, false));
    }
}
