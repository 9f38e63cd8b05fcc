//! Non-maximum suppression on either backend.
//!
//! - [`NmsKind::Hard`]: greedy NMS with exactly torchvision's semantics: boxes in decreasing
//!   score order; a box is dropped when its IoU with an already kept box is strictly greater
//!   than the threshold. Class-aware when classes are given ([`batched_nms`]), by comparing
//!   classes (no coordinate-offset trick, which loses f32 precision at large coordinates).
//!   On the GPU: a suppression bitmask over the upper triangle, then an on-device walk that
//!   stops once `max_output` boxes are kept.
//! - [`NmsKind::SoftLinear`] / [`NmsKind::SoftGaussian`]: Soft-NMS (Bodla et al. 2017): overlapping
//!   boxes are down-weighted instead of dropped, which recovers overlapping true positives; the
//!   kept boxes come back with their decayed scores, in decreasing order. One pick per step, so
//!   the GPU runs it in one workgroup per image: use it on a few thousand boxes, not 100,000.
//! - [`NmsKind::Matrix`]: Matrix NMS (SOLOv2): every score decays by its worst overlap with a
//!   higher-scoring box, compensated by how suppressed that box itself is; fully parallel, no
//!   sequential walk; results re-sorted by decayed score.
//! - [`NmsKind::Fast`]: Fast NMS (YOLACT): a box is dropped when any higher-scoring box overlaps
//!   it more than the threshold, kept or not; fully parallel, drops slightly more than greedy.
//!
//! NaN scores are never kept; a zero-area box has IoU 0 with everything (it is never suppressed
//! and suppresses nothing).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::boxes::check_boxes;

/// Which suppression.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NmsKind {
    /// Greedy hard NMS (torchvision's `nms` / `batched_nms`).
    Hard,
    /// Soft-NMS, linear: scores of boxes overlapping a kept box by more than the IoU threshold
    /// are multiplied by `1 - IoU`.
    SoftLinear,
    /// Soft-NMS, Gaussian: scores of overlapping boxes are multiplied by `exp(-IoU^2 / sigma)`
    /// (the IoU threshold is not used).
    SoftGaussian {
        /// The paper's sigma (0.5).
        sigma: f32,
    },
    /// Matrix NMS with a linear (`1 - IoU`) or Gaussian (`exp(-sigma IoU^2)`) kernel.
    Matrix {
        /// `None`: linear kernel; `Some(sigma)`: Gaussian kernel (SOLOv2 uses sigma 2).
        gaussian_sigma: Option<f32>,
    },
    /// Fast NMS (YOLACT).
    Fast,
}

/// Non-maximum suppression parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nms {
    /// The suppression.
    pub kind: NmsKind,
    /// IoU above which a box is suppressed (Hard, Fast, SoftLinear), in [0, 1].
    pub iou_threshold: f32,
    /// Soft-NMS and Matrix NMS drop boxes whose decayed score falls below this.
    pub score_threshold: f32,
    /// Keep at most this many boxes (per image); the greedy walk stops there.
    pub max_output: Option<usize>,
}

impl Nms {
    /// Greedy hard NMS at `iou_threshold`, no limit on the output.
    pub fn hard(iou_threshold: f32) -> Self {
        Self {
            kind: NmsKind::Hard,
            iou_threshold,
            score_threshold: 0.0,
            max_output: None,
        }
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: NmsKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the score threshold of Soft-NMS and Matrix NMS.
    pub fn with_score_threshold(mut self, score_threshold: f32) -> Self {
        self.score_threshold = score_threshold;
        self
    }

    /// Keeps at most `max_output` boxes.
    pub fn with_max_output(mut self, max_output: usize) -> Self {
        self.max_output = Some(max_output);
        self
    }

    /// Checks the thresholds and sigmas.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.iou_threshold) {
            return Err(Error::invalid(format!(
                "NMS IoU threshold must be in [0, 1], got {}",
                self.iou_threshold
            )));
        }
        if !self.score_threshold.is_finite() {
            return Err(Error::invalid(format!(
                "NMS score threshold must be finite, got {}",
                self.score_threshold
            )));
        }
        let sigma = match self.kind {
            NmsKind::SoftGaussian { sigma } => Some(sigma),
            NmsKind::Matrix { gaussian_sigma } => gaussian_sigma,
            _ => None,
        };
        if let Some(sigma) = sigma
            && !(sigma > 0.0 && sigma.is_finite())
        {
            return Err(Error::invalid(format!("NMS sigma must be finite and > 0, got {sigma}")));
        }
        if self.max_output.is_some_and(|m| u32::try_from(m).is_err()) {
            return Err(Error::invalid("NMS max_output must fit in u32"));
        }
        Ok(())
    }

    /// Suppresses `boxes` with `scores` (class-aware when `classes` is given) on `backend`.
    pub fn run(
        &self,
        backend: &Backend,
        boxes: &[[f32; 4]],
        scores: &[f32],
        classes: Option<&[i32]>,
    ) -> Result<NmsOutput> {
        self.validate()?;
        if boxes.len() != scores.len() || classes.is_some_and(|c| c.len() != boxes.len()) {
            return Err(Error::shape(
                "NMS",
                format!(
                    "{} boxes, {} scores and {:?} classes must agree",
                    boxes.len(),
                    scores.len(),
                    classes.map(<[i32]>::len)
                ),
            ));
        }
        check_boxes("NMS", boxes)?;
        if boxes.is_empty() || self.max_output == Some(0) {
            return Ok(NmsOutput {
                keep: Vec::new(),
                scores: Vec::new(),
            });
        }
        match backend {
            Backend::Cpu => Ok(crate::cpu::nms::nms(self, boxes, scores, classes)),
            Backend::Gpu(ctx) => crate::gpu::nms::nms_host(ctx, self, boxes, scores, classes),
        }
    }
}

/// What NMS keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct NmsOutput {
    /// Indices of the kept boxes, in decreasing (decayed, for Soft and Matrix NMS) score order.
    pub keep: Vec<u32>,
    /// Their scores (decayed for Soft and Matrix NMS).
    pub scores: Vec<f32>,
}

/// torchvision's `nms`: indices of the boxes greedy NMS keeps, in decreasing score order.
pub fn nms(backend: &Backend, boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Result<Vec<u32>> {
    Ok(Nms::hard(iou_threshold).run(backend, boxes, scores, None)?.keep)
}

/// torchvision's `batched_nms`: greedy NMS within each class.
pub fn batched_nms(
    backend: &Backend,
    boxes: &[[f32; 4]],
    scores: &[f32],
    classes: &[i32],
    iou_threshold: f32,
) -> Result<Vec<u32>> {
    Ok(Nms::hard(iou_threshold)
        .run(backend, boxes, scores, Some(classes))?
        .keep)
}
