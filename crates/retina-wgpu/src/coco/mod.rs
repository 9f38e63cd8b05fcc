//! COCO datasets for the detector: the formats and the evaluation of the [`retina_coco`] crate
//! (re-exported here, so `retina_wgpu::coco::evaluate` is `retina_coco::evaluate`), and what
//! only a detector needs on top of them: a dataset's images decoded and letterboxed into network
//! input with their ground truth ([`CocoDataset`]), and detections mapped back to COCO results
//! ([`detections_to_results`]).
//!
//! The re-exported functions return [`retina_coco::Error`], which converts into the crate's
//! [`Error`](crate::Error) with `?`.
//!
//! ```no_run
//! use retina_wgpu::coco::{self, Instances};
//!
//! let gt = Instances::load("instances_val2017.json")?;
//! let results = coco::load_results("detections.json", &gt)?;
//! let eval = coco::evaluate(&gt, &results)?;
//! print!("{}", eval.summary()); // the 12 lines of COCOeval.summarize()
//! println!("AP {:.3}", eval.stats[0]);
//! # Ok::<(), retina_wgpu::Error>(())
//! ```

mod dataset;

pub use dataset::{
    CategoryMap, CocoDataset, DatasetOptions, Letterbox, LoadReport, MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, Sample,
    SizeMismatch, SkippedImage, detections_to_results, read_rgb,
};
#[doc(no_inline)]
pub use retina_coco::{
    Annotation, AreaRange, BboxResult, Category, CategoryAp, EvalParams, Evaluation, Image, Instances, STAT_NAMES,
    check_results, evaluate, evaluate_with, load_results, results_from_json, results_to_json, save_results, write_file,
};

#[doc(no_inline)]
pub use crate::ops::image::Normalize;
