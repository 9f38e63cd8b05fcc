//! Detection post-processing: the CPU backend against an independent, torchvision-style
//! reference; the GPU against the CPU for every NMS kind; the edge cases.

mod common;

use common::cases::{Outputs, assert_same_detections, postprocess_kinds, postprocess_pair};
use common::{Rng, gpu, gpu_with};
use retina_wgpu::{Backend, BoxCoder, Detection, DetectionInput, Error, GpuOptions, Nms, NmsKind, PostProcess};

// ---- an independent reference: torchvision's postprocess_detections, written plainly ----

fn iou(a: [f32; 4], b: [f32; 4]) -> f64 {
    let (a, b) = (a.map(f64::from), b.map(f64::from));
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h;
    if union > 0.0 { w * h / union } else { 0.0 }
}

fn reference(pp: &PostProcess, b: &Outputs) -> Vec<Vec<Detection>> {
    let a = b.anchors.len();
    let coder = BoxCoder::default();
    (0..b.logits.len() / (a * b.k))
        .map(|image| {
            let mut cands: Vec<(f32, [f32; 4], u32)> = Vec::new();
            for level in b.offsets.windows(2) {
                let mut scored: Vec<(f32, usize)> = (level[0] * b.k..level[1] * b.k)
                    .map(|i| (1.0 / (1.0 + (-b.logits[image * a * b.k + i]).exp()), i))
                    .filter(|&(s, _)| s > pp.score_threshold)
                    .collect();
                scored.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
                scored.truncate(pp.topk_per_level);
                for (score, i) in scored {
                    let anchor = i / b.k;
                    let d = coder
                        .decode(&Backend::Cpu, &[b.deltas[image * a + anchor]], &[b.anchors[anchor]])
                        .unwrap()[0];
                    let s = b.size as f32;
                    let clipped = [
                        d[0].clamp(0.0, s),
                        d[1].clamp(0.0, s),
                        d[2].clamp(0.0, s),
                        d[3].clamp(0.0, s),
                    ];
                    cands.push((score, clipped, (i % b.k) as u32));
                }
            }
            cands.sort_by(|x, y| y.0.total_cmp(&x.0));
            let mut kept: Vec<(f32, [f32; 4], u32)> = Vec::new();
            for c in cands {
                if !kept
                    .iter()
                    .any(|k| k.2 == c.2 && iou(k.1, c.1) > f64::from(pp.nms.iou_threshold))
                {
                    kept.push(c);
                }
            }
            kept.truncate(pp.max_detections);
            kept.into_iter()
                .map(|(score, bbox, class)| Detection { bbox, score, class })
                .collect()
        })
        .collect()
}

#[test]
fn cpu_backend_matches_a_plain_torchvision_style_reference() {
    let mut rng = Rng::new(1);
    let b = Outputs::clustered(&mut rng, 3, 256, 20);
    for pp in [
        PostProcess::default(),
        PostProcess {
            topk_per_level: 7,
            max_detections: 12,
            ..Default::default()
        },
        PostProcess {
            score_threshold: 0.5,
            nms: Nms::hard(0.3),
            ..Default::default()
        },
    ] {
        let got = pp.run(&Backend::Cpu, &b.input()).unwrap();
        assert!(
            got.iter().map(Vec::len).sum::<usize>() > 20,
            "the test batch should produce detections"
        );
        assert_same_detections(&format!("{pp:?}"), &got, &reference(&pp, &b));
    }
}

#[test]
fn gpu_matches_cpu_for_every_nms_kind() {
    let Some(ctx) = gpu() else { return };
    let gpu_backend = Backend::Gpu(ctx);
    let mut rng = Rng::new(2);
    let b = Outputs::clustered(&mut rng, 4, 320, 30);
    let kinds = postprocess_kinds().into_iter().chain([NmsKind::Matrix {
        gaussian_sigma: Some(2.0),
    }]);
    for kind in kinds {
        for pp in postprocess_pair(kind) {
            let g = pp.run(&gpu_backend, &b.input()).unwrap();
            let c = pp.run(&Backend::Cpu, &b.input()).unwrap();
            assert_same_detections(&format!("{kind:?} topk {}", pp.topk_per_level), &g, &c);
        }
    }
}

/// The GPU's dense NMS mask runs on a grid sized on the device from each batch's candidate
/// counts (`nms_mask_args.wgsl`, indirect dispatches), band by band of 1,024 rows: an image
/// whose candidates fill five bands (every logit above the threshold: 1,000 per level), one
/// with none and one like a trained net's, in one batch, against the CPU and the reference.
#[test]
fn gpu_nms_grid_follows_the_candidate_counts_across_bands() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(11);
    let mut b = Outputs::clustered(&mut rng, 3, 256, 3);
    let per_image = b.anchors.len() * b.k;
    for (i, logit) in b.logits[..per_image].iter_mut().enumerate() {
        *logit = -1.0 + 5.0 * ((i * 7919) % 1000) as f32 / 1000.0;
    }
    b.logits[per_image..2 * per_image].fill(-10.0);
    let pp = PostProcess {
        max_detections: 3000,
        ..Default::default()
    };
    let g = pp.run(&Backend::Gpu(ctx), &b.input()).unwrap();
    let c = pp.run(&Backend::Cpu, &b.input()).unwrap();
    assert!(g[0].len() > 1024, "image 0 keeps more than a band: {}", g[0].len());
    assert!(g[1].is_empty() && !g[2].is_empty());
    assert_same_detections("three images, 5 bands / none / clustered", &g, &c);
    assert_same_detections("against the reference", &c, &reference(&pp, &b));
}

/// A profile (`GpuContext::start_profile`) times each dispatch of the post-processing once (the
/// context's dispatch counters are the other count), within the host's clock around the
/// submission, and changes nothing of the result. On a context of its own: a profile is
/// context-wide, and the other tests' dispatches must not enter it.
#[test]
fn a_profile_times_every_dispatch_and_changes_no_result() {
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    assert!(
        matches!(ctx.finish_profile(), Err(Error::InvalidParameter(m)) if m.contains("no profile is open")),
        "finishing a profile never started is an error"
    );
    if !ctx.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        assert!(matches!(ctx.start_profile(), Err(Error::InvalidParameter(m)) if m.contains("TIMESTAMP_QUERY")));
        return;
    }
    let backend = Backend::Gpu(ctx.clone());
    let b = Outputs::clustered(&mut Rng::new(7), 2, 256, 20);
    let pp = PostProcess::default();
    let plain = pp.run(&backend, &b.input()).unwrap();
    let dispatches = |ctx: &retina_wgpu::GpuContext| -> Vec<(&'static str, u64)> {
        ctx.kernel_work().into_iter().map(|(k, w)| (k, w.dispatches)).collect()
    };
    let before = dispatches(&ctx);
    ctx.start_profile().unwrap();
    assert!(ctx.start_profile().is_err(), "one profile at a time");
    let start = std::time::Instant::now();
    let profiled = pp.run(&backend, &b.input()).unwrap();
    let wall = start.elapsed().as_secs_f64();
    let profile = ctx.finish_profile().unwrap();
    assert_same_detections("profiled", &profiled, &plain);
    assert_eq!(profile.untimed, 0);
    let mut expected: Vec<(&str, u64)> = dispatches(&ctx)
        .into_iter()
        .zip(before)
        .map(|((k, after), (_, before))| (k, after - before))
        .filter(|&(_, n)| n > 0)
        .collect();
    let mut timed: Vec<(&str, u64)> = profile.kernels.iter().map(|k| (k.kernel, k.dispatches)).collect();
    expected.sort();
    timed.sort();
    assert!(
        expected.len() > 5,
        "the post-processing dispatches several kernels: {expected:?}"
    );
    assert_eq!(timed, expected, "one timed pass per dispatch");
    let total = profile.total_seconds();
    assert!(
        total > 0.0 && total <= wall,
        "device time {total} s: above zero, within the {wall} s the host waited"
    );
    assert!(ctx.finish_profile().is_err(), "a profile closes once");
}

#[test]
fn edge_cases_and_bad_input() {
    let mut rng = Rng::new(3);
    let mut b = Outputs::clustered(&mut rng, 2, 128, 4);
    let backends = common::backends();
    for backend in &backends {
        // Nothing above the threshold: no detections, not an error.
        let none = PostProcess {
            score_threshold: 0.999,
            ..Default::default()
        }
        .run(backend, &b.input())
        .unwrap();
        assert!(none.iter().all(Vec::is_empty));
        // Bad parameters and shapes.
        for pp in [
            PostProcess {
                score_threshold: 1.0,
                ..Default::default()
            },
            PostProcess {
                topk_per_level: 0,
                ..Default::default()
            },
            PostProcess {
                max_detections: 0,
                ..Default::default()
            },
            PostProcess {
                nms: Nms::hard(2.0),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(pp.run(backend, &b.input()).unwrap_err(), Error::InvalidParameter(_)),
                "{pp:?}"
            );
        }
        let short = DetectionInput {
            logits: &b.logits[1..],
            ..b.input()
        };
        assert!(matches!(
            PostProcess::default().run(backend, &short).unwrap_err(),
            Error::ShapeMismatch { .. }
        ));
        let bad_offsets = [0, 5];
        let offsets = DetectionInput {
            level_offsets: &bad_offsets,
            ..b.input()
        };
        assert!(matches!(
            PostProcess::default().run(backend, &offsets).unwrap_err(),
            Error::ShapeMismatch { .. }
        ));
    }
    // NaN logits are never detections; the rest is unaffected.
    let clean = PostProcess::default().run(&Backend::Cpu, &b.input()).unwrap();
    let a = b.anchors.len();
    for i in (0..2 * a * 4).step_by(7) {
        if b.logits[i] < -3.0 {
            b.logits[i] = f32::NAN;
        }
    }
    for backend in &backends {
        let with_nan = PostProcess::default().run(backend, &b.input()).unwrap();
        assert_same_detections(&format!("{} NaN logits", backend.kind()), &with_nan, &clean);
    }
}
