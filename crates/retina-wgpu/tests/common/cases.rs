//! Inputs and comparisons that the native tests and the browser tests (tests/web.rs) share: the
//! random problems, the golden cases parsed from their JSON, and the assertions (with their
//! tolerances) that hold a backend to its reference. Each browser test states the same check as
//! a native one by calling the same function here; only how a result reaches the host differs
//! (a blocking `download` natively, an awaited `download_async` in a page), so nothing here
//! reads a device buffer back or touches a file.

use retina_wgpu::gpu::{AssignBuffers, DetectionBuffers, GpuDetection, GroundTruthBuffers};
use retina_wgpu::model::{RetinaNet, RetinaNetConfig};
use retina_wgpu::{
    AnchorConfig, AssignedTargets, Backend, Detection, DetectionInput, FocalInput, FocalLoss, FocalOutput, GpuBuffer,
    GpuContext, GroundTruth, Matcher, Nms, NmsKind, NmsOutput, PostProcess, Reduction, TargetAssigner, f16, wgpu,
};
use serde_json::Value;

use super::{Rng, assert_close, boxes, flat_f32, flatten, i32s, u32s};

/// The `cases` array of a golden file.
fn golden_cases(file: &Value) -> &[Value] {
    file["cases"].as_array().expect("a `cases` array")
}

// ---- boxes ----

/// Boxes in about [-50, 1200]^2, 10-300 px on a side (sizes within a factor 30 of each other,
/// inside the decode clamp), every `degenerate_every`-th (none when 0) of zero width, zero height
/// or a point.
pub fn random_boxes(rng: &mut Rng, n: usize, degenerate_every: usize) -> Vec<[f32; 4]> {
    (0..n)
        .map(|i| {
            let (x, y) = (rng.range(-50.0, 900.0), rng.range(-50.0, 900.0));
            if degenerate_every > 0 && i % degenerate_every == 0 {
                match i % 3 {
                    0 => [x, y, x, y + 10.0],
                    1 => [x, y, x + 10.0, y],
                    _ => [x, y, x, y],
                }
            } else {
                [x, y, x + rng.range(10.0, 300.0), y + rng.range(10.0, 300.0)]
            }
        })
        .collect()
}

/// Random boxes in a 1000 x 1000 image, 10-100 px, clustered so that many overlap.
pub fn clustered_boxes(rng: &mut Rng, n: usize) -> Vec<[f32; 4]> {
    let centres: Vec<(f32, f32)> = (0..(n / 20).max(1))
        .map(|_| (rng.range(0.0, 1000.0), rng.range(0.0, 1000.0)))
        .collect();
    (0..n)
        .map(|_| {
            let (cx, cy) = centres[rng.below(centres.len() as u64) as usize];
            let (x, y) = (cx + 30.0 * rng.normal(), cy + 30.0 * rng.normal());
            let (w, h) = (rng.range(10.0, 100.0), rng.range(10.0, 100.0));
            [x, y, x + w, y + h]
        })
        .collect()
}

/// `n` regression deltas: normal with standard deviation `xy` for dx, dy and `wh` for dw, dh.
pub fn random_deltas(rng: &mut Rng, n: usize, xy: f32, wh: f32) -> Vec<[f32; 4]> {
    (0..n)
        .map(|_| {
            [
                xy * rng.normal(),
                xy * rng.normal(),
                wh * rng.normal(),
                wh * rng.normal(),
            ]
        })
        .collect()
}

// ---- focal loss ----

/// Random logits and RetinaNet-like labels: mostly background, some positives, some ignored.
pub fn random_problem(rng: &mut Rng, rows: usize, k: usize) -> (Vec<f32>, Vec<i32>) {
    let logits = (0..rows * k).map(|_| 3.0 * rng.normal()).collect();
    let labels = (0..rows)
        .map(|_| match rng.below(10) {
            0 => -2,
            1 | 2 => rng.below(k as u64) as i32,
            _ => -1,
        })
        .collect();
    (logits, labels)
}

/// One-hot rows of `k` for `labels` (background and ignored rows all zero).
pub fn dense_from_labels(labels: &[i32], k: usize) -> Vec<f32> {
    let mut t = vec![0.0; labels.len() * k];
    for (r, &l) in labels.iter().enumerate() {
        if l >= 0 {
            t[r * k + l as usize] = 1.0;
        }
    }
    t
}

/// A random focal-loss problem of `rows x k` in every target form the kernels take.
pub struct FocalProblem {
    pub rows: usize,
    pub k: usize,
    pub logits: Vec<f32>,
    pub half: Vec<f16>,
    pub labels: Vec<i32>,
    pub dense: Vec<f32>,
    pub soft: Vec<f32>,
}

impl FocalProblem {
    /// [`random_problem`], its one-hot targets, uniform soft targets and the logits in f16.
    pub fn new(rng: &mut Rng, rows: usize, k: usize) -> Self {
        let (logits, labels) = random_problem(rng, rows, k);
        let dense = dense_from_labels(&labels, k);
        let soft = (0..rows * k).map(|_| rng.uniform()).collect();
        let half = logits.iter().map(|&x| f16::from_f32(x)).collect();
        Self {
            rows,
            k,
            logits,
            half,
            labels,
            dense,
            soft,
        }
    }

    /// The four inputs compared across backends: labels, one-hot dense, soft dense, and labels
    /// with f16 logits.
    pub fn inputs(&self) -> [(&'static str, FocalInput<'_>); 4] {
        let k = self.k;
        [
            ("labels", FocalInput::labels(&self.logits[..], &self.labels, k)),
            ("dense", FocalInput::dense(&self.logits[..], &self.dense, k)),
            ("soft", FocalInput::dense(&self.logits[..], &self.soft, k)),
            ("f16 labels", FocalInput::labels(&self.half[..], &self.labels, k)),
        ]
    }
}

/// The losses compared across backends on [`FocalProblem`]s: every reduction, alpha or not,
/// gamma 0 (cross entropy), fractional and large, and FL* with per-element losses.
pub fn focal_losses() -> [FocalLoss; 5] {
    [
        FocalLoss::retinanet(),
        FocalLoss::new(None, 0.5).with_reduction(Reduction::Mean),
        FocalLoss::cross_entropy(Some(0.75)).with_reduction(Reduction::Normalized(17.0)),
        FocalLoss::new(Some(0.25), 3.3).with_reduction(Reduction::None),
        FocalLoss::star(4.0, 0.0)
            .with_reduction(Reduction::Sum)
            .with_elementwise(true),
    ]
}

/// Two backends' focal losses agree: the loss to 1e-5 relative (+ 1e-6), the normaliser
/// exactly, the gradient and the per-element losses to 1e-5 relative (+ 1e-7).
#[track_caller]
pub fn assert_focal_agree(what: &str, gpu: &FocalOutput, cpu: &FocalOutput) {
    assert!(
        (gpu.loss - cpu.loss).abs() <= 1e-5 * cpu.loss.abs() + 1e-6,
        "{what}: loss gpu {} cpu {}",
        gpu.loss,
        cpu.loss
    );
    assert_eq!(gpu.normaliser, cpu.normaliser, "{what}: normaliser");
    assert_close(
        &format!("{what} grad"),
        gpu.grad.as_ref().unwrap(),
        cpu.grad.as_ref().unwrap(),
        1e-5,
        1e-7,
    );
    if let (Some(g), Some(c)) = (&gpu.elementwise, &cpu.elementwise) {
        assert_close(&format!("{what} elementwise"), g, c, 1e-5, 1e-7);
    }
}

/// One case of focal_loss.json: torchvision's `sigmoid_focal_loss` on a column of logits.
pub struct FocalCase {
    pub logits: Vec<f32>,
    pub targets: Vec<f32>,
    /// The case's alpha (none when the file's is negative) and gamma, summed.
    pub loss: FocalLoss,
    /// Per-element losses.
    pub want_loss: Vec<f32>,
    /// d(sum of losses)/d(logits).
    pub want_grad: Vec<f32>,
    pub want_sum: f64,
    pub want_mean: f64,
}

impl FocalCase {
    /// The cases of focal_loss.json.
    pub fn all(file: &Value) -> Vec<Self> {
        golden_cases(file)
            .iter()
            .map(|case| {
                let alpha = case["alpha"].as_f64().unwrap();
                Self {
                    logits: flat_f32(&case["logits"]),
                    targets: flat_f32(&case["targets"]),
                    loss: FocalLoss::new(
                        (alpha >= 0.0).then_some(alpha as f32),
                        case["gamma"].as_f64().unwrap() as f32,
                    ),
                    want_loss: flat_f32(&case["loss"]),
                    want_grad: flat_f32(&case["grad"]),
                    want_sum: case["loss_sum"].as_f64().unwrap(),
                    want_mean: case["loss_mean"].as_f64().unwrap(),
                }
            })
            .collect()
    }

    /// The logits as one dense column (`num_classes` 1).
    pub fn input(&self) -> FocalInput<'_> {
        FocalInput::dense(&self.logits[..], &self.targets, 1)
    }

    /// [`Reduction::None`]: per-element losses and gradient to 1e-5 relative (+ 1e-6).
    #[track_caller]
    pub fn check_none(&self, what: &str, elementwise: &[f32], grad: &[f32]) {
        assert_close(&format!("{what} loss"), elementwise, &self.want_loss, 1e-5, 1e-6);
        assert_close(&format!("{what} grad"), grad, &self.want_grad, 1e-5, 1e-6);
    }

    /// [`Reduction::Sum`]: the sum to 1e-5 relative.
    #[track_caller]
    pub fn check_sum(&self, what: &str, loss: f32) {
        let want = self.want_sum;
        assert!(
            (f64::from(loss) - want).abs() <= 1e-5 * want,
            "{what}: sum {loss} vs {want}"
        );
    }

    /// [`Reduction::Mean`]: the mean to 1e-5 relative, the gradient (the sum's over n) to 1e-5
    /// relative (+ 1e-6).
    #[track_caller]
    pub fn check_mean(&self, what: &str, loss: f32, grad: &[f32]) {
        let want = self.want_mean;
        assert!(
            (f64::from(loss) - want).abs() <= 1e-5 * want,
            "{what}: mean {loss} vs {want}"
        );
        let n = self.logits.len() as f32;
        let want_grad: Vec<f32> = self.want_grad.iter().map(|g| g / n).collect();
        assert_close(&format!("{what} mean grad"), grad, &want_grad, 1e-5, 1e-6);
    }
}

// ---- target assignment ----

/// One case of matcher.json: torchvision's `Matcher(0.5, 0.4, allow_low_quality_matches)`.
pub struct MatcherCase {
    pub anchors: Vec<[f32; 4]>,
    pub gt: Vec<[f32; 4]>,
    /// Class 0 for every box.
    pub classes: Vec<i32>,
    pub allow_low_quality_matches: bool,
    /// The matched box per anchor, -1 background, -2 between the thresholds.
    pub matches: Vec<i32>,
}

impl MatcherCase {
    /// The cases of matcher.json.
    pub fn all(file: &Value) -> Vec<Self> {
        golden_cases(file)
            .iter()
            .map(|case| {
                let gt = boxes(&case["gt"]);
                Self {
                    anchors: boxes(&case["anchors"]),
                    classes: vec![0; gt.len()],
                    gt,
                    allow_low_quality_matches: case["allow_low_quality_matches"].as_bool().unwrap(),
                    matches: i32s(&case["matches"]),
                }
            })
            .collect()
    }

    /// The assigner of the case: one class, the default thresholds.
    pub fn assigner(&self) -> TargetAssigner {
        assigner(1, self.allow_low_quality_matches)
    }

    /// The case's boxes as a batch of one image.
    pub fn images(&self) -> [GroundTruth<'_>; 1] {
        [GroundTruth {
            boxes: &self.gt,
            classes: &self.classes,
        }]
    }

    /// Every anchor's match equals torchvision's, and the positive count is theirs.
    #[track_caller]
    pub fn check(&self, what: &str, out: &AssignedTargets) {
        let want = &self.matches;
        let differ: Vec<usize> = (0..want.len()).filter(|&k| out.matches[k] != want[k]).collect();
        assert!(
            differ.is_empty(),
            "{what}: {} labels differ, first at {:?}",
            differ.len(),
            differ.first()
        );
        let positives = want.iter().filter(|&&m| m >= 0).count() as u32;
        assert_eq!(out.positives, vec![positives], "{what}: positives");
    }
}

/// The default matcher (with or without low-quality matches) for `k` classes.
pub fn assigner(k: usize, allow_low_quality_matches: bool) -> TargetAssigner {
    TargetAssigner {
        matcher: Matcher {
            allow_low_quality_matches,
            ..Matcher::default()
        },
        ..TargetAssigner::new(k)
    }
}

/// A batch with the hard cases: no boxes, one box, 200 boxes, zero-area boxes, boxes outside
/// the image, duplicated boxes (ties between boxes) and boxes centred between anchors (ties
/// between anchors). Classes in [0, 7).
pub fn hard_batch(rng: &mut Rng, size: f32) -> Vec<(Vec<[f32; 4]>, Vec<i32>)> {
    let mut images = Vec::new();
    for count in [0usize, 1, 200, 17, 5] {
        let mut b: Vec<[f32; 4]> = (0..count)
            .map(|_| {
                let (x, y) = (rng.range(-20.0, size), rng.range(-20.0, size));
                let (w, h) = (rng.range(4.0, size / 2.0), rng.range(4.0, size / 2.0));
                [x, y, x + w, y + h]
            })
            .collect();
        if count == 17 {
            b[1] = b[0]; // identical boxes: every anchor ties between them
            b[2] = [10.0, 10.0, 10.0, 40.0]; // zero area
            b[3] = [size + 50.0, size + 50.0, size + 90.0, size + 90.0]; // outside the image
            b[4] = [-100.0, -100.0, -60.0, -60.0]; // outside, negative side
            b[5] = [24.0, 24.0, 40.0, 40.0]; // centred on a cell corner: anchors tie
        }
        let classes = (0..b.len()).map(|_| rng.below(7) as i32).collect();
        images.push((b, classes));
    }
    images
}

/// A batch of (boxes, classes) as the assigner's ground truth.
pub fn ground_truths(batch: &[(Vec<[f32; 4]>, Vec<i32>)]) -> Vec<GroundTruth<'_>> {
    batch
        .iter()
        .map(|(b, c)| GroundTruth { boxes: b, classes: c })
        .collect()
}

/// Two backends' targets agree: matches, labels and positive counts exactly, box targets to
/// 1e-5 relative (+ 1e-5).
#[track_caller]
pub fn assert_targets_agree(what: &str, g: &AssignedTargets, c: &AssignedTargets) {
    let differ: Vec<usize> = (0..c.matches.len()).filter(|&k| g.matches[k] != c.matches[k]).collect();
    assert!(
        differ.is_empty(),
        "{what}: {} matches differ, first at {:?}",
        differ.len(),
        differ.first()
    );
    assert_eq!(g.labels, c.labels, "{what}: labels");
    assert_eq!(g.positives, c.positives, "{what}: positives");
    assert_close(
        &format!("{what} box targets"),
        &flatten(&g.box_targets),
        &flatten(&c.box_targets),
        1e-5,
        1e-5,
    );
}

/// A batch's ground truth uploaded and the assigner's outputs allocated, for
/// [`GpuContext::record_assign_targets`].
pub struct DeviceAssignment {
    pub gt_boxes: GpuBuffer<[f32; 4]>,
    pub gt_classes: GpuBuffer<i32>,
    pub gt_offsets: GpuBuffer<u32>,
    pub matches: GpuBuffer<i32>,
    pub labels: GpuBuffer<i32>,
    pub box_targets: GpuBuffer<[f32; 4]>,
    /// Per image, then the batch total.
    pub positives: GpuBuffer<u32>,
}

impl DeviceAssignment {
    /// Packs `images` (boxes, classes, `batch + 1` offsets) onto the device, with zeroed outputs
    /// for `anchors_per_image` anchors each.
    pub fn new(ctx: &GpuContext, images: &[GroundTruth<'_>], anchors_per_image: usize) -> Self {
        let mut all_boxes = Vec::new();
        let mut all_classes = Vec::new();
        let mut offsets = vec![0u32];
        for image in images {
            all_boxes.extend_from_slice(image.boxes);
            all_classes.extend_from_slice(image.classes);
            offsets.push(all_boxes.len() as u32);
        }
        let total = images.len() * anchors_per_image;
        Self {
            gt_boxes: ctx.upload(&all_boxes).unwrap(),
            gt_classes: ctx.upload(&all_classes).unwrap(),
            gt_offsets: ctx.upload(&offsets).unwrap(),
            matches: ctx.zeros::<i32>(total).unwrap(),
            labels: ctx.zeros::<i32>(total).unwrap(),
            box_targets: ctx.zeros::<[f32; 4]>(total).unwrap(),
            positives: ctx.zeros::<u32>(images.len() + 1).unwrap(),
        }
    }

    /// Records the assignment against `anchors` into `encoder`.
    pub fn record(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        assigner: &TargetAssigner,
        anchors: &GpuBuffer<[f32; 4]>,
    ) {
        ctx.record_assign_targets(
            encoder,
            assigner,
            anchors,
            &GroundTruthBuffers {
                boxes: &self.gt_boxes,
                classes: &self.gt_classes,
                offsets: &self.gt_offsets,
            },
            &AssignBuffers {
                matches: &self.matches,
                labels: &self.labels,
                box_targets: &self.box_targets,
                positives: &self.positives,
            },
        )
        .unwrap();
    }
}

// ---- NMS ----

/// One case of nms.json: torchvision's `nms` and `batched_nms` keep lists.
pub struct NmsCase {
    pub boxes: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
    pub classes: Vec<i32>,
    pub iou_threshold: f32,
    pub keep: Vec<u32>,
    pub keep_batched: Vec<u32>,
}

impl NmsCase {
    /// The cases of nms.json.
    pub fn all(file: &Value) -> Vec<Self> {
        golden_cases(file)
            .iter()
            .map(|case| Self {
                boxes: boxes(&case["boxes"]),
                scores: flat_f32(&case["scores"]),
                classes: i32s(&case["classes"]),
                iou_threshold: case["iou_threshold"].as_f64().unwrap() as f32,
                keep: u32s(&case["keep"]),
                keep_batched: u32s(&case["keep_batched"]),
            })
            .collect()
    }

    /// Both keep lists equal torchvision's exactly, order included.
    #[track_caller]
    pub fn check(&self, what: &str, keep: &[u32], keep_batched: &[u32]) {
        assert_eq!(keep, self.keep, "{what}: keep");
        assert_eq!(keep_batched, self.keep_batched, "{what}: keep_batched");
    }
}

/// A random NMS problem of `n` boxes: [`clustered_boxes`], uniform scores and classes in [0, 80).
pub fn nms_problem(rng: &mut Rng, n: usize) -> (Vec<[f32; 4]>, Vec<f32>, Vec<i32>) {
    let b = clustered_boxes(rng, n);
    let s = (0..n).map(|_| rng.uniform()).collect();
    let c = (0..n).map(|_| rng.below(80) as i32).collect();
    (b, s, c)
}

/// The NMS variants compared across backends: greedy, capped, fast, soft-linear, and matrix NMS
/// with the linear and the gaussian decay.
pub fn nms_kinds() -> [Nms; 6] {
    let base = Nms::hard(0.5);
    [
        base,
        base.with_max_output(100),
        base.with_kind(NmsKind::Fast),
        base.with_kind(NmsKind::SoftLinear)
            .with_score_threshold(0.05)
            .with_max_output(300),
        base.with_kind(NmsKind::Matrix { gaussian_sigma: None })
            .with_score_threshold(0.05),
        base.with_kind(NmsKind::Matrix {
            gaussian_sigma: Some(2.0),
        })
        .with_score_threshold(0.05)
        .with_max_output(200),
    ]
}

/// Two backends' NMS agree: the same keep list, scores to 1e-5 relative (+ 1e-7).
#[track_caller]
pub fn assert_same_nms(what: &str, g: &NmsOutput, c: &NmsOutput) {
    let first = g.keep.iter().zip(&c.keep).position(|(a, b)| a != b);
    assert!(
        g.keep == c.keep,
        "{what}: {} vs {} kept, first difference at {first:?}",
        g.keep.len(),
        c.keep.len()
    );
    for (a, b) in g.scores.iter().zip(&c.scores) {
        assert!((a - b).abs() <= 1e-5 * b.abs() + 1e-7, "{what}: score {a} vs {b}");
    }
}

// ---- detection post-processing ----

/// Network outputs of a batch, with the anchors and level offsets of square images.
pub struct Outputs {
    pub logits: Vec<f32>,
    pub deltas: Vec<[f32; 4]>,
    pub anchors: Vec<[f32; 4]>,
    pub offsets: Vec<usize>,
    pub k: usize,
    pub size: u32,
}

impl Outputs {
    /// Outputs of `images` square images of `size` over `config`'s anchors: the logits
    /// `logits(rng, anchors)` makes, then regression deltas (0.3, 0.3, 0.2, 0.2 standard
    /// deviations).
    fn generate(
        rng: &mut Rng,
        images: usize,
        config: AnchorConfig,
        size: u32,
        k: usize,
        logits: impl FnOnce(&mut Rng, usize) -> Vec<f32>,
    ) -> Self {
        let anchors = config.generate(&Backend::Cpu, size, size).unwrap();
        let offsets = config.level_offsets(size, size).unwrap();
        let logits = logits(rng, anchors.len());
        let deltas = random_deltas(rng, images * anchors.len(), 0.3, 0.2);
        Self {
            logits,
            deltas,
            anchors,
            offsets,
            k,
            size,
        }
    }

    /// Mostly confident-background logits with clusters of confident detections, like a
    /// trained net, over RetinaNet's anchors.
    pub fn clustered(rng: &mut Rng, images: usize, size: u32, k: usize) -> Self {
        Self::generate(rng, images, AnchorConfig::retinanet(), size, k, |rng, a| {
            let mut logits: Vec<f32> = (0..images * a * k).map(|_| rng.normal() - 5.0).collect();
            for _ in 0..images * 40 {
                let (image, anchor, class) = (
                    rng.below(images as u64) as usize,
                    rng.below(a as u64) as usize,
                    rng.below(k as u64) as usize,
                );
                for d in 0..9 {
                    let neighbour = (anchor + d * 9).min(a - 1);
                    logits[(image * a + neighbour) * k + class] = rng.range(-1.0, 4.0);
                }
            }
            logits
        })
    }

    /// A few confident anchors (one logit in 50, normal with standard deviation 3) over a
    /// background of low scores (-4 + a standard normal), 4 classes, over the default anchors
    /// of 128 x 128 images.
    pub fn sparse(rng: &mut Rng, images: usize) -> Self {
        let k = 4;
        Self::generate(rng, images, AnchorConfig::default(), 128, k, |rng, a| {
            (0..images * a * k)
                .map(|_| {
                    if rng.below(50) == 0 {
                        3.0 * rng.normal()
                    } else {
                        -4.0 + rng.normal()
                    }
                })
                .collect()
        })
    }

    /// The logits, deltas and anchors uploaded.
    pub fn upload(&self, ctx: &GpuContext) -> DeviceOutputs {
        DeviceOutputs {
            logits: ctx.upload(&self.logits).unwrap(),
            deltas: ctx.upload(&self.deltas).unwrap(),
            anchors: ctx.upload(&self.anchors).unwrap(),
        }
    }

    /// The outputs on the device (from [`Outputs::upload`]) as the post-processing's input.
    pub fn buffers<'a>(&'a self, device: &'a DeviceOutputs) -> DetectionBuffers<'a> {
        DetectionBuffers {
            logits: &device.logits,
            deltas: &device.deltas,
            anchors: &device.anchors,
            level_offsets: &self.offsets,
            num_classes: self.k,
            image_size: (self.size, self.size),
        }
    }

    /// The outputs as the post-processing's input.
    pub fn input(&self) -> DetectionInput<'_> {
        DetectionInput {
            logits: &self.logits,
            deltas: &self.deltas,
            anchors: &self.anchors,
            level_offsets: &self.offsets,
            num_classes: self.k,
            image_size: (self.size, self.size),
        }
    }
}

/// [`Outputs`] on the device.
pub struct DeviceOutputs {
    pub logits: GpuBuffer<f32>,
    pub deltas: GpuBuffer<[f32; 4]>,
    pub anchors: GpuBuffer<[f32; 4]>,
}

/// The NMS kinds of the post-processing compared across backends (the native test adds matrix
/// NMS with the gaussian decay).
pub fn postprocess_kinds() -> [NmsKind; 5] {
    [
        NmsKind::Hard,
        NmsKind::Fast,
        NmsKind::SoftLinear,
        NmsKind::SoftGaussian { sigma: 0.5 },
        NmsKind::Matrix { gaussian_sigma: None },
    ]
}

/// The two post-processings compared across backends for an NMS kind: the defaults (score
/// threshold 0.05), and a small top-k and output cap without clipping.
pub fn postprocess_pair(kind: NmsKind) -> [PostProcess; 2] {
    [
        PostProcess {
            nms: Nms::hard(0.5).with_kind(kind).with_score_threshold(0.05),
            ..Default::default()
        },
        PostProcess {
            topk_per_level: 50,
            max_detections: 10,
            clip_to_image: false,
            nms: Nms::hard(0.4).with_kind(kind).with_score_threshold(0.1),
            ..Default::default()
        },
    ]
}

/// Detections agree image by image and rank by rank: the same count and classes, scores and
/// box coordinates to 1e-4 relative (absolute below 1).
#[track_caller]
pub fn assert_same_detections(what: &str, got: &[Vec<Detection>], want: &[Vec<Detection>]) {
    assert_eq!(got.len(), want.len(), "{what}: images");
    for (image, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.len(),
            w.len(),
            "{what}: image {image} has {} detections, want {}",
            g.len(),
            w.len()
        );
        for (d, (x, y)) in g.iter().zip(w).enumerate() {
            let close = |p: f32, q: f32| (p - q).abs() <= 1e-4 * q.abs().max(1.0);
            assert!(
                x.class == y.class && close(x.score, y.score) && x.bbox.iter().zip(&y.bbox).all(|(&p, &q)| close(p, q)),
                "{what}: image {image} detection {d}: {x:?} vs {y:?}"
            );
        }
    }
}

/// The detections of a `DetectionOutput` read back: `dets` (`batch * max_detections` slots)
/// and `counts` (one per image) as each image's list.
pub fn detections_from(dets: &[GpuDetection], counts: &[u32], max_detections: usize) -> Vec<Vec<Detection>> {
    counts
        .iter()
        .enumerate()
        .map(|(image, &n)| {
            dets[image * max_detections..][..n as usize]
                .iter()
                .map(|d| Detection {
                    bbox: d.bbox,
                    score: d.score,
                    class: d.class as u32,
                })
                .collect()
        })
        .collect()
}

// ---- the detector ----

/// The small RetinaNet of the detector tests (64 x 64 inputs, 3 classes) and its weights from
/// seed 7.
pub fn small_net() -> (RetinaNet, Vec<Vec<f32>>) {
    let net = RetinaNet::new(RetinaNetConfig {
        input_size: 64,
        num_classes: 3,
        ..RetinaNetConfig::default()
    })
    .unwrap();
    let values = net.init(7);
    (net, values)
}
