//! Anchors: the documented order and geometry, the paper's count at 800 px, GPU = CPU exactly.

mod common;

use common::gpu;
use retina_wgpu::{AnchorConfig, Backend, Error};

#[test]
fn anchors_follow_the_documented_order_and_geometry() {
    let config = AnchorConfig::retinanet();
    let (h, w) = (100, 70);
    let anchors = config.generate(&Backend::Cpu, h, w).unwrap();
    assert_eq!(anchors.len(), config.num_anchors(h, w).unwrap());
    let a = config.anchors_per_cell();
    assert_eq!(a, 9);
    let offsets = config.level_offsets(h, w).unwrap();
    let grid = config.grid(h, w).unwrap();
    assert_eq!(
        grid[0],
        (13, 9),
        "P3 of a 100 x 70 image has ceil(100/8) x ceil(70/8) cells"
    );
    for (level, &(rows, cols)) in grid.iter().enumerate() {
        let stride = config.strides[level] as f32;
        for (row, col) in [(0, 0), (rows - 1, cols - 1), (rows / 2, cols / 3)] {
            for ratio_index in 0..3 {
                for scale_index in 0..3 {
                    let k = ratio_index * 3 + scale_index;
                    let i = offsets[level] + ((row * cols + col) as usize) * a + k;
                    let b = anchors[i];
                    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
                    assert!(
                        (cx - (col as f32 + 0.5) * stride).abs() < 1e-3,
                        "level {level} cell ({row}, {col}): {b:?}"
                    );
                    assert!(
                        (cy - (row as f32 + 0.5) * stride).abs() < 1e-3,
                        "level {level} cell ({row}, {col}): {b:?}"
                    );
                    let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
                    let size = config.sizes[level] * config.scales[scale_index];
                    let ratio = config.aspect_ratios[ratio_index];
                    assert!((bw * bh - size * size).abs() <= 1e-3 * size * size, "area of {b:?}");
                    assert!((bh / bw - ratio).abs() <= 1e-4 * ratio, "ratio of {b:?}");
                }
            }
        }
    }
}

#[test]
fn a_retinanet_at_800_px_has_120087_anchors() {
    let config = AnchorConfig::retinanet();
    // P3-P7 of 800 x 800: 100^2 + 50^2 + 25^2 + 13^2 + 7^2 cells, 9 anchors each.
    assert_eq!(
        config.num_anchors(800, 800).unwrap(),
        9 * (10_000 + 2_500 + 625 + 169 + 49)
    );
    // The small RetinaNet (docs/ARCHITECTURE.md): 128 x 128 gives 3069 anchors.
    assert_eq!(AnchorConfig::small().num_anchors(128, 128).unwrap(), 3069);
}

#[test]
fn gpu_anchors_equal_cpu_anchors_and_are_cached() {
    let Some(ctx) = gpu() else { return };
    for (config, h, w) in [
        (AnchorConfig::retinanet(), 800, 800),
        (AnchorConfig::small(), 128, 128),
        (
            AnchorConfig {
                offset: 0.0,
                scales: vec![1.0, 1.5],
                ..AnchorConfig::retinanet()
            },
            333,
            517,
        ),
    ] {
        let cpu = config.generate(&Backend::Cpu, h, w).unwrap();
        let gpu_anchors = config.generate(&Backend::Gpu(ctx.clone()), h, w).unwrap();
        assert_eq!(cpu, gpu_anchors, "{h} x {w}");
        let first = ctx.anchors(&config, h, w).unwrap();
        let again = ctx.anchors(&config, h, w).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "the second request is served from the cache"
        );
    }
}

#[test]
fn bad_configurations_are_clear_errors() {
    let bad = [
        AnchorConfig {
            sizes: vec![32.0],
            ..AnchorConfig::retinanet()
        },
        AnchorConfig {
            scales: vec![],
            ..AnchorConfig::retinanet()
        },
        AnchorConfig {
            aspect_ratios: vec![0.0],
            ..AnchorConfig::retinanet()
        },
        AnchorConfig {
            strides: vec![0, 16, 32, 64, 128],
            ..AnchorConfig::retinanet()
        },
        AnchorConfig {
            offset: f32::NAN,
            ..AnchorConfig::retinanet()
        },
    ];
    for config in bad {
        let err = config.generate(&Backend::Cpu, 100, 100).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter(_)), "{config:?}: {err}");
    }
    let err = AnchorConfig::retinanet().generate(&Backend::Cpu, 0, 100).unwrap_err();
    assert!(err.to_string().contains("image size"), "{err}");
}
