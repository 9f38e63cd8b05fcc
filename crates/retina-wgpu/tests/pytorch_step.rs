//! One full training step of a tiny RetinaNet against PyTorch + torchvision: forward, anchor
//! matching, focal and smooth L1 losses, backward and one SGD update (momentum from zero
//! velocity, weight decay on convolution weights only, global gradient-norm clipping, active
//! here), on the CPU engine (f32) and on the GPU engine.
//!
//! The vectors, retinanet_step.json (read by `common::golden`'s rule: from `RETINA_GOLDEN_DIR`
//! when it holds the file, else from tests/golden/), come from scripts/pytorch_step_reference.py
//! (PyTorch + torchvision in float64; this test needs no Python): a 64 x 64 network with 4
//! classes, backbone [4, 8, 8, 16, 16], FPN 8, one head convolution of 8 and GroupNorm, its
//! float32 weights under the crate's parameter names, a batch of 2 images with 5 boxes, and the
//! expected anchors, per-anchor labels, class and box losses, positive count, the gradient of
//! every parameter and every parameter after the update. Each step is checked against them:
//!
//! - the anchors (to 1e-4) and the matcher's per-anchor labels exactly, on both backends (so
//!   that a loss mismatch can be told apart from a matching one);
//! - the class and box losses within 1e-4 relative, the normaliser equal to the positive count;
//! - every parameter's gradient within 1e-4 of that tensor's largest magnitude
//!   (max |a - b| / max |b|);
//! - SGD's momentum buffer after the step (clip * grad + weight decay * weight) likewise: in it
//!   the weight decay and its mask show, where in the updated weights their share
//!   (lr * 1e-4 * w) is far below the tolerance;
//! - every parameter after the update elementwise within 1e-4 relative (+ 1e-6 absolute).
//!
//! The GPU test runs when an adapter is found (always with `RETINA_REQUIRE_GPU=1`). The errors
//! observed are printed (`cargo test --test pytorch_step -- --nocapture`).

mod common;

use retina_wgpu::model::{AnchorSet, DetectionLoss, LossEngine, LossValues, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::{CpuEngine, GpuEngine, Sgd, Shape};
use retina_wgpu::{Backend, GroundTruth, TargetAssigner};
use serde_json::Value;

use common::{f32s, golden, gpu, i32s};

/// Relative tolerance of every comparison.
const TOL: f64 = 1e-4;

/// One parameter tensor of the vectors, in the crate's order.
struct GoldenParam {
    name: String,
    shape: Shape,
    decay: bool,
    values: Vec<f32>,
    grad: Vec<f64>,
    velocity: Vec<f64>,
    updated: Vec<f64>,
}

/// The reference step.
struct Golden {
    net: RetinaNet,
    sgd: Sgd,
    lr: f32,
    clip_coefficient: f64,
    images: Vec<f32>,
    boxes: Vec<Vec<[f32; 4]>>,
    classes: Vec<Vec<i32>>,
    anchors: Vec<f32>,
    labels: Vec<i32>,
    positives: usize,
    low_quality_matches: usize,
    class_loss: f64,
    box_loss: f64,
    params: Vec<GoldenParam>,
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("retinanet_step.json: `{key}` is not a number"))
}

impl Golden {
    fn load() -> Self {
        let g = golden("retinanet_step.json");
        let config: RetinaNetConfig = serde_json::from_value(g["config"].clone()).expect("config");
        let net = RetinaNet::new(config).expect("the vectors' network");
        let s = &g["sgd"];
        let sgd = Sgd {
            momentum: number(s, "momentum") as f32,
            weight_decay: number(s, "weight_decay") as f32,
            max_grad_norm: s["max_grad_norm"].as_f64().map(|m| m as f32),
        };
        let targets = g["targets"].as_array().expect("targets");
        let boxes = targets
            .iter()
            .map(|t| {
                t["boxes"]
                    .as_array()
                    .expect("boxes")
                    .iter()
                    .map(|b| f32s(b).try_into().expect("x1 y1 x2 y2"))
                    .collect()
            })
            .collect();
        let classes = targets.iter().map(|t| i32s(&t["classes"])).collect();

        // The parameters by name, in the crate's order; every name must be there, no other.
        let by_name: std::collections::HashMap<&str, &Value> = g["params"]
            .as_array()
            .expect("params")
            .iter()
            .map(|p| (p["name"].as_str().expect("name"), p))
            .collect();
        let missing: Vec<&str> = net
            .params()
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| !by_name.contains_key(n))
            .collect();
        assert!(missing.is_empty(), "retinanet_step.json lacks parameters {missing:?}");
        let extra: Vec<&&str> = by_name
            .keys()
            .filter(|n| !net.params().iter().any(|p| p.name == **n))
            .collect();
        assert!(
            extra.is_empty(),
            "retinanet_step.json has parameters the network lacks: {extra:?}"
        );
        let params = net
            .params()
            .iter()
            .map(|spec| {
                let p = by_name[spec.name.as_str()];
                // PyTorch's shapes: [O, I, kh, kw] for convolutions, [C] where the crate has
                // [1, C, 1, 1].
                let dims: Vec<usize> = p["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dimension") as usize)
                    .collect();
                let shape = match dims[..] {
                    [c] => Shape::new(1, c, 1, 1),
                    [n, c, h, w] => Shape::new(n, c, h, w),
                    _ => panic!("{}: shape {dims:?}", spec.name),
                };
                assert_eq!(shape, spec.shape, "{}: PyTorch shape {dims:?}", spec.name);
                let param = GoldenParam {
                    name: spec.name.clone(),
                    shape,
                    decay: p["decay"].as_bool().expect("decay"),
                    values: f32s(&p["values"]),
                    grad: f64s(&p["grad"]),
                    velocity: f64s(&p["velocity"]),
                    updated: f64s(&p["updated"]),
                };
                assert_eq!(param.decay, spec.decay, "{}: weight decay flag", spec.name);
                for (what, len) in [
                    ("values", param.values.len()),
                    ("grad", param.grad.len()),
                    ("velocity", param.velocity.len()),
                    ("updated", param.updated.len()),
                ] {
                    assert_eq!(len, shape.len(), "{}: {what}", spec.name);
                }
                param
            })
            .collect();
        Self {
            net,
            sgd,
            lr: number(s, "lr") as f32,
            clip_coefficient: number(&g, "clip_coefficient"),
            images: f32s(&g["images"]["values"]),
            boxes,
            classes,
            anchors: f32s(&g["anchors"]),
            labels: i32s(&g["labels"]),
            positives: g["positives"].as_u64().expect("positives") as usize,
            low_quality_matches: g["low_quality_matches"].as_u64().expect("low-quality matches") as usize,
            class_loss: number(&g, "class_loss"),
            box_loss: number(&g, "box_loss"),
            params,
        }
    }

    fn size(&self) -> usize {
        self.net.config().input_size
    }

    fn batch(&self) -> usize {
        self.boxes.len()
    }

    fn ground_truth(&self) -> Vec<GroundTruth<'_>> {
        self.boxes
            .iter()
            .zip(&self.classes)
            .map(|(b, c)| GroundTruth { boxes: b, classes: c })
            .collect()
    }

    fn anchor_set(&self) -> AnchorSet {
        let s = self.size() as u32;
        AnchorSet::new(self.net.config().anchors(), s, s).expect("anchors")
    }
}

/// What one step on an engine gives.
struct Outcome {
    loss: LossValues,
    grads: Vec<Vec<f32>>,
    velocity: Vec<Vec<f32>>,
    updated: Vec<Vec<f32>>,
}

/// Forward, detection loss, backward and one SGD step from zero velocity, as `Trainer::step`
/// runs them.
fn step<E: LossEngine>(e: &mut E, g: &Golden) -> Outcome {
    let net = &g.net;
    let mut params: Vec<E::Tensor> = g.params.iter().map(|p| e.tensor(p.shape, &p.values).unwrap()).collect();
    let s = g.size();
    let x = e.tensor(Shape::new(g.batch(), 3, s, s), &g.images).unwrap();
    let tape = net.forward(e, &params, x).unwrap();
    let loss = DetectionLoss::retinanet(net.config().num_classes);
    let out = e
        .detection_loss(
            &loss,
            &g.anchor_set(),
            &tape.class_rows,
            &tape.box_rows,
            &g.ground_truth(),
        )
        .unwrap();
    let grads = net.backward(e, &params, &tape, &out.class_grad, &out.box_grad).unwrap();
    drop(tape);
    let grad_values = grads.iter().map(|t| e.read(t).unwrap()).collect();
    let mut velocity: Vec<E::Tensor> = g.params.iter().map(|p| e.zeros(p.shape).unwrap()).collect();
    let decay: Vec<bool> = net.params().iter().map(|p| p.decay).collect();
    e.sgd_step(&g.sgd, g.lr, &mut params, &grads, &mut velocity, &decay)
        .unwrap();
    Outcome {
        loss: LossValues::from_array(&e.read(&out.values).unwrap()).unwrap(),
        grads: grad_values,
        velocity: velocity.iter().map(|t| e.read(t).unwrap()).collect(),
        updated: params.iter().map(|t| e.read(t).unwrap()).collect(),
    }
}

/// max |a - b| / max |b| over a tensor.
fn scaled_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
    if scale > 0.0 { err / scale } else { err }
}

/// The largest `|a - b| / (1e-4 |b| + 1e-6)` over a tensor: at most 1 passes, and where it is
/// worst.
fn update_error(got: &[f32], want: &[f64]) -> (f64, usize) {
    got.iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - b).abs() / (TOL * b.abs() + 1e-6))
        .enumerate()
        .fold((0.0, 0), |(m, at), (i, r)| if r > m { (r, i) } else { (m, at) })
}

/// The tensor with the largest error: (error, name, element).
fn worst(g: &Golden, got: &[Vec<f32>], error: impl Fn(&GoldenParam, &[f32]) -> (f64, usize)) -> (f64, String, usize) {
    g.params
        .iter()
        .zip(got)
        .map(|(p, got)| {
            let (e, i) = error(p, got);
            (e, p.name.clone(), i)
        })
        .fold((0.0, String::new(), 0), |a, b| if b.0 > a.0 { b } else { a })
}

/// Checks one backend's step against the vectors; prints the errors observed.
fn check(backend: &str, g: &Golden, out: &Outcome) {
    let rel = |got: f32, want: f64| (f64::from(got) - want).abs() / want.abs();
    let (class_err, box_err) = (rel(out.loss.class, g.class_loss), rel(out.loss.boxes, g.box_loss));
    let grad = worst(g, &out.grads, |p, got| (scaled_error(got, &p.grad), 0));
    let velocity = worst(g, &out.velocity, |p, got| (scaled_error(got, &p.velocity), 0));
    let updated = worst(g, &out.updated, |p, got| update_error(got, &p.updated));
    let max_rel = g
        .params
        .iter()
        .zip(&out.updated)
        .flat_map(|(p, got)| got.iter().zip(&p.updated))
        .filter(|(_, b)| b.abs() >= 1e-3)
        .map(|(&a, &b)| (f64::from(a) - b).abs() / b.abs())
        .fold(0f64, f64::max);
    eprintln!(
        "{backend}: class loss {} (rel err {class_err:.2e}), box loss {} (rel err {box_err:.2e}), {} positives; \
         worst scaled error: gradient {:.2e} ({}), velocity {:.2e} ({}); updated parameters: worst {}[{}] at \
         {:.3} of the tolerance, max relative error {max_rel:.2e} (where |w| >= 1e-3)",
        out.loss.class,
        out.loss.boxes,
        out.loss.normaliser,
        grad.0,
        grad.1,
        velocity.0,
        velocity.1,
        updated.1,
        updated.2,
        updated.0,
    );

    assert_eq!(out.loss.normaliser, g.positives as f32, "{backend}: positive anchors");
    assert!(
        class_err <= TOL,
        "{backend}: class loss {} vs PyTorch {}",
        out.loss.class,
        g.class_loss
    );
    assert!(
        box_err <= TOL,
        "{backend}: box loss {} vs PyTorch {}",
        out.loss.boxes,
        g.box_loss
    );
    for (p, got) in g.params.iter().zip(&out.grads) {
        let err = scaled_error(got, &p.grad);
        assert!(err <= TOL, "{backend}: gradient of {}: scaled error {err:.3e}", p.name);
    }
    // The momentum buffer, clip * grad + decay * weight: the update's direction, where weight
    // decay shows (in the weights after the update it is below the tolerance).
    for (p, got) in g.params.iter().zip(&out.velocity) {
        let err = scaled_error(got, &p.velocity);
        assert!(
            err <= TOL,
            "{backend}: velocity of {} (weight decay {}): scaled error {err:.3e}",
            p.name,
            if p.decay { "on" } else { "off" }
        );
    }
    for (p, got) in g.params.iter().zip(&out.updated) {
        let (r, i) = update_error(got, &p.updated);
        assert!(
            r <= 1.0,
            "{backend}: {} after the update, element {i}: {} vs PyTorch {} (before {}, gradient {})",
            p.name,
            got[i],
            p.updated[i],
            p.values[i],
            p.grad[i]
        );
    }
}

/// The crate's anchors and its matcher's labels are torchvision's, on `backend`.
fn check_targets(backend: &Backend, g: &Golden) {
    let anchors = g.anchor_set();
    let flat: Vec<f32> = anchors.boxes.iter().flatten().copied().collect();
    assert_eq!(flat.len(), g.anchors.len(), "anchor count");
    for (i, (a, b)) in flat.iter().zip(&g.anchors).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "anchor {} coordinate {}: {a} vs the reference's {b}",
            i / 4,
            i % 4
        );
    }
    let assigner = TargetAssigner::new(g.net.config().num_classes);
    let targets = assigner.assign(backend, &anchors.boxes, &g.ground_truth()).unwrap();
    let r = anchors.boxes.len();
    for (i, (got, want)) in targets.labels.iter().zip(&g.labels).enumerate() {
        assert_eq!(
            got,
            want,
            "{}: image {} anchor {} {:?}: label {got}, torchvision's matcher gives {want}",
            backend.kind(),
            i / r,
            i % r,
            anchors.boxes[i % r]
        );
    }
    assert_eq!(targets.labels.len(), g.labels.len());
    assert_eq!(targets.total_positives() as usize, g.positives);
}

#[test]
fn vectors_exercise_every_part_of_the_step() {
    let g = Golden::load();
    assert!(
        g.positives > 0 && g.labels.contains(&-2) && g.low_quality_matches > 0,
        "positives, ignored anchors and low-quality matches"
    );
    assert!(
        g.clip_coefficient < 1.0,
        "the gradient-norm clip is active ({})",
        g.clip_coefficient
    );
    assert!(g.params.iter().any(|p| !p.decay) && g.params.iter().any(|p| p.decay));
}

#[test]
fn cpu_anchors_and_matching_are_torchvisions() {
    check_targets(&Backend::Cpu, &Golden::load());
}

#[test]
fn cpu_training_step_matches_pytorch() {
    let g = Golden::load();
    let out = step(&mut CpuEngine::<f32>::new(), &g);
    check("cpu", &g, &out);
}

#[test]
fn gpu_training_step_matches_pytorch() {
    let Some(ctx) = gpu() else { return };
    let g = Golden::load();
    check_targets(&Backend::Gpu(ctx.clone()), &g);
    let out = step(&mut GpuEngine::new(&ctx).unwrap(), &g);
    check("gpu", &g, &out);
}
