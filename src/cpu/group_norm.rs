//! GroupNorm on the CPU: the twin of `shaders/group_norm_stats.wgsl` and
//! `group_norm_apply.wgsl` (forward), `group_norm_grad_sums.wgsl`, `group_norm_grad_coef.wgsl`
//! and `group_norm_apply.wgsl` (backward). Rayon-parallel over (image, group): in NCHW each
//! group's values are one contiguous chunk. Sums run in f64 whatever the engine's precision;
//! the elementwise maps run in the engine's precision with the shaders' coefficients.

use rayon::prelude::*;

use crate::cpu::conv::Real;
use crate::nn::{GroupNorm, Shape};

/// The mean and 1/sqrt(biased variance + eps) of `values`, in two passes (the mean, then the
/// squared deviations from it) as in group_norm_stats.wgsl.
fn moments<T: Real>(values: &[T], eps: f32) -> (f64, f64) {
    let count = values.len() as f64;
    let mean = values.iter().map(|v| v.to_f64()).sum::<f64>() / count;
    let squares: f64 = values
        .iter()
        .map(|v| {
            let d = v.to_f64() - mean;
            d * d
        })
        .sum();
    (mean, 1.0 / (squares / count + f64::from(eps)).sqrt())
}

/// `out = k.0 * u + k.1 * (v - k.2) + k.3` elementwise: group_norm_apply.wgsl for one plane.
fn apply<T: Real>(k: [f64; 4], u: &[T], v: &[T], out: &mut [T]) {
    let [a, b, m, d] = k.map(T::from_f64);
    for ((o, &u), &v) in out.iter_mut().zip(u).zip(v) {
        *o = a * u + b * (v - m) + d;
    }
}

/// Forward: `y` and the (mean, rstd) `stats` (2 per image and group) of `x` of `shape`.
/// The shapes have been checked ([`GroupNorm::check_forward`]).
pub(crate) fn forward<T: Real>(
    gn: &GroupNorm,
    shape: Shape,
    x: &[T],
    gamma: &[T],
    beta: &[T],
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
                apply(k, x, x, y);
            }
        });
}

/// Backward: `dx`, `dgamma` and `dbeta` from `x` of `shape`, `gamma`, the forward pass's
/// `stats` and `dy`. `sums` is scratch of 2 values per (image, channel): (sum dy,
/// sum dy * xhat), as group_norm_grad_sums.wgsl writes them. The shapes have been checked
/// ([`GroupNorm::check_backward`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Real>(
    gn: &GroupNorm,
    shape: Shape,
    x: &[T],
    gamma: &[T],
    stats: &[T],
    dy: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    sums: &mut [T],
) {
    let (group_channels, plane) = (gn.channels_per_group(), shape.plane());
    let count = group_channels * plane;
    let m = count as f64;
    dx.par_chunks_mut(count)
        .zip(x.par_chunks(count))
        .zip(dy.par_chunks(count))
        .zip(sums.par_chunks_mut(2 * group_channels))
        .enumerate()
        .for_each(|(slot, (((dx, x), dy), sums))| {
            let (mean, rstd) = (stats[2 * slot].to_f64(), stats[2 * slot + 1].to_f64());
            let first = (slot % gn.groups) * group_channels;
            // group_norm_grad_sums.wgsl, then the (image, group) half of group_norm_grad_coef.wgsl.
            let (mut a, mut b) = (0.0f64, 0.0f64);
            for (j, (x, dy)) in x.chunks(plane).zip(dy.chunks(plane)).enumerate() {
                let (mut dy_sum, mut dy_dev) = (0.0f64, 0.0f64);
                for (&x, &dy) in x.iter().zip(dy) {
                    let dy = dy.to_f64();
                    dy_sum += dy;
                    dy_dev += dy * (x.to_f64() - mean);
                }
                let dy_xhat = dy_dev * rstd;
                sums[2 * j] = T::from_f64(dy_sum);
                sums[2 * j + 1] = T::from_f64(dy_xhat);
                let g = gamma[first + j].to_f64();
                a += g * dy_sum;
                b += g * dy_xhat;
            }
            let (slope, offset) = (-rstd * rstd * b / m, -rstd * a / m);
            for (j, ((dx, x), dy)) in dx
                .chunks_mut(plane)
                .zip(x.chunks(plane))
                .zip(dy.chunks(plane))
                .enumerate()
            {
                let k = [rstd * gamma[first + j].to_f64(), slope, mean, offset];
                apply(k, dy, x, dx);
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
