// Box coding, one invocation per box: encode (boxes relative to anchors -> deltas) or decode
// (deltas relative to anchors -> boxes, dw/dh clamped before exp), torchvision's BoxCoder.
// src/cpu/boxes.rs is the twin.

//#include "shared/boxes.wgsl"

// Must stay in sync with `CoderConfig` in src/gpu/boxes.rs.
struct Config {
    n: u32,
    decode: u32,
    clamp: f32,
    _pad: u32,
    weights: vec4<f32>,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> anchors: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<vec4<f32>>;

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
    if cfg.decode != 0u {
        output[i] = decode_box(input[i], anchors[i], cfg.weights, cfg.clamp);
    } else {
        output[i] = encode_box(input[i], anchors[i], cfg.weights);
    }
}
