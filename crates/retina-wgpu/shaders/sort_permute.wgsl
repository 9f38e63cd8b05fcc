// After a sort: gathers boxes, classes and scores into sorted order (slot i of a region takes
// the record named by entry i's payload, which it also keeps) and counts each segment's valid
// entries (not padding, not NaN). Entries: shared/sort_keys.wgsl.

//#include "shared/sort_keys.wgsl"
//#include "shared/detection.wgsl"

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
@group(0) @binding(2) var<storage, read> records: array<Detection>;
@group(0) @binding(3) var<storage, read_write> sorted_boxes: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> sorted_classes: array<i32>;
@group(0) @binding(5) var<storage, read_write> sorted_scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> sorted_payload: array<u32>;
@group(0) @binding(7) var<storage, read_write> counts: array<atomic<u32>>;

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
        let record = records[entry.w];
        sorted_boxes[i] = record.bbox;
        sorted_classes[i] = record.label;
        sorted_scores[i] = record.score;
        sorted_payload[i] = entry.w;
        atomicAdd(&counts[segment], 1u);
    }
}
