//! Depthwise convolution on the CPU (one filter per channel, MobileNet's): the twin of
//! `shaders/depthwise_conv.wgsl`. Direct loops, parallel over the (image, channel) planes for
//! the forward pass and the input gradient and over channels for the weight gradient; callers
//! ([`crate::nn::CpuEngine`]) have checked the shapes.

use rayon::prelude::*;

use crate::cpu::conv::{Real, decimate, epilogue};
use crate::nn::{Conv2d, Shape};

/// Input row (or column) that output position `o` reads at tap `k`, or `None` in the padding.
#[inline(always)]
fn source(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// The geometry of one depthwise forward pass, shared by its planes. Each plane is first
/// copied into a zero-padded plane of `rows x (width + 2 * pad)` split into its `stride`
/// column phases of `phase_len` values each (phase `p` holds padded columns `j * stride + p`),
/// so that every tap of every output reads a contiguous run without a bounds test: padded
/// column `ox * stride + kx` is column `ox + kx / stride` of phase `kx % stride`.
struct Geometry {
    stride: usize,
    pad: usize,
    in_h: usize,
    in_w: usize,
    out_w: usize,
    /// Per tap (ky, kx) in order: where its run starts in the padded plane for output (0, 0).
    offsets: Vec<usize>,
    /// Padded rows: `in_h + 2 * pad`.
    rows: usize,
    /// Values per row of one phase: `ceil((in_w + 2 * pad) / stride)`.
    phase_len: usize,
    /// The largest of `offsets` (read by the AVX-512 runs only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    reach: usize,
}

impl Geometry {
    /// The geometry of convolution `c` from `input` to `out` (one plane of each).
    fn new(c: &Conv2d, input: Shape, out: Shape) -> Self {
        let (kh, kw) = c.kernel;
        let (stride, pad) = (c.stride, c.padding);
        let (rows, phase_len) = (input.h + 2 * pad, (input.w + 2 * pad).div_ceil(stride));
        let offsets: Vec<usize> = (0..kh)
            .flat_map(|ky| (0..kw).map(move |kx| ((kx % stride) * rows + ky) * phase_len + kx / stride))
            .collect();
        Self {
            reach: offsets.iter().copied().max().unwrap_or(0),
            stride,
            pad,
            in_h: input.h,
            in_w: input.w,
            out_w: out.w,
            offsets,
            rows,
            phase_len,
        }
    }

    /// Where phase `p`'s rows take their input: padded columns `j * s + p` from `j0` on hold
    /// input column `j * s + p - pad`, the first of them `first`; returns `(j0, first)`.
    fn phase_start(&self, p: usize) -> (usize, usize) {
        let j0 = self.pad.saturating_sub(p).div_ceil(self.stride);
        (j0, (j0 * self.stride + p).saturating_sub(self.pad).min(self.in_w))
    }

    /// Values of one padded, phase-split plane.
    fn scratch_len(&self) -> usize {
        self.stride * self.rows * self.phase_len
    }

    /// Copies the input plane `src` into `padded` (`scratch_len` values), zero-padded and
    /// split into its column phases. Only the padding is zeroed: every other value is written.
    /// (Inlined into the AVX2 copy of the plane's pass.)
    #[inline(always)]
    fn pad<T: Real>(&self, src: &[T], padded: &mut [T]) {
        let (s, pad, plen, rows) = (self.stride, self.pad, self.phase_len, self.rows);
        for phase in padded.chunks_exact_mut(rows * plen) {
            phase[..pad * plen].fill(T::ZERO);
            phase[(pad + self.in_h) * plen..].fill(T::ZERO);
        }
        for (iy, in_row) in src.chunks_exact(self.in_w).enumerate() {
            for p in 0..s {
                let (j0, first) = self.phase_start(p);
                let row = &mut padded[(p * rows + iy + pad) * plen..][..plen];
                let count = (self.in_w - first).div_ceil(s);
                let (head, rest) = row.split_at_mut(j0.min(plen));
                head.fill(T::ZERO);
                let (dst, tail) = rest.split_at_mut(count);
                tail.fill(T::ZERO);
                let src = &in_row[first..];
                if s == 1 {
                    dst.copy_from_slice(src);
                } else {
                    decimate(dst, src, s);
                }
            }
        }
    }
}

/// `y = depthwise(x) + bias`, `y` of shape `out`: per plane (see [`Geometry`]) and output
/// row, runs of up to 32 outputs accumulated in registers over every tap, each output the bias
/// plus its taps in (ky, kx) order, the padding's taps included as zeros (as PyTorch and ONNX
/// compute them). With `leaky`, LeakyReLU of that slope follows before the store. In f32 with
/// AVX-512 registers where the CPU has AVX-512F, else compiled for AVX2 where it has that
/// (plain multiply and add, no FMA, in the same order: the same results on every CPU).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Real>(
    c: &Conv2d,
    x: &[T],
    input: Shape,
    w: &[T],
    bias: Option<&[T]>,
    leaky: Option<T>,
    out: Shape,
    y: &mut [T],
) {
    let (kh, kw) = c.kernel;
    let g = Geometry::new(c, input, out);
    y.par_chunks_mut(out.plane()).enumerate().for_each_init(
        || vec![T::ZERO; g.scratch_len()],
        |padded, (plane, dst)| {
            let ch = plane % out.c;
            let src = &x[plane * input.plane()..(plane + 1) * input.plane()];
            let taps = &w[ch * kh * kw..(ch + 1) * kh * kw];
            let b = bias.map_or(T::ZERO, |b| b[ch]);
            forward_plane(&g, src, padded, taps, b, leaky, dst);
        },
    );
}

/// One plane of [`forward`]: [`avx512`] or the AVX2 copy of [`plane_body`] where the CPU has
/// them.
fn forward_plane<T: Real>(
    g: &Geometry,
    src: &[T],
    padded: &mut [T],
    taps: &[T],
    bias: T,
    leaky: Option<T>,
    dst: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<T: Real>(
            g: &Geometry,
            src: &[T],
            padded: &mut [T],
            taps: &[T],
            bias: T,
            leaky: Option<T>,
            dst: &mut [T],
        ) {
            plane_body(g, src, padded, taps, bias, leaky, dst);
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && let (Some(src), Some(padded), Some(taps), Some(dst)) = (
                T::as_f32(src),
                T::as_f32_mut(padded),
                T::as_f32(taps),
                T::as_f32_mut(dst),
            )
        {
            // SAFETY: AVX-512F was detected on this CPU.
            return unsafe { avx512(g, src, padded, taps, bias.to_f32(), leaky.map(Real::to_f32), dst) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU; the body is safe Rust.
            return unsafe { avx2(g, src, padded, taps, bias, leaky, dst) };
        }
    }
    plane_body(g, src, padded, taps, bias, leaky, dst);
}

/// [`plane_body`] in f32 with AVX-512 registers: runs of 64, 32 and 16 outputs in 4, 2 and 1
/// zmm accumulators, the last run of a row ending at its end (overlapping the one before when
/// the width is not a multiple of 16: the same values are written twice); rows narrower than 16
/// take [`plane_body`]'s runs of 8 and single outputs. The same multiplies and adds in the same
/// order as [`plane_body`] (no FMA), so the same results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512(g: &Geometry, src: &[f32], padded: &mut [f32], taps: &[f32], bias: f32, leaky: Option<f32>, dst: &mut [f32]) {
    let width = g.out_w;
    if width < 16 {
        return plane_body(g, src, padded, taps, bias, leaky, dst);
    }
    pad_avx512(g, src, padded);
    let padded = &*padded;
    for (oy, row) in dst.chunks_exact_mut(width).enumerate() {
        let mut ox = 0;
        while width - ox >= 64 {
            avx512_run::<4, 0>(g, padded, taps, bias, leaky, oy, ox, row);
            ox += 64;
        }
        if width - ox >= 32 {
            avx512_run::<2, 0>(g, padded, taps, bias, leaky, oy, ox, row);
            ox += 32;
        }
        if width - ox >= 16 {
            avx512_run::<1, 0>(g, padded, taps, bias, leaky, oy, ox, row);
            ox += 16;
        }
        if ox < width {
            avx512_run::<1, 0>(g, padded, taps, bias, leaky, oy, width - 16, row);
        }
    }
}

/// [`Geometry::pad`] with AVX-512 registers for phase rows of at least 16 values and padding
/// of at most 16 columns a side: each phase row is two stores of zeros (its first and last 16
/// values, which cover its padding), then its input columns: at stride 1 the input row in runs
/// of 16, the last ending at the row's end; at stride 2 and above [`decimate`]. The same values
/// as [`Geometry::pad`], whose per-row library calls (two fills and a copy) took a plane of
/// 30 x 40 about as long as its taps. Other geometries take [`Geometry::pad`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn pad_avx512(g: &Geometry, src: &[f32], padded: &mut [f32]) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps};
    let (s, w, pad, plen, rows) = (g.stride, g.in_w, g.pad, g.phase_len, g.rows);
    if plen < 16 || pad > 16 || w < 16 {
        return g.pad(src, padded);
    }
    for phase in padded.chunks_exact_mut(rows * plen) {
        phase[..pad * plen].fill(0.0);
        phase[(pad + g.in_h) * plen..].fill(0.0);
    }
    for (iy, in_row) in src.chunks_exact(w).enumerate() {
        for p in 0..s {
            let row = &mut padded[(p * rows + iy + pad) * plen..][..plen];
            // SAFETY: `row` holds plen >= 16 values; each store writes 16 of them.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), _mm512_setzero_ps());
                _mm512_storeu_ps(row.as_mut_ptr().add(plen - 16), _mm512_setzero_ps());
            }
            // At most ceil(pad / s) <= 16 leading zeros and ceil((pad + s - 1) / s) <= 16
            // trailing ones, which the two stores above cover.
            let (j0, first) = g.phase_start(p);
            let dst = &mut row[j0..];
            if s > 1 {
                decimate(dst, &in_row[first..], s);
                continue;
            }
            let mut at = 0;
            while at < w {
                // The last run ends at the row's end (overlapping the one before: same values).
                let from = at.min(w - 16);
                // SAFETY: `from + 16 <= w` (stride 1: `first` = 0 and `dst` holds w + pad
                // values): the load reads 16 values of `in_row`, the store writes 16 of `dst`.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(from), _mm512_loadu_ps(in_row.as_ptr().add(from))) };
                at = from + 16;
            }
        }
    }
}

/// Outputs `ox..ox + 16 * V` of output row `oy` in `V` zmm accumulators. `TAPS` > 0 is the
/// number of taps, known to the compiler so that it unrolls their loop; with 0 the count is
/// read from `g`, and a 3 x 3 kernel's run goes on as `TAPS` = 9.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn avx512_run<const V: usize, const TAPS: usize>(
    g: &Geometry,
    padded: &[f32],
    taps: &[f32],
    bias: f32,
    leaky: Option<f32>,
    oy: usize,
    ox: usize,
    row: &mut [f32],
) {
    use std::arch::x86_64::{_mm512_add_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps};
    if TAPS == 0 && g.offsets.len() == 9 {
        return avx512_run::<V, 9>(g, padded, taps, bias, leaky, oy, ox, row);
    }
    let (offsets, taps) = if TAPS > 0 {
        (&g.offsets[..TAPS], &taps[..TAPS])
    } else {
        (&g.offsets[..], taps)
    };
    let first = oy * g.stride * g.phase_len + ox;
    // Every tap's run, checked once: a tap's run starts at most `g.reach` past `first`.
    let window = &padded[first..first + g.reach + 16 * V];
    let mut acc = [_mm512_set1_ps(bias); V];
    for (&offset, &wv) in offsets.iter().zip(taps) {
        debug_assert!(offset + 16 * V <= window.len());
        // SAFETY: `offset` <= `g.reach`, so `window` holds the run's 16 * V values from here.
        let run = unsafe { window.as_ptr().add(offset) };
        let wv = _mm512_set1_ps(wv);
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above; this load reads 16 of the run's values.
            let v = unsafe { _mm512_loadu_ps(run.add(16 * i)) };
            *a = _mm512_add_ps(*a, _mm512_mul_ps(wv, v));
        }
    }
    crate::cpu::conv::store_epilogue_avx512(&mut row[ox..ox + 16 * V], &acc, leaky);
}

#[inline(always)]
fn plane_body<T: Real>(
    g: &Geometry,
    src: &[T],
    padded: &mut [T],
    taps: &[T],
    bias: T,
    leaky: Option<T>,
    dst: &mut [T],
) {
    g.pad(src, padded);
    let padded = &*padded;
    let width = g.out_w;
    for (oy, row) in dst.chunks_exact_mut(width).enumerate() {
        if width < LANES {
            output_row_narrow(g, padded, taps, bias, leaky, oy, row);
            continue;
        }
        // Runs of 32, then at most one of 16 and one of 8, then, where fewer than 8 columns
        // are left, one of 8 ending at the row's end (overlapping the one before: the same
        // values are written twice). A run of 32 repeated over the last columns would recompute
        // up to 24 of them (24 of 40 on a 40-wide plane).
        let mut ox = 0;
        while width - ox >= 4 * LANES {
            output_run::<T, 4>(g, padded, taps, bias, leaky, oy, ox, row);
            ox += 4 * LANES;
        }
        if width - ox >= 2 * LANES {
            output_run::<T, 2>(g, padded, taps, bias, leaky, oy, ox, row);
            ox += 2 * LANES;
        }
        if width - ox >= LANES {
            output_run::<T, 1>(g, padded, taps, bias, leaky, oy, ox, row);
            ox += LANES;
        }
        if ox < width {
            output_run::<T, 1>(g, padded, taps, bias, leaky, oy, width - LANES, row);
        }
    }
}

/// Lanes of one accumulator group (one AVX register of f32).
const LANES: usize = 8;

/// Outputs `ox..ox + G * LANES` of output row `oy` (`G` >= 1, within the row), accumulated in
/// `G` groups of [`LANES`] (registers).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_run<T: Real, const G: usize>(
    g: &Geometry,
    padded: &[T],
    taps: &[T],
    bias: T,
    leaky: Option<T>,
    oy: usize,
    ox: usize,
    row: &mut [T],
) {
    let n = G * LANES;
    let first = oy * g.stride * g.phase_len;
    let mut acc = [[bias; LANES]; G];
    for (&offset, &wv) in g.offsets.iter().zip(taps) {
        let at = first + ox + offset;
        for (group, run) in acc.iter_mut().zip(padded[at..at + n].chunks_exact(LANES)) {
            for j in 0..LANES {
                group[j] += wv * run[j];
            }
        }
    }
    for (out, group) in row[ox..ox + n].chunks_exact_mut(LANES).zip(&acc) {
        for j in 0..LANES {
            out[j] = epilogue(group[j], leaky);
        }
    }
}

/// Output row `oy` of fewer than [`LANES`] columns, one output at a time.
#[inline(always)]
fn output_row_narrow<T: Real>(
    g: &Geometry,
    padded: &[T],
    taps: &[T],
    bias: T,
    leaky: Option<T>,
    oy: usize,
    row: &mut [T],
) {
    let first = oy * g.stride * g.phase_len;
    for (ox, out) in row.iter_mut().enumerate() {
        let mut acc = bias;
        for (&offset, &wv) in g.offsets.iter().zip(taps) {
            acc += wv * padded[first + ox + offset];
        }
        *out = epilogue(acc, leaky);
    }
}

/// Gradients with respect to the weights (`dw`, `[C, 1, kh, kw]`), the bias (`db`) and, when
/// given, the input (`dx`), from the output gradient `g` of shape `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Real>(
    c: &Conv2d,
    x: &[T],
    input: Shape,
    w: &[T],
    g: &[T],
    out: Shape,
    dw: &mut [T],
    db: &mut [T],
    dx: Option<&mut [T]>,
) {
    let (kh, kw) = c.kernel;
    let taps = kh * kw;
    dw.par_chunks_mut(taps)
        .zip(db.par_iter_mut())
        .enumerate()
        .for_each(|(ch, (dw, db))| {
            dw.fill(T::ZERO);
            *db = T::ZERO;
            for n in 0..out.n {
                let plane = n * out.c + ch;
                let src = &x[plane * input.plane()..(plane + 1) * input.plane()];
                let grad = &g[plane * out.plane()..(plane + 1) * out.plane()];
                for oy in 0..out.h {
                    for ox in 0..out.w {
                        let go = grad[oy * out.w + ox];
                        *db += go;
                        for ky in 0..kh {
                            let Some(iy) = source(oy, ky, c.stride, c.padding, input.h) else {
                                continue;
                            };
                            for kx in 0..kw {
                                if let Some(ix) = source(ox, kx, c.stride, c.padding, input.w) {
                                    dw[ky * kw + kx] += go * src[iy * input.w + ix];
                                }
                            }
                        }
                    }
                }
            }
        });
    if let Some(dx) = dx {
        dx.par_chunks_mut(input.plane()).enumerate().for_each(|(plane, dst)| {
            let ch = plane % out.c;
            let grad = &g[plane * out.plane()..(plane + 1) * out.plane()];
            let filter = &w[ch * taps..(ch + 1) * taps];
            dst.fill(T::ZERO);
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let go = grad[oy * out.w + ox];
                    for ky in 0..kh {
                        let Some(iy) = source(oy, ky, c.stride, c.padding, input.h) else {
                            continue;
                        };
                        for kx in 0..kw {
                            if let Some(ix) = source(ox, kx, c.stride, c.padding, input.w) {
                                dst[iy * input.w + ix] += go * filter[ky * kw + kx];
                            }
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output `(plane, oy, ox)` of a depthwise convolution by its definition, in f64.
    fn direct(c: &Conv2d, x: &[f32], s: Shape, w: &[f32], b: &[f32], leaky: Option<f32>) -> Vec<f64> {
        let out = c.output_shape(s).unwrap();
        let (kh, kw) = c.kernel;
        let mut y = Vec::with_capacity(out.len());
        for plane in 0..s.n * s.c {
            let ch = plane % s.c;
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let mut v = f64::from(b[ch]);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * c.stride + ky) as isize - c.padding as isize;
                            let ix = (ox * c.stride + kx) as isize - c.padding as isize;
                            if (0..s.h as isize).contains(&iy) && (0..s.w as isize).contains(&ix) {
                                let i = (plane * s.h + iy as usize) * s.w + ix as usize;
                                v += f64::from(w[(ch * kh + ky) * kw + kx]) * f64::from(x[i]);
                            }
                        }
                    }
                    y.push(match leaky {
                        Some(slope) if v <= 0.0 => v * f64::from(slope),
                        _ => v,
                    });
                }
            }
        }
        y
    }

    /// Planes small enough for Miri (`cargo +nightly miri test --lib cpu::depthwise::tests::tiny`)
    /// that reach every run width (32, 16, 8, 1 columns; 59 = 32 + 16 + 8 and an overlapping 8;
    /// with AVX-512, 64, 32, 16 and an overlapping 16, on rows of 70 and 59),
    /// both strides' copies into the padded
    /// phases (an odd width at stride 2) and the AVX-512 or AVX2 copy where the CPU has it.
    #[test]
    fn tiny_planes_match_the_definition() {
        let cases = [
            (Conv2d::depthwise(2, 3, 1), Shape::new(1, 2, 3, 33)),
            (Conv2d::depthwise(2, 3, 2), Shape::new(1, 2, 5, 35)),
            (Conv2d::depthwise(1, 3, 1), Shape::new(2, 1, 2, 17)),
            (Conv2d::depthwise(1, 3, 1), Shape::new(1, 1, 2, 59)),
            (Conv2d::depthwise(1, 3, 1), Shape::new(1, 1, 2, 70)),
            (Conv2d::depthwise(1, 3, 2), Shape::new(1, 1, 3, 19)),
            (Conv2d::depthwise(3, 3, 1), Shape::new(1, 3, 2, 3)),
            (
                Conv2d {
                    padding: 0,
                    ..Conv2d::depthwise(1, 3, 1)
                },
                Shape::new(1, 1, 4, 12),
            ),
        ];
        for (c, s) in cases {
            let x: Vec<f32> = (0..s.len()).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25).collect();
            let w: Vec<f32> = (0..s.c * 9).map(|i| ((i * 5 % 9) as f32 - 4.0) * 0.125).collect();
            let b: Vec<f32> = (0..s.c).map(|i| i as f32 * 0.5 - 0.25).collect();
            let out = c.output_shape(s).unwrap();
            // A slope in (0, 1] runs in registers with AVX-512; 0 and 1.5 after the store.
            for leaky in [None, Some(0.1f32), Some(0.0), Some(1.5)] {
                let mut y = vec![f32::NAN; out.len()];
                forward(&c, &x, s, &w, Some(&b), leaky, out, &mut y);
                let want = direct(&c, &x, s, &w, &b, leaky);
                for (i, (&g, &r)) in y.iter().zip(&want).enumerate() {
                    assert!((f64::from(g) - r).abs() < 1e-5, "{c:?} {s} {leaky:?} [{i}]: {g} != {r}");
                }
                // The vector entries (AVX-512, AVX2) give the portable body's bits.
                let geometry = Geometry::new(&c, s, out);
                let mut padded = vec![0f32; geometry.scratch_len()];
                for (plane, (dst, src)) in y.chunks_exact(out.plane()).zip(x.chunks_exact(s.plane())).enumerate() {
                    let ch = plane % s.c;
                    let mut portable = vec![f32::NAN; out.plane()];
                    let taps = &w[ch * 9..(ch + 1) * 9];
                    plane_body(&geometry, src, &mut padded, taps, b[ch], leaky, &mut portable);
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(dst), bits(&portable), "{c:?} {s} {leaky:?} plane {plane}");
                }
            }
        }
    }
}
