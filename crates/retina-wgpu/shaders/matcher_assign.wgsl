// Matcher, pass 2, fused with target assignment: per anchor, the best ground truth (first on
// ties) and its IoU, torchvision's Matcher thresholds (below `low`: -1 background; in
// [low, high): -2 ignored), the low-quality rule (an anchor that has some box's highest IoU keeps
// its best box, ties included; a box whose highest IoU is 0 claims nothing), then the
// per-anchor class label in the focal loss's form, the encoded regression target of positives
// (zero elsewhere), and the positives per image (`positives[image]`) and in the batch
// (`positives[batch]`). matcher_gt_max.wgsl must have filled `gt_max`.
// src/cpu/matcher.rs is the twin.

//#include "shared/boxes.wgsl"
//#include "shared/matcher_common.wgsl"

const FLAG_LOW_QUALITY: u32 = 1u;

// Per box: its highest IoU (bits, from matcher_gt_max.wgsl) at [g], its class at [boxes + g].
@group(0) @binding(4) var<storage, read> gt_info: array<u32>;
@group(0) @binding(5) var<storage, read_write> matches: array<i32>;
@group(0) @binding(6) var<storage, read_write> labels: array<i32>;
@group(0) @binding(7) var<storage, read_write> targets: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> positives: array<atomic<u32>>;

var<workgroup> sh_gt: array<vec4<f32>, WG_SIZE>;
var<workgroup> sh_best: array<f32, WG_SIZE>;
var<workgroup> sh_positives: atomic<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile = wg.x + wg.y * num_wg.x;
    let image_local = tile / cfg.tiles_per_image;
    if image_local >= cfg.num_images {
        return;
    }
    let image = cfg.image_first + image_local;
    let j = (tile % cfg.tiles_per_image) * WG_SIZE + lid;
    let valid = j < cfg.chunk_anchors;
    var anchor = vec4(0.0);
    if valid {
        anchor = anchors[cfg.anchor_base + j];
    }
    let g_begin = gt_offsets[image];
    let g_end = gt_offsets[image + 1u];
    var best = -1.0;
    var arg = -1;
    var low_quality = false;
    for (var g0 = g_begin; g0 < g_end; g0 = g0 + WG_SIZE) {
        let count = min(WG_SIZE, g_end - g0);
        if lid < count {
            sh_gt[lid] = gt_boxes[g0 + lid];
            sh_best[lid] = bitcast<f32>(gt_info[g0 + lid]);
        }
        workgroupBarrier();
        if valid {
            for (var g = 0u; g < count; g = g + 1u) {
                let iou = box_iou(anchor, sh_gt[g]);
                if iou > best {
                    best = iou;
                    arg = i32(g0 - g_begin + g);
                }
                let highest = sh_best[g];
                if highest > 0.0 && iou == highest {
                    low_quality = true;
                }
            }
        }
        workgroupBarrier();
    }
    if valid {
        var m = arg;
        if arg < 0 || best < cfg.low {
            m = -1;
        } else if best < cfg.high {
            m = -2;
        }
        if (cfg.flags & FLAG_LOW_QUALITY) != 0u && low_quality {
            m = arg;
        }
        var label = m;
        var box_target = vec4(0.0);
        if m >= 0 {
            let g = g_begin + u32(m);
            label = bitcast<i32>(gt_info[cfg.num_boxes + g]);
            box_target = encode_box(gt_boxes[g], anchor, cfg.weights);
            atomicAdd(&sh_positives, 1u);
        }
        let out = image_local * cfg.anchors_per_image + j;
        matches[cfg.out_base4 + out] = m;
        labels[cfg.out_base4 + out] = label;
        targets[cfg.out_base16 + out] = box_target;
    }
    workgroupBarrier();
    if lid == 0u {
        let count = atomicLoad(&sh_positives);
        if count > 0u {
            atomicAdd(&positives[image], count);
            atomicAdd(&positives[cfg.batch], count);
        }
    }
}
