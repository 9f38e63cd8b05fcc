//! The CPU backend: every GPU kernel's twin, with the same name and meaning, parallel with
//! rayon and vectorised where it matters. GPU results are tested against it and timed against it.

pub mod anchors;
pub mod box_loss;
pub mod boxes;
pub mod conv;
pub mod detect;
pub mod focal;
pub(crate) mod group_norm;
pub mod matcher;
pub mod math;
pub mod nms;
pub mod nn;
pub mod ohem;
pub mod sort;
