//! The GPU engine: context (own device or the host's), kernel table, typed buffers, limits-aware
//! dispatch, and the dispatch code of each kernel.

pub(crate) mod anchors;
pub(crate) mod box_loss;
pub(crate) mod boxes;
mod buffer;
mod context;
mod conv;
mod dispatch;
pub(crate) mod faces;
pub(crate) mod focal;
mod frame;
mod group_norm;
mod image;
mod kernels;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod layout_tests;
pub(crate) mod matcher;
pub(crate) mod nms;
pub(crate) mod nn;
pub(crate) mod ohem;
pub(crate) mod postprocess;
pub(crate) mod prepared;
mod profile;
mod reduce;
#[doc(hidden)] // public for tests/shaders.rs, not part of the API
pub mod shader;
mod sort;
pub(crate) mod sort_ops;
mod topk;

pub use box_loss::BoxLossBuffers;
pub use buffer::{BUFFER_USAGE, GpuBuffer};
pub use context::{DeviceLimits, GpuContext, GpuOptions, LimitCaps, enumerate_adapters};
pub use faces::{FaceBuffers, FaceOutput, GpuFace};
pub use focal::{FocalBuffers, LogitsBuffer, TargetsBuffer};
pub use frame::{KernelWork, ResourceStats, WorkStats};
pub use image::{ResizeTarget, frame_scale};
pub use matcher::{AssignBuffers, GroundTruthBuffers};
pub use ohem::OhemBuffers;
pub use postprocess::{DetectionBuffers, DetectionOutput, DrawArgs, GpuDetection, OutputOptions};
pub use prepared::{NmsBuffers, PreparedNms, PreparedPostProcess, PreparedTopK};
pub use profile::{KernelTime, MAX_PROFILED_DISPATCHES, Profile};
pub use sort::SortEntry;
pub use topk::{TopkOutput, TopkSegment};
