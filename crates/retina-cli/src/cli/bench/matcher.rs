//! `retina bench match`.

use clap::Args;
use retina_wgpu::gpu::{AssignBuffers, GroundTruthBuffers};
use retina_wgpu::{AnchorConfig, Backend, GroundTruth, Result, TargetAssigner};

use crate::workloads;

use super::{Common, Row, check_workload, gpu_median_seconds, median_seconds, progress, report};

#[derive(Args, Debug)]
pub struct MatchArgs {
    /// Image side in pixels (800 gives a RetinaNet's 120,087 anchors).
    #[arg(long, default_value_t = 800)]
    image: u32,
    /// Ground-truth boxes per image.
    #[arg(long, value_delimiter = ',', default_value = "1,20,100")]
    boxes: Vec<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: MatchArgs) -> Result<()> {
    let backends = args.common.backend.backends()?;
    let config = AnchorConfig::retinanet();
    let anchors = config.generate(&Backend::Cpu, args.image, args.image)?;
    let a = anchors.len();
    for &count in &args.boxes {
        check_workload(
            &format!(
                "target assignment of {} images x {a} anchors x {count} boxes",
                args.batch
            ),
            args.batch as u128 * (a as u128 * 24 + count as u128 * 20),
        )?;
        if u32::try_from(args.batch as u128 * count as u128).is_err() {
            return Err(retina_wgpu::Error::InvalidParameter(format!(
                "bench match: {} images x {count} boxes exceed 2^32 boxes",
                args.batch
            )));
        }
    }
    let assigner = TargetAssigner::new(80);
    let steps = args.boxes.len() as u64 * args.common.iters.max(1) as u64 * (backends.len() as u64 + 1);
    let bar = progress(steps, "target assignment");
    let mut rows = Vec::new();
    for &count in &args.boxes {
        let gts = workloads::ground_truth(args.batch, count, args.image as f32);
        let images: Vec<GroundTruth> = gts.iter().map(|(b, c)| GroundTruth { boxes: b, classes: c }).collect();
        let size = (args.batch * a) as u64;
        for backend in &backends {
            let row = |op: &str, seconds: f64| Row {
                op: format!("{op}[{count} boxes]"),
                backend: backend.kind(),
                adapter: backend.describe(),
                size,
                seconds,
                throughput: size as f64 / seconds,
                unit: "anchors/s".into(),
                bytes: None,
                compare: format!("assign{count}"),
            };
            match backend {
                Backend::Gpu(ctx) => {
                    let anchors_buf = ctx.anchors(&config, args.image, args.image)?;
                    let boxes: Vec<[f32; 4]> = gts.iter().flat_map(|g| g.0.clone()).collect();
                    let classes: Vec<i32> = gts.iter().flat_map(|g| g.1.clone()).collect();
                    let offsets: Vec<u32> = (0..=args.batch).map(|i| (i * count) as u32).collect();
                    let (boxes, classes, offsets) = (ctx.upload(&boxes)?, ctx.upload(&classes)?, ctx.upload(&offsets)?);
                    let n = args.batch * a;
                    let (matches, labels) = (ctx.zeros::<i32>(n)?, ctx.zeros::<i32>(n)?);
                    let box_targets = ctx.zeros::<[f32; 4]>(n)?;
                    let positives = ctx.zeros::<u32>(args.batch + 1)?;
                    let gt = GroundTruthBuffers {
                        boxes: &boxes,
                        classes: &classes,
                        offsets: &offsets,
                    };
                    let out = AssignBuffers {
                        matches: &matches,
                        labels: &labels,
                        box_targets: &box_targets,
                        positives: &positives,
                    };
                    let resident = gpu_median_seconds(ctx, &args.common, "assign_targets", &bar, |encoder| {
                        ctx.record_assign_targets(encoder, &assigner, &anchors_buf, &gt, &out)
                    })?;
                    rows.push(row("assign_targets", resident));
                    let transfer = median_seconds(args.common.iters, &bar, || {
                        assigner.assign(backend, &anchors, &images).map(drop)
                    })?;
                    rows.push(row("assign_targets_with_transfer", transfer));
                }
                Backend::Cpu => {
                    let seconds = median_seconds(args.common.iters, &bar, || {
                        assigner.assign(backend, &anchors, &images).map(drop)
                    })?;
                    rows.push(row("assign_targets", seconds));
                }
            }
        }
    }
    bar.finish_and_clear();
    report(&rows, args.common.json)
}
