//! RetinaNet's inference post-processing, per image of a batch (torchvision's
//! `RetinaNet.postprocess_detections`): scores are the sigmoid of the classification logits;
//! per pyramid level, those above the score threshold, at most `topk_per_level` of them; their
//! boxes decoded from the regression deltas and clipped to the image; class-aware NMS; then at
//! most `max_detections` by score.
//!
//! The score threshold is applied to logits: `score > t` is evaluated as
//! `logit > ln(t / (1 - t))`, the same comparison on both backends, so that no score is computed
//! for the millions of logits that do not pass. Ties in the per-level top-k go to the lower
//! (anchor, class) index, ties in the final order to the lower level and rank.
//!
//! On the GPU everything between the logits and the detections stays on the device:
//! [`crate::GpuContext::record_postprocess`] records it into any command encoder and leaves the
//! detections in a buffer a render pass can bind; [`PostProcess::run`] reads them back once.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::boxes::{BoxCoder, check_anchors};
use crate::ops::nms::Nms;

/// Post-processing parameters (torchvision's RetinaNet defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PostProcess {
    /// Scores at or below this are dropped before the top-k (0.05).
    pub score_threshold: f32,
    /// Candidates kept per level and image before NMS (1000).
    pub topk_per_level: usize,
    /// The suppression: kind and IoU threshold (hard NMS at 0.5). Its `max_output` is ignored;
    /// `max_detections` applies.
    pub nms: Nms,
    /// Detections per image after NMS (100).
    pub max_detections: usize,
    /// Decodes the regression deltas.
    pub coder: BoxCoder,
    /// Clip boxes to the image.
    pub clip_to_image: bool,
}

impl Default for PostProcess {
    fn default() -> Self {
        Self {
            score_threshold: 0.05,
            topk_per_level: 1000,
            nms: Nms::hard(0.5),
            max_detections: 100,
            coder: BoxCoder::default(),
            clip_to_image: true,
        }
    }
}

/// One detection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Box `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f32; 4],
    /// Score (decayed, for Soft and Matrix NMS).
    pub score: f32,
    /// Class index.
    pub class: u32,
}

/// The network outputs of a batch, in the crate's anchor order.
#[derive(Clone, Copy, Debug)]
pub struct DetectionInput<'a> {
    /// Classification logits `[batch, anchors, classes]`.
    pub logits: &'a [f32],
    /// Regression deltas `[batch, anchors]`.
    pub deltas: &'a [[f32; 4]],
    /// One image's anchors.
    pub anchors: &'a [[f32; 4]],
    /// First anchor of each level, and the total at the end
    /// ([`crate::AnchorConfig::level_offsets`]).
    pub level_offsets: &'a [usize],
    /// K.
    pub num_classes: usize,
    /// `(height, width)` of the images, for clipping.
    pub image_size: (u32, u32),
}

impl DetectionInput<'_> {
    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.deltas.len() / self.anchors.len().max(1)
    }

    /// Checks shapes and offsets.
    pub fn validate(&self) -> Result<()> {
        check_shapes(
            self.logits.len(),
            self.deltas.len(),
            self.anchors.len(),
            self.num_classes,
            self.level_offsets,
        )?;
        check_anchors("post-processing", self.anchors)
    }
}

impl PostProcess {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        self.nms.validate()?;
        self.coder.validate()?;
        if !(0.0..1.0).contains(&self.score_threshold) {
            return Err(Error::invalid(format!(
                "score threshold must be in [0, 1), got {}",
                self.score_threshold
            )));
        }
        if self.topk_per_level == 0 || self.max_detections == 0 {
            return Err(Error::invalid("topk_per_level and max_detections must be >= 1"));
        }
        if u32::try_from(self.topk_per_level).is_err() || u32::try_from(self.max_detections).is_err() {
            return Err(Error::invalid("topk_per_level and max_detections must fit in u32"));
        }
        Ok(())
    }

    /// The logit threshold equivalent to the score threshold (`None`: no threshold).
    pub(crate) fn logit_threshold(&self) -> Option<f32> {
        let t = self.score_threshold;
        (t > 0.0).then(|| (t / (1.0 - t)).ln())
    }

    /// Detections of every image of the batch, in decreasing score order. A batch of no images
    /// gives no result on either backend (and no dispatch). A NaN in an anchor's deltas gives
    /// that candidate an all-NaN box on both backends (clipped or not), which keeps its score
    /// and suppresses nothing; NaN logits are never selected.
    pub fn run(&self, backend: &Backend, input: &DetectionInput<'_>) -> Result<Vec<Vec<Detection>>> {
        self.validate()?;
        input.validate()?;
        match backend {
            Backend::Cpu => Ok(crate::cpu::postprocess::postprocess(self, input)),
            Backend::Gpu(ctx) => crate::gpu::postprocess::postprocess_host(ctx, self, input),
        }
    }
}

/// The shape rules of post-processing, shared by the host and the device-buffer paths: `logits`
/// holds `deltas / 4 * num_classes` values, the deltas are whole images of `anchors` boxes, and
/// the level offsets rise from 0 to the anchor count. Counts are in elements of each buffer's
/// own type (one delta or anchor is one box). Returns the batch size.
pub(crate) fn check_shapes(
    logits: usize,
    deltas: usize,
    anchors: usize,
    num_classes: usize,
    offsets: &[usize],
) -> Result<usize> {
    if num_classes == 0 {
        return Err(Error::invalid("post-processing: num_classes must be >= 1"));
    }
    if anchors == 0 || !deltas.is_multiple_of(anchors) {
        return Err(Error::shape(
            "post-processing",
            format!("{deltas} deltas are not whole images of {anchors} anchors"),
        ));
    }
    if deltas.checked_mul(num_classes) != Some(logits) {
        return Err(Error::shape(
            "post-processing",
            format!("{logits} logits but {deltas} deltas x {num_classes} classes"),
        ));
    }
    if offsets.len() < 2
        || offsets[0] != 0
        || offsets[offsets.len() - 1] != anchors
        || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::shape(
            "post-processing",
            format!("level offsets {offsets:?} must rise from 0 to the {anchors} anchors"),
        ));
    }
    Ok(deltas / anchors)
}
