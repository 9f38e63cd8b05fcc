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
use retina_wgpu::model::{LayerTime, PreparedFaces, PreparedTorchvision, RetinaFace, TorchvisionRetinaNet};
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine, Shape};
use retina_wgpu::{Error, Result};

use super::{Common, Row, median_seconds, progress, report};
use crate::cli::{BackendChoice, faces, tvnet};

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
    /// Profile a RetinaFace's network on the CPU backend instead: the median time of each
    /// convolution, totals by kind (dense, depthwise, 1x1) and the rest of the forward pass.
    /// With --json: one object (size, threads, forward_seconds, elsewhere_seconds and the
    /// layers), not the rows other benches print.
    #[arg(long)]
    layers: bool,
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
        if args.layers {
            return Err(Error::InvalidParameter(
                "bench detect --layers profiles a RetinaFace model; this is a torchvision RetinaNet".into(),
            ));
        }
        return bench_torchvision(&dir, &rgb, &args.common);
    }
    let (net, values) = RetinaFace::load(&dir)?;
    if args.layers {
        return profile_layers(&net, &values, &rgb, &args.common);
    }
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

/// `--layers`: the network's forward pass on the CPU backend, `common.iters` times after a
/// warm-up, each convolution's median time (and their sums by kind) beside the whole pass's.
fn profile_layers(net: &RetinaFace, values: &[Vec<f32>], rgb: &image::RgbImage, common: &Common) -> Result<()> {
    if common.backend == BackendChoice::Gpu {
        return Err(Error::InvalidParameter(
            "bench detect --layers profiles the CPU backend only (a GPU engine's calls only record \
             commands): drop --backend gpu"
                .into(),
        ));
    }
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut e = CpuEngine::<f32>::new();
    let params = net
        .params()
        .iter()
        .zip(values)
        .map(|(spec, v)| e.tensor(spec.shape, v))
        .collect::<Result<Vec<_>>>()?;
    let images = e.tensor(Shape::new(1, 3, h, w), &net.input(rgb.as_raw(), w, h)?)?;
    let iters = common.iters.max(1);
    let bar = progress(iters as u64 + 1, "profile faces");
    let mut runs: Vec<Vec<LayerTime>> = Vec::with_capacity(iters);
    let mut passes = Vec::with_capacity(iters);
    for i in 0..=iters {
        let mut profile = Vec::new();
        let start = std::time::Instant::now();
        // As `detect` runs it: in one engine pass (the CPU engine's workers polling throughout).
        e.pass(|e| net.forward_profiled(e, &params, &images, &mut profile))?;
        if i > 0 {
            passes.push(start.elapsed().as_secs_f64());
            runs.push(profile);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let kind = |l: &LayerTime| match (l.depthwise, l.conv.kernel) {
        (true, _) => "depthwise",
        (false, (1, 1)) => "1x1",
        (false, _) => "dense",
    };
    let layers: Vec<(&LayerTime, f64)> = runs[0]
        .iter()
        .enumerate()
        .map(|(i, l)| (l, median(runs.iter().map(|r| r[i].seconds).collect())))
        .collect();
    // The rest of the pass: per run, the pass less its convolutions, then the median (a
    // difference of two medians could come out below zero).
    let elsewhere = median(
        passes
            .iter()
            .zip(&runs)
            .map(|(p, r)| p - r.iter().map(|l| l.seconds).sum::<f64>())
            .collect(),
    );
    let pass = median(passes);
    let convs: f64 = layers.iter().map(|(_, s)| s).sum();
    let total = |k: &str| layers.iter().filter(|(l, _)| kind(l) == k).map(|(_, s)| s).sum::<f64>();
    if common.json {
        let rows: Vec<_> = layers
            .iter()
            .map(|(l, s)| {
                serde_json::json!({"layer": l.name, "kind": kind(l), "input": l.input.to_string(),
                    "kernel": [l.conv.kernel.0, l.conv.kernel.1], "stride": l.conv.stride,
                    "out_channels": l.conv.out_channels, "seconds": s})
            })
            .collect();
        let doc = serde_json::json!({"size": format!("{w}x{h}"), "threads": rayon::current_num_threads(),
            "forward_seconds": pass, "elsewhere_seconds": elsewhere, "layers": rows});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Error::InvalidParameter(e.to_string()))?
        );
        return Ok(());
    }
    println!("{:<26} {:<20} {:>9} {:>10}", "layer", "input", "kernel", "median ms");
    for (l, s) in &layers {
        let k = format!(
            "{}x{}/{}{}",
            l.conv.kernel.0,
            l.conv.kernel.1,
            l.conv.stride,
            if l.depthwise { " dw" } else { "" }
        );
        println!("{:<26} {:<20} {:>9} {:>10.3}", l.name, l.input.to_string(), k, s * 1e3);
    }
    println!(
        "\nconvolutions {:.2} ms (dense {:.2}, depthwise {:.2}, 1x1 {:.2}); the forward pass {:.2} ms, \
         {:.2} ms of it elsewhere (concatenation, ReLU, upsampling, head permutes); {} rayon threads, {w}x{h}",
        convs * 1e3,
        total("dense") * 1e3,
        total("depthwise") * 1e3,
        total("1x1") * 1e3,
        pass * 1e3,
        elsewhere * 1e3,
        rayon::current_num_threads()
    );
    Ok(())
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
