//! `retina bench detect --model faces`: RetinaFace on one photo at a fixed size, the whole
//! pipeline (preprocessing, network, post-processing, the faces on the host) per image: the GPU
//! (`PreparedFaces`: one submission, one readback) against the CPU backend. Rows
//! `detect_faces_<W>x<H>`, size 1 image, throughput in images/s. `scripts/faces_bench.sh`
//! prints them beside onnxruntime + the reference's post-processing on the same machine.

use std::path::PathBuf;

use clap::Args;
use retina_wgpu::Backend;
use retina_wgpu::coco;
use retina_wgpu::model::torchvision::Variant;
use retina_wgpu::model::{PreparedFaces, PreparedTorchvision, RetinaFace, TorchvisionRetinaNet};
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine, Shape};
use retina_wgpu::{Error, Result};

use super::{Common, Row, median_seconds, progress, report};
use crate::cli::{faces, tvnet};

#[derive(Args, Debug)]
pub struct DetectArgs {
    /// The model: `faces` (the committed RetinaFace), a RetinaFace model directory, or a
    /// torchvision RetinaNet's (scripts/import_torchvision.py).
    #[arg(long, default_value = "faces")]
    model: PathBuf,
    /// The photo, resized to --size (default: the committed astronaut photo).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Image size WIDTHxHEIGHT: the photo is resized to it first (a face model runs at it; a
    /// torchvision model then applies its own transform, so 1333x800 runs at 1344x800).
    #[arg(long, default_value = "640x480")]
    size: String,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: DetectArgs) -> Result<()> {
    let dir = faces::resolve(&args.model);
    let torchvision = tvnet::is_torchvision(&dir);
    if !torchvision && !faces::is_retinaface(&dir) {
        return Err(Error::InvalidParameter(format!(
            "bench detect: {} is neither a RetinaFace nor a torchvision RetinaNet model directory",
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
    if torchvision {
        return bench_torchvision(&dir, &rgb, &args.common);
    }
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

/// A torchvision RetinaNet on one photo: rows `torchvision_<variant>_<W>x<H>` (the whole
/// detection: transform, network, post-processing, detections on the host; on the GPU through
/// `PreparedTorchvision`, all on the device) and `..._network` (the network alone, its outputs
/// read back included), per backend.
fn bench_torchvision(dir: &std::path::Path, rgb: &image::RgbImage, common: &Common) -> Result<()> {
    let (net, values) = TorchvisionRetinaNet::load(dir)?;
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let variant = match net.config().variant {
        Variant::V1 => "v1",
        Variant::V2 => "v2",
    };
    let op = format!("torchvision_{variant}_{w}x{h}");
    let backends = common.backend.backends()?;
    let per_backend = |b: &Backend| (common.iters.max(1) + 1) * if matches!(b, Backend::Gpu(_)) { 2 } else { 1 };
    let bar = progress(
        backends.iter().map(per_backend).sum::<usize>() as u64,
        "detect (torchvision)",
    );
    let mut rows = Vec::new();
    for backend in backends {
        let (whole, network, found) = match &backend {
            Backend::Gpu(ctx) => {
                // The network's share from the engine; the whole detection as a user runs it on
                // the device: PreparedTorchvision (transform, network, post-processing, one
                // readback).
                let (_, network, _) = time_torchvision(&mut GpuEngine::new(ctx)?, &net, &values, rgb, common, &bar)?;
                let mut prepared = PreparedTorchvision::new(ctx, net.clone(), &values)?;
                let mut found = 0;
                let whole = median_seconds(common.iters, &bar, || {
                    found = prepared.detect(rgb.as_raw(), w, h)?.len();
                    Ok(())
                })?;
                (whole, network, found)
            }
            Backend::Cpu => time_torchvision(&mut CpuEngine::<f32>::new(), &net, &values, rgb, common, &bar)?,
        };
        eprintln!(
            "{}: {found} detections; network {:.3} s, the rest (transform, post-processing) {:.3} s",
            backend.describe(),
            network,
            whole - network
        );
        for (name, seconds) in [(op.clone(), whole), (format!("{op}_network"), network)] {
            rows.push(Row {
                op: name.clone(),
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
                compare: name,
            });
        }
    }
    bar.finish_and_clear();
    report(&rows, common.json)
}

/// Median seconds of the whole detection (per run: transform, network with its outputs read
/// back, post-processing) and of the network alone in the same runs, and the detections found.
fn time_torchvision<E: Engine>(
    e: &mut E,
    net: &TorchvisionRetinaNet,
    values: &[Vec<f32>],
    rgb: &image::RgbImage,
    common: &Common,
    bar: &indicatif::ProgressBar,
) -> Result<(f64, f64, usize)> {
    let params = net.upload(e, values)?;
    let post = net.config().default_params();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut found = 0;
    let mut whole = Vec::new();
    let mut network = Vec::new();
    for i in 0..=common.iters.max(1) {
        let start = std::time::Instant::now();
        let image = net.transform(rgb.as_raw(), w, h)?;
        let (ph, pw) = image.padded;
        let net_start = std::time::Instant::now();
        let x = e.tensor(Shape::new(1, 3, ph, pw), &image.data)?;
        let out = net.forward(e, &params, &x)?;
        let (logits, deltas) = (e.read(&out.logits)?, e.read(&out.boxes)?);
        let net_seconds = net_start.elapsed().as_secs_f64();
        found = net.detections(&image, &out.levels, &logits, &deltas, post)?.len();
        // The first run warms up (allocations, pipelines) and is not counted.
        if i > 0 {
            whole.push(start.elapsed().as_secs_f64());
            network.push(net_seconds);
        }
        bar.inc(1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut whole), median(&mut network), found))
}
