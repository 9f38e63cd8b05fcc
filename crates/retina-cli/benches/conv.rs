//! Convolution forward and backward at three shapes of the small RetinaNet (batch 8, 128 x 128):
//! the first backbone layer, an FPN output and the class head at P3 (80 classes), GPU against
//! the CPU backend, in FLOP/s. `retina bench conv` measures every layer of the network.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retina_wgpu::GpuContext;
use retina_wgpu::nn::{Conv2d, CpuEngine, Engine, GpuEngine, Init, SeededRng, Shape};

fn shapes() -> [(&'static str, Conv2d, Shape); 3] {
    [
        ("c1_3x3_s2", Conv2d::new(3, 16, 3, 2), Shape::new(8, 3, 128, 128)),
        ("fpn_p3", Conv2d::new(64, 64, 3, 1), Shape::new(8, 64, 16, 16)),
        (
            "class_head_p3",
            Conv2d::new(64, 9 * 80, 3, 1),
            Shape::new(8, 64, 16, 16),
        ),
    ]
}

fn bench_engine<E: Engine>(c: &mut Criterion, name: &str, engine: &mut E) {
    let mut group = c.benchmark_group(format!("conv_{name}"));
    group.sample_size(10);
    for (label, conv, input) in shapes() {
        let mut rng = SeededRng::new(1);
        let out = conv.output_shape(input).unwrap();
        let x = engine
            .tensor(input, &Init::Normal(1.0).values(input.len(), &mut rng))
            .unwrap();
        let w = engine
            .tensor(
                conv.weight_shape(),
                &Init::Kaiming { fan_in: conv.fan_in() }.values(conv.weight_shape().len(), &mut rng),
            )
            .unwrap();
        let b = engine.zeros(conv.bias_shape()).unwrap();
        let dy = engine
            .tensor(out, &Init::Normal(1.0).values(out.len(), &mut rng))
            .unwrap();
        let flops = conv.flops(input).unwrap() as u64;
        group.throughput(Throughput::Elements(flops));
        group.bench_with_input(BenchmarkId::new("forward", label), &label, |bench, _| {
            bench.iter(|| {
                let y = engine.conv2d(&conv, &x, &w, Some(&b)).unwrap();
                engine.sync().unwrap();
                y
            })
        });
        group.throughput(Throughput::Elements(2 * flops));
        group.bench_with_input(BenchmarkId::new("backward", label), &label, |bench, _| {
            bench.iter(|| {
                let g = engine.conv2d_backward(&conv, &x, &w, &dy, true).unwrap();
                engine.sync().unwrap();
                g
            })
        });
    }
    group.finish();
}

fn conv(c: &mut Criterion) {
    bench_engine(c, "cpu", &mut CpuEngine::<f32>::new());
    match GpuContext::new() {
        Ok(ctx) => bench_engine(c, "gpu", &mut GpuEngine::new(&ctx).unwrap()),
        Err(e) => eprintln!("GPU benches skipped: {e}"),
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);
