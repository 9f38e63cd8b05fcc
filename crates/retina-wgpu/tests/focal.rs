//! Focal loss: torchvision's vectors on both backends, GPU against CPU on random inputs,
//! gradients against finite differences, numerics at the edges, and bad input.

mod common;

use common::cases::{FocalCase, FocalProblem, assert_focal_agree, dense_from_labels, focal_losses, random_problem};
use common::{Rng, assert_close, backends, golden, gpu, gpu_with};
use retina_wgpu::gpu::{FocalBuffers, LogitsBuffer, TargetsBuffer};
use retina_wgpu::{Backend, Error, FocalInput, FocalLoss, GpuOptions, Reduction};

#[test]
fn matches_torchvision_vectors_on_both_backends() {
    let cases = FocalCase::all(&golden("focal_loss.json"));
    for backend in backends() {
        for (i, case) in cases.iter().enumerate() {
            let what = format!("{} case {i}", backend.kind());
            let input = case.input();

            let none = case
                .loss
                .with_reduction(Reduction::None)
                .compute(&backend, &input)
                .unwrap();
            case.check_none(&what, none.elementwise.as_ref().unwrap(), none.grad.as_ref().unwrap());
            let sum = case
                .loss
                .with_reduction(Reduction::Sum)
                .compute(&backend, &input)
                .unwrap();
            case.check_sum(&what, sum.loss);
            let mean = case
                .loss
                .with_reduction(Reduction::Mean)
                .compute(&backend, &input)
                .unwrap();
            case.check_mean(&what, mean.loss, mean.grad.as_ref().unwrap());

            // The label form gives the same numbers when targets are hard (rows of one class).
            if case.targets.iter().all(|&t| t == 0.0 || t == 1.0) {
                let labels: Vec<i32> = case.targets.iter().map(|&t| if t == 1.0 { 0 } else { -1 }).collect();
                let by_label = case
                    .loss
                    .with_reduction(Reduction::None)
                    .compute(&backend, &FocalInput::labels(&case.logits[..], &labels, 1))
                    .unwrap();
                case.check_none(
                    &format!("{what} label"),
                    by_label.elementwise.as_ref().unwrap(),
                    by_label.grad.as_ref().unwrap(),
                );
            }
        }
    }
}

// ---- an independent f64 reference (textbook formulas, no shared code with the crate) ----

fn sigmoid64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

fn softplus64(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// torchvision's definition in f64, with 1 - p_t computed without cancellation.
fn ref_focal(x: f64, t: f64, alpha: Option<f64>, gamma: f64) -> f64 {
    let p = sigmoid64(x);
    let q = sigmoid64(-x);
    let ce = x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
    let one_minus_pt = p * (1.0 - t) + q * t;
    let a = alpha.map_or(1.0, |a| a * t + (1.0 - a) * (1.0 - t));
    a * ce * one_minus_pt.powf(gamma)
}

/// FL* from the paper's appendix A, in f64.
fn ref_star(x: f64, t: f64, alpha: Option<f64>, gamma: f64, beta: f64) -> f64 {
    let pos = softplus64(-(gamma * x + beta)) / gamma;
    let neg = softplus64(-(-gamma * x + beta)) / gamma;
    let a = alpha.map_or(1.0, |a| a * t + (1.0 - a) * (1.0 - t));
    a * (t * pos + (1.0 - t) * neg)
}

fn central_difference(f: impl Fn(f64) -> f64, x: f64) -> f64 {
    let h = 1e-4 * x.abs().max(1.0);
    (f(x + h) - f(x - h)) / (2.0 * h)
}

#[test]
fn gradient_matches_f64_finite_differences_on_the_cpu() {
    let mut rng = Rng::new(7);
    let n = 600;
    let logits: Vec<f32> = (0..n).map(|_| rng.range(-12.0, 12.0)).collect();
    let soft: Vec<f32> = (0..n)
        .map(|i| if i % 3 == 0 { rng.uniform() } else { (i % 2) as f32 })
        .collect();
    for gamma in [0.0f32, 0.3, 0.5, 1.0, 2.0, 4.5] {
        for alpha in [None, Some(0.25f32)] {
            let loss = FocalLoss::new(alpha, gamma).with_reduction(Reduction::None);
            let out = loss
                .compute(&Backend::Cpu, &FocalInput::dense(&logits[..], &soft, 1))
                .unwrap();
            let grad = out.grad.unwrap();
            let values = out.elementwise.unwrap();
            for i in 0..n {
                let (x, t) = (f64::from(logits[i]), f64::from(soft[i]));
                let a = alpha.map(f64::from);
                let want_loss = ref_focal(x, t, a, f64::from(gamma));
                let want_grad = central_difference(|x| ref_focal(x, t, a, f64::from(gamma)), x);
                let what = format!("gamma {gamma} alpha {alpha:?} x {x} t {t}");
                assert!(
                    (f64::from(values[i]) - want_loss).abs() <= 1e-5 * want_loss.abs() + 1e-6,
                    "{what}: loss {} vs {want_loss}",
                    values[i]
                );
                assert!(
                    (f64::from(grad[i]) - want_grad).abs() <= 1e-4 * want_grad.abs() + 1e-6,
                    "{what}: grad {} vs {want_grad}",
                    grad[i]
                );
            }
        }
    }
}

#[test]
fn focal_star_matches_the_paper_and_its_finite_differences() {
    let mut rng = Rng::new(11);
    let n = 400;
    let logits: Vec<f32> = (0..n).map(|_| rng.range(-8.0, 8.0)).collect();
    let targets: Vec<f32> = (0..n)
        .map(|i| if i % 4 == 0 { rng.uniform() } else { (i % 2) as f32 })
        .collect();
    for backend in backends() {
        for (gamma, beta) in [(4.0f32, 0.0f32), (2.0, 1.0), (0.5, -1.0)] {
            for alpha in [None, Some(0.25f32)] {
                let loss = FocalLoss::star(gamma, beta)
                    .with_alpha(alpha)
                    .with_reduction(Reduction::None);
                let out = loss
                    .compute(&backend, &FocalInput::dense(&logits[..], &targets, 1))
                    .unwrap();
                let (values, grad) = (out.elementwise.unwrap(), out.grad.unwrap());
                for i in 0..n {
                    let (x, t) = (f64::from(logits[i]), f64::from(targets[i]));
                    let a = alpha.map(f64::from);
                    let (g, b) = (f64::from(gamma), f64::from(beta));
                    let want = ref_star(x, t, a, g, b);
                    let want_grad = central_difference(|x| ref_star(x, t, a, g, b), x);
                    let what = format!(
                        "{} FL* gamma {gamma} beta {beta} alpha {alpha:?} x {x} t {t}",
                        backend.kind()
                    );
                    assert!(
                        (f64::from(values[i]) - want).abs() <= 1e-5 * want.abs() + 1e-6,
                        "{what}: {} vs {want}",
                        values[i]
                    );
                    assert!(
                        (f64::from(grad[i]) - want_grad).abs() <= 1e-4 * want_grad.abs() + 1e-6,
                        "{what}: grad {} vs {want_grad}",
                        grad[i]
                    );
                }
            }
        }
    }
}

#[test]
fn finite_everywhere_up_to_1e4_for_every_gamma() {
    // Logits from -1e4 to 1e4 (both signs, every decade), against both hard targets and a soft one.
    let mut logits = vec![0.0f32];
    for decade in [-3, -2, -1, 0, 1, 2, 3, 4] {
        let m = 10f32.powi(decade);
        logits.extend([m, -m, 2.5 * m, -2.5 * m]);
    }
    logits.extend([1e4, -1e4, 20.0, -20.0, 88.0, -88.0, 104.0, -104.0]);
    let n = logits.len();
    for backend in backends() {
        for gamma in [0.0f32, 0.1, 0.5, 0.99, 1.0, 2.0, 5.0, 17.5] {
            for t in [0.0f32, 1.0, 0.3] {
                let targets = vec![t; n];
                let loss = FocalLoss::new(Some(0.25), gamma).with_reduction(Reduction::None);
                let out = loss
                    .compute(&backend, &FocalInput::dense(&logits[..], &targets, 1))
                    .unwrap();
                let (values, grad) = (out.elementwise.unwrap(), out.grad.unwrap());
                for i in 0..n {
                    let what = format!("{} gamma {gamma} t {t} x {}", backend.kind(), logits[i]);
                    assert!(
                        values[i].is_finite() && grad[i].is_finite(),
                        "{what}: loss {} grad {}",
                        values[i],
                        grad[i]
                    );
                    let want = ref_focal(f64::from(logits[i]), f64::from(t), Some(0.25), f64::from(gamma));
                    assert!(
                        (f64::from(values[i]) - want).abs() <= 1e-5 * want.abs() + 1e-6,
                        "{what}: {} vs {want}",
                        values[i]
                    );
                }
            }
        }
        // torchvision's NaN case: gamma 0.5, logit 20, target 1.
        let out = FocalLoss::new(Some(0.25), 0.5)
            .compute(&backend, &FocalInput::dense(&[20.0f32][..], &[1.0], 1))
            .unwrap();
        let g = out.grad.unwrap()[0];
        assert!(
            g.is_finite() && g <= 0.0 && g > -1e-8,
            "{}: gradient {g}",
            backend.kind()
        );
    }
}

#[test]
fn nan_in_gives_nan_out_and_ignored_anchors_give_zero() {
    let logits = [0.5f32, f32::NAN, -1.0, f32::INFINITY, 2.0, f32::NAN];
    for backend in backends() {
        let dense = FocalLoss::new(Some(0.25), 2.0)
            .with_reduction(Reduction::None)
            .compute(
                &backend,
                &FocalInput::dense(&logits[..], &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0], 1),
            )
            .unwrap();
        let (values, grad) = (dense.elementwise.unwrap(), dense.grad.unwrap());
        for i in [1, 3, 5] {
            assert!(
                values[i].is_nan() && grad[i].is_nan(),
                "{}: element {i}",
                backend.kind()
            );
        }
        for i in [0, 2, 4] {
            assert!(
                values[i].is_finite() && grad[i].is_finite(),
                "{}: element {i}",
                backend.kind()
            );
        }
        assert!(
            dense.loss.is_nan(),
            "{}: a NaN element makes the sum NaN",
            backend.kind()
        );

        // NaN target.
        let t = FocalLoss::new(None, 2.0)
            .compute(&backend, &FocalInput::dense(&[0.5f32][..], &[f32::NAN], 1))
            .unwrap();
        assert!(
            t.loss.is_nan() && t.grad.unwrap()[0].is_nan(),
            "{}: NaN target",
            backend.kind()
        );

        // Rows of 3: the ignored row (label -2) holds a NaN and still contributes exactly 0.
        let labels = [-2, 1];
        let out = FocalLoss::new(Some(0.25), 2.0)
            .with_reduction(Reduction::None)
            .compute(
                &backend,
                &FocalInput::labels(&[f32::NAN, 1.0, 2.0, 0.1, 0.2, 0.3][..], &labels, 3),
            )
            .unwrap();
        let (values, grad) = (out.elementwise.unwrap(), out.grad.unwrap());
        assert_eq!(&values[..3], &[0.0; 3]);
        assert_eq!(&grad[..3], &[0.0; 3]);
        assert!(out.loss.is_finite() && out.loss > 0.0);
    }
}

#[test]
fn empty_input_is_zero() {
    for backend in backends() {
        let out = FocalLoss::retinanet()
            .compute(&backend, &FocalInput::labels(&[0.0f32; 0][..], &[], 80))
            .unwrap();
        assert_eq!(out.loss, 0.0);
        assert_eq!(out.grad, Some(vec![]));
        let out = FocalLoss::default()
            .compute(&backend, &FocalInput::dense(&[0.0f32; 0][..], &[], 1))
            .unwrap();
        assert_eq!((out.loss, out.elementwise), (0.0, Some(vec![])));
    }
}

#[test]
fn gpu_matches_cpu_on_random_inputs() {
    let Some(ctx) = gpu() else { return };
    let gpu = Backend::Gpu(ctx);
    let mut rng = Rng::new(3);
    for (rows, k) in [(1, 1), (7, 3), (1000, 80), (4097, 91), (20_000, 20), (3, 1000)] {
        let problem = FocalProblem::new(&mut rng, rows, k);
        for loss in focal_losses() {
            for (name, input) in problem.inputs() {
                let what = format!("{rows}x{k} {name} {loss:?}");
                let g = loss.compute(&gpu, &input).unwrap();
                let c = loss.compute(&Backend::Cpu, &input).unwrap();
                assert_focal_agree(&what, &g, &c);
                let forward = loss.forward(&gpu, &input).unwrap();
                assert!(forward.grad.is_none());
                assert!(
                    (forward.loss - c.loss).abs() <= 1e-5 * c.loss.abs() + 1e-6,
                    "{what}: forward-only loss"
                );
            }
        }
    }
}

#[test]
fn labels_and_dense_one_hot_targets_agree() {
    let mut rng = Rng::new(5);
    let (logits, labels) = random_problem(&mut rng, 500, 13);
    // Ignored rows have no dense equivalent: make them background for this comparison.
    let labels: Vec<i32> = labels.iter().map(|&l| if l == -2 { -1 } else { l }).collect();
    let dense = dense_from_labels(&labels, 13);
    for backend in backends() {
        let loss = FocalLoss::retinanet();
        let a = loss
            .compute(&backend, &FocalInput::labels(&logits[..], &labels, 13))
            .unwrap();
        let b = loss
            .compute(&backend, &FocalInput::dense(&logits[..], &dense, 13))
            .unwrap();
        assert_eq!(a.normaliser, b.normaliser);
        assert_close("loss", &[a.loss], &[b.loss], 1e-6, 0.0);
        assert_close("grad", a.grad.as_ref().unwrap(), b.grad.as_ref().unwrap(), 1e-6, 0.0);
    }
}

#[test]
fn subgroup_and_workgroup_reductions_agree() {
    let Some(plain) = gpu_with(GpuOptions {
        subgroups: false,
        ..Default::default()
    }) else {
        return;
    };
    let with = gpu().unwrap();
    assert!(!plain.uses_subgroups());
    let mut rng = Rng::new(9);
    let (logits, labels) = random_problem(&mut rng, 30_000, 33);
    let input = FocalInput::labels(&logits[..], &labels, 33);
    let cpu = FocalLoss::retinanet().compute(&Backend::Cpu, &input).unwrap();
    for ctx in [plain, with] {
        let subgroups = ctx.uses_subgroups();
        let out = FocalLoss::retinanet().compute(&Backend::Gpu(ctx), &input).unwrap();
        assert_focal_agree(&format!("subgroups {subgroups}"), &out, &cpu);
    }
}

#[test]
fn recorded_on_device_buffers_with_device_side_normalisers() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(21);
    let k = 80;
    let (logits, labels) = random_problem(&mut rng, 3000, k);
    let logits_buf = ctx.upload(&logits).unwrap();
    let labels_buf = ctx.upload(&labels).unwrap();
    let grad_buf = ctx.zeros::<f32>(logits.len()).unwrap();
    let loss_buf = ctx.zeros::<f32>(3).unwrap();
    let input = FocalInput::labels(&logits[..], &labels, k);
    let positives = labels.iter().filter(|&&l| l >= 0).count() as u32;
    let external = ctx.upload(&[7u32, positives]).unwrap();

    for (loss, external) in [
        (FocalLoss::retinanet(), None),
        (FocalLoss::retinanet(), Some((&external, 1))),
        (FocalLoss::new(Some(0.25), 2.0).with_reduction(Reduction::Mean), None),
        (FocalLoss::new(Some(0.25), 2.0).with_reduction(Reduction::Sum), None),
    ] {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let buffers = FocalBuffers {
            logits: LogitsBuffer::F32(&logits_buf),
            targets: TargetsBuffer::Labels(&labels_buf),
            num_classes: k,
            loss: &loss_buf,
            grad: Some(&grad_buf),
            elementwise: None,
            positives: external,
        };
        ctx.record_focal_loss(&mut encoder, &loss, &buffers).unwrap();
        ctx.queue().submit([encoder.finish()]);
        let out = ctx.download(&loss_buf).unwrap();
        let grad = ctx.download(&grad_buf).unwrap();
        let cpu = loss.compute(&Backend::Cpu, &input).unwrap();
        let what = format!("{:?} external {}", loss.reduction, external.is_some());
        assert_eq!(out[2], cpu.normaliser, "{what}: normaliser");
        assert!(
            (out[0] - cpu.loss).abs() <= 1e-5 * cpu.loss,
            "{what}: {} vs {}",
            out[0],
            cpu.loss
        );
        assert!((f64::from(out[1]) - cpu.sum).abs() <= 1e-5 * cpu.sum, "{what}: sum");
        assert_close(&what, &grad, cpu.grad.as_ref().unwrap(), 1e-5, 1e-7);
    }

    // Dense targets cannot count positives on the device: a clear error, not a wrong answer.
    let dense = ctx.upload(&dense_from_labels(&labels, k)).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let err = ctx
        .record_focal_loss(
            &mut encoder,
            &FocalLoss::retinanet(),
            &FocalBuffers {
                logits: LogitsBuffer::F32(&logits_buf),
                targets: TargetsBuffer::Dense(&dense),
                num_classes: k,
                loss: &loss_buf,
                grad: None,
                elementwise: None,
                positives: None,
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParameter(_)), "{err}");
}

#[test]
fn bad_parameters_and_shapes_are_clear_errors() {
    let logits = [0.1f32; 6];
    let ok_labels = [0, -1];
    for backend in backends() {
        let bad = [
            (FocalLoss::new(Some(1.5), 2.0), "alpha"),
            (FocalLoss::new(Some(-0.1), 2.0), "alpha"),
            (FocalLoss::new(None, -1.0), "gamma"),
            (FocalLoss::new(None, f32::NAN), "gamma"),
            (FocalLoss::new(None, f32::INFINITY), "gamma"),
            (FocalLoss::star(0.0, 0.0), "gamma"),
            (FocalLoss::star(2.0, f32::NAN), "beta"),
            (
                FocalLoss::new(None, 2.0).with_reduction(Reduction::Normalized(0.0)),
                "normaliser",
            ),
            (
                FocalLoss::new(None, 2.0).with_reduction(Reduction::Normalized(f32::NAN)),
                "normaliser",
            ),
        ];
        for (loss, word) in bad {
            let err = loss
                .compute(&backend, &FocalInput::labels(&logits[..], &ok_labels, 3))
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter(_)) && err.to_string().contains(word),
                "{loss:?}: {err}"
            );
        }
        let loss = FocalLoss::retinanet();
        let shape_errors = [
            FocalInput::labels(&logits[..], &[0, -1, -1], 3),
            FocalInput::labels(&logits[..], &[0], 3),
            FocalInput::labels(&logits[..], &[0, 0], 4),
            FocalInput::dense(&logits[..], &[0.0; 5], 3),
        ];
        for input in shape_errors {
            let err = loss.compute(&backend, &input).unwrap_err();
            assert!(matches!(err, Error::ShapeMismatch { .. }), "{input:?}: {err}");
        }
        for (input, word) in [
            (FocalInput::labels(&logits[..], &[3, -1], 3), "label 0 is 3"),
            (FocalInput::labels(&logits[..], &[0, -3], 3), "label 1 is -3"),
            (
                FocalInput::dense(&logits[..], &[0.0, 0.0, 1.5, 0.0, 0.0, 0.0], 3),
                "dense target 2",
            ),
            (FocalInput::dense(&logits[..], &[0.0; 6], 0), "num_classes"),
        ] {
            let err = loss.compute(&backend, &input).unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter(_)) && err.to_string().contains(word),
                "{err}"
            );
        }
    }
}
