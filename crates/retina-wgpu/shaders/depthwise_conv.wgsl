// Depthwise convolution (one kh x kw filter per channel, MobileNet's), selected by an
// overridable constant (one pipeline each):
//   FORWARD       one invocation per output element: y = sum over taps of x * w, + bias
//   GRAD_INPUT    one invocation per input element: dx gathered from the output gradient
//                 positions that read it (no atomics)
//   GRAD_WEIGHT   one workgroup per channel and tap (tap kh * kw is the bias): a strided walk
//                 over the batch x output plane, then a tree sum (shared/workgroup_reduce.wgsl)
// src/cpu/depthwise.rs is the twin.

//#include "shared/workgroup_reduce.wgsl"

override MODE: u32 = 0u;

// Must stay in sync with `DepthwiseConfig` in src/gpu/nn.rs.
struct Config {
    batch: u32,
    channels: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    _pad: u32,
}

const WG_SIZE: u32 = 256u;
const FORWARD: u32 = 0u;
const GRAD_INPUT: u32 = 1u;

@group(0) @binding(0) var<uniform> cfg: Config;
// FORWARD: x, weights, bias -> out. GRAD_INPUT: grad_out, weights -> out (dx).
// GRAD_WEIGHT: grad_out, x -> out (dw then db: channels * kh * kw + channels values).
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Input coordinate that output coordinate `o` reads at tap `k`, as i32 (outside [0, size) in
// the padding).
fn source(o: u32, k: u32) -> i32 {
    return i32(o * cfg.stride + k) - i32(cfg.pad);
}

fn forward(i: u32) {
    let plane = cfg.out_h * cfg.out_w;
    if i >= cfg.batch * cfg.channels * plane {
        return;
    }
    let p = i / plane;
    let c = p % cfg.channels;
    let oy = (i % plane) / cfg.out_w;
    let ox = i % cfg.out_w;
    var acc = 0.0;
    for (var ky = 0u; ky < cfg.kernel_h; ky = ky + 1u) {
        let iy = source(oy, ky);
        if iy < 0 || iy >= i32(cfg.in_h) {
            continue;
        }
        for (var kx = 0u; kx < cfg.kernel_w; kx = kx + 1u) {
            let ix = source(ox, kx);
            if ix >= 0 && ix < i32(cfg.in_w) {
                acc = acc + a[(p * cfg.in_h + u32(iy)) * cfg.in_w + u32(ix)]
                    * b[(c * cfg.kernel_h + ky) * cfg.kernel_w + kx];
            }
        }
    }
    if cfg.has_bias != 0u {
        acc = acc + bias[c];
    }
    out[i] = acc;
}

fn grad_input(i: u32) {
    let plane = cfg.in_h * cfg.in_w;
    if i >= cfg.batch * cfg.channels * plane {
        return;
    }
    let p = i / plane;
    let c = p % cfg.channels;
    let iy = (i % plane) / cfg.in_w;
    let ix = i % cfg.in_w;
    var acc = 0.0;
    for (var ky = 0u; ky < cfg.kernel_h; ky = ky + 1u) {
        // Output rows oy with oy * stride + ky - pad == iy.
        let ny = i32(iy + cfg.pad) - i32(ky);
        if ny < 0 || u32(ny) % cfg.stride != 0u || u32(ny) / cfg.stride >= cfg.out_h {
            continue;
        }
        let oy = u32(ny) / cfg.stride;
        for (var kx = 0u; kx < cfg.kernel_w; kx = kx + 1u) {
            let nx = i32(ix + cfg.pad) - i32(kx);
            if nx < 0 || u32(nx) % cfg.stride != 0u || u32(nx) / cfg.stride >= cfg.out_w {
                continue;
            }
            let ox = u32(nx) / cfg.stride;
            acc = acc + a[(p * cfg.out_h + oy) * cfg.out_w + ox] * b[(c * cfg.kernel_h + ky) * cfg.kernel_w + kx];
        }
    }
    out[i] = acc;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let group = wg.x + wg.y * num_wg.x;
    if MODE == FORWARD {
        forward(group * WG_SIZE + ids.index);
        return;
    }
    if MODE == GRAD_INPUT {
        grad_input(group * WG_SIZE + ids.index);
        return;
    }
    // GRAD_WEIGHT: workgroup `group` sums tap `group % (taps + 1)` of channel
    // `group / (taps + 1)`; the last tap is the bias.
    let taps = cfg.kernel_h * cfg.kernel_w;
    let c = group / (taps + 1u);
    let t = group % (taps + 1u);
    if c >= cfg.channels {
        return;
    }
    let ky = t / cfg.kernel_w;
    let kx = t % cfg.kernel_w;
    let plane = cfg.out_h * cfg.out_w;
    var acc = 0.0;
    for (var e = ids.index; e < cfg.batch * plane; e = e + WG_SIZE) {
        let p = (e / plane) * cfg.channels + c;
        let g = a[p * plane + e % plane];
        if t == taps {
            acc = acc + g;
            continue;
        }
        let iy = source((e % plane) / cfg.out_w, ky);
        let ix = source(e % cfg.out_w, kx);
        if iy >= 0 && iy < i32(cfg.in_h) && ix >= 0 && ix < i32(cfg.in_w) {
            acc = acc + g * b[(p * cfg.in_h + u32(iy)) * cfg.in_w + u32(ix)];
        }
    }
    let total = workgroup_sum(acc, ids);
    if ids.index == 0u {
        if t == taps {
            out[cfg.channels * taps + c] = total;
        } else {
            out[c * taps + t] = total;
        }
    }
}
