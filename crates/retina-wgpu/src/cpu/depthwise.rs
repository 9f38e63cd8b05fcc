//! Depthwise convolution on the CPU (one filter per channel, MobileNet's): the twin of
//! `shaders/depthwise_conv.wgsl`. Direct loops, parallel over the (image, channel) planes for
//! the forward pass and the input gradient and over channels for the weight gradient; callers
//! ([`crate::nn::CpuEngine`]) have checked the shapes.

use rayon::prelude::*;

use crate::cpu::conv::Real;
use crate::nn::{Conv2d, Shape};

/// Input row (or column) that output position `o` reads at tap `k`, or `None` in the padding.
#[inline(always)]
fn source(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// The output columns `lo..hi` whose input column `ox * stride + kx - pad` lies in
/// `0..width`.
fn columns(kx: usize, stride: usize, pad: usize, width: usize, out_w: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(kx).div_ceil(stride);
    // The last ox with ox * stride + kx <= width - 1 + pad.
    let hi = match (width + pad).checked_sub(kx + 1) {
        Some(v) => (v / stride + 1).min(out_w),
        None => 0,
    };
    (lo, hi.max(lo))
}

/// `y = depthwise(x) + bias`, `y` of shape `out`: per plane, each tap adds its weight times a
/// shifted input row to an output row (a contiguous multiply-add the compiler vectorises at
/// stride 1), the padding's columns and rows skipped by range rather than tested per pixel.
/// With `leaky`, LeakyReLU of that slope follows on each plane while it is in cache.
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
    let (stride, pad) = (c.stride, c.padding);
    let spans: Vec<(usize, usize)> = (0..kw).map(|kx| columns(kx, stride, pad, input.w, out.w)).collect();
    // At a stride s > 1 the input plane is first split into its s column phases (columns
    // j*s + p of every row), so that every tap reads a contiguous run of one phase.
    let phase_len = input.w.div_ceil(stride);
    y.par_chunks_mut(out.plane()).enumerate().for_each_init(
        || vec![T::ZERO; if stride > 1 { stride * input.h * phase_len } else { 0 }],
        |phases, (plane, dst)| {
            let ch = plane % out.c;
            let src = &x[plane * input.plane()..(plane + 1) * input.plane()];
            let taps = &w[ch * kh * kw..(ch + 1) * kh * kw];
            if stride > 1 {
                for (iy, in_row) in src.chunks_exact(input.w).enumerate() {
                    for (j, run) in in_row.chunks(stride).enumerate() {
                        for (p, &v) in run.iter().enumerate() {
                            phases[(p * input.h + iy) * phase_len + j] = v;
                        }
                    }
                }
            }
            dst.fill(bias.map_or(T::ZERO, |b| b[ch]));
            for oy in 0..out.h {
                let row = &mut dst[oy * out.w..(oy + 1) * out.w];
                for ky in 0..kh {
                    let Some(iy) = source(oy, ky, stride, pad, input.h) else {
                        continue;
                    };
                    let in_row = &src[iy * input.w..(iy + 1) * input.w];
                    for (kx, &(lo, hi)) in spans.iter().enumerate() {
                        if lo >= hi {
                            continue;
                        }
                        let wv = taps[ky * kw + kx];
                        // Input column of output column ox: ox * stride + kx - pad, which is
                        // column ox + base of phase p, with kx - pad = base * stride + p.
                        let d = kx as isize - pad as isize;
                        let (base, p) = (d.div_euclid(stride as isize), d.rem_euclid(stride as isize) as usize);
                        let first = (lo as isize + base) as usize;
                        let run = if stride == 1 {
                            &in_row[first..first + (hi - lo)]
                        } else {
                            let at = (p * input.h + iy) * phase_len + first;
                            &phases[at..at + (hi - lo)]
                        };
                        for (o, &i) in row[lo..hi].iter_mut().zip(run) {
                            *o += wv * i;
                        }
                    }
                }
            }
            if let Some(slope) = leaky {
                dst.iter_mut()
                    .filter(|v| (**v).partial_cmp(&T::ZERO) != Some(std::cmp::Ordering::Greater))
                    .for_each(|v| *v = *v * slope);
            }
        },
    );
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
