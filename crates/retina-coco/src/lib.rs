//! # retina-coco
//!
//! COCO's instances and results formats and the bbox evaluation with pycocotools' semantics
//! exactly (`COCOeval(gt, dt, "bbox")`), in f64 and parallel over categories: the 12 summary
//! statistics, the `[T, R, K, A, M]` precision and `[T, K, A, M]` recall arrays and per-category
//! AP, as Rust values, JSON and the 12-line table. Files are read with serde and checked: errors
//! name the file, the entry, and the line and column. No GPU, no image decoding: the crate
//! depends on serde, serde_json, rayon and thiserror alone.
//!
//! ```no_run
//! use retina_coco::{self as coco, Instances};
//!
//! let gt = Instances::load("instances_val2017.json")?;
//! let results = coco::load_results("detections.json", &gt)?;
//! let eval = coco::evaluate(&gt, &results)?;
//! print!("{}", eval.summary()); // the 12 lines of COCOeval.summarize()
//! println!("AP {:.3}", eval.stats[0]);
//! # Ok::<(), retina_coco::Error>(())
//! ```

#![warn(missing_docs)]

mod error;
mod eval;
mod format;

pub use error::{Error, Result};
pub use eval::{AreaRange, CategoryAp, EvalParams, Evaluation, STAT_NAMES, evaluate, evaluate_with};
pub use format::{
    Annotation, BboxResult, Category, Image, Instances, check_results, load_results, results_from_json,
    results_to_json, save_results, write_file,
};
