// Pairwise IoU matrix [N x M] (torchvision's box_iou, with 0 instead of NaN for zero unions).
// One invocation per output element, consecutive invocations on consecutive columns: the row's
// box is the same for the whole row (a broadcast load), the column boxes are read coalesced, and
// the writes, which dominate the traffic, are coalesced. src/cpu/boxes.rs is the twin.

//#include "shared/boxes.wgsl"

// Must stay in sync with `IouConfig` in src/gpu/boxes.rs.
struct Config {
    n_elements: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> boxes_a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> boxes_b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> iou: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if e >= cfg.n_elements {
        return;
    }
    iou[e] = box_iou(boxes_a[e / cfg.cols], boxes_b[e % cfg.cols]);
}
