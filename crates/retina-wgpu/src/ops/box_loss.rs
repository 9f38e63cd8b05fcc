//! Box regression losses over positive anchors, forward and backward in one pass: smooth L1 on
//! the deltas (Detectron's RetinaNet: beta 1/9; beta 0 is plain L1) or the GIoU loss of the
//! decoded boxes (torchvision's `generalized_box_iou_loss`), differentiated through the decode.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::boxes::{BoxCoder, check_anchors};

/// Which regression loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BoxLossKind {
    /// Smooth L1 on (dx, dy, dw, dh): `0.5 d^2 / beta` below `beta`, `|d| - 0.5 beta` above.
    SmoothL1 {
        /// Transition point, >= 0 (0 gives L1).
        beta: f32,
    },
    /// `1 - GIoU` of the predicted and target boxes, both decoded from deltas with the coder.
    Giou,
}

/// How the per-anchor losses are reduced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BoxReduction {
    /// Sum over positive anchors.
    Sum,
    /// Sum divided by max(1, positive anchors): RetinaNet's normalisation.
    PerPositive,
    /// Sum divided by the given normaliser: finite and at least `f32::MIN_POSITIVE` (a
    /// subnormal one is refused: GPUs flush it to zero, and its reciprocal is infinite). The
    /// loss and gradient are scaled by its reciprocal, so a normaliser below 1 scales them up
    /// and, with large enough losses, can overflow to infinity.
    Normalized(f32),
}

/// A box regression loss.
///
/// Valid input: finite deltas with `|d| <= 1e28` (and anchors as [`crate::BoxCoder`] takes
/// them); NaN in gives NaN out. Beyond `1e28` the per-element losses are finite, but a sum past
/// `f32::MAX` is infinite on the GPU while the CPU's f64 sum may not be. GIoU decodes the boxes
/// with their centres and half-sizes saturated at `1e18` pixels, so that any finite delta gives
/// a finite loss (at most 2 per anchor); the saturated parts get no gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxLoss {
    /// Smooth L1 or GIoU.
    pub kind: BoxLossKind,
    /// The coder that turns deltas into boxes (GIoU) and whose clamp stops the gradient.
    pub coder: BoxCoder,
    /// The reduction.
    pub reduction: BoxReduction,
}

impl Default for BoxLoss {
    /// RetinaNet's: smooth L1 with beta 1/9, per positive anchor.
    fn default() -> Self {
        Self::smooth_l1(1.0 / 9.0)
    }
}

impl BoxLoss {
    /// Smooth L1 with `beta`, per positive anchor.
    pub fn smooth_l1(beta: f32) -> Self {
        Self {
            kind: BoxLossKind::SmoothL1 { beta },
            coder: BoxCoder::default(),
            reduction: BoxReduction::PerPositive,
        }
    }

    /// GIoU loss, per positive anchor.
    pub fn giou() -> Self {
        Self {
            kind: BoxLossKind::Giou,
            coder: BoxCoder::default(),
            reduction: BoxReduction::PerPositive,
        }
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: BoxReduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Checks beta, the coder and the normaliser.
    pub fn validate(&self) -> Result<()> {
        self.coder.validate()?;
        if let BoxLossKind::SmoothL1 { beta } = self.kind
            && !(beta >= 0.0 && beta.is_finite())
        {
            return Err(Error::invalid(format!(
                "smooth L1 beta must be finite and >= 0, got {beta}"
            )));
        }
        if let BoxReduction::Normalized(v) = self.reduction
            && !(v >= f32::MIN_POSITIVE && v.is_finite())
        {
            return Err(Error::invalid(format!(
                "box loss normaliser must be finite and at least f32::MIN_POSITIVE ({:e}; a subnormal \
                 one has an infinite reciprocal), got {v:e}",
                f32::MIN_POSITIVE
            )));
        }
        Ok(())
    }

    /// Loss and d(loss)/d(pred) on `backend`.
    pub fn compute(&self, backend: &Backend, input: &BoxLossInput<'_>) -> Result<BoxLossOutput> {
        self.validate()?;
        input.validate()?;
        let normaliser = match self.reduction {
            BoxReduction::Sum => 1.0,
            BoxReduction::Normalized(v) => v,
            BoxReduction::PerPositive => (input.labels.iter().filter(|&&l| l >= 0).count() as f32).max(1.0),
        };
        let mut grad = vec![[0.0f32; 4]; input.pred.len()];
        let sum = match backend {
            Backend::Cpu => crate::cpu::box_loss::box_loss(self, input, normaliser, &mut grad),
            Backend::Gpu(ctx) => crate::gpu::box_loss::box_loss_host(ctx, self, input, normaliser, &mut grad)?,
        };
        Ok(BoxLossOutput {
            loss: (sum / f64::from(normaliser)) as f32,
            sum,
            normaliser,
            grad,
        })
    }
}

/// Inputs of a box loss: `[image][anchor]` rows, flattened.
#[derive(Clone, Copy, Debug)]
pub struct BoxLossInput<'a> {
    /// Predicted deltas, `batch * anchors`.
    pub pred: &'a [[f32; 4]],
    /// Target deltas (the matcher's `box_targets`), `batch * anchors`.
    pub targets: &'a [[f32; 4]],
    /// Per-anchor labels: anchors with a label >= 0 are positive and the only ones that count.
    pub labels: &'a [i32],
    /// One image's anchors (used by GIoU to decode).
    pub anchors: &'a [[f32; 4]],
}

impl BoxLossInput<'_> {
    /// Checks lengths and anchors.
    pub fn validate(&self) -> Result<()> {
        let n = self.pred.len();
        if self.targets.len() != n || self.labels.len() != n {
            return Err(Error::shape(
                "box loss",
                format!(
                    "{n} predictions, {} targets and {} labels must agree",
                    self.targets.len(),
                    self.labels.len()
                ),
            ));
        }
        if n > 0 && (self.anchors.is_empty() || !n.is_multiple_of(self.anchors.len())) {
            return Err(Error::shape(
                "box loss",
                format!("{n} rows are not whole images of {} anchors", self.anchors.len()),
            ));
        }
        check_anchors("box loss", self.anchors)
    }
}

/// The result of a box loss.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxLossOutput {
    /// `sum / normaliser`.
    pub loss: f32,
    /// Sum over positive anchors.
    pub sum: f64,
    /// The normaliser.
    pub normaliser: f32,
    /// d(loss)/d(pred), zero for anchors that are not positive.
    pub grad: Vec<[f32; 4]>,
}
