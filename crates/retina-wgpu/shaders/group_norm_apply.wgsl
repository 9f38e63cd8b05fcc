// GroupNorm's elementwise map, shared by the forward and the backward pass, one invocation per
// element:
//   out = k.x * u + k.y * (v - k.z) + k.w,   k = coef[image * channels + channel]
// Forward of a large group (coefficients from group_norm_stats.wgsl; smaller groups take
// group_norm_forward.wgsl), u = v = x:
//   k = (0, rstd * gamma[c], mean, beta[c])              y = gamma * xhat + beta
// Backward (coefficients from group_norm_grad_coef.wgsl), u = dy, v = x:
//   k = (rstd * gamma[c], -rstd^2 * B / M, mean, -rstd * A / M)
//   dx = rstd * (gamma * dy - A / M - xhat * B / M)
// with M = channels_per_group * plane, A = sum of gamma * dy and B = sum of gamma * dy * xhat
// over the (image, group). Subtracting the mean from v before scaling, rather than folding it
// into k.w, keeps the precision of x when |mean| >> std.
// With GroupNorm's ReLU fused (cfg.flags): the forward output is clamped at 0, and the backward's
// dy counts only where the forward's output `mask` is above 0.
// The CPU twin is src/cpu/group_norm.rs (`forward` and `backward`).

//#include "shared/group_norm_config.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> coef: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
// The forward's output (FLAG_MASK_GRAD; any binding otherwise, unread).
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.batch * cfg.channels * cfg.plane {
        return;
    }
    let k = coef[i / cfg.plane];
    var du = u[i];
    if (cfg.flags & FLAG_MASK_GRAD) != 0u {
        du = select(0.0, du, mask[i] > 0.0);
    }
    let value = k.x * du + k.y * (v[i] - k.z) + k.w;
    if (cfg.flags & FLAG_RELU_OUT) != 0u {
        out[i] = relu_value(value);
    } else {
        out[i] = value;
    }
}
