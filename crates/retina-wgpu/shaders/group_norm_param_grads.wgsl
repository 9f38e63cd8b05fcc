// GroupNorm backward, second step after group_norm_backward.wgsl: the gamma and beta gradients,
// one invocation per channel (shared/group_norm_param_grads.wgsl: the images' sums added in
// order). The CPU twin is src/cpu/group_norm.rs (`backward`).

//#include "shared/group_norm_config.wgsl"
//#include "shared/group_norm_param_grads.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbeta: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if c < cfg.channels {
        channel_param_grads(c);
    }
}
