//! The CPU backend: every GPU kernel's twin, with the same name and meaning, parallel with
//! rayon and vectorised where it matters. GPU results are tested against it and timed against it.
//!
//! Not part of the supported API: a user reaches the CPU backend through each operation with
//! `Backend::Cpu` and through `nn::CpuEngine`, which validate their inputs. This module is
//! public (and hidden from the documentation) only so that the crate's own tests and benchmarks
//! can compare and time a single twin without the operation around it; its items may change
//! without notice.

pub mod anchors;
pub mod box_loss;
pub mod boxes;
pub mod conv;
pub(crate) mod depthwise;
#[cfg(target_arch = "x86_64")]
pub(crate) mod direct;
pub mod focal;
pub(crate) mod group_norm;
pub mod matcher;
pub mod math;
pub mod nms;
pub mod nn;
pub mod ohem;
pub mod postprocess;
pub mod sort;
