// SGD with momentum and weight decay (PyTorch's semantics, no dampening, no Nesterov):
//   g = grad * clip + weight_decay * w;  v = momentum * v + g;  w = w - lr * v
// where clip = min(1, max_norm / (norm + 1e-6)) with the gradient norm read from the device
// (sum_squares.wgsl and reduce_sum.wgsl computed it in the same command buffer, scaled by a
// power of two so that no square overflows), or 1. src/cpu/nn.rs is the twin.

// Must stay in sync with `SgdConfig` in src/gpu/nn.rs.
struct Config {
    n: u32,
    flags: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    max_norm: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;
const FLAG_CLIP: u32 = 1u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
// [q / 1, q, 1] as reduce_sum.wgsl writes it; element 1 is q, the sum of (g 2^-e)^2.
@group(0) @binding(2) var<storage, read> norm_sq: array<f32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> velocity: array<f32>;
// [S / 1, S, 1]: S = sum |g|, which sets e (see sum_squares.wgsl).
@group(0) @binding(5) var<storage, read> abs_sum: array<f32>;

// Same as in sum_squares.wgsl.
fn norm_exponent(s: f32) -> i32 {
    let biased = i32((bitcast<u32>(s) >> 23u) & 0xffu);
    if biased == 0 {
        return 0;
    }
    return clamp(biased - 126, -126, 126);
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.n {
        return;
    }
    var clip = 1.0;
    if (cfg.flags & FLAG_CLIP) != 0u {
        let scale = bitcast<f32>(u32(norm_exponent(abs_sum[1]) + 127) << 23u);
        clip = min(1.0, cfg.max_norm / (sqrt(norm_sq[1]) * scale + 1e-6));
    }
    let w = weights[i];
    let g = grad[i] * clip + cfg.weight_decay * w;
    let v = cfg.momentum * velocity[i] + g;
    velocity[i] = v;
    weights[i] = w - cfg.lr * v;
}
