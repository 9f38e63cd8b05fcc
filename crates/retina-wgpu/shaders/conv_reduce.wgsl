// Adds the split-K partial outputs of conv_gemm.wgsl (out[i] = sum over s of partial[s][i]) and,
// for the forward pass, the bias of each element's channel.

// Must stay in sync with `ConvReduceConfig` in src/gpu/nn.rs.
struct Config {
    total: u32,
    splits: u32,
    // Channel of element i: (i / channel_stride) % channels (forward pass only).
    channel_stride: u32,
    channels: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;
const FLAG_BIAS: u32 = 1u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.total {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < cfg.splits; s = s + 1u) {
        sum = sum + partial[s * cfg.total + i];
    }
    if (cfg.flags & FLAG_BIAS) != 0u {
        sum = sum + bias[(i / cfg.channel_stride) % cfg.channels];
    }
    out[i] = sum;
}
