// Ordered compaction of kept boxes, one workgroup per segment: walks the segment's slots in
// order, 256 at a time, and writes the slots that are kept (Fast NMS: max_iou[slot] <= the IoU
// threshold; after a sort: entries that belong to the segment and are not padding, written as
// their payload) to keep[], up to max_out, with their scores.

//#include "shared/nms_common.wgsl"
//#include "shared/workgroup_scan.wgsl"

const WG_SIZE: u32 = 256u;
const FLAG_FROM_ENTRIES: u32 = 4u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> counts: array<u32>;
@group(0) @binding(2) var<storage, read> max_iou: array<f32>;
@group(0) @binding(3) var<storage, read> entries: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> kept: array<u32>;
@group(0) @binding(6) var<storage, read_write> keep: array<u32>;
@group(0) @binding(7) var<storage, read_write> keep_scores: array<f32>;

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
    let n = counts[seg];
    let base = seg * cfg.region;
    var total = 0u;
    for (var first = 0u; first < n && total < cfg.max_out; first = first + WG_SIZE) {
        let i = first + lid;
        var slot = i;
        var take = false;
        if i < n {
            if (cfg.flags & FLAG_FROM_ENTRIES) != 0u {
                let entry = entries[base + i];
                take = entry.x == seg && entry.y != 0xffffffffu;
                slot = entry.w;
            } else {
                take = max_iou[base + i] <= cfg.iou_threshold;
            }
        }
        let rank = total + workgroup_scan_exclusive(vec2(select(0u, 1u, take), 0u), lid).x;
        if take && rank < cfg.max_out {
            keep[seg * cfg.max_out + rank] = slot;
            keep_scores[seg * cfg.max_out + rank] = scores[base + slot];
        }
        total = total + workgroup_scan_total().x;
        workgroupBarrier();
    }
    if lid == 0u {
        kept[seg] = min(total, cfg.max_out);
    }
}
