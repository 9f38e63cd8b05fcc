// Top-k, the indirect dispatch arguments of a window's later passes: its list of live tiles
// (written by the first histogram pass, FLAG_APPEND) as a grid of one workgroup per tile,
// folded at grid_width workgroups per dimension. One invocation does it.

//#include "shared/sort_keys.wgsl"
//#include "shared/topk_common.wgsl"

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> live: array<u32>;
@group(0) @binding(2) var<storage, read_write> args: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(local_invocation_index) lid: u32) {
    if lid != 0u {
        return;
    }
    let tiles = live[cfg.list_offset];
    let x = min(tiles, cfg.grid_width);
    var y = 0u;
    if x > 0u {
        y = (tiles + x - 1u) / x;
    }
    args[3u * cfg.args_index] = x;
    args[3u * cfg.args_index + 1u] = y;
    args[3u * cfg.args_index + 2u] = 1u;
}
