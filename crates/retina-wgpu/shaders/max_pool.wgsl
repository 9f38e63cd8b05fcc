// Max pooling of NCHW tensors (PyTorch's `max_pool2d`, no dilation, no ceil mode): each output
// is the largest input of its kernel x kernel window, the padding never chosen (the window is
// clipped to the input), a NaN in the window winning as in PyTorch (where the compiler keeps
// `v != v`: WGSL lets an implementation assume no NaN). One invocation per output. src/cpu/nn.rs
// is the twin.

// Must stay in sync with `MaxPoolConfig` in src/gpu/nn.rs.
struct Config {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    let plane = cfg.out_h * cfg.out_w;
    if i >= cfg.planes * plane {
        return;
    }
    let p = i / plane;
    let y = (i % plane) / cfg.out_w;
    let x = i % cfg.out_w;
    // The window inside the input: the padding is at most half the kernel, so it is never empty.
    let y0 = max(y * cfg.stride, cfg.padding) - cfg.padding;
    let y1 = min(y * cfg.stride + cfg.kernel - cfg.padding, cfg.in_h);
    let x0 = max(x * cfg.stride, cfg.padding) - cfg.padding;
    let x1 = min(x * cfg.stride + cfg.kernel - cfg.padding, cfg.in_w);
    let base = p * cfg.in_h * cfg.in_w;
    var best = src[base + y0 * cfg.in_w + x0];
    for (var yy = y0; yy < y1; yy = yy + 1u) {
        for (var xx = x0; xx < x1; xx = xx + 1u) {
            let v = src[base + yy * cfg.in_w + xx];
            best = select(best, v, v > best || v != v);
        }
    }
    dst[i] = best;
}
