//! Dispatch of `shaders/box_loss.wgsl` (with `reduce_sum.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::boxes::check_whole_binding;
use crate::gpu::buffer::{GpuBuffer, Readback};
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{Chunk, RowLayout, binds, plan_chunks, storage};
use crate::gpu::kernels::{Kernel, WG_SIZE};
use crate::gpu::reduce::{Normaliser, record_sum};
use crate::ops::box_loss::{BoxLoss, BoxLossInput, BoxLossKind, BoxReduction};

const FLAG_GIOU: u32 = 1;
const FLAG_GRAD: u32 = 2;
const FLAG_NORM_FROM_COUNTS: u32 = 4;

/// Must stay in sync with `Config` in shaders/box_loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BoxLossConfig {
    pub(crate) n_rows: u32,
    pub(crate) anchors_per_image: u32,
    pub(crate) first_row: u32,
    pub(crate) flags: u32,
    pub(crate) beta: f32,
    pub(crate) clamp: f32,
    pub(crate) norm_index: u32,
    pub(crate) norm_value: f32,
    pub(crate) weights: [f32; 4],
}

/// The buffers of a box loss recorded with [`GpuContext::record_box_loss`].
#[derive(Clone, Copy, Debug)]
pub struct BoxLossBuffers<'a> {
    /// Predicted deltas (`batch * anchors`).
    pub pred: &'a GpuBuffer<[f32; 4]>,
    /// Target deltas (`batch * anchors`), e.g. [`crate::gpu::AssignBuffers::box_targets`].
    pub targets: &'a GpuBuffer<[f32; 4]>,
    /// Per-anchor labels (`batch * anchors`); anchors with a label >= 0 count.
    pub labels: &'a GpuBuffer<i32>,
    /// One image's anchors.
    pub anchors: &'a GpuBuffer<[f32; 4]>,
    /// At least 3 elements; receives `[loss, unnormalised sum, normaliser]`.
    pub loss: &'a GpuBuffer<f32>,
    /// Receives d(loss)/d(pred), if given.
    pub grad: Option<&'a GpuBuffer<[f32; 4]>>,
    /// For [`BoxReduction::PerPositive`]: a device count of positives (`buffer[index]`), e.g.
    /// the matcher's batch total, used instead of counting the labels again.
    pub positives: Option<(&'a GpuBuffer<u32>, u32)>,
}

impl GpuContext {
    /// Records a box loss into `encoder`; gradient and `[loss, sum, normaliser]` stay on the
    /// device.
    pub fn record_box_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        loss: &BoxLoss,
        b: &BoxLossBuffers<'_>,
    ) -> Result<()> {
        loss.validate()?;
        let op = "GpuContext::record_box_loss";
        self.check_buffer(op, "pred", b.pred)?;
        self.check_buffer(op, "targets", b.targets)?;
        self.check_buffer(op, "labels", b.labels)?;
        self.check_buffer(op, "anchors", b.anchors)?;
        self.check_buffer(op, "loss", b.loss)?;
        if let Some(g) = b.grad {
            self.check_buffer(op, "grad", g)?;
        }
        if let Some((p, _)) = b.positives {
            self.check_buffer(op, "positives", p)?;
        }
        let n = b.pred.len() as u64;
        let a = b.anchors.len() as u64;
        if b.targets.len() as u64 != n || b.labels.len() as u64 != n {
            return Err(Error::shape(
                "box loss",
                format!(
                    "{n} predictions, {} targets and {} labels must agree",
                    b.targets.len(),
                    b.labels.len()
                ),
            ));
        }
        if n > 0 && (a == 0 || !n.is_multiple_of(a)) {
            return Err(Error::shape(
                "box loss",
                format!("{n} rows are not whole images of {a} anchors"),
            ));
        }
        if let Some(g) = b.grad
            && (g.len() as u64) < n
        {
            return Err(Error::shape(
                "box loss",
                format!("{n} predictions but grad holds {}", g.len()),
            ));
        }
        if b.loss.len() < 3 {
            return Err(Error::shape(
                "box loss",
                format!("the loss buffer needs 3 elements, it has {}", b.loss.len()),
            ));
        }
        if n == 0 {
            encoder.clear_buffer(b.loss.buffer(), 0, None);
            return Ok(());
        }
        check_whole_binding(self, "the anchors", b.anchors.byte_len())?;
        let counted;
        let normaliser = match (loss.reduction, b.positives) {
            (BoxReduction::Sum, _) => Normaliser::Constant(1.0),
            (BoxReduction::Normalized(v), _) => Normaliser::Constant(v),
            (BoxReduction::PerPositive, Some((buffer, index))) => {
                if index as usize >= buffer.len() {
                    return Err(Error::shape(
                        "box loss",
                        format!("positives index {index} in a buffer of {}", buffer.len()),
                    ));
                }
                Normaliser::Count {
                    counts: buffer.buffer(),
                    index,
                    scale: 1.0,
                }
            }
            (BoxReduction::PerPositive, None) => {
                counted = self.zeros::<u32>(2)?;
                // Every label >= 0 is a positive: count with an unbounded class range.
                self.record_count_labels(encoder, b.labels, n, i32::MAX as usize, &counted)?;
                Normaliser::Count {
                    counts: counted.buffer(),
                    index: 0,
                    scale: 1.0,
                }
            }
        };
        let (norm_flag, norm_index, norm_value, counts) = match normaliser {
            Normaliser::Constant(v) => (0, 0, v, None),
            Normaliser::Count { counts, index, scale } => (FLAG_NORM_FROM_COUNTS, index, scale, Some(counts)),
        };
        let (kind_flag, beta) = match loss.kind {
            BoxLossKind::SmoothL1 { beta } => (0, beta),
            BoxLossKind::Giou => (FLAG_GIOU, 0.0),
        };
        let flags = kind_flag | norm_flag | if b.grad.is_some() { FLAG_GRAD } else { 0 };
        let limits = self.limits();
        let mut row_bytes = vec![16, 16, 4];
        if b.grad.is_some() {
            row_bytes.push(16);
        }
        let plan = plan_chunks(
            limits,
            RowLayout {
                rows: n,
                elems_per_row: 1,
                row_bytes: &row_bytes,
                elems_per_workgroup: WG_SIZE,
                output_bytes: 4,
            },
        )?;
        self.scoped(|| {
            let partials = self.zeros::<f32>(plan.output_slots as usize)?;
            let spare_counts = self.zeros::<u32>(1)?;
            let spare_grad = self.zeros::<[f32; 4]>(1)?;
            let counts = counts.unwrap_or(spare_counts.buffer());
            let config = |c: &Chunk| BoxLossConfig {
                n_rows: (c.rows.end - c.rows.start) as u32,
                anchors_per_image: a as u32,
                first_row: (c.rows.start % a) as u32,
                flags,
                beta,
                clamp: loss.coder.clamp,
                norm_index,
                norm_value,
                weights: loss.coder.weights,
            };
            self.record_chunks(encoder, Kernel::BoxLoss, &plan, config, |chunk| {
                let (first, rows) = (chunk.rows.start, chunk.rows.end - chunk.rows.start);
                let grad = match b.grad {
                    Some(g) => storage(g.buffer(), first * 16, rows * 16),
                    None => storage(spare_grad.buffer(), 0, 16),
                };
                binds![
                    pred = storage(b.pred.buffer(), first * 16, rows * 16),
                    target_deltas = storage(b.targets.buffer(), first * 16, rows * 16),
                    labels = storage(b.labels.buffer(), first * 4, rows * 4),
                    anchors = storage(b.anchors.buffer(), 0, b.anchors.byte_len()),
                    counts = storage(counts, 0, counts.size().min(limits.max_storage_binding)),
                    grad = grad,
                    partials = storage(
                        partials.buffer(),
                        chunk.output_offset * 4,
                        u64::from(chunk.workgroups) * 4,
                    ),
                ]
            })?;
            record_sum(self, encoder, &partials, &normaliser, b.loss)
        })
    }
}

/// Host-slice box loss on the GPU; returns the sum and fills `grad`.
pub(crate) fn box_loss_host(
    ctx: &GpuContext,
    loss: &BoxLoss,
    input: &BoxLossInput<'_>,
    normaliser: f32,
    grad: &mut [[f32; 4]],
) -> Result<f64> {
    let pred = ctx.upload(input.pred)?;
    let targets = ctx.upload(input.targets)?;
    let labels = ctx.upload(input.labels)?;
    let anchors = ctx.upload(input.anchors)?;
    let loss_buf = ctx.zeros::<f32>(3)?;
    let grad_buf = ctx.zeros::<[f32; 4]>(input.pred.len())?;
    let mut encoder = ctx.encoder("box loss");
    let constant = loss.with_reduction(BoxReduction::Normalized(normaliser));
    ctx.record_box_loss(
        &mut encoder,
        &constant,
        &BoxLossBuffers {
            pred: &pred,
            targets: &targets,
            labels: &labels,
            anchors: &anchors,
            loss: &loss_buf,
            grad: Some(&grad_buf),
            positives: None,
        },
    )?;
    let mut readback = Readback::default();
    let (loss_slot, grad_slot) = (readback.add(&loss_buf), readback.add(&grad_buf));
    let mut results = readback.run(ctx, encoder)?;
    grad.copy_from_slice(&results.take(grad_slot));
    Ok(f64::from(results.take(loss_slot)[1]))
}
