//! NMS: torchvision's vectors exactly (order included) on both backends, GPU against CPU for
//! every kind on random inputs up to 100,000 boxes, and the edge cases.

mod common;

use common::{Rng, flat_f32, golden, gpu, gpu_with, i32s};
use retina_wgpu::{Backend, Error, GpuOptions, LimitCaps, Nms, NmsKind, NmsOutput, batched_nms, nms};

fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    if let Some(ctx) = gpu() {
        out.push(Backend::Gpu(ctx));
    }
    out
}

fn boxes(v: &serde_json::Value) -> Vec<[f32; 4]> {
    flat_f32(v).chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    i32s(v).into_iter().map(|x| x as u32).collect()
}

#[test]
fn matches_torchvision_nms_and_batched_nms_exactly() {
    let file = golden("nms.json");
    for backend in backends() {
        for (i, case) in file["cases"].as_array().unwrap().iter().enumerate() {
            let b = boxes(&case["boxes"]);
            let s = flat_f32(&case["scores"]);
            let c = i32s(&case["classes"]);
            let t = case["iou_threshold"].as_f64().unwrap() as f32;
            assert_eq!(
                nms(&backend, &b, &s, t).unwrap(),
                u32s(&case["keep"]),
                "{} case {i}: keep",
                backend.kind()
            );
            assert_eq!(
                batched_nms(&backend, &b, &s, &c, t).unwrap(),
                u32s(&case["keep_batched"]),
                "{} case {i}: keep_batched",
                backend.kind()
            );
        }
    }
}

/// Random boxes in a 1000 x 1000 image, 10-100 px, clustered so that many overlap.
fn random_boxes(rng: &mut Rng, n: usize) -> Vec<[f32; 4]> {
    let centres: Vec<(f32, f32)> = (0..(n / 20).max(1))
        .map(|_| (rng.range(0.0, 1000.0), rng.range(0.0, 1000.0)))
        .collect();
    (0..n)
        .map(|_| {
            let (cx, cy) = centres[rng.below(centres.len() as u64) as usize];
            let (x, y) = (cx + 30.0 * rng.normal(), cy + 30.0 * rng.normal());
            let (w, h) = (rng.range(10.0, 100.0), rng.range(10.0, 100.0));
            [x, y, x + w, y + h]
        })
        .collect()
}

fn kinds() -> [Nms; 6] {
    let base = Nms::hard(0.5);
    [
        base,
        base.with_max_output(100),
        base.with_kind(NmsKind::Fast),
        base.with_kind(NmsKind::SoftLinear)
            .with_score_threshold(0.05)
            .with_max_output(300),
        base.with_kind(NmsKind::Matrix { gaussian_sigma: None })
            .with_score_threshold(0.05),
        base.with_kind(NmsKind::Matrix {
            gaussian_sigma: Some(2.0),
        })
        .with_score_threshold(0.05)
        .with_max_output(200),
    ]
}

fn assert_same(what: &str, g: &NmsOutput, c: &NmsOutput) {
    let first = g.keep.iter().zip(&c.keep).position(|(a, b)| a != b);
    assert!(
        g.keep == c.keep,
        "{what}: {} vs {} kept, first difference at {first:?}",
        g.keep.len(),
        c.keep.len()
    );
    for (a, b) in g.scores.iter().zip(&c.scores) {
        assert!((a - b).abs() <= 1e-5 * b.abs() + 1e-7, "{what}: score {a} vs {b}");
    }
}

#[test]
fn gpu_matches_cpu_for_every_kind_and_size() {
    let Some(ctx) = gpu() else { return };
    let gpu_backend = Backend::Gpu(ctx);
    let mut rng = Rng::new(5);
    for n in [1usize, 2, 31, 256, 257, 1000, 5000] {
        let b = random_boxes(&mut rng, n);
        let s: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let c: Vec<i32> = (0..n).map(|_| rng.below(80) as i32).collect();
        for kind in kinds() {
            for classes in [None, Some(&c[..])] {
                let what = format!("n {n} {kind:?} classes {}", classes.is_some());
                let g = kind.run(&gpu_backend, &b, &s, classes).unwrap();
                let cpu = kind.run(&Backend::Cpu, &b, &s, classes).unwrap();
                assert_same(&what, &g, &cpu);
            }
        }
    }
}

#[test]
fn greedy_nms_up_to_100k_boxes_matches_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(6);
    // 100k boxes take ~20 s on lavapipe (the bitmask is n^2 / 2 IoUs), so the class-aware run
    // is at 20k; both cross several mask passes.
    for (n, with_classes) in [(20_000usize, true), (100_000, false)] {
        let b = random_boxes(&mut rng, n);
        let s: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let c: Vec<i32> = (0..n).map(|_| rng.below(80) as i32).collect();
        let classes = with_classes.then_some(&c[..]);
        let g = Nms::hard(0.5).run(&Backend::Gpu(ctx.clone()), &b, &s, classes).unwrap();
        let cpu = Nms::hard(0.5).run(&Backend::Cpu, &b, &s, classes).unwrap();
        assert_same(&format!("{n} boxes, classes {with_classes}"), &g, &cpu);
    }
}

#[test]
fn row_passes_under_a_small_binding_give_the_same_keep_list() {
    let caps = LimitCaps {
        max_storage_binding: Some(256 * 1024),
        max_workgroups_per_dim: Some(7),
        max_buffer_size: None,
    };
    let Some(small) = gpu_with(GpuOptions {
        caps,
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(7);
    // 5000 boxes: a 8192-slot region, 1 KiB per mask row, 256 rows per pass: 32 passes.
    let b = random_boxes(&mut rng, 5000);
    let s: Vec<f32> = (0..5000).map(|_| rng.uniform()).collect();
    for kind in [Nms::hard(0.5), Nms::hard(0.3).with_max_output(700)] {
        let g = kind.run(&Backend::Gpu(small.clone()), &b, &s, None).unwrap();
        let c = kind.run(&Backend::Cpu, &b, &s, None).unwrap();
        assert_same("row passes", &g, &c);
    }
}

#[test]
fn edge_cases_on_both_backends() {
    let square = [10.0f32, 10.0, 50.0, 50.0];
    for backend in backends() {
        let what = backend.kind();
        // Empty input.
        assert!(nms(&backend, &[], &[], 0.5).unwrap().is_empty());
        // All boxes identical: only the best survives; equal scores keep the lowest index.
        let same = vec![square; 50];
        let scores: Vec<f32> = (0..50).map(|i| if i == 17 { 0.9 } else { 0.5 }).collect();
        assert_eq!(nms(&backend, &same, &scores, 0.5).unwrap(), vec![17], "{what}");
        assert_eq!(
            nms(&backend, &same, &[0.5; 50], 0.5).unwrap(),
            vec![0],
            "{what}: ties go to the lower index"
        );
        // Threshold 1: IoU is never > 1, nothing is suppressed. Threshold 0: any overlap suppresses.
        assert_eq!(
            nms(&backend, &same, &[0.5; 50], 1.0).unwrap(),
            (0..50).collect::<Vec<u32>>(),
            "{what}"
        );
        let touching = [[0.0, 0.0, 10.0, 10.0], [9.0, 9.0, 20.0, 20.0], [10.0, 0.0, 20.0, 9.0]];
        assert_eq!(
            nms(&backend, &touching, &[0.9, 0.8, 0.7], 0.0).unwrap(),
            vec![0, 2],
            "{what}: threshold 0"
        );
        // Zero-area boxes have IoU 0: never suppressed, suppress nothing.
        let points = [[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]];
        assert_eq!(
            nms(&backend, &points, &[0.9, 0.8, 0.7], 0.1).unwrap(),
            vec![0, 1, 2],
            "{what}: zero area"
        );
        // NaN scores are never kept.
        let nan = nms(&backend, &[square, [100.0, 100.0, 120.0, 120.0]], &[f32::NAN, 0.3], 0.5).unwrap();
        assert_eq!(nan, vec![1], "{what}: NaN");
        // Classes separate identical boxes.
        assert_eq!(
            batched_nms(&backend, &[square, square], &[0.9, 0.8], &[1, 2], 0.5).unwrap(),
            vec![0, 1],
            "{what}"
        );
        // Bad input.
        for bad in [
            Nms::hard(1.5),
            Nms::hard(-0.1),
            Nms::hard(0.5).with_kind(NmsKind::SoftGaussian { sigma: 0.0 }),
        ] {
            assert!(matches!(
                bad.run(&backend, &[square], &[0.5], None).unwrap_err(),
                Error::InvalidParameter(_)
            ));
        }
        assert!(matches!(
            nms(&backend, &[square], &[0.5, 0.2], 0.5).unwrap_err(),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            nms(&backend, &[[5.0, 0.0, 1.0, 1.0]], &[0.5], 0.5).unwrap_err(),
            Error::InvalidParameter(_)
        ));
    }
}
