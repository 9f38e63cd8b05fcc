//! The training loop of the small RetinaNet, on either engine: batches from the synthetic scene
//! generator or a COCO dataset, forward, loss (matching, focal loss, box loss), backward and an
//! SGD update per step, the loss read only on logging steps, and checkpoints that resume
//! exactly.
//!
//! A batch depends only on the seed and the step (the synthetic generator draws scene
//! `step * batch + i`; a dataset on disk is walked in an order shuffled per epoch from the seed;
//! horizontal flips are drawn from the seed, step and slot), so the data needs no state of its
//! own to resume: on the CPU backend, N steps, a checkpoint and M resumed steps give the same
//! weights, bit for bit, as N + M steps in one run.

use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::coco::{Category, CocoDataset, Normalize, write_file};
use crate::data::SceneConfig;
use crate::error::{Error, Result};
use crate::model::checkpoint::{
    ModelDir, finish_pending_save, from_safetensors, max_tensor_file_bytes, read_limited, read_safetensors_header,
    sync_dir, to_safetensors, write_model,
};
use crate::model::{AnchorSet, ClassLoss, DetectionLoss, LossEngine, LossValues, RetinaNet};
use crate::nn::{LrSchedule, SeededRng, Sgd, Shape};
use crate::ops::matcher::GroundTruth;

/// Where training images come from: square images of the network's input size, normalised,
/// with their ground truth in network pixels.
pub trait TrainData: Sync {
    /// Images there are, or `None` for an endless generator.
    fn images(&self) -> Option<usize>;
    /// The square image side.
    fn size(&self) -> usize;
    /// Classes.
    fn num_classes(&self) -> usize;
    /// The categories of the classes, in class order (COCO's ids and names).
    fn categories(&self) -> Vec<Category>;
    /// Writes image `index` (CHW, normalised) into `out` (`3 * size * size` values) and returns
    /// its boxes `[x1, y1, x2, y2]` and classes.
    fn sample(&self, index: u64, out: &mut [f32]) -> Result<(Vec<[f32; 4]>, Vec<i32>)>;
}

/// The categories `retina synth` writes for `config`: ids 1..=K named after the shapes.
pub fn synthetic_categories(config: &SceneConfig) -> Vec<Category> {
    config
        .class_names()
        .into_iter()
        .enumerate()
        .map(|(k, name)| Category {
            id: k as i64 + 1,
            name: name.to_string(),
            supercategory: "shape".to_string(),
        })
        .collect()
}

/// The endless synthetic scene generator ([`SceneConfig`]) as training data.
#[derive(Clone, Debug)]
pub struct SyntheticData {
    /// The scenes.
    pub config: SceneConfig,
    /// The seed; scene `i` is `config.scene(seed, i)`.
    pub seed: u64,
    /// Normalisation (ImageNet's, as for datasets on disk).
    pub normalize: Normalize,
}

impl TrainData for SyntheticData {
    fn images(&self) -> Option<usize> {
        None
    }

    fn size(&self) -> usize {
        self.config.size as usize
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes()
    }

    fn categories(&self) -> Vec<Category> {
        synthetic_categories(&self.config)
    }

    fn sample(&self, index: u64, out: &mut [f32]) -> Result<(Vec<[f32; 4]>, Vec<i32>)> {
        let scene = self.config.scene(self.seed, index)?;
        let side = self.config.size as usize;
        self.normalize.write_chw(&scene.pixels, side, side, out)?;
        let classes = scene.classes_i32();
        Ok((scene.boxes, classes))
    }
}

impl TrainData for CocoDataset {
    fn images(&self) -> Option<usize> {
        Some(self.len())
    }

    fn size(&self) -> usize {
        self.options().input_size as usize
    }

    fn num_classes(&self) -> usize {
        CocoDataset::categories(self).len()
    }

    fn categories(&self) -> Vec<Category> {
        let map = CocoDataset::categories(self);
        (0..map.len())
            .map(|k| Category {
                id: map.category_id(k).expect("class in range"),
                name: map.name(k).unwrap_or_default().to_string(),
                supercategory: String::new(),
            })
            .collect()
    }

    fn sample(&self, index: u64, out: &mut [f32]) -> Result<(Vec<[f32; 4]>, Vec<i32>)> {
        let sample = &self.samples()[index as usize];
        sample.write_chw(&self.options().normalize, out)?;
        Ok((sample.boxes().to_vec(), sample.classes().to_vec()))
    }
}

/// How a run trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// SGD steps.
    pub steps: usize,
    /// Images per step (8).
    pub batch: usize,
    /// Learning rate after warmup (0.03: on the synthetic scenes, 3,818 steps reach AP 0.684
    /// with it, 0.648 with 0.02 and 0.569 with 0.01).
    pub lr: f32,
    /// Steps of linear warmup from lr / 3 (5% of the steps by default).
    pub warmup_steps: usize,
    /// Fractions of `steps` after which the rate is divided by 10 (0.8 and 0.95).
    pub decay_at: Vec<f32>,
    /// Momentum (0.9).
    pub momentum: f32,
    /// Weight decay on convolution weights (1e-4); none on biases and GroupNorm.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (10).
    pub max_grad_norm: Option<f32>,
    /// Seed of the data order and flips.
    pub seed: u64,
    /// Horizontal flips (true).
    pub flip: bool,
    /// Read and report the loss every this many steps (20).
    pub log_every: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 3000,
            batch: 8,
            lr: 0.03,
            warmup_steps: 150,
            decay_at: vec![0.8, 0.95],
            momentum: 0.9,
            weight_decay: 1e-4,
            max_grad_norm: Some(10.0),
            seed: 0,
            flip: true,
            log_every: 20,
        }
    }
}

impl TrainOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.log_every == 0 {
            return Err(Error::invalid("training: batch and log interval must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid(format!(
                "training: learning rate must be finite and > 0, got {}",
                self.lr
            )));
        }
        if self.decay_at.iter().any(|f| !(0.0..=1.0).contains(f)) {
            return Err(Error::invalid(
                "training: decay points are fractions of the steps, in [0, 1]",
            ));
        }
        self.sgd().validate()
    }

    /// The optimiser.
    pub fn sgd(&self) -> Sgd {
        Sgd {
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
        }
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            base: self.lr,
            warmup_steps: self.warmup_steps,
            warmup_factor: 1.0 / 3.0,
            decay_steps: self.decay_at.iter().map(|f| (f * self.steps as f32) as usize).collect(),
            gamma: 0.1,
        }
    }
}

/// One batch in host memory.
struct Batch {
    images: Vec<f32>,
    boxes: Vec<Vec<[f32; 4]>>,
    classes: Vec<Vec<i32>>,
}

/// The training state of one run on engine `E`: network, parameters, momentum, step.
pub struct Trainer<E: LossEngine> {
    net: RetinaNet,
    engine: E,
    params: Vec<E::Tensor>,
    velocity: Vec<E::Tensor>,
    decay: Vec<bool>,
    loss: DetectionLoss,
    anchors: AnchorSet,
    options: TrainOptions,
    step: usize,
}

impl<E: LossEngine> Trainer<E> {
    /// A run starting at step 0 from `values` (in [`RetinaNet::params`] order).
    pub fn new(mut engine: E, net: RetinaNet, values: &[Vec<f32>], options: TrainOptions) -> Result<Self> {
        options.validate()?;
        let params = net.upload(&mut engine, values)?;
        // Parameters, gradients and momentum share one packed layout (one SGD dispatch per
        // group on the GPU).
        let velocity = net.packed_zeros(&mut engine)?;
        let s = net.config().input_size as u32;
        let anchors = AnchorSet::new(net.config().anchors(), s, s)?;
        Ok(Self {
            decay: net.params().iter().map(|p| p.decay).collect(),
            loss: DetectionLoss::retinanet(net.config().num_classes),
            net,
            engine,
            params,
            velocity,
            anchors,
            options,
            step: 0,
        })
    }

    /// The network.
    pub fn net(&self) -> &RetinaNet {
        &self.net
    }

    /// The engine.
    pub fn engine(&mut self) -> &mut E {
        &mut self.engine
    }

    /// Trains with another classification loss (focal loss with alpha 0.25 and gamma 2 by
    /// default): cross entropy, FL* or OHEM for the paper's experiment. Its parameters are
    /// checked when the next step computes the loss.
    pub fn set_class_loss(&mut self, class_loss: ClassLoss) {
        self.loss.class_loss = class_loss;
    }

    /// The loss the run trains with.
    pub fn loss(&self) -> &DetectionLoss {
        &self.loss
    }

    /// The options.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// Steps done.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Changes the run's length (and with it the schedule's decay points), for a run that
    /// measures its speed before it knows how many steps fit its time.
    pub fn set_total_steps(&mut self, steps: usize) -> Result<()> {
        if steps < self.step {
            return Err(Error::invalid(format!(
                "training: {steps} steps in all, but {} are done already",
                self.step
            )));
        }
        self.options.steps = steps;
        Ok(())
    }

    /// The parameters on the engine.
    pub fn params(&self) -> &[E::Tensor] {
        &self.params
    }

    /// The parameters' values.
    pub fn param_values(&mut self) -> Result<Vec<Vec<f32>>> {
        self.params.iter().map(|p| self.engine.read(p)).collect()
    }

    /// The image indices of the batch at `step`.
    fn indices(&self, data: &dyn TrainData, step: usize) -> Result<Vec<u64>> {
        let b = self.options.batch;
        let first = (step * b) as u64;
        match data.images() {
            None => Ok((first..first + b as u64).collect()),
            Some(0) => Err(Error::invalid("training: the dataset holds no image")),
            Some(n) if n < b => Err(Error::invalid(format!(
                "training: a batch of {b} is larger than the dataset ({n} images)"
            ))),
            Some(n) => {
                // A batch spans at most two epochs (b <= n): shuffle each once.
                let mut order: Option<(u64, Vec<usize>)> = None;
                Ok((first..first + b as u64)
                    .map(|k| {
                        let (epoch, i) = (k / n as u64, (k % n as u64) as usize);
                        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                            order = Some((epoch, epoch_order(self.options.seed, epoch, n)));
                        }
                        order.as_ref().expect("set above").1[i] as u64
                    })
                    .collect())
            }
        }
    }

    fn batch(&self, data: &dyn TrainData, step: usize) -> Result<Batch> {
        let s = data.size();
        if s != self.net.config().input_size || data.num_classes() != self.net.config().num_classes {
            return Err(Error::invalid(format!(
                "training data of {s} x {s} px and {} classes for a network of {} px and {} classes",
                data.num_classes(),
                self.net.config().input_size,
                self.net.config().num_classes
            )));
        }
        let plane = 3 * s * s;
        let indices = self.indices(data, step)?;
        let (flip, seed) = (self.options.flip, self.options.seed);
        let mut batch = Batch {
            images: vec![0.0; indices.len() * plane],
            boxes: Vec::with_capacity(indices.len()),
            classes: Vec::with_capacity(indices.len()),
        };
        // Images are drawn or decoded in parallel: on two cores, a serial batch leaves one idle
        // for about a tenth of a step.
        let samples: Vec<_> = indices
            .par_iter()
            .zip(batch.images.par_chunks_exact_mut(plane))
            .enumerate()
            .map(|(slot, (&index, out))| -> Result<_> {
                let (mut boxes, classes) = data.sample(index, out)?;
                if flip && flip_drawn(seed, step, slot) {
                    for row in out.chunks_exact_mut(s) {
                        row.reverse();
                    }
                    for b in &mut boxes {
                        *b = [s as f32 - b[2], b[1], s as f32 - b[0], b[3]];
                    }
                }
                Ok((boxes, classes))
            })
            .collect::<Result<_>>()?;
        for (boxes, classes) in samples {
            batch.boxes.push(boxes);
            batch.classes.push(classes);
        }
        Ok(batch)
    }

    /// One SGD step on the next batch of `data`. Returns the batch's loss when `read_loss`
    /// (which waits for the device on the GPU), else `None`.
    pub fn step(&mut self, data: &dyn TrainData, read_loss: bool) -> Result<Option<LossValues>> {
        let batch = self.batch(data, self.step)?;
        let s = self.net.config().input_size;
        let n = batch.boxes.len();
        let images: Vec<GroundTruth> = batch
            .boxes
            .iter()
            .zip(&batch.classes)
            .map(|(b, c)| GroundTruth { boxes: b, classes: c })
            .collect();
        let lr = self.options.schedule().at(self.step);
        let sgd = self.options.sgd();
        // One engine pass: the CPU engine's workers poll for work through the whole step.
        let (net, params, velocity) = (&self.net, &mut self.params, &mut self.velocity);
        let (loss_fn, anchors, decay) = (&self.loss, &self.anchors, &self.decay);
        let loss = self.engine.pass(|e| {
            let x = e.tensor(Shape::new(n, 3, s, s), &batch.images)?;
            let tape = net.forward(e, params, x)?;
            let loss = e.detection_loss(loss_fn, anchors, &tape.class_rows, &tape.box_rows, &images)?;
            let grads = net.backward(e, params, &tape, &loss.class_grad, &loss.box_grad)?;
            drop(tape);
            e.sgd_step(&sgd, lr, params, &grads, velocity, decay)?;
            Ok::<_, Error>(loss)
        })?;
        let e = &mut self.engine;
        self.step += 1;
        if read_loss {
            let values = LossValues::from_array(&e.read(&loss.values)?)?;
            Ok(Some(values))
        } else {
            e.sync()?;
            Ok(None)
        }
    }

    /// Writes the model (`config.json`, `model.safetensors`) and the optimiser state
    /// (`optimizer.safetensors`: momentum and step) into `dir` as one checkpoint that a kill
    /// at any moment leaves whole: every file is written to a temporary file, synced and
    /// renamed; the optimizer state goes to `optimizer.safetensors.next` first, then the
    /// weights (which record the step too), then `.next` is renamed into place. A process killed
    /// between the two renames leaves the new weights and `.next`, which resuming completes
    /// ([`Trainer::restore_optimizer`], [`saved_options`]); killed earlier, the previous
    /// checkpoint is intact. A failed write is an error and leaves the previous checkpoint as
    /// it was.
    pub fn save(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let values = self.param_values()?;
        let velocity = self
            .velocity
            .iter()
            .map(|v| self.engine.read(v))
            .collect::<Result<Vec<_>>>()?;
        let paths = ModelDir(dir.to_path_buf());
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut metadata = HashMap::new();
        metadata.insert("step".to_string(), self.step.to_string());
        metadata.insert(
            "options".to_string(),
            serde_json::to_string(&self.options).expect("options serialise"),
        );
        let pending = paths.pending_optimizer();
        write_file(&pending, &to_safetensors(&self.net, &velocity, metadata)?)?;
        write_model(dir, &self.net, &values, Some(self.step))?;
        std::fs::rename(&pending, paths.optimizer()).map_err(|e| Error::io(&pending, e))?;
        sync_dir(dir);
        Ok(())
    }

    /// Restores momentum and step from `dir`'s `optimizer.safetensors` (the weights are those
    /// the trainer was made with: load them with [`crate::model::checkpoint::load_model`]).
    pub fn restore_optimizer(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        finish_pending_save(dir.as_ref())?;
        let path = ModelDir(dir.as_ref().to_path_buf()).optimizer();
        let bytes = read_limited(
            &path,
            max_tensor_file_bytes(&self.net),
            "this network's optimizer state",
        )?;
        let source = path.display().to_string();
        let contents = from_safetensors(&self.net, &bytes, &source)?;
        let (velocity, metadata) = (contents.values, contents.metadata);
        let step = metadata
            .get("step")
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| Error::format(&source, "metadata has no `step`"))?;
        for ((v, spec), values) in self.velocity.iter_mut().zip(self.net.params()).zip(&velocity) {
            if values.len() != spec.shape.len() {
                return Err(Error::format(
                    &source,
                    format!(
                        "momentum of {} holds {} values, not {}",
                        spec.name,
                        values.len(),
                        spec.shape
                    ),
                ));
            }
            self.engine.write(v, values)?;
        }
        self.step = step;
        Ok(())
    }
}

/// The options a run saved with its checkpoint in `dir` (`optimizer.safetensors`), so that a
/// resumed run keeps its schedule, batch, seed and data order.
pub fn saved_options(dir: impl AsRef<Path>) -> Result<TrainOptions> {
    finish_pending_save(dir.as_ref())?;
    let path = ModelDir(dir.as_ref().to_path_buf()).optimizer();
    let source = path.display().to_string();
    let header = read_safetensors_header(&path)?;
    let options = header
        .get("__metadata__")
        .and_then(|m| m.get("options"))
        .and_then(|o| o.as_str())
        .ok_or_else(|| Error::format(&source, "metadata has no `options`"))?;
    serde_json::from_str(options).map_err(|e| Error::format(&source, format!("invalid `options`: {e}")))
}

/// The order of epoch `epoch` over `n` images (Fisher-Yates from the seed and epoch).
fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = SeededRng::new(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Whether image `slot` of the batch at `step` is flipped.
fn flip_drawn(seed: u64, step: usize, slot: usize) -> bool {
    let mut rng = SeededRng::new(seed.wrapping_add(0xd1b5_4a32_d192_ed03) ^ ((step as u64) << 16) ^ slot as u64);
    rng.next_u64() & 1 == 1
}
