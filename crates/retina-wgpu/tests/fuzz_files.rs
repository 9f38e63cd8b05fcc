//! The file readers under fuzzing: every reader of a file a user may download from a stranger
//! (COCO instances and results JSON, a model's `config.json`, its safetensors weights, a
//! training run's optimizer state, PNG and JPEG images) is fed arbitrary bytes and mutations of
//! a valid file (the committed seeds in tests/seeds/ and the COCO edge-case files), under
//! `catch_unwind`: an error is fine, a panic, an abort or an unbounded allocation is not, and
//! what a reader accepts must be within its documented limits.
//!
//! Each proptest runs a few hundred cases in `cargo test` (the smoke run CI does); set
//! `PROPTEST_CASES` for more: `scripts/fuzz_files.sh` runs them for a stated time. A failure
//! found that way becomes a case of its own here.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use retina_wgpu::coco::{self, Instances, Sample};
use retina_wgpu::model::checkpoint::{self, ModelDir};
use retina_wgpu::model::{MAX_PARAMETERS, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::CpuEngine;
use retina_wgpu::train::{TrainOptions, Trainer};

/// Cases per proptest: `PROPTEST_CASES` when set (the fuzzing script), else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn seed(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seeds").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A scratch directory per test and case (removed when dropped).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "retina-fuzz-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` under `catch_unwind`; a panic becomes an error naming `what`.
fn no_panic(what: &str, f: impl FnOnce()) -> std::result::Result<(), String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| format!("{what}: panicked"))
}

// --- Mutations ------------------------------------------------------------------------------

/// One edit of a byte string: set a byte, insert or delete a run, splice in a token that JSON
/// readers trip on, or overwrite eight bytes with a little-endian length (what a lying binary
/// header holds).
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Length(usize, u64),
}

const TOKENS: &[&str] = &[
    "-1",
    "1e309",
    "-1e309",
    "NaN",
    "null",
    "9223372036854775808",
    "-9223372036854775809",
    "1e-400",
    "\"\"",
    "[]",
    "{}",
    "0.0",
    "-0",
    "[1,2,3]",
    "[1e300,1e300,1e300,1e300]",
    "\"\\ud800\"",
    "true",
    "18446744073709551615",
];

fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    for edit in edits {
        if v.is_empty() {
            break;
        }
        match *edit {
            Edit::Set(at, b) => {
                let i = at % v.len();
                v[i] = b;
            }
            Edit::Insert(at, token) => {
                let i = at % (v.len() + 1);
                let t = TOKENS[token % TOKENS.len()].as_bytes();
                v.splice(i..i, t.iter().copied());
            }
            Edit::Delete(at, len) => {
                let i = at % v.len();
                let end = (i + len % 16).min(v.len());
                v.drain(i..end);
            }
            Edit::Length(at, value) => {
                // Most often at the start, where safetensors keeps its header's length.
                let i = if at % 2 == 0 { 0 } else { at % v.len() };
                let bytes = value.to_le_bytes();
                let end = (i + 8).min(v.len());
                v[i..end].copy_from_slice(&bytes[..end - i]);
            }
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (
            any::<usize>(),
            prop_oneof![any::<u8>(), Just(b'"'), Just(b','), Just(b'-'), Just(b'9'), Just(b']')]
        )
            .prop_map(|(a, b)| Edit::Set(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, l)| Edit::Delete(a, l)),
        (
            any::<usize>(),
            prop_oneof![any::<u64>(), Just(u64::MAX), Just(1 << 40), Just(0), Just(100_000_001)]
        )
            .prop_map(|(a, n)| Edit::Length(a, n)),
    ]
}

fn gt_json() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../retina-coco/tests/coco/edge_gt.json"
    ))
    .expect("edge_gt.json")
}

fn results_json() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../retina-coco/tests/coco/edge_results.json"
    ))
    .expect("edge_results.json")
}

/// Reads `bytes` as instances and as results (and evaluates what parses) under
/// `catch_unwind`: an error is fine, a panic is not.
fn read_coco(bytes: &[u8], gt: &Instances) -> std::result::Result<(), String> {
    let run = || {
        let _ = Instances::from_json(bytes, "fuzz");
        if let Ok(results) = coco::results_from_json(bytes, "fuzz")
            && coco::check_results(gt, &results, "fuzz").is_ok()
        {
            let _ = coco::evaluate(gt, &results);
        }
    };
    catch_unwind(AssertUnwindSafe(run)).map_err(|_| format!("panicked on {:?}", String::from_utf8_lossy(bytes)))
}

// --- COCO JSON -------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn coco_readers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let gt = Instances::from_json(&gt_json(), "edge_gt.json").unwrap();
        prop_assert!(read_coco(&bytes, &gt).is_ok());
    }

    #[test]
    fn coco_readers_never_panic_on_mutated_files(edits in proptest::collection::vec(edit(), 1..6), results in any::<bool>()) {
        let gt = Instances::from_json(&gt_json(), "edge_gt.json").unwrap();
        let source = if results { results_json() } else { gt_json() };
        let bytes = apply(&source, &edits);
        prop_assert!(read_coco(&bytes, &gt).is_ok());
    }
}

#[test]
fn coco_readers_refuse_bad_values_with_the_entry_named() {
    let gt = Instances::from_json(&gt_json(), "edge_gt.json").unwrap();
    for (json, needle) in [
        (
            r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}]"#,
            "results[0]",
        ),
        (
            r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1e999], "score": 0.5}]"#,
            "fuzz",
        ),
        (
            r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}]"#,
            "fuzz",
        ),
        (
            r#"[{"image_id": 1.5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
            "fuzz",
        ),
        (r#"{"images": []}"#, "fuzz"),
    ] {
        let err = coco::results_from_json(json.as_bytes(), "fuzz").unwrap_err();
        assert!(err.to_string().contains(needle), "{json}: {err}");
        assert!(read_coco(json.as_bytes(), &gt).is_ok());
    }
    let err = Instances::from_json(br#"{"images": [{"id": 1, "width": 1, "height": 1, "file_name": "a"}, {"id": 1, "width": 1, "height": 1, "file_name": "b"}], "annotations": [], "categories": []}"#, "dup").unwrap_err();
    assert!(err.to_string().contains("duplicate image id"), "{err}");
}

// --- Model files: config.json, weights, optimizer state ----------------------------------------

/// The network the committed seeds were written for.
fn tiny() -> RetinaNetConfig {
    RetinaNetConfig {
        input_size: 64,
        num_classes: 4,
        backbone_channels: [4, 4, 8, 8, 8],
        fpn_channels: 8,
        head_convs: 1,
        head_channels: 8,
        ..RetinaNetConfig::default()
    }
}

/// Writes the seeds of tests/seeds/ (run once with `RETINA_WRITE_SEEDS=1`; they are committed):
/// a tiny network's config, weights and optimizer state after two training steps, and a
/// synthetic scene as PNG and JPEG.
#[test]
fn seeds_are_valid_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seeds");
    if std::env::var_os("RETINA_WRITE_SEEDS").is_some() {
        let scratch = Scratch::new("seeds");
        let net = RetinaNet::new(tiny()).unwrap();
        let options = TrainOptions {
            steps: 2,
            batch: 1,
            ..TrainOptions::default()
        };
        let data = retina_wgpu::train::SyntheticData {
            config: retina_wgpu::data::SceneConfig {
                size: 64,
                ..Default::default()
            },
            seed: 1,
            normalize: coco::Normalize::IMAGENET,
        };
        let mut trainer = Trainer::new(CpuEngine::new(), net.clone(), &net.init(1), options).unwrap();
        for _ in 0..2 {
            trainer.step(&data, false).unwrap();
        }
        trainer.save(&scratch.0).unwrap();
        let paths = ModelDir(scratch.0.clone());
        std::fs::copy(paths.config(), dir.join("config.json")).unwrap();
        std::fs::copy(paths.weights(), dir.join("model.safetensors")).unwrap();
        std::fs::copy(paths.optimizer(), dir.join("optimizer.safetensors")).unwrap();
        let scene = retina_wgpu::data::SceneConfig {
            size: 48,
            ..Default::default()
        }
        .scene(5, 0)
        .unwrap();
        let image = image::RgbImage::from_raw(48, 48, scene.pixels).unwrap();
        image.save(dir.join("scene.png")).unwrap();
        image.save(dir.join("scene.jpg")).unwrap();
    }
    let (net, values) = checkpoint::load_model(&dir).unwrap();
    assert_eq!(net.config(), &tiny());
    assert_eq!(values.len(), net.params().len());
    let saved = retina_wgpu::train::saved_options(&dir).unwrap();
    let mut trainer = Trainer::new(CpuEngine::new(), net, &values, saved).unwrap();
    trainer.restore_optimizer(&dir).unwrap();
    assert_eq!(trainer.step_count(), 2);
    for name in ["scene.png", "scene.jpg"] {
        let sample = Sample::open(dir.join(name), 1, 64).unwrap();
        assert_eq!(sample.letterbox().width(), 48, "{name}");
    }
}

/// A mutated `config.json`: refused, or a network within the documented limits.
fn read_config(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut outcome = Ok(());
    no_panic("config.json", || {
        if let Ok(config) = serde_json::from_slice::<RetinaNetConfig>(bytes)
            && let Ok(net) = RetinaNet::new(config)
            && net.num_scalars() > MAX_PARAMETERS
        {
            outcome = Err(format!("accepted {} parameters", net.num_scalars()));
        }
    })?;
    outcome
}

/// Mutated weights read for the seed's network, as bytes and as a model directory's file.
fn read_weights(bytes: &[u8]) -> std::result::Result<(), String> {
    let net = RetinaNet::new(tiny()).unwrap();
    let mut outcome = Ok(());
    no_panic("model.safetensors", || {
        if let Ok(contents) = checkpoint::from_safetensors(&net, bytes, "fuzz") {
            let lens: Vec<usize> = contents.values.iter().map(Vec::len).collect();
            let want: Vec<usize> = net.params().iter().map(|p| p.shape.len()).collect();
            if lens != want {
                outcome = Err(format!("accepted tensors of {lens:?} values for {want:?}"));
            }
        }
    })?;
    outcome
}

/// A model directory whose optimizer state is `bytes`, resumed as `retina train --resume` does.
fn read_optimizer(bytes: &[u8]) -> std::result::Result<(), String> {
    let scratch = Scratch::new("optimizer");
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seeds");
    let paths = ModelDir(scratch.0.clone());
    std::fs::copy(seeds.join("config.json"), paths.config()).unwrap();
    std::fs::copy(seeds.join("model.safetensors"), paths.weights()).unwrap();
    std::fs::write(paths.optimizer(), bytes).unwrap();
    no_panic("optimizer.safetensors", || {
        let Ok(options) = retina_wgpu::train::saved_options(&scratch.0) else {
            return;
        };
        let (net, values) = checkpoint::load_model(&scratch.0).unwrap();
        if let Ok(mut trainer) = Trainer::new(CpuEngine::new(), net, &values, options) {
            let _ = trainer.restore_optimizer(&scratch.0);
        }
    })
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn model_configs_never_panic_or_exceed_the_limits(edits in proptest::collection::vec(edit(), 1..6)) {
        let bytes = apply(&seed("config.json"), &edits);
        prop_assert_eq!(read_config(&bytes), Ok(()));
    }

    #[test]
    fn weights_never_panic_or_load_the_wrong_shapes(edits in proptest::collection::vec(edit(), 1..6)) {
        let bytes = apply(&seed("model.safetensors"), &edits);
        prop_assert_eq!(read_weights(&bytes), Ok(()));
    }

    #[test]
    fn weights_of_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert_eq!(read_weights(&bytes), Ok(()));
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn optimizer_states_never_panic(edits in proptest::collection::vec(edit(), 1..6)) {
        let bytes = apply(&seed("optimizer.safetensors"), &edits);
        prop_assert_eq!(read_optimizer(&bytes), Ok(()));
    }
}

// --- Images -----------------------------------------------------------------------------------

/// A mutated image decoded as a dataset decodes it: refused, or within the documented limits.
fn read_image(bytes: &[u8], name: &str) -> std::result::Result<(), String> {
    let scratch = Scratch::new("image");
    let path = scratch.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    let mut outcome = Ok(());
    no_panic(name, || {
        if let Ok(sample) = Sample::open(&path, 1, 64) {
            let l = sample.letterbox();
            if l.width() > coco::MAX_IMAGE_SIDE
                || l.height() > coco::MAX_IMAGE_SIDE
                || l.width() == 0
                || l.height() == 0
            {
                outcome = Err(format!("accepted a {} x {} image", l.width(), l.height()));
            }
        }
    })?;
    outcome
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn images_never_panic_or_exceed_the_limits(edits in proptest::collection::vec(edit(), 1..6), jpeg in any::<bool>()) {
        let name = if jpeg { "scene.jpg" } else { "scene.png" };
        let bytes = apply(&seed(name), &edits);
        prop_assert_eq!(read_image(&bytes, name), Ok(()));
    }
}

// --- RetinaFace model files -------------------------------------------------------------------

/// A RetinaFace model of the committed configuration with tiny channel counts (weights of
/// zeros): every tensor of the real model, each a few bytes, so that mutations reach the
/// header's names and shapes as often as the data.
fn tiny_face_model() -> (Vec<u8>, Vec<u8>) {
    let config =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/retinaface-mobilenet0.25/config.json"))
            .unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let mut conv = |name: &str, out: usize, per_group: usize, k: usize| {
        shapes.push((format!("{name}.weight"), vec![out, per_group, k, k]));
        shapes.push((format!("{name}.bias"), vec![out]));
    };
    conv("body.stem", 2, 3, 3);
    for j in 0..13 {
        conv(&format!("body.blocks.{j}.dw"), 2, 1, 3);
        conv(&format!("body.blocks.{j}.pw"), 2, 2, 1);
    }
    for k in 1..=3 {
        conv(&format!("fpn.output{k}"), 4, 2, 1);
    }
    for k in 1..=2 {
        conv(&format!("fpn.merge{k}"), 4, 4, 3);
    }
    for k in 1..=3 {
        conv(&format!("ssh{k}.conv3x3"), 2, 4, 3);
        conv(&format!("ssh{k}.conv5x5_1"), 1, 4, 3);
        conv(&format!("ssh{k}.conv5x5_2"), 1, 1, 3);
        conv(&format!("ssh{k}.conv7x7_2"), 1, 1, 3);
        conv(&format!("ssh{k}.conv7x7_3"), 1, 1, 3);
    }
    for (head, values) in [("class_head", 4), ("bbox_head", 8), ("landmark_head", 20)] {
        for k in 0..3 {
            conv(&format!("{head}.{k}"), values, 4, 1);
        }
    }
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
        .collect();
    let views: Vec<_> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    (config, safetensors::serialize(views, None).unwrap())
}

/// A mutated face model: refused, or a network whose tensors have the sizes it names.
fn read_face_model(config: &[u8], weights: &[u8]) -> std::result::Result<(), String> {
    let mut outcome = Ok(());
    no_panic("RetinaFace model", || {
        if let Ok((net, values)) = retina_wgpu::model::RetinaFace::from_bytes(config, weights) {
            let lens: Vec<usize> = values.iter().map(Vec::len).collect();
            let want: Vec<usize> = net.params().iter().map(|p| p.shape.len()).collect();
            if lens != want {
                outcome = Err(format!("accepted tensors of {lens:?} values for {want:?}"));
            }
        }
    })?;
    outcome
}

#[test]
fn the_tiny_face_model_seed_loads() {
    let (config, weights) = tiny_face_model();
    let (net, _) = retina_wgpu::model::RetinaFace::from_bytes(&config, &weights).unwrap();
    assert_eq!(net.params().len(), 112);
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn face_model_weights_never_panic_or_load_the_wrong_shapes(edits in proptest::collection::vec(edit(), 1..6)) {
        let (config, weights) = tiny_face_model();
        prop_assert_eq!(read_face_model(&config, &apply(&weights, &edits)), Ok(()));
    }

    #[test]
    fn face_model_configs_never_panic(edits in proptest::collection::vec(edit(), 1..6)) {
        let (config, weights) = tiny_face_model();
        prop_assert_eq!(read_face_model(&apply(&config, &edits), &weights), Ok(()));
    }
}
