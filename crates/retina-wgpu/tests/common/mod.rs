//! Helpers shared by the integration tests: the native ones (one binary per file) and the
//! browser ones (tests/web.rs, compiled for wasm32-unknown-unknown).
//!
//! This module and [`cases`] (the input generators and comparisons that the native tests and
//! the browser tests both use) compile for wasm32: nothing in them reads a file, reads the
//! environment or blocks on the device. Results are read back by the caller, with
//! `GpuContext::download` natively and `GpuContext::download_async` in a browser. The native-only
//! parts, behind `#[cfg(not(target_arch = "wasm32"))]`, are the shared GPU context ([`gpu`],
//! [`gpu_with`], [`backends`]) and the golden-vector files ([`golden`], [`golden_path`]).
//!
//! # Golden vectors
//!
//! Every test that checks against reference vectors reads them through [`golden`]`(name)`,
//! which takes the file from one rule:
//!
//! - `RETINA_GOLDEN_DIR` unset: `tests/golden/<name>` of this crate;
//! - `RETINA_GOLDEN_DIR` set and `$RETINA_GOLDEN_DIR/<name>` a file: that file;
//! - `RETINA_GOLDEN_DIR` set but without `<name>` (a shared directory of torchvision vectors
//!   holds box_ops.json, focal_loss.json, matcher.json and nms.json, neither group_norm.json
//!   nor retinanet_step.json): `tests/golden/<name>`, after one line on stderr that says so.
//!
//! The browser tests have no file system nor environment: they compile tests/golden/'s files
//! in (`include_str!`) and parse them with [`parse_golden`].
#![allow(dead_code)]

pub mod cases;
pub mod tv_formula;

#[cfg(not(target_arch = "wasm32"))]
use std::path::PathBuf;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::OnceLock;

use retina_wgpu::nn::CpuTensor;
#[cfg(not(target_arch = "wasm32"))]
use retina_wgpu::{Backend, GpuContext, GpuOptions};

/// The vectors bundled with the crate.
#[cfg(not(target_arch = "wasm32"))]
fn bundled_golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Where the golden file `name` is read from (the rule of this module's documentation):
/// `$RETINA_GOLDEN_DIR/name` when the variable is set and the file is there, else
/// tests/golden/name (with one line on stderr when the variable is set but lacks the file).
#[cfg(not(target_arch = "wasm32"))]
pub fn golden_path(name: &str) -> PathBuf {
    let bundled = bundled_golden_dir().join(name);
    let Some(dir) = std::env::var_os("RETINA_GOLDEN_DIR") else {
        return bundled;
    };
    let shared = PathBuf::from(&dir).join(name);
    if shared.is_file() {
        shared
    } else {
        eprintln!(
            "RETINA_GOLDEN_DIR={} has no {name}: reading {} instead",
            PathBuf::from(dir).display(),
            bundled.display()
        );
        bundled
    }
}

/// Reads and parses the golden file `name` (see [`golden_path`] for where from).
#[cfg(not(target_arch = "wasm32"))]
pub fn golden(name: &str) -> serde_json::Value {
    let path = golden_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_golden(&path.display().to_string(), &text)
}

/// Parses the text of a golden file; `name` is for the message when it is not JSON.
pub fn parse_golden(name: &str, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
}

/// A JSON array of numbers as f32.
pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).unwrap_or(f32::NAN))
        .collect()
}

/// A JSON array of integers as i32 (flattening nested arrays).
pub fn i32s(v: &serde_json::Value) -> Vec<i32> {
    let mut out = Vec::new();
    flatten_i32(v, &mut out);
    out
}

fn flatten_i32(v: &serde_json::Value, out: &mut Vec<i32>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|x| flatten_i32(x, out)),
        other => out.push(other.as_i64().expect("integer") as i32),
    }
}

/// A JSON array (nested or not) of numbers as flat f32.
pub fn flat_f32(v: &serde_json::Value) -> Vec<f32> {
    let mut out = Vec::new();
    flatten_f32(v, &mut out);
    out
}

fn flatten_f32(v: &serde_json::Value, out: &mut Vec<f32>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|x| flatten_f32(x, out)),
        other => out.push(other.as_f64().map(|f| f as f32).unwrap_or(f32::NAN)),
    }
}

/// A JSON array (nested or not) of integers as u32 (indices).
pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    i32s(v).into_iter().map(|x| x as u32).collect()
}

/// A JSON array of boxes (nested or flat, four numbers each) as `[x1, y1, x2, y2]`.
pub fn boxes(v: &serde_json::Value) -> Vec<[f32; 4]> {
    flat_f32(v).chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

/// Boxes as one flat array, for [`assert_close`].
pub fn flatten(b: &[[f32; 4]]) -> Vec<f32> {
    b.iter().flatten().copied().collect()
}

// The shared native context: in a browser (tests/web.rs) a context is made with
// `GpuContext::new_async`, and wgpu's types are neither Send nor Sync there (no static).
#[cfg(not(target_arch = "wasm32"))]
fn require_gpu() -> bool {
    std::env::var("RETINA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The shared GPU context of this test binary, or `None` (after one line saying why) when the
/// machine has no adapter and `RETINA_REQUIRE_GPU=1` is not set. With it set, no adapter fails.
#[cfg(not(target_arch = "wasm32"))]
pub fn gpu() -> Option<GpuContext> {
    static CONTEXT: OnceLock<Option<GpuContext>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| match GpuContext::new() {
            Ok(ctx) => Some(ctx),
            Err(e) if !require_gpu() => {
                eprintln!("skipping GPU tests: {e}");
                None
            }
            Err(e) => panic!("RETINA_REQUIRE_GPU=1 but no GPU context: {e}"),
        })
        .clone()
}

/// A GPU context with custom options (artificially small limits, no subgroups, ...), or `None`
/// as [`gpu`] when there is no adapter.
#[cfg(not(target_arch = "wasm32"))]
pub fn gpu_with(options: GpuOptions) -> Option<GpuContext> {
    gpu()?;
    Some(GpuContext::new_with(options).expect("a second context on the same adapter"))
}

/// The backends to check: always the CPU, and the GPU when there is one.
#[cfg(not(target_arch = "wasm32"))]
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    if let Some(ctx) = gpu() {
        out.push(Backend::Gpu(ctx));
    }
    out
}

/// A small deterministic generator (SplitMix64) so tests need no extra dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// Asserts |a - b| <= atol + rtol |b| elementwise, naming the first offender.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        assert!(ok, "{what}[{i}]: got {g}, want {w} (rtol {rtol}, atol {atol})");
    }
}

/// `n` standard normal values.
pub fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// d(sum(y * r))/d(v) by central differences in f64, for `k` random entries of `v` (all of them
/// when `v` has at most `k`).
pub fn finite_differences(
    rng: &mut Rng,
    v: &mut CpuTensor<f64>,
    k: usize,
    loss: &mut dyn FnMut(&CpuTensor<f64>) -> f64,
) -> Vec<(usize, f64)> {
    let n = v.data().len();
    let picks: Vec<usize> = if n <= k {
        (0..n).collect()
    } else {
        (0..k).map(|_| rng.below(n as u64) as usize).collect()
    };
    picks
        .into_iter()
        .map(|i| {
            let original = v.data()[i];
            let h = 1e-6 * original.abs().max(1.0);
            v.data_mut()[i] = original + h;
            let up = loss(v);
            v.data_mut()[i] = original - h;
            let down = loss(v);
            v.data_mut()[i] = original;
            (i, (up - down) / (2.0 * h))
        })
        .collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[track_caller]
pub fn assert_gradient(what: &str, analytic: &[f64], numeric: &[(usize, f64)]) {
    for &(i, fd) in numeric {
        let g = analytic[i];
        assert!(
            (g - fd).abs() <= 1e-6 * fd.abs().max(1.0),
            "{what}: d/d[{i}] analytic {g} vs finite difference {fd}"
        );
    }
}

/// A direct convolution in f64: the textbook seven loops.
pub fn reference_conv(
    c: &retina_wgpu::nn::Conv2d,
    x: &[f32],
    s: retina_wgpu::nn::Shape,
    w: &[f32],
    b: &[f32],
) -> Vec<f64> {
    let out = c.output_shape(s).unwrap();
    let (kh, kw) = c.kernel;
    let mut y = vec![0.0f64; out.len()];
    for n in 0..s.n {
        for co in 0..c.out_channels {
            for oy in 0..out.h {
                for ox in 0..out.w {
                    let mut acc = f64::from(b[co]);
                    for ci in 0..c.in_channels {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * c.stride + ky) as isize - c.padding as isize;
                                let ix = (ox * c.stride + kx) as isize - c.padding as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                    let xv = x[((n * s.c + ci) * s.h + iy as usize) * s.w + ix as usize];
                                    let wv = w[((co * c.in_channels + ci) * kh + ky) * kw + kx];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                    }
                    y[((n * c.out_channels + co) * out.h + oy) * out.w + ox] = acc;
                }
            }
        }
    }
    y
}
