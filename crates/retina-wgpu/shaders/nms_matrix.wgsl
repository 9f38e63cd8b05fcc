// Matrix NMS (SOLOv2): every box's score is decayed by its worst overlap with a higher-scoring
// box of the same class, compensated by how suppressed that box itself is:
// decay_j = min(1, min_{i < j} f(IoU_ij) / f(max_iou_i)), f(x) = 1 - x (linear) or
// exp(-sigma x^2) (Gaussian), max_iou from nms_max_iou.wgsl. Fully parallel, no sequential
// keep loop; boxes are not removed but down-weighted, then thresholded and re-sorted. Each
// dispatch covers the higher-scoring boxes row_begin..row_end and folds them into `decay`; the
// last one (row_end = region) decays the scores and writes sort entries (segment, descending
// key of the decayed score, slot, slot), padding for boxes under the score threshold.

//#include "shared/boxes.wgsl"
//#include "shared/sort_keys.wgsl"
//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> classes: array<i32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> max_iou: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> decays: array<f32>;
@group(0) @binding(7) var<storage, read_write> entries: array<vec4<u32>>;

var<workgroup> sh_boxes: array<vec4<f32>, WG_SIZE>;
var<workgroup> sh_classes: array<i32, WG_SIZE>;
var<workgroup> sh_comp: array<f32, WG_SIZE>;

fn kernel(x: f32) -> f32 {
    if (cfg.flags & FLAG_GAUSSIAN) != 0u {
        return exp(-cfg.sigma * x * x);
    }
    return 1.0 - x;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let index = wg.x + wg.y * num_wg.x;
    let seg = index / cfg.groups_per_segment;
    if seg >= cfg.num_segments {
        return;
    }
    let first = (index % cfg.groups_per_segment) * WG_SIZE;
    let base = seg * cfg.region;
    let j = first + lid;
    let n = counts[seg];
    if first >= cfg.region {
        return;
    }
    let valid = j < n;
    var b = vec4(0.0);
    var c = 0;
    if valid {
        b = boxes[base + j];
        c = classes[base + j];
    }
    var decay = 1.0;
    if valid && cfg.row_begin > 0u {
        decay = decays[base + j];
    }
    for (var t0 = cfg.row_begin; t0 <= first && t0 < n && t0 < cfg.row_end; t0 = t0 + WG_SIZE) {
        sh_boxes[lid] = boxes[base + t0 + lid];
        sh_classes[lid] = classes[base + t0 + lid];
        sh_comp[lid] = max_iou[base + t0 + lid];
        workgroupBarrier();
        if valid {
            for (var t = 0u; t < WG_SIZE; t = t + 1u) {
                let i = t0 + t;
                if i < j && same_class(sh_classes[t], c) {
                    // A box that is itself fully overlapped (compensation 1, linear kernel 0)
                    // would divide by zero; its own suppressor decays j just as much.
                    let ratio = kernel(box_iou(sh_boxes[t], b)) / max(kernel(sh_comp[t]), 1e-6);
                    decay = min(decay, ratio);
                }
            }
        }
        workgroupBarrier();
    }
    if cfg.row_end < cfg.region {
        if valid {
            decays[base + j] = decay;
        }
        return;
    }
    var entry = vec4(seg, 0xffffffffu, 0xffffffffu, 0xffffffffu);
    if valid {
        let decayed = scores[base + j] * decay;
        scores[base + j] = decayed;
        if decayed >= cfg.score_threshold {
            entry = vec4(seg, ~ordered_key(decayed), j, j);
        }
    }
    entries[base + j] = entry;
}
