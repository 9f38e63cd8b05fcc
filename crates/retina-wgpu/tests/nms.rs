//! NMS: torchvision's vectors exactly (order included) on both backends, GPU against CPU for
//! every kind on random inputs up to 50,000 boxes, and the edge cases.

mod common;

use common::cases::{NmsCase, assert_same_nms, nms_kinds, nms_problem};
use common::{Rng, backends, golden, gpu, gpu_with};
use retina_wgpu::{Backend, Error, GpuOptions, LimitCaps, Nms, NmsKind, batched_nms, nms};

#[test]
fn matches_torchvision_nms_and_batched_nms_exactly() {
    let cases = NmsCase::all(&golden("nms.json"));
    for backend in backends() {
        for (i, case) in cases.iter().enumerate() {
            let (b, s, t) = (&case.boxes, &case.scores, case.iou_threshold);
            case.check(
                &format!("{} case {i}", backend.kind()),
                &nms(&backend, b, s, t).unwrap(),
                &batched_nms(&backend, b, s, &case.classes, t).unwrap(),
            );
        }
    }
}

#[test]
fn gpu_matches_cpu_for_every_kind_and_size() {
    let Some(ctx) = gpu() else { return };
    let gpu_backend = Backend::Gpu(ctx);
    let mut rng = Rng::new(5);
    for n in [1usize, 2, 31, 256, 257, 1000, 5000] {
        let (b, s, c) = nms_problem(&mut rng, n);
        for kind in nms_kinds() {
            for classes in [None, Some(&c[..])] {
                let what = format!("n {n} {kind:?} classes {}", classes.is_some());
                let g = kind.run(&gpu_backend, &b, &s, classes).unwrap();
                let cpu = kind.run(&Backend::Cpu, &b, &s, classes).unwrap();
                assert_same_nms(&what, &g, &cpu);
            }
        }
    }
}

#[test]
fn greedy_nms_up_to_50k_boxes_matches_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(6);
    // Up to n^2 / 2 IoUs: 100k boxes took 20 s on lavapipe on one day and 110 s on another, so
    // the largest run is 50k (a 65,536-slot region: 8 KiB mask rows in bands of 1,024 rows: 49
    // passes, each skipping the rows and columns the earlier ones removed; clustered boxes, so
    // most are) and the class-aware one 20k.
    for (n, with_classes) in [(20_000usize, true), (50_000, false)] {
        let (b, s, c) = nms_problem(&mut rng, n);
        let classes = with_classes.then_some(&c[..]);
        let g = Nms::hard(0.5).run(&Backend::Gpu(ctx.clone()), &b, &s, classes).unwrap();
        let cpu = Nms::hard(0.5).run(&Backend::Cpu, &b, &s, classes).unwrap();
        assert_same_nms(&format!("{n} boxes, classes {with_classes}"), &g, &cpu);
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
    let (b, s, _) = nms_problem(&mut rng, 5000);
    for kind in [Nms::hard(0.5), Nms::hard(0.3).with_max_output(700)] {
        let g = kind.run(&Backend::Gpu(small.clone()), &b, &s, None).unwrap();
        let c = kind.run(&Backend::Cpu, &b, &s, None).unwrap();
        assert_same_nms("row passes", &g, &c);
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

/// Greedy NMS on the device through `record_nms`, read back: (kept indices, their scores).
fn device_nms(
    ctx: &retina_wgpu::GpuContext,
    nms: &Nms,
    b: &[[f32; 4]],
    s: &[f32],
    c: Option<&[i32]>,
) -> (Vec<u32>, Vec<f32>) {
    let (boxes, scores) = (ctx.upload(b).unwrap(), ctx.upload(s).unwrap());
    let classes = c.map(|c| ctx.upload(c).unwrap());
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let (keep, keep_scores, count) = ctx
        .record_nms(&mut encoder, nms, &boxes, &scores, classes.as_ref())
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    let n = ctx.download(&count).unwrap()[0] as usize;
    let (mut keep, mut kept_scores) = (ctx.download(&keep).unwrap(), ctx.download(&keep_scores).unwrap());
    keep.truncate(n);
    kept_scores.truncate(n);
    (keep, kept_scores)
}

#[test]
fn large_inputs_take_the_spatial_path_with_the_same_keep_list() {
    // From 2,048 slots the greedy mask is found from the boxes near each box (Z-order tiles
    // and their bounds) instead of from every later box: the cases where bounds could mislead
    // it, against the CPU twin. A pile of identical boxes (every tile overlaps every box),
    // zero-area boxes, touching boxes at threshold 0, threshold 1, tied scores, classes.
    let Some(ctx) = gpu() else { return };
    let gpu_backend = Backend::Gpu(ctx.clone());
    let mut rng = Rng::new(8);
    let (mut b, mut s, mut c) = nms_problem(&mut rng, 3000);
    for i in 0..600i32 {
        b.push([400.0, 400.0, 450.0, 460.0]);
        s.push(if i % 7 == 0 { 0.5 } else { rng.uniform() });
        c.push(i % 3);
    }
    for i in 0..100 {
        let x = 10.0 * i as f32;
        b.push([x, 990.0, x + 10.0, 1000.0]);
        b.push([x + 3.0, 995.0, x + 3.0, 995.0]);
        s.extend([0.25, 0.75]);
        c.extend([0, 0]);
    }
    for (threshold, classes) in [
        (0.5, None),
        (0.5, Some(&c[..])),
        (0.0, None),
        (1.0, None),
        (0.3, Some(&c[..])),
    ] {
        for kind in [Nms::hard(threshold), Nms::hard(threshold).with_max_output(250)] {
            let what = format!("{kind:?}, classes {}", classes.is_some());
            let g = kind.run(&gpu_backend, &b, &s, classes).unwrap();
            let cpu = kind.run(&Backend::Cpu, &b, &s, classes).unwrap();
            assert_same_nms(&what, &g, &cpu);
        }
    }
    // Boxes with a NaN coordinate (a decode's overflow on the device) suppress nothing and are
    // never suppressed: the same keep list as far-apart boxes in their place.
    let nan = f32::NAN;
    let (mut with_nan, mut apart) = (b.clone(), b.clone());
    for (k, i) in (0..b.len()).step_by(37).enumerate() {
        with_nan[i] = [b[i][0], nan, b[i][2], b[i][3]];
        let x = 1e5 + 100.0 * k as f32;
        apart[i] = [x, 0.0, x + 1.0, 1.0];
    }
    let nms = Nms::hard(0.5);
    let (keep, scores) = device_nms(&ctx, &nms, &with_nan, &s, None);
    let cpu = nms.run(&Backend::Cpu, &apart, &s, None).unwrap();
    assert_eq!(keep, cpu.keep, "NaN boxes");
    assert_eq!(scores, cpu.scores, "NaN boxes");

    // A lattice of 50 x 50 boxes, each overlapping its neighbours by half a pixel, at threshold
    // 0 (any overlap suppresses): most neighbours lie in other tiles and blocks, so a bounds
    // test that misses an overlap under a pixel keeps boxes the CPU twin suppresses.
    let (mut lattice, mut scores) = (Vec::new(), Vec::new());
    for y in 0..50 {
        for x in 0..50 {
            let (x0, y0) = (9.5 * x as f32, 9.5 * y as f32);
            lattice.push([x0, y0, x0 + 10.0, y0 + 10.0]);
            scores.push(rng.uniform());
        }
    }
    let nms = Nms::hard(0.0);
    let spatial_masks = || {
        let work = ctx.kernel_work();
        work.iter()
            .find(|(name, _)| *name == "NmsMaskSpatial")
            .unwrap()
            .1
            .dispatches
    };
    let before = spatial_masks();
    let g = nms.run(&gpu_backend, &lattice, &scores, None).unwrap();
    assert!(spatial_masks() > before, "2,500 boxes take the spatial path");
    let cpu = nms.run(&Backend::Cpu, &lattice, &scores, None).unwrap();
    assert_same_nms("a lattice overlapping by half a pixel", &g, &cpu);
}
