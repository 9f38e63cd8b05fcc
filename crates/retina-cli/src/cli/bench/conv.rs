//! `retina bench conv`.

use std::collections::BTreeMap;

use clap::Args;
use retina_wgpu::nn::{ConvUse, CpuEngine, Engine, GpuEngine, Init, SeededRng};
use retina_wgpu::{Backend, Result};

use super::{Common, NetworkArgs, Row, check_workload, human, median_seconds, progress, report};

#[derive(Args, Debug)]
pub struct ConvArgs {
    #[command(flatten)]
    network: NetworkArgs,
    #[command(flatten)]
    common: Common,
}

/// Median seconds of one convolution's forward and backward pass on `engine`.
fn time_conv<E: Engine>(engine: &mut E, u: &ConvUse, iters: usize, bar: &indicatif::ProgressBar) -> Result<(f64, f64)> {
    let mut rng = SeededRng::new(1);
    let c = u.conv;
    let out = c.output_shape(u.input)?;
    let x = engine.tensor(u.input, &Init::Normal(1.0).values(u.input.len(), &mut rng))?;
    let w = engine.tensor(
        c.weight_shape(),
        &Init::Kaiming { fan_in: c.fan_in() }.values(c.weight_shape().len(), &mut rng),
    )?;
    let b = engine.zeros(c.bias_shape())?;
    let dy = engine.tensor(out, &Init::Normal(1.0).values(out.len(), &mut rng))?;
    let forward = median_seconds(iters, bar, || {
        let y = engine.conv2d(&c, &x, &w, Some(&b))?;
        engine.sync()?;
        drop(y);
        Ok(())
    })?;
    let backward = median_seconds(iters, bar, || {
        let grads = engine.conv2d_backward(&c, &x, &w, &dy, true)?;
        engine.sync()?;
        drop(grads);
        Ok(())
    })?;
    Ok((forward, backward))
}

pub fn run(args: ConvArgs) -> Result<()> {
    let convs = args.network.convs("bench conv")?;
    // The largest convolution's input, weights and output gradient, generated on the host.
    let mut largest = 0u128;
    for u in &convs {
        let out = u.conv.output_shape(u.input)?;
        let values = [
            u.input.checked_len()?,
            u.conv.weight_shape().checked_len()?,
            out.checked_len()?,
        ];
        largest = largest.max(values.iter().map(|&v| v as u128 * 4).sum());
    }
    check_workload("the largest convolution of bench conv", largest)?;
    let backends = args.common.backend.backends()?;
    // Distinct shapes, with how often each runs per step.
    let mut distinct: BTreeMap<String, (ConvUse, usize)> = BTreeMap::new();
    for u in &convs {
        let key = format!("{} @{}x{}", u.conv, u.input.h, u.input.w);
        distinct.entry(key).or_insert((*u, 0)).1 += u.count;
    }
    let bar = progress(
        distinct.len() as u64 * 2 * (args.common.iters.max(1) as u64 + 1) * backends.len() as u64,
        "conv",
    );
    let mut rows = Vec::new();
    let mut step_seconds = BTreeMap::new();
    for backend in &backends {
        let mut engine_rows = Vec::new();
        let mut total = 0.0;
        for (key, (u, count)) in &distinct {
            let (forward, backward) = match backend {
                Backend::Gpu(ctx) => time_conv(&mut GpuEngine::new(ctx)?, u, args.common.iters, &bar)?,
                Backend::Cpu => time_conv(&mut CpuEngine::<f32>::new(), u, args.common.iters, &bar)?,
            };
            total += (forward + backward) * *count as f64;
            let flops = u.conv.flops(u.input)?;
            for (pass, seconds, f) in [("forward", forward, flops), ("backward", backward, 2.0 * flops)] {
                engine_rows.push(Row {
                    op: format!("conv_{pass}[{key}]"),
                    backend: backend.kind(),
                    adapter: backend.describe(),
                    size: f as u64,
                    seconds,
                    throughput: f / seconds,
                    unit: "FLOP/s".into(),
                    bytes: None,
                    compare: format!("{pass}{key}"),
                });
            }
        }
        step_seconds.insert(backend.kind(), total);
        rows.extend(engine_rows);
    }
    bar.finish_and_clear();
    report(&rows, args.common.json)?;
    if !args.common.json {
        println!();
        for (kind, seconds) in &step_seconds {
            println!(
                "{kind}: every convolution of one training step (forward + backward, heads on 5 levels): {:.1} ms, {} images/s",
                seconds * 1e3,
                human(args.network.batch as f64 / seconds)
            );
        }
    }
    Ok(())
}
