// For every box j (in score order) its highest IoU with a higher-scoring box of the same class
// (0 if none): Fast NMS (YOLACT) keeps j when that is <= the IoU threshold, in one parallel
// pass, at the price of letting already-suppressed boxes suppress too (it removes slightly more
// than greedy NMS); Matrix NMS uses it as each box's "compensation". A workgroup takes 256 boxes
// and stages the higher-scoring boxes 256 at a time. Each dispatch covers the higher-scoring
// boxes row_begin..row_end and folds them into max_iou, so that no invocation loops too long
// (see `LOOP_BUDGET` in src/gpu/nms.rs).

//#include "shared/boxes.wgsl"
//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> classes: array<i32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> max_iou: array<f32>;

var<workgroup> sh_boxes: array<vec4<f32>, WG_SIZE>;
var<workgroup> sh_classes: array<i32, WG_SIZE>;

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
    let n = counts[seg];
    if first >= n {
        return;
    }
    let base = seg * cfg.region;
    let j = first + lid;
    let valid = j < n;
    var b = vec4(0.0);
    var c = 0;
    if valid {
        b = boxes[base + j];
        c = classes[base + j];
    }
    var highest = 0.0;
    if valid && cfg.row_begin > 0u {
        highest = max_iou[base + j];
    }
    // Higher-scoring boxes are those before j: tiles up to and including this one.
    for (var t0 = cfg.row_begin; t0 <= first && t0 < cfg.row_end; t0 = t0 + WG_SIZE) {
        sh_boxes[lid] = boxes[base + t0 + lid];
        sh_classes[lid] = classes[base + t0 + lid];
        workgroupBarrier();
        if valid {
            for (var t = 0u; t < WG_SIZE; t = t + 1u) {
                let i = t0 + t;
                if i < j && same_class(sh_classes[t], c) {
                    highest = max(highest, box_iou(sh_boxes[t], b));
                }
            }
        }
        workgroupBarrier();
    }
    if valid {
        max_iou[base + j] = highest;
    }
}
