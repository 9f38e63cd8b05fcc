//! `retina detect` with a RetinaFace model (`--model faces`, or any model directory whose
//! `config.json` says `"architecture": "retinaface"`): faces with their five landmarks, in
//! `results.json` and, with `--draw`, drawn on each photo.

use std::path::{Path, PathBuf};

use image::RgbImage;
use retina_wgpu::coco::{self, Image};
use retina_wgpu::data::draw;
use retina_wgpu::model::retinaface::{Face, Params};
use retina_wgpu::model::{PreparedFaces, RetinaFace};
use retina_wgpu::nn::{CpuEngine, Engine};
use retina_wgpu::{Error, Result};

use crate::cli::train::EngineChoice;

/// The model `--model faces` names: the converted RetinaFace (MobileNet-0.25) committed in the
/// repository's `models/`.
pub const FACES_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/retinaface-mobilenet0.25");

/// The photo `retina bench detect` uses by default (public domain, see `photos/README.md`).
pub const SAMPLE_PHOTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../photos/astronaut.png");

/// `--model` as a directory: `faces` is the committed RetinaFace model.
pub fn resolve(model: &Path) -> PathBuf {
    if model == Path::new("faces") && !model.exists() {
        PathBuf::from(FACES_MODEL)
    } else {
        model.to_path_buf()
    }
}

/// True when the model directory's `config.json` names the RetinaFace architecture.
pub fn is_retinaface(dir: &Path) -> bool {
    let Ok(text) = std::fs::read(dir.join("config.json")) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("architecture")
                .and_then(|a| a.as_str())
                .map(|a| a == "retinaface")
        })
        .unwrap_or(false)
}

/// Runs the face model on `images`, writing `results.json` (COCO results with `landmarks`),
/// `images.json` and, with `draw`, `<name>.faces.png` per image into `out`.
pub fn run(
    dir: &Path,
    images: &[PathBuf],
    out: &Path,
    score: Option<f32>,
    draw_faces: bool,
    backend: EngineChoice,
) -> Result<()> {
    let (net, values) = RetinaFace::load(dir)?;
    let mut params = net.default_params();
    if let Some(s) = score {
        params.score_threshold = s;
    }
    let found = match backend.resolve()? {
        Some(ctx) => {
            // The network and the post-processing on the device, one readback per image.
            let mut prepared = PreparedFaces::new(&ctx, net, &values)?;
            prepared.post = params;
            let mut found: Found = (Vec::new(), Vec::new());
            for path in images {
                let rgb = coco::read_rgb(path)?;
                let (w, h) = (rgb.width() as usize, rgb.height() as usize);
                let max_faces = prepared.net().num_anchors(h, w).min(params.top_k);
                let faces = prepared
                    .detect(rgb.as_raw(), w, h, max_faces)
                    .map_err(|err| Error::format(path.display().to_string(), err.to_string()))?;
                found.0.push(rgb);
                found.1.push(faces);
            }
            found
        }
        None => detect_all(CpuEngine::<f32>::new(), &net, &values, images, params)?,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut results = Vec::new();
    let mut listed = Vec::new();
    for (i, ((path, rgb), faces)) in images.iter().zip(&found.0).zip(&found.1).enumerate() {
        let id = i as i64 + 1;
        println!("{}: {} faces", path.display(), faces.len());
        for f in faces {
            println!(
                "  face {:.3}  [{:.1}, {:.1}, {:.1}, {:.1}]",
                f.score,
                f.bbox[0],
                f.bbox[1],
                f.bbox[2] - f.bbox[0],
                f.bbox[3] - f.bbox[1]
            );
            results.push(serde_json::json!({
                "image_id": id,
                "category_id": 1,
                "bbox": [f.bbox[0], f.bbox[1], f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]],
                "score": f.score,
                "landmarks": f.landmarks,
            }));
        }
        listed.push(Image {
            id,
            file_name: path.display().to_string(),
            width: rgb.width(),
            height: rgb.height(),
        });
        if draw_faces {
            let mut drawn = rgb.clone();
            draw_all(&mut drawn, faces);
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            draw::save_png(out.join(format!("{name}.faces.png")), &drawn)?;
        }
    }
    let json = serde_json::to_vec_pretty(&results).expect("results serialise");
    coco::write_file(&out.join("results.json"), &json)?;
    let json = serde_json::to_vec_pretty(&listed).expect("images serialise");
    coco::write_file(&out.join("images.json"), &json)?;
    println!(
        "{} faces in {} images: {}",
        results.len(),
        images.len(),
        out.join("results.json").display()
    );
    Ok(())
}

type Found = (Vec<RgbImage>, Vec<Vec<Face>>);

fn detect_all<E: Engine>(
    mut e: E,
    net: &RetinaFace,
    values: &[Vec<f32>],
    images: &[PathBuf],
    params: Params,
) -> Result<Found> {
    let tensors = net
        .params()
        .iter()
        .zip(values)
        .map(|(spec, v)| e.tensor(spec.shape, v))
        .collect::<Result<Vec<_>>>()?;
    let mut photos = Vec::with_capacity(images.len());
    let mut faces = Vec::with_capacity(images.len());
    for path in images {
        let rgb = coco::read_rgb(path)?;
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let found = net
            .detect(&mut e, &tensors, rgb.as_raw(), w, h, params)
            .map_err(|err| Error::format(path.display().to_string(), err.to_string()))?;
        faces.push(found);
        photos.push(rgb);
    }
    Ok((photos, faces))
}

/// The colours of the five landmarks (eyes, nose, mouth corners).
const LANDMARK_COLOURS: [[u8; 3]; 5] = [
    [255, 59, 59],
    [255, 210, 31],
    [255, 64, 255],
    [51, 221, 85],
    [77, 125, 255],
];

/// Draws each face's box, score and landmarks, sized to the photo.
pub fn draw_all(image: &mut RgbImage, faces: &[Face]) {
    let side = image.width().max(image.height());
    let thickness = (side / 400).max(1);
    let text = (side / 500).max(1);
    let colour = [0, 200, 255];
    for f in faces {
        draw::draw_box(image, f.bbox, colour, thickness);
        draw::draw_label(image, f.bbox, &format!("face {:.2}", f.score), colour, text);
        let r = i64::from(thickness + 1);
        for (p, c) in f.landmarks.iter().zip(LANDMARK_COLOURS) {
            let (x, y) = (p[0].round() as i64, p[1].round() as i64);
            draw::fill_rect(image, x - r, y - r, x + r + 1, y + r + 1, c);
        }
    }
}
