//! Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017),
//! forward and backward in one fused pass, on either backend.
//!
//! `FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)`, computed from logits, with
//! `p_t = p` for target 1 and `1 - p` for target 0 (soft targets interpolate, as in
//! torchvision's `sigmoid_focal_loss`). The same kernel gives alpha-balanced cross entropy
//! (`gamma = 0`) and the paper's FL* (appendix A).
//!
//! ```no_run
//! use retina_wgpu::{Backend, FocalInput, FocalLoss};
//! # fn main() -> retina_wgpu::Result<()> {
//! let backend = Backend::gpu()?;
//! let logits = vec![0.3_f32, -2.0, 4.0, 0.1, -1.0, 2.5]; // 2 anchors x 3 classes
//! let labels = vec![2, -1]; // anchor 0 is class 2, anchor 1 background
//! let out = FocalLoss::retinanet().compute(&backend, &FocalInput::labels(&logits, &labels, 3))?;
//! println!("loss {} grad {:?}", out.loss, out.grad);
//! # Ok(()) }
//! ```
//!
//! Numerics: finite loss and gradient for every finite logit (tested to |x| = 1e4) and every
//! `gamma >= 0`, including `0 < gamma < 1`, where the textbook derivative of `(1 - p_t)^gamma`
//! divides by zero (torchvision returns NaN there). A non-finite logit or target gives NaN for
//! that element and a NaN loss ("NaN in, NaN out"); ignored anchors (label -2) contribute
//! exactly 0 whatever their logits hold.

use half::f16;

use crate::backend::Backend;
use crate::error::{Error, Result};

/// Per-anchor label meaning "background": every class target is 0.
pub const LABEL_BACKGROUND: i32 = -1;
/// Per-anchor label meaning "ignored": no loss and no gradient (IoU between the thresholds).
pub const LABEL_IGNORE: i32 = -2;

/// How per-element losses are reduced to the returned loss (and the gradient scaled to match).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reduction {
    /// No reduction: per-element losses are returned in [`FocalOutput::elementwise`];
    /// [`FocalOutput::loss`] is their sum and the gradient is that of the sum.
    None,
    /// Sum over all elements.
    Sum,
    /// Mean over the elements that take part: all of them with dense targets (torchvision's
    /// `"mean"`), those of non-ignored anchors with labels.
    Mean,
    /// Sum divided by the given normaliser: finite and at least `f32::MIN_POSITIVE` (a
    /// subnormal one is refused: GPUs flush it to zero, and its reciprocal is infinite). The
    /// loss and gradient are scaled by its reciprocal, so a normaliser below 1 scales them up
    /// and, with large enough losses, can overflow to infinity.
    Normalized(f32),
    /// Sum divided by max(1, number of positive anchors), as in RetinaNet. With labels the
    /// positives are anchors with a class label; with dense targets, rows with any target > 0.
    PerPositive,
}

/// Which loss the kernel computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FocalVariant {
    /// `-alpha_t (1 - p_t)^gamma log(p_t)`.
    Focal,
    /// The paper's FL* (appendix A): `p*_t = sigmoid(gamma x_t + beta)`,
    /// `loss = -alpha_t log(p*_t) / gamma`; needs `gamma > 0`.
    Star {
        /// The shift `beta`.
        beta: f32,
    },
}

/// Parameters of the focal loss. Build with [`FocalLoss::new`], [`FocalLoss::retinanet`],
/// [`FocalLoss::cross_entropy`] or [`FocalLoss::star`], then adjust with the `with_` methods.
///
/// Valid input: finite logits with `|x| <= 1e28`. Per element, loss and gradient are finite for
/// every finite logit (for FL*, while `gamma x + beta` is finite) and NaN for NaN or infinite
/// ones; within `1e28` the reduced loss is also finite (N <= 2^32 elements) and both backends
/// agree. Beyond it the per-element values stay finite, but a sum past `f32::MAX` is infinite
/// on the GPU (an f32 tree) while the CPU (an f64 sum) may still give a finite loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FocalLoss {
    /// Weight of the positive class, in [0, 1]; `None` weighs both classes 1 (torchvision's
    /// `alpha < 0`).
    pub alpha: Option<f32>,
    /// Focusing parameter, any real >= 0 (0 gives cross entropy).
    pub gamma: f32,
    /// Focal loss or FL*.
    pub variant: FocalVariant,
    /// How the loss is reduced.
    pub reduction: Reduction,
    /// Also return per-element losses (always on for [`Reduction::None`]).
    pub elementwise: bool,
}

impl Default for FocalLoss {
    /// torchvision's defaults: alpha 0.25, gamma 2, no reduction.
    fn default() -> Self {
        Self::new(Some(0.25), 2.0).with_reduction(Reduction::None)
    }
}

impl FocalLoss {
    /// Focal loss with the given alpha and gamma, summed.
    pub fn new(alpha: Option<f32>, gamma: f32) -> Self {
        Self {
            alpha,
            gamma,
            variant: FocalVariant::Focal,
            reduction: Reduction::Sum,
            elementwise: false,
        }
    }

    /// RetinaNet's loss: alpha 0.25, gamma 2, summed and divided by max(1, positive anchors).
    pub fn retinanet() -> Self {
        Self::new(Some(0.25), 2.0).with_reduction(Reduction::PerPositive)
    }

    /// (Alpha-balanced) binary cross entropy: the focal loss with gamma 0.
    pub fn cross_entropy(alpha: Option<f32>) -> Self {
        Self::new(alpha, 0.0)
    }

    /// The paper's FL* with `gamma > 0` and `beta` (appendix A; the paper's good setting is
    /// gamma 4, beta 0), no alpha, summed.
    pub fn star(gamma: f32, beta: f32) -> Self {
        Self {
            variant: FocalVariant::Star { beta },
            ..Self::new(None, gamma)
        }
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sets alpha.
    pub fn with_alpha(mut self, alpha: Option<f32>) -> Self {
        self.alpha = alpha;
        self
    }

    /// Also return per-element losses.
    pub fn with_elementwise(mut self, elementwise: bool) -> Self {
        self.elementwise = elementwise;
        self
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        if let Some(alpha) = self.alpha
            && !(0.0..=1.0).contains(&alpha)
        {
            return Err(Error::invalid(format!(
                "focal loss alpha must be in [0, 1] (or None), got {alpha}"
            )));
        }
        if !(self.gamma >= 0.0 && self.gamma.is_finite()) {
            return Err(Error::invalid(format!(
                "focal loss gamma must be finite and >= 0, got {}",
                self.gamma
            )));
        }
        if let FocalVariant::Star { beta } = self.variant {
            if self.gamma <= 0.0 {
                return Err(Error::invalid(format!(
                    "FL* divides by gamma: gamma must be > 0, got {}",
                    self.gamma
                )));
            }
            if !beta.is_finite() {
                return Err(Error::invalid(format!("FL* beta must be finite, got {beta}")));
            }
        }
        if let Reduction::Normalized(v) = self.reduction
            && !(v >= f32::MIN_POSITIVE && v.is_finite())
        {
            return Err(Error::invalid(format!(
                "focal loss normaliser must be finite and at least f32::MIN_POSITIVE ({:e}; a subnormal \
                 one has an infinite reciprocal), got {v:e}",
                f32::MIN_POSITIVE
            )));
        }
        Ok(())
    }

    /// Whether per-element losses are produced.
    pub fn wants_elementwise(&self) -> bool {
        self.elementwise || self.reduction == Reduction::None
    }

    /// Loss and gradient with respect to the logits (of the reduced loss).
    pub fn compute(&self, backend: &Backend, input: &FocalInput<'_>) -> Result<FocalOutput> {
        self.run(backend, input, true)
    }

    /// Loss only (no gradient is computed or written): for evaluation.
    pub fn forward(&self, backend: &Backend, input: &FocalInput<'_>) -> Result<FocalOutput> {
        self.run(backend, input, false)
    }

    fn run(&self, backend: &Backend, input: &FocalInput<'_>, want_grad: bool) -> Result<FocalOutput> {
        self.validate()?;
        input.validate()?;
        let normaliser = self.host_normaliser(input);
        let n = input.logits.len();
        if n == 0 {
            return Ok(FocalOutput {
                loss: 0.0,
                sum: 0.0,
                normaliser,
                grad: want_grad.then(Vec::new),
                elementwise: self.wants_elementwise().then(Vec::new),
            });
        }
        let mut grad = want_grad.then(|| vec![0.0f32; n]);
        let mut elementwise = self.wants_elementwise().then(|| vec![0.0f32; n]);
        let sum = match backend {
            Backend::Cpu => crate::cpu::focal::focal_loss(
                self,
                input,
                1.0 / normaliser,
                grad.as_deref_mut(),
                elementwise.as_deref_mut(),
            ),
            Backend::Gpu(ctx) => crate::gpu::focal::focal_loss_host(
                ctx,
                self,
                input,
                normaliser,
                grad.as_deref_mut(),
                elementwise.as_deref_mut(),
            )?,
        };
        Ok(FocalOutput {
            loss: (sum / f64::from(normaliser)) as f32,
            sum,
            normaliser,
            grad,
            elementwise,
        })
    }

    /// The normaliser of the reduction, computed from host-side input.
    pub(crate) fn host_normaliser(&self, input: &FocalInput<'_>) -> f32 {
        let k = input.num_classes;
        match self.reduction {
            Reduction::None | Reduction::Sum => 1.0,
            Reduction::Normalized(v) => v,
            Reduction::Mean => {
                let kept = match input.targets {
                    Targets::Dense(t) => t.len(),
                    Targets::Labels(l) => l.iter().filter(|&&l| l != LABEL_IGNORE).count() * k,
                };
                (kept as f32).max(1.0)
            }
            Reduction::PerPositive => {
                let positives = match input.targets {
                    Targets::Dense(t) => t.chunks(k.max(1)).filter(|row| row.iter().any(|&v| v > 0.0)).count(),
                    Targets::Labels(l) => l.iter().filter(|&&l| l >= 0).count(),
                };
                (positives as f32).max(1.0)
            }
        }
    }
}

/// Logits in host memory: f32, or f16 as a storage format (arithmetic is f32 either way).
#[derive(Clone, Copy, Debug)]
pub enum Logits<'a> {
    /// f32 logits.
    F32(&'a [f32]),
    /// f16 logits.
    F16(&'a [f16]),
}

impl Logits<'_> {
    /// Number of logits.
    pub fn len(&self) -> usize {
        match self {
            Logits::F32(x) => x.len(),
            Logits::F16(x) => x.len(),
        }
    }

    /// True when there are no logits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [f32]> for Logits<'a> {
    fn from(x: &'a [f32]) -> Self {
        Logits::F32(x)
    }
}

impl<'a> From<&'a [f16]> for Logits<'a> {
    fn from(x: &'a [f16]) -> Self {
        Logits::F16(x)
    }
}

impl<'a> From<&'a Vec<f32>> for Logits<'a> {
    fn from(x: &'a Vec<f32>) -> Self {
        Logits::F32(x)
    }
}

impl<'a> From<&'a Vec<f16>> for Logits<'a> {
    fn from(x: &'a Vec<f16>) -> Self {
        Logits::F16(x)
    }
}

impl<'a, const N: usize> From<&'a [f32; N]> for Logits<'a> {
    fn from(x: &'a [f32; N]) -> Self {
        Logits::F32(x)
    }
}

/// Targets in host memory.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One f32 in [0, 1] per logit (torchvision's form; soft targets allowed).
    Dense(&'a [f32]),
    /// One label per row of `num_classes` logits: `k >= 0` class k, [`LABEL_BACKGROUND`] (-1),
    /// [`LABEL_IGNORE`] (-2). RetinaNet's form: 4 / K bytes of target per logit.
    Labels(&'a [i32]),
}

/// The input of a focal loss: logits `[N, K]` row-major and their targets.
#[derive(Clone, Copy, Debug)]
pub struct FocalInput<'a> {
    /// `N * K` logits.
    pub logits: Logits<'a>,
    /// Dense `N * K` targets or `N` labels.
    pub targets: Targets<'a>,
    /// K, the number of classes (logits per row).
    pub num_classes: usize,
}

impl<'a> FocalInput<'a> {
    /// Logits with one label per row of `num_classes`.
    pub fn labels(logits: impl Into<Logits<'a>>, labels: &'a [i32], num_classes: usize) -> Self {
        Self {
            logits: logits.into(),
            targets: Targets::Labels(labels),
            num_classes,
        }
    }

    /// Logits with dense targets, rows of `num_classes`.
    pub fn dense(logits: impl Into<Logits<'a>>, targets: &'a [f32], num_classes: usize) -> Self {
        Self {
            logits: logits.into(),
            targets: Targets::Dense(targets),
            num_classes,
        }
    }

    /// Number of rows (anchors).
    pub fn rows(&self) -> usize {
        self.logits.len() / self.num_classes.max(1)
    }

    /// Checks shapes and target ranges (NaN targets are allowed: they give NaN).
    pub fn validate(&self) -> Result<()> {
        let n = self.logits.len();
        let k = self.num_classes;
        if k == 0 {
            return Err(Error::invalid("focal loss: num_classes must be >= 1"));
        }
        if !n.is_multiple_of(k) {
            return Err(Error::shape(
                "focal loss",
                format!("{n} logits are not rows of num_classes = {k}"),
            ));
        }
        if u32::try_from(k).is_err() {
            return Err(Error::invalid(format!("focal loss: num_classes = {k} exceeds u32")));
        }
        match self.targets {
            Targets::Dense(t) => {
                if t.len() != n {
                    return Err(Error::shape(
                        "focal loss",
                        format!("{n} logits but {} dense targets", t.len()),
                    ));
                }
                if let Some(i) = t.iter().position(|&v| !v.is_nan() && !(0.0..=1.0).contains(&v)) {
                    return Err(Error::invalid(format!(
                        "focal loss: dense target {i} is {}, outside [0, 1]",
                        t[i]
                    )));
                }
            }
            Targets::Labels(l) => {
                if l.len() != n / k {
                    return Err(Error::shape(
                        "focal loss",
                        format!("{n} logits are {} rows of {k}, but there are {} labels", n / k, l.len()),
                    ));
                }
                if let Some(i) = l.iter().position(|&v| v < LABEL_IGNORE || v >= k as i32) {
                    return Err(Error::invalid(format!(
                        "focal loss: label {i} is {}; labels are a class in [0, {k}), -1 (background) or -2 (ignored)",
                        l[i]
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The result of a focal loss.
#[derive(Clone, Debug, PartialEq)]
pub struct FocalOutput {
    /// The reduced loss: `sum / normaliser`.
    pub loss: f32,
    /// The unnormalised sum of per-element losses.
    pub sum: f64,
    /// The normaliser of the reduction (1 for sum and none).
    pub normaliser: f32,
    /// d(loss)/d(logits), when requested.
    pub grad: Option<Vec<f32>>,
    /// Per-element losses, for [`Reduction::None`] or [`FocalLoss::with_elementwise`].
    pub elementwise: Option<Vec<f32>>,
}
