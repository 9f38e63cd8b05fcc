//! CPU twin of the detection post-processing (`postprocess_candidates.wgsl`, the sort, NMS and
//! `postprocess_output.wgsl`): the same top-k selection, order and suppression, images in parallel.

use rayon::prelude::*;

use crate::cpu::boxes::decode;
use crate::cpu::sort::{key_to_float, top_k_segment};
use crate::ops::postprocess::{Detection, DetectionInput, PostProcess};

/// Detections of every image (inputs validated).
pub fn postprocess(pp: &PostProcess, input: &DetectionInput<'_>) -> Vec<Vec<Detection>> {
    let a = input.anchors.len();
    let k = input.num_classes;
    let threshold = pp.logit_threshold();
    let (height, width) = (input.image_size.0 as f32, input.image_size.1 as f32);
    (0..input.batch())
        .into_par_iter()
        .map(|image| {
            // Candidates of every level, in level order then index order: (key, box, class).
            let mut candidates = Vec::new();
            for level in input.level_offsets.windows(2) {
                let start = (image * a + level[0]) * k;
                let values = &input.logits[start..(image * a + level[1]) * k];
                let topk = pp.topk_per_level.min(values.len());
                for (key, index) in top_k_segment(values, topk, threshold) {
                    let anchor = level[0] + index as usize / k;
                    let mut b = decode(
                        input.deltas[image * a + anchor],
                        input.anchors[anchor],
                        pp.coder.weights,
                        pp.coder.clamp,
                    );
                    if pp.clip_to_image {
                        b = [
                            b[0].clamp(0.0, width),
                            b[1].clamp(0.0, height),
                            b[2].clamp(0.0, width),
                            b[3].clamp(0.0, height),
                        ];
                    }
                    candidates.push((key, b, (index as usize % k) as i32));
                }
            }
            // Decreasing logit key, ties by position: the GPU's sort entries.
            let mut order: Vec<usize> = (0..candidates.len()).collect();
            order.sort_unstable_by_key(|&i| (!candidates[i].0, i));
            let boxes: Vec<[f32; 4]> = order.iter().map(|&i| candidates[i].1).collect();
            let classes: Vec<i32> = order.iter().map(|&i| candidates[i].2).collect();
            let scores: Vec<f32> = order.iter().map(|&i| sigmoid(key_to_float(candidates[i].0))).collect();
            crate::cpu::nms::nms_sorted(&pp.nms, &boxes, &scores, &classes, pp.max_detections)
                .into_iter()
                .map(|(slot, score)| Detection {
                    bbox: boxes[slot],
                    score,
                    class: classes[slot] as u32,
                })
                .collect()
        })
        .collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
