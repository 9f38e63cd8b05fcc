//! `retina bench focal`.

use clap::Args;
use retina_wgpu::gpu::{FocalBuffers, LogitsBuffer, TargetsBuffer};
use retina_wgpu::{Backend, FocalInput, FocalLoss, Result};

use crate::workloads;

use super::{Common, Row, check_workload, gpu_median_seconds, median_seconds, parse_size, progress, report};

#[derive(Args, Debug)]
pub struct FocalArgs {
    /// Element counts N x K (rounded down to whole rows).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "1M,16M,64M")]
    sizes: Vec<u64>,
    /// Classes K per anchor.
    #[arg(long, default_value_t = 80)]
    classes: usize,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: FocalArgs) -> Result<()> {
    let k = args.classes.max(1);
    let backends = args.common.backend.backends()?;
    let loss = FocalLoss::retinanet();
    let steps = args.sizes.len() as u64 * args.common.iters.max(1) as u64 * (backends.len() as u64 + 1);
    let bar = progress(steps, "focal loss");
    let mut rows_out = Vec::new();
    for &size in &args.sizes {
        let rows = (size / k as u64).max(1);
        // Logits, labels and, on the CPU, the gradient.
        check_workload(
            &format!("a focal-loss problem of {size} elements"),
            u128::from(rows) * (k as u128 * 8 + 4),
        )?;
        let rows = usize::try_from(rows)
            .map_err(|_| retina_wgpu::Error::InvalidParameter(format!("size {size} too large")))?;
        let n = rows * k;
        let (logits, labels) = workloads::focal_problem(rows, k);
        let input = FocalInput::labels(&logits[..], &labels, k);
        let bytes = (n * 4 + rows * 4) as f64;
        for backend in &backends {
            let row = |op: &str, seconds: f64| Row {
                op: op.to_string(),
                backend: backend.kind(),
                adapter: backend.describe(),
                size: n as u64,
                seconds,
                throughput: n as f64 / seconds,
                unit: "elem/s".into(),
                bytes: Some(bytes),
                compare: "focal".into(),
            };
            match backend {
                Backend::Gpu(ctx) => {
                    let logits_buf = ctx.upload(&logits)?;
                    let labels_buf = ctx.upload(&labels)?;
                    let grad = ctx.zeros::<f32>(n)?;
                    let out = ctx.zeros::<f32>(3)?;
                    let buffers = FocalBuffers {
                        logits: LogitsBuffer::F32(&logits_buf),
                        targets: TargetsBuffer::Labels(&labels_buf),
                        num_classes: k,
                        loss: &out,
                        grad: Some(&grad),
                        elementwise: None,
                        positives: None,
                    };
                    let resident = gpu_median_seconds(ctx, &args.common, "focal_loss", &bar, |encoder| {
                        ctx.record_focal_loss(encoder, &loss, &buffers)
                    })?;
                    rows_out.push(row("focal_loss", resident));
                    drop((logits_buf, labels_buf, grad, out));
                    let transfer = median_seconds(args.common.iters, &bar, || loss.compute(backend, &input).map(drop))?;
                    rows_out.push(row("focal_loss_with_transfer", transfer));
                }
                Backend::Cpu => {
                    let normaliser = labels.iter().filter(|&&l| l >= 0).count().max(1) as f32;
                    let mut grad = vec![0.0f32; n];
                    let seconds = median_seconds(args.common.iters, &bar, || {
                        retina_wgpu::cpu::focal::focal_loss(&loss, &input, 1.0 / normaliser, Some(&mut grad), None);
                        Ok(())
                    })?;
                    rows_out.push(row("focal_loss", seconds));
                }
            }
        }
    }
    bar.finish_and_clear();
    report(&rows_out, args.common.json)
}
