// Sort entries for ranking scores: entry i = (0, descending key of scores[i], i, i) for i < n
// and padding after (shared/sort_keys.wgsl), and record i = (boxes[i], scores[i], classes[i])
// for sort_permute.wgsl. NaN scores get the largest key below padding: they sort after every
// number and are never counted as valid by sort_permute.wgsl.

//#include "shared/sort_keys.wgsl"
//#include "shared/detection.wgsl"

// Must stay in sync with `EntriesConfig` in src/gpu/nms.rs.
struct Config {
    n: u32,
    total: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> classes: array<i32>;
@group(0) @binding(4) var<storage, read_write> entries: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> records: array<Detection>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.total {
        return;
    }
    if i < cfg.n {
        entries[i] = vec4(0u, ~ordered_key(scores[i]), i, i);
        records[i] = Detection(boxes[i], scores[i], classes[i], 0u, 0u);
    } else {
        entries[i] = vec4(0u, 0xffffffffu, 0xffffffffu, 0xffffffffu);
    }
}
