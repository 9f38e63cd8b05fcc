// Top-k ordered compaction, write pass: every selected element (keys above the threshold, and
// the first need_eq ties) is written as (ordered key, index within its segment) at
// segment.out_offset + its rank among the selected elements in index order. Each invocation
// takes ELEMS_PER_THREAD consecutive elements so that a workgroup scan gives every element its
// rank. Tiles the histogram passes marked dead hold nothing selected and are skipped; with
// FLAG_LISTED the workgroups take the window's list of live tiles.

//#include "shared/sort_keys.wgsl"
//#include "shared/topk_common.wgsl"
//#include "shared/topk_tiles.wgsl"
//#include "shared/topk_listed.wgsl"
//#include "shared/workgroup_scan.wgsl"

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> keys: array<f32>;
@group(0) @binding(2) var<storage, read> segments: array<Segment>;
@group(0) @binding(3) var<storage, read> states: array<SelectState>;
@group(0) @binding(4) var<storage, read> tile_offsets: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> candidates: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> tile_dead: array<u32>;
@group(0) @binding(7) var<storage, read> live: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile = tile_of(wg.x + wg.y * num_wg.x);
    if tile == NO_TILE || tile_dead[tile] != 0u {
        return;
    }
    let seg = find_segment(tile);
    let state = states[seg];
    let segment = segments[seg];
    let first = (tile - segment.first_tile) * TILE + lid * ELEMS_PER_THREAD;
    var k: array<u32, ELEMS_PER_THREAD>;
    var count = vec2(0u);
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let e = first + j;
        k[j] = 0u;
        if e < segment.len {
            k[j] = key_of(keys[segment.start + e - cfg.key_offset]);
        }
        count.x = count.x + select(0u, 1u, k[j] > state.threshold);
        count.y = count.y + select(0u, 1u, state.need_eq > 0u && k[j] == state.threshold && k[j] != 0u);
    }
    // rank.x: elements above the threshold before this one; rank.y: ties before this one. The
    // selected set in index order puts an element at (above before it) + (selected ties before
    // it).
    var rank = tile_offsets[tile] + workgroup_scan_exclusive(count, lid);
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        if k[j] > state.threshold {
            candidates[segment.out_offset + rank.x + min(rank.y, state.need_eq)] = vec2(k[j], first + j);
            rank.x = rank.x + 1u;
        } else if state.need_eq > 0u && k[j] == state.threshold && k[j] != 0u {
            if rank.y < state.need_eq {
                candidates[segment.out_offset + rank.x + rank.y] = vec2(k[j], first + j);
            }
            rank.y = rank.y + 1u;
        }
    }
}
