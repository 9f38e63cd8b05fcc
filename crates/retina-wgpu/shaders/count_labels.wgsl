// Counts per-anchor labels: counts[0] += anchors with a class label (k >= 0, the positives that
// normalise RetinaNet's loss), counts[1] += anchors that are not ignored (label != -2).
// Integer atomics, exact and order-independent: first per workgroup, then one global add per
// workgroup. The host clears `counts` before the first chunk; chunks accumulate.

// Must stay in sync with `CountConfig` in src/gpu/focal.rs.
struct Config {
    n_rows: u32,
    num_classes: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;
const ROWS_PER_THREAD: u32 = 4u;
const TILE: u32 = WG_SIZE * ROWS_PER_THREAD;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>;

var<workgroup> sh_positives: atomic<u32>;
var<workgroup> sh_kept: atomic<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_index = wg.x + wg.y * num_wg.x;
    let tile_start = wg_index * TILE;
    if tile_start >= cfg.n_rows {
        return;
    }
    var positives = 0u;
    var kept = 0u;
    for (var j = 0u; j < ROWS_PER_THREAD; j = j + 1u) {
        let i = tile_start + j * WG_SIZE + lid;
        if i < cfg.n_rows {
            let label = labels[i];
            positives = positives + select(0u, 1u, label >= 0 && label < i32(cfg.num_classes));
            kept = kept + select(0u, 1u, label != -2);
        }
    }
    atomicAdd(&sh_positives, positives);
    atomicAdd(&sh_kept, kept);
    workgroupBarrier();
    if lid == 0u {
        atomicAdd(&counts[0], atomicLoad(&sh_positives));
        atomicAdd(&counts[1], atomicLoad(&sh_kept));
    }
}
