// Greedy NMS at large N, step 1 of the spatial path: sort entries that order each segment's
// valid boxes by class, then along a Z-order (Morton) curve of their centres, so that 32
// consecutive entries (a tile) hold boxes of one class close to each other. Entry p of segment
// s = p / region is (s, class, morton, slot) for slot = p % region < counts[s], the padding
// (s, ~0, ~0, ~0) after them, and (~0, ~0, ~0, ~0) past the last region. Each centre
// coordinate maps to the top 15 bits of its order-preserving key (shared/sort_keys.wgsl): a
// monotone map, so a Z-order cell is a rectangle and nearby boxes stay nearby. A box with a NaN
// coordinate suppresses nothing and is never suppressed: it gets key 0x7fffffff (after every
// Morton code, which has 30 bits), and nms_spatial_tiles.wgsl leaves it out of every bound.
// Any order would give the same result: the order only decides how much work is skipped.
// `rows` gets the same entries with the pass of the row (slot / band_rows) in front: sorted, a
// pass's rows lie at the same positions as their slots (every earlier pass is full), in class and
// Z order, so that the invocations of nms_mask_spatial.wgsl that run side by side take boxes
// near each other and visit the same tiles (rows in score order would make every SIMD group visit
// the tiles of all of its rows).

//#include "shared/boxes.wgsl"
//#include "shared/sort_keys.wgsl"
//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> classes: array<i32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> entries: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> rows: array<vec4<u32>>;

// Spreads the low 15 bits of v to the even bits.
fn spread(v: u32) -> u32 {
    var x = v & 0x7fffu;
    x = (x | (x << 8u)) & 0x00ff00ffu;
    x = (x | (x << 4u)) & 0x0f0f0f0fu;
    x = (x | (x << 2u)) & 0x33333333u;
    x = (x | (x << 1u)) & 0x55555555u;
    return x;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if p >= arrayLength(&entries) {
        return;
    }
    let seg = p / cfg.region;
    if seg >= cfg.num_segments {
        entries[p] = vec4(0xffffffffu);
        rows[p] = vec4(0xffffffffu);
        return;
    }
    let bands = (cfg.region + cfg.band_rows - 1u) / cfg.band_rows;
    let slot = p % cfg.region;
    if slot >= counts[seg] {
        entries[p] = vec4(seg, 0xffffffffu, 0xffffffffu, 0xffffffffu);
        rows[p] = vec4(seg * bands + bands - 1u, 0xffffffffu, 0xffffffffu, 0xffffffffu);
        return;
    }
    let b = boxes[p];
    var code = 0x7fffffffu;
    if !box_has_nan(b) {
        let centre = 0.5 * (b.xy + b.zw);
        code = spread(ordered_key(centre.x) >> 17u) | (spread(ordered_key(centre.y) >> 17u) << 1u);
    }
    entries[p] = vec4(seg, bitcast<u32>(classes[p]), code, slot);
    rows[p] = vec4(seg * bands + slot / cfg.band_rows, bitcast<u32>(classes[p]), code, slot);
}
