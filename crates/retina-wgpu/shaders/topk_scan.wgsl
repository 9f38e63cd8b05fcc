// Top-k ordered compaction, scan pass: one workgroup per segment turns its tiles' counts into
// exclusive offsets (in tile order, so the output keeps index order) and records how many
// elements the segment selects: all keys above the threshold and the first need_eq ties.

//#include "shared/sort_keys.wgsl"
//#include "shared/topk_common.wgsl"
//#include "shared/workgroup_scan.wgsl"

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> segments: array<Segment>;
@group(0) @binding(2) var<storage, read_write> states: array<SelectState>;
@group(0) @binding(3) var<storage, read_write> tile_counts: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> selected: array<u32>;

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
    let segment = segments[seg];
    let tiles = (segment.len + TILE - 1u) / TILE;
    var carry = vec2(0u);
    for (var base = 0u; base < tiles; base = base + WG_SIZE) {
        let t = base + lid;
        var count = vec2(0u);
        if t < tiles {
            count = tile_counts[segment.first_tile + t];
        }
        let offset = workgroup_scan_exclusive(count, lid);
        if t < tiles {
            tile_counts[segment.first_tile + t] = carry + offset;
        }
        carry = carry + workgroup_scan_total();
        workgroupBarrier();
    }
    if lid == 0u {
        var state = states[seg];
        state.selected = carry.x + min(carry.y, state.need_eq);
        states[seg] = state;
        selected[seg] = state.selected;
    }
}
