// Bitonic sort, one compare-exchange step (k, j) with j >= BLOCK of bitonic_local.wgsl: one
// invocation per pair, reading and writing global memory. Entries: shared/sort_keys.wgsl.

//#include "shared/sort_keys.wgsl"

// Must stay in sync with `BitonicConfig` in src/gpu/sort.rs.
struct Config {
    n: u32,
    k: u32,
    j: u32,
    _pad: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read_write> entries: array<vec4<u32>>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.n / 2u {
        return;
    }
    let l = 2u * cfg.j * (i / cfg.j) + (i % cfg.j);
    let r = l + cfg.j;
    let ascending = (l & cfg.k) == 0u;
    let a = entries[l];
    let b = entries[r];
    if entry_less(b, a) == ascending {
        entries[l] = b;
        entries[r] = a;
    }
}
