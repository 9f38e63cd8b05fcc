//! One training step of the small RetinaNet (batch 8, 128 x 128, 4 classes, GroupNorm): forward,
//! matching, focal and box losses, backward and SGD, on the CPU backend and (when there is an
//! adapter) the GPU. `retina bench train` measures the same, with inference, in one table.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use retina_wgpu::GpuContext;
use retina_wgpu::coco::Normalize;
use retina_wgpu::data::SceneConfig;
use retina_wgpu::model::{LossEngine, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::{CpuEngine, GpuEngine};
use retina_wgpu::train::{SyntheticData, TrainOptions, Trainer};

fn bench_engine<E: LossEngine>(c: &mut Criterion, name: &str, engine: E) {
    let data = SyntheticData {
        config: SceneConfig::default(),
        seed: 0,
        normalize: Normalize::IMAGENET,
    };
    let net = RetinaNet::new(RetinaNetConfig::default()).unwrap();
    let values = net.init(0);
    let options = TrainOptions {
        steps: 1_000_000,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(engine, net, &values, options).unwrap();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements(8));
    group.bench_function(name, |b| b.iter(|| trainer.step(&data, false).unwrap()));
    group.finish();
}

fn train_step(c: &mut Criterion) {
    bench_engine(c, "cpu", CpuEngine::new());
    match GpuContext::new() {
        Ok(ctx) => bench_engine(c, "gpu", GpuEngine::new(&ctx).unwrap()),
        Err(e) => eprintln!("GPU bench skipped: {e}"),
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
