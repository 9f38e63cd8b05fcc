// Adds the split-K partial outputs of conv_gemm.wgsl (out[i] = sum over s of partial[s][i]) and,
// for the forward pass, the bias of each element's channel. With FLAG_PHASE the partials are one
// grad-input phase's pixels, compact ((b, c, yy, xx) of rows x cols), and each sum lands on its
// input pixel (ry + yy stride, rx + xx stride) of the in_h x in_w planes. With FLAG_ACCUMULATE
// (not with FLAG_PHASE) each sum is added to what `out` holds: a layer used several times sums
// its weight gradients in place.

// Must stay in sync with `ConvReduceConfig` in src/gpu/nn.rs.
struct Config {
    total: u32,
    splits: u32,
    // Channel of element i: (i / channel_stride) % channels (forward pass only).
    channel_stride: u32,
    channels: u32,
    flags: u32,
    // FLAG_PHASE: ry | rx << 8 | stride << 16; rows | cols << 16; in_h | in_w << 16.
    phase: u32,
    phase_rows_cols: u32,
    phase_in_hw: u32,
}

const WG_SIZE: u32 = 256u;
const FLAG_BIAS: u32 = 1u;
const FLAG_PHASE: u32 = 2u;
const FLAG_ACCUMULATE: u32 = 4u;

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
    if (cfg.flags & FLAG_PHASE) != 0u {
        let ry = cfg.phase & 0xffu;
        let rx = (cfg.phase >> 8u) & 0xffu;
        let stride = cfg.phase >> 16u;
        let rows = cfg.phase_rows_cols & 0xffffu;
        let cols = cfg.phase_rows_cols >> 16u;
        let in_h = cfg.phase_in_hw & 0xffffu;
        let in_w = cfg.phase_in_hw >> 16u;
        let hw = rows * cols;
        let y = ry + ((i % hw) / cols) * stride;
        let x = rx + (i % cols) * stride;
        out[((i / hw) * in_h + y) * in_w + x] = sum;
    } else if (cfg.flags & FLAG_ACCUMULATE) != 0u {
        out[i] = out[i] + sum;
    } else {
        out[i] = sum;
    }
}
