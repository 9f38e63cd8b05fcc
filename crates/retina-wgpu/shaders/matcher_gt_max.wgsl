// Matcher, pass 1: for every ground-truth box, its highest IoU with any anchor of its image
// (what `allow_low_quality_matches` needs). A workgroup takes WG_SIZE anchors of one image,
// stages the image's boxes in workgroup memory WG_SIZE at a time, reduces each box's IoUs over
// its anchors (shared/workgroup_reduce.wgsl) and folds the result into `gt_max` with one global
// atomicMax per box. IoUs are >= 0, so their bits order like the values: integer atomics, exact.
// No IoU matrix is stored; matcher_assign.wgsl recomputes the IoUs. src/cpu/matcher.rs is the twin.

//#include "shared/boxes.wgsl"
//#include "shared/matcher_common.wgsl"
//#include "shared/workgroup_reduce.wgsl"

// Per box: its highest IoU (bits) at [g]; matcher_assign.wgsl also finds the classes after them.
@group(0) @binding(4) var<storage, read_write> gt_max: array<atomic<u32>>;

var<workgroup> sh_gt: array<vec4<f32>, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let tile = wg.x + wg.y * num_wg.x;
    let image_local = tile / cfg.tiles_per_image;
    if image_local >= cfg.num_images {
        return;
    }
    let image = cfg.image_first + image_local;
    let j = (tile % cfg.tiles_per_image) * WG_SIZE + ids.index;
    let valid = j < cfg.chunk_anchors;
    var anchor = vec4(0.0);
    if valid {
        anchor = anchors[cfg.anchor_base + j];
    }
    let g_begin = gt_offsets[image];
    let g_end = gt_offsets[image + 1u];
    for (var g0 = g_begin; g0 < g_end; g0 = g0 + WG_SIZE) {
        let count = min(WG_SIZE, g_end - g0);
        if ids.index < count {
            sh_gt[ids.index] = gt_boxes[g0 + ids.index];
        }
        atomicStore(&sh_max[ids.index], 0u);
        workgroupBarrier();
        for (var g = 0u; g < count; g = g + 1u) {
            let iou = select(0.0, box_iou(anchor, sh_gt[g]), valid);
            workgroup_max_into(g, bitcast<u32>(iou), ids);
        }
        workgroupBarrier();
        if ids.index < count {
            atomicMax(&gt_max[g0 + ids.index], atomicLoad(&sh_max[ids.index]));
        }
        workgroupBarrier();
    }
}
