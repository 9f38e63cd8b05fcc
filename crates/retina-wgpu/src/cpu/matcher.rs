//! CPU twin of `shaders/matcher_gt_max.wgsl` + `shaders/matcher_assign.wgsl`.
//!
//! Anchors are laid out as columns (x1, y1, x2, y2, area) so that the IoU of one ground truth
//! with a run of anchors is a vectorised loop. Work is split into (image, anchor chunk) tasks.
//! Pass 1 finds every anchor's best ground truth and every chunk's highest IoU per ground truth;
//! pass 2 (only with low-quality matches) rescans just the chunks that hold a ground truth's
//! overall highest IoU, so the whole assignment costs about one evaluation per
//! (anchor, ground truth) pair.

use rayon::prelude::*;

use crate::cpu::boxes::encode;
use crate::cpu::math::multiversion;
use crate::ops::matcher::{AssignedTargets, GroundTruth, TargetAssigner};

/// Anchors per task.
const CHUNK: usize = 4096;

/// Anchors as columns.
struct AnchorColumns {
    x1: Vec<f32>,
    y1: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    area: Vec<f32>,
}

impl AnchorColumns {
    fn new(anchors: &[[f32; 4]]) -> Self {
        Self {
            x1: anchors.iter().map(|a| a[0]).collect(),
            y1: anchors.iter().map(|a| a[1]).collect(),
            x2: anchors.iter().map(|a| a[2]).collect(),
            y2: anchors.iter().map(|a| a[3]).collect(),
            area: anchors.iter().map(|&a| crate::cpu::boxes::area(a)).collect(),
        }
    }
}

/// The IoU of `gt` with the anchor `(x1, y1, x2, y2)` of area `area`, exactly as
/// `cpu::boxes::iou` computes it.
#[inline(always)]
fn iou_parts(x1: f32, y1: f32, x2: f32, y2: f32, area: f32, gt: [f32; 4], gt_area: f32) -> f32 {
    let w = (x2.min(gt[2]) - x1.max(gt[0])).max(0.0);
    let h = (y2.min(gt[3]) - y1.max(gt[1])).max(0.0);
    let inter = w * h;
    let union = area + gt_area - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The IoU of `gt` with anchor `i` of `cols`.
#[inline(always)]
fn iou_at(cols: &AnchorColumns, i: usize, gt: [f32; 4], gt_area: f32) -> f32 {
    iou_parts(
        cols.x1[i],
        cols.y1[i],
        cols.x2[i],
        cols.y2[i],
        cols.area[i],
        gt,
        gt_area,
    )
}

/// Largest value of `values` (>= 0), with eight independent lanes so that it vectorises.
#[inline(always)]
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let blocks = values.chunks_exact(8);
    let rest = blocks.remainder();
    for block in blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane = lane.max(v);
        }
    }
    rest.iter().chain(&lanes).fold(0.0f32, |m, &v| m.max(v))
}

multiversion! {
    /// Pass 1 over anchors `range`: updates each anchor's best IoU and ground truth (strictly
    /// greater wins, so the first of equal IoUs stays) and returns the chunk's highest IoU of
    /// every ground truth. Each box is a pass of three vectorised loops over the chunk: IoUs
    /// into `row`, the running best, and the row's maximum.
    fn best_matches(cols: &AnchorColumns, range: std::ops::Range<usize>, gts: &[[f32; 4]], best: &mut [f32], arg: &mut [i32]) -> Vec<f32> {
        best.fill(-1.0);
        arg.fill(-1);
        let (x1, y1, x2, y2, area) = (
            &cols.x1[range.clone()],
            &cols.y1[range.clone()],
            &cols.x2[range.clone()],
            &cols.y2[range.clone()],
            &cols.area[range.clone()],
        );
        let mut row = vec![0.0f32; range.len()];
        let mut highest = Vec::with_capacity(gts.len());
        for (g, &gt) in gts.iter().enumerate() {
            let gt_area = crate::cpu::boxes::area(gt);
            let anchors = x1.iter().zip(y1).zip(x2).zip(y2).zip(area);
            for (r, ((((&ax1, &ay1), &ax2), &ay2), &aa)) in row.iter_mut().zip(anchors) {
                *r = iou_parts(ax1, ay1, ax2, ay2, aa, gt, gt_area);
            }
            for ((b, a), &v) in best.iter_mut().zip(arg.iter_mut()).zip(&row) {
                // Selects, not a branch: the loop compiles to blends.
                let better = v > *b;
                *b = if better { v } else { *b };
                *a = if better { g as i32 } else { *a };
            }
            highest.push(max_of(&row));
        }
        highest
    }
}

/// Pass 2 for one chunk: marks anchors whose IoU with some ground truth equals that ground
/// truth's (positive) highest IoU. Only ground truths whose highest IoU lies in this chunk are
/// scanned.
fn low_quality(
    cols: &AnchorColumns,
    range: std::ops::Range<usize>,
    gts: &[[f32; 4]],
    chunk_highest: &[f32],
    overall: &[f32],
    flags: &mut [bool],
) {
    for (g, &gt) in gts.iter().enumerate() {
        let h = overall[g];
        if h > 0.0 && chunk_highest[g] == h {
            let gt_area = crate::cpu::boxes::area(gt);
            for (k, flag) in flags.iter_mut().enumerate() {
                if iou_at(cols, range.start + k, gt, gt_area) == h {
                    *flag = true;
                }
            }
        }
    }
}

/// Targets of a batch (inputs assumed validated).
pub fn assign(assigner: &TargetAssigner, anchors: &[[f32; 4]], images: &[GroundTruth<'_>]) -> AssignedTargets {
    let a = anchors.len();
    let b = images.len();
    let cols = AnchorColumns::new(anchors);
    let (high, low) = (assigner.matcher.high, assigner.matcher.low);
    let weights = assigner.coder.weights;

    let mut matches = vec![-1i32; a * b];
    let mut labels = vec![-1i32; a * b];
    let mut box_targets = vec![[0.0f32; 4]; a * b];
    if a == 0 {
        return AssignedTargets {
            anchors_per_image: 0,
            matches,
            labels,
            box_targets,
            positives: vec![0; b],
        };
    }
    let mut best = vec![0.0f32; a * b];

    // Pass 1: per (image, chunk): best match per anchor (into `matches`), highest IoU per gt.
    let chunk_highest: Vec<Vec<Vec<f32>>> = best
        .par_chunks_mut(a)
        .zip(matches.par_chunks_mut(a))
        .zip(images.par_iter())
        .map(|((best, arg), gt)| {
            best.par_chunks_mut(CHUNK)
                .zip(arg.par_chunks_mut(CHUNK))
                .enumerate()
                .map(|(c, (best, arg))| {
                    let start = c * CHUNK;
                    best_matches(&cols, start..start + best.len(), gt.boxes, best, arg)
                })
                .collect()
        })
        .collect();

    // Pass 2: thresholds, low-quality matches, labels, targets, positives.
    let positives: Vec<u32> = matches
        .par_chunks_mut(a)
        .zip(labels.par_chunks_mut(a))
        .zip(box_targets.par_chunks_mut(a))
        .zip(best.par_chunks(a))
        .zip(images.par_iter().zip(&chunk_highest))
        .map(|((((matches, labels), targets), best), (gt, per_chunk))| {
            let overall: Vec<f32> = (0..gt.boxes.len())
                .map(|g| per_chunk.iter().fold(0.0f32, |m, c| m.max(c[g])))
                .collect();
            matches
                .par_chunks_mut(CHUNK)
                .zip(labels.par_chunks_mut(CHUNK))
                .zip(targets.par_chunks_mut(CHUNK))
                .zip(best.par_chunks(CHUNK))
                .zip(per_chunk.par_iter())
                .enumerate()
                .map(|(c, ((((matches, labels), targets), best), chunk_highest))| {
                    let start = c * CHUNK;
                    let mut flags = vec![false; matches.len()];
                    if assigner.matcher.allow_low_quality_matches {
                        low_quality(
                            &cols,
                            start..start + matches.len(),
                            gt.boxes,
                            chunk_highest,
                            &overall,
                            &mut flags,
                        );
                    }
                    let mut count = 0;
                    for k in 0..matches.len() {
                        let arg = matches[k];
                        let mut m = arg;
                        if arg < 0 || best[k] < low {
                            m = -1;
                        } else if best[k] < high {
                            m = -2;
                        }
                        if flags[k] {
                            m = arg;
                        }
                        matches[k] = m;
                        if m >= 0 {
                            labels[k] = gt.classes[m as usize];
                            targets[k] = encode(gt.boxes[m as usize], anchors[start + k], weights);
                            count += 1;
                        } else {
                            labels[k] = m;
                        }
                    }
                    count
                })
                .sum()
        })
        .collect();

    AssignedTargets {
        anchors_per_image: a,
        matches,
        labels,
        box_targets,
        positives,
    }
}
