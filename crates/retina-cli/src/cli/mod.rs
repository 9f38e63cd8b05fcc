//! Command-line definitions and dispatch.

mod ablate;
pub mod bench;
mod demo;
mod detect;
mod eval;
pub(crate) mod faces;
mod info;
mod synth;
mod train;
pub(crate) mod tvnet;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use retina_wgpu::{Backend, Error, Progress, Result};

/// RetinaNet's focal loss, anchor matching and NMS as WGSL compute shaders on any GPU.
#[derive(Parser, Debug)]
#[command(name = "retina", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trains a detector on synthetic shapes in about five minutes, evaluates it and draws its
    /// detections and loss curves (the place to start).
    Demo(demo::DemoArgs),
    /// The paper's experiment: focal loss against cross entropy, FL* and OHEM, same data,
    /// schedule and seeds; tables and plots.
    Ablate(ablate::AblateArgs),
    /// Lists the adapters wgpu sees, the one chosen, its limits and features.
    Info,
    /// Measures a kernel on the GPU against the CPU backend.
    Bench(bench::BenchArgs),
    /// Evaluates COCO bbox results against ground truth, exactly as pycocotools does.
    Eval(eval::EvalArgs),
    /// Writes a synthetic COCO dataset (shapes on textured backgrounds) and its anchor statistics.
    Synth(synth::SynthArgs),
    /// Trains the small RetinaNet on synthetic scenes or a COCO dataset, on the GPU or the CPU.
    Train(train::TrainArgs),
    /// Runs a trained model on images: COCO results, and the images with their detections drawn.
    Detect(detect::DetectArgs),
}

/// Which backends a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The GPU only.
    Gpu,
    /// The CPU backend only.
    Cpu,
    /// Both, side by side.
    Both,
}

impl BackendChoice {
    /// The backends to run on, GPU first. A missing GPU is an error when only the GPU is asked
    /// for; with `both`, the CPU half runs alone and a line on stderr says that the GPU half was
    /// skipped and why. A GPU configuration error (a bad `WGPU_BACKEND`) is an error either way.
    pub fn backends(self) -> Result<Vec<Backend>> {
        let mut out = Vec::new();
        if self != BackendChoice::Cpu {
            match Backend::gpu() {
                Ok(gpu) => out.push(gpu),
                Err(e @ (Error::NoAdapter(_) | Error::DeviceLost(_))) if self == BackendChoice::Both => {
                    eprintln!("skipping the GPU half of --backend both: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if self != BackendChoice::Gpu {
            out.push(Backend::Cpu);
        }
        Ok(out)
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Ablate(args) => ablate::run(args),
        Command::Info => info::run(),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Synth(args) => synth::run(args),
    }
}

/// The library's progress reports drawn as a bar on stderr (not drawn when stderr is not a
/// terminal), or not at all when hidden.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar that draws when `show`, else draws nothing.
    pub fn new(show: bool) -> Self {
        Self(if show {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        })
    }
}

impl Progress for Bar {
    fn start(&self, label: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(label.to_string());
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed} eta {eta}") {
            self.0.set_style(style.progress_chars("=> "));
        }
        self.0.reset_elapsed();
        self.0.reset_eta();
    }

    fn advance(&self, units: u64) {
        self.0.inc(units);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
