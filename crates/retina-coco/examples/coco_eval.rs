//! COCO bbox evaluation with pycocotools' semantics: the COCO API's own fake-detection test
//! (100 val2014 images, shipped in tests/coco/), its 12-line summary, and the AP of a few
//! categories. Pass other files to evaluate them:
//!
//!     cargo run --release --example coco_eval -- GT.json RESULTS.json

use retina_coco::{self as coco, Instances};

fn main() -> retina_coco::Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/coco");
    let mut args = std::env::args().skip(1);
    let gt = args
        .next()
        .unwrap_or_else(|| format!("{dir}/instances_val2014_100.json"));
    let results = args
        .next()
        .unwrap_or_else(|| format!("{dir}/instances_val2014_fakebbox100_results.json"));

    let gt = Instances::load(&gt)?;
    let results = coco::load_results(&results, &gt)?;
    let start = std::time::Instant::now();
    let eval = coco::evaluate(&gt, &results)?;
    println!(
        "{} results, {} images, {} categories, evaluated in {:.1} ms",
        results.len(),
        gt.images.len(),
        gt.categories.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    print!("{}", eval.summary());
    // The precision array is [T, R, K, A, M]; per-category AP is computed from it.
    for c in eval.per_category.iter().filter(|c| c.ap >= 0.0).take(5) {
        println!("{:>12}: AP {:.3}  AP50 {:.3}  AP75 {:.3}", c.name, c.ap, c.ap50, c.ap75);
    }
    Ok(())
}
