//! The detection post-processing on the device: per-level top-k over the logits, candidate
//! decoding (`postprocess_candidates.wgsl`), a sort per image, NMS, and the packed detections
//! (`postprocess_output.wgsl`), all recorded into one encoder.

use crate::error::{Error, Result};
use crate::gpu::buffer::{GpuBuffer, Readback};
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{binds, whole};
use crate::gpu::kernels::{Kernel, WG_SIZE};
use crate::gpu::nms::region_for;
use crate::gpu::sort::{SortEntry, sort_len};
use crate::gpu::topk::TopkSegment;
use crate::ops::postprocess::{Detection, DetectionInput, PostProcess, check_shapes};

/// One detection as the device stores it: `bbox` (x1, y1, x2, y2), `score`, `class` (-1 in
/// unused slots), padded to 32 bytes. Must stay in sync with `Detection` in
/// shaders/shared/detection.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GpuDetection {
    /// Box `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f32; 4],
    /// Score.
    pub score: f32,
    /// Class index, -1 for an empty slot.
    pub class: i32,
    /// Padding to 32 bytes.
    pub _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/postprocess_candidates.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CandidateConfig {
    pub(crate) batch: u32,
    pub(crate) levels: u32,
    pub(crate) topk: u32,
    pub(crate) region: u32,
    pub(crate) anchors_per_image: u32,
    pub(crate) num_classes: u32,
    pub(crate) clip: u32,
    pub(crate) total: u32,
    pub(crate) image_size: [f32; 2],
    pub(crate) clamp: f32,
    pub(crate) _pad: u32,
    pub(crate) weights: [f32; 4],
}

/// Must stay in sync with `Level` in shaders/postprocess_candidates.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LevelInfo {
    pub(crate) first_anchor: u32,
    pub(crate) _pad: [u32; 3],
}

/// Must stay in sync with `Config` in shaders/postprocess_output.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct OutputConfig {
    pub(crate) batch: u32,
    pub(crate) region: u32,
    pub(crate) max_out: u32,
    pub(crate) draw_vertices: u32,
}

/// The network outputs of a batch on the device.
#[derive(Clone, Copy, Debug)]
pub struct DetectionBuffers<'a> {
    /// Classification logits `[batch, anchors, classes]`.
    pub logits: &'a GpuBuffer<f32>,
    /// Regression deltas `[batch, anchors]`.
    pub deltas: &'a GpuBuffer<[f32; 4]>,
    /// One image's anchors (e.g. [`GpuContext::anchors`]).
    pub anchors: &'a GpuBuffer<[f32; 4]>,
    /// First anchor of each level and the total ([`crate::AnchorConfig::level_offsets`]).
    pub level_offsets: &'a [usize],
    /// K.
    pub num_classes: usize,
    /// `(height, width)` of the images.
    pub image_size: (u32, u32),
}

/// Where detections land: `detections[image * max_detections + d]` for `d < counts[image]`.
///
/// Made by [`GpuContext::detection_output`], or [`GpuContext::detection_output_with`] for
/// buffers a host binds directly (a vertex buffer of detections and indirect draw arguments),
/// or from a host's own buffers wrapped with [`GpuBuffer::from_raw`].
#[derive(Debug)]
pub struct DetectionOutput {
    /// Packed detections, `batch * max_detections`.
    pub detections: GpuBuffer<GpuDetection>,
    /// Detections per image.
    pub counts: GpuBuffer<u32>,
    /// Slots per image.
    pub max_detections: usize,
    /// Indirect draw arguments per image, written with the detections when present.
    pub draw_args: Option<DrawArgs>,
}

/// Per-image indirect draw arguments written by the post-processing: image `b`'s entry is
/// `[vertices_per_detection, counts[b], 0, 0]` (`wgpu::util::DrawIndirectArgs`'s layout), so
/// `draw_indirect(buffer, 16 * b)` with the detections buffer bound as an instance-rate vertex
/// buffer from byte `32 * max_detections * b` draws image `b`'s detections, one instance each.
#[derive(Debug)]
pub struct DrawArgs {
    /// `[vertex_count, instance_count, first_vertex, first_instance]` per image; usages include
    /// `INDIRECT`.
    pub buffer: GpuBuffer<[u32; 4]>,
    /// Vertices drawn per detection (for example 8 for a rectangle as a line list).
    pub vertices_per_detection: u32,
}

/// How [`GpuContext::detection_output_with`] makes its buffers.
#[derive(Clone, Copy, Debug)]
pub struct OutputOptions {
    /// Usages added to the detections and counts buffers (for example `VERTEX` to bind the
    /// detections as an instance buffer, `UNIFORM` or `INDIRECT`).
    pub extra_usage: wgpu::BufferUsages,
    /// Write indirect draw arguments with this many vertices per detection ([`DrawArgs`]).
    pub draw_vertices: Option<u32>,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            extra_usage: wgpu::BufferUsages::empty(),
            draw_vertices: None,
        }
    }
}

impl GpuContext {
    /// Allocates the output of [`GpuContext::record_postprocess`] for `batch` images (once; it
    /// is reused every frame).
    pub fn detection_output(&self, batch: usize, max_detections: usize) -> Result<DetectionOutput> {
        self.detection_output_with(batch, max_detections, &OutputOptions::default())
    }

    /// [`GpuContext::detection_output`] with buffers a host can bind in its own passes: extra
    /// usages, and indirect draw arguments when asked for (see [`OutputOptions`]).
    pub fn detection_output_with(
        &self,
        batch: usize,
        max_detections: usize,
        options: &OutputOptions,
    ) -> Result<DetectionOutput> {
        let slots = batch.checked_mul(max_detections).ok_or_else(|| {
            Error::invalid(format!(
                "detection output: {batch} images x {max_detections} detections overflow"
            ))
        })?;
        let draw_args = match options.draw_vertices {
            Some(0) => return Err(Error::invalid("OutputOptions::draw_vertices must be at least 1")),
            Some(vertices) => Some(DrawArgs {
                buffer: self.zeros_with_usage(batch, wgpu::BufferUsages::INDIRECT | options.extra_usage)?,
                vertices_per_detection: vertices,
            }),
            None => None,
        };
        Ok(DetectionOutput {
            detections: self.zeros_with_usage(slots, options.extra_usage)?,
            counts: self.zeros_with_usage(batch, options.extra_usage)?,
            max_detections,
            draw_args,
        })
    }

    /// Records the whole post-processing of a batch into `encoder`: per-level top-k of the
    /// logits above the score threshold, decoding, a sort per image, class-aware NMS and the
    /// packed detections in `out`, with no readback. A batch of no images records nothing.
    ///
    /// A NaN in an anchor's deltas gives that candidate an all-NaN box (clipped or not), as on
    /// the CPU; it keeps its score and suppresses nothing.
    pub fn record_postprocess(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pp: &PostProcess,
        input: &DetectionBuffers<'_>,
        out: &DetectionOutput,
    ) -> Result<()> {
        pp.validate()?;
        let op = "GpuContext::record_postprocess";
        self.check_buffer(op, "logits", input.logits)?;
        self.check_buffer(op, "deltas", input.deltas)?;
        self.check_buffer(op, "anchors", input.anchors)?;
        self.check_buffer(op, "out.detections", &out.detections)?;
        self.check_buffer(op, "out.counts", &out.counts)?;
        if let Some(args) = &out.draw_args {
            self.check_buffer(op, "out.draw_args", &args.buffer)?;
            if args.vertices_per_detection == 0 || args.buffer.len() < out.counts.len() {
                return Err(Error::shape(
                    "post-processing",
                    format!(
                        "draw arguments for {} images with {} vertices each; one entry per image and at least 1 vertex needed",
                        args.buffer.len(),
                        args.vertices_per_detection
                    ),
                ));
            }
        }
        let a = input.anchors.len();
        let k = input.num_classes;
        let offsets = input.level_offsets;
        let batch = check_shapes(input.logits.len(), input.deltas.len(), a, k, offsets)?;
        if out.max_detections != pp.max_detections
            || out.counts.len() != batch
            || Some(out.detections.len()) != batch.checked_mul(pp.max_detections)
        {
            return Err(Error::shape(
                "post-processing",
                format!(
                    "the output holds {} images x {} detections; {batch} x {} needed",
                    out.counts.len(),
                    out.max_detections,
                    pp.max_detections
                ),
            ));
        }
        if batch == 0 {
            return Ok(());
        }
        let levels = offsets.len() - 1;
        // Slots per image (a power of two) and in the batch, within the kernels' u32 indices.
        let top = pp
            .topk_per_level
            .min(offsets.windows(2).map(|l| (l[1] - l[0]) * k).max().unwrap_or(0));
        let per_image = levels.checked_mul(top.max(1)).filter(|&n| n <= 1 << 31);
        let fits = per_image.is_some_and(|n| {
            region_for(n)
                .checked_mul(batch)
                .is_some_and(|total| total <= 1 << 31 && u32::try_from(batch * pp.max_detections).is_ok())
        });
        if !fits || u32::try_from(a).is_err() || u32::try_from(input.logits.len()).is_err() {
            return Err(Error::invalid(format!(
                "post-processing: {batch} images x {levels} levels x {top} candidates (or {a} anchors x {k} \
                 classes) exceed the GPU's 32-bit indices; split the batch"
            )));
        }
        let mut segments = Vec::with_capacity(batch * levels);
        for image in 0..batch {
            for level in offsets.windows(2) {
                let len = (level[1] - level[0]) * k;
                segments.push(TopkSegment {
                    start: (image * a + level[0]) * k,
                    len,
                    k: pp.topk_per_level.min(len),
                });
            }
        }
        let topk = self.record_top_k(encoder, input.logits, &segments, pp.logit_threshold())?;
        let region = region_for(levels * topk.stride);
        let total = sort_len(region * batch);
        let records = self.zeros::<GpuDetection>(region * batch)?;
        let entries = self.zeros::<SortEntry>(total)?;
        let level_info: Vec<LevelInfo> = offsets[..levels]
            .iter()
            .map(|&o| LevelInfo {
                first_anchor: o as u32,
                _pad: [0; 3],
            })
            .collect();
        let level_buf = self.upload(&level_info)?;
        let config = CandidateConfig {
            batch: batch as u32,
            levels: levels as u32,
            topk: topk.stride as u32,
            region: region as u32,
            anchors_per_image: a as u32,
            num_classes: k as u32,
            clip: u32::from(pp.clip_to_image),
            total: total as u32,
            image_size: [input.image_size.1 as f32, input.image_size.0 as f32],
            clamp: pp.coder.clamp,
            _pad: 0,
            weights: pp.coder.weights,
        };
        let bindings = binds![
            levels = whole(&level_buf),
            selected = whole(&topk.selected),
            candidates = whole(&topk.candidates),
            deltas = whole(input.deltas),
            anchors = whole(input.anchors),
            records = whole(&records),
            entries = whole(&entries),
        ];
        self.record_dispatch(
            encoder,
            Kernel::PostprocessCandidates,
            &config,
            bindings,
            (total as u64).div_ceil(WG_SIZE),
        )?;
        self.record_sort_entries(encoder, &entries)?;
        let sorted = self.record_permute(encoder, &entries, &records, region, batch)?;
        let kept = self.record_nms_sorted(encoder, &pp.nms, &sorted, pp.max_detections, false)?;
        let config = OutputConfig {
            batch: batch as u32,
            region: region as u32,
            max_out: pp.max_detections as u32,
            draw_vertices: out.draw_args.as_ref().map_or(0, |a| a.vertices_per_detection),
        };
        let no_draw_args;
        let draw_args = match &out.draw_args {
            Some(args) => &args.buffer,
            None => {
                no_draw_args = self.zeros::<[u32; 4]>(1)?;
                &no_draw_args
            }
        };
        let bindings = binds![
            sorted_boxes = whole(&sorted.boxes),
            sorted_classes = whole(&sorted.classes),
            kept = whole(&kept.kept),
            keep = whole(&kept.keep),
            keep_scores = whole(&kept.keep_scores),
            detections = whole(&out.detections),
            counts = whole(&out.counts),
            draw_args = whole(draw_args),
        ];
        let workgroups = ((batch * pp.max_detections) as u64).div_ceil(WG_SIZE);
        self.record_dispatch(encoder, Kernel::PostprocessOutput, &config, bindings, workgroups)
    }
}

/// Host-slice post-processing on the GPU: one upload, one readback.
pub(crate) fn postprocess_host(
    ctx: &GpuContext,
    pp: &PostProcess,
    input: &DetectionInput<'_>,
) -> Result<Vec<Vec<Detection>>> {
    let logits = ctx.upload(input.logits)?;
    let deltas = ctx.upload(input.deltas)?;
    let anchors = ctx.upload(input.anchors)?;
    let batch = input.batch();
    if batch == 0 {
        return Ok(Vec::new());
    }
    let out = ctx.detection_output(batch, pp.max_detections)?;
    let mut encoder = ctx.encoder("post-processing");
    ctx.record_postprocess(
        &mut encoder,
        pp,
        &DetectionBuffers {
            logits: &logits,
            deltas: &deltas,
            anchors: &anchors,
            level_offsets: input.level_offsets,
            num_classes: input.num_classes,
            image_size: input.image_size,
        },
        &out,
    )?;
    let mut readback = Readback::default();
    let (detections, counts) = (readback.add(&out.detections), readback.add(&out.counts));
    let mut results = readback.run(ctx, encoder)?;
    let detections = results.take(detections);
    let counts = results.take(counts);
    debug_assert_eq!(counts.len(), batch);
    Ok(unpack_detections(&detections, &counts, pp.max_detections))
}

/// The packed output of [`GpuContext::record_postprocess`], read back, as detections per image.
pub(crate) fn unpack_detections(
    detections: &[GpuDetection],
    counts: &[u32],
    max_detections: usize,
) -> Vec<Vec<Detection>> {
    counts
        .iter()
        .enumerate()
        .map(|(image, &count)| {
            let start = (image * max_detections).min(detections.len());
            let slots = &detections[start..];
            slots[..(count as usize).min(max_detections).min(slots.len())]
                .iter()
                .map(|d| Detection {
                    bbox: d.bbox,
                    score: d.score,
                    class: d.class as u32,
                })
                .collect()
        })
        .collect()
}
