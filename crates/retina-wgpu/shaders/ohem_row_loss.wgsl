// OHEM, per-anchor loss: each anchor's loss is the sum of its K per-class cross-entropy terms
// (written by focal_loss.wgsl with gamma 0 as per-element losses), added in class order in
// f32 exactly as src/cpu/ohem.rs adds them, so that both backends rank anchors by the same
// values. One invocation per anchor row; the host splits the rows at the binding limit.

// Must stay in sync with `RowLossConfig` in src/gpu/ohem.rs.
struct Config {
    n_rows: u32,
    num_classes: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> elementwise: array<f32>;
@group(0) @binding(2) var<storage, read_write> row_loss: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if row >= cfg.n_rows {
        return;
    }
    let first = row * cfg.num_classes;
    var acc = 0.0;
    for (var c = 0u; c < cfg.num_classes; c = c + 1u) {
        acc = acc + elementwise[first + c];
    }
    row_loss[row] = acc;
}
