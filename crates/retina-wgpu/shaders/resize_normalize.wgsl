// torchvision's GeneralizedRCNNTransform on the device: an image (any float-sampleable 2-D
// texture, read with textureLoad: use a non-sRGB view of 8-bit images so that values are the
// stored bytes / 255) normalised per channel, (v - mean) / std, then resized to out_w x out_h
// with PyTorch's bilinear interpolation (align_corners=False: source = max(scale * (dst + 0.5)
// - 0.5, 0), scale = in / out in f32, the upper tap clamped to the last pixel), written as
// [3, pad_h, pad_w] planes at `offset` in `dst`, zero past the resized image.
// src/model/torchvision.rs (`TorchvisionRetinaNet::transform`) is the CPU twin.

// Must stay in sync with `ResizeConfig` in src/gpu/image.rs.
struct Config {
    src_w: u32,
    src_h: u32,
    out_w: u32,
    out_h: u32,
    pad_w: u32,
    pad_h: u32,
    offset: u32,
    _pad0: u32,
    scale_x: f32,
    scale_y: f32,
    _pad1: u32,
    _pad2: u32,
    mean: vec4<f32>,
    deviation: vec4<f32>,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var frame: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

struct Taps {
    i0: u32,
    i1: u32,
    l0: f32,
    l1: f32,
}

fn taps(dst_index: u32, input: u32, output: u32, scale: f32) -> Taps {
    if input == output {
        return Taps(dst_index, dst_index, 1.0, 0.0);
    }
    let real = max(scale * (f32(dst_index) + 0.5) - 0.5, 0.0);
    let i0 = min(u32(floor(real)), input - 1u);
    let l1 = clamp(real - f32(i0), 0.0, 1.0);
    let i1 = select(i0, i0 + 1u, i0 < input - 1u);
    return Taps(i0, i1, 1.0 - l1, l1);
}

fn pixel(x: u32, y: u32) -> vec3<f32> {
    let c = textureLoad(frame, vec2<i32>(i32(x), i32(y)), 0).rgb;
    return (c - cfg.mean.xyz) / cfg.deviation.xyz;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    let plane = cfg.pad_w * cfg.pad_h;
    if i >= plane {
        return;
    }
    let x = i % cfg.pad_w;
    let y = i / cfg.pad_w;
    var v = vec3(0.0);
    if x < cfg.out_w && y < cfg.out_h {
        let tx = taps(x, cfg.src_w, cfg.out_w, cfg.scale_x);
        let ty = taps(y, cfg.src_h, cfg.out_h, cfg.scale_y);
        // PyTorch's order: each row along x, then the rows along y.
        let t0 = pixel(tx.i0, ty.i0) * tx.l0 + pixel(tx.i1, ty.i0) * tx.l1;
        let t1 = pixel(tx.i0, ty.i1) * tx.l0 + pixel(tx.i1, ty.i1) * tx.l1;
        v = t0 * ty.l0 + t1 * ty.l1;
    }
    dst[cfg.offset + i] = v.x;
    dst[cfg.offset + plane + i] = v.y;
    dst[cfg.offset + 2u * plane + i] = v.z;
}
