//! The layers MobileNet-style detectors (RetinaFace) add to the network: depthwise convolution
//! against a direct f64 reference and its gradients against f64 finite differences, LeakyReLU,
//! channel concatenation and slicing; the GPU against the CPU for each, and their shape errors.

mod common;

use common::{Rng, assert_gradient, dot, finite_differences, gpu, random, reference_conv};
use retina_wgpu::nn::{Conv2d, CpuEngine, Engine, GpuEngine, Shape};

/// A depthwise convolution in f64, written out: each output channel reads its own input
/// channel through its own filter.
fn reference_depthwise(c: &Conv2d, x: &[f32], s: Shape, w: &[f32], b: &[f32]) -> Vec<f64> {
    let out = c.output_shape(s).unwrap();
    let (kh, kw) = c.kernel;
    let mut y = vec![0.0f64; out.len()];
    for n in 0..s.n {
        for ch in 0..s.c {
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let mut acc = f64::from(b[ch]);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * c.stride + ky) as isize - c.padding as isize;
                            let ix = (ox * c.stride + kx) as isize - c.padding as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                let xv = x[((n * s.c + ch) * s.h + iy as usize) * s.w + ix as usize];
                                acc += f64::from(xv) * f64::from(w[(ch * kh + ky) * kw + kx]);
                            }
                        }
                    }
                    y[((n * s.c + ch) * out.h + oy) * out.w + ox] = acc;
                }
            }
        }
    }
    y
}

/// Depthwise layers with the cases that break implementations: MobileNet's 3x3 at stride 1 and
/// 2 on odd sizes, a 1x1 image, non-square kernels, no padding, padding wider than the kernel.
fn depthwise_cases() -> Vec<(Conv2d, Shape)> {
    let layer = |c: usize, kernel: (usize, usize), stride: usize, padding: usize| Conv2d {
        in_channels: c,
        out_channels: c,
        kernel,
        stride,
        padding,
    };
    vec![
        (Conv2d::depthwise(8, 3, 1), Shape::new(2, 8, 7, 5)),
        (Conv2d::depthwise(16, 3, 2), Shape::new(2, 16, 9, 6)),
        (Conv2d::depthwise(3, 3, 2), Shape::new(1, 3, 1, 1)),
        (layer(4, (3, 1), 1, 0), Shape::new(1, 4, 5, 4)),
        (layer(2, (2, 3), 2, 2), Shape::new(2, 2, 5, 7)),
        (Conv2d::depthwise(5, 5, 1), Shape::new(1, 5, 6, 6)),
    ]
}

#[test]
fn depthwise_convolution_matches_a_direct_f64_reference() {
    let mut rng = Rng::new(11);
    let mut e = CpuEngine::<f32>::new();
    for (c, s) in depthwise_cases() {
        let (x, w, b) = (
            random(&mut rng, s.len()),
            random(&mut rng, c.depthwise_weight_shape().len()),
            random(&mut rng, c.out_channels),
        );
        let want = reference_depthwise(&c, &x, s, &w, &b);
        let (xt, wt, bt) = (
            e.tensor(s, &x).unwrap(),
            e.tensor(c.depthwise_weight_shape(), &w).unwrap(),
            e.tensor(c.bias_shape(), &b).unwrap(),
        );
        let got = {
            let t = e.depthwise_conv2d(&c, &xt, &wt, Some(&bt)).unwrap();
            e.read(&t).unwrap()
        };
        assert_eq!(got.len(), want.len(), "{c} on {s}");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{c} on {s} [{i}]: {g} vs {w}"
            );
        }
        // Without a bias: the same minus the bias.
        let no_bias = {
            let t = e.depthwise_conv2d(&c, &xt, &wt, None).unwrap();
            e.read(&t).unwrap()
        };
        let plane = c.output_shape(s).unwrap().plane();
        for (i, (&g, &w)) in no_bias.iter().zip(&want).enumerate() {
            let w = w - f64::from(b[(i / plane) % s.c]);
            assert!(
                (f64::from(g) - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{c} on {s} without bias [{i}]"
            );
        }
    }
}

#[test]
fn mobile_layer_gradients_match_f64_finite_differences() {
    let mut rng = Rng::new(12);
    let mut e = CpuEngine::<f64>::new();
    let mut e2 = CpuEngine::<f64>::new();
    let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    for (c, s) in depthwise_cases() {
        let out = c.output_shape(s).unwrap();
        let ws = c.depthwise_weight_shape();
        let mut x = e.tensor_from(s, &to64(random(&mut rng, s.len()))).unwrap();
        let mut w = e.tensor_from(ws, &to64(random(&mut rng, ws.len()))).unwrap();
        let mut b = e
            .tensor_from(c.bias_shape(), &to64(random(&mut rng, c.out_channels)))
            .unwrap();
        let r = to64(random(&mut rng, out.len()));
        let dy = e.tensor_from(out, &r).unwrap();
        let grads = e.depthwise_conv2d_backward(&c, &x, &w, &dy, true).unwrap();
        let what = format!("depthwise {c} on {s}");
        let (wc, bc, xc) = (w.data().to_vec(), b.data().to_vec(), x.data().to_vec());
        let fd = finite_differences(&mut rng, &mut x, 12, &mut |xv| {
            let (wt, bt) = (
                e2.tensor_from(ws, &wc).unwrap(),
                e2.tensor_from(c.bias_shape(), &bc).unwrap(),
            );
            dot(e2.depthwise_conv2d(&c, xv, &wt, Some(&bt)).unwrap().data(), &r)
        });
        assert_gradient(&format!("{what} input"), grads.input.as_ref().unwrap().data(), &fd);
        let fd = finite_differences(&mut rng, &mut w, 12, &mut |wv| {
            let (xt, bt) = (
                e2.tensor_from(s, &xc).unwrap(),
                e2.tensor_from(c.bias_shape(), &bc).unwrap(),
            );
            dot(e2.depthwise_conv2d(&c, &xt, wv, Some(&bt)).unwrap().data(), &r)
        });
        assert_gradient(&format!("{what} weights"), grads.weight.data(), &fd);
        let fd = finite_differences(&mut rng, &mut b, 12, &mut |bv| {
            let (xt, wt) = (e2.tensor_from(s, &xc).unwrap(), e2.tensor_from(ws, &wc).unwrap());
            dot(e2.depthwise_conv2d(&c, &xt, &wt, Some(bv)).unwrap().data(), &r)
        });
        assert_gradient(&format!("{what} bias"), grads.bias.data(), &fd);
    }

    // LeakyReLU away from the kink, with RetinaFace's slope and a negative one.
    let s = Shape::new(2, 3, 4, 5);
    let values: Vec<f64> = to64(random(&mut rng, s.len()))
        .into_iter()
        .map(|v| if v.abs() < 1e-3 { 0.5 } else { v })
        .collect();
    let mut x = e.tensor_from(s, &values).unwrap();
    for slope in [0.1f32, -0.3] {
        let y = e.leaky_relu(&x, slope).unwrap();
        for (&yv, &xv) in y.data().iter().zip(&values) {
            let want = if xv > 0.0 { xv } else { f64::from(slope) * xv };
            assert_eq!(yv, want, "leaky relu {slope} at {xv}");
        }
        let r = to64(random(&mut rng, s.len()));
        let dy = e.tensor_from(s, &r).unwrap();
        let analytic = e.leaky_relu_backward(&x, &dy, slope).unwrap();
        let fd = finite_differences(&mut rng, &mut x, 20, &mut |xv| {
            dot(e2.leaky_relu(xv, slope).unwrap().data(), &r)
        });
        assert_gradient(&format!("leaky relu {slope}"), analytic.data(), &fd);
    }

    // Concatenation: the gradient for each part is its slice of the output gradient.
    let shapes = [Shape::new(2, 3, 4, 5), Shape::new(2, 1, 4, 5), Shape::new(2, 4, 4, 5)];
    let mut parts: Vec<_> = shapes
        .iter()
        .map(|&s| e.tensor_from(s, &to64(random(&mut rng, s.len()))).unwrap())
        .collect();
    let out = Shape::new(2, 8, 4, 5);
    let r = to64(random(&mut rng, out.len()));
    let dy = e.tensor_from(out, &r).unwrap();
    let mut start = 0;
    for i in 0..parts.len() {
        let analytic = e.slice_channels(&dy, start, shapes[i].c).unwrap();
        let others: Vec<Vec<f64>> = parts.iter().map(|p| p.data().to_vec()).collect();
        let fd = finite_differences(&mut rng, &mut parts[i], 20, &mut |pv| {
            let ts: Vec<_> = (0..shapes.len())
                .map(|j| {
                    if j == i {
                        e2.tensor_from(shapes[j], pv.data()).unwrap()
                    } else {
                        e2.tensor_from(shapes[j], &others[j]).unwrap()
                    }
                })
                .collect();
            let refs: Vec<_> = ts.iter().collect();
            dot(e2.concat_channels(&refs).unwrap().data(), &r)
        });
        assert_gradient(&format!("concat part {i}"), analytic.data(), &fd);
        start += shapes[i].c;
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * (w.abs() + scale * 1e-2) + 1e-6,
            "{what}[{i}]: gpu {g} vs cpu {w}"
        );
    }
}

#[test]
fn gpu_matches_cpu_for_the_mobile_layers() {
    let Some(ctx) = gpu() else { return };
    let mut g = GpuEngine::new(&ctx).unwrap();
    let mut c = CpuEngine::<f32>::new();
    let mut rng = Rng::new(13);
    let mut cases = depthwise_cases();
    // MobileNet-0.25's own: the first depthwise layer of a 640 x 480 image at stride 2, and a
    // wide late one.
    cases.push((Conv2d::depthwise(8, 3, 1), Shape::new(1, 8, 240, 320)));
    cases.push((Conv2d::depthwise(128, 3, 2), Shape::new(2, 128, 30, 40)));
    for (conv, s) in cases {
        let out = conv.output_shape(s).unwrap();
        let ws = conv.depthwise_weight_shape();
        let (x, w, b, dy) = (
            random(&mut rng, s.len()),
            random(&mut rng, ws.len()),
            random(&mut rng, conv.out_channels),
            random(&mut rng, out.len()),
        );
        let what = format!("depthwise {conv} on {s}");
        let (cx, cw, cb, cdy) = (
            c.tensor(s, &x).unwrap(),
            c.tensor(ws, &w).unwrap(),
            c.tensor(conv.bias_shape(), &b).unwrap(),
            c.tensor(out, &dy).unwrap(),
        );
        let (gx, gw, gb, gdy) = (
            g.tensor(s, &x).unwrap(),
            g.tensor(ws, &w).unwrap(),
            g.tensor(conv.bias_shape(), &b).unwrap(),
            g.tensor(out, &dy).unwrap(),
        );
        for bias in [true, false] {
            let cy = c.depthwise_conv2d(&conv, &cx, &cw, bias.then_some(&cb)).unwrap();
            let gy = g.depthwise_conv2d(&conv, &gx, &gw, bias.then_some(&gb)).unwrap();
            assert_close(
                &format!("{what} forward (bias {bias})"),
                &g.read(&gy).unwrap(),
                &c.read(&cy).unwrap(),
                1e-5,
            );
        }
        let cg = c.depthwise_conv2d_backward(&conv, &cx, &cw, &cdy, true).unwrap();
        let gg = g.depthwise_conv2d_backward(&conv, &gx, &gw, &gdy, true).unwrap();
        assert_close(
            &format!("{what} grad input"),
            &g.read(gg.input.as_ref().unwrap()).unwrap(),
            &c.read(cg.input.as_ref().unwrap()).unwrap(),
            1e-5,
        );
        assert_close(
            &format!("{what} grad weight"),
            &g.read(&gg.weight).unwrap(),
            &c.read(&cg.weight).unwrap(),
            1e-4,
        );
        assert_close(
            &format!("{what} grad bias"),
            &g.read(&gg.bias).unwrap(),
            &c.read(&cg.bias).unwrap(),
            1e-4,
        );
    }

    // LeakyReLU (with NaN, infinities and zeros), concatenation and slicing.
    let s = Shape::new(2, 3, 5, 7);
    let mut x = random(&mut rng, s.len());
    x[..5].copy_from_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]);
    let dy = random(&mut rng, s.len());
    let (cx, gx, cdy, gdy) = (
        c.tensor(s, &x).unwrap(),
        g.tensor(s, &x).unwrap(),
        c.tensor(s, &dy).unwrap(),
        g.tensor(s, &dy).unwrap(),
    );
    for slope in [0.1f32, 0.0, -2.0] {
        let cy = {
            let t = c.leaky_relu(&cx, slope).unwrap();
            c.read(&t).unwrap()
        };
        let gy = {
            let t = g.leaky_relu(&gx, slope).unwrap();
            g.read(&t).unwrap()
        };
        for (i, (a, b)) in gy.iter().zip(&cy).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "leaky relu {slope} [{i}]: {a} vs {b}"
            );
        }
        let cd = {
            let t = c.leaky_relu_backward(&cx, &cdy, slope).unwrap();
            c.read(&t).unwrap()
        };
        let gd = {
            let t = g.leaky_relu_backward(&gx, &gdy, slope).unwrap();
            g.read(&t).unwrap()
        };
        assert_eq!(gd, cd, "leaky relu backward {slope}");
    }
    let shapes = [
        Shape::new(2, 32, 5, 7),
        Shape::new(2, 16, 5, 7),
        Shape::new(2, 16, 5, 7),
    ];
    let values: Vec<Vec<f32>> = shapes.iter().map(|s| random(&mut rng, s.len())).collect();
    let cp: Vec<_> = shapes
        .iter()
        .zip(&values)
        .map(|(s, v)| c.tensor(*s, v).unwrap())
        .collect();
    let gp: Vec<_> = shapes
        .iter()
        .zip(&values)
        .map(|(s, v)| g.tensor(*s, v).unwrap())
        .collect();
    let ccat = c.concat_channels(&cp.iter().collect::<Vec<_>>()).unwrap();
    let gcat = g.concat_channels(&gp.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(g.read(&gcat).unwrap(), c.read(&ccat).unwrap(), "concat channels");
    for (start, len) in [(0, 32), (32, 16), (48, 16), (5, 30)] {
        let cs = {
            let t = c.slice_channels(&ccat, start, len).unwrap();
            c.read(&t).unwrap()
        };
        let gs = {
            let t = g.slice_channels(&gcat, start, len).unwrap();
            g.read(&t).unwrap()
        };
        assert_eq!(gs, cs, "slice channels {start}..+{len}");
    }
    // A slice of a concatenation is the part.
    assert_eq!(
        {
            let t = c.slice_channels(&ccat, 32, 16).unwrap();
            c.read(&t).unwrap()
        },
        values[1]
    );
}

#[test]
fn mobile_layer_shape_errors_name_the_layer() {
    let mut e = CpuEngine::<f32>::new();
    let x = e.zeros(Shape::new(1, 4, 5, 5)).unwrap();
    let not_depthwise = Conv2d::new(4, 8, 3, 1);
    let w = e.zeros(Shape::new(8, 1, 3, 3)).unwrap();
    let err = e
        .depthwise_conv2d(&not_depthwise, &x, &w, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("depthwise") && err.contains("not depthwise"), "{err}");
    let dw = Conv2d::depthwise(4, 3, 1);
    let wrong = e.zeros(Shape::new(4, 4, 3, 3)).unwrap();
    let err = e.depthwise_conv2d(&dw, &x, &wrong, None).unwrap_err().to_string();
    assert!(err.contains("depthwise conv2d weights"), "{err}");
    let err = e.leaky_relu(&x, f32::NAN).unwrap_err().to_string();
    assert!(err.contains("leaky relu") && err.contains("finite"), "{err}");
    let other = e.zeros(Shape::new(1, 4, 5, 6)).unwrap();
    let err = e.concat_channels(&[&x, &other]).unwrap_err().to_string();
    assert!(err.contains("concat channels"), "{err}");
    let err = e.concat_channels(&[]).unwrap_err().to_string();
    assert!(err.contains("no tensor"), "{err}");
    let err = e.slice_channels(&x, 3, 2).unwrap_err().to_string();
    assert!(err.contains("slice channels") && err.contains("3..3+2"), "{err}");
    let err = e.slice_channels(&x, usize::MAX, 2).unwrap_err().to_string();
    assert!(err.contains("slice channels"), "{err}");
    if let Some(ctx) = gpu() {
        let mut g = GpuEngine::new(&ctx).unwrap();
        let x = g.zeros(Shape::new(1, 4, 5, 5)).unwrap();
        let w = g.zeros(Shape::new(8, 1, 3, 3)).unwrap();
        let err = g
            .depthwise_conv2d(&not_depthwise, &x, &w, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not depthwise"), "{err}");
        let err = g.slice_channels(&x, 3, 2).unwrap_err().to_string();
        assert!(err.contains("slice channels"), "{err}");
    }
}

/// The CPU fuses LeakyReLU into the convolutions' epilogues (`conv2d_leaky`,
/// `depthwise_conv2d_leaky`): bit for bit the two steps, on every path of its convolution (one
/// image, a batch in one GEMM, per-image blocks, pointwise); the GPU's (two steps) within
/// rounding of the CPU's.
#[test]
fn fused_leaky_convolutions_equal_the_two_steps() {
    let mut rng = Rng::new(14);
    let mut c = CpuEngine::<f32>::new();
    let cases = [
        (Conv2d::new(3, 8, 3, 2), Shape::new(1, 3, 33, 31)),
        (Conv2d::new(16, 32, 1, 1), Shape::new(1, 16, 20, 20)),
        (Conv2d::new(8, 8, 3, 1), Shape::new(4, 8, 40, 40)),
        (Conv2d::new(8, 8, 3, 1), Shape::new(2, 8, 5, 5)),
    ];
    let mut g = gpu().map(|ctx| GpuEngine::new(&ctx).unwrap());
    for (conv, s) in cases {
        let (x, w, b) = (
            random(&mut rng, s.len()),
            random(&mut rng, conv.weight_shape().len()),
            random(&mut rng, conv.out_channels),
        );
        let (xt, wt, bt) = (
            c.tensor(s, &x).unwrap(),
            c.tensor(conv.weight_shape(), &w).unwrap(),
            c.tensor(conv.bias_shape(), &b).unwrap(),
        );
        let fused = c.conv2d_leaky(&conv, &xt, &wt, Some(&bt), 0.1).unwrap();
        let plain = c.conv2d(&conv, &xt, &wt, Some(&bt)).unwrap();
        let two = c.leaky_relu(&plain, 0.1).unwrap();
        assert_eq!(fused.data(), two.data(), "{conv} on {s}");
        if let Some(g) = g.as_mut() {
            let (gx, gw, gb) = (
                g.tensor(s, &x).unwrap(),
                g.tensor(conv.weight_shape(), &w).unwrap(),
                g.tensor(conv.bias_shape(), &b).unwrap(),
            );
            let y = g.conv2d_leaky(&conv, &gx, &gw, Some(&gb), 0.1).unwrap();
            assert_close(
                &format!("{conv} on {s} fused"),
                &g.read(&y).unwrap(),
                fused.data(),
                1e-4,
            );
        }
    }
    for (conv, s) in depthwise_cases() {
        let (x, w, b) = (
            random(&mut rng, s.len()),
            random(&mut rng, conv.depthwise_weight_shape().len()),
            random(&mut rng, conv.out_channels),
        );
        let (xt, wt, bt) = (
            c.tensor(s, &x).unwrap(),
            c.tensor(conv.depthwise_weight_shape(), &w).unwrap(),
            c.tensor(conv.bias_shape(), &b).unwrap(),
        );
        let fused = c.depthwise_conv2d_leaky(&conv, &xt, &wt, Some(&bt), 0.1).unwrap();
        let plain = c.depthwise_conv2d(&conv, &xt, &wt, Some(&bt)).unwrap();
        let two = c.leaky_relu(&plain, 0.1).unwrap();
        assert_eq!(fused.data(), two.data(), "depthwise {conv} on {s}");
    }
}

/// One large image: the CPU splits its convolution over the threads by output pixels (each
/// thread its own im2col blocks and GEMMs, then the rows assembled with the bias and LeakyReLU):
/// against a direct f64 convolution, "same" convolutions at stride 1 and 2, one without
/// padding, and non-square sizes whose pixel ranges split unevenly.
#[test]
fn one_large_image_convolutions_split_over_threads_match_a_direct_reference() {
    let mut rng = Rng::new(15);
    let mut e = CpuEngine::<f32>::new();
    let layer = |cin: usize, cout: usize, k: usize, stride: usize, padding: usize| Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: (k, k),
        stride,
        padding,
    };
    for (conv, s) in [
        (layer(16, 32, 3, 1, 1), Shape::new(1, 16, 61, 83)),
        (layer(8, 24, 3, 2, 1), Shape::new(1, 8, 121, 97)),
        (layer(16, 16, 3, 1, 0), Shape::new(1, 16, 67, 71)),
    ] {
        let (x, w, b) = (
            random(&mut rng, s.len()),
            random(&mut rng, conv.weight_shape().len()),
            random(&mut rng, conv.out_channels),
        );
        let want = reference_conv(&conv, &x, s, &w, &b);
        let (xt, wt, bt) = (
            e.tensor(s, &x).unwrap(),
            e.tensor(conv.weight_shape(), &w).unwrap(),
            e.tensor(conv.bias_shape(), &b).unwrap(),
        );
        let got = e.conv2d(&conv, &xt, &wt, Some(&bt)).unwrap();
        for (i, (&g, &w)) in got.data().iter().zip(&want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{conv} on {s} [{i}]: {g} vs {w}"
            );
        }
        let leaky = e.conv2d_leaky(&conv, &xt, &wt, Some(&bt), 0.1).unwrap();
        let two = e.leaky_relu(&got, 0.1).unwrap();
        assert_eq!(leaky.data(), two.data(), "{conv} on {s}: fused LeakyReLU");
    }
}
