//! `retina eval`: COCO bbox evaluation of a results file against a ground-truth file, printed
//! as `COCOeval.summarize()` prints it.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use retina_wgpu::Result;
use retina_wgpu::coco::{self, Instances};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Ground truth: a COCO instances JSON.
    #[arg(long, value_name = "GT.json")]
    gt: PathBuf,
    /// Detections: a COCO bbox results JSON (`[{image_id, category_id, bbox, score}, ...]`).
    #[arg(long, value_name = "RESULTS.json")]
    results: PathBuf,
    /// Also write the whole evaluation (stats, precision and recall arrays, per-category AP)
    /// as JSON to this file.
    #[arg(long, value_name = "OUT.json")]
    json: Option<PathBuf>,
    /// Also print AP, AP50 and AP75 per category.
    #[arg(long)]
    per_class: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let start = Instant::now();
    let gt = Instances::load(&args.gt)?;
    let results = coco::load_results(&args.results, &gt)?;
    let eval = coco::evaluate(&gt, &results)?;
    let seconds = start.elapsed().as_secs_f64();
    print!("{}", eval.summary());
    if args.per_class {
        println!();
        print!("{}", eval.per_category_table());
    }
    if let Some(path) = &args.json {
        let bytes = serde_json::to_vec(&eval.to_json()).expect("evaluation serialises");
        coco::write_file(path, &bytes)?;
    }
    eprintln!(
        "{} results on {} images, {} categories: evaluated in {seconds:.3} s (files read and parsed included)",
        results.len(),
        gt.images.len(),
        gt.categories.len()
    );
    Ok(())
}
