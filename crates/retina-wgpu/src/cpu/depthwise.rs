//! Depthwise convolution on the CPU (one filter per channel, MobileNet's): the twin of
//! `shaders/depthwise_conv.wgsl`. Direct loops, parallel over the (image, channel) planes for
//! the forward pass and the input gradient and over channels for the weight gradient; callers
//! ([`crate::nn::CpuEngine`]) have checked the shapes.

use rayon::prelude::*;

use crate::cpu::conv::Real;
use crate::nn::{Conv2d, Shape};

/// Input row (or column) that output position `o` reads at tap `k`, or `None` in the padding.
fn source(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// `y = depthwise(x) + bias`, `y` of shape `out`.
pub(crate) fn forward<T: Real>(
    c: &Conv2d,
    x: &[T],
    input: Shape,
    w: &[T],
    bias: Option<&[T]>,
    out: Shape,
    y: &mut [T],
) {
    let (kh, kw) = c.kernel;
    y.par_chunks_mut(out.plane()).enumerate().for_each(|(plane, dst)| {
        let ch = plane % out.c;
        let src = &x[plane * input.plane()..(plane + 1) * input.plane()];
        let taps = &w[ch * kh * kw..(ch + 1) * kh * kw];
        let b = bias.map_or(T::ZERO, |b| b[ch]);
        for oy in 0..out.h {
            for ox in 0..out.w {
                let mut acc = T::ZERO;
                for ky in 0..kh {
                    let Some(iy) = source(oy, ky, c.stride, c.padding, input.h) else {
                        continue;
                    };
                    for kx in 0..kw {
                        if let Some(ix) = source(ox, kx, c.stride, c.padding, input.w) {
                            acc += src[iy * input.w + ix] * taps[ky * kw + kx];
                        }
                    }
                }
                dst[oy * out.w + ox] = acc + b;
            }
        }
    });
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
