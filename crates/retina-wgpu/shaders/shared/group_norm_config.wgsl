// The uniform every GroupNorm kernel reads (group_norm_stats, group_norm_apply,
// group_norm_grad_sums, group_norm_grad_coef), and the layout they share.
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
    _pad0: u32,
    _pad1: u32,
}
