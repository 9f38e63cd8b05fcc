//! IoU and the box coder: torchvision's vectors on both backends, GPU against CPU on random and
//! degenerate boxes, and bad input.

mod common;

use common::cases::random_boxes;
use common::{Rng, assert_close, backends, boxes, flat_f32, flatten, golden, gpu};
use retina_wgpu::{Backend, BoxCoder, Error, box_iou};

#[test]
fn iou_encode_decode_match_torchvision_on_both_backends() {
    let file = golden("box_ops.json");
    let (a, b) = (boxes(&file["boxes_a"]), boxes(&file["boxes_b"]));
    let coder = BoxCoder::default();
    assert!(
        (coder.clamp - file["clamp"].as_f64().unwrap() as f32).abs() < 1e-6,
        "default clamp is log(1000/16)"
    );
    for backend in backends() {
        let what = backend.kind();
        let iou = box_iou(&backend, &a, &b).unwrap();
        assert_close(&format!("{what} iou"), &iou, &flat_f32(&file["iou"]), 1e-5, 1e-6);
        let anchors = boxes(&file["anchors"]);
        let encoded = coder.encode(&backend, &boxes(&file["gt"]), &anchors).unwrap();
        assert_close(
            &format!("{what} encode"),
            &flatten(&encoded),
            &flat_f32(&file["encoded"]),
            1e-5,
            1e-5,
        );
        let decoded = coder.decode(&backend, &boxes(&file["deltas"]), &anchors).unwrap();
        assert_close(
            &format!("{what} decode"),
            &flatten(&decoded),
            &flat_f32(&file["decoded"]),
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn gpu_matches_cpu_and_zero_area_boxes_have_iou_zero() {
    let mut rng = Rng::new(12);
    let a = random_boxes(&mut rng, 1001, 7);
    let mut b = random_boxes(&mut rng, 67, 5);
    b.push(a[3]); // an exact duplicate: IoU 1
    let cpu = box_iou(&Backend::Cpu, &a, &b).unwrap();
    assert!(cpu.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
    for (i, ai) in a.iter().enumerate() {
        for (j, bj) in b.iter().enumerate() {
            let zero_area = (ai[2] - ai[0]) * (ai[3] - ai[1]) == 0.0 || (bj[2] - bj[0]) * (bj[3] - bj[1]) == 0.0;
            if zero_area {
                assert_eq!(cpu[i * b.len() + j], 0.0, "{ai:?} vs {bj:?}");
            }
        }
    }
    assert_eq!(cpu[3 * b.len() + 67], 1.0);
    let Some(ctx) = gpu() else { return };
    let gpu_iou = box_iou(&Backend::Gpu(ctx.clone()), &a, &b).unwrap();
    assert_close("iou", &gpu_iou, &cpu, 1e-6, 1e-7);

    let anchors = random_boxes(&mut rng, 5000, 0);
    let targets = random_boxes(&mut rng, 5000, 0);
    let coder = BoxCoder {
        weights: [10.0, 10.0, 5.0, 5.0],
        ..BoxCoder::default()
    };
    let c = coder.encode(&Backend::Cpu, &targets, &anchors).unwrap();
    let g = coder.encode(&Backend::Gpu(ctx.clone()), &targets, &anchors).unwrap();
    assert_close("encode", &flatten(&g), &flatten(&c), 1e-5, 1e-5);
    // Decoding the encoding gives the boxes back.
    let back = coder.decode(&Backend::Gpu(ctx.clone()), &g, &anchors).unwrap();
    assert_close("round trip", &flatten(&back), &flatten(&targets), 1e-5, 1e-2);
    let wild: Vec<[f32; 4]> = (0..5000)
        .map(|_| {
            [
                rng.normal(),
                rng.normal(),
                rng.range(-10.0, 10.0),
                rng.range(-10.0, 10.0),
            ]
        })
        .collect();
    let dc = coder.decode(&Backend::Cpu, &wild, &anchors).unwrap();
    let dg = coder.decode(&Backend::Gpu(ctx), &wild, &anchors).unwrap();
    assert!(
        dc.iter().flatten().all(|v| v.is_finite()),
        "the clamp keeps decoding finite"
    );
    assert_close("decode", &flatten(&dg), &flatten(&dc), 1e-5, 1e-3);
}

#[test]
fn bad_boxes_are_clear_errors() {
    let ok = [[0.0f32, 0.0, 10.0, 10.0]];
    for backend in backends() {
        for (bad, word) in [
            ([f32::NAN, 0.0, 1.0, 1.0], "not finite"),
            ([0.0, 0.0, f32::INFINITY, 1.0], "not finite"),
            ([5.0, 0.0, 1.0, 1.0], "x2 < x1"),
            ([0.0, 5.0, 1.0, 1.0], "x2 < x1"),
        ] {
            let err = box_iou(&backend, &ok, &[bad]).unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter(_)) && err.to_string().contains(word),
                "{err}"
            );
            assert!(err.to_string().contains("box 0"), "{err}");
        }
        let coder = BoxCoder::default();
        let err = coder.encode(&backend, &[[0.0, 0.0, 0.0, 5.0]], &ok).unwrap_err();
        assert!(err.to_string().contains("positive width"), "{err}");
        let err = coder.decode(&backend, &[[0.0; 4], [0.0; 4]], &ok).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        let err = BoxCoder {
            weights: [1.0, 0.0, 1.0, 1.0],
            ..coder
        }
        .decode(&backend, &[[0.0; 4]], &ok)
        .unwrap_err();
        assert!(err.to_string().contains("weights"), "{err}");
        assert_eq!(box_iou(&backend, &[], &ok).unwrap(), Vec::<f32>::new());
        // NaN deltas decode to NaN boxes, not an error.
        let nan = coder.decode(&backend, &[[f32::NAN, 0.0, 0.0, 0.0]], &ok).unwrap();
        assert!(nan[0][0].is_nan());
    }
}
