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

use common::tv_formula::{Tensor, compare, formula, model_tensors, uniform};
use common::{f32s, golden, gpu};
use retina_wgpu::coco;
use retina_wgpu::model::PreparedTorchvision;
use retina_wgpu::model::torchvision::{TorchvisionConfig, TorchvisionRetinaNet, Variant};
use retina_wgpu::nn::{CpuEngine, Engine, GpuEngine, MaxPool2d, Shape};
use retina_wgpu::ops::postprocess::Detection;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
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

/// Runs one model on one RGB image.
type Run = Box<dyn FnMut(&[u8], usize, usize) -> Vec<Detection>>;

/// Every case of the golden file's `set` (`models`: min_size 256, `small`: 64) through the
/// detector `make` builds for each model.
fn check(what: &str, set: &str, variants: &[&str], mut make: impl FnMut(&TorchvisionRetinaNet, &[Vec<f32>]) -> Run) {
    let file = golden("torchvision_retinanet.json");
    for m in file[set].as_array().unwrap() {
        if !variants.contains(&m["variant"].as_str().unwrap()) {
            continue;
        }
        let cases = m["cases"].as_array().unwrap();
        let size = |k: &str| cases[0][k].as_u64().unwrap() as usize;
        let (net, values) = model(&file, m, (size("min_size"), size("max_size")));
        let mut run = make(&net, &values);
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
            let found = run(&rgb, w, h);
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
    for set in ["models", "small"] {
        check("cpu", set, &["v1", "v2"], |net, values| {
            let mut e = CpuEngine::<f32>::new();
            let params = net.upload(&mut e, values).unwrap();
            let net = net.clone();
            Box::new(move |rgb, w, h| {
                net.detect(&mut e, &params, rgb, w, h, net.config().default_params())
                    .unwrap()
            })
        });
    }
}

/// The whole path on the device: the transform (from a texture), the network and the
/// post-processing, one readback. v2 only, for CI time (15 s a model on lavapipe even at
/// min_size 64): v1 differs in its heads (convolutions with bias and ReLU, no GroupNorm) and in
/// where P6 starts, layers the v2 path and the CPU test exercise; `RETINA_TV_GPU_V1=1` adds it.
#[test]
fn torchvision_retinanet_matches_torchvision_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    let variants: &[&str] = if std::env::var_os("RETINA_TV_GPU_V1").is_some() {
        &["v1", "v2"]
    } else {
        &["v2"]
    };
    check("gpu", "small", variants, |net, values| {
        let mut prepared = PreparedTorchvision::new(&ctx, net.clone(), values).unwrap();
        Box::new(move |rgb, w, h| prepared.detect(rgb, w, h).unwrap())
    });
}

/// Two photos of different sizes in one call, as torchvision batches them (padded to one
/// canvas): each image's detections are torchvision's for that batch.
#[test]
fn a_batch_of_photos_matches_torchvision() {
    let file = golden("torchvision_retinanet.json");
    let b = &file["batch"];
    let m = file["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["variant"] == b["variant"])
        .unwrap();
    let case0 = &m["cases"][0];
    let size = |k: &str| case0[k].as_u64().unwrap() as usize;
    let (net, values) = model(&file, m, (size("min_size"), size("max_size")));
    let mut e = CpuEngine::<f32>::new();
    let params = net.upload(&mut e, &values).unwrap();
    let photos: Vec<(Vec<u8>, usize, usize)> = b["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| photo(p.as_str().unwrap()))
        .collect();
    let images: Vec<(&[u8], usize, usize)> = photos.iter().map(|(rgb, w, h)| (rgb.as_slice(), *w, *h)).collect();
    let found = net
        .detect_batch(&mut e, &params, &images, net.config().default_params())
        .unwrap();
    assert_eq!(found.len(), images.len());
    for (dets, case) in found.iter().zip(b["cases"].as_array().unwrap()) {
        compare(
            &format!("batch {}", case["photo"]),
            dets,
            case,
            net.config().score_threshold,
        );
    }
    assert!(
        net.detect_batch(&mut e, &params, &[], net.config().default_params())
            .unwrap()
            .is_empty()
    );
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

/// A state dict as `safetensors.torch.save_file(model.state_dict())` writes it: every tensor of
/// the v2 model (formula values, 2 classes: a user's own model) and BatchNorm's int64 counters.
fn state_dict_file(edit: impl Fn(&mut Vec<Tensor>)) -> (Vec<u8>, Vec<u8>) {
    let file = golden("torchvision_retinanet.json");
    let m = &file["models"][1];
    assert_eq!(m["variant"], "v2");
    let mut tensors = model_tensors(&file, m);
    for (name, shape, values) in tensors.iter_mut() {
        if name.starts_with("head.classification_head.cls_logits") {
            // 2 classes x 9 anchors.
            shape[0] = 18;
            *values = formula(name, shape, &file, "v2");
        }
    }
    edit(&mut tensors);
    let counters: Vec<String> = tensors
        .iter()
        .filter(|t| t.0.ends_with(".running_var"))
        .map(|t| t.0.replace(".running_var", ".num_batches_tracked"))
        .collect();
    let zero = [0u8; 8];
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| bytemuck::cast_slice(&t.2).to_vec()).collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            (
                t.0.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.1.clone(), b).unwrap(),
            )
        })
        .collect();
    for c in &counters {
        views.push((
            c.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &zero).unwrap(),
        ));
    }
    let mut config = TorchvisionConfig::new(Variant::V2, 2);
    config.categories = vec!["__background__".into(), "widget".into()];
    (
        serde_json::to_vec(&config).unwrap(),
        safetensors::serialize(views, None).unwrap(),
    )
}

#[test]
fn a_saved_state_dict_loads_as_it_is() {
    let (config, weights) = state_dict_file(|_| {});
    let (net, values) = TorchvisionRetinaNet::from_bytes(&config, &weights).unwrap();
    assert_eq!(net.config().num_classes, 2);
    assert_eq!(net.config().category_name(1), "widget");
    // The same parameters as folding the formula's values directly.
    let file = golden("torchvision_retinanet.json");
    let direct: HashMap<String, Vec<f32>> = net
        .state()
        .iter()
        .map(|t| (t.name.clone(), formula(&t.name, &t.shape, &file, "v2")))
        .collect();
    let folded = net.fold(&|name| Ok(direct[name].as_slice())).unwrap();
    assert_eq!(values, folded);
    // From a directory too.
    let dir = std::env::temp_dir().join(format!("tv-retinanet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    let (loaded, loaded_values) = TorchvisionRetinaNet::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.params().len(), net.params().len());
    assert_eq!(loaded_values, values);
    // BatchNorm folding: one output channel of the stem by hand.
    let w = &direct["backbone.body.conv1.weight"];
    let (g, b) = (
        direct["backbone.body.bn1.weight"][5],
        direct["backbone.body.bn1.bias"][5],
    );
    let (m, v) = (
        direct["backbone.body.bn1.running_mean"][5],
        direct["backbone.body.bn1.running_var"][5],
    );
    let s = f64::from(g) / (f64::from(v) + 1e-5).sqrt();
    assert_eq!(values[0][5 * 147 + 7], (f64::from(w[5 * 147 + 7]) * s) as f32);
    assert_eq!(values[1][5], (f64::from(b) - f64::from(m) * s) as f32);
}

#[test]
fn wrong_state_dicts_are_refused_with_the_tensor_named() {
    let err = |edit: &dyn Fn(&mut Vec<Tensor>)| {
        let (config, weights) = state_dict_file(edit);
        TorchvisionRetinaNet::from_bytes(&config, &weights)
            .unwrap_err()
            .to_string()
    };
    let missing = err(&|t| t.retain(|t| t.0 != "backbone.body.layer2.1.bn2.running_var"));
    assert!(missing.contains("backbone.body.layer2.1.bn2.running_var"), "{missing}");
    let extra = err(&|t| t.push(("rpn.head.conv.0.0.weight".into(), vec![1], vec![0.0])));
    assert!(
        extra.contains("rpn.head.conv.0.0.weight") && extra.contains("R-CNN"),
        "{extra}"
    );
    let deeper = err(&|t| t.push(("backbone.body.layer3.6.conv1.weight".into(), vec![1], vec![0.0])));
    assert!(deeper.contains("ResNet-101"), "{deeper}");
    // torchvision's version-1 key names (heads `conv.{2i}.weight`): the importer's job, and
    // said so.
    let old = err(&|t| {
        for t in t.iter_mut() {
            if t.0.starts_with("head.classification_head.conv.0.0.") {
                t.0 = t.0.replace("conv.0.0.", "conv.0.");
            }
        }
    });
    assert!(old.contains("import_torchvision.py"), "{old}");
    // A BatchNorm counter that is not one int64.
    let counter = err(&|t| {
        t.push((
            "backbone.fpn.layer_blocks.0.num_batches_tracked".into(),
            vec![3],
            vec![0.0; 3],
        ))
    });
    assert!(counter.contains("num_batches_tracked"), "{counter}");
    let shape = err(&|t| {
        let k = t
            .iter()
            .position(|t| t.0 == "backbone.fpn.layer_blocks.1.0.weight")
            .unwrap();
        t[k].1 = vec![256, 256, 1, 1];
        t[k].2.truncate(256 * 256);
    });
    assert!(shape.contains("backbone.fpn.layer_blocks.1.0.weight"), "{shape}");
    let nan = err(&|t| t[3].2[2] = f32::NAN);
    assert!(nan.contains("non-finite"), "{nan}");
    let negative_var = err(&|t| {
        let k = t.iter().position(|t| t.0 == "backbone.body.bn1.running_var").unwrap();
        t[k].2[0] = -1.0;
    });
    assert!(negative_var.contains("running_var"), "{negative_var}");
    // A v1 config with v2 weights: P6 takes 2048 channels, not 256.
    let (_, weights) = state_dict_file(|_| {});
    let mut v1 = TorchvisionConfig::new(Variant::V1, 2);
    v1.categories.clear();
    let e = TorchvisionRetinaNet::from_bytes(&serde_json::to_vec(&v1).unwrap(), &weights)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("head.classification_head.conv.0.0.bias") || e.contains("p6"),
        "{e}"
    );
    // Truncated files.
    for cut in [0, 7, 100, weights.len() / 2, weights.len() - 1] {
        let (config, _) = state_dict_file(|_| {});
        assert!(
            TorchvisionRetinaNet::from_bytes(&config, &weights[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn bad_images_and_settings_are_errors() {
    let file = golden("torchvision_retinanet.json");
    let (net, _) = model(&file, &file["small"][0], (64, 100));
    assert!(net.transform(&[], 0, 10).is_err());
    assert!(net.transform(&[0; 11], 2, 2).is_err(), "11 bytes are not 2 x 2 RGB");
    assert!(net.transform(&[0; 12], 2, 2).is_ok());
    // 60,000 x 1: the short side would scale to 0 rows.
    let long = vec![0u8; 3 * 60_000];
    let e = net.transform(&long, 60_000, 1).unwrap_err().to_string();
    assert!(e.contains("scales to"), "{e}");
    assert!(net.transform(&[0; 3], 100_000, 1).is_err());
    let mut p = net.config().default_params();
    p.score_threshold = f32::NAN;
    assert!(p.check().is_err());
    // 1 would pass no score at all, and the device's post-processing refuses it.
    p.score_threshold = 1.0;
    assert!(p.check().is_err());
    p = net.config().default_params();
    p.detections_per_image = 0;
    assert!(p.check().is_err());
    let mut c = net.config().clone();
    c.image_std = [0.0, 1.0, 1.0];
    assert!(c.validate().is_err());
    c = net.config().clone();
    c.min_size = 0;
    assert!(c.validate().is_err());
    // Padding past the input limit is refused before any work.
    c = net.config().clone();
    (c.min_size, c.max_size, c.size_divisible) = (4001, 4096, 1000);
    let padded = TorchvisionRetinaNet::new(c, &|name| {
        net.state()
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.clone())
            .ok_or_else(|| retina_wgpu::Error::invalid("missing"))
    })
    .unwrap();
    let e = padded.sizes(4001, 4001).unwrap_err().to_string();
    assert!(e.contains("padded"), "{e}");
}
