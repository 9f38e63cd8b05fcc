//! Prepared objects for the work a host repeats every frame, in the style of egui-wgpu's
//! `Renderer` and glyphon's `prepare`/`render` split: made once (pipelines compiled then), each
//! owns its intermediate buffers, uniform buffers and bind groups, and its `record` only records
//! into the host's encoder. After the first frame, a frame of the same shapes and parameters
//! creates no buffer or bind group, queues no write and waits on nothing
//! ([`GpuContext::resource_stats`] proves it); a larger shape grows the buffers it needs once.
//!
//! # Contract for work recorded into a host's encoder
//! - Arguments are checked before anything is recorded (shapes, parameters, the buffers'
//!   context): those errors come back from `record` as [`crate::Error`] and nothing is recorded.
//! - Errors inside the recorded commands themselves (none are expected once the arguments pass
//!   the checks) are wgpu validation errors of the host's encoder: they surface when the host
//!   calls `CommandEncoder::finish` or submits, through the host's own error scopes or
//!   uncaptured-error handler, not as this crate's errors.
//! - Record a frame, submit it, then record the next: a frame whose parameters changed updates
//!   the object's uniform buffers with a queued write, which lands before the next submission.
//! - Input buffers are bound as given: pass the same buffers every frame (binding a new buffer
//!   makes a new bind group; the last four combinations per dispatch are kept).
//! - The encoder must be one of this object's device (the device its [`GpuContext`] wraps). The
//!   crate checks that every buffer it is given belongs to its context, but a wgpu encoder cannot
//!   say which device made it: recording into another device's encoder is a wgpu panic ("Cannot
//!   get non-existent resource"), not an error this crate can return.

use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::Kernel;
use crate::gpu::postprocess::{DetectionBuffers, DetectionOutput};
use crate::gpu::topk::{TopkOutput, TopkSegment};
use crate::ops::nms::Nms;
use crate::ops::postprocess::PostProcess;

/// The kernels of top-k selection.
const TOPK_KERNELS: &[Kernel] = &[
    Kernel::TopkHistogram,
    Kernel::TopkScan,
    Kernel::TopkSelect,
    Kernel::TopkCount,
    Kernel::TopkGather,
    Kernel::TopkListArgs,
];

/// The kernels of sorting and every NMS variant.
const NMS_KERNELS: &[Kernel] = &[
    Kernel::SortEntriesInit,
    Kernel::BitonicLocal,
    Kernel::BitonicGlobal,
    Kernel::SortPermute,
    Kernel::NmsMaskArgs,
    Kernel::NmsMask,
    Kernel::NmsSpatialKeys,
    Kernel::NmsSpatialTiles,
    Kernel::NmsMaskSpatial,
    Kernel::NmsGather,
    Kernel::NmsSoft,
    Kernel::NmsMaxIou,
    Kernel::NmsMatrix,
    Kernel::KeepCompact,
    Kernel::KeepMap,
];

/// The detection kernels around top-k and NMS.
const DETECT_KERNELS: &[Kernel] = &[Kernel::PostprocessCandidates, Kernel::PostprocessOutput];

/// The whole post-processing of [`GpuContext::record_postprocess`], prepared for a frame loop.
pub struct PreparedPostProcess {
    ctx: GpuContext,
    postprocess: PostProcess,
}

impl PreparedPostProcess {
    /// Prepares `postprocess` on `ctx`: checks it and compiles every kernel it can use.
    pub fn new(ctx: &GpuContext, postprocess: &PostProcess) -> Result<Self> {
        postprocess.validate()?;
        for kernels in [TOPK_KERNELS, NMS_KERNELS, DETECT_KERNELS] {
            ctx.precompile(kernels)?;
        }
        Ok(Self {
            ctx: ctx.frame_context(),
            postprocess: *postprocess,
        })
    }

    /// The post-processing parameters.
    pub fn postprocess(&self) -> &PostProcess {
        &self.postprocess
    }

    /// Changes the parameters (a new score threshold, say); the next frame updates the uniform
    /// buffers that change, with queued writes.
    pub fn set_postprocess(&mut self, postprocess: &PostProcess) -> Result<()> {
        postprocess.validate()?;
        self.postprocess = *postprocess;
        Ok(())
    }

    /// Records the post-processing of `input` into `encoder`, leaving the detections in `out`
    /// (see [`GpuContext::record_postprocess`]). Only records: see the module's contract.
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        input: &DetectionBuffers<'_>,
        out: &DetectionOutput,
    ) -> Result<()> {
        let (ctx, pp) = (&self.ctx, &self.postprocess);
        ctx.frame(encoder, |encoder| ctx.record_postprocess(encoder, pp, input, out))
    }

    /// Records into an encoder of its own and submits it, without waiting: the detections are
    /// in `out` once the returned submission is done.
    pub fn submit(&mut self, input: &DetectionBuffers<'_>, out: &DetectionOutput) -> Result<wgpu::SubmissionIndex> {
        let mut encoder = self.ctx.encoder("retina-wgpu post-processing");
        self.record(&mut encoder, input, out)?;
        Ok(self.ctx.submit(encoder))
    }
}

/// NMS ([`GpuContext::record_nms`]) prepared for a frame loop. Its outputs are the object's own
/// buffers, the same ones every frame while the shapes stay (a host binds them once).
pub struct PreparedNms {
    ctx: GpuContext,
    nms: Nms,
}

/// What [`PreparedNms::record`] leaves on the device: `keep[..count[0]]` are the kept boxes'
/// indices in decreasing score order, `keep_scores` their (decayed) scores.
#[derive(Debug)]
pub struct NmsBuffers {
    /// Kept indices.
    pub keep: GpuBuffer<u32>,
    /// Their scores.
    pub keep_scores: GpuBuffer<f32>,
    /// One element: how many were kept.
    pub count: GpuBuffer<u32>,
}

impl PreparedNms {
    /// Prepares `nms` on `ctx`: checks it and compiles its kernels.
    pub fn new(ctx: &GpuContext, nms: &Nms) -> Result<Self> {
        nms.validate()?;
        ctx.precompile(NMS_KERNELS)?;
        Ok(Self {
            ctx: ctx.frame_context(),
            nms: *nms,
        })
    }

    /// Records NMS over `boxes` and `scores` (class-aware with `classes`) into `encoder`.
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        boxes: &GpuBuffer<[f32; 4]>,
        scores: &GpuBuffer<f32>,
        classes: Option<&GpuBuffer<i32>>,
    ) -> Result<NmsBuffers> {
        let (ctx, nms) = (&self.ctx, &self.nms);
        let (keep, keep_scores, count) =
            ctx.frame(encoder, |encoder| ctx.record_nms(encoder, nms, boxes, scores, classes))?;
        Ok(NmsBuffers {
            keep,
            keep_scores,
            count,
        })
    }
}

/// Segmented top-k ([`GpuContext::record_top_k`]) prepared for a frame loop.
pub struct PreparedTopK {
    ctx: GpuContext,
}

impl PreparedTopK {
    /// Prepares top-k on `ctx` (compiles its kernels).
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        ctx.precompile(TOPK_KERNELS)?;
        Ok(Self {
            ctx: ctx.frame_context(),
        })
    }

    /// Records the top-k of every segment of `values` into `encoder` (see
    /// [`GpuContext::record_top_k`]).
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        values: &GpuBuffer<f32>,
        segments: &[TopkSegment],
        threshold: Option<f32>,
    ) -> Result<TopkOutput> {
        let ctx = &self.ctx;
        ctx.frame(encoder, |encoder| {
            ctx.record_top_k(encoder, values, segments, threshold)
        })
    }
}

/// The kernels a detector's forward pass uses on top of the post-processing.
pub(crate) const FORWARD_KERNELS: &[Kernel] = &[
    Kernel::ResizeNormalize,
    Kernel::MaxPool,
    Kernel::ConvForward,
    Kernel::ConvForwardFewColumns,
    Kernel::ConvForwardFewRows,
    Kernel::ConvForwardColumns32,
    Kernel::ConvForwardRows32,
    Kernel::ConvForwardFewRowsWide,
    Kernel::ConvForwardTallNarrow,
    Kernel::ConvForwardFourRows,
    Kernel::ConvForwardWide,
    Kernel::ConvForwardRows32Wide,
    Kernel::ConvReduce,
    Kernel::Relu,
    Kernel::Add,
    Kernel::UpsampleForward,
    Kernel::PermuteHead,
    Kernel::GroupNormForward,
    Kernel::GroupNormStats,
    Kernel::GroupNormApply,
];

/// Every kernel of inference: forward pass and post-processing.
pub(crate) fn inference_kernels() -> impl Iterator<Item = &'static [Kernel]> {
    [FORWARD_KERNELS, TOPK_KERNELS, NMS_KERNELS, DETECT_KERNELS].into_iter()
}
