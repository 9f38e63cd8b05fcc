//! # retina-wgpu
//!
//! The machinery of RetinaNet ("Focal Loss for Dense Object Detection", Lin et al., ICCV 2017)
//! as WGSL compute shaders through [wgpu], on any Vulkan, Metal or DX12 GPU, with a CPU backend
//! that computes the same operations (and is fast in its own right) for checking and comparison.
//!
//! - [`FocalLoss`]: sigmoid focal loss forward and backward fused in one pass; labels or dense
//!   targets, f32 or f16 logits, alpha-balanced cross entropy and FL* on the same kernel.
//! - [`Ohem`]: online hard example mining, the paper's baseline classification loss (per-anchor
//!   loss, NMS over the anchors by loss, the hardest per image), selected on the device.
//! - [`AnchorConfig`]: RetinaNet's anchors (P3-P7, scales x ratios), cached on the device.
//! - [`TargetAssigner`]: IoU matching (torchvision's [`Matcher`]) fused with class labels,
//!   encoded box targets and positive counts for a batch, in one command buffer.
//! - [`box_iou`], [`BoxCoder`] and [`BoxLoss`] (smooth L1 or GIoU, forward and backward).
//! - [`sort_desc`], [`top_k`], [`nms`] / [`batched_nms`] / [`Nms`] (hard, soft, matrix, fast)
//!   and [`PostProcess`]: RetinaNet's inference path from network outputs to detections.
//! - [`coco`]: COCO datasets decoded into network input, and detections mapped back to COCO
//!   results; the formats and the evaluation (exact to pycocotools) are the [`retina_coco`]
//!   crate's, re-exported.
//! - [`model`]: the small RetinaNet over [`nn::Engine`] (forward, backward, its training loss).
//! - [`data`]: deterministic synthetic scenes (shapes on textured backgrounds, exact boxes)
//!   written as COCO datasets, their anchor statistics, and box and label drawing.
//! - [`train`]: the training loop on either engine, with checkpoints that resume exactly.
//! - [`nn`]: the layers of a small RetinaNet (convolution and GroupNorm forward and backward,
//!   ReLU, upsampling, the head permute, SGD) on a CPU or GPU [`nn::Engine`].
//!
//! Run an operation on a [`Backend`]: `Backend::gpu()?` creates a device of its own;
//! [`GpuContext::from_device`] wraps a device and queue a host application already has, and the
//! `record_*` methods of [`GpuContext`] record into that application's command encoder over
//! [`GpuBuffer`]s, leaving results on the device.
//!
//! Every error is an [`Error`]; nothing panics on bad input or device trouble. Work recorded
//! into a host's encoder is checked before it is recorded; an error inside the recorded
//! commands surfaces when the host finishes its encoder (see [`gpu::PreparedPostProcess`] and
//! the prepared objects, which also record frame after frame creating nothing). Long operations
//! (loading a dataset, detecting over it, writing synthetic scenes) report to a [`Progress`]
//! instead of drawing on the terminal.
//!
//! The `retina` command line (demo, training, the paper's ablation, benchmarks, charts) is the
//! workspace's `retina-cli` crate; this library has no terminal, plotting or argument-parsing
//! dependency.

#![warn(missing_docs)]
// wgpu's handles are neither Send nor Sync on the web (one thread), so the contexts' shared
// state is an Arc of a non-Sync value there; Arc still gives the cheap clones the API promises.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

mod backend;
pub mod coco;
// The CPU twins, public for the crate's tests and benchmarks only (see its module docs).
#[doc(hidden)]
pub mod cpu;
pub mod data;
mod error;
pub mod gpu;
pub mod model;
pub mod nn;
pub mod ops;
mod progress;
pub mod train;

pub use backend::Backend;
pub use error::{Error, Result};
pub use gpu::{GpuBuffer, GpuContext, GpuOptions, LimitCaps};
pub use ops::anchors::AnchorConfig;
pub use ops::box_loss::{BoxLoss, BoxLossInput, BoxLossKind, BoxLossOutput, BoxReduction};
pub use ops::boxes::{BoxCoder, box_iou};
pub use ops::focal::{FocalInput, FocalLoss, FocalOutput, FocalVariant, Logits, Reduction, Targets};
pub use ops::matcher::{AssignedTargets, GroundTruth, Matcher, TargetAssigner};
pub use ops::nms::{Nms, NmsKind, NmsOutput, batched_nms, nms};
pub use ops::ohem::{Ohem, OhemInput, OhemOutput};
pub use ops::postprocess::{Detection, DetectionInput, PostProcess};
pub use ops::sort::{sort_desc, top_k};
pub use progress::{NoProgress, Progress};

/// Re-exported so that users name the same `f16` type the crate uses.
pub use half::f16;
/// Re-exported: the COCO formats and evaluator crate this one builds on.
pub use retina_coco;
/// Re-exported so that host applications use the same wgpu version as the crate.
pub use wgpu;
