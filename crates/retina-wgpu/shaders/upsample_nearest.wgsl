// Nearest-neighbour resizing of NCHW tensors to a larger size (PyTorch's "nearest": source row
// = floor(y * in_h / out_h), in integers), and its gradient: each input element sums the output
// gradients of the pixels copied from it, gathered (no atomics). FPN's x2 upsampling is the
// common case. src/cpu/nn.rs is the twin.

override BACKWARD: bool = false;

// Must stay in sync with `UpsampleConfig` in src/gpu/nn.rs.
struct Config {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// First output row (or column) that copies input row `i`: ceil(i * out / in).
fn first_copy(i: u32, from_size: u32, to_size: u32) -> u32 {
    return (i * to_size + from_size - 1u) / from_size;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if !BACKWARD {
        let plane = cfg.out_h * cfg.out_w;
        if i >= cfg.planes * plane {
            return;
        }
        let p = i / plane;
        let y = (i % plane) / cfg.out_w;
        let x = i % cfg.out_w;
        dst[i] = src[(p * cfg.in_h + y * cfg.in_h / cfg.out_h) * cfg.in_w + x * cfg.in_w / cfg.out_w];
    } else {
        let plane = cfg.in_h * cfg.in_w;
        if i >= cfg.planes * plane {
            return;
        }
        let p = i / plane;
        let y = (i % plane) / cfg.in_w;
        let x = i % cfg.in_w;
        var sum = 0.0;
        for (var oy = first_copy(y, cfg.in_h, cfg.out_h); oy < first_copy(y + 1u, cfg.in_h, cfg.out_h); oy = oy + 1u) {
            for (var ox = first_copy(x, cfg.in_w, cfg.out_w); ox < first_copy(x + 1u, cfg.in_w, cfg.out_w); ox = ox + 1u) {
                sum = sum + src[(p * cfg.out_h + oy) * cfg.out_w + ox];
            }
        }
        dst[i] = sum;
    }
}
