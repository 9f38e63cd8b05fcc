//! Device limits made artificially small: inputs are split at the binding limit, long grids are
//! folded into x and y, and host inputs beyond the buffer limit are processed in segments, with
//! results equal to an uncapped run and to the CPU backend.

mod common;

use common::{Rng, assert_close, gpu, gpu_with};
use retina_wgpu::gpu::{FocalBuffers, LogitsBuffer, TargetsBuffer};
use retina_wgpu::{Backend, FocalInput, FocalLoss, GpuOptions, LimitCaps, Reduction, f16};

fn capped(caps: LimitCaps) -> Option<retina_wgpu::GpuContext> {
    gpu_with(GpuOptions {
        caps,
        ..Default::default()
    })
}

fn problem(rows: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let mut rng = Rng::new(seed);
    let logits = (0..rows * k).map(|_| 2.0 * rng.normal()).collect();
    let labels = (0..rows).map(|_| rng.below(k as u64 + 2) as i32 - 2).collect();
    (logits, labels)
}

#[test]
fn caps_are_applied_to_the_context() {
    let Some(ctx) = capped(LimitCaps {
        max_storage_binding: Some(16 * 1024),
        max_workgroups_per_dim: Some(3),
        max_buffer_size: Some(256 * 1024),
    }) else {
        return;
    };
    let l = ctx.limits();
    assert_eq!(
        (l.max_storage_binding, l.max_workgroups_per_dim, l.max_buffer_size),
        (16 * 1024, 3, 256 * 1024)
    );
    // A buffer over the cap is refused with the limit named, not a wgpu panic.
    let err = ctx.zeros::<f32>(100_000).unwrap_err();
    assert!(err.to_string().contains("max_buffer_size"), "{err}");
}

#[test]
fn chunked_folded_and_segmented_runs_match_uncapped_and_cpu() {
    let Some(full) = gpu() else { return };
    // 16 KiB bindings: 4096 f32 per chunk; 3 workgroups per dimension: at most 9 workgroups
    // (9216 elements) per dispatch, so grids fold; 256 KiB buffers: the 1.1 MB input below is
    // uploaded in five segments.
    let caps = LimitCaps {
        max_storage_binding: Some(16 * 1024),
        max_workgroups_per_dim: Some(3),
        max_buffer_size: Some(256 * 1024),
    };
    let Some(small) = capped(caps) else { return };
    let (rows, k) = (7001, 41);
    let (logits, labels) = problem(rows, k, 1);
    let half: Vec<f16> = logits.iter().map(|&x| f16::from_f32(x)).collect();
    let mut rng = Rng::new(2);
    let soft: Vec<f32> = (0..rows * k).map(|_| rng.uniform()).collect();
    let loss = FocalLoss::retinanet().with_elementwise(true);
    for (name, input) in [
        ("labels", FocalInput::labels(&logits[..], &labels, k)),
        ("f16", FocalInput::labels(&half[..], &labels, k)),
        ("soft", FocalInput::dense(&logits[..], &soft, k)),
    ] {
        let cpu = loss.compute(&Backend::Cpu, &input).unwrap();
        let a = loss.compute(&Backend::Gpu(full.clone()), &input).unwrap();
        let b = loss.compute(&Backend::Gpu(small.clone()), &input).unwrap();
        for (what, out) in [("uncapped", &a), ("capped", &b)] {
            let what = format!("{name} {what}");
            assert!(
                (out.loss - cpu.loss).abs() <= 1e-5 * cpu.loss,
                "{what}: {} vs {}",
                out.loss,
                cpu.loss
            );
            assert_close(
                &what,
                out.grad.as_ref().unwrap(),
                cpu.grad.as_ref().unwrap(),
                1e-5,
                1e-7,
            );
            assert_close(
                &what,
                out.elementwise.as_ref().unwrap(),
                cpu.elementwise.as_ref().unwrap(),
                1e-5,
                1e-7,
            );
        }
    }
}

#[test]
fn device_side_counting_and_reduction_are_chunked_too() {
    let caps = LimitCaps {
        max_storage_binding: Some(16 * 1024),
        max_workgroups_per_dim: Some(2),
        max_buffer_size: None,
    };
    let Some(ctx) = capped(caps) else { return };
    // 200k labels take 49 counting chunks of 4 folded workgroups; 2.6M elements give 2540
    // partial sums, whose first reduction level is 3 workgroups folded into 2 x 2.
    let (rows, k) = (200_000, 13);
    let (logits, labels) = problem(rows, k, 3);
    let logits_buf = ctx.upload(&logits).unwrap();
    let labels_buf = ctx.upload(&labels).unwrap();
    let loss_buf = ctx.zeros::<f32>(3).unwrap();
    for loss in [
        FocalLoss::retinanet(),
        FocalLoss::new(Some(0.25), 2.0).with_reduction(Reduction::Mean),
    ] {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let buffers = FocalBuffers {
            logits: LogitsBuffer::F32(&logits_buf),
            targets: TargetsBuffer::Labels(&labels_buf),
            num_classes: k,
            loss: &loss_buf,
            grad: None,
            elementwise: None,
            positives: None,
        };
        ctx.record_focal_loss(&mut encoder, &loss, &buffers).unwrap();
        ctx.queue().submit([encoder.finish()]);
        let out = ctx.download(&loss_buf).unwrap();
        let cpu = loss
            .forward(&Backend::Cpu, &FocalInput::labels(&logits[..], &labels, k))
            .unwrap();
        assert_eq!(out[2], cpu.normaliser, "{:?}", loss.reduction);
        assert!(
            (out[0] - cpu.loss).abs() <= 1e-5 * cpu.loss,
            "{:?}: {} vs {}",
            loss.reduction,
            out[0],
            cpu.loss
        );
    }
}
