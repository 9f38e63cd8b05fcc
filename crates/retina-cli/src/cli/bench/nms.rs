//! `retina bench nms`.

use clap::Args;
use retina_wgpu::gpu::DetectionBuffers;
use retina_wgpu::{AnchorConfig, Backend, DetectionInput, Nms, PostProcess, Result};

use crate::workloads;

use super::{Common, Row, check_workload, gpu_median_seconds, median_seconds, parse_size, progress, report};

#[derive(Args, Debug)]
pub struct NmsArgs {
    /// Box counts.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "1000,5000,20000,100000")]
    sizes: Vec<u64>,
    /// Classes for the class-aware (batched) rows.
    #[arg(long, default_value_t = 80)]
    classes: usize,
    /// Images in the post-processing batch (0 skips it).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Image side of the post-processing batch (800 gives 120,087 anchors).
    #[arg(long, default_value_t = 800)]
    image: u32,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: NmsArgs) -> Result<()> {
    let backends = args.common.backend.backends()?;
    let iters = args.common.iters.max(1) as u64;
    let steps = (args.sizes.len() as u64 * 2 + u64::from(args.batch > 0)) * iters * backends.len() as u64;
    let bar = progress(steps, "nms");
    let mut rows = Vec::new();
    let nms = Nms::hard(0.5);
    for &n in &args.sizes {
        check_workload(&format!("{n} boxes"), u128::from(n) * 24)?;
        let n = n as usize;
        let (b, s, c) = workloads::random_boxes(n, args.classes);
        for (op, classes) in [("nms", None), ("batched_nms", Some(&c[..]))] {
            let op = match classes {
                Some(_) => format!("{op}[{} classes]", args.classes),
                None => op.to_string(),
            };
            for backend in &backends {
                let seconds = match backend {
                    Backend::Gpu(ctx) => {
                        let (boxes_buf, scores_buf) = (ctx.upload(&b)?, ctx.upload(&s)?);
                        let classes_buf = classes.map(|c| ctx.upload(c)).transpose()?;
                        gpu_median_seconds(ctx, &args.common, &format!("{op} of {n} boxes"), &bar, |encoder| {
                            ctx.record_nms(encoder, &nms, &boxes_buf, &scores_buf, classes_buf.as_ref())
                                .map(drop)
                        })?
                    }
                    Backend::Cpu => {
                        median_seconds(args.common.iters, &bar, || nms.run(backend, &b, &s, classes).map(drop))?
                    }
                };
                rows.push(Row {
                    op: op.clone(),
                    backend: backend.kind(),
                    adapter: backend.describe(),
                    size: n as u64,
                    seconds,
                    throughput: n as f64 / seconds,
                    unit: "boxes/s".into(),
                    bytes: None,
                    compare: op.clone(),
                });
            }
        }
    }
    if args.batch > 0 {
        rows.extend(postprocess_rows(&args, &backends, &bar)?);
    }
    bar.finish_and_clear();
    report(&rows, args.common.json)
}

/// The whole post-processing of a batch: top-k per level, decode, NMS, 100 detections.
fn postprocess_rows(args: &NmsArgs, backends: &[Backend], bar: &indicatif::ProgressBar) -> Result<Vec<Row>> {
    let config = AnchorConfig::retinanet();
    let anchors = config.generate(&Backend::Cpu, args.image, args.image)?;
    let offsets = config.level_offsets(args.image, args.image)?;
    let (a, k) = (anchors.len(), args.classes.max(1));
    check_workload(
        &format!("a post-processing batch of {} x {a} anchors x {k} classes", args.batch),
        args.batch as u128 * a as u128 * (k as u128 * 4 + 16),
    )?;
    let (logits, deltas) = workloads::detector_outputs(args.batch, a, k);
    let input = DetectionInput {
        logits: &logits,
        deltas: &deltas,
        anchors: &anchors,
        level_offsets: &offsets,
        num_classes: k,
        image_size: (args.image, args.image),
    };
    let pp = PostProcess::default();
    let size = (args.batch * a) as u64;
    let op = format!("postprocess[{} x {a} x {k}]", args.batch);
    let mut rows = Vec::new();
    for backend in backends {
        let seconds = match backend {
            Backend::Gpu(ctx) => {
                let (logits_buf, deltas_buf) = (ctx.upload(&logits)?, ctx.upload(&deltas)?);
                let anchors_buf = ctx.anchors(&config, args.image, args.image)?;
                let out = ctx.detection_output(args.batch, pp.max_detections)?;
                let buffers = DetectionBuffers {
                    logits: &logits_buf,
                    deltas: &deltas_buf,
                    anchors: &anchors_buf,
                    level_offsets: &offsets,
                    num_classes: k,
                    image_size: (args.image, args.image),
                };
                gpu_median_seconds(ctx, &args.common, &op, bar, |encoder| {
                    ctx.record_postprocess(encoder, &pp, &buffers, &out)
                })?
            }
            Backend::Cpu => median_seconds(args.common.iters, bar, || pp.run(backend, &input).map(drop))?,
        };
        rows.push(Row {
            op: op.clone(),
            backend: backend.kind(),
            adapter: backend.describe(),
            size,
            seconds,
            throughput: size as f64 / seconds,
            unit: "anchors/s".into(),
            bytes: Some((logits.len() * 4) as f64),
            compare: op.clone(),
        });
    }
    Ok(rows)
}
