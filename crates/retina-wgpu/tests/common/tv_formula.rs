//! torchvision's RetinaNet test models (scripts/torchvision_reference.py): every tensor of the
//! state dict set by a formula this module reproduces bit for bit, and the comparison of
//! detections with torchvision's. Shared by tests/torchvision.rs and the command line's tests.

use retina_wgpu::Detection;

use super::f32s;

// The formula of scripts/torchvision_reference.py, value for value.

pub fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn uniform(name: &str, n: usize) -> Vec<f32> {
    let seed = fnv1a64(name);
    (0..n as u64)
        .map(|i| (splitmix64(seed.wrapping_add(i)) >> 40) as f32 * (2.0 / 16_777_216.0) - 1.0)
        .collect()
}

pub fn formula(name: &str, shape: &[usize], file: &serde_json::Value, variant: &str) -> Vec<f32> {
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

/// A state-dict tensor: name, shape, values.
pub type Tensor = (String, Vec<usize>, Vec<f32>);

/// The tensors of a golden model entry (`tensor_shapes`, BatchNorm's counters left out) with
/// the formula's values.
pub fn model_tensors(file: &serde_json::Value, m: &serde_json::Value) -> Vec<Tensor> {
    let variant = m["variant"].as_str().unwrap();
    m["tensor_shapes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t[0].as_str().unwrap().ends_with("num_batches_tracked"))
        .map(|t| {
            let name = t[0].as_str().unwrap().to_string();
            let shape: Vec<usize> = t[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let values = formula(&name, &shape, file, variant);
            (name, shape, values)
        })
        .collect()
}

/// A safetensors file of F32 `tensors` (the format written out by hand: an 8-byte header length,
/// the JSON header, the data).
pub fn safetensors_bytes(tensors: &[Tensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        let end = offset + 4 * values.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for (_, _, values) in tensors {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Our detections against torchvision's: each detection of either list is matched with one of
/// the other (same label, score within 1e-4, box within 1e-2 px), except those within 1e-4 of
/// the score threshold, which may fall on either side of it.
pub fn compare(what: &str, ours: &[Detection], case: &serde_json::Value, threshold: f32) {
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
    // Matched detections come in the same order (both best first), but for neighbours whose
    // scores are within the tolerance, which either side may order either way.
    let order: Vec<usize> = matched.iter().flatten().copied().collect();
    assert!(
        order
            .windows(2)
            .all(|w| w[0] < w[1] || (scores[w[0]] - scores[w[1]]).abs() <= 1e-4),
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
