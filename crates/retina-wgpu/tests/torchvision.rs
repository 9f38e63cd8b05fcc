//! torchvision's RetinaNet (ResNet-50-FPN v1 and v2) against torchvision itself: the models of
//! scripts/torchvision_reference.py (`weights=None`, every state-dict tensor set by a formula
//! this file reproduces bit for bit, so no 150 MB model is committed), run by torchvision in
//! `eval()` on real photos (`photos/`) at min_size 256 / max_size 512; the vectors are its
//! detections (tests/golden/torchvision_retinanet.json). Here the same state dict goes through
//! the crate's loader (BatchNorm folded), transform, network and post-processing on both
//! backends: the same detections (labels equal, scores within 1e-4, boxes within 1e-2 px in the
//! original image). Also the new max-pool layer against PyTorch's `max_pool2d`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{f32s, golden, gpu};
use retina_wgpu::coco;
use retina_wgpu::model::torchvision::{TorchvisionConfig, TorchvisionRetinaNet, Variant};
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine, MaxPool2d, Shape};
use retina_wgpu::ops::postprocess::Detection;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

// The formula of scripts/torchvision_reference.py, value for value.

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(name: &str, n: usize) -> Vec<f32> {
    let seed = fnv1a64(name);
    (0..n as u64)
        .map(|i| (splitmix64(seed.wrapping_add(i)) >> 40) as f32 * (2.0 / 16_777_216.0) - 1.0)
        .collect()
}

fn formula(name: &str, shape: &[usize], file: &serde_json::Value, variant: &str) -> Vec<f32> {
    let u = uniform(name, shape.iter().product());
    let map = |a: f32, b: f32| u.iter().map(|&u| a + b * u).collect::<Vec<f32>>();
    if shape.len() == 4 {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        let gain = if name.ends_with("cls_logits.weight") {
            file["cls_gain"].as_f64().unwrap()
        } else {
            1.0
        };
        let s = (gain * (6.0 / fan_in).sqrt()) as f32;
        u.iter().map(|&u| u * s).collect()
    } else if name.ends_with("running_mean") {
        u.iter().map(|&u| 0.1 * u).collect()
    } else if name.ends_with("running_var") {
        map(0.75, 0.25)
    } else if name.ends_with("cls_logits.bias") {
        map(file["cls_bias"][variant].as_f64().unwrap() as f32, 0.5)
    } else if name.ends_with(".bn3.weight") || name.ends_with(".downsample.1.weight") {
        map(0.2, 0.1)
    } else if name.ends_with(".weight") {
        map(0.6, 0.2)
    } else {
        assert!(name.ends_with(".bias"), "no formula for {name}");
        u.iter().map(|&u| 0.1 * u).collect()
    }
}

/// The reference's model: the network from the state dict's shapes and its folded parameters.
fn model(
    file: &serde_json::Value,
    m: &serde_json::Value,
    sizes: (usize, usize),
) -> (TorchvisionRetinaNet, Vec<Vec<f32>>) {
    let variant = m["variant"].as_str().unwrap();
    let mut config = TorchvisionConfig::new(if variant == "v1" { Variant::V1 } else { Variant::V2 }, 91);
    (config.min_size, config.max_size) = sizes;
    let shapes: HashMap<String, Vec<usize>> = m["tensor_shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (t[0].as_str().unwrap().to_string(), shape)
        })
        .collect();
    assert_eq!(shapes.len(), m["tensors"].as_u64().unwrap() as usize);
    let net = TorchvisionRetinaNet::new(config, &|name| {
        shapes
            .get(name)
            .cloned()
            .ok_or_else(|| retina_wgpu::Error::invalid(format!("{name} missing")))
    })
    .unwrap();
    // The network reads every tensor of torchvision's state dict but BatchNorm's counters.
    let read: Vec<&str> = net.state().iter().map(|t| t.name.as_str()).collect();
    let mut expected: Vec<&str> = shapes
        .keys()
        .map(|k| k.as_str())
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    let mut sorted = read.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "{variant}: the tensors the network reads");
    let values: HashMap<String, Vec<f32>> = net
        .state()
        .iter()
        .map(|t| (t.name.clone(), formula(&t.name, &t.shape, file, variant)))
        .collect();
    let folded = net
        .fold(&|name| Ok(values.get(name).expect("every state tensor").as_slice()))
        .unwrap();
    (net, folded)
}

fn photo(name: &str) -> (Vec<u8>, usize, usize) {
    let rgb = coco::read_rgb(repo(&format!("photos/{name}"))).unwrap();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    (rgb.into_raw(), w, h)
}

/// Our detections against torchvision's: each detection of either list is matched with one of
/// the other (same label, score within 1e-4, box within 1e-2 px), except those within 1e-4 of
/// the score threshold, which may fall on either side of it.
fn compare(what: &str, ours: &[Detection], case: &serde_json::Value, threshold: f32) {
    let scores = f32s(&case["scores"]);
    let labels: Vec<u32> = case["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let boxes: Vec<[f32; 4]> = case["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let v = f32s(b);
            [v[0], v[1], v[2], v[3]]
        })
        .collect();
    assert!(!scores.is_empty(), "{what}: the reference has detections");
    let box_diff = |a: &[f32; 4], b: &[f32; 4]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let mut matched = vec![None; ours.len()];
    let mut used = vec![false; scores.len()];
    let mut worst = (0.0f32, 0.0f32);
    for (j, d) in ours.iter().enumerate() {
        let hit = (0..scores.len()).find(|&i| {
            !used[i]
                && labels[i] == d.class
                && (d.score - scores[i]).abs() <= 1e-4
                && box_diff(&d.bbox, &boxes[i]) <= 1e-2
        });
        if let Some(i) = hit {
            used[i] = true;
            matched[j] = Some(i);
            worst = (
                worst.0.max((d.score - scores[i]).abs()),
                worst.1.max(box_diff(&d.bbox, &boxes[i])),
            );
        }
    }
    let near = |s: f32| s < threshold + 1e-4;
    for (j, d) in ours.iter().enumerate() {
        assert!(
            matched[j].is_some() || near(d.score),
            "{what}: our detection {j} {d:?} is not in torchvision's list"
        );
    }
    for i in 0..scores.len() {
        assert!(
            used[i] || near(scores[i]),
            "{what}: torchvision's detection {i} (label {}, {:?}, score {}) is missing",
            labels[i],
            boxes[i],
            scores[i]
        );
    }
    // Matched detections come in the same order (both best first).
    let order: Vec<usize> = matched.iter().flatten().copied().collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{what}: the order differs: {order:?}"
    );
    eprintln!(
        "{what}: {} of {} detections match torchvision (worst score {:.1e}, box {:.1e} px)",
        order.len(),
        scores.len(),
        worst.0,
        worst.1
    );
}

/// Every case of the golden file's `set` (`models`: min_size 256, `small`: 96) on engine `e`.
fn check<E: Engine>(what: &str, e: &mut E, set: &str) {
    let file = golden("torchvision_retinanet.json");
    for m in file[set].as_array().unwrap() {
        let cases = m["cases"].as_array().unwrap();
        let size = |k: &str| cases[0][k].as_u64().unwrap() as usize;
        let (net, values) = model(&file, m, (size("min_size"), size("max_size")));
        let params = net.upload(e, &values).unwrap();
        let variant = m["variant"].as_str().unwrap();
        for case in cases {
            let name = case["photo"].as_str().unwrap();
            let (rgb, w, h) = photo(name);
            let image = net.transform(&rgb, w, h).unwrap();
            let resized: Vec<usize> = case["resized"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let padded: Vec<usize> = case["padded"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!([image.resized.0, image.resized.1], resized[..], "{name}: resized size");
            assert_eq!([image.padded.0, image.padded.1], padded[..], "{name}: padded size");
            let levels: Vec<(usize, usize)> = case["levels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| (l[0][0].as_u64().unwrap() as usize, l[0][1].as_u64().unwrap() as usize))
                .collect();
            assert_eq!(
                net.level_sizes(image.padded.0, image.padded.1).unwrap(),
                levels,
                "{name}: level sizes"
            );
            let found = net
                .detect(e, &params, &rgb, w, h, net.config().default_params())
                .unwrap();
            compare(
                &format!("{what} {variant} {name}"),
                &found,
                case,
                net.config().score_threshold,
            );
        }
    }
}

#[test]
fn torchvision_retinanet_matches_torchvision_on_the_cpu() {
    let mut e = CpuEngine::<f32>::new();
    check("cpu", &mut e, "models");
    check("cpu", &mut e, "small");
}

#[test]
fn torchvision_retinanet_matches_torchvision_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    check("gpu", &mut GpuEngine::new(&ctx).unwrap(), "small");
}

fn max_pool_case<E: Engine>(e: &mut E) {
    let file = golden("torchvision_retinanet.json");
    let v = &file["max_pool"];
    let dims: Vec<usize> = v["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let input = uniform("max_pool", dims.iter().product());
    let x = e
        .tensor(Shape::new(dims[0], dims[1], dims[2], dims[3]), &input)
        .unwrap();
    let pool = MaxPool2d {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let y = e.max_pool2d(&pool, &x).unwrap();
    let out: Vec<usize> = v["output_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let s = E::shape(&y);
    assert_eq!([s.n, s.c, s.h, s.w], out[..]);
    // A maximum is one of the inputs: exact.
    assert_eq!(e.read(&y).unwrap(), f32s(&v["output"]));
}

#[test]
fn max_pool_matches_pytorch() {
    max_pool_case(&mut CpuEngine::<f32>::new());
    if let Some(ctx) = gpu() {
        max_pool_case(&mut GpuEngine::new(&ctx).unwrap());
    }
}

#[test]
fn max_pool_refuses_bad_windows() {
    let mut e = CpuEngine::<f32>::new();
    let x = e.tensor(Shape::new(1, 1, 2, 2), &[1.0, 2.0, 3.0, 4.0]).unwrap();
    for (kernel, stride, padding) in [(0, 1, 0), (3, 0, 1), (3, 1, 2), (5, 1, 0)] {
        let pool = MaxPool2d {
            kernel,
            stride,
            padding,
        };
        assert!(e.max_pool2d(&pool, &x).is_err(), "{pool:?} on 2x2");
    }
}
