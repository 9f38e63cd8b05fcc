// The uniform every GroupNorm kernel reads (group_norm_forward, group_norm_backward and
// group_norm_param_grads for groups one workgroup owns; group_norm_stats, group_norm_apply,
// group_norm_grad_sums and group_norm_grad_coef for larger ones), and the layout they share.
//
// Tensors are NCHW, so the channels_per_group * plane values of image n's group g are contiguous
// and start at element (n * groups + g) * channels_per_group * plane; the (image, group) "slot"
// n * groups + g is also (n * channels + c) / channels_per_group for any channel c of the group.
//   stats: 2 per slot, (mean, rstd = 1 / sqrt(var + eps)).
//   coef:  one vec4 per (image, channel), the map group_norm_apply.wgsl applies.

// Must stay in sync with `GroupNormConfig` in src/gpu/group_norm.rs.
struct Config {
    batch: u32,
    channels: u32,
    groups: u32,
    group_channels: u32,
    plane: u32,
    eps: f32,
    // FLAG_RELU_OUT: the forward (group_norm_forward.wgsl or group_norm_apply.wgsl) clamps its
    // output at 0 (GroupNorm then ReLU);
    // FLAG_MASK_GRAD: the output gradient counts only where `mask` (the forward's output) is
    // above 0 (the ReLU's backward, fused into group_norm_backward.wgsl, or into
    // group_norm_grad_sums.wgsl and the apply);
    // FLAG_ACCUMULATE: the parameter gradients (group_norm_param_grads.wgsl or
    // group_norm_grad_coef.wgsl) are added to what dgamma and dbeta hold (a layer shared by
    // several inputs sums its gradients in place).
    flags: u32,
    _pad0: u32,
}

const FLAG_RELU_OUT: u32 = 1u;
const FLAG_MASK_GRAD: u32 = 2u;
const FLAG_ACCUMULATE: u32 = 4u;

// `v` where ReLU passes it: not max(v, 0), which WGSL leaves undefined for NaN; this is the
// CPU's rule (NaN gives 0), as elementwise.wgsl's ReLU.
fn relu_value(v: f32) -> f32 {
    return select(0.0, v, v > 0.0);
}
