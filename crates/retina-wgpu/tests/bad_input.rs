//! Bad input never panics, aborts or answers wrong (issue 11): a table of empty, zero-sized,
//! mismatched, NaN/Inf, huge, negative and out-of-range inputs over the public operations and
//! every `nn::Engine` method, each run on both backends under `catch_unwind`. Every case must
//! not panic, must give an `Err` with a message or an `Ok`, as its row says, and where both
//! backends answer `Ok` the answers must have the same length and agree. Then the GPU-only
//! buffer APIs (huge sizes, empty inputs, another context's buffers and tensors, labels out of
//! range on the device) and numbers past the documented ranges. The CLI's bad options are in
//! crates/retina-cli/tests/cli.rs, the file readers' fuzzing in tests/fuzz_files.rs.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::gpu;
use retina_wgpu::gpu::{DetectionBuffers, FocalBuffers, LogitsBuffer, TargetsBuffer, TopkSegment};
use retina_wgpu::nn::{Conv2d, CpuEngine, Engine, GpuEngine, GroupNorm, Sgd, Shape};
use retina_wgpu::{
    AnchorConfig, Backend, BoxCoder, BoxLoss, BoxLossInput, BoxLossOutput, BoxReduction, DetectionInput, Error,
    FocalInput, FocalLoss, GpuContext, GroundTruth, Matcher, Nms, NmsKind, PostProcess, Reduction, Result,
    TargetAssigner, box_iou, sort_desc, top_k,
};

/// The values every float input is tried with.
const SPECIALS: [f32; 12] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MAX,
    f32::MIN,
    1e30,
    -1e30,
    0.0,
    -0.0,
    1e-45,
    f32::MIN_POSITIVE,
    -7.5,
];

/// What a case must give.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// An error (with a message) on every backend.
    Err,
    /// An answer on every backend, the same on both.
    Ok,
    /// An answer of exactly this many numbers on every backend.
    Len(usize),
    /// Input outside an operation's documented valid range: no panic, and an error or an answer
    /// of this many numbers; the backends need not agree (a sum past `f32::MAX` is infinite on
    /// the GPU and finite in the CPU's f64, say).
    OutOfRange(usize),
}

#[derive(Debug)]
enum Outcome {
    Ok(Vec<f64>),
    Err(String),
    Panic(String),
}

/// Runs `f` under `catch_unwind`.
fn outcome(f: impl FnOnce() -> Result<Vec<f64>>) -> Outcome {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Outcome::Ok(v),
        Ok(Err(e)) => Outcome::Err(e.to_string()),
        Err(payload) => Outcome::Panic(
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into()),
        ),
    }
}

struct Row {
    name: String,
    want: Want,
    outcome: Outcome,
}

/// Cases run on one backend, by name.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn case(&mut self, name: &str, want: Want, f: impl FnOnce() -> Result<Vec<f64>>) {
        self.rows.push(Row {
            name: name.to_string(),
            want,
            outcome: outcome(f),
        });
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn boxes64(v: &[[f32; 4]]) -> Vec<f64> {
    v.iter().flatten().map(|&x| f64::from(x)).collect()
}

fn ints<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.into()).collect()
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-4 + 2e-3 * a.abs().max(b.abs())
}

/// Checks every row of `cpu` (and of `gpu`, matched by name); returns one line per failure.
fn judge(cpu: &Table, gpu: Option<&Table>) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, row) in cpu.rows.iter().enumerate() {
        let other = gpu.map(|g| &g.rows[i]);
        if let Some(o) = other {
            assert_eq!(o.name, row.name, "the two tables list the same cases in the same order");
        }
        let mut check = |backend: &str, outcome: &Outcome| match (outcome, row.want) {
            (Outcome::Panic(m), _) => failures.push(format!("{}: {backend} panicked: {m}", row.name)),
            (Outcome::Err(m), _) if m.trim().is_empty() => {
                failures.push(format!("{}: {backend} gave an error with no message", row.name))
            }
            (Outcome::Err(_), Want::Err | Want::OutOfRange(_)) => {}
            (Outcome::Err(m), _) => failures.push(format!("{}: {backend} refused valid input: {m}", row.name)),
            (Outcome::Ok(v), Want::Err) => failures.push(format!(
                "{}: {backend} accepted bad input, answering {} numbers",
                row.name,
                v.len()
            )),
            (Outcome::Ok(v), Want::Len(n) | Want::OutOfRange(n)) if v.len() != n => failures.push(format!(
                "{}: {backend} answered {} numbers, {n} expected",
                row.name,
                v.len()
            )),
            (Outcome::Ok(_), _) => {}
        };
        check("cpu", &row.outcome);
        if let Some(o) = other {
            check("gpu", &o.outcome);
            if let (Outcome::Ok(a), Outcome::Ok(b)) = (&row.outcome, &o.outcome)
                && !matches!(row.want, Want::OutOfRange(_))
            {
                if a.len() != b.len() {
                    failures.push(format!(
                        "{}: cpu answered {} numbers, gpu {}",
                        row.name,
                        a.len(),
                        b.len()
                    ));
                } else if let Some(j) = (0..a.len()).find(|&j| !close(a[j], b[j])) {
                    failures.push(format!(
                        "{}: backends disagree at {j}: cpu {} gpu {}",
                        row.name, a[j], b[j]
                    ));
                }
            }
        }
    }
    failures
}

fn report(what: &str, failures: &[String], cases: usize) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{what}: {cases} cases, no panic, every answer as expected");
}

// --- nn::Engine --------------------------------------------------------------------------

fn conv(in_channels: usize, out_channels: usize, kernel: (usize, usize), stride: usize, padding: usize) -> Conv2d {
    Conv2d {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = common::Rng::new(seed);
    (0..n).map(|_| rng.range(-1.0, 1.0)).collect()
}

/// A convolution's forward, then its backward, flattened: y, dx, dw, db.
fn conv_case<E: Engine>(e: &mut E, c: &Conv2d, s: Shape) -> Result<Vec<f64>> {
    let out = c.output_shape(s)?;
    let x = e.tensor(s, &values(s.len(), 1))?;
    let w = e.tensor(c.weight_shape(), &values(c.weight_shape().len(), 2))?;
    let b = e.tensor(c.bias_shape(), &values(c.out_channels, 3))?;
    let y = e.conv2d(c, &x, &w, Some(&b))?;
    let dy = e.tensor(out, &values(out.len(), 4))?;
    let g = e.conv2d_backward(c, &x, &w, &dy, true)?;
    let mut v = f64s(&e.read(&y)?);
    v.extend(f64s(&e.read(g.input.as_ref().expect("asked for"))?));
    v.extend(f64s(&e.read(&g.weight)?));
    v.extend(f64s(&e.read(&g.bias)?));
    Ok(v)
}

/// One SGD step of `params` (each `[1, 1, 1, len]`) with gradients `grads`; the new parameters.
fn sgd_case<E: Engine>(e: &mut E, sgd: &Sgd, lr: f32, params: &[Vec<f32>], grads: &[Vec<f32>]) -> Result<Vec<f64>> {
    let shape = |v: &Vec<f32>| Shape::new(1, 1, 1, v.len());
    let mut p: Vec<E::Tensor> = params.iter().map(|v| e.tensor(shape(v), v)).collect::<Result<_>>()?;
    let g: Vec<E::Tensor> = grads.iter().map(|v| e.tensor(shape(v), v)).collect::<Result<_>>()?;
    let mut vel: Vec<E::Tensor> = params.iter().map(|v| e.zeros(shape(v))).collect::<Result<_>>()?;
    e.sgd_step(sgd, lr, &mut p, &g, &mut vel, &[])?;
    let mut out = Vec::new();
    for t in &p {
        out.extend(f64s(&e.read(t)?));
    }
    Ok(out)
}

/// Every `nn::Engine` method with bad and edge-case input, each on a fresh engine from `make`.
fn engine_sweep<E: Engine>(make: &dyn Fn() -> E) -> Table {
    let mut t = Table::default();
    let mut case = |name: &str, want: Want, f: &dyn Fn(&mut E) -> Result<Vec<f64>>| {
        let mut e = make();
        t.case(name, want, || f(&mut e));
    };
    let huge = usize::MAX / 2;
    let s = Shape::new(2, 3, 5, 4);

    // Tensors.
    case("tensor: too few values", Want::Err, &|e| {
        e.tensor(s, &[1.0; 3]).map(|_| vec![])
    });
    case("tensor: empty batch", Want::Len(0), &|e| {
        let t = e.tensor(Shape::new(0, 3, 4, 4), &[])?;
        Ok(f64s(&e.read(&t)?))
    });
    case("tensor: NaN and Inf values round-trip", Want::Len(4), &|e| {
        let t = e.tensor(Shape::new(1, 1, 1, 4), &[f32::NAN, f32::INFINITY, -f32::INFINITY, -0.0])?;
        Ok(f64s(&e.read(&t)?))
    });
    case("zeros: element count overflows usize", Want::Err, &|e| {
        e.zeros(Shape::new(huge, huge, 4, 4)).map(|_| vec![])
    });
    case("zeros: 2^40 elements", Want::Err, &|e| {
        e.zeros(Shape::new(1, 1, 1 << 20, 1 << 20)).map(|_| vec![])
    });
    case("tensor: shape overflows with no data", Want::Err, &|e| {
        e.tensor(Shape::new(huge, 3, 1, 1), &[]).map(|_| vec![])
    });

    // Convolution.
    let c3 = Conv2d::new(3, 4, 3, 1);
    case("conv2d: batch of 0", Want::Len(4 * 3 * 9 + 4), &|e| {
        conv_case(e, &c3, Shape::new(0, 3, 5, 4))
    });
    case("conv2d: 0 x 0 input", Want::Err, &|e| {
        conv_case(e, &c3, Shape::new(1, 3, 0, 0))
    });
    case("conv2d: 0-wide input", Want::Err, &|e| {
        conv_case(e, &c3, Shape::new(1, 3, 4, 0))
    });
    case("conv2d: 5x5 pad 2 on 1x1", Want::Ok, &|e| {
        conv_case(e, &conv(2, 3, (5, 5), 1, 2), Shape::new(2, 2, 1, 1))
    });
    case("conv2d: 7x7 pad 3 on 2x2", Want::Ok, &|e| {
        conv_case(e, &conv(2, 3, (7, 7), 1, 3), Shape::new(1, 2, 2, 2))
    });
    case("conv2d: 1x9 pad 4 on 1x1", Want::Ok, &|e| {
        conv_case(e, &conv(1, 2, (1, 9), 1, 4), Shape::new(2, 1, 1, 1))
    });
    case("conv2d: 7x7 stride 2 pad 3 on 3x1", Want::Ok, &|e| {
        conv_case(e, &conv(2, 2, (7, 7), 2, 3), Shape::new(1, 2, 3, 1))
    });
    case("conv2d: padding near usize::MAX", Want::Err, &|e| {
        conv_case(e, &conv(3, 4, (3, 3), 1, huge), Shape::new(1, 3, 4, 4))
    });
    case("conv2d: stride 0", Want::Err, &|e| {
        conv_case(e, &conv(3, 4, (3, 3), 0, 1), s)
    });
    case("conv2d: kernel 0", Want::Err, &|e| {
        conv_case(e, &conv(3, 4, (0, 3), 1, 1), s)
    });
    case("conv2d: kernel wider than the padded input", Want::Err, &|e| {
        conv_case(e, &conv(3, 4, (9, 9), 1, 1), s)
    });
    case("conv2d: channels mismatch", Want::Err, &|e| {
        conv_case(e, &Conv2d::new(4, 4, 3, 1), s)
    });
    case("conv2d: huge output channels", Want::Err, &|e| {
        conv_case(e, &conv(3, huge, (3, 3), 1, 1), s)
    });
    case("conv2d: wrong weight shape", Want::Err, &|e| {
        let x = e.zeros(s)?;
        let w = e.zeros(Shape::new(4, 3, 1, 1))?;
        e.conv2d(&c3, &x, &w, None).map(|_| vec![])
    });
    case("conv2d: wrong bias shape", Want::Err, &|e| {
        let x = e.zeros(s)?;
        let w = e.zeros(c3.weight_shape())?;
        let b = e.zeros(Shape::new(1, 5, 1, 1))?;
        e.conv2d(&c3, &x, &w, Some(&b)).map(|_| vec![])
    });
    case("conv2d backward: wrong output gradient", Want::Err, &|e| {
        let x = e.zeros(s)?;
        let w = e.zeros(c3.weight_shape())?;
        let dy = e.zeros(Shape::new(2, 4, 5, 5))?;
        e.conv2d_backward(&c3, &x, &w, &dy, true).map(|_| vec![])
    });
    case(
        "conv2d backward: batch of 0 without input gradient",
        Want::Len(4 * 3 * 9 + 4),
        &|e| {
            let x = e.zeros(Shape::new(0, 3, 5, 4))?;
            let w = e.tensor(c3.weight_shape(), &values(c3.weight_shape().len(), 2))?;
            let dy = e.zeros(Shape::new(0, 4, 5, 4))?;
            let g = e.conv2d_backward(&c3, &x, &w, &dy, false)?;
            let mut v = f64s(&e.read(&g.weight)?);
            v.extend(f64s(&e.read(&g.bias)?));
            Ok(v)
        },
    );
    case("conv2d: NaN and Inf input", Want::Ok, &|e| {
        let x = e.tensor(Shape::new(1, 1, 2, 2), &[f32::NAN, 1.0, f32::INFINITY, -1.0])?;
        let c = Conv2d::new(1, 1, 1, 1);
        let w = e.tensor(c.weight_shape(), &[2.0])?;
        let y = e.conv2d(&c, &x, &w, None)?;
        Ok(f64s(&e.read(&y)?))
    });

    // GroupNorm.
    let gn = GroupNorm::new(4, 2);
    let gs = Shape::new(2, 4, 3, 3);
    let gn_case = |e: &mut E, gn: &GroupNorm, s: Shape, gamma: Shape| -> Result<Vec<f64>> {
        let x = e.tensor(s, &values(s.len(), 5))?;
        let g = e.tensor(gamma, &values(gamma.len(), 6))?;
        let b = e.tensor(gamma, &values(gamma.len(), 7))?;
        let out = e.group_norm(gn, &x, &g, &b)?;
        let dy = e.tensor(s, &values(s.len(), 8))?;
        let grads = e.group_norm_backward(gn, &x, &g, &out.stats, &dy)?;
        let mut v = f64s(&e.read(&out.y)?);
        for t in [&grads.input, &grads.gamma, &grads.beta] {
            v.extend(f64s(&e.read(t)?));
        }
        Ok(v)
    };
    case("group norm: empty batch", Want::Len(8), &|e| {
        gn_case(e, &gn, Shape::new(0, 4, 3, 3), gn.param_shape())
    });
    case("group norm: 0 groups", Want::Err, &|e| {
        gn_case(e, &GroupNorm::new(4, 0), gs, gn.param_shape())
    });
    case("group norm: groups do not divide channels", Want::Err, &|e| {
        gn_case(e, &GroupNorm::new(4, 3), gs, gn.param_shape())
    });
    case("group norm: NaN eps", Want::Err, &|e| {
        gn_case(e, &GroupNorm { eps: f32::NAN, ..gn }, gs, gn.param_shape())
    });
    case("group norm: 0 x 0 planes", Want::Err, &|e| {
        gn_case(e, &gn, Shape::new(2, 4, 0, 0), gn.param_shape())
    });
    case("group norm: channels mismatch", Want::Err, &|e| {
        gn_case(e, &gn, Shape::new(2, 6, 3, 3), gn.param_shape())
    });
    case("group norm: wrong gamma", Want::Err, &|e| {
        gn_case(e, &gn, gs, Shape::new(1, 5, 1, 1))
    });
    case("group norm: one pixel per group", Want::Ok, &|e| {
        gn_case(e, &GroupNorm::new(4, 4), Shape::new(2, 4, 1, 1), gn.param_shape())
    });
    case("group norm backward: wrong statistics", Want::Err, &|e| {
        let x = e.zeros(gs)?;
        let g = e.zeros(gn.param_shape())?;
        let stats = e.zeros(Shape::new(3, 2, 1, 2))?;
        e.group_norm_backward(&gn, &x, &g, &stats, &x).map(|_| vec![])
    });

    // ReLU, addition, accumulation.
    let specials = [f32::NAN, f32::INFINITY, -f32::INFINITY, -0.0, 0.0, 1e38, -1e38, 1e-40];
    let sp = Shape::new(1, 1, 1, specials.len());
    case("relu: NaN, Inf, denormals", Want::Len(8), &|e| {
        let x = e.tensor(sp, &specials)?;
        let y = e.relu(&x)?;
        Ok(f64s(&e.read(&y)?))
    });
    case("relu: empty", Want::Len(0), &|e| {
        let x = e.zeros(Shape::new(0, 1, 1, 1))?;
        let y = e.relu(&x)?;
        Ok(f64s(&e.read(&y)?))
    });
    case("relu backward: NaN input", Want::Len(8), &|e| {
        let x = e.tensor(sp, &specials)?;
        let g = e.tensor(sp, &[1.0; 8])?;
        let y = e.relu_backward(&x, &g)?;
        Ok(f64s(&e.read(&y)?))
    });
    case("relu backward: shapes differ", Want::Err, &|e| {
        let x = e.zeros(sp)?;
        let g = e.zeros(Shape::new(1, 1, 2, 4))?;
        e.relu_backward(&x, &g).map(|_| vec![])
    });
    case("add: Inf + -Inf and overflow", Want::Len(3), &|e| {
        let sh = Shape::new(1, 1, 1, 3);
        let a = e.tensor(sh, &[f32::INFINITY, 3e38, f32::NAN])?;
        let b = e.tensor(sh, &[-f32::INFINITY, 3e38, 1.0])?;
        let y = e.add(&a, &b)?;
        Ok(f64s(&e.read(&y)?))
    });
    case("add: shapes differ", Want::Err, &|e| {
        let a = e.zeros(Shape::new(1, 1, 1, 3))?;
        let b = e.zeros(Shape::new(1, 1, 3, 1))?;
        e.add(&a, &b).map(|_| vec![])
    });
    case("accumulate: shapes differ", Want::Err, &|e| {
        let mut a = e.zeros(Shape::new(1, 1, 1, 3))?;
        let b = e.zeros(Shape::new(1, 1, 1, 4))?;
        e.accumulate(&mut a, &b).map(|_| vec![])
    });
    case("accumulate: empty", Want::Len(0), &|e| {
        let mut a = e.zeros(Shape::new(0, 2, 2, 2))?;
        let b = e.zeros(Shape::new(0, 2, 2, 2))?;
        e.accumulate(&mut a, &b)?;
        Ok(f64s(&e.read(&a)?))
    });

    // Upsampling.
    let us = Shape::new(1, 2, 2, 3);
    case("upsample: to 2^31 x 2^31", Want::Err, &|e| {
        let x = e.zeros(us)?;
        e.upsample_nearest(&x, 1 << 31, 1 << 31).map(|_| vec![])
    });
    case("upsample: to 2^20 x 2^20", Want::Err, &|e| {
        let x = e.zeros(us)?;
        e.upsample_nearest(&x, 1 << 20, 1 << 20).map(|_| vec![])
    });
    case("upsample: to usize::MAX", Want::Err, &|e| {
        let x = e.zeros(us)?;
        e.upsample_nearest(&x, usize::MAX, usize::MAX).map(|_| vec![])
    });
    case("upsample: smaller than the input", Want::Err, &|e| {
        let x = e.zeros(us)?;
        e.upsample_nearest(&x, 1, 3).map(|_| vec![])
    });
    case("upsample: empty batch", Want::Len(0), &|e| {
        let x = e.zeros(Shape::new(0, 2, 2, 3))?;
        let y = e.upsample_nearest(&x, 4, 6)?;
        Ok(f64s(&e.read(&y)?))
    });
    case("upsample: odd factor", Want::Len(2 * 5 * 7), &|e| {
        let x = e.tensor(us, &values(us.len(), 9))?;
        let y = e.upsample_nearest(&x, 5, 7)?;
        Ok(f64s(&e.read(&y)?))
    });
    case("upsample backward: to 0 x 0", Want::Err, &|e| {
        let g = e.zeros(us)?;
        e.upsample_nearest_backward(&g, 0, 0).map(|_| vec![])
    });
    case("upsample backward: larger than the gradient", Want::Err, &|e| {
        let g = e.zeros(us)?;
        e.upsample_nearest_backward(&g, 3, 3).map(|_| vec![])
    });
    case("upsample backward: odd factor", Want::Len(2 * 2 * 3), &|e| {
        let g = e.tensor(Shape::new(1, 2, 5, 7), &values(70, 10))?;
        let y = e.upsample_nearest_backward(&g, 2, 3)?;
        Ok(f64s(&e.read(&y)?))
    });

    // The head permute.
    let head = Shape::new(2, 6, 2, 3);
    let rows = Shape::new(2, 1, 20, 3);
    let permute = |e: &mut E, anchors: usize, rows: Shape, offset: usize| -> Result<Vec<f64>> {
        let h = e.tensor(head, &values(head.len(), 11))?;
        let mut r = e.zeros(rows)?;
        e.permute_head(&h, anchors, &mut r, offset)?;
        let back = e.permute_head_backward(&r, anchors, offset, head)?;
        let mut v = f64s(&e.read(&r)?);
        v.extend(f64s(&e.read(&back)?));
        Ok(v)
    };
    case("permute head: valid at an offset", Want::Len(120 + 72), &|e| {
        permute(e, 2, rows, 8)
    });
    case("permute head: row_offset usize::MAX", Want::Err, &|e| {
        permute(e, 2, rows, usize::MAX)
    });
    case("permute head: row_offset past the rows", Want::Err, &|e| {
        permute(e, 2, rows, 9)
    });
    case("permute head: 0 anchors", Want::Err, &|e| permute(e, 0, rows, 0));
    case("permute head: anchors do not divide channels", Want::Err, &|e| {
        permute(e, 4, rows, 0)
    });
    case("permute head: rows of another batch", Want::Err, &|e| {
        permute(e, 2, Shape::new(3, 1, 20, 3), 0)
    });
    case("permute head backward: huge head", Want::Err, &|e| {
        let r = e.zeros(rows)?;
        e.permute_head_backward(&r, 2, 0, Shape::new(2, 6, huge, huge))
            .map(|_| vec![])
    });

    // SGD.
    let sgd = Sgd::default();
    let clip = Sgd {
        max_grad_norm: Some(1.0),
        ..Sgd::default()
    };
    let p = vec![vec![1.0, -2.0, 3.0], vec![0.5]];
    let g = vec![vec![0.1, 0.2, -0.3], vec![1.0]];
    case("sgd: valid", Want::Len(4), &|e| sgd_case(e, &sgd, 0.1, &p, &g));
    case("sgd: NaN learning rate", Want::Err, &|e| {
        sgd_case(e, &sgd, f32::NAN, &p, &g)
    });
    case("sgd: infinite learning rate", Want::Err, &|e| {
        sgd_case(e, &sgd, f32::INFINITY, &p, &g)
    });
    case("sgd: negative learning rate", Want::Err, &|e| {
        sgd_case(e, &sgd, -0.1, &p, &g)
    });
    case("sgd: momentum 1", Want::Err, &|e| {
        sgd_case(e, &Sgd { momentum: 1.0, ..sgd }, 0.1, &p, &g)
    });
    case("sgd: NaN weight decay", Want::Err, &|e| {
        sgd_case(
            e,
            &Sgd {
                weight_decay: f32::NAN,
                ..sgd
            },
            0.1,
            &p,
            &g,
        )
    });
    case("sgd: gradient-norm limit 0", Want::Err, &|e| {
        sgd_case(
            e,
            &Sgd {
                max_grad_norm: Some(0.0),
                ..sgd
            },
            0.1,
            &p,
            &g,
        )
    });
    case("sgd: more gradients than parameters", Want::Err, &|e| {
        sgd_case(e, &sgd, 0.1, &p, &[g[0].clone(), g[1].clone(), vec![1.0]])
    });
    case("sgd: gradient of another shape", Want::Err, &|e| {
        sgd_case(e, &sgd, 0.1, &p, &[vec![1.0], vec![1.0]])
    });
    case("sgd: no parameters", Want::Len(0), &|e| {
        sgd_case(e, &clip, 0.1, &[], &[])
    });
    case("sgd: clipping gradients of norm ~1e20", Want::Len(4), &|e| {
        let big = vec![vec![1e20, -2e20, 3e19], vec![1e20]];
        sgd_case(e, &clip, 0.1, &p, &big)
    });
    case("sgd: clipping gradients of norm ~1e36", Want::Len(4), &|e| {
        let big = vec![vec![1e36, -2e36, 3e35], vec![1e36]];
        sgd_case(e, &clip, 0.1, &p, &big)
    });
    case("sgd: clipping tiny gradients", Want::Len(4), &|e| {
        let tiny = vec![vec![1e-20, -2e-20, 3e-21], vec![1e-20]];
        sgd_case(e, &clip, 0.1, &p, &tiny)
    });
    case("sgd: clipping zero gradients", Want::Len(4), &|e| {
        let zero = vec![vec![0.0; 3], vec![0.0]];
        sgd_case(e, &clip, 0.1, &p, &zero)
    });

    // Every special value through every elementwise path.
    for (i, &v) in SPECIALS.iter().enumerate() {
        let one = Shape::new(1, 1, 1, 1);
        case(&format!("special {i}: relu of {v}"), Want::Len(1), &|e| {
            let x = e.tensor(one, &[v])?;
            let y = e.relu(&x)?;
            Ok(f64s(&e.read(&y)?))
        });
        case(&format!("special {i}: {v} + {v}"), Want::Len(1), &|e| {
            let x = e.tensor(one, &[v])?;
            let y = e.add(&x, &x)?;
            Ok(f64s(&e.read(&y)?))
        });
        case(
            &format!("special {i}: 3x3 conv of {v}"),
            Want::Len(9 + 9 + 18 + 2),
            &|e| {
                let c = Conv2d::new(1, 2, 3, 1);
                let s = Shape::new(1, 1, 3, 3);
                let mut x = values(9, 12);
                x[4] = v;
                let x = e.tensor(s, &x)?;
                let w = e.tensor(c.weight_shape(), &values(18, 13))?;
                let b = e.zeros(c.bias_shape())?;
                let y = e.conv2d(&c, &x, &w, Some(&b))?;
                let dy = e.tensor(Shape::new(1, 2, 3, 3), &[1.0; 18])?;
                let g = e.conv2d_backward(&c, &x, &w, &dy, true)?;
                let mut out = f64s(&e.read(&y)?)[..9].to_vec();
                out.extend(f64s(&e.read(g.input.as_ref().expect("asked for"))?));
                out.extend(f64s(&e.read(&g.weight)?));
                out.extend(f64s(&e.read(&g.bias)?));
                Ok(out)
            },
        );
        case(&format!("special {i}: group norm with {v}"), Want::Len(8), &|e| {
            let gn = GroupNorm::new(2, 1);
            let s = Shape::new(1, 2, 2, 2);
            let mut x = values(8, 14);
            x[3] = v;
            let x = e.tensor(s, &x)?;
            let g = e.tensor(gn.param_shape(), &[1.0, 2.0])?;
            let b = e.zeros(gn.param_shape())?;
            let y = e.group_norm(&gn, &x, &g, &b)?;
            Ok(f64s(&e.read(&y.y)?))
        });
        case(&format!("special {i}: upsample of {v}"), Want::Len(4), &|e| {
            let x = e.tensor(one, &[v])?;
            let y = e.upsample_nearest(&x, 2, 2)?;
            Ok(f64s(&e.read(&y)?))
        });
        case(&format!("special {i}: SGD learning rate {v}"), Want::Len(4), &|e| {
            if !(v.is_finite() && v >= 0.0) {
                // Refused: check that, then answer the expected length.
                let refused = sgd_case(e, &sgd, v, &p, &g).is_err();
                return Ok(vec![f64::from(u8::from(refused)); 4]);
            }
            sgd_case(e, &sgd, v, &p, &g)
        });
    }
    t
}

#[test]
fn every_engine_method_refuses_bad_input_and_agrees_between_backends() {
    let start = std::time::Instant::now();
    let cpu = engine_sweep::<CpuEngine>(&CpuEngine::new);
    let gpu_table =
        gpu().map(|ctx| engine_sweep::<GpuEngine>(&|| GpuEngine::new(&ctx).expect("an engine on the test context")));
    let failures = judge(&cpu, gpu_table.as_ref());
    report("nn::Engine sweep", &failures, cpu.rows.len());
    eprintln!("nn::Engine sweep took {:.1} s", start.elapsed().as_secs_f64());
}

// --- Operations over a Backend --------------------------------------------------------------

fn detections(v: Vec<Vec<retina_wgpu::Detection>>) -> Vec<f64> {
    let mut out = Vec::new();
    for image in v {
        out.push(image.len() as f64);
        for d in image {
            out.extend(boxes64(&[d.bbox]));
            out.push(f64::from(d.score));
            out.push(f64::from(d.class));
        }
    }
    out
}

fn ops_sweep(b: &Backend) -> Table {
    let mut t = Table::default();
    let nan = f32::NAN;
    let inf = f32::INFINITY;

    // Focal loss.
    let focal = |loss: FocalLoss, input: FocalInput<'_>| -> Result<Vec<f64>> {
        let out = loss.compute(b, &input)?;
        let mut v = vec![f64::from(out.loss), f64::from(out.normaliser)];
        v.extend(f64s(out.grad.as_deref().unwrap_or(&[])));
        Ok(v)
    };
    let logits = values(12, 20);
    let empty: &[f32] = &[];
    let fl = FocalLoss::retinanet();
    t.case("focal: empty", Want::Len(2), || {
        focal(fl, FocalInput::labels(empty, &[], 4))
    });
    t.case("focal: label 4 of K = 4", Want::Err, || {
        focal(fl, FocalInput::labels(&logits[..], &[0, 1, 4], 4))
    });
    t.case("focal: label -3", Want::Err, || {
        focal(fl, FocalInput::labels(&logits[..], &[0, -3, 1], 4))
    });
    t.case("focal: K = 0", Want::Err, || {
        focal(fl, FocalInput::labels(empty, &[], 0))
    });
    t.case("focal: K = usize::MAX", Want::Err, || {
        focal(fl, FocalInput::labels(empty, &[], usize::MAX))
    });
    t.case("focal: logits not whole rows", Want::Err, || {
        focal(fl, FocalInput::labels(&logits[..11], &[0, 1, 2], 4))
    });
    t.case("focal: labels of another length", Want::Err, || {
        focal(fl, FocalInput::labels(&logits[..], &[0, 1], 4))
    });
    t.case("focal: dense target 2", Want::Err, || {
        focal(
            fl.with_reduction(Reduction::Sum),
            FocalInput::dense(&logits[..4], &[0.0, 2.0, 0.0, 1.0], 4),
        )
    });
    t.case("focal: dense target -inf", Want::Err, || {
        focal(
            fl.with_reduction(Reduction::Sum),
            FocalInput::dense(&logits[..4], &[0.0, -inf, 0.0, 1.0], 4),
        )
    });
    t.case("focal: NaN gamma", Want::Err, || {
        focal(
            FocalLoss::new(None, nan),
            FocalInput::labels(&logits[..], &[0, 1, 2], 4),
        )
    });
    t.case("focal: alpha 2", Want::Err, || {
        focal(
            FocalLoss::new(Some(2.0), 2.0),
            FocalInput::labels(&logits[..], &[0, 1, 2], 4),
        )
    });
    t.case("focal: normaliser 0", Want::Err, || {
        focal(
            fl.with_reduction(Reduction::Normalized(0.0)),
            FocalInput::labels(&logits[..], &[0, 1, 2], 4),
        )
    });
    t.case("focal: FL* with gamma 0", Want::Err, || {
        focal(
            FocalLoss::star(0.0, 1.0),
            FocalInput::labels(&logits[..], &[0, 1, 2], 4),
        )
    });
    t.case("focal: NaN and Inf logits give NaN", Want::Len(14), || {
        let mut l = logits.clone();
        l[1] = nan;
        l[6] = inf;
        focal(fl, FocalInput::labels(&l[..], &[0, -1, 2], 4))
    });
    t.case(
        "focal: logits of +-1e28 (the valid range) give a finite loss",
        Want::Len(14),
        || {
            let l: Vec<f32> = (0..12).map(|i| if i % 2 == 0 { 1e28 } else { -1e28 }).collect();
            let v = focal(fl, FocalInput::labels(&l[..], &[0, -1, 2], 4))?;
            assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
            Ok(v)
        },
    );
    t.case(
        "focal: logits of +-3e38 give finite per-element losses",
        Want::Len(4),
        || {
            let l = [3e38f32, -3e38, 3.4e38, -3.4e38];
            let out = FocalLoss::retinanet()
                .with_reduction(Reduction::None)
                .compute(b, &FocalInput::labels(&l[..], &[-1, 0, -1, 0], 1))?;
            let v = f64s(out.elementwise.as_deref().unwrap_or(&[]));
            assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
            Ok(v)
        },
    );
    t.case("focal: all ignored", Want::Len(14), || {
        focal(fl, FocalInput::labels(&logits[..], &[-2, -2, -2], 4))
    });

    // Anchors.
    let anchors =
        |config: AnchorConfig, h: u32, w: u32| -> Result<Vec<f64>> { Ok(boxes64(&config.generate(b, h, w)?)) };
    let small = AnchorConfig::small();
    t.case("anchors: 32 x 48", Want::Ok, || anchors(small.clone(), 32, 48));
    t.case("anchors: stride 0", Want::Err, || {
        anchors(
            AnchorConfig {
                strides: vec![8, 0, 32, 64, 128],
                ..small.clone()
            },
            64,
            64,
        )
    });
    t.case("anchors: 0 x 0 image", Want::Err, || anchors(small.clone(), 0, 0));
    t.case("anchors: u32::MAX x u32::MAX image", Want::Err, || {
        anchors(small.clone(), u32::MAX, u32::MAX)
    });
    t.case("anchors: stride 1 on a huge image", Want::Err, || {
        anchors(
            AnchorConfig {
                strides: vec![1],
                sizes: vec![4.0],
                ..small.clone()
            },
            1 << 20,
            1 << 20,
        )
    });
    t.case("anchors: NaN size", Want::Err, || {
        anchors(
            AnchorConfig {
                sizes: vec![nan, 32.0, 64.0, 128.0, 256.0],
                ..small.clone()
            },
            64,
            64,
        )
    });
    t.case("anchors: no scales", Want::Err, || {
        anchors(
            AnchorConfig {
                scales: vec![],
                ..small.clone()
            },
            64,
            64,
        )
    });
    t.case("anchors: infinite offset", Want::Err, || {
        anchors(
            AnchorConfig {
                offset: inf,
                ..small.clone()
            },
            64,
            64,
        )
    });

    // IoU and the box coder.
    let a = [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 20.0], [3.0, 3.0, 3.0, 9.0]];
    t.case("box_iou: empty", Want::Len(0), || Ok(f64s(&box_iou(b, &[], &a)?)));
    t.case("box_iou: NaN", Want::Err, || {
        Ok(f64s(&box_iou(b, &[[0.0, nan, 1.0, 1.0]], &a)?))
    });
    t.case("box_iou: Inf", Want::Err, || {
        Ok(f64s(&box_iou(b, &[[0.0, 0.0, inf, 1.0]], &a)?))
    });
    t.case("box_iou: x2 < x1", Want::Err, || {
        Ok(f64s(&box_iou(b, &[[2.0, 0.0, 1.0, 1.0]], &a)?))
    });
    t.case("box_iou: a side of 1e19 (beyond the valid range)", Want::Err, || {
        Ok(f64s(&box_iou(b, &[[0.0, 0.0, 1e19, 1e19]], &a)?))
    });
    t.case(
        "box_iou: boxes of side 2e18 (the edge of the range) with themselves",
        Want::Len(4),
        || {
            let big = [[-1e18, -1e18, 1e18, 1e18], [-1e18, 0.0, 1e18, 1e18]];
            let v = f64s(&box_iou(b, &big, &big)?);
            assert!(v.iter().all(|x| x.is_finite()) && v[0] == 1.0 && v[3] == 1.0, "{v:?}");
            Ok(v)
        },
    );
    t.case("box_iou: zero-area boxes", Want::Len(9), || {
        Ok(f64s(&box_iou(b, &a, &a)?))
    });
    let coder = BoxCoder::default();
    t.case("encode: zero-area ground truth", Want::Err, || {
        let err = coder.encode(b, &[[1.0, 1.0, 1.0, 5.0]], &a[..1]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("box 0") && !msg.contains("anchor 0"), "{msg}");
        Err(err)
    });
    t.case("encode: mismatched lengths", Want::Err, || {
        Ok(boxes64(&coder.encode(b, &a[..1], &a[..2])?))
    });
    t.case("encode: zero-area anchor", Want::Err, || {
        Ok(boxes64(&coder.encode(b, &a[..1], &a[2..])?))
    });
    t.case("encode: zero weight", Want::Err, || {
        let c = BoxCoder {
            weights: [1.0, 0.0, 1.0, 1.0],
            ..coder
        };
        Ok(boxes64(&c.encode(b, &a[..1], &a[..1])?))
    });
    t.case("decode: NaN clamp", Want::Err, || {
        let c = BoxCoder { clamp: nan, ..coder };
        Ok(boxes64(&c.decode(b, &[[0.0; 4]], &a[..1])?))
    });
    t.case("decode: NaN and Inf deltas", Want::Len(16), || {
        let d = [
            [nan, 0.0, 0.0, 0.0],
            [0.0, 0.0, nan, 0.0],
            [inf, -inf, inf, -inf],
            [1e30, 0.0, 1e30, 0.0],
        ];
        let anchors = [a[0], a[1], a[0], a[1]];
        let v = boxes64(&coder.decode(b, &d, &anchors)?);
        assert!(
            v[..8].iter().all(|x| x.is_nan()),
            "a NaN delta gives an all-NaN box: {v:?}"
        );
        Ok(v)
    });
    t.case("decode: empty", Want::Len(0), || {
        Ok(boxes64(&coder.decode(b, &[], &[])?))
    });

    // Target assignment.
    let assign = |assigner: TargetAssigner, anchors: &[[f32; 4]], images: &[GroundTruth<'_>]| -> Result<Vec<f64>> {
        let out = assigner.assign(b, anchors, images)?;
        let mut v = ints(&out.matches);
        v.extend(ints(&out.labels));
        v.extend(boxes64(&out.box_targets));
        v.extend(ints(&out.positives));
        Ok(v)
    };
    let gt_boxes = [[0.0, 0.0, 9.0, 9.0], [4.0, 4.0, 4.0, 4.0]];
    let gt = [GroundTruth {
        boxes: &gt_boxes,
        classes: &[1, 0],
    }];
    let ta = TargetAssigner::new(3);
    t.case("assign: 0 anchors", Want::Len(1), || assign(ta, &[], &gt));
    t.case("assign: 0 images", Want::Len(0), || assign(ta, &a[..2], &[]));
    t.case("assign: zero-area ground truth", Want::Len(2 * 6 + 1), || {
        assign(ta, &a[..2], &gt)
    });
    t.case("assign: class 3 of K = 3", Want::Err, || {
        assign(
            ta,
            &a[..2],
            &[GroundTruth {
                boxes: &gt_boxes,
                classes: &[3, 0],
            }],
        )
    });
    t.case("assign: negative class", Want::Err, || {
        assign(
            ta,
            &a[..2],
            &[GroundTruth {
                boxes: &gt_boxes,
                classes: &[-1, 0],
            }],
        )
    });
    t.case("assign: NaN ground truth", Want::Err, || {
        assign(
            ta,
            &a[..2],
            &[GroundTruth {
                boxes: &[[0.0, nan, 1.0, 1.0]],
                classes: &[0],
            }],
        )
    });
    t.case("assign: ground truth beyond 1e18", Want::Err, || {
        assign(
            ta,
            &a[..2],
            &[GroundTruth {
                boxes: &[[0.0, 0.0, 1e19, 1.0]],
                classes: &[0],
            }],
        )
    });
    t.case("assign: boxes and classes of other lengths", Want::Err, || {
        assign(
            ta,
            &a[..2],
            &[GroundTruth {
                boxes: &gt_boxes,
                classes: &[0],
            }],
        )
    });
    t.case("assign: K = 0", Want::Err, || {
        assign(TargetAssigner::new(0), &a[..2], &gt)
    });
    t.case("assign: low > high", Want::Err, || {
        let m = TargetAssigner {
            matcher: Matcher {
                high: 0.4,
                low: 0.5,
                allow_low_quality_matches: true,
            },
            ..ta
        };
        assign(m, &a[..2], &gt)
    });
    t.case("assign: NaN threshold", Want::Err, || {
        let m = TargetAssigner {
            matcher: Matcher {
                high: nan,
                ..Matcher::default()
            },
            ..ta
        };
        assign(m, &a[..2], &gt)
    });
    t.case("assign: many images, no anchors' worth of memory", Want::Err, || {
        let images = vec![
            GroundTruth {
                boxes: &[],
                classes: &[]
            };
            1 << 20
        ];
        let anchors = vec![[0.0, 0.0, 1.0, 1.0]; 1 << 20];
        assign(ta, &anchors, &images)
    });

    // Box losses.
    let bl = |loss: BoxLoss, input: BoxLossInput<'_>| -> Result<Vec<f64>> {
        let out = loss.compute(b, &input)?;
        let mut v = vec![f64::from(out.loss), f64::from(out.normaliser)];
        v.extend(boxes64(&out.grad));
        Ok(v)
    };
    let pred = [[0.1, 0.2, -0.1, 0.3], [nan, 0.0, 0.0, 0.0]];
    let targets = [[0.0; 4], [0.1, 0.1, 0.1, 0.1]];
    t.case("box loss: empty", Want::Len(2), || {
        bl(
            BoxLoss::default(),
            BoxLossInput {
                pred: &[],
                targets: &[],
                labels: &[],
                anchors: &a[..1],
            },
        )
    });
    t.case("box loss: NaN prediction of a positive", Want::Len(10), || {
        bl(
            BoxLoss::default(),
            BoxLossInput {
                pred: &pred,
                targets: &targets,
                labels: &[0, 1],
                anchors: &a[..2],
            },
        )
    });
    t.case("box loss: GIoU with a NaN prediction", Want::Len(10), || {
        bl(
            BoxLoss::giou(),
            BoxLossInput {
                pred: &pred,
                targets: &targets,
                labels: &[0, 1],
                anchors: &a[..2],
            },
        )
    });
    t.case("box loss: mismatched lengths", Want::Err, || {
        bl(
            BoxLoss::default(),
            BoxLossInput {
                pred: &pred,
                targets: &targets[..1],
                labels: &[0, 1],
                anchors: &a[..2],
            },
        )
    });
    t.case("box loss: negative beta", Want::Err, || {
        bl(
            BoxLoss::smooth_l1(-1.0),
            BoxLossInput {
                pred: &pred,
                targets: &targets,
                labels: &[0, 1],
                anchors: &a[..2],
            },
        )
    });
    t.case("box loss: zero-area anchor", Want::Err, || {
        bl(
            BoxLoss::default(),
            BoxLossInput {
                pred: &pred,
                targets: &targets,
                labels: &[0, 1],
                anchors: &[a[0], a[2]],
            },
        )
    });

    // NMS, sort and top-k.
    let nms_case = |nms: Nms, boxes: &[[f32; 4]], scores: &[f32], classes: Option<&[i32]>| -> Result<Vec<f64>> {
        let out = nms.run(b, boxes, scores, classes)?;
        let mut v = ints(&out.keep);
        v.extend(f64s(&out.scores));
        Ok(v)
    };
    let nb = [
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 10.0],
        [20.0, 20.0, 30.0, 30.0],
        [0.0, 0.0, 0.0, 0.0],
    ];
    let hard = Nms::hard(0.5);
    t.case("nms: empty", Want::Len(0), || nms_case(hard, &[], &[], None));
    t.case("nms: NaN score is never kept", Want::Ok, || {
        nms_case(hard, &nb, &[0.9, nan, 0.5, 0.4], None)
    });
    t.case("nms: Inf scores", Want::Ok, || {
        nms_case(hard, &nb, &[inf, -inf, 0.5, 0.4], None)
    });
    t.case("nms: NaN box", Want::Err, || {
        nms_case(hard, &[[nan, 0.0, 1.0, 1.0]], &[0.5], None)
    });
    t.case("nms: box beyond 1e18", Want::Err, || {
        nms_case(hard, &[[0.0, 0.0, 3e18, 1.0]], &[0.5], None)
    });
    t.case("nms: identical boxes of side 2e18", Want::Len(2), || {
        let big = [[-1e18, -1e18, 1e18, 1e18]; 2];
        nms_case(hard, &big, &[0.9, 0.8], None)
    });
    t.case("nms: max_output 0", Want::Len(0), || {
        nms_case(hard.with_max_output(0), &nb, &[0.9, 0.8, 0.5, 0.4], None)
    });
    t.case("nms: max_output usize::MAX", Want::Err, || {
        nms_case(hard.with_max_output(usize::MAX), &nb, &[0.9, 0.8, 0.5, 0.4], None)
    });
    t.case("nms: NaN IoU threshold", Want::Err, || {
        nms_case(Nms::hard(nan), &nb, &[0.9, 0.8, 0.5, 0.4], None)
    });
    t.case("nms: infinite score threshold", Want::Err, || {
        nms_case(hard.with_score_threshold(inf), &nb, &[0.9, 0.8, 0.5, 0.4], None)
    });
    t.case("nms: classes of another length", Want::Err, || {
        nms_case(hard, &nb, &[0.9, 0.8, 0.5, 0.4], Some(&[0, 1]))
    });
    t.case("nms: scores of another length", Want::Err, || {
        nms_case(hard, &nb, &[0.9], None)
    });
    t.case("nms: soft with sigma 0", Want::Err, || {
        nms_case(
            hard.with_kind(NmsKind::SoftGaussian { sigma: 0.0 }),
            &nb,
            &[0.9, 0.8, 0.5, 0.4],
            None,
        )
    });
    t.case("nms: class-aware with negative classes", Want::Ok, || {
        nms_case(hard, &nb, &[0.9, 0.8, 0.5, 0.4], Some(&[-5, -5, i32::MIN, i32::MAX]))
    });
    t.case("sort: empty", Want::Len(0), || {
        let (k, p) = sort_desc(b, &[], &[])?;
        Ok([f64s(&k), ints(&p)].concat())
    });
    t.case("sort: NaN, Inf, -0", Want::Len(10), || {
        let (k, p) = sort_desc(b, &[nan, 1.0, -inf, -0.0, 0.0], &[0, 1, 2, 3, 4])?;
        Ok([f64s(&k), ints(&p)].concat())
    });
    t.case("sort: payloads of another length", Want::Err, || {
        let (k, p) = sort_desc(b, &[1.0, 2.0], &[0])?;
        Ok([f64s(&k), ints(&p)].concat())
    });
    t.case("top_k: k = 0", Want::Len(0), || {
        let (v, i) = top_k(b, &[1.0, 2.0], 0)?;
        Ok([f64s(&v), ints(&i)].concat())
    });
    t.case("top_k: k = usize::MAX", Want::Len(4), || {
        let (v, i) = top_k(b, &[1.0, nan], usize::MAX)?;
        // One value is not NaN: one selected (value and index).
        Ok([f64s(&v), ints(&i), vec![0.0, 0.0]].concat())
    });
    t.case("top_k: all NaN", Want::Len(0), || {
        let (v, i) = top_k(b, &[nan; 5], 3)?;
        Ok([f64s(&v), ints(&i)].concat())
    });
    t.case("top_k: empty", Want::Len(0), || {
        let (v, i) = top_k(b, &[], 3)?;
        Ok([f64s(&v), ints(&i)].concat())
    });

    // Post-processing.
    let config = AnchorConfig::small();
    let side = 64u32;
    let pp_anchors = config.generate(&Backend::Cpu, side, side).expect("valid anchors");
    let offsets = config.level_offsets(side, side).expect("valid anchors");
    let n = pp_anchors.len();
    let k = 3;
    let mut rng = common::Rng::new(30);
    let pp_logits: Vec<f32> = (0..2 * n * k).map(|_| rng.range(-6.0, 2.0)).collect();
    let pp_deltas: Vec<[f32; 4]> = (0..2 * n)
        .map(|_| {
            [
                rng.range(-0.5, 0.5),
                rng.range(-0.5, 0.5),
                rng.range(-0.5, 0.5),
                rng.range(-0.5, 0.5),
            ]
        })
        .collect();
    let input = DetectionInput {
        logits: &pp_logits,
        deltas: &pp_deltas,
        anchors: &pp_anchors,
        level_offsets: &offsets,
        num_classes: k,
        image_size: (side, side),
    };
    let pp = PostProcess::default();
    t.case("postprocess: valid", Want::Ok, || Ok(detections(pp.run(b, &input)?)));
    t.case("postprocess: batch of 0", Want::Len(0), || {
        Ok(detections(pp.run(
            b,
            &DetectionInput {
                logits: &[],
                deltas: &[],
                ..input
            },
        )?))
    });
    t.case(
        "postprocess: NaN deltas give NaN boxes on both backends",
        Want::Ok,
        || {
            let nan_deltas: Vec<[f32; 4]> = pp_deltas
                .iter()
                .enumerate()
                .map(|(i, d)| if i % 3 == 0 { [d[0], nan, d[2], d[3]] } else { *d })
                .collect();
            let v = detections(pp.run(
                b,
                &DetectionInput {
                    deltas: &nan_deltas,
                    ..input
                },
            )?);
            assert!(v.iter().any(|x| x.is_nan()), "some detection has a NaN box");
            Ok(v)
        },
    );
    t.case("postprocess: NaN deltas without clipping", Want::Ok, || {
        let nan_deltas: Vec<[f32; 4]> = pp_deltas.iter().map(|d| [d[0], d[1], nan, d[3]]).collect();
        let no_clip = PostProcess {
            clip_to_image: false,
            ..pp
        };
        Ok(detections(no_clip.run(
            b,
            &DetectionInput {
                deltas: &nan_deltas,
                ..input
            },
        )?))
    });
    t.case("postprocess: NaN and Inf logits", Want::Ok, || {
        let mut l = pp_logits.clone();
        for (i, v) in l.iter_mut().enumerate() {
            match i % 7 {
                0 => *v = nan,
                1 => *v = inf,
                2 => *v = -inf,
                _ => {}
            }
        }
        Ok(detections(pp.run(b, &DetectionInput { logits: &l, ..input })?))
    });
    t.case("postprocess: K = usize::MAX", Want::Err, || {
        Ok(detections(pp.run(
            b,
            &DetectionInput {
                num_classes: usize::MAX,
                ..input
            },
        )?))
    });
    t.case("postprocess: K = 0", Want::Err, || {
        Ok(detections(pp.run(
            b,
            &DetectionInput {
                num_classes: 0,
                ..input
            },
        )?))
    });
    t.case("postprocess: offsets that do not end at the anchors", Want::Err, || {
        let bad = [0, 10, n - 1];
        Ok(detections(pp.run(
            b,
            &DetectionInput {
                level_offsets: &bad,
                ..input
            },
        )?))
    });
    t.case("postprocess: falling offsets", Want::Err, || {
        let bad = [0, 10, 5, n];
        Ok(detections(pp.run(
            b,
            &DetectionInput {
                level_offsets: &bad,
                ..input
            },
        )?))
    });
    t.case("postprocess: score threshold 1", Want::Err, || {
        let p = PostProcess {
            score_threshold: 1.0,
            ..pp
        };
        Ok(detections(p.run(b, &input)?))
    });
    t.case("postprocess: topk 0", Want::Err, || {
        let p = PostProcess {
            topk_per_level: 0,
            ..pp
        };
        Ok(detections(p.run(b, &input)?))
    });
    t.case("postprocess: topk usize::MAX", Want::Err, || {
        let p = PostProcess {
            topk_per_level: usize::MAX,
            ..pp
        };
        Ok(detections(p.run(b, &input)?))
    });
    t.case("postprocess: image of 0 x 0", Want::Ok, || {
        Ok(detections(pp.run(
            b,
            &DetectionInput {
                image_size: (0, 0),
                ..input
            },
        )?))
    });
    t.case("postprocess: deltas not whole images", Want::Err, || {
        Ok(detections(pp.run(
            b,
            &DetectionInput {
                deltas: &pp_deltas[..n + 1],
                ..input
            },
        )?))
    });

    // Every special value through every operation that takes a float. Box-loss deltas beyond
    // +-1e28 are outside the documented range (the GPU's f32 sum may overflow).
    let loss_want = |v: f32| {
        if v.is_finite() && v.abs() > 1e28 {
            Want::OutOfRange(10)
        } else {
            Want::Len(10)
        }
    };
    for (i, &v) in SPECIALS.iter().enumerate() {
        t.case(
            &format!("special {i}: focal loss of logit {v}"),
            Want::Len(2 + 8),
            || {
                let mut l = values(8, 21);
                l[1] = v;
                l[6] = v;
                focal(fl, FocalInput::labels(&l[..], &[1, -1], 4))
            },
        );
        t.case(
            &format!("special {i}: soft target focal loss of logit {v}"),
            Want::Len(2 + 4),
            || {
                let l = [v, 0.5, -v, 2.0];
                focal(
                    FocalLoss::new(Some(0.25), 1.5).with_reduction(Reduction::Sum),
                    FocalInput::dense(&l[..], &[0.3, 1.0, 0.0, 0.7], 4),
                )
            },
        );
        t.case(&format!("special {i}: FL* of logit {v}"), Want::Len(2 + 4), || {
            let l = [v, 0.5, -v, 2.0];
            focal(FocalLoss::star(2.0, 1.0), FocalInput::labels(&l[..], &[2], 4))
        });
        let want_box = |v: f32| {
            if v.is_finite() && v.abs() <= 1e18 {
                Want::Ok
            } else {
                Want::Err
            }
        };
        t.case(&format!("special {i}: box_iou with {v}"), want_box(v), || {
            // [0, 0, v, v] for v >= 0, else [v, v, 0, 0]; NaN stays NaN.
            let bx = if v >= 0.0 {
                [[0.0, 0.0, v, v]]
            } else {
                [[v, v, 0.0, 0.0]]
            };
            Ok(f64s(&box_iou(b, &bx, &a)?))
        });
        t.case(&format!("special {i}: decode delta {v}"), Want::Len(8), || {
            Ok(boxes64(&coder.decode(
                b,
                &[[v, 0.0, v, 0.0], [0.0, v, 0.0, v]],
                &a[..2],
            )?))
        });
        t.case(&format!("special {i}: NMS score {v}"), Want::Ok, || {
            nms_case(hard, &nb, &[0.9, v, 0.5, v], None)
        });
        t.case(&format!("special {i}: Soft-NMS score {v}"), Want::Ok, || {
            nms_case(hard.with_kind(NmsKind::SoftLinear), &nb, &[0.9, v, 0.5, v], None)
        });
        t.case(&format!("special {i}: Matrix NMS score {v}"), Want::Ok, || {
            nms_case(
                hard.with_kind(NmsKind::Matrix { gaussian_sigma: None }),
                &nb,
                &[0.9, v, 0.5, v],
                None,
            )
        });
        t.case(&format!("special {i}: sort key {v}"), Want::Len(8), || {
            let (k, p) = sort_desc(b, &[1.0, v, -1.0, v], &[0, 1, 2, 3])?;
            Ok([f64s(&k), ints(&p)].concat())
        });
        t.case(&format!("special {i}: top-2 of {v}"), Want::Ok, || {
            let (x, j) = top_k(b, &[1.0, v, -1.0, v], 2)?;
            Ok([f64s(&x), ints(&j)].concat())
        });
        t.case(&format!("special {i}: box loss prediction {v}"), loss_want(v), || {
            bl(
                BoxLoss::default(),
                BoxLossInput {
                    pred: &[[v, 0.0, 0.0, 0.0], [0.0, 0.0, v, 0.0]],
                    targets: &targets,
                    labels: &[0, 1],
                    anchors: &a[..2],
                },
            )
        });
        t.case(&format!("special {i}: GIoU loss prediction {v}"), loss_want(v), || {
            bl(
                BoxLoss::giou(),
                BoxLossInput {
                    pred: &[[v, 0.0, 0.0, 0.0], [0.0, 0.0, v, 0.0]],
                    targets: &targets,
                    labels: &[0, 1],
                    anchors: &a[..2],
                },
            )
        });
        t.case(
            &format!("special {i}: post-processing logit and delta {v}"),
            Want::Ok,
            || {
                let mut l = pp_logits.clone();
                let mut d = pp_deltas.clone();
                for j in (0..l.len()).step_by(5) {
                    l[j] = v;
                }
                for j in (0..d.len()).step_by(7) {
                    d[j][j % 4] = v;
                }
                Ok(detections(pp.run(
                    b,
                    &DetectionInput {
                        logits: &l,
                        deltas: &d,
                        ..input
                    },
                )?))
            },
        );
        t.case(
            &format!("special {i}: matcher threshold {v}"),
            if (0.0..=1.0).contains(&v) { Want::Ok } else { Want::Err },
            || {
                let m = TargetAssigner {
                    matcher: Matcher {
                        high: v,
                        low: v,
                        allow_low_quality_matches: false,
                    },
                    ..ta
                };
                assign(m, &a[..2], &gt)
            },
        );
    }
    t
}

#[test]
fn every_operation_refuses_bad_input_and_agrees_between_backends() {
    let start = std::time::Instant::now();
    let cpu = ops_sweep(&Backend::Cpu);
    let gpu_table = gpu().map(|ctx| ops_sweep(&Backend::Gpu(ctx)));
    let failures = judge(&cpu, gpu_table.as_ref());
    report("operations sweep", &failures, cpu.rows.len());
    eprintln!("operations sweep took {:.1} s", start.elapsed().as_secs_f64());
}

// --- Sizes and configurations without a backend -------------------------------------------------

#[test]
fn size_arithmetic_overflows_are_errors() {
    let huge = usize::MAX / 2;
    assert!(Shape::new(huge, huge, 2, 2).checked_len().is_err());
    assert_eq!(Shape::new(huge, huge, 2, 2).len(), usize::MAX, "len saturates");
    assert_eq!(Shape::new(huge, huge, 0, 2).len(), 0);
    let err = Conv2d {
        padding: usize::MAX,
        ..Conv2d::new(3, 4, 3, 1)
    }
    .output_shape(Shape::new(1, 3, 8, 8))
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let zero_stride = AnchorConfig {
        strides: vec![8, 0],
        sizes: vec![32.0, 64.0],
        ..AnchorConfig::small()
    };
    for result in [
        zero_stride.num_anchors(128, 128).map(|_| ()),
        zero_stride.level_offsets(128, 128).map(|_| ()),
        zero_stride.grid(128, 128).map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(err.to_string().contains("stride 0"), "{err}");
    }
    let one = AnchorConfig {
        strides: vec![1, 1],
        sizes: vec![4.0, 8.0],
        ..AnchorConfig::small()
    };
    assert!(
        one.num_anchors(u32::MAX, u32::MAX).is_err(),
        "2 x 9 x (2^32)^2 anchors overflow usize"
    );
    assert_eq!(AnchorConfig::small().num_anchors(128, 128).unwrap(), 3069);
    let huge_net = retina_wgpu::model::RetinaNetConfig {
        input_size: 1 << 40,
        ..Default::default()
    };
    assert!(huge_net.num_anchors().is_err());
    assert!(retina_wgpu::model::RetinaNet::new(huge_net).is_err());
}

#[test]
fn cpu_tensors_beyond_the_host_cap_are_out_of_memory_errors() {
    let mut e = CpuEngine::<f32>::new();
    let err = e.zeros(Shape::new(1, 1, 1 << 20, 1 << 20)).unwrap_err();
    assert!(
        matches!(err, Error::OutOfMemory(_)) && err.to_string().contains("CPU"),
        "{err}"
    );
    let x = e.zeros(Shape::new(1, 1, 2, 2)).unwrap();
    let err = e.upsample_nearest(&x, 1 << 20, 1 << 20).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
    let mut e64 = CpuEngine::<f64>::new();
    assert!(e64.zeros(Shape::new(1 << 20, 1 << 20, 1, 1)).is_err());
}

/// The CPU convolution of kernels that overhang a small input by more than the padding, against
/// a direct f64 loop (the GPU is compared in the engine sweep).
#[test]
fn cpu_convolution_of_kernels_overhanging_a_small_input_matches_a_direct_loop() {
    for (c, s) in [
        (conv(2, 3, (5, 5), 1, 2), Shape::new(2, 2, 1, 1)),
        (conv(2, 3, (7, 7), 1, 3), Shape::new(1, 2, 2, 2)),
        (conv(1, 2, (1, 9), 1, 4), Shape::new(2, 1, 1, 1)),
        (conv(2, 2, (7, 7), 2, 3), Shape::new(1, 2, 3, 1)),
        (conv(1, 1, (5, 3), 1, 2), Shape::new(1, 1, 1, 2)),
    ] {
        let out = c.output_shape(s).unwrap();
        let (x, w) = (values(s.len(), 1), values(c.weight_shape().len(), 2));
        let mut e = CpuEngine::<f64>::new();
        let xt = e.tensor(s, &x).unwrap();
        let wt = e.tensor(c.weight_shape(), &w).unwrap();
        let y = e.conv2d(&c, &xt, &wt, None).unwrap();
        let mut want = vec![0.0f64; out.len()];
        for n in 0..s.n {
            for co in 0..c.out_channels {
                for oy in 0..out.h {
                    for ox in 0..out.w {
                        let mut acc = 0.0;
                        for ci in 0..c.in_channels {
                            for ky in 0..c.kernel.0 {
                                for kx in 0..c.kernel.1 {
                                    let iy = (oy * c.stride + ky) as isize - c.padding as isize;
                                    let ix = (ox * c.stride + kx) as isize - c.padding as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                        let xv = x[((n * s.c + ci) * s.h + iy as usize) * s.w + ix as usize];
                                        let wv = w[((co * c.in_channels + ci) * c.kernel.0 + ky) * c.kernel.1 + kx];
                                        acc += f64::from(xv) * f64::from(wv);
                                    }
                                }
                            }
                        }
                        want[((n * c.out_channels + co) * out.h + oy) * out.w + ox] = acc;
                    }
                }
            }
        }
        let got = e.read(&y).unwrap();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((f64::from(g) - w).abs() < 1e-5, "{c} on {s}: [{i}] {g} vs {w}");
        }
        // The backward pass runs too (it used to panic on these shapes).
        let dy = e.tensor(out, &values(out.len(), 3)).unwrap();
        let grads = e.conv2d_backward(&c, &xt, &wt, &dy, true).unwrap();
        assert_eq!(e.read(grads.input.as_ref().unwrap()).unwrap().len(), s.len());
    }
}

// --- The GPU's own APIs --------------------------------------------------------------------

#[test]
fn gpu_buffer_apis_refuse_huge_sizes_and_take_empty_input_without_a_dispatch() {
    let Some(ctx) = gpu() else { return };
    let err = ctx.zeros::<f32>(1 << 62).unwrap_err();
    assert!(err.to_string().contains("max_buffer_size"), "{err}");
    assert!(ctx.zeros::<[f32; 4]>(usize::MAX).is_err());
    let err = ctx.detection_output(usize::MAX, 100).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");

    let values = ctx.upload(&[1.0f32, 3.0, 2.0]).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for segment in [
        TopkSegment {
            start: usize::MAX - 1,
            len: 2,
            k: 1,
        },
        TopkSegment {
            start: 1,
            len: usize::MAX,
            k: 1,
        },
        TopkSegment { start: 0, len: 3, k: 4 },
    ] {
        assert!(
            ctx.record_top_k(&mut encoder, &values, &[segment], None).is_err(),
            "{segment:?}"
        );
    }
    let many = vec![TopkSegment { start: 0, len: 3, k: 3 }; 3];
    assert!(ctx.record_top_k(&mut encoder, &values, &many, None).is_ok());

    // NMS over no boxes: empty, a zero count.
    let none = ctx.upload::<[f32; 4]>(&[]).unwrap();
    let no_scores = ctx.upload::<f32>(&[]).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let (keep, scores, count) = ctx
        .record_nms(&mut encoder, &Nms::hard(0.5), &none, &no_scores, None)
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert_eq!((keep.len(), scores.len()), (0, 0));
    assert_eq!(ctx.download(&count).unwrap(), vec![0]);

    // Post-processing of a batch of no images.
    let anchors = ctx.upload(&[[0.0f32, 0.0, 8.0, 8.0]]).unwrap();
    let logits = ctx.upload::<f32>(&[]).unwrap();
    let out = ctx.detection_output(0, 100).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ctx.record_postprocess(
        &mut encoder,
        &PostProcess::default(),
        &DetectionBuffers {
            logits: &logits,
            deltas: &none,
            anchors: &anchors,
            level_offsets: &[0, 1],
            num_classes: 2,
            image_size: (8, 8),
        },
        &out,
    )
    .unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert!(out.counts.is_empty());

    // Target assignment with no anchors.
    let assigned = TargetAssigner::new(2)
        .assign(
            &Backend::Gpu(ctx.clone()),
            &[],
            &[GroundTruth {
                boxes: &[[0.0, 0.0, 1.0, 1.0]],
                classes: &[1],
            }],
        )
        .unwrap();
    assert_eq!((assigned.labels.len(), assigned.positives), (0, vec![0]));
}

/// Labels already on the device are not checked there: one outside [-2, K) makes the loss NaN
/// (documented on `record_focal_loss`), never a plausible number.
#[test]
fn out_of_range_labels_on_the_device_give_a_nan_loss() {
    let Some(ctx) = gpu() else { return };
    for bad in [4, 100, -3, i32::MIN, i32::MAX] {
        let logits = ctx.upload(&values(12, 40)).unwrap();
        let labels = ctx.upload(&[0, bad, -1]).unwrap();
        let loss = ctx.zeros::<f32>(3).unwrap();
        let grad = ctx.zeros::<f32>(12).unwrap();
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        ctx.record_focal_loss(
            &mut encoder,
            &FocalLoss::retinanet(),
            &FocalBuffers {
                logits: LogitsBuffer::F32(&logits),
                targets: TargetsBuffer::Labels(&labels),
                num_classes: 4,
                loss: &loss,
                grad: Some(&grad),
                elementwise: None,
                positives: None,
            },
        )
        .unwrap();
        ctx.queue().submit([encoder.finish()]);
        let out = ctx.download(&loss).unwrap();
        assert!(out[0].is_nan() && out[1].is_nan(), "label {bad}: {out:?}");
        // Only the bad row's gradient is NaN; the positive count ignores it.
        let g = ctx.download(&grad).unwrap();
        assert!(g[4..8].iter().all(|v| v.is_nan()) && g[..4].iter().chain(&g[8..]).all(|v| v.is_finite()));
        assert_eq!(out[2], 1.0, "one valid positive");
    }
}

/// Buffers and tensors of one context used with another: a clear error, never another device's
/// data or a wgpu panic.
#[test]
fn buffers_and_tensors_of_another_context_are_refused() {
    let Some(a) = gpu() else { return };
    let b = GpuContext::new().expect("a second context on the same adapter");
    let on_b = b.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    let err = a.download(&on_b).unwrap_err();
    assert!(err.to_string().contains("another GPU device"), "{err}");
    assert!(a.write(&on_b, &[0.0]).is_err());
    let boxes_b = b.upload(&[[0.0f32, 0.0, 1.0, 1.0]]).unwrap();
    let scores_a = a.upload(&[0.5f32]).unwrap();
    let boxes_a = a.upload(&[[0.0f32, 0.0, 1.0, 1.0]]).unwrap();
    let mut encoder = a.device().create_command_encoder(&Default::default());
    let err = a
        .record_nms(&mut encoder, &Nms::hard(0.5), &boxes_b, &scores_a, None)
        .unwrap_err();
    assert!(err.to_string().contains("boxes"), "{err}");
    let out = a.zeros::<f32>(1).unwrap();
    assert!(a.record_box_iou(&mut encoder, &boxes_a, &boxes_b, &out).is_err());
    assert!(a.record_top_k(&mut encoder, &on_b, &[], None).is_err());
    // The context's own buffers still work, and a clone of a context is the same device.
    assert!(a.record_box_iou(&mut encoder, &boxes_a, &boxes_a, &out).is_ok());
    assert_eq!(a.clone().download(&scores_a).unwrap(), vec![0.5]);

    let mut ea = GpuEngine::new(&a).unwrap();
    let mut eb = GpuEngine::new(&b).unwrap();
    let s = Shape::new(1, 1, 1, 3);
    let x = ea.tensor(s, &[1.0, 2.0, 3.0]).unwrap();
    let y = eb.tensor(s, &[10.0, 20.0, 30.0]).unwrap();
    let err = ea.add(&x, &y).unwrap_err();
    assert!(err.to_string().contains("another GPU device"), "{err}");
    assert!(ea.read(&y).is_err());
    assert!(ea.relu(&y).is_err());
    let mut z = eb.zeros(s).unwrap();
    assert!(ea.accumulate(&mut z, &x).is_err());
    assert_eq!(ea.read(&x).unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(eb.read(&y).unwrap(), vec![10.0, 20.0, 30.0]);
}

// --- Numbers past the documented ranges: refused, or NaN where NaN is the documented answer -----

#[test]
fn anchor_configs_whose_anchors_would_overflow_are_refused() {
    let base = AnchorConfig::retinanet();
    let cases = [
        (
            "offset 1e38",
            AnchorConfig {
                offset: 1e38,
                ..base.clone()
            },
        ),
        (
            "offset x stride past 1e15",
            AnchorConfig {
                offset: 1e13,
                ..base.clone()
            },
        ),
        (
            "size x scale overflowing f32",
            AnchorConfig {
                sizes: vec![1e30; 5],
                scales: vec![1e10],
                ..base.clone()
            },
        ),
        (
            "size x scale past 1e15",
            AnchorConfig {
                sizes: vec![1e16; 5],
                ..base.clone()
            },
        ),
        (
            "a ratio whose sqrt underflows",
            AnchorConfig {
                aspect_ratios: vec![1e-45],
                ..base.clone()
            },
        ),
    ];
    for (what, config) in cases {
        let err = config.validate().expect_err(what).to_string();
        assert!(err.contains("anchors"), "{what}: {err}");
        for backend in common::backends() {
            let err = config.generate(&backend, 64, 64).expect_err(what).to_string();
            assert!(err.contains("anchors"), "{what} on {backend:?}: {err}");
        }
    }
    // The paper's anchors and a top-left offset still pass.
    base.validate().unwrap();
    AnchorConfig { offset: 0.0, ..base }.validate().unwrap();
}

#[test]
fn box_decoding_gives_an_all_nan_box_never_an_infinite_one() {
    let anchors = [[0.0, 0.0, 32.0, 32.0]; 4];
    // A delta past f32 after scaling by the anchor; a clamp at ln(f32::MAX) - 0.5 with a huge dw;
    // a NaN; and an ordinary delta, which decodes as before.
    let deltas = [
        [3e38, 0.0, 0.0, 0.0],
        [0.0, 0.0, 100.0, 0.0],
        [f32::NAN, 0.0, 0.0, 0.0],
        [0.1, -0.2, 0.3, 0.4],
    ];
    let coder = BoxCoder {
        clamp: f32::MAX.ln() - 0.5,
        ..BoxCoder::default()
    };
    let mut results = Vec::new();
    for backend in common::backends() {
        let boxes = coder.decode(&backend, &deltas, &anchors).unwrap();
        for (i, b) in boxes[..3].iter().enumerate() {
            assert!(b.iter().all(|v| v.is_nan()), "delta {i} on {backend:?}: {b:?}");
        }
        assert!(boxes[3].iter().all(|v| v.is_finite()), "{:?}", boxes[3]);
        results.push(boxes[3]);
    }
    if let [cpu, gpu] = &results[..] {
        common::assert_close("an ordinary delta on both backends", gpu, cpu, 1e-5, 1e-4);
    }
    // A clamp past ln(f32::MAX) (or NaN) is refused: exp of it is infinite.
    for clamp in [f32::INFINITY, 89.0, f32::NAN] {
        let coder = BoxCoder {
            clamp,
            ..BoxCoder::default()
        };
        for backend in common::backends() {
            let err = coder.decode(&backend, &deltas, &anchors).unwrap_err().to_string();
            assert!(err.contains("clamp"), "clamp {clamp}: {err}");
        }
    }
}

#[test]
fn post_processing_without_clipping_gives_overflowing_boxes_as_nan() {
    let anchors = [[0.0, 0.0, 32.0, 32.0], [32.0, 0.0, 64.0, 32.0]];
    let input = DetectionInput {
        logits: &[4.0, 3.0],
        deltas: &[[3e38, 0.0, 0.0, 0.0], [0.0; 4]],
        anchors: &anchors,
        level_offsets: &[0, 2],
        num_classes: 1,
        image_size: (32, 64),
    };
    let pp = PostProcess {
        clip_to_image: false,
        ..PostProcess::default()
    };
    for backend in common::backends() {
        let dets = pp.run(&backend, &input).unwrap();
        assert_eq!(dets[0].len(), 2, "{backend:?}: {:?}", dets[0]);
        let overflow = dets[0]
            .iter()
            .find(|d| d.score > 0.98)
            .expect("the first anchor's detection");
        assert!(overflow.bbox.iter().all(|v| v.is_nan()), "{backend:?}: {overflow:?}");
        let plain = dets[0]
            .iter()
            .find(|d| d.score < 0.98)
            .expect("the second anchor's detection");
        assert_eq!(plain.bbox, [32.0, 0.0, 64.0, 32.0], "{backend:?}");
    }
}

#[test]
fn giou_loss_of_huge_deltas_is_finite_and_of_nan_deltas_nan() {
    let anchors = [[0.0, 0.0, 32.0, 32.0], [10.0, 10.0, 50.0, 30.0]];
    let pred = [
        [1e30, -1e30, 1e30, -1e30],
        [-1e30, 1e30, 0.5, 1e30],
        [3e38, 0.0, -3e38, 0.0],
        [0.1, 0.2, -0.1, 0.0],
    ];
    let targets = [[0.1, -0.1, 0.2, 0.0], [0.0, 0.3, -0.2, 0.1], [0.0; 4], [0.0; 4]];
    let labels = [0, 1, 0, 1];
    let input = BoxLossInput {
        pred: &pred,
        targets: &targets,
        labels: &labels,
        anchors: &anchors,
    };
    let mut outputs = Vec::new();
    for backend in common::backends() {
        let out = BoxLoss::giou().compute(&backend, &input).unwrap();
        assert!(out.loss.is_finite() && out.sum.is_finite(), "{backend:?}: {out:?}");
        // Each term of 1 - GIoU lies in [0, 2].
        assert!((0.0..=8.0).contains(&out.sum), "{backend:?}: {}", out.sum);
        assert!(
            out.grad.iter().flatten().all(|g| g.is_finite()),
            "{backend:?}: {:?}",
            out.grad
        );
        outputs.push(out);
    }
    if let [cpu, gpu] = &outputs[..] {
        common::assert_close(
            "GIoU loss of huge deltas, CPU vs GPU",
            &[gpu.loss],
            &[cpu.loss],
            1e-5,
            1e-6,
        );
        let flat = |o: &BoxLossOutput| o.grad.iter().flatten().copied().collect::<Vec<f32>>();
        common::assert_close(
            "GIoU gradient of huge deltas, CPU vs GPU",
            &flat(gpu),
            &flat(cpu),
            1e-4,
            1e-6,
        );
    }
    // The saturated parts get no gradient: the first box's centre and width, the third's.
    let cpu = &outputs[0];
    assert_eq!(cpu.grad[0], [0.0; 4], "{:?}", cpu.grad[0]);
    // NaN in, NaN out.
    let nan_pred = [[f32::NAN, 0.0, 0.0, 0.0], [0.0; 4], [0.0; 4], [0.0; 4]];
    for backend in common::backends() {
        let out = BoxLoss::giou()
            .compute(
                &backend,
                &BoxLossInput {
                    pred: &nan_pred,
                    ..input
                },
            )
            .unwrap();
        assert!(out.loss.is_nan(), "{backend:?}: {}", out.loss);
    }
}

#[test]
fn normalisers_with_an_infinite_reciprocal_are_refused() {
    let logits = [1.0f32, -2.0, 0.5, 3.0];
    let labels = [0, -1];
    let input = FocalInput::labels(&logits[..], &labels, 2);
    let pred = [[0.1, 0.2, 0.3, 0.4]];
    let anchors = [[0.0, 0.0, 8.0, 8.0]];
    let boxes = BoxLossInput {
        pred: &pred,
        targets: &[[0.0; 4]],
        labels: &[0],
        anchors: &anchors,
    };
    for backend in common::backends() {
        for v in [1e-45, 0.0, -1.0, f32::INFINITY] {
            let focal = FocalLoss::retinanet().with_reduction(Reduction::Normalized(v));
            let err = focal.compute(&backend, &input).unwrap_err().to_string();
            assert!(err.contains("normaliser"), "focal {v:e} on {backend:?}: {err}");
            let boxes_loss = BoxLoss {
                reduction: BoxReduction::Normalized(v),
                ..BoxLoss::smooth_l1(1.0 / 9.0)
            };
            let err = boxes_loss.compute(&backend, &boxes).unwrap_err().to_string();
            assert!(err.contains("normaliser"), "box {v:e} on {backend:?}: {err}");
        }
        // The smallest normal normaliser is accepted, and scales the loss by its reciprocal.
        let v = f32::MIN_POSITIVE;
        let focal = FocalLoss::retinanet().with_reduction(Reduction::Normalized(v));
        let out = focal.compute(&backend, &input).unwrap();
        assert!(out.grad.unwrap().iter().all(|g| g.is_finite()), "{backend:?}");
    }
}

#[test]
fn layer_errors_name_the_operation() {
    fn check<E: Engine>(e: &mut E, what: &str) {
        // Rows that do not fit the head: the backward pass names itself.
        let rows = e.zeros(Shape::new(1, 1, 10, 4)).unwrap();
        let Err(err) = e.permute_head_backward(&rows, 9, 0, Shape::new(1, 36, 4, 4)) else {
            panic!("{what}: rows that do not fit were accepted");
        };
        let err = err.to_string();
        assert!(err.contains("permute head backward"), "{what}: {err}");
        // An upsampled output whose size cannot be counted or held.
        let x = e.zeros(Shape::new(1, 1, 1, 1)).unwrap();
        let Err(err) = e.upsample_nearest(&x, 1 << 31, 1 << 31) else {
            panic!("{what}: an upsampling to 2^31 x 2^31 was accepted");
        };
        let err = err.to_string();
        assert!(err.contains("upsample"), "{what}: {err}");
    }
    check(&mut CpuEngine::<f32>::new(), "CPU");
    if let Some(ctx) = gpu() {
        check(&mut GpuEngine::new(&ctx).unwrap(), "GPU");
    }
}
