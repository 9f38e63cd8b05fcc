// Maps kept slots (positions in score order) back to what the caller knows them by: out[i] =
// payload[slot] for the first kept[segment] entries of each segment's keep list, and
// out_count[segment] = kept[segment].

// Must stay in sync with `MapConfig` in src/gpu/nms.rs.
struct Config {
    num_segments: u32,
    region: u32,
    max_out: u32,
    _pad: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> payload: array<u32>;
@group(0) @binding(2) var<storage, read> kept: array<u32>;
@group(0) @binding(3) var<storage, read> keep: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.num_segments * cfg.max_out {
        return;
    }
    let seg = i / cfg.max_out;
    if i % cfg.max_out < kept[seg] {
        out[i] = payload[seg * cfg.region + keep[i]];
    }
}
