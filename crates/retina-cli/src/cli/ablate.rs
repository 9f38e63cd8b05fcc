//! `retina ablate`: the paper's experiment. Trains the small RetinaNet once per (loss setting,
//! seed) of a grid with the same data and schedule, evaluates each run on the same validation
//! scenes, and writes `runs.csv`, `curves.csv`, `results.md` (the paper's tables as mean ± std
//! over seeds, and the paired differences with their 95% intervals) and the plots. Runs are
//! saved as they finish; `--resume` continues an interrupted experiment.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::ablate::{self, Grid, LossSetting, RunRecord};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use retina_wgpu::coco::{self, CocoDataset, DatasetOptions};
use retina_wgpu::gpu::GpuContext;
use retina_wgpu::model::checkpoint;
use retina_wgpu::nn::{CpuEngine, GpuEngine};
use retina_wgpu::{Error, Result};

use crate::cli::Bar;
use crate::cli::train::EngineChoice;

/// Which grid runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GridChoice {
    /// Tables 1a and 1b, FL* and OHEM: every setting, 5 seeds.
    Full,
    /// The best setting of each loss and Table 1d's OHEM variants at B = 128, 5 seeds (about
    /// 70 minutes on a 2-core CPU at 128 px).
    Quick,
    /// CE, FL and OHEM, two seeds, 100 steps on tiny scenes: a smoke test in seconds.
    Tiny,
}

#[derive(Args, Debug)]
pub struct AblateArgs {
    /// Where runs.csv, curves.csv, results.md, the plots and the validation scenes go.
    #[arg(long, default_value = "ablate-out")]
    out: PathBuf,
    /// The reduced grid (same as --grid quick).
    #[arg(long, conflicts_with = "grid")]
    quick: bool,
    /// The grid.
    #[arg(long, value_enum, default_value = "full")]
    grid: GridChoice,
    /// SGD steps of every run, instead of the grid's.
    #[arg(long)]
    steps: Option<usize>,
    /// Seeds per setting (0, 1, ...), instead of the grid's 5.
    #[arg(long)]
    seeds: Option<u64>,
    /// Validation scenes, instead of the grid's.
    #[arg(long)]
    val_images: Option<usize>,
    /// Square scene and input size (a multiple of 32), instead of the grid's 128; objects scale
    /// with it and the anchors grow with its square, so 256 gives about 4x the background
    /// anchors per positive (at 4x the cost per image).
    #[arg(long)]
    size: Option<u32>,
    /// Train only the settings whose label contains this text (labels look like `CE a=0.75`,
    /// `FL g=2 a=0.25`, `FL* g=4 b=0`, `OHEM B=128 nms=0.5`, `OHEM 1:3 B=128 nms=0.5`);
    /// repeat it to train several. The tables still report every run kept in --out.
    #[arg(long)]
    only: Vec<String>,
    /// Keep the runs already in --out and run only the missing ones, continuing runs that were
    /// stopped part-way from their last checkpoint (`in-progress/`). The schedule, scenes and
    /// threads per run must be those of the runs kept (`experiment.json` records them).
    #[arg(long)]
    resume: bool,
    /// Steps between a run's checkpoints in `--out`/in-progress/ (0: none), deleted when the
    /// run is recorded: a run stopped part-way loses at most this many steps. On the CPU
    /// backend (same threads, same kind of CPU) a continued run ends with the same weights, bit
    /// for bit, as one never stopped.
    #[arg(long, default_value_t = 250)]
    checkpoint_every: usize,
    /// The engine that trains.
    #[arg(long, value_enum, default_value = "auto")]
    backend: EngineChoice,
    /// Runs trained at once, each in its own thread pool with its share of the threads (CPU
    /// backend only). On the 2-core VM two 1-thread runs finish about 1.1x sooner than one
    /// 2-thread run after another; more cores gain more (small layers scale poorly). A run's
    /// numbers depend on its thread count (the CPU backend splits some sums by thread), so
    /// keep one --jobs setting within an experiment.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Validation scenes whose losses make Figure 4.
    #[arg(long, default_value_t = 64)]
    fig4_images: usize,
}

impl AblateArgs {
    fn grid(&self) -> Result<Grid> {
        let mut grid = match (self.quick, self.grid) {
            (true, _) | (false, GridChoice::Quick) => Grid::quick(),
            (false, GridChoice::Full) => Grid::full(),
            (false, GridChoice::Tiny) => Grid::tiny(),
        };
        if let Some(steps) = self.steps {
            grid.steps = steps;
        }
        if let Some(seeds) = self.seeds {
            grid.seeds = (0..seeds).collect();
        }
        if let Some(n) = self.val_images {
            grid.val_images = n;
        }
        if let Some(size) = self.size {
            grid.scenes.size = size;
        }
        grid.validate()?;
        Ok(grid)
    }

    /// The settings this invocation trains: the grid's, or those `--only` names.
    fn selected(&self, grid: &Grid) -> Result<Vec<LossSetting>> {
        if let Some(only) = self
            .only
            .iter()
            .find(|o| !grid.settings.iter().any(|s| s.label().contains(o.as_str())))
        {
            let labels: Vec<String> = grid.settings.iter().map(|s| s.label()).collect();
            return Err(Error::InvalidParameter(format!(
                "--only {only:?} matches no setting of the grid (its settings: {})",
                labels.join(", ")
            )));
        }
        Ok(grid
            .settings
            .iter()
            .filter(|s| self.only.is_empty() || self.only.iter().any(|o| s.label().contains(o.as_str())))
            .copied()
            .collect())
    }
}

pub fn run(args: AblateArgs) -> Result<()> {
    if args.jobs == 0 || (args.jobs > 1 && args.backend == EngineChoice::Gpu) {
        return Err(jobs_error(args.jobs));
    }
    let grid = args.grid()?;
    let selected = args.selected(&grid)?;
    let out = &args.out;
    let runs_path = out.join("runs.csv");
    let curves_path = out.join("curves.csv");
    let in_progress = out.join("in-progress");
    if (runs_path.exists() || in_progress.exists()) && !args.resume {
        return Err(Error::InvalidParameter(format!(
            "{} already holds an experiment: pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    let gpu = args.backend.resolve()?;
    if args.jobs > 1 && gpu.is_some() {
        return Err(jobs_error(args.jobs));
    }
    // Each CPU run's share of the threads (with --jobs, in its own pool).
    let threads = (rayon::current_num_threads() / args.jobs).max(1);
    let threads_text = format!("{threads} thread{}", if threads == 1 { "" } else { "s" });
    // What makes runs comparable: the schedule, the scenes and where they train (the CPU
    // backend's sums depend on its thread count).
    let trained_on = match &gpu {
        Some(ctx) => format!("gpu: {}", ctx.adapter_info().name),
        None => format!("cpu: {threads_text} per run"),
    };
    let experiment = ablate::experiment_json(&grid, &trained_on);
    let experiment_path = out.join("experiment.json");
    if args.resume && experiment_path.exists() {
        ablate::check_experiment(&read(&experiment_path)?, &experiment)?;
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    coco::write_file(&experiment_path, experiment.as_bytes())?;
    let runs = if args.resume && runs_path.exists() {
        let text = read(&runs_path)?;
        let curves = curves_path.exists().then(|| read(&curves_path)).transpose()?;
        ablate::read_runs(&grid, &text, curves.as_deref())?
    } else {
        Vec::new()
    };

    // Checkpoints of runs already recorded (a run stopped between its record and the deletion
    // of its checkpoint) have served.
    for r in &runs {
        if let Some(warning) = remove_checkpoint(&in_progress.join(run_dir_name(&r.setting, r.seed))) {
            eprintln!("{warning}");
        }
    }
    let val = validation_set(&args, &grid)?;

    // Seed by seed, every setting of a seed before the next seed: an experiment stopped
    // half-way has complete pairs (the comparisons are paired by seed).
    let todo: Vec<(LossSetting, u64)> = grid
        .seeds
        .iter()
        .flat_map(|&seed| selected.iter().map(move |s| (*s, seed)))
        .filter(|(s, seed)| !runs.iter().any(|r| r.setting == *s && r.seed == *seed))
        .collect();
    let engine_name = match &gpu {
        Some(ctx) => format!("GPU ({})", ctx.adapter_info().name),
        None if args.jobs > 1 => format!("CPU ({} runs at once, {threads_text} each)", args.jobs),
        None => format!("CPU ({threads_text})"),
    };
    println!(
        "retina ablate: grid {} ({} settings x {} seeds, {} steps each), {} runs to do on {engine_name}",
        grid.name,
        grid.settings.len(),
        grid.seeds.len(),
        grid.steps,
        todo.len()
    );
    let bar = ProgressBar::new((todo.len() * grid.steps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} ablate [{bar:30}] {pos}/{len} steps {msg} (ETA {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let shared = Shared {
        todo: Mutex::new(todo.into_iter().collect()),
        runs: Mutex::new(runs),
        active: Mutex::new(Vec::new()),
        failed: AtomicBool::new(false),
        bar,
        reference: reference_setting(&grid),
        reference_dir: out.join("reference_model"),
        runs_path: runs_path.clone(),
        curves_path: curves_path.clone(),
        in_progress,
        checkpoint_every: args.checkpoint_every,
    };
    let jobs = args.jobs;
    if jobs == 1 {
        worker(&shared, &grid, &val, gpu.as_ref(), None)?;
    } else {
        // Each run gets its share of the threads, in its own pool: the CPU engine's parallel
        // loops and its GEMMs use the pool they are called from.
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..jobs)
                .map(|_| {
                    let (shared, grid, val) = (&shared, &grid, &val);
                    scope.spawn(move || -> Result<()> {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .map_err(|e| Error::invalid(format!("--jobs: cannot start a thread pool: {e}")))?;
                        worker(shared, grid, val, None, Some(&pool))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::invalid("an ablation run panicked")))
                })
                .collect::<Result<Vec<()>>>()
        })?;
    }
    let Shared {
        runs,
        bar,
        reference_dir,
        in_progress,
        ..
    } = shared;
    // Once every run of this invocation has ended, the directory of runs in progress goes if
    // nothing is left in it (in the workers, one run's removal could race another's creation).
    let _ = std::fs::remove_dir(&in_progress);
    let runs = runs.into_inner().unwrap_or_else(|e| e.into_inner());
    bar.finish_and_clear();

    let mut files = vec![(runs_path, "one row per run"), (curves_path, "training losses")];
    files.extend(write_figures(&args, &grid, &runs, &reference_dir)?);

    let total: f64 = runs.iter().map(|r| r.seconds).sum();
    let table = ablate::markdown(&grid, &runs);
    let results = format!(
        "# retina ablate: grid {}\n\nTrained on {engine_name}; {} runs, {:.1} minutes of training in all \
         ({:.1} minutes in this invocation, evaluation included).\n\n{table}",
        grid.name,
        runs.len(),
        total / 60.0,
        start.elapsed().as_secs_f64() / 60.0
    );
    let results_path = out.join("results.md");
    coco::write_file(&results_path, results.as_bytes())?;
    files.push((results_path, "the tables"));
    println!("\n{table}");
    println!("Files:");
    for (path, what) in files {
        println!("  {}  {what}", path.display());
    }
    Ok(())
}

/// What the runs of one invocation share: the runs to do, the runs done (written to disk as
/// each finishes), the progress bar and where the reference model goes.
struct Shared {
    todo: Mutex<VecDeque<(LossSetting, u64)>>,
    runs: Mutex<Vec<RunRecord>>,
    /// Labels of the runs in progress, for the bar's message.
    active: Mutex<Vec<String>>,
    /// Set when a run failed: the other workers stop after their current run.
    failed: AtomicBool,
    bar: ProgressBar,
    reference: LossSetting,
    reference_dir: PathBuf,
    runs_path: PathBuf,
    curves_path: PathBuf,
    /// Where runs in progress keep their checkpoints, one directory each.
    in_progress: PathBuf,
    /// Steps between checkpoints (0: none).
    checkpoint_every: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked left nothing half-written behind a lock: every critical section
    // here is a push, a pop or a file write of the whole list.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes runs from `shared.todo` until none is left (or another worker failed), trains and
/// evaluates each on the GPU (`gpu`) or the CPU (inside `pool` when given), and records it.
fn worker(
    shared: &Shared,
    grid: &Grid,
    val: &CocoDataset,
    gpu: Option<&GpuContext>,
    pool: Option<&rayon::ThreadPool>,
) -> Result<()> {
    let result = (|| {
        while !shared.failed.load(Ordering::Relaxed) {
            let Some((setting, seed)) = lock(&shared.todo).pop_front() else {
                return Ok(());
            };
            let label = format!("{} seed {seed}", setting.label());
            let message = {
                let mut active = lock(&shared.active);
                active.push(label.clone());
                active.join(", ")
            };
            shared.bar.set_message(message);
            let run_dir = shared.in_progress.join(run_dir_name(&setting, seed));
            let checkpoint = Some(ablate::RunCheckpoint {
                dir: &run_dir,
                every: shared.checkpoint_every,
            });
            let (mut last, mut started) = (0, false);
            let mut on_step = |done: usize| {
                if !started {
                    // A run continued from its checkpoint: its steps done before are not this
                    // invocation's work (the ETA counts only what is left).
                    shared.bar.dec_length(done as u64);
                    started = true;
                } else {
                    shared.bar.inc((done - last) as u64);
                }
                last = done;
            };
            let (record, values) = match gpu {
                Some(ctx) => {
                    let engines = (GpuEngine::new(ctx)?, GpuEngine::new(ctx)?);
                    ablate::train_and_evaluate(engines, grid, &setting, seed, val, &mut on_step, checkpoint)?
                }
                None => {
                    let mut run = || {
                        let engines = (CpuEngine::new(), CpuEngine::new());
                        ablate::train_and_evaluate(engines, grid, &setting, seed, val, &mut on_step, checkpoint)
                    };
                    match pool {
                        Some(pool) => pool.install(run)?,
                        None => run()?,
                    }
                }
            };
            shared.bar.inc((grid.steps - last) as u64);
            if shared.bar.is_hidden() {
                println!("{}", describe(&record));
            } else {
                shared.bar.println(describe(&record));
            }
            if setting == shared.reference && seed == grid.seeds[0] {
                checkpoint::save_model(&shared.reference_dir, &grid.network()?, &values)?;
            }
            {
                let mut runs = lock(&shared.runs);
                runs.push(record);
                coco::write_file(&shared.runs_path, ablate::runs_csv(&runs).as_bytes())?;
                coco::write_file(&shared.curves_path, ablate::curves_csv(&runs).as_bytes())?;
            }
            // Recorded: its checkpoint has served.
            if let Some(warning) = remove_checkpoint(&run_dir) {
                shared.bar.println(warning);
            }
            let message = {
                let mut active = lock(&shared.active);
                active.retain(|l| *l != label);
                active.join(", ")
            };
            shared.bar.set_message(message);
        }
        Ok(())
    })();
    if result.is_err() {
        shared.failed.store(true, Ordering::Relaxed);
    }
    result
}

/// Deletes a recorded run's checkpoint directory, best effort: a failure is a warning, returned
/// (the run is in `runs.csv`; `--resume` deletes what is left of recorded runs).
fn remove_checkpoint(dir: &Path) -> Option<String> {
    match dir.exists().then(|| std::fs::remove_dir_all(dir)) {
        Some(Err(e)) => Some(format!(
            "warning: could not delete the checkpoint {}: {e}",
            dir.display()
        )),
        _ => None,
    }
}

/// The directory name of a run's checkpoint: its label and seed, with every character but
/// letters, digits, `.` and `=` turned into `-` (`OHEM 1:3 B=128 nms=0.5` seed 3 is
/// `OHEM-1-3-B=128-nms=0.5-seed-3`).
fn run_dir_name(setting: &LossSetting, seed: u64) -> String {
    format!("{} seed {seed}", setting.label())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '=' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The experiment's validation scenes (written once, kept across `--resume`), decoded.
fn validation_set(args: &AblateArgs, grid: &Grid) -> Result<CocoDataset> {
    let val_dir = args.out.join("val");
    if !args.resume || !val_dir.join("annotations.json").exists() {
        if val_dir.exists() {
            std::fs::remove_dir_all(&val_dir).map_err(|e| Error::io(&val_dir, e))?;
        }
        retina_wgpu::data::write_coco_with_progress(
            &val_dir,
            &grid.scenes,
            grid.val_images,
            ablate::VAL_SEED,
            &Bar::new(grid.val_images >= 200),
        )?;
    }
    CocoDataset::open_dir(
        &val_dir,
        &DatasetOptions {
            input_size: grid.scenes.size,
            ..DatasetOptions::default()
        },
    )
}

/// Figure 1, Figure 4 (from the reference model, when one was trained), AP against gamma and
/// the loss curves of each loss family: the files written, with what each shows.
fn write_figures(
    args: &AblateArgs,
    grid: &Grid,
    runs: &[RunRecord],
    reference_dir: &Path,
) -> Result<Vec<(PathBuf, &'static str)>> {
    let out = &args.out;
    let mut files = Vec::new();
    let fig1 = out.join("fig1_loss_vs_pt.png");
    ablate::figure1()?.save_png(&fig1)?;
    files.push((fig1, "Figure 1: the loss against p_t for several gamma"));
    if reference_dir.join("model.safetensors").exists() {
        let (net, values) = checkpoint::load_model(reference_dir)?;
        let data = grid.data(ablate::VAL_SEED);
        let gammas = [0.0, 0.5, 1.0, 2.0, 5.0];
        let (pos, neg) = ablate::loss_distribution(&net, &values, &data, args.fig4_images, &gammas)?;
        let (pos_path, neg_path) = (out.join("fig4_positive.png"), out.join("fig4_negative.png"));
        pos.save_png(&pos_path)?;
        neg.save_png(&neg_path)?;
        files.push((pos_path, "Figure 4: loss distribution over positive samples"));
        files.push((neg_path, "Figure 4: loss distribution over negative samples"));
    }
    if let Some(chart) = ablate::ap_against_gamma(grid, runs) {
        let path = out.join("ap_vs_gamma.png");
        chart.save_png(&path)?;
        files.push((path, "AP against gamma"));
    }
    for (name, kinds, what) in [
        (
            "loss_curves_ce.png",
            &["cross_entropy"][..],
            "training loss of the cross-entropy settings",
        ),
        (
            "loss_curves_focal.png",
            &["focal", "focal_star"][..],
            "training loss of the focal-loss settings",
        ),
        (
            "loss_curves_ohem.png",
            &["ohem"][..],
            "training loss of the OHEM settings",
        ),
    ] {
        let chart = ablate::loss_curves(grid, runs, kinds);
        if !chart.series.is_empty() {
            let path = out.join(name);
            chart.save_png(&path)?;
            files.push((path, what));
        }
    }
    Ok(files)
}

/// The model whose losses make Figure 4: focal loss with gamma 2 when the grid has it (the
/// paper's converged model), else the grid's first setting.
fn reference_setting(grid: &Grid) -> LossSetting {
    grid.settings
        .iter()
        .find(|s| matches!(s, LossSetting::Focal { gamma, .. } if *gamma == 2.0))
        .copied()
        .unwrap_or(grid.settings[0])
}

fn describe(r: &RunRecord) -> String {
    let status = if r.diverged {
        format!(" (diverged at step {}: counted as AP 0)", r.steps)
    } else {
        String::new()
    };
    format!(
        "{} seed {}: AP {:.1}, AP50 {:.1}, AP75 {:.1}, {:.0} s{status}",
        r.setting.label(),
        r.seed,
        100.0 * r.ap[0],
        100.0 * r.ap[1],
        100.0 * r.ap[2],
        r.seconds
    )
}

fn jobs_error(jobs: usize) -> Error {
    Error::InvalidParameter(format!(
        "--jobs {jobs}: at least 1, and more than 1 only on the CPU backend (--backend cpu)"
    ))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}
