// Top-k ordered compaction, count pass: per tile, how many keys are above the segment's
// threshold and how many equal it (only counted when ties are needed). topk_scan.wgsl turns the
// counts into write offsets. A tile the histogram passes marked dead holds neither: 0, 0.

//#include "shared/sort_keys.wgsl"
//#include "shared/topk_common.wgsl"
//#include "shared/topk_tiles.wgsl"
//#include "shared/topk_listed.wgsl"

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> keys: array<f32>;
@group(0) @binding(2) var<storage, read> segments: array<Segment>;
@group(0) @binding(3) var<storage, read> states: array<SelectState>;
@group(0) @binding(4) var<storage, read_write> tile_counts: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> tile_dead: array<u32>;
@group(0) @binding(6) var<storage, read> live: array<u32>;

var<workgroup> sh_greater: atomic<u32>;
var<workgroup> sh_equal: atomic<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile = tile_of(wg.x + wg.y * num_wg.x);
    if tile == NO_TILE {
        return;
    }
    let seg = find_segment(tile);
    let state = states[seg];
    if tile_dead[tile] != 0u {
        if lid == 0u {
            tile_counts[tile] = vec2(0u);
        }
        return;
    }
    let segment = segments[seg];
    let tile_start = (tile - segment.first_tile) * TILE;
    var greater = 0u;
    var equal = 0u;
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let e = tile_start + j * WG_SIZE + lid;
        if e < segment.len {
            let key = key_of(keys[segment.start + e - cfg.key_offset]);
            greater = greater + select(0u, 1u, key > state.threshold);
            equal = equal + select(0u, 1u, state.need_eq > 0u && key == state.threshold);
        }
    }
    atomicAdd(&sh_greater, greater);
    atomicAdd(&sh_equal, equal);
    workgroupBarrier();
    if lid == 0u {
        tile_counts[tile] = vec2(atomicLoad(&sh_greater), atomicLoad(&sh_equal));
    }
}
