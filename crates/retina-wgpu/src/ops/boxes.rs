//! Box operations on either backend: pairwise IoU and the box coder. Boxes are
//! `[x1, y1, x2, y2]` in pixels.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// The largest box coordinate magnitude the box operations accept: `1e18` pixels. Within it,
/// every side is at most `2e18` and every area at most `4e36`, so areas, unions and IoU are
/// computed in f32 without overflow (beyond about `1.8e19` a side's square overflows and IoU
/// would be 0 or NaN). Boxes, anchors and ground truth outside `[-1e18, 1e18]` are refused.
pub const MAX_BOX_COORD: f32 = 1e18;

/// Checks one box's coordinates: finite and within [`MAX_BOX_COORD`].
fn check_coords(what: &str, kind: &str, i: usize, b: &[f32; 4]) -> Result<()> {
    if b.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{what}: {kind} {i} is {b:?}, which is not finite"
        )));
    }
    if b.iter().any(|v| v.abs() > MAX_BOX_COORD) {
        return Err(Error::invalid(format!(
            "{what}: {kind} {i} is {b:?}, outside the valid coordinate range [-1e18, 1e18]"
        )));
    }
    Ok(())
}

/// Checks that every box is finite, within [`MAX_BOX_COORD`], with `x1 <= x2` and `y1 <= y2`;
/// errors name the argument and the box.
pub(crate) fn check_boxes(what: &str, boxes: &[[f32; 4]]) -> Result<()> {
    for (i, b) in boxes.iter().enumerate() {
        check_coords(what, "box", i, b)?;
        if b[2] < b[0] || b[3] < b[1] {
            return Err(Error::invalid(format!(
                "{what}: box {i} is {b:?}, with x2 < x1 or y2 < y1"
            )));
        }
    }
    Ok(())
}

/// Checks that every anchor (or, with `kind` "box", every box that is divided by) is finite,
/// within [`MAX_BOX_COORD`], with positive width and height (they divide).
pub(crate) fn check_positive_boxes(what: &str, kind: &str, boxes: &[[f32; 4]]) -> Result<()> {
    for (i, b) in boxes.iter().enumerate() {
        check_coords(what, kind, i, b)?;
        if b[2] <= b[0] || b[3] <= b[1] {
            return Err(Error::invalid(format!(
                "{what}: {kind} {i} is {b:?}; it needs positive width and height (x2 > x1, y2 > y1)"
            )));
        }
    }
    Ok(())
}

/// Checks that every anchor is finite, within [`MAX_BOX_COORD`], with positive width and
/// height (they divide).
pub(crate) fn check_anchors(what: &str, anchors: &[[f32; 4]]) -> Result<()> {
    check_positive_boxes(what, "anchor", anchors)
}

/// Pairwise IoU `[a.len() x b.len()]`, row-major: torchvision's `box_iou`, except that a
/// zero-area box has IoU 0 with everything (torchvision gives NaN for two of them).
/// Boxes with NaN, x2 < x1 or a coordinate beyond [`MAX_BOX_COORD`] are an error, and so is a
/// matrix the host cannot hold.
pub fn box_iou(backend: &Backend, a: &[[f32; 4]], b: &[[f32; 4]]) -> Result<Vec<f32>> {
    check_boxes("box_iou (a)", a)?;
    check_boxes("box_iou (b)", b)?;
    if a.is_empty() || b.is_empty() {
        return Ok(Vec::new());
    }
    let len = a
        .len()
        .checked_mul(b.len())
        .ok_or_else(|| Error::invalid(format!("box_iou: {} x {} pairs overflow", a.len(), b.len())))?;
    match backend {
        Backend::Cpu => {
            let mut out = crate::nn::host_vec(len, 0.0f32, "an IoU matrix")?;
            crate::cpu::boxes::iou_matrix_into(a, b, &mut out);
            Ok(out)
        }
        Backend::Gpu(ctx) => crate::gpu::boxes::box_iou_host(ctx, a, b),
    }
}

/// The box coder of Faster R-CNN / RetinaNet (torchvision's `BoxCoder`): boxes as deltas
/// `(dx, dy, dw, dh)` relative to anchors, scaled by `weights`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    /// Multipliers of (dx, dy, dw, dh); RetinaNet uses (1, 1, 1, 1).
    pub weights: [f32; 4],
    /// dw and dh are clamped at this before `exp` when decoding (torchvision:
    /// `log(1000 / 16)`), so that a wild prediction cannot overflow.
    pub clamp: f32,
}

impl Default for BoxCoder {
    fn default() -> Self {
        Self {
            weights: [1.0; 4],
            clamp: (1000.0f32 / 16.0).ln(),
        }
    }
}

impl BoxCoder {
    /// Checks the weights (finite, > 0) and the clamp (not NaN, and at most `ln(f32::MAX)`,
    /// about 88.72, past which `exp` of a clamped delta is infinite).
    pub fn validate(&self) -> Result<()> {
        if self.weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(Error::invalid(format!(
                "box coder weights {:?} must be finite and > 0",
                self.weights
            )));
        }
        if self.clamp.is_nan() || self.clamp > f32::MAX.ln() {
            return Err(Error::invalid(format!(
                "box coder clamp {} must be at most ln(f32::MAX) = {} (torchvision's is ln(1000 / 16))",
                self.clamp,
                f32::MAX.ln()
            )));
        }
        Ok(())
    }

    /// Deltas of `boxes[i]` relative to `anchors[i]`. Boxes need positive width and height
    /// (their log is taken), like anchors.
    pub fn encode(&self, backend: &Backend, boxes: &[[f32; 4]], anchors: &[[f32; 4]]) -> Result<Vec<[f32; 4]>> {
        self.validate()?;
        if boxes.len() != anchors.len() {
            return Err(Error::shape(
                "BoxCoder::encode",
                format!("{} boxes but {} anchors", boxes.len(), anchors.len()),
            ));
        }
        check_positive_boxes(
            "BoxCoder::encode (ground-truth boxes, whose log is taken)",
            "box",
            boxes,
        )?;
        check_anchors("BoxCoder::encode (anchors)", anchors)?;
        match backend {
            Backend::Cpu => Ok(crate::cpu::boxes::encode_all(boxes, anchors, self.weights)),
            Backend::Gpu(ctx) => crate::gpu::boxes::coder_host(ctx, self, boxes, anchors, false),
        }
    }

    /// Boxes that `deltas[i]` describe relative to `anchors[i]`. NaN deltas give all-NaN boxes,
    /// and so do deltas whose box overflows f32 (a delta of 3e38, say): never an infinite box.
    pub fn decode(&self, backend: &Backend, deltas: &[[f32; 4]], anchors: &[[f32; 4]]) -> Result<Vec<[f32; 4]>> {
        self.validate()?;
        if deltas.len() != anchors.len() {
            return Err(Error::shape(
                "BoxCoder::decode",
                format!("{} deltas but {} anchors", deltas.len(), anchors.len()),
            ));
        }
        check_anchors("BoxCoder::decode", anchors)?;
        match backend {
            Backend::Cpu => Ok(crate::cpu::boxes::decode_all(deltas, anchors, self.weights, self.clamp)),
            Backend::Gpu(ctx) => crate::gpu::boxes::coder_host(ctx, self, deltas, anchors, true),
        }
    }
}
