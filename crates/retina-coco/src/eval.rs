//! COCO's bbox evaluation with pycocotools' semantics exactly (`COCOeval(gt, dt, "bbox")` then
//! `evaluate()`, `accumulate()`, `summarize()`), in f64 like numpy, parallel over categories.
//!
//! What decides the last digits, each as `cocoeval.py` does it:
//! - Images are all of the ground truth's (sorted by id), categories all of its categories
//!   (sorted by id), whether or not they have annotations. Within one (image, category), ground
//!   truth and detections keep their file order until they are sorted.
//! - Detections are sorted by score, highest first, with a stable sort (ties keep file order),
//!   and cut at the largest `maxDets` per image and category before matching.
//! - IoU is computed on `[x, y, w, h]` boxes as `maskApi.c`'s `bbIou`; for a crowd region the
//!   union is the detection's area.
//! - A ground truth is ignored when it is a crowd (`iscrowd` overrides any `ignore` field, as in
//!   pycocotools) or its `area` field is outside the area range; ignored ground truth is sorted
//!   after the rest (stably). Each detection, in score order, takes the ground truth of highest
//!   IoU at or above the threshold (the last of equal ones) that is not yet taken (crowds can be
//!   taken many times), and stops looking at ignored ones once it holds a regular one. A
//!   detection that takes an ignored ground truth is ignored; an unmatched detection whose box
//!   area is outside the area range is ignored.
//! - pycocotools records a match as the ground truth's annotation id and tests it against 0, so
//!   a match with an annotation whose id is 0 counts as no match; that is kept.
//! - Precision is accumulated over all images per (category, area, maxDets), made monotone from
//!   the right, and sampled at the 101 recall thresholds by a left-side search (0 past the last
//!   recall reached). Cells with no ground truth (or no images with anything) stay -1.
//! - Each of the 12 stats is the mean of the entries that are not -1, summed pairwise like
//!   numpy, or -1 when there are none.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::{BboxResult, Instances, check_results};

/// One area range of the evaluation: objects whose area lies in `[min, max]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AreaRange {
    /// `all`, `small`, `medium` or `large` by default; the stats look ranges up by label.
    pub label: String,
    /// Smallest area in range (inclusive).
    pub min: f64,
    /// Largest area in range (inclusive).
    pub max: f64,
}

/// The evaluation's parameters: pycocotools' `Params(iouType="bbox")` by default.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalParams {
    /// IoU thresholds (`T`): 0.50, 0.55, ..., 0.95, computed as `np.linspace` computes them.
    pub iou_thresholds: Vec<f64>,
    /// Recall thresholds (`R`): 0.00, 0.01, ..., 1.00.
    pub recall_thresholds: Vec<f64>,
    /// Detections per image and category (`M`): 1, 10, 100; kept sorted.
    pub max_dets: Vec<usize>,
    /// Area ranges (`A`): all, small (< 32²), medium (32²-96²), large (> 96²).
    pub area_ranges: Vec<AreaRange>,
}

impl Default for EvalParams {
    fn default() -> Self {
        let range = |label: &str, min: f64, max: f64| AreaRange {
            label: label.into(),
            min,
            max,
        };
        Self {
            iou_thresholds: linspace(0.5, 0.95, 10),
            recall_thresholds: linspace(0.0, 1.0, 101),
            max_dets: vec![1, 10, 100],
            area_ranges: vec![
                range("all", 0.0, 1e10),
                range("small", 0.0, 32.0 * 32.0),
                range("medium", 32.0 * 32.0, 96.0 * 96.0),
                range("large", 96.0 * 96.0, 1e10),
            ],
        }
    }
}

/// `np.linspace(start, stop, num)` to the last bit: `i * step + start`, the last one `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| if i + 1 == num { stop } else { i as f64 * step + start })
        .collect()
}

impl EvalParams {
    fn check(&self) -> Result<()> {
        let unit = |v: &f64| (0.0..=1.0).contains(v);
        if self.iou_thresholds.is_empty() || !self.iou_thresholds.iter().all(unit) {
            return Err(Error::invalid(
                "COCO evaluation: IoU thresholds must be non-empty, in [0, 1]",
            ));
        }
        if self.recall_thresholds.is_empty()
            || !self.recall_thresholds.iter().all(unit)
            || !self.recall_thresholds.is_sorted()
        {
            return Err(Error::invalid(
                "COCO evaluation: recall thresholds must be non-empty, ascending, in [0, 1]",
            ));
        }
        if self.max_dets.len() < 3 || self.max_dets.contains(&0) {
            return Err(Error::invalid(
                "COCO evaluation: max_dets needs three positive values (the stats use them as 1, 10, 100)",
            ));
        }
        if self.area_ranges.is_empty() || self.area_ranges.iter().any(|r| r.min.is_nan() || r.max.is_nan()) {
            return Err(Error::invalid(
                "COCO evaluation: area ranges must be non-empty and not NaN",
            ));
        }
        Ok(())
    }
}

/// AP of one category (area all, 100 detections), or -1 where it has no ground truth.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CategoryAp {
    /// COCO's category id.
    pub category_id: i64,
    /// The category's name.
    pub name: String,
    /// AP over IoU 0.50:0.95.
    pub ap: f64,
    /// AP at IoU 0.50.
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
}

/// The result of an evaluation: `COCOeval.eval` and `COCOeval.stats`.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// The parameters it ran with.
    pub params: EvalParams,
    /// The images evaluated (all of the ground truth's), sorted.
    pub image_ids: Vec<i64>,
    /// The categories (`K`), sorted; the `k` axis of the arrays.
    pub category_ids: Vec<i64>,
    /// The 12 numbers of `COCOeval.summarize()`: AP, AP50, AP75, AP small/medium/large,
    /// AR1, AR10, AR100, AR small/medium/large; -1 where nothing is defined.
    pub stats: [f64; 12],
    /// `[T, R, K, A, M]` of [`Evaluation::precision`] and [`Evaluation::scores`].
    pub precision_shape: [usize; 5],
    /// Interpolated precision, row-major `[T, R, K, A, M]`; -1 where undefined.
    pub precision: Vec<f64>,
    /// `[T, K, A, M]` of [`Evaluation::recall`].
    pub recall_shape: [usize; 4],
    /// Recall reached, row-major `[T, K, A, M]`; -1 where undefined.
    pub recall: Vec<f64>,
    /// The score at each sampled recall point, row-major `[T, R, K, A, M]`.
    pub scores: Vec<f64>,
    /// AP, AP50 and AP75 per category, in `category_ids` order.
    pub per_category: Vec<CategoryAp>,
}

/// Evaluates bbox results against a ground truth with pycocotools' default parameters.
pub fn evaluate(gt: &Instances, results: &[BboxResult]) -> Result<Evaluation> {
    evaluate_with(gt, results, &EvalParams::default())
}

/// Evaluates bbox results against a ground truth with the given parameters.
///
/// Results must name images and categories of `gt` and have finite boxes of non-negative size
/// and finite scores; otherwise this is an [`Error::Format`]. No results at all is valid and
/// gives 0 wherever ground truth exists.
pub fn evaluate_with(gt: &Instances, results: &[BboxResult], params: &EvalParams) -> Result<Evaluation> {
    params.check()?;
    check_results(gt, results, "results")?;
    let mut params = params.clone();
    params.max_dets.sort_unstable();

    let mut image_ids: Vec<i64> = gt.images.iter().map(|im| im.id).collect();
    image_ids.sort_unstable();
    let mut category_ids: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
    category_ids.sort_unstable();
    let image_rank: HashMap<i64, u32> = image_ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
    let category_rank: HashMap<i64, usize> = category_ids.iter().enumerate().map(|(k, &id)| (id, k)).collect();

    // Per category, (image rank, index) pairs in image order, file order within an image.
    let group = |items: &mut dyn Iterator<Item = (i64, i64)>| {
        let mut lists: Vec<Vec<(u32, u32)>> = vec![Vec::new(); category_ids.len()];
        for (n, (image_id, category_id)) in items.enumerate() {
            lists[category_rank[&category_id]].push((image_rank[&image_id], n as u32));
        }
        lists
            .par_iter_mut()
            .for_each(|list| list.sort_by_key(|&(image, _)| image));
        lists
    };
    let gt_by_category = group(&mut gt.annotations.iter().map(|a| (a.image_id, a.category_id)));
    let dt_by_category = group(&mut results.iter().map(|r| (r.image_id, r.category_id)));

    let (t_len, r_len, k_len) = (
        params.iou_thresholds.len(),
        params.recall_thresholds.len(),
        category_ids.len(),
    );
    let (a_len, m_len) = (params.area_ranges.len(), params.max_dets.len());

    // Each category on its own: match image by image, then accumulate over its images.
    let per_category: Vec<CategoryCurves> = (0..k_len)
        .into_par_iter()
        .map(|k| {
            let cells = match_category(gt, results, &gt_by_category[k], &dt_by_category[k], &params);
            accumulate_category(&cells, &params)
        })
        .collect();

    let mut precision = vec![-1.0; t_len * r_len * k_len * a_len * m_len];
    let mut scores = vec![-1.0; precision.len()];
    let mut recall = vec![-1.0; t_len * k_len * a_len * m_len];
    for (k, curves) in per_category.iter().enumerate() {
        for &(a, m, t, ref curve) in curves {
            recall[((t * k_len + k) * a_len + a) * m_len + m] = curve.recall;
            for r in 0..r_len {
                let at = (((t * r_len + r) * k_len + k) * a_len + a) * m_len + m;
                precision[at] = curve.precision[r];
                scores[at] = curve.scores[r];
            }
        }
    }

    let mut eval = Evaluation {
        params,
        image_ids,
        category_ids,
        stats: [-1.0; 12],
        precision_shape: [t_len, r_len, k_len, a_len, m_len],
        precision,
        recall_shape: [t_len, k_len, a_len, m_len],
        recall,
        scores,
        per_category: Vec::new(),
    };
    eval.stats = eval.summarize_stats();
    eval.per_category = eval
        .category_ids
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let name = gt
                .category_position(id)
                .map(|p| gt.categories[p].name.clone())
                .unwrap_or_default();
            let at = |iou: Option<f64>| eval.mean_precision(iou, "all", eval.params.max_dets[2], Some(k));
            CategoryAp {
                category_id: id,
                name,
                ap: at(None),
                ap50: at(Some(0.5)),
                ap75: at(Some(0.75)),
            }
        })
        .collect();
    Ok(eval)
}

/// One (image, category) with ground truth or detections: its detections (sorted, cut at the
/// largest maxDets) and, per area range, which of them are true positives or ignored.
struct Cell {
    /// Detection scores, highest first.
    scores: Vec<f64>,
    /// Per area range: `[T x D]` flags, `HIT` (matched to a ground truth with a non-zero id)
    /// and `IGNORED`.
    flags: Vec<Vec<u8>>,
    /// Per area range: ground truth that is not ignored.
    not_ignored: Vec<usize>,
}

const HIT: u8 = 1;
const IGNORED: u8 = 2;

/// pycocotools' `computeIoU` and `evaluateImg` for every image of one category.
fn match_category(
    gt: &Instances,
    results: &[BboxResult],
    gts: &[(u32, u32)],
    dts: &[(u32, u32)],
    params: &EvalParams,
) -> Vec<(u32, Cell)> {
    let max_det = *params.max_dets.last().expect("checked: three max_dets");
    let t_len = params.iou_thresholds.len();
    let mut cells = Vec::new();
    let (mut g0, mut d0) = (0, 0);
    let mut ious = Vec::new();
    while g0 < gts.len() || d0 < dts.len() {
        let image = match (gts.get(g0), dts.get(d0)) {
            (Some(g), Some(d)) => g.0.min(d.0),
            (Some(g), None) => g.0,
            (None, Some(d)) => d.0,
            (None, None) => unreachable!("loop condition"),
        };
        let g1 = g0 + gts[g0..].iter().take_while(|g| g.0 == image).count();
        let d1 = d0 + dts[d0..].iter().take_while(|d| d.0 == image).count();
        let anns: Vec<_> = gts[g0..g1].iter().map(|&(_, n)| &gt.annotations[n as usize]).collect();
        let mut dets: Vec<&BboxResult> = dts[d0..d1].iter().map(|&(_, n)| &results[n as usize]).collect();
        (g0, d0) = (g1, d1);

        // Stable sort by score, highest first (numpy's mergesort on -score), then cut.
        dets.sort_by(|a, b| b.score.partial_cmp(&a.score).expect("checked: finite scores"));
        dets.truncate(max_det);
        let (g_len, d_len) = (anns.len(), dets.len());

        ious.clear();
        ious.resize(d_len * g_len, 0.0);
        for (d, det) in dets.iter().enumerate() {
            for (g, ann) in anns.iter().enumerate() {
                ious[d * g_len + g] = bb_iou(&det.bbox, &ann.bbox, ann.iscrowd);
            }
        }

        let mut cell = Cell {
            scores: dets.iter().map(|d| d.score).collect(),
            flags: Vec::with_capacity(params.area_ranges.len()),
            not_ignored: Vec::with_capacity(params.area_ranges.len()),
        };
        let mut order: Vec<usize> = Vec::with_capacity(g_len);
        let mut gt_ignored = vec![false; g_len];
        let mut gt_taken = vec![false; g_len];
        for range in &params.area_ranges {
            let outside = |area: f64| area < range.min || area > range.max;
            for (g, ann) in anns.iter().enumerate() {
                gt_ignored[g] = ann.iscrowd || outside(ann.area);
            }
            // Ignored ground truth last, stably.
            order.clear();
            order.extend((0..g_len).filter(|&g| !gt_ignored[g]));
            let not_ignored = order.len();
            order.extend((0..g_len).filter(|&g| gt_ignored[g]));

            let mut flags = vec![0u8; t_len * d_len];
            for (t, &threshold) in params.iou_thresholds.iter().enumerate() {
                gt_taken.iter_mut().for_each(|x| *x = false);
                for d in 0..d_len {
                    let mut best = threshold.min(1.0 - 1e-10);
                    let mut matched: Option<usize> = None;
                    for &g in &order {
                        if gt_taken[g] && !anns[g].iscrowd {
                            continue;
                        }
                        if matched.is_some_and(|m| !gt_ignored[m]) && gt_ignored[g] {
                            break;
                        }
                        let iou = ious[d * g_len + g];
                        if iou < best {
                            continue;
                        }
                        best = iou;
                        matched = Some(g);
                    }
                    if let Some(m) = matched {
                        gt_taken[m] = true;
                        let mut f = if gt_ignored[m] { IGNORED } else { 0 };
                        if anns[m].id != 0 {
                            f |= HIT;
                        }
                        flags[t * d_len + d] = f;
                    }
                }
            }
            // Unmatched detections outside the area range are ignored.
            for (d, det) in dets.iter().enumerate() {
                if outside(det.bbox[2] * det.bbox[3]) {
                    for t in 0..t_len {
                        if flags[t * d_len + d] & HIT == 0 {
                            flags[t * d_len + d] |= IGNORED;
                        }
                    }
                }
            }
            cell.flags.push(flags);
            cell.not_ignored.push(not_ignored);
        }
        cells.push((image, cell));
    }
    cells
}

/// `maskApi.c`'s `bbIou` for one pair of `[x, y, w, h]` boxes.
fn bb_iou(dt: &[f64; 4], gt: &[f64; 4], crowd: bool) -> f64 {
    let w = (dt[2] + dt[0]).min(gt[2] + gt[0]) - dt[0].max(gt[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (dt[3] + dt[1]).min(gt[3] + gt[1]) - dt[1].max(gt[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let dt_area = dt[2] * dt[3];
    let union = if crowd {
        dt_area
    } else {
        dt_area + gt[2] * gt[3] - inter
    };
    inter / union
}

/// One precision/recall curve: a (category, area, maxDets, IoU threshold) of `accumulate`.
struct Curve {
    recall: f64,
    precision: Vec<f64>,
    scores: Vec<f64>,
}

/// The curves of one category, keyed by (area, maxDets, threshold); absent ones stay -1.
type CategoryCurves = Vec<(usize, usize, usize, Curve)>;

/// pycocotools' `accumulate` for one category over all its images.
fn accumulate_category(cells: &[(u32, Cell)], params: &EvalParams) -> CategoryCurves {
    let mut out = Vec::new();
    if cells.is_empty() {
        return out;
    }
    let t_len = params.iou_thresholds.len();
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut scores: Vec<f64> = Vec::new();
    for a in 0..params.area_ranges.len() {
        let not_ignored: usize = cells.iter().map(|(_, c)| c.not_ignored[a]).sum();
        if not_ignored == 0 {
            continue;
        }
        for (m, &max_det) in params.max_dets.iter().enumerate() {
            // Every image's first max_det detections, images in order, then a stable sort by
            // score: (cell, detection) pairs.
            order.clear();
            for (c, (_, cell)) in cells.iter().enumerate() {
                order.extend((0..cell.scores.len().min(max_det)).map(|d| (c, d)));
            }
            order.sort_by(|&(c1, d1), &(c2, d2)| {
                let (s1, s2) = (cells[c1].1.scores[d1], cells[c2].1.scores[d2]);
                s2.partial_cmp(&s1).expect("checked: finite scores")
            });
            scores.clear();
            scores.extend(order.iter().map(|&(c, d)| cells[c].1.scores[d]));
            for t in 0..t_len {
                let mut tp = 0u64;
                let mut fp = 0u64;
                let mut rc = Vec::with_capacity(order.len());
                let mut pr = Vec::with_capacity(order.len());
                for &(c, d) in &order {
                    let cell = &cells[c].1;
                    let f = cell.flags[a][t * cell.scores.len() + d];
                    if f & IGNORED == 0 {
                        if f & HIT != 0 {
                            tp += 1;
                        } else {
                            fp += 1;
                        }
                    }
                    let (tp, fp) = (tp as f64, fp as f64);
                    rc.push(tp / not_ignored as f64);
                    pr.push(tp / (fp + tp + f64::EPSILON));
                }
                let recall = rc.last().copied().unwrap_or(0.0);
                for i in (1..pr.len()).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                let mut precision = vec![0.0; params.recall_thresholds.len()];
                let mut score_at = vec![0.0; params.recall_thresholds.len()];
                for (r, &threshold) in params.recall_thresholds.iter().enumerate() {
                    // np.searchsorted(rc, threshold, side="left"); past the end, 0.
                    let i = rc.partition_point(|&x| x < threshold);
                    if i >= pr.len() {
                        break;
                    }
                    precision[r] = pr[i];
                    score_at[r] = scores[i];
                }
                out.push((
                    a,
                    m,
                    t,
                    Curve {
                        recall,
                        precision,
                        scores: score_at,
                    },
                ));
            }
        }
    }
    out
}

/// The stats' names, in `COCOeval.stats` order.
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// (is AP, IoU threshold, area label, maxDets index) of each of the 12 stats.
const SUMMARY: [(bool, Option<f64>, &str, usize); 12] = [
    (true, None, "all", 2),
    (true, Some(0.5), "all", 2),
    (true, Some(0.75), "all", 2),
    (true, None, "small", 2),
    (true, None, "medium", 2),
    (true, None, "large", 2),
    (false, None, "all", 0),
    (false, None, "all", 1),
    (false, None, "all", 2),
    (false, None, "small", 2),
    (false, None, "medium", 2),
    (false, None, "large", 2),
];

impl Evaluation {
    fn summarize_stats(&self) -> [f64; 12] {
        SUMMARY.map(|(ap, iou, area, m)| {
            let max_det = self.params.max_dets[m];
            if ap {
                self.mean_precision(iou, area, max_det, None)
            } else {
                self.mean_recall(iou, area, max_det)
            }
        })
    }

    /// Indices of the thresholds equal to `iou` (all when `None`), of the area ranges labelled
    /// `area` and of the maxDets equal to `max_det`, as pycocotools selects them.
    fn select(&self, iou: Option<f64>, area: &str, max_det: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let p = &self.params;
        let ts = (0..p.iou_thresholds.len())
            .filter(|&t| iou.is_none_or(|v| p.iou_thresholds[t] == v))
            .collect();
        let areas = (0..p.area_ranges.len())
            .filter(|&a| p.area_ranges[a].label == area)
            .collect();
        let ms = (0..p.max_dets.len()).filter(|&m| p.max_dets[m] == max_det).collect();
        (ts, areas, ms)
    }

    /// Mean of the defined precision entries at the selection (one category or all), or -1.
    fn mean_precision(&self, iou: Option<f64>, area: &str, max_det: usize, category: Option<usize>) -> f64 {
        let [_, r_len, k_len, a_len, m_len] = self.precision_shape;
        let (ts, areas, ms) = self.select(iou, area, max_det);
        let ks: Vec<usize> = category.map_or_else(|| (0..k_len).collect(), |k| vec![k]);
        let mut values = Vec::new();
        for &t in &ts {
            for r in 0..r_len {
                for &k in &ks {
                    for &a in &areas {
                        for &m in &ms {
                            values.push(self.precision[(((t * r_len + r) * k_len + k) * a_len + a) * m_len + m]);
                        }
                    }
                }
            }
        }
        defined_mean(values)
    }

    /// Mean of the defined recall entries at the selection, or -1.
    fn mean_recall(&self, iou: Option<f64>, area: &str, max_det: usize) -> f64 {
        let [_, k_len, a_len, m_len] = self.recall_shape;
        let (ts, areas, ms) = self.select(iou, area, max_det);
        let mut values = Vec::new();
        for &t in &ts {
            for k in 0..k_len {
                for &a in &areas {
                    for &m in &ms {
                        values.push(self.recall[((t * k_len + k) * a_len + a) * m_len + m]);
                    }
                }
            }
        }
        defined_mean(values)
    }

    /// The 12 lines `COCOeval.summarize()` prints, in its wording and layout.
    pub fn summary(&self) -> String {
        let p = &self.params;
        let mut out = String::new();
        for (&(ap, iou, area, m), stat) in SUMMARY.iter().zip(self.stats) {
            let (title, kind) = if ap {
                ("Average Precision", "(AP)")
            } else {
                ("Average Recall", "(AR)")
            };
            let iou = match iou {
                Some(v) => format!("{v:.2}"),
                None => format!(
                    "{:.2}:{:.2}",
                    p.iou_thresholds[0],
                    p.iou_thresholds[p.iou_thresholds.len() - 1]
                ),
            };
            out += &format!(
                " {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={:>3} ] = {stat:.3}\n",
                p.max_dets[m]
            );
        }
        out
    }

    /// A table of AP, AP50 and AP75 per category (area all, 100 detections); `-` where a
    /// category has no ground truth.
    pub fn per_category_table(&self) -> String {
        let width = self.per_category.iter().map(|c| c.name.len()).max().unwrap_or(0).max(8);
        let mut out = format!(
            "{:>6}  {:<width$}  {:>6}  {:>6}  {:>6}\n",
            "id", "category", "AP", "AP50", "AP75"
        );
        let cell = |v: f64| if v < 0.0 { "-".to_string() } else { format!("{v:.3}") };
        for c in &self.per_category {
            out += &format!(
                "{:>6}  {:<width$}  {:>6}  {:>6}  {:>6}\n",
                c.category_id,
                c.name,
                cell(c.ap),
                cell(c.ap50),
                cell(c.ap75)
            );
        }
        out
    }

    /// The evaluation as JSON: stats (also by name), parameters, the precision, recall and
    /// scores arrays (flat, row-major, with their shapes) and per-category AP.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("evaluation serialises: numbers and strings");
        let named: serde_json::Map<String, serde_json::Value> = STAT_NAMES
            .iter()
            .zip(self.stats)
            .map(|(name, v)| (name.to_string(), v.into()))
            .collect();
        value["stats_by_name"] = named.into();
        value
    }
}

/// numpy's `np.mean(s[s > -1])`, or -1 when nothing is above -1.
fn defined_mean(mut values: Vec<f64>) -> f64 {
    values.retain(|&v| v > -1.0);
    if values.is_empty() {
        return -1.0;
    }
    pairwise_sum(&values) / values.len() as f64
}

/// numpy's pairwise summation (`pairwise_sum_DOUBLE`): blocks of 128 summed with 8
/// accumulators, larger arrays split in halves at a multiple of 8.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &v| s + v)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        for chunk in a[8..full].chunks_exact(8) {
            for j in 0..8 {
                r[j] += chunk[j];
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[full..] {
            res += v;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_numpys_linspace() {
        let p = EvalParams::default();
        assert_eq!(p.iou_thresholds.len(), 10);
        assert_eq!(p.iou_thresholds[0], 0.5);
        // The stats select 0.5 and 0.75 by equality, as pycocotools does.
        assert_eq!(p.iou_thresholds[5], 0.75);
        assert_eq!(p.iou_thresholds[9], 0.95);
        assert_eq!(p.recall_thresholds.len(), 101);
        assert_eq!(p.recall_thresholds[100], 1.0);
    }

    #[test]
    fn pairwise_sum_matches_a_plain_sum_on_exact_values() {
        for n in [0usize, 1, 7, 8, 9, 128, 129, 1000] {
            let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
            assert_eq!(pairwise_sum(&v), (n * n.saturating_sub(1) / 2) as f64, "n = {n}");
        }
    }

    #[test]
    fn crowd_iou_uses_the_detection_area_as_union() {
        let det = [0.0, 0.0, 10.0, 10.0];
        let crowd = [5.0, 0.0, 100.0, 100.0];
        assert_eq!(bb_iou(&det, &crowd, true), 0.5);
        assert_eq!(bb_iou(&det, &crowd, false), 50.0 / (100.0 + 10000.0 - 50.0));
        assert_eq!(bb_iou(&det, &[10.0, 0.0, 5.0, 5.0], false), 0.0);
    }
}
