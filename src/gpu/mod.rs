//! The GPU engine: context (own device or the host's), kernel table, typed buffers, limits-aware
//! dispatch, and the dispatch code of each kernel.

pub(crate) mod anchors;
pub(crate) mod box_loss;
pub(crate) mod boxes;
mod buffer;
mod context;
pub(crate) mod detect;
mod dispatch;
pub(crate) mod focal;
mod group_norm;
mod kernels;
pub(crate) mod matcher;
pub(crate) mod nms;
pub(crate) mod nn;
pub(crate) mod ohem;
mod reduce;
#[doc(hidden)] // public for tests/shaders.rs, not part of the API
pub mod shader;
mod sort;
pub(crate) mod sort_ops;
mod topk;

pub use box_loss::BoxLossBuffers;
pub use buffer::{BUFFER_USAGE, GpuBuffer};
pub use context::{DeviceLimits, GpuContext, GpuOptions, LimitCaps, enumerate_adapters};
pub use detect::{DetectionBuffers, DetectionOutput, GpuDetection};
pub use focal::{FocalBuffers, LogitsBuffer, TargetsBuffer};
pub use matcher::{AssignBuffers, GroundTruthBuffers};
pub use ohem::OhemBuffers;
pub use sort::SortEntry;
pub use topk::{TopkOutput, TopkSegment};
