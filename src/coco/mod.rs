//! COCO in and out: the instances and results formats, and the bbox evaluation with
//! pycocotools' semantics exactly (`COCOeval(gt, dt, "bbox")`).
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
mod eval;
mod format;
mod workload;

pub use dataset::{
    CategoryMap, CocoDataset, DatasetOptions, Letterbox, LoadReport, Normalize, Sample, SizeMismatch, SkippedImage,
    detections_to_results,
};
pub use eval::{AreaRange, CategoryAp, EvalParams, Evaluation, STAT_NAMES, evaluate, evaluate_with};
pub use format::{
    Annotation, BboxResult, Category, Image, Instances, check_results, load_results, results_from_json,
    results_to_json, save_results, write_file,
};
pub use workload::{CocoWorkload, coco_categories, coco_category_ids, val2017_like, write_val2017_like};
