//! The operations, each written once over both backends.

pub mod anchors;
pub mod box_loss;
pub mod boxes;
pub mod focal;
pub mod image;
pub mod matcher;
pub mod nms;
pub mod ohem;
pub mod postprocess;
pub mod sort;
