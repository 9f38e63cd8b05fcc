// Bitonic sort, the steps that fit in workgroup memory: a workgroup loads BLOCK consecutive
// entries, runs compare-exchange steps on them with barriers in between, and writes them back.
// With cfg.k == 0 it sorts each block completely (every k from 2 to BLOCK, alternating
// directions as the bitonic network requires); otherwise it finishes the merge of size cfg.k
// for every step j < BLOCK (bitonic_global.wgsl did the larger ones). Directions come from the
// global index, so blocks of one merge agree. Entries: shared/sort_keys.wgsl.
// src/cpu/sort.rs sorts the same entries with the same order.

//#include "shared/sort_keys.wgsl"

// Must stay in sync with `BitonicConfig` in src/gpu/sort.rs.
struct Config {
    n: u32,
    k: u32,
    j: u32,
    _pad: u32,
}

const WG_SIZE: u32 = 256u;
const BLOCK: u32 = 512u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read_write> entries: array<vec4<u32>>;

var<workgroup> sh_entries: array<vec4<u32>, BLOCK>;

fn compare_exchange(i: u32, j: u32, k: u32, block_start: u32) {
    let l = 2u * j * (i / j) + (i % j);
    let r = l + j;
    let ascending = ((block_start + l) & k) == 0u;
    let a = sh_entries[l];
    let b = sh_entries[r];
    if entry_less(b, a) == ascending {
        sh_entries[l] = b;
        sh_entries[r] = a;
    }
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block_start = (wg.x + wg.y * num_wg.x) * BLOCK;
    if block_start >= cfg.n {
        return;
    }
    sh_entries[lid] = entries[block_start + lid];
    sh_entries[lid + WG_SIZE] = entries[block_start + lid + WG_SIZE];
    if cfg.k == 0u {
        for (var k = 2u; k <= BLOCK; k = k * 2u) {
            for (var j = k / 2u; j > 0u; j = j / 2u) {
                workgroupBarrier();
                compare_exchange(lid, j, k, block_start);
            }
        }
    } else {
        for (var j = BLOCK / 2u; j > 0u; j = j / 2u) {
            workgroupBarrier();
            compare_exchange(lid, j, cfg.k, block_start);
        }
    }
    workgroupBarrier();
    entries[block_start + lid] = sh_entries[lid];
    entries[block_start + lid + WG_SIZE] = sh_entries[lid + WG_SIZE];
}
