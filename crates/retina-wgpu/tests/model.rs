//! The small RetinaNet over `nn::Engine`: its layout, the backward pass against f64 central
//! finite differences for every parameter tensor, GPU against CPU for the forward pass, the
//! backward pass and the detection loss, and a few SGD steps that fit one batch.

mod common;

use retina_wgpu::model::{AnchorSet, DetectionLoss, LossEngine, LossValues, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::{CpuEngine, CpuTensor, Engine, GpuEngine, Init, Sgd, Shape};
use retina_wgpu::{Backend, GroundTruth};

use common::{Rng, gpu};

/// A network small enough for finite differences: 32 x 32 input, 2 classes, 1 head conv.
fn tiny() -> RetinaNetConfig {
    RetinaNetConfig {
        input_size: 32,
        num_classes: 2,
        backbone_channels: [4, 4, 8, 8, 8],
        fpn_channels: 8,
        head_convs: 1,
        head_channels: 8,
        ..RetinaNetConfig::default()
    }
}

fn normal(rng: &mut Rng, len: usize, std: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() * std).collect()
}

#[test]
fn default_network_has_the_layout_of_design_md() {
    let net = RetinaNet::new(RetinaNetConfig::default()).unwrap();
    assert_eq!(net.config().num_anchors().unwrap(), 3069);
    assert_eq!(net.level_offsets(), &[0, 2304, 2880, 3024, 3060, 3069]);
    let names: std::collections::HashSet<&str> = net.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), net.params().len(), "parameter names are unique");
    let find = |name: &str| {
        net.params()
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let values = net.init(7);
    // The class output starts at the prior: sigmoid(bias) = 0.01.
    let bias = &values[find("head.cls.output.conv.bias")];
    assert_eq!(bias.len(), 9 * 4);
    assert!(bias.iter().all(|&b| (1.0 / (1.0 + (-b).exp()) - 0.01).abs() < 1e-6));
    // GroupNorm follows every backbone convolution (no conv bias there), not the FPN.
    assert!(names.contains("backbone.0.down.norm.weight") && !names.contains("backbone.0.down.conv.bias"));
    assert!(names.contains("fpn.p6.conv.bias") && !names.contains("fpn.p6.norm.weight"));
    assert!(net.params()[find("head.box.1.conv.weight")].init == Init::Normal(0.01));
    // Weight decay on convolution weights only.
    for p in net.params() {
        assert_eq!(p.decay, p.name.ends_with("conv.weight"), "{}", p.name);
    }
    let plain = RetinaNet::new(RetinaNetConfig {
        group_norm: false,
        ..RetinaNetConfig::default()
    })
    .unwrap();
    assert!(plain.params().iter().all(|p| !p.name.contains("norm")));
    for bad in [
        RetinaNetConfig {
            input_size: 100,
            ..RetinaNetConfig::default()
        },
        RetinaNetConfig {
            num_classes: 0,
            ..RetinaNetConfig::default()
        },
    ] {
        assert!(RetinaNet::new(bad).is_err());
    }
}

/// Parameters for a gradient check: random enough that every path carries gradient.
fn random_params(net: &RetinaNet, rng: &mut Rng) -> Vec<Vec<f32>> {
    net.params()
        .iter()
        .map(|p| {
            let len = p.shape.len();
            if p.name.ends_with("norm.weight") {
                (0..len).map(|_| 1.0 + 0.3 * rng.normal()).collect()
            } else {
                normal(rng, len, 0.3)
            }
        })
        .collect()
}

/// `L = <class_rows, r1> + <box_rows, r2>` in f64.
fn objective(
    net: &RetinaNet,
    e: &mut CpuEngine<f64>,
    params: &[CpuTensor<f64>],
    image: &[f64],
    r1: &[f64],
    r2: &[f64],
) -> f64 {
    let s = net.config().input_size;
    let x = e.tensor_from(Shape::new(2, 3, s, s), image).unwrap();
    let tape = net.forward(e, params, x).unwrap();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    dot(tape.class_rows.data(), r1) + dot(tape.box_rows.data(), r2)
}

#[test]
fn backward_matches_finite_differences_for_every_parameter() {
    for group_norm in [true, false] {
        let net = RetinaNet::new(RetinaNetConfig { group_norm, ..tiny() }).unwrap();
        let mut rng = Rng::new(11);
        let mut e = CpuEngine::<f64>::new();
        let values = random_params(&net, &mut rng);
        let to64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let mut params: Vec<CpuTensor<f64>> = net
            .params()
            .iter()
            .zip(&values)
            .map(|(p, v)| e.tensor_from(p.shape, &to64(v)).unwrap())
            .collect();
        let s = net.config().input_size;
        let image = to64(&normal(&mut rng, 2 * 3 * s * s, 1.0));
        let rows = net.config().num_anchors().unwrap();
        let r1 = to64(&normal(&mut rng, 2 * rows * 2, 1.0));
        let r2 = to64(&normal(&mut rng, 2 * rows * 4, 1.0));

        let x = e.tensor_from(Shape::new(2, 3, s, s), &image).unwrap();
        let tape = net.forward(&mut e, &params, x).unwrap();
        let g1 = e.tensor_from(tape.class_rows.shape(), &r1).unwrap();
        let g2 = e.tensor_from(tape.box_rows.shape(), &r2).unwrap();
        let grads = net.backward(&mut e, &params, &tape, &g1, &g2).unwrap();
        drop(tape);

        for (i, spec) in net.params().iter().enumerate() {
            let len = spec.shape.len();
            for _ in 0..2 {
                let j = rng.below(len as u64) as usize;
                let original = params[i].data()[j];
                let h = 1e-6;
                params[i].data_mut()[j] = original + h;
                let plus = objective(&net, &mut e, &params, &image, &r1, &r2);
                params[i].data_mut()[j] = original - h;
                let minus = objective(&net, &mut e, &params, &image, &r1, &r2);
                params[i].data_mut()[j] = original;
                let numeric = (plus - minus) / (2.0 * h);
                let analytic = grads[i].data()[j];
                assert!(
                    (numeric - analytic).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                    "group_norm {group_norm}: d/d {}[{j}]: analytic {analytic}, numeric {numeric}",
                    spec.name
                );
            }
        }
    }
}

/// Max |a - b| over max |b|: the error relative to the tensor's scale.
fn scaled_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// One `GroundTruth` view per image.
fn ground_truths<'a>(boxes: &'a [Vec<[f32; 4]>], classes: &'a [Vec<i32>]) -> Vec<GroundTruth<'a>> {
    boxes
        .iter()
        .zip(classes)
        .map(|(b, c)| GroundTruth { boxes: b, classes: c })
        .collect()
}

fn ground_truth() -> (Vec<Vec<[f32; 4]>>, Vec<Vec<i32>>) {
    (
        vec![
            vec![[10.0, 12.0, 40.0, 50.0], [60.0, 60.0, 100.0, 90.0]],
            vec![[30.0, 20.0, 62.0, 44.0]],
        ],
        vec![vec![0, 3], vec![2]],
    )
}

#[test]
fn gpu_matches_cpu_on_forward_backward_and_loss() {
    let Some(ctx) = gpu() else { return };
    let net = RetinaNet::new(RetinaNetConfig::default()).unwrap();
    let values = net.init(3);
    let mut rng = Rng::new(5);
    let image = normal(&mut rng, 2 * 3 * 128 * 128, 1.0);
    let (boxes, classes) = ground_truth();
    let images = ground_truths(&boxes, &classes);
    let anchors = AnchorSet::new(net.config().anchors(), 128, 128).unwrap();
    let loss = DetectionLoss::retinanet(4);

    /// Class rows, box rows, loss, class gradient and every parameter gradient of one step.
    type Step = (Vec<f32>, Vec<f32>, LossValues, Vec<f32>, Vec<Vec<f32>>);

    fn step<E: LossEngine>(
        e: &mut E,
        net: &RetinaNet,
        values: &[Vec<f32>],
        image: &[f32],
        loss: &DetectionLoss,
        anchors: &AnchorSet,
        images: &[GroundTruth],
    ) -> Step {
        let params: Vec<E::Tensor> = net
            .params()
            .iter()
            .zip(values)
            .map(|(p, v)| e.tensor(p.shape, v).unwrap())
            .collect();
        let x = e.tensor(Shape::new(2, 3, 128, 128), image).unwrap();
        let tape = net.forward(e, &params, x).unwrap();
        let out = e
            .detection_loss(loss, anchors, &tape.class_rows, &tape.box_rows, images)
            .unwrap();
        let grads = net.backward(e, &params, &tape, &out.class_grad, &out.box_grad).unwrap();
        let class_rows = e.read(&tape.class_rows).unwrap();
        let box_rows = e.read(&tape.box_rows).unwrap();
        let values = LossValues::from_array(&e.read(&out.values).unwrap()).unwrap();
        let class_grad = e.read(&out.class_grad).unwrap();
        let grads = grads.iter().map(|g| e.read(g).unwrap()).collect();
        (class_rows, box_rows, values, class_grad, grads)
    }

    let cpu = step(&mut CpuEngine::new(), &net, &values, &image, &loss, &anchors, &images);
    let gpu = step(
        &mut GpuEngine::new(&ctx).unwrap(),
        &net,
        &values,
        &image,
        &loss,
        &anchors,
        &images,
    );
    assert!(scaled_error(&gpu.0, &cpu.0) < 1e-4, "class rows");
    assert!(scaled_error(&gpu.1, &cpu.1) < 1e-4, "box rows");
    assert!(cpu.2.normaliser >= 3.0, "every box has an anchor: {:?}", cpu.2);
    assert_eq!(gpu.2.normaliser, cpu.2.normaliser);
    assert!(
        (gpu.2.class - cpu.2.class).abs() < 1e-4 * cpu.2.class,
        "{:?} vs {:?}",
        gpu.2,
        cpu.2
    );
    assert!(
        (gpu.2.boxes - cpu.2.boxes).abs() < 1e-3 * cpu.2.boxes.max(1e-3),
        "{:?} vs {:?}",
        gpu.2,
        cpu.2
    );
    assert!(scaled_error(&gpu.3, &cpu.3) < 1e-4, "class gradient");
    for (spec, (g, c)) in net.params().iter().zip(gpu.4.iter().zip(&cpu.4)) {
        assert!(scaled_error(g, c) < 2e-3, "{}: {}", spec.name, scaled_error(g, c));
    }
}

#[test]
fn detection_loss_is_the_sum_of_its_parts() {
    use retina_wgpu::{BoxLoss, BoxLossInput, FocalInput, FocalLoss, Reduction, TargetAssigner};
    let net = RetinaNet::new(RetinaNetConfig::default()).unwrap();
    let anchors = AnchorSet::new(net.config().anchors(), 128, 128).unwrap();
    let (boxes, classes) = ground_truth();
    let images = ground_truths(&boxes, &classes);
    let mut rng = Rng::new(9);
    let r = anchors.boxes.len();
    let logits = normal(&mut rng, 2 * r * 4, 2.0);
    let deltas: Vec<[f32; 4]> = (0..2 * r)
        .map(|_| [rng.normal(), rng.normal(), rng.normal(), rng.normal()])
        .collect();
    let out = DetectionLoss::retinanet(4)
        .compute(&Backend::Cpu, &anchors.boxes, &logits, &deltas, &images)
        .unwrap();
    // Independently: matching, then each loss with its own per-positive reduction.
    let targets = TargetAssigner::new(4)
        .assign(&Backend::Cpu, &anchors.boxes, &images)
        .unwrap();
    let positives = targets.labels.iter().filter(|&&l| l >= 0).count();
    assert_eq!(out.values.normaliser, positives as f32);
    let focal = FocalLoss::retinanet()
        .with_reduction(Reduction::PerPositive)
        .compute(&Backend::Cpu, &FocalInput::labels(&logits, &targets.labels, 4))
        .unwrap();
    let boxes = BoxLoss::smooth_l1(1.0 / 9.0)
        .compute(
            &Backend::Cpu,
            &BoxLossInput {
                pred: &deltas,
                targets: &targets.box_targets,
                labels: &targets.labels,
                anchors: &anchors.boxes,
            },
        )
        .unwrap();
    assert_eq!(out.values.class, focal.loss);
    assert_eq!(out.values.boxes, boxes.loss);
    assert_eq!(out.class_grad, focal.grad.unwrap());
    assert_eq!(out.box_grad, boxes.grad);
    // Bad input: rows of the wrong length, a box with x2 < x1.
    assert!(
        DetectionLoss::retinanet(4)
            .compute(&Backend::Cpu, &anchors.boxes, &logits[1..], &deltas, &images)
            .is_err()
    );
    let bad = [GroundTruth {
        boxes: &[[5.0, 5.0, 1.0, 9.0]],
        classes: &[0],
    }];
    let mut e = CpuEngine::new();
    let c = e.tensor(Shape::new(1, 1, r, 4), &logits[..r * 4]).unwrap();
    let b = e.zeros(Shape::new(1, 1, r, 4)).unwrap();
    assert!(
        e.detection_loss(&DetectionLoss::retinanet(4), &anchors, &c, &b, &bad)
            .is_err()
    );
}

#[test]
fn sgd_steps_fit_one_batch_on_the_cpu() {
    let config = RetinaNetConfig {
        input_size: 64,
        ..tiny()
    };
    let net = RetinaNet::new(config).unwrap();
    let mut e = CpuEngine::new();
    let mut params: Vec<CpuTensor> = net
        .params()
        .iter()
        .zip(net.init(1))
        .map(|(p, v)| e.tensor(p.shape, &v).unwrap())
        .collect();
    let mut velocity: Vec<CpuTensor> = net.params().iter().map(|p| e.zeros(p.shape).unwrap()).collect();
    // Two images with bright squares where the boxes are.
    let boxes = [vec![[8.0f32, 8.0, 32.0, 32.0]], vec![[24.0, 30.0, 56.0, 62.0]]];
    let classes = [vec![0], vec![1]];
    let mut image = vec![0f32; 2 * 3 * 64 * 64];
    for (n, b) in boxes.iter().enumerate() {
        for c in 0..3 {
            for y in b[0][1] as usize..b[0][3] as usize {
                for x in b[0][0] as usize..b[0][2] as usize {
                    image[((n * 3 + c) * 64 + y) * 64 + x] = if classes[n][0] == c as i32 { 2.0 } else { -1.0 };
                }
            }
        }
    }
    let images = ground_truths(&boxes, &classes);
    let anchors = AnchorSet::new(net.config().anchors(), 64, 64).unwrap();
    let loss = DetectionLoss::retinanet(2);
    let sgd = Sgd::default();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..40 {
        let x = e.tensor(Shape::new(2, 3, 64, 64), &image).unwrap();
        let tape = net.forward(&mut e, &params, x).unwrap();
        let out = e
            .detection_loss(&loss, &anchors, &tape.class_rows, &tape.box_rows, &images)
            .unwrap();
        let grads = net
            .backward(&mut e, &params, &tape, &out.class_grad, &out.box_grad)
            .unwrap();
        e.sgd_step(&sgd, 0.01, &mut params, &grads, &mut velocity, &[]).unwrap();
        last = LossValues::from_array(out.values.data()).unwrap().total();
        assert!(last.is_finite());
        first.get_or_insert(last);
    }
    let first = first.unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn weight_decay_skips_masked_parameters_on_both_backends() {
    fn run<E: Engine>(e: &mut E) -> Vec<Vec<f32>> {
        let shape = Shape::new(1, 2, 1, 1);
        let mut params = vec![
            e.tensor(shape, &[1.0, 2.0]).unwrap(),
            e.tensor(shape, &[1.0, 2.0]).unwrap(),
        ];
        let grads = vec![e.zeros(shape).unwrap(), e.zeros(shape).unwrap()];
        let mut velocity = vec![e.zeros(shape).unwrap(), e.zeros(shape).unwrap()];
        let sgd = Sgd {
            momentum: 0.0,
            weight_decay: 0.1,
            max_grad_norm: None,
        };
        e.sgd_step(&sgd, 1.0, &mut params, &grads, &mut velocity, &[true, false])
            .unwrap();
        assert!(
            e.sgd_step(&sgd, 1.0, &mut params, &grads, &mut velocity, &[true])
                .is_err()
        );
        params.iter().map(|p| e.read(p).unwrap()).collect()
    }
    let want = vec![vec![0.9, 1.8], vec![1.0, 2.0]];
    assert_eq!(run(&mut CpuEngine::<f32>::new()), want);
    if let Some(ctx) = gpu() {
        let got = run(&mut GpuEngine::new(&ctx).unwrap());
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }
}
