// A rendered frame (any float-sampleable 2-D texture: rgba8unorm, bgra8unorm, rgba16float, ...)
// into one image of the network's input: the [3, side, side] planes at `offset` in `dst`, each
// pixel (value - mean) / std per channel. The frame is resized by nearest neighbour with its
// aspect kept, `scale` frame pixels per input pixel, at the top left; input pixels past the
// frame are 0 (the mean colour after normalisation, as the datasets pad).
// src/gpu/image.rs records it; the CPU reference is `Normalize::write_chw` in src/coco/dataset.rs.

// Must stay in sync with `ImageConfig` in src/gpu/image.rs.
struct Config {
    side: u32,
    frame_w: u32,
    frame_h: u32,
    offset: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    mean: vec4<f32>,
    inv_std: vec4<f32>,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var frame: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    let plane = cfg.side * cfg.side;
    if i >= plane {
        return;
    }
    let x = i % cfg.side;
    let y = i / cfg.side;
    let sx = u32(floor((f32(x) + 0.5) * cfg.scale));
    let sy = u32(floor((f32(y) + 0.5) * cfg.scale));
    var v = vec3(0.0);
    if sx < cfg.frame_w && sy < cfg.frame_h {
        let c = textureLoad(frame, vec2<i32>(i32(sx), i32(sy)), 0);
        v = (c.rgb - cfg.mean.xyz) * cfg.inv_std.xyz;
    }
    dst[cfg.offset + i] = v.x;
    dst[cfg.offset + plane + i] = v.y;
    dst[cfg.offset + 2u * plane + i] = v.z;
}
