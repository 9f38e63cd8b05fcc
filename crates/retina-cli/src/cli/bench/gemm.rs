//! `retina bench gemm`: the implicit GEMMs of the small RetinaNet's convolutions (forward,
//! weight gradient, input gradient) as plain matrix products, run through the convolution's own
//! kernel as 1x1 convolutions of a 1 x K x 1 x N input: the kernel's speed without the
//! convolution's index arithmetic, and the sizes `burn-peer gemm` runs with Burn's `matmul`.

use clap::Args;
use retina_wgpu::nn::{Conv2d, CpuEngine, Engine, GemmShape, GpuEngine, Init, SeededRng, Shape, gemm_shapes};
use retina_wgpu::{Backend, Result};

use super::{Common, NetworkArgs, Row, check_workload, median_seconds, progress, report};

#[derive(Args, Debug)]
pub struct GemmArgs {
    /// The network whose convolutions give the sizes.
    #[command(flatten)]
    network: NetworkArgs,
    #[command(flatten)]
    common: Common,
}

/// The product as a 1x1 convolution: weights M x K (x 1 x 1), input 1 x K x 1 x N.
fn as_conv(g: &GemmShape) -> (Conv2d, Shape) {
    (Conv2d::new(g.k, g.m, 1, 1), Shape::new(1, g.k, 1, g.n))
}

fn time_gemm<E: Engine>(engine: &mut E, g: &GemmShape, iters: usize, bar: &indicatif::ProgressBar) -> Result<f64> {
    let mut rng = SeededRng::new(2);
    let (c, input) = as_conv(g);
    let b = engine.tensor(input, &Init::Normal(1.0).values(input.len(), &mut rng))?;
    let a = engine.tensor(c.weight_shape(), &Init::Normal(1.0).values(g.m * g.k, &mut rng))?;
    median_seconds(iters, bar, || {
        let product = engine.conv2d(&c, &b, &a, None)?;
        engine.sync()?;
        drop(product);
        Ok(())
    })
}

pub fn run(args: GemmArgs) -> Result<()> {
    let shapes = gemm_shapes(&args.network.convs("bench gemm")?)?;
    for g in &shapes {
        let elements = [
            g.m as u128 * g.k as u128,
            g.k as u128 * g.n as u128,
            g.m as u128 * g.n as u128,
        ];
        check_workload(&format!("the product {}", g.op()), elements.iter().sum::<u128>() * 4)?;
    }
    let backends = args.common.backend.backends()?;
    let bar = progress(
        shapes.len() as u64 * (args.common.iters.max(1) as u64 + 1) * backends.len() as u64,
        "gemm",
    );
    let mut rows = Vec::new();
    for backend in &backends {
        for g in &shapes {
            let seconds = match backend {
                Backend::Gpu(ctx) => time_gemm(&mut GpuEngine::new(ctx)?, g, args.common.iters, &bar)?,
                Backend::Cpu => time_gemm(&mut CpuEngine::<f32>::new(), g, args.common.iters, &bar)?,
            };
            rows.push(Row {
                op: g.op(),
                backend: backend.kind(),
                adapter: backend.describe(),
                size: g.flops(),
                seconds,
                throughput: g.flops() as f64 / seconds,
                unit: "FLOP/s".into(),
                bytes: None,
                compare: g.op(),
            });
        }
    }
    bar.finish_and_clear();
    report(&rows, args.common.json)
}
