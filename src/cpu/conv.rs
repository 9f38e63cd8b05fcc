//! CPU convolution: im2col and a real GEMM (the `gemm` crate), images in parallel with rayon.
//! The CPU twin of `shaders/conv_gemm.wgsl`; generic over f32 and f64 so that gradients can be
//! checked against finite differences in f64.

use std::ops::{Add, AddAssign, Mul, Sub};

use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::nn::Pool;
use crate::nn::{Conv2d, Shape};

/// The float types the CPU layers run in.
pub trait Real:
    Copy
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + AddAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// From f32.
    fn from_f32(v: f32) -> Self;
    /// To f32.
    fn to_f32(self) -> f32;
    /// To f64.
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`, each given as (pointer, row stride, column stride).
/// With `accumulate`, adds to `dst`; otherwise overwrites it.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    // SAFETY: dst holds m x n row-major values; lhs and rhs hold every element their strides
    // address (checked by the callers' shape logic); the three do not overlap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether the convolution reads its input as-is (1x1, stride 1, no padding): no im2col.
fn is_pointwise(conv: &Conv2d) -> bool {
    conv.kernel == (1, 1) && conv.stride == 1 && conv.padding == 0
}

/// The im2col matrix of one image: `col[(ci, ky, kx)][(oy, ox)]`, zero outside the image.
fn im2col<T: Real>(conv: &Conv2d, x: &[T], input: Shape, out: Shape, col: &mut [T]) {
    let (kh, kw) = conv.kernel;
    let (s, p) = (conv.stride as isize, conv.padding as isize);
    let n = out.plane();
    for ci in 0..input.c {
        let plane = &x[ci * input.plane()..(ci + 1) * input.plane()];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut col[((ci * kh + ky) * kw + kx) * n..][..n];
                for oy in 0..out.h {
                    let y = oy as isize * s - p + ky as isize;
                    let dst = &mut row[oy * out.w..(oy + 1) * out.w];
                    if y < 0 || y >= input.h as isize {
                        dst.fill(T::ZERO);
                        continue;
                    }
                    let src = &plane[y as usize * input.w..(y as usize + 1) * input.w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let x = ox as isize * s - p + kx as isize;
                        *d = if x >= 0 && x < input.w as isize {
                            src[x as usize]
                        } else {
                            T::ZERO
                        };
                    }
                }
            }
        }
    }
}

/// Adds an im2col-shaped gradient back onto the image it came from.
fn col2im<T: Real>(conv: &Conv2d, col: &[T], input: Shape, out: Shape, dx: &mut [T]) {
    let (kh, kw) = conv.kernel;
    let (s, p) = (conv.stride as isize, conv.padding as isize);
    let n = out.plane();
    dx.fill(T::ZERO);
    for ci in 0..input.c {
        let plane = &mut dx[ci * input.plane()..(ci + 1) * input.plane()];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &col[((ci * kh + ky) * kw + kx) * n..][..n];
                for oy in 0..out.h {
                    let y = oy as isize * s - p + ky as isize;
                    if y < 0 || y >= input.h as isize {
                        continue;
                    }
                    let dst = &mut plane[y as usize * input.w..(y as usize + 1) * input.w];
                    for (ox, &g) in row[oy * out.w..(oy + 1) * out.w].iter().enumerate() {
                        let x = ox as isize * s - p + kx as isize;
                        if x >= 0 && x < input.w as isize {
                            dst[x as usize] += g;
                        }
                    }
                }
            }
        }
    }
}

/// How to spread work: images in parallel when there are enough of them, else inside the GEMM.
fn gemm_parallelism(batch: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if batch >= threads {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// Forward pass into `y` (`out` shaped): one GEMM per image, `[Cout x K] x [K x Ho*Wo]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Real>(
    conv: &Conv2d,
    x: &[T],
    input: Shape,
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
    out: Shape,
    pool: &Pool<T>,
) {
    let k = conv.fan_in();
    let n = out.plane();
    let par = gemm_parallelism(input.n);
    let image = |(xb, yb): (&[T], &mut [T])| {
        let col_owned;
        let col: &[T] = if is_pointwise(conv) {
            xb
        } else {
            let mut c = pool.take(k * n);
            im2col(conv, xb, input, out, &mut c);
            col_owned = c;
            &col_owned
        };
        matmul(conv.out_channels, n, k, yb, (w, k, 1), (col, n, 1), false, par);
        if let Some(b) = bias {
            for (row, &bc) in yb.chunks_mut(n).zip(b) {
                row.iter_mut().for_each(|v| *v += bc);
            }
        }
    };
    let pairs = x
        .chunks(input.len() / input.n.max(1))
        .zip(y.chunks_mut(out.len() / out.n.max(1)));
    if matches!(par, Parallelism::None) {
        pairs.collect::<Vec<_>>().into_par_iter().for_each(image);
    } else {
        pairs.for_each(image);
    }
}

/// Backward pass: returns nothing, writes `dw` and `db` (overwritten) and `dx` if given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Real>(
    conv: &Conv2d,
    x: &[T],
    input: Shape,
    w: &[T],
    dy: &[T],
    out: Shape,
    dw: &mut [T],
    db: &mut [T],
    dx: Option<&mut [T]>,
    pool: &Pool<T>,
) {
    let k = conv.fan_in();
    let n = out.plane();
    let cout = conv.out_channels;
    let par = gemm_parallelism(input.n);
    let per_in = input.len() / input.n.max(1);
    let per_out = out.len() / out.n.max(1);

    // Bias: sum over images and pixels.
    db.fill(T::ZERO);
    for dyb in dy.chunks(per_out) {
        for (d, row) in db.iter_mut().zip(dyb.chunks(n)) {
            *d += row.iter().fold(T::ZERO, |a, &v| a + v);
        }
    }

    // Weights: sum over images of dY_b [Cout x N] x col_b^T [N x K]; images in parallel, each
    // worker accumulating into its own copy.
    let weight_grad = |acc: &mut Vec<T>, (xb, dyb): (&[T], &[T])| {
        let col_owned;
        let col: &[T] = if is_pointwise(conv) {
            xb
        } else {
            let mut c = pool.take(k * n);
            im2col(conv, xb, input, out, &mut c);
            col_owned = c;
            &col_owned
        };
        matmul(cout, k, n, acc, (dyb, n, 1), (col, 1, n), true, par);
    };
    let images: Vec<(&[T], &[T])> = x.chunks(per_in).zip(dy.chunks(per_out)).collect();
    let total = if matches!(par, Parallelism::None) {
        images
            .into_par_iter()
            .fold(
                || vec![T::ZERO; cout * k],
                |mut acc, pair| {
                    weight_grad(&mut acc, pair);
                    acc
                },
            )
            .reduce(
                || vec![T::ZERO; cout * k],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, &y)| *x += y);
                    a
                },
            )
    } else {
        let mut acc = vec![T::ZERO; cout * k];
        images.into_iter().for_each(|pair| weight_grad(&mut acc, pair));
        acc
    };
    dw.copy_from_slice(&total);

    // Input: W^T [K x Cout] x dY_b [Cout x N], then col2im.
    if let Some(dx) = dx {
        let image = |(dxb, dyb): (&mut [T], &[T])| {
            if is_pointwise(conv) {
                matmul(k, n, cout, dxb, (w, 1, k), (dyb, n, 1), false, par);
            } else {
                let mut col = pool.take(k * n);
                matmul(k, n, cout, &mut col, (w, 1, k), (dyb, n, 1), false, par);
                col2im(conv, &col, input, out, dxb);
            }
        };
        let pairs = dx.chunks_mut(per_in).zip(dy.chunks(per_out));
        if matches!(par, Parallelism::None) {
            pairs.collect::<Vec<_>>().into_par_iter().for_each(image);
        } else {
            pairs.for_each(image);
        }
    }
}
