//! RetinaNet's training loss: anchors matched to the ground truth (torchvision's matcher, 0.5 /
//! 0.4, low-quality matches), a classification loss summed over non-ignored anchors and smooth
//! L1 (beta 1/9) on the encoded box targets of positive anchors, both divided by max(1, positive
//! anchors in the batch).
//!
//! The classification loss is a [`ClassLoss`] (focal loss, or OHEM as the paper's baseline), so
//! that other losses plug in without touching the model. An engine computes the loss through
//! [`LossEngine`]: the loss values stay in a small tensor that a training loop reads only when
//! it logs.

use crate::backend::Backend;
use crate::cpu::nn::{CpuEngine, CpuTensor};
use crate::error::{Error, Result};
use crate::gpu::{
    AssignBuffers, BoxLossBuffers, FocalBuffers, GroundTruthBuffers, LogitsBuffer, OhemBuffers, TargetsBuffer,
};
use crate::nn::{Engine, GpuEngine, GpuTensor, Shape};
use crate::ops::anchors::AnchorConfig;
use crate::ops::box_loss::{BoxLoss, BoxLossInput, BoxReduction};
use crate::ops::focal::{FocalInput, FocalLoss, Reduction};
use crate::ops::matcher::{GroundTruth, TargetAssigner};
use crate::ops::ohem::{Ohem, OhemInput};

/// One image size's anchors: the configuration (the GPU uses its cached device copy) and the
/// boxes on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorSet {
    /// The anchor configuration.
    pub config: AnchorConfig,
    /// Image height the anchors cover.
    pub height: u32,
    /// Image width the anchors cover.
    pub width: u32,
    /// The anchors, in the crate's order (level, row, column, anchor).
    pub boxes: Vec<[f32; 4]>,
}

impl AnchorSet {
    /// The anchors of `config` for an image of `height x width`.
    pub fn new(config: AnchorConfig, height: u32, width: u32) -> Result<Self> {
        let boxes = config.generate(&Backend::Cpu, height, width)?;
        Ok(Self {
            config,
            height,
            width,
            boxes,
        })
    }
}

/// The classification loss of a detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClassLoss {
    /// Sigmoid focal loss with any alpha and gamma, FL*, or (gamma 0) alpha-balanced cross
    /// entropy, over every non-ignored anchor, divided by max(1, positive anchors).
    Focal(FocalLoss),
    /// Online hard example mining, the paper's baseline (Table 1d): (alpha-balanced) cross
    /// entropy over the `per_image` highest-loss anchors of each image, after NMS over the
    /// anchors' boxes and with an optional positive quota, divided by max(1, anchors selected in
    /// the batch); see [`crate::ops::ohem`] for the exact rule. The box loss is unchanged.
    Ohem(Ohem),
}

impl Default for ClassLoss {
    /// The paper's: focal loss with alpha 0.25 and gamma 2.
    fn default() -> Self {
        ClassLoss::Focal(FocalLoss::retinanet())
    }
}

/// The whole training loss of a RetinaNet.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionLoss {
    /// The classification loss.
    pub class_loss: ClassLoss,
    /// The box regression loss (smooth L1, beta 1/9).
    pub box_loss: BoxLoss,
    /// Matching and box encoding.
    pub assigner: TargetAssigner,
}

impl DetectionLoss {
    /// RetinaNet's loss for `num_classes` classes.
    pub fn retinanet(num_classes: usize) -> Self {
        Self {
            class_loss: ClassLoss::default(),
            box_loss: BoxLoss::smooth_l1(1.0 / 9.0),
            assigner: TargetAssigner::new(num_classes),
        }
    }

    /// The loss and its gradients for one batch, computed on `backend` from host rows:
    /// `class_rows` `[B * R * K]` logits, `box_rows` `[B * R]` deltas, `anchors` one image's
    /// `R` anchors, `images` the batch's ground truth.
    pub fn compute(
        &self,
        backend: &Backend,
        anchors: &[[f32; 4]],
        class_rows: &[f32],
        box_rows: &[[f32; 4]],
        images: &[GroundTruth<'_>],
    ) -> Result<HostLoss> {
        let (r, k) = (anchors.len(), self.assigner.num_classes);
        let b = images.len();
        if class_rows.len() != b * r * k || box_rows.len() != b * r {
            return Err(Error::shape(
                "detection loss",
                format!(
                    "{} class values and {} box rows for {b} images of {r} anchors and {k} classes",
                    class_rows.len(),
                    box_rows.len()
                ),
            ));
        }
        let targets = self.assigner.assign(backend, anchors, images)?;
        let normaliser = targets.total_positives().max(1) as f32;
        let (class_value, class_grad) = match self.class_loss {
            ClassLoss::Focal(focal) => {
                let focal = focal.with_reduction(Reduction::Normalized(normaliser));
                let class = focal.compute(backend, &FocalInput::labels(class_rows, &targets.labels, k))?;
                (class.loss, class.grad.expect("the focal loss returns its gradient"))
            }
            ClassLoss::Ohem(ohem) => {
                let class = ohem.compute(backend, &OhemInput::new(class_rows, &targets.labels, k, anchors))?;
                (class.loss, class.grad)
            }
        };
        let boxes = self
            .box_loss
            .with_reduction(BoxReduction::Normalized(normaliser))
            .compute(
                backend,
                &BoxLossInput {
                    pred: box_rows,
                    targets: &targets.box_targets,
                    labels: &targets.labels,
                    anchors,
                },
            )?;
        Ok(HostLoss {
            values: LossValues {
                class: class_value,
                boxes: boxes.loss,
                normaliser,
            },
            class_grad,
            box_grad: boxes.grad,
        })
    }
}

/// The loss of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossValues {
    /// Classification loss (already divided by max(1, positives); with
    /// [`ClassLoss::Ohem`], by max(1, anchors selected in the batch)).
    pub class: f32,
    /// Box loss (already divided by max(1, positives)).
    pub boxes: f32,
    /// What the box loss (and the focal loss) was divided by: max(1, positive anchors in the
    /// batch).
    pub normaliser: f32,
}

impl LossValues {
    /// Classification plus box loss.
    pub fn total(&self) -> f32 {
        self.class + self.boxes
    }

    /// The values as a loss tensor's contents `[class, boxes, normaliser]`.
    pub fn to_array(&self) -> [f32; 3] {
        [self.class, self.boxes, self.normaliser]
    }

    /// Reads `[class, boxes, normaliser]` back.
    pub fn from_array(v: &[f32]) -> Result<Self> {
        match v {
            [class, boxes, normaliser, ..] => Ok(Self {
                class: *class,
                boxes: *boxes,
                normaliser: *normaliser,
            }),
            _ => Err(Error::shape("loss values", format!("{} values, expected 3", v.len()))),
        }
    }
}

/// The loss of a batch computed from host rows, with the gradients of both row tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct HostLoss {
    /// The loss.
    pub values: LossValues,
    /// d(loss)/d(class rows).
    pub class_grad: Vec<f32>,
    /// d(loss)/d(box rows).
    pub box_grad: Vec<[f32; 4]>,
}

/// The loss of a batch on an engine: the values as a `[1, 1, 1, 3]` tensor
/// (`[class, boxes, normaliser]`, read it when logging) and the gradients of the two row tensors.
pub struct EngineLoss<T> {
    /// `[class, boxes, normaliser]`.
    pub values: T,
    /// d(loss)/d(class rows), shaped like them.
    pub class_grad: T,
    /// d(loss)/d(box rows), shaped like them.
    pub box_grad: T,
}

/// An engine that computes the detection loss on its own tensors.
pub trait LossEngine: Engine {
    /// The loss of `class_rows` `[B, 1, R, K]` and `box_rows` `[B, 1, R, 4]` against `images`
    /// (one ground truth per image) with `anchors` (one image's `R` anchors).
    fn detection_loss(
        &mut self,
        loss: &DetectionLoss,
        anchors: &AnchorSet,
        class_rows: &Self::Tensor,
        box_rows: &Self::Tensor,
        images: &[GroundTruth<'_>],
    ) -> Result<EngineLoss<Self::Tensor>>;
}

impl LossEngine for CpuEngine<f32> {
    fn detection_loss(
        &mut self,
        loss: &DetectionLoss,
        anchors: &AnchorSet,
        class_rows: &CpuTensor<f32>,
        box_rows: &CpuTensor<f32>,
        images: &[GroundTruth<'_>],
    ) -> Result<EngineLoss<CpuTensor<f32>>> {
        let (cs, bs) = check_rows(loss, anchors, class_rows.shape(), box_rows.shape(), images)?;
        let host = loss.compute(
            &Backend::Cpu,
            &anchors.boxes,
            class_rows.data(),
            bytemuck::cast_slice(box_rows.data()),
            images,
        )?;
        Ok(EngineLoss {
            values: self.tensor(Shape::new(1, 1, 1, 3), &host.values.to_array())?,
            class_grad: self.tensor(cs, &host.class_grad)?,
            box_grad: self.tensor(bs, bytemuck::cast_slice(&host.box_grad))?,
        })
    }
}

/// Checks the row tensors' shapes against the anchors, classes and batch; returns them.
fn check_rows(
    loss: &DetectionLoss,
    anchors: &AnchorSet,
    cs: Shape,
    bs: Shape,
    images: &[GroundTruth<'_>],
) -> Result<(Shape, Shape)> {
    let (b, r, k) = (images.len(), anchors.boxes.len(), loss.assigner.num_classes);
    let want_c = Shape::new(b, 1, r, k);
    let want_b = Shape::new(b, 1, r, 4);
    if cs != want_c || bs != want_b {
        return Err(Error::shape(
            "detection loss",
            format!(
                "class rows {cs} and box rows {bs}; {b} images of {r} anchors and {k} classes need {want_c} and {want_b}"
            ),
        ));
    }
    Ok((cs, bs))
}

/// On the GPU the whole loss is recorded into the engine's encoder: matching, focal loss and
/// box loss read each other's buffers and the batch's positive count on the device, and the
/// values land in a tensor that is read only when the caller reads it.
impl LossEngine for GpuEngine {
    fn detection_loss(
        &mut self,
        loss: &DetectionLoss,
        anchors: &AnchorSet,
        class_rows: &GpuTensor,
        box_rows: &GpuTensor,
        images: &[GroundTruth<'_>],
    ) -> Result<EngineLoss<GpuTensor>> {
        let (cs, bs) = check_rows(loss, anchors, class_rows.shape(), box_rows.shape(), images)?;
        // The device does not check host data: the ground truth and anchors are checked here
        // (on the CPU, `TargetAssigner::assign` does it).
        loss.assigner.validate(&anchors.boxes, images)?;
        let (b, r, k) = (images.len(), anchors.boxes.len(), loss.assigner.num_classes);
        let ctx = self.context().clone();
        let anchor_buf = ctx.anchors(&anchors.config, anchors.height, anchors.width)?;
        let boxes: Vec<[f32; 4]> = images.iter().flat_map(|g| g.boxes.iter().copied()).collect();
        let classes: Vec<i32> = images.iter().flat_map(|g| g.classes.iter().copied()).collect();
        let mut offsets = vec![0u32];
        for g in images {
            offsets.push(offsets[offsets.len() - 1] + g.boxes.len() as u32);
        }
        let (gt_boxes, gt_classes, gt_offsets) = (ctx.upload(&boxes)?, ctx.upload(&classes)?, ctx.upload(&offsets)?);
        // The targets and the two losses' outputs in zero-filled tensors of the engine's pool
        // (a step then binds the same buffers as the step before, and allocates none), viewed
        // as the record_* functions' buffers; dropped (back to the pool) once recorded.
        let scratch: Vec<GpuTensor> = [b * r, b * r, 4 * b * r, b + 1, 3, 3]
            .into_iter()
            .map(|n| self.zeros(Shape::new(1, 1, 1, n)))
            .collect::<Result<_>>()?;
        let matches = scratch[0].view::<i32>(b * r)?;
        let labels = scratch[1].view::<i32>(b * r)?;
        let box_targets = scratch[2].view::<[f32; 4]>(b * r)?;
        let positives = scratch[3].view::<u32>(b + 1)?;
        let (class_out, box_out) = (scratch[4].view::<f32>(3)?, scratch[5].view::<f32>(3)?);
        let class_grad = self.zeros(cs)?;
        let box_grad = self.zeros(bs)?;
        let values = self.zeros(Shape::new(1, 1, 1, 3))?;
        let logits = class_rows.view::<f32>(cs.len())?;
        let pred = box_rows.view::<[f32; 4]>(b * r)?;
        let class_grad_view = class_grad.view::<f32>(cs.len())?;
        let box_grad_view = box_grad.view::<[f32; 4]>(b * r)?;
        let box_loss = loss.box_loss.with_reduction(BoxReduction::PerPositive);
        let encoder = self.encoder();
        let gt = GroundTruthBuffers {
            boxes: &gt_boxes,
            classes: &gt_classes,
            offsets: &gt_offsets,
        };
        let assigned = AssignBuffers {
            matches: &matches,
            labels: &labels,
            box_targets: &box_targets,
            positives: &positives,
        };
        ctx.record_assign_targets(encoder, &loss.assigner, &anchor_buf, &gt, &assigned)?;
        let total = Some((&positives, b as u32));
        match loss.class_loss {
            ClassLoss::Focal(focal) => {
                let focal_buffers = FocalBuffers {
                    logits: LogitsBuffer::F32(&logits),
                    targets: TargetsBuffer::Labels(&labels),
                    num_classes: k,
                    loss: &class_out,
                    grad: Some(&class_grad_view),
                    elementwise: None,
                    positives: total,
                };
                ctx.record_focal_loss(encoder, &focal.with_reduction(Reduction::PerPositive), &focal_buffers)?;
            }
            ClassLoss::Ohem(ohem) => {
                let ohem_buffers = OhemBuffers {
                    logits: LogitsBuffer::F32(&logits),
                    labels: &labels,
                    anchors: &anchor_buf,
                    num_classes: k,
                    loss: &class_out,
                    grad: &class_grad_view,
                    selected: None,
                };
                ctx.record_ohem(encoder, &ohem, &ohem_buffers)?;
            }
        }
        let box_buffers = BoxLossBuffers {
            pred: &pred,
            targets: &box_targets,
            labels: &labels,
            anchors: &anchor_buf,
            loss: &box_out,
            grad: Some(&box_grad_view),
            positives: total,
        };
        ctx.record_box_loss(encoder, &box_loss, &box_buffers)?;
        // [loss, sum, normaliser] of each: values = [class loss, box loss, normaliser], the
        // normaliser being the box loss's (the focal loss shares it; OHEM's is its own count).
        encoder.copy_buffer_to_buffer(class_out.buffer(), 0, values.buffer(), 0, 4);
        encoder.copy_buffer_to_buffer(box_out.buffer(), 0, values.buffer(), 4, 4);
        encoder.copy_buffer_to_buffer(box_out.buffer(), 8, values.buffer(), 8, 4);
        Ok(EngineLoss {
            values,
            class_grad,
            box_grad,
        })
    }
}
