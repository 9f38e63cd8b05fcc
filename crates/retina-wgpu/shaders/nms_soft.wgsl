// Soft-NMS (Bodla et al. 2017), one workgroup per segment: repeatedly keep the live box of
// highest (decayed) score, then decay the scores of the live boxes it overlaps (same class if
// class-aware): linear, score *= 1 - IoU when IoU > the IoU threshold; Gaussian,
// score *= exp(-IoU^2 / sigma). Boxes whose score falls below the score threshold die. Trades
// a sequential loop (one pick per iteration) for keeping overlapping true positives at a lower
// score. Stops after max_out picks. Each dispatch makes at most row_end - row_begin picks
// (continuing from kept[segment]), so that no invocation loops too long (see `LOOP_BUDGET` in
// src/gpu/nms.rs); the first (row_begin = 0) also retires boxes under the score threshold.

//#include "shared/boxes.wgsl"
//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> classes: array<i32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> kept: array<u32>;
@group(0) @binding(6) var<storage, read_write> keep: array<u32>;
@group(0) @binding(7) var<storage, read_write> keep_scores: array<f32>;
@group(0) @binding(8) var<storage, read_write> done: array<u32>;

var<workgroup> sh_best: array<f32, WG_SIZE>;
var<workgroup> sh_index: array<u32, WG_SIZE>;
var<workgroup> sh_done: u32;
var<workgroup> sh_start: u32;

const DEAD: f32 = -0x1.fffffep+127f; // -f32::MAX, exactly (Tint rejects decimal literals that round to it)

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let seg = wg.x + wg.y * num_wg.x;
    if seg >= cfg.num_segments {
        return;
    }
    if lid == 0u {
        sh_done = done[seg];
        sh_start = kept[seg];
    }
    if workgroupUniformLoad(&sh_done) != 0u {
        return;
    }
    let n = counts[seg];
    let base = seg * cfg.region;
    if cfg.row_begin == 0u {
        // Boxes below the score threshold never live.
        for (var i = lid; i < n; i = i + WG_SIZE) {
            if !(scores[base + i] >= cfg.score_threshold) {
                scores[base + i] = DEAD;
            }
        }
        storageBarrier();
    }
    var count = workgroupUniformLoad(&sh_start);
    let limit = min(cfg.max_out, count + cfg.row_end - cfg.row_begin);
    var finished = false;
    loop {
        if count >= limit {
            break;
        }
        // Argmax over live boxes; ties go to the lower slot (the higher original score).
        var best = DEAD;
        var best_i = 0xffffffffu;
        for (var i = lid; i < n; i = i + WG_SIZE) {
            let s = scores[base + i];
            if s > best {
                best = s;
                best_i = i;
            }
        }
        sh_best[lid] = best;
        sh_index[lid] = best_i;
        for (var stride = WG_SIZE / 2u; stride > 0u; stride = stride / 2u) {
            workgroupBarrier();
            if lid < stride {
                let other = sh_best[lid + stride];
                let other_i = sh_index[lid + stride];
                if other > sh_best[lid] || (other == sh_best[lid] && other_i < sh_index[lid]) {
                    sh_best[lid] = other;
                    sh_index[lid] = other_i;
                }
            }
        }
        let pick = workgroupUniformLoad(&sh_index[0]);
        if pick == 0xffffffffu {
            finished = true;
            break;
        }
        let pick_score = sh_best[0];
        let pick_box = boxes[base + pick];
        let pick_class = classes[base + pick];
        if lid == 0u {
            keep[seg * cfg.max_out + count] = pick;
            keep_scores[seg * cfg.max_out + count] = pick_score;
            scores[base + pick] = DEAD;
        }
        count = count + 1u;
        storageBarrier();
        for (var i = lid; i < n; i = i + WG_SIZE) {
            let s = scores[base + i];
            if s != DEAD && same_class(pick_class, classes[base + i]) {
                let iou = box_iou(pick_box, boxes[base + i]);
                var weight = 1.0;
                if (cfg.flags & FLAG_GAUSSIAN) != 0u {
                    weight = exp(-(iou * iou) / cfg.sigma);
                } else if iou > cfg.iou_threshold {
                    weight = 1.0 - iou;
                }
                let decayed = s * weight;
                scores[base + i] = select(DEAD, decayed, decayed >= cfg.score_threshold);
            }
        }
        storageBarrier();
    }
    if lid == 0u {
        kept[seg] = count;
        if finished || count >= cfg.max_out {
            done[seg] = 1u;
        }
    }
}
