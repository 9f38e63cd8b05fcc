//! Target assignment for a batch of 8 images of a RetinaNet at 800 px (120,087 anchors) with
//! 1, 20 and 100 ground-truth boxes each: IoU + matching + target encoding, GPU (data resident)
//! against the CPU backend. `retina bench match` measures the same in one table.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retina_cli::workloads;
use retina_wgpu::gpu::{AssignBuffers, GroundTruthBuffers};
use retina_wgpu::{AnchorConfig, Backend, GpuContext, GroundTruth, TargetAssigner};

const BATCH: usize = 8;

fn matching(c: &mut Criterion) {
    let gpu = GpuContext::new()
        .map_err(|e| eprintln!("GPU benches skipped: {e}"))
        .ok();
    let config = AnchorConfig::retinanet();
    let anchors = config.generate(&Backend::Cpu, 800, 800).unwrap();
    let a = anchors.len();
    let assigner = TargetAssigner::new(80);
    let mut group = c.benchmark_group("assign_targets");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * a) as u64));
    for count in [1usize, 20, 100] {
        let gts = workloads::ground_truth(BATCH, count, 800.0);
        let images: Vec<GroundTruth> = gts.iter().map(|(b, c)| GroundTruth { boxes: b, classes: c }).collect();
        group.bench_with_input(BenchmarkId::new("cpu", count), &count, |b, _| {
            b.iter(|| assigner.assign(&Backend::Cpu, &anchors, &images).unwrap())
        });
        let Some(ctx) = &gpu else { continue };
        let anchors_buf = ctx.anchors(&config, 800, 800).unwrap();
        let boxes: Vec<[f32; 4]> = gts.iter().flat_map(|g| g.0.clone()).collect();
        let classes: Vec<i32> = gts.iter().flat_map(|g| g.1.clone()).collect();
        let offsets: Vec<u32> = (0..=BATCH).map(|i| (i * count) as u32).collect();
        let (boxes, classes, offsets) = (
            ctx.upload(&boxes).unwrap(),
            ctx.upload(&classes).unwrap(),
            ctx.upload(&offsets).unwrap(),
        );
        let (matches, labels) = (
            ctx.zeros::<i32>(BATCH * a).unwrap(),
            ctx.zeros::<i32>(BATCH * a).unwrap(),
        );
        let box_targets = ctx.zeros::<[f32; 4]>(BATCH * a).unwrap();
        let positives = ctx.zeros::<u32>(BATCH + 1).unwrap();
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
        group.bench_with_input(BenchmarkId::new("gpu_resident", count), &count, |b, _| {
            b.iter(|| {
                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                ctx.record_assign_targets(&mut encoder, &assigner, &anchors_buf, &gt, &out)
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
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
