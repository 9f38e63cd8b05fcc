//! GroupNorm on the CPU: the twin of `shaders/group_norm_forward.wgsl` (or
//! `group_norm_stats.wgsl` and `group_norm_apply.wgsl`, for large groups) forward, and of
//! `group_norm_backward.wgsl` and `group_norm_param_grads.wgsl` (or `group_norm_grad_sums.wgsl`,
//! `group_norm_grad_coef.wgsl` and `group_norm_apply.wgsl`) backward. Rayon-parallel over (image, group): in NCHW each
//! group's values are one contiguous chunk. Sums run in f64 whatever the engine's precision;
//! the elementwise maps run in the engine's precision with the shaders' coefficients.

use rayon::prelude::*;

use crate::cpu::conv::Real;
use crate::nn::{GroupNorm, Shape};

/// Independent partial sums: one f64 addition after another is bound by the adder's latency;
/// this many running sums (one AVX-512 register of f64) keep it busy.
const LANES: usize = 8;

/// `sum f(x[i], u[i], v[i])` in f64 over [`LANES`] running sums, added at the end (the
/// slices have one length).
fn sum_lanes<T: Real>(x: &[T], u: &[T], v: &[T], f: impl Fn(T, T, T) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (xs, us, vs) = (x.chunks_exact(LANES), u.chunks_exact(LANES), v.chunks_exact(LANES));
    let rest = xs.remainder().iter().zip(us.remainder()).zip(vs.remainder());
    for ((xs, us), vs) in xs.zip(us).zip(vs) {
        for (((a, &x), &u), &v) in acc.iter_mut().zip(xs).zip(us).zip(vs) {
            *a += f(x, u, v);
        }
    }
    let tail: f64 = rest.map(|((&x, &u), &v)| f(x, u, v)).sum();
    acc.iter().sum::<f64>() + tail
}

/// The mean and 1/sqrt(biased variance + eps) of `values`, in two passes (the mean, then the
/// squared deviations from it) as in group_norm_stats.wgsl.
fn moments<T: Real>(values: &[T], eps: f32) -> (f64, f64) {
    let count = values.len() as f64;
    let mean = sum_lanes(values, values, values, |v, _, _| v.to_f64()) / count;
    let squares = sum_lanes(values, values, values, |v, _, _| {
        let d = v.to_f64() - mean;
        d * d
    });
    (mean, 1.0 / (squares / count + f64::from(eps)).sqrt())
}

/// `out = k.0 * u + k.1 * (v - k.2) + k.3` elementwise: group_norm_apply.wgsl for one plane.
fn apply<T: Real>(k: [f64; 4], u: &[T], v: &[T], out: &mut [T]) {
    let [a, b, m, d] = k.map(T::from_f64);
    for ((o, &u), &v) in out.iter_mut().zip(u).zip(v) {
        *o = a * u + b * (v - m) + d;
    }
}

/// `out = max(k.1 * (v - k.2) + k.3, 0)`: the forward [`apply`] followed by ReLU.
fn apply_relu<T: Real>(k: [f64; 4], v: &[T], out: &mut [T]) {
    let [_, b, m, d] = k.map(T::from_f64);
    for (o, &v) in out.iter_mut().zip(v) {
        let y = b * (v - m) + d;
        *o = if y > T::ZERO { y } else { T::ZERO };
    }
}

/// The backward [`apply`] with `u` (the output gradient) zeroed where the ReLU's output `y`
/// is not positive: ReLU's backward pass, fused.
fn apply_masked<T: Real>(k: [f64; 4], u: &[T], y: &[T], v: &[T], out: &mut [T]) {
    let [a, b, m, d] = k.map(T::from_f64);
    for (((o, &u), &y), &v) in out.iter_mut().zip(u).zip(y).zip(v) {
        let u = if y > T::ZERO { u } else { T::ZERO };
        *o = a * u + b * (v - m) + d;
    }
}

/// Forward: `y` and the (mean, rstd) `stats` (2 per image and group) of `x` of `shape`; with
/// `relu`, `y` is ReLU's output (GroupNorm and ReLU in one pass). The shapes have been checked
/// ([`GroupNorm::check_forward`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Real>(
    gn: &GroupNorm,
    shape: Shape,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    relu: bool,
    y: &mut [T],
    stats: &mut [T],
) {
    let (group_channels, plane) = (gn.channels_per_group(), shape.plane());
    let count = group_channels * plane;
    y.par_chunks_mut(count)
        .zip(x.par_chunks(count))
        .zip(stats.par_chunks_mut(2))
        .enumerate()
        .for_each(|(slot, ((y, x), stats))| {
            let (mean, rstd) = moments(x, gn.eps);
            stats[0] = T::from_f64(mean);
            stats[1] = T::from_f64(rstd);
            let first = (slot % gn.groups) * group_channels;
            for (j, (y, x)) in y.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
                let c = first + j;
                let k = [0.0, rstd * gamma[c].to_f64(), mean, beta[c].to_f64()];
                if relu {
                    apply_relu(k, x, y);
                } else {
                    apply(k, x, x, y);
                }
            }
        });
}

/// Backward: `dx`, `dgamma` and `dbeta` from `x` of `shape`, `gamma`, the forward pass's
/// `stats` and `dy`. `sums` is scratch of 2 values per (image, channel): (sum dy,
/// sum dy * xhat), as group_norm_grad_sums.wgsl writes them. With `relu_out`, the forward pass
/// was [`forward`] with `relu` and returned it: `dy` is taken as zero where it is not positive
/// (ReLU's backward pass, fused). The shapes have been checked ([`GroupNorm::check_backward`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Real>(
    gn: &GroupNorm,
    shape: Shape,
    x: &[T],
    gamma: &[T],
    stats: &[T],
    relu_out: Option<&[T]>,
    dy: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    sums: &mut [T],
) {
    let (group_channels, plane) = (gn.channels_per_group(), shape.plane());
    let count = group_channels * plane;
    let m = count as f64;
    // Without a ReLU, `dy` stands in for its output (never read).
    let mask = relu_out.unwrap_or(dy);
    dx.par_chunks_mut(count)
        .zip(x.par_chunks(count))
        .zip(dy.par_chunks(count))
        .zip(mask.par_chunks(count))
        .zip(sums.par_chunks_mut(2 * group_channels))
        .enumerate()
        .for_each(|(slot, ((((dx, x), dy), mask), sums))| {
            let (mean, rstd) = (stats[2 * slot].to_f64(), stats[2 * slot + 1].to_f64());
            let first = (slot % gn.groups) * group_channels;
            // group_norm_grad_sums.wgsl, then the (image, group) half of group_norm_grad_coef.wgsl.
            let (mut a, mut b) = (0.0f64, 0.0f64);
            for (j, ((x, dy), mask)) in x
                .chunks(plane)
                .zip(dy.chunks(plane))
                .zip(mask.chunks(plane))
                .enumerate()
            {
                let dev = |x: T, dy: T| dy.to_f64() * (x.to_f64() - mean);
                let (dy_sum, dy_dev) = if relu_out.is_some() {
                    // ReLU's backward pass: dy where its output is positive, else 0.
                    let pass = |dy: T, y: T| if y > T::ZERO { dy } else { T::ZERO };
                    (
                        sum_lanes(dy, mask, mask, |dy, y, _| pass(dy, y).to_f64()),
                        sum_lanes(x, dy, mask, |x, dy, y| dev(x, pass(dy, y))),
                    )
                } else {
                    (
                        sum_lanes(dy, dy, dy, |dy, _, _| dy.to_f64()),
                        sum_lanes(x, dy, dy, |x, dy, _| dev(x, dy)),
                    )
                };
                let dy_xhat = dy_dev * rstd;
                sums[2 * j] = T::from_f64(dy_sum);
                sums[2 * j + 1] = T::from_f64(dy_xhat);
                let g = gamma[first + j].to_f64();
                a += g * dy_sum;
                b += g * dy_xhat;
            }
            let (slope, offset) = (-rstd * rstd * b / m, -rstd * a / m);
            for (j, (((dx, x), dy), mask)) in dx
                .chunks_mut(plane)
                .zip(x.chunks(plane))
                .zip(dy.chunks(plane))
                .zip(mask.chunks(plane))
                .enumerate()
            {
                let k = [rstd * gamma[first + j].to_f64(), slope, mean, offset];
                if relu_out.is_some() {
                    apply_masked(k, dy, mask, x, dx);
                } else {
                    apply(k, dy, x, dx);
                }
            }
        });
    // The per-channel half of group_norm_grad_coef.wgsl.
    let channels = gn.channels;
    for c in 0..channels {
        let (mut dy_sum, mut dy_xhat) = (0.0f64, 0.0f64);
        for n in 0..shape.n {
            let p = n * channels + c;
            dy_sum += sums[2 * p].to_f64();
            dy_xhat += sums[2 * p + 1].to_f64();
        }
        dbeta[c] = T::from_f64(dy_sum);
        dgamma[c] = T::from_f64(dy_xhat);
    }
}
