// OHEM, ranking: sort entries that order each image's anchors by loss, and the records that
// sort_permute.wgsl gathers into that order for NMS. The images of this group take one region
// of `region` entries each (a power of two >= R); anchor j of image s becomes
// (s, descending key of its loss, j, s * R + j) (shared/sort_keys.wgsl), so the bitonic sort
// orders each image's anchors by decreasing loss, ties by lower anchor index. A NaN loss takes
// key 0 and ranks first (torch.sort(descending=True) puts NaN first), so a NaN logit reaches
// the loss. Ignored anchors and slots past R are padding of their image: they sort after its
// anchors and sort_permute.wgsl does not count them; entries past the group's regions sort
// after everything. src/cpu/ohem.rs (`rank_key`) is the twin.

//#include "shared/sort_keys.wgsl"
//#include "shared/detection.wgsl"

// Must stay in sync with `EntriesConfig` in src/gpu/ohem.rs.
struct Config {
    n_entries: u32,
    region: u32,
    anchors_per_image: u32,
    group_images: u32,
    // First anchor row of the group in `row_loss` and `labels` (first image * R).
    row_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;
const LABEL_IGNORE: i32 = -2;
const PADDING: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> row_loss: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> anchors: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> entries: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> records: array<Detection>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.n_entries {
        return;
    }
    let s = i / cfg.region;
    let j = i % cfg.region;
    if s >= cfg.group_images {
        entries[i] = vec4(PADDING);
        return;
    }
    let local = s * cfg.anchors_per_image + j;
    if j >= cfg.anchors_per_image || labels[cfg.row_offset + local] == LABEL_IGNORE {
        entries[i] = vec4(s, PADDING, PADDING, PADDING);
        return;
    }
    let loss = row_loss[cfg.row_offset + local];
    // ordered_key maps NaN (only NaN) to 0, whose descending key would be padding's.
    let desc = ~ordered_key(loss);
    let key = select(desc, 0u, desc == PADDING);
    entries[i] = vec4(s, key, j, local);
    records[local] = Detection(anchors[j], loss, 0, 0u, 0u);
}
