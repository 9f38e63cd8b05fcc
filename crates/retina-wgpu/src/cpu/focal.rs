//! CPU twin of `shaders/focal_loss.wgsl`: the same per-element formulas, parallel over blocks of
//! rows with rayon, vectorised within a row (see [`crate::cpu::math`]).
//!
//! Hard targets (every label, and dense targets that are exactly 0 or 1) take a branch-free
//! loop that LLVM turns into packed SIMD; soft targets take a scalar path with libm's `ln`.

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::cpu::math::{NAN, exp, is_non_finite, log1p_unit, multiversion};
use crate::ops::focal::{FocalInput, FocalLoss, FocalVariant, LABEL_BACKGROUND, LABEL_IGNORE, Logits, Targets};

/// Elements per parallel task: large enough to amortise scheduling, small enough that a
/// block's scratch stays in L2.
const BLOCK_ELEMS: usize = 16 * 1024;

/// Kernel parameters, resolved once.
#[derive(Clone, Copy)]
struct Params {
    gamma: f32,
    /// FL*'s beta, or None for the focal loss.
    star: Option<f32>,
    alpha: Option<f32>,
    inv_norm: f32,
}

impl Params {
    /// alpha_t for a hard target, written as the shader's `a t + (1 - a)(1 - t)` so that both
    /// backends round identically.
    #[inline(always)]
    fn alpha_t(&self, t: f32) -> f32 {
        match self.alpha {
            Some(a) => a * t + (1.0 - a) * (1.0 - t),
            None => 1.0,
        }
    }
}

/// Focal loss and d/dx against a hard target of sign `s` (+1 for t = 1, -1 for t = 0).
/// Mirrors `focal_hard` in the shader.
#[inline(always)]
fn focal_hard(x: f32, s: f32, gamma: f32) -> (f32, f32) {
    let z = s * x;
    let e = exp(-x.abs());
    let l1p = log1p_unit(e);
    let sp_pos = z.max(0.0) + l1p; // -log(1 - p_t)
    let ce = (-z).max(0.0) + l1p; // -log(p_t)
    let inv = 1.0 / (1.0 + e);
    let m = if z >= 0.0 { e * inv } else { inv }; // 1 - p_t
    let pt = if z >= 0.0 { inv } else { e * inv }; // p_t
    let mg = exp(-gamma * sp_pos); // (1 - p_t)^gamma
    let dz = -mg * (gamma * pt * ce + m);
    (mg * ce, s * dz)
}

/// FL* against a hard target of sign `s`. Mirrors `star_hard` in the shader.
#[inline(always)]
fn star_hard(x: f32, s: f32, gamma: f32, beta: f32) -> (f32, f32) {
    let zz = gamma * s * x + beta;
    let e = exp(-zz.abs());
    let inv = 1.0 / (1.0 + e);
    let sig_neg = if zz >= 0.0 { e * inv } else { inv };
    (((-zz).max(0.0) + log1p_unit(e)) / gamma, -s * sig_neg)
}

/// Focal loss and d/dx against a soft target t in (0, 1). Mirrors `focal_soft` in the shader.
fn focal_soft(x: f32, t: f32, gamma: f32) -> (f32, f32) {
    let e = exp(-x.abs());
    let inv = 1.0 / (1.0 + e);
    let p = if x >= 0.0 { inv } else { e * inv };
    let q = if x >= 0.0 { e * inv } else { inv };
    let ce = x.max(0.0) - x * t + log1p_unit(e);
    let m = p * (1.0 - t) + q * t;
    let (mg, ratio) = if m > 0.0 {
        (exp(gamma * m.ln()), p * q / m)
    } else {
        (if gamma == 0.0 { 1.0 } else { 0.0 }, 0.0)
    };
    // gamma * (ce * ratio): ce is up to |x| and ratio is tiny where ce is huge; multiplying
    // gamma in first would overflow for logits near f32::MAX.
    let g = mg * ((p * (1.0 - t) - q * t) + gamma * (ce * ratio) * (1.0 - 2.0 * t));
    (mg * ce, g)
}

/// One element with any target: the shader's `focal_element` (weight 1).
fn element(x: f32, t: f32, p: &Params) -> (f32, f32) {
    if is_non_finite(x) || is_non_finite(t) {
        return (NAN, NAN);
    }
    let (l, g) = match p.star {
        Some(beta) if t == 1.0 => star_hard(x, 1.0, p.gamma, beta),
        Some(beta) if t == 0.0 => star_hard(x, -1.0, p.gamma, beta),
        Some(beta) => {
            let (l1, g1) = star_hard(x, 1.0, p.gamma, beta);
            let (l0, g0) = star_hard(x, -1.0, p.gamma, beta);
            (t * l1 + (1.0 - t) * l0, t * g1 + (1.0 - t) * g0)
        }
        None if t == 1.0 || t == 0.0 => focal_hard(x, if t == 1.0 { 1.0 } else { -1.0 }, p.gamma),
        None => focal_soft(x, t, p.gamma),
    };
    let at = p.alpha_t(t);
    (l * at, g * at)
}

/// One hard element: loss and normalised gradient (NaN for a non-finite logit).
#[inline(always)]
fn hard_element(x: f32, positive: bool, p: &Params) -> (f32, f32) {
    let (s, t) = if positive { (1.0, 1.0) } else { (-1.0, 0.0) };
    let (l, g) = match p.star {
        Some(beta) => star_hard(x, s, p.gamma, beta),
        None => focal_hard(x, s, p.gamma),
    };
    let at = p.alpha_t(t);
    if is_non_finite(x) {
        (NAN, NAN)
    } else {
        (l * at, g * at * p.inv_norm)
    }
}

/// The branch-free loop over elements whose hard targets are `targets[i] == 1.0`.
#[inline(always)]
fn hard_loop(x: &[f32], targets: &[f32], p: &Params, loss: &mut [f32], grad: &mut [f32]) {
    let n = x.len();
    for (((&xi, &ti), li), gi) in x.iter().zip(&targets[..n]).zip(&mut loss[..n]).zip(&mut grad[..n]) {
        (*li, *gi) = hard_element(xi, ti == 1.0, p);
    }
}

/// One row with a label: every element is a negative except `class`, if any.
#[inline(always)]
fn label_row(x: &[f32], class: Option<usize>, p: &Params, loss: &mut [f32], grad: &mut [f32]) {
    let n = x.len();
    for ((&xi, li), gi) in x.iter().zip(&mut loss[..n]).zip(&mut grad[..n]) {
        (*li, *gi) = hard_element(xi, false, p);
    }
    if let Some(c) = class {
        (loss[c], grad[c]) = hard_element(x[c], true, p);
    }
}

multiversion! {
    /// Rows of `k` logits with one label each.
    fn label_rows(p: &Params, x: &[f32], labels: &[i32], k: usize, loss: &mut [f32], grad: &mut [f32]) {
        for (r, &label) in labels.iter().enumerate() {
            let row = r * k..(r + 1) * k;
            if label == LABEL_IGNORE {
                loss[row.clone()].fill(0.0);
                grad[row].fill(0.0);
            } else if label < LABEL_BACKGROUND || label >= k as i32 {
                loss[row.clone()].fill(NAN);
                grad[row].fill(NAN);
            } else {
                label_row(&x[row.clone()], usize::try_from(label).ok(), p, &mut loss[row.clone()], &mut grad[row]);
            }
        }
    }
}

multiversion! {
    /// Elements with dense targets.
    fn dense_elements(p: &Params, x: &[f32], t: &[f32], loss: &mut [f32], grad: &mut [f32]) {
        if t.iter().all(|&v| v == 0.0 || v == 1.0) {
            hard_loop(x, t, p, loss, grad);
        } else {
            for i in 0..x.len() {
                let (l, g) = element(x[i], t[i], p);
                loss[i] = l;
                grad[i] = g * p.inv_norm;
            }
        }
    }
}

/// Sum in f64 with eight independent accumulators (vectorisable, and accurate: each lane adds
/// a few thousand f32 values).
#[inline(always)]
fn sum_f64(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            lanes[j] += f64::from(c[j]);
        }
    }
    lanes.iter().sum::<f64>() + rest.iter().map(|&v| f64::from(v)).sum::<f64>()
}

/// One block of whole rows: `range` indexes elements. Returns the block's loss sum.
fn process_block(
    p: &Params,
    input: &FocalInput<'_>,
    range: std::ops::Range<usize>,
    grad: Option<&mut [f32]>,
    elementwise: Option<&mut [f32]>,
) -> f64 {
    let k = input.num_classes;
    let len = range.len();
    let converted;
    let x: &[f32] = match input.logits {
        Logits::F32(x) => &x[range.clone()],
        Logits::F16(x) => {
            let mut buf = vec![0.0f32; len];
            x[range.clone()].convert_to_f32_slice(&mut buf);
            converted = buf;
            &converted
        }
    };
    let mut loss_scratch = Vec::new();
    let loss: &mut [f32] = match elementwise {
        Some(e) => e,
        None => {
            loss_scratch.resize(len, 0.0);
            &mut loss_scratch
        }
    };
    let mut grad_scratch = Vec::new();
    let grad: &mut [f32] = match grad {
        Some(g) => g,
        None => {
            grad_scratch.resize(len, 0.0);
            &mut grad_scratch
        }
    };
    match input.targets {
        Targets::Labels(labels) => {
            let rows = range.start / k..range.end / k;
            label_rows(p, x, &labels[rows], k, loss, grad);
        }
        Targets::Dense(targets) => dense_elements(p, x, &targets[range.clone()], loss, grad),
    }
    sum_f64(loss)
}

/// Splits an optional output into per-block slices.
fn split_blocks(out: Option<&mut [f32]>, block: usize, blocks: usize) -> Vec<Option<&mut [f32]>> {
    match out {
        Some(out) => out.chunks_mut(block).map(Some).collect(),
        None => (0..blocks).map(|_| None).collect(),
    }
}

/// The focal loss of `input` on the CPU. Writes `d(loss)/d(logits) * inv_norm` into `grad` and
/// per-element losses into `elementwise` when given (each `input.logits.len()` long), and
/// returns the unnormalised sum (accumulated in f64). Inputs are assumed validated
/// ([`FocalInput::validate`]); an out-of-range label gives NaN for its row, as on the GPU.
pub fn focal_loss(
    loss: &FocalLoss,
    input: &FocalInput<'_>,
    inv_norm: f32,
    grad: Option<&mut [f32]>,
    elementwise: Option<&mut [f32]>,
) -> f64 {
    let n = input.logits.len();
    let k = input.num_classes.max(1);
    if n == 0 {
        return 0.0;
    }
    let p = Params {
        gamma: loss.gamma,
        star: match loss.variant {
            FocalVariant::Star { beta } => Some(beta),
            FocalVariant::Focal => None,
        },
        alpha: loss.alpha,
        inv_norm,
    };
    let block = (BLOCK_ELEMS / k).max(1) * k;
    let blocks = n.div_ceil(block);
    let grads = split_blocks(grad, block, blocks);
    let elems = split_blocks(elementwise, block, blocks);
    let sums: Vec<f64> = grads
        .into_par_iter()
        .zip(elems)
        .enumerate()
        .map(|(b, (g, e))| process_block(&p, input, b * block..((b + 1) * block).min(n), g, e))
        .collect();
    sums.iter().sum()
}
