//! Direct dense convolution on the CPU with AVX-512: the forward pass of [`crate::cpu::conv`]
//! for kernels larger than 1 x 1 at stride 1 or 2 with at most 64 output channels, in f32, on
//! one image at a time (RetinaFace's stride-2 stem, SSH modules and FPN merges: 3 x 3
//! convolutions to 8, 16, 32 and 64 channels). There im2col + GEMM copies each input value
//! kh * kw times into a matrix and then runs a GEMM whose M (the output channels) is at most
//! the 64 rows of its AVX-512 tile; this kernel reads each input value from a window in L2
//! (on the project's AVX-512 VM, 1.1-2.4x the GEMM path on those layers).
//!
//! The output rows are split into bands, one parallel task each. A task copies the input rows
//! its band reads into a window of zero-padded rows, split into `s * s` phase planes for stride
//! `s` (phase (a, b) holds padded pixels `(s * i + a, s * j + b)`), each `Wq = ceil((W + 2 *
//! pad) / s)` wide. Output `(oy, ox)` of the band is then computed at flat position
//! `q = oy * Wq + ox` of a grid `Wq` wide, whose tap (ky, kx) reads position
//! `q + (ky / s) * Wq + kx / s` of phase plane `(ky % s, kx % s)`: every tap of a run of
//! consecutive outputs is one contiguous run of inputs, with no bounds test and no edge case.
//! The columns per row past the output's width (and the last run's tail) are computed and
//! dropped. A run accumulates 8 output channels x 48 pixels in 24 zmm registers over the input
//! channels and taps, each step three input loads and eight broadcast weights feeding 24 FMAs;
//! output channels past the last block of 8 carry zero weights. Each block's rows go through
//! the epilogue into the output while they are in L1. Each output is the bias plus its products
//! in (input channel, ky, kx) order, fused multiply-adds throughout: the results differ from
//! the GEMM path's in the last bits.

use rayon::prelude::*;

use crate::cpu::conv::{ConvProblem, Real, decimate, epilogue};

/// Output columns below which the direct path is not taken: a row then wastes `kw - 1` of
/// every `Wo + kw - 1` outputs it computes.
const MIN_WIDTH: usize = 8;

/// Output channels up to which the path is taken (measured faster than the GEMM path at 64).
const MAX_OUT_CHANNELS: usize = 64;

/// Outputs per parallel task (band of whole output rows), about.
const TASK_OUTPUTS: usize = 512;

/// Output rows per band at least (where the rows allow two bands per thread): a band of a
/// wide image then still has more rows than its taps reach beyond it.
const MIN_BAND_ROWS: usize = 4;

/// Output channels per block: one broadcast weight each per tap.
const OB: usize = 8;

/// Pixels per run in 16-lane registers: 8 output channels x 3 registers is 24 accumulators of
/// the 32 zmm registers.
const VECTORS: usize = 3;

/// Pixels per run.
const P: usize = 16 * VECTORS;

/// Input channels per pass over a task's outputs (the partial sums go through the task's
/// output rows between passes): a pass's rows and weights stay in L1 and L2.
const CHANNEL_BLOCK: usize = 32;

/// Whether the CPU has AVX-512F and FMA.
fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether [`forward`] runs problem `p` (else the caller takes the im2col + GEMM path):
/// stride 1 or 2, a kernel larger than 1 x 1 (a 1 x 1 layer's GEMM reads its input in place
/// and was faster), at most 64 output channels at least
/// [`MIN_WIDTH`] wide, f32, one image or a batch the GEMM path would run as one GEMM (fewer
/// images than threads; with more, its per-image GEMMs in parallel are as fast or faster), and
/// AVX-512.
pub(crate) fn applies<T: Real>(p: &ConvProblem<'_, T>, per_image: bool) -> bool {
    T::as_f32(p.x).is_some()
        && matches!(p.conv.stride, 1 | 2)
        && p.conv.kernel != (1, 1)
        && p.out.c <= MAX_OUT_CHANNELS
        && p.out.w >= MIN_WIDTH
        && p.input.c > 0
        && p.input.plane() > 0
        && (p.input.n == 1 || !per_image)
        && available()
}

/// The geometry of one task's input window, shared by the tasks.
struct Layout {
    /// The stride `s`: a window holds `s * s` phase planes per input channel, phase (a, b)
    /// holding padded pixels `(s * i + a, s * j + b)` at `(i, j)`.
    stride: usize,
    /// Columns of a phase plane's rows (and of the flat output grid): `ceil(Wp / s)`.
    wq: usize,
    /// Values of a phase plane: the band's rows plus the reach of the last run's taps.
    phase: usize,
    /// Values of one input channel's window: `s * s` phase planes.
    plane: usize,
    /// Per tap (ky, kx) in order: its phase plane's start plus `(ky / s) * wq + kx / s`.
    offsets: Vec<usize>,
    /// Flat outputs a task computes: its rows times `wq`, rounded up to whole runs.
    span: usize,
}

/// Forward pass into `y` (`p.out` shaped): the bias, then LeakyReLU of slope `leaky` when
/// given. Callers check [`applies`] first (or, in tests, [`available`]).
///
/// One parallel task per band of output rows: it copies the input rows the band reads, zero
/// padded and split into phases, into its window (every output block reads it there, from L2), runs each block of
/// [`OB`] output channels over it, and writes the block's rows of the output through the
/// epilogue while they are in L1: one pass over the input and one over the output.
pub(crate) fn forward<T: Real>(p: &ConvProblem<'_, T>, bias: Option<&[T]>, leaky: Option<T>, y: &mut [T]) {
    let (Some(x), Some(w), Some(y)) = (T::as_f32(p.x), T::as_f32(p.w), T::as_f32_mut(y)) else {
        unreachable!("applies() admits f32 only")
    };
    let bias = bias.and_then(T::as_f32);
    let leaky = leaky.map(Real::to_f32);
    let (conv, input, out) = (p.conv, p.input, p.out);
    let (kh, kw) = conv.kernel;
    let pad = conv.padding;
    let (cin, cout) = (input.c, out.c);
    let taps = kh * kw;
    let stride = conv.stride;
    let wq = (input.w + 2 * pad).div_ceil(stride);
    // Bands of about TASK_OUTPUTS outputs, but at least two per thread where the rows allow.
    let rows = (TASK_OUTPUTS / wq)
        .max(MIN_BAND_ROWS)
        .min(out.h.div_ceil(2 * rayon::current_num_threads()))
        .clamp(1, out.h);
    let span = (rows * wq).div_ceil(P) * P;
    let phase = span + (kh - 1) / stride * wq + (kw - 1) / stride;
    let layout = Layout {
        stride,
        wq,
        phase,
        plane: stride * stride * phase,
        offsets: (0..kh)
            .flat_map(|ky| {
                (0..kw).map(move |kx| ((ky % stride) * stride + kx % stride) * phase + ky / stride * wq + kx / stride)
            })
            .collect(),
        span,
    };
    let blocks = cout.div_ceil(OB);
    // Weights as [block][ci][tap][OB], zero past the last output channel; the bias likewise.
    let mut packed_scratch = p.pool.take(blocks * cin * taps * OB);
    let packed = T::as_f32_mut(&mut packed_scratch).unwrap_or_default();
    packed.fill(0.0);
    for co in 0..cout {
        for ci in 0..cin {
            for t in 0..taps {
                packed[((co / OB * cin + ci) * taps + t) * OB + co % OB] = w[(co * cin + ci) * taps + t];
            }
        }
    }
    let mut bias_scratch = p.pool.take(blocks * OB);
    let bias_packed = T::as_f32_mut(&mut bias_scratch).unwrap_or_default();
    bias_packed.fill(0.0);
    if let Some(b) = bias {
        bias_packed[..cout].copy_from_slice(b);
    }
    let (packed, bias_packed, layout) = (&*packed, &*bias_packed, &layout);
    let band = rows * out.w;
    for (image, y) in y.chunks_exact_mut(out.len() / out.n).enumerate() {
        let x = &x[image * input.len() / input.n..][..input.len() / input.n];
        // Each band's rows of every output plane: disjoint slices, one list per band.
        let mut bands: Vec<Vec<&mut [f32]>> = (0..out.h.div_ceil(rows)).map(|_| Vec::with_capacity(cout)).collect();
        for plane in y.chunks_exact_mut(out.plane()) {
            for (list, part) in bands.iter_mut().zip(plane.chunks_mut(band)) {
                list.push(part);
            }
        }
        bands.into_par_iter().enumerate().for_each(|(chunk, mut outs)| {
            let first_row = chunk * rows;
            let mut window_scratch = p.pool.take(cin * layout.plane);
            let window = T::as_f32_mut(&mut window_scratch).unwrap_or_default();
            fill_window(x, input.h, input.w, pad, first_row, layout, window);
            let window = &*window;
            let mut dst_scratch = p.pool.take(OB * span);
            let dst = T::as_f32_mut(&mut dst_scratch).unwrap_or_default();
            for (block, outs) in outs.chunks_mut(OB).enumerate() {
                let w = &packed[block * cin * taps * OB..][..cin * taps * OB];
                let b = &bias_packed[block * OB..][..OB];
                for c0 in (0..cin).step_by(CHANNEL_BLOCK) {
                    let channels = c0..cin.min(c0 + CHANNEL_BLOCK);
                    let add = c0 > 0;
                    // SAFETY: `applies` (or the test) found AVX-512F and FMA on this CPU.
                    unsafe {
                        match (taps, add) {
                            (9, false) => avx512::<9, false>(window, layout, channels, w, b, dst),
                            (9, true) => avx512::<9, true>(window, layout, channels, w, b, dst),
                            (_, false) => avx512::<0, false>(window, layout, channels, w, b, dst),
                            (_, true) => avx512::<0, true>(window, layout, channels, w, b, dst),
                        }
                    }
                }
                // The epilogue, while the block's rows are in L1.
                store_rows(dst, outs, layout, out.w, leaky);
            }
        });
    }
}

/// Writes one block's output rows `outs` (one slice of whole rows `width` wide per output
/// channel) from the task's flat runs `dst`, through the epilogue: output row `r` of channel
/// `o` is `dst`'s run at `o * span + r * wq`. A function of its arguments rather than a loop
/// in the task's closure: written in the closure (reading the geometry it captured), the same
/// loop compiled to code that ran up to ten times slower on the project's VM.
#[inline(always)]
fn store_rows(dst: &[f32], outs: &mut [&mut [f32]], layout: &Layout, width: usize, leaky: Option<f32>) {
    for (o, rows) in outs.iter_mut().enumerate() {
        for (r, row) in rows.chunks_exact_mut(width).enumerate() {
            for (d, &v) in row.iter_mut().zip(&dst[o * layout.span + r * layout.wq..]) {
                *d = epilogue(v, leaky);
            }
        }
    }
}

/// Copies the pixels of one image's `C x H x W` planes that output rows from `first_row` read
/// into `window` (`layout.plane` values per channel): phase plane (a, b)'s row `i` holds
/// padded row `s * (first_row + i) + a`'s columns `b, b + s, ...`; the padding and whatever
/// lies past the image zero.
fn fill_window(x: &[f32], h: usize, w: usize, pad: usize, first_row: usize, layout: &Layout, window: &mut [f32]) {
    let (s, wq) = (layout.stride, layout.wq);
    // One padded input row (stride > 1 only): the phases' rows are its columns b, b + s, ...
    let mut padded = vec![0.0f32; if s > 1 { wq * s } else { 0 }];
    let rows = layout.phase / wq;
    for (dst, src) in window.chunks_exact_mut(layout.plane).zip(x.chunks_exact(h * w)) {
        for i in 0..rows {
            for a in 0..s {
                // Padded row `s * (first_row + i) + a` is input row that minus `pad`, if any.
                let iy = (s * (first_row + i) + a).checked_sub(pad).filter(|&iy| iy < h);
                if s == 1 {
                    let row = &mut dst[i * wq..][..wq];
                    match iy {
                        Some(iy) => pad_row(row, &src[iy * w..][..w], pad),
                        None => row.fill(0.0),
                    }
                    continue;
                }
                match iy {
                    Some(iy) => pad_row(&mut padded, &src[iy * w..][..w], pad),
                    None => padded.fill(0.0),
                }
                for b in 0..s {
                    let row = &mut dst[(a * s + b) * layout.phase + i * wq..][..wq];
                    decimate(row, &padded[b..], s);
                }
            }
        }
        // The partial row at each phase's end: read only by the dropped columns.
        for phase in dst.chunks_exact_mut(layout.phase) {
            phase[rows * wq..].fill(0.0);
        }
    }
}

/// `row` = `pad` zeros, `src`, then zeros to its end.
#[inline(always)]
fn pad_row(row: &mut [f32], src: &[f32], pad: usize) {
    row[..pad].fill(0.0);
    row[pad..pad + src.len()].copy_from_slice(src);
    row[pad + src.len()..].fill(0.0);
}

/// One task's pass over input channels `channels` of its window `padded`: the runs of [`P`]
/// flat outputs for one block of [`OB`] output channels, into `dst` ([`OB`] rows of `layout.span`), from the
/// bias (or, with `ADD`, from what `dst` holds). `TAPS` > 0 is the number of taps, known to the
/// compiler so that it unrolls their loop; 0 reads it from `layout`.
#[target_feature(enable = "avx512f,fma")]
fn avx512<const TAPS: usize, const ADD: bool>(
    padded: &[f32],
    layout: &Layout,
    channels: std::ops::Range<usize>,
    w: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps};
    let (taps, span) = (layout.offsets.len(), layout.span);
    // A known number of taps (TAPS > 0) unrolls their loop.
    let offsets = if TAPS > 0 {
        &layout.offsets[..TAPS]
    } else {
        &layout.offsets[..]
    };
    for q in (0..span).step_by(P) {
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; OB];
        for (o, a) in acc.iter_mut().enumerate() {
            let d = &dst[o * span + q..][..P];
            for (i, a) in a.iter_mut().enumerate() {
                *a = if ADD {
                    // SAFETY: `d` holds P values; this load reads 16 of them.
                    unsafe { _mm512_loadu_ps(d.as_ptr().add(16 * i)) }
                } else {
                    _mm512_set1_ps(bias[o])
                };
            }
        }
        for ci in channels.clone() {
            let base = ci * layout.plane + q;
            let wc = &w[ci * taps * OB..][..taps * OB];
            for (&off, wt) in offsets.iter().zip(wc.chunks_exact(OB)) {
                let run = &padded[base + off..base + off + P];
                let mut v = [_mm512_setzero_ps(); VECTORS];
                for (i, v) in v.iter_mut().enumerate() {
                    // SAFETY: `run` holds P values; this load reads 16 of them.
                    *v = unsafe { _mm512_loadu_ps(run.as_ptr().add(16 * i)) };
                }
                for (a, &wo) in acc.iter_mut().zip(<&[f32; OB]>::try_from(wt).expect("OB weights")) {
                    let wo = _mm512_set1_ps(wo);
                    for (a, &v) in a.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(wo, v, *a);
                    }
                }
            }
        }
        for (o, a) in acc.iter().enumerate() {
            let d = &mut dst[o * span + q..][..P];
            for (i, &a) in a.iter().enumerate() {
                // SAFETY: `d` holds P values; this store writes 16 of them.
                unsafe { _mm512_storeu_ps(d.as_mut_ptr().add(16 * i), a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Conv2d, Shape};

    /// Shapes that reach a partial output-channel block and eight full ones, rows split over
    /// several bands (and a last band of fewer rows), two images, 3 x 3 and 5 x 5 kernels, more input channels than
    /// one pass takes (partial sums carried between passes), no padding, and the narrowest
    /// width the path takes. Only where the CPU has AVX-512 (elsewhere the kernel never runs).
    #[test]
    fn matches_the_definition() {
        if !available() {
            return;
        }
        let cases = [
            (Conv2d::new(5, 11, 3, 1), Shape::new(2, 5, 9, 70)),
            (Conv2d::new(3, 8, 5, 1), Shape::new(1, 3, 7, 12)),
            (Conv2d::new(4, 33, 3, 1), Shape::new(1, 4, 41, 20)),
            (Conv2d::new(6, 64, 3, 1), Shape::new(1, 6, 9, 16)),
            (Conv2d::new(3, 8, 3, 2), Shape::new(1, 3, 17, 30)),
            (Conv2d::new(2, 9, 5, 2), Shape::new(2, 2, 11, 19)),
            (Conv2d::new(40, 9, 3, 1), Shape::new(1, 40, 6, 20)),
            (Conv2d::new(70, 3, 5, 1), Shape::new(1, 70, 6, 9)),
            (
                Conv2d {
                    padding: 0,
                    ..Conv2d::new(2, 3, 3, 1)
                },
                Shape::new(1, 2, 5, 10),
            ),
        ];
        check(&cases);
    }

    /// Shapes small enough for Miri (`cargo +nightly miri test --lib cpu::direct::tests::tiny`,
    /// with AVX-512 enabled for Miri's CPU): one run, a 5 x 5 kernel (taps not unrolled), more
    /// input channels than one pass takes, and stride 2.
    #[test]
    fn tiny_shapes_match_the_definition() {
        if !available() {
            return;
        }
        check(&[
            (Conv2d::new(2, 9, 3, 1), Shape::new(1, 2, 2, 8)),
            (Conv2d::new(1, 3, 5, 1), Shape::new(1, 1, 1, 8)),
            (Conv2d::new(33, 1, 3, 1), Shape::new(1, 33, 1, 8)),
            (Conv2d::new(1, 2, 3, 2), Shape::new(1, 1, 3, 17)),
        ]);
    }

    /// The direct path's output against the definition on each case.
    fn check(cases: &[(Conv2d, Shape)]) {
        crate::cpu::conv::tests::check_forward(forward::<f32>, cases);
    }

    /// Whether the direct path takes convolution `c` on input `s` in precision `T`.
    fn takes<T: Real>(c: Conv2d, s: Shape, per_image: bool) -> bool {
        crate::cpu::conv::tests::takes(applies::<T>, c, s, per_image)
    }

    /// The layers the path takes: RetinaFace's SSH convolutions, 64-channel FPN merges and
    /// stride-2 stem, not wider layers, stride 3 or 1 x 1 layers, f64, or batches the GEMM path
    /// runs image by image.
    #[test]
    fn takes_the_small_layers() {
        let case = takes::<f32>;
        let ssh = Shape::new(1, 64, 60, 80);
        assert_eq!(case(Conv2d::new(64, 32, 3, 1), ssh, false), available());
        assert_eq!(case(Conv2d::new(64, 16, 3, 1), ssh, false), available());
        assert_eq!(case(Conv2d::new(64, 64, 3, 1), ssh, false), available());
        assert!(!case(Conv2d::new(64, 65, 3, 1), ssh, false));
        assert_eq!(
            case(Conv2d::new(3, 8, 3, 2), Shape::new(1, 3, 480, 640), false),
            available()
        );
        assert!(!case(Conv2d::new(64, 32, 3, 3), ssh, false));
        assert!(!case(Conv2d::new(64, 32, 1, 1), ssh, false));
        assert!(!case(Conv2d::new(64, 32, 3, 1), Shape::new(1, 64, 7, 7), false));
        assert_eq!(case(Conv2d::new(64, 32, 3, 1), ssh, true), available());
        assert!(!case(Conv2d::new(64, 32, 3, 1), Shape::new(8, 64, 60, 80), true));
        assert!(!takes::<f64>(Conv2d::new(64, 32, 3, 1), ssh, false));
    }
}
