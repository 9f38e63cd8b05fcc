//! `burn-peer`: the crate's GPU benchmarks run with Burn's wgpu backend (kernels from cubecl,
//! with autodiff, fusion and autotune) on the adapter the crate would use: the peer a user would
//! pick instead of this crate's kernels.
//!
//! ```text
//! cargo run --release -p burn-peer -- focal|conv|gemm [--json]
//! ```
//!
//! Rows have the form and the `op`/`size` values of `retina bench focal|conv|gemm --json`'s GPU
//! rows, with `"backend": "burn-wgpu"`, so that `scripts/peer_table.py` pairs them. Not a default
//! member of the workspace: Burn takes minutes to build and is no dependency of the crate.
//!
//! How each figure is taken (median of `--iters` after an untimed warm-up that also runs
//! Burn's autotune for the shape):
//! - `focal_loss`: sigmoid focal loss (alpha 0.25, gamma 2, normalised by the positives) written
//!   with Burn's tensor ops, forward + backward through autodiff to the logits, data resident.
//! - `conv_forward[..]`: `conv2d` with bias on a device without autodiff.
//! - `conv_backward[..]`: Burn reaches the input gradient only through autodiff, so this is the
//!   time of forward + backward (gradients of input, weights and bias) minus the time of the
//!   same forward on the autodiff device: the difference, not a separate measurement.
//! - `gemm[MxKxN]`: `matmul` of an M x K by a K x N matrix: the implicit GEMMs of those
//!   convolutions (forward, weight gradient, input gradient).
//!
//! A row is printed only after Burn's result was checked on the host (inputs made here and
//! uploaded): the focal loss and every gradient against the crate's CPU twin, sampled outputs of
//! each convolution (forward, and the input, weight and bias gradients) and of each product
//! against sums in f64. A peer that computes something else is an error, not a fast row.

use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Parser, Subcommand};
use retina_cli::cli::bench::{NetworkArgs, Row, parse_size, progress, report};
use retina_cli::workloads;
use retina_wgpu::nn::{ConvUse, gemm_shapes};
use retina_wgpu::nn::{Init, SeededRng};
use retina_wgpu::{FocalInput, FocalLoss};

#[derive(Parser, Debug)]
#[command(about = "retina bench's GPU rows, run with Burn's wgpu backend on the same adapter")]
struct Cli {
    #[command(subcommand)]
    which: Which,
    /// Print one JSON array of rows instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Timed repetitions per measurement (the median is reported), after warm-up.
    #[arg(long, global = true, default_value_t = 5)]
    iters: usize,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// Sigmoid focal loss forward + backward (as `retina bench focal`).
    Focal {
        /// Element counts N x K (rounded down to whole rows).
        #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "1M,16M,64M")]
        sizes: Vec<u64>,
        /// Classes K per anchor.
        #[arg(long, default_value_t = 80)]
        classes: usize,
    },
    /// Every convolution of the small RetinaNet's training step (as `retina bench conv`).
    Conv(NetworkArgs),
    /// The implicit GEMMs of those convolutions as plain matrix products (as `retina bench gemm`).
    Gemm(NetworkArgs),
}

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burn-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), Error> {
    if cli.iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    let Some((device, adapter)) = init()? else {
        return Ok(());
    };
    let peer = Peer {
        device,
        adapter,
        iters: cli.iters,
    };
    let rows = match cli.which {
        Which::Focal { ref sizes, classes } => peer.focal(sizes, classes)?,
        Which::Conv(net) => peer.conv(&net.convs("burn-peer conv")?)?,
        Which::Gemm(net) => peer.gemm(&net.convs("burn-peer gemm")?)?,
    };
    report(&rows, cli.json)?;
    Ok(())
}

/// Burn's wgpu device on the default adapter (the high-performance one, as the crate picks), and
/// the adapter's name. `None` (after saying why on stderr and printing an empty set of rows
/// under `--json`) where Burn cannot start on this machine: the peer is skipped, not crashed.
fn init() -> Result<Option<(Device, String)>, Error> {
    match Device::wgpu_options().init_with_setup() {
        Ok((device, setup)) => {
            let info = setup.adapter.get_info();
            let adapter = format!("{} ({:?})", info.name, info.backend);
            Ok(Some((device, adapter)))
        }
        Err(e) => {
            eprintln!("burn-peer: skipped: Burn's wgpu backend could not start on this machine: {e}");
            if std::env::args().any(|a| a == "--json") {
                println!("[]");
            }
            Ok(None)
        }
    }
}

struct Peer {
    device: Device,
    adapter: String,
    iters: usize,
}

impl Peer {
    fn row(&self, op: String, size: u64, seconds: f64, unit: &str) -> Row {
        Row {
            op,
            backend: "burn-wgpu",
            adapter: self.adapter.clone(),
            size,
            seconds,
            throughput: size as f64 / seconds,
            unit: unit.into(),
            bytes: None,
            compare: String::new(),
        }
    }

    /// Median seconds of `f` followed by waiting for the device, after two untimed runs (the
    /// first runs Burn's autotune for the shapes involved).
    fn median(&self, bar: &indicatif::ProgressBar, mut f: impl FnMut() -> Result<(), Error>) -> Result<f64, Error> {
        for _ in 0..2 {
            f()?;
            self.device.sync()?;
        }
        let mut times = Vec::with_capacity(self.iters);
        for _ in 0..self.iters {
            let start = Instant::now();
            f()?;
            self.device.sync()?;
            times.push(start.elapsed().as_secs_f64());
            bar.inc(1);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    fn focal(&self, sizes: &[u64], classes: usize) -> Result<Vec<Row>, Error> {
        let k = classes.max(1);
        let bar = progress(sizes.len() as u64 * self.iters as u64, "burn focal loss");
        let autodiff = self.device.clone().autodiff();
        let mut rows = Vec::new();
        for &size in sizes {
            let result = (|| -> Result<(), Error> {
                let n_rows = usize::try_from((size / k as u64).max(1))?;
                let (logits, labels) = workloads::focal_problem(n_rows, k);
                // One-hot targets and a per-row weight (0 for ignored anchors, label -2), made on the
                // host: the crate's kernel reads the labels themselves.
                let mut targets = vec![0.0f32; n_rows * k];
                let mut weights = vec![1.0f32; n_rows];
                for (r, &l) in labels.iter().enumerate() {
                    if l >= 0 {
                        targets[r * k + l as usize] = 1.0;
                    } else if l == -2 {
                        weights[r] = 0.0;
                    }
                }
                let positives = labels.iter().filter(|&&l| l >= 0).count().max(1) as f32;
                let n = n_rows * k;
                let logits_host = logits.clone();
                let x = Tensor::<2>::from_data(TensorData::new(logits, [n_rows, k]), &autodiff);
                let t = Tensor::<2>::from_data(TensorData::new(targets, [n_rows, k]), &autodiff);
                let w = Tensor::<2>::from_data(TensorData::new(weights, [n_rows, 1]), &autodiff);
                let focal = FocalLoss::retinanet();
                let (alpha, gamma) = (focal.alpha.unwrap_or(0.5), focal.gamma);
                let run = || {
                    let x = x.clone().require_grad();
                    let p = sigmoid(x.clone());
                    // Cross entropy with logits: -(t log s(x) + (1 - t) log s(-x)).
                    let ce =
                        -(t.clone() * log_sigmoid(x.clone()) + (t.clone().neg() + 1.0) * log_sigmoid(x.clone().neg()));
                    // 1 - p_t = p + t (1 - 2p); alpha_t = (1 - alpha) + t (2 alpha - 1).
                    let one_minus_pt = p.clone() + t.clone() * (p.mul_scalar(-2.0) + 1.0);
                    let alpha_t = t.clone().mul_scalar(2.0 * alpha - 1.0) + (1.0 - alpha);
                    let loss = (alpha_t * one_minus_pt.powf_scalar(gamma) * ce * w.clone()).sum() / positives;
                    let grads = loss.backward();
                    let grad = x.grad(&grads).ok_or("burn gave no gradient for the logits")?;
                    Ok::<_, Error>((loss, grad))
                };
                let seconds = self.median(&bar, || {
                    let kept = run()?;
                    self.device.sync()?;
                    drop(kept);
                    Ok(())
                })?;
                // The same loss and gradient as the crate's CPU twin.
                let (loss, grad) = run()?;
                let loss = read(loss)?[0] as f64;
                let grad = read(grad)?;
                let mut expected_grad = vec![0.0f32; n];
                let expected = retina_wgpu::cpu::focal::focal_loss(
                    &focal,
                    &FocalInput::labels(&logits_host, &labels, k),
                    1.0 / positives,
                    Some(&mut expected_grad),
                    None,
                );
                // The twin returns the unnormalised sum.
                let expected = expected / positives as f64;
                check("focal loss", n, &[loss as f32], &[expected as f32], 1e-4)?;
                check("focal loss gradient", n, &grad, &expected_grad, 1e-4)?;
                rows.push(self.row("focal_loss".into(), n as u64, seconds, "elem/s"));
                Ok(())
            })();
            report_skip(&format!("focal_loss at {size} elements"), result);
        }
        bar.finish_and_clear();
        Ok(rows)
    }

    fn conv(&self, convs: &[ConvUse]) -> Result<Vec<Row>, Error> {
        let distinct = distinct(convs);
        let bar = progress(distinct.len() as u64 * 3 * self.iters as u64, "burn conv");
        let autodiff = self.device.clone().autodiff();
        let mut rows = Vec::new();
        for (key, u) in &distinct {
            let result = (|| -> Result<(), Error> {
                let c = u.conv;
                let options = ConvOptions::new([c.stride; 2], [c.padding; 2], [1, 1], 1);
                let mut rng = SeededRng::new(1);
                let i = u.input;
                let x_host = Init::Normal(1.0).values(i.len(), &mut rng);
                let w_host = Init::Kaiming { fan_in: c.fan_in() }.values(c.weight_shape().len(), &mut rng);
                let b_host = Init::Normal(0.1).values(c.out_channels, &mut rng);
                let make = |device: &Device| {
                    let x = Tensor::<4>::from_data(TensorData::new(x_host.clone(), [i.n, i.c, i.h, i.w]), device);
                    let shape = [c.out_channels, c.in_channels, c.kernel.0, c.kernel.1];
                    let w = Tensor::<4>::from_data(TensorData::new(w_host.clone(), shape), device);
                    let b = Tensor::<1>::from_data(TensorData::new(b_host.clone(), [c.out_channels]), device);
                    (x, w, b)
                };
                let (x, w, b) = make(&self.device);
                let forward = self.median(&bar, || {
                    let y = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
                    self.device.sync()?;
                    drop(y);
                    Ok(())
                })?;
                let (xa, wa, ba) = make(&autodiff);
                let tracked = || {
                    (
                        xa.clone().require_grad(),
                        wa.clone().require_grad(),
                        ba.clone().require_grad(),
                    )
                };
                let forward_tracked = self.median(&bar, || {
                    let (x, w, b) = tracked();
                    let y = conv2d(x, w, Some(b), options.clone()).sum();
                    self.device.sync()?;
                    drop(y);
                    Ok(())
                })?;
                // The loss is the sum of the outputs: the output gradient is all ones.
                let both_passes = || {
                    let (x, w, b) = tracked();
                    let y = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
                    let grads = y.clone().sum().backward();
                    match (x.grad(&grads), w.grad(&grads), b.grad(&grads)) {
                        (Some(dx), Some(dw), Some(db)) => Ok((y, dx, dw, db)),
                        _ => Err(Error::from(
                            "burn gave no gradient for a convolution's input, weights or bias",
                        )),
                    }
                };
                let both = self.median(&bar, || {
                    let kept = both_passes()?;
                    self.device.sync()?;
                    drop(kept);
                    Ok(())
                })?;
                let (y, dx, dw, db) = both_passes()?;
                let direct = Direct {
                    c,
                    input: i,
                    x: &x_host,
                    w: &w_host,
                    b: &b_host,
                };
                direct.check(key, &read(y)?, &read(dx)?, &read(dw)?, &read(db)?)?;
                let backward = both - forward_tracked;
                let flops = c.flops(u.input)?;
                rows.push(self.row(format!("conv_forward[{key}]"), flops as u64, forward, "FLOP/s"));
                if backward > 0.0 {
                    rows.push(self.row(
                        format!("conv_backward[{key}]"),
                        (2.0 * flops) as u64,
                        backward,
                        "FLOP/s",
                    ));
                } else {
                    eprintln!(
                        "burn-peer: skipped conv_backward[{key}]: forward + backward measured no longer than the forward alone (timer noise at this size)"
                    );
                }
                Ok(())
            })();
            report_skip(key, result);
        }
        bar.finish_and_clear();
        Ok(rows)
    }

    fn gemm(&self, convs: &[ConvUse]) -> Result<Vec<Row>, Error> {
        let shapes = gemm_shapes(convs)?;
        let bar = progress(shapes.len() as u64 * self.iters as u64, "burn gemm");
        let mut rows = Vec::new();
        for g in &shapes {
            let result = (|| -> Result<(), Error> {
                let mut rng = SeededRng::new(2);
                let a_host = Init::Normal(1.0).values(g.m * g.k, &mut rng);
                let b_host = Init::Normal(1.0).values(g.k * g.n, &mut rng);
                let a = Tensor::<2>::from_data(TensorData::new(a_host.clone(), [g.m, g.k]), &self.device);
                let b = Tensor::<2>::from_data(TensorData::new(b_host.clone(), [g.k, g.n]), &self.device);
                let seconds = self.median(&bar, || {
                    let c = a.clone().matmul(b.clone());
                    self.device.sync()?;
                    drop(c);
                    Ok(())
                })?;
                let product = read(a.clone().matmul(b.clone()))?;
                let mut picks = SeededRng::new(3);
                for _ in 0..SAMPLES {
                    let (r, col) = (pick(&mut picks, g.m), pick(&mut picks, g.n));
                    let terms = (0..g.k).map(|t| a_host[r * g.k + t] as f64 * b_host[t * g.n + col] as f64);
                    sample_close(&g.op(), terms, product[r * g.n + col])?;
                }
                rows.push(self.row(g.op(), g.flops(), seconds, "FLOP/s"));
                Ok(())
            })();
            report_skip(&g.op(), result);
        }
        bar.finish_and_clear();
        Ok(rows)
    }
}

/// Says on stderr that `what` was skipped, and why (the error and its causes on one line), if
/// `result` failed: one wrong or failing row does not end the benchmark.
fn report_skip(what: &str, result: Result<(), Error>) {
    if let Err(e) = result {
        let why: Vec<String> = e
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        eprintln!("burn-peer: skipped {what}: {}", why.join(" / "));
    }
}

/// Outputs sampled per checked tensor.
const SAMPLES: usize = 64;

fn pick(rng: &mut SeededRng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// A tensor's values on the host.
fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, Error> {
    Ok(t.try_into_data()
        .map_err(|e| format!("burn could not read a tensor back: {e:?}"))?
        .try_into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?)
}

/// `got` against `expected` element by element: within `tol` relative to the larger of 1 and the
/// expected magnitude.
fn check(what: &str, size: usize, got: &[f32], expected: &[f32], tol: f32) -> Result<(), Error> {
    if got.len() != expected.len() {
        return Err(format!(
            "{what} ({size}): burn gave {} values, expected {}",
            got.len(),
            expected.len()
        )
        .into());
    }
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        // NaN fails too.
        let close = (g - e).abs() <= tol * e.abs().max(1.0);
        if !close {
            return Err(format!("{what} ({size}): burn gave {g} at {i}, the crate's CPU twin {e}").into());
        }
    }
    Ok(())
}

/// One output against its sum of `terms` in f64: within 1e-4 of the sum of their magnitudes.
fn sample_close(what: &str, terms: impl Iterator<Item = f64>, got: f32) -> Result<(), Error> {
    let (mut sum, mut scale) = (0.0f64, 1.0f64);
    for t in terms {
        sum += t;
        scale += t.abs();
    }
    let close = (got as f64 - sum).abs() <= 1e-4 * scale;
    if !close {
        return Err(format!("{what}: burn gave {got} where the sum in f64 is {sum}").into());
    }
    Ok(())
}

/// A convolution computed directly on the host, at sampled outputs (the output gradient of the
/// checked backward is all ones).
struct Direct<'a> {
    c: retina_wgpu::nn::Conv2d,
    input: retina_wgpu::nn::Shape,
    x: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
}

impl Direct<'_> {
    fn check(&self, key: &str, y: &[f32], dx: &[f32], dw: &[f32], db: &[f32]) -> Result<(), Error> {
        let (c, i) = (self.c, self.input);
        let out = c.output_shape(i)?;
        let (kh, kw, s, p) = (c.kernel.0, c.kernel.1, c.stride as isize, c.padding as isize);
        let xi = |n: usize, ch: usize, r: isize, q: isize| -> Option<f64> {
            (r >= 0 && q >= 0 && (r as usize) < i.h && (q as usize) < i.w)
                .then(|| self.x[((n * i.c + ch) * i.h + r as usize) * i.w + q as usize] as f64)
        };
        let wi = |o: usize, ch: usize, a: usize, b: usize| self.w[((o * c.in_channels + ch) * kh + a) * kw + b] as f64;
        let mut rng = SeededRng::new(4);
        for _ in 0..SAMPLES {
            // Forward: y[n, o, r, q] = b[o] + sum over ch, a, b of x[n, ch, r s - p + a, q s - p + b] w[o, ch, a, b].
            let (n, o, r, q) = (
                pick(&mut rng, out.n),
                pick(&mut rng, out.c),
                pick(&mut rng, out.h),
                pick(&mut rng, out.w),
            );
            let mut terms = vec![self.b[o] as f64];
            for ch in 0..c.in_channels {
                for a in 0..kh {
                    for b in 0..kw {
                        if let Some(v) = xi(n, ch, r as isize * s - p + a as isize, q as isize * s - p + b as isize) {
                            terms.push(v * wi(o, ch, a, b));
                        }
                    }
                }
            }
            let at = ((n * out.c + o) * out.h + r) * out.w + q;
            sample_close(&format!("conv forward {key}"), terms.into_iter(), y[at])?;
            // Weight gradient (output gradient 1): dw[o, ch, a, b] = sum of the inputs it met.
            let (ch, a, b) = (pick(&mut rng, c.in_channels), pick(&mut rng, kh), pick(&mut rng, kw));
            let mut terms = Vec::new();
            for n in 0..out.n {
                for r in 0..out.h {
                    for q in 0..out.w {
                        if let Some(v) = xi(n, ch, r as isize * s - p + a as isize, q as isize * s - p + b as isize) {
                            terms.push(v);
                        }
                    }
                }
            }
            let at = ((o * c.in_channels + ch) * kh + a) * kw + b;
            sample_close(&format!("conv weight gradient {key}"), terms.into_iter(), dw[at])?;
            // Input gradient: dx[n, ch, r, q] = sum of the weights that met it.
            let (r, q) = (pick(&mut rng, i.h) as isize, pick(&mut rng, i.w) as isize);
            let mut terms = Vec::new();
            for o in 0..c.out_channels {
                for a in 0..kh {
                    for b in 0..kw {
                        let (yr, yq) = (r + p - a as isize, q + p - b as isize);
                        if yr >= 0
                            && yq >= 0
                            && yr % s == 0
                            && yq % s == 0
                            && ((yr / s) as usize) < out.h
                            && ((yq / s) as usize) < out.w
                        {
                            terms.push(wi(o, ch, a, b));
                        }
                    }
                }
            }
            let at = ((n * i.c + ch) * i.h + r as usize) * i.w + q as usize;
            sample_close(&format!("conv input gradient {key}"), terms.into_iter(), dx[at])?;
        }
        // Bias gradient: one per output position.
        let positions = vec![(out.n * out.h * out.w) as f32; c.out_channels];
        check(
            &format!("conv bias gradient {key}"),
            c.out_channels,
            db,
            &positions,
            1e-5,
        )
    }
}

/// The distinct convolutions of a step, keyed as `retina bench conv` keys them.
fn distinct(convs: &[ConvUse]) -> Vec<(String, ConvUse)> {
    let mut out: Vec<(String, ConvUse)> = Vec::new();
    for u in convs {
        let key = format!("{} @{}x{}", u.conv, u.input.h, u.input.w);
        if !out.iter().any(|(k, _)| *k == key) {
            out.push((key, *u));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
