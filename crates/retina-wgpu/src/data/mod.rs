//! Data for training and showing a detector: a deterministic synthetic scene generator that
//! writes COCO datasets, the anchor statistics of its boxes, drawing of boxes and labels, and
//! the benchmarks' deterministic inputs ([`workloads`]).
//!
//! ```no_run
//! use retina_wgpu::data::{self, SceneConfig};
//!
//! let config = SceneConfig::default(); // 128 x 128, 1-8 objects of 4 shape classes
//! let scene = config.scene(7, 0)?; // a function of (seed, index) alone
//! assert_eq!(scene.pixels.len(), 128 * 128 * 3);
//! data::write_coco("scenes/train", &config, 1000, 7)?; // annotations.json + images/*.png
//! print!("{}", data::anchor_statistics(&config, 1000, 7)?);
//! # Ok::<(), retina_wgpu::Error>(())
//! ```

pub mod draw;
mod synth;
pub mod workloads;

pub use synth::{
    Background, Scene, SceneConfig, Shape, SizeBin, SynthStats, anchor_statistics, write_coco, write_coco_with_progress,
};
