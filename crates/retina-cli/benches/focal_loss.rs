//! Focal loss forward + backward: GPU (data resident, and with upload + readback) against the
//! CPU backend, at N x K = 1M and 16M elements (K = 80, labels). `retina bench focal` measures
//! the same in one table, up to 64M.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retina_cli::workloads;
use retina_wgpu::gpu::{FocalBuffers, LogitsBuffer, TargetsBuffer};
use retina_wgpu::{Backend, FocalInput, FocalLoss, GpuContext};

const K: usize = 80;

fn focal(c: &mut Criterion) {
    let gpu = match GpuContext::new() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            eprintln!("GPU benches skipped: {e}");
            None
        }
    };
    let loss = FocalLoss::retinanet();
    let mut group = c.benchmark_group("focal_loss");
    group.sample_size(10);
    for n in [1_000_000usize, 16_000_000] {
        let rows = n / K;
        let (logits, labels) = workloads::focal_problem(rows, K);
        let input = FocalInput::labels(&logits, &labels, K);
        group.throughput(Throughput::Elements(n as u64));

        let normaliser = labels.iter().filter(|&&l| l >= 0).count().max(1) as f32;
        let mut grad = vec![0.0f32; n];
        group.bench_with_input(BenchmarkId::new("cpu", n), &n, |b, _| {
            b.iter(|| retina_wgpu::cpu::focal::focal_loss(&loss, &input, 1.0 / normaliser, Some(&mut grad), None))
        });

        let Some(ctx) = &gpu else { continue };
        let logits_buf = ctx.upload(&logits).unwrap();
        let labels_buf = ctx.upload(&labels).unwrap();
        let grad_buf = ctx.zeros::<f32>(n).unwrap();
        let out = ctx.zeros::<f32>(3).unwrap();
        let buffers = FocalBuffers {
            logits: LogitsBuffer::F32(&logits_buf),
            targets: TargetsBuffer::Labels(&labels_buf),
            num_classes: K,
            loss: &out,
            grad: Some(&grad_buf),
            elementwise: None,
            positives: None,
        };
        group.bench_with_input(BenchmarkId::new("gpu_resident", n), &n, |b, _| {
            b.iter(|| {
                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                ctx.record_focal_loss(&mut encoder, &loss, &buffers).unwrap();
                let index = ctx.queue().submit([encoder.finish()]);
                ctx.device()
                    .poll(retina_wgpu::wgpu::PollType::Wait {
                        submission_index: Some(index),
                        timeout: None,
                    })
                    .unwrap();
            })
        });
        let backend = Backend::Gpu(ctx.clone());
        group.bench_with_input(BenchmarkId::new("gpu_with_transfer", n), &n, |b, _| {
            b.iter(|| loss.compute(&backend, &input).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, focal);
criterion_main!(benches);
