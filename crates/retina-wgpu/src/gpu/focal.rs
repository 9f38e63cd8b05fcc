//! Dispatch of `shaders/focal_loss.wgsl` (with `count_labels.wgsl` and `reduce_sum.wgsl`):
//! on buffers already on the device, recorded into any command encoder, or on host slices.

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::buffer::{GpuBuffer, Readback};
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{Chunk, RowLayout, binds, plan_chunks, storage};
use crate::gpu::kernels::Kernel;
use crate::gpu::reduce::{Normaliser, record_sum};
use crate::ops::focal::{FocalInput, FocalLoss, FocalVariant, Logits, Reduction, Targets};

/// Elements one focal-loss workgroup handles (`TILE` in the shader).
const FOCAL_TILE: u64 = 1024;
/// Label rows one counting workgroup handles.
const COUNT_TILE: u64 = 1024;

const FLAG_LABELS: u32 = 1;
const FLAG_F16: u32 = 2;
const FLAG_ALPHA: u32 = 4;
const FLAG_STAR: u32 = 8;
const FLAG_GRAD: u32 = 16;
const FLAG_ELEMENTWISE: u32 = 32;
const FLAG_NORM_FROM_COUNTS: u32 = 64;

/// Must stay in sync with `Config` in shaders/focal_loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct FocalConfig {
    pub(crate) n_elements: u32,
    pub(crate) num_classes: u32,
    pub(crate) flags: u32,
    pub(crate) norm_index: u32,
    pub(crate) alpha: f32,
    pub(crate) gamma: f32,
    pub(crate) beta: f32,
    pub(crate) norm_value: f32,
}

/// Must stay in sync with `Config` in shaders/count_labels.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CountConfig {
    pub(crate) n_rows: u32,
    pub(crate) num_classes: u32,
    pub(crate) _pad: [u32; 2],
}

/// Logits on the device.
#[derive(Clone, Copy, Debug)]
pub enum LogitsBuffer<'a> {
    /// f32 logits.
    F32(&'a GpuBuffer<f32>),
    /// f16 logits (read with `unpack2x16float`, so any adapter can use them).
    F16(&'a GpuBuffer<f16>),
}

impl LogitsBuffer<'_> {
    fn len(&self) -> usize {
        match self {
            LogitsBuffer::F32(b) => b.len(),
            LogitsBuffer::F16(b) => b.len(),
        }
    }

    fn buffer(&self) -> &wgpu::Buffer {
        match self {
            LogitsBuffer::F32(b) => b.buffer(),
            LogitsBuffer::F16(b) => b.buffer(),
        }
    }

    fn element_bytes(&self) -> u64 {
        match self {
            LogitsBuffer::F32(_) => 4,
            LogitsBuffer::F16(_) => 2,
        }
    }
}

/// Targets on the device.
#[derive(Clone, Copy, Debug)]
pub enum TargetsBuffer<'a> {
    /// One f32 in [0, 1] per logit.
    Dense(&'a GpuBuffer<f32>),
    /// One i32 label per row (k >= 0, -1 background, -2 ignored).
    Labels(&'a GpuBuffer<i32>),
}

/// The buffers of a focal loss recorded with [`GpuContext::record_focal_loss`].
#[derive(Clone, Copy, Debug)]
pub struct FocalBuffers<'a> {
    /// `N * K` logits.
    pub logits: LogitsBuffer<'a>,
    /// Dense targets (`N * K`) or labels (`N`).
    pub targets: TargetsBuffer<'a>,
    /// K.
    pub num_classes: usize,
    /// At least 3 elements; receives `[loss, unnormalised sum, normaliser]`.
    pub loss: &'a GpuBuffer<f32>,
    /// Receives d(loss)/d(logits) (`N * K`), if given.
    pub grad: Option<&'a GpuBuffer<f32>>,
    /// Receives per-element losses (`N * K`), if given.
    pub elementwise: Option<&'a GpuBuffer<f32>>,
    /// For [`Reduction::PerPositive`]: a device count of positive anchors (`buffer[index]`),
    /// for instance the matcher's, used instead of counting the labels again.
    pub positives: Option<(&'a GpuBuffer<u32>, u32)>,
}

impl GpuContext {
    /// Records the focal loss of `buffers` into `encoder`: gradient, optional per-element loss
    /// and the reduced loss, all left on the device (nothing is submitted or read back).
    ///
    /// With labels, [`Reduction::PerPositive`] and [`Reduction::Mean`] count the labels on the
    /// device in the same command buffer. With dense targets, `PerPositive` needs
    /// [`FocalBuffers::positives`]. Inputs larger than the device's binding limit are split into
    /// chunks; grids longer than its dispatch limit are folded. Empty input clears `loss` to
    /// zeros without a dispatch.
    ///
    /// Labels already on the device are not checked (that would need a readback): a label
    /// outside `[-2, K)` makes every loss and gradient element of its row NaN, so the reduced
    /// loss is NaN and says so, and it is not counted as a positive. Host labels are checked by
    /// [`crate::FocalInput::validate`] instead. Per element, the loss and gradient are finite for
    /// every finite logit (for FL*, while `gamma * x + beta` is finite); the reduced loss is a
    /// sum in f32 and overflows to infinity only when the per-element losses add up past
    /// `f32::MAX` (logits of order `1e38 / N`).
    pub fn record_focal_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        loss: &FocalLoss,
        buffers: &FocalBuffers<'_>,
    ) -> Result<()> {
        loss.validate()?;
        self.check_focal_buffers(buffers)?;
        let n = buffers.logits.len();
        let k = buffers.num_classes;
        let rows = check_shapes(buffers)?;
        if n == 0 {
            encoder.clear_buffer(buffers.loss.buffer(), 0, None);
            return Ok(());
        }
        let labels = match buffers.targets {
            TargetsBuffer::Labels(l) => Some(l),
            TargetsBuffer::Dense(_) => None,
        };
        // Where the normaliser comes from: a constant, a count of the labels made on the
        // device in this command buffer, or a count the caller already has on the device.
        enum Source<'b> {
            Constant(f32),
            Counted {
                counts: GpuBuffer<u32>,
                index: u32,
                scale: f32,
            },
            External(&'b GpuBuffer<u32>, u32),
        }
        let source = match (loss.reduction, labels, buffers.positives) {
            (Reduction::None | Reduction::Sum, _, _) => Source::Constant(1.0),
            (Reduction::Normalized(v), _, _) => Source::Constant(v),
            (Reduction::Mean, None, _) => Source::Constant(n as f32),
            (Reduction::Mean, Some(_), _) => Source::Counted {
                counts: self.zeros(2)?,
                index: 1,
                scale: k as f32,
            },
            (Reduction::PerPositive, _, Some((buffer, index))) => {
                if index as usize >= buffer.len() {
                    return Err(Error::shape(
                        "focal loss",
                        format!("positives index {index} in a buffer of {}", buffer.len()),
                    ));
                }
                Source::External(buffer, index)
            }
            (Reduction::PerPositive, Some(_), None) => Source::Counted {
                counts: self.zeros(2)?,
                index: 0,
                scale: 1.0,
            },
            (Reduction::PerPositive, None, None) => {
                return Err(Error::invalid(
                    "focal loss on the GPU with dense targets and Reduction::PerPositive needs \
                     FocalBuffers::positives (or use labels, or Reduction::Normalized)",
                ));
            }
        };
        let (normaliser, counted) = match &source {
            Source::Constant(v) => (Normaliser::Constant(*v), None),
            Source::Counted { counts, index, scale } => (
                Normaliser::Count {
                    counts: counts.buffer(),
                    index: *index,
                    scale: *scale,
                },
                Some(counts),
            ),
            Source::External(buffer, index) => (
                Normaliser::Count {
                    counts: buffer.buffer(),
                    index: *index,
                    scale: 1.0,
                },
                None,
            ),
        };
        self.scoped(|| {
            if let (Some(counts), Some(labels)) = (counted, labels) {
                self.record_count_labels(encoder, labels, rows, k, counts)?;
            }
            let partials = self.record_focal_pass(encoder, loss, buffers, rows, &normaliser)?;
            record_sum(self, encoder, &partials, &normaliser, buffers.loss)
        })
    }

    /// Refuses buffers of another device.
    fn check_focal_buffers(&self, b: &FocalBuffers<'_>) -> Result<()> {
        let op = "GpuContext::record_focal_loss";
        match b.logits {
            LogitsBuffer::F32(l) => self.check_buffer(op, "logits", l)?,
            LogitsBuffer::F16(l) => self.check_buffer(op, "logits", l)?,
        }
        match b.targets {
            TargetsBuffer::Dense(t) => self.check_buffer(op, "targets", t)?,
            TargetsBuffer::Labels(t) => self.check_buffer(op, "labels", t)?,
        }
        self.check_buffer(op, "loss", b.loss)?;
        if let Some(g) = b.grad {
            self.check_buffer(op, "grad", g)?;
        }
        if let Some(e) = b.elementwise {
            self.check_buffer(op, "elementwise", e)?;
        }
        if let Some((p, _)) = b.positives {
            self.check_buffer(op, "positives", p)?;
        }
        Ok(())
    }

    pub(crate) fn record_count_labels(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        labels: &GpuBuffer<i32>,
        rows: u64,
        k: usize,
        counts: &GpuBuffer<u32>,
    ) -> Result<()> {
        let limits = self.limits();
        let plan = plan_chunks(
            limits,
            RowLayout {
                rows,
                elems_per_row: 1,
                row_bytes: &[4],
                elems_per_workgroup: COUNT_TILE,
                output_bytes: 0,
            },
        )?;
        let config = |c: &Chunk| CountConfig {
            n_rows: (c.rows.end - c.rows.start) as u32,
            num_classes: k as u32,
            _pad: [0; 2],
        };
        encoder.clear_buffer(counts.buffer(), 0, None);
        self.record_chunks(encoder, Kernel::CountLabels, &plan, config, |chunk| {
            let rows = chunk.rows.end - chunk.rows.start;
            binds![
                labels = storage(labels.buffer(), chunk.rows.start * 4, rows * 4),
                counts = storage(counts.buffer(), 0, 8),
            ]
        })
    }

    /// The fused per-element pass; returns the buffer of per-workgroup partial sums.
    fn record_focal_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        loss: &FocalLoss,
        buffers: &FocalBuffers<'_>,
        rows: u64,
        normaliser: &Normaliser<'_>,
    ) -> Result<GpuBuffer<f32>> {
        let limits = self.limits();
        let k = buffers.num_classes as u64;
        let logit_bytes = buffers.logits.element_bytes();
        let (target_buffer, target_row_bytes, mut flags) = match buffers.targets {
            TargetsBuffer::Dense(t) => (t.buffer(), 4 * k, 0),
            TargetsBuffer::Labels(l) => (l.buffer(), 4, FLAG_LABELS),
        };
        let mut row_bytes = vec![logit_bytes * k, target_row_bytes];
        if buffers.grad.is_some() {
            row_bytes.push(4 * k);
            flags |= FLAG_GRAD;
        }
        if buffers.elementwise.is_some() {
            row_bytes.push(4 * k);
            flags |= FLAG_ELEMENTWISE;
        }
        if matches!(buffers.logits, LogitsBuffer::F16(_)) {
            flags |= FLAG_F16;
        }
        if loss.alpha.is_some() {
            flags |= FLAG_ALPHA;
        }
        let beta = match loss.variant {
            FocalVariant::Star { beta } => {
                flags |= FLAG_STAR;
                beta
            }
            FocalVariant::Focal => 0.0,
        };
        let (norm_index, norm_value, counts_buffer) = match *normaliser {
            Normaliser::Constant(v) => (0, v, None),
            Normaliser::Count { counts, index, scale } => {
                flags |= FLAG_NORM_FROM_COUNTS;
                (index, scale, Some(counts))
            }
        };
        let plan = plan_chunks(
            limits,
            RowLayout {
                rows,
                elems_per_row: k,
                row_bytes: &row_bytes,
                elems_per_workgroup: FOCAL_TILE,
                output_bytes: 4,
            },
        )?;
        let partials = self.zeros::<f32>(plan.output_slots as usize)?;
        let config = |c: &Chunk| FocalConfig {
            n_elements: ((c.rows.end - c.rows.start) * k) as u32,
            num_classes: k as u32,
            flags,
            norm_index,
            alpha: loss.alpha.unwrap_or(1.0),
            gamma: loss.gamma,
            beta,
            norm_value,
        };
        // Unused bindings still need a buffer: a scratch word each (read-only and writable
        // bindings must not share one).
        let spare_read = self.zeros::<u32>(1)?;
        let spare_grad = self.zeros::<f32>(1)?;
        let spare_elementwise = self.zeros::<f32>(1)?;
        let counts = counts_buffer.unwrap_or(spare_read.buffer());
        self.record_chunks(encoder, Kernel::FocalLoss, &plan, config, |chunk| {
            let first = chunk.rows.start;
            let count = chunk.rows.end - chunk.rows.start;
            let elements = |bytes: u64| storage_range(first, count, k, bytes);
            let (grad_buffer, grad_range) = match buffers.grad {
                Some(g) => (g.buffer(), elements(4)),
                None => (spare_grad.buffer(), (0, 4)),
            };
            let (elem_buffer, elem_range) = match buffers.elementwise {
                Some(e) => (e.buffer(), elements(4)),
                None => (spare_elementwise.buffer(), (0, 4)),
            };
            let target_range = match buffers.targets {
                TargetsBuffer::Dense(_) => elements(4),
                TargetsBuffer::Labels(_) => (first * 4, count * 4),
            };
            let logit_range = elements(logit_bytes);
            binds![
                logits = storage(buffers.logits.buffer(), logit_range.0, logit_range.1),
                targets = storage(target_buffer, target_range.0, target_range.1),
                counts = storage(counts, 0, counts.size().min(limits.max_storage_binding)),
                grad = storage(grad_buffer, grad_range.0, grad_range.1),
                elementwise = storage(elem_buffer, elem_range.0, elem_range.1),
                partials = storage(
                    partials.buffer(),
                    chunk.output_offset * 4,
                    u64::from(chunk.workgroups) * 4,
                ),
            ]
        })?;
        Ok(partials)
    }
}

/// (byte offset, byte length) of rows `first..first + count` of `k` elements of `bytes` each.
fn storage_range(first: u64, count: u64, k: u64, bytes: u64) -> (u64, u64) {
    (first * k * bytes, count * k * bytes)
}

/// Checks the buffers' lengths against each other; returns the number of rows.
fn check_shapes(b: &FocalBuffers<'_>) -> Result<u64> {
    let n = b.logits.len();
    let k = b.num_classes;
    if k == 0 || u32::try_from(k).is_err() {
        return Err(Error::invalid(format!(
            "focal loss: num_classes must be in [1, 2^32), got {k}"
        )));
    }
    if !n.is_multiple_of(k) {
        return Err(Error::shape(
            "focal loss",
            format!("{n} logits are not rows of num_classes = {k}"),
        ));
    }
    let rows = n / k;
    match b.targets {
        TargetsBuffer::Dense(t) if t.len() != n => {
            return Err(Error::shape(
                "focal loss",
                format!("{n} logits but {} dense targets", t.len()),
            ));
        }
        TargetsBuffer::Labels(l) if l.len() != rows => {
            return Err(Error::shape(
                "focal loss",
                format!("{rows} rows of logits but {} labels", l.len()),
            ));
        }
        _ => {}
    }
    for (name, out) in [("grad", b.grad), ("elementwise", b.elementwise)] {
        if let Some(out) = out
            && out.len() < n
        {
            return Err(Error::shape(
                "focal loss",
                format!("{n} logits but {name} holds {}", out.len()),
            ));
        }
    }
    if b.loss.len() < 3 {
        return Err(Error::shape(
            "focal loss",
            format!("the loss buffer needs 3 elements, it has {}", b.loss.len()),
        ));
    }
    Ok(rows as u64)
}

/// The host-slice path of [`FocalLoss::compute`] on the GPU: uploads, records with a constant
/// normaliser (computed on the host), reads back. Inputs whose buffers would exceed the
/// device's `max_buffer_size` are processed in segments of whole rows. Returns the sum.
pub(crate) fn focal_loss_host(
    ctx: &GpuContext,
    loss: &FocalLoss,
    input: &FocalInput<'_>,
    normaliser: f32,
    mut grad: Option<&mut [f32]>,
    mut elementwise: Option<&mut [f32]>,
) -> Result<f64> {
    let k = input.num_classes;
    let rows = input.rows();
    let logit_bytes = match input.logits {
        Logits::F32(_) => 4,
        Logits::F16(_) => 2,
    };
    let target_bytes = match input.targets {
        Targets::Dense(_) => 4 * k,
        Targets::Labels(_) => 4,
    };
    let widest_row = (4 * k).max(logit_bytes * k).max(target_bytes) as u64;
    let segment_rows = (ctx.limits().max_buffer_size / widest_row) as usize;
    if segment_rows == 0 {
        return Err(Error::invalid(format!(
            "one row of {k} classes ({widest_row} bytes) exceeds the device's max_buffer_size"
        )));
    }
    let constant = loss.with_reduction(Reduction::Normalized(normaliser));
    let mut sum = 0.0f64;
    let mut start = 0;
    while start < rows {
        let end = (start + segment_rows).min(rows);
        let elems = start * k..end * k;
        let logits_f32;
        let logits_f16;
        let logits = match input.logits {
            Logits::F32(x) => {
                logits_f32 = ctx.upload(&x[elems.clone()])?;
                LogitsBuffer::F32(&logits_f32)
            }
            Logits::F16(x) => {
                logits_f16 = ctx.upload(&x[elems.clone()])?;
                LogitsBuffer::F16(&logits_f16)
            }
        };
        let dense;
        let labels;
        let targets = match input.targets {
            Targets::Dense(t) => {
                dense = ctx.upload(&t[elems.clone()])?;
                TargetsBuffer::Dense(&dense)
            }
            Targets::Labels(l) => {
                labels = ctx.upload(&l[start..end])?;
                TargetsBuffer::Labels(&labels)
            }
        };
        let n = elems.len();
        let loss_buffer = ctx.zeros::<f32>(3)?;
        let grad_buffer = grad.as_ref().map(|_| ctx.zeros::<f32>(n)).transpose()?;
        let elem_buffer = elementwise.as_ref().map(|_| ctx.zeros::<f32>(n)).transpose()?;
        let buffers = FocalBuffers {
            logits,
            targets,
            num_classes: k,
            loss: &loss_buffer,
            grad: grad_buffer.as_ref(),
            elementwise: elem_buffer.as_ref(),
            positives: None,
        };
        let mut encoder = ctx.encoder("focal loss");
        ctx.record_focal_loss(&mut encoder, &constant, &buffers)?;
        let mut readback = Readback::default();
        let loss_slot = readback.add(&loss_buffer);
        let grad_slot = grad_buffer.as_ref().map(|b| readback.add(b));
        let elem_slot = elem_buffer.as_ref().map(|b| readback.add(b));
        let mut results = readback.run(ctx, encoder)?;
        sum += f64::from(results.take(loss_slot)[1]);
        if let (Some(out), Some(slot)) = (grad.as_deref_mut(), grad_slot) {
            out[elems.clone()].copy_from_slice(&results.take(slot));
        }
        if let (Some(out), Some(slot)) = (elementwise.as_deref_mut(), elem_slot) {
            out[elems.clone()].copy_from_slice(&results.take(slot));
        }
        start = end;
    }
    Ok(sum)
}
