//! Online hard example mining (OHEM; Shrivastava et al., CVPR 2016) as a classification loss:
//! the baseline that the focal loss paper compares against (Lin et al., "Focal Loss for Dense
//! Object Detection", Table 1d), on either backend.
//!
//! Semantics (both backends, bit for bit in the selection):
//!
//! - Each anchor's loss is sigmoid cross entropy (the focal loss with gamma 0, optionally
//!   alpha-balanced) summed over its K classes. Labels: a class id `>= 0` is positive,
//!   [`LABEL_BACKGROUND`](crate::ops::focal::LABEL_BACKGROUND) (-1) negative,
//!   [`LABEL_IGNORE`] (-2) ignored: an ignored anchor is never ranked, never suppresses
//!   another and is never selected.
//! - Per image, anchors are ordered by that loss, descending (ties: lower anchor index first;
//!   a NaN loss, from a NaN logit, ranks first, as in `torch.sort(descending=True)`, so that it
//!   reaches the loss).
//! - If `nms_threshold` is set, greedy NMS runs over the *anchors' boxes* in that order: an
//!   anchor is suppressed if its IoU with an already kept anchor is `>` the threshold
//!   (torchvision's rule: strictly greater).
//! - Then anchors are selected from the survivors in loss order: without `positive_fraction`,
//!   the first `per_image`; with fraction f, detectron's sampler rule: positives =
//!   min(available positive survivors, floor(B * f)) highest-loss positives, negatives =
//!   min(available negative survivors, B - positives selected) highest-loss negatives.
//! - The classification loss is the sum of the selected anchors' losses / max(1, number
//!   selected in the whole batch); its gradient with respect to the logits is the cross-entropy
//!   gradient on the selected anchors' rows scaled by the same 1 / max(1, count), zero elsewhere.
//!
//! ```no_run
//! use retina_wgpu::Backend;
//! use retina_wgpu::ops::ohem::{Ohem, OhemInput};
//! # fn main() -> retina_wgpu::Result<()> {
//! let anchors = [[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [40.0, 40.0, 50.0, 50.0]];
//! let logits = [0.3_f32, -2.0, 4.0, 0.1, -1.0, 2.5]; // 1 image x 3 anchors x 2 classes
//! let labels = [1, -1, -1];
//! let ohem = Ohem::new(2).with_nms(0.7).with_positive_fraction(0.25);
//! let out = ohem.compute(&Backend::Cpu, &OhemInput::new(&logits, &labels, 2, &anchors))?;
//! println!("loss {} over {} anchors: {:?}", out.loss, out.count, out.selected);
//! # Ok(()) }
//! ```
//!
//! On the GPU the whole selection is recorded into one command encoder with no readback
//! ([`crate::GpuContext::record_ohem`]); `src/cpu/ohem.rs` is the CPU twin.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::boxes::check_boxes;
use crate::ops::focal::{FocalLoss, LABEL_IGNORE, Reduction};

/// Parameters of OHEM as a classification loss (see the module documentation for the exact
/// semantics). Build with [`Ohem::new`] and the `with_` methods.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ohem {
    /// B, the anchors selected per image (the paper tries 128, 256 and 512); >= 1.
    pub per_image: usize,
    /// IoU threshold of the greedy NMS over the anchors' boxes in loss order (the paper uses
    /// 0.7 and 0.5), in (0, 1]; an anchor is suppressed when its IoU with a kept anchor is
    /// strictly greater. `None`: no NMS.
    pub nms_threshold: Option<f32>,
    /// The share of B reserved for positives, in (0, 1]: `Some(0.25)` is the paper's 1:3
    /// variant (floor(B * f) positives at most, negatives fill the rest). `None`: the B
    /// highest-loss anchors whatever their labels.
    pub positive_fraction: Option<f32>,
    /// Alpha-balanced cross entropy with this weight of the positive class, in [0, 1]; `None`
    /// (the default) is plain cross entropy.
    pub alpha: Option<f32>,
}

impl Ohem {
    /// OHEM with `per_image` anchors per image, no NMS, no positive quota, plain cross entropy.
    pub fn new(per_image: usize) -> Self {
        Self {
            per_image,
            nms_threshold: None,
            positive_fraction: None,
            alpha: None,
        }
    }

    /// Sets the NMS IoU threshold (suppression when IoU > `threshold`).
    pub fn with_nms(mut self, threshold: f32) -> Self {
        self.nms_threshold = Some(threshold);
        self
    }

    /// Sets the positive fraction (detectron's sampler rule).
    pub fn with_positive_fraction(mut self, fraction: f32) -> Self {
        self.positive_fraction = Some(fraction);
        self
    }

    /// Sets alpha (`None`: plain cross entropy).
    pub fn with_alpha(mut self, alpha: Option<f32>) -> Self {
        self.alpha = alpha;
        self
    }

    /// Checks every parameter's range: B >= 1 (and within u32), the threshold and the fraction
    /// in (0, 1], alpha in [0, 1]; NaN is rejected everywhere.
    pub fn validate(&self) -> Result<()> {
        if self.per_image == 0 {
            return Err(Error::invalid(
                "OHEM per_image (B, the anchors selected per image) must be >= 1, got 0",
            ));
        }
        if u32::try_from(self.per_image).is_err() {
            return Err(Error::invalid(format!(
                "OHEM per_image must fit in u32, got {}",
                self.per_image
            )));
        }
        if let Some(t) = self.nms_threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(Error::invalid(format!(
                "OHEM NMS threshold must be in (0, 1] (or None for no NMS), got {t}"
            )));
        }
        if let Some(f) = self.positive_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(Error::invalid(format!(
                "OHEM positive fraction must be in (0, 1] (or None for no quota), got {f}"
            )));
        }
        if let Some(a) = self.alpha
            && !(0.0..=1.0).contains(&a)
        {
            return Err(Error::invalid(format!(
                "OHEM alpha must be in [0, 1] (or None for plain cross entropy), got {a}"
            )));
        }
        Ok(())
    }

    /// The most positives selected per image with a positive fraction f: floor(B * f)
    /// (computed in f64, as detectron's `int(B * f)`); `None` without a fraction.
    pub fn positive_quota(&self) -> Option<usize> {
        self.positive_fraction
            .map(|f| (self.per_image as f64 * f64::from(f)).floor() as usize)
    }

    /// The per-element loss both backends rank by: the focal loss with gamma 0 and this alpha,
    /// summed, with per-element output.
    pub fn cross_entropy(&self) -> FocalLoss {
        FocalLoss::cross_entropy(self.alpha)
            .with_reduction(Reduction::Sum)
            .with_elementwise(true)
    }

    /// The OHEM loss of `input` and its gradient on `backend`.
    pub fn compute(&self, backend: &Backend, input: &OhemInput<'_>) -> Result<OhemOutput> {
        self.validate()?;
        input.validate()?;
        let rows = input.labels.len();
        let r = input.anchors.len();
        let images = input.images();
        if rows == 0 {
            return Ok(OhemOutput {
                loss: 0.0,
                sum: 0.0,
                count: 0,
                selected: vec![Vec::new(); images],
                grad: Vec::new(),
            });
        }
        let mut grad = vec![0.0f32; input.logits.len()];
        let mut mask = vec![0u32; rows];
        let (loss, sum) = match backend {
            Backend::Cpu => {
                let (sum, count) = crate::cpu::ohem::ohem(self, input, &mut grad, &mut mask);
                ((sum / count.max(1) as f64) as f32, sum)
            }
            Backend::Gpu(ctx) => {
                let [loss, sum, _] = crate::gpu::ohem::ohem_host(ctx, self, input, &mut grad, &mut mask)?;
                (loss, f64::from(sum))
            }
        };
        let selected: Vec<Vec<u32>> = mask
            .chunks(r)
            .map(|image| {
                image
                    .iter()
                    .enumerate()
                    .filter(|&(_, &m)| m != 0)
                    .map(|(j, _)| j as u32)
                    .collect()
            })
            .collect();
        Ok(OhemOutput {
            loss,
            sum,
            count: selected.iter().map(Vec::len).sum(),
            selected,
            grad,
        })
    }
}

/// The input of OHEM: a batch of images that share one set of anchors.
#[derive(Clone, Copy, Debug)]
pub struct OhemInput<'a> {
    /// `images * R * K` logits, row-major (image, anchor, class).
    pub logits: &'a [f32],
    /// `images * R` labels: a class in [0, K), -1 background, -2 ignored.
    pub labels: &'a [i32],
    /// K, the number of classes (logits per anchor).
    pub num_classes: usize,
    /// One image's `R` anchor boxes `[x1, y1, x2, y2]`, which NMS compares.
    pub anchors: &'a [[f32; 4]],
}

impl<'a> OhemInput<'a> {
    /// Logits and labels of `labels.len() / anchors.len()` images of `anchors.len()` anchors.
    pub fn new(logits: &'a [f32], labels: &'a [i32], num_classes: usize, anchors: &'a [[f32; 4]]) -> Self {
        Self {
            logits,
            labels,
            num_classes,
            anchors,
        }
    }

    /// Number of images (0 when there are no anchors).
    pub fn images(&self) -> usize {
        self.labels.len().checked_div(self.anchors.len()).unwrap_or(0)
    }

    /// Checks shapes, labels and boxes.
    pub fn validate(&self) -> Result<()> {
        let (k, r, rows) = (self.num_classes, self.anchors.len(), self.labels.len());
        if k == 0 || u32::try_from(k).is_err() {
            return Err(Error::invalid(format!(
                "OHEM: num_classes must be in [1, 2^32), got {k}"
            )));
        }
        if (r == 0 && rows != 0) || (r != 0 && !rows.is_multiple_of(r)) {
            return Err(Error::shape(
                "OHEM",
                format!("{rows} labels are not whole images of {r} anchors"),
            ));
        }
        if rows.checked_mul(k) != Some(self.logits.len()) {
            return Err(Error::shape(
                "OHEM",
                format!("{} logits for {rows} anchors of {k} classes", self.logits.len()),
            ));
        }
        if u32::try_from(rows).is_err() {
            return Err(Error::invalid(format!("OHEM: {rows} anchors in a batch exceed 2^32")));
        }
        if let Some(i) = self.labels.iter().position(|&l| l < LABEL_IGNORE || l >= k as i32) {
            return Err(Error::invalid(format!(
                "OHEM: label {i} is {}; labels are a class in [0, {k}), -1 (background) or -2 (ignored)",
                self.labels[i]
            )));
        }
        check_boxes("OHEM anchors", self.anchors)
    }
}

/// The result of [`Ohem::compute`].
#[derive(Clone, Debug, PartialEq)]
pub struct OhemOutput {
    /// The loss: `sum / max(1, count)`.
    pub loss: f32,
    /// The sum of the selected anchors' losses.
    pub sum: f64,
    /// Anchors selected in the whole batch.
    pub count: usize,
    /// Per image, the selected anchors' indices (within the image), increasing.
    pub selected: Vec<Vec<u32>>,
    /// d(loss)/d(logits): the cross-entropy gradient / max(1, count) on selected rows, 0
    /// elsewhere.
    pub grad: Vec<f32>,
}
