// GroupNorm backward of a large group (smaller ones take group_norm_backward.wgsl), second
// step: finishes the reductions of group_norm_grad_sums.wgsl's
// per-(image, channel) sums S[n, c] = (sum dy, sum dy * xhat). One invocation per channel, then
// one per (image, group), in one dispatch of channels + batch * groups invocations:
//   channel c:      dbeta[c]  = sum over images of S[n, c].x
//                   dgamma[c] = sum over images of S[n, c].y                    (batch steps)
//                   (added to what dbeta and dgamma hold with FLAG_ACCUMULATE)
//   slot (n, g):    A = sum over the group's channels of gamma[c] * S[n, c].x
//                   B = sum over the group's channels of gamma[c] * S[n, c].y
//                   coef[n, c] = (rstd * gamma[c], -rstd^2 * B / M, mean, -rstd * A / M)
//                   for each channel of the group, M = channels_per_group * plane
//                                                                (2 x channels_per_group steps)
// group_norm_apply.wgsl then maps (dy, x) to dx with those coefficients. No atomics: every sum
// has one owner, and each loop is bounded by the batch or the group's channels.
// The CPU twin is src/cpu/group_norm.rs (`backward`).

//#include "shared/group_norm_config.wgsl"
//#include "shared/group_norm_param_grads.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> sums: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(6) var<storage, read_write> coef: array<vec4<f32>>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i < cfg.channels {
        channel_param_grads(i);
        return;
    }
    let slot = i - cfg.channels;
    if slot >= cfg.batch * cfg.groups {
        return;
    }
    let mean = stats[2u * slot];
    let rstd = stats[2u * slot + 1u];
    let first_plane = slot * cfg.group_channels;
    let first_channel = (slot % cfg.groups) * cfg.group_channels;
    var a = 0.0;
    var b = 0.0;
    for (var j = 0u; j < cfg.group_channels; j = j + 1u) {
        let g = gamma[first_channel + j];
        a = a + g * sums[2u * (first_plane + j)];
        b = b + g * sums[2u * (first_plane + j) + 1u];
    }
    let m = f32(cfg.group_channels * cfg.plane);
    let slope = -rstd * rstd * b / m;
    let offset = -rstd * a / m;
    for (var j = 0u; j < cfg.group_channels; j = j + 1u) {
        coef[first_plane + j] = vec4<f32>(rstd * gamma[first_channel + j], slope, mean, offset);
    }
}
