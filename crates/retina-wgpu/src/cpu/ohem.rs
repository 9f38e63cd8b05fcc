//! CPU twin of the OHEM kernels (`shaders/ohem_row_loss.wgsl`, `ohem_entries.wgsl`,
//! `ohem_select.wgsl`, `ohem_scale.wgsl`, with the focal, sort and NMS kernels between them):
//! the same per-anchor losses (per-class cross entropy added in class order in f32), the same
//! ranking keys, the same greedy NMS and the same selection rule, so that both backends select
//! exactly the same anchors. The semantics are documented in [`crate::ops::ohem`].

use rayon::prelude::*;

use crate::cpu::nms::nms_sorted;
use crate::cpu::sort::ordered_key;
use crate::ops::focal::{FocalInput, LABEL_IGNORE};
use crate::ops::nms::Nms;
use crate::ops::ohem::{Ohem, OhemInput};

/// The rank key of a loss (smaller ranks first): the sort kernels' descending key, with NaN
/// mapped to 0 so that it ranks first (`ohem_entries.wgsl` does the same).
#[inline(always)]
pub fn rank_key(loss: f32) -> u32 {
    if loss.is_nan() { 0 } else { !ordered_key(loss) }
}

/// One anchor's loss: its `k` per-class losses added in class order in f32, as
/// `ohem_row_loss.wgsl` adds them.
#[inline(always)]
fn row_sum(row: &[f32]) -> f32 {
    row.iter().fold(0.0f32, |acc, &v| acc + v)
}

/// The anchors OHEM selects in one image, in loss order: `losses` and `labels` are the image's
/// `R` anchors' losses and labels, `anchors` their boxes.
pub fn select_image(ohem: &Ohem, losses: &[f32], labels: &[i32], anchors: &[[f32; 4]]) -> Vec<u32> {
    let mut order: Vec<(u32, u32)> = labels
        .iter()
        .enumerate()
        .filter(|&(_, &l)| l != LABEL_IGNORE)
        .map(|(j, _)| (rank_key(losses[j]), j as u32))
        .collect();
    order.sort_unstable();
    let order: Vec<u32> = order.into_iter().map(|(_, j)| j).collect();
    let survivors: Vec<u32> = match ohem.nms_threshold {
        None => order,
        Some(threshold) => {
            // With a quota any survivor may be needed; without, the first B are enough (the GPU
            // walk stops at the same place).
            let max_out = match ohem.positive_fraction {
                Some(_) => order.len(),
                None => ohem.per_image.min(order.len()),
            };
            let boxes: Vec<[f32; 4]> = order.iter().map(|&j| anchors[j as usize]).collect();
            let scores: Vec<f32> = order.iter().map(|&j| losses[j as usize]).collect();
            let classes = vec![0i32; order.len()];
            nms_sorted(&Nms::hard(threshold), &boxes, &scores, &classes, max_out)
                .into_iter()
                .map(|(slot, _)| order[slot])
                .collect()
        }
    };
    let b = ohem.per_image;
    match ohem.positive_quota() {
        None => survivors.into_iter().take(b).collect(),
        Some(quota) => {
            let positive = |j: &u32| labels[*j as usize] >= 0;
            let available = survivors.iter().filter(|j| positive(j)).count();
            let pos_take = available.min(quota);
            let neg_take = (survivors.len() - available).min(b - pos_take);
            let (mut pos_seen, mut neg_seen) = (0, 0);
            survivors
                .into_iter()
                .filter(|j| {
                    if positive(j) {
                        pos_seen += 1;
                        pos_seen <= pos_take
                    } else {
                        neg_seen += 1;
                        neg_seen <= neg_take
                    }
                })
                .collect()
        }
    }
}

/// OHEM on the CPU (inputs validated, at least one anchor): writes the gradient of the loss
/// into `grad` (`logits.len()`) and 1 for every selected anchor into `selected` (`labels.len()`,
/// zero-filled by the caller). Returns the sum of the selected anchors' losses (f64) and how
/// many were selected; the loss is `sum / max(1, count)`.
pub fn ohem(ohem: &Ohem, input: &OhemInput<'_>, grad: &mut [f32], selected: &mut [u32]) -> (f64, usize) {
    let (k, r) = (input.num_classes, input.anchors.len());
    let mut elementwise = vec![0.0f32; input.logits.len()];
    crate::cpu::focal::focal_loss(
        &ohem.cross_entropy(),
        &FocalInput::labels(input.logits, input.labels, k),
        1.0,
        Some(grad),
        Some(&mut elementwise),
    );
    let losses: Vec<f32> = elementwise.par_chunks(k).map(row_sum).collect();
    let per_image: Vec<(f64, usize)> = selected
        .par_chunks_mut(r)
        .zip(losses.par_chunks(r))
        .zip(input.labels.par_chunks(r))
        .map(|((mask, losses), labels)| {
            let chosen = select_image(ohem, losses, labels, input.anchors);
            let mut sum = 0.0f64;
            for &j in &chosen {
                mask[j as usize] = 1;
                sum += f64::from(losses[j as usize]);
            }
            (sum, chosen.len())
        })
        .collect();
    let sum = per_image.iter().map(|p| p.0).sum();
    let count = per_image.iter().map(|p| p.1).sum::<usize>();
    // `ohem_scale.wgsl`: the same f32 reciprocal of the same normaliser.
    let inv = 1.0 / (count.max(1) as f32);
    grad.par_chunks_mut(k).zip(selected.par_iter()).for_each(|(row, &m)| {
        for g in row {
            *g = if m != 0 { *g * inv } else { 0.0 };
        }
    });
    (sum, count)
}
