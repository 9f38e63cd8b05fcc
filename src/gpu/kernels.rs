//! The kernel table: one compute pipeline per WGSL kernel, compiled once per context on first use.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::shader;

/// A compute kernel of the crate, named after its file in `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    FocalLoss,
    ReduceSum,
    CountLabels,
    Anchors,
    BoxIou,
    BoxCoder,
    MatchGtMax,
    MatchAssign,
    BoxLoss,
    BitonicLocal,
    BitonicGlobal,
    TopkHistogram,
    TopkSelect,
    TopkCount,
    TopkScan,
    TopkGather,
    SortPermute,
    NmsMask,
    NmsGather,
    NmsSoft,
    NmsMaxIou,
    NmsMatrix,
    KeepCompact,
    DetectCandidates,
    DetectOutput,
    SortEntriesInit,
    KeepMap,
    ConvForward,
    ConvGradInput,
    ConvGradWeight,
    ConvReduce,
    ChannelSum,
    Relu,
    ReluGrad,
    Add,
    Accumulate,
    UpsampleForward,
    UpsampleBackward,
    PermuteHead,
    PermuteHeadBackward,
    Sgd,
    SumSquares,
    GroupNormStats,
    GroupNormApply,
    GroupNormGradSums,
    GroupNormGradCoef,
    OhemRowLoss,
    OhemEntries,
    OhemSelect,
    OhemScale,
}

impl Kernel {
    const COUNT: usize = 50;

    pub(crate) fn file(self) -> &'static str {
        match self {
            Kernel::FocalLoss => "focal_loss.wgsl",
            Kernel::ReduceSum => "reduce_sum.wgsl",
            Kernel::CountLabels => "count_labels.wgsl",
            Kernel::Anchors => "anchors.wgsl",
            Kernel::BoxIou => "box_iou.wgsl",
            Kernel::BoxCoder => "box_coder.wgsl",
            Kernel::MatchGtMax => "match_gt_max.wgsl",
            Kernel::MatchAssign => "match_assign.wgsl",
            Kernel::BoxLoss => "box_loss.wgsl",
            Kernel::BitonicLocal => "bitonic_local.wgsl",
            Kernel::BitonicGlobal => "bitonic_global.wgsl",
            Kernel::TopkHistogram => "topk_histogram.wgsl",
            Kernel::TopkSelect => "topk_select.wgsl",
            Kernel::TopkCount => "topk_count.wgsl",
            Kernel::TopkScan => "topk_scan.wgsl",
            Kernel::TopkGather => "topk_gather.wgsl",
            Kernel::SortPermute => "sort_permute.wgsl",
            Kernel::NmsMask => "nms_mask.wgsl",
            Kernel::NmsGather => "nms_gather.wgsl",
            Kernel::NmsSoft => "nms_soft.wgsl",
            Kernel::NmsMaxIou => "nms_max_iou.wgsl",
            Kernel::NmsMatrix => "nms_matrix.wgsl",
            Kernel::KeepCompact => "keep_compact.wgsl",
            Kernel::DetectCandidates => "detect_candidates.wgsl",
            Kernel::DetectOutput => "detect_output.wgsl",
            Kernel::SortEntriesInit => "sort_entries_init.wgsl",
            Kernel::KeepMap => "keep_map.wgsl",
            Kernel::ConvForward => "conv_gemm.wgsl",
            Kernel::ConvGradInput => "conv_gemm.wgsl",
            Kernel::ConvGradWeight => "conv_gemm.wgsl",
            Kernel::ConvReduce => "conv_reduce.wgsl",
            Kernel::ChannelSum => "channel_sum.wgsl",
            Kernel::Relu => "elementwise.wgsl",
            Kernel::ReluGrad => "elementwise.wgsl",
            Kernel::Add => "elementwise.wgsl",
            Kernel::Accumulate => "elementwise.wgsl",
            Kernel::UpsampleForward => "upsample_nearest.wgsl",
            Kernel::UpsampleBackward => "upsample_nearest.wgsl",
            Kernel::PermuteHead => "head_permute.wgsl",
            Kernel::PermuteHeadBackward => "head_permute.wgsl",
            Kernel::Sgd => "sgd.wgsl",
            Kernel::SumSquares => "sum_squares.wgsl",
            Kernel::GroupNormStats => "group_norm_stats.wgsl",
            Kernel::GroupNormApply => "group_norm_apply.wgsl",
            Kernel::GroupNormGradSums => "group_norm_grad_sums.wgsl",
            Kernel::GroupNormGradCoef => "group_norm_grad_coef.wgsl",
            Kernel::OhemRowLoss => "ohem_row_loss.wgsl",
            Kernel::OhemEntries => "ohem_entries.wgsl",
            Kernel::OhemSelect => "ohem_select.wgsl",
            Kernel::OhemScale => "ohem_scale.wgsl",
        }
    }
}

impl Kernel {
    /// Pipeline-overridable constants that specialise a shared kernel file.
    fn constants(self) -> &'static [(&'static str, f64)] {
        match self {
            Kernel::ConvForward => &[("MODE", 0.0)],
            Kernel::ConvGradInput => &[("MODE", 1.0)],
            Kernel::ConvGradWeight => &[("MODE", 2.0)],
            Kernel::Relu => &[("OP", 0.0)],
            Kernel::ReluGrad => &[("OP", 1.0)],
            Kernel::Add => &[("OP", 2.0)],
            Kernel::Accumulate => &[("OP", 3.0)],
            Kernel::UpsampleForward => &[("BACKWARD", 0.0)],
            Kernel::UpsampleBackward => &[("BACKWARD", 1.0)],
            Kernel::PermuteHead => &[("BACKWARD", 0.0)],
            Kernel::PermuteHeadBackward => &[("BACKWARD", 1.0)],
            _ => &[],
        }
    }
}

/// Compiled pipelines, indexed by [`Kernel`].
pub(crate) struct Kernels {
    pipelines: [OnceLock<wgpu::ComputePipeline>; Kernel::COUNT],
}

impl Default for Kernels {
    fn default() -> Self {
        Self {
            pipelines: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl GpuContext {
    /// The pipeline of `kernel`, compiled on first use. Compilation errors (a shader the device
    /// rejects) are returned, not panicked on.
    pub(crate) fn pipeline(&self, kernel: Kernel) -> Result<&wgpu::ComputePipeline> {
        let slot = &self.inner.kernels.pipelines[kernel as usize];
        if let Some(pipeline) = slot.get() {
            return Ok(pipeline);
        }
        let source = shader::compose(kernel.file(), self.inner.shader_features).map_err(Error::Validation)?;
        let device = &self.inner.device;
        let pipeline = self.scoped(|| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.file()),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            Ok(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.file()),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: kernel.constants(),
                    ..Default::default()
                },
                cache: None,
            }))
        })?;
        // Another thread may have compiled it meanwhile; either pipeline is the same program.
        Ok(slot.get_or_init(|| pipeline))
    }
}
