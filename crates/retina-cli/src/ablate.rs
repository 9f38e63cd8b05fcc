//! The paper's experiment (Lin et al. 2017, Table 1 and Figures 1 and 4) on the small
//! RetinaNet: the same network, data, schedule and seeds trained with each classification loss
//! (alpha-balanced cross entropy, focal loss, FL*, OHEM), evaluated with COCO's metrics, and
//! reported as the paper reports it.
//!
//! [`Grid`] names the settings and the schedule, [`train_and_evaluate`] runs one (setting, seed),
//! [`summarize`], [`runs_csv`] and [`markdown`] turn the runs into the paper's tables, and
//! [`figure1`], [`loss_distribution`], [`ap_against_gamma`] and [`loss_curves`] draw the plots.
//! `retina ablate` drives all of it with progress, resumable output files and pictures.
//!
//! ```no_run
//! use retina_cli::ablate::{self, Grid};
//! use retina_wgpu::coco::{CocoDataset, DatasetOptions};
//! use retina_wgpu::nn::CpuEngine;
//!
//! let grid = Grid::quick();
//! retina_wgpu::data::write_coco("val", &grid.scenes, grid.val_images, ablate::VAL_SEED)?;
//! let val = CocoDataset::open_dir("val", &DatasetOptions::default())?;
//! let mut runs = Vec::new();
//! for setting in &grid.settings {
//!     for &seed in &grid.seeds {
//!         let engines = (CpuEngine::new(), CpuEngine::new());
//!         runs.push(ablate::train_and_evaluate(engines, &grid, setting, seed, &val, &mut |_| {}, None)?.0);
//!     }
//! }
//! print!("{}", ablate::markdown(&grid, &runs));
//! # Ok::<(), retina_wgpu::Error>(())
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::plot::{Chart, Series};
use retina_wgpu::Backend;
use retina_wgpu::coco::{CocoDataset, Normalize};
use retina_wgpu::data::SceneConfig;
use retina_wgpu::model::{AnchorSet, ClassLoss, DetectEngine, Detector, LossEngine, Ohem, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::CpuEngine;
use retina_wgpu::nn::{Engine, Shape};
use retina_wgpu::ops::focal::{FocalInput, FocalLoss, LABEL_BACKGROUND, Reduction};
use retina_wgpu::train::{SyntheticData, TrainData, TrainOptions, Trainer, synthetic_categories};
use retina_wgpu::{Error, Result};
use retina_wgpu::{GroundTruth, TargetAssigner};

/// Seed of the validation scenes: far from any training seed.
pub const VAL_SEED: u64 = 2_000_003;

/// A classification loss of the experiment, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossSetting {
    /// Sigmoid cross entropy, alpha-balanced when `alpha` is set (Table 1a).
    CrossEntropy {
        /// Weight of the positive class.
        alpha: Option<f32>,
    },
    /// Focal loss (Table 1b).
    Focal {
        /// Weight of the positive class.
        alpha: Option<f32>,
        /// Focusing parameter.
        gamma: f32,
    },
    /// FL* (appendix A): `-log(sigmoid(gamma x_t + beta)) / gamma`.
    FocalStar {
        /// Sharpness, > 0.
        gamma: f32,
        /// Shift.
        beta: f32,
    },
    /// Online hard example mining over cross entropy (Table 1d): the B highest-loss anchors
    /// per image after NMS over the anchors by loss, optionally 1:3 positive:negative.
    Ohem(Ohem),
}

impl LossSetting {
    /// The model's classification loss for this setting.
    pub fn class_loss(&self) -> ClassLoss {
        match *self {
            LossSetting::CrossEntropy { alpha } => {
                ClassLoss::Focal(FocalLoss::cross_entropy(alpha).with_reduction(Reduction::PerPositive))
            }
            LossSetting::Focal { alpha, gamma } => {
                ClassLoss::Focal(FocalLoss::new(alpha, gamma).with_reduction(Reduction::PerPositive))
            }
            LossSetting::FocalStar { gamma, beta } => {
                ClassLoss::Focal(FocalLoss::star(gamma, beta).with_reduction(Reduction::PerPositive))
            }
            LossSetting::Ohem(ohem) => ClassLoss::Ohem(ohem),
        }
    }

    /// The loss's name in `runs.csv`: `cross_entropy`, `focal`, `focal_star` or `ohem`.
    pub fn kind(&self) -> &'static str {
        match self {
            LossSetting::CrossEntropy { .. } => "cross_entropy",
            LossSetting::Focal { .. } => "focal",
            LossSetting::FocalStar { .. } => "focal_star",
            LossSetting::Ohem(_) => "ohem",
        }
    }

    /// A short unique label: `CE a=0.75`, `FL g=2 a=0.25`, `FL* g=4 b=0`, ...
    pub fn label(&self) -> String {
        match *self {
            LossSetting::CrossEntropy { alpha } => format!("CE a={}", alpha_text(alpha)),
            LossSetting::Focal { alpha, gamma } => format!("FL g={gamma} a={}", alpha_text(alpha)),
            LossSetting::FocalStar { gamma, beta } => format!("FL* g={gamma} b={beta}"),
            LossSetting::Ohem(o) => format!(
                "OHEM{} B={} nms={}",
                if o.positive_fraction == Some(0.25) {
                    " 1:3".to_string()
                } else {
                    o.positive_fraction.map_or(String::new(), |f| format!(" f={f}"))
                },
                o.per_image,
                o.nms_threshold.map_or("none".to_string(), |t| t.to_string())
            ),
        }
    }

    /// `(alpha, gamma, beta, ohem_per_image, ohem_nms, ohem_positive_fraction)` as they go in
    /// `runs.csv` (empty where the loss has none).
    fn params(&self) -> [String; 6] {
        let num = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
        let none = String::new;
        match *self {
            LossSetting::CrossEntropy { alpha } => [num(alpha), "0".into(), none(), none(), none(), none()],
            LossSetting::Focal { alpha, gamma } => [num(alpha), gamma.to_string(), none(), none(), none(), none()],
            LossSetting::FocalStar { gamma, beta } => {
                [none(), gamma.to_string(), beta.to_string(), none(), none(), none()]
            }
            LossSetting::Ohem(o) => [
                num(o.alpha),
                "0".into(),
                none(),
                o.per_image.to_string(),
                num(o.nms_threshold),
                num(o.positive_fraction),
            ],
        }
    }

    /// Gamma, for the AP-against-gamma plot: cross entropy is gamma 0.
    fn gamma(&self) -> Option<f32> {
        match *self {
            LossSetting::CrossEntropy { .. } => Some(0.0),
            LossSetting::Focal { gamma, .. } => Some(gamma),
            LossSetting::FocalStar { .. } | LossSetting::Ohem(_) => None,
        }
    }
}

fn alpha_text(alpha: Option<f32>) -> String {
    alpha.map_or("none".to_string(), |a| a.to_string())
}

/// The settings, seeds and schedule of one experiment. Every setting trains the same network
/// from the same initial weights (per seed) on the same scenes in the same order with the same
/// learning-rate schedule; only the classification loss changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Name (`quick`, `full`, `tiny`).
    pub name: String,
    /// The losses, in table order.
    pub settings: Vec<LossSetting>,
    /// Seeds of the weights, data order and flips; every setting runs every seed.
    pub seeds: Vec<u64>,
    /// SGD steps of each run.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Learning rate after warmup.
    pub lr: f32,
    /// Validation images (written once, shared by every run).
    pub val_images: usize,
    /// The scenes.
    pub scenes: SceneConfig,
}

impl Grid {
    /// The experiment's scenes: 128 x 128, one or two objects of 16-32 px. 232 background
    /// anchors per positive anchor (`retina synth --config` of these fields, 300 images),
    /// against 74 for the demo's scenes: the imbalance a dense detector sees.
    pub fn sparse_scenes() -> SceneConfig {
        SceneConfig {
            min_objects: 1,
            max_objects: 2,
            min_side: 0.125,
            max_side: 0.25,
            ..SceneConfig::default()
        }
    }

    /// The reduced grid of `retina ablate --quick`: the paper's best setting of each table (CE
    /// with alpha 0.75, FL with gamma 2 and alpha 0.25, FL* with gamma 4 and beta 0, OHEM with
    /// B = 128 and NMS at 0.5), FL with gamma 1 and alpha 0.25, and the two other OHEM
    /// variants of Table 1d at B = 128 (NMS at 0.7, and 1:3 positives to negatives at 0.5),
    /// over 5 seeds (enough for a paired t interval), 1,500 steps each.
    pub fn quick() -> Self {
        Self {
            name: "quick".into(),
            settings: vec![
                LossSetting::CrossEntropy { alpha: Some(0.75) },
                LossSetting::Focal {
                    alpha: Some(0.25),
                    gamma: 1.0,
                },
                LossSetting::Focal {
                    alpha: Some(0.25),
                    gamma: 2.0,
                },
                LossSetting::FocalStar { gamma: 4.0, beta: 0.0 },
                LossSetting::Ohem(Ohem::new(128).with_nms(0.7)),
                LossSetting::Ohem(Ohem::new(128).with_nms(0.5)),
                LossSetting::Ohem(Ohem::new(128).with_nms(0.5).with_positive_fraction(0.25)),
            ],
            seeds: vec![0, 1, 2, 3, 4],
            steps: 1500,
            batch: 8,
            lr: 0.03,
            val_images: 300,
            scenes: Self::sparse_scenes(),
        }
    }

    /// The whole grid: Table 1a (cross entropy, alpha 0.25 to 0.99), Table 1b (gamma 0 to 5
    /// with the paper's alpha for each), FL*, Table 1d (OHEM with B = 128 or 512 and NMS at 0.7
    /// or 0.5, and the 1:3 variant with B = 128 at 0.5), with the quick grid's schedule and
    /// seeds.
    pub fn full() -> Self {
        let ce = [0.25, 0.5, 0.75, 0.9, 0.99].map(|a| LossSetting::CrossEntropy { alpha: Some(a) });
        // Table 1b's gamma with the alpha the paper found best for each, and gamma 1 with alpha
        // 0.5 as well (between the paper's choices at gamma 0.5 and 2).
        let fl = [
            (0.1, 0.75),
            (0.2, 0.75),
            (0.5, 0.5),
            (1.0, 0.25),
            (1.0, 0.5),
            (2.0, 0.25),
            (5.0, 0.25),
        ]
        .map(|(g, a)| LossSetting::Focal {
            alpha: Some(a),
            gamma: g,
        });
        let mut settings: Vec<LossSetting> = ce.into_iter().chain(fl).collect();
        settings.push(LossSetting::FocalStar { gamma: 4.0, beta: 0.0 });
        for (b, nms) in [(128, 0.7), (128, 0.5), (512, 0.7), (512, 0.5)] {
            settings.push(LossSetting::Ohem(Ohem::new(b).with_nms(nms)));
        }
        settings.push(LossSetting::Ohem(
            Ohem::new(128).with_nms(0.5).with_positive_fraction(0.25),
        ));
        Self {
            name: "full".into(),
            settings,
            ..Self::quick()
        }
    }

    /// A grid that runs in seconds (tests): CE, FL and OHEM, two seeds, 100 steps of 2 images
    /// on 64 x 64 scenes (enough for a nonzero AP).
    pub fn tiny() -> Self {
        Self {
            name: "tiny".into(),
            settings: vec![
                LossSetting::CrossEntropy { alpha: Some(0.75) },
                LossSetting::Focal {
                    alpha: Some(0.25),
                    gamma: 2.0,
                },
                LossSetting::Ohem(Ohem::new(32).with_nms(0.7)),
            ],
            seeds: vec![0, 1],
            steps: 100,
            batch: 2,
            lr: 0.01,
            val_images: 4,
            scenes: SceneConfig {
                size: 64,
                ..Self::sparse_scenes()
            },
        }
    }

    /// Checks the grid.
    pub fn validate(&self) -> Result<()> {
        if self.settings.is_empty() || self.seeds.is_empty() {
            return Err(Error::invalid("ablation grid: no setting or no seed"));
        }
        if self.steps == 0 || self.batch == 0 || self.val_images == 0 {
            return Err(Error::invalid(
                "ablation grid: steps, batch and validation images must be at least 1",
            ));
        }
        let mut labels: Vec<String> = self.settings.iter().map(LossSetting::label).collect();
        labels.sort();
        if let Some(pair) = labels.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid(format!(
                "ablation grid: setting {} appears twice",
                pair[0]
            )));
        }
        self.scenes.validate()?;
        self.network()?;
        self.options(0).validate()
    }

    /// The network every run trains.
    pub fn network(&self) -> Result<RetinaNet> {
        RetinaNet::new(RetinaNetConfig {
            input_size: self.scenes.size as usize,
            num_classes: self.scenes.num_classes(),
            categories: synthetic_categories(&self.scenes),
            ..RetinaNetConfig::default()
        })
    }

    /// The training options of the run with `seed`.
    pub fn options(&self, seed: u64) -> TrainOptions {
        TrainOptions {
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            warmup_steps: (self.steps / 20).max(1),
            seed,
            log_every: (self.steps / 60).max(1),
            ..TrainOptions::default()
        }
    }

    /// The training scenes of the run with `seed`.
    pub fn data(&self, seed: u64) -> SyntheticData {
        SyntheticData {
            config: self.scenes.clone(),
            seed,
            normalize: Normalize::IMAGENET,
        }
    }
}

/// One logged point of a run's training loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    /// Steps done.
    pub step: usize,
    /// Classification loss.
    pub class: f32,
    /// Box loss.
    pub boxes: f32,
}

/// One training run and its evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// The loss.
    pub setting: LossSetting,
    /// The seed.
    pub seed: u64,
    /// Steps trained (fewer than the grid's when the loss diverged).
    pub steps: usize,
    /// COCO AP, AP50 and AP75 on the validation scenes (0 when the run diverged).
    pub ap: [f64; 3],
    /// Seconds of training (without evaluation).
    pub seconds: f64,
    /// Whether the loss became NaN or infinite (training stopped there; the run counts as AP 0).
    pub diverged: bool,
    /// The training loss every `log_every` steps.
    pub curve: Vec<CurvePoint>,
}

/// Where a run keeps its checkpoint while it trains, and how often it saves one. Every `every`
/// steps (0: never) `dir` gets the trainer's state ([`Trainer::save`]: weights, momentum and
/// step, written so that a kill at any moment leaves a whole checkpoint) and
/// `progress-<step>.json` (the loss curve and the seconds of training up to that step). A run
/// started on a `dir` that holds a checkpoint continues from it; the data depends only on the
/// seed and the step, so on the CPU backend with the same threads on the same kind of CPU
/// (its vector paths differ in the last bits) it ends with the same weights, bit for bit, as a
/// run never stopped. Runs of hours (512 px scenes) then survive a
/// stopped machine, losing at most `every` steps.
#[derive(Clone, Copy, Debug)]
pub struct RunCheckpoint<'a> {
    /// The run's own directory.
    pub dir: &'a Path,
    /// Steps between saves (0: never).
    pub every: usize,
}

impl RunCheckpoint<'_> {
    /// Whether `dir` holds a checkpoint to continue from.
    pub fn exists(&self) -> bool {
        self.dir.join("config.json").exists()
    }

    fn progress_path(&self, step: usize) -> PathBuf {
        self.dir.join(format!("progress-{step}.json"))
    }

    /// Saves `trainer` and the run's progress: the progress file of the new step first, then the
    /// trainer, then the older progress files go (a kill in between leaves the previous
    /// checkpoint and its progress file).
    fn save<E: LossEngine>(&self, trainer: &mut Trainer<E>, curve: &[CurvePoint], seconds: f64) -> Result<()> {
        let step = trainer.step_count();
        std::fs::create_dir_all(self.dir).map_err(|e| Error::io(self.dir, e))?;
        let progress = Progress {
            step,
            seconds,
            curve: curve
                .iter()
                .map(|p| [p.step as f64, f64::from(p.class), f64::from(p.boxes)])
                .collect(),
        };
        let json = serde_json::to_vec(&progress).expect("a run's progress serialises");
        retina_wgpu::coco::write_file(&self.progress_path(step), &json)?;
        trainer.save(self.dir)?;
        for entry in std::fs::read_dir(self.dir)
            .map_err(|e| Error::io(self.dir, e))?
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("progress-") && name != format!("progress-{step}.json") {
                // Best effort: a stale progress file is never read (the step names the one).
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The curve and seconds saved with the checkpoint at `step`.
    fn progress(&self, step: usize) -> Result<(Vec<CurvePoint>, f64)> {
        let path = self.progress_path(step);
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let source = path.display().to_string();
        let bad = |what: &str| Error::format(&source, format!("not a run's progress: {what}"));
        let progress: Progress = serde_json::from_slice(&text).map_err(|e| bad(&e.to_string()))?;
        if progress.step != step {
            return Err(bad("its step is not the checkpoint's"));
        }
        let curve = progress
            .curve
            .into_iter()
            .map(|[step, class, boxes]| CurvePoint {
                step: step as usize,
                class: class as f32,
                boxes: boxes as f32,
            })
            .collect();
        Ok((curve, progress.seconds))
    }
}

/// What `progress-<step>.json` holds beside a run's checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct Progress {
    /// The checkpoint's step.
    step: usize,
    /// Seconds of training up to it.
    seconds: f64,
    /// The loss curve up to it: `[step, class loss, box loss]` per point (the f32 losses
    /// widened to f64 exactly, so they read back to the same bits).
    curve: Vec<[f64; 3]>,
}

/// Trains `grid`'s network with `setting` and `seed` on `engines.0` and evaluates it on `val`
/// with `engines.1`; `on_step` is called after every step with the steps done. With
/// `checkpoint`, the run saves its state as it trains and continues from a saved one (see
/// [`RunCheckpoint`]). Returns the record and the trained weights.
pub fn train_and_evaluate<E: LossEngine + DetectEngine>(
    engines: (E, E),
    grid: &Grid,
    setting: &LossSetting,
    seed: u64,
    val: &CocoDataset,
    on_step: &mut dyn FnMut(usize),
    checkpoint: Option<RunCheckpoint<'_>>,
) -> Result<(RunRecord, Vec<Vec<f32>>)> {
    let net = grid.network()?;
    let data = grid.data(seed);
    let options = grid.options(seed);
    let (mut trainer, mut curve, seconds_before) = match checkpoint.filter(RunCheckpoint::exists) {
        Some(c) => {
            let saved = retina_wgpu::train::saved_options(c.dir)?;
            let (saved_net, values) = retina_wgpu::model::checkpoint::load_model(c.dir)?;
            if saved != options || saved_net.config() != net.config() {
                return Err(Error::invalid(format!(
                    "{}: the run in progress there was trained with another network or schedule; \
                     delete the directory to train it from the start",
                    c.dir.display()
                )));
            }
            let mut trainer = Trainer::new(engines.0, net.clone(), &values, options)?;
            trainer.restore_optimizer(c.dir)?;
            let (curve, seconds) = c.progress(trainer.step_count())?;
            (trainer, curve, seconds)
        }
        None => (
            Trainer::new(engines.0, net.clone(), &net.init(seed), options)?,
            Vec::new(),
            0.0,
        ),
    };
    trainer.set_class_loss(setting.class_loss());
    let log_every = trainer.options().log_every;
    let start = Instant::now();
    let mut diverged = false;
    on_step(trainer.step_count());
    while trainer.step_count() < grid.steps {
        let read = (trainer.step_count() + 1).is_multiple_of(log_every) || trainer.step_count() + 1 == grid.steps;
        if let Some(v) = trainer.step(&data, read)? {
            if !v.total().is_finite() {
                diverged = true;
                break;
            }
            curve.push(CurvePoint {
                step: trainer.step_count(),
                class: v.class,
                boxes: v.boxes,
            });
        }
        on_step(trainer.step_count());
        if let Some(c) = checkpoint.filter(|c| c.every > 0)
            && trainer.step_count().is_multiple_of(c.every)
            && trainer.step_count() < grid.steps
        {
            c.save(&mut trainer, &curve, seconds_before + start.elapsed().as_secs_f64())?;
        }
    }
    let seconds = seconds_before + start.elapsed().as_secs_f64();
    let values = trainer.param_values()?;
    let ap = if diverged {
        [0.0; 3]
    } else {
        let mut detector = Detector::new(engines.1, net, &values)?;
        let (eval, _) = retina_wgpu::model::evaluate_dataset(&mut detector, val, 16, &retina_wgpu::NoProgress)?;
        [eval.stats[0], eval.stats[1], eval.stats[2]]
    };
    let record = RunRecord {
        setting: *setting,
        seed,
        steps: trainer.step_count(),
        ap,
        seconds,
        diverged,
        curve,
    };
    Ok((record, values))
}

/// AP, AP50 and AP75 of one setting over its seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The setting.
    pub setting: LossSetting,
    /// Runs (seeds) summarised.
    pub runs: usize,
    /// Runs that diverged (counted as AP 0).
    pub diverged: usize,
    /// Mean of AP, AP50, AP75.
    pub mean: [f64; 3],
    /// Sample standard deviation (n - 1) of AP, AP50, AP75; 0 for one run.
    pub std: [f64; 3],
    /// Mean training seconds of a run.
    pub seconds: f64,
}

/// The runs of each setting of `grid` summarised, in the grid's order (settings without runs
/// are left out).
pub fn summarize(grid: &Grid, runs: &[RunRecord]) -> Vec<Summary> {
    grid.settings
        .iter()
        .filter_map(|setting| {
            let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.setting == *setting).collect();
            if mine.is_empty() {
                return None;
            }
            let n = mine.len() as f64;
            let mean: [f64; 3] = std::array::from_fn(|i| mine.iter().map(|r| r.ap[i]).sum::<f64>() / n);
            let std: [f64; 3] = std::array::from_fn(|i| {
                if mine.len() < 2 {
                    0.0
                } else {
                    (mine.iter().map(|r| (r.ap[i] - mean[i]).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
                }
            });
            Some(Summary {
                setting: *setting,
                runs: mine.len(),
                diverged: mine.iter().filter(|r| r.diverged).count(),
                mean,
                std,
                seconds: mine.iter().map(|r| r.seconds).sum::<f64>() / n,
            })
        })
        .collect()
}

/// What an experiment's runs share, as `experiment.json` records it: the schedule, the scenes
/// and `trained_on` (the engine, and for the CPU the threads per run). Runs resumed into a
/// directory must share all of it; the grid's name, settings and seeds may differ.
pub fn experiment_json(grid: &Grid, trained_on: &str) -> String {
    let value = serde_json::json!({
        "steps": grid.steps,
        "batch": grid.batch,
        "lr": grid.lr,
        "val_images": grid.val_images,
        "scenes": grid.scenes,
        "trained_on": trained_on,
    });
    serde_json::to_string_pretty(&value).expect("plain JSON values serialize") + "\n"
}

/// Checks that an experiment about to resume (`wanted`, from [`experiment_json`]) is the one
/// whose runs are kept (`kept`, the directory's `experiment.json`), naming what differs.
pub fn check_experiment(kept: &str, wanted: &str) -> Result<()> {
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .map_err(|e| Error::format("experiment.json", e.to_string()))
    };
    let (kept, wanted) = (parse(kept)?, parse(wanted)?);
    let differ: Vec<String> = wanted
        .iter()
        .filter(|(k, v)| kept.get(*k) != Some(*v))
        .map(|(k, v)| {
            let was = kept.get(k).map_or("nothing".to_string(), |w| w.to_string());
            format!("{k}: {was} kept, {v} asked for")
        })
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidParameter(format!(
        "--resume: the runs kept were trained differently ({}); use their options (experiment.json \
         records them; RAYON_NUM_THREADS and --jobs set the threads per run) or another --out",
        differ.join("; ")
    )))
}

/// The header of [`runs_csv`].
pub const RUNS_HEADER: &str = "loss,label,alpha,gamma,beta,ohem_per_image,ohem_nms,ohem_positive_fraction,seed,steps,ap,ap50,ap75,train_seconds,diverged";

/// `runs.csv`: one row per training run (see [`RUNS_HEADER`]); AP values with 6 decimals.
pub fn runs_csv(runs: &[RunRecord]) -> String {
    let mut out = String::from(RUNS_HEADER);
    out.push('\n');
    for r in runs {
        let [alpha, gamma, beta, per_image, nms, fraction] = r.setting.params();
        let _ = writeln!(
            out,
            "{},{},{alpha},{gamma},{beta},{per_image},{nms},{fraction},{},{},{:.6},{:.6},{:.6},{:.2},{}",
            r.setting.kind(),
            r.setting.label(),
            r.seed,
            r.steps,
            r.ap[0],
            r.ap[1],
            r.ap[2],
            r.seconds,
            r.diverged
        );
    }
    out
}

/// `curves.csv`: the training loss of every run (`label,seed,step,class_loss,box_loss`).
pub fn curves_csv(runs: &[RunRecord]) -> String {
    let mut out = String::from("label,seed,step,class_loss,box_loss\n");
    for r in runs {
        for p in &r.curve {
            let _ = writeln!(
                out,
                "{},{},{},{},{}",
                r.setting.label(),
                r.seed,
                p.step,
                p.class,
                p.boxes
            );
        }
    }
    out
}

/// Reads back the runs of `runs.csv` and `curves.csv` that belong to `grid` (a resumed
/// experiment skips them). Rows of settings the grid does not hold are ignored.
pub fn read_runs(grid: &Grid, runs_csv: &str, curves_csv: Option<&str>) -> Result<Vec<RunRecord>> {
    let bad = |line: usize, msg: &str| Error::format("runs.csv", format!("line {line}: {msg}"));
    let mut lines = runs_csv.lines();
    if lines.next() != Some(RUNS_HEADER) {
        return Err(bad(1, "not the header of retina ablate's runs.csv"));
    }
    let mut runs = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 15 {
            return Err(bad(i + 2, "expected 15 fields"));
        }
        let Some(setting) = grid.settings.iter().find(|s| s.label() == f[1]) else {
            continue;
        };
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad(i + 2, "a number does not parse"));
        runs.push(RunRecord {
            setting: *setting,
            seed: f[8].parse().map_err(|_| bad(i + 2, "bad seed"))?,
            steps: f[9].parse().map_err(|_| bad(i + 2, "bad steps"))?,
            ap: [num(f[10])?, num(f[11])?, num(f[12])?],
            seconds: num(f[13])?,
            diverged: f[14] == "true",
            curve: Vec::new(),
        });
    }
    for (i, line) in curves_csv.unwrap_or("").lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let parsed = (f.len() == 5)
            .then(|| {
                Some((
                    f[1].parse::<u64>().ok()?,
                    f[2].parse().ok()?,
                    f[3].parse().ok()?,
                    f[4].parse().ok()?,
                ))
            })
            .flatten();
        let Some((seed, step, class, boxes)) = parsed else {
            return Err(Error::format(
                "curves.csv",
                format!("line {}: expected label,seed,step,class,box", i + 1),
            ));
        };
        if let Some(run) = runs.iter_mut().find(|r| r.setting.label() == f[0] && r.seed == seed) {
            run.curve.push(CurvePoint { step, class, boxes });
        }
    }
    Ok(runs)
}

fn cell(s: &Summary, i: usize) -> String {
    if s.runs > 1 {
        format!("{:.1} ± {:.1}", 100.0 * s.mean[i], 100.0 * s.std[i])
    } else {
        format!("{:.1}", 100.0 * s.mean[i])
    }
}

fn ap_cells(s: &Summary) -> String {
    let note = if s.diverged > 0 {
        format!(" ({} of {} diverged)", s.diverged, s.runs)
    } else {
        String::new()
    };
    format!("{} | {} | {} | {}{note}", cell(s, 0), cell(s, 1), cell(s, 2), s.runs)
}

/// The paper's tables from the runs: AP, AP50 and AP75 (in percent) as mean ± standard
/// deviation over the seeds, Table 1a (cross entropy by alpha), Table 1b (focal loss by gamma
/// and alpha), FL*, Table 1d's comparison of the best of each against focal loss, and the
/// paired differences of [`paper_comparisons`].
pub fn markdown(grid: &Grid, runs: &[RunRecord]) -> String {
    let summaries = summarize(grid, runs);
    let mut out = String::new();
    let seeds = grid.seeds.len();
    let _ = writeln!(
        out,
        "Grid `{}`: {} steps of {} images ({} x {} px scenes), learning rate {}, {} seed{} per setting, \
         {} validation images. AP in percent, mean ± standard deviation over the seeds.\n",
        grid.name,
        grid.steps,
        grid.batch,
        grid.scenes.size,
        grid.scenes.size,
        grid.lr,
        seeds,
        if seeds == 1 { "" } else { "s" },
        grid.val_images
    );
    let of = |kind: &'static str| summaries.iter().filter(move |s| s.setting.kind() == kind);
    if of("cross_entropy").next().is_some() {
        out.push_str("**Table 1a: alpha-balanced cross entropy**\n\n| alpha | AP | AP50 | AP75 | runs |\n|---|---|---|---|---|\n");
        for s in of("cross_entropy") {
            let LossSetting::CrossEntropy { alpha } = s.setting else {
                continue;
            };
            let _ = writeln!(out, "| {} | {} |", alpha_text(alpha), ap_cells(s));
        }
        out.push('\n');
    }
    if of("focal").next().is_some() {
        out.push_str(
            "**Table 1b: focal loss**\n\n| gamma | alpha | AP | AP50 | AP75 | runs |\n|---|---|---|---|---|---|\n",
        );
        for s in of("cross_entropy").chain(of("focal")) {
            let (gamma, alpha) = match s.setting {
                LossSetting::CrossEntropy { alpha } => (0.0, alpha),
                LossSetting::Focal { alpha, gamma } => (gamma, alpha),
                _ => continue,
            };
            // Table 1b's gamma 0 row is the best alpha of Table 1a only.
            if gamma == 0.0 && best(of("cross_entropy")).map(|b| b.setting) != Some(s.setting) {
                continue;
            }
            let _ = writeln!(out, "| {gamma} | {} | {} |", alpha_text(alpha), ap_cells(s));
        }
        out.push('\n');
    }
    if of("focal_star").next().is_some() {
        out.push_str(
            "**FL\\* (appendix A)**\n\n| gamma | beta | AP | AP50 | AP75 | runs |\n|---|---|---|---|---|---|\n",
        );
        for s in of("focal_star") {
            let LossSetting::FocalStar { gamma, beta } = s.setting else {
                continue;
            };
            let _ = writeln!(out, "| {gamma} | {beta} | {} |", ap_cells(s));
        }
        out.push('\n');
    }
    if of("ohem").next().is_some() {
        out.push_str(
            "**Table 1d: OHEM against focal loss**\n\n| method | batch size | nms thr | AP | AP50 | AP75 | runs |\n|---|---|---|---|---|---|---|\n",
        );
        for s in of("ohem") {
            let LossSetting::Ohem(o) = s.setting else { continue };
            let method = if o.positive_fraction.is_some() {
                "OHEM 1:3"
            } else {
                "OHEM"
            };
            let nms = o.nms_threshold.map_or("none".to_string(), |t| t.to_string());
            let _ = writeln!(out, "| {method} | {} | {nms} | {} |", o.per_image, ap_cells(s));
        }
        if let Some(fl) = best(of("focal")) {
            let _ = writeln!(out, "| {} | n/a | n/a | {} |", fl.setting.label(), ap_cells(fl));
        }
        out.push('\n');
    }
    let bests: Vec<&Summary> = ["cross_entropy", "focal", "focal_star", "ohem"]
        .iter()
        .filter_map(|k| best(of(k)))
        .collect();
    if bests.len() > 1 {
        out.push_str("**Best of each loss (Table 1d's comparison)**\n\n| loss | setting | AP | AP50 | AP75 | runs |\n|---|---|---|---|---|---|\n");
        for s in bests {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                s.setting.kind(),
                s.setting.label(),
                ap_cells(s)
            );
        }
        out.push('\n');
    }
    let paired = paper_comparisons(grid, runs);
    if !paired.is_empty() {
        out.push_str(
            "**Paired differences in AP (the same seeds; 95% Student t interval)**\n\n\
             | comparison | settings | seeds | AP difference | 95% interval | excludes 0 |\n\
             |---|---|---|---|---|---|\n",
        );
        for d in &paired {
            let (low, high) = d.interval();
            let (interval, excludes) = if d.seeds < 2 {
                ("n/a (one seed)".to_string(), "n/a")
            } else {
                (
                    format!("[{:+.1}, {:+.1}]", 100.0 * low, 100.0 * high),
                    if d.excludes_zero() { "yes" } else { "no" },
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} - {} | {} | {:+.1} | {interval} | {excludes} |",
                d.comparison,
                d.a.label(),
                d.b.label(),
                d.seeds,
                100.0 * d.mean
            );
        }
        out.push('\n');
    }
    out
}

/// The paired difference in AP between two settings over the seeds both ran (every setting of
/// a grid trains on the same data and from the same initial weights for a given seed, so the
/// seed is the pairing): the mean of `AP(a) - AP(b)` and its 95% confidence interval from
/// Student's t with `seeds - 1` degrees of freedom. A diverged run counts as AP 0.
#[derive(Clone, Debug, PartialEq)]
pub struct PairedDifference {
    /// What the paper compares: `best FL vs best CE`, `best FL vs best OHEM`,
    /// `FL gamma 2 vs gamma 0`.
    pub comparison: &'static str,
    /// The first setting.
    pub a: LossSetting,
    /// The second setting.
    pub b: LossSetting,
    /// Seeds both settings ran.
    pub seeds: usize,
    /// Mean of `AP(a) - AP(b)` over those seeds (AP as a fraction).
    pub mean: f64,
    /// Half the width of the 95% interval: `t(0.975, seeds - 1) * sd / sqrt(seeds)`; NaN with
    /// fewer than two seeds.
    pub half_width: f64,
}

impl PairedDifference {
    /// The 95% interval `(low, high)` of the mean difference.
    pub fn interval(&self) -> (f64, f64) {
        (self.mean - self.half_width, self.mean + self.half_width)
    }

    /// Whether the 95% interval excludes zero (false with fewer than two seeds).
    pub fn excludes_zero(&self) -> bool {
        let (low, high) = self.interval();
        low > 0.0 || high < 0.0
    }
}

/// The paired difference of settings `a` and `b` over the seeds of `runs` that both have, or
/// `None` when they share none.
pub fn paired_difference(
    comparison: &'static str,
    runs: &[RunRecord],
    a: LossSetting,
    b: LossSetting,
) -> Option<PairedDifference> {
    let diffs: Vec<f64> = runs
        .iter()
        .filter(|r| r.setting == a)
        .filter_map(|ra| {
            let rb = runs.iter().find(|r| r.setting == b && r.seed == ra.seed)?;
            Some(ra.ap[0] - rb.ap[0])
        })
        .collect();
    if diffs.is_empty() {
        return None;
    }
    let n = diffs.len() as f64;
    let mean = diffs.iter().sum::<f64>() / n;
    let half_width = if diffs.len() < 2 {
        f64::NAN
    } else {
        let sd = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        student_t_quantile(0.975, n - 1.0) * sd / n.sqrt()
    };
    Some(PairedDifference {
        comparison,
        a,
        b,
        seeds: diffs.len(),
        mean,
        half_width,
    })
}

/// The comparisons the paper makes, where `runs` has both sides: the best focal loss (by mean
/// AP) against the best cross entropy and against the best OHEM, and the best focal loss with
/// gamma 2 against gamma 0 (cross entropy with the same alpha where the grid has it, else the
/// best cross entropy, as Table 1b's gamma 0 row).
pub fn paper_comparisons(grid: &Grid, runs: &[RunRecord]) -> Vec<PairedDifference> {
    let summaries = summarize(grid, runs);
    let of = |kind: &'static str| summaries.iter().filter(move |s| s.setting.kind() == kind);
    let best_fl = best(of("focal")).map(|s| s.setting);
    let best_ce = best(of("cross_entropy")).map(|s| s.setting);
    let best_ohem = best(of("ohem")).map(|s| s.setting);
    let gamma2 = best(of("focal").filter(|s| s.setting.gamma() == Some(2.0))).map(|s| s.setting);
    let gamma0 = gamma2.and_then(|g2| {
        let LossSetting::Focal { alpha, .. } = g2 else {
            return None;
        };
        of("cross_entropy")
            .map(|s| s.setting)
            .find(|s| *s == LossSetting::CrossEntropy { alpha })
            .or(best_ce)
    });
    [
        ("best FL vs best CE", best_fl, best_ce),
        ("best FL vs best OHEM", best_fl, best_ohem),
        ("FL gamma 2 vs gamma 0", gamma2, gamma0),
    ]
    .into_iter()
    .filter_map(|(what, a, b)| paired_difference(what, runs, a?, b?))
    .collect()
}

/// The `p` quantile of Student's t distribution with `df` degrees of freedom (`p` in (0.5, 1)),
/// by bisection on its distribution function.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while student_t_cdf(hi, df) < p && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Student's t distribution function at `t` >= 0: `1 - I_x(df / 2, 1 / 2) / 2` with
/// `x = df / (df + t^2)`.
fn student_t_cdf(t: f64, df: f64) -> f64 {
    1.0 - 0.5 * regularized_incomplete_beta(0.5 * df, 0.5, df / (df + t * t))
}

/// The regularised incomplete beta function `I_x(a, b)`, by its continued fraction (modified
/// Lentz), on the side of `x` where it converges fast.
fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        for aa in [
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ] {
            d = 1.0 + aa * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, 9 terms: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |acc, (i, g)| acc + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The summary with the highest mean AP.
fn best<'a>(summaries: impl Iterator<Item = &'a Summary>) -> Option<&'a Summary> {
    summaries.max_by(|a, b| a.mean[0].total_cmp(&b.mean[0]))
}

/// A palette of distinct colours for series.
const COLOURS: [[u8; 3]; 10] = [
    [230, 25, 75],
    [0, 130, 200],
    [60, 180, 75],
    [245, 130, 48],
    [145, 30, 180],
    [70, 170, 170],
    [240, 50, 230],
    [128, 128, 0],
    [0, 0, 128],
    [128, 0, 0],
];

fn colour(i: usize) -> [u8; 3] {
    COLOURS[i % COLOURS.len()]
}

/// The paper's Figure 1: the loss against the probability of the ground-truth class `p_t`,
/// for gamma 0 (cross entropy), 0.5, 1, 2 and 5, computed by the crate's focal loss (CPU
/// backend) at 400 points of `p_t` in (0, 1).
pub fn figure1() -> Result<Chart> {
    let p: Vec<f64> = (1..400).map(|i| f64::from(i) / 400.0).collect();
    let logits: Vec<f32> = p.iter().map(|&p| (p / (1.0 - p)).ln() as f32).collect();
    let targets = vec![1.0f32; logits.len()];
    let mut series = Vec::new();
    for (i, gamma) in [0.0f32, 0.5, 1.0, 2.0, 5.0].into_iter().enumerate() {
        let loss = FocalLoss::new(None, gamma).with_reduction(Reduction::None);
        let out = loss.forward(&Backend::Cpu, &FocalInput::dense(&logits[..], &targets, 1))?;
        let values = out
            .elementwise
            .ok_or_else(|| Error::invalid("the focal loss gave no elementwise values"))?;
        let points = p.iter().zip(&values).map(|(&p, &l)| (p, f64::from(l))).collect();
        series.push(Series::new(format!("gamma = {gamma}"), colour(i), points));
    }
    Ok(Chart {
        title: "Figure 1: FL(p_t) = -(1 - p_t)^gamma log(p_t)".into(),
        x_label: "probability of ground truth class p_t".into(),
        y_label: "loss".into(),
        log_y: false,
        series,
        ..Chart::default()
    })
}

/// The paper's Figure 4: for a trained model, the cumulative distribution of the normalised
/// focal loss over positive samples and over negative samples, for each gamma. The samples are
/// the (anchor, class) logits of `images` validation scenes: positives where the target is 1,
/// negatives every class of a background anchor (ignored anchors take no part). Each curve's
/// losses are sorted in ascending order and divided by their sum. Returns (positives,
/// negatives).
pub fn loss_distribution(
    net: &RetinaNet,
    values: &[Vec<f32>],
    data: &dyn TrainData,
    images: usize,
    gammas: &[f32],
) -> Result<(Chart, Chart)> {
    let (logits, labels) = validation_logits(net, values, data, images)?;
    let k = net.config().num_classes;
    let mut pos_series = Vec::new();
    let mut neg_series = Vec::new();
    for (i, &gamma) in gammas.iter().enumerate() {
        let loss = FocalLoss::new(None, gamma).with_reduction(Reduction::None);
        let out = loss.forward(&Backend::Cpu, &FocalInput::labels(&logits[..], &labels, k))?;
        let each = out
            .elementwise
            .ok_or_else(|| Error::invalid("the focal loss gave no elementwise values"))?;
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for (a, &label) in labels.iter().enumerate() {
            if label >= 0 {
                pos.push(f64::from(each[a * k + label as usize]));
            } else if label == LABEL_BACKGROUND {
                neg.extend(each[a * k..(a + 1) * k].iter().map(|&v| f64::from(v)));
            }
        }
        let name = format!("gamma = {gamma}");
        pos_series.push(Series::new(name.clone(), colour(i), cumulative(pos)));
        neg_series.push(Series::new(name, colour(i), cumulative(neg)));
    }
    let chart = |what: &str, series| Chart {
        title: format!("Figure 4: cumulative normalised loss, {what} samples"),
        x_label: format!("fraction of {what} samples (ascending loss)"),
        y_label: "cumulative normalised loss".into(),
        log_y: false,
        series,
        ..Chart::default()
    };
    Ok((chart("positive", pos_series), chart("negative", neg_series)))
}

/// Class logits `[images * R * K]` of `images` scenes of `data` and the anchors' labels.
fn validation_logits(
    net: &RetinaNet,
    values: &[Vec<f32>],
    data: &dyn TrainData,
    images: usize,
) -> Result<(Vec<f32>, Vec<i32>)> {
    let s = net.config().input_size;
    if data.size() != s || data.num_classes() != net.config().num_classes {
        return Err(Error::invalid("loss distribution: the data does not fit the network"));
    }
    let anchors = AnchorSet::new(net.config().anchors(), s as u32, s as u32)?;
    let assigner = TargetAssigner::new(net.config().num_classes);
    let mut engine = CpuEngine::<f32>::new();
    let params = net.upload(&mut engine, values)?;
    let (mut logits, mut labels) = (Vec::new(), Vec::new());
    let plane = 3 * s * s;
    for first in (0..images).step_by(8) {
        let n = (images - first).min(8);
        let mut pixels = vec![0f32; n * plane];
        let mut truth = Vec::with_capacity(n);
        for (i, out) in pixels.chunks_exact_mut(plane).enumerate() {
            truth.push(data.sample((first + i) as u64, out)?);
        }
        let x = engine.tensor(Shape::new(n, 3, s, s), &pixels)?;
        let tape = net.forward(&mut engine, &params, x)?;
        logits.extend(engine.read(&tape.class_rows)?);
        let gts: Vec<GroundTruth<'_>> = truth
            .iter()
            .map(|(boxes, classes)| GroundTruth { boxes, classes })
            .collect();
        labels.extend(assigner.assign(&Backend::Cpu, &anchors.boxes, &gts)?.labels);
    }
    Ok((logits, labels))
}

/// The cumulative sum of the sorted, normalised values, at about 300 points of the fraction.
fn cumulative(mut values: Vec<f64>) -> Vec<(f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let total: f64 = values.iter().sum();
    if values.is_empty() || total <= 0.0 {
        return Vec::new();
    }
    let n = values.len();
    let every = n.div_ceil(300);
    let mut sum = 0.0;
    let mut points = vec![(0.0, 0.0)];
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if (i + 1) % every == 0 || i + 1 == n {
            points.push(((i + 1) as f64 / n as f64, sum / total));
        }
    }
    points
}

/// Mean AP (and AP50) against gamma over the cross-entropy (gamma 0) and focal-loss settings,
/// the best alpha at each gamma, as in Table 1b; `None` with fewer than two gammas.
pub fn ap_against_gamma(grid: &Grid, runs: &[RunRecord]) -> Option<Chart> {
    let mut by_gamma: Vec<(f32, &Summary)> = Vec::new();
    let summaries = summarize(grid, runs);
    for s in &summaries {
        let Some(gamma) = s.setting.gamma() else { continue };
        match by_gamma.iter_mut().find(|(g, _)| *g == gamma) {
            Some(slot) if slot.1.mean[0] < s.mean[0] => slot.1 = s,
            Some(_) => {}
            None => by_gamma.push((gamma, s)),
        }
    }
    if by_gamma.len() < 2 {
        return None;
    }
    by_gamma.sort_by(|a, b| a.0.total_cmp(&b.0));
    let line = |i: usize, name: &str, c: usize, sign: f64| {
        let points = by_gamma
            .iter()
            .map(|(g, s)| (f64::from(*g), 100.0 * (s.mean[i] + sign * s.std[i])))
            .collect();
        Series::new(name, colour(c), points)
    };
    Some(Chart {
        title: "AP against gamma (best alpha at each gamma, over seeds)".into(),
        x_label: "gamma".into(),
        y_label: "AP (%)".into(),
        log_y: false,
        series: vec![
            line(1, "AP50", 1, 0.0),
            line(0, "AP", 0, 0.0),
            line(0, "AP + std", 9, 1.0),
            line(0, "AP - std", 9, -1.0),
        ],
        ..Chart::default()
    })
}

/// The classification loss during training of the settings whose [`LossSetting::kind`] is in
/// `kinds` (mean over each setting's seeds at each logged step; log scale): one chart per
/// family keeps the legend readable.
pub fn loss_curves(grid: &Grid, runs: &[RunRecord], kinds: &[&str]) -> Chart {
    let mut series = Vec::new();
    for setting in grid.settings.iter().filter(|s| kinds.contains(&s.kind())) {
        let mine: Vec<&RunRecord> = runs
            .iter()
            .filter(|r| r.setting == *setting && !r.curve.is_empty())
            .collect();
        let Some(first) = mine.first() else { continue };
        let points = first
            .curve
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let at: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.curve.get(j).filter(|q| q.step == p.step))
                    .map(|q| f64::from(q.class))
                    .collect();
                (p.step as f64, at.iter().sum::<f64>() / at.len() as f64)
            })
            .collect();
        let colour = colour(series.len());
        series.push(Series::new(setting.label(), colour, points));
    }
    Chart {
        title: format!("Training classification loss: {} (mean over seeds)", kinds.join(", ")),
        x_label: "step".into(),
        y_label: "classification loss".into(),
        log_y: true,
        series,
        ..Chart::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(setting: LossSetting, seed: u64, ap: [f64; 3]) -> RunRecord {
        RunRecord {
            setting,
            seed,
            steps: 100,
            ap,
            seconds: 12.5,
            diverged: false,
            curve: vec![
                CurvePoint {
                    step: 50,
                    class: 1.5,
                    boxes: 0.25,
                },
                CurvePoint {
                    step: 100,
                    class: 0.75,
                    boxes: 0.125,
                },
            ],
        }
    }

    /// A run that saves checkpoints, stopped part-way (its checkpoint left at step 90 of 100)
    /// and continued, ends as the run never stopped: the same weights bit for bit, the same
    /// loss curve and AP (on the CPU backend in a 1-thread pool); a checkpoint of another
    /// schedule is refused.
    #[test]
    fn a_run_continued_from_its_checkpoint_ends_as_one_never_stopped() {
        let dir = std::env::temp_dir().join(format!("retina-ablate-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let grid = Grid::tiny();
        retina_wgpu::data::write_coco(dir.join("val"), &grid.scenes, grid.val_images, VAL_SEED).unwrap();
        let options = retina_wgpu::coco::DatasetOptions {
            input_size: grid.scenes.size,
            ..Default::default()
        };
        let val = CocoDataset::open_dir(dir.join("val"), &options).unwrap();
        let setting = grid.settings[1];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let run = |grid: &Grid, checkpoint: Option<RunCheckpoint<'_>>, first: &mut usize| {
            pool.install(|| {
                let engines = (CpuEngine::new(), CpuEngine::new());
                let mut on_step = |done: usize| *first = (*first).min(done);
                train_and_evaluate(engines, grid, &setting, 0, &val, &mut on_step, checkpoint)
            })
        };
        let (mut from_start, mut resumed) = (usize::MAX, usize::MAX);
        let (whole, whole_values) = run(&grid, None, &mut from_start).unwrap();
        let run_dir = dir.join("run");
        let checkpoint = RunCheckpoint {
            dir: &run_dir,
            every: 30,
        };
        // The run saves at steps 30, 60 and 90 and ends at 100 without deleting its last
        // checkpoint (the caller does, once the run is recorded): what a run stopped after
        // step 90's save leaves. Started again, it continues from there.
        let (saved, saved_values) = run(&grid, Some(checkpoint), &mut from_start).unwrap();
        assert_eq!(saved_values, whole_values, "saving changed the run");
        assert_eq!(saved.curve, whole.curve);
        assert!(run_dir.join("progress-90.json").exists() && !run_dir.join("progress-60.json").exists());
        let (again, again_values) = run(&grid, Some(checkpoint), &mut resumed).unwrap();
        assert_eq!(resumed, 90, "the run continued from its last checkpoint");
        assert_eq!(again_values, whole_values);
        assert_eq!(again.curve, whole.curve);
        assert_eq!(again.ap, whole.ap);
        assert_eq!(again.steps, whole.steps);
        // Another schedule is refused, naming the directory.
        let longer = Grid {
            steps: 200,
            ..Grid::tiny()
        };
        let err = run(&longer, Some(checkpoint), &mut resumed).unwrap_err().to_string();
        assert!(
            err.contains("another network or schedule") && err.contains("run"),
            "{err}"
        );
        // A progress file cut short, or one that names another step than the checkpoint's, is
        // an error naming the file, not a panic or a run continued with a wrong curve.
        let progress = run_dir.join("progress-90.json");
        let text = std::fs::read(&progress).unwrap();
        std::fs::write(&progress, &text[..text.len() / 2]).unwrap();
        let err = run(&grid, Some(checkpoint), &mut resumed).unwrap_err().to_string();
        assert!(
            err.contains("progress-90.json") && err.contains("not a run's progress"),
            "{err}"
        );
        let lying = String::from_utf8(text).unwrap().replace("\"step\":90", "\"step\":60");
        std::fs::write(&progress, lying).unwrap();
        let err = run(&grid, Some(checkpoint), &mut resumed).unwrap_err().to_string();
        assert!(err.contains("its step is not the checkpoint's"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runs_read_back_from_their_csv_files() {
        let grid = Grid::full();
        let runs = vec![
            record(grid.settings[0], 0, [0.25, 0.5, 0.125]),
            record(grid.settings[7], 2, [0.375, 0.625, 0.0625]),
            record(*grid.settings.last().unwrap(), 1, [0.5, 0.75, 0.25]),
        ];
        let back = read_runs(&grid, &runs_csv(&runs), Some(&curves_csv(&runs))).unwrap();
        assert_eq!(back, runs);
        // Rows of settings outside the grid are skipped; a foreign file is an error.
        assert!(read_runs(&Grid::tiny(), &runs_csv(&runs), None).unwrap().is_empty());
        assert!(read_runs(&grid, "a,b\n1,2\n", None).is_err());
    }

    #[test]
    fn summaries_are_the_mean_and_sample_std_over_seeds() {
        let grid = Grid::quick();
        let s = grid.settings[1];
        let runs = [0.2, 0.3, 0.4]
            .iter()
            .enumerate()
            .map(|(i, &ap)| record(s, i as u64, [ap, 2.0 * ap, 0.0]));
        let summary = summarize(&grid, &runs.collect::<Vec<_>>());
        assert_eq!(summary.len(), 1);
        assert!((summary[0].mean[0] - 0.3).abs() < 1e-12);
        assert!((summary[0].std[0] - 0.1).abs() < 1e-12);
        assert!((summary[0].std[1] - 0.2).abs() < 1e-12);
        assert_eq!(summary[0].runs, 3);
    }

    #[test]
    fn student_t_quantiles_match_scipy() {
        // scipy.stats.t.ppf(0.975, df), scipy 1.16.
        for (df, want) in [
            (1.0, 12.706204736174694),
            (2.0, 4.302652729749462),
            (4.0, 2.7764451051977934),
            (9.0, 2.262157162798205),
            (29.0, 2.045229642132703),
            (100.0, 1.9839715185235518),
        ] {
            let got = student_t_quantile(0.975, df);
            assert!((got - want).abs() < 1e-9 * want, "df {df}: {got} vs {want}");
        }
    }

    #[test]
    fn paired_differences_pair_seeds_and_give_the_t_interval() {
        let grid = Grid::quick();
        let (ce, fl2) = (grid.settings[0], grid.settings[2]);
        let mut runs = Vec::new();
        for (seed, (a, b)) in [(0.30, 0.29), (0.32, 0.30), (0.31, 0.31), (0.35, 0.32), (0.33, 0.30)]
            .into_iter()
            .enumerate()
        {
            runs.push(record(fl2, seed as u64, [a, 0.0, 0.0]));
            runs.push(record(ce, seed as u64, [b, 0.0, 0.0]));
        }
        // A seed only one side ran is left out of the pairs.
        runs.push(record(fl2, 9, [0.9, 0.0, 0.0]));
        // Differences 0.01, 0.02, 0, 0.03, 0.03 (computed by hand): mean 0.018, sample sd
        // sqrt(0.00068 / 4) = 0.0130384, half width 2.7764451 * 0.0130384 / sqrt(5) = 0.0161894.
        let d = paired_difference("x", &runs, fl2, ce).unwrap();
        assert_eq!(d.seeds, 5);
        assert!((d.mean - 0.018).abs() < 1e-12, "{d:?}");
        assert!((d.half_width - 0.0161894).abs() < 1e-6, "{d:?}");
        assert!(d.excludes_zero());
        // The other way round: the same interval, negated.
        let r = paired_difference("x", &runs, ce, fl2).unwrap();
        assert!((r.mean + 0.018).abs() < 1e-12 && r.excludes_zero());
        // In the grid's tables: FL gamma 2 is the best FL and gamma 2 against gamma 0 is the
        // same pair (the quick grid's CE has alpha 0.75, FL 0.25: the best CE stands in).
        let table = markdown(&grid, &runs);
        assert!(
            table.contains("| best FL vs best CE | FL g=2 a=0.25 - CE a=0.75 | 5 | +1.8 | [+0.2, +3.4] | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| FL gamma 2 vs gamma 0 | FL g=2 a=0.25 - CE a=0.75 | 5 |"),
            "{table}"
        );
        // One seed: no interval.
        let one = paired_difference("x", &runs[..2], fl2, ce).unwrap();
        assert!(one.half_width.is_nan() && !one.excludes_zero());
    }

    #[test]
    fn figure1_is_the_papers_formula() {
        let chart = figure1().unwrap();
        assert_eq!(chart.series.len(), 5);
        for (series, gamma) in chart.series.iter().zip([0.0, 0.5, 1.0, 2.0, 5.0]) {
            for &(p, loss) in series.points.iter().step_by(37) {
                let want = -(1.0 - p).powf(gamma) * p.ln();
                assert!(
                    (loss - want).abs() <= 1e-5 * want.max(1e-3),
                    "gamma {gamma}, p {p}: {loss} vs {want}"
                );
            }
        }
    }

    #[test]
    fn cumulative_losses_rise_from_0_to_1() {
        let points = cumulative(vec![3.0, 1.0, f64::NAN, 4.0, 2.0]);
        assert_eq!(
            points,
            vec![(0.0, 0.0), (0.25, 0.1), (0.5, 0.3), (0.75, 0.6), (1.0, 1.0)]
        );
        assert!(cumulative(vec![0.0; 4]).is_empty());
    }

    #[test]
    fn ohem_settings_are_labelled_and_listed_with_their_parameters() {
        let setting = LossSetting::Ohem(Ohem::new(128).with_nms(0.5).with_positive_fraction(0.25));
        assert_eq!(setting.label(), "OHEM 1:3 B=128 nms=0.5");
        assert_eq!(setting.kind(), "ohem");
        let row = runs_csv(&[record(setting, 3, [0.5, 0.75, 0.25])]);
        let row = row.lines().nth(1).unwrap();
        assert!(
            row.starts_with("ohem,OHEM 1:3 B=128 nms=0.5,,0,,128,0.5,0.25,3,100,0.500000,"),
            "{row}"
        );
        let table = markdown(&Grid::full(), &[record(setting, 3, [0.5, 0.75, 0.25])]);
        assert!(
            table.contains("| OHEM 1:3 | 128 | 0.5 | 50.0 | 75.0 | 25.0 | 1 |"),
            "{table}"
        );
    }

    #[test]
    fn grids_are_valid_and_labels_unique() {
        for grid in [Grid::quick(), Grid::full(), Grid::tiny()] {
            grid.validate().unwrap();
        }
        let mut twice = Grid::tiny();
        twice.settings.push(twice.settings[0]);
        assert!(twice.validate().is_err());
        let mut odd = Grid::tiny();
        odd.scenes.size = 100;
        assert!(odd.validate().unwrap_err().to_string().contains("32"));
    }
}
