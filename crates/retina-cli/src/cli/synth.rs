//! `retina synth`: writes a synthetic COCO dataset and prints its anchor statistics.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use retina_wgpu::data::{self, SceneConfig, SynthStats, draw};
use retina_wgpu::{AnchorConfig, Backend, Error, GroundTruth, Result, TargetAssigner};

use crate::cli::Bar;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Directory to write: annotations.json, images/000000.png ... and synth.json (the recipe).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of images.
    #[arg(long, value_name = "N")]
    images: usize,
    /// Seed of the scene stream: image i is scene (seed, i), the same on every machine.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels (default 128, or the configuration's); object sizes scale with it.
    #[arg(long)]
    size: Option<u32>,
    /// A scene configuration: JSON with the fields of `SceneConfig` (missing ones take their
    /// defaults), or a dataset's synth.json.
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,
    /// Also write a PNG of the first 16 images with their boxes and class names drawn.
    #[arg(long, value_name = "FILE.png")]
    preview: Option<PathBuf>,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| Error::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            let format = |detail: String| Error::Format {
                path: path.display().to_string(),
                detail,
            };
            let mut value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format(format!("invalid JSON: {e}")))?;
            // A dataset's synth.json holds the configuration under "config".
            if let Some(config) = value.get_mut("config") {
                value = config.take();
            }
            serde_json::from_value::<SceneConfig>(value)
                .map_err(|e| format(format!("invalid scene configuration: {e}")))?
        }
        None => SceneConfig::default(),
    };
    if let Some(size) = args.size {
        config.size = size;
    }
    let start = Instant::now();
    let instances = data::write_coco_with_progress(
        &args.out,
        &config,
        args.images,
        args.seed,
        &Bar::new(args.images >= 200),
    )?;
    let seconds = start.elapsed().as_secs_f64();

    let names = config.class_names();
    let mut per_class = vec![0usize; names.len()];
    for ann in &instances.annotations {
        per_class[(ann.category_id - 1) as usize] += 1;
    }
    let counts: Vec<String> = names.iter().zip(&per_class).map(|(n, c)| format!("{n} {c}")).collect();
    println!(
        "{} images of {} x {} with {} objects ({}) in {seconds:.1} s",
        instances.images.len(),
        config.size,
        config.size,
        instances.annotations.len(),
        counts.join(", ")
    );

    // Statistics from the boxes just written (the same as `data::anchor_statistics`).
    let mut boxes = vec![Vec::new(); instances.images.len()];
    let mut classes = vec![Vec::new(); instances.images.len()];
    for ann in &instances.annotations {
        let i = ann.image_id as usize;
        let b = ann.bbox.map(|v| v as f32);
        boxes[i].push([b[0], b[1], b[0] + b[2], b[1] + b[3]]);
        classes[i].push((ann.category_id - 1) as i32);
    }
    let gts: Vec<GroundTruth<'_>> = boxes
        .iter()
        .zip(&classes)
        .map(|(boxes, classes)| GroundTruth { boxes, classes })
        .collect();
    let anchors = AnchorConfig::small().generate(&Backend::Cpu, config.size, config.size)?;
    let stats = SynthStats::measure(&anchors, &TargetAssigner::new(names.len()), &gts)?;
    println!();
    println!(
        "anchors of the small RetinaNet (P3-P7, sizes 16-256, 3 scales x 3 ratios), matcher 0.5 / 0.4 with low-quality matches:"
    );
    println!("{stats}");

    if let Some(path) = &args.preview {
        let mut tiles = Vec::new();
        for i in 0..args.images.min(16) {
            let scene = config.scene(args.seed, i as u64)?;
            let factor = (256 / config.size).max(1);
            let mut tile = draw::upscale(&scene.to_image(), factor);
            for (b, &c) in scene.boxes.iter().zip(&scene.classes) {
                let b = b.map(|v| v * factor as f32);
                draw::draw_label(&mut tile, b, names[c as usize], draw::palette(c as usize), 1);
            }
            tiles.push(tile);
        }
        draw::save_png(path, &draw::grid(&tiles, 4, 4, [255, 255, 255]))?;
    }

    println!();
    let dir = args.out.display();
    println!(
        "wrote {dir}/annotations.json (COCO instances), {dir}/images/ (PNG) and {dir}/synth.json (seed and configuration)"
    );
    if let Some(path) = &args.preview {
        println!("preview: {}", path.display());
    }
    Ok(())
}
