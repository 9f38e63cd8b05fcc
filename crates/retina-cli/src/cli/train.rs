//! `retina train`: trains the small RetinaNet on the synthetic scenes or a COCO dataset on disk,
//! on the GPU or the CPU backend, with a progress bar (loss, images/s, ETA), `metrics.jsonl`,
//! and checkpoints written atomically (periodically, at the end, and on Ctrl-C).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use retina_wgpu::coco::{CocoDataset, DatasetOptions, Instances, Normalize};
use retina_wgpu::data::SceneConfig;
use retina_wgpu::model::checkpoint::{self, ModelDir};
use retina_wgpu::model::{LossEngine, LossValues, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::{CpuEngine, GpuEngine};
use retina_wgpu::train::{SyntheticData, TrainData, TrainOptions, Trainer};
use retina_wgpu::{Error, GpuContext, Result};
use serde::Serialize;

use crate::cli::Bar;

/// Which engine trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineChoice {
    /// A real GPU when there is one, else the CPU backend (a software Vulkan device such as
    /// lavapipe is far slower than the CPU backend for convolutions).
    Auto,
    /// The GPU (any adapter, lavapipe included).
    Gpu,
    /// The CPU backend.
    Cpu,
}

impl EngineChoice {
    /// The GPU context to train on, or `None` for the CPU backend.
    pub fn resolve(self) -> Result<Option<GpuContext>> {
        match self {
            EngineChoice::Cpu => Ok(None),
            EngineChoice::Gpu => GpuContext::new().map(Some),
            EngineChoice::Auto => Ok(GpuContext::new()
                .ok()
                .filter(|ctx| ctx.adapter_info().device_type != retina_wgpu::wgpu::DeviceType::Cpu)),
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Where the model, optimiser state and metrics go.
    #[arg(long, default_value = "retina-out")]
    out: PathBuf,
    /// The engine.
    #[arg(long, value_enum, default_value = "auto")]
    backend: EngineChoice,
    /// SGD steps in all (default 3000; ignored with --minutes). With --resume, the saved run's
    /// count unless given.
    #[arg(long)]
    steps: Option<usize>,
    /// Train for about this many minutes instead: the step count (and so the schedule) is set
    /// from the speed of the first steps.
    #[arg(long)]
    minutes: Option<f64>,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Learning rate after warmup.
    #[arg(long, default_value_t = 0.03)]
    lr: f32,
    /// Seed of the initial weights, the data order and the flips.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Square input size (a multiple of 32).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// A network configuration (JSON of `RetinaNetConfig`) instead of the default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint: weights, momentum, step, and the saved
    /// learning rate, schedule, batch and seed (the options given here are ignored, except
    /// --steps, --minutes and --log-every).
    #[arg(long)]
    resume: bool,
    /// Read the loss and log every this many steps.
    #[arg(long, default_value_t = 20)]
    log_every: usize,
    /// Write a checkpoint every this many steps.
    #[arg(long, default_value_t = 500)]
    save_every: usize,
    /// No progress bar (log lines only).
    #[arg(long)]
    quiet: bool,
}

/// Where images and ground truth come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// `synthetic` (the built-in scene generator) or a COCO dataset directory
    /// (`DIR/annotations.json` + `DIR/images/`, as `retina synth` writes).
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// A COCO instances file (with --images), instead of --data.
    #[arg(long, value_name = "FILE", requires = "images")]
    pub annotations: Option<PathBuf>,
    /// The directory of the images that --annotations names.
    #[arg(long, value_name = "DIR", requires = "annotations")]
    pub images: Option<PathBuf>,
    /// Skip missing or corrupt image files (they are counted and named) instead of failing.
    #[arg(long)]
    pub skip_unreadable: bool,
}

impl DataArgs {
    /// The dataset on disk these arguments name, loaded at `size` px, or `None` for the
    /// synthetic generator.
    pub fn open(&self, size: usize) -> Result<Option<CocoDataset>> {
        let options = DatasetOptions {
            input_size: size as u32,
            skip_unreadable: self.skip_unreadable,
            ..DatasetOptions::default()
        };
        let (annotations, images) = match (&self.annotations, &self.images) {
            (Some(annotations), Some(images)) => (annotations.clone(), images.clone()),
            _ if self.data == "synthetic" => return Ok(None),
            _ => (
                Path::new(&self.data).join("annotations.json"),
                Path::new(&self.data).join("images"),
            ),
        };
        let instances = Instances::load(annotations)?;
        let dataset = CocoDataset::from_instances_with_progress(instances, images, &options, &Bar::new(true))?;
        eprintln!("{}", dataset.report());
        Ok(Some(dataset))
    }

    /// A short name of the data for messages.
    pub fn describe(&self) -> String {
        match &self.annotations {
            Some(annotations) => annotations.display().to_string(),
            None => self.data.clone(),
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct Metrics {
    step: usize,
    seconds: f64,
    loss: f32,
    class_loss: f32,
    box_loss: f32,
    lr: f32,
    images_per_second: f64,
}

/// What a finished run reports.
pub struct TrainReport {
    /// Steps done in all (with a resumed run's earlier ones).
    pub steps: usize,
    /// Seconds of this run.
    pub seconds: f64,
    /// Images per second of this run.
    pub images_per_second: f64,
    /// The last logged loss.
    pub last: Option<LossValues>,
    /// "cpu" or the adapter's name.
    pub engine: String,
    /// Whether Ctrl-C stopped it.
    pub interrupted: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let data = open_data(&args.data, args.size, args.seed)?;
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            serde_json::from_slice(&text).map_err(|e| Error::Format {
                path: path.display().to_string(),
                detail: format!("invalid configuration: {e}"),
            })?
        }
        None => RetinaNetConfig::default(),
    };
    config.input_size = args.size;
    config.num_classes = data.num_classes();
    config.categories = data.categories();
    let options = if args.resume {
        let saved = retina_wgpu::train::saved_options(&args.out)?;
        TrainOptions {
            steps: args.steps.unwrap_or(saved.steps),
            log_every: args.log_every,
            ..saved
        }
    } else {
        let steps = args.steps.unwrap_or(3000);
        TrainOptions {
            steps,
            batch: args.batch,
            lr: args.lr,
            warmup_steps: (steps / 20).max(1),
            seed: args.seed,
            log_every: args.log_every,
            ..TrainOptions::default()
        }
    };
    let run = RunSettings {
        out: args.out.clone(),
        minutes: args.minutes,
        save_every: args.save_every.max(1),
        quiet: args.quiet,
        resume: args.resume,
    };
    let report = train(args.backend, config, options, data.as_ref(), &run)?;
    if let Some(v) = report.last {
        println!("last loss {:.4} (class {:.4}, box {:.4})", v.total(), v.class, v.boxes);
    }
    println!(
        "{} steps on {} in {:.1} s ({:.1} images/s){}; model in {}",
        report.steps,
        report.engine,
        report.seconds,
        report.images_per_second,
        if report.interrupted { ", interrupted" } else { "" },
        args.out.display()
    );
    Ok(())
}

/// The training data the arguments name: the synthetic generator or a dataset on disk.
pub fn open_data(data: &DataArgs, size: usize, seed: u64) -> Result<Box<dyn TrainData>> {
    Ok(match data.open(size)? {
        Some(dataset) => Box::new(dataset),
        None => Box::new(SyntheticData {
            config: SceneConfig {
                size: size as u32,
                ..SceneConfig::default()
            },
            seed,
            normalize: Normalize::IMAGENET,
        }),
    })
}

/// Where and how a run writes.
pub struct RunSettings {
    /// The run's directory.
    pub out: PathBuf,
    /// A time budget instead of the step count.
    pub minutes: Option<f64>,
    /// Checkpoint interval in steps.
    pub save_every: usize,
    /// No progress bar.
    pub quiet: bool,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
}

/// Trains on the chosen engine.
pub fn train(
    backend: EngineChoice,
    config: RetinaNetConfig,
    options: TrainOptions,
    data: &dyn TrainData,
    run: &RunSettings,
) -> Result<TrainReport> {
    let (net, values) = if run.resume {
        let (net, values) = checkpoint::load_model(&run.out)?;
        if net.config().num_classes != data.num_classes() || net.config().input_size != data.size() {
            return Err(Error::InvalidParameter(format!(
                "--resume: the checkpoint in {} is for {} classes at {} px, the data has {} classes at {} px",
                run.out.display(),
                net.config().num_classes,
                net.config().input_size,
                data.num_classes(),
                data.size()
            )));
        }
        (net, values)
    } else {
        let net = RetinaNet::new(config)?;
        let values = net.init(options.seed);
        (net, values)
    };
    match backend.resolve()? {
        Some(ctx) => {
            let name = ctx.adapter_name();
            let trainer = Trainer::new(GpuEngine::new(&ctx)?, net, &values, options)?;
            train_with(trainer, data, run, name)
        }
        None => {
            let name = format!("the CPU backend ({} threads)", rayon::current_num_threads());
            let trainer = Trainer::new(CpuEngine::new(), net, &values, options)?;
            train_with(trainer, data, run, name)
        }
    }
}

fn train_with<E: LossEngine>(
    mut trainer: Trainer<E>,
    data: &dyn TrainData,
    run: &RunSettings,
    engine: String,
) -> Result<TrainReport> {
    let out = &run.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if run.resume {
        trainer.restore_optimizer(out)?;
    } else if ModelDir(out.clone()).weights().exists() {
        return Err(Error::InvalidParameter(format!(
            "{} already holds a model: pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // A second handler cannot be installed (a demo after a train in one process): the
        // first one still sets its own flag, so Ctrl-C then ends the process as usual.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;

    let batch = trainer.options().batch;
    let first_step = trainer.step_count();
    let mut total_steps = trainer.options().steps;
    let bar = if run.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} train [{bar:30}] {pos}/{len} steps {msg} (ETA {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_position(first_step as u64);
    let start = Instant::now();
    let mut last = None;
    let mut last_saved = first_step;
    let mut interrupted = false;
    let calibrate = first_step + 10;
    while trainer.step_count() < total_steps {
        let step = trainer.step_count();
        let read = (step + 1).is_multiple_of(trainer.options().log_every) || step + 1 == total_steps;
        let values = trainer.step(data, read)?;
        let done = trainer.step_count() - first_step;
        let seconds = start.elapsed().as_secs_f64();
        // A time budget: the run's length follows the speed so far, re-estimated until three
        // quarters of it are done (before the schedule's first decay point at 80%).
        let estimating = trainer.step_count() == calibrate
            || (trainer.step_count() > calibrate && values.is_some() && 4 * done < 3 * (total_steps - first_step));
        if let (Some(minutes), true) = (run.minutes, estimating) {
            let rate = done as f64 / seconds;
            let left = (minutes * 60.0 - seconds).max(0.0);
            total_steps = (trainer.step_count() + (rate * left) as usize).max(trainer.step_count() + 1);
            trainer.set_total_steps(total_steps)?;
            bar.set_length(total_steps as u64);
        }
        if let Some(v) = values {
            if !v.total().is_finite() {
                bar.abandon();
                return Err(Error::InvalidParameter(format!(
                    "training diverged at step {}: the loss is {} (class {}, box {}); the last good \
                     checkpoint (step {last_saved}) in {} is kept; try a lower --lr",
                    trainer.step_count(),
                    v.total(),
                    v.class,
                    v.boxes,
                    out.display()
                )));
            }
            let images_per_second = (done * batch) as f64 / seconds;
            let line = Metrics {
                step: trainer.step_count(),
                seconds,
                loss: v.total(),
                class_loss: v.class,
                box_loss: v.boxes,
                lr: trainer.options().schedule().at(step),
                images_per_second,
            };
            writeln!(metrics, "{}", serde_json::to_string(&line).expect("metrics serialise"))
                .map_err(|e| Error::io(&metrics_path, e))?;
            let msg = format!(
                "loss {:.4} (cls {:.4} box {:.4}) {:.1} img/s",
                v.total(),
                v.class,
                v.boxes,
                images_per_second
            );
            if run.quiet {
                eprintln!("step {} {msg}", trainer.step_count());
            }
            bar.set_message(msg);
            last = Some(v);
        }
        bar.set_position(trainer.step_count() as u64);
        if trainer.step_count().is_multiple_of(run.save_every) {
            trainer.save(out)?;
            last_saved = trainer.step_count();
        }
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
    }
    trainer.save(out)?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let done = trainer.step_count() - first_step;
    Ok(TrainReport {
        steps: trainer.step_count(),
        seconds,
        images_per_second: (done * batch) as f64 / seconds.max(1e-9),
        last,
        engine,
        interrupted,
    })
}
