//! Target assignment: torchvision's Matcher labels exactly, GPU = CPU on random batches with
//! hard cases, chunked dispatch under small limits, and bad input.

mod common;

use common::cases::{MatcherCase, assert_targets_agree, assigner, ground_truths, hard_batch};
use common::{Rng, backends, golden, gpu, gpu_with};
use retina_wgpu::{AnchorConfig, Backend, Error, GpuOptions, GroundTruth, LimitCaps, Matcher, TargetAssigner};

#[test]
fn matches_torchvision_matcher_exactly_on_both_backends() {
    let cases = MatcherCase::all(&golden("matcher.json"));
    for backend in backends() {
        for (i, case) in cases.iter().enumerate() {
            let out = case.assigner().assign(&backend, &case.anchors, &case.images()).unwrap();
            case.check(&format!("{} case {i}", backend.kind()), &out);
        }
    }
}

#[test]
fn gpu_matches_cpu_on_batches_with_hard_cases() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(31);
    let size = 320;
    let anchors = AnchorConfig::retinanet().generate(&Backend::Cpu, size, size).unwrap();
    let batch = hard_batch(&mut rng, size as f32);
    let images = ground_truths(&batch);
    for allow in [true, false] {
        let assigner = assigner(7, allow);
        let c = assigner.assign(&Backend::Cpu, &anchors, &images).unwrap();
        let g = assigner.assign(&Backend::Gpu(ctx.clone()), &anchors, &images).unwrap();
        assert_targets_agree(&format!("low quality {allow}"), &g, &c);

        let a = anchors.len();
        // Image 0 has no boxes: every anchor is background.
        assert!(c.matches[..a].iter().all(|&m| m == -1) && c.positives[0] == 0);
        // Labels are the matched boxes' classes; positives carry targets, others zeros.
        for (i, (gt, classes)) in batch.iter().enumerate() {
            for k in i * a..(i + 1) * a {
                let m = c.matches[k];
                if m >= 0 {
                    assert_eq!(c.labels[k], classes[m as usize]);
                    assert!(
                        gt[m as usize][2] > gt[m as usize][0],
                        "a zero-area box is never matched"
                    );
                } else {
                    assert_eq!((c.labels[k], c.box_targets[k]), (m, [0.0; 4]));
                }
            }
        }
        // Ties between identical boxes go to the first.
        let third = &c.matches[3 * a..4 * a];
        assert!(!third.contains(&1), "box 1 duplicates box 0 and never wins");
        if allow {
            assert!(
                third.contains(&5),
                "the box between anchors keeps its highest-IoU anchors"
            );
            // All anchors tied at box 5's highest IoU are matched to it (or to a better box).
            let gt5 = batch[3].0[5];
            let ious: Vec<f32> = anchors
                .iter()
                .map(|&an| retina_wgpu::cpu::boxes::iou(an, gt5))
                .collect();
            let best = ious.iter().copied().fold(0.0f32, f32::max);
            let tied: Vec<usize> = (0..a).filter(|&k| ious[k] == best).collect();
            assert!(tied.len() > 1, "the test box should tie between several anchors");
            assert!(tied.iter().all(|&k| third[k] >= 0), "every tied anchor is a positive");
        }
    }
}

#[test]
fn chunked_dispatch_under_small_limits_gives_the_same_targets() {
    let caps = LimitCaps {
        max_storage_binding: Some(64 * 1024),
        max_workgroups_per_dim: Some(3),
        max_buffer_size: None,
    };
    let Some(small) = gpu_with(GpuOptions {
        caps,
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(8);
    let size = 256; // 12276 anchors: 196 KB of targets per image, so images split into anchor ranges
    let anchors = AnchorConfig::retinanet().generate(&Backend::Cpu, size, size).unwrap();
    let batch = hard_batch(&mut rng, size as f32);
    let images = ground_truths(&batch);
    let assigner = TargetAssigner::new(7);
    let c = assigner.assign(&Backend::Cpu, &anchors, &images).unwrap();
    let g = assigner
        .assign(&Backend::Gpu(small.clone()), &anchors, &images)
        .unwrap();
    assert_targets_agree("anchor-range chunks", &g, &c);
    // Small images: several whole images per chunk, at unaligned offsets.
    let anchors = AnchorConfig::small().generate(&Backend::Cpu, 64, 64).unwrap();
    let c = assigner.assign(&Backend::Cpu, &anchors, &images).unwrap();
    let g = assigner.assign(&Backend::Gpu(small), &anchors, &images).unwrap();
    assert_targets_agree("image chunks", &g, &c);
}

#[test]
fn bad_ground_truth_and_thresholds_are_clear_errors() {
    let anchors = AnchorConfig::small().generate(&Backend::Cpu, 64, 64).unwrap();
    let good = [[0.0f32, 0.0, 10.0, 10.0]];
    for backend in backends() {
        let assigner = TargetAssigner::new(3);
        type Case<'a> = (&'a [[f32; 4]], &'a [i32], &'a str);
        let cases: [Case; 5] = [
            (&[[0.0, f32::NAN, 1.0, 1.0]], &[0], "image 1, box 0"),
            (
                &[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 1.0, 9.0]],
                &[0, 1],
                "image 1, box 1: [5.0, 0.0, 1.0, 9.0] has x2 < x1",
            ),
            (&[[0.0, 0.0, f32::INFINITY, 10.0]], &[0], "not finite"),
            (&good, &[3], "class 3 outside [0, 3)"),
            (&good, &[0, 1], "1 boxes but 2 classes"),
        ];
        for (boxes, classes, words) in cases {
            let images = [
                GroundTruth {
                    boxes: &good,
                    classes: &[0],
                },
                GroundTruth { boxes, classes },
            ];
            let err = assigner.assign(&backend, &anchors, &images).unwrap_err();
            assert!(err.to_string().contains(words), "{}: {err}", backend.kind());
        }
        for (low, high) in [(0.6, 0.5), (-0.1, 0.5), (0.4, 1.5), (f32::NAN, 0.5)] {
            let bad = TargetAssigner {
                matcher: Matcher {
                    low,
                    high,
                    allow_low_quality_matches: true,
                },
                ..assigner
            };
            let err = bad.assign(&backend, &anchors, &[]).unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter(_)) && err.to_string().contains("0 <= low <= high <= 1"),
                "{err}"
            );
        }
        // An empty batch and an image without boxes are fine.
        assert!(assigner.assign(&backend, &anchors, &[]).unwrap().matches.is_empty());
        let out = assigner
            .assign(
                &backend,
                &anchors,
                &[GroundTruth {
                    boxes: &[],
                    classes: &[],
                }],
            )
            .unwrap();
        assert!(out.labels.iter().all(|&l| l == -1));
    }
}
