//! Dispatch of the matcher (`shaders/matcher_gt_max.wgsl`, `shaders/matcher_assign.wgsl`): a batch
//! of images, each with its own ground truth, to per-anchor targets in one command buffer.

use crate::error::{Error, Result};
use crate::gpu::boxes::check_whole_binding;
use crate::gpu::buffer::{GpuBuffer, Readback};
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{Dispatches, binds, storage_window, whole};
use crate::gpu::kernels::{Kernel, WG_SIZE};
use crate::ops::matcher::{AssignedTargets, GroundTruth, TargetAssigner};

const FLAG_LOW_QUALITY: u32 = 1;

/// Must stay in sync with `Config` in shaders/shared/matcher_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatchConfig {
    pub(crate) anchors_per_image: u32,
    pub(crate) anchor_base: u32,
    pub(crate) chunk_anchors: u32,
    pub(crate) tiles_per_image: u32,
    pub(crate) image_first: u32,
    pub(crate) num_images: u32,
    pub(crate) batch: u32,
    pub(crate) flags: u32,
    pub(crate) out_base4: u32,
    pub(crate) out_base16: u32,
    pub(crate) high: f32,
    pub(crate) low: f32,
    pub(crate) num_boxes: u32,
    pub(crate) _pad: [u32; 3],
    pub(crate) weights: [f32; 4],
}

/// Ground truth of a batch on the device: every image's boxes and classes concatenated, and
/// `offsets` (`batch + 1` entries) where image `i` owns `offsets[i]..offsets[i + 1]`.
#[derive(Clone, Copy, Debug)]
pub struct GroundTruthBuffers<'a> {
    /// Boxes `[x1, y1, x2, y2]` of all images.
    pub boxes: &'a GpuBuffer<[f32; 4]>,
    /// Class of each box.
    pub classes: &'a GpuBuffer<i32>,
    /// `batch + 1` offsets into `boxes`.
    pub offsets: &'a GpuBuffer<u32>,
}

/// Where [`GpuContext::record_assign_targets`] writes (arrays `[image][anchor]`, flattened).
#[derive(Clone, Copy, Debug)]
pub struct AssignBuffers<'a> {
    /// Matched ground truth per anchor (`batch * anchors`).
    pub matches: &'a GpuBuffer<i32>,
    /// Class label per anchor, the focal loss's label form (`batch * anchors`).
    pub labels: &'a GpuBuffer<i32>,
    /// Encoded regression target per anchor (`batch * anchors`).
    pub box_targets: &'a GpuBuffer<[f32; 4]>,
    /// Positives per image, then the batch total (`batch + 1`): bind as the focal loss's
    /// `positives` with index `batch`.
    pub positives: &'a GpuBuffer<u32>,
}

/// One dispatch: images `images` and, within each, anchors `anchors`.
struct MatchChunk {
    images: std::ops::Range<u64>,
    anchors: std::ops::Range<u64>,
}

/// Splits `batch x anchors` so that every chunk's per-anchor outputs fit one binding and its
/// workgroups one folded grid: whole images when an image fits, else anchor ranges of one image.
fn plan(ctx: &GpuContext, batch: u64, anchors: u64) -> Result<Vec<MatchChunk>> {
    let limits = ctx.limits();
    let room = limits
        .max_storage_binding
        .saturating_sub(limits.storage_offset_alignment);
    let max_workgroups = u64::from(limits.max_workgroups_per_dim).pow(2);
    let tiles = anchors.div_ceil(WG_SIZE);
    let mut chunks = Vec::new();
    if batch == 0 || anchors == 0 {
        // Nothing to match: no dispatch.
        return Ok(chunks);
    }
    if anchors * 16 <= room && tiles <= max_workgroups {
        let per_chunk = (room / (anchors * 16)).min(max_workgroups / tiles).max(1);
        let mut first = 0;
        while first < batch {
            let end = (first + per_chunk).min(batch);
            chunks.push(MatchChunk {
                images: first..end,
                anchors: 0..anchors,
            });
            first = end;
        }
    } else {
        let per_chunk = (room / 16).min(max_workgroups * WG_SIZE);
        if per_chunk == 0 {
            return Err(Error::invalid(
                "the device's storage binding limit is too small for the matcher",
            ));
        }
        for image in 0..batch {
            let mut first = 0;
            while first < anchors {
                let end = (first + per_chunk).min(anchors);
                chunks.push(MatchChunk {
                    images: image..image + 1,
                    anchors: first..end,
                });
                first = end;
            }
        }
    }
    Ok(chunks)
}

/// Checks a batch's ground truth and outputs against `a` anchors per image; returns
/// (images in the batch, anchors per image).
fn assign_shapes(a: u64, gt: &GroundTruthBuffers<'_>, out: &AssignBuffers<'_>) -> Result<(u64, u64)> {
    if gt.offsets.is_empty() {
        return Err(Error::shape(
            "target assignment",
            "offsets need batch + 1 entries (at least one)",
        ));
    }
    let batch = gt.offsets.len() as u64 - 1;
    if gt.boxes.len() != gt.classes.len() {
        return Err(Error::shape(
            "target assignment",
            format!("{} ground-truth boxes but {} classes", gt.boxes.len(), gt.classes.len()),
        ));
    }
    let Some(total) = batch.checked_mul(a) else {
        return Err(Error::invalid(format!(
            "target assignment: {batch} images x {a} anchors overflow"
        )));
    };
    for (name, len) in [
        ("matches", out.matches.len()),
        ("labels", out.labels.len()),
        ("box_targets", out.box_targets.len()),
    ] {
        if len as u64 != total {
            return Err(Error::shape(
                "target assignment",
                format!(
                    "{name} holds {len} entries; {batch} images x {a} anchors need {}",
                    total
                ),
            ));
        }
    }
    if out.positives.len() as u64 != batch + 1 {
        return Err(Error::shape(
            "target assignment",
            format!(
                "positives holds {} entries; {batch} images need {}",
                out.positives.len(),
                batch + 1
            ),
        ));
    }
    if u32::try_from(total).is_err() || u32::try_from(gt.boxes.len()).is_err() {
        return Err(Error::invalid(format!(
            "target assignment: {batch} x {a} anchors exceed 2^32"
        )));
    }
    Ok((batch, a))
}

impl GpuContext {
    /// Records target assignment for a batch into `encoder`: per-ground-truth highest IoUs, then
    /// per-anchor matches, labels, encoded targets and positive counts, all left on the device
    /// (no readback between matching and the loss). `anchors` are one image's anchors; the
    /// ground truth is not validated on the device (see [`TargetAssigner::validate`] for host
    /// data): boxes with NaN have IoU 0 with everything.
    pub fn record_assign_targets(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        assigner: &TargetAssigner,
        anchors: &GpuBuffer<[f32; 4]>,
        gt: &GroundTruthBuffers<'_>,
        out: &AssignBuffers<'_>,
    ) -> Result<()> {
        assigner.matcher.validate()?;
        assigner.coder.validate()?;
        let op = "GpuContext::record_assign_targets";
        self.check_buffer(op, "anchors", anchors)?;
        self.check_buffer(op, "gt.boxes", gt.boxes)?;
        self.check_buffer(op, "gt.classes", gt.classes)?;
        self.check_buffer(op, "gt.offsets", gt.offsets)?;
        self.check_buffer(op, "out.matches", out.matches)?;
        self.check_buffer(op, "out.labels", out.labels)?;
        self.check_buffer(op, "out.box_targets", out.box_targets)?;
        self.check_buffer(op, "out.positives", out.positives)?;
        let (batch, a) = assign_shapes(anchors.len() as u64, gt, out)?;
        check_whole_binding(self, "the ground-truth boxes", gt.boxes.byte_len())?;
        let chunks = plan(self, batch, a)?;
        self.scoped(|| {
            encoder.clear_buffer(out.positives.buffer(), 0, None);
            if batch == 0 || a == 0 {
                return Ok(());
            }
            // Per box, its highest IoU (zero-initialised by wgpu), then a copy of its class: one
            // binding instead of two keeps match_assign within WebGPU's default of eight
            // storage buffers per stage.
            let num_boxes = gt.boxes.len();
            let gt_info = self.zeros::<u32>(2 * num_boxes)?;
            if num_boxes > 0 {
                encoder.copy_buffer_to_buffer(
                    gt.classes.buffer(),
                    0,
                    gt_info.buffer(),
                    (num_boxes * 4) as u64,
                    (num_boxes * 4) as u64,
                );
            }
            let limits = self.limits();
            // Every chunk's per-box maxima first (match_gt_max), then every chunk's assignment,
            // which reads all of them: two steps per chunk, in that order, in one pass.
            let mut gt_max = Dispatches::new(self, "matcher: gt max");
            let mut assign = Dispatches::new(self, "matcher: assign");
            for chunk in &chunks {
                let images = chunk.images.end - chunk.images.start;
                let count = chunk.anchors.end - chunk.anchors.start;
                let out_start = chunk.images.start * a + chunk.anchors.start;
                let out_len = (images - 1) * a + count;
                let (anchor_binding, anchor_base) =
                    storage_window(limits, anchors.buffer(), chunk.anchors.start, count, 16);
                let (matches, base4) = storage_window(limits, out.matches.buffer(), out_start, out_len, 4);
                let (labels, _) = storage_window(limits, out.labels.buffer(), out_start, out_len, 4);
                let (targets, base16) = storage_window(limits, out.box_targets.buffer(), out_start, out_len, 16);
                let config = MatchConfig {
                    anchors_per_image: a as u32,
                    anchor_base,
                    chunk_anchors: count as u32,
                    tiles_per_image: count.div_ceil(WG_SIZE) as u32,
                    image_first: chunk.images.start as u32,
                    num_images: images as u32,
                    batch: batch as u32,
                    flags: if assigner.matcher.allow_low_quality_matches {
                        FLAG_LOW_QUALITY
                    } else {
                        0
                    },
                    out_base4: base4,
                    out_base16: base16,
                    high: assigner.matcher.high,
                    low: assigner.matcher.low,
                    num_boxes: num_boxes as u32,
                    _pad: [0; 3],
                    weights: assigner.coder.weights,
                };
                let workgroups = images * count.div_ceil(WG_SIZE);
                gt_max.push(
                    Kernel::MatcherGtMax,
                    &config,
                    binds![
                        anchors = anchor_binding.clone(),
                        gt_boxes = whole(gt.boxes),
                        gt_offsets = whole(gt.offsets),
                        gt_max = whole(&gt_info),
                    ],
                    workgroups,
                )?;
                assign.push(
                    Kernel::MatcherAssign,
                    &config,
                    binds![
                        anchors = anchor_binding,
                        gt_boxes = whole(gt.boxes),
                        gt_offsets = whole(gt.offsets),
                        gt_info = whole(&gt_info),
                        matches = matches,
                        labels = labels,
                        targets = targets,
                        positives = whole(out.positives),
                    ],
                    workgroups,
                )?;
            }
            gt_max.record(self, encoder)?;
            assign.record(self, encoder)?;
            Ok(())
        })
    }
}

/// Ground truth of a batch, packed for the device.
pub(crate) struct PackedGroundTruth {
    pub boxes: Vec<[f32; 4]>,
    pub classes: Vec<i32>,
    pub offsets: Vec<u32>,
}

impl PackedGroundTruth {
    pub(crate) fn new(images: &[GroundTruth<'_>]) -> Self {
        let mut packed = Self {
            boxes: Vec::new(),
            classes: Vec::new(),
            offsets: vec![0],
        };
        for gt in images {
            packed.boxes.extend_from_slice(gt.boxes);
            packed.classes.extend_from_slice(gt.classes);
            packed.offsets.push(packed.boxes.len() as u32);
        }
        packed
    }
}

/// Host-slice target assignment on the GPU.
pub(crate) fn assign_host(
    ctx: &GpuContext,
    assigner: &TargetAssigner,
    anchors: &[[f32; 4]],
    images: &[GroundTruth<'_>],
) -> Result<AssignedTargets> {
    let packed = PackedGroundTruth::new(images);
    let n = anchors.len() * images.len();
    let anchors_buf = ctx.upload(anchors)?;
    let boxes = ctx.upload(&packed.boxes)?;
    let classes = ctx.upload(&packed.classes)?;
    let offsets = ctx.upload(&packed.offsets)?;
    let matches = ctx.zeros::<i32>(n)?;
    let labels = ctx.zeros::<i32>(n)?;
    let box_targets = ctx.zeros::<[f32; 4]>(n)?;
    let positives = ctx.zeros::<u32>(images.len() + 1)?;
    let mut encoder = ctx.encoder("assign targets");
    ctx.record_assign_targets(
        &mut encoder,
        assigner,
        &anchors_buf,
        &GroundTruthBuffers {
            boxes: &boxes,
            classes: &classes,
            offsets: &offsets,
        },
        &AssignBuffers {
            matches: &matches,
            labels: &labels,
            box_targets: &box_targets,
            positives: &positives,
        },
    )?;
    let mut readback = Readback::default();
    let slots = (
        readback.add(&matches),
        readback.add(&labels),
        readback.add(&box_targets),
        readback.add(&positives),
    );
    let mut results = readback.run(ctx, encoder)?;
    let mut positives = results.take(slots.3);
    positives.truncate(images.len());
    Ok(AssignedTargets {
        anchors_per_image: anchors.len(),
        matches: results.take(slots.0),
        labels: results.take(slots.1),
        box_targets: results.take(slots.2),
        positives,
    })
}
