//! `retina demo`: a detector learns and detects, start to finish, in about five minutes on a
//! 2-core CPU. Writes a synthetic validation set, trains the small RetinaNet on freshly generated
//! scenes (on a real GPU when there is one, else on the CPU backend), evaluates it with COCO's
//! metrics, and writes pictures: the validation images with their detections, and the loss
//! curves.

use std::path::{Path, PathBuf};

use crate::plot::{Chart, Series};
use clap::Args;
use image::RgbImage;
use retina_wgpu::coco::{self, BboxResult, CategoryMap};
use retina_wgpu::data::{self, SceneConfig, draw};
use retina_wgpu::model::{RetinaNetConfig, checkpoint};
use retina_wgpu::train::{SyntheticData, TrainOptions, synthetic_categories};
use retina_wgpu::{Error, Result};

use crate::cli::Bar;
use crate::cli::detect::draw_results;
use crate::cli::eval::{evaluate_model, print_evaluation};
use crate::cli::train::{DataArgs, EngineChoice, RunSettings, train};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where everything goes.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Training time in minutes (the step count follows from the speed of the first steps).
    #[arg(long, default_value_t = 4.5)]
    minutes: f64,
    /// Train for exactly this many steps instead of --minutes.
    #[arg(long)]
    steps: Option<usize>,
    /// The engine.
    #[arg(long, value_enum, default_value = "auto")]
    backend: EngineChoice,
    /// Validation images.
    #[arg(long, default_value_t = 500)]
    val_images: usize,
    /// Seed of the weights and the training scenes (validation scenes use another).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Seed of the validation scenes: far from any training seed.
const VAL_SEED: u64 = 1_000_003;

pub fn run(args: DemoArgs) -> Result<()> {
    let out = &args.out;
    let scenes = SceneConfig::default();
    let val_dir = out.join("val");
    let model_dir = out.join("model");
    for dir in [&val_dir, &model_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    println!(
        "retina demo: a small RetinaNet ({} classes: {}) learns to find shapes on textured backgrounds.",
        scenes.num_classes(),
        scenes.class_names().join(", ")
    );
    data::write_coco_with_progress(
        &val_dir,
        &scenes,
        args.val_images,
        VAL_SEED,
        &Bar::new(args.val_images >= 200),
    )?;
    println!("validation set: {} images in {}", args.val_images, val_dir.display());

    let config = RetinaNetConfig {
        input_size: scenes.size as usize,
        num_classes: scenes.num_classes(),
        categories: synthetic_categories(&scenes),
        ..RetinaNetConfig::default()
    };
    let steps = args.steps.unwrap_or(3000);
    let options = TrainOptions {
        steps,
        warmup_steps: 150,
        seed: args.seed,
        log_every: 20,
        ..TrainOptions::default()
    };
    let training = SyntheticData {
        config: scenes.clone(),
        seed: args.seed,
        normalize: coco::Normalize::IMAGENET,
    };
    let run = RunSettings {
        out: model_dir.clone(),
        minutes: if args.steps.is_some() { None } else { Some(args.minutes) },
        save_every: 1000,
        quiet: false,
        resume: false,
    };
    let report = train(args.backend, config, options, &training, &run)?;
    println!(
        "trained {} steps (batch 8) on {} in {:.0} s: {:.1} images/s",
        report.steps, report.engine, report.seconds, report.images_per_second
    );

    let (net, values) = checkpoint::load_model(&model_dir)?;
    let categories = CategoryMap::new(&net.config().category_list())?;
    let val = DataArgs {
        data: val_dir.display().to_string(),
        annotations: None,
        images: None,
        skip_unreadable: false,
    };
    let (eval, results, what) = evaluate_model(net, &values, &val, args.val_images, VAL_SEED, args.backend)?;
    println!("\nCOCO evaluation on {what}:");
    print_evaluation(&eval, true);
    coco::save_results(out.join("val_results.json"), &results)?;

    let grid_path = out.join("detections.png");
    draw::save_png(&grid_path, &detection_grid(&val_dir, &results, &categories, 16)?)?;
    let loss_path = out.join("loss.png");
    loss_chart(&model_dir.join("metrics.jsonl"))?.save_png(&loss_path)?;

    let summary = serde_json::json!({
        "training": {
            "steps": report.steps,
            "batch": 8,
            "seconds": report.seconds,
            "images_per_second": report.images_per_second,
            "engine": report.engine,
        },
        "validation_images": args.val_images,
        "coco": eval.to_json()["stats_by_name"],
        "per_category": eval.per_category,
    });
    let summary_path = out.join("metrics.json");
    coco::write_file(
        &summary_path,
        &serde_json::to_vec_pretty(&summary).expect("summary serialises"),
    )?;
    println!(
        "\nAP {:.3}, AP50 {:.3} after {:.0} s of training.\nFiles:\n  {}  validation images with their detections\n  {}  training loss\n  {}  numbers\n  {}  the model (config.json, model.safetensors, metrics.jsonl)\n  {}  the validation set (COCO format) and {}",
        eval.stats[0],
        eval.stats[1],
        report.seconds,
        grid_path.display(),
        loss_path.display(),
        summary_path.display(),
        model_dir.display(),
        val_dir.display(),
        out.join("val_results.json").display(),
    );
    Ok(())
}

/// The first `count` validation images, enlarged, with their confident detections (score >= 0.5)
/// drawn.
fn detection_grid(val_dir: &Path, results: &[BboxResult], categories: &CategoryMap, count: usize) -> Result<RgbImage> {
    const ZOOM: u32 = 3;
    let instances = coco::Instances::load(val_dir.join("annotations.json"))?;
    let mut tiles = Vec::new();
    for image in instances.images.iter().take(count) {
        let path = val_dir.join("images").join(&image.file_name);
        let picture = image::open(&path)
            .map_err(|e| Error::format(path.display().to_string(), format!("cannot decode the image: {e}")))?
            .into_rgb8();
        let mut tile = draw::upscale(&picture, ZOOM);
        let confident = results.iter().filter(|r| r.image_id == image.id && r.score >= 0.5);
        draw_results(&mut tile, confident, categories, ZOOM, 2, 1);
        tiles.push(tile);
    }
    Ok(draw::grid(&tiles, 4, 6, [255, 255, 255]))
}

/// The total, class and box losses of `metrics.jsonl` against the step.
fn loss_chart(metrics: &Path) -> Result<Chart> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut total = Vec::new();
    let mut class = Vec::new();
    let mut boxes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::format(metrics.display().to_string(), format!("line {}: {e}", i + 1)))?;
        let step = v["step"].as_f64().unwrap_or(f64::NAN);
        let get = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        total.push((step, get("loss")));
        class.push((step, get("class_loss")));
        boxes.push((step, get("box_loss")));
    }
    let series = |name: &str, colour: [u8; 3], points: Vec<(f64, f64)>| Series {
        name: name.to_string(),
        colour,
        points,
    };
    Ok(Chart {
        title: "Training loss (focal + smooth L1, per positive anchor)".to_string(),
        x_label: "step".to_string(),
        y_label: "loss".to_string(),
        width: 800,
        height: 500,
        log_y: false,
        series: vec![
            series("total", [30, 30, 30], total),
            series("focal (class)", [220, 60, 50], class),
            series("smooth L1 (box)", [40, 110, 220], boxes),
        ],
    })
}
