// Elementwise layers of the network, one invocation per element, selected by an overridable
// constant (one pipeline each):
//   RELU          out = a if a > 0 else 0     (0 for NaN, as on the CPU)
//   RELU_GRAD     out = b if a > 0 else 0         (a: the layer's input, b: the output gradient)
//   ADD           out = a + b
//   ACCUMULATE    out = out + a                   (summing gradients in place)
//   SCALE         out = a * cfg.scale
//   LEAKY         out = a if a > 0 else cfg.scale * a          (LeakyReLU; NaN stays NaN)
//   LEAKY_GRAD    out = b if a > 0 else cfg.scale * b
// src/cpu/nn.rs is the twin.

override OP: u32 = 0u;

// Must stay in sync with `ElementwiseConfig` in src/gpu/nn.rs.
struct Config {
    n: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;
const RELU: u32 = 0u;
const RELU_GRAD: u32 = 1u;
const ADD: u32 = 2u;
const ACCUMULATE: u32 = 3u;
const SCALE: u32 = 4u;
const LEAKY: u32 = 5u;
const LEAKY_GRAD: u32 = 6u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

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
    switch OP {
        case RELU: {
            // Not max(x, 0): WGSL leaves max with a NaN undefined; this is the CPU's rule
            // (NaN gives 0) on every device.
            out[i] = select(0.0, a[i], a[i] > 0.0);
        }
        case RELU_GRAD: {
            out[i] = select(0.0, b[i], a[i] > 0.0);
        }
        case ADD: {
            out[i] = a[i] + b[i];
        }
        case ACCUMULATE: {
            out[i] = out[i] + a[i];
        }
        case LEAKY: {
            out[i] = select(cfg.scale * a[i], a[i], a[i] > 0.0);
        }
        case LEAKY_GRAD: {
            out[i] = select(cfg.scale * b[i], b[i], a[i] > 0.0);
        }
        default: {
            out[i] = a[i] * cfg.scale;
        }
    }
}
