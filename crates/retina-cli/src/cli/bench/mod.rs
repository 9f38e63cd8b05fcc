//! `retina bench`: each kernel on the GPU against the CPU backend, measured side by side in one
//! run. Prints a table, or with `--json` one JSON array of rows
//! `{"op", "backend", "adapter", "size", "seconds", "throughput", "unit"}` (seconds: median).

mod conv;
mod eval;
mod faces;
mod focal;
mod gemm;
mod matcher;
mod nms;
mod train;

use std::time::Instant;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use retina_wgpu::gpu::Profile;
use retina_wgpu::{GpuContext, Result};
use serde::Serialize;

use crate::cli::BackendChoice;

/// `retina bench`'s arguments: which benchmark, and its options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// Focal loss forward + backward: GPU (data resident, and with upload + readback) vs CPU.
    Focal(focal::FocalArgs),
    /// Every convolution of the small RetinaNet, forward and backward: GPU vs CPU, in FLOP/s.
    Conv(conv::ConvArgs),
    /// The implicit GEMMs of those convolutions as plain matrix products: GPU vs CPU, in FLOP/s.
    Gemm(gemm::GemmArgs),
    /// Target assignment (IoU, matching, encoding) for a batch: GPU vs CPU.
    Match(matcher::MatchArgs),
    /// NMS (plain and class-aware) and the whole detection post-processing: GPU vs CPU.
    Nms(nms::NmsArgs),
    /// COCO bbox evaluation of a val2017-sized workload: parsing, evaluating, the whole run.
    Eval(eval::EvalArgs),
    /// The small RetinaNet's training step and inference at batch 8: GPU vs CPU, images/s.
    Train(train::TrainArgs),
    /// A face model (`--model faces`) or a torchvision RetinaNet on a photo, the whole
    /// pipeline per image: GPU vs CPU.
    Detect(faces::DetectArgs),
}

/// Options every bench takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Print one JSON array of rows instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Timed repetitions per measurement (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Backends to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub backend: BackendChoice,
    /// After timing, run each GPU measurement once more with the device's timestamps
    /// (`TIMESTAMP_QUERY`, one pass per dispatch) and print its device time per kernel (on
    /// stderr with `--json`).
    #[arg(long)]
    pub profile: bool,
}

/// The network whose convolutions `bench conv` and `bench gemm` (and `burn-peer`) measure: the
/// small RetinaNet's, for a batch of square images.
#[derive(Args, Debug, Clone, Copy)]
pub struct NetworkArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Image side.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Classes of the classification head (anchors per cell: 9).
    #[arg(long, default_value_t = 80)]
    pub classes: usize,
}

impl NetworkArgs {
    /// The network's convolutions ([`retina_wgpu::nn::small_retinanet_convs`]), or an error
    /// naming `what` when a size is 0.
    pub fn convs(&self, what: &str) -> Result<Vec<retina_wgpu::nn::ConvUse>> {
        if self.batch == 0 || self.size == 0 || self.classes == 0 {
            return Err(retina_wgpu::Error::InvalidParameter(format!(
                "{what}: --batch, --size and --classes must be at least 1, got {}, {} and {}",
                self.batch, self.size, self.classes
            )));
        }
        Ok(retina_wgpu::nn::small_retinanet_convs(
            self.batch,
            self.size,
            9,
            self.classes,
        ))
    }
}

/// Runs the chosen benchmark and prints its rows.
pub fn run(args: BenchArgs) -> Result<()> {
    match args.which {
        Which::Focal(a) => focal::run(a),
        Which::Conv(a) => conv::run(a),
        Which::Gemm(a) => gemm::run(a),
        Which::Match(a) => matcher::run(a),
        Which::Nms(a) => nms::run(a),
        Which::Eval(a) => eval::run(a),
        Which::Train(a) => train::run(a),
        Which::Detect(a) => faces::run(a),
    }
}

/// One measurement.
#[derive(Serialize, Debug, Clone)]
pub struct Row {
    /// What was measured (`focal_loss`, `focal_loss_with_transfer`, ...).
    pub op: String,
    /// "gpu" or "cpu".
    pub backend: &'static str,
    /// The adapter (or CPU thread count).
    pub adapter: String,
    /// Problem size (elements, boxes, ...; see `unit`).
    pub size: u64,
    /// Median seconds.
    pub seconds: f64,
    /// `size / seconds`, in `unit`.
    pub throughput: f64,
    /// Unit of the throughput.
    pub unit: String,
    /// Bytes of input read per run, for a GB/s column (table only).
    #[serde(skip)]
    pub bytes: Option<f64>,
    /// Rows with the same key and size are compared with the CPU row (table only).
    #[serde(skip)]
    pub compare: String,
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total).with_message(what.to_string());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `f` once to warm up, then `iters` times; returns the median seconds.
pub fn median_seconds(iters: usize, bar: &ProgressBar, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
        bar.inc(1);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Median seconds of `record` on the device: each run records into a fresh encoder, submits and
/// waits for the device (data stays resident; nothing is read back). With `--profile`, one more
/// run under a profile, printed as `what`'s time per kernel.
pub fn gpu_median_seconds(
    ctx: &GpuContext,
    common: &Common,
    what: &str,
    bar: &ProgressBar,
    mut record: impl FnMut(&mut retina_wgpu::wgpu::CommandEncoder) -> Result<()>,
) -> Result<f64> {
    let mut run = || {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        record(&mut encoder)?;
        let index = ctx.queue().submit([encoder.finish()]);
        ctx.device()
            .poll(retina_wgpu::wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| retina_wgpu::Error::ReadbackFailed(e.to_string()))?;
        Ok(())
    };
    let seconds = median_seconds(common.iters, bar, &mut run)?;
    if common.profile {
        print_profile(bar, what, profiled(ctx, run));
    }
    Ok(seconds)
}

/// `run` once under a profile of `ctx` ([`GpuContext::start_profile`]).
pub fn profiled(ctx: &GpuContext, run: impl FnOnce() -> Result<()>) -> Result<Profile> {
    ctx.start_profile()?;
    let result = run();
    // Closed whatever `run` gave, so that the context is never left profiling.
    let profile = ctx.finish_profile();
    result.and(profile)
}

/// Prints `what`'s profile on stderr (above the progress bar), or why there is none: a device
/// without timestamps is a line saying so, not a failed benchmark.
pub fn print_profile(bar: &ProgressBar, what: &str, profile: Result<Profile>) {
    let mut text = String::new();
    match profile {
        Err(e) => text.push_str(&format!("profile of {what}: none ({e})")),
        Ok(p) => {
            let total = p.total_seconds();
            text.push_str(&format!(
                "profile of {what}: {:.3} ms of device time in {} dispatches (one pass each){}\n",
                total * 1e3,
                p.kernels.iter().map(|k| k.dispatches).sum::<u64>(),
                if p.untimed > 0 {
                    format!(", {} more untimed", p.untimed)
                } else {
                    String::new()
                }
            ));
            text.push_str(&format!(
                "  {:<28} {:>10} {:>12} {:>7}",
                "kernel", "dispatches", "device ms", "share"
            ));
            for k in &p.kernels {
                text.push_str(&format!(
                    "\n  {:<28} {:>10} {:>12.3} {:>6.1}%",
                    k.kernel,
                    k.dispatches,
                    k.seconds * 1e3,
                    if total > 0.0 { 100.0 * k.seconds / total } else { 0.0 }
                ));
            }
        }
    }
    bar.suspend(|| eprintln!("{text}"));
}

/// Prints `rows` as JSON or as a table with GPU/CPU ratios.
pub fn report(rows: &[Row], json: bool) -> Result<()> {
    if json {
        let text =
            serde_json::to_string_pretty(rows).map_err(|e| retina_wgpu::Error::InvalidParameter(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    let mut named: Vec<&str> = Vec::new();
    for row in rows {
        if !named.contains(&row.backend) {
            named.push(row.backend);
            println!("{}: {}", row.backend, row.adapter);
        }
    }
    println!();
    let width = rows.iter().map(|r| r.op.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<width$} {:>10} {:>4} {:>12} {:>20} {:>7} {:>8}",
        "op", "size", "", "median", "throughput", "GB/s", "vs CPU"
    );
    for row in rows {
        let cpu = rows
            .iter()
            .find(|c| c.backend == "cpu" && c.compare == row.compare && c.size == row.size);
        let ratio = match cpu {
            Some(c) if row.backend == "gpu" => format!("{:.2}x", c.seconds / row.seconds),
            _ => String::new(),
        };
        let gbs = row
            .bytes
            .map_or(String::new(), |b| format!("{:.2}", b / row.seconds / 1e9));
        println!(
            "{:<width$} {:>10} {:>4} {:>12} {:>20} {:>7} {:>8}",
            row.op,
            human(row.size as f64),
            row.backend,
            format_seconds(row.seconds),
            format!("{} {}", human(row.throughput), row.unit),
            gbs,
            ratio
        );
    }
    Ok(())
}

/// 1234567 -> "1.23M".
pub fn human(v: f64) -> String {
    let (scaled, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{scaled:.3}{suffix}").replace(".000", "")
}

fn format_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// Refuses a generated workload of `bytes` bytes in host memory before generating it: beyond
/// [`retina_wgpu::nn::MAX_HOST_BYTES`], or more than the allocator will reserve, is an
/// out-of-memory error naming `what`, not an abort.
pub fn check_workload(what: &str, bytes: u128) -> Result<()> {
    let max = retina_wgpu::nn::MAX_HOST_BYTES;
    let fits = u64::try_from(bytes).is_ok_and(|b| b <= max)
        && usize::try_from(bytes).is_ok_and(|b| Vec::<u8>::new().try_reserve_exact(b).is_ok());
    if !fits {
        return Err(retina_wgpu::Error::OutOfMemory(format!(
            "CPU: {what} needs {bytes} bytes of host memory, more than this machine will reserve \
             (the CPU backend's cap is {max} bytes); choose a smaller size"
        )));
    }
    Ok(())
}

/// Parses sizes like "1M,16M,64M", "5000", "20k" (decimal multipliers).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (like 5000, 20k or 16M)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("size `{s}` must be positive"));
    }
    Ok((v * mult).round() as u64)
}
