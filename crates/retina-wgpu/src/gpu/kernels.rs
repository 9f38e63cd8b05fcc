//! The kernel table: one compute pipeline per WGSL kernel, compiled once per context on first use.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::shader;

/// Workgroup size of the 1-D kernels (`WG_SIZE` in their WGSL).
pub(crate) const WG_SIZE: u64 = 256;

/// Declares the kernel table once: each line names a variant, its file in `shaders/` and the
/// pipeline-overridable constants that specialise a shared file. The enum, [`Kernel::COUNT`],
/// [`Kernel::ALL`], `file()` and `constants()` all come from the one list, so a new kernel is
/// one line and the count cannot be wrong.
macro_rules! kernels {
    ($($variant:ident => $file:literal, [$(($name:literal, $value:expr)),*],)*) => {
        /// A compute kernel of the crate, named after its file in `shaders/`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Kernel {
            $($variant,)*
        }

        impl Kernel {
            /// Every kernel, in declaration order (`ALL[k as usize] == k`).
            pub(crate) const ALL: &'static [Kernel] = &[$(Kernel::$variant,)*];
            /// Number of kernels.
            pub(crate) const COUNT: usize = Self::ALL.len();

            /// The kernel's file in `shaders/`.
            pub(crate) fn file(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $file,)*
                }
            }

            /// Pipeline-overridable constants that specialise a shared kernel file.
            fn constants(self) -> &'static [(&'static str, f64)] {
                match self {
                    $(Kernel::$variant => &[$(($name, $value)),*],)*
                }
            }
        }
    };
}

kernels! {
    FocalLoss => "focal_loss.wgsl", [],
    ReduceSum => "reduce_sum.wgsl", [],
    CountLabels => "count_labels.wgsl", [],
    Anchors => "anchors.wgsl", [],
    BoxIou => "box_iou.wgsl", [],
    BoxCoder => "box_coder.wgsl", [],
    MatchGtMax => "match_gt_max.wgsl", [],
    MatchAssign => "match_assign.wgsl", [],
    BoxLoss => "box_loss.wgsl", [],
    BitonicLocal => "bitonic_local.wgsl", [],
    BitonicGlobal => "bitonic_global.wgsl", [],
    TopkHistogram => "topk_histogram.wgsl", [],
    TopkSelect => "topk_select.wgsl", [],
    TopkCount => "topk_count.wgsl", [],
    TopkScan => "topk_scan.wgsl", [],
    TopkGather => "topk_gather.wgsl", [],
    SortPermute => "sort_permute.wgsl", [],
    NmsMask => "nms_mask.wgsl", [],
    NmsGather => "nms_gather.wgsl", [],
    NmsSoft => "nms_soft.wgsl", [],
    NmsMaxIou => "nms_max_iou.wgsl", [],
    NmsMatrix => "nms_matrix.wgsl", [],
    KeepCompact => "keep_compact.wgsl", [],
    DetectCandidates => "detect_candidates.wgsl", [],
    DetectOutput => "detect_output.wgsl", [],
    SortEntriesInit => "sort_entries_init.wgsl", [],
    KeepMap => "keep_map.wgsl", [],
    ConvForward => "conv_gemm.wgsl", [("MODE", 0.0)],
    ConvGradInput => "conv_gemm.wgsl", [("MODE", 1.0)],
    ConvGradWeight => "conv_gemm.wgsl", [("MODE", 2.0)],
    ConvReduce => "conv_reduce.wgsl", [],
    ChannelSum => "channel_sum.wgsl", [],
    Relu => "elementwise.wgsl", [("OP", 0.0)],
    ReluGrad => "elementwise.wgsl", [("OP", 1.0)],
    Add => "elementwise.wgsl", [("OP", 2.0)],
    Accumulate => "elementwise.wgsl", [("OP", 3.0)],
    UpsampleForward => "upsample_nearest.wgsl", [("BACKWARD", 0.0)],
    UpsampleBackward => "upsample_nearest.wgsl", [("BACKWARD", 1.0)],
    PermuteHead => "head_permute.wgsl", [("BACKWARD", 0.0)],
    PermuteHeadBackward => "head_permute.wgsl", [("BACKWARD", 1.0)],
    Sgd => "sgd.wgsl", [],
    SumSquares => "sum_squares.wgsl", [],
    GroupNormStats => "group_norm_stats.wgsl", [],
    GroupNormApply => "group_norm_apply.wgsl", [],
    GroupNormGradSums => "group_norm_grad_sums.wgsl", [],
    GroupNormGradCoef => "group_norm_grad_coef.wgsl", [],
    OhemRowLoss => "ohem_row_loss.wgsl", [],
    OhemEntries => "ohem_entries.wgsl", [],
    OhemSelect => "ohem_select.wgsl", [],
    OhemScale => "ohem_scale.wgsl", [],
    ImageToTensor => "image_to_tensor.wgsl", [],
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
        let pipeline = self.scoped_always(|| {
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
                cache: self.inner.pipeline_cache.as_ref(),
            }))
        })?;
        self.inner.counters.add(crate::gpu::frame::Count::Pipeline);
        // Another thread may have compiled it meanwhile; either pipeline is the same program.
        Ok(slot.get_or_init(|| pipeline))
    }
}
