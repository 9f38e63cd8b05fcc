//! OHEM as a classification loss: the CPU twin against a naive reference written here (f64
//! losses, O(n^2) greedy NMS, a plain sort and the quota rule), the GPU against the CPU, the
//! tie rule, the strict IoU rule and the quota on hand-made cases, the detector's loss through
//! both engines, and bad parameters.

mod common;

use common::{Rng, gpu, gpu_with};
use retina_wgpu::model::{AnchorSet, ClassLoss, DetectionLoss, LossEngine, LossValues, Ohem, RetinaNetConfig};
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine, Shape};
use retina_wgpu::ops::ohem::{OhemInput, OhemOutput};
use retina_wgpu::{Backend, Error, GpuOptions, GroundTruth, LimitCaps};

/// The backends to check: always the CPU, and the GPU when there is one.
fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    if let Some(ctx) = gpu() {
        out.push(Backend::Gpu(ctx));
    }
    out
}

/// A batch of `images` images sharing `anchors`, with logits and labels.
struct Problem {
    anchors: Vec<[f32; 4]>,
    logits: Vec<f32>,
    labels: Vec<i32>,
    k: usize,
}

impl Problem {
    fn input(&self) -> OhemInput<'_> {
        OhemInput::new(&self.logits, &self.labels, self.k, &self.anchors)
    }

    fn images(&self) -> usize {
        self.labels.len() / self.anchors.len()
    }
}

/// Random overlapping boxes with integer corners (so that areas, intersections and unions are
/// exact in f32 and f64), a few of them duplicated; random logits in [-4, 4]; labels 15%
/// positive, 15% ignored, the rest background; and in every image a few rows copied from
/// another anchor of the same image (logits and label), so that exact loss ties occur.
fn random_problem(seed: u64, r: usize, images: usize, k: usize, extent: f32) -> Problem {
    let mut rng = Rng::new(seed);
    let mut anchors: Vec<[f32; 4]> = Vec::with_capacity(r);
    for i in 0..r {
        if i > 0 && rng.below(10) == 0 {
            anchors.push(anchors[rng.below(i as u64) as usize]);
            continue;
        }
        let x = rng.below(extent as u64) as f32;
        let y = rng.below(extent as u64) as f32;
        let w = 4.0 + rng.below(40) as f32;
        let h = 4.0 + rng.below(40) as f32;
        anchors.push([x, y, x + w, y + h]);
    }
    let mut logits: Vec<f32> = (0..images * r * k).map(|_| rng.range(-4.0, 4.0)).collect();
    let mut labels: Vec<i32> = (0..images * r)
        .map(|_| match rng.below(100) {
            0..15 => rng.below(k as u64) as i32,
            15..30 => -2,
            _ => -1,
        })
        .collect();
    for image in 0..images {
        for _ in 0..r / 20 {
            let (from, to) = (
                image * r + rng.below(r as u64) as usize,
                image * r + rng.below(r as u64) as usize,
            );
            labels[to] = labels[from];
            let row: Vec<f32> = logits[from * k..(from + 1) * k].to_vec();
            logits[to * k..(to + 1) * k].copy_from_slice(&row);
        }
    }
    Problem {
        anchors,
        logits,
        labels,
        k,
    }
}

/// What the reference computes.
struct Reference {
    selected: Vec<Vec<u32>>,
    loss: f64,
    grad: Vec<f64>,
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// IoU of integer-cornered boxes in f64, rounded once to f32: the precision of the threshold
/// it is compared with.
fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let [a, b] = [a, b].map(|v| v.map(f64::from));
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { (inter / union) as f32 } else { 0.0 }
}

/// OHEM written as plainly as possible, from the rule in its documentation.
fn reference(ohem: &Ohem, p: &Problem) -> Reference {
    let (k, r) = (p.k, p.anchors.len());
    let alpha = ohem.alpha.map(f64::from);
    let weight = |positive: bool| match alpha {
        None => 1.0,
        Some(a) => {
            if positive {
                a
            } else {
                1.0 - a
            }
        }
    };
    // Per-anchor loss and per-element gradient of the sum, in f64.
    let mut loss = vec![0.0f64; p.labels.len()];
    let mut grad = vec![0.0f64; p.logits.len()];
    for (a, &label) in p.labels.iter().enumerate() {
        if label == -2 {
            continue;
        }
        for c in 0..k {
            let x = f64::from(p.logits[a * k + c]);
            let positive = label == c as i32;
            let w = weight(positive);
            if positive {
                loss[a] += w * softplus(-x);
                grad[a * k + c] = w * (sigmoid(x) - 1.0);
            } else {
                loss[a] += w * softplus(x);
                grad[a * k + c] = w * sigmoid(x);
            }
        }
    }
    let mut selected = Vec::new();
    let mut sum = 0.0;
    for image in 0..p.images() {
        let row = |j: usize| image * r + j;
        let mut order: Vec<usize> = (0..r).filter(|&j| p.labels[row(j)] != -2).collect();
        order.sort_by(|&i, &j| loss[row(j)].partial_cmp(&loss[row(i)]).unwrap().then(i.cmp(&j)));
        let mut survivors: Vec<usize> = Vec::new();
        for &j in &order {
            let suppressed = ohem
                .nms_threshold
                .is_some_and(|t| survivors.iter().any(|&kept| iou(p.anchors[kept], p.anchors[j]) > t));
            if !suppressed {
                survivors.push(j);
            }
        }
        let b = ohem.per_image;
        let chosen: Vec<usize> = match ohem.positive_fraction {
            None => survivors.iter().copied().take(b).collect(),
            Some(f) => {
                let quota = (b as f64 * f64::from(f)).floor() as usize;
                let positives: Vec<usize> = survivors.iter().copied().filter(|&j| p.labels[row(j)] >= 0).collect();
                let negatives: Vec<usize> = survivors.iter().copied().filter(|&j| p.labels[row(j)] == -1).collect();
                let pos = positives.len().min(quota);
                let neg = negatives.len().min(b - pos);
                positives[..pos].iter().chain(&negatives[..neg]).copied().collect()
            }
        };
        let mut chosen_sorted: Vec<u32> = chosen.iter().map(|&j| j as u32).collect();
        chosen_sorted.sort_unstable();
        sum += chosen.iter().map(|&j| loss[row(j)]).sum::<f64>();
        selected.push(chosen_sorted);
    }
    let count = selected.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let mut mask = vec![false; p.labels.len()];
    for (image, chosen) in selected.iter().enumerate() {
        for &j in chosen {
            mask[image * r + j as usize] = true;
        }
    }
    for (a, &m) in mask.iter().enumerate() {
        for g in &mut grad[a * k..(a + 1) * k] {
            *g = if m { *g / count } else { 0.0 };
        }
    }
    Reference {
        selected,
        loss: sum / count,
        grad,
    }
}

fn rel_close(got: f64, want: f64, rtol: f64) -> bool {
    (got - want).abs() <= rtol * want.abs().max(1e-12)
}

/// Every element within `rtol` of `want`, relative to itself (or to a millionth of the
/// largest, for elements near 0).
fn assert_grad(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: gradient lengths");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= rtol * w.abs().max(1e-6 * scale),
            "{what}: gradient[{i}] = {g}, want {w}"
        );
        assert_eq!(
            g != 0.0,
            w != 0.0,
            "{what}: gradient[{i}] = {g}, want {w} (nonzero pattern)"
        );
    }
}

fn assert_matches_reference(what: &str, out: &OhemOutput, want: &Reference) {
    assert_eq!(out.selected, want.selected, "{what}: selected anchors");
    assert_eq!(
        out.count,
        want.selected.iter().map(Vec::len).sum::<usize>(),
        "{what}: count"
    );
    assert!(
        rel_close(f64::from(out.loss), want.loss, 1e-5),
        "{what}: loss {} vs reference {}",
        out.loss,
        want.loss
    );
    assert_grad(what, &out.grad, &want.grad, 1e-5);
}

/// The settings the random tests run: the paper's B, NMS at 0.7 and 0.5, the 1:3 quota, alpha.
fn settings() -> Vec<Ohem> {
    vec![
        Ohem::new(8),
        Ohem::new(16).with_nms(0.7),
        Ohem::new(16).with_nms(0.5).with_positive_fraction(0.25),
        Ohem::new(12).with_positive_fraction(0.5).with_alpha(Some(0.25)),
        Ohem::new(10)
            .with_nms(0.5)
            .with_positive_fraction(0.25)
            .with_alpha(Some(0.25)),
        // More than there are: every survivor, positives first under the quota rule.
        Ohem::new(100_000).with_nms(0.5).with_positive_fraction(1.0),
    ]
}

fn small_problems() -> Vec<Problem> {
    vec![
        random_problem(1, 300, 3, 3, 60.0),
        random_problem(2, 257, 4, 1, 40.0),
        random_problem(3, 200, 2, 5, 100.0),
    ]
}

#[test]
fn cpu_matches_the_naive_reference_on_random_problems() {
    for (pi, p) in small_problems().iter().enumerate() {
        for ohem in settings() {
            let what = format!("problem {pi}, {ohem:?}");
            let want = reference(&ohem, p);
            assert!(want.selected.iter().all(|s| !s.is_empty()), "{what}: empty selection");
            let out = ohem.compute(&Backend::Cpu, &p.input()).unwrap();
            assert_matches_reference(&what, &out, &want);
        }
    }
}

#[test]
fn gpu_matches_cpu_and_the_reference_on_random_problems() {
    let Some(ctx) = gpu() else { return };
    for (pi, p) in small_problems().iter().enumerate() {
        for ohem in settings() {
            let what = format!("problem {pi}, {ohem:?}");
            let cpu = ohem.compute(&Backend::Cpu, &p.input()).unwrap();
            let gpu = ohem.compute(&Backend::Gpu(ctx.clone()), &p.input()).unwrap();
            assert_gpu_matches_cpu(&what, &gpu, &cpu);
            assert_matches_reference(&what, &gpu, &reference(&ohem, p));
        }
    }
}

fn assert_gpu_matches_cpu(what: &str, gpu: &OhemOutput, cpu: &OhemOutput) {
    assert_eq!(gpu.selected, cpu.selected, "{what}: selected anchors");
    assert_eq!(gpu.count, cpu.count, "{what}: count");
    assert!(
        rel_close(f64::from(gpu.loss), f64::from(cpu.loss), 1e-5),
        "{what}: loss {} vs {}",
        gpu.loss,
        cpu.loss
    );
    let cpu64: Vec<f64> = cpu.grad.iter().map(|&g| f64::from(g)).collect();
    assert_grad(what, &gpu.grad, &cpu64, 1e-5);
}

#[test]
fn gpu_matches_cpu_on_3000_anchors_by_4_images() {
    let Some(ctx) = gpu() else { return };
    let p = random_problem(11, 3000, 4, 3, 300.0);
    for ohem in [
        Ohem::new(128).with_nms(0.7),
        Ohem::new(256).with_nms(0.5).with_positive_fraction(0.25),
        Ohem::new(512),
        Ohem::new(512).with_positive_fraction(0.25).with_alpha(Some(0.25)),
    ] {
        let what = format!("3000 x 4, {ohem:?}");
        let cpu = ohem.compute(&Backend::Cpu, &p.input()).unwrap();
        let gpu = ohem.compute(&Backend::Gpu(ctx.clone()), &p.input()).unwrap();
        assert!(cpu.count > 4 * 100, "{what}: only {} selected", cpu.count);
        assert_gpu_matches_cpu(&what, &gpu, &cpu);
        assert_matches_reference(&what, &cpu, &reference(&ohem, &p));
    }
}

#[test]
fn gpu_matches_cpu_when_every_region_is_full() {
    // 2,048 anchors, none ignored: each image fills its 2,048-slot region, so its NMS takes the
    // spatial path with every slot a box, six images side by side (where one image's last rows
    // and the next image's first meet in the rows' sort). Every anchor has a twin, so every
    // image's first kept anchor suppresses one.
    let Some(ctx) = gpu() else { return };
    let mut p = random_problem(12, 2048, 6, 3, 200.0);
    let (first, _) = p.anchors.split_at(1024);
    p.anchors = [first, first].concat();
    for label in &mut p.labels {
        if *label == -2 {
            *label = -1;
        }
    }
    for ohem in [
        Ohem::new(2048).with_nms(0.5),
        Ohem::new(300).with_nms(0.7).with_positive_fraction(0.25),
    ] {
        let what = format!("2048 x 6, full regions, {ohem:?}");
        let cpu = ohem.compute(&Backend::Cpu, &p.input()).unwrap();
        let gpu = ohem.compute(&Backend::Gpu(ctx.clone()), &p.input()).unwrap();
        assert_gpu_matches_cpu(&what, &gpu, &cpu);
        assert_matches_reference(&what, &cpu, &reference(&ohem, &p));
    }
}

#[test]
fn gpu_splits_images_into_groups_under_a_small_binding_limit() {
    // 300 anchors take a 512-slot region: 16 KiB of ranking and NMS buffers per image, so a
    // 20 KiB binding limit ranks one image at a time; without subgroups, too.
    let caps = LimitCaps {
        max_storage_binding: Some(20 * 1024),
        max_workgroups_per_dim: Some(5),
        max_buffer_size: None,
    };
    let Some(small) = gpu_with(GpuOptions {
        caps,
        subgroups: false,
        ..Default::default()
    }) else {
        return;
    };
    let p = random_problem(1, 300, 3, 3, 60.0);
    for ohem in settings() {
        let what = format!("small binding, {ohem:?}");
        let cpu = ohem.compute(&Backend::Cpu, &p.input()).unwrap();
        let gpu = ohem.compute(&Backend::Gpu(small.clone()), &p.input()).unwrap();
        assert_gpu_matches_cpu(&what, &gpu, &cpu);
    }
    // An image too large for one group is an error, not a panic.
    let tiny = gpu_with(GpuOptions {
        caps: LimitCaps {
            max_storage_binding: Some(8 * 1024),
            ..caps
        },
        ..Default::default()
    })
    .unwrap();
    let err = Ohem::new(8)
        .with_nms(0.5)
        .compute(&Backend::Gpu(tiny), &p.input())
        .unwrap_err();
    assert!(err.to_string().contains("binding limit"), "{err}");
}

/// One image of `anchors` with one logit per anchor (K = 1) and the given labels.
fn single_class(anchors: &[[f32; 4]], logits: &[f32], labels: &[i32]) -> Problem {
    Problem {
        anchors: anchors.to_vec(),
        logits: logits.to_vec(),
        labels: labels.to_vec(),
        k: 1,
    }
}

/// Far-apart unit-size boxes: no two overlap.
fn apart(n: usize) -> Vec<[f32; 4]> {
    (0..n)
        .map(|i| [100.0 * i as f32, 0.0, 100.0 * i as f32 + 10.0, 10.0])
        .collect()
}

#[test]
fn equal_losses_keep_the_lower_anchor_index_first() {
    // Background anchors: the loss grows with the logit. Anchors 1, 2, 4 tie for the top.
    let p = single_class(&apart(6), &[0.0, 2.0, 2.0, 1.0, 2.0, -1.0], &[-1; 6]);
    for backend in backends() {
        let what = backend.kind();
        let two = Ohem::new(2).compute(&backend, &p.input()).unwrap();
        assert_eq!(two.selected, vec![vec![1, 2]], "{what}");
        let four = Ohem::new(4).compute(&backend, &p.input()).unwrap();
        assert_eq!(four.selected, vec![vec![1, 2, 3, 4]], "{what}");
        // The same ties in a second image of the batch, and a NaN logit that ranks first.
        let mut logits = p.logits.clone();
        logits.extend([0.0, 2.0, 2.0, 1.0, 2.0, f32::NAN]);
        let batch = single_class(&p.anchors, &logits, &[-1; 12]);
        let out = Ohem::new(2).compute(&backend, &batch.input()).unwrap();
        assert_eq!(out.selected, vec![vec![1, 2], vec![1, 5]], "{what}");
        assert!(out.loss.is_nan(), "{what}: a NaN logit reaches the loss");
    }
}

#[test]
fn nms_suppresses_only_above_the_threshold() {
    // Anchor 1 overlaps anchor 0 with IoU exactly 0.5 (intersection 200, union 400); anchor 2
    // overlaps anchor 0 with IoU 0.714 (250 / 350) and anchor 1 with 1/3; anchor 3 is far away.
    let anchors = [
        [0.0, 0.0, 30.0, 10.0],
        [10.0, 0.0, 40.0, 10.0],
        [-5.0, 0.0, 25.0, 10.0],
        [500.0, 0.0, 530.0, 10.0],
    ];
    assert_eq!(iou(anchors[0], anchors[1]), 0.5);
    let p = single_class(&anchors, &[3.0, 2.0, 1.0, 0.0], &[-1; 4]);
    // Greedy, not "any higher box": 1 is suppressed by 0 (IoU 0.67), so 2 (IoU 0.54 with 1,
    // 0.33 with 0) survives.
    let chain = [[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [5.0, 0.0, 15.0, 10.0]];
    let q = single_class(&chain, &[3.0, 2.0, 1.0], &[-1; 3]);
    for backend in backends() {
        let what = backend.kind();
        let run = |ohem: Ohem, p: &Problem| ohem.compute(&backend, &p.input()).unwrap().selected;
        assert_eq!(
            run(Ohem::new(4).with_nms(0.5), &p),
            vec![vec![0, 1, 3]],
            "{what}: IoU 0.5 is not > 0.5"
        );
        assert_eq!(
            run(Ohem::new(4).with_nms(0.49), &p),
            vec![vec![0, 3]],
            "{what}: IoU 0.5 > 0.49"
        );
        assert_eq!(
            run(Ohem::new(4).with_nms(0.72), &p),
            vec![vec![0, 1, 2, 3]],
            "{what}: 0.714 < 0.72"
        );
        // B counts survivors: B = 2 after NMS at 0.5 takes 0 and 1, at 0.49 takes 0 and 3.
        assert_eq!(run(Ohem::new(2).with_nms(0.5), &p), vec![vec![0, 1]], "{what}");
        assert_eq!(run(Ohem::new(2).with_nms(0.49), &p), vec![vec![0, 3]], "{what}");
        assert_eq!(run(Ohem::new(3).with_nms(0.5), &q), vec![vec![0, 2]], "{what}: greedy");
    }
}

#[test]
fn the_positive_quota_follows_the_sampler_rule() {
    // Eight separate anchors; the loss order is 0, 1, ..., 7 (positives have negative logits,
    // background positive ones, both with decreasing magnitude).
    let logits = [8.0, -7.0, 6.0, -5.0, 4.0, 3.0, -2.0, 1.0];
    let labels = [-1, 0, -1, 0, -1, -1, 0, -1];
    let p = single_class(&apart(8), &logits, &labels);
    for backend in backends() {
        let what = backend.kind();
        let run = |ohem: Ohem| ohem.compute(&backend, &p.input()).unwrap().selected;
        // No quota: the top 4 whatever their labels.
        assert_eq!(run(Ohem::new(4)), vec![vec![0, 1, 2, 3]], "{what}");
        // 1:3 of B = 4: floor(1) positive (the best, 1), 3 negatives (0, 2, 4).
        assert_eq!(
            run(Ohem::new(4).with_positive_fraction(0.25)),
            vec![vec![0, 1, 2, 4]],
            "{what}"
        );
        // B = 5 at 0.25: floor(1.25) = 1 positive, 4 negatives.
        assert_eq!(
            run(Ohem::new(5).with_positive_fraction(0.25)),
            vec![vec![0, 1, 2, 4, 5]],
            "{what}"
        );
        // Quota 3 of B = 4 (0.75) but 3 positives exist: 1, 3, 6 and one negative.
        assert_eq!(
            run(Ohem::new(4).with_positive_fraction(0.75)),
            vec![vec![0, 1, 3, 6]],
            "{what}"
        );
        // Quota 6 of B = 6 (1.0), 3 positives available: the other 3 slots go to negatives.
        assert_eq!(
            run(Ohem::new(6).with_positive_fraction(1.0)),
            vec![vec![0, 1, 2, 3, 4, 6]],
            "{what}"
        );
        // Negatives run short: B = 8 at 0.25 with 2 positive slots, 6 negative slots, 5 negatives.
        assert_eq!(
            run(Ohem::new(8).with_positive_fraction(0.25)),
            vec![vec![0, 1, 2, 3, 4, 5, 7]],
            "{what}"
        );
        // Ignored anchors are never selected, whatever their logits.
        let mut ignored = labels;
        ignored[0] = -2;
        let q = single_class(&apart(8), &logits, &ignored);
        let out = Ohem::new(8).compute(&backend, &q.input()).unwrap();
        assert_eq!(out.selected, vec![vec![1, 2, 3, 4, 5, 6, 7]], "{what}");
        assert_eq!(out.grad[0], 0.0, "{what}");
    }
}

#[test]
fn loss_and_gradient_are_normalised_by_the_batch_count() {
    // Two images of 3 anchors; B = 2 per image: 4 selected in all.
    let anchors = apart(3);
    let logits = [1.0f32, -1.0, 0.5, 2.0, 0.0, -3.0];
    let labels = [-1, 0, -2, -1, -1, -1];
    let p = Problem {
        anchors,
        logits: logits.to_vec(),
        labels: labels.to_vec(),
        k: 1,
    };
    let sp = |x: f64| softplus(x);
    // Image 0: anchor 0 (bg, x 1) and anchor 1 (positive, x -1); anchor 2 ignored.
    // Image 1: anchors 0 (x 2) and 1 (x 0); anchor 2 (x -3) has the least loss.
    let want = (sp(1.0) + sp(1.0) + sp(2.0) + sp(0.0)) / 4.0;
    for backend in backends() {
        let out = Ohem::new(2).compute(&backend, &p.input()).unwrap();
        assert_eq!(out.count, 4);
        assert!(rel_close(f64::from(out.loss), want, 1e-6), "{} vs {want}", out.loss);
        let g = |x: f64, t: f64| ((sigmoid(x) - t) / 4.0) as f32;
        let expected = [g(1.0, 0.0), g(-1.0, 1.0), 0.0, g(2.0, 0.0), g(0.0, 0.0), 0.0];
        for (i, (&a, &b)) in out.grad.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                "{}: grad[{i}] {a} vs {b}",
                backend.kind()
            );
        }
    }
}

/// Two images' ground truth for the model-level test.
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
fn detection_loss_with_ohem_agrees_on_both_engines_and_the_host_path() {
    let anchors = AnchorSet::new(RetinaNetConfig::default().anchors(), 128, 128).unwrap();
    let (boxes, classes) = ground_truth();
    let images: Vec<GroundTruth<'_>> = boxes
        .iter()
        .zip(&classes)
        .map(|(b, c)| GroundTruth { boxes: b, classes: c })
        .collect();
    let (r, k, b) = (anchors.boxes.len(), 4, images.len());
    let mut rng = Rng::new(21);
    let class_rows: Vec<f32> = (0..b * r * k).map(|_| rng.range(-4.0, 4.0)).collect();
    let box_rows: Vec<f32> = (0..b * r * 4).map(|_| rng.normal()).collect();
    let ohem = Ohem::new(128).with_nms(0.7).with_positive_fraction(0.25);
    let loss = DetectionLoss {
        class_loss: ClassLoss::Ohem(ohem),
        ..DetectionLoss::retinanet(k)
    };
    let host = loss
        .compute(
            &Backend::Cpu,
            &anchors.boxes,
            &class_rows,
            bytemuck_rows(&box_rows),
            &images,
        )
        .unwrap();
    // The class part is OHEM on the matcher's labels; the box part is the focal setup's.
    let targets = loss.assigner.assign(&Backend::Cpu, &anchors.boxes, &images).unwrap();
    let direct = ohem
        .compute(
            &Backend::Cpu,
            &OhemInput::new(&class_rows, &targets.labels, k, &anchors.boxes),
        )
        .unwrap();
    assert_eq!(host.values.class, direct.loss);
    assert_eq!(host.class_grad, direct.grad);
    let focal = DetectionLoss::retinanet(k)
        .compute(
            &Backend::Cpu,
            &anchors.boxes,
            &class_rows,
            bytemuck_rows(&box_rows),
            &images,
        )
        .unwrap();
    assert_eq!(host.values.boxes, focal.values.boxes);
    assert_eq!(host.values.normaliser, focal.values.normaliser);
    assert_ne!(host.values.class, focal.values.class);
    assert!(direct.count > 2 && direct.count <= 2 * 128, "{}", direct.count);

    /// Loss values and both gradients through an engine.
    fn through<E: LossEngine>(
        e: &mut E,
        loss: &DetectionLoss,
        anchors: &AnchorSet,
        shapes: (Shape, Shape),
        rows: (&[f32], &[f32]),
        images: &[GroundTruth<'_>],
    ) -> (LossValues, Vec<f32>, Vec<f32>) {
        let c = e.tensor(shapes.0, rows.0).unwrap();
        let b = e.tensor(shapes.1, rows.1).unwrap();
        let out = e.detection_loss(loss, anchors, &c, &b, images).unwrap();
        let values = LossValues::from_array(&e.read(&out.values).unwrap()).unwrap();
        (values, e.read(&out.class_grad).unwrap(), e.read(&out.box_grad).unwrap())
    }
    let shapes = (Shape::new(b, 1, r, k), Shape::new(b, 1, r, 4));
    let rows = (&class_rows[..], &box_rows[..]);
    let cpu = through(&mut CpuEngine::new(), &loss, &anchors, shapes, rows, &images);
    assert_eq!(cpu.0, host.values);
    assert_eq!(cpu.1, host.class_grad);
    let Some(ctx) = gpu() else { return };
    let gpu = through(
        &mut GpuEngine::new(&ctx).unwrap(),
        &loss,
        &anchors,
        shapes,
        rows,
        &images,
    );
    let host_gpu = loss
        .compute(
            &Backend::Gpu(ctx.clone()),
            &anchors.boxes,
            &class_rows,
            bytemuck_rows(&box_rows),
            &images,
        )
        .unwrap();
    for (what, values, grad) in [
        ("GPU engine", &gpu.0, &gpu.1),
        ("GPU host path", &host_gpu.values, &host_gpu.class_grad),
    ] {
        assert!(
            rel_close(f64::from(values.class), f64::from(cpu.0.class), 1e-5),
            "{what}: {values:?} vs {:?}",
            cpu.0
        );
        assert!(
            rel_close(f64::from(values.boxes), f64::from(cpu.0.boxes), 1e-4),
            "{what}: {values:?} vs {:?}",
            cpu.0
        );
        assert_eq!(values.normaliser, cpu.0.normaliser, "{what}");
        let want: Vec<f64> = cpu.1.iter().map(|&g| f64::from(g)).collect();
        assert_grad(what, grad, &want, 1e-5);
    }
}

/// Box rows as `[f32; 4]`.
fn bytemuck_rows(rows: &[f32]) -> &[[f32; 4]] {
    bytemuck::cast_slice(rows)
}

#[test]
fn bad_parameters_are_clear_errors() {
    let p = single_class(&apart(4), &[0.0; 4], &[-1; 4]);
    let cases = [
        (Ohem::new(0), "per_image"),
        (Ohem::new(8).with_nms(f32::NAN), "NMS threshold"),
        (Ohem::new(8).with_nms(0.0), "NMS threshold"),
        (Ohem::new(8).with_nms(1.5), "NMS threshold"),
        (Ohem::new(8).with_positive_fraction(0.0), "positive fraction"),
        (Ohem::new(8).with_positive_fraction(1.01), "positive fraction"),
        (Ohem::new(8).with_positive_fraction(f32::NAN), "positive fraction"),
        (Ohem::new(8).with_alpha(Some(-0.1)), "alpha"),
        (Ohem::new(8).with_alpha(Some(f32::NAN)), "alpha"),
    ];
    for backend in backends() {
        for (ohem, needle) in cases {
            let err = ohem.compute(&backend, &p.input()).unwrap_err();
            assert!(matches!(err, Error::InvalidParameter(_)), "{ohem:?}: {err:?}");
            assert!(err.to_string().contains(needle), "{ohem:?}: {err}");
        }
        // Valid at the edges.
        for ohem in [
            Ohem::new(1).with_nms(1.0).with_positive_fraction(1.0),
            Ohem::new(1).with_alpha(Some(0.0)),
        ] {
            ohem.validate().unwrap();
            ohem.compute(&backend, &p.input()).unwrap();
        }
        // Bad input: labels that are not whole images, a label out of range, a bad anchor.
        let ohem = Ohem::new(2);
        assert!(
            ohem.compute(&backend, &OhemInput::new(&[0.0; 3], &[-1; 3], 1, &apart(4)))
                .is_err()
        );
        assert!(
            ohem.compute(&backend, &OhemInput::new(&[0.0; 4], &[-1, 1, -1, -1], 1, &apart(4)))
                .is_err()
        );
        let mut bad = apart(4);
        bad[2] = [5.0, 5.0, 1.0, 9.0];
        assert!(
            ohem.compute(&backend, &OhemInput::new(&[0.0; 4], &[-1; 4], 1, &bad))
                .is_err()
        );
        // No anchors at all: an empty loss.
        let empty = ohem.compute(&backend, &OhemInput::new(&[], &[], 1, &[])).unwrap();
        assert_eq!((empty.loss, empty.count), (0.0, 0));
    }
    // Through the detector's loss, the same errors.
    let anchors = AnchorSet::new(RetinaNetConfig::default().anchors(), 128, 128).unwrap();
    let loss = DetectionLoss {
        class_loss: ClassLoss::Ohem(Ohem::new(0)),
        ..DetectionLoss::retinanet(2)
    };
    let r = anchors.boxes.len();
    let mut e = CpuEngine::new();
    let c = e.tensor(Shape::new(1, 1, r, 2), &vec![0.0; r * 2]).unwrap();
    let b = e.zeros(Shape::new(1, 1, r, 4)).unwrap();
    let gt = [GroundTruth {
        boxes: &[[10.0, 10.0, 50.0, 50.0]],
        classes: &[1],
    }];
    assert!(e.detection_loss(&loss, &anchors, &c, &b, &gt).is_err());
    if let Some(ctx) = gpu() {
        let mut g = GpuEngine::new(&ctx).unwrap();
        let c = g.tensor(Shape::new(1, 1, r, 2), &vec![0.0; r * 2]).unwrap();
        let b = g.zeros(Shape::new(1, 1, r, 4)).unwrap();
        assert!(g.detection_loss(&loss, &anchors, &c, &b, &gt).is_err());
    }
}
