//! CPU twin of `shaders/shared/boxes.wgsl`, `box_iou.wgsl` and `box_coder.wgsl`: the same
//! formulas in the same order, so that the backends agree to the last bit where division and
//! `log`/`exp` are correctly rounded (as on lavapipe) and to a few ulps elsewhere.

use rayon::prelude::*;

/// Box area `(x2 - x1)(y2 - y1)`.
#[inline(always)]
pub fn area(b: [f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// torchvision's IoU of one pair, 0 when the union is 0 (never NaN).
#[inline(always)]
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// `(dx, dy, dw, dh)` of `gt` relative to `anchor`, scaled by `weights`.
#[inline(always)]
pub fn encode(gt: [f32; 4], anchor: [f32; 4], weights: [f32; 4]) -> [f32; 4] {
    let aw = anchor[2] - anchor[0];
    let ah = anchor[3] - anchor[1];
    let acx = anchor[0] + 0.5 * aw;
    let acy = anchor[1] + 0.5 * ah;
    let gw = gt[2] - gt[0];
    let gh = gt[3] - gt[1];
    let gcx = gt[0] + 0.5 * gw;
    let gcy = gt[1] + 0.5 * gh;
    [
        weights[0] * (gcx - acx) / aw,
        weights[1] * (gcy - acy) / ah,
        weights[2] * (gw / aw).ln(),
        weights[3] * (gh / ah).ln(),
    ]
}

/// The box `deltas` describe relative to `anchor`; dw and dh are clamped at `clamp` before exp.
/// A NaN anywhere in the deltas, or a box whose coordinates overflow f32, gives an all-NaN box
/// (the shader's rule).
#[inline(always)]
pub fn decode(deltas: [f32; 4], anchor: [f32; 4], weights: [f32; 4], clamp: f32) -> [f32; 4] {
    if deltas.iter().any(|d| d.is_nan()) {
        return [f32::NAN; 4];
    }
    let (centre, half) = decode_parts(deltas, anchor, weights, clamp);
    let b = [
        centre[0] - half[0],
        centre[1] - half[1],
        centre[0] + half[0],
        centre[1] + half[1],
    ];
    if b.iter().all(|v| v.is_finite()) {
        b
    } else {
        [f32::NAN; 4]
    }
}

/// The decoded box's centre and half-sizes before its sides are formed (the shaders'
/// `decode_parts`); the deltas must not hold NaN.
pub fn decode_parts(deltas: [f32; 4], anchor: [f32; 4], weights: [f32; 4], clamp: f32) -> ([f32; 2], [f32; 2]) {
    let aw = anchor[2] - anchor[0];
    let ah = anchor[3] - anchor[1];
    let acx = anchor[0] + 0.5 * aw;
    let acy = anchor[1] + 0.5 * ah;
    let d = [
        deltas[0] / weights[0],
        deltas[1] / weights[1],
        deltas[2] / weights[2],
        deltas[3] / weights[3],
    ];
    let cx = d[0] * aw + acx;
    let cy = d[1] * ah + acy;
    let half_w = 0.5 * (d[2].min(clamp).exp() * aw);
    let half_h = 0.5 * (d[3].min(clamp).exp() * ah);
    ([cx, cy], [half_w, half_h])
}

/// IoU matrix `[a.len() x b.len()]`, row-major, rows in parallel.
pub fn iou_matrix(a: &[[f32; 4]], b: &[[f32; 4]]) -> Vec<f32> {
    let mut out = vec![0.0; a.len() * b.len()];
    iou_matrix_into(a, b, &mut out);
    out
}

/// [`iou_matrix`] into `out` (`a.len() * b.len()` values).
pub fn iou_matrix_into(a: &[[f32; 4]], b: &[[f32; 4]], out: &mut [f32]) {
    if b.is_empty() {
        return;
    }
    out.par_chunks_mut(b.len()).zip(a.par_iter()).for_each(|(row, &ai)| {
        for (o, &bj) in row.iter_mut().zip(b) {
            *o = iou(ai, bj);
        }
    });
}

/// Encodes every box against the anchor of the same index.
pub fn encode_all(boxes: &[[f32; 4]], anchors: &[[f32; 4]], weights: [f32; 4]) -> Vec<[f32; 4]> {
    boxes
        .par_iter()
        .zip(anchors)
        .map(|(&b, &a)| encode(b, a, weights))
        .collect()
}

/// Decodes every delta against the anchor of the same index.
pub fn decode_all(deltas: &[[f32; 4]], anchors: &[[f32; 4]], weights: [f32; 4], clamp: f32) -> Vec<[f32; 4]> {
    deltas
        .par_iter()
        .zip(anchors)
        .map(|(&d, &a)| decode(d, a, weights, clamp))
        .collect()
}
