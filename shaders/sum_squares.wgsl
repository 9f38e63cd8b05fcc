// Partial sums of squares of a vector (for the global gradient norm): each workgroup adds
// TILE squares in a tree and writes one partial; reduce_sum.wgsl adds the partials of every
// parameter. No float atomics.

//#include "shared/workgroup_reduce.wgsl"

// Must stay in sync with `SumSquaresConfig` in src/gpu/sgd.rs.
struct Config {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;
const ELEMS_PER_THREAD: u32 = 4u;
const TILE: u32 = WG_SIZE * ELEMS_PER_THREAD;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let wg_index = wg.x + wg.y * num_wg.x;
    if wg_index * TILE >= cfg.n {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = wg_index * TILE + j * WG_SIZE + ids.index;
        if i < cfg.n {
            acc = acc + values[i] * values[i];
        }
    }
    let total = workgroup_sum(acc, ids);
    if ids.index == 0u {
        partials[wg_index] = total;
    }
}
