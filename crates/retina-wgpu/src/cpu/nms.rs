//! CPU twins of the NMS kernels: the same order (score descending, ties by input index, NaN
//! never), the same IoU, the same results.
//!
//! Boxes interact only within a class, so every variant runs per class (in parallel) and the
//! per-class results are merged by score: the merge of per-class greedy NMS is exactly the
//! class-aware greedy NMS, and capping each class at `max_output` loses nothing from the final
//! `max_output`. Greedy NMS costs O(n x kept) per class, not O(n^2), and stops at `max_output`.

use rayon::prelude::*;

use crate::cpu::boxes::iou;
use crate::cpu::sort::ordered_key;
use crate::ops::nms::{Nms, NmsKind, NmsOutput};

/// One class's boxes in decreasing score order.
struct ClassRun {
    /// Global positions (in the overall score order) of this class's boxes.
    slots: Vec<usize>,
}

/// A kept box: its position in the overall score order, and its (decayed) score.
#[derive(Clone, Copy)]
struct Kept {
    slot: usize,
    score: f32,
}

/// Boxes of a run bucketed on a uniform grid (compressed rows: `cells[starts[c]..starts[c + 1]]`
/// are the boxes, in score order, that overlap cell `c`), so that a kept box meets only the
/// boxes near it. Boxes that do not intersect have IoU 0 and, the threshold being >= 0, never
/// suppress each other, so the grid changes the work, not the result.
struct Grid {
    origin: [f32; 2],
    cell: [f32; 2],
    dims: [usize; 2],
    starts: Vec<usize>,
    cells: Vec<u32>,
}

impl Grid {
    fn new(b: &[[f32; 4]]) -> Self {
        let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
        let (mut sum_w, mut sum_h) = (0.0f64, 0.0f64);
        for r in b {
            lo = [lo[0].min(r[0]), lo[1].min(r[1])];
            hi = [hi[0].max(r[2]), hi[1].max(r[3])];
            sum_w += f64::from(r[2] - r[0]);
            sum_h += f64::from(r[3] - r[1]);
        }
        // Cells about twice the mean box size, at most 512 per side.
        let n = b.len() as f64;
        let size = |extent: f32, mean: f64| (extent / 512.0).max((2.0 * mean / n) as f32).max(f32::MIN_POSITIVE);
        let cell = [size(hi[0] - lo[0], sum_w), size(hi[1] - lo[1], sum_h)];
        let dims = [
            ((hi[0] - lo[0]) / cell[0]) as usize + 1,
            ((hi[1] - lo[1]) / cell[1]) as usize + 1,
        ];
        let mut grid = Self {
            origin: lo,
            cell,
            dims,
            starts: vec![0; dims[0] * dims[1] + 1],
            cells: Vec::new(),
        };
        for r in b {
            let starts = &mut grid.starts;
            cells_of(lo, cell, dims, *r, |c| starts[c + 1] += 1);
        }
        for c in 1..grid.starts.len() {
            grid.starts[c] += grid.starts[c - 1];
        }
        grid.cells = vec![0; grid.starts[grid.starts.len() - 1]];
        // Fill from each cell's end, back to front, so that it lists its boxes in increasing order.
        let mut ends = grid.starts[1..].to_vec();
        for (i, r) in b.iter().enumerate().rev() {
            let cells = &mut grid.cells;
            cells_of(lo, cell, dims, *r, |c| {
                ends[c] -= 1;
                cells[ends[c]] = i as u32;
            });
        }
        grid
    }

    fn for_cells(&self, r: [f32; 4], f: impl FnMut(usize)) {
        cells_of(self.origin, self.cell, self.dims, r, f);
    }
}

/// Calls `f` with every grid cell that box `r` overlaps.
fn cells_of(origin: [f32; 2], cell: [f32; 2], dims: [usize; 2], r: [f32; 4], mut f: impl FnMut(usize)) {
    let index = |v: f32, axis: usize| (((v - origin[axis]) / cell[axis]) as usize).min(dims[axis] - 1);
    for y in index(r[1], 1)..=index(r[3], 1) {
        for x in index(r[0], 0)..=index(r[2], 0) {
            f(y * dims[0] + x);
        }
    }
}

/// Greedy NMS on one class, boxes in score order; stops after `max_out` kept. Large runs use a
/// grid so that each kept box only checks the boxes around it.
fn greedy(boxes: &[[f32; 4]], run: &ClassRun, threshold: f32, max_out: usize, scores: &[f32]) -> Vec<Kept> {
    let n = run.slots.len();
    let b: Vec<[f32; 4]> = run.slots.iter().map(|&s| boxes[s]).collect();
    let mut removed = vec![false; n];
    let mut kept = Vec::new();
    let grid = (n >= 512).then(|| Grid::new(&b));
    for i in 0..n {
        if removed[i] {
            continue;
        }
        kept.push(Kept {
            slot: run.slots[i],
            score: scores[run.slots[i]],
        });
        if kept.len() >= max_out {
            break;
        }
        let bi = b[i];
        match &grid {
            Some(grid) => grid.for_cells(bi, |c| {
                for &j in &grid.cells[grid.starts[c]..grid.starts[c + 1]] {
                    let j = j as usize;
                    if j > i && !removed[j] && iou(bi, b[j]) > threshold {
                        removed[j] = true;
                    }
                }
            }),
            None => {
                for (r, &bj) in removed[i + 1..].iter_mut().zip(&b[i + 1..]) {
                    *r |= iou(bi, bj) > threshold;
                }
            }
        }
    }
    kept
}

/// Soft-NMS on one class: the shader's `nms_soft` restricted to one class.
fn soft(boxes: &[[f32; 4]], run: &ClassRun, nms: &Nms, max_out: usize, scores: &[f32]) -> Vec<Kept> {
    let sigma = match nms.kind {
        NmsKind::SoftGaussian { sigma } => Some(sigma),
        _ => None,
    };
    let mut live: Vec<(usize, f32)> = run
        .slots
        .iter()
        .map(|&s| (s, scores[s]))
        .filter(|&(_, score)| score >= nms.score_threshold)
        .collect();
    let mut kept = Vec::new();
    while kept.len() < max_out && !live.is_empty() {
        // Highest score; ties to the lower slot.
        let mut best = 0;
        for (i, &(slot, score)) in live.iter().enumerate() {
            if score > live[best].1 || (score == live[best].1 && slot < live[best].0) {
                best = i;
            }
        }
        let (slot, score) = live.swap_remove(best);
        kept.push(Kept { slot, score });
        let picked = boxes[slot];
        live.retain_mut(|(s, score)| {
            let overlap = iou(picked, boxes[*s]);
            let weight = match sigma {
                Some(sigma) => (-(overlap * overlap) / sigma).exp(),
                None if overlap > nms.iou_threshold => 1.0 - overlap,
                None => 1.0,
            };
            *score *= weight;
            *score >= nms.score_threshold
        });
    }
    kept
}

/// Each box's highest IoU with a higher-scoring box of its class (0 if none).
fn max_iou(boxes: &[[f32; 4]], run: &ClassRun) -> Vec<f32> {
    (0..run.slots.len())
        .into_par_iter()
        .map(|j| {
            let bj = boxes[run.slots[j]];
            run.slots[..j].iter().fold(0.0f32, |m, &s| m.max(iou(boxes[s], bj)))
        })
        .collect()
}

/// Fast NMS on one class.
fn fast(boxes: &[[f32; 4]], run: &ClassRun, threshold: f32, max_out: usize, scores: &[f32]) -> Vec<Kept> {
    let highest = max_iou(boxes, run);
    run.slots
        .iter()
        .zip(highest)
        .filter(|&(_, m)| m <= threshold)
        .take(max_out)
        .map(|(&slot, _)| Kept {
            slot,
            score: scores[slot],
        })
        .collect()
}

/// Matrix NMS on one class: decayed scores of the boxes that stay above the score threshold,
/// in slot order (sorted by decayed score afterwards).
fn matrix(boxes: &[[f32; 4]], run: &ClassRun, nms: &Nms, scores: &[f32]) -> Vec<Kept> {
    let sigma = match nms.kind {
        NmsKind::Matrix { gaussian_sigma } => gaussian_sigma,
        _ => None,
    };
    let kernel = |x: f32| match sigma {
        Some(sigma) => (-sigma * x * x).exp(),
        None => 1.0 - x,
    };
    let compensation = max_iou(boxes, run);
    (0..run.slots.len())
        .into_par_iter()
        .filter_map(|j| {
            let bj = boxes[run.slots[j]];
            let decay = run.slots[..j].iter().zip(&compensation).fold(1.0f32, |d, (&s, &c)| {
                d.min(kernel(iou(boxes[s], bj)) / kernel(c).max(1e-6))
            });
            let score = scores[run.slots[j]] * decay;
            (score >= nms.score_threshold).then_some(Kept {
                slot: run.slots[j],
                score,
            })
        })
        .collect()
}

/// NMS over boxes already sorted by score (`boxes[slot]`, `scores[slot]`, `classes[slot]`, all
/// valid): the kept slots and their scores, in decreasing score order (ties: lower slot).
pub(crate) fn nms_sorted(
    nms: &Nms,
    boxes: &[[f32; 4]],
    scores: &[f32],
    classes: &[i32],
    max_out: usize,
) -> Vec<(usize, f32)> {
    // Per-class runs in score order.
    let mut by_class: Vec<(i32, ClassRun)> = Vec::new();
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by_key(|&s| (classes[s], s));
    for s in order {
        match by_class.last_mut() {
            Some((c, run)) if *c == classes[s] => run.slots.push(s),
            _ => by_class.push((classes[s], ClassRun { slots: vec![s] })),
        }
    }
    let per_class: Vec<Vec<Kept>> = by_class
        .par_iter()
        .map(|(_, run)| match nms.kind {
            NmsKind::Hard => greedy(boxes, run, nms.iou_threshold, max_out, scores),
            NmsKind::SoftLinear | NmsKind::SoftGaussian { .. } => soft(boxes, run, nms, max_out, scores),
            NmsKind::Fast => fast(boxes, run, nms.iou_threshold, max_out, scores),
            NmsKind::Matrix { .. } => matrix(boxes, run, nms, scores),
        })
        .collect();
    let mut kept: Vec<Kept> = per_class.into_iter().flatten().collect();
    // Hard and Fast keep original scores, so slot order is score order; Soft and Matrix sort
    // by decayed score (descending key as on the GPU), ties by slot.
    match nms.kind {
        NmsKind::Hard | NmsKind::Fast => kept.sort_unstable_by_key(|k| k.slot),
        _ => kept.sort_unstable_by_key(|k| (!ordered_key(k.score), k.slot)),
    }
    kept.truncate(max_out);
    kept.into_iter().map(|k| (k.slot, k.score)).collect()
}

/// NMS over unsorted boxes (inputs validated): sorts by score (NaN dropped), suppresses, maps
/// back to input indices.
pub fn nms(nms: &Nms, boxes: &[[f32; 4]], scores: &[f32], classes: Option<&[i32]>) -> NmsOutput {
    let order: Vec<u32> = crate::cpu::sort::argsort_desc(scores)
        .into_iter()
        .filter(|&i| !scores[i as usize].is_nan())
        .collect();
    let sorted_boxes: Vec<[f32; 4]> = order.iter().map(|&i| boxes[i as usize]).collect();
    let sorted_scores: Vec<f32> = order.iter().map(|&i| scores[i as usize]).collect();
    let sorted_classes: Vec<i32> = match classes {
        Some(c) => order.iter().map(|&i| c[i as usize]).collect(),
        None => vec![0; order.len()],
    };
    let max_out = nms.max_output.unwrap_or(order.len());
    let kept = nms_sorted(nms, &sorted_boxes, &sorted_scores, &sorted_classes, max_out);
    NmsOutput {
        keep: kept.iter().map(|&(slot, _)| order[slot]).collect(),
        scores: kept.iter().map(|&(_, s)| s).collect(),
    }
}
