//! Deterministic synthetic workloads: the inputs that `retina bench`, the criterion benches and
//! the web page's NMS timing measure, defined once so that all of them measure the same data.
//! Every function draws from its own fixed seed of [`SeededRng`], so the values are the same on
//! every platform and every run.

use crate::nn::SeededRng;

/// Uniform in [0, 1) as f32.
fn uniform(rng: &mut SeededRng) -> f32 {
    rng.uniform() as f32
}

/// Logits `[rows x k]` uniform in [-7, 3) and RetinaNet-like labels per row: a positive
/// (class uniform in `0..k`) with probability 2%, ignored (-2) with 5%, else background (-1).
pub fn focal_problem(rows: usize, k: usize) -> (Vec<f32>, Vec<i32>) {
    let mut rng = SeededRng::new(0x2545_f491_4f6c_dd1d);
    let logits = (0..rows * k).map(|_| uniform(&mut rng) * 10.0 - 7.0).collect();
    let labels = (0..rows)
        .map(|_| match rng.next_u64() % 100 {
            0 | 1 => (rng.next_u64() % k.max(1) as u64) as i32,
            2..=6 => -2,
            _ => -1,
        })
        .collect();
    (logits, labels)
}

/// Ground truth for `images` square images of side `side`: `count` boxes per image with sides
/// of 20-400 px (clipped to the image), each wholly inside it, classes uniform in `0..80`.
pub fn ground_truth(images: usize, count: usize, side: f32) -> Vec<(Vec<[f32; 4]>, Vec<i32>)> {
    let mut rng = SeededRng::new(0x853c_49e6_748f_ea9b);
    (0..images)
        .map(|_| {
            let boxes = (0..count)
                .map(|_| {
                    let w = (20.0 + 380.0 * uniform(&mut rng)).min(side);
                    let h = (20.0 + 380.0 * uniform(&mut rng)).min(side);
                    let (x, y) = ((side - w) * uniform(&mut rng), (side - h) * uniform(&mut rng));
                    [x, y, x + w, y + h]
                })
                .collect();
            let classes = (0..count).map(|_| (uniform(&mut rng) * 80.0) as i32).collect();
            (boxes, classes)
        })
        .collect()
}

/// `n` boxes with centres uniform in a 1000 x 1000 image and sides of 10-100 px, scores uniform
/// in [0, 1), classes uniform in `0..classes` (at least one class).
pub fn random_boxes(n: usize, classes: usize) -> (Vec<[f32; 4]>, Vec<f32>, Vec<i32>) {
    let mut rng = SeededRng::new(0x9e37_79b9_7f4a_7c15);
    let classes = classes.max(1);
    let boxes = (0..n)
        .map(|_| {
            let (cx, cy) = (1000.0 * uniform(&mut rng), 1000.0 * uniform(&mut rng));
            let (w, h) = (10.0 + 90.0 * uniform(&mut rng), 10.0 + 90.0 * uniform(&mut rng));
            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
        })
        .collect();
    let scores = (0..n).map(|_| uniform(&mut rng)).collect();
    let labels = (0..n).map(|_| (rng.next_u64() % classes as u64) as i32).collect();
    (boxes, scores, labels)
}

/// Head outputs for `batch` images of `anchors` anchors and `classes` classes, like a trained
/// detector's: logits `[batch * anchors x classes]` where 1 in 5,000 is a confident score
/// (logit in [-2, 4)) and the rest lie in (-8, -4] (sigmoid below 0.02, under the default 0.05
/// threshold), and box deltas `[batch * anchors]` with every component in [-0.1, 0.1).
pub fn detector_outputs(batch: usize, anchors: usize, classes: usize) -> (Vec<f32>, Vec<[f32; 4]>) {
    let mut rng = SeededRng::new(0x1405_7b7e_f767_814f);
    let logits = (0..batch * anchors * classes)
        .map(|_| {
            let u = uniform(&mut rng);
            if u < 2e-4 {
                6.0 * uniform(&mut rng) - 2.0
            } else {
                -4.0 - 4.0 * u
            }
        })
        .collect();
    let deltas = (0..batch * anchors)
        .map(|_| [0.2 * uniform(&mut rng) - 0.1; 4])
        .collect();
    (logits, deltas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_have_the_documented_distributions() {
        let (logits, labels) = focal_problem(100_000, 80);
        assert_eq!((logits.len(), labels.len()), (8_000_000, 100_000));
        assert!(logits.iter().all(|&v| (-7.0..3.0).contains(&v)));
        let frac = |f: &dyn Fn(i32) -> bool| labels.iter().filter(|&&l| f(l)).count() as f64 / 1e5;
        assert!((frac(&|l| l >= 0) - 0.02).abs() < 0.003);
        assert!((frac(&|l| l == -2) - 0.05).abs() < 0.005);
        assert!(labels.iter().all(|&l| l < 80));

        for (boxes, classes) in ground_truth(3, 50, 800.0) {
            assert_eq!((boxes.len(), classes.len()), (50, 50));
            for b in boxes {
                let (w, h) = (b[2] - b[0], b[3] - b[1]);
                assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 800.0 && b[3] <= 800.0, "{b:?}");
                assert!((20.0..=400.0).contains(&w) && (20.0..=400.0).contains(&h), "{b:?}");
            }
        }
        // Boxes larger than a small image are clipped to it, never inverted.
        for (boxes, _) in ground_truth(2, 20, 64.0) {
            assert!(
                boxes
                    .iter()
                    .all(|b| b[0] >= 0.0 && b[2] <= 64.0 && b[0] < b[2] && b[1] < b[3])
            );
        }

        let (b, s, c) = random_boxes(10_000, 80);
        assert!(b.iter().all(|b| (10.0..=100.0).contains(&(b[2] - b[0]))));
        assert!(s.iter().all(|&v| (0.0..1.0).contains(&v)));
        assert!(c.iter().all(|&v| (0..80).contains(&v)));
        assert!((0..80).all(|k| c.contains(&k)));

        let (logits, deltas) = detector_outputs(2, 1000, 10);
        assert_eq!((logits.len(), deltas.len()), (20_000, 2000));
        let confident = logits.iter().filter(|&&v| v > -4.0).count();
        assert!((1..=20).contains(&confident), "{confident} confident logits");
        assert!(deltas.iter().flatten().all(|&v| (-0.1..0.1).contains(&v)));
    }
}
