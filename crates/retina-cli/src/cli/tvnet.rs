//! `retina detect` with a torchvision RetinaNet (any model directory whose `config.json` says
//! `"architecture": "torchvision_retinanet"`, as scripts/import_torchvision.py writes one):
//! COCO results with torchvision's labels as `category_id` and boxes in the original image's
//! pixels, and with `--draw` each photo with its boxes, class names and scores.

use std::path::{Path, PathBuf};

use image::RgbImage;
use retina_wgpu::coco::{self, BboxResult, Evaluation, Image, Instances};
use retina_wgpu::data::draw;
use retina_wgpu::model::TorchvisionRetinaNet;
use retina_wgpu::model::torchvision::Params;
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine};
use retina_wgpu::{Detection, Error, Progress, Result};

use crate::cli::Bar;
use crate::cli::train::EngineChoice;

/// True when the model directory's `config.json` names torchvision's RetinaNet.
pub fn is_torchvision(dir: &Path) -> bool {
    retina_wgpu::model::torchvision::is_model_dir(dir)
}

/// Runs the model on `images`, writing `results.json`, `images.json` and, with `draw`,
/// `<name>.detections.png` per image into `out`.
pub fn run(
    dir: &Path,
    images: &[PathBuf],
    out: &Path,
    score: Option<f32>,
    draw_boxes: bool,
    backend: EngineChoice,
) -> Result<()> {
    let (net, values) = TorchvisionRetinaNet::load(dir)?;
    let mut params = net.config().default_params();
    if let Some(s) = score {
        params.score_threshold = s;
    }
    params.check()?;
    let (photos, found) = match backend.resolve()? {
        Some(ctx) => detect_all(GpuEngine::new(&ctx)?, &net, &values, images, params)?,
        None => detect_all(CpuEngine::<f32>::new(), &net, &values, images, params)?,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut results = Vec::new();
    let mut listed = Vec::new();
    for (i, ((path, rgb), dets)) in images.iter().zip(&photos).zip(&found).enumerate() {
        let id = i as i64 + 1;
        println!("{}: {} detections", path.display(), dets.len());
        for d in dets {
            let [x1, y1, x2, y2] = d.bbox;
            println!(
                "  {:<14} {:.3}  [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]",
                net.config().category_name(d.class),
                d.score
            );
            results.push(serde_json::json!({
                "image_id": id,
                "category_id": d.class,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": d.score,
            }));
        }
        listed.push(Image {
            id,
            file_name: path.display().to_string(),
            width: rgb.width(),
            height: rgb.height(),
        });
        if draw_boxes {
            let mut drawn = rgb.clone();
            draw_all(&mut drawn, dets, &net);
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            draw::save_png(out.join(format!("{name}.detections.png")), &drawn)?;
        }
    }
    let json = serde_json::to_vec_pretty(&results).expect("results serialise");
    coco::write_file(&out.join("results.json"), &json)?;
    let json = serde_json::to_vec_pretty(&listed).expect("images serialise");
    coco::write_file(&out.join("images.json"), &json)?;
    println!(
        "{} detections in {} images: {}",
        results.len(),
        images.len(),
        out.join("results.json").display()
    );
    Ok(())
}

fn detect_all<E: Engine>(
    mut e: E,
    net: &TorchvisionRetinaNet,
    values: &[Vec<f32>],
    images: &[PathBuf],
    params: Params,
) -> Result<(Vec<RgbImage>, Vec<Vec<Detection>>)> {
    let tensors = net.upload(&mut e, values)?;
    let mut photos = Vec::with_capacity(images.len());
    let mut found = Vec::with_capacity(images.len());
    for path in images {
        let rgb = coco::read_rgb(path)?;
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let dets = net
            .detect(&mut e, &tensors, rgb.as_raw(), w, h, params)
            .map_err(|err| Error::format(path.display().to_string(), err.to_string()))?;
        found.push(dets);
        photos.push(rgb);
    }
    Ok((photos, found))
}

/// Draws each detection's box, class name and score in its class's colour, sized to the photo.
pub fn draw_all(image: &mut RgbImage, dets: &[Detection], net: &TorchvisionRetinaNet) {
    let side = image.width().max(image.height());
    let thickness = (side / 400).max(1);
    let text = (side / 500).max(1);
    for d in dets {
        let colour = draw::palette(d.class as usize);
        let label = format!("{} {:.2}", net.config().category_name(d.class), d.score);
        draw::draw_box(image, d.bbox, colour, thickness);
        draw::draw_label(image, d.bbox, &label, colour, text);
    }
}

/// One image's detections from its RGB bytes, width and height.
type DetectFn<'a> = dyn FnMut(&[u8], usize, usize) -> Result<Vec<Detection>> + 'a;

/// Runs the model over every image of the COCO instances file `annotations` (files under
/// `images`) and evaluates the detections with COCO's metrics. The model's labels are the
/// results' `category_id`s, as torchvision's COCO models use COCO's ids (91-id space);
/// detections of a label the annotations have no category for are dropped (and counted).
pub fn evaluate(
    dir: &Path,
    annotations: &Path,
    images: &Path,
    skip_unreadable: bool,
    backend: EngineChoice,
) -> Result<(Evaluation, Vec<BboxResult>, String)> {
    let gt = Instances::load(annotations)?;
    let (net, values) = TorchvisionRetinaNet::load(dir)?;
    let params = net.config().default_params();
    let known: std::collections::HashSet<i64> = gt.categories.iter().map(|c| c.id).collect();
    let bar = Bar::new(true);
    bar.start("detecting", gt.images.len() as u64);
    let mut results = Vec::new();
    let (mut dropped, mut unreadable) = (0usize, Vec::new());
    let mut run = |detect: &mut DetectFn| -> Result<()> {
        for image in &gt.images {
            let path = images.join(&image.file_name);
            let rgb = match coco::read_rgb(&path) {
                Ok(rgb) => rgb,
                Err(e) if skip_unreadable => {
                    unreadable.push(format!("{}: {e}", path.display()));
                    bar.advance(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            let found =
                detect(rgb.as_raw(), w, h).map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
            for d in found {
                let category_id = i64::from(d.class);
                if !known.contains(&category_id) {
                    dropped += 1;
                    continue;
                }
                let [x1, y1, x2, y2] = d.bbox.map(f64::from);
                results.push(BboxResult {
                    image_id: image.id,
                    category_id,
                    bbox: [x1, y1, x2 - x1, y2 - y1],
                    score: f64::from(d.score),
                });
            }
            bar.advance(1);
        }
        Ok(())
    };
    match backend.resolve()? {
        Some(ctx) => {
            let mut e = GpuEngine::new(&ctx)?;
            let p = net.upload(&mut e, &values)?;
            run(&mut |rgb, w, h| net.detect(&mut e, &p, rgb, w, h, params))?;
        }
        None => {
            let mut e = CpuEngine::<f32>::new();
            let p = net.upload(&mut e, &values)?;
            run(&mut |rgb, w, h| net.detect(&mut e, &p, rgb, w, h, params))?;
        }
    }
    bar.finish();
    for u in &unreadable {
        eprintln!("skipped unreadable image {u}");
    }
    if dropped > 0 {
        eprintln!(
            "{dropped} detections had a label that is not a category of {}",
            annotations.display()
        );
    }
    let eval = coco::evaluate(&gt, &results)?;
    let what = format!(
        "{} images of {} ({} skipped as unreadable), {} detections",
        gt.images.len(),
        annotations.display(),
        unreadable.len(),
        results.len()
    );
    Ok((eval, results, what))
}
