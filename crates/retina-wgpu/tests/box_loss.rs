//! Box regression losses: values and gradients against an independent f64 implementation and
//! its central finite differences, and GPU against CPU.

mod common;

use common::{Rng, assert_close, gpu};
use retina_wgpu::{AnchorConfig, Backend, BoxLoss, BoxLossInput, BoxReduction, Error};

// ---- independent f64 reference ----

fn decode64(d: [f64; 4], a: [f32; 4], clamp: f64) -> [f64; 4] {
    let a = a.map(f64::from);
    let (aw, ah) = (a[2] - a[0], a[3] - a[1]);
    let (cx, cy) = (a[0] + 0.5 * aw + d[0] * aw, a[1] + 0.5 * ah + d[1] * ah);
    let (w, h) = (d[2].min(clamp).exp() * aw, d[3].min(clamp).exp() * ah);
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

fn giou_loss64(p: [f64; 4], t: [f64; 4]) -> f64 {
    let eps = 1e-7;
    let iw = (p[2].min(t[2]) - p[0].max(t[0])).max(0.0);
    let ih = (p[3].min(t[3]) - p[1].max(t[1])).max(0.0);
    let inter = iw * ih;
    let union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter;
    let c = (p[2].max(t[2]) - p[0].min(t[0])) * (p[3].max(t[3]) - p[1].min(t[1]));
    1.0 - (inter / (union + eps) - (c - union) / (c + eps))
}

fn smooth_l1_64(p: [f64; 4], t: [f64; 4], beta: f64) -> f64 {
    (0..4)
        .map(|c| {
            let n = (p[c] - t[c]).abs();
            if n < beta { 0.5 * n * n / beta } else { n - 0.5 * beta }
        })
        .sum()
}

fn reference(kind: &str, p: [f64; 4], t: [f32; 4], anchor: [f32; 4], beta: f64, clamp: f64) -> f64 {
    let t64 = t.map(f64::from);
    match kind {
        "giou" => giou_loss64(decode64(p, anchor, clamp), decode64(t64, anchor, clamp)),
        _ => smooth_l1_64(p, t64, beta),
    }
}

struct Problem {
    anchors: Vec<[f32; 4]>,
    pred: Vec<[f32; 4]>,
    targets: Vec<[f32; 4]>,
    labels: Vec<i32>,
}

fn problem(seed: u64, images: usize) -> Problem {
    let mut rng = Rng::new(seed);
    let anchors = AnchorConfig::small().generate(&Backend::Cpu, 64, 64).unwrap();
    let n = anchors.len() * images;
    let mut delta = |s: f32| [s * rng.normal(), s * rng.normal(), s * rng.normal(), s * rng.normal()];
    let pred = (0..n).map(|_| delta(0.5)).collect();
    let targets = (0..n).map(|_| delta(0.3)).collect();
    let labels = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                (i % 5) as i32
            } else {
                -1 - (i % 2) as i32
            }
        })
        .collect();
    Problem {
        anchors,
        pred,
        targets,
        labels,
    }
}

#[test]
fn values_and_gradients_match_f64_finite_differences() {
    let p = problem(1, 1);
    let input = BoxLossInput {
        pred: &p.pred,
        targets: &p.targets,
        labels: &p.labels,
        anchors: &p.anchors,
    };
    for (kind, loss) in [
        ("smooth_l1", BoxLoss::smooth_l1(1.0 / 9.0)),
        ("l1", BoxLoss::smooth_l1(0.0)),
        ("giou", BoxLoss::giou()),
    ] {
        let beta = match loss.kind {
            retina_wgpu::BoxLossKind::SmoothL1 { beta } => f64::from(beta),
            retina_wgpu::BoxLossKind::Giou => 0.0,
        };
        let clamp = f64::from(loss.coder.clamp);
        let loss = loss.with_reduction(BoxReduction::Sum);
        let out = loss.compute(&Backend::Cpu, &input).unwrap();
        let mut want_sum = 0.0;
        for i in 0..p.pred.len() {
            let a = p.anchors[i % p.anchors.len()];
            if p.labels[i] < 0 {
                assert_eq!(
                    out.grad[i], [0.0; 4],
                    "{kind}: anchors that are not positive get no gradient"
                );
                continue;
            }
            let x = p.pred[i].map(f64::from);
            want_sum += reference(kind, x, p.targets[i], a, beta, clamp);
            for c in 0..4 {
                let h = 1e-5;
                let (mut up, mut down) = (x, x);
                up[c] += h;
                down[c] -= h;
                let fd = (reference(kind, up, p.targets[i], a, beta, clamp)
                    - reference(kind, down, p.targets[i], a, beta, clamp))
                    / (2.0 * h);
                let got = f64::from(out.grad[i][c]);
                assert!(
                    (got - fd).abs() <= 2e-3 * fd.abs() + 2e-4,
                    "{kind} anchor {i} component {c}: {got} vs {fd}"
                );
            }
        }
        assert!(
            (out.sum - want_sum).abs() <= 1e-5 * want_sum,
            "{kind}: {} vs {want_sum}",
            out.sum
        );
    }
}

#[test]
fn gpu_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let p = problem(2, 3);
    let input = BoxLossInput {
        pred: &p.pred,
        targets: &p.targets,
        labels: &p.labels,
        anchors: &p.anchors,
    };
    for loss in [
        BoxLoss::default(),
        BoxLoss::smooth_l1(0.0),
        BoxLoss::giou(),
        BoxLoss::giou().with_reduction(BoxReduction::Normalized(3.5)),
    ] {
        let c = loss.compute(&Backend::Cpu, &input).unwrap();
        let g = loss.compute(&Backend::Gpu(ctx.clone()), &input).unwrap();
        assert_eq!(c.normaliser, g.normaliser);
        assert!(
            (c.loss - g.loss).abs() <= 1e-5 * c.loss,
            "{loss:?}: {} vs {}",
            c.loss,
            g.loss
        );
        let flat = |v: &[[f32; 4]]| v.iter().flatten().copied().collect::<Vec<f32>>();
        assert_close(&format!("{loss:?}"), &flat(&g.grad), &flat(&c.grad), 1e-4, 1e-6);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let p = problem(3, 1);
    let input = BoxLossInput {
        pred: &p.pred,
        targets: &p.targets,
        labels: &p.labels,
        anchors: &p.anchors,
    };
    let err = BoxLoss::smooth_l1(-1.0).compute(&Backend::Cpu, &input).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter(_)), "{err}");
    let short = BoxLossInput {
        labels: &p.labels[1..],
        ..input
    };
    assert!(matches!(
        BoxLoss::default().compute(&Backend::Cpu, &short).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
    let odd = BoxLossInput {
        pred: &p.pred[1..],
        targets: &p.targets[1..],
        labels: &p.labels[1..],
        ..input
    };
    assert!(matches!(
        BoxLoss::default().compute(&Backend::Cpu, &odd).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
}

#[test]
fn device_side_positive_count_normalises_like_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let p = problem(4, 2);
    let input = BoxLossInput {
        pred: &p.pred,
        targets: &p.targets,
        labels: &p.labels,
        anchors: &p.anchors,
    };
    let cpu = BoxLoss::giou().compute(&Backend::Cpu, &input).unwrap();
    let (pred, targets, labels, anchors) = (
        ctx.upload(&p.pred).unwrap(),
        ctx.upload(&p.targets).unwrap(),
        ctx.upload(&p.labels).unwrap(),
        ctx.upload(&p.anchors).unwrap(),
    );
    let out = ctx.zeros::<f32>(3).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ctx.record_box_loss(
        &mut encoder,
        &BoxLoss::giou(),
        &retina_wgpu::gpu::BoxLossBuffers {
            pred: &pred,
            targets: &targets,
            labels: &labels,
            anchors: &anchors,
            loss: &out,
            grad: None,
            positives: None,
        },
    )
    .unwrap();
    ctx.queue().submit([encoder.finish()]);
    let got = ctx.download(&out).unwrap();
    assert_eq!(got[2], cpu.normaliser);
    assert!(
        (got[0] - cpu.loss).abs() <= 1e-5 * cpu.loss,
        "{} vs {}",
        got[0],
        cpu.loss
    );
}
