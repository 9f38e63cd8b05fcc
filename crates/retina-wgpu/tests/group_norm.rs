//! GroupNorm: the forward pass against a direct f64 implementation and PyTorch's vectors, the
//! backward pass against f64 finite differences on the CPU backend and PyTorch's gradients,
//! the GPU against the CPU at the small RetinaNet's shapes and odd ones, the tensor pool, empty
//! batches and shape errors.

mod common;

use common::{Rng, assert_gradient, dot, finite_differences, golden, gpu, gpu_with, random};
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine, GroupNorm, Shape};
use retina_wgpu::{Error, GpuOptions, LimitCaps};

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// GroupNorm as the paper writes it, in f64: per image and group, the mean and the biased
/// variance, then `gamma * (x - mean) / sqrt(var + eps) + beta` per channel. Returns y and the
/// (mean, rstd) of each image and group.
fn reference(gn: &GroupNorm, s: Shape, x: &[f64], gamma: &[f64], beta: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let cpg = gn.channels / gn.groups;
    let mut y = vec![0.0; s.len()];
    let mut stats = Vec::new();
    for n in 0..s.n {
        for g in 0..gn.groups {
            let idx = |j: usize, p: usize| (n * s.c + g * cpg + j) * s.plane() + p;
            let mut values = Vec::new();
            for j in 0..cpg {
                for p in 0..s.plane() {
                    values.push(x[idx(j, p)]);
                }
            }
            let m = values.len() as f64;
            let mean = values.iter().sum::<f64>() / m;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            let rstd = 1.0 / (var + f64::from(gn.eps)).sqrt();
            stats.extend([mean, rstd]);
            for j in 0..cpg {
                let c = g * cpg + j;
                for p in 0..s.plane() {
                    y[idx(j, p)] = gamma[c] * (x[idx(j, p)] - mean) * rstd + beta[c];
                }
            }
        }
    }
    (y, stats)
}

/// Cases that break implementations: the small RetinaNet's group sizes (4 channels below 64
/// channels, 16 groups above), 1 x 1 planes (a group of 4 values), one group, one channel per
/// group, odd and non-square planes, a mean far from zero.
fn odd_cases() -> Vec<(GroupNorm, Shape, f32)> {
    vec![
        (GroupNorm::new(6, 3), Shape::new(2, 6, 5, 3), 0.0),
        (GroupNorm::small_retinanet(16), Shape::new(2, 16, 1, 1), 0.0),
        (GroupNorm::small_retinanet(32), Shape::new(1, 32, 3, 2), 0.0),
        (GroupNorm::new(8, 1), Shape::new(3, 8, 7, 1), 0.0),
        (GroupNorm::new(5, 5), Shape::new(2, 5, 2, 3), 0.0),
        (GroupNorm::small_retinanet(96), Shape::new(1, 96, 2, 2), 0.0),
        (GroupNorm::new(12, 4), Shape::new(2, 12, 3, 3), 100.0),
    ]
}

fn check_f64(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn small_retinanet_groups_follow_the_design() {
    let groups: Vec<usize> = [16, 32, 64, 96, 128, 256]
        .iter()
        .map(|&c| GroupNorm::small_retinanet(c).groups)
        .collect();
    assert_eq!(groups, [4, 8, 16, 16, 16, 16]);
    for c in [16, 32, 64, 96, 128, 256] {
        GroupNorm::small_retinanet(c).validate().unwrap();
    }
    assert_eq!(GroupNorm::new(256, 32).param_shape(), Shape::new(1, 256, 1, 1));
    assert_eq!(GroupNorm::new(256, 32).stats_shape(8), Shape::new(8, 32, 1, 2));
    assert_eq!(GroupNorm::new(256, 32).eps, 1e-5);
}

#[test]
fn forward_matches_a_direct_f64_reference() {
    let mut rng = Rng::new(11);
    let mut e64 = CpuEngine::<f64>::new();
    let mut e32 = CpuEngine::<f32>::new();
    let ctx = gpu();
    let mut g = ctx.as_ref().map(|c| GpuEngine::new(c).unwrap());
    for (gn, s, offset) in odd_cases() {
        let x: Vec<f32> = random(&mut rng, s.len()).iter().map(|v| 2.0 * v + offset).collect();
        let gamma: Vec<f32> = random(&mut rng, s.c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = random(&mut rng, s.c);
        let (want_y, want_stats) = reference(&gn, s, &to64(&x), &to64(&gamma), &to64(&beta));
        let what = format!("{gn} on {s}");

        let (xt, gt, bt) = (
            e64.tensor(s, &x).unwrap(),
            e64.tensor(gn.param_shape(), &gamma).unwrap(),
            e64.tensor(gn.param_shape(), &beta).unwrap(),
        );
        let out = e64.group_norm(&gn, &xt, &gt, &bt).unwrap();
        assert_eq!(out.stats.shape(), gn.stats_shape(s.n));
        check_f64(&format!("f64 {what} y"), out.y.data(), &want_y, 1e-12);
        check_f64(&format!("f64 {what} stats"), out.stats.data(), &want_stats, 1e-12);

        fn run<E: Engine>(
            e: &mut E,
            gn: &GroupNorm,
            s: Shape,
            x: &[f32],
            gamma: &[f32],
            beta: &[f32],
        ) -> [Vec<f64>; 2] {
            let (xt, gt, bt) = (
                e.tensor(s, x).unwrap(),
                e.tensor(gn.param_shape(), gamma).unwrap(),
                e.tensor(gn.param_shape(), beta).unwrap(),
            );
            let out = e.group_norm(gn, &xt, &gt, &bt).unwrap();
            [to64(&e.read(&out.y).unwrap()), to64(&e.read(&out.stats).unwrap())]
        }
        // f32 keeps about 1e-6 of the output's scale; the mean's offset costs its ratio to std.
        let tol = 4e-6 * (1.0 + f64::from(offset) / 2.0);
        let [y, stats] = run(&mut e32, &gn, s, &x, &gamma, &beta);
        check_f64(&format!("cpu f32 {what} y"), &y, &want_y, tol);
        check_f64(&format!("cpu f32 {what} stats"), &stats, &want_stats, 1e-6);
        if let Some(g) = g.as_mut() {
            let [y, stats] = run(g, &gn, s, &x, &gamma, &beta);
            check_f64(&format!("gpu {what} y"), &y, &want_y, tol);
            check_f64(&format!("gpu {what} stats"), &stats, &want_stats, 1e-6);
        }
    }
}

#[test]
fn backward_matches_f64_finite_differences() {
    let mut rng = Rng::new(12);
    let mut e = CpuEngine::<f64>::new();
    let mut e2 = CpuEngine::<f64>::new();
    for (gn, s, offset) in odd_cases() {
        let x: Vec<f64> = to64(&random(&mut rng, s.len()))
            .iter()
            .map(|v| v + f64::from(offset))
            .collect();
        let gamma: Vec<f64> = to64(&random(&mut rng, s.c)).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = to64(&random(&mut rng, s.c));
        let r = to64(&random(&mut rng, s.len()));
        let p = gn.param_shape();
        let mut xt = e.tensor_from(s, &x).unwrap();
        let mut gt = e.tensor_from(p, &gamma).unwrap();
        let mut bt = e.tensor_from(p, &beta).unwrap();
        let out = e.group_norm(&gn, &xt, &gt, &bt).unwrap();
        let dy = e.tensor_from(s, &r).unwrap();
        let grads = e.group_norm_backward(&gn, &xt, &gt, &out.stats, &dy).unwrap();
        assert_eq!(
            (grads.input.shape(), grads.gamma.shape(), grads.beta.shape()),
            (s, p, p)
        );
        let what = format!("{gn} on {s}");

        let fd = finite_differences(&mut rng, &mut xt, 40, &mut |xv| {
            let (g, b) = (e2.tensor_from(p, &gamma).unwrap(), e2.tensor_from(p, &beta).unwrap());
            dot(e2.group_norm(&gn, xv, &g, &b).unwrap().y.data(), &r)
        });
        assert_gradient(&format!("{what} input"), grads.input.data(), &fd);
        let fd = finite_differences(&mut rng, &mut gt, 40, &mut |gv| {
            let (xv, b) = (e2.tensor_from(s, &x).unwrap(), e2.tensor_from(p, &beta).unwrap());
            dot(e2.group_norm(&gn, &xv, gv, &b).unwrap().y.data(), &r)
        });
        assert_gradient(&format!("{what} gamma"), grads.gamma.data(), &fd);
        let fd = finite_differences(&mut rng, &mut bt, 40, &mut |bv| {
            let (xv, g) = (e2.tensor_from(s, &x).unwrap(), e2.tensor_from(p, &gamma).unwrap());
            dot(e2.group_norm(&gn, &xv, &g, bv).unwrap().y.data(), &r)
        });
        assert_gradient(&format!("{what} beta"), grads.beta.data(), &fd);
    }
}

/// Vectors from `torch.nn.GroupNorm` in float64 (scripts/group_norm_reference.py), read by
/// [`common::golden`]'s rule: from `RETINA_GOLDEN_DIR` when it holds group_norm.json, else from
/// tests/golden/ (the shared torchvision vectors do not include them).
#[test]
fn matches_pytorch_group_norm_forward_and_backward() {
    let file = golden("group_norm.json");
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let ctx = gpu();
    let mut g = ctx.as_ref().map(|c| GpuEngine::new(c).unwrap());
    for case in cases {
        let dims: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let s = Shape::new(dims[0], dims[1], dims[2], dims[3]);
        let gn = GroupNorm {
            eps: case["eps"].as_f64().unwrap() as f32,
            ..GroupNorm::new(s.c, case["groups"].as_u64().unwrap() as usize)
        };
        let f32s = |k: &str| common::f32s(&case[k]);
        let f64s = |k: &str| -> Vec<f64> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let (x, gamma, beta, r) = (f32s("x"), f32s("gamma"), f32s("beta"), f32s("r"));
        let stats: Vec<f64> = f64s("mean")
            .into_iter()
            .zip(f64s("rstd"))
            .flat_map(|(m, r)| [m, r])
            .collect();
        let want = [f64s("y"), stats, f64s("grad_x"), f64s("grad_gamma"), f64s("grad_beta")];
        let names = ["y", "stats", "grad x", "grad gamma", "grad beta"];

        fn run<E: Engine>(e: &mut E, gn: &GroupNorm, s: Shape, [x, gamma, beta, r]: [&[f32]; 4]) -> Vec<Vec<f64>> {
            let (xt, gt, bt, rt) = (
                e.tensor(s, x).unwrap(),
                e.tensor(gn.param_shape(), gamma).unwrap(),
                e.tensor(gn.param_shape(), beta).unwrap(),
                e.tensor(s, r).unwrap(),
            );
            let out = e.group_norm(gn, &xt, &gt, &bt).unwrap();
            let grads = e.group_norm_backward(gn, &xt, &gt, &out.stats, &rt).unwrap();
            [&out.y, &out.stats, &grads.input, &grads.gamma, &grads.beta]
                .iter()
                .map(|t| to64(&e.read(t).unwrap()))
                .collect()
        }
        let inputs = [&x[..], &gamma, &beta, &r];
        let what = format!("{gn} on {s}");
        // In f64 end to end (`read` would round to f32); eps is an f32, 1e-3 off by 5e-11.
        let mut e = CpuEngine::<f64>::new();
        let (xt, gt, bt, rt) = (
            e.tensor(s, &x).unwrap(),
            e.tensor(gn.param_shape(), &gamma).unwrap(),
            e.tensor(gn.param_shape(), &beta).unwrap(),
            e.tensor(s, &r).unwrap(),
        );
        let out = e.group_norm(&gn, &xt, &gt, &bt).unwrap();
        let grads = e.group_norm_backward(&gn, &xt, &gt, &out.stats, &rt).unwrap();
        let got = [&out.y, &out.stats, &grads.input, &grads.gamma, &grads.beta];
        for ((name, got), want) in names.iter().zip(got).zip(&want) {
            check_f64(&format!("cpu f64 {what} {name}"), got.data(), want, 1e-10);
        }
        let got = run(&mut CpuEngine::<f32>::new(), &gn, s, inputs);
        for ((name, got), want) in names.iter().zip(&got).zip(&want) {
            check_f64(&format!("cpu f32 {what} {name}"), got, want, 1e-5);
        }
        if let Some(g) = g.as_mut() {
            let got = run(g, &gn, s, inputs);
            for ((name, got), want) in names.iter().zip(&got).zip(&want) {
                check_f64(&format!("gpu {what} {name}"), got, want, 1e-5);
            }
        }
    }
}

/// The GroupNorms of the small RetinaNet at batch 8 and 128 x 128 (backbone C1-C5, heads on
/// P3-P7), the paper's 256 channels in 32 groups, and odd shapes.
fn parity_cases() -> Vec<(GroupNorm, Shape)> {
    let mut v = Vec::new();
    for (c, size) in [(16, 64), (32, 32), (64, 16), (96, 8), (128, 4)] {
        v.push((GroupNorm::small_retinanet(c), Shape::new(8, c, size, size)));
    }
    for size in [16, 8, 4, 2, 1] {
        v.push((GroupNorm::small_retinanet(64), Shape::new(8, 64, size, size)));
    }
    v.push((GroupNorm::small_retinanet(16), Shape::new(8, 16, 1, 1)));
    v.push((GroupNorm::small_retinanet(32), Shape::new(8, 32, 2, 2)));
    v.push((GroupNorm::new(256, 32), Shape::new(2, 256, 10, 13)));
    v.push((GroupNorm::new(24, 6), Shape::new(3, 24, 7, 5)));
    v.push((GroupNorm::new(6, 1), Shape::new(1, 6, 33, 17)));
    // Groups of 65,536 values (the largest the GPU runs with one workgroup per group) and
    // 67,080 (statistics, then an elementwise map over the whole device).
    v.push((GroupNorm::new(8, 2), Shape::new(2, 8, 128, 128)));
    v.push((GroupNorm::new(4, 1), Shape::new(2, 4, 129, 130)));
    // 1,024 channels in one group of 1 x 1 planes: few values, but too many channels for one
    // workgroup's channel-by-channel backward walk (FUSED_MAX_GROUP_CHANNELS), so two passes.
    v.push((GroupNorm::new(1024, 1), Shape::new(2, 1024, 1, 1)));
    v
}

/// Whether the GPU runs GroupNorm `gn` on `s` with one workgroup per group (forward in one
/// dispatch, backward in two; src/gpu/group_norm.rs's FUSED_MAX_GROUP and
/// FUSED_MAX_GROUP_CHANNELS).
fn one_workgroup_per_group(gn: &GroupNorm, s: Shape) -> bool {
    gn.channels_per_group() <= 256 && gn.channels_per_group() * s.h * s.w <= 1 << 16
}

/// Dispatches of the kernels named `kernels` recorded on `ctx` while `f` ran.
fn dispatches_of<R>(ctx: &retina_wgpu::GpuContext, kernels: [&str; 2], f: impl FnOnce() -> R) -> (R, [u64; 2]) {
    let count = |ctx: &retina_wgpu::GpuContext| {
        let work = ctx.kernel_work();
        kernels.map(|k| work.iter().find(|(n, _)| *n == k).map_or(0, |(_, w)| w.dispatches))
    };
    let before = count(ctx);
    let r = f();
    let after = count(ctx);
    (r, [after[0] - before[0], after[1] - before[1]])
}

/// |got - want| <= rtol (|want| + 1e-2 max |want|) + 1e-6 elementwise (as tests/nn.rs): sums of
/// thousands of terms that nearly cancel are compared at the scale of their neighbours.
#[track_caller]
fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * (w.abs() + 1e-2 * scale) + 1e-6,
            "{what}[{i}]: gpu {g} vs cpu {w}"
        );
    }
}

/// On the default context (subgroup reductions where the device has them) and on one with
/// workgroup-memory reductions only and at most 100 workgroups per grid dimension, so that
/// every kernel's 2-D grid folding and bounds checks run; both the one-workgroup-per-group
/// passes and, for the largest groups, the device-wide ones (counted on each context).
#[test]
fn gpu_matches_cpu_forward_and_backward() {
    // A context of its own: the shared one's kernel counters also count the other tests' work.
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let plain = gpu_with(GpuOptions {
        subgroups: false,
        caps: LimitCaps {
            max_workgroups_per_dim: Some(100),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    assert!(!plain.uses_subgroups());
    let mut c = CpuEngine::<f32>::new();
    fn run<E: Engine>(e: &mut E, gn: &GroupNorm, s: Shape, inputs: [&[f32]; 4]) -> Vec<Vec<f32>> {
        let [x, gamma, beta, dy] = inputs;
        let (xt, gt, bt, dyt) = (
            e.tensor(s, x).unwrap(),
            e.tensor(gn.param_shape(), gamma).unwrap(),
            e.tensor(gn.param_shape(), beta).unwrap(),
            e.tensor(s, dy).unwrap(),
        );
        let out = e.group_norm(gn, &xt, &gt, &bt).unwrap();
        let grads = e.group_norm_backward(gn, &xt, &gt, &out.stats, &dyt).unwrap();
        [&out.y, &out.stats, &grads.input, &grads.gamma, &grads.beta]
            .iter()
            .map(|t| e.read(t).unwrap())
            .collect()
    }
    for context in [ctx, plain] {
        let mut g = GpuEngine::new(&context).unwrap();
        let mut rng = Rng::new(13);
        let (mut one, mut two) = (0, 0);
        for (gn, s) in parity_cases() {
            let x: Vec<f32> = random(&mut rng, s.len()).iter().map(|v| 0.5 + 2.0 * v).collect();
            let gamma: Vec<f32> = random(&mut rng, s.c).iter().map(|v| 1.0 + 0.5 * v).collect();
            let (beta, dy) = (random(&mut rng, s.c), random(&mut rng, s.len()));
            let inputs = [&x[..], &gamma, &beta, &dy];
            let want = run(&mut c, &gn, s, inputs);
            let kernels = ["GroupNormForward", "GroupNormBackward"];
            let (got, counts) = dispatches_of(&context, kernels, || run(&mut g, &gn, s, inputs));
            let fused = one_workgroup_per_group(&gn, s);
            assert_eq!(counts, [fused as u64; 2], "{gn} on {s}: the passes' path");
            if fused {
                one += 1
            } else {
                two += 1
            }
            for ((name, got), want) in ["y", "stats", "grad x", "grad gamma", "grad beta"]
                .iter()
                .zip(&got)
                .zip(&want)
            {
                let what = format!("subgroups {}: {gn} on {s}: {name}", context.uses_subgroups());
                assert_close_scaled(&what, got, want, 1e-4);
            }
        }
        assert!(one > 0 && two > 0, "both paths ran ({one} and {two} cases)");
    }
}

/// GroupNorm with ReLU fused into its passes (`group_norm_relu` and its backward, on the CPU
/// and on the GPU) against the two run one after the other, the engine trait's default: the
/// same values, bit for bit, since the fused passes do the same arithmetic on the same values.
#[test]
fn fused_relu_matches_group_norm_then_relu() {
    fused_relu_matches_on(&mut CpuEngine::<f32>::new());
    if let Some(ctx) = gpu() {
        fused_relu_matches_on(&mut GpuEngine::new(&ctx).unwrap());
    }
}

fn fused_relu_matches_on<E: Engine>(e: &mut E) {
    let mut rng = Rng::new(17);
    for (gn, s, shift) in odd_cases() {
        let x: Vec<f32> = random(&mut rng, s.len()).iter().map(|v| v + shift).collect();
        let gamma: Vec<f32> = random(&mut rng, s.c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let (beta, dy) = (random(&mut rng, s.c), random(&mut rng, s.len()));
        let (xt, gt, bt, dyt) = (
            e.tensor(s, &x).unwrap(),
            e.tensor(gn.param_shape(), &gamma).unwrap(),
            e.tensor(gn.param_shape(), &beta).unwrap(),
            e.tensor(s, &dy).unwrap(),
        );
        let plain = e.group_norm(&gn, &xt, &gt, &bt).unwrap();
        let relu = e.relu(&plain.y).unwrap();
        let through_relu = e.relu_backward(&plain.y, &dyt).unwrap();
        let want = e
            .group_norm_backward(&gn, &xt, &gt, &plain.stats, &through_relu)
            .unwrap();
        let fused = e.group_norm_relu(&gn, &xt, &gt, &bt).unwrap();
        let got = e
            .group_norm_relu_backward(&gn, &xt, &gt, &fused.stats, &fused.y, &dyt)
            .unwrap();
        let (relu, fused_y) = (e.read(&relu).unwrap(), e.read(&fused.y).unwrap());
        assert!(relu.contains(&0.0) && relu.iter().any(|&v| v > 0.0), "{gn} on {s}");
        assert_eq!(fused_y, relu, "y of {gn} on {s}");
        assert_eq!(
            e.read(&fused.stats).unwrap(),
            e.read(&plain.stats).unwrap(),
            "stats of {gn} on {s}"
        );
        for (name, got, want) in [
            ("grad x", &got.input, &want.input),
            ("grad gamma", &got.gamma, &want.gamma),
            ("grad beta", &got.beta, &want.beta),
        ] {
            assert_eq!(e.read(got).unwrap(), e.read(want).unwrap(), "{name} of {gn} on {s}");
        }
    }
}

fn empty_batch_gives_empty_tensors<E: Engine>(e: &mut E) {
    let gn = GroupNorm::small_retinanet(32);
    let s = Shape::new(0, 32, 8, 8);
    let x = e.tensor(s, &[]).unwrap();
    let gamma = e.tensor(gn.param_shape(), &[1.0; 32]).unwrap();
    let beta = e.zeros(gn.param_shape()).unwrap();
    let out = e.group_norm(&gn, &x, &gamma, &beta).unwrap();
    assert_eq!(E::shape(&out.y), s);
    assert_eq!(E::shape(&out.stats), Shape::new(0, 8, 1, 2));
    assert!(e.read(&out.y).unwrap().is_empty());
    let grads = e.group_norm_backward(&gn, &x, &gamma, &out.stats, &x).unwrap();
    assert_eq!(E::shape(&grads.input), s);
    assert_eq!(e.read(&grads.gamma).unwrap(), vec![0.0; 32]);
    assert_eq!(e.read(&grads.beta).unwrap(), vec![0.0; 32]);
}

#[test]
fn an_empty_batch_gives_empty_tensors() {
    empty_batch_gives_empty_tensors(&mut CpuEngine::<f32>::new());
    empty_batch_gives_empty_tensors(&mut CpuEngine::<f64>::new());
    if let Some(ctx) = gpu() {
        empty_batch_gives_empty_tensors(&mut GpuEngine::new(&ctx).unwrap());
    }
}

fn pool_stops_allocating<E: Engine>(e: &mut E) {
    let gn = GroupNorm::small_retinanet(32);
    let s = Shape::new(2, 32, 6, 5);
    let mut rng = Rng::new(14);
    let (x, dy) = (random(&mut rng, s.len()), random(&mut rng, s.len()));
    let gamma = e.tensor(gn.param_shape(), &random(&mut rng, 32)).unwrap();
    let beta = e.tensor(gn.param_shape(), &random(&mut rng, 32)).unwrap();
    let step = |e: &mut E| {
        let (xt, dyt) = (e.tensor(s, &x).unwrap(), e.tensor(s, &dy).unwrap());
        let out = e.group_norm(&gn, &xt, &gamma, &beta).unwrap();
        let grads = e.group_norm_backward(&gn, &xt, &gamma, &out.stats, &dyt).unwrap();
        drop((out, grads));
        e.sync().unwrap();
    };
    step(e);
    let first = e.pool_stats();
    step(e);
    step(e);
    let third = e.pool_stats();
    assert_eq!(
        (third.allocations, third.scratch_allocations),
        (first.allocations, first.scratch_allocations),
        "{first:?} then {third:?}"
    );
    assert!(third.reuses > first.reuses);
}

#[test]
fn a_step_allocates_no_tensor_after_the_first() {
    pool_stops_allocating(&mut CpuEngine::<f32>::new());
    if let Some(ctx) = gpu() {
        pool_stops_allocating(&mut GpuEngine::new(&ctx).unwrap());
    }
}

fn bad_shapes_are_errors<E: Engine>(e: &mut E)
where
    E::Tensor: std::fmt::Debug,
{
    let gn = GroupNorm::new(32, 8);
    let s = Shape::new(2, 32, 4, 4);
    let x = e.zeros(s).unwrap();
    let p = e.zeros(gn.param_shape()).unwrap();
    let ok = e.group_norm(&gn, &x, &p, &p).unwrap();
    let dy = e.zeros(s).unwrap();

    // The geometry itself.
    for bad in [GroupNorm::new(32, 6), GroupNorm::new(32, 0), GroupNorm::new(0, 1)] {
        let err = e.group_norm(&bad, &x, &p, &p).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter(_)), "{bad}: {err}");
        assert!(err.to_string().contains("group norm"), "{err}");
    }
    let err = e
        .group_norm(&GroupNorm { eps: f32::NAN, ..gn }, &x, &p, &p)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParameter(_)), "{err}");
    assert!(
        GroupNorm::new(30, 4)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("30 channels")
    );

    // The input's channels, gamma and beta.
    let x16 = e.zeros(Shape::new(2, 16, 4, 4)).unwrap();
    let err = e.group_norm(&gn, &x16, &p, &p).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { op: "group norm", .. }) && err.to_string().contains("[2, 16, 4, 4]"),
        "{err}"
    );
    let flat = e.zeros(Shape::new(1, 1, 1, 32)).unwrap();
    let err = e.group_norm(&gn, &x, &flat, &p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "group norm gamma",
                ..
            }
        ) && err.to_string().contains("[1, 32, 1, 1]"),
        "{err}"
    );
    let short = e.zeros(Shape::new(1, 16, 1, 1)).unwrap();
    let err = e.group_norm(&gn, &x, &p, &short).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "group norm beta",
                ..
            }
        ),
        "{err}"
    );
    let no_pixels = e.zeros(Shape::new(2, 32, 0, 3)).unwrap();
    let err = e.group_norm(&gn, &no_pixels, &p, &p).unwrap_err();
    assert!(err.to_string().contains("at least one pixel"), "{err}");

    // The backward pass's statistics and output gradient.
    let err = e.group_norm_backward(&gn, &x, &p, &ok.stats, &x16).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "group norm backward",
                ..
            }
        ),
        "{err}"
    );
    let other = e.zeros(Shape::new(3, 8, 1, 2)).unwrap();
    let err = e.group_norm_backward(&gn, &x, &p, &other, &dy).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "group norm backward statistics",
                ..
            }
        ) && err.to_string().contains("[2, 8, 1, 2]"),
        "{err}"
    );
    let err = e.group_norm_backward(&gn, &x, &short, &ok.stats, &dy).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "group norm backward gamma",
                ..
            }
        ),
        "{err}"
    );
    let err = e
        .group_norm_backward(&GroupNorm::new(32, 5), &x, &p, &ok.stats, &dy)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParameter(_)), "{err}");
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    bad_shapes_are_errors(&mut CpuEngine::<f32>::new());
    if let Some(ctx) = gpu() {
        bad_shapes_are_errors(&mut GpuEngine::new(&ctx).unwrap());
    }
}

/// A group so large that one invocation of group_norm_stats.wgsl would loop past the budget a
/// device runs reliably (lavapipe stops at 65,535 iterations) is refused, not miscomputed.
#[test]
fn a_group_beyond_the_gpu_loop_budget_is_an_error() {
    let Some(ctx) = gpu() else { return };
    let mut g = GpuEngine::new(&ctx).unwrap();
    let gn = GroupNorm::new(1, 1);
    let x = g.zeros(Shape::new(1, 1, 8192, 1000)).unwrap();
    let p = g.zeros(gn.param_shape()).unwrap();
    let err = g.group_norm(&gn, &x, &p, &p).unwrap_err();
    assert!(
        matches!(err, Error::InvalidParameter(_)) && err.to_string().contains("loop steps"),
        "{err}"
    );
}
