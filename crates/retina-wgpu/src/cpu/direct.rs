//! Direct convolution on the CPU, for f32 on x86-64 with AVX2 and FMA (the module is x86-64
//! only): the forward pass of a (non-grouped) convolution with a kernel larger than 1x1, without
//! im2col and without the GEMM's packing of it. Each input plane is copied once into a
//! zero-padded, column-phase-split plane (the depthwise convolution's [`Geometry`]), so that
//! every tap of a run of output columns reads a contiguous run of a padded row. Per output row,
//! input channels are taken in chunks of [`CI_CHUNK`] (their rows stay in the first-level
//! cache); a register block of up to [`NR`] output channels x [`RUN`] columns adds a chunk's
//! taps with FMAs (weights broadcast from a copy laid out in the order they are read) to the
//! row's partial sums, which start from the bias; the finished row goes to the output through
//! LeakyReLU when given. Threads take groups of output channels.
//!
//! Where it does not apply (f64, another CPU, fewer than [`MIN_WIDTH`] output columns, an odd
//! channel count, a 1x1 kernel) the convolution takes the im2col + GEMM path in
//! [`crate::cpu::conv`]. Each output is the bias plus the products in (input channel, ky, kx)
//! order, fused-multiply-added: the same value on every thread count.

use rayon::prelude::*;

use crate::cpu::conv::{ConvProblem, Real};
use crate::cpu::depthwise::Geometry;
use crate::nn::{Conv2d, Shape};

/// Output channels of the widest register block (6 x 16 columns: 12 accumulators, two loads
/// and a broadcast fill the 16 AVX registers); the last block of a layer may take 4 or 2.
const NR: usize = 6;
/// Input channels per pass over an output row (see [`forward`]).
const CI_CHUNK: usize = 16;
/// f32 lanes of one AVX register.
const LANES: usize = 8;
/// Output columns of a register block: two registers.
const RUN: usize = 2 * LANES;

/// Output columns below which the im2col + GEMM path is faster (measured on RetinaFace's 3x3
/// layers on a 2-core Zen 4: 1.2-1.3x faster at 80 and 320 columns, 0.6-0.9x at 40 and 20,
/// where the runs of 16 past the row's end are a large part of the work).
const MIN_WIDTH: usize = 64;

/// Whether [`forward`] computes convolution `c` to `out` on this CPU.
fn applies(c: &Conv2d, out: Shape) -> bool {
    c.kernel.0 * c.kernel.1 > 1
        && c.out_channels.is_multiple_of(2)
        && c.in_channels > 0
        && out.w >= MIN_WIDTH
        && has_avx2_fma()
}

fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// The forward pass of `p` into `y` with the bias and LeakyReLU of slope `leaky` when given,
/// when the direct convolution applies (see the module's documentation); returns whether it
/// did (`y` is untouched otherwise).
pub(crate) fn forward<T: Real>(p: &ConvProblem<'_, T>, bias: Option<&[T]>, leaky: Option<T>, y: &mut [T]) -> bool {
    let (c, input, out) = (p.conv, p.input, p.out);
    if !applies(c, out) {
        return false;
    }
    let (Some(x), Some(w), Some(y)) = (T::as_f32(p.x), T::as_f32(p.w), T::as_f32_mut(y)) else {
        return false;
    };
    let bias = match bias.map(T::as_f32) {
        Some(None) => return false,
        Some(Some(b)) => Some(b),
        None => None,
    };
    let g = Geometry::new(c, input, out);
    let taps = g.offsets.len();
    let (cin, cout) = (c.in_channels, c.out_channels);
    let plane_len = g.scratch_len();
    // Rows are computed in whole runs of RUN columns, up to `wide`: the runs past the row's end
    // read up to `wide` values past the last padded plane (zeros) and are not stored.
    let wide = out.w.div_ceil(RUN) * RUN;
    let mut padded_scratch = p.pool.take(cin * plane_len + wide + RUN);
    let mut packed_scratch = p.pool.take(cout * cin * taps);
    let (Some(padded), Some(packed)) = (T::as_f32_mut(&mut padded_scratch), T::as_f32_mut(&mut packed_scratch)) else {
        return false;
    };
    padded[cin * plane_len..].fill(0.0);
    // Blocks of output channels: of NR, the last of 4 or 2 (or 4 + 2).
    let mut spans = Vec::new();
    let mut co = 0;
    while co < cout {
        let nr = [NR, 4, 2]
            .into_iter()
            .find(|&nr| co + nr <= cout)
            .expect("an even channel count");
        spans.push((co, nr));
        co += nr;
    }
    // Weights in the order the blocks read them: per block [ci][tap][nr].
    for &(co, nr) in &spans {
        let block = &mut packed[co * cin * taps..][..nr * cin * taps];
        for ci in 0..cin {
            for t in 0..taps {
                for j in 0..nr {
                    block[(ci * taps + t) * nr + j] = w[((co + j) * cin + ci) * taps + t];
                }
            }
        }
    }
    let packed = &*packed;
    // Groups of blocks, one per thread.
    let per_group = spans.len().div_ceil(rayon::current_num_threads().clamp(1, spans.len()));
    let groups: Vec<&[(usize, usize)]> = spans.chunks(per_group).collect();
    let mut outputs = Vec::with_capacity(groups.len());
    for (xb, yb) in x
        .chunks_exact(input.len() / input.n)
        .zip(y.chunks_exact_mut(out.len() / out.n))
    {
        padded[..cin * plane_len]
            .par_chunks_exact_mut(plane_len)
            .zip(xb.par_chunks_exact(input.plane()))
            .for_each(|(dst, src)| {
                // SAFETY: `applies` checked that the CPU has AVX2.
                unsafe { pad_avx2(&g, src, dst) }
            });
        let padded = &*padded;
        let mut rest = &mut *yb;
        outputs.clear();
        for group in &groups {
            let channels: usize = group.iter().map(|&(_, nr)| nr).sum();
            let (head, tail) = rest.split_at_mut(channels * out.plane());
            outputs.push(head);
            rest = tail;
        }
        groups.par_iter().zip(outputs.par_iter_mut()).for_each(|(group, ys)| {
            let blocks: Vec<Block<'_>> = group
                .iter()
                .map(|&(co, nr)| Block {
                    g: &g,
                    padded,
                    plane_len,
                    weights: &packed[co * cin * taps..][..nr * cin * taps],
                    bias: std::array::from_fn(|j| bias.map_or(0.0, |v| if j < nr { v[co + j] } else { 0.0 })),
                    nr,
                })
                .collect();
            // Per output row, input channels in chunks of [`CI_CHUNK`] (their padded rows stay
            // in the first-level cache), each block's weights of the chunk read over every run
            // of columns: partial sums go through `rows` (one row per output channel, in cache
            // too), which takes the bias and the activation on its way to the output.
            let mut rows = vec![0.0f32; ys.len() / out.plane() * wide];
            for oy in 0..out.h {
                for c0 in (0..cin).step_by(CI_CHUNK) {
                    let chunk = c0..(c0 + CI_CHUNK).min(cin);
                    let mut rest = &mut rows[..];
                    for block in &blocks {
                        let (block_rows, tail) = rest.split_at_mut(block.nr * wide);
                        rest = tail;
                        for ox in (0..wide).step_by(RUN) {
                            let at = Cursor {
                                oy,
                                ox,
                                channels: chunk.clone(),
                            };
                            match block.nr {
                                6 => block.run::<6>(block_rows, wide, &at),
                                4 => block.run::<4>(block_rows, wide, &at),
                                _ => block.run::<2>(block_rows, wide, &at),
                            }
                        }
                    }
                }
                let slope = leaky.map(Real::to_f32);
                for (plane, row) in ys.chunks_exact_mut(out.plane()).zip(rows.chunks_exact(wide)) {
                    let dst = &mut plane[oy * out.w..(oy + 1) * out.w];
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = match slope {
                            Some(_) if v > 0.0 => v,
                            Some(slope) => v * slope,
                            None => v,
                        };
                    }
                }
            }
        });
    }
    true
}

/// Where a block's run computes: output row `oy`, columns `ox..ox + RUN`, the partial sum over
/// input channels `channels` (from the bias when they start at 0).
struct Cursor {
    oy: usize,
    ox: usize,
    channels: std::ops::Range<usize>,
}

/// One block of [`NR`] output channels.
struct Block<'a> {
    g: &'a Geometry,
    /// Every input plane, padded and phase-split, `plane_len` values each.
    padded: &'a [f32],
    plane_len: usize,
    /// The block's weights, `[ci][tap][nr]`.
    weights: &'a [f32],
    /// The block's bias (`nr` values, zeros after them).
    bias: [f32; NR],
    /// Output channels: NR, 4 or 2.
    nr: usize,
}

impl Block<'_> {
    /// Columns `at.ox..at.ox + RUN` of row `at.oy` of the block's output channels into `rows`
    /// (`R` rows of `wide` values): their partial sums over `at.channels` added.
    #[inline(always)]
    fn run<const R: usize>(&self, rows: &mut [f32], wide: usize, at: &Cursor) {
        let g = self.g;
        let first = at.oy * g.stride * g.phase_len + at.ox;
        // Every tap's run lies inside `reach` values from `first` in each padded plane.
        let reach = g.offsets.iter().max().map_or(0, |&o| o + RUN);
        let dst: [&mut [f32]; R] = {
            let mut rows = rows.chunks_exact_mut(wide);
            std::array::from_fn(|_| &mut rows.next().expect("R rows")[at.ox..at.ox + RUN])
        };
        // SAFETY: `forward` runs blocks only where AVX2 and FMA were detected on this CPU.
        unsafe { run_avx2::<R>(self, first, reach, at, dst) };
    }
}

/// [`Geometry::pad`] compiled for AVX2 (its stride-2 copy vectorises).
#[target_feature(enable = "avx2")]
fn pad_avx2(g: &Geometry, src: &[f32], padded: &mut [f32]) {
    g.pad(src, padded);
}

/// The register block of [`Block::run`]: `R x 2` accumulators of 8 lanes, from the bias (the
/// first chunk of input channels) or the partial sums in `dst`, then for every input channel
/// of the chunk and tap two loads of the padded row and `R` broadcast weights.
#[target_feature(enable = "avx2,fma")]
fn run_avx2<const R: usize>(b: &Block<'_>, first: usize, reach: usize, at: &Cursor, dst: [&mut [f32]; R]) {
    use std::arch::x86_64::*;
    const V: usize = RUN / LANES;
    let taps = b.g.offsets.len();
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for (j, (acc, out)) in acc.iter_mut().zip(&dst).enumerate() {
        for (v, a) in acc.iter_mut().enumerate() {
            *a = if at.channels.start == 0 {
                _mm256_set1_ps(b.bias[j])
            } else {
                let out = &out[v * LANES..(v + 1) * LANES];
                // SAFETY: `out` holds 8 values.
                unsafe { _mm256_loadu_ps(out.as_ptr()) }
            };
        }
    }
    let (weights, _) = b.weights.as_chunks::<R>();
    let weights = &weights[at.channels.start * taps..at.channels.end * taps];
    for (ci, w) in at.channels.clone().zip(weights.chunks_exact(taps)) {
        let row = &b.padded[ci * b.plane_len + first..][..reach];
        for (&offset, w) in b.g.offsets.iter().zip(w) {
            let run = &row[offset..offset + V * LANES];
            let mut xv = [_mm256_setzero_ps(); V];
            for (v, xv) in xv.iter_mut().enumerate() {
                // SAFETY: `run` holds V * 8 values, so lanes 8v..8v + 8 are inside it.
                *xv = unsafe { _mm256_loadu_ps(run.as_ptr().add(v * LANES)) };
            }
            for (acc, &wv) in acc.iter_mut().zip(w) {
                let wv = _mm256_set1_ps(wv);
                for (a, &x) in acc.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(wv, x, *a);
                }
            }
        }
    }
    for (acc, out) in acc.iter().zip(dst) {
        for (v, &a) in acc.iter().enumerate() {
            let out = &mut out[v * LANES..(v + 1) * LANES];
            // SAFETY: `out` holds 8 values.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::nn::Pool;

    /// Output `(image, co, oy, ox)` of a convolution by its definition, in f64.
    fn definition(c: &Conv2d, x: &[f32], s: Shape, w: &[f32], b: Option<&[f32]>, leaky: Option<f32>) -> Vec<f64> {
        let out = c.output_shape(s).unwrap();
        let (kh, kw) = c.kernel;
        let mut y = Vec::with_capacity(out.len());
        for n in 0..s.n {
            for co in 0..c.out_channels {
                for oy in 0..out.h {
                    for ox in 0..out.w {
                        let mut v = b.map_or(0.0, |b| f64::from(b[co]));
                        for ci in 0..s.c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * c.stride + ky) as isize - c.padding as isize;
                                    let ix = (ox * c.stride + kx) as isize - c.padding as isize;
                                    if (0..s.h as isize).contains(&iy) && (0..s.w as isize).contains(&ix) {
                                        let i = ((n * s.c + ci) * s.h + iy as usize) * s.w + ix as usize;
                                        let wi = ((co * s.c + ci) * kh + ky) * kw + kx;
                                        v += f64::from(w[wi]) * f64::from(x[i]);
                                    }
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
        }
        y
    }

    /// Layers small enough for Miri (`cargo +nightly miri test --lib cpu::direct::tests::tiny`,
    /// with `-C target-feature=+avx2,+fma` so that Miri's CPU has them) that reach blocks of 6,
    /// 4 and 2 output channels, two input-channel chunks, both strides, runs of 16 with an
    /// overlapping last one, several images, and no bias. Where the CPU lacks AVX2 or FMA the
    /// direct path declines and the test checks only that.
    #[test]
    fn tiny_layers_match_the_definition() {
        let cases = [
            (Conv2d::new(3, 10, 3, 1), Shape::new(1, 3, 1, 66), true),
            (Conv2d::new(17, 6, 3, 1), Shape::new(2, 17, 1, 66), true),
            (Conv2d::new(2, 2, 3, 2), Shape::new(1, 2, 2, 131), false),
        ];
        let pool = Pool::<f32>::new();
        for (c, s, with_bias) in cases {
            let x: Vec<f32> = (0..s.len()).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25).collect();
            let w: Vec<f32> = (0..c.weight_shape().len())
                .map(|i| ((i * 5 % 9) as f32 - 4.0) * 0.125)
                .collect();
            let b: Vec<f32> = (0..c.out_channels).map(|i| i as f32 * 0.5 - 1.25).collect();
            let bias = with_bias.then_some(&b[..]);
            let out = c.output_shape(s).unwrap();
            let p = ConvProblem {
                conv: &c,
                x: &x,
                input: s,
                w: &w,
                out,
                pool: &pool,
            };
            for leaky in [None, Some(0.1f32)] {
                let mut y = vec![f32::NAN; out.len()];
                if !forward(&p, bias, leaky, &mut y) {
                    assert!(
                        !has_avx2_fma(),
                        "{c:?} {s}: the direct path declined on a CPU with AVX2 and FMA"
                    );
                    continue;
                }
                let want = definition(&c, &x, s, &w, bias, leaky);
                for (i, (&g, &r)) in y.iter().zip(&want).enumerate() {
                    assert!((f64::from(g) - r).abs() < 1e-4, "{c:?} {s} {leaky:?} [{i}]: {g} != {r}");
                }
            }
        }
    }
}
