//! Sort and top-k: against a reference ordering (decreasing, ties by index, NaN last / never),
//! GPU against CPU, segmented top-k with thresholds, and ties at the k-th value.

mod common;

use common::{Rng, gpu, gpu_with};
use retina_wgpu::gpu::TopkSegment;
use retina_wgpu::{Backend, GpuOptions, LimitCaps, sort_desc, top_k};

fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    if let Some(ctx) = gpu() {
        out.push(Backend::Gpu(ctx));
    }
    out
}

/// Reference: stable sort of indices by decreasing value, NaN last.
fn reference_order(keys: &[f32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..keys.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (keys[a as usize], keys[b as usize]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y.total_cmp(&x),
        }
    });
    idx
}

/// Keys with many exact ties, NaNs, infinities and both zeros.
fn keys(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 17 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => -0.0,
            4 => 0.0,
            5..=9 => (rng.below(8) as f32) * 0.25 - 1.0,
            _ => rng.normal() * 100.0,
        })
        .collect()
}

#[test]
fn sort_matches_the_reference_order_on_both_backends() {
    let mut rng = Rng::new(1);
    for n in [0usize, 1, 2, 511, 512, 513, 4097, 100_000] {
        let k = keys(&mut rng, n);
        let payloads: Vec<u32> = (0..n as u32).map(|i| i * 3 + 7).collect();
        let want = reference_order(&k);
        for backend in backends() {
            let (sorted, p) = sort_desc(&backend, &k, &payloads).unwrap();
            let order: Vec<u32> = p.iter().map(|&x| (x - 7) / 3).collect();
            // -0.0 sorts below 0.0 (total order); the reference uses total_cmp too.
            assert_eq!(order, want, "{} n = {n}", backend.kind());
            assert_eq!(sorted.len(), n);
        }
    }
}

#[test]
fn top_k_selects_the_reference_prefix_on_both_backends() {
    let mut rng = Rng::new(2);
    for n in [0usize, 1, 100, 1023, 1024, 1025, 50_000, 300_000] {
        let k = keys(&mut rng, n);
        let want = reference_order(&k);
        let valid = k.iter().filter(|v| !v.is_nan()).count();
        for kk in [0usize, 1, 7, 100, 1000, n + 5] {
            let expected: Vec<u32> = want.iter().copied().take(kk.min(valid)).collect();
            for backend in backends() {
                let (values, idx) = top_k(&backend, &k, kk).unwrap();
                assert_eq!(idx, expected, "{} n = {n} k = {kk}", backend.kind());
                assert!(values.iter().all(|v| !v.is_nan()));
            }
        }
    }
}

#[test]
fn segmented_top_k_with_a_threshold_matches_the_cpu_even_under_small_limits() {
    let Some(full) = gpu() else { return };
    let caps = LimitCaps {
        max_storage_binding: Some(64 * 1024),
        max_workgroups_per_dim: Some(4),
        max_buffer_size: None,
    };
    let small = gpu_with(GpuOptions {
        caps,
        ..Default::default()
    })
    .unwrap();
    let mut rng = Rng::new(3);
    let values = keys(&mut rng, 40_000);
    let segments = [
        TopkSegment {
            start: 0,
            len: 10_000,
            k: 1000,
        },
        TopkSegment {
            start: 10_000,
            len: 3,
            k: 3,
        },
        TopkSegment {
            start: 10_003,
            len: 15_000,
            k: 0,
        },
        TopkSegment {
            start: 25_003,
            len: 14_997,
            k: 4000,
        },
    ];
    for ctx in [full, small] {
        for threshold in [None, Some(-0.5f32), Some(1e30)] {
            let buffer = ctx.upload(&values).unwrap();
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            let out = ctx.record_top_k(&mut encoder, &buffer, &segments, threshold).unwrap();
            ctx.queue().submit([encoder.finish()]);
            let selected = ctx.download(&out.selected).unwrap();
            let candidates = ctx.download(&out.candidates).unwrap();
            for (s, seg) in segments.iter().enumerate() {
                let want =
                    retina_wgpu::cpu::sort::top_k_segment(&values[seg.start..seg.start + seg.len], seg.k, threshold);
                let got: Vec<(u32, u32)> = candidates[s * out.stride..s * out.stride + selected[s] as usize]
                    .iter()
                    .map(|c| (c[0], c[1]))
                    .collect();
                let first_difference = got.iter().zip(&want).position(|(a, b)| a != b);
                assert!(
                    got == want,
                    "segment {s} threshold {threshold:?} binding {}: {} selected, {} expected, first difference at {first_difference:?}: {:?} vs {:?}",
                    ctx.limits().max_storage_binding,
                    got.len(),
                    want.len(),
                    first_difference.map(|i| &got[i..(i + 3).min(got.len())]),
                    first_difference.map(|i| &want[i..(i + 3).min(want.len())]),
                );
            }
        }
    }
}
