// After a sort: gathers boxes, classes and scores into sorted order (slot i of a region takes
// the item named by entry i's payload, which it also records) and counts each segment's valid
// entries (not padding, not NaN). Entries: shared/sort_keys.wgsl.

//#include "shared/sort_keys.wgsl"

// Must stay in sync with `PermuteConfig` in src/gpu/nms.rs.
struct Config {
    total: u32,
    region: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> entries: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> classes: array<i32>;
@group(0) @binding(4) var<storage, read> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> sorted_boxes: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> sorted_classes: array<i32>;
@group(0) @binding(7) var<storage, read_write> sorted_scores: array<f32>;
@group(0) @binding(8) var<storage, read_write> sorted_payload: array<u32>;
@group(0) @binding(9) var<storage, read_write> counts: array<atomic<u32>>;

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
    let entry = entries[i];
    let segment = i / cfg.region;
    if entry.x == segment && entry.y != 0xffffffffu {
        sorted_boxes[i] = boxes[entry.w];
        sorted_classes[i] = classes[entry.w];
        sorted_scores[i] = scores[entry.w];
        sorted_payload[i] = entry.w;
        atomicAdd(&counts[segment], 1u);
    }
}
