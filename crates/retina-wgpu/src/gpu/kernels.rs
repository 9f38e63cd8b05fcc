//! The kernel table: one compute pipeline per WGSL kernel, compiled once per context on first use.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::shader;

/// Workgroup size of the 1-D kernels (`WG_SIZE` in their WGSL).
pub(crate) const WG_SIZE: u64 = 256;

/// Most loop iterations one invocation of any kernel may run. Lavapipe (llvmpipe) ends any invocation after
/// 65,535 loop iterations in all, and real drivers reset devices whose dispatches run for
/// seconds; so the sequential parts (the greedy walk, Soft-NMS picks, the pairwise IoU loops of
/// Fast and Matrix NMS) are split into dispatches of bounded work, their state kept in buffers.
pub(crate) const LOOP_BUDGET: u64 = 60_000;

/// Declares the kernel table once: each line names a variant, its file in `shaders/`, the
/// pipeline-overridable constants that specialise a shared file, and the names of its bindings
/// after binding 0 (the `cfg` uniform) in binding order, as the WGSL declares them. The enum,
/// [`Kernel::COUNT`], [`Kernel::ALL`], `file()`, `constants()` and `bindings()` all come from
/// the one list, so a new kernel is one line and the count cannot be wrong. The binding names
/// are checked against every kernel's WGSL with naga (`layout_tests`), and the dispatch helpers
/// place bindings by these names (`gpu::dispatch::binds!`).
macro_rules! kernels {
    ($($variant:ident => $file:literal, [$(($name:literal, $value:expr)),*], [$($binding:ident),*],)*) => {
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

            /// The kernel's name (its variant: a file's modes are apart, e.g. `ConvGradInput`).
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => stringify!($variant),)*
                }
            }

            /// The kernel's file in `shaders/`.
            pub(crate) fn file(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $file,)*
                }
            }

            /// Pipeline-overridable constants that specialise a shared kernel file.
            pub(crate) fn constants(self) -> &'static [(&'static str, f64)] {
                match self {
                    $(Kernel::$variant => &[$(($name, $value)),*],)*
                }
            }

            /// The kernel's bindings after `cfg` (binding 0), in binding order: the name of
            /// binding `i + 1` is `bindings()[i]`.
            pub(crate) fn bindings(self) -> &'static [&'static str] {
                match self {
                    $(Kernel::$variant => &[$(stringify!($binding)),*],)*
                }
            }
        }
    };
}

kernels! {
    FocalLoss => "focal_loss.wgsl", [], [logits, targets, counts, grad, elementwise, partials],
    ReduceSum => "reduce_sum.wgsl", [], [input, counts, output],
    CountLabels => "count_labels.wgsl", [], [labels, counts],
    Anchors => "anchors.wgsl", [], [levels, templates, anchors],
    BoxIou => "box_iou.wgsl", [], [boxes_a, boxes_b, iou],
    BoxCoder => "box_coder.wgsl", [], [input, anchors, output],
    MatcherGtMax => "matcher_gt_max.wgsl", [], [anchors, gt_boxes, gt_offsets, gt_max],
    MatcherAssign => "matcher_assign.wgsl", [], [anchors, gt_boxes, gt_offsets, gt_info, matches, labels, targets, positives],
    BoxLoss => "box_loss.wgsl", [], [pred, target_deltas, labels, anchors, counts, grad, partials],
    BitonicLocal => "bitonic_local.wgsl", [], [entries],
    BitonicGlobal => "bitonic_global.wgsl", [], [entries],
    TopkHistogram => "topk_histogram.wgsl", [], [keys, segments, states, histogram, tile_dead, live],
    TopkSelect => "topk_select.wgsl", [], [states, histogram],
    TopkCount => "topk_count.wgsl", [], [keys, segments, states, tile_counts, tile_dead, live],
    TopkScan => "topk_scan.wgsl", [], [segments, states, tile_counts, selected],
    TopkGather => "topk_gather.wgsl", [], [keys, segments, states, tile_offsets, candidates, tile_dead, live],
    TopkListArgs => "topk_list_args.wgsl", [], [live, args],
    SortPermute => "sort_permute.wgsl", [], [entries, records, sorted_boxes, sorted_classes, sorted_scores, sorted_payload, counts],
    NmsMaskArgs => "nms_mask_args.wgsl", [], [counts, args, band_layout],
    NmsMask => "nms_mask.wgsl", [], [boxes, classes, counts, done, mask, removed, band_layout],
    NmsSpatialKeys => "nms_spatial_keys.wgsl", [], [boxes, classes, counts, entries, rows],
    NmsSpatialTiles => "nms_spatial_tiles.wgsl", [], [entries, boxes, classes, counts, tiled, bounds],
    NmsMaskSpatial => "nms_mask_spatial.wgsl", [], [boxes, rows_order, counts, done, removed, tiled, bounds, mask],
    NmsGather => "nms_gather.wgsl", [], [mask, counts, removed, kept, done, keep, scores, keep_scores],
    NmsSoft => "nms_soft.wgsl", [], [boxes, classes, counts, scores, kept, keep, keep_scores, done],
    NmsMaxIou => "nms_max_iou.wgsl", [], [boxes, classes, counts, max_iou],
    NmsMatrix => "nms_matrix.wgsl", [], [boxes, classes, counts, max_iou, scores, decays, entries],
    KeepCompact => "keep_compact.wgsl", [], [counts, max_iou, entries, scores, kept, keep, keep_scores],
    PostprocessCandidates => "postprocess_candidates.wgsl", [], [levels, selected, candidates, deltas, anchors, records, entries],
    PostprocessOutput => "postprocess_output.wgsl", [], [sorted_boxes, sorted_classes, kept, keep, keep_scores, detections, counts, draw_args],
    SortEntriesInit => "sort_entries_init.wgsl", [], [scores, boxes, classes, entries, records],
    KeepMap => "keep_map.wgsl", [], [payload, kept, keep, out],
    ConvForward => "conv_gemm.wgsl", [("MODE", 0.0)], [a_src, b_src, bias, out],
    ConvGradInput => "conv_gemm.wgsl", [("MODE", 1.0)], [a_src, b_src, bias, out],
    ConvGradWeight => "conv_gemm.wgsl", [("MODE", 2.0)], [a_src, b_src, bias, out],
    ConvForwardFewColumns => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 1.0)], [a_src, b_src, bias, out],
    ConvGradInputFewColumns => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 1.0)], [a_src, b_src, bias, out],
    ConvGradWeightFewColumns => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 1.0)], [a_src, b_src, bias, out],
    ConvForwardFewRows => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 2.0)], [a_src, b_src, bias, out],
    ConvGradInputFewRows => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 2.0)], [a_src, b_src, bias, out],
    ConvGradWeightFewRows => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 2.0)], [a_src, b_src, bias, out],
    ConvForwardColumns32 => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 3.0)], [a_src, b_src, bias, out],
    ConvGradInputColumns32 => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 3.0)], [a_src, b_src, bias, out],
    ConvGradWeightColumns32 => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 3.0)], [a_src, b_src, bias, out],
    ConvForwardRows32 => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 4.0)], [a_src, b_src, bias, out],
    ConvGradInputRows32 => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 4.0)], [a_src, b_src, bias, out],
    ConvGradWeightRows32 => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 4.0)], [a_src, b_src, bias, out],
    ConvForwardFewRowsWide => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 5.0)], [a_src, b_src, bias, out],
    ConvGradInputFewRowsWide => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 5.0)], [a_src, b_src, bias, out],
    ConvGradWeightFewRowsWide => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 5.0)], [a_src, b_src, bias, out],
    ConvForwardTallNarrow => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 6.0)], [a_src, b_src, bias, out],
    ConvGradInputTallNarrow => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 6.0)], [a_src, b_src, bias, out],
    ConvGradWeightTallNarrow => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 6.0)], [a_src, b_src, bias, out],
    ConvForwardFourRows => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 7.0)], [a_src, b_src, bias, out],
    ConvGradInputFourRows => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 7.0)], [a_src, b_src, bias, out],
    ConvGradWeightFourRows => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 7.0)], [a_src, b_src, bias, out],
    ConvForwardWide => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 8.0)], [a_src, b_src, bias, out],
    ConvGradInputWide => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 8.0)], [a_src, b_src, bias, out],
    ConvGradWeightWide => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 8.0)], [a_src, b_src, bias, out],
    ConvForwardRows32Wide => "conv_gemm.wgsl", [("MODE", 0.0), ("SHAPE", 9.0)], [a_src, b_src, bias, out],
    ConvGradInputRows32Wide => "conv_gemm.wgsl", [("MODE", 1.0), ("SHAPE", 9.0)], [a_src, b_src, bias, out],
    ConvGradWeightRows32Wide => "conv_gemm.wgsl", [("MODE", 2.0), ("SHAPE", 9.0)], [a_src, b_src, bias, out],
    ConvReduce => "conv_reduce.wgsl", [], [partial, bias, out],
    ChannelSum => "channel_sum.wgsl", [], [input, sums],
    Relu => "elementwise.wgsl", [("OP", 0.0)], [a, b, out],
    ReluGrad => "elementwise.wgsl", [("OP", 1.0)], [a, b, out],
    Add => "elementwise.wgsl", [("OP", 2.0)], [a, b, out],
    Accumulate => "elementwise.wgsl", [("OP", 3.0)], [a, b, out],
    LeakyRelu => "elementwise.wgsl", [("OP", 5.0)], [a, b, out],
    LeakyReluGrad => "elementwise.wgsl", [("OP", 6.0)], [a, b, out],
    DepthwiseForward => "depthwise_conv.wgsl", [("MODE", 0.0)], [a, b, bias, out],
    DepthwiseGradInput => "depthwise_conv.wgsl", [("MODE", 1.0)], [a, b, bias, out],
    DepthwiseGradWeight => "depthwise_conv.wgsl", [("MODE", 2.0)], [a, b, bias, out],
    ConcatChannels => "channel_copy.wgsl", [("SLICE", 0.0)], [src, dst],
    SliceChannels => "channel_copy.wgsl", [("SLICE", 1.0)], [src, dst],
    MaxPool => "max_pool.wgsl", [], [src, dst],
    UpsampleForward => "upsample_nearest.wgsl", [("BACKWARD", 0.0)], [src, dst],
    UpsampleBackward => "upsample_nearest.wgsl", [("BACKWARD", 1.0)], [src, dst],
    PermuteHead => "head_permute.wgsl", [("BACKWARD", 0.0)], [src, dst],
    PermuteHeadBackward => "head_permute.wgsl", [("BACKWARD", 1.0)], [src, dst],
    Sgd => "sgd.wgsl", [], [grad, norm_sq, weights, velocity, abs_sum],
    SumSquares => "sum_squares.wgsl", [], [values, partials, abs_sum],
    GroupNormForward => "group_norm_forward.wgsl", [], [x, gamma, beta, stats, y],
    GroupNormStats => "group_norm_stats.wgsl", [], [x, gamma, beta, stats, coef],
    GroupNormApply => "group_norm_apply.wgsl", [], [coef, u, v, mask, out],
    GroupNormBackward => "group_norm_backward.wgsl", [], [x, gamma, stats, grad_out, mask, sums, dx],
    GroupNormParamGrads => "group_norm_param_grads.wgsl", [], [sums, dgamma, dbeta],
    GroupNormGradSums => "group_norm_grad_sums.wgsl", [], [x, stats, grad_out, mask, sums],
    GroupNormGradCoef => "group_norm_grad_coef.wgsl", [], [gamma, stats, sums, dgamma, dbeta, coef],
    OhemRowLoss => "ohem_row_loss.wgsl", [], [elementwise, row_loss],
    OhemEntries => "ohem_entries.wgsl", [], [row_loss, labels, anchors, entries, records],
    OhemSelect => "ohem_select.wgsl", [], [order, counts, labels, row_loss, selected, state, image_loss],
    OhemScale => "ohem_scale.wgsl", [], [selected, loss, grad],
    ImageToTensor => "image_to_tensor.wgsl", [], [frame, dst],
    ResizeNormalize => "resize_normalize.wgsl", [], [frame, dst],
    FaceScores => "face_scores.wgsl", [], [logits, scores],
    FaceCandidates => "face_candidates.wgsl", [], [selected, candidates, deltas, landmarks, anchors, records, marks, entries],
    FaceOutput => "face_output.wgsl", [], [payload, kept, keep, records, marks, faces, counts],
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
