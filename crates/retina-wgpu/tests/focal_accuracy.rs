//! The GPU's tree-reduced loss over 100M elements is accurate to 1e-5 relative, against an f64
//! sum on the CPU.

mod common;

use common::{Rng, gpu};
use retina_wgpu::{Backend, FocalInput, FocalLoss, Reduction};

#[test]
fn sum_over_100m_elements_is_accurate_to_1e5_relative() {
    let Some(ctx) = gpu() else { return };
    let (rows, k) = (1_250_000, 80); // 100M logits, 400 MB: chunked at lavapipe's 128 MiB binding
    let mut rng = Rng::new(100);
    let logits: Vec<f32> = (0..rows * k).map(|_| rng.range(-6.0, 2.0)).collect();
    let labels: Vec<i32> = (0..rows).map(|_| rng.below(k as u64 + 2) as i32 - 2).collect();
    let input = FocalInput::labels(&logits[..], &labels, k);
    let loss = FocalLoss::new(Some(0.25), 2.0).with_reduction(Reduction::Sum);

    // Reference: every element's loss from the CPU backend, added in f64 in order.
    let per_element = loss
        .with_reduction(Reduction::None)
        .forward(&Backend::Cpu, &input)
        .unwrap();
    let reference: f64 = per_element.elementwise.unwrap().iter().map(|&v| f64::from(v)).sum();

    let gpu_sum = loss.forward(&Backend::Gpu(ctx), &input).unwrap();
    let rel = (gpu_sum.sum - reference).abs() / reference;
    assert!(
        rel <= 1e-5,
        "GPU sum {} vs f64 {reference}: relative error {rel:e}",
        gpu_sum.sum
    );
}
