//! `retina eval`: COCO bbox evaluation, printed as `COCOeval.summarize()` prints it: of a
//! results file against a ground-truth file (`--gt`, `--results`), or of a trained model on a
//! COCO dataset or on fresh synthetic scenes (`--model`, `--data`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use retina_wgpu::coco::{self, CocoDataset, DatasetOptions, Evaluation, Instances};
use retina_wgpu::data::{self, SceneConfig};
use retina_wgpu::model::{DetectEngine, Detector, RetinaNet, checkpoint, evaluate_dataset};
use retina_wgpu::nn::{CpuEngine, GpuEngine};
use retina_wgpu::{Error, Result};

use crate::cli::train::{DataArgs, EngineChoice};
use crate::cli::{Bar, tvnet};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Ground truth: a COCO instances JSON (with --results).
    #[arg(long, value_name = "GT.json", requires = "results", conflicts_with = "model")]
    gt: Option<PathBuf>,
    /// Detections: a COCO bbox results JSON (`[{image_id, category_id, bbox, score}, ...]`).
    #[arg(long, value_name = "RESULTS.json", requires = "gt")]
    results: Option<PathBuf>,
    /// A trained model directory (`config.json`, `model.safetensors`) to run and evaluate: the
    /// crate's own, or a torchvision RetinaNet's (on a COCO dataset: its labels are COCO's
    /// category ids).
    #[arg(long, value_name = "DIR", required_unless_present = "gt")]
    model: Option<PathBuf>,
    /// With --model: the data (`synthetic`: --scenes fresh scenes the model has not seen, from
    /// --seed).
    #[command(flatten)]
    data: DataArgs,
    /// With --model --data synthetic: how many scenes.
    #[arg(long, default_value_t = 500)]
    scenes: usize,
    /// With --model --data synthetic: the scenes' seed (training uses 0 by default).
    #[arg(long, default_value_t = 1_000_003)]
    seed: u64,
    /// With --model: the engine.
    #[arg(long, value_enum, default_value = "auto")]
    backend: EngineChoice,
    /// With --model: also write the detections as a COCO results file.
    #[arg(long, value_name = "OUT.json")]
    save_results: Option<PathBuf>,
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
    let (eval, what) = match (&args.gt, &args.results, &args.model) {
        (Some(gt), Some(results), _) => {
            let gt = Instances::load(gt)?;
            let results = coco::load_results(results, &gt)?;
            let what = format!(
                "{} results on {} images, {} categories",
                results.len(),
                gt.images.len(),
                gt.categories.len()
            );
            (coco::evaluate(&gt, &results)?, what)
        }
        (_, _, Some(model)) if tvnet::is_torchvision(model) => {
            let (annotations, images) = match (&args.data.annotations, &args.data.images) {
                (Some(a), Some(i)) => (a.clone(), i.clone()),
                _ if args.data.data != "synthetic" => {
                    let d = Path::new(&args.data.data);
                    (d.join("annotations.json"), d.join("images"))
                }
                _ => {
                    return Err(Error::InvalidParameter(
                        "a torchvision model is evaluated on a COCO dataset: give --annotations FILE --images DIR (or --data DIR)".into(),
                    ));
                }
            };
            let (eval, results, what) =
                tvnet::evaluate(model, &annotations, &images, args.data.skip_unreadable, args.backend)?;
            if let Some(path) = &args.save_results {
                coco::save_results(path, &results)?;
            }
            (eval, what)
        }
        (_, _, Some(model)) => {
            let (net, values) = checkpoint::load_model(model)?;
            let (eval, results, what) = evaluate_model(net, &values, &args.data, args.scenes, args.seed, args.backend)?;
            if let Some(path) = &args.save_results {
                coco::save_results(path, &results)?;
            }
            (eval, what)
        }
        _ => {
            return Err(Error::InvalidParameter(
                "retina eval needs --gt and --results, or --model".into(),
            ));
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    print_evaluation(&eval, args.per_class);
    if let Some(path) = &args.json {
        let bytes = serde_json::to_vec(&eval.to_json()).expect("evaluation serialises");
        coco::write_file(path, &bytes)?;
    }
    eprintln!("{what}: evaluated in {seconds:.3} s (files read and parsed included)");
    Ok(())
}

/// Prints the 12-line summary and, if asked, the per-category table.
pub fn print_evaluation(eval: &Evaluation, per_class: bool) {
    print!("{}", eval.summary());
    if per_class {
        println!();
        print!("{}", eval.per_category_table());
    }
}

/// The dataset the arguments name, or `scenes` fresh synthetic scenes written to `scratch`.
pub fn open_eval_data(data: &DataArgs, size: usize, scenes: usize, seed: u64, scratch: &Path) -> Result<CocoDataset> {
    if let Some(dataset) = data.open(size)? {
        return Ok(dataset);
    }
    let config = SceneConfig {
        size: size as u32,
        ..SceneConfig::default()
    };
    data::write_coco_with_progress(scratch, &config, scenes, seed, &Bar::new(scenes >= 200))?;
    let options = DatasetOptions {
        input_size: size as u32,
        ..DatasetOptions::default()
    };
    CocoDataset::open_dir(scratch, &options)
}

/// Runs `net` with `values` over the data and evaluates it.
pub fn evaluate_model(
    net: RetinaNet,
    values: &[Vec<f32>],
    data: &DataArgs,
    scenes: usize,
    seed: u64,
    backend: EngineChoice,
) -> Result<(Evaluation, Vec<coco::BboxResult>, String)> {
    let scratch = std::env::temp_dir().join(format!("retina-eval-{}", std::process::id()));
    let dataset = open_eval_data(data, net.config().input_size, scenes, seed, &scratch);
    let outcome = dataset.and_then(|dataset| {
        let what = format!("{} images of {}", dataset.len(), data.describe());
        let (eval, results) = match backend.resolve()? {
            Some(ctx) => run_detector(Detector::new(GpuEngine::new(&ctx)?, net, values)?, &dataset)?,
            None => run_detector(Detector::new(CpuEngine::new(), net, values)?, &dataset)?,
        };
        Ok((eval, results, what))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

fn run_detector<E: DetectEngine>(
    mut detector: Detector<E>,
    dataset: &CocoDataset,
) -> Result<(Evaluation, Vec<coco::BboxResult>)> {
    evaluate_dataset(&mut detector, dataset, 16, &Bar::new(true))
}
