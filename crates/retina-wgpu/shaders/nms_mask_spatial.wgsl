// Greedy NMS at large N, step 3 of the spatial path: the same suppression bitmask as
// nms_mask.wgsl (bit t of mask[row i][word w]: box i suppresses box j = 32 w + t, j > i, same
// class, IoU > threshold), found by visiting only the boxes near box i: the blocks and tiles of
// nms_spatial_tiles.wgsl whose bounds box i overlaps and whose classes (a range: the tile order
// is sorted by class first) include its own, and within them the boxes of its class ranked
// after it. Every other pair has IoU 0 (no positive overlap) or another class, so the mask
// sets every bit the dense one does (and also the bits of columns already removed, which the
// dense kernel skips and which cannot change the walk): the same keep list, at a cost that
// grows with the boxes around each box rather than with all boxes. One invocation per row and
// dispatch, rows in class and Z order; a dispatch visits the blocks cfg.block_begin ..
// cfg.block_end, so that no invocation loops more than the loop budget
// allows. The dispatch that starts at block 0 first zeroes the words of the row that
// nms_gather.wgsl reads (from the row's own word on); later dispatches of the pass OR their
// bits in after it. Rows already removed by earlier passes (never kept, so never read) and
// finished segments are skipped.

//#include "shared/boxes.wgsl"
//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> rows_order: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> done: array<u32>;
@group(0) @binding(5) var<storage, read> removed: array<u32>;
@group(0) @binding(6) var<storage, read> tiled: array<Tiled>;
@group(0) @binding(7) var<storage, read> bounds: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> mask: array<u32>;

// True when box b can overlap something inside bounds r with positive area.
fn may_overlap(b: vec4<f32>, r: vec4<f32>) -> bool {
    return b.z > r.x && b.w > r.y && r.z > b.x && r.w > b.y;
}

// True when the boxes begin..end of a segment's tile order (sorted by class, as unsigned bits)
// may include class c: its class lies between the first box's and the last one's.
fn holds_class(base: u32, begin: u32, end: u32, c: i32) -> bool {
    let key = bitcast<u32>(c);
    return bitcast<u32>(tiled[base + begin].label) <= key && key <= bitcast<u32>(tiled[base + end - 1u].label);
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let index = wg.x + wg.y * num_wg.x;
    let seg = index / cfg.groups_per_segment;
    if seg >= cfg.num_segments || done[seg] != 0u {
        return;
    }
    let rows = cfg.row_end - cfg.row_begin;
    let r = (index % cfg.groups_per_segment) * WG_SIZE + lid;
    if r >= rows {
        return;
    }
    // The pass's rows in class and Z order (nms_spatial_keys.wgsl): row i is box i's slot.
    let entry = rows_order[seg * cfg.region + cfg.row_begin + r];
    let i = entry.w;
    let n = counts[seg];
    if i >= min(cfg.row_end, n) {
        return;
    }
    let removed_base = seg * cfg.words;
    if ((removed[removed_base + i / 32u] >> (i % 32u)) & 1u) != 0u {
        return;
    }
    let row = (seg * rows + i - cfg.row_begin) * cfg.words;
    if cfg.block_begin == 0u {
        for (var w = i / 32u; w < (n + 31u) / 32u; w = w + 1u) {
            mask[row + w] = 0u;
        }
    }
    let base = seg * cfg.region;
    let b = boxes[base + i];
    if box_has_nan(b) {
        return;
    }
    let c = bitcast<i32>(entry.y);
    let block_base = cfg.num_segments * cfg.words + seg * (cfg.region / WG_SIZE);
    let end_block = min(cfg.block_end, (n + WG_SIZE - 1u) / WG_SIZE);
    for (var k = cfg.block_begin; k < end_block; k = k + 1u) {
        if !may_overlap(b, bounds[block_base + k]) || !holds_class(base, k * WG_SIZE, min(k * WG_SIZE + WG_SIZE, n), c) {
            continue;
        }
        for (var t = k * 8u; t < min(k * 8u + 8u, (n + 31u) / 32u); t = t + 1u) {
            if !may_overlap(b, bounds[removed_base + t]) || !holds_class(base, t * 32u, min(t * 32u + 32u, n), c) {
                continue;
            }
            for (var q = t * 32u; q < min(t * 32u + 32u, n); q = q + 1u) {
                let other = tiled[base + q];
                if other.slot > i && other.label == c && box_iou(b, other.b) > cfg.iou_threshold {
                    let word = row + other.slot / 32u;
                    mask[word] = mask[word] | (1u << (other.slot % 32u));
                }
            }
        }
    }
}
