//! `retina detect`: runs a trained model on image files and writes COCO results (with an
//! `images.json` naming the files by id) and, with `--draw`, each image with its detections.

use std::path::PathBuf;

use clap::Args;
use image::RgbImage;
use retina_wgpu::coco::{self, CategoryMap, Image, Normalize, Sample};
use retina_wgpu::data::draw;
use retina_wgpu::model::{DetectEngine, Detector, checkpoint};
use retina_wgpu::nn::{CpuEngine, GpuEngine};
use retina_wgpu::{Error, Result};

use crate::cli::train::EngineChoice;
use crate::cli::{faces, tvnet};

#[derive(Args, Debug)]
pub struct DetectArgs {
    /// A trained model directory (`config.json`, `model.safetensors`): the crate's own, a
    /// torchvision RetinaNet (scripts/import_torchvision.py), or `faces` for the committed
    /// RetinaFace (MobileNet-0.25) face detector.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Images (PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Where `results.json`, `images.json` and the drawn images go.
    #[arg(long, default_value = "detections")]
    out: PathBuf,
    /// Keep detections scoring at least this (0.3; a face or torchvision model's own
    /// threshold, 0.9 for `faces` and 0.05 for torchvision's, which keep scores above it).
    #[arg(long)]
    score: Option<f32>,
    /// Also write each image with its boxes, class names and scores drawn.
    #[arg(long)]
    draw: bool,
    /// The engine.
    #[arg(long, value_enum, default_value = "auto")]
    backend: EngineChoice,
}

pub fn run(args: DetectArgs) -> Result<()> {
    if let Some(score) = args.score.filter(|s| !(0.0..1.0).contains(s)) {
        return Err(Error::InvalidParameter(format!(
            "--score must be in [0, 1), got {score}"
        )));
    }
    let model = faces::resolve(&args.model);
    if faces::is_retinaface(&model) {
        return faces::run(&model, &args.images, &args.out, args.score, args.draw, args.backend);
    }
    if tvnet::is_torchvision(&model) {
        return tvnet::run(&model, &args.images, &args.out, args.score, args.draw, args.backend);
    }
    let min_score = args.score.unwrap_or(0.3);
    let (net, values) = checkpoint::load_model(&model)?;
    let size = net.config().input_size as u32;
    let categories = CategoryMap::new(&net.config().category_list())?;
    let samples = args
        .images
        .iter()
        .enumerate()
        .map(|(i, path)| Sample::open(path, i as i64 + 1, size))
        .collect::<Result<Vec<_>>>()?;
    let detections = match args.backend.resolve()? {
        Some(ctx) => detect_all(Detector::new(GpuEngine::new(&ctx)?, net, &values)?, &samples)?,
        None => detect_all(Detector::new(CpuEngine::new(), net, &values)?, &samples)?,
    };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let mut results = Vec::new();
    let mut images = Vec::new();
    for ((sample, dets), path) in samples.iter().zip(&detections).zip(&args.images) {
        let kept: Vec<_> = dets.iter().filter(|d| d.score >= min_score).copied().collect();
        let found = coco::detections_to_results(&kept, sample.image_id(), sample.letterbox(), &categories)?;
        println!("{}: {} detections", path.display(), found.len());
        for r in &found {
            let name = categories
                .class_of(r.category_id)
                .and_then(|k| categories.name(k))
                .unwrap_or("?");
            println!(
                "  {name:<10} {:.3}  [{:.1}, {:.1}, {:.1}, {:.1}]",
                r.score, r.bbox[0], r.bbox[1], r.bbox[2], r.bbox[3]
            );
        }
        let (w, h) = (sample.letterbox().width(), sample.letterbox().height());
        images.push(Image {
            id: sample.image_id(),
            file_name: path.display().to_string(),
            width: w,
            height: h,
        });
        if args.draw {
            let mut drawn = image::open(path)
                .map_err(|e| Error::format(path.display().to_string(), format!("cannot decode the image: {e}")))?
                .into_rgb8();
            let scale = if drawn.width().max(drawn.height()) >= 400 { 2 } else { 1 };
            draw_results(&mut drawn, &found, &categories, 1, scale, scale);
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let target = args.out.join(format!("{name}.detections.png"));
            draw::save_png(&target, &drawn)?;
        }
        results.extend(found);
    }
    coco::save_results(args.out.join("results.json"), &results)?;
    let images_json = serde_json::to_vec_pretty(&images).expect("images serialise");
    coco::write_file(&args.out.join("images.json"), &images_json)?;
    println!(
        "{} detections in {} images: {}",
        results.len(),
        samples.len(),
        args.out.join("results.json").display()
    );
    Ok(())
}

fn detect_all<E: DetectEngine>(
    mut detector: Detector<E>,
    samples: &[Sample],
) -> Result<Vec<Vec<retina_wgpu::Detection>>> {
    let normalize = Normalize::IMAGENET;
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(16) {
        let images: Vec<f32> = chunk.iter().flat_map(|s| s.to_chw(&normalize)).collect();
        out.extend(detector.detect(&images)?);
    }
    Ok(out)
}

/// Draws each result's box, class name and score in its class's colour on `image`, whose pixels
/// are `zoom` times the results' coordinates: lines `thickness` px wide, text at `text_scale`.
pub fn draw_results<'a>(
    image: &mut RgbImage,
    results: impl IntoIterator<Item = &'a coco::BboxResult>,
    categories: &CategoryMap,
    zoom: u32,
    thickness: u32,
    text_scale: u32,
) {
    let z = f64::from(zoom);
    for r in results {
        let class = categories.class_of(r.category_id).unwrap_or(0);
        let name = categories.name(class).unwrap_or("?");
        let [x, y, w, h] = r.bbox.map(|v| v * z);
        let bbox = [x as f32, y as f32, (x + w) as f32, (y + h) as f32];
        let colour = draw::palette(class);
        draw::draw_box(image, bbox, colour, thickness);
        draw::draw_label(image, bbox, &format!("{name} {:.2}", r.score), colour, text_scale);
    }
}
