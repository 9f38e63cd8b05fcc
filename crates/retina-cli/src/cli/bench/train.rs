//! `retina bench train`: the small RetinaNet's training step (forward, matching, focal and box
//! losses, backward, SGD) and its inference (forward and post-processing) at batch 8 on fresh
//! synthetic scenes, in images per second, GPU against the CPU backend.

use clap::Args;
use retina_wgpu::coco::Normalize;
use retina_wgpu::data::SceneConfig;
use retina_wgpu::gpu::{KernelWork, Profile, ResourceStats, WorkStats};
use retina_wgpu::model::{DetectEngine, Detector, LossEngine, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::{CpuEngine, GpuEngine};
use retina_wgpu::train::{SyntheticData, TrainData, TrainOptions, Trainer};
use retina_wgpu::{GpuContext, Result};

use super::{Common, Row, median_seconds, print_profile, profiled, progress, report};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Square input size (a multiple of 32).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Without GroupNorm (the plain network of docs/ARCHITECTURE.md).
    #[arg(long)]
    no_group_norm: bool,
    #[command(flatten)]
    roofline: Roofline,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let data = SyntheticData {
        config: SceneConfig {
            size: args.size as u32,
            ..SceneConfig::default()
        },
        seed: 0,
        normalize: Normalize::IMAGENET,
    };
    let config = RetinaNetConfig {
        input_size: args.size,
        num_classes: data.num_classes(),
        group_norm: !args.no_group_norm,
        ..RetinaNetConfig::default()
    };
    let net = RetinaNet::new(config)?;
    let values = net.init(0);
    let options = TrainOptions {
        batch: args.batch,
        steps: 1_000_000,
        ..TrainOptions::default()
    };
    let bar = progress(4 * (args.common.iters as u64 + 1), "bench train");
    let mut rows = Vec::new();
    let mut counts = Vec::new();
    for backend in args.common.backend.backends()? {
        let (train, infer) = match &backend {
            retina_wgpu::Backend::Gpu(ctx) => {
                let (step, kernels, host, profile) =
                    step_counts(ctx, &net, &values, &options, &data, args.common.profile)?;
                let profile = match profile {
                    Some(Err(e)) => {
                        // No timestamps on this device: said, and the roofline printed alone.
                        print_profile(&bar, "a training step", Err(e));
                        None
                    }
                    Some(Ok(p)) => Some(p),
                    None => None,
                };
                counts.push((backend.describe(), (step, kernels, host, profile)));
                measure(|| GpuEngine::new(ctx), &net, &values, &options, &data, &args, &bar)?
            }
            retina_wgpu::Backend::Cpu => measure(|| Ok(CpuEngine::new()), &net, &values, &options, &data, &args, &bar)?,
        };
        for (op, seconds) in [("train_step", train), ("inference", infer)] {
            rows.push(Row {
                op: op.to_string(),
                backend: backend.kind(),
                adapter: backend.describe(),
                size: args.batch as u64,
                seconds,
                throughput: args.batch as f64 / seconds,
                unit: "images/s".into(),
                bytes: None,
                compare: op.to_string(),
            });
        }
    }
    bar.finish_and_clear();
    report(&rows, args.common.json)?;
    if !args.common.json {
        for (adapter, ((plain, logged), kernels, host, profile)) in &counts {
            println!();
            println!("GPU training step ({adapter}), counted on the context:");
            for (what, c) in [("a step", plain), ("a logging step (loss read)", logged)] {
                println!(
                    "  {what}: {} dispatches, {} submits, {} readbacks, {} queue writes, {} buffers and {} bind groups created, {:.1} MB of tensors",
                    c.0.dispatches,
                    c.0.submits,
                    c.0.readbacks,
                    c.1.queue_writes,
                    c.1.buffers_created,
                    c.1.bind_groups_created,
                    c.0.tensor_bytes as f64 / 1e6
                );
            }
            println!(
                "  host time of a step: {:.1} ms (its wall time minus the wait for the device: the scenes generated, the work recorded and submitted)",
                host * 1e3
            );
            args.roofline.print(kernels, profile.as_ref(), adapter);
        }
    }
    Ok(())
}

/// The device a GPU step's counts are projected onto (`--backend gpu`): a roofline estimate of
/// the step's time from each kernel's counted FLOPs and bound bytes. The defaults are NVIDIA's
/// H200 datasheet figures for FP32 without tensor cores (67 TFLOP/s, HBM3e 4.8 TB/s) and an
/// assumed cost per dependent dispatch: check them against a real run (`scripts/gpu_bench.sh`).
#[derive(Args, Debug, Clone, Copy)]
pub struct Roofline {
    /// Peak FP32 throughput of the projected device, TFLOP/s.
    #[arg(long, default_value_t = 67.0)]
    peak_tflops: f64,
    /// Memory bandwidth of the projected device, TB/s.
    #[arg(long, default_value_t = 4.8)]
    bandwidth_tbs: f64,
    /// Cost of one dispatch (launch and barrier), microseconds.
    #[arg(long, default_value_t = 3.0)]
    dispatch_us: f64,
}

impl Roofline {
    /// Seconds of `work` at the roofline: the slower of its FLOPs at peak and its bound bytes at
    /// full bandwidth, plus its dispatches' cost.
    fn seconds(&self, work: &KernelWork) -> (f64, f64, f64) {
        let compute = work.flops as f64 / (self.peak_tflops * 1e12);
        let memory = work.bound_bytes as f64 / (self.bandwidth_tbs * 1e12);
        (compute, memory, work.dispatches as f64 * self.dispatch_us * 1e-6)
    }

    /// Prints the per-kernel table of one step and its total, with each kernel's device time on
    /// `adapter` beside it where a profile of a step measured it (`--profile`).
    fn print(&self, step: &[(&'static str, KernelWork)], measured: Option<&Profile>, adapter: &str) {
        let measured_us = |name: &str| {
            measured.map(|p| {
                p.kernels
                    .iter()
                    .find(|k| k.kernel == name)
                    .map_or(0.0, |k| k.seconds * 1e6)
            })
        };
        let column = |us: Option<f64>| us.map_or(String::new(), |us| format!(" {us:>11.1}"));
        let mut rows: Vec<_> = step
            .iter()
            .filter(|(_, w)| w.dispatches > 0)
            .map(|(name, w)| (name, w, self.seconds(w)))
            .collect();
        let time = |(c, m, d): (f64, f64, f64)| c.max(m) + d;
        rows.sort_by(|a, b| time(b.2).total_cmp(&time(a.2)));
        println!(
            "  roofline of one step on a device of {} TFLOP/s FP32, {} TB/s, {} us per dispatch \
             (a lower bound: every kernel at peak):",
            self.peak_tflops, self.bandwidth_tbs, self.dispatch_us
        );
        if measured.is_some() {
            println!(
                "  (measured us: the kernel's device time in one profiled step on {adapter}, one pass per dispatch)"
            );
        }
        println!(
            "  {:<24} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9}{}",
            "kernel",
            "dispatches",
            "GFLOP",
            "MB bound",
            "FLOP/B",
            "compute us",
            "memory us",
            "total us",
            if measured.is_some() {
                format!(" {:>11}", "measured us")
            } else {
                String::new()
            }
        );
        let (mut total, mut sum) = (KernelWork::default(), 0.0);
        for (name, w, t) in &rows {
            let intensity = if w.bound_bytes > 0 {
                w.flops as f64 / w.bound_bytes as f64
            } else {
                0.0
            };
            println!(
                "  {:<24} {:>10} {:>9.3} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>9.1}{}",
                name,
                w.dispatches,
                w.flops as f64 / 1e9,
                w.bound_bytes as f64 / 1e6,
                intensity,
                t.0 * 1e6,
                t.1 * 1e6,
                time(*t) * 1e6,
                column(measured_us(name))
            );
            total.dispatches += w.dispatches;
            total.flops += w.flops;
            total.bound_bytes += w.bound_bytes;
            sum += time(*t);
        }
        let (c, m, d) = self.seconds(&total);
        println!(
            "  {:<24} {:>10} {:>9.3} {:>10.1} {:>10} {:>10.1} {:>10.1} {:>9.1}{}",
            "step",
            total.dispatches,
            total.flops as f64 / 1e9,
            total.bound_bytes as f64 / 1e6,
            "",
            c * 1e6,
            m * 1e6,
            sum * 1e6,
            column(measured.map(|p| p.total_seconds() * 1e6))
        );
        println!(
            "  (dispatches alone: {:.0} us of {:.0} us; at peak with no dispatch cost: {:.0} us)",
            d * 1e6,
            sum * 1e6,
            (sum - d) * 1e6
        );
    }
}

/// What one training step issues on the GPU (after two warm-up steps), without and with the
/// loss read back: work (dispatches, submits, readbacks, tensor bytes) and resources created.
type StepCounts = ((WorkStats, ResourceStats), (WorkStats, ResourceStats));

/// Per kernel, the work of one step without the loss read.
type StepKernels = Vec<(&'static str, KernelWork)>;

/// A step's counts, per kernel work, the host's seconds to record and submit a step, and with
/// `profile` one more step profiled (or why it could not be).
fn step_counts(
    ctx: &GpuContext,
    net: &RetinaNet,
    values: &[Vec<f32>],
    options: &TrainOptions,
    data: &SyntheticData,
    profile: bool,
) -> Result<(StepCounts, StepKernels, f64, Option<Result<Profile>>)> {
    let mut trainer = Trainer::new(GpuEngine::new(ctx)?, net.clone(), values, options.clone())?;
    trainer.step(data, false)?;
    trainer.step(data, true)?;
    let kernels_before = ctx.kernel_work();
    let mut count = |read_loss: bool| -> Result<(WorkStats, ResourceStats)> {
        let (work, resources) = (ctx.work_stats(), ctx.resource_stats());
        trainer.step(data, read_loss)?;
        Ok((ctx.work_stats().since(&work), ctx.resource_stats().since(&resources)))
    };
    let plain = count(false)?;
    let kernels = ctx
        .kernel_work()
        .into_iter()
        .zip(kernels_before)
        .map(|((name, now), (_, before))| (name, now.since(&before)))
        .collect();
    let logged = count(true)?;
    // The host's share of a step: its wall time minus the time blocked on the device (the
    // median of three steps).
    let mut host: Vec<f64> = Vec::new();
    for _ in 0..3 {
        let (start, waited) = (std::time::Instant::now(), ctx.wait_time());
        trainer.step(data, false)?;
        host.push((start.elapsed().saturating_sub(ctx.wait_time() - waited)).as_secs_f64());
    }
    host.sort_by(f64::total_cmp);
    let profile = profile.then(|| profiled(ctx, || trainer.step(data, false).map(drop)));
    Ok(((plain, logged), kernels, host[1], profile))
}

/// Median seconds of a training step and of detecting a batch.
fn measure<E: LossEngine + DetectEngine>(
    engine: impl Fn() -> Result<E>,
    net: &RetinaNet,
    values: &[Vec<f32>],
    options: &TrainOptions,
    data: &SyntheticData,
    args: &TrainArgs,
    bar: &indicatif::ProgressBar,
) -> Result<(f64, f64)> {
    let iters = args.common.iters;
    let mut trainer = Trainer::new(engine()?, net.clone(), values, options.clone())?;
    // The step waits for the device each time (no loss readback), as training does.
    let train = median_seconds(iters, bar, || trainer.step(data, false).map(drop))?;
    let mut detector = Detector::new(engine()?, net.clone(), values)?;
    let s = net.config().input_size;
    let mut images = vec![0f32; options.batch * 3 * s * s];
    for (i, out) in images.chunks_exact_mut(3 * s * s).enumerate() {
        data.sample(i as u64, out)?;
    }
    let infer = median_seconds(iters, bar, || detector.detect(&images).map(drop))?;
    Ok((train, infer))
}
