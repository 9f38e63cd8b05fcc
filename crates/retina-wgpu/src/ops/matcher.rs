//! From ground truth to training targets: IoU matching (torchvision's `Matcher`) fused with the
//! per-anchor class labels of the focal loss, the encoded regression targets and the positive
//! counts, for a batch of images that each have their own number of boxes (0 is valid).
//!
//! Matching follows torchvision: an anchor takes the ground truth of highest IoU (the first one
//! on ties); below `low` it is background (-1), in `[low, high)` ignored (-2). With
//! `allow_low_quality_matches`, every ground truth keeps the anchors that have its highest IoU
//! (ties included): those anchors get back their best ground truth even below the thresholds.
//! One deliberate difference: a ground truth whose highest IoU is 0 (a zero-area box, or one
//! outside the image) claims nothing, where torchvision would make every anchor it does not
//! touch a positive.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::boxes::{BoxCoder, MAX_BOX_COORD, check_anchors};

/// IoU thresholds of the matcher (torchvision's RetinaNet: 0.5, 0.4, low-quality matches on).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matcher {
    /// IoU at or above which an anchor is positive.
    pub high: f32,
    /// IoU below which an anchor is background; in between it is ignored.
    pub low: f32,
    /// Let every ground truth keep the anchors of its highest IoU.
    pub allow_low_quality_matches: bool,
}

impl Default for Matcher {
    fn default() -> Self {
        Self {
            high: 0.5,
            low: 0.4,
            allow_low_quality_matches: true,
        }
    }
}

impl Matcher {
    /// Checks `0 <= low <= high <= 1`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0 <= self.low && self.low <= self.high && self.high <= 1.0) {
            return Err(Error::invalid(format!(
                "matcher thresholds must satisfy 0 <= low <= high <= 1, got low {} and high {}",
                self.low, self.high
            )));
        }
        Ok(())
    }
}

/// One image's ground truth: boxes `[x1, y1, x2, y2]` and their classes.
#[derive(Clone, Copy, Debug)]
pub struct GroundTruth<'a> {
    /// Boxes in pixels.
    pub boxes: &'a [[f32; 4]],
    /// Class of each box, in `[0, num_classes)`.
    pub classes: &'a [i32],
}

/// Matching, box coding and the number of classes: everything that turns ground truth into
/// per-anchor targets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetAssigner {
    /// IoU thresholds.
    pub matcher: Matcher,
    /// How regression targets are encoded.
    pub coder: BoxCoder,
    /// K: classes are in `[0, K)`.
    pub num_classes: usize,
}

impl TargetAssigner {
    /// RetinaNet's assignment for `num_classes` classes: thresholds 0.5 / 0.4 with low-quality
    /// matches, unit coder weights.
    pub fn new(num_classes: usize) -> Self {
        Self {
            matcher: Matcher::default(),
            coder: BoxCoder::default(),
            num_classes,
        }
    }

    /// Checks the parameters and the ground truth; errors name the image and the box.
    pub fn validate(&self, anchors: &[[f32; 4]], images: &[GroundTruth<'_>]) -> Result<()> {
        self.matcher.validate()?;
        self.coder.validate()?;
        if self.num_classes == 0 || i32::try_from(self.num_classes).is_err() {
            return Err(Error::invalid(format!(
                "target assignment: num_classes {} out of range",
                self.num_classes
            )));
        }
        check_anchors("target assignment", anchors)?;
        for (image, gt) in images.iter().enumerate() {
            if gt.boxes.len() != gt.classes.len() {
                return Err(Error::shape(
                    "target assignment",
                    format!(
                        "image {image} has {} boxes but {} classes",
                        gt.boxes.len(),
                        gt.classes.len()
                    ),
                ));
            }
            for (i, b) in gt.boxes.iter().enumerate() {
                if b.iter().any(|v| v.is_nan()) {
                    return Err(Error::invalid(format!(
                        "ground truth of image {image}, box {i}: {b:?} holds NaN"
                    )));
                }
                if b.iter().any(|v| v.is_infinite()) {
                    return Err(Error::invalid(format!(
                        "ground truth of image {image}, box {i}: {b:?} is not finite"
                    )));
                }
                if b.iter().any(|v| v.abs() > MAX_BOX_COORD) {
                    return Err(Error::invalid(format!(
                        "ground truth of image {image}, box {i}: {b:?} is outside the valid \
                         coordinate range [-1e18, 1e18]"
                    )));
                }
                if b[2] < b[0] || b[3] < b[1] {
                    return Err(Error::invalid(format!(
                        "ground truth of image {image}, box {i}: {b:?} has x2 < x1 or y2 < y1"
                    )));
                }
            }
            if let Some(i) = gt.classes.iter().position(|&c| c < 0 || c as usize >= self.num_classes) {
                return Err(Error::invalid(format!(
                    "ground truth of image {image}, box {i}: class {} outside [0, {})",
                    gt.classes[i], self.num_classes
                )));
            }
        }
        Ok(())
    }

    /// Per-anchor targets of a batch, on `backend`. `anchors` are one image's anchors (every
    /// image of the batch has the same size). On the GPU everything is written on the device in
    /// one command buffer ([`crate::GpuContext::record_assign_targets`]) and read back here.
    pub fn assign(
        &self,
        backend: &Backend,
        anchors: &[[f32; 4]],
        images: &[GroundTruth<'_>],
    ) -> Result<AssignedTargets> {
        self.validate(anchors, images)?;
        // matches, labels and box targets: 24 bytes per (image, anchor), on the host.
        let bytes = anchors.len() as u128 * images.len() as u128 * 24;
        crate::nn::check_host_bytes(
            &format!(
                "target assignment of {} images x {} anchors",
                images.len(),
                anchors.len()
            ),
            bytes,
        )?;
        match backend {
            Backend::Cpu => Ok(crate::cpu::matcher::assign(self, anchors, images)),
            Backend::Gpu(ctx) => crate::gpu::matcher::assign_host(ctx, self, anchors, images),
        }
    }
}

/// Per-anchor training targets of a batch: arrays are `[image][anchor]`, flattened.
#[derive(Clone, Debug, PartialEq)]
pub struct AssignedTargets {
    /// Anchors per image.
    pub anchors_per_image: usize,
    /// Matched ground-truth index within the image, -1 background, -2 ignored.
    pub matches: Vec<i32>,
    /// The focal loss's label: the matched box's class, -1 background, -2 ignored.
    pub labels: Vec<i32>,
    /// Encoded regression target of positive anchors; zero elsewhere.
    pub box_targets: Vec<[f32; 4]>,
    /// Positive anchors per image.
    pub positives: Vec<u32>,
}

impl AssignedTargets {
    /// Positive anchors in the batch (the loss normaliser before max(1, .)).
    pub fn total_positives(&self) -> u32 {
        self.positives.iter().sum()
    }
}
