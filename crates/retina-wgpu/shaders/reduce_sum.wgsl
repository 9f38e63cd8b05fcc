// One level of a tree sum over f32 values: each workgroup adds TILE inputs and writes one
// partial. The host repeats levels until one workgroup remains; that last level (FLAG_FINAL)
// writes [sum / normaliser, sum, normaliser] to `output`.
// The normaliser is a constant, or max(1, counts[norm_index] * norm_value) when it was counted
// on the device (the number of positive anchors, say) in the same command buffer.

//#include "shared/workgroup_reduce.wgsl"

// Must stay in sync with `ReduceConfig` in src/gpu/reduce.rs.
struct Config {
    n: u32,
    flags: u32,
    norm_index: u32,
    norm_value: f32,
}

const WG_SIZE: u32 = 256u;
const ELEMS_PER_THREAD: u32 = 4u;
const TILE: u32 = WG_SIZE * ELEMS_PER_THREAD;

const FLAG_FINAL: u32 = 1u;
const FLAG_NORM_FROM_COUNTS: u32 = 2u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let wg_index = wg.x + wg.y * num_wg.x;
    let tile_start = wg_index * TILE;
    if tile_start >= cfg.n {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = tile_start + j * WG_SIZE + ids.index;
        if i < cfg.n {
            acc = acc + input[i];
        }
    }
    let total = workgroup_sum(acc, ids);
    if ids.index == 0u {
        if (cfg.flags & FLAG_FINAL) != 0u {
            var norm = cfg.norm_value;
            if (cfg.flags & FLAG_NORM_FROM_COUNTS) != 0u {
                norm = max(1.0, f32(counts[cfg.norm_index]) * cfg.norm_value);
            }
            output[0] = total / norm;
            output[1] = total;
            output[2] = norm;
        } else {
            output[wg_index] = total;
        }
    }
}
