//! From ground truth to losses on the device in one command buffer: anchors (cached), target
//! assignment, focal loss and box loss normalised by the matcher's positive count, with no
//! readback in between; checked against the same chain on the CPU backend.

mod common;

use common::cases::{DeviceAssignment, ground_truths, random_deltas};
use common::{Rng, assert_close, flatten, gpu};
use retina_wgpu::gpu::{BoxLossBuffers, FocalBuffers, LogitsBuffer, TargetsBuffer};
use retina_wgpu::{AnchorConfig, Backend, BoxLoss, BoxLossInput, FocalInput, FocalLoss, TargetAssigner};

#[test]
fn assignment_and_losses_in_one_command_buffer_match_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(77);
    let (size, k, batch) = (160u32, 5usize, 3usize);
    let config = AnchorConfig::retinanet();
    let anchors = ctx.anchors(&config, size, size).unwrap();
    let a = anchors.len();

    let gts: Vec<(Vec<[f32; 4]>, Vec<i32>)> = (0..batch)
        .map(|i| {
            let n = [0, 3, 12][i];
            let boxes = (0..n)
                .map(|_| {
                    let (x, y) = (rng.range(0.0, 120.0), rng.range(0.0, 120.0));
                    [x, y, x + rng.range(16.0, 90.0), y + rng.range(16.0, 90.0)]
                })
                .collect();
            (boxes, (0..n).map(|_| rng.below(k as u64) as i32).collect())
        })
        .collect();
    let logits: Vec<f32> = (0..batch * a * k).map(|_| rng.normal() - 2.0).collect();
    let pred = random_deltas(&mut rng, batch * a, 0.2, 0.1);
    let images = ground_truths(&gts);

    // Device: one encoder, one submit, then read the two losses.
    let targets = DeviceAssignment::new(&ctx, &images, a);
    let logits_buf = ctx.upload(&logits).unwrap();
    let pred_buf = ctx.upload(&pred).unwrap();
    let (cls_loss, box_loss) = (ctx.zeros::<f32>(3).unwrap(), ctx.zeros::<f32>(3).unwrap());
    let (cls_grad, box_grad) = (
        ctx.zeros::<f32>(logits.len()).unwrap(),
        ctx.zeros::<[f32; 4]>(pred.len()).unwrap(),
    );

    let assigner = TargetAssigner::new(k);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    targets.record(&ctx, &mut encoder, &assigner, &anchors);
    let total = Some((&targets.positives, batch as u32));
    ctx.record_focal_loss(
        &mut encoder,
        &FocalLoss::retinanet(),
        &FocalBuffers {
            logits: LogitsBuffer::F32(&logits_buf),
            targets: TargetsBuffer::Labels(&targets.labels),
            num_classes: k,
            loss: &cls_loss,
            grad: Some(&cls_grad),
            elementwise: None,
            positives: total,
        },
    )
    .unwrap();
    ctx.record_box_loss(
        &mut encoder,
        &BoxLoss::default(),
        &BoxLossBuffers {
            pred: &pred_buf,
            targets: &targets.box_targets,
            labels: &targets.labels,
            anchors: &anchors,
            loss: &box_loss,
            grad: Some(&box_grad),
            positives: total,
        },
    )
    .unwrap();
    ctx.queue().submit([encoder.finish()]);

    // CPU: the same chain.
    let anchors_cpu = config.generate(&Backend::Cpu, size, size).unwrap();
    let t = assigner.assign(&Backend::Cpu, &anchors_cpu, &images).unwrap();
    assert!(t.total_positives() > 0);
    let focal = FocalLoss::retinanet()
        .compute(&Backend::Cpu, &FocalInput::labels(&logits, &t.labels, k))
        .unwrap();
    let boxes = BoxLoss::default()
        .compute(
            &Backend::Cpu,
            &BoxLossInput {
                pred: &pred,
                targets: &t.box_targets,
                labels: &t.labels,
                anchors: &anchors_cpu,
            },
        )
        .unwrap();

    let device_cls = ctx.download(&cls_loss).unwrap();
    let device_box = ctx.download(&box_loss).unwrap();
    assert_eq!(ctx.download(&targets.positives).unwrap()[batch], t.total_positives());
    assert_eq!(device_cls[2], t.total_positives() as f32);
    assert_close("classification loss", &device_cls[..1], &[focal.loss], 1e-5, 0.0);
    assert_close("box loss", &device_box[..1], &[boxes.loss], 1e-5, 0.0);
    assert_close(
        "classification grad",
        &ctx.download(&cls_grad).unwrap(),
        focal.grad.as_ref().unwrap(),
        1e-5,
        1e-7,
    );
    assert_close(
        "box grad",
        &flatten(&ctx.download(&box_grad).unwrap()),
        &flatten(&boxes.grad),
        1e-4,
        1e-7,
    );
}
