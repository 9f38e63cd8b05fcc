// Top-k by radix select, histogram pass: per segment not yet done, a 256-bin histogram of the
// current 8-bit digit of the keys that match the prefix found so far. Workgroup-local bins in
// workgroup memory, then one global atomicAdd per non-empty bin. topk_select.wgsl reads it.
// A tile whose keys are all below the prefix's range (or 0: excluded by the threshold, NaN)
// is marked dead: the range only narrows upwards from pass to pass and the final selection
// takes keys at or above it, so no later pass (nor the count and gather) needs the tile. With a
// detector's score threshold most tiles die in the first pass. The first pass (FLAG_APPEND)
// also lists the tiles that stay live, and the later passes (FLAG_LISTED) run one workgroup per
// listed tile instead of one per tile.

//#include "shared/sort_keys.wgsl"
//#include "shared/topk_common.wgsl"
//#include "shared/topk_tiles.wgsl"

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> keys: array<f32>;
@group(0) @binding(2) var<storage, read> segments: array<Segment>;
@group(0) @binding(3) var<storage, read> states: array<SelectState>;
@group(0) @binding(4) var<storage, read_write> histogram: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> tile_dead: array<u32>;
// The window's list of live tiles: its count at cfg.list_offset, the tiles after it.
@group(0) @binding(6) var<storage, read_write> live: array<atomic<u32>>;

var<workgroup> sh_bins: array<atomic<u32>, 256>;
// Whether the tile is already dead (read once for the workgroup), and whether this pass saw a
// key at or above the prefix's range.
var<workgroup> sh_dead: u32;
var<workgroup> sh_live: atomic<u32>;
// The listed tile, read once for the workgroup.
var<workgroup> sh_tile: u32;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_tile = wg.x + wg.y * num_wg.x;
    var tile = cfg.first_tile + local_tile;
    if (cfg.flags & FLAG_LISTED) != 0u {
        if lid == 0u {
            var listed = NO_TILE;
            if local_tile < atomicLoad(&live[cfg.list_offset]) {
                listed = atomicLoad(&live[cfg.list_offset + 1u + local_tile]);
            }
            sh_tile = listed;
        }
        tile = workgroupUniformLoad(&sh_tile);
        if tile == NO_TILE {
            return;
        }
    } else if local_tile >= cfg.n_tiles {
        return;
    }
    let seg = find_segment(tile);
    let state = states[seg];
    if state.done != 0u {
        return;
    }
    if lid == 0u {
        sh_dead = tile_dead[tile];
    }
    if workgroupUniformLoad(&sh_dead) != 0u {
        return;
    }
    let segment = segments[seg];
    let tile_start = (tile - segment.first_tile) * TILE;
    var seen = 0u;
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let e = tile_start + j * WG_SIZE + lid;
        if e < segment.len {
            let key = key_of(keys[segment.start + e - cfg.key_offset]);
            if key != 0u && (key & state.mask) >= state.prefix {
                seen = 1u;
                if (key & state.mask) == state.prefix {
                    atomicAdd(&sh_bins[(key >> cfg.shift) & 255u], 1u);
                }
            }
        }
    }
    if seen != 0u {
        atomicOr(&sh_live, 1u);
    }
    workgroupBarrier();
    if lid == 0u {
        if atomicLoad(&sh_live) == 0u {
            tile_dead[tile] = 1u;
        } else if (cfg.flags & FLAG_APPEND) != 0u {
            let slot = atomicAdd(&live[cfg.list_offset], 1u);
            atomicStore(&live[cfg.list_offset + 1u + slot], tile);
        }
    }
    let count = atomicLoad(&sh_bins[lid]);
    if count > 0u {
        atomicAdd(&histogram[seg * 256u + lid], count);
    }
}
