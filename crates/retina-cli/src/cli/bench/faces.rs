//! `retina bench detect --model faces`: RetinaFace on one photo at a fixed size, the whole
//! pipeline (preprocessing, network, post-processing, the faces on the host) per image: the GPU
//! (`PreparedFaces`: one submission, one readback) against the CPU backend. Rows
//! `detect_faces_<W>x<H>`, size 1 image, throughput in images/s. `scripts/faces_bench.sh`
//! prints them beside onnxruntime + the reference's post-processing on the same machine.

use std::path::PathBuf;

use clap::Args;
use retina_wgpu::Backend;
use retina_wgpu::coco;
use retina_wgpu::model::{PreparedFaces, RetinaFace};
use retina_wgpu::nn::{CpuEngine, Engine};
use retina_wgpu::{Error, Result};

use super::{Common, Row, median_seconds, progress, report};
use crate::cli::faces;

#[derive(Args, Debug)]
pub struct DetectArgs {
    /// The model: `faces` (the committed RetinaFace) or a RetinaFace model directory.
    #[arg(long, default_value = "faces")]
    model: PathBuf,
    /// The photo, resized to --size (default: the committed astronaut photo).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Image size WIDTHxHEIGHT the network runs at.
    #[arg(long, default_value = "640x480")]
    size: String,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: DetectArgs) -> Result<()> {
    let dir = faces::resolve(&args.model);
    if !faces::is_retinaface(&dir) {
        return Err(Error::InvalidParameter(format!(
            "bench detect: {} is not a RetinaFace model directory (only face models are benchmarked here)",
            dir.display()
        )));
    }
    let (w, h) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .ok_or_else(|| Error::InvalidParameter(format!("--size {}: WIDTHxHEIGHT expected", args.size)))?;
    let image = args.image.clone().unwrap_or_else(|| PathBuf::from(faces::SAMPLE_PHOTO));
    let photo = coco::read_rgb(&image)?;
    let rgb = image::imageops::resize(&photo, w, h, image::imageops::FilterType::Triangle);
    let (net, values) = RetinaFace::load(&dir)?;
    let (wu, hu) = (w as usize, h as usize);
    let op = format!("detect_faces_{w}x{h}");
    let backends = args.common.backend.backends()?;
    let bar = progress((backends.len() * (args.common.iters + 1)) as u64, "detect faces");
    let mut rows = Vec::new();
    for backend in backends {
        let (seconds, found) = match &backend {
            Backend::Gpu(ctx) => {
                let mut prepared = PreparedFaces::new(ctx, net.clone(), &values)?;
                let max = net.num_anchors(hu, wu).min(prepared.post.top_k);
                let mut found = 0;
                let s = median_seconds(args.common.iters, &bar, || {
                    found = prepared.detect(rgb.as_raw(), wu, hu, max)?.len();
                    Ok(())
                })?;
                (s, found)
            }
            Backend::Cpu => {
                let mut e = CpuEngine::<f32>::new();
                let params = net
                    .params()
                    .iter()
                    .zip(&values)
                    .map(|(spec, v)| e.tensor(spec.shape, v))
                    .collect::<Result<Vec<_>>>()?;
                let post = net.default_params();
                let mut found = 0;
                let s = median_seconds(args.common.iters, &bar, || {
                    found = net.detect(&mut e, &params, rgb.as_raw(), wu, hu, post)?.len();
                    Ok(())
                })?;
                (s, found)
            }
        };
        eprintln!("{}: {found} faces", backend.describe());
        rows.push(Row {
            op: op.clone(),
            backend: if matches!(backend, Backend::Gpu(_)) {
                "gpu"
            } else {
                "cpu"
            },
            adapter: backend.describe(),
            size: 1,
            seconds,
            throughput: 1.0 / seconds,
            unit: "images/s".into(),
            bytes: None,
            compare: op.clone(),
        });
    }
    bar.finish_and_clear();
    report(&rows, args.common.json)
}
