// RetinaNet anchors for one image size: one invocation per anchor, in the crate's fixed order
// (level, row, column, anchor-within-cell). The host computes the per-level table and the cell
// templates (centred at 0); each anchor is its cell centre plus its template.
// src/cpu/anchors.rs is the twin.

// Must stay in sync with `AnchorConfigGpu` in src/gpu/anchors.rs.
struct Config {
    n_anchors: u32,
    first: u32,
    num_levels: u32,
    anchors_per_cell: u32,
    offset: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Must stay in sync with `LevelGpu` in src/gpu/anchors.rs.
struct Level {
    first_anchor: u32,
    grid_w: u32,
    grid_h: u32,
    stride: f32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> levels: array<Level>;
@group(0) @binding(2) var<storage, read> templates: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> anchors: array<vec4<f32>>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if local >= cfg.n_anchors {
        return;
    }
    let i = cfg.first + local;
    var level = 0u;
    for (var l = 1u; l < cfg.num_levels; l = l + 1u) {
        if i >= levels[l].first_anchor {
            level = l;
        }
    }
    let lv = levels[level];
    let rem = i - lv.first_anchor;
    let cell = rem / cfg.anchors_per_cell;
    let a = rem % cfg.anchors_per_cell;
    let x = cell % lv.grid_w;
    let y = cell / lv.grid_w;
    let centre = vec2((f32(x) + cfg.offset) * lv.stride, (f32(y) + cfg.offset) * lv.stride);
    anchors[local] = vec4(centre, centre) + templates[level * cfg.anchors_per_cell + a];
}
