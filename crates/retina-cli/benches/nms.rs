//! NMS on N in {1,000, 5,000, 20,000, 100,000} random boxes (plain and with 80 classes), and
//! RetinaNet's whole post-processing of a batch of 8 images of 800 x 800 (120,087 anchors x 80
//! classes), GPU (data resident) against the CPU backend, on the same data as
//! `retina bench nms` (`retina_cli::workloads`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retina_cli::workloads;
use retina_wgpu::gpu::DetectionBuffers;
use retina_wgpu::{AnchorConfig, Backend, DetectionInput, GpuContext, Nms, PostProcess};

/// Submits what `record` recorded and waits for the device to finish it.
fn run_on_device(ctx: &GpuContext, record: impl FnOnce(&mut retina_wgpu::wgpu::CommandEncoder)) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    record(&mut encoder);
    let index = ctx.queue().submit([encoder.finish()]);
    ctx.device()
        .poll(retina_wgpu::wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })
        .unwrap();
}

fn nms(c: &mut Criterion, gpu: Option<&GpuContext>) {
    let nms = Nms::hard(0.5);
    let mut group = c.benchmark_group("nms");
    group.sample_size(10);
    // `cargo test` runs each benchmark once as a smoke test (no `--bench` argument): there the
    // 100,000-box runs, almost 3 minutes on lavapipe, are left to `cargo bench` (the 50,000-box
    // greedy NMS is tested in tests/nms.rs).
    let measuring = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if measuring {
        &[1000, 5000, 20_000, 100_000]
    } else {
        &[1000, 5000, 20_000]
    };
    for &n in sizes {
        let (b, s, classes) = workloads::random_boxes(n, 80);
        group.throughput(Throughput::Elements(n as u64));
        for (name, cls) in [("plain", None), ("80_classes", Some(&classes[..]))] {
            group.bench_with_input(BenchmarkId::new(format!("cpu_{name}"), n), &n, |bench, _| {
                bench.iter(|| nms.run(&Backend::Cpu, &b, &s, cls).unwrap())
            });
            let Some(ctx) = gpu else { continue };
            let (boxes_buf, scores_buf) = (ctx.upload(&b).unwrap(), ctx.upload(&s).unwrap());
            let classes_buf = cls.map(|c| ctx.upload(c).unwrap());
            group.bench_with_input(BenchmarkId::new(format!("gpu_{name}"), n), &n, |bench, _| {
                bench.iter(|| {
                    run_on_device(ctx, |encoder| {
                        ctx.record_nms(encoder, &nms, &boxes_buf, &scores_buf, classes_buf.as_ref())
                            .unwrap();
                    })
                })
            });
        }
    }
    group.finish();
}

fn postprocess(c: &mut Criterion, gpu: Option<&GpuContext>) {
    const BATCH: usize = 8;
    const SIDE: u32 = 800;
    const CLASSES: usize = 80;
    let config = AnchorConfig::retinanet();
    let anchors = config.generate(&Backend::Cpu, SIDE, SIDE).unwrap();
    let offsets = config.level_offsets(SIDE, SIDE).unwrap();
    let (logits, deltas) = workloads::detector_outputs(BATCH, anchors.len(), CLASSES);
    let input = DetectionInput {
        logits: &logits,
        deltas: &deltas,
        anchors: &anchors,
        level_offsets: &offsets,
        num_classes: CLASSES,
        image_size: (SIDE, SIDE),
    };
    let pp = PostProcess::default();
    let mut group = c.benchmark_group("postprocess");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * anchors.len()) as u64));
    group.bench_function("cpu", |bench| bench.iter(|| pp.run(&Backend::Cpu, &input).unwrap()));
    if let Some(ctx) = gpu {
        let (logits_buf, deltas_buf) = (ctx.upload(&logits).unwrap(), ctx.upload(&deltas).unwrap());
        let anchors_buf = ctx.anchors(&config, SIDE, SIDE).unwrap();
        let out = ctx.detection_output(BATCH, pp.max_detections).unwrap();
        let buffers = DetectionBuffers {
            logits: &logits_buf,
            deltas: &deltas_buf,
            anchors: &anchors_buf,
            level_offsets: &offsets,
            num_classes: CLASSES,
            image_size: (SIDE, SIDE),
        };
        group.bench_function("gpu", |bench| {
            bench.iter(|| {
                run_on_device(ctx, |encoder| {
                    ctx.record_postprocess(encoder, &pp, &buffers, &out).unwrap()
                })
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let gpu = GpuContext::new()
        .map_err(|e| eprintln!("GPU benches skipped: {e}"))
        .ok();
    nms(c, gpu.as_ref());
    postprocess(c, gpu.as_ref());
}

criterion_group!(group, benches);
criterion_main!(group);
