// OHEM, gradient: in place, each element of a selected anchor's row keeps its cross-entropy
// gradient (written unnormalised by focal_loss.wgsl) divided by max(1, anchors selected in the
// batch), the normaliser reduce_sum.wgsl wrote to loss[2]; rows not selected get 0.
// src/cpu/ohem.rs is the twin (the same f32 reciprocal).

// Must stay in sync with `ScaleConfig` in src/gpu/ohem.rs.
struct Config {
    n_elements: u32,
    num_classes: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> selected: array<u32>;
// [loss, sum, normaliser].
@group(0) @binding(2) var<storage, read> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.n_elements {
        return;
    }
    let inv = 1.0 / loss[2];
    grad[i] = select(0.0, grad[i] * inv, selected[i / cfg.num_classes] != 0u);
}
