// Greedy NMS at large N, step 2 of the spatial path: after the sort of nms_spatial_keys.wgsl,
// writes each segment's boxes in tile order (box, its slot in score order, its class) and the
// bounds of every tile of 32 and every block of 256 (8 tiles): (min x1, min y1, max x2, max y2)
// over the tile's boxes without NaN, or (+inf, +inf, -inf, -inf) when it has none. A box that
// overlaps another with positive area lies left of its right side etc., so a box that does not
// overlap a tile's bounds cannot have an IoU above any threshold in [0, 1] with its boxes
// (box_iou is 0 without positive overlap); nms_mask_spatial.wgsl skips such tiles.
// bounds[t] is tile t (t = position / 32 over all segments), bounds[num_segments * words + k]
// block k (position / 256). One workgroup per block.

//#include "shared/boxes.wgsl"
//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> entries: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> classes: array<i32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> tiled: array<Tiled>;
@group(0) @binding(6) var<storage, read_write> bounds: array<vec4<f32>>;

// (min x1, min y1, -max x2, -max y2): one min reduction for all four.
var<workgroup> sh: array<vec4<f32>, 256>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = wg.x + wg.y * num_wg.x;
    let blocks_per_segment = cfg.region / WG_SIZE;
    if block >= cfg.num_segments * blocks_per_segment {
        return;
    }
    let p = block * WG_SIZE + lid;
    let seg = p / cfg.region;
    // +inf through bits, not a constant expression (shared/boxes.wgsl's NaN note).
    let inf = bitcast<f32>(0x7f800000u | (p & 0u));
    var v = vec4(inf);
    if p % cfg.region < counts[seg] {
        let slot = entries[p].w;
        let b = boxes[seg * cfg.region + slot];
        tiled[p] = Tiled(b, slot, classes[seg * cfg.region + slot], 0u, 0u);
        if !box_has_nan(b) {
            v = vec4(b.xy, -b.zw);
        }
    }
    sh[lid] = v;
    workgroupBarrier();
    for (var stride = 16u; stride > 0u; stride = stride / 2u) {
        if lid % 32u < stride {
            sh[lid] = min(sh[lid], sh[lid + stride]);
        }
        workgroupBarrier();
    }
    if lid % 32u == 0u {
        let t = sh[lid];
        bounds[p / 32u] = vec4(t.xy, -t.zw);
    }
    workgroupBarrier();
    for (var stride = 128u; stride >= 32u; stride = stride / 2u) {
        if lid < stride && lid % 32u == 0u {
            sh[lid] = min(sh[lid], sh[lid + stride]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let t = sh[0];
        bounds[cfg.num_segments * cfg.words + block] = vec4(t.xy, -t.zw);
    }
}
