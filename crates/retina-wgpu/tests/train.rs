//! The training loop: exact resume on the CPU backend, checkpoints that round-trip and refuse
//! what does not belong to them, and clear errors for data that cannot train the network.

use std::path::PathBuf;

use retina_wgpu::Error;
use retina_wgpu::coco::Normalize;
use retina_wgpu::data::SceneConfig;
use retina_wgpu::model::checkpoint::{self, ModelDir};
use retina_wgpu::model::{RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::CpuEngine;
use retina_wgpu::train::{SyntheticData, TrainData, TrainOptions, Trainer};

fn tiny() -> RetinaNetConfig {
    RetinaNetConfig {
        input_size: 64,
        num_classes: 4,
        backbone_channels: [4, 8, 8, 16, 16],
        fpn_channels: 16,
        head_convs: 1,
        head_channels: 16,
        ..RetinaNetConfig::default()
    }
}

fn data() -> SyntheticData {
    SyntheticData {
        config: SceneConfig {
            size: 64,
            ..SceneConfig::default()
        },
        seed: 3,
        normalize: Normalize::IMAGENET,
    }
}

fn options(steps: usize) -> TrainOptions {
    TrainOptions {
        steps,
        batch: 2,
        warmup_steps: 2,
        decay_at: vec![0.5],
        log_every: 1,
        ..TrainOptions::default()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retina-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn resumed_training_gives_the_same_weights_bit_for_bit() {
    let net = RetinaNet::new(tiny()).unwrap();
    let init = net.init(1);
    let data = data();
    let total = 6;

    let mut straight = Trainer::new(CpuEngine::new(), net.clone(), &init, options(total)).unwrap();
    for _ in 0..total {
        let loss = straight.step(&data, true).unwrap().unwrap();
        assert!(loss.total().is_finite());
    }
    let straight = straight.param_values().unwrap();

    let dir = temp_dir("resume");
    let mut first = Trainer::new(CpuEngine::new(), net.clone(), &init, options(total)).unwrap();
    for _ in 0..4 {
        first.step(&data, false).unwrap();
    }
    first.save(&dir).unwrap();
    drop(first);
    let (loaded, values) = checkpoint::load_model(&dir).unwrap();
    assert_eq!(loaded.config(), net.config());
    let saved = retina_wgpu::train::saved_options(&dir).unwrap();
    assert_eq!(saved, options(total));
    let mut second = Trainer::new(CpuEngine::new(), loaded, &values, saved).unwrap();
    second.restore_optimizer(&dir).unwrap();
    assert_eq!(second.step_count(), 4);
    for _ in 4..total {
        second.step(&data, false).unwrap();
    }
    let resumed = second.param_values().unwrap();
    assert_eq!(resumed, straight, "resumed weights differ");
    // Training moved the weights.
    assert_ne!(resumed, init);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Resumes the checkpoint in `dir` and trains to `total` steps; the final weights.
fn resume_to(dir: &std::path::Path, total: usize) -> retina_wgpu::Result<Vec<Vec<f32>>> {
    let saved = retina_wgpu::train::saved_options(dir)?;
    let (net, values) = checkpoint::load_model(dir)?;
    let mut trainer = Trainer::new(CpuEngine::new(), net, &values, saved)?;
    trainer.restore_optimizer(dir)?;
    while trainer.step_count() < total {
        trainer.step(&data(), false)?;
    }
    trainer.param_values()
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
    std::fs::copy(from, to).unwrap();
}

/// A checkpoint survives a process killed in the middle of a save, and a save that fails: the
/// states a kill can leave (the new optimizer state written but not renamed, before or after the
/// new weights were renamed into place) are built file by file, and each resumes to the same
/// weights as an uninterrupted run; a save whose write fails is an error that leaves the
/// previous checkpoint resumable. (crates/retina-cli/tests/cli.rs kills real `retina train`
/// processes.)
#[test]
fn checkpoints_stay_whole_when_a_save_is_interrupted_or_fails() {
    let net = RetinaNet::new(tiny()).unwrap();
    let init = net.init(1);
    let total = 6;
    let mut trainer = Trainer::new(CpuEngine::new(), net.clone(), &init, options(total)).unwrap();
    let (at2, at4) = (temp_dir("save-at-2"), temp_dir("save-at-4"));
    for _ in 0..2 {
        trainer.step(&data(), false).unwrap();
    }
    trainer.save(&at2).unwrap();
    for _ in 2..4 {
        trainer.step(&data(), false).unwrap();
    }
    trainer.save(&at4).unwrap();
    for _ in 4..total {
        trainer.step(&data(), false).unwrap();
    }
    let straight = trainer.param_values().unwrap();
    assert!(
        !ModelDir(at4.clone()).pending_optimizer().exists(),
        "a finished save leaves no .next"
    );
    assert_eq!(resume_to(&at2, total).unwrap(), straight);

    let (old, new) = (ModelDir(at2.clone()), ModelDir(at4.clone()));
    let dir = temp_dir("interrupted");
    let paths = ModelDir(dir.clone());
    let lay = |weights: &ModelDir, optimizer: &ModelDir, pending: Option<&ModelDir>| {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        copy(&weights.config(), &paths.config());
        copy(&weights.weights(), &paths.weights());
        copy(&optimizer.optimizer(), &paths.optimizer());
        if let Some(p) = pending {
            copy(&p.optimizer(), &paths.pending_optimizer());
        }
    };
    // Killed after the new optimizer state was written, before the new weights: the previous
    // checkpoint, and a stale .next that resuming removes.
    lay(&old, &old, Some(&new));
    assert_eq!(resume_to(&dir, total).unwrap(), straight);
    assert!(!paths.pending_optimizer().exists());
    // Killed between the new weights' rename and the optimizer's: resuming completes the save.
    lay(&new, &old, Some(&new));
    assert_eq!(resume_to(&dir, total).unwrap(), straight);
    assert!(!paths.pending_optimizer().exists());
    // Weights and optimizer state of different steps, with nothing to complete them: refused.
    lay(&new, &old, None);
    match resume_to(&dir, total) {
        Err(Error::Format { detail, .. }) => assert!(detail.contains("inconsistent checkpoint"), "{detail}"),
        other => panic!("expected an inconsistent checkpoint, got {:?}", other.map(|_| ())),
    }

    // A save whose write fails (the weights' temporary file cannot be created) is an error, and
    // the previous checkpoint still resumes to the same weights.
    lay(&old, &old, None);
    let (net2, values2) = checkpoint::load_model(&dir).unwrap();
    let mut again = Trainer::new(CpuEngine::new(), net2, &values2, options(total)).unwrap();
    again.restore_optimizer(&dir).unwrap();
    again.step(&data(), false).unwrap();
    std::fs::create_dir_all(dir.join("model.safetensors.tmp")).unwrap();
    let err = again.save(&dir).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    std::fs::remove_dir_all(dir.join("model.safetensors.tmp")).unwrap();
    assert_eq!(resume_to(&dir, total).unwrap(), straight);
    for d in [&dir, &at2, &at4] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn checkpoints_store_pytorch_shapes_and_reject_what_is_not_theirs() {
    let net = RetinaNet::new(tiny()).unwrap();
    let values = net.init(5);
    let dir = temp_dir("checkpoint");
    checkpoint::save_model(&dir, &net, &values).unwrap();
    let (_, back) = checkpoint::load_model(&dir).unwrap();
    assert_eq!(back, values);
    let paths = ModelDir(dir.clone());
    // Shapes as PyTorch's state dict has them: biases 1-D, convolution weights 4-D.
    let bytes = std::fs::read(paths.weights()).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["fpn.p6.conv.bias"]["shape"], serde_json::json!([16]));
    assert_eq!(header["fpn.p6.conv.weight"]["shape"], serde_json::json!([16, 16, 3, 3]));
    assert_eq!(header["head.cls.output.conv.weight"]["dtype"], "F32");

    let format_error = |r: retina_wgpu::Result<(RetinaNet, Vec<Vec<f32>>)>, needle: &str| match r {
        Err(Error::Format { path, detail }) => {
            assert!(detail.contains(needle), "{path}: {detail}");
            path
        }
        other => panic!("expected a format error about {needle}, got {:?}", other.map(|_| ())),
    };
    // A truncated weights file.
    std::fs::write(paths.weights(), &bytes[..bytes.len() / 2]).unwrap();
    let path = format_error(checkpoint::load_model(&dir), "safetensors");
    assert!(path.ends_with("model.safetensors"));
    // Weights of another configuration.
    let other = RetinaNet::new(RetinaNetConfig {
        num_classes: 3,
        ..tiny()
    })
    .unwrap();
    checkpoint::save_model(&dir, &other, &other.init(1)).unwrap();
    std::fs::write(paths.config(), serde_json::to_vec(&tiny()).unwrap()).unwrap();
    format_error(checkpoint::load_model(&dir), "head.cls.output.conv.weight");
    // A configuration that is not one.
    std::fs::write(paths.config(), br#"{"input_size": 100}"#).unwrap();
    let path = format_error(checkpoint::load_model(&dir), "multiple of 32");
    assert!(path.ends_with("config.json"));
    std::fs::write(paths.config(), b"{ not json").unwrap();
    format_error(checkpoint::load_model(&dir), "line 1");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(checkpoint::load_model(&dir), Err(Error::Io { .. })));
}

/// A model directory from a stranger: numbers that would make the network (or the input's
/// letterbox) allocate without bound are refused naming the field, and files larger than what
/// they can hold are refused before they are read.
#[test]
fn model_files_that_claim_too_much_are_refused_before_anything_is_allocated() {
    let net = RetinaNet::new(tiny()).unwrap();
    let dir = temp_dir("strangers");
    checkpoint::save_model(&dir, &net, &net.init(5)).unwrap();
    let paths = ModelDir(dir.clone());
    let refused = |needle: &str| match checkpoint::load_model(&dir) {
        Err(Error::Format { detail, .. }) => assert!(detail.contains(needle), "{needle}: {detail}"),
        other => panic!("expected a format error naming {needle}, got {:?}", other.map(|_| ())),
    };
    let config = |edit: serde_json::Value| {
        let mut c = serde_json::to_value(tiny()).unwrap();
        for (k, v) in edit.as_object().unwrap() {
            c[k] = v.clone();
        }
        std::fs::write(paths.config(), serde_json::to_vec(&c).unwrap()).unwrap();
    };
    // Measured before: an input_size of 2^30 made `retina detect` abort allocating 12 TB.
    config(serde_json::json!({"input_size": 1u64 << 30}));
    refused("input_size");
    config(serde_json::json!({"num_classes": 1u64 << 40}));
    refused("num_classes");
    config(serde_json::json!({"fpn_channels": 1u64 << 20}));
    refused("fpn_channels");
    config(serde_json::json!({"backbone_channels": [16, 32, 64, 96, 1u64 << 33]}));
    refused("backbone_channels");
    config(serde_json::json!({"head_convs": 1000}));
    refused("head_convs");
    // Within every per-field limit, but 4096-channel heads of 16 convolutions: too many parameters.
    config(serde_json::json!({"head_convs": 16, "head_channels": 4096, "fpn_channels": 4096}));
    refused("parameters");
    // A config file of 17 MiB is refused by its size.
    let mut big = serde_json::to_vec(&tiny()).unwrap();
    big.resize(17 << 20, b' ');
    std::fs::write(paths.config(), &big).unwrap();
    refused("bytes at most");
    // A weights file far larger than the network's parameters (sparse: no disk is used).
    std::fs::write(paths.config(), serde_json::to_vec(&tiny()).unwrap()).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(paths.weights()).unwrap();
    file.set_len(8 << 30).unwrap();
    drop(file);
    refused("bytes at most");
    // An optimizer file whose header claims 2^60 bytes.
    let mut lying = (1u64 << 60).to_le_bytes().to_vec();
    lying.extend_from_slice(b"{}");
    std::fs::write(paths.optimizer(), &lying).unwrap();
    match retina_wgpu::train::saved_options(&dir) {
        Err(Error::Format { detail, .. }) => assert!(detail.contains("header"), "{detail}"),
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A dataset of `n` images.
struct Few(usize);

impl TrainData for Few {
    fn images(&self) -> Option<usize> {
        Some(self.0)
    }
    fn size(&self) -> usize {
        64
    }
    fn num_classes(&self) -> usize {
        4
    }
    fn categories(&self) -> Vec<retina_wgpu::coco::Category> {
        data().categories()
    }
    fn sample(&self, index: u64, out: &mut [f32]) -> retina_wgpu::Result<(Vec<[f32; 4]>, Vec<i32>)> {
        data().sample(index, out)
    }
}

#[test]
fn data_that_cannot_train_the_network_is_an_error() {
    let net = RetinaNet::new(tiny()).unwrap();
    let init = net.init(1);
    let mut t = Trainer::new(CpuEngine::new(), net.clone(), &init, options(4)).unwrap();
    let invalid = |r: retina_wgpu::Result<_>, needle: &str| match r {
        Err(Error::InvalidParameter(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected an error about {needle}, got {other:?}"),
    };
    invalid(t.step(&Few(0), false), "no image");
    invalid(t.step(&Few(1), false), "larger than the dataset");
    let mut wrong_size = data();
    wrong_size.config.size = 96;
    invalid(t.step(&wrong_size, false), "96");
    assert_eq!(t.step_count(), 0);
    // A dataset of exactly one batch trains.
    assert!(t.step(&Few(2), true).unwrap().is_some());
    let bad = TrainOptions { batch: 0, ..options(4) };
    assert!(Trainer::new(CpuEngine::new(), net, &init, bad).is_err());
}

/// Learning, as a real test: a tiny network trained for 800 steps on the CPU finds the shapes of
/// held-out scenes.
#[test]
fn a_tiny_network_learns_to_detect_held_out_shapes() {
    use retina_wgpu::coco::{CocoDataset, DatasetOptions};
    use retina_wgpu::model::{Detector, evaluate_dataset};
    let scenes = SceneConfig {
        size: 64,
        max_objects: 3,
        min_side: 0.25,
        max_side: 0.6,
        ..SceneConfig::default()
    };
    let config = RetinaNetConfig {
        input_size: 64,
        num_classes: 4,
        backbone_channels: [8, 16, 16, 32, 32],
        fpn_channels: 32,
        head_convs: 1,
        head_channels: 32,
        ..RetinaNetConfig::default()
    };
    let net = RetinaNet::new(config).unwrap();
    let init = net.init(0);
    let data = SyntheticData {
        config: scenes.clone(),
        seed: 0,
        normalize: Normalize::IMAGENET,
    };
    let steps = 800;
    let options = TrainOptions {
        steps,
        batch: 8,
        warmup_steps: 40,
        ..TrainOptions::default()
    };
    let start = std::time::Instant::now();
    let mut trainer = Trainer::new(CpuEngine::new(), net.clone(), &init, options).unwrap();
    for _ in 0..steps {
        trainer.step(&data, false).unwrap();
    }
    let values = trainer.param_values().unwrap();
    let trained = start.elapsed();

    let dir = temp_dir("learn");
    retina_wgpu::data::write_coco(&dir, &scenes, 60, 777).unwrap();
    let options = DatasetOptions {
        input_size: 64,
        ..DatasetOptions::default()
    };
    let val = CocoDataset::open_dir(&dir, &options).unwrap();
    let mut detector = Detector::new(CpuEngine::new(), net, &values).unwrap();
    let (eval, _) = evaluate_dataset(&mut detector, &val, 16, &retina_wgpu::NoProgress).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "{steps} steps in {trained:?}: AP {:.3} AP50 {:.3}",
        eval.stats[0], eval.stats[1]
    );
    // Measured 0.28 (AP 0.16): the CPU backend's sums run in a fixed order, so the run is the
    // same on every machine of a kind; the bar leaves room for another CPU's rounding.
    assert!(eval.stats[1] >= 0.2, "AP50 {} after {steps} steps", eval.stats[1]);
}

/// A dataset of 5 images that records which ones the trainer asks for.
struct Recorded(std::sync::Mutex<Vec<u64>>);

impl TrainData for Recorded {
    fn images(&self) -> Option<usize> {
        Some(5)
    }
    fn size(&self) -> usize {
        64
    }
    fn num_classes(&self) -> usize {
        4
    }
    fn categories(&self) -> Vec<retina_wgpu::coco::Category> {
        data().categories()
    }
    fn sample(&self, index: u64, out: &mut [f32]) -> retina_wgpu::Result<(Vec<[f32; 4]>, Vec<i32>)> {
        self.0.lock().unwrap().push(index);
        data().sample(index, out)
    }
}

#[test]
fn a_dataset_on_disk_is_walked_once_per_epoch_in_a_shuffled_order() {
    let net = RetinaNet::new(tiny()).unwrap();
    let data = Recorded(std::sync::Mutex::new(Vec::new()));
    let mut t = Trainer::new(CpuEngine::new(), net.clone(), &net.init(1), options(10)).unwrap();
    for _ in 0..10 {
        t.step(&data, false).unwrap();
    }
    // 10 steps of 2 images: 4 whole epochs of 5, batches crossing epoch boundaries.
    let mut seen = data.0.into_inner().unwrap();
    assert_eq!(seen.len(), 20);
    // A step draws its images in parallel, so the two images of the batches that straddle an
    // epoch boundary (positions 4-5 and 14-15) may be recorded in either order: put them in the
    // order the epochs need (a repeat within the epoch before them means they were swapped).
    for b in [4usize, 14] {
        if seen[b - 4..b].contains(&seen[b]) {
            seen.swap(b, b + 1);
        }
    }
    let epochs: Vec<Vec<u64>> = seen.chunks(5).map(<[u64]>::to_vec).collect();
    for epoch in &epochs {
        let mut sorted = epoch.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4], "every image once per epoch: {seen:?}");
    }
    assert!(
        epochs.windows(2).any(|w| w[0] != w[1]),
        "the order changes between epochs: {seen:?}"
    );
}
