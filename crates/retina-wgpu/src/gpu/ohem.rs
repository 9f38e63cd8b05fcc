//! Dispatch of OHEM (`shaders/ohem_*.wgsl` between the focal, sort, NMS and reduce kernels),
//! recorded into any command encoder with no readback:
//!
//! 1. `focal_loss.wgsl` with gamma 0: per-element cross entropy and its unnormalised gradient
//!    (written straight into the caller's gradient buffer).
//! 2. `ohem_row_loss.wgsl`: each anchor's loss, the sum over its classes.
//! 3. Per group of images: `ohem_entries.wgsl` (sort entries keyed by loss, ignored anchors as
//!    padding), the bitonic sort, `sort_permute.wgsl` (anchor boxes in loss order, counts of
//!    ranked anchors), with a threshold the greedy NMS bitmask kernels (`nms_mask.wgsl`,
//!    `nms_gather.wgsl`) over the anchors' boxes and `keep_map.wgsl` (survivors back to
//!    anchors), then `ohem_select.wgsl` (the survivors taken, with the positive quota).
//! 4. `reduce_sum.wgsl`: the selected losses over max(1, selected in the batch), counted on
//!    the device; `ohem_scale.wgsl`: the gradient scaled on selected rows, zeroed elsewhere.

use crate::error::{Error, Result};
use crate::gpu::boxes::check_whole_binding;
use crate::gpu::buffer::{GpuBuffer, Readback};
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{Chunk, Dispatches, RowLayout, binds, plan_chunks, storage, whole};
use crate::gpu::focal::{FocalBuffers, LogitsBuffer, TargetsBuffer};
use crate::gpu::kernels::{Kernel, LOOP_BUDGET, WG_SIZE};
use crate::gpu::nms::region_for;
use crate::gpu::postprocess::GpuDetection;
use crate::gpu::reduce::{Normaliser, record_sum};
use crate::gpu::sort::{SortEntry, sort_len};
use crate::ops::nms::Nms;
use crate::ops::ohem::{Ohem, OhemInput};

const FLAG_QUOTA: u32 = 1;
const FLAG_COUNT: u32 = 2;
/// Bytes per anchor slot of a group's largest bindings: the NMS mask's 256 rows of one bit per
/// slot (32 bytes per slot), which also bounds the sort entries (16 bytes per slot, up to twice
/// the slots after rounding to a power of two) and the records (32 bytes per anchor).
const GROUP_BYTES_PER_SLOT: u64 = 32;
/// Survivor positions one select dispatch walks per image: each 256 of them cost one scan
/// (about a dozen loop iterations), so a dispatch stays within [`LOOP_BUDGET`].
const SELECT_SPAN: u64 = LOOP_BUDGET / 16 * WG_SIZE;

/// Must stay in sync with `Config` in shaders/ohem_row_loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RowLossConfig {
    pub(crate) n_rows: u32,
    pub(crate) num_classes: u32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/ohem_entries.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct OhemEntriesConfig {
    pub(crate) n_entries: u32,
    pub(crate) region: u32,
    pub(crate) anchors_per_image: u32,
    pub(crate) group_images: u32,
    pub(crate) row_offset: u32,
    pub(crate) _pad: [u32; 3],
}

/// Must stay in sync with `Config` in shaders/ohem_select.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SelectConfig {
    pub(crate) group_images: u32,
    pub(crate) stride: u32,
    pub(crate) anchors_per_image: u32,
    pub(crate) first_image: u32,
    pub(crate) per_image: u32,
    pub(crate) positive_quota: u32,
    pub(crate) flags: u32,
    pub(crate) begin: u32,
    pub(crate) end: u32,
    pub(crate) total_index: u32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/ohem_scale.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ScaleConfig {
    pub(crate) n_elements: u32,
    pub(crate) num_classes: u32,
    pub(crate) _pad: [u32; 2],
}

/// The per-anchor losses and the selection state shared by the image groups of one OHEM.
struct Selection<'a> {
    row_loss: &'a GpuBuffer<f32>,
    selected: &'a GpuBuffer<u32>,
    /// Per image the counts the select kernel keeps, then the batch's total at `total_index`.
    state: GpuBuffer<u32>,
    image_loss: GpuBuffer<f32>,
    total_index: usize,
}

/// The buffers of OHEM recorded with [`GpuContext::record_ohem`].
#[derive(Clone, Copy, Debug)]
pub struct OhemBuffers<'a> {
    /// `B * R * K` logits (image, anchor, class).
    pub logits: LogitsBuffer<'a>,
    /// `B * R` labels: a class in [0, K), -1 background, -2 ignored.
    pub labels: &'a GpuBuffer<i32>,
    /// One image's `R` anchor boxes, which NMS compares.
    pub anchors: &'a GpuBuffer<[f32; 4]>,
    /// K.
    pub num_classes: usize,
    /// At least 3 elements; receives `[loss, sum of the selected losses, max(1, selected)]`.
    pub loss: &'a GpuBuffer<f32>,
    /// Receives d(loss)/d(logits) (`B * R * K`).
    pub grad: &'a GpuBuffer<f32>,
    /// Receives 1 for every selected anchor and 0 elsewhere (`B * R`), if given.
    pub selected: Option<&'a GpuBuffer<u32>>,
}

impl GpuContext {
    /// Records OHEM (see [`crate::ops::ohem`] for the semantics) into `encoder`: the loss, its
    /// gradient and the selection stay on the device; nothing is submitted or read back.
    ///
    /// Limits: each image's anchors are ranked and suppressed in a region of
    /// `R.next_power_of_two()` slots, and as many images are processed together as keep every
    /// binding within the device's limit (32 bytes per slot); an image too large for one
    /// group alone (about 4 million anchors at the default 128 MiB binding limit) is an error,
    /// as are `B * R` per-anchor arrays (labels, losses) larger than one binding. The
    /// per-element buffers (logits, gradient) are split at the binding limit.
    pub fn record_ohem(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        ohem: &Ohem,
        buffers: &OhemBuffers<'_>,
    ) -> Result<()> {
        ohem.validate()?;
        self.check_ohem_buffers(buffers)?;
        let (rows, r, k) = check_shapes(buffers)?;
        if rows == 0 {
            encoder.clear_buffer(buffers.loss.buffer(), 0, None);
            return Ok(());
        }
        let images = rows / r;
        if k as u64 > LOOP_BUDGET {
            return Err(Error::invalid(format!(
                "OHEM on the GPU adds each anchor's classes in one invocation: at most {LOOP_BUDGET} classes, got {k}"
            )));
        }
        for (what, bytes) in [
            ("OHEM's per-anchor arrays (labels, losses, selection)", rows as u64 * 4),
            ("OHEM's anchors", r as u64 * 16),
        ] {
            check_whole_binding(self, what, bytes)?;
        }
        let limits = self.limits();
        let region = region_for(r);
        let room = limits.max_storage_binding.min(limits.max_buffer_size);
        let group = (room / (GROUP_BYTES_PER_SLOT * region as u64)).min(images as u64) as usize;
        if group == 0 {
            return Err(Error::invalid(format!(
                "OHEM on the GPU: one image of {r} anchors needs {} bytes of ranking and NMS \
                 buffers, more than the device's storage binding limit of {room} bytes",
                GROUP_BYTES_PER_SLOT * region as u64
            )));
        }
        self.scoped(|| {
            // 1. Per-element cross entropy; the gradient is written unnormalised.
            let elementwise = self.zeros::<f32>(rows * k)?;
            let focal_out = self.zeros::<f32>(3)?;
            self.record_focal_loss(
                encoder,
                &ohem.cross_entropy(),
                &FocalBuffers {
                    logits: buffers.logits,
                    targets: TargetsBuffer::Labels(buffers.labels),
                    num_classes: k,
                    loss: &focal_out,
                    grad: Some(buffers.grad),
                    elementwise: Some(&elementwise),
                    positives: None,
                },
            )?;
            // 2. Per-anchor losses.
            let row_loss = self.zeros::<f32>(rows)?;
            self.record_row_loss(encoder, &elementwise, &row_loss, rows as u64, k as u64)?;
            // 3. Ranking, NMS and selection, image group by image group.
            let own_selected;
            let selected = match buffers.selected {
                Some(s) => {
                    encoder.clear_buffer(s.buffer(), 0, None);
                    s
                }
                None => {
                    own_selected = self.zeros::<u32>(rows)?;
                    &own_selected
                }
            };
            let selection = Selection {
                row_loss: &row_loss,
                selected,
                state: self.zeros::<u32>(4 * images + 1)?,
                image_loss: self.zeros::<f32>(images)?,
                total_index: 4 * images,
            };
            let mut first = 0;
            while first < images {
                let count = group.min(images - first);
                self.record_ohem_group(encoder, ohem, buffers, &selection, first..first + count)?;
                first += count;
            }
            // 4. The loss over max(1, selected), then the gradient scaled to match.
            let normaliser = Normaliser::Count {
                counts: selection.state.buffer(),
                index: selection.total_index as u32,
                scale: 1.0,
            };
            record_sum(self, encoder, &selection.image_loss, &normaliser, buffers.loss)?;
            self.record_scale(encoder, selected, buffers.loss, buffers.grad, rows as u64, k as u64)
        })
    }

    /// Step 3 for the images `images` of the batch: their anchors ranked by loss (sort entries,
    /// the bitonic sort, the permute into loss order), suppressed by NMS over the anchors' boxes
    /// when the OHEM has a threshold, and the hardest survivors selected.
    fn record_ohem_group(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        ohem: &Ohem,
        buffers: &OhemBuffers<'_>,
        selection: &Selection<'_>,
        images: std::ops::Range<usize>,
    ) -> Result<()> {
        let r = buffers.anchors.len();
        let region = region_for(r);
        let count = images.len();
        let entries = self.zeros::<SortEntry>(sort_len(count * region))?;
        let records = self.zeros::<GpuDetection>(count * r)?;
        let config = OhemEntriesConfig {
            n_entries: entries.len() as u32,
            region: region as u32,
            anchors_per_image: r as u32,
            group_images: count as u32,
            row_offset: (images.start * r) as u32,
            _pad: [0; 3],
        };
        let bindings = binds![
            row_loss = whole(selection.row_loss),
            labels = whole(buffers.labels),
            anchors = whole(buffers.anchors),
            entries = whole(&entries),
            records = whole(&records),
        ];
        let workgroups = (entries.len() as u64).div_ceil(WG_SIZE);
        self.record_dispatch(encoder, Kernel::OhemEntries, &config, bindings, workgroups)?;
        self.record_sort_entries(encoder, &entries)?;
        let sorted = self.record_permute(encoder, &entries, &records, region, count)?;
        match ohem.nms_threshold {
            None => self.record_ohem_select(
                encoder,
                ohem,
                buffers,
                selection,
                images,
                &sorted.payload,
                &sorted.counts,
                region,
            ),
            Some(threshold) => {
                // With a quota any survivor may be needed; without, the walk stops at B.
                let max_out = match ohem.positive_quota() {
                    Some(_) => r,
                    None => ohem.per_image.min(r),
                };
                let kept = self.record_nms_sorted(encoder, &Nms::hard(threshold), &sorted, max_out, true)?;
                // Survivors in loss order (as s * R + anchor) and how many per image.
                let survivors = self.zeros::<u32>(count * max_out)?;
                self.record_keep_map(encoder, &sorted, &kept, max_out, &survivors)?;
                self.record_ohem_select(
                    encoder, ohem, buffers, selection, images, &survivors, &kept.kept, max_out,
                )
            }
        }
    }

    /// `ohem_select.wgsl` over the images `images`, whose ranked survivors are `order` (`stride`
    /// slots per image, `counts` of them valid): with a positive quota, a counting phase first;
    /// the walk over the slots split into dispatches of bounded work.
    #[allow(clippy::too_many_arguments)]
    fn record_ohem_select(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        ohem: &Ohem,
        buffers: &OhemBuffers<'_>,
        selection: &Selection<'_>,
        images: std::ops::Range<usize>,
        order: &GpuBuffer<u32>,
        counts: &GpuBuffer<u32>,
        stride: usize,
    ) -> Result<()> {
        let quota = ohem.positive_quota();
        let base = SelectConfig {
            group_images: images.len() as u32,
            stride: stride as u32,
            anchors_per_image: buffers.anchors.len() as u32,
            first_image: images.start as u32,
            per_image: ohem.per_image as u32,
            positive_quota: quota.unwrap_or(0) as u32,
            flags: if quota.is_some() { FLAG_QUOTA } else { 0 },
            begin: 0,
            end: 0,
            total_index: selection.total_index as u32,
            _pad: [0; 2],
        };
        let mut list = Dispatches::new(self, "ohem select");
        let phases: &[u32] = if quota.is_some() { &[FLAG_COUNT, 0] } else { &[0] };
        for &phase in phases {
            let mut begin = 0u64;
            while begin < stride as u64 {
                let end = (begin + SELECT_SPAN).min(stride as u64);
                let config = SelectConfig {
                    flags: base.flags | phase,
                    begin: begin as u32,
                    end: end as u32,
                    ..base
                };
                let bindings = binds![
                    order = whole(order),
                    counts = whole(counts),
                    labels = whole(buffers.labels),
                    row_loss = whole(selection.row_loss),
                    selected = whole(selection.selected),
                    state = whole(&selection.state),
                    image_loss = whole(&selection.image_loss),
                ];
                list.push(Kernel::OhemSelect, &config, bindings, images.len() as u64)?;
                begin = end;
            }
        }
        list.record(self, encoder)
    }

    /// Refuses buffers of another device.
    fn check_ohem_buffers(&self, b: &OhemBuffers<'_>) -> Result<()> {
        let op = "GpuContext::record_ohem";
        match b.logits {
            LogitsBuffer::F32(l) => self.check_buffer(op, "logits", l)?,
            LogitsBuffer::F16(l) => self.check_buffer(op, "logits", l)?,
        }
        self.check_buffer(op, "labels", b.labels)?;
        self.check_buffer(op, "anchors", b.anchors)?;
        self.check_buffer(op, "loss", b.loss)?;
        self.check_buffer(op, "grad", b.grad)?;
        if let Some(s) = b.selected {
            self.check_buffer(op, "selected", s)?;
        }
        Ok(())
    }

    /// Records `ohem_row_loss.wgsl` over `rows` rows of `k` per-class losses.
    fn record_row_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        elementwise: &GpuBuffer<f32>,
        row_loss: &GpuBuffer<f32>,
        rows: u64,
        k: u64,
    ) -> Result<()> {
        let plan = plan_chunks(self.limits(), RowLayout::elementwise(rows, 1, &[4 * k, 4]))?;
        let config = |c: &Chunk| RowLossConfig {
            n_rows: (c.rows.end - c.rows.start) as u32,
            num_classes: k as u32,
            _pad: [0; 2],
        };
        self.record_chunks(encoder, Kernel::OhemRowLoss, &plan, config, |c| {
            let n = c.rows.end - c.rows.start;
            binds![
                elementwise = storage(elementwise.buffer(), c.rows.start * k * 4, n * k * 4),
                row_loss = storage(row_loss.buffer(), c.rows.start * 4, n * 4),
            ]
        })
    }

    /// Records `ohem_scale.wgsl` over the gradient's `rows` rows of `k`.
    fn record_scale(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        selected: &GpuBuffer<u32>,
        loss: &GpuBuffer<f32>,
        grad: &GpuBuffer<f32>,
        rows: u64,
        k: u64,
    ) -> Result<()> {
        let plan = plan_chunks(self.limits(), RowLayout::elementwise(rows, k, &[4 * k, 4]))?;
        let config = |c: &Chunk| ScaleConfig {
            n_elements: ((c.rows.end - c.rows.start) * k) as u32,
            num_classes: k as u32,
            _pad: [0; 2],
        };
        self.record_chunks(encoder, Kernel::OhemScale, &plan, config, |c| {
            let n = c.rows.end - c.rows.start;
            binds![
                selected = storage(selected.buffer(), c.rows.start * 4, n * 4),
                loss = storage(loss.buffer(), 0, 12),
                grad = storage(grad.buffer(), c.rows.start * k * 4, n * k * 4),
            ]
        })
    }
}

/// Checks the buffers' lengths; returns (anchor rows in the batch, R, K).
fn check_shapes(b: &OhemBuffers<'_>) -> Result<(usize, usize, usize)> {
    let (rows, r, k) = (b.labels.len(), b.anchors.len(), b.num_classes);
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
    let logits = match b.logits {
        LogitsBuffer::F32(x) => x.len(),
        LogitsBuffer::F16(x) => x.len(),
    };
    if rows.checked_mul(k) != Some(logits) || b.grad.len() < logits {
        return Err(Error::shape(
            "OHEM",
            format!(
                "{logits} logits and a gradient of {} for {rows} anchors of {k} classes",
                b.grad.len()
            ),
        ));
    }
    if b.loss.len() < 3 || b.selected.is_some_and(|s| s.len() < rows) {
        return Err(Error::shape(
            "OHEM",
            "the loss buffer needs 3 elements and the selection one per anchor",
        ));
    }
    if u32::try_from(rows).is_err() {
        return Err(Error::invalid(format!("OHEM: {rows} anchors in a batch exceed 2^32")));
    }
    Ok((rows, r, k))
}

/// The host-slice path of [`Ohem::compute`] on the GPU: uploads, records, reads back the
/// gradient and the selection mask into `grad` and `selected`; returns `[loss, sum,
/// normaliser]`.
pub(crate) fn ohem_host(
    ctx: &GpuContext,
    ohem: &Ohem,
    input: &OhemInput<'_>,
    grad: &mut [f32],
    selected: &mut [u32],
) -> Result<[f32; 3]> {
    let logits = ctx.upload(input.logits)?;
    let labels = ctx.upload(input.labels)?;
    let anchors = ctx.upload(input.anchors)?;
    let loss = ctx.zeros::<f32>(3)?;
    let grad_buffer = ctx.zeros::<f32>(grad.len())?;
    let selected_buffer = ctx.zeros::<u32>(selected.len())?;
    let mut encoder = ctx.encoder("ohem");
    ctx.record_ohem(
        &mut encoder,
        ohem,
        &OhemBuffers {
            logits: LogitsBuffer::F32(&logits),
            labels: &labels,
            anchors: &anchors,
            num_classes: input.num_classes,
            loss: &loss,
            grad: &grad_buffer,
            selected: Some(&selected_buffer),
        },
    )?;
    let mut readback = Readback::default();
    let slots = (
        readback.add(&loss),
        readback.add(&grad_buffer),
        readback.add(&selected_buffer),
    );
    let mut results = readback.run(ctx, encoder)?;
    let values = results.take(slots.0);
    grad.copy_from_slice(&results.take(slots.1));
    selected.copy_from_slice(&results.take(slots.2));
    Ok([values[0], values[1], values[2]])
}
