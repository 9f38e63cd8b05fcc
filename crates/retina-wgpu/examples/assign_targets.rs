//! Builds the anchors of an image, assigns training targets for a few boxes on the GPU, and
//! prints the positive anchors.
//!
//! Run: `cargo run --release --example assign_targets`

use retina_wgpu::{AnchorConfig, Backend, GroundTruth, TargetAssigner};

fn main() -> retina_wgpu::Result<()> {
    let gpu = Backend::gpu()?;
    let (height, width) = (320, 480);
    let config = AnchorConfig::retinanet();
    let anchors = config.generate(&gpu, height, width)?;
    println!(
        "{} anchors for a {height} x {width} image on {}",
        anchors.len(),
        gpu.describe()
    );

    // Two objects: a person (class 0) and a dog (class 16), boxes as [x1, y1, x2, y2].
    let boxes = [[40.0, 60.0, 140.0, 300.0], [250.0, 180.0, 420.0, 290.0]];
    let classes = [0, 16];
    let assigner = TargetAssigner::new(80);
    let targets = assigner.assign(
        &gpu,
        &anchors,
        &[GroundTruth {
            boxes: &boxes,
            classes: &classes,
        }],
    )?;

    println!("{} positive anchors:", targets.total_positives());
    for (i, &label) in targets.labels.iter().enumerate().filter(|(_, l)| **l >= 0) {
        let a = anchors[i];
        let t = targets.box_targets[i];
        println!(
            "  anchor {i:>5} [{:6.1} {:6.1} {:6.1} {:6.1}] -> box {} class {label:>2}, target ({:+.3} {:+.3} {:+.3} {:+.3})",
            a[0], a[1], a[2], a[3], targets.matches[i], t[0], t[1], t[2], t[3]
        );
    }
    let ignored = targets.labels.iter().filter(|&&l| l == -2).count();
    println!("{ignored} anchors ignored (IoU between 0.4 and 0.5), the rest background");
    Ok(())
}
