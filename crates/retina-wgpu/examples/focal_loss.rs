//! The smallest program that computes a focal loss and its gradient on the GPU.
//!
//! Run: `cargo run --release --example focal_loss`

use retina_wgpu::{Backend, FocalInput, FocalLoss};

fn main() -> retina_wgpu::Result<()> {
    // Three anchors, four classes: anchor 0 is class 2, anchor 1 is background, anchor 2 is
    // ignored (IoU between the matcher's thresholds).
    let logits = [
        -1.0, 0.5, 2.0, -3.0, //
        -4.0, -2.0, 1.0, -5.0, //
        0.0, 0.0, 0.0, 0.0,
    ];
    let labels = [2, -1, -2];

    let gpu = Backend::gpu()?;
    let out = FocalLoss::retinanet().compute(&gpu, &FocalInput::labels(&logits, &labels, 4))?;

    println!("adapter:  {}", gpu.describe());
    println!(
        "loss:     {:.6} (sum {:.6} over {} positive anchor)",
        out.loss, out.sum, out.normaliser
    );
    for (anchor, row) in out.grad.unwrap_or_default().chunks(4).enumerate() {
        println!("grad[{anchor}]: {row:?}");
    }
    Ok(())
}
