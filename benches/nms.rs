//! NMS on N in {1,000, 5,000, 20,000} random boxes (plain and with 80 classes), GPU (data
//! resident) against the CPU backend. `retina bench nms` measures the same up to 100,000 boxes
//! and the whole post-processing of a batch.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retina_wgpu::{Backend, GpuContext, Nms};

fn boxes(n: usize) -> (Vec<[f32; 4]>, Vec<f32>, Vec<i32>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let b = (0..n)
        .map(|_| {
            let (cx, cy) = (1000.0 * uniform(), 1000.0 * uniform());
            let (w, h) = (10.0 + 90.0 * uniform(), 10.0 + 90.0 * uniform());
            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
        })
        .collect();
    let s = (0..n).map(|_| uniform()).collect();
    let c = (0..n).map(|_| (uniform() * 80.0) as i32).collect();
    (b, s, c)
}

fn nms(c: &mut Criterion) {
    let gpu = GpuContext::new()
        .map_err(|e| eprintln!("GPU benches skipped: {e}"))
        .ok();
    let nms = Nms::hard(0.5);
    let mut group = c.benchmark_group("nms");
    group.sample_size(10);
    for n in [1000usize, 5000, 20_000] {
        let (b, s, classes) = boxes(n);
        group.throughput(Throughput::Elements(n as u64));
        for (name, cls) in [("plain", None), ("80_classes", Some(&classes[..]))] {
            group.bench_with_input(BenchmarkId::new(format!("cpu_{name}"), n), &n, |bench, _| {
                bench.iter(|| nms.run(&Backend::Cpu, &b, &s, cls).unwrap())
            });
            let Some(ctx) = &gpu else { continue };
            let (boxes_buf, scores_buf) = (ctx.upload(&b).unwrap(), ctx.upload(&s).unwrap());
            let classes_buf = cls.map(|c| ctx.upload(c).unwrap());
            group.bench_with_input(BenchmarkId::new(format!("gpu_{name}"), n), &n, |bench, _| {
                bench.iter(|| {
                    let mut encoder = ctx.device().create_command_encoder(&Default::default());
                    ctx.record_nms(&mut encoder, &nms, &boxes_buf, &scores_buf, classes_buf.as_ref())
                        .unwrap();
                    let index = ctx.queue().submit([encoder.finish()]);
                    ctx.device()
                        .poll(retina_wgpu::wgpu::PollType::Wait {
                            submission_index: Some(index),
                            timeout: None,
                        })
                        .unwrap();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, nms);
criterion_main!(benches);
