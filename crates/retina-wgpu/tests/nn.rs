//! The network layers: convolution against a direct f64 reference, every backward against f64
//! finite differences on the CPU backend, the GPU against the CPU at the small RetinaNet's
//! shapes and at odd shapes, SGD and initialisation, the tensor pool, and shape errors.

mod common;

use common::{Rng, assert_gradient, dot, finite_differences, gpu, random, reference_conv};
use retina_wgpu::Error;
use retina_wgpu::nn::{Conv2d, CpuEngine, Engine, GpuEngine, Init, LrSchedule, SeededRng, Sgd, Shape};

/// A convolution with every field given.
fn conv(in_channels: usize, out_channels: usize, kernel: (usize, usize), stride: usize, padding: usize) -> Conv2d {
    Conv2d {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
    }
}

/// Convolutions with the cases that break implementations: stride 2 on odd sizes, 1x1
/// kernels, 1x1 images, one channel, non-square kernels and images, no padding, padding wider
/// than the kernel.
fn odd_convs() -> Vec<(Conv2d, Shape)> {
    vec![
        (Conv2d::new(3, 5, 3, 2), Shape::new(2, 3, 7, 5)),
        (Conv2d::new(4, 6, 1, 1), Shape::new(2, 4, 7, 5)),
        (Conv2d::new(1, 1, 3, 1), Shape::new(1, 1, 1, 1)),
        (Conv2d::new(1, 3, 3, 2), Shape::new(3, 1, 1, 1)),
        (conv(2, 3, (3, 2), 2, 0), Shape::new(2, 2, 9, 6)),
        (Conv2d::new(5, 4, 3, 1), Shape::new(1, 5, 6, 9)),
        (Conv2d::new(2, 70, 3, 2), Shape::new(2, 2, 13, 11)),
        // Padding wider than the kernel's reach: whole rows and columns of taps see only zeros.
        (conv(2, 3, (3, 3), 2, 2), Shape::new(2, 2, 5, 4)),
        (conv(3, 2, (1, 1), 1, 1), Shape::new(2, 3, 4, 3)),
        (conv(1, 2, (5, 5), 1, 1), Shape::new(2, 1, 3, 3)),
        // Stride 2 with K per phase long enough to split (200 x 4 taps) over few output tiles: the
        // GPU's input gradient sums split partials of each phase onto that phase's pixels.
        (Conv2d::new(3, 200, 3, 2), Shape::new(1, 3, 5, 6)),
        // 16 or fewer channels over more than 64 pixels, ragged (143 = 128 + 15 columns): the 16
        // x 128 tiles of the forward pass and the input gradient.
        (Conv2d::new(5, 7, 3, 1), Shape::new(1, 5, 11, 13)),
        // More than 64 channels over at most 8 pixels, ragged (150 = 128 + 22 rows, 6 of 8
        // columns): the 128 x 8 tiles of the forward pass (150 rows) and the input gradient (70).
        (Conv2d::new(70, 150, 3, 1), Shape::new(2, 70, 1, 3)),
        // Three channels over more than 64 pixels, ragged (135 = 128 + 7 columns): the 4 x 128
        // tiles of the input gradient, then of the forward pass (3 rows, 135 columns) and the
        // weight gradient (3 rows, 72 columns).
        (Conv2d::new(3, 6, 3, 1), Shape::new(1, 3, 9, 15)),
        (Conv2d::new(8, 3, 3, 1), Shape::new(1, 8, 9, 15)),
        // More than 64 output channels and at most 8 weight columns (2 input channels, 1 x 1):
        // the 128 x 8 tile of the weight gradient.
        (Conv2d::new(2, 70, 1, 1), Shape::new(2, 2, 5, 3)),
        // More than 32 rows over more than 64 columns in at least 2 workgroups, ragged: the 64 x
        // 128 tiles of 8 x 16 blocks in all three products (34 x 135 forward, 33 x 135 input
        // gradient, 34 x 297 weight gradient).
        (Conv2d::new(33, 34, 3, 1), Shape::new(1, 33, 9, 15)),
        // 17-32 rows over more than 64 columns in 2 workgroups, ragged: the 32 x 128 tiles
        // (24 x 135 forward, 20 x 135 input gradient, 24 x 180 weight gradient).
        (Conv2d::new(20, 24, 3, 1), Shape::new(1, 20, 9, 15)),
        // The same over 96 pixels: a 128-wide tile would be one workgroup, so the forward pass
        // and the input gradient fall back to the 64 x 64 and 32 x 64 tiles (ragged: 34 or 33
        // rows, 96 columns); the weight gradients stay in the 64 x 128 and 32 x 128 tiles.
        (Conv2d::new(33, 34, 3, 1), Shape::new(1, 33, 8, 12)),
        (Conv2d::new(20, 24, 3, 1), Shape::new(1, 20, 8, 12)),
    ]
}

/// Every distinct convolution of the small RetinaNet (docs/ARCHITECTURE.md) at batch 8, 128 x 128, with
/// K = 20 classes and A = 9 anchors.
fn retinanet_convs(batch: usize) -> Vec<(Conv2d, Shape)> {
    let mut v = Vec::new();
    let chans = [3, 16, 32, 64, 96, 128];
    let mut size = 128;
    for stage in 0..5 {
        v.push((
            Conv2d::new(chans[stage], chans[stage + 1], 3, 2),
            Shape::new(batch, chans[stage], size, size),
        ));
        size /= 2;
        v.push((
            Conv2d::new(chans[stage + 1], chans[stage + 1], 3, 1),
            Shape::new(batch, chans[stage + 1], size, size),
        ));
    }
    for (c, s) in [(64, 16), (96, 8), (128, 4)] {
        v.push((Conv2d::new(c, 64, 1, 1), Shape::new(batch, c, s, s)));
    }
    v.push((Conv2d::new(64, 64, 3, 1), Shape::new(batch, 64, 16, 16)));
    v.push((Conv2d::new(128, 64, 3, 2), Shape::new(batch, 128, 4, 4)));
    v.push((Conv2d::new(64, 64, 3, 2), Shape::new(batch, 64, 2, 2)));
    v.push((Conv2d::new(64, 9 * 20, 3, 1), Shape::new(batch, 64, 16, 16)));
    v.push((Conv2d::new(64, 9 * 4, 3, 1), Shape::new(batch, 64, 8, 8)));
    v
}

#[test]
fn convolution_matches_a_direct_f64_reference() {
    let mut rng = Rng::new(1);
    let mut cpu = CpuEngine::<f32>::new();
    let ctx = gpu();
    let mut gpu_engine = ctx.as_ref().map(|c| GpuEngine::new(c).unwrap());
    for (c, s) in odd_convs() {
        let (x, w, b) = (
            random(&mut rng, s.len()),
            random(&mut rng, c.weight_shape().len()),
            random(&mut rng, c.out_channels),
        );
        let want = reference_conv(&c, &x, s, &w, &b);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let check = |got: Vec<f32>, what: &str| {
            assert_eq!(got.len(), want.len(), "{what} {c} on {s}");
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(g) - r).abs() <= 1e-5 * scale + 1e-5,
                    "{what} {c} on {s}: [{i}] {g} vs {r}"
                );
            }
        };
        let (xt, wt, bt) = (
            cpu.tensor(s, &x).unwrap(),
            cpu.tensor(c.weight_shape(), &w).unwrap(),
            cpu.tensor(c.bias_shape(), &b).unwrap(),
        );
        let y = cpu.conv2d(&c, &xt, &wt, Some(&bt)).unwrap();
        check(cpu.read(&y).unwrap(), "cpu");
        if let Some(g) = gpu_engine.as_mut() {
            let (xt, wt, bt) = (
                g.tensor(s, &x).unwrap(),
                g.tensor(c.weight_shape(), &w).unwrap(),
                g.tensor(c.bias_shape(), &b).unwrap(),
            );
            let y = g.conv2d(&c, &xt, &wt, Some(&bt)).unwrap();
            check(g.read(&y).unwrap(), "gpu");
        }
    }
}

#[test]
fn every_backward_matches_f64_finite_differences() {
    let mut rng = Rng::new(2);
    let mut e = CpuEngine::<f64>::new();
    let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    for (c, s) in odd_convs() {
        let out = c.output_shape(s).unwrap();
        let mut x = e.tensor_from(s, &to64(random(&mut rng, s.len()))).unwrap();
        let mut w = e
            .tensor_from(c.weight_shape(), &to64(random(&mut rng, c.weight_shape().len())))
            .unwrap();
        let mut b = e
            .tensor_from(c.bias_shape(), &to64(random(&mut rng, c.out_channels)))
            .unwrap();
        let r = to64(random(&mut rng, out.len()));
        let dy = e.tensor_from(out, &r).unwrap();
        let grads = e.conv2d_backward(&c, &x, &w, &dy, true).unwrap();
        let what = format!("{c} on {s}");
        let (wc, bc, xc) = (w.data().to_vec(), b.data().to_vec(), x.data().to_vec());
        let mut e2 = CpuEngine::<f64>::new();
        let loss_x = finite_differences(&mut rng, &mut x, 12, &mut |xv| {
            let (wt, bt) = (
                e2.tensor_from(c.weight_shape(), &wc).unwrap(),
                e2.tensor_from(c.bias_shape(), &bc).unwrap(),
            );
            dot(e2.conv2d(&c, xv, &wt, Some(&bt)).unwrap().data(), &r)
        });
        assert_gradient(&format!("{what} input"), grads.input.as_ref().unwrap().data(), &loss_x);
        let loss_w = finite_differences(&mut rng, &mut w, 12, &mut |wv| {
            let (xt, bt) = (
                e2.tensor_from(s, &xc).unwrap(),
                e2.tensor_from(c.bias_shape(), &bc).unwrap(),
            );
            dot(e2.conv2d(&c, &xt, wv, Some(&bt)).unwrap().data(), &r)
        });
        assert_gradient(&format!("{what} weights"), grads.weight.data(), &loss_w);
        let loss_b = finite_differences(&mut rng, &mut b, 12, &mut |bv| {
            let (xt, wt) = (
                e2.tensor_from(s, &xc).unwrap(),
                e2.tensor_from(c.weight_shape(), &wc).unwrap(),
            );
            dot(e2.conv2d(&c, &xt, &wt, Some(bv)).unwrap().data(), &r)
        });
        assert_gradient(&format!("{what} bias"), grads.bias.data(), &loss_b);
    }

    // ReLU (away from the kink), upsampling (x2 and odd sizes), add, the head permute.
    let s = Shape::new(2, 3, 5, 3);
    let mut x = e
        .tensor_from(
            s,
            &to64(random(&mut rng, s.len()))
                .iter()
                .map(|v| if v.abs() < 1e-3 { 0.5 } else { *v })
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let r = to64(random(&mut rng, s.len()));
    let dy = e.tensor_from(s, &r).unwrap();
    let analytic = e.relu_backward(&x, &dy).unwrap();
    let mut e2 = CpuEngine::<f64>::new();
    let fd = finite_differences(&mut rng, &mut x, 20, &mut |xv| dot(e2.relu(xv).unwrap().data(), &r));
    assert_gradient("relu", analytic.data(), &fd);

    for (h, w) in [(10, 6), (11, 7), (5, 3)] {
        let r = to64(random(&mut rng, 2 * 3 * h * w));
        let dy = e.tensor_from(Shape::new(2, 3, h, w), &r).unwrap();
        let analytic = e.upsample_nearest_backward(&dy, 5, 3).unwrap();
        let fd = finite_differences(&mut rng, &mut x, 20, &mut |xv| {
            dot(e2.upsample_nearest(xv, h, w).unwrap().data(), &r)
        });
        assert_gradient(&format!("upsample to {h} x {w}"), analytic.data(), &fd);
    }

    let (anchors, values) = (3, 4);
    let head = Shape::new(2, anchors * values, 3, 2);
    let mut hx = e.tensor_from(head, &to64(random(&mut rng, head.len()))).unwrap();
    let rows = Shape::new(2, 1, 5 + 3 * 2 * anchors, values);
    let r = to64(random(&mut rng, rows.len()));
    let dr = e.tensor_from(rows, &r).unwrap();
    let analytic = e.permute_head_backward(&dr, anchors, 5, head).unwrap();
    let fd = finite_differences(&mut rng, &mut hx, 30, &mut |hv| {
        let mut out = e2.zeros(rows).unwrap();
        e2.permute_head(hv, anchors, &mut out, 5).unwrap();
        dot(out.data(), &r)
    });
    assert_gradient("permute head", analytic.data(), &fd);
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * (w.abs() + scale * 1e-2) + 1e-6,
            "{what}[{i}]: gpu {g} vs cpu {w}"
        );
    }
}

fn gpu_matches_cpu_on(convs: Vec<(Conv2d, Shape)>) {
    let Some(ctx) = gpu() else { return };
    let mut g = GpuEngine::new(&ctx).unwrap();
    let mut c = CpuEngine::<f32>::new();
    let mut rng = Rng::new(3);
    for (conv, s) in convs {
        let out = conv.output_shape(s).unwrap();
        let (x, w, b, dy) = (
            random(&mut rng, s.len()),
            Init::Kaiming { fan_in: conv.fan_in() }.values(conv.weight_shape().len(), &mut SeededRng::new(4)),
            random(&mut rng, conv.out_channels),
            random(&mut rng, out.len()),
        );
        let what = format!("{conv} on {s}");
        let cpu_y = {
            let (xt, wt, bt) = (
                c.tensor(s, &x).unwrap(),
                c.tensor(conv.weight_shape(), &w).unwrap(),
                c.tensor(conv.bias_shape(), &b).unwrap(),
            );
            let y = c.conv2d(&conv, &xt, &wt, Some(&bt)).unwrap();
            let dyt = c.tensor(out, &dy).unwrap();
            let grads = c.conv2d_backward(&conv, &xt, &wt, &dyt, true).unwrap();
            (
                c.read(&y).unwrap(),
                c.read(&grads.input.unwrap()).unwrap(),
                c.read(&grads.weight).unwrap(),
                c.read(&grads.bias).unwrap(),
            )
        };
        let (xt, wt, bt) = (
            g.tensor(s, &x).unwrap(),
            g.tensor(conv.weight_shape(), &w).unwrap(),
            g.tensor(conv.bias_shape(), &b).unwrap(),
        );
        let y = g.conv2d(&conv, &xt, &wt, Some(&bt)).unwrap();
        let dyt = g.tensor(out, &dy).unwrap();
        let grads = g.conv2d_backward(&conv, &xt, &wt, &dyt, true).unwrap();
        assert_close(&format!("{what} forward"), &g.read(&y).unwrap(), &cpu_y.0, 1e-4);
        assert_close(
            &format!("{what} grad input"),
            &g.read(&grads.input.unwrap()).unwrap(),
            &cpu_y.1,
            1e-4,
        );
        assert_close(
            &format!("{what} grad weight"),
            &g.read(&grads.weight).unwrap(),
            &cpu_y.2,
            1e-4,
        );
        assert_close(
            &format!("{what} grad bias"),
            &g.read(&grads.bias).unwrap(),
            &cpu_y.3,
            1e-4,
        );
    }
    // The other layers at a pyramid level's shape, and with odd sizes.
    for s in [
        Shape::new(8, 64, 16, 16),
        Shape::new(1, 1, 1, 1),
        Shape::new(3, 2, 7, 5),
    ] {
        let (x, dy) = (random(&mut rng, s.len()), random(&mut rng, s.len()));
        let (cx, cdy, gx, gdy) = (
            c.tensor(s, &x).unwrap(),
            c.tensor(s, &dy).unwrap(),
            g.tensor(s, &x).unwrap(),
            g.tensor(s, &dy).unwrap(),
        );
        let pairs = [
            (c.relu(&cx).unwrap(), g.relu(&gx).unwrap(), "relu"),
            (
                c.relu_backward(&cx, &cdy).unwrap(),
                g.relu_backward(&gx, &gdy).unwrap(),
                "relu backward",
            ),
            (c.add(&cx, &cdy).unwrap(), g.add(&gx, &gdy).unwrap(), "add"),
            (
                c.upsample_nearest(&cx, 2 * s.h, 2 * s.w).unwrap(),
                g.upsample_nearest(&gx, 2 * s.h, 2 * s.w).unwrap(),
                "upsample",
            ),
            (
                c.upsample_nearest(&cx, s.h + 3, s.w + 1).unwrap(),
                g.upsample_nearest(&gx, s.h + 3, s.w + 1).unwrap(),
                "resize",
            ),
        ];
        for (cpu_t, gpu_t, what) in pairs {
            assert_close(
                &format!("{what} {s}"),
                &g.read(&gpu_t).unwrap(),
                &c.read(&cpu_t).unwrap(),
                1e-6,
            );
        }
        let big = Shape::new(s.n, s.c, 2 * s.h, 2 * s.w);
        let d = random(&mut rng, big.len());
        let (cd, gd) = (c.tensor(big, &d).unwrap(), g.tensor(big, &d).unwrap());
        let (gb, cb) = (
            g.upsample_nearest_backward(&gd, s.h, s.w).unwrap(),
            c.upsample_nearest_backward(&cd, s.h, s.w).unwrap(),
        );
        assert_close(
            &format!("upsample backward {s}"),
            &g.read(&gb).unwrap(),
            &c.read(&cb).unwrap(),
            1e-6,
        );
        let (mut ca, mut ga) = (c.tensor(s, &x).unwrap(), g.tensor(s, &x).unwrap());
        c.accumulate(&mut ca, &cdy).unwrap();
        g.accumulate(&mut ga, &gdy).unwrap();
        assert_close(
            &format!("accumulate {s}"),
            &g.read(&ga).unwrap(),
            &c.read(&ca).unwrap(),
            1e-6,
        );
    }
    // The head permute at P3 of the small RetinaNet: [8, 9*20, 16, 16] into 3069-row tensors.
    let head = Shape::new(8, 9 * 20, 16, 16);
    let rows = Shape::new(8, 1, 3069, 20);
    let h = random(&mut rng, head.len());
    let (ch, gh) = (c.tensor(head, &h).unwrap(), g.tensor(head, &h).unwrap());
    let (mut cr, mut gr) = (c.zeros(rows).unwrap(), g.zeros(rows).unwrap());
    c.permute_head(&ch, 9, &mut cr, 0).unwrap();
    g.permute_head(&gh, 9, &mut gr, 0).unwrap();
    let (cpu_rows, gpu_rows) = (c.read(&cr).unwrap(), g.read(&gr).unwrap());
    assert_eq!(gpu_rows, cpu_rows, "permute head");
    let back_c = c.permute_head_backward(&cr, 9, 0, head).unwrap();
    let back_g = g.permute_head_backward(&gr, 9, 0, head).unwrap();
    assert_eq!(g.read(&back_g).unwrap(), c.read(&back_c).unwrap());
    assert_eq!(c.read(&back_c).unwrap(), h, "permute then its backward is the identity");
}

#[test]
fn gpu_matches_cpu_at_the_small_retinanet_shapes() {
    gpu_matches_cpu_on(retinanet_convs(8));
}

#[test]
fn gpu_matches_cpu_at_odd_shapes() {
    gpu_matches_cpu_on(odd_convs());
}

#[test]
fn sgd_follows_pytorch_and_clips_the_global_norm() {
    let s = Shape::new(1, 1, 1, 4);
    let w0 = [1.0f32, -2.0, 0.5, 0.0];
    let g0 = [0.5f32, 0.25, -1.0, 2.0];
    let sgd = Sgd {
        momentum: 0.9,
        weight_decay: 0.1,
        max_grad_norm: None,
    };
    // By hand (PyTorch): step 1 v = g + wd w, w -= lr v; step 2 v = 0.9 v + g + wd w.
    let lr = 0.1f64;
    let mut w: Vec<f64> = w0.iter().map(|&v| f64::from(v)).collect();
    let mut v = [0.0f64; 4];
    for _ in 0..2 {
        for i in 0..4 {
            v[i] = 0.9 * v[i] + f64::from(g0[i]) + 0.1 * w[i];
            w[i] -= lr * v[i];
        }
    }
    // Clipped: norm of g0 = sqrt(0.25 + 0.0625 + 1 + 4); max 1.
    let norm = g0.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
    let clipped: Vec<f64> = w0
        .iter()
        .zip(g0)
        .map(|(&w, g)| f64::from(w) - lr * (f64::from(g) / (norm + 1e-6)))
        .collect();

    let check = |engine: &mut dyn FnMut(Sgd, usize) -> Vec<f32>, name: &str| {
        let got = engine(sgd, 2);
        for i in 0..4 {
            assert!(
                (f64::from(got[i]) - w[i]).abs() < 1e-6,
                "{name}: w[{i}] {} vs {}",
                got[i],
                w[i]
            );
        }
        let got = engine(
            Sgd {
                momentum: 0.0,
                weight_decay: 0.0,
                max_grad_norm: Some(1.0),
            },
            1,
        );
        for i in 0..4 {
            assert!(
                (f64::from(got[i]) - clipped[i]).abs() < 1e-6,
                "{name} clipped: w[{i}] {} vs {}",
                got[i],
                clipped[i]
            );
        }
    };
    fn run<E: Engine>(e: &mut E, s: Shape, w0: &[f32], g0: &[f32], sgd: Sgd, steps: usize) -> Vec<f32> {
        let mut p = vec![e.tensor(s, w0).unwrap()];
        let g = vec![e.tensor(s, g0).unwrap()];
        let mut v = vec![e.zeros(s).unwrap()];
        for _ in 0..steps {
            e.sgd_step(&sgd, 0.1, &mut p, &g, &mut v, &[]).unwrap();
        }
        e.read(&p[0]).unwrap()
    }
    let mut cpu = CpuEngine::<f32>::new();
    check(&mut |sgd, steps| run(&mut cpu, s, &w0, &g0, sgd, steps), "cpu");
    if let Some(ctx) = gpu() {
        let mut g = GpuEngine::new(&ctx).unwrap();
        check(&mut |sgd, steps| run(&mut g, s, &w0, &g0, sgd, steps), "gpu");
    }
    // The schedule: warmup from a third, then decays.
    let schedule = LrSchedule {
        base: 0.01,
        warmup_steps: 100,
        warmup_factor: 1.0 / 3.0,
        decay_steps: vec![1000, 2000],
        gamma: 0.1,
    };
    assert!((schedule.at(0) - 0.01 / 3.0).abs() < 1e-9);
    assert!((schedule.at(50) - 0.01 * (1.0 / 3.0 * 0.5 + 0.5)).abs() < 1e-9);
    assert_eq!(schedule.at(100), 0.01);
    assert!((schedule.at(1500) - 0.001).abs() < 1e-9 && (schedule.at(2500) - 0.0001).abs() < 1e-10);
    assert!(matches!(
        Sgd {
            momentum: 1.5,
            ..Sgd::default()
        }
        .validate()
        .unwrap_err(),
        Error::InvalidParameter(_)
    ));
}

#[test]
fn initialisation_is_seeded_and_has_the_documented_spread() {
    let a = Init::Kaiming { fan_in: 576 }.values(100_000, &mut SeededRng::new(9));
    let b = Init::Kaiming { fan_in: 576 }.values(100_000, &mut SeededRng::new(9));
    assert_eq!(a, b, "same seed, same weights on every backend");
    let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
    let std = (a.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
    assert!(
        mean.abs() < 1e-3 && (std - (2.0f64 / 576.0).sqrt()).abs() < 1e-3,
        "mean {mean} std {std}"
    );
    let head = Init::Normal(0.01).values(100_000, &mut SeededRng::new(1));
    let std = (head.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / head.len() as f64).sqrt();
    assert!((std - 0.01).abs() < 2e-4, "head std {std}");
    let Init::Constant(prior) = Init::prior(0.01) else {
        panic!("a constant")
    };
    assert!((f64::from(prior) + 99f64.ln()).abs() < 1e-5, "prior bias {prior}");
}

/// A small training step: conv -> relu -> conv, backward, SGD.
fn step<E: Engine>(e: &mut E, params: &mut [E::Tensor], velocity: &mut [E::Tensor], x: &[f32]) {
    let (c1, c2) = (Conv2d::new(3, 8, 3, 2), Conv2d::new(8, 4, 3, 1));
    let input = e.tensor(Shape::new(2, 3, 16, 16), x).unwrap();
    let h = e.conv2d(&c1, &input, &params[0], Some(&params[1])).unwrap();
    let a = e.relu(&h).unwrap();
    let y = e.conv2d(&c2, &a, &params[2], Some(&params[3])).unwrap();
    let dy = e.relu(&y).unwrap();
    let g2 = e.conv2d_backward(&c2, &a, &params[2], &dy, true).unwrap();
    let da = e.relu_backward(&h, g2.input.as_ref().unwrap()).unwrap();
    let g1 = e.conv2d_backward(&c1, &input, &params[0], &da, false).unwrap();
    let grads = vec![g1.weight, g1.bias, g2.weight, g2.bias];
    e.sgd_step(
        &Sgd {
            max_grad_norm: Some(5.0),
            ..Sgd::default()
        },
        0.01,
        params,
        &grads,
        velocity,
        &[],
    )
    .unwrap();
    e.sync().unwrap();
}

/// `bind_groups`: bind groups the engine's context has created so far.
fn pool_stops_allocating<E: Engine>(e: &mut E, bind_groups: impl Fn() -> u64) {
    let (c1, c2) = (Conv2d::new(3, 8, 3, 2), Conv2d::new(8, 4, 3, 1));
    let mut rng = SeededRng::new(5);
    let shapes = [c1.weight_shape(), c1.bias_shape(), c2.weight_shape(), c2.bias_shape()];
    let mut params: Vec<E::Tensor> = shapes
        .iter()
        .map(|&s| e.tensor(s, &Init::Normal(0.1).values(s.len(), &mut rng)).unwrap())
        .collect();
    let mut velocity: Vec<E::Tensor> = shapes.iter().map(|&s| e.zeros(s).unwrap()).collect();
    let x = Init::Normal(1.0).values(2 * 3 * 16 * 16, &mut rng);
    step(e, &mut params, &mut velocity, &x);
    let after_first = e.pool_stats();
    let groups_after_first = bind_groups();
    step(e, &mut params, &mut velocity, &x);
    step(e, &mut params, &mut velocity, &x);
    let after_third = e.pool_stats();
    // The same buffers every step, so the same bind groups: found again, none made.
    assert_eq!(
        bind_groups(),
        groups_after_first,
        "bind groups created after the first step"
    );
    assert_eq!(
        after_third.allocations, after_first.allocations,
        "tensors: {after_first:?} then {after_third:?}"
    );
    assert!(after_third.reuses > after_first.reuses);
    assert_eq!(
        after_third.scratch_allocations, after_first.scratch_allocations,
        "scratch: {after_first:?} then {after_third:?}"
    );
}

/// `tensor_with` holds what its closure wrote, as `tensor` holds its slice: the CPU engine's
/// in-place fill in f32 (twice: the second fill lands in the buffer the first tensor gave back
/// to the pool), its f64 fallback, and the GPU's default upload; a shape too large to count
/// fails.
fn tensor_with_holds_what_it_wrote<E: Engine>(e: &mut E) {
    let shape = Shape::new(1, 3, 5, 7);
    let want: Vec<f32> = (0..shape.len()).map(|i| i as f32 * 0.5 - 20.0).collect();
    for _ in 0..2 {
        let t = e.tensor_with(shape, |out| out.copy_from_slice(&want)).unwrap();
        assert_eq!(E::shape(&t), shape);
        assert_eq!(e.read(&t).unwrap(), want);
    }
    let huge = Shape::new(usize::MAX, 2, 2, 2);
    assert!(matches!(e.tensor_with(huge, |_| ()), Err(Error::InvalidParameter(_))));
}

#[test]
fn tensor_with_fills_the_engines_own_buffer() {
    tensor_with_holds_what_it_wrote(&mut CpuEngine::<f32>::new());
    tensor_with_holds_what_it_wrote(&mut CpuEngine::<f64>::new());
    if let Some(ctx) = gpu() {
        tensor_with_holds_what_it_wrote(&mut GpuEngine::new(&ctx).unwrap());
    }
}

#[test]
fn a_training_step_allocates_no_tensor_after_the_first() {
    pool_stops_allocating(&mut CpuEngine::<f32>::new(), || 0);
    // A context of its own: its counters see no other test's work.
    if let Some(ctx) = common::gpu_with(retina_wgpu::GpuOptions::default()) {
        pool_stops_allocating(&mut GpuEngine::new(&ctx).unwrap(), || {
            ctx.resource_stats().bind_groups_created
        });
    }
}

#[test]
fn shape_errors_name_the_layer_and_the_shapes() {
    let mut e = CpuEngine::<f32>::new();
    let c = Conv2d::new(3, 8, 3, 1);
    let x = e.zeros(Shape::new(1, 4, 8, 8)).unwrap();
    let w = e.zeros(c.weight_shape()).unwrap();
    let err = e.conv2d(&c, &x, &w, None).unwrap_err();
    assert!(
        err.to_string().contains("conv2d") && err.to_string().contains("[1, 4, 8, 8]"),
        "{err}"
    );
    let x = e.zeros(Shape::new(1, 3, 8, 8)).unwrap();
    let bad_w = e.zeros(Shape::new(8, 3, 1, 1)).unwrap();
    let err = e.conv2d(&c, &x, &bad_w, None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "conv2d weights",
                ..
            }
        ) && err.to_string().contains("[8, 3, 3, 3]"),
        "{err}"
    );
    let tiny = e.zeros(Shape::new(1, 3, 1, 1)).unwrap();
    let err = e.conv2d(&Conv2d { padding: 0, ..c }, &tiny, &w, None).unwrap_err();
    assert!(err.to_string().contains("cannot cover"), "{err}");
    let a = e.zeros(Shape::new(1, 3, 8, 8)).unwrap();
    let b = e.zeros(Shape::new(1, 3, 8, 9)).unwrap();
    assert!(matches!(
        e.add(&a, &b).unwrap_err(),
        Error::ShapeMismatch { op: "add", .. }
    ));
    let mut rows = e.zeros(Shape::new(1, 1, 10, 4)).unwrap();
    let head = e.zeros(Shape::new(1, 9 * 4, 2, 2)).unwrap();
    assert!(matches!(
        e.permute_head(&head, 9, &mut rows, 0).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
    assert!(matches!(
        Conv2d::new(3, 8, 0, 1).validate().unwrap_err(),
        Error::InvalidParameter(_)
    ));
    assert!(e.tensor(Shape::new(1, 1, 2, 2), &[1.0; 3]).is_err());
}

/// `shapes`' tensors on `e`, holding `values`: packed in the order `pack` gives (indices into
/// `shapes`), or each on its own (`None`); returned in `shapes`' order.
fn placed<E: Engine>(e: &mut E, shapes: &[Shape], values: &[Vec<f32>], pack: Option<&[usize]>) -> Vec<E::Tensor> {
    let mut tensors: Vec<Option<E::Tensor>> = (0..shapes.len()).map(|_| None).collect();
    match pack {
        None => {
            for (i, s) in shapes.iter().enumerate() {
                tensors[i] = Some(e.tensor(*s, &values[i]).unwrap());
            }
        }
        Some(order) => {
            let packed_shapes: Vec<Shape> = order.iter().map(|&i| shapes[i]).collect();
            for (&i, mut t) in order.iter().zip(e.zeros_packed(&packed_shapes).unwrap()) {
                e.write(&mut t, &values[i]).unwrap();
                tensors[i] = Some(t);
            }
        }
    }
    tensors.into_iter().map(Option::unwrap).collect()
}

/// Dispatches of `kernel` recorded on `ctx` while `f` ran.
fn dispatches_of<R>(ctx: &retina_wgpu::GpuContext, kernel: &str, f: impl FnOnce() -> R) -> (R, u64) {
    let count = |ctx: &retina_wgpu::GpuContext| {
        ctx.kernel_work()
            .into_iter()
            .find(|(n, _)| *n == kernel)
            .map_or(0, |(_, w)| w.dispatches)
    };
    let before = count(ctx);
    let r = f();
    (r, count(ctx) - before)
}

#[test]
fn packed_parameters_step_like_separate_ones_in_one_dispatch_per_group() {
    let Some(ctx) = gpu() else { return };
    // A small network's parameters: weights (decayed) and biases or norms (not), interleaved.
    let shapes = [
        Shape::new(20, 3, 3, 3),
        Shape::new(1, 16, 1, 1),
        Shape::new(1, 16, 1, 1),
        Shape::new(1, 16, 1, 1),
        Shape::new(16, 4, 3, 3),
        Shape::new(1, 16, 1, 1),
        Shape::new(1, 1, 1, 7),
    ];
    let decay = [true, false, false, false, true, false, true];
    let mut rng = Rng::new(11);
    let w0: Vec<Vec<f32>> = shapes.iter().map(|s| random(&mut rng, s.len())).collect();
    let g0: Vec<Vec<f32>> = shapes.iter().map(|s| random(&mut rng, s.len())).collect();
    let zeros: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.0; s.len()]).collect();
    let decayed_first = [0, 4, 6, 1, 2, 3, 5];
    let in_order = [0, 1, 2, 3, 4, 5, 6];
    let run = |ctx: &retina_wgpu::GpuContext, pack: Option<&[usize]>, sgd: Sgd| {
        let mut e = GpuEngine::new(ctx).unwrap();
        let mut p = placed(&mut e, &shapes, &w0, pack);
        let g = placed(&mut e, &shapes, &g0, pack);
        let mut v = placed(&mut e, &shapes, &zeros, pack);
        // Written and read back as they were given.
        for (t, want) in p.iter().zip(&w0) {
            assert_eq!(&e.read(t).unwrap(), want);
        }
        let (_, sgd_dispatches) = dispatches_of(ctx, "Sgd", || {
            for _ in 0..2 {
                e.sgd_step(&sgd, 0.1, &mut p, &g, &mut v, &decay).unwrap();
            }
            e.sync().unwrap();
        });
        let values: Vec<Vec<f32>> = p.iter().chain(&v).map(|t| e.read(t).unwrap()).collect();
        (values, sgd_dispatches / 2)
    };
    let plain = Sgd {
        momentum: 0.9,
        weight_decay: 0.1,
        max_grad_norm: None,
    };
    let (separate, n) = run(&ctx, None, plain);
    assert_eq!(n, 7, "one dispatch per tensor");
    // The CPU, the reference of the update rule, agrees with the separate tensors.
    let mut cpu = CpuEngine::<f32>::new();
    let mut p = placed(&mut cpu, &shapes, &w0, None);
    let g = placed(&mut cpu, &shapes, &g0, None);
    let mut v = placed(&mut cpu, &shapes, &zeros, None);
    for _ in 0..2 {
        cpu.sgd_step(&plain, 0.1, &mut p, &g, &mut v, &decay).unwrap();
    }
    for (i, t) in p.iter().enumerate() {
        assert_close(&format!("sgd param {i}"), &separate[i], &cpu.read(t).unwrap(), 1e-6);
    }
    for (pack, groups) in [(&decayed_first[..], 2), (&in_order[..], 5)] {
        let (packed, n) = run(&ctx, Some(pack), plain);
        assert_eq!(packed, separate, "packed {pack:?}: the same update, bit for bit");
        assert_eq!(n, groups, "packed {pack:?}: one dispatch per run of equal decay");
    }
    // With clipping the norm is summed per run instead of per tensor: equal to rounding.
    let clipped = Sgd {
        max_grad_norm: Some(0.5),
        ..plain
    };
    let (separate, _) = run(&ctx, None, clipped);
    let (packed, _) = run(&ctx, Some(&decayed_first), clipped);
    for (i, (a, b)) in packed.iter().zip(&separate).enumerate() {
        assert_close(&format!("clipped tensor {i}"), a, b, 1e-6);
    }
    // Under a 4 KiB binding limit the pack spans several buffers (2,160 + 2,304 bytes of
    // weights do not fit one): still the same update.
    let Some(small) = common::gpu_with(retina_wgpu::GpuOptions {
        caps: retina_wgpu::LimitCaps {
            max_storage_binding: Some(4096),
            ..Default::default()
        },
        ..Default::default()
    }) else {
        return;
    };
    let (separate, _) = run(&small, None, plain);
    let (packed, n) = run(&small, Some(&decayed_first), plain);
    assert_eq!(packed, separate);
    assert!(n > 2, "{n} dispatches: the pack should have been split");
}

#[test]
fn accumulating_backward_adds_what_backward_returns() {
    let Some(ctx) = gpu() else { return };
    let mut e = GpuEngine::new(&ctx).unwrap();
    let mut cpu = CpuEngine::<f32>::new();
    let mut rng = Rng::new(12);
    // Split-K (K = 8 x 16 x 16 output pixels), a strided layer, a 1x1 head on 2x2.
    for (conv, s, bias) in [
        (conv(16, 16, (3, 3), 1, 1), Shape::new(8, 16, 16, 16), true),
        (conv(3, 8, (3, 3), 2, 1), Shape::new(2, 3, 9, 7), false),
        (conv(8, 20, (1, 1), 1, 0), Shape::new(2, 8, 2, 2), true),
    ] {
        let out = conv.output_shape(s).unwrap();
        let x = random(&mut rng, s.len());
        let w = random(&mut rng, conv.weight_shape().len());
        let dys = [random(&mut rng, out.len()), random(&mut rng, out.len())];
        let (dw0, db0) = (
            random(&mut rng, conv.weight_shape().len()),
            random(&mut rng, conv.out_channels),
        );
        let shapes = [conv.weight_shape(), conv.bias_shape()];
        let what = format!("{conv} on {s}");
        // Reference: backward, then accumulate, on each engine.
        fn reference<E: Engine>(
            e: &mut E,
            conv: &Conv2d,
            s: Shape,
            (x, w): (&[f32], &[f32]),
            dys: &[Vec<f32>; 2],
            (dw0, db0): (&[f32], &[f32]),
        ) -> Vec<Vec<f32>> {
            let out = conv.output_shape(s).unwrap();
            let (xt, wt) = (e.tensor(s, x).unwrap(), e.tensor(conv.weight_shape(), w).unwrap());
            let mut dw = e.tensor(conv.weight_shape(), dw0).unwrap();
            let mut db = e.tensor(conv.bias_shape(), db0).unwrap();
            let mut dx = Vec::new();
            for dy in dys {
                let dyt = e.tensor(out, dy).unwrap();
                let g = e.conv2d_backward(conv, &xt, &wt, &dyt, true).unwrap();
                e.accumulate(&mut dw, &g.weight).unwrap();
                e.accumulate(&mut db, &g.bias).unwrap();
                dx.push(e.read(&g.input.unwrap()).unwrap());
            }
            vec![e.read(&dw).unwrap(), e.read(&db).unwrap(), dx[0].clone(), dx[1].clone()]
        }
        let want = reference(&mut e, &conv, s, (&x, &w), &dys, (&dw0, &db0));
        let cpu_want = reference(&mut cpu, &conv, s, (&x, &w), &dys, (&dw0, &db0));
        for (k, (a, b)) in want.iter().zip(&cpu_want).enumerate() {
            assert_close(&format!("{what} reference {k}"), a, b, 1e-4);
        }
        // In place, into packed gradients (as the trainer keeps them).
        let (xt, wt) = (e.tensor(s, &x).unwrap(), e.tensor(conv.weight_shape(), &w).unwrap());
        let mut grads = placed(&mut e, &shapes, &[dw0.clone(), db0.clone()], Some(&[0, 1]));
        let mut got_dx = Vec::new();
        for dy in &dys {
            let dyt = e.tensor(out, dy).unwrap();
            let [dw, db] = grads.get_disjoint_mut([0, 1]).unwrap();
            let dx = e
                .conv2d_backward_acc(&conv, &xt, &wt, &dyt, true, dw, bias.then_some(db))
                .unwrap();
            got_dx.push(e.read(&dx.unwrap()).unwrap());
        }
        assert_eq!(e.read(&grads[0]).unwrap(), want[0], "{what}: weight gradient");
        if bias {
            assert_eq!(e.read(&grads[1]).unwrap(), want[1], "{what}: bias gradient");
        } else {
            assert_eq!(e.read(&grads[1]).unwrap(), db0, "{what}: no bias, untouched");
        }
        assert_eq!(got_dx, want[2..].to_vec(), "{what}: input gradient");
    }
    // GroupNorm, alone and fused with ReLU.
    let gn = retina_wgpu::nn::GroupNorm::new(16, 4);
    let s = Shape::new(3, 16, 5, 6);
    let (x, gamma, beta) = (random(&mut rng, s.len()), random(&mut rng, 16), random(&mut rng, 16));
    let dys = [random(&mut rng, s.len()), random(&mut rng, s.len())];
    let (dg0, dbeta0) = (random(&mut rng, 16), random(&mut rng, 16));
    for relu in [false, true] {
        let (xt, gt, bt) = (
            e.tensor(s, &x).unwrap(),
            e.tensor(gn.param_shape(), &gamma).unwrap(),
            e.tensor(gn.param_shape(), &beta).unwrap(),
        );
        let fwd = if relu {
            e.group_norm_relu(&gn, &xt, &gt, &bt).unwrap()
        } else {
            e.group_norm(&gn, &xt, &gt, &bt).unwrap()
        };
        let shapes = [gn.param_shape(), gn.param_shape()];
        let mut sep = placed(&mut e, &shapes, &[dg0.clone(), dbeta0.clone()], None);
        let mut packed = placed(&mut e, &shapes, &[dg0.clone(), dbeta0.clone()], Some(&[1, 0]));
        for dy in &dys {
            let dyt = e.tensor(s, dy).unwrap();
            let g = if relu {
                e.group_norm_relu_backward(&gn, &xt, &gt, &fwd.stats, &fwd.y, &dyt)
                    .unwrap()
            } else {
                e.group_norm_backward(&gn, &xt, &gt, &fwd.stats, &dyt).unwrap()
            };
            e.accumulate(&mut sep[0], &g.gamma).unwrap();
            e.accumulate(&mut sep[1], &g.beta).unwrap();
            let [dg, db] = packed.get_disjoint_mut([0, 1]).unwrap();
            let dx = e
                .group_norm_backward_acc(&gn, &xt, &gt, &fwd.stats, relu.then_some(&fwd.y), &dyt, dg, db)
                .unwrap();
            assert_eq!(
                e.read(&dx).unwrap(),
                e.read(&g.input).unwrap(),
                "group norm input gradient"
            );
        }
        for k in 0..2 {
            assert_eq!(
                e.read(&packed[k]).unwrap(),
                e.read(&sep[k]).unwrap(),
                "group norm (relu {relu}) parameter gradient {k}"
            );
        }
    }
}
