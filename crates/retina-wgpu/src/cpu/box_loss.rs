//! CPU twin of `shaders/box_loss.wgsl`.

use rayon::prelude::*;

use crate::cpu::boxes::{area, decode_parts};
use crate::ops::box_loss::{BoxLoss, BoxLossInput, BoxLossKind};

const EPS: f32 = 1e-7;

/// WGSL's `sign`: 0 at 0 (Rust's `signum` gives 1).
#[inline(always)]
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn smooth_l1(p: [f32; 4], t: [f32; 4], beta: f32) -> (f32, [f32; 4]) {
    let mut l = [0.0; 4];
    let mut g = [0.0; 4];
    for c in 0..4 {
        let d = p[c] - t[c];
        let n = d.abs();
        if n < beta {
            l[c] = 0.5 * n * n / beta;
            g[c] = d / beta;
        } else {
            l[c] = n - 0.5 * beta;
            g[c] = sign(d);
        }
    }
    (l[0] + l[1] + l[2] + l[3], g)
}

fn step(c: bool) -> f32 {
    if c { 1.0 } else { 0.0 }
}

/// 1 - GIoU(p, t) and d/dp: the shader's `giou`.
fn giou(p: [f32; 4], t: [f32; 4]) -> (f32, [f32; 4]) {
    let ox = p[2].min(t[2]) - p[0].max(t[0]);
    let oy = p[3].min(t[3]) - p[1].max(t[1]);
    let has_inter = ox > 0.0 && oy > 0.0;
    let inter = if has_inter { ox * oy } else { 0.0 };
    let union = area(p) + area(t) - inter;
    let iou = inter / (union + EPS);
    let cw = p[2].max(t[2]) - p[0].min(t[0]);
    let ch = p[3].max(t[3]) - p[1].min(t[1]);
    let area_c = cw * ch;
    let loss = 1.0 - (iou - (area_c - union) / (area_c + EPS));

    let d_inter = -1.0 / (union + EPS);
    let d_union = inter / ((union + EPS) * (union + EPS)) - 1.0 / (area_c + EPS);
    let d_c = 1.0 / (area_c + EPS) - (area_c - union) / ((area_c + EPS) * (area_c + EPS));
    let di = if has_inter {
        [
            -oy * step(p[0] >= t[0]),
            -ox * step(p[1] >= t[1]),
            oy * step(p[2] <= t[2]),
            ox * step(p[3] <= t[3]),
        ]
    } else {
        [0.0; 4]
    };
    let (pw, ph) = (p[2] - p[0], p[3] - p[1]);
    let da = [-ph, -pw, ph, pw];
    let dc = [
        -ch * step(p[0] <= t[0]),
        -cw * step(p[1] <= t[1]),
        ch * step(p[2] >= t[2]),
        cw * step(p[3] >= t[3]),
    ];
    let mut g = [0.0; 4];
    for c in 0..4 {
        g[c] = d_inter * di[c] + d_union * (da[c] - di[c]) + d_c * dc[c];
    }
    (loss, g)
}

/// The largest centre coordinate and half-size the GIoU loss uses (`GIOU_LIMIT` in
/// shaders/box_loss.wgsl): beyond it a decoded box saturates, so that the enclosing box's area
/// (at most (4e18)^2) stays finite, and the saturated part gets no gradient.
const GIOU_LIMIT: f32 = 1e18;

/// A decoded box with its centre and half-size saturated at [`GIOU_LIMIT`], and which of the
/// centre's and half-size's components were not (the shader's `saturated_box`).
fn saturated_box(deltas: [f32; 4], anchor: [f32; 4], loss: &BoxLoss) -> ([f32; 4], [bool; 2], [bool; 2]) {
    let (centre, half) = decode_parts(deltas, anchor, loss.coder.weights, loss.coder.clamp);
    let c = centre.map(|v| v.clamp(-GIOU_LIMIT, GIOU_LIMIT));
    let h = half.map(|v| v.min(GIOU_LIMIT));
    (
        [c[0] - h[0], c[1] - h[1], c[0] + h[0], c[1] + h[1]],
        centre.map(|v| v.abs() <= GIOU_LIMIT),
        half.map(|v| v <= GIOU_LIMIT),
    )
}

/// GIoU of decoded boxes with the gradient carried back to the deltas: the shader's
/// `giou_deltas`. NaN deltas give a NaN loss and gradient; finite deltas of any size a finite
/// loss (see [`GIOU_LIMIT`]).
fn giou_deltas(deltas: [f32; 4], target: [f32; 4], anchor: [f32; 4], loss: &BoxLoss) -> (f32, [f32; 4]) {
    if deltas.iter().chain(&target).any(|v| v.is_nan()) {
        return (f32::NAN, [f32::NAN; 4]);
    }
    let (w, clamp) = (loss.coder.weights, loss.coder.clamp);
    let (p, centre_free, half_free) = saturated_box(deltas, anchor, loss);
    let (t, _, _) = saturated_box(target, anchor, loss);
    let (l, g) = giou(p, t);
    let aw = anchor[2] - anchor[0];
    let ah = anchor[3] - anchor[1];
    let half_w = 0.5 * (p[2] - p[0]);
    let half_h = 0.5 * (p[3] - p[1]);
    let free = |ok: bool, v: f32| if ok { v } else { 0.0 };
    let gx = free(centre_free[0], (g[0] + g[2]) * aw / w[0]);
    let gy = free(centre_free[1], (g[1] + g[3]) * ah / w[1]);
    let gw = free(deltas[2] / w[2] <= clamp && half_free[0], (g[2] - g[0]) * half_w / w[2]);
    let gh = free(deltas[3] / w[3] <= clamp && half_free[1], (g[3] - g[1]) * half_h / w[3]);
    (l, [gx, gy, gw, gh])
}

/// The loss sum over positive anchors; writes `d(loss)/d(pred) / normaliser` into `grad`
/// (zero for other anchors). Inputs are assumed validated.
pub fn box_loss(loss: &BoxLoss, input: &BoxLossInput<'_>, normaliser: f32, grad: &mut [[f32; 4]]) -> f64 {
    let a = input.anchors.len();
    grad.par_chunks_mut(4096)
        .enumerate()
        .map(|(c, grad)| {
            let mut sum = 0.0f64;
            for (k, g_out) in grad.iter_mut().enumerate() {
                let i = c * 4096 + k;
                if input.labels[i] < 0 {
                    *g_out = [0.0; 4];
                    continue;
                }
                let (l, g) = match loss.kind {
                    BoxLossKind::SmoothL1 { beta } => smooth_l1(input.pred[i], input.targets[i], beta),
                    BoxLossKind::Giou => giou_deltas(input.pred[i], input.targets[i], input.anchors[i % a], loss),
                };
                *g_out = g.map(|v| v / normaliser);
                sum += f64::from(l);
            }
            sum
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum()
}
